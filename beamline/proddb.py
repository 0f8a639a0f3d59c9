"""The production Tango database: Tango's C++ DataBaseds (Debian ``tango-db``)
on MariaDB, and Tango Access Control (Debian ``tango-accesscontrol``).

``beamline db up`` makes a database a facility would run, non-interactively:

- a MariaDB server: a private one (its data, socket and log in
  ``DB_DIR/mariadb``, listening on 127.0.0.1 only), or an existing one given
  with ``--mysql HOST:PORT`` (its administrator from MYSQL_ADMIN_USER and
  MYSQL_ADMIN_PASSWORD);
- the ``tango`` schema loaded from Debian's own script
  (/usr/share/dbconfig-common/data/tango-db/install/mysql), once;
- a ``tango`` MariaDB user with a generated password, kept in
  ``DB_DIR/tango.cnf`` (mode 0600, MariaDB client format);
- DataBaseds (instance 2) on the Tango port, and with ``--access-control``
  TangoAccessControl (instance 1), registered as the control system's
  AccessControl service.

Then every other command takes ``--tango-host HOST:PORT`` (or TANGO_HOST),
exactly as with any facility database. The processes carry ``BEAMLINE_DB_DIR``
in their environment so ``beamline db down`` finds them whoever started them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamline import procs, tangodb

SCHEMA_SCRIPT = Path("/usr/share/dbconfig-common/data/tango-db/install/mysql")
DATABASEDS = Path("/usr/lib/tango/DataBaseds")
ACCESS_CONTROL = Path("/usr/lib/tango/TangoAccessControl")
DB_DIR_ENV = "BEAMLINE_DB_DIR"
ACCESS_DEVICE = "sys/access_control/1"
ACCESS_SERVICE = f"AccessControl/tango:{ACCESS_DEVICE}"
DEBIAN_PACKAGES = ("mariadb-server", "tango-db", "tango-accesscontrol")
SQL_MODE = "NO_ENGINE_SUBSTITUTION"


class ProdDbError(Exception):
    pass


@dataclass(frozen=True)
class MySQL:
    host: str
    port: int
    user: str
    password: str
    database: str = "tango"

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """What DataBaseds and TangoAccessControl read to reach MariaDB."""
        return {
            "MYSQL_HOST": self.host_port,
            "MYSQL_USER": self.user,
            "MYSQL_PASSWORD": self.password,
            "MYSQL_DATABASE": self.database,
        }


def missing_programs() -> list[str]:
    """The Debian packages still to install (none once `make install` ran)."""
    missing = []
    if not (shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists()):
        missing.append("mariadb-server")
    if not DATABASEDS.exists() or not SCHEMA_SCRIPT.exists():
        missing.append("tango-db")
    if not ACCESS_CONTROL.exists():
        missing.append("tango-accesscontrol")
    return missing


def require_programs() -> None:
    missing = missing_programs()
    if missing:
        raise ProdDbError(
            "missing Debian packages: "
            + " ".join(missing)
            + "; install them with `make install` (or `apt-get install dbconfig-no-thanks "
            + " ".join(missing)
            + "`)"
        )


# ------------------------------------------------------------------ state
def state_file(db_dir: Path) -> Path:
    return db_dir / "state.json"


def load_state(db_dir: Path) -> dict[str, Any]:
    try:
        return json.loads(state_file(db_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def save_state(db_dir: Path, state: dict[str, Any]) -> None:
    db_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_file(db_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, state_file(db_dir))


def _base_env() -> dict[str, str]:
    """The environment of the database's processes: not tied to a beamline's
    run directory (``beamline down`` must not stop a database it did not start)."""
    env = dict(os.environ)
    env.pop(procs.RUN_DIR_ENV, None)
    return env


# ---------------------------------------------------------------- MariaDB
def _mariadbd() -> str:
    return shutil.which("mariadbd") or "/usr/sbin/mariadbd"


def _client() -> str:
    return shutil.which("mariadb") or shutil.which("mysql") or "/usr/bin/mariadb"


def start_private_mariadb(db_dir: Path, port: int, timeout: float = 60.0) -> dict[str, Any]:
    """A MariaDB server of our own, on 127.0.0.1:port, data in db_dir/mariadb."""
    base = db_dir / "mariadb"
    data = base / "data"
    sock = base / "mysqld.sock"
    log = base / "mariadb.log"
    owner = procs.port_owner(port)
    if owner:
        raise ProdDbError(
            f"port {port} (MariaDB) is already in use by {owner}; choose another with --mysql-port"
        )
    base.mkdir(parents=True, exist_ok=True)
    if not (data / "mysql").is_dir():
        proc = subprocess.run(
            [
                shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise ProdDbError(f"mariadb-install-db failed:\n{proc.stdout}{proc.stderr}")
    cmd = [
        _mariadbd(),
        "--no-defaults",
        f"--datadir={data}",
        "--user=root",
        "--bind-address=127.0.0.1",
        f"--port={port}",
        f"--socket={sock}",
        f"--pid-file={base / 'mysqld.pid'}",
        "--skip-name-resolve",
        # Tango's DataBaseds and TangoAccessControl insert rows without every
        # column (e.g. access_address.updated): MariaDB's strict mode refuses them
        f"--sql-mode={SQL_MODE}",
        f"--log-error={log}",
    ]
    env = {**_base_env(), DB_DIR_ENV: str(db_dir)}
    pid = procs.spawn_detached(cmd, env, base / "mariadbd.out")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.exists() and _sql_socket(sock, "SELECT 1", check=False).returncode == 0:
            return {"pid": pid, "port": port, "socket": str(sock), "log": str(log)}
        if not procs.alive(pid):
            raise ProdDbError(f"MariaDB exited during start-up:\n{procs.tail(log)}")
        time.sleep(0.2)
    raise ProdDbError(f"MariaDB did not answer within {timeout:g} s:\n{procs.tail(log)}")


def _sql_socket(sock: Path, sql: str, check: bool = True, database: str = ""):
    """Run SQL as MariaDB's root through its Unix socket (no password)."""
    cmd = [_client(), "--no-defaults", f"--socket={sock}", "-u", "root", "--batch"]
    if database:
        cmd.append(database)
    proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise ProdDbError(f"MariaDB refused: {proc.stderr.strip()}")
    return proc


