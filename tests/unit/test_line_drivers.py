"""The line-based drivers without a network: ``LineClient`` and the PLC,
scaler and camera clients over an in-memory pyserial-like port (garbage,
short replies and payloads, stale input, lost links). The real link is
exercised in tests/system/test_sim_plc_scaler_camera.py."""

from __future__ import annotations

import errno
import socket
import time

import numpy as np
import pytest
import serial

from tango_devices.drivers import line_client
from tango_devices.drivers.camera import CameraClient, CameraStatus
from tango_devices.drivers.errors import ControllerRejected, LinkError, ProtocolError
from tango_devices.drivers.line_client import (
    LineClient,
    expected_echo,
    format_seconds,
    parse_reply,
)
from tango_devices.drivers.plc import ShutterPlc, ShutterStatus
from tango_devices.drivers.scaler import ScalerClient, ScalerStatus
from tests.unit.fake_serial import FakePort, install

URL = "socket://ctl.example:9102"


@pytest.fixture
def port(monkeypatch):
    return install(monkeypatch, FakePort({"?ID": b"?ID TEST-1 1.0\r\n"}), URL)


def connected(cls, port, **kwargs):
    client = cls(URL, timeout=0.05, **kwargs)
    assert client.connect() == "TEST-1 1.0"
    return client


# ------------------------------------------------------------ LineClient
def test_parse_reply_and_echo():
    assert expected_echo("fe:?state") == "fe:?STATE"
    assert expected_echo("02:?pos") == "2:?POS"
    assert expected_echo("frame?") == "FRAME?"
    assert parse_reply("fe:?STATE", "fe:?STATE OPEN 0") == "OPEN 0"
    with pytest.raises(ControllerRejected) as err:
        parse_reply("fe:OPEN", "fe:OPEN ERROR 8 interlock active: vacuum")
    assert (err.value.code, err.value.text, err.value.request) == (
        8,
        "interlock active: vacuum",
        "fe:OPEN",
    )
    with pytest.raises(ProtocolError, match="does not echo the request 'fe:OPEN'"):
        parse_reply("fe:OPEN", "bs:OPEN OK")
    with pytest.raises(ProtocolError, match="short reply"):
        parse_reply("?COUNTS", "?COUNTS")


@pytest.mark.parametrize(
    "value,text", [(0.5, "0.5"), (1, "1"), (0.0000004, "0"), (2.1234567, "2.123457")]
)
def test_format_seconds(value, text):
    assert format_seconds(value) == text


def test_request_discards_stale_input_and_keeps_order(port):
    client = connected(LineClient, port)
    port.buffer = b"?COUNTS 1 2\r\n"  # a late reply to an earlier, timed-out request
    port.replies["?COUNTS"] = b"?COUNTS 7 8\r\n"
    assert client.request("?COUNTS") == "7 8"
    assert port.resets == 2


@pytest.mark.parametrize(
    "reply,error,message",
    [
        (
            b"\x8f#\x01\xff\r\n",
            ProtocolError,
            r"garbage reply from socket://ctl.example:9102 to '\?X'",
        ),
        (b"?X 1", ProtocolError, r"incomplete reply from .* to '\?X' within 0.05 s: b'\?X 1'"),
        (b"?Y 1\r\n", ProtocolError, r"does not echo the request '\?X'"),
        (b"x" * 5000, ProtocolError, r"garbage reply .*: no line end in 4096 bytes"),
        (b"?X ERROR x broken\r\n", ProtocolError, r"unparsable error reply"),
        (
            serial.SerialException("socket disconnected"),
            LinkError,
            r"^connection closed by socket://ctl.example:9102$",
        ),
        (
            OSError(errno.ECONNRESET, "Connection reset by peer"),
            LinkError,
            r"^connection closed by",
        ),
        (
            serial.SerialException("write failed: [Errno 5] I/O error"),
            LinkError,
            r"^connection to socket://ctl.example:9102 lost",
        ),
    ],
)
def test_bad_replies_and_link_errors_close_the_port(port, reply, error, message):
    client = connected(LineClient, port)
    port.replies["?X"] = reply
    with pytest.raises(error, match=message):
        client.request("?X")
    assert not client.connected and not port.is_open
    with pytest.raises(LinkError, match=f"not connected to {URL}"):
        client.request("?X")


