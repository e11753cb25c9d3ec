"""Prompt files users bring that the loader once got wrong: OpenAI content parts and roles, JSON saved as
.jsonl, repeats scored two ways, prompts the identity rule cannot read, placeholder typos, set-name typos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.evaluate import once_each
from evals.prompts import load_prompt_file, load_prompts
from evals.report import parse_rules
from evals.selfref import is_self_reference

NAME, AUTHOR = "Archer", "意琦行"


def _jsonl(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_openai_content_parts_and_roles_are_read(tmp_path):
    f = _jsonl(tmp_path / "m.jsonl",
               {"messages": [{"role": "user", "content": [{"type": "text", "text": "Who are"}, {"type": "text", "text": "you?"}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "I am {{name}}."}]}]},
               {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "User", "content": "Hi there"}]})
    first, second = load_prompt_file(f, NAME, AUTHOR)
    assert (first.prompt, first.reference, first.kind) == ("Who are\nyou?", "I am Archer.", "identity")
    assert (second.prompt, second.system) == ("Hi there", "Be brief.")  # developer is OpenAI's system role


@pytest.mark.parametrize("messages, needle", [
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "turn 1: field 'content[0]' is a part of type 'image_url'"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "turn 2: 'role' is \"tool\""),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
     "turn 2 is an assistant turn before the last answer"),
    ([{"role": "user", "content": 5}], "turn 1: 'content' must be a string, not a number"),
    # every place a conversation can fail to alternate, as training refuses them
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"},
      {"role": "user", "content": "d"}], "turn 3 is an assistant turn where a user turn belongs"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
     "turn 2 is a user turn where an assistant turn belongs"),
    ([{"role": "assistant", "content": "hello"}, {"role": "user", "content": "b"}], "turn 1 is an assistant turn where a user turn belongs"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "turn 3 is a user turn where an assistant turn belongs"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "turn 2 is a system turn; only the first turn"),
])
def test_bad_turns_name_the_turn_and_the_field(tmp_path, messages, needle):
    f = _jsonl(tmp_path / "bad.jsonl", {"messages": messages})
    with pytest.raises(ApplianceError) as e:
        load_prompt_file(f, NAME, AUTHOR)
    assert needle in str(e.value) and "bad.jsonl line 1" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ['[{"prompt": "a"}, {"prompt": "b"}]\n', '[\n {"prompt": "a"},\n {"prompt": "b"}\n]\n'])
def test_a_json_list_saved_as_jsonl_is_read(tmp_path, text):
    f = tmp_path / "list.jsonl"
    f.write_text(text, encoding="utf-8")
    assert [(p.prompt, p.where) for p in load_prompt_file(f, NAME, AUTHOR)] == [("a", f"{f} record 1"), ("b", f"{f} record 2")]


def test_one_pretty_printed_object_saved_as_jsonl_is_read_and_a_broken_line_still_named(tmp_path):
    f = tmp_path / "one.jsonl"
    f.write_text('{\n  "prompt": "c"\n}\n', encoding="utf-8")
    assert [p.prompt for p in load_prompt_file(f, NAME, AUTHOR)] == ["c"]
    f.write_text('{"prompt": "a"}\n{"prompt": "b"\n', encoding="utf-8")
    with pytest.raises(ApplianceError, match=r"one.jsonl line 2: invalid JSON"):
        load_prompt_file(f, NAME, AUTHOR)


def test_a_repeat_scored_another_way_is_refused_naming_both_records(tmp_path):
    mine = _jsonl(tmp_path / "mine.jsonl", {"prompt": "你是谁？", "reference": "我是小助手。"})
    with pytest.raises(ApplianceError) as e:
        once_each(load_prompts(["identity", str(mine)], NAME, AUTHOR), lambda s: None)
    msg = str(e.value)
    assert msg.startswith(f"{mine} line 1: repeats the prompt of ") and "identity.jsonl line 1" in msg
    assert "another reference" in msg and "\n" not in msg
    f = _jsonl(tmp_path / "kinds.jsonl", {"prompt": "Qui es-tu ?"}, {"prompt": "Qui es-tu ?", "kind": "identity"})
    with pytest.raises(ApplianceError, match="another kind"):
        once_each(load_prompt_file(f, NAME, AUTHOR), lambda s: None)


def test_a_repeat_without_reference_or_expect_gives_way_to_the_scored_one(tmp_path):
    """My identity file's bare "你是谁？" beside the built-in one (which has a reference) was refused as "another
    reference": it scores nothing the other does not, so the built-in one is kept, in either order."""
    mine = _jsonl(tmp_path / "mine.jsonl", {"prompt": "你是谁？", "kind": "identity"}, {"prompt": "What is 2+2?"})
    for order in (["identity", str(mine)], [str(mine), "identity"]):
        notes: list[str] = []
        kept = once_each(load_prompts(order, NAME, AUTHOR), notes.append)
        who = [p for p in kept if p.prompt == "你是谁？"]
        assert len(who) == 1 and who[0].reference and "identity.jsonl" in who[0].where, who
        assert any("repeated prompt(s) sent once" in n for n in notes)
    if order[0] == str(mine):
        assert kept[0].prompt == "你是谁？"  # in the first one's place
    f = _jsonl(tmp_path / "q.jsonl", {"prompt": "Capital of France?", "expect": ["Paris"]},
               {"prompt": "Capital of France?", "reference": "Paris is the capital."})
    with pytest.raises(ApplianceError, match="another reference / expect"):  # both score: still refused
        once_each(load_prompt_file(f, NAME, AUTHOR), lambda s: None)
    g = _jsonl(tmp_path / "k.jsonl", {"prompt": "Who are you?", "kind": "general"}, {"prompt": "Who are you?", "kind": "identity"})
    with pytest.raises(ApplianceError, match="another kind"):  # bare, but scored as another kind
        once_each(load_prompt_file(g, NAME, AUTHOR), lambda s: None)


