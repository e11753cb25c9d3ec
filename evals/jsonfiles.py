"""Reading JSON and JSONL input files (prompt files, answers files) into records, with one-line errors.

Shared by the prompt loader (evals/prompts.py) and evals/report.py (--from-answers). JSON parsing and
the character check are the training-data loader's own (appliance/datafiles.py imports no training code);
reading a file keeps eval's own messages.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from appliance.datafiles import BAD_CHAR_FIX, TABLES, bad_char, parse_json, read_table
from appliance.errors import ApplianceError

_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def read_text(path: Path, fix: str, what: str = "file") -> str:
    """A UTF-8 file's text (a byte-order mark is fine); anything that stops reading it is one line naming it.

    ``fix`` ends the messages about the file itself (missing, a folder, a device); ``what`` names it
    there ("answers file not found").
    """
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ApplianceError(f"{path}: is a folder, not a {what}; {fix}")
        if not stat.S_ISREG(mode):
            # /dev/null reads as empty and a pipe reads only once: neither is a file of records
            raise ApplianceError(f"{path}: not a regular file (a device, pipe or socket); {fix}")
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not an error
    except FileNotFoundError:
        link = " (a symbolic link to a missing file)" if path.is_symlink() else ""
        raise ApplianceError(f"{path}: {what} not found{link}; {fix}") from None
    except PermissionError:
        raise ApplianceError(f"{path}: permission denied reading it; make it readable (chmod a+r {path})") from None
    except UnicodeDecodeError as e:
        raise ApplianceError(f"{path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    except OSError as e:  # a symbolic link loop (ELOOP), a name too long, an I/O error ...
        raise ApplianceError(f"{path}: cannot read it ({e.strerror or e}); check that it is a readable regular "
                             "file") from None


def _child(field_path: str, key: str | int) -> str:
    """The name of a field inside ``field_path``: ``history[1]``, ``history[1].content``."""
    if isinstance(key, int):
        return f"{field_path}[{key}]"
    return f"{field_path}.{key}" if field_path else key


def refuse_bad_text(value: object, where: str, fix: str = BAD_CHAR_FIX) -> None:
    """Fail on the first text in a parsed JSON value (object keys included) that is not valid Unicode,
    naming its field (``history[1].content``) after ``where``."""
    stack: list[tuple[str, object]] = [("", value)]
    while stack:  # not recursive: the JSON may be nested almost as deep as Python can parse
        field_path, v = stack.pop()
        if isinstance(v, str):
            if (bad := bad_char(v)) is not None:
                at = f"field '{field_path}'" if field_path else "the record"
                raise ApplianceError(f"{where}: {at} holds {bad}; {fix}")
            continue
        if isinstance(v, dict):
            items: list[tuple[str | int, object]] = list(v.items())
            for key in v:
                if (bad := bad_char(key)) is not None:
                    at = f"a key in field '{field_path}'" if field_path else "a key"
                    raise ApplianceError(f"{where}: {at} holds {bad}; {fix}")
        elif isinstance(v, list):
            items = list(enumerate(v))
        else:
            continue
        # reversed onto the stack, so the first bad text in file order is the one reported
        stack += [(_child(field_path, key), item) for key, item in reversed(items)]


def _read_text(path: Path) -> str:
    return read_text(path, "give a JSONL/JSON file of prompts")


class _LineSyntaxError(ApplianceError):
    """A line of a .jsonl file that is not JSON by itself (the file may still be one JSON value)."""


def json_lines(path: Path, text: str) -> list[tuple[str, object]]:
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): a JSON string may hold U+2028
        if line.strip():
            try:
                rows.append((f"{path} line {n}", parse_json(line, f"{path} line {n}")))
            except json.JSONDecodeError as e:
                raise _LineSyntaxError(f"{path} line {n}: invalid JSON at column {e.colno} ({e.msg}); "
                                     "each line must hold one complete JSON object") from None
    return rows


def read_records(path: Path) -> dict | list[tuple[str, object]]:
    """A data file's ``(where, record)`` pairs, or the object a .json file holds (one record, or a dataset_info)."""
    if path.suffix.lower() in TABLES:  # .csv, .parquet: row 1 is the first after a CSV's header
        return [(f"{path} row {n}", r) for n, r in enumerate(read_table(path), 1)]
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        try:
            rows = json_lines(path, text)
        except _LineSyntaxError as e:
            # one pretty-printed object (or list) saved as .jsonl: read as the .json it is
            try:
                whole = parse_json(text, str(path))
            except json.JSONDecodeError:
                raise e from None
            rows = [(f"{path} record 1", whole)]
        if len(rows) == 1 and isinstance(rows[0][1], list):  # a JSON list saved as .jsonl
            return [(f"{path} record {n}", r) for n, r in enumerate(rows[0][1], 1)]
        return rows
    try:
        data = parse_json(text, str(path))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # one object per line in a .json file: LLaMA-Factory and `appliance train` read it, so do we
            return json_lines(path, text)
        raise ApplianceError(f"{path}: invalid JSON at line {e.lineno} ({e.msg}); fix the syntax "
                             f"(python -m json.tool {path} shows where)") from None
    if isinstance(data, dict):
        return data
    if isinstance(data, list):
        return [(f"{path} record {n}", r) for n, r in enumerate(data, 1)]
    raise ApplianceError(f"{path}: no records (it holds {json_type(data)}); expected a JSON list of records "
                         "or one JSON object per line")
