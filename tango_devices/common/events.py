"""Event subscriptions that survive server restarts quickly (Tango client side).

After a server restart, cppTango reconnects an existing event subscription
only at its 10 s heartbeat: about 9.5 s without events although the device
answers reads 0.5 s after the restart. The supervisors announce every restart
they make (their ``LastRestart`` attribute: JSON with the server and its
devices). A :class:`ResilientSubscription` listens to those announcements and,
when its device's server was restarted, subscribes again at once on a fresh
connection: events resume within about a second of the device answering.

Used by the suite's own clients (the queue, the GUI); any client can use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence

import tango

log = logging.getLogger(__name__)

SUPERVISORS = ("bl01/sys/supervisor", "bl01/sys/supervisor-standby")


class ResilientSubscription:
    """Subscribe to ``attribute`` of ``device``; resubscribe when a supervisor
    announces that the device's server was restarted."""

    def __init__(
        self,
        device: str,
        attribute: str,
        callback: Callable[[tango.EventData], None],
        event_type: tango.EventType = tango.EventType.CHANGE_EVENT,
        supervisors: Sequence[str] = SUPERVISORS,
        tango_host: str | None = None,
    ) -> None:
        """``tango_host`` (HOST:PORT) names the database of the device and the
        supervisors; default: the TANGO_HOST of the environment."""
        self.device = device
        self._prefix = f"tango://{tango_host}/" if tango_host else ""
        self.attribute = attribute
        self.callback = callback
        self.event_type = event_type
        self.resubscriptions = 0
        self._lock = threading.Lock()
        self._proxy, self._id = self._subscribe()
        self._watched = []
        for name in supervisors:
            try:
                proxy = tango.DeviceProxy(self._prefix + name)
                sid = proxy.subscribe_event(
                    "LastRestart", tango.EventType.CHANGE_EVENT, self._on_announcement
                )
                self._watched.append((proxy, sid))
            except tango.DevFailed as exc:
                log.info("no restart announcements from %s: %s", name, exc.args[0].desc.strip())

    def _subscribe(self):
        proxy = tango.DeviceProxy(self._prefix + self.device)
        sid = proxy.subscribe_event(self.attribute, self.event_type, self.callback, stateless=True)
        return proxy, sid

    def _on_announcement(self, event: tango.EventData) -> None:
        if event.err or event.attr_value is None or not event.attr_value.value:
            return
        try:
            announcement = json.loads(event.attr_value.value)
        except ValueError:
            return
        devices = {d.lower() for d in announcement.get("devices", ())}
        if self.device.lower() in devices:
            # not from inside the event callback: resubscribing may take a while
            threading.Thread(target=self.resubscribe, daemon=True).start()

    def resubscribe(self) -> None:
        """Drop the old subscription, then subscribe again on a fresh connection.

        In that order: cppTango keeps one event channel per device server and
        goes on using the dead server's channel while any old subscription
        exists, so pushed events would only come back at its 10 s heartbeat
        (only the value read at subscription would arrive at once)."""
        with self._lock:
            old_proxy, old_id = self._proxy, self._id
            with contextlib.suppress(tango.DevFailed):
                old_proxy.unsubscribe_event(old_id)
            try:
                self._proxy, self._id = self._subscribe()
            except tango.DevFailed as exc:
                log.warning("resubscribing to %s/%s failed: %s", self.device, self.attribute, exc)
                return
            self.resubscriptions += 1

    def close(self) -> None:
        with self._lock:
            for proxy, sid in [(self._proxy, self._id), *self._watched]:
                with contextlib.suppress(tango.DevFailed):
                    proxy.unsubscribe_event(sid)
            self._watched = []