class Admin:
    """Runs SQL as a MariaDB administrator: root over the private server's
    socket, or MYSQL_ADMIN_USER/MYSQL_ADMIN_PASSWORD over TCP."""

    def __init__(self, sock: Path | None = None, host: str = "", port: int = 0):
        self.sock, self.host, self.port = sock, host, port

    def run(self, sql: str, database: str = "", check: bool = True) -> subprocess.CompletedProcess:
        if self.sock is not None:
            return _sql_socket(self.sock, sql, check=check, database=database)
        user = os.environ.get("MYSQL_ADMIN_USER", "root")
        cmd = [
            _client(),
            "--no-defaults",
            "-h",
            self.host,
            "-P",
            str(self.port),
            "-u",
            user,
            "--batch",
        ]
        if database:
            cmd.append(database)
        env = dict(os.environ)
        if "MYSQL_ADMIN_PASSWORD" in os.environ:
            env["MYSQL_PWD"] = os.environ["MYSQL_ADMIN_PASSWORD"]
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env, timeout=120)
        if check and proc.returncode != 0:
            raise ProdDbError(
                f"MariaDB at {self.host}:{self.port} refused {user!r}: {proc.stderr.strip()} "
                "(set MYSQL_ADMIN_USER and MYSQL_ADMIN_PASSWORD to an administrator's)"
            )
        return proc


