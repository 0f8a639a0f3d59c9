"""The vacuum families' transition tables: gauge and valve (state follows the IOC)."""

from __future__ import annotations

from tango_devices.common.component import COMM_LOST
from tango_devices.common.statemachine import State, StateTable, from_any

ON, ALARM, FAULT, INIT = State.ON, State.ALARM, State.FAULT, State.INIT
OPEN, CLOSE, MOVING = State.OPEN, State.CLOSE, State.MOVING

GAUGE_STATES = (INIT, ON, ALARM, FAULT)
INVALID = "invalid"
ABOVE_ALARM = "above_alarm"
NORMAL = "normal"

VALVE_STATES = (INIT, OPEN, CLOSE, MOVING, FAULT)
STUCK = "stuck"
MOVING_OBSERVED = "moving"
OPENED = "opened"
CLOSED = "closed"


GAUGE_TABLE = StateTable(
    name="VacuumGauge",
    states=GAUGE_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: from_any(GAUGE_STATES, FAULT),
        INVALID: from_any(GAUGE_STATES, FAULT),
        ABOVE_ALARM: from_any(GAUGE_STATES, ALARM),
        NORMAL: from_any(GAUGE_STATES, ON),
    },
    commands={},
)

VALVE_TABLE = StateTable(
    name="Valve",
    states=VALVE_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: from_any(VALVE_STATES, FAULT),
        STUCK: from_any(VALVE_STATES, FAULT),
        MOVING_OBSERVED: from_any(VALVE_STATES, MOVING),
        OPENED: from_any(VALVE_STATES, OPEN),
        CLOSED: from_any(VALVE_STATES, CLOSE),
    },
    commands={
        "Open": {CLOSE, OPEN},
        # closing (isolating) is always attempted while the IOC answers
        "Close": {OPEN, CLOSE, MOVING, FAULT},
    },
)

EPICS_INVALID_SEVERITY = 3
#: once in ALARM, the pressure must fall below this fraction of the threshold
#: to leave it, so a noisy reading at the threshold does not flap the state
ALARM_HYSTERESIS = 0.9


def classify_gauge(
    pressure: float, severity: int, alarm_above: float | None, in_alarm: bool = False
) -> str:
    if severity >= EPICS_INVALID_SEVERITY:
        return INVALID
    if alarm_above is not None:
        limit = alarm_above * ALARM_HYSTERESIS if in_alarm else alarm_above
        if pressure > limit:
            return ABOVE_ALARM
    return NORMAL


def classify_valve(state: str) -> str:
    return {"OPEN": OPENED, "CLOSED": CLOSED, "MOVING": MOVING_OBSERVED}.get(state, STUCK)
