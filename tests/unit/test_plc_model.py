"""The virtual shutter PLC with a fake clock: travel, interlocks, faults and
its protocol (``docs/protocol-plc.md``)."""

from __future__ import annotations

import pytest

from tango_devices.simulators.physics import BeamlinePhysics
from tango_devices.simulators.plc import PlcController
from tango_devices.simulators.server import ConfigError, parse_config

VACUUM_TEXT = "vacuum interlock: pressure above 1e-5 mbar at bl01/vac/gauge1"


class Gauge:
    """A physics source we drive: the pressure, mbar."""

    def __init__(self) -> None:
        self.pressure = 1e-8

    def __call__(self) -> float:
        return self.pressure


def plc_config(**shutter: object) -> dict:
    return {
        "kind": "plc",
        "port": 0,
        "shutters": {"fe": {"travel_time": 0.3, "open": False, **shutter}},
        "interlocks": [{"name": "vacuum", "input": "pressure", "above": 1e-5, "text": VACUUM_TEXT}],
    }


@pytest.fixture
def gauge() -> Gauge:
    return Gauge()


@pytest.fixture
def physics(gauge) -> BeamlinePhysics:
    physics = BeamlinePhysics(
        {
            "inputs": {
                "pressure": {"source": "gauge/p"},
                "shutter_open": {"source": "plc1/shutter_open"},
            }
        }
    )
    physics.register_source("gauge/p", gauge)
    return physics


@pytest.fixture
def plc(clock, physics) -> PlcController:
    return PlcController("plc1", plc_config(), clock, physics)


def ask(plc: PlcController, line: str) -> str:
    return plc.handle_line(line)


# ----------------------------------------------------------------- travel
def test_identify_and_initial_state(plc):
    assert ask(plc, "?ID") == "?ID PLC-1 1.0"
    assert ask(plc, "?SHUTTERS") == "?SHUTTERS fe"
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"
    assert ask(plc, "fe:?ILK") == "fe:?ILK NONE"
    assert ask(plc, "fe:?FAULT") == "fe:?FAULT NONE"


def test_open_takes_the_travel_time_and_feeds_the_physics(plc, clock, physics):
    assert physics.shutter_open() is False
    assert physics.rates()["i0"] == 5.0  # dark rate only
    assert ask(plc, "fe:OPEN") == "fe:OPEN OK"
    clock.advance(0.15)
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 0"
    assert physics.value("shutter_open") == 0.0  # half open is not open
    clock.advance(0.149)
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 0"
    clock.advance(0.002)
    assert ask(plc, "fe:?STATE") == "fe:?STATE OPEN 0"
    assert physics.shutter_open() is True
    assert physics.rates()["i0"] > 1e6
    assert plc.physics.value("shutter_open") == 1.0


def test_the_travel_does_not_depend_on_polling(plc, clock):
    ask(plc, "fe:OPEN")
    clock.advance(10.0)
    assert ask(plc, "fe:?STATE") == "fe:?STATE OPEN 0"


def test_close_reverses_a_motion_from_where_the_shutter_is(plc, clock):
    ask(plc, "fe:OPEN")
    clock.advance(0.1)  # one third open
    assert ask(plc, "fe:CLOSE") == "fe:CLOSE OK"
    clock.advance(0.099)
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 0"
    clock.advance(0.002)
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"


def test_per_shutter_sources_and_all_open(clock):
    config = plc_config()
    config["shutters"]["bs"] = {"travel_time": 0.1, "open": True}
    physics = BeamlinePhysics()
    plc = PlcController("plc1", config, clock, physics)
    sources = physics._sources
    assert sources["plc1/fe/open"]() == 0.0
    assert sources["plc1/bs/open"]() == 1.0
    assert sources["plc1/shutter_open"]() == 0.0  # open only when every shutter is
    ask(plc, "fe:OPEN")
    clock.advance(0.3)
    assert sources["plc1/shutter_open"]() == 1.0


