"""The grouped CPU LoRA wrapper computes what vLLM's per-token CPU ops compute, and is wired in as a plugin."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from appliance import cpu_lora, serve

IN, RANK, SLICES, MAX_LORAS = 24, 4, (16, 8, 8), 4  # a qkv-like layer: three output slices


def _weights(gen):
    a = tuple(torch.randn(MAX_LORAS, 1, RANK, IN, generator=gen) for _ in SLICES)
    b = tuple(torch.randn(MAX_LORAS, 1, out, RANK, generator=gen) for out in SLICES)
    for w in a + b:
        w[2:] = 0  # slots without an adapter are zero in vLLM, as after reset_lora
    return a, b


def _run(wrapper_cls, ids, is_prefill, x, a, b, add_inputs_y):
    w = wrapper_cls(max_num_batched_tokens=64, max_batches=8, device="cpu")
    # LoRA ids 1 and 2 live in slots 0 and 1; id 0 means no adapter
    w.update_metadata(LoRAMapping(ids, ids, is_prefill=is_prefill), [1, 2, None, None], MAX_LORAS, 100)
    y = add_inputs_y.clone()
    w.add_lora_linear(y, x, a, b, 2.0, SLICES)
    return y


@pytest.mark.parametrize("ids", [(1, 1, 1, 1, 1, 1), (1, 1, 0, 0, 2, 2), (2, 0, 1, 0, 2, 1), (0, 0, 0, 0, 0, 0)],
                         ids=["one adapter", "mixed", "interleaved", "no adapter"])
@pytest.mark.parametrize("is_prefill", [True, False], ids=["prefill", "decode"])
def test_grouped_wrapper_matches_vllm_ops(ids, is_prefill):
    gen = torch.Generator().manual_seed(0)
    a, b = _weights(gen)
    x = torch.randn(len(ids), IN, generator=gen)
    y0 = torch.randn(len(ids), sum(SLICES), generator=gen)
    want = _run(PunicaWrapperCPU, ids, is_prefill, x, a, b, y0)
    got = _run(cpu_lora.GroupedPunicaWrapperCPU, ids, is_prefill, x, a, b, y0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    untouched = torch.tensor(ids) == 0
    assert torch.equal(got[untouched], y0[untouched])  # tokens without an adapter keep the base output
    assert not torch.equal(got[~untouched], y0[~untouched]) or untouched.all()


def test_token_groups():
    assert cpu_lora.token_groups(torch.tensor([0, 0, 0])) == [(0, None)]  # one adapter: no gather at all
    assert cpu_lora.token_groups(torch.tensor([-1, -1])) == []
    groups = cpu_lora.token_groups(torch.tensor([1, -1, 0, 1]))
    assert [(s, r.tolist()) for s, r in groups] == [(0, [2]), (1, [0, 3])]


def test_plugin_is_registered_and_allowed(monkeypatch):
    from vllm.platforms import current_platform

    names = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert names.get(cpu_lora.PLUGIN) == "appliance.cpu_lora:register"
    assert serve.CPU_LORA_PLUGIN == cpu_lora.PLUGIN  # `up` allows exactly this plugin (and no resolvers)
    before = current_platform.get_punica_wrapper()
    monkeypatch.setattr(type(current_platform), "get_punica_wrapper", type(current_platform).get_punica_wrapper)
    monkeypatch.setenv(cpu_lora.ENV, "vllm")
    cpu_lora.register()
    assert current_platform.get_punica_wrapper() == before  # opted out: vLLM's own ops
    monkeypatch.delenv(cpu_lora.ENV)
    cpu_lora.register()
    assert current_platform.get_punica_wrapper() == (cpu_lora.QUALNAME if current_platform.is_cpu() else before)


VOCAB = 40  # the output head's LoRA: A [rank x hidden], B [vocab x rank] per slot


def _run_logits(wrapper_cls, ids, x, a, b, y0):
    w = wrapper_cls(max_num_batched_tokens=64, max_batches=8, device="cpu")
    w.update_metadata(LoRAMapping(ids, ids, is_prefill=False), [1, 2, None, None], MAX_LORAS, 100)
    y = y0.clone()
    w.add_lora_logits(y, x, a, b, 0.5)
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ids", [(1, 1, 1, 1), (1, 0, 2, 0), (0, 0, 0, 0)], ids=["one adapter", "mixed", "no adapter"])
def test_grouped_logits_lora_matches_vllm_ops(ids, dtype):
    """vLLM applies the output head's LoRA to every batch; grouped, it must give the same logits,
    in the same dtypes (a bf16 model: shrink in float32, expand in bf16)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(MAX_LORAS, 1, RANK, IN, generator=gen).to(dtype)
    b = torch.randn(MAX_LORAS, 1, VOCAB, RANK, generator=gen).to(dtype)
    a[2:], b[2:] = 0, 0  # empty slots are zero
    x = torch.randn(len(ids), IN, generator=gen).to(dtype)
    y0 = torch.randn(len(ids), VOCAB, generator=gen).to(dtype)
    want = _run_logits(PunicaWrapperCPU, ids, x, a, b, y0)
    got = _run_logits(cpu_lora.GroupedPunicaWrapperCPU, ids, x, a, b, y0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    untouched = torch.tensor(ids) == 0
    assert torch.equal(got[untouched], y0[untouched])
    assert not torch.equal(got[~untouched], y0[~untouched]) or untouched.all()


@pytest.mark.parametrize("ids", [(1, 1, 1, 1), (2, 0, 1, 0), (0, 0, 0, 0)], ids=["one adapter", "mixed", "no adapter"])
@pytest.mark.parametrize("is_prefill", [True, False], ids=["prefill", "decode"])
def test_grouped_embedding_lora_matches_vllm_ops(ids, is_prefill):
    gen = torch.Generator().manual_seed(2)
    b = torch.randn(MAX_LORAS, 1, IN, RANK, generator=gen)  # B: [hidden x rank] per slot
    b[2:] = 0
    x = torch.randn(len(ids), RANK, generator=gen)  # the rows of A looked up for each token
    y0 = torch.randn(len(ids), IN, generator=gen)
    out = []
    for cls in (PunicaWrapperCPU, cpu_lora.GroupedPunicaWrapperCPU):
        w = cls(max_num_batched_tokens=64, max_batches=8, device="cpu")
        w.update_metadata(LoRAMapping(ids, ids, is_prefill=is_prefill), [1, 2, None, None], MAX_LORAS, 100)
        y = y0.clone()
        w.add_lora_embedding(y, x, b, add_inputs=True)
        out.append(y)
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)
    untouched = torch.tensor(ids) == 0
    assert torch.equal(out[1][untouched], y0[untouched])


