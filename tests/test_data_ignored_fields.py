"""Data users bring: fields training cannot use are refused (tools, media, misspelt optional fields), odd
placeholders and string booleans are named, every dataset is checked; and a merge says which check failed."""

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
])
def test_fields_that_would_be_ignored_are_refused(tmp_path, record, needle):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        load_examples([str(f)])
    assert needle in str(e.value) and "d.jsonl: line 1" in str(e.value) and "\n" not in str(e.value)


def test_a_users_own_fields_and_empty_tools_are_left_alone(tmp_path):
    rows = [{"instruction": "hi", "output": "yo", "id": 3, "category": "greeting", "tools": ""},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "tools": "[]", "images": []}]
    files = []
    for i, row in enumerate(rows):
        files.append(tmp_path / f"d{i}.jsonl")
        files[-1].write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert [m["content"] for ex in load_examples([str(f) for f in files]) for m in ex.messages] == ["hi", "yo", "hi", "yo"]


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
