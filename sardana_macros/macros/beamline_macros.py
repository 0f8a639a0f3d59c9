"""Experiment macros for the demo beamline bl01.

Every macro declares its parameters (param_def) and, in ``hints["needs"]``,
the Tango devices it needs: device names, or "@param" for a parameter whose
value is an element (a motor) whose device is needed. The experiment queue
checks that they answer before it starts an item.
"""

import time

import tango
from sardana.macroserver.macro import Macro, Type
from sardana.macroserver.msexception import UnknownEnv

from sardana_macros.analysis import FitError, fit_gaussian

SHUTTER = "bl01/shutter/fe"
SCALER = "bl01/ct/scaler"
CAMERA = "bl01/det/cam1"
SUPERVISOR = "bl01/sys/supervisor"


def _env(macro, name, default):
    """An environment variable, or ``default`` when it is not set."""
    try:
        return macro.getEnv(name)
    except UnknownEnv:
        return default


def _wait_state(proxy, wanted, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = proxy.state()
        if state in wanted:
            return state
        if state in (tango.DevState.FAULT, tango.DevState.DISABLE):
            raise RuntimeError(f"{what}: {proxy.dev_name()} is {state}: {proxy.status()}")
        time.sleep(0.02)
    raise RuntimeError(f"{what}: {proxy.dev_name()} did not reach {wanted} within {timeout:g} s")


def _channel_values(data, name):
    """The values of the channel (or motor) ``name`` (alias or full name) in a
    scan's records; the scan's column descriptions map labels to record keys."""
    records = list(data.records)
    if not records:
        raise RuntimeError("the scan recorded no point")
    keys = list(records[0].data)
    try:
        columns = data.getEnvironValue("datadesc")
    except Exception:
        columns = []
    wanted = name.lower()
    for col in columns:
        label, key = str(getattr(col, "label", "")), getattr(col, "name", None)
        if wanted in (label.lower(), str(key).lower()) and key in keys:
            return [rec.data[key] for rec in records]
    if name in keys:
        return [rec.data[name] for rec in records]
    labels = [str(getattr(c, "label", c)) for c in columns] or [str(k) for k in keys]
    raise RuntimeError(f"no channel {name!r} in the scan; recorded: {', '.join(labels)}")


class align_peak(Macro):
    """Scan a motor over a peak, fit a Gaussian to a counter, move the motor to
    the centre; report the centre and the width (FWHM). Refuses to move when no
    peak can be fitted."""

    hints = {"needs": ["@motor", SCALER, SHUTTER]}
    param_def = [
        ["motor", Type.Moveable, None, "Motor to scan"],
        ["start", Type.Float, None, "Start position"],
        ["end", Type.Float, None, "End position"],
        ["npoints", Type.Integer, None, "Number of points (at least 5)"],
        ["int_time", Type.Float, None, "Integration time per point (s)"],
        ["counter", Type.String, "diode", "Counter to fit"],
    ]
    result_def = [
        ["center", Type.Float, None, "Peak centre (motor position)"],
        ["fwhm", Type.Float, None, "Full width at half maximum"],
    ]

    def prepare(self, motor, start, end, npoints, int_time, counter):
        if npoints < 5:
            raise ValueError(f"npoints must be at least 5 to fit a peak, not {npoints}")
        if int_time <= 0:
            raise ValueError(f"int_time must be positive, not {int_time}")

    def run(self, motor, start, end, npoints, int_time, counter):
        scan, _ = self.createMacro("ascan", motor, start, end, npoints - 1, int_time)
        self.runMacro(scan)
        x = _channel_values(scan.data, motor.getName())
        y = _channel_values(scan.data, counter)
        try:
            fit = fit_gaussian(x, y)
        except FitError as exc:
            raise RuntimeError(f"align_peak: {exc}; {motor.getName()} was not moved") from None
        self.output(
            f"{motor.getName()}: peak of {counter} at {fit.center:.6g}, FWHM {fit.fwhm:.4g}, "
            f"height {fit.amplitude:.4g} over {fit.offset:.4g}"
        )
        self.execMacro("mv", motor, fit.center)
        return fit.center, fit.fwhm


class shutter_open(Macro):
    """Open the front-end shutter and wait until it is open (fails naming the
    interlock if one is active)."""

    hints = {"needs": [SHUTTER]}
    param_def = [["timeout", Type.Float, 10.0, "Seconds to wait for the shutter"]]

    def run(self, timeout):
        shutter = tango.DeviceProxy(_env(self, "Shutter", SHUTTER))
        if shutter.state() == tango.DevState.DISABLE:
            raise RuntimeError(f"cannot open the shutter: {shutter.status()}")
        shutter.Open()
        _wait_state(shutter, (tango.DevState.OPEN,), timeout, "shutter_open")
        self.output("shutter open")


class shutter_close(Macro):
    """Close the front-end shutter and wait until it is closed."""

    hints = {"needs": [SHUTTER]}
    param_def = [["timeout", Type.Float, 10.0, "Seconds to wait for the shutter"]]

    def run(self, timeout):
        shutter = tango.DeviceProxy(_env(self, "Shutter", SHUTTER))
        shutter.Close()
        _wait_state(
            shutter, (tango.DevState.CLOSE, tango.DevState.DISABLE), timeout, "shutter_close"
        )
        self.output("shutter closed")


class acquire_images(Macro):
    """Acquire n camera frames with the given exposure, recorded (with the ROI
    statistics) in the scan file like any scan (a timescan on mg_cam)."""

    hints = {"needs": [CAMERA, SCALER]}
    param_def = [
        ["n", Type.Integer, None, "Number of frames (at least 1)"],
        ["exposure", Type.Float, None, "Exposure time per frame (s)"],
    ]

    def prepare(self, n, exposure):
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        if not 0 < exposure <= 60:
            raise ValueError(f"exposure must be in (0, 60] s, not {exposure}")

    def run(self, n, exposure):
        previous = self.getEnv("ActiveMntGrp")
        self.setEnv("ActiveMntGrp", _env(self, "ImageMntGrp", "mg_cam"))
        try:
            self.execMacro("timescan", n, exposure)
        finally:
            self.setEnv("ActiveMntGrp", previous)
        self.output(f"{n} frame(s) of {exposure:g} s recorded")


class check_beamline(Macro):
    """Check that every device of the beamline answers and is healthy; fails
    naming each device that is not (FAULT, not answering), warns about ALARM
    and DISABLE."""

    hints = {"needs": []}
    param_def = []

    def run(self):
        import json

        report = json.loads(tango.DeviceProxy(SUPERVISOR).Report)
        bad, warn = [], []
        for server in report["servers"]:
            for device in server["devices"]:
                try:
                    proxy = tango.DeviceProxy(device)
                    proxy.set_timeout_millis(1500)
                    state = proxy.state()
                except tango.DevFailed as exc:
                    bad.append(f"{device}: does not answer ({exc.args[0].desc.strip()[:80]})")
                    continue
                if state == tango.DevState.FAULT:
                    bad.append(f"{device}: FAULT: {proxy.status()}")
                elif state in (tango.DevState.ALARM, tango.DevState.DISABLE):
                    warn.append(f"{device}: {state}: {proxy.status()}")
                else:
                    self.output(f"{device}: {state}")
        for line in warn:
            self.warning(line)
        if bad:
            raise RuntimeError("check_beamline: unhealthy devices:\n" + "\n".join(bad))
        self.output("check_beamline: every device answers and none is in FAULT")
