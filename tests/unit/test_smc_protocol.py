"""Every command and error code of the SMC protocol through ``handle_line``,
plus the simulator's configuration checks and line framing."""

from __future__ import annotations

import random

import pytest

from tango_devices.simulators.server import (
    CONTROLLER_KINDS,
    ConfigError,
    LineSplitter,
    garbage_reply,
    parse_config,
)
from tango_devices.simulators.smc import SmcController


def axis_cfg(**overrides) -> dict:
    cfg = dict(
        label="slit_h",
        position=2000,
        low_switch=-500,
        high_switch=20000,
        home_switch=0,
        home_position=0,
        velocity=2000,
        max_velocity=10000,
        acceleration_time=0.1,
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture
def smc(clock) -> SmcController:
    axes = {"1": axis_cfg(), "2": axis_cfg(label="slit_v", position=15000, high_switch=50000)}
    return SmcController("mc1", {"kind": "smc", "port": 0, "axes": axes}, clock=clock)


def ask(smc: SmcController, *lines: str) -> list[str]:
    return [smc.handle_line(line) for line in lines]


# ------------------------------------------------------------ the doc examples
def test_examples_of_the_protocol_document(smc):
    assert smc.handle_line("?ID") == "?ID SMC-2 1.0"
    assert smc.handle_line("2:MOVE 40000") == "2:MOVE OK"
    assert smc.handle_line("2:?PS") == "2:?PS 15000 0x0003"
    assert smc.handle_line("2:MOVE 40000") == "2:MOVE ERROR 5 axis busy"
    assert smc.handle_line("9:?POS") == "9:?POS ERROR 3 no such axis"
    assert smc.handle_line("2:FLY") == "2:FLY ERROR 1 unknown command"


# ------------------------------------------------------------- every command
def test_controller_queries(smc):
    assert ask(smc, "?ID", "?AXES", "?axes") == ["?ID SMC-2 1.0", "?AXES 2", "?AXES 2"]


def test_position_and_status_queries(smc):
    assert ask(smc, "1:?POS", "1:?STATUS", "1:?PS") == [
        "1:?POS 2000",
        "1:?STATUS 0x0002",
        "1:?PS 2000 0x0002",
    ]


def test_commands_are_case_insensitive_and_echoed_in_upper_case(smc):
    assert ask(smc, "1:?pos", "1:Move 2500", "1:power off", "01:?Power") == [
        "1:?POS 2000",
        "1:MOVE OK",
        "1:POWER OK",
        "1:?POWER OFF",
    ]


def test_surrounding_whitespace_is_ignored_and_blank_lines_get_no_reply(smc):
    assert smc.handle_line("  1:?POS  ") == "1:?POS 2000"
    assert smc.handle_line("") == ""
    assert smc.handle_line("   ") == ""


def test_velocity(smc):
    assert ask(smc, "1:?VEL", "1:VEL 5000", "1:?VEL") == ["1:?VEL 2000", "1:VEL OK", "1:?VEL 5000"]
    assert ask(smc, "1:VEL 0", "1:VEL 10001", "1:VEL fast", "1:VEL") == [
        "1:VEL ERROR 2 bad argument: velocity must be 1..10000 steps/s, got 0",
        "1:VEL ERROR 2 bad argument: velocity must be 1..10000 steps/s, got 10001",
        "1:VEL ERROR 2 bad argument: not an integer: fast",
        "1:VEL ERROR 2 bad argument: expected an integer number of steps, got nothing",
    ]
    assert smc.handle_line("1:?VEL") == "1:?VEL 5000"


def test_acceleration_time(smc):
    assert ask(smc, "1:?ACCT", "1:ACCT 0.25", "1:?ACCT") == [
        "1:?ACCT 0.1",
        "1:ACCT OK",
        "1:?ACCT 0.25",
    ]
    assert ask(smc, "1:ACCT 0.0005", "1:ACCT 10.5", "1:ACCT 1e-2", "1:ACCT nan") == [
        "1:ACCT ERROR 2 bad argument: acceleration time must be 0.001..10 s, got 0.0005",
        "1:ACCT ERROR 2 bad argument: acceleration time must be 0.001..10 s, got 10.5",
        "1:ACCT ERROR 2 bad argument: not a decimal number: 1e-2",
        "1:ACCT ERROR 2 bad argument: not a decimal number: nan",
    ]
    assert ask(smc, "1:ACCT 10", "1:ACCT .001") == ["1:ACCT OK", "1:ACCT OK"]


def test_move_and_its_argument_checks(smc, clock):
    assert ask(smc, "1:MOVE 1.5", "1:MOVE", "1:MOVE 1 2", "1:MOVE 3000000000") == [
        "1:MOVE ERROR 2 bad argument: not an integer: 1.5",
        "1:MOVE ERROR 2 bad argument: expected an integer number of steps, got nothing",
        "1:MOVE ERROR 2 bad argument: expected an integer number of steps, got 1 2",
        "1:MOVE ERROR 2 bad argument: out of range (+-2000000000): 3000000000",
    ]
    assert smc.handle_line("1:MOVE +3000") == "1:MOVE OK"
    assert smc.handle_line("1:?STATUS") == "1:?STATUS 0x0003"
    clock.t += 0.6
    assert smc.handle_line("1:?PS") == "1:?PS 3000 0x0002"


def test_stop_is_accepted_in_any_state(smc, clock):
    smc.set_interlock(1, True)
    smc.inject_axis_fault(2, "encoder error")
    assert ask(smc, "1:STOP", "2:STOP", "1:POWER OFF", "1:STOP") == [
        "1:STOP OK",
        "2:STOP OK",
        "1:POWER OK",
        "1:STOP OK",
    ]
    assert smc.handle_line("1:MOVE 3000") == "1:MOVE ERROR 8 interlock active"
    assert smc.handle_line("1:STOP 5") == "1:STOP ERROR 2 bad argument: takes no argument, got 5"


def test_stop_decelerates(smc, clock):
    smc.handle_line("1:MOVE 10000")
    clock.t += 0.3
    assert smc.handle_line("1:STOP") == "1:STOP OK"
    assert smc.handle_line("1:?PS") == "1:?PS 2500 0x0003"
    clock.t += 0.1
    assert smc.handle_line("1:?PS") == "1:?PS 2600 0x0002"


def test_home(smc, clock):
    assert (
        smc.handle_line("1:HOME 2")
        == "1:HOME ERROR 2 bad argument: direction must be +1 or -1, got 2"
    )
    assert (
        smc.handle_line("1:HOME")
        == "1:HOME ERROR 2 bad argument: expected a direction, +1 or -1, got nothing"
    )
    assert smc.handle_line("1:HOME -1") == "1:HOME OK"
    assert smc.handle_line("1:?STATUS") == "1:?STATUS 0x0103"
    clock.t += 2.0
    assert smc.handle_line("1:?PS") == "1:?PS 0 0x0052"  # POWER | HOME_SW | HOMED
    assert ask(smc, "2:HOME +1", "2:HOME 1") == ["2:HOME OK", "2:HOME ERROR 5 axis busy"]


def test_pos_sets_the_register(smc, clock):
    assert ask(smc, "1:POS -250", "1:?POS", "1:POS x") == [
        "1:POS OK",
        "1:?POS -250",
        "1:POS ERROR 2 bad argument: not an integer: x",
    ]
    smc.handle_line("1:MOVE 0")
    assert smc.handle_line("1:POS 7") == "1:POS ERROR 5 axis busy"


def test_power(smc):
    assert ask(
        smc, "1:?POWER", "1:POWER OFF", "1:?POWER", "1:?STATUS", "1:POWER ON", "1:?POWER"
    ) == [
        "1:?POWER ON",
        "1:POWER OK",
        "1:?POWER OFF",
        "1:?STATUS 0x0000",
        "1:POWER OK",
        "1:?POWER ON",
    ]
    assert ask(smc, "1:POWER MAYBE", "1:POWER") == [
        "1:POWER ERROR 2 bad argument: expected ON or OFF, got MAYBE",
        "1:POWER ERROR 2 bad argument: expected ON or OFF, got nothing",
    ]


def test_fault_and_reset(smc):
    assert smc.handle_line("1:?FAULT") == "1:?FAULT NONE"
    smc.inject_axis_fault(1, "amplifier overtemperature")
    assert ask(smc, "1:?FAULT", "1:?STATUS", "1:MOVE 3000", "1:HOME 1") == [
        "1:?FAULT amplifier overtemperature",
        "1:?STATUS 0x0022",
        "1:MOVE ERROR 7 axis fault: amplifier overtemperature",
        "1:HOME ERROR 7 axis fault: amplifier overtemperature",
    ]
    assert ask(smc, "1:RESET", "1:?FAULT", "1:MOVE 3000") == [
        "1:RESET OK",
        "1:?FAULT NONE",
        "1:MOVE OK",
    ]


def test_injected_fault_text_is_kept_on_one_printable_line(smc):
    smc.inject_axis_fault(1, "bad\r\nthing\x00é")
    assert smc.handle_line("1:?FAULT") == "1:?FAULT bad??thing??"


# ------------------------------------------------------------ error codes
@pytest.mark.parametrize(
    "request_line,reply",
    [
        ("FLY", "FLY ERROR 1 unknown command"),
        ("1:", "1: ERROR 1 unknown command"),
        ("1:?pos?", "1:?POS? ERROR 1 unknown command"),
        ("3:?POS", "3:?POS ERROR 3 no such axis"),
        ("0:?POS", "0:?POS ERROR 3 no such axis"),
        ("x:?POS", "x:?POS ERROR 3 no such axis"),
        ("?POS", "?POS ERROR 3 no such axis: axis number required (n:command)"),
        ("1:?ID", "1:?ID ERROR 3 no such axis: ?ID is a controller command"),
        ("?ID 5", "?ID ERROR 2 bad argument: takes no argument, got 5"),
        ("1:?POS 5", "1:?POS ERROR 2 bad argument: takes no argument, got 5"),
    ],
)
def test_request_errors(smc, request_line, reply):
    assert smc.handle_line(request_line) == reply


def test_line_longer_than_128_characters_is_error_2(smc):
    longest = "1:MOVE " + "0" * 117 + "3000"
    assert len(longest) == 128
    assert smc.handle_line(longest) == "1:MOVE OK"
    too_long = "1:MOVE " + "0" * 118 + "3000"
    assert (
        smc.handle_line(too_long) == "1:MOVE ERROR 2 bad argument: line longer than 128 characters"
    )
    assert smc.handle_line("1:STOP" + " " * 130 + "x") == (
        "1:STOP ERROR 2 bad argument: line longer than 128 characters"
    )


def test_error_4_not_powered(smc):
    smc.handle_line("1:POWER OFF")
    assert ask(smc, "1:MOVE 3000", "1:HOME 1") == [
        "1:MOVE ERROR 4 axis not powered",
        "1:HOME ERROR 4 axis not powered",
    ]


def test_error_6_limit_switch(smc, clock):
    smc.handle_line("1:MOVE 30000")
    clock.t += 20
    assert smc.handle_line("1:?PS") == "1:?PS 20000 0x000A"
    assert ask(smc, "1:MOVE 20001", "1:HOME +1", "1:MOVE 19000") == [
        "1:MOVE ERROR 6 high limit switch active",
        "1:HOME ERROR 6 high limit switch active",
        "1:MOVE OK",
    ]


def test_error_8_interlock_and_its_release(smc):
    smc.set_interlock(2, True)
    assert ask(smc, "2:?STATUS", "2:MOVE 0", "2:HOME -1") == [
        "2:?STATUS 0x0082",
        "2:MOVE ERROR 8 interlock active",
        "2:HOME ERROR 8 interlock active",
    ]
    assert smc.active_faults() == ["interlock on axis 2"]
    smc.clear_faults()
    assert smc.handle_line("2:MOVE 0") == "2:MOVE OK"


def test_replies_never_carry_a_terminator(smc):
    for line in ("?ID", "1:?PS", "1:FLY", "9:?POS", "1:MOVE 3000"):
        reply = smc.handle_line(line)
        assert "\r" not in reply and "\n" not in reply


# -------------------------------------------------------- fault injection API
def test_inject_fault_validates_kind_and_axis(smc):
    with pytest.raises(ValueError, match="valid kinds are axis_fault, interlock"):
        smc.inject_fault("meltdown", {"axis": 1})
    with pytest.raises(ValueError, match="no axis 7: valid axes are 1..2"):
        smc.inject_fault("interlock", {"axis": 7})
    with pytest.raises(ValueError, match="needs an 'axis'"):
        smc.inject_fault("axis_fault", {})
    assert smc.inject_fault("axis_fault", {"axis": 2, "text": "encoder"}) == (
        "axis 2 fault latched: encoder"
    )
    assert smc.status()["axes"]["2"]["fault"] == "encoder"
    assert smc.status()["axes"]["2"]["status"] == "0x0022"


def test_clear_keeps_latched_axis_faults(smc):
    smc.inject_axis_fault(1, "amplifier")
    smc.set_interlock(1, True)
    smc.clear_faults()
    assert smc.active_faults() == ["fault on axis 1: amplifier"]
    assert smc.handle_line("1:?STATUS") == "1:?STATUS 0x0022"


# -------------------------------------------------------------- configuration
def sim_config(**axis_overrides) -> dict:
    return {
        "control": {"port": 9100},
        "controllers": {
            "mc1": {"kind": "smc", "port": 9101, "axes": {"1": axis_cfg(**axis_overrides)}}
        },
        "overrides": {"bl01/mot/slit_h": {"Port": "socket://{listen}:{mc1.port}"}},
    }


def test_valid_config_builds_the_controllers():
    config = parse_config(sim_config())
    assert config.control_port == 9100
    assert list(config.controllers) == ["mc1"]
    spec = config.controllers["mc1"]
    assert (spec.kind, spec.port) == ("smc", 9101)
    assert spec.controller.handle_line("1:?POS") == "1:?POS 2000"
    assert {"smc", "plc", "scaler", "camera", "epics_ioc"} <= set(CONTROLLER_KINDS)


def test_auto_ports_zeroes_every_port():
    config = parse_config(sim_config(), auto_ports=True)
    assert config.control_port == 0
    assert config.controllers["mc1"].port == 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"velocity": 0}, "controllers.mc1.axes.1.velocity: must be a positive integer"),
        ({"velocity": 2.5}, "controllers.mc1.axes.1.velocity: must be a positive integer"),
        (
            {"velocity": 20000},
            "controllers.mc1.axes.1.velocity: must not exceed max_velocity (10000)",
        ),
        ({"position": True}, "controllers.mc1.axes.1.position: must be an integer"),
        (
            {"acceleration_time": 0},
            "controllers.mc1.axes.1.acceleration_time: must be a number of seconds",
        ),
        ({"home_switch": 30000}, "controllers.mc1.axes.1.home_switch: must lie between"),
        ({"low_switch": 30000}, "controllers.mc1.axes.1.low_switch: must be below high_switch"),
        ({"position": 30000}, "controllers.mc1.axes.1.position: must lie between"),
        ({"powered": "yes"}, "controllers.mc1.axes.1.powered: must be true or false"),
        ({"velocty": 5}, "controllers.mc1.axes.1.velocty: unknown key; valid keys are label"),
    ],
)
def test_bad_axis_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        parse_config(sim_config(**overrides))
    assert str(err.value).startswith(message)


