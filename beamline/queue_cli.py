"""`beamline queue`: the experiment queue (``bl01/sys/queue``) from the command line.

beamline queue add MACRO [ARGS]... [--repeat N] [--meta KEY=VALUE]... [--position P]
                                  [--on-device-down wait|fail]
beamline queue add-batch FILE     a JSON list or a YAML file of items (all or nothing)
beamline queue list               state, running item, BlockedBy and the queued items
beamline queue remove UID...      beamline queue move UID POSITION      beamline queue clear
beamline queue start|stop|stop-cancel|pause [--deferred]|resume
beamline queue abort|stop-macro|halt [--timeout S]   the running macro, with escalation
beamline queue history [--limit N]                    beamline queue history-clear

Positions: ``front``, ``back``, an index (0 is the front; -1 the back),
``before:UID`` or ``after:UID``. Every command takes ``--json``. The queue is
found like the other commands find their devices: the TANGO_HOST of the run
directory's beamline (state.json), else the TANGO_HOST environment variable.

Exit codes: 0 done; 1 the queue (or the database) does not answer; 2 the
queue refused the request (its reason is printed) or the input is wrong.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

QUEUE_DEVICE = "bl01/sys/queue"
DEFAULT_TIMEOUT_MS = 60_000  # a 10,000-item batch is validated before it is acknowledged
OUTCOME_STYLE = {
    "finished": "green",
    "failed": "red",
    "stopped": "yellow",
    "aborted": "yellow",
    "lost": "red",
    "unknown": "magenta",
    "skipped": "white",
}
STATE_STYLE = {"idle": "white", "running": "cyan", "paused": "yellow", "stopping": "yellow"}

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(code)


def _desc(exc: Exception) -> str:
    try:
        return exc.args[0].desc.strip()
    except (IndexError, AttributeError):
        return str(exc).strip()


# ------------------------------------------------------------------ client
class QueueClient:
    """The queue device; every failure ends the command with a clear message."""

    def __init__(self, run, device: str) -> None:
        self.run = run
        self.device = device
        self._proxy = None

    def tango_host(self) -> str:
        state = self.run.load_state() if self.run is not None else {}
        th = state.get("tango_host") or os.environ.get("TANGO_HOST")
        if not th:
            _fail(
                "no Tango database: run `beamline up` (or give --run-dir of a running "
                "beamline), or set TANGO_HOST=HOST:PORT",
                1,
            )
        return th

    @property
    def proxy(self):
        if self._proxy is None:
            import tango

            th = self.tango_host()
            os.environ["TANGO_HOST"] = th
            name = self.device if "://" in self.device else f"tango://{th}/{self.device}"
            try:
                proxy = tango.DeviceProxy(name)
                proxy.set_timeout_millis(DEFAULT_TIMEOUT_MS)
                proxy.ping()
            except tango.DevFailed as exc:
                _fail(
                    f"the queue {self.device} does not answer at {th}: {_desc(exc)}\n"
                    "(is the beamline up? `beamline status` shows its servers)",
                    1,
                )
            self._proxy = proxy
        return self._proxy

    def call(self, command: str, arg: Any = None, timeout_s: float | None = None) -> Any:
        """Run a command; its JSON reply decoded (None for a command without one)."""
        import tango

        proxy = self.proxy
        if timeout_s is not None:
            proxy.set_timeout_millis(int(max(timeout_s * 1000, DEFAULT_TIMEOUT_MS)))
        try:
            if arg is None:
                reply = proxy.command_inout(command)
            else:
                reply = proxy.command_inout(
                    command, arg if isinstance(arg, str) else json.dumps(arg)
                )
        except tango.DevFailed as exc:
            _fail(f"{command}: {_desc(exc)}", 2)
        finally:
            if timeout_s is not None:
                proxy.set_timeout_millis(DEFAULT_TIMEOUT_MS)
        if reply is None or reply == "":
            return None
        try:
            return json.loads(reply)
        except (TypeError, ValueError):
            return reply

    def read(self, attribute: str) -> Any:
        import tango

        try:
            return self.proxy.read_attribute(attribute).value
        except tango.DevFailed as exc:
            _fail(f"reading {attribute}: {_desc(exc)}", 2)


# ---------------------------------------------------------------- parsing
def parse_position(text: str | None, hint: str = "--position") -> Any:
    """'front', 'back', an index, 'before:UID' or 'after:UID' -> the device's form."""
    if text is None:
        return "back"
    text = text.strip()
    if text in ("front", "back"):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    how, sep, uid = text.partition(":")
    if sep and how in ("before", "after") and uid.strip():
        return {how: uid.strip()}
    raise click.BadParameter(
        f"{text!r}: use front, back, an index (0 is the front, -1 the back), "
        "before:UID or after:UID",
        param_hint=hint,
    )