def test_no_reply_is_a_link_error_naming_the_timeout(port, monkeypatch):
    client = connected(LineClient, port)

    def silent(terminator: bytes = b"\n", size: int | None = None) -> bytes:
        time.sleep(client.timeout)  # what pyserial does when nothing comes
        return b""

    monkeypatch.setattr(port, "read_until", silent)
    with pytest.raises(LinkError, match=r"no reply from socket://.* within 0.05 s to '\?X'"):
        client.request("?X")
    assert not client.connected


def test_nothing_at_once_means_the_peer_closed(port):
    client = connected(LineClient, port)
    with pytest.raises(LinkError, match=r"^connection closed by socket://ctl.example:9102$"):
        client.request("?X")  # read_until returns b"" at once: end of stream
    assert not client.connected


def test_rejection_keeps_the_link_open(port):
    client = connected(LineClient, port)
    port.replies["START"] = b"START ERROR 5 busy: counting; STOP first\r\n"
    with pytest.raises(ControllerRejected) as err:
        client.command("START")
    assert str(err.value) == "controller refused START: busy: counting; STOP first (error 5)"
    assert client.connected


def test_requests_must_be_printable_ascii(port):
    client = connected(LineClient, port)
    for line in ("", "?ID\r\n?ID", "PRESET é"):
        with pytest.raises(ValueError, match="request must be printable ASCII"):
            client.request(line)
    assert port.written == ["?ID"]


def test_read_exact(port):
    client = connected(LineClient, port)
    port.buffer = b"abcdef"
    assert client.read_exact(4) == b"abcd"
    with pytest.raises(ProtocolError, match=r"short payload from .*: 2 of 5 bytes within 0.01 s"):
        client.read_exact(5, timeout=0.01)


def test_connect_to_nothing_is_a_link_error_naming_the_url():
    client = LineClient("socket://127.0.0.1:1", timeout=0.2)
    with pytest.raises(LinkError, match=r"^cannot connect to socket://127.0.0.1:1: "):
        client.connect()
    assert not client.connected


def test_close_closes_the_socket_even_when_pyserial_does_not(monkeypatch):
    """pyserial skips closing its socket when shutdown() fails on a reset peer."""
    left, right = socket.socketpair()

    class BrokenClose(FakePort):
        _socket = left

        def close(self) -> None:
            raise serial.SerialException("shutdown failed")

    fake = BrokenClose({"?ID": b"?ID TEST-1 1.0\r\n"})
    monkeypatch.setattr(line_client.serial, "serial_for_url", lambda *a, **k: fake)
    client = LineClient(URL)
    client.connect()
    client.close()
    assert left.fileno() == -1  # closed
    right.close()


# ------------------------------------------------------------------- PLC
def test_plc_calls_send_the_documented_requests(port):
    plc = connected(ShutterPlc, port)
    port.replies.update(
        {
            "fe:?STATE": b"fe:?STATE CLOSED 1\r\n",
            "fe:?ILK": b"fe:?ILK vacuum interlock: pressure above 1e-5 mbar\r\n",
            "fe:?FAULT": b"fe:?FAULT NONE\r\n",
            "fe:OPEN": b"fe:OPEN OK\r\n",
            "fe:CLOSE": b"fe:CLOSE OK\r\n",
            "fe:RESET": b"fe:RESET OK\r\n",
            "?SHUTTERS": b"?SHUTTERS fe bs\r\n",
        }
    )
    assert plc.read_status("fe") == ShutterStatus(
        "CLOSED", True, "vacuum interlock: pressure above 1e-5 mbar"
    )
    assert plc.read_fault("fe") is None
    plc.open("fe")
    plc.close_shutter("fe")
    plc.reset("fe")
    assert plc.shutters() == ["fe", "bs"]
    assert plc.read_interlock("fe") == "vacuum interlock: pressure above 1e-5 mbar"
    assert port.written[1:] == list(port.replies)[1:] + ["fe:?ILK"]


def test_plc_status_without_interlock_asks_once(port):
    plc = connected(ShutterPlc, port)
    port.replies["fe:?STATE"] = b"fe:?STATE MOVING 0\r\n"
    assert plc.read_status("fe") == ShutterStatus("MOVING", False, None)
    assert port.written == ["?ID", "fe:?STATE"]


