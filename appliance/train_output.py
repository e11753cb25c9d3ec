"""Where a training run is written: the --output checks, the staging folder a run is built (and resumed) in,
its checkpoints, and the rename that publishes a finished run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from appliance import paths, rundir
from appliance.errors import ApplianceError
from appliance.train_config import TrainConfig


def staging_dir(out: Path) -> Path:
    """Where an unfinished run of ``out`` is built (and resumed from)."""
    return out.parent / f".{out.name}.partial"


def output_path(output: str) -> Path:
    """``--output`` as a path: absolute, or under $APPLIANCE_HOME (as merge and eval place theirs)."""
    p = Path(output).expanduser()
    return (p if p.is_absolute() else paths.home() / p).resolve()


def check_output(out: Path, cfg: TrainConfig) -> None:
    """Refuse, before any work, an --output that --overwrite would have to destroy to use."""
    if not str(cfg.output or "").strip():  # "" would name $APPLIANCE_HOME itself
        raise ApplianceError("--output is empty; give the run's folder, e.g. --output saves/archer")
    paths.refuse_file_on_path(out, "--output")
    flag = f"--output {cfg.output}"
    inside = rundir.enclosing_run(out)
    if inside is not None:
        raise ApplianceError(f"{flag}: is inside {inside[0]}, which holds a {inside[1]}; choose an --output "
                             "outside it, such as saves/NAME")
    if not out.exists():
        return
    if not cfg.overwrite:
        if rundir.folder_kind(out) == "lora-adapter":
            return  # the same run again is harmless: train() compares its settings and data once they are read
        raise ApplianceError(f"{flag}: already exists; pass --overwrite to replace it, or choose another --output")
    # --overwrite replaces a previous run, never a folder of other things (".", saves/, the data's folder)
    cwd, home = Path.cwd().resolve(), paths.home()
    kind = rundir.folder_kind(out)
    if kind not in (None, "lora-adapter"):
        # a merged or pulled model (models/NAME, perhaps a link to the base that this run reads) is not ours to replace
        raise ApplianceError(f"{flag}: holds a {kind} (its appliance.json says so), not a training run, so --overwrite "
                             "will not delete it; choose a new --output such as saves/NAME")
    is_run = kind == "lora-adapter" or ((out / "adapter_config.json").is_file() and not (out / "config.json").is_file())
    if out in (cwd, home, *cwd.parents, *home.parents) or (any(out.iterdir()) and not is_run):
        raise ApplianceError(f"{flag}: is not a run directory (no appliance.json), so --overwrite will not delete it; "
                             "choose a new --output")
    foreign = _not_written_by_train(out)
    if foreign:
        raise ApplianceError(f"{flag}: holds {foreign}, which training did not write, so --overwrite will not delete "
                             "it; move it out of the folder, or choose another --output")


# what a run wrote before appliance.json listed its files: peft's and the tokenizer's files, our logs
_OLD_RUN_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "appliance.json",
                  "chat_template.jinja", "chat_template.json", "loss.png", "runs", "trainer_log.jsonl",
                  "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt"}


def _not_written_by_train(out: Path) -> str | None:
    """The first entry of a run folder that its run did not write (the run's appliance.json lists its files;
    for an older run, the names any run writes)."""
    try:
        files = json.loads((out / "appliance.json").read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        files = None
    for entry in sorted(out.iterdir()):
        ours = entry.name in files if isinstance(files, list) else \
            entry.name in _OLD_RUN_FILES or entry.name.startswith("tokenizer")
        if not ours:
            return entry.name + ("/" if entry.is_dir() else "")
    return None


def keep_or_discard_checkpoint(stage: Path, cfg: TrainConfig) -> None:
    """An interrupted run's checkpoint is continued (--resume), discarded (--overwrite) or kept (refused)."""
    last = last_checkpoint(stage / "checkpoints")
    if cfg.resume:
        if not last:
            print(f"note: --resume: no checkpoint in {stage}, so training starts from step 0", file=sys.stderr)
        return
    if last and not cfg.overwrite:
        raise ApplianceError(f"--output {cfg.output}: an interrupted run left {Path(last).name} in {stage}; "
                             "pass --resume to continue it, or --overwrite to start over")
    if last:
        print(f"note: --overwrite: discarding the interrupted run's {Path(last).name} in {stage}", file=sys.stderr)
    if stage.exists():
        shutil.rmtree(stage)


@contextlib.contextmanager
def run_lock(out: Path, output: str) -> Iterator[None]:
    """Held while a run of ``out`` trains: a second `train` into the same --output would share its staging folder,
    each deleting the other's checkpoints and publishing a log of both."""
    import fcntl

    lock = out.parent / f".{out.name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ApplianceError(f"--output {output}: cannot write in {out.parent} ({e.strerror}); choose a --output in a "
                             "folder you can write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise ApplianceError(f"--output {output}: another `appliance train` (pid {pid}) is training into it now; "
                                 "wait for it to finish, or choose another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
    finally:
        os.close(fd)


def make_dirs(stage: Path, output: str) -> list[Path]:
    """Create the staging folder; returns the folders it created, to remove on failure."""
    try:
        return paths.make_dirs(stage)
    except OSError as e:
        raise ApplianceError(f"--output {output}: cannot create {stage.parent / Path(output).name} "
                             f"({e.strerror}); choose a --output in a folder you can write") from None


def publish(src: Path, out: Path) -> None:
    """Move the finished run into place; an old run is replaced only once the new one is complete."""
    old = out.parent / f".{out.name}.old"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(src, out)
    shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(d: Path) -> str | None:
    """The newest complete checkpoint in ``d``. The Trainer writes trainer_state.json last, so a checkpoint
    without a readable one was cut off mid-save (a kill); the one before it is still whole."""
    cks = [p for p in d.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()] if d.is_dir() else []
    for ck in sorted(cks, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((ck / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return str(ck)
    return None
