"""`beamline history`: the data logger's archive from the command line.

beamline history get ATTRIBUTE [--start T] [--end T] [--max-points N]
beamline history config DEVICE [--at T]
beamline history diff DEVICE T1 T2          what changed between two moments
beamline history list [PATTERN]             archived attributes
beamline history files                      the archive files
beamline history stats                      the logger's statistics
beamline history seal FILE...               make files left by a crash plain-readable

Times: seconds since the epoch, "now", "-10m", "-2h", "-1d" or ISO 8601
(local time unless a zone is given). By default the questions go to the
running logger (``bl01/sys/logger``); ``--dir DIR`` reads the HDF5 files
directly (a copy of the archive, or while the logger is down).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tango_devices.logger import configuration
from tango_devices.logger.model import iso, parse_time

LOGGER_DEVICE = "bl01/sys/logger"

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", markup=True)
    sys.exit(code)


# ---------------------------------------------------------------- sources
class DeviceSource:
    """Questions to the running DataLogger device."""

    def __init__(self, tango_host: str | None, device: str) -> None:
        import tango

        self.tango = tango
        name = f"tango://{tango_host}/{device}" if tango_host else device
        try:
            self.proxy = tango.DeviceProxy(name)
            self.proxy.set_timeout_millis(30000)
            self.proxy.ping()
        except tango.DevFailed as exc:
            _fail(
                f"the logger {device} does not answer: {exc.args[0].desc.strip()}\n"
                "(is the beamline up? `--dir DIR` reads the archive files directly)"
            )

    def _call(self, command: str, arg: Any) -> Any:
        try:
            reply = self.proxy.command_inout(command, arg)
        except self.tango.DevFailed as exc:
            desc = exc.args[0].desc.strip()
            _fail(desc if desc.startswith(f"{command}:") else f"{command}: {desc}", 2)
        return json.loads(reply)

    def history(self, name: str, start: float, end: float, max_points: int) -> dict:
        args = {"attribute": name, "start": start, "end": end, "max_points": max_points}
        return self._call("GetHistory", json.dumps(args))

    def configuration_at(self, device: str, t: float) -> dict:
        return self._call("GetConfigurationAt", json.dumps({"device": device, "time": t}))

    def list_attributes(self, pattern: str) -> list[dict]:
        return self._call("ListArchived", pattern)

    def report(self) -> dict:
        report = json.loads(self.proxy.read_attribute("Report").value)
        try:
            report["state"] = str(self.proxy.state())
            report["status"] = self.proxy.status().strip()
        except self.tango.DevFailed as exc:
            report["state"], report["status"] = "UNKNOWN", exc.args[0].desc.strip()
        return report


class FileSource:
    """The same questions, answered from the HDF5 files."""

    def __init__(self, directory: Path) -> None:
        from tango_devices.logger.reader import ArchiveReader, QueryError

        if not directory.is_dir():
            _fail(f"no archive directory {directory}")
        self.reader = ArchiveReader(directory)
        self.errors = (QueryError, ValueError, OSError)

    def _run(self, fn, *args):
        try:
            return fn(*args)
        except self.errors as exc:
            _fail(str(exc), 2)

    def history(self, name: str, start: float, end: float, max_points: int) -> dict:
        return self._run(self.reader.history, name, start, end, max_points)

    def configuration_at(self, device: str, t: float) -> dict:
        return self._run(self.reader.configuration_at, device, t)

    def list_attributes(self, pattern: str) -> list[dict]:
        return self._run(self.reader.list_attributes, pattern)


def _tango_host(ctx) -> str | None:
    state = ctx.load_state() if ctx is not None else {}
    return state.get("tango_host") or os.environ.get("TANGO_HOST")


def _source(ctx, directory: str | None, device: str):
    if directory:
        return FileSource(Path(directory))
    return DeviceSource(_tango_host(ctx), device)


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return "" if value is None else str(value)


source_options = [
    click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False),
        help="Read the archive files in DIR instead of asking the logger.",
    ),
    click.option("--device", default=LOGGER_DEVICE, show_default=True, help="The logger device."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON."),
]


def with_source_options(fn):
    for option in reversed(source_options):
        fn = option(fn)
    return fn


@click.group()
def history() -> None:
    """The data logger's archive: values over time, configuration at a time."""


