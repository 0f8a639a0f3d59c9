"""The event relay's port plan: which ports every server advertises and binds (no tango).

A Tango client's event consumer connects its ZMQ sockets to the ports a
server advertised when it subscribed, and never reconnects by itself when
that server dies (cppTango sets ZMQ_RECONNECT_IVL to -1); it notices only at
its 10 s heartbeat check. So the ports a server advertises belong to the
host's event relay, which lives on while servers die and restart, and the
server binds ports of its own which the relay connects to. Each server of
the host has four fixed ports, allocated once per run directory and kept in
``<run dir>/event-ports.json``:

* ``events``, ``heartbeat``: advertised by the server (TANGO_ZMQ_EVENT_PORT,
  TANGO_ZMQ_HEARTBEAT_PORT), bound by the relay;
* ``events_bound``, ``heartbeat_bound``: bound by the server, instead of the
  advertised ones, through the LD_PRELOAD shim ``portmap.c``.

The shim is loaded by the fork server (every forked server has it), or by a
server that starts on its own, which executes itself once more with it. Without
the shim (the suite was installed without a C compiler) or without a plan,
servers advertise and bind ports of their own choice, as Tango does.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import socket
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

PLAN_FILE = "event-ports.json"
RUN_DIR_ENV = "BEAMLINE_RUN_DIR"
PORTMAP_ENV = "BEAMLINE_PORTMAP"  # read by the shim at every bind()
EVENT_PORT_ENV = "TANGO_ZMQ_EVENT_PORT"
HEARTBEAT_PORT_ENV = "TANGO_ZMQ_HEARTBEAT_PORT"
DISABLE_ENV = "BEAMLINE_NO_EVENT_RELAY"  # set (to anything): no relay, no plan
RELAY_SERVER = "EventRelay"  # the relay's own server: never relayed

#: ports are taken from this range (below Linux's ephemeral ports, 32768 up)
PORT_LOW, PORT_HIGH = 20000, 32000
PORTS_PER_SERVER = 4


class PortPlanError(Exception):
    """No free ports for the plan, or a plan file that cannot be read."""


@dataclass(frozen=True)
class Route:
    """One server's four ports."""

    server: str  # "Motor/sample_x"
    events: int
    heartbeat: int
    events_bound: int
    heartbeat_bound: int

    @property
    def admin_device(self) -> str:
        return f"dserver/{self.server}"

    def portmap(self) -> str:
        """The shim's map: advertised port -> bound port."""
        return f"{self.events}:{self.events_bound},{self.heartbeat}:{self.heartbeat_bound}"

    def ports(self) -> tuple[int, int, int, int]:
        return (self.events, self.heartbeat, self.events_bound, self.heartbeat_bound)


def relayed(server: str) -> bool:
    """Whether ``server``'s events go through the relay: the suite's servers
    (they start through :func:`enter`), not the relay's own, not Sardana's."""
    from tango_devices.registry import SERVERS

    executable = server.split("/", 1)[0]
    return executable in SERVERS and executable != RELAY_SERVER


# ------------------------------------------------------------ the plan file
def plan_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / PLAN_FILE


