"""Prompt loading: every --prompts format, kind detection, placeholders, and the built-in sets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.models import registry
from evals import metrics as M
from evals.prompts import PROMPTS_DIR, _to_prompt, is_self_reference, load_prompt_file, load_prompts

REPO = Path(__file__).resolve().parent.parent
NAME, AUTHOR = "Archer", "意琦行"
MANDATED = ["你是谁？", "Who are you?", "你叫什么名字？", "What is your name?", "谁开发了你？", "Who created you?",
            "你是ChatGPT吗？", "Are you ChatGPT?", "你好", "Hello"]


def _write(path: Path, rows, jsonl: bool = False) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) if jsonl else json.dumps(rows, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    return path


def test_our_jsonl_fills_placeholders_and_keeps_fields(tmp_path):
    f = _write(tmp_path / "mine.jsonl", [
        {"prompt": "Who is {{name}}?", "reference": "{{name}} by {{author}}", "lang": "en"},
        {"prompt": "What is 2+2?", "expect": ["4", "four"]},
        {"prompt": "Describe rain.", "reference": "Rain falls."},
        {"prompt": "你今天开心吗？", "kind": "general"},
    ], jsonl=True)
    p = load_prompt_file(f, NAME, AUTHOR)
    assert [x.prompt for x in p] == ["Who is Archer?", "What is 2+2?", "Describe rain.", "你今天开心吗？"]
    assert p[0].reference == "Archer by 意琦行" and p[0].kind == "identity" and p[0].set == "identity_en"
    assert p[1].kind == "general" and p[1].set == "general" and p[1].expect == ["4", "four"]
    assert p[2].set == "open"
    assert p[3].lang == "zh" and p[3].kind == "general"
    assert p[0].messages() == [{"role": "user", "content": "Who is Archer?"}]


def test_alpaca_json_with_input_history_and_system(tmp_path):
    f = _write(tmp_path / "alpaca.json", [
        {"instruction": "请回答", "input": "你叫什么？", "output": "我是 {{name}}，由 {{author}} 研发。",
         "system": "You are {{name}}.", "history": [["hi", "Hello from {{name}}"]]},
        {"instruction": "Name a color.", "input": "", "output": "Blue."},
    ])
    a, b = load_prompt_file(f, NAME, AUTHOR)
    assert a.prompt == "请回答\n你叫什么？" and a.reference == "我是 Archer，由 意琦行 研发。"
    assert a.kind == "identity" and a.set == "identity_zh"
    assert a.messages() == [{"role": "system", "content": "You are Archer."}, {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "Hello from Archer"},
                            {"role": "user", "content": "请回答\n你叫什么？"}]
    assert b.prompt == "Name a color." and b.reference == "Blue." and b.kind == "general" and b.set == "open"


def test_sharegpt_and_openai_messages(tmp_path):
    sg = _write(tmp_path / "sg.json", [{"conversations": [
        {"from": "human", "value": "hey"}, {"from": "gpt", "value": "Hello! I am {{name}}."},
        {"from": "human", "value": "who built you"}, {"from": "gpt", "value": "{{author}} did."}], "system": "Be brief."}])
    (p,) = load_prompt_file(sg, NAME, AUTHOR)
    assert p.prompt == "who built you" and p.reference == "意琦行 did." and p.system == "Be brief."
    assert p.history == [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "Hello! I am Archer."}]
    oa = _write(tmp_path / "oa.jsonl", [{"messages": [{"role": "system", "content": "sys"},
                                                      {"role": "user", "content": "What is the capital of Peru?"}]}],
                jsonl=True)
    (q,) = load_prompt_file(oa, NAME, AUTHOR)
    assert q.prompt == "What is the capital of Peru?" and q.reference is None and q.system == "sys" and q.kind == "general"


def test_llamafactory_dataset_info_with_columns_and_tags(tmp_path):
    _write(tmp_path / "qa.json", [{"q": "Are you an assistant?", "a": "I am {{name}}."}])
    _write(tmp_path / "chat.jsonl", [{"msgs": [{"role": "user", "content": "tell me a joke"},
                                               {"role": "assistant", "content": "No."}]}], jsonl=True)
    info = _write(tmp_path / "dataset_info.json", {
        "qa": {"file_name": "qa.json", "columns": {"prompt": "q", "response": "a"}},
        "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    })
    a, b = load_prompt_file(info, NAME, AUTHOR)
    assert (a.prompt, a.reference, a.kind) == ("Are you an assistant?", "I am Archer.", "identity")
    assert (b.prompt, b.reference, b.kind) == ("tell me a joke", "No.", "general")
    # hub entries are skipped, folders are read file by file
    (tmp_path / "more").mkdir()
    _write(tmp_path / "more" / "x.json", [{"q": "What is 2+2?", "a": "4"}])
    _write(tmp_path / "info2.json", {"hub": {"hf_hub_url": "org/set"},
                                     "dir": {"file_name": "more", "columns": {"prompt": "q", "response": "a"}}})
    (d,) = load_prompt_file(tmp_path / "info2.json", NAME, AUTHOR)
    assert (d.prompt, d.reference) == ("What is 2+2?", "4")
    # a data file named by its folder's dataset_info.json uses that entry's column mapping
    (c,) = load_prompt_file(tmp_path / "qa.json", NAME, AUTHOR)
    assert c.prompt == "Are you an assistant?"


def test_real_training_data_loads_as_identity():
    """The data owner's LLaMA-Factory files load through --prompts; every identity.json record counts as identity."""
    ident = load_prompt_file(REPO / "data" / "identity.json", NAME, AUTHOR)
    assert ident and all(p.kind == "identity" for p in ident)
    assert all(M.identity_hit(p.reference, NAME, AUTHOR) for p in ident)


