"""Datasets: loaders for alpaca, sharegpt and OpenAI messages, by path or by name from a LLaMA-Factory
registry (:mod:`appliance.dataset_info`); each record converted by :mod:`appliance.records`.

Every record is validated before anything is returned, so a bad file fails in a second with a
one-line :class:`ApplianceError` naming the file, the record (``line N`` for JSONL, ``record #N``,
a 0-based index, for a JSON list) and the field, instead of failing minutes into training.
See data/README.md for the formats.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from appliance import paths
from appliance.datafiles import (ODD_PLACEHOLDER, ODD_PLACEHOLDER_NOTE, PLACEHOLDER, TABLES, _a, _fail, _probe, _read_json_file,
                                 _read_text, _short, _show, _syntax_error, _user_path, fill_placeholders, read_saved_dataset,
                                 read_table, saved_dataset, twice_keyed)
from appliance.datafiles import parse_json as _parse
from appliance.dataset_info import (ALPACA_COLUMNS, OPENAI_TAGS, REGISTRY_FILE, SHAREGPT_COLUMNS, SHAREGPT_TAGS,
                                    Format, dataset_registry, entry_source, read_registry, refuse_preference_data,
                                    sample_records)
from appliance.errors import ApplianceError
from appliance.records import (alpaca_messages, bad_char_fix, direct_hint, refuse_ignored_fields, sharegpt_messages,
                               use_name)

SUFFIXES = (".json", ".jsonl", *TABLES)

@dataclass
class Example:
    """One training conversation; ``source`` is ``file#index`` (JSON) or ``file:line`` (JSONL)."""

    messages: list[dict[str, str]]
    source: str
    # whether a {{name}}/{{author}} placeholder was filled in: the run then teaches an identity (appliance.json)
    filled: bool = field(default=False, compare=False)