def ensure_schema(admin: Admin, db_dir: Path, host: str, port: int) -> tuple[MySQL, bool]:
    """The tango database, its schema and its user; returns the user's
    credentials and whether the schema was created now."""
    creds = db_dir / "tango.cnf"
    password = _read_password(creds) or secrets.token_urlsafe(18)
    mode = admin.run("SELECT @@GLOBAL.sql_mode;").stdout
    if "STRICT" in mode:
        raise ProdDbError(
            f"MariaDB at {host}:{port} runs in strict mode ({mode.split()[-1]}), which Tango's "
            f"DataBaseds and TangoAccessControl do not support: set sql_mode={SQL_MODE} "
            "in its configuration ([mysqld] section) and restart it"
        )
    admin.run("CREATE DATABASE IF NOT EXISTS tango;")
    tables = admin.run("SHOW TABLES LIKE 'device';", database="tango").stdout
    created = "device" not in tables
    if created:
        # Debian's script uses `source` of absolute paths: run it with the client
        admin.run(SCHEMA_SCRIPT.read_text(), database="tango")
    quoted = password.replace("'", "''")
    for client_host in ("127.0.0.1", "localhost", "%"):
        admin.run(
            f"CREATE USER IF NOT EXISTS 'tango'@'{client_host}' IDENTIFIED BY '{quoted}';\n"
            f"ALTER USER 'tango'@'{client_host}' IDENTIFIED BY '{quoted}';\n"
            f"GRANT ALL PRIVILEGES ON tango.* TO 'tango'@'{client_host}';"
        )
    db_dir.mkdir(parents=True, exist_ok=True)
    creds.write_text(
        f"[client]\nhost={host}\nport={port}\nuser=tango\npassword={password}\ndatabase=tango\n"
    )
    creds.chmod(0o600)
    return MySQL(host, port, "tango", password), created


def _read_password(creds: Path) -> str:
    try:
        for line in creds.read_text().splitlines():
            if line.startswith("password="):
                return line.split("=", 1)[1]
    except OSError:
        pass
    return ""


# ------------------------------------------------------------- DataBaseds
def start_databaseds(
    db_dir: Path, mysql: MySQL, port: int, bind: str = "127.0.0.1", timeout: float = 30.0
) -> dict[str, Any]:
    owner = procs.port_owner(port)
    if owner:
        raise ProdDbError(
            f"port {port} (Tango database) is already in use by {owner}; choose another with --port"
        )
    env = {**_base_env(), **mysql.env(), DB_DIR_ENV: str(db_dir)}
    env.pop("TANGO_HOST", None)
    log = db_dir / "databaseds.log"
    cmd = [str(DATABASEDS), "2", "-ORBendPoint", f"giop:tcp:{bind}:{port}"]
    pid = procs.spawn_detached(cmd, env, log, cwd=db_dir)
    tango_host = f"{'127.0.0.1' if bind in ('0.0.0.0', '') else bind}:{port}"
    try:
        tangodb.wait_for(tango_host, timeout, pid=pid, log=log)
    except tangodb.DatabaseError as exc:
        raise ProdDbError(str(exc)) from exc
    return {"pid": pid, "port": port, "bind": bind, "log": str(log), "tango_host": tango_host}


def start_access_control(
    db_dir: Path, mysql: MySQL, tango_host: str, timeout: float = 30.0
) -> dict[str, Any]:
    """TangoAccessControl 1, and the control system told to use it."""
    env = {**_base_env(), **mysql.env(), DB_DIR_ENV: str(db_dir)}
    env["TANGO_HOST"] = tango_host
    env["SUPER_TANGO"] = "true"  # the access control server is not subject to itself
    log = db_dir / "accesscontrol.log"
    pid = procs.spawn_detached([str(ACCESS_CONTROL), "1"], env, log, cwd=db_dir)
    deadline = time.monotonic() + timeout
    import tango

    proxy = None
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            raise ProdDbError(f"TangoAccessControl exited during start-up:\n{procs.tail(log)}")
        try:
            proxy = tango.DeviceProxy(f"tango://{tango_host}/{ACCESS_DEVICE}")
            proxy.ping()
            break
        except tango.DevFailed:
            time.sleep(0.2)
    else:
        raise ProdDbError(f"TangoAccessControl did not answer within {timeout:g} s")
    db = tangodb.database(tango_host)
    services = list(db.get_property("CtrlSystem", ["Services"])["Services"])
    if ACCESS_SERVICE not in services:
        db.put_property("CtrlSystem", {"Services": [*services, ACCESS_SERVICE]})
    return {"pid": pid, "log": str(log)}


