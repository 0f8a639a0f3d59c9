"""Virtual 2D camera: acquisition timing, frame rendering and its protocol.

Pure logic: no I/O, no ``tango``. The transport (``server.py``) feeds request
lines to :meth:`CameraController.handle_line`; the reply to ``FRAME?`` is
``bytes`` (a header line and the raw pixels). The protocol is specified in
``docs/protocol-camera.md``.

Frames are produced in (injected) time, one per ``exposure + readout_time``
while acquiring; the frame counter is computed analytically from the start
time, so nothing runs in the background. The beam (``physics.spot()``) is
sampled when a completed frame is first noticed (any request), and the image
itself is rendered *lazily*, only when ``FRAME?`` asks for it, then kept until
a newer frame completes: a client that reads slowly or never costs nothing.

Rendering (:class:`FrameRenderer`): the expected counts are a Gaussian spot
(``peak`` counts/s at (x, y), pixel centres at integer coordinates) plus a
uniform dark rate, times the exposure; Poisson noise is drawn for the dark
level over the whole frame and for the spot only in a window of +-6 sigma, then
the sum is clipped to the pixel range. A 512x512 frame takes about a
millisecond at short exposures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
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
    one_arg,
    optional_seed,
    seconds_arg,
)
from tango_devices.simulators.physics import Spot

FIRMWARE_VERSION = "1.0"
MIN_EXPOSURE = 1e-6
MAX_FRAMES = 1_000_000
SPOT_WINDOW = 6.0  # sigmas each side of the spot centre where spot counts are drawn
SCATTER_BELOW = 0.05  # mean dark counts per pixel below which dark counts are scattered

MODES = ("SINGLE", "MULTIPLE", "CONTINUOUS")

# Error codes (docs/protocol-camera.md; E_UNKNOWN_COMMAND = 1 and E_BAD_ARGUMENT = 2 are common).
E_BUSY = 5
E_NO_FRAME = 6


class CameraError(CommandError):
    """A request the camera refuses: becomes ``ERROR <code> <message>``."""


# --------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CameraConfig:
    width: int = 512
    height: int = 512
    bits: int = 16
    readout_time: float = 0.005
    max_exposure: float = 60.0
    seed: int | None = None

    KEYS = ("kind", "port", "width", "height", "bits", "readout_time", "max_exposure", "seed")

    @classmethod
    def from_dict(cls, data: Any) -> CameraConfig:
        """Validate the camera's configuration; ``ValueError`` names the key."""
        if not isinstance(data, Mapping):
            raise ValueError('must be an object such as {"width": 512, "height": 512}')
        check_keys("", data, cls.KEYS)
        defaults = cls()
        width, height = data.get("width", defaults.width), data.get("height", defaults.height)
        for key, value in (("width", width), ("height", height)):
            if not is_int(value) or not 1 <= value <= 4096:
                raise ValueError(
                    f"{key}: must be an integer number of pixels 1..4096, got {value!r}"
                )
        bits = data.get("bits", defaults.bits)
        if not is_int(bits) or not 8 <= bits <= 16:
            raise ValueError(f"bits: must be an integer 8..16 (pixels are uint16), got {bits!r}")
        readout = data.get("readout_time", defaults.readout_time)
        if not is_number(readout) or not 0 <= readout <= 10:
            raise ValueError(f"readout_time: must be a number of seconds 0..10, got {readout!r}")
        max_exposure = data.get("max_exposure", defaults.max_exposure)
        if not is_number(max_exposure) or not MIN_EXPOSURE <= max_exposure <= 3600:
            raise ValueError(
                f"max_exposure: must be a number of seconds {MIN_EXPOSURE:g}..3600, "
                f"got {max_exposure!r}"
            )
        seed = optional_seed(data)
        return cls(width, height, bits, float(readout), float(max_exposure), seed)