def parse_meta(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that reads as JSON (5, 0.5, true, [1, 2]) is taken
    as such, anything else as text."""
    meta: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: write KEY=VALUE", param_hint="--meta")
        try:
            meta[key.strip()] = json.loads(value)
        except ValueError:
            meta[key.strip()] = value
    return meta


def _item_spec(entry: Any, where: str) -> Any:
    """A batch entry: an item object, or a line like 'ascan sample_x 0 1 10 0.1'."""
    if isinstance(entry, str):
        words = shlex.split(entry)
        if not words:
            _fail(f"{where}: an empty line is no item", 2)
        return {"macro": words[0], "args": words[1:]}
    return entry  # objects are checked by the queue itself (it names the item)


def load_batch(path: str) -> tuple[list, Any]:
    """Items (and a position, if the file gives one) from a JSON or YAML file."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", 2)
    suffix = Path(path).suffix.lower() if path != "-" else ""
    data: Any = None
    problem = ""
    if suffix not in (".yaml", ".yml"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if data is None and suffix != ".json":
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            data = YAML(typ="safe", pure=True).load(text)
            problem = ""
        except YAMLError as exc:
            problem = problem or f"not valid YAML ({str(exc).splitlines()[-1].strip()})"
    if problem:
        _fail(f"{path}: {problem}", 2)
    position = None
    if isinstance(data, dict) and "items" in data:
        position = data.get("position")
        data = data["items"]
    if not isinstance(data, list) or not data:
        _fail(
            f"{path}: a batch is a non-empty list of items, e.g. "
            '[{"macro": "ct", "args": [0.1]}, "ascan sample_x 0 1 10 0.1"]',
            2,
        )
    return [_item_spec(e, f"{path}: item {n}") for n, e in enumerate(data)], position


# ---------------------------------------------------------------- display
def _when(t: float | None) -> str:
    if not t:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _line(item: dict) -> str:
    return " ".join([str(item.get("macro", "")), *map(str, item.get("args") or [])])


def _meta_text(meta: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (meta or {}).items())


def _state_text(state: str) -> str:
    style = STATE_STYLE.get(state, "white")
    return f"[{style}]{escape(state)}[/{style}]"


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=1))


