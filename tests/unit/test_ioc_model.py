"""The virtual EPICS IOC's model (ioc.py) with a fake clock: no network."""

from __future__ import annotations

import asyncio
import copy
import math
import random
import re
import statistics

import pytest
from caproto import AccessRights, AlarmSeverity, AlarmStatus

from tango_devices.simulators import ioc
from tango_devices.simulators.physics import BeamlinePhysics
from tango_devices.simulators.server import CONTROLLER_KINDS, PORT_KINDS, ConfigError, parse_config
from tests.unit.conftest import FakeClock

GAUGE = {
    "pv": "VAC:GAUGE1",
    "base_pressure": 2e-8,
    "leak_pressure": 1e-3,
    "time_constant": 0.5,
    "high": 1e-6,
    "hihi": 1e-5,
    "noise": 0.0,
}
VALVE = {"pv": "VAC:VALVE1", "travel_time": 0.5, "open": True}
MOTOR = {
    "pv": "OPT:MIR:PITCH",
    "egu": "mrad",
    "mres": 0.0001,
    "position": 3.0,
    "low_switch": -1.0,
    "high_switch": 8.0,
    "home": 3.0,
    "velocity": 0.5,
    "max_velocity": 2.0,
    "acceleration": 0.2,
}
CONFIG = {
    "kind": "epics_ioc",
    "port": 0,
    "prefix": "BL01:",
    "gauges": {"gauge1": GAUGE},
    "valves": {"valve1": VALVE},
    "motors": {"mirror_pitch": MOTOR},
}


def config(**changes):
    cfg = copy.deepcopy(CONFIG)
    cfg.update(changes)
    return cfg


@pytest.fixture
def controller(clock):
    return ioc.IocController("ioc1", CONFIG, clock, seed=1)


def motor_model(clock, **changes):
    cfg = ioc.MotorConfig.from_dict({**MOTOR, **changes}, "motors.m.")
    return ioc.MotorRecordModel("m", cfg, clock())


