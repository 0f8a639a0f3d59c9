"""Physics of the virtual SMC axis, on a fake clock (times are exact, no sleeping)."""

from __future__ import annotations

import math

import pytest

from tango_devices.simulators.smc import (
    E_BUSY,
    E_FAULT,
    E_INTERLOCK,
    E_LIMIT,
    E_NOT_POWERED,
    HOME_SW,
    HOMED,
    HOMING,
    LIM_NEG,
    LIM_POS,
    MOVING,
    POWER,
    AxisConfig,
    SmcAxis,
    SmcError,
)

BASE = dict(
    label="slit_h",
    position=2000,
    low_switch=-500,
    high_switch=20000,
    home_switch=0,
    home_position=500,
    velocity=2000,
    max_velocity=10000,
    acceleration_time=0.1,
)


def make_axis(**overrides) -> SmcAxis:
    return SmcAxis(1, AxisConfig.from_dict({**BASE, **overrides}, "axes.1."), now=0.0)


def analytic_move_time(distance: float, velocity: float, acct: float) -> float:
    """Trapezoid: 2 ramps + cruise; triangle when the ramps alone overshoot."""
    accel = velocity / acct
    if distance >= velocity * acct:
        return acct + distance / velocity
    return 2.0 * math.sqrt(distance / accel)


def at(axis: SmcAxis, t: float) -> SmcAxis:
    axis.update(t)
    return axis


# ------------------------------------------------------------------ moves
def test_trapezoid_profile_reaches_the_target_exactly():
    axis = make_axis()
    axis.move(3000, now=0.0)  # 1000 steps: ramps of 100 steps, 800 cruising
    assert at(axis, 0.05).register == pytest.approx(2000 + 0.5 * 20000 * 0.05**2)
    assert at(axis, 0.1).register == pytest.approx(2100)  # end of the ramp
    assert at(axis, 0.35).register == pytest.approx(2600)  # cruising at 2000 steps/s
    assert at(axis, 0.55).register == pytest.approx(3000 - 0.5 * 20000 * 0.05**2)
    assert axis.moving and axis.status_word & MOVING
    assert at(axis, 0.6).moving is False
    assert axis.register == 3000.0
    assert axis.position == 3000
    assert axis.status_word == POWER


def test_short_move_uses_a_triangle_profile():
    axis = make_axis()
    axis.move(2100, now=0.0)  # 100 steps < the 200 two full ramps need
    t_half = math.sqrt(2 * 50 / 20000)  # 50 steps = a t^2 / 2: the peak of the triangle
    assert at(axis, t_half).register == pytest.approx(2050)
    peak_velocity = 20000 * t_half
    assert peak_velocity < axis.velocity
    assert at(axis, 2 * t_half - 1e-6).moving
    assert at(axis, 2 * t_half).moving is False
    assert axis.register == 2100.0


@pytest.mark.parametrize(
    "target,velocity,acct",
    [
        (3000, 2000, 0.1),
        (2100, 2000, 0.1),
        (2001, 2000, 0.1),
        (-400, 5000, 0.5),
        (19999, 10000, 2.0),
    ],
)
def test_time_to_target_matches_the_analytic_value(target, velocity, acct):
    axis = make_axis(velocity=velocity, acceleration_time=acct)
    axis.move(target, now=10.0)
    expected = analytic_move_time(abs(target - 2000), velocity, acct)
    assert at(axis, 10.0 + expected - 1e-6).moving
    assert at(axis, 10.0 + expected + 1e-9).moving is False
    assert axis.position == target
    assert axis.register == float(target)


def test_result_does_not_depend_on_how_often_the_axis_is_updated():
    coarse, fine = make_axis(), make_axis()
    coarse.move(15000, now=0.0)
    fine.move(15000, now=0.0)
    for i in range(1, 401):
        fine.update(i * 0.01)
    coarse.update(4.0)
    assert fine.register == pytest.approx(coarse.register, abs=1e-6)
    assert coarse.moving and fine.moving