def test_open_at_start_when_configured(clock, physics):
    plc = PlcController("plc1", plc_config(open=True), clock, physics)
    assert ask(plc, "fe:?STATE") == "fe:?STATE OPEN 0"


# -------------------------------------------------------------- interlocks
def test_interlock_closes_refuses_open_and_clears_by_itself(plc, clock, gauge, physics):
    ask(plc, "fe:OPEN")
    clock.advance(0.3)
    assert ask(plc, "fe:?STATE") == "fe:?STATE OPEN 0"
    gauge.pressure = 2e-5
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 1"  # closing at once
    assert ask(plc, "fe:?ILK") == f"fe:?ILK {VACUUM_TEXT}"
    assert ask(plc, "fe:OPEN") == f"fe:OPEN ERROR 8 interlock active: {VACUUM_TEXT}"
    clock.advance(0.001)
    assert physics.shutter_open() is False  # no longer fully open
    clock.advance(0.299)
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 1"
    gauge.pressure = 1e-6  # back below the threshold
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"  # cleared, still closed
    assert ask(plc, "fe:?ILK") == "fe:?ILK NONE"
    assert ask(plc, "fe:OPEN") == "fe:OPEN OK"
    clock.advance(0.3)
    assert ask(plc, "fe:?STATE") == "fe:?STATE OPEN 0"


def test_interlock_at_the_threshold_is_not_active(plc, gauge):
    gauge.pressure = 1e-5
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"


def test_interlock_is_seen_by_a_physics_read_too(plc, clock, gauge, physics):
    ask(plc, "fe:OPEN")
    clock.advance(0.3)
    assert physics.shutter_open() is True
    gauge.pressure = 1e-3
    assert physics.shutter_open() is True  # the read evaluates the PLC: it trips now...
    clock.advance(0.001)
    assert physics.shutter_open() is False  # ...and the shutter is on its way
    clock.advance(0.299)
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 1"


def test_close_and_reset_are_accepted_under_interlock(plc, gauge):
    gauge.pressure = 1e-3
    assert ask(plc, "fe:CLOSE") == "fe:CLOSE OK"
    assert ask(plc, "fe:RESET") == "fe:RESET OK"


def test_manual_interlock_fault_until_clear(plc, clock):
    ask(plc, "fe:OPEN")
    clock.advance(0.3)
    what = plc.inject_fault("interlock", {"text": "radiation survey in progress"})
    assert what == "interlock active: radiation survey in progress"
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 1"
    assert ask(plc, "fe:OPEN") == ("fe:OPEN ERROR 8 interlock active: radiation survey in progress")
    assert plc.active_faults() == ["interlock: radiation survey in progress"]
    plc.clear_faults()
    clock.advance(0.3)
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"
    assert plc.active_faults() == []


def test_several_interlocks_are_all_named(plc, gauge):
    gauge.pressure = 1e-3
    plc.inject_fault("interlock", {})
    assert ask(plc, "fe:?ILK") == f"fe:?ILK manual interlock (injected); {VACUUM_TEXT}"
    assert plc.status()["interlocks"] == ["manual interlock (injected)", VACUUM_TEXT]


def test_an_interlock_input_read_back_from_the_plc_does_not_recurse(clock):
    physics = BeamlinePhysics({"inputs": {"pressure": {"source": "plc1/shutter_open"}}})
    config = plc_config()
    config["interlocks"][0]["above"] = 0.5  # "pressure" is 1 while the shutter is open
    plc = PlcController("plc1", config, clock, physics)
    ask(plc, "fe:OPEN")
    clock.advance(0.3)
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 1"


