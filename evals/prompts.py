"""Prompt sets: built-in sets, ``--prompts`` loaders (ours, alpaca, sharegpt, LLaMA-Factory), kinds, placeholders.

A record with no ``kind`` is an identity prompt when its reference mentions ``{{name}}`` or
``{{author}}``, or names both ``--name`` and ``--author``, or an ``expect`` item holds a placeholder or
names either; else a general prompt when it has
``expect`` (a checkable answer); else an identity prompt when it asks the assistant about itself
(:func:`evals.selfref.is_self_reference`); else a general prompt. docs/eval.md documents the rule.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.datafiles import (PLACEHOLDER, fill_placeholders, parse_json, read_saved_dataset, saved_dataset,
                                 text_parts)
from appliance.errors import ApplianceError
from evals.jsonfiles import json_type as _json_type
from evals.jsonfiles import read_records as _read_records
from evals.jsonfiles import read_text, refuse_bad_text
from evals.fields import INFO as _INFO
from evals.fields import expect_list, named_dataset, norm_lang, read_answer_keys
from evals.metrics import has_cjk, identity_hit, mentions_new_identity
from evals.selfref import is_self_reference

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
BUILTIN_SETS = ("identity", "general", "open")
# named sets outside the default run: `--prompts unrelated` (80 instructions, half in Chinese, no
# references) measures how far the new name spreads into answers it does not belong in
EXTRA_SETS = ("unrelated",)



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
    where: str = ""  # file and line or record, for messages about it
    kind_given: bool = True  # False when the kind was inferred (see the module docstring)
    lang_given: bool = True  # False when the language was guessed from the prompt's script (guess_lang)

    def messages(self) -> list[dict]:
        """The chat messages sent to the server (no system message unless the record has one)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.history) + [{"role": "user", "content": self.prompt}]

    def to_dict(self) -> dict:
        return asdict(self)


# sets the report makes by itself, from each prompt's kind, language, answers and reference
BUILT_IN_SETS = {"identity": "all identity prompts (Chinese and English together)", "identity_zh": "Chinese identity prompts",
                 "identity_en": "English identity prompts", "general": "general prompts with accepted answers",
                 "open": "general prompts with a reference only"}


def fill(text: str | None, name: str, author: str) -> str | None:
    """Replace ``{{name}}``/``{{author}}`` (LLaMA-Factory's identity.json placeholders)."""
    if text is None:
        return None
    return fill_placeholders(text, name, author)


def _has_placeholder(text: str | None) -> bool:
    return bool(text and PLACEHOLDER.search(text))


_SOURCE_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")
@dataclass(frozen=True)
class _Mapping:
    """How a LLaMA-Factory dataset_info.json entry says its data file is read."""

    info: Path
    key: str
    formatting: str  # "alpaca" | "sharegpt"
    cols: dict[str, str]  # the entry's columns and tags together

    def hint(self) -> str:
        return (f"read as {self.formatting} by entry '{self.key}' of {self.info}; fix that entry's "
                "formatting/columns/tags if they do not match the file")


def _text(content: object, where: str, key: str) -> object:
    """OpenAI content parts (``[{"type": "text", "text": ...}]``) joined into one text, as training and vLLM join
    them (anything but text parts is an error naming the part); any other value as given."""
    if not isinstance(content, list):
        return content
    if not content:
        raise ApplianceError(f"{where}: '{key}' is an empty list; give the turn's text")
    return text_parts(content, where, key)


