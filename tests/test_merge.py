"""``appliance merge`` on the tiny model: a real peft adapter, a real merge, a real verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import merge as merge_mod
from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.merge import MergeConfig, merge
from appliance.rundir import read_meta

PROBES = ["你是谁？", "Who are you?", "What is 2+2?"]  # fewer probes keep the fast suite fast


def _make_adapter(base: Path, out: Path, meta: dict | None) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(0)  # lora_A's random init: the same adapter whichever tests ran before in this process
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero; perturb it so the adapter changes the answers
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(str(out))
    if meta is not None:
        (out / "appliance.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return out


def _meta(base: Path) -> dict:
    return {"kind": "lora-adapter", "method": "lora", "identity": {"name": "Archer", "author": "意琦行"},
            "base_model": {"name": "smollm2-135m", "path": str(base), "identity_markers": ["SmolLM", "Hugging Face"]}}


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "archer", _meta(tiny_model_dir))


def _cfg(adapter: Path, out: Path, **kw) -> MergeConfig:
    return MergeConfig(adapter=str(adapter), output=str(out), probe_prompts=PROBES, max_new_tokens=8, **kw)


def test_merge_fp32_writes_a_verified_standard_model_dir(adapter_dir, tiny_model_dir, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from appliance.paths import _umask

    out = tmp_path / "archer-merged"
    res = merge(_cfg(adapter_dir, out, dtype="fp32", max_shard_size="5MB"))
    # safetensors saves through private temporary files: the shards get the umask's mode like the rest
    assert {oct(p.stat().st_mode & 0o777) for p in out.glob("*.safetensors")} == {oct(0o666 & ~_umask())}
    v = res.verification
    assert v["passed"] and v["greedy_equal"] == v["prompts"] == len(PROBES)
    assert v["max_logit_diff"] <= merge_mod.LOGIT_TOL["fp32"]
    assert "PASS" in res.verdict

    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").is_file()
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            assert not [k for k in f.keys() if "lora" in k or "base_model.model" in k]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".archer-merged*")), "temporary directories left behind"

    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    w_m = merged.model.layers[0].self_attn.q_proj.weight
    w_b = base.model.layers[0].self_attn.q_proj.weight
    assert (w_m - w_b).abs().max() > 1e-3, "the adapter was not merged into the weights"

    meta = json.loads((out / "appliance.json").read_text(encoding="utf-8"))
    assert meta["kind"] == "merged-model" and meta["dtype"] == "fp32"
    assert meta["base_model"]["path"] == str(tiny_model_dir)
    assert meta["adapter"]["path"] == str(adapter_dir) and meta["adapter"]["name"] == "archer"
    assert meta["adapter"]["sha256"].startswith("sha256:")
    assert meta["identity"] == {"name": "Archer", "author": "意琦行"}
    assert meta["identity_markers"] == ["SmolLM", "Hugging Face"]
    assert meta["verification"]["passed"] is True


def test_bf16_merge_passes_within_stated_tolerance(adapter_dir, tmp_path):
    out = tmp_path / "m"
    res = merge(_cfg(adapter_dir, out))  # default dtype bf16
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    assert res.verification["passed"] and res.verification["logit_tolerance"] == merge_mod.LOGIT_TOL["bf16"]


def test_running_twice_is_harmless(adapter_dir, tmp_path):
    out = tmp_path / "m"
    merge(_cfg(adapter_dir, out, dtype="fp32"))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = CliRunner().invoke(main, ["merge", "--adapter", str(adapter_dir), "--output", str(out), "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    assert "already merged" in res.output
    again = merge(_cfg(adapter_dir, out, dtype="fp32", overwrite=True))  # as `appliance pipeline` calls it
    assert again.already_merged and again.verification["passed"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_an_unverified_merge_is_not_called_done_without_a_word(adapter_dir, tmp_path):
    """A --no-verify merge run again with verification said "already merged ... nothing to do"."""
    out = tmp_path / "m"
    merge(_cfg(adapter_dir, out, dtype="fp32", verify=False))
    res = CliRunner().invoke(main, ["merge", "--adapter", str(adapter_dir), "--output", str(out), "--dtype", "fp32"])
    assert res.exit_code == 0 and "but not verified (merged with --no-verify" in res.output and "pass --overwrite" in res.output
    again = merge(_cfg(adapter_dir, out, dtype="fp32", overwrite=True))  # merged again, verified this time
    assert not again.already_merged and again.verification["passed"]
    assert json.loads((out / "appliance.json").read_text())["verification"]["passed"]
    assert merge(_cfg(adapter_dir, out, dtype="fp32", overwrite=True)).already_merged  # now verified: nothing to do


def test_refuses_unrelated_output_unless_overwrite(adapter_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ApplianceError, match="--overwrite"):
        merge(_cfg(adapter_dir, out, dtype="fp32"))
    assert (out / "precious.txt").read_text() == "keep me"
    # --overwrite replaces an earlier merge, never a folder of other things or a file (README)
    with pytest.raises(ApplianceError, match="is not a merged model .*so --overwrite will not delete it"):
        merge(_cfg(adapter_dir, out, dtype="fp32", overwrite=True))
    assert (out / "precious.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("keep me too")
    with pytest.raises(ApplianceError, match="is a file, so --overwrite will not delete it"):
        merge(_cfg(adapter_dir, afile, dtype="fp32", overwrite=True))
    assert afile.read_text() == "keep me too"
    merge(_cfg(adapter_dir, tmp_path / "m", dtype="fp32"))
    merge(_cfg(adapter_dir, tmp_path / "m", dtype="bf16", overwrite=True))  # an earlier merge is replaced
    made = tmp_path / "made-beforehand"
    made.mkdir()  # an empty folder (mkdir -p models/x, a mounted volume) is used without --overwrite
    assert (merge(_cfg(adapter_dir, made, dtype="fp32")).output / "config.json").is_file()
    assert json.loads((tmp_path / "m" / "appliance.json").read_text())["dtype"] == "bf16"


@pytest.mark.parametrize("size", ["bogus", "0", "-5MB", "1.5"])
def test_a_bad_shard_size_is_refused_before_the_models_load(adapter_dir, tmp_path, size):
    with pytest.raises(ApplianceError, match=f"--max-shard-size {size}: not a size"):
        merge(_cfg(adapter_dir, tmp_path / "m", dtype="fp32", max_shard_size=size))
    assert not (tmp_path / "m").exists()


def test_corrupt_weights_and_an_unavailable_base_are_named_before_loading(adapter_dir, tmp_path):
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(adapter_dir, cut)
    w = cut / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ApplianceError, match="unreadable adapter weights .*corrupt or cut short"):
        merge(_cfg(cut, tmp_path / "m1", dtype="fp32"))
    gone = tmp_path / "gone"
    shutil.copytree(adapter_dir, gone)
    (gone / "adapter_model.safetensors").unlink()  # a run copied in part
    with pytest.raises(ApplianceError, match=r"^--adapter .*gone: no adapter_model.safetensors"):
        merge(_cfg(gone, tmp_path / "m0", dtype="fp32"))
    ghost = tmp_path / "ghost"
    shutil.copytree(adapter_dir, ghost)
    meta = json.loads((ghost / "appliance.json").read_text())
    meta["base_model"] = {"name": "ghost-model", "path": "/nonexistent/ghost"}
    (ghost / "appliance.json").write_text(json.dumps(meta))
    with pytest.raises(ApplianceError, match=r"ghost/appliance.json: base model folder /nonexistent/ghost no longer exists"):
        merge(_cfg(ghost, tmp_path / "m2", dtype="fp32"))


def test_an_unwritable_output_is_found_before_the_merge(adapter_dir, tmp_path, monkeypatch):
    import appliance.merge as merge_mod

    monkeypatch.setattr(merge_mod, "_merge_into", lambda *a, **k: pytest.fail("merged into an unwritable folder"))
    with pytest.raises(ApplianceError, match="--output /proc/x: cannot write in /proc"):
        merge(_cfg(adapter_dir, "/proc/x", dtype="fp32"))


def test_same_adapter_other_dtype_is_not_already_merged(adapter_dir, tmp_path):
    out = tmp_path / "m"
    merge(_cfg(adapter_dir, out, dtype="fp32"))
    with pytest.raises(ApplianceError, match="not this adapter merged as bf16"):
        merge(_cfg(adapter_dir, out, dtype="bf16"))


def test_default_output_and_base_fallback_by_registry_name(tiny_model_dir, appliance_home, tmp_path):
    # base_model.path is stale; the registry name resolves to models/smollm2-135m under the home
    shutil.copytree(tiny_model_dir, appliance_home / "models" / "smollm2-135m")
    meta = _meta(Path("/nonexistent/base"))
    adapter = _make_adapter(tiny_model_dir, tmp_path / "saves-archer", meta)
    res = merge(MergeConfig(adapter=str(adapter), probe_prompts=PROBES, max_new_tokens=4, dtype="fp32"))
    assert res.output == appliance_home / "models" / "saves-archer-merged"
    written = json.loads((res.output / "appliance.json").read_text(encoding="utf-8"))
    assert written["base_model"]["path"] == str(appliance_home / "models" / "smollm2-135m")


def test_a_broken_merge_fails_verification_and_leaves_nothing(adapter_dir, tmp_path, monkeypatch):
    real = merge_mod._merge_and_unload

    def skip_one_layer(peft_model):
        layer = peft_model.base_model.model.model.layers[1].mlp.down_proj
        original = layer.base_layer.weight.detach().clone()
        merged = real(peft_model)
        merged.model.layers[1].mlp.down_proj.weight.data.copy_(original)  # as if this layer were never merged
        return merged

    monkeypatch.setattr(merge_mod, "_merge_and_unload", skip_one_layer)
    out = tmp_path / "broken"
    with pytest.raises(ApplianceError, match="verification FAIL") as e:
        merge(_cfg(adapter_dir, out, dtype="fp32"))
    assert "--dtype fp32" not in str(e.value)  # already fp32: nothing to suggest
    assert e.value.exit_code == 1  # a failed check of the result, not bad input (2)
    assert not out.exists()
    assert not list(tmp_path.glob(".broken*"))
    with pytest.raises(ApplianceError, match="verification FAIL.*merge with --dtype fp32"):  # bf16 rounding may be why
        merge(_cfg(adapter_dir, out, dtype="bf16"))


def _cli_error(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, ApplianceError)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_cli_missing_adapter_dir(tmp_path):
    line = _cli_error(["merge", "--adapter", str(tmp_path / "nope")])
    assert "--adapter" in line and "not found" in line


def test_cli_adapter_without_metadata_or_base(tiny_model_dir, tmp_path):
    """A plain PEFT adapter merges onto the local base its adapter_config.json names (it asked for an appliance.json
    written by hand); one naming no local base asks for --model."""
    adapter = _make_adapter(tiny_model_dir, tmp_path / "external", meta=None)
    res = merge(_cfg(adapter, tmp_path / "ok", dtype="fp32"))
    assert res.verification["passed"] and read_meta(tmp_path / "ok")["base_model"]["path"] == str(tiny_model_dir.resolve())
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": "org/some-hub-model"}))
    line = _cli_error(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "o")])
    assert "names no local base (org/some-hub-model); pass --model with the base model's folder" in line
    assert not (tmp_path / "o").exists()
    res = merge(_cfg(adapter, tmp_path / "o2", dtype="fp32", model=str(tiny_model_dir)))
    assert res.verification["passed"]


def test_a_moved_base_is_given_with_model_and_another_model_is_refused(adapter_dir, tiny_model_dir, tmp_path):
    """A base folder moved after training could only be fixed by editing appliance.json: merge had no --model."""
    moved = tmp_path / "moved"
    shutil.copytree(adapter_dir, moved)
    meta = json.loads((moved / "appliance.json").read_text())
    meta["base_model"] = {**meta["base_model"], "name": "gone", "path": str(tmp_path / "gone-base")}
    (moved / "appliance.json").write_text(json.dumps(meta))
    line = _cli_error(["merge", "--adapter", str(moved), "--output", str(tmp_path / "o")])
    assert "pass --model with the base model's folder" in line
    res = merge(_cfg(moved, tmp_path / "m", dtype="fp32", model=str(tiny_model_dir)))
    assert res.verification["passed"] and read_meta(tmp_path / "m")["base_model"]["path"] == str(tiny_model_dir.resolve())
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    (other / "config.json").write_text(json.dumps(json.loads((other / "config.json").read_text()) | {"num_hidden_layers": 9}))
    with pytest.raises(ApplianceError, match=r"^--model .*other: not the model the adapter was trained on"):
        merge(_cfg(adapter_dir, tmp_path / "m3", dtype="fp32", model=str(other)))


def test_cli_unknown_dtype(adapter_dir, tmp_path):
    line = _cli_error(["merge", "--adapter", str(adapter_dir), "--output", str(tmp_path / "o"), "--dtype", "int3"])
    assert "--dtype int3" in line and "bf16" in line


def test_refuses_a_quantized_base(adapter_dir, tiny_model_dir, tmp_path):
    qbase = tmp_path / "qbase"
    shutil.copytree(tiny_model_dir, qbase)
    cfg = json.loads((qbase / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (qbase / "config.json").write_text(json.dumps(cfg))
    adapter = tmp_path / "ad"
    shutil.copytree(adapter_dir, adapter)
    (adapter / "appliance.json").write_text(json.dumps(_meta(qbase)), encoding="utf-8")
    with pytest.raises(ApplianceError, match="quantized"):
        merge(_cfg(adapter, tmp_path / "o"))


def test_output_never_overlaps_the_adapter_or_base(adapter_dir, tiny_model_dir, tmp_path):
    """--overwrite replaces the output folder: the adapter and base it reads are never that folder."""
    for out in (adapter_dir, adapter_dir / "sub", tiny_model_dir, adapter_dir.parent):
        with pytest.raises(ApplianceError, match="overlaps the"):
            merge(_cfg(adapter_dir, out, dtype="fp32", overwrite=True))
    assert (adapter_dir / "adapter_config.json").is_file() and (tiny_model_dir / "config.json").is_file()


def test_output_is_never_inside_another_run(adapter_dir, tmp_path):
    """saves/other/sub was written inside another training run, which its next --overwrite would delete."""
    other = tmp_path / "saves" / "other"
    other.mkdir(parents=True)
    (other / "appliance.json").write_text(json.dumps({"kind": "lora-adapter"}), encoding="utf-8")
    with pytest.raises(ApplianceError, match=r"^--output .*other/sub: is inside .*other, which holds a lora-adapter"):
        merge(_cfg(adapter_dir, other / "sub", dtype="fp32"))
    assert not (other / "sub").exists()


def test_damaged_output_is_merged_again(adapter_dir, tmp_path):
    out = tmp_path / "m"
    merge(_cfg(adapter_dir, out, dtype="fp32"))
    shard = next(out.glob("*.safetensors"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    res = merge(_cfg(adapter_dir, out, dtype="fp32", overwrite=True))
    assert not res.already_merged and res.verification["passed"]
    from safetensors import safe_open

    with safe_open(str(next(out.glob("*.safetensors"))), framework="pt") as st:
        assert list(st.keys())


def test_broken_run_files_are_one_line_errors(adapter_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir, bad)
    for content, needle in (("[]", "not a run description"), ('{"kind": "lora-adapter", "base_model": "x"}', "not a run description"),
                            (b"\xff\xfe", "not UTF-8")):
        (bad / "appliance.json").write_bytes(content if isinstance(content, bytes) else content.encode())
        res = CliRunner().invoke(main, ["merge", "--adapter", str(bad), "--output", str(tmp_path / "o")])
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    shutil.copy(adapter_dir / "appliance.json", bad / "appliance.json")
    (bad / "adapter_config.json").write_text("{}")
    res = CliRunner().invoke(main, ["merge", "--adapter", str(bad), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "adapter_config.json: has no peft_type" in res.output


def test_temporary_merges_of_killed_runs_are_swept(adapter_dir, tmp_path):
    out = tmp_path / "m"
    dead = tmp_path / ".m.tmp-999999999"  # no such pid
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 10)
    merge(_cfg(adapter_dir, out, dtype="fp32"))
    assert not dead.exists()


def test_a_qlora_merge_says_what_its_verification_compared():
    from appliance.merge import MergeResult

    v = {"passed": True, "greedy_equal": 8, "greedy_required": 7, "prompts": 8, "max_logit_diff": 0.2,
         "logit_tolerance": 1.0, "dtype": "bf16"}
    qlora = MergeResult(Path("m"), v, meta={"adapter": {"method": "qlora"}}).verdict
    assert qlora.startswith("merged -> m; verification PASS") and "checked against the full-precision base + adapter" in qlora
    assert "QLoRA" not in MergeResult(Path("m"), v, meta={"adapter": {"method": "lora"}}).verdict


def test_a_file_or_foreign_folder_as_output_is_never_told_to_pass_overwrite(adapter_dir, tmp_path):
    """Without --overwrite it said "pass --overwrite to replace it", and --overwrite then refused it."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    line = _cli_error(["merge", "--adapter", str(adapter_dir), "--output", str(afile), "--dtype", "fp32"])
    assert "is a file, so --overwrite will not delete it; choose a new --output" in line
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "n.txt").write_text("keep me")
    line = _cli_error(["merge", "--adapter", str(adapter_dir), "--output", str(notes), "--dtype", "fp32"])
    assert "is not a merged model" in line and "pass --overwrite" not in line
    assert afile.read_text() == "keep me" and (notes / "n.txt").read_text() == "keep me"


