"""Sardana TriggerGate controller over the suite's TimingUnit device (bl01/tim/tg1).

Axis 1 is the unit's pulse train. Sardana hands the controller a
synchronization description (one group: delay, active and total time,
repeats); the controller loads it as a time train (``LoadTrain``: delay,
period = total, width = active, count = repeats), arms the unit when the
acquisition starts (``Arm``: the unit checks the train against the scaler
and camera it drives, which Sardana has armed by then) and starts it
(``Start``). A train the unit refuses fails the acquisition with the
unit's reason and fix.

A unit that stops answering while its train runs (its server killed,
restarting) ends the synchronization in Fault naming the device, and the
element's ``LostTrain`` says so until the next acquisition is prepared: the
beamline's general hook ``continuous_scan_end_check`` fails the scan with it
(Sardana's continuous scans do not look at the synchronizer's state).
docs/triggers.md.
"""

import json

import tango
from sardana import State
from sardana.pool.controller import (
    Access,
    DataAccess,
    DefaultValue,
    Description,
    TriggerGateController,
    Type,
)
from sardana.pool.pooldefs import SynchDomain, SynchParam

from sardana_macros.tango_link import DeviceDown, DeviceLink, split_devices

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


def position_train(description, encoder, offset, steps_per_unit) -> dict:
    """The TimingUnit's LoadTrain in POSITION mode: a pulse every ``Total``
    (position) from ``Initial`` on, in encoder steps of the Motor device
    (steps = (position - Offset) x StepsPerUnit; the description is in the
    device's user positions). Refused when the step between points is not a
    whole number of encoder steps: the pulses would drift from the points."""
    train = time_train(description)
    group = list(description)[0]
    try:
        initial = float(group[SynchParam.Initial][SynchDomain.Position])
        total = float(group[SynchParam.Total][SynchDomain.Position])
    except (KeyError, TypeError):
        raise ValueError(
            "the synchronization has no positions (Initial, Total): a position "
            "train needs them; scan a motor, or use a time train"
        ) from None
    start = (initial - offset) * steps_per_unit
    step = total * steps_per_unit
    if abs(step - round(step)) > 1e-6 * max(1.0, abs(step)) or round(step) == 0:
        raise ValueError(
            f"{abs(total):g} between points is {abs(step):g} encoder steps "
            f"({steps_per_unit:g} steps per unit): the timing unit fires on whole steps; "
            "choose a range and number of intervals that give a whole number of steps"
        )
    return {
        "mode": "position",
        "count": train["count"],
        "start": int(round(start)),
        "step": int(round(step)),
        "width": train["width"],
        "encoder": int(encoder),
    }


