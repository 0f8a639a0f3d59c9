"""The TimingUnit (timing / trigger unit) family's one transition table.

The state follows the unit's ``?STATUS``: IDLE is ON, ARMED is STANDBY (the
train checked and waiting for Start), RUNNING is RUNNING (pulses going out).
The train's settings live in the unit and change only while it is idle.
"""

from __future__ import annotations

from tango_devices.common.component import COMM_LOST
from tango_devices.common.statemachine import State, StateTable, from_any

ON, STANDBY, RUNNING, FAULT, INIT = (
    State.ON,
    State.STANDBY,
    State.RUNNING,
    State.FAULT,
    State.INIT,
)
TIMING_STATES = (INIT, ON, STANDBY, RUNNING, FAULT)

IDLE = "idle"
ARMED = "armed"
RUNNING_OBSERVED = "running"

#: the writable settings of a train (attributes), each written only while idle
SETTINGS = (
    "Mode",
    "Delay",
    "Period",
    "Width",
    "Count",
    "Encoder",
    "PositionStart",
    "PositionStep",
)

TIMING_TABLE = StateTable(
    name="TimingUnit",
    states=TIMING_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: from_any(TIMING_STATES, FAULT),
        IDLE: from_any(TIMING_STATES, ON),
        ARMED: from_any(TIMING_STATES, STANDBY),
        RUNNING_OBSERVED: from_any(TIMING_STATES, RUNNING),
    },
    commands={
        "Arm": {ON},
        # the unit arms a train itself when started from idle
        "Start": {ON, STANDBY},
        # no pulse starts after Stop; accepted when idle (a harmless no-op)
        "Stop": {ON, STANDBY, RUNNING},
        "LoadTrain": {ON},
        # the record of the pulses sent is in the unit: readable whenever it answers
        "ReadPulses": {ON, STANDBY, RUNNING},
        **{f"write_{name}": {ON} for name in SETTINGS},
    },
)
