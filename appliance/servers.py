"""vLLM server processes: start in their own session, wait until ready, record, stop.

vLLM forks EngineCore / worker children; the server starts as the leader of a new session
(process group == its pid), so stopping it means signalling that whole group. A record in
``.appliance/servers/<port>.json`` lets ``down``, ``status``, ``adapters`` and ``chat`` find a
server started by another ``appliance`` process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from appliance import paths
from appliance.errors import ApplianceError

_CHILDREN: dict[int, subprocess.Popen] = {}  # servers this process started: reaped when stopped


@dataclass
class ServerInfo:
    """A started server, as recorded for ``down`` / ``status`` (never holds the API key)."""

    port: int
    host: str
    url: str
    pid: int
    log: str
    model: str
    models: list[str]
    adapters: dict[str, str] = field(default_factory=dict)
    adapter_roots: list[str] = field(default_factory=list)
    max_lora_rank: int = 16
    api_key_required: bool = False
    detached: bool = True
    started: str = ""
    pid_start: int = 0  # the leader's start time (clock ticks after boot, /proc/PID/stat): tells a recycled pid apart
    # what else the served model is known as (registry name, hub id): `adapters load` checks an adapter's base with them
    base_names: list[str] = field(default_factory=list)
    base_hf_id: str | None = None
    # False while vLLM loads: recorded from launch, so `status` shows a start and `down` from another shell stops it
    ready: bool = True


def records_dir() -> Path:
    return paths.state_dir() / "servers"


def read_records() -> list[ServerInfo]:
    """Every recorded server, oldest port first; unreadable records are skipped (see :func:`scan_records`)."""
    return scan_records()[0]


def scan_records() -> tuple[list[ServerInfo], list[Path]]:
    """The records that parse, and the files that do not (a disk filled up, a hand edit): `status`
    shows those, `down` removes them."""
    good, broken = [], []
    for f in sorted(records_dir().glob("*.json")) if records_dir().is_dir() else []:
        try:
            good.append(ServerInfo(**json.loads(f.read_text(encoding="utf-8"))))
        except (ValueError, TypeError, UnicodeDecodeError):
            broken.append(f)
    return good, broken


def is_alive(rec: ServerInfo) -> bool:
    """Whether the recorded server's API process still runs (in the group recorded, not a reused pid): what
    `appliance status` calls alive."""
    return _is_vllm_group(rec.pid, rec.pid_start) and _running(rec.pid)


def find_record(url: str | None = None) -> ServerInfo | None:
    """The record for ``url``, or the only record when ``url`` is None."""
    recs = read_records()
    if url is None:
        return recs[0] if len(recs) == 1 else None
    return next((r for r in recs if r.url.rstrip("/") == url.rstrip("/")), None)


def _write_record(info: ServerInfo) -> None:
    paths.atomic_write_text(records_dir() / f"{info.port}.json", json.dumps(asdict(info), indent=2, ensure_ascii=False) + "\n")


def _remove_record(port: int) -> None:
    (records_dir() / f"{port}.json").unlink(missing_ok=True)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first); [] if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> int:
    """The process's start time in clock ticks after boot (field 22 of /proc/PID/stat); 0 if it is gone."""
    fields = _stat(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed leader stays one until it is reaped)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _is_vllm_group(pgid: int, pid_start: int = 0) -> bool:
    """Guards against a recycled pid: the group must still hold a vLLM process, and its leader
    (when alive and its start time was recorded) must be the process that was started."""
    if pid_start and (ticks := _start_ticks(pgid)) and ticks != pid_start:
        return False
    for pid in group_members(pgid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"vllm" in cmd.lower():
            return True
    return False


def kill_group(pgid: int, timeout_s: float = 20) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``timeout_s``, reap our own child."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if pgid in _CHILDREN:
                _CHILDREN[pgid].poll()
            if not group_members(pgid):
                break
            time.sleep(0.2)
        if not group_members(pgid):
            break
    child = _CHILDREN.pop(pgid, None)
    if child is not None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def log_tail(log: str | Path, lines: int = 25) -> str:
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


_EXCEPTION_LINE = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:ERROR [\d-]+ [\d:]+ \[[^\]]*\] )?((?:\w+\.)*\w*(?:Error|Exception): .+)$")


