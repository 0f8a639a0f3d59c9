"""The shutter PLC, scaler and camera of the virtual hardware as a real
process, driven by their real drivers over TCP: the vacuum interlock from a
pressure we drive, PLC faults, counting through the shutter, frames end to
end, frames per second, and the link faults with reconnection."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tango_devices.drivers.camera import CameraClient
from tango_devices.drivers.errors import ControllerRejected, LinkError, ProtocolError
from tango_devices.drivers.motion_ascii import MotionController
from tango_devices.drivers.plc import ShutterPlc
from tango_devices.drivers.scaler import ScalerClient
from tango_devices.simulators.physics import BeamlinePhysics
from tests.system.sim_helpers import (
    VACUUM_INTERLOCK_TEXT,
    plc_scaler_camera_config,
    poll,
    poll_until_stopped,
    running_simulator,
)

pytestmark = pytest.mark.system

#: the beam with the shutter open (every other physics input is neutral here)
OPEN_RATES = BeamlinePhysics().rates()
OPEN_SPOT = BeamlinePhysics().spot()
DARK_RATE = 5.0


@pytest.fixture
def sim(tmp_path):
    with running_simulator(tmp_path, plc_scaler_camera_config()) as process:
        yield process


@pytest.fixture
def plc(sim):
    client = ShutterPlc(sim.url("plc1"))
    client.connect()
    yield client
    client.close()


@pytest.fixture
def ct(sim):
    client = ScalerClient(sim.url("scaler1"))
    client.connect()
    yield client
    client.close()


@pytest.fixture
def cam(sim):
    client = CameraClient(sim.url("cam1"))
    client.connect()
    yield client
    client.close()


@pytest.fixture
def gauge(sim):
    """The SMC axis whose position is the pressure (1e-8 mbar per step)."""
    client = MotionController(sim.url("mc1"))
    client.connect()
    yield client
    client.close()


def open_shutter(plc: ShutterPlc) -> None:
    plc.open("fe")
    poll(lambda: plc.read_status("fe").state, lambda s: s == "OPEN", what="the shutter open")


def count(ct: ScalerClient, preset: float) -> tuple[float, list[int]]:
    """One count of ``preset`` seconds; returns (elapsed, counts) once idle."""
    ct.set_preset(preset)
    ct.start()
    status = poll(ct.status, lambda s: not s.counting, preset + 5.0, "the count to end")
    return status.elapsed, ct.counts()


def within_poisson(value: int, mean: float) -> bool:
    return abs(value - mean) <= 6 * math.sqrt(max(mean, 1.0))


# ------------------------------------------------------------------ basics
def test_every_controller_identifies(sim, plc, ct, cam):
    kinds = {n: c["kind"] for n, c in sim.state["controllers"].items()}
    assert kinds == {"mc1": "smc", "plc1": "plc", "scaler1": "scaler", "cam1": "camera"}
    assert plc.identify() == "PLC-1 1.0"
    assert plc.shutters() == ["fe"]
    assert ct.identify() == "SCALER-2 1.0"
    assert ct.channels() == 2
    assert cam.identify() == "CAM-512x512 1.0"
    assert cam.size() == (512, 512, 16)


def test_shutter_opens_and_closes_in_its_travel_time(plc):
    assert plc.read_status("fe").state == "CLOSED"
    started = time.monotonic()
    plc.open("fe")
    assert plc.read_status("fe").state == "MOVING"
    poll(lambda: plc.read_status("fe").state, lambda s: s == "OPEN", what="OPEN")
    assert time.monotonic() - started >= 0.3
    plc.close_shutter("fe")
    poll(lambda: plc.read_status("fe").state, lambda s: s == "CLOSED", what="CLOSED")


# --------------------------------------------------------------- interlock
def test_vacuum_interlock_closes_refuses_and_clears_with_the_pressure(sim, plc, gauge):
    open_shutter(plc)
    gauge.move(1, 5000)  # 5e-5 mbar: above the 1e-5 threshold
    status = poll(lambda: plc.read_status("fe"), lambda s: s.interlock, what="the vacuum interlock")
    assert status.interlock_text == VACUUM_INTERLOCK_TEXT
    status = poll(lambda: plc.read_status("fe"), lambda s: s.state == "CLOSED", what="CLOSED")
    assert status.interlock and status.interlock_text == VACUUM_INTERLOCK_TEXT
    with pytest.raises(ControllerRejected) as err:
        plc.open("fe")
    assert err.value.code == 8
    assert err.value.text == f"interlock active: {VACUUM_INTERLOCK_TEXT}"
    assert plc.connected
    plant = sim.control({"op": "status"})["controllers"]["plc1"]
    assert plant["interlocks"] == [VACUUM_INTERLOCK_TEXT]
    assert plant["shutters"]["fe"]["state"] == "CLOSED"

    poll_until_stopped(gauge, 1)
    gauge.move(1, 100)  # pumped down again
    poll_until_stopped(gauge, 1)
    status = plc.read_status("fe")
    assert (status.state, status.interlock, status.interlock_text) == ("CLOSED", False, None)
    assert plc.read_interlock("fe") is None
    open_shutter(plc)


def test_manual_interlock_until_clear(sim, plc):
    open_shutter(plc)
    sim.fault("interlock", "plc1", text="radiation survey in progress")
    status = poll(lambda: plc.read_status("fe"), lambda s: s.state == "CLOSED", what="CLOSED")
    assert status.interlock_text == "radiation survey in progress"
    with pytest.raises(ControllerRejected, match="radiation survey in progress"):
        plc.open("fe")
    sim.clear("plc1")
    assert plc.read_status("fe").interlock is False
    open_shutter(plc)


def test_stuck_shutter_faults_and_resets_after_clear(sim, plc):
    sim.fault("stuck", "plc1", shutter="fe")
    started = time.monotonic()
    plc.open("fe")
    assert plc.read_status("fe").state == "MOVING"
    poll(lambda: plc.read_status("fe").state, lambda s: s == "FAULT", what="FAULT")
    assert time.monotonic() - started >= 0.6  # twice the travel time
    assert plc.read_fault("fe") == "shutter stuck: not OPEN within 0.6 s"
    with pytest.raises(ControllerRejected) as err:
        plc.reset("fe")
    assert (err.value.code, err.value.text) == (7, "cannot reset: the shutter is still stuck")
    faults = sim.control({"op": "status"})["controllers"]["plc1"]["faults"]
    assert faults == [
        "shutter fe stuck",
        "fault on shutter fe: shutter stuck: not OPEN within 0.6 s",
    ]
    sim.clear("plc1")
    assert plc.read_status("fe").state == "FAULT"  # latched until RESET
    plc.reset("fe")
    poll(lambda: plc.read_status("fe").state, lambda s: s == "CLOSED", what="CLOSED")
    assert plc.read_fault("fe") is None


# ------------------------------------------------------------------ scaler
def test_scaler_counts_the_beam_through_the_shutter(plc, ct):
    elapsed, (i0, diode) = count(ct, 0.2)  # shutter closed: dark counts only
    assert elapsed == 0.2
    assert within_poisson(i0, DARK_RATE * 0.2) and within_poisson(diode, DARK_RATE * 0.2)

    open_shutter(plc)
    ct.set_preset(0.5)
    assert ct.preset() == 0.5
    ct.start()
    running = poll(ct.status, lambda s: s.elapsed > 0.1, what="counting")
    assert running.counting
    partial = ct.counts()
    assert 0 < partial[0] < OPEN_RATES["i0"] * 0.5
    status = poll(ct.status, lambda s: not s.counting, what="the count to end")
    assert status.elapsed == 0.5  # exactly the preset
    final = ct.counts()
    assert within_poisson(final[0], OPEN_RATES["i0"] * 0.5), final
    assert within_poisson(final[1], OPEN_RATES["diode"] * 0.5), final
    time.sleep(0.05)  # nothing to wait for: the counts must simply stay frozen
    assert ct.counts() == final
    ct.clear()
    assert ct.counts() == [0, 0]


def test_a_shutter_opening_mid_count_shows_in_the_counts(plc, ct):
    ct.set_preset(1.0)
    ct.start()
    before = poll(ct.status, lambda s: s.elapsed >= 0.2, what="0.2 s of counting").elapsed
    plc.open("fe")
    poll(lambda: plc.read_status("fe").state, lambda s: s == "OPEN", what="OPEN")
    after = ct.status().elapsed
    poll(ct.status, lambda s: not s.counting, what="the count to end")
    i0 = ct.counts()[0]
    rate = OPEN_RATES["i0"]
    # the shutter was fully open for between 1 - after and 1 - before - 0.3 seconds;
    # the rate is sampled every 10 ms
    least, most = 1.0 - after - 0.02, 1.0 - before - 0.3
    assert rate * least - 6 * math.sqrt(rate) <= i0 <= rate * most + 6 * math.sqrt(rate), (
        i0 / rate,
        least,
        most,
    )


def test_scaler_refuses_while_counting_and_stops(ct):
    ct.set_preset(100)
    ct.start()
    with pytest.raises(ControllerRejected) as err:
        ct.set_preset(1)
    assert err.value.code == 5 and ct.connected
    ct.stop()
    status = ct.status()
    assert not status.counting and 0 < status.elapsed < 100
    assert ct.preset() == 100


# ------------------------------------------------------------------ camera
def centroid(image: np.ndarray) -> tuple[float, float]:
    signal = image.astype(np.float64)
    rows, cols = np.indices(signal.shape)
    return float((cols * signal).sum() / signal.sum()), float((rows * signal).sum() / signal.sum())


def test_no_frame_before_the_first_acquisition(cam):
    with pytest.raises(ControllerRejected) as err:
        cam.read_frame()
    assert (err.value.code, err.value.text) == (6, "no frame acquired yet")
    assert cam.connected


def test_a_512x512_frame_end_to_end(plc, cam):
    open_shutter(plc)
    cam.set_exposure(0.01)
    cam.set_mode("SINGLE")
    assert (cam.exposure(), cam.mode()) == (0.01, "SINGLE")
    cam.start()
    status = poll(cam.status, lambda s: not s.acquiring, what="the frame")
    assert status.counter == 1
    started = time.perf_counter()
    counter, image = cam.read_frame()
    transfer = time.perf_counter() - started
    print(f"\n512x512 frame (render + transfer + decode): {transfer * 1e3:.1f} ms")
    assert counter == 1
    assert image.shape == (512, 512) and image.dtype == np.uint16
    x, y = centroid(image)
    assert abs(x - OPEN_SPOT.x) < 1.0 and abs(y - OPEN_SPOT.y) < 1.0
    total = 2 * math.pi * OPEN_SPOT.sigma_x * OPEN_SPOT.sigma_y * OPEN_SPOT.peak * 0.01
    total += OPEN_SPOT.dark * 0.01 * 512 * 512
    assert within_poisson(int(image.sum(dtype=np.int64)), total)
    again = cam.read_frame()
    assert again[0] == 1 and np.array_equal(again[1], image)  # the same last frame


def test_multiple_frames_then_idle(cam):
    cam.set_exposure(0.002)
    cam.set_mode("MULTIPLE")
    cam.set_frames(5)
    assert cam.frames() == 5
    cam.start()
    with pytest.raises(ControllerRejected) as err:
        cam.set_exposure(0.01)
    assert err.value.code == 5
    status = poll(cam.status, lambda s: not s.acquiring, what="5 frames")
    assert status.counter == 5
    assert cam.read_frame()[0] == 5


def test_frames_per_second_continuous(plc, cam):
    """Exposure 1 ms + readout 5 ms: the camera makes ~167 frames/s; a client
    reading frames back to back gets as many of them as it can."""
    open_shutter(plc)
    cam.set_exposure(0.001)
    cam.set_mode("CONTINUOUS")
    before = time.monotonic()
    cam.start()
    after = time.monotonic()
    poll(cam.status, lambda s: s.counter >= 1, what="the first frame")
    counters = []
    while time.monotonic() - after < 1.5:
        counters.append(cam.read_frame()[0])
    stop_before = time.monotonic()
    cam.stop()
    stop_after = time.monotonic()
    made = cam.status().counter
    received = len(set(counters))
    reads_per_s = len(counters) / 1.5
    fps = received / 1.5
    print(
        f"\ncontinuous, exposure 1 ms: camera made {made} frames "
        f"({made / (stop_after - before):.0f}/s), client read {len(counters)} frames "
        f"({reads_per_s:.0f}/s), {received} distinct ({fps:.0f} frames/s end to end)"
    )
    period = 0.001 + 0.005
    assert (stop_before - after) / period - 2 <= made <= (stop_after - before) / period + 1
    assert counters == sorted(counters) and counters[-1] <= made
    assert fps >= 30, f"only {fps:.0f} distinct frames/s read end to end"


# -------------------------------------------------------------- link faults
CLIENTS = {
    "plc1": (ShutterPlc, "PLC-1 1.0", lambda c: c.read_status("fe")),
    "scaler1": (ScalerClient, "SCALER-2 1.0", lambda c: c.counts()),
    "cam1": (CameraClient, "CAM-512x512 1.0", lambda c: c.status()),
}


@pytest.fixture(params=sorted(CLIENTS))
def link(request, sim):
    cls, identity, call = CLIENTS[request.param]
    client = cls(sim.url(request.param))
    assert client.connect() == identity
    yield request.param, client, identity, call
    client.close()


def test_drop_disconnects_and_refuses_until_clear(sim, link):
    name, client, identity, call = link
    sim.fault("drop", name)
    with pytest.raises(LinkError, match="connection closed by socket://127.0.0.1"):
        call(client)
    assert not client.connected
    with pytest.raises(LinkError, match=f"cannot connect to {sim.url(name)}: Connection refused"):
        client.connect()
    sim.clear(name)
    assert client.connect() == identity
    call(client)


def test_stall_times_out_then_recovers_after_clear(sim, link):
    name, client, identity, call = link
    sim.fault("stall", name)
    with pytest.raises(LinkError, match=r"no reply from socket://.* within 0.5 s"):
        call(client)
    assert not client.connected
    sim.clear(name)
    assert client.connect() == identity
    call(client)


def test_garbage_is_a_protocol_error_then_recovers(sim, link):
    name, client, identity, call = link
    sim.fault("garbage", name)
    with pytest.raises(ProtocolError, match=r"garbage reply from socket://"):
        call(client)
    assert not client.connected
    sim.clear(name)
    assert client.connect() == identity
    call(client)


def test_garbage_instead_of_a_frame(sim, cam):
    cam.set_exposure(0.001)
    cam.start()
    poll(cam.status, lambda s: s.counter == 1, what="a frame")
    sim.fault("garbage", "cam1")
    with pytest.raises(ProtocolError, match=r"garbage reply from socket://.* to 'FRAME\?'"):
        cam.read_frame()
    assert not cam.connected
    sim.clear("cam1")
    cam.connect()
    assert cam.read_frame()[0] == 1
