"""Continuous scans through Sardana on the real beamline: the TriggerGate
controller over the timing unit (bl01/tim/tg1) gates the scaler's buffer
through the measurement group mg_cont; every point is checked against the
unit's own record of the pulses it sent (docs/triggers.md)."""

from __future__ import annotations

import json
import math

import pytest
import tango

from tests.helpers import wait_until
from tests.system.test_sardana import (  # noqa: F401  (beam, door: fixtures)
    beam,
    door,
    last_entry,
    run_ok,
)

pytestmark = [pytest.mark.system, pytest.mark.slow]

S = tango.DevState
GROUP = "mntgrp/pool_pool_bl01_1/mg_cont"
INTERVALS = 60  # ascanct ... 60 intervals: 61 points (the last one at constant speed too)
INTEG = 0.01


@pytest.fixture(scope="module", autouse=True)
def gated_group(beam):  # noqa: F811
    """mg_cont as db_config/sardana/bl01.yaml declares it: its counters gated by
    tg_train, named with this beamline's database (the configuration holds
    full names: `beamline up` builds it once it knows the database's address,
    or the Pool would not find the synchronizer and count in software)."""
    group = beam.proxy(GROUP)
    conf = json.loads(group.Configuration)
    synchronizer = f"tango://{beam.tango_host}/triggergate/tgctrl/1"
    (ctrl,) = [c for name, c in conf["controllers"].items() if name.endswith("/ctctrl")]
    assert ctrl.get("synchronizer") == synchronizer, conf
    assert ctrl.get("synchronization") == 1  # Gate
    return group


@pytest.fixture
def continuous(door):  # noqa: F811
    """mg_cont as the active measurement group for one test."""
    run_ok(door, "senv", "ActiveMntGrp", "mg_cont")
    yield
    run_ok(door, "senv", "ActiveMntGrp", "mg_bl01")


def _pulses(tg):
    out = tg.ReadPulses([0, 0])
    first, n = int(out[0]), int(out[1])
    assert first == 0
    return list(out[2 : 2 + n]), list(out[2 + n : 2 + 2 * n])


def _buffer(scaler):
    out = scaler.ReadBuffer([0, 0])
    n = int(out[1])
    width = (len(out) - 2) // n if n else 0
    return [list(out[2 + i * width : 2 + (i + 1) * width]) for i in range(n)]


def test_hardware_synchronized_group_reports_the_scaler_dead_time_as_latency(beam):  # noqa: F811
    scaler = beam.proxy("bl01/ct/scaler")
    dead = scaler.DeadTime
    # hardware: the gap the scaler needs (and one tick of the unit's clock)
    assert beam.proxy(GROUP).LatencyTime == pytest.approx(dead + 1e-6, abs=1e-9)
    # software synchronization (step scans, ct) as before
    assert beam.proxy("mntgrp/pool_pool_bl01_1/mg_counters").LatencyTime == pytest.approx(0.1)


def test_ascanct_takes_every_point_on_the_timing_unit_pulses(beam, door, continuous):  # noqa: F811
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    points = INTERVALS + 1
    run_ok(door, "ascanct", "sample_x", 0, 1, INTERVALS, INTEG, timeout=180)

    # the unit sent one pulse per point, as Sardana asked: width = integration
    # time, period = integration + the scaler's dead time (and a clock tick)
    assert tg.PulsesSent == points and tg.TrainCount == points
    assert tg.Width == pytest.approx(INTEG, abs=1e-6)
    assert tg.Period == pytest.approx(INTEG + scaler.DeadTime + 1e-6, abs=1e-6)
    times, _ = _pulses(tg)
    assert len(times) == points
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g == pytest.approx(tg.Period, abs=2e-6) for g in gaps), gaps

    # the scaler latched one gate per pulse: none missed, none beyond
    assert scaler.PointsTaken == points and scaler.MissedGates == 0
    assert scaler.OverflowGates == 0
    rows = _buffer(scaler)
    assert len(rows) == points

    # the file: every point, a value in every column, the scaler's own counts
    data = last_entry(beam, f"ascanct sample_x 0.0 1.0 {INTERVALS} {INTEG}")
    for channel in ("ct_time", "i0", "diode"):
        values = list(data[channel])
        assert len(values) == points, f"{channel}: {len(values)} of {points} points"
        assert not any(math.isnan(v) for v in values), f"{channel}: NaN in {values}"
    assert list(data["i0"]) == [row[1] for row in rows]
    assert list(data["diode"]) == [row[2] for row in rows]
    assert list(data["ct_time"]) == pytest.approx([row[0] * 1e-6 for row in rows])
    assert all(t == pytest.approx(INTEG, abs=1e-6) for t in data["ct_time"])

    # every device ready again
    assert tg.state() == S.ON and scaler.state() == S.ON
    assert beam.proxy("bl01/mot/sample_x").state() == S.ON


def test_gap_shorter_than_the_dead_time_is_refused_before_anything_starts(beam):  # noqa: F811
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    motor = beam.proxy("bl01/mot/sample_x")
    group = beam.proxy(GROUP, timeout_ms=10000)
    dead = scaler.DeadTime
    before = (motor.Position, scaler.BufferState, scaler.PointsTaken, tg.PulsesSent)
    # 10 ms gates every 10.05 ms: 50 us between gates, the scaler needs 100 us
    group.SynchDescription = json.dumps(
        [{"0": {"0": 0.0}, "2": {"0": 0.01}, "1": {"0": 0.01 + dead / 2}, "3": 10}]
    )
    group.NbStarts = 1
    with pytest.raises(tango.DevFailed) as exc:
        group.Prepare()
    text = " ".join(e.desc for e in exc.value.args)
    assert "shorter than the dead time of bl01/ct/scaler" in text, text
    assert f"use a latency time of at least {dead:g} s" in text, text
    # nothing was armed, started or moved
    assert (motor.Position, scaler.BufferState, scaler.PointsTaken, tg.PulsesSent) == before
    assert tg.state() == S.ON and scaler.state() == S.ON
    assert tg.TrainState == "IDLE"


