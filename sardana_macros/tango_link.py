"""Shared by the beamline's Sardana controllers: a link to one Tango device of
the suite that survives the device's server restarting.

A controller talks to our devices through Tango. When a device is down or
restarting, the controller reports the element in Fault with a Status naming
the device and the cause; as soon as the device answers again the controller
uses it again (a new DeviceProxy: an old one that saw the failure would wait
up to a second before reconnecting). No Pool restart is needed.
"""

import contextlib
import inspect
import threading
import time

import tango
from sardana import State
from sardana.pool import AcqSynch
from sardana.pool.controller import DefaultValue, Description, Type

TANGO_TO_SARDANA = {
    tango.DevState.ON: State.On,
    tango.DevState.OPEN: State.On,
    tango.DevState.CLOSE: State.On,
    tango.DevState.MOVING: State.Moving,
    tango.DevState.RUNNING: State.Moving,
    tango.DevState.ALARM: State.Alarm,
    tango.DevState.FAULT: State.Fault,
    tango.DevState.OFF: State.Off,
    tango.DevState.DISABLE: State.Disable,
    tango.DevState.INIT: State.Init,
    tango.DevState.UNKNOWN: State.Unknown,
}


class DeviceDown(Exception):
    """A device of the suite does not answer; the message names it."""


class DeviceRefused(DeviceDown):
    """The device answered but refused (not allowed in its state, bad value)."""


NOT_ANSWERING = (
    "API_CantConnectToDevice",
    "API_DeviceNotExported",
    "API_DeviceTimedOut",
    "API_CorbaException",
    "API_CommunicationFailed",
    "API_ServerNotRunning",
    "API_CantConnectToDatabase",
    "API_ConnectionFailed",
)


def _not_answering(exc) -> bool:
    if isinstance(exc, tango.ConnectionFailed | tango.CommunicationFailed):
        return True
    for err in exc.args:
        reason = getattr(err, "reason", "")
        if reason in NOT_ANSWERING or reason.startswith("TRANSIENT") or "CORBA" in reason:
            return True
    return False


RECOVERY_ATTEMPTS = 20  # x 0.5 s


def refresh_element(controller, axis, getter, delay=0.2):
    """Make the Pool push the element's value again, even if unchanged.

    A client (the MacroServer) that saw the value fail while the device was
    down keeps the error until a new value event; the Pool pushes one only
    on change. Called when a device answers again; runs a moment later in its
    own thread (not inside the Pool's state loop)."""

    def push():
        # the device may answer a ping before it can read its position (still
        # connecting to its controller): try again until a value is published
        error = None
        for _ in range(RECOVERY_ATTEMPTS):
            try:
                element = controller._getPoolController().get_element(axis=axis)
                attr = getattr(element, getter)(cache=False, propagate=2)
                exc_info = attr.get_exc_info() if hasattr(attr, "get_exc_info") else None
                if not exc_info and attr.value is not None:
                    return
                error = exc_info[1] if exc_info else "no value"
            except Exception as exc:
                error = exc
            time.sleep(0.5)
        controller._log.warning("could not refresh axis %s: %s", axis, error)

    timer = threading.Timer(delay, push)
    timer.daemon = True
    timer.start()


def _desc(exc) -> str:
    try:
        return exc.args[0].desc.strip().splitlines()[0]
    except (IndexError, AttributeError):
        return str(exc)


_snap_lock = threading.Lock()
_last_snap: dict[str, float] = {}


def snap_once(link, exposure, acquisition_started):
    """Take one detector frame for this acquisition. Two controllers of the
    Pool (the 2D image and the ROI counters) may share one detector: the Pool
    calls every controller's PreStartAll (which records
    ``acquisition_started``) before any StartAll, so a snap of the same device
    since then belongs to this acquisition and the second controller joins it."""
    with _snap_lock:
        key = link.name.lower()
        if _last_snap.get(key, -1.0) >= acquisition_started:
            return
        if exposure is not None:
            link.write("ExposureTime", exposure)
        link.command("Snap")
        _last_snap[key] = time.monotonic()


def split_devices(text):
    """'a/b/c, d/e/f' -> ['a/b/c', 'd/e/f'] (controller property values)."""
    return [d.strip() for d in str(text).replace("\n", ",").split(",") if d.strip()]


