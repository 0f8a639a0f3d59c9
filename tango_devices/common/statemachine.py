"""Declarative state machines for device families, without any Tango import.

Each device family declares one table: which hardware observation (trigger)
takes which state to which, and in which states each command is allowed.
The component logic fires triggers from what it observes on the hardware;
commands never set the state. The Tango layer maps :class:`State` to
``tango.DevState`` by name and answers every ``is_<cmd>_allowed`` from
:meth:`StateMachine.check`.

A test walks every (state, trigger) pair and every (state, command) pair of
each table, so the table is the single place where behaviour is decided.

Most families use :class:`State` (the Tango states themselves). A family
whose own states are finer than Tango's (the experiment queue: running and
stopping are both Tango RUNNING) declares its own enum; each member's
``tango`` property names the Tango state it shows as.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


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
    STANDBY = "STANDBY"
    INIT = "INIT"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value

    @property
    def tango(self) -> str:
        """The name of the Tango DevState this state shows as."""
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
        self.allowed = tuple(sorted(allowed, key=str))
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
    ``refusals`` says, per command, why it is refused when the state alone
    explains it better than the device's Status (``"nothing to pause"``).
    """

    def __init__(
        self,
        name: str,
        states: Iterable[Any],
        initial: Any,
        transitions: Mapping[str, Mapping[Any, Any]],
        commands: Mapping[str, Iterable[Any]],
        refusals: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.states = frozenset(states)
        self.initial = initial
        self.transitions = {t: dict(m) for t, m in transitions.items()}
        self.commands = {c: frozenset(s) for c, s in commands.items()}
        self.refusals = dict(refusals or {})
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
        for command in self.refusals:
            if command not in self.commands:
                raise ValueError(f"{self.name}: refusal text for unknown command {command}")

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

    def command_states(self) -> dict[str, list[str]]:
        """Every command with the names of the states that allow it (what the
        devices publish as ``CommandStates`` for clients such as the GUI)."""
        return {c: sorted(s.name for s in states) for c, states in self.commands.items()}


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

    def check(self, command: str, reason: str | None = None) -> None:
        """Raise :class:`CommandRefused` if ``command`` is not allowed now.

        The refusal names the state, the cause and the states that allow the
        command. The cause is ``reason`` if given, else the table's text for
        the command, else the current Status (what the device is doing, or
        why it is in FAULT)."""
        state = self._state
        if not self.table.allowed(command, state):
            if reason is None:
                reason = self.table.refusals.get(command) or self._status
            raise CommandRefused(command, state, self.table.commands[command], reason)

    def is_allowed(self, command: str) -> bool:
        return self.table.allowed(command, self._state)