def fingerprint(examples: list[Example]) -> str:
    """``sha256:<hex>`` of the canonical JSON of all messages, in order; sources do not count."""
    blob = json.dumps([ex.messages for ex in examples], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    # Loading refuses lone surrogates; surrogatepass keeps this total for anything else (retention answers,
    # hand-built examples) while hashing valid text exactly as plain UTF-8 would.
    return "sha256:" + hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------- reading files
_SPACE = re.compile(r"\s*")
# a split's files as the hub names them: train-00000-of-00001.parquet, test.jsonl, validation_0.json
_SPLIT = re.compile(r"(train|test|validation|valid|val|eval|dev)(?=[-_.])", re.IGNORECASE)


def _refuse_object_sequence(text: str, shown: str) -> None:
    """Pretty-printed objects one after another (not one per line) are one mistake, not one per line."""
    first = next(line for line in text.split("\n") if line.strip())
    try:
        json.loads(first)
        return  # JSON lines: read line by line
    except ValueError:
        pass
    decoder, pos, n = json.JSONDecoder(), 0, 0
    try:
        while (pos := _SPACE.match(text, pos).end()) < len(text):
            pos = decoder.raw_decode(text, pos)[1]
            n += 1
    except ValueError:
        return  # not whole objects either: the lines' own errors say where
    if n == 1:  # "1 pretty-printed JSON objects one after another" told the wrong fix
        _fail(f"{shown}: holds one JSON object written over several lines; in JSON lines each record must be on one "
              f"line: write it on one line, or rename the file to {Path(shown).with_suffix('.json').name}")
    _fail(f"{shown}: holds {n} pretty-printed JSON objects one after another; a dataset must be a JSON list "
          "[{...}, {...}] in a .json file (wrap them in [ ] with commas between), or one complete object per line")


def _records(path: Path, problems: list[str] | None = None) -> list[tuple[str, str, Any]]:
    """``(label, source, record)`` for each record; ``label`` (``line N`` / ``record #N`` / ``row N``) goes in error
    messages. With ``problems``, a JSON-lines line that does not parse is listed there and skipped instead of raised."""
    shown = _show(path)
    if path.suffix.lower() in TABLES or path.is_dir():  # row 1 is the first after a CSV's header, as a spreadsheet numbers it
        rows = read_saved_dataset(path) if path.is_dir() else read_table(path)
        out = [(f"row {n}", f"{shown}#{n - 1}", rec) for n, rec in enumerate(rows, 1) if rec != {}]
        if len(out) < len(rows):  # a spreadsheet's rows of empty cells (",,,"), as LLaMA-Factory skips them
            print(f"note: {shown}: {len(rows) - len(out)} row(s) with every cell empty skipped", file=sys.stderr)
    else:
        out = _json_records(path, shown, problems)
    if not out and not problems:
        _fail(f"{shown}: no records (the dataset is empty); add at least one conversation")
    return out


def _json_records(path: Path, shown: str, problems: list[str] | None) -> list[tuple[str, str, Any]]:
    text = _read_text(path)
    as_lines = path.suffix.lower() == ".jsonl" or not text.strip()  # an empty file: "no records", below
    lines_in_json = False
    twice: list = []  # objects that name a key twice (json keeps the last value): see _once
    if not as_lines and text.lstrip().startswith("{"):
        # datasets' json loader (hence LLaMA-Factory) reads JSON lines from a .json file too.
        try:
            one = _parse(text, shown, twice=twice)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # one broken object, not several lines: report where it breaks
                _syntax_error(shown, e)
            as_lines = lines_in_json = True
            twice.clear()  # the first line's objects: read again below
            _refuse_object_sequence(text, shown)
        else:
            if not (isinstance(one, dict) and _kind(one)):
                _fail(f"{shown}: holds one JSON object; a .json dataset must be a list of records "
                      "([{...}, {...}]), or one object per line in a .jsonl file")
            # one record: JSON lines of one line, as datasets reads it
            return _once([("record #0", f"{shown}#0", one)], twice)
    elif as_lines and text.lstrip().startswith("{"):
        _refuse_object_sequence(text, shown)  # pretty-printed objects in a .jsonl: one mistake, not one per line
    array_fix = ""
    if as_lines and text.lstrip().startswith("["):
        # a JSON list (often pretty-printed) saved as .jsonl: json would name only the first line's bracket
        array_fix = (f"it looks like a JSON array, not JSON lines; rename it to {path.with_suffix('.json').name}, "
                     "or write one object per line")
        try:
            whole = _parse(text, shown)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, list):
            _fail(f"{shown}: {array_fix}")
    out: list[tuple[str, str, Any]] = []
    if as_lines:
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
            line = line.removeprefix("\ufeff")  # files joined with `cat`: each one's byte order mark
            if not line.strip():
                continue
            try:
                out.append((f"line {n}", f"{shown}:{n}", _parse(line, f"{shown}: line {n}", twice=twice)))
            except json.JSONDecodeError as e:
                # A .json file with several values may be pretty-printed objects, not JSON lines: name both forms.
                fix = ("the file is neither a JSON list nor JSON lines; a .json dataset must be a JSON list "
                       "[{...}, {...}] (or one complete object per line)") if lines_in_json else \
                    array_fix or "each line must hold one complete JSON object"
                if e.msg == "Extra data" and line[e.pos:].strip() == ",":  # a JSON list's items, brackets removed
                    fix = "a comma after the object: JSON lines are not separated by commas, remove it" + \
                        (" (or put [ ] around all the records to make the file a JSON list)" if lines_in_json else "")
                try:
                    _syntax_error(shown, e, n, fix)
                except ApplianceError as bad:
                    if problems is None:
                        raise
                    problems.append(str(bad))
    else:
        try:
            obj = _parse(text, shown, twice=twice)
        except json.JSONDecodeError as e:
            _syntax_error(shown, e)
        if not isinstance(obj, list):
            _fail(f"{shown}: top level is {_a(obj)}; a .json dataset must be a list of records ([{{...}}, ...])")
        out = [(f"record #{i}", f"{shown}#{i}", rec) for i, rec in enumerate(obj)]
    return _once(out, twice)


class _TwiceKeyed:
    """In place of a record that names a key twice with different values: refused in its turn, as a bad record."""

    def __init__(self, problem: str):
        self.problem = problem


