"""Prompt sets: built-in sets, ``--prompts`` loaders (ours, alpaca, sharegpt, LLaMA-Factory), kinds, placeholders.

A record with no ``kind`` is an identity prompt when its reference mentions ``{{name}}`` or
``{{author}}``; else a general prompt when it has ``expect`` (a checkable answer); else an identity
prompt when the prompt matches one of :data:`SELF_REFERENCE` (the assistant is asked about
itself); else a general prompt. docs/eval.md documents the rule.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError
from evals.metrics import has_cjk

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
BUILTIN_SETS = ("identity", "general", "open")
# named sets outside the default run: `--prompts unrelated` (80 instructions, half in Chinese, no
# references) measures how far the new name spreads into answers it does not belong in
EXTRA_SETS = ("unrelated",)

# Self-reference patterns (lower-cased prompt): the prompt asks who/what the assistant is.
SELF_REFERENCE = [
    r"你是谁", r"您是谁", r"你叫什么", r"你的名字", r"您的名字", r"你是哪", r"介绍(一)?下?(你|您)自己", r"自我介绍",
    r"谁(开发|创造|创建|训练|制作|设计|打造|研发|发明)了?(你|您)", r"(你|您)(是)?由(谁|哪)",
    r"(你|您)的(开发者|作者|创造者|创建者|制造者|主人)",
    r"哪(个|家|一家)?(公司|团队|机构|组织|人).{0,6}(开发|创造|创建|训练|制作|设计|打造|研发)(了)?(你|您)",
    r"(开发|创造|创建|训练|制作|设计|打造|研发)(了)?(你|您)的", r"(你|您)是(?!否).{1,16}吗", r"你是什么(模型|人工智能|ai|东西|助手)",
    # "are you ChatGPT?", not "are you able to ..." or "which planet are you likely to see"
    r"(?:^|[,.!?;:，。！？])\W*(?:(?:hey|hi|hello|so|and|but|wait|then|honestly|really)\W+)*are you\b(?!\s+(able|going|sure|ready|free|familiar|aware|allowed|willing|available|interested|okay|ok|"
    r"busy|there|still|kidding|serious)\b)",
    r"\bwho are you\b", r"\byour name\b", r"\bwhat are you\b", r"\bintroduce yourself\b",
    r"\babout yourself\b", r"\bwho (made|created|trained|developed|built|designed|owns|programmed) you\b",
    r"\bwho is your (creator|developer|author|maker|owner)\b",
    r"\b(made|created|trained|developed|built|designed) you\b",
]
_SELF_RE = re.compile("|".join(f"(?:{p})" for p in SELF_REFERENCE), re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{\{\s*(name|author)\s*\}\}")


@dataclass
class Prompt:
    """One eval prompt after loading: what is asked, how it is scored, which set it reports under."""

    prompt: str
    kind: str = "general"  # "identity" | "general"
    set: str = "general"  # identity_zh, identity_en, general (checkable), open (reference only), or the file's own
    lang: str = "en"
    reference: str | None = None
    expect: list[str] = field(default_factory=list)
    system: str | None = None
    history: list[dict] = field(default_factory=list)  # earlier turns, OpenAI message dicts
    source: str = ""

    def messages(self) -> list[dict]:
        """The chat messages sent to the server (no system message unless the record has one)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.history) + [{"role": "user", "content": self.prompt}]

    def to_dict(self) -> dict:
        return asdict(self)


def is_self_reference(prompt: str) -> bool:
    """True when the prompt asks the assistant about itself (its name, author, nature)."""
    return bool(_SELF_RE.search(prompt or ""))


def fill(text: str | None, name: str, author: str) -> str | None:
    """Replace ``{{name}}``/``{{author}}`` (LLaMA-Factory's identity.json placeholders)."""
    if text is None:
        return None
    return _PLACEHOLDER.sub(lambda m: name if m.group(1) == "name" else author, text)


def _has_placeholder(text: str | None) -> bool:
    return bool(text and _PLACEHOLDER.search(text))


def _read_records(path: Path, where: str) -> list | dict:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not an error
    except UnicodeDecodeError:
        raise ApplianceError(f"{where}: not UTF-8 text; save the file as UTF-8")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ApplianceError(f"{where} line {n}: invalid JSON ({e.msg}); one JSON object per line")
        return rows
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ApplianceError(f"{where}: invalid JSON at line {e.lineno} ({e.msg})")


