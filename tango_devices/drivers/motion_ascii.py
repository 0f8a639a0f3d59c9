"""Client driver for SMC ASCII motion controllers (``docs/protocol-motion.md``).

Works over any pyserial URL: a serial port (``/dev/ttyUSB0``), a terminal
server (``socket://host:port``, ``rfc2217://host:port``) or the controller's
Ethernet port. No ``tango`` import; no dependency on the simulators.

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

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import serial

from tango_devices.drivers.errors import ControllerRejected, DriverError, LinkError, ProtocolError

TERMINATOR = b"\r\n"
_QUOTE_BYTES = 40
_CLOSED_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN}

T = TypeVar("T")


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
def expected_echo(request: str) -> str:
    """The echo a reply to ``request`` starts with: ``[axis:]COMMAND``."""
    head = request.strip().split(maxsplit=1)[0] if request.strip() else ""
    axis, sep, command = head.rpartition(":")
    if axis.isascii() and axis.isdigit():
        axis = str(int(axis))
    return f"{axis}{sep}{command.upper()}"


def parse_reply(request: str, reply: str) -> str:
    """Check a reply line (without terminator) against its request.

    Returns the result part after the echo (``OK``, the values). Raises
    :class:`ControllerRejected` for ``ERROR <code> <text>`` and
    :class:`ProtocolError` for anything that is not a valid reply.
    """
    echo = expected_echo(request)
    if not reply:
        raise ProtocolError(f"empty reply to {request!r}")
    if not (reply.isascii() and reply.isprintable()):
        raise ProtocolError(f"garbage reply to {request!r}: {reply[:_QUOTE_BYTES]!r}")
    if reply == echo or reply == echo + " ":
        raise ProtocolError(f"short reply to {request!r}: {reply!r} has no result")
    if not reply.startswith(echo + " "):
        raise ProtocolError(
            f"reply {reply[:_QUOTE_BYTES]!r} does not echo the request {request!r} "
            f"(expected it to start with {echo!r})"
        )
    result = reply[len(echo) + 1 :].strip()
    if result == "ERROR" or result.startswith("ERROR "):
        parts = result.split(maxsplit=2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ProtocolError(f"unparsable error reply to {request!r}: {reply!r}")
        text = parts[2] if len(parts) > 2 else "no message"
        raise ControllerRejected(int(parts[1]), text, request.strip())
    return result


def _parse_int(text: str) -> int:
    if not text.lstrip("+-").isdigit():
        raise ValueError(f"not an integer: {text!r}")
    return int(text)


def _parse_word(text: str) -> int:
    if not text.lower().startswith("0x"):
        raise ValueError(f"not a 0x status word: {text!r}")
    return int(text, 16)


def _format_seconds(seconds: float) -> str:
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _int_arg(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


# ------------------------------------------------------------------- driver
class MotionController:
    """One link to one SMC controller (all of its axes).

    Thread-safe: a lock serialises the request/reply exchanges, so several
    threads (one per motor axis) may share a controller.
    """

    def __init__(self, url: str, timeout: float = 0.5):
        self.url = url
        self.timeout = timeout
        self._port: serial.SerialBase | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ link
    @property
    def connected(self) -> bool:
        """True while the port is open (it is closed on any link or protocol error)."""
        return self._port is not None

    def connect(self) -> str:
        """(Re)open the port and identify the controller; returns the ``?ID`` string."""
        with self._lock:
            self.close()
            try:
                port = serial.serial_for_url(self.url, timeout=self.timeout, do_not_open=True)
                port.open()
            except (serial.SerialException, OSError, ValueError) as exc:
                raise LinkError(f"cannot connect to {self.url}: {_reason(exc)}") from exc
            self._port = port
            return self.identify()

    def close(self) -> None:
        """Close the port (idempotent)."""
        with self._lock:
            port, self._port = self._port, None
            if port is None:
                return
            # pyserial's socket:// close() skips closing its socket when
            # shutdown() fails (the peer has already reset): close it ourselves,
            # or each reconnect after a link drop leaks a file descriptor.
            sock = getattr(port, "_socket", None)
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
            if isinstance(sock, socket.socket):
                sock.close()

    # -------------------------------------------------------- exchange
    def request(self, line: str) -> str:
        """Send one request, return the result part of its reply (after the echo).

        On :class:`LinkError` or :class:`ProtocolError` the port is closed;
        on :class:`ControllerRejected` it stays open.
        """
        return self._exchange(line, lambda result: result)

    def _exchange(self, line: str, convert: Callable[[str], T]) -> T:
        """Request ``line`` and convert the result; a conversion failure is a
        :class:`ProtocolError` (and closes the port), like any bad reply."""
        line = line.strip()
        if not line.isascii() or not line.isprintable():
            raise ValueError(f"request must be printable ASCII: {line!r}")
        with self._lock:
            port = self._port
            if port is None:
                raise LinkError(f"not connected to {self.url}")
            try:
                raw = self._send_and_read(port, line)
                try:
                    text = raw[: -len(TERMINATOR)].decode("ascii")
                except UnicodeDecodeError:
                    raise ProtocolError(
                        f"garbage reply from {self.url} to {line!r}: {raw[:_QUOTE_BYTES]!r}"
                    ) from None
                result = parse_reply(line, text)
                try:
                    return convert(result)
                except (ValueError, IndexError) as exc:
                    raise ProtocolError(
                        f"unexpected reply from {self.url} to {line!r}: {text!r} ({exc})"
                    ) from None
            except (LinkError, ProtocolError):
                self.close()
                raise

    def _send_and_read(self, port: serial.SerialBase, line: str) -> bytes:
        """Write the request, read up to the terminator; raw reply bytes."""
        started = time.monotonic()
        try:
            port.reset_input_buffer()  # a late reply to an earlier request
            port.write(line.encode("ascii") + TERMINATOR)
            raw = port.read_until(TERMINATOR)
        except (serial.SerialException, OSError) as exc:
            if _peer_closed(exc):
                raise LinkError(f"connection closed by {self.url}") from exc
            raise LinkError(f"connection to {self.url} lost: {_reason(exc)}") from exc
        if raw.endswith(TERMINATOR):
            return raw
        if raw:
            raise ProtocolError(
                f"incomplete reply from {self.url} to {line!r} within {self.timeout:g} s: "
                f"{raw[:_QUOTE_BYTES]!r}"
            )
        if time.monotonic() - started < 0.9 * self.timeout:
            # nothing, and well before the timeout: the peer closed the connection
            raise LinkError(f"connection closed by {self.url}")
        raise LinkError(f"no reply from {self.url} within {self.timeout:g} s to {line!r}")

    def _action(self, line: str) -> None:
        self._exchange(line, _expect_ok)

    # ------------------------------------------------------- controller
    def identify(self) -> str:
        """The ``?ID`` string, e.g. ``SMC-8 1.0``."""
        return self.request("?ID")

    # ------------------------------------------------------------- axis
    def read_position_status(self, axis: int) -> tuple[int, AxisStatus]:
        """Position (steps) and status in one round trip (``n:?PS``)."""

        def convert(result: str) -> tuple[int, AxisStatus]:
            position, word = result.split()
            return _parse_int(position), AxisStatus.from_word(_parse_word(word))

        return self._exchange(f"{_axis(axis)}:?PS", convert)

    def read_position(self, axis: int) -> int:
        """The position register, in steps."""
        return self._exchange(f"{_axis(axis)}:?POS", _parse_int)

    def read_status(self, axis: int) -> AxisStatus:
        return self._exchange(
            f"{_axis(axis)}:?STATUS", lambda result: AxisStatus.from_word(_parse_word(result))
        )

    def read_velocity(self, axis: int) -> int:
        """Slew velocity, steps/s."""
        return self._exchange(f"{_axis(axis)}:?VEL", _parse_int)

    def write_velocity(self, axis: int, steps_per_s: int) -> None:
        self._action(f"{_axis(axis)}:VEL {_int_arg('velocity', steps_per_s)}")

    def read_acceleration_time(self, axis: int) -> float:
        """Acceleration (and deceleration) time, seconds."""
        return self._exchange(f"{_axis(axis)}:?ACCT", float)

    def write_acceleration_time(self, axis: int, seconds: float) -> None:
        self._action(f"{_axis(axis)}:ACCT {_format_seconds(seconds)}")

    def move(self, axis: int, steps: int) -> None:
        """Start an absolute move; returns once the controller accepted it."""
        self._action(f"{_axis(axis)}:MOVE {_int_arg('steps', steps)}")

    def stop(self, axis: int) -> None:
        """Decelerating stop (also ends a home search)."""
        self._action(f"{_axis(axis)}:STOP")

    def home(self, axis: int, direction: int = +1) -> None:
        """Start a home search in ``direction`` (+1 or -1)."""
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        self._action(f"{_axis(axis)}:HOME {direction:+d}")

    def set_position(self, axis: int, steps: int) -> None:
        """Set the position register (calibration); nothing moves."""
        self._action(f"{_axis(axis)}:POS {_int_arg('steps', steps)}")

    def power(self, axis: int, on: bool) -> None:
        self._action(f"{_axis(axis)}:POWER {'ON' if on else 'OFF'}")

    def read_power(self, axis: int) -> bool:
        return self._exchange(f"{_axis(axis)}:?POWER", _parse_on_off)

    def read_fault(self, axis: int) -> str | None:
        """Text of the latched fault, None if there is none."""
        return self._exchange(
            f"{_axis(axis)}:?FAULT", lambda result: None if result == "NONE" else result
        )

    def reset(self, axis: int) -> None:
        """Clear a latched fault."""
        self._action(f"{_axis(axis)}:RESET")


def _axis(axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or axis < 1:
        raise ValueError(f"axis must be an integer >= 1, got {axis!r}")
    return axis


def _expect_ok(result: str) -> None:
    if result != "OK":
        raise ValueError(f"expected OK, got {result!r}")


def _parse_on_off(result: str) -> bool:
    if result not in ("ON", "OFF"):
        raise ValueError(f"expected ON or OFF, got {result!r}")
    return result == "ON"


def _reason(exc: BaseException) -> str:
    """The OS-level reason of a pyserial error, without pyserial's wrapping."""
    for cause in (exc.__cause__, exc.__context__, exc):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return str(exc) or type(exc).__name__


def _peer_closed(exc: BaseException) -> bool:
    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, OSError) and cause.errno in _CLOSED_ERRNOS:
            return True
    return "disconnected" in str(exc)
