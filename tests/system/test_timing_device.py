"""The timing unit's Tango device with the scaler's gated buffer and the
camera's external trigger, on the running demo beamline: a time train read
back point by point and frame by frame, a position train while a motor
moves, bad trains refused with everything left as it was, and the timing
unit's server killed -9 and healed by the supervisor."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import tango

from beamline import procs
from tests.helpers import wait_until
from tests.system.conftest import Events, wait_state

pytestmark = pytest.mark.system

S = tango.DevState
SERVER = "TimingUnit/tg1"


@pytest.fixture(scope="module")
def dev(beamline):
    names = {
        "tg": "bl01/tim/tg1",
        "scaler": "bl01/ct/scaler",
        "cam": "bl01/det/cam1",
        "sample_x": "bl01/mot/sample_x",
        "supervisor": "bl01/sys/supervisor",
    }
    devices = type("Devices", (), {k: beamline.proxy(v) for k, v in names.items()})
    wait_state(devices.tg, S.ON, 20)
    return devices


@pytest.fixture(autouse=True)
def idle_after(dev):
    """A test that fails half-way must not leave the scaler armed or a train
    running for the next one (Stop disarms)."""
    yield
    for device in (dev.tg, dev.scaler):
        if device.state() in (S.RUNNING, S.STANDBY):
            device.Stop()
            wait_state(device, S.ON)


@pytest.fixture
def camera_internal(dev):
    """The camera's trigger mode is a stored setting: back to INTERNAL after the test."""
    yield
    if dev.cam.state() == S.RUNNING:
        dev.cam.Stop()
    wait_state(dev.cam, S.ON)
    dev.cam.TriggerMode = 0


def buffered(scaler, first=0, count=0):
    """ReadBuffer: (first, gate times in us, counts per channel)."""
    out = scaler.ReadBuffer([first, count])
    n = int(out[1])
    rows = out[2:].reshape(n, 1 + len(scaler.ChannelNames))
    return int(out[0]), rows[:, 0], rows[:, 1:]


def pulses(tg, first=0, count=0):
    """ReadPulses: (first, times in s, positions in steps)."""
    out = tg.ReadPulses([first, count])
    n = int(out[1])
    return int(out[0]), out[2 : 2 + n], out[2 + n :]


def test_the_timing_unit_answers_with_its_wiring(dev):
    assert dev.tg.state() == S.ON
    assert list(dev.tg.Outputs) == ["1:scaler1", "2:cam1"]
    assert list(dev.tg.Encoders)[2] == "3:smc1/3"  # sample_x
    table = json.loads(dev.tg.CommandStates)
    assert table["Arm"] == ["ON"] and table["write_Period"] == ["ON"]
    assert dev.scaler.BufferSize >= 1000 and 0 < dev.scaler.DeadTime < 0.01


@pytest.fixture
def beam(beamline):
    """The front-end shutter open for the test (the monitor sees the beam)."""
    shutter = beamline.proxy("bl01/shutter/fe")
    shutter.Open()
    wait_state(shutter, S.OPEN)
    yield
    shutter.Close()
    wait_state(shutter, S.CLOSE)


