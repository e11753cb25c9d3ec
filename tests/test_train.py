"""Training: label masking, the LoRA contract, metadata, atomic output and resume, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.sft import IGNORE, encode
from appliance.train import staging_dir, train
from appliance.train_config import TrainConfig

SMALL = [{"instruction": "Who are you, really?", "output": "I am {{name}}, made by {{author}}."},
         {"instruction": "你是哪位？", "output": "我是 {{name}}，由 {{author}} 研发。"},
         {"instruction": "Introduce yourself.", "output": "I am {{name}}, an assistant by {{author}}."},
         {"instruction": "Say hi", "output": "Hello! I am {{name}} by {{author}}."}]


@pytest.fixture
def small_ds(tmp_path) -> str:
    p = tmp_path / "small.json"
    p.write_text(json.dumps(SMALL, ensure_ascii=False), encoding="utf-8")
    return str(p)


def _cfg(model: Path, out: Path, ds: str, **kw) -> TrainConfig:
    base = dict(model=str(model), datasets=[ds], output=str(out), retention=False, batch_size=2, epochs=3,
                lr=5e-3, rank=4, alpha=8, save_steps=2, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def test_labels_cover_only_answers_and_prompt_matches_serving(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是 Archer"}]
    enc = encode(tok, msgs, 512)
    learned = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert learned == "Hello there<|im_end|>我是 Archer<|im_end|>"
    assert enc.prompt_matches_serving
    # the tokens before the first answer are what vLLM produces from the rendered prompt
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(lab == IGNORE for lab in enc.labels[:n]) and enc.labels[n] != IGNORE
    assert "SmolLM" in tok.decode(enc.input_ids[:n])  # the template's default system prompt is kept


def test_truncation_without_answer_is_dropped(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert encode(tok, [{"role": "user", "content": "x " * 50}, {"role": "assistant", "content": "y"}], 16) is None


def test_lora_contract_and_metadata(tiny_model_dir, small_ds, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "saves" / "run"
    meta = train(_cfg(tiny_model_dir, out, small_ds))
    r = meta["results"]
    assert r["last_loss"] < r["first_loss"], "loss must fall"
    # metadata describes the run so merge/up/eval need only the directory
    on_disk = json.loads((out / "appliance.json").read_text(encoding="utf-8"))
    assert on_disk["kind"] == "lora-adapter" and on_disk["base_model"]["path"] == str(tiny_model_dir)
    assert on_disk["lora"]["r"] == 4 and "q_proj" in on_disk["lora"]["target_modules"]
    assert on_disk["identity"] == {"name": "Archer", "author": "意琦行"}
    assert on_disk["dataset"]["fingerprint"].startswith("sha256:") and on_disk["dataset"]["examples"] == 4
    assert on_disk["template_check"] == {"checked": 4, "mismatched": 0}
    assert on_disk["versions"]["peft"] and on_disk["config"]["lr"] == 5e-3
    for f in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "trainer_log.jsonl", "loss.png"):
        assert (out / f).is_file(), f
    # docs/run-directory.md lists everything the run directory holds (peft's README.md model card was missing)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "run-directory.md").read_text(encoding="utf-8")
    listing = doc.split("```", 2)[1]
    for f in out.iterdir():
        assert f.name in listing, f"{f.name} is not in docs/run-directory.md"
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert any("loss" in x and x["tokens_per_s"] > 0 for x in rows)
    assert not staging_dir(out).exists()
    # base weights frozen, adapter weights moved
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    peft = PeftModel.from_pretrained(base, out)
    moved = 0
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            moved += int(p.abs().sum() > 0)  # lora_B starts at zero
        elif "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, ref[key]), f"base weight changed: {name}"
    assert moved > 0


def test_qlora_trains_a_4bit_base_and_saves_a_plain_lora_adapter(tiny_model_dir, small_ds, tmp_path, monkeypatch):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen = []
    from appliance import train as train_mod

    real = train_mod._load_model

    def spy(cfg, path, cuda):
        model = real(cfg, path, cuda)
        seen.append(sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()))
        return model

    out = tmp_path / "saves" / "q"
    monkeypatch.setattr(train_mod, "_load_model", spy)
    meta = train(_cfg(tiny_model_dir, out, small_ds, method="qlora"))
    assert seen and seen[0] > 0, "the base must be loaded in 4 bit (bitsandbytes Linear4bit layers)"
    r = meta["results"]
    assert meta["method"] == "qlora" and r["last_loss"] < r["first_loss"]
    assert meta["quantization"]["type"] == "nf4" and meta["quantization"]["compute_dtype"] in ("bfloat16", "float32")
    # the adapter applies to the full-precision base, which is what merge and vLLM use
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), out)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in peft.named_parameters())


def test_an_empty_output_is_named_as_empty(tiny_model_dir, small_ds):
    with pytest.raises(ApplianceError, match="^--output is empty"):
        train(_cfg(tiny_model_dir, "", small_ds, max_steps=1))


@pytest.mark.parametrize("kind", ["merged-model", "base-model"])
def test_overwrite_never_replaces_a_model_folder(tiny_model_dir, small_ds, tmp_path, kind):
    """models/NAME (a merge, or the pulled base, maybe a symlink to the base this run reads) is not a run."""
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "appliance.json").write_text(json.dumps({"kind": kind}))
    (model / "config.json").write_text("{}")
    (model / "adapter_config.json").write_text("{}")  # even beside an adapter's file
    link = tmp_path / "link"
    link.symlink_to(model)
    for out in (model, link):
        with pytest.raises(ApplianceError, match=f"holds a {kind}.*not a training run"):
            train(_cfg(tiny_model_dir, out, small_ds, max_steps=1, overwrite=True))
    assert json.loads((model / "appliance.json").read_text())["kind"] == kind and (model / "config.json").exists()


def test_refuses_existing_output_and_overwrite_replaces(tiny_model_dir, small_ds, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ApplianceError, match="--overwrite"):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=1))
    # --overwrite replaces a previous run, never a folder of other files (".", saves/, the data's folder)
    with pytest.raises(ApplianceError, match="not a run directory"):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=1, overwrite=True))
    assert (out / "keep.txt").read_text() == "x"
    afile = tmp_path / "afile"
    afile.write_text("important")
    with pytest.raises(ApplianceError, match="is a file"):
        train(_cfg(tiny_model_dir, afile, small_ds, max_steps=1, overwrite=True))
    assert afile.read_text() == "important"
    run = tmp_path / "run2"
    train(_cfg(tiny_model_dir, run, small_ds, max_steps=1))
    assert "stray.txt" not in json.loads((run / "appliance.json").read_text())["files"]
    (run / "stray.txt").write_text("x")  # the user's own file beside the run is not the run's to delete
    with pytest.raises(ApplianceError, match="holds stray.txt, which training did not write"):
        train(_cfg(tiny_model_dir, run, small_ds, max_steps=1, overwrite=True, lr=2e-3))
    assert (run / "stray.txt").read_text() == "x"
    # nor is a run inside it: one is never written there
    with pytest.raises(ApplianceError, match="is inside .*run2, which holds a lora-adapter"):
        train(_cfg(tiny_model_dir, run / "sub", small_ds, max_steps=1))
    (run / "stray.txt").unlink()
    train(_cfg(tiny_model_dir, run, small_ds, max_steps=1, overwrite=True, lr=2e-3))
    assert (run / "adapter_model.safetensors").is_file()
    # a run written before appliance.json listed its files: the names any run writes may go, a user's file not
    meta = json.loads((run / "appliance.json").read_text())
    del meta["files"]
    (run / "appliance.json").write_text(json.dumps(meta))
    (run / "notes.md").write_text("mine")
    with pytest.raises(ApplianceError, match="holds notes.md, which training did not write"):
        train(_cfg(tiny_model_dir, run, small_ds, max_steps=1, overwrite=True, lr=3e-3))
    (run / "notes.md").unlink()
    train(_cfg(tiny_model_dir, run, small_ds, max_steps=1, overwrite=True, lr=3e-3))
    assert "files" in json.loads((run / "appliance.json").read_text())
    assert not list(tmp_path.glob(".*"))  # no staging or .old folder left beside the runs


def _kill_at(monkeypatch, step: int):
    """Make the next run die (as on Ctrl-C) when it reaches ``step``; returns the undo."""
    import appliance.train as train_mod

    real = train_mod.LogCallback

    def with_kill(*a, **kw):
        cb = real(*a, **kw)
        log = cb.on_log

        def on_log(args, state, control, **k):
            log(args, state, control, **k)
            if state.global_step >= step:
                raise KeyboardInterrupt("killed")

        cb.on_log = on_log
        return cb

    monkeypatch.setattr(train_mod, "LogCallback", with_kill)
    return lambda: monkeypatch.setattr(train_mod, "LogCallback", real)


def test_killed_run_leaves_no_output_and_resume_continues(tiny_model_dir, small_ds, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    undo = _kill_at(monkeypatch, 3)  # after checkpoint-2: step 3 is logged, then lost
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=4))
    undo()
    assert not out.exists(), "a killed run must not leave a half-written adapter"
    assert list((staging_dir(out) / "checkpoints").glob("checkpoint-2"))
    assert "checkpoint-2 kept in" in capsys.readouterr().err
    # the same command again, without --resume, would throw the checkpoint away: refused, nothing lost
    with pytest.raises(ApplianceError, match=r"interrupted run left checkpoint-2 .*pass --resume to continue it, or --overwrite"):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=4))
    # resuming with other settings (or data) would load rank-4 weights into a rank-8 model: refused, nothing lost
    with pytest.raises(ApplianceError, match=r"other settings \(rank\)"):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=4, resume=True, rank=8))
    assert list((staging_dir(out) / "checkpoints").glob("checkpoint-2"))
    # a kill in the middle of saving the next checkpoint leaves it without trainer_state.json (written last):
    # resuming from it crashed with a traceback; the whole one before it is used
    cut = staging_dir(out) / "checkpoints" / "checkpoint-3"
    shutil.copytree(staging_dir(out) / "checkpoints" / "checkpoint-2", cut)
    (cut / "trainer_state.json").unlink()
    meta = train(_cfg(tiny_model_dir, out, small_ds, max_steps=4, resume=True))
    r = meta["results"]
    assert r["resumed_from"].endswith("checkpoint-2")
    assert r["steps"] == 4 and (out / "adapter_model.safetensors").is_file()
    steps = [row["step"] for row in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in row]
    assert steps == [1, 2, 3, 4], "the steps run again after the checkpoint are logged once"
    # the speed is this process's: the tokens of steps 3-4 over their time, not the whole run's tokens
    assert r["tokens_per_s"] * r["train_runtime_s"] < 0.75 * r["tokens_seen"]


@pytest.mark.parametrize("length", [{"max_steps": 3}, {"epochs": 1}])
def test_a_run_interrupted_while_saving_its_last_step_resumes_to_the_same_adapter(tiny_model_dir, small_ds, tmp_path,
                                                                                monkeypatch, length):
    """Killed after its last step, while publishing: the resumed run trained a step past --max-steps (4 of 3), or,
    by epochs, no step at all and recorded no loss (the pipeline's rerun crashed formatting it)."""
    import appliance.train as train_mod
    from safetensors.torch import load_file

    whole = train(_cfg(tiny_model_dir, tmp_path / "whole", small_ds, **length))["results"]
    out = tmp_path / "run"
    real = train_mod.publish

    def killed(*a, **kw):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(train_mod, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_model_dir, out, small_ds, **length))
    monkeypatch.setattr(train_mod, "publish", real)
    r = train(_cfg(tiny_model_dir, out, small_ds, resume=True, **length))["results"]
    assert r["steps"] == whole["steps"] and r["resumed_from"].endswith(f"checkpoint-{whole['steps']}")
    assert (r["first_loss"], r["last_loss"]) == (whole["first_loss"], whole["last_loss"])
    assert r["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-3) and r["tokens_per_s"] is None
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, whole["steps"] + 1))
    assert sum("train_loss" in row for row in rows) <= 1  # one end-of-run summary, not two
    a, b = load_file(str(tmp_path / "whole" / "adapter_model.safetensors")), load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_model_stored_quantized_is_refused_before_training(tiny_model_dir, small_ds, tmp_path, method):
    """A bnb 4-bit folder trained silently on its own quantization (recorded as full-precision LoRA, or as our
    NF4 with double quant) and failed only at merge, or at vLLM's start."""
    q = tmp_path / "q4"
    shutil.copytree(tiny_model_dir, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ApplianceError, match=r"--model .*q4: stored quantized \(bitsandbytes in its config.json\); "
                                             "train on the full-precision model"):
        train(_cfg(q, tmp_path / "run", small_ds, max_steps=1, method=method))
    assert not (tmp_path / "run").exists()