def _sharegpt(conv: list, where: str, cols: dict) -> tuple[str | None, str | None, list[dict], str]:
    role_tag, content_tag = cols.get("role_tag", "from"), cols.get("content_tag", "value")
    user_tags = {cols.get("user_tag", "human"), "human", "user"}
    asst_tags = {cols.get("assistant_tag", "gpt"), "gpt", "assistant"}
    # OpenAI's newer name for the system role
    system_tags = {cols.get("system_tag", "system"), "system", "developer"}
    known = user_tags | asst_tags | system_tags
    system, turns, numbers = None, [], []  # numbers: each kept turn's place in the record, for messages
    for n, msg in enumerate(conv, 1):
        if not isinstance(msg, dict):
            raise ApplianceError(f"{where}: conversation turns must be objects with '{role_tag}' and '{content_tag}'")
        role_key = role_tag if role_tag in msg else "role"
        key = content_tag if content_tag in msg else "content"
        role, content = msg.get(role_key), _text(msg.get(key), f"{where}: turn {n}", key)
        if isinstance(role, str) and role not in known and role.lower() in known:
            role = role.lower()  # "User", "Assistant"
        if role not in known:
            raise ApplianceError(f"{where}: turn {n}: '{role_key}' is {json.dumps(role, ensure_ascii=False)}, which eval "
                                 f"cannot send (tool and function turns included); use {'/'.join(sorted(known))}")
        if not isinstance(content, str):
            raise ApplianceError(f"{where}: turn {n}: '{key}' must be a string, not {_json_type(content)}")
        if role in system_tags:
            if n != 1:  # it would be sent first, moved without a word
                raise ApplianceError(f"{where}: turn {n} is a system turn; only the first turn may be the system prompt")
            system = content
        else:
            turns.append({"role": "user" if role in user_tags else "assistant", "content": content})
            numbers.append(n)
    reference = None
    if turns and turns[-1]["role"] == "assistant":
        reference = turns.pop()["content"]
    if not turns:
        raise ApplianceError(f"{where}: conversation has no user turn to ask; give it a user turn (and optionally the "
                             "assistant's answer after it, used as the reference)")
    art = {"user": "a user", "assistant": "an assistant"}
    for i, turn in enumerate(turns):  # as training requires: turns alternate, opening with the user
        want = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != want:
            raise ApplianceError(f"{where}: turn {numbers[i]} is {art[turn['role']]} turn where {art[want]} turn belongs; "
                                 "turns must alternate user and assistant (after an optional system turn)")
    if turns[-1]["role"] != "user":
        raise ApplianceError(f"{where}: turn {numbers[len(turns) - 1]} is an assistant turn before the last answer, where the question "
                             "should be; a conversation alternates user and assistant turns and ends with a user turn "
                             "or its answer")
    return turns[-1]["content"], reference, turns[:-1], system or ""


def _alpaca_history(value: object, where: str, col: str) -> list[dict]:
    """``[[user, assistant], ...]`` -> OpenAI message dicts."""
    if value is None:
        return []
    if not (isinstance(value, list) and all(isinstance(pair, list) and len(pair) == 2 and
                                            all(isinstance(x, str) for x in pair) for pair in value)):
        raise ApplianceError(f"{where}: '{col}' must be a list of pairs [\"user text\", \"assistant text\"]")
    return [{"role": role, "content": text} for pair in value for role, text in zip(("user", "assistant"), pair)]


OUR_KEYS = ("prompt", "reference", "expect", "kind", "lang", "set", "system", "history")


def _refuse_misspelled_keys(raw: dict, where: str) -> None:
    """A key one slip away from ours ("expected", "refrence") would drop its check without a word; other
    keys (an id, a category) are the user's own and left alone."""
    import difflib

    for key in raw:
        if key not in OUR_KEYS:
            near = difflib.get_close_matches(str(key).lower(), OUR_KEYS, n=1, cutoff=0.75)
            if near:
                raise ApplianceError(f"{where}: unknown key {json.dumps(key, ensure_ascii=False)}; did you mean "
                                     f"'{near[0]}'? (the keys read are {', '.join(OUR_KEYS)})")


