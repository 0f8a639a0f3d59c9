"""`beamline up`, `down` and `status`: bringing a whole beamline up and down
in order, under the real Tango Starter.

``up``: database (embedded unless a TANGO_HOST is given) -> virtual hardware
(unless --no-sim) -> configuration -> Starter -> servers level by level. All
servers of a level are started at once (a DevStart each, which returns at
once); the next level starts when every device of the previous one answers.
Running ``up`` again starts only what is missing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beamline import config as cfg
from beamline import procs, sardana_yaml, tangodb
from beamline.runtime import RunContext, venv_bin
from beamline.starter import Starter, StarterError
from tango_devices.common import forkserver
from tango_devices.relay import ports as event_ports
from tango_devices.supervisor.model import probed_devices

USER_MACROS = "user_macros"  # in the run directory: where users' own macros are written


class UpError(Exception):
    pass


@dataclass
class UpOptions:
    tango_host: str | None = None  # an existing database; None = embedded
    port: int = 10000
    db_bind: str = "0.0.0.0"
    listen: str = "127.0.0.1"
    simulate: bool = True
    sim_auto_ports: bool = False
    level_timeout: float = 60.0
    # a level's servers still using CPU at level_timeout are waited for this long
    level_timeout_busy: float = 180.0
    host: str | None = None  # act as this host (default: this machine's short name)
    apply_config: bool = True  # False: another host or a loader writes db_config
    fork_server: bool = True  # servers forked from a pre-imported process (cheap)


@dataclass
class DeviceCheck:
    device: str
    state: str | None  # DevState name, or None if it does not answer
    error: str = ""


class Reporter:
    """Progress sink; the CLI renders it with rich, tests use the default (silent)."""

    def step(self, text: str) -> None: ...

    def level_started(self, level: int, servers: list[str], devices: list[str]) -> None: ...

    def level_progress(self, level: int, answered: int, total: int) -> None: ...

    def level_done(self, level: int, checks: list[DeviceCheck], elapsed: float) -> None: ...

    def warn(self, text: str) -> None: ...


# ----------------------------------------------------------------- helpers
def check_devices(tango_host: str, devices: list[str], timeout: float = 1.0) -> list[DeviceCheck]:
    """Read State of every device through a new client each (in parallel)."""
    import tango

    def one(dev: str) -> DeviceCheck:
        try:
            proxy = tango.DeviceProxy(f"tango://{tango_host}/{dev}")
            proxy.set_timeout_millis(int(timeout * 1000))
            return DeviceCheck(dev, str(proxy.state()))
        except tango.DevFailed as exc:
            return DeviceCheck(dev, None, exc.args[0].desc.strip().splitlines()[0])

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(devices))) as pool:
        return list(pool.map(one, devices))


STARTER_TIMEOUT = 60.0  # s for the Starter to answer once started
SUPERVISION_DIR = "supervision"  # each supervisor's view, written once a second
VIEW_FRESH = 5.0  # s: an older view is not shown as the present
ANSWER_FRESH = 1.0  # s: a device's last answer to the probes, in a view, counts as now
RECENT_ANSWER = 2.0  # s: the same with the view's own age, when the database answers


def supervisors_views(ctx: RunContext) -> list[dict[str, Any]]:
    """What the supervisors of this run directory saw lately (their own
    probes' answers need no database): the fresh views only."""
    views = []
    for path in sorted((ctx.run_dir / SUPERVISION_DIR).glob("*.json")):
        try:
            view = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        age = time.time() - float(view.get("time", 0))
        if age <= VIEW_FRESH:
            view["age"] = age
            views.append(view)
    return sorted(views, key=lambda v: v.get("supervisor") != MAIN_SUPERVISOR)  # main first


def _recent_answers(
    ctx: RunContext, config: cfg.BeamlineConfig, pids: dict[str, list[int]]
) -> dict[str, DeviceCheck]:
    """device (lower case) -> its State as the supervisors' probes heard it
    within RECENT_ANSWER seconds (the view's own age included), for devices
    of servers that have a process on this host now."""
    alive = {
        d.lower()
        for s in config.servers.values()
        if pids.get(s.name.lower())
        for d in config.devices_of(s.name)
    }
    out: dict[str, DeviceCheck] = {}
    for view in supervisors_views(ctx):
        for device, seen in (view.get("devices") or {}).items():
            age = seen.get("age")
            if age is None or device.lower() not in alive or not seen.get("state"):
                continue
            if age + view["age"] <= RECENT_ANSWER:
                out.setdefault(device.lower(), DeviceCheck(device, seen["state"]))
    return out


def server_env(ctx: RunContext, tango_host: str, listen: str) -> dict[str, str]:
    """The environment of the Starter, inherited by every server it starts."""
    env = dict(os.environ)
    env["TANGO_HOST"] = tango_host
    env[procs.RUN_DIR_ENV] = str(ctx.run_dir)
    env["BEAMLINE_CONFIG_DIR"] = str(ctx.config_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    fork = ctx.load_state().get("forkserver", {})
    if fork.get("socket") and procs.alive(fork.get("pid")):
        env[forkserver.SOCKET_ENV] = fork["socket"]
    else:
        env.pop(forkserver.SOCKET_ENV, None)
    if listen in ("0.0.0.0", ""):
        env.pop("ORBendPoint", None)
    else:
        # omniORB reads ORB parameters from the environment: every server
        # (CORBA and ZMQ event ports) then listens on this address only.
        env["ORBendPoint"] = f"giop:tcp:{listen}:"
    return env


def resolve_tango_host(ctx: RunContext, explicit: str | None) -> tuple[str | None, bool]:
    """(tango_host, embedded). An explicit --tango-host, or a TANGO_HOST in the
    environment that is not this run's embedded database, means an existing one."""
    state = ctx.load_state()
    if explicit:
        return explicit, False
    env = os.environ.get("TANGO_HOST")
    db = state.get("database", {})
    if env:
        if db.get("embedded") and procs.alive(db.get("pid")):
            _, port = tangodb.parse_tango_host(env)
            if port == db.get("port"):
                return state.get("tango_host"), True
        return env, False
    return None, True


def _tango_host_for(bind: str, port: int) -> str:
    if bind in ("0.0.0.0", ""):
        return f"{socket.gethostname()}:{port}"
    return f"{bind}:{port}"


# ---------------------------------------------------------------------- up
def up(ctx: RunContext, opts: UpOptions, report: Reporter | None = None) -> dict[str, Any]:
    """Bring the beamline up, phase by phase; each phase only does what is
    missing. Returns the run state with the devices that did not answer."""
    report = report or Reporter()
    config, host, levels = _plan(ctx, opts, report)
    tango_host = _database(ctx, opts, report)
    # read again now that the database is known: sardana-config writes full
    # device names (a measurement group's synchronizer) with it, and would
    # otherwise keep the default host it saw first (0.05 s the second time)
    sardana_yaml.use_tango_host(tango_host)
    config = cfg.load(ctx.config_dir, ctx.run_dir)
    # after the database: its port is taken then, and no server gets it
    _event_ports(ctx, levels, opts, report)
    # the fork server's imports and the Starter's own start-up (~5 s, most of
    # it asleep) run while the virtual hardware starts and db_config is written
    fork_server_ready = _fork_server(ctx, opts, tango_host, report)
    starter_ready = _starter(ctx, opts, tango_host, host, report)
    sim_state = _virtual_hardware(ctx, config, opts, report)
    _configuration(ctx, config, opts, tango_host, sim_state, levels, report)
    fork_server_ready()
    # the Starter must answer (and know its servers) before any server
    # starts: the supervisors take their list from it, and a server that dies
    # while starting is restarted only by a supervisor that has its list
    starter_ready()
    _fresh_supervisors(ctx, config, tango_host, host)
    failures = _servers(ctx, config, opts, tango_host, levels, report)
    dumped = _dump_stacks(ctx, sorted({_server_of(config, c.device) for c in failures}))
    result_state = ctx.load_state()
    result_state["failures"] = [
        {
            "device": c.device,
            "error": c.error,
            "server": _server_of(config, c.device),
            "log_tail": procs.tail(ctx.server_log(_server_of(config, c.device))),
            **(
                {"stacks": f"dumped into {ctx.server_log(_server_of(config, c.device))}"}
                if _server_of(config, c.device) in dumped
                else {}
            ),
        }
        for c in failures
    ]
    return result_state


def _dump_stacks(ctx: RunContext, servers: list[str]) -> set[str]:
    """Servers of the suite whose process runs but whose devices did not
    answer: ask each to write every thread's stack into its log (SIGUSR1:
    faulthandler, as the supervisor does before it kills a hung server), so
    that what held it is on record. Others (Sardana) are not signalled: SIGUSR1
    would end them. Returns the servers asked."""
    import signal

    from tango_devices.registry import SERVERS

    ours = [s for s in servers if s.split("/")[0] in SERVERS]
    asked = set()
    running = procs.server_pids(ctx.run_dir, ours)
    for server in ours:
        for pid in running.get(server.lower(), []):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR1)
                asked.add(server)
    if asked:
        time.sleep(0.2)  # faulthandler writes at once; let the log take it
    return asked


def _plan(
    ctx: RunContext, opts: UpOptions, report: Reporter
) -> tuple[cfg.BeamlineConfig, str, dict[int, list[cfg.ServerInfo]]]:
    """The configuration, this host and its servers by level; refuses a host
    with no server and missing server executables before anything starts."""
    config = cfg.load(ctx.config_dir, ctx.run_dir)
    for w in config.warnings:
        report.warn(str(w))
    if opts.host:
        os.environ[cfg.HOST_ENV] = opts.host  # "@local" is this host everywhere below
    host = opts.host or cfg.short_hostname()
    levels = config.servers_by_level(host)
    if not levels:
        known = sorted({s.resolved_host(host) for s in config.servers.values()})
        raise UpError(
            f"no server of {ctx.config_dir / 'starter.json'} runs on host {host!r}; "
            f"its hosts: {', '.join(known)} (choose one with --host)"
        )
    bin_dir = venv_bin()
    missing = sorted(
        {
            s.executable
            for lvl in levels.values()
            for s in lvl
            if not (bin_dir / s.executable).exists()
        }
    )
    if missing:
        raise UpError(
            f"no server executable {', '.join(missing)} in {bin_dir}; "
            "is the suite installed? (make install)"
        )
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    (ctx.run_dir / USER_MACROS).mkdir(exist_ok=True)  # the MacroServer's first MacroPath
    return config, host, levels


def _event_ports(
    ctx: RunContext, levels: dict[int, list[cfg.ServerInfo]], opts: UpOptions, report: Reporter
) -> None:
    """The event relay's ports of this host's servers (docs/events.md): kept
    from an earlier `up` of this run directory, free ones for new servers."""
    names = [s.name for lvl in levels.values() for s in lvl]
    if os.environ.get(event_ports.DISABLE_ENV) or not any(
        s.split("/", 1)[0] == event_ports.RELAY_SERVER for s in names
    ):
        return
    if event_ports.shim_path() is None:
        report.warn(
            "event relay: its shim is not built (no C compiler when the suite was installed): "
            "clients see a restarted server's events up to 10 s late; install gcc, then "
            "make install"
        )
        return
    try:
        old = event_ports.load(ctx.run_dir)
        plan = event_ports.allocate(names, old, str(ctx.run_dir), opts.listen)
    except event_ports.PortPlanError as exc:
        raise UpError(str(exc)) from exc
    if plan != old:
        event_ports.save(ctx.run_dir, plan.values(), opts.listen)


def _database(ctx: RunContext, opts: UpOptions, report: Reporter) -> str:
    """The embedded database (started unless it already runs) or an existing
    one that must answer; sets TANGO_HOST for what follows."""
    state = ctx.load_state()
    tango_host, embedded = resolve_tango_host(ctx, opts.tango_host)
    if embedded:
        db = state.get("database", {})
        if (
            db.get("embedded")
            and procs.alive(db.get("pid"))
            and tangodb.answers(state["tango_host"])
        ):
            tango_host = state["tango_host"]
            report.step(f"database: embedded, already running at {tango_host} (pid {db['pid']})")
        else:
            info = tangodb.start_embedded(ctx, opts.port, opts.db_bind)
            tango_host = _tango_host_for(opts.db_bind, opts.port)
            ctx.update_state(tango_host=tango_host, database={"embedded": True, **info})
            report.step(
                f"database: embedded PyDatabaseds on {ctx.db_file.name}, "
                f"TANGO_HOST={tango_host} (pid {info['pid']})"
            )
    else:
        if not tangodb.answers(tango_host, timeout=3.0):
            raise UpError(
                f"no Tango database answers at TANGO_HOST={tango_host}; start it, or unset "
                "TANGO_HOST (and drop --tango-host) to run the embedded database"
            )
        ctx.update_state(tango_host=tango_host, database={"embedded": False})
        report.step(f"database: existing one at TANGO_HOST={tango_host}")
    os.environ["TANGO_HOST"] = tango_host
    return tango_host


def _virtual_hardware(
    ctx: RunContext, config: cfg.BeamlineConfig, opts: UpOptions, report: Reporter
) -> dict | None:
    sim_state = None
    if opts.simulate:
        sim_state = _ensure_simulator(ctx, config, opts, report)
    else:
        report.step("virtual hardware: not started (--no-sim): devices talk to real hardware")
    ctx.update_state(simulated=opts.simulate, listen=opts.listen)
    return sim_state


def _configuration(
    ctx: RunContext,
    config: cfg.BeamlineConfig,
    opts: UpOptions,
    tango_host: str,
    sim_state: dict | None,
    levels: dict[int, list[cfg.ServerInfo]],
    report: Reporter,
) -> None:
    """Write db_config/ into the database (what changed only), or, with
    --no-config, check that the database defines this host's servers."""
    if opts.apply_config:
        result = tangodb.apply(config, tango_host, sim_state)
        report.step(
            f"configuration: {len(result.changes)} change(s) written from {ctx.config_dir}"
            if result.changes
            else "configuration: database already up to date"
        )
        return
    missing = _unconfigured(config, tango_host, levels)
    if missing:
        raise UpError(
            f"the database at {tango_host} does not define {', '.join(missing)}: apply "
            "the configuration first (`beamline config apply`, or `beamline up` without "
            "--no-config on one host)"
        )
    report.step("configuration: not written here (--no-config): the database defines it")


FORK_SERVER_READY = 30.0  # s for the fork server to import every device module
SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path, with its NUL)


