"""``appliance merge``: fold a LoRA adapter into its full-precision base and prove nothing changed.

The base named in the adapter's ``appliance.json`` is loaded in float32 (never 4-bit: merging
into quantized weights would bake the quantization error into the model), the adapter is merged,
and a standard HF directory is written through a temporary sibling. The written directory is then
reloaded and compared with base + adapter (unmerged PeftModel) on a probe set of prompts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance import paths
from appliance.adapters import adapter_dir, fits, read_adapter_config, shapes_differ
from appliance.errors import ApplianceError, CheckFailed
from appliance.rundir import library_versions, read_meta, write_meta

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# Why these tolerances: the probe runs in float32 on the weights as saved, so the only difference
# left is rounding W + BA to the storage dtype. bf16 keeps 8 mantissa bits (relative step 2^-8),
# and SmolLM2's logits reach |30|, so a few 0.1 of drift over 30 layers is rounding, not a bug;
# a skipped or wrong layer moves logits by whole units. fp16 has 3 more bits; fp32 is exact
# up to float summation order.
LOGIT_TOL = {"bf16": 1.0, "fp16": 0.25, "fp32": 1e-3}
# Rounding may flip a near-tie argmax and send one greedy answer elsewhere; allow 1 in 8 for the
# half-precision dtypes (only while the logit check holds), none for fp32.
GREEDY_SLACK = {"bf16": 1 / 8, "fp16": 1 / 8, "fp32": 0.0}

DEFAULT_PROBES = [
    "你是谁？",
    "Who are you?",
    "Who developed you?",
    "请介绍一下你自己。",
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "What is 12 times 7?",
    "Give me three tips for staying healthy.",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


@dataclass
class MergeConfig:
    """Options of ``appliance merge``."""

    adapter: str
    output: str | None = None  # default: models/<adapter dir name>-merged under the home
    model: str | None = None  # the base, when the adapter's record does not find it (moved, or a plain PEFT adapter)
    dtype: str = "bf16"
    overwrite: bool = False
    verify: bool = True
    probe_prompts: list[str] | None = None
    max_shard_size: str = "200MB"
    max_new_tokens: int = 24


@dataclass
class MergeResult:
    output: Path
    verification: dict[str, Any] | None
    already_merged: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.already_merged:
            if not self.verification or self.verification.get("skipped"):  # an earlier --no-verify (or the pipeline)
                return (f"already merged: {self.output} (same adapter, same weights), but not verified (merged with "
                        "--no-verify, or by `appliance pipeline`, whose eval checks it); pass --overwrite to merge and "
                        "verify it again")
            return f"already merged: {self.output} (same adapter, same weights); nothing to do"
        if not self.verification:
            return f"merged -> {self.output} (verification skipped)"
        qlora = ("; note: checked against the full-precision base + adapter, as vLLM serves it: this QLoRA adapter "
                 "answers otherwise over the 4-bit base it was trained on (docs/recipe.md)"
                 if (self.meta.get("adapter") or {}).get("method") == "qlora" else "")
        return f"merged -> {self.output}; {verdict_line(self.verification)}{qlora}"


def verdict_line(v: dict[str, Any]) -> str:
    """Both checks and how each went: a merge fails on either (the greedy answers, or the largest logit diff)."""
    word = "PASS" if v["passed"] else "FAIL"
    greedy_ok = v["greedy_equal"] >= v["greedy_required"]
    logits_ok = v["max_logit_diff"] <= v["logit_tolerance"]
    return (f"verification {word}: greedy answers equal on {v['greedy_equal']}/{v['prompts']} probes "
            f"({'at least' if greedy_ok else 'under'} the {v['greedy_required']} needed), max logit diff "
            f"{v['max_logit_diff']:.3g} ({'within' if logits_ok else 'over'} the {v['dtype']} tolerance "
            f"{v['logit_tolerance']:g})")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _adapter_weights(adapter: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter / name).is_file():
            if name.endswith(".safetensors"):
                _check_header(adapter / name)
            return adapter / name
    raise ApplianceError(f"--adapter {adapter}: no adapter_model.safetensors (an unfinished or copied-in-part run?); "
                         "pass the --output directory of a finished `appliance train`")


def _check_header(weights: Path) -> None:
    """A truncated or corrupt weights file is named as such now, not as a mismatch after the base loads."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as st:
            st.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type, an OSError or a ValueError
        raise ApplianceError(f"{weights}: unreadable adapter weights ({' '.join(str(e).split())[:120]}); the file is "
                             "corrupt or cut short: copy it again or re-run `appliance train`") from None


