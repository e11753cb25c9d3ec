"""Walk-through findings on `train --config` files and the model registry (each test failed before its fix)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import models
from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.train_config import TrainConfig


def _cfg(tmp_path: Path, text: str) -> TrainConfig:
    f = tmp_path / "run.yaml"
    f.write_text(text, encoding="utf-8")
    cfg = TrainConfig.from_sources(str(f))
    cfg.validate()
    return cfg


def test_a_string_option_takes_a_plain_scalar_as_written(tmp_path):
    """YAML 1.1 reads `name: 007` as the int 7 and `author: 2024-01-01` as a date: the name became "7" and the
    author an error about datetime.date."""
    cfg = _cfg(tmp_path, "name: 007\nauthor: 2024-01-01\ntarget_modules: 0x1F\nretention_prompts: 1_000\n")
    assert (cfg.name, cfg.author, cfg.target_modules, cfg.retention_prompts) == ("007", "2024-01-01", "0x1F", "1_000")
    assert _cfg(tmp_path, "name: '007'\n").name == "007" and _cfg(tmp_path, "name: 1e3\n").name == "1e3"
    with pytest.raises(ApplianceError, match=r"run.yaml: name must be a string \(got True\); quote it \(\"yes\"\)"):
        _cfg(tmp_path, "name: yes\n")


def test_numbers_are_read_in_decimal_and_exactly(tmp_path):
    """`seed: 010` was octal 8 (YAML 1.1), a big int went through a float, and `retention: 1` was refused while
    `retention: "1"` was accepted."""
    assert _cfg(tmp_path, "seed: 010\n").seed == 10
    assert _cfg(tmp_path, "seed: 0x10\n").seed == 16  # hex is meant as hex
    assert _cfg(tmp_path, "max_length: 12345678901234567890123\n").max_length == 12345678901234567890123
    assert _cfg(tmp_path, "lr: 1e-3\nepochs: 2\n").lr == 1e-3  # 1e-3 is a string in YAML 1.1
    assert _cfg(tmp_path, "retention: 0\n").retention is False and _cfg(tmp_path, "retention: 1\n").retention is True
    with pytest.raises(ApplianceError, match="retention must be true or false"):
        _cfg(tmp_path, "retention: 2\n")


@pytest.mark.parametrize("key", ["model", "output"])
def test_an_empty_model_or_output_in_the_file_names_the_file(tmp_path, key):
    """`model: ""` failed as "--model is empty", a flag never typed."""
    with pytest.raises(ApplianceError, match=rf"^--config .*run.yaml: {key} is empty; give "):
        _cfg(tmp_path, f'{key}: ""\n')
    with pytest.raises(ApplianceError, match=rf"^--{key} is empty; give "):
        TrainConfig.from_sources(None, **{key: " "}).validate()


def test_a_misspelt_key_is_pointed_at(tmp_path):
    with pytest.raises(ApplianceError, match=r"unknown option\(s\) LR, epoch \(did you mean lr, epochs\?\); valid keys"):
        _cfg(tmp_path, "epoch: 2\nLR: 0.1\n")
    with pytest.raises(ApplianceError, match=r"unknown option\(s\) bogus; valid keys"):
        _cfg(tmp_path, "bogus: 2\n")


def test_the_resolved_config_reads_back_as_the_same_config(tmp_path):
    import yaml

    cfg = _cfg(tmp_path, "name: 007\nseed: 010\nlr: 2e-4\ndatasets: identity, x.jsonl\n")
    again = _cfg(tmp_path, yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
    assert again.to_dict() == cfg.to_dict()


def test_registry_aliases_match_in_any_case_and_a_typo_gets_a_suggestion():
    assert models.registry_name("SmolLM2-135m-instruct") == "smollm2-135m"
    assert models.registry_name("huggingfacetb/smollm2-135m-instruct") == "smollm2-135m"
    with pytest.raises(ApplianceError, match=r"^--model smolm2-135m: unknown model \(did you mean smollm2-135m\?\)"):
        models.resolve("smolm2-135m")
    with pytest.raises(ApplianceError, match=r"^unknown model 'smolm2-135m' \(did you mean smollm2-135m\?\)"):
        models.pull("smolm2-135m")
    with pytest.raises(ApplianceError, match=r"^unknown model 'zzz': "):
        models.pull("zzz")


def test_models_list_does_not_offer_a_killed_merge_s_temporary_folder(tiny_model_dir, appliance_home):
    """`kill -9` during a merge leaves models/.NAME.tmp-PID (swept by the next merge): it was listed as a model."""
    shutil.copytree(tiny_model_dir, appliance_home / "models" / ".archer-merged.tmp-4242")
    shutil.copytree(tiny_model_dir, appliance_home / "models" / "mine")
    names = [row["name"] for row in models.list_models()]
    assert "mine" in names and not [n for n in names if n.startswith(".")]


def test_an_unreachable_hub_model_is_never_sent_to_models_pull(monkeypatch):
    """`--model qwen2.5-0.5b-instruct` offline said to run `appliance models pull qwen2.5-0.5b-instruct`, which refuses
    hub models."""
    import httpx

    def offline(*a, **k):
        raise httpx.ConnectError("Name or service not known")

    monkeypatch.setattr(httpx, "head", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ref = models.resolve("qwen2.5-0.5b-instruct")
    assert not ref.local
    with pytest.raises(ApplianceError) as e:
        models.ensure_fetchable(ref, "qwen2.5-0.5b-instruct")
    assert "models pull" not in str(e.value) and str(e.value).endswith("pass a local model directory")
    with pytest.raises(ApplianceError, match="comes from the Hugging Face hub"):  # what that advice led to
        models.pull("qwen2.5-0.5b-instruct")


def test_config_errors_are_one_line_with_exit_2(tmp_path):
    for text in ("- lr: 1\n", "lr:\n\t1e-3\n", "lr: 1\nlr: 2\n", "name: yes\n", 'model: ""\n'):
        f = tmp_path / "c.yaml"
        f.write_text(text, encoding="utf-8")
        res = CliRunner().invoke(main, ["train", "--config", str(f), "--output", str(tmp_path / "o")])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --config {f}"), res.output
    assert not (tmp_path / "o").exists()


def test_a_model_or_dataset_dir_set_in_the_file_is_named_by_the_file_when_it_fails(tmp_path):
    """`model: nosuch` in a --config file failed as "--model nosuch: unknown model": a flag the user never typed."""
    f = tmp_path / "c.yaml"
    for text, key in (("model: smollm2-13m\n", "model"), (f"dataset_dir: {tmp_path / 'none'}\n", "dataset_dir")):
        f.write_text(text, encoding="utf-8")
        res = CliRunner().invoke(main, ["train", "--config", str(f), "--output", str(tmp_path / "o")])
        assert res.exit_code == 2 and res.output.startswith(f"error: --config {f}: {key} "), res.output
    # the same value typed as a flag is still named by its flag
    res = CliRunner().invoke(main, ["train", "--model", "smollm2-13m", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.startswith("error: --model smollm2-13m: unknown model"), res.output
    assert not (tmp_path / "o").exists()


def test_the_default_output_follows_the_name(tmp_path):
    """`train --name Nova` wrote saves/archer (while `pipeline` and `eval` use saves/nova, reports/nova), so
    `up --adapter saves/nova` found nothing."""
    assert TrainConfig.from_sources(None).output == "saves/archer"
    assert TrainConfig.from_sources(None, name="Nova Lite").output == "saves/nova-lite"
    assert TrainConfig.from_sources(None, name="小星").output == "saves/小星"
    assert TrainConfig.from_sources(None, name="Nova", output="runs/x").output == "runs/x"  # a given --output wins
    assert _cfg(tmp_path, "name: Vega\n").output == "saves/vega"
    assert _cfg(tmp_path, "name: Vega\noutput: runs/v\n").output == "runs/v"
    res = CliRunner().invoke(main, ["train", "--name", "a/b"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--name a/b: cannot name the default --output folder" in res.output and "give --output" in res.output
    assert "[default: saves/<name>" in CliRunner().invoke(main, ["train", "--help"]).output
