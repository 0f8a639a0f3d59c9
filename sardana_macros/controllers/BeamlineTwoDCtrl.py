"""Sardana 2D channel over the suite's Detector.

Software synchronization (step scans, ``ct``): one frame per acquisition
(Snap with the integration time as exposure), the image as the value.

Hardware trigger (continuous scans, synchronization Trigger): the camera
takes one frame per pulse of the timing unit (TriggerMode EXTERNAL,
AcquisitionMode MULTIPLE, NumberOfFrames = repetitions x starts, exposure =
the integration time), started before the timing unit is armed; each read
returns the frames taken since the last one, read by number (ReadFrame),
each once and in order. Afterwards the camera is back on INTERNAL trigger.
The ROI controller over the same camera shares the acquisition
(``tango_link.TriggeredFrames``): the camera is set up and started once.
A gate is refused: the camera exposes for its ExposureTime from each
trigger's edge, it does not follow the gate's length (docs/triggers.md)."""

import time

from sardana.pool import AcqSynch
from sardana.pool.controller import DefaultValue, Description, TwoDController, Type

from sardana_macros.tango_link import (
    CAMERA_PROPERTIES,
    DeviceLink,
    TriggeredCamera,
    snap_once,
    triggered_frames,
)


class BeamlineTwoDController(TriggeredCamera, TwoDController):
    ctrl_properties = {
        "Device": {Type: str, Description: "The Detector device, e.g. bl01/det/cam1"},
        "LatencyTime": {
            Type: float,
            DefaultValue: 0.1,
            Description: "s between two acquisitions (start, readout); scans wait at least this",
        },
        **CAMERA_PROPERTIES,
    }
    MaxDevice = 1

    def __init__(self, inst, props, *args, **kwargs):
        TwoDController.__init__(self, inst, props, *args, **kwargs)
        self._latency_time = float(self.LatencyTime)  # GetCtrlPar('latency_time')
        self._synchronization = AcqSynch.SoftwareTrigger
        self.link = DeviceLink(self.Device)
        self.frames = triggered_frames(self.link)
        self._exposure = None
        self._acquisition_started = 0.0
        self._new = []

    def AddDevice(self, axis):
        pass

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
        self._new = []

    def StartAll(self):
        if self._hardware():
            self.frames.start(self)
            return
        snap_once(self.link, self._exposure, self._acquisition_started)

    def StartOne(self, axis, value=None):
        pass

    def StateOne(self, axis):
        if self._hardware():
            return self.frames.state()
        return self.link.state()

    def ReadAll(self):
        if self._hardware():
            self._new = self.frames.take(self)

    def ReadOne(self, axis):
        if self._hardware():
            new, self._new = self._new, []
            return new
        return self.link.read("Image")

    def AbortOne(self, axis):
        if self._hardware():
            self.frames.abort()
            return
        self.link.command("Stop")

    def GetAxisPar(self, axis, par):
        if par == "shape":
            return [int(self.link.read("Width")), int(self.link.read("Height"))]
        return super().GetAxisPar(axis, par)
