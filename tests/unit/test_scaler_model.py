"""The virtual counter-timer with a fake clock: counting, Poisson statistics,
the preset, rate sampling, and its protocol (``docs/protocol-scaler.md``)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from tango_devices.simulators.physics import BeamlinePhysics
from tango_devices.simulators.scaler import ScalerController
from tango_devices.simulators.server import ConfigError, parse_config


class Switch:
    """A shutter source we drive (1.0 open, 0.0 closed)."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


CONFIG = {"kind": "scaler", "port": 0, "channels": {"1": "i0", "2": "diode"}, "max_preset": 3600}


@pytest.fixture
def shutter() -> Switch:
    return Switch()


@pytest.fixture
def physics(shutter) -> BeamlinePhysics:
    physics = BeamlinePhysics({"inputs": {"shutter_open": {"source": "plc1/shutter_open"}}})
    physics.register_source("plc1/shutter_open", shutter)
    return physics


@pytest.fixture
def scaler(clock, physics) -> ScalerController:
    return ScalerController("ct1", {**CONFIG, "seed": 1}, clock, physics)


def ask(scaler: ScalerController, line: str) -> str:
    return scaler.handle_line(line)


def counts(scaler: ScalerController) -> list[int]:
    reply = ask(scaler, "?COUNTS")
    assert reply.startswith("?COUNTS ")
    return [int(c) for c in reply.split()[1:]]


def assert_poisson(value: int, mean: float) -> None:
    """Within 6 sigma of a Poisson mean (a false alarm every ~500 million runs)."""
    assert abs(value - mean) <= 6 * math.sqrt(max(mean, 1.0)), (value, mean)


# ----------------------------------------------------------------- basics
def test_identify_channels_and_idle_state(scaler):
    assert ask(scaler, "?ID") == "?ID SCALER-2 1.0"
    assert ask(scaler, "?CHANNELS") == "?CHANNELS 2"
    assert ask(scaler, "?STATUS") == "?STATUS IDLE 0.000000"
    assert ask(scaler, "?COUNTS") == "?COUNTS 0 0"
    assert ask(scaler, "?PRESET") == "?PRESET 1"


@pytest.mark.parametrize(
    "text,shown", [("0.5", "0.5"), ("2", "2"), ("1e-3", "0.001"), ("3600", "3600")]
)
def test_preset_round_trip(scaler, text, shown):
    assert ask(scaler, f"PRESET {text}") == "PRESET OK"
    assert ask(scaler, "?PRESET") == f"?PRESET {shown}"


@pytest.mark.parametrize(
    "line,reply",
    [
        ("PRESET 0.0009", "PRESET ERROR 2 bad argument: preset must be 0.001..3600 s, got 0.0009"),
        ("PRESET 3601", "PRESET ERROR 2 bad argument: preset must be 0.001..3600 s, got 3601"),
        ("PRESET abc", "PRESET ERROR 2 bad argument: not a decimal number: abc"),
        ("PRESET", "PRESET ERROR 2 bad argument: expected seconds, got nothing"),
        ("PRESET 1 2", "PRESET ERROR 2 bad argument: expected seconds, got 1 2"),
        ("PRESET nan", "PRESET ERROR 2 bad argument: not a decimal number: nan"),
        ("COUNT", "COUNT ERROR 1 unknown command"),
        ("1:?COUNTS", "1:?COUNTS ERROR 1 unknown command"),
        ("?COUNTS 1", "?COUNTS ERROR 2 bad argument: takes no argument, got 1"),
        ("?channels", "?CHANNELS 2"),
        ("", ""),
    ],
)
def test_protocol_replies(scaler, line, reply):
    assert ask(scaler, line) == reply


def test_line_too_long(scaler):
    assert ask(scaler, "START " + "1" * 130) == (
        "START ERROR 2 bad argument: line longer than 128 characters"
    )


