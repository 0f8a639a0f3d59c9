"""The Motor family's one transition table.

The state follows what is observed on the controller. Each poll of the axis
is classified into exactly one trigger (:func:`classify`), in this order of
precedence: the link is lost or garbled, the axis reports a fault, the
interlock input is active, the amplifier is off, the axis is moving, a limit
switch is active, or the axis is idle. Observation triggers are accepted in
every state (the hardware is the truth); what the table refuses are commands
and attribute writes in the wrong state.
"""

from __future__ import annotations

from tango_devices.common.statemachine import State, StateTable, from_any

ON, OFF, MOVING, ALARM, FAULT, DISABLE, INIT = (
    State.ON,
    State.OFF,
    State.MOVING,
    State.ALARM,
    State.FAULT,
    State.DISABLE,
    State.INIT,
)
MOTOR_STATES = (INIT, ON, MOVING, ALARM, FAULT, OFF, DISABLE)

# Observation triggers, in order of precedence.
COMM_LOST = "comm_lost"
HW_FAULT = "hw_fault"
INTERLOCKED = "interlocked"
POWERED_OFF = "powered_off"
MOVING_OBSERVED = "moving"
AT_LIMIT = "at_limit"
IDLE = "idle"
# Lifecycle trigger: the device (re)initialises and waits for the hardware.
REINIT = "reinit"


MOTOR_TABLE = StateTable(
    name="Motor",
    states=MOTOR_STATES,
    initial=INIT,
    transitions={
        COMM_LOST: from_any(MOTOR_STATES, FAULT),
        HW_FAULT: from_any(MOTOR_STATES, FAULT),
        INTERLOCKED: from_any(MOTOR_STATES, DISABLE),
        POWERED_OFF: from_any(MOTOR_STATES, OFF),
        MOVING_OBSERVED: from_any(MOTOR_STATES, MOVING),
        AT_LIMIT: from_any(MOTOR_STATES, ALARM),
        IDLE: from_any(MOTOR_STATES, ON),
        REINIT: from_any(MOTOR_STATES, INIT),
    },
    commands={
        "On": {OFF, ON, ALARM, FAULT},
        "Off": {ON, ALARM, OFF, FAULT},
        # Stop is a safety command: accepted whenever the device can talk.
        "Stop": {ON, MOVING, ALARM, FAULT, OFF, DISABLE},
        "Home": {ON, ALARM},
        "SetPosition": {ON, ALARM, OFF},
        "Reset": {FAULT, ON, ALARM, OFF},
        "write_Position": {ON, ALARM},
        "write_Velocity": {ON, ALARM, OFF, DISABLE},
        "write_Acceleration": {ON, ALARM, OFF, DISABLE},
        # The offset lives in the device (memorized), not in the hardware; it
        # is restored while the device is still in INIT.
        "write_Offset": {INIT, ON, ALARM, OFF, DISABLE, FAULT},
    },
)


def classify(link_ok: bool, status) -> str:
    """The trigger for one observation of the axis.

    ``status`` is a driver ``AxisStatus`` (or None when the link is down).
    """
    if not link_ok or status is None:
        return COMM_LOST
    if status.fault:
        return HW_FAULT
    if status.interlock:
        return INTERLOCKED
    if not status.powered:
        return POWERED_OFF
    if status.moving or status.homing:
        return MOVING_OBSERVED
    if status.low_limit or status.high_limit:
        return AT_LIMIT
    return IDLE