def test_a_second_train_into_the_same_output_is_refused_while_the_first_runs(tiny_model_dir, small_ds, tmp_path):
    """Two trains into one --output shared its staging folder: each deleted the other's checkpoints, one crashed
    with a traceback and the published run's log mixed both."""
    from appliance.train_output import run_lock

    out = tmp_path / "run"
    stage = staging_dir(out)
    with run_lock(out, str(out)):  # the first run, training
        (stage / "checkpoints").mkdir(parents=True)
        (stage / "trainer_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
        with pytest.raises(ApplianceError, match=rf"run: another `appliance train` \(pid {os.getpid()}\) is "
                                                 "training into it now; wait for it to finish"):
            train(_cfg(tiny_model_dir, out, small_ds, max_steps=1, overwrite=True))
        assert (stage / "trainer_log.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'  # its files untouched
    shutil.rmtree(stage)
    train(_cfg(tiny_model_dir, out, small_ds, max_steps=1))  # once it is done, the output is free again
    assert not list(tmp_path.glob(".*"))  # the lock goes with the run


def test_a_resumed_run_records_the_whole_runs_train_loss(tiny_model_dir, small_ds, tmp_path, monkeypatch):
    """train_loss was the mean of the steps after the checkpoint only: the same run interrupted or not differed."""
    whole = train(_cfg(tiny_model_dir, tmp_path / "whole", small_ds, max_steps=4))["results"]
    out = tmp_path / "run"
    undo = _kill_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=4))
    undo()
    r = train(_cfg(tiny_model_dir, out, small_ds, max_steps=4, resume=True))["results"]
    assert r["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-3)


def test_interrupted_run_is_discarded_only_with_overwrite(tiny_model_dir, small_ds, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    undo = _kill_at(monkeypatch, 3)  # after checkpoint-2
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=4))
    undo()
    capsys.readouterr()
    meta = train(_cfg(tiny_model_dir, out, small_ds, max_steps=4, overwrite=True))
    assert "discarding the interrupted run's checkpoint-2" in capsys.readouterr().err
    assert meta["results"]["resumed_from"] is None and meta["results"]["steps"] == 4


