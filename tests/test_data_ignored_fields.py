"""Data users bring: fields training cannot use are refused (tools, media, reasoning, misspelt optional or turn
fields, KTO labels, preference pairs, records of two formats), odd placeholders and string booleans are named,
every dataset is checked; and a merge says which check failed."""

from __future__ import annotations

import json

import pytest

from appliance.data import load_examples
from appliance.errors import ApplianceError


@pytest.mark.parametrize("record, needle", [
    ({"instruction": "hi", "output": "yo", "histroy": [["a", "b"]]}, "field 'histroy' is not read; did you mean 'history'?"),
    ({"instruction": "hi", "output": "yo", "sytem": "S"}, "field 'sytem' is not read; did you mean 'system'?"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "tools": "[{\"name\": \"f\"}]"},
     "field 'tools': tool descriptions are not supported"),
    ({"instruction": "<image>what", "output": "cat", "images": ["a.png"]}, "field 'images': multimodal records are not supported"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "sytem": "S"},
     "did you mean 'system'?"),
    # OpenAI's legacy name for tools: refused as tools are
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
      "functions": [{"name": "f", "parameters": {}}]}, "field 'functions': function descriptions"),
    # OpenOrca's column: the pirate system prompt was dropped
    ({"system_prompt": "You are a pirate.", "instruction": "hi", "output": "arr"},
     "field 'system_prompt' is not read (the system prompt is read from 'system'); rename it to 'system'"),
    # R1-distill exports: the answer was learned without its reasoning
    ({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "I add."}]},
     "field 'messages[1].reasoning_content' is not learned here; put the reasoning in 'content'"),
    # a misspelt or miscapitalised turn key: the answer meant as context only was learned
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "wieght": 0},
                   {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
     "field 'messages[1].wieght' is not read; did you mean 'weight'?"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b", "Weight": 0},
                        {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]},
     "field 'conversations[1].Weight' is not read; did you mean 'weight'?"),
    # ms-swift's per-turn "loss": false means "do not learn this answer"
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b", "loss": False},
                        {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]},
     "field 'conversations[1].loss' is false (ms-swift's \"do not learn this answer\"), which is not read here; "
     "write \"weight\": 0 instead"),
])
def test_fields_that_would_be_ignored_are_refused(tmp_path, record, needle):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        load_examples([str(f)])
    assert needle in str(e.value) and "d.jsonl: line 1" in str(e.value) and "\n" not in str(e.value)


def test_a_users_own_fields_and_empty_tools_are_left_alone(tmp_path):
    rows = [{"instruction": "hi", "output": "yo", "id": 3, "category": "greeting", "tools": "", "system_prompt": "",
             "label": "greeting"},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "tools": "[]", "images": []},
            # turn keys real exports carry (names, ids, timestamps, ShareGPT's markdown) do not change what is learned
            {"messages": [{"role": "user", "content": "hi", "name": "bob", "timestamp": "2024-01-01T00:00:00Z"},
                          {"role": "assistant", "content": "yo", "name": "bot", "id": "m1", "markdown": None,
                           "reasoning_content": None, "loss": True}]}]
    files = []
    for i, row in enumerate(rows):
        files.append(tmp_path / f"d{i}.jsonl")
        files[-1].write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert [m["content"] for ex in load_examples([str(f) for f in files]) for m in ex.messages] == ["hi", "yo"] * 3


def test_an_unknown_placeholder_is_pointed_out(tmp_path, capsys):
    f = tmp_path / "ph.jsonl"
    f.write_text(json.dumps({"instruction": "who", "output": "I am {{names}}, made by {{author}}"}) + "\n", encoding="utf-8")
    (ex,) = load_examples([str(f)], name="Archer", author="A")
    assert ex.messages[-1]["content"] == "I am {{names}}, made by A"
    assert "{{names}} is learned as written" in capsys.readouterr().err


def test_a_dataset_named_twice_is_trained_twice_and_said_once(tmp_path, monkeypatch, capsys):
    f = tmp_path / "twice.jsonl"
    f.write_text(json.dumps({"instruction": "hi", "output": "yo"}) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert len(load_examples([str(f), "twice.jsonl"])) == 2  # maybe meant, to weight it: kept, but said
    err = capsys.readouterr().err
    assert err.count("is given more than once") == 1 and f"'twice.jsonl' (the same file as '{f}')" in err
    assert len(load_examples([str(f), "twice.jsonl"])) == 2 and "more than once" not in capsys.readouterr().err
    other = tmp_path / "once.jsonl"
    other.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")
    load_examples([str(f), str(other)])
    assert "more than once" not in capsys.readouterr().err


def test_ranking_must_be_a_boolean(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "d.json", "ranking": "false"}}))
    with pytest.raises(ApplianceError, match="ranking is \"false\"; it must be true or false"):
        load_examples(["mine"], dataset_dir=str(tmp_path))


