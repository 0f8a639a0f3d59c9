"""The demo beamline's devices together on the running beamline: shutter (PLC),
scaler, camera, EPICS vacuum gauge and valve, EPICS motor record; the physics
that ties them together and the vacuum interlock chain."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import tango

from tests.helpers import wait_until
from tests.system.conftest import Events, wait_state

pytestmark = pytest.mark.system

S = tango.DevState


def count(scaler, preset=0.2):
    scaler.PresetTime = preset
    scaler.Start()
    wait_state(scaler, S.ON)
    return dict(zip(scaler.ChannelNames, scaler.Counts, strict=True))


@pytest.fixture(scope="module")
def dev(beamline):
    names = {
        "shutter": "bl01/shutter/fe",
        "scaler": "bl01/ct/scaler",
        "cam": "bl01/det/cam1",
        "gauge": "bl01/vac/gauge1",
        "valve": "bl01/vac/valve1",
        "pitch": "bl01/mot/mirror_pitch",
        "sample_x": "bl01/mot/sample_x",
    }
    return type("Devices", (), {k: beamline.proxy(v) for k, v in names.items()})


def test_every_device_is_in_its_resting_state(dev):
    assert dev.shutter.state() == S.CLOSE
    assert dev.scaler.state() == S.ON
    assert dev.cam.state() == S.ON
    assert dev.gauge.state() == S.ON
    assert dev.valve.state() == S.OPEN
    assert dev.pitch.state() == S.ON
    assert dev.gauge.Pressure < 1e-6


# ---------------------------------------------------------------- shutter
def test_shutter_open_close_with_travel_and_events(dev):
    states = Events(dev.shutter, "State")
    try:
        states.wait_live()
        dev.shutter.Open()
        assert dev.shutter.state() in (S.MOVING, S.OPEN)
        wait_state(dev.shutter, S.OPEN)
        states.wait_for(
            lambda it: [v.value for v in it][-2:] == [S.MOVING, S.OPEN],
            5,
            "MOVING then OPEN events",
        )
        dev.shutter.Close()
        wait_state(dev.shutter, S.CLOSE)
    finally:
        states.close()


def test_shutter_interlock_refuses_open_naming_it(beamline, dev):
    beamline.sim(
        {"op": "fault", "controller": "plc1", "kind": "interlock", "text": "hutch door open"}
    )
    try:
        wait_state(dev.shutter, S.DISABLE)
        assert dev.shutter.Interlock is True
        assert "hutch door open" in dev.shutter.InterlockReason
        with pytest.raises(tango.DevFailed) as info:
            dev.shutter.Open()
        desc = info.value.args[0].desc
        assert "Open is not allowed in state DISABLE" in desc and "hutch door open" in desc
    finally:
        beamline.sim({"op": "clear", "controller": "plc1"})
    wait_state(dev.shutter, S.CLOSE)
    assert dev.shutter.Interlock is False


def test_shutter_stuck_is_a_fault_until_reset(beamline, dev):
    beamline.sim({"op": "fault", "controller": "plc1", "kind": "stuck"})
    try:
        dev.shutter.Open()
        wait_state(dev.shutter, S.FAULT)
        assert "did not reach its end position" in dev.shutter.status()
    finally:
        beamline.sim({"op": "clear", "controller": "plc1"})
    dev.shutter.Reset()
    wait_until(lambda: dev.shutter.state() in (S.OPEN, S.CLOSE), 10, "the shutter out of FAULT")
    dev.shutter.Close()
    wait_state(dev.shutter, S.CLOSE)


def test_plc_link_drop_and_recovery(beamline, dev):
    beamline.sim({"op": "fault", "controller": "plc1", "kind": "drop"})
    try:
        wait_state(dev.shutter, S.FAULT)
        assert "No link to the shutter PLC" in dev.shutter.status()
    finally:
        beamline.sim({"op": "clear", "controller": "plc1"})
    wait_state(dev.shutter, S.CLOSE)


# ----------------------------------------------------------------- scaler
def test_scaler_counts_dark_with_the_shutter_closed_and_light_when_open(dev):
    dark = count(dev.scaler, 0.5)
    assert dark["i0"] < 50 and dark["diode"] < 50  # dark rate 5/s
    dev.shutter.Open()
    wait_state(dev.shutter, S.OPEN)
    try:
        light = count(dev.scaler, 0.5)
        assert light["i0"] > 100_000
        assert dev.scaler.ElapsedTime == pytest.approx(0.5, abs=0.01)
        assert dev.scaler.i0 == light["i0"] and dev.scaler.diode == light["diode"]
    finally:
        dev.shutter.Close()
        wait_state(dev.shutter, S.CLOSE)


def test_scaler_channel_attributes_come_from_the_configuration(dev):
    assert list(dev.scaler.ChannelNames) == ["i0", "diode"]
    attrs = set(dev.scaler.get_attribute_list())
    assert {"i0", "diode", "PresetTime", "ElapsedTime", "Counts"} <= attrs
    assert dev.scaler.get_attribute_config("diode").description.startswith("Counts of channel 2")


def test_scaler_bad_input_changes_nothing(dev):
    dev.scaler.PresetTime = 0.3
    for bad in (-1.0, 0.0, 5000.0):
        with pytest.raises(tango.DevFailed):
            dev.scaler.PresetTime = bad
    with pytest.raises((tango.DevFailed, TypeError, ValueError)):
        dev.scaler.write_attribute("PresetTime", "long")
    assert dev.scaler.PresetTime == pytest.approx(0.3)
    dev.scaler.PresetTime = 2.0
    dev.scaler.Start()
    try:
        with pytest.raises(tango.DevFailed, match="Start is not allowed in state RUNNING"):
            dev.scaler.Start()
        with pytest.raises(tango.DevFailed, match="not allowed in state RUNNING"):
            dev.scaler.PresetTime = 1.0
    finally:
        dev.scaler.Stop()
    wait_state(dev.scaler, S.ON)
    assert dev.scaler.ElapsedTime < 2.0


def test_scaler_count_sets_the_preset_stores_it_and_counts(beamline, dev):
    """Count(t): PresetTime and Start in one call (a step scan's point)."""
    dev.scaler.PresetTime = 0.3
    dev.scaler.Count(0.15)
    wait_state(dev.scaler, S.ON)
    assert dev.scaler.PresetTime == pytest.approx(0.15)
    assert dev.scaler.ElapsedTime == pytest.approx(0.15, abs=0.01)
    db = tango.Database(*beamline.tango_host.split(":"))
    stored = db.get_device_attribute_property("bl01/ct/scaler", ["PresetTime"])["PresetTime"]
    assert [float(v) for v in stored["__value"]] == [0.15]  # kept as a write of it is
    for bad in (0.0, -1.0, 5000.0, float("nan")):
        with pytest.raises(tango.DevFailed, match="PresetTime must be between"):
            dev.scaler.Count(bad)
        assert dev.scaler.state() == S.ON  # no count started
        assert dev.scaler.PresetTime == pytest.approx(0.15)  # nothing changed


def test_scaler_events_while_counting(dev):
    events = Events(dev.scaler, "i0")
    try:
        dev.shutter.Open()
        wait_state(dev.shutter, S.OPEN)
        count(dev.scaler, 1.0)
        events.wait_for(lambda it: len(it) >= 4, 5, "several i0 events during a 1 s count")
        values = [v.value for v in events.items]
        assert values == sorted(values[1:]) or values[1:] == sorted(values[1:])
        assert values[-1] == dev.scaler.i0
    finally:
        events.close()
        dev.shutter.Close()
        wait_state(dev.shutter, S.CLOSE)


def test_scaler_link_garbage_and_recovery(beamline, dev):
    beamline.sim({"op": "fault", "controller": "scaler1", "kind": "garbage"})
    try:
        wait_state(dev.scaler, S.FAULT)
        assert "Garbled reply from the scaler" in dev.scaler.status()
    finally:
        beamline.sim({"op": "clear", "controller": "scaler1"})
    wait_state(dev.scaler, S.ON)


# ----------------------------------------------------------------- camera
def test_camera_snap_image_and_roi_statistics(dev):
    dev.shutter.Open()
    wait_state(dev.shutter, S.OPEN)
    try:
        ready = Events(dev.cam, "Image", tango.EventType.DATA_READY_EVENT)
        before = dev.cam.FrameCounter
        dev.cam.ExposureTime = 0.02
        dev.cam.Roi = [0, 0, 512, 512]
        dev.cam.Snap()
        wait_state(dev.cam, S.ON)
        ready.wait_for(lambda it: it and it[-1].ctr > before, 5, "a data-ready event")
        ready.close()
        image = dev.cam.Image
        assert image.shape == (512, 512) and image.dtype == np.uint16
        assert dev.cam.FrameCounter == before + 1
        # statistics agree with the image itself
        total = float(image.astype(np.float64).sum())
        assert dev.cam.RoiSum == pytest.approx(total)
        cx = (image.sum(axis=0) * np.arange(512)).sum() / total
        assert dev.cam.CentroidX == pytest.approx(cx, abs=1e-6)
        assert dev.cam.CentroidX == pytest.approx(256, abs=3)  # spot at the centre at optimum pitch
        dev.cam.Roi = [200, 230, 60, 50]
        sub = image[230:280, 200:260].astype(np.float64)
        assert dev.cam.RoiSum == pytest.approx(sub.sum())
    finally:
        dev.cam.Roi = [0, 0, 512, 512]
        dev.shutter.Close()
        wait_state(dev.shutter, S.CLOSE)


def test_camera_continuous_with_bounded_event_rate(dev):
    dev.cam.ExposureTime = 0.001
    dev.cam.AcquisitionMode = 2  # CONTINUOUS
    ready = Events(dev.cam, "Image", tango.EventType.DATA_READY_EVENT)
    try:
        start_counter = dev.cam.FrameCounter
        t0 = time.monotonic()
        dev.cam.Start()
        assert dev.cam.state() == S.RUNNING
        wait_until(lambda: dev.cam.FrameCounter >= start_counter + 40, 20, "40 frames")
        dev.cam.Stop()
        elapsed = time.monotonic() - t0
        wait_state(dev.cam, S.ON)
        frames = dev.cam.FrameCounter - start_counter
        events = len(ready.items)
        max_rate = 20.0  # MaxEventRate in db_config
        assert events <= max_rate * elapsed + 2, (events, elapsed)
        assert frames > events  # frames were acquired faster than events were sent
    finally:
        ready.close()
        dev.cam.AcquisitionMode = 0


def test_camera_bad_settings_are_refused(dev):
    dev.cam.ExposureTime = 0.05
    with pytest.raises(tango.DevFailed):
        dev.cam.ExposureTime = 100.0
    with pytest.raises(tango.DevFailed):
        dev.cam.AcquisitionMode = 7
    with pytest.raises(tango.DevFailed, match="goes beyond the 512x512 image"):
        dev.cam.Roi = [400, 0, 200, 10]
    with pytest.raises(tango.DevFailed, match="positive size"):
        dev.cam.Roi = [0, 0, 0, 10]
    assert dev.cam.ExposureTime == pytest.approx(0.05)
    assert list(dev.cam.Roi) == [0, 0, 512, 512]


# ----------------------------------------------------------------- vacuum
def test_valve_close_open_with_travel(dev):
    dev.valve.Close()
    wait_state(dev.valve, S.MOVING, timeout=2)
    with pytest.raises(tango.DevFailed, match="Open is not allowed in state MOVING"):
        dev.valve.Open()
    wait_state(dev.valve, S.CLOSE)
    dev.valve.Open()
    wait_state(dev.valve, S.OPEN)


def test_ioc_down_faults_every_epics_device_and_they_recover(beamline, dev):
    beamline.sim({"op": "fault", "controller": "ioc1", "kind": "ioc_down"})
    try:
        for p in (dev.gauge, dev.valve, dev.pitch):
            wait_state(p, S.FAULT, timeout=15)
        assert "No link to the vacuum gauge IOC" in dev.gauge.status()
        assert dev.gauge.read_attribute("Pressure").quality == tango.AttrQuality.ATTR_INVALID
    finally:
        beamline.sim({"op": "clear", "controller": "ioc1"})
    wait_state(dev.gauge, S.ON, timeout=30)
    wait_state(dev.valve, S.OPEN, timeout=30)
    wait_state(dev.pitch, S.ON, timeout=30)


# ------------------------------------------------------- EPICS motor record
def test_the_epics_motor_looks_like_any_motor(dev):
    assert sorted(dev.pitch.get_attribute_list()) == sorted(dev.sample_x.get_attribute_list())
    assert sorted(c.cmd_name for c in dev.pitch.command_list_query()) == sorted(
        c.cmd_name for c in dev.sample_x.command_list_query()
    )
    assert dev.pitch.get_attribute_config("Position").unit == "mrad"
    start = dev.pitch.Position
    dev.pitch.Position = start + 0.05
    assert dev.pitch.state() == S.MOVING
    wait_state(dev.pitch, S.ON)
    assert dev.pitch.Position == pytest.approx(start + 0.05, abs=2e-4)
    with pytest.raises(tango.DevFailed, match="above the maximum"):
        dev.pitch.Position = 9.0
    dev.pitch.Position = start
    wait_state(dev.pitch, S.ON)


def test_mirror_pitch_steers_the_spot_on_the_camera(dev):
    dev.shutter.Open()
    wait_state(dev.shutter, S.OPEN)
    start = dev.pitch.Position

    def snap() -> float:
        """The centroid of a frame taken now (not of the one before it)."""
        before = dev.cam.FrameCounter
        dev.cam.Snap()
        wait_until(
            lambda: dev.cam.FrameCounter > before and dev.cam.state() == S.ON,
            10,
            "the new frame",
        )
        return dev.cam.CentroidX

    try:
        dev.cam.ExposureTime = 0.02
        x0 = snap()
        dev.pitch.Position = start + 0.2
        wait_state(dev.pitch, S.ON)
        x1 = snap()
        assert x1 - x0 == pytest.approx(60.0 * 0.2, abs=2.0)  # pitch_to_pixels = 60 px/mrad
    finally:
        dev.pitch.Position = start
        wait_state(dev.pitch, S.ON)
        dev.shutter.Close()
        wait_state(dev.shutter, S.CLOSE)


# -------------------------------------------------------- interlock chain
def test_vacuum_interlock_chain(beamline, dev):
    """Raise the pressure: the gauge goes ALARM, the shutter DISABLE and closed,
    the diode drops to the dark level. Restore: the interlock clears, Open works."""
    dev.shutter.Open()
    wait_state(dev.shutter, S.OPEN)
    lit = count(dev.scaler, 0.3)
    assert lit["i0"] > 10_000
    beamline.sim({"op": "fault", "controller": "ioc1", "kind": "vacuum_leak"})
    try:
        wait_state(dev.gauge, S.ALARM, timeout=15)
        wait_until(
            lambda: dev.gauge.read_attribute("Pressure").quality == tango.AttrQuality.ATTR_ALARM,
            10,
            "the Pressure quality ALARM",
        )
        wait_state(dev.shutter, S.DISABLE, timeout=15)
        assert "vacuum interlock" in dev.shutter.InterlockReason
        dark = count(dev.scaler, 0.3)
        assert dark["i0"] < 50 and dark["diode"] < 50
        with pytest.raises(tango.DevFailed, match="vacuum interlock"):
            dev.shutter.Open()
    finally:
        beamline.sim({"op": "clear", "controller": "ioc1"})
    wait_state(dev.gauge, S.ON, timeout=20)
    wait_state(dev.shutter, S.CLOSE, timeout=10)
    dev.shutter.Open()
    wait_state(dev.shutter, S.OPEN)
    again = count(dev.scaler, 0.3)
    assert again["i0"] > 10_000
    dev.shutter.Close()
    wait_state(dev.shutter, S.CLOSE)
    assert math.isfinite(dev.gauge.Pressure)


def test_camera_wrong_state_wrong_type_and_link_drop(beamline, dev):
    dev.cam.ExposureTime = 0.01
    dev.cam.AcquisitionMode = 2
    dev.cam.Start()
    try:
        assert dev.cam.state() == S.RUNNING
        for action in (dev.cam.Start, dev.cam.Snap, lambda: setattr(dev.cam, "ExposureTime", 0.02)):
            with pytest.raises(tango.DevFailed, match="not allowed in state RUNNING"):
                action()
    finally:
        dev.cam.Stop()
        dev.cam.AcquisitionMode = 0
    wait_state(dev.cam, S.ON)
    with pytest.raises((tango.DevFailed, TypeError, ValueError)):
        dev.cam.write_attribute("ExposureTime", "short")
    assert dev.cam.ExposureTime == pytest.approx(0.01)
    beamline.sim({"op": "fault", "controller": "cam1", "kind": "drop"})
    try:
        wait_state(dev.cam, S.FAULT)
        assert "No link to the camera" in dev.cam.status()
        with pytest.raises(tango.DevFailed, match="Snap is not allowed in state FAULT"):
            dev.cam.Snap()
    finally:
        beamline.sim({"op": "clear", "controller": "cam1"})
    wait_state(dev.cam, S.ON)
    dev.cam.Snap()
    wait_state(dev.cam, S.ON)


def test_valve_stuck_is_a_fault_and_gauge_leak_alarm_text(beamline, dev):
    beamline.sim({"op": "fault", "controller": "ioc1", "kind": "valve_stuck"})
    try:
        dev.valve.Close()
        wait_state(dev.valve, S.FAULT)
        assert "did not reach its end position" in dev.valve.status()
        with pytest.raises(tango.DevFailed, match="Open is not allowed in state FAULT"):
            dev.valve.Open()
    finally:
        beamline.sim({"op": "clear", "controller": "ioc1"})
    wait_until(lambda: dev.valve.state() in (S.OPEN, S.CLOSE), 15, "the valve out of FAULT")
    if dev.valve.state() == S.CLOSE:
        dev.valve.Open()
    wait_state(dev.valve, S.OPEN)
