"""Report from ``answers.jsonl`` alone: metrics per model and per set, regression gate, report files.

:func:`recompute` is the single source of every figure: the eval builds report.json with it, so
``recompute(answers.jsonl)`` reproduces report.json's metrics exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from appliance.errors import ApplianceError
from evals import metrics as M

# Per-model keys of report.json (sets are under "sets"); the gate accepts these and SET.KEY.
MODEL_KEYS = ("n", "errors", "bleu4", "rouge1", "rouge2", "rougeL", "identity_hit_rate", "identity_zh_hit_rate",
              "identity_en_hit_rate", "identity_leak_rate", "general_accuracy", "general_correct", "general_total",
              "name_leak_rate", "name_leak_count", "output_tokens", "requests_per_s", "output_tokens_per_s",
              "ttft_p50_ms", "ttft_p95_ms", "tpot_ms", "latency_p50_ms", "latency_p95_ms")
SET_KEYS = ("n", "bleu4", "rouge1", "rouge2", "rougeL", "hit_rate", "leak_rate", "accuracy", "name_leak_rate",
            "name_leak_count")
REQUIRED_FIELDS = ("model", "role", "prompt", "answer", "kind", "set", "latency_ms", "started_at", "name", "author")


def load_answers(path: str | Path) -> list[dict]:
    """Rows of an answers.jsonl, checked for the fields the report needs."""
    p = Path(path)
    if not p.is_file():
        raise ApplianceError(f"{p}: answers file not found; pass the answers.jsonl written by `appliance eval`")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ApplianceError(f"{p}: not UTF-8 text; pass the answers.jsonl written by `appliance eval`")
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ApplianceError(f"{p} line {n}: invalid JSON ({e.msg})")
        if not isinstance(row, dict):
            raise ApplianceError(f"{p} line {n}: expected a JSON object per line; it was not written by `appliance eval`")
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise ApplianceError(f"{p} line {n}: missing {', '.join(missing)}; it was not written by `appliance eval`")
        rows.append(row)
    if not rows:
        raise ApplianceError(f"{p}: no answers in it")
    return rows


def _r(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


@lru_cache(maxsize=16384)
def _pair_scores(answer: str, reference: str) -> tuple[float, float, float, float]:
    # every row is scored in several groups (its set, "identity", the model): score each pair once
    r = M.rouge_scores(answer, reference)
    return M.bleu4(answer, reference), r["rouge1"], r["rouge2"], r["rougeL"]


def _similarity(rows: list[dict]) -> dict[str, float | None]:
    scored = [_pair_scores(r["answer"], r["reference"]) for r in rows if r.get("reference")]
    keys = ("bleu4", "rouge1", "rouge2", "rougeL")
    return {k: M.mean(s[i] for s in scored) for i, k in enumerate(keys)}


def _group_metrics(rows: list[dict], markers: list[str]) -> dict:
    """Quality metrics of any group of rows of one model (a set, or all of them)."""
    name, author = rows[0]["name"], rows[0]["author"]
    ident = [r for r in rows if r["kind"] == "identity"]
    general = [r for r in rows if r["kind"] != "identity"]
    checkable = [r for r in rows if r.get("expect")]
    leaks = [M.mentions_new_identity(r["answer"], name, author) for r in general]
    out = {"n": len(rows), **_similarity(rows),
           "hit_rate": M.rate([M.identity_hit(r["answer"], name, author) for r in ident]),
           "leak_rate": M.rate([M.identity_leak(r["answer"], markers) for r in ident]) if markers else None,
           "accuracy": M.rate([M.is_correct(r["answer"], r["expect"]) for r in checkable]),
           "correct": sum(M.is_correct(r["answer"], r["expect"]) for r in checkable), "checkable": len(checkable),
           "name_leak_rate": M.rate(leaks), "name_leak_count": sum(leaks) if general else None}
    return out


def _model_metrics(rows: list[dict]) -> dict:
    markers = list(rows[0].get("old_identity") or [])
    every = _group_metrics(rows, markers)
    lang_hit = {lang: M.rate([M.identity_hit(r["answer"], r["name"], r["author"]) for r in rows
                              if r["kind"] == "identity" and r.get("lang") == lang]) for lang in ("zh", "en")}
    out = {"model": rows[0]["model"], "n": len(rows), "errors": sum(1 for r in rows if r.get("error")),
           "bleu4": every["bleu4"], "rouge1": every["rouge1"], "rouge2": every["rouge2"], "rougeL": every["rougeL"],
           "identity_hit_rate": every["hit_rate"], "identity_zh_hit_rate": lang_hit["zh"],
           "identity_en_hit_rate": lang_hit["en"], "identity_leak_rate": every["leak_rate"],
           "general_accuracy": every["accuracy"], "general_correct": every["correct"], "general_total": every["checkable"],
           "name_leak_rate": every["name_leak_rate"], "name_leak_count": every["name_leak_count"],
           "output_tokens": sum(r.get("output_tokens") or 0 for r in rows), **M.latency_stats(rows)}
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["set"], []).append(r)
    if any(r["kind"] == "identity" for r in rows):
        groups["identity"] = [r for r in rows if r["kind"] == "identity"]  # ZH and EN together
    out["sets"] = {}
    for s, rs in groups.items():
        g = _group_metrics(rs, markers)
        out["sets"][s] = {k: (_r(v) if isinstance(v, float) else v) for k, v in g.items()
                          if k in SET_KEYS and v is not None}
    return {k: (_r(v) if isinstance(v, float) else v) for k, v in out.items()}


def compute(rows: list[dict]) -> dict:
    """All report figures from answer rows: identity, markers, and per-model metrics keyed by role."""
    first = rows[0]
    for r in rows:
        if (r["name"], r["author"]) != (first["name"], first["author"]):
            raise ApplianceError("answers mix several --name/--author pairs; evaluate one identity per report")
    by_role: dict[str, list[dict]] = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    return {"name": first["name"], "author": first["author"], "old_identity": list(first.get("old_identity") or []),
            "models": {role: _model_metrics(rs) for role, rs in by_role.items()}}


def recompute(answers_path: str | Path) -> dict:
    """Every figure of report.json (all but ``gate`` and ``run``), from answers.jsonl alone."""
    return compute(load_answers(answers_path))


# ---------------------------------------------------------------- regression gate
@dataclass(frozen=True)
class Rule:
    """One gate condition: ``fail_under``/``fail_over`` bound each after model, ``max_drop``/``max_rise`` compare with before."""

    op: str
    key: str
    value: float

    def __str__(self) -> str:
        return f"--{self.op.replace('_', '-')} {self.key}={self.value:g}"


def parse_rules(fail_under=(), fail_over=(), max_drop=(), max_rise=()) -> list[Rule]:
    """Parse ``METRIC=NUMBER`` flag values (METRIC is a model key or SET.KEY), failing on unknown metrics."""
    rules = []
    for op, values in (("fail_under", fail_under), ("fail_over", fail_over), ("max_drop", max_drop), ("max_rise", max_rise)):
        for spec in values:
            flag = f"--{op.replace('_', '-')}"
            key, sep, num = spec.partition("=")
            try:
                value = float(num)
            except ValueError:
                value = None
            if not sep or value is None or not math.isfinite(value) or not key.strip():
                raise ApplianceError(f"{flag} {spec}: expected METRIC=NUMBER, e.g. identity_hit_rate=0.95")
            key = key.strip()
            metric = key.split(".", 1)[1] if "." in key else key
            if metric not in (SET_KEYS if "." in key else MODEL_KEYS):
                known = ", ".join(SET_KEYS if "." in key else MODEL_KEYS)
                raise ApplianceError(f"{flag} {spec}: unknown metric '{metric}'; use one of {known} (or SET.KEY)")
            rules.append(Rule(op, key, value))
    return rules


def metric_value(model: dict, key: str) -> float | None:
    """A model's metric by key: a model key (``general_accuracy``) or ``SET.KEY`` (``identity_zh.bleu4``)."""
    if "." in key:
        s, k = key.split(".", 1)
        return model.get("sets", {}).get(s, {}).get(k)
    return model.get(key)


