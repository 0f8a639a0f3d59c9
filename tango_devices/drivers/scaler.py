"""Client driver for the scaler / counter-timer (``docs/protocol-scaler.md``).

Works over any pyserial URL (``socket://host:port`` for the simulator or a
terminal server, a serial port on real hardware). No ``tango`` import; no
dependency on the simulators. Errors: see :mod:`tango_devices.drivers.line_client`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tango_devices.drivers.line_client import (
    LineClient,
    format_seconds,
    parse_int,
    parse_seconds,
)


@dataclass(frozen=True)
class ScalerStatus:
    """``counting`` while a count is in progress; ``elapsed`` counting time, s
    (of the count in progress, or of the last one)."""

    counting: bool
    elapsed: float


def _parse_status(result: str) -> ScalerStatus:
    state, elapsed = result.split()
    if state not in ("IDLE", "COUNTING"):
        raise ValueError(f"unknown scaler state {state!r} (expected IDLE or COUNTING)")
    seconds = float(elapsed)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"elapsed time must be a non-negative number, got {elapsed!r}")
    return ScalerStatus(state == "COUNTING", seconds)


def _parse_counts(result: str) -> list[int]:
    counts = [parse_int(text) for text in result.split()]
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must not be negative: {result!r}")
    return counts


BUFFER_STATES = ("IDLE", "ARMED", "DONE")
MAX_READ = 100_000  # points per ?DATA request
TICKS_PER_SECOND = 1_000_000  # the gate time column counts a 1 MHz clock
E_BUSY = 5
E_NOT_TAKEN = 6


@dataclass(frozen=True)
class BufferStatus:
    """The gated buffer: ``state`` IDLE (not armed), ARMED (taking points) or
    DONE (every point taken); ``taken`` of ``points``; ``overflow`` gates
    after the last point and ``missed`` gates within the dead time (both lost)."""

    state: str
    taken: int
    points: int
    overflow: int
    missed: int


@dataclass(frozen=True)
class BufferedPoints:
    """Points ``first`` .. of the gated buffer: ``gate_time`` (s, one per
    point) and ``counts`` (one row per point, one column per channel)."""

    first: int
    gate_time: np.ndarray
    counts: np.ndarray


def _parse_buffer_status(result: str) -> BufferStatus:
    state, *numbers = result.split()
    if state not in BUFFER_STATES or len(numbers) != 4:
        raise ValueError(f"bad buffer status {result!r}")
    values = [parse_int(n) for n in numbers]
    if any(v < 0 for v in values):
        raise ValueError(f"negative numbers in buffer status {result!r}")
    return BufferStatus(state, *values)


@dataclass(frozen=True)
class _DataHeader:
    columns: int
    nbytes: int

    @classmethod
    def parser(cls, first: int, count: int):
        def parse(result: str) -> _DataHeader:
            fields = [parse_int(f) for f in result.split()]
            if len(fields) != 4 or fields[:2] != [first, count]:
                raise ValueError(f"a ?DATA header for {count} points from {first}: {result!r}")
            columns, nbytes = fields[2:]
            if columns < 2 or nbytes != count * columns * 8:
                raise ValueError(f"{nbytes} bytes are not {count} x {columns} int64: {result!r}")
            return cls(columns, nbytes)

        return parse


class ScalerClient(LineClient):
    """One link to a counter-timer; thread-safe.

    ``start`` clears the counts and counts for the preset time; ``counts``
    reads the current values, also while counting.
    """

    def channels(self) -> int:
        """The number of counter channels."""
        return self.query("?CHANNELS", parse_int)

    def set_preset(self, seconds: float) -> None:
        """The counting time of the next ``start`` (0.001..max_preset s)."""
        if not seconds > 0:
            raise ValueError(f"preset must be a positive number of seconds, got {seconds!r}")
        self.command(f"PRESET {format_seconds(seconds)}")

    def preset(self) -> float:
        """The preset counting time, s."""
        return self.query("?PRESET", parse_seconds)

    def start(self) -> None:
        """Clear the counts and count for the preset time."""
        self.command("START")

    def stop(self) -> None:
        """End the count in progress (counts frozen); accepted when idle."""
        self.command("STOP")

    def clear(self) -> None:
        """Zero the counts (refused while counting)."""
        self.command("CLEAR")

    def status(self) -> ScalerStatus:
        return self.query("?STATUS", _parse_status)

    def counts(self) -> list[int]:
        """The counts of every channel, channel 1 first."""
        return self.query("?COUNTS", _parse_counts)

    # ------------------------------------------- gated buffered counting
    def buffer_size(self) -> int:
        """The most points one ``arm_buffer`` may ask for."""
        return self.query("?BUFSIZE", parse_int)

    def dead_time(self) -> float:
        """Seconds the scaler needs between two gates (its latency)."""
        return self.query("?DEADTIME", parse_seconds)

    def arm_buffer(self, points: int) -> None:
        """Count gates: one point per gate for ``points`` gates (buffer cleared)."""
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise ValueError(f"points must be an integer >= 1, got {points!r}")
        self.command(f"ARM {points}")

    def disarm(self) -> None:
        """Stop counting gates (the points taken stay readable); accepted when not armed."""
        self.command("DISARM")

    def buffer_status(self) -> BufferStatus:
        return self.query("?BUFSTATUS", _parse_buffer_status)

    def read_buffer(self, first: int, count: int) -> BufferedPoints:
        """Points ``first`` .. ``first + count - 1`` (at most :data:`MAX_READ`);
        points not taken yet are ControllerRejected (E_NOT_TAKEN)."""
        for name, value, low in (("first", first, 0), ("count", count, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if count > MAX_READ:
            raise ValueError(f"read at most {MAX_READ} points at a time, got {count}")
        header, payload = self.query_with_payload(
            f"?DATA {first} {count}",
            _DataHeader.parser(first, count),
            lambda h: h.nbytes,
        )
        rows = np.frombuffer(payload, dtype="<i8").reshape(count, header.columns)
        return BufferedPoints(
            first,
            rows[:, 0] / TICKS_PER_SECOND,
            rows[:, 1:].astype(np.int64),
        )