# a base model given as a hub id that is neither cached nor downloadable (no network, or offline mode)
_NO_HUB = ("ConnectError", "Name or service not known", "LocalEntryNotFoundError", "OfflineModeIsEnabled",
           "couldn't connect to", "Temporary failure in name resolution")


def _start_hint(cause: str | None) -> str:
    """What to do about a start that failed for ``cause`` (empty if the cause says it already)."""
    if not cause:
        return ""
    if "does not support LoRA" in cause:
        return "; serve it merged instead: `appliance merge --adapter ...` then `appliance up --model <merged> --no-lora`"
    if "architectures" in cause and "are not supported" in cause:  # a merge changes no architecture
        return ("; vLLM does not serve this architecture (config.json's architectures), merged or not: train on a "
                "model vLLM supports (Llama, Qwen2, Mistral, Gemma, Phi-3, ...)")
    if any(s in cause for s in _NO_HUB):
        return ("; the model is not on this machine and the hub cannot be reached: pass --model with a local copy "
                "(a folder with config.json and the weights), or `appliance models pull NAME` where the hub is reachable")
    return ""


# argparse's last word on a bad vLLM flag: "api_server.py: error: argument --max-lora-rank: invalid choice: 7 ..."
_USAGE_ERROR = re.compile(r"^\S+\.py: (error: .+)$")


def root_cause(log: str | Path) -> str | None:
    """The first exception vLLM's log reports ("ValueError: To serve at least one request ..."), if any.

    vLLM's last line is the generic "Engine core initialization failed. See root cause above";
    the line that says what to change comes first.
    """
    lines = log_tail(log, lines=400).splitlines()
    for n, line in enumerate(lines):
        m = _EXCEPTION_LINE.match(line.strip()) or _USAGE_ERROR.match(line.strip())
        if m:
            cause = m.group(1)
            if "validation error" in cause:  # pydantic's first line counts errors; the next says which
                detail = _PREFIX.sub("", lines[n + 1]).strip() if n + 1 < len(lines) else ""
                cause = re.sub(r"\s*\[type=.*$", "", detail).removeprefix("Value error, ") or cause
            # vLLM lists every architecture it supports after naming the one it lacks: hundreds of names
            return re.sub(r"\.?\s*Supported architectures: .*$", "", cause)[:400]
    return None


_PREFIX = re.compile(r"^\s*(?:\(\w+ pid=\d+\) )?")


def _die_with_parent() -> None:
    """In the child, before exec: a foreground server gets SIGTERM if `appliance up` is killed outright."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


class Cancelled(Exception):
    """A start given up because its ``cancel`` event was set (the server was stopped)."""


def start(plan, argv: list[str], env: dict[str, str], detach: bool, ready_timeout_s: float,
          echo: Callable[[str], None], cancel: threading.Event | None = None) -> ServerInfo:
    """Start vLLM for ``plan`` in a new session with its output in a log file; wait until it answers.

    ``cancel``, set by another thread, stops the server and raises :class:`Cancelled` within half a second."""
    log = paths.state_dir() / "logs" / f"server-{plan.port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as logf:
        logf.write(f"# {datetime.now(timezone.utc).isoformat()} {' '.join(argv)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=None if detach else _die_with_parent)
    _CHILDREN[proc.pid] = proc
    info = ServerInfo(port=plan.port, host=plan.host, url=plan.url, pid=proc.pid, log=str(log), model=plan.model,
                      models=plan.served_models, adapters={a.name: a.path for a in plan.adapters},
                      adapter_roots=plan.adapter_roots, max_lora_rank=plan.max_lora_rank,
                      api_key_required=bool(plan.api_key), detached=detach,
                      started=datetime.now(timezone.utc).isoformat(timespec="seconds"), pid_start=_start_ticks(proc.pid),
                      base_names=sorted(plan.base_names), base_hf_id=plan.base_hf_id, ready=False)
    _write_record(info)
    try:
        _wait_ready(proc, info, plan.api_key, ready_timeout_s, echo, cancel)
    except BaseException:  # also Ctrl-C while waiting: never leave a half-started server behind
        kill_group(proc.pid)
        if _recorded_pid(plan.port) == proc.pid:  # not a record another start wrote since `down` removed ours
            _remove_record(plan.port)
        raise
    info.ready = True
    _write_record(info)
    return info


def _recorded_pid(port: int) -> int | None:
    try:
        return int(json.loads((records_dir() / f"{port}.json").read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def host_note(host: str, key: bool) -> str | None:
    """A line for a server that is not on loopback only: its URL names 127.0.0.1 (what a client here uses)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    where = "every network interface" if host in ("0.0.0.0", "::", "") else host
    return (f"note: --host {host}: listening on {where}, so other machines can reach it"
            + ("" if key else "; no --api-key is set, so anyone who can reach it may use it"))


