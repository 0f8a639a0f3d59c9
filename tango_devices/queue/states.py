"""The experiment queue's one transition table (no tango).

The queue's own states are finer than Tango's: ``running`` (items are taken
one after another) and ``stopping`` (the running item finishes, then the
queue goes idle) both show as Tango RUNNING; ``paused`` shows as STANDBY,
``idle`` as ON. (While running but blocked by an interlock or a device that
is down, the device shows ALARM: that is the device's view, not a state of
the queue.) The logic fires the triggers below; the device answers every
``is_*_allowed`` from ``commands`` and publishes them as ``CommandStates``,
from which the GUI enables its buttons. A few refusals also depend on more
than the state (no macro is running, no pause is pending): the logic checks
those itself, with the same kind of message.
"""

from __future__ import annotations

import enum

from tango_devices.common.statemachine import StateTable, from_any


class QueueState(enum.StrEnum):
    """The queue's states; their values are what ``QueueState`` publishes."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"

    @property
    def tango(self) -> str:
        return _TANGO[self]


_TANGO = {
    QueueState.IDLE: "ON",
    QueueState.RUNNING: "RUNNING",
    QueueState.STOPPING: "RUNNING",
    QueueState.PAUSED: "STANDBY",
}

IDLE, RUNNING, STOPPING, PAUSED = (
    QueueState.IDLE,
    QueueState.RUNNING,
    QueueState.STOPPING,
    QueueState.PAUSED,
)
QUEUE_STATES = (IDLE, RUNNING, STOPPING, PAUSED)

# triggers
START = "start"  # Start, or a queue that was running when its process died
STOP_AFTER_ITEM = "stop_after_item"  # Stop while an item runs
CANCEL_STOP = "cancel_stop"
PAUSE = "pause"  # Pause now, or a deferred pause reached between items
RESTORE_PAUSED = "restore_paused"  # the queue was paused when its process died
RESUME_RUNNING = "resume_running"
RESUME_STOPPING = "resume_stopping"  # resumed after a Stop given while paused
RESUME_IDLE = "resume_idle"
WENT_IDLE = "went_idle"  # stopped, emptied, or an item ended in a way that stops it

ANY = set(QUEUE_STATES)
EDITS = ("Add", "AddBatch", "Update", "Move", "Remove", "Duplicate", "Clear")
QUERIES = ("Get", "History", "HistoryClear")
MACRO_ACTIONS = ("StopMacro", "AbortMacro", "HaltMacro")

QUEUE_TABLE = StateTable(
    name="ExperimentQueue",
    states=QUEUE_STATES,
    initial=IDLE,
    transitions={
        START: {IDLE: RUNNING, RUNNING: RUNNING, STOPPING: RUNNING},
        STOP_AFTER_ITEM: {RUNNING: STOPPING, STOPPING: STOPPING},
        CANCEL_STOP: {STOPPING: RUNNING},
        PAUSE: {RUNNING: PAUSED, STOPPING: PAUSED},
        RESTORE_PAUSED: {IDLE: PAUSED, PAUSED: PAUSED},
        RESUME_RUNNING: {PAUSED: RUNNING},
        RESUME_STOPPING: {PAUSED: STOPPING},
        RESUME_IDLE: {PAUSED: IDLE},
        WENT_IDLE: from_any(QUEUE_STATES, IDLE),
    },
    commands={
        # the queue may be edited and read whatever it is doing
        **{name: ANY for name in EDITS + QUERIES},
        "Start": {IDLE, RUNNING, STOPPING},
        "Stop": ANY,  # idempotent: a script may always make sure the queue stops
        "StopCancel": {STOPPING},
        "Pause": {RUNNING, STOPPING},
        # also cancels a deferred pause that has not taken effect yet
        "Resume": {PAUSED, RUNNING, STOPPING},
        # a macro may still run while the queue is idle (an abort that did not
        # end it): the logic refuses them when no macro runs
        **{name: ANY for name in MACRO_ACTIONS},
    },
    refusals={
        "Start": "the queue is paused: Resume it",
        "StopCancel": "no stop is pending",
        "Pause": "nothing to pause",
        "Resume": "the queue is not paused",
    },
)
