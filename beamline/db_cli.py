"""`beamline db`: the production Tango database (C++ DataBaseds on MariaDB,
Tango Access Control) for a beamline that outgrows the embedded one.

beamline db up [--port 10000] [--mysql-port 3307 | --mysql HOST:PORT] [--access-control]
beamline db status          beamline db down          beamline db access

Then run everything else against it: ``beamline up --tango-host HOST:PORT``.
Files (MariaDB data, credentials, logs) live in ``--db-dir`` (default
RUN_DIR/proddb). Details: docs/production.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from beamline import proddb

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    sys.exit(code)


def _db_dir(ctx, db_dir: str | None) -> Path:
    return Path(db_dir).resolve() if db_dir else ctx.run_dir / "proddb"


db_dir_option = click.option(
    "--db-dir",
    type=click.Path(file_okay=False),
    help="Where the database's files live (default: RUN_DIR/proddb).",
)


@click.group()
def db() -> None:
    """The production Tango database: DataBaseds on MariaDB, access control."""


@db.command("up")
@db_dir_option
@click.option("--port", type=int, default=10000, show_default=True, help="Tango database port.")
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="Address DataBaseds listens on (0.0.0.0 for other hosts).",
)
@click.option(
    "--mysql-port",
    type=int,
    default=3307,
    show_default=True,
    help="Port of the private MariaDB (127.0.0.1 only).",
)
@click.option(
    "--mysql",
    "external",
    metavar="HOST:PORT",
    help="Use this MariaDB instead of a private one (administrator from "
    "MYSQL_ADMIN_USER / MYSQL_ADMIN_PASSWORD).",
)
@click.option(
    "--access-control",
    is_flag=True,
    help="Start TangoAccessControl and apply db_config/access.json.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def db_up(ctx, db_dir, port, bind, mysql_port, external, access_control, as_json) -> None:
    """Create the Tango schema if needed and start the database (idempotent)."""
    where = _db_dir(ctx, db_dir)
    rules = None
    try:
        if access_control:  # check the rules before starting anything
            rules = proddb.load_access(ctx.config_dir)
        state = proddb.up(
            where,
            port=port,
            mysql_port=mysql_port,
            external_mysql=external,
            access_control=access_control,
            bind=bind,
        )
        changes = (
            proddb.apply_access(
                state["tango_host"], rules, proddb.load_read_only_commands(ctx.config_dir)
            )
            if rules
            else []
        )
    except proddb.ProdDbError as exc:
        _fail(str(exc))
    except Exception as exc:  # DevFailed from the database or access control
        _fail(f"{type(exc).__name__}: {_desc(exc)}")
    if as_json:
        print(json.dumps({**state, "access_changes": changes}, indent=2))
        return
    maria = state["mariadb"]
    where_maria = maria.get("external") or f"127.0.0.1:{maria['port']} (private, {where}/mariadb)"
    out.print(
        f"[green]✓[/green] MariaDB {where_maria}; schema created {state['schema_created_at']}"
    )
    out.print(f"[green]✓[/green] DataBaseds: TANGO_HOST={state['tango_host']}")
    if access_control:
        out.print(f"[green]✓[/green] TangoAccessControl {proddb.ACCESS_DEVICE}")
        for change in changes:
            out.print(f"  {change}")
    out.print(f"next: beamline up --tango-host {state['tango_host']}")


@db.command("access")
@click.option("--tango-host", envvar="TANGO_HOST", metavar="HOST:PORT", required=True)
@click.pass_obj
def db_access(ctx, tango_host) -> None:
    """Apply db_config/access.json to the running TangoAccessControl."""
    try:
        changes = proddb.apply_access(
            tango_host,
            proddb.load_access(ctx.config_dir),
            proddb.load_read_only_commands(ctx.config_dir),
        )
    except proddb.ProdDbError as exc:
        _fail(str(exc))
    except Exception as exc:
        _fail(f"{type(exc).__name__}: {_desc(exc)}")
    for change in changes or ["access rules unchanged"]:
        out.print(change)


@db.command("status")
@db_dir_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def db_status(ctx, db_dir, as_json) -> None:
    """What runs, and whether the database answers."""
    st = proddb.status(_db_dir(ctx, db_dir))
    if as_json:
        print(json.dumps(st, indent=2))
        return
    for name, running in st["running"].items():
        out.print(f"{name}: {'running' if running else 'not running'}")
    out.print(
        f"TANGO_HOST={st['tango_host']} ({'answering' if st['answers'] else 'not answering'})"
    )
    if not st["answers"]:
        sys.exit(1)


@db.command("down")
@db_dir_option
@click.pass_obj
def db_down(ctx, db_dir) -> None:
    """Stop TangoAccessControl, DataBaseds and the private MariaDB (data stays)."""
    where = _db_dir(ctx, db_dir)
    stopped = proddb.down(where)
    for line in stopped:
        out.print(f"[green]✓[/green] stopped {line}")
    out.print(f"beamline db down: nothing left running; data stays in {where}")


def _desc(exc: Exception) -> str:
    args = getattr(exc, "args", ())
    if args and hasattr(args[0], "desc"):
        return str(args[0].desc).strip()
    return str(exc)