def _wait_ready(proc: subprocess.Popen, info: ServerInfo, api_key: str | None, timeout_s: float,
                echo: Callable[[str], None], cancel: threading.Event | None = None) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.monotonic()
    tty = sys.stderr.isatty()
    spinner, last_line = "|/-\\", 0.0
    echo(f"starting vLLM on {info.url} (log: {info.log})")
    if note := host_note(info.host, info.api_key_required):
        echo(note)
    while True:
        elapsed = time.monotonic() - t0
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"the start of {info.url} was cancelled")
        if proc.poll() is not None:
            if tty:
                sys.stderr.write("\n")
            if _recorded_pid(info.port) != info.pid:  # `appliance down` stopped it and removed its record
                raise ApplianceError(f"the start of {info.url} was stopped from outside (`appliance down`); "
                                     "start it again with `appliance up`")
            cause = root_cause(info.log)
            if not cause:  # the error line below names the cause when one was found; else the log's end has to
                echo(log_tail(info.log))
            hint = _start_hint(cause)
            raise ApplianceError(f"vLLM exited with code {proc.returncode} while starting{': ' + cause if cause else ''}"
                                 f"{hint}; full log: {info.log}")
        if elapsed > timeout_s:
            echo(log_tail(info.log))
            raise ApplianceError(f"vLLM did not answer within {timeout_s:.0f}s; see {info.log} or raise --ready-timeout")
        try:
            r = httpx.get(f"{info.url}/v1/models", headers=headers, timeout=2)
            served = {m["id"] for m in r.json().get("data", [])} if r.status_code == 200 else set()
            if set(info.models) <= served:
                if tty:
                    sys.stderr.write(f"\rvLLM answered after {elapsed:.0f}s{' ' * 20}\n")
                else:
                    echo(f"vLLM answered after {elapsed:.0f}s")
                return
        except (httpx.HTTPError, ValueError):
            pass
        if tty:
            sys.stderr.write(f"\r{spinner[int(elapsed * 2) % 4]} waiting for vLLM to load the model ... {elapsed:4.0f}s")
            sys.stderr.flush()
        elif elapsed - last_line >= 10:
            echo(f"waiting for vLLM to load the model ... {elapsed:.0f}s")
            last_line = elapsed
        time.sleep(0.5)


class _Stop(Exception):
    pass


def serve_foreground(info: ServerInfo, echo: Callable[[str], None]) -> None:
    """Block until vLLM exits (an error) or we get Ctrl-C / SIGTERM / SIGHUP (stop the group)."""
    proc = _CHILDREN[info.pid]

    def _raise(signum, frame):
        raise _Stop()

    previous = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = proc.wait()
        if rc in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            # vLLM ends this way only when told to: `appliance down` (or a kill) from another shell
            echo(f"vLLM was stopped from outside (exit code {rc}, e.g. `appliance down`)")
            return
        echo(log_tail(info.log))
        raise ApplianceError(f"vLLM exited with code {rc}; full log: {info.log}")
    except (KeyboardInterrupt, _Stop):
        echo("stopping vLLM ...")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        kill_group(info.pid)
        _remove_record(info.port)
    echo("stopped")