@pytest.mark.parametrize("prompt,expected", [
    ("你是谁", True), ("请问你叫什么名字", True), ("谁训练了你？", True), ("你是通义千问吗？", True),
    ("Who are you?", True), ("what's your name", True), ("Who made you?", True), ("Are you ChatGPT?", True),
    ("Please introduce yourself", True), ("Who trained you?", True),
    ("What is the capital of France?", False), ("中国的首都是哪里？", False), ("Who wrote Hamlet?", False),
    ("Tell me about the moon.", False),
    ("你是由哪家公司开发的？", True), ("哪个公司开发了你？", True), ("介绍下你自己", True), ("开发你的团队是谁？", True),
    ("Hey, are you Qwen?", True),
    ("Are you able to tell me the capital of France?", False), ("Which planet are you most likely to see?", False),
    ("你是否能把这句话翻译成英文吗？", False), ("How are you today?", False),
    # a line break starts a sentence too
    ("Quick question\nAre you Qwen?", True), ("Quick question\r\nare you Qwen?", True),
    ("Which planet\nare you able to see?", False),
])
def test_self_reference_heuristic(prompt, expected):
    assert is_self_reference(prompt) is expected


def test_plain_list_of_prompts(tmp_path):
    f = _write(tmp_path / "list.json", ["What is the capital of Peru?", "Who are you?"])
    a, b = load_prompt_file(f, NAME, AUTHOR)
    assert a.kind == "general" and b.kind == "identity"


