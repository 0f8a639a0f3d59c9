"""Sardana counters over the camera's region of interest: axis 1 is the ROI
sum, 2 and 3 the intensity centroid (x, y).

Software synchronization: counting takes one frame with the integration
time as exposure (the Detector's Snap), so the ROI values can be used in any
measurement group like counters.

Hardware trigger (continuous scans): one value per triggered frame,
computed from the frame read by number (ReadFrame) over the Detector's Roi
exactly as the device computes RoiSum, CentroidX and CentroidY (it has no
per-frame ROI values). The 2D controller over the same camera shares the
acquisition (``tango_link.TriggeredFrames``): the camera is set up and
started once and each frame read once (docs/triggers.md)."""

import time

from sardana import State
from sardana.pool.controller import CounterTimerController, DefaultValue, Description, Type

from sardana_macros.tango_link import (
    CAMERA_PROPERTIES,
    DeviceDown,
    DeviceLink,
    TriggeredCamera,
    snap_once,
    triggered_frames,
)
from tango_devices.detector.detector_logic import roi_stats

ATTRIBUTES = {1: "RoiSum", 2: "CentroidX", 3: "CentroidY"}


class BeamlineRoiController(TriggeredCamera, CounterTimerController):
    ctrl_properties = {
        "Device": {Type: str, Description: "The Detector device, e.g. bl01/det/cam1"},
        "LatencyTime": {
            Type: float,
            DefaultValue: 0.1,
            Description: "s between two acquisitions (start, readout); scans wait at least this",
        },
        **CAMERA_PROPERTIES,
    }
    MaxDevice = 3
    default_timer = None

    def __init__(self, inst, props, *args, **kwargs):
        CounterTimerController.__init__(self, inst, props, *args, **kwargs)
        self._latency_time = float(self.LatencyTime)  # GetCtrlPar('latency_time')
        self.link = DeviceLink(self.Device)
        self.frames = triggered_frames(self.link)
        self._exposure = None
        self._acquisition_started = 0.0
        self._values = {}
        self._state = (State.Unknown, f"{self.link.name}: not read yet")

    def AddDevice(self, axis):
        if axis not in ATTRIBUTES:
            raise ValueError(f"axis {axis}: 1 is RoiSum, 2 CentroidX, 3 CentroidY")

    def DeleteDevice(self, axis):
        pass

    def PrepareOne(self, axis, value, repetitions, latency, nb_starts):
        """Check a hardware-triggered acquisition before anything is armed
        or started (the camera is not touched)."""
        if self._hardware():
            self.frames.prepare(
                self, value, repetitions, latency, nb_starts, self.ReadoutTime, self.BufferFrames
            )

    def LoadOne(self, axis, value, repetitions, latency_time):
        if not self._hardware():
            self.frames.restore()  # after a hardware acquisition not put back
        self._exposure = float(value) if value > 0 else None

    def PreStartAll(self):
        self._acquisition_started = time.monotonic()

    def StartAll(self):
        if self._hardware():
            self.frames.start(self)
            return
        snap_once(self.link, self._exposure, self._acquisition_started)

    def StartOne(self, axis, value=None):
        pass

    def StateAll(self):
        if self._hardware():
            self._state = self.frames.state()
            return
        self._state = self.link.state()  # one read for the three axes

    def StateOne(self, axis):
        return self._state

    def ReadAll(self):
        if self._hardware():
            try:
                frames = self.frames.take(self)
            except DeviceDown as exc:
                self._values = {axis: exc for axis in ATTRIBUTES}
                return
            stats = [roi_stats(frame, self.frames.roi) for frame in frames]
            self._values = {
                1: [s.total for s in stats],
                2: [s.centroid_x for s in stats],
                3: [s.centroid_y for s in stats],
            }
            return
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
        value = self._values.get(axis, [] if self._hardware() else None)
        if isinstance(value, Exception):
            raise value
        if self._hardware():
            self._values[axis] = []  # each value once
        return value

    def AbortOne(self, axis):
        if self._hardware():
            self.frames.abort()
            return
        self.link.command("Stop")