def stop(port: int | None = None, all_servers: bool = False) -> dict[int | str, str]:
    """Stop recorded servers: the one on ``port``, all, or the only one.

    Returns what happened per port: "stopped", or "not running" / "unreadable" for a record
    that was only removed (its server had already exited, or the file could not be read).
    """
    recs, broken = scan_records()
    # without --port, as chat and adapters pick "the only server": records of dead servers and unreadable ones
    # are removed beside the one live server (or alone), and only live ones make the choice ambiguous
    alone = port is None and not all_servers and len([r for r in recs if _is_vllm_group(r.pid, r.pid_start)]) <= 1
    broken = [f for f in broken if (port is None and (all_servers or alone)) or f.stem == str(port)]
    done: dict[int | str, str] = {}
    for f in broken:
        f.unlink(missing_ok=True)
        done[int(f.stem) if f.stem.isdigit() else f.name] = "unreadable"  # a hand-made "foo.json" too
    if port is not None:
        recs = [r for r in recs if r.port == port]
        if not recs:
            return done  # nothing to stop is not an error, as for `down` without --port: the CLI says so
    elif not all_servers and not alone:
        live = [r for r in recs if _is_vllm_group(r.pid, r.pid_start)]
        raise ApplianceError(f"{len(live)} servers are running (ports {', '.join(str(r.port) for r in live)}); "
                             "pass --port N or --all")
    for r in recs:
        done[r.port] = "not running"
        if _is_vllm_group(r.pid, r.pid_start):
            kill_group(r.pid)
            done[r.port] = "stopped"
        _remove_record(r.port)
    return done


def report(api_key: str | None = None) -> list[dict]:
    """Each recorded server: alive?, url, models (from /v1/models when it answers)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rows = []
    recs, broken = scan_records()
    for r in recs:
        group = _is_vllm_group(r.pid, r.pid_start)
        # the API server itself must run: after its death (kill -9) its engine core may live on without it
        row = {"port": r.port, "url": r.url, "pid": r.pid, "log": r.log, "alive": group and _running(r.pid),
               "models": [], "note": "", "max_lora_rank": r.max_lora_rank}
        if group and not row["alive"]:
            row["note"] = (f"its API server (pid {r.pid}) exited but part of it still runs; `appliance down --port {r.port}` "
                           f"stops it; last log lines in {r.log}")
        elif row["alive"]:
            starting = f"starting (vLLM is loading the model; log: {r.log})"
            try:
                resp = httpx.get(f"{r.url}/v1/models", headers=headers, timeout=5)
                if not r.ready and resp.status_code != 200:
                    row["note"] = starting
                elif resp.status_code == 200:
                    if not r.ready:  # the `up` that started it was killed before it could record that it answers
                        r.ready = True
                        _write_record(r)
                    row["models"] = [{"id": m["id"], "parent": m.get("parent"), "root": m.get("root")}
                                     for m in resp.json().get("data", [])]
                elif resp.status_code == 401:
                    row["note"] = ("rejected the API key; check --api-key (or APPLIANCE_API_KEY)" if api_key
                                   else "needs --api-key to list models")
                else:
                    row["note"] = f"/v1/models answered {resp.status_code}"
            except httpx.HTTPError as e:
                row["note"] = starting if not r.ready else f"not answering ({type(e).__name__})"
        else:
            row["note"] = f"not running; last log lines in {r.log}"
        rows.append(row)
    for f in broken:
        rows.append({"port": f.stem, "url": f"(port {f.stem})", "pid": "?", "log": "", "alive": False, "models": [], "max_lora_rank": None,
                     "note": f"unreadable record {f}; `appliance down --{'port ' + f.stem if f.stem.isdigit() else 'all'}` removes it"})
    return rows
