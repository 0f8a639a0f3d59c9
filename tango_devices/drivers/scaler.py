"""Client driver for the scaler / counter-timer (``docs/protocol-scaler.md``).

Works over any pyserial URL (``socket://host:port`` for the simulator or a
terminal server, a serial port on real hardware). No ``tango`` import; no
dependency on the simulators. Errors: see :mod:`tango_devices.drivers.line_client`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