# --------------------------------------------------------------- counting
def test_counts_follow_the_rates_and_freeze_at_the_preset(scaler, clock, physics):
    rates = physics.rates()
    assert rates["i0"] > 1e6 and 0 < rates["diode"] < rates["i0"]
    assert ask(scaler, "PRESET 0.5") == "PRESET OK"
    assert ask(scaler, "START") == "START OK"
    clock.advance(0.2)
    assert ask(scaler, "?STATUS") == "?STATUS COUNTING 0.200000"
    partial = counts(scaler)
    assert_poisson(partial[0], rates["i0"] * 0.2)
    assert_poisson(partial[1], rates["diode"] * 0.2)
    clock.advance(0.7)  # past the preset
    assert ask(scaler, "?STATUS") == "?STATUS IDLE 0.500000"
    final = counts(scaler)
    assert_poisson(final[0], rates["i0"] * 0.5)
    assert_poisson(final[1], rates["diode"] * 0.5)
    assert final[0] > partial[0] and final[1] > partial[1]
    clock.advance(10.0)
    assert counts(scaler) == final  # frozen
    assert ask(scaler, "?STATUS") == "?STATUS IDLE 0.500000"


def test_counting_ends_exactly_at_the_preset_whatever_the_polling(scaler, clock, physics):
    ask(scaler, "PRESET 2")
    ask(scaler, "START")
    clock.advance(100.0)  # nobody looked in between
    assert ask(scaler, "?STATUS") == "?STATUS IDLE 2.000000"
    assert_poisson(counts(scaler)[0], physics.rates()["i0"] * 2)


def test_shutter_closed_counts_the_dark_rate_only(scaler, clock, shutter):
    shutter.value = 0.0
    ask(scaler, "PRESET 100")
    ask(scaler, "START")
    clock.advance(100.0)
    i0, diode = counts(scaler)
    assert_poisson(i0, 5.0 * 100)
    assert_poisson(diode, 5.0 * 100)


def test_a_shutter_opening_mid_count_shows_from_the_next_sample(scaler, clock, physics, shutter):
    open_rate = physics.rates()["i0"]
    shutter.value = 0.0
    ask(scaler, "PRESET 1")
    ask(scaler, "START")
    clock.advance(0.4)
    shutter.value = 1.0
    ask(scaler, "?STATUS")  # a request samples the rates
    clock.advance(1.0)
    assert_poisson(counts(scaler)[0], 5.0 * 0.4 + open_rate * 0.6)


def test_stop_freezes_the_counts_and_the_elapsed_time(scaler, clock, physics):
    ask(scaler, "PRESET 10")
    ask(scaler, "START")
    clock.advance(0.25)
    assert ask(scaler, "STOP") == "STOP OK"
    stopped = counts(scaler)
    assert_poisson(stopped[0], physics.rates()["i0"] * 0.25)
    clock.advance(20.0)
    assert counts(scaler) == stopped
    assert ask(scaler, "?STATUS") == "?STATUS IDLE 0.250000"
    assert ask(scaler, "STOP") == "STOP OK"  # also when idle


def test_start_clears_and_clear_zeroes(scaler, clock):
    ask(scaler, "PRESET 0.1")
    ask(scaler, "START")
    clock.advance(0.2)
    first = counts(scaler)
    assert first[0] > 0
    ask(scaler, "START")
    clock.advance(0.05)
    assert counts(scaler)[0] < first[0]  # started again from zero
    clock.advance(0.1)
    assert ask(scaler, "CLEAR") == "CLEAR OK"
    assert counts(scaler) == [0, 0]
    assert ask(scaler, "?STATUS") == "?STATUS IDLE 0.000000"


@pytest.mark.parametrize("line", ["START", "CLEAR", "PRESET 2"])
def test_busy_while_counting(scaler, clock, line):
    ask(scaler, "START")
    clock.advance(0.5)
    assert ask(scaler, line).startswith(f"{line.split()[0]} ERROR 5 busy:")
    assert ask(scaler, "?PRESET") == "?PRESET 1"


