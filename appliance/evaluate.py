"""``appliance eval``: replay prompt sets to served models and report what changed.

Every prompt goes to every model through the official ``openai`` client (streaming, so the first
token is timed; temperature 0; bounded concurrency). Models run one after another so their
throughput figures do not disturb each other. Nothing here imports training code.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance import paths
from appliance.errors import ApplianceError
from evals.prompts import Prompt, load_prompts
from evals.report import Rule, write_report

DEFAULT_URL = "http://127.0.0.1:8000/v1"


@dataclass
class EvalConfig:
    """Options of one eval run (the flags of ``appliance eval``)."""

    before: str
    after: list[str] = field(default_factory=list)
    url: str = DEFAULT_URL
    prompts: list[str] = field(default_factory=list)  # files or built-in set names; empty = all built-in sets
    name: str = "Archer"
    author: str = "意琦行"
    output: str | None = None  # default: reports/<name>
    concurrency: int = 4
    max_tokens: int = 128
    api_key: str | None = None  # default: $OPENAI_API_KEY, else "EMPTY" (vLLM without --api-key)
    old_identity: list[str] = field(default_factory=list)  # default: the before model's registry markers
    timeout_s: float = 300.0
    rules: list[Rule] = field(default_factory=list)


def base_url(url: str) -> str:
    """``http://host:port`` or ``.../v1`` -> the OpenAI base URL ending in ``/v1``."""
    u = url.rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise ApplianceError(f"--url {url}: expected http://HOST:PORT (e.g. {DEFAULT_URL})")
    return u if u.endswith("/v1") else u + "/v1"


def output_dir(cfg: EvalConfig) -> Path:
    """Where the report goes: ``--output`` (relative paths under $APPLIANCE_HOME) or reports/<name>."""
    if not cfg.output:
        return paths.reports_dir() / cfg.name.lower()
    p = Path(cfg.output).expanduser()
    return p if p.is_absolute() else paths.home() / p


