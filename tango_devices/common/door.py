"""Run Sardana macros on a Door with plain PyTango: no Taurus, no spock.

A Door runs one macro at a time. ``DoorClient.run`` starts a macro, follows
its MacroStatus events (start, step, finish, stop, abort, exception), collects
what it prints (Output, Info, Warning, Error) and its Result, and returns a
``MacroRun`` when the macro has ended. The Door going away (the Sardana server
crashed) ends the run with outcome "lost" instead of waiting forever.
``DoorClient.make_ready`` always leaves the Door ready for the next macro:
abort, release, and, when Sardana does not end the macro, a restart of the
Door's server through the supervisor as the last step.

Used by the experiment queue, the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import tango

STREAMS = ("Output", "Info", "Warning", "Error")
TERMINAL = ("finish", "stop", "abort", "exception")
RESEND_PERIOD = 0.5  # s: an abort the Door ignored is sent again
_MACRO_ID = re.compile(r'<macro[^>]*\bid="([^"]+)"')


class DoorError(Exception):
    """The Door refused or does not answer; the message says which and why."""


@dataclass
class MacroRun:
    macro: list[str]
    outcome: str = "running"  # finish | stop | abort | exception | lost | timeout
    macro_id: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    output: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    warning: list[str] = field(default_factory=list)
    error: list[str] = field(default_factory=list)
    result: list[str] = field(default_factory=list)
    exc_type: str = ""
    exc_value: str = ""
    step: float = 0.0  # progress in %, from the macro's status

    @property
    def ok(self) -> bool:
        return self.outcome == "finish"

    @property
    def report(self) -> list[str]:
        """Sardana's report on the elements when a scan stopped on a problem
        (each element's state and status: it names the failing device)."""
        lines: list[str] = []
        for line in self.info:
            if line.startswith("Report: Stopped"):
                lines = [line]
            elif lines and lines[-1] != "":
                lines.append(line)
        return [line for line in lines if line]

    @property
    def error_text(self) -> str:
        text = self.exc_value.strip() or "\n".join(e for e in self.error if e).strip()
        report = self.report
        return f"{text}\n" + "\n".join(report) if report else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "macro": self.macro,
            "outcome": self.outcome,
            "started": self.started,
            "ended": self.ended,
            "error": self.error_text,
            "result": self.result,
        }