def test_huge_rates_do_not_overflow(clock):
    physics = BeamlinePhysics({"flux": 1e15})
    scaler = ScalerController("ct1", {**CONFIG, "max_preset": 1e6}, clock, physics)
    ask(scaler, "PRESET 1000000")
    ask(scaler, "START")
    clock.advance(1e6)
    assert counts(scaler)[0] > 1e20


def test_status_for_the_control_port(scaler, clock):
    ask(scaler, "PRESET 0.5")
    ask(scaler, "START")
    clock.advance(0.1)
    status = scaler.status()
    assert status["counting"] is True and status["elapsed"] == 0.1 and status["preset"] == 0.5
    assert status["channels"]["1"]["signal"] == "i0" and status["channels"]["1"]["counts"] > 0
    assert scaler.active_faults() == [] and scaler.fault_kinds == ()
    with pytest.raises(ValueError, match="unknown fault kind 'overflow' for ct1"):
        scaler.inject_fault("overflow", {})


# ------------------------------------------------------- sampling in a loop
def test_in_an_event_loop_the_rates_are_sampled_without_requests():
    """A shutter opening mid-count shows even if nobody asks until the end."""
    opens_at = [math.inf]
    physics = BeamlinePhysics({"inputs": {"shutter_open": {"source": "s"}}})
    physics.register_source("s", lambda: 1.0 if time.monotonic() >= opens_at[0] else 0.0)
    rate = BeamlinePhysics().rates()["i0"]

    async def count() -> tuple[float, float, list[int]]:
        scaler = ScalerController("ct1", CONFIG, time.monotonic, physics)
        ask(scaler, "PRESET 0.2")
        before = time.monotonic()
        ask(scaler, "START")
        after = time.monotonic()
        opens_at[0] = after + 0.1
        await asyncio.sleep(0.35)
        assert not scaler.counting  # the periodic sampling ended the count
        assert scaler._tick is None
        return before, after, counts(scaler)

    before, after, (i0, _) = asyncio.run(count())
    # seconds counted with the shutter open, between these bounds (the start is in between)
    least, most = before + 0.2 - opens_at[0], after + 0.2 - opens_at[0]
    assert 0.09 < least <= most == pytest.approx(0.1)
    # sampled every 10 ms: the opening shows within one sample (+ event-loop jitter)
    assert rate * (least - 0.03) <= i0 <= rate * most + 6 * math.sqrt(rate * most)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "change,message",
    [
        ({"channels": {}}, "channels: must be a non-empty object"),
        ({"channels": {"1": "i0", "3": "diode"}}, "channels: channels must be numbered 1..N"),
        ({"channels": {"0": "i0"}}, "channels.0: channel numbers must be 1, 2, 3, ..."),
        (
            {"channels": {"1": "flux"}},
            "channels.1: must be a physics signal (i0, diode), got 'flux'",
        ),
        ({"max_preset": 0}, "max_preset: must be a number of seconds between 0.001 and 1e6"),
        ({"seed": -1}, "seed: must be a non-negative integer, got -1"),
        ({"gate": True}, "gate: unknown key; valid keys are kind, port, channels, max_preset"),
    ],
)
def test_config_errors_name_the_key(clock, change, message):
    with pytest.raises(ValueError) as err:
        ScalerController("ct1", {**CONFIG, **change}, clock)
    assert str(err.value).startswith(message)


def test_registered_in_the_simulator_config():
    config = parse_config({"controllers": {"ct1": CONFIG}})
    assert config.controllers["ct1"].controller.kind == "scaler"
    with pytest.raises(ConfigError, match=r"^controllers.ct1.channels.1: must be a physics signal"):
        parse_config({"controllers": {"ct1": {**CONFIG, "channels": {"1": "x"}}}})