def test_missing_axis_key_is_named():
    config = sim_config()
    del config["controllers"]["mc1"]["axes"]["1"]["high_switch"]
    with pytest.raises(ConfigError, match=r"^controllers\.mc1\.axes\.1\.high_switch: missing"):
        parse_config(config)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda c: c["controllers"]["mc1"].update(kind="plc9000"),
            "controllers.mc1.kind: must be one of camera, epics_ioc, plc, scaler, smc",
        ),
        (
            lambda c: c["controllers"]["mc1"].update(port=70000),
            "controllers.mc1.port: must be a TCP port",
        ),
        (
            lambda c: c["controllers"]["mc1"].update(port=9100),
            "controllers.mc1.port: 9100 is already used",
        ),
        (lambda c: c["controllers"]["mc1"].pop("port"), "controllers.mc1.port: missing"),
        (
            lambda c: c["controllers"]["mc1"]["axes"].update({"3": axis_cfg()}),
            "controllers.mc1.axes: axes must be numbered 1..N",
        ),
        (
            lambda c: c["controllers"]["mc1"].update(axes={}),
            "controllers.mc1.axes: must be a non-empty object",
        ),
        (lambda c: c["controllers"]["mc1"].update(speed=3), "controllers.mc1.speed: unknown key"),
        (lambda c: c.update(controllers={}), "controllers: must be a non-empty object"),
        (
            lambda c: c.update(extra=1),
            "extra: unknown key; valid keys are control, controllers, physics, overrides",
        ),
        (lambda c: c["control"].update(port="x"), "control.port: must be a TCP port"),
    ],
)
def test_bad_controller_config_names_the_key(mutate, message):
    config = sim_config()
    mutate(config)
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert str(err.value).startswith(message)