class DoorClient:
    """One Door; ``run()`` one macro at a time (as the Door itself does)."""

    def __init__(self, door: str, timeout_ms: int = 3000) -> None:
        self.name = door
        self.proxy = tango.DeviceProxy(door)
        self.proxy.set_timeout_millis(timeout_ms)
        self._lock = threading.Lock()
        self._current: MacroRun | None = None
        self._ended = threading.Event()
        self._event_ids: list[int] = []
        for attr in (*STREAMS, "Result", "MacroStatus"):
            self._event_ids.append(
                self.proxy.subscribe_event(
                    attr, tango.EventType.CHANGE_EVENT, self._on_event, stateless=True
                )
            )

    def close(self) -> None:
        for eid in self._event_ids:
            with contextlib.suppress(tango.DevFailed):
                self.proxy.unsubscribe_event(eid)
        self._event_ids.clear()

    def __enter__(self) -> DoorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ events
    def _on_event(self, ev) -> None:
        if ev.err or ev.attr_value is None:
            return
        name = ev.attr_value.name.lower()
        value = ev.attr_value.value
        with self._lock:
            run = self._current
            if run is None:
                return
            if name == "macrostatus":
                if run.ended is None:
                    self._on_status(run, value)
            elif name == "result":  # may trail the final MacroStatus
                if value is not None and len(value):
                    run.result = [str(v) for v in value]
            elif value is not None:  # the last lines may trail it too
                stream = getattr(run, name, None)
                if isinstance(stream, list):
                    stream.extend(str(v) for v in value)

    def _on_status(self, run: MacroRun, value) -> None:
        if not value or not value[1]:
            return
        try:
            items = json.loads(bytes(value[1]).decode())
        except (ValueError, TypeError):
            return
        for item in items:
            if run.macro_id is not None and str(item.get("id")) != run.macro_id:
                continue  # a sub-macro
            state = item.get("state")
            if "step" in item:
                run.step = float(item["step"])
            if state in TERMINAL:
                if state == "exception":
                    run.exc_type = str(item.get("exc_type", ""))
                    run.exc_value = str(item.get("exc_value", ""))
                run.outcome = state
                run.ended = time.time()
                self._ended.set()

    # -------------------------------------------------------------- run
    def state(self):
        return self.proxy.state()

    def start(self, macro: list[str]) -> MacroRun:
        """Start a macro; returns at once. Raises DoorError if the Door refuses."""
        run = MacroRun([str(a) for a in macro])
        with self._lock:
            self._current = run
            self._ended.clear()
        try:
            reply = self.proxy.RunMacro(run.macro)
        except tango.DevFailed as exc:
            with self._lock:
                self._current = None
            raise DoorError(f"{self.name} refused {' '.join(run.macro)}: {_desc(exc)}") from None
        match = _MACRO_ID.search(reply[0] if len(reply) else "")
        with self._lock:
            run.macro_id = match.group(1) if match else None
        return run

    def wait(self, run: MacroRun, timeout: float | None = None) -> MacroRun:
        """Wait for ``run`` to end. A Door that stops answering ends it as "lost";
        a Door back to ON with no final event ends it with the Door's verdict."""
        deadline = None if timeout is None else time.monotonic() + timeout
        idle_since = None
        while not self._ended.wait(0.1):
            if deadline is not None and time.monotonic() > deadline:
                with self._lock:
                    run.outcome, run.ended = "timeout", time.time()
                return run
            try:
                state = self.proxy.state()
            except tango.DevFailed as exc:
                with self._lock:
                    if run.ended is None:
                        run.outcome, run.ended = "lost", time.time()
                        run.exc_value = f"{self.name} does not answer: {_desc(exc)}"
                return run
            if state in (tango.DevState.RUNNING, tango.DevState.STANDBY):
                idle_since = None
                continue
            # the final MacroStatus event may trail the state by a moment
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 2.0:
                with self._lock:
                    if run.ended is None:
                        run.outcome = "finish" if state == tango.DevState.ON else "exception"
                        run.ended = time.time()
                return run
        self._settle()
        return run

    def _settle(self, timeout: float = 10.0) -> None:
        """The final event comes a moment before the Door leaves RUNNING: wait
        for that so that the next RunMacro is accepted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.proxy.state() not in (tango.DevState.RUNNING, tango.DevState.STANDBY):
                    return
            except tango.DevFailed:
                return
            time.sleep(0.02)

    def run(self, macro: list[str], timeout: float | None = None) -> MacroRun:
        return self.wait(self.start(macro), timeout)

    def busy(self) -> bool:
        """Is the Door running (or holding a paused) macro? Not answering counts
        as busy: it is not ready for a macro."""
        try:
            return self.proxy.state() not in (tango.DevState.ON, tango.DevState.ALARM)
        except tango.DevFailed:
            return True

    def make_ready(self, timeout: float = 5.0, start_timeout: float = 120.0) -> str:
        """Bring the Door back to ready, whatever its macro is doing: abort it,
        then release it, each given ``timeout`` seconds; and when Sardana does
        not end it (aborts that hang are a known Sardana problem), restart the
        Door's server through the supervisor that watches it, as the last step.

        Returns what it took: "ready" (nothing to do), "aborted", "released" or
        "restarted SERVER"; raises DoorError naming what failed."""
        if not self.busy():
            return "ready"
        for step, action in (("aborted", self.abort), ("released", self.release)):
            deadline = time.monotonic() + timeout
            while True:
                # Sardana ignores an abort sent before the macro has really
                # started: ask again until it ends or the step's time is up
                with contextlib.suppress(tango.DevFailed):
                    action()
                if self._wait_not_busy(min(RESEND_PERIOD, deadline - time.monotonic())):
                    self._settle()
                    return step
                if time.monotonic() >= deadline:
                    break
        server = self.server()
        supervisor = find_supervisor(server, database=database_of(self.proxy))
        try:
            supervisor.RestartServer(server)
        except tango.DevFailed as exc:
            raise DoorError(
                f"{self.name} did not end its macro after abort and release, and "
                f"{supervisor.dev_name()} could not restart {server}: {_desc(exc)}"
            ) from None
        with self._lock:  # the macro died with the server
            run = self._current
            # (a run the client stopped waiting for, "timeout", died too)
            if run is not None and (run.ended is None or run.outcome == "timeout"):
                run.outcome, run.ended = "lost", time.time()
                run.exc_value = f"{server} was restarted: the macro did not end on abort"
                self._ended.set()
        if not self._wait_not_busy(start_timeout):
            raise DoorError(
                f"{self.name} is not ready {start_timeout:g} s after {server} was restarted "
                "(see `beamline status` and its log)"
            )
        return f"restarted {server}"

    def _wait_not_busy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.busy():
                return True
            time.sleep(0.05)
        return False

    def server(self) -> str:
        """The Door's server (``Sardana/bl01``), from its database."""
        try:
            return database_of(self.proxy).get_device_info(self.proxy.dev_name()).ds_full_name
        except tango.DevFailed as exc:
            raise DoorError(f"cannot find the server of {self.name}: {_desc(exc)}") from None

    def stop(self) -> None:
        self.proxy.StopMacro()

    def abort(self) -> None:
        self.proxy.AbortMacro()

    def release(self) -> None:
        self.proxy.ReleaseMacro()


def database_of(proxy) -> tango.Database:
    """The database ``proxy``'s device is registered in (a process may talk to
    several: the default one is the first TANGO_HOST it saw)."""
    return tango.Database(proxy.get_db_host(), proxy.get_db_port())


def find_supervisor(server: str, database: tango.Database | None = None, timeout: float = 10.0):
    """A proxy to the supervisor that watches ``server`` (the suite's
    Supervisor devices list the servers they watch in ``Servers``), in
    ``database`` (default: TANGO_HOST's); asks again for ``timeout`` seconds
    (a busy supervisor answers late)."""
    database = database or tango.Database()
    prefix = f"tango://{database.get_db_host()}:{database.get_db_port()}/"
    deadline = time.monotonic() + timeout
    reasons: dict[str, str] = {}
    while True:
        try:
            names = list(database.get_device_exported_for_class("Supervisor"))
        except tango.DevFailed as exc:
            names, reasons["database"] = [], _desc(exc)
        for name in names:
            try:
                proxy = tango.DeviceProxy(prefix + name)
                proxy.set_timeout_millis(3000)
                watched = [s.lower() for s in proxy.read_attribute("Servers").value or ()]
            except tango.DevFailed as exc:
                reasons[name] = f"does not answer ({_desc(exc)})"
                continue
            if server.lower() in watched:
                return proxy
            reasons[name] = f"watches {len(watched)} other server(s)"
        if time.monotonic() >= deadline:
            why = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no supervisor exported"
            raise DoorError(f"no supervisor watches {server} ({why})")
        time.sleep(0.5)


def _desc(exc: tango.DevFailed) -> str:
    try:
        return exc.args[0].desc.strip().splitlines()[0]
    except (IndexError, AttributeError):
        return str(exc)
