"""What the supervisor knows about each server, and its rules (no tango).

A server is *expected* to run once it has been seen running (started by
``beamline up``, Astor or the supervisor itself), until it is stopped on
purpose. An expected server that dies is restarted at once; one that stops
answering for ``hang_timeout`` is killed (after a dump of its threads' stacks
into its log) and restarted; one that fails again and again backs off
exponentially and is finally given up (the supervisor goes to ALARM).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


class ServerState(enum.Enum):
    NOT_STARTED = "NOT_STARTED"  # never seen running, nobody asked for it
    RUNNING = "RUNNING"  # process alive, devices answering
    STARTING = "STARTING"  # process alive, devices not answering yet (first start)
    RESTARTING = "RESTARTING"  # launched by the supervisor, devices not answering yet
    HUNG = "HUNG"  # process alive, devices silent for hang_timeout: being killed
    BACKOFF = "BACKOFF"  # failed again; waiting before the next restart
    FAILED = "FAILED"  # crash loop: given up until StartServer/ResetServer
    WAITING = "WAITING"  # not running; restarted once the Tango database answers again
    STOPPED = "STOPPED"  # stopped on purpose: never restarted by the supervisor

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ServerSpec:
    name: str  # "Motor/sample_x"
    devices: tuple[str, ...]
    level: int = 2

    @property
    def executable(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def instance(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def log_name(self) -> str:
        """The Starter's log file name for this server."""
        return self.name.replace("/", "_") + ".log"


@dataclass(frozen=True)
class Policy:
    hang_timeout: float = 3.0  # s without any device answering while the process runs
    start_timeout: float = 20.0  # s for a (re)started server's devices to answer
    window: float = 60.0  # s: failures counted in this window
    max_failures: int = 5  # in the window: then give up (FAILED, ALARM)
    backoff_base: float = 0.5  # s: the 2nd failure waits this, then doubling
    backoff_max: float = 8.0
    stable_after: float = 10.0  # s answering: then earlier failures are forgotten
    # a starting server that still uses CPU (imports, initialises: slow on a busy
    # machine) is given up to this long before it counts as hung
    start_timeout_busy: float = 120.0
    # a running server whose devices are silent while its threads wait for a
    # CPU most of the time (an overloaded machine, e.g. 200 servers starting)
    # is given up to this long before it counts as hung
    starved_timeout: float = 30.0

    def backoff(self, failures_in_window: int) -> float:
        """Delay before the next restart: none after a first failure."""
        if failures_in_window <= 1:
            return 0.0
        return min(self.backoff_max, self.backoff_base * 2 ** (failures_in_window - 2))


@dataclass
class ServerRecord:
    spec: ServerSpec
    state: ServerState = ServerState.NOT_STARTED
    expected: bool = False
    pid: int | None = None
    started_at: float | None = None  # wall clock, when the current process was first seen
    restarts: int = 0
    failures: deque = field(default_factory=deque)  # monotonic times
    last_cause: str = ""
    last_failure_at: float | None = None  # wall clock
    last_recovery: float | None = None  # s from failure detection to devices answering
    failure_detected_at: float | None = None  # monotonic, of the failure being healed
    next_restart_at: float | None = None  # monotonic, while in BACKOFF
    launched_at: float | None = None  # monotonic, of our last launch
    unanswered_since: float | None = None  # monotonic: devices silent since
    answering_since: float | None = None  # monotonic: devices answering since

    @property
    def name(self) -> str:
        return self.spec.name

    def failures_in_window(self, now: float, window: float) -> int:
        while self.failures and now - self.failures[0] > window:
            self.failures.popleft()
        return len(self.failures)

    def uptime(self, wall_now: float) -> float:
        if self.started_at is None or self.state not in (ServerState.RUNNING, ServerState.HUNG):
            return 0.0
        return max(0.0, wall_now - self.started_at)

    def as_dict(self, wall_now: float) -> dict:
        return {
            "server": self.name,
            "state": str(self.state),
            "expected": self.expected,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime": round(self.uptime(wall_now), 1),
            "last_cause": self.last_cause,
            "last_failure_at": self.last_failure_at,
            "last_recovery": self.last_recovery,
            "devices": list(self.spec.devices),
        }


# --------------------------------------------------------------- causes
# Only what a dying process itself writes, at the start of a line (a
# supervisor's own log quotes other servers' causes inside its lines).
_LOG_CAUSES = [
    (re.compile(r"^Fatal Python error: Segmentation fault", re.M), "segmentation fault (SIGSEGV)"),
    (re.compile(r"^Fatal Python error: Aborted", re.M), "aborted (SIGABRT)"),
    (re.compile(r"^Fatal Python error: Bus error", re.M), "bus error (SIGBUS)"),
    (
        re.compile(r"^Fatal Python error: Floating-point exception", re.M),
        "floating-point exception (SIGFPE)",
    ),
    (
        re.compile(r"^test hook: crash at init", re.M),
        "exited during start-up (test hook: crash at init)",
    ),
]
_EXIT_LINE = re.compile(r"^Exiting: (.*)", re.M)


def cause_from_log(tail: str, exit_code: int | None = None) -> str:
    """Why a server process ended, from the end of its log (and its exit code
    when the supervisor was its parent). Only the output of its last run counts."""
    starts = [m.end() for m in re.finditer(r"^==== .*$", tail, re.M)]
    if starts:
        tail = tail[starts[-1] :]
    for pattern, cause in _LOG_CAUSES:
        if pattern.search(tail):
            return cause
    if exit_code is not None and exit_code < 0:
        import signal

        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name}"
    exiting = _EXIT_LINE.findall(tail)
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    if exiting:
        detail = lines[-1] if lines else exiting[-1]
        return f"exited during start-up: {exiting[-1].rstrip(':')} {detail}".strip()
    if exit_code is not None:
        return f"exited with code {exit_code}" + (f": {lines[-1]}" if lines else "")
    return "process vanished without a message (SIGKILL, the OOM killer, or a crash outside Python)"


# Sardana element devices (Motor, CTExpChannel, ...) answer State by asking
# their controller, i.e. the hardware devices: probing them would load the
# hardware and report Sardana hung whenever a hardware server hangs. Sardana's
# health is that of its core devices.
SARDANA_CORE_CLASSES = ("Pool", "MacroServer", "Door")


def probed_devices(pairs: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The devices to probe of one server, from (device, class) pairs."""
    pairs = [(d, c) for d, c in pairs if c != "DServer"]
    core = [d for d, c in pairs if c in SARDANA_CORE_CLASSES]
    return tuple(core) if core else tuple(d for d, _ in pairs)