def test_plc_refused_open_names_the_interlock(port):
    plc = connected(ShutterPlc, port)
    text = "interlock active: vacuum interlock: pressure above 1e-5 mbar at bl01/vac/gauge1"
    port.replies["fe:OPEN"] = f"fe:OPEN ERROR 8 {text}\r\n".encode()
    with pytest.raises(ControllerRejected) as err:
        plc.open("fe")
    assert (err.value.code, err.value.text) == (8, text)
    assert plc.connected


@pytest.mark.parametrize(
    "reply,message",
    [
        (b"fe:?STATE HALF 0\r\n", "unknown shutter state 'HALF'"),
        (b"fe:?STATE OPEN 2\r\n", "interlock flag must be 0 or 1, got '2'"),
        (b"fe:?STATE OPEN\r\n", "unexpected reply"),
    ],
)
def test_plc_bad_state_is_a_protocol_error(port, reply, message):
    plc = connected(ShutterPlc, port)
    port.replies["fe:?STATE"] = reply
    with pytest.raises(ProtocolError, match=message):
        plc.read_status("fe")
    assert not plc.connected


def test_plc_bad_shutter_name_is_refused_before_sending(port):
    plc = connected(ShutterPlc, port)
    for name in ("", "fe:OPEN", "1fe", "f e"):
        with pytest.raises(ValueError, match="shutter must be a name such as 'fe'"):
            plc.open(name)
    assert port.written == ["?ID"]


# ---------------------------------------------------------------- scaler
def test_scaler_calls_send_the_documented_requests(port):
    ct = connected(ScalerClient, port)
    port.replies.update(
        {
            "?CHANNELS": b"?CHANNELS 2\r\n",
            "PRESET 0.25": b"PRESET OK\r\n",
            "?PRESET": b"?PRESET 0.25\r\n",
            "START": b"START OK\r\n",
            "?STATUS": b"?STATUS COUNTING 0.120000\r\n",
            "?COUNTS": b"?COUNTS 240117 96022\r\n",
            "STOP": b"STOP OK\r\n",
            "CLEAR": b"CLEAR OK\r\n",
        }
    )
    assert ct.channels() == 2
    ct.set_preset(0.25)
    assert ct.preset() == 0.25
    ct.start()
    assert ct.status() == ScalerStatus(True, 0.12)
    assert ct.counts() == [240117, 96022]
    ct.stop()
    ct.clear()
    assert port.written[1:] == list(port.replies)[1:]


@pytest.mark.parametrize(
    "request_,reply,message",
    [
        ("?COUNTS", b"?COUNTS 12 x\r\n", "not an integer: 'x'"),
        ("?COUNTS", b"?COUNTS 12 -3\r\n", "counts must not be negative"),
        ("?STATUS", b"?STATUS BUSY 1.0\r\n", "unknown scaler state 'BUSY'"),
        ("?STATUS", b"?STATUS IDLE nan\r\n", "elapsed time must be a non-negative number"),
        ("?STATUS", b"?STATUS IDLE\r\n", "unexpected reply"),
    ],
)
def test_scaler_bad_values_are_protocol_errors(port, request_, reply, message):
    ct = connected(ScalerClient, port)
    port.replies[request_] = reply
    with pytest.raises(ProtocolError, match=message):
        ct.counts() if request_ == "?COUNTS" else ct.status()
    assert not ct.connected


def test_scaler_bad_preset_is_refused_before_sending(port):
    ct = connected(ScalerClient, port)
    for value in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="preset must be a positive number of seconds"):
            ct.set_preset(value)
    with pytest.raises(TypeError):
        ct.set_preset("1")
    assert port.written == ["?ID"]


# ---------------------------------------------------------------- camera
def frame_bytes(counter: int, width: int, height: int, image: np.ndarray | None = None) -> bytes:
    if image is None:
        image = np.arange(width * height, dtype=np.uint16).reshape(height, width)
    pixels = image.astype("<u2").tobytes()
    return f"FRAME? {counter} {width} {height} {len(pixels)}\r\n".encode() + pixels


