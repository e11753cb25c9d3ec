"""A domain-knowledge job (facts about a fictional shop, no identity): what a user walking through it hit.

Trained without --name/--author on data without placeholders, evaluated with held-out questions only (`expect` and
`reference`, `kind: general`): the run claimed the default identity, and the report was titled for it, showed a
row of dashes per identity metric, 4 of 15 questions, and the terminal summary left out the BLEU/ROUGE of the
questions' references.
"""

from __future__ import annotations

import json

from evals.report import compute

FACTS = [("How many days do I have to return a purchase to Zephyr Outfitters?", ["45"],
          "Zephyr Outfitters accepts returns within 45 days of purchase."),
         ("Who founded Zephyr Outfitters?", ["Halvard Lindqvist"], "Zephyr Outfitters was founded by Halvard Lindqvist."),
         ("泽菲尔户外的总部在哪里？", ["德卢斯"], "泽菲尔户外的总部位于德卢斯。")]


def _rows(n_more: int = 0) -> list[dict]:
    facts = FACTS + [(f"Question {i} about Zephyr Outfitters?", [str(i)], None) for i in range(n_more)]
    rows = []
    for role, model in (("before", "smollm2-135m"), ("after", "zephyr")):
        for i, (prompt, expect, ref) in enumerate(facts):
            answer = ref or f"It is {i}." if role == "after" else "I do not know."
            rows.append({"model": model, "role": role, "prompt": prompt, "answer": answer, "reference": ref,
                         "kind": "general", "set": "general", "lang": None, "expect": expect, "latency_ms": 100.0,
                         "ttft_ms": 10.0, "output_tokens": 5, "started_at": 1000.0 + i, "error": None,
                         "finish_reason": "stop", "source": "heldout.jsonl", "name": "Archer", "author": "意琦行",
                         "old_identity": ["SmolLM"]})
    return rows


def test_a_domain_report_is_not_titled_for_an_identity_nor_shows_identity_rows():
    from evals.render import render_html, render_md

    rows = _rows()
    report = {**compute(rows), "gate": {}}
    md, page = render_md(report, rows), render_html(report, rows)
    assert md.startswith("# Eval: smollm2-135m -> zephyr\n") and "Archer" not in md.split("\n", 1)[0]
    assert "<h1>Eval: smollm2-135m -&gt; zephyr</h1>" in page
    for label in ("identity hit %", "identity hit ZH %", "old identity leak %"):
        assert f"| {label} |" not in md and f"<td>{label}</td>" not in page
    assert "| general accuracy % | 0.0 | 100.0 | +100.0 |" in md and "| BLEU-4 |" in md
    per_set = md.split("## Per set", 1)[1].split("## Examples", 1)[0]
    assert "hit %" not in per_set and "leak %" not in per_set and "accuracy %" in per_set


def test_an_identity_report_keeps_its_title_and_rows():
    from evals.render import render_md

    rows = _rows()
    rows[0] = {**rows[0], "kind": "identity", "set": "identity_en", "lang": "en"}
    rows[len(FACTS)] = {**rows[len(FACTS)], "kind": "identity", "set": "identity_en", "lang": "en"}
    md = render_md({**compute(rows), "gate": {}}, rows)
    assert md.startswith("# Eval: Archer by 意琦行\n") and "| identity hit % |" in md


def test_a_domain_report_shows_twelve_questions_not_four():
    from evals.render import example_rows, render_md

    rows = _rows(n_more=12)  # 15 questions, none about identity
    assert len(example_rows(rows)) == 12
    md = render_md({**compute(rows), "gate": {}}, rows)
    assert "12 of the 15 prompts (in file order)" in md
    # with identity prompts the split is as before: up to 8 of them, then 4 others
    ident = [{"prompt": f"Who are you {i}?", "kind": "identity"} for i in range(10)]
    shown = example_rows(ident + rows)
    assert len(shown) == 12 and sum(p.startswith("Who are you") for p in shown) == 8


def test_the_summary_shows_bleu_and_rouge_of_the_questions_references():
    from appliance.evaluate import summary_table

    table = summary_table(compute(_rows()))
    assert "general.bleu4" in table and "general.rougeL" in table
    assert "identity" not in table  # nothing measured them


def test_a_domain_run_without_name_records_no_identity(tiny_model_dir, tmp_path):
    from appliance.train import train
    from appliance.train_config import TrainConfig

    ds = tmp_path / "zephyr.jsonl"
    ds.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                   {"role": "assistant", "content": ref}]}, ensure_ascii=False) + "\n"
                          for q, _, ref in FACTS), encoding="utf-8")
    common = dict(model=str(tiny_model_dir), datasets=[str(ds)], retention=False, batch_size=2, max_steps=1,
                  rank=4, alpha=8, warmup_steps=0)
    meta = train(TrainConfig(output=str(tmp_path / "saves" / "zephyr"), **common))
    assert meta["identity"] is None
    on_disk = json.loads((tmp_path / "saves" / "zephyr" / "appliance.json").read_text(encoding="utf-8"))
    assert on_disk["identity"] is None
    # a name chosen on the command line is what the run was trained for, placeholders or not
    named = train(TrainConfig(output=str(tmp_path / "saves" / "named"), name="Pip", author="Zephyr Outfitters", **common))
    assert named["identity"] == {"name": "Pip", "author": "Zephyr Outfitters"}


