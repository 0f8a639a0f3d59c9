"""Sardana 2D channel over the suite's Detector: one frame per acquisition
(Snap with the integration time as exposure), the image as the value."""

import time

from sardana.pool.controller import DefaultValue, Description, TwoDController, Type

from sardana_macros.tango_link import DeviceLink, snap_once


class BeamlineTwoDController(TwoDController):
    ctrl_properties = {
        "Device": {Type: str, Description: "The Detector device, e.g. bl01/det/cam1"},
        "LatencyTime": {
            Type: float,
            DefaultValue: 0.1,
            Description: "s between two acquisitions (start, readout); scans wait at least this",
        },
    }
    MaxDevice = 1

    def __init__(self, inst, props, *args, **kwargs):
        TwoDController.__init__(self, inst, props, *args, **kwargs)
        self._latency_time = float(self.LatencyTime)  # GetCtrlPar('latency_time')
        self.link = DeviceLink(self.Device)
        self._exposure = None
        self._acquisition_started = 0.0

    def AddDevice(self, axis):
        pass

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

    def StateOne(self, axis):
        return self.link.state()

    def ReadOne(self, axis):
        return self.link.read("Image")

    def AbortOne(self, axis):
        self.link.command("Stop")

    def GetAxisPar(self, axis, par):
        if par == "shape":
            return [int(self.link.read("Width")), int(self.link.read("Height"))]
        return super().GetAxisPar(axis, par)
