"""The Motor device on the running demo beamline: real database, real Starter,
real server processes, the virtual motion controller over TCP."""

from __future__ import annotations

import math

import pytest
import tango

from tests.helpers import wait_until
from tests.system.conftest import Events, wait_state

pytestmark = pytest.mark.system

MOTORS = ["slit_h", "slit_v", "sample_x", "sample_y", "det_z"]


def all_recovered(beamline, timeout=15.0):
    """After a controller-wide fault: every motor has left FAULT again."""
    for name in MOTORS:
        p = beamline.proxy(f"bl01/mot/{name}")
        wait_until(
            lambda p=p: p.state() != tango.DevState.FAULT,
            timeout,
            f"{name} to recover ({p.status()})",
        )


def settle(proxy, timeout=20.0):
    wait_until(
        lambda: proxy.state() != tango.DevState.MOVING,
        timeout,
        f"{proxy.dev_name()} to stop moving",
    )


def test_every_motor_answers_on(beamline):
    for name in MOTORS:
        p = beamline.proxy(f"bl01/mot/{name}")
        assert p.state() == tango.DevState.ON, p.status()
        assert p.status().startswith("Ready (SMC-5 1.0, axis ")


def test_move_sends_state_and_position_events(beamline):
    m = beamline.proxy("bl01/mot/sample_x")
    states = Events(m, "State")
    positions = Events(m, "Position")
    try:
        positions.wait_live()  # and so the State subscription made before it
        start = m.Position
        target = 3.0 if abs(start - 3.0) > 1 else -3.0
        m.Position = target
        assert m.state() == tango.DevState.MOVING  # observed before the write returned
        states.wait_for(
            lambda it: [v.value for v in it][-2:] == [tango.DevState.MOVING, tango.DevState.ON],
            15,
            "MOVING then ON",
        )
        # The final position is in the cache as soon as the state is ON.
        assert m.Position == pytest.approx(target, abs=0.001)
        assert m.DialPosition == pytest.approx(target - m.Offset, abs=0.001)
        positions.wait_for(
            lambda it: (
                it
                and it[-1].value == pytest.approx(target, abs=0.001)
                and it[-1].quality == tango.AttrQuality.ATTR_VALID
            ),
            5,
            "final Position event",
        )
        moving = [v for v in positions.items if v.quality == tango.AttrQuality.ATTR_CHANGING]
        assert len(moving) >= 3, "a 3 mm move at 5 mm/s should send several Position events"
        stamps = [v.time.totime() for v in moving]
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert min(gaps) >= 0.08, f"Position events while moving must be at most ~10 Hz: {gaps}"
    finally:
        states.close()
        positions.close()


def test_write_outside_soft_limits_names_the_limit_and_moves_nothing(beamline):
    m = beamline.proxy("bl01/mot/sample_y")
    before = m.Position
    with pytest.raises(tango.DevFailed) as info:
        m.Position = 30.0
    err = info.value.args[0]
    assert err.reason == "API_WAttrOutsideLimit"
    assert "above the maximum" in err.desc
    assert m.state() == tango.DevState.ON
    assert m.Position == pytest.approx(before)
    with pytest.raises(tango.DevFailed, match="below the minimum"):
        m.Position = -30.0


@pytest.mark.parametrize(
    "value,expected", [(math.nan, "NaN or INF"), (math.inf, "NaN or INF"), ("far", None)]
)
def test_bad_position_values_are_refused(beamline, value, expected):
    m = beamline.proxy("bl01/mot/sample_y")
    before = m.Position
    with pytest.raises((tango.DevFailed, TypeError, ValueError)) as info:
        m.write_attribute("Position", value)
    if expected:
        assert expected in str(info.value)
    assert m.state() == tango.DevState.ON
    assert m.Position == pytest.approx(before)