def load(run_dir: str | os.PathLike) -> dict[str, Route]:
    """The plan of ``run_dir``, by lower-case server name ({} if there is none)."""
    path = plan_path(run_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PortPlanError(f"cannot read the event port plan {path}: {exc}") from exc
    try:
        routes = [Route(**r) for r in raw["servers"]]
    except (KeyError, TypeError) as exc:
        raise PortPlanError(f"{path} is not an event port plan ({exc}): delete it") from exc
    return {r.server.lower(): r for r in routes}


def save(run_dir: str | os.PathLike, routes: Iterable[Route], address: str) -> Path:
    path = plan_path(run_dir)
    body = {
        "_about": "the event relay's ports (tango_devices/relay/ports.py); written by "
        "beamline up, kept while the run directory lives",
        "address": address,
        "servers": [asdict(r) for r in sorted(routes, key=lambda r: r.server.lower())],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def port_free(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((address if address not in ("", "0.0.0.0") else "", port))
        except OSError:
            return False
    return True


def allocate(
    servers: Iterable[str],
    old: dict[str, Route],
    seed: str,
    address: str = "127.0.0.1",
    is_free=port_free,
) -> dict[str, Route]:
    """A plan for ``servers``: those of ``old`` keep their ports, the others get
    four free ports each, searched from a place that depends on ``seed`` (the
    run directory: two beamlines on one host start their search apart)."""
    wanted = sorted({s for s in servers if relayed(s)}, key=str.lower)
    plan = {k: r for k, r in old.items() if k in {s.lower() for s in wanted}}
    used = {p for r in plan.values() for p in r.ports()}
    span = PORT_HIGH - PORT_LOW
    start = PORT_LOW + (zlib.crc32(seed.encode()) % (span // 8)) * 8
    candidates = (PORT_LOW + (start - PORT_LOW + i) % span for i in range(span))
    for server in wanted:
        if server.lower() in plan:
            continue
        ports: list[int] = []
        for port in candidates:
            if port not in used and is_free(port, address):
                ports.append(port)
                used.add(port)
                if len(ports) == PORTS_PER_SERVER:
                    break
        if len(ports) < PORTS_PER_SERVER:
            raise PortPlanError(
                f"no {PORTS_PER_SERVER} free TCP ports left in {PORT_LOW}-{PORT_HIGH} for "
                f"{server}'s events: free some, or set {DISABLE_ENV}=1 to run without the relay"
            )
        plan[server.lower()] = Route(server, *ports)
    return plan


# ------------------------------------------------------------ the shim
def shim_path() -> Path | None:
    """The built shim (``tango_devices/relay/_portmap*.so``), or None."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("tango_devices.relay._portmap")
        if spec is not None and spec.origin and os.path.exists(spec.origin):
            return Path(spec.origin)
    return None


def shim_loaded() -> bool:
    """Whether this process has the shim (LD_PRELOAD, here or in a parent that forked it)."""
    try:
        ctypes.c_int.in_dll(ctypes.CDLL(None), "beamline_portmap_loaded")
    except ValueError:
        return False
    return True


def with_shim(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the shim preloaded (unchanged without a built shim)."""
    path = shim_path()
    if path is None:
        return env
    preload = [p for p in env.get("LD_PRELOAD", "").split() if p and p != str(path)]
    return {**env, "LD_PRELOAD": " ".join([str(path), *preload])}


def server_environment(server: str, env: dict[str, str] | None = None) -> dict[str, str] | None:
    """What a starting server sets in its environment so that its events go
    through the relay: the advertised ports and the shim's map; None when its
    events do not (no plan, not in it, the relay disabled or no shim built)."""
    env = os.environ if env is None else env
    run_dir = env.get(RUN_DIR_ENV)
    if not run_dir or env.get(DISABLE_ENV) or not relayed(server) or shim_path() is None:
        return None
    try:
        route = load(run_dir).get(server.lower())
    except PortPlanError:
        return None
    if route is None:
        return None
    return {
        EVENT_PORT_ENV: str(route.events),
        HEARTBEAT_PORT_ENV: str(route.heartbeat),
        PORTMAP_ENV: route.portmap(),
    }


#: what :func:`enter` sets for one server: never inherited by what it starts
SERVER_ONLY_ENV = (EVENT_PORT_ENV, HEARTBEAT_PORT_ENV, PORTMAP_ENV)


def clean_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` without one server's event ports (a process that a server starts,
    e.g. the supervisor restarting another, must not bind its parent's ports)."""
    return {k: v for k, v in env.items() if k not in SERVER_ONLY_ENV}


def enter(server: str) -> None:
    """Called by a starting server before Tango starts: put its events on the
    relay's ports (see :func:`server_environment`). A process without the shim
    executes itself once more with it: same pid, same command line."""
    import sys

    for name in SERVER_ONLY_ENV:  # inherited from a parent server: not this one's
        os.environ.pop(name, None)
    extra = server_environment(server)
    if extra is None:
        return
    if not shim_loaded():
        path = str(shim_path())
        if path in os.environ.get("LD_PRELOAD", "").split():
            print(
                f"event relay: the shim {path} is in LD_PRELOAD but not loaded: "
                f"{server}'s events do not go through the relay",
                file=sys.stderr,
                flush=True,
            )
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, with_shim(dict(os.environ)))
    os.environ.update(extra)
