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
from collections.abc import Mapping
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
    is_number,
    no_args,
    numbered,
    optional_seed,
    seconds_arg,
)
from tango_devices.simulators.physics import BeamlinePhysics

FIRMWARE_VERSION = "1.0"
MIN_PRESET = 0.001
DEFAULT_MAX_PRESET = 3600.0
SAMPLE_PERIOD = 0.01  # s, rate sampling while counting (inside an event loop)
MAX_MEAN = 1e15  # beyond this mean the count is the mean itself (noise < 1e-7)

# Error codes (docs/protocol-scaler.md; E_UNKNOWN_COMMAND = 1 and E_BAD_ARGUMENT = 2 are common).
E_BUSY = 5


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
        check_keys("", config, ("kind", "port", "channels", "max_preset", "seed"))
        self.signals = self._build_channels(config.get("channels"))
        self.max_preset = self._max_preset(config.get("max_preset", DEFAULT_MAX_PRESET))
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
