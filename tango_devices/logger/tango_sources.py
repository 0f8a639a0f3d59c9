"""The logger's Tango side: what to archive and how it arrives.

- :class:`LoggerSources` reads the device list from the Tango database
  (``DbGetDeviceWideList``) every ``discovery_period`` and keeps one
  :class:`DeviceWatch` per device the include/exclude lists select.
- A :class:`DeviceWatch` (one thread per device) connects when the device
  answers, describes each selected attribute to the logic, and subscribes to
  its CHANGE event, else its ARCHIVE event, else reads it every
  ``fallback_poll_period`` and archives changes of value or quality (an
  attribute that sends no events is still archived). It also subscribes to
  ATTR_CONF_EVENT (attribute configuration), to INTERFACE_CHANGE_EVENT (new
  or removed attributes: it subscribes again) and reads the device's and its
  attributes' properties from the database (which sends no events), archiving
  them when they change: once soon after connecting, again shortly after a
  sign that they changed (an attribute's configuration event; a change event
  of a writable attribute, whose value our devices store there as a
  setting, as cppTango does for a memorized one), and every
  ``property_poll_period`` for edits nobody announces (Jive, dsconfig).
- Restarts: like :class:`tango_devices.common.events.ResilientSubscription`,
  the sources listen to the supervisors' ``LastRestart`` announcements and
  subscribe again at once on a fresh connection to a restarted device, so
  its events resume within about a second instead of cppTango's 10 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tango

from tango_devices.common.dbclient import KeptDatabase
from tango_devices.common.events import SUPERVISORS
from tango_devices.logger.logger_logic import LoggerLogic
from tango_devices.logger.model import ERROR, STATE_NAMES, AttrMeta, attr_key, kind_for
from tango_devices.logger.selection import Selection

log = logging.getLogger(__name__)

EVENT_MODES = ((tango.EventType.CHANGE_EVENT, "change"), (tango.EventType.ARCHIVE_EVENT, "archive"))


# ------------------------------------------------------------------ decoding
def decode_event(event: Any) -> tuple[float, Any, int, tuple[str, str] | None]:
    """A Tango EventData as (Tango time, value, quality, error)."""
    if event.err:
        errors = event.errors or ()
        first = errors[0] if errors else None
        reason = first.reason if first is not None else "EVENT_ERROR"
        desc = first.desc.strip() if first is not None else ""
        return event.reception_date.totime(), None, ERROR, (reason, desc)
    value = event.attr_value
    return value.time.totime(), value.value, int(value.quality), None


def _type_name(code: Any) -> str:
    try:
        return tango.CmdArgType.values[int(code)].name
    except (KeyError, TypeError, ValueError):
        return str(code)


def meta_from_info(device: str, info: Any) -> AttrMeta:
    tango_type = _type_name(info.data_type)
    data_format = str(info.data_format).split(".")[-1]
    labels: tuple[str, ...] = ()
    if tango_type == "DevState":
        labels = STATE_NAMES
    elif tango_type == "DevEnum":
        labels = tuple(info.enum_labels or ())
    unit = info.unit if info.unit not in ("", "No unit") else ""
    return AttrMeta(
        device=device,
        attribute=info.name,
        kind=kind_for(tango_type, data_format),
        tango_type=tango_type,
        data_format=data_format,
        labels=labels,
        unit=unit,
    )


def config_dict(info: Any) -> dict[str, Any]:
    """AttributeInfoEx as plain JSON: every setting a client can change."""
    ev = info.events
    return {
        "label": info.label,
        "description": info.description,
        "unit": info.unit,
        "standard_unit": info.standard_unit,
        "display_unit": info.display_unit,
        "format": info.format,
        "min_value": info.min_value,
        "max_value": info.max_value,
        "min_alarm": info.alarms.min_alarm,
        "max_alarm": info.alarms.max_alarm,
        "min_warning": info.alarms.min_warning,
        "max_warning": info.alarms.max_warning,
        "delta_t": info.alarms.delta_t,
        "delta_val": info.alarms.delta_val,
        "abs_change": ev.ch_event.abs_change,
        "rel_change": ev.ch_event.rel_change,
        "archive_abs_change": ev.arch_event.archive_abs_change,
        "archive_rel_change": ev.arch_event.archive_rel_change,
        "archive_period": ev.arch_event.archive_period,
        "event_period": ev.per_event.period,
        "writable": str(info.writable).split(".")[-1],
        "data_format": str(info.data_format).split(".")[-1],
        "data_type": _type_name(info.data_type),
        "max_dim_x": int(info.max_dim_x),
        "max_dim_y": int(info.max_dim_y),
        "enum_labels": list(info.enum_labels or ()),
        "memorized": str(info.memorized).split(".")[-1],
        "disp_level": str(info.disp_level).split(".")[-1],
        "writable_attr_name": info.writable_attr_name,
        "root_attr_name": info.root_attr_name,
    }


def _signature(value: Any, quality: int) -> Any:
    if isinstance(value, np.ndarray):
        return (quality, value.dtype.str, value.shape, value.tobytes())
    return (quality, value)


# ------------------------------------------------------------------- config
@dataclass
class SourceSettings:
    fallback_poll_period: float = 1.0
    #: s between two unprompted reads of one device's properties (what no
    #: event announces: an edit in Jive or by dsconfig)
    property_poll_period: float = 30.0
    #: s within which the first read after connecting comes (spread)
    property_first_within: float = 3.0
    property_reads_per_second: float = 10.0
    discovery_period: float = 30.0
    retry_period: float = 2.0
    timeout: float = 3.0
    #: s between two tries to subscribe to the attributes that are read instead
    #: (a subscription that timed out while the machine was busy starting 200
    #: servers would otherwise leave its attribute read every second for good)
    subscribe_retry_period: float = 60.0
    #: devices watched (kept by LoggerSources): the property period grows with it
    watched: int = 0

    def property_period(self) -> float:
        """s between two reads of one device's properties: ``property_poll_period``,
        or longer when reading every device that often would ask the database
        about more than ``property_reads_per_second`` devices a second (four
        requests each: at 200 devices every 3 s, 270 requests a second kept
        the embedded database at 13 % of a core)."""
        rate = max(self.property_reads_per_second, 1e-3)
        return max(self.property_poll_period, self.watched / rate)

    def first_property_delay(self) -> float:
        """s within which a device's first property read comes, spread so
        that the database is asked about <= ``property_reads_per_second``
        devices a second when all connect at once (a start of 200 servers)."""
        rate = max(self.property_reads_per_second, 1e-3)
        return max(self.property_first_within, self.watched / rate)


#: s after a sign that a device's properties changed: the reads that follow
#: (a device may store a written value after it announced it; a second read
#: finds what a busy database stored late)
PROPERTIES_AFTER = (0.5, 3.0)


# -------------------------------------------------------------------- watch
class DeviceWatch:
    """Everything the logger archives of one device, in one thread."""

    def __init__(
        self, device: str, logic: LoggerLogic, selection: Selection, settings: SourceSettings
    ) -> None:
        self.device = device
        self.logic = logic
        self.selection = selection
        self.settings = settings
        self.proxy = None
        self.subscriptions: list[int] = []
        self.modes: dict[str, str] = {}
        self.poll_names: list[str] = []
        self.connected = False
        self.connects = 0
        self.connected_at: float | None = None
        self.last_error = "not connected yet"
        self._polled: dict[str, Any] = {}
        self._configs: dict[str, dict] = {}
        self._properties: dict | None = None
        self._props_due: list[float] = []  # reads asked by events (monotonic)
        self._props_lock = threading.Lock()
        self._connecting = False  # the events of subscribing announce nothing
        self._db = KeptDatabase()  # this thread's database client
        self._attr_names: set[str] = set()
        self._reconnect = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{device}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, join: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(join)

    def properties_soon(self) -> None:
        """Something says the device's properties may have changed: read them
        shortly (from any thread). Asked again while those reads are pending,
        nothing more: a writable attribute that streams events while it
        moves costs two reads per PROPERTIES_AFTER, not one per event."""
        if self._connecting:
            return
        now = time.monotonic()
        with self._props_lock:
            if self._props_due:
                return
            self._props_due = [now + delay for delay in PROPERTIES_AFTER]
        self._wake.set()

    def _asked_properties_due(self, now: float) -> tuple[bool, float | None]:
        """(read now?, when the next asked read is due)."""
        with self._props_lock:
            due = [t for t in self._props_due if t > now]
            read = len(due) < len(self._props_due)
            self._props_due = due
        return read, (due[0] if due else None)

    def resubscribe(self) -> None:
        """The device was restarted: subscribe again on a fresh connection now."""
        self._reconnect.set()
        self._wake.set()

    # -------------------------------------------------------------- loop
    def _run(self) -> None:
        with tango.EnsureOmniThread():
            next_connect = next_poll = 0.0
            next_retry = time.monotonic() + self.settings.subscribe_retry_period
            # spread the database reads of the devices over the period
            next_props = time.monotonic() + random.uniform(0, self.settings.first_property_delay())
            while not self._stop.is_set():
                now = time.monotonic()
                if self._reconnect.is_set() or (not self.connected and now >= next_connect):
                    self._reconnect.clear()
                    if not self._connect():
                        next_connect = now + self.settings.retry_period
                if self.connected and self.poll_names and now >= next_retry:
                    self._subscribe_polled()
                    next_retry = now + self.settings.subscribe_retry_period
                if self.connected and self.poll_names and now >= next_poll:
                    self._poll()
                    next_poll = now + self.settings.fallback_poll_period
                asked, next_asked = self._asked_properties_due(now)
                if now >= next_props or asked:
                    self._poll_properties()
                    if now >= next_props:
                        next_props = now + self.settings.property_period()
                deadlines = [next_props] + ([next_asked] if next_asked is not None else [])
                if self.connected and self.poll_names:
                    deadlines += [next_poll, next_retry]
                if not self.connected:
                    deadlines.append(next_connect)
                self._wake.wait(max(0.0, min(deadlines) - time.monotonic()))
                self._wake.clear()
            self._unsubscribe(self.proxy, self.subscriptions)

    # ----------------------------------------------------------- connect
    def _connect(self) -> bool:
        # Drop the old subscriptions first: cppTango keeps one event channel per
        # device server and reuses it while any subscription to that server
        # remains, so after a restart new subscriptions would stay on the dead
        # channel (until its 10 s heartbeat) unless the old ones are gone.
        self._unsubscribe(self.proxy, self.subscriptions)
        self.proxy, self.subscriptions = None, []
        proxy = None
        subscribed: list[int] = []
        self._connecting = True
        try:
            proxy = tango.DeviceProxy(self.device)
            proxy.set_timeout_millis(int(self.settings.timeout * 1000))
            proxy.ping()
            infos = proxy.attribute_list_query_ex()
            modes: dict[str, str] = {}
            poll: list[str] = []
            for info in infos:
                if not self.selection.wants(self.device, info.name):
                    continue
                meta = meta_from_info(self.device, info)
                self.logic.register(meta)
                # a written value may be stored as a property (a setting,
                # or memorized): its events prompt a read of the properties
                stored = info.writable != tango.AttrWriteType.READ
                mode = self._subscribe_values(proxy, info.name, meta.key, subscribed, stored)
                if mode is None:
                    poll.append(info.name)
                    mode = "poll"
                modes[info.name] = mode
                try:
                    subscribed.append(
                        proxy.subscribe_event(
                            info.name, tango.EventType.ATTR_CONF_EVENT, self._on_config
                        )
                    )
                except tango.DevFailed:
                    self._record_config(info, time.time())
            self._attr_names = {i.name.lower() for i in infos}
            with contextlib.suppress(tango.DevFailed):
                subscribed.append(
                    proxy.subscribe_event(
                        tango.EventType.INTERFACE_CHANGE_EVENT, self._on_interface
                    )
                )
        except tango.DevFailed as exc:
            self._unsubscribe(proxy, subscribed)
            self.connected = False
            self.last_error = exc.args[0].desc.strip().splitlines()[0] if exc.args else str(exc)
            return False
        finally:
            self._connecting = False
        self.proxy, self.subscriptions = proxy, subscribed
        self.modes, self.poll_names = modes, poll
        self._polled = {}
        self.connected = True
        self.connects += 1
        self.connected_at = time.time()
        self.last_error = ""
        return True

    def _subscribe_values(
        self, proxy, name: str, key: str, subscribed: list[int], stored: bool = False
    ) -> str | None:
        callback = self.logic.sink(key)
        if stored:  # the device may store its new value in the database
            sink = callback

            def callback(event, sink=sink):
                sink(event)
                if not event.err:
                    self.properties_soon()

        for event_type, mode in EVENT_MODES:
            try:
                subscribed.append(proxy.subscribe_event(name, event_type, callback))
                return mode
            except tango.DevFailed:
                continue
        return None

    def _subscribe_polled(self) -> None:
        """Try again to subscribe to each attribute that is read instead; one
        that now takes a subscription is no longer read."""
        for name in list(self.poll_names):
            mode = self._subscribe_values(
                self.proxy, name, attr_key(self.device, name), self.subscriptions
            )
            if mode is not None:
                self.poll_names.remove(name)
                self.modes[name] = mode
                self._polled.pop(name, None)

    @staticmethod
    def _unsubscribe(proxy, ids: list[int]) -> None:
        if proxy is None:
            return
        for sid in ids:
            with contextlib.suppress(tango.DevFailed, RuntimeError):
                proxy.unsubscribe_event(sid)

    # ---------------------------------------------------------- callbacks
    def _on_config(self, event) -> None:
        if event.err or event.attr_conf is None:
            return
        self._record_config(event.attr_conf, event.reception_date.totime())
        self.properties_soon()  # a configuration set by a client is stored there too

    def _record_config(self, info, t: float) -> None:
        config = config_dict(info)
        name = info.name
        if self._configs.get(name.lower()) == config:
            return
        self._configs[name.lower()] = config
        self.logic.settings(self.device, t, {"kind": "config", "attribute": name, "config": config})

    def _on_interface(self, event) -> None:
        if event.err:
            return
        names = {a.name.lower() for a in (event.att_list or ())}
        if names and names != self._attr_names:
            self.logic.journal(
                {
                    "kind": "interface",
                    "time": time.time(),
                    "device": self.device,
                    "added": sorted(names - self._attr_names),
                    "removed": sorted(self._attr_names - names),
                }
            )
            self.resubscribe()

    # ------------------------------------------------------------ polling
    def _poll(self) -> None:
        names = list(self.poll_names)
        try:
            results = self.proxy.read_attributes(names)
        except tango.DevFailed as exc:
            err = exc.args[0]
            now = time.time()
            for name in names:
                self._polled.pop(name, None)
                self.logic.put(
                    attr_key(self.device, name), now, None, ERROR, (err.reason, err.desc.strip())
                )
            return
        for name, result in zip(names, results, strict=False):
            key = attr_key(self.device, name)
            if result.has_failed:
                stack = result.get_err_stack()
                reason = stack[0].reason if stack else "READ_FAILED"
                desc = stack[0].desc.strip() if stack else ""
                self._polled.pop(name, None)
                self.logic.put(key, time.time(), None, ERROR, (reason, desc))
                continue
            quality = int(result.quality)
            signature = _signature(result.value, quality)
            with contextlib.suppress(ValueError):  # numpy: ambiguous comparison
                if self._polled.get(name) == signature:
                    continue
            self._polled[name] = signature
            self.logic.put(key, result.time.totime(), result.value, quality)

    def _poll_properties(self) -> None:
        def read(db):
            names = list(db.get_device_property_list(self.device, "*"))
            props = db.get_device_property(self.device, names) if names else {}
            attrs = tango.StdStringVector()
            db.get_device_attribute_list(self.device, attrs)
            attr_names = list(attrs)
            aprops = db.get_device_attribute_property(self.device, attr_names) if attr_names else {}
            return props, aprops

        try:
            props, aprops = self._db(read)
        except tango.DevFailed as exc:
            log.info("properties of %s: %s", self.device, exc.args[0].desc.strip())
            return
        snapshot = {
            "properties": {k: list(v) for k, v in sorted(props.items())},
            "attribute_properties": {
                a: {p: list(v) for p, v in sorted(d.items())} for a, d in sorted(aprops.items())
            },
        }
        if snapshot != self._properties:
            self._properties = snapshot
            self.logic.settings(self.device, time.time(), {"kind": "properties", **snapshot})

    def report(self) -> dict:
        return {
            "device": self.device,
            "connected": self.connected,
            "connects": self.connects,
            "connected_at": self.connected_at,
            "error": self.last_error,
            "attributes": dict(sorted(self.modes.items())),
        }


# ------------------------------------------------------------------ sources
class LoggerSources:
    """Every device the logger archives, kept in step with the database."""

    def __init__(
        self,
        logic: LoggerLogic,
        selection: Selection,
        settings: SourceSettings,
        own_device: str,
        supervisors: tuple[str, ...] = SUPERVISORS,
        watch_factory: Callable[..., DeviceWatch] = DeviceWatch,
    ) -> None:
        self.logic = logic
        self.selection = selection
        self.settings = settings
        self.own = own_device.lower()
        self.supervisors = supervisors
        self.watch_factory = watch_factory
        self.watches: dict[str, DeviceWatch] = {}
        self._lock = threading.Lock()
        self._announcements: list[tuple[Any, int]] = []
        self._rescan = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logger-discovery", daemon=True)
        self.last_error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._rescan.set()
        self._thread.join(3.0)
        for proxy, sid in self._announcements:
            with contextlib.suppress(tango.DevFailed, RuntimeError):
                proxy.unsubscribe_event(sid)
        with self._lock:
            watches, self.watches = list(self.watches.values()), {}
        for watch in watches:
            watch._stop.set()
            watch._wake.set()
        for watch in watches:
            watch.stop(join=2.0)

    def rescan(self) -> None:
        self._rescan.set()

    def _run(self) -> None:
        with tango.EnsureOmniThread():
            self._listen_to_supervisors()
            while not self._stop.is_set():
                self.discover()
                self._rescan.wait(self.settings.discovery_period)
                self._rescan.clear()

    def discover(self) -> None:
        try:
            db = tango.Database()
            names = list(db.command_inout("DbGetDeviceWideList", "*"))
        except tango.DevFailed as exc:
            self.last_error = f"cannot read the device list: {exc.args[0].desc.strip()}"
            log.warning("%s", self.last_error)
            return
        self.last_error = ""
        wanted = {
            n.lower(): n
            for n in names
            if n.count("/") == 2
            and n.lower() != self.own
            and not n.lower().startswith("dserver/")
            and self.selection.wants_device(n)
        }
        with self._lock:
            if self._stop.is_set():
                return
            # before the new watches start: their first property read is
            # spread over the period that fits this many devices
            self.settings.watched = len(wanted)
            for low in list(self.watches):
                if low not in wanted:
                    self.watches.pop(low).stop(join=0.5)
            for low, name in wanted.items():
                if low not in self.watches:
                    watch = self.watch_factory(name, self.logic, self.selection, self.settings)
                    self.watches[low] = watch
                    watch.start()

    def _listen_to_supervisors(self) -> None:
        for name in self.supervisors:
            try:
                proxy = tango.DeviceProxy(name)
                sid = proxy.subscribe_event(
                    "LastRestart",
                    tango.EventType.CHANGE_EVENT,
                    self._on_announcement,
                    stateless=True,
                )
                self._announcements.append((proxy, sid))
            except tango.DevFailed as exc:
                log.info("no restart announcements from %s: %s", name, exc.args[0].desc.strip())

    def _on_announcement(self, event) -> None:
        if event.err or event.attr_value is None or not event.attr_value.value:
            return
        try:
            announcement = json.loads(event.attr_value.value)
        except ValueError:
            return
        with self._lock:
            for device in announcement.get("devices", ()):
                watch = self.watches.get(str(device).lower())
                if watch is not None:
                    watch.resubscribe()

    # ------------------------------------------------------------- views
    def summary(self) -> tuple[int, int, list[str]]:
        """(connected, total, unreachable device names)."""
        with self._lock:
            watches = list(self.watches.values())
        down = sorted(w.device for w in watches if not w.connected)
        return len(watches) - len(down), len(watches), down

    def report(self) -> list[dict]:
        with self._lock:
            watches = list(self.watches.values())
        return [w.report() for w in sorted(watches, key=lambda w: w.device)]

    def counts(self) -> tuple[int, int]:
        """(attributes archived from events, attributes read by polling)."""
        with self._lock:
            watches = list(self.watches.values())
        events = sum(1 for w in watches for m in w.modes.values() if m != "poll")
        polled = sum(len(w.poll_names) for w in watches)
        return events, polled