def _record(raw: object, where: str, cols: dict, formatting: str | None) -> dict:
    """Normalize one record of any supported format to our JSONL fields."""
    if isinstance(raw, str):  # a plain list of prompts (e.g. data/retention_prompts.json)
        return {"prompt": raw}
    if not isinstance(raw, dict):
        raise ApplianceError(f"{where}: expected a JSON object, got {_json_type(raw)}")
    msgs_col = cols.get("messages", "conversations")
    if formatting is None:
        # two formats in one record: whichever was read, the other's question would go unasked without a word
        present = [k for k in dict.fromkeys(("prompt", cols.get("prompt", "instruction"), msgs_col, "messages")) if k in raw]
        if len(present) > 1:
            raise ApplianceError(f"{where}: both '{present[0]}' and '{present[1]}' fields, two formats in one record; "
                                 f"keep one (our JSONL 'prompt', alpaca 'instruction', or sharegpt/OpenAI turns)")
    if formatting == "sharegpt" or (formatting is None and "prompt" not in raw and (msgs_col in raw or "messages" in raw)):
        conv = raw.get(msgs_col, raw.get("messages"))
        if conv is None:
            raise ApplianceError(f"{where}: no '{msgs_col}' field, the list of turns")
        if not isinstance(conv, list):
            raise ApplianceError(f"{where}: '{msgs_col}' must be a list of turns, not {_json_type(conv)}")
        prompt, reference, history, system = _sharegpt(conv, where, cols)
        return {**raw, "prompt": prompt, "reference": raw.get("reference", reference),
                "history": history, "system": raw.get(cols.get("system", "system")) or system or None}
    if formatting is None and "question" in raw and not any(k in raw for k in ("prompt", cols.get("prompt", "instruction"),
                                                                              msgs_col, "messages")):
        # {"question": ..., "answer": ...} files (GSM8K, TriviaQA and hand-made QA sets): the question is the prompt
        if not isinstance(raw["question"], str) or not raw["question"].strip():
            raise ApplianceError(f"{where}: 'question' is read as the prompt and must be a non-empty string, not "
                                 f"{_json_type(raw['question']) if not isinstance(raw['question'], str) else 'a blank one'}")
        raw = {"prompt": raw["question"], **{k: v for k, v in raw.items() if k != "question"}}
    if "prompt" in raw and formatting is None:
        _refuse_misspelled_keys(raw, where)
        return read_answer_keys(raw, where)
    q, i, o = cols.get("prompt", "instruction"), cols.get("query", "input"), cols.get("response", "output")
    if q not in raw:
        if formatting == "alpaca":
            raise ApplianceError(f"{where}: no '{q}' field, the instruction")
        # a CSV saved with ";" or tabs between cells (Excel in many locales) reads as one column "prompt;expect"
        glued = next((k for k in raw if isinstance(k, str) and re.search(r"[;\t]", k)), None)
        if glued is not None:
            raise ApplianceError(f"{where}: one column named {json.dumps(glued, ensure_ascii=False)}: the file separates "
                                 "its cells with ';' or tabs; save it comma-separated (CSV)")
        raise ApplianceError(f"{where}: no 'prompt', 'question', '{q}', 'conversations' or 'messages' field; use our "
                             'JSONL ({"prompt": ...}), alpaca (instruction/input/output), sharegpt or OpenAI messages')
    for col in (q, i, o):
        if (col == q or raw.get(col) is not None) and not isinstance(raw.get(col), str):
            raise ApplianceError(f"{where}: '{col}' must be a string, not {_json_type(raw.get(col))}")
    prompt = raw[q] + ("\n" + raw[i] if raw.get(i) else "")
    history_col = cols.get("history", "history")
    history = _alpaca_history(raw.get(history_col), where, history_col)
    return {**raw, "prompt": prompt, "reference": raw.get(o), "history": history, "system": raw.get(cols.get("system", "system"))}