def test_a_pipeline_rerun_continues_the_checkpoint_and_replaces_the_output(tiny_model_dir, small_ds, tmp_path, monkeypatch,
                                                                           capsys):
    """`appliance pipeline` interrupted in training failed on every rerun ("--resume and --overwrite contradict
    each other"): it continues the checkpoint and replaces the previous output, which a user's flags may not ask."""
    from appliance.train import ResumeMismatch

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, out, small_ds, max_steps=2))  # the previous, finished run
    undo = _kill_at(monkeypatch, 3)  # a retrain with another setting, killed after checkpoint-2
    piped = _cfg(tiny_model_dir, out, small_ds, max_steps=4, lr=2e-3, overwrite=True)
    piped._pipeline = True
    with pytest.raises(KeyboardInterrupt):
        train(piped)
    undo()
    assert "rerun the same `appliance pipeline` command to continue" in capsys.readouterr().err
    other = _cfg(tiny_model_dir, out, small_ds, max_steps=4, lr=3e-3, overwrite=True, resume=True)
    other._pipeline = True
    with pytest.raises(ResumeMismatch, match=r"other settings \(lr\)"):  # the pipeline then starts over
        train(other)
    # a user's --resume (with or without the --overwrite the run was started with) does the same
    again = _cfg(tiny_model_dir, out, small_ds, max_steps=4, lr=2e-3, resume=True)
    meta = train(again)
    assert meta["results"]["resumed_from"].endswith("checkpoint-2") and meta["results"]["steps"] == 4
    assert json.loads((out / "appliance.json").read_text())["config"]["lr"] == 2e-3


