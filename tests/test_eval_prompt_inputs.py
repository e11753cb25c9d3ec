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
