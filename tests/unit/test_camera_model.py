"""The virtual camera with a fake clock: acquisition modes and timing, frame
content against ``physics.spot()``, the binary ``FRAME?`` reply and the
protocol (``docs/protocol-camera.md``)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tango_devices.simulators.camera import CameraController, FrameRenderer
from tango_devices.simulators.physics import BeamlinePhysics, Spot
from tango_devices.simulators.server import ConfigError, parse_config
from tests.unit.conftest import FakeClock

CONFIG = {
    "kind": "camera",
    "port": 0,
    "width": 512,
    "height": 512,
    "bits": 16,
    "readout_time": 0.005,
    "max_exposure": 60,
}


class Knob:
    """A physics source we drive."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def pitch() -> Knob:
    return Knob(3.1)  # mrad: 0.1 off the optimum, the spot 6 px right of the centre


@pytest.fixture
def physics(pitch) -> BeamlinePhysics:
    physics = BeamlinePhysics({"inputs": {"mirror_pitch": {"source": "ioc1/mirror_pitch"}}})
    physics.register_source("ioc1/mirror_pitch", pitch)
    return physics


@pytest.fixture
def cam(clock, physics) -> CameraController:
    return CameraController("cam1", {**CONFIG, "seed": 7}, clock, physics)


def ask(cam: CameraController, line: str) -> str:
    reply = cam.handle_line(line)
    assert isinstance(reply, str)
    return reply


def frame(cam: CameraController) -> tuple[int, np.ndarray]:
    """``FRAME?`` decoded: checks the header against the payload."""
    reply = cam.handle_line("FRAME?")
    assert isinstance(reply, bytes)
    header, sep, payload = reply.partition(b"\r\n")
    assert sep
    word, counter, width, height, nbytes = header.decode("ascii").split()
    assert (word, int(width), int(height)) == ("FRAME?", 512, 512)
    assert int(nbytes) == len(payload) == 512 * 512 * 2
    return int(counter), np.frombuffer(payload, dtype="<u2").reshape(512, 512)


def centroid(image: np.ndarray, background: float = 0.0) -> tuple[float, float]:
    signal = image.astype(np.float64) - background
    rows, cols = np.indices(signal.shape)
    total = signal.sum()
    return float((cols * signal).sum() / total), float((rows * signal).sum() / total)


def acquire_one(cam: CameraController, clock: FakeClock, exposure: float) -> np.ndarray:
    assert ask(cam, f"EXPOSURE {exposure}") == "EXPOSURE OK"
    assert ask(cam, "MODE SINGLE") == "MODE OK"
    assert ask(cam, "START") == "START OK"
    clock.advance(exposure + 0.005)
    assert ask(cam, "?STATUS").startswith("?STATUS IDLE ")
    return frame(cam)[1]


# ----------------------------------------------------------------- basics
def test_identify_size_and_defaults(cam):
    assert ask(cam, "?ID") == "?ID CAM-512x512 1.0"
    assert ask(cam, "?SIZE") == "?SIZE 512 512 16"
    assert ask(cam, "?EXPOSURE") == "?EXPOSURE 0.1"
    assert ask(cam, "?MODE") == "?MODE SINGLE"
    assert ask(cam, "?FRAMES") == "?FRAMES 1"
    assert ask(cam, "?STATUS") == "?STATUS IDLE 0"


def test_no_frame_yet_is_an_error_line(cam):
    assert cam.handle_line("FRAME?") == "FRAME? ERROR 6 no frame acquired yet"
    assert cam.handle_line("frame?") == "FRAME? ERROR 6 no frame acquired yet"


@pytest.mark.parametrize(
    "line,reply",
    [
        ("EXPOSURE 0.25", "EXPOSURE OK"),
        ("EXPOSURE 1e-3", "EXPOSURE OK"),
        ("EXPOSURE 0", "EXPOSURE ERROR 2 bad argument: exposure must be 1e-06..60 s, got 0"),
        ("EXPOSURE 61", "EXPOSURE ERROR 2 bad argument: exposure must be 1e-06..60 s, got 61"),
        ("EXPOSURE x", "EXPOSURE ERROR 2 bad argument: not a decimal number: x"),
        ("EXPOSURE", "EXPOSURE ERROR 2 bad argument: expected seconds, got nothing"),
        ("MODE multiple", "MODE OK"),
        (
            "MODE BURST",
            "MODE ERROR 2 bad argument: mode must be SINGLE, MULTIPLE, CONTINUOUS, got BURST",
        ),
        ("FRAMES 10", "FRAMES OK"),
        ("FRAMES 0", "FRAMES ERROR 2 bad argument: frames must be an integer 1..1000000, got 0"),
        ("FRAMES -1", "FRAMES ERROR 2 bad argument: frames must be an integer 1..1000000, got -1"),
        ("FRAME? 2", "FRAME? ERROR 2 bad argument: takes no argument, got 2"),
        ("SNAP", "SNAP ERROR 1 unknown command"),
        ("", ""),
    ],
)
def test_protocol_replies(cam, line, reply):
    assert cam.handle_line(line) == reply