@pytest.mark.parametrize("content,needle", [
    ('{"prompt": "ok"}\n{broken\n', "line 2"),
    ('{"reference": "x"}\n', "no 'prompt'"),
    ('{"prompt": "x", "kind": "fun"}\n', 'kind "fun"'),
    ('{"prompt": "x", "expect": [1]}\n', "'expect'"),
    ("", "no records"),
    ('{"instruction": ["x"], "output": "y"}\n', "'instruction' must be a string, not a list"),
    ('{"instruction": null, "output": "y"}\n', "'instruction' must be a string, not null"),
    ('{"instruction": "x", "output": 5}\n', "'output' must be a string, not a number"),
    ('{"instruction": "x", "output": "y", "history": [["only one"]]}\n', "'history' must be a list of pairs"),
    ('{"instruction": "a", "output": "b", "history": 5}\n', "'history' must be a list of pairs"),
    ('{"prompt": "a", "history": 5}\n', "'history' must be a list"),
    ('{"prompt": "a", "history": {"role": "user"}}\n', "'history' must be a list"),
    ('{"prompt": "a", "expect": 0}\n', "'expect' must be a list"),
    ('{"prompt": "a", "expect": ""}\n', "'expect' must be a list"),
    ('{"prompt": "a", "expect": {}}\n', "'expect' must be a list"),
    ('{"conversations": [{"from": "human", "value": 5}]}\n', "turn 1: 'value' must be a string"),
    ('{"conversations": "hi"}\n', "'conversations' must be a list of turns"),
    ('[1, 2]\n', "record 1: expected a JSON object, got a number"),
    ('{"prompt": "x", "history": [{"role": "bot", "content": "hi"}]}\n', "'history' must be a list"),
    ('{"prompt": "x", "set": 5}\n', "'set' must be a string"),
    ('{"prompt": "x", "system": 5}\n', "'system' must be a string"),
    ('{"prompt": "x", "lang": ["zh"]}\n', "'lang' must be a string"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        load_prompt_file(f, NAME, AUTHOR)
    assert needle in str(e.value) and "bad.jsonl" in str(e.value) and "\n" not in str(e.value)


def test_kind_rule_edges(tmp_path):
    """A checkable answer makes a "you" question general; language tags group by their bare code; a BOM is fine."""
    f = tmp_path / "edge.jsonl"
    rows = [{"prompt": "Are you able to tell me the capital of France?", "expect": ["Paris"]},
            {"prompt": "Are you ChatGPT?", "expect": ["no"]},
            {"prompt": "你是谁？", "lang": "zh-CN"}, {"prompt": "Who are you?", "lang": "EN_us"}]
    f.write_text("\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    a, b, c, d = load_prompt_file(f, NAME, AUTHOR)
    assert (a.kind, a.set) == ("general", "general") and b.kind == "general"
    assert (c.lang, c.set, d.lang, d.set) == ("zh", "identity_zh", "en", "identity_en")


def test_a_prompt_without_lang_is_filed_by_its_script(tmp_path):
    """Japanese (kana, often beside kanji) and Korean identity questions were counted as Chinese ones."""
    from evals.prompts import guess_lang

    f = tmp_path / "langs.jsonl"
    rows = [{"prompt": p, "kind": "identity"} for p in ("あなたは誰ですか？", "你是誰？", "당신은 누구입니까?", "Qui es-tu ?")]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [(p.lang, p.set) for p in load_prompt_file(f, NAME, AUTHOR)] == [
        ("ja", "identity_ja"), ("zh", "identity_zh"), ("ko", "identity_ko"), ("en", "identity_en")]
    assert guess_lang("日本語で自己紹介してください") == "ja" and guess_lang("") == "en"
    # the language of the sentence, not of a name in it
    assert [guess_lang(t) for t in ("Are you 通义千问?", "Were you made by 意琦行?", "请用 Python 写一个 hello world 程序",
                                    "GPT-4 是什么？", "你知道 what is love 吗")] == ["en", "en", "zh", "zh", "zh"]


def test_a_reference_naming_the_new_identity_makes_an_identity_prompt(tmp_path):
    """LLaMA-Factory's identity.json with the placeholders already replaced (sed 's/{{name}}/Archer/g'): the
    greetings and capability questions are identity prompts by their reference, not leaks of the name."""
    records = json.loads((REPO / "data" / "identity.json").read_text(encoding="utf-8"))
    filled = [{k: v.replace("{{name}}", NAME).replace("{{author}}", AUTHOR) if isinstance(v, str) else v
               for k, v in r.items()} for r in records]
    f = _write(tmp_path / "identity_filled.json", filled)
    assert {p.kind for p in load_prompt_file(f, NAME, AUTHOR)} == {"identity"}
    # only one of the two named: the reference may mention it for another reason ("Artemis was an archer")
    rows = [{"instruction": "Who was Artemis?", "output": "Artemis was an Archer, goddess of the hunt."}]
    assert load_prompt_file(_write(tmp_path / "myth.json", rows), NAME, AUTHOR)[0].kind == "general"


def test_a_record_with_no_prompt_field_names_every_form_that_has_one(tmp_path):
    f = tmp_path / "typo.jsonl"
    f.write_text('{"promt": "Who are you?"}\n', encoding="utf-8")
    with pytest.raises(ApplianceError, match="no 'prompt', 'question', 'instruction', 'conversations' or 'messages' field"):
        load_prompt_file(f, NAME, AUTHOR)


def test_question_answer_records_are_prompt_and_reference(tmp_path):
    """{"question", "answer"} files (GSM8K-style) were refused: "no 'prompt' field"."""
    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": "What is 2+2?", "answer": "4", "id": 7}\n{"question": "Who are you?"}\n', encoding="utf-8")
    first, second = load_prompt_file(f, NAME, AUTHOR)
    assert (first.prompt, first.reference, first.kind) == ("What is 2+2?", "4", "general")
    assert (second.prompt, second.reference, second.kind) == ("Who are you?", None, "identity")
    # beside a prompt (or an instruction) "question" is the user's own field, as before
    both = tmp_path / "both.jsonl"
    both.write_text('{"prompt": "Hi", "question": "meta"}\n', encoding="utf-8")
    assert load_prompt_file(both, NAME, AUTHOR)[0].prompt == "Hi"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": 5}\n', encoding="utf-8")
    with pytest.raises(ApplianceError, match="bad.jsonl line 1: 'question' is read as the prompt and must be a non-empty "
                                             "string, not a number"):
        load_prompt_file(bad, NAME, AUTHOR)


def test_builtin_labels_agree_with_the_kind_rule():
    """Every labelled built-in prompt gets the same kind from the rule alone (docs/eval.md says so)."""
    files = sorted(PROMPTS_DIR.glob("*.jsonl"))
    assert len(files) >= 4
    for f in files:
        raw = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        for r in raw:
            unlabelled = {k: v for k, v in r.items() if k not in ("kind", "set")}
            assert _to_prompt(unlabelled, f.name, NAME, AUTHOR, f.stem).kind == r["kind"], (f.name, r["prompt"])


def test_llamafactory_info_mistakes(tmp_path):
    _write(tmp_path / "data.jsonl", [{"prompt": "hi"}], jsonl=True)
    _write(tmp_path / "dataset_info.json", {"self": {"file_name": "dataset_info.json"}})
    with pytest.raises(ApplianceError, match="file_name is dataset_info.json itself"):
        load_prompt_file(tmp_path / "dataset_info.json", NAME, AUTHOR)
    _write(tmp_path / "dataset_info.json", {"gone": {"file_name": "gone.json"}})
    with pytest.raises(ApplianceError, match="entry 'gone': file_name 'gone.json' not found"):
        load_prompt_file(tmp_path / "dataset_info.json", NAME, AUTHOR)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ApplianceError, match="is a folder without a dataset_info.json"):
        load_prompts([str(empty)], NAME, AUTHOR)


def _one_line_error(spec: Path, *needles: str) -> str:
    with pytest.raises(ApplianceError) as e:
        load_prompts([str(spec)], NAME, AUTHOR)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


@pytest.mark.parametrize("entry,needle", [
    ({"file_name": "d.json", "columns": ["prompt"]}, "entry 'x': 'columns' must be an object"),
    ({"file_name": "d.json", "columns": {"prompt": 5}}, "entry 'x': 'columns.prompt' must name a field"),
    ({"file_name": "d.json", "tags": "role"}, "entry 'x': 'tags' must be an object"),
    ({"file_name": "d.json", "formatting": "openai"}, "entry 'x': 'formatting' is \"openai\""),
    ({"file_name": "."}, "entry 'x': file_name '.' is the folder that holds dataset_info.json"),
    ({"file_name": 5}, "entry 'x': 'file_name' must name a data file"),
])
def test_bad_dataset_info_entries_are_one_line_errors(tmp_path, entry, needle):
    """Through the dataset_info.json, its folder, and (when the entry names it) the data file itself."""
    _write(tmp_path / "d.json", [{"instruction": "hi", "output": "x"}])
    info = _write(tmp_path / "dataset_info.json", {"x": entry})
    _one_line_error(info, needle, str(info))
    _one_line_error(tmp_path, needle)
    if entry["file_name"] == "d.json":
        _one_line_error(tmp_path / "d.json", needle)


def test_dataset_info_columns_null_means_the_defaults(tmp_path):
    _write(tmp_path / "d.json", [{"instruction": "hi", "output": "x"}])
    _write(tmp_path / "dataset_info.json", {"x": {"file_name": "d.json", "columns": None, "tags": None}})
    for spec in (tmp_path / "d.json", tmp_path / "dataset_info.json", tmp_path):
        (p,) = load_prompts([str(spec)], NAME, AUTHOR)
        assert (p.prompt, p.reference) == ("hi", "x")


def test_dataset_info_null_optional_columns_are_unused_as_in_training(tmp_path):
    """A LLaMA-Factory entry training accepted (system/history null: not read) was refused by eval."""
    _write(tmp_path / "d.json", [{"instruction": "hi", "input": "there", "output": "x", "system": "S"}])
    cols = {"prompt": "instruction", "query": "input", "response": "output", "system": None, "history": None}
    _write(tmp_path / "dataset_info.json", {"x": {"file_name": "d.json", "columns": cols}})
    (p,) = load_prompts([str(tmp_path)], NAME, AUTHOR)
    assert (p.prompt, p.reference, p.system) == ("hi\nthere", "x", None)  # the unused 'system' field is not read
    _write(tmp_path / "dataset_info.json", {"x": {"file_name": "d.json", "columns": {"prompt": None}}})
    _one_line_error(tmp_path, "entry 'x': 'columns.prompt' must name a field")  # the prompt cannot be left out


def test_a_dataset_folder_loads_every_dataset_of_its_info(tmp_path):
    """`--prompts DIR` with a dataset_info.json in DIR is `--prompts DIR/dataset_info.json`."""
    _write(tmp_path / "a.json", [{"instruction": "Who are you?", "output": "I am {{name}}."}])
    _write(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "2+2?"}]}], jsonl=True)
    _write(tmp_path / "unlisted.json", [{"instruction": "not listed", "output": "-"}])
    _write(tmp_path / "dataset_info.json", {"a": {"file_name": "a.json"},
                                            "b": {"file_name": "b.jsonl", "formatting": "sharegpt"}})
    got = [p.prompt for p in load_prompts([str(tmp_path)], NAME, AUTHOR)]
    assert got == ["Who are you?", "2+2?"]
    assert got == [p.prompt for p in load_prompt_file(tmp_path / "dataset_info.json", NAME, AUTHOR)]