def test_fork_plugin_undoes_the_forced_spawn_only_when_asked(monkeypatch):
    """appliance.cpu_fork: registered, allowed by `up`, and it forks the engine core only where `up` asked."""
    import os

    from vllm.platforms import current_platform

    from appliance import cpu_fork

    names = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert names.get(cpu_fork.PLUGIN) == "appliance.cpu_fork:register"
    assert serve.CPU_FORK_PLUGIN == cpu_fork.PLUGIN
    cls = type(current_platform)

    def configure(platform, vllm_config):  # what vLLM's CPU platform does to the start method
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"

    monkeypatch.setattr(cls, "check_and_update_config", classmethod(configure))
    monkeypatch.setattr(cls, "is_cpu", classmethod(lambda c: True))
    hooks = []  # not registered in the test process: every later fork of it would run the hook
    monkeypatch.setattr(os, "register_at_fork", lambda **kw: hooks.append(kw))
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    monkeypatch.delenv(cpu_fork.ENV, raising=False)
    cpu_fork.register()
    current_platform.check_and_update_config(None)
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"  # not asked: vLLM's behaviour
    monkeypatch.setenv(cpu_fork.ENV, "1")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    cpu_fork.register()
    current_platform.check_and_update_config(None)
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"  # workers in processes of their own: spawn
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cpu_fork.register()
    cpu_fork.register()  # plugins load more than once per process: patched once
    current_platform.check_and_update_config(None)
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    assert cls.check_and_update_config.__func__.__closure__[0].cell_contents is configure
    assert hooks == [{"after_in_child": cpu_fork.after_fork_in_child}]


def test_forked_engine_core_lets_go_of_the_server_socket():
    """vLLM binds the API port before it forks: the child's copy is closed (else a dead API server's port
    stays open in the engine core and clients hang), the parent's and other sockets are untouched."""
    import os
    import socket

    from appliance import cpu_fork

    assert cpu_fork.server_port(["x", "--port", "8124"]) == 8124 and cpu_fork.server_port(["x", "--port=9"]) == 9
    assert cpu_fork.server_port(["x", "--model", "m"]) == 8000  # vLLM's default
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    client = socket.create_connection(other.getsockname())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what it closed and what it still holds
        closed = cpu_fork.close_server_sockets(port)
        alive = [fd for fd in (other.fileno(), client.fileno()) if os.path.exists(f"/proc/self/fd/{fd}")]
        os.write(w, json.dumps([closed, alive]).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    closed, alive = json.loads(os.read(r, 1000))
    os.close(r)
    assert closed == [server.fileno()] and alive == [other.fileno(), client.fileno()]
    server.listen()  # the parent's socket still works
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    for s in (server, other, client):
        s.close()


def test_forked_engine_core_ends_with_its_parent(monkeypatch):
    """A forked child whose parent dies (kill -9 of the API server) stops itself instead of living on."""
    import os
    import signal
    import time

    from appliance import cpu_fork

    monkeypatch.setattr(cpu_fork, "PARENT_CHECK_S", 0.05)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "API server": forks the "engine core", then dies
        grandchild = os.fork()
        if grandchild == 0:
            # SIGTERM ends the process, as it shuts down vLLM's engine core: an earlier CLI test in this process
            # installed the CLI's raise-KeyboardInterrupt handler, which would unwind into pytest's own code here
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                cpu_fork.after_fork_in_child()
                os.write(w, str(os.getpid()).encode())
                time.sleep(60)
            finally:
                os._exit(0)
        time.sleep(0.3)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    engine = int(os.read(r, 100))
    os.close(r)

    def running() -> bool:
        try:
            with open(f"/proc/{engine}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()