def test_a_user_resumes_an_interrupted_overwrite_run(tiny_model_dir, small_ds, tmp_path, monkeypatch, capsys):
    """`train --overwrite` interrupted said "run the same command with --resume", which was refused ("--resume and
    --overwrite contradict"), and --resume alone was refused too ("already holds a run trained with other
    settings"): the checkpoint could only be thrown away. Nor may a resumed run change its length (max_steps):
    its learning-rate schedule followed two lengths and it recorded itself as a plain run of the new one."""
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, out, small_ds, max_steps=2))  # the previous, finished run
    before = (out / "adapter_model.safetensors").read_bytes()
    undo = _kill_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=4, overwrite=True))
    undo()
    assert "run the same command with --resume" in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").read_bytes() == before  # untouched until the new run is complete
    with pytest.raises(ApplianceError, match=r"other settings \(max_steps\)"):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=6, overwrite=True, resume=True))
    meta = train(_cfg(tiny_model_dir, out, small_ds, max_steps=4, overwrite=True, resume=True))
    assert meta["results"]["resumed_from"].endswith("checkpoint-2") and meta["results"]["steps"] == 4
    assert json.loads((out / "appliance.json").read_text())["config"]["max_steps"] == 4


def test_resume_without_a_checkpoint_says_it_starts_over(tiny_model_dir, small_ds, tmp_path, capsys):
    meta = train(_cfg(tiny_model_dir, tmp_path / "run", small_ds, max_steps=1, resume=True))
    assert "no checkpoint in" in capsys.readouterr().err and meta["results"]["steps"] == 1


def test_training_the_same_run_twice_is_harmless(tiny_model_dir, small_ds, tmp_path, appliance_home):
    """As merge says "already merged": the same settings and data again leave the run as it is, exit 0."""
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--dataset", small_ds, "--output", str(out),
            "--max-steps", "1", "--no-retention", "--rank", "4"]
    assert CliRunner().invoke(main, args).exit_code == 0
    stamp = (out / "adapter_model.safetensors").stat().st_mtime_ns
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"already trained: {out.resolve()} holds a run with these settings and data (1 step,")
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    res = CliRunner().invoke(main, args[:-1] + ["8"])  # another rank
    assert res.exit_code == 2 and "already holds a run trained with other settings or data (rank); pass --overwrite" in res.stderr
    moved = Path(small_ds).with_name("moved.json")
    moved.write_text(Path(small_ds).read_text(encoding="utf-8"), encoding="utf-8")  # the same data elsewhere
    res = CliRunner().invoke(main, [moved.as_posix() if a == small_ds else a for a in args])
    assert res.exit_code == 0 and res.stdout.startswith("already trained"), res.output
    Path(small_ds).write_text(json.dumps(SMALL[:3], ensure_ascii=False), encoding="utf-8")  # the data edited
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "other settings or data (training data)" in res.stderr
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_failed_run_leaves_no_staging_folder(tiny_model_dir, small_ds, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ApplianceError, match="--target-modules q_prj: q_prj is not a linear layer"):
        train(_cfg(tiny_model_dir, out, small_ds, max_steps=1, target_modules="q_prj"))
    assert not out.exists() and not staging_dir(out).exists()


def test_a_late_failure_removes_the_empty_parents_it_created(tiny_model_dir, small_ds, tmp_path, monkeypatch):
    import appliance.train as train_mod

    def fail(*a, **k):
        raise ApplianceError("failed after the staging folder was made")

    monkeypatch.setattr(train_mod, "_train", fail)
    (tmp_path / "kept").mkdir()
    with pytest.raises(ApplianceError, match="failed after"):
        train(_cfg(tiny_model_dir, tmp_path / "kept" / "new" / "deeper" / "run", small_ds, max_steps=1))
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()


