"""``appliance bench serve``: the OpenAI server started by ``appliance up``, under load.

One server serves the base and ``n_adapters`` random LoRA adapters (rank and targets of the
identity adapter; speed does not depend on their values). Scenarios: the base, one adapter, and
all adapters round-robin; each swept over concurrency with random-token prompts and
``ignore_eos`` so every request produces exactly ``output_len`` tokens. The load generator is
``openai.AsyncOpenAI`` streaming ``/v1/completions`` in several processes, so the client is not
the bottleneck. Also measured: cold start to ready, adapter load latency at runtime, and a
transformers ``generate`` baseline on the same model (after the server is stopped).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import signal
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance import paths
from appliance.bench import check_bench_common, check_shape, in_subprocess, machine_info, md_table, resolve_bench_model, write_report
from appliance.errors import ApplianceError

GPU_SWEEP = [1, 2, 4, 8, 16, 32, 64, 128, 256]
CPU_SWEEP = [1, 4]  # a 2-core CPU: the sweep to 256 is for the GPU
CLIENT = "appliance: openai.AsyncOpenAI, streaming /v1/completions with token-id prompts, ignore_eos"


@dataclass
class ServeBenchConfig:
    """Options of ``appliance bench serve``."""

    model: str | None = None
    shape: str | None = None
    concurrency: list[int] = field(default_factory=list)  # default: GPU_SWEEP on a GPU, CPU_SWEEP on a CPU
    num_prompts: int | None = None  # per point; default max(8, 4 x concurrency) on a GPU, 8 on a CPU
    input_len: int = 64
    output_len: int = 128
    n_adapters: int = 8
    rank: int = 16
    scenarios: tuple[str, ...] = ("base", "adapter", "adapters")
    port: int = 8090
    client_procs: int | None = None  # default: one per 32 concurrent streams, at most 8
    generate_baseline: bool = True
    runtime_loads: int = 3
    threads: int | None = None  # torch threads of the generate baseline on CPU (default: one per core)
    seed: int = 0
    quick: bool = False  # tests: sweep [1, 4], 8 prompts, 32 output tokens
    out_dir: str | None = None
    ready_timeout_s: float = 900
    vllm_args: list[str] = field(default_factory=list)  # passed to the server through `appliance up`

    def resolved(self, cuda: bool) -> "ServeBenchConfig":
        c = ServeBenchConfig(**asdict(self))
        if self.quick:
            c.concurrency, c.num_prompts, c.output_len = self.concurrency or [1, 4], self.num_prompts or 8, min(self.output_len, 32)
            c.runtime_loads = min(self.runtime_loads, 2)
        c.concurrency = c.concurrency or (GPU_SWEEP if cuda else CPU_SWEEP)
        c.num_prompts = c.num_prompts or (None if cuda else 8)
        check_shape(c.shape)
        if not 1 <= c.port <= 65535:  # checked here, before the model loads and the adapters are written
            raise ApplianceError(f"--port {c.port}: out of range; use 1-65535")
        for flag, value in (("--num-prompts", self.num_prompts), ("--client-procs", self.client_procs)):
            if value is not None and value < 1:  # 0 silently meant the default, a negative one ran no request
                raise ApplianceError(f"{flag} {value}: must be >= 1 (leave it out for the default)")
        check_bench_common(c.threads, c.out_dir)
        bad = [s for s in c.scenarios if s not in ("base", "adapter", "adapters")]
        if bad:
            raise ApplianceError(f"bench serve: unknown scenarios {bad}; use base, adapter, adapters")
        for flag, value in (("--concurrency", min(c.concurrency)), ("--input-len", c.input_len),
                            ("--output-len", c.output_len), ("--adapters", c.n_adapters)):
            if value < 1:
                raise ApplianceError(f"{flag} {value}: must be >= 1")
        _refuse_own_flags(c.vllm_args)
        return c


def _refuse_own_flags(vllm_args: list[str]) -> None:
    """A --vllm-arg that `appliance up` sets itself, named as the user gave it (up's own refusal names `--`)."""
    from appliance.serve import own_flag

    for a in vllm_args:
        if flag := own_flag(a):
            fix = (f"use `appliance bench serve {flag}` instead" if flag in ("--port", "--model") else
                   "leave it out of --vllm-arg")
            raise ApplianceError(f"--vllm-arg {a}: the benchmark's server sets {flag} itself; {fix}")


def parse_sweep(text: str | None) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; empty -> ``[]`` (the machine's default sweep)."""
    if not text:
        return []
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ApplianceError(f"--concurrency {text}: give comma-separated positive integers, e.g. 1,4,16")
    return values


# ---------------------------------------------------------------- adapters
def make_adapters(base_path: str, n: int, rank: int, seed: int = 0) -> list[Path]:
    """``n`` random LoRA adapters (all-linear, like the identity adapter) for ``base_path``, cached."""
    import hashlib

    key = hashlib.sha256(f"{Path(base_path).resolve()}:{rank}".encode()).hexdigest()[:12]
    root = paths.cache_dir() / "bench-adapters" / key
    dirs = [root / f"a{i}" for i in range(n)]
    if all((d / "adapter_model.safetensors").is_file() for d in dirs):
        return dirs
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM"))
    meta = {"kind": "lora-adapter", "method": "lora", "base_model": {"name": Path(base_path).name, "path": str(Path(base_path).resolve())},
            "note": "random weights for appliance bench serve"}
    for i, d in enumerate(dirs):
        torch.manual_seed(seed + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        tmp = d.with_name(d.name + ".tmp")
        model.save_pretrained(str(tmp))
        (tmp / "appliance.json").write_text(json.dumps(meta), encoding="utf-8")
        if d.exists():
            import shutil

            shutil.rmtree(d)
        tmp.rename(d)
    return dirs


# ---------------------------------------------------------------- load generator
def random_prompts(model_path: str, n: int, length: int, seed: int) -> list[list[int]]:
    """Token-id prompts of exactly ``length`` random ordinary tokens (no special tokens)."""
    pool = _token_pool(model_path)
    rng = random.Random(seed)
    return [[rng.choice(pool) for _ in range(length)] for _ in range(n)]


@functools.lru_cache(maxsize=4)
def _token_pool(model_path: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    special = set(tok.all_special_ids)
    return [i for i in range(len(tok)) if i not in special]


async def _one(client: Any, model: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    t0 = time.monotonic()
    first, chunks, usage, err = None, 0, None, None
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for ch in stream:
            if ch.choices:
                first = first or time.monotonic()
                chunks += 1
            if getattr(ch, "usage", None):
                usage = ch.usage.completion_tokens
    except Exception as e:  # a failed request is a data point (errors), not a crash of the bench
        err = f"{type(e).__name__}: {str(e)[:200]}"
    return {"start": t0, "first": first, "end": time.monotonic(), "out": usage if usage is not None else chunks, "error": err}


async def _drive(url: str, jobs: list[tuple[str, list[int]]], concurrency: int, max_tokens: int, start_at: float) -> list[dict]:
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    client = AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=1800,
                         http_client=httpx.AsyncClient(limits=limits, timeout=1800))
    queue: asyncio.Queue = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    out: list[dict] = []

    async def worker() -> None:
        while not queue.empty():
            model, prompt = queue.get_nowait()
            out.append(await _one(client, model, prompt, max_tokens))

    await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts together
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return out


def _client_proc(url: str, jobs: list[tuple[str, list[int]]], concurrency: int, max_tokens: int, start_at: float) -> list[dict]:
    return asyncio.run(_drive(url, jobs, concurrency, max_tokens, start_at))


def run_point(url: str, models: list[str], prompts: list[list[int]], concurrency: int, max_tokens: int,
              procs: int) -> dict[str, Any]:
    """One sweep point: ``len(prompts)`` requests, ``concurrency`` in flight, models round-robin."""
    import multiprocessing as mp

    jobs = [(models[i % len(models)], p) for i, p in enumerate(prompts)]
    procs = max(1, min(procs, concurrency, len(jobs)))
    shares = [jobs[k::procs] for k in range(procs)]
    conc = [concurrency // procs + (k < concurrency % procs) for k in range(procs)]
    if procs == 1:
        recs = _client_proc(url, jobs, concurrency, max_tokens, time.time())
    else:
        with mp.get_context("spawn").Pool(procs) as pool:
            start_at = time.time() + 5.0 + procs  # time for the spawned interpreters to import
            parts = pool.starmap(_client_proc, [(url, shares[k], conc[k], max_tokens, start_at) for k in range(procs)])
        recs = [r for part in parts for r in part]
    return summarize(recs, concurrency, procs)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))
    return round(xs[k], 2)


def summarize(recs: list[dict], concurrency: int, procs: int) -> dict[str, Any]:
    ok = [r for r in recs if not r["error"] and r["first"] is not None]
    dur = (max(r["end"] for r in recs) - min(r["start"] for r in recs)) if recs else 0.0
    out_tokens = sum(r["out"] for r in ok)
    ttft = [1000 * (r["first"] - r["start"]) for r in ok]
    tpot = [1000 * (r["end"] - r["first"]) / (r["out"] - 1) for r in ok if r["out"] > 1]
    return {"concurrency": concurrency, "requests": len(recs), "errors": len(recs) - len(ok),
            "first_error": next((r["error"] for r in recs if r["error"]), None), "duration_s": round(dur, 3),
            "output_tokens": out_tokens, "output_tok_s": round(out_tokens / dur, 2) if dur else None,
            "req_s": round(len(ok) / dur, 3) if dur else None,
            "ttft_ms_p50": _pct(ttft, 50), "ttft_ms_p95": _pct(ttft, 95),
            "tpot_ms_p50": _pct(tpot, 50), "tpot_ms_p95": _pct(tpot, 95),
            "e2e_ms_p50": _pct([1000 * (r["end"] - r["start"]) for r in ok], 50), "client_procs": procs}


# ---------------------------------------------------------------- runtime adapter loads, generate baseline
def runtime_loads(url: str, adapter: Path, times: int) -> dict[str, Any]:
    """Latency of ``POST /v1/load_lora_adapter`` and of the first request to the new adapter."""
    import httpx

    load, first = [], []
    with httpx.Client(base_url=url, timeout=600) as http:
        for k in range(times):
            name = f"bench-runtime-{k}"
            t0 = time.monotonic()
            r = http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)})
            load.append(1000 * (time.monotonic() - t0))
            if r.status_code != 200:
                raise ApplianceError(f"bench serve: runtime load of {adapter} failed ({r.status_code}: {r.text[:200]})")
            t0 = time.monotonic()
            r = http.post("/v1/completions", json={"model": name, "prompt": [11, 12, 13, 14], "max_tokens": 1})
            first.append(1000 * (time.monotonic() - t0))
            r.raise_for_status()
            http.post("/v1/unload_lora_adapter", json={"lora_name": name}).raise_for_status()
    return {"loads": times, "load_ms_p50": round(statistics.median(load), 1), "load_ms_max": round(max(load), 1),
            "first_request_ms_p50": round(statistics.median(first), 1)}


