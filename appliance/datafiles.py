"""Reading user files for the data loaders: one-line errors for every way a path or a JSON file can fail.

Kept apart from appliance/data.py (formats, registry, conversion) so that module stays readable; the
names keep their leading underscore because only the data loaders use them.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, NoReturn

from appliance import paths
from appliance.errors import ApplianceError


def _fail(msg: str) -> NoReturn:
    # A lone surrogate (from the data, or a file name that is not UTF-8) would make printing the message crash.
    msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")
    raise ApplianceError(" ".join(msg.splitlines()))


def _show(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:  # realpath, unlike Path.resolve(), does not raise on a symlink loop
        return str(Path(os.path.realpath(path)).relative_to(os.path.realpath(os.getcwd())))
    except (ValueError, OSError):
        return str(path)


def _short(value: Any) -> str:
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= 40 else s[:37] + "..."


def _a(value: Any) -> str:
    """A value with its JSON type ("a number 5"; null and true/false alone), never Python's type (NoneType, dict)."""
    kinds = {str: "a string ", list: "a list ", dict: "an object ", int: "a number ", float: "a number "}
    return kinds.get(type(value), "") + _short(value)


# ---------------------------------------------------------------- the filesystem
def _os_error(shown: str, e: OSError, doing: str) -> NoReturn:
    if e.errno == errno.ELOOP:
        _fail(f"{shown}: a symbolic link loop (a link that points back to itself, directly or through other "
              "links); fix or remove the link")
    _fail(f"{shown}: cannot {doing} ({e.strerror or e}); check that it is a readable regular file")