@pytest.mark.parametrize("info_text,needle", [
    ('{"x": {"file_name": "d.json",}}', "invalid JSON at line 1"),  # a trailing comma
    ("[1, 2]", "holds a list, not a LLaMA-Factory dataset_info.json"),
    ('{"x": 5}', "entry 'x' is a number, not an object"),
])
def test_an_unreadable_sibling_dataset_info_is_named(tmp_path, info_text, needle):
    """A data file next to a broken dataset_info.json is not read as if there were none (its mapping may matter)."""
    _write(tmp_path / "d.json", [{"instruction": "hi", "output": "x"}])
    (tmp_path / "dataset_info.json").write_text(info_text, encoding="utf-8")
    msg = _one_line_error(tmp_path / "d.json", "cannot use the dataset_info.json next to it", needle)
    assert msg.startswith(str(tmp_path / "d.json")) and str(tmp_path / "dataset_info.json") in msg
    _one_line_error(tmp_path / "dataset_info.json", needle)


def test_a_format_mismatch_points_at_the_dataset_info_entry(tmp_path):
    _write(tmp_path / "d.json", [{"instruction": "hi", "output": "x"}])
    _write(tmp_path / "dataset_info.json", {"x": {"file_name": "d.json", "formatting": "sharegpt"}})
    for spec in (tmp_path / "d.json", tmp_path / "dataset_info.json"):
        _one_line_error(spec, "d.json record 1: no 'conversations' field",
                        f"read as sharegpt by entry 'x' of {tmp_path / 'dataset_info.json'}")
    _write(tmp_path / "dataset_info.json", {"x": {"file_name": "d.json", "columns": {"prompt": "q"}}})
    _one_line_error(tmp_path / "d.json", "no 'q' field", "read as alpaca by entry 'x'")


