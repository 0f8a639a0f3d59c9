"""The camera in continuous scans through Sardana on the real beamline: the
2D controller (cam1_image) and the ROI controller (roi_sum) of the
measurement group mg_cont_cam take one frame per pulse of the timing unit
(bl01/tim/tg1) while the scaler is gated as in mg_cont; every frame is
checked against the Detector's numbered frames and the unit's pulses
(docs/triggers.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tango

from tests.helpers import wait_until
from tests.system.test_sardana import (  # noqa: F401  (beam, door: fixtures)
    beam,
    door,
    last_entry,
    run_ok,
    wait_points,
)

pytestmark = [pytest.mark.system, pytest.mark.slow]

S = tango.DevState
GROUP = "mntgrp/pool_pool_bl01_1/mg_cont_cam"
CAMERA = "bl01/det/cam1"
READOUT = 0.005  # s: the camera's readout (simulation.json, the controllers' ReadoutTime)
INTERVALS = 19  # ascanct ... 19 intervals: 20 points
INTEG = 0.01
TRIGGER, GATE = 0, 1  # AcqSynchType in a measurement group's configuration


@pytest.fixture(scope="module", autouse=True)
def camera_group(beam):  # noqa: F811
    """mg_cont_cam as db_config/sardana/bl01.yaml declares it: the scaler gated
    and the camera (image and ROI) triggered by tg_train."""
    group = beam.proxy(GROUP)
    conf = json.loads(group.Configuration)
    synchronizer = f"tango://{beam.tango_host}/triggergate/tgctrl/1"
    by_name = {name.rsplit("/", 1)[-1]: c for name, c in conf["controllers"].items()}
    assert set(by_name) == {"ctctrl", "camctrl", "roictrl"}, conf
    for name, how in (("ctctrl", GATE), ("camctrl", TRIGGER), ("roictrl", TRIGGER)):
        assert by_name[name].get("synchronizer") == synchronizer, (name, conf)
        assert by_name[name].get("synchronization") == how, (name, conf)
    return group


@pytest.fixture
def camera_active(door):  # noqa: F811
    """mg_cont_cam as the active measurement group for one test."""
    run_ok(door, "senv", "ActiveMntGrp", "mg_cont_cam")
    yield
    run_ok(door, "senv", "ActiveMntGrp", "mg_bl01")


def _settings(cam):
    return (cam.TriggerMode, cam.AcquisitionMode, cam.NumberOfFrames)


def _frame(cam, number):
    return np.asarray(cam.ReadFrame(number)).reshape(cam.Height, cam.Width)


def _roi_sum(frame, roi):
    x, y, w, h = roi
    return float(frame[y : y + h, x : x + w].astype(np.float64).sum())


def test_camera_group_latency_is_the_camera_readout(beam):  # noqa: F811
    # hardware trigger: the readout the camera needs between frames (and a
    # tick of the unit's clock); it is longer than the scaler's dead time
    assert beam.proxy(GROUP).LatencyTime == pytest.approx(READOUT + 1e-6, abs=1e-9)
    # software synchronization (step scans, ct) as before
    assert beam.proxy("mntgrp/pool_pool_bl01_1/mg_cam").LatencyTime == pytest.approx(0.1)


def test_ascanct_writes_one_frame_per_pulse_then_step_scans_work(beam, door, camera_active):  # noqa: F811
    tg, scaler, cam = (beam.proxy(d) for d in ("bl01/tim/tg1", "bl01/ct/scaler", CAMERA))
    points = INTERVALS + 1
    settings = _settings(cam)
    assert settings[0] == 0  # INTERNAL before
    run_ok(door, "ascanct", "sample_x", 0, 1, INTERVALS, INTEG, timeout=180)

    # the unit sent one pulse per point, at the camera's pace: period at
    # least integration + readout (the group's latency; ascanct rounds the
    # period to the motor's velocity)
    assert tg.PulsesSent == points and tg.TrainCount == points
    assert INTEG + READOUT < tg.Period < INTEG + READOUT + 1e-4, tg.Period
    assert tg.Width == pytest.approx(INTEG, abs=1e-6)
    out = tg.ReadPulses([0, 0])
    assert int(out[1]) == points

    # the camera took one numbered frame per pulse, none missed
    first = cam.FirstFrame
    assert cam.BufferedFrames == points and cam.MissedTriggers == 0
    assert cam.FrameCounter == first + points - 1
    assert scaler.PointsTaken == points

    data = last_entry(beam, f"ascanct sample_x 0.0 1.0 {INTERVALS} {INTEG}")
    images = np.asarray(data["cam1_image"])
    assert images.shape == (points, cam.Height, cam.Width), images.shape
    roi = list(data["roi_sum"])
    assert len(roi) == points and not any(math.isnan(v) for v in roi), roi
    for channel in ("i0", "diode"):
        assert len(data[channel]) == points and not any(math.isnan(v) for v in data[channel])

    # every frame once, in order: 20 different frames (the noise differs),
    # the last one identical to the device's frame of that number (the
    # simulator keeps the frame it rendered last), the others the same beam
    # as the device's numbered frames (ROI sums within 6 sigma of Poisson
    # noise: the simulator renders a frame's noise anew at each read)
    assert len({image.tobytes() for image in images}) == points
    device_roi = list(cam.Roi)
    assert np.array_equal(images[-1], _frame(cam, first + points - 1))
    for k in range(points):
        again = _roi_sum(_frame(cam, first + k), device_roi)
        assert abs(_roi_sum(images[k], device_roi) - again) <= 6 * math.sqrt(again) + 1, k
    # the ROI counter is the device's ROI over each frame written
    assert roi == pytest.approx([_roi_sum(image, device_roi) for image in images])

    # the camera is back on INTERNAL trigger, with its settings as before
    assert _settings(cam) == settings
    assert cam.state() == S.ON and tg.state() == S.ON and scaler.state() == S.ON

    # and software acquisitions work as before: a timescan on mg_cam (Snap)
    counter = cam.FrameCounter
    run_ok(door, "acquire_images", 2, 0.02)
    data = last_entry(beam, "timescan 2 0.02 0.0")
    assert data["cam1_image"].shape == (2, cam.Height, cam.Width)
    assert len(data["roi_sum"]) == 2 and min(data["roi_sum"]) > 0
    assert cam.FrameCounter == counter + 2
    assert tg.PulsesSent == points  # no train: software synchronization
    # a step scan on the active group of the beamline
    run_ok(door, "senv", "ActiveMntGrp", "mg_cam")
    run_ok(door, "ascan", "sample_x", 0, 0.2, 2, 0.02)
    data = last_entry(beam, "ascan sample_x 0.0 0.2 2 0.02")
    assert data["cam1_image"].shape == (3, cam.Height, cam.Width)
    assert not any(math.isnan(v) for v in data["roi_sum"])


def test_period_shorter_than_the_camera_readout_is_refused_before_anything_starts(beam):  # noqa: F811
    tg, scaler, cam = (beam.proxy(d) for d in ("bl01/tim/tg1", "bl01/ct/scaler", CAMERA))
    group = beam.proxy(GROUP, timeout_ms=10000)
    before = (cam.FrameCounter, _settings(cam), scaler.PointsTaken, tg.PulsesSent)
    # 10 ms frames every 12.5 ms: 2.5 ms between them, the camera reads out in 5 ms
    group.SynchDescription = json.dumps(
        [{"0": {"0": 0.0}, "2": {"0": INTEG}, "1": {"0": INTEG + READOUT / 2}, "3": 10}]
    )
    group.NbStarts = 1
    with pytest.raises(tango.DevFailed) as exc:
        group.Prepare()
    text = " ".join(e.desc for e in exc.value.args)
    assert f"shorter than the readout time of {CAMERA}" in text, text
    assert f"use a latency time of at least {READOUT:g} s" in text, text
    # nothing was set up, armed or started: the camera stays on INTERNAL trigger
    assert (cam.FrameCounter, _settings(cam), scaler.PointsTaken, tg.PulsesSent) == before
    assert cam.TriggerMode == 0
    assert cam.state() == S.ON and tg.state() == S.ON and scaler.state() == S.ON
    assert tg.TrainState == "IDLE"


def _camera_scan(door, points: int):  # noqa: F811
    """Start an ascanct of ``points`` points over 2 mm; returns once it has
    written 20 of them."""
    run = door.start(["ascanct", "sample_x", "0", "2", str(points - 1), str(INTEG)])
    wait_points(run, 20, timeout=60)
    return run, f"ascanct sample_x 0.0 2.0 {points - 1} {INTEG}"


def _ended(door, run, timeout: float, what: str) -> None:  # noqa: F811
    """Wait for ``run`` to end; a Door still running it after ``timeout`` is
    made ready for the next tests and the test fails."""
    door.wait(run, timeout=timeout)
    if run.outcome == "timeout":
        cause = door.make_ready(timeout=3.0)
        pytest.fail(f"the Door still ran the scan {timeout:g} s after {what} ({cause})")


def _frames_then_nan(beam, title, cam, first):  # noqa: F811
    """The scan's images in the file: the frames the camera took, in order
    (the ROI sums with them), then NaN images (Sardana's padding of records
    the camera has no frame for). Returns (records, frames written)."""
    data = last_entry(beam, title)
    images, roi = np.asarray(data["cam1_image"]), np.asarray(data["roi_sum"])
    n = len(images)
    assert images.shape == (n, cam.Height, cam.Width) and images.dtype == np.float64
    assert all(len(data[c]) == n for c in ("roi_sum", "i0", "diode", "ct_time")), data.keys()
    nan = np.isnan(images).all(axis=(1, 2))
    written = int(np.argmax(nan)) if nan.any() else n
    assert written >= 20, (written, n)
    assert nan[written:].all() and not np.isnan(images[:written]).any(), nan
    # the ROI channel is another controller: stopped or aborted apart from the
    # images, it may have a few values fewer or more; its NaN are a tail too
    roi_nan = np.isnan(roi)
    roi_written = int(np.argmax(roi_nan)) if roi_nan.any() else n
    assert roi_nan[roi_written:].all() and roi_written >= 20, (written, roi)
    both = min(written, roi_written)
    device_roi = list(cam.Roi)
    for k in range(written):
        again = _roi_sum(_frame(cam, first + k), device_roi)
        assert abs(_roi_sum(images[k], device_roi) - again) <= 6 * math.sqrt(again) + 1, k
    assert list(roi[:both]) == pytest.approx(
        [_roi_sum(image, device_roi) for image in images[:both]]
    )
    return n, written


def _next_scan_takes_every_frame(beam, door, cam, settings):  # noqa: F811
    tg = beam.proxy("bl01/tim/tg1")
    run_ok(door, "ascanct", "sample_x", 0, 0.2, 9, INTEG, timeout=120)
    assert tg.PulsesSent == 10 and cam.BufferedFrames == 10 and cam.MissedTriggers == 0
    data = last_entry(beam, f"ascanct sample_x 0.0 0.2 9 {INTEG}")
    assert np.asarray(data["cam1_image"]).shape == (10, cam.Height, cam.Width)
    assert not np.isnan(data["cam1_image"]).any()
    assert not any(math.isnan(v) for v in data["roi_sum"])
    if settings is not None:
        assert _settings(cam) == settings


@pytest.mark.parametrize("how", ["stop", "abort"])
def test_stopping_a_camera_scan_ends_it_and_puts_the_camera_back(
    beam,  # noqa: F811
    door,  # noqa: F811
    camera_active,
    how,
):
    """Stop/abort the scan through the Door mid-way. Sardana writes the
    records some channel has a value for (stop: the points taken; abort: a
    few more, NaN where a channel has none) and pads no further."""
    tg, cam = beam.proxy("bl01/tim/tg1"), beam.proxy(CAMERA)
    motor = beam.proxy("bl01/mot/sample_x")
    settings = _settings(cam)
    points = 200  # 3 s of 15 ms points
    run, title = _camera_scan(door, points)
    assert tg.TrainCount == points and cam.TriggerMode == 1  # EXTERNAL while it runs
    getattr(door, how)()
    _ended(door, run, 60, how)
    assert run.outcome == how, (run.outcome, run.error_text)
    wait_until(
        lambda: not door.busy(),
        60,
        "the Door back to ON",
        on_timeout=lambda: f"{door.state()}: {door.proxy.status()}",
    )
    # ON, also after an abort: Sardana restores the motor's velocity while the
    # motor is still stopping, and the motor controller writes it once the
    # axis has stopped (a refusal here used to leave the Door in ALARM)
    errors = "\n".join([*run.error, run.exc_value])
    assert door.state() == S.ON, (door.state(), door.proxy.status(), errors)
    # the train and the camera stopped short of the end, the camera back on
    # INTERNAL with its settings as before, the motor stopped
    wait_until(lambda: tg.state() == S.ON, 10, "tg1 back to ON")
    wait_until(lambda: cam.state() == S.ON, 10, "cam1 back to ON")
    wait_until(lambda: motor.state() == S.ON, 10, "sample_x stopped")
    assert _settings(cam) == settings
    sent = tg.PulsesSent
    # (the camera is stopped before the unit: it may miss the last pulses)
    assert 20 <= sent < points and 20 <= cam.BufferedFrames <= sent and motor.Position < 2.0

    records, written = _frames_then_nan(beam, title, cam, cam.FirstFrame)
    assert written <= records <= sent
    if how == "stop":  # every channel read to the end: no NaN
        assert written == records

    # and the next continuous scan takes every frame
    _next_scan_takes_every_frame(beam, door, cam, settings)


def test_a_camera_scan_whose_camera_link_drops_ends_with_its_images_padded(
    beam,  # noqa: F811
    door,  # noqa: F811
    camera_active,
):
    """The camera's link dropped mid-scan: the scaler takes every point, the
    camera's frames stop, and Sardana writes a NaN image for every point
    without a frame. The beamline's HDF5 recorder writes each as one array;
    Sardana's broadcasts the NaN pixel by pixel, ~5 s of MacroServer CPU per
    512 x 512 point: this scan would end some 15 minutes later
    (docs/triggers.md). (How the scan and the camera end after a link lost
    mid-scan is the camera controllers' matter, not checked here.)"""
    cam = beam.proxy(CAMERA)
    points = 200
    run, title = _camera_scan(door, points)
    first = cam.FirstFrame
    beam.sim({"op": "fault", "controller": "cam1", "kind": "drop"})
    try:
        _ended(door, run, 60, "cam1's link dropped")
        wait_until(
            lambda: not door.busy(),
            60,
            "the Door ready",
            on_timeout=lambda: f"{door.state()}: {door.proxy.status()}",
        )
    finally:
        beam.sim({"op": "clear", "controller": "cam1"})
    wait_until(lambda: cam.state() == S.ON, 30, "cam1 answering again")

    # the file: every point, the frames taken then NaN images, every scaler point
    records, written = _frames_then_nan(beam, title, cam, first)
    assert records == points and written < points
    data = last_entry(beam, title)
    assert not np.isnan(data["i0"]).any()

    # and the next continuous scan takes every frame
    _next_scan_takes_every_frame(beam, door, cam, None)