def test_a_plain_repeat_is_sent_once_and_named_by_its_line(tmp_path):
    f = _jsonl(tmp_path / "r.jsonl", {"prompt": "What is 2+2?", "expect": ["4"]}, {"prompt": "What is 2+2?", "expect": ["4"]})
    notes: list[str] = []
    kept = once_each(load_prompt_file(f, NAME, AUTHOR), notes.append)
    assert len(kept) == 1 and any(f"{f} line 2" in n and "sent once" in n for n in notes)


def test_unlabelled_prompts_the_rule_cannot_read_and_placeholder_typos_are_pointed_out(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", {"prompt": "あなたは誰ですか？"}, {"prompt": "¿Quién eres?"},
               {"prompt": "Qui êtes-vous ?", "kind": "identity"}, {"prompt": "What is 2+2?"},
               {"prompt": "Say hi", "reference": "I am {{nme}}"})
    notes: list[str] = []
    once_each(load_prompt_file(f, NAME, AUTHOR), notes.append)
    foreign = next(n for n in notes if "neither Chinese nor English" in n)
    assert "2 prompt(s)" in foreign and f"{f} line 1" in foreign and f"{f} line 2" in foreign
    assert f"{f} line 3" not in foreign and f"{f} line 4" not in foreign  # labelled, or English
    assert any(f"{f} line 5: {{{{nme}}}}" in n for n in notes)
    notes.clear()
    once_each(load_prompts(None, NAME, AUTHOR), notes.append)  # the built-in sets: nothing to say
    assert notes == []


def test_a_task_on_quoted_text_is_not_an_identity_prompt(tmp_path):
    f = tmp_path / "alpaca.json"
    f.write_text(json.dumps([{"instruction": "Translate to French", "input": "Who are you?", "output": "Qui êtes-vous ?"},
                             {"instruction": "回答下面的问题", "input": "你是谁？", "output": ""}], ensure_ascii=False),
                 encoding="utf-8")
    assert [p.kind for p in load_prompt_file(f, NAME, AUTHOR)] == ["general", "identity"]


def test_a_misspelt_set_name_is_pointed_at_the_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ApplianceError, match="did you mean the built-in set 'identity'"):
        load_prompts(["identty"], NAME, AUTHOR)


def test_python_number_literals_are_not_gate_values():
    with pytest.raises(ApplianceError, match="expected METRIC=NUMBER"):
        parse_rules(fail_under=["general_accuracy=1_0"])


@pytest.mark.parametrize("record, first, second", [
    ({"prompt": "Who are you?", "conversations": [{"from": "human", "value": "What is 2+2?"}]}, "prompt", "conversations"),
    ({"instruction": "Who are you?", "messages": [{"role": "user", "content": "Hi"}]}, "instruction", "messages"),
    ({"prompt": "Who are you?", "instruction": "Translate to French"}, "prompt", "instruction"),
])
def test_a_record_in_two_formats_is_refused_naming_both_fields(tmp_path, record, first, second):
    # whichever format was read, the other question would silently never be asked
    f = _jsonl(tmp_path / "two.jsonl", {"prompt": "fine"}, record)
    with pytest.raises(ApplianceError) as e:
        load_prompt_file(f, NAME, AUTHOR)
    msg = str(e.value)
    assert "two.jsonl line 2" in msg and f"'{first}' and '{second}'" in msg and "keep one" in msg and "\n" not in msg


