"""The self-reference rule that decides an unlabelled prompt's kind, on phrasings it was not built from.

tests/data/self_reference*.jsonl hold prompts written apart from the built-in sets, labelled by
hand: "self" when the user asks the assistant about itself (who or what it is, its name, who made
it, where it comes from, which model it is, what it can do), else hard negatives that say "you"
or ask who made something else. Yes/no questions about one capability ("Can you browse the
internet?") are not self-questions here: their right answer need not name the assistant, so scoring
them by the identity hit rate would be wrong (docs/eval.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.selfref import is_self_reference

# self_reference.jsonl, plus later rounds in self_reference_*.jsonl (self_reference_review.jsonl: a tester's
# misses and false positives, and near-misses written before the rules were changed for them)
HELD_OUT = sorted((Path(__file__).parent / "data").glob("self_reference*.jsonl"))
ROWS = [json.loads(line) for path in HELD_OUT for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
REPO = Path(__file__).resolve().parents[1]


def test_held_out_set_is_balanced():
    """Both labels and both scripts are represented, so the test below checks recall and precision."""
    zh = [r for r in ROWS if any("\u4e00" <= c <= "\u9fff" for c in r["prompt"])]
    assert len(ROWS) >= 200 and {r["self"] for r in zh} == {True, False}
    assert {r["self"] for r in ROWS if r not in zh} == {True, False}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["prompt"][:40])
def test_held_out_phrasings(row):
    assert is_self_reference(row["prompt"]) is row["self"]


@pytest.mark.parametrize("path", ["data/retention_prompts.json"])
def test_general_instructions_are_not_self_reference(path):
    """The retention prompts are everyday questions and instructions: none is about the assistant."""
    prompts = json.loads((REPO / path).read_text(encoding="utf-8"))
    assert [p for p in prompts if is_self_reference(p)] == []


def test_unrelated_set_is_not_self_reference():
    rows = [json.loads(line) for line in (REPO / "evals/prompts/unrelated.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows if is_self_reference(r["prompt"])] == []


def test_training_questions_that_name_the_assistant_are_self_reference():
    """Every training question of data/identity.json but greetings and bare instructions asks about the assistant."""
    records = json.loads((REPO / "data/identity.json").read_text(encoding="utf-8"))
    missed = [r["instruction"] for r in records if not is_self_reference(r["instruction"])]
    # greetings ("你好", "Good morning!") and bare instructions carry no question about the assistant:
    # their kind comes from the {{name}} in their reference, not from the prompt
    assert len(missed) <= 45, missed
    assert not [m for m in missed if any(w in m.lower() for w in ("who", "name", "谁", "名字", "开发", "made", "model"))]