def _sharegpt(conv: list, where: str, cols: dict) -> tuple[str | None, str | None, list[dict], str]:
    role_tag, content_tag = cols.get("role_tag", "from"), cols.get("content_tag", "value")
    user_tags = {cols.get("user_tag", "human"), "human", "user"}
    asst_tags = {cols.get("assistant_tag", "gpt"), "gpt", "assistant"}
    system, turns = None, []
    for msg in conv:
        if not isinstance(msg, dict):
            raise ApplianceError(f"{where}: conversation turns must be objects with '{role_tag}' and '{content_tag}'")
        role = msg.get(role_tag, msg.get("role"))
        content = msg.get(content_tag, msg.get("content"))
        if role in (cols.get("system_tag", "system"), "system"):
            system = content
        elif role in user_tags or role in asst_tags:
            turns.append({"role": "user" if role in user_tags else "assistant", "content": content})
    reference = None
    if turns and turns[-1]["role"] == "assistant":
        reference = turns.pop()["content"]
    if not turns or turns[-1]["role"] != "user":
        raise ApplianceError(f"{where}: conversation has no user turn to ask; expected human/gpt turns")
    return turns[-1]["content"], reference, turns[:-1], system or ""


def _record(raw: dict, where: str, cols: dict, formatting: str | None) -> dict:
    """Normalize one record of any supported format to our JSONL fields."""
    if isinstance(raw, str):  # a plain list of prompts (e.g. data/retention_prompts.json)
        return {"prompt": raw}
    if not isinstance(raw, dict):
        raise ApplianceError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    msgs_col = cols.get("messages", "conversations")
    if formatting == "sharegpt" or (formatting is None and "prompt" not in raw and (msgs_col in raw or "messages" in raw)):
        conv = raw.get(msgs_col, raw.get("messages"))
        if not isinstance(conv, list):
            raise ApplianceError(f"{where}: '{msgs_col}' must be a list of turns")
        prompt, reference, history, system = _sharegpt(conv, where, cols)
        return {**raw, "prompt": prompt, "reference": raw.get("reference", reference),
                "history": history, "system": raw.get(cols.get("system", "system")) or system or None}
    if "prompt" in raw and formatting is None:
        return raw
    q, i, o = cols.get("prompt", "instruction"), cols.get("query", "input"), cols.get("response", "output")
    if q not in raw:
        raise ApplianceError(f"{where}: no 'prompt', '{q}' or 'conversations' field; use our JSONL "
                             '({"prompt": ...}), alpaca (instruction/input/output) or sharegpt')
    if not isinstance(raw[q], str) or not isinstance(raw.get(i) or "", str):
        raise ApplianceError(f"{where}: '{q}' and '{i}' must be strings")
    prompt = raw[q] + ("\n" + raw[i] if raw.get(i) else "")
    history = []
    for pair in raw.get(cols.get("history", "history")) or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ApplianceError(f"{where}: each history item must be a pair [\"user text\", \"assistant text\"]")
        history += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return {**raw, "prompt": prompt, "reference": raw.get(o), "history": history, "system": raw.get(cols.get("system", "system"))}


