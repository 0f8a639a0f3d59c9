"""The Motor transition table, walked pair by pair, and the observation classifier."""

import itertools

import pytest

from tango_devices.common.statemachine import (
    CommandRefused,
    State,
    StateMachine,
    TransitionRefused,
)
from tango_devices.drivers.motion_ascii import AxisStatus
from tango_devices.motor import states as st

ALL_STATES = st.MOTOR_STATES

# What each observation means, independently of the table: the expected state.
EXPECTED_DEST = {
    st.COMM_LOST: State.FAULT,
    st.HW_FAULT: State.FAULT,
    st.INTERLOCKED: State.DISABLE,
    st.POWERED_OFF: State.OFF,
    st.MOVING_OBSERVED: State.MOVING,
    st.AT_LIMIT: State.ALARM,
    st.IDLE: State.ON,
    st.REINIT: State.INIT,
}

# Which commands an operator may use in which state (the contract, restated).
EXPECTED_ALLOWED = {
    "On": {"OFF", "ON", "ALARM", "FAULT"},
    "Off": {"ON", "ALARM", "OFF", "FAULT"},
    "Stop": {"ON", "MOVING", "ALARM", "FAULT", "OFF", "DISABLE"},
    "Home": {"ON", "ALARM"},
    "SetPosition": {"ON", "ALARM", "OFF"},
    "Reset": {"FAULT", "ON", "ALARM", "OFF"},
    "write_Position": {"ON", "ALARM"},
    "write_Velocity": {"ON", "ALARM", "OFF", "DISABLE"},
    "write_Acceleration": {"ON", "ALARM", "OFF", "DISABLE"},
    "write_Offset": {"INIT", "ON", "ALARM", "OFF", "DISABLE", "FAULT"},
}


def machine_in(state: State) -> StateMachine:
    m = StateMachine(st.MOTOR_TABLE)
    m._state = state  # test set-up only: place the machine in a given state
    return m


def test_table_covers_every_trigger_and_command():
    assert set(st.MOTOR_TABLE.transitions) == set(EXPECTED_DEST)
    assert set(st.MOTOR_TABLE.commands) == set(EXPECTED_ALLOWED)


@pytest.mark.parametrize("state,trigger", list(itertools.product(ALL_STATES, EXPECTED_DEST)))
def test_every_state_trigger_pair(state, trigger):
    m = machine_in(state)
    seen = []
    m.add_listener(lambda old, new, status: seen.append((old, new)))
    dest = st.MOTOR_TABLE.next_state(state, trigger)
    if dest is None:
        with pytest.raises(TransitionRefused):
            m.fire(trigger)
        assert m.state is state
        assert seen == []
    else:
        assert m.fire(trigger, "status text") is EXPECTED_DEST[trigger]
        assert m.state is EXPECTED_DEST[trigger]
        assert m.status == "status text"
        assert seen == [(state, EXPECTED_DEST[trigger])]


@pytest.mark.parametrize("state,command", list(itertools.product(ALL_STATES, EXPECTED_ALLOWED)))
def test_every_state_command_pair(state, command):
    m = machine_in(state)
    if state.value in EXPECTED_ALLOWED[command]:
        m.check(command)
        assert m.is_allowed(command)
    else:
        with pytest.raises(CommandRefused) as info:
            m.check(command, "link lost")
        text = str(info.value)
        assert f"{command} is not allowed in state {state.value}" in text
        assert "link lost" in text
        assert m.state is state


def test_unknown_trigger_and_command_are_errors():
    m = StateMachine(st.MOTOR_TABLE)
    with pytest.raises(KeyError):
        m.fire("teleport")
    with pytest.raises(KeyError):
        m.check("Teleport")


def status(**bits) -> AxisStatus:
    fields = dict(
        moving=False,
        powered=True,
        low_limit=False,
        high_limit=False,
        home_switch=False,
        fault=False,
        homed=False,
        interlock=False,
        homing=False,
        raw=0,
    )
    fields.update(bits)
    return AxisStatus(**fields)


@pytest.mark.parametrize(
    "link_ok,bits,trigger",
    [
        (False, None, st.COMM_LOST),
        (True, dict(fault=True, interlock=True, powered=False, moving=True), st.HW_FAULT),
        (True, dict(interlock=True, powered=False, moving=True), st.INTERLOCKED),
        (True, dict(powered=False, high_limit=True), st.POWERED_OFF),
        (True, dict(moving=True, high_limit=True), st.MOVING_OBSERVED),
        (True, dict(homing=True), st.MOVING_OBSERVED),
        (True, dict(low_limit=True), st.AT_LIMIT),
        (True, dict(high_limit=True), st.AT_LIMIT),
        (True, dict(home_switch=True, homed=True), st.IDLE),
    ],
)
def test_classify_precedence(link_ok, bits, trigger):
    assert st.classify(link_ok, status(**bits) if bits is not None else None) == trigger
