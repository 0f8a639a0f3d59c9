"""The Motor device alone: PyTango's DeviceTestContext runs it in its own
process (no database, no Starter) against a real virtual-hardware process."""

from __future__ import annotations

import pytest
import tango
from tango.test_context import DeviceTestContext

from tango_devices.motor.device import Motor
from tests.helpers import wait_until
from tests.system.conftest import Events
from tests.system.sim_helpers import running_simulator

pytestmark = pytest.mark.system


@pytest.fixture
def sim(tmp_path):
    with running_simulator(tmp_path) as s:
        yield s


def motor_context(url: str, axis: int = 1, **extra):
    props = {"Port": url, "Axis": axis, "StepsPerUnit": 1000.0, "ReconnectPeriod": 0.2}
    props.update(extra)
    return DeviceTestContext(Motor, properties=props, process=True, timeout=15)


def test_starts_and_moves(sim):
    with motor_context(sim.url()) as m:
        wait_until(lambda: m.state() == tango.DevState.ON, 10, "ON")
        assert m.Position == pytest.approx(2.0)  # the simulator's axis 1 starts at 2000 steps
        m.Position = 2.5
        wait_until(lambda: m.state() == tango.DevState.ON, 10, "the move to end")
        assert m.Position == pytest.approx(2.5)
        assert m.DialPosition == pytest.approx(2.5)


def test_server_starts_while_the_controller_is_unreachable_and_recovers(sim):
    sim.fault("drop")
    with motor_context(sim.url()) as m:
        # the server start never waits for the hardware
        assert m.state() in (tango.DevState.INIT, tango.DevState.FAULT)
        wait_until(lambda: m.state() == tango.DevState.FAULT, 10, "FAULT")
        assert "No link to the motion controller" in m.status()
        with pytest.raises(tango.DevFailed) as info:
            _ = m.Position
        assert "Position is not known yet" in info.value.args[0].desc
        sim.clear()
        wait_until(lambda: m.state() == tango.DevState.ON, 10, "ON once the link is back")
        assert m.Position == pytest.approx(2.0)


def test_bad_properties_give_fault_with_the_fix(sim):
    with motor_context(sim.url(), axis=0) as m:
        assert m.state() == tango.DevState.FAULT
        status = m.status()
        assert "Axis must be 1 or more, not 0" in status
        assert "Fix the device properties, then run Init" in status
        with pytest.raises(tango.DevFailed, match="Axis must be 1 or more"):
            m.On()


def test_axis_missing_on_the_controller_is_a_fault(sim):
    with motor_context(sim.url(), axis=7) as m:
        wait_until(lambda: m.state() == tango.DevState.FAULT, 10, "FAULT")
        assert "no such axis" in m.status()


def test_state_change_events(sim):
    with motor_context(sim.url()) as m:
        wait_until(lambda: m.state() == tango.DevState.ON, 10, "ON")
        states = Events(m, "State")
        try:
            states.wait_live()
            m.Off()
            states.wait_for(lambda items: items[-1].value == tango.DevState.OFF, 5, "an OFF event")
            m.On()
            states.wait_for(lambda items: items[-1].value == tango.DevState.ON, 5, "an ON event")
        finally:
            states.close()
    assert states.items[0].value == tango.DevState.ON


def test_settings_switches_and_dial_position_push_change_events(sim):
    """Clients (the data logger, Taurus) subscribe to every attribute instead
    of reading it every second: a write, a move and the static table each
    reach a subscriber as a change event."""
    with motor_context(sim.url()) as m:
        wait_until(lambda: m.state() == tango.DevState.ON, 10, "ON")
        events = {
            name: Events(m, name)
            for name in ("Velocity", "DialPosition", "LowLimitSwitch", "Homed", "CommandStates")
        }
        try:
            for name, ev in events.items():  # the value at subscription
                ev.wait_for(lambda items: len(items) >= 1, 5, f"{name}'s first event")
            assert "Home" in events["CommandStates"].items[0].value
            old = m.Velocity
            m.Velocity = old / 2
            events["Velocity"].wait_for(
                lambda items: items[-1].value == pytest.approx(old / 2), 5, "the new velocity"
            )
            m.Position = 2.2
            events["DialPosition"].wait_for(
                lambda items: items[-1].value == pytest.approx(2.2), 15, "the dial position"
            )
            assert len(events["Velocity"].items) == 2  # one value, one event
            assert len(events["CommandStates"].items) == 1  # it never changes
        finally:
            for ev in events.values():
                ev.close()
