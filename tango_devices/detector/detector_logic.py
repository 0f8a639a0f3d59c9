"""Component logic of a 2D camera over TCP (no tango import).

The camera produces frames; this class fetches the newest one whenever the
camera's frame counter moves, keeps it, and computes the statistics of a
region of interest (sum and intensity-weighted centroid) with numpy.
Acquisition settings (exposure, mode, number of frames) are device settings:
they are sent to the camera at every start.
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tango_devices.common.component import Component, ComponentError
from tango_devices.detector import states as st
from tango_devices.drivers.camera import CameraClient, FrameBuffer

MAX_EXPOSURE = 60.0
MAX_FRAMES = 100000
#: with external triggers the newest frame (Image, ROI) is fetched at most this often
LIVE_PERIOD = 0.05


class DetectorError(ComponentError):
    pass


class AcquisitionMode(enum.IntEnum):
    SINGLE = 0
    MULTIPLE = 1
    CONTINUOUS = 2


class TriggerMode(enum.IntEnum):
    """INTERNAL: frames timed by the camera; EXTERNAL: one frame per pulse on
    its trigger input (a timing unit's output), frames buffered and numbered."""

    INTERNAL = 0
    EXTERNAL = 1


@dataclass(frozen=True)
class DetectorConfig:
    url: str
    timeout: float = 0.5
    poll_period: float = 0.1
    reconnect_period: float = 1.0

    def validate(self) -> None:
        if not self.url:
            raise DetectorError(
                "Bad configuration: Port is empty: set it to a pyserial URL such as socket://host:port"
            )


@dataclass(frozen=True)
class RoiStats:
    total: float
    centroid_x: float
    centroid_y: float


def roi_stats(image: np.ndarray, roi: tuple[int, int, int, int]) -> RoiStats:
    """Sum and intensity-weighted centroid (in full-image pixels) of a ROI
    ``(x, y, width, height)``; a zero-size or empty ROI gives NaN centroids."""
    x, y, w, h = roi
    sub = image[y : y + h, x : x + w].astype(np.float64)
    total = float(sub.sum())
    if sub.size == 0 or total <= 0:
        return RoiStats(total, math.nan, math.nan)
    cx = float((sub.sum(axis=0) * np.arange(x, x + sub.shape[1])).sum() / total)
    cy = float((sub.sum(axis=1) * np.arange(y, y + sub.shape[0])).sum() / total)
    return RoiStats(total, cx, cy)


@dataclass(frozen=True)
class CameraObservation:
    acquiring: bool
    counter: int
    frame: np.ndarray | None  # a new frame, if the counter moved
    frame_counter: int
    buffer: FrameBuffer | None = None  # external triggers: the numbered frames


class DetectorLogic(Component):
    table = st.DETECTOR_TABLE
    hardware = "the camera"
    error_class = DetectorError

    def __init__(
        self,
        config: DetectorConfig,
        driver_factory: Callable[..., object] = CameraClient,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        config.validate()
        self.config = config
        super().__init__(
            driver_factory(config.url, timeout=config.timeout),
            config.url,
            idle_period=config.poll_period,
            busy_period=0.002,
            reconnect_period=config.reconnect_period,
            thread_context=thread_context,
        )
        self._exposure = 0.1
        self._mode = AcquisitionMode.SINGLE
        self._frames = 10
        self._size: tuple[int, int] | None = None
        self._roi: tuple[int, int, int, int] | None = None
        self._image: np.ndarray | None = None
        self._frame_counter = 0
        self._stats: RoiStats | None = None
        self._last_fetched = -1
        self._fetched_at = -math.inf
        self._acquiring = False
        self._trigger = TriggerMode.INTERNAL
        self._trigger_on_hw: str | None = None  # what the camera has, if known
        self._buffer: FrameBuffer | None = None

    # ------------------------------------------------------------ observing
    def on_connect(self) -> None:
        width, height, _bits = self._driver.size()
        self._size = (width, height)
        if self._roi is None:
            self._roi = (0, 0, width, height)
        self._last_fetched = -1
        self._trigger_on_hw = None
        self._trigger_on_hw = self._driver.trigger()

    def observe(self) -> CameraObservation:
        status = self._driver.status()
        external = self._trigger_on_hw == "EXTERNAL"
        frame = None
        counter = self._frame_counter
        now = time.monotonic()
        if (
            status.counter > 0
            and status.counter != self._last_fetched
            # external triggers can come faster than anyone looks at a live image
            and (not (external and status.acquiring) or now - self._fetched_at >= LIVE_PERIOD)
        ):
            counter, frame = self._driver.read_frame()
            self._last_fetched = counter
            self._fetched_at = now
        buffer = self._driver.frame_buffer() if external else None
        return CameraObservation(status.acquiring, status.counter, frame, counter, buffer)

    def apply(self, obs: CameraObservation) -> None:
        self._acquiring = obs.acquiring
        self._buffer = obs.buffer
        if obs.frame is not None:
            self._image = obs.frame
            self._frame_counter = obs.frame_counter
            self._stats = roi_stats(obs.frame, self._clipped_roi())

    def classify(self, obs: CameraObservation) -> tuple[str, str]:
        if obs.buffer is not None:
            buffered = _describe_buffer(obs.buffer)
            if obs.acquiring:
                return st.ACQUIRING, (
                    f"Acquiring on external triggers ({self._mode.name.lower()}, exposure "
                    f"{self._exposure:g} s): {buffered}; frame {obs.counter}."
                )
            return st.IDLE, (
                f"Ready ({self.identity}); external trigger: {buffered}; last frame {obs.counter}."
            )
        if obs.acquiring:
            return st.ACQUIRING, (
                f"Acquiring ({self._mode.name.lower()}, exposure {self._exposure:g} s); "
                f"frame {obs.counter}."
            )
        return st.IDLE, f"Ready ({self.identity}); last frame {obs.counter}."

    def publish_key(self):
        return (self._frame_counter, self._acquiring, self._buffer)

    def busy(self) -> bool:
        return self.machine.state is st.RUNNING

    def _clipped_roi(self) -> tuple[int, int, int, int]:
        roi = self._roi or (0, 0, 0, 0)
        if self._size is None:
            return roi
        width, height = self._size
        x, y, w, h = roi
        x, y = max(0, min(x, width)), max(0, min(y, height))
        return (x, y, max(0, min(w, width - x)), max(0, min(h, height - y)))

    # -------------------------------------------------------------- readings
    @property
    def image(self) -> np.ndarray | None:
        return self._image

    @property
    def acquiring(self) -> bool:
        """Acquiring, as last observed (values are published before the state changes)."""
        return self._acquiring

    @property
    def frame_counter(self) -> int:
        return self._frame_counter

    @property
    def stats(self) -> RoiStats | None:
        return self._stats

    @property
    def trigger(self) -> TriggerMode:
        return self._trigger

    def buffer_value(self, name: str) -> int | None:
        """A field of the external-trigger frame buffer (count, first, missed),
        as last observed; None in INTERNAL mode or when not known."""
        buffer = self._buffer
        return None if buffer is None or not self.link_ok else getattr(buffer, name)

    @property
    def exposure(self) -> float:
        return self._exposure

    @property
    def mode(self) -> AcquisitionMode:
        return self._mode

    @property
    def frames(self) -> int:
        return self._frames

    @property
    def roi(self) -> tuple[int, int, int, int] | None:
        return self._roi

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size

    # -------------------------------------------------------------- settings
    def set_exposure(self, seconds: float) -> None:
        self.require("write_ExposureTime")
        if not math.isfinite(seconds) or not 0.0001 <= seconds <= MAX_EXPOSURE:
            raise DetectorError(
                f"ExposureTime must be between 0.0001 and {MAX_EXPOSURE:g} s, not {seconds!r}"
            )
        self._exposure = float(seconds)

    def set_mode(self, mode: int) -> None:
        self.require("write_AcquisitionMode")
        try:
            self._mode = AcquisitionMode(int(mode))
        except ValueError:
            names = ", ".join(f"{m.value} {m.name}" for m in AcquisitionMode)
            raise DetectorError(f"AcquisitionMode must be one of {names}, not {mode!r}") from None

    def set_trigger(self, mode: int) -> None:
        self.require("write_TriggerMode")
        try:
            self._trigger = TriggerMode(int(mode))
        except ValueError:
            names = ", ".join(f"{m.value} {m.name}" for m in TriggerMode)
            raise DetectorError(f"TriggerMode must be one of {names}, not {mode!r}") from None

    def set_frames(self, count: int) -> None:
        self.require("write_NumberOfFrames")
        if not 1 <= int(count) <= MAX_FRAMES:
            raise DetectorError(f"NumberOfFrames must be between 1 and {MAX_FRAMES}, not {count}")
        self._frames = int(count)

    def set_roi(self, roi) -> None:
        self.require("write_Roi")
        values = [int(v) for v in roi]
        if len(values) != 4 or values[2] <= 0 or values[3] <= 0 or min(values[:2]) < 0:
            raise DetectorError(
                f"Roi is [x, y, width, height] with x, y >= 0 and a positive size, not {values}"
            )
        if self._size is not None:
            width, height = self._size
            x, y, w, h = values
            if x + w > width or y + h > height:
                raise DetectorError(
                    f"Roi {values} goes beyond the {width}x{height} image: x + width must be "
                    f"<= {width} and y + height <= {height}"
                )
        with self._lock:
            self._roi = tuple(values)
            if self._image is not None:
                self._stats = roi_stats(self._image, self._clipped_roi())
        self.republish()

    # -------------------------------------------------------------- commands
    def _acquire(self, what: str, mode: AcquisitionMode, frames: int, trigger: TriggerMode) -> None:
        if self._trigger_on_hw != trigger.name:
            self._trigger_on_hw = None
            self.call(what, self._driver.set_trigger, trigger.name)
            self._trigger_on_hw = trigger.name
        self.call(what, self._driver.set_exposure, self._exposure)
        self.call(what, self._driver.set_mode, mode.name)
        if mode is AcquisitionMode.MULTIPLE:
            self.call(what, self._driver.set_frames, frames)
        self.call(what, self._driver.start)
        self.poll_once()

    def snap(self) -> None:
        """One frame with the current exposure, whatever the acquisition mode."""
        self.require("Snap")
        self._acquire("Snap", AcquisitionMode.SINGLE, 1, TriggerMode.INTERNAL)

    def start(self) -> None:
        self.require("Start")
        self._acquire("Start", self._mode, self._frames, self._trigger)

    def stop(self) -> None:
        self.require("Stop")
        self.call("Stop", self._driver.stop)
        self.poll_once()

    def read_frame(self, number: int) -> np.ndarray:
        """Frame ``number`` of an external-trigger acquisition (uint16, height x width)."""
        self.require("ReadFrame")
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise DetectorError(f"ReadFrame takes a frame number >= 0, not {number!r}")
        if self._trigger_on_hw != "EXTERNAL":
            raise DetectorError(
                "ReadFrame reads the numbered frames of an external-trigger acquisition: set "
                "TriggerMode to EXTERNAL and Start (the newest frame is always in Image)"
            )
        _number, pixels = self.call(f"ReadFrame {number}", self._driver.read_frame_number, number)
        return pixels


def _describe_buffer(buffer: FrameBuffer) -> str:
    if buffer.count:
        frames = (
            f"{buffer.count} frame(s) buffered ({buffer.first}..{buffer.first + buffer.count - 1})"
        )
    else:
        frames = f"no frame buffered (the next is {buffer.first})"
    return frames + (f", {buffer.missed} trigger(s) missed" if buffer.missed else "")
