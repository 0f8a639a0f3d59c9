"""Component logic of a counter/timer (scaler) over TCP (no tango import).

Channels are named by configuration (``["i0", "diode"]`` = hardware channels
1 and 2). The preset time is a device setting: it is sent to the hardware on
every connection and before every count.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tango_devices.common.component import Component, ComponentError
from tango_devices.drivers.scaler import ScalerClient
from tango_devices.scaler import states as st

MAX_PRESET = 3600.0
END_MARGIN = 0.0003  # s: look for the end of a count just after it


class ScalerError(ComponentError):
    pass


@dataclass(frozen=True)
class ScalerConfig:
    url: str
    channels: tuple[str, ...]
    timeout: float = 0.5
    poll_period: float = 0.2
    reconnect_period: float = 1.0

    def validate(self) -> None:
        problems = []
        if not self.url:
            problems.append("Port is empty: set it to a pyserial URL such as socket://host:port")
        if not self.channels:
            problems.append("Channels is empty: list the channel names, e.g. i0, diode")
        seen = set()
        for name in self.channels:
            if not name.isidentifier():
                problems.append(f"channel name {name!r} must be a valid attribute name")
            if name.lower() in seen:
                problems.append(f"channel name {name!r} is listed twice")
            seen.add(name.lower())
        if problems:
            raise ScalerError("Bad configuration: " + "; ".join(problems))


@dataclass(frozen=True)
class ScalerObservation:
    counting: bool
    elapsed: float
    counts: tuple[int, ...]
    hardware_channels: int


class ScalerLogic(Component):
    table = st.SCALER_TABLE
    hardware = "the scaler"
    error_class = ScalerError

    def __init__(
        self,
        config: ScalerConfig,
        driver_factory: Callable[..., object] = ScalerClient,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        config.validate()
        self.config = config
        super().__init__(
            driver_factory(config.url, timeout=config.timeout),
            config.url,
            idle_period=config.poll_period,
            busy_period=0.005,
            reconnect_period=config.reconnect_period,
            thread_context=thread_context,
        )
        self._preset = 1.0
        self._preset_on_hw: float | None = None  # what the hardware has, if known
        self._counts: tuple[int, ...] | None = None
        self._elapsed = 0.0
        self._hardware_channels = 0
        self._ends_at = 0.0
        self._counting = False

    # ------------------------------------------------------------ observing
    def on_connect(self) -> None:
        self._hardware_channels = self._driver.channels()
        self._preset_on_hw = None
        self._driver.set_preset(self._preset)
        self._preset_on_hw = self._preset

    def observe(self) -> ScalerObservation:
        status = self._driver.status()
        counts = self._driver.counts()
        return ScalerObservation(
            status.counting, status.elapsed, tuple(counts), self._hardware_channels
        )

    def apply(self, obs: ScalerObservation) -> None:
        self._counts = obs.counts[: len(self.config.channels)]
        self._elapsed = obs.elapsed
        self._counting = obs.counting

    def classify(self, obs: ScalerObservation) -> tuple[str, str]:
        n = len(self.config.channels)
        if obs.hardware_channels < n:
            return st.MISCONFIGURED, (
                f"The scaler has {obs.hardware_channels} channel(s) but the Channels property "
                f"lists {n} ({', '.join(self.config.channels)}): fix the Channels property, "
                "then run Init."
            )
        if obs.counting:
            return st.COUNTING, f"Counting: {obs.elapsed:.3f} of {self._preset:g} s."
        return st.IDLE, f"Ready ({self.identity}); preset {self._preset:g} s."

    def publish_key(self):
        return (self._counts, round(self._elapsed, 3), self._counting)

    def busy(self) -> bool:
        return self.machine.state is st.RUNNING

    def _sleep(self, period: float) -> None:
        # While counting, sleep until the count is due to end rather than spin.
        if self.busy():
            # wake just after the hardware's end of count; past it, look again soon
            remaining = self._ends_at - time.monotonic()
            if remaining > 0:
                period = min(max(remaining, 0.0005), 0.05)
            elif remaining > -0.02:
                period = 0.001
        super()._sleep(period)

    # -------------------------------------------------------------- readings
    @property
    def counting(self) -> bool:
        """Counting, as last observed (values are published before the state changes)."""
        return self._counting

    @property
    def preset(self) -> float:
        return self._preset

    @property
    def elapsed(self) -> float:
        return self._elapsed

    def counts(self) -> dict[str, int] | None:
        with self._lock:
            counts = self._counts
        if counts is None:
            return None
        return dict(zip(self.config.channels, counts, strict=False))

    # -------------------------------------------------------------- commands
    def set_preset(self, seconds: float) -> None:
        self.require("write_PresetTime")
        if not math.isfinite(seconds) or not 0.001 <= seconds <= MAX_PRESET:
            raise ScalerError(
                f"PresetTime must be between 0.001 and {MAX_PRESET:g} s, not {seconds!r}"
            )
        self._preset = float(seconds)
        if self._driver.connected and self._preset_on_hw != self._preset:
            self._preset_on_hw = None
            self.call(f"PresetTime {seconds:g}", self._driver.set_preset, self._preset)
            self._preset_on_hw = self._preset

    def start(self) -> None:
        """Clear, then count for the preset time."""
        self.require("Start")
        # START clears the counts itself; the preset is already there unless
        # setting it failed (one round trip per count: scans count per point)
        if self._preset_on_hw != self._preset:
            self.call("Start", self._driver.set_preset, self._preset)
            self._preset_on_hw = self._preset
        self._ends_at = time.monotonic() + self._preset + END_MARGIN
        self.call("Start", self._driver.start)
        # the count started when the hardware got START: at the latest now
        self._ends_at = time.monotonic() + self._preset + END_MARGIN
        self.poll_once()

    def stop(self) -> None:
        self.require("Stop")
        self.call("Stop", self._driver.stop)
        self.poll_once()

    def clear(self) -> None:
        self.require("Clear")
        self.call("Clear", self._driver.clear)
        self.poll_once()

    def channel_counts(self, names: Sequence[str]) -> list[int]:
        counts = self.counts() or {}
        return [counts.get(n, 0) for n in names]
