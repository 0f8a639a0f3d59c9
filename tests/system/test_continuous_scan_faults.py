"""Continuous scans that cannot run, and a timing unit that dies mid-scan.

A scan the scaler or a motor cannot take is refused with the reason before
any motor moves (the general hook continuous_scan_guard, registered by the
MacroServer's environment, prepares the measurement group and tries the
motors' velocities at "post-configuration"); a user's own general hook keeps
working beside it. A SIGKILLed TimingUnit server fails the scan naming the
unit, the supervisor brings it back and the next scan takes every point
(docs/triggers.md)."""

from __future__ import annotations

import math
import os
import signal
import time

import pytest
import tango

from tests.helpers import wait_until
from tests.system.conftest import Events
from tests.system.test_continuous_scans import (  # noqa: F401  (fixtures)
    INTEG,
    _buffer,
    continuous,
    gated_group,
)
from tests.system.test_sardana import (  # noqa: F401  (beam, door: fixtures)
    beam,
    door,
    last_entry,
    run_ok,
    server_pid,
    supervisor_row,
)

pytestmark = [pytest.mark.system, pytest.mark.slow]

S = tango.DevState
GUARD = "continuous_scan_guard"

USER_HOOK = """
from sardana.macroserver.macro import Macro


class user_hook_probe(Macro):
    \"\"\"A user's general hook (test only): says in which macro it ran.\"\"\"

    def run(self):
        parent = self.getParentMacro()
        self.output("user hook ran in " + (parent.getName() if parent else "nothing"))
"""


@pytest.fixture
def still(beam):  # noqa: F811
    """sample_x and sample_y away from every scan's start, and a record of
    their states from now on: a motor that moved shows MOVING in it."""
    motors = {name: beam.proxy(f"bl01/mot/{name}") for name in ("sample_x", "sample_y")}
    for name, motor in motors.items():
        wait_until(lambda m=motor: m.state() == S.ON, 30, f"{name} ON")
    events = {name: Events(motor, "State") for name, motor in motors.items()}
    for ev in events.values():
        ev.wait_live()
    yield motors, events
    for ev in events.values():
        ev.close()


def _positions(motors):
    return {name: motor.Position for name, motor in motors.items()}


def _assert_nothing_moved(motors, events, before):
    assert _positions(motors) == before
    for name, ev in events.items():
        states = [v.value for v in ev.items]
        assert S.MOVING not in states, f"{name} moved: states {states}"


@pytest.fixture
def parked(beam, door):  # noqa: F811
    """Both sample motors parked off every scan's start position."""
    run_ok(door, "mv", "sample_x", 0.5, "sample_y", 0.3)
    yield


def _too_many_points(macro: str, points: int) -> list:
    n = points  # intervals: points + 1 points with the last one
    if macro == "ascanct":
        return ["ascanct", "sample_x", 0, 20, n, 0.001]
    if macro == "dscanct":
        return ["dscanct", "sample_x", -10, 10, n, 0.001]
    if macro == "a2scanct":
        return ["a2scanct", "sample_x", 0, 20, "sample_y", 0, 1, n, 0.001]
    return ["meshct", "sample_x", 0, 20, n, "sample_y", 0, 0.1, 1, 0.001]


@pytest.mark.parametrize("macro", ["ascanct", "dscanct", "a2scanct", "meshct"])
def test_more_points_than_the_buffer_refused_before_any_motor_moves(
    beam,  # noqa: F811
    door,  # noqa: F811
    continuous,  # noqa: F811
    parked,
    still,
    macro,
):
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    motors, events = still
    size = scaler.BufferSize
    before = _positions(motors)
    counters = (scaler.BufferState, scaler.PointsTaken, tg.PulsesSent, tg.TrainCount)

    run = door.run([str(a) for a in _too_many_points(macro, size)], timeout=120)

    assert run.outcome == "exception", (run.outcome, run.error_text)
    _assert_nothing_moved(motors, events, before)
    text = run.error_text
    assert f"{macro} refused before any motor moved" in text, text
    assert f"{size + 1} points do not fit in the buffer of bl01/ct/scaler ({size} points)" in text
    assert "scan fewer points, or split the scan" in text, text
    assert (scaler.BufferState, scaler.PointsTaken, tg.PulsesSent, tg.TrainCount) == counters
    assert tg.state() == S.ON and scaler.state() == S.ON


