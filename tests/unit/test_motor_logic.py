"""MotorLogic against an in-memory fake driver (unit level; the same behaviour is
tested against the real simulator process and real device servers in tests/system)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import pytest

from tango_devices.common.statemachine import CommandRefused, State
from tango_devices.drivers.motion_ascii import (
    AxisStatus,
    ControllerRejected,
    LinkError,
    MotionController,
    ProtocolError,
)
from tango_devices.motor.motor_logic import MotorConfig, MotorError, MotorLogic, Quality
from tests.helpers import wait_until

MOVING, POWER, LIM_NEG, LIM_POS, HOME_SW, FAULT, HOMED, INTERLOCK, HOMING = (
    1 << i for i in range(9)
)


class FakeDriver:
    """A controller axis in memory. ``link`` and ``garbage`` simulate link faults."""

    MAX_STEPS = MotionController.MAX_STEPS

    def __init__(self, url, timeout=0.5):
        self.url = url
        self.connected = False
        self.link = True
        self.garbage = False
        self.steps = 1500
        self.word = POWER
        self.velocity = 2000
        self.acct = 0.1
        self.fault_text = None
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def _io(self, what):
        if not self.connected:
            raise LinkError(f"not connected to {self.url}")
        if not self.link:
            self.connected = False
            raise LinkError(f"connection closed by {self.url}")
        if self.garbage:
            self.connected = False
            raise ProtocolError(f"garbage reply to {what!r}: b'\\x8f#'")

    def connect(self):
        if not self.link:
            raise LinkError(f"cannot connect to {self.url}: connection refused")
        self.connected = True
        return "SMC-8 1.0"

    def close(self):
        self.connected = False

    def read_position_status(self, axis):
        self._io("?PS")
        return self.steps, AxisStatus.from_word(self.word)

    def read_velocity(self, axis):
        self._io("?VEL")
        return self.velocity

    def write_velocity(self, axis, steps):
        self._io("VEL")
        self.calls.append(("VEL", steps))
        self.velocity = steps

    def read_acceleration_time(self, axis):
        self._io("?ACCT")
        return self.acct

    def write_acceleration_time(self, axis, seconds):
        self._io("ACCT")
        self.calls.append(("ACCT", seconds))
        self.acct = seconds

    def move(self, axis, steps):
        self._io("MOVE")
        if not self.word & POWER:
            raise ControllerRejected(4, "axis not powered")
        self.calls.append(("MOVE", steps))
        self.target = steps
        self.word |= MOVING

    def finish_move(self):
        self.steps = self.target
        self.word &= ~MOVING

    def stop(self, axis):
        self._io("STOP")
        self.calls.append(("STOP",))
        self.word &= ~MOVING

    def home(self, axis, direction=1):
        self._io("HOME")
        self.calls.append(("HOME", direction))
        self.word |= MOVING | HOMING

    def power(self, axis, on):
        self._io("POWER")
        self.calls.append(("POWER", on))
        self.word = self.word | POWER if on else self.word & ~POWER

    def reset(self, axis):
        self._io("RESET")
        self.calls.append(("RESET",))
        self.word &= ~FAULT
        self.fault_text = None

    def read_fault(self, axis):
        self._io("?FAULT")
        return self.fault_text


@pytest.fixture
def logic():
    drivers = []

    def factory(url, timeout):
        drivers.append(FakeDriver(url, timeout))
        return drivers[-1]

    m = MotorLogic(
        MotorConfig(
            url="socket://127.0.0.1:1",
            axis=3,
            steps_per_unit=1000.0,
            unit="mm",
            idle_poll_period=0.01,
            moving_poll_period=0.01,
            reconnect_period=0.02,
        ),
        driver_factory=factory,
    )
    m.fake = drivers[0]
    yield m
    m.stop_polling()


def test_connects_and_follows_hardware(logic):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    assert logic.status.startswith("Ready (SMC-8 1.0, axis 3)")
    assert logic.dial_position().value == pytest.approx(1.5)
    assert logic.velocity == pytest.approx(2.0)
    assert logic.acceleration == pytest.approx(0.1)
    logic.fake.word |= LIM_POS
    wait_until(lambda: logic.state is State.ALARM, 2, "ALARM on the high limit switch")
    assert "High (positive) limit switch" in logic.status


def test_link_lost_then_back(logic):
    logic.fake.link = False
    logic.start_polling()
    wait_until(lambda: logic.state is State.FAULT, 2, "FAULT")
    assert "No link to the motion controller (socket://127.0.0.1:1, axis 3)" in logic.status
    assert "connection refused" in logic.status
    assert logic.position().quality is Quality.INVALID
    logic.fake.link = True
    wait_until(lambda: logic.state is State.ON, 2, "ON after the link returns")
    assert logic.position().quality is Quality.VALID


def test_garbage_is_a_fault_and_recovers(logic):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    logic.fake.garbage = True
    wait_until(lambda: logic.state is State.FAULT, 2, "FAULT on garbage")
    assert logic.status.startswith("Garbled reply from the motion controller")
    logic.fake.garbage = False
    wait_until(lambda: logic.state is State.ON, 2, "ON after garbage stops")


def test_move_uses_offset_and_steps_and_reports_moving(logic):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    logic.set_offset(10.0)
    assert logic.position().value == pytest.approx(11.5)
    logic.move_to(12.25)
    assert logic.fake.calls[-1] == ("MOVE", 2250)
    # the state is observed right after the controller accepted the move
    assert logic.state is State.MOVING
    assert logic.position().quality is Quality.CHANGING
    assert logic.status == "Moving to 12.25 mm."
    logic.fake.finish_move()
    wait_until(lambda: logic.state is State.ON, 2, "ON after the move")
    assert logic.position().value == pytest.approx(12.25)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_move_rejects_non_finite(logic, bad):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    with pytest.raises(MotorError, match="finite"):
        logic.move_to(bad)
    assert not [c for c in logic.fake.calls if c[0] == "MOVE"]


@pytest.mark.parametrize("offset", [1e308, -1e308, 2.1e6])
def test_offsets_beyond_the_controller_range_are_refused_and_change_nothing(logic, offset):
    """+-2e9 steps at 1000 steps/mm: offsets beyond +-2e6 mm cannot be represented."""
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    logic.set_offset(0.25)
    with pytest.raises(MotorError, match=r"beyond \+-2e\+06 mm \(the range of the motion"):
        logic.set_offset(offset)
    with pytest.raises(MotorError, match="SetPosition .* refused: the offset would be"):
        logic.set_position(offset)
    assert logic.offset == 0.25
    logic.move_to(1.0)  # still a working motor
    assert logic.fake.calls[-1] == ("MOVE", 750)


@pytest.mark.parametrize("target", [1e308, -3e6])
def test_moves_beyond_the_controller_range_are_refused_before_sending(logic, target):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    with pytest.raises(MotorError, match=r"beyond what the motion controller can reach: -2e\+06"):
        logic.move_to(target)
    assert not [c for c in logic.fake.calls if c[0] == "MOVE"]


def test_move_refused_in_fault_sends_nothing(logic):
    logic.fake.link = False
    logic.start_polling()
    wait_until(lambda: logic.state is State.FAULT, 2, "FAULT")
    with pytest.raises(CommandRefused) as info:
        logic.move_to(1.0)
    assert "write_Position is not allowed in state FAULT (No link to the motion controller" in str(
        info.value
    )
    assert logic.fake.calls == []


def test_limit_switch_allows_moving_away_only(logic):
    logic.fake.word |= LIM_POS
    logic.start_polling()
    wait_until(lambda: logic.state is State.ALARM, 2, "ALARM")
    with pytest.raises(MotorError, match="high \\(positive\\) limit switch is active"):
        logic.move_to(2.0)
    logic.move_to(1.0)
    assert logic.fake.calls[-1] == ("MOVE", 1000)


def test_power_off_behind_our_back_then_on(logic):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    logic.fake.word &= ~POWER
    logic.fake.word |= 0  # powered off behind our back: the next poll shows OFF
    wait_until(lambda: logic.state is State.OFF, 2, "OFF")
    with pytest.raises(CommandRefused, match="write_Position is not allowed in state OFF"):
        logic.move_to(1.0)
    logic.power_on()
    assert logic.state is State.ON
    assert ("POWER", True) in logic.fake.calls


def test_set_position_changes_offset_only(logic):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    offset = logic.set_position(100.0)
    assert offset == pytest.approx(98.5)
    assert logic.position().value == pytest.approx(100.0)
    assert logic.dial_position().value == pytest.approx(1.5)
    assert not [c for c in logic.fake.calls if c[0] in ("MOVE", "POS")]


def test_velocity_and_acceleration_conversions(logic):
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    logic.set_velocity(2.5)
    assert logic.fake.calls[-1] == ("VEL", 2500)
    assert logic.velocity == pytest.approx(2.5)
    for bad in (0.0, -1.0, math.nan, 0.0001):
        with pytest.raises(MotorError):
            logic.set_velocity(bad)
    assert logic.velocity == pytest.approx(2.5)
    logic.set_acceleration(0.3)
    assert logic.acceleration == pytest.approx(0.3)
    with pytest.raises(MotorError, match="positive number of seconds"):
        logic.set_acceleration(0)


def test_hardware_fault_and_reset(logic):
    logic.fake.word |= FAULT
    logic.fake.fault_text = "amplifier overtemperature"
    logic.start_polling()
    wait_until(lambda: logic.state is State.FAULT, 2, "FAULT")
    assert "amplifier overtemperature" in logic.status
    assert "run Reset (or On)" in logic.status
    with pytest.raises(CommandRefused):
        logic.home()
    logic.reset()
    assert logic.state is State.ON


def test_bad_configuration_is_reported():
    with pytest.raises(MotorError) as info:
        MotorLogic(MotorConfig(url="", axis=0, steps_per_unit=0.0), driver_factory=FakeDriver)
    text = str(info.value)
    assert "Port is empty" in text and "Axis must be 1 or more" in text and "StepsPerUnit" in text


def test_value_is_published_before_the_state_changes(logic):
    """A client that sees the motor back ON must read the final position."""
    seen = []

    def on_value():
        r = logic.position()
        seen.append(("value", r.value, r.quality, logic.state))

    logic.add_value_listener(on_value)
    logic.machine.add_listener(lambda old, new, status: seen.append(("state", new)))
    logic.start_polling()
    wait_until(lambda: logic.state is State.ON, 2, "ON")
    logic.move_to(3.0)
    logic.fake.finish_move()
    wait_until(lambda: logic.state is State.ON, 2, "ON after the move")
    final = [i for i, e in enumerate(seen) if e[0] == "value" and e[1] == pytest.approx(3.0)]
    back_on = [i for i, e in enumerate(seen) if e == ("state", State.ON)][-1]
    assert final and final[0] < back_on
    # the final value is published as VALID while the state is still MOVING
    assert seen[final[0]][2] is Quality.VALID and seen[final[0]][3] is State.MOVING


def test_thread_context_wraps_the_poll_thread():
    entered = threading.Event()

    class Ctx:
        def __enter__(self):
            entered.set()

        def __exit__(self, *exc):
            return False

    m = MotorLogic(
        MotorConfig(url="socket://x:1", axis=1), driver_factory=FakeDriver, thread_context=Ctx
    )
    m.start_polling()
    try:
        assert entered.wait(2)
    finally:
        m.stop_polling()


def test_an_axis_at_rest_is_polled_less_often_until_it_changes_or_is_commanded(monkeypatch, clock):
    """Nothing changed and no command for REST_AFTER s: polled every rest
    period; a change seen on the hardware (moved by someone else) or a
    command brings the idle period back at once."""
    from tango_devices.common import component

    monkeypatch.setattr(component.time, "monotonic", clock)
    drivers = []

    def factory(url, timeout):
        drivers.append(FakeDriver(url, timeout))
        return drivers[-1]

    config = MotorConfig(url="socket://127.0.0.1:1", axis=1, idle_poll_period=0.5)
    m = MotorLogic(replace(config, rest_poll_period=1.0), driver_factory=factory)
    never = MotorLogic(config, driver_factory=factory)  # no rest period: as before
    for logic in (m, never):
        assert logic._try_connect()
        logic.poll_once()
    assert m.period() == 0.5
    for _ in range(int(component.REST_AFTER / 0.5)):
        clock.advance(0.5)
        m.poll_once()
        never.poll_once()
    assert m.period() == 1.0 and never.period() == 0.5
    drivers[0].steps += 100  # moved behind its back
    m.poll_once()
    assert m.period() == 0.5, "a change seen: idle period again"
    clock.advance(component.REST_AFTER)
    m.poll_once()
    assert m.period() == 1.0
    m.set_velocity(1.5)
    assert m.period() == 0.5, "a command: idle period again"
