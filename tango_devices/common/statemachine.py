"""Declarative state machines for device families, without any Tango import.

Each device family declares one table: which hardware observation (trigger)
takes which state to which, and in which states each command is allowed.
The component logic fires triggers from what it observes on the hardware;
commands never set the state. The Tango layer maps :class:`State` to
``tango.DevState`` by name and answers every ``is_<cmd>_allowed`` from
:meth:`StateMachine.check`.

A test walks every (state, trigger) pair and every (state, command) pair of
each table, so the table is the single place where behaviour is decided.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


class State(enum.Enum):
    """The Tango device states used by the suite (names match tango.DevState)."""

    ON = "ON"
    OFF = "OFF"
    CLOSE = "CLOSE"
    OPEN = "OPEN"
    MOVING = "MOVING"
    RUNNING = "RUNNING"
    ALARM = "ALARM"
    FAULT = "FAULT"
    DISABLE = "DISABLE"
    INIT = "INIT"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


class TransitionRefused(Exception):
    """A trigger that the table does not allow in the current state."""

    def __init__(self, machine: str, state: State, trigger: str) -> None:
        self.state = state
        self.trigger = trigger
        super().__init__(f"{machine}: trigger '{trigger}' is not allowed in state {state}")


class CommandRefused(Exception):
    """A command (or attribute write) that is not allowed in the current state."""

    def __init__(self, command: str, state: State, allowed: Iterable[State], reason: str = ""):
        self.command = command
        self.state = state
        self.allowed = tuple(sorted(allowed, key=lambda s: s.value))
        allowed_text = ", ".join(str(s) for s in self.allowed) or "no state"
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"{command} is not allowed in state {state}{detail}; allowed in: {allowed_text}"
        )


@dataclass(frozen=True)
class Transition:
    trigger: str
    source: State
    dest: State


def from_any(states: Iterable[State], dest: State) -> dict[State, State]:
    """A transition accepted in every state (observation triggers: the
    hardware is the truth, whatever the device believed before)."""
    return {s: dest for s in states}


class StateTable:
    """The declarative part: transitions and command permissions of one family.

    ``transitions`` maps a trigger to ``{source_state: dest_state}``; a
    (state, trigger) pair missing from it is refused. ``commands`` maps a
    command (or ``write_<Attribute>``) to the states in which it is allowed.
    """

    def __init__(
        self,
        name: str,
        states: Iterable[State],
        initial: State,
        transitions: Mapping[str, Mapping[State, State]],
        commands: Mapping[str, Iterable[State]],
    ) -> None:
        self.name = name
        self.states = frozenset(states)
        self.initial = initial
        self.transitions = {t: dict(m) for t, m in transitions.items()}
        self.commands = {c: frozenset(s) for c, s in commands.items()}
        self._validate()

    def _validate(self) -> None:
        if self.initial not in self.states:
            raise ValueError(f"{self.name}: initial state {self.initial} is not a state")
        for trigger, mapping in self.transitions.items():
            for src, dst in mapping.items():
                if src not in self.states or dst not in self.states:
                    raise ValueError(f"{self.name}: {trigger}: {src}->{dst} uses unknown state")
        for command, allowed in self.commands.items():
            unknown = allowed - self.states
            if unknown:
                raise ValueError(f"{self.name}: {command} allowed in unknown states {unknown}")

    @property
    def triggers(self) -> list[str]:
        return sorted(self.transitions)

    def next_state(self, state: State, trigger: str) -> State | None:
        """The destination of ``trigger`` from ``state``, or None if refused."""
        if trigger not in self.transitions:
            raise KeyError(f"{self.name}: unknown trigger '{trigger}'")
        return self.transitions[trigger].get(state)

    def allowed(self, command: str, state: State) -> bool:
        if command not in self.commands:
            raise KeyError(f"{self.name}: unknown command '{command}'")
        return state in self.commands[command]


StateListener = Callable[[State, State, str], None]


class StateMachine:
    """The live part: current state, status text and listeners.

    Thread-safe. Listeners are called outside the lock, after the state has
    changed, with ``(old, new, status)``.
    """

    def __init__(self, table: StateTable, status: str = "Initialising") -> None:
        self.table = table
        self._state = table.initial
        self._status = status
        self._lock = threading.Lock()
        self._listeners: list[StateListener] = []
        self._pending: tuple[State, State, str] | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def status(self) -> str:
        return self._status

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def fire(self, trigger: str, status: str | None = None, notify: bool = True) -> State:
        """Apply ``trigger``; raises :class:`TransitionRefused` (state unchanged).

        Listeners run after the change, outside the lock. With ``notify=False``
        the caller calls :meth:`notify` itself (e.g. after releasing its own
        locks); listeners should then read the current state, not trust the
        order of notifications coming from several threads.
        """
        with self._lock:
            old = self._state
            new = self.table.next_state(old, trigger)
            if new is None:
                raise TransitionRefused(self.table.name, old, trigger)
            changed = new != old or (status is not None and status != self._status)
            self._state = new
            if status is not None:
                self._status = status
            current_status = self._status
        if changed:
            self._pending = (old, new, current_status)
            if notify:
                self.notify()
        return new

    def notify(self) -> None:
        """Call the listeners with the last change (no-op if there was none)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        for listener in list(self._listeners):
            listener(*pending)

    def check(self, command: str, reason: str = "") -> None:
        """Raise :class:`CommandRefused` if ``command`` is not allowed now."""
        state = self._state
        if not self.table.allowed(command, state):
            raise CommandRefused(command, state, self.table.commands[command], reason)

    def is_allowed(self, command: str) -> bool:
        return self.table.allowed(command, self._state)