def disable_access_control(tango_host: str) -> None:
    db = tangodb.database(tango_host)
    services = [
        s
        for s in db.get_property("CtrlSystem", ["Services"])["Services"]
        if not s.startswith("AccessControl/")
    ]
    if services:
        db.put_property("CtrlSystem", {"Services": services})
    else:
        db.delete_property("CtrlSystem", ["Services"])


# -------------------------------------------------------------- up / down
def up(
    db_dir: Path,
    port: int,
    mysql_port: int,
    external_mysql: str | None = None,
    access_control: bool = False,
    bind: str = "127.0.0.1",
) -> dict[str, Any]:
    """Start (or find running) MariaDB, the schema, DataBaseds and, if asked,
    TangoAccessControl; returns the state (also saved in db_dir)."""
    require_programs()
    # the administrator's tool is not subject to access control: while the
    # database restarts, before TangoAccessControl is back, a client that is
    # would be refused everything ("error talking to the Controlled Access
    # Service"); Tango's own TangoAccessControl runs the same way
    os.environ["SUPER_TANGO"] = "true"
    db_dir = db_dir.resolve()
    state = load_state(db_dir)
    if external_mysql:
        host, mport = tangodb.parse_tango_host(external_mysql)
        admin = Admin(host=host, port=mport)
        maria = {"external": f"{host}:{mport}"}
    else:
        maria = state.get("mariadb") or {}
        if not _running(db_dir, "mariadbd", maria.get("pid")):
            maria = start_private_mariadb(db_dir, mysql_port)
        host, mport = "127.0.0.1", int(maria["port"])
        admin = Admin(sock=Path(maria["socket"]))
    state["mariadb"] = maria
    save_state(db_dir, state)
    mysql, created = ensure_schema(admin, db_dir, host, mport)
    state["schema_created_at"] = state.get("schema_created_at") or (
        time.strftime("%Y-%m-%d %H:%M:%S") if created else "before"
    )
    dbds = state.get("databaseds") or {}
    if not _running(db_dir, "DataBaseds", dbds.get("pid")):
        dbds = start_databaseds(db_dir, mysql, port, bind=bind)
    state["databaseds"] = dbds
    save_state(db_dir, state)
    tango_host = dbds["tango_host"]
    state["tango_host"] = tango_host
    if access_control:
        ac = state.get("access_control") or {}
        if not _running(db_dir, "TangoAccessControl", ac.get("pid")):
            ac = start_access_control(db_dir, mysql, tango_host)
        state["access_control"] = ac
    else:
        ac = state.pop("access_control", None)
        if ac and _running(db_dir, "TangoAccessControl", ac.get("pid")):
            procs.stop([ac["pid"]])
        disable_access_control(tango_host)
    save_state(db_dir, state)
    return state


def _running(db_dir: Path, program: str, pid: int | None) -> bool:
    """``pid`` is that program of this database directory (a pid in a state
    file may have been reused after a reboot or a container restart)."""
    return any(p == pid and program in cmd for p, cmd in _processes_of(db_dir))


def _processes_of(db_dir: Path) -> list[tuple[int, str]]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or not proc.info["cmdline"]:
            continue
        try:
            if proc.environ().get(DB_DIR_ENV) == str(db_dir):
                found.append((proc.info["pid"], " ".join(proc.info["cmdline"])))
        except (psutil.Error, OSError):
            continue
    return found


def status(db_dir: Path) -> dict[str, Any]:
    """What runs, from the processes themselves (not only the state file)."""
    db_dir = db_dir.resolve()
    state = load_state(db_dir)
    running = {"mariadb": False, "databaseds": False, "access_control": False}
    for _pid, cmdline in _processes_of(db_dir):
        if "TangoAccessControl" in cmdline:
            running["access_control"] = True
        elif "DataBaseds" in cmdline:
            running["databaseds"] = True
        elif "mariadbd" in cmdline:
            running["mariadb"] = True
    th = state.get("tango_host")
    return {
        "db_dir": str(db_dir),
        "tango_host": th,
        "answers": bool(th) and tangodb.answers(th),
        "running": running,
        "mariadb": state.get("mariadb"),
    }