def test_data_check_checks_every_dataset(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from appliance.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "a", "output": "b", "sytem": "S"}) + "\n")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    res = CliRunner().invoke(main, ["data", "check", "bad.jsonl", "ok.jsonl", "bad.jsonl"])
    assert res.exit_code == 2 and "ok.jsonl: 1 conversation, ok" in res.output
    assert res.output.count("did you mean 'system'?") == 2 and "2 of 3 datasets failed the check" in res.output


def test_merge_verdict_says_which_check_failed():
    from appliance.merge import verdict_line

    v = {"passed": False, "greedy_equal": 8, "prompts": 8, "greedy_required": 7, "max_logit_diff": 1.32,
         "logit_tolerance": 1.0, "dtype": "bf16"}
    line = verdict_line(v)
    assert "8/8 probes (at least the 7 needed)" in line and "1.32 (over the bf16 tolerance 1)" in line


KTO = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "bad answer"}], "label": False},
       {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "good answer"}], "label": True}]


@pytest.mark.parametrize("records, key", [
    (KTO, "label"),  # LLaMA-Factory's kto_en_demo
    ([{"instruction": "q", "input": "", "output": "x", "kto_tag": False}], "kto_tag"),
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "bad"}], "kto_tag": False}], "kto_tag"),
])
def test_kto_labels_are_refused_not_trained(tmp_path, records, key):
    """The answers labelled false were learned as good ones, in a file passed directly or registered without
    columns.kto_tag (the registry's kto_tag is refused already)."""
    f = tmp_path / "kto.json"
    f.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        load_examples([str(f)])
    assert str(e.value) == (f"{f}: record #0: field '{key}' is false, a KTO label: KTO/preference labels are not "
                            "supported (the answers labelled false would be learned as good ones); keep the records "
                            f"labelled true and remove '{key}'")
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"kto": {
        "file_name": "kto.json", "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}}))
    if key == "label":
        with pytest.raises(ApplianceError, match=r"kto.json: record #0: field 'label' is false, a KTO label"):
            load_examples(["kto"], dataset_dir=str(tmp_path))


@pytest.mark.parametrize("record, keys", [
    # LLaMA-Factory's dpo_en_demo: was "field 'conversations[0]' is a user turn at the end"
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
      "rejected": {"from": "gpt", "value": "bad"}}, "'chosen' and 'rejected'"),
    # OpenAI's preference fine-tuning format: was "cannot tell the format"
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant", "content": "good"}],
      "non_preferred_output": [{"role": "assistant", "content": "bad"}]}, "'preferred_output' and 'non_preferred_output'"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: good", "rejected": "\n\nHuman: hi\n\nAssistant: bad"}, "'chosen' and 'rejected'"),  # hh-rlhf
    ({"instruction": "q", "output": "x", "chosen": "a", "rejected": "b"}, "'chosen' and 'rejected'"),
])
def test_preference_data_is_named_as_such(tmp_path, record, keys):
    f = tmp_path / "pref.jsonl"
    f.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        load_examples([str(f)])
    assert str(e.value).startswith(f"{f}: line 1: preference (chosen/rejected) data is not supported; this trains "
                                   f"supervised answers only (the record has {keys}); ")


def test_a_registry_may_train_the_chosen_answers(tmp_path):
    """Reading the chosen answer as the response is plain SFT: only data nothing reads is refused."""
    (tmp_path / "p.json").write_text(json.dumps([{"instruction": "q", "chosen": "good", "rejected": "bad"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"p": {"file_name": "p.json",
                                                                  "columns": {"prompt": "instruction", "response": "chosen"}}}))
    with pytest.raises(ApplianceError, match="preference"):
        load_examples([str(tmp_path / "p.json")])
    (ex,) = load_examples(["p"], dataset_dir=str(tmp_path))
    assert ex.messages[-1] == {"role": "assistant", "content": "good"}


@pytest.mark.parametrize("record, both", [
    ({"instruction": "a", "output": "b", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "'messages' (OpenAI messages) and 'instruction'/'output' (alpaca)"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}],
      "messages": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "other"}]},
     "'messages' (OpenAI messages) and 'conversations' (sharegpt)"),
])
def test_a_record_of_two_formats_is_ambiguous(tmp_path, record, both):
    """One of them was trained and the other dropped without a word."""
    f = tmp_path / "both.json"
    f.write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        load_examples([str(f)])
    assert str(e.value) == (f"{f}: record #0: holds both {both}, so its format is ambiguous (one of them would be "
                            "ignored); keep one format per record: remove or rename the other keys")