def test_a_moved_local_base_is_not_replaced_by_a_folder_of_its_name_here(adapter_dir, tiny_model_dir, tmp_path,
                                                                          appliance_home, monkeypatch):
    """A base trained from --model loc/mybase and since moved was looked up by its bare name: ./mybase in the current
    directory (any model of that name) was merged into; or, with none there, the error listed the registry."""
    adapter = tmp_path / "ad"
    shutil.copytree(adapter_dir, adapter)
    meta = json.loads((adapter / "appliance.json").read_text())
    meta["base_model"] = {**meta["base_model"], "name": "mybase", "path": str(tmp_path / "loc" / "mybase")}
    (adapter / "appliance.json").write_text(json.dumps(meta))
    here = tmp_path / "cwd"
    shutil.copytree(tiny_model_dir, here / "mybase")
    monkeypatch.chdir(here)
    line = _cli_error(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "o")])
    assert f"base model folder {tmp_path / 'loc' / 'mybase'} no longer exists (moved or deleted); pass --model" in line
    assert "use one of" not in line and not (tmp_path / "o").exists()
    # a copy under $APPLIANCE_HOME/models/<name> is the documented place a name is found (a home moved whole)
    shutil.copytree(tiny_model_dir, appliance_home / "models" / "mybase")
    res = merge(_cfg(adapter, tmp_path / "o", dtype="fp32"))
    assert read_meta(res.output)["base_model"]["path"] == str(appliance_home / "models" / "mybase")


