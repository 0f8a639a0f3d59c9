"""Client drivers for EPICS vacuum gauges and valves (pyepics, Channel Access).

The PVs (``docs/epics-ioc.md``), for a ``pv_base`` such as ``BL01:VAC:GAUGE1``:

- gauge: ``<pv_base>:PRES`` (mbar, with HIGH/HIHI alarms), ``<pv_base>:STAT`` (OK/LEAK);
- valve: ``<pv_base>:CMD`` (0 close, 1 open), ``<pv_base>:STATE`` (CLOSED,
  OPEN, MOVING, STUCK).

Values are monitored: readings are the cached last values, and listeners
(:meth:`add_listener`) are called from pyepics' thread on every value or
connection change. A disconnected PV makes readings raise
:class:`~tango_devices.drivers.errors.LinkError`; the channels reconnect by
themselves when the IOC is back (``connected`` says when).

Call :func:`tango_devices.drivers.epics_ca.configure` with the IOC's address
first if the process environment does not point Channel Access at it.
No ``tango`` import.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tango_devices.drivers.epics_ca import Channels, severity_name, status_name
from tango_devices.drivers.errors import ControllerRejected, LinkError

Listener = Callable[[], None]

log = logging.getLogger(__name__)


class _EpicsDevice:
    """What the gauge and the valve share: their channels and listeners."""

    kind = "EPICS device"

    def __init__(self, pv_base: str, suffixes: tuple[str, ...], timeout: float):
        if not pv_base or any(c.isspace() for c in pv_base):
            raise ValueError(
                f"pv_base must be a PV name prefix such as BL01:VAC:GAUGE1, got {pv_base!r}"
            )
        self.pv_base = pv_base
        self.timeout = timeout
        self._pv = {suffix: f"{pv_base}:{suffix}" for suffix in suffixes}
        self._listeners: list[Listener] = []
        self._channels = Channels(list(self._pv.values()), monitor=True, on_change=self._notify)

    # ------------------------------------------------------------ link
    def connect(self) -> str:
        """Create the channels and wait up to ``timeout`` for all of them (and
        their first values); returns an identity string. Raises
        :class:`LinkError` naming the PVs that did not connect (they keep
        searching: ``connected`` turns true when the IOC answers)."""
        self._channels.open()
        missing = self._channels.wait(self.timeout)
        if missing:
            raise LinkError(
                f"{', '.join(missing)} did not connect within {self.timeout:g} s: check that the "
                "IOC runs and that EPICS_CA_ADDR_LIST (or the driver's address list) reaches it"
            )
        self.on_connect()
        return f"{self.kind} {self.pv_base}"

    def on_connect(self) -> None:
        """Read what is read once per connection."""

    @property
    def connected(self) -> bool:
        """Every PV connected right now."""
        return self._channels.connected

    def close(self) -> None:
        """Clear the channels (idempotent); listeners are no longer called."""
        self._channels.close()

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback()`` (from pyepics' thread) on every value or
        connection change; it then reads the cached values."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must not break pyepics' thread
                log.exception("listener of %s failed", self.pv_base)


class VacuumGauge(_EpicsDevice):
    """A vacuum gauge: ``<pv_base>:PRES`` and ``<pv_base>:STAT``."""

    kind = "EPICS vacuum gauge"

    def __init__(self, pv_base: str, timeout: float = 1.0):
        super().__init__(pv_base, ("PRES", "STAT"), timeout)

    def pressure(self) -> float:
        """The last pressure reading, mbar (:class:`LinkError` if disconnected)."""
        return float(self._channels.value(self._pv["PRES"]))

    def alarm(self) -> tuple[int, str]:
        """The pressure's alarm: (severity 0..3, status name such as ``HIHI``)."""
        severity, status = self._channels.alarm(self._pv["PRES"])
        return severity, status_name(status)

    def alarm_text(self) -> str:
        """``MAJOR HIHI``-style text, ``NO_ALARM`` when there is none."""
        severity, status = self.alarm()
        return "NO_ALARM" if severity == 0 else f"{severity_name(severity)} {status}"

    def leak_detected(self) -> bool:
        """The gauge controller's leak detector (``:STAT`` is LEAK)."""
        return int(self._channels.value(self._pv["STAT"])) == 1


class VacuumValve(_EpicsDevice):
    """A vacuum valve: ``<pv_base>:CMD`` and ``<pv_base>:STATE``.

    ``open_valve`` / ``close_valve`` command it (``close`` closes the link, as
    in every driver).
    """

    kind = "EPICS vacuum valve"
    STATES = ("CLOSED", "OPEN", "MOVING", "STUCK")

    def __init__(self, pv_base: str, timeout: float = 1.0, travel_timeout: float = 5.0):
        super().__init__(pv_base, ("CMD", "STATE"), timeout)
        self.travel_timeout = travel_timeout
        self._states: tuple[str, ...] = self.STATES
        self._changed = threading.Condition()
        self.add_listener(self._wake)

    def on_connect(self) -> None:
        self._states = self._channels.enum_strings(self._pv["STATE"], self.timeout)

    def state(self) -> str:
        """CLOSED, OPEN, MOVING or STUCK (:class:`LinkError` if disconnected)."""
        index = int(self._channels.value(self._pv["STATE"]))
        return self._states[index] if 0 <= index < len(self._states) else f"UNKNOWN({index})"

    def open_valve(self, wait: bool = False) -> None:
        """Command the valve open; with ``wait``, until it reports OPEN."""
        self._command(True, wait)

    def close_valve(self, wait: bool = False) -> None:
        """Command the valve closed; with ``wait``, until it reports CLOSED."""
        self._command(False, wait)

    def _command(self, open_: bool, wait: bool) -> None:
        self._channels.put(self._pv["CMD"], 1 if open_ else 0, self.timeout)
        if wait:
            self.wait_for("OPEN" if open_ else "CLOSED", self.travel_timeout)

    def wait_for(self, wanted: str, timeout: float) -> None:
        """Wait until the valve reports ``wanted``. :class:`ControllerRejected`
        if it reports STUCK or is still elsewhere after ``timeout`` s, with a
        grace of one monitor round trip for the command to show."""
        deadline = time.monotonic() + timeout
        grace = time.monotonic() + min(self.timeout, 0.5)
        with self._changed:
            while True:
                state = self.state()
                if state == wanted:
                    return
                if state == "STUCK" and time.monotonic() >= grace:
                    raise ControllerRejected(
                        0, f"valve {self.pv_base} is STUCK: it did not reach {wanted}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ControllerRejected(
                        0,
                        f"valve {self.pv_base} is {state}, not {wanted}, "
                        f"{timeout:g} s after the command",
                    )
                self._changed.wait(min(remaining, 0.1))

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
