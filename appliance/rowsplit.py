"""A training step split by rows across threads, for CPUs.

On the 2-core CPU a micro-batch of 4 short rows makes matrices too small for two intra-op threads
to share well (a 356 x 576 x 1536 matmul: ~100 GFLOP/s on two threads, ~80 on one): each half of
the batch on its own thread, one intra-op thread each, trains ~10% more tokens a second
(docs/benchmarks.md). The step's gradient is the whole batch's: each part's mean loss is weighted
by its share of the labelled tokens, and the parts' gradients are summed in a fixed order, so a run
is as reproducible as before. Not used on GPUs, where one batch already fills the device.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from appliance.sft import IGNORE, answer_only_loss

# APPLIANCE_ROW_SPLIT=0 trains each micro-batch as one (for comparisons)
ENV = "APPLIANCE_ROW_SPLIT"


def parts_for(cuda: bool, dropout: float, threads: int | None = None) -> int:
    """How many row groups a CPU step runs at once: 2 on a CPU of 2+ threads, else 1 (no split).

    LoRA dropout draws from one shared random generator, whose order two threads would make
    depend on timing: with dropout the step stays whole, so a seed still fixes the run.
    """
    threads = torch.get_num_threads() if threads is None else threads
    if cuda or dropout > 0 or threads < 2 or os.environ.get(ENV, "1").strip() == "0":
        return 1
    return 2


def split_rows(batch: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` cut into ``k`` groups of consecutive rows, each without the columns only padding fills."""
    rows = int(batch["input_ids"].shape[0])
    k = max(1, min(k, rows))
    bounds = [round(i * rows / k) for i in range(k + 1)]
    groups = []
    for a, b in zip(bounds, bounds[1:]):
        g = {key: v[a:b] for key, v in batch.items()}
        used = g["attention_mask"].any(0).nonzero()
        width = int(used.max()) + 1 if used.numel() else g["input_ids"].shape[1]
        for key in ("input_ids", "labels", "attention_mask"):
            g[key] = g[key][:, :width]
        groups.append(g)
    return groups


def labelled(batch: dict[str, torch.Tensor]) -> int:
    """The number of tokens the loss is taken over (a label predicts the token after its position)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


class RowSplitStep:
    """Forward and backward of one micro-batch as ``k`` row groups on ``k`` threads.

    Gradients are added to the trainable parameters' ``.grad`` (so gradient accumulation works
    as usual); the returned loss is the batch's mean over labelled tokens, times ``scale``.
    """

    def __init__(self, k: int):
        self.k = k
        self.pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="rows")

    def __call__(self, model: Any, batch: dict[str, torch.Tensor], denominator: float | None = None,
                 scale: float = 1.0) -> torch.Tensor:
        """Accumulate the gradient of ``scale`` x (sum of token losses / ``denominator``); return that loss.

        ``denominator`` defaults to the batch's own labelled tokens (its mean loss).
        """
        groups = split_rows(batch, self.k)
        counts = [labelled(g) for g in groups]
        denominator = float(denominator or sum(counts))
        params = [p for p in model.parameters() if p.requires_grad]

        def run(group: dict[str, torch.Tensor], n: int) -> tuple[tuple | None, float]:
            if n == 0:  # only prompt tokens: nothing to learn, and the mean of nothing is NaN
                return None, 0.0
            loss, _ = answer_only_loss(model, group)
            part = loss * (n / denominator * scale)
            return torch.autograd.grad(part, params, allow_unused=True), float(part.detach())

        results = list(self.pool.map(run, groups, counts))
        for grads, _ in results:  # in row order, whatever order the threads finished in
            if grads is None:
                continue
            for p, g in zip(params, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        return torch.tensor(sum(loss for _, loss in results))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class single_threaded_ops:
    """Within the block, each op runs on the thread that calls it (the row groups' threads share the cores)."""

    def __init__(self, parts: int):
        self.parts = parts

    def __enter__(self) -> "single_threaded_ops":
        self.before = torch.get_num_threads()
        if self.parts > 1:
            torch.set_num_threads(max(1, self.before // self.parts))
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.before)
