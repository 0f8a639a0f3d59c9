"""The Tango database: the embedded PyDatabaseds, and writing db_config to any
database (embedded or a real TANGO_HOST) with dsconfig.

Applying computes the database calls first (dsconfig), so ``diff`` shows
exactly what ``apply`` would write, and applying twice writes nothing.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beamline import procs, sardana_yaml
from beamline.config import BeamlineConfig, short_hostname
from beamline.runtime import RunContext, venv_bin

DB_SERVER_INSTANCE = "2"


class DatabaseError(Exception):
    pass


def parse_tango_host(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DatabaseError(f"TANGO_HOST must look like HOST:PORT, not {text!r}")
    return host, int(port)


def database(tango_host: str):
    import tango

    host, port = parse_tango_host(tango_host)
    return tango.Database(host, port)


def answers(tango_host: str, timeout: float = 1.0) -> bool:
    """True if a Tango database answers at ``tango_host``."""
    host, port = parse_tango_host(tango_host)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return False
    try:
        import tango

        proxy = tango.DeviceProxy(f"tango://{host}:{port}/sys/database/2#dbase=no")
        proxy.set_timeout_millis(int(timeout * 1000))
        proxy.ping()
        return True
    except Exception:
        try:
            database(tango_host).get_info()
            return True
        except Exception:
            return False


def wait_for(
    tango_host: str, timeout: float, pid: int | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(tango_host):
            return
        if pid is not None and not procs.alive(pid):
            detail = f"\n{procs.tail(log)}" if log else ""
            raise DatabaseError(f"the database process (pid {pid}) exited during start-up{detail}")
        time.sleep(0.1)
    raise DatabaseError(f"no Tango database answered at {tango_host} within {timeout:g} s")


def start_embedded(ctx: RunContext, port: int, bind: str, timeout: float = 30.0) -> dict[str, Any]:
    """Start PyDatabaseds on an SQLite file in the run directory."""
    owner = procs.port_owner(port)
    if owner:
        raise DatabaseError(
            f"port {port} is already in use by {owner}; stop it, or choose another port "
            "with --port (and TANGO_HOST=<host>:<port> for clients)"
        )
    env = dict(os.environ)
    env.pop("ORBendPoint", None)
    env["PYTANGO_DATABASE_NAME"] = str(ctx.db_file)
    env[procs.RUN_DIR_ENV] = str(ctx.run_dir)
    env["TANGO_HOST"] = f"{'127.0.0.1' if bind in ('0.0.0.0', '') else bind}:{port}"
    exe = venv_bin() / "PyDatabaseds"
    # options before the instance name: everything after it is passed to Tango
    cmd = [
        str(exe) if exe.exists() else "PyDatabaseds",
        "--host",
        bind,
        "--port",
        str(port),
        DB_SERVER_INSTANCE,
    ]
    log = ctx.log_dir / "database.log"
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    pid = procs.spawn_detached(cmd, env, log, cwd=ctx.run_dir)
    tango_host = env["TANGO_HOST"]
    wait_for(tango_host, timeout, pid=pid, log=log)
    return {"pid": pid, "port": port, "bind": bind, "file": str(ctx.db_file), "log": str(log)}


# ------------------------------------------------------------------ config
@dataclass
class Change:
    action: str  # "add", "update", "delete"
    target: str  # "bl01/mot/slit_h", "server Motor/slit_h", "class Motor"
    item: str  # "property Port", "attribute Position.unit", "device", "starter host"
    old: Any = None
    new: Any = None

    def __str__(self) -> str:
        sign = {"add": "+", "delete": "-", "update": "~"}[self.action]
        if self.action == "update":
            return f"{sign} {self.target}: {self.item}: {_fmt(self.old)} -> {_fmt(self.new)}"
        if self.action == "add":
            value = "" if self.new is None else f" = {_fmt(self.new)}"
            return f"{sign} {self.target}: {self.item}{value}"
        value = "" if self.old is None else f" (was {_fmt(self.old)})"
        return f"{sign} {self.target}: {self.item}{value}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "item": self.item,
            "old": self.old,
            "new": self.new,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        return repr(value[0])
    return repr(value)


@dataclass
class Plan:
    """What applying the configuration would change in the database."""

    changes: list[Change] = field(default_factory=list)
    dsconfig_calls: list = field(default_factory=list)
    server_info: list = field(default_factory=list)  # tango.DbServerInfo to put
    # MacroServer environments: (SardanaEnv, updates, live) with live=True
    # when the MacroServer answers (written through it, else into its file)
    environments: list = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes


def plan(config: BeamlineConfig, tango_host: str, sim_state: dict | None = None) -> Plan:
    """Compare the configuration with the live database (reads only)."""
    import tango
    from dsconfig.dump import get_db_data
    from dsconfig.json2tango import apply_config, prepare_config
    from dsconfig.output import get_changes

    db = database(tango_host)
    rendered = prepare_config(config.render(sim_state))
    original = get_db_data(db, dservers=True, class_properties=True)
    _, original, calls, _, _, _ = apply_config(rendered, db, write=False, original=original)
    result = Plan(dsconfig_calls=calls)
    changes = get_changes(original, calls)
    for device, info in sorted(changes["devices"].items()):
        kind = info.get("change_type")
        if kind in ("add", "move"):
            where = info.get("server")
            old = f" (moved from {info['old_server']})" if kind == "move" else ""
            result.changes.append(
                Change("add", device, f"device in {where}, class {info.get('device_class')}{old}")
            )
        elif kind == "delete":
            result.changes.append(Change("delete", device, f"device from {info.get('server')}"))
        for prop, pc in sorted(info.get("properties", {}).items()):
            result.changes.append(_prop_change(device, f"property {prop}", pc))
        for attr, props in sorted(info.get("attribute_properties", {}).items()):
            for prop, pc in sorted(props.items()):
                result.changes.append(_prop_change(device, f"attribute {attr}.{prop}", pc))
        if "alias" in info:
            a = info["alias"]
            result.changes.append(
                Change("update", device, "alias", a.get("old_value"), a.get("value"))
            )
    for cls, info in sorted(changes["classes"].items()):
        for prop, pc in sorted(info.get("properties", {}).items()):
            result.changes.append(_prop_change(f"class {cls}", f"property {prop}", pc))
        for attr, props in sorted(info.get("attribute_properties", {}).items()):
            for prop, pc in sorted(props.items()):
                result.changes.append(_prop_change(f"class {cls}", f"attribute {attr}.{prop}", pc))
    for method, args, _ in calls:
        if method == "delete_server":
            result.changes.append(Change("delete", f"server {args[0]}", "server (no devices left)"))

    # Starter settings per server (host, level, controlled)
    local = short_hostname()
    for info in sorted(config.servers.values(), key=lambda s: s.name):
        want_host = info.resolved_host(local)
        want = (want_host, 1 if info.controlled else 0, info.level)
        try:
            current = db.get_server_info(info.name)
            have = (current.host, int(current.mode), int(current.level))
            have_any = bool(current.host)
        except tango.DevFailed:
            have, have_any = ("", 0, 0), False
        if have == want:
            continue
        si = tango.DbServerInfo()
        si.name, si.host, si.mode, si.level = info.name, want_host, want[1], want[2]
        result.server_info.append(si)
        labels = ("starter host", "controlled", "startup level")
        if not have_any:
            result.changes.append(
                Change(
                    "add",
                    f"server {info.name}",
                    "starter settings",
                    None,
                    f"host={want_host} level={info.level} controlled={info.controlled}",
                )
            )
            continue
        for label, old, new in zip(labels, have, want, strict=True):
            if old != new:
                if label == "controlled":
                    old, new = bool(old), bool(new)
                result.changes.append(Change("update", f"server {info.name}", label, old, new))

    # Sardana: the MacroServer environment (ScanDir, ScanFile, ActiveMntGrp, ...)
    for env in config.sardana_env:
        current = sardana_yaml.read_live_environment(env.macro_server)
        live = current is not None
        if current is None:
            current = sardana_yaml.read_file_environment(env)
        updates = sardana_yaml.environment_updates(env, current)
        if not updates:
            continue
        result.environments.append((env, {k: new for k, (_, new) in updates.items()}, live))
        for name, (old, new) in sorted(updates.items()):
            action = "add" if name not in current else "update"
            result.changes.append(
                Change(action, f"environment of {env.macro_server}", name, old, new)
            )
    return result


def _prop_change(target: str, item: str, pc: dict) -> Change:
    kind = pc.get("change_type", "update")
    return Change(kind, target, item, pc.get("old_value"), pc.get("value"))


def apply(config: BeamlineConfig, tango_host: str, sim_state: dict | None = None) -> Plan:
    """Write the configuration; returns what was changed (empty when up to date)."""
    result = plan(config, tango_host, sim_state)
    db = database(tango_host)
    for method, args, kwargs in result.dsconfig_calls:
        getattr(db, method)(*args, **kwargs)
    for si in result.server_info:
        db.put_server_info(si)
    for env in config.sardana_env:
        sardana_yaml.ensure_directories(env)
    for env, updates, live in result.environments:
        if live:
            sardana_yaml.write_live_environment(env.macro_server, updates)
        else:
            sardana_yaml.write_file_environment(env, updates)
    announce_hosts(config, tango_host)
    return result


def announce_hosts(config: BeamlineConfig, tango_host: str) -> list[str]:
    """Give never-run servers a host on their admin device.

    The Starter lists the servers of its host from the database. Tango's C++
    DataBaseds takes the host from the server table (set by apply); the
    embedded PyDatabaseds takes it from the admin device's last export, so a
    server that never ran would be invisible to the Starter (and to Astor)
    until its first start. Exporting and at once un-exporting the admin device
    with the configured host records it, like a first run would.
    """
    import tango

    db = database(tango_host)
    local = short_hostname()
    announced = []
    for info in config.servers.values():
        admin = f"dserver/{info.name}"
        try:
            current = db.get_device_info(admin)
        except tango.DevFailed:
            continue
        if current.host and current.host.strip() not in ("", "nada"):
            continue
        export = tango.DbDevExportInfo()
        export.name, export.ior, export.host = admin, "", info.resolved_host(local)
        export.pid, export.version = 0, "0"
        db.export_device(export)
        # (unexport_server: PyDatabaseds' unexport_device matches names case-sensitively)
        db.unexport_server(info.name)
        announced.append(info.name)
    return announced