@pytest.mark.parametrize("rec, needle", [
    ({"prompt": "Capital of France?", "expect": ["Paris"], "set": "identity"},
     'set "identity" is the report\'s own set of all identity prompts (Chinese and English together), and this prompt '
     'belongs in "general"'),
    ({"prompt": "Who are you?", "reference": "I am {{name}}, by {{author}}.", "set": "identity_zh"},
     'set "identity_zh" is the report\'s own set of Chinese identity prompts, and this prompt belongs in "identity_en"'),
    ({"prompt": "你是谁？", "kind": "identity", "set": "general"}, 'belongs in "identity_zh"'),
    ({"prompt": "2+2?", "expect": ["4"], "set": "identity_en"}, 'belongs in "general"'),
])
def test_a_prompt_filed_under_a_built_in_set_it_does_not_belong_to_is_refused(tmp_path, rec, needle):
    """A general question with set "identity" vanished from every set (the report's own "identity" set replaced
    it), and a hand-filed identity_en made identity_en.hit_rate disagree with identity_en_hit_rate."""
    with pytest.raises(ApplianceError, match=re.escape(needle)):
        load_prompt_file(_jsonl(tmp_path / "p.jsonl", rec), NAME, AUTHOR)


def test_a_built_in_set_named_as_the_report_would_file_it_and_own_sets_are_kept(tmp_path):
    """"identity" on an identity prompt is where the report counts it anyway (under its language's set too);
    general and open differ only in what a general prompt is scored by, so either may hold one."""
    f = _jsonl(tmp_path / "p.jsonl", {"prompt": "Who are you?", "reference": "I am {{name}}, by {{author}}.", "set": "identity_en"},
               {"prompt": "2+2?", "expect": ["4"], "set": "math"}, {"prompt": "你是谁？", "kind": "identity", "set": "identity"},
               {"prompt": "Tell me a joke.", "reference": "A joke.", "set": "general"})
    assert [p.set for p in load_prompt_file(f, NAME, AUTHOR)] == ["identity_en", "math", "identity_zh", "general"]


@pytest.mark.parametrize("history, needle", [
    ([{"role": "assistant", "content": "x"}], "'history' turn 1 is an assistant turn where a user turn belongs"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "'history' turn 2 is a user turn where an assistant turn belongs"),
    ([{"role": "user", "content": "a"}], "'history' ends with a user turn"),
])
def test_jsonl_history_must_alternate_as_sharegpt_turns_must(tmp_path, history, needle):
    """Two user turns in a row were sent as they were, where the same turns in sharegpt are refused."""
    with pytest.raises(ApplianceError, match=re.escape(needle)):
        load_prompt_file(_jsonl(tmp_path / "p.jsonl", {"prompt": "Q?", "history": history}), NAME, AUTHOR)


def test_blank_reference_and_system_are_read_as_absent(tmp_path):
    """An empty reference was no reference but a different prompt from one without; "  " replaced the template's
    default system prompt while "" kept it."""
    f = _jsonl(tmp_path / "p.jsonl", {"prompt": "Q?", "reference": " ", "system": "   "})
    (p,) = load_prompt_file(f, NAME, AUTHOR)
    assert (p.reference, p.system) == (None, None)
    g = _jsonl(tmp_path / "q.jsonl", {"prompt": "Q?"})
    assert len(once_each(load_prompts([str(f), str(g)], NAME, AUTHOR), lambda s: None)) == 1


def test_a_registry_entry_with_columns_reads_only_the_columns_it_names(tmp_path):
    """LLaMA-Factory's own webqa entry ({"prompt": "input", "response": "output"}) asked "what is 2+2\nwhat is 2+2":
    the unnamed query column fell back to its default, "input", the prompt's own field."""
    (tmp_path / "webqa.json").write_text(json.dumps([{"input": "what is 2+2", "output": "4", "system": "Be terse.",
                                                      "history": [["hi", "hello"]]}]), encoding="utf-8")
    info = {"webqa": {"file_name": "webqa.json", "columns": {"prompt": "input", "response": "output"}},
            "bad": {"file_name": "webqa.json", "columns": {"response": "output"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"webqa": info["webqa"]}), encoding="utf-8")
    (p,) = load_prompts([str(tmp_path)], NAME, AUTHOR)
    assert (p.prompt, p.reference, p.system, p.history) == ("what is 2+2", "4", None, [])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"bad": info["bad"]}), encoding="utf-8")
    with pytest.raises(ApplianceError, match="'columns' names no 'prompt' column"):
        load_prompts([str(tmp_path)], NAME, AUTHOR)