def _show_state(client: QueueClient, command: str, as_json: bool) -> None:
    state = client.read("QueueState")
    if as_json:
        _emit({"command": command, "state": state})
    else:
        console.print(f"{command}: the queue is {_state_text(state)}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
position_option = click.option(
    "--position",
    metavar="P",
    help="front, back (default), an index, before:UID or after:UID.",
)


# ---------------------------------------------------------------- commands
@click.group("queue")
@click.option("--device", default=QUEUE_DEVICE, show_default=True, help="The queue device.")
@click.pass_context
def queue(ctx: click.Context, device: str) -> None:
    """The experiment queue: Sardana macros run one after another, crash-proof."""
    ctx.obj = QueueClient(ctx.obj, device)


@queue.command("add", context_settings={"ignore_unknown_options": True})
@click.argument("macro")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--repeat", type=click.IntRange(1, 10_000), default=1, show_default=True)
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata (repeatable).")
@position_option
@click.option(
    "--on-device-down",
    type=click.Choice(["wait", "fail"]),
    help="When a device the item needs is down: wait for it (default) or fail the item.",
)
@json_option
@click.pass_obj
def add(client: QueueClient, macro, args, repeat, meta, position, on_device_down, as_json):
    """Queue MACRO with its ARGS (checked against the MacroServer first).

    Negative numbers are arguments (ct -1 is fine); --words are options.
    """
    for arg in args:
        if arg.startswith("--") and arg[2:3].isalpha():
            import difflib

            known = [o for p in click.get_current_context().command.params for o in p.opts]
            name = arg.split("=")[0]
            raise click.NoSuchOption(name, possibilities=difflib.get_close_matches(name, known))
    spec: dict[str, Any] = {"macro": macro, "args": list(args), "repeat": repeat}
    metadata = parse_meta(meta)
    if on_device_down:
        metadata["on_device_down"] = on_device_down
    if metadata:
        spec["meta"] = metadata
    spec["position"] = parse_position(position)
    item = client.call("Add", spec)
    if as_json:
        _emit(item)
        return
    extra = f" x{item['repeat']}" if item.get("repeat", 1) != 1 else ""
    console.print(f"added {item['uid']}: {escape(_line(item))}{extra}")


@queue.command("add-batch")
@click.argument("file", metavar="FILE")
@position_option
@json_option
@click.pass_obj
def add_batch(client: QueueClient, file, position, as_json):
    """Queue every item of FILE (JSON or YAML; - for stdin), all or nothing.

    FILE holds a list; each item is an object (macro, args, repeat, meta) or a
    line like "ascan sample_x 0 1 10 0.1"; or {"items": [...], "position": P}.
    """
    items, file_position = load_batch(file)
    where = parse_position(position) if position is not None else (file_position or "back")
    # the queue stores the batch only if it can answer within our timeout
    spec = {"items": items, "position": where, "timeout": DEFAULT_TIMEOUT_MS / 1000}
    added = client.call("AddBatch", spec)
    if as_json:
        _emit(added)
        return
    console.print(f"added {len(added)} item(s)")
    for item in added[:20]:
        console.print(f"  {item['uid']}: {escape(_line(item))}")
    if len(added) > 20:
        console.print(f"  ... {len(added) - 20} more (last {added[-1]['uid']})")


@queue.command("list")
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Show the first N items (0: all; a table of 10,000 rows takes seconds, --json not).",
)
@json_option
@click.pass_obj
def list_items(client: QueueClient, limit, as_json):
    """The queue: its state, the running item, what blocks it, the items in order."""
    snap = client.call("Get")
    if as_json:
        _emit(snap)
        return
    items = snap.get("items") or []
    console.print(f"queue {_state_text(snap['state'])}: {len(items)} item(s) waiting")
    running = snap.get("running")
    if running:
        progress = f", {running['progress']:.0f} %" if running.get("progress") else ""
        since = f", for {time.time() - running['started']:.1f} s" if running.get("started") else ""
        console.print(
            f"running {running['uid']}: {escape(_line(running))} "
            f"(repetition {running.get('repetition', 1)}/{running.get('repeat', 1)}"
            f"{progress}{since})"
        )
    if snap.get("pause_deferred"):
        console.print("[yellow]pauses after the current item[/yellow]")
    if snap.get("blocked_by"):
        console.print(f"[yellow]blocked by[/yellow] {escape(snap['blocked_by'])}")
    if snap.get("last_error"):
        console.print(f"[red]last error[/red] {escape(snap['last_error'])}")
    if not items:
        return
    table = Table(show_edge=False, header_style="bold")
    for col in ("#", "uid", "macro", "repeat", "meta"):
        table.add_column(col)
    shown = items[:limit] if limit else items
    for n, item in enumerate(shown):
        table.add_row(
            str(n),
            item["uid"],
            escape(_line(item)),
            str(item.get("repeat", 1)),
            escape(_meta_text(item.get("meta"))),
        )
    console.print(table)
    if len(shown) < len(items):
        console.print(f"... {len(items) - len(shown)} more item(s) (--limit 0 shows all)")


@queue.command("remove")
@click.argument("uids", nargs=-1, required=True, metavar="UID...")
@json_option
@click.pass_obj
def remove(client: QueueClient, uids, as_json):
    """Take items off the queue (all named or none)."""
    removed = client.call("Remove", {"uids": list(uids)})
    if as_json:
        _emit(removed)
        return
    for item in removed:
        console.print(f"removed {item['uid']}: {escape(_line(item))}")


@queue.command("duplicate")
@click.argument("uid")
@position_option
@json_option
@click.pass_obj
def duplicate(client: QueueClient, uid, position, as_json):
    """Queue a copy of an item (queued, running or from the history) under a new
    uid: right after the original if it is queued, else at the back."""
    spec: dict[str, Any] = {"uid": uid}
    if position is not None:
        spec["position"] = parse_position(position)
    item = client.call("Duplicate", spec)
    if as_json:
        _emit(item)
        return
    extra = f" x{item['repeat']}" if item.get("repeat", 1) != 1 else ""
    console.print(f"added {item['uid']} (copy of {uid}): {escape(_line(item))}{extra}")


