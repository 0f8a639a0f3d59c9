"""The virtual timing unit with a fake clock: time and position pulse trains,
its record, the wiring to the scaler's gate and the camera's trigger (gated
buffered counting, external-trigger frames), the parameter checks, and its
protocol (``docs/protocol-timing.md``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tango_devices.simulators.server import ConfigError, parse_config
from tests.helpers import PROJECT

RATES = {"i0": 2.0e6 + 5.0}  # BeamlinePhysics().rates() with neutral inputs (dark included)


def axis(velocity: int = 5000, acct: float = 0.2) -> dict:
    return {
        "label": "x",
        "position": 0,
        "low_switch": -50000,
        "high_switch": 50000,
        "home_switch": -40000,
        "home_position": 0,
        "velocity": velocity,
        "max_velocity": 20000,
        "acceleration_time": acct,
    }


def config(**timing) -> dict:
    return {
        "controllers": {
            "smc1": {"kind": "smc", "port": 0, "axes": {"1": axis()}},
            "scaler1": {
                "kind": "scaler",
                "port": 0,
                "channels": {"1": "i0", "2": "diode"},
                "seed": 1,
                "dead_time": 0.0001,
                "buffer_size": 1000,
            },
            "cam1": {
                "kind": "camera",
                "port": 0,
                "readout_time": 0.001,
                "seed": 1,
                "width": 64,
                "height": 64,
            },
            "tg1": {
                "kind": "timing",
                "port": 0,
                "outputs": {"1": "scaler1", "2": "cam1"},
                "encoders": {"1": "smc1/1"},
                **timing,
            },
        }
    }


class Rig:
    """The four controllers of :func:`config` on one fake clock."""

    def __init__(self, clock, cfg: dict | None = None):
        self.clock = clock
        built = parse_config(cfg or config(), clock=clock).controllers
        self.tg = built["tg1"].controller
        self.ct = built["scaler1"].controller
        self.cam = built["cam1"].controller
        self.smc = built["smc1"].controller

    def ok(self, controller, *lines: str) -> None:
        for line in lines:
            reply = controller.handle_line(line)
            assert reply == f"{line.split()[0].upper()} OK", (line, reply)

    def pulses(self, first: int, count: int) -> list[tuple[float, str]]:
        reply = self.tg.handle_line(f"?PULSES {first} {count}")
        head, *records = reply.split()[1:]
        assert reply.startswith(f"?PULSES {first} {count} "), reply
        return [(float(t), p) for t, p in (r.split(",") for r in records[1:])]

    def data(self, first: int, count: int) -> np.ndarray:
        reply = self.ct.handle_line(f"?DATA {first} {count}")
        assert isinstance(reply, bytes), reply
        header, payload = reply.split(b"\r\n", 1)
        name, f, n, columns, nbytes = header.decode().split()
        assert (name, int(f), int(n), int(nbytes)) == ("?DATA", first, count, len(payload))
        return np.frombuffer(payload, dtype="<i8").reshape(count, int(columns))


@pytest.fixture
def rig(clock) -> Rig:
    return Rig(clock)


def run_for(rig: Rig, seconds: float, step: float = 0.003) -> None:
    """Let time pass, looking at the unit every ``step`` seconds."""
    end = rig.clock.t + seconds
    while rig.clock.t < end:
        rig.clock.advance(min(step, end - rig.clock.t))
        rig.tg.handle_line("?STATUS")


# ------------------------------------------------------------------ basics
def test_identify_wiring_and_defaults(rig):
    tg = rig.tg
    assert tg.handle_line("?ID") == "?ID TIMING-2 1.0"
    assert tg.handle_line("?OUTPUTS") == "?OUTPUTS 1:scaler1 2:cam1"
    assert tg.handle_line("?ENCODERS") == "?ENCODERS 1:smc1/1"
    assert tg.handle_line("?STATUS") == "?STATUS IDLE 0 0"
    assert [tg.handle_line(q) for q in ("?MODE", "?DELAY", "?PERIOD", "?WIDTH", "?COUNT")] == [
        "?MODE TIME",
        "?DELAY 0",
        "?PERIOD 1",
        "?WIDTH 0.5",
        "?COUNT 1",
    ]
    assert tg.handle_line("?ENCODER") == "?ENCODER 1"
    assert tg.handle_line("?ENCPOS") == "?ENCPOS 0"


@pytest.mark.parametrize(
    "line,reply",
    [
        ("COUNT 0", "COUNT ERROR 2 bad argument: count (pulses) must be 1..1000000, got 0"),
        ("COUNT -3", "COUNT ERROR 2 bad argument: count (pulses) must be 1..1000000, got -3"),
        ("PERIOD 0", "PERIOD ERROR 2 bad argument: period must be 1e-06..3600 s, got 0"),
        ("WIDTH nan", "WIDTH ERROR 2 bad argument: not a decimal number: nan"),
        ("MODE FAST", "MODE ERROR 2 bad argument: mode must be TIME, POSITION, got FAST"),
        ("ENCODER 2", "ENCODER ERROR 2 bad argument: encoder (0 = none) must be 0..1, got 2"),
        (
            "PSTEP 0",
            "PSTEP ERROR 2 bad argument: pstep must not be 0: steps between pulses, its sign "
            "the direction of motion (+100 or -100)",
        ),
        (
            "?PULSES 0",
            "?PULSES ERROR 2 bad argument: expected the first pulse and a number of pulses, got 0",
        ),
        ("FIRE", "FIRE ERROR 1 unknown command"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(rig, line, reply):
    before = rig.tg.status()
    assert rig.tg.handle_line(line) == reply
    assert rig.tg.status() == before


# ----------------------------------------------------- time-based trains
def arm_all(rig: Rig, count: int, exposure: float = 0.002) -> None:
    rig.ok(rig.ct, f"ARM {count}")
    rig.ok(rig.cam, "TRIGGER EXTERNAL", f"EXPOSURE {exposure}", "MODE MULTIPLE", f"FRAMES {count}")
    rig.ok(rig.cam, "START")


def test_time_train_gates_the_scaler_and_triggers_the_camera(rig):
    arm_all(rig, 20)
    rig.ok(rig.tg, "DELAY 0.05", "PERIOD 0.01", "WIDTH 0.008", "COUNT 20", "ARM")
    assert rig.tg.handle_line("?STATUS") == "?STATUS ARMED 0 20"
    rig.ok(rig.tg, "START")
    rig.clock.advance(0.049)
    assert rig.tg.handle_line("?STATUS") == "?STATUS RUNNING 0 20"
    run_for(rig, 0.5)
    assert rig.tg.handle_line("?STATUS") == "?STATUS IDLE 20 20"
    times = [t for t, _ in rig.pulses(0, 20)]
    assert times == pytest.approx([0.05 + 0.01 * k for k in range(20)], abs=1e-6)
    # one point per gate: the gate time (µs) and Poisson counts of rate x 8 ms
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS DONE 20 20 0 0"
    rows = rig.data(0, 20)
    assert (rows[:, 0] == 8000).all()
    mean = RATES["i0"] * 0.008
    assert all(abs(c - mean) < 6 * math.sqrt(mean) for c in rows[:, 1])
    assert (rig.data(5, 3) == rows[5:8]).all()
    # one numbered frame per pulse
    first = int(rig.cam.handle_line("?BUFFER").split()[2])
    assert rig.cam.handle_line("?BUFFER") == f"?BUFFER 20 {first} 0"
    assert rig.cam.handle_line("?STATUS") == f"?STATUS IDLE {first + 19}"
    frame = rig.cam.handle_line(f"FRAME? {first + 7}")
    assert frame.startswith(f"FRAME? {first + 7} 64 64 8192\r\n".encode())
    assert len(frame) == len(f"FRAME? {first + 7} 64 64 8192\r\n") + 8192


def test_the_record_does_not_depend_on_how_often_anyone_looks(clock):
    slow, fast = Rig(clock), Rig(type(clock)(clock.t))
    for rig in (slow, fast):
        arm_all(rig, 30)
        rig.ok(rig.tg, "PERIOD 0.004", "WIDTH 0.001", "COUNT 30", "START")
    slow.clock.advance(1.0)
    run_for(fast, 1.0, step=0.0017)
    assert slow.pulses(0, 30) == fast.pulses(0, 30)
    assert slow.ct.handle_line("?BUFSTATUS") == fast.ct.handle_line("?BUFSTATUS")
    assert (slow.data(0, 30)[:, 0] == fast.data(0, 30)[:, 0]).all()


def test_stop_ends_the_train_and_the_pulse_in_progress_completes(rig):
    arm_all(rig, 100)
    rig.ok(rig.tg, "PERIOD 0.01", "WIDTH 0.006", "COUNT 100", "START")
    rig.clock.advance(0.032)  # pulse 3 started at 0.03 and is high until 0.036
    rig.ok(rig.tg, "STOP")
    assert rig.tg.handle_line("?STATUS") == "?STATUS IDLE 4 4"
    rig.clock.advance(1.0)
    assert rig.tg.handle_line("?STATUS") == "?STATUS IDLE 4 4"
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS ARMED 4 100 0 0"
    assert (rig.data(0, 4)[:, 0] == 6000).all()
    assert rig.tg.handle_line("?PULSES 3 2") == (
        "?PULSES ERROR 7 pulses 3..4 not sent: 4 pulse(s) sent (0..3) of 4; read sent pulses only"
    )


def test_settings_are_refused_while_armed_or_running(rig):
    rig.ok(rig.tg, "PERIOD 0.1", "WIDTH 0.01", "COUNT 5", "ARM")
    assert rig.tg.handle_line("PERIOD 0.2") == "PERIOD ERROR 5 busy: armed; STOP first"
    rig.ok(rig.tg, "START")
    assert rig.tg.handle_line("COUNT 2") == "COUNT ERROR 5 busy: running; STOP first"
    assert rig.tg.handle_line("ARM") == "ARM ERROR 5 busy: running; STOP first"
    assert rig.tg.handle_line("?PERIOD") == "?PERIOD 0.1"


# ------------------------------------------------------ parameter checks
@pytest.mark.parametrize(
    "settings,message",
    [
        (
            ("PERIOD 0.01", "WIDTH 0.01"),
            "settings: WIDTH 0.01 s is not shorter than the time between pulses (the period "
            "is 0.01 s): a pulse must end before the next one starts; lower WIDTH or raise "
            "PERIOD",
        ),
        (
            ("PERIOD 0.001", "WIDTH 0.00095", "COUNT 10"),
            "settings: the period is 0.001 s and WIDTH is 0.00095 s: only 5e-05 s between "
            "gates, shorter than scaler1 can count (0.0001 s dead time between gates); make "
            "the time between pulses at least WIDTH + 0.0001 s or lower WIDTH",
        ),
        (
            ("PERIOD 0.01", "WIDTH 0.005", "COUNT 11"),
            "settings: COUNT 11 pulses, but scaler1 is armed for 10 more point(s): ARM "
            "scaler1 for 11 points (its buffer holds 1000) or lower COUNT",
        ),
    ],
)
def test_a_train_the_scaler_cannot_count_is_refused(rig, settings, message):
    rig.ok(rig.ct, "ARM 10")
    rig.ok(rig.tg, *settings)
    for command in ("ARM", "START"):
        assert rig.tg.handle_line(command) == f"{command} ERROR 6 {message}"
    assert rig.tg.handle_line("?STATUS") == "?STATUS IDLE 0 0"
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS ARMED 0 10 0 0"


def test_more_points_than_the_buffer_holds_are_refused(rig):
    assert rig.ct.handle_line("?BUFSIZE") == "?BUFSIZE 1000"
    assert rig.ct.handle_line("?DEADTIME") == "?DEADTIME 0.0001"
    assert rig.ct.handle_line("ARM 1001") == (
        "ARM ERROR 2 bad argument: 1001 points is more than the buffer holds (1000 points): "
        "arm at most 1000 points and read them before the next ARM"
    )
    assert rig.ct.handle_line("ARM 0") == "ARM ERROR 2 bad argument: points must be 1..1000, got 0"
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS IDLE 0 0 0 0"


def test_a_train_faster_than_the_camera_is_refused(rig):
    arm_all(rig, 10, exposure=0.02)
    rig.ok(rig.tg, "PERIOD 0.01", "WIDTH 0.005", "COUNT 10")
    assert rig.tg.handle_line("START") == (
        "START ERROR 6 settings: the period is 0.01 s, shorter than cam1 needs per frame "
        "(0.021 s exposure + readout): lengthen the time between pulses or shorten cam1's "
        "exposure"
    )
    rig.ok(rig.ct, "DISARM")
    rig.ok(rig.tg, "PERIOD 0.05", "COUNT 11")
    assert rig.tg.handle_line("START") == (
        "START ERROR 6 settings: COUNT 11 pulses, but cam1 takes 10 more frame(s): set "
        "cam1's FRAMES to 11 (MODE MULTIPLE) or lower COUNT"
    )


# ------------------------------------------------- position-based trains
def test_position_train_fires_every_n_steps_while_the_axis_moves(rig):
    rig.ok(rig.ct, "ARM 40")
    rig.ok(rig.tg, "MODE POSITION", "PSTART 1000", "PSTEP 100", "COUNT 40", "WIDTH 0.001")
    rig.ok(rig.tg, "START")
    run_for(rig, 0.1)
    assert rig.tg.handle_line("?STATUS") == "?STATUS RUNNING 0 40"  # the axis stands still
    assert rig.smc.handle_line("1:MOVE 6000") == "1:MOVE OK"
    run_for(rig, 2.0)
    assert rig.tg.handle_line("?STATUS") == "?STATUS IDLE 40 40"
    records = rig.pulses(0, 40)
    assert [p for _, p in records] == [str(1000 + 100 * k) for k in range(40)]
    # at the cruise velocity (5000 steps/s, reached at 500 steps) 100 steps take 20 ms
    gaps = np.diff([t for t, _ in records])
    assert gaps == pytest.approx([0.02] * 39, abs=2e-6)
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS DONE 40 40 0 0"
    assert (rig.data(0, 40)[:, 0] == 1000).all()


def test_position_train_is_exact_when_the_axis_stops_before_anyone_looks(rig):
    rig.ok(rig.tg, "MODE POSITION", "PSTART -100", "PSTEP -250", "COUNT 100", "WIDTH 0.001")
    rig.ok(rig.tg, "START")
    rig.smc.handle_line("1:MOVE -20000")
    rig.clock.advance(1.0)
    assert rig.smc.handle_line("1:STOP") == "1:STOP OK"  # the timing unit was not looked at
    rig.clock.advance(1.0)
    stopped = int(rig.smc.handle_line("1:?POS").split()[1])
    sent = int(rig.tg.handle_line("?STATUS").split()[2])
    assert sent == (-100 - stopped) // 250 + 1
    assert [p for _, p in rig.pulses(0, sent)] == [str(-100 - 250 * k) for k in range(sent)]
    assert rig.tg.handle_line("?STATUS") == f"?STATUS RUNNING {sent} 100"
    # coming back does not fire; going out again fires the next thresholds
    rig.smc.handle_line("1:MOVE 0")
    rig.clock.advance(5.0)
    assert rig.tg.handle_line("?STATUS") == f"?STATUS RUNNING {sent} 100"


def test_position_settings_are_checked(rig):
    rig.ok(rig.tg, "MODE POSITION", "PSTART 100", "PSTEP 50", "COUNT 5", "WIDTH 0.02")
    assert rig.tg.handle_line("ARM") == (
        "ARM ERROR 6 settings: WIDTH 0.02 s is not shorter than the time between pulses "
        "(pulses every 50 steps at 5000 steps/s come every 0.01 s): a pulse must end before "
        "the next one starts; lower WIDTH, raise PSTEP or slow the axis"
    )
    rig.ok(rig.tg, "WIDTH 0.001", "PSTART 0")
    assert rig.tg.handle_line("START") == (
        "START ERROR 6 settings: encoder 1 is at 0, already at or beyond the first pulse "
        "position PSTART 0 for PSTEP 50: move the axis before PSTART first"
    )
    rig.ok(rig.tg, "ENCODER 0")
    assert rig.tg.handle_line("START") == (
        "START ERROR 6 settings: POSITION mode needs an encoder: select one with ENCODER (1..1)"
    )
    assert rig.tg.handle_line("?STATUS") == "?STATUS IDLE 0 0"


def test_time_train_records_the_encoder_position(rig):
    rig.smc.handle_line("1:VEL 10000")
    rig.smc.handle_line("1:ACCT 0.001")
    rig.smc.handle_line("1:MOVE 40000")
    rig.clock.advance(0.5)  # at cruise: 10000 steps/s
    position = int(rig.tg.handle_line("?ENCPOS").split()[1])
    rig.ok(rig.tg, "PERIOD 0.01", "WIDTH 0.001", "COUNT 5", "START")
    rig.clock.advance(0.1)
    assert [p for _, p in rig.pulses(0, 5)] == [str(position + 100 * k) for k in range(5)]
    rig.ok(rig.tg, "ENCODER 0", "START")
    rig.clock.advance(0.1)
    assert [p for _, p in rig.pulses(0, 5)] == ["-"] * 5


# ----------------------------------------------- the scaler's gated buffer
def test_scaler_buffer_overflow_and_unread_points_are_clear_errors(rig):
    rig.ok(rig.tg, "PERIOD 0.01", "WIDTH 0.005", "COUNT 5", "START")  # scaler not armed yet
    rig.ok(rig.ct, "ARM 3")
    rig.clock.advance(0.012)
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS ARMED 1 3 0 0"
    assert rig.ct.handle_line("?DATA 0 2") == (
        "?DATA ERROR 6 points 0..1 not taken: 1 of 3 points taken (0..0); read up to point 0 "
        "or wait for the gates"
    )
    rig.clock.advance(1.0)
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS DONE 3 3 2 0"
    assert rig.ct.handle_line("?DATA 2 2") == (
        "?DATA ERROR 6 points 2..3 not taken: 3 of 3 points taken (0..2); read up to point 2 "
        "or wait for the gates; 2 gate(s) after the last point were lost (buffer overflow: "
        "ARM more points, at most 1000)"
    )
    assert rig.data(0, 3).shape == (3, 3)


def test_gates_within_the_dead_time_are_missed_not_shifted(clock):
    cfg = config()
    cfg["controllers"]["scaler1"]["dead_time"] = 0.004
    rig = Rig(clock, cfg)
    rig.ok(rig.tg, "PERIOD 0.005", "WIDTH 0.002", "COUNT 6", "START")  # 3 ms between gates
    rig.ok(rig.ct, "ARM 6")
    rig.clock.advance(1.0)
    # gate 0 is latched; gate 1 comes 3 ms after it: missed; gate 2 is 8 ms after gate 0 ...
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS ARMED 3 6 0 3"


def test_software_counting_is_refused_while_armed_and_works_after_disarm(rig):
    rig.ok(rig.ct, "ARM 5")
    assert rig.ct.handle_line("START") == (
        "START ERROR 5 busy: armed for gated counting (0 of 5 points taken); DISARM before START"
    )
    rig.ok(rig.ct, "DISARM", "PRESET 0.1", "START")
    rig.clock.advance(0.2)
    assert rig.ct.handle_line("?STATUS") == "?STATUS IDLE 0.100000"
    assert rig.ct.handle_line("?BUFSTATUS") == "?BUFSTATUS IDLE 0 5 0 0"


# ------------------------------------------------ the camera's trigger input
def test_camera_ignores_triggers_while_busy_and_counts_them(rig):
    # started before the camera (so not checked against it), first pulse after it
    rig.ok(rig.tg, "DELAY 0.005", "PERIOD 0.01", "WIDTH 0.001", "COUNT 10", "START")
    rig.ok(rig.cam, "TRIGGER EXTERNAL", "EXPOSURE 0.015", "MODE CONTINUOUS", "START")
    rig.clock.advance(1.0)
    count, first, missed = rig.cam.handle_line("?BUFFER").split()[1:]
    assert (int(count), int(missed)) == (5, 5)  # every other trigger comes while reading out
    assert rig.cam.handle_line("?STATUS") == f"?STATUS ACQUIRING {int(first) + 4}"
    assert rig.cam.handle_line(f"FRAME? {int(first) + 5}") == (
        f"FRAME? ERROR 6 frame {int(first) + 5} not acquired yet: the newest frame is "
        f"{int(first) + 4}; wait for its trigger"
    )
    rig.ok(rig.cam, "STOP")
    assert rig.cam.handle_line("?TRIGGER") == "?TRIGGER EXTERNAL"
    rig.ok(rig.cam, "TRIGGER INTERNAL")
    assert (
        rig.cam.handle_line("FRAME? 1") == "FRAME? ERROR 2 bad argument: takes no argument, got 1"
    )


def test_camera_buffer_keeps_the_newest_frames(clock):
    cfg = config()
    cfg["controllers"]["cam1"]["buffer_frames"] = 4
    rig = Rig(clock, cfg)
    arm_all(rig, 10)
    rig.ok(rig.tg, "PERIOD 0.01", "WIDTH 0.001", "COUNT 10", "START")
    rig.clock.advance(1.0)
    assert rig.cam.handle_line("?BUFFER") == "?BUFFER 4 7 0"
    assert rig.cam.handle_line("FRAME? 6") == (
        "FRAME? ERROR 6 frame 6 is no longer buffered: the buffer holds frames 7..10 "
        "(buffer_frames 4); read frames while the acquisition runs"
    )
    assert rig.cam.handle_line("FRAME? 9")[:20] == b"FRAME? 9 64 64 8192\r"


# ------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"outputs": {"1": "nope"}},
            "controllers.tg1.outputs.1: 'nope' is no controller; an output drives the gate "
            "of a scaler or the trigger of a camera (controllers: cam1, scaler1, smc1, tg1)",
        ),
        (
            {"outputs": {"1": "smc1"}},
            "controllers.tg1.outputs.1: 'smc1' is a smc controller; an output drives the gate "
            "of a scaler or the trigger of a camera (controllers: cam1, scaler1, smc1, tg1)",
        ),
        (
            {"outputs": {"1": "cam1", "2": "cam1"}},
            "controllers.tg1.outputs.2: 'cam1' is wired to two outputs",
        ),
        (
            {"encoders": {"1": "smc1/9"}},
            "controllers.tg1.encoders.1: smc1 has no axis 9: valid axes are 1..1",
        ),
        (
            {"encoders": {"1": "smc1"}},
            "controllers.tg1.encoders.1: must name an SMC axis as 'controller/axis' "
            "(such as 'smc1/3'), got 'smc1'",
        ),
        ({"max_pulses": 0}, "controllers.tg1.max_pulses: must be an integer 1..10000000, got 0"),
        (
            {"speed": 1},
            "controllers.tg1.speed: unknown key; valid keys are kind, port, outputs, "
            "encoders, max_pulses (keys starting with '_' are comments)",
        ),
    ],
)
def test_bad_wiring_is_refused_naming_the_key(change, message):
    cfg = config()
    cfg["controllers"]["tg1"].update(change)
    with pytest.raises(ConfigError) as excinfo:
        parse_config(cfg)
    assert str(excinfo.value) == message


def test_the_demo_simulation_wires_tg1_to_the_scaler_and_the_camera():
    data = json.loads((PROJECT / "db_config" / "simulation.json").read_text())
    built = parse_config(data, auto_ports=True).controllers
    tg = built["tg1"].controller
    assert tg.scalers == [built["scaler1"].controller]
    assert tg.cameras == [built["cam1"].controller]
    assert tg.encoders[3] is built["smc1"].controller.axes[3]
