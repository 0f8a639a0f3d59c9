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

External trigger (``TRIGGER EXTERNAL``): ``START`` arms the camera, and each
pulse on its trigger input (a timing unit wired to it inside the simulator,
:meth:`CameraController.trigger`) exposes one frame, which completes
``exposure + readout_time`` later. The beam is sampled when the trigger is
delivered (the timing unit delivers them within a few milliseconds). Every
frame of the acquisition is kept (up to ``buffer_frames``, the oldest go
first) and read by its number with ``FRAME? <n>``; a trigger that comes while
the camera is still exposing or reading out is ignored and counted as missed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
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
TRIGGERS = ("INTERNAL", "EXTERNAL")
DEFAULT_BUFFER_FRAMES = 100_000

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
    buffer_frames: int = DEFAULT_BUFFER_FRAMES

    KEYS = (
        "kind",
        "port",
        "width",
        "height",
        "bits",
        "readout_time",
        "max_exposure",
        "seed",
        "buffer_frames",
    )

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
        buffer_frames = data.get("buffer_frames", defaults.buffer_frames)
        if not is_int(buffer_frames) or not 1 <= buffer_frames <= MAX_FRAMES:
            raise ValueError(
                f"buffer_frames: must be an integer number of frames 1..{MAX_FRAMES}, "
                f"got {buffer_frames!r}"
            )
        return cls(width, height, bits, float(readout), float(max_exposure), seed, buffer_frames)


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
        self.trigger_source = "INTERNAL"
        #: what must run before the camera answers: the timing units wired to
        #: its trigger input deliver the triggers up to ``now`` (``upstream(now)``)
        self.upstream: list[Callable[[float], None]] = []
        self.missed = 0  # triggers ignored (busy) in this acquisition
        self._triggered = 0  # frames triggered in this acquisition
        self._busy_until = -math.inf
        self._pending: deque[tuple[float, _Completed]] = deque()  # (done at, frame)
        self._frames: deque[_Completed] = deque(maxlen=cfg.buffer_frames)
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
            "TRIGGER": Command(self._cmd_trigger),
            "?TRIGGER": Command(self._cmd_query_trigger),
            "?BUFFER": Command(self._cmd_buffer),
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
        for deliver in self.upstream:
            deliver(now)
        if self.trigger_source == "EXTERNAL":
            self._complete_triggered(now)
            return now
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
        self.missed = self._triggered = 0
        self._busy_until = -math.inf
        self._frames.clear()

    def stop(self, now: float) -> None:
        """End the acquisition; the frame being exposed is discarded."""
        self.update(now)
        self.acquiring = False
        self._pending.clear()

    # ------------------------------------------------------ external trigger
    def free_frames(self) -> int | None:
        """Triggers the armed external acquisition still takes (None: until
        STOP); 0 when not armed for external triggers."""
        if not (self.acquiring and self.trigger_source == "EXTERNAL"):
            return 0
        return None if self._goal is None else self._goal - self._triggered

    def trigger(self, when: float) -> None:
        """A pulse on the trigger input at ``when`` (called in time order):
        one frame if armed for external triggers and not busy."""
        if not (self.acquiring and self.trigger_source == "EXTERNAL") or when < self._start:
            return
        if self._goal is not None and self._triggered >= self._goal:
            return
        if when < self._busy_until:
            self.missed += 1
            return
        self._triggered += 1
        self._busy_until = when + self.period
        number = self._base + self._triggered
        self._pending.append(
            (self._busy_until, _Completed(number, self.physics.spot(), self.exposure))
        )

    def _complete_triggered(self, now: float) -> None:
        """Frames whose exposure and readout are over by ``now`` join the buffer."""
        while self._pending and self._pending[0][0] <= now:
            _, frame = self._pending.popleft()
            self._frames.append(frame)
            self.counter = frame.counter
            self._completed = frame
        if (
            self.acquiring
            and self._goal is not None
            and self._triggered >= self._goal
            and not self._pending
        ):
            self.acquiring = False

    def _render(self, frame: _Completed) -> bytes:
        if self._rendered is None or self._rendered[0] != frame.counter:
            image = self.renderer.render(frame.spot, frame.exposure)
            pixels = image.astype("<u2", copy=False).tobytes()
            cfg = self.config
            header = f"FRAME? {frame.counter} {cfg.width} {cfg.height} {len(pixels)}\r\n"
            self._rendered = (frame.counter, header.encode("ascii") + pixels)
        return self._rendered[1]

    def buffered_frame_reply(self, number: int) -> bytes:
        """The ``FRAME? <n>`` reply: frame ``number`` of the buffer."""
        self.update()
        if not self._frames:
            raise CameraError(
                E_NO_FRAME,
                f"frame {number} not acquired yet: no frame buffered "
                f"(the next frame will be {self.counter + 1})",
            )
        first, last = self._frames[0].counter, self._frames[-1].counter
        if number > last:
            raise CameraError(
                E_NO_FRAME,
                f"frame {number} not acquired yet: the newest frame is {last}; "
                "wait for its trigger",
            )
        if number < first:
            raise CameraError(
                E_NO_FRAME,
                f"frame {number} is no longer buffered: the buffer holds frames "
                f"{first}..{last} (buffer_frames {self.config.buffer_frames}); read frames "
                "while the acquisition runs",
            )
        return self._render(self._frames[number - first])

    def frame_reply(self) -> bytes:
        """The ``FRAME?`` reply for the last completed frame (rendered once)."""
        self.update()
        completed = self._completed
        if completed is None:
            raise CameraError(E_NO_FRAME, "no frame acquired yet")
        return self._render(completed)

    def _check_idle(self) -> None:
        self.update()
        if self.acquiring:
            raise CameraError(E_BUSY, "busy: acquiring; STOP first")

    # ------------------------------------------------------------ public API
    def status(self) -> dict[str, Any]:
        """Acquisition settings and state, for the control port."""
        self.update()
        status: dict[str, Any] = {
            "acquiring": self.acquiring,
            "counter": self.counter,
            "mode": self.mode,
            "exposure": self.exposure,
            "frames": self.frames,
        }
        if self.trigger_source == "EXTERNAL":
            status.update(trigger="EXTERNAL", buffered=len(self._frames), missed=self.missed)
        return status

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
        if not args or self.trigger_source != "EXTERNAL":
            no_args(args)  # numbered frames only with external triggers
            return self.frame_reply()
        text = one_arg(args, "nothing (the newest frame) or a frame number")
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            raise CameraError(E_BAD_ARGUMENT, f"bad argument: not a frame number: {text}")
        return self.buffered_frame_reply(int(text))

    def _cmd_trigger(self, args: list[str]) -> str:
        text = one_arg(args, " or ".join(TRIGGERS)).upper()
        if text not in TRIGGERS:
            raise CameraError(
                E_BAD_ARGUMENT, f"bad argument: trigger must be {', '.join(TRIGGERS)}, got {text}"
            )
        self._check_idle()
        self.trigger_source = text
        return "OK"

    def _cmd_query_trigger(self, args: list[str]) -> str:
        no_args(args)
        return self.trigger_source

    def _cmd_buffer(self, args: list[str]) -> str:
        no_args(args)
        self.update()
        first = self._frames[0].counter if self._frames else self.counter + 1
        return f"{len(self._frames)} {first} {self.missed}"
