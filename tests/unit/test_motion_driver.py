"""The motion driver without a network: ``parse_reply``, ``AxisStatus`` and the
``MotionController`` over an in-memory port (the real link is exercised in
tests/system/test_simulator_process.py)."""

from __future__ import annotations

import errno

import pytest
import serial

from tango_devices.drivers.line_client import LineClient
from tango_devices.drivers.motion_ascii import (
    AxisStatus,
    ControllerRejected,
    LinkError,
    MotionController,
    MotionControllerError,
    ProtocolError,
    expected_echo,
    parse_reply,
)
from tests.unit.fake_serial import FakePort, install

URL = "socket://smc.example:9101"


# -------------------------------------------------------------- parse_reply
@pytest.mark.parametrize(
    "request_line,reply,result",
    [
        ("?ID", "?ID SMC-8 1.0", "SMC-8 1.0"),
        ("2:?PS", "2:?PS 15000 0x0003", "15000 0x0003"),
        ("2:MOVE 40000", "2:MOVE OK", "OK"),
        ("2:?ps", "2:?PS -5 0x0002", "-5 0x0002"),
        ("02:?POS", "2:?POS 7", "7"),
        ("1:?FAULT", "1:?FAULT amplifier overtemperature", "amplifier overtemperature"),
    ],
)
def test_parse_reply_returns_the_result(request_line, reply, result):
    assert parse_reply(request_line, reply) == result


@pytest.mark.parametrize(
    "request_line,reply,code,text",
    [
        ("2:MOVE 40000", "2:MOVE ERROR 5 axis busy", 5, "axis busy"),
        ("9:?POS", "9:?POS ERROR 3 no such axis", 3, "no such axis"),
        ("2:FLY", "2:FLY ERROR 1 unknown command", 1, "unknown command"),
        ("1:MOVE 5", "1:MOVE ERROR 7 axis fault: amplifier hot", 7, "axis fault: amplifier hot"),
        ("1:MOVE 5", "1:MOVE ERROR 8", 8, "no message"),
    ],
)
def test_parse_reply_raises_controller_rejected(request_line, reply, code, text):
    with pytest.raises(ControllerRejected) as err:
        parse_reply(request_line, reply)
    assert (err.value.code, err.value.text, err.value.request) == (code, text, request_line)


def test_controller_rejected_reads_well():
    with pytest.raises(ControllerRejected) as err:
        parse_reply("2:MOVE 40000", "2:MOVE ERROR 5 axis busy")
    assert str(err.value) == "controller refused 2:MOVE 40000: axis busy (error 5)"
    assert (
        str(ControllerRejected(4, "axis not powered"))
        == "controller refused: axis not powered (error 4)"
    )
    assert isinstance(err.value, MotionControllerError)


@pytest.mark.parametrize(
    "request_line,reply,message",
    [
        ("2:?PS", "1:?PS 15000 0x0003", "does not echo the request '2:?PS'"),
        ("2:?PS", "2:?POS 15000", "does not echo the request"),
        ("2:?PS", "?PS 15000 0x0003", "does not echo the request"),
        ("2:?PS", "", "empty reply to '2:?PS'"),
        ("2:?PS", "2:?PS", "short reply to '2:?PS'"),
        ("2:?PS", "2:?PS ", "short reply"),
        ("2:?PS", "2:", "does not echo"),
        ("2:?PS", "\x8f#\x01", "garbage reply to '2:?PS'"),
        ("2:?PS", "2:?PS 15000\x00", "garbage reply"),
        ("2:?PS", "2:?PS 15é00", "garbage reply"),
        ("2:MOVE 5", "2:MOVE ERROR x broken", "unparsable error reply"),
        ("2:MOVE 5", "2:MOVE ERROR", "unparsable error reply"),
    ],
)
def test_parse_reply_raises_protocol_error(request_line, reply, message):
    with pytest.raises(ProtocolError, match=message.replace("?", r"\?")):
        parse_reply(request_line, reply)


def test_expected_echo():
    assert expected_echo("?id") == "?ID"
    assert expected_echo(" 02:move 5 ") == "2:MOVE"
    assert expected_echo("x:?pos") == "x:?POS"


