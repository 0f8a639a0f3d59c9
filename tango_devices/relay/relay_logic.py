"""The event relay: Tango clients' events survive a server's restart (no tango).

For every server of the port plan (:mod:`tango_devices.relay.ports`) the relay
binds the two ports the server advertises (an XPUB socket each, which the
clients' SUB sockets connect to) and connects to the two ports the server
binds (an XSUB socket each), and forwards messages down and subscriptions up.
When the server dies and a new process binds the same ports, the relay's
XSUB sockets reconnect within 20 ms and the clients' TCP connections, which
end at the relay, never notice. Two things make the new process publish to
them at once:

* **its subscriptions**: a Tango server publishes only events someone
  subscribed to through its admin device (cppTango's
  ``Attribute::generic_fire_event``). The relay knows every topic its clients
  subscribed to (XPUB hands them over) and, when the new process's heartbeat
  socket appears, calls ``ZmqEventSubscriptionChange`` on its admin device for
  each, as cppTango's own keep-alive thread would (``resubscribe``, given by
  the device layer);
* **its heartbeat**: a client declares its events dead when it saw no
  heartbeat for 10 s, and a new server sends its first one 9 s after starting.
  The relay replays the last heartbeat at once after re-subscribing, and
  every second until the new process's own first heartbeat (at most 20 s);
  from then on the server's own every 9 s, as without the relay (replaying
  them always cost 16 % of a core for 200 servers). A server that stays dead
  gets no heartbeat: its clients see API_EventTimeout as without the relay.

Measured (docs/events.md): a plain PyTango subscriber gets events again
0.07-0.1 s after the restarted server answers, with no error event.

A client's event consumer has one SUB socket for the events of every server
it listens to, and ZMQ sends each of its subscriptions to every publisher the
socket is connected to: a logger subscribed to 20 attributes of each of 200
devices sends all 4,000 topics to each of the 200 servers. Each route passes
on (and keeps, for re-subscriptions) only the topics of its own server's
devices (``owners``: device -> server, from the database) and of devices the
relay does not know; its server's heartbeat topic only, of the heartbeat
topics. Passing them all on cost 1.4 GiB at 200 servers (the relay's upstream
sockets keep every subscription to send it again to a new process).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import resource
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.utils.monitor

from tango_devices.common.statemachine import StateMachine
from tango_devices.relay.ports import Route
from tango_devices.relay.states import CLASH, IDLE, RELAY_TABLE, RELAYING

log = logging.getLogger(__name__)

REEMIT_PERIOD = 1.0  # s between replayed heartbeats while a new process has sent none
BRIDGE = 20.0  # s at most of replayed heartbeats after a re-subscription
SWEEP_PERIOD = 1.0  # s between looks at every socket, ready or not
SERVE_ROUNDS = 50  # rounds of serving ready sockets before the housekeeping
SERVE_BURST = 1000  # messages from one socket in a round
RECONNECT_IVL = 20  # ms: the upstream sockets reconnect this fast to a new process
RETRY_CLASH = 5.0  # s between attempts to bind ports another process held
HWM = 10000  # messages queued per socket (cppTango's own publishers keep 1000)
RESUBSCRIBE_TIMEOUT = 30.0  # s for a new process's admin device to answer
EVENTS_READY_TIMEOUT = 2.0  # s for the relay to connect to a new process's event port
SUBSCRIPTIONS_SETTLE = 0.05  # s for the relay's subscriptions to reach a new process

#: a heartbeat's ZmqCallInfo as cppTango 10.3 sends it, for a heartbeat topic
#: the relay never saw a real heartbeat on (the consumer only parses it)
HEARTBEAT_CALL_INFO = bytes.fromhex("01000000000000000100000000ab03000000000000")

#: (admin device, [(device, attribute, event)], events_ready) -> (subscriptions
#: made, errors); events_ready(timeout) waits until the relay is connected to
#: the new process's event port (it binds it at the first subscription)
Resubscriber = Callable[
    [str, list[tuple[str, str, str]], Callable[[float], bool]], tuple[int, list[str]]
]


#: ZMQ sockets in the relay's context: 8 per server (2 XPUB, 2 XSUB and 2
#: monitors, each monitor a pair); libzmq's default (1023) is ~120 servers
MAX_SOCKETS = 8192
#: open files the relay asks for: a socket each, its listeners, its
#: connections to the servers and to every client (a Debian default is 1024)
OPEN_FILES = 65536


def room_for_many_servers() -> None:
    """Raise this process's open-file limit towards :data:`OPEN_FILES` (as far
    as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """``tango://h:p/dom/fam/mem/attr.idl5_change`` -> (device, attribute, event);
    device events (``.../dom/fam/mem.intr_change``) have no attribute; None if
    ``topic`` is not an event topic."""
    if "://" not in topic:
        return None
    rest = topic.split("://", 1)[1]
    if "/" not in rest:
        return None
    name = rest.split("/", 1)[1]
    if "." not in name:
        return None
    name, event = name.rsplit(".", 1)
    parts = name.split("/")
    if len(parts) == 4:
        return "/".join(parts[:3]), parts[3], event
    if len(parts) == 3:
        return name, "", event
    return None