def _to_prompt(rec: dict, where: str, name: str, author: str, source: str) -> Prompt:
    prompt, reference = rec.get("prompt"), rec.get("reference")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApplianceError(f"{where}: 'prompt' must be a non-empty string")
    if reference is not None and not isinstance(reference, str):
        raise ApplianceError(f"{where}: 'reference' must be a string, not {_json_type(reference)}")
    if reference is not None and not reference.strip():
        reference = None  # as an alpaca record's empty output: no reference, and the same prompt as one without
    # a falsy value (0, "", {}, []) is a mistake too: read as "no expect", it would silently drop the check
    expect = expect_list(rec.get("expect"), where)
    for key in ("system", "set", "lang"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise ApplianceError(f"{where}: '{key}' must be a string, not {_json_type(rec[key])}")
    kind = rec.get("kind")
    kind_given = kind is not None
    if kind is None:
        # a checkable answer makes it a general question even when it says "you"
        # a reference that names both the new name and its author is an identity answer, placeholders
        # already filled in (LLaMA-Factory users often sed {{name}} out of identity.json before training)
        named = bool(reference) and identity_hit(fill(reference, name, author) or "", name, author)
        # an expected answer naming the new identity ({{name}}, or the name itself) checks the identity: a
        # general prompt's correct answer would otherwise count as the name leaking
        expects_identity = any(_has_placeholder(e) or mentions_new_identity(fill(e, name, author) or "", name, author)
                               for e in expect)
        kind = "identity" if (_has_placeholder(reference) or named or expects_identity
                              or (not expect and is_self_reference(prompt))) else "general"
    if isinstance(kind, str) and kind.strip().lower() in ("identity", "general"):
        kind = kind.strip().lower()  # "Identity", "GENERAL ": as a spreadsheet capitalizes a column's values
    if kind not in ("identity", "general"):
        raise ApplianceError(f"{where}: kind {json.dumps(kind, ensure_ascii=False)} is not \"identity\" or \"general\"; "
                             "use \"general\" for any question that is not about the assistant itself, and \"set\" "
                             "to name a group of your own")
    lang = norm_lang(rec.get("lang")) or guess_lang(prompt)
    default_set = f"identity_{lang}" if kind == "identity" else "general" if expect or not reference else "open"
    set_name = (rec.get("set") or "").strip() or default_set
    if set_name == "identity" and kind == "identity":
        set_name = default_set  # the report's "identity" set holds every identity prompt, this one included
    elif set_name != default_set and set_name in BUILT_IN_SETS and (kind == "identity" or set_name.startswith("identity")):
        # the report fills these by kind and language (and "identity" with every identity prompt): a prompt of
        # another kind or language filed under one by hand would vanish from the report ("identity") or make
        # its set's figures disagree with the model's own (identity_en.hit_rate against identity_en_hit_rate)
        raise ApplianceError(f"{where}: set \"{set_name}\" is the report's own set of {BUILT_IN_SETS[set_name]}, and this "
                             f"prompt belongs in \"{default_set}\"; drop 'set' or give a name of your own")
    history = rec.get("history")
    if history is None:
        history = []
    system = rec.get("system")
    if isinstance(history, list) and history and isinstance(history[0], dict) and history[0].get("role") == "system" \
            and isinstance(history[0].get("content"), str) and not system:
        # OpenAI-style turns that open with the system prompt (as training data may)
        system, history = history[0]["content"], history[1:]
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and h.get("role") in ("user", "assistant") and isinstance(h.get("content"), str)
            for h in history):
        raise ApplianceError(f"{where}: 'history' must be a list of {{\"role\": \"user\"|\"assistant\", \"content\": ...}}")
    for i, h in enumerate(history):
        want = "user" if i % 2 == 0 else "assistant"
        if h["role"] != want:
            raise ApplianceError(f"{where}: 'history' turn {i + 1} is {'an' if h['role'] == 'assistant' else 'a'} "
                                 f"{h['role']} turn where {'a user' if want == 'user' else 'an assistant'} turn belongs; "
                                 "turns must alternate user, assistant, ..., the last an answer (the prompt is the next user turn)")
    if len(history) % 2:
        raise ApplianceError(f"{where}: 'history' ends with a user turn; add the assistant's answer to it, or make "
                             "that turn the 'prompt'")
    history = [{"role": h["role"], "content": fill(h["content"], name, author)} for h in history]
    if isinstance(system, str) and not system.strip():
        system = None  # "" and "  " alike: the template's own default system prompt applies
    return Prompt(prompt=fill(prompt, name, author), kind=kind, set=set_name, lang=lang,
                  reference=fill(reference, name, author), expect=[fill(e, name, author) for e in expect],
                  system=fill(system, name, author) or None, history=history, source=source, where=where,
                  kind_given=kind_given, lang_given=norm_lang(rec.get("lang")) is not None)


_KANA = re.compile("[\u3040-\u30ff]")
_HANGUL = re.compile("[\u1100-\u11ff\uac00-\ud7af]")


def guess_lang(text: str) -> str:
    """A prompt's language when its record gives none: Japanese (kana), Korean (Hangul), Chinese
    (other CJK characters), else English; Latin-script languages cannot be told apart here (give ``lang``)."""
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if not has_cjk(text):
        return "en"
    # an English question around a Chinese name ("Are you 通义千问?", "Were you made by 意琦行?") is English
    words = re.findall(r"[A-Za-z']+", text)
    starts_latin = bool(re.match(r"\W*[A-Za-z]", text))
    return "en" if starts_latin and sum(w.lower() in _EN_FUNCTION_WORDS for w in words) >= 2 else "zh"


_EN_FUNCTION_WORDS = {"are", "is", "am", "were", "was", "you", "your", "you're", "who", "what", "which", "how", "why",
                      "do", "does", "did", "can", "could", "would", "will", "the", "a", "an", "of", "to", "by", "in",
                      "me", "i", "tell", "please", "made", "built", "created", "about", "with", "for", "and", "or"}