@history.command("get")
@click.argument("attribute")
@click.option("--start", default="-1h", show_default=True, help="From (time).")
@click.option("--end", default="now", show_default=True, help="To (time).")
@click.option(
    "--max-points",
    default=1000,
    show_default=True,
    help="At most this many points (min/max decimation beyond; 0: all the logger allows).",
)
@with_source_options
@click.pass_obj
def history_get(ctx, attribute, start, end, max_points, directory, device, as_json) -> None:
    """Values, times and qualities of ATTRIBUTE (domain/family/member/attribute)."""
    src = _source(ctx, directory, device)
    out = src.history(attribute, _time(start), _time(end), max_points)
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    unit = f" [{out['unit']}]" if out.get("unit") else ""
    console.print(
        f"{out['attribute']}{unit}: {out['count']} point(s) from {iso(out['start'])} "
        f"to {iso(out['end'])}"
        + (f", {out['returned']} shown ({out['method']} decimation)" if out["decimated"] else ""),
        markup=False,
    )
    table = Table(show_edge=False, header_style="bold")
    for col in ("time", "value", "quality"):
        table.add_column(col)
    for t, v, q in zip(out["times"], out["values"], out["qualities"], strict=True):
        table.add_row(iso(t), escape(_value_text(v)), q)
    console.print(table)
    for gap in out.get("gaps", []):
        console.print(
            f"[yellow]gap[/yellow] {iso(gap['start'])} .. {iso(gap['end'])}: "
            + escape(gap["cause"])
        )
    for e in out.get("errors", []):
        console.print(f"[red]error[/red] {iso(e['time'])} " + escape(f"{e['reason']}: {e['desc']}"))


@history.command("config")
@click.argument("device_name", metavar="DEVICE")
@click.option("--at", "at", default="now", show_default=True, help="The moment (time).")
@with_source_options
@click.pass_obj
def history_config(ctx, device_name, at, directory, device, as_json) -> None:
    """Every attribute value and setting of DEVICE as of a moment."""
    out = _source(ctx, directory, device).configuration_at(device_name, _time(at))
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    console.print(f"{out['device']} as of {out['time_iso']}")
    if out.get("logger_gap"):
        gap = out["logger_gap"]
        console.print("[yellow]the logger was not recording then[/yellow]: " + escape(gap["cause"]))
    table = Table(show_edge=False, header_style="bold")
    for col in ("attribute", "value", "quality", "since", "unit", "limits", "db properties"):
        table.add_column(col)
    for name, a in out["attributes"].items():
        cfg = a.get("config") or {}
        limits = ""
        if cfg and (cfg.get("min_value"), cfg.get("max_value")) != ("Not specified",) * 2:
            limits = f"{cfg.get('min_value')} .. {cfg.get('max_value')}"
        unit = cfg.get("unit", "") if cfg else ""
        props = ", ".join(f"{k}={'/'.join(v)}" for k, v in (a.get("properties") or {}).items())
        table.add_row(
            escape(name),
            escape(_value_text(a.get("value"))),
            a.get("quality") or "",
            iso(a.get("time")) or "",
            escape(unit),
            escape(limits),
            escape(props),
        )
    console.print(table)
    if out.get("properties"):
        console.print("device properties:")
        for k, v in out["properties"].items():
            console.print(f"  {k} = {' / '.join(v)}", markup=False)


@history.command("diff")
@click.argument("device_name", metavar="DEVICE")
@click.argument("first")
@click.argument("second")
@click.option("--with-times", is_flag=True, help="Also show rows that only got a new timestamp.")
@with_source_options
@click.pass_obj
def history_diff(ctx, device_name, first, second, with_times, directory, device, as_json) -> None:
    """What differs in DEVICE's values and settings between FIRST and SECOND."""
    src = _source(ctx, directory, device)
    a = src.configuration_at(device_name, _time(first))
    b = src.configuration_at(device_name, _time(second))
    changed = configuration.diff(a, b, ignore_times=not with_times)
    if as_json:
        click.echo(json.dumps(changed, indent=1))
        return
    console.print(f"{device_name}: {iso(a['time'])} -> {iso(b['time'])}: {len(changed)} change(s)")
    for path, change in changed.items():
        console.print(
            f"  {path}: {_value_text(change['before'])} -> {_value_text(change['after'])}",
            markup=False,
        )


