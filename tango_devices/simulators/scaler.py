"""Virtual scaler / counter-timer: counting model and its ASCII protocol.

Pure logic: no I/O, no ``tango``. The transport (``server.py``) feeds request
lines to :meth:`ScalerController.handle_line`. The protocol is specified in
``docs/protocol-scaler.md``.

Counting: ``START`` counts for the preset time. Each channel counts the
physics rate of its signal (``physics.rates()[signal]``, counts/s) with
Poisson noise. The rates are *sampled* (at each request and, inside the
simulator's event loop, every :data:`SAMPLE_PERIOD` seconds while counting);
a sampled rate holds until the next sample, so a shutter that opens mid-count
shows in the counts from the next sample on. Counting ends exactly at the
preset time and the counts are frozen from then on. Time is injected, so unit
tests use a fake clock (they drive the sampling with requests).

Hardware-gated buffered counting: ``ARM <points>`` makes the gate input
count; each gate (a pulse of a timing unit wired to the input inside the
simulator, :meth:`ScalerController.gate`) latches one point, the counts of
every channel during the gate and the gate time in microseconds, into a
buffer read with ``?DATA <first> <n>`` as little-endian int64 arrays. The
gate's counts are the physics rates sampled when the gate is delivered (the
timing unit delivers them within a few milliseconds) times the gate time, with
Poisson noise. A gate that comes less than the dead time after the previous
one is missed (counted), a gate after the last armed point overflows
(counted); neither shifts the points.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# Re-exported: the codes and line limit every protocol shares, under this module too.
from tango_devices.simulators.common import E_BAD_ARGUMENT as E_BAD_ARGUMENT
from tango_devices.simulators.common import E_UNKNOWN_COMMAND as E_UNKNOWN_COMMAND
from tango_devices.simulators.common import MAX_LINE as MAX_LINE
from tango_devices.simulators.common import (
    Command,
    CommandError,
    PhysicsController,
    WithoutFaults,
    check_keys,
    format_seconds,
    is_int,
    is_number,
    no_args,
    numbered,
    one_arg,
    optional_seed,
    seconds_arg,
)
from tango_devices.simulators.physics import BeamlinePhysics

FIRMWARE_VERSION = "1.0"
MIN_PRESET = 0.001
DEFAULT_MAX_PRESET = 3600.0
SAMPLE_PERIOD = 0.01  # s, rate sampling while counting (inside an event loop)
MAX_MEAN = 1e15  # beyond this mean the count is the mean itself (noise < 1e-7)

DEFAULT_BUFFER_SIZE = 1_000_000  # points of the gated buffer
MAX_BUFFER_SIZE = 10_000_000
DEFAULT_DEAD_TIME = 0.0001  # s the scaler needs between two gates (latching a point)
MAX_READ = 100_000  # points of one ?DATA reply
TICKS_PER_SECOND = 1_000_000  # the gate time column: ticks of the internal 1 MHz clock

# Error codes (docs/protocol-scaler.md; E_UNKNOWN_COMMAND = 1 and E_BAD_ARGUMENT = 2 are common).
E_BUSY = 5
E_NOT_TAKEN = 6


class ScalerError(CommandError):
    """A request the scaler refuses: becomes ``ERROR <code> <message>``."""


def _signals() -> tuple[str, ...]:
    """The physics signal names a channel may count (``physics.rates()`` keys)."""
    return tuple(BeamlinePhysics().rates())


class ScalerController(WithoutFaults, PhysicsController):
    """A virtual counter-timer speaking the protocol of ``docs/protocol-scaler.md``.

    ``config``: ``{"channels": {"1": "i0", "2": "diode"}, "max_preset": 3600}``
    (channel number -> physics signal; optional ``seed`` for the noise;
    ``kind`` and ``port`` are accepted and ignored). ``ValueError`` names the
    bad key.
    """

    kind = "scaler"

    def _configure(self, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise ValueError("must be an object with a 'channels' object")
        check_keys(
            "",
            config,
            ("kind", "port", "channels", "max_preset", "seed", "buffer_size", "dead_time"),
        )
        self.signals = self._build_channels(config.get("channels"))
        self.max_preset = self._max_preset(config.get("max_preset", DEFAULT_MAX_PRESET))
        self.buffer_size = self._buffer_size(config.get("buffer_size", DEFAULT_BUFFER_SIZE))
        self.dead_time = self._dead_time(config.get("dead_time", DEFAULT_DEAD_TIME))
        #: what must run before the scaler answers: the timing units wired to
        #: its gate input deliver the gates up to ``now`` (``upstream(now)``)
        self.upstream: list[Callable[[float], None]] = []
        self.armed = False
        self.points = 0  # points of the armed (or last) buffered acquisition
        self.taken = 0
        self.overflow = 0  # gates after the last point
        self.missed = 0  # gates within the dead time of the previous one
        self._armed_at = 0.0
        self._last_gate_end = -float("inf")
        self._buffer = np.zeros((0, 1 + len(self.signals)), dtype=np.int64)
        self._rng = np.random.default_rng(optional_seed(config))
        self.preset = 1.0
        self.counts = [0] * len(self.signals)
        self.counting = False
        self._start = 0.0
        self._elapsed = 0.0  # of the last count, once it ended
        self._sampled_at = 0.0
        self._rates = [0.0] * len(self.signals)
        self._tick: asyncio.TimerHandle | None = None
        self._commands: dict[str, Command] = {
            "?ID": Command(self._cmd_id),
            "?CHANNELS": Command(self._cmd_channels),
            "PRESET": Command(self._cmd_preset),
            "?PRESET": Command(self._cmd_query_preset),
            "START": Command(self._ok_action(self.start)),
            "STOP": Command(self._ok_action(self.stop)),
            "CLEAR": Command(self._ok_action(self.clear)),
            "?STATUS": Command(self._cmd_status),
            "?COUNTS": Command(self._cmd_counts),
            "?BUFSIZE": Command(self._cmd_bufsize),
            "?DEADTIME": Command(self._cmd_deadtime),
            "ARM": Command(self._cmd_arm),
            "DISARM": Command(self._ok_action(self.disarm)),
            "?BUFSTATUS": Command(self._cmd_bufstatus),
            "?DATA": Command(self._cmd_data),
        }

    @staticmethod
    def _build_channels(config: Any) -> list[str]:
        if not isinstance(config, Mapping) or not config:
            raise ValueError(
                'channels: must be a non-empty object such as {"1": "i0", "2": "diode"}'
            )
        valid = _signals()

        def check_signal(key: str, signal: Any) -> None:
            if signal not in valid:
                raise ValueError(
                    f"channels.{key}: must be a physics signal ({', '.join(valid)}), got {signal!r}"
                )

        return list(numbered("channels", config, "channel", check_signal).values())

    @staticmethod
    def _max_preset(value: Any) -> float:
        if not is_number(value) or not MIN_PRESET <= value <= 1e6:
            raise ValueError(
                f"max_preset: must be a number of seconds between {MIN_PRESET:g} and 1e6, "
                f"got {value!r}"
            )
        return float(value)

    @staticmethod
    def _buffer_size(value: Any) -> int:
        if not is_int(value) or not 1 <= value <= MAX_BUFFER_SIZE:
            raise ValueError(
                f"buffer_size: must be an integer number of points 1..{MAX_BUFFER_SIZE}, "
                f"got {value!r}"
            )
        return value

    @staticmethod
    def _dead_time(value: Any) -> float:
        if not is_number(value) or not 0 <= value <= 1:
            raise ValueError(f"dead_time: must be a number of seconds 0..1, got {value!r}")
        return float(value)

    # ------------------------------------------------------------ counting
    def update(self, now: float | None = None) -> float:
        """Accumulate the counts up to ``now`` (default: the clock), at most to
        the end of the preset; then sample the rates. Returns ``now``."""
        if now is None:
            now = self._clock()
        for deliver in self.upstream:
            deliver(now)
        if not self.counting:
            return now
        end = self._start + self.preset
        until = min(now, end)
        if until > self._sampled_at:
            self._accumulate(until - self._sampled_at)
            self._sampled_at = until
        if now >= end:
            self._finish(self.preset)
        else:
            self._rates = self._sample_rates()
        return now

    def _sample_rates(self) -> list[float]:
        rates = self.physics.rates()
        return [max(float(rates[signal]), 0.0) for signal in self.signals]

    def _accumulate(self, seconds: float) -> None:
        drawn = [
            int(self._rng.poisson(mean)) if mean <= MAX_MEAN else round(mean)
            for mean in (rate * seconds for rate in self._rates)
        ]
        self.counts = [c + d for c, d in zip(self.counts, drawn, strict=True)]

    def _finish(self, elapsed: float) -> None:
        self.counting = False
        self._elapsed = elapsed
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def elapsed(self, now: float) -> float:
        """Counting time of the count in progress or of the last one."""
        if self.counting:
            return min(now, self._start + self.preset) - self._start
        return self._elapsed

    def start(self, now: float) -> None:
        """Clear the counts and count for the preset time from ``now``."""
        self.update(now)
        if self.counting:
            raise ScalerError(E_BUSY, "busy: already counting; STOP first")
        self._check_not_armed("START")
        self.counts = [0] * len(self.signals)
        self.counting = True
        self._start = self._sampled_at = now
        self._elapsed = 0.0
        self._rates = self._sample_rates()
        self._schedule_sampling()

    def stop(self, now: float) -> None:
        """End the count in progress now (counts frozen); OK when idle."""
        self.update(now)
        if self.counting:
            self._finish(now - self._start)

    def clear(self, now: float) -> None:
        self.update(now)
        if self.counting:
            raise ScalerError(E_BUSY, "busy: counting; STOP first")
        self._check_not_armed("CLEAR")
        self.counts = [0] * len(self.signals)
        self._elapsed = 0.0

    # --------------------------------------------- gated buffered counting
    def _check_not_armed(self, command: str) -> None:
        if self.armed:
            raise ScalerError(
                E_BUSY,
                f"busy: armed for gated counting ({self.taken} of {self.points} points "
                f"taken); DISARM before {command}",
            )

    def arm(self, points: int, now: float) -> None:
        """Count gates from ``now``: one point per gate, ``points`` points;
        the buffer is cleared."""
        self.update(now)
        if self.counting:
            raise ScalerError(E_BUSY, "busy: counting; STOP first")
        self._check_not_armed("ARM")
        if not 1 <= points <= self.buffer_size:
            raise ScalerError(
                E_BAD_ARGUMENT,
                f"bad argument: {points} points is more than the buffer holds "
                f"({self.buffer_size} points): arm at most {self.buffer_size} points "
                "and read them before the next ARM"
                if points > self.buffer_size
                else f"bad argument: points must be 1..{self.buffer_size}, got {points}",
            )
        self.armed = True
        self.points = points
        self.taken = self.overflow = self.missed = 0
        self._armed_at = now
        self._last_gate_end = -float("inf")
        self._buffer = np.zeros((points, 1 + len(self.signals)), dtype=np.int64)

    def disarm(self, now: float) -> None:
        """Stop counting gates; the points taken stay readable. OK when not armed."""
        self.update(now)
        self.armed = False

    def free_points(self) -> int:
        """Points the armed acquisition still takes (0 when not armed)."""
        return self.points - self.taken if self.armed else 0

    def gate(self, start: float, end: float) -> None:
        """The gate input was high from ``start`` to ``end`` (called in time
        order, once the gate has ended): latch one point if armed."""
        if not self.armed or start < self._armed_at:
            return
        if start - self._last_gate_end < self.dead_time:
            self.missed += 1
            return
        self._last_gate_end = end
        if self.taken >= self.points:
            self.overflow += 1
            return
        seconds = end - start
        row = self._buffer[self.taken]
        row[0] = round(seconds * TICKS_PER_SECOND)
        for i, rate in enumerate(self._sample_rates()):
            mean = rate * seconds
            row[1 + i] = int(self._rng.poisson(mean)) if mean <= MAX_MEAN else round(mean)
        self.taken += 1

    def buffer_state(self) -> str:
        if self.armed:
            return "ARMED" if self.taken < self.points else "DONE"
        return "IDLE"

    def read_points(self, first: int, count: int) -> np.ndarray:
        """Points ``first`` .. ``first + count - 1`` of the buffer: rows of
        gate time (µs) and counts per channel."""
        self.update()
        if count < 1 or count > MAX_READ:
            raise ScalerError(
                E_BAD_ARGUMENT, f"bad argument: read 1..{MAX_READ} points at a time, got {count}"
            )
        if first + count > self.taken:
            lost = (
                f"; {self.overflow} gate(s) after the last point were lost (buffer overflow: "
                f"ARM more points, at most {self.buffer_size})"
                if self.overflow
                else ""
            )
            raise ScalerError(
                E_NOT_TAKEN,
                f"points {first}..{first + count - 1} not taken: {self.taken} of "
                f"{self.points} points taken (0..{self.taken - 1}); read up to point "
                f"{self.taken - 1} or wait for the gates{lost}"
                if self.taken
                else f"points {first}..{first + count - 1} not taken: no point taken yet "
                f"({self.points} armed); wait for the gates{lost}",
            )
        return self._buffer[first : first + count]

    def _schedule_sampling(self) -> None:
        """Inside the simulator's event loop, sample every SAMPLE_PERIOD while counting."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (unit tests): sampled at each request
        self._tick = loop.call_later(SAMPLE_PERIOD, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self.update()
        if self.counting:
            self._schedule_sampling()

    # ------------------------------------------------------------ public API
    def status(self) -> dict[str, Any]:
        """Counting state, elapsed time and counts per channel."""
        now = self.update()
        return {
            "counting": self.counting,
            "preset": self.preset,
            "elapsed": round(self.elapsed(now), 6),
            "channels": {
                str(n): {"signal": s, "counts": c}
                for n, (s, c) in enumerate(zip(self.signals, self.counts, strict=True), 1)
            },
            "buffer": {
                "state": self.buffer_state(),
                "taken": self.taken,
                "points": self.points,
                "overflow": self.overflow,
                "missed": self.missed,
            },
        }

    # --------------------------------------------------------------- commands
    def _cmd_id(self, args: list[str]) -> str:
        no_args(args)
        return f"SCALER-{len(self.signals)} {FIRMWARE_VERSION}"

    def _cmd_channels(self, args: list[str]) -> str:
        no_args(args)
        return str(len(self.signals))

    def _cmd_preset(self, args: list[str]) -> str:
        value = seconds_arg(args, "preset", MIN_PRESET, self.max_preset)
        self.update()
        if self.counting:
            raise ScalerError(E_BUSY, "busy: counting; STOP first")
        self._check_not_armed("PRESET")
        self.preset = value
        return "OK"

    def _cmd_query_preset(self, args: list[str]) -> str:
        no_args(args)
        return format_seconds(self.preset)

    def _cmd_status(self, args: list[str]) -> str:
        no_args(args)
        now = self.update()
        return f"{'COUNTING' if self.counting else 'IDLE'} {self.elapsed(now):.6f}"

    def _cmd_counts(self, args: list[str]) -> str:
        no_args(args)
        self.update()
        return " ".join(str(c) for c in self.counts)

    def _cmd_bufsize(self, args: list[str]) -> str:
        no_args(args)
        return str(self.buffer_size)

    def _cmd_deadtime(self, args: list[str]) -> str:
        no_args(args)
        return format_seconds(self.dead_time)

    def _cmd_arm(self, args: list[str]) -> str:
        text = one_arg(args, "a number of points")
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            raise ScalerError(
                E_BAD_ARGUMENT,
                f"bad argument: points must be an integer 1..{self.buffer_size}, got {text}",
            )
        self.arm(int(text), self._clock())
        return "OK"

    def _cmd_bufstatus(self, args: list[str]) -> str:
        no_args(args)
        self.update()
        return f"{self.buffer_state()} {self.taken} {self.points} {self.overflow} {self.missed}"

    def _cmd_data(self, args: list[str]) -> bytes:
        if len(args) != 2 or not all(a.isascii() and a.isdigit() and len(a) <= 12 for a in args):
            got = " ".join(args) or "nothing"
            raise ScalerError(
                E_BAD_ARGUMENT,
                f"bad argument: expected the first point and a number of points, got {got}",
            )
        first, count = int(args[0]), int(args[1])
        rows = self.read_points(first, count)
        payload = rows.astype("<i8", copy=False).tobytes()
        header = f"?DATA {first} {count} {rows.shape[1]} {len(payload)}\r\n"
        return header.encode("ascii") + payload
