"""The EventRelay's one transition table (no tango).

ON while it relays the events of every server of its port plan; ALARM while
some server's ports cannot be bound (another process holds them: the Status
names the ports and the server; it tries again every few seconds and goes
back to ON by itself); OFF when there is nothing to relay (no plan, or the
suite was built without the shim: servers then publish their events
themselves, as Tango does). Reload re-reads the plan (servers added or
removed) in every state but INIT.
"""

from __future__ import annotations

from tango_devices.common.statemachine import State, StateTable, from_any

INIT, ON, ALARM, OFF = State.INIT, State.ON, State.ALARM, State.OFF
RELAY_STATES = (INIT, ON, ALARM, OFF)

RELAYING = "relaying"
CLASH = "clash"
IDLE = "idle"

RELAY_TABLE = StateTable(
    name="EventRelay",
    states=RELAY_STATES,
    initial=INIT,
    transitions={
        RELAYING: from_any(RELAY_STATES, ON),
        CLASH: from_any(RELAY_STATES, ALARM),
        IDLE: from_any(RELAY_STATES, OFF),
    },
    commands={
        "Reload": {ON, ALARM, OFF},
    },
)