def _nothing() -> None:
    return None


def _fork_server(
    ctx: RunContext, opts: UpOptions, tango_host: str, report: Reporter
) -> Callable[[], None]:
    """The process the device servers are forked from (tango, numpy and every
    device module imported once for all of them), started unless it already
    runs; returns what waits until it is ready. Without it (--no-fork-server,
    or it failed), each server imports all that itself: slower and heavier,
    nothing else changes."""
    state = ctx.load_state().get("forkserver", {})
    if not opts.fork_server:
        if procs.alive(state.get("pid")):
            procs.stop([state["pid"]], timeout=2.0)
        ctx.update_state(forkserver={})
        return _nothing
    sock = ctx.run_dir / "forkserver.sock"
    if procs.alive(state.get("pid")) and sock.exists():
        report.step(f"fork server: already running (pid {state['pid']})")
        return _nothing
    if len(str(sock).encode()) > SOCKET_PATH_MAX:
        report.warn(
            f"fork server: not started, the socket path {sock} is longer than "
            f"{SOCKET_PATH_MAX} bytes (use a shorter --run-dir); servers start on their own"
        )
        ctx.update_state(forkserver={})
        return _nothing
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    log = ctx.log_dir / "forkserver.log"
    # its children bind their event ports through the relay's shim
    env = event_ports.with_shim(server_env(ctx, tango_host, opts.listen))
    cmd = [str(venv_bin() / "beamline-forkserver"), "--socket", str(sock), " " * forkserver.PAD]
    pid = procs.spawn_detached(cmd, env, log)
    # known at once: the Starter started next hands it to every server
    ctx.update_state(forkserver={"pid": pid, "socket": str(sock), "log": str(log)})
    deadline = time.monotonic() + FORK_SERVER_READY

    def ready() -> None:
        while not sock.exists():
            if not procs.alive(pid) or time.monotonic() > deadline:
                procs.stop([pid], timeout=1.0)
                ctx.update_state(forkserver={})
                report.warn(
                    f"fork server: did not start (see {log}); servers start on their own, "
                    "each importing its code itself"
                )
                return
            time.sleep(0.05)
        report.step(f"fork server: ready (pid {pid}), every device module imported once")

    return ready


