"""The DataLogger's one transition table (no tango).

INIT until the archive directory is open; then every write cycle classifies
what it saw: ON (archiving), ALARM (events were dropped in the last minute or
the backlog is above half its limit: data is being lost or soon will be),
FAULT (the archive cannot be written: directory, disk, another logger on the
same directory; it retries every cycle). Queries read what is on disk and are
allowed in every state.
"""

from __future__ import annotations

from tango_devices.common.statemachine import State, StateTable, from_any

INIT, ON, ALARM, FAULT = State.INIT, State.ON, State.ALARM, State.FAULT
LOGGER_STATES = (INIT, ON, ALARM, FAULT)

ARCHIVING = "archiving"
DEGRADED = "degraded"
STORE_FAILED = "store_failed"
REINIT = "reinit"

LOGGER_TABLE = StateTable(
    name="DataLogger",
    states=LOGGER_STATES,
    initial=INIT,
    transitions={
        ARCHIVING: from_any(LOGGER_STATES, ON),
        DEGRADED: from_any(LOGGER_STATES, ALARM),
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
