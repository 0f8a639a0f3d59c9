"""Hardware triggers in the virtual hardware as a real process, driven by the
real drivers over TCP: a timing unit's time-based train gates the scaler
(one buffered point per gate) and triggers the camera (one numbered frame per
pulse), a position-based train fires every N steps while an SMC axis moves,
and trains the scaler or the unit cannot do are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from tango_devices.drivers.camera import CameraClient
from tango_devices.drivers.errors import ControllerRejected
from tango_devices.drivers.motion_ascii import MotionController
from tango_devices.drivers.scaler import ScalerClient
from tango_devices.drivers.timing import E_SETTINGS, TimingClient
from tango_devices.simulators.physics import BeamlinePhysics
from tests.system.sim_helpers import axis, poll, poll_until_stopped, running_simulator

pytestmark = pytest.mark.system

#: i0 with the beam on (every physics input neutral)
I0_RATE = BeamlinePhysics().rates()["i0"]


def trigger_config() -> dict:
    """An SMC axis, a scaler and a camera, and a timing unit whose output 1
    is cabled to the scaler's gate, output 2 to the camera's trigger, and
    whose encoder input 1 follows the SMC axis."""
    return {
        "control": {"port": 0},
        "controllers": {
            "mc1": {
                "kind": "smc",
                "port": 0,
                "axes": {"1": axis("sample_x", position=0, velocity=5000, acceleration_time=0.1)},
            },
            "scaler1": {
                "kind": "scaler",
                "port": 0,
                "channels": {"1": "i0", "2": "diode"},
                "buffer_size": 10000,
                "dead_time": 0.0001,
            },
            "cam1": {
                "kind": "camera",
                "port": 0,
                "readout_time": 0.001,
            },
            "tg1": {
                "kind": "timing",
                "port": 0,
                "outputs": {"1": "scaler1", "2": "cam1"},
                "encoders": {"1": "mc1/1"},
            },
        },
    }


@pytest.fixture
def sim(tmp_path):
    with running_simulator(tmp_path, trigger_config()) as process:
        yield process


@pytest.fixture
def clients(sim):
    made = [
        TimingClient(sim.url("tg1")),
        ScalerClient(sim.url("scaler1")),
        CameraClient(sim.url("cam1")),
        MotionController(sim.url("mc1")),
    ]
    for client in made:
        client.connect()
    yield made
    for client in made:
        client.close()


def wait_idle(tg: TimingClient, timeout: float = 20.0):
    return poll(tg.status, lambda s: s.state == "IDLE", timeout, "the train to end")


def test_time_train_gates_the_scaler_and_triggers_the_camera(clients):
    tg, ct, cam, _ = clients
    points = 200
    ct.arm_buffer(points)
    cam.set_trigger("EXTERNAL")
    cam.set_exposure(0.002)
    cam.set_mode("MULTIPLE")
    cam.set_frames(points)
    cam.start()
    tg.set_time_train(points, period=0.005, width=0.004, delay=0.01)
    tg.arm()
    assert tg.status().state == "ARMED"
    tg.start()
    status = wait_idle(tg)
    assert (status.sent, status.count) == (points, points)

    # the unit's own record: every pulse, at its time
    record = list(tg.iter_pulses())
    assert [p.index for p in record] == list(range(points))
    times = np.array([p.time for p in record])
    np.testing.assert_allclose(times, 0.01 + 0.005 * np.arange(points), atol=1e-6)

    # the scaler: one point per gate, nothing missed or lost
    buffer = poll(ct.buffer_status, lambda b: b.state == "DONE", what="every point taken")
    assert (buffer.taken, buffer.points, buffer.overflow, buffer.missed) == (points, points, 0, 0)
    data = ct.read_buffer(0, points)
    assert data.first == 0 and data.counts.shape == (points, 2)
    np.testing.assert_array_equal(data.gate_time, np.full(points, 0.004))
    mean = I0_RATE * 0.004
    assert np.all(np.abs(data.counts[:, 0] - mean) < 6 * np.sqrt(mean))
    tail = ct.read_buffer(150, 50)
    assert tail.first == 150
    np.testing.assert_array_equal(tail.counts, data.counts[150:])
    with pytest.raises(ControllerRejected, match=r"points 195\.\.204 not taken: 200 of 200"):
        ct.read_buffer(195, 10)

    # the camera: one numbered frame per pulse
    frames = poll(cam.frame_buffer, lambda b: b.count == points, what="every frame")
    assert frames.missed == 0
    assert not cam.status().acquiring
    for k in (0, 17, points - 1):
        number, pixels = cam.read_frame_number(frames.first + k)
        assert number == frames.first + k
        assert pixels.shape == (512, 512) and pixels.sum() > 0  # the beam spot
    with pytest.raises(ControllerRejected, match="not acquired yet"):
        cam.read_frame_number(frames.first + points)


def test_position_train_fires_every_n_steps_while_the_axis_moves(clients):
    tg, ct, _, motion = clients
    count, start, step = 60, 1000, 100
    ct.arm_buffer(count)
    tg.set_position_train(count, start=start, step=step, width=0.002, encoder=1)
    tg.start()
    assert tg.status() == type(tg.status())("RUNNING", 0, count)  # the axis stands still
    motion.move(1, 8000)
    assert poll_until_stopped(motion, 1)[0] == 8000
    status = wait_idle(tg)
    assert status.sent == count
    record = list(tg.iter_pulses())
    assert [p.position for p in record] == [start + step * k for k in range(count)]
    # at the cruise velocity (5000 steps/s from 250 steps on) 100 steps take 20 ms
    np.testing.assert_allclose(np.diff([p.time for p in record]), 0.02, atol=1e-5)
    buffer = poll(ct.buffer_status, lambda b: b.state == "DONE", what="every point taken")
    assert (buffer.taken, buffer.overflow, buffer.missed) == (count, 0, 0)
    np.testing.assert_array_equal(ct.read_buffer(0, count).gate_time, np.full(count, 0.002))


def refusal(call) -> ControllerRejected:
    with pytest.raises(ControllerRejected) as excinfo:
        call()
    return excinfo.value


def test_trains_that_cannot_be_done_are_refused_with_the_reason(clients):
    tg, ct, _, _ = clients
    size = ct.buffer_size()
    error = refusal(lambda: ct.arm_buffer(size + 1))
    assert error.code == 2
    assert error.text == (
        f"bad argument: {size + 1} points is more than the buffer holds ({size} points): "
        f"arm at most {size} points and read them before the next ARM"
    )
    ct.arm_buffer(100)

    tg.set_time_train(100, period=0.001, width=0.00095)
    error = refusal(tg.arm)
    assert error.code == E_SETTINGS
    assert "only 5e-05 s between gates, shorter than scaler1 can count (0.0001 s dead time" in (
        error.text
    )
    assert "make the time between pulses at least WIDTH + 0.0001 s" in error.text

    tg.set_time_train(101, period=0.01, width=0.005)
    assert refusal(tg.start).text == (
        "settings: COUNT 101 pulses, but scaler1 is armed for 100 more point(s): ARM scaler1 "
        f"for 101 points (its buffer holds {size}) or lower COUNT"
    )

    tg.set_time_train(10, period=0.01, width=0.01)
    assert refusal(tg.start).text.startswith(
        "settings: WIDTH 0.01 s is not shorter than the time between pulses (the period is "
        "0.01 s): a pulse must end before the next one starts"
    )

    error = refusal(lambda: tg.request("COUNT 0"))
    assert (error.code, error.text) == (2, "bad argument: count (pulses) must be 1..1000000, got 0")
    # nothing was started, and the unit keeps the last accepted settings
    assert tg.status().state == "IDLE"
    assert (tg.count(), tg.period(), tg.width()) == (10, 0.01, 0.01)
    assert ct.buffer_status().taken == 0


def test_stop_mid_train_keeps_the_points_taken(clients):
    tg, ct, _, _ = clients
    ct.arm_buffer(10000)
    tg.set_time_train(10000, period=0.002, width=0.001)
    tg.start()
    poll(tg.status, lambda s: s.sent >= 50, what="50 pulses")
    tg.stop()
    sent = tg.status().sent
    assert tg.status().state == "IDLE" and tg.status().count == sent
    buffer = poll(ct.buffer_status, lambda b: b.taken == sent, what="a point per pulse sent")
    assert (buffer.state, buffer.missed, buffer.overflow) == ("ARMED", 0, 0)
    assert ct.read_buffer(0, sent).counts.shape == (sent, 2)
    assert len(list(tg.iter_pulses())) == sent