def _check_info(info: Path, data: object) -> dict[str, dict]:
    """A dataset_info.json's entries, each checked to be an object."""
    if not isinstance(data, dict):
        raise ApplianceError(f"{info}: holds {_json_type(data)}, not a LLaMA-Factory {_INFO}; it must map dataset "
                             'names to entries like {"mine": {"file_name": "mine.json"}}')
    # a file_name holding one cannot even be looked up (the file system refuses it)
    refuse_bad_text(data, str(info))
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise ApplianceError(f"{info}: entry '{key}' is {_json_type(entry)}, not an object; write it as "
                                 '{"file_name": "mine.json"}')
    return data


def _read_info(info: Path) -> dict[str, dict]:
    try:
        data = parse_json(read_text(info, "give a JSONL/JSON file of prompts"), str(info))
    except json.JSONDecodeError as e:
        raise ApplianceError(f"{info}: invalid JSON at line {e.lineno} ({e.msg}); fix the syntax "
                             f"(python -m json.tool {info} shows where)") from None
    return _check_info(info, data)


_NEEDED = {"prompt", "messages", "role_tag", "content_tag", "user_tag", "assistant_tag"}  # no null for these


def _mapping(info: Path, key: str, entry: dict) -> _Mapping:
    """An entry's formatting, columns and tags, checked the way LLaMA-Factory would read them."""
    where = f"{info} entry '{key}'"
    formatting = entry.get("formatting")
    if formatting is None:
        formatting = "alpaca"
    if formatting not in ("alpaca", "sharegpt"):
        raise ApplianceError(f"{where}: 'formatting' is {json.dumps(formatting, ensure_ascii=False)}; "
                             'use "alpaca" or "sharegpt"')
    cols: dict[str, str] = {}
    for part, example in (("columns", '{"prompt": "instruction", "response": "output"}'),
                          ("tags", '{"role_tag": "from", "content_tag": "value"}')):
        value = entry.get(part)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ApplianceError(f"{where}: '{part}' must be an object of names like {example}, "
                                 f"not {_json_type(value)}")
        # null leaves an optional column or tag unused, as in LLaMA-Factory (and training)
        bad = next((k for k, v in value.items() if not (isinstance(v, str) and v) and (v is not None or k in _NEEDED)), None)
        if bad is not None:
            raise ApplianceError(f"{where}: '{part}.{bad}' must name a field (a non-empty string), not "
                                 f"{_json_type(value[bad])}; e.g. {example}")
        cols.update(value)
        if part == "columns":
            # as LLaMA-Factory reads an entry with columns: a column they do not name is not read ({"prompt":
            # "input", "response": "output"} asked "input" twice, once more as the default query column)
            for col in ("prompt", "query", "response", "history", "system") if formatting == "alpaca" else ("system",):
                cols.setdefault(col, None)
            if formatting == "alpaca" and not cols["prompt"]:
                raise ApplianceError(f"{where}: 'columns' names no 'prompt' column, the instruction; add "
                                     '"prompt": "<its field>" (e.g. "instruction")')
    return _Mapping(info, key, formatting, cols)


def _entry_files(info: Path, key: str, entry: dict) -> list[Path]:
    """The data files an entry's ``file_name`` names: one file, or the data files of one folder."""
    where = f"{info} entry '{key}'"
    file_name = entry["file_name"]
    if not isinstance(file_name, str) or not file_name.strip():
        raise ApplianceError(f"{where}: 'file_name' must name a data file next to {info.name}, "
                             f"not {_json_type(file_name)}")
    target = info.parent / file_name
    if not target.exists():
        raise ApplianceError(f"{where}: file_name '{file_name}' not found in {info.parent}; fix the entry or add the file")
    if _same_file(target, info):
        raise ApplianceError(f"{where}: file_name is {info.name} itself; point it at the data file")
    if target.is_dir():
        if info.resolve().is_relative_to(target.resolve()):
            # its files would include this very dataset_info.json (and its folder again): never a dataset
            raise ApplianceError(f"{where}: file_name '{file_name}' is the folder that holds {info.name}; "
                                 "point it at a data file, or at a subfolder of data files")
        files = sorted(f for f in target.iterdir() if f.is_file() and f.suffix.lower() in _READ and f.name != _INFO)
        if not files:
            raise ApplianceError(f"{where}: folder '{file_name}' holds no .json/.jsonl/.csv/.parquet file; fix the entry or add the data")
        return files
    if not target.is_file():
        raise ApplianceError(f"{where}: file_name '{file_name}' is not a regular file; point it at a data file")
    return [target]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # missing, or a symbolic link loop (which resolve() raises on): not the file in question
        return False


