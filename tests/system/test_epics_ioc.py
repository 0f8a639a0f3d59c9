"""The virtual EPICS IOC in the real simulator process, driven by the real
pyepics drivers (in a client process of their own: libca reads its
environment once per process)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import pytest

from tango_devices.drivers.epics_ca import LoopbackRepeater
from tests.helpers import wait_until
from tests.system.sim_helpers import (
    EpicsCallError,
    ioc_address,
    ioc_config,
    running_epics_client,
    running_simulator,
)

pytestmark = pytest.mark.system

GAUGE = "BL01:VAC:GAUGE1"
VALVE = "BL01:VAC:VALVE1"
MOTOR = "BL01:OPT:MIR:PITCH"
STEPS_PER_MRAD = 10000  # 1 / MRES


@pytest.fixture
def sim(tmp_path):
    with running_simulator(tmp_path, ioc_config()) as process:
        yield process


@pytest.fixture
def client(sim, tmp_path):
    with running_epics_client(tmp_path, ioc_address(sim)) as epics:
        yield epics
    noise = epics.stderr()
    assert "caRepeater" not in noise, noise
    assert "Warning" not in noise, noise


def connected(client, name: str) -> str:
    """connect(), again while it times out (its channels keep searching; on a
    loaded machine the IOC's answer can take more than the driver's 1 s):
    the identity it returns."""

    def attempt():
        try:
            return client.call(name, "connect")
        except EpicsCallError as exc:
            if "did not connect within" not in str(exc):
                raise
            return None

    return wait_until(attempt, 20, f"{name} connected to the IOC")


@pytest.fixture
def gauge(client):
    client.new("gauge", "VacuumGauge", GAUGE)
    assert connected(client, "gauge") == f"EPICS vacuum gauge {GAUGE}"
    return client


@pytest.fixture
def valve(client):
    client.new("valve", "VacuumValve", VALVE, timeout=1.0, travel_timeout=3.0)
    assert connected(client, "valve") == f"EPICS vacuum valve {VALVE}"
    return client


@pytest.fixture
def motor(client):
    client.new("motor", "EpicsMotorRecord", f"ca://{MOTOR}", timeout=1.0)
    assert connected(client, "motor") == f"EPICS motor record {MOTOR}"
    return client


def position_status(client) -> tuple[int, dict]:
    steps, status = client.call("motor", "read_position_status", 1)
    return steps, status


def until(read, accept, timeout: float, what: str):
    """Poll ``read()`` until ``accept(value)``; returns that value."""
    found = []

    def check():
        value = read()
        if accept(value):
            found.append(value)
            return True
        return False

    wait_until(check, timeout, what, interval=0.02)
    return found[-1]


def wait_stopped(client, timeout: float = 15.0) -> tuple[int, dict]:
    return until(lambda: position_status(client), lambda ps: not ps[1]["moving"], timeout, "a stop")


def rejected(code: int):
    return pytest.raises(EpicsCallError, match=f"ControllerRejected: .*\\(error {code}\\)")


# ------------------------------------------------------------------ gauge
def test_state_file_and_status(sim):
    assert sim.state["controllers"]["ioc1"]["kind"] == "epics_ioc"
    assert sim.state["controllers"]["ioc1"]["port"] > 0
    status = sim.control({"op": "status"})["controllers"]["ioc1"]
    assert status["listening"] is True and status["faults"] == []
    assert status["gauges"]["gauge1"]["pv"] == GAUGE
    assert status["valves"]["valve1"]["state"] == "OPEN"
    assert status["motors"]["mirror_pitch"]["position"] == 3.0


def test_gauge_pressure_and_alarm_follow_a_leak(gauge, sim):
    pressure = gauge.call("gauge", "pressure")
    assert 1.8e-8 < pressure < 2.2e-8  # base pressure, 2 % noise
    assert gauge.call("gauge", "alarm") == [0, "NO_ALARM"]
    assert gauge.call("gauge", "leak_detected") is False
    gauge.request(op="listen", name="gauge")
    wait_until(lambda: gauge.request(op="count", name="gauge") >= 2, 5, "noisy readings")

    sim.fault("vacuum_leak", controller="ioc1", gauge="gauge1")
    alarm = until(lambda: gauge.call("gauge", "alarm"), lambda a: a[0] == 2, 5, "a MAJOR alarm")
    assert alarm == [2, "HIHI"]
    assert gauge.call("gauge", "pressure") >= 1e-5
    assert gauge.call("gauge", "alarm_text") == "MAJOR HIHI"
    assert gauge.call("gauge", "leak_detected") is True

    sim.clear("ioc1")
    wait_until(lambda: gauge.call("gauge", "alarm")[0] == 0, 10, "the alarm to clear")
    assert gauge.call("gauge", "pressure") < 1e-6
    assert gauge.call("gauge", "leak_detected") is False


# ------------------------------------------------------------------ valve
def test_valve_travels_then_reports(valve):
    assert valve.call("valve", "state") == "OPEN"
    started = time.monotonic()
    valve.call("valve", "close_valve")
    seen = []

    def closed():
        seen.append(valve.call("valve", "state"))
        return seen[-1] == "CLOSED"

    wait_until(closed, 5, "the valve to close", interval=0.02)
    assert "MOVING" in seen and seen.index("MOVING") < seen.index("CLOSED")
    assert time.monotonic() - started >= 0.4  # travel time 0.5 s
    valve.call("valve", "open_valve", True)  # waits until OPEN
    assert valve.call("valve", "state") == "OPEN"


def test_stuck_valve(valve, sim):
    sim.fault("valve_stuck", controller="ioc1", valve="valve1")
    with pytest.raises(EpicsCallError, match="STUCK: it did not reach CLOSED"):
        valve.call("valve", "close_valve", True)
    assert valve.call("valve", "state") == "STUCK"
    assert sim.control({"op": "status"})["controllers"]["ioc1"]["valves"]["valve1"]["open"] == 1
    sim.clear("ioc1")
    wait_until(lambda: valve.call("valve", "state") == "CLOSED", 5, "the freed valve to close")


# ------------------------------------------------------------------ motor
def test_motor_reads_and_moves(motor):
    steps, status = position_status(motor)
    assert steps == 30000
    assert status["powered"] and not status["moving"] and not status["fault"]
    assert not status["homed"] and not status["home_switch"] and not status["interlock"]
    assert motor.call("motor", "read_velocity", 1) == 5000  # 0.5 mrad/s
    assert motor.call("motor", "read_acceleration_time", 1) == pytest.approx(0.2)
    motor.call("motor", "write_velocity", 1, 10000)
    assert motor.call("motor", "read_velocity", 1) == 10000
    started = time.monotonic()
    motor.call("motor", "move", 1, 32000)
    steps, status = position_status(motor)
    assert status["moving"] and 30000 <= steps < 32000  # the command shows at once
    steps, status = wait_stopped(motor)
    elapsed = time.monotonic() - started
    assert steps == 32000 and not status["moving"]
    assert 0.3 < elapsed < 2.0  # 0.2 mrad at 1 mrad/s plus a 0.2 s ramp: 0.4 s
    assert motor.call("motor", "read_position", 1) == 32000
    with rejected(2):
        motor.call("motor", "write_velocity", 1, 30000)  # above VMAX (2 mrad/s)
    with rejected(1):
        motor.call("motor", "set_position", 1, 0)


def test_motor_stop(motor):
    motor.call("motor", "move", 1, 70000)  # 4 mrad at 0.5 mrad/s: 8 s
    wait_until(lambda: position_status(motor)[0] > 31000, 5, "motion")
    motor.call("motor", "stop", 1)
    steps, status = wait_stopped(motor, timeout=2.0)
    assert 31000 < steps < 70000
    assert float(motor.call("motor", "request", "VAL")) == pytest.approx(steps / STEPS_PER_MRAD)


def test_motor_limit_switches(motor):
    motor.call("motor", "write_velocity", 1, 20000)
    motor.call("motor", "move", 1, 90000)  # beyond the high switch at 8 mrad
    steps, status = wait_stopped(motor)
    assert steps == 80000 and status["high_limit"] and not status["low_limit"]
    with rejected(6):
        motor.call("motor", "move", 1, 85000)
    motor.call("motor", "move", 1, 75000)
    steps, status = wait_stopped(motor)
    assert steps == 75000 and not status["high_limit"]


def test_motor_home(motor):
    motor.call("motor", "move", 1, 33000)
    wait_stopped(motor)
    motor.call("motor", "home", 1, -1)
    steps, status = position_status(motor)
    assert status["homing"] and status["moving"] and not status["homed"]
    steps, status = wait_stopped(motor)
    assert steps == 30000 and status["homed"] and not status["homing"]


def test_motor_power_and_problem(motor, sim):
    motor.call("motor", "power", 1, False)
    assert motor.call("motor", "read_power", 1) is False
    assert position_status(motor)[1]["powered"] is False
    with rejected(4):
        motor.call("motor", "move", 1, 31000)
    motor.call("motor", "power", 1, True)

    sim.fault("motor_problem", controller="ioc1", motor="mirror_pitch")
    status = until(lambda: position_status(motor)[1], lambda s: s["fault"], 5, "the fault")
    assert not status["moving"]
    fault = motor.call("motor", "read_fault", 1)
    assert "MSTA 0x" in fault and "alarm STATE MAJOR" in fault
    with rejected(7):
        motor.call("motor", "move", 1, 31000)
    sim.clear("ioc1")
    wait_until(lambda: not position_status(motor)[1]["fault"], 5, "the fault to clear")
    assert motor.call("motor", "read_fault", 1) is None


# --------------------------------------------------------------- ioc_down
def test_ioc_down_then_drivers_reconnect_by_themselves(gauge, valve, motor, sim):
    client = gauge
    sim.fault("ioc_down", controller="ioc1")
    assert sim.control({"op": "status"})["controllers"]["ioc1"]["listening"] is False
    wait_until(lambda: client.attr("gauge", "connected") is False, 5, "the gauge to disconnect")
    wait_until(lambda: client.attr("motor", "connected") is False, 5, "the motor to disconnect")
    assert client.attr("valve", "connected") is False
    with pytest.raises(EpicsCallError, match="LinkError: .*PRES is disconnected"):
        client.call("gauge", "pressure")
    with pytest.raises(EpicsCallError, match="LinkError"):
        client.call("motor", "read_position_status", 1)
    with pytest.raises(EpicsCallError, match="LinkError"):
        client.call("valve", "open_valve")

    sim.clear("ioc1")
    started = time.monotonic()
    for name in ("gauge", "valve", "motor"):  # nobody calls connect(): they come back alone
        wait_until(lambda n=name: client.attr(n, "connected"), 8, f"the {name} to reconnect")
    assert time.monotonic() - started < 8
    assert 1.8e-8 < client.call("gauge", "pressure") < 2.2e-8
    assert client.call("valve", "state") == "OPEN"
    assert position_status(client)[0] == 30000
    assert sim.control({"op": "status"})["controllers"]["ioc1"]["clients"] == 1


def test_channels_recreated_from_two_threads_at_once_still_connect(client):
    """A device whose IOC answers late connects, times out and closes its
    channels in its poll thread while their re-search re-creates them in a
    timer thread. Done 300 times as fast as it goes, the process must neither
    crash nor keep a channel that never connects (CI 2026-12-06: a restarted
    gauge's STAT channel stayed unconnected for 30 s; this churn crashed the
    client, or left it with a dead channel, every time before the fix)."""
    client.new("gauge", "VacuumGauge", GAUGE)
    timed_out = client.request(op="churn", name="gauge", cycles=300, period=0.002)
    assert timed_out > 0  # it did go through the failing path
    assert connected(client, "gauge") == f"EPICS vacuum gauge {GAUGE}"
    assert 1e-10 < client.call("gauge", "pressure") < 1.0
    assert client.call("gauge", "leak_detected") is False


def test_connect_fails_naming_the_pvs(client):
    client.new("nogauge", "VacuumGauge", "BL01:VAC:NOPE", timeout=0.3)
    with pytest.raises(EpicsCallError, match="LinkError: BL01:VAC:NOPE:PRES, BL01:VAC:NOPE:STAT"):
        client.call("nogauge", "connect")
    assert client.attr("nogauge", "connected") is False


# --------------------------------------------------------------- repeater
def test_loopback_repeater_confirms_and_forwards():
    """The repeater the drivers start (so that libca spawns no caRepeater):
    it confirms a registration and forwards a beacon to the registered client."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repeater = LoopbackRepeater.start(port)
    assert repeater is not None
    header = struct.Struct(">HHHHII")
    with (
        contextlib.closing(repeater),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ioc,
    ):
        assert LoopbackRepeater.start(port) is None  # taken: a second one stays out
        client.bind(("127.0.0.1", 0))
        client.settimeout(5)
        client.sendto(header.pack(24, 0, 0, 0, 0, 0), ("127.0.0.1", port))  # REPEATER_REGISTER
        confirm = header.unpack(client.recv(64))
        assert confirm[0] == 17 and confirm[5] == 0x7F000001  # REPEATER_CONFIRM, 127.0.0.1
        beacon = header.pack(13, 0, 5064, 7, 1, 0x7F000001)
        ioc.sendto(beacon, ("127.0.0.1", port))
        assert client.recv(64) == beacon
        assert repeater.clients == 1
