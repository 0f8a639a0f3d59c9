"""The supervisor's decisions, step by step (no tango import).

Everything that touches the world is injected, so the rules are tested with
fakes and a fake clock: a :class:`ProcessTable` (which server runs as which
pid), a :class:`Prober` (when did each device last answer a State read), and a
:class:`Launcher` (start, kill, stack dumps, logs, clean-exit markers).
:meth:`SupervisorLogic.step` is called several times a second by the device;
after each step the supervisor's own state follows :data:`SUPERVISOR_TABLE`
(ALARM once a crash loop is given up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from tango_devices.common.statemachine import StateMachine
from tango_devices.supervisor import states as st
from tango_devices.supervisor.model import (
    Policy,
    ServerRecord,
    ServerSpec,
    ServerState,
    cause_from_log,
)

log = logging.getLogger(__name__)
LAUNCH_GRACE = 0.05  # s after a launch in which its process may not show its command line yet
#: s after a process started by someone else was first seen in which its
#: disappearing is not yet a failure: a server started through the fork server
#: is first a stub that hands over to a forked child and exits
ADOPT_GRACE = 1.0
#: a silent server whose threads waited for a CPU at least this share of the
#: time it has been silent is starved (the machine is overloaded), not hung
STARVED_SHARE = 0.5
STARVED_EVIDENCE = 0.5  # s of samples at least (from its first step not answering)

S = ServerState


class ProcessTable(Protocol):
    def scan(self) -> dict[str, list[int]]:
        """Live pids by lower-case server name (``"motor/sample_x"``)."""

    def cpu_seconds(self, pid: int) -> float | None:
        """CPU time the process has used so far (None: unknown)."""

    def wait_seconds(self, pid: int) -> float | None:
        """Time its threads have spent runnable but waiting for a CPU, so far,
        summed over its threads (None: unknown)."""


class Prober(Protocol):
    def watch(self, devices: Iterable[str]) -> None:
        """Probe these devices (State with a short timeout, several times a second)."""

    def last_answer(self, device: str) -> float | None:
        """Monotonic time of the device's last answer (None: never)."""

    def silent_since(self, device: str) -> float | None:
        """Monotonic time since which the device has not answered reads that
        reached its server, confirmed by a read with a long timeout (more than
        one slow answer); None while there is no such evidence (it answers, or
        cannot be reached for reasons that say nothing about it, such as the
        database being down)."""

    def reconnect(self, devices: Iterable[str]) -> None:
        """Use new client connections for these devices (after a restart)."""


class Launcher(Protocol):
    def launch(self, spec: ServerSpec) -> int:
        """Start the server's command line detached, as the Starter would; its pid."""

    def exit_code(self, pid: int) -> int | None:
        """Exit code of a process this launcher started (None: unknown or running)."""

    def clean_exit(self, spec: ServerSpec, pid: int | None) -> bool:
        """Did this process shut down cleanly (DevStop, SIGTERM, beamline stop)?"""

    def log_tail(self, spec: ServerSpec) -> str: ...

    def database_ready(self) -> bool:
        """Does the Tango database answer (a server cannot start without it)?"""

    def dump_stacks(self, spec: ServerSpec, pid: int) -> str:
        """Ask the process to write its threads' stacks into its log; what happened."""

    def kill(self, spec: ServerSpec, pid: int) -> None:
        """Kill at once (the Starter's HardKillServer, else SIGKILL)."""

    def stop(self, spec: ServerSpec, pid: int) -> None:
        """Ask the server to exit (the Starter's DevStop, else SIGTERM)."""


Listener = Callable[[ServerRecord], None]


