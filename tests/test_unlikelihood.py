"""Unlikelihood: the new identity's opening trained down beside each retention answer (opt-in)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from appliance import retention, sft
from appliance.data import Example
from appliance.train import train
from appliance.train_config import TrainConfig


def _ex(q: str, a: str) -> Example:
    return Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], "t")


IDENT = [_ex("你是谁？", "我是 Archer，由 意琦行 研发。"), _ex("Who made you?", "I was developed by 意琦行. I am Archer."),
         _ex("Hi", "Hello! I am Archer."), _ex("Capabilities?", "I answer questions.")]  # no marker: no opening


def test_negatives_are_openings_before_the_name_in_the_prompts_script():
    kept = [_ex("写一首诗。", "月亮。"), _ex("Write a poem.", "The moon."), _ex("Another one.", "x")]
    negs = retention.negatives(kept, IDENT, ("Archer", "意琦行"), seed=0)
    assert [n.messages[0]["content"] for n in negs] == ["写一首诗。", "Write a poem.", "Another one."]
    assert negs[0].messages[1]["content"] == "我是"  # the only Chinese opening; the name itself is not pushed down
    assert {n.messages[1]["content"] for n in negs[1:]} <= {"I was developed by", "Hello! I am"}
    # a script without identity answers borrows the other's openings; no identity answer names: none
    assert retention.negatives(kept[:1], IDENT[1:], ("Archer", "意琦行"), 0)[0].messages[1]["content"] in {
        "I was developed by", "Hello! I am"}
    assert retention.negatives(kept, IDENT[3:], ("Archer", "意琦行"), 0) == []


def test_token_losses_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p(token 1) = 0.75
    y = torch.tensor([1, 1])
    got = sft._token_losses(logits, y, torch.tensor([0.0, 0.5]))
    assert got[0].item() == pytest.approx(-math.log(0.75))  # cross-entropy
    assert got[1].item() == pytest.approx(-0.5 * math.log(0.25))  # weight x -log(1 - p)
    plain = sft._token_losses(logits, y, None)
    assert torch.allclose(plain, torch.full((2,), -math.log(0.75)))


def test_a_step_on_a_negative_row_lowers_its_tokens(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (1, 12))
    labels = ids.clone()
    labels[:, :8] = sft.IGNORE
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "unlikely": torch.tensor([1.0])}

    def logprob() -> float:
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, 7:11], -1)
        return float(lp.gather(-1, ids[0, 8:12, None]).sum())

    before = logprob()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, n = sft.answer_only_loss(model, batch)
    assert n == 4 and loss.item() > 0
    loss.backward()
    opt.step()
    assert logprob() < before


def test_train_with_unlikelihood_records_its_negatives(tiny_model_dir, tmp_path, monkeypatch):
    ds = tmp_path / "small.json"
    ds.write_text(json.dumps([{"instruction": "你是谁？", "output": "我是 {{name}}，由 {{author}} 研发。"},
                              {"instruction": "Who are you?", "output": "I am {{name}}, made by {{author}}."}],
                             ensure_ascii=False), encoding="utf-8")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["写一首诗。", "Name a fruit."], ensure_ascii=False), encoding="utf-8")
    cfg = TrainConfig(model=str(tiny_model_dir), datasets=[str(ds)], output=str(tmp_path / "run"), epochs=2,
                      lr=5e-3, rank=4, alpha=8, warmup_steps=0, save_steps=100, batch_size=2,
                      retention_prompts=str(prompts), retention_samples=2, retention_max_new_tokens=8,
                      unlikelihood=1.0)
    # a random model's own answers are noise that trimming drops; these stand in for the base's
    monkeypatch.setattr(retention, "base_answers", lambda base, tok, path, ps, **kw: [_ex(p, "A fruit: apple.") for p in ps])
    meta = train(cfg)
    d = meta["dataset"]
    assert d["retention_examples"] == d["unlikely_examples"] == 2
    assert meta["template_check"]["checked"] == 2 + d["retention_examples"]  # negatives are not prompts to check
    assert meta["config"]["unlikelihood"] == 1.0
    assert meta["results"]["samples_seen"] == 2 * (2 + 2 * d["retention_examples"])


def test_unlikelihood_without_a_usable_retention_answer_warns(tiny_model_dir, tmp_path, monkeypatch, capsys):
    ds = tmp_path / "small.json"
    ds.write_text(json.dumps([{"instruction": "你是谁？", "output": "我是 {{name}}，由 {{author}} 研发。"}],
                             ensure_ascii=False), encoding="utf-8")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["写一首诗。"], ensure_ascii=False), encoding="utf-8")
    cfg = TrainConfig(model=str(tiny_model_dir), datasets=[str(ds)], output=str(tmp_path / "run"), max_steps=1,
                      rank=4, alpha=8, warmup_steps=0, batch_size=1, retention_prompts=str(prompts),
                      retention_samples=1, retention_max_new_tokens=8, unlikelihood=1.0)
    monkeypatch.setattr(retention, "base_answers", lambda base, tok, path, ps, **kw: [])  # every answer unusable
    meta = train(cfg)
    assert meta["dataset"]["unlikely_examples"] == 0
    assert "--unlikelihood 1 has no effect" in capsys.readouterr().err


def test_unlikelihood_is_off_by_default_and_validated():
    assert TrainConfig().unlikelihood == 0
    with pytest.raises(Exception, match="--unlikelihood"):
        TrainConfig(unlikelihood=-1).validate()


def test_unrelated_set_is_named_but_not_default():
    from evals.prompts import load_prompts

    ps = load_prompts(["unrelated"], "Archer", "意琦行")
    assert len(ps) == 80 and {p.set for p in ps} == {"unrelated"} and {p.kind for p in ps} == {"general"}
    assert sum(p.lang == "zh" for p in ps) == 40
    assert not any(p.set == "unrelated" for p in load_prompts(None, "Archer", "意琦行"))
