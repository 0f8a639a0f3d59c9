"""The timing unit's driver and the scaler's and camera's hardware-trigger
methods over an in-memory port: replies parsed, bad replies a ProtocolError
that closes the link, refusals a ControllerRejected that keeps it. The real
link is exercised in tests/system/test_sim_triggers.py."""

from __future__ import annotations

import numpy as np
import pytest

from tango_devices.drivers.camera import CameraClient, FrameBuffer
from tango_devices.drivers.errors import ControllerRejected, ProtocolError
from tango_devices.drivers.scaler import BufferStatus, ScalerClient
from tango_devices.drivers.timing import Pulse, TimingClient, TimingStatus
from tests.unit.fake_serial import FakePort, install

URL = "socket://tg.example:9105"


@pytest.fixture
def port(monkeypatch):
    return install(monkeypatch, FakePort({"?ID": b"?ID TEST-1 1.0\r\n"}), URL)


def connected(cls, port):
    client = cls(URL, timeout=0.05)
    assert client.connect() == "TEST-1 1.0"
    return client


def test_timing_status_and_record(port):
    tg = connected(TimingClient, port)
    port.replies["?STATUS"] = b"?STATUS RUNNING 2 5\r\n"
    assert tg.status() == TimingStatus("RUNNING", 2, 5)
    port.replies["?PULSES 3 2"] = b"?PULSES 3 2 0.015,1300 0.02,-\r\n"
    assert tg.pulses(3, 2) == [Pulse(3, 0.015, 1300), Pulse(4, 0.02, None)]
    port.replies["?OUTPUTS"] = b"?OUTPUTS 1:scaler1 2:cam1\r\n"
    assert tg.outputs() == {1: "scaler1", 2: "cam1"}
    with pytest.raises(ValueError, match="read at most 100 pulses"):
        tg.pulses(0, 101)
    assert tg.connected


@pytest.mark.parametrize(
    "request_name,reply,call",
    [
        ("?STATUS", b"?STATUS BUSY 2 5\r\n", lambda tg: tg.status()),
        ("?STATUS", b"?STATUS IDLE 6 5\r\n", lambda tg: tg.status()),
        ("?PULSES 3 2", b"?PULSES 3 2 0.015,1300\r\n", lambda tg: tg.pulses(3, 2)),
        ("?PULSES 3 2", b"?PULSES 4 2 0.015,1 0.02,2\r\n", lambda tg: tg.pulses(3, 2)),
    ],
)
def test_timing_bad_replies_close_the_link(port, request_name, reply, call):
    tg = connected(TimingClient, port)
    port.replies[request_name] = reply
    with pytest.raises(ProtocolError):
        call(tg)
    assert not tg.connected


def test_timing_refusal_keeps_the_link(port):
    tg = connected(TimingClient, port)
    port.replies["ARM"] = b"ARM ERROR 6 settings: WIDTH 0.01 s is not shorter ...\r\n"
    with pytest.raises(ControllerRejected) as err:
        tg.arm()
    assert err.value.code == 6 and err.value.text.startswith("settings: WIDTH")
    assert tg.connected
    with pytest.raises(ValueError, match="pstep must be a non-zero integer"):
        tg.set_position_step(0)
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        tg.set_count(0)


def test_scaler_buffer_read_as_arrays(port):
    ct = connected(ScalerClient, port)
    rows = np.array([[4000, 10, 3], [4000, 12, 5]], dtype="<i8")
    port.replies["?DATA 7 2"] = b"?DATA 7 2 3 48\r\n" + rows.tobytes()
    points = ct.read_buffer(7, 2)
    assert points.first == 7
    np.testing.assert_array_equal(points.gate_time, [0.004, 0.004])
    np.testing.assert_array_equal(points.counts, [[10, 3], [12, 5]])
    port.replies["?BUFSTATUS"] = b"?BUFSTATUS ARMED 9 100 0 1\r\n"
    assert ct.buffer_status() == BufferStatus("ARMED", 9, 100, 0, 1)


def test_scaler_buffer_header_for_other_points_is_a_protocol_error(port):
    ct = connected(ScalerClient, port)
    port.replies["?DATA 7 2"] = b"?DATA 0 2 3 48\r\n" + bytes(48)
    with pytest.raises(ProtocolError, match="a \\?DATA header for 2 points from 7"):
        ct.read_buffer(7, 2)
    assert not ct.connected


def test_camera_numbered_frame(port):
    cam = connected(CameraClient, port)
    image = np.arange(6, dtype="<u2").reshape(2, 3)
    port.replies["FRAME? 12"] = b"FRAME? 12 3 2 12\r\n" + image.tobytes()
    number, pixels = cam.read_frame_number(12)
    assert number == 12
    np.testing.assert_array_equal(pixels, image)
    port.replies["?BUFFER"] = b"?BUFFER 40 13 2\r\n"
    assert cam.frame_buffer() == FrameBuffer(40, 13, 2)
    port.replies["FRAME? 12"] = b"FRAME? 11 3 2 12\r\n" + image.tobytes()
    with pytest.raises(ProtocolError, match="asked for frame 12, got frame 11"):
        cam.read_frame_number(12)
