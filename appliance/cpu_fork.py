"""A faster vLLM server start on a small CPU machine, loaded into the server as a vLLM plugin.

vLLM's CPU platform always starts the engine-core process with ``spawn``
(``VLLM_WORKER_MULTIPROC_METHOD=spawn``), so the child imports torch and vLLM a second time:
on our 2-core machine that is 10-12 s of a ~32 s start, during which the API server's process
already holds every module the child needs. ``fork`` gives the child those imports for free;
the start takes 7-10 s less (measured: `appliance up` ready in 24-25 s against 31-33 s, the same
decoding speed and the same greedy answers; docs/serving.md).

Spawn exists for a reason that does not apply where this plugin acts: a forked child must not
inherit a running OpenMP pool or a worker it then spawns again. The API server runs no torch
computation before it starts the engine core, and ``appliance up`` enables this only where the
model runs inside the engine-core process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which it sets
on machines of at most 4 cores), so the engine core starts no workers of its own. vLLM's own
GPU path forks its engine core the same way. ``APPLIANCE_VLLM_FORK=0`` keeps vLLM's spawn.

A forked child also inherits what spawn would not: the API server's listening socket, and no
tie to its parent. If the API server died (``kill -9``), the engine core lived on, holding the
port open without ever answering (clients hung until their timeouts, ~15 min for an eval) and
~8 GB of KV cache. So the child closes its copy of the server socket right after the fork
and stops itself (SIGTERM, vLLM's clean shutdown) once its parent is gone.

Registered through the ``vllm.general_plugins`` entry point ``appliance_cpu_fork``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

PARENT_CHECK_S = 1.0  # how often a forked engine core looks for its parent

PLUGIN = "appliance_cpu_fork"  # the entry point's name, as VLLM_PLUGINS must list it
ENV = "APPLIANCE_VLLM_FORK"  # "1": fork the engine core (set by `appliance up` where it is safe)


def wanted(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether this server's engine core should be forked: asked for, and the model runs inside it."""
    return env.get(ENV) == "1" and env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"


def register() -> None:
    """vLLM plugin entry point: on the CPU platform, undo its forced spawn after it configures."""
    from vllm.platforms import current_platform

    if not wanted() or not current_platform.is_cpu():
        return
    cls = type(current_platform)
    if getattr(cls.check_and_update_config, "_appliance_fork", False):
        return  # plugins load more than once per process
    configure = cls.check_and_update_config.__func__

    def check_and_update_config(platform: type, vllm_config: object) -> None:
        configure(platform, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    check_and_update_config._appliance_fork = True  # type: ignore[attr-defined]
    cls.check_and_update_config = classmethod(check_and_update_config)
    os.register_at_fork(after_in_child=after_fork_in_child)


def after_fork_in_child() -> None:
    """In a forked child: let go of the parent's server socket, and end with the parent."""
    close_server_sockets(server_port())
    parent = os.getppid()
    threading.Thread(target=_follow_parent, args=(parent,), name="appliance-parent-watch", daemon=True).start()


def server_port(argv: list[str] | None = None) -> int:
    """The API server's --port, from the command line the forked child shares with it (vLLM's default 8000)."""
    from appliance.serve import flag_value

    value = flag_value(sys.argv if argv is None else argv, "--port")
    return int(value) if value is not None and value.isdigit() else 8000


def close_server_sockets(port: int) -> list[int]:
    """Close this process's copies of TCP sockets bound to ``port`` and not connected (the server's, listening
    or about to: vLLM binds before it forks, uvicorn listens after); the parent keeps its own. The fds closed."""
    closed = []
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return closed
    for fd in fds:
        try:
            dup = os.dup(fd)  # probed through a duplicate: closing the probe leaves fd alone
        except OSError:
            continue  # already gone (the listing's own fd)
        try:
            probe = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue  # not a socket
        with probe:
            ours = False
            if probe.family in (socket.AF_INET, socket.AF_INET6) and probe.type == socket.SOCK_STREAM:
                try:
                    ours = probe.getsockname()[1] == port
                    probe.getpeername()  # a connection (a client's, or an accepted one): not the server socket
                    ours = False
                except OSError:
                    pass
        if ours:
            os.close(fd)
            closed.append(fd)
    return closed


def _follow_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)
