"""The `beamline` command: run, configure and inspect the beamline.

beamline up / down / status          the whole beamline under the Tango Starter
beamline start|stop|restart SERVER   one server, through the Starter
beamline config check|diff|apply     db_config/ against the Tango database
beamline sim status|fault|clear      the virtual hardware's fault injection
beamline logs SERVER                 the tail of a server's log
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from beamline import config as cfg
from beamline import orchestrator as orch
from beamline import procs, sardana_yaml, tangodb
from beamline.runtime import RunContext, venv_bin

# Off a terminal (pipes, CI logs) rich would squeeze tables into 80 columns.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

STATE_STYLE = {
    "ON": "green",
    "OPEN": "green",
    "CLOSE": "white",
    "MOVING": "cyan",
    "RUNNING": "cyan",
    "ALARM": "yellow",
    "FAULT": "red",
    "DISABLE": "magenta",
    "OFF": "white",
    "INIT": "yellow",
    "UNKNOWN": "red",
    None: "red",
}


def _state(text: str | None) -> str:
    style = STATE_STYLE.get(text, "white")
    return f"[{style}]{text or 'no answer'}[/{style}]"


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    sys.exit(code)


def _tango_error_text(exc: Exception, result_of: str) -> str:
    """A Tango error for people: its reason and what to do (re-raises what is
    not a Tango error, so real bugs keep their traceback)."""
    import getpass

    import tango

    if not isinstance(exc, tango.DevFailed):
        raise exc
    first = exc.args[0]
    text = f"{result_of}: {first.reason}: {str(first.desc).strip()}"
    if first.reason == "API_ReadOnlyMode":
        text += (
            f"\nTango Access Control lets user {getpass.getuser()!r} only read from this "
            "host: give it write access in db_config/access.json (its addresses) and run "
            "`beamline db access` on the database host"
        )
    return text


class RichReporter(orch.Reporter):
    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None

    def step(self, text: str) -> None:
        console.print(f"[green]✓[/green] {text}")

    def warn(self, text: str) -> None:
        console.print(f"[yellow]![/yellow] {text}")

    def level_started(self, level, servers, devices) -> None:
        self.progress = Progress(
            TextColumn(f"  level {level}: starting {len(servers)} server(s)"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("devices answering"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=len(devices))

    def level_progress(self, level, answered, total) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=answered)

    def level_done(self, level, checks, elapsed) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        bad = [c for c in checks if c.state is None]
        states = _states_summary(checks)
        mark = "[green]✓[/green]" if not bad else "[red]✗[/red]"
        console.print(
            f"{mark} level {level}: {len(checks) - len(bad)}/{len(checks)} devices answering "
            f"after {elapsed:.1f} s: {states}"
        )


def _device_label(device: str) -> str:
    """'bl01/mot/slit_h' -> 'slit_h'; Sardana elements 'motor/motctrl/1' -> 'motctrl/1'."""
    parts = device.split("/")
    return "/".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def _states_summary(checks, limit: int = 12) -> str:
    if len(checks) <= limit:
        return ", ".join(f"{_device_label(c.device)} {_state(c.state)}" for c in checks)
    # many devices (a Sardana server): count the states, name only the unusual ones
    counts: dict[str, int] = {}
    odd = []
    for c in checks:
        name = str(c.state) if c.state is not None else "not answering"
        counts[name] = counts.get(name, 0) + 1
        if name not in ("ON", "OPEN", "CLOSE"):
            odd.append(f"{_device_label(c.device)} {_state(c.state)}")
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return text + (f" ({', '.join(odd[:limit])})" if odd else "")


class QuietReporter(orch.Reporter):
    pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--run-dir",
    envvar="BEAMLINE_RUN_DIR",
    type=click.Path(file_okay=False),
    help="Run directory (database file, logs, state). Default: var/ in the project.",
)
@click.option(
    "--config-dir",
    envvar="BEAMLINE_CONFIG_DIR",
    type=click.Path(file_okay=False),
    help="Configuration directory. Default: db_config/ in the project.",
)
@click.pass_context
def main(ctx: click.Context, run_dir: str | None, config_dir: str | None) -> None:
    """Run, configure and inspect the beamline."""
    ctx.obj = RunContext.create(run_dir, config_dir)


# ---------------------------------------------------------------------- up
@main.command()
@click.option(
    "--tango-host",
    metavar="HOST:PORT",
    help="Use this existing Tango database (also taken from TANGO_HOST); none is started.",
)
@click.option("--port", default=10000, show_default=True, help="Port of the embedded database.")
@click.option(
    "--db-bind",
    default="0.0.0.0",
    show_default=True,
    help="Address the embedded database listens on.",
)
@click.option(
    "--listen",
    default="127.0.0.1",
    show_default=True,
    help="Address device servers and virtual hardware listen on (0.0.0.0 for the network).",
)
@click.option("--no-sim", is_flag=True, help="Real hardware: do not start the virtual hardware.")
@click.option(
    "--sim-auto-ports", is_flag=True, help="Let the virtual hardware pick free ports (tests)."
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    help="Seconds to wait for the devices of one level.",
)
@click.option(
    "--busy-timeout",
    default=180.0,
    show_default=True,
    help="Seconds to wait for a level whose servers still use CPU at --timeout "
    "(still starting on a busy machine).",
)
@click.option(
    "--host",
    "host_name",
    metavar="NAME",
    help="Act as this host of db_config/starter.json: its Starter (tango/admin/NAME) "
    "and only its servers. Default: this machine's short host name.",
)
@click.option(
    "--no-config",
    is_flag=True,
    help="Do not write db_config to the database (another host or a loader does).",
)
@click.option(
    "--no-fork-server",
    is_flag=True,
    help="Start every server as a process of its own from scratch, not forked from "
    "the fork server (which has imported the device code once for all of them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--demo-help", is_flag=True, help="Afterwards, print how to use and stop the demo.")
@click.pass_obj
def up(
    ctx: RunContext,
    tango_host,
    port,
    db_bind,
    listen,
    no_sim,
    sim_auto_ports,
    timeout,
    busy_timeout,
    host_name,
    no_config,
    no_fork_server,
    as_json,
    demo_help,
) -> None:
    """Start the beamline: database, virtual hardware, Starter, every server.

    Safe to run again: only what is not running is started.
    """
    opts = orch.UpOptions(
        tango_host=tango_host,
        port=port,
        db_bind=db_bind,
        listen=listen,
        simulate=not no_sim,
        sim_auto_ports=sim_auto_ports,
        level_timeout=timeout,
        level_timeout_busy=busy_timeout,
        host=host_name,
        apply_config=not no_config,
        fork_server=not no_fork_server,
    )
    reporter = QuietReporter() if as_json else RichReporter()
    try:
        result = orch.up(ctx, opts, reporter)
    except cfg.ConfigError as exc:
        fail(
            f"the configuration in {ctx.config_dir} has problems:\n"
            + "\n".join(f"  {p}" for p in exc.problems),
            2,
        )
    except (orch.UpError, tangodb.DatabaseError, orch.StarterError) as exc:
        fail(f"{exc}\n(logs in {ctx.log_dir}; `beamline down` stops what was started)")
    except Exception as exc:  # a DevFailed from the database (e.g. access control)
        fail(_tango_error_text(exc, result_of="beamline up"))
    failures = result.get("failures", [])
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for f in failures:
            console.print(
                f"[red]✗ {f['device']}[/red] ({f['server']}) does not answer: {f['error']}"
            )
            if f["log_tail"]:
                console.print(f"  last lines of {ctx.server_log(f['server'])}:")
                for line in f["log_tail"].splitlines():
                    console.print(f"    {line}", markup=False)
        if not failures:
            console.print(
                "[green]beamline up[/green]: every device answers. "
                f"TANGO_HOST={result['tango_host']}"
            )
        if demo_help:
            _print_demo_help(ctx, result)
    sys.exit(1 if failures else 0)


def _print_demo_help(ctx: RunContext, result: dict) -> None:
    th = result["tango_host"]
    console.print(
        f"""