def run_until_stopped(motor, clock, step=0.01, limit=60.0):
    end = clock.t + limit
    while motor.moving:
        assert clock.t < end, "still moving"
        motor.update(clock.advance(step))


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefix": "BL 01"}, "prefix: must be letters"),
        ({"gauges": {"g": {**GAUGE, "hihi": 1e-7}}}, "gauges.g.hihi: must be above high (1e-06)"),
        ({"gauges": {"g": {**GAUGE, "pv": "A.B"}}}, "gauges.g.pv: must be a record name"),
        (
            {"gauges": {"g": {**GAUGE, "leak_pressure": 1e-9}}},
            "gauges.g.leak_pressure: must be above",
        ),
        (
            {"gauges": {"g": {k: v for k, v in GAUGE.items() if k != "high"}}},
            "gauges.g.high: missing",
        ),
        ({"gauges": {"g": {**GAUGE, "colour": 1}}}, "gauges.g.colour: unknown key"),
        ({"valves": {"v": {**VALVE, "travel_time": 0}}}, "valves.v.travel_time: must be above 0"),
        ({"valves": {"v": {**VALVE, "open": "yes"}}}, "valves.v.open: must be true or false"),
        ({"motors": {"m": {**MOTOR, "position": 9.0}}}, "motors.m.position: must lie between"),
        ({"motors": {"m": {**MOTOR, "velocity": 3.0}}}, "motors.m.velocity: must not exceed"),
        ({"motors": {"m": {**MOTOR, "mres": -1}}}, "motors.m.mres: must be above 0"),
        ({"motors": {"m": {**MOTOR, "acceleration": 20}}}, "motors.m.acceleration: must be"),
        ({"motors": {"2m": MOTOR}}, "motors.2m: a name starts with a letter"),
        (
            {"valves": {"v": {**VALVE, "pv": "VAC:GAUGE1"}}},
            "valves.v.pv: BL01:VAC:GAUGE1 is already",
        ),
        ({"gauges": {}, "valves": {}, "motors": {}}, "gauges: an IOC needs at least one"),
        ({"pumps": {}}, "pumps: unknown key"),
    ],
)
def test_config_errors_name_the_key(clock, changes, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        ioc.IocController("ioc1", config(**changes), clock)


def test_registered_with_the_simulator_and_errors_carry_the_path():
    assert CONTROLLER_KINDS["epics_ioc"] is ioc.make_controller
    assert PORT_KINDS["epics_ioc"] is ioc.IocPort
    good = parse_config({"controllers": {"ioc1": config()}}, auto_ports=True)
    assert good.controllers["ioc1"].kind == "epics_ioc"
    assert good.controllers["ioc1"].port == 0
    bad = config(gauges={"gauge1": {**GAUGE, "hihi": 0}})
    with pytest.raises(ConfigError, match=r"^controllers\.ioc1\.gauges\.gauge1\.hihi: must be"):
        parse_config({"controllers": {"ioc1": bad}})


def test_physics_sources(clock):
    physics = BeamlinePhysics(
        {
            "inputs": {
                "pressure": {"source": "ioc1/pressure"},
                "mirror_pitch": {"source": "ioc1/mirror_pitch"},
                "shutter_open": {"source": "ioc1/valve1/open"},
            }
        }
    )
    controller = ioc.make_controller("ioc1", CONFIG, clock, physics)
    assert physics.missing_sources() == []
    assert physics.value("pressure") == pytest.approx(2e-8)
    assert physics.value("mirror_pitch") == 3.0
    assert physics.value("shutter_open") == 1.0
    controller.motors["mirror_pitch"].move_user(3.5, clock())
    clock.advance(0.3)
    assert 3.0 < physics.value("mirror_pitch") < 3.5
    clock.advance(5)
    assert physics.value("mirror_pitch") == pytest.approx(3.5)
    controller.valves["valve1"].command(False, clock())
    clock.advance(0.25)
    assert physics.value("shutter_open") == pytest.approx(0.5)


# ------------------------------------------------------------------- gauge
def test_gauge_leak_rises_and_pumps_down(controller, clock):
    gauge = controller.gauges["gauge1"]
    assert gauge.pressure(clock()) == pytest.approx(2e-8)
    assert gauge.alarm(gauge.reading(clock())) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
    controller.inject_fault("vacuum_leak", {"gauge": "gauge1"})
    assert controller.active_faults() == ["vacuum leak on gauge1"]
    t0 = clock()
    # first-order in log10(p): after one time constant 63 % of the way (in decades)
    clock.advance(0.5)
    expected = 10 ** (math.log10(1e-3) + (math.log10(2e-8) - math.log10(1e-3)) * math.exp(-1))
    assert gauge.pressure(clock()) == pytest.approx(expected)
    assert gauge.alarm(gauge.pressure(clock())) == (AlarmStatus.HIHI, AlarmSeverity.MAJOR_ALARM)
    clock.t = t0 + 0.25
    assert 1e-6 <= gauge.pressure(clock()) < 1e-5
    assert gauge.alarm(gauge.pressure(clock())) == (AlarmStatus.HIGH, AlarmSeverity.MINOR_ALARM)
    clock.t = t0 + 5.0
    assert gauge.pressure(clock()) == pytest.approx(1e-3, rel=1e-3)
    controller.clear_faults()
    assert controller.active_faults() == []
    clock.advance(0.5)
    assert 1e-6 < gauge.pressure(clock()) < 1e-3
    clock.advance(5.0)
    assert gauge.pressure(clock()) == pytest.approx(2e-8, rel=1e-3)
    assert gauge.alarm(gauge.pressure(clock()))[1] == AlarmSeverity.NO_ALARM


def test_gauge_noise_is_about_two_percent_and_refreshed_at_5_hz(clock):
    cfg = ioc.GaugeConfig.from_dict({**GAUGE, "noise": 0.02}, "gauges.g.")
    gauge = ioc.GaugeModel("g", cfg, clock(), random.Random(3))
    first = gauge.reading(clock())
    assert gauge.reading(clock.advance(ioc.GAUGE_SAMPLE_PERIOD / 2)) == first
    samples = []
    for _ in range(400):
        samples.append(gauge.reading(clock.advance(ioc.GAUGE_SAMPLE_PERIOD)) / 2e-8 - 1)
    assert abs(statistics.mean(samples)) < 0.005
    assert 0.015 < statistics.stdev(samples) < 0.025


# ------------------------------------------------------------------- valve
def test_valve_travels(controller, clock):
    valve = controller.valves["valve1"]
    assert (valve.state(clock()), valve.open_fraction(clock())) == ("OPEN", 1.0)
    valve.command(False, clock())
    clock.advance(0.2)
    assert valve.state(clock()) == "MOVING"
    assert valve.open_fraction(clock()) == pytest.approx(0.6)
    clock.advance(0.3)
    assert (valve.state(clock()), valve.open_fraction(clock())) == ("CLOSED", 0.0)
    valve.command(True, clock())
    clock.advance(0.1)
    valve.command(False, clock())  # reverses from 0.2 open
    clock.advance(0.1)
    assert (valve.state(clock()), valve.open_fraction(clock())) == ("CLOSED", 0.0)


def test_stuck_valve_ignores_commands_until_clear(controller, clock):
    valve = controller.valves["valve1"]
    controller.inject_fault("valve_stuck", {})
    assert valve.state(clock()) == "OPEN"  # stuck where it is: nothing shows yet
    valve.command(False, clock())
    clock.advance(0.4)
    assert (valve.state(clock()), valve.open_fraction(clock())) == ("MOVING", 1.0)
    clock.advance(0.11)
    assert (valve.state(clock()), valve.open_fraction(clock())) == ("STUCK", 1.0)
    clock.advance(10)
    assert valve.state(clock()) == "STUCK"
    assert controller.active_faults() == ["valve valve1 stuck"]
    controller.clear_faults()
    assert valve.state(clock()) == "MOVING"  # completes the last command
    clock.advance(0.5)
    assert (valve.state(clock()), valve.open_fraction(clock())) == ("CLOSED", 0.0)


def test_valve_stuck_mid_travel(controller, clock):
    valve = controller.valves["valve1"]
    valve.command(False, clock())
    clock.advance(0.1)
    controller.inject_fault("valve_stuck", {"valve": "valve1"})
    clock.advance(0.3)
    assert (valve.state(clock()), valve.open_fraction(clock())) == ("MOVING", pytest.approx(0.8))
    clock.advance(0.11)
    assert valve.state(clock()) == "STUCK"


# ------------------------------------------------------------------- motor
def test_trapezoidal_move_and_readbacks(clock):
    motor = motor_model(clock)
    assert (motor.rbv, motor.val, motor.moving) == (3.0, 3.0, False)
    assert motor.msta == ioc.MSTA_DIRECTION | ioc.MSTA_DONE
    motor.move_user(3.2, clock())  # 0.2 mrad at 0.5 mrad/s, 0.2 s ramps: 0.6 s
    assert motor.val == 3.2 and motor.moving
    motor.update(clock.advance(0.1))  # half-way up the ramp: v*t^2/(2*acct)
    assert motor.dial == pytest.approx(3.0 + 0.5 * 0.1**2 / (2 * 0.2))
    assert motor.drbv == pytest.approx(round(motor.dial / 1e-4) * 1e-4)
    assert motor.msta == ioc.MSTA_DIRECTION | ioc.MSTA_MOVING
    motor.update(clock.advance(0.49))
    assert motor.moving
    motor.update(clock.advance(0.02))
    assert not motor.moving
    assert (motor.rbv, motor.val, motor.drbv) == (pytest.approx(3.2),) * 3
    motor.move_dial(2.0, clock())
    assert motor.msta & ioc.MSTA_DIRECTION == 0
    run_until_stopped(motor, clock)
    assert motor.rbv == pytest.approx(2.0)


def test_rbv_is_rounded_to_mres(clock):
    motor = motor_model(clock, mres=0.01, position=1.234)
    assert motor.drbv == pytest.approx(1.23)
    assert motor.dial == 1.234


def test_limit_switch_stops_the_motor(clock):
    motor = motor_model(clock, velocity=2.0)
    motor.move_user(20.0, clock())
    run_until_stopped(motor, clock)
    assert motor.dial == 8.0 and motor.high_limit and not motor.low_limit
    assert motor.val == 8.0  # VAL follows RBV once stopped
    assert motor.msta & ioc.MSTA_PLUS_LS and motor.msta & ioc.MSTA_DONE
    assert motor.alarm() == (AlarmStatus.HWLIMIT, AlarmSeverity.MINOR_ALARM)
    motor.move_user(9.0, clock())  # further into the limit: nothing moves
    assert not motor.moving and motor.val == 8.0
    motor.move_user(7.0, clock())  # away from it
    assert motor.moving
    run_until_stopped(motor, clock)
    assert motor.dial == pytest.approx(7.0) and not motor.high_limit
    motor.move_user(-5.0, clock())
    run_until_stopped(motor, clock)
    assert motor.dial == -1.0 and motor.low_limit
    assert motor.msta & ioc.MSTA_MINUS_LS


def test_stop_decelerates_and_val_follows(clock):
    motor = motor_model(clock)
    motor.move_user(6.0, clock())
    motor.update(clock.advance(1.0))
    at_stop = motor.dial
    motor.stop(clock())
    assert motor.moving  # decelerating over the acceleration time
    motor.update(clock.advance(0.25))
    assert not motor.moving
    assert motor.dial == pytest.approx(at_stop + 0.5 * 0.2 / 2)
    assert motor.val == pytest.approx(motor.dial)


def test_home_moves_to_home_and_sets_homed(clock):
    motor = motor_model(clock, position=5.0)
    assert not motor.homed
    motor.home(-1, clock())
    assert motor.home_direction == -1 and motor.moving
    motor.update(clock.advance(1.0))
    assert motor.home_direction == -1
    run_until_stopped(motor, clock)
    assert motor.dial == 3.0 and motor.homed and motor.home_direction == 0
    assert motor.msta & ioc.MSTA_HOMED


def test_stopped_home_does_not_home(clock):
    motor = motor_model(clock, position=5.0)
    motor.home(1, clock())
    motor.update(clock.advance(0.5))
    motor.stop(clock())
    run_until_stopped(motor, clock)
    assert not motor.homed and motor.dial > 3.0


def test_new_target_while_moving_stops_then_goes(clock):
    motor = motor_model(clock)
    motor.move_user(6.0, clock())
    motor.update(clock.advance(1.0))
    motor.move_user(2.0, clock())
    assert motor.val == 2.0
    motor.update(clock.advance(0.1))
    assert motor.direction == 1  # still decelerating upwards
    run_until_stopped(motor, clock)
    assert motor.dial == pytest.approx(2.0) and motor.direction == -1


def test_amplifier_off_halts_and_refuses(clock):
    motor = motor_model(clock)
    motor.move_user(6.0, clock())
    motor.update(clock.advance(1.0))
    motor.set_enabled(False, clock())
    assert not motor.moving and motor.val == motor.dial
    here = motor.dial
    motor.move_user(4.0, clock())
    assert not motor.moving and motor.val == here
    motor.set_enabled(True, clock())
    motor.move_user(4.0, clock())
    assert motor.moving


def test_motor_problem_fault(controller, clock):
    motor = controller.motors["mirror_pitch"]
    motor.move_user(5.0, clock())
    clock.advance(0.5)
    controller.inject_fault("motor_problem", {"motor": "mirror_pitch"})
    assert not motor.moving and motor.msta & ioc.MSTA_PROBLEM
    assert motor.alarm() == (AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM)
    motor.move_user(4.0, clock())
    assert not motor.moving
    assert controller.active_faults() == ["problem on motor mirror_pitch"]
    controller.clear_faults()
    assert not motor.msta & ioc.MSTA_PROBLEM
    motor.move_user(4.0, clock())
    assert motor.moving


def test_spmg_stop_pause_move_go(clock):
    motor = motor_model(clock)
    motor.set_spmg(ioc.SPMG_STOP, clock())
    motor.move_user(4.0, clock())
    assert not motor.moving and motor.val == 3.0  # Stop: no motion, VAL = RBV
    motor.set_spmg(ioc.SPMG_PAUSE, clock())
    motor.move_user(4.0, clock())
    assert not motor.moving and motor.val == 4.0  # Pause: the target waits
    motor.set_spmg(ioc.SPMG_MOVE, clock())
    assert motor.moving
    run_until_stopped(motor, clock)
    assert motor.dial == pytest.approx(4.0) and motor.spmg == ioc.SPMG_PAUSE
    motor.set_spmg(ioc.SPMG_GO, clock())
    motor.move_user(5.0, clock())
    motor.update(clock.advance(0.5))
    motor.set_spmg(ioc.SPMG_STOP, clock())
    run_until_stopped(motor, clock)
    assert motor.dial < 5.0 and motor.val == pytest.approx(motor.dial)


def test_velocity_and_acceleration_limits(clock):
    motor = motor_model(clock)
    motor.set_velocity(5.0)
    assert motor.velocity == 2.0  # VMAX
    motor.set_velocity(-1.0)
    assert motor.velocity == 2.0  # invalid: ignored
    motor.set_acceleration(0.0)
    assert motor.acceleration == ioc.MIN_ACCL
    motor.set_acceleration(99)
    assert motor.acceleration == ioc.MAX_ACCL


def test_user_offset(clock):
    motor = motor_model(clock)
    motor.set_offset(1.0, clock())
    assert (motor.rbv, motor.val, motor.drbv) == (4.0, 4.0, 3.0)
    motor.move_user(5.0, clock())
    run_until_stopped(motor, clock)
    assert motor.dial == pytest.approx(4.0) and motor.rbv == pytest.approx(5.0)


# -------------------------------------------------------------- controller
def test_fault_selection_errors(controller):
    with pytest.raises(ValueError, match="unknown gauge 'g9': valid gauges are gauge1"):
        controller.inject_fault("vacuum_leak", {"gauge": "g9"})
    with pytest.raises(ValueError, match="valid kinds are vacuum_leak, valve_stuck, motor_problem"):
        controller.inject_fault("fire", {})
    only_gauges = ioc.IocController("ioc2", {"gauges": {"g": GAUGE}}, FakeClock())
    with pytest.raises(ValueError, match="IOC ioc2 has no valves"):
        only_gauges.inject_fault("valve_stuck", {})


def test_status(controller, clock):
    controller.motors["mirror_pitch"].move_user(4.0, clock())
    clock.advance(0.1)
    status = controller.status()
    assert status["gauges"]["gauge1"] == {
        "pv": "BL01:VAC:GAUGE1",
        "pressure": pytest.approx(2e-8),
        "alarm": "NO_ALARM",
        "leak": False,
    }
    assert status["valves"]["valve1"]["state"] == "OPEN"
    motor = status["motors"]["mirror_pitch"]
    assert motor["pv"] == "BL01:OPT:MIR:PITCH" and motor["moving"] is True
    assert 3.0 < motor["position"] < 4.0 and motor["target"] == 4.0
    assert motor["msta"] == "0x0401" and motor["spmg"] == "Go"


# ---------------------------------------------------------------- database
def test_database_pvs_puts_and_sync(controller, clock):
    async def scenario():
        db = ioc.IocDatabase(controller)
        pvdb = db.pvdb
        base = "BL01:OPT:MIR:PITCH"
        fields = ["VAL", "DVAL", "RBV", "DRBV", "DMOV", "MOVN", "STOP", "HLS", "LLS", "VELO"]
        fields += ["VMAX", "ACCL", "MRES", "EGU", "OFF", "CNEN", "MSTA", "HOMF", "HOMR", "SPMG"]
        expected = {f"{base}.{f}" for f in fields} | {base}
        expected |= {"BL01:VAC:GAUGE1:PRES", "BL01:VAC:GAUGE1:STAT"}
        expected |= {"BL01:VAC:VALVE1:CMD", "BL01:VAC:VALVE1:STATE"}
        assert set(pvdb) == expected
        assert pvdb[base] is pvdb[f"{base}.VAL"]
        assert pvdb[f"{base}.EGU"].value == "mrad"
        # read-only and writable fields, as a client sees them
        assert pvdb[f"{base}.RBV"].check_access("h", "u") == AccessRights.READ
        assert pvdb[f"{base}.VAL"].check_access("h", "u") == AccessRights.READ | AccessRights.WRITE
        # a client write goes to the model, and the PVs follow at once
        await pvdb[f"{base}.VAL"].write(3.5)
        assert pvdb[f"{base}.DMOV"].value == 0 and pvdb[f"{base}.MOVN"].value == 1
        assert pvdb[f"{base}.VAL"].value == 3.5 and pvdb[f"{base}.DVAL"].value == 3.5
        clock.advance(5)
        await db.sync()
        assert pvdb[f"{base}.RBV"].value == pytest.approx(3.5)
        assert pvdb[f"{base}.DMOV"].value == 1
        await pvdb[f"{base}.CNEN"].write("Disable")
        assert pvdb[f"{base}.CNEN"].value == "Disable"
        assert not controller.motors["mirror_pitch"].enabled
        # the valve command and state
        await pvdb["BL01:VAC:VALVE1:CMD"].write(0)
        assert pvdb["BL01:VAC:VALVE1:STATE"].value == "MOVING"
        clock.advance(1)
        await db.sync()
        assert pvdb["BL01:VAC:VALVE1:STATE"].value == "CLOSED"
        assert pvdb["BL01:VAC:VALVE1:CMD"].value == "CLOSE"
        # the gauge's alarm follows its reading
        pres = pvdb["BL01:VAC:GAUGE1:PRES"]
        assert (pres.upper_warning_limit, pres.upper_alarm_limit) == (1e-6, 1e-5)
        controller.inject_fault("vacuum_leak", {})
        clock.advance(2)
        await db.sync()
        assert pres.value > 1e-5
        assert (pres.alarm.status, pres.alarm.severity) == (
            AlarmStatus.HIHI,
            AlarmSeverity.MAJOR_ALARM,
        )
        assert pvdb["BL01:VAC:GAUGE1:STAT"].value == "LEAK"
        # a motor problem shows on every field of the record
        controller.inject_fault("motor_problem", {})
        await db.sync()
        assert pvdb[f"{base}.DMOV"].alarm.severity == AlarmSeverity.MAJOR_ALARM
        assert pvdb[f"{base}.MSTA"].value & ioc.MSTA_PROBLEM

    asyncio.run(scenario())