def _once(records: list[tuple[str, str, Any]], twice: list) -> list[tuple[str, str, Any]]:
    """Each record that names a key twice with different values replaced by its problem: json keeps the last
    ({"output": "A", "output": "B"} trains "B"), so the other would be lost without a word."""
    if not twice:  # the common case: no record needs walking
        return records
    return [(label, source, _TwiceKeyed(found) if (found := twice_keyed(rec)) else rec) for label, source, rec in records]


_FORMAT_KEYS = {"messages": ("messages",), "conversations": ("conversations",), "alpaca": ("instruction", "output")}


def _columns_found(rec: dict) -> list[str]:
    """The formats whose keys the record fills in: "messages", "conversations", "alpaca"."""
    # a null column says nothing (exports of mixed data write every column, null where unused)
    return [kind for kind, keys in _FORMAT_KEYS.items() if any(rec.get(k) is not None for k in keys)]


def _kind(rec: dict) -> tuple[str, str | None] | None:
    """What auto-detection makes of a record: its column ("alpaca" for alpaca) and role tag when the first
    turn shows one; None when it cannot tell."""
    found = _columns_found(rec)
    if not found:
        if rec.get("prompt") is not None and rec.get("completion") is not None:  # TRL's prompt-completion
            return "prompt_completion", "role" if isinstance(rec["prompt"], list) else None
        return None
    if found[0] == "alpaca":
        return "alpaca", None
    turns = rec[found[0]]
    first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
    return found[0], "from" if "from" in first else "role" if "role" in first else None


def _refuse_ambiguous(where: str, rec: dict) -> None:
    """A record filled in for two formats: whichever is read, the other would be dropped without a word."""
    found = _columns_found(rec)
    if len(found) > 1:
        names = {"messages": "OpenAI messages", "conversations": "sharegpt", "alpaca": "alpaca"}
        both = [f"{'/'.join(repr(k) for k in _FORMAT_KEYS[kind] if rec.get(k) is not None)} ({names[kind]})"
                for kind in found[:2]]
        _fail(f"{where}: holds both {both[0]} and {both[1]}, so its format is ambiguous (one of them would be "
              "ignored); keep one format per record: remove or rename the other keys")


def _describe(kind: tuple[str, str | None]) -> str:
    return {("alpaca", None): "alpaca (instruction/output)", ("messages", "from"): "'messages' with from/value turns",
            ("conversations", "role"): "sharegpt with role/content turns",
            ("conversations", "from"): "sharegpt (from/value turns)",
            ("prompt_completion", None): "prompt/completion text (TRL)",
            ("prompt_completion", "role"): "prompt/completion messages (TRL)"}.get(kind) or \
        ("OpenAI messages" if kind[0] == "messages" else "sharegpt")


def _detect(where: str, rec: dict, path: Path) -> Format:
    kind = _kind(rec)
    if kind is None:
        _fail(f"{where}: cannot tell the format from keys {sorted(rec)}; records need 'messages' (OpenAI), "
              f"'conversations' (sharegpt) or 'instruction' + 'output' (alpaca); {direct_hint(str(path))}")
    column, role_tag = kind
    if column == "alpaca":
        return Format("alpaca", dict(ALPACA_COLUMNS), auto=True, kind=kind, origin=str(path))
    if column == "prompt_completion":  # TRL's: text as alpaca's, messages joined into one conversation
        if role_tag is None:
            return Format("alpaca", {"prompt": "prompt", "response": "completion", "system": "system"}, auto=True,
                          kind=kind, origin=str(path))
        return Format("sharegpt", {**SHAREGPT_COLUMNS, "messages": "prompt+completion"}, dict(OPENAI_TAGS), True, kind,
                      str(path))
    # turns that show no role key yet: the column's own convention (sharegpt's from/value, OpenAI's role/content)
    openai = role_tag == "role" or (role_tag is None and column == "messages")
    tags = dict(OPENAI_TAGS) if openai else dict(SHAREGPT_TAGS)
    turns = rec[column]
    first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
    other = "value" if tags["content_tag"] == "content" else "content"
    if tags["content_tag"] not in first and other in first:
        # mixed vocabularies ({"from": "human", "content": ...}): the text is read where the first turn has it
        tags["content_tag"] = other
    return Format("sharegpt", {**SHAREGPT_COLUMNS, "messages": column}, tags, True, kind, str(path))


