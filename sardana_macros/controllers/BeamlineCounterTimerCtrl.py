"""Sardana counter/timer controller over the suite's Scaler device.

Axis 1 is the timer (its value is the elapsed counting time); axes 2.. are the
Scaler's channels in the order of its ChannelNames (i0, diode, ...).

Software synchronization (step scans, ``ct``): the Scaler counts for the
integration time (``Count``: its PresetTime and Start in one call).
Hardware synchronization (trigger or gate, continuous scans): the Scaler's
gated buffer takes one point per pulse of the timing unit
(``ArmBuffer`` for every repetition, before the trigger/gate starts), and
each read returns the points taken since the last one: the timer the gate's
length (s), each channel its counts (docs/triggers.md)."""

from sardana import State
from sardana.pool import AcqSynch
from sardana.pool.controller import CounterTimerController, DefaultValue, Description, Type

from sardana_macros.tango_link import (
    CLOCK_TICK,
    DeviceDown,
    DeviceLink,
    asking_group_synchronization,
)


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

    HARDWARE = (AcqSynch.HardwareTrigger, AcqSynch.HardwareGate)

    def __init__(self, inst, props, *args, **kwargs):
        CounterTimerController.__init__(self, inst, props, *args, **kwargs)
        self._latency_time = float(self.LatencyTime)  # GetCtrlPar('latency_time')
        self.link = DeviceLink(self.Device)
        self._counts = None
        self._preset = 1.0  # s: the integration time of the next software count
        self._elapsed = 0.0
        self._started = False
        self._state = (State.Unknown, f"{self.link.name}: not read yet")
        # hardware synchronization: points armed, the next point to read, the
        # new points per axis of the last read
        self._points = 0
        self._next = 0
        self._new = None
        self._dead_time = None  # the scaler's, read when first needed

    # ------------------------------------------------------------ parameters
    def _hardware(self, synchronization=None):
        if synchronization is None:
            synchronization = self._synchronization
        return synchronization in self.HARDWARE

    def SetCtrlPar(self, par, value):
        if par.lower() == "synchronization" and value == AcqSynch.HardwareStart:
            raise ValueError(
                f"{self.link.name} takes one gated point per trigger: hardware start "
                "(one trigger for every point) is not supported; synchronize by trigger or gate"
            )
        CounterTimerController.SetCtrlPar(self, par, value)

    def GetCtrlPar(self, par):
        if par.lower() == "latency_time":
            # the measurement group asks before an acquisition is prepared: its
            # own configuration says how it synchronizes this controller
            if self._hardware(asking_group_synchronization(self)):
                # one tick of the timing unit's 1 MHz clock above the dead time:
                # period - width is never rounded below it
                return self.dead_time(cached_ok=True) + CLOCK_TICK
            return self._latency_time
        return CounterTimerController.GetCtrlPar(self, par)

    def dead_time(self, cached_ok=False):
        """The scaler's dead time between two gates (s)."""
        if self._dead_time is None or not cached_ok:
            try:
                self._dead_time = float(self.link.read("DeadTime"))
            except DeviceDown:
                if self._dead_time is None:
                    raise
        return self._dead_time

    def PrepareOne(self, axis, value, repetitions, latency, nb_starts):
        """Check a hardware-synchronized acquisition against the scaler before
        anything is armed or started (in ascanct: after the move to the start
        position, before the scan's motion and the trigger/gate)."""
        if not self._hardware():
            return
        if value <= 0:
            raise ValueError("the scaler counts for a time: monitor counting is not supported")
        points = int(repetitions) * int(nb_starts)
        size = int(self.link.read("BufferSize"))
        if points > size:
            raise ValueError(
                f"{points} points do not fit in the buffer of {self.link.name} "
                f"({size} points): scan fewer points, or split the scan"
            )
        dead = self.dead_time()
        if latency + 0.5e-6 < dead:
            raise ValueError(
                f"{latency * 1e6:.0f} us between two gates (period {value + latency:g} s, "
                f"integration {value:g} s) is shorter than the dead time of {self.link.name} "
                f"({dead * 1e6:.0f} us): it would miss gates; use a latency time of at "
                f"least {dead:g} s"
            )

    def AddDevice(self, axis):
        pass

    def DeleteDevice(self, axis):
        pass

    def LoadOne(self, axis, value, repetitions, latency_time):
        if value <= 0:
            raise ValueError("the scaler counts for a time: monitor counting is not supported")
        if self._hardware():
            # the gate's length is the integration time: no preset
            self._points = int(repetitions)
            return
        # sent with the start (Count: PresetTime and Start in one call)
        self._preset = float(value)

    def PreStartAll(self):
        self._started = False
        self._next = 0
        self._new = None

    def StartAll(self):
        if self._hardware():
            # armed before the trigger/gate starts (the timing unit checks it)
            self.link.command("ArmBuffer", self._points)
        else:
            self.link.command("Count", self._preset)
        self._started = True

    def StartOne(self, axis, value=None):
        pass

    def StateAll(self):
        # one State read per poll for every axis (all axes are the same device)
        self._state = self.link.state()

    def StateOne(self, axis):
        return self._state

    def ReadAll(self):
        if self._hardware():
            self._read_buffer()
            return
        try:
            counts, elapsed = self.link.call(
                "read Counts, ElapsedTime",
                lambda p: [a.value for a in p.read_attributes(["Counts", "ElapsedTime"])],
            )
            self._counts, self._elapsed = list(counts), float(elapsed)
        except DeviceDown:
            self._counts = None

    def _read_buffer(self):
        """The points taken since the last read: [first, n, rows of (gate us,
        counts...)]; one ReadBuffer for every axis."""
        self._new = None
        if not self._started:
            return
        try:
            out = self.link.command("ReadBuffer", [self._next, 0])
        except DeviceDown:
            return
        first, n = int(out[0]), int(out[1])
        if first != self._next:
            raise ValueError(f"{self.link.name} returned points from {first}, not {self._next}")
        width = (len(out) - 2) // n if n else 0
        self._new = [out[2 + i * width : 2 + (i + 1) * width] for i in range(n)]
        self._next += n

    def ReadOne(self, axis):
        if self._hardware():
            if self._new is None:
                if not self._started:
                    return []
                raise DeviceDown(self.link.last_error or f"{self.link.name} does not answer")
            if axis == 1:
                return [float(row[0]) * 1e-6 for row in self._new]
            index = axis - 1
            if self._new and index >= len(self._new[0]):
                raise ValueError(
                    f"axis {axis}: {self.link.name} has only {len(self._new[0]) - 1} channels"
                )
            return [int(row[index]) for row in self._new]
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