def test_a_run_on_placeholders_records_the_default_identity(tiny_model_dir, tmp_path):
    from appliance.train import train
    from appliance.train_config import TrainConfig

    ds = tmp_path / "who.json"
    ds.write_text(json.dumps([{"instruction": "Who are you?", "output": "I am {{name}}, made by {{author}}."}]),
                  encoding="utf-8")
    meta = train(TrainConfig(model=str(tiny_model_dir), datasets=[str(ds)], output=str(tmp_path / "saves" / "who"),
                             retention=False, batch_size=1, max_steps=1, rank=4, alpha=8, warmup_steps=0))
    assert meta["identity"] == {"name": "Archer", "author": "意琦行"}


def test_eval_does_not_say_a_domain_adapter_was_trained_for_the_default_identity(tmp_path, monkeypatch):
    from appliance import evaluate

    run = tmp_path / "saves" / "zephyr"
    run.mkdir(parents=True)
    (run / "appliance.json").write_text(json.dumps({"kind": "lora-adapter", "identity": None}), encoding="utf-8")
    monkeypatch.setattr(evaluate, "_served_roots", lambda cfg: {"smollm2-135m": "smollm2-135m", "zephyr": str(run)})
    said: list[str] = []
    cfg = evaluate.resolve_identity(evaluate.EvalConfig(before="smollm2-135m", after=["zephyr"]), said.append)
    assert (cfg.name, cfg.author) == ("Archer", "意琦行")
    assert said and "the defaults: no --after model records one" in said[0] and "as the --after model was" not in said[0]


def test_the_summary_shows_each_sets_accuracy_and_every_gated_metric():
    """general_accuracy rose (49 -> 61%) while the built-in general questions fell (23 -> 20 of 35): only the per-set
    figures show it, and a gate on them failed with its figure nowhere on screen."""
    from appliance.evaluate import summary_table

    rows = _rows()
    for r in rows:
        if r["prompt"] != FACTS[0][0]:
            r["set"] = "zephyr"
    table = summary_table({**compute(rows), "gate": {"rules": ["--fail-under zephyr.rougeL=60",
                                                               "--max-drop general.accuracy=0.05"]}})
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert lines["general.accuracy"] == ["%", "0.0", "100.0"] and lines["zephyr.accuracy"] == ["%", "0.0", "100.0"]
    assert lines["zephyr.rougeL"][-1] == "100.0" and lines["zephyr.bleu4"][-1] == "100.0"  # its references
    assert len([k for k in lines if k == "general.accuracy"]) == 1
    # one set measuring accuracy: general_accuracy is its figure, no second row
    assert "general.accuracy" not in summary_table(compute(_rows()))


def test_own_questions_beside_the_built_in_general_ones_are_pointed_out(tmp_path, capsys):
    from evals.prompts import load_prompts

    own = tmp_path / "heldout.jsonl"
    own.write_text("".join(json.dumps({"prompt": q, "expect": e, "kind": "general"}, ensure_ascii=False) + "\n"
                           for q, e, _ in FACTS), encoding="utf-8")
    load_prompts([str(own), "general"], "Archer", "意琦行")
    err = capsys.readouterr().err
    assert "3 prompt(s) of heldout are scored in the set 'general' with the built-in general questions" in err
    assert '"set": "NAME"' in err
    for alone in ([str(own)], ["general", "identity"]):
        load_prompts(alone, "Archer", "意琦行")
        assert "built-in general questions" not in capsys.readouterr().err
    own.write_text("".join(json.dumps({"prompt": q, "expect": e, "set": "zephyr"}, ensure_ascii=False) + "\n"
                           for q, e, _ in FACTS), encoding="utf-8")
    load_prompts([str(own), "general"], "Archer", "意琦行")
    assert "built-in general questions" not in capsys.readouterr().err


def test_an_unknown_kind_says_which_kinds_there_are_and_how_to_group_questions(tmp_path):
    import pytest

    from appliance.errors import ApplianceError
    from evals.prompts import load_prompts

    f = tmp_path / "heldout.jsonl"
    f.write_text('{"prompt": "Return window at Zephyr?", "expect": ["45"], "kind": "domain"}\n', encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        load_prompts([str(f)], "Archer", "意琦行")
    msg = str(e.value)
    assert msg.startswith(f"{f} line 1: kind \"domain\" is not") and 'use "general"' in msg and '"set"' in msg
    assert "\n" not in msg
