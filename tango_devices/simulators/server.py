"""The virtual-hardware process: serves simulated controllers on TCP ports.

Each controller is served on its own port, line based, to any number of
clients at once, the way an Ethernet controller or a terminal server does.
A control port (JSON lines, see ``docs/protocol-motion.md``) injects faults,
reports status and shuts the process down.

Controller kinds are looked up in :data:`CONTROLLER_KINDS`: a factory
``(name, config, clock, physics) -> controller`` that validates its own part
of the configuration (``ValueError("axes.3.velocity: ...")``, the key path is
relative to the controller) and registers the physical quantities it provides
with the shared :class:`~tango_devices.simulators.physics.BeamlinePhysics`
(``physics.register_source("smc1/3", ...)``) or reads what it needs from it.
A controller with a ``wire(controllers)`` method (the timing unit) is then
connected to the others by name (``ValueError`` names the bad key).

Each kind is served by a *port* from :data:`PORT_KINDS` (default
:class:`LinePort`: ASCII request lines; a reply may also be ``bytes``, sent as
they are, for binary payloads such as camera frames). Link faults (``drop``,
``stall``, ``garbage``) are the line transport's and work for every line-based
kind; a kind adds its own fault kinds (``fault_kinds`` / ``inject_fault``). A
kind with a transport of its own (an EPICS IOC) registers a port class that
implements :class:`Port`.

No ``tango`` import.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tango_devices.simulators.physics import BeamlinePhysics, PhysicsError
from tango_devices.simulators.smc import SmcController

log = logging.getLogger("beamline-sim")

Clock = Callable[[], float]


class LineController(Protocol):
    """What the line transport needs from a simulated controller."""

    kind: str
    fault_kinds: tuple[str, ...]

    def handle_line(self, line: str) -> str | bytes:
        """Reply to one request line (no terminators); ``""`` means no reply.
        ``bytes`` are sent as they are (the controller adds any terminator)."""

    def inject_fault(self, kind: str, request: Mapping[str, Any]) -> str:
        """Inject a kind-specific fault; ``ValueError`` names the valid choices."""

    def clear_faults(self) -> None:
        """Clear the injected faults that are not latched."""

    def active_faults(self) -> list[str]:
        """The injected faults in effect, as short texts."""

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot (positions, status words, ...)."""


ControllerFactory = Callable[[str, Mapping[str, Any], Clock, BeamlinePhysics], Any]


def _smc(name: str, config: Mapping[str, Any], clock: Clock, physics: BeamlinePhysics):
    controller = SmcController(name, config, clock)
    for number, axis in controller.axes.items():

        def position(axis=axis) -> float:
            axis.update(clock())
            return axis.register

        physics.register_source(f"{name}/{number}", position)
    return controller


CONTROLLER_KINDS: dict[str, ControllerFactory] = {
    "smc": _smc,
}


class Port(Protocol):
    """How the simulator drives one served controller (see :class:`LinePort`)."""

    name: str
    port: int
    controller: Any
    faults: set[str]
    link_faults: tuple[str, ...]

    @property
    def listening(self) -> bool: ...

    @property
    def clients(self) -> int: ...

    async def listen(self) -> None: ...

    async def close(self) -> None: ...

    async def inject(self, kind: str) -> None: ...

    async def clear(self) -> None: ...


#: kind -> port class ``(spec, host, rng) -> Port``; kinds not listed use LinePort
PORT_KINDS: dict[str, Callable[..., Port]] = {}

LINK_FAULTS = ("drop", "stall", "garbage")
LINK_FAULT_TEXT = {
    "drop": "link dropped: clients disconnected, new connections refused",
    "stall": "link stalled: requests are read and never answered",
    "garbage": "replies replaced by random bytes",
}
MAX_BUFFERED_LINE = 4096


class ConfigError(Exception):
    """The simulator configuration is invalid; the message names the key."""


# ----------------------------------------------------------------- config
@dataclass
class ControllerSpec:
    name: str
    kind: str
    port: int
    controller: LineController


@dataclass
class SimConfig:
    control_port: int
    controllers: dict[str, ControllerSpec]
    physics: BeamlinePhysics | None = None


_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TOP_KEYS = ("control", "controllers", "physics", "overrides")


