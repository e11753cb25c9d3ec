"""What the machine can do, shared by the stages (no stage imports another for this)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


def passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin; call before torch is imported.

    On a CPU shared with another process, spinning threads wait at every barrier for a
    descheduled peer: merge verification took 96 s instead of 8 s on a busy 2-core machine.
    ``merge`` and ``pipeline`` set it (the pipeline's default training took 199 s with it,
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
