"""The Scaler (counter/timer) family's one transition table."""

from __future__ import annotations

from tango_devices.common.component import COMM_LOST
from tango_devices.common.statemachine import State, StateTable, from_any

ON, RUNNING, FAULT, INIT = State.ON, State.RUNNING, State.FAULT, State.INIT
SCALER_STATES = (INIT, ON, RUNNING, FAULT)

COUNTING = "counting"
#: armed for gated buffered counting (hardware triggers): taking points
BUFFERING = "buffering"
IDLE = "idle"
MISCONFIGURED = "misconfigured"


SCALER_TABLE = StateTable(
    name="Scaler",
    states=SCALER_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: from_any(SCALER_STATES, FAULT),
        MISCONFIGURED: from_any(SCALER_STATES, FAULT),
        COUNTING: from_any(SCALER_STATES, RUNNING),
        BUFFERING: from_any(SCALER_STATES, RUNNING),
        IDLE: from_any(SCALER_STATES, ON),
    },
    commands={
        "Start": {ON},
        # PresetTime (stored when it changes) and Start in one call
        "Count": {ON},
        # Stop also disarms the gated buffer
        "Stop": {RUNNING, ON},
        "Clear": {ON},
        "ArmBuffer": {ON},
        # the buffer's points are readable while it takes more, and after
        "ReadBuffer": {ON, RUNNING},
        # the preset lives in the device (memorized) and is sent at each Start
        "write_PresetTime": {INIT, ON, FAULT},
    },
)
