"""Self-healing, proven by fault injection on the real beamline under the real
Starter: for every server kind, SIGKILL, a real segmentation fault, SIGSTOP, a
device thread that blocks, and a server that exits during start-up (crash
loop). While each fault lasts, every other device keeps answering; afterwards
the failed device is back with its settings, or, for a crash loop, the
supervisor has given up in ALARM after a bounded number of restarts.

The beamline runs with BEAMLINE_TEST_HOOKS=1 (test-only commands TestCrash
and TestHang, and a crash-at-init flag file)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import psutil
import pytest
import tango

from tests.helpers import running_beamline, wait_until
from tests.system.conftest import Events

pytestmark = [pytest.mark.system, pytest.mark.slow]

S = tango.DevState

# one server of every kind: (server, device, a memorized setting to check)
KINDS = [
    ("Motor/sample_y", "bl01/mot/sample_y", ("Offset", 0.25)),
    ("Shutter/fe", "bl01/shutter/fe", None),
    ("Scaler/scaler", "bl01/ct/scaler", ("PresetTime", 0.7)),
    ("Detector/cam1", "bl01/det/cam1", ("ExposureTime", 0.03)),
    ("VacuumGauge/gauge1", "bl01/vac/gauge1", None),
    ("Valve/valve1", "bl01/vac/valve1", None),
    ("Motor/mirror_pitch", "bl01/mot/mirror_pitch", ("Offset", -0.1)),
    ("EventRelay/relay", "bl01/sys/eventrelay", None),
]
ALL_DEVICES = [d for _, d, _ in KINDS] + [
    "bl01/mot/slit_h",
    "bl01/mot/slit_v",
    "bl01/mot/sample_x",
    "bl01/mot/det_z",
    "bl01/sys/supervisor",
]


@pytest.fixture(scope="module")
def healing(tmp_path_factory):
    with running_beamline(tmp_path_factory.mktemp("healing"), hooks=True) as run:
        supervisor = run.proxy("bl01/sys/supervisor")
        wait_until(
            lambda: all(st == "RUNNING" for st in supervisor.ServerStates) and supervisor.Servers,
            30,
            "the supervisor to see every server running",
        )
        for _server, device, setting in KINDS:
            if setting:
                run.proxy(device).write_attribute(*setting)
        yield run


class Sampler:
    """Reads State of every other device while a fault lasts."""

    def __init__(self, run, exclude):
        self.devices = [d for d in ALL_DEVICES if d != exclude]
        self.proxies = {d: run.proxy(d, timeout_ms=2000) for d in self.devices}
        self.failures: list[str] = []
        self.reads = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with tango.EnsureOmniThread():
            while not self.stop.is_set():
                for device, proxy in self.proxies.items():
                    try:
                        proxy.state()
                        self.reads += 1
                    except tango.DevFailed as exc:
                        self.failures.append(f"{device}: {exc.args[0].desc.strip()[:80]}")
                self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def row(run, server):
    sup = run.proxy("bl01/sys/supervisor")
    return next(r for r in json.loads(sup.Report)["servers"] if r["server"] == server)


def pid_of(run, server):
    return row(run, server)["pid"]


def inject(run, server, device, how):
    pid = pid_of(run, server)
    assert pid, f"{server} has no pid"
    if how == "sigkill":
        os.kill(pid, signal.SIGKILL)
    elif how == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    elif how in ("segfault", "hang"):
        proxy = run.proxy(device, timeout_ms=300)
        name, arg = ("TestCrash", "segfault") if how == "segfault" else ("TestHang", 120.0)
        with contextlib.suppress(tango.DevFailed):  # it died or blocked: that is the point
            proxy.command_inout(name, arg)
    return pid


def back(run, server, device, old_pid, restarts_before, timeout=20.0):
    def answered():
        r = row(run, server)
        if (
            r["state"] != "RUNNING"
            or r["pid"] in (old_pid, None)
            or r["restarts"] <= restarts_before
        ):
            return None
        proxy = run.proxy(device, timeout_ms=1000)
        proxy.state()
        return r

    def describe():
        logs = run.cli("logs", server, "-n", "40").stdout
        supervisor_log = run.cli("logs", "Supervisor/supervisor", "-n", "30").stdout
        return (
            f"supervisor's row: {row(run, server)}\n"
            f"{server}'s log:\n{logs}\nsupervisor's log:\n{supervisor_log}"
        )

    return wait_until(answered, timeout, f"{server} restarted and answering", on_timeout=describe)


EXPECTED_CAUSE = {
    "sigkill": "process vanished without a message",
    "segfault": "segmentation fault (SIGSEGV)",
    "sigstop": "hang: no device answered",
    "hang": "hang: no device answered",
}


@pytest.mark.parametrize("how", ["sigkill", "segfault", "sigstop", "hang"])
@pytest.mark.parametrize("server,device,setting", KINDS, ids=[k[0] for k in KINDS])
def test_fault_is_healed_and_nothing_else_is_disturbed(healing, server, device, setting, how):
    restarts_before = row(healing, server)["restarts"]
    with Sampler(healing, exclude=device) as sampler:
        old_pid = inject(healing, server, device, how)
        r = back(healing, server, device, old_pid, restarts_before)
    assert sampler.failures == [], f"other devices failed during the fault: {sampler.failures[:5]}"
    assert sampler.reads > 0
    assert EXPECTED_CAUSE[how] in r["last_cause"]
    if how == "hang":
        assert "stacks of every thread written to" in r["last_cause"]
        assert "_test_hang" in healing.cli("logs", server, "-n", "400").stdout
    if how == "sigstop":
        assert "SIGSTOP" in r["last_cause"]
    assert (
        not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    )
    proxy = healing.proxy(device)
    # its link to the hardware comes back after the restart (an EPICS device's
    # channels are searched again: seconds on a loaded machine)
    wait_until(
        lambda: proxy.state() not in (S.FAULT, S.INIT),
        30,
        f"{device} out of FAULT/INIT",
        on_timeout=lambda: f"{proxy.state()}: {proxy.status()}",
    )
    if setting:
        assert proxy.read_attribute(setting[0]).value == pytest.approx(setting[1])
    status = healing.cli("status").stdout
    assert server in status and EXPECTED_CAUSE[how].split(":")[0] in status


@pytest.mark.parametrize("server,device,setting", KINDS, ids=[k[0] for k in KINDS])
def test_crash_loop_ends_in_alarm_after_a_bounded_number_of_restarts(
    healing, server, device, setting
):
    flag = healing.run_dir / "test-hooks" / "crash-at-init" / server.replace("/", "_")
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    supervisor = healing.proxy("bl01/sys/supervisor")
    before = row(healing, server)["restarts"]
    try:
        with Sampler(healing, exclude=device) as sampler:
            os.kill(pid_of(healing, server), signal.SIGKILL)
            wait_until(
                lambda: row(healing, server)["state"] == "FAILED", 40, "the supervisor to give up"
            )
        r = row(healing, server)
        assert supervisor.state() == S.ALARM
        assert server in supervisor.status() and "crash at init" in supervisor.status()
        assert r["restarts"] - before <= 5
        assert "gave up after 5 failures" in r["last_cause"]
        assert sampler.failures == []
        # it stays given up: no more restarts while the supervisor keeps observing
        restarts = r["restarts"]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert row(healing, server)["restarts"] == restarts
            assert row(healing, server)["state"] == "FAILED"
    finally:
        flag.unlink()
    healing.cli("start", server)
    # StartServer after giving up: RESTARTING until the device answers, then RUNNING
    wait_until(lambda: row(healing, server)["state"] == "RUNNING", 15, "RUNNING again")
    wait_until(lambda: supervisor.state() == S.ON, 15, "the supervisor back to ON")


def test_a_server_stopped_on_purpose_is_not_restarted(healing):
    server, device = "Motor/det_z", "bl01/mot/det_z"
    healing.cli("stop", server)
    wait_until(lambda: row(healing, server)["state"] == "STOPPED", 10, "STOPPED")
    # the supervisor keeps observing several times a second: still stopped
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert row(healing, server)["pid"] is None
    assert "stopped on purpose" in row(healing, server)["last_cause"]
    healing.cli("start", server)
    wait_until(lambda: row(healing, server)["state"] == "RUNNING", 15, "RUNNING again")
    assert healing.proxy(device).state() == S.ON


def test_the_supervisor_itself_is_restarted_and_restarts_nothing_twice(healing):
    main = healing.proxy("bl01/sys/supervisor")
    pids_before = dict(zip(main.Servers, main.ServerPids, strict=True))
    standby = healing.proxy("bl01/sys/supervisor-standby")
    old = dict(zip(standby.Servers, standby.ServerPids, strict=True))["Supervisor/supervisor"]
    os.kill(old, signal.SIGKILL)

    def main_back():
        s = healing.proxy("bl01/sys/supervisor", timeout_ms=500)
        s.state()
        return s if s.Servers else None

    fresh = wait_until(main_back, 15, "the supervisor back")
    wait_until(lambda: all(st == "RUNNING" for st in fresh.ServerStates), 15, "its view rebuilt")
    pids_after = dict(zip(fresh.Servers, fresh.ServerPids, strict=True))
    pids_before.pop("Supervisor/standby", None)
    pids_after.pop("Supervisor/standby", None)
    assert pids_after == pids_before, "no server may be restarted because the supervisor was"
    assert all(n == 0 for n in fresh.ServerRestarts)
    assert "Supervisor/supervisor" in dict(
        zip(standby.Servers, standby.ServerRestarts, strict=True)
    )


def test_events_resume_quickly_after_a_restart(healing):
    from tango_devices.common.events import ResilientSubscription

    received = []
    sub = ResilientSubscription(
        "bl01/mot/slit_h",
        "State",
        lambda ev: received.append((time.monotonic(), ev.err)),
        tango_host=healing.tango_host,
    )
    try:
        wait_until(lambda: received, 5, "the first event")
        n = len(received)
        os.kill(pid_of(healing, "Motor/slit_h"), signal.SIGKILL)

        def answering():
            p = tango.DeviceProxy(f"tango://{healing.tango_host}/bl01/mot/slit_h")
            p.set_timeout_millis(300)
            p.state()
            return time.monotonic()

        answered_at = wait_until(answering, 15, "the device answering a new client")
        wait_until(
            lambda: [t for t, err in received[n:] if not err], 5, "an event after the restart"
        )
        first = next(t for t, err in received[n:] if not err)
        assert first - answered_at < 1.5, "events must resume within about a second"
        wait_until(lambda: sub.resubscriptions >= 1, 5, "the resubscription")
        # not only the value read at subscription: pushed events flow again
        motor = healing.proxy("bl01/mot/slit_h")
        wait_until(lambda: motor.state() == tango.DevState.ON, 10, "slit_h ready")
        m = len(received)
        moved_at = time.monotonic()
        motor.Position = motor.Position + 0.05
        wait_until(
            lambda: [t for t, err in received[m:] if not err], 3, "a pushed State event (MOVING)"
        )
        assert next(t for t, err in received[m:] if not err) - moved_at < 1.0
    finally:
        sub.close()


def test_a_plain_subscriber_gets_events_again_without_a_gap_report(healing):
    """An unmodified PyTango subscriber (no ResilientSubscription) keeps its
    subscription across a kill -9: the event relay holds its connections, so
    the restarted server's events reach it as soon as it answers, and cppTango
    never reports the events lost (API_EventTimeout: 10 s of blindness)."""
    server, device = "Motor/sample_y", "bl01/mot/sample_y"
    relay = healing.proxy("bl01/sys/eventrelay")
    assert relay.state() == S.ON, relay.status()
    restarts_before = row(healing, server)["restarts"]
    subscriber = healing.proxy(device)
    position = Events(subscriber, "Position")
    try:
        old_pid = inject(healing, server, device, "sigkill")
        killed = time.time()
        back(healing, server, device, old_pid, restarts_before)
        # the new process's current position, unasked (as cppTango's own
        # re-subscription would hand it over, 10 s later)
        position.wait_for(
            lambda items: any(v.time.totime() > killed for v in items),
            6.0,
            "Position event from the restarted server",
        )
        start = subscriber.read_attribute("Position").value
        target = start + 0.5 if start < 1.0 else start - 0.5
        healing.proxy(device).write_attribute("Position", target)
        position.wait_for(
            lambda items: any(v.time.totime() > killed and v.value != start for v in items),
            6.0,
            "Position event of the restarted server's move",
        )
        assert position.errors == [], f"the subscriber saw its events fail: {position.errors}"
        # and none later: the relay replays the heartbeat until the new server's own
        motor = healing.proxy(device)
        wait_until(lambda: motor.state() == S.ON, 15, f"{device} at {target}")
        motor.write_attribute("Position", start)
        wait_until(
            lambda: time.time() - killed > 12.0 and position.records()[-1][1] == start,
            20,
            "12 s after the kill, the subscriber at the start position again",
        )
        assert position.errors == [], f"the subscriber saw its events fail: {position.errors}"
        report = next(s for s in json.loads(relay.Report)["servers"] if s["server"] == server)
        assert report["resubscriptions"] >= 1 and "re-created" in report["last_resubscription"]
    finally:
        position.close()


def test_the_relay_passes_each_server_only_its_own_devices_subscriptions(healing):
    """The logger's (and every client's) one event socket sends all its
    subscriptions to every server it listens to; through the relay each server
    gets those of its own devices only (at 200 servers, passing them all on
    cost the relay 1.4 GiB)."""
    relay = healing.proxy("bl01/sys/eventrelay")
    db = tango.Database(*healing.tango_host.split(":"))

    def foreign() -> dict[str, list[str]]:
        out = {}
        for entry in json.loads(relay.Report)["servers"]:
            own = {d.lower() for d in list(db.get_device_class_list(entry["server"]))[0::2]}
            alien = [d for d in entry["devices"] if d.lower() not in own]
            if alien:
                out[entry["server"]] = alien
        return out

    wait_until(
        lambda: not foreign(),
        20,
        "no server with another's subscriptions",
        on_timeout=lambda: str(foreign()),
    )
    report = {s["server"]: s for s in json.loads(relay.Report)["servers"]}
    # the logger archives every device: each server has its own subscriptions
    assert report["Motor/sample_x"]["devices"] == ["bl01/mot/sample_x"]
    assert report["VacuumGauge/gauge1"]["devices"] == ["bl01/vac/gauge1"]


def test_after_the_relays_own_restart_events_go_through_it_again(healing):
    """The relay rebinds the advertised ports (a client subscribing afterwards
    gets events through it) and reaches the servers' own ports again."""
    relay = healing.proxy("bl01/sys/eventrelay")
    restarts_before = row(healing, "EventRelay/relay")["restarts"]
    old_pid = inject(healing, "EventRelay/relay", "bl01/sys/eventrelay", "sigkill")
    back(healing, "EventRelay/relay", "bl01/sys/eventrelay", old_pid, restarts_before)
    wait_until(lambda: relay.state() == S.ON, 10, "the relay ON", on_timeout=relay.status)
    motor = healing.proxy("bl01/mot/sample_x")
    position = Events(healing.proxy("bl01/mot/sample_x"), "Position")
    try:
        position.wait_live()
        start = motor.read_attribute("Position").value
        subscribed = time.time()
        motor.write_attribute("Position", start + 0.2)
        position.wait_for(
            lambda items: any(v.time.totime() > subscribed and v.value != start for v in items),
            10,
            "Position event through the restarted relay",
        )
        report = next(
            s for s in json.loads(relay.Report)["servers"] if s["server"] == "Motor/sample_x"
        )
        assert report["events"] > 0 and report["connected"], report
    finally:
        position.close()
        wait_until(lambda: motor.state() == S.ON, 15, "sample_x at rest")