def test_ct_on_the_gated_group_counts_one_gate(beam, door, continuous):  # noqa: F811
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    run = run_ok(door, "ct", 0.05)
    assert any("i0" in line for line in run.output), run.output
    assert tg.PulsesSent == 1 and scaler.PointsTaken == 1
    assert tg.Width == pytest.approx(0.05, abs=1e-6)
    assert _buffer(scaler)[0][0] == 50000  # one 50 ms gate, in us


def test_step_scans_after_a_continuous_one_count_in_software_as_before(beam, door):  # noqa: F811
    tg = beam.proxy("bl01/tim/tg1")
    sent = tg.PulsesSent
    run_ok(door, "ascan", "sample_x", 0, 0.2, 2, 0.05)
    data = last_entry(beam, "ascan sample_x 0.0 0.2 2 0.05")
    assert len(data["i0"]) == 3 and not any(math.isnan(v) for v in data["i0"])
    assert list(data["ct_time"]) == pytest.approx([0.05] * 3, abs=1e-3)  # PresetTime counting
    assert tg.PulsesSent == sent  # no train: software synchronization


@pytest.fixture
def on_encoder(beam):  # noqa: F811
    """tg_train fires on sample_x's encoder (input 3) for one test."""
    element = beam.proxy("triggergate/tgctrl/1")
    element.MoveableOnInput = json.dumps({"sample_x": 3})
    yield
    element.MoveableOnInput = json.dumps(None)


def test_ascanct_position_train_fires_on_the_encoder_positions(beam, door, continuous, on_encoder):  # noqa: F811
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    intervals, points = 50, 51  # 1 mm in 50 intervals: 20 encoder steps each
    run_ok(door, "ascanct", "sample_x", 0, 1, intervals, INTEG, timeout=180)
    assert tg.Mode == 1 and tg.Encoder == 3  # POSITION on sample_x's encoder
    assert tg.PositionStep == 20
    assert tg.PulsesSent == points and scaler.PointsTaken == points
    _, positions = _pulses(tg)
    start = tg.PositionStart
    # each pulse at the exact crossing of its position
    assert positions == pytest.approx([start + 20 * k for k in range(points)], abs=1)
    data = last_entry(beam, f"ascanct sample_x 0.0 1.0 {intervals} {INTEG}")
    assert len(data["i0"]) == points and not any(math.isnan(v) for v in data["i0"])
    assert list(data["i0"]) == [row[1] for row in _buffer(scaler)]


@pytest.mark.parametrize("how", ["stop", "abort"])
def test_stopping_a_continuous_scan_stops_motor_and_triggers(beam, door, continuous, how):  # noqa: F811
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    motor = beam.proxy("bl01/mot/sample_x")
    points = 401  # 4 s of 10 ms points
    run = door.start(["ascanct", "sample_x", "0", "2", str(points - 1), str(INTEG)])
    wait_until(
        lambda: (tg.TrainCount == points and tg.PulsesSent >= 20) or run.ended is not None,
        60,
        "20 pulses of this scan's train",
    )
    assert run.ended is None, f"the scan ended early ({run.outcome}): {run.error_text}"
    getattr(door, how)()
    door.wait(run, timeout=30)
    assert run.outcome == how, (run.outcome, run.error_text)
    # the triggers stopped, the scaler disarmed, the motor stopped short of the end
    wait_until(lambda: tg.state() == S.ON, 10, "tg1 back to ON")
    wait_until(lambda: scaler.state() == S.ON, 10, "the scaler back to ON")
    wait_until(lambda: motor.state() == S.ON, 10, "sample_x stopped")
    sent = tg.PulsesSent
    assert 20 <= sent < points
    assert scaler.PointsTaken <= sent
    assert motor.Position < 2.0
    # and the next continuous scan works
    run_ok(door, "ascanct", "sample_x", 0, 0.2, 10, INTEG, timeout=120)
    assert tg.PulsesSent == 11 and scaler.PointsTaken == 11


def test_timescan_and_meshct_on_the_gated_group(beam, door, continuous):  # noqa: F811
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    run_ok(door, "timescan", 20, INTEG, timeout=120)
    assert tg.PulsesSent == 20 and scaler.PointsTaken == 20
    data = last_entry(beam, f"timescan 20 {INTEG}")
    assert len(data["i0"]) == 20 and not any(math.isnan(v) for v in data["i0"])
    assert list(data["i0"]) == [row[1] for row in _buffer(scaler)]

    # one train per row: 3 rows of 11 points
    run_ok(door, "meshct", "sample_x", 0, 0.2, 10, "sample_y", 0, 0.1, 2, INTEG, timeout=180)
    assert tg.PulsesSent == 11 and scaler.PointsTaken == 11  # the last row's
    data = last_entry(beam, "meshct sample_x 0.0 0.2 10 sample_y 0.0 0.1 2")
    assert len(data["i0"]) == 33, len(data["i0"])
    assert not any(math.isnan(v) for v in data["i0"])
    assert list(data["i0"])[-11:] == [row[1] for row in _buffer(scaler)]
