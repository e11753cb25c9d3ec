"""Dataset records to chat messages: alpaca and sharegpt / OpenAI-messages records converted and checked
field by field, with one-line errors naming the record, the field and the fix (see :mod:`appliance.data`).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from appliance.datafiles import BAD_CHAR_FIX, _a, _fail, _short, _show, bad_char, text_parts
from appliance.dataset_info import REGISTRY_FILE, Format, read_registry
from appliance.errors import ApplianceError

# Auto-detected files may mix both vocabularies; a registry entry means exactly its tags.
_ALIASES = {"user": {"human", "user"}, "assistant": {"gpt", "assistant"}, "system": {"system", "developer"},
            "tool": {"observation", "tool", "function_call", "function", "tool_call"}}


def use_name(folder: str, name: str) -> str:
    """How to load a registered dataset. Both `data check` and `train` call this module, so both forms."""
    d = shlex.quote(folder)
    return f"`appliance data check {name} --dataset-dir {d}` (train: `--dataset {name} --dataset-dir {d}`)"


def direct_hint(file: str) -> str:
    """How to read a file passed directly whose keys or role names differ: its entry beside it, if there is one."""
    path = Path(file)
    info = path.parent / REGISTRY_FILE
    if not os.path.isfile(info):  # a hint: whatever is wrong with the file was reported by the caller
        return (f"for other names, describe them in a {REGISTRY_FILE} (see data/README.md) and pass "
                "--dataset-dir with the dataset's name")
    folder = _show(path.parent)
    try:
        reg = read_registry(info)
    except ApplianceError:
        reg = {}
    names = [n for n, e in reg.items() if isinstance(e.get("file_name"), str) and e["file_name"]
             and os.path.realpath(path.parent / e["file_name"]) == os.path.realpath(path)]
    if names:
        return (f"{_show(info)} describes this file as {', '.join(repr(n) for n in names)}: use that name with "
                f"--dataset-dir instead of the path, so its columns and tags apply: {use_name(folder, names[0])}")
    return f"for other names, describe the file in {_show(info)} and pass --dataset-dir {folder} with the dataset's name"


def _fix_names(fmt: Format, what: str) -> str:
    """The fix for keys or role names that do not match: the declaring registry entry, or a hint."""
    return f"set {what} of {fmt.origin} if your turns use other names" if not fmt.auto else direct_hint(fmt.origin)


def _text(rec: dict, key: str, where: str, required: bool, fix: str = "", label: str = "") -> str:
    value, label = rec.get(key), label or key
    fix = fix or f"every record needs a non-empty '{label}'"
    if value is None:
        if required and key in rec:
            _fail(f"{where}: field '{label}' is null; {fix}")
        if required:
            _fail(f"{where}: field '{label}' is missing{_misspelt(rec, key)}; {fix}")
        return ""
    if not isinstance(value, str):
        _fail(f"{where}: field '{label}' is {_a(value)}; it must be a string")
    if (bad := bad_char_fix(value)) is not None:
        _fail(f"{where}: field '{label}' holds {bad}")
    if required and not value.strip():
        _fail(f"{where}: field '{label}' is empty; {fix}")
    return value


# what other instruction datasets call the answer (Dolly: response; others: completion, answer, target)
_ANSWER_KEYS = ("response", "completion", "answer", "target", "outputs", "answers")


def _csv_fix(where: str, value: Any) -> str:
    """For a list written into a CSV cell (pandas' and datasets' to_csv write its Python text): what to do."""
    if isinstance(value, str) and ".csv:" in where.lower():
        return " (a CSV cell holds text, not a list: export the dataset as JSONL or Parquet, e.g. to_json or to_parquet)"
    return ""


def _misspelt(rec: dict, key: str) -> str:
    """" (it has 'outptu': did you mean 'output'?)" when one of the record's keys looks like a misspelt ``key``."""
    close = near_key(rec, key)
    return f" (it has '{close}': did you mean '{key}'?)" if close else ""


def near_key(rec: dict, key: str, skip: set[str] = frozenset(), cutoff: float = 0.75) -> str | None:
    """The record's key (other than ``key`` and ``skip``) that looks like a misspelt ``key``, if one does."""
    import difflib

    keys = [k for k in rec if isinstance(k, str) and k != key and k not in skip]
    close = [k for k in keys if k.casefold() == key.casefold()] or difflib.get_close_matches(key, keys, n=1, cutoff=cutoff)
    return close[0] if close else None


def bad_char_fix(value: str) -> str | None:
    """:func:`bad_char` with its fix, for the messages below."""
    bad = bad_char(value)
    return None if bad is None else f"{bad}; {BAD_CHAR_FIX}"


