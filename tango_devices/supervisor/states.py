"""The Supervisor's one transition table (no tango).

ON while every supervised server runs or is being healed; ALARM once a crash
loop was given up (the Status names the server and the cause, until
StartServer) or while dead servers wait for the Tango database to restart
them; FAULT while the supervisor cannot read which servers its host
runs (the Starter does not answer). The operator commands need to know the
servers: they are refused in INIT and FAULT.
"""

from __future__ import annotations

from tango_devices.common.statemachine import State, StateTable, from_any

INIT, ON, ALARM, FAULT = State.INIT, State.ON, State.ALARM, State.FAULT
SUPERVISOR_STATES = (INIT, ON, ALARM, FAULT)

HEALTHY = "healthy"
GAVE_UP = "gave_up"
WAITING_FOR_DATABASE = "waiting_for_database"  # servers to restart, the database down
BLIND = "blind"

SUPERVISOR_TABLE = StateTable(
    name="Supervisor",
    states=SUPERVISOR_STATES,
    initial=INIT,
    transitions={
        HEALTHY: from_any(SUPERVISOR_STATES, ON),
        GAVE_UP: from_any(SUPERVISOR_STATES, ALARM),
        WAITING_FOR_DATABASE: from_any(SUPERVISOR_STATES, ALARM),
        BLIND: from_any(SUPERVISOR_STATES, FAULT),
    },
    commands={
        "StopServer": {ON, ALARM},
        "StartServer": {ON, ALARM},
        "RestartServer": {ON, ALARM},
    },
)
