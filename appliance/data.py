"""Datasets: a LLaMA-Factory compatible registry and loaders for alpaca, sharegpt and OpenAI messages.

Every record is validated before anything is returned, so a bad file fails in a second with a
one-line :class:`ApplianceError` naming the file, the record (``line N`` for JSONL, ``record #N``,
a 0-based index, for a JSON list) and the field, instead of failing minutes into training.
See data/README.md for the formats.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from appliance import paths
from appliance.errors import ApplianceError

SUFFIXES = (".json", ".jsonl")
REGISTRY_FILE = "dataset_info.json"

# LLaMA-Factory's defaults (data/README.md there).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
OPENAI_TAGS = {**SHAREGPT_TAGS, "role_tag": "role", "content_tag": "content", "user_tag": "user",
               "assistant_tag": "assistant", "observation_tag": "tool"}
# Auto-detected files may mix both vocabularies; a registry entry means exactly its tags.
_ALIASES = {"user": {"human", "user"}, "assistant": {"gpt", "assistant"}, "system": {"system"},
            "tool": {"observation", "tool", "function_call", "function", "tool_call"}}


@dataclass
class Example:
    """One training conversation; ``source`` is ``file#index`` (JSON) or ``file:line`` (JSONL)."""

    messages: list[dict[str, str]]
    source: str


@dataclass
class _Format:
    formatting: str  # "alpaca" | "sharegpt"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    auto: bool = False  # detected from a file's first record rather than declared in a registry


def fill_placeholders(text: str, name: str, author: str) -> str:
    """Replace ``{{name}}`` and ``{{author}}`` (LLaMA-Factory's identity.json placeholders)."""
    return text.replace("{{name}}", name).replace("{{author}}", author)