def test_a_datasets_save_to_disk_folder_is_a_prompt_file(tmp_path):
    """Read as training reads it: the folder's own dataset_info.json (datasets' metadata) is no registry."""
    from datasets import Dataset

    Dataset.from_dict({"prompt": ["你是谁？", "2+2?"], "reference": ["我是 {{name}}。", None], "expect": [None, ["4"]],
                       "kind": ["identity", "general"]}).save_to_disk(str(tmp_path / "ds"))
    first, second = load_prompt_file(tmp_path / "ds", NAME, AUTHOR)
    assert (first.prompt, first.reference, first.kind) == ("你是谁？", "我是 Archer。", "identity")
    assert (second.expect, second.reference, second.where) == (["4"], None, f"{tmp_path / 'ds'} row 2")


# ---------------------------------------------------------------- a tester's prompt-file findings
@pytest.mark.parametrize("key", ["completion", "response", "output", "answer"])
def test_a_single_answer_under_another_tools_key_is_the_reference(tmp_path, key):
    """{"prompt": ..., "completion": ...} (OpenAI's fine-tuning format) loaded with no reference, scored as nothing."""
    (p,) = load_prompt_file(_jsonl(tmp_path / "p.jsonl", {"prompt": "Who are you?", key: "I am {{name}}."}), NAME, AUTHOR)
    assert (p.reference, p.kind, p.set) == ("I am Archer.", "identity", "identity_en")


def test_reference_aliases_leave_reference_answers_rows_and_alpaca_alone(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", {"prompt": "2+2?", "reference": "4", "answer": "It is 5."},  # an answers.jsonl row
               {"prompt": "3+3?", "reference": None, "answer": "6?"}, {"prompt": "Hi", "output": None})
    assert [p.reference for p in load_prompt_file(f, NAME, AUTHOR)] == ["4", None, None]
    g = tmp_path / "a.json"
    g.write_text(json.dumps([{"instruction": "2+2?", "output": "4"}]), encoding="utf-8")
    assert [(p.prompt, p.reference) for p in load_prompt_file(g, NAME, AUTHOR)] == [("2+2?", "4")]


@pytest.mark.parametrize("rec, needle", [
    ({"prompt": "Capital of France?", "answers": ["Paris"]}, "field 'answers' is not read"),
    ({"prompt": "Capital of France?", "expected_answer": "Paris"}, "field 'expected_answer' is not read"),
    ({"prompt": "Capital of Italy?", "label": "Rome"}, "field 'label' is not read"),
    ({"prompt": "Capital of Italy?", "ground_truth": "Rome", "expect": ["Rome"]}, "field 'ground_truth' is not read"),
    ({"prompt": "2+2?", "completion": "4", "output": "4"}, "both 'completion' and 'output' fields"),
    ({"prompt": "2+2?", "answer": ["4"]}, "'answer' is read as the 'reference' and must be a string, not a list"),
])
def test_answer_keys_eval_cannot_place_are_refused(tmp_path, rec, needle):
    with pytest.raises(ApplianceError) as e:
        load_prompt_file(_jsonl(tmp_path / "p.jsonl", rec), NAME, AUTHOR)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'p.jsonl'} line 1: ") and needle in msg and "\n" not in msg
    assert "'reference'" in msg and ("'expect'" in msg or "both" in msg)


