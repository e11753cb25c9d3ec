"""Shared fixtures. Every test runs with APPLIANCE_HOME in a temporary directory.

``tiny_model_dir`` is a random 2-layer Llama with the embedded model's real tokenizer and chat
template (fast, offline). ``real_model_dir`` is the embedded SmolLM2-135M-Instruct pulled by
``make setup``; nothing here downloads.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# as the CLI does (appliance.hw.passive_openmp), before any test imports torch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
REAL_MODEL = Path(os.environ.get("APPLIANCE_TEST_MODEL", REPO / "models" / "smollm2-135m"))


@pytest.fixture(autouse=True)
def appliance_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    return home


def _require_real_model() -> Path:
    if not (REAL_MODEL / "config.json").is_file():
        pytest.fail(f"{REAL_MODEL} is missing: run `make setup` (it pulls the embedded model) before the tests")
    return REAL_MODEL


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, bf16 HF directory."""
    return _require_real_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = _require_real_model()
    out = tmp_path_factory.mktemp("tiny-model")
    tok = AutoTokenizer.from_pretrained(src)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.copy(src / "generation_config.json", out / "generation_config.json")
    return out