def test_bad_velocity_is_refused_and_leaves_it_unchanged(beamline):
    m = beamline.proxy("bl01/mot/slit_v")
    before = m.Velocity
    for bad in (-1.0, 0.0):
        with pytest.raises(tango.DevFailed) as info:
            m.Velocity = bad
        assert (
            "Velocity must be a positive number" in info.value.args[0].desc
            or "minimum" in info.value.args[0].desc
        )
    with pytest.raises(tango.DevFailed, match="above the maximum"):
        m.Velocity = 1000.0
    assert m.Velocity == pytest.approx(before)


def test_commands_in_the_wrong_state_are_refused_naming_the_state(beamline):
    m = beamline.proxy("bl01/mot/det_z")
    start = m.Position
    m.Position = start + 200 if start < 700 else start - 200
    try:
        # what this test is about is the refusals while MOVING: wait for it
        # (on a loaded machine the controller may report the move a poll later)
        wait_state(m, tango.DevState.MOVING, timeout=5.0)
        for action in (
            m.Home,
            lambda: m.SetPosition(1.0),
            m.Off,
            lambda: m.write_attribute("Position", 500.0),
        ):
            with pytest.raises(tango.DevFailed) as info:
                action()
            err = info.value.args[0]
            assert err.reason == "API_CommandNotAllowed"
            assert "not allowed in state MOVING" in err.desc
            assert "allowed in: " in err.desc
        assert m.state() == tango.DevState.MOVING
        m.Stop()
        wait_state(m, tango.DevState.ON)
    finally:
        settle(m)


def test_hardware_limit_switch_gives_alarm_and_only_moving_away(beamline):
    m = beamline.proxy("bl01/mot/sample_x")
    offset = m.Offset
    try:
        # Shift the user scale so that the soft limit (25) lies beyond the
        # hardware limit switch (dial 25.5).
        m.Offset = -1.0
        m.Position = 24.9
        wait_state(m, tango.DevState.ALARM, timeout=30)
        assert m.HighLimitSwitch is True
        assert m.LowLimitSwitch is False
        assert "High (positive) limit switch active" in m.status()
        assert m.DialPosition == pytest.approx(25.5, abs=0.002)
        with pytest.raises(tango.DevFailed, match="limit switch is active"):
            m.Position = 24.8
        m.Position = 20.0
        wait_state(m, tango.DevState.ON, timeout=30)
        assert m.HighLimitSwitch is False
    finally:
        settle(m, 30)
        m.Offset = offset
        m.Position = 0.0
        settle(m, 30)


def test_link_drop_faults_every_axis_and_recovers(beamline):
    motors = [beamline.proxy(f"bl01/mot/{n}") for n in MOTORS]
    beamline.sim({"op": "fault", "controller": "smc1", "kind": "drop"})
    try:
        for m in motors:
            wait_state(m, tango.DevState.FAULT)
            assert "No link to the motion controller" in m.status()
            assert "recovers by itself" in m.status()
        with pytest.raises(tango.DevFailed) as info:
            motors[2].Position = 1.0
        assert (
            "not allowed in state FAULT (No link to the motion controller"
            in info.value.args[0].desc
        )
        assert motors[2].read_attribute("Position").quality == tango.AttrQuality.ATTR_INVALID
    finally:
        beamline.sim({"op": "clear", "controller": "smc1"})
    for m in motors:
        wait_state(m, tango.DevState.ON, timeout=10)
    assert motors[2].read_attribute("Position").quality == tango.AttrQuality.ATTR_VALID


def test_garbage_on_the_line_is_a_fault_and_recovers(beamline):
    m = beamline.proxy("bl01/mot/slit_h")
    beamline.sim({"op": "fault", "controller": "smc1", "kind": "garbage"})
    try:
        wait_state(m, tango.DevState.FAULT)
        assert "Garbled reply from the motion controller" in m.status()
    finally:
        beamline.sim({"op": "clear", "controller": "smc1"})
    wait_state(m, tango.DevState.ON)
    all_recovered(beamline)


