"""Every (state, trigger) and (state, command) pair of the Shutter, Scaler,
Detector, VacuumGauge, Valve and TimingUnit tables, against the contract
restated here."""

from __future__ import annotations

import itertools

import pytest

from tango_devices.common.component import COMM_LOST
from tango_devices.common.statemachine import CommandRefused, State, StateMachine, TransitionRefused
from tango_devices.detector import states as det
from tango_devices.scaler import states as sca
from tango_devices.shutter import states as shu
from tango_devices.timing import states as tim
from tango_devices.vacuum import states as vac

S = State

# family -> (table, trigger -> expected state from any state, command -> allowed states)
CONTRACTS = {
    "Shutter": (
        shu.SHUTTER_TABLE,
        {
            COMM_LOST: S.FAULT,
            shu.HW_FAULT: S.FAULT,
            shu.INTERLOCKED: S.DISABLE,
            shu.MOVING_OBSERVED: S.MOVING,
            shu.OPENED: S.OPEN,
            shu.CLOSED: S.CLOSE,
        },
        {
            "Open": {S.CLOSE, S.OPEN},
            "Close": {S.OPEN, S.CLOSE, S.MOVING, S.DISABLE, S.FAULT},
            "Reset": {S.FAULT, S.OPEN, S.CLOSE, S.DISABLE},
        },
    ),
    "Scaler": (
        sca.SCALER_TABLE,
        {
            COMM_LOST: S.FAULT,
            sca.MISCONFIGURED: S.FAULT,
            sca.COUNTING: S.RUNNING,
            sca.BUFFERING: S.RUNNING,
            sca.IDLE: S.ON,
        },
        {
            "Start": {S.ON},
            "Count": {S.ON},
            "Stop": {S.RUNNING, S.ON},
            "Clear": {S.ON},
            "ArmBuffer": {S.ON},
            "ReadBuffer": {S.ON, S.RUNNING},
            "write_PresetTime": {S.INIT, S.ON, S.FAULT},
        },
    ),
    "Detector": (
        det.DETECTOR_TABLE,
        {COMM_LOST: S.FAULT, det.ACQUIRING: S.RUNNING, det.IDLE: S.ON},
        {
            "Snap": {S.ON},
            "Start": {S.ON},
            "Stop": {S.RUNNING, S.ON},
            "write_ExposureTime": {S.INIT, S.ON, S.FAULT},
            "write_AcquisitionMode": {S.INIT, S.ON, S.FAULT},
            "write_NumberOfFrames": {S.INIT, S.ON, S.FAULT},
            "write_TriggerMode": {S.INIT, S.ON, S.FAULT},
            "ReadFrame": {S.ON, S.RUNNING},
            "write_Roi": {S.INIT, S.ON, S.RUNNING, S.FAULT},
        },
    ),
    "TimingUnit": (
        tim.TIMING_TABLE,
        {
            COMM_LOST: S.FAULT,
            tim.IDLE: S.ON,
            tim.ARMED: S.STANDBY,
            tim.RUNNING_OBSERVED: S.RUNNING,
        },
        {
            "Arm": {S.ON},
            "Start": {S.ON, S.STANDBY},
            "Stop": {S.ON, S.STANDBY, S.RUNNING},
            "LoadTrain": {S.ON},
            "ReadPulses": {S.ON, S.STANDBY, S.RUNNING},
            **{
                f"write_{name}": {S.ON}
                for name in (
                    "Mode",
                    "Delay",
                    "Period",
                    "Width",
                    "Count",
                    "Encoder",
                    "PositionStart",
                    "PositionStep",
                )
            },
        },
    ),
    "VacuumGauge": (
        vac.GAUGE_TABLE,
        {COMM_LOST: S.FAULT, vac.INVALID: S.FAULT, vac.ABOVE_ALARM: S.ALARM, vac.NORMAL: S.ON},
        {},
    ),
    "Valve": (
        vac.VALVE_TABLE,
        {
            COMM_LOST: S.FAULT,
            vac.STUCK: S.FAULT,
            vac.MOVING_OBSERVED: S.MOVING,
            vac.OPENED: S.OPEN,
            vac.CLOSED: S.CLOSE,
        },
        {"Open": {S.CLOSE, S.OPEN}, "Close": {S.OPEN, S.CLOSE, S.MOVING, S.FAULT}},
    ),
}


def pairs(kind):
    out = []
    for family, (table, triggers, commands) in CONTRACTS.items():
        items = triggers if kind == "trigger" else commands
        for state, item in itertools.product(sorted(table.states, key=str), sorted(items)):
            out.append(pytest.param(family, state, item, id=f"{family}-{state}-{item}"))
    return out


def machine_in(table, state):
    m = StateMachine(table)
    m._state = state  # test set-up only
    return m


@pytest.mark.parametrize("family", CONTRACTS)
def test_table_covers_the_contract(family):
    table, triggers, commands = CONTRACTS[family]
    assert set(table.transitions) == set(triggers)
    assert set(table.commands) == set(commands)
    assert table.initial is S.INIT


@pytest.mark.parametrize("family,state,trigger", pairs("trigger"))
def test_every_state_trigger_pair(family, state, trigger):
    table, triggers, _ = CONTRACTS[family]
    m = machine_in(table, state)
    if table.next_state(state, trigger) is None:
        with pytest.raises(TransitionRefused):
            m.fire(trigger)
        assert m.state is state
    else:
        assert m.fire(trigger, "why") is triggers[trigger]
        assert m.status == "why"


@pytest.mark.parametrize("family,state,command", pairs("command"))
def test_every_state_command_pair(family, state, command):
    table, _, commands = CONTRACTS[family]
    m = machine_in(table, state)
    if state in commands[command]:
        m.check(command)
    else:
        with pytest.raises(CommandRefused, match=f"{command} is not allowed in state {state}"):
            m.check(command, "the reason")
        assert m.state is state


@pytest.mark.parametrize(
    "plc_state,interlock,trigger",
    [
        ("FAULT", True, shu.HW_FAULT),
        ("MOVING", True, shu.INTERLOCKED),
        ("CLOSED", True, shu.INTERLOCKED),
        ("MOVING", False, shu.MOVING_OBSERVED),
        ("OPEN", False, shu.OPENED),
        ("CLOSED", False, shu.CLOSED),
        ("WEIRD", False, shu.HW_FAULT),
    ],
)
def test_shutter_classify(plc_state, interlock, trigger):
    assert shu.classify(plc_state, interlock) == trigger


def test_gauge_and_valve_classify():
    assert vac.classify_gauge(1e-8, 0, 1e-5) == vac.NORMAL
    assert vac.classify_gauge(2e-5, 2, 1e-5) == vac.ABOVE_ALARM
    assert vac.classify_gauge(2e-5, 0, None) == vac.NORMAL  # no threshold configured
    assert vac.classify_gauge(1e-8, 3, 1e-5) == vac.INVALID
    # hysteresis: once in ALARM, stay there until below 90 % of the threshold
    assert vac.classify_gauge(9.5e-6, 1, 1e-5, in_alarm=True) == vac.ABOVE_ALARM
    assert vac.classify_gauge(8.9e-6, 1, 1e-5, in_alarm=True) == vac.NORMAL
    assert vac.classify_gauge(9.5e-6, 1, 1e-5, in_alarm=False) == vac.NORMAL
    assert [vac.classify_valve(s) for s in ("OPEN", "CLOSED", "MOVING", "STUCK")] == [
        vac.OPENED,
        vac.CLOSED,
        vac.MOVING_OBSERVED,
        vac.STUCK,
    ]