def _same_format(where: str, rec: dict, fmt: Format, first: str) -> None:
    """Refuse a record of another format than the file's first one, which decided how the whole file is read."""
    kind = _kind(rec)
    if kind is None:  # nothing recognisable: the converter says which field is missing
        return
    if kind[0] != fmt.kind[0] or (None not in (kind[1], fmt.kind[1]) and kind[1] != fmt.kind[1]):
        _fail(f"{where}: looks like {_describe(kind)}, but the format was detected from the first record ({first}) "
              f"as {_describe(fmt.kind)}; all records of a file must share one format: convert this record "
              "or move it to a file of its own")


def _registry_folder(path: Path) -> NoReturn:
    """Refuse a LLaMA-Factory data folder given as a dataset: its dataset_info.json is a registry, not data."""
    shown = _show(path)
    try:
        names = list(read_registry(path / REGISTRY_FILE))
    except ApplianceError:
        names = []
    listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    _fail(f"{shown}: the folder holds a {REGISTRY_FILE} (a LLaMA-Factory registry), so it is not read as data; "
          f"use it as --dataset-dir with a dataset's name: {use_name(shown, names[0] if names else 'NAME')}"
          + (f" (its datasets: {listed})" if names else ""))


def _expand(path: Path) -> list[Path]:
    """A file, a ``datasets`` save_to_disk folder, or every data file (.json/.jsonl/.csv/.parquet) directly inside a
    folder (LLaMA-Factory allows folders)."""
    if _probe(path, _show(path)) == "dir":
        if saved_dataset(path):  # before the registry check: save_to_disk writes a dataset_info.json of its own
            return [path]
        if _probe(path / REGISTRY_FILE, _show(path / REGISTRY_FILE)) == "file":
            _registry_folder(path)
        try:  # probing each file: a broken link among them is an error, not silently skipped
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and _probe(p, _show(p)) == "file")
            subs = sorted(p.name for p in path.iterdir() if p.is_dir() and (saved_dataset(p) or any(
                f.suffix.lower() in SUFFIXES for f in p.iterdir())))
        except OSError as e:
            _fail(f"{_show(path)}: cannot list the folder ({e.strerror or e}); check its permissions")
        inside = f" (only its subfolders {', '.join(subs)} hold data: pass the one to train on, e.g. " \
                 f"{_show(path / subs[0])})" if subs else ""
        if not files:
            _fail(f"{_show(path)}: folder has no .json, .jsonl, .csv or .parquet files{inside or '; put the dataset files there'}")
        if subs:  # the files directly inside are read, as LLaMA-Factory reads a folder; subfolders never are
            print(f"note: {_show(path)}: reading the files directly inside it, not its subfolders {', '.join(subs)}",
                  file=sys.stderr)
        splits = {p: m.group(1).lower() for p in files if (m := _SPLIT.match(p.name))}
        if "train" in splits.values():  # a hub snapshot's data/ (train-0000.parquet, test-0000.parquet): train only
            held = [p.name for p in files if splits.get(p) not in (None, "train")]
            if held:
                print(f"note: {_show(path)}: training on its train files, not {', '.join(held)} (another split)",
                      file=sys.stderr)
                files = [p for p in files if p.name not in held]
        return files
    if path.suffix.lower() not in SUFFIXES:
        _fail(f"{_show(path)}: unsupported file type '{path.suffix}'; convert it to .json (a list of records), "
              ".jsonl (one record per line), .csv or .parquet")
    return [path]