def _check_port(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigError(
            f"{where}: must be a TCP port number 0..65535 (0 = any free port), got {value!r}"
        )
    return value


def _check_keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed and not str(key).startswith("_"):
            raise ConfigError(
                f"{where}{key}: unknown key; valid keys are {', '.join(allowed)} "
                "(keys starting with '_' are comments)"
            )


def parse_config(data: Any, auto_ports: bool = False, clock: Clock = time.monotonic) -> SimConfig:
    """Validate the simulator configuration and build its controllers.

    ``overrides`` (device properties used by the rest of the suite) is not
    read here. With ``auto_ports`` every port is 0: the OS chooses.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("the configuration must be a JSON object")
    _check_keys("", data, _TOP_KEYS)
    control = data.get("control", {})
    if not isinstance(control, Mapping):
        raise ConfigError('control: must be an object such as {"port": 9100}')
    _check_keys("control.", control, ("port",))
    control_port = _check_port("control.port", control.get("port", 0))

    try:
        physics = BeamlinePhysics(data.get("physics", {}))
    except PhysicsError as exc:
        raise ConfigError(f"physics.{exc}") from None

    controllers = data.get("controllers")
    if not isinstance(controllers, Mapping) or not controllers:
        raise ConfigError("controllers: must be a non-empty object mapping names to controllers")
    used = {control_port: "control.port"} if control_port else {}
    specs: dict[str, ControllerSpec] = {}
    for name, entry in controllers.items():
        if str(name).startswith("_"):
            continue
        where = f"controllers.{name}"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{where}: a name starts with a letter, then letters, digits, '_' or '-'"
            )
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be an object with 'kind' and 'port'")
        kind = entry.get("kind")
        if kind not in CONTROLLER_KINDS:
            raise ConfigError(
                f"{where}.kind: must be one of {', '.join(sorted(CONTROLLER_KINDS))}, got {kind!r}"
            )
        if "port" not in entry:
            raise ConfigError(f"{where}.port: missing (required; 0 = any free port)")
        port = _check_port(f"{where}.port", entry["port"])
        if port and port in used:
            raise ConfigError(f"{where}.port: {port} is already used by {used[port]}")
        if port:
            used[port] = f"{where}.port"
        try:
            controller = CONTROLLER_KINDS[kind](name, entry, clock, physics)
        except ValueError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        specs[name] = ControllerSpec(name, kind, 0 if auto_ports else port, controller)
    if not specs:
        raise ConfigError("controllers: must define at least one controller")
    # the cables between controllers (a timing unit's outputs and encoder
    # inputs), once every controller exists
    built = {name: spec.controller for name, spec in specs.items()}
    for name, spec in specs.items():
        wire = getattr(spec.controller, "wire", None)
        if wire is None:
            continue
        try:
            wire(built)
        except ValueError as exc:
            raise ConfigError(f"controllers.{name}.{exc}") from None
    missing = physics.missing_sources()
    if missing:
        raise ConfigError(f"physics.{missing[0]}")
    return SimConfig(0 if auto_ports else control_port, specs, physics)


def load_config(path: str | os.PathLike[str], auto_ports: bool = False) -> SimConfig:
    """Read and validate a JSON configuration file; errors start with its path."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return parse_config(data, auto_ports)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# -------------------------------------------------------------- transport
class LineSplitter:
    """Bytes in, request lines out. ``\\r``, ``\\n`` and ``\\r\\n`` all end a
    line; blank lines are dropped (so ``\\r\\n`` is one terminator, not two)."""

    def __init__(self, max_line: int = MAX_BUFFERED_LINE):
        self._buffer = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[str]:
        lines = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._buffer.strip():
                    lines.append(self._buffer.decode("ascii", errors="replace"))
                self._buffer.clear()
            elif len(self._buffer) < self._max:
                # a runaway line is cut here; it is answered as too long anyway
                self._buffer.append(byte)
        return lines


_GARBAGE_BYTES = [b for b in range(256) if b not in (0x0D, 0x0A)]


def garbage_reply(rng: random.Random) -> bytes:
    """Random bytes ending in ``\\r\\n``: printable and not, never a valid reply
    (the first byte is not ASCII), no terminator inside."""
    body = [rng.randrange(0x80, 0x100)]
    body += rng.choices(_GARBAGE_BYTES, k=rng.randrange(3, 40))
    return bytes(body) + b"\r\n"


class _Connections:
    """The open client connections of one server and the tasks serving them,
    so that closing waits for the handlers to finish (nothing left to cancel)."""

    def __init__(self) -> None:
        self._open: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = task

    def discard(self, writer: asyncio.StreamWriter) -> None:
        self._open.pop(writer, None)

    async def abort_all(self) -> None:
        """Drop every connection (no goodbye) and wait for their handlers."""
        current = asyncio.current_task()
        tasks = [t for t in self._open.values() if t is not current]
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)