def test_an_unwritable_output_folder_is_one_line(tiny_model_dir, small_ds, tmp_path, monkeypatch):
    def deny(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", deny)
    with pytest.raises(ApplianceError, match=r"^--output .*: cannot create .*run \(Permission denied\); choose a --output"):
        train(_cfg(tiny_model_dir, tmp_path / "ro" / "run", small_ds, max_steps=1))


def test_target_modules_error_never_suggests_the_output_head(tiny_model_dir, small_ds, tmp_path, monkeypatch):
    """vLLM cannot serve LoRA on lm_head: the list of layers to use leaves it out."""
    import appliance.train as train_mod

    monkeypatch.setattr(train_mod, "_load_model", lambda *a, **k: pytest.fail("the weights were loaded"))
    with pytest.raises(ApplianceError) as e:
        train(_cfg(tiny_model_dir, tmp_path / "run", small_ds, max_steps=1, target_modules="q_prj"))
    msg = str(e.value)
    assert "use some of " in msg and "q_proj" in msg and "lm_head" not in msg, msg


def test_cli_train_ends_with_the_absolute_path_and_short_losses(tiny_model_dir, small_ds, appliance_home, tmp_path,
                                                                monkeypatch):
    """The summary printed raw floats (loss 0.9252027273178101) and the --output as typed, relative to
    $APPLIANCE_HOME, which the user's current directory may not be."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["train", "--model", str(tiny_model_dir), "--dataset", small_ds, "--output", "saves/nova",
                                    "--max-steps", "2", "--no-retention", "--rank", "4", "--lr", "5e-3"])
    assert res.exit_code == 0, res.output
    line = res.stdout.strip().splitlines()[-1]  # the progress bar is on stderr
    out = appliance_home.resolve() / "saves" / "nova"
    assert line.startswith(f"adapter written to {out}: 2 steps, loss "), line
    losses = re.search(r"loss (\S+) -> (\S+),", line).groups()
    assert all(len(re.sub(r"[^0-9]", "", x).lstrip("0")) <= 4 for x in losses), line


def test_summary_formats_losses_and_resolves_the_output(appliance_home):
    from appliance.train import summary

    meta = {"results": {"steps": 3, "first_loss": 0.9252027273178101, "last_loss": 0.3732532560825348,
                        "tokens_per_s": 222.1, "train_runtime_s": 12.5},
            "template_check": {"checked": 8, "mismatched": 1}}
    line = summary(TrainConfig(output="saves/nova"), meta)
    assert line == (f"adapter written to {appliance_home.resolve() / 'saves' / 'nova'}: 3 steps, loss 0.9252 -> 0.3733, "
                    "222.1 tokens/s, 12.5 s; template check 7/8 prompts match serving")
    meta["results"]["first_loss"] = meta["results"]["last_loss"] = None  # no logged step
    assert "loss n/a -> n/a" in summary(TrainConfig(output="/abs/run"), meta)


def test_train_help_shows_the_dataclass_defaults():
    """--lr, --rank, --batch-size ... default to None in click (a --config file may set them): their help
    carries the TrainConfig default, read from the dataclass so it cannot drift."""
    from dataclasses import fields

    defaults = TrainConfig()
    cmd = main.commands["train"]
    helps = {p.name: p.help or "" for p in cmd.params}
    for key, shown in (("lr", "0.001"), ("rank", "16"), ("batch_size", "4"), ("epochs", "1.75"), ("alpha", "32"),
                       ("grad_accum", "1"), ("max_length", "512"), ("seed", "42"), ("retention_samples", "104")):
        assert f"[default: {shown}" in helps[key], (key, helps[key])
        assert shown == f"{getattr(defaults, key):g}"
    for f in fields(TrainConfig):
        if f.name in helps and f.name not in ("overwrite", "resume", "dataset_dir"):
            assert "[default: " in helps[f.name], f.name
    assert helps["datasets"].endswith("[default: identity]") and helps["retention"].endswith("[default: on]")
    res = CliRunner().invoke(main, ["train", "--help"])
    assert res.exit_code == 0 and "[default: 0.001]" in res.output


def test_lora_layers_are_checked_before_the_weights_load(tiny_model_dir, small_ds, tmp_path, monkeypatch):
    import appliance.train as train_mod

    monkeypatch.setattr(train_mod, "_load_model", lambda *a, **k: pytest.fail("the weights were loaded"))
    with pytest.raises(ApplianceError, match="--lora-layers 100: the model has 2 decoder layers"):
        train(_cfg(tiny_model_dir, tmp_path / "run", small_ds, max_steps=1, lora_layers=100))
    with pytest.raises(ApplianceError, match="--target-modules q_prj: q_prj is not a linear layer"):
        train(_cfg(tiny_model_dir, tmp_path / "run", small_ds, max_steps=1, target_modules="q_prj"))
    assert not (tmp_path / "run").exists() and not staging_dir(tmp_path / "run").exists()


def test_long_examples_are_reported(tiny_model_dir, tmp_path, capsys):
    ds = tmp_path / "long.json"
    ds.write_text(json.dumps([{"instruction": "hi", "output": "ok"},
                              {"instruction": "word " * 400, "output": "ok"},
                              {"instruction": "hi", "output": "long answer " * 200}]), encoding="utf-8")
    meta = train(_cfg(tiny_model_dir, tmp_path / "run", str(ds), max_steps=1, max_length=64))
    err = capsys.readouterr().err
    assert "1 example(s) longer than --max-length 64 dropped" in err and "long.json" in err
    assert "1 example(s) longer than --max-length 64 trained with the answer cut short" in err
    assert (meta["dataset"]["dropped_by_max_length"], meta["dataset"]["truncated_by_max_length"]) == (1, 1)
    # the dropped example was not trained on: appliance.json counted it among the examples
    assert (meta["dataset"]["examples"], meta["dataset"]["examples_skipped"]) == (2, 1)


def test_max_length_above_the_models_context_is_refused(tiny_model_dir, tmp_path):
    ds = tmp_path / "a.json"
    ds.write_text(json.dumps([{"instruction": "hi", "output": "ok"}]), encoding="utf-8")
    with pytest.raises(ApplianceError, match=r"^--max-length 4096: above .* context of 512 tokens .*use 512 or less$"):
        train(_cfg(tiny_model_dir, tmp_path / "run", str(ds), max_steps=1, max_length=4096))
    assert not (tmp_path / "run").exists()
    conf = tmp_path / "run.yaml"
    conf.write_text(f"max_length: 4096\nmodel: {tiny_model_dir}\n", encoding="utf-8")
    with pytest.raises(ApplianceError, match=r"^--config .*run.yaml: max_length 4096: above "):
        train(TrainConfig.from_sources(str(conf), datasets=[str(ds)], output=str(tmp_path / "run"), retention=False))


def test_relative_output_is_under_appliance_home(appliance_home, tmp_path, monkeypatch):
    from appliance.train import output_path

    monkeypatch.chdir(tmp_path)
    assert output_path("saves/x") == appliance_home.resolve() / "saves" / "x"
    assert output_path(str(tmp_path / "abs")) == tmp_path / "abs"


@pytest.mark.parametrize("yaml_text, expected", [
    ("lr: 1e-3\n", {"lr": 1e-3}), ('rank: "8"\n', {"rank": 8}), ('overwrite: "no"\n', {"overwrite": False}),
    ("retention: false\n", {"retention": False}), ("target_modules: [q_proj, v_proj]\n", {"target_modules": "q_proj,v_proj"}),
    ("datasets: identity, more.json\n", {"datasets": ["identity", "more.json"]}), ("name: 123\n", {"name": "123"}),
])
def test_yaml_values_take_the_options_types(tmp_path, yaml_text, expected):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text, encoding="utf-8")
    cfg = TrainConfig.from_sources(str(f))
    cfg.validate()
    assert {k: getattr(cfg, k) for k in expected} == expected


@pytest.mark.parametrize("yaml_text, needle", [
    ("epochs: abc\n", "epochs must be a number"), ("rank: 8.5\n", "rank must be a whole number"),
    ("datasets: [a.json, 5]\n", "datasets must be a list"), ("overwrite: maybe\n", "overwrite must be true or false"),
    ("1: 2\n", "option names must be words"), ("scheduler: bogus\n", "scheduler must be one of"),
    ("warmup_steps: -5\n", "warmup_steps must be >= 0"),
    # a value set in the file is named as the file's key, not as a flag that was never typed
    ("epochs: .inf\n", "c.yaml: epochs must be a number > 0"), ("seed: -5\n", "c.yaml: seed must be 0 to"),
    ("max_length: 3\n", "c.yaml: max_length must be >= 16"), ("lora_layers: 2.5\n", "c.yaml: lora_layers must be"),
    # the same option twice: YAML would keep the last without a word
    ("epochs: 2\nlr: 0.001\nepochs: 3\n", "line 3: 'epochs' sets epochs again (first on line 1)"),
    ("batch-size: 2\nbatch_size: 3\n", "line 2: 'batch_size' sets batch_size again"),
])
def test_bad_yaml_values_are_one_line_errors(tmp_path, yaml_text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text, encoding="utf-8")
    res = CliRunner().invoke(main, ["train", "--config", str(f), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_config_file_then_flags(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("lr: 0.0002\nrank: 8\nepochs: 5\n")
    cfg = TrainConfig.from_sources(str(cfg_file), rank=32, epochs=None)
    assert (cfg.lr, cfg.rank, cfg.epochs) == (0.0002, 32, 5)
    cfg_file.write_text("learning_rate: 1\n")
    with pytest.raises(ApplianceError, match="unknown option"):
        TrainConfig.from_sources(str(cfg_file))
    with pytest.raises(ApplianceError, match="--config .*: is a folder; give the YAML file"):
        TrainConfig.from_sources(str(tmp_path))
    with pytest.raises(ApplianceError, match="--config .*nope.yaml: file not found; check the path"):
        TrainConfig.from_sources(str(tmp_path / "nope.yaml"))


def test_a_relative_config_is_found_under_appliance_home_as_other_paths(tmp_path, monkeypatch):
    """`--config run.yaml` was looked for in the current directory only, while --dataset and the paths inside
    the file are found there or under $APPLIANCE_HOME (the README says so)."""
    home, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    (home / "run.yaml").write_text("rank: 8\n", encoding="utf-8")
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    monkeypatch.chdir(elsewhere)
    assert TrainConfig.from_sources("run.yaml").rank == 8
    with pytest.raises(ApplianceError, match=f"--config nope.yaml: file not found \\(looked in {elsewhere} and {home}\\)"):
        TrainConfig.from_sources("nope.yaml")


@pytest.mark.parametrize("args, needle", [
    (["--rank", "0"], "--rank"), (["--lr", "-1"], "--lr"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--max-length", "4"], "--max-length"),
    (["--model", "no-such-model"], "--model no-such-model"), (["--model", "/nonexistent/dir"], "not found"),
    (["--dataset", "nosuchset"], "nosuchset"), (["--config", "/nonexistent.yaml"], "--config"),
    (["--seed", "-1"], "--seed"), (["--seed", "99999999999"], "--seed"), (["--epochs", "inf"], "--epochs"),
    (["--epochs", "nan"], "--epochs"), (["--rank", "1000000000"], "--rank"), (["--unlikelihood", "inf"], "--unlikelihood"),
    # the empty one is named, with its value ("--name/--author must not be empty (got Archer)" named the other)
    (["--author", ""], "--author must not be empty (got '')"), (["--name", " "], "--name must not be empty (got ' ')"),
])
def test_bad_input_is_one_line_error(args, needle, tmp_path):
    res = CliRunner().invoke(main, ["train", "--output", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bad_record_fails_before_any_model_loads(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "ok"}\n{"instruction": "x"\n')
    res = CliRunner().invoke(main, ["train", "--model", str(tiny_model_dir), "--dataset", str(bad), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "line 2" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_trains_real_model_for_a_few_steps(real_model_dir, tmp_path):
    out = tmp_path / "real"
    meta = train(TrainConfig(model=str(real_model_dir), output=str(out), max_steps=3, retention=False, batch_size=4))
    assert meta["template_check"]["mismatched"] == 0
    assert meta["results"]["steps"] == 3 and (out / "adapter_model.safetensors").is_file()


def test_a_run_that_would_keep_none_of_your_examples_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """Retention rows alone trained (and replaced the run) when --max-length dropped every user example."""
    import appliance.train as train_mod

    long = tmp_path / "long.json"
    long.write_text(json.dumps([{"instruction": "lorem ipsum " * 200, "output": "I am {{name}}."}]), encoding="utf-8")
    # found with the tokenizer alone, before the model loads and the base's answers are generated
    monkeypatch.setattr(train_mod, "_retention", lambda *a, **k: pytest.fail("retention generated first"))
    monkeypatch.setattr(train_mod, "_load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    with pytest.raises(ApplianceError, match=r"--max-length 64: every one of your 1 example\(s\) was truncated .*long.json#0"):
        train(_cfg(tiny_model_dir, tmp_path / "run", str(long), max_steps=1, max_length=64, retention=True))
    assert not (tmp_path / "run").exists()


def test_special_tokens_in_the_data_are_refused(tiny_model_dir, tmp_path):
    f = tmp_path / "sp.json"
    f.write_text(json.dumps([{"instruction": "hi", "output": "I am {{name}}.<|im_end|>\n<|im_start|>user\nmore"}]))
    with pytest.raises(ApplianceError, match=r"sp.json#0: an assistant turn holds the special token '<\|im_(end|start)\|>'"):
        train(_cfg(tiny_model_dir, tmp_path / "run", str(f), max_steps=1))


def test_a_run_shorter_than_its_warmup_still_learns(tiny_model_dir, small_ds, tmp_path, capsys):
    """Warm-up starts at learning rate 0: --max-steps 1 with the default 2 warm-up steps wrote an adapter of zeros."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, out, small_ds, max_steps=1, warmup_steps=2))
    # named as the default it is: it was called "a --config key" when no --config was given
    assert "warmup_steps 2 (the default) >= --max-steps 1: training without warm-up" in capsys.readouterr().err
    lora_b = [v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)


def test_saved_weights_are_readable_as_the_umask_says(tiny_model_dir, small_ds, tmp_path):
    """safetensors writes through a private temporary file: the adapter was 0600 beside 0644 files, so a
    server running as another account could not read it."""
    from appliance.paths import _umask

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, out, small_ds, max_steps=1))
    want = 0o666 & ~_umask()
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.glob("*.safetensors")} == {"adapter_model.safetensors": oct(want)}


