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

Registered through the ``vllm.general_plugins`` entry point ``appliance_cpu_fork``.
"""

from __future__ import annotations

import os

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
