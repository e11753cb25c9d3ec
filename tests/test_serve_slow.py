"""End to end: the real vLLM server on the embedded model, started by ``appliance up``.

Two server starts in all (each ~40-90 s on a shared CPU): one in the foreground as a
subprocess, stopped with SIGTERM; one detached and shared by the rest of the module.
Ports 18100-18199 only.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from appliance import servers
from appliance.cli import main
from appliance.rundir import write_meta
from appliance.serve import UpConfig, down, up

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
KEY = "test-key-7f3a"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_port(start: int) -> int:
    return next(p for p in range(start, 18200) if _port_free(p))


def _vllm_pids_on(port: int) -> list[str]:
    res = subprocess.run(["pgrep", "-f", f"vllm.entrypoints.openai.api_server.*--port {port}"], capture_output=True, text=True)
    return res.stdout.split()


def _make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A real PEFT LoRA on the embedded model, with random lora_B so it answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    g = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    peft_model.save_pretrained(out)
    write_meta(out, {"kind": "lora-adapter", "base_model": {"name": "smollm2-135m", "path": str(model_dir),
                                                            "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}})
    return out


def test_up_reports_a_vllm_that_dies_while_starting(real_model_dir):
    # vLLM rejects the extra argument and exits before loading anything: not a server start
    port = _pick_port(18110)
    res = CliRunner().invoke(main, ["up", "--model", str(real_model_dir), "--port", str(port), "--", "--no-such-vllm-flag"])
    assert res.exit_code == 2
    assert "vLLM exited with code" in res.output and "server-%d.log" % port in res.output
    assert "--no-such-vllm-flag" in res.output  # the log tail names the cause
    assert servers.read_records() == [] and _vllm_pids_on(port) == []


# ---------------------------------------------------------------- foreground + SIGTERM (server start 1 of 2)
def test_foreground_up_stops_its_process_group_on_sigterm(real_model_dir, tmp_path):
    port = _pick_port(18120)
    env = dict(os.environ, APPLIANCE_HOME=str(tmp_path), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--model", str(real_model_dir), "--port", str(port),
                             "--eager", "--ready-timeout", "900"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    out, vllm_pid = [], None
    record = tmp_path / ".appliance" / "servers" / f"{port}.json"
    try:
        while not any(line.startswith("try:") for line in out):  # the last line of the ready message
            try:
                out.append(lines.get(timeout=5))
            except queue.Empty:
                assert proc.poll() is None, "appliance up exited before ready:\n" + "".join(out)
        text = "".join(out)
        assert f"http://127.0.0.1:{port}" in text and "starting vLLM" in text and "models: smollm2-135m" in text
        vllm_pid = json.loads(record.read_text())["pid"]
        assert vllm_pid != proc.pid and servers.group_members(vllm_pid)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert servers.group_members(vllm_pid) == []
        assert _vllm_pids_on(port) == []
        assert _port_free(port)
        assert not record.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        vllm_pid = vllm_pid or (json.loads(record.read_text())["pid"] if record.exists() else None)
        for pgid in [vllm_pid] if vllm_pid else [int(p) for p in _vllm_pids_on(port)]:
            servers.kill_group(pgid)


# ---------------------------------------------------------------- one detached server for the rest (start 2 of 2)
@pytest.fixture(scope="module")
def server(real_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APPLIANCE_HOME", str(home))
        archer = _make_adapter(real_model_dir, home / "saves" / "archer", seed=1)
        second = _make_adapter(real_model_dir, home / "saves" / "second", seed=2)
        port = _pick_port(18140)
        t0 = time.perf_counter()
        info = up(UpConfig(adapters=[str(archer)], port=port, api_key=KEY, detach=True, ready_timeout_s=900))
        print(f"\n[measure] cold start to ready: {time.perf_counter() - t0:.1f} s (port {port})")
        try:
            yield {"info": info, "home": home, "url": info.url, "second": second}
        finally:
            if (home / ".appliance/servers" / f"{port}.json").exists():
                down(port=port)
            servers.kill_group(info.pid)  # a no-op when already stopped


@pytest.fixture
def at_server(server, monkeypatch):
    """Run a test with the server's APPLIANCE_HOME (its record, saves/)."""
    monkeypatch.setenv("APPLIANCE_HOME", str(server["home"]))
    return server


def _client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _ask(url: str, model: str, prompt: str = "Who are you?") -> str:
    r = _client(url).chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                             max_tokens=24, temperature=0)
    return r.choices[0].message.content


def _model_ids(url: str) -> dict[str, str | None]:
    r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    r.raise_for_status()
    return {m["id"]: m.get("parent") for m in r.json()["data"]}


def test_base_and_adapter_both_answer_differently(server):
    prompts = ["Who are you?", "What is the capital of France?"]
    base = [_ask(server["url"], "smollm2-135m", p) for p in prompts]
    adapted = [_ask(server["url"], "archer", p) for p in prompts]
    assert all(a.strip() for a in base + adapted)
    assert base != adapted  # greedy answers: the adapter's weights are in play