def generate_baseline(model_path: str, batches: list[int], input_len: int, output_len: int, seed: int) -> list[dict]:
    """transformers ``generate`` on the same model: batch = concurrency, greedy, exactly output_len tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32  # fp32 on CPU: bf16 matmuls are slow there
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to("cuda" if cuda else "cpu").eval()
    rows = []
    for b in batches:
        ids = torch.tensor(random_prompts(model_path, b, input_len, seed), device=model.device)
        kw = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            model.generate(ids[:, :8], max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
            if cuda:
                torch.cuda.synchronize()
            t0 = time.monotonic()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            if cuda:
                torch.cuda.synchronize()
        dt = time.monotonic() - t0
        n = int(out[:, ids.shape[1]:].numel())
        rows.append({"concurrency": b, "output_tokens": n, "duration_s": round(dt, 3), "output_tok_s": round(n / dt, 2),
                     "dtype": str(dtype).replace("torch.", "")})
    return rows


# ---------------------------------------------------------------- the bench
def bench_serve(cfg: ServeBenchConfig) -> dict[str, Any]:
    """Start ``appliance up`` with the adapters, sweep, measure, stop it; write ``serve.{json,md}``."""
    import torch

    from appliance.serve import UpConfig, down, up

    c = cfg.resolved(torch.cuda.is_available())
    machine = machine_info()  # before the runs: the load average then is other people's work
    model_path = resolve_bench_model(c.model, c.shape)
    adapters = make_adapters(model_path, c.n_adapters + 1, c.rank, c.seed)  # the last one is loaded at runtime
    names = [f"a{i}" for i in range(c.n_adapters)]
    served = Path(model_path).name
    up_cfg = UpConfig(adapters=[f"{n}={p}" for n, p in zip(names, adapters)], model=model_path, port=c.port,
                      served_name=served, adapter_roots=[str(adapters[-1].parent)], detach=True,
                      ready_timeout_s=c.ready_timeout_s, extra_args=list(c.vllm_args))
    results: dict[str, Any] = {"sweep": [], "generate": []}
    # the server is detached (its own session): turn SIGTERM into an exception so `finally` stops it
    main_thread = threading.current_thread() is threading.main_thread()  # signals only work there
    previous = signal.signal(signal.SIGTERM, _raise_exit) if main_thread else None
    t0 = time.monotonic()
    try:
        info = up(up_cfg, echo=lambda s: None)
    except BaseException:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        raise
    try:
        results["cold_start_s"] = round(time.monotonic() - t0, 2)
        targets = {"base": [served], "adapter": names[:1], "adapters": names}
        for m in [served, *names]:  # warm-up: first use of each adapter moves it onto the device
            run_point(info.url, [m], random_prompts(model_path, 1, c.input_len, c.seed + 99), 1, 4, 1)
        for scenario in c.scenarios:
            for conc in c.concurrency:
                n = c.num_prompts or max(8, 4 * conc)
                procs = c.client_procs or min(8, max(1, math.ceil(conc / 32)))
                prompts = random_prompts(model_path, n, c.input_len, c.seed + conc)
                point = run_point(info.url, targets[scenario], prompts, conc, c.output_len, procs)
                results["sweep"].append({"scenario": scenario, "models": len(targets[scenario]), **point})
        results["runtime_adapter_load"] = runtime_loads(info.url, adapters[-1], c.runtime_loads)
    finally:
        down(c.port)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if c.generate_baseline:
        results["generate"] = in_subprocess(_generate_rows, threads=c.threads, model_path=model_path, batches=c.concurrency,
                                            input_len=c.input_len, output_len=c.output_len, seed=c.seed)["rows"]
    settings = {**asdict(c), "model_path": model_path, "client": CLIENT, "server": "appliance up (vLLM OpenAI server)",
                "vllm_args": {"max_loras": max(4, c.n_adapters), "max_lora_rank": c.rank, "dtype": _served_dtype(torch.cuda.is_available()),
                              "extra": list(c.vllm_args)}}
    payload = {"kind": "bench-serve", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine, "settings": settings, "results": results}
    payload["report_dir"] = str(write_report("serve", payload, _markdown(payload), c.out_dir))
    return payload


def all_failed(payload: dict[str, Any]) -> str | None:
    """A line for the sweep points where every request failed (their figures measure nothing), else None."""
    bad = [row for row in payload["results"].get("sweep", []) if row.get("requests") and row["errors"] == row["requests"]]
    if not bad:
        return None
    where = ", ".join(f"{row['scenario']} x{row['concurrency']}" for row in bad)
    return f"every request failed at {len(bad)} sweep point(s) ({where}); the first error: {bad[0]['first_error']}"


def _served_dtype(cuda: bool) -> str:
    """The dtype ``appliance up`` asks vLLM for (no extra vLLM args here), "auto" = the model's own."""
    from appliance.serve import cpu_dtype

    return "auto" if cuda else (cpu_dtype([]) or "auto")


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _generate_rows(**kw: Any) -> dict:
    import torch

    return {"rows": [{**r, "torch_threads": torch.get_num_threads()} for r in generate_baseline(**kw)]}