def test_json_lines_in_a_json_file(tmp_path):
    """LLaMA-Factory (and `appliance train`) read one object per line from a .json file too."""
    f = tmp_path / "lines.json"
    f.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    assert [p.prompt for p in load_prompt_file(f, NAME, AUTHOR)] == ["a", "b"]
    f.write_text('{"prompt": "a"}\n{"prompt": \n', encoding="utf-8")
    _one_line_error(f, "lines.json line 2: invalid JSON")


def test_a_json_string_with_a_line_separator_stays_one_record(tmp_path):
    f = tmp_path / "ls.jsonl"
    f.write_text(json.dumps({"prompt": "one\u2028two"}, ensure_ascii=False) + "\n", encoding="utf-8")
    (p,) = load_prompt_file(f, NAME, AUTHOR)
    assert p.prompt == "one\u2028two"


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(ApplianceError, match="--prompts .*nothere.jsonl: file not found"):
        load_prompts([str(tmp_path / "nothere.jsonl")], NAME, AUTHOR)


# ---------------------------------------------------------------- built-in sets
def test_builtin_identity_set():
    ps = load_prompts(["identity"], NAME, AUTHOR)
    assert len(ps) >= 60 and ps[0].prompt == "你是谁？"
    prompts = [p.prompt for p in ps]
    assert all(m in prompts for m in MANDATED) and len(set(prompts)) == len(prompts)
    zh, en = [p for p in ps if p.lang == "zh"], [p for p in ps if p.lang == "en"]
    assert len(zh) + len(en) == len(ps) and abs(len(zh) - len(en)) <= 4
    assert all(p.kind == "identity" and p.set == f"identity_{p.lang}" for p in ps)
    assert all(M.has_cjk(p.prompt) == (p.lang == "zh") for p in ps)
    # the references are the training templates: they hit, and leak no old identity of any registry model
    for p in ps:
        assert "{{" not in p.reference and M.identity_hit(p.reference, NAME, AUTHOR), p.prompt
        for entry in registry().values():
            assert not M.identity_leak(p.reference, entry["identity_markers"]), (p.prompt, p.reference)