class BeamlineTriggerGateController(TriggerGateController):
    ctrl_properties = {
        "Device": {Type: str, Description: "The TimingUnit device, e.g. bl01/tim/tg1"},
        "Encoders": {
            Type: str,
            DefaultValue: "",
            Description: "Motor device on each encoder input, e.g. "
            "'3:bl01/mot/sample_x, 4:bl01/mot/sample_y': with the element's "
            "MoveableOnInput ({motor: input}) a scan of that motor gets a position train",
        },
    }
    axis_attributes = {
        "LostTrain": {
            Type: str,
            Access: DataAccess.ReadOnly,
            Description: "Why the train of the last acquisition was not followed to its end "
            "(the unit stopped answering while it ran); empty if it was",
        },
    }
    MaxDevice = 1

    def __init__(self, inst, props, *args, **kwargs):
        TriggerGateController.__init__(self, inst, props, *args, **kwargs)
        self.link = DeviceLink(self.Device)
        self.encoders = {}
        for entry in split_devices(getattr(self, "Encoders", "")):
            number, _, device = entry.partition(":")
            if not number.strip().isdigit() or not device.strip():
                raise ValueError(
                    f"Encoders: {entry!r} is not <input>:<motor device>, e.g. 3:bl01/mot/sample_x"
                )
            self.encoders[int(number)] = device.strip()
        # the encoder input of the moveable scanned: the Pool sets it (from
        # MoveableOnInput) before PrepareOne of each acquisition, only while
        # MoveableOnInput is configured; an acquisition prepared without it
        # gets a time train
        self._input_set = None
        self.active_input = None
        self.train = None  # the last train loaded
        self.running = False  # a train of this acquisition started, its end not seen
        self.lost = ""  # LostTrain: why the last train was not followed to its end

    def AddDevice(self, axis):
        if axis != 1:
            raise ValueError(f"axis {axis}: {self.Device} has one pulse train, axis 1")

    def DeleteDevice(self, axis):
        pass

    def PrepareOne(self, axis, nb_starts):
        self.active_input, self._input_set = self._input_set, None
        self.running, self.lost = False, ""

    def SynchOne(self, axis, synch_description):
        if self.active_input is None:
            train = time_train(synch_description)
        else:
            offset, steps_per_unit = self._motor_scale(self.active_input)
            train = position_train(synch_description, self.active_input, offset, steps_per_unit)
        self.link.command("LoadTrain", json.dumps(train))
        self.train = train

    def PreStartOne(self, axis, value=None):
        # checked by the unit against what it drives: the scaler is armed and
        # the camera started before the synchronization starts
        self.link.command("Arm")
        return True

    def StartOne(self, axis):
        self.link.command("Start")
        self.running = True

    def StateOne(self, axis):
        try:
            state = self.link.call("State", lambda p: p.state())
        except DeviceDown as exc:
            if self.running:
                # the Pool ends the synchronization on Fault: the rest of the
                # train is neither followed nor stoppable
                self.running = False
                self.lost = (
                    f"{self.link.name} stopped answering while the train of this acquisition "
                    f"ran ({self.link.last_error}): its pulses were not followed to the end "
                    "and could not be stopped, so points may be missing. The supervisor "
                    f"restarts its server; scan again once {self.link.name} answers."
                )
                return State.Fault, self.lost
            return State.Fault, str(exc)
        sardana_state = UNIT_STATES.get(state, State.Unknown)
        if sardana_state != State.Moving:
            self.running = False
        if sardana_state in (State.Fault, State.Unknown):
            try:
                status = self.link.call("Status", lambda p: p.status())
                return sardana_state, f"{self.link.name}: {status}"
            except DeviceDown as exc:
                return State.Fault, str(exc)
        return sardana_state, f"{self.link.name} is {state}"

    def AbortOne(self, axis):
        self.running = False
        self.link.command("Stop")

    def StopOne(self, axis):
        self.running = False
        self.link.command("Stop")

    def GetAxisExtraPar(self, axis, name):
        if name.lower() == "losttrain":
            return self.lost
        raise ValueError(f"unknown axis attribute {name!r}")

    def _motor_scale(self, number):
        """(Offset, StepsPerUnit) of the Motor device on encoder input ``number``."""
        device = self.encoders.get(number)
        if device is None:
            raise ValueError(
                f"encoder input {number} has no Motor device in the Encoders property "
                f"({self.Encoders!r}): add '{number}:<motor device>'"
            )
        motor = DeviceLink(device)
        offset = float(motor.read("Offset"))
        values = motor.call("StepsPerUnit", lambda p: p.get_property("StepsPerUnit"))
        steps = list(values.get("StepsPerUnit", []))
        if not steps:
            raise ValueError(f"{device} has no StepsPerUnit property")
        return offset, float(steps[0])

    def SetAxisPar(self, axis, name, value):
        if name == "active_input":
            # the Pool's choice from MoveableOnInput for the moveable scanned;
            # None (timescan, or no moveable): a time train
            self._input_set = None if value is None else int(value)
            return
        raise ValueError(f"unsupported axis parameter {name!r}")