def test_stalled_controller_is_a_fault_and_recovers(beamline):
    m = beamline.proxy("bl01/mot/slit_h")
    beamline.sim({"op": "fault", "controller": "smc1", "kind": "stall"})
    try:
        wait_state(m, tango.DevState.FAULT)
        assert "no reply" in m.status()
    finally:
        beamline.sim({"op": "clear", "controller": "smc1"})
    wait_state(m, tango.DevState.ON)
    all_recovered(beamline)


def test_axis_fault_needs_reset(beamline):
    m = beamline.proxy("bl01/mot/sample_y")
    beamline.sim(
        {
            "op": "fault",
            "controller": "smc1",
            "kind": "axis_fault",
            "axis": 4,
            "text": "amplifier overtemperature",
        }
    )
    wait_until(
        lambda: "amplifier overtemperature" in m.status(), 10, "the axis fault in the Status"
    )
    assert m.state() == tango.DevState.FAULT
    beamline.sim({"op": "clear", "controller": "smc1"})
    assert m.state() == tango.DevState.FAULT  # latched until Reset
    m.Reset()
    wait_state(m, tango.DevState.ON)


def test_interlock_disables_and_power_off(beamline):
    m = beamline.proxy("bl01/mot/slit_v")
    beamline.sim({"op": "fault", "controller": "smc1", "kind": "interlock", "axis": 2})
    try:
        wait_state(m, tango.DevState.DISABLE)
        with pytest.raises(tango.DevFailed, match="not allowed in state DISABLE"):
            m.Position = 3.0
    finally:
        beamline.sim({"op": "clear", "controller": "smc1"})
    wait_state(m, tango.DevState.ON)
    m.Off()
    assert m.state() == tango.DevState.OFF
    assert "Run On" in m.status()
    m.On()
    assert m.state() == tango.DevState.ON


def test_home_search(beamline):
    m = beamline.proxy("bl01/mot/slit_h")
    m.Position = 5.0
    settle(m)
    m.Home()
    assert m.state() == tango.DevState.MOVING
    assert m.status().startswith("Homing")
    wait_state(m, tango.DevState.ON, timeout=20)
    assert m.Homed is True
    assert m.DialPosition == pytest.approx(0.0, abs=0.002)


def test_set_position_calibrates_and_survives_a_restart(beamline):
    m = beamline.proxy("bl01/mot/det_z")
    settle(m)
    dial = m.DialPosition
    try:
        m.SetPosition(dial + 12.5)
        assert m.Position == pytest.approx(dial + 12.5, abs=0.01)
        assert m.Offset == pytest.approx(12.5, abs=0.01)
        assert m.DialPosition == pytest.approx(dial)  # nothing moved
        # restart the server: the offset comes back from the database and the
        # position is re-read from the hardware
        beamline.cli("stop", "Motor/det_z")
        beamline.cli("start", "Motor/det_z")
        fresh = beamline.proxy("bl01/mot/det_z")
        wait_state(fresh, tango.DevState.ON)
        assert fresh.Offset == pytest.approx(12.5, abs=0.01)
        assert fresh.DialPosition == pytest.approx(dial)
        assert fresh.Position == pytest.approx(dial + 12.5, abs=0.01)
    finally:
        beamline.proxy("bl01/mot/det_z").Offset = 0.0


def test_position_reads_come_from_the_polling_cache(beamline):
    m = beamline.proxy("bl01/mot/slit_v")
    status = m.polling_status()
    assert any("Position" in s and "externally triggered" in s for s in status), status
    expected = m.DialPosition + m.Offset
    m.set_source(tango.DevSource.CACHE)
    cached = m.read_attribute("Position")
    assert cached.value == pytest.approx(expected, abs=1e-6), (
        f"cache holds {cached.value} ({cached.quality}, {cached.time}) for {expected} "
        f"(state {m.state()}: {m.status()})"
    )