def test_a_speed_the_motor_cannot_reach_refused_before_it_moves(
    beam,  # noqa: F811
    door,  # noqa: F811
    continuous,  # noqa: F811
    parked,
    still,
):
    """Sardana's own velocity check (the Pool motor's Velocity range) has no
    range to check here: the motor's controller refuses the speed, which
    Sardana found only when it configured the motion, after the move."""
    motors, events = still
    motor = motors["sample_x"]
    velocity = motor.Velocity
    before = _positions(motors)
    # 5.5 mm in 11 points of ~10 ms: ~50 mm/s, sample_x reaches 20 mm/s
    run = door.run(["ascanct", "sample_x", "0", "5", "10", str(INTEG)], timeout=60)
    assert run.outcome == "exception", (run.outcome, run.error_text)
    _assert_nothing_moved(motors, events, before)
    text = run.error_text
    assert "ascanct refused before any motor moved: sample_x cannot move at" in text, text
    assert "bl01/mot/sample_x refused write Velocity" in text, text
    assert motor.Velocity == pytest.approx(velocity)  # put back
    # the same scan at a speed it reaches runs
    run_ok(door, "ascanct", "sample_x", 0, 0.5, 10, INTEG, timeout=120)


def test_a_latency_shorter_than_the_dead_time_is_raised_to_it(beam, door, continuous):  # noqa: F811
    """Through the scan macros a gap shorter than the scaler's dead time
    cannot be asked for: Sardana takes the group's LatencyTime (the dead time
    and a clock tick) when the macro's latency_time is shorter."""
    tg, scaler = beam.proxy("bl01/tim/tg1"), beam.proxy("bl01/ct/scaler")
    dead = scaler.DeadTime
    run_ok(door, "ascanct", "sample_x", 0, 0.2, 10, INTEG, dead / 10, timeout=120)
    assert tg.Period - tg.Width == pytest.approx(dead + 1e-6, abs=1e-6)
    assert scaler.PointsTaken == 11 and scaler.MissedGates == 0


def test_a_user_general_hook_works_beside_the_guard(beam, door, continuous, parked, still):  # noqa: F811
    (beam.run_dir / "user_macros" / "user_hook_test.py").write_text(USER_HOOK)
    ms = beam.proxy("bl01/sardana/macroserver", timeout_ms=10000)
    ms.ReloadMacroLib(["user_hook_test"])
    listing = run_ok(door, "lsgh")
    assert any(GUARD in line and "post-configuration" in line for line in listing.output), (
        listing.output
    )
    run_ok(door, "defgh", "user_hook_probe", "post-configuration")
    try:
        listing = "\n".join(run_ok(door, "lsgh").output)
        assert GUARD in listing and "user_hook_probe" in listing, listing
        run = run_ok(door, "ascanct", "sample_x", 0, 0.2, 10, INTEG, timeout=120)
        assert "user hook ran in ascanct" in run.output, run.output
        # and the guard still refuses (before the user's hook, before any move)
        motors, events = still
        before = _positions(motors)
        size = beam.proxy("bl01/ct/scaler").BufferSize
        refused = door.run([str(a) for a in _too_many_points("ascanct", size)], timeout=120)
        assert refused.outcome == "exception"
        assert "ascanct refused before any motor moved" in refused.error_text
        run_ok(door, "mv", "sample_x", before["sample_x"])
    finally:
        run_ok(door, "udefgh", "user_hook_probe")
    listing = "\n".join(run_ok(door, "lsgh").output)
    assert GUARD in listing and "user_hook_probe" not in listing, listing


def test_killed_timing_unit_fails_the_scan_naming_it_then_scans_work(beam, door, continuous):  # noqa: F811
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
    killed = server_pid(beam, "TimingUnit/tg1")
    os.kill(killed, signal.SIGKILL)

    door.wait(run, timeout=60)
    assert run.outcome == "exception", (run.outcome, run.error_text)
    text = run.error_text
    assert "the synchronizer tg_train lost its train" in text, text
    assert "bl01/tim/tg1 stopped answering while the train of this acquisition ran" in text
    element = beam.proxy("triggergate/tgctrl/1")
    assert "bl01/tim/tg1 stopped answering" in element.LostTrain
    wait_until(lambda: motor.state() == S.ON, 20, "sample_x stopped")
    wait_until(lambda: not door.busy(), 20, "the Door ready (ON, or ALARM after an error)")
    wait_until(
        lambda: (
            supervisor_row(beam, "TimingUnit/tg1")["state"] == "RUNNING"
            and supervisor_row(beam, "TimingUnit/tg1")["pid"] != killed
        ),
        30,
        "the supervisor to restore TimingUnit/tg1",
    )
    # no Pool restart: the controller reconnects by itself
    deadline = time.monotonic() + 30
    while True:
        retry = door.run(["ascanct", "sample_x", "0", "0.2", "10", str(INTEG)], timeout=120)
        if retry.ok or time.monotonic() > deadline:
            break
    assert retry.ok, retry.error_text
    assert element.LostTrain == ""
    assert tg.PulsesSent == 11 and scaler.PointsTaken == 11
    data = last_entry(beam, f"ascanct sample_x 0.0 0.2 10 {INTEG}")
    for channel in ("ct_time", "i0", "diode"):
        values = list(data[channel])
        assert len(values) == 11 and not any(math.isnan(v) for v in values), (channel, values)
    assert list(data["i0"]) == [row[1] for row in _buffer(scaler)]
