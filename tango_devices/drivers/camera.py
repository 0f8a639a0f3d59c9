"""Client driver for the 2D camera (``docs/protocol-camera.md``).

Works over any pyserial URL (``socket://host:port`` for the simulator or a
terminal server, a serial port on real hardware). No ``tango`` import; no
dependency on the simulators. Errors: see :mod:`tango_devices.drivers.line_client`;
a frame whose header is malformed or whose payload is short is a
:class:`~tango_devices.drivers.errors.ProtocolError` and closes the link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tango_devices.drivers.errors import ProtocolError
from tango_devices.drivers.line_client import (
    LineClient,
    format_seconds,
    parse_int,
    parse_seconds,
)

MODES = ("SINGLE", "MULTIPLE", "CONTINUOUS")
TRIGGERS = ("INTERNAL", "EXTERNAL")
E_NO_FRAME = 6
MAX_FRAME_BYTES = 4096 * 4096 * 2  # a larger announced payload is garbage


@dataclass(frozen=True)
class CameraStatus:
    """``acquiring`` while frames are being produced; ``counter`` is the number
    of the last completed frame since the camera powered up."""

    acquiring: bool
    counter: int


@dataclass(frozen=True)
class _FrameHeader:
    counter: int
    width: int
    height: int
    nbytes: int

    @classmethod
    def parse(cls, result: str) -> _FrameHeader:
        fields = result.split()
        if len(fields) != 4:
            raise ValueError(
                f"a frame header has 4 fields (counter width height nbytes): {result!r}"
            )
        counter, width, height, nbytes = (parse_int(f) for f in fields)
        if counter < 0 or width < 1 or height < 1:
            raise ValueError(f"bad frame header: {result!r}")
        if nbytes != width * height * 2:
            raise ValueError(f"{nbytes} bytes do not make {width}x{height} uint16 pixels")
        if nbytes > MAX_FRAME_BYTES:
            raise ValueError(f"frame of {nbytes} bytes is larger than {MAX_FRAME_BYTES}")
        return cls(counter, width, height, nbytes)


@dataclass(frozen=True)
class FrameBuffer:
    """The frames of an external-trigger acquisition: ``count`` frames
    buffered, numbered ``first`` .. ``first + count - 1`` (``first`` is the
    next frame's number when none is), and ``missed`` triggers that came
    while the camera was busy."""

    count: int
    first: int
    missed: int


def _parse_buffer(result: str) -> FrameBuffer:
    values = [parse_int(f) for f in result.split()]
    if len(values) != 3 or any(v < 0 for v in values):
        raise ValueError(f"a frame buffer status is 3 numbers (count first missed): {result!r}")
    return FrameBuffer(*values)


def _parse_trigger(result: str) -> str:
    if result not in TRIGGERS:
        raise ValueError(f"unknown trigger source {result!r} (expected {', '.join(TRIGGERS)})")
    return result


def _parse_status(result: str) -> CameraStatus:
    state, counter = result.split()
    if state not in ("IDLE", "ACQUIRING"):
        raise ValueError(f"unknown camera state {state!r} (expected IDLE or ACQUIRING)")
    return CameraStatus(state == "ACQUIRING", parse_int(counter))


def _parse_size(result: str) -> tuple[int, int, int]:
    width, height, bits = (parse_int(f) for f in result.split())
    return width, height, bits


def _parse_mode(result: str) -> str:
    if result not in MODES:
        raise ValueError(f"unknown mode {result!r} (expected {', '.join(MODES)})")
    return result


class CameraClient(LineClient):
    """One link to a camera; thread-safe.

    ``frame_timeout`` bounds the transfer of one frame's pixels (the header
    line itself is bounded by ``timeout``).
    """

    def __init__(self, url: str, timeout: float = 0.5, frame_timeout: float = 2.0):
        super().__init__(url, timeout)
        self.frame_timeout = frame_timeout

    def size(self) -> tuple[int, int, int]:
        """``(width, height, bits)`` of the sensor."""
        return self.query("?SIZE", _parse_size)

    def set_exposure(self, seconds: float) -> None:
        """Exposure time per frame, s (refused while acquiring)."""
        if not seconds > 0:
            raise ValueError(f"exposure must be a positive number of seconds, got {seconds!r}")
        self.command(f"EXPOSURE {format_seconds(seconds)}")

    def exposure(self) -> float:
        return self.query("?EXPOSURE", parse_seconds)

    def set_mode(self, mode: str) -> None:
        """``SINGLE``, ``MULTIPLE`` (``frames`` frames) or ``CONTINUOUS`` (until stop)."""
        if not isinstance(mode, str) or mode.upper() not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.command(f"MODE {mode.upper()}")

    def mode(self) -> str:
        return self.query("?MODE", _parse_mode)

    def set_frames(self, count: int) -> None:
        """Number of frames of a MULTIPLE acquisition."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"frames must be an integer >= 1, got {count!r}")
        self.command(f"FRAMES {count}")

    def frames(self) -> int:
        return self.query("?FRAMES", parse_int)

    def start(self) -> None:
        """Start acquiring in the current mode."""
        self.command("START")

    def stop(self) -> None:
        """Stop acquiring (accepted when idle)."""
        self.command("STOP")

    def status(self) -> CameraStatus:
        return self.query("?STATUS", _parse_status)

    def read_frame(self) -> tuple[int, np.ndarray]:
        """The last completed frame: ``(counter, pixels)``, pixels a uint16
        array of shape (height, width). No frame yet is ControllerRejected."""
        header, payload = self.query_with_payload(
            "FRAME?", _FrameHeader.parse, lambda h: h.nbytes, self.frame_timeout
        )
        pixels = np.frombuffer(payload, dtype="<u2").reshape(header.height, header.width)
        return header.counter, pixels.astype(np.uint16)

    # ------------------------------------------------- external trigger
    def set_trigger(self, source: str) -> None:
        """``INTERNAL`` (frames timed by the camera) or ``EXTERNAL`` (one frame
        per pulse on the trigger input; frames buffered and numbered)."""
        if not isinstance(source, str) or source.upper() not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, got {source!r}")
        self.command(f"TRIGGER {source.upper()}")

    def trigger(self) -> str:
        return self.query("?TRIGGER", _parse_trigger)

    def frame_buffer(self) -> FrameBuffer:
        return self.query("?BUFFER", _parse_buffer)

    def read_frame_number(self, number: int) -> tuple[int, np.ndarray]:
        """Frame ``number`` of the buffer (TRIGGER EXTERNAL): ``(number,
        pixels)``; one not acquired yet or no longer buffered is
        ControllerRejected (E_NO_FRAME)."""
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"frame number must be an integer >= 0, got {number!r}")
        header, payload = self.query_with_payload(
            f"FRAME? {number}", _FrameHeader.parse, lambda h: h.nbytes, self.frame_timeout
        )
        if header.counter != number:
            raise ProtocolError(f"asked for frame {number}, got frame {header.counter}")
        pixels = np.frombuffer(payload, dtype="<u2").reshape(header.height, header.width)
        return header.counter, pixels.astype(np.uint16)