@dataclass
class _Relay:
    """One server's sockets and what the relay learnt about it."""

    route: Route
    down_ev: Any = None  # XPUB on the advertised event port
    up_ev: Any = None  # XSUB to the server's event port
    down_hb: Any = None
    up_hb: Any = None
    monitor: Any = None  # connection events of up_hb: a new process
    events_monitor: Any = None  # connection events of up_ev
    events_connected: threading.Event = field(default_factory=threading.Event)
    error: str = ""  # the ports could not be bound
    topics: set[str] = field(default_factory=set)
    heartbeat_topics: set[str] = field(default_factory=set)
    last_heartbeat: list[bytes] | None = None
    connected: bool = False
    ever_connected: bool = False
    bridge_until: float = 0.0  # replay heartbeats until then, or the new process's own
    last_emit: float = 0.0
    events: int = 0
    heartbeats: int = 0
    resubscriptions: int = 0
    last_resubscription: str = ""
    first_event_pending: bool = False

    def sockets(self) -> list[Any]:
        return [
            s
            for s in (
                self.down_ev,
                self.up_ev,
                self.down_hb,
                self.up_hb,
                self.monitor,
                self.events_monitor,
            )
            if s
        ]

    def heartbeat_messages(self) -> list[list[bytes]]:
        if self.last_heartbeat is not None:
            return [self.last_heartbeat]
        # a client's heartbeat socket subscribes every server's topic on every
        # connection: only this server's own is ever made up
        own = f"/dserver/{self.route.server.lower()}.heartbeat"
        return [
            [t.encode("latin-1"), b"\x01", HEARTBEAT_CALL_INFO]
            for t in sorted(self.heartbeat_topics)
            if t.lower().endswith(own)
        ]


