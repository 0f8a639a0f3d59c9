"""The event relay without Tango: its port plan, its shim, and the relay itself
over real ZMQ sockets standing in for a server that dies and comes back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from tango_devices.relay import ports
from tango_devices.relay.relay_logic import RelayLogic, parse_topic
from tango_devices.relay.states import ALARM, OFF, ON
from tests.helpers import free_port, wait_until

# ----------------------------------------------------------------- the plan


def test_allocate_gives_four_distinct_free_ports_per_relayed_server():
    taken = {20000 + i for i in range(0, 12000, 3)}
    plan = ports.allocate(
        ["Motor/a", "Motor/b", "EventRelay/relay", "Sardana/bl01", "DataLogger/logger"],
        {},
        "/run/one",
        is_free=lambda p, _a: p not in taken,
    )
    assert sorted(plan) == ["datalogger/logger", "motor/a", "motor/b"]
    every = [p for r in plan.values() for p in r.ports()]
    assert len(every) == len(set(every)) == 12
    assert not set(every) & taken
    assert all(ports.PORT_LOW <= p < ports.PORT_HIGH for p in every)


def test_allocate_keeps_the_ports_of_known_servers(tmp_path):
    first = ports.allocate(["Motor/a"], {}, str(tmp_path), is_free=lambda p, a: True)
    ports.save(tmp_path, first.values(), "127.0.0.1")
    again = ports.allocate(
        ["Motor/a", "Motor/b"], ports.load(tmp_path), str(tmp_path), is_free=lambda p, a: True
    )
    assert again["motor/a"] == first["motor/a"]
    assert not set(again["motor/b"].ports()) & set(first["motor/a"].ports())


def test_two_run_directories_search_apart():
    a = ports.allocate(["Motor/a"], {}, "/tmp/run-a", is_free=lambda p, x: True)
    b = ports.allocate(["Motor/a"], {}, "/tmp/run-b", is_free=lambda p, x: True)
    assert a["motor/a"].events != b["motor/a"].events


def test_no_free_ports_is_a_clear_error():
    with pytest.raises(ports.PortPlanError, match="free TCP ports.*BEAMLINE_NO_EVENT_RELAY"):
        ports.allocate(["Motor/a"], {}, "/x", is_free=lambda p, a: False)


def test_a_damaged_plan_names_the_file(tmp_path):
    ports.plan_path(tmp_path).write_text('{"servers": [{"server": 1}]}')
    with pytest.raises(ports.PortPlanError, match="event-ports.json"):
        ports.load(tmp_path)


def test_server_environment_from_the_plan(tmp_path):
    if ports.shim_path() is None:
        pytest.skip("the shim is not built (no C compiler at install)")
    plan = ports.allocate(["Motor/a"], {}, str(tmp_path), is_free=lambda p, a: True)
    ports.save(tmp_path, plan.values(), "127.0.0.1")
    r = plan["motor/a"]
    env = {ports.RUN_DIR_ENV: str(tmp_path)}
    assert ports.server_environment("Motor/a", env) == {
        "TANGO_ZMQ_EVENT_PORT": str(r.events),
        "TANGO_ZMQ_HEARTBEAT_PORT": str(r.heartbeat),
        "BEAMLINE_PORTMAP": f"{r.events}:{r.events_bound},{r.heartbeat}:{r.heartbeat_bound}",
    }
    assert ports.server_environment("Motor/other", env) is None
    assert ports.server_environment("Motor/a", {**env, ports.DISABLE_ENV: "1"}) is None
    assert ports.server_environment("Motor/a", {}) is None


def test_a_server_never_passes_its_ports_on():
    env = {"PATH": "/bin", "TANGO_ZMQ_EVENT_PORT": "1", "BEAMLINE_PORTMAP": "1:2"}
    assert ports.clean_environment(env) == {"PATH": "/bin"}


# ----------------------------------------------------------------- the shim


def test_the_shim_binds_the_mapped_port_and_nothing_else():
    shim = ports.shim_path()
    if shim is None:
        pytest.skip("the shim is not built (no C compiler at install)")
    advertised, bound, other = free_port(), free_port(), free_port()
    script = (
        "import socket, json\n"
        "from tango_devices.relay import ports\n"
        "out = {'loaded': ports.shim_loaded()}\n"
        f"for name, port in (('mapped', {advertised}), ('other', {other})):\n"
        "    s = socket.socket(); s.bind(('127.0.0.1', port))\n"
        "    out[name] = s.getsockname()[1]; s.close()\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "LD_PRELOAD": str(shim), "BEAMLINE_PORTMAP": f"{advertised}:{bound}"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"loaded": True, "mapped": bound, "other": other}
    assert not ports.shim_loaded()  # this process has no shim


# ----------------------------------------------------------------- topics


def test_parse_topic():
    prefix = "tango://127.0.0.1:10000/"
    assert parse_topic(prefix + "bl01/mot/x/position.idl5_change") == (
        "bl01/mot/x",
        "position",
        "idl5_change",
    )
    assert parse_topic(prefix + "bl01/mot/x.intr_change") == ("bl01/mot/x", "", "intr_change")
    assert parse_topic(prefix + "dserver/motor/x") is None
    assert parse_topic("") is None
    assert parse_topic("garbage") is None


# ----------------------------------------------------------------- the relay


class FakeServer:
    """A 'device server' publishing on its bound ports, as cppTango does:
    events only for subscribed topics, a heartbeat when told."""

    PREFIX = "tango://127.0.0.1:1/"

    def __init__(self, _ctx, route):
        self.ctx = zmq.Context()  # its own: closed (listeners gone) when close() returns
        self.ev = self.ctx.socket(zmq.XPUB)
        self.hb = self.ctx.socket(zmq.XPUB)
        for sock in (self.ev, self.hb):
            sock.setsockopt(zmq.LINGER, 0)
            # no drops on this side: what a test sends reaches the relay (a
            # burst test checks the relay's own queues, not cppTango's 1000)
            sock.setsockopt(zmq.SNDHWM, 0)
        SERVERS.append(self)  # closed by relay_setup's teardown if a test fails first
        self.ev.bind(f"tcp://127.0.0.1:{route.events_bound}")
        self.hb.bind(f"tcp://127.0.0.1:{route.heartbeat_bound}")

    def publish(self, attr, value):
        topic = f"{self.PREFIX}bl01/mot/x/{attr}.idl5_change".encode()
        self.ev.send_multipart([topic, b"\x01", str(value).encode()])

    def heartbeat(self):
        self.hb.send_multipart([f"{self.PREFIX}dserver/motor/x.heartbeat".encode(), b"\x01", b"h"])

    def close(self):
        if self.ctx.closed:
            return
        self.ev.close(linger=0)
        self.hb.close(linger=0)
        self.ctx.term()


SERVERS: list[FakeServer] = []


@pytest.fixture
def relay_setup():
    route = ports.Route("Motor/x", free_port(), free_port(), free_port(), free_port())
    calls: list[tuple[str, list]] = []
    resubscribed = threading.Event()

    def resubscribe(admin, topics, events_ready):
        # the relay reached the new process's event port before anything is republished
        calls.append((admin, topics, events_ready(5.0)))
        resubscribed.set()
        return len(topics), []

    logic = RelayLogic([route], "127.0.0.1", resubscribe)
    ctx = zmq.Context()
    yield route, logic, ctx, calls, resubscribed
    logic.stop()
    for sock in CLIENT_SOCKETS:
        sock.close(linger=0)
    CLIENT_SOCKETS.clear()
    for server in SERVERS:
        server.close()
    SERVERS.clear()
    ctx.destroy(linger=0)


CLIENT_SOCKETS: list = []


def _client(ctx, route, topic, rcvhwm=None):
    """A client's sockets, as cppTango's consumer makes them (no reconnection)."""
    ev = ctx.socket(zmq.SUB)
    hb = ctx.socket(zmq.SUB)
    if rcvhwm is not None:  # before connecting: a pipe keeps the HWM it was made with
        ev.setsockopt(zmq.RCVHWM, rcvhwm)
    for sock, port in ((ev, route.events), (hb, route.heartbeat)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, -1)
        sock.connect(f"tcp://127.0.0.1:{port}")
    ev.setsockopt(zmq.SUBSCRIBE, topic.encode())
    hb.setsockopt(zmq.SUBSCRIBE, f"{FakeServer.PREFIX}dserver/motor/x.heartbeat".encode())
    # a subscription to another server's heartbeat (one socket serves them all)
    hb.setsockopt(zmq.SUBSCRIBE, f"{FakeServer.PREFIX}dserver/motor/other.heartbeat".encode())
    CLIENT_SOCKETS.extend((ev, hb))
    return ev, hb


def _receive(sock, timeout):
    if sock.poll(int(timeout * 1000)):
        return sock.recv_multipart()
    return None


def _until_received(server, sock, attr, timeout=10.0):
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n += 1
        server.publish(attr, n)
        message = _receive(sock, 0.05)
        if message:
            return message
    return None


def test_a_restarted_server_reaches_the_clients_old_connections(relay_setup):
    route, logic, ctx, calls, resubscribed = relay_setup
    logic.start()
    assert logic.machine.state is ON
    topic = f"{FakeServer.PREFIX}bl01/mot/x/position.idl5_change"
    server = FakeServer(ctx, route)
    ev, hb = _client(ctx, route, topic)
    assert _until_received(server, ev, "position"), "no event through the relay"
    server.heartbeat()
    assert _receive(hb, 5.0)[0].endswith(b"motor/x.heartbeat")

    server.close()  # killed
    server = FakeServer(ctx, route)  # restarted on the same ports
    assert resubscribed.wait(10.0), "the relay did not re-create the subscriptions"
    assert calls == [("dserver/Motor/x", [("bl01/mot/x", "position", "idl5_change")], True)]
    # the heartbeat is replayed at once: the client's 10 s check stays quiet
    assert _receive(hb, 3.0)[0].endswith(b"motor/x.heartbeat")
    # the client's own, never reconnected socket gets the new process's events
    message = _until_received(server, ev, "position")
    assert message and message[0] == topic.encode()
    wait_until(lambda: logic.resubscription_count() == 1, 5, "the re-subscription counted")
    report = logic.report()["servers"][0]
    assert "1 subscription(s) re-created" in report["last_resubscription"]
    assert logic.topic_count() == 1
    server.close()


def test_a_dead_server_gets_no_made_up_heartbeat(relay_setup):
    route, logic, ctx, _calls, _resubscribed = relay_setup
    logic.start()
    server = FakeServer(ctx, route)
    ev, hb = _client(ctx, route, f"{FakeServer.PREFIX}bl01/mot/x/position.idl5_change")
    assert _until_received(server, ev, "position")
    server.heartbeat()
    assert _receive(hb, 5.0)
    server.close()
    wait_until(lambda: not logic.report()["servers"][0]["connected"], 5, "the loss seen")
    while _receive(hb, 0.1):  # what was already on its way
        pass
    assert _receive(hb, 2.5) is None, "heartbeats of a dead server were made up"


def test_ports_held_by_another_process_give_alarm_then_recover(relay_setup, monkeypatch):
    route, logic, ctx, _calls, _resubscribed = relay_setup
    monkeypatch.setattr("tango_devices.relay.relay_logic.RETRY_CLASH", 0.1)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", route.events))
    holder.listen()
    logic.start()
    assert logic.machine.state is ALARM
    assert f"ports {route.events} and {route.heartbeat} (Motor/x's events)" in logic.machine.status
    holder.close()
    wait_until(lambda: logic.machine.state is ON, 10, "ON once the ports are free")


def test_nothing_to_relay_is_off():
    logic = RelayLogic([], "127.0.0.1", lambda a, t, r: (0, []))
    logic.start()
    try:
        assert logic.machine.state is OFF
        assert "nothing to relay" in logic.machine.status
    finally:
        logic.stop()


def test_the_relay_has_room_for_a_whole_beamline(monkeypatch):
    """300 servers: 2,400 ZMQ sockets (libzmq's default limit is 1,023) and
    thousands of open files (a Debian default soft limit is 1,024)."""
    import resource

    limits = {"now": (1024, 1048576)}
    monkeypatch.setattr(resource, "getrlimit", lambda _what: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _what, value: limits.update(now=value))
    routes = [
        ports.Route(f"Motor/m{i:03d}", *(30000 + 4 * i + k for k in range(4))) for i in range(300)
    ]
    logic = RelayLogic(routes, "127.0.0.1", lambda a, t, r: (0, []))
    try:
        assert limits["now"] == (65536, 1048576)
        assert logic._ctx.get(zmq.MAX_SOCKETS) >= 8 * len(routes)
    finally:
        logic.stop()


def test_the_relay_relays_more_servers_than_libzmqs_default_allows(tmp_path):
    plan = ports.allocate([f"Motor/m{i:03d}" for i in range(140)], {}, str(tmp_path))
    logic = RelayLogic(plan.values(), "127.0.0.1", lambda a, t, r: (0, []))
    try:
        logic.start()
        assert logic.machine.state is ON, logic.machine.status
        assert len(logic.report()["servers"]) == 140
    finally:
        logic.stop()


def test_once_the_new_process_sends_its_own_heartbeat_none_is_made_up(relay_setup, monkeypatch):
    monkeypatch.setattr("tango_devices.relay.relay_logic.REEMIT_PERIOD", 0.2)
    route, logic, ctx, _calls, resubscribed = relay_setup
    logic.start()
    server = FakeServer(ctx, route)
    ev, hb = _client(ctx, route, f"{FakeServer.PREFIX}bl01/mot/x/position.idl5_change")
    assert _until_received(server, ev, "position")
    server.close()
    server = FakeServer(ctx, route)
    assert resubscribed.wait(10.0)
    # bridging: replayed every REEMIT_PERIOD while the new process sent none
    assert _receive(hb, 2.0) and _receive(hb, 2.0), "no heartbeat replayed while bridging"
    server.heartbeat()  # its own first one
    wait_until(lambda: logic.report()["servers"][0]["heartbeats"] >= 1, 5, "its heartbeat seen")
    while _receive(hb, 0.3):  # what was already on its way, and its own
        pass
    assert _receive(hb, 1.0) is None, "heartbeats made up after the server's own"
    server.close()


def test_a_burst_of_events_arrives_whole_and_in_order(relay_setup):
    """The relay waits on its sockets' ZMQ_FDs (edge-like signals): nothing
    may be left behind in a socket whose signal was taken."""
    route, logic, ctx, _calls, _resubscribed = relay_setup
    logic.start()
    server = FakeServer(ctx, route)
    topic = f"{FakeServer.PREFIX}bl01/mot/x/position.idl5_change"
    ev, _hb = _client(ctx, route, topic, rcvhwm=0)
    assert _until_received(server, ev, "position")
    while _receive(ev, 0.2):
        pass
    for n in range(3000):
        server.ev.send_multipart([topic.encode(), b"\x01", str(n).encode()])
    got = []
    while len(got) < 3000:
        message = _receive(ev, 5.0)
        assert message is not None, f"only {len(got)} of 3000 events arrived"
        got.append(int(message[2]))
    assert got == list(range(3000))
    server.close()


def _subscriptions_until(sock, last: bytes, timeout: float = 10.0) -> list[bytes]:
    """The subscription messages a server's XPUB receives, up to ``last``
    (ZMQ keeps their order: anything sent before ``last`` came before it)."""
    deadline = time.monotonic() + timeout
    got = []
    while time.monotonic() < deadline:
        if sock.poll(100):
            got.append(sock.recv())
            if got[-1] == last:
                return got
    raise AssertionError(f"{last!r} never arrived; got {got}")


def test_each_server_gets_only_its_own_devices_subscriptions():
    """One client socket connected to two servers sends every subscription to
    both; each gets those of its own devices and of devices nobody owns."""
    x = ports.Route("Motor/x", free_port(), free_port(), free_port(), free_port())
    y = ports.Route("Motor/y", free_port(), free_port(), free_port(), free_port())
    owners = {"bl01/mot/x": "Motor/x", "BL01/MOT/Y": "motor/y"}  # as the database spells them
    logic = RelayLogic([x, y], "127.0.0.1", lambda a, t, r: (0, []), owners=owners)
    ctx = zmq.Context()
    servers = [FakeServer(ctx, x), FakeServer(ctx, y)]
    try:
        logic.start()
        ev, hb = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
        CLIENT_SOCKETS.extend((ev, hb))
        for route in (x, y):
            ev.connect(f"tcp://127.0.0.1:{route.events}")
            hb.connect(f"tcp://127.0.0.1:{route.heartbeat}")
        p = FakeServer.PREFIX
        topics = {
            name: f"{p}{device}/position.idl5_change".encode()
            for name, device in (("x", "bl01/mot/x"), ("y", "bl01/mot/y"), ("z", "bl01/z/z"))
        }
        for name in ("y", "z", "x"):
            ev.setsockopt(zmq.SUBSCRIBE, topics[name])
        for name in ("y", "x"):
            hb.setsockopt(zmq.SUBSCRIBE, f"{p}dserver/motor/{name}.heartbeat".encode())

        got_x = _subscriptions_until(servers[0].ev, b"\x01" + topics["x"])
        assert got_x == [b"\x01" + topics["z"], b"\x01" + topics["x"]]
        hb_x = _subscriptions_until(servers[0].hb, f"\x01{p}dserver/motor/x.heartbeat".encode())
        assert len(hb_x) == 1, hb_x  # not Motor/y's heartbeat
        ev.setsockopt(zmq.SUBSCRIBE, topics["y"] + b"-last")  # unknown device: both get it
        got_y = _subscriptions_until(servers[1].ev, b"\x01" + topics["y"] + b"-last")
        assert got_y == [b"\x01" + topics[n] for n in ("y", "z")] + [got_y[-1]]
        wait_until(lambda: logic.report()["servers"][0]["topics"] == 2, 5, "x's topics counted")
        assert logic.topic_count() == 4  # x, y, z and y-last: each counted once per server

        # a client unsubscribing a topic a server never got: nothing reaches it
        ev.setsockopt(zmq.UNSUBSCRIBE, topics["y"])
        ev.setsockopt(zmq.UNSUBSCRIBE, topics["x"])
        assert _subscriptions_until(servers[0].ev, b"\x00" + topics["x"]) == [b"\x00" + topics["x"]]
    finally:
        logic.stop()
        for server in servers:
            server.close()
        for sock in CLIENT_SOCKETS:
            sock.close(linger=0)
        CLIENT_SOCKETS.clear()
        SERVERS.clear()
        ctx.destroy(linger=0)


def test_owners_learnt_late_unsubscribe_each_server_from_the_others_devices(relay_setup):
    route, logic, ctx, _calls, _resubscribed = relay_setup
    logic.start()
    server = FakeServer(ctx, route)
    p = FakeServer.PREFIX
    mine, theirs = (f"{p}bl01/mot/{d}/position.idl5_change".encode() for d in ("x", "y"))
    ev, _hb = _client(ctx, route, theirs.decode())
    ev.setsockopt(zmq.SUBSCRIBE, mine)
    assert _subscriptions_until(server.ev, b"\x01" + mine) == [b"\x01" + theirs, b"\x01" + mine]
    logic.set_owners({"bl01/mot/x": "Motor/x", "bl01/mot/y": "Motor/y"})
    assert _subscriptions_until(server.ev, b"\x00" + theirs) == [b"\x00" + theirs]
    wait_until(lambda: logic.report()["servers"][0]["topics"] == 1, 5, "one topic left")
    # its events still arrive
    assert _until_received(server, ev, "position")
    server.close()
