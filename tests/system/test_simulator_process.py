"""The virtual hardware as a real process, driven by the real driver over TCP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading

import pytest

from tango_devices.drivers.motion_ascii import (
    ControllerRejected,
    LinkError,
    MotionController,
    ProtocolError,
)
from tests.helpers import free_port, wait_until
from tests.system.sim_helpers import (
    default_config,
    poll_until_stopped,
    running_simulator,
    sim_command,
)

pytestmark = pytest.mark.system


@pytest.fixture
def sim(tmp_path):
    with running_simulator(tmp_path) as process:
        yield process


@pytest.fixture
def ctl(sim):
    controller = MotionController(sim.url())
    controller.connect()
    yield controller
    controller.close()


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


# ------------------------------------------------------------------ basics
def test_state_file_and_identify(sim):
    state = json.loads(sim.state_file.read_text())
    assert state["pid"] == sim.proc.pid
    assert state["listen"] == "127.0.0.1"
    assert state["controllers"]["mc1"]["kind"] == "smc"
    assert state["controllers"]["mc1"]["port"] > 0
    assert state["control_port"] > 0
    controller = MotionController(sim.url(), timeout=1.0)
    try:
        assert controller.connect() == "SMC-2 1.0"
        assert controller.identify() == "SMC-2 1.0"
        assert controller.request("?AXES") == "2"
    finally:
        controller.close()


def test_move_and_poll_until_done(ctl):
    assert ctl.read_position(1) == 2000
    ctl.move(1, 3000)
    position, status = ctl.read_position_status(1)
    assert status.moving and 2000 <= position < 3000
    position, status = poll_until_stopped(ctl, 1)
    assert position == 3000
    assert status.powered and not status.moving and not status.fault


def test_two_clients_at_once(sim, ctl):
    other = MotionController(sim.url())
    assert other.connect() == "SMC-2 1.0"
    try:
        other.move(2, 12000)
        errors: list[BaseException] = []

        def poll(controller: MotionController, axis: int) -> None:
            try:
                for _ in range(50):
                    controller.read_position_status(axis)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=poll, args=(c, a)) for c, a in ((ctl, 1), (other, 2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert errors == []
        assert poll_until_stopped(ctl, 2)[0] == 12000
        assert other.read_position(2) == 12000
        assert other.read_position(1) == ctl.read_position(1) == 2000
    finally:
        other.close()


def test_each_line_terminator_gets_exactly_one_reply(sim):
    with socket.create_connection(("127.0.0.1", sim.state["controllers"]["mc1"]["port"])) as s:
        s.settimeout(5)
        s.sendall(b"?ID\r\n1:?POS\r2:?vel\n\r\n\r\n1:?ACCT\r\n")
        assert [read_line(s) for _ in range(4)] == [
            b"?ID SMC-2 1.0\r\n",
            b"1:?POS 2000\r\n",
            b"2:?VEL 10000\r\n",
            b"1:?ACCT 0.1\r\n",
        ]
        s.sendall(b"?AXES\r\n")  # the next reply is this one: nothing extra was sent
        assert read_line(s) == b"?AXES 2\r\n"


# ------------------------------------------------------------------ faults
def test_drop_disconnects_and_refuses_until_clear(sim, ctl):
    reply = sim.fault("drop")
    assert reply["faults"] == ["drop"]
    with pytest.raises(LinkError, match="connection closed by socket://127.0.0.1"):
        ctl.read_position_status(1)
    assert not ctl.connected
    with pytest.raises(LinkError, match=f"cannot connect to {sim.url()}: Connection refused"):
        ctl.connect()
    status = sim.control({"op": "status"})
    assert status["controllers"]["mc1"]["listening"] is False
    sim.clear()
    assert ctl.connect() == "SMC-2 1.0"
    assert ctl.read_position(1) == 2000
    assert sim.control({"op": "status"})["controllers"]["mc1"]["faults"] == []


def test_stall_times_out_then_recovers_after_clear(sim, ctl):
    sim.fault("stall")
    with pytest.raises(LinkError, match=r"no reply from socket://.* within 0.5 s to '1:\?PS'"):
        ctl.read_position_status(1)
    assert not ctl.connected
    sim.clear()
    assert ctl.connect() == "SMC-2 1.0"
    assert ctl.read_position(1) == 2000


def test_garbage_is_a_protocol_error(sim, ctl):
    sim.fault("garbage")
    with pytest.raises(
        ProtocolError, match=r"garbage reply from socket://.* to '1:\?POS': b['\"]\\x"
    ):
        ctl.read_position(1)
    assert not ctl.connected
    sim.clear()
    assert ctl.connect() == "SMC-2 1.0"


def test_axis_fault_is_latched_until_reset(sim, ctl):
    sim.fault("axis_fault", axis=1, text="amplifier overtemperature")
    position, status = ctl.read_position_status(1)
    assert status.fault and status.powered
    assert ctl.read_fault(1) == "amplifier overtemperature"
    with pytest.raises(ControllerRejected) as err:
        ctl.move(1, 3000)
    assert err.value.code == 7
    assert ctl.connected
    sim.clear()  # does not clear a latched fault
    assert ctl.read_status(1).fault
    ctl.reset(1)
    assert ctl.read_fault(1) is None
    ctl.move(1, 2500)
    assert poll_until_stopped(ctl, 1)[0] == 2500


def test_interlock_blocks_motion_until_clear(sim, ctl):
    ctl.move(1, 15000)
    sim.fault("interlock", axis=1)
    position, status = ctl.read_position_status(1)
    assert status.interlock and not status.moving
    for command in (lambda: ctl.move(1, 3000), lambda: ctl.home(1, -1)):
        with pytest.raises(ControllerRejected) as err:
            command()
        assert err.value.code == 8
    ctl.stop(1)  # always accepted
    assert sim.control({"op": "status"})["controllers"]["mc1"]["faults"] == ["interlock on axis 1"]
    sim.clear()
    ctl.move(1, 3000)
    assert poll_until_stopped(ctl, 1)[0] == 3000


def test_status_reports_every_controller_and_axis(sim, ctl):
    ctl.power(2, False)
    status = sim.control({"op": "status"})
    assert status["ok"] is True
    mc1 = status["controllers"]["mc1"]
    assert mc1["port"] == sim.state["controllers"]["mc1"]["port"]
    assert mc1["kind"] == "smc" and mc1["faults"] == [] and mc1["clients"] == 1
    assert mc1["axes"]["1"]["position"] == 2000 and mc1["axes"]["1"]["status"] == "0x0002"
    assert mc1["axes"]["2"]["status"] == "0x0000"


@pytest.mark.parametrize(
    "request_,error",
    [
        (
            {"op": "fault", "controller": "mc9", "kind": "drop"},
            "unknown controller 'mc9': valid controllers are mc1",
        ),
        ({"op": "explode"}, "unknown op 'explode': valid ops are status, fault, clear, shutdown"),
        (
            {"op": "fault", "controller": "mc1", "kind": "fire"},
            "unknown fault kind 'fire' for controller mc1 (smc): valid kinds are "
            "drop, stall, garbage, axis_fault, interlock",
        ),
        (
            {"op": "fault", "controller": "mc1", "kind": "interlock", "axis": 5},
            "controller mc1 has no axis 5: valid axes are 1..2",
        ),
        (
            {"op": "clear", "controller": "nope"},
            "unknown controller 'nope': valid controllers are mc1",
        ),
    ],
)
def test_control_errors_name_the_valid_choices(sim, request_, error):
    assert sim.control(request_) == {"ok": False, "error": error}


def test_control_port_rejects_bad_json(sim):
    reply = sim.control("not json")  # type: ignore[arg-type]  # sent as a JSON string
    assert reply["ok"] is False and "JSON object" in reply["error"]


# ------------------------------------------------------------ process life
def test_shutdown_removes_the_state_file_and_exits_0(sim):
    assert sim.control({"op": "shutdown"}) == {"ok": True}
    assert sim.wait_exit() == 0
    assert not sim.state_file.exists()
    assert "stopped" in sim.log()


def test_sigterm_is_a_clean_exit(sim):
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.wait_exit() == 0
    assert not sim.state_file.exists()


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = default_config()
    config["controllers"]["mc1"]["axes"]["2"]["velocity"] = -3
    config_file = tmp_path / "simulation.json"
    config_file.write_text(json.dumps(config))
    proc = subprocess.run(
        sim_command(config_file, tmp_path / "state.json"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "controllers.mc1.axes.2.velocity: must be a positive integer" in proc.stderr
    assert not (tmp_path / "state.json").exists()


def test_port_in_use_exits_1_naming_the_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = default_config()
        config["controllers"]["mc1"]["port"] = port
        config["control"]["port"] = free_port()
        config_file = tmp_path / "simulation.json"
        config_file.write_text(json.dumps(config))
        proc = subprocess.run(
            sim_command(config_file, tmp_path / "state.json"),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for controller mc1" in proc.stderr
    assert not (tmp_path / "state.json").exists()


def test_clients_see_motion_progress_over_time(ctl):
    ctl.write_velocity(1, 10000)
    ctl.move(1, 15000)
    positions = []

    def advanced() -> bool:
        positions.append(ctl.read_position(1))
        return positions[-1] == 15000

    wait_until(advanced, 10, "axis 1 to reach 15000")
    assert positions == sorted(positions)  # monotonic
    assert len(set(positions)) > 2  # seen in between, not just start and end