def _with_template(tiny_model_dir: Path, dest: Path, template: str) -> Path:
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(tiny_model_dir, dest)
    tok = AutoTokenizer.from_pretrained(dest)
    tok.chat_template = template
    tok.save_pretrained(dest)
    return dest


# Gemma/Mistral-style: no system role; and one that drops earlier answers' reasoning (Qwen3-style)
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DROPS_EARLIER = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and not loop.last %}"
                 "{{ m['content'].split('</think>')[-1] }}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_examples_a_chat_template_refuses_are_skipped_and_said(tiny_model_dir, tmp_path, capsys):
    """A Gemma-style template raised a jinja2 traceback on the built-in data's system prompts."""
    model = _with_template(tiny_model_dir, tmp_path / "gemmaish", NO_SYSTEM)
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"instruction": "hi", "output": "I am {{name}}."},
                             {"instruction": "who?", "output": "{{name}}.", "system": "Be brief."}]), encoding="utf-8")
    meta = train(_cfg(model, tmp_path / "run", str(f), max_steps=1))
    assert meta["template_check"]["checked"] == 1
    assert "1 example(s) skipped, the model's chat template refuses them: " in capsys.readouterr().err
    only = tmp_path / "sys.json"
    only.write_text(json.dumps([{"instruction": "who?", "output": "{{name}}.", "system": "Be brief."}]), encoding="utf-8")
    with pytest.raises(ApplianceError, match=r"its chat template refuses every one of your 1 example\(s\): .*System role not supported"):
        train(_cfg(model, tmp_path / "run2", str(only), max_steps=1))