def _sibling_mapping(path: Path) -> _Mapping | None:
    """The mapping of the dataset_info.json entry next to ``path`` that names it, if there is one."""
    info = path.parent / _INFO
    if not info.is_file():
        return None
    try:
        entries = _read_info(info)
    except ApplianceError as e:
        # ignoring it could silently read the file with the wrong columns
        raise ApplianceError(f"{path}: cannot use the {_INFO} next to it, which may say how to read this file: {e}") from None
    for key, entry in entries.items():
        file_name = entry.get("file_name")
        if isinstance(file_name, str) and file_name.strip() and _same_file(info.parent / file_name, path):
            return _mapping(info, key, entry)
    return None


def _looks_like_info(data: dict) -> bool:
    """A dataset_info.json under another name (``--prompts my_info.json``)."""
    return bool(data) and all(isinstance(v, dict) for v in data.values()) and \
        any(k in v for v in data.values() for k in _SOURCE_KEYS)


def _load_info(info: Path, entries: dict[str, dict], name: str, author: str) -> list[Prompt]:
    """Every local dataset a LLaMA-Factory dataset_info.json lists (a file or a folder), with its mapping."""
    out: list[Prompt] = []
    skipped: dict[str, list[str]] = {}
    for key, entry in entries.items():
        cols = entry.get("columns") if isinstance(entry.get("columns"), dict) else {}
        why = ("hub datasets are never downloaded" if "file_name" not in entry
               else "preference or KTO data: no single reference answer" if entry.get("ranking") or "kto_tag" in cols
               else f"not a data file read here ({Path(str(entry['file_name'])).suffix})"
               if Path(str(entry["file_name"])).suffix.lower() in _OTHER_DATA else None)
        if why:
            skipped.setdefault(why, []).append(key)
            continue
        mapping = _mapping(info, key, entry)
        for f in _entry_files(info, key, entry):
            out += _load_data(f, _read_records(f), mapping, name, author)
    if skipped:
        # a LLaMA-Factory data folder lists all of these: read what can be, and say what was left out
        print(f"note: {info}: skipped " + "; ".join(f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({why})"
                                                  for why, keys in skipped.items()), file=sys.stderr)
    if not out:
        raise ApplianceError(f"{info}: lists no local JSON dataset (file_name); point --prompts at a data file instead")
    return out


_READ = (".json", ".jsonl", ".csv", ".parquet")
_OTHER_DATA = (".tsv", ".arrow", ".txt", ".xlsx")


def _load_data(path: Path, data: dict | list[tuple[str, object]], mapping: _Mapping | None, name: str,
               author: str) -> list[Prompt]:
    rows = [(f"{path} record 1", data)] if isinstance(data, dict) else data
    if not rows:
        raise ApplianceError(f"{path}: no records; expected a JSON list or one JSON object per line")
    cols, formatting = (mapping.cols, mapping.formatting) if mapping else ({}, None)
    out = []
    # the stem becomes each row's "source" in answers.jsonl: a file name that is not UTF-8 must not stop writing it
    source = path.stem.encode("utf-8", "backslashreplace").decode("utf-8")
    for where, raw in rows:
        refuse_bad_text(raw, where)  # before any request: found when writing the report, it loses the eval
        try:
            rec = _record(raw, where, cols, formatting)
        except ApplianceError as e:
            if mapping is None:
                raise
            raise ApplianceError(f"{e}; {mapping.hint()}") from None
        out.append(_to_prompt(rec, where, name, author, source))
    return out