# --------------------------------------------------------------- AxisStatus
BITS = {
    "moving": 0x001,
    "powered": 0x002,
    "low_limit": 0x004,
    "high_limit": 0x008,
    "home_switch": 0x010,
    "fault": 0x020,
    "homed": 0x040,
    "interlock": 0x080,
    "homing": 0x100,
}


@pytest.mark.parametrize("name,mask", BITS.items())
def test_axis_status_decodes_each_bit(name, mask):
    status = AxisStatus.from_word(mask)
    assert getattr(status, name) is True
    assert [other for other in BITS if getattr(status, other)] == [name]
    assert status.raw == mask


def test_axis_status_all_and_none():
    assert AxisStatus.from_word(0x1FF) == AxisStatus(*([True] * 9), raw=0x1FF)
    assert AxisStatus.from_word(0) == AxisStatus(*([False] * 9), raw=0)


# ------------------------------------------------- MotionController, no network
@pytest.fixture
def port(monkeypatch):
    return install(monkeypatch, FakePort({"?ID": b"?ID SMC-8 1.0\r\n"}), URL, expect_timeout=0.5)


@pytest.fixture
def ctl(port) -> MotionController:
    controller = MotionController(URL)
    assert controller.connect() == "SMC-8 1.0"
    return controller


def test_connect_identifies_and_close_closes(ctl, port):
    assert ctl.connected and port.is_open
    assert port.written == ["?ID"]
    ctl.close()
    assert not ctl.connected and not port.is_open
    ctl.close()  # idempotent


def test_every_axis_call_sends_the_documented_request(ctl, port):
    port.replies.update(
        {
            "2:?PS": b"2:?PS 15000 0x0003\r\n",
            "2:?POS": b"2:?POS -12\r\n",
            "2:?STATUS": b"2:?STATUS 0x0042\r\n",
            "2:?VEL": b"2:?VEL 5000\r\n",
            "2:VEL 4000": b"2:VEL OK\r\n",
            "2:?ACCT": b"2:?ACCT 0.25\r\n",
            "2:ACCT 0.1": b"2:ACCT OK\r\n",
            "2:MOVE 40000": b"2:MOVE OK\r\n",
            "2:STOP": b"2:STOP OK\r\n",
            "2:HOME -1": b"2:HOME OK\r\n",
            "2:HOME +1": b"2:HOME OK\r\n",
            "2:POS 0": b"2:POS OK\r\n",
            "2:POWER OFF": b"2:POWER OK\r\n",
            "2:?POWER": b"2:?POWER OFF\r\n",
            "2:?FAULT": b"2:?FAULT NONE\r\n",
            "2:RESET": b"2:RESET OK\r\n",
        }
    )
    assert ctl.read_position_status(2) == (15000, AxisStatus.from_word(3))
    assert ctl.read_position(2) == -12
    assert ctl.read_status(2).homed
    assert ctl.read_velocity(2) == 5000
    assert ctl.write_velocity(2, 4000) is None
    assert ctl.read_acceleration_time(2) == 0.25
    ctl.write_acceleration_time(2, 0.1)
    ctl.move(2, 40000)
    ctl.stop(2)
    ctl.home(2, -1)
    ctl.home(2)
    ctl.set_position(2, 0)
    ctl.power(2, False)
    assert ctl.read_power(2) is False
    assert ctl.read_fault(2) is None
    ctl.reset(2)
    assert port.written[1:] == list(port.replies)[1:]
    assert port.resets >= len(port.written)  # stale input dropped before each request


def test_read_fault_returns_the_text(ctl, port):
    port.replies["1:?FAULT"] = b"1:?FAULT amplifier overtemperature\r\n"
    assert ctl.read_fault(1) == "amplifier overtemperature"


def test_stale_input_is_not_taken_for_the_reply(ctl, port):
    port.buffer = b"1:?POS 999\r\n"  # a late reply to an earlier, timed-out request
    port.replies["1:?POS"] = b"1:?POS 5\r\n"
    assert ctl.read_position(1) == 5


