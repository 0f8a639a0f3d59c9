"""Client driver for the timing / trigger unit (``docs/protocol-timing.md``).

Works over any pyserial URL (``socket://host:port`` for the simulator or a
terminal server, a serial port on real hardware). No ``tango`` import; no
dependency on the simulators. Errors: see :mod:`tango_devices.drivers.line_client`;
a train the unit refuses (bad settings for it or for what it drives) is a
:class:`~tango_devices.drivers.errors.ControllerRejected` with code
:data:`E_SETTINGS` and a text naming the problem and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tango_devices.drivers.line_client import (
    LineClient,
    format_seconds,
    parse_int,
    parse_seconds,
)

MODES = ("TIME", "POSITION")
STATES = ("IDLE", "ARMED", "RUNNING")
MAX_READ = 100  # pulses per ?PULSES request

# Error codes of the unit (besides 1 unknown command, 2 bad argument).
E_BUSY = 5
E_SETTINGS = 6
E_NOT_SENT = 7


@dataclass(frozen=True)
class TimingStatus:
    """``state`` IDLE, ARMED or RUNNING; ``sent`` pulses of the current (or
    last) train, which has ``count`` pulses (0 before the first ARM/START)."""

    state: str
    sent: int
    count: int


@dataclass(frozen=True)
class Pulse:
    """One pulse of the unit's record: its index in the train, its time in
    seconds since START and the encoder position at its rising edge (steps;
    None when no encoder is selected)."""

    index: int
    time: float
    position: int | None


def _parse_status(result: str) -> TimingStatus:
    state, sent, count = result.split()
    if state not in STATES:
        raise ValueError(f"unknown timing unit state {state!r} (expected {', '.join(STATES)})")
    status = TimingStatus(state, parse_int(sent), parse_int(count))
    if status.sent < 0 or status.count < 0 or status.sent > status.count:
        raise ValueError(f"bad pulse numbers in status {result!r}")
    return status


def _parse_mode(result: str) -> str:
    if result not in MODES:
        raise ValueError(f"unknown mode {result!r} (expected {', '.join(MODES)})")
    return result


def _parse_wiring(result: str) -> dict[int, str]:
    if result == "NONE":
        return {}
    wiring = {}
    for item in result.split():
        number, _, name = item.partition(":")
        wiring[parse_int(number)] = name
    return wiring


def _pulses_parser(first: int, count: int):
    def parse(result: str) -> list[Pulse]:
        fields = result.split()
        if len(fields) != count + 2 or parse_int(fields[0]) != first:
            raise ValueError(f"expected {count} pulses from {first}")
        if parse_int(fields[1]) != count:
            raise ValueError(f"expected {count} pulses, the reply announces {fields[1]}")
        pulses = []
        for i, item in enumerate(fields[2:]):
            time_text, position = item.split(",")
            pulses.append(
                Pulse(
                    first + i,
                    parse_seconds(time_text),
                    None if position == "-" else parse_int(position),
                )
            )
        return pulses

    return parse


def _positive_int(name: str, value: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _seconds(name: str, value: float, allow_zero: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
            f"number of seconds, got {value!r}"
        )
    return format_seconds(value)


class TimingClient(LineClient):
    """One link to a timing unit; thread-safe.

    Configure a train (``set_time_train`` or ``set_position_train``, or the
    single settings), ``arm`` it (checked against the unit and what it drives,
    the record cleared), ``start`` it, poll ``status`` and read the record
    with ``pulses``/``iter_pulses``; ``stop`` ends it.
    """

    # ---------------------------------------------------------- wiring
    def outputs(self) -> dict[int, str]:
        """Output number -> what it is cabled to."""
        return self.query("?OUTPUTS", _parse_wiring)

    def encoders(self) -> dict[int, str]:
        """Encoder input number -> the axis it follows."""
        return self.query("?ENCODERS", _parse_wiring)

    def encoder_position(self) -> int:
        """The selected encoder's position now, steps."""
        return self.query("?ENCPOS", parse_int)

    # -------------------------------------------------------- settings
    def set_mode(self, mode: str) -> None:
        if not isinstance(mode, str) or mode.upper() not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.command(f"MODE {mode.upper()}")

    def mode(self) -> str:
        return self.query("?MODE", _parse_mode)

    def set_delay(self, seconds: float) -> None:
        self.command(f"DELAY {_seconds('delay', seconds, allow_zero=True)}")

    def delay(self) -> float:
        return self.query("?DELAY", parse_seconds)

    def set_period(self, seconds: float) -> None:
        self.command(f"PERIOD {_seconds('period', seconds)}")

    def period(self) -> float:
        return self.query("?PERIOD", parse_seconds)

    def set_width(self, seconds: float) -> None:
        self.command(f"WIDTH {_seconds('width', seconds)}")

    def width(self) -> float:
        return self.query("?WIDTH", parse_seconds)

    def set_count(self, pulses: int) -> None:
        self.command(f"COUNT {_positive_int('count', pulses)}")

    def count(self) -> int:
        return self.query("?COUNT", parse_int)

    def set_encoder(self, number: int) -> None:
        """The encoder input position pulses follow and the record shows (0: none)."""
        self.command(f"ENCODER {_positive_int('encoder', number, low=0)}")

    def encoder(self) -> int:
        return self.query("?ENCODER", parse_int)

    def set_position_start(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"pstart must be an integer number of steps, got {steps!r}")
        self.command(f"PSTART {steps}")

    def position_start(self) -> int:
        return self.query("?PSTART", parse_int)

    def set_position_step(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps == 0:
            raise ValueError(f"pstep must be a non-zero integer number of steps, got {steps!r}")
        self.command(f"PSTEP {steps}")

    def position_step(self) -> int:
        return self.query("?PSTEP", parse_int)

    def set_time_train(self, count: int, period: float, width: float, delay: float = 0.0) -> None:
        """TIME mode: ``count`` pulses of ``width`` every ``period``, the first
        ``delay`` after START."""
        self.set_mode("TIME")
        self.set_delay(delay)
        self.set_period(period)
        self.set_width(width)
        self.set_count(count)

    def set_position_train(
        self, count: int, start: int, step: int, width: float, encoder: int | None = None
    ) -> None:
        """POSITION mode: ``count`` pulses of ``width``, pulse k when the
        encoder reaches ``start + k * step`` moving in the direction of ``step``."""
        self.set_mode("POSITION")
        if encoder is not None:
            self.set_encoder(encoder)
        self.set_position_start(start)
        self.set_position_step(step)
        self.set_width(width)
        self.set_count(count)

    # ----------------------------------------------------------- train
    def arm(self) -> None:
        """Check the train against the unit and what it drives; clear the record."""
        self.command("ARM")

    def start(self) -> None:
        """Start the train (checked again; arms first when idle)."""
        self.command("START")

    def stop(self) -> None:
        """No pulse starts after now (accepted when idle)."""
        self.command("STOP")

    def status(self) -> TimingStatus:
        return self.query("?STATUS", _parse_status)

    def pulses(self, first: int, count: int) -> list[Pulse]:
        """Pulses ``first`` .. ``first + count - 1`` of the record (at most
        :data:`MAX_READ`); pulses not sent yet are ControllerRejected (E_NOT_SENT)."""
        _positive_int("first", first, low=0)
        if _positive_int("count", count) > MAX_READ:
            raise ValueError(f"read at most {MAX_READ} pulses at a time, got {count}")
        return self.query(f"?PULSES {first} {count}", _pulses_parser(first, count))

    def iter_pulses(self, first: int = 0, count: int | None = None) -> Iterator[Pulse]:
        """The record from ``first``: ``count`` pulses (default: every pulse
        sent so far), in requests of :data:`MAX_READ`."""
        end = self.status().sent if count is None else first + count
        while first < end:
            n = min(MAX_READ, end - first)
            yield from self.pulses(first, n)
            first += n