def test_settings_round_trip(cam):
    ask(cam, "EXPOSURE 0.0015")
    ask(cam, "MODE continuous")
    ask(cam, "FRAMES 42")
    assert ask(cam, "?EXPOSURE") == "?EXPOSURE 0.0015"
    assert ask(cam, "?MODE") == "?MODE CONTINUOUS"
    assert ask(cam, "?FRAMES") == "?FRAMES 42"


# ------------------------------------------------------------ acquisition
def test_single_makes_one_frame_after_exposure_plus_readout(cam, clock):
    ask(cam, "EXPOSURE 0.02")
    assert ask(cam, "START") == "START OK"
    clock.advance(0.0249)
    assert ask(cam, "?STATUS") == "?STATUS ACQUIRING 0"
    clock.advance(0.0002)
    assert ask(cam, "?STATUS") == "?STATUS IDLE 1"
    clock.advance(1.0)
    assert ask(cam, "?STATUS") == "?STATUS IDLE 1"
    assert frame(cam)[0] == 1


def test_multiple_makes_n_frames_and_the_counter_runs_on(cam, clock):
    ask(cam, "EXPOSURE 0.01")
    ask(cam, "MODE MULTIPLE")
    ask(cam, "FRAMES 3")
    ask(cam, "START")
    clock.advance(0.015 * 2.5)
    assert ask(cam, "?STATUS") == "?STATUS ACQUIRING 2"
    clock.advance(10.0)
    assert ask(cam, "?STATUS") == "?STATUS IDLE 3"
    ask(cam, "START")  # the counter counts since power-up
    clock.advance(0.015 * 3)
    assert ask(cam, "?STATUS") == "?STATUS IDLE 6"
    assert frame(cam)[0] == 6


def test_continuous_runs_until_stop(cam, clock):
    ask(cam, "EXPOSURE 0.001")
    ask(cam, "MODE CONTINUOUS")
    ask(cam, "START")
    clock.advance(60.0)  # 10000 frames of 6 ms, nobody looking
    assert ask(cam, "?STATUS") == "?STATUS ACQUIRING 10000"
    clock.advance(0.0045)
    assert ask(cam, "STOP") == "STOP OK"  # the frame being exposed is discarded
    clock.advance(1.0)
    assert ask(cam, "?STATUS") == "?STATUS IDLE 10000"
    assert frame(cam)[0] == 10000
    assert ask(cam, "STOP") == "STOP OK"  # also when idle


@pytest.mark.parametrize("line", ["START", "EXPOSURE 1", "MODE SINGLE", "FRAMES 2"])
def test_busy_while_acquiring(cam, clock, line):
    ask(cam, "MODE CONTINUOUS")
    ask(cam, "START")
    clock.advance(0.5)
    assert ask(cam, line).startswith(f"{line.split()[0]} ERROR 5 busy: acquiring; STOP first")


def test_frame_is_the_last_completed_one_and_is_rendered_once(cam, clock):
    ask(cam, "EXPOSURE 0.01")
    ask(cam, "MODE CONTINUOUS")
    ask(cam, "START")
    clock.advance(0.032)  # two frames completed, the third exposing
    first = cam.handle_line("FRAME?")
    assert first.startswith(b"FRAME? 2 512 512 524288\r\n")
    assert cam.handle_line("FRAME?") is first  # the same frame: not rendered again
    clock.advance(0.015)
    assert cam.handle_line("FRAME?").startswith(b"FRAME? 3 ")


# ---------------------------------------------------------------- content
def test_spot_centroid_matches_the_physics(cam, clock, physics):
    spot = physics.spot()
    assert spot.x == pytest.approx(262.0) and spot.y == 256.0
    image = acquire_one(cam, clock, 0.05)
    x, y = centroid(image, spot.dark * 0.05)
    assert abs(x - spot.x) < 1.0 and abs(y - spot.y) < 1.0
    assert np.unravel_index(np.argmax(image), image.shape) == pytest.approx((256, 262), abs=4)


def test_spot_moves_with_the_mirror_pitch(cam, clock, pitch, physics):
    pitch.value = 2.5  # 0.5 mrad below the optimum: 30 px left
    spot = physics.spot()
    x, y = centroid(acquire_one(cam, clock, 0.5), spot.dark * 0.5)
    assert abs(x - 226.0) < 1.0 and abs(y - 256.0) < 1.0