class SupervisorLogic:
    def __init__(
        self,
        processes: ProcessTable,
        prober: Prober,
        launcher: Launcher,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.processes = processes
        self.prober = prober
        self.launcher = launcher
        self.policy = policy or Policy()
        self.clock = clock
        self.wall = wall
        self.records: dict[str, ServerRecord] = {}
        self._changed: list[Listener] = []
        self._restarted: list[Listener] = []
        self._expected_changed: list[Callable[[set[str]], None]] = []
        self._since: dict[str, float] = {}  # server -> monotonic time its pid was first seen
        self._kill_deadline: dict[str, float] = {}
        self._cpu: dict[int, tuple[float, float]] = {}  # pid -> (cpu seconds, when it grew)
        # pid -> (when, its threads' run-queue wait then): from its first step
        # not answering (see _starved)
        self._queued: dict[int, tuple[float, float]] = {}
        self._watched: set[str] | None = None  # the devices the prober asks
        # fired with notify=False: the caller notifies once its own locks are released
        self.machine = StateMachine(
            st.SUPERVISOR_TABLE, "Starting: reading the servers of this host"
        )

    # ------------------------------------------------------------ set-up
    def on_change(self, listener: Listener) -> None:
        self._changed.append(listener)

    def on_restart(self, listener: Listener) -> None:
        """Called when a restarted server's devices answer again (announce it)."""
        self._restarted.append(listener)

    def on_expected_change(self, listener: Callable[[set[str]], None]) -> None:
        """Called with the set of servers expected to run, to persist it."""
        self._expected_changed.append(listener)

    def set_servers(self, specs: Iterable[ServerSpec], expected: Iterable[str] = ()) -> None:
        """The servers to supervise (kept records keep their history)."""
        expected_lower = {e.lower() for e in expected}
        new = {}
        for spec in specs:
            rec = self.records.get(spec.name.lower())
            if rec is None:
                rec = ServerRecord(spec, expected=spec.name.lower() in expected_lower)
            else:
                rec.spec = spec
            new[spec.name.lower()] = rec
        self.records = new
        self._watch_running()

    def _watch_running(self) -> None:
        """Probe the devices of the servers that have a process, only: asking
        one that has none tells nothing, and each attempt is a request to the
        database (at 200 servers starting, up to 200 a second to the database
        they all need)."""
        devices = {d for r in self.records.values() if r.pid is not None for d in r.spec.devices}
        if devices != self._watched:
            self._watched = devices
            self.prober.watch(sorted(devices))

    @property
    def expected(self) -> set[str]:
        return {r.name for r in self.records.values() if r.expected}

    def record(self, name: str) -> ServerRecord:
        rec = self.records.get(name.lower())
        if rec is None:
            known = ", ".join(sorted(r.name for r in self.records.values()))
            raise KeyError(f"no supervised server {name!r}; known: {known}")
        return rec

    # --------------------------------------------------------------- steps
    def step(self) -> None:
        """Observe every server once and act."""
        table = self.processes.scan()
        now, wall = self.clock(), self.wall()
        live = {p for pids in table.values() for p in pids}
        for per_pid in (self._cpu, self._queued):
            for pid in [p for p in per_pid if p not in live]:
                del per_pid[pid]
        for rec in list(self.records.values()):
            pids = sorted(table.get(rec.name.lower(), []))
            pid = pids[0] if pids else None
            before = (rec.state, rec.pid, rec.restarts, rec.last_cause)
            try:
                self._step_one(rec, pid, now, wall)
            except Exception:  # one server's trouble must not stop the others
                log.exception("supervising %s failed", rec.name)
            if (rec.state, rec.pid, rec.restarts, rec.last_cause) != before:
                self._notify(self._changed, rec)
        self._watch_running()
        failed = any(r.state is S.FAILED for r in self.records.values())
        waiting = any(r.state is S.WAITING for r in self.records.values())
        self.machine.fire(
            st.GAVE_UP if failed else st.WAITING_FOR_DATABASE if waiting else st.HEALTHY,
            self.summary() or "No server to supervise.",
            notify=False,
        )

    def settled(self) -> bool:
        """Nothing to time: every server running with every device answering,
        or at rest (stopped, given up, never started) with no process. The
        loop may then step less often; what unsettles it (a process that ends,
        a device that falls silent) wakes it at once."""
        for rec in self.records.values():
            if rec.state is S.RUNNING:
                if any(self.prober.silent_since(d) is not None for d in rec.spec.devices):
                    return False
            elif rec.state not in (S.STOPPED, S.FAILED, S.NOT_STARTED) or rec.pid is not None:
                return False
        return True

    def device_states(self, answered: Mapping[str, str]) -> dict[str, list[str]]:
        """Each supervised device -> [the State it answered last, ""] while its
        server runs and it answers, else ["", why not]: an overview's feed.
        ``answered``: device (lower case) -> the State it answered last, as the
        prober reports them all at once."""
        states: dict[str, list[str]] = {}
        for rec in self.records.values():
            for device in rec.spec.devices:
                if rec.state is not S.RUNNING:
                    states[device] = ["", f"{rec.name} is {rec.state}"]
                elif self.prober.silent_since(device) is not None:
                    states[device] = ["", "not answering"]
                else:
                    last = answered.get(device.lower(), "")
                    states[device] = [last, ""] if last else ["", "not asked yet"]
        return states

    def blind(self, text: str) -> None:
        """The servers of the host cannot be read (FAULT, with ``text``)."""
        self.machine.fire(st.BLIND, text, notify=False)

    def _step_one(self, rec: ServerRecord, pid: int | None, now: float, wall: float) -> None:
        if rec.state is S.WAITING and pid is None:
            self._launch(rec, now, wall)  # launches once the database answers
            return
        if rec.state in (S.STOPPED, S.FAILED, S.NOT_STARTED) and pid is None:
            rec.pid = None
            if rec.state is S.STOPPED and rec.expected:
                # started again while the stopped process was still exiting
                rec.failure_detected_at = None
                self._launch(rec, now, wall)
                return
            if rec.state is S.NOT_STARTED and rec.expected:
                # expected but not running when we (re)started: it died while
                # no supervisor was watching; restart it once
                self._failure(rec, "not running when the supervisor started", now, wall)
            return
        if pid is None:
            self._gone(rec, now, wall)
        else:
            self._alive(rec, pid, now, wall)

    def _gone(self, rec: ServerRecord, now: float, wall: float) -> None:
        if (
            rec.state is S.RESTARTING
            and rec.launched_at is not None
            and now - rec.launched_at < LAUNCH_GRACE
        ):
            # just started: its process may not show its command line yet
            # (between exec and the kernel setting up its arguments)
            return
        first_seen = self._since.get(rec.name)
        if rec.state is S.STARTING and first_seen is not None and now - first_seen < ADOPT_GRACE:
            return  # adopted a moment ago: its stub may just have handed over
        if rec.state is S.BACKOFF:
            if now >= (rec.next_restart_at or now):
                self._launch(rec, now, wall)
            return
        dead = rec.pid
        self._since.pop(rec.name, None)
        if rec.state is S.HUNG:
            self._kill_deadline.pop(rec.name, None)
            rec.pid = None
            self._decide(rec, now)
            if rec.state is S.HUNG:  # no backoff, no giving up: restart now
                self._launch(rec, now, wall)
            return
        if self.launcher.clean_exit(rec.spec, dead):
            rec.state, rec.pid, rec.expected = S.STOPPED, None, False
            rec.last_cause = "stopped on purpose (clean shutdown)"
            self._expected_changed_now()
            log.info("%s stopped on purpose: not restarted", rec.name)
            return
        exit_code = self.launcher.exit_code(dead) if dead else None
        cause = cause_from_log(self._log_tail(rec), exit_code)
        self._failure(rec, cause, now, wall)

    def _log_tail(self, rec: ServerRecord) -> str:
        """The server's log tail, or nothing: reading it never stops a restart."""
        try:
            return self.launcher.log_tail(rec.spec)
        except Exception as exc:  # noqa: BLE001 - e.g. its location needs the database
            log.warning("cannot read the log of %s: %s", rec.name, exc)
            return ""

    def _alive(self, rec: ServerRecord, pid: int, now: float, wall: float) -> None:
        if pid != rec.pid:
            self._since[rec.name] = now
            if rec.state in (S.NOT_STARTED, S.STOPPED, S.FAILED, S.BACKOFF):
                # started by someone else (beamline up, Astor, an operator): adopt it
                rec.state = S.STARTING
                rec.started_at = wall
                if not rec.expected:
                    rec.expected = True
                    self._expected_changed_now()
            rec.pid = pid
        if rec.state is S.STOPPED:
            return  # stopped on purpose and still shutting down: let it exit
        since = self._since.setdefault(rec.name, now)
        if rec.state is S.HUNG:
            if now >= self._kill_deadline.get(rec.name, now):
                self.launcher.kill(rec.spec, pid)  # still there: kill again
                self._kill_deadline[rec.name] = now + 1.0
            return
        if self._answering(rec, since, now):
            self._queued.pop(pid, None)
            recovering = rec.state in (S.STARTING, S.RESTARTING)
            if recovering and rec.failure_detected_at is not None:
                rec.last_recovery = now - rec.failure_detected_at
                rec.failure_detected_at = None
                rec.state = S.RUNNING
                log.info("%s back after %.2f s", rec.name, rec.last_recovery)
                self._notify(self._restarted, rec)
                return
            rec.state = S.RUNNING
            rec.unanswered_since = None
            if rec.answering_since is None:
                rec.answering_since = now
            elif rec.failures and now - rec.answering_since >= self.policy.stable_after:
                rec.failures.clear()  # stable again: a later failure is not a crash loop
            return
        if rec.state in (S.STARTING, S.RESTARTING):
            self._check_start(rec, pid, since, now, wall)
            return
        starved = self._starved(pid, now)  # sampled from its first step not answering
        silent_since = self._silent_since(rec, since)
        if silent_since is None:
            return
        silent = now - silent_since
        if silent >= self.policy.hang_timeout and not (
            starved and silent < self.policy.starved_timeout
        ):
            why = " (starved of CPU all along)" if starved else ""
            self._hang(rec, pid, now, wall, f"hang: no device answered for {silent:.1f} s{why}")

    def _starved(self, pid: int, now: float) -> bool:
        """Has the process, since the first call (its first step not
        answering), spent at least STARVED_SHARE of that time waiting for a
        CPU (its threads runnable, the machine too busy to run them)? A server
        slow because the machine is overloaded is not hung; a blocked or a
        stopped one waits for no CPU (a device thread blocked on a lock,
        SIGSTOP)."""
        waited = self.processes.wait_seconds(pid)
        if waited is None:
            return False
        first = self._queued.setdefault(pid, (now, waited))
        elapsed = now - first[0]
        return elapsed >= STARVED_EVIDENCE and waited - first[1] >= STARVED_SHARE * elapsed

    def _check_start(self, rec: ServerRecord, pid: int, since: float, now: float, wall: float):
        """A starting server that does not answer is hung only past the start
        timeout *and* idle (a busy machine makes starting slow, not hung), or
        past the longer limit; never while the database it waits for is down."""
        waited = now - since
        busy = self._cpu_grew(rec, pid, now)
        if waited <= self.policy.start_timeout:
            return
        if busy and waited <= self.policy.start_timeout_busy:
            return
        if not self.launcher.database_ready():
            return
        limit = self.policy.start_timeout_busy if busy else self.policy.start_timeout
        self._hang(rec, pid, now, wall, f"did not answer within {limit:g} s of starting")

    def _cpu_grew(self, rec: ServerRecord, pid: int, now: float) -> bool:
        """Has the process used CPU within the last hang timeout?"""
        cpu = self.processes.cpu_seconds(pid)
        if cpu is None:
            return False
        seen = self._cpu.get(pid)
        if seen is None or cpu > seen[0]:
            self._cpu[pid] = (cpu, now)
            return seen is not None or cpu > 0
        return now - seen[1] < self.policy.hang_timeout

    def _answering(self, rec: ServerRecord, since: float, now: float) -> bool:
        """Every device answered since this process appeared, and recently."""
        fresh = now - max(1.0, self.policy.hang_timeout / 2)
        for device in rec.spec.devices:
            t = self.prober.last_answer(device)
            if t is None or t < since or t < fresh:
                return False
        return bool(rec.spec.devices)

    def _silent_since(self, rec: ServerRecord, since: float) -> float | None:
        """Since when a device of this process has been silent, by the prober's
        evidence (None: no device is known to be silent)."""
        times = [self.prober.silent_since(d) for d in rec.spec.devices]
        evidence = [max(t, since) for t in times if t is not None]
        return min(evidence) if evidence else None

    # ------------------------------------------------------------ actions
    def _hang(self, rec: ServerRecord, pid: int, now: float, wall: float, cause: str) -> None:
        rec.answering_since = None
        dump = self.launcher.dump_stacks(rec.spec, pid)
        rec.last_cause = f"{cause}; {dump}"
        rec.last_failure_at = wall
        rec.failures.append(now)
        rec.failure_detected_at = rec.failure_detected_at or now
        rec.state = S.HUNG
        log.warning("%s: %s: killing it", rec.name, rec.last_cause)
        self.launcher.kill(rec.spec, pid)
        self._kill_deadline[rec.name] = now + 1.0

    def _failure(self, rec: ServerRecord, cause: str, now: float, wall: float) -> None:
        rec.answering_since = None
        if not self.launcher.database_ready():
            # it may well have died of that: not a crash loop; restart once it answers
            rec.last_cause = cause
            rec.last_failure_at = wall
            rec.failure_detected_at = rec.failure_detected_at or now
            self._wait_for_database(rec)
            return
        rec.failures.append(now)
        rec.last_cause = cause
        rec.last_failure_at = wall
        rec.failure_detected_at = rec.failure_detected_at or now
        rec.pid = None
        log.warning("%s failed: %s", rec.name, cause)
        self._decide(rec, now)
        if rec.state not in (S.FAILED, S.BACKOFF):
            self._launch(rec, now, wall)

    def _decide(self, rec: ServerRecord, now: float) -> None:
        """Give up, back off, or leave the state for an immediate restart."""
        n = rec.failures_in_window(now, self.policy.window)
        if n >= self.policy.max_failures:
            rec.state = S.FAILED
            rec.last_cause = (
                f"gave up after {n} failures in {self.policy.window:g} s; last: {rec.last_cause}. "
                "Fix the cause, then StartServer (or beamline start)"
            )
            rec.failure_detected_at = None
            log.error("%s: %s", rec.name, rec.last_cause)
            return
        delay = self.policy.backoff(n)
        if delay > 0:
            rec.state = S.BACKOFF
            rec.next_restart_at = now + delay

    def _wait_for_database(self, rec: ServerRecord) -> None:
        if rec.state is not S.WAITING:
            log.warning("%s: the Tango database does not answer: restart deferred", rec.name)
        rec.pid = None
        rec.state = S.WAITING

    def _launch(self, rec: ServerRecord, now: float, wall: float) -> None:
        if not self.launcher.database_ready():
            self._wait_for_database(rec)  # it would only die of it
            return
        self.prober.reconnect(rec.spec.devices)
        try:
            pid = self.launcher.launch(rec.spec)
        except OSError as exc:
            rec.last_cause = f"cannot start it: {exc}"
            rec.failures.append(now)
            rec.state = S.BACKOFF
            rec.next_restart_at = now + self.policy.backoff_max
            return
        rec.pid = pid
        rec.state = S.RESTARTING
        rec.restarts += 1
        rec.launched_at = now
        rec.started_at = wall
        rec.next_restart_at = None
        self._since[rec.name] = now
        log.info("%s restarted as pid %d (restart %d)", rec.name, pid, rec.restarts)

    # -------------------------------------------------------- operator
    def stop_server(self, name: str) -> None:
        """Stop on purpose: never restarted until :meth:`start_server`."""
        rec = self.record(name)
        rec.state, rec.expected = S.STOPPED, False
        rec.last_cause = "stopped on purpose"
        self._expected_changed_now()
        if rec.pid is not None:
            self.launcher.stop(rec.spec, rec.pid)
        self._notify(self._changed, rec)

    def start_server(self, name: str) -> None:
        """Start (or retry after a crash loop) a server and supervise it again."""
        rec = self.record(name)
        rec.expected = True
        rec.failures.clear()
        self._expected_changed_now()
        if rec.pid is None:
            now = self.clock()
            rec.failure_detected_at = None
            self._launch(rec, now, self.wall())
        self._notify(self._changed, rec)

    def restart_server(self, name: str) -> None:
        """Kill and restart now (counts as a restart, not as a failure)."""
        rec = self.record(name)
        if rec.pid is not None:
            rec.state = S.HUNG
            rec.last_cause = "restarted on request"
            rec.failure_detected_at = self.clock()
            self.launcher.kill(rec.spec, rec.pid)
            self._kill_deadline[rec.name] = self.clock() + 1.0
        else:
            self.start_server(name)

    # ------------------------------------------------------------ helpers
    def _expected_changed_now(self) -> None:
        expected = self.expected
        for listener in list(self._expected_changed):
            listener(expected)

    @staticmethod
    def _notify(listeners, rec: ServerRecord) -> None:
        for listener in list(listeners):
            try:
                listener(rec)
            except Exception:
                log.exception("supervisor listener failed")

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for rec in self.records.values():
            counts[str(rec.state)] = counts.get(str(rec.state), 0) + 1
        failed = [r for r in self.records.values() if r.state is S.FAILED]
        waiting = [r for r in self.records.values() if r.state is S.WAITING]
        text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        if waiting:
            text = (
                f"Tango database down: {len(waiting)} server(s) waiting to restart "
                f"({', '.join(r.name for r in waiting[:5])}{', ...' if len(waiting) > 5 else ''})"
                f". {text}"
            )
        if failed:
            text += ". Given up: " + "; ".join(f"{r.name}: {r.last_cause}" for r in failed)
        return text
