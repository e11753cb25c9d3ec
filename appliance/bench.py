"""``appliance bench train`` and the pieces every bench shares: machine description, shape models, reports.

The training bench runs the identity job twice in one invocation, each variant in a fresh
subprocess so that its peak memory is its own: a naive baseline (a plain transformers + peft
loop, batch 1 x grad-accum 8, padding to the longest, full-vocabulary logits loss, as in the
seed recipe) and our default path (:func:`appliance.train.train`, without retention so that only
the identity job is timed). Speed targets live in the report, never in assertions.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from appliance import paths
from appliance.errors import ApplianceError
from appliance.rundir import library_versions

# Qwen1.5-1.8B-Chat's config.json (hub revision of 2024-02; checked against public copies of it)
SHAPES: dict[str, dict[str, Any]] = {
    "qwen1.5-1.8b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=16, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02,
                         use_sliding_window=False, sliding_window=32768, max_window_layers=21,
                         attention_dropout=0.0),
}
# dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


# ---------------------------------------------------------------- machine and reports
def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, GPU and library versions: what a figure is only valid for."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    label = f"{len(gpus)}x {gpus[0]}" if gpus else f"{os.cpu_count()}-core {cpu}, no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the machine skews CPU figures
    return {"label": label, "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram, 1) if ram else None,
            "loadavg_1m": round(load, 2) if load is not None else None,
            "gpus": gpus, "platform": platform.platform(), "python": platform.python_version(),
            "omp": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
            "versions": library_versions()}


def peak_flops() -> float | None:
    """The accelerator's dense bf16 peak, or None (CPU, unknown GPU): then no MFU is claimed."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def write_report(kind: str, payload: dict[str, Any], markdown: str, out_dir: str | None = None) -> Path:
    """``reports/bench/<timestamp>/<kind>.json`` and ``<kind>.md``, each written atomically."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    # a relative --out as eval's --output: the current directory's folder if there is one, else under $APPLIANCE_HOME
    d = paths.output_folder(out_dir, "--out") if out_dir else paths.reports_dir() / "bench" / stamp
    paths.atomic_write_text(d / f"{kind}.json", json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    paths.atomic_write_text(d / f"{kind}.md", markdown)
    return d


def md_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def in_subprocess(fn: Callable[..., dict], threads: int | None = None, **kwargs: Any) -> dict:
    """Run ``fn(**kwargs)`` in a fresh spawned interpreter: its own peak memory, no state leaks.

    ``threads`` sets torch's intra-op threads there: on a CPU shared with other work, fewer
    threads than cores avoids OpenMP threads spinning against each other (7x on a busy 2-core box).
    """
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_call_with_threads, (fn, threads, kwargs))


def _call_with_threads(fn: Callable[..., dict], threads: int | None, kwargs: dict[str, Any]) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = fn(**kwargs)
    out["torch_threads"] = torch.get_num_threads()
    return out


# ---------------------------------------------------------------- shape models
def check_shape(shape: str | None) -> None:
    if shape is not None and shape not in SHAPES:
        raise ApplianceError(f"--shape {shape}: unknown shape; use one of {', '.join(SHAPES)}")


def shape_config(shape: str, tokenizer: Any = None, overrides: dict[str, Any] | None = None) -> Any:
    """The exact architecture of ``shape`` as a transformers config (special ids from ``tokenizer``)."""
    from transformers import AutoConfig

    check_shape(shape)
    spec = {**SHAPES[shape], **(overrides or {})}
    ids = {}
    if tokenizer is not None:
        if len(tokenizer) > spec["vocab_size"]:
            raise ApplianceError(f"--shape {shape}: the tokenizer has {len(tokenizer)} tokens, more than the shape's vocabulary {spec['vocab_size']}")
        eos = tokenizer.eos_token_id
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                   pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    return AutoConfig.for_model(spec.pop("model_type"), **spec, **ids)


def build_shape(shape: str, tokenizer_from: str | None = None, out: str | None = None,
                overrides: dict[str, Any] | None = None) -> Path:
    """A model with ``shape``'s exact configuration and random bf16 weights, built here (no download).

    Speed does not depend on weight values; the tokenizer and chat template are the embedded
    model's. Cached under ``models/shape-<shape>``; ``overrides`` (tests only) shrink it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from appliance.models import DEFAULT_MODEL, resolve

    check_shape(shape)
    dest = Path(out) if out else paths.models_dir() / f"shape-{shape}"
    if (dest / "config.json").is_file() and not overrides:
        return dest
    tok_src = resolve(tokenizer_from or DEFAULT_MODEL).path
    tok = AutoTokenizer.from_pretrained(tok_src)
    cfg = shape_config(shape, tok, overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                               pad_token_id=cfg.pad_token_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        model.save_pretrained(str(tmp), max_shard_size="2GB")
        tok.save_pretrained(str(tmp))
        meta = {"kind": "base-model", "name": f"shape-{shape}", "hf_id": None, "identity_markers": [],
                "source": f"random bf16 weights with {shape}'s exact configuration; tokenizer from {tok_src}",
                "shape": shape, "overrides": overrides or {}}
        (tmp / "appliance.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_bench_model(model: str | None, shape: str | None) -> str:
    """The model directory a bench runs on: a built shape, else ``--model`` resolved locally."""
    from appliance.models import DEFAULT_MODEL, resolve

    if shape:
        return str(build_shape(shape, tokenizer_from=model))
    ref = resolve(model or DEFAULT_MODEL)
    if not ref.local:
        raise ApplianceError(f"--model {model}: not on this machine; benches never download (pull it, or use --shape)")
    return ref.path


# ---------------------------------------------------------------- bench train
@dataclass
class TrainBenchConfig:
    """Options of ``appliance bench train``."""

    model: str | None = None  # default: the embedded model
    shape: str | None = None  # e.g. qwen1.5-1.8b: random weights, exact architecture
    method: str = "lora"  # lora | qlora
    steps: int | None = None  # optimizer steps per variant (default: 10, 3 with quick)
    max_length: int = 512
    rank: int = 16
    alpha: int = 32
    seed: int = 42
    variants: tuple[str, ...] = ()  # default: all three on a GPU; naive and default on a CPU (fast = minutes there)
    batch_tokens: int = 16384  # the fast variant's micro-batch: padded tokens, not samples
    threads: int | None = None  # torch threads on CPU (default: torch's choice, one per core)
    out_dir: str | None = None
    quick: bool = False  # tests: 3 steps unless steps is given

    def validate(self) -> None:
        if self.method not in ("lora", "qlora"):
            raise ApplianceError(f"--method {self.method}: use lora or qlora")
        check_shape(self.shape)
        if self.steps is not None and self.steps < 1:
            raise ApplianceError(f"--steps {self.steps}: must be >= 1")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ApplianceError(f"--variant {','.join(bad)}: use {', '.join(VARIANTS)}")
        if self.batch_tokens < 64:
            raise ApplianceError(f"--batch-tokens {self.batch_tokens}: must be >= 64")
        check_bench_common(self.threads, self.out_dir)


def check_bench_common(threads: int | None, out_dir: str | None) -> None:
    """--threads and --out, checked before minutes of benching (torch raised on -1 in the worker; 0 was ignored;
    an --out that is a file failed at the very end)."""
    if threads is not None and threads < 1:
        raise ApplianceError(f"--threads {threads}: must be >= 1 (leave it out for one per core)")
    if out_dir is not None:
        paths.refuse_file_on_path(paths.output_folder(out_dir, "--out"), "--out")


VARIANTS = ("naive", "default", "fast")

# (2 forward + 2 backward-to-activations) FLOPs per matmul weight per token: LoRA has no weight
# gradients for the frozen base (the LoRA matrices are < 1% and ignored); attention scores are
# ignored too (sequences here are ~60 tokens). Full fine-tuning would be 6 * N * tokens.
MFU_FORMULA = "4 * N_linear * tokens / elapsed / peak_bf16_flops (LoRA: no frozen-weight gradients; attention ignored)"


def _mfu(n_linear: int, tokens: int, elapsed: float) -> float | None:
    peak = peak_flops()
    return round(4 * n_linear * tokens / elapsed / peak, 4) if peak and elapsed > 0 else None


def _peak_mem_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _linear_params(model: Any) -> int:
    import torch

    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def naive_train(model_path: str, method: str = "lora", steps: int = 10, grad_accum: int = 8, micro_batch: int = 1,
                max_length: int = 512, rank: int = 16, alpha: int = 32, lr: float = 1e-4, seed: int = 42) -> dict:
    """The seed recipe as a plain loop: full-vocab logits loss, padding to the longest, bs 1 x ga 8."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.data import load_examples
    from appliance.sft import IGNORE, encode

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = [e for e in (encode(tok, ex.messages, max_length, ex.source) for ex in load_examples(["identity"])) if e]
    if method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=q, dtype=torch.bfloat16,
                                                     device_map={"": 0 if cuda else "cpu"})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:  # bf16 on GPU as the seed recipe; fp32 on CPU, where bf16 matmuls are slow
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if cuda else torch.float32)
        model = model.to("cuda" if cuda else "cpu")
    n_linear = _linear_params(model)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    dev = "cuda" if cuda else "cpu"
    tokens = samples = padded = 0
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        step_loss = 0.0
        for _ in range(grad_accum):
            batch = [rows[order[(samples + i) % len(rows)]] for i in range(micro_batch)]
            width = max(len(r.input_ids) for r in batch)  # padding to the longest of the micro-batch
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
                labels[i, : len(r.labels)] = torch.tensor(r.labels)
                mask[i, : len(r.input_ids)] = 1
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
                loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev)).loss
            (loss / grad_accum).backward()
            step_loss += float(loss.detach()) / grad_accum
            tokens += int(mask.sum())
            padded += ids.numel()
            samples += len(batch)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(step_loss, 4))
        if step == 0:  # warm-up (kernel loading, allocator growth) excluded from the steady figure
            if cuda:
                torch.cuda.synchronize()
            t1, tokens1 = time.perf_counter(), tokens
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {"variant": "naive", "method": method, "steps": steps, "batch": f"{micro_batch} x ga {grad_accum}",
            "samples": samples, "tokens": tokens, "padded_tokens": padded, "elapsed_s": round(elapsed, 3),
            "samples_per_s": round(samples / elapsed, 3), "tokens_per_s": round(tokens / elapsed, 1),
            "tokens_per_s_after_step1": round((tokens - tokens1) / (time.perf_counter() - t1), 1) if steps > 1 else None,
            "peak_mem_mb": _peak_mem_mb(), "n_linear_params": n_linear, "mfu": _mfu(n_linear, tokens, elapsed),
            "first_loss": losses[0], "last_loss": losses[-1], "losses": losses}


def default_train(model_path: str, method: str = "lora", steps: int = 10, max_length: int = 512, rank: int = 16,
                  alpha: int = 32, seed: int = 42, batch_tokens: int = 0) -> dict:
    """Our path, :func:`appliance.train.train`, on the identity job only (no retention).

    ``batch_tokens`` 0 is the default recipe (batches of samples); > 0 is the fast variant:
    micro-batches of that many padded tokens, with gradient checkpointing so they fit.
    """
    import torch

    from appliance.train import train
    from appliance.train_config import TrainConfig

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cfg = TrainConfig(model=model_path, datasets=["identity"], output=str(Path(tmp) / "adapter"), method=method,
                          rank=rank, alpha=alpha, max_steps=steps, max_length=max_length, seed=seed, retention=False,
                          save_steps=10**9, overwrite=True, batch_tokens=batch_tokens,
                          gradient_checkpointing=bool(batch_tokens),
                          lora_layers=0)  # every layer, as the naive loop: the same LoRA job, so the loops compare
        meta = train(cfg)
        log = Path(tmp, "adapter", "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    logged = [row for row in map(json.loads, log) if "loss" in row]
    losses = [round(float(row["loss"]), 4) for row in logged]
    span = logged[-1]["elapsed_s"] - logged[0]["elapsed_s"] if len(logged) > 1 else 0
    steady = round((logged[-1]["tokens_seen"] - logged[0]["tokens_seen"]) / span, 1) if span > 0 else None
    r = meta["results"]
    from transformers import AutoConfig

    n_linear = _linear_params_from_config(AutoConfig.from_pretrained(model_path))
    elapsed = float(r["train_runtime_s"])
    samples = int(r["samples_seen"])
    tokens = int(r["tokens_seen"])
    batch = (f"{batch_tokens} tokens (~{samples / max(1, int(r['steps'])):.0f} samples) x ga {cfg.grad_accum}, grad ckpt"
             if batch_tokens else f"{cfg.batch_size} x ga {cfg.grad_accum}")
    return {"variant": "fast" if batch_tokens else "default", "method": method, "steps": int(r["steps"]), "batch": batch,
            "samples": samples, "tokens": tokens, "padded_tokens": None, "elapsed_s": elapsed,
            "samples_per_s": round(samples / elapsed, 3), "tokens_per_s": round(tokens / elapsed, 1),
            "tokens_per_s_after_step1": steady,
            "peak_mem_mb": _peak_mem_mb() if not torch.cuda.is_available() else r.get("peak_mem_mb"),
            "n_linear_params": n_linear, "mfu": _mfu(n_linear, tokens, elapsed),
            "first_loss": r.get("first_loss"), "last_loss": r.get("last_loss"), "losses": losses}


def _loss_curves(runs: list[dict]) -> str:
    """Each variant's loss per optimizer step, against the samples seen so far (batches differ in size)."""
    lines = ["Loss per optimizer step (samples seen so far in brackets):", ""]
    for r in runs:
        per = r["samples"] / max(1, len(r.get("losses") or []))
        pts = [f"{x:.3f} ({per * (i + 1):.0f})" for i, x in enumerate(r.get("losses") or [])]
        lines.append(f"- {r['variant']}: " + ", ".join(pts))
    return "\n".join(lines) + "\n"


def _linear_params_from_config(cfg: Any) -> int:
    """Matmul weights of a decoder from its config alone (used where the model lives in another process)."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    attn = h * cfg.num_attention_heads * hd * 2 + h * kv * 2
    return layers * (attn + 3 * h * i) + h * cfg.vocab_size


def bench_train(cfg: TrainBenchConfig) -> dict[str, Any]:
    """Run each variant in its own process and write ``reports/bench/<timestamp>/train.{json,md}``."""
    import torch

    cfg.validate()
    machine = machine_info()  # before the runs: the load average then is other people's work
    steps = cfg.steps or (3 if cfg.quick else 10)  # an explicit --steps wins over --quick's 3
    model_path = resolve_bench_model(cfg.model, cfg.shape)
    common = dict(model_path=model_path, method=cfg.method, steps=steps, max_length=cfg.max_length,
                  rank=cfg.rank, alpha=cfg.alpha, seed=cfg.seed)
    runs = []
    variants = cfg.variants or (VARIANTS if torch.cuda.is_available() else ("naive", "default"))
    for v in variants:
        if v == "naive":
            runs.append(in_subprocess(naive_train, threads=cfg.threads, **common))
        else:
            runs.append(in_subprocess(default_train, threads=cfg.threads, **common,
                                      batch_tokens=cfg.batch_tokens if v == "fast" else 0))
    settings = {**asdict(cfg), "variants": list(variants), "steps": steps, "model_path": model_path, "dataset": "identity",
                "mfu_formula": MFU_FORMULA, "peak_flops": peak_flops()}
    payload = {"kind": "bench-train", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine, "settings": settings, "results": runs}
    cols = ["variant", "method", "batch", "steps", "samples_per_s", "tokens_per_s", "tokens_per_s_after_step1", "peak_mem_mb", "mfu", "elapsed_s",
            "last_loss", "torch_threads"]
    md = (f"# bench train\n\nmachine: {payload['machine']['label']} (1-min load average at start: {payload['machine']['loadavg_1m']})\n\nmodel: {model_path} (shape: {cfg.shape or '-'})\n\n"
          + md_table(runs, cols) + f"\nMFU: {MFU_FORMULA}\n\n" + _loss_curves(runs)
          + f"\nsettings: `{json.dumps(settings, default=str)}`\n")
    payload["report_dir"] = str(write_report("train", payload, md, cfg.out_dir))
    return payload
