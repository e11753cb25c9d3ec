"""GPU-oriented training paths, checked on CPU: token-budget batches and the chunked answer loss."""

from __future__ import annotations

import json

import pytest
import torch

from appliance import sft
from appliance.train import train
from appliance.train_config import TrainConfig

SMALL = [{"instruction": "Who are you, really?", "output": "I am {{name}}, made by {{author}}."},
         {"instruction": "你是哪位？", "output": "我是 {{name}}，由 {{author}} 研发。"},
         {"instruction": "Introduce yourself in a few words, please.", "output": "I am {{name}}, an assistant by {{author}}."},
         {"instruction": "Say hi", "output": "Hello! I am {{name}} by {{author}}."},
         {"instruction": "What is your name?", "output": "My name is {{name}}."}]


@pytest.mark.parametrize("budget", [64, 100, 1000])
def test_token_batches_cover_every_sample_once_within_budget(budget):
    lengths = [10, 50, 12, 49, 200, 11, 30, 31, 64, 5]
    batches = sft.token_batches(lengths, budget, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= budget  # rows x longest
    assert sft.token_batches(lengths, budget, seed=3) == batches  # seeded
    if budget == 1000:
        assert len(batches) < 4  # a large budget packs many samples per batch


def test_chunked_answer_loss_equals_the_plain_loss_and_gradients(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (3, 24))
    labels = ids.clone()
    labels[:, :9] = sft.IGNORE
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def run() -> tuple[float, int, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss, n = sft.answer_only_loss(model, batch)
        loss.backward()
        return float(loss.detach()), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain, n1, g1 = run()
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(sft, "LOGITS_CHUNK_ELEMENTS", vocab * 5)  # 45 answer tokens -> 9 chunks of 5
    chunked, n2, g2 = run()
    assert n1 == n2 == 45
    assert chunked == pytest.approx(plain, rel=1e-6)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6)


LENGTHS = [30, 24, 27, 30, 22, 29, 25, 30]  # MIN_SHARED_ROWS rows


def _prefixed_batch(shared: int, first_answer: int, rows: int = len(LENGTHS)) -> dict[str, torch.Tensor]:
    """Right-padded rows of LENGTHS opening with the same ``shared`` tokens."""
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (rows, 30))
    ids[:, :shared] = ids[0, :shared]
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :first_answer] = sft.IGNORE
    for row, n in enumerate(LENGTHS[:rows]):
        ids[row, n:], mask[row, n:], labels[row, n:] = 0, 0, sft.IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_shared_prefix_stops_before_the_first_answer_and_skips_what_does_not_pay():
    assert sft.MIN_SHARED_ROWS == len(LENGTHS)
    assert sft.shared_prefix(_prefixed_batch(shared=12, first_answer=20)) == 12
    assert sft.shared_prefix(_prefixed_batch(shared=12, first_answer=10)) == 9  # its last output predicts an answer token
    assert sft.shared_prefix(_prefixed_batch(shared=sft.MIN_SHARED_PREFIX - 1, first_answer=20)) == 0
    assert sft.shared_prefix(_prefixed_batch(shared=12, first_answer=20, rows=4)) == 0  # too few rows to pay


def test_shared_prefix_loss_equals_the_plain_loss_and_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = _prefixed_batch(shared=12, first_answer=16)

    def run(share: bool) -> tuple[float, int, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss, n = sft.answer_only_loss(model, batch, share_prefix=share)
        loss.backward()
        return float(loss.detach()), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    calls: list[int] = []
    model.get_decoder().register_forward_hook(lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape[1]),
                                              with_kwargs=True)
    plain, n1, g1 = run(False)
    shared, n2, g2 = run(True)
    assert calls == [30, 12, 30 - 12]  # one pass; then the opening once and the rest after it
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    checkpointed, _, _ = run(True)
    assert calls[3:] == [30]  # checkpointing keeps no KV cache to share: one full pass
    assert checkpointed == pytest.approx(plain, rel=1e-5)
    assert n1 == n2 == sum(n - 16 for n in LENGTHS)
    assert shared == pytest.approx(plain, rel=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 0  # the shared opening's layers get their gradient too
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6)


