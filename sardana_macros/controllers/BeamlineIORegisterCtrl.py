"""Sardana IO registers over the suite's two-position devices (shutter, valve):
value 1 is open, 0 is closed. Writing waits for the travel to start; the
element is Moving while the device is MOVING."""

import tango
from sardana.pool.controller import Description, IORegisterController, Type

from sardana_macros.tango_link import DeviceLink, refresh_element, split_devices


class BeamlineIORegisterController(IORegisterController):
    ctrl_properties = {
        "Devices": {
            Type: str,
            Description: "Comma-separated devices with Open/Close commands; axis n is the n-th",
        },
    }
    MaxDevice = 32

    def __init__(self, inst, props, *args, **kwargs):
        IORegisterController.__init__(self, inst, props, *args, **kwargs)
        self.links = [
            DeviceLink(d, on_recovered=self._refresher(axis))
            for axis, d in enumerate(split_devices(self.Devices), start=1)
        ]

    def _refresher(self, axis):
        return lambda: refresh_element(self, axis, "get_value")

    def _link(self, axis):
        if not 1 <= axis <= len(self.links):
            raise ValueError(
                f"axis {axis} has no device: the Devices property lists {len(self.links)}"
            )
        return self.links[axis - 1]

    def AddDevice(self, axis):
        self._link(axis)

    def DeleteDevice(self, axis):
        pass

    def StateOne(self, axis):
        return self._link(axis).state()

    def ReadOne(self, axis):
        state = self._link(axis).call("State", lambda p: p.state())
        return 1 if state == tango.DevState.OPEN else 0

    def WriteOne(self, axis, value):
        if int(value) not in (0, 1):
            raise ValueError(f"value {value!r}: 1 opens, 0 closes")
        self._link(axis).command("Open" if int(value) == 1 else "Close")
