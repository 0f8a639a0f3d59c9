"""Supervisor: heals the servers of its host (Tango layer).

A thread observes every server several times a second (process list, pidfd
wake-up on exit, State reads with a short timeout through
:class:`TangoProber`) and lets :class:`Supervisor` decide. Two instances watch
each other: ``bl01/sys/supervisor`` watches every server of the host, and a
standby (property ``Supervise`` = the main one) restarts the main one.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import tango
from tango import DevState
from tango.server import attribute, command, device_property

from tango_devices.common import lifecycle
from tango_devices.common.dbclient import LatestWrites
from tango_devices.common.device_base import BeamlineDevice, run_server, table_checks
from tango_devices.common.statemachine import State
from tango_devices.supervisor.model import Policy
from tango_devices.supervisor.processes import ProcessWatcher
from tango_devices.supervisor.states import SUPERVISOR_TABLE
from tango_devices.supervisor.supervisor_logic import SupervisorLogic
from tango_devices.supervisor.tango_backends import (
    DeviceLists,
    Starter,
    StarterLauncher,
    TangoProber,
    host_servers,
)

log = logging.getLogger(__name__)

BLIND_RETRY = 0.5  # s between reads of the server list while there is none

SPECTRUM = 256


class Supervisor(BeamlineDevice):
    """Restarts crashed servers at once, kills and restarts hung ones, backs
    off and gives up on crash loops; never touches a server stopped on purpose."""

    HangTimeout = device_property(dtype=float, default_value=3.0, doc="s without an answer = hung")
    StartTimeout = device_property(
        dtype=float, default_value=20.0, doc="s for a (re)started server to answer, if idle"
    )
    BusyStartTimeout = device_property(
        dtype=float,
        default_value=120.0,
        doc="s for a (re)started server that still uses CPU (busy machine) to answer",
    )
    MaxFailures = device_property(dtype=int, default_value=5, doc="failures in the window: give up")
    FailureWindow = device_property(dtype=float, default_value=60.0, doc="s: failure window")
    BackoffBase = device_property(dtype=float, default_value=0.5, doc="s: 2nd failure delay")
    BackoffMax = device_property(dtype=float, default_value=8.0, doc="s: longest delay")
    StableAfter = device_property(
        dtype=float,
        default_value=10.0,
        doc="s answering after which earlier failures are forgotten",
    )
    ProbeTimeout = device_property(dtype=float, default_value=0.5, doc="s: State read timeout")
    ProbePeriod = device_property(dtype=float, default_value=0.5, doc="s between State reads")
    MaxProbeRate = device_property(
        dtype=float,
        default_value=300.0,
        doc="State reads a second in all, at most: with many devices ProbePeriod grows to "
        "devices / MaxProbeRate (200 devices: 0.67 s; a hang is still seen HangTimeout "
        "after the last answer, a slow answer counts up to HangTimeout less the period)",
    )
    StepPeriod = device_property(
        dtype=float, default_value=0.1, doc="s between observations while anything is in flux"
    )
    SettledStepPeriod = device_property(
        dtype=float,
        default_value=0.5,
        doc="s between observations while every server runs and answers (an exit, a silence "
        "or an answer after one wakes the loop at once)",
    )
    RefreshPeriod = device_property(
        dtype=float, default_value=5.0, doc="s between server list reads"
    )
    Supervise = device_property(
        dtype=(str,), default_value=[], doc="Only these servers (empty: every server of the host)"
    )

    def init_device(self) -> None:
        BeamlineDevice.init_device(self)
        self.set_state(DevState.INIT)
        for name in self._published_attributes():
            self.set_change_event(name, True, False)
        self.set_change_event("DeviceStates", True, False)
        self._device_states = "{}"
        self._device_states_seen: dict[str, list[str]] | None = None
        self._lock = threading.Lock()
        self._snapshot: list[dict] = []
        self._announce: list[str] = []
        self._last_restart = ""
        self._dirty = True
        self._own = tango.Util.instance().get_ds_name()
        self._host = tango.Util.instance().get_host_name().split(".")[0]
        self._starter = Starter(self._host)
        self._watcher = ProcessWatcher()
        # a silence counts once a read with the rest of HangTimeout as its
        # timeout is unanswered too (a slow answer on a busy machine is an answer)
        self._prober = TangoProber(
            self.ProbeTimeout,
            self.ProbePeriod,
            confirm=max(self.ProbeTimeout, self.HangTimeout - self.ProbeTimeout),
            max_rate=self.MaxProbeRate,
            on_change=self._watcher.wake,  # a silence or an answer wakes the loop
        )
        self._device_lists = DeviceLists()
        policy = Policy(
            hang_timeout=self.HangTimeout,
            start_timeout=self.StartTimeout,
            start_timeout_busy=self.BusyStartTimeout,
            window=self.FailureWindow,
            max_failures=self.MaxFailures,
            backoff_base=self.BackoffBase,
            backoff_max=self.BackoffMax,
            stable_after=self.StableAfter,
        )
        launcher = StarterLauncher(self._starter)
        launcher.preload()  # restarts must not need the database for the paths
        self.logic = SupervisorLogic(self._watcher, self._prober, launcher, policy)
        self.init_state_events(self.logic.machine)
        self.logic.on_change(lambda rec: self._mark_dirty())
        self.logic.on_restart(self._on_restart)
        self._expected = self._load_expected()
        # stored from its own thread: the loop calls this under its lock, and a
        # slow or stopped database must not stall healing (a write to a
        # stopped database can block for over a minute)
        self._expected_store = LatestWrites(self._store_expected, name="expected-servers")
        self.logic.on_expected_change(self._persist_expected)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def delete_device(self) -> None:
        lifecycle.mark_clean_exit(self._own)
        self._stop.set()
        self._thread.join(2.0)
        self._expected_store.flush(2.0)  # what it last decided, if the database takes it
        self._expected_store.close()
        self._prober.close()
        self._watcher.close()

    # ------------------------------------------------------------ the loop
    def _run(self) -> None:
        with tango.EnsureOmniThread():
            next_refresh = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_refresh:
                    # no list yet (the Starter is still starting): ask again soon
                    known = self._refresh() or self.logic.records
                    next_refresh = now + (self.RefreshPeriod if known else BLIND_RETRY)
                if self.logic.machine.state is not State.FAULT or self.logic.records:
                    with self._lock:
                        self.logic.step()
                        wall = time.time()
                        snapshot = [r.as_dict(wall) for r in self.logic.records.values()]
                        summary = self.logic.summary()
                    self._snapshot = snapshot
                    self._summary = summary
                    self.logic.machine.notify()  # outside our lock: commands take it
                    self._publish()
                    answers = self._prober.answers()  # once a step, for both
                    self._publish_device_states(answers)
                    self._write_view(answers)
                settled = self.logic.records and self.logic.settled()
                self._watcher.wait(self.SettledStepPeriod if settled else self.StepPeriod)

    def _refresh(self) -> bool:
        """Read this host's servers from its Starter; False if it could not."""
        try:
            specs = host_servers(self._starter, self._own, self.Supervise, self._device_lists)
        except tango.DevFailed as exc:
            if self.logic.records:
                # the servers it knows are still watched and healed (processes
                # and devices need no database); the list is read again later
                log.warning("cannot refresh the server list: %s", exc.args[0].desc.strip())
                return False
            self.logic.blind(
                f"Cannot read the servers of host {self._host} from {self._starter.device}: "
                f"{exc.args[0].desc.strip()}. Retrying every {BLIND_RETRY:g} s."
            )
            self.logic.machine.notify()
            return False
        with self._lock:
            known = {r.name.lower() for r in self.logic.records.values()}
            if {s.name.lower() for s in specs} != known or not known:
                self.logic.set_servers(specs, self._expected)
                self._dirty = True
        return bool(specs)

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _on_restart(self, rec) -> None:
        self._announce.append(
            json.dumps(
                {
                    "server": rec.name,
                    "devices": list(rec.spec.devices),
                    "pid": rec.pid,
                    "recovery_s": round(rec.last_recovery or 0.0, 3),
                    "restarts": rec.restarts,
                    "cause": rec.last_cause,
                    "time": time.time(),
                }
            )
        )
        self._dirty = True

    # The servers expected to run are kept in the device property "_Expected":
    # runtime state, not configuration (dsconfig leaves "_" properties alone).
    def _load_expected(self) -> list[str]:
        try:
            db = tango.Util.instance().get_database()
            return list(db.get_device_property(self.get_name(), ["_Expected"])["_Expected"])
        except (tango.DevFailed, RuntimeError):
            return []

    def _persist_expected(self, expected: set[str]) -> None:
        self._expected = sorted(expected)
        self._expected_store.put(self._expected)

    def _store_expected(self, expected: list[str]) -> None:
        db = tango.Util.instance().get_database()
        db.put_device_property(self.get_name(), {"_Expected": expected})

    def _publish(self) -> None:
        if not self._dirty and not self._announce:
            return
        self._dirty = False
        with tango.AutoTangoMonitor(self):
            for name in self._published_attributes():
                if name == "LastRestart":
                    continue
                self.push(name, getattr(self, f"_value_{name}")())
            while self._announce:
                self._last_restart = self._announce.pop(0)
                self.push("LastRestart", self._last_restart)

    def _publish_device_states(self, answers: dict[str, tuple[str, float | None]]) -> None:
        """Each supervised device's State as its probes last saw it, pushed
        when any changes: an overview of 200 devices subscribes to this one
        attribute instead of to 200 devices."""
        answered = {device.lower(): state for device, (state, _) in answers.items()}
        with self._lock:
            states = self.logic.device_states(answered)
        if states == self._device_states_seen:
            return  # compared as data: serialised only when it changed
        self._device_states_seen = states
        self._device_states = json.dumps(states, sort_keys=True)
        with tango.AutoTangoMonitor(self):
            self.push("DeviceStates", self._device_states)

    def _write_view(self, answers: dict[str, tuple[str, float | None]]) -> None:
        """Once a second: what it sees (servers, and each device's last answer
        to its probes) into the run directory, where `beamline status` reads
        it when the database is down and no client can find a device."""
        now = time.monotonic()
        if now < getattr(self, "_view_due", 0.0):
            return
        self._view_due = now + 1.0
        base = lifecycle.run_dir()
        if base is None:
            return
        wall = time.time()
        devices = {
            device: {"state": state, "age": None if t is None else round(now - t, 2)}
            for device, (state, t) in answers.items()
        }
        view = {
            "supervisor": self.get_name(),
            "host": self._host,
            "time": wall,
            "state": str(self.logic.machine.state),
            "summary": getattr(self, "_summary", ""),
            "servers": self._snapshot,
            "devices": devices,
        }
        path = base / "supervision" / (self.get_name().replace("/", "_") + ".json")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(view))
            tmp.replace(path)
        except OSError as exc:  # a full disk: the view is a convenience
            log.debug("could not write %s: %s", path, exc)

    @staticmethod
    def _published_attributes() -> tuple[str, ...]:
        return (
            "Servers",
            "ServerStates",
            "ServerPids",
            "ServerRestarts",
            "ServerUptimes",
            "LastFailureCauses",
            "LastRecoveryTimes",
            "Summary",
            "Report",
            "LastRestart",
        )

    # ---------------------------------------------------------- attributes
    def _column(self, key: str, default=None):
        return [row[key] if row[key] is not None else default for row in self._snapshot]

    def _value_Servers(self):
        return self._column("server")

    def _value_ServerStates(self):
        return self._column("state")

    def _value_ServerPids(self):
        return self._column("pid", 0)

    def _value_ServerRestarts(self):
        return self._column("restarts", 0)

    def _value_ServerUptimes(self):
        return self._column("uptime", 0.0)

    def _value_LastFailureCauses(self):
        return self._column("last_cause", "")

    def _value_LastRecoveryTimes(self):
        return [float("nan") if v is None else v for v in self._column("last_recovery")]

    def _value_Summary(self):
        return getattr(self, "_summary", "")

    def _value_Report(self):
        return json.dumps({"host": self._host, "servers": self._snapshot}, indent=1)

    @attribute(dtype=(str,), max_dim_x=SPECTRUM, description="Supervised servers.")
    def Servers(self):
        return self._value_Servers()

    @attribute(
        dtype=(str,),
        max_dim_x=SPECTRUM,
        description="Per server: RUNNING, STARTING, RESTARTING, HUNG, BACKOFF, FAILED, "
        "STOPPED or NOT_STARTED (same order as Servers).",
    )
    def ServerStates(self):
        return self._value_ServerStates()

    @attribute(dtype=(int,), max_dim_x=SPECTRUM, description="Per server: pid (0: none).")
    def ServerPids(self):
        return self._value_ServerPids()

    @attribute(dtype=(int,), max_dim_x=SPECTRUM, description="Per server: restarts so far.")
    def ServerRestarts(self):
        return self._value_ServerRestarts()

    @attribute(dtype=(float,), max_dim_x=SPECTRUM, unit="s", description="Per server: uptime.")
    def ServerUptimes(self):
        return self._value_ServerUptimes()

    @attribute(
        dtype=(str,),
        max_dim_x=SPECTRUM,
        description="Per server: cause of the last failure (exit code, signal, hang).",
    )
    def LastFailureCauses(self):
        return self._value_LastFailureCauses()

    @attribute(
        dtype=(float,),
        max_dim_x=SPECTRUM,
        unit="s",
        description="Per server: time from the last failure to its devices answering (NaN: none).",
    )
    def LastRecoveryTimes(self):
        return self._value_LastRecoveryTimes()

    @attribute(dtype=str, description="One line: servers per state, and what was given up.")
    def Summary(self):
        return self._value_Summary()

    @attribute(
        dtype=str,
        description="JSON: each supervised device -> [its State as last answered to the "
        "supervisor's probes, or '' with why not]. Pushed with change events when any "
        "changes (an overview subscribes to this instead of to every device).",
    )
    def DeviceStates(self):
        return self._device_states

    @attribute(dtype=str, description="Every server as JSON (what `beamline status` shows).")
    def Report(self):
        return self._value_Report()

    @attribute(
        dtype=str,
        description="JSON: each probed device -> {state: its State as it last answered the "
        "supervisor's probes, age: seconds since (null: never)}, as of this read. "
        "`beamline status` on another host reads it instead of asking every device "
        "of this host through a new client. Read only: no events.",
    )
    def ProbeAnswers(self):
        now = time.monotonic()
        return json.dumps(
            {
                device: {"state": state, "age": None if t is None else round(now - t, 2)}
                for device, (state, t) in self._prober.answers().items()
            }
        )

    @attribute(
        dtype=str,
        description="JSON announcement of the last restart (server, devices, recovery time). "
        "Subscribers resubscribe to the devices' events when it changes.",
    )
    def LastRestart(self):
        return self._last_restart

    # ------------------------------------------------------------ commands
    def _operator(self, name: str, action) -> None:
        try:
            with self._lock:
                action(name)
                wall = time.time()
                self._snapshot = [r.as_dict(wall) for r in self.logic.records.values()]
        except KeyError as exc:
            tango.Except.throw_exception(
                "SUPERVISOR_UNKNOWN_SERVER", str(exc.args[0]), "Supervisor"
            )
        except OSError as exc:
            tango.Except.throw_exception("SUPERVISOR_ERROR", f"{name}: {exc}", "Supervisor")
        self._dirty = True
        self._watcher.wake()  # the loop follows it up at once

    @command(
        dtype_in=str, doc_in="Stop a server on purpose: it is not restarted until StartServer."
    )
    def StopServer(self, name: str) -> None:
        self._operator(name, self.logic.stop_server)

    @command(dtype_in=str, doc_in="Start a server (also after a crash loop) and supervise it.")
    def StartServer(self, name: str) -> None:
        self._operator(name, self.logic.start_server)

    @command(dtype_in=str, doc_in="Kill and restart a server now.")
    def RestartServer(self, name: str) -> None:
        self._operator(name, self.logic.restart_server)

    # Every command is allowed where SUPERVISOR_TABLE allows it (is_<command>_allowed).
    locals().update(table_checks(SUPERVISOR_TABLE))


def main(args=None) -> None:
    run_server((Supervisor,), args=args)