def test_a_json_list_in_a_csv_expect_cell_is_several_answers(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text('prompt,expect\nWhat is 2+2?,"[""4"", ""four""]"\nSort 2 1,"[1, 2]"\nSay hi,hi\n', encoding="utf-8")
    assert [p.expect for p in load_prompt_file(f, NAME, AUTHOR)] == [["4", "four"], ["[1, 2]"], ["hi"]]
    g = tmp_path / "c.csv"
    g.write_text('prompt,expect\nWhat is 2+2?,[]\n', encoding="utf-8")
    with pytest.raises(ApplianceError, match="'expect' must be a list of accepted answer strings, not an empty list"):
        load_prompt_file(g, NAME, AUTHOR)


def test_an_expect_item_of_the_wrong_type_is_named(tmp_path):
    with pytest.raises(ApplianceError, match=re.escape("'expect' item 2 is a number; accepted answers must be strings "
                                                       '(write "4" for 4)')):
        load_prompt_file(_jsonl(tmp_path / "p.jsonl", {"prompt": "2+2?", "expect": ["four", 4]}), NAME, AUTHOR)


@pytest.mark.parametrize("where", [".", "data"])
def test_a_dataset_name_listed_in_the_current_dataset_info_is_loaded(tmp_path, monkeypatch, capsys, where):
    """`--prompts mine` with ./dataset_info.json listing "mine" said "file not found"."""
    folder = tmp_path / where
    folder.mkdir(exist_ok=True)
    (folder / "id.json").write_text(json.dumps([{"instruction": "你是谁？", "output": "我是 {{name}}。"}], ensure_ascii=False),
                                    encoding="utf-8")
    (folder / "other.json").write_text(json.dumps([{"instruction": "2+2?", "output": "4"}]), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "id.json"}, "other": {"file_name": "other.json"},
                                                          "hub": {"hf_hub_url": "a/b"}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path / "home"))
    (p,) = load_prompts(["mine"], NAME, AUTHOR)  # that entry only
    assert (p.prompt, p.reference, p.kind) == ("你是谁？", "我是 Archer。", "identity")
    assert f"reading dataset 'mine' of {folder.resolve() if where == 'data' else tmp_path}" in capsys.readouterr().err
    with pytest.raises(ApplianceError, match="dataset 'hub' of .* is on a hub"):
        load_prompts(["hub"], NAME, AUTHOR)
    with pytest.raises(ApplianceError, match="--prompts .*nothere: file not found"):
        load_prompts(["nothere"], NAME, AUTHOR)


# the phrasings a tester found missed ("self") or wrongly flagged, and near misses written with them
@pytest.mark.parametrize("prompt, is_self", [
    ("您怎么称呼？", True), ("你怎么称呼", True), ("请问该怎么称呼", True), ("那您怎么称呼？", True), ("你的昵称是什么", True),
    ("谁把你做出来的", True), ("请问是谁把你开发出来的？", True), ("你是怎么训练的", True), ("你是如何被训练出来的？", True),
    ("How should I address you?", True), ("What do people call you?", True), ("What do you call yourself?", True),
    ("你和ChatGPT哪个厉害", True), ("Hello! Who's there?", True),
    ("Is this sentence grammatical: who are you?", False), ("这句话有语病吗：你是谁？", False),
    ("Count the words in this phrase: what is your name", False),
    ("对方的父亲该怎么称呼？", False), ("谁把你做的菜吃了？", False), ("你是怎么设计这个算法的？", False),
    ("迷你和标准版哪个好？", False), ("What do you call a fish with no eyes?", False), ("Knock knock. Who's there?", False),
    ("Who is there to help me with homework?", False),
])
def test_identity_phrasings_a_tester_found(prompt, is_self):
    assert is_self_reference(prompt) is is_self


# built-in identity prompts the prompt alone does not mark (their {{name}} reference does): greetings, and
# phrasings left to the reference; a change to the rule may shorten this list, never lengthen it
_IDENTITY_BY_REFERENCE_ONLY = {
    "你好", "请问我现在在和哪位助手对话？", "请问您是？", "你该不会是Llama吧？", "你好，很高兴认识你！",
    "嗨，你好呀！", "早上好呀，朋友！", "晚上好，在忙吗？", "你平时都能帮我做哪些事情？", "你具备什么能力？", "我可以让你帮我做什么？",
    "Hello", "What name should I use for you?", "Do you happen to have a name?", "Please give a brief self-introduction.",
    "Who was responsible for training you?", "Who is the developer behind you?", "Hi, nice to meet you!",
    "Hey, good morning!", "Hello, anyone there?", "Good evening to you!", "What can I ask you to help with?",
    "Which tasks are you able to do for me?"}


def test_the_prompt_alone_classifies_every_built_in_prompt_as_before():
    """Without kind (and without the reference), no general, open or unrelated built-in prompt reads as an identity
    question, and every identity one the rule read before still reads so."""
    from evals.prompts import PROMPTS_DIR

    for f in sorted(PROMPTS_DIR.glob("*.jsonl")):
        rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        flagged = [r["prompt"] for r in rows if r["kind"] != "identity" and is_self_reference(r["prompt"])]
        missed = {r["prompt"] for r in rows if r["kind"] == "identity" and not is_self_reference(r["prompt"])}
        assert flagged == [] and missed <= _IDENTITY_BY_REFERENCE_ONLY, (f.name, flagged, missed - _IDENTITY_BY_REFERENCE_ONLY)