def _starter(
    ctx: RunContext, opts: UpOptions, tango_host: str, host: str, report: Reporter
) -> Callable[[], Starter]:
    """This host's Starter: registered, and started unless it already runs
    (refused if a Starter of another run serves this host); returns what
    waits until it answers and has read its servers from the database."""
    bin_dir = venv_bin()
    starter = Starter(tango_host, host)
    starter.register(bin_dir, ctx.log_dir)
    st = ctx.load_state().get("starter", {})
    if procs.alive(st.get("pid")) and starter.answers():

        def running() -> Starter:
            starter.update_servers_info()
            report.step(f"Starter: {starter.device} already running (pid {st['pid']})")
            return starter

        return running
    foreign = [p for p in procs.find_processes(None, [starter.server]) if p.pid != st.get("pid")]
    if foreign:
        raise UpError(
            f"another Starter for host {host} is running "
            f"(pid {foreign[0].pid}: {foreign[0].cmdline}); "
            "stop it first (a second Starter would fight over the same servers)"
        )
    log = ctx.log_dir / "starter.log"
    pid = starter.start_process(server_env(ctx, tango_host, opts.listen), log)
    ctx.update_state(starter={"pid": pid, "host": host, "device": starter.device, "log": str(log)})

    def started() -> Starter:
        # 5 s when the machine is quiet; a loaded one (a test run beside it)
        # has taken more than 30
        starter.wait_ready(STARTER_TIMEOUT, pid=pid, log=log)
        # it started before db_config was written: its servers, read again
        starter.update_servers_info()
        report.step(f"Starter: {starter.device} started (pid {pid}), servers from {bin_dir}")
        return starter

    return started