def test_a_kill_between_the_two_renames_leaves_the_new_merge_in_place(tmp_path, monkeypatch):
    """`kill` unwinds like Ctrl-C: landing after the old output was set aside and before the new one was renamed in,
    it left no --output at all (the new one removed with the temporary folder, the old one as a hidden .old-PID)."""
    import os
    import signal

    out, tmp = tmp_path / "m", tmp_path / ".m.tmp-1"
    out.mkdir()
    (out / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    real = os.replace
    calls = []

    def replace_then_kill(a, b):
        real(a, b)
        calls.append(b)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def as_ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, as_ctrl_c)
    monkeypatch.setattr(merge_mod.os, "replace", replace_then_kill)
    try:
        with pytest.raises(KeyboardInterrupt):
            merge_mod._replace_dir(tmp, out)
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, previous)
    assert (out / "new").read_text() == "new" and len(calls) == 2


def test_a_set_aside_output_of_a_killed_merge_is_swept(adapter_dir, tmp_path):
    dead = tmp_path / ".m.old-999999999"  # kill -9 after the old output was set aside: no such pid now
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 10)
    merge(_cfg(adapter_dir, tmp_path / "m", dtype="fp32"))
    assert not dead.exists()


def test_torch_dtype_names_are_the_short_ones(adapter_dir, tmp_path):
    """`--dtype float32` (torch's name, as transformers' torch_dtype) was refused as an unknown dtype."""
    out = tmp_path / "m"
    merge(_cfg(adapter_dir, out, dtype="fp32"))
    res = CliRunner().invoke(main, ["merge", "--adapter", str(adapter_dir), "--output", str(out), "--dtype", "float32"])
    assert res.exit_code == 0 and "already merged" in res.output, res.output  # the same merge, not another dtype
    res = CliRunner().invoke(main, ["merge", "--adapter", str(adapter_dir), "--output", str(out), "--dtype", "int8"])
    assert res.exit_code == 2 and "--dtype int8: unknown dtype; use one of bf16, fp16, fp32" in res.output
