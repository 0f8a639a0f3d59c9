"""Component logic of a counter/timer (scaler) over TCP (no tango import).

Channels are named by configuration (``["i0", "diode"]`` = hardware channels
1 and 2). The preset time is a device setting: it is sent to the hardware on
every connection and before every count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tango_devices.common.component import Component, ComponentError
from tango_devices.drivers.scaler import BufferedPoints, BufferStatus, ScalerClient
from tango_devices.scaler import states as st

MAX_PRESET = 3600.0
END_MARGIN = 0.0003  # s: look for the end of a count just after it
BUFFER_POLL = 0.05  # s: the poll period while the gated buffer takes points
#: most points of one ReadBuffer (more in several calls)
MAX_BUFFER_READ = 10_000


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
    buffer: BufferStatus | None = None  # when read with this observation


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
        self._buffer: BufferStatus | None = None
        self._buffer_read_at = -math.inf
        self._buffer_size: int | None = None
        self._dead_time: float | None = None

    # ------------------------------------------------------------ observing
    def on_connect(self) -> None:
        self._hardware_channels = self._driver.channels()
        self._preset_on_hw = None
        self._driver.set_preset(self._preset)
        self._preset_on_hw = self._preset
        self._buffer_size = self._driver.buffer_size()
        self._dead_time = self._driver.dead_time()
        self._buffer_read_at = -math.inf

    def observe(self) -> ScalerObservation:
        status = self._driver.status()
        counts = self._driver.counts()
        buffer = None
        # the gated buffer: while it takes points, else at the idle rate (a
        # count in progress means it is not armed: no extra request per point)
        if self.buffer_armed or (
            not status.counting and time.monotonic() - self._buffer_read_at >= self.idle_period
        ):
            buffer = self._driver.buffer_status()
        return ScalerObservation(
            status.counting, status.elapsed, tuple(counts), self._hardware_channels, buffer
        )

    def apply(self, obs: ScalerObservation) -> None:
        self._counts = obs.counts[: len(self.config.channels)]
        self._elapsed = obs.elapsed
        self._counting = obs.counting
        if obs.buffer is not None:
            self._buffer = obs.buffer
            self._buffer_read_at = time.monotonic()

    def on_link_lost(self) -> None:
        self._buffer_read_at = -math.inf

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
        buffer = self._buffer
        if buffer is not None and buffer.state == "ARMED":
            return st.BUFFERING, (
                f"Armed for gated counting: {buffer.taken} of {buffer.points} point(s) taken"
                f"{_lost(buffer)}; Stop disarms."
            )
        ready = f"Ready ({self.identity}); preset {self._preset:g} s"
        if buffer is not None and buffer.points:
            ready += (
                f"; gated buffer: {buffer.taken} of {buffer.points} point(s) taken{_lost(buffer)}"
            )
        return st.IDLE, ready + "."

    def publish_key(self):
        return (self._counts, round(self._elapsed, 3), self._counting, self._buffer)

    def busy(self) -> bool:
        return self.machine.state is st.RUNNING

    def _sleep(self, period: float) -> None:
        if self.buffer_armed and not self._counting:
            super()._sleep(BUFFER_POLL)  # gates come from the hardware: follow them calmly
            return
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
    def buffer_armed(self) -> bool:
        """The gated buffer takes points, as last observed."""
        buffer = self._buffer
        return buffer is not None and buffer.state == "ARMED"

    def buffer_value(self, name: str) -> int | str | None:
        """A field of the gated buffer's status (state, taken, points, overflow,
        missed), as last observed; None when not known."""
        buffer = self._buffer
        return None if buffer is None or not self.link_ok else getattr(buffer, name)

    @property
    def buffer_size(self) -> int | None:
        return self._buffer_size

    @property
    def dead_time(self) -> float | None:
        return self._dead_time

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
            self._release_buffer(f"PresetTime {seconds:g}")
            self._preset_on_hw = None
            self.call(f"PresetTime {seconds:g}", self._driver.set_preset, self._preset)
            self._preset_on_hw = self._preset

    def start(self) -> None:
        """Clear, then count for the preset time."""
        self.require("Start")
        self._release_buffer("Start")
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
        """End a count, and disarm the gated buffer (its points stay readable)."""
        self.require("Stop")
        buffer = self._buffer
        if buffer is not None and buffer.state != "IDLE":
            self.call("Stop", self._driver.disarm)
            self._buffer_read_at = -math.inf
        self.call("Stop", self._driver.stop)
        self.poll_once()

    def _release_buffer(self, what: str) -> None:
        """A gated buffer that has taken every point (DONE) is still armed on
        the scaler, which refuses counting and settings until it is disarmed:
        disarm it (its points stay readable until the next ArmBuffer)."""
        buffer = self._buffer
        if buffer is not None and buffer.state == "DONE":
            self.call(what, self._driver.disarm)
            with self._lock:
                self._buffer = BufferStatus("IDLE", *dataclasses.astuple(buffer)[1:])

    def arm_buffer(self, points: int) -> None:
        """Gated buffered counting: one point per gate on the gate input (from
        the timing unit), ``points`` points; the buffer is cleared."""
        self.require("ArmBuffer")
        size = self._buffer_size
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise ScalerError(f"ArmBuffer takes a number of points >= 1, not {points!r}")
        if size is not None and points > size:
            raise ScalerError(
                f"ArmBuffer {points}: more points than the scaler's buffer holds ({size}); "
                f"arm at most {size} points and read them before the next ArmBuffer"
            )
        self._release_buffer(f"ArmBuffer {points}")
        self.call(f"ArmBuffer {points}", self._driver.arm_buffer, points)
        self._buffer_read_at = -math.inf
        self.poll_once()

    def read_buffer(self, first: int, count: int) -> BufferedPoints:
        """Points ``first`` .. of the gated buffer; ``count`` 0: every point
        taken from ``first`` (at most :data:`MAX_BUFFER_READ`)."""
        self.require("ReadBuffer")
        for name, value, high in (("first", first, 10**9), ("count", count, MAX_BUFFER_READ)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise ScalerError(
                    f"ReadBuffer: {name} must be a whole number 0..{high}, not {value!r}"
                    + (" (0: every point taken from first)" if name == "count" else "")
                )
        buffer = self.call("ReadBuffer", self._driver.buffer_status)
        if count == 0:
            count = min(max(buffer.taken - first, 0), MAX_BUFFER_READ)
            if count == 0:
                return BufferedPoints(first, np.zeros(0), np.zeros((0, len(self.config.channels))))
        if first + count > buffer.taken:
            so_far = (
                f"{buffer.taken} point(s) taken (0..{buffer.taken - 1})"
                if buffer.taken
                else "no point taken yet"
            )
            raise ScalerError(
                f"ReadBuffer {first} {count}: points {first}..{first + count - 1} not taken: "
                f"{so_far} of {buffer.points}{_lost(buffer)}; read the points taken only"
            )
        points = self.call("ReadBuffer", self._driver.read_buffer, first, count)
        n = len(self.config.channels)
        return BufferedPoints(points.first, points.gate_time, points.counts[:, :n])

    def clear(self) -> None:
        self.require("Clear")
        self._release_buffer("Clear")
        self.call("Clear", self._driver.clear)
        self.poll_once()

    def channel_counts(self, names: Sequence[str]) -> list[int]:
        counts = self.counts() or {}
        return [counts.get(n, 0) for n in names]


def _lost(buffer: BufferStatus) -> str:
    """What the buffer's status says about lost gates ('' when none were)."""
    parts = []
    if buffer.missed:
        parts.append(f"{buffer.missed} gate(s) within the dead time missed")
    if buffer.overflow:
        parts.append(f"{buffer.overflow} gate(s) after the last point lost")
    return f" ({'; '.join(parts)})" if parts else ""
