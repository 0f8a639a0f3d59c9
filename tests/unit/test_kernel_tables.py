"""One kernel for every server kind: the queue's and the supervisor's tables
walked on every (state, trigger) and (state, command) pair against the
contract restated here, and every device class of the suite answering each of
its commands (and each writable attribute its table lists) from its table,
which it publishes as ``CommandStates``."""

from __future__ import annotations

import itertools
import json

import pytest
import tango

from tango_devices import registry
from tango_devices.common.device_base import KERNEL_COMMANDS
from tango_devices.common.statemachine import CommandRefused, State, StateMachine, TransitionRefused
from tango_devices.detector.states import DETECTOR_TABLE
from tango_devices.logger.states import LOGGER_TABLE
from tango_devices.motor.states import MOTOR_TABLE
from tango_devices.queue import states as q
from tango_devices.relay.states import RELAY_TABLE
from tango_devices.scaler.states import SCALER_TABLE
from tango_devices.shutter.states import SHUTTER_TABLE
from tango_devices.supervisor import states as sup
from tango_devices.timing.states import TIMING_TABLE
from tango_devices.vacuum.states import GAUGE_TABLE, VALVE_TABLE

IDLE, RUNNING, STOPPING, PAUSED = q.IDLE, q.RUNNING, q.STOPPING, q.PAUSED

# (source, trigger) -> destination; a pair missing here must be refused
QUEUE_TRANSITIONS = {
    (IDLE, q.START): RUNNING,
    (RUNNING, q.START): RUNNING,
    (STOPPING, q.START): RUNNING,
    (RUNNING, q.STOP_AFTER_ITEM): STOPPING,
    (STOPPING, q.STOP_AFTER_ITEM): STOPPING,
    (STOPPING, q.CANCEL_STOP): RUNNING,
    (RUNNING, q.PAUSE): PAUSED,
    (STOPPING, q.PAUSE): PAUSED,
    (IDLE, q.RESTORE_PAUSED): PAUSED,
    (PAUSED, q.RESTORE_PAUSED): PAUSED,
    (PAUSED, q.RESUME_RUNNING): RUNNING,
    (PAUSED, q.RESUME_STOPPING): STOPPING,
    (PAUSED, q.RESUME_IDLE): IDLE,
    **{(s, q.WENT_IDLE): IDLE for s in q.QUEUE_STATES},
}
ALL = {IDLE, RUNNING, STOPPING, PAUSED}
QUEUE_COMMANDS = {
    **dict.fromkeys(
        ["Add", "AddBatch", "Update", "Move", "Remove", "Duplicate", "Clear", "Get"], ALL
    ),
    **dict.fromkeys(["History", "HistoryClear", "Stop"], ALL),
    "Start": {IDLE, RUNNING, STOPPING},
    "StopCancel": {STOPPING},
    "Pause": {RUNNING, STOPPING},
    "Resume": {PAUSED, RUNNING, STOPPING},
    # a macro may still run while the queue is idle: the logic refuses them when none runs
    **dict.fromkeys(["StopMacro", "AbortMacro", "HaltMacro"], ALL),
}
# what a refusal says, beside the state (what the CLI and GUI users read)
QUEUE_REFUSALS = {
    "Start": "the queue is paused: Resume it",
    "StopCancel": "no stop is pending",
    "Pause": "nothing to pause",
    "Resume": "the queue is not paused",
}

SUP_STATES = (State.INIT, State.ON, State.ALARM, State.FAULT)
SUPERVISOR_TRIGGERS = {sup.HEALTHY: State.ON, sup.GAVE_UP: State.ALARM, sup.BLIND: State.FAULT}
SUPERVISOR_COMMANDS = dict.fromkeys(
    ["StopServer", "StartServer", "RestartServer"], {State.ON, State.ALARM}
)


def machine_in(table, state):
    m = StateMachine(table, "the status")
    m._state = state  # test set-up only
    return m


@pytest.mark.parametrize(
    "state,trigger", list(itertools.product(q.QUEUE_STATES, sorted(q.QUEUE_TABLE.transitions)))
)
def test_queue_every_state_trigger_pair(state, trigger):
    m = machine_in(q.QUEUE_TABLE, state)
    expected = QUEUE_TRANSITIONS.get((state, trigger))
    if expected is None:
        with pytest.raises(TransitionRefused):
            m.fire(trigger)
        assert m.state is state
    else:
        assert m.fire(trigger) is expected


@pytest.mark.parametrize(
    "state,command", list(itertools.product(q.QUEUE_STATES, sorted(QUEUE_COMMANDS)))
)
def test_queue_every_state_command_pair(state, command):
    m = machine_in(q.QUEUE_TABLE, state)
    if state in QUEUE_COMMANDS[command]:
        m.check(command)
        return
    with pytest.raises(CommandRefused) as refused:
        m.check(command)
    text = str(refused.value)
    assert text.startswith(f"{command} is not allowed in state {state} (")
    assert QUEUE_REFUSALS[command] in text
    assert "allowed in: " in text
    assert m.state is state