def fingerprint(examples: list[Example]) -> str:
    """``sha256:<hex>`` of the canonical JSON of all messages, in order; sources do not count."""
    blob = json.dumps([ex.messages for ex in examples], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _fail(msg: str) -> NoReturn:
    raise ApplianceError(" ".join(msg.splitlines()))


def _show(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _short(value: Any) -> str:
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= 40 else s[:37] + "..."


# ---------------------------------------------------------------- registry
def _read_json_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        _fail(f"{_show(path)}: file not found; check the path")
    except UnicodeDecodeError as e:
        _fail(f"{_show(path)}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8")
    if not text.strip():
        _fail(f"{_show(path)}: the file is empty; put a JSON list of records in it")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        _fail(f"{_show(path)}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the syntax "
              f"(python -m json.tool {_show(path)} shows where)")


def _read_registry(path: Path) -> dict[str, dict]:
    reg = _read_json_file(path)
    if not isinstance(reg, dict):
        _fail(f"{_show(path)}: must be a JSON object mapping dataset names to entries like "
              '{"identity": {"file_name": "identity.json"}}')
    for name, entry in reg.items():
        if not isinstance(entry, dict):
            _fail(f"{_show(path)}: entry '{name}' is {_short(entry)}, not an object; write it as "
                  '{"file_name": "...", "formatting": "alpaca"}')
    return reg


def dataset_registry(dataset_dir: str | None = None) -> dict[str, dict]:
    """Built-in data/dataset_info.json merged with <dataset_dir>/dataset_info.json (user entries win).

    Each entry gains ``_dir``: the folder its ``file_name`` is relative to.
    """
    builtin = paths.resource_dir("data")
    out = {name: {**entry, "_dir": str(builtin)} for name, entry in _read_registry(builtin / REGISTRY_FILE).items()}
    if dataset_dir:
        d = paths.resolve_user_path(dataset_dir)
        if not d.is_dir():
            _fail(f"--dataset-dir {dataset_dir}: no such folder; pass the folder that holds your {REGISTRY_FILE}")
        info = d / REGISTRY_FILE
        if not info.is_file():
            _fail(f"--dataset-dir {dataset_dir}: has no {REGISTRY_FILE}; add one (LLaMA-Factory format) "
                  "or pass your .json/.jsonl files directly")
        out.update({name: {**entry, "_dir": str(d)} for name, entry in _read_registry(info).items()})
    return out


def _entry_source(name: str, entry: dict) -> tuple[Path, _Format]:
    where = f"dataset '{name}' ({_show(Path(entry['_dir']) / REGISTRY_FILE)})"
    if entry.get("ranking"):
        _fail(f"{where}: ranking (preference) datasets are not supported; use an SFT dataset")
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("om_hub_url") or entry.get("script_url")
        why = f"it points to '{hub}', which is never downloaded; " if hub else ""
        _fail(f"{where}: has no 'file_name'; {why}put the data in a local .json/.jsonl file and set 'file_name'")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        _fail(f"{where}: 'formatting' is {_short(formatting)}; use \"alpaca\" or \"sharegpt\"")
    for key in ("columns", "tags"):
        if not isinstance(entry.get(key) or {}, dict):
            _fail(f"{where}: '{key}' must be an object like {{\"prompt\": \"instruction\"}}")
    if formatting == "alpaca":
        fmt = _Format("alpaca", {**ALPACA_COLUMNS, **(entry.get("columns") or {})})
    else:
        fmt = _Format("sharegpt", {**SHAREGPT_COLUMNS, **(entry.get("columns") or {})},
                      {**SHAREGPT_TAGS, **(entry.get("tags") or {})})
    path = Path(entry["_dir"]) / file_name
    if not path.exists():
        _fail(f"{where}: file {_show(path)} not found; fix 'file_name' or put the file there")
    return path, fmt


# ---------------------------------------------------------------- reading files
def _records(path: Path) -> list[tuple[str, str, Any]]:
    """``(where, source, record)`` for each record; ``where`` prefixes error messages."""
    shown = _show(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        _fail(f"{shown}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8")
    as_lines = path.suffix == ".jsonl" or not text.strip()  # an empty file: "no records", below
    if not as_lines and text.lstrip().startswith("{"):
        # datasets' json loader (hence LLaMA-Factory) reads JSON lines from a .json file too.
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # one broken object, not several lines: report where it breaks
                _fail(f"{shown}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the syntax "
                      f"(python -m json.tool {shown} shows where)")
            as_lines = True
        else:
            _fail(f"{shown}: holds one JSON object; a .json dataset must be a list of records "
                  "([{...}, {...}]), or one object per line in a .jsonl file")
    out: list[tuple[str, str, Any]] = []
    if as_lines:
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
            if not line.strip():
                continue
            try:
                out.append((f"{shown}: line {n}", f"{shown}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                _fail(f"{shown}: line {n}: invalid JSON ({e.msg} at column {e.colno}); "
                      "each line must hold one complete JSON object")
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            _fail(f"{shown}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the syntax "
                  f"(python -m json.tool {shown} shows where)")
        if not isinstance(obj, list):
            _fail(f"{shown}: top level is {type(obj).__name__}; a .json dataset must be a list of records ([{{...}}, ...])")
        out = [(f"{shown}: record #{i}", f"{shown}#{i}", rec) for i, rec in enumerate(obj)]
    if not out:
        _fail(f"{shown}: no records (the dataset is empty); add at least one conversation")
    return out


def _detect(where: str, rec: dict) -> _Format:
    if "messages" in rec:
        return _Format("sharegpt", {**SHAREGPT_COLUMNS, "messages": "messages"}, _detect_tags(rec["messages"]), True)
    if "conversations" in rec:
        return _Format("sharegpt", dict(SHAREGPT_COLUMNS), _detect_tags(rec["conversations"]), True)
    if "instruction" in rec or "output" in rec:
        return _Format("alpaca", dict(ALPACA_COLUMNS), auto=True)
    _fail(f"{where}: cannot tell the format from keys {sorted(rec)}; records need 'messages' (OpenAI), "
          "'conversations' (sharegpt) or 'instruction' + 'output' (alpaca)")


def _detect_tags(turns: Any) -> dict[str, str]:
    first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
    return dict(SHAREGPT_TAGS) if "from" in first else dict(OPENAI_TAGS)


def _expand(path: Path) -> list[Path]:
    """A file, or every .json/.jsonl file directly inside a folder (LLaMA-Factory allows folders)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            _fail(f"{_show(path)}: folder has no .json or .jsonl files; put the dataset files there")
        return files
    if path.suffix not in SUFFIXES:
        _fail(f"{_show(path)}: unsupported file type '{path.suffix}'; convert it to .json (a list of records) "
              "or .jsonl (one record per line)")
    return [path]


# ---------------------------------------------------------------- record conversion
def _text(rec: dict, key: str, where: str, required: bool, fix: str = "", label: str = "") -> str:
    value, label = rec.get(key), label or key
    fix = fix or f"every record needs a non-empty '{label}'"
    if value is None:
        if required:
            _fail(f"{where}: field '{label}' is missing; {fix}")
        return ""
    if not isinstance(value, str):
        _fail(f"{where}: field '{label}' is {type(value).__name__} {_short(value)}; it must be a string")
    if required and not value.strip():
        _fail(f"{where}: field '{label}' is empty; {fix}")
    return value


def _alpaca(rec: dict, where: str, fmt: _Format) -> list[dict[str, str]]:
    c = fmt.columns
    prompt, query = c["prompt"], c.get("query")
    instruction = _text(rec, prompt, where, required=True)
    extra = _text(rec, query, where, required=False) if query else ""
    user = f"{instruction}\n{extra}" if extra else instruction
    output = rec.get(c["response"])
    if isinstance(output, list):
        _fail(f"{where}: field '{c['response']}' is a list (a ranking dataset?); it must be one string")
    output = _text(rec, c["response"], where, required=True)
    messages: list[dict[str, str]] = []
    system = _text(rec, c["system"], where, required=False) if c.get("system") else ""
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = rec.get(c["history"]) if c.get("history") else None
    if history is not None:
        hk = c["history"]
        if not isinstance(history, list):
            _fail(f"{where}: field '{hk}' is {type(history).__name__}; it must be a list of [user, assistant] pairs")
        for i, pair in enumerate(history):
            ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
            if not ok:
                _fail(f"{where}: field '{hk}[{i}]' is {_short(pair)}; each history item must be a pair "
                      '["user text", "assistant text"]')
            if not pair[0].strip() or not pair[1].strip():
                _fail(f"{where}: field '{hk}[{i}]' has an empty turn; fill in both texts or drop the pair")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _role(tag: Any, fmt: _Format) -> str | None:
    if not isinstance(tag, str):
        return None  # reported by the caller as an unknown role, with the record
    t = fmt.tags
    if fmt.auto:
        return next((role for role, names in _ALIASES.items() if tag in names), None)
    table = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["system_tag"]: "system",
             t["observation_tag"]: "tool", t["function_tag"]: "tool"}
    return table.get(tag)


def _sharegpt(rec: dict, where: str, fmt: _Format) -> list[dict[str, str]]:
    key, t = fmt.columns["messages"], fmt.tags
    role_tag, content_tag = t["role_tag"], t["content_tag"]
    turns = rec.get(key)
    if turns is None:
        _fail(f"{where}: field '{key}' is missing; every record needs a '{key}' list of "
              f"{{{role_tag!r}: ..., {content_tag!r}: ...}} turns")
    if not isinstance(turns, list):
        _fail(f"{where}: field '{key}' is {type(turns).__name__}; it must be a list of turns")
    if not turns:
        _fail(f"{where}: field '{key}' is empty (an empty conversation); add user and assistant turns")
    system = ""
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        f = f"{key}[{i}]"
        if not isinstance(turn, dict):
            _fail(f"{where}: field '{f}' is {_short(turn)}; each turn must be an object with '{role_tag}' and '{content_tag}'")
        if role_tag not in turn:
            _fail(f"{where}: field '{f}.{role_tag}' is missing (turn keys: {sorted(turn)}); "
                  "set tags.role_tag/content_tag in dataset_info.json if your turns use other keys")
        role = _role(turn[role_tag], fmt)
        if role is None:
            known = sorted(_ALIASES["user"] | _ALIASES["assistant"] | {"system"}) if fmt.auto else \
                [t["user_tag"], t["assistant_tag"], t["system_tag"]]
            _fail(f"{where}: field '{f}.{role_tag}' is {_short(turn[role_tag])}; expected one of {known} "
                  "(set tags.user_tag/assistant_tag in dataset_info.json for other names)")
        if role == "tool" or turn.get("tool_calls") or turn.get("function_call"):
            _fail(f"{where}: field '{f}' is a tool call or tool result; function-call/observation turns are not "
                  "supported, remove tool turns from this record")
        content = _text(turn, content_tag, where, required=True, fix="every turn needs non-empty text",
                        label=f"{f}.{content_tag}")
        if role == "system":
            if i != 0:
                _fail(f"{where}: field '{f}' is a system turn; only the first turn may be a system prompt")
            system = content
            continue
        want = "user" if len(messages) % 2 == 0 else "assistant"
        if role != want:
            art = {"user": "a user", "assistant": "an assistant"}
            _fail(f"{where}: field '{f}' is {art[role]} turn where {art[want]} turn belongs; turns must alternate "
                  "user, assistant, user, ... starting with user")
        msg = {"role": role, "content": content}
        if "weight" in turn:
            # OpenAI's fine-tuning format: weight 0 keeps an assistant turn as context, not as something to learn
            if role != "assistant" or turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool):
                _fail(f"{where}: field '{f}.weight' is {_short(turn['weight'])}; only assistant turns take a weight, "
                      "and it must be 0 (do not learn this answer) or 1")
            if turn["weight"] == 0:
                msg["weight"] = 0
        messages.append(msg)
    if not messages:
        _fail(f"{where}: field '{key}' has only a system prompt; add user and assistant turns")
    if messages[-1]["role"] != "assistant":
        _fail(f"{where}: field '{key}[{len(turns) - 1}]' is a user turn at the end; add the assistant's reply "
              "or remove that last user turn")
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        _fail(f"{where}: every assistant turn has weight 0, so there is nothing to learn; set weight 1 on at least one")
    sys_col = fmt.columns.get("system")
    if not system and sys_col:
        system = _text(rec, sys_col, where, required=False)
    return ([{"role": "system", "content": system}] if system.strip() else []) + messages


def _load_file(path: Path, fmt: _Format | None) -> list[Example]:
    recs = _records(path)
    out: list[Example] = []
    for where, source, rec in recs:
        if not isinstance(rec, dict):
            _fail(f"{where}: record is {type(rec).__name__} {_short(rec)}, not an object; "
                  'each record must be a JSON object like {"instruction": ..., "output": ...}')
        if fmt is None:
            fmt = _detect(where, rec)
        convert = _alpaca if fmt.formatting == "alpaca" else _sharegpt
        out.append(Example(convert(rec, where, fmt), source))
    return out


def _looks_like_path(item: str) -> bool:
    return item.endswith(SUFFIXES) or "/" in item or os.sep in item


def load_examples(datasets: list[str], dataset_dir: str | None = None, name: str = "Archer", author: str = "意琦行",
                  max_samples: int | None = None) -> list[Example]:
    """Each item is a registry name or a path to a .json/.jsonl file (format auto-detected). Validates every record
    before returning; raises ApplianceError naming file, record (line for JSONL, index for JSON) and field.

    Items may also be comma-separated (``identity,my_set``, as LLaMA-Factory's ``dataset:``); ``max_samples``
    keeps the first N examples of each dataset, after all of them were validated.
    """
    if not name.strip() or not author.strip():
        _fail("--name and --author must not be empty; e.g. --name Archer --author 意琦行")
    if max_samples is not None and max_samples < 1:
        _fail(f"--max-samples is {max_samples}; it must be at least 1 (or left out for all)")
    items = [part.strip() for ds in datasets for part in
             ([ds] if paths.resolve_user_path(ds).exists() else ds.split(",")) if part.strip()]
    if not items:
        _fail("no dataset given; pass a registry name (e.g. identity) or a .json/.jsonl file")
    registry = dataset_registry(dataset_dir)
    out: list[Example] = []
    for item in items:
        if item in registry:
            path, fmt = _entry_source(item, registry[item])
        else:
            path, fmt = paths.resolve_user_path(item), None
            if not path.exists():
                if _looks_like_path(item):
                    dirs = dict.fromkeys([str(Path.cwd()), str(paths.home())])
                    _fail(f"{item}: file not found (looked in {' and '.join(dirs)}); check the path")
                known = ", ".join(sorted(registry))
                _fail(f"unknown dataset '{item}' (known: {known}); pass a .json/.jsonl path or register it "
                      f"in <--dataset-dir>/{REGISTRY_FILE}")
        examples = [ex for f in _expand(path) for ex in _load_file(f, fmt)]
        out += examples[:max_samples] if max_samples else examples
    for ex in out:
        ex.messages = [{**m, "content": fill_placeholders(m["content"], name, author)} for m in ex.messages]
    return out


def load_prompts(path: str | None = None) -> list[str]:
    """A JSON list of non-empty prompt strings; default: the built-in data/retention_prompts.json."""
    p = paths.resolve_user_path(path) if path else paths.resource_dir("data") / "retention_prompts.json"
    prompts = _read_json_file(p)
    if not isinstance(prompts, list) or not prompts:
        _fail(f"{_show(p)}: must be a non-empty JSON list of prompt strings")
    for i, s in enumerate(prompts):
        if not isinstance(s, str) or not s.strip():
            _fail(f"{_show(p)}: record #{i} is {_short(s)}; every prompt must be a non-empty string")
    return prompts
