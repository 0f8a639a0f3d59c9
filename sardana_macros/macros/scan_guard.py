"""The beamline's general hook of continuous scans.

``continuous_scan_guard`` is registered by the MacroServer's environment
(db_config/sardana/bl01.yaml: ``_GeneralHooks``, next to any hook a user
defines with ``defgh``) at "post-configuration", a place only Sardana's
continuous scans have (``ascanct``, ``a2scanct``, ``dscanct``, ``meshct``,
...; step scans and ``ct`` never run it). There the scan has set the group's
synchronization description and moveable and has not moved anything yet:

- a scan the hardware cannot take is refused now, with the reason;
- the scan gets a "post-scan" hook of its own (``Hookable.appendHook``) that
  fails it, once its data are written, when a synchronizer of its group lost
  its train (the element's ``LostTrain``, set by BeamlineTriggerGateCtrl when
  the timing unit stops answering while its train runs): Sardana's
  continuous scans do not look at the synchronizer's state.

docs/triggers.md.
"""

import contextlib
import json
import weakref

import tango
from sardana.macroserver.macro import Macro

from sardana_macros.scan_checks import (
    first_reason,
    group_refusal,
    scan_velocities,
    speed_refusal,
)

#: set on the scan macro: the waypoints (meshct: rows) the guard has seen
SEEN = "_continuous_scan_guard_waypoints"


def _scan_and_group(macro):
    """(the continuous scan running the hook, its measurement group), or
    (None, None) outside a continuous scan."""
    scan = macro.getParentMacro()
    gscan = getattr(scan, "_gScan", None)
    group = getattr(gscan, "measurement_group", None)
    if scan is None or group is None or not hasattr(gscan, "acq_duration"):
        return None, None
    return scan, group


def _lost_trains(group):
    """What each hardware synchronizer of ``group`` says about the train of
    its last acquisition (its LostTrain, where it has one): [(name, text)]."""
    try:
        proxy = group.getDeviceProxy() if hasattr(group, "getDeviceProxy") else group
        config = json.loads(proxy.read_attribute("Configuration").value)
    except Exception:
        return []
    names = set()
    for ctrl in (config.get("controllers") or {}).values():
        synchronizer = ctrl.get("synchronizer") if isinstance(ctrl, dict) else None
        if isinstance(synchronizer, str) and "/" in synchronizer:
            names.add(synchronizer)
    lost = []
    for name in sorted(names):
        try:
            element = tango.DeviceProxy(name)
            element.set_timeout_millis(3000)
            text = element.read_attribute("LostTrain").value
        except tango.DevFailed:
            continue  # no LostTrain (another controller), or the Pool not answering
        if text:
            with contextlib.suppress(tango.DevFailed):
                name = element.alias()  # tg_train
            lost.append((name, str(text)))
    return lost


def _lost_message(scan, lost):
    name, text = lost[0]
    return f"{scan.getName()}: the synchronizer {name} lost its train: {text}"


class _EndCheck:
    """The scan's own post-scan hook: fails a scan that ended normally when
    a synchronizer lost its train (after Sardana wrote every record it
    got); after a stop, an abort or an error it only warns."""

    def __init__(self, scan, group):
        self._scan = weakref.ref(scan)
        self._group = group

    def __call__(self):
        scan = self._scan()
        if scan is None:
            return
        lost = _lost_trains(self._group)
        if not lost:
            return
        message = _lost_message(scan, lost)
        env = getattr(getattr(scan, "_gScan", None), "_env", {})
        if str(env.get("endstatus", "")) not in ("0", "Normal"):
            scan.warning(message)
            return
        raise RuntimeError(message)


def _descriptions(exc):
    """The descriptions of an error (each level of a Tango DevFailed)."""
    descs = [getattr(err, "desc", "") for err in getattr(exc, "args", ())]
    descs = [d for d in descs if isinstance(d, str) and d]
    return descs or [str(exc)]


class continuous_scan_guard(Macro):
    """General hook of continuous scans (post-configuration): prepares the
    measurement group at once, so every controller's own checks (the scaler's
    dead time and buffer size, the synchronizer's inputs) refuse a bad scan
    before the motors move to the start position, and tries each motor's scan
    velocity on the motor. Does nothing outside a continuous scan."""

    param_def = []

    def run(self):
        scan, group = _scan_and_group(self)
        if scan is None:
            self.debug("continuous_scan_guard: not inside a continuous scan, nothing to check")
            return
        first = not getattr(scan, SEEN, 0)
        setattr(scan, SEEN, getattr(scan, SEEN, 0) + 1)
        if not first:
            # the next row of a meshct: the last row's train must have been whole
            lost = _lost_trains(group)
            if lost:
                raise RuntimeError(_lost_message(scan, lost))
        name = scan.getName()
        self._check_group(name, group)
        self._check_speeds(name, scan, scan._gScan)
        if first:
            scan.appendHook((_EndCheck(scan, group), ["post-scan"]))

    def _check_group(self, name, group):
        # what the scan does after the move, done now: the same Prepare (the
        # group keeps nothing from it; the scan prepares again before it starts)
        try:
            group.setNbStarts(1)
            group.prepare()
        except Exception as exc:
            reason = first_reason(_descriptions(exc))
            raise RuntimeError(group_refusal(name, group.getName(), reason)) from None

    def _check_speeds(self, name, scan, gscan):
        motors = list(getattr(scan, "motors", []))
        physical = {m.getName(): m for m in getattr(gscan, "_physical_moveables", [])}
        try:
            velocities = scan_velocities(
                list(scan.starts),
                list(scan.finals),
                int(scan.nr_interv),
                bool(getattr(gscan, "do_last_point", True)),
                float(gscan.acq_duration),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            self.debug("continuous_scan_guard: velocities not checked: %s", exc)
            return
        for motor, velocity in zip(motors, velocities, strict=False):
            # a pseudo motor's physical motors move at other speeds: Sardana
            # tries those itself when it configures the motion
            moveable = physical.get(motor.getName())
            if moveable is None or velocity <= 0:
                continue
            self._try_velocity(name, moveable, velocity)

    def _try_velocity(self, name, motor, velocity):
        """Set the velocity and put the motor's back: refused if the motor
        (its device, its controller) refuses it."""
        before = motor.getVelocity(force=True)
        try:
            motor.setVelocity(velocity)
        except Exception as exc:
            reason = first_reason(_descriptions(exc))
            raise RuntimeError(speed_refusal(name, motor.getName(), velocity, reason)) from None
        motor.setVelocity(before)