def _servers(
    ctx: RunContext,
    config: cfg.BeamlineConfig,
    opts: UpOptions,
    tango_host: str,
    levels: dict[int, list[cfg.ServerInfo]],
    report: Reporter,
) -> list[DeviceCheck]:
    """Every server not yet running, level by level: a level's servers all at
    once, then wait until its devices answer. Returns the devices that did not.

    Each is started exactly as the Starter starts it (its executable from the
    Starter's StartDsPath with the instance as argument, the Starter's
    environment, output appended to the Starter's log file for it), which
    finds it by its command line: no DevStart (the Starter refuses one for
    2-3 s after a server it knew has died)."""
    env = server_env(ctx, tango_host, opts.listen)
    failures: list[DeviceCheck] = []
    for level, servers in levels.items():
        devices = [d for s in servers for d in config.devices_of(s.name)]
        report.level_started(level, [s.name for s in servers], devices)
        t0 = time.monotonic()
        running = procs.server_pids(ctx.run_dir, [s.name for s in servers])
        for s in servers:
            if s.name.lower() in running:
                continue
            try:
                procs.spawn_detached(
                    [str(venv_bin() / s.executable), s.instance], env, ctx.server_log(s.name)
                )
            except OSError as exc:
                report.warn(f"could not start {s.name}: {exc}")
        checks = _wait_devices(
            tango_host,
            [config.devices_of(s.name) for s in servers],
            opts.level_timeout,
            functools.partial(report.level_progress, level, total=len(devices)),
            dead=_dead_servers_check(ctx, config, [s.name for s in servers]),
            busy=_busy_servers_check(ctx, config, [s.name for s in servers]),
            busy_timeout=max(opts.level_timeout, opts.level_timeout_busy),
            warn=lambda text, level=level: report.warn(f"level {level}: {text}"),
        )
        report.level_done(level, checks, time.monotonic() - t0)
        failures += [c for c in checks if c.state is None]
    return failures


def _server_of(config: cfg.BeamlineConfig, device: str) -> str:
    entry = config.devices.get(device.lower())
    return entry.server if entry else "?"


DEATH_GRACE = 3.0  # a server without a process this long (continuously) has failed


def _dead_servers_check(
    ctx: RunContext, config: cfg.BeamlineConfig, servers: list[str]
) -> Callable[[list[str]], dict[str, str]]:
    """For devices still not answering: those whose server has had no process
    for DEATH_GRACE seconds in a row. One look is not enough: a server that
    crashed while starting is restarted by the supervisor within a second,
    and `up` must wait for it rather than report it dead."""
    started = time.monotonic()
    seen: dict[str, float] = {s.lower(): started for s in servers}

    def dead(pending: list[str]) -> dict[str, str]:
        now = time.monotonic()
        running = procs.server_pids(ctx.run_dir, servers)
        for name in running:
            seen[name] = now
        out = {}
        for dev in pending:
            server = _server_of(config, dev)
            if now - seen.get(server.lower(), started) >= DEATH_GRACE:
                out[dev] = (
                    f"server {server} is not running (it exited or never started; see its log)"
                )
        return out

    return dead


BUSY_WINDOW = 5.0  # s: a server that used CPU this recently is still starting
SLOW_LEVEL = 10.0  # s: a level still waited for after this is asked every 0.25 s
ALL_DEVICES_EVERY = 20  # rounds: a server not answering yet is asked through every device


