"""Sardana TriggerGate controller over the suite's TimingUnit device (bl01/tim/tg1).

Axis 1 is the unit's pulse train. Sardana hands the controller a
synchronization description (one group: delay, active and total time,
repeats); the controller loads it as a time train (``LoadTrain``: delay,
period = total, width = active, count = repeats), arms the unit when the
acquisition starts (``Arm``: the unit checks the train against the scaler
and camera it drives, which Sardana has armed by then) and starts it
(``Start``). A train the unit refuses fails the acquisition with the
unit's reason and fix. docs/triggers.md.
"""

import json

import tango
from sardana import State
from sardana.pool.controller import Description, TriggerGateController, Type
from sardana.pool.pooldefs import SynchDomain, SynchParam

from sardana_macros.tango_link import DeviceDown, DeviceLink

#: the unit's states as Sardana sees a trigger/gate element: armed or
#: sending pulses is Moving (the synchronization runs until it is On again)
UNIT_STATES = {
    tango.DevState.ON: State.On,
    tango.DevState.STANDBY: State.Moving,
    tango.DevState.RUNNING: State.Moving,
    tango.DevState.FAULT: State.Fault,
    tango.DevState.INIT: State.Init,
}


def time_train(description) -> dict:
    """The TimingUnit's LoadTrain for a Sardana synchronization description
    (a list of groups keyed by SynchParam, values by SynchDomain)."""
    groups = list(description)
    if len(groups) != 1:
        raise ValueError(
            f"the timing unit sends one equidistant train; this synchronization has "
            f"{len(groups)} groups: use one (same active and total time for every point)"
        )
    group = groups[0]

    def seconds(param, default=None):
        value = group.get(param, {})
        if isinstance(value, dict):
            value = value.get(SynchDomain.Time, default)
        if value is None:
            raise ValueError(
                f"the synchronization has no {param.name} time: the timing unit "
                "needs delay, active and total times"
            )
        return float(value)

    count = int(group[SynchParam.Repeats])
    return {
        "mode": "time",
        "count": count,
        "delay": seconds(SynchParam.Delay, 0.0),
        "period": seconds(SynchParam.Total),
        "width": seconds(SynchParam.Active),
    }


class BeamlineTriggerGateController(TriggerGateController):
    ctrl_properties = {
        "Device": {Type: str, Description: "The TimingUnit device, e.g. bl01/tim/tg1"},
    }
    MaxDevice = 1

    def __init__(self, inst, props, *args, **kwargs):
        TriggerGateController.__init__(self, inst, props, *args, **kwargs)
        self.link = DeviceLink(self.Device)
        self.train = None  # the last train loaded

    def AddDevice(self, axis):
        if axis != 1:
            raise ValueError(f"axis {axis}: {self.Device} has one pulse train, axis 1")

    def DeleteDevice(self, axis):
        pass

    def SynchOne(self, axis, synch_description):
        train = time_train(synch_description)
        self.link.command("LoadTrain", json.dumps(train))
        self.train = train

    def PreStartOne(self, axis, value=None):
        # checked by the unit against what it drives: the scaler is armed and
        # the camera started before the synchronization starts
        self.link.command("Arm")
        return True

    def StartOne(self, axis):
        self.link.command("Start")

    def StateOne(self, axis):
        try:
            state = self.link.call("State", lambda p: p.state())
        except DeviceDown as exc:
            return State.Fault, str(exc)
        sardana_state = UNIT_STATES.get(state, State.Unknown)
        if sardana_state in (State.Fault, State.Unknown):
            try:
                status = self.link.call("Status", lambda p: p.status())
                return sardana_state, f"{self.link.name}: {status}"
            except DeviceDown as exc:
                return State.Fault, str(exc)
        return sardana_state, f"{self.link.name} is {state}"

    def AbortOne(self, axis):
        self.link.command("Stop")

    def StopOne(self, axis):
        self.link.command("Stop")

    def SetAxisPar(self, axis, name, value):
        if name == "active_input":
            return  # one encoder per train, chosen by the unit's settings
        raise ValueError(f"unsupported axis parameter {name!r}")