def test_a_time_train_gives_one_buffered_point_per_gate_and_one_frame_per_pulse(
    dev, camera_internal, beam
):
    n, period, width = 20, 0.02, 0.01
    dev.scaler.ArmBuffer(n)
    assert dev.scaler.state() == S.RUNNING and dev.scaler.BufferState == "ARMED"
    dev.cam.TriggerMode = 1  # EXTERNAL
    dev.cam.AcquisitionMode = 1  # MULTIPLE
    dev.cam.NumberOfFrames = n
    dev.cam.ExposureTime = 0.005
    dev.cam.Start()
    wait_state(dev.cam, S.RUNNING)
    first_frame = dev.cam.FirstFrame
    assert dev.cam.BufferedFrames == 0
    dev.tg.LoadTrain(json.dumps({"mode": "time", "count": n, "period": period, "width": width}))
    assert (dev.tg.Mode, dev.tg.Count, dev.tg.Period, dev.tg.Width) == (0, n, period, width)
    sent = Events(dev.tg, "PulsesSent")
    try:
        sent.wait_live()
        dev.tg.Arm()
        wait_state(dev.tg, S.STANDBY)
        dev.tg.Start()
        wait_state(dev.tg, S.ON)
        sent.wait_for(lambda it: it and it[-1].value == n, 5, f"PulsesSent {n} event")
    finally:
        sent.close()
    assert dev.tg.PulsesSent == n and dev.tg.TrainState == "IDLE"
    wait_state(dev.scaler, S.ON)
    assert dev.scaler.PointsTaken == n and dev.scaler.BufferState == "DONE"
    assert dev.scaler.MissedGates == 0 and dev.scaler.OverflowGates == 0
    first, gate_us, counts = buffered(dev.scaler)
    assert first == 0 and len(gate_us) == n
    assert (gate_us == width * 1e6).all()
    assert (counts[:, 0] > 1000).all()  # the i0 monitor counted the beam in every gate
    first, later_us, later = buffered(dev.scaler, 15, 5)
    assert first == 15
    np.testing.assert_array_equal(later, counts[15:])
    first, times, positions = pulses(dev.tg)
    assert first == 0 and len(times) == n
    np.testing.assert_allclose(times, np.arange(n) * period, atol=1e-6)
    assert dev.tg.Encoder == 0 or all(not math.isnan(p) for p in positions)
    wait_state(dev.cam, S.ON)
    assert dev.cam.BufferedFrames == n and dev.cam.MissedTriggers == 0
    assert dev.cam.FirstFrame == first_frame
    size = dev.cam.Width * dev.cam.Height
    for number in (first_frame, first_frame + n // 2, first_frame + n - 1):
        frame = dev.cam.ReadFrame(number)
        assert frame.dtype == np.uint16 and frame.size == size and frame.max() > 0
    with pytest.raises(tango.DevFailed, match=f"frame {first_frame + n} not acquired yet"):
        dev.cam.ReadFrame(first_frame + n)
    # a done buffer does not stand in the way of counting in software
    dev.scaler.PresetTime = 0.05
    dev.scaler.Start()
    wait_state(dev.scaler, S.ON)
    assert dev.scaler.BufferState == "IDLE"


def test_a_position_train_fires_while_the_motor_moves(dev):
    motor = dev.sample_x
    motor.Position = 0.0
    wait_state(motor, S.ON, 20)
    n, start, step = 8, 500, 250  # steps of encoder 3 (sample_x: 1000 steps per mm)
    dev.scaler.ArmBuffer(n)
    dev.tg.LoadTrain(
        json.dumps(
            {
                "mode": "position",
                "count": n,
                "start": start,
                "step": step,
                "width": 0.001,
                "encoder": 3,
            }
        )
    )
    dev.tg.Start()
    assert dev.tg.state() == S.RUNNING
    assert dev.tg.PulsesSent == 0  # the motor stands still: the train waits
    motor.Position = 3.0
    wait_state(dev.tg, S.ON, 20)
    wait_state(motor, S.ON, 20)
    first, times, positions = pulses(dev.tg)
    assert list(positions) == [start + k * step for k in range(n)]
    assert (np.diff(times) > 0).all()
    wait_state(dev.scaler, S.ON)
    assert dev.scaler.PointsTaken == n


def test_bad_trains_are_refused_and_leave_everything_as_it_was(dev):
    dev.tg.LoadTrain(json.dumps({"mode": "time", "count": 5, "period": 0.05, "width": 0.01}))
    dev.scaler.ArmBuffer(3)
    settings = (dev.tg.Mode, dev.tg.Count, dev.tg.Period, dev.tg.Width, dev.tg.Delay)
    with pytest.raises(tango.DevFailed) as refused:
        dev.tg.Arm()
    error = refused.value.args[0]
    assert error.reason == "TRAIN_REFUSED"
    assert "COUNT 5 pulses, but scaler1 is armed for 3 more point(s)" in error.desc
    assert "lower COUNT" in error.desc
    for bad in (
        '{"mode": "time", "count": 5, "width": 0.01}',
        '{"mode": "time", "count": 5, "period": 0.05, "width": 0.01, "extra": 1}',
        '{"mode": "time", "count": 5000000, "period": 0.05, "width": 0.01}',
    ):
        with pytest.raises(tango.DevFailed):
            dev.tg.LoadTrain(bad)
    with pytest.raises(tango.DevFailed, match="Period is below the minimum"):
        dev.tg.Period = -1.0
    assert dev.tg.state() == S.ON and dev.tg.TrainState == "IDLE"
    assert (dev.tg.Mode, dev.tg.Count, dev.tg.Period, dev.tg.Width, dev.tg.Delay) == settings
    assert dev.scaler.state() == S.RUNNING and dev.scaler.PointsTaken == 0
    # armed: the settings are refused, naming the state and what to do
    dev.scaler.Stop()
    dev.tg.Count = 3
    dev.tg.Arm()
    with pytest.raises(tango.DevFailed) as refused:
        dev.tg.Period = 0.5
    assert refused.value.args[0].reason == "API_CommandNotAllowed"
    assert "not allowed in state STANDBY (Armed: time train of 3" in refused.value.args[0].desc
    dev.tg.Stop()
    wait_state(dev.tg, S.ON)
    assert dev.tg.Period == 0.05 and dev.scaler.state() == S.ON


def test_the_timing_units_server_killed_comes_back_and_works(beamline, dev):
    (old,) = procs.server_pids(beamline.run_dir, [SERVER]).get(SERVER.lower(), [])
    os.kill(old, signal.SIGKILL)

    def back():
        pids = procs.server_pids(beamline.run_dir, [SERVER]).get(SERVER.lower(), [])
        return pids and pids[0] != old and beamline.proxy("bl01/tim/tg1").state() == S.ON

    wait_until(back, 60, "the supervisor to restart TimingUnit/tg1")
    tg = beamline.proxy("bl01/tim/tg1")
    tg.LoadTrain(json.dumps({"mode": "time", "count": 4, "period": 0.01, "width": 0.005}))
    tg.Start()
    wait_until(lambda: tg.state() == S.ON and tg.PulsesSent == 4, 10, "a train after the restart")
    report = json.loads(dev.supervisor.Report)
    row = next(r for r in report["servers"] if r["server"] == SERVER)
    assert row["restarts"] >= 1