def _bind(host: str, port: int) -> socket.socket:
    return socket.create_server(
        (host, port), family=socket.AF_INET if ":" not in host else socket.AF_INET6
    )


class LinePort:
    """One controller served on one TCP port, with the link faults."""

    link_faults = LINK_FAULTS

    def __init__(self, spec: ControllerSpec, host: str, rng: random.Random):
        self.spec = spec
        self.name = spec.name
        self.controller = spec.controller
        self.host = host
        self.port = spec.port
        self.faults: set[str] = set()
        self._rng = rng
        self._server: asyncio.Server | None = None
        self._clients = _Connections()

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def listen(self) -> None:
        """Start listening (again, after a drop: on the same port)."""
        if self._server is not None:
            return
        try:
            sock = _bind(self.host, self.port)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen on {self.host}:{self.port} for controller {self.name}: "
                f"{exc.strerror or exc}",
            ) from None
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve_client, sock=sock)

    async def close(self) -> None:
        """Stop listening and disconnect every client."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        await self._clients.abort_all()

    async def inject(self, kind: str) -> None:
        self.faults.add(kind)
        if kind == "drop":
            await self.close()

    async def clear(self) -> None:
        self.faults.clear()
        await self.listen()

    def _respond(self, line: str) -> bytes | None:
        if "stall" in self.faults:
            return None  # the request is lost in the stalled link
        reply = self.controller.handle_line(line)
        if not reply:
            return None
        if "garbage" in self.faults:
            return garbage_reply(self._rng)
        if isinstance(reply, bytes):
            return reply
        return reply.encode("ascii", errors="replace") + b"\r\n"

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if peer else "?"
        if "drop" in self.faults:
            writer.transport.abort()
            return
        self._clients.add(writer)
        log.info("%s: client %s connected (%d connected)", self.name, peer_text, len(self._clients))
        splitter = LineSplitter()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                out = bytearray()
                for line in splitter.feed(data):
                    reply = self._respond(line)
                    if reply:
                        out += reply
                if out:
                    writer.write(out)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            writer.transport.abort()
            log.info("%s: client %s disconnected", self.name, peer_text)


# ----------------------------------------------------------------- process
class Simulator:
    """Every controller port plus the control port; writes the state file."""

    def __init__(
        self,
        config: SimConfig,
        listen: str = "127.0.0.1",
        state_file: Path | None = None,
        seed: int | None = None,
    ):
        self.config = config
        self.listen = listen
        self.state_file = Path(state_file) if state_file else None
        rng = random.Random(seed)
        self.ports: dict[str, Port] = {
            name: PORT_KINDS.get(spec.kind, LinePort)(spec, listen, rng)
            for name, spec in config.controllers.items()
        }
        self.control_port = config.control_port
        self._control: asyncio.Server | None = None
        self._control_clients = _Connections()
        self._stopped = asyncio.Event()
        self._ops = {
            "status": self._op_status,
            "fault": self._op_fault,
            "clear": self._op_clear,
            "shutdown": self._op_shutdown,
        }

    async def start(self) -> None:
        """Listen on every port, then write the state file."""
        try:
            for port in self.ports.values():
                await port.listen()
            try:
                sock = _bind(self.listen, self.control_port)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot listen on {self.listen}:{self.control_port} for the control port: "
                    f"{exc.strerror or exc}",
                ) from None
            self.control_port = sock.getsockname()[1]
            self._control = await asyncio.start_server(self._serve_control, sock=sock)
            listening = ", ".join(
                f"{n} ({p.controller.kind}) on {p.port}" for n, p in self.ports.items()
            )
            log.info(
                "listening on %s: control on %d, %s", self.listen, self.control_port, listening
            )
            self._write_state_file()
        except BaseException:
            await self.close()
            raise

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "listen": self.listen,
            "control_port": self.control_port,
            "controllers": {
                n: {"kind": p.controller.kind, "port": p.port} for n, p in self.ports.items()
            },
        }

    def _write_state_file(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(f"{self.state_file.name}.{os.getpid()}.tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
            os.replace(tmp, self.state_file)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot write the state file {self.state_file}: {exc.strerror or exc}"
            ) from None

    def _remove_state_file(self) -> None:
        if self.state_file is None:
            return
        try:
            if json.loads(self.state_file.read_text()).get("pid") != os.getpid():
                return  # another simulator wrote it since: not ours to remove
        except (OSError, ValueError):
            return
        self.state_file.unlink(missing_ok=True)

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        """Close every port and remove the state file."""
        if self._control is not None:
            self._control.close()
            await self._control.wait_closed()
            self._control = None
        await self._control_clients.abort_all()
        for port in self.ports.values():
            await port.close()
        self._remove_state_file()

    # ------------------------------------------------------------ control
    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._control_clients.add(writer)
        try:
            while not self._stopped.is_set():
                line = await reader.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                reply = await self.handle_control(line.decode("utf-8", errors="replace"))
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError, ValueError):
            pass  # ValueError: a line beyond the stream limit
        finally:
            self._control_clients.discard(writer)
            writer.transport.abort()

    async def handle_control(self, line: str) -> dict[str, Any]:
        """One control request (a JSON object) to its JSON reply."""
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"request is not valid JSON: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": 'request must be a JSON object such as {"op": "status"}'}
        op = request.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return {
                "ok": False,
                "error": f"unknown op {op!r}: valid ops are {', '.join(self._ops)}",
            }
        try:
            return await handler(request)
        except (ValueError, OSError) as exc:
            return {"ok": False, "error": str(exc)}

    def _port(self, request: Mapping[str, Any]) -> Port:
        name = request.get("controller")
        if name not in self.ports:
            raise ValueError(
                f"unknown controller {name!r}: valid controllers are {', '.join(self.ports)}"
            )
        return self.ports[name]

    def _port_status(self, port: Port) -> dict[str, Any]:
        return {
            "kind": port.controller.kind,
            "port": port.port,
            "listening": port.listening,
            "clients": port.clients,
            "faults": sorted(port.faults) + port.controller.active_faults(),
            **port.controller.status(),
        }

    async def _op_status(self, request: Mapping[str, Any]) -> dict[str, Any]:
        controllers = {name: self._port_status(port) for name, port in self.ports.items()}
        return {"ok": True, **self.state(), "controllers": controllers}

    async def _op_fault(self, request: Mapping[str, Any]) -> dict[str, Any]:
        port = self._port(request)
        kind = request.get("kind")
        valid = tuple(port.link_faults) + tuple(port.controller.fault_kinds)
        if kind not in valid:
            raise ValueError(
                f"unknown fault kind {kind!r} for controller {port.name} ({port.controller.kind}): "
                f"valid kinds are {', '.join(valid)}"
            )
        if kind in port.link_faults:
            await port.inject(kind)
            what = LINK_FAULT_TEXT.get(kind, kind)
        else:
            what = port.controller.inject_fault(kind, request)
        log.warning("%s: fault injected: %s", port.name, what)
        return {
            "ok": True,
            "controller": port.name,
            "kind": kind,
            "fault": what,
            "faults": self._port_status(port)["faults"],
        }

    async def _op_clear(self, request: Mapping[str, Any]) -> dict[str, Any]:
        ports = [self._port(request)] if "controller" in request else list(self.ports.values())
        for port in ports:
            await port.clear()
            port.controller.clear_faults()
            log.warning(
                "%s: injected faults cleared (latched axis faults stay until RESET)", port.name
            )
        return {"ok": True, "cleared": [p.name for p in ports]}

    async def _op_shutdown(self, request: Mapping[str, Any]) -> dict[str, Any]:
        log.info("shutdown requested on the control port")
        asyncio.get_running_loop().call_soon(self.request_stop)
        return {"ok": True}


async def serve(
    config: SimConfig, listen: str = "127.0.0.1", state_file: Path | None = None
) -> int:
    """Run until SIGTERM, SIGINT or a ``shutdown`` request; 0 on a clean exit,
    1 if a port cannot be opened."""
    sim = Simulator(config, listen, state_file)
    try:
        await sim.start()
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.request_stop)
    try:
        await sim.wait_stopped()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(OSError):
            await sim.close()
    log.info("stopped")
    return 0


def run(config: SimConfig, listen: str = "127.0.0.1", state_file: Path | None = None) -> int:
    """Synchronous entry point around :func:`serve`."""
    return asyncio.run(serve(config, listen, state_file))


# Shutter PLC, scaler, camera and timing unit kinds (their modules do not import this one).
from tango_devices.simulators import camera, plc, scaler, timing  # noqa: E402

CONTROLLER_KINDS.update(
    plc=plc.PlcController,
    scaler=scaler.ScalerController,
    camera=camera.CameraController,
    timing=timing.TimingController,
)


# The EPICS IOC kind (ioc.py) registers itself last: it builds on this module's registries.
from tango_devices.simulators import ioc as _ioc  # noqa: E402

_ioc.register(CONTROLLER_KINDS, PORT_KINDS)