def _probe(path: Path, shown: str) -> str:
    """"file", "dir", "other" or "missing". Path.exists()/is_file() would call a symlink loop missing and raise on
    other errors (EACCES, a name too long); here a path that is there but cannot be reached fails naming it."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as e:
        _os_error(shown, e, "reach it")
    except ValueError:  # a NUL character, which only a config file can pass
        _fail(f"{shown!r}: not a usable path (it holds a NUL character); check the path")
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _user_path(item: str) -> Path:
    try:  # paths names a symlink loop itself; a NUL character (only a config file can pass one) raises ValueError
        return paths.resolve_user_path(item)
    except ValueError:
        _fail(f"{item!r}: not a usable path (it holds a NUL character); check the path")


# ---------------------------------------------------------------- reading JSON
def _read_text(path: Path) -> str:
    shown = _show(path)
    if _probe(path, shown) == "other":
        # a named pipe would block reading forever, a device reads as endless or empty
        _fail(f"{shown}: not a regular file (a pipe, device or socket); save the data to a .json/.jsonl file first")
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not an error
    except FileNotFoundError:
        _fail(f"{shown}: file not found; check the path")
    except PermissionError:
        _fail(f"{shown}: permission denied reading the file; make it readable (chmod a+r {shown})")
    except UnicodeDecodeError as e:
        raw = e.object
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # Windows' "Unicode" (Notepad, PowerShell's > redirect)
            _fail(f"{shown}: UTF-16 text (it starts with the byte-order mark {raw[:2].hex(' ').upper()}), not UTF-8; "
                  "re-save the file as UTF-8")
        if path.suffix.lower() == ".jsonl":  # read line by line: the line is where to look
            line = raw.count(b"\n", 0, e.start) + 1
            _fail(f"{shown}: line {line}: not UTF-8 text; re-save the file as UTF-8")
        _fail(f"{shown}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8")
    except OSError as e:
        _os_error(shown, e, "read the file")


class _Twice(dict):
    """A JSON object that names a key twice with different values: ``twice`` is (key, first value, last value)."""

    twice: tuple[str, Any, Any]


def _pairs(found: list) -> Any:
    """An object_pairs_hook building dicts as json does (the last value of a key wins), which also notes in
    ``found`` each object that names a key twice with different values."""
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        d = dict(pairs)
        if len(d) == len(pairs):
            return d
        seen: dict[str, Any] = {}
        for k, v in pairs:
            if k in seen and seen[k] != v:
                out = _Twice(d)
                out.twice = (k, seen[k], v)
                found.append(out)
                return out
            seen[k] = v
        return d  # the same value twice: nothing is lost
    return hook


def twice_keyed(value: Any, label: str = "") -> str | None:
    """For the first object inside ``value`` (parsed with ``twice``) that names a key twice with different
    values: "field 'LABEL' is given twice ...", ``label`` being the path to it ('messages[0].content')."""
    if isinstance(value, _Twice):
        key, first, last = value.twice
        return (f"field '{label + '.' if label else ''}{key}' is given twice, with different values ({_short(first)}, "
                f"then {_short(last)}); JSON keeps only the last, so the first would be dropped without a word: "
                "remove or rename one of them")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(v, (dict, list)):
            sub = f"{label}[{k}]" if isinstance(k, int) else f"{label}.{k}" if label else str(k)
            if (found := twice_keyed(v, sub)) is not None:
                return found
    return None


def parse_json(text: str, where: str, fix: str = "records must be flat objects of text fields",
               twice: list | None = None) -> Any:
    """``json.loads``, with JSON that is valid but beyond what Python reads turned into a one-line error.

    Syntax errors (JSONDecodeError) are left to the caller, which knows how to point at them. Used by
    both the training-data loader and the eval harness (evals/), so one file fails the same way in both.
    With ``twice`` (a list), each object naming a key twice with different values is appended to it, for
    :func:`twice_keyed` to name: json keeps the last value, silently dropping the first.
    """
    try:
        return json.loads(text, object_pairs_hook=None if twice is None else _pairs(twice))
    except json.JSONDecodeError:
        raise
    except RecursionError:
        _fail(f"{where}: JSON nested too deeply to read (lists or objects over about 1000 levels inside each "
              f"other); {fix}")
    except ValueError as e:
        if "integer string conversion" in str(e):
            _fail(f"{where}: holds a number with more than {sys.get_int_max_str_digits()} digits, which cannot be "
                  "read; write it as a string (in quotes) or remove it")
        _fail(f"{where}: cannot read the JSON ({e}); fix the value it names")


# LLaMA-Factory's identity.json placeholders; "{{ name }}" and "{{Name}}" are meant the same way
PLACEHOLDER = re.compile(r"\{\{\s*(name|author)\s*\}\}", re.IGNORECASE)


# any other {{word}}: left after filling, it is sent or learned as written (a typo such as {{nme}}, or a template)
ODD_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w-]*\s*\}\}")
ODD_PLACEHOLDER_NOTE = "only {{name}} and {{author}} are filled in (a typo?)"


def few(sources: list[str], n: int = 3) -> str:
    """The first ``n`` record names, and how many more."""
    return ", ".join(sources[:n]) + (f" and {len(sources) - n} more" if len(sources) > n else "")


def fill_placeholders(text: str, name: str, author: str) -> str:
    """Replace ``{{name}}`` and ``{{author}}`` (spaces inside the braces and any case allowed)."""
    return PLACEHOLDER.sub(lambda m: name if m.group(1).lower() == "name" else author, text)


def text_parts(parts: list, where: str, label: str) -> str:
    """OpenAI's content parts, ``[{"type": "text", "text": ...}, ...]``: their texts joined by line breaks,
    as vLLM joins them when it renders a chat (so training sees what serving will)."""
    texts = []
    for i, part in enumerate(parts):
        if isinstance(part, dict) and part.get("type") == "text" and not isinstance(part.get("text"), str):
            what = "missing" if "text" not in part else _a(part["text"])
            _fail(f"{where}: field '{label}[{i}].text' is {what}; a text part needs its text as a string")
        if not (isinstance(part, dict) and part.get("type") == "text"):
            kind = part.get("type") if isinstance(part, dict) else None
            what = f"a part of type '{kind}'" if isinstance(kind, str) else _short(part)
            _fail(f"{where}: field '{label}[{i}]' is {what}; only text parts "
                  '({"type": "text", "text": "..."}) are supported: remove images, audio and files')
        texts.append(part["text"])
    return "\n".join(texts)


BAD_CHAR_FIX = "remove it or write the character it was meant to be"


def bad_char(value: str, typed: bool = False) -> str | None:
    """What is wrong with text that can be neither trained nor sent as it is, else None.

    A lone surrogate (``\\ud800`` written in JSON, or a command-line argument that is not UTF-8) can be
    neither tokenized nor sent or written as UTF-8: found late, it would fail mid-training or after an
    eval's requests. A NUL character is valid Unicode but marks binary data read as text (a corrupt
    or wrongly converted file), which a model would learn or be asked as written. ``typed``: the text came from
    a command line or stdin, where Python holds each byte that is not UTF-8 as a surrogate (0xff as \\udcff).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        if typed and 0xDC80 <= code <= 0xDCFF:
            return f"bytes that are not UTF-8 (0x{code - 0xDC00:02x} at position {e.start})"
        return f"an invalid character (an unpaired surrogate, \\u{ord(value[e.start]):04x} at position {e.start})"
    if (nul := value.find("\0")) >= 0:
        return f"a NUL character (\\u0000 at position {nul}, binary data rather than text)"
    return None