@queue.command("move")
@click.argument("uid")
@click.argument("position", metavar="POSITION")
@json_option
@click.pass_obj
def move(client: QueueClient, uid, position, as_json):
    """Move an item: POSITION is front, back, an index, before:UID or after:UID."""
    client.call("Move", {"uid": uid, "position": parse_position(position, "POSITION")})
    order = [i["uid"] for i in json.loads(client.read("Items") or "[]")]
    index = order.index(uid) if uid in order else None
    if as_json:
        _emit({"uid": uid, "index": index, "length": len(order)})
    else:
        console.print(f"moved {uid} to position {index} of {len(order)}")


@queue.command("clear")
@json_option
@click.pass_obj
def clear(client: QueueClient, as_json):
    """Remove every waiting item (the running one goes on)."""
    n = client.call("Clear")
    if as_json:
        _emit({"removed": n})
    else:
        console.print(f"cleared {n} item(s)")


def _control(name: str, command: str, doc: str):
    @json_option
    @click.pass_obj
    def control(client: QueueClient, as_json):
        client.call(command)
        _show_state(client, command, as_json)

    control.__doc__ = doc
    return queue.command(name)(control)


_control("start", "Start", "Run the queued items one after another.")
_control("stop", "Stop", "Stop after the current item (at once when nothing runs).")
_control("stop-cancel", "StopCancel", "Cancel a pending stop: the queue goes on.")
_control("resume", "Resume", "Resume a paused queue (and its paused macro).")


@queue.command("pause")
@click.option("--deferred", is_flag=True, help="Pause after the current item instead of now.")
@json_option
@click.pass_obj
def pause(client: QueueClient, deferred, as_json):
    """Pause the running macro now (or, --deferred, after the current item)."""
    client.call("Pause", {"deferred": True} if deferred else "")
    _show_state(client, "Pause", as_json)


def _macro_action(name: str, command: str, steps: int, doc: str):
    @click.option(
        "--timeout",
        type=click.FloatRange(0.1, 600),
        default=3.0,
        show_default=True,
        help="Seconds for each step before escalating.",
    )
    @json_option
    @click.pass_obj
    def action(client: QueueClient, timeout, as_json):
        step = client.call(command, {"timeout": timeout}, timeout_s=steps * timeout + 10)
        if as_json:
            _emit({"command": command, "ended_by": step})
        else:
            console.print(f"the running macro ended after {escape(str(step))}")

    action.__doc__ = doc
    return queue.command(name)(action)


_macro_action(
    "stop-macro",
    "StopMacro",
    4,
    "Stop the running macro (then abort, release, and as the last resort restart Sardana "
    "if it does not end); the queue stops too.",
)
_macro_action(
    "abort",
    "AbortMacro",
    3,
    "Abort the running macro (then release, and as the last resort restart Sardana if it "
    "does not end); the queue stops too.",
)
_macro_action(
    "halt",
    "HaltMacro",
    2,
    "Release the running macro (then restart Sardana if it does not end); the queue stops too.",
)


@queue.command("history")
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="The last N entries (0: all).",
)
@json_option
@click.pass_obj
def history(client: QueueClient, limit, as_json):
    """What ran: outcome, repetitions done, start and end, error text."""
    entries = client.call("History", {"limit": limit} if limit else "")
    if as_json:
        _emit(entries)
        return
    if not entries:
        console.print("no history")
        return
    table = Table(show_edge=False, header_style="bold")
    for col in ("id", "uid", "macro", "outcome", "done", "started", "s", "error"):
        table.add_column(col)
    for e in entries:
        style = OUTCOME_STYLE.get(e["outcome"], "white")
        took = ""
        if e.get("started") and e.get("ended"):
            took = f"{e['ended'] - e['started']:.1f}"
        table.add_row(
            str(e.get("id", "")),
            e["uid"],
            escape(_line(e)),
            f"[{style}]{escape(e['outcome'])}[/{style}]",
            f"{e.get('repetitions_done', 0)}/{e.get('repeat', 1)}",
            _when(e.get("started") or e.get("ended")),
            took,
            escape(e.get("error") or ""),
        )
    console.print(table)


@queue.command("history-clear")
@json_option
@click.pass_obj
def history_clear(client: QueueClient, as_json):
    """Forget the history."""
    n = client.call("HistoryClear")
    if as_json:
        _emit({"removed": n})
    else:
        console.print(f"cleared {n} history entr{'y' if n == 1 else 'ies'}")
