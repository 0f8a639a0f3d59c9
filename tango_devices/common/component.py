"""Base of every component logic: a driver polled in a thread, a state machine
that follows what is observed, automatic reconnection. No Tango import.

A subclass says how to observe its hardware and what an observation means:

- :meth:`on_connect` reads what is only read once per connection;
- :meth:`observe` reads the hardware (raise a ``DriverError`` on failure);
- :meth:`apply` stores an observation in the caches (called under ``_lock``);
- :meth:`classify` turns it into a trigger of the family's table and a Status;
- :meth:`publish_key` says which values the Tango layer publishes (listeners
  run when it changes);
- :meth:`busy` makes the poll faster (moving, counting, acquiring).

Threading rules (they keep the Tango layer free of deadlocks): no lock of this
class is held while a listener runs; state changes are applied in observation
order (an older observation never overrides a newer one); value listeners run
before the state change an observation causes, so a client that sees the new
state also reads the new values.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

from tango_devices.common.statemachine import State, StateMachine, StateTable
from tango_devices.drivers.errors import ControllerRejected, DriverError, LinkError, ProtocolError

log = logging.getLogger(__name__)

#: s without a change or a command before a component with a rest period rests
REST_AFTER = 30.0

COMM_LOST = "comm_lost"


class ComponentError(Exception):
    """A command failed for a reason the operator can act on."""


class Component:
    """A polled piece of hardware. Subclasses set ``table`` and ``hardware``."""

    table: ClassVar[StateTable]
    #: how the Status names the hardware: "the motion controller", "the PLC", ...
    hardware: ClassVar[str] = "the hardware"
    error_class: ClassVar[type[Exception]] = ComponentError

    def __init__(
        self,
        driver: Any,
        where: str,
        *,
        idle_period: float = 0.2,
        busy_period: float = 0.02,
        reconnect_period: float = 1.0,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        initial_status: str | None = None,
        rest_period: float | None = None,
        rest_after: float = REST_AFTER,
    ) -> None:
        """``where`` names the hardware in messages (``"socket://host:1234, axis 3"``).
        ``thread_context`` wraps the poll thread's life (the Tango layer passes
        ``tango.EnsureOmniThread`` so the thread may call into cppTango).
        ``rest_period``: the poll period once neither the published values nor
        the state have changed, and no command was given, for ``rest_after``
        seconds (None: ``idle_period`` always). At 200 servers, most hardware
        is at rest most of the time, and its polls are most of its CPU."""
        self._driver = driver
        self.where = where
        self.rest_period = rest_period
        self.rest_after = rest_after
        self._active_at = time.monotonic()
        self.idle_period = idle_period
        self.busy_period = busy_period
        self.reconnect_period = reconnect_period
        self._thread_context = thread_context
        self.machine = StateMachine(
            self.table, initial_status or f"Connecting to {self.hardware} at {where}"
        )
        self._lock = threading.Lock()  # the caches
        self._poll_lock = threading.Lock()  # one hardware observation at a time
        self._fire_lock = threading.Lock()  # state changes in observation order
        self._seq = 0
        self._fired_seq = 0
        self._link_ok = False
        self._identity = ""
        self._value_listeners: list[Callable[[], None]] = []
        self._observation_listeners: list[Callable[[], None]] = []
        self._published: Hashable = object()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ subclass API
    def on_connect(self) -> None:
        """Read what is read once per connection (may raise DriverError)."""

    def observe(self) -> Any:
        """Read the hardware once; raise a DriverError when it cannot."""
        raise NotImplementedError

    def apply(self, observation: Any) -> None:
        """Store ``observation`` in the caches (called with ``_lock`` held)."""

    def classify(self, observation: Any) -> tuple[str, str]:
        """The trigger of ``table`` and the Status text for ``observation``."""
        raise NotImplementedError

    def publish_key(self) -> Hashable:
        """The published values; listeners run whenever this changes."""
        return None

    def busy(self) -> bool:
        return False

    def on_link_lost(self) -> None:
        """Update the caches when the link is lost (called with ``_lock`` held)."""

    # ---------------------------------------------------------------- life
    def start_polling(self) -> None:
        """Start polling in the background; returns at once (never blocks on hardware)."""
        if self._thread and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.where}", daemon=True)
        self._thread.start()

    def stop_polling(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._driver.close()

    def wait_until_known(self, timeout: float) -> bool:
        """Wait until the first observation has been made (state left INIT)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.machine.state is not State.INIT:
                return True
            time.sleep(0.01)
        return self.machine.state is not State.INIT

    def add_value_listener(self, listener: Callable[[], None]) -> None:
        """Called (from any thread) when :meth:`publish_key` changed, before any
        state change the same observation causes."""
        self._value_listeners.append(listener)

    def add_observation_listener(self, listener: Callable[[], None]) -> None:
        """Called (from the poll thread) after every observation of the
        hardware, successful or not, once its state change is done."""
        self._observation_listeners.append(listener)

    def republish(self) -> None:
        """Have the next observation call the value listeners even if nothing changed."""
        self._published = object()
        self._wake.set()

    def wake(self) -> None:
        """Poll now instead of at the next period."""
        self._wake.set()

    def _run(self) -> None:
        with self._thread_context():
            while not self._stopping.is_set():
                if not self._driver.connected and not self._try_connect():
                    self._sleep(self.reconnect_period)
                    continue
                self.poll_once()
                self._sleep(self.period())

    def period(self) -> float:
        """How long until the next poll: busy, idle, or at rest."""
        if self.busy():
            return self.busy_period
        resting = time.monotonic() - self._active_at >= self.rest_after
        if self.rest_period is not None and resting:
            return max(self.rest_period, self.idle_period)
        return self.idle_period

    def _activity(self) -> None:
        """Something changed or was commanded: poll at the idle period again."""
        self._active_at = time.monotonic()

    def _sleep(self, period: float) -> None:
        self._wake.wait(period)
        self._wake.clear()

    def _try_connect(self) -> bool:
        try:
            identity = self._driver.connect()
            self.on_connect()
        except DriverError as exc:
            self._driver.close()
            self._lost(self._next_seq(), exc)
            return False
        with self._lock:
            self._identity = str(identity)
        log.info("connected to %s (%s)", self.where, identity)
        return True

    # ------------------------------------------------------------ observing
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def status(self) -> str:
        return self.machine.status

    @property
    def link_ok(self) -> bool:
        return self._link_ok

    @property
    def identity(self) -> str:
        return self._identity

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def poll_once(self) -> None:
        """Observe the hardware once and let the state follow."""
        state_before = self.machine.state
        with self._poll_lock:
            seq = self._next_seq()
            try:
                observation = self.observe()
            except DriverError as exc:
                if not isinstance(exc, ControllerRejected):
                    self._driver.close()
                failure: DriverError | None = exc
            else:
                failure = None
                with self._lock:
                    self._link_ok = True
                    self.apply(observation)
        if failure is not None:
            self._lost(seq, failure)
        else:
            self._publish()
            trigger, text = self.classify(observation)
            self._fire(seq, trigger, text)
        if self.machine.state is not state_before:
            self._activity()
        for listener in list(self._observation_listeners):
            try:
                listener()
            except Exception:  # a listener must never stop the poll thread
                log.exception("observation listener failed")

    def _lost(self, seq: int, exc: DriverError) -> None:
        with self._lock:
            self._link_ok = False
            self.on_link_lost()
        self._publish()
        self._fire(seq, COMM_LOST, self.failure_text(exc))

    def failure_text(self, exc: DriverError) -> str:
        if isinstance(exc, ProtocolError):
            what = f"Garbled reply from {self.hardware}"
        elif isinstance(exc, ControllerRejected):
            what = f"{self.hardware[0].upper()}{self.hardware[1:]} refused the status request"
        else:
            what = f"No link to {self.hardware}"
        return (
            f"{what} ({self.where}): {exc}. Retrying every {self.reconnect_period:g} s; the state "
            "recovers by itself when it answers again (check its power, cable or network)."
        )

    def _fire(self, seq: int, trigger: str, text: str) -> None:
        with self._fire_lock:
            if seq < self._fired_seq:
                return  # a newer observation has already decided the state
            self._fired_seq = seq
            self.machine.fire(trigger, text, notify=False)
        self.machine.notify()

    def _publish(self) -> None:
        key = self.publish_key()
        if key == self._published:
            return
        self._published = key
        self._activity()  # a value changed: not at rest
        for listener in list(self._value_listeners):
            try:
                listener()
            except Exception:  # a listener must never stop the poll thread
                log.exception("value listener failed")

    # -------------------------------------------------------------- commands
    def require(self, command: str) -> None:
        """Refuse ``command`` in the wrong state (the same refusal as the device's)."""
        self.machine.check(command)

    def call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a driver call; turn driver failures into ``error_class`` naming ``what``.

        Wakes the poll thread: what the command changed (a move, a count, an
        acquisition) is then followed at the busy poll rate at once, not after
        the rest of an idle period."""
        self._activity()
        try:
            result = fn(*args)
            self._wake.set()
            return result
        except ControllerRejected as exc:
            raise self.error_class(
                f"{what} refused by {self.hardware}: {exc.text} (error {exc.code})"
            ) from exc
        except (LinkError, ProtocolError) as exc:
            self._wake.set()  # let the poller notice and reconnect
            raise self.error_class(f"{what} failed: {exc}") from exc