def test_move_to_the_current_position_does_not_move():
    axis = make_axis()
    axis.move(2000, now=0.0)
    assert axis.moving is False
    assert axis.position == 2000


def test_move_while_moving_is_busy():
    axis = make_axis()
    axis.move(5000, now=0.0)
    with pytest.raises(SmcError) as err:
        axis.move(6000, now=0.2)
    assert err.value.code == E_BUSY


def test_velocity_change_applies_to_the_next_move_only():
    axis = make_axis()
    axis.move(4000, now=0.0)  # 2000 steps at 2000 steps/s: 1.1 s
    axis.set_velocity(4000)
    assert at(axis, 1.0).moving
    assert at(axis, 1.1).register == 4000.0
    axis.move(2000, now=2.0)  # 2000 steps at 4000 steps/s: 0.6 s
    assert at(axis, 2.6).moving is False
    assert axis.position == 2000


# ------------------------------------------------------------ limit switches
def test_limit_switch_hard_stop_then_only_moving_away_is_allowed():
    axis = make_axis()
    axis.move(25000, now=0.0)  # beyond the high switch at 20000
    t_switch = 0.1 + (20000 - 2000 - 100) / 2000  # ramp + cruise up to the switch
    assert at(axis, t_switch - 1e-3).moving
    assert at(axis, t_switch + 1e-3).moving is False
    assert axis.register == 20000.0
    assert axis.status_word == POWER | LIM_POS
    with pytest.raises(SmcError) as err:
        axis.move(21000, now=10.0)
    assert err.value.code == E_LIMIT
    assert "high limit" in err.value.message
    axis.move(10000, now=10.0)  # away from the switch
    assert at(axis, 10.2).status_word & LIM_POS == 0
    assert at(axis, 20.0).position == 10000


def test_low_limit_switch_stops_a_move_down():
    axis = make_axis()
    axis.move(-3000, now=0.0)
    at(axis, 5.0)
    assert axis.register == -500.0
    assert axis.low_limit and axis.status_word & LIM_NEG
    with pytest.raises(SmcError) as err:
        axis.move(-600, now=5.0)
    assert err.value.code == E_LIMIT
    with pytest.raises(SmcError) as err:
        axis.home(-1, now=5.0)
    assert err.value.code == E_LIMIT


# --------------------------------------------------------------- home search
def test_home_search_sets_the_register_and_the_homed_bit():
    axis = make_axis()
    axis.home(-1, now=0.0)
    assert at(axis, 0.5).status_word == MOVING | POWER | HOMING
    t_switch = 0.1 + (2000 - 100) / 2000  # ramp + cruise down to mechanical 0
    assert at(axis, t_switch - 1e-3).homing
    at(axis, t_switch + 1e-3)
    assert axis.moving is False
    assert axis.mechanical == 0.0
    assert axis.position == 500  # home_position
    assert axis.status_word == POWER | HOME_SW | HOMED
    assert axis.fault_text is None


def test_home_search_on_the_home_switch_completes_at_once():
    axis = make_axis(position=0)
    axis.home(1, now=0.0)
    assert axis.moving is False
    assert axis.homed and axis.position == 500


def test_home_search_hitting_a_limit_latches_a_fault():
    axis = make_axis()
    axis.home(1, now=0.0)  # the home switch is behind: runs into the high limit
    at(axis, 20.0)
    assert axis.moving is False and axis.homing is False
    assert axis.register == 20000.0
    assert axis.homed is False
    assert axis.fault_text == "home switch not found: high limit switch reached"
    with pytest.raises(SmcError) as err:
        axis.move(1000, now=20.0)
    assert err.value.code == E_FAULT
    assert "home switch not found" in err.value.message
    axis.reset(now=21.0)
    axis.move(1000, now=21.0)
    assert axis.moving