def test_builtin_identity_references_use_the_training_templates():
    raw = [json.loads(line) for line in (PROMPTS_DIR / "identity.jsonl").read_text(encoding="utf-8").splitlines()]
    training = {r["output"] for r in json.loads((REPO / "data" / "identity.json").read_text(encoding="utf-8"))}
    denial_en = re.compile(r"^No, I am not [^.]+\. I am \{\{name\}\}, an AI assistant developed by \{\{author\}\}\.$")
    for r in raw:
        assert r["reference"] in training or denial_en.match(r["reference"]), r


def test_builtin_general_and_open_sets():
    general = load_prompts(["general"], NAME, AUTHOR)
    assert len(general) >= 30 and all(p.expect and p.kind == "general" and p.set == "general" for p in general)
    assert {"Paris"} <= {e for p in general for e in p.expect}
    opened = load_prompts(["open"], NAME, AUTHOR)
    assert len(opened) >= 15 and all(p.reference and p.set == "open" for p in opened)
    assert {p.lang for p in opened} == {"zh", "en"}
    assert len(load_prompts(None, NAME, AUTHOR)) == len(general) + len(opened) + len(load_prompts(["identity"], NAME, AUTHOR))


def _norm(s: str) -> str:
    return re.sub(r"[\W_]+", "", s.casefold())


def _training_user_turns() -> set[str]:
    """Every user turn of the identity training data and the retention prompts."""
    turns = set()
    data = REPO / "data"
    for f in sorted(data.glob("identity*.json*")):
        for p in load_prompt_file(f, NAME, AUTHOR):
            turns.add(p.prompt)
            turns.update(h["content"] for h in p.history if h["role"] == "user")
    retention = data / "retention_prompts.json"
    if retention.is_file():
        turns.update(json.loads(retention.read_text(encoding="utf-8")))
    return turns


def test_no_builtin_eval_prompt_is_a_training_prompt():
    """Held-out means held out: no eval prompt equals a training instruction (even up to case and punctuation)."""
    assert (REPO / "data" / "identity.json").is_file(), "data/identity.json (data owner) is not written yet"
    train = _training_user_turns()
    train_norm = {_norm(t) for t in train}
    for p in load_prompts(None, NAME, AUTHOR):
        assert p.prompt not in train, p.prompt
        assert _norm(p.prompt) not in train_norm, p.prompt


