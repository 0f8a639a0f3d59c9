"""Client driver for the front-end shutter PLC (``docs/protocol-plc.md``).

Works over any pyserial URL (``socket://host:port`` for the simulator or a
terminal server, a serial port on real hardware). No ``tango`` import; no
dependency on the simulators. Errors: see :mod:`tango_devices.drivers.line_client`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tango_devices.drivers.line_client import LineClient, none_or_text

STATES = ("OPEN", "CLOSED", "MOVING", "FAULT")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ShutterStatus:
    """One shutter as the PLC reports it.

    ``state`` is ``OPEN``, ``CLOSED``, ``MOVING`` or ``FAULT``; ``interlock``
    is True while an interlock is active (OPEN is then refused) and
    ``interlock_text`` names it (None when there is none).
    """

    state: str
    interlock: bool
    interlock_text: str | None


def _shutter(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"shutter must be a name such as 'fe' (a letter, then letters, digits, '_' or '-'), "
            f"got {name!r}"
        )
    return name


def _parse_state(result: str) -> tuple[str, bool]:
    state, flag = result.split()
    if state not in STATES:
        raise ValueError(f"unknown shutter state {state!r} (expected {', '.join(STATES)})")
    if flag not in ("0", "1"):
        raise ValueError(f"interlock flag must be 0 or 1, got {flag!r}")
    return state, flag == "1"


class ShutterPlc(LineClient):
    """One link to a shutter PLC (all of its shutters); thread-safe.

    ``open`` is refused while an interlock is active: it raises
    :class:`~tango_devices.drivers.errors.ControllerRejected` whose ``text``
    is the PLC's message naming the interlock, and the link stays open.
    """

    def shutters(self) -> list[str]:
        """The names of the PLC's shutters."""
        return self.query("?SHUTTERS", str.split)

    def read_status(self, shutter: str) -> ShutterStatus:
        """State and interlock of ``shutter`` (and the interlock's text when active)."""
        name = _shutter(shutter)
        state, interlock = self.query(f"{name}:?STATE", _parse_state)
        text = self.query(f"{name}:?ILK", none_or_text) if interlock else None
        return ShutterStatus(state, interlock, text)

    def read_interlock(self, shutter: str) -> str | None:
        """The text of the active interlock(s), None when there is none."""
        return self.query(f"{_shutter(shutter)}:?ILK", none_or_text)

    def read_fault(self, shutter: str) -> str | None:
        """The text of the latched fault, None when there is none."""
        return self.query(f"{_shutter(shutter)}:?FAULT", none_or_text)

    def open(self, shutter: str) -> None:
        """Start opening ``shutter``; returns once the PLC accepted it."""
        self.command(f"{_shutter(shutter)}:OPEN")

    def close_shutter(self, shutter: str) -> None:
        """Start closing ``shutter`` (``close()`` closes the link)."""
        self.command(f"{_shutter(shutter)}:CLOSE")

    def reset(self, shutter: str) -> None:
        """Acknowledge a latched fault; the shutter then drives closed."""
        self.command(f"{_shutter(shutter)}:RESET")