def load_prompt_file(path: str | Path, name: str, author: str) -> list[Prompt]:
    """Load one ``--prompts`` file: our JSONL, alpaca JSON, sharegpt, CSV/Parquet, a LLaMA-Factory dataset_info.json
    (or the folder that holds one), or a ``datasets`` save_to_disk folder."""
    p = Path(path)
    if p.is_dir() and saved_dataset(p):  # datasets' save_to_disk: its own dataset_info.json is no registry
        rows = [(f"{p} row {n}", r) for n, r in enumerate(read_saved_dataset(p), 1)]
        return _load_data(p, rows, _sibling_mapping(p), name, author)
    if p.is_dir():
        if not (p / _INFO).is_file():
            raise ApplianceError(f"--prompts {path}: is a folder without a {_INFO}; give a file in it, or add a "
                                 f"{_INFO} (LLaMA-Factory format) that lists its datasets")
        p = p / _INFO
    if not os.path.lexists(p):
        import difflib

        sets = BUILTIN_SETS + EXTRA_SETS
        near = difflib.get_close_matches(Path(path).name.lower(), sets, n=1, cutoff=0.7) if not Path(path).suffix else []
        hint = f"did you mean the built-in set '{near[0]}'? Or " if near else ""
        raise ApplianceError(f"--prompts {path}: file not found; {hint}give a JSONL/JSON file or one of {', '.join(sets)}")
    # anything else that is not a readable file (a symbolic link loop, a device) is named when it is read
    if p.name == _INFO:
        return _load_info(p, _read_info(p), name, author)
    if p.suffix.lower() in _OTHER_DATA:
        raise ApplianceError(f"--prompts {path}: a {p.suffix} file; only JSON (a list), JSONL, CSV and Parquet prompt files are read: "
                             f"convert it (pandas: df.to_json('{p.stem}.jsonl', orient='records', lines=True))")
    data = _read_records(p)
    if isinstance(data, dict) and _looks_like_info(data):
        return _load_info(p, _check_info(p, data), name, author)
    return _load_data(p, data, _sibling_mapping(p), name, author)


def load_prompts(specs: list[str] | tuple[str, ...] | None, name: str, author: str) -> list[Prompt]:
    """Prompts from ``--prompts`` values (files or built-in set names); all built-in sets when none are given."""
    from appliance.paths import resolve_user_path

    out: list[Prompt] = []
    built_in: set[int] = set()  # ids of the built-in sets' prompts
    for spec in specs or BUILTIN_SETS:
        if not spec.strip():
            # Path("") is the current directory: an empty value would read as "a folder without a dataset_info.json"
            raise ApplianceError("--prompts is empty; give a JSONL/JSON file or one of "
                                 f"{', '.join(BUILTIN_SETS + EXTRA_SETS)}")
        if spec in BUILTIN_SETS + EXTRA_SETS:
            loaded = load_prompt_file(PROMPTS_DIR / f"{spec}.jsonl", name, author)
            built_in.update(map(id, loaded))
            out += loaded
        else:
            path = resolve_user_path(spec)
            # a bare name that is no file may name a dataset, as LLaMA-Factory's `dataset: mine` does
            found = None if os.path.lexists(path) else named_dataset(spec, [Path.cwd() / _INFO, Path.cwd() / "data" / _INFO],
                                                                     _read_info)
            if found:
                info, key, entry = found
                if "file_name" not in entry:
                    raise ApplianceError(f"--prompts {spec}: dataset '{key}' of {info} is on a hub (no file_name), and eval "
                                         "downloads nothing; download it and pass its file")
                print(f"note: --prompts {spec}: reading dataset '{key}' of {info}", file=sys.stderr)
                out += _load_info(info, {key: entry}, name, author)
            else:
                out += load_prompt_file(path, name, author)
    if not out:
        raise ApplianceError("no prompts to evaluate; pass --prompts FILE or leave it out for the built-in sets")
    _note_mixed_general(out, built_in)
    return out


def _note_mixed_general(prompts: list[Prompt], built_in: set[int]) -> None:
    """Questions of one's own (new facts) filed under `general` beside the built-in general questions make one
    accuracy of both: a domain gain hid a loss of what the base knew (61% "general" up from 49%, while the
    built-in questions fell from 23 to 20 of 35). Said, with the fix."""
    own = [p for p in prompts if p.set == "general" and id(p) not in built_in]
    if own and any(p.set == "general" and id(p) in built_in for p in prompts):
        files = ", ".join(dict.fromkeys(p.source for p in own))
        print(f"note: {len(own)} prompt(s) of {files} are scored in the set 'general' with the built-in general "
              "questions, so general_accuracy and general.accuracy mix the two; give them \"set\": \"NAME\" to "
              "see them apart (then gate NAME.accuracy, and general.accuracy for what the base knew)", file=sys.stderr)