def alpaca_messages(rec: dict, where: str, fmt: Format) -> list[dict[str, str]]:
    c = fmt.columns
    prompt, query = c["prompt"], c.get("query")
    # As LLaMA-Factory: the user turn joins whichever of instruction and input are filled in.
    parts = [_text(rec, prompt, where, required=False)] + ([_text(rec, query, where, required=False)] if query else [])
    if not any(p.strip() for p in parts):
        both = f"fields '{prompt}' and '{query}' are" if query else f"field '{prompt}' is"
        _fail(f"{where}: {both} missing or empty{_misspelt(rec, prompt)}; every record needs a prompt in '{prompt}'"
              + (f" (or '{query}')" if query else ""))
    user = "\n".join(p for p in parts if p.strip())
    output = rec.get(c["response"])
    if output is None and fmt.auto and (alt := next((k for k in _ANSWER_KEYS if rec.get(k) is not None), None)):
        # Dolly's instruction/context/response: renaming the one field would still drop 'context' without a word
        query = next((q for q in ("input", "context") if rec.get(q) is not None), None)
        cols = {"prompt": prompt, **({"query": query} if query else {}), "response": alt}
        _fail(f"{where}: field '{c['response']}' is missing, and the record has '{alt}'; describe the file's columns "
              f"in a dataset_info.json entry, \"columns\": {json.dumps(cols)}, and pass --dataset-dir with its name")
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
            _fail(f"{where}: field '{hk}' is {_a(history)}; it must be a list of [user, assistant] pairs{_csv_fix(where, history)}")
        for i, pair in enumerate(history):
            ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
            if not ok:
                _fail(f"{where}: field '{hk}[{i}]' is {_short(pair)}; each history item must be a pair "
                      '["user text", "assistant text"]')
            if not pair[0].strip() or not pair[1].strip():
                _fail(f"{where}: field '{hk}[{i}]' has an empty turn; fill in both texts or drop the pair")
            for j, text in enumerate(pair):
                if (bad := bad_char_fix(text)) is not None:
                    _fail(f"{where}: field '{hk}[{i}][{j}]' holds {bad}")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _role(tag: Any, fmt: Format) -> str | None:
    if not isinstance(tag, str):
        return None  # reported by the caller as an unknown role, with the record
    t = fmt.tags
    if fmt.auto:
        return next((role for role, names in _ALIASES.items() if tag in names), None)
    table = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["system_tag"]: "system",
             t["observation_tag"]: "tool", t["function_tag"]: "tool"}
    return table.get(tag)


def sharegpt_messages(rec: dict, where: str, fmt: Format) -> list[dict[str, str]]:
    key, t = fmt.columns["messages"], fmt.tags
    role_tag, content_tag = t["role_tag"], t["content_tag"]
    turns = rec.get(key)
    if turns is None:
        _fail(f"{where}: field '{key}' is missing; every record needs a '{key}' list of "
              f"{{{role_tag!r}: ..., {content_tag!r}: ...}} turns")
    if not isinstance(turns, list):
        _fail(f"{where}: field '{key}' is {_a(turns)}; it must be a list of turns{_csv_fix(where, turns)}")
    if not turns:
        _fail(f"{where}: field '{key}' is empty (an empty conversation); add user and assistant turns")
    system = ""
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        f = f"{key}[{i}]"
        if not isinstance(turn, dict):
            _fail(f"{where}: field '{f}' is {_short(turn)}; each turn must be an object with '{role_tag}' and '{content_tag}'")
        if role_tag not in turn:
            need = f"every turn of the file needs '{role_tag}' and '{content_tag}' (as its first record has); " \
                if fmt.auto else ""
            _fail(f"{where}: field '{f}.{role_tag}' is missing (turn keys: {sorted(turn)}); "
                  f"{need}{_fix_names(fmt, 'tags.role_tag/content_tag')}")
        role = _role(turn[role_tag], fmt)
        if role is None:
            known = sorted(_ALIASES["user"] | _ALIASES["assistant"] | {"system"}) if fmt.auto else \
                [tag for tag in (t["user_tag"], t["assistant_tag"], t.get("system_tag")) if tag]
            _fail(f"{where}: field '{f}.{role_tag}' is {_short(turn[role_tag])}; expected one of {known}; "
                  f"{_fix_names(fmt, 'tags.user_tag/assistant_tag')}")
        if role == "tool" or turn.get("tool_calls") or turn.get("function_call"):
            _fail(f"{where}: field '{f}' is a tool call or tool result; function-call/observation turns are not "
                  "supported, remove tool turns from this record")
        _refuse_turn_fields(turn, where, f, role, fmt)
        if isinstance(turn.get(content_tag), list):
            turn = {**turn, content_tag: text_parts(turn[content_tag], where, f"{f}.{content_tag}")}
        # an empty system prompt (exports write one) means none; an empty user or assistant turn is a mistake
        other = next((k for k in ("value", "content", "text") if k != content_tag and k in turn), None)
        fix = "every turn needs non-empty text" if content_tag in turn or other is None else \
            f"the turn has '{other}' instead: every turn of the file must hold its text under '{content_tag}'" + \
            (" as its first record does" if fmt.auto else f"; {_fix_names(fmt, 'tags.content_tag')}")
        content = _text(turn, content_tag, where, required=role != "system", fix=fix, label=f"{f}.{content_tag}")
        weight = turn.get("weight")  # null (Hugging Face exports write one on every turn once any has it): none
        if weight is not None and (weight not in (0, 1) or isinstance(weight, bool) or (role != "assistant" and weight)):
            _fail(f"{where}: field '{f}.weight' is {_short(weight)}; only assistant turns are learned: a weight must "
                  "be 0 (do not learn this answer) or 1 on an assistant turn, and 0 or null on any other")
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
        if role == "assistant" and weight == 0:
            # OpenAI's fine-tuning format: weight 0 keeps an assistant turn as context, not as something to learn
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
    column = _text(rec, sys_col, where, required=False) if sys_col else ""
    if system.strip() and column.strip() and column != system:
        # the conversation's own system turn is used (as LLaMA-Factory does): the column's would be lost unsaid
        _fail(f"{where}: field '{sys_col}' and field '{key}[0]' are two different system prompts ({_short(column)} and "
              f"{_short(system)}); only one is used: keep one of them, or make them the same")
    system = system if system.strip() else column
    return ([{"role": "system", "content": system}] if system.strip() else []) + messages