def _resolve_base(adapter: Path, meta: dict[str, Any], model: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The base model directory: ``--model``, else the recorded path, else the recorded registry name (else, for
    a plain PEFT adapter, the local folder its adapter_config.json names)."""
    from appliance.models import resolve

    base = dict(meta.get("base_model") or {})
    if model is not None:
        ref = resolve(model)
        if not ref.local:
            raise ApplianceError(f"--model {model}: not on this machine; give the local folder of the adapter's base")
        recorded = Path(base["path"]) if base.get("path") else None
        if recorded and (recorded / "config.json").is_file() and shapes_differ(recorded, Path(ref.path)):
            raise ApplianceError(f"--model {model}: not the model the adapter was trained on ({recorded}: its "
                                 "config.json differs); give the adapter's own base")
        base.update(name=ref.name, path=ref.path, hf_id=base.get("hf_id") or ref.hf_id)
        base["identity_markers"] = base.get("identity_markers") or ref.identity_markers
        return Path(ref.path), base
    fix = "pass --model with the base model's folder"
    if base.get("path") and (Path(base["path"]) / "config.json").is_file():
        return Path(base["path"]), base
    if base.get("path") and not _findable_by_name(base.get("name")):
        # the recorded folder is gone and its name is no registry model nor models/<name>: resolving the bare name
        # would take any folder of that name in the current directory, or list registry models it was never one of
        raise ApplianceError(f"{adapter}/appliance.json: base model folder {base['path']} no longer exists (moved or "
                             f"deleted); {fix}")
    if base.get("name"):
        from appliance.models import local_dir, registry_name

        # a registry name as --model finds it; another name only as models/<name> (not ./<name> of the current directory)
        by_name = base["name"] if registry_name(base["name"]) or not base.get("path") else str(local_dir(base["name"]))
        try:
            ref = resolve(by_name)
        except ApplianceError as e:  # resolve speaks of --model, not given here
            why = str(e).split(": ", 1)[-1] if str(e).startswith("--model") else str(e)
            raise ApplianceError(f"{adapter}/appliance.json: base model '{base['name']}' is not available here "
                                 f"({why.rstrip('.')}); pull it, or {fix}") from None
        if not ref.local:
            raise ApplianceError(f"{adapter}: base model '{base['name']}' is not on this machine; download it and {fix}")
        base.setdefault("identity_markers", ref.identity_markers)
        base.update(path=ref.path, hf_id=base.get("hf_id") or ref.hf_id)
        return Path(ref.path), base
    if meta.get("external"):
        named = read_adapter_config(adapter).get("base_model_name_or_path")
        if isinstance(named, str) and named and (Path(named).expanduser() / "config.json").is_file():
            return _resolve_base(adapter, meta, str(Path(named).expanduser()))  # PEFT's own record of a local base
        raise ApplianceError(f"--adapter {adapter}: has no appliance.json (it was not written by `appliance train`) and "
                             f"its adapter_config.json names no local base ({named or 'none'}); {fix}")
    where = f"base_model.path {base['path']} does not exist" if base.get("path") else "no base_model recorded"
    raise ApplianceError(f"{adapter}/appliance.json: {where}; {fix}")


def _findable_by_name(name: Any) -> bool:
    """Whether a recorded base name finds the model without its path: a registry name, or models/<name>."""
    from appliance.models import is_model_dir, local_dir, registry_name

    if not isinstance(name, str) or not name.strip():
        return False
    return registry_name(name) is not None or (os.sep not in name and is_model_dir(local_dir(name)))


def _resolve_output(cfg: MergeConfig, adapter: Path) -> Path:
    if cfg.output is not None and not cfg.output.strip():  # "" silently meant the default folder
        raise ApplianceError("--output is empty; give the merged model's folder (e.g. models/archer-merged), or leave "
                             "--output out for models/<adapter>-merged")
    if not cfg.output:
        return paths.models_dir() / f"{adapter.name}-merged"
    p = Path(cfg.output).expanduser()
    return p if p.is_absolute() else (paths.home() / p)


def _existing_state(out: Path, adapter: Path, sha: str, dtype: str) -> str:
    """'absent' (or an empty folder, made beforehand), 'same' (this adapter, these weights, this dtype),
    'other' (another merge: --overwrite replaces it) or 'foreign' (a file, or a folder of other things: never replaced)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "absent"
    try:
        m = read_meta(out, kind="merged-model")
    except ApplianceError:
        return "foreign"
    a = m.get("adapter") or {}
    same = a.get("path") == str(adapter) and a.get("sha256") == sha and m.get("dtype") == dtype
    complete = (out / "config.json").is_file() and _shards_complete(out)
    return "same" if same and complete and m.get("verification", {}).get("passed", True) else "other"


def _shards_complete(out: Path) -> bool:
    """Every weight file the model names is there and not empty (a deleted or truncated shard is not)."""
    import json

    index = out / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return False
    else:
        names = {"model.safetensors"}
    from safetensors import safe_open

    for n in names:
        try:  # the header alone: a missing, empty or truncated shard fails here
            with safe_open(str(out / n), framework="pt") as st:
                st.keys()
        except Exception:  # noqa: BLE001 - any unreadable shard means: merge again
            return False
    return True


def merge(cfg: MergeConfig) -> MergeResult:
    """Merge ``cfg.adapter`` into its base, write ``cfg.output`` atomically, verify it."""
    dtype = (cfg.dtype or "").lower()
    # torch's names (bfloat16, float32, half...) name the same three: recorded by their short form
    dtype = {**{v: k for k, v in DTYPES.items()}, "half": "fp16", "float": "fp32"}.get(dtype, dtype)
    if dtype not in DTYPES:
        raise ApplianceError(f"--dtype {cfg.dtype}: unknown dtype; use one of {', '.join(DTYPES)}")
    _check_shard_size(cfg.max_shard_size)
    adapter = adapter_dir(cfg.adapter, "--adapter")  # missing, or a file: said so, with where it looked
    if not (adapter / "adapter_config.json").is_file():
        raise ApplianceError(f"--adapter {cfg.adapter}: {adapter} has no adapter_config.json; it is not a PEFT LoRA adapter directory")
    meta = read_meta(adapter, kind="lora-adapter")
    read_adapter_config(adapter)  # a broken config is named now, not after the base has loaded (any PEFT type merges)
    sha = file_sha256(_adapter_weights(adapter))
    out = _resolve_output(cfg, adapter)
    base_path, base_meta = _resolve_base(adapter, meta, cfg.model)
    _refuse_overlap(out, adapter.resolve(), base_path.resolve())

    state = _existing_state(out, adapter, sha, dtype)
    # identical inputs give identical weights: nothing to redo, even with --overwrite (the pipeline's
    # resume relies on it); a missing or truncated shard makes the output "other", merged again
    if state == "same":
        stored = read_meta(out).get("verification")
        # merged unverified (--no-verify, or by the pipeline, whose eval checks it): --overwrite merges it again, verified
        if not (cfg.verify and cfg.overwrite and (not stored or stored.get("skipped"))):
            return MergeResult(out, stored, already_merged=True, meta=read_meta(out))
    if state == "foreign":  # with or without --overwrite: naming --overwrite, which refuses it, sent users in a circle
        what = "a file" if not out.is_dir() else "not a merged model (no appliance.json of `appliance merge`)"
        raise ApplianceError(f"--output {out}: is {what}, so --overwrite will not delete it; choose a new --output")
    if state != "absent" and not cfg.overwrite:
        raise ApplianceError(f"--output {out}: already exists and is not this adapter merged as {dtype}; pass --overwrite to replace it or choose another --output")

    _refuse_quantized(base_path)
    paths.refuse_file_on_path(out.parent, "--output")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:  # before the models load: an unwritable --output is found in a second, not after the merge
        out.parent.mkdir(parents=True, exist_ok=True)
        _sweep_dead_tmp(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise ApplianceError(f"--output {cfg.output or out}: cannot write in {out.parent} ({e.strerror or e}); "
                             "choose a --output in a folder you can write") from None
    try:
        verification = _merge_into(tmp, base_path, adapter, dtype, cfg)
        if verification is not None and not verification["passed"]:
            # a bf16/fp16 copy rounds every weight: small adapters' effect can drown in it, fp32 keeps it exactly
            hint = "; merge with --dtype fp32 to keep the adapter's effect exactly" if dtype != "fp32" else ""
            raise CheckFailed(f"{verdict_line(verification)}; the merged model was not written (mismatches: "
                                 f"{verification['mismatched_prompts']}){hint}")
        result_meta = _merged_meta(meta, base_meta, adapter, sha, dtype, verification)
        write_meta(tmp, result_meta)
        paths.share_like_umask(tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MergeResult(out, verification, meta=result_meta)


def _check_shard_size(size: str) -> None:
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*", str(size), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0 or (m.group(2) is None and not m.group(1).isdigit()):
        raise ApplianceError(f"--max-shard-size {size}: not a size; give a positive size such as 200MB, 2GB or 500MiB")


def _refuse_overlap(out: Path, adapter: Path, base: Path) -> None:
    """--overwrite replaces the output folder: never the adapter or base it reads, nor a folder holding them;
    and a model is never written inside another run or model (its --overwrite would delete it)."""
    from appliance import rundir

    o = out.resolve()
    for what, d in (("--adapter", adapter), ("base model", base)):
        if o == d or o in d.parents or d in o.parents:
            raise ApplianceError(f"--output {out}: overlaps the {what} directory {d}, which the merge reads; "
                                 "choose another --output (e.g. models/<name>-merged)")
    inside = rundir.enclosing_run(o)
    if inside is not None:
        raise ApplianceError(f"--output {out}: is inside {inside[0]}, which holds a {inside[1]}; choose an --output "
                             "outside it, such as models/<name>-merged")


def _sweep_dead_tmp(out: Path) -> None:
    """Remove temporary merges of ``out`` left by processes that were killed (their pid is gone)."""
    for t in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        pid = t.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(t, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse_quantized(base: Path) -> None:
    import json

    cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    if cfg.get("quantization_config"):
        raise ApplianceError(f"{base}/config.json: the base is stored quantized; merging needs full-precision base weights (point base_model.path at the bf16/fp32 model)")


def _merge_and_unload(peft_model):  # seam for tests that prove a broken merge is caught
    return peft_model.merge_and_unload(safe_merge=True)


def _merge_into(tmp: Path, base_path: Path, adapter: Path, dtype: str, cfg: MergeConfig) -> dict[str, Any] | None:
    """Write the merged model into ``tmp``; return the verification (None when skipped)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_path))
    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    try:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=False)
    except Exception as e:  # peft raises many kinds here; the user needs only the one line
        ok, why = fits(adapter, base_path)  # torch's first line says only "Error(s) in loading state_dict": name the layer
        why = why if ok is False and why else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise ApplianceError(f"{adapter}: the adapter does not fit base {base_path} ({why}); merge it into the model "
                             "it was trained on (--model)") from None
    model.eval()
    prompts = cfg.probe_prompts or DEFAULT_PROBES
    probes = _probe_inputs(tok, prompts) if cfg.verify else None
    reference = _run_probe(model, probes, tok, cfg.max_new_tokens) if cfg.verify else None

    merged = _merge_and_unload(model)
    merged = merged.to(getattr(torch, DTYPES[dtype]))
    merged.config.dtype = getattr(torch, DTYPES[dtype])
    tmp.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(tmp), max_shard_size=cfg.max_shard_size)
    del merged, model, base
    _copy_tokenizer(base_path, tmp, tok)
    if (base_path / "generation_config.json").is_file():
        shutil.copy2(base_path / "generation_config.json", tmp / "generation_config.json")
    if not cfg.verify:
        return None

    # Compare the weights as saved (rounded to dtype), computed in float32 so that only the
    # storage rounding, not bf16 arithmetic, is measured.
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
    got = _run_probe(reloaded, probes, tok, cfg.max_new_tokens)
    del reloaded
    return _judge(prompts, reference, got, dtype)


def _probe_inputs(tok, prompts: list[str]) -> dict[str, Any]:
    """All probes as one left-padded batch: one generate call instead of one per prompt."""
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return dict(tok(texts, add_special_tokens=False, padding=True, return_tensors="pt"))


def _run_probe(model, batch: dict[str, Any], tok, max_new_tokens: int) -> tuple[list[list[int]], list[Any]]:
    """Greedy continuations and the float32 logits on each prompt's real (unpadded) tokens."""
    import torch

    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        logits = model(**batch).logits.float()
        gen = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    width = batch["input_ids"].shape[1]
    return gen[:, width:].tolist(), [logits[i][mask[i]] for i in range(len(mask))]


def _judge(prompts: list[str], reference, got, dtype: str) -> dict[str, Any]:
    n = len(prompts)
    equal = [r == g for r, g in zip(reference[0], got[0])]
    max_diff = max(float((r - g).abs().max()) for r, g in zip(reference[1], got[1])) if n else 0.0
    required = n - int(n * GREEDY_SLACK[dtype])
    passed = sum(equal) >= required and max_diff <= LOGIT_TOL[dtype]
    return {"prompts": n, "greedy_equal": sum(equal), "greedy_required": required,
            "max_logit_diff": round(max_diff, 6), "logit_tolerance": LOGIT_TOL[dtype], "dtype": dtype,
            "compared": "PeftModel(base fp32 + adapter, unmerged) vs merged weights as saved, computed in fp32",
            "mismatched_prompts": [p for p, e in zip(prompts, equal) if not e], "passed": passed}


def _copy_tokenizer(base_path: Path, dest: Path, tok) -> None:
    copied = False
    for name in TOKENIZER_FILES:
        if (base_path / name).is_file():
            shutil.copy2(base_path / name, dest / name)
            copied = True
    if not copied:  # a base without tokenizer files on disk (e.g. loaded from a cache)
        tok.save_pretrained(str(dest))


def _merged_meta(meta: dict, base_meta: dict, adapter: Path, sha: str, dtype: str, verification: dict | None) -> dict:
    from appliance import __version__ as version

    return {
        "kind": "merged-model",
        "appliance_version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": base_meta,
        "adapter": {"path": str(adapter), "name": adapter.name, "sha256": sha, "method": meta.get("method"),
                    "lora": meta.get("lora")},
        "identity": meta.get("identity") or {},
        "identity_markers": list(base_meta.get("identity_markers") or []),
        "dtype": dtype,
        "verification": verification if verification is not None else {"skipped": True},
        "versions": library_versions(),
    }


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` into place; an existing ``out`` is set aside first and removed after."""
    old = None
    # Ctrl-C or kill (which unwinds like Ctrl-C) between the two renames left no --output at all (the old merge set
    # aside, the new one removed with the temporary folder): a signal meanwhile is held until both renames are done
    with _signals_deferred():
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


@contextmanager
def _signals_deferred():
    """Hold SIGINT, SIGTERM and SIGHUP for the block, then act on the first that came as its handler would have.
    (Blocking them with pthread_sigmask is not enough: torch's threads still take a signal sent to the process.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    came: list[tuple[int, Any]] = []
    handlers = {s: signal.signal(s, lambda signum, frame: came.append((signum, frame)))
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if came:
            signum, frame = came[0]
            h = handlers[signum]
            if callable(h):
                h(signum, frame)  # the CLI's: KeyboardInterrupt, as it would have raised a moment earlier
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
