"""Process helpers: start detached, find, stop with escalation, read logs.

Every process that `beamline up` starts (database, virtual hardware, Starter,
and through the Starter every device server) carries ``BEAMLINE_RUN_DIR`` in
its environment, so ``beamline down`` can find anything left behind by its
run directory, whoever started it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from tango_devices.common.lifecycle import RUN_DIR_ENV, server_name_from_cmdline


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    server: str | None  # "Motor/slit_h" when the command line is a Tango server's
    cmdline: str
    create_time: float


_SPAWNED: list[subprocess.Popen] = []  # still running: detached on purpose


@atexit.register
def _let_go() -> None:
    """They outlive this process on purpose (no "still running" warning)."""
    for proc in _SPAWNED:
        if proc.poll() is None:
            proc.returncode = 0


def spawn_detached(
    cmd: list[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> int:
    """Start ``cmd`` in its own session with output appended to ``log_path``.
    It outlives this process; while this one lives, a thread reaps it when it
    ends (no zombie left for whoever killed it)."""
    _SPAWNED[:] = [p for p in _SPAWNED if p.returncode is None]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _SPAWNED.append(proc)
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return {}


def find_processes(
    run_dir: Path | None = None, servers: Iterable[str] | None = None
) -> list[ProcInfo]:
    """Live processes of a run directory and/or running the given servers."""
    wanted = {s.lower() for s in servers} if servers is not None else None
    run = str(run_dir) if run_dir else None
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
        info = proc.info
        if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE or not info["cmdline"]:
            continue
        server = server_name_from_cmdline(info["cmdline"])
        match = False
        if wanted is not None and server and server.lower() in wanted:
            match = run is None or _environ(proc).get(RUN_DIR_ENV) == run
        elif wanted is None and run is not None:
            match = _environ(proc).get(RUN_DIR_ENV) == run
        if match:
            found.append(
                ProcInfo(info["pid"], server, " ".join(info["cmdline"]), info["create_time"])
            )
    return found


def server_pids(run_dir: Path | None, servers: Iterable[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in find_processes(run_dir, servers):
        out.setdefault((p.server or "").lower(), []).append(p.pid)
    return out


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None if it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return t.user + t.system


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; return those still alive at the deadline."""
    pending = [p for p in pids if alive(p)]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [p for p in pending if alive(p)]
    return pending


def stop(pids: Iterable[int], timeout: float = 5.0, sig: int = signal.SIGTERM) -> list[int]:
    """Signal, wait, then SIGKILL what is left. Returns the pids that had to be killed."""
    pids = [p for p in pids if alive(p)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    left = wait_gone(pids, timeout)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(left, 2.0)
    return left


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (empty string if there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def port_owner(port: int) -> str | None:
    """Describe the process listening on a TCP port, or None if the port is free."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        conns = []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid:
                try:
                    p = psutil.Process(c.pid)
                    return f"pid {c.pid} ({' '.join(p.cmdline()[:3])})"
                except psutil.Error:
                    return f"pid {c.pid}"
            return "another process"
    return None
