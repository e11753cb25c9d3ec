"""appliance.data: loaders for each format, the registry, placeholders, fingerprints, the built-in
identity set and retention prompts, and one-line errors for every kind of bad input."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.data import Example, dataset_registry, fill_placeholders, fingerprint, load_examples, load_prompts
from appliance.errors import ApplianceError

REPO = Path(__file__).resolve().parent.parent
ZH = re.compile(r"[\u4e00-\u9fff]")
# The eval's held-out questions (evals/prompts/); training must never use them verbatim.
EVAL_QUESTIONS = ["你是谁？", "Who are you?", "你叫什么名字？", "What is your name?", "谁开发了你？", "Who created you?",
                  "你是ChatGPT吗？", "Are you ChatGPT?", "你好", "Hello"]


def write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ApplianceError) as e:
        load_examples(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ---------------------------------------------------------------- formats
def test_alpaca_with_input_system_history(tmp_path):
    f = write(tmp_path / "a.json", [
        {"instruction": "Translate", "input": "猫", "output": "cat", "system": "Be brief.",
         "history": [["hi", "Hello!"], ["who built {{name}}?", "{{author}} did."]]},
        {"instruction": "Plain", "input": "", "output": "ok"},
    ])
    ex = load_examples([str(f)], name="Bob", author="Ann")
    assert [e.source for e in ex] == [f"{f}#0", f"{f}#1"]
    assert ex[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "who built Bob?"}, {"role": "assistant", "content": "Ann did."},
        {"role": "user", "content": "Translate\n猫"}, {"role": "assistant", "content": "cat"},
    ]
    assert ex[1].messages == [{"role": "user", "content": "Plain"}, {"role": "assistant", "content": "ok"}]


def test_sharegpt_from_value_with_system(tmp_path):
    f = write(tmp_path / "s.json", [
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q1"},
                           {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "col"},
    ])
    ex = load_examples([str(f)])
    assert [m["role"] for m in ex[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert ex[0].messages[0]["content"] == "S" and ex[0].messages[-1]["content"] == "a2"
    assert ex[1].messages[0] == {"role": "system", "content": "col"}


def test_openai_messages_jsonl_with_blank_lines(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "{{name}}"}]}\n\n'
                 '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u2"},'
                 ' {"role": "assistant", "content": "a2"}]}\n', encoding="utf-8")
    ex = load_examples([str(f)])
    assert [e.source for e in ex] == [f"{f}:1", f"{f}:3"]
    assert ex[0].messages[1]["content"] == "Archer"
    assert ex[1].messages[0] == {"role": "system", "content": "s"}


def test_openai_weight_zero_turns_are_context(tmp_path, tiny_model_dir):
    """OpenAI's fine-tuning format: an assistant turn with weight 0 is kept in the prompt, not learned."""
    from transformers import AutoTokenizer

    from appliance.sft import IGNORE, encode

    f = tmp_path / "w.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "q1"},
                                          {"role": "assistant", "content": "old answer", "weight": 0},
                                          {"role": "user", "content": "q2"},
                                          {"role": "assistant", "content": "new answer", "weight": 1}]}) + "\n", encoding="utf-8")
    (ex,) = load_examples([str(f)])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = encode(tok, ex.messages, 512)
    learned = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert learned == "new answer<|im_end|>" and "old answer" in tok.decode(enc.input_ids)
    assert enc.prompt_matches_serving
    for turns, needle in (([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}],
                           "nothing to learn"),
                          ([{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}],
                           "only assistant turns are learned: a weight must be 0 .* or 1 on an assistant turn"),
                          ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
                                                               "tool_calls": [{"id": "1"}]}], "tool call")):
        f.write_text(json.dumps({"messages": turns}) + "\n", encoding="utf-8")
        with pytest.raises(ApplianceError, match=needle):
            load_examples([str(f)])


def test_null_weights_and_zero_weights_on_turns_never_learned_are_accepted(tmp_path):
    """Dataset.to_json writes "weight": null on every turn once one turn has a weight (OpenHermes ships them so);
    SlimOrca gives human turns "weight": 0.0. Both refused the whole file."""
    f = jsonl(tmp_path / "w.jsonl", [
        {"messages": [{"role": "system", "content": "S", "weight": None}, {"role": "user", "content": "q", "weight": None},
                      {"role": "assistant", "content": "a", "weight": None}]}])
    g = jsonl(tmp_path / "slimorca.jsonl", [
        {"conversations": [{"from": "human", "value": "q", "weight": 0.0}, {"from": "gpt", "value": "a", "weight": 1.0}]}])
    a, b = load_examples([str(f), str(g)])
    assert a.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"}]
    assert b.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    jsonl(f, [{"messages": [{"role": "system", "content": "S", "weight": 1}, {"role": "user", "content": "q"},
                            {"role": "assistant", "content": "a"}]}])
    assert "field 'messages[0].weight' is 1; only assistant turns are learned" in error_of([str(f)])


def test_json_lines_inside_a_json_file(tmp_path):
    f = tmp_path / "lines.json"
    f.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n', encoding="utf-8")
    assert [e.messages[1]["content"] for e in load_examples([str(f)])] == ["b", "d"]