def roles(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(role, model) pairs: ``before``, then ``after`` (or after1, after2, ... when there are several)."""
    afters = [("after" if len(cfg.after) == 1 else f"after{i}", m) for i, m in enumerate(cfg.after, 1)]
    return [("before", cfg.before)] + afters


def _markers(cfg: EvalConfig, served: dict[str, str]) -> list[str]:
    from appliance.models import markers_for

    if cfg.old_identity:
        return [m.strip() for item in cfg.old_identity for m in item.split(",") if m.strip()]
    # the served name first, then the directory vLLM loaded it from (its appliance.json)
    return markers_for(cfg.before) or markers_for(served.get(cfg.before) or "")


async def _served_models(client, url: str) -> dict[str, str]:
    import openai

    try:
        page = await client.models.list()
    except openai.AuthenticationError:
        raise ApplianceError(f"--url {url}: the server rejected the API key; pass --api-key (or set OPENAI_API_KEY)")
    except (openai.APIConnectionError, openai.APITimeoutError) as e:
        raise ApplianceError(f"--url {url}: cannot reach the server ({type(e).__name__}); start it with `appliance up` or fix --url")
    except openai.APIError as e:
        raise ApplianceError(f"--url {url}: GET /models failed ({e}); is this an OpenAI-compatible server?")
    return {m.id: (getattr(m, "root", None) or m.id) for m in page.data}


async def _ask(client, sem: asyncio.Semaphore, model: str, p: Prompt, max_tokens: int) -> dict:
    """One streamed chat completion: answer text, latency, time to first token, output tokens."""
    import openai

    async with sem:
        started_at, t0 = time.time(), time.perf_counter()
        parts: list[str] = []
        ttft = usage = None
        error = None
        try:
            stream = await client.chat.completions.create(
                model=model, messages=p.messages(), temperature=0, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        if ttft is None:
                            ttft = (time.perf_counter() - t0) * 1000.0
                        parts.append(choice.delta.content)
        except openai.APIError as e:
            error = f"{type(e).__name__}: {e}"
        latency = (time.perf_counter() - t0) * 1000.0
    return {"answer": "".join(parts), "latency_ms": round(latency, 3), "ttft_ms": None if ttft is None else round(ttft, 3),
            "output_tokens": usage if usage is not None else len(parts), "started_at": round(started_at, 6), "error": error}


async def _run(cfg: EvalConfig, prompts: list[Prompt], progress: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    from openai import AsyncOpenAI

    url = base_url(cfg.url)
    api_key = cfg.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    async with AsyncOpenAI(base_url=url, api_key=api_key, timeout=cfg.timeout_s, max_retries=2) as client:
        served = await _served_models(client, url)
        for role, model in roles(cfg):
            if model not in served:
                raise ApplianceError(f"--{role.rstrip('0123456789')} {model}: not served at {url} (it serves: "
                                     f"{', '.join(served) or 'nothing'}); load the adapter or pass a served model name")
        markers = _markers(cfg, served)
        rows: list[dict] = []
        for role, model in roles(cfg):
            progress(f"{role}: {model}: {len(prompts)} prompts, concurrency {cfg.concurrency}")
            sem = asyncio.Semaphore(cfg.concurrency)
            results = await asyncio.gather(*(_ask(client, sem, model, p, cfg.max_tokens) for p in prompts))
            for p, res in zip(prompts, results):
                rows.append({"model": model, "role": role, "prompt": p.prompt, "answer": res["answer"],
                             "reference": p.reference, "kind": p.kind, "set": p.set, "lang": p.lang, "expect": p.expect,
                             "latency_ms": res["latency_ms"], "ttft_ms": res["ttft_ms"],
                             "output_tokens": res["output_tokens"], "started_at": res["started_at"], "error": res["error"],
                             "source": p.source, "name": cfg.name, "author": cfg.author, "old_identity": markers})
    return rows, markers


def run_eval(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Replay every prompt to every model, write answers.jsonl and report.{json,md,html}; return the report.

    The report's ``gate`` says whether ``cfg.rules`` passed; the caller decides the exit code.
    """
    if cfg.concurrency < 1:
        raise ApplianceError(f"--concurrency {cfg.concurrency}: must be at least 1")
    if cfg.max_tokens < 1:
        raise ApplianceError(f"--max-tokens {cfg.max_tokens}: must be at least 1")
    if not cfg.timeout_s > 0:
        raise ApplianceError(f"--timeout {cfg.timeout_s:g}: must be more than 0 seconds")
    if not cfg.name.strip() or not cfg.author.strip():
        raise ApplianceError("--name and --author must not be empty: the identity hit rate looks for both")
    prompts = load_prompts(cfg.prompts, cfg.name, cfg.author)
    out = output_dir(cfg)
    paths.refuse_file_on_path(out, "--output")
    rows, _ = asyncio.run(_run(cfg, prompts, progress or (lambda msg: None)))
    paths.atomic_write_text(out / "answers.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    run = {"url": base_url(cfg.url), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "config": {k: v for k, v in asdict(cfg).items() if k not in ("api_key", "rules")}}
    return write_report(out, cfg.rules, run=run)


def report_from_answers(answers: str | Path, output: str | None = None, rules: list[Rule] = ()) -> dict:
    """Rebuild the report (and apply the gate) offline from an existing answers.jsonl."""
    src = paths.resolve_user_path(answers)
    out = Path(output).expanduser() if output else src.parent
    if output and not out.is_absolute():
        out = paths.home() / out
    paths.refuse_file_on_path(out, "--output")
    return write_report(out, rules, run={"rebuilt_from": str(src)}, answers_path=src)


SUMMARY = [("identity_hit_rate", 100), ("identity_zh_hit_rate", 100), ("identity_en_hit_rate", 100),
           ("identity_leak_rate", 100), ("general_accuracy", 100), ("name_leak_count", 1), ("identity.bleu4", 1),
           ("identity.rouge1", 1), ("identity.rouge2", 1), ("identity.rougeL", 1), ("open.bleu4", 1), ("open.rougeL", 1),
           ("requests_per_s", 1), ("output_tokens_per_s", 1), ("ttft_p50_ms", 1), ("ttft_p95_ms", 1), ("tpot_ms", 1)]


def summary_table(report: dict) -> str:
    """A plain-text table of the headline metrics, one column per model (rates in %; SET.KEY rows per set)."""
    from evals.report import metric_value

    models = report["models"]
    lines = [f"{'metric':<22}" + "".join(f"{r:>12}" for r in models)]
    for key, scale in SUMMARY:
        values = [metric_value(m, key) for m in models.values()]
        if all(v is None for v in values):
            continue
        cells = ["-" if v is None else f"{v * scale:.1f}" if isinstance(v, float) or scale != 1 else str(v) for v in values]
        lines.append(f"{key + (' %' if scale == 100 else ''):<22}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)