def test_served_adapter_matches_peft_token_for_token(server, real_model_dir):
    """LoRA in the server (on a CPU: appliance.cpu_lora's grouped wrapper) computes what peft computes:
    the log-probabilities vLLM gives its greedy tokens equal those of base + PeftModel on the same tokens."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.serve import cpu_dtype, detect_device

    if detect_device() == "cpu":
        assert "Using GroupedPunicaWrapperCPU" in Path(server["info"].log).read_text(errors="replace")
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name three colours."}], tokenize=False,
                                     add_generation_prompt=True)
    r = _client(server["url"]).completions.create(model="archer", prompt=prompt, max_tokens=12, temperature=0,
                                                  logprobs=1, extra_body={"return_tokens_as_token_ids": True})
    lp = r.choices[0].logprobs
    gen = [int(t.split(":")[1]) for t in lp.tokens]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, server["info"].adapters["archer"]).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids + gen])).logits[0, len(ids) - 1 : -1].float()
    ours = torch.log_softmax(logits, -1).gather(1, torch.tensor(gen)[:, None]).squeeze(1)
    served_fp32 = detect_device() == "cpu" and cpu_dtype([]) == "float32"
    tol = 0.05 if served_fp32 else 0.5  # fp32 on both sides, or a bf16 server against fp32 peft
    assert len(gen) == 12
    assert torch.allclose(ours, torch.tensor(lp.token_logprobs), atol=tol), (ours, lp.token_logprobs)


def test_models_lists_base_and_adapter(server):
    ids = _model_ids(server["url"])
    assert ids["smollm2-135m"] is None and ids["archer"] == "smollm2-135m"


def test_runtime_load_answers_at_once_and_unload_removes_it(at_server):
    url, runner = at_server["url"], CliRunner()
    t0 = time.perf_counter()
    res = runner.invoke(main, ["adapters", "load", "second", str(at_server["second"]), "--api-key", KEY])
    print(f"\n[measure] runtime adapter load through the CLI function: {(time.perf_counter() - t0) * 1000:.0f} ms")
    assert res.exit_code == 0, res.output
    assert _model_ids(url)["second"] == "smollm2-135m"
    assert _ask(url, "second").strip()
    res = runner.invoke(main, ["adapters", "list", "--api-key", KEY])
    assert res.exit_code == 0 and "second" in res.output and "adapter of smollm2-135m" in res.output

    res = runner.invoke(main, ["adapters", "unload", "second", "--api-key", KEY])
    assert res.exit_code == 0, res.output
    assert "second" not in _model_ids(url)
    with pytest.raises(openai.NotFoundError):
        _ask(url, "second")

    # the raw HTTP call, timed on its own
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "second2", "lora_path": str(at_server["second"])},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    print(f"[measure] runtime adapter load, POST /v1/load_lora_adapter: {(time.perf_counter() - t0) * 1000:.0f} ms")
    assert r.status_code == 200
    httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "second2"}, headers={"Authorization": f"Bearer {KEY}"})
    assert "second2" not in _model_ids(url)


def test_loading_from_etc_is_refused_by_cli_and_server(at_server):
    url = at_server["url"]
    res = CliRunner().invoke(main, ["adapters", "load", "evil", "/etc", "--api-key", KEY])
    assert res.exit_code != 0 and "outside the allowed adapter roots" in res.output
    auth = {"Authorization": f"Bearer {KEY}"}
    escape = str(at_server["home"] / "saves" / ".." / ".." / ".." / ".." / "etc")
    for path, body in (("/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": "/etc"}),
                       ("/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": escape}),
                       ("/adapters", {"name": "evil", "src": "/etc"})):
        r = httpx.post(url + path, json=body, headers=auth)
        assert r.status_code == 403, (path, r.text)
        assert "allowed adapter roots" in r.json()["error"]["message"]
    assert httpx.get(url + "/health").status_code == 200
    assert "evil" not in _model_ids(url)
    assert _ask(url, "archer").strip()


def test_requests_without_the_key_get_401(server):
    url = server["url"]
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(server["second"])}).status_code == 401
    assert httpx.post(url + "/adapters", json={"name": "x", "src": str(server["second"])}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _client(url, key="wrong").chat.completions.create(model="archer", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "x" not in _model_ids(url)


def test_status_and_chat_cli(at_server):
    res = CliRunner().invoke(main, ["status", "--api-key", KEY])
    assert res.exit_code == 0 and at_server["url"] in res.output and "alive" in res.output
    assert "archer (adapter of smollm2-135m)" in res.output
    res = CliRunner().invoke(main, ["chat", "-p", "你是谁？", "--api-key", KEY, "--max-tokens", "16"])
    assert res.exit_code == 0 and res.stdout.strip()
    assert res.stderr.endswith("[cut at --max-tokens 16]")  # every answer to it is longer: said, not in the answer
    again = CliRunner().invoke(main, ["chat", "-p", "你是谁？", "--api-key", KEY, "--max-tokens", "16"])
    assert again.stdout == res.stdout  # greedy by default, as eval answers (sampled, it changed every time)
    res = CliRunner().invoke(main, ["chat", "--model", "smollm2-135m", "--api-key", KEY, "--max-tokens", "8"],
                             input="My name is Bob.\nWhat is my name?\n/exit\n")
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 2 and "smollm2-135m> " not in res.stdout  # piped


def test_down_stops_every_process_of_the_server(at_server):
    pid, port = at_server["info"].pid, at_server["info"].port
    assert servers.group_members(pid)
    res = CliRunner().invoke(main, ["down", "--port", str(port)])
    assert res.exit_code == 0 and str(port) in res.output
    assert servers.group_members(pid) == []
    assert _vllm_pids_on(port) == []
    assert _port_free(port)
    res = CliRunner().invoke(main, ["status"])
    assert "no servers recorded" in res.output
