"""Where state lives. ``APPLIANCE_HOME`` roots all of it (default: the current directory).

Layout under the home: ``models/<name>/`` pulled weights, ``saves/<run>/`` adapters,
``reports/`` eval and bench outputs, ``.appliance/`` runtime state (pid files, caches).
Built-in resources (dataset registry, identity data, model registry, prompt sets) ship
with the package and are found whether it runs from a checkout or an installed wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def home() -> Path:
    """The root of all appliance state: ``$APPLIANCE_HOME`` or the current directory."""
    return Path(os.environ.get("APPLIANCE_HOME") or os.getcwd()).resolve()


def models_dir() -> Path:
    return home() / "models"


def saves_dir() -> Path:
    return home() / "saves"


def reports_dir() -> Path:
    return home() / "reports"


def state_dir() -> Path:
    """Runtime state: pid files of detached servers, caches."""
    return home() / ".appliance"


def cache_dir() -> Path:
    return state_dir() / "cache"


def resource_dir(name: str) -> Path:
    """A built-in resource folder (``data``, ``models``, ``evals``).

    In a wheel they are bundled under ``appliance/_builtin/``; in a checkout they sit
    at the repository root next to the package.
    """
    bundled = _PKG / "_builtin" / name
    if bundled.is_dir():
        return bundled
    return _PKG.parent / name


def output_folder(output: str, flag: str = "--output") -> Path:
    """A user-given output folder. A relative one is found where a relative input is read from
    (:func:`resolve_user_path`): the current directory when it exists there, else $APPLIANCE_HOME, where a
    new one is created. So ``--from-answers out/r/answers.jsonl --output out/r`` names one folder."""
    from appliance.errors import ApplianceError

    if not output.strip():
        # an empty value would silently mean the default folder, or the current directory
        raise ApplianceError(f"{flag} is empty; give a folder, or leave {flag} out for the default")
    p = Path(output).expanduser()
    if p.is_absolute():
        return p
    here = Path.cwd() / p
    return here if os.path.lexists(here) else home() / p


def resolve_user_path(path: str | os.PathLike) -> Path:
    """A user-given path: absolute, or relative to the current directory if it exists there, else to the home."""
    from appliance.errors import ApplianceError

    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    try:
        if p.exists():
            return p.resolve()
        return (home() / p).resolve() if (home() / p).exists() else p.resolve()
    except PermissionError:
        raise ApplianceError(f"{path}: permission denied on a folder of the path; make it readable or give another "
                             "path") from None
    except (RuntimeError, OSError) as e:  # Python < 3.13 raises RuntimeError on a symlink loop
        raise ApplianceError(f"{path}: cannot resolve the path ({e}); fix the symbolic link or give another path") from None


def looked_in(path: str | os.PathLike) -> str:
    """`` (looked in CWD and HOME)`` for a relative path that :func:`resolve_user_path` did not find (one folder when
    they are the same), "" for an absolute one: what a "not found" error names."""
    if Path(path).expanduser().is_absolute():
        return ""
    return f" (looked in {' and '.join(dict.fromkeys([str(Path.cwd().resolve()), str(home())]))})"


def refuse_file_on_path(out: Path, flag: str) -> None:
    """Fail before any work when ``out`` (a folder to write) or its nearest existing ancestor is a file."""
    from appliance.errors import ApplianceError

    for d in [out, *out.parents]:
        if d.exists():
            if not d.is_dir():
                raise ApplianceError(f"{flag} {out}: {d} is a file, not a folder; choose another {flag}")
            return


def make_dirs(d: Path) -> list[Path]:
    """``mkdir -p d``; returns the folders it created, deepest first, for :func:`remove_empty_dirs` when the
    stage that wanted them fails. An OSError (an unwritable parent) propagates for the caller to name its flag."""
    created = [p for p in (d, *d.parents) if not p.exists()]
    d.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove folders (deepest first) that :func:`make_dirs` created, while they are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except FileNotFoundError:  # already removed with its content
            continue
        except OSError:  # not empty: neither are its parents
            return


def read_json(path: Path, fix: str):
    """A JSON file's content; a file that is not UTF-8 JSON is a one-line error naming it, ending in ``fix``."""
    import json

    from appliance.errors import ApplianceError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ApplianceError(f"{path}: not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as e:
        raise ApplianceError(f"{path}: invalid JSON at line {e.lineno} ({e.msg}); {fix}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def share_like_umask(root: Path) -> None:
    """Give files written private (0600: safetensors saves through a temporary file) the mode the
    user's umask gives any new file, so another account serving the folder can read the weights."""
    mode = 0o666 & ~_umask()
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o777 == 0o600 and mode != 0o600:
            p.chmod(mode)


def folder_name(name: str) -> str:
    """``name`` as one safe folder name (reports/<name>): lower case, runs of anything but letters, digits,
    ``.``, ``-`` and ``_`` as ``-``, no leading dots (``../x`` must not climb out of reports/)."""
    import re

    return re.sub(r"[^\w.-]+", "-", name.lower()).strip("-.") or "report"