def down(db_dir: Path) -> list[str]:
    """Stop what ``up`` started (TangoAccessControl, DataBaseds, private
    MariaDB), whoever started it; the data stays."""
    db_dir = db_dir.resolve()
    state = load_state(db_dir)
    stopped = []
    by_name: dict[str, list[int]] = {"access control": [], "DataBaseds": [], "MariaDB": []}
    for pid, cmdline in _processes_of(db_dir):
        if "TangoAccessControl" in cmdline:
            by_name["access control"].append(pid)
        elif "DataBaseds" in cmdline:
            by_name["DataBaseds"].append(pid)
        elif "mariadbd" in cmdline:
            by_name["MariaDB"].append(pid)
    for name, pids in by_name.items():
        if pids:
            killed = procs.stop(pids, timeout=30.0 if name == "MariaDB" else 5.0)
            note = " (killed: it did not stop in time)" if killed else ""
            stopped.append(f"{name} (pid {', '.join(map(str, pids))}){note}")
    for key in ("access_control", "databaseds"):
        state.pop(key, None)
    if "pid" in (state.get("mariadb") or {}):
        state.pop("mariadb", None)
    if state or db_dir.exists():
        save_state(db_dir, state)
    return stopped


# ---------------------------------------------------------- access control
ACCESS_FILE = "access.json"
RIGHTS = ("read", "write")


@dataclass(frozen=True)
class UserRule:
    user: str
    addresses: tuple[str, ...]
    devices: tuple[tuple[str, str], ...]  # (device pattern, right)


