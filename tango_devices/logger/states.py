"""The DataLogger's one transition table (no tango).

INIT until the archive directory is open; then every write cycle classifies
what it saw: ON (archiving), ALARM (data is being lost or soon will be:
events were dropped in the last minute, the backlog is above half its limit,
or the archive's disk is full), FAULT (the archive cannot be written for
another reason: the directory is unusable, an I/O error, another logger on
the same directory; it retries every cycle). Queries read what is on disk and
are allowed in every state.

A full disk is ALARM, not FAULT: the logger itself is sound (it receives
events, answers queries, counts what it cannot write) and goes back to ON by
itself when space returns; it is the level of a resource that is out of
range, as a pressure above its alarm threshold is. Flush is allowed in ALARM
but refused while the disk is full (it would acknowledge what is not stored).
"""

from __future__ import annotations

from tango_devices.common.statemachine import State, StateTable, from_any

INIT, ON, ALARM, FAULT = State.INIT, State.ON, State.ALARM, State.FAULT
LOGGER_STATES = (INIT, ON, ALARM, FAULT)

ARCHIVING = "archiving"
DEGRADED = "degraded"
DISK_FULL = "disk_full"
STORE_FAILED = "store_failed"
REINIT = "reinit"

LOGGER_TABLE = StateTable(
    name="DataLogger",
    states=LOGGER_STATES,
    initial=INIT,
    transitions={
        ARCHIVING: from_any(LOGGER_STATES, ON),
        DEGRADED: from_any(LOGGER_STATES, ALARM),
        DISK_FULL: from_any(LOGGER_STATES, ALARM),
        STORE_FAILED: from_any(LOGGER_STATES, FAULT),
        REINIT: from_any(LOGGER_STATES, INIT),
    },
    commands={
        "GetHistory": set(LOGGER_STATES),
        "GetConfigurationAt": set(LOGGER_STATES),
        "ListArchived": set(LOGGER_STATES),
        "Flush": {ON, ALARM},
        "Rescan": {ON, ALARM, FAULT},
    },
)
