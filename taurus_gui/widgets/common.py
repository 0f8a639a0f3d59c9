"""Plumbing shared by the panels: Tango events into Qt signals, Tango
commands off the GUI thread, and a state label."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from taurus.external.qt import Qt

from taurus_gui import model
from taurus_gui.discovery import trl

COMMAND_TIMEOUT_MS = 5000
POLL_PERIOD = 0.5  # s, attributes without change events and dead devices
READ_TIMEOUT_MS = 2000
FULL_READ_EVERY = 4  # cycles: every attribute is read every 2 s


_RUNNING: set[AttrWatcher] = set()
_RUNNING_LOCK = threading.Lock()


def stop_all_watchers(timeout: float = 5.0) -> int:
    """Stop every watcher's thread and wait for them (before the widgets go:
    a thread must not touch a deleted Qt object or a Tango proxy while the
    interpreter exits). Returns how many threads were still alive after."""
    with _RUNNING_LOCK:
        watchers = list(_RUNNING)
        _RUNNING.clear()
    for watcher in watchers:
        watcher.stop()
    deadline = time.monotonic() + timeout
    for watcher in watchers:
        if watcher._thread is not None:
            watcher._thread.join(max(0.0, deadline - time.monotonic()))
    return sum(1 for w in watchers if w._thread is not None and w._thread.is_alive())


class AttrWatcher(Qt.QObject):
    """Watches attributes of one device and re-emits every value in the GUI
    thread: ``changed(name, value)`` with the attribute's short name as
    given, ``failed(name, text)`` when it cannot be read (device down,
    restarting), so a panel shows that instead of a stale value.

    Change events where the device pushes them; where it does not (or while
    the device is down) a reader thread polls every ``period`` seconds, so a
    recovered device shows up within a period instead of Tango's 10 s
    resubscription. Everything that talks to Tango runs in that thread: a
    dead device never freezes the GUI.

    Plain PyTango rather than Taurus attributes: Taurus delays subscriptions
    and polling until its application loop has started and lost first
    values in tests; a panel must show the device's state deterministically.

    Connect the signals, then call ``start()``.
    """

    changed = Qt.pyqtSignal(str, object)
    failed = Qt.pyqtSignal(str, str)

    NOT_PUSHED = ("API_AttributePollingNotStarted", "API_EventPropertiesNotSet")

    def __init__(
        self,
        device: str,
        names: Iterable[str],
        parent: Qt.QObject | None = None,
        period: float = POLL_PERIOD,
    ):
        super().__init__(parent)
        self.device = device
        self.period = period
        self._names = list(dict.fromkeys(names))
        self._lock = threading.Lock()
        self._poll: set[str] = set(self._names)  # read by the thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> AttrWatcher:
        if self._thread is None:
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            self._thread = threading.Thread(
                target=self._run, name=f"watch {self.device}", daemon=True
            )
            self._thread.start()
        return self

    def watch(self, name: str) -> None:
        """Add an attribute (polled until its events arrive)."""
        with self._lock:
            if name not in self._names:
                self._names.append(name)
                self._poll.add(name)

    def stop(self) -> None:
        self._stop.set()

    def _changed(self, name: str, value) -> None:
        if not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # the widget is gone
                self.changed.emit(name, value)

    def _failed(self, name: str, text: str) -> None:
        if not self._stop.is_set():
            with contextlib.suppress(RuntimeError):
                self.failed.emit(name, text)

    # -------------------------------------------------------- reader thread
    def _run(self) -> None:
        import tango

        proxy = None
        ids: dict[str, int] = {}
        cycle = 0
        while not self._stop.is_set():
            cycle += 1
            try:
                if proxy is None:
                    proxy = tango.DeviceProxy(trl(self.device))
                    proxy.set_timeout_millis(READ_TIMEOUT_MS)
                for name in list(self._names):
                    if name not in ids:
                        ids[name] = self._subscribe(proxy, name)
                with self._lock:
                    # every few cycles all of them: a safety net for events
                    # lost while a restarted server's subscription is renewed
                    everything = cycle % FULL_READ_EVERY == 0
                    polled = [n for n in self._names if everything or n in self._poll]
                if polled:
                    self._read(proxy, polled)
            except tango.DevFailed as exc:
                for name in list(self._names):
                    self._failed(name, _error_text(exc))
            self._stop.wait(self.period)
        for event_id in ids.values():
            with contextlib.suppress(Exception):  # the device may be gone
                proxy.unsubscribe_event(event_id)

    def _subscribe(self, proxy, name: str) -> int:
        import tango

        return proxy.subscribe_event(
            name,
            tango.EventType.CHANGE_EVENT,
            lambda event, _name=name: self._event(_name, event),
            stateless=True,
        )

    def _read(self, proxy, names: list[str]) -> None:
        import tango

        try:
            values = proxy.read_attributes(names)
        except tango.DevFailed as exc:
            text = _error_text(exc)
            for name in names:
                self._failed(name, text)
            return
        for name, value in zip(names, values, strict=False):
            if value.has_failed:
                self._failed(name, _error_text(tango.DevFailed(*value.get_err_stack())))
            elif value.value is None:
                self._failed(name, f"{name} is not valid now")
            else:
                self._changed(name, value.value)

    def _event(self, name: str, event) -> None:
        """Tango's event thread."""
        if event.err:
            reason = event.errors[0].reason if event.errors else ""
            with self._lock:
                self._poll.add(name)  # no events (yet): the thread reads it
            if reason not in self.NOT_PUSHED:
                self._failed(name, str(event.errors[0].desc).strip())
            return
        with self._lock:
            self._poll.discard(name)
        value = event.attr_value.value if event.attr_value is not None else None
        if value is None:
            self._failed(name, f"{name} is not valid now")
        else:
            self._changed(name, value)


