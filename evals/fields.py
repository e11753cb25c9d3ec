"""Field rules shared by ``--prompts`` records and ``--from-answers`` rows: answer keys of other tools, ``expect``
lists, ``lang`` codes, and a dataset named by its LLaMA-Factory ``dataset_info.json`` entry.

Kept apart from evals/prompts.py (the loaders) and evals/report.py (the metrics), which both read these fields
and must read them the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from appliance.errors import ApplianceError
from evals.jsonfiles import json_type

# Keys other tools give a prompt's one answer in ({"prompt": ..., "completion": ...} is OpenAI's fine-tuning
# format, "response"/"output"/"answer" are common hand-made ones): each holds one text, so it can only be the
# reference. Read only in our format, beside "prompt" and without "reference" (an answers.jsonl row has both
# "reference" and the model's "answer"; alpaca's "output" is read by the alpaca format).
REFERENCE_ALIASES = ("completion", "response", "output", "answer")
# Keys that hold an answer eval cannot place: a list or a label may be accepted answers (expect) or a class
# name, and ignoring them would score the record as nothing at all
UNREAD_ANSWER_KEYS = ("answers", "expected_answer", "expected_answers", "expected_output", "expected_response",
                      "correct_answer", "correct_answers", "gold", "gold_answer", "ground_truth", "label", "labels",
                      "target", "targets", "ideal", "solution")
_USE = "use 'reference' (a text answer, scored by BLEU/ROUGE) or 'expect' (a list of accepted answers)"


def read_answer_keys(raw: dict, where: str) -> dict:
    """An our-format record with an answer under another tool's key read as its ``reference``, or refused when
    the key does not say whether it is a reference or accepted answers."""
    unread = next((k for k in UNREAD_ANSWER_KEYS if k in raw), None)
    if unread is not None:
        raise ApplianceError(f"{where}: field '{unread}' is not read, so its answer would not be scored; rename it: {_USE}")
    if "reference" in raw:
        return raw
    given = [k for k in REFERENCE_ALIASES if k in raw]
    if len(given) > 1:
        raise ApplianceError(f"{where}: both '{given[0]}' and '{given[1]}' fields, two answers for one prompt; keep one, "
                             "as 'reference'")
    if not given:
        return raw
    value = raw[given[0]]
    if value is not None and not isinstance(value, str):
        raise ApplianceError(f"{where}: '{given[0]}' is read as the 'reference' and must be a string, not "
                             f"{json_type(value)}; give accepted answers as 'expect' instead")
    final = GSM8K_FINAL.search(value or "")
    if final and "expect" not in raw:
        # GSM8K's worked solution ending "#### 72": the final answer is what is checked (BLEU against the
        # solution and its <<48/2=24>> calculator notes would measure nothing)
        return {**raw, "expect": [final.group(1)]}
    return {**raw, "reference": value}


# the last line of a GSM8K answer: "#### 72" (the final answer after the worked solution)
GSM8K_FINAL = re.compile(r"(?:^|\n)####[ \t]*(\S[^\n]*?)\s*$")


def expect_list(value: object, where: str, allow_empty: bool = False) -> list[str]:
    """``expect`` as the list of accepted answers: a list of non-blank strings, or one string (one answer, or a
    JSON list of strings written as text, as a CSV cell holds it: ``["4", "four"]``).

    None is no expect; so is ``[]`` when ``allow_empty`` (answers.jsonl writes it for a prompt without one), while
    a prompt file's ``[]``, ``""`` or ``0`` is a mistake: read as "no expect", it would drop the check silently.
    """
    fix = "fix the value, e.g. [\"4\", \"four\"]"
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            raise ApplianceError(f"{where}: 'expect' must be a list of accepted answer strings, not a blank string; {fix}")
        value = _json_list(value)
    if not isinstance(value, list):
        raise ApplianceError(f"{where}: 'expect' must be a list of accepted answer strings, not {json_type(value)}; {fix}")
    if not value and not allow_empty:
        raise ApplianceError(f"{where}: 'expect' must be a list of accepted answer strings, not an empty list; give the "
                             "accepted answers, or leave 'expect' out")
    for n, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise ApplianceError(f"{where}: 'expect' item {n} is {json_type(item)}; accepted answers must be strings "
                                 f"(write {json.dumps(str(item))} for {json.dumps(item)})"
                                 if isinstance(item, (int, float)) and not isinstance(item, bool) else
                                 f"{where}: 'expect' item {n} is {json_type(item)}; accepted answers must be strings; {fix}")
        if not item.strip():
            raise ApplianceError(f"{where}: 'expect' item {n} is blank; remove it or give the accepted answer")
    return value


def _json_list(text: str) -> list | str:
    """A string that is a JSON list of strings is that list (a CSV cell cannot hold a list otherwise); any other
    string is one accepted answer as written ("[1, 2]" included)."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return [text]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return [text]


def norm_lang(value: str | None) -> str | None:
    """``zh-CN``, ``zh_Hans``, ``EN-us``, ``EN`` -> ``zh`` / ``en``: the per-language hit rates group by the bare code."""
    if not value or not value.strip():
        return None
    return re.split(r"[-_]", value.strip().lower(), maxsplit=1)[0]


INFO = "dataset_info.json"


def named_dataset(spec: str, infos: list[Path], read_info) -> tuple[Path, str, dict] | None:
    """``(dataset_info.json, name, entry)`` when ``spec`` is a bare name (no folder, no extension) that one of
    ``infos`` lists, the first that does, as LLaMA-Factory's ``dataset: mine`` names an entry of its data folder's
    dataset_info.json; None otherwise. ``read_info`` reads and checks one (a broken one is an error naming it)."""
    if not spec or "/" in spec or "\\" in spec or Path(spec).suffix.lower() in (".json", ".jsonl", ".csv", ".parquet"):
        return None
    for info in infos:
        if info.is_file():
            entries = read_info(info)
            if spec in entries:
                return info, spec, entries[spec]
    return None