def test_stop_ends_a_home_search_without_homing():
    axis = make_axis()
    axis.home(-1, now=0.0)
    axis.stop(now=0.5)  # cruising at 2000 steps/s
    assert axis.homing is False and axis.moving
    at(axis, 0.6)
    assert axis.moving is False
    assert axis.register == pytest.approx(2000 - 100 - 800 - 100)
    assert axis.homed is False and axis.fault_text is None


# ------------------------------------------------------- stop, power, interlock
def test_stop_decelerates_over_the_acceleration_time():
    axis = make_axis()
    axis.move(10000, now=0.0)
    axis.stop(now=0.3)  # cruising at 2500 (2100 + 0.2 s * 2000)
    assert axis.register == pytest.approx(2500)
    assert at(axis, 0.35).moving
    assert axis.register == pytest.approx(2500 + 2000 * 0.05 - 0.5 * 20000 * 0.05**2)
    assert at(axis, 0.4).moving is False
    assert axis.register == pytest.approx(2600)  # v * acct / 2 further
    axis.stop(now=0.5)  # stopping a stopped axis is fine
    assert axis.register == pytest.approx(2600)


def test_stop_during_the_final_ramp_still_ends_on_the_target():
    axis = make_axis()
    axis.move(3000, now=0.0)
    axis.stop(now=0.55)
    at(axis, 1.0)
    assert axis.moving is False
    assert axis.position == 3000


def test_power_off_stops_at_once_and_blocks_moves():
    axis = make_axis()
    axis.move(10000, now=0.0)
    axis.set_power(False, now=0.3)
    assert axis.moving is False
    assert at(axis, 1.0).register == pytest.approx(2500)
    assert axis.status_word & POWER == 0
    with pytest.raises(SmcError) as err:
        axis.move(3000, now=1.0)
    assert err.value.code == E_NOT_POWERED
    axis.set_power(True, now=1.0)
    axis.move(3000, now=1.0)
    assert axis.moving


def test_interlock_blocks_and_stops_motion():
    axis = make_axis()
    axis.move(10000, now=0.0)
    axis.set_interlock(True, now=0.3)
    assert axis.moving is False
    assert at(axis, 1.0).register == pytest.approx(2500)
    for command in (lambda: axis.move(3000, now=1.0), lambda: axis.home(-1, now=1.0)):
        with pytest.raises(SmcError) as err:
            command()
        assert err.value.code == E_INTERLOCK
    axis.stop(now=1.0)  # always accepted
    axis.set_interlock(False, now=2.0)
    axis.move(3000, now=2.0)
    assert axis.moving


def test_injected_fault_stops_and_is_latched_until_reset():
    axis = make_axis()
    axis.move(10000, now=0.0)
    axis.latch_fault("amplifier overtemperature", now=0.3)
    assert axis.moving is False
    with pytest.raises(SmcError) as err:
        axis.home(1, now=0.5)
    assert err.value.code == E_FAULT
    assert err.value.message == "axis fault: amplifier overtemperature"
    axis.reset(now=0.6)
    assert axis.fault_text is None
    axis.move(3000, now=0.6)
    assert axis.moving


# ------------------------------------------------------------------- POS
def test_pos_calibrates_without_moving():
    axis = make_axis()
    axis.set_position(100, now=0.0)
    assert axis.position == 100
    assert axis.mechanical == 2000.0
    axis.move(200, now=0.0)  # 100 steps in register and in mechanics
    at(axis, 5.0)
    assert axis.position == 200
    assert axis.mechanical == 2100.0


def test_pos_keeps_the_switches_where_they_are():
    axis = make_axis()
    axis.set_position(-1000, now=0.0)  # the register now reads below the low switch
    assert axis.low_limit is False
    axis.move(17000, now=0.0)  # mechanical 20000: exactly on the high switch
    at(axis, 20.0)
    assert axis.high_limit and axis.position == 17000


def test_pos_while_moving_is_busy():
    axis = make_axis()
    axis.move(10000, now=0.0)
    with pytest.raises(SmcError) as err:
        axis.set_position(0, now=0.2)
    assert err.value.code == E_BUSY