def _busy_servers_check(
    ctx: RunContext, config: cfg.BeamlineConfig, servers: list[str]
) -> Callable[[list[str]], list[str]]:
    """For devices still not answering: the servers of those whose CPU time
    grew between two looks within BUSY_WINDOW seconds (still starting on a
    busy machine, not stuck), as the supervisor judges a starting server.
    Looks at most once a second (each look scans the process table)."""
    grew: dict[str, float] = {}  # server (lower case) -> when its CPU was last seen growing
    seen: dict[int, float] = {}  # pid -> its CPU seconds at the last look
    looked = [-math.inf]

    def busy(pending: list[str]) -> list[str]:
        now = time.monotonic()
        names = sorted({_server_of(config, d) for d in pending})
        if now - looked[0] >= 1.0:
            looked[0] = now
            for name, pids in procs.server_pids(ctx.run_dir, names).items():
                for pid in pids:
                    cpu = procs.cpu_seconds(pid)
                    if cpu is None:
                        continue
                    if pid in seen and cpu > seen[pid]:
                        grew[name] = now
                    seen[pid] = cpu
        return [n for n in names if now - grew.get(n.lower(), -math.inf) < BUSY_WINDOW]

    return busy


def _wait_devices(
    tango_host: str,
    groups: list[list[str]],
    timeout: float,
    progress: Callable[[int], None],
    dead: Callable[[list[str]], dict[str, str]] | None = None,
    busy: Callable[[list[str]], list[str]] | None = None,
    busy_timeout: float = 0.0,
    warn: Callable[[str], None] = lambda text: None,
) -> list[DeviceCheck]:
    """Poll until every device answers, the deadline passes, or the servers of
    all devices still pending have no process left. ``groups``: the devices
    of each server. Past ``timeout``, servers still using CPU (``busy``) are
    waited for until ``busy_timeout``: a busy machine makes starting slow.

    A server that has not answered yet is asked through its first device
    only: its devices become reachable together, and asking each of a Sardana
    server's hundreds of elements through a new client every round would load
    the database that server is reading its own configuration from."""
    t0 = time.monotonic()
    devices = [d for g in groups for d in g]
    checks: dict[str, DeviceCheck] = {d: DeviceCheck(d, None, "not asked yet") for d in devices}
    extended = False
    rounds = 0

    def answered(device: str) -> bool:
        return checks[device].state is not None

    while True:
        rounds += 1
        ask_all = rounds % ALL_DEVICES_EVERY == 1  # now and then every device, not the first
        reached, unreached = [], []
        for g in groups:
            (reached if any(answered(d) for d in g) else unreached).append(g)
        asked = [d for g in unreached for d in (g if ask_all else g[:1])]
        asked += [d for g in reached for d in g if not answered(d)]
        for c in check_devices(tango_host, asked):
            checks[c.device] = c
        # a server reached just now: its other devices at once; one that is not:
        # its other devices share its first one's error
        asked_set = set(asked)
        rest = [d for g in unreached if answered(g[0]) for d in g[1:] if d not in asked_set]
        for c in check_devices(tango_host, rest):
            checks[c.device] = c
        for g in unreached:
            if not answered(g[0]) and not ask_all:
                for d in g[1:]:
                    checks[d] = DeviceCheck(d, None, checks[g[0]].error)
        pending = [d for d in devices if checks[d].state is None]
        progress(len(devices) - len(pending))
        if not pending:
            return [checks[d] for d in devices]
        now = time.monotonic() - t0
        # looked at from BUSY_WINDOW before the deadline: growth needs two looks
        still = busy(pending) if busy and timeout - BUSY_WINDOW <= now < busy_timeout else []
        if now >= timeout:
            if not still:
                return [checks[d] for d in devices]
            if not extended:
                extended = True
                warn(
                    f"{', '.join(still)} still starting after {timeout:.0f} s (using CPU: "
                    f"a busy machine); waiting up to {busy_timeout:.0f} s"
                )
        gone = dead(pending) if dead else {}
        if gone and len(gone) == len(pending):
            for dev, why in gone.items():
                checks[dev] = DeviceCheck(dev, None, why)
            return [checks[d] for d in devices]
        # every 0.1 s at first; a level that takes long (a large beamline) is
        # asked less often: each round is a new client per pending device
        time.sleep(0.1 if now < SLOW_LEVEL else 0.25)


def _ensure_simulator(
    ctx: RunContext, config: cfg.BeamlineConfig, opts: UpOptions, report: Reporter
) -> dict:
    if not config.simulation:
        raise UpError(
            f"{ctx.config_dir}/simulation.json is missing: cannot simulate "
            "(use --no-sim for real hardware)"
        )
    state = ctx.load_state().get("sim", {})
    current = ctx.load_sim_state()
    if (
        procs.alive(state.get("pid"))
        and current
        and sim_request(current, {"op": "status"}).get("ok")
    ):
        report.step(f"virtual hardware: already running (pid {state['pid']})")
        return current
    ctx.sim_state_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env[procs.RUN_DIR_ENV] = str(ctx.run_dir)
    env["PYTHONUNBUFFERED"] = "1"
    exe = venv_bin() / "beamline-sim"
    cmd = [
        str(exe),
        "--config",
        str(ctx.config_dir / "simulation.json"),
        "--state-file",
        str(ctx.sim_state_file),
        "--listen",
        opts.listen,
    ]
    if opts.sim_auto_ports:
        cmd.append("--auto-ports")
    log = ctx.log_dir / "sim.log"
    pid = procs.spawn_detached(cmd, env, log, cwd=ctx.run_dir)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        current = ctx.load_sim_state()
        if current and current.get("pid") == pid:
            break
        if not procs.alive(pid):
            raise UpError(f"the virtual hardware exited during start-up:\n{procs.tail(log)}")
        time.sleep(0.05)
    else:
        raise UpError(f"the virtual hardware did not start within 20 s; see {log}")
    ctx.update_state(sim={"pid": pid, "log": str(log), "state_file": str(ctx.sim_state_file)})
    ports = ", ".join(
        f"{n} on {current['listen']}:{c['port']}" for n, c in current["controllers"].items()
    )
    report.step(f"virtual hardware: started (pid {pid}): {ports}")
    return current