def test_comment_keys_are_allowed():
    config = sim_config(_note="slit blade")
    config["_comment"] = "virtual hardware"
    assert parse_config(config).controllers["mc1"].controller.handle_line("?AXES") == "?AXES 1"


# ------------------------------------------------------------------- framing
def test_line_splitter_accepts_every_terminator_once():
    splitter = LineSplitter()
    assert splitter.feed(b"?ID\r\n1:?POS\r1:?VEL\n") == ["?ID", "1:?POS", "1:?VEL"]
    assert splitter.feed(b"2:?P") == []
    assert splitter.feed(b"S\r") == ["2:?PS"]
    assert splitter.feed(b"\n\r\n\n") == []  # the rest of a \r\n and blank lines


def test_line_splitter_cuts_runaway_lines():
    splitter = LineSplitter(max_line=200)
    assert splitter.feed(b"1:MOVE " + b"9" * 10_000) == []
    (line,) = splitter.feed(b"\n")
    assert len(line) == 200 and line.startswith("1:MOVE 999")


def test_garbage_is_one_terminated_line_that_is_never_ascii():
    rng = random.Random(1)
    for _ in range(200):
        reply = garbage_reply(rng)
        assert reply.endswith(b"\r\n")
        assert b"\r" not in reply[:-2] and b"\n" not in reply[:-2]
        assert reply[0] >= 0x80
