"""Processes, the way the supervisor sees them (no tango import).

- :class:`ProcessWatcher` finds each server's process by its command line, as
  the Starter does (only this run directory's, when ``BEAMLINE_RUN_DIR`` is
  set), and wakes the supervisor the moment a watched process exits (Linux
  pidfd; polling elsewhere).
- :class:`ProcessLauncher` starts a server's command line detached exactly as
  the Starter would (executable from StartDsPath, instance as argument, output
  appended to the Starter's log file for the server), reaps what it started,
  dumps stacks (SIGUSR1: every server registers faulthandler on it) and kills.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from tango_devices.common import lifecycle
from tango_devices.relay import ports
from tango_devices.supervisor.model import ServerSpec


class ProcessWatcher:
    """Finds each server's process by its command line, as the Starter does.

    What a process runs is read once per process (its command line, and its
    run directory from its environment) and kept while it lives: a scan of
    200 servers is then a listing of /proc and a poll of the servers' pidfds
    (a process that ended, zombie or not, no longer counts), not ~65 us of
    /proc reads per process of the host ten times a second. A process too
    young to be sure of is read again (a server forked by the fork server
    takes its command line a moment after it appears)."""

    YOUNG = 2.0  # s: a process younger than this is not yet known for sure

    def __init__(self, run_dir: str | None = None) -> None:
        self.run_dir = run_dir if run_dir is not None else os.environ.get(lifecycle.RUN_DIR_ENV)
        self._known: dict[int, str | None] = {}  # pid -> server (lower case) of ours, or None
        self._pidfds: dict[int, int] = {}
        # wake(): another thread's news (a device fell silent or answered again)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_lock = threading.Lock()  # no write to a closed (reused) descriptor
        self._boot = psutil.boot_time()
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _identify(self, pid: int) -> tuple[str | None, bool]:
        """(its server, if it is one of this run's; whether that is final)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return None, True  # gone already
        # (a forked server's command line ends in padding: empty arguments)
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        server = lifecycle.server_name_from_cmdline(args)
        # a young process may still change what it runs: one forked to be
        # exec'd shows its parent's command line (a stub started by this very
        # supervisor shows "Supervisor supervisor"), a forked server the fork
        # server's: what it is now counts, but is not kept
        final = self._age(pid) >= self.YOUNG
        if server is None:
            # a child of the fork server becomes a server at any moment
            forked = any("beamline-forkserver" in a for a in args[:2])
            return None, final and not forked
        if self.run_dir:
            try:
                run_dir = psutil.Process(pid).environ().get(lifecycle.RUN_DIR_ENV)
            except (psutil.Error, OSError):
                return None, False
            if run_dir != self.run_dir:
                return None, final
        return server.lower(), final

    def _age(self, pid: int) -> float:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            start = int(stat[stat.rindex(b")") + 2 :].split()[19]) / self._ticks  # field 22
        except (OSError, ValueError, IndexError):
            return self.YOUNG
        return time.time() - (self._boot + start)

    def scan(self) -> dict[str, list[int]]:
        pids = self._listing()
        for pid in [p for p in self._known if p not in pids]:
            del self._known[pid]
        now: dict[int, str | None] = dict(self._known)
        self._identify_new(pids - set(self._known), now)
        servers = {pid for pid, server in now.items() if server is not None}
        self._watch(servers)
        ended = self._ended(servers)
        for pid in ended:
            now[pid] = self._known[pid] = None  # a zombie stays in /proc until reaped
        if ended:
            # The listing is as old as the scan (seconds, on a host busy
            # starting 200 servers). A stub that handed over to the fork
            # server while it ran has ended, and its successor, born after
            # the listing, must not be missed: the server would read as
            # vanished. The successor was born before the stub ended, so it
            # is in a listing made now.
            self._identify_new(self._listing() - pids - set(now), now)
        found: dict[str, list[int]] = {}
        for pid, server in now.items():
            if server is not None:
                found.setdefault(server, []).append(pid)
        # only the living are watched: an ended one's pidfd would wake wait() at once
        self._watch({p for ps in found.values() for p in ps})
        return found

    @staticmethod
    def _listing() -> set[int]:
        try:
            return {int(d) for d in os.listdir("/proc") if d.isdigit()}
        except OSError:
            return set()

    def _identify_new(self, pids: set[int], now: dict[int, str | None]) -> None:
        """Read what each of ``pids`` runs into ``now``; keep what is final."""
        for pid in pids:
            server, final = self._identify(pid)
            now[pid] = server
            if final:
                self._known[pid] = server

    def _ended(self, pids: set[int]) -> set[int]:
        """Those of ``pids`` that have ended (zombies included): their pidfd
        is readable (without pidfds: their state)."""
        by_fd = {self._pidfds[p]: p for p in pids if p in self._pidfds}
        unwatched = {p for p in pids if p not in self._pidfds}
        ended = {p for p in unwatched if process_state(p) in ("", psutil.STATUS_ZOMBIE)}
        if by_fd:
            try:
                ready, _, _ = select.select(list(by_fd), [], [], 0)
            except (OSError, ValueError):
                ready = []
            ended |= {by_fd[fd] for fd in ready}
        return ended

    def cpu_seconds(self, pid: int) -> float | None:
        """User + system CPU time of the process so far (None: gone or unknown)."""
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.Error, OSError):
            return None
        return times.user + times.system

    def wait_seconds(self, pid: int) -> float | None:
        """Run-queue wait of the process's threads so far (the second field of
        /proc/PID/task/TID/schedstat, ns), summed; None: gone or unknown
        (no schedstats in this kernel)."""
        total = 0
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return None
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended meanwhile
        return total / 1e9

    def _watch(self, pids: set[int]) -> None:
        if not hasattr(os, "pidfd_open"):
            return
        for pid in list(self._pidfds):
            if pid not in pids:
                os.close(self._pidfds.pop(pid))
        for pid in pids - set(self._pidfds):
            with contextlib.suppress(OSError):
                self._pidfds[pid] = os.pidfd_open(pid)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; return early (True) when a watched process
        exits or :meth:`wake` is called."""
        fds = [self._wake_r, *self._pidfds.values()]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            time.sleep(timeout)
            return False
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 4096):
                    pass
        return bool(ready)

    def wake(self) -> None:
        """End a :meth:`wait` now (from any thread)."""
        with self._wake_lock, contextlib.suppress(OSError):  # a full pipe is awake already
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def close(self) -> None:
        self._watch(set())
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1


def process_state(pid: int) -> str:
    """psutil status of a process, '' if it is gone."""
    try:
        return psutil.Process(pid).status()
    except psutil.Error:
        return ""


class ProcessLauncher:
    """Start, stop and inspect servers as the Starter would."""

    def __init__(
        self,
        start_ds_path: Callable[[], Sequence[str]],
        log_home: Callable[[], str],
        env: dict[str, str] | None = None,
    ) -> None:
        self._start_ds_path = start_ds_path
        self._log_home = log_home
        # not the event ports of the supervisor itself (relay/ports.py)
        self.env = ports.clean_environment(dict(env if env is not None else os.environ))
        self._children: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------- paths
    def executable(self, spec: ServerSpec) -> Path:
        dirs = list(self._start_ds_path())
        for directory in dirs:
            candidate = Path(directory) / spec.executable
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise FileNotFoundError(
            f"no executable {spec.executable} in StartDsPath ({', '.join(dirs) or 'empty'})"
        )

    def log_path(self, spec: ServerSpec) -> Path:
        return Path(self._log_home()) / "ds.log" / spec.log_name

    # ------------------------------------------------------------ launch
    def launch(self, spec: ServerSpec) -> int:
        exe = self.executable(spec)
        log = self.log_path(spec)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.reap()
        with open(log, "ab") as out:
            out.write(
                f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} restarted by the supervisor: "
                f"{exe} {spec.instance}\n".encode()
            )
            out.flush()
            proc = subprocess.Popen(
                [str(exe), spec.instance],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._children[proc.pid] = proc
        return proc.pid

    def reap(self) -> None:
        """Collect the exit status of children that ended (no zombies)."""
        for proc in list(self._children.values()):
            proc.poll()

    def exit_code(self, pid: int) -> int | None:
        proc = self._children.get(pid)
        if proc is None:
            return None
        code = proc.poll()
        if code is not None:
            del self._children[pid]
        return code

    def clean_exit(self, spec: ServerSpec, pid: int | None) -> bool:
        return lifecycle.was_clean_exit(spec.name, pid)

    def database_ready(self) -> bool:
        """Without a database to ask, assume it answers."""
        return True

    def log_tail(self, spec: ServerSpec, size: int = 8192) -> str:
        try:
            with open(self.log_path(spec), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def dump_stacks(self, spec: ServerSpec, pid: int) -> str:
        if process_state(pid) == psutil.STATUS_STOPPED:
            return "the process is stopped (SIGSTOP): no stack dump possible"
        log = self.log_path(spec)
        size = log.stat().st_size if log.exists() else 0
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            return "the process was already gone"
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if log.exists() and log.stat().st_size > size:
                time.sleep(0.05)  # let faulthandler finish writing
                return f"stacks of every thread written to {log}"
            time.sleep(0.02)
        return f"no stack dump appeared in {log} within 0.5 s"

    def signal(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def kill(self, spec: ServerSpec, pid: int) -> None:
        self.signal(pid, signal.SIGKILL)

    def stop(self, spec: ServerSpec, pid: int) -> None:
        self.signal(pid, signal.SIGTERM)
