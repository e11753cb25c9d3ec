"""Report from ``answers.jsonl`` alone: metrics per model and per set, regression gate, report files.

:func:`recompute` is the single source of every figure: the eval builds report.json with it, so
``recompute(answers.jsonl)`` reproduces report.json's metrics exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from appliance.datafiles import parse_json
from appliance.errors import ApplianceError
from evals import metrics as M
from evals.fields import expect_list, norm_lang
from evals.jsonfiles import read_text, refuse_bad_text

# Per-model keys of report.json (sets are under "sets"); the gate accepts these and SET.KEY.
MODEL_KEYS = ("n", "errors", "truncated", "references", "bleu4", "rouge1", "rouge2", "rougeL", "identity_hit_rate", "identity_zh_hit_rate",
              "identity_en_hit_rate", "identity_leak_rate", "general_accuracy", "general_correct", "general_total",
              "name_leak_rate", "name_leak_count", "output_tokens", "requests_per_s", "output_tokens_per_s",
              "ttft_p50_ms", "ttft_p95_ms", "tpot_ms", "latency_p50_ms", "latency_p95_ms")
SET_KEYS = ("n", "references", "bleu4", "rouge1", "rouge2", "rougeL", "hit_rate", "leak_rate", "accuracy",
            "name_leak_rate", "name_leak_count")
REQUIRED_FIELDS = ("model", "role", "prompt", "answer", "kind", "set", "latency_ms", "started_at", "name", "author")
# The roles `appliance eval` writes (appliance.evaluate.roles): before, after, or after1, after2 ... with several
# --after models (the pipeline's one report uses before, after1, after2). Any other role would be one more model.
ROLE = re.compile(r"before|after|after[1-9][0-9]*")
# Metrics that are fractions (0.95 is 95%; report.md and the summary table show them x100).
RATE_KEYS = ("identity_hit_rate", "identity_zh_hit_rate", "identity_en_hit_rate", "identity_leak_rate",
             "general_accuracy", "name_leak_rate")
SET_RATE_KEYS = ("hit_rate", "leak_rate", "accuracy", "name_leak_rate")
ANSWERS_FIX = "pass the answers.jsonl written by `appliance eval` (or the report folder that holds it)"
ROW_FIX = ("each line must be one complete JSON object as `appliance eval` writes it; "
           "re-run the eval to write the file again")
# what a report folder holds; all four are replaced together
REPORT_FILES = ("answers.jsonl", "report.json", "report.md", "report.html")


def _shown(value: object) -> str:
    """A field's bad value for an error message: scalars as written, containers by kind."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:40] + "…"


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_row(row: dict, where: str) -> dict:
    """One answers row with every field the report reads of the type it needs (a string expect is one answer)."""
    def wrong(key: str, want: str) -> ApplianceError:
        return ApplianceError(f"{where}: '{key}' must be {want}, not {_shown(row[key])}; "
                              "fix the row, or re-run `appliance eval` to write the file again")

    for key in ("model", "role", "set", "name", "author"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise wrong(key, "a non-empty string")
    for key in ("prompt", "answer"):
        if not isinstance(row[key], str):
            raise wrong(key, "a string")
    if not ROLE.fullmatch(row["role"]):
        raise wrong("role", '"before", "after" or "after1", "after2", ... (the roles `appliance eval` writes)')
    if row["kind"] not in ("identity", "general"):
        raise wrong("kind", '"identity" or "general"')
    for key in ("reference", "lang", "error", "finish_reason"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise wrong(key, "a string or null")
    # a string is one answer (scored as a list it would be a list of characters), or a JSON list written as text
    expect = expect_list(row.get("expect"), where, allow_empty=True)
    markers = row.get("old_identity")
    if markers is not None and not (isinstance(markers, list) and all(isinstance(m, str) for m in markers)):
        raise wrong("old_identity", "a list of strings")
    for key in ("latency_ms", "started_at"):
        if not _is_number(row[key]) or (key == "latency_ms" and row[key] < 0):
            raise wrong(key, "a number" + (" of at least 0" if key == "latency_ms" else ""))
    for key in ("ttft_ms", "output_tokens"):
        if row.get(key) is not None and not (_is_number(row[key]) and row[key] >= 0):
            raise wrong(key, "a number of at least 0, or null")
    if row.get("ttft_ms") is not None and row["ttft_ms"] > row["latency_ms"]:
        # the first token cannot come after the whole answer: TPOT would come out negative
        raise wrong("ttft_ms", f"at most its latency_ms ({_shown(row['latency_ms'])})")
    # "EN" edited by hand is "en", as --prompts reads it: identity_en_hit_rate would not count it otherwise
    return {**row, "expect": expect, "lang": norm_lang(row.get("lang"))}


def _asked(row: dict) -> str:
    """What a row's model was asked: the same for every model of one eval."""
    return json.dumps([row["prompt"], row["set"], row.get("system"), row.get("history") or []], ensure_ascii=False)


def _check_aligned(rows: list[dict], source: str | Path) -> None:
    """One model per role, and every role answering the same prompts: answers of two evals joined into one
    file would be compared prompt set against prompt set, and the report would say "N prompts each"."""
    by_role: dict[str, list[dict]] = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    fix = "rebuild each report from the answers.jsonl of one `appliance eval`"
    for role, rs in by_role.items():
        models = list(dict.fromkeys(r["model"] for r in rs))
        if len(models) > 1:
            raise ApplianceError(f"{source}: role '{role}' holds the answers of {len(models)} models "
                                 f"({', '.join(models[:3])}); a report has one model per role; {fix}")
    (first, first_rows), *others = by_role.items()
    want = Counter(_asked(r) for r in first_rows)
    for role, rs in others:
        got = Counter(_asked(r) for r in rs)
        if got != want:
            odd = next(iter((got - want) or (want - got)))
            who = role if (got - want) else first
            raise ApplianceError(f"{source}: '{role}' and '{first}' were not asked the same prompts ({len(rs)} and "
                                 f"{len(first_rows)} answers; {json.loads(odd)[0][:60]!r} only or more often in "
                                 f"'{who}'); {fix}")


def parse_answers(text: str, source: str | Path) -> list[dict]:
    """Rows of answers.jsonl text, each checked for the fields the report needs; ``source`` names it in errors."""
    rows = []
    asked: dict[str, str] = {}  # what each role was asked -> the line that answered it
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): an answer may hold U+2028 or U+0085
        if not line.strip():
            continue
        where = f"{source} line {n}"
        try:
            row = parse_json(line, where, ROW_FIX)
        except json.JSONDecodeError as e:
            # a file cut off mid-write, or not text at all: say what a line must be, not only where parsing stopped
            raise ApplianceError(f"{where}: invalid JSON at column {e.colno} ({e.msg}); {ROW_FIX}") from None
        if not isinstance(row, dict):
            raise ApplianceError(f"{where}: expected a JSON object per line; it was not written by `appliance eval`")
        # checked before anything is scored: the report could not be written with it (no UTF-8 file holds one)
        refuse_bad_text(row, where, "remove it or re-run `appliance eval` to write the file again")
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise ApplianceError(f"{where}: missing {', '.join(missing)}; it was not written by `appliance eval`")
        rows.append(_check_row(row, where))
        # one eval asks each model each prompt once (repeats are sent once): a second answer is a joined file
        # (`cat a b`) or a pasted row, and would count twice in every rate
        key = json.dumps([row["role"], row["model"], row["prompt"], row.get("system"), row.get("history") or []], ensure_ascii=False)
        if key in asked:
            raise ApplianceError(f"{where}: '{row['role']}' ({row['model']}) answers the prompt of {asked[key]} again "
                                 f"({row['prompt'][:60]!r}, same system prompt and history); two answers files joined? "
                                 "rebuild the report from one `appliance eval`'s answers.jsonl, or delete the repeat")
        asked[key] = f"line {n}"
    if not rows:
        raise ApplianceError(f"{source}: no answers in it (the file is empty); {ANSWERS_FIX}")
    _check_aligned(rows, source)
    return rows


def answers_file(path: Path) -> Path:
    """``path``, or the answers.jsonl in it when it is a folder (``--from-answers reports/archer``)."""
    if not path.is_dir():
        return path
    own = path / "answers.jsonl"
    if not os.path.lexists(own):
        raise ApplianceError(f"{path}: is a folder without an answers.jsonl; {ANSWERS_FIX}")
    return own


def read_answers(p: Path) -> str:
    """An answers file's text; a missing or unreadable one is a one-line error naming it."""
    return read_text(p, ANSWERS_FIX, what="answers file")


def load_answers(path: str | Path) -> list[dict]:
    """Rows of an answers.jsonl (or of the one in a report folder), checked for the fields the report needs."""
    p = answers_file(Path(path))
    return parse_answers(read_answers(p), p)


def _r(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


@lru_cache(maxsize=16384)
def _pair_scores(answer: str, reference: str) -> tuple[float, float, float, float]:
    # every row is scored in several groups (its set, "identity", the model): score each pair once
    r = M.rouge_scores(answer, reference)
    return M.bleu4(answer, reference), r["rouge1"], r["rouge2"], r["rougeL"]


def _similarity(rows: list[dict]) -> dict[str, float | int | None]:
    """Mean BLEU-4/ROUGE over the rows that have a reference, and how many those are (``references``)."""
    scored = [_pair_scores(r["answer"], r["reference"]) for r in rows if r.get("reference")]
    keys = ("bleu4", "rouge1", "rouge2", "rougeL")
    return {"references": len(scored), **{k: M.mean(s[i] for s in scored) for i, k in enumerate(keys)}}


def _group_metrics(rows: list[dict], markers: list[str]) -> dict:
    """Quality metrics of any group of rows of one model (a set, or all of them)."""
    name, author = rows[0]["name"], rows[0]["author"]
    ident = [r for r in rows if r["kind"] == "identity"]
    general = [r for r in rows if r["kind"] != "identity"]
    checkable = [r for r in rows if r.get("expect")]
    # a prompt that itself names the new name or author ("Who is Acme Labs?") is answered on topic, not leaked into
    unrelated = [r for r in general if not M.mentions_new_identity(r["prompt"], name, author)]
    leaks = [M.mentions_new_identity(r["answer"], name, author) for r in unrelated]
    out = {"n": len(rows), **_similarity(rows),
           "hit_rate": M.rate([M.identity_hit(r["answer"], name, author) for r in ident]),
           "leak_rate": M.rate([M.identity_leak(r["answer"], markers) for r in ident]) if markers else None,
           "accuracy": M.rate([M.is_correct(r["answer"], r["expect"], r["prompt"]) for r in checkable]),
           "correct": sum(M.is_correct(r["answer"], r["expect"], r["prompt"]) for r in checkable), "checkable": len(checkable),
           "name_leak_rate": M.rate(leaks), "name_leak_count": sum(leaks) if unrelated else None}
    return out


def _model_metrics(rows: list[dict]) -> dict:
    markers = list(rows[0].get("old_identity") or [])
    every = _group_metrics(rows, markers)
    # general accuracy is the non-identity prompts' (an identity prompt's `expect` counts in its set's accuracy)
    right = [M.is_correct(r["answer"], r["expect"], r["prompt"]) for r in rows if r["kind"] != "identity" and r.get("expect")]
    general = {"accuracy": M.rate(right), "correct": sum(right), "checkable": len(right)}
    lang_hit = {lang: M.rate([M.identity_hit(r["answer"], r["name"], r["author"]) for r in rows
                              if r["kind"] == "identity" and r.get("lang") == lang]) for lang in ("zh", "en")}
    out = {"model": rows[0]["model"], "n": len(rows), "errors": sum(1 for r in rows if r.get("error")),
           # answers cut at --max-tokens (unknown for answers files written before it was recorded)
           "truncated": sum(r.get("finish_reason") == "length" for r in rows) if any("finish_reason" in r for r in rows) else None,
           "references": every["references"], "bleu4": every["bleu4"], "rouge1": every["rouge1"], "rouge2": every["rouge2"], "rougeL": every["rougeL"],
           "identity_hit_rate": every["hit_rate"], "identity_zh_hit_rate": lang_hit["zh"],
           "identity_en_hit_rate": lang_hit["en"], "identity_leak_rate": every["leak_rate"],
           "general_accuracy": general["accuracy"], "general_correct": general["correct"], "general_total": general["checkable"],
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


def is_rate(key: str) -> bool:
    """Whether a model key or SET.KEY is a rate (0-1, shown in %) rather than a score or a count."""
    return key.rsplit(".", 1)[-1] in (SET_RATE_KEYS if "." in key else RATE_KEYS)


def parse_rules(fail_under=(), fail_over=(), max_drop=(), max_rise=()) -> list[Rule]:
    """Parse ``METRIC=NUMBER`` flag values (METRIC is a model key or SET.KEY), failing on unknown metrics."""
    rules = []
    for op, values in (("fail_under", fail_under), ("fail_over", fail_over), ("max_drop", max_drop), ("max_rise", max_rise)):
        for spec in values:
            flag = f"--{op.replace('_', '-')}"
            key, sep, num = spec.rpartition("=")  # a set name may hold "=": the number never does
            try:
                # Python's own literals (1_0 = 10) are no number a user means
                value = None if "_" in num else float(num)
            except ValueError:
                value = None
            if not sep or value is None or not math.isfinite(value) or not key.strip():
                pct = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", num) if sep and key.strip() else None
                if pct:  # "identity_hit_rate=95%": rates are fractions, BLEU/ROUGE plain numbers
                    k, p = key.strip(), float(pct.group(1))
                    raise ApplianceError(f"{flag} {spec}: no % sign; " + (f"rates are 0-1: write {k}={p / 100:g}" if is_rate(k)
                                         else f"write {k}={p:g}"))
                raise ApplianceError(f"{flag} {spec}: expected METRIC=NUMBER, e.g. identity_hit_rate=0.95")
            key = key.strip()
            # SET.KEY split at the last dot: metric names have none, set names may ("v1.0.accuracy")
            metric = key.rsplit(".", 1)[1] if "." in key else key
            if metric not in (SET_KEYS if "." in key else MODEL_KEYS):
                known = ", ".join(SET_KEYS if "." in key else MODEL_KEYS)
                raise ApplianceError(f"{flag} {spec}: unknown metric '{metric}'; use one of {known} (or SET.KEY)")
            _check_reachable(flag, spec, op, is_rate(key), value)
            rules.append(Rule(op, key, value))
    return rules


def _check_reachable(flag: str, spec: str, op: str, is_rate: bool, value: float) -> None:
    """Refuse a threshold that can never decide anything: the gate would pass or fail whatever the models answer."""
    if op in ("max_drop", "max_rise") and value < 0:
        change = "drop" if op == "max_drop" else "rise"
        raise ApplianceError(f"{flag} {spec}: a negative {change} is not a limit; give how much it may {change} "
                             "(0 for not at all)")
    if value < 0 and op in ("fail_under", "fail_over"):
        # every metric is 0 or more: under a negative bound nothing falls, over it everything passes the line
        never = "can never fail" if op == "fail_under" else "fails whatever the models answer"
        raise ApplianceError(f"{flag} {spec}: every metric is 0 or more, so this {never}; give a bound of 0 or more")
    if is_rate and not 0 <= value <= 1:
        # the summary table and report.md show rates in %, so 95 is the natural mistake for 0.95
        example = f"write {value / 100:g} for {value:g}%" if 1 < value <= 100 else "write 0.95 for 95%"
        raise ApplianceError(f"{flag} {spec}: rates are 0-1: {example}")


def metric_value(model: dict, key: str) -> float | None:
    """A model's metric by key: a model key (``general_accuracy``) or ``SET.KEY`` (``identity_zh.bleu4``)."""
    if "." in key:
        s, k = key.rsplit(".", 1)  # a set may be named "v1.0"
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


def _utf8(value: object) -> object:
    """``value`` with every string made writable as UTF-8.

    ``run`` holds paths and flags as given: a file or folder name in another encoding than UTF-8 reads
    as lone surrogates, which would stop report.json from being written after the whole eval; it is
    written escaped (``\\udcff``) instead.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8(k): _utf8(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_utf8(v) for v in value]
    return value


def _publish(out: Path, texts: dict[str, str]) -> None:
    """Put every file of ``texts`` into ``out``, or none: a failure leaves the previous set whole.

    Each file is written in a staging folder inside ``out`` (same file system, so renames are
    atomic), then renamed over its target; the files it replaces wait in the staging folder until
    all are in place, and go back if one rename fails.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in texts:
            if (out / name).is_dir() and not (out / name).is_symlink():
                raise ApplianceError(f"{out / name}: is a folder, so the report cannot replace it; remove or "
                                     "rename it, or choose another --output")
        stage = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=out))
    except OSError as e:
        raise ApplianceError(f"{out}: cannot write the report there ({e.strerror}); choose another --output") from None
    placed: list[tuple[Path, Path | None]] = []  # (target, the file it replaced, kept in the staging folder)
    name = ""
    try:
        for name, text in texts.items():
            (stage / name).write_text(text, encoding="utf-8")
        for name in texts:
            target, backup = out / name, None
            if os.path.lexists(target):
                backup = stage / f"previous.{name}"
                os.replace(target, backup)
            placed.append((target, backup))
            os.replace(stage / name, target)
    except BaseException as e:
        restored = _roll_back(placed)
        kept = "the previous files are unchanged" if restored else f"the previous files are in {stage}"
        if not restored:
            stage = None  # it holds the previous files now: keep it, the message says where
        if isinstance(e, OSError):
            raise ApplianceError(f"{out / name}: cannot write it ({e.strerror}); {kept}; fix the folder or "
                                 "choose another --output") from None
        raise
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _roll_back(placed: list[tuple[Path, Path | None]]) -> bool:
    """Put the replaced files back (newest first); False when one could not be."""
    ok = True
    for target, backup in reversed(placed):
        try:
            if backup is not None:
                os.replace(backup, target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
        except OSError:
            ok = False
    return ok


def write_report(out_dir: str | Path, rules: list[Rule] = (), run: dict | None = None,
                 answers_path: str | Path | None = None, answers_text: str | None = None) -> dict:
    """Build report.json, report.md and report.html in ``out_dir`` from its answers.jsonl.

    The answers come from ``answers_text`` (a fresh eval's rows), ``answers_path`` (an answers.jsonl,
    maybe elsewhere) or ``out_dir/answers.jsonl``; when they are not that file already they become it,
    in the same step as the reports, so the folder always holds the answers its reports describe.
    """
    from evals.render import render_html, render_md

    out = Path(out_dir)
    own = out / "answers.jsonl"
    src = Path(answers_path) if answers_path else own
    fresh = answers_text is not None
    if answers_text is None:
        answers_text = read_answers(src)
    rows = parse_answers(answers_text, own if fresh else src)
    report = compute(rows)
    report["gate"] = apply_gate(report, list(rules))
    report["run"] = _utf8({**(run or {}), "answers": str(own), "report_dir": str(out)})
    # everything is rendered before anything is written: a failure leaves the previous report whole
    texts = {"report.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
             "report.md": render_md(report, rows), "report.html": render_html(report, rows)}
    if fresh or src.resolve() != own.resolve():
        texts = {"answers.jsonl": answers_text, **texts}
    _publish(out, texts)
    return report