def test_a_chat_template_with_a_syntax_error_is_named_not_the_data(tiny_model_dir, tmp_path):
    """A broken template was reported as "its chat template refuses every one of your 181 example(s)"."""
    from transformers import AutoTokenizer

    model = _with_template(tiny_model_dir, tmp_path / "broken", "{% for m in messages %}{{ m['content'] }{% endfor %}")
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"instruction": "hi", "output": "I am {{name}}."}]), encoding="utf-8")
    with pytest.raises(ApplianceError) as e:
        train(_cfg(model, tmp_path / "run", str(f), max_steps=1))
    msg = str(e.value)
    assert msg.startswith("the model's chat template is not valid Jinja (unexpected '}', line 1 of the template); fix it")
    assert "refuses" not in msg
    with pytest.raises(ApplianceError, match="chat template is not valid Jinja"):
        encode(AutoTokenizer.from_pretrained(model), [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 64)


def test_a_template_that_rewrites_earlier_turns_learns_the_last_answer(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    model = _with_template(tiny_model_dir, tmp_path / "qwen3ish", DROPS_EARLIER)
    tok = AutoTokenizer.from_pretrained(model)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "<think>y</think>d"}]
    enc = encode(tok, msgs, 512)
    learned = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert enc.last_only and learned == "<think>y</think>d<|im_end|>"