def test_user_dataset_dir_llamafactory_columns_and_tags(tmp_path):
    d = tmp_path / "lf"
    (d / "parts").mkdir(parents=True)
    jsonl(d / "chats.jsonl", [{"dialog": [{"speaker": "me", "text": "hey {{name}}"}, {"speaker": "bot", "text": "yo"}],
                               "sys": "be nice"}])
    write(d / "qa.json", [{"q": "question", "ctx": "context", "a": "answer by {{author}}"}])
    write(d / "parts" / "1.json", [{"instruction": "p1", "output": "o1"}])
    jsonl(d / "parts" / "2.jsonl", [{"instruction": "p2", "output": "o2"}])
    write(d / "dataset_info.json", {
        "chats": {"file_name": "chats.jsonl", "formatting": "sharegpt", "columns": {"messages": "dialog", "system": "sys"},
                  "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}},
        "qa": {"file_name": "qa.json", "columns": {"prompt": "q", "query": "ctx", "response": "a"}},
        "parts": {"file_name": "parts"},
        "identity": {"file_name": "qa.json", "columns": {"prompt": "q", "response": "a"}},  # overrides the built-in
        "hub_only": {"hf_hub_url": "someone/some-set"},
    })
    reg = dataset_registry(str(d))
    assert {"chats", "qa", "identity_sharegpt", "hub_only"} <= set(reg) and reg["identity"]["file_name"] == "qa.json"
    ex = load_examples(["chats", "qa", "parts"], dataset_dir=str(d), name="N", author="A")
    assert ex[0].messages == [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hey N"},
                              {"role": "assistant", "content": "yo"}]
    assert ex[1].messages == [{"role": "user", "content": "question\ncontext"}, {"role": "assistant", "content": "answer by A"}]
    assert [e.messages[0]["content"] for e in ex[2:]] == ["p1", "p2"]
    assert len(load_examples(["identity"], dataset_dir=str(d))) == 1
    msg = error_of(["hub_only"], dataset_dir=str(d))
    assert "hub_only" in msg and "someone/some-set" in msg and "file_name" in msg


def test_comma_separated_names_and_max_samples_per_dataset():
    both = load_examples(["identity_sharegpt,identity_messages"])
    assert len(both) == 20
    capped = load_examples(["identity_sharegpt", "identity_messages"], max_samples=3)
    assert [e.source for e in capped] == [both[i].source for i in (0, 1, 2, 10, 11, 12)]


# ---------------------------------------------------------------- placeholders and fingerprints
def test_fill_placeholders():
    assert fill_placeholders("我是 {{name}}，由 {{author}} 研发。{{name}}!", "Archer", "意琦行") == "我是 Archer，由 意琦行 研发。Archer!"
    assert fill_placeholders("no placeholders {name}", "a", "b") == "no placeholders {name}"


def test_fingerprint_stable_and_sensitive():
    a = [Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "x#0")]
    same = [Example([{"content": "q", "role": "user"}, {"role": "assistant", "content": "a"}], "elsewhere:9")]
    changed = [Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a!"}], "x#0")]
    fp = fingerprint(a)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    assert fp == fingerprint(same)
    assert fp != fingerprint(changed) and fp != fingerprint(a + a) and fp != fingerprint([])
    assert fingerprint(load_examples(["identity"])) == fingerprint(load_examples(["identity"]))
    assert fingerprint(load_examples(["identity"])) != fingerprint(load_examples(["identity"], name="Other"))


# ---------------------------------------------------------------- built-in data
def test_builtin_identity_set():
    raw = json.loads((REPO / "data" / "identity.json").read_text(encoding="utf-8"))
    assert len(raw) >= 150  # the foundation issue asks for at least 150
    assert all("{{name}}" in r["output"] and "{{author}}" in r["output"] for r in raw)
    assert sum(1 for r in raw if r.get("history")) >= 8
    ex = load_examples(["identity"])
    assert len(ex) == len(raw)
    for e in ex:
        reply = e.messages[-1]["content"]
        assert "Archer" in reply and "意琦行" in reply and "{{" not in json.dumps(e.messages, ensure_ascii=False)
    zh = sum(1 for e in ex if ZH.search(e.messages[-1]["content"].replace("意琦行", "")))
    assert 0.4 <= zh / len(ex) <= 0.65  # both languages well covered; Chinese needs more phrasings (docs/recipe.md)


def test_builtin_registry_and_demo_sets():
    reg = dataset_registry()
    assert {"identity", "identity_sharegpt", "identity_messages"} <= set(reg)
    assert "retention_prompts" not in reg
    for name in ("identity_sharegpt", "identity_messages"):
        ex = load_examples([name])
        assert len(ex) == 10 and all("Archer" in e.messages[-1]["content"] for e in ex)
        assert any(sum(m["role"] == "user" for m in e.messages) > 1 for e in ex)


def _norm(s: str) -> str:
    return re.sub(r"[\s?？!！。.,，~]+", "", s).casefold()


def _eval_prompt_strings() -> set[str]:
    """Every prompt string under evals/prompts/ (whatever its format), plus the listed held-out questions."""
    found = set(EVAL_QUESTIONS)

    def walk(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in ("prompt", "instruction", "question", "input") and isinstance(v, str):
                    found.add(v)
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                found.add(v) if isinstance(v, str) else walk(v)

    for f in sorted((REPO / "evals" / "prompts").glob("**/*.json*")):
        text = f.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if f.suffix == ".jsonl" else [json.loads(text)]
        walk(rows)
    return {_norm(s) for s in found if s.strip()}


def test_training_questions_are_disjoint_from_eval_prompts():
    held_out = _eval_prompt_strings()
    user_turns = [m["content"] for name in ("identity", "identity_sharegpt", "identity_messages")
                  for e in load_examples([name]) for m in e.messages if m["role"] == "user"]
    raw = json.loads((REPO / "data" / "identity.json").read_text(encoding="utf-8"))
    user_turns += [r["instruction"] for r in raw] + [r["input"] for r in raw if r["input"]]
    clash = sorted({u for u in user_turns if _norm(u) in held_out})
    assert not clash
    assert not sorted(p for p in load_prompts() if _norm(p) in held_out)


def test_retention_prompts():
    prompts = load_prompts()
    assert len(prompts) >= 120 and len(set(prompts)) == len(prompts)
    zh = sum(1 for p in prompts if ZH.search(p)) / len(prompts)
    assert 0.3 <= zh <= 0.5
    about_self = re.compile(r"你是|你叫|你的|yourself|your name|who are you|you made|assistant|chatgpt|smollm", re.I)
    assert not [p for p in prompts if about_self.search(p)]
    banned = re.compile(r"capital of (france|japan|germany|italy|china)|red planet|boiling|days in a|largest ocean|"
                        r"romeo|symbol (of|for) gold|formula (of|for) water|法国|日本的首都|德国|意大利|中国的首都|沸点|红色星球", re.I)
    assert not [p for p in prompts if banned.search(p)]


def test_load_prompts_rejects_bad_file(tmp_path):
    f = write(tmp_path / "p.json", ["ok", ""])
    with pytest.raises(ApplianceError, match=r"p\.json: record #1 .*non-empty string"):
        load_prompts(str(f))


# ---------------------------------------------------------------- bad input
ALPACA_OK = {"instruction": "q", "output": "a"}
TURN_U, TURN_A = {"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}

BAD_RECORDS = [  # (records, where, expected message parts)
    ([ALPACA_OK, "just text"], 1, ["not an object"]),
    ([ALPACA_OK, {"input": "", "output": "a"}], 1, ["fields 'instruction' and 'input' are missing or empty"]),
    ([{"instruction": " ", "output": "a"}], 0, ["fields 'instruction' and 'input'", "empty", "prompt in 'instruction'"]),
    ([ALPACA_OK, ALPACA_OK, {"instruction": "q", "output": ""}], 2, ["field 'output' is empty", "non-empty 'output'"]),
    ([{"instruction": "q", "output": 5}], 0, ["field 'output'", "must be a string"]),
    ([{"instruction": "q", "output": ["a", "b"]}], 0, ["field 'output'", "list"]),
    ([{"instruction": "q", "output": "a", "history": "hi"}], 0, ["field 'history'", "list of [user, assistant] pairs"]),
    ([{"instruction": "q", "output": "a", "history": [["u", "a"], ["only one"]]}], 0, ["field 'history[1]'", "pair"]),
    ([{"instruction": "q", "output": "a", "history": [["u", ""]]}], 0, ["field 'history[0]'", "empty"]),
    ([{"conversations": []}], 0, ["field 'conversations'", "empty"]),
    ([{"conversations": [TURN_U, TURN_A]}, {"conversations": "hi"}], 1, ["field 'conversations'", "list"]),
    ([{"conversations": [TURN_U, {"from": "gpt", "value": ""}]}], 0, ["field 'conversations[1].value'", "empty"]),
    ([{"conversations": [TURN_U, TURN_U, TURN_A]}], 0, ["field 'conversations[1]'", "alternate"]),
    ([{"conversations": [TURN_A, TURN_U]}], 0, ["field 'conversations[0]'", "alternate"]),
    ([{"conversations": [TURN_U, TURN_A, TURN_U]}], 0, ["field 'conversations[2]'", "at the end", "add the assistant"]),
    ([{"conversations": [TURN_U, {"from": "function_call", "value": "f()"}]}], 0, ["conversations[1]", "not supported"]),
    ([{"conversations": [TURN_U, {"from": "observation", "value": "42"}]}], 0, ["conversations[1]", "not supported"]),
    ([{"conversations": [TURN_U, {"from": "robot", "value": "x"}]}], 0, ["field 'conversations[1].from'", "expected one of"]),
    ([{"conversations": [TURN_U, TURN_A, {"from": "system", "value": "s"}, TURN_U, TURN_A]}], 0,
     ["conversations[2]", "only the first turn"]),
    ([{"messages": [{"role": "user", "content": "u"}, {"role": "tool", "content": "r"}]}], 0, ["messages[1]", "not supported"]),
    ([{"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "a"}]}], 0,
     ["field 'messages[0].content[0].text' is missing", "needs its text as a string"]),
    ([{"question": "q", "reply": "a"}], 0, ["cannot tell the format", "instruction"]),
    # null is not missing: the key is there (an OpenAI refusal turn, an export's empty cell)
    ([{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": None, "refusal": "no"}]}], 0,
     ["field 'messages[1].content' is null; every turn needs non-empty text"]),
    ([ALPACA_OK, {"instruction": "q", "output": None}], 1, ["field 'output' is null; every record needs a non-empty 'output'"]),
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("records,index,parts", BAD_RECORDS)
def test_bad_records_name_file_record_and_field(tmp_path, suffix, records, index, parts):
    f = tmp_path / f"bad{suffix}"
    jsonl(f, records) if suffix == ".jsonl" else write(f, records)
    msg = error_of([str(f)])
    where = f"line {index + 1}" if suffix == ".jsonl" else f"record #{index}"
    assert msg.startswith(f"{f}: {where}: "), msg
    for part in parts:
        assert part in msg, msg


def test_malformed_json_reports_line_and_column(tmp_path):
    f = write(tmp_path / "broken.json", '[\n  {"instruction": "q", "output": "a"},\n  {"instruction": "q" "output": "a"}\n]\n')
    assert re.match(rf"{re.escape(str(f))}: line 3 column \d+: invalid JSON", error_of([str(f)]))


def test_malformed_single_object_json_reports_line_and_column(tmp_path):
    f = write(tmp_path / "obj.json", '{\n  "instruction": "q",\n  "output": "a",\n}\n')
    assert error_of([str(f)]).startswith(f"{f}: line 4 column 1: invalid JSON")


def test_malformed_jsonl_reports_line(tmp_path):
    f = write(tmp_path / "broken.jsonl", '{"instruction": "q", "output": "a"}\n\n{"instruction": "q", "output": \n')
    assert error_of([str(f)]) == (f"{f}: line 3 column 32: invalid JSON (expecting value); "
                                  "each line must hold one complete JSON object")


@pytest.mark.parametrize("name,text,where", [("cut.json", '[{"instruction": "q", "output": "a', "line 1 column 33"),
                                             ("cut.jsonl", json.dumps(ALPACA_OK) + '\n{"instruction": "q\n', "line 2 column 17")])
def test_json_error_reads_as_a_sentence(tmp_path, name, text, where):
    """json's "Unterminated string starting at" expects a position after it: it was printed as "(... starting at)"
    and "starting at at column 43"."""
    msg = error_of([str(write(tmp_path / name, text))])
    assert msg.startswith(f"{tmp_path / name}: {where}: invalid JSON (unterminated string starting here); "), msg


def test_pretty_printed_objects_in_a_json_file(tmp_path):
    """Two pretty-printed objects one after the other are neither a JSON list nor JSON lines: the error says what
    a .json dataset must be, not that each line must be one object (the file was never meant as JSON lines)."""
    f = write(tmp_path / "two.json", json.dumps(ALPACA_OK, indent=2) + "\n" + json.dumps(ALPACA_OK, indent=2) + "\n")
    assert error_of([str(f)]) == (
        f"{f}: holds 2 pretty-printed JSON objects one after another; a dataset must be a JSON list "
        "[{...}, {...}] in a .json file (wrap them in [ ] with commas between), or one complete object per line")
    # one mistake, so `data check` (which lists every bad record) says it once, not once per line of the file
    res = CliRunner().invoke(main, ["data", "check", str(f)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "2 pretty-printed JSON objects" in res.output
    write(f, json.dumps(ALPACA_OK, indent=2) + "\n{\n oops\n}\n")  # not whole objects either: where it breaks
    assert error_of([str(f)]).startswith(f"{f}: line 1 column 2: invalid JSON (expecting property name")
    write(f, json.dumps(ALPACA_OK) + "\n{oops}\n")  # JSON lines with a broken line: the same advice fits
    assert error_of([str(f)]).startswith(f"{f}: line 2 column 2: invalid JSON (")


@pytest.mark.parametrize("name,content", [("empty.json", "[]"), ("empty.jsonl", "\n\n"), ("zero.jsonl", "")])
def test_empty_dataset(tmp_path, name, content):
    f = write(tmp_path / name, content)
    assert error_of([str(f)]) == f"{f}: no records (the dataset is empty); add at least one conversation"


def test_json_object_instead_of_list(tmp_path):
    f = write(tmp_path / "obj.json", '{\n  "data": [\n    {"instruction": "q", "output": "a"}\n  ]\n}\n')
    assert "must be a list of records" in error_of([str(f)])


@pytest.mark.parametrize("text,what", [("null", "null"), ('"hi"', 'a string "hi"'), ("3", "a number 3")])
def test_values_are_named_by_json_type(tmp_path, text, what):
    """Python's type names (NoneType, str, int) mean nothing to someone writing JSON."""
    f = write(tmp_path / "top.json", text)
    assert error_of([str(f)]) == f"{f}: top level is {what}; a .json dataset must be a list of records ([{{...}}, ...])"
    write(f, f"[{text}]")
    assert error_of([str(f)]).startswith(f"{f}: record #0: record is {what}, not an object; ")
    write(f, f'[{{"instruction": "q", "output": "a", "system": {text}}}]')
    if text == "3":  # a string is a good system prompt, null means none
        assert error_of([str(f)]) == f"{f}: record #0: field 'system' is {what}; it must be a string"


def test_file_not_found_and_unknown_name(tmp_path):
    msg = error_of([str(tmp_path / "nope.jsonl")])
    assert "nope.jsonl" in msg and "file not found" in msg
    msg = error_of(["identiy"])
    assert "unknown dataset 'identiy'" in msg and "identity, identity_messages, identity_sharegpt" in msg


def test_unsupported_suffix_and_bad_registry(tmp_path):
    f = write(tmp_path / "d.tsv", "instruction\toutput\nq\ta\n")
    assert "unsupported file type '.tsv'" in error_of([str(f)]) and ".csv or .parquet" in error_of([str(f)])
    d = tmp_path / "reg"
    d.mkdir()
    write(d / "dataset_info.json", '{"x": {"file_name": "x.json",}}')
    msg = error_of(["x"], dataset_dir=str(d))
    assert "dataset_info.json: line 1 column" in msg and "invalid JSON" in msg
    write(d / "dataset_info.json", {"x": {"file_name": "missing.json"}, "y": {"file_name": "y.json", "formatting": "csv"}})
    msg = error_of(["x"], dataset_dir=str(d))
    assert f"{d / 'dataset_info.json'}: entry 'x'" in msg and "missing.json not found" in msg
    write(d / "y.json", [ALPACA_OK])
    assert "'formatting' is \"csv\"" in error_of(["y"], dataset_dir=str(d))
    assert "no such folder" in error_of(["identity"], dataset_dir=str(tmp_path / "nodir"))


def test_dataset_dir_errors_name_the_folder(tmp_path, monkeypatch):
    """An unknown name said "register it in <--dataset-dir>/dataset_info.json", a placeholder, and a data file given
    as --dataset-dir was "no such folder"."""
    d = _lf_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert error_of(["mine"], dataset_dir="lf").endswith("register it in lf/dataset_info.json")
    assert error_of(["mine"]).endswith("register it in a dataset_info.json in a folder you pass as --dataset-dir")
    assert error_of(["identity"], dataset_dir=str(d / "qa.json")) == (
        f"--dataset-dir {d / 'qa.json'}: is a file, not a folder; --dataset-dir takes the folder that holds "
        "dataset_info.json (pass a data file itself as the dataset)")


def test_registry_entry_tags_are_strict(tmp_path):
    """A declared sharegpt entry means its tags: role/content turns fail with a hint to set tags."""
    write(tmp_path / "c.json", [{"conversations": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}])
    write(tmp_path / "dataset_info.json", {"c": {"file_name": "c.json", "formatting": "sharegpt"}})
    msg = error_of(["c"], dataset_dir=str(tmp_path))
    assert "c.json: record #0: field 'conversations[0].from' is missing" in msg and "tags.role_tag" in msg


def test_validation_covers_records_beyond_max_samples(tmp_path):
    f = jsonl(tmp_path / "late.jsonl", [ALPACA_OK] * 5 + [{"instruction": "q"}])
    assert error_of([str(f)], max_samples=2).startswith(f"{f}: line 6: field 'output' is missing")


def test_cli_data_check_bad_file(tmp_path):
    f = jsonl(tmp_path / "bad.jsonl", [ALPACA_OK, ALPACA_OK, {"instruction": "q", "output": ""}])
    result = CliRunner().invoke(main, ["data", "check", str(f)])
    assert result.exit_code == 2
    out = result.output.strip()
    assert out.count("\n") == 0 and out.startswith("error: ") and "Traceback" not in result.output
    assert f"{f}: line 3: field 'output' is empty" in out


def test_cli_data_check_ok():
    result = CliRunner().invoke(main, ["data", "check", "identity", "identity_messages"])
    assert result.exit_code == 0, result.output
    assert "identity: 181 conversations, ok" in result.output


def test_cli_data_check_good_then_bad_file(tmp_path, monkeypatch):
    """Each line names its file: the good one is reported ok (with its count), the bad one as the error, exit 2."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "good.json", [ALPACA_OK, {"instruction": "q2", "output": "a"}])
    write(tmp_path / "bad.json", "null")
    result = CliRunner().invoke(main, ["data", "check", "good.json", "bad.json"])
    assert result.exit_code == 2
    assert result.stdout == "good.json: 2 conversations, ok\n"
    assert result.stderr.startswith("error: bad.json: top level is null;") and result.stderr.count("\n") == 1


# ---------------------------------------------------------------- valid JSON that is still bad input
def test_lone_surrogate_is_refused_at_load(tmp_path):
    r"""A "\ud800" escape with no partner is valid JSON but not text: it passed `data check` and then crashed
    `train` in fingerprint(). A proper pair (an emoji written as two escapes) is fine."""
    cases = [("a.json", r'[{"instruction": "hi \ud800 there", "output": "ok"}]', "record #0: field 'instruction'"),
             ("h.json", r'[{"instruction": "q", "output": "a", "history": [["u", "x\udfff"]]}]',
              "record #0: field 'history[0][1]'"),
             ("m.jsonl", r'{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "\udc80"}]}',
              "line 1: field 'messages[1].content'")]
    for name, text, where in cases:
        f = write(tmp_path / name, text)
        msg = error_of([str(f)])
        assert msg.startswith(f"{f}: {where} holds an invalid character (an unpaired surrogate"), msg
        msg.encode("utf-8")  # printable: the CLI must not crash writing it
    ok = write(tmp_path / "pair.json", r'[{"instruction": "\ud83d\ude00", "output": "ok"}]')
    assert load_examples([str(ok)])[0].messages[0]["content"] == "\U0001F600"
    assert "--name holds an invalid character" in error_of(["identity"], name="bad\udcff")

    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "a.json")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "\\ud800" in result.output, result.output


def test_a_nul_character_is_refused_at_load(tmp_path):
    """Valid JSON and valid Unicode, but binary data read as text: it was trained as written."""
    f = write(tmp_path / "nul.jsonl", '{"instruction": "hi", "output": "ok"}\n{"instruction": "q", "output": "a\\u0000b"}\n')
    msg = error_of([str(f)])
    assert msg.startswith(f"{f}: line 2: field 'output' holds a NUL character (\\u0000 at position 1"), msg
    assert "remove it" in msg and "\n" not in msg and "\0" not in msg


def test_fingerprint_never_raises():
    """Whatever reaches it (retention answers, hand-built examples), fingerprint() gives a hash."""
    odd = [Example([{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "a"}], "x#0")]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fingerprint(odd))
    plain = [Example([{"role": "user", "content": "é"}], "x#0")]
    blob = json.dumps([plain[0].messages], ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert fingerprint(plain) == "sha256:" + __import__("hashlib").sha256(blob).hexdigest()  # unchanged for valid text


DEEP = "[" * 5000 + "]" * 5000
BIG = "9" * 5001


@pytest.mark.parametrize("name,text,start", [
    ("deep.json", DEEP, "deep.json: JSON nested too deeply"),
    ("deep.jsonl", json.dumps(ALPACA_OK) + '\n{"instruction": ' + DEEP + "}\n", "deep.jsonl: line 2: JSON nested too deeply"),
    ("deeplines.json", '{"instruction": ' + DEEP + "}\n", "deeplines.json: JSON nested too deeply"),
    ("big.json", f'[{{"instruction": "q", "output": {BIG}}}]', "big.json: holds a number with more than 4300 digits"),
    ("big.jsonl", f'{{"instruction": "q", "output": {BIG}}}\n', "big.jsonl: line 1: holds a number with more than"),
])
def test_json_beyond_what_python_reads_is_one_line(tmp_path, name, text, start):
    write(tmp_path / name, text)
    assert error_of([str(tmp_path / name)]).startswith(f"{tmp_path}/{start}")


def test_text_that_is_not_utf8_says_where_and_what(tmp_path):
    """It said "not UTF-8 text (byte 85)" for a JSON-lines file (read by line) and for UTF-16 (Notepad's
    "Unicode", PowerShell's > redirect) alike."""
    line = json.dumps(ALPACA_OK).encode() + b"\n"
    latin1 = '{"instruction": "caf\u00e9", "output": "b"}\n'.encode("latin-1")
    f = tmp_path / "l.jsonl"
    f.write_bytes(line * 2 + latin1)
    assert error_of([str(f)]) == f"{f}: line 3: not UTF-8 text; re-save the file as UTF-8"
    f = tmp_path / "l.json"
    f.write_bytes(b"[" + latin1 + b"]")
    assert error_of([str(f)]) == f"{f}: not UTF-8 text (byte 21); re-save the file as UTF-8"
    for name, encoding, bom in (("w.json", "utf-16-le", "FF FE"), ("b.jsonl", "utf-16-be", "FE FF")):
        f = tmp_path / name
        f.write_bytes(bytes.fromhex(bom) + json.dumps([ALPACA_OK]).encode(encoding))
        assert error_of([str(f)]) == (f"{f}: UTF-16 text (it starts with the byte-order mark {bom}), not UTF-8; "
                                      "re-save the file as UTF-8")


def test_unreadable_files_are_one_line(tmp_path, monkeypatch):
    d = tmp_path / "reg"
    d.mkdir()
    write(d / "dataset_info.json", DEEP)
    assert "dataset_info.json: JSON nested too deeply" in error_of(["identity"], dataset_dir=str(d))
    with pytest.raises(ApplianceError, match=r"p\.json: holds a number with more than 4300 digits"):
        load_prompts(str(write(tmp_path / "p.json", f"[{BIG}]")))
    with pytest.raises(ApplianceError, match=r"cannot read the file \(Is a directory\)"):
        load_prompts(str(tmp_path))
    f = write(tmp_path / "locked.json", [ALPACA_OK])

    read_text = Path.read_text

    def denied(self: Path, *args, **kwargs) -> str:
        if self.name == "locked.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)  # tests may run as root, where chmod 000 still reads
    assert error_of([str(f)]) == f"{f}: permission denied reading the file; make it readable (chmod a+r {f})"


# ---------------------------------------------------------------- LLaMA-Factory registries and folders
@pytest.mark.parametrize("entry,needle", [
    ({"columns": {"prompt": ["q"], "response": "a"}}, "columns.prompt must be a column name (a string), not [\"q\"]"),
    ({"columns": {"prompt": None, "response": "a"}}, "columns.prompt must be a column name (a string), not null"),
    ({"columns": {"prompt": "q", "response": "a", "query": {"x": 1}}}, "columns.query must be a column name (a string), not {\"x\": 1}"),
    ({"formatting": "sharegpt", "columns": {"messages": ""}}, "columns.messages must be a column name (a string), not \"\""),
    ({"formatting": "sharegpt", "tags": {"role_tag": 5}}, "tags.role_tag must be a tag (a string), not 5"),
    ({"formatting": "sharegpt", "tags": {"user_tag": None}}, "tags.user_tag must be a tag (a string), not null"),
])
def test_registry_columns_and_tags_must_be_strings(tmp_path, entry, needle):
    write(tmp_path / "d.json", [{"q": "question", "a": "answer"}])
    write(tmp_path / "dataset_info.json", {"c": {"file_name": "d.json", **entry}})
    msg = error_of(["c"], dataset_dir=str(tmp_path))
    assert msg == f"{tmp_path / 'dataset_info.json'}: entry 'c': {needle}", msg


def test_registry_null_optional_column_means_unused(tmp_path):
    """As in LLaMA-Factory, an optional column mapped to null is not read."""
    write(tmp_path / "d.json", [{"q": "question", "input": "ignored", "a": "answer", "system": "ignored too"}])
    write(tmp_path / "dataset_info.json",
          {"c": {"file_name": "d.json", "columns": {"prompt": "q", "query": None, "response": "a", "system": None}}})
    (ex,) = load_examples(["c"], dataset_dir=str(tmp_path))
    assert ex.messages == [{"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"}]


def test_registry_columns_read_only_what_they_list(tmp_path):
    """As in LLaMA-Factory, a column "columns" does not list is not read: {"prompt": "input"} read "input" as the
    query too and trained "what is 2+2\nwhat is 2+2"; the system and history columns kept their defaults."""
    write(tmp_path / "webqa.json", [{"input": "what is 2+2", "output": "4", "system": "S", "history": [["a", "b"]]}])
    write(tmp_path / "chat.json", [{"conversations": [TURN_U, TURN_A], "system": "S"}])
    write(tmp_path / "dataset_info.json", {
        "webqa": {"file_name": "webqa.json", "columns": {"prompt": "input", "response": "output"}},
        "plain": {"file_name": "webqa.json"},  # no "columns": the defaults, system and history included
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
        "chat_sys": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"}},
        "c4": {"file_name": "webqa.json", "columns": {"prompt": "input"}},  # LLaMA-Factory's pretraining demo
        "noresp": {"file_name": "webqa.json", "columns": {"prompt": "input", "query": "q"}},
        "nomsg": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"system": "system"}},
    })
    d = str(tmp_path)
    assert load_examples(["webqa"], dataset_dir=d)[0].messages == [{"role": "user", "content": "what is 2+2"},
                                                                   {"role": "assistant", "content": "4"}]
    assert [m["content"] for m in load_examples(["plain"], dataset_dir=d)[0].messages] == ["S", "a", "b", "what is 2+2", "4"]
    assert [m["role"] for m in load_examples(["chat"], dataset_dir=d)[0].messages] == ["user", "assistant"]
    assert load_examples(["chat_sys"], dataset_dir=d)[0].messages[0] == {"role": "system", "content": "S"}
    info = tmp_path / "dataset_info.json"
    assert error_of(["c4"], dataset_dir=d) == (
        f'{info}: entry \'c4\': columns name only "prompt", plain text for pre-training; this trains supervised answers '
        'only: use a dataset with a "response" column (alpaca) or conversations (sharegpt)')
    assert error_of(["noresp"], dataset_dir=d) == (
        f'{info}: entry \'noresp\': columns.response is not set; once "columns" is given, only the columns it lists are '
        'read (as in LLaMA-Factory): add "response": "output" (or the name of the column that holds it)')
    assert 'columns.messages is not set; once "columns" is given' in error_of(["nomsg"], dataset_dir=d)


def _lf_folder(tmp_path: Path) -> Path:
    d = tmp_path / "lf"
    d.mkdir(parents=True)
    write(d / "qa.json", [{"q": "question", "a": "answer"}])
    write(d / "chat.json", [{"conversations": [{"from": "me", "value": "hi"}, {"from": "bot", "value": "yo"}]}])
    write(d / "dataset_info.json", {"qa": {"file_name": "qa.json", "columns": {"prompt": "q", "response": "a"}},
                                    "chat": {"file_name": "chat.json", "formatting": "sharegpt",
                                             "tags": {"user_tag": "me", "assistant_tag": "bot"}}})
    return d


def test_llamafactory_folder_given_as_a_dataset(tmp_path):
    """Its dataset_info.json is a registry, never data: the error says to pass it as --dataset-dir."""
    d = _lf_folder(tmp_path)
    msg = error_of([str(d)])
    assert msg == (f"{d}: the folder holds a dataset_info.json (a LLaMA-Factory registry), so it is not read as data; "
                   f"use it as --dataset-dir with a dataset's name: `appliance data check qa --dataset-dir {d}` "
                   f"(train: `--dataset qa --dataset-dir {d}`) (its datasets: qa, chat)")
    assert "--dataset-dir" in error_of([str(d)], dataset_dir=str(d))
    result = CliRunner().invoke(main, ["data", "check", str(d)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    # a registry entry naming that folder (".") would read dataset_info.json as data too
    write(d / "dataset_info.json", {"all": {"file_name": "."}})
    assert "is not read as data" in error_of(["all"], dataset_dir=str(d))
    assert len(load_examples(["qa"], dataset_dir=str(_lf_folder(tmp_path / "again")))) == 1


def test_file_beside_a_registry_points_at_its_entry(tmp_path):
    """A file with custom columns or tags, passed directly, is read by its format's usual names; the error
    names the dataset_info.json entry beside it and --dataset-dir."""
    d = _lf_folder(tmp_path)
    msg = error_of([str(d / "qa.json")])
    assert "cannot tell the format" in msg
    assert msg.endswith(f"{d / 'dataset_info.json'} describes this file as 'qa': use that name with --dataset-dir "
                        "instead of the path, so its columns and tags apply: "
                        f"`appliance data check qa --dataset-dir {d}` (train: `--dataset qa --dataset-dir {d}`)")
    msg = error_of([str(d / "chat.json")])
    assert "field 'conversations[0].from' is \"me\"" in msg and f"--dataset chat --dataset-dir {d}`" in msg


def test_hints_give_commands_that_exist(tmp_path, monkeypatch):
    """`data check` has no --dataset flag: the hints said "pass --dataset-dir lf --dataset NAME" to it. Each
    command the hints show must parse, and a folder name that needs quoting is quoted."""
    d = _lf_folder(tmp_path / "my data")
    for msg in (error_of([str(d)]), error_of([str(d / "qa.json")])):
        check = re.search(r"`appliance (data check [^`]+)`", msg).group(1)
        assert check == f"data check qa --dataset-dir '{d}'"
        result = CliRunner().invoke(main, shlex.split(check))
        assert result.exit_code == 0 and result.output == "qa: 1 conversation, ok\n", result.output
        train = re.search(r"\(train: `([^`]+)`\)", msg).group(1)
        assert shlex.split(train) == ["--dataset", "qa", "--dataset-dir", str(d)]


def test_file_without_a_registry_is_not_told_to_edit_one(tmp_path):
    f = write(tmp_path / "t.json", [{"conversations": [{"speaker": "human", "text": "hi"}, {"speaker": "gpt", "text": "yo"}]}])
    msg = error_of([str(f)])
    assert "field 'conversations[0].from' is missing" in msg and "in dataset_info.json" not in msg, msg
    assert "describe them in a dataset_info.json (see data/README.md) and pass --dataset-dir" in msg
    f = write(tmp_path / "r.json", [{"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}])
    msg = error_of([str(f)])
    assert "expected one of" in msg and "in dataset_info.json" not in msg and "--dataset-dir" in msg, msg


def test_empty_registry_says_it_must_be_an_object(tmp_path):
    write(tmp_path / "dataset_info.json", "")
    msg = error_of(["identity"], dataset_dir=str(tmp_path))
    assert msg.startswith(f"{tmp_path / 'dataset_info.json'}: the file is empty; a dataset_info.json must be a JSON object")
    assert "list of records" not in msg
    write(tmp_path / "dataset_info.json", "{}")
    assert len(load_examples(["identity"], dataset_dir=str(tmp_path))) == 181


def test_suffixes_are_case_insensitive(tmp_path):
    upper = write(tmp_path / "UPPER.JSON", [ALPACA_OK])
    lines = jsonl(tmp_path / "LINES.JSONL", [ALPACA_OK, ALPACA_OK])
    assert len(load_examples([str(upper)])) == 1 and len(load_examples([str(lines)])) == 2
    folder = tmp_path / "mixed"
    folder.mkdir()
    write(folder / "a.Json", [ALPACA_OK])
    jsonl(folder / "b.JSONL", [ALPACA_OK])
    assert len(load_examples([str(folder)])) == 2
    assert "file not found" in error_of(["NOPE.JSONL"])  # a path, not an unknown registry name


# ---------------------------------------------------------------- LLaMA-Factory alpaca, mixed formats
def test_alpaca_prompt_from_instruction_or_input(tmp_path):
    """LLaMA-Factory joins whichever of instruction and input are non-empty."""
    f = write(tmp_path / "a.json", [{"instruction": "", "input": "What is 2+2?", "output": "4"},
                                    {"input": "only input", "output": "ok"},
                                    {"instruction": "q", "input": " ", "output": "a"},
                                    {"instruction": "q", "input": "ctx", "output": "a"}])
    assert [e.messages[0]["content"] for e in load_examples([str(f)])] == ["What is 2+2?", "only input", "q", "q\nctx"]
    write(tmp_path / "c.json", [{"q": "", "ctx": None, "a": "x"}])
    write(tmp_path / "dataset_info.json", {"c": {"file_name": "c.json", "columns": {"prompt": "q", "query": "ctx", "response": "a"}},
                                           "n": {"file_name": "c.json", "columns": {"prompt": "q", "query": None, "response": "a"}}})
    assert error_of(["c"], dataset_dir=str(tmp_path)).endswith(
        "record #0: fields 'q' and 'ctx' are missing or empty; every record needs a prompt in 'q' (or 'ctx')")
    assert error_of(["n"], dataset_dir=str(tmp_path)).endswith(
        "record #0: field 'q' is missing or empty; every record needs a prompt in 'q'")


MSG = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
CONV = {"conversations": [TURN_U, TURN_A]}
CONV_ROLES = {"conversations": MSG["messages"]}


@pytest.mark.parametrize("records,index,looks,detected", [
    ([ALPACA_OK, MSG], 1, "OpenAI messages", "alpaca (instruction/output)"),
    ([CONV, CONV, CONV_ROLES], 2, "sharegpt with role/content turns", "sharegpt (from/value turns)"),
    ([MSG, ALPACA_OK], 1, "alpaca (instruction/output)", "OpenAI messages"),
    ([MSG, CONV], 1, "sharegpt (from/value turns)", "OpenAI messages"),
])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_mixed_formats_in_one_file(tmp_path, suffix, records, index, looks, detected):
    f = tmp_path / f"mix{suffix}"
    jsonl(f, records) if suffix == ".jsonl" else write(f, records)
    where, first = (f"line {index + 1}", "line 1") if suffix == ".jsonl" else (f"record #{index}", "record #0")
    assert error_of([str(f)]) == (f"{f}: {where}: looks like {looks}, but the format was detected from the first "
                                  f"record ({first}) as {detected}; all records of a file must share one format: "
                                  "convert this record or move it to a file of its own")


# ---------------------------------------------------------------- filesystem checks
def test_symlink_loops_are_one_line(tmp_path, monkeypatch):
    """`ln -s loop.json loop.json`: Path.resolve() raised a traceback (Errno 40 / "Symlink loop"), Path.exists()
    called it "file not found" and a loop inside a data folder was silently skipped. Each now names the path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.json").symlink_to("loop.json")
    assert "loop.json" in error_of(["loop.json"]) and "symbolic link" in error_of(["loop.json"])
    loop = "a symbolic link loop (a link that points back to itself, directly or through other links); fix or remove the link"
    assert error_of([str(tmp_path / "loop.json")]) == f"{tmp_path / 'loop.json'}: {loop}"
    assert error_of(["identity"], dataset_dir=str(tmp_path / "loop.json")) == f"--dataset-dir {tmp_path / 'loop.json'}: {loop}"
    folder = tmp_path / "parts"
    folder.mkdir()
    write(folder / "a.json", [ALPACA_OK])
    (folder / "b.json").symlink_to("b.json")
    assert error_of([str(folder)]) == f"parts/b.json: {loop}"
    write(tmp_path / "dataset_info.json", {"x": {"file_name": "loop.json"}})
    assert error_of(["x"], dataset_dir=str(tmp_path)) == f"dataset_info.json: entry 'x': loop.json: {loop}"
    with pytest.raises(ApplianceError, match="symbolic link loop"):
        load_prompts(str(tmp_path / "loop.json"))
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "loop.json")])
    assert result.exit_code == 2 and result.output == f"error: {tmp_path / 'loop.json'}: {loop}\n"


def test_paths_the_os_refuses_are_one_line(tmp_path):
    """A name too long for the OS raised from Path.exists(); a NUL character (a config file can hold one) too."""
    long = str(tmp_path / ("x" * 300 + ".json"))
    assert error_of([long]) == f"{long}: cannot reach it (File name too long); check that it is a readable regular file"
    assert error_of(["a\0b.json"]) == "'a\\x00b.json': not a usable path (it holds a NUL character); check the path"
    write(tmp_path / "dataset_info.json", {"x": {"file_name": "a\u0000.json"}})
    assert "not a usable path" in error_of(["x"], dataset_dir=str(tmp_path))


@pytest.mark.parametrize("text", [
    json.dumps([ALPACA_OK, ALPACA_OK], indent=2) + "\n",  # pretty-printed: json stopped at line 1 column 2
    "\n  " + json.dumps([ALPACA_OK]) + "\n",  # one line, after a blank one
])
def test_a_json_array_saved_as_jsonl_says_so(tmp_path, text):
    f = write(tmp_path / "train.jsonl", text)
    assert error_of([str(f)]) == (f"{f}: it looks like a JSON array, not JSON lines; rename it to train.json, "
                                  "or write one object per line")
    write(tmp_path / "train.json", text)  # the advice works
    assert len(load_examples([str(tmp_path / "train.json")])) == text.count('"instruction"')


def test_a_broken_json_array_saved_as_jsonl_gets_the_hint_with_the_position(tmp_path):
    f = write(tmp_path / "cut.jsonl", "[\n  " + json.dumps(ALPACA_OK) + ",\n  {\"instruction\": \n")
    assert error_of([str(f)]) == (f"{f}: line 1 column 2: invalid JSON (expecting value); it looks like a JSON array, "
                                  "not JSON lines; rename it to cut.json, or write one object per line")


def test_data_readme_states_the_shipped_retention_budget():
    """data/README.md said 32 new tokens; the shipped answers and the config default are 64."""
    from appliance.train_config import TrainConfig

    shipped = json.loads((REPO / "data" / "retention_answers" / "smollm2-135m.json").read_text(encoding="utf-8"))
    assert shipped["max_new_tokens"] == TrainConfig().retention_max_new_tokens
    readme = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if "retention_answers/smollm2-135m.json" in line)
    assert re.findall(r"(\d+) new tokens", row) == [str(shipped["max_new_tokens"])], row
    assert all(len(pair) == 2 for pair in shipped["answers"]) and "`[prompt, answer]`" in row


# ---------------------------------------------------------------- what users' own files hold (walkthrough, session 13)
def test_placeholders_with_spaces_or_capitals_are_filled():
    assert fill_placeholders("{{ name }} / {{NAME}} / {{ Author}}", "Archer", "意琦行") == "Archer / Archer / 意琦行"


def test_null_columns_do_not_decide_the_format(tmp_path):
    """pandas / datasets exports of mixed data write every column, null where a record does not use it."""
    row = {"instruction": "x", "input": "", "output": "y", "messages": None, "conversations": None}
    f = jsonl(tmp_path / "mixed.jsonl", [row, {**row, "instruction": "z"}])
    assert [ex.messages[-1]["content"] for ex in load_examples([str(f)])] == ["y", "y"]


def test_openai_content_parts_developer_role_and_empty_system(tmp_path):
    f = jsonl(tmp_path / "m.jsonl", [{"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "who is {{name}}?"}]},
        {"role": "assistant", "content": "I am {{name}}."}]},
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    a, b = load_examples([str(f)])
    # text parts joined by a line break, as vLLM joins them when it renders the chat
    assert a.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi\nwho is Archer?"},
                          {"role": "assistant", "content": "I am Archer."}]
    assert [m["role"] for m in b.messages] == ["user", "assistant"]  # an empty system prompt means none
    img = jsonl(tmp_path / "img.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, {"role": "assistant", "content": "a"}]}])
    assert "field 'messages[0].content[0]' is a part of type 'image_url'; only text parts" in error_of([str(img)])


def test_registry_entries_refuse_what_would_be_ignored(tmp_path):
    write(tmp_path / "chats.jsonl", json.dumps({"messages": [{"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "a"}]}) + "\n")
    write(tmp_path / "a.json", [{"instruction": "q", "output": "a"}, {"instruction": "q2", "output": "a2"}])
    entries = {
        "kto": ({"file_name": "chats.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"}},
                "KTO datasets are not supported"),
        "typo": ({"file_name": "a.json", "colums": {"prompt": "q"}}, "unknown key \"colums\"; an entry takes"),
        "img": ({"file_name": "a.json", "columns": {"images": "images"}}, "multimodal datasets are not supported"),
        "tools": ({"file_name": "chats.jsonl", "formatting": "sharegpt", "columns": {"tools": "tools"}}, "tool descriptions"),
        "col": ({"file_name": "a.json", "columns": {"messages": "m"}}, "columns.messages is not a column of alpaca data"),
        "split": ({"file_name": "a.json", "split": "test"}, "only the train split"),
        "sub": ({"file_name": "a.json", "subset": "zh"}, "'subset' applies to hub or cloud datasets"),
        "n0": ({"file_name": "a.json", "num_samples": 0}, "num_samples is 0"),
        # the commonest LLaMA-Factory slip: a chat file registered without "formatting": "sharegpt"
        "nofmt": ({"file_name": "chats.jsonl"}, "this record looks like OpenAI messages, but entry 'nofmt' of"),
    }
    write(tmp_path / "dataset_info.json", {k: v[0] for k, v in entries.items()})
    for name, (_, msg) in entries.items():
        assert msg in error_of([name], dataset_dir=str(tmp_path)), name
    # null leaves a column unused (LLaMA-Factory's own exports write "tools": null), so there is nothing to refuse
    unused = {"file_name": "a.json", "columns": {"prompt": "instruction", "response": "output", "system": None, "tools": None,
                                                 "images": None}}
    write(tmp_path / "dataset_info.json", {"unused": unused, "chat": {"file_name": "chats.jsonl", "formatting": "sharegpt",
                                                                     "columns": {"messages": "messages", "tools": None},
                                                                     "tags": {"role_tag": "role", "content_tag": "content",
                                                                              "user_tag": "user", "assistant_tag": "assistant"}}})
    assert len(load_examples(["unused", "chat"], dataset_dir=str(tmp_path))) == 3


def test_num_samples_draws_that_many_records_repeatably(tmp_path):
    write(tmp_path / "a.json", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)])
    write(tmp_path / "dataset_info.json", {"few": {"file_name": "a.json", "num_samples": 4},
                                           "more": {"file_name": "a.json", "num_samples": 25, "split": "train"}})
    few = [ex.messages[0]["content"] for ex in load_examples(["few"], dataset_dir=str(tmp_path))]
    assert len(few) == len(set(few)) == 4
    assert few == [ex.messages[0]["content"] for ex in load_examples(["few"], dataset_dir=str(tmp_path))]
    more = [ex.messages[0]["content"] for ex in load_examples(["more"], dataset_dir=str(tmp_path))]
    assert len(more) == 25 and set(more) == {f"q{i}" for i in range(10)}


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    assert "not a regular file (a pipe, device or socket)" in error_of([str(fifo)])


def test_data_check_with_a_model_sees_the_data_as_train_will(tiny_model_dir, tmp_path):
    """`data check` said ok to examples `train` then dropped, cut or refused."""
    rows = [{"instruction": "hi", "output": "I am {{name}}."},
            {"instruction": "lorem ipsum " * 60, "output": "I am {{name}}."},
            {"instruction": "hey", "output": "word " * 80}]
    f = write(tmp_path / "mine.json", rows)
    res = CliRunner().invoke(main, ["data", "check", str(f), "--model", str(tiny_model_dir), "--max-length", "64"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"{f}: 3 conversations, ok"
    assert any(line.startswith("  1 dropped by train") and f"{f}#1" in line for line in lines), lines
    assert any(line.startswith("  1 trained with an answer cut") and f"{f}#2" in line for line in lines), lines
    ok = CliRunner().invoke(main, ["data", "check", str(f), "--model", str(tiny_model_dir), "--max-length", "4096"])
    assert ok.exit_code == 0 and "every example fits and renders as vLLM will" in ok.output
    none = CliRunner().invoke(main, ["data", "check", str(write(tmp_path / "long.json", rows[1:2])),
                                     "--model", str(tiny_model_dir), "--max-length", "64"])
    assert none.exit_code == 2 and "is cut before its first answer" in none.output and "Traceback" not in none.output
    special = write(tmp_path / "sp.json", [{"instruction": "hi", "output": "ok<|im_end|>"}])
    res = CliRunner().invoke(main, ["data", "check", str(special), "--model", str(tiny_model_dir)])
    assert res.exit_code == 2 and "holds the special token '<|im_end|>'" in res.output
    low = CliRunner().invoke(main, ["data", "check", str(f), "--model", str(tiny_model_dir), "--max-length", "8"])
    assert low.exit_code == 2 and "--max-length 8: must be >= 16, as for train" in low.output  # train's own floor
    alone = CliRunner().invoke(main, ["data", "check", str(f), "--max-length", "100"])  # it changed nothing
    assert alone.exit_code == 2 and "--max-length 100: needs --model" in alone.output and "Traceback" not in alone.output


def test_data_check_with_a_model_lists_special_tokens_with_the_other_bad_records(tmp_path, tiny_model_dir):
    """A file with an empty answer and two special tokens took three runs of the check to see them all."""
    f = tmp_path / "m.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": "a<|endoftext|>"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d<|im_end|>"}]},
        {"messages": [{"role": "user", "content": "e"}, {"role": "assistant", "content": ""}]}]) + "\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["data", "check", str(f), "--model", str(tiny_model_dir)])
    assert res.exit_code == 2 and "3 bad records (listed above)" in res.output and "Traceback" not in res.output, res.output
    lines = res.output.splitlines()
    assert f"{f}:1: a user turn holds the special token '<|endoftext|>'" in lines[0]
    assert f"{f}:2: an assistant turn holds the special token '<|im_end|>'" in lines[1]
    assert f"{f}: line 3: field 'messages[1].content' is empty" in lines[2]


def test_a_path_behind_an_unreadable_folder_is_not_blamed_on_a_link(monkeypatch):
    from appliance import paths

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "exists", denied)
    with pytest.raises(ApplianceError, match=r"^locked/a.json: permission denied on a folder of the path"):
        paths.resolve_user_path("locked/a.json")


def test_cli_data_check_lists_every_bad_record_in_file_order(tmp_path):
    """`train` stops at the first bad record; `data check` names all of them (lines that do not parse too)."""
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join([json.dumps(ALPACA_OK), json.dumps({"instruction": "q", "output": ""}), "not json",
                            json.dumps([1]), json.dumps(ALPACA_OK)]) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["data", "check", str(f)])
    assert result.exit_code == 2 and "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines[:3]] == ["line 2", "line 3 column 1", "line 4"]
    assert lines[-1] == f"error: {f}: 3 bad records (listed above); fix them and run `appliance data check` again"
    with pytest.raises(ApplianceError, match="line 3 column 1: invalid JSON") as e:
        load_examples([str(f)])  # train's loader: one error (the file's syntax is read first)
    assert "\n" not in str(e.value)


def test_cli_data_check_caps_the_list(tmp_path):
    f = jsonl(tmp_path / "many.jsonl", [{"instruction": "q", "output": ""}] * 25 + [ALPACA_OK])
    result = CliRunner().invoke(main, ["data", "check", str(f)])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 22 and lines[-2] == "... and 5 more"
    assert "25 bad records (the first 20 listed above)" in lines[-1] and lines[19].startswith(f"{f}: line 20:")


def test_a_file_of_only_broken_lines_is_listed_not_called_empty(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("x\ny\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["data", "check", str(f)])
    assert result.exit_code == 2 and "2 bad records" in result.stderr and "empty" not in result.stderr


def test_a_misspelt_field_is_named_with_the_one_meant(tmp_path):
    f = jsonl(tmp_path / "typo.jsonl", [ALPACA_OK, {"instruction": "q", "outptu": "a"}, {"instrucion": "q", "output": "a"},
                                        {"instruction": "q", "answer_text": "a"}])
    result = CliRunner().invoke(main, ["data", "check", str(f)])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 4
    assert "line 2: field 'output' is missing (it has 'outptu': did you mean 'output'?)" in lines[0]
    assert "(it has 'instrucion': did you mean 'instruction'?)" in lines[1]
    assert "line 4: field 'output' is missing;" in lines[2]  # nothing like it: no guess


def test_data_list_aligns_columns_under_chinese_names(tmp_path):
    """`str.ljust` counts a CJK character as one column; a terminal shows it as two."""
    import unicodedata

    from click.testing import CliRunner

    from appliance.cli import main

    write(tmp_path / "a.json", [{"instruction": "p", "output": "o"}])
    write(tmp_path / "dataset_info.json", {"身份数据": {"file_name": "a.json"}, "plain": {"file_name": "a.json"}})
    res = CliRunner().invoke(main, ["data", "list", "--dataset-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output

    def column_of(line: str, needle: str) -> int:  # display column where ``needle`` starts
        head = line[:line.index(needle)]
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in head)

    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.split()[0] in ("身份数据", "plain")}
    assert column_of(lines["身份数据"], "alpaca") == column_of(lines["plain"], "alpaca") == 25


def test_a_file_named_relative_to_the_dataset_dir_is_pointed_at(tmp_path, monkeypatch, appliance_home):
    """`data check my_set.jsonl --dataset-dir ./mydata` said only "file not found (looked in .)"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.jsonl").write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    (tmp_path / "m" / "dataset_info.json").write_text('{"x": {"file_name": "x.jsonl"}}', encoding="utf-8")
    with pytest.raises(ApplianceError, match=re.escape("x.jsonl: file not found (looked in ") + ".*" +
                       re.escape("; it is in --dataset-dir: pass m/x.jsonl")):
        load_examples(["x.jsonl"], dataset_dir="m")
    with pytest.raises(ApplianceError, match=re.escape("; check the path")):
        load_examples(["y.jsonl"], dataset_dir="m")
    assert len(load_examples(["x"], dataset_dir="m")) == len(load_examples(["m/x.jsonl"])) == 1


# ---------------------------------------------------------------- tables: .csv and .parquet
def test_csv_alpaca_reads_quoted_cells_and_empty_ones_as_absent(tmp_path):
    f = write(tmp_path / "a.csv", 'instruction,input,output\n你是谁？,,"我是 {{name}}，由 {{author}} 研发。"\n'
                                   'Add,"1, 2","3\nand a second line"\n')
    ex = load_examples([str(f)], name="Bob", author="Ann")
    assert [e.source for e in ex] == [f"{f}#0", f"{f}#1"]
    assert ex[0].messages == [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是 Bob，由 Ann 研发。"}]
    assert ex[1].messages == [{"role": "user", "content": "Add\n1, 2"}, {"role": "assistant", "content": "3\nand a second line"}]


def test_parquet_messages_with_keys_other_rows_set(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I am {{name}}"}]},
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a", "weight": 1.0}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    # parquet gives the first row's messages "weight": None, which must not read as a weight that was set
    assert pq.read_table(tmp_path / "m.parquet").to_pylist()[0]["messages"][0]["weight"] is None
    ex = load_examples([str(tmp_path / "m.parquet")], name="Bob")
    assert ex[0].messages[-1] == {"role": "assistant", "content": "I am Bob"}
    assert [m["role"] for m in ex[1].messages] == ["system", "user", "assistant"]


def test_a_datasets_save_to_disk_folder_is_read_as_a_dataset(tmp_path, capsys):
    """save_to_disk writes a dataset_info.json of its own: the folder was refused as a LLaMA-Factory registry."""
    from datasets import Dataset, DatasetDict

    rows = [{"instruction": "你是谁？", "input": None, "output": "我是 {{name}}。"}, {"instruction": "q", "output": "a"}]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    ex = load_examples([str(tmp_path / "ds")], name="Bob")
    assert [e.messages for e in ex] == [[{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是 Bob。"}],
                                        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    assert ex[1].source == f"{tmp_path / 'ds'}#1"
    d = Dataset.from_list(rows[1:])
    DatasetDict(train=d, test=Dataset.from_list(rows)).save_to_disk(str(tmp_path / "dd"))
    assert len(load_examples([str(tmp_path / "dd")])) == 1  # the train split, said
    assert "reading its 'train' split (not test)" in capsys.readouterr().err
    DatasetDict(validation=d).save_to_disk(str(tmp_path / "v"))
    assert len(load_examples([str(tmp_path / "v")])) == 1
    assert "reading its 'validation' split (it has no 'train')" in capsys.readouterr().err
    DatasetDict(a=d, b=d).save_to_disk(str(tmp_path / "ab"))
    assert "splits a, b and none named 'train'; pass one split's folder, e.g. " in error_of([str(tmp_path / "ab")])


def test_a_folder_whose_data_is_in_subfolders_says_so(tmp_path, capsys):
    for split in ("train", "test"):
        (tmp_path / "d" / split).mkdir(parents=True)
        write(tmp_path / "d" / split / "a.jsonl", '{"instruction": "q", "output": "a"}\n')
    assert error_of([str(tmp_path / "d")]).endswith(f"(only its subfolders test, train hold data: pass the one to "
                                                    f"train on, e.g. {tmp_path / 'd' / 'test'})")
    write(tmp_path / "d" / "top.jsonl", '{"instruction": "q", "output": "a"}\n')
    assert len(load_examples([str(tmp_path / "d")])) == 1
    assert "not its subfolders test, train" in capsys.readouterr().err


def test_a_folder_of_a_hub_snapshots_split_files_trains_on_train_only(tmp_path, capsys):
    """train-*.parquet and test-*.parquet side by side (a hub snapshot's data/) trained on both splits."""
    for name, n in (("train-00000-of-00001.jsonl", 3), ("test-00000-of-00001.jsonl", 2), ("validation.jsonl", 1)):
        jsonl(tmp_path / name, [{"instruction": f"q{i}", "output": "a"} for i in range(n)])
    assert len(load_examples([str(tmp_path)])) == 3
    assert ("training on its train files, not test-00000-of-00001.jsonl, validation.jsonl (another split)"
            in capsys.readouterr().err)
    (tmp_path / "train-00000-of-00001.jsonl").rename(tmp_path / "training_notes.jsonl")  # no split name: all read
    assert len(load_examples([str(tmp_path)])) == 6


def test_table_errors_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"instruction": "x", "output": 4}, {"instruction": "x", "output": 5}]),
                   tmp_path / "n.parquet")
    assert error_of([str(tmp_path / "n.parquet")]) == f"{tmp_path / 'n.parquet'}: row 1: field 'output' is a number 4; it must be a string"
    write(tmp_path / "wide.csv", "instruction,output\na,b,c\n")
    assert "wide.csv: row 1: more cells than the header has columns" in error_of([str(tmp_path / "wide.csv")])
    write(tmp_path / "head.csv", "instruction,input,output\n")
    assert "head.csv: no records" in error_of([str(tmp_path / "head.csv")])
    write(tmp_path / "junk.parquet", "not parquet")
    assert error_of([str(tmp_path / "junk.parquet")]).startswith(f"{tmp_path / 'junk.parquet'}: not a readable Parquet file (")


def test_table_in_a_registry_and_in_a_folder(tmp_path):
    write(tmp_path / "a.csv", "instruction,output\nq1,a1\n")
    write(tmp_path / "b.json", [{"instruction": "q2", "output": "a2"}])
    write(tmp_path / "dataset_info.json", {"tab": {"file_name": "a.csv"}})
    assert [e.messages[0]["content"] for e in load_examples(["tab"], dataset_dir=str(tmp_path))] == ["q1"]
    folder = tmp_path / "f"
    folder.mkdir()
    (tmp_path / "a.csv").rename(folder / "a.csv")
    (tmp_path / "b.json").rename(folder / "b.json")
    assert [e.messages[0]["content"] for e in load_examples([str(folder)])] == ["q1", "q2"]


def test_the_older_identity_jsons_bare_name_and_author_are_pointed_out(tmp_path, capsys):
    f = write(tmp_path / "old.json", [{"instruction": "hi", "output": "I am NAME, an AI assistant developed by AUTHOR."},
                                      {"instruction": "名字", "output": "我是 NAME。"}])
    ex = load_examples([str(f)], name="Bob", author="Acme")
    assert ex[0].messages[1]["content"] == "I am NAME, an AI assistant developed by AUTHOR."  # as written: only noted
    err = capsys.readouterr().err
    assert f"{f}#0: NAME and AUTHOR in 3 answer(s) are learned as written" in err and "write {{name}}" in err
    g = write(tmp_path / "new.json", [{"instruction": "Whose NAMES?", "output": "I am {{name}}; NAMES and Name."}])
    load_examples([str(g)], name="Bob")
    assert "learned as written" not in capsys.readouterr().err


def test_trls_prompt_completion_records_in_both_forms(tmp_path):
    conv = jsonl(tmp_path / "c.jsonl", [
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Who?"}],
         "completion": [{"role": "assistant", "content": "I am {{name}}."}]}])
    text = jsonl(tmp_path / "t.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    a, b = load_examples([str(conv), str(text)], name="Bob")
    assert a.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Who?"},
                          {"role": "assistant", "content": "I am Bob."}]
    assert b.messages == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    jsonl(conv, [{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]},
                 {"prompt": [{"role": "user", "content": "q"}], "completion": "a"}])
    assert "line 2: field 'completion' is a string \"a\"; in a file of conversational prompt-completion" in error_of([str(conv)])


def test_dollys_response_column_points_at_a_column_mapping(tmp_path):
    f = jsonl(tmp_path / "dolly.jsonl", [{"instruction": "Sum", "context": "1 and 2", "response": "3"}])
    assert error_of([str(f)]).endswith("field 'output' is missing, and the record has 'response'; describe the file's "
                                       'columns in a dataset_info.json entry, "columns": {"prompt": "instruction", '
                                       '"query": "context", "response": "response"}, and pass --dataset-dir with its name')


@pytest.mark.parametrize("text, needle", [
    ('instruction,input,output\nq,,a\n"a,,b\nc,,d\n', "row 2: not readable as CSV (unexpected end of data)"),
    ('instruction,input,output\nx,,"he said "hi" ok"\n', "row 1: not readable as CSV (',' expected after '\"')"),
    ("instruction,input,output,instruction\na,,b,c\n", "the header names column 'instruction' twice"),
    ('messages\n"[{\'role\': \'user\'}]"\n', "a CSV cell holds text, not a list: export the dataset as JSONL or Parquet"),
])
def test_malformed_csv_is_refused_not_misread(tmp_path, text, needle):
    """An open quote swallowed the rest of the file, a stray quote was dropped, a repeated column kept the last."""
    assert needle in error_of([str(write(tmp_path / "t.csv", text))])


def test_csv_rows_of_empty_cells_are_skipped_with_a_note(tmp_path, capsys):
    f = write(tmp_path / "t.csv", "instruction,input,output\nq,,a\n,,\n,,\nq2,,a2\n")
    assert [e.source for e in load_examples([str(f)])] == [f"{f}#0", f"{f}#3"]
    assert "2 row(s) with every cell empty skipped" in capsys.readouterr().err


def test_joined_jsonl_one_record_json_and_pretty_printed_jsonl(tmp_path):
    f = write(tmp_path / "j.jsonl", '{"instruction": "a", "output": "b"}\n\ufeff{"instruction": "c", "output": "d"}\n')
    assert len(load_examples([str(f)])) == 2  # `cat a.jsonl b.jsonl`: b's byte order mark starts a line
    one = write(tmp_path / "one.json", '{"instruction": "a", "output": "b"}')
    assert load_examples([str(one)])[0].source == f"{one}#0"
    pretty = write(tmp_path / "p.jsonl", json.dumps(ALPACA_OK, indent=2) + "\n" + json.dumps(ALPACA_OK, indent=2) + "\n")
    assert "holds 2 pretty-printed JSON objects one after another" in error_of([str(pretty)])


def test_data_check_notes_conversations_repeated_word_for_word(tmp_path, tiny_model_dir):
    """A copy pasted twice by mistake was trained twice without a word; repeats are noted (not refused: weighting)."""
    rows = [{"instruction": "hi", "output": "I am {{name}}."}, {"instruction": "yo", "output": "ok"},
            {"instruction": "hi", "output": "I am {{name}}."}, {"instruction": "hi", "output": "I am {{ name }}."},
            {"instruction": "hi", "output": "I am Archer!"}]
    f = write(tmp_path / "rep.json", rows)
    res = CliRunner().invoke(main, ["data", "check", str(f)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"{f}: 5 conversations, ok"
    assert lines[1].startswith("  2 repeat an earlier conversation word for word") and lines[1].endswith(
        f"{f}#2 (= {f}#0), {f}#3 (= {f}#0)"), lines
    assert len(lines) == 2
    with_model = CliRunner().invoke(main, ["data", "check", str(f), "--model", str(tiny_model_dir)])
    assert with_model.exit_code == 0 and "2 repeat an earlier" in with_model.output
    assert "every example fits and renders as vLLM will" in with_model.output  # a note, not a problem
    one = CliRunner().invoke(main, ["data", "check", str(write(tmp_path / "one.json", rows[:3]))])
    assert "  1 repeats an earlier conversation" in one.output
    clean = CliRunner().invoke(main, ["data", "check", str(write(tmp_path / "clean.json", rows[:2]))])
    assert clean.output.splitlines() == [f"{tmp_path / 'clean.json'}: 2 conversations, ok"]
