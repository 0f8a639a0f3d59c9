"""The Scaler (counter/timer) family's one transition table."""

from __future__ import annotations

from tango_devices.common.component import COMM_LOST
from tango_devices.common.statemachine import State, StateTable

ON, RUNNING, FAULT, INIT = State.ON, State.RUNNING, State.FAULT, State.INIT
SCALER_STATES = (INIT, ON, RUNNING, FAULT)

COUNTING = "counting"
IDLE = "idle"
MISCONFIGURED = "misconfigured"


def _from_any(dest: State) -> dict[State, State]:
    return {s: dest for s in SCALER_STATES}


SCALER_TABLE = StateTable(
    name="Scaler",
    states=SCALER_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: _from_any(FAULT),
        MISCONFIGURED: _from_any(FAULT),
        COUNTING: _from_any(RUNNING),
        IDLE: _from_any(ON),
    },
    commands={
        "Start": {ON},
        "Stop": {RUNNING, ON},
        "Clear": {ON},
        # the preset lives in the device (memorized) and is sent at each Start
        "write_PresetTime": {INIT, ON, FAULT},
    },
)
