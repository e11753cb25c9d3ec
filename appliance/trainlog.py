"""Training telemetry: JSONL log, a progress bar with loss and tokens/s, the loss curve."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class LogCallback(TrainerCallback):
    """Writes every logging step to JSONL and drives a tqdm bar (steps, loss, tokens/s, ETA)."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = path
        if not resume and path.exists():
            path.unlink()
        self.bar = None
        self.t0 = 0.0
        self.tokens0 = 0
        self.first_loss: float | None = None
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kw):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)
        self.t0 = time.time()
        self.tokens0 = int(state.num_input_tokens_seen or 0)
        if state.global_step:
            self.resumed_at(state.global_step)

    def resumed_at(self, step: int) -> None:
        """Keep the log of the steps up to the checkpoint resumed from: those logged after it, before the interrupt,
        run again, and an end-of-run summary (an interrupt while saving the last checkpoint) is written anew."""
        if not self.path.exists():
            return
        rows = [r for r in read_log(self.path) if r.get("step", 0) <= step and "train_loss" not in r]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        losses = [float(r["loss"]) for r in rows if "loss" in r]
        self.first_loss, self.last_loss = (losses[0], losses[-1]) if losses else (None, None)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        tokens = int(state.num_input_tokens_seen or 0)
        elapsed = max(time.time() - self.t0, 1e-9)
        tps = (tokens - self.tokens0) / elapsed
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 3), **logs,
               "tokens_seen": tokens, "tokens_per_s": round(tps, 1), "elapsed_s": round(elapsed, 1)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if "loss" in logs:
            self.first_loss = self.first_loss if self.first_loss is not None else float(logs["loss"])
            self.last_loss = float(logs["loss"])
        if self.bar is not None and "loss" in logs:  # the end-of-run summary carries no step loss
            self.bar.n = state.global_step
            self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}", tok_s=f"{tps:.0f}")
            self.bar.refresh()

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()


def read_log(path: Path) -> list[dict]:
    """The log's rows, less a last line a kill cut short."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def mean_loss(path: Path) -> float | None:
    """The mean step loss of the whole run (a step a row: logging_steps 1), as the Trainer's train_loss of a run
    trained in one go; a resumed run's Trainer averages only the steps after its checkpoint."""
    losses = [float(r["loss"]) for r in read_log(path) if "loss" in r] if path.exists() else []
    return sum(losses) / len(losses) if losses else None


def plot_loss(log_path: Path, png: Path) -> None:
    """Loss against step, from the JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_log(log_path) if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("appliance train")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