def apply_gate(report: dict, rules: list[Rule]) -> dict:
    """Check rules on every after model (on ``before`` when it is the only model); failed requests always fail."""
    failures = []
    models = report["models"]
    before = models.get("before")
    targets = [r for r in models if r != "before"] or list(models)
    for role, m in models.items():
        if m.get("errors"):
            failures.append(f"{role} ({m['model']}): {m['errors']} of {m['n']} requests failed")
    for role in targets:
        m = models[role]
        for rule in rules:
            v = metric_value(m, rule.key)
            where = f"{role} ({m['model']}) {rule.key}"
            if v is None:
                failures.append(f"{where}: not measured by these prompts ({rule})")
            elif rule.op in ("max_drop", "max_rise"):
                b = metric_value(before, rule.key) if before and role != "before" else None
                if b is None:
                    failures.append(f"{where}: no --before value to compare with ({rule})")
                elif rule.op == "max_drop" and b - v > rule.value + 1e-9:
                    failures.append(f"{where} dropped {b - v:.4g} ({b:.4g} -> {v:.4g}), more than {rule.value:g}")
                elif rule.op == "max_rise" and v - b > rule.value + 1e-9:
                    failures.append(f"{where} rose {v - b:.4g} ({b:.4g} -> {v:.4g}), more than {rule.value:g}")
            elif rule.op == "fail_under" and v < rule.value:
                failures.append(f"{where} = {v:.4g}, under {rule.value:g}")
            elif rule.op == "fail_over" and v > rule.value:
                failures.append(f"{where} = {v:.4g}, over {rule.value:g}")
    return {"passed": not failures, "failures": failures, "rules": [str(r) for r in rules]}


def write_report(out_dir: str | Path, rules: list[Rule] = (), run: dict | None = None,
                 answers_path: str | Path | None = None) -> dict:
    """Build report.json, report.md and report.html in ``out_dir`` from its answers.jsonl (or ``answers_path``)."""
    from appliance.paths import atomic_write_text
    from evals.render import render_html, render_md

    out = Path(out_dir)
    src = Path(answers_path) if answers_path else out / "answers.jsonl"
    rows = load_answers(src)
    report = compute(rows)
    report["gate"] = apply_gate(report, list(rules))
    report["run"] = {**(run or {}), "answers": str(src), "report_dir": str(out)}
    # all three rendered before any is written: a failure leaves the previous report whole
    texts = {"report.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
             "report.md": render_md(report, rows), "report.html": render_html(report, rows)}
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    return report
