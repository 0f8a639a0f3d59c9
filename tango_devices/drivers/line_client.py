"""A reusable base for line-based ASCII controller clients over pyserial.

The protocols it speaks (``docs/protocol-motion.md``, ``protocol-plc.md``,
``protocol-scaler.md``, ``protocol-camera.md``) share their framing: a
request is one ASCII line, the reply one line terminated by ``\\r\\n`` that
starts with an echo of the request's ``[address:]COMMAND``, then ``OK``,
values, or ``ERROR <code> <text>``. A reply may be followed by a binary
payload whose size the reply line announces (a camera frame).

Works over any pyserial URL: a serial port (``/dev/ttyUSB0``), a terminal
server (``socket://host:port``, ``rfc2217://host:port``) or a controller's
Ethernet port. No ``tango`` import; no dependency on the simulators.

Errors (:mod:`tango_devices.drivers.errors`) are split by what the caller
should do about them:

- :class:`LinkError`: the link is down or silent; the port has been closed,
  reconnect with :meth:`LineClient.connect`.
- :class:`ProtocolError`: the reply is not a valid reply to the request
  (garbage, cut short, wrong echo, a short payload); the port has been closed
  as well, since the byte stream can no longer be trusted.
- :class:`ControllerRejected`: the controller understood and refused; the
  link is fine and stays open.
"""

from __future__ import annotations

import contextlib
import errno
import math
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import serial
from serial.urlhandler import protocol_socket

from tango_devices.drivers.errors import ControllerRejected, LinkError, ProtocolError

__all__ = [
    "ControllerRejected",
    "LineClient",
    "LinkError",
    "ProtocolError",
    "expect_ok",
    "expected_echo",
    "format_seconds",
    "none_or_text",
    "parse_int",
    "parse_reply",
    "parse_seconds",
]

TERMINATOR = b"\r\n"
MAX_REPLY_LINE = 4096  # bytes; a longer "line" is garbage
_QUOTE_BYTES = 40
_CHUNK = 65536
_CLOSED_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN}

T = TypeVar("T")


# ------------------------------------------------------------------ parsing
def expected_echo(request: str) -> str:
    """The echo a reply to ``request`` starts with: ``[address:]COMMAND``
    (the command in upper case; a numeric address without leading zeros)."""
    head = request.strip().split(maxsplit=1)[0] if request.strip() else ""
    address, sep, command = head.rpartition(":")
    if address.isascii() and address.isdigit():
        address = str(int(address))
    return f"{address}{sep}{command.upper()}"


#: late replies to the last request skipped before a reply (each within the timeout)
MAX_STALE_LINES = 4


def _stale(reply: str, previous: str | None, echo: str) -> bool:
    """Is ``reply`` a late reply to the previous request (``previous``, its
    echo) rather than one to this one (``echo``)? Only a different previous
    request can be told apart."""
    return previous is not None and previous != echo and reply.startswith(previous + " ")


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


def format_seconds(seconds: float) -> str:
    """A duration as a request argument: fixed point, at most 6 decimals."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"seconds must be a number, got {seconds!r}")
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def expect_ok(result: str) -> None:
    """The result of an action: ``OK`` (anything else raises ``ValueError``)."""
    if result != "OK":
        raise ValueError(f"expected OK, got {result!r}")


def parse_int(text: str) -> int:
    """A decimal integer with an optional sign (``ValueError`` otherwise)."""
    if not text.lstrip("+-").isdigit():
        raise ValueError(f"not an integer: {text!r}")
    return int(text)


def parse_seconds(text: str) -> float:
    """A finite number of seconds (``ValueError`` otherwise)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number of seconds: {text!r}")
    return value


def none_or_text(result: str) -> str | None:
    """A text that reads ``NONE`` when there is none (a fault, an interlock)."""
    return None if result == "NONE" else result


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