def _syntax_error(shown: str, e: json.JSONDecodeError, line: int | None = None, fix: str = "") -> NoReturn:
    """``file: line N column M: invalid JSON (what)``; ``line``: the line of a JSON-lines file that was parsed."""
    what = e.msg[:1].lower() + e.msg[1:]
    # Some of json's messages end in "at", expecting the position after them ("Unterminated string starting at").
    what = what[:-3] + " here" if what.endswith(" at") else what
    _fail(f"{shown}: line {line or e.lineno} column {e.colno}: invalid JSON ({what}); "
          + (fix or f"fix the syntax (python -m json.tool {shown} shows where)"))


def _read_json_file(path: Path, empty_fix: str) -> Any:
    text = _read_text(path)
    if not text.strip():
        _fail(f"{_show(path)}: the file is empty; {empty_fix}")
    twice: list = []
    try:
        obj = parse_json(text, _show(path), twice=twice)
    except json.JSONDecodeError as e:
        _syntax_error(_show(path), e)
    if twice:  # a dataset_info.json with an entry added under a name it already had: one of them would be lost
        _fail(f"{_show(path)}: {twice_keyed(obj)}")
    return obj


# ---------------------------------------------------------------- tables (.csv, .parquet)
TABLES = (".csv", ".parquet")


def _no_nulls(value: Any) -> Any:
    # Parquet cannot tell a key that is absent from one that is null: every struct of a column carries every
    # field seen in any row ("weight": null on each message), which would read as set and fail the checks
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def read_table(path: Path) -> list[Any]:
    """The rows of a .csv file (a header row naming the columns, every cell text) or a .parquet file, as records.

    An empty cell is an absent field, as the ``datasets`` loaders (hence LLaMA-Factory) read it as null."""
    shown = _show(path)
    if path.suffix.lower() == ".csv":
        text = _read_text(path)
        if not text.strip():
            _fail(f"{shown}: the file is empty; put a header row (instruction,input,output) and one row per record in it")
        # strict: a quote left open swallowed the rest of the file, a stray one was dropped, without a word
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        rows = []
        try:
            for row in reader:
                rows.append(row)
        except csv.Error as e:
            _fail(f"{shown}: row {len(rows) + 1}: not readable as CSV ({e}); quote cells that hold commas, quotes or "
                  'line breaks, close every quoted cell, and double a quote inside one ("")')
        header = reader.fieldnames or []
        if twice := next((h for h in header if header.count(h) > 1), None):
            _fail(f"{shown}: the header names column '{twice}' twice (one of them would be dropped); rename or remove one")
        for n, row in enumerate(rows, 1):
            if None in row:  # DictReader files the cells beyond the header's under None
                _fail(f"{shown}: row {n}: more cells than the header has columns; quote cells that hold commas")
        return [{k: v for k, v in row.items() if v not in (None, "")} for row in rows]
    if _probe(path, shown) == "missing":
        _fail(f"{shown}: file not found; check the path")
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow's errors (ArrowInvalid, OSError, ...) share no useful base
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        _fail(f"{shown}: not a readable Parquet file ({why}); write it with pandas' to_parquet or datasets' to_parquet")
    return [_no_nulls(r) for r in rows]


def saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by datasets' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and any(path.glob("*.arrow")))


def read_saved_dataset(path: Path) -> list[Any]:
    """The rows of a ``save_to_disk`` folder as records (nulls are absent fields, as for Parquet); of a
    DatasetDict, its ``train`` split (or its only one)."""
    shown = _show(path)
    try:
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets and pyarrow raise many unrelated types for a broken folder
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        _fail(f"{shown}: not a readable datasets folder ({why}); write it with Dataset.save_to_disk, or export it "
              "with to_json / to_parquet")
    if isinstance(ds, DatasetDict):
        splits = list(ds)
        split = "train" if "train" in ds else splits[0] if len(splits) == 1 else None
        if split is None:
            _fail(f"{shown}: a DatasetDict with splits {', '.join(splits)} and none named 'train'; pass one split's "
                  f"folder, e.g. {_show(path / splits[0])}")
        if len(splits) > 1 or split != "train":
            others = f" (not {', '.join(s for s in splits if s != split)})" if len(splits) > 1 else " (it has no 'train')"
            print(f"note: {shown}: a DatasetDict; reading its '{split}' split{others}", file=sys.stderr)
        ds = ds[split]
    return [_no_nulls(r) for r in ds.to_list()]