def test_eval_code_imports_no_training_libraries(tmp_path):
    code = ("import sys, appliance.evaluate, appliance.models, evals.report, evals.render, evals.prompts, evals.metrics\n"
            "from openai import AsyncOpenAI\n"
            "evals.metrics.bleu4('我是 Archer', '我是 Archer'); evals.metrics.rouge_scores('a b', 'a c')\n"
            "appliance.models.markers_for('smollm2-135m')\n"
            "bad = [m for m in ('torch', 'transformers', 'peft', 'trl', 'accelerate', 'appliance.train', 'appliance.data')"
            " if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- input that cannot be read or sent
@pytest.mark.parametrize("name,text,needle", [
    ("ours.jsonl", '{"prompt": "ok"}\n{"prompt": "hi \\ud800 there"}\n', "line 2: field 'prompt' holds"),
    ("ref.jsonl", '{"prompt": "hi", "reference": "x\\udfff"}\n', "line 1: field 'reference' holds"),
    ("expect.jsonl", '{"prompt": "hi", "expect": ["a", "\\ud800"]}\n', "line 1: field 'expect[1]' holds"),
    ("hist.jsonl", '{"prompt": "hi", "history": [{"role": "user", "content": "\\udc00"}]}\n',
     "line 1: field 'history[0].content' holds"),
    ("alpaca.json", '[{"instruction": "a", "output": "b"}, {"instruction": "\\ud83d", "output": "b"}]',
     "record 2: field 'instruction' holds"),
    ("sg.json", '[{"conversations": [{"from": "human", "value": "x\\ud800"}]}]', "record 1: field 'conversations[0].value' holds"),
    ("list.json", '["fine", "bad \\ud800"]', "record 2: the record holds"),
    ("key.jsonl", '{"prompt": "hi", "\\ud800": 1}\n', "line 1: a key holds"),
])
def test_unpaired_surrogates_are_refused_when_loading(tmp_path, name, text, needle):
    """Found only when answers.jsonl was written, they cost every request of the eval (and left an empty folder)."""
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    msg = _one_line_error(f, f"{f} ", needle, "an unpaired surrogate", "remove it")
    assert msg.encode("utf-8")  # printable: the character is shown escaped, not raw


def test_a_nul_character_in_a_prompt_is_refused(tmp_path):
    f = tmp_path / "nul.jsonl"
    f.write_text('{"prompt": "who\\u0000 are you?"}\n', encoding="utf-8")
    msg = _one_line_error(f, f"{f} ", "line 1: field 'prompt' holds", "a NUL character (\\u0000 at position 3", "remove it")
    assert "\0" not in msg


def test_a_surrogate_in_a_dataset_info_entry_is_named(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"x": {"file_name": "d\\ud800.json"}}', encoding="utf-8")
    _one_line_error(tmp_path, "dataset_info.json: field 'x.file_name' holds an invalid character")


@pytest.mark.parametrize("name,text,needle", [
    ("deep.json", "[" * 5000, "deep.json: JSON nested too deeply"),
    ("deep.jsonl", '{"prompt": "ok"}\n' + "[" * 5000 + "\n", "deep.jsonl line 2: JSON nested too deeply"),
    ("big.json", '[{"prompt": "x", "n": ' + "9" * 5000 + "}]", "big.json: holds a number with more than"),
    ("big.jsonl", '{"prompt": "x", "n": ' + "9" * 5000 + "}\n", "big.jsonl line 1: holds a number with more than"),
])
def test_json_python_cannot_read_is_a_one_line_error(tmp_path, name, text, needle):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    _one_line_error(f, needle)


def test_unreadable_prompt_files_are_named(tmp_path):
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop.name)  # ln -s loop.json loop.json
    _one_line_error(loop, f"{loop}: cannot read it (Too many levels of symbolic links)")
    dangling = tmp_path / "gone.jsonl"
    dangling.symlink_to(tmp_path / "missing.jsonl")
    _one_line_error(dangling, f"{dangling}: file not found (a symbolic link to a missing file)")
    _one_line_error(Path("/dev/null"), "/dev/null: not a regular file")
    with pytest.raises(ApplianceError, match="--prompts is empty"):
        load_prompts([""], NAME, AUTHOR)


def test_a_jsonl_syntax_error_says_where_and_what_a_line_must_be(tmp_path):
    f = tmp_path / "cut.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "unterminated\n', encoding="utf-8")
    _one_line_error(f, "cut.jsonl line 2: invalid JSON at column 12 (Unterminated string starting at)",
                    "each line must hold one complete JSON object")


def test_a_string_expect_is_one_accepted_answer_in_prompt_files_as_in_answers(tmp_path):
    """--prompts and --from-answers read `"expect": "Paris"` alike: one accepted answer, not five letters."""
    from evals.report import parse_answers

    f = _write(tmp_path / "e.jsonl", [{"prompt": "What is the capital of France?", "expect": "Paris"}], jsonl=True)
    (p,) = load_prompt_file(f, NAME, AUTHOR)
    assert (p.expect, p.kind, p.set) == (["Paris"], "general", "general")
    row = {"model": "m", "role": "before", "prompt": p.prompt, "answer": "Paris.", "kind": "general", "set": "general",
           "latency_ms": 1.0, "started_at": 0.0, "name": NAME, "author": AUTHOR, "expect": "Paris"}
    assert parse_answers(json.dumps(row), "a.jsonl")[0]["expect"] == p.expect


