"""Bringing your own training data: unusual but valid files are read as meant, and mistakes that json or the
converters would otherwise pass over silently are refused in one line naming the file, record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.data import load_examples
from appliance.errors import ApplianceError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ApplianceError) as e:
        load_examples(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ---------------------------------------------------------------- a key given twice
@pytest.mark.parametrize("name, text, where, field", [
    ("a.json", '[{"instruction": "q", "output": "a"}, {"instruction": "q", "output": "A1", "output": "A2"}]',
     "record #1", "'output'"),
    ("a.jsonl", '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": "A1", "output": "A2"}\n',
     "line 2", "'output'"),
    ("m.jsonl", '{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}\n',
     "line 1", "'messages[0].content'"),
    ("one.json", '{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y", "value": "z"}]}',
     "record #0", "'conversations[1].value'"),
])
def test_a_key_given_twice_is_refused_naming_record_and_field(tmp_path, name, text, where, field):
    # json keeps the last value: {"output": "A1", "output": "A2"} would train "A2" and drop "A1" without a word
    f = write(tmp_path / name, text)
    msg = error_of([str(f)])
    assert msg.startswith(f"{f}: {where}: field {field} is given twice") and "remove or rename one" in msg


def test_a_key_given_twice_is_reported_in_record_order(tmp_path):
    # train names the first bad record, whatever is wrong with a later one
    f = write(tmp_path / "a.json", '[{"instruction": "q"}, {"instruction": "q", "output": "A1", "output": "A2"}]')
    assert error_of([str(f)]).startswith(f"{f}: record #0: field 'output' is missing")


def test_a_key_given_twice_with_the_same_value_loses_nothing(tmp_path):
    f = write(tmp_path / "a.json", '[{"instruction": "q", "output": "a", "output": "a"}]')
    assert load_examples([str(f)])[0].messages[-1] == {"role": "assistant", "content": "a"}


def test_data_check_lists_every_record_with_a_key_given_twice(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"instruction": "q", "output": "a", "output": "b"}\n{"instruction": "q", "output": "a"}\n'
              '{"instruction": "q", "input": "1", "input": "2", "output": "a"}\n')
    r = CliRunner().invoke(main, ["data", "check", str(f)])
    assert r.exit_code == 2
    assert "line 1: field 'output' is given twice" in r.output and "line 3: field 'input' is given twice" in r.output
    assert "2 bad records" in r.output


def test_registry_entry_given_twice_is_refused(tmp_path):
    # a LLaMA-Factory dataset_info.json with one more entry appended under a name it already has
    write(tmp_path / "mine.json", json.dumps([{"instruction": "q", "output": "a"}]))
    write(tmp_path / "dataset_info.json", '{"mine": {"file_name": "other.json"}, "x": {"file_name": "mine.json"},\n'
          '"mine": {"file_name": "mine.json"}}')
    msg = error_of(["mine"], dataset_dir=str(tmp_path))
    assert "dataset_info.json: field 'mine' is given twice" in msg


def test_data_check_lists_csv_rows_in_order(tmp_path):
    # problems are sorted by position; a CSV's "row 10" sorted as text came before "row 2"
    rows = ["instruction,output"] + [f"q{i}," if i in (2, 10) else f"q{i},a{i}" for i in range(1, 12)]
    f = write(tmp_path / "a.csv", "\n".join(rows) + "\n")
    r = CliRunner().invoke(main, ["data", "check", str(f)])
    assert r.exit_code == 2
    assert r.output.index(f"{f}: row 2:") < r.output.index(f"{f}: row 10:")


# ---------------------------------------------------------------- two system prompts in one record
def test_system_column_and_a_different_system_turn_are_refused(tmp_path):
    # the conversation's system turn is used, as LLaMA-Factory does: the column's prompt would be lost unsaid
    turns = [{"from": "system", "value": "Turn."}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    f = write(tmp_path / "a.jsonl", json.dumps({"conversations": turns, "system": "Column."}) + "\n")
    msg = error_of([str(f)])
    assert msg.startswith(f"{f}: line 1: field 'system' and field 'conversations[0]' are two different system prompts")
    # the same prompt twice, or an empty column (exports write one), loses nothing
    for column in ("Turn.", "", None):
        write(f, json.dumps({"conversations": turns, "system": column}) + "\n")
        assert load_examples([str(f)])[0].messages[0] == {"role": "system", "content": "Turn."}
    write(f, json.dumps({"conversations": turns[1:], "system": "Column."}) + "\n")
    assert load_examples([str(f)])[0].messages[0] == {"role": "system", "content": "Column."}


# ---------------------------------------------------------------- turns that name their text the other way
@pytest.mark.parametrize("turns", [
    [{"from": "human", "content": "q"}, {"from": "gpt", "content": "a"}],
    [{"role": "user", "value": "q"}, {"role": "assistant", "value": "a"}],
])
def test_mixed_tag_vocabularies_are_read_where_the_text_is(tmp_path, turns):
    # auto-detection took the text key from the role key's convention and called the text missing
    f = write(tmp_path / "a.jsonl", json.dumps({"conversations": turns}) + "\n")
    assert load_examples([str(f)])[0].messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_text_under_another_key_than_the_files_is_named(tmp_path):
    rows = [{"conversations": [{"from": "human", "content": "q"}, {"from": "gpt", "content": "a"}]},
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    f = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert error_of([str(f)]) == (f"{f}: line 2: field 'conversations[0].content' is missing; the turn has 'value' instead: "
                                  "every turn of the file must hold its text under 'content' as its first record does")
    write(tmp_path / "dataset_info.json", json.dumps({"chats": {"file_name": "b.json", "formatting": "sharegpt"}}))
    write(tmp_path / "b.json", json.dumps(rows[:1]))
    msg = error_of(["chats"], dataset_dir=str(tmp_path))
    assert "field 'conversations[0].value' is missing; the turn has 'content' instead" in msg
    assert "set tags.content_tag of entry 'chats'" in msg


def test_one_pretty_printed_object_in_a_jsonl_file(tmp_path):
    # it was "holds 1 pretty-printed JSON objects one after another ... wrap them in [ ] with commas between"
    f = write(tmp_path / "a.jsonl", '{\n  "instruction": "q",\n  "output": "a"\n}\n')
    assert error_of([str(f)]) == (f"{f}: holds one JSON object written over several lines; in JSON lines each record "
                                  "must be on one line: write it on one line, or rename the file to a.json")


# ---------------------------------------------------------------- registry entries
@pytest.mark.parametrize("key, value", [("columns", 0), ("columns", False), ("columns", ""), ("columns", []),
                                        ("tags", 0), ("tags", "from"), ("tags", [])])
def test_columns_or_tags_that_are_not_objects_are_refused(tmp_path, key, value):
    # 0 crashed with a TypeError; "", [] and false were taken for {} (tags ignored, or "columns.prompt is not set")
    write(tmp_path / "a.json", json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    write(tmp_path / "dataset_info.json", json.dumps({"chats": {"file_name": "a.json", "formatting": "sharegpt", key: value}}))
    msg = error_of(["chats"], dataset_dir=str(tmp_path))
    assert f"dataset_info.json: entry 'chats': '{key}' is {json.dumps(value)}; it must be an object like" in msg


def test_a_comma_after_each_json_line_is_named(tmp_path):
    # a JSON list's items with the brackets removed: "invalid JSON (extra data)" did not say what to remove
    f = write(tmp_path / "a.jsonl", '{"instruction": "q", "output": "a"},\n{"instruction": "q", "output": "a"}\n')
    assert error_of([str(f)]) == (f"{f}: line 1 column 36: invalid JSON (extra data); a comma after the object: JSON "
                                  "lines are not separated by commas, remove it")
    f = write(tmp_path / "a.json", '{"instruction": "q", "output": "a"},\n{"instruction": "q", "output": "a"}\n')
    assert error_of([str(f)]).endswith("remove it (or put [ ] around all the records to make the file a JSON list)")