def test_rejection_keeps_the_link_open(ctl, port):
    port.replies["2:MOVE 40000"] = b"2:MOVE ERROR 5 axis busy\r\n"
    with pytest.raises(ControllerRejected) as err:
        ctl.move(2, 40000)
    assert err.value.code == 5
    assert str(err.value) == "controller refused 2:MOVE 40000: axis busy (error 5)"
    assert ctl.connected


@pytest.mark.parametrize(
    "reply,error,message",
    [
        (
            b"\x8f#\x01\xff\r\n",
            ProtocolError,
            r"garbage reply from socket://smc.example:9101 to '1:\?PS': b'\\x8f#",
        ),
        (
            b"1:?PS 15",
            ProtocolError,
            r"incomplete reply from .* to '1:\?PS' within 0.5 s: b'1:\?PS 15'",
        ),
        (b"1:?PS 15 3\r\n", ProtocolError, r"unexpected reply .*not a 0x status word"),
        (b"1:?PS abc 0x3\r\n", ProtocolError, r"unexpected reply .*not an integer"),
        (b"1:?PS 15\r\n", ProtocolError, r"unexpected reply"),
        (b"2:?PS 15 0x3\r\n", ProtocolError, r"does not echo the request"),
        (
            serial.SerialException("socket disconnected"),
            LinkError,
            r"^connection closed by socket://smc",
        ),
        (
            serial.SerialException("write failed: [Errno 32] Broken pipe"),
            LinkError,
            r"^connection to socket://smc.example:9101 lost",
        ),
        (
            OSError(errno.ECONNRESET, "Connection reset by peer"),
            LinkError,
            r"^connection closed by",
        ),
    ],
)
def test_bad_replies_and_link_errors_close_the_port(ctl, port, reply, error, message):
    port.replies["1:?PS"] = reply
    with pytest.raises(error, match=message):
        ctl.read_position_status(1)
    assert not ctl.connected
    with pytest.raises(LinkError, match="not connected to socket://smc.example:9101"):
        ctl.read_position(1)


def test_action_with_a_value_instead_of_ok_is_a_protocol_error(ctl, port):
    port.replies["1:STOP"] = b"1:STOP 12\r\n"
    with pytest.raises(ProtocolError, match="expected OK, got '12'"):
        ctl.stop(1)


def test_request_returns_the_result_part(ctl, port):
    port.replies["3:?vel"] = b"3:?VEL 1234\r\n"
    assert ctl.request("3:?vel") == "1234"


def test_the_link_is_the_shared_line_client(ctl, port):
    """Framing, checks and reconnects are LineClient's, as for the other drivers."""
    assert isinstance(ctl, LineClient)
    with pytest.raises(ValueError, match="request must be printable ASCII"):
        ctl.request("")  # refused before sending: a blank line gets no reply
    assert ctl.connected and port.written == ["?ID"]
    port.replies["1:?POS"] = b"1:?POS " + b"9" * 5000  # no line end: garbage, not a slow reply
    with pytest.raises(ProtocolError, match="no line end in 4096 bytes"):
        ctl.read_position(1)
    assert not ctl.connected
    assert ctl.connect() == "SMC-8 1.0"


def test_bad_arguments_are_refused_before_sending(ctl, port):
    with pytest.raises(TypeError):
        ctl.move(1, 1.5)
    with pytest.raises(ValueError):
        ctl.home(1, 0)
    with pytest.raises(ValueError):
        ctl.read_position(0)
    assert port.written == ["?ID"]


def test_connect_to_nothing_is_a_link_error_naming_the_url():
    ctl = MotionController("socket://127.0.0.1:1", timeout=0.2)
    with pytest.raises(
        LinkError, match=r"^cannot connect to socket://127.0.0.1:1: Connection refused"
    ):
        ctl.connect()
    assert not ctl.connected


def test_connect_with_an_unknown_url_scheme_is_a_link_error():
    ctl = MotionController("bogus://x")
    with pytest.raises(LinkError, match="cannot connect to bogus://x"):
        ctl.connect()


def test_loopback_port_echoes_the_request_which_is_a_short_reply():
    ctl = MotionController("loop://", timeout=0.05)
    with pytest.raises(ProtocolError, match=r"short reply to '\?ID'"):
        ctl.connect()
    assert not ctl.connected