class RelayLogic:
    """Relays the events of the servers of a port plan, in one thread."""

    def __init__(
        self,
        routes: Iterable[Route],
        address: str,
        resubscribe: Resubscriber,  # re-creates the topics of the server's own devices
        clock: Callable[[], float] = time.monotonic,
        owners: Mapping[str, str] | None = None,  # device -> its server (see set_owners)
    ) -> None:
        self.address = address if address not in ("", "0.0.0.0") else "*"
        self.connect_address = "127.0.0.1" if self.address == "*" else self.address
        self._resubscribe = resubscribe
        self._clock = clock
        self.machine = StateMachine(RELAY_TABLE)
        room_for_many_servers()
        self._ctx = zmq.Context()
        self._ctx.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
        self._relays: dict[str, _Relay] = {}
        self._topic_refs: dict[str, int] = {}  # event topic -> servers that saw it subscribed
        self._owners: dict[str, str] = _lower_owners(owners or {})
        self._pending_routes: list[Route] = list(routes)
        self._requests: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._wake_address = f"inproc://relay-wake-{id(self)}"
        self._wake = self._ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_address)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_retry = 0.0

    # ------------------------------------------------------------ life
    def start(self) -> None:
        self._apply(self._pending_routes)
        self._pending_routes = []
        self._thread = threading.Thread(target=self._run, name="event-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(5.0)
        for relay in self._relays.values():
            self._close(relay)
        self._wake.close(linger=0)
        self._ctx.term()

    def reload(self, routes: Iterable[Route]) -> None:
        """Relay these servers from now on (added ones bound, removed ones closed)."""
        self._requests.put(("routes", list(routes)))
        self._poke()

    def set_owners(self, owners: Mapping[str, str]) -> None:
        """Which server has which device (names as the database gives them):
        from now on each server gets the subscriptions of its own devices and
        of devices not in ``owners``, and stops getting the others it got."""
        self._requests.put(("owners", _lower_owners(owners)))
        self._poke()

    def _poke(self) -> None:
        try:
            sock = self._ctx.socket(zmq.PUSH)
        except zmq.ZMQError:  # stopped: the context is gone
            return
        with contextlib.suppress(zmq.ZMQError):
            sock.connect(self._wake_address)
            sock.send(b"", zmq.NOBLOCK)
        sock.close(linger=0)

    # ------------------------------------------------------------ report
    def report(self) -> dict[str, Any]:
        servers = []
        for relay in list(self._relays.values()):
            r = relay.route
            servers.append(
                {
                    "server": r.server,
                    "ports": {
                        "events": r.events,
                        "heartbeat": r.heartbeat,
                        "events_bound": r.events_bound,
                        "heartbeat_bound": r.heartbeat_bound,
                    },
                    "error": relay.error,
                    "connected": relay.connected,
                    "topics": len(relay.topics),
                    "devices": sorted(
                        {p[0] for p in (parse_topic(t) for t in list(relay.topics)) if p}
                    ),
                    "events": relay.events,
                    "heartbeats": relay.heartbeats,
                    "resubscriptions": relay.resubscriptions,
                    "last_resubscription": relay.last_resubscription,
                }
            )
        return {"servers": servers}

    def topic_count(self) -> int:
        """Distinct event topics subscribed (a client's subscriptions reach
        every server its socket is connected to: each relay sees them all).
        Kept as it changes: a logger reads it every second."""
        return len(self._topic_refs)

    def resubscription_count(self) -> int:
        return sum(r.resubscriptions for r in list(self._relays.values()))

    # ------------------------------------------------------------ sockets
    def _apply(self, routes: list[Route]) -> None:
        wanted = {r.server.lower(): r for r in routes}
        for key in list(self._relays):
            if key not in wanted or wanted[key] != self._relays[key].route:
                self._close(self._relays.pop(key))
        for key, route in wanted.items():
            if key not in self._relays:
                relay = _Relay(route)
                self._relays[key] = relay
                self._open(relay)
        self._classify()

    def _open(self, relay: _Relay) -> None:
        r = relay.route
        try:
            relay.down_ev = self._xpub(r.events)
            relay.down_hb = self._xpub(r.heartbeat)
        except zmq.ZMQError as exc:
            self._close(relay)
            relay.error = (
                f"ports {r.events} and {r.heartbeat} ({r.server}'s events) cannot be bound: "
                f"{exc.strerror}; another process holds them (`ss -ltnp 'sport = :{r.events}'` "
                "names it): stop it, or delete event-ports.json in the run directory and run "
                "beamline up again for new ports"
            )
            return
        relay.error = ""
        relay.up_ev = self._xsub(r.events_bound)
        relay.up_hb = self._xsub(r.heartbeat_bound)
        watched = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
        relay.monitor = relay.up_hb.get_monitor_socket(watched)
        relay.events_monitor = relay.up_ev.get_monitor_socket(watched)
        relay.up_ev.connect(f"tcp://{self.connect_address}:{r.events_bound}")
        relay.up_hb.connect(f"tcp://{self.connect_address}:{r.heartbeat_bound}")

    def _xpub(self, port: int):
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        try:
            sock.bind(f"tcp://{self.address}:{port}")
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        return sock

    def _xsub(self, port: int):
        sock = self._ctx.socket(zmq.XSUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL)
        return sock

    def _forget_topic(self, topic: str) -> None:
        left = self._topic_refs.get(topic, 0) - 1
        if left > 0:
            self._topic_refs[topic] = left
        else:
            self._topic_refs.pop(topic, None)

    def _close(self, relay: _Relay) -> None:
        for sock, monitor in ((relay.up_hb, relay.monitor), (relay.up_ev, relay.events_monitor)):
            if sock is not None and monitor is not None:
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
        for sock in relay.sockets():
            sock.close(linger=0)
        relay.down_ev = relay.up_ev = relay.down_hb = relay.up_hb = None
        relay.monitor = relay.events_monitor = None
        relay.connected = False
        for topic in relay.topics:  # its clients' connections ended with its sockets
            self._forget_topic(topic)
        relay.topics.clear()
        relay.events_connected.clear()

    def _classify(self) -> None:
        errors = [r.error for r in self._relays.values() if r.error]
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            self.machine.fire(CLASH, f"{errors[0]}{more}")
        elif not self._relays:
            self.machine.fire(
                IDLE,
                "nothing to relay: no event port plan (servers publish their events "
                "themselves; clients see a restarted server's events ~10 s late)",
            )
        else:
            self.machine.fire(RELAYING, f"relaying the events of {len(self._relays)} servers")

    # ------------------------------------------------------------ the loop
    # ZMQ sockets of one server, by the name of the _Relay field holding each
    SOCKET_NAMES = ("down_ev", "up_ev", "down_hb", "up_hb", "monitor", "events_monitor")

    def _run(self) -> None:
        """Wait on every socket's ZMQ_FD with epoll and serve only the sockets
        that are ready: zmq_poll over 8 sockets per server on every message
        cost 13-16 % of a core at 200 servers. A ZMQ_FD only says that a
        socket may have something: a socket is served until ZMQ_EVENTS says
        it has nothing more, every socket of a server that was served is
        checked again (a send can take another socket's signal), and every
        socket once a second anyway."""
        epoll = select.epoll()
        by_fd: dict[int, tuple[_Relay | None, str, Any]] = {}

        def register() -> None:
            for fd in list(by_fd):
                with contextlib.suppress(OSError):
                    epoll.unregister(fd)
            by_fd.clear()
            entries = [(None, "wake", self._wake)]
            for relay in self._relays.values():
                entries += [(relay, n, getattr(relay, n)) for n in self.SOCKET_NAMES]
            for relay, name, sock in entries:
                if sock is None:
                    continue
                fd = sock.getsockopt(zmq.FD)
                by_fd[fd] = (relay, name, sock)
                epoll.register(fd, select.EPOLLIN)

        register()
        next_sweep = 0.0
        left: list[tuple[_Relay | None, str, Any]] = []  # still readable after serving
        try:
            while not self._stop.is_set():
                now = self._clock()
                if self._housekeeping(now):
                    register()
                    left = []
                timeout = 0 if left else REEMIT_PERIOD / 4
                try:
                    ready = [by_fd[fd] for fd, _ in epoll.poll(timeout) if fd in by_fd]
                except InterruptedError:
                    continue
                if now >= next_sweep:
                    next_sweep = now + SWEEP_PERIOD
                    ready = list(by_fd.values())
                left = self._serve(left + ready)
        finally:
            epoll.close()

    def _serve(self, ready: list[tuple[_Relay | None, str, Any]]) -> list:
        """Serve ``ready`` and what its servers' sockets have meanwhile; what
        is still readable after :data:`SERVE_ROUNDS` rounds."""
        todo = ready
        rounds = 0
        # a flood from one server must not starve the housekeeping: what is
        # left is served after it (the next sweep at the latest)
        while todo and not self._stop.is_set() and rounds < SERVE_ROUNDS:
            rounds += 1
            touched: dict[int, _Relay] = {}
            for relay, name, sock in todo:
                burst = 0
                while burst < SERVE_BURST and self._readable(sock):
                    burst += 1
                    if relay is None:  # the wake-up socket
                        sock.recv(zmq.NOBLOCK)
                        continue
                    touched[id(relay)] = relay
                    try:
                        self._handle(relay, name)
                    except zmq.ZMQError as exc:
                        log.warning("%s: relay error on %s: %s", relay.route.server, name, exc)
                        break
            todo = [
                (relay, name, getattr(relay, name))
                for relay in touched.values()
                for name in self.SOCKET_NAMES
                if getattr(relay, name) is not None
            ]
            todo = [entry for entry in todo if self._readable(entry[2])]
        return todo

    @staticmethod
    def _readable(sock) -> bool:
        try:
            return bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        except zmq.ZMQError:  # closed meanwhile (a reload)
            return False

    def _housekeeping(self, now: float) -> bool:
        """Requests, finished re-subscriptions, clashes to retry, heartbeats to
        replay; whether the sockets changed."""
        changed = False
        while True:
            try:
                what, value = self._requests.get_nowait()
            except queue.Empty:
                break
            if what == "owners":
                self._owners = value
                self._drop_foreign_topics()
            else:
                self._apply(value)
                changed = True
        while True:
            try:
                key, made, errors, took = self._done.get_nowait()
            except queue.Empty:
                break
            relay = self._relays.get(key)
            if relay is None:
                continue
            relay.resubscriptions += 1
            relay.first_event_pending = True
            log.info(
                "%s: new process, %d subscription(s) re-created in %.2f s%s",
                relay.route.server,
                made,
                took,
                f"; failed: {'; '.join(errors[:3])}" if errors else "",
            )
            relay.last_resubscription = (
                f"{made} subscription(s) re-created {took:.2f} s after the new process bound its "
                "ports" + (f"; failed: {'; '.join(errors[:3])}" if errors else "")
            )
            if made:
                relay.bridge_until = now + BRIDGE
                self._emit_heartbeat(relay, now)
        if now >= self._next_retry and any(r.error for r in self._relays.values()):
            self._next_retry = now + RETRY_CLASH
            for relay in self._relays.values():
                if relay.error:
                    self._open(relay)
                    changed = changed or not relay.error
            self._classify()
        for relay in self._relays.values():
            if (
                relay.connected
                and now < relay.bridge_until
                and now - relay.last_emit >= REEMIT_PERIOD
            ):
                self._emit_heartbeat(relay, now)
        return changed

    def _emit_heartbeat(self, relay: _Relay, now: float) -> None:
        relay.last_emit = now
        if relay.down_hb is None:
            return
        for message in relay.heartbeat_messages():
            relay.down_hb.send_multipart(message, zmq.NOBLOCK)

    def _handle(self, relay: _Relay, name: str) -> None:
        if name == "up_ev":
            message = relay.up_ev.recv_multipart()
            relay.down_ev.send_multipart(message, zmq.NOBLOCK)
            relay.events += 1
            if relay.first_event_pending:
                relay.first_event_pending = False
                log.info("%s: first event of the new process: %s", relay.route.server, message[0])
        elif name == "up_hb":
            message = relay.up_hb.recv_multipart()
            now = self._clock()
            relay.last_heartbeat = message
            relay.heartbeats += 1
            relay.bridge_until = 0.0  # the new process's own heartbeat: no more bridging
            relay.last_emit = now
            relay.down_hb.send_multipart(message, zmq.NOBLOCK)
        elif name in ("down_ev", "down_hb"):
            message = getattr(relay, name).recv()
            heartbeat = name == "down_hb"
            topics = relay.heartbeat_topics if heartbeat else relay.topics
            topic = message[1:].decode("latin-1")
            if message[:1] == b"\x01":
                if topic in topics or not self._owns(relay, topic, heartbeat):
                    return  # another server's: neither kept nor passed on
                topics.add(topic)
                if not heartbeat:
                    self._topic_refs[topic] = self._topic_refs.get(topic, 0) + 1
            elif message[:1] == b"\x00":
                if topic not in topics:
                    return  # never passed on
                topics.discard(topic)
                if not heartbeat:
                    self._forget_topic(topic)
            (relay.up_hb if heartbeat else relay.up_ev).send(message)
        elif name == "events_monitor":
            event = zmq.utils.monitor.recv_monitor_message(relay.events_monitor)
            if event["event"] == zmq.EVENT_CONNECTED:
                relay.events_connected.set()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                relay.events_connected.clear()
        elif name == "monitor":
            event = zmq.utils.monitor.recv_monitor_message(relay.monitor)
            log.info(
                "%s: heartbeat port %s",
                relay.route.server,
                "connected" if event["event"] == zmq.EVENT_CONNECTED else "disconnected",
            )
            if event["event"] == zmq.EVENT_CONNECTED:
                relay.connected = True
                # a new process: read what the event socket's monitor has to
                # say first (the old connection's end, not yet read, would
                # leave events_connected set: republished values lost)
                while relay.events_monitor is not None and self._readable(relay.events_monitor):
                    self._handle(relay, "events_monitor")
                if relay.ever_connected and relay.topics:
                    self._start_resubscription(relay)
                relay.ever_connected = True
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                relay.connected = False
                relay.bridge_until = 0.0

    def _owns(self, relay: _Relay, topic: str, heartbeat: bool) -> bool:
        """Whether ``topic``'s subscription goes to ``relay``'s server."""
        server = relay.route.server.lower()
        if heartbeat:  # a client's heartbeat socket subscribes every server's topic
            return topic.lower().endswith(f"/dserver/{server}.heartbeat")
        parsed = parse_topic(topic)
        if parsed is None:
            return True
        owner = self._owners.get(parsed[0].lower())
        return owner is None or owner == server

    def _drop_foreign_topics(self) -> None:
        """Unsubscribe each server from what it got before the owners were known."""
        for relay in self._relays.values():
            foreign = [t for t in relay.topics if not self._owns(relay, t, False)]
            for topic in foreign:
                relay.topics.discard(topic)
                self._forget_topic(topic)
                if relay.up_ev is not None:
                    relay.up_ev.send(b"\x00" + topic.encode("latin-1"))

    def _start_resubscription(self, relay: _Relay) -> None:
        """A new process bound the server's ports: re-create its clients'
        subscriptions (in a thread: its admin device may take a moment)."""
        topics = [t for t in (parse_topic(x) for x in sorted(relay.topics)) if t]
        key = relay.route.server.lower()
        admin = relay.route.admin_device
        started = self._clock()
        ready = relay.events_connected

        def events_ready(timeout: float) -> bool:
            if not ready.wait(timeout):
                return False
            # the relay's subscriptions go to the new process on connection:
            # let them arrive before anything is published
            time.sleep(SUBSCRIPTIONS_SETTLE)
            return True

        def work() -> None:
            try:
                made, errors = self._resubscribe(admin, topics, events_ready)
            except Exception as exc:  # noqa: BLE001 - reported in the relay's report
                made, errors = 0, [str(exc)]
            self._done.put((key, made, errors, self._clock() - started))
            self._poke()

        threading.Thread(target=work, name=f"resubscribe {relay.route.server}", daemon=True).start()


def _lower_owners(owners: Mapping[str, str]) -> dict[str, str]:
    return {device.lower(): server.lower() for device, server in owners.items()}
