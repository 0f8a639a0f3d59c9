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


@pytest.mark.parametrize("how", ["Stop", "Abort"])
def test_stopping_a_triggered_acquisition_puts_the_camera_back(beam, door, how):  # noqa: F811
    """Stop/abort through the measurement group (a stopped ascanct pads every
    point it did not take with a NaN image: Sardana's HDF5 recorder broadcasts
    the NaN pixel by pixel, ~5 s per 512x512 point; see docs/triggers.md)."""
    tg, cam = beam.proxy("bl01/tim/tg1"), beam.proxy(CAMERA)
    group = beam.proxy(GROUP, timeout_ms=10000)
    settings = _settings(cam)
    points = 400  # 6 s of 15 ms points
    group.SynchDescription = json.dumps(
        [{"0": {"0": 0.0}, "2": {"0": INTEG}, "1": {"0": INTEG + READOUT + 1e-6}, "3": points}]
    )
    group.NbStarts = 1
    group.Prepare()
    group.Start()
    wait_until(lambda: cam.BufferedFrames >= 20, 30, "20 frames of this acquisition")
    assert cam.TriggerMode == 1 and tg.TrainCount == points  # EXTERNAL while it runs
    getattr(group, how)()
    # the train and the camera stopped short of the end, the camera back on
    # INTERNAL with its settings as before
    wait_until(lambda: group.state() == S.ON, 30, "mg_cont_cam back to ON")
    wait_until(lambda: tg.state() == S.ON, 10, "tg1 back to ON")
    wait_until(lambda: cam.state() == S.ON, 10, "cam1 back to ON")
    assert _settings(cam) == settings
    assert 20 <= cam.BufferedFrames < points and tg.PulsesSent < points

    # and the next continuous scan takes every frame
    run_ok(door, "senv", "ActiveMntGrp", "mg_cont_cam")
    try:
        run_ok(door, "ascanct", "sample_x", 0, 0.2, 9, INTEG, timeout=120)
    finally:
        run_ok(door, "senv", "ActiveMntGrp", "mg_bl01")
    assert tg.PulsesSent == 10 and cam.BufferedFrames == 10 and cam.MissedTriggers == 0
    data = last_entry(beam, f"ascanct sample_x 0.0 0.2 9 {INTEG}")
    assert np.asarray(data["cam1_image"]).shape == (10, cam.Height, cam.Width)
    assert not any(math.isnan(v) for v in data["roi_sum"])
    assert _settings(cam) == settings