def load_access(config_dir: Path, user: str | None = None) -> list[UserRule]:
    """``db_config/access.json``: who may write what, from where.

    ``{"default": "read", "users": {"NAME": {"addresses": [...], "devices":
    {"PATTERN": "write"|"read"}}}}``; ``${USER}`` in a user name is the user
    running ``beamline`` (the account the beamline's processes run as);
    ``@local`` in the addresses stands for this host's addresses.
    Errors name the file, the entry and the fix."""
    import getpass

    from beamline.config import read_json

    path = config_dir / ACCESS_FILE
    where = str(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ProdDbError(f"{where}: no access rules; create it (see docs/production.md)") from exc
    except json.JSONDecodeError as exc:
        raise ProdDbError(f"{where}: not valid JSON: {exc}") from exc
    problems: list = []
    read_json(path, problems, where)  # a key twice in one object: refused, not the last taken
    if problems:
        raise ProdDbError("\n".join(str(p) for p in problems))
    if not isinstance(doc, dict):
        raise ProdDbError(f"{where}: must be a JSON object with 'default' and 'users'")
    default = doc.get("default", "read")
    if default not in RIGHTS:
        raise ProdDbError(f"{where}: 'default' must be one of {RIGHTS}, not {default!r}")
    rules = [UserRule("*", ("*.*.*.*",), (("*/*/*", default),))]
    me = user or getpass.getuser()
    users = doc.get("users", {})
    if not isinstance(users, dict):
        raise ProdDbError(f"{where}: 'users' must map a user name to its rule")
    for raw_name, rule in users.items():
        name = raw_name.replace("${USER}", me)
        if name == "*":
            raise ProdDbError(f"{where}: users.'*': use 'default' for everyone else")
        if not isinstance(rule, dict):
            raise ProdDbError(f"{where}: users.{raw_name}: must be an object")
        addresses = rule.get("addresses", ["*.*.*.*"])
        if isinstance(addresses, list) and "@local" in addresses:
            addresses = [a for a in addresses if a != "@local"] + [
                a for a in local_addresses() if a not in addresses
            ]
        if not isinstance(addresses, list) or not all(_is_address(a) for a in addresses):
            raise ProdDbError(
                f"{where}: users.{raw_name}.addresses: a list of IPv4 addresses, "
                f"'*' allowed per part (e.g. 127.0.0.1, 10.0.*.*), or \"@local\" for "
                f"this host's, not {addresses!r}"
            )
        devices = rule.get("devices", {})
        if not isinstance(devices, dict) or not devices:
            raise ProdDbError(
                f"{where}: users.{raw_name}.devices: map device patterns to 'read' or "
                '\'write\', e.g. {"bl01/*/*": "write"}'
            )
        pairs = []
        for pattern, right in devices.items():
            if right not in RIGHTS or pattern.count("/") != 2:
                raise ProdDbError(
                    f"{where}: users.{raw_name}.devices.{pattern}: needs a domain/family/member "
                    f"pattern and 'read' or 'write', not {right!r}"
                )
            pairs.append((pattern, right))
        rules.append(UserRule(name, tuple(addresses), tuple(pairs)))
    return rules


def load_read_only_commands(config_dir: Path) -> dict[str, tuple[str, ...]]:
    """``read_only_commands`` of ``db_config/access.json``: per Tango class,
    the commands a client with only read access may still run (Tango's
    ``AllowedAccessCmd`` class property; every other command is refused to
    it, and so is every attribute write)."""
    path = config_dir / ACCESS_FILE
    where = str(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProdDbError(f"{where}: {exc}") from exc
    table = doc.get("read_only_commands", {})
    if not isinstance(table, dict):
        raise ProdDbError(f"{where}: read_only_commands: map a class to a list of commands")
    out = {}
    for cls, commands in table.items():
        if not isinstance(commands, list) or not all(
            isinstance(c, str) and c.isidentifier() for c in commands
        ):
            raise ProdDbError(
                f"{where}: read_only_commands.{cls}: a list of command names, e.g. "
                f'["GetMacroInfo"], not {commands!r}'
            )
        out[cls] = tuple(commands)
    return out


def local_addresses() -> list[str]:
    """This host's IPv4 addresses: a Tango client identifies itself to access
    control by its interfaces' addresses, not by 127.0.0.1."""
    import socket

    import psutil

    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and a.address not in found:
                found.append(a.address)
    return found


def _is_address(text: object) -> bool:
    if not isinstance(text, str):
        return False
    parts = text.split(".")
    return len(parts) == 4 and all(p == "*" or (p.isdigit() and int(p) < 256) for p in parts)


def apply_access(
    tango_host: str,
    rules: list[UserRule],
    read_only_commands: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """Make TangoAccessControl hold exactly these rules (users it knows that
    the rules do not name are removed), and each class's commands for clients
    with read access only (its ``AllowedAccessCmd``). Returns what changed."""
    import tango

    os.environ["SUPER_TANGO"] = "true"
    changes = []
    db = tango.Database(*tango_host.split(":"))
    for cls, commands in (read_only_commands or {}).items():
        current = tuple(db.get_class_property(cls, ["AllowedAccessCmd"])["AllowedAccessCmd"])
        if current != commands:
            db.put_class_property(cls, {"AllowedAccessCmd": list(commands)})
            changes.append(f"class {cls}: with read access only: {', '.join(commands) or 'none'}")
    ac = tango.DeviceProxy(f"tango://{tango_host}/{ACCESS_DEVICE}")
    current = {}
    for user in ac.GetUsers():
        devices = list(ac.GetDeviceByUser(user))
        current[user] = (
            tuple(ac.GetAddressByUser(user)),
            tuple(zip(devices[0::2], devices[1::2], strict=False)),
        )
    wanted = {r.user: (r.addresses, r.devices) for r in rules}
    for user in sorted(set(current) - set(wanted)):
        ac.RemoveUser(user)
        changes.append(f"removed user {user}")
    for user, (addresses, devices) in wanted.items():
        if current.get(user) == (addresses, devices):
            continue
        if user in current:
            ac.RemoveUser(user)
        for address in addresses:
            ac.AddAddressForUser([user, address])
        for pattern, right in devices:
            ac.AddDeviceForUser([user, pattern, right])
        changes.append(
            f"user {user}: from {', '.join(addresses)}: "
            + ", ".join(f"{p} {r}" for p, r in devices)
        )
    return changes