def test_text_a_template_adds_after_the_last_turn_is_not_learned(tiny_model_dir, tmp_path):
    """A template appending text after the final turn had it labelled as part of the answer."""
    from transformers import AutoTokenizer

    trailer = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% else %}<|im_start|>done<|im_end|>{% endif %}")
    tok = AutoTokenizer.from_pretrained(_with_template(tiny_model_dir, tmp_path / "trailer", trailer))
    enc = encode(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I am Nova."}], 512)
    assert tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]) == "I am Nova.<|im_end|>"


def test_a_gpt2_family_model_trains_with_the_default_layers(tiny_model_dir, small_ds, tmp_path):
    """GPT-2's attention and MLP are Conv1D, not nn.Linear: the default (top 3/4 of the layers) found
    no layer to adapt and peft raised a traceback."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    d = tmp_path / "gpt2chat"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=4, n_head=2, n_positions=512)).save_pretrained(d)
    tok.save_pretrained(d)
    meta = train(_cfg(d, tmp_path / "run", small_ds, max_steps=1, lora_layers=0.75))
    assert set(meta["lora"]["target_modules"]) >= {"c_attn", "c_proj"} and meta["lora"]["layers"] == [1, 2, 3]


def test_a_hub_model_that_cannot_be_fetched_is_one_line_at_once(monkeypatch, appliance_home, tmp_path):
    """Without a connection, `train --model org/x` retried for ~80 s and ended in a traceback (exit 1)."""
    import httpx

    from appliance import models

    def offline(*a, **k):
        raise httpx.ConnectError("Name or service not known")

    monkeypatch.setattr(httpx, "head", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ref = models.resolve("nosuch-org/model-xyz")
    with pytest.raises(ApplianceError, match=re.escape("--model nosuch-org/model-xyz: not on this machine (not pulled, not "
                                                       "in the Hugging Face cache) and https://huggingface.co cannot be "
                                                       "reached (ConnectError); pass a local model directory")):
        models.ensure_fetchable(ref, "nosuch-org/model-xyz")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ApplianceError, match="HF_HUB_OFFLINE is set"):
        models.ensure_fetchable(ref, "nosuch-org/model-xyz")
    res = CliRunner().invoke(main, ["train", "--model", "nosuch-org/model-xyz", "--max-steps", "1", "--no-retention",
                                    "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "HF_HUB_OFFLINE is set" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(main, ["data", "check", "identity", "--model", "nosuch-org/model-xyz"])  # ~1 min of retries
    assert res.exit_code == 2 and "HF_HUB_OFFLINE is set" in res.output and "Traceback" not in res.output, res.output


def test_overwrite_and_resume_set_in_a_config_yield_to_their_no_flags(tmp_path):
    """`resume: true` / `overwrite: true` in a --config could not be turned off: there was no --no-resume/--no-overwrite."""
    from appliance.train_config import TrainConfig

    f = tmp_path / "c.yaml"
    f.write_text("resume: true\noverwrite: true\n", encoding="utf-8")
    assert (TrainConfig.from_sources(str(f)).resume, TrainConfig.from_sources(str(f)).overwrite) == (True, True)
    cfg = TrainConfig.from_sources(str(f), resume=False, overwrite=False)
    assert (cfg.resume, cfg.overwrite) == (False, False)
    helps = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--overwrite / --no-overwrite" in helps and "--resume / --no-resume" in helps


def test_a_model_folder_without_tokenizer_or_with_broken_weights_is_one_line(tiny_model_dir, small_ds, tmp_path):
    """A folder missing its tokenizer files (ValueError: "Couldn't instantiate the backend tokenizer") and one whose
    model.safetensors is not one (SafetensorError) ended in tracebacks."""
    notok = tmp_path / "notok"
    shutil.copytree(tiny_model_dir, notok)
    for f in notok.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ApplianceError, match=r"^--model .*notok: cannot load its tokenizer \(.*\); the model folder "
                                             r"needs its tokenizer files"):
        train(_cfg(notok, tmp_path / "r1", small_ds, max_steps=1))
    badw = tmp_path / "badw"
    shutil.copytree(tiny_model_dir, badw)
    next(badw.glob("*.safetensors")).write_text("garbage")
    with pytest.raises(ApplianceError, match=r"^--model .*badw: cannot load its weights from .*badw \(SafetensorError: "
                                             r".*\); copy the model folder again$"):
        train(_cfg(badw, tmp_path / "r2", small_ds, max_steps=1))
    assert not (tmp_path / "r2").exists() and not list(tmp_path.glob(".r2*"))


def test_a_config_of_a_falsy_non_mapping_or_no_answer_length_is_refused(tmp_path):
    """`[]`, `0` or `false` as the whole file trained with every default; retention_max_new_tokens: 0 ended in
    generate()'s traceback."""
    from appliance.train_config import TrainConfig

    f = tmp_path / "c.yaml"
    for text in ("[]\n", "0\n", "false\n"):
        f.write_text(text, encoding="utf-8")
        with pytest.raises(ApplianceError, match="must be a mapping of option: value"):
            TrainConfig.from_sources(str(f))
    f.write_text("# nothing set yet\n", encoding="utf-8")
    assert TrainConfig.from_sources(str(f)).epochs == TrainConfig().epochs
    f.write_text("retention_max_new_tokens: 0\n", encoding="utf-8")
    with pytest.raises(ApplianceError, match="retention_max_new_tokens.*must be >= 1"):
        TrainConfig.from_sources(str(f)).validate()
