"""Continuous scans against Sardana's dummy TriggerGate, and the same
positions as a step scan, on one beamline in one run (docs/benchmarks.md).

1. ``ascanct sample_x 0 3 1000 0.005`` on ``mg_cont`` (the timing unit tg1
   gating the scaler's buffer): every point checked against the unit's own
   record of the pulses it sent and the scaler's buffer (none missing,
   repeated or NaN, the file's counts the scaler's), and its time against
   the ideal: points x period + the motor's acceleration and deceleration.
2. The same scan with Sardana's DummyTriggerGateController and
   DummyCounterTimerController (3 counters, gated by the dummy element),
   created in the same Pool, over the same motor.
3. 10,000 points at 1 ms on ``mg_cont``: checked the same way; its time.
4. The same 1,001 positions as a step scan (``ascan`` on ``mg_counters``).
5. The step-scan dead time per point, ours against the dummy (bench sardana).

Each continuous scan starts with the motor already at its pre-start position
(the one ``ascanct`` prints in its motor table), so the time Sardana reports
is the scan's: ramps, points, the last readout and the scan's own set-up.
Scans run ROUNDS times, alternating ours and the dummy; medians are given.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from datetime import timedelta

import h5py

from bench import bench_sardana
from bench.common import beamline

MOTOR = "sample_x"
START, END = 0.0, 3.0
FAST = (1000, 0.005)  # intervals, integration time (s)
FASTEST = (10000, 0.001)
ROUNDS = 3
DOOR = "bl01/sardana/door"
TAKING = re.compile(r"taking (\d+):(\d\d):(\d\d(?:\.\d+)?)")
PAGE = 10_000  # ReadPulses and ReadBuffer give at most this many a call


def _run(door, *macro, timeout=900):
    run = door.run([str(m) for m in macro], timeout=timeout)
    if not run.ok:
        raise RuntimeError(f"{' '.join(map(str, macro))}: {run.outcome}: {run.error_text}")
    return run


def _taking(run) -> float:
    for line in reversed(run.info + run.output):
        m = TAKING.search(line)
        if m:
            h, mi, s = m.groups()
            return timedelta(hours=int(h), minutes=int(mi), seconds=float(s)).total_seconds()
    raise RuntimeError(f"no 'taking ...' in the scan's report: {run.info[-3:]}")


def _motor_row(run) -> tuple[float, float, float]:
    """(acceleration s, deceleration s, pre-start position) from ascanct's
    motor table."""
    for line in run.output:
        cells = line.split()
        if len(cells) == 6 and cells[0] == MOTOR:
            try:
                _vel, acc, dec, start, _end = (float(c) for c in cells[1:])
            except ValueError:
                continue
            return acc, dec, start
    raise RuntimeError(f"no motor table row for {MOTOR} in: {run.output[:12]}")


def _paged(read, total: int) -> tuple[list, list]:
    """Every record of a [first, n, ...] command, page by page: (rows, n per page)."""
    rows, first = [], 0
    while first < total:
        out = read([first, min(PAGE, total - first)])
        got_first, n = int(out[0]), int(out[1])
        if got_first != first or n == 0:
            raise RuntimeError(f"asked from {first}, got {n} from {got_first}")
        rows.append(out)
        first += n
    return rows, first


def _pulses(tg, total: int) -> list[float]:
    pages, _ = _paged(tg.ReadPulses, total)
    times = []
    for out in pages:
        n = int(out[1])
        times.extend(float(t) for t in out[2 : 2 + n])
    return times


def _buffer(scaler, total: int) -> list[list[float]]:
    pages, _ = _paged(scaler.ReadBuffer, total)
    rows = []
    for out in pages:
        n = int(out[1])
        width = (len(out) - 2) // n
        rows.extend(list(out[2 + i * width : 2 + (i + 1) * width]) for i in range(n))
    return rows


def _last_entry(bench, title: str) -> dict:
    path = bench.run_dir / "scans" / "bl01_scans.h5"
    with h5py.File(path, "r") as f:
        names = [k for k in f if f[k].attrs.get("NX_class") in ("NXentry", b"NXentry")]
        names.sort(key=lambda k: int("".join(c for c in k if c.isdigit()) or 0))
        for name in reversed(names):
            if f[name]["title"][()].decode().startswith(title):
                m = f[name]["measurement"]
                return {k: m[k][()] for k in m if isinstance(m[k], h5py.Dataset)}
    raise RuntimeError(f"no scan titled {title!r} in {path}")


def _check_points(bench, title: str, points: int, integ: float) -> list[str]:
    """What is wrong with the last continuous scan, point by point, against
    the timing unit's record and the scaler's buffer (empty: nothing)."""
    tg, scaler = bench.proxy("bl01/tim/tg1"), bench.proxy("bl01/ct/scaler")
    problems = []
    if tg.PulsesSent != points:
        problems.append(f"the unit sent {tg.PulsesSent} pulses for {points} points")
    times = _pulses(tg, min(int(tg.PulsesSent), points))
    period = float(tg.Period)
    late = [
        i
        for i, (a, b) in enumerate(zip(times, times[1:], strict=False))
        if abs(b - a - period) > 2e-6
    ]
    if late:
        problems.append(
            f"{len(late)} pulse gaps differ from the period {period} s (first at {late[0]})"
        )
    if scaler.PointsTaken != points or scaler.MissedGates or scaler.OverflowGates:
        problems.append(
            f"scaler: {scaler.PointsTaken} points taken, {scaler.MissedGates} gates missed, "
            f"{scaler.OverflowGates} overflowed"
        )
    rows = _buffer(scaler, min(int(scaler.PointsTaken), points))
    data = _last_entry(bench, title)
    for channel in ("ct_time", "i0", "diode"):
        values = list(data.get(channel, []))
        if len(values) != points:
            problems.append(f"file: {channel} has {len(values)} of {points} points")
        nans = sum(1 for v in values if math.isnan(v))
        if nans:
            problems.append(f"file: {channel} has {nans} NaN")
    for column, name in ((1, "i0"), (2, "diode")):
        wrong = [
            i
            for i, (v, row) in enumerate(zip(data.get(name, []), rows, strict=False))
            if v != row[column]
        ]
        if wrong:
            problems.append(
                f"file: {name} differs from the scaler's buffer at {len(wrong)} points "
                f"(first {wrong[0]})"
            )
    gates = [i for i, v in enumerate(data.get("ct_time", [])) if abs(v - integ) > 1e-6]
    if gates:
        problems.append(f"file: {len(gates)} gates not {integ} s long (first at {gates[0]})")
    index = list(data.get("point_nb", range(points)))
    if index != list(range(points)):
        problems.append("file: point numbers not 0..N-1 in order (a point repeated or missing)")
    return problems


def _continuous(bench, door, group: str, intervals: int, integ: float) -> dict:
    """One ascanct from the pre-start position: its figures."""
    _run(door, "senv", "ActiveMntGrp", group)
    warm = _run(door, "ascanct", MOTOR, START, END, intervals, integ)
    acc, dec, pre_start = _motor_row(warm)
    _run(door, "mv", MOTOR, pre_start)
    t0 = time.monotonic()
    run = _run(door, "ascanct", MOTOR, START, END, intervals, integ)
    wall = time.monotonic() - t0
    points = intervals + 1
    latency = float(bench.proxy(f"mntgrp/pool_pool_bl01_1/{group}").LatencyTime)
    ideal = points * (integ + latency) + acc + dec
    result = {"taking": _taking(run), "wall": wall, "ideal": ideal, "latency": latency}
    if group == "mg_cont":
        result["problems"] = _check_points(
            bench, f"ascanct {MOTOR} {START} {END} {intervals} {integ}", points, integ
        )
    return result


def _define_dummies(bench, door) -> None:
    for macro in (
        ("defctrl", "DummyTriggerGateController", "bench_dtgctrl"),
        ("defelem", "bench_dtg", "bench_dtgctrl", 1),
        ("defctrl", "DummyCounterTimerController", "bench_gctctrl"),
        ("defelem", "bench_gct1", "bench_gctctrl", 1),
        ("defelem", "bench_gct2", "bench_gctctrl", 2),
        ("defelem", "bench_gct3", "bench_gctctrl", 3),
        ("defmeas", "bench_mg_dcont", "bench_gct1", "bench_gct2", "bench_gct3"),
    ):
        _run(door, *macro)
    import tango

    db = tango.Database(*bench.tango_host.split(":"))
    (ctrl,) = db.get_device_exported("controller/*/bench_gctctrl")
    bench.proxy(ctrl).write_attribute("Synchronizer", "bench_dtg")
    _run(door, "senv", "ActiveMntGrp", "bench_mg_dcont")
    _run(door, "set_meas_conf", "synchronizer", "bench_dtg")
    _run(door, "set_meas_conf", "synchronization", "Gate")


def _median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def run() -> None:
    from tango_devices.common.door import DoorClient

    with beamline() as bench:
        door = DoorClient(f"tango://{bench.tango_host}/{DOOR}")
        try:
            _run(door, "shutter_open")
            _define_dummies(bench, door)
            ours, dummy = [], []
            for _ in range(ROUNDS):
                ours.append(_continuous(bench, door, "mg_cont", *FAST))
                dummy.append(_continuous(bench, door, "bench_mg_dcont", *FAST))
            fastest = _continuous(bench, door, "mg_cont", *FASTEST)

            _run(door, "senv", "ActiveMntGrp", "mg_counters")
            _run(door, "mv", MOTOR, START)
            t0 = time.monotonic()
            step = _run(door, "ascan", MOTOR, START, END, FAST[0], FAST[1], timeout=3600)
            step_wall = time.monotonic() - t0
            step_taking = _taking(step)

            dead_ours, dead_dummy = (statistics.median(d) for d in bench_sardana.dead_times(door))
            _run(door, "senv", "ActiveMntGrp", "mg_bl01")
        finally:
            door.close()

    n, integ = FAST
    print(f"ascanct {MOTOR} {START:g} {END:g} {n} {integ} ({n + 1} points), median of {ROUNDS}:")
    for label, results in (
        ("ours: tg1 + scaler buffer (mg_cont)", ours),
        ("Sardana dummy TG + 3 dummy counters", dummy),
    ):
        print(
            f"  {label}: {_median(results, 'taking'):.2f} s as Sardana reports "
            f"(wall {_median(results, 'wall'):.2f} s), ideal {_median(results, 'ideal'):.2f} s "
            f"(latency {results[0]['latency'] * 1e6:.0f} us): "
            f"ratio {_median(results, 'taking') / _median(results, 'ideal'):.3f} (target <= 1.1)"
        )
    problems = [p for r in ours for p in r["problems"]]
    print(
        "  points checked against tg1's record and the scaler's buffer: "
        + ("; ".join(problems) or "all good")
    )
    n2, integ2 = FASTEST
    print(
        f"ascanct of {n2 + 1} points at {integ2 * 1000:g} ms: {fastest['taking']:.2f} s "
        f"(ideal {fastest['ideal']:.2f} s, ratio {fastest['taking'] / fastest['ideal']:.3f}); "
        f"points: {'; '.join(fastest['problems']) or 'all good'}"
    )
    print(
        f"the same {n + 1} positions as a step scan (ascan, mg_counters): {step_taking:.1f} s "
        f"(wall {step_wall:.1f} s): continuous is "
        f"{step_taking / _median(ours, 'taking'):.1f}x faster"
    )
    print(
        f"step-scan dead time per point: ours {dead_ours * 1000:.1f} ms, dummy "
        f"{dead_dummy * 1000:.1f} ms: ratio {dead_ours / dead_dummy:.2f} (target <= 1.1)"
    )