def test_exposure_scales_the_counts(cam, clock, physics):
    spot = physics.spot()
    expected_per_s = spot.peak * 2 * math.pi * spot.sigma_x * spot.sigma_y  # = gain * i0
    short = acquire_one(cam, clock, 0.01).sum(dtype=np.int64)
    long = acquire_one(cam, clock, 0.04).sum(dtype=np.int64)
    dark = spot.dark * 512 * 512
    for total, exposure in ((short, 0.01), (long, 0.04)):
        mean = (expected_per_s + dark) * exposure
        assert abs(total - mean) < 6 * math.sqrt(mean), (total, mean)
    assert long / short == pytest.approx(4.0, rel=0.05)


def test_shutter_closed_shows_the_dark_level_only(clock):
    physics = BeamlinePhysics({"inputs": {"shutter_open": {"source": "plc1/shutter_open"}}})
    physics.register_source("plc1/shutter_open", lambda: 0.0)
    cam = CameraController("cam1", CONFIG, clock, physics)
    image = acquire_one(cam, clock, 10.0)
    mean = physics.spot().dark * 10.0  # 0.5 count per pixel
    assert image.mean() == pytest.approx(mean, rel=0.02)
    assert image.max() < 15


def test_frames_are_clipped_to_the_pixel_range(clock):
    cam = CameraController("cam1", {**CONFIG, "bits": 12}, clock, BeamlinePhysics())
    assert ask(cam, "?SIZE") == "?SIZE 512 512 12"
    image = acquire_one(cam, clock, 60.0)  # the spot saturates
    assert image.max() == 4095
    assert image.dtype == np.dtype("<u2")


def test_a_spot_off_the_chip_leaves_the_dark_frame(clock):
    physics = BeamlinePhysics({"inputs": {"mirror_pitch": {"source": "p"}}})
    physics.register_source("p", lambda: 20.0)  # 1000 px off the chip
    cam = CameraController("cam1", CONFIG, clock, physics)
    assert acquire_one(cam, clock, 1.0).max() < 10


def test_the_beam_is_sampled_when_the_frame_completes(cam, clock, pitch):
    """A frame records the beam of the first request after it completed, not
    of a later FRAME?."""
    ask(cam, "EXPOSURE 0.05")
    ask(cam, "START")
    clock.advance(0.06)
    assert ask(cam, "?STATUS") == "?STATUS IDLE 1"  # noticed here, pitch 3.1
    pitch.value = 2.5
    x, _ = centroid(frame(cam)[1])
    assert abs(x - 262.0) < 1.0


def test_renderer_is_fast_and_exact_in_the_mean():
    rng = np.random.default_rng(3)
    renderer = FrameRenderer(512, 512, 16, rng)
    spot = Spot(x=250.3, y=261.7, sigma_x=14.4, sigma_y=7.2, peak=6000.0, dark=0.05)
    frames = [renderer.render(spot, 0.001) for _ in range(3)]  # warm up
    started = time.perf_counter()
    for _ in range(20):
        frames.append(renderer.render(spot, 0.001))
    per_frame = (time.perf_counter() - started) / 20
    assert per_frame < 0.02, f"{per_frame * 1e3:.1f} ms per 512x512 frame"
    stack = np.stack(frames).astype(np.float64)
    expected = renderer.expected(spot, 0.001)
    assert stack.mean(axis=0).sum() == pytest.approx(expected.sum(), rel=0.02)
    x, y = centroid(stack.mean(axis=0))
    assert (x, y) == pytest.approx((250.3, 261.7), abs=0.2)


def test_status_for_the_control_port(cam, clock):
    ask(cam, "MODE CONTINUOUS")
    ask(cam, "START")
    clock.advance(0.21)
    assert cam.status() == {
        "acquiring": True,
        "counter": 2,
        "mode": "CONTINUOUS",
        "exposure": 0.1,
        "frames": 1,
    }
    assert cam.active_faults() == [] and cam.fault_kinds == ()


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "change,message",
    [
        ({"width": 0}, "width: must be an integer number of pixels 1..4096, got 0"),
        ({"height": 512.0}, "height: must be an integer number of pixels 1..4096, got 512.0"),
        ({"bits": 32}, "bits: must be an integer 8..16 (pixels are uint16), got 32"),
        ({"readout_time": -1}, "readout_time: must be a number of seconds 0..10, got -1"),
        ({"max_exposure": 0}, "max_exposure: must be a number of seconds 1e-06..3600, got 0"),
        ({"binning": 2}, "binning: unknown key; valid keys are kind, port, width, height"),
    ],
)
def test_config_errors_name_the_key(clock, change, message):
    with pytest.raises(ValueError) as err:
        CameraController("cam1", {**CONFIG, **change}, clock)
    assert str(err.value).startswith(message)


def test_registered_in_the_simulator_config():
    config = parse_config({"controllers": {"cam1": CONFIG}})
    assert config.controllers["cam1"].controller.kind == "camera"
    with pytest.raises(ConfigError, match=r"^controllers.cam1.bits: must be an integer 8..16"):
        parse_config({"controllers": {"cam1": {**CONFIG, "bits": 4}}})