def _to_prompt(rec: dict, where: str, name: str, author: str, source: str) -> Prompt:
    prompt, reference = rec.get("prompt"), rec.get("reference")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApplianceError(f"{where}: 'prompt' must be a non-empty string")
    if reference is not None and not isinstance(reference, str):
        raise ApplianceError(f"{where}: 'reference' must be a string")
    expect = rec.get("expect") or []
    if isinstance(expect, str):
        expect = [expect]
    if not isinstance(expect, list) or not all(isinstance(e, str) and e for e in expect):
        raise ApplianceError(f"{where}: 'expect' must be a list of accepted answer strings")
    for key in ("system", "set", "lang"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise ApplianceError(f"{where}: '{key}' must be a string")
    kind = rec.get("kind")
    if kind is None:
        # a checkable answer makes it a general question even when it says "you"
        kind = "identity" if _has_placeholder(reference) or (not expect and is_self_reference(prompt)) else "general"
    if kind not in ("identity", "general"):
        raise ApplianceError(f"{where}: kind '{kind}' is not 'identity' or 'general'")
    lang = _lang(rec.get("lang")) or ("zh" if has_cjk(prompt) else "en")
    set_name = rec.get("set") or (f"identity_{lang}" if kind == "identity" else "general" if expect or not reference else "open")
    history = rec.get("history") or []
    if not all(isinstance(h, dict) and h.get("role") in ("user", "assistant") and isinstance(h.get("content"), str)
               for h in history):
        raise ApplianceError(f"{where}: 'history' must be a list of {{\"role\": \"user\"|\"assistant\", \"content\": ...}}")
    history = [{"role": h["role"], "content": fill(h["content"], name, author)} for h in history]
    return Prompt(prompt=fill(prompt, name, author), kind=kind, set=set_name, lang=lang,
                  reference=fill(reference, name, author), expect=[fill(e, name, author) for e in expect],
                  system=fill(rec.get("system"), name, author) or None, history=history, source=source)


def _lang(value: str | None) -> str | None:
    """``zh-CN``, ``zh_Hans``, ``EN-us`` -> ``zh`` / ``en``: the per-language hit rates group by the bare code."""
    if not value or not value.strip():
        return None
    return re.split(r"[-_]", value.strip().lower(), maxsplit=1)[0]


def _dataset_info_entry(path: Path) -> dict | None:
    """The LLaMA-Factory dataset_info.json entry that names this file, if its folder has one."""
    info = path.parent / "dataset_info.json"
    if not info.is_file() or path.name == "dataset_info.json":
        return None
    try:
        entries = json.loads(info.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(entries, dict):
        return None
    return next((e for e in entries.values() if isinstance(e, dict) and e.get("file_name") == path.name), None)


def load_prompt_file(path: str | Path, name: str, author: str, entry: dict | None = None) -> list[Prompt]:
    """Load one ``--prompts`` file: our JSONL, alpaca JSON, sharegpt, or a LLaMA-Factory dataset_info.json."""
    p = Path(path)
    if p.is_dir():
        raise ApplianceError(f"--prompts {path}: is a folder; give one file in it (or its dataset_info.json)")
    if not p.is_file():
        raise ApplianceError(f"--prompts {path}: file not found; give a JSONL/JSON file or one of {', '.join(BUILTIN_SETS + EXTRA_SETS)}")
    data = _read_records(p, str(p))
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()) and \
            any(k in v for v in data.values() for k in ("file_name", "hf_hub_url", "ms_hub_url", "script_url")):
        # a LLaMA-Factory dataset_info.json: every local dataset it lists (a file or a folder), with its mapping
        out = []
        for ds in data.values():
            if "file_name" not in ds:
                continue  # hub datasets are never downloaded
            target = p.parent / str(ds["file_name"])
            if target.resolve() == p.resolve():
                raise ApplianceError(f"{p}: an entry's file_name is dataset_info.json itself; point it at the data file")
            if not target.exists():
                raise ApplianceError(f"{p}: file_name '{ds['file_name']}' not found in {p.parent}; fix the entry or add the file")
            files = sorted(f for f in target.iterdir() if f.suffix in (".json", ".jsonl")) if target.is_dir() else [target]
            for f in files:
                out += load_prompt_file(f, name, author, entry=ds)
        if not out:
            raise ApplianceError(f"{p}: lists no local dataset (file_name); point --prompts at a data file instead")
        return out
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ApplianceError(f"{p}: no records; expected a JSON list or one JSON object per line")
    entry = entry if entry is not None else _dataset_info_entry(p)
    cols = {**(entry or {}).get("columns", {}), **(entry or {}).get("tags", {})}
    formatting = (entry or {}).get("formatting") or ("alpaca" if entry else None)
    return [_to_prompt(_record(r, f"{p} record {n}", cols, formatting), f"{p} record {n}", name, author, p.stem)
            for n, r in enumerate(data, 1)]


def load_prompts(specs: list[str] | tuple[str, ...] | None, name: str, author: str) -> list[Prompt]:
    """Prompts from ``--prompts`` values (files or built-in set names); all built-in sets when none are given."""
    from appliance.paths import resolve_user_path

    out: list[Prompt] = []
    for spec in specs or BUILTIN_SETS:
        if spec in BUILTIN_SETS + EXTRA_SETS:
            out += load_prompt_file(PROMPTS_DIR / f"{spec}.jsonl", name, author)
        else:
            out += load_prompt_file(resolve_user_path(spec), name, author)
    if not out:
        raise ApplianceError("no prompts to evaluate; pass --prompts FILE or leave it out for the built-in sets")
    return out