def test_queue_table_is_the_contract():
    assert set(q.QUEUE_TABLE.commands) == set(QUEUE_COMMANDS)
    assert {(s, t) for t, m in q.QUEUE_TABLE.transitions.items() for s in m} == set(
        QUEUE_TRANSITIONS
    )
    assert q.QUEUE_TABLE.initial is IDLE


@pytest.mark.parametrize(
    "state,tango", [(IDLE, "ON"), (RUNNING, "RUNNING"), (STOPPING, "RUNNING"), (PAUSED, "STANDBY")]
)
def test_queue_states_show_as_tango_states(state, tango):
    assert state.tango == tango
    assert state == state.value  # what QueueState publishes, as before the table


@pytest.mark.parametrize("state,trigger", list(itertools.product(SUP_STATES, SUPERVISOR_TRIGGERS)))
def test_supervisor_every_state_trigger_pair(state, trigger):
    m = machine_in(sup.SUPERVISOR_TABLE, state)
    assert m.fire(trigger, "why") is SUPERVISOR_TRIGGERS[trigger]
    assert m.status == "why"


@pytest.mark.parametrize("state,command", list(itertools.product(SUP_STATES, SUPERVISOR_COMMANDS)))
def test_supervisor_every_state_command_pair(state, command):
    m = machine_in(sup.SUPERVISOR_TABLE, state)
    if state in SUPERVISOR_COMMANDS[command]:
        m.check(command)
    else:
        # the cause is the supervisor's Status (e.g. why it cannot see the Starter)
        with pytest.raises(CommandRefused, match=r"not allowed in state \w+ \(the status\)"):
            m.check(command)


# ------------------------------------------------- every device class, one kernel
TABLES = {
    "Motor": MOTOR_TABLE,
    "Shutter": SHUTTER_TABLE,
    "Scaler": SCALER_TABLE,
    "Detector": DETECTOR_TABLE,
    "VacuumGauge": GAUGE_TABLE,
    "Valve": VALVE_TABLE,
    "Supervisor": sup.SUPERVISOR_TABLE,
    "DataLogger": LOGGER_TABLE,
    "ExperimentQueue": q.QUEUE_TABLE,
    "EventRelay": RELAY_TABLE,
    "TimingUnit": TIMING_TABLE,
}


@pytest.fixture(scope="module")
def classes():
    return registry.device_classes()


def test_every_server_kind_has_a_table(classes):
    assert set(classes) == set(TABLES)


class AskedDevice:
    """Stands in for the device: records what its is_*_allowed asked the kernel."""

    def __init__(self):
        self.asked: list[str] = []

    def check(self, what: str) -> bool:
        self.asked.append(what)
        return True

    def check_write(self, req_type, what: str) -> bool:
        self.asked.append(what)
        return True


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_command_is_answered_from_the_table(classes, name):
    cls, table = classes[name], TABLES[name]
    commands = cls.TangoClassClass.cmd_list
    own = {c for c in table.commands if not c.startswith("write_")}
    assert set(commands) == own | set(KERNEL_COMMANDS)
    for command, (_in, _out, info) in commands.items():
        if command in KERNEL_COMMANDS:  # allowed in every state, asks no table
            assert getattr(cls, info["Is allowed"])(AskedDevice()) is True
            continue
        device = AskedDevice()
        assert getattr(cls, info["Is allowed"])(device) is True
        assert device.asked == [command]
    for entry in table.commands:
        if entry.startswith("write_"):
            attr = cls.TangoClassClass.attr_list[entry.removeprefix("write_")]
            device = AskedDevice()
            getattr(cls, attr.is_allowed_name)(device, tango.AttReqType.WRITE_REQ)
            assert device.asked == [entry]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_command_states_publishes_the_table(name):
    table = TABLES[name]
    published = json.loads(json.dumps(table.command_states()))
    assert set(published) == set(table.commands)
    for command, states in table.commands.items():
        assert published[command] == sorted(s.name for s in states)
    # the GUI compares upper-case state names (QueueState "idle" -> IDLE)
    assert all(s == s.upper() for states in published.values() for s in states)


def test_every_evented_attribute_is_an_attribute_of_its_family():
    """EVENTED names attributes the kernel reads and pushes: a typo would make
    set_change_event fail at every start."""
    import inspect

    import numpy as np
    from tango.server import attribute

    from tango_devices.common.device_base import BeamlineDevice, _comparable

    families = {c for c in registry.device_classes().values() if issubclass(c, BeamlineDevice)}
    assert any(c.EVENTED for c in families)
    for klass in families:
        for name in klass.EVENTED:
            assert isinstance(inspect.getattr_static(klass, name, None), attribute), (
                klass.__name__,
                name,
            )
    a = np.arange(6).reshape(2, 3)
    assert _comparable(a) == _comparable(a.copy()) != _comparable(a.T.copy())
    assert _comparable([1, [2, 3]]) == (1, (2, 3))