def _load_file(path: Path, fmt: Format | None, problems: list[str] | None = None) -> list[Example]:
    """A file's examples; the first bad record raises, or with ``problems`` every bad record is listed there."""
    shown, first = _show(path), ""
    out: list[Example] = []
    for label, source, rec in _records(path, problems):
        where = f"{shown}: {label}"
        try:
            if isinstance(rec, _TwiceKeyed):
                _fail(f"{where}: {rec.problem}")
            if not isinstance(rec, dict):
                _fail(f"{where}: record is {_a(rec)}, not an object; "
                      'each record must be a JSON object like {"instruction": ..., "output": ...}')
            refuse_preference_data(where, rec, fmt)
            if fmt is None or fmt.auto:
                _refuse_ambiguous(where, rec)
            if fmt is None:
                fmt, first = _detect(where, rec, path), label
            elif fmt.auto:
                _same_format(where, rec, fmt, first)
            convert = alpaca_messages if fmt.formatting == "alpaca" else sharegpt_messages
            if fmt.columns.get("messages") == "prompt+completion":
                rec = _joined(rec, where)
            refuse_ignored_fields(rec, where, fmt)
            try:
                out.append(Example(convert(rec, where, fmt), source))
            except ApplianceError as e:
                raise ApplianceError(str(e) + _declared_mismatch(rec, fmt)) from None
        except ApplianceError as e:
            if problems is None:
                raise
            problems.append(str(e))
    return out


def _joined(rec: dict, where: str) -> dict:
    """A TRL conversational prompt-completion record as one conversation, under the key the messages are read from."""
    for key in ("prompt", "completion"):
        if not isinstance(rec.get(key), list):
            _fail(f"{where}: field '{key}' is {_a(rec.get(key))}; in a file of conversational prompt-completion records "
                  "(as its first record) 'prompt' and 'completion' are both lists of {role, content} messages")
    return {**{k: v for k, v in rec.items() if k not in ("prompt", "completion")},
            "prompt+completion": rec["prompt"] + rec["completion"]}


def _declared_mismatch(rec: dict, fmt: Format) -> str:
    """For a registry entry: what its records look like, when that is not the formatting it declares."""
    kind = None if fmt.auto else _kind(rec)
    if kind is None or kind[0] == "prompt_completion" or (kind[0] == "alpaca") == (fmt.formatting == "alpaca"):
        return ""
    fix = ('set "formatting": "sharegpt" with "columns": {"messages": "%s"} and the matching "tags"' % kind[0]) \
        if kind[0] != "alpaca" else 'remove "formatting" (alpaca is the default)'
    return (f" (this record looks like {_describe(kind)}, but {fmt.origin} reads it as {fmt.formatting}: {fix}, "
            "or pass the file itself as the dataset, whose format is then detected)")


def _looks_like_path(item: str) -> bool:
    return item.lower().endswith(SUFFIXES) or "/" in item or os.sep in item


def load_examples(datasets: list[str], dataset_dir: str | None = None, name: str = "Archer", author: str = "意琦行",
                  max_samples: int | None = None, problems: list[str] | None = None) -> list[Example]:
    """Each item is a registry name or a path to a .json/.jsonl file (format auto-detected). Validates every record
    before returning; raises ApplianceError naming file, record (line for JSONL, index for JSON) and field, or,
    given a ``problems`` list (``data check``), lists every bad record there and returns the good ones.

    Items may also be comma-separated (``identity,my_set``, as LLaMA-Factory's ``dataset:``); ``max_samples``
    keeps the first N examples of each dataset, after all of them were validated.
    """
    if not name.strip() or not author.strip():
        _fail("--name and --author must not be empty; e.g. --name Archer --author 意琦行")
    for flag, value in (("--name", name), ("--author", author)):
        if (bad := bad_char_fix(value)) is not None:  # it would be filled into every turn
            _fail(f"{flag} holds {bad}")
    if max_samples is not None and max_samples < 1:
        _fail(f"--max-samples is {max_samples}; it must be at least 1 (or left out for all)")
    items = [part.strip() for ds in datasets for part in
             ([ds] if _probe(_user_path(ds), ds) != "missing" else ds.split(",")) if part.strip()]
    if not items:
        _fail("no dataset given; pass a registry name (e.g. identity) or a .json/.jsonl file")
    registry = dataset_registry(dataset_dir)
    out: list[Example] = []
    seen: dict[str, str] = {}
    for item in items:
        n_samples = None
        if item in registry:
            path, fmt = entry_source(item, registry[item])
            n_samples = registry[item].get("num_samples")
        else:
            path, fmt = _user_path(item), None
            if _probe(path, item) == "missing":
                if _looks_like_path(item):
                    there = _user_path(dataset_dir) / item if dataset_dir else None
                    hint = f"; it is in --dataset-dir: pass {_show(there)}" if there and there.is_file() else ""
                    _fail(f"{item}: file not found{paths.looked_in(item)}{hint or '; check the path'}")
                known = ", ".join(sorted(registry))
                where = _show(_user_path(dataset_dir) / REGISTRY_FILE) if dataset_dir else \
                    f"a {REGISTRY_FILE} in a folder you pass as --dataset-dir"
                _fail(f"unknown dataset '{item}' (known: {known}); pass a .json/.jsonl path or register it in {where}")
        _note_repeat(seen, item, path)
        examples = [ex for f in _expand(path) for ex in _load_file(f, fmt, problems)]
        examples = sample_records(examples, n_samples) if examples else examples  # none: all listed in problems
        out += examples[:max_samples] if max_samples else examples
    for ex in out:
        ex.filled = any(PLACEHOLDER.search(m["content"]) for m in ex.messages)
        ex.messages = [{**m, "content": fill_placeholders(m["content"], name, author)} for m in ex.messages]
    _note_odd_placeholders(out)
    _note_bare_placeholders(out)
    return out