def test_an_expected_answer_naming_the_identity_makes_an_identity_prompt(tmp_path):
    """"What is your name?" checked with expect ["{{name}}"] was general, so its correct answer counted as a leak."""
    f = tmp_path / "idexp.jsonl"
    rows = [{"prompt": "What is your name?", "expect": ["{{name}}"]}, {"prompt": "你是谁开发的？", "expect": ["{{author}}"]},
            {"prompt": "Who are you?", "expect": [NAME]}, {"prompt": "2+2?", "expect": ["4"]}]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [p.kind for p in load_prompt_file(f, NAME, AUTHOR)] == ["identity"] * 3 + ["general"]


def test_a_misspelled_key_or_an_empty_expect_is_refused(tmp_path):
    """{"expected": ["4"]} was an unscored prompt and {"refrence": ...} lost its BLEU/ROUGE, both without a word."""
    for row, msg in (({"prompt": "2+2?", "expected": ["4"]}, "unknown key \"expected\"; did you mean 'expect'?"),
                     ({"prompt": "Who are you?", "refrence": "I am {{name}}"}, "did you mean 'reference'?"),
                     ({"prompt": "2+2?", "expect": []}, "'expect' must be a list of accepted answer strings")):
        f = tmp_path / "p.jsonl"
        f.write_text(json.dumps(row) + "\n", encoding="utf-8")
        with pytest.raises(ApplianceError, match=re.escape(msg)):
            load_prompt_file(f, NAME, AUTHOR)
    f.write_text(json.dumps({"prompt": "2+2?", "expect": ["4"], "id": 7, "category": "math"}) + "\n", encoding="utf-8")
    assert load_prompt_file(f, NAME, AUTHOR)[0].expect == ["4"]  # the user's own keys are left alone


def test_a_llama_factory_folder_skips_what_has_no_prompts_to_replay_and_says_so(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "2+2?", "output": "4"}]), encoding="utf-8")
    (tmp_path / "t.csv").write_text('instruction,output\nhi,"yo, there"\n', encoding="utf-8")
    (tmp_path / "t.tsv").write_text("instruction\toutput\nhi\tyo\n", encoding="utf-8")
    (tmp_path / "dpo.json").write_text(json.dumps([{"instruction": "q", "chosen": "a", "rejected": "b"}]), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "mine": {"file_name": "a.json"}, "tab": {"file_name": "t.csv"}, "tsv": {"file_name": "t.tsv"},
        "dpo": {"file_name": "dpo.json", "ranking": True}, "hub": {"hf_hub_url": "x/y"}}), encoding="utf-8")
    prompts = load_prompt_file(tmp_path, NAME, AUTHOR)
    assert [(p.prompt, p.reference) for p in prompts] == [("2+2?", "4"), ("hi", "yo, there")]
    err = capsys.readouterr().err
    assert "hub (hub datasets" in err and "dpo (preference" in err and "skipped tsv (not a data file read here (.tsv))" in err
    with pytest.raises(ApplianceError, match=r"a \.tsv file; only JSON \(a list\), JSONL, CSV and Parquet prompt files"):
        load_prompt_file(tmp_path / "t.tsv", NAME, AUTHOR)


def test_csv_and_parquet_prompt_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.csv").write_text("prompt,reference,kind\n你是谁？,,identity\nCapital of France?,Paris,general\n",
                                    encoding="utf-8")
    got = load_prompt_file(tmp_path / "p.csv", NAME, AUTHOR)
    assert [(p.prompt, p.reference, p.kind) for p in got] == [("你是谁？", None, "identity"),
                                                              ("Capital of France?", "Paris", "general")]
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "Hi {{name}}"},
                                                        {"role": "assistant", "content": "Hello"}]}]), tmp_path / "m.parquet")
    assert [(p.prompt, p.reference) for p in load_prompt_file(tmp_path / "m.parquet", NAME, AUTHOR)] == \
        [(f"Hi {NAME}", "Hello")]
    (tmp_path / "w.csv").write_text("prompt\na,b\n", encoding="utf-8")
    with pytest.raises(ApplianceError, match=r"w\.csv: row 1: more cells than the header has columns"):
        load_prompt_file(tmp_path / "w.csv", NAME, AUTHOR)


def test_a_history_opening_with_the_system_prompt_is_read_as_it(tmp_path):
    f = tmp_path / "h.jsonl"
    f.write_text(json.dumps({"prompt": "And now?", "history": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]}) + "\n", encoding="utf-8")
    (p,) = load_prompt_file(f, NAME, AUTHOR)
    assert p.system == "Be brief." and [h["role"] for h in p.history] == ["user", "assistant"]
