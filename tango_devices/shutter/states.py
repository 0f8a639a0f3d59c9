"""The Shutter family's one transition table (state follows the PLC)."""

from __future__ import annotations

from tango_devices.common.component import COMM_LOST
from tango_devices.common.statemachine import State, StateTable, from_any

OPEN, CLOSE, MOVING, DISABLE, FAULT, INIT = (
    State.OPEN,
    State.CLOSE,
    State.MOVING,
    State.DISABLE,
    State.FAULT,
    State.INIT,
)
SHUTTER_STATES = (INIT, OPEN, CLOSE, MOVING, DISABLE, FAULT)

HW_FAULT = "hw_fault"
INTERLOCKED = "interlocked"
MOVING_OBSERVED = "moving"
OPENED = "opened"
CLOSED = "closed"


SHUTTER_TABLE = StateTable(
    name="Shutter",
    states=SHUTTER_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: from_any(SHUTTER_STATES, FAULT),
        HW_FAULT: from_any(SHUTTER_STATES, FAULT),
        INTERLOCKED: from_any(SHUTTER_STATES, DISABLE),
        MOVING_OBSERVED: from_any(SHUTTER_STATES, MOVING),
        OPENED: from_any(SHUTTER_STATES, OPEN),
        CLOSED: from_any(SHUTTER_STATES, CLOSE),
    },
    commands={
        "Open": {CLOSE, OPEN},
        # Closing is the safe direction: always tried when the PLC can be reached.
        "Close": {OPEN, CLOSE, MOVING, DISABLE, FAULT},
        "Reset": {FAULT, OPEN, CLOSE, DISABLE},
    },
)


def classify(state: str, interlock: bool) -> str:
    """The trigger for one PLC status (``state``: OPEN, CLOSED, MOVING, FAULT)."""
    if state == "FAULT":
        return HW_FAULT
    if interlock:
        return INTERLOCKED
    if state == "MOVING":
        return MOVING_OBSERVED
    if state == "OPEN":
        return OPENED
    if state == "CLOSED":
        return CLOSED
    return HW_FAULT