# ----------------------------------------------------------------- stuck
def test_stuck_shutter_stays_moving_then_faults_until_reset(plc, clock, physics):
    ask(plc, "fe:OPEN")
    clock.advance(0.3)
    assert plc.inject_fault("stuck", {}) == "shutter fe stuck: it no longer moves"
    assert ask(plc, "fe:CLOSE") == "fe:CLOSE OK"
    clock.advance(0.59)
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 0"
    assert physics.shutter_open() is True  # stuck open: the beam still passes
    clock.advance(0.02)
    assert ask(plc, "fe:?STATE") == "fe:?STATE FAULT 0"
    assert ask(plc, "fe:?FAULT") == "fe:?FAULT shutter stuck: not CLOSED within 0.6 s"
    assert ask(plc, "fe:OPEN") == (
        "fe:OPEN ERROR 7 shutter fault: shutter stuck: not CLOSED within 0.6 s; RESET first"
    )
    assert ask(plc, "fe:CLOSE").startswith("fe:CLOSE ERROR 7 shutter fault")
    assert ask(plc, "fe:RESET") == "fe:RESET ERROR 7 cannot reset: the shutter is still stuck"
    assert plc.active_faults() == [
        "shutter fe stuck",
        "fault on shutter fe: shutter stuck: not CLOSED within 0.6 s",
    ]
    plc.clear_faults()
    assert ask(plc, "fe:?STATE") == "fe:?STATE FAULT 0"  # latched until RESET
    assert ask(plc, "fe:RESET") == "fe:RESET OK"
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 0"  # drives to the safe state
    clock.advance(0.3)
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"
    assert ask(plc, "fe:?FAULT") == "fe:?FAULT NONE"


def test_stuck_at_rest_shows_only_when_commanded(plc, clock):
    plc.inject_fault("stuck", {"shutter": "fe"})
    clock.advance(5.0)
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"
    assert ask(plc, "fe:CLOSE") == "fe:CLOSE OK"  # already there: nothing to do
    ask(plc, "fe:OPEN")
    clock.advance(0.61)
    assert ask(plc, "fe:?STATE") == "fe:?STATE FAULT 0"
    assert ask(plc, "fe:?FAULT") == "fe:?FAULT shutter stuck: not OPEN within 0.6 s"


def test_stuck_mid_travel_freezes_and_clear_resumes(plc, clock):
    ask(plc, "fe:OPEN")
    clock.advance(0.15)
    plc.inject_fault("stuck", {})
    clock.advance(0.4)
    assert plc.status()["shutters"]["fe"]["position"] == 0.5
    plc.clear_faults()  # freed before the watchdog: the motion goes on
    clock.advance(0.149)
    assert ask(plc, "fe:?STATE") == "fe:?STATE MOVING 0"
    clock.advance(0.002)
    assert ask(plc, "fe:?STATE") == "fe:?STATE OPEN 0"


def test_reset_without_fault_is_ok(plc):
    assert ask(plc, "fe:RESET") == "fe:RESET OK"
    assert ask(plc, "fe:?STATE") == "fe:?STATE CLOSED 0"