[bold]The demo beamline runs.[/bold]  Every device is its own process under the Tango Starter.

  export TANGO_HOST={th}          for any Tango client (itango, Jive, Astor, scripts)
  .venv/bin/beamline status                 servers, processes and device states
  .venv/bin/python -c "import tango; m = tango.DeviceProxy('bl01/mot/sample_x'); \\
      m.Position = 3; print(m.State())"
  .venv/bin/beamline sim fault smc1 drop    cut the motion controller's link
  .venv/bin/beamline sim clear smc1         ... and give it back: the motors recover by themselves
  .venv/bin/beamline logs Motor/sample_x    a server's log
  .venv/bin/beamline spock                  Sardana's spock on the Door: try
      shutter_open, then align_peak sample_x 0 3 21 0.1 (scans go to {ctx.run_dir}/scans)
  .venv/bin/beamline gui                    the operator GUI (Taurus; needs a display, e.g. ssh -X;
      without one: beamline gui --screenshots DIR saves a PNG of every panel)
  .venv/bin/beamline queue add ct 0.1       queue experiments (also from the GUI's Queue panel)
  make down                                 stop everything (or: .venv/bin/beamline down)

Logs and the database file are in {ctx.run_dir}."""
    )


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def down(ctx: RunContext, as_json: bool) -> None:
    """Stop everything `up` started, in reverse order; leave no process behind."""
    result = orch.down(ctx, QuietReporter() if as_json else RichReporter())
    if as_json:
        click.echo(json.dumps(result.__dict__, indent=2))
    elif not result.stopped and not result.leftovers:
        console.print("nothing was running")
    else:
        console.print("[green]beamline down[/green]: nothing left running")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 unless the database, this host's Starter and every device of this "
    "host's servers answer (health checks).",
)
@click.option(
    "--elements",
    is_flag=True,
    help="Ask each Sardana element (motor, channel, ...) its State too; by default "
    "Sardana's Pool, MacroServer and Door are asked and its elements counted.",
)
@click.pass_obj
def status(ctx: RunContext, as_json: bool, check: bool, elements: bool) -> None:
    """Per server: Starter state, pid and device states."""
    try:
        data = orch.status(ctx, elements=elements)
    except cfg.ConfigError as exc:
        fail(str(exc), 2)
    problems = orch.health_problems(data) if check else []
    db_down = bool(data["tango_host"]) and not data["database"]["answers"]
    if as_json:
        click.echo(json.dumps(data if not check else {**data, "problems": problems}, indent=2))
        if problems or db_down:
            sys.exit(1)
        return
    db = data["database"]
    kind = "embedded" if db["embedded"] else "external"
    console.print(
        f"TANGO_HOST={data['tango_host']} ({kind} database, "
        + ("answering)" if db["answers"] else "[red]not answering[/red])")
    )
    st = data["starter"]
    console.print(
        f"Starter {st['device']}: "
        + (f"pid {st['pid']}" if st["pid"] else "no process")
        + ("" if st["answers"] else " [red](not answering)[/red]")
    )
    sim = data["simulator"]
    if sim["pid"]:
        ctrls = ", ".join(f"{n}:{c['port']}" for n, c in sim["controllers"].items())
        console.print(f"virtual hardware: pid {sim['pid']} ({ctrls})")
    hosts = data.get("hosts") or []
    if len(hosts) > 1:
        sup_hosts = (data.get("supervisor") or {}).get("hosts", {})
        for h in hosts:
            sv = sup_hosts.get(h["host"])
            console.print(
                f"host {h['host']}{' (this one)' if h['local'] else ''}: "
                f"{h['servers']} servers, Starter {h['starter']} "
                + ("answering" if h["answers"] else "[red]not answering[/red]")
                + (f", supervisor {_state(sv['state'])} {sv['summary']}" if sv else "")
            )
    sup = data.get("supervisor") or {}
    if sup:
        console.print(f"supervisor: {_state(sup.get('state'))} {sup.get('summary', '')}")
    elif db_down:
        console.print(
            "supervisor: not asked (it needs the database to be found; it keeps watching "
            "its servers and restarts them once the database answers)"
        )
    else:
        console.print(
            "supervisor: [yellow]not answering[/yellow] (crashed servers are not restarted)"
        )
    table = Table(show_edge=False, header_style="bold")
    for col in (
        "level",
        "server",
        "host",
        "Starter",
        "pid",
        "restarts",
        "device",
        "state",
        "last failure",
    ):
        table.add_column(col)
    for s in data["servers"]:
        sv = s.get("supervision") or {}
        restarts = str(sv.get("restarts", "-")) if sv else "-"
        cause = sv.get("last_cause", "") if sv else ""
        if sv.get("last_recovery") is not None:
            cause += f" (back after {sv['last_recovery']:.2f} s)"
        for i, d in enumerate(s["devices"] or [{"device": "", "state": None}]):
            first = i == 0
            starter_state = _state(s["starter_state"]) if s["starter_state"] else "-"
            pids = ",".join(map(str, s["pids"])) if s["pids"] else "-"
            table.add_row(
                str(s["level"]) if first else "",
                s["server"] if first else "",
                s["host"] if first else "",
                starter_state if first else "",
                pids if first else "",
                restarts if first else "",
                d["device"],
                _state(d["state"]) if d["device"] else "",
                cause if first else "",
            )
        if s.get("elements"):
            table.add_row(
                *[""] * 6,
                f"+ {len(s['elements'])} Sardana elements",
                "not asked (--elements)",
                "",
            )
    console.print(table)
    if db_down:
        console.print(
            f"[red]The Tango database at {data['tango_host']} is not answering[/red]: no client "
            "can find a device, settings cannot be stored, crashed servers wait to be "
            "restarted. The device states above are what the supervisor's probes saw "
            "(they need no database). "
            + (
                "Start it again: `beamline up` (it is this beamline's embedded one)."
                if db["embedded"]
                else "Start that database again."
            )
        )
    if problems:
        for problem in problems:
            err.print(f"[red]unhealthy:[/red] {problem}")
    if problems or db_down:
        sys.exit(1)


# ------------------------------------------------------------ start / stop
def _starter_for(ctx: RunContext):
    from beamline.starter import Starter

    state = ctx.load_state()
    th = state.get("tango_host")
    if not th or not procs.alive(state.get("starter", {}).get("pid")):
        fail("the beamline is not running (no Starter); run `beamline up` first")
    os.environ["TANGO_HOST"] = th
    return Starter(th, state["starter"].get("host")), th


def _server_name(ctx: RunContext, name: str) -> str:
    config = cfg.load(ctx.config_dir, ctx.run_dir)
    by_lower = {s.name.lower(): s.name for s in config.servers.values()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    # accept a device name too
    entry = config.devices.get(name.lower())
    if entry:
        return entry.server
    fail(f"no server or device named {name!r}; servers: {', '.join(sorted(by_lower.values()))}", 2)
    raise AssertionError


@main.command()
@click.argument("name")
@click.option("--timeout", default=30.0, show_default=True)
@click.pass_obj
def start(ctx: RunContext, name: str, timeout: float) -> None:
    """Start one server (or the server of a device); the supervisor watches it again."""
    server = _server_name(ctx, name)
    starter, th = _starter_for(ctx)
    config = cfg.load(ctx.config_dir, ctx.run_dir)
    supervisor = orch.supervisor_for(th, server)
    running = bool(procs.server_pids(ctx.run_dir, [server]))
    if supervisor is not None:
        supervisor.StartServer(server)  # also after a crash loop: counts start again
    elif not running:
        try:
            starter.start_server(server, lambda: bool(procs.server_pids(ctx.run_dir, [server])))
        except orch.StarterError as exc:
            fail(str(exc))
    if running:
        console.print(f"{server} is already running")
    checks = orch._wait_devices(th, [config.devices_of(server)], timeout, lambda n: None)
    bad = [c for c in checks if c.state is None]
    for c in checks:
        console.print(f"{c.device}: {_state(c.state)} {c.error}")
    if bad:
        console.print(procs.tail(ctx.server_log(server)), markup=False)
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("--timeout", default=5.0, show_default=True)
@click.pass_obj
def stop(ctx: RunContext, name: str, timeout: float) -> None:
    """Stop one server on purpose: the supervisor does not restart it until `beamline start`."""
    server = _server_name(ctx, name)
    starter, th = _starter_for(ctx)
    pids = procs.server_pids(ctx.run_dir, [server]).get(server.lower(), [])
    supervisor = orch.supervisor_for(th, server)
    if supervisor is not None:
        supervisor.StopServer(server)  # marks it stopped on purpose, then DevStop
    if not pids:
        console.print(f"{server} is not running")
        return
    if supervisor is None:
        try:
            starter.dev_stop(server)
        except orch.StarterError as exc:
            # The Starter learns of a new process only at its next ping (2 s):
            # stop it the way the Starter would, with SIGTERM.
            console.print(f"{exc}; stopping it with SIGTERM")
            procs.stop(pids, timeout=0)
    left = procs.wait_gone(pids, timeout)
    if left:
        starter.hard_kill(server)
        procs.stop(left, timeout=2.0, sig=9)
        console.print(f"{server} did not exit within {timeout:g} s and was killed")
    else:
        console.print(f"{server} stopped")


# ----------------------------------------------------------------- config
@main.group()
def config() -> None:
    """Check, diff and apply db_config/ to the Tango database."""


@config.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option(
    "--servers",
    type=int,
    help="A beamline of about this many servers (in a real "
    "beamline's proportions), instead of the counts below.",
)
@click.option("--motors", type=int, default=5, show_default=True, help="SMC motors in all.")
@click.option(
    "--motor-records", type=int, default=1, show_default=True, help="EPICS motor records in all."
)
@click.option("--scalers", type=int, default=1, show_default=True)
@click.option("--cameras", type=int, default=1, show_default=True)
@click.option("--gauges", type=int, default=1, show_default=True)
@click.option("--valves", type=int, default=1, show_default=True)
@click.option(
    "--axes-per-controller",
    type=int,
    default=8,
    show_default=True,
    help="Motors per simulated SMC controller (it has 8 axes).",
)
@click.option(
    "--hosts",
    help="Spread the servers over these hosts (comma-separated short host names): "
    "supervisors and Sardana on the first, the logger, relay and queue on the last, "
    "the hardware servers in turn, a supervisor for each further host.",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.pass_obj
def config_generate(ctx: RunContext, out, servers, force, hosts, **counts) -> None:
    """Write a beamline of any size built like the demo: the demo's devices and
    as many more of each kind (counts are totals). Run it with
    `beamline --config-dir OUT up` (with --hosts: `up --tango-host DB --host
    NAME` on each host, the first host first)."""
    from beamline import generate

    names = tuple(h.strip() for h in hosts.split(",")) if hosts is not None else ()
    try:
        if servers is not None:
            spec = generate.Spec.for_servers(servers, hosts=names)
        else:
            spec = generate.Spec(**counts, hosts=names)
        result = generate.write(spec, ctx.config_dir, Path(out), force=force)
    except generate.GenerateError as exc:
        fail(str(exc), 2)
    counted = ", ".join(f"{v} {k}" for k, v in result["spec"].items() if k != "hosts")
    where = (
        f"; run it on each host, {names[0]} first: beamline --config-dir {result['out']} up "
        "--tango-host DB --host NAME"
        if names
        else f"; run it: beamline --config-dir {result['out']} up"
    )
    console.print(f"wrote {result['out']}: {result['servers']} servers ({counted}){where}")


@config.command("check")
@click.pass_obj
def config_check(ctx: RunContext) -> None:
    """Validate the configuration files; names the file and key of every error."""
    try:
        c = cfg.load(ctx.config_dir, ctx.run_dir)
    except cfg.ConfigError as exc:
        err.print(f"[red]{len(exc.problems)} problem(s)[/red] in {ctx.config_dir}:")
        for p in exc.problems:
            err.print(f"  {p}", markup=False)
        sys.exit(2)
    for w in c.warnings:
        console.print(f"[yellow]warning[/yellow] {w}", markup=True)
    levels = c.servers_by_level()
    console.print(
        f"[green]ok[/green]: {len(c.servers)} servers, {len(c.devices)} devices, levels "
        + ", ".join(f"{lvl}: {len(s)}" for lvl, s in levels.items())
        + (
            f"; simulation with {len(c.simulation.get('controllers', {}))} controller(s)"
            if c.simulation
            else ""
        )
    )


def _config_target(
    ctx: RunContext, tango_host: str | None
) -> tuple[cfg.BeamlineConfig, str, dict | None]:
    def load() -> cfg.BeamlineConfig:
        try:
            return cfg.load(ctx.config_dir, ctx.run_dir)
        except cfg.ConfigError as exc:
            fail(
                "configuration problems (run `beamline config check`):\n"
                + "\n".join(f"  {p}" for p in exc.problems),
                2,
            )
            raise

    load()  # its problems first, whatever the database
    state = ctx.load_state()
    th = tango_host or state.get("tango_host") or os.environ.get("TANGO_HOST")
    if not th:
        fail("no database: run `beamline up`, or give --tango-host HOST:PORT (or TANGO_HOST)")
    if not tangodb.answers(th):
        fail(f"no Tango database answers at {th}")
    os.environ["TANGO_HOST"] = th
    # again with this database: Sardana's full names are made with it
    sardana_yaml.use_tango_host(th)
    c = load()
    sim_state = ctx.load_sim_state() if state.get("simulated") and not tango_host else None
    return c, th, sim_state


@config.command("diff")
@click.option("--tango-host", metavar="HOST:PORT")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def config_diff(ctx: RunContext, tango_host: str | None, as_json: bool) -> None:
    """Show what `apply` would change in the live database (exit 1 if anything)."""
    c, th, sim_state = _config_target(ctx, tango_host)
    plan = tangodb.plan(c, th, sim_state)
    if as_json:
        click.echo(json.dumps([ch.as_dict() for ch in plan.changes], indent=2, default=str))
    elif plan.empty:
        console.print(f"no differences: the database at {th} matches {ctx.config_dir}")
    else:
        for ch in plan.changes:
            style = {"add": "green", "delete": "red", "update": "yellow"}[ch.action]
            console.print(f"[{style}]{ch}[/{style}]", markup=True)
        console.print(f"{len(plan.changes)} change(s); `beamline config apply` writes them")
    sys.exit(0 if plan.empty else 1)


@config.command("apply")
@click.option("--tango-host", metavar="HOST:PORT")
@click.pass_obj
def config_apply(ctx: RunContext, tango_host: str | None) -> None:
    """Write the configuration to the database (nothing if it is up to date)."""
    c, th, sim_state = _config_target(ctx, tango_host)
    try:
        plan = tangodb.apply(c, th, sim_state)
    except Exception as exc:  # a DevFailed from the database (e.g. access control)
        fail(_tango_error_text(exc, result_of="beamline config apply"))
    for ch in plan.changes:
        console.print(str(ch), markup=False)
    console.print(
        f"{len(plan.changes)} change(s) written to {th}"
        if plan.changes
        else "database already up to date"
    )


# -------------------------------------------------------------------- sim
@main.group()
def sim() -> None:
    """Virtual hardware: status and fault injection."""


def _sim_state(ctx: RunContext) -> dict:
    s = ctx.load_sim_state()
    if not s:
        fail("the virtual hardware is not running (beamline up starts it unless --no-sim)")
    return s


def _sim_call(ctx: RunContext, request: dict) -> dict:
    reply = orch.sim_request(_sim_state(ctx), request)
    if not reply.get("ok"):
        fail(reply.get("error", "unknown error"), 2)
    return reply


@sim.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sim_status(ctx: RunContext, as_json: bool) -> None:
    """Controllers, ports, active faults and axis positions."""
    reply = _sim_call(ctx, {"op": "status"})
    click.echo(json.dumps(reply, indent=2)) if as_json else console.print_json(json.dumps(reply))


@sim.command("fault")
@click.argument("controller")
@click.argument("kind")
@click.option("--axis", type=int, help="Axis, for axis_fault and interlock on a motion controller.")
@click.option("--text", help="Fault text (axis_fault, a manual interlock).")
@click.option(
    "--set",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other parameter of the fault, e.g. --set gauge=gauge1.",
)
@click.pass_obj
def sim_fault(ctx: RunContext, controller: str, kind: str, axis, text, params) -> None:
    """Inject a fault into a simulated controller (until `beamline sim clear`).

    Link faults of every TCP controller: drop, stall, garbage. Motion
    controller: axis_fault, interlock (--axis N). PLC: interlock, stuck.
    EPICS IOC: ioc_down, vacuum_leak, valve_stuck, motor_problem. The
    simulator names the valid kinds of each controller on a wrong one.
    """
    request = {"op": "fault", "controller": controller, "kind": kind}
    if kind in ("axis_fault",) and axis is None:
        fail(f"{kind} needs --axis N", 2)
    if axis is not None:
        request["axis"] = axis
    if text is not None:
        request["text"] = text
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--set takes KEY=VALUE, not {item!r}", 2)
        request[key] = int(value) if value.isdigit() else value
    reply = _sim_call(ctx, request)
    console.print(f"{controller}: {reply.get('fault', kind)}" + (f" (axis {axis})" if axis else ""))


@sim.command("clear")
@click.argument("controller")
@click.pass_obj
def sim_clear(ctx: RunContext, controller: str) -> None:
    """Clear the injected faults of a controller (latched axis faults need Reset)."""
    _sim_call(ctx, {"op": "clear", "controller": controller})
    console.print(f"{controller}: faults cleared")


# -------------------------------------------------------------------- logs
@main.command()
@click.argument("name")
@click.option("-n", "--lines", default=30, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.pass_obj
def logs(ctx: RunContext, name: str, lines: int, follow: bool) -> None:
    """The tail of a server's log (NAME: server, device, starter, sim or database)."""
    special = {
        "starter": ctx.log_dir / "starter.log",
        "sim": ctx.log_dir / "sim.log",
        "database": ctx.log_dir / "database.log",
    }
    path = special.get(name.lower()) or ctx.server_log(_server_name(ctx, name))
    if not path.exists():
        fail(f"no log at {path}")
    click.echo(procs.tail(path, lines))
    if follow:
        with open(path) as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.2)