_noted: set = set()  # notes already printed: a pipeline loads the same data twice (its check, then training)


def _note_repeat(seen: dict[str, str], item: str, path: Path) -> None:
    """Naming one dataset twice trains it twice: maybe meant (to weight it), maybe a slip, so it is said."""
    key = str(Path(path).resolve())
    if key in seen and ("repeat", key) not in _noted:
        _noted.add(("repeat", key))
        same = f"'{item}'" + (f" (the same file as '{seen[key]}')" if seen[key] != item else "")
        print(f"note: dataset {same} is given more than once: its examples are trained once per mention; "
              f"name it once to train it once", file=sys.stderr)
    seen.setdefault(key, item)


def _note_odd_placeholders(examples: list[Example]) -> None:
    """A ``{{placeholder}}`` left after filling (``{{names}}``, a typo) would be learned as written: said once,
    not refused, since a template in the data (Jinja, Handlebars) may be meant."""
    hits = [(ex.source, m.group(0)) for ex in examples for msg in ex.messages
            for m in ODD_PLACEHOLDER.finditer(msg["content"])]
    if hits and hits[0] not in _noted:
        _noted.add(hits[0])
        more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
        print(f"note: {hits[0][0]}: {hits[0][1]}{more} is learned as written: {ODD_PLACEHOLDER_NOTE}", file=sys.stderr)


_BARE = re.compile(r"\b(NAME|AUTHOR)\b")


def _note_bare_placeholders(examples: list[Example]) -> None:
    """LLaMA-Factory's older identity.json wrote NAME and AUTHOR for the user to replace by hand: trained as
    they are, the model would call itself NAME. Said once, since the word may be meant."""
    hits = [(ex.source, m.group(1)) for ex in examples for msg in ex.messages if msg["role"] == "assistant"
            for m in _BARE.finditer(msg["content"])]
    if hits and ("bare", hits[0][0]) not in _noted:
        _noted.add(("bare", hits[0][0]))
        words = " and ".join(sorted({w for _, w in hits}, reverse=True))
        print(f"note: {hits[0][0]}: {words} in {len(hits)} answer(s) are learned as written (LLaMA-Factory's older "
              "identity.json left them for you to replace); write {{name}} and {{author}} to have --name and "
              "--author filled in", file=sys.stderr)


def load_prompts(path: str | None = None) -> list[str]:
    """A JSON list of non-empty prompt strings; default: the built-in data/retention_prompts.json."""
    p = _user_path(path) if path else paths.resource_dir("data") / "retention_prompts.json"
    prompts = _read_json_file(p, "put a JSON list of prompt strings in it")
    if not isinstance(prompts, list) or not prompts:
        _fail(f"{_show(p)}: must be a non-empty JSON list of prompt strings")
    for i, s in enumerate(prompts):
        if not isinstance(s, str) or not s.strip():
            _fail(f"{_show(p)}: record #{i} is {_short(s)}; every prompt must be a non-empty string")
    return prompts
