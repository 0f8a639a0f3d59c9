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
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tango_devices.simulators.physics import BeamlinePhysics

FIRMWARE_VERSION = "1.0"
MAX_LINE = 128
MIN_PRESET = 0.001
DEFAULT_MAX_PRESET = 3600.0
SAMPLE_PERIOD = 0.01  # s, rate sampling while counting (inside an event loop)
MAX_MEAN = 1e15  # beyond this mean the count is the mean itself (noise < 1e-7)

# Error codes (docs/protocol-scaler.md).
E_UNKNOWN_COMMAND = 1
E_BAD_ARGUMENT = 2
E_BUSY = 5

_DECIMAL_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ScalerError(Exception):
    """A request the scaler refuses: becomes ``ERROR <code> <message>``."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} (error {code})")
        self.code = code
        self.message = message


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed and not str(key).startswith("_"):
            raise ValueError(
                f"{where}{key}: unknown key; valid keys are {', '.join(allowed)} "
                "(keys starting with '_' are comments)"
            )


def _no_args(args: list[str]) -> None:
    if args:
        raise ScalerError(E_BAD_ARGUMENT, f"bad argument: takes no argument, got {' '.join(args)}")


def format_seconds(seconds: float) -> str:
    """Seconds as the protocol writes them: fixed point, at most 6 decimals."""
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _signals() -> tuple[str, ...]:
    """The physics signal names a channel may count (``physics.rates()`` keys)."""
    return tuple(BeamlinePhysics().rates())


class ScalerController:
    """A virtual counter-timer speaking the protocol of ``docs/protocol-scaler.md``.

    ``config``: ``{"channels": {"1": "i0", "2": "diode"}, "max_preset": 3600}``
    (channel number -> physics signal; optional ``seed`` for the noise;
    ``kind`` and ``port`` are accepted and ignored). ``ValueError`` names the
    bad key.
    """

    kind = "scaler"
    fault_kinds: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
        physics: BeamlinePhysics | None = None,
    ):
        self.name = name
        self._clock = clock
        self.physics = physics if physics is not None else BeamlinePhysics()
        if not isinstance(config, Mapping):
            raise ValueError("must be an object with a 'channels' object")
        _check_keys("", config, ("kind", "port", "channels", "max_preset", "seed"))
        self.signals = self._build_channels(config.get("channels"))
        self.max_preset = self._max_preset(config.get("max_preset", DEFAULT_MAX_PRESET))
        seed = config.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        self._rng = np.random.default_rng(seed)
        self.preset = 1.0
        self.counts = [0] * len(self.signals)
        self.counting = False
        self._start = 0.0
        self._elapsed = 0.0  # of the last count, once it ended
        self._sampled_at = 0.0
        self._rates = [0.0] * len(self.signals)
        self._tick: asyncio.TimerHandle | None = None
        self._commands: dict[str, Callable[[list[str]], str]] = {
            "?ID": self._cmd_id,
            "?CHANNELS": self._cmd_channels,
            "PRESET": self._cmd_preset,
            "?PRESET": self._cmd_query_preset,
            "START": self._cmd_start,
            "STOP": self._cmd_stop,
            "CLEAR": self._cmd_clear,
            "?STATUS": self._cmd_status,
            "?COUNTS": self._cmd_counts,
        }

    @staticmethod
    def _build_channels(config: Any) -> list[str]:
        if not isinstance(config, Mapping) or not config:
            raise ValueError(
                'channels: must be a non-empty object such as {"1": "i0", "2": "diode"}'
            )
        valid = _signals()
        numbers = {}
        for key, signal in config.items():
            if str(key).startswith("_"):
                continue
            if (
                not (
                    isinstance(key, str)
                    and key.isascii()
                    and key.isdigit()
                    and key == str(int(key))
                )
                or int(key) < 1
            ):
                raise ValueError(f"channels.{key}: channel numbers must be 1, 2, 3, ...")
            if signal not in valid:
                raise ValueError(
                    f"channels.{key}: must be a physics signal ({', '.join(valid)}), got {signal!r}"
                )
            numbers[int(key)] = signal
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            got = ", ".join(str(n) for n in sorted(numbers))
            raise ValueError(f"channels: channels must be numbered 1..N without gaps, got {got}")
        return [numbers[n] for n in sorted(numbers)]

    @staticmethod
    def _max_preset(value: Any) -> float:
        if not _is_number(value) or not MIN_PRESET <= value <= 1e6:
            raise ValueError(
                f"max_preset: must be a number of seconds between {MIN_PRESET:g} and 1e6, "
                f"got {value!r}"
            )
        return float(value)

    # ------------------------------------------------------------ counting
    def update(self, now: float | None = None) -> float:
        """Accumulate the counts up to ``now`` (default: the clock), at most to
        the end of the preset; then sample the rates. Returns ``now``."""
        if now is None:
            now = self._clock()
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
        self.counts = [0] * len(self.signals)
        self._elapsed = 0.0

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
    def handle_line(self, line: str) -> str:
        """Answer one request line (without its terminator); the reply has no
        terminator either. A blank line gets no reply: returns ``""``."""
        line = line.strip()
        if not line:
            return ""
        command, *args = line.split()
        command = command.upper()
        try:
            if len(line) > MAX_LINE:
                raise ScalerError(
                    E_BAD_ARGUMENT, f"bad argument: line longer than {MAX_LINE} characters"
                )
            handler = self._commands.get(command)
            if handler is None:
                raise ScalerError(E_UNKNOWN_COMMAND, "unknown command")
            return f"{command} {handler(args)}"
        except ScalerError as exc:
            return f"{command} ERROR {exc.code} {exc.message}"

    def inject_fault(self, kind: str, request: Mapping[str, Any]) -> str:
        """The scaler has no fault of its own: only the link faults apply."""
        raise ValueError(f"unknown fault kind {kind!r} for {self.name}: it has no fault kinds")

    def clear_faults(self) -> None:
        """Nothing to clear (no fault kinds of its own)."""

    def active_faults(self) -> list[str]:
        return []

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
        }

    # --------------------------------------------------------------- commands
    def _cmd_id(self, args: list[str]) -> str:
        _no_args(args)
        return f"SCALER-{len(self.signals)} {FIRMWARE_VERSION}"

    def _cmd_channels(self, args: list[str]) -> str:
        _no_args(args)
        return str(len(self.signals))

    def _cmd_preset(self, args: list[str]) -> str:
        if len(args) != 1:
            got = "nothing" if not args else " ".join(args)
            raise ScalerError(E_BAD_ARGUMENT, f"bad argument: expected seconds, got {got}")
        text = args[0]
        if not _DECIMAL_RE.fullmatch(text) or not math.isfinite(float(text)):
            raise ScalerError(E_BAD_ARGUMENT, f"bad argument: not a decimal number: {text}")
        value = round(float(text), 6)
        if not MIN_PRESET <= value <= self.max_preset:
            raise ScalerError(
                E_BAD_ARGUMENT,
                f"bad argument: preset must be {MIN_PRESET:g}..{self.max_preset:g} s, got {text}",
            )
        self.update()
        if self.counting:
            raise ScalerError(E_BUSY, "busy: counting; STOP first")
        self.preset = value
        return "OK"

    def _cmd_query_preset(self, args: list[str]) -> str:
        _no_args(args)
        return format_seconds(self.preset)

    def _cmd_start(self, args: list[str]) -> str:
        _no_args(args)
        self.start(self._clock())
        return "OK"

    def _cmd_stop(self, args: list[str]) -> str:
        _no_args(args)
        self.stop(self._clock())
        return "OK"

    def _cmd_clear(self, args: list[str]) -> str:
        _no_args(args)
        self.clear(self._clock())
        return "OK"

    def _cmd_status(self, args: list[str]) -> str:
        _no_args(args)
        now = self.update()
        return f"{'COUNTING' if self.counting else 'IDLE'} {self.elapsed(now):.6f}"

    def _cmd_counts(self, args: list[str]) -> str:
        _no_args(args)
        self.update()
        return " ".join(str(c) for c in self.counts)