# ------------------------------------------------------------------- client
class LineClient:
    """One link to one line-based controller.

    Thread-safe: a lock serialises the request/reply exchanges (a payload is
    read under the same lock), so several threads may share a client.
    Subclasses add the protocol's commands on top of :meth:`query`,
    :meth:`command` and :meth:`query_with_payload`.
    """

    def __init__(self, url: str, timeout: float = 0.5):
        self.url = url
        self.timeout = timeout
        self._port: serial.SerialBase | None = None
        self._lock = threading.RLock()
        # bytes received after a reply line (a payload's start), read first
        self._rx = bytearray()
        # the echo of the last request: a line with it that comes after the
        # input was flushed for the next request is a late (stale) reply
        self._previous_echo: str | None = None

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
            self._rx.clear()
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

    def identify(self) -> str:
        """The controller's ``?ID`` string."""
        return self.request("?ID")

    # -------------------------------------------------------- exchange
    def request(self, line: str) -> str:
        """Send one request, return the result part of its reply (after the echo).

        On :class:`LinkError` or :class:`ProtocolError` the port is closed;
        on :class:`ControllerRejected` it stays open.
        """
        return self.query(line, lambda result: result)

    def query(self, line: str, convert: Callable[[str], T]) -> T:
        """Request ``line`` and convert the result; a conversion failure
        (``ValueError``, ``IndexError``) is a :class:`ProtocolError` and closes
        the port, like any bad reply."""
        return self._exchange(line, convert, None)[0]

    def command(self, line: str) -> None:
        """Request an action whose reply is ``OK``."""
        self.query(line, expect_ok)

    def query_with_payload(
        self,
        line: str,
        convert: Callable[[str], T],
        payload_size: Callable[[T], int],
        timeout: float | None = None,
    ) -> tuple[T, bytes]:
        """Request ``line``, convert its reply line like :meth:`query`, then read
        the binary payload that follows it: ``payload_size(value)`` bytes.
        ``timeout`` bounds the payload read (default: the port's timeout).
        Returns ``(value, payload)``; a short payload is a :class:`ProtocolError`
        and closes the port."""
        value, payload = self._exchange(line, convert, payload_size, timeout)
        if payload is None:  # cannot happen: _exchange reads one when given a size
            raise ProtocolError(f"no payload read for {line!r}")
        return value, payload

    def read_exact(self, size: int, timeout: float | None = None) -> bytes:
        """Read exactly ``size`` bytes within ``timeout`` (default: the port's).

        Call it under the exchange's lock (``query_with_payload`` does). Fewer
        bytes than ``size`` in time are a :class:`ProtocolError`, a connection
        lost on the way a :class:`LinkError`. Neither closes the port: the
        exchange does.
        """
        port = self._port
        if port is None:
            raise LinkError(f"not connected to {self.url}")
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        data = bytearray(self._rx[:size])
        del self._rx[:size]
        try:
            while len(data) < size:
                data += port.read(min(size - len(data), _CHUNK))
                if len(data) < size and time.monotonic() >= deadline:
                    raise ProtocolError(
                        f"short payload from {self.url}: {len(data)} of {size} bytes "
                        f"within {wait:g} s"
                    )
        except (serial.SerialException, OSError) as exc:
            if _peer_closed(exc):
                raise LinkError(
                    f"connection closed by {self.url} after {len(data)} of {size} payload bytes"
                ) from exc
            raise LinkError(f"connection to {self.url} lost: {_reason(exc)}") from exc
        return bytes(data)

    def _exchange(
        self,
        line: str,
        convert: Callable[[str], T],
        payload_size: Callable[[T], int] | None,
        timeout: float | None = None,
    ) -> tuple[T, bytes | None]:
        line = line.strip()
        if not line or not line.isascii() or not line.isprintable():
            raise ValueError(f"request must be printable ASCII: {line!r}")
        with self._lock:
            port = self._port
            if port is None:
                raise LinkError(f"not connected to {self.url}")
            previous, self._previous_echo = self._previous_echo, expected_echo(line)
            try:
                raw = self._send_and_read_line(port, line)
                text = self._decoded(raw, line)
                for _ in range(MAX_STALE_LINES):
                    if not _stale(text, previous, self._previous_echo):
                        break
                    # a second reply to the last request that came after the
                    # flush (a late or doubled reply): not this one's
                    raw = self._checked_line(port, line, time.monotonic())
                    text = self._decoded(raw, line)
                result = parse_reply(line, text)
                try:
                    value = convert(result)
                    size = None if payload_size is None else payload_size(value)
                except (ValueError, IndexError) as exc:
                    raise ProtocolError(
                        f"unexpected reply from {self.url} to {line!r}: "
                        f"{text[: _QUOTE_BYTES * 2]!r} ({exc})"
                    ) from None
                payload = None if size is None else self.read_exact(size, timeout)
                return value, payload
            except (LinkError, ProtocolError):
                self.close()
                raise

    def _decoded(self, raw: bytes, line: str) -> str:
        try:
            return raw[: -len(TERMINATOR)].decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(
                f"garbage reply from {self.url} to {line!r}: {raw[:_QUOTE_BYTES]!r}"
            ) from None

    def _send_and_read_line(self, port: serial.SerialBase, line: str) -> bytes:
        """Write the request, read up to the terminator; raw reply bytes."""
        started = time.monotonic()
        try:
            port.reset_input_buffer()  # a late reply to an earlier request
            self._rx.clear()
            port.write(line.encode("ascii") + TERMINATOR)
        except (serial.SerialException, OSError) as exc:
            if _peer_closed(exc):
                raise LinkError(f"connection closed by {self.url}") from exc
            raise LinkError(f"connection to {self.url} lost: {_reason(exc)}") from exc
        return self._checked_line(port, line, started)

    def _checked_line(self, port: serial.SerialBase, line: str, started: float) -> bytes:
        """Read a reply line and check that it is a whole line; ``started``:
        when the wait for it began."""
        try:
            raw = self._read_line(port)
        except (serial.SerialException, OSError) as exc:
            if _peer_closed(exc):
                raise LinkError(f"connection closed by {self.url}") from exc
            raise LinkError(f"connection to {self.url} lost: {_reason(exc)}") from exc
        if raw.endswith(TERMINATOR):
            return raw
        if len(raw) >= MAX_REPLY_LINE:
            raise ProtocolError(
                f"garbage reply from {self.url} to {line!r}: no line end in "
                f"{MAX_REPLY_LINE} bytes: {raw[:_QUOTE_BYTES]!r}"
            )
        if raw:
            raise ProtocolError(
                f"incomplete reply from {self.url} to {line!r} within {self.timeout:g} s: "
                f"{raw[:_QUOTE_BYTES]!r}"
            )
        if time.monotonic() - started < 0.9 * self.timeout:
            # nothing, and well before the timeout: the peer closed the connection
            raise LinkError(f"connection closed by {self.url}")
        raise LinkError(f"no reply from {self.url} within {self.timeout:g} s to {line!r}")

    def _read_line(self, port: serial.SerialBase) -> bytes:
        """``port.read_until(TERMINATOR, MAX_REPLY_LINE)`` within the timeout.

        Over a TCP port (``socket://``) it reads what has arrived in one call
        and keeps what follows the line (a payload) for :meth:`read_exact`:
        pyserial reads a line one byte at a time, a select and a recv each
        (220 us of CPU for a 19-byte reply; every idle poll of every device)."""
        sock = getattr(port, "_socket", None)
        if not isinstance(port, protocol_socket.Serial) or not isinstance(sock, socket.socket):
            return port.read_until(TERMINATOR, MAX_REPLY_LINE)
        buf = self._rx
        deadline = time.monotonic() + self.timeout
        while True:
            end = buf.find(TERMINATOR)
            if end >= 0 or len(buf) >= MAX_REPLY_LINE:
                n = end + len(TERMINATOR) if end >= 0 else MAX_REPLY_LINE
                line = bytes(buf[:n])
                del buf[:n]
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                line = bytes(buf)
                buf.clear()
                return line
            ready, _, _ = select.select([sock], [], [], left)
            if ready:
                try:
                    chunk = sock.recv(_CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue  # readable after all only later (as pyserial retries)
                if not chunk:  # as pyserial says it (see _peer_closed)
                    raise serial.SerialException("socket disconnected")
                buf += chunk