class DeviceLink:
    """One Tango device, reconnected on demand after a failure."""

    def __init__(self, name, timeout_ms=3000, on_recovered=None):
        self.name = name
        self.timeout_ms = timeout_ms
        self.on_recovered = on_recovered  # called (in a thread) when it answers again
        self._watcher = None
        self._proxy = None
        self.last_error = ""
        self.down = False  # the last call found the device not answering

    def proxy(self):
        if self._proxy is None:
            proxy = tango.DeviceProxy(self.name)
            proxy.set_timeout_millis(self.timeout_ms)
            self._proxy = proxy
        return self._proxy

    def call(self, what, fn):
        """Run ``fn(proxy)``; on failure drop the proxy and raise DeviceDown."""
        try:
            result = fn(self.proxy())
        except tango.DevFailed as exc:
            desc = _desc(exc)
            self.last_error = desc
            if not _not_answering(exc):
                # the device answered and refused (wrong state, bad value, ...)
                raise DeviceRefused(f"{self.name} refused {what}: {desc}") from None
            self._proxy = None
            self.down = True
            self._watch()
            raise DeviceDown(
                f"{self.name} does not answer ({what}): {desc}. If its server is restarting, "
                "the supervisor brings it back and this element recovers by itself."
            ) from None
        self.down = False
        return result

    def _watch(self):
        """Ping the device until it answers again, then call on_recovered: the
        Pool reads an idle element only on demand, so nobody else would notice."""
        if self.on_recovered is None or (self._watcher and self._watcher.is_alive()):
            return

        def watch():
            # until it answers, whoever else notices first (a successful call
            # from the Pool clears ``down`` but does not refresh the clients)
            while True:
                try:
                    proxy = tango.DeviceProxy(self.name)
                    proxy.set_timeout_millis(1000)
                    proxy.ping()
                    proxy.state()
                except tango.DevFailed:
                    time.sleep(0.25)
                    continue
                self.down = False
                with contextlib.suppress(Exception):
                    self.on_recovered()
                return

        self._watcher = threading.Thread(target=watch, name=f"watch-{self.name}", daemon=True)
        self._watcher.start()

    def read(self, attribute):
        return self.call(f"read {attribute}", lambda p: p.read_attribute(attribute).value)

    def write(self, attribute, value):
        self.call(f"write {attribute}", lambda p: p.write_attribute(attribute, value))

    def command(self, name, *args):
        return self.call(name, lambda p: p.command_inout(name, *args))

    def state(self):
        """(sardana State, status text) of the device; Fault with the cause if down."""
        try:
            tango_state = self.call("State", lambda p: p.state())
        except DeviceDown as exc:
            return State.Fault, str(exc)
        sardana_state = TANGO_TO_SARDANA.get(tango_state, State.Unknown)
        if sardana_state in (State.Fault, State.Alarm, State.Disable, State.Off):
            try:
                return sardana_state, f"{self.name}: {self.call('Status', lambda p: p.status())}"
            except DeviceDown as exc:
                return State.Fault, str(exc)
        return sardana_state, f"{self.name} is {tango_state}"

    def wait_not(self, states, timeout):
        """Poll until the device's state is not in ``states`` (a short command's end)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call("State", lambda p: p.state()) not in states:
                return
            time.sleep(0.005)
        raise DeviceDown(f"{self.name} still {states} after {timeout:g} s")


# ------------------------------------------------ hardware-triggered frames
def asking_group_synchronization(controller):
    """The synchronization that the measurement group asking a controller for
    its latency time has configured for it (a group's LatencyTime is the
    largest of its controllers'); the controller's current one if the caller
    is no measurement group."""
    frame = inspect.currentframe()
    try:
        for _ in range(7):
            frame = frame.f_back
            if frame is None:
                break
            group = frame.f_locals.get("self")
            configuration = getattr(group, "configuration", None)
            if configuration is not None and hasattr(configuration, "get_acq_synch_by_controller"):
                try:
                    return configuration.get_acq_synch_by_controller(
                        controller._getPoolController()
                    )
                except Exception:
                    break
    finally:
        del frame
    return getattr(controller, "_synchronization", None)


CLOCK_TICK = 1e-6  # s: the timing unit's resolution (docs/protocol-timing.md)

#: what the camera properties say (both camera controllers have them)
CAMERA_PROPERTIES = {
    "ReadoutTime": {
        Type: float,
        DefaultValue: 0.005,
        Description: "s the camera needs after a frame's exposure before the next trigger "
        "(the camera's readout; the simulator's readout_time): hardware triggers come "
        "at least this long after the previous frame's exposure",
    },
    "BufferFrames": {
        Type: int,
        DefaultValue: 100000,
        Description: "frames the camera buffers in one hardware-triggered acquisition "
        "(the simulator's buffer_frames; the Detector takes at most 100000)",
    },
}


def refuse_unsupported_synchronization(name, value):
    """SetCtrlPar('synchronization'): the camera takes one frame per trigger."""
    if value in (AcqSynch.HardwareGate, AcqSynch.HardwareStart):
        kind = "gate" if value == AcqSynch.HardwareGate else "start"
        raise ValueError(
            f"{name} takes one frame of its exposure time per trigger: hardware {kind} is "
            "not supported (the camera does not follow a gate's length); synchronize it "
            "by trigger (synchronization: Trigger)"
        )


class TriggeredCamera:
    """What both camera controllers (the 2D image and the ROI counters) say
    of their synchronization, before their Sardana base class in the bases:
    hardware trigger only (gate and start refused naming the fix), and a
    latency of the camera's readout (and a clock tick) for a group that
    triggers them by hardware, their LatencyTime otherwise."""

    def _hardware(self):
        return self._synchronization == AcqSynch.HardwareTrigger

    def SetCtrlPar(self, par, value):
        if par.lower() == "synchronization":
            refuse_unsupported_synchronization(self.link.name, value)
        super().SetCtrlPar(par, value)

    def GetCtrlPar(self, par):
        if par.lower() == "latency_time":
            if asking_group_synchronization(self) == AcqSynch.HardwareTrigger:
                # one tick of the timing unit's clock above the readout
                return float(self.ReadoutTime) + CLOCK_TICK
            return self._latency_time
        return super().GetCtrlPar(par)


#: the Detector refuses ExposureTime outside these (its attribute's limits)
EXPOSURE_LIMITS = (0.0001, 60.0)
#: the Detector's NumberOfFrames at most (detector_logic.MAX_FRAMES)
DETECTOR_MAX_FRAMES = 100000
#: how long one poll of the camera serves both controllers' state queries
POLL_SHARED = 0.01


def check_triggered_plan(
    name, exposure, repetitions, latency, nb_starts, readout, buffer_frames
) -> int:
    """The frames of a hardware-triggered acquisition (repetitions x starts),
    or ValueError naming the problem and the fix: the camera takes one frame
    of ``exposure`` per trigger and needs ``readout`` s after it before the
    next trigger; it buffers at most ``buffer_frames`` frames."""
    if exposure <= 0:
        raise ValueError(
            f"{name} takes frames of a time: monitor counting is not supported; "
            "count in time (a positive integration time)"
        )
    low, high = EXPOSURE_LIMITS
    if not low <= exposure <= high:
        raise ValueError(
            f"an integration time of {exposure:g} s is outside the exposure times of {name} "
            f"({low:g} to {high:g} s): choose one within them"
        )
    frames = int(repetitions) * int(nb_starts)
    limit = min(int(buffer_frames), DETECTOR_MAX_FRAMES)
    if frames > limit:
        raise ValueError(
            f"{frames} frames ({repetitions} x {nb_starts} start(s)) are more than {name} "
            f"can take in one acquisition ({limit} frames): scan fewer points, or split the scan"
        )
    if latency + 0.5e-6 < readout:
        raise ValueError(
            f"{latency * 1e3:.3f} ms between two frames (period {exposure + latency:g} s, "
            f"exposure {exposure:g} s) is shorter than the readout time of {name} "
            f"({readout * 1e3:.3f} ms): it would miss triggers; use a latency time of at "
            f"least {readout:g} s (or a longer period)"
        )
    return frames


class TriggeredFrames:
    """One hardware-triggered acquisition of a detector, shared by every
    controller over it (the 2D image and the ROI counters): the camera is
    configured and started once (EXTERNAL trigger, MULTIPLE frames), its
    numbered frames are read once each (ReadFrame) and handed to each
    controller exactly once, in order; afterwards (or on abort) the camera
    goes back to INTERNAL trigger and its previous AcquisitionMode and
    NumberOfFrames, as software acquisitions (Snap) expect.

    The Pool prepares every controller of an acquisition (PrepareOne) before
    it starts any, so a controller preparing again starts a new acquisition
    and the others join it."""

    def __init__(self, link, clock=time.monotonic):
        self.link = link
        self.clock = clock
        self.lock = threading.RLock()
        self.phase = "idle"  # idle, prepared, started
        self.prepared_by: set = set()
        self.exposure = 0.0
        self.repetitions = 0
        self.nb_starts = 1
        self.total = 0  # frames of the whole acquisition
        self.starts = 0  # starts done
        self.consumer_starts: dict = {}
        self.cursors: dict = {}  # consumer -> index of its next frame
        self.cache: dict[int, object] = {}  # index -> pixels (height x width)
        self.fetched = 0  # frames read from the device
        self.first_number = 0  # the camera's number of this acquisition's first frame
        self.shape = (0, 0)  # (height, width)
        self.roi = (0, 0, 0, 0)
        self.saved = None  # (AcquisitionMode, NumberOfFrames) to put back
        self.failure = ""
        self.stopped = False
        self._polled = (-1.0, None)

    # ------------------------------------------------------------- prepare
    def prepare(self, consumer, exposure, repetitions, latency, nb_starts, readout, buffer_frames):
        """Check before anything is armed or started (nothing is written)."""
        with self.lock:
            total = check_triggered_plan(
                self.link.name, exposure, repetitions, latency, nb_starts, readout, buffer_frames
            )
            if self.phase != "prepared" or consumer in self.prepared_by:
                self.restore()  # a previous acquisition not put back yet
                self.phase = "prepared"
                self.prepared_by = set()
                self.exposure, self.repetitions = float(exposure), int(repetitions)
                self.nb_starts, self.total = int(nb_starts), total
            self.prepared_by.add(consumer)

    # --------------------------------------------------------------- start
    def start(self, consumer):
        """StartAll of a controller: the first one of the acquisition sets
        the camera up and starts it waiting for triggers (before the timing
        unit is armed: it checks the camera then); a later start of the same
        acquisition (NbStarts > 1) expects the next repetitions."""
        with self.lock:
            if self.phase == "prepared":
                self._start_camera()
                self.phase = "started"
                self.starts = 1
                self.consumer_starts = {c: 0 for c in self.prepared_by}
                self.cursors = {c: 0 for c in self.prepared_by}
            elif self.phase != "started" or consumer not in self.cursors:
                raise ValueError(
                    f"{self.link.name}: a hardware-triggered acquisition starts after its "
                    "prepare; prepare the measurement group again"
                )
            done = self.consumer_starts.get(consumer, 0) + 1
            self.consumer_starts[consumer] = done
            if done > self.starts:
                if self.starts >= self.nb_starts:
                    raise ValueError(
                        f"{self.link.name} was prepared for {self.nb_starts} start(s): "
                        "prepare the measurement group again"
                    )
                self.starts = done

    def _start_camera(self):
        link = self.link
        mode, frames = int(link.read("AcquisitionMode")), int(link.read("NumberOfFrames"))
        self.saved = (mode, frames)
        self.failure = ""
        self.stopped = False
        self.cache, self.fetched, self._polled = {}, 0, (-1.0, None)
        try:
            self.shape = (int(link.read("Height")), int(link.read("Width")))
            self.roi = _clip(tuple(int(v) for v in link.read("Roi")), self.shape)
            link.write("ExposureTime", self.exposure)
            link.write("TriggerMode", 1)  # EXTERNAL
            link.write("AcquisitionMode", 1)  # MULTIPLE
            link.write("NumberOfFrames", self.total)
            link.command("Start")
            # Start empties the buffer: FirstFrame is the number the first frame gets
            self.first_number = int(link.read("FirstFrame"))
        except Exception:
            self.phase = "idle"
            with contextlib.suppress(Exception):
                self.restore()
            raise

    # -------------------------------------------------------------- state
    @property
    def expected(self) -> int:
        """Frames of the starts done so far."""
        return min(self.repetitions * self.starts, self.total)

    def _poll(self):
        """(tango state, FirstFrame, BufferedFrames, MissedTriggers), one read
        for both controllers within POLL_SHARED s."""
        when, values = self._polled
        now = self.clock()
        if values is not None and now - when < POLL_SHARED:
            return values
        names = ["State", "FirstFrame", "BufferedFrames", "MissedTriggers"]
        values = self.link.call(
            "read " + ", ".join(names), lambda p: [a.value for a in p.read_attributes(names)]
        )
        self._polled = (now, values)
        return values

    def taken(self) -> int:
        _state, first, count, _missed = self._poll()
        return int(first) + int(count or 0) - self.first_number

    def state(self):
        """(sardana State, status) of the acquisition."""
        with self.lock:
            if self.phase != "started":
                return State.On, f"{self.link.name}: no hardware-triggered acquisition"
            if self.failure:
                return State.Fault, self.failure
            if self.stopped:
                return State.On, f"{self.link.name}: stopped"
            try:
                tango_state, first, count, missed = self._poll()
            except DeviceDown as exc:
                return State.Fault, str(exc)
            taken = int(first) + int(count or 0) - self.first_number
            if missed:
                self.failure = (
                    f"{self.link.name} missed {missed} trigger(s) (pulses that came while it "
                    f"was still exposing or reading out; {taken} of {self.total} frames taken): "
                    "lengthen the period between points or shorten the exposure"
                )
                with contextlib.suppress(Exception):
                    self.restore()
                return State.Fault, self.failure
            if taken >= self.expected:
                return State.On, f"{self.link.name}: {taken} of {self.total} frame(s) taken"
            sardana_state = TANGO_TO_SARDANA.get(tango_state, State.Unknown)
            if sardana_state == State.Moving:
                return State.Moving, (
                    f"{self.link.name}: waiting for triggers, "
                    f"{taken} of {self.total} frame(s) taken"
                )
            if sardana_state == State.On:
                return State.On, (
                    f"{self.link.name} stopped after {taken} of {self.total} frame(s)"
                )
            return self.link.state()

    # -------------------------------------------------------------- frames
    def _fetch(self):
        """Read every frame taken and not read yet, by number, in order."""
        import numpy as np

        self._polled = (-1.0, None)  # a fresh look
        _state, first, count, _missed = self._poll()
        first, count = int(first), int(count or 0)
        end = min(first + count - self.first_number, self.total)
        height, width = self.shape
        while self.fetched < end:
            number = self.first_number + self.fetched
            if number < first:
                raise ValueError(
                    f"frame {number} of {self.link.name} is no longer buffered (the oldest is "
                    f"{first}): frames were read too slowly for its buffer"
                )
            pixels = np.asarray(self.link.command("ReadFrame", number))
            self.cache[self.fetched] = pixels.reshape(height, width)
            self.fetched += 1

    def take(self, consumer) -> list:
        """The frames ``consumer`` has not had yet, in order (each once)."""
        with self.lock:
            if self.phase != "started" or consumer not in self.cursors:
                return []
            self._fetch()
            start = self.cursors[consumer]
            frames = [self.cache[i] for i in range(start, self.fetched)]
            self.cursors[consumer] = self.fetched
            low = min(self.cursors.values())
            for index in [i for i in self.cache if i < low]:
                del self.cache[index]
            if low >= self.total:
                self.restore()
            return frames

    # ------------------------------------------------------------ the end
    def restore(self):
        """The camera back to what software acquisitions need: stopped,
        INTERNAL trigger, its own AcquisitionMode and NumberOfFrames."""
        with self.lock:
            if self.saved is None:
                return
            mode, frames = self.saved
            link = self.link
            if link.call("State", lambda p: p.state()) == tango.DevState.RUNNING:
                link.command("Stop")
            link.write("TriggerMode", 0)  # INTERNAL
            link.write("AcquisitionMode", mode)
            link.write("NumberOfFrames", frames)
            self.saved = None

    def abort(self):
        """Stop or abort: the camera stops and goes back at once; the frames it
        took stay readable (the Pool's last read after a stop gets them)."""
        with self.lock:
            if self.phase == "started":
                self.stopped = True
            else:
                self.phase = "idle"
            self.restore()


def _clip(roi, shape):
    height, width = shape
    x, y, w, h = (list(roi) + [0, 0, 0, 0])[:4]
    x, y = max(0, min(x, width)), max(0, min(y, height))
    return (x, y, max(0, min(w, width - x)), max(0, min(h, height - y)))


_frames_lock = threading.Lock()
_triggered: dict[str, TriggeredFrames] = {}


def triggered_frames(link) -> TriggeredFrames:
    """The one TriggeredFrames of this link's device in this Pool."""
    with _frames_lock:
        key = link.name.lower()
        frames = _triggered.get(key)
        if frames is None:
            frames = _triggered[key] = TriggeredFrames(link)
        return frames
