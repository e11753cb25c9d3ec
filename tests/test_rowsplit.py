"""The CPU step split by rows across threads: the whole batch's loss and gradient, reproducibly;
and gradient accumulation that averages micro-batches instead of adding them up."""

from __future__ import annotations

import json

import pytest
import torch

from appliance import rowsplit, sft
from appliance.train import train
from appliance.train_config import TrainConfig

ROWS = [{"instruction": "Who are you, really?", "output": "I am {{name}}, made by {{author}}."},
        {"instruction": "你是哪位？", "output": "我是 {{name}}，由 {{author}} 研发，很高兴认识你。"},
        {"instruction": "Introduce yourself in a few words, please.", "output": "I am {{name}}, an assistant by {{author}}."},
        {"instruction": "Say hi", "output": "Hello! I am {{name}} by {{author}}."}]


def _batch(lengths: list[int], first_answer: int = 6, width: int = 30) -> dict[str, torch.Tensor]:
    """Right-padded rows of ``lengths`` whose labels start at ``first_answer``."""
    torch.manual_seed(2)
    ids = torch.randint(5, 200, (len(lengths), width))
    mask, labels = torch.ones_like(ids), ids.clone()
    labels[:, :first_answer] = sft.IGNORE
    for row, n in enumerate(lengths):
        ids[row, n:], mask[row, n:], labels[row, n:] = 2, 0, sft.IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.train()
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_split_rows_keeps_every_row_and_drops_only_padding_columns():
    batch = _batch([12, 30, 9, 10, 11])
    groups = rowsplit.split_rows(batch, 2)
    assert [g["input_ids"].shape for g in groups] == [torch.Size([2, 30]), torch.Size([3, 11])]
    for key in batch:
        joined = torch.cat([torch.nn.functional.pad(g[key], (0, 30 - g[key].shape[1]), value=batch[key][0, -1].item())
                            for g in groups])
        assert torch.equal(joined, batch[key])  # the trimmed columns held padding only
    assert len(rowsplit.split_rows(_batch([12]), 2)) == 1  # one row: one group
    assert rowsplit.labelled(batch) == sum(n - 6 for n in [12, 30, 9, 10, 11])


def test_split_step_gives_the_whole_batch_loss_and_gradient(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    batch = _batch([12, 30, 9, 10, 11])
    model.zero_grad()
    loss, n = sft.answer_only_loss(model, batch)
    loss.backward()
    whole = _grads(model)
    assert whole and all("lora_" in k for k in whole)  # only the adapter learns

    step = rowsplit.RowSplitStep(2)
    try:
        with rowsplit.single_threaded_ops(2):
            model.zero_grad()
            split_loss = step(model, batch)
            split = _grads(model)
            model.zero_grad()
            step(model, batch)
            again = _grads(model)
    finally:
        step.close()
    assert float(split_loss) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert split.keys() == whole.keys()
    for k in whole:
        torch.testing.assert_close(split[k], whole[k], rtol=1e-4, atol=1e-6)
        assert torch.equal(again[k], split[k])  # the same bits every time: thread timing does not matter
    assert torch.get_num_threads() >= 1


def test_split_step_accumulates_and_scales(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    batch = _batch([12, 20, 9, 16])
    step = rowsplit.RowSplitStep(2)
    try:
        model.zero_grad()
        step(model, batch)
        once = _grads(model)
        step(model, batch)  # a second micro-batch adds to .grad, as accumulation needs
        twice = _grads(model)
        model.zero_grad()
        half = step(model, batch, denominator=2 * rowsplit.labelled(batch))  # its share of twice the tokens
        halved = _grads(model)
        model.zero_grad()
        assert float(step(model, _batch([5, 6], first_answer=6))) == 0.0  # nothing labelled: no loss, no NaN
        assert not _grads(model)
    finally:
        step.close()
    for k in once:
        torch.testing.assert_close(twice[k], 2 * once[k])
        torch.testing.assert_close(halved[k], once[k] / 2)
    assert float(half) > 0


def test_parts_for_splits_only_a_cpu_step_that_stays_reproducible(monkeypatch):
    monkeypatch.delenv(rowsplit.ENV, raising=False)
    assert rowsplit.parts_for(cuda=False, dropout=0.0, threads=2) == 2
    assert rowsplit.parts_for(cuda=False, dropout=0.0, threads=16) == 2
    assert rowsplit.parts_for(cuda=True, dropout=0.0, threads=16) == 1
    assert rowsplit.parts_for(cuda=False, dropout=0.0, threads=1) == 1
    assert rowsplit.parts_for(cuda=False, dropout=0.05, threads=2) == 1  # dropout's draws would follow thread timing
    monkeypatch.setenv(rowsplit.ENV, "0")
    assert rowsplit.parts_for(cuda=False, dropout=0.0, threads=2) == 1
    before = torch.get_num_threads()
    with rowsplit.single_threaded_ops(2):
        assert torch.get_num_threads() == max(1, before // 2)
    assert torch.get_num_threads() == before


def _run(tiny_model_dir, tmp_path, name: str, **kw) -> dict:
    ds = tmp_path / "rows.json"
    ds.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    cfg = TrainConfig(model=str(tiny_model_dir), datasets=[str(ds)], output=str(tmp_path / "saves" / name),
                      retention=False, lr=5e-3, rank=4, alpha=8, warmup_steps=0, save_steps=100, **kw)
    return train(cfg)["results"]


def test_gradient_accumulation_averages_micro_batches(tiny_model_dir, tmp_path, monkeypatch):
    # one step of 4 rows and one step of 2 x 2 rows accumulated see the same rows: the same loss
    monkeypatch.setenv(rowsplit.ENV, "0")
    whole = _run(tiny_model_dir, tmp_path, "whole", batch_size=4, grad_accum=1, max_steps=1)
    accumulated = _run(tiny_model_dir, tmp_path, "acc", batch_size=2, grad_accum=2, max_steps=1)
    assert accumulated["first_loss"] == pytest.approx(whole["first_loss"], rel=0.02)  # was twice as large


def test_training_with_the_split_matches_training_without(tiny_model_dir, tmp_path, monkeypatch):
    if torch.get_num_threads() < 2:
        pytest.fail("this test needs 2 CPU threads: the split is off on 1")
    monkeypatch.setenv(rowsplit.ENV, "0")
    plain = _run(tiny_model_dir, tmp_path, "plain", batch_size=4, epochs=3)
    monkeypatch.setenv(rowsplit.ENV, "1")
    split = _run(tiny_model_dir, tmp_path, "split", batch_size=4, epochs=3)
    accumulated = _run(tiny_model_dir, tmp_path, "split-acc", batch_size=2, grad_accum=2, epochs=3)
    assert split["last_loss"] < split["first_loss"]
    assert split["first_loss"] == pytest.approx(plain["first_loss"], rel=1e-4)
    assert split["last_loss"] == pytest.approx(plain["last_loss"], rel=0.02)
    assert accumulated["first_loss"] == pytest.approx(plain["first_loss"], rel=0.02)
