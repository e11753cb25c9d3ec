"""Found by walking `appliance eval --prompts` with a user's own prompt files: prompts typed with odd white space
or full-width letters, phrasings the identity rule missed, GSM8K answers, a `%` in a gate, a CSV saved with
semicolons, and a placeholder typo in a record's history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.evaluate import once_each
from evals.prompts import load_prompt_file
from evals.report import parse_rules
from evals.selfref import is_self_reference

NAME, AUTHOR = "Archer", "意琦行"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("prompt", [
    "who  are   you",  # a double space: "who are you" was found, this was general
    "Who\tare you?",
    "Who are\u00a0you?",  # a no-break space pasted from a web page
    "Ｗｈｏ ａｒｅ ｙｏｕ？",  # full-width letters, as a Chinese input method types them
    "What  is your   name?",
    "你\u3000是谁",  # an ideographic space
    "你 是 谁",
    "你叫 什么名字",
])
def test_white_space_and_full_width_do_not_hide_a_self_question(prompt):
    assert is_self_reference(prompt)


@pytest.mark.parametrize("prompt", [
    "Explain what you are.", "Describe the AI you are.", "Tell me something about you.", "Name yourself.",
    "What name were you given?", "What is this assistant called?", "Hello, what is this AI called?",
    "你谁？", "请问您是？", "意琦行开发了你吗？", "是OpenAI训练了你吧",
])
def test_more_self_questions(prompt):
    assert is_self_reference(prompt)


@pytest.mark.parametrize("prompt", [
    "Translate into French:  who are you", "Who  created Linux?", "Explain what you are doing.",
    "Tell me about you and your wife.", "Name yourself the winner", "What name was the ship given?",
    "What is the model called in the paper?", "Explain what quarks are.", "What is this flower called?",
    "你谁也不信？", "这本书改变了你吗？", "妈妈做了你爱吃的菜吗？", "他是谁？",
])
def test_near_misses_stay_general(prompt):
    assert not is_self_reference(prompt)


def test_unlabelled_prompt_with_double_space_is_an_identity_prompt(tmp_path):
    """Scored as general, the trained answer "I am Archer ..." counted as a name leak."""
    f = _jsonl(tmp_path / "p.jsonl", [{"prompt": "who  are   you"}, {"prompt": "Ｗｈａｔ ｉｓ ｙｏｕｒ ｎａｍｅ？"}])
    assert [(p.kind, p.set) for p in load_prompt_file(f, NAME, AUTHOR)] == [("identity", "identity_en")] * 2


def test_gsm8k_final_answer_is_expect(tmp_path):
    """GSM8K's answer is a worked solution ending "#### 72": scored by BLEU against it, accuracy was unmeasured."""
    f = _jsonl(tmp_path / "gsm.jsonl", [
        {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"},
        {"prompt": "What is 2+2?", "answer": "#### 4"},
        {"prompt": "What is 3+3?", "answer": "6\n#### 6", "expect": ["six"]},  # its own expect wins
        {"prompt": "Write a haiku.", "answer": "Snow falls #### softly"},  # no final-answer line
    ])
    p = load_prompt_file(f, NAME, AUTHOR)
    assert (p[0].expect, p[0].reference, p[0].kind, p[0].set) == (["72"], None, "general", "general")
    assert (p[1].expect, p[1].reference) == (["4"], None)
    assert (p[2].expect, p[2].reference) == (["six"], "6\n#### 6")
    assert (p[3].expect, p[3].reference, p[3].set) == ([], "Snow falls #### softly", "open")


@pytest.mark.parametrize("spec, needle", [
    ("identity_hit_rate=95%", "no % sign; rates are 0-1: write identity_hit_rate=0.95"),
    ("identity_zh.hit_rate=50 %", "rates are 0-1: write identity_zh.hit_rate=0.5"),
    ("identity.bleu4=86.1%", "no % sign; write identity.bleu4=86.1"),
])
def test_percent_sign_in_a_gate_says_how_to_write_it(spec, needle):
    with pytest.raises(ApplianceError, match=needle.replace(".", r"\.")):
        parse_rules(fail_under=[spec])


def test_percent_gate_through_the_cli_exits_2(tmp_path):
    res = CliRunner().invoke(main, ["eval", "--before", "m", "--prompts", "identity", "--output", str(tmp_path / "r"),
                                    "--fail-under", "identity_hit_rate=95%"])
    assert res.exit_code == 2 and "write identity_hit_rate=0.95" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, sep", [("prompt;expect\nWhat is 2+2?;4\n", ";"), ("prompt\tkind\nhi\tgeneral\n", "\t")])
def test_csv_with_semicolons_or_tabs_says_so(tmp_path, text, sep):
    f = tmp_path / "p.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ApplianceError, match=r"p\.csv row 1: one column named .*separates its cells with ';' or tabs; "
                                             "save it comma-separated"):
        load_prompt_file(f, NAME, AUTHOR)


def test_placeholder_typo_in_history_is_noted(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"prompt": "And now?", "history": [
        {"role": "user", "content": "hi {{nmae}}"}, {"role": "assistant", "content": "hi"}]}])
    said = []
    once_each(load_prompt_file(f, NAME, AUTHOR), said.append)
    assert any("{{nmae}}" in s and "sent as written" in s for s in said)


def test_identity_prompt_in_another_latin_language_without_lang_is_noted(tmp_path):
    """"Hola, ¿quién eres?" with a {{name}} reference went into identity_en without a word."""
    f = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Hola, ¿quién eres?", "reference": "Soy {{name}}"},
                                      {"prompt": "¿Quién te creó?", "reference": "{{author}}", "lang": "es"},
                                      {"prompt": "Who are you?"}])
    prompts = load_prompt_file(f, NAME, AUTHOR)
    assert [p.set for p in prompts] == ["identity_en", "identity_es", "identity_en"]
    said = []
    once_each(prompts, said.append)
    notes = [s for s in said if "counted as English" in s]
    assert len(notes) == 1 and "p.jsonl line 1" in notes[0] and "line 2" not in notes[0] and "line 3" not in notes[0]


def test_white_space_only_answers_are_said_to_be_so():
    """Line breaks alone were noted as "empty": the model did produce tokens (a template or stop problem)."""
    from appliance.evaluate import answer_notes

    rows = [{"answer": "", "error": None}, {"answer": "\n\n", "error": None}, {"answer": "Paris", "error": None}]
    assert answer_notes(rows)[0].startswith("2 of 3 answers are empty (1 of them white space only) (scored as misses)")
    assert answer_notes(rows[:1])[0].startswith("1 of 1 answers are empty (scored as misses)")


def test_kind_in_any_case_is_read(tmp_path):
    """`"kind": "Identity"` (a spreadsheet's capitalized column) was refused as not "identity" or "general"."""
    f = tmp_path / "k.jsonl"
    f.write_text('{"prompt": "Hi there", "kind": "Identity"}\n{"prompt": "Who are you?", "kind": " GENERAL "}\n',
                 encoding="utf-8")
    assert [p.kind for p in load_prompt_file(f, "Archer", "意琦行")] == ["identity", "general"]
    f.write_text('{"prompt": "Hi", "kind": "domain"}\n', encoding="utf-8")
    with pytest.raises(ApplianceError, match='kind "domain" is not "identity" or "general"'):
        load_prompt_file(f, "Archer", "意琦行")