def _error_text(exc: Any) -> str:
    if exc is None:
        return "no value"
    args = getattr(exc, "args", None)
    if args and hasattr(args[0], "desc"):
        return str(args[0].desc).strip()
    return str(exc).strip() or type(exc).__name__


class _CallSignals(Qt.QObject):
    done = Qt.pyqtSignal(object)
    error = Qt.pyqtSignal(str)


class _Call(Qt.QRunnable):
    def __init__(self, device: str, command: str, arg: Any, timeout_ms: int):
        super().__init__()
        self.device, self.command, self.arg, self.timeout_ms = device, command, arg, timeout_ms
        self.signals = _CallSignals()

    def run(self) -> None:
        import tango

        try:
            proxy = tango.DeviceProxy(trl(self.device))
            proxy.set_timeout_millis(self.timeout_ms)
            if self.arg is None:
                result = proxy.command_inout(self.command)
            else:
                result = proxy.command_inout(self.command, self.arg)
        except tango.DevFailed as exc:
            self.signals.error.emit(f"{self.command}: {_error_text(exc)}")
        except Exception as exc:  # a wrong argument type, for instance
            self.signals.error.emit(f"{self.command}: {exc}")
        else:
            self.signals.done.emit(result)


class CommandRunner(Qt.QObject):
    """Runs Tango commands in a thread pool so the GUI never freezes on a
    slow or dead device; results and errors come back as signals in the GUI
    thread. ``busy`` is the number of calls in flight (tests wait on it)."""

    finished = Qt.pyqtSignal(str, object)  # command, result
    error = Qt.pyqtSignal(str)  # "Command: reason"

    def __init__(self, device: str, parent: Qt.QObject | None = None):
        super().__init__(parent)
        self.device = device
        self.busy = 0
        self._pool = Qt.QThreadPool(self)
        # one at a time: two Adds clicked quickly reach the queue in order
        self._pool.setMaxThreadCount(1)

    def call(
        self,
        command: str,
        arg: Any = None,
        on_done: Callable[[Any], None] | None = None,
        timeout_ms: int = COMMAND_TIMEOUT_MS,
    ) -> None:
        job = _Call(self.device, command, arg, timeout_ms)
        self.busy += 1

        def done(result, _cmd=command):
            self.busy -= 1
            if on_done is not None:
                on_done(result)
            self.finished.emit(_cmd, result)

        def failed(text):
            self.busy -= 1
            self.error.emit(text)

        job.signals.done.connect(done)
        job.signals.error.connect(failed)
        job._keep = (done, failed)  # the slots live as long as the job
        self._pool.start(job)

    def call_json(self, command: str, payload: Any, on_done=None) -> None:
        """A queue-style command taking and returning JSON."""

        def decode(result):
            if on_done is None:
                return
            try:
                on_done(json.loads(result) if isinstance(result, str) and result else result)
            except ValueError:
                on_done(result)

        self.call(command, json.dumps(payload), decode)


def connect_panel(panel, model_name, attributes: Iterable[str], start: bool = True) -> str:
    """What every panel's ``setModel`` does: the device name from Taurus'
    model (a name or a one-item list), a :class:`CommandRunner` whose errors
    go to ``panel.message``, and an :class:`AttrWatcher` feeding
    ``panel._on_value`` / ``panel._on_failed``, started unless ``start`` is
    false. Returns the device name."""
    if isinstance(model_name, (list, tuple)):
        model_name = model_name[0] if model_name else ""
    panel.device = str(model_name)
    panel.runner = CommandRunner(panel.device, panel)
    panel.runner.error.connect(panel.message.error)
    panel.watcher = AttrWatcher(panel.device, attributes, panel)
    panel.watcher.changed.connect(panel._on_value)
    panel.watcher.failed.connect(panel._on_failed)
    if start:
        panel.watcher.start()
    return panel.device


class StateLabel(Qt.QLabel):
    """A device state in Tango's colours; grey with the reason when the
    device does not answer."""

    def __init__(self, text: str = "UNKNOWN", parent: Qt.QWidget | None = None):
        super().__init__(text, parent)
        self.setAlignment(Qt.Qt.AlignCenter)
        self.setMinimumWidth(80)
        self.set_state("UNKNOWN")

    def set_state(self, state: str, tooltip: str = "") -> None:
        self.state = model.state_name(state)
        self.setText(self.state)
        self.setStyleSheet(model.state_style(self.state) + " padding: 2px 6px;")
        self.setToolTip(tooltip)


class MessageLine(Qt.QLabel):
    """One line of feedback under a panel's buttons: the last error (red) or
    what was done; errors are kept until the next action."""

    def __init__(self, parent: Qt.QWidget | None = None):
        super().__init__("", parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.Qt.TextSelectableByMouse)

    def error(self, text: str) -> None:
        self.setStyleSheet("color: #c00000;")
        self.setText(text)

    def info(self, text: str) -> None:
        self.setStyleSheet("color: #006000;")
        self.setText(text)
