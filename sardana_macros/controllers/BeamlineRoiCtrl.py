"""Sardana counters over the camera's region of interest: axis 1 is the ROI
sum, 2 and 3 the intensity centroid (x, y). Counting takes one frame with the
integration time as exposure (the Detector's Snap), so the ROI values can be
used in any measurement group like counters."""

import time

from sardana import State
from sardana.pool.controller import CounterTimerController, DefaultValue, Description, Type

from sardana_macros.tango_link import DeviceDown, DeviceLink, snap_once

ATTRIBUTES = {1: "RoiSum", 2: "CentroidX", 3: "CentroidY"}


class BeamlineRoiController(CounterTimerController):
    ctrl_properties = {
        "Device": {Type: str, Description: "The Detector device, e.g. bl01/det/cam1"},
        "LatencyTime": {
            Type: float,
            DefaultValue: 0.1,
            Description: "s between two acquisitions (start, readout); scans wait at least this",
        },
    }
    MaxDevice = 3
    default_timer = None

    def __init__(self, inst, props, *args, **kwargs):
        CounterTimerController.__init__(self, inst, props, *args, **kwargs)
        self._latency_time = float(self.LatencyTime)  # GetCtrlPar('latency_time')
        self.link = DeviceLink(self.Device)
        self._exposure = None
        self._acquisition_started = 0.0
        self._values = {}
        self._state = (State.Unknown, f"{self.link.name}: not read yet")

    def AddDevice(self, axis):
        if axis not in ATTRIBUTES:
            raise ValueError(f"axis {axis}: 1 is RoiSum, 2 CentroidX, 3 CentroidY")

    def DeleteDevice(self, axis):
        pass

    def LoadOne(self, axis, value, repetitions, latency_time):
        self._exposure = float(value) if value > 0 else None

    def PreStartAll(self):
        self._acquisition_started = time.monotonic()

    def StartAll(self):
        snap_once(self.link, self._exposure, self._acquisition_started)

    def StartOne(self, axis, value=None):
        pass

    def StateAll(self):
        self._state = self.link.state()  # one read for the three axes

    def StateOne(self, axis):
        return self._state

    def ReadAll(self):
        names = list(ATTRIBUTES.values())
        try:
            values = self.link.call(
                "read " + ", ".join(names),
                lambda p: [a.value for a in p.read_attributes(names)],
            )
        except DeviceDown as exc:
            self._values = {axis: exc for axis in ATTRIBUTES}
            return
        self._values = {axis: float(v) for axis, v in zip(ATTRIBUTES, values, strict=True)}

    def ReadOne(self, axis):
        value = self._values.get(axis)
        if isinstance(value, Exception):
            raise value
        return value

    def AbortOne(self, axis):
        self.link.command("Stop")