def _markdown(p: dict[str, Any]) -> str:
    r, s = p["results"], p["settings"]
    cols = ["scenario", "models", "concurrency", "requests", "errors", "output_tok_s", "ttft_ms_p50", "ttft_ms_p95",
            "tpot_ms_p50", "tpot_ms_p95", "client_procs"]
    load = r.get("runtime_adapter_load", {})
    return (f"# bench serve\n\nmachine: {p['machine']['label']} (1-min load average at start: {p['machine']['loadavg_1m']})\n\nmodel: {s['model_path']} (shape: {s['shape'] or '-'}); "
            f"prompt {s['input_len']} random tokens, {s['output_len']} output tokens (ignore_eos)\n\nclient: {s['client']}\n\n"
            f"cold start to ready: {r.get('cold_start_s')} s; runtime adapter load: {load.get('load_ms_p50')} ms "
            f"(first request after it: {load.get('first_request_ms_p50')} ms)\n\n"
            + md_table(r["sweep"], cols)
            + "".join(f"\nerrors at {row['scenario']} x{row['concurrency']}: {row['errors']} of {row['requests']}, the first: "
                      f"{row['first_error']}\n" for row in r["sweep"] if row.get("errors"))
            + ("\ntransformers generate (same model, batch = concurrency):\n\n"
               + md_table(r["generate"], ["concurrency", "output_tokens", "duration_s", "output_tok_s", "dtype", "torch_threads"])
               if r.get("generate") else "\ntransformers generate: not run (--no-generate)\n")
            + f"\nsettings: `{json.dumps(s, default=str)}`\n")