# ------------------------------------------------------------------ spock
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--door", help="Door device or alias (default: the Door in db_config/sardana)")
@click.option("--profile", default="bl01", show_default=True, help="spock (IPython) profile")
@click.argument("spock_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def spock(ctx: RunContext, door: str | None, profile: str, spock_args: tuple[str, ...]) -> None:
    """Sardana's spock console on this beamline's Door (profile made on first use).

    The profile lives in the run directory (RUN_DIR/ipython), so it never
    touches ~/.ipython; extra arguments go to spock (e.g. --simple-prompt)."""
    from beamline import spock_profile

    state = ctx.load_state()
    th = state.get("tango_host") or os.environ.get("TANGO_HOST")
    if not th or not tangodb.answers(th):
        fail("the beamline is not running (no database); run `beamline up` first")
    os.environ["TANGO_HOST"] = th
    config = cfg.load(ctx.config_dir, ctx.run_dir)
    try:
        door = door or spock_profile.default_door(config)
        ipython_dir = spock_profile.ensure_profile(ctx.run_dir / "ipython", profile, door)
    except spock_profile.SpockError as exc:
        fail(str(exc))
    os.environ["IPYTHONDIR"] = str(ipython_dir)
    exe = str(venv_bin() / "spock")
    os.execv(exe, [exe, f"--profile={profile}", *spock_args])


# ---------------------------------------------------------------- history
from beamline.history_cli import history  # noqa: E402

main.add_command(history)

# ------------------------------------------------------------------ queue
from beamline.queue_cli import queue  # noqa: E402

main.add_command(queue)

# --------------------------------------------------------------------- db
from beamline.db_cli import db  # noqa: E402

main.add_command(db)


if __name__ == "__main__":
    main()


# -------------------------------------------------------------------- gui
@main.command()
@click.option(
    "--screenshots",
    type=click.Path(file_okay=False),
    help="Save a PNG of every panel into this directory, then quit (works without a display).",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=8.0,
    show_default=True,
    help="With --screenshots: seconds to let the panels fill in first.",
)
@click.pass_obj
def gui(ctx: RunContext, screenshots: str | None, settle: float) -> None:
    """The operator GUI (a TaurusGui, taurus_gui/bl01) on this beamline.

    Its settings (panel layout, perspectives) are kept in RUN_DIR/gui/bl01.ini."""
    from pathlib import Path

    state = ctx.load_state()
    th = state.get("tango_host") or os.environ.get("TANGO_HOST")
    if not th or not tangodb.answers(th):
        fail("the beamline is not running (no database); run `beamline up` first")
    os.environ["TANGO_HOST"] = th
    from taurus_gui import app as gui_app

    if screenshots is None and gui_app.needs_offscreen():
        fail(
            "no display (DISPLAY is not set): run it in a desktop session, with `ssh -X`, "
            "or save screenshots of every panel with --screenshots DIR"
        )
    out = Path(screenshots) if screenshots else None
    gui_app.run(ctx.run_dir / "gui" / "bl01.ini", out, settle)
