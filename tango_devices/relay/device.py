"""EventRelay: every Tango client's events resume within a second of a restart (Tango layer).

One per host (``bl01/sys/eventrelay``, server ``EventRelay/relay``), started
before the hardware servers. It relays the ZMQ events of every server of the
host's port plan (``<run dir>/event-ports.json``, written by ``beamline up``)
so that a restarted server is, to its clients' existing connections, the same
server: :mod:`tango_devices.relay.relay_logic` says how, docs/events.md what
was measured. This layer only reads the plan and re-creates subscriptions
through the new process's admin device.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

import tango
from tango import DevState
from tango.server import attribute, command

from tango_devices.common import lifecycle
from tango_devices.common.device_base import BeamlineDevice, run_server, table_checks
from tango_devices.relay import ports
from tango_devices.relay.relay_logic import (
    EVENTS_READY_TIMEOUT,
    RESUBSCRIBE_TIMEOUT,
    RelayLogic,
)
from tango_devices.relay.states import RELAY_TABLE

PING_STEP = 0.02  # s between pings of a new process's admin device

log = logging.getLogger(__name__)


def device_owners() -> dict[str, str]:
    """Every device of the database -> its server (``bl01/mot/x`` ->
    ``Motor/x``), for the relay to pass each server only its own devices'
    subscriptions. One request per server (the database has no single one
    for this); a server it cannot list is left out (its devices' topics then
    go to every server, as without the map)."""
    with tango.EnsureOmniThread():
        db = tango.Database()
        owners: dict[str, str] = {}
        for server in db.get_server_list("*"):
            try:
                listed = list(db.get_device_class_list(server))
            except tango.DevFailed:
                continue
            for device in listed[0::2]:
                owners[device] = server
        return owners


def resubscribe(
    admin: str, topics: list[tuple[str, str, str]], events_ready: Callable[[float], bool]
) -> tuple[int, list[str]]:
    """Re-create ``topics`` in the new process behind ``admin``, as cppTango's
    client keep-alive thread does (eventkeepalive.cpp, reconnect_to_zmq_channel):
    ``ZmqEventSubscriptionChange [device, attribute, "subscribe", event, "0"]``;
    then have each device publish its current values (RepublishEvents), as the
    keep-alive thread's re-subscription hands the client a fresh reading."""
    with tango.EnsureOmniThread():
        deadline = time.monotonic() + RESUBSCRIBE_TIMEOUT
        while True:
            try:
                # a new proxy each time: a proxy that failed to connect waits
                # 1 s before it tries again (cppTango's reconnection throttle)
                proxy = tango.DeviceProxy(admin)
                proxy.set_timeout_millis(1000)
                proxy.ping()
                break
            except tango.DevFailed as exc:
                if time.monotonic() > deadline:
                    return 0, [f"{admin} did not answer: {exc.args[0].desc.strip()}"]
                time.sleep(PING_STEP)
        # a client's subscriptions reach every server its event socket is
        # connected to: only this server's devices' topics are re-created
        devices = {d.split("::", 1)[-1].lower() for d in proxy.command_inout("QueryDevice")}
        made, errors = 0, []
        for device, attr, event in topics:
            if device.lower() not in devices:
                continue
            try:
                proxy.command_inout(
                    "ZmqEventSubscriptionChange", [device, attr, "subscribe", event, "0"]
                )
                made += 1
            except tango.DevFailed as exc:
                errors.append(f"{device}/{attr} {event}: {exc.args[0].desc.strip()}")
        if made and not events_ready(EVENTS_READY_TIMEOUT):
            errors.append(
                f"the new process's event port did not accept the relay within "
                f"{EVENTS_READY_TIMEOUT:g} s"
            )
            return made, errors
        for device in sorted({t[0].lower() for t in topics} & devices):
            try:
                dev = tango.DeviceProxy(device)
                dev.set_timeout_millis(1000)
                dev.command_inout("RepublishEvents")
            except tango.DevFailed as exc:
                errors.append(f"{device} RepublishEvents: {exc.args[0].desc.strip()}")
        return made, errors


class EventRelay(BeamlineDevice):
    """Keeps the clients' event connections of every server of the host open
    across its restarts, and brings the new process's events to them at once."""

    def init_device(self) -> None:
        BeamlineDevice.init_device(self)
        self.set_state(DevState.INIT)
        routes, address = self._plan()
        self.logic = RelayLogic(routes, address, resubscribe)
        self.init_state_events(self.logic.machine)
        self.logic.start()
        self._learn_owners()

    def _learn_owners(self) -> None:
        """Tell the relay which server has which device, from the database,
        in a thread: the relay relays meanwhile (every subscription to every
        server, as before it knows)."""
        logic = self.logic

        def work() -> None:
            started = time.monotonic()
            try:
                owners = device_owners()
            except tango.DevFailed as exc:
                log.warning("the devices' servers could not be read: %s", exc.args[0].desc)
                return
            logic.set_owners(owners)
            log.info("%d devices' servers known in %.2f s", len(owners), time.monotonic() - started)

        threading.Thread(target=work, name="relay owners", daemon=True).start()

    def delete_device(self) -> None:
        lifecycle.mark_clean_exit(tango.Util.instance().get_ds_name())
        if self.logic is not None:
            self.logic.stop()
            self.logic = None

    def _plan(self) -> tuple[list[ports.Route], str]:
        run_dir = os.environ.get(ports.RUN_DIR_ENV)
        if not run_dir or os.environ.get(ports.DISABLE_ENV) or ports.shim_path() is None:
            return [], "127.0.0.1"
        try:
            plan = ports.load(run_dir)
            address = json.loads(ports.plan_path(run_dir).read_text()).get("address", "127.0.0.1")
        except (ports.PortPlanError, OSError, ValueError):
            return [], "127.0.0.1"
        return list(plan.values()), address

    # ------------------------------------------------------------ attributes
    @attribute(dtype=int, description="servers whose events are relayed")
    def Servers(self) -> int:
        return len(self.logic.report()["servers"]) if self.logic else 0

    @attribute(dtype=int, description="distinct event topics the clients subscribed to")
    def Topics(self) -> int:
        return self.logic.topic_count() if self.logic else 0

    @attribute(dtype=int, description="restarted servers whose subscriptions were re-created")
    def Resubscriptions(self) -> int:
        return self.logic.resubscription_count() if self.logic else 0

    @attribute(
        dtype=str,
        description="JSON: per server its ports, bind error, topics, messages relayed and "
        "the last re-subscription",
    )
    def Report(self) -> str:
        return json.dumps(self.logic.report() if self.logic else {"servers": []})

    # ------------------------------------------------------------ commands
    @command(doc_out="what the relay does now")
    def Reload(self) -> str:
        """Read the port plan again (relay servers added to it, forget removed
        ones) and the database's devices of each server."""
        routes, _address = self._plan()
        self.logic.reload(routes)
        self._learn_owners()
        return f"relaying {len(routes)} servers"

    locals().update(table_checks(RELAY_TABLE))


def main(args=None) -> None:
    run_server((EventRelay,), args=args)


if __name__ == "__main__":
    main()
