"""Sardana step scans: dead time per point with our controllers against
Sardana's own dummy controllers, on the same Pool in the same run.

Ours: the motor, counter/timer and ROI controllers over our Tango devices,
each device in its own server process talking to the virtual hardware.
Dummy: DummyMotorController + DummyCounterTimerController, inside the Pool.

The scan is ``ascan <motor> P P N t``: every point starts a motion (to the
same position, so no motor physics is timed), then an acquisition of ``t``
seconds, then the readout and the record. Dead time per point =
(scan time - N x t) / N, with the scan time Sardana itself reports. Each
scan runs several times, alternating ours and dummy; medians are compared.
Target: ours <= 1.1 x dummy.
"""

from __future__ import annotations

import re
import statistics
from datetime import timedelta

from bench.common import beamline

POINTS = 50
INTEG = 0.01
REPEATS = 5
DOOR = "bl01/sardana/door"
TAKING = re.compile(r"taking (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _run(door, *macro):
    run = door.run([str(m) for m in macro], timeout=300)
    if not run.ok:
        raise RuntimeError(f"{' '.join(map(str, macro))}: {run.outcome}: {run.error_text}")
    return run


def _scan_seconds(run) -> float:
    for line in reversed(run.info):
        m = TAKING.search(line)
        if m:
            h, mi, s = m.groups()
            return timedelta(hours=int(h), minutes=int(mi), seconds=float(s)).total_seconds()
    raise RuntimeError(f"no 'taking ...' in the scan's report: {run.info[-3:]}")


def _dead_time(door, motor: str, mntgrp: str) -> float:
    _run(door, "senv", "ActiveMntGrp", mntgrp)
    pos = 1.0
    _run(door, "mv", motor, pos)
    run = _run(door, "ascan", motor, pos, pos, POINTS - 1, INTEG)
    return (_scan_seconds(run) - POINTS * INTEG) / POINTS


def dead_times(door) -> tuple[list[float], list[float]]:
    """Dead times per point (s) of REPEATS scans each: ours, and Sardana's
    dummy controllers (defined here in the Pool)."""
    for macro in (
        ("defctrl", "DummyMotorController", "bench_dmotctrl"),
        ("defelem", "bench_dmot", "bench_dmotctrl", 1),
        ("defctrl", "DummyCounterTimerController", "bench_dctctrl"),
        ("defelem", "bench_dct1", "bench_dctctrl", 1),
        ("defelem", "bench_dct2", "bench_dctctrl", 2),
        ("defelem", "bench_dct3", "bench_dctctrl", 3),
        ("defmeas", "bench_mg_dummy", "bench_dct1", "bench_dct2", "bench_dct3"),
    ):
        _run(door, *macro)
    ours, dummy = [], []
    _dead_time(door, "sample_x", "mg_counters")  # warm up both
    _dead_time(door, "bench_dmot", "bench_mg_dummy")
    for _ in range(REPEATS):
        ours.append(_dead_time(door, "sample_x", "mg_counters"))
        dummy.append(_dead_time(door, "bench_dmot", "bench_mg_dummy"))
    _run(door, "senv", "ActiveMntGrp", "mg_bl01")
    return ours, dummy


def run() -> None:
    from tango_devices.common.door import DoorClient

    with beamline() as bench:
        door = DoorClient(f"tango://{bench.tango_host}/{DOOR}")
        try:
            _run(door, "shutter_open")
            ours, dummy = dead_times(door)
        finally:
            door.close()
    o, d = statistics.median(ours), statistics.median(dummy)
    print(
        f"ascan of {POINTS} points x {INTEG * 1000:.0f} ms, no motion: dead time per point "
        f"(median of {REPEATS})"
    )
    print(
        f"  our controllers (sample_x + scaler: ct_time, i0, diode): {o * 1000:.1f} ms "
        f"(min {min(ours) * 1000:.1f}, max {max(ours) * 1000:.1f})"
    )
    print(
        f"  Sardana dummy controllers (motor + 3 counters):          {d * 1000:.1f} ms "
        f"(min {min(dummy) * 1000:.1f}, max {max(dummy) * 1000:.1f})"
    )
    print(f"  ratio ours / dummy: {o / d:.2f} (target <= 1.1)")