# ------------------------------------------------------------------- rendering
class FrameRenderer:
    """Renders noisy frames of a Gaussian spot on a dark background."""

    def __init__(self, width: int, height: int, bits: int, rng: np.random.Generator):
        self.width = width
        self.height = height
        self.max_value = (1 << bits) - 1
        self._rng = rng
        self._columns = np.arange(width, dtype=np.float64)
        self._rows = np.arange(height, dtype=np.float64)

    def expected(self, spot: Spot, exposure: float) -> np.ndarray:
        """The mean counts per pixel (float64, shape (height, width)), no noise."""
        gx = np.exp(-0.5 * ((self._columns - spot.x) / spot.sigma_x) ** 2)
        gy = np.exp(-0.5 * ((self._rows - spot.y) / spot.sigma_y) ** 2)
        return spot.dark * exposure + spot.peak * exposure * np.outer(gy, gx)

    def render(self, spot: Spot, exposure: float) -> np.ndarray:
        """One frame: Poisson counts, clipped to the pixel range, uint16 (h, w)."""
        image = self._dark(max(spot.dark, 0.0) * exposure)
        window = self._window(spot)
        amplitude = max(spot.peak, 0.0) * exposure
        if window is not None and amplitude > 0.0:
            (r0, r1), (c0, c1) = window
            gx = np.exp(-0.5 * ((self._columns[c0:c1] - spot.x) / spot.sigma_x) ** 2)
            gy = np.exp(-0.5 * ((self._rows[r0:r1] - spot.y) / spot.sigma_y) ** 2)
            image[r0:r1, c0:c1] += self._rng.poisson(amplitude * np.outer(gy, gx))
        np.minimum(image, self.max_value, out=image)
        return image.astype(np.uint16)

    def _dark(self, mean: float) -> np.ndarray:
        pixels = self.width * self.height
        if mean <= 0.0:
            counts = np.zeros(pixels, dtype=np.int64)
        elif mean < SCATTER_BELOW:
            # independent Poisson pixels == a Poisson total scattered uniformly (and much faster)
            total = self._rng.poisson(mean * pixels)
            counts = np.bincount(self._rng.integers(0, pixels, total), minlength=pixels)
        else:
            counts = self._rng.poisson(mean, pixels)
        return counts.astype(np.int64, copy=False).reshape(self.height, self.width)

    def _window(self, spot: Spot) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Row and column ranges within SPOT_WINDOW sigmas of the spot, on the chip."""
        if not (spot.sigma_x > 0 and spot.sigma_y > 0):
            return None
        c0 = max(math.floor(spot.x - SPOT_WINDOW * spot.sigma_x), 0)
        c1 = min(math.ceil(spot.x + SPOT_WINDOW * spot.sigma_x) + 1, self.width)
        r0 = max(math.floor(spot.y - SPOT_WINDOW * spot.sigma_y), 0)
        r1 = min(math.ceil(spot.y + SPOT_WINDOW * spot.sigma_y) + 1, self.height)
        if c0 >= c1 or r0 >= r1:
            return None  # the spot is off the chip
        return (r0, r1), (c0, c1)


@dataclass(frozen=True)
class _Completed:
    """A completed frame not rendered yet: what it saw."""

    counter: int
    spot: Spot
    exposure: float


# --------------------------------------------------------------------- camera
class CameraController(WithoutFaults, PhysicsController):
    """A virtual camera speaking the protocol of ``docs/protocol-camera.md``.

    ``config``: ``{"width": 512, "height": 512, "bits": 16, "readout_time":
    0.005, "max_exposure": 60}`` (all optional, optional ``seed`` for the
    noise; ``kind`` and ``port`` are accepted and ignored). ``ValueError``
    names the bad key.
    """

    kind = "camera"

    def _configure(self, config: Mapping[str, Any]) -> None:
        self.config = CameraConfig.from_dict(config)
        cfg = self.config
        self.renderer = FrameRenderer(
            cfg.width, cfg.height, cfg.bits, np.random.default_rng(cfg.seed)
        )
        self.exposure = min(0.1, cfg.max_exposure)
        self.mode = "SINGLE"
        self.frames = 1
        self.counter = 0  # the last completed frame since power-up
        self.acquiring = False
        self._start = 0.0
        self._base = 0  # counter when the acquisition started
        self._goal: int | None = None  # frames to acquire; None: until STOP
        self._completed: _Completed | None = None
        self._rendered: tuple[int, bytes] | None = None  # (counter, FRAME? reply)
        self._commands: dict[str, Command] = {
            "?ID": Command(self._cmd_id),
            "?SIZE": Command(self._cmd_size),
            "EXPOSURE": Command(self._cmd_exposure),
            "?EXPOSURE": Command(self._cmd_query_exposure),
            "MODE": Command(self._cmd_mode),
            "?MODE": Command(self._cmd_query_mode),
            "FRAMES": Command(self._cmd_frames),
            "?FRAMES": Command(self._cmd_query_frames),
            "START": Command(self._ok_action(self.start)),
            "STOP": Command(self._ok_action(self.stop)),
            "?STATUS": Command(self._cmd_status),
            "FRAME?": Command(self._cmd_frame),
        }

    # ------------------------------------------------------------ acquisition
    @property
    def period(self) -> float:
        """Seconds from one frame to the next: exposure plus readout."""
        return self.exposure + self.config.readout_time

    def update(self, now: float | None = None) -> float:
        """Count the frames completed up to ``now`` (default: the clock); the
        newest one records the beam as it is now. Returns ``now``."""
        if now is None:
            now = self._clock()
        if not self.acquiring:
            return now
        done = max(math.floor((now - self._start) / self.period + 1e-9), 0)
        if self._goal is not None and done >= self._goal:
            done = self._goal
            self.acquiring = False
        if self._base + done != self.counter:
            self.counter = self._base + done
            self._completed = _Completed(self.counter, self.physics.spot(), self.exposure)
        return now

    def start(self, now: float) -> None:
        """Start acquiring in the current mode (SINGLE: 1 frame, MULTIPLE: n)."""
        self.update(now)
        if self.acquiring:
            raise CameraError(E_BUSY, "busy: acquiring; STOP first")
        self.acquiring = True
        self._start = now
        self._base = self.counter
        self._goal = {"SINGLE": 1, "MULTIPLE": self.frames}.get(self.mode)

    def stop(self, now: float) -> None:
        """End the acquisition; the frame being exposed is discarded."""
        self.update(now)
        self.acquiring = False

    def frame_reply(self) -> bytes:
        """The ``FRAME?`` reply for the last completed frame (rendered once)."""
        self.update()
        completed = self._completed
        if completed is None:
            raise CameraError(E_NO_FRAME, "no frame acquired yet")
        if self._rendered is None or self._rendered[0] != completed.counter:
            image = self.renderer.render(completed.spot, completed.exposure)
            pixels = image.astype("<u2", copy=False).tobytes()
            cfg = self.config
            header = f"FRAME? {completed.counter} {cfg.width} {cfg.height} {len(pixels)}\r\n"
            self._rendered = (completed.counter, header.encode("ascii") + pixels)
        return self._rendered[1]

    def _check_idle(self) -> None:
        self.update()
        if self.acquiring:
            raise CameraError(E_BUSY, "busy: acquiring; STOP first")

    # ------------------------------------------------------------ public API
    def status(self) -> dict[str, Any]:
        """Acquisition settings and state, for the control port."""
        self.update()
        return {
            "acquiring": self.acquiring,
            "counter": self.counter,
            "mode": self.mode,
            "exposure": self.exposure,
            "frames": self.frames,
        }

    # --------------------------------------------------------------- commands
    def _cmd_id(self, args: list[str]) -> str:
        no_args(args)
        return f"CAM-{self.config.width}x{self.config.height} {FIRMWARE_VERSION}"

    def _cmd_size(self, args: list[str]) -> str:
        no_args(args)
        cfg = self.config
        return f"{cfg.width} {cfg.height} {cfg.bits}"

    def _cmd_exposure(self, args: list[str]) -> str:
        value = seconds_arg(args, "exposure", MIN_EXPOSURE, self.config.max_exposure)
        self._check_idle()
        self.exposure = value
        return "OK"

    def _cmd_query_exposure(self, args: list[str]) -> str:
        no_args(args)
        return format_seconds(self.exposure)

    def _cmd_mode(self, args: list[str]) -> str:
        text = one_arg(args, " or ".join(MODES)).upper()
        if text not in MODES:
            raise CameraError(
                E_BAD_ARGUMENT, f"bad argument: mode must be {', '.join(MODES)}, got {text}"
            )
        self._check_idle()
        self.mode = text
        return "OK"

    def _cmd_query_mode(self, args: list[str]) -> str:
        no_args(args)
        return self.mode

    def _cmd_frames(self, args: list[str]) -> str:
        text = one_arg(args, "a number of frames")
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_FRAMES:
            raise CameraError(
                E_BAD_ARGUMENT,
                f"bad argument: frames must be an integer 1..{MAX_FRAMES}, got {text}",
            )
        self._check_idle()
        self.frames = int(text)
        return "OK"

    def _cmd_query_frames(self, args: list[str]) -> str:
        no_args(args)
        return str(self.frames)

    def _cmd_status(self, args: list[str]) -> str:
        no_args(args)
        self.update()
        return f"{'ACQUIRING' if self.acquiring else 'IDLE'} {self.counter}"

    def _cmd_frame(self, args: list[str]) -> bytes:
        no_args(args)
        return self.frame_reply()