def sim_request(sim_state: dict, request: dict, timeout: float = 3.0) -> dict:
    """One request to the virtual hardware's control port."""
    try:
        with socket.create_connection(
            (sim_state.get("listen", "127.0.0.1"), sim_state["control_port"]), timeout=timeout
        ) as s:
            s.sendall((json.dumps(request) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.decode() or "{}")
    except (OSError, ValueError, KeyError) as exc:
        return {"ok": False, "error": f"virtual hardware control port not answering: {exc}"}


# -------------------------------------------------------------------- down
@dataclass
class DownResult:
    stopped: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


def down(ctx: RunContext, report: Reporter | None = None, timeout: float = 5.0) -> DownResult:
    report = report or Reporter()
    result = DownResult()
    state = ctx.load_state()
    tango_host = state.get("tango_host")
    try:
        config = cfg.load(ctx.config_dir, ctx.run_dir)
        levels = config.servers_by_level(state.get("starter", {}).get("host"))
    except cfg.ConfigError:
        config, levels = None, {}
    if tango_host:
        os.environ["TANGO_HOST"] = tango_host

    starter = None
    st = state.get("starter", {})
    if tango_host and procs.alive(st.get("pid")):
        starter = Starter(tango_host, st.get("host"))
        if not starter.answers():
            starter = None

    # -- servers, highest level first
    names_by_level = {lvl: [s.name for s in servers] for lvl, servers in levels.items()}
    known = {n.lower() for names in names_by_level.values() for n in names}
    running = procs.find_processes(ctx.run_dir)
    extra = sorted(
        {
            p.server
            for p in running
            if p.server
            and p.server.lower() not in known
            and not p.server.startswith(("Starter/", "PyDatabaseds/", "DataBaseds/"))
        }
        - {None}
    )
    if extra:
        names_by_level[max(names_by_level, default=0) + 1] = extra
    # The supervisors first: nothing may be restarted while the rest stops.
    supervisors = [n for names in names_by_level.values() for n in names if is_supervisor(n)]
    if supervisors:
        names_by_level = {
            lvl: [n for n in names if not is_supervisor(n)] for lvl, names in names_by_level.items()
        }
        names_by_level[max(names_by_level, default=0) + 1] = supervisors
    for level in sorted(names_by_level, reverse=True):
        names = names_by_level[level]
        pids = procs.server_pids(ctx.run_dir, names)
        if not pids:
            continue
        for name in names:
            if name.lower() not in pids:
                continue
            if starter is not None:
                try:
                    starter.dev_stop(name)
                    continue
                except StarterError as exc:
                    report.warn(str(exc))
            for pid in pids[name.lower()]:
                procs.stop([pid], timeout=0)  # SIGTERM now, escalation below
        all_pids = [p for v in pids.values() for p in v]
        left = procs.wait_gone(all_pids, timeout)
        if left:
            procs.stop(left, timeout=1.0, sig=9)
            result.killed += [n for n, v in pids.items() if set(v) & set(left)]
        result.stopped += [n for n in names if n.lower() in pids]
        report.step(f"level {level}: stopped {', '.join(n for n in names if n.lower() in pids)}")

    # -- Starter, virtual hardware, database
    for key, label in (
        ("starter", "Starter"),
        ("forkserver", "fork server"),
        ("sim", "virtual hardware"),
    ):
        pid = state.get(key, {}).get("pid")
        if procs.alive(pid):
            if procs.stop([pid], timeout=timeout):
                result.killed.append(label)
            result.stopped.append(label)
            report.step(f"{label}: stopped (pid {pid})")
    db = state.get("database", {})
    if db.get("embedded") and procs.alive(db.get("pid")):
        if procs.stop([db["pid"]], timeout=timeout):
            result.killed.append("database")
        result.stopped.append("database")
        report.step(f"database: stopped (pid {db['pid']}); its data stays in {ctx.db_file}")

    # -- anything else this run directory started
    for p in procs.find_processes(ctx.run_dir):
        result.leftovers.append(f"{p.pid} {p.cmdline}")
        procs.stop([p.pid], timeout=1.0, sig=9)
    if result.leftovers:
        report.warn("killed processes left behind: " + "; ".join(result.leftovers))
    ctx.sim_state_file.unlink(missing_ok=True)
    keep = {k: v for k, v in state.items() if k in ("tango_host",)}
    keep["stopped_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    ctx.save_state(keep)
    if config is None and not result.stopped:
        report.step("nothing was running")
    return result


def _unconfigured(config: cfg.BeamlineConfig, tango_host: str, levels) -> list[str]:
    """This host's servers the database does not know (with --no-config)."""
    import tango

    db = tangodb.database(tango_host)
    missing = []
    for servers in levels.values():
        for s in servers:
            try:
                listed = db.get_device_class_list(s.name)
            except tango.DevFailed:
                listed = []
            if len(listed) <= 2:  # only the admin device, or nothing
                missing.append(s.name)
    return missing


# ------------------------------------------------------------- supervisor
MAIN_SUPERVISOR = "bl01/sys/supervisor"
STANDBY_SUPERVISOR = "bl01/sys/supervisor-standby"


def is_supervisor(server: str) -> bool:
    return server.split("/", 1)[0] == "Supervisor"


def _fresh_supervisors(
    ctx: RunContext, config: cfg.BeamlineConfig, tango_host: str, host: str
) -> None:
    """A supervisor remembers which servers are expected to run (``_Expected``)
    to restart what died while it was down. `up` starting a stopped beamline
    starts every server itself: a supervisor that is not running forgets, or
    it would start them too, racing the Starter. Only this host's supervisors:
    another host's run elsewhere."""
    mine = {s.name.lower() for lvl in config.servers_by_level(host).values() for s in lvl}
    sups = [
        d
        for d in config.devices.values()
        if d.device_class == "Supervisor" and d.server.lower() in mine
    ]
    running = procs.server_pids(ctx.run_dir, [d.server for d in sups])
    db = tangodb.database(tango_host)
    for dev in sups:
        if dev.server.lower() not in running:
            db.delete_device_property(dev.name, ["_Expected"])


def supervisor_for(tango_host: str, server: str):
    """The supervisor that watches ``server`` (the standby watches the main
    one), if it answers; else None."""
    import tango

    device = STANDBY_SUPERVISOR if server.lower() == "supervisor/supervisor" else MAIN_SUPERVISOR
    try:
        proxy = tango.DeviceProxy(f"tango://{tango_host}/{device}")
        proxy.set_timeout_millis(3000)
        servers = proxy.read_attribute("Servers").value or ()
        if server.lower() not in {s.lower() for s in servers}:
            return None
        return proxy
    except tango.DevFailed:
        return None


def supervisor_report(
    tango_host: str, devices: list[str] | None = None, answers: bool = False
) -> dict[str, Any]:
    """The supervisors' view: {"state", "summary", "servers": {name: row},
    "hosts": {host: {"device", "state", "summary"}}}. ``devices``: every
    supervisor of the beamline (one per host); the main one by default.
    State and summary are the main supervisor's (or the first that answers).
    With ``answers``, also "answers": {device (lower case): {"state", "age"}},
    each supervisor's probes' last answers (ProbeAnswers)."""
    import tango

    out: dict[str, Any] = {}
    rows: dict[str, Any] = {}
    hosts: dict[str, Any] = {}
    heard: dict[str, Any] = {}
    for device in devices or [MAIN_SUPERVISOR]:
        try:
            proxy = tango.DeviceProxy(f"tango://{tango_host}/{device}")
            proxy.set_timeout_millis(2000)
            names = ["Report", "Summary", *(["ProbeAnswers"] if answers else [])]
            values = proxy.read_attributes(names)
            report = json.loads(values[0].value)
            summary = values[1].value
            probes = json.loads(values[2].value) if answers else {}
            state = str(proxy.state())
        except (tango.DevFailed, ValueError, KeyError, TypeError):
            continue
        for r in report.get("servers", []):
            rows.setdefault(r["server"].lower(), r)  # the host's own supervisor first
        for name, seen in probes.items():
            heard.setdefault(name.lower(), seen)
        if report.get("host"):
            hosts.setdefault(report["host"], {"device": device, "state": state, "summary": summary})
        if device == MAIN_SUPERVISOR or not out:
            out.update(state=state, summary=summary)
    if not out:
        return {}
    return {**out, "servers": rows, "hosts": hosts, **({"answers": heard} if answers else {})}


def _answers_elsewhere(
    config: cfg.BeamlineConfig, supervision: dict[str, Any], host: str
) -> dict[str, DeviceCheck]:
    """device (lower case) -> its State as the probes of its own host's
    supervisor heard it within RECENT_ANSWER seconds, for devices of servers
    on other hosts that supervisor sees running with a process (this host's
    processes cannot be listed there; asking each device through a new
    client takes seconds at 200)."""
    heard = supervision.get("answers") or {}
    out: dict[str, DeviceCheck] = {}
    for s in config.servers.values():
        row = supervision.get("servers", {}).get(s.name.lower())
        if s.resolved_host(host) == host or not row or not row.get("pid"):
            continue
        if row.get("state") != "RUNNING":
            continue
        for d in config.devices_of(s.name):
            seen = heard.get(d.lower()) or {}
            age = seen.get("age")
            if seen.get("state") and age is not None and age <= RECENT_ANSWER:
                out[d.lower()] = DeviceCheck(d, seen["state"])
    return out


# ------------------------------------------------------------------ status
def split_elements(
    config: cfg.BeamlineConfig, server: str, elements: bool = False
) -> tuple[list[str], list[str]]:
    """A server's devices `status` asks, and its Sardana elements it does not
    (unless ``elements``): an element answers State by asking its controller,
    i.e. the hardware devices, which `status` asks themselves; at 200 servers
    Sardana has hundreds, each a new client. The supervisor probes the same
    devices (Sardana's Pool, MacroServer and Door)."""
    devices = config.devices_of(server)
    if elements:
        return devices, []
    asked = list(probed_devices([(d, config.devices[d.lower()].device_class) for d in devices]))
    return asked, [d for d in devices if d not in asked]


def status(ctx: RunContext, elements: bool = False) -> dict[str, Any]:
    """What runs and what answers. ``elements``: ask each Sardana element too."""
    state = ctx.load_state()
    tango_host = state.get("tango_host") or os.environ.get("TANGO_HOST")
    if tango_host:
        # before the configuration is read: its cache is keyed by TANGO_HOST,
        # and `up` read it with this one (without, the first `status` after
        # `up` read everything again: 1.8 of its 2.6 s at 200 servers)
        os.environ["TANGO_HOST"] = tango_host
    out: dict[str, Any] = {"run_dir": str(ctx.run_dir), "tango_host": tango_host, "servers": []}
    db = state.get("database", {})
    out["database"] = {
        "embedded": db.get("embedded", False),
        "pid": db.get("pid") if procs.alive(db.get("pid")) else None,
        "answers": bool(tango_host) and tangodb.answers(tango_host),
    }
    sim = state.get("sim", {})
    sim_state = ctx.load_sim_state()
    out["simulator"] = {
        "pid": sim.get("pid") if procs.alive(sim.get("pid")) else None,
        "controllers": (sim_state or {}).get("controllers", {}),
    }
    config = cfg.load(ctx.config_dir, ctx.run_dir)
    st = state.get("starter", {})
    host = st.get("host") or cfg.short_hostname()
    views: dict[str, dict] = {}  # host -> its Starter's view of its servers
    out["starter"] = {
        "device": f"tango/admin/{host}",
        "pid": st.get("pid") if procs.alive(st.get("pid")) else None,
        "answers": False,
    }
    all_hosts = sorted({s.resolved_host(host) for s in config.servers.values()} | {host})
    out["hosts"] = []
    for h in all_hosts:
        entry = {"host": h, "starter": f"tango/admin/{h}", "answers": False, "local": h == host}
        if out["database"]["answers"]:  # TANGO_HOST set above
            starter = Starter(tango_host, h)
            if starter.answers():
                entry["answers"] = True
                try:
                    views[h] = starter.servers()
                except Exception as exc:  # noqa: BLE001 - shown to the user
                    entry["error"] = str(exc)
        entry["servers"] = sum(1 for s in config.servers.values() if s.resolved_host(host) == h)
        out["hosts"].append(entry)
        if h == host:
            out["starter"]["answers"] = entry["answers"]
            if "error" in entry:
                out["starter"]["error"] = entry["error"]
    supervisors = sorted(d.name for d in config.devices.values() if d.device_class == "Supervisor")
    supervision = (
        supervisor_report(tango_host, supervisors, answers=True)
        if out["database"]["answers"]
        else {}
    )
    out["supervisor"] = {k: v for k, v in supervision.items() if k not in ("servers", "answers")}
    names = sorted(config.servers.values(), key=lambda s: (s.level, s.name))
    pids = procs.server_pids(ctx.run_dir, [s.name for s in names])
    split = {s.name: split_elements(config, s.name, elements) for s in names}
    all_devices = [d for s in names for d in split[s.name][0]]
    if out["database"]["answers"]:
        # what the supervisors' probes heard lately counts as an answer now
        # (asking 200 devices again, each through a new client and the
        # database, takes seconds); the others are asked
        checks = _recent_answers(ctx, config, pids)
        checks.update(_answers_elsewhere(config, supervision, host))
        rest = [d for d in all_devices if d.lower() not in checks]
        checks.update({c.device.lower(): c for c in check_devices(tango_host, rest)})
    else:  # no client can find a device: what the supervisors' probes saw
        checks = {}
        for view in supervisors_views(ctx):
            if not view.get("servers"):
                continue
            out["supervisor"] = out["supervisor"] or {
                "state": view["state"],
                "summary": view["summary"],
                "seen": f"{view['age']:.1f} s ago, from its file",
            }
            servers = supervision.setdefault("servers", {})
            for row in view["servers"]:
                servers.setdefault(row["server"].lower(), row)
            for device, seen in view.get("devices", {}).items():
                age = seen.get("age")
                if age is not None and age <= ANSWER_FRESH:
                    checks[device.lower()] = DeviceCheck(device, seen["state"])
                else:
                    checks.setdefault(
                        device.lower(), DeviceCheck(device, None, "no answer to the supervisor")
                    )
        for s in names:  # whatever was seen last: a server without a process does not answer
            if not pids.get(s.name.lower()):
                for d in config.devices_of(s.name):
                    checks[d.lower()] = DeviceCheck(d, None, "its server has no process")
    for s in names:
        view = views.get(s.resolved_host(host), {}).get(s.name.lower())
        devs = []
        for d in split[s.name][0]:
            c = checks.get(d) or checks.get(d.lower())
            devs.append(
                {
                    "device": d,
                    "state": c.state if c else None,
                    "error": c.error if c else "not known (no database to ask)",
                }
            )
        out["servers"].append(
            {
                "server": s.name,
                "host": s.resolved_host(host),
                "level": s.level,
                "controlled": s.controlled,
                "starter_state": view.state if view else None,
                "pids": pids.get(s.name.lower(), []),
                "supervision": supervision.get("servers", {}).get(s.name.lower()),
                "devices": devs,
                "elements": split[s.name][1],  # Sardana elements, not asked
                "log": str(ctx.server_log(s.name)),
            }
        )
    return out


def health_problems(status_data: dict[str, Any]) -> list[str]:
    """What is wrong on this host, from :func:`status` (empty: healthy)."""
    problems = []
    if not status_data["database"]["answers"]:
        problems.append(f"no Tango database answers at {status_data['tango_host']}")
        return problems
    starter = status_data["starter"]
    if not starter["answers"]:
        problems.append(f"the Starter {starter['device']} does not answer")
    local = next((h["host"] for h in status_data.get("hosts", []) if h.get("local")), None)
    for s in status_data["servers"]:
        if local is not None and s["host"] != local:
            continue
        for d in s["devices"]:
            if d["state"] is None:
                problems.append(f"{d['device']} ({s['server']}) does not answer: {d['error']}")
    return problems


def is_running(ctx: RunContext) -> bool:
    state = ctx.load_state()
    return any(procs.alive(state.get(k, {}).get("pid")) for k in ("database", "starter", "sim"))


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
