"""Shared by the beamline's Sardana controllers: a link to one Tango device of
the suite that survives the device's server restarting.

A controller talks to our devices through Tango. When a device is down or
restarting, the controller reports the element in Fault with a Status naming
the device and the cause; as soon as the device answers again the controller
uses it again (a new DeviceProxy: an old one that saw the failure would wait
up to a second before reconnecting). No Pool restart is needed.
"""

import contextlib
import threading
import time

import tango
from sardana import State

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
