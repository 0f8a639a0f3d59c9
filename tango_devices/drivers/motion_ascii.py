"""Client driver for SMC ASCII motion controllers (``docs/protocol-motion.md``).

Works over any pyserial URL: a serial port (``/dev/ttyUSB0``), a terminal
server (``socket://host:port``, ``rfc2217://host:port``) or the controller's
Ethernet port. No ``tango`` import; no dependency on the simulators.

The link itself (framing, echo check, stale input, reconnect, closing the
port) is :class:`~tango_devices.drivers.line_client.LineClient`'s, shared with
the PLC, scaler and camera drivers; this module adds the SMC's commands.

Errors are split by what the caller should do about them:

- :class:`LinkError`: the link is down or silent; the port has been closed,
  reconnect with :meth:`MotionController.connect`.
- :class:`ProtocolError`: the reply is not a valid reply to the request
  (garbage, cut short, wrong echo); the port has been closed as well, since
  the byte stream can no longer be trusted.
- :class:`ControllerRejected`: the controller understood and refused
  (``ERROR <code> <text>``); the link is fine and stays open.

(The error classes live in :mod:`tango_devices.drivers.errors`, shared by
every driver.)
"""

from __future__ import annotations

from dataclasses import dataclass

from tango_devices.drivers.errors import ControllerRejected, DriverError, LinkError, ProtocolError
from tango_devices.drivers.line_client import (
    TERMINATOR,
    LineClient,
    expected_echo,
    none_or_text,
    parse_int,
    parse_reply,
)

__all__ = [
    "TERMINATOR",
    "AxisStatus",
    "ControllerRejected",
    "DriverError",
    "LinkError",
    "MotionController",
    "MotionControllerError",
    "ProtocolError",
    "expected_echo",
    "parse_reply",
]


# The shared driver errors, under the names this module has always exported.
MotionControllerError = DriverError


@dataclass(frozen=True)
class AxisStatus:
    """The decoded status word of an axis (``raw`` is the word itself)."""

    moving: bool
    powered: bool
    low_limit: bool
    high_limit: bool
    home_switch: bool
    fault: bool
    homed: bool
    interlock: bool
    homing: bool
    raw: int

    MOVING = 0x001
    POWER = 0x002
    LIM_NEG = 0x004
    LIM_POS = 0x008
    HOME_SW = 0x010
    FAULT = 0x020
    HOMED = 0x040
    INTERLOCK = 0x080
    HOMING = 0x100

    @classmethod
    def from_word(cls, word: int) -> AxisStatus:
        """Decode a status word (bits as in the protocol document)."""
        return cls(
            moving=bool(word & cls.MOVING),
            powered=bool(word & cls.POWER),
            low_limit=bool(word & cls.LIM_NEG),
            high_limit=bool(word & cls.LIM_POS),
            home_switch=bool(word & cls.HOME_SW),
            fault=bool(word & cls.FAULT),
            homed=bool(word & cls.HOMED),
            interlock=bool(word & cls.INTERLOCK),
            homing=bool(word & cls.HOMING),
            raw=word,
        )


# ------------------------------------------------------------------ parsing
def _parse_word(text: str) -> int:
    if not text.lower().startswith("0x"):
        raise ValueError(f"not a 0x status word: {text!r}")
    return int(text, 16)


def _parse_status(text: str) -> AxisStatus:
    return AxisStatus.from_word(_parse_word(text))


def _parse_position_status(result: str) -> tuple[int, AxisStatus]:
    position, word = result.split()
    return parse_int(position), _parse_status(word)


def _parse_on_off(result: str) -> bool:
    if result not in ("ON", "OFF"):
        raise ValueError(f"expected ON or OFF, got {result!r}")
    return result == "ON"


def _format_seconds(seconds: float) -> str:
    # Not line_client.format_seconds, which raises TypeError for anything but
    # an int or a float: this driver has always sent whatever formats with
    # ``.6f`` (a numpy float32, a Decimal), and callers may rely on it.
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _int_arg(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def _axis(axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or axis < 1:
        raise ValueError(f"axis must be an integer >= 1, got {axis!r}")
    return axis


# ------------------------------------------------------------------- driver
class MotionController(LineClient):
    """One link to one SMC controller (all of its axes).

    Thread-safe: a lock serialises the request/reply exchanges, so several
    threads (one per motor axis) may share a controller.
    """

    #: positions the protocol can represent: +-2,000,000,000 steps
    #: (docs/protocol-motion.md; a move beyond is error 2, bad argument)
    MAX_STEPS = 2_000_000_000

    # ------------------------------------------------------------- axis
    def read_position_status(self, axis: int) -> tuple[int, AxisStatus]:
        """Position (steps) and status in one round trip (``n:?PS``)."""
        return self.query(f"{_axis(axis)}:?PS", _parse_position_status)

    def read_position(self, axis: int) -> int:
        """The position register, in steps."""
        return self.query(f"{_axis(axis)}:?POS", parse_int)

    def read_status(self, axis: int) -> AxisStatus:
        return self.query(f"{_axis(axis)}:?STATUS", _parse_status)

    def read_velocity(self, axis: int) -> int:
        """Slew velocity, steps/s."""
        return self.query(f"{_axis(axis)}:?VEL", parse_int)

    def write_velocity(self, axis: int, steps_per_s: int) -> None:
        self.command(f"{_axis(axis)}:VEL {_int_arg('velocity', steps_per_s)}")

    def read_acceleration_time(self, axis: int) -> float:
        """Acceleration (and deceleration) time, seconds."""
        return self.query(f"{_axis(axis)}:?ACCT", float)

    def write_acceleration_time(self, axis: int, seconds: float) -> None:
        self.command(f"{_axis(axis)}:ACCT {_format_seconds(seconds)}")

    def move(self, axis: int, steps: int) -> None:
        """Start an absolute move; returns once the controller accepted it."""
        self.command(f"{_axis(axis)}:MOVE {_int_arg('steps', steps)}")

    def stop(self, axis: int) -> None:
        """Decelerating stop (also ends a home search)."""
        self.command(f"{_axis(axis)}:STOP")

    def home(self, axis: int, direction: int = +1) -> None:
        """Start a home search in ``direction`` (+1 or -1)."""
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        self.command(f"{_axis(axis)}:HOME {direction:+d}")

    def set_position(self, axis: int, steps: int) -> None:
        """Set the position register (calibration); nothing moves."""
        self.command(f"{_axis(axis)}:POS {_int_arg('steps', steps)}")

    def power(self, axis: int, on: bool) -> None:
        self.command(f"{_axis(axis)}:POWER {'ON' if on else 'OFF'}")

    def read_power(self, axis: int) -> bool:
        return self.query(f"{_axis(axis)}:?POWER", _parse_on_off)

    def read_fault(self, axis: int) -> str | None:
        """Text of the latched fault, None if there is none."""
        return self.query(f"{_axis(axis)}:?FAULT", none_or_text)

    def reset(self, axis: int) -> None:
        """Clear a latched fault."""
        self.command(f"{_axis(axis)}:RESET")