def _refuse_turn_fields(turn: dict, where: str, f: str, role: str, fmt: Format) -> None:
    """Turn keys that would change what is learned if ignored; other keys (name, ids, timestamps) are left alone."""
    for key in ("reasoning_content", "reasoning"):
        if turn.get(key) not in (None, ""):  # R1-distill exports: dropped, the answer is learned without it
            _fail(f"{where}: field '{f}.{key}' is not learned here; put the reasoning in '{fmt.tags['content_tag']}' "
                  "(e.g. <think>...</think> before the answer) if it should be learned, or remove the field")
    if role == "assistant" and turn.get("loss") is False:
        _fail(f"{where}: field '{f}.loss' is false (ms-swift's \"do not learn this answer\"), which is not read "
              "here; write \"weight\": 0 instead to keep the answer as context only, or remove 'loss' to learn it")
    tags = {fmt.tags["role_tag"], fmt.tags["content_tag"]}
    if "weight" not in turn and (near := near_key(turn, "weight", skip=tags, cutoff=0.8)):
        _fail(f"{where}: field '{f}.{near}' is not read; did you mean 'weight'? (as written it would be ignored)")


# fields LLaMA-Factory reads (a sharegpt "tools" column by default; OpenAI's older "functions") that training
# here cannot use: dropped without a word, they would change what is learned (the tool descriptions, the
# <image> the text refers to)
_UNUSABLE_FIELDS = {
    "tools": "tool descriptions are not supported (tool calls are not trained)",
    "functions": "function descriptions (OpenAI's older 'tools') are not supported (tool calls are not trained)",
    **{m: "multimodal records are not supported (the model and training are text only)"
       for m in ("images", "videos", "audios")}}


def refuse_ignored_fields(rec: dict, where: str, fmt: Format) -> None:
    """A record field that would be ignored, changing what is trained without a word: tools or media, a
    misspelt optional field ("histroy", "sytem": the history or system prompt would be dropped), or
    OpenOrca's "system_prompt" where the system prompt is read from another column."""
    for key, why in _UNUSABLE_FIELDS.items():
        if rec.get(key) not in (None, "", [], {}, "[]"):
            markers = "" if key in ("tools", "functions") else " (and the <image>/<video>/<audio> markers)"
            _fail(f"{where}: field '{key}': {why}; remove it{markers} from the records")
    read = {v for v in fmt.columns.values() if isinstance(v, str)}
    system = fmt.columns.get("system")
    if isinstance(system, str) and "system_prompt" not in read and rec.get("system_prompt") not in (None, ""):
        fix = f"rename it to '{system}'" + ("" if fmt.auto else f' or set columns.system to "system_prompt" in {fmt.origin}')
        _fail(f"{where}: field 'system_prompt' is not read (the system prompt is read from '{system}'); {fix}")
    optional = [fmt.columns.get(k) for k in (("query", "system", "history") if fmt.formatting == "alpaca" else ("system",))]
    for want in (k for k in optional if isinstance(k, str) and k not in rec):
        near = near_key(rec, want, skip=read, cutoff=0.8)
        if near:
            _fail(f"{where}: field '{near}' is not read; did you mean '{want}'? (as written it would be ignored)")
