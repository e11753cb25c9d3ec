"""What the machine can do, shared by the stages (no stage imports another for this)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


def passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin; call before torch is imported.

    On a CPU shared with another process, spinning threads wait at every barrier for a
    descheduled peer: merge verification took 96 s instead of 8 s on a busy 2-core machine.
    ``train``, ``merge`` and ``pipeline`` set it (the pipeline's default training took 199 s with it,
    206 s without, on a quiet machine); a user's own setting wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@cache  # a fact of the machine: read /proc/cpuinfo once per process
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX).

    Elsewhere bf16 matmuls are emulated: vLLM then serves in fp32, and QLoRA computes in fp32
    (measured on a 2-core AVX2 EPYC: 8 tokens/s with bf16 compute, 144 with fp32).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_memory_available() -> int | None:
    """Bytes a CPU vLLM worker can still allocate, as vLLM counts them (None if unreadable).

    vLLM's CPU backend binds its memory to the NUMA node of its first CPU and sizes the KV cache
    from that node's meminfo, which on some VMs holds only part of the RAM (11 of 23 GiB on one
    of ours): free + file cache + reclaimable there, within the cgroup's limit.
    """
    try:
        cpu = min(os.sched_getaffinity(0))
        links = sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}").glob("node[0-9]*"))
        node = links[0] / "meminfo" if links else Path("/sys/devices/system/node/node0/meminfo")
        per_node = node.is_file()
        info = {}
        for line in (node if per_node else Path("/proc/meminfo")).read_text().splitlines():
            parts = line.split()
            if per_node:
                parts = parts[2:]  # "Node 0 MemFree: 8058728 kB"
            if len(parts) >= 2 and parts[1].isdigit():
                info[parts[0].rstrip(":")] = int(parts[1]) * 1024
        avail = sum(info.get(k, 0) for k in ("MemFree", "Active(file)", "Inactive(file)", "SReclaimable"))
    except (OSError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail or None
