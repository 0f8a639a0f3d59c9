"""Sardana counter/timer controller over the suite's Scaler device.

Axis 1 is the timer (its value is the elapsed counting time); axes 2.. are the
Scaler's channels in the order of its ChannelNames (i0, diode, ...)."""

from sardana import State
from sardana.pool.controller import CounterTimerController, DefaultValue, Description, Type

from sardana_macros.tango_link import DeviceDown, DeviceLink


class BeamlineCounterTimerController(CounterTimerController):
    ctrl_properties = {
        "Device": {Type: str, Description: "The Scaler device, e.g. bl01/ct/scaler"},
        "LatencyTime": {
            Type: float,
            DefaultValue: 0.1,
            Description: "s between two acquisitions (start, readout); scans wait at least this",
        },
    }
    MaxDevice = 65
    default_timer = 1

    def __init__(self, inst, props, *args, **kwargs):
        CounterTimerController.__init__(self, inst, props, *args, **kwargs)
        self._latency_time = float(self.LatencyTime)  # GetCtrlPar('latency_time')
        self.link = DeviceLink(self.Device)
        self._counts = None
        self._elapsed = 0.0
        self._started = False
        self._state = (State.Unknown, f"{self.link.name}: not read yet")

    def AddDevice(self, axis):
        pass

    def DeleteDevice(self, axis):
        pass

    def LoadOne(self, axis, value, repetitions, latency_time):
        if value <= 0:
            raise ValueError("the scaler counts for a time: monitor counting is not supported")
        self.link.write("PresetTime", float(value))

    def PreStartAll(self):
        self._started = False

    def StartAll(self):
        self.link.command("Start")
        self._started = True

    def StartOne(self, axis, value=None):
        pass

    def StateAll(self):
        # one State read per poll for every axis (all axes are the same device)
        self._state = self.link.state()

    def StateOne(self, axis):
        return self._state

    def ReadAll(self):
        try:
            counts, elapsed = self.link.call(
                "read Counts, ElapsedTime",
                lambda p: [a.value for a in p.read_attributes(["Counts", "ElapsedTime"])],
            )
            self._counts, self._elapsed = list(counts), float(elapsed)
        except DeviceDown:
            self._counts = None

    def ReadOne(self, axis):
        if self._counts is None:
            raise DeviceDown(self.link.last_error or f"{self.link.name} does not answer")
        if axis == 1:
            return self._elapsed
        index = axis - 2
        if index >= len(self._counts):
            raise ValueError(f"axis {axis}: {self.link.name} has only {len(self._counts)} channels")
        return int(self._counts[index])

    def AbortOne(self, axis):
        if self.StateOne(axis)[0] == State.Moving:
            self.link.command("Stop")