# ---------------------------------------------------------------- protocol
@pytest.mark.parametrize(
    "line,reply",
    [
        ("fe:FLY", "fe:FLY ERROR 1 unknown command"),
        ("?VERSION", "?VERSION ERROR 1 unknown command"),
        ("bs:?STATE", "bs:?STATE ERROR 3 no such shutter: valid shutters are fe"),
        ("?STATE", "?STATE ERROR 3 no such shutter: shutter name required (name:command)"),
        ("fe:?ID", "fe:?ID ERROR 3 no such shutter: ?ID is a PLC command"),
        ("fe:OPEN now", "fe:OPEN ERROR 2 bad argument: takes no argument, got now"),
        ("?ID x", "?ID ERROR 2 bad argument: takes no argument, got x"),
        ("fe:open", "fe:OPEN OK"),
        ("  fe:?state  ", "fe:?STATE CLOSED 0"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_protocol_replies(plc, line, reply):
    assert ask(plc, line) == reply


def test_line_too_long(plc):
    assert ask(plc, "fe:OPEN " + "x" * 130) == (
        "fe:OPEN ERROR 2 bad argument: line longer than 128 characters"
    )


def test_status_for_the_control_port(plc, clock):
    ask(plc, "fe:OPEN")
    clock.advance(0.15)
    assert plc.status() == {
        "shutters": {"fe": {"state": "MOVING", "position": 0.5, "stuck": False, "fault": None}},
        "interlocks": [],
    }


@pytest.mark.parametrize(
    "kind,request_,message",
    [
        ("drop", {}, "unknown fault kind 'drop' for plc1: valid kinds are interlock, stuck"),
        ("stuck", {"shutter": "bs"}, "PLC plc1 has no shutter 'bs': valid shutters are fe"),
        ("interlock", {"text": 5}, "fault interlock: 'text' must be a string, got 5"),
    ],
)
def test_inject_fault_errors(plc, kind, request_, message):
    with pytest.raises(ValueError) as err:
        plc.inject_fault(kind, request_)
    assert str(err.value) == message


def test_stuck_needs_a_shutter_when_there_are_several(clock):
    config = plc_config()
    config["shutters"]["bs"] = {"travel_time": 0.1}
    plc = PlcController("plc1", config, clock)
    with pytest.raises(
        ValueError, match="fault stuck needs a 'shutter': valid shutters are fe, bs"
    ):
        plc.inject_fault("stuck", {})


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "change,message",
    [
        ({"shutters": {}}, "shutters: must be a non-empty object"),
        ({"shutters": {"fe": {}}}, "shutters.fe.travel_time: missing (required, seconds)"),
        (
            {"shutters": {"fe": {"travel_time": 0}}},
            "shutters.fe.travel_time: must be a number of seconds between 0.001 and 60, got 0",
        ),
        (
            {"shutters": {"fe": {"travel_time": 0.3, "open": "yes"}}},
            "shutters.fe.open: must be true or false, got 'yes'",
        ),
        (
            {"shutters": {"fe": {"travel_time": 0.3, "speed": 1}}},
            "shutters.fe.speed: unknown key; valid keys are travel_time, open",
        ),
        ({"shutters": {"1fe": {"travel_time": 0.3}}}, "shutters.1fe: a name starts with a letter"),
        ({"interlocks": {}}, "interlocks: must be a list"),
        (
            {"interlocks": [{"name": "v", "input": "temperature", "above": 1}]},
            "interlocks.0.input: must be a physics quantity (slit_h, ",
        ),
        ({"interlocks": [{"name": "v", "input": "pressure"}]}, "interlocks.0.above: missing"),
        (
            {"interlocks": [{"name": "v", "input": "pressure", "above": "1e-5"}]},
            "interlocks.0.above: must be a number, got '1e-5'",
        ),
        ({"valves": {}}, "valves: unknown key; valid keys are kind, port, shutters, interlocks"),
    ],
)
def test_config_errors_name_the_key(clock, change, message):
    config = {**plc_config(), **change}
    with pytest.raises(ValueError) as err:
        PlcController("plc1", config, clock)
    assert str(err.value).startswith(message)


def test_interlock_text_defaults_to_its_name_and_threshold(clock, gauge, physics):
    config = plc_config()
    config["interlocks"] = [{"name": "vacuum", "input": "pressure", "above": 1e-5}]
    plc = PlcController("plc1", config, clock, physics)
    gauge.pressure = 1.0
    assert ask(plc, "fe:?ILK") == "fe:?ILK vacuum interlock: pressure above 1e-05"


def test_registered_in_the_simulator_config():
    config = parse_config(
        {
            "controllers": {"plc1": plc_config()},
            "physics": {"inputs": {"shutter_open": {"source": "plc1/shutter_open"}}},
        }
    )
    assert config.controllers["plc1"].controller.kind == "plc"
    assert config.physics is not None and config.physics.shutter_open() is False
    with pytest.raises(ConfigError, match=r"^controllers.plc1.shutters.fe.travel_time: missing"):
        parse_config({"controllers": {"plc1": {"kind": "plc", "port": 0, "shutters": {"fe": {}}}}})