def test_train_with_token_budget_and_checkpointing_keeps_the_lora_contract(tiny_model_dir, tmp_path):
    ds = tmp_path / "small.json"
    ds.write_text(json.dumps(SMALL, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "saves" / "run"
    cfg = TrainConfig(model=str(tiny_model_dir), datasets=[str(ds)], output=str(out), retention=False, epochs=6,
                      lr=5e-3, rank=4, alpha=8, warmup_steps=0, save_steps=100, batch_tokens=160,
                      gradient_checkpointing=True)
    meta = train(cfg)
    r = meta["results"]
    assert r["last_loss"] < r["first_loss"], "loss must fall"
    assert r["samples_seen"] == 5 * 6  # every sample once per epoch, whatever the batch sizes
    assert r["steps"] < 5 * 6 and r["steps"] % 6 == 0  # several samples per step, same batches every epoch
    saved = json.loads((out / "appliance.json").read_text(encoding="utf-8"))
    assert saved["config"]["batch_tokens"] == 160 and saved["config"]["gradient_checkpointing"] is True
    from safetensors.torch import load_file

    lora_b = {k: v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # checkpointed layers got gradients, every one


def test_batch_tokens_is_validated():
    from appliance.errors import ApplianceError

    with pytest.raises(ApplianceError, match="--batch-tokens"):
        TrainConfig(batch_tokens=10).validate()


def test_lora_layers_adapts_only_the_last_layers(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from appliance.errors import ApplianceError

    ds = tmp_path / "small.json"
    ds.write_text(json.dumps(SMALL, ensure_ascii=False), encoding="utf-8")
    n = AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers
    assert n >= 2
    out = tmp_path / "saves" / "top"
    meta = train(TrainConfig(model=str(tiny_model_dir), datasets=[str(ds)], output=str(out), retention=False, epochs=4,
                             lr=5e-3, rank=4, alpha=8, warmup_steps=0, save_steps=100, lora_layers=1))
    assert meta["results"]["last_loss"] < meta["results"]["first_loss"]
    assert meta["lora"]["layers"] == [n - 1] and "q_proj" in meta["lora"]["target_modules"]
    keys = load_file(str(out / "adapter_model.safetensors")).keys()
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k in keys}
    assert layers == {n - 1} and any("mlp.down_proj" in k for k in keys)  # every linear of that layer, no other layer
    with pytest.raises(ApplianceError, match="--lora-layers"):
        train(TrainConfig(model=str(tiny_model_dir), datasets=[str(ds)], output=str(tmp_path / "x"), retention=False,
                          lora_layers=n + 1))


@pytest.mark.parametrize("value, n_layers, expected", [
    (0, 30, None),  # every layer
    (0.75, 30, list(range(8, 30))),  # the default: the top 22 of SmolLM2's 30
    (0.75, 24, list(range(6, 24))),  # the same share of a 24-layer model
    (0.75, 2, [1]),  # rounded down
    (0.1, 2, [1]),  # but at least one layer
    (0.29, 100, list(range(71, 100))),  # 0.29 x 100 is 28.999... in floating point
    (22, 30, list(range(8, 30))),  # a count
    (22.0, 30, list(range(8, 30))),  # a count given as a float (click's type)
    (30, 30, None),  # every layer, as a count
])
def test_lora_layers_share_or_count(value, n_layers, expected):
    assert TrainConfig(lora_layers=value).adapted_layers(n_layers) == expected


def test_lora_layers_is_validated():
    from appliance.errors import ApplianceError

    assert TrainConfig(lora_layers=22.0).lora_layers == 22 and isinstance(TrainConfig(lora_layers=22.0).lora_layers, int)
    for bad in (-1, 1.5, 22.5):
        with pytest.raises(ApplianceError, match="--lora-layers"):
            TrainConfig(lora_layers=bad).validate()
    with pytest.raises(ApplianceError, match="--lora-layers 31: the model has 30 decoder layers"):
        TrainConfig(lora_layers=31).adapted_layers(30)