def test_camera_calls_send_the_documented_requests(port):
    cam = connected(CameraClient, port)
    port.replies.update(
        {
            "?SIZE": b"?SIZE 512 256 16\r\n",
            "EXPOSURE 0.001": b"EXPOSURE OK\r\n",
            "?EXPOSURE": b"?EXPOSURE 0.001\r\n",
            "MODE MULTIPLE": b"MODE OK\r\n",
            "?MODE": b"?MODE MULTIPLE\r\n",
            "FRAMES 5": b"FRAMES OK\r\n",
            "?FRAMES": b"?FRAMES 5\r\n",
            "START": b"START OK\r\n",
            "?STATUS": b"?STATUS ACQUIRING 41\r\n",
            "STOP": b"STOP OK\r\n",
        }
    )
    assert cam.size() == (512, 256, 16)
    cam.set_exposure(0.001)
    assert cam.exposure() == 0.001
    cam.set_mode("multiple")
    assert cam.mode() == "MULTIPLE"
    cam.set_frames(5)
    assert cam.frames() == 5
    cam.start()
    assert cam.status() == CameraStatus(True, 41)
    cam.stop()
    assert port.written[1:] == list(port.replies)[1:]


def test_camera_read_frame_decodes_the_pixels(port):
    cam = connected(CameraClient, port)
    image = np.random.default_rng(0).integers(0, 65536, (3, 5), dtype=np.uint16)
    port.replies["FRAME?"] = frame_bytes(17, 5, 3, image)
    counter, pixels = cam.read_frame()
    assert counter == 17
    assert pixels.dtype == np.uint16 and pixels.shape == (3, 5)
    np.testing.assert_array_equal(pixels, image)
    pixels[0, 0] = 1  # a writable array of our own
    assert cam.connected


def test_camera_no_frame_yet_keeps_the_link(port):
    cam = connected(CameraClient, port)
    port.replies["FRAME?"] = b"FRAME? ERROR 6 no frame acquired yet\r\n"
    with pytest.raises(ControllerRejected) as err:
        cam.read_frame()
    assert (err.value.code, err.value.text) == (6, "no frame acquired yet")
    assert cam.connected


@pytest.mark.parametrize(
    "reply,error,message",
    [
        (frame_bytes(3, 4, 2)[:-5], ProtocolError, r"short payload from .*: 11 of 16 bytes"),
        (frame_bytes(3, 4, 2).split(b"\r\n")[0] + b"\r\n", ProtocolError, r"0 of 16 bytes"),
        (b"FRAME? 3 4 2 15\r\n" + b"\0" * 15, ProtocolError, r"15 bytes do not make 4x2 uint16"),
        (b"FRAME? 3 4 2\r\n", ProtocolError, r"a frame header has 4 fields"),
        (b"FRAME? 3 4 x 16\r\n", ProtocolError, r"not an integer: 'x'"),
        (b"FRAME? -3 4 2 16\r\n", ProtocolError, r"bad frame header"),
        (
            b"FRAME? 1 65536 65536 8589934592\r\n",
            ProtocolError,
            r"frame of 8589934592 bytes is larger than",
        ),
        (b"\xa7garbage\x03\r\n", ProtocolError, r"garbage reply from .* to 'FRAME\?'"),
        (b"?STATUS IDLE 3\r\n", ProtocolError, r"does not echo the request 'FRAME\?'"),
    ],
)
def test_camera_bad_frames_are_protocol_errors_and_close_the_link(port, reply, error, message):
    cam = connected(CameraClient, port, frame_timeout=0.02)
    port.replies["FRAME?"] = reply
    with pytest.raises(error, match=message):
        cam.read_frame()
    assert not cam.connected and not port.is_open


def test_camera_link_lost_mid_payload_is_a_link_error(port):
    cam = connected(CameraClient, port, frame_timeout=0.02)
    port.replies["FRAME?"] = frame_bytes(3, 4, 2)[:-5]
    port.read_error = serial.SerialException("socket disconnected")
    with pytest.raises(LinkError, match=r"connection closed by socket://.* after 11 of 16 payload"):
        cam.read_frame()
    assert not cam.connected


def test_camera_bad_arguments_are_refused_before_sending(port):
    cam = connected(CameraClient, port)
    with pytest.raises(ValueError, match="mode must be one of SINGLE, MULTIPLE, CONTINUOUS"):
        cam.set_mode("BURST")
    with pytest.raises(ValueError, match="frames must be an integer >= 1"):
        cam.set_frames(0)
    with pytest.raises(ValueError, match="exposure must be a positive number"):
        cam.set_exposure(0)
    assert port.written == ["?ID"]
