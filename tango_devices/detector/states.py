"""The Detector (2D camera) family's one transition table."""

from __future__ import annotations

from tango_devices.common.component import COMM_LOST
from tango_devices.common.statemachine import State, StateTable, from_any

ON, RUNNING, FAULT, INIT = State.ON, State.RUNNING, State.FAULT, State.INIT
DETECTOR_STATES = (INIT, ON, RUNNING, FAULT)

ACQUIRING = "acquiring"
IDLE = "idle"


DETECTOR_TABLE = StateTable(
    name="Detector",
    states=DETECTOR_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: from_any(DETECTOR_STATES, FAULT),
        ACQUIRING: from_any(DETECTOR_STATES, RUNNING),
        IDLE: from_any(DETECTOR_STATES, ON),
    },
    commands={
        "Snap": {ON},
        "Start": {ON},
        "Stop": {RUNNING, ON},
        # acquisition settings live in the device (memorized), sent at each start
        "write_ExposureTime": {INIT, ON, FAULT},
        "write_AcquisitionMode": {INIT, ON, FAULT},
        "write_NumberOfFrames": {INIT, ON, FAULT},
        "write_TriggerMode": {INIT, ON, FAULT},
        # frames of an external-trigger acquisition, by number, while it runs and after
        "ReadFrame": {ON, RUNNING},
        # the ROI is evaluated by the device on every frame: change it any time
        "write_Roi": {INIT, ON, RUNNING, FAULT},
    },
)
