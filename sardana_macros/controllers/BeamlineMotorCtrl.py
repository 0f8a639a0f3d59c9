"""Sardana motor controller over the suite's Motor devices (both backends:
SMC serial axes and EPICS motor records look the same through Tango)."""

import tango
from sardana import State
from sardana.pool.controller import Description, MotorController, Type

from sardana_macros.tango_link import (
    DeviceDown,
    DeviceLink,
    DeviceRefused,
    refresh_element,
    split_devices,
)

#: s a motion setting waits for the axis to stop (a stop decelerates it)
SETTLE_TIMEOUT = 30.0


class BeamlineMotorController(MotorController):
    """Axis n is the n-th Tango device of the Devices property."""

    ctrl_properties = {
        "Devices": {
            Type: str,
            Description: "Comma-separated Motor devices; axis n is the n-th one",
        },
    }
    MaxDevice = 64

    def __init__(self, inst, props, *args, **kwargs):
        MotorController.__init__(self, inst, props, *args, **kwargs)
        self.links = [
            DeviceLink(d, on_recovered=self._refresher(axis))
            for axis, d in enumerate(split_devices(self.Devices), start=1)
        ]

    def _refresher(self, axis):
        return lambda: refresh_element(self, axis, "get_position")

    def SendToCtrl(self, text):
        """'refresh <axis>': make the Pool push the axis position again."""
        cmd, _, arg = str(text).partition(" ")
        if cmd == "refresh" and arg.strip().isdigit():
            refresh_element(self, int(arg), "get_position", delay=0.0)
            return f"refreshing axis {arg.strip()}"
        return "unknown request; try: refresh <axis>"

    def _link(self, axis):
        if not 1 <= axis <= len(self.links):
            raise ValueError(
                f"axis {axis} has no device: the Devices property lists {len(self.links)}"
            )
        return self.links[axis - 1]

    def AddDevice(self, axis):
        self._link(axis)
        # read the position once the element exists: a motor group made of
        # never-read motors (a mesh right after start) fails on None positions
        refresh_element(self, axis, "get_position", delay=1.0)

    def DeleteDevice(self, axis):
        pass

    def StateOne(self, axis):
        link = self._link(axis)
        state, status = link.state()
        switches = 0
        if state == State.Alarm:
            try:
                if link.read("HighLimitSwitch"):
                    switches |= MotorController.UpperLimitSwitch
                if link.read("LowLimitSwitch"):
                    switches |= MotorController.LowerLimitSwitch
            except DeviceDown as exc:
                return State.Fault, str(exc), 0
        return state, status, switches

    def ReadOne(self, axis):
        return self._link(axis).read("Position")

    def StartOne(self, axis, position):
        self._link(axis).write("Position", position)

    def AbortOne(self, axis):
        self._link(axis).command("Stop")

    def StopOne(self, axis):
        self._link(axis).command("Stop")

    def SetAxisPar(self, axis, name, value):
        name = name.lower()
        if name == "velocity":
            self._write_setting(axis, "Velocity", value)
        elif name in ("acceleration", "deceleration"):
            self._write_setting(axis, "Acceleration", value)
        # base_rate and step_per_unit: the device works in user units

    def _write_setting(self, axis, attribute, value):
        """Write a motion setting; refused while the axis moves, it is written
        once the axis has stopped: after a stop or an abort a scan puts the
        motor's own velocity back while the motor is still decelerating, and
        the refusal failed the scan (the Door in ALARM)."""
        link = self._link(axis)
        try:
            link.write(attribute, value)
        except DeviceRefused as exc:
            if "in state MOVING" not in str(exc):
                raise
            link.wait_not((tango.DevState.MOVING,), SETTLE_TIMEOUT)
            link.write(attribute, value)

    def GetAxisPar(self, axis, name):
        name = name.lower()
        if name == "velocity":
            return self._link(axis).read("Velocity")
        if name in ("acceleration", "deceleration"):
            return self._link(axis).read("Acceleration")
        if name == "base_rate":
            return 0.0
        if name == "step_per_unit":
            return 1.0
        raise ValueError(f"unknown axis parameter {name!r}")

    def DefinePosition(self, axis, position):
        self._link(axis).command("SetPosition", float(position))
