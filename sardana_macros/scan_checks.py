"""Checks of a continuous scan before anything moves (no Tango here).

Sardana's continuous scans (``ascanct``, ``dscanct``, ``a2scanct``,
``meshct``, ...) configure the measurement group, then move the motors to
the start position, and only then prepare the group: a scan the scaler
cannot take was refused after the motors had moved. The general hook
``continuous_scan_guard`` (sardana_macros/macros/scan_guard.py) runs at
"post-configuration", before that move: it prepares the group at once (the
controllers' own checks, e.g. the scaler's dead time and buffer size in
``BeamlineCounterTimerCtrl.PrepareOne``, so no limit is repeated here) and
tries each motor's scan velocity on the motor. This module holds what those
checks compute and say. docs/triggers.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence


def scan_velocities(
    starts: Sequence[float],
    finals: Sequence[float],
    nr_interv: int,
    do_last_point: bool,
    active_time: float,
) -> list[float]:
    """The constant velocity of each motor in one waypoint of a continuous
    scan, as Sardana's CTScan computes it (``MotionPath`` with an active
    time): the range, one interval further when the last point is taken at
    constant velocity too, over the time every point takes."""
    if active_time <= 0 or not math.isfinite(active_time):
        raise ValueError(f"the scan's active time must be positive, not {active_time!r}")
    extend = 1.0 + 1.0 / abs(nr_interv) if do_last_point and nr_interv else 1.0
    return [abs(f - s) * extend / active_time for s, f in zip(starts, finals, strict=True)]


#: "ValueError: ", "sardana_macros.tango_link.DeviceRefused: ": the name of
#: the exception class before the reason in a Python error passed on by Tango
_CLASS_PREFIX = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception|Refused|Down): ")


def first_reason(descriptions: Iterable[str]) -> str:
    """The reason worth showing among the descriptions of an error chain
    (each level of a Tango DevFailed): the first one that carries a Python
    exception's message (a controller's refusal, passed on by the Pool),
    without the exception's class name; else the first description."""
    lines = [d.strip() for d in descriptions if d and d.strip()]
    if not lines:
        return "no reason given"
    for text in lines:
        for line in text.splitlines():
            found = list(_CLASS_PREFIX.finditer(line))
            if found:
                reason = line[found[-1].end() :].strip()
                if reason:
                    return reason
    return lines[0].splitlines()[0].strip()


def group_refusal(scan: str, group: str, reason: str) -> str:
    """The message of a scan refused when its measurement group was prepared."""
    return (
        f"{scan} refused before any motor moved: measurement group {group} cannot take "
        f"this scan: {reason}"
    )


def speed_refusal(scan: str, motor: str, velocity: float, reason: str) -> str:
    """The message of a scan refused because a motor cannot move at its speed."""
    return (
        f"{scan} refused before any motor moved: {motor} cannot move at {velocity:g} "
        f"units/s, the speed this scan needs ({reason}); scan a shorter range, more "
        "points, or a longer integration time"
    )