@history.command("list")
@click.argument("pattern", default="*")
@with_source_options
@click.pass_obj
def history_list(ctx, pattern, directory, device, as_json) -> None:
    """Archived attributes matching PATTERN (shell wildcards on the full name)."""
    items = _source(ctx, directory, device).list_attributes(pattern)
    if as_json:
        click.echo(json.dumps(items, indent=1))
        return
    table = Table(show_edge=False, header_style="bold")
    for col in ("attribute", "kind", "unit", "rows", "first", "last"):
        table.add_column(col)
    for it in items:
        table.add_row(
            it["attribute"],
            it["kind"],
            it["unit"],
            str(it["rows"]),
            iso(it["first"]) or "",
            iso(it["last"]) or "",
        )
    console.print(table)


@history.command("files")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Archive directory.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def history_files(ctx, directory, as_json) -> None:
    """The archive files: created, last flush, sealed, size."""
    from tango_devices.logger.reader import ArchiveReader

    path = Path(directory) if directory else ctx.run_dir / "archive"
    if not path.is_dir():
        _fail(f"no archive directory {path}")
    rows = ArchiveReader(path).summary()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = Table(show_edge=False, header_style="bold")
    for col in ("file", "created", "last flush", "sealed", "MB", "attributes"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["file"],
            iso(r["created"]),
            iso(r["last_flush"]) or "",
            "yes" if r["sealed"] else "[yellow]no (being written, or left by a crash)[/yellow]",
            f"{r['size'] / 1e6:.1f}",
            str(r["attributes"]),
        )
    console.print(table)


@history.command("stats")
@click.option("--device", default=LOGGER_DEVICE, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def history_stats(ctx, device, as_json) -> None:
    """The logger's statistics and how each device is archived."""
    report = DeviceSource(_tango_host(ctx), device).report()
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    st = report["statistics"]
    state = report.get("state", "")
    colour = {"ON": "green", "ALARM": "yellow", "FAULT": "red"}.get(state, "white")
    console.print(f"[{colour}]{state}[/{colour}] " + escape(report.get("status", "")))
    console.print(
        f"{st['events_per_second']:.1f} events/s, backlog {st['backlog']}, "
        f"written {st['events_written']}, dropped {st['events_dropped']}, "
        f"rows lost {st.get('rows_lost', 0)}, "
        f"write latency {st['write_latency']:.2f} s, errors {st['errors']}"
    )
    if st.get("last_error"):
        console.print("[red]last error[/red]: " + escape(st["last_error"]))
    console.print(
        f"file {st['current_file']} ({st['current_file_size'] / 1e6:.1f} MB); archive "
        f"{st['archive_size'] / 1e6:.1f} MB in {st['file_count']} file(s) in {report['directory']}"
    )
    for d in report["devices"]:
        modes: dict[str, int] = {}
        for mode in d["attributes"].values():
            modes[mode] = modes.get(mode, 0) + 1
        how = ", ".join(f"{n} by {m}" for m, n in sorted(modes.items()))
        state = (
            "connected" if d["connected"] else f"[red]not connected[/red] ({escape(d['error'])})"
        )
        console.print(f"  {escape(d['device'])}: {state}; {how}")


@history.command("seal")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def history_seal(files) -> None:
    """Make files left by a killed logger readable without SWMR (the logger
    does this itself when it starts; never on the file it is writing)."""
    from tango_devices.logger import seal
    from tango_devices.logger.store import open_for_read

    for name in files:
        if _logger_running(Path(name).parent):
            _fail(
                f"a logger is writing {Path(name).parent}: it seals what a crash left when it "
                "starts, and the file it writes must not be touched",
                2,
            )
        try:
            with open_for_read(Path(name)):
                pass
            done = seal.seal(name)
        except (OSError, ValueError) as exc:
            _fail(f"{name}: {exc}", 2)
        console.print(f"{name}: {'sealed' if done else 'already sealed'}")


def _logger_running(directory: Path) -> bool:
    """Is the archive directory's lock held (a logger writes there)?"""
    import fcntl

    lock = directory / ".logger.lock"
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
