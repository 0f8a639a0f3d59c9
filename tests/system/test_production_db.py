"""The production database: Tango's C++ DataBaseds on MariaDB with Tango
Access Control, made by `beamline db up`, and the demo beamline run against it
with `beamline up --tango-host`, unchanged: a motor moves, a scan runs, a
client the access rules do not name can read but not write, and everything
stops with `beamline down` and `beamline db down`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from beamline import proddb
from tango_devices.common.door import DoorClient
from tests.helpers import PROJECT, BeamlineRun, free_port, wait_until

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(proddb.missing_programs()),
        reason=f"Debian packages missing: {proddb.missing_programs()} (make install)",
    ),
]

MOTOR = "bl01/mot/sample_y"

# a client as another OS user: in a user namespace where root appears as
# "nobody" (cppTango takes the user name from getpwuid(getuid()))
AS_NOBODY = ["unshare", "--user", "--map-user=65534", "--map-group=65534"]

CLIENT = """
import json, sys, tango
out = {}
d = tango.DeviceProxy(sys.argv[1])
out["read"] = d.read_attribute("Position").value
out["access"] = str(d.get_access_control())
for what, call in (("write", lambda: d.write_attribute("Position", out["read"] + 0.1)),
                   ("command", lambda: d.command_inout("Stop"))):
    try:
        call()
        out[what] = "ok"
    except tango.DevFailed as exc:
        out[what] = exc.args[0].reason + ": " + exc.args[0].desc.strip()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """`beamline db up --access-control`, then the beamline against it."""
    base = tmp_path_factory.mktemp("production")
    run = BeamlineRun(base / "run")
    db_dir = base / "proddb"
    port = free_port()
    up = run.cli(
        "db",
        "up",
        "--db-dir",
        str(db_dir),
        "--port",
        str(port),
        "--mysql-port",
        str(free_port()),
        "--access-control",
        "--json",
    )
    state = json.loads(up.stdout)
    tango_host = state["tango_host"]
    run.tango_host = tango_host
    try:
        result = json.loads(
            run.cli("up", "--tango-host", tango_host, "--sim-auto-ports", "--json").stdout
        )
        yield run, db_dir, state, result
    finally:
        run.cli("down", check=False)
        run.cli("db", "down", "--db-dir", str(db_dir), check=False)
    assert proddb.status(db_dir)["running"] == {
        "mariadb": False,
        "databaseds": False,
        "access_control": False,
    }
    assert run.processes() == []


def test_db_up_makes_a_mariadb_backed_databaseds(production):
    run, db_dir, state, result = production
    assert state["schema_created_at"] not in ("", "before")
    assert (db_dir / "tango.cnf").stat().st_mode & 0o077 == 0  # credentials private
    assert result["database"] == {"embedded": False} and result["failures"] == []
    import tango

    db = tango.Database(*state["tango_host"].split(":"))
    assert "DataBaseds/2" in db.get_server_list("DataBaseds/*")
    assert "bl01/mot/sample_x" in db.get_device_exported("bl01/mot/*")
    # again: idempotent, the same database and schema
    again = json.loads(
        run.cli(
            "db",
            "up",
            "--db-dir",
            str(db_dir),
            "--port",
            state["tango_host"].split(":")[1],
            "--access-control",
            "--json",
        ).stdout
    )
    assert again["tango_host"] == state["tango_host"]
    assert again["databaseds"]["pid"] == state["databaseds"]["pid"]
    assert again["access_changes"] == []


def test_a_motor_moves_and_a_scan_runs(production):
    run, _db_dir, _state, _result = production
    motor = run.proxy(MOTOR)
    target = motor.Position + 0.5
    motor.Position = target
    wait_until(
        lambda: str(motor.state()) == "ON" and abs(motor.Position - target) < 1e-3,
        30,
        "the motor at its target",
    )
    door_name = f"tango://{run.tango_host}/bl01/sardana/door"
    import tango

    door = tango.DeviceProxy(door_name)
    wait_until(lambda: door.state() == tango.DevState.ON, 90, "the Door ready")
    client = DoorClient(door_name)
    try:
        scan = client.run(["ascan", "sample_x", "0", "1", "4", "0.01"], timeout=120)
        assert scan.ok, f"ascan: {scan.outcome}: {scan.error_text}"
    finally:
        client.close()
    assert (run.run_dir / "scans" / "bl01_scans.h5").stat().st_size > 0


def test_access_control_read_only_for_others(production):
    run, _db_dir, _state, _result = production
    device = f"tango://{run.tango_host}/{MOTOR}"
    me = _client(run, device, [])
    assert me["access"] == "ACCESS_WRITE"
    assert me["write"] == "ok" and me["command"] == "ok"

    other = _client(run, device, AS_NOBODY)
    assert other["access"] == "ACCESS_READ"
    assert isinstance(other["read"], float)
    assert other["write"].startswith("API_ReadOnlyMode") and "not authorized" in other["write"]
    assert other["command"].startswith("API_ReadOnlyMode") and "Stop" in other["command"]


SARDANA_CLIENT = """
import json, sys, tango
out = {}
for device, command, arg in json.loads(sys.argv[1]):
    d = tango.DeviceProxy(device)
    try:
        d.command_inout(command, arg) if arg is not None else d.command_inout(command)
        out[command] = "ok"
    except tango.DevFailed as exc:
        out[command] = exc.args[0].reason + ": " + exc.args[0].desc.strip()
print(json.dumps(out))
"""


def test_a_read_only_client_may_ask_sardana_but_not_change_its_code_or_elements(production):
    """Clients with read access only (operators on the MacroServer and the
    Pool, everyone else by default) run the commands of read_only_commands,
    and nothing else: no macro code written, no element created."""
    run, _db_dir, _state, _result = production
    ms = f"tango://{run.tango_host}/bl01/sardana/macroserver"
    pool = f"tango://{run.tango_host}/bl01/sardana/pool"
    import tango

    wait_until(lambda: tango.DeviceProxy(ms).state() == tango.DevState.ON, 90, "Sardana ready")
    calls = [
        (ms, "GetMacroInfo", ["ct"]),
        (ms, "SetMacroCode", ["zz_intruder.py", "print('hello')"]),
        (ms, "GetMacroCode", ["zz_intruder"]),
        (pool, "CreateMeasurementGroup", ["zz_garbage", "ct_time"]),
        (pool, "Stop", None),
    ]
    proc = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", SARDANA_CLIENT, json.dumps(calls)],
        capture_output=True,
        text=True,
        env=run.env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["GetMacroInfo"] == "ok" and out["Stop"] == "ok"
    for command in ("SetMacroCode", "GetMacroCode", "CreateMeasurementGroup"):
        assert out[command].startswith("API_ReadOnlyMode"), (command, out[command])
    assert not (run.run_dir / "user_macros" / "zz_intruder.py").exists()
    groups = tango.DeviceProxy(pool).MeasurementGroupList or []
    assert groups and not any("zz_garbage" in g for g in groups)


def test_access_rules_come_from_db_config_and_bad_rules_are_refused(production, tmp_path):
    run, _db_dir, _state, _result = production
    config = tmp_path / "config"
    config.mkdir()
    (config / "access.json").write_text(
        json.dumps({"default": "read", "users": {"bob": {"devices": {"bl01/mot": "write"}}}})
    )
    bad = subprocess.run(
        [*_beamline(run), "--config-dir", str(config), "db", "access"],
        capture_output=True,
        text=True,
        env={**run.env(), "TANGO_HOST": run.tango_host},
        timeout=60,
    )
    assert bad.returncode != 0
    assert "users.bob.devices.bl01/mot" in bad.stderr and "domain/family/member" in bad.stderr
    # nothing changed: the demo's rules still hold
    assert _client(run, f"tango://{run.tango_host}/{MOTOR}", AS_NOBODY)["access"] == "ACCESS_READ"
    assert _client(run, f"tango://{run.tango_host}/{MOTOR}", [])["access"] == "ACCESS_WRITE"


def test_an_allowed_user_from_an_unlisted_address_may_only_read(production, tmp_path):
    """Rules name hosts too: the same user from an address the rules do not
    list is read-only, and `beamline config apply` says so and how to fix it."""
    run, _db_dir, _state, _result = production
    config = tmp_path / "db_config"
    shutil.copytree(PROJECT / "db_config", config)
    rules = json.loads((config / "access.json").read_text())
    rules["users"]["${USER}"]["addresses"] = ["10.9.9.9"]
    (config / "access.json").write_text(json.dumps(rules))
    motors = json.loads((config / "tango" / "motors.json").read_text())
    props = motors["servers"]["Motor"]["sample_y"]["Motor"]["bl01/mot/sample_y"]["properties"]
    props["Description"] = ["changed by the access test"]  # something to write
    (config / "tango" / "motors.json").write_text(json.dumps(motors))
    env = {**run.env(), "TANGO_HOST": run.tango_host}
    device = f"tango://{run.tango_host}/{MOTOR}"

    def beamline(config_dir: Path, *args: str) -> subprocess.CompletedProcess:
        cmd = [*_beamline(run), "--config-dir", str(config_dir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    assert beamline(config, "db", "access").returncode == 0
    try:
        assert _client(run, device, [])["access"] == "ACCESS_READ"
        refused = beamline(config, "config", "apply", "--tango-host", run.tango_host)
        assert refused.returncode == 1, refused.stdout
        assert "API_ReadOnlyMode" in refused.stderr and "access.json" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        restored = beamline(PROJECT / "db_config", "db", "access")
    assert restored.returncode == 0, restored.stderr
    assert _client(run, device, [])["access"] == "ACCESS_WRITE"


def test_db_up_on_an_existing_mariadb(tmp_path):
    """`--mysql HOST:PORT`: the schema and user are made over TCP by the
    administrator named in MYSQL_ADMIN_USER/MYSQL_ADMIN_PASSWORD; a wrong
    password is refused with the fix; a strict-mode server is refused."""
    server_dir = tmp_path / "facility"
    mysql_port = free_port()
    run = BeamlineRun(tmp_path / "run")
    # "the facility's MariaDB": a private one of another database directory
    facility = run.cli(
        *("db", "up", "--db-dir", str(server_dir), "--port", str(free_port())),
        *("--mysql-port", str(mysql_port), "--json"),
    )
    sock = Path(json.loads(facility.stdout)["mariadb"]["socket"])
    try:
        proddb.Admin(sock=sock).run(
            "CREATE USER 'dba'@'127.0.0.1' IDENTIFIED BY 's3cret';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'dba'@'127.0.0.1' WITH GRANT OPTION;"
        )
        env = {**run.env(), "MYSQL_ADMIN_USER": "dba"}
        args = ["db", "up", "--db-dir", str(tmp_path / "db"), "--port", str(free_port())]
        args += ["--mysql", f"127.0.0.1:{mysql_port}", "--json"]
        wrong = run.cli(*args, check=False, env={**env, "MYSQL_ADMIN_PASSWORD": "nope"})
        assert wrong.returncode == 1
        assert "MYSQL_ADMIN_USER and MYSQL_ADMIN_PASSWORD" in wrong.stderr

        up = run.cli(*args, env={**env, "MYSQL_ADMIN_PASSWORD": "s3cret"})
        state = json.loads(up.stdout)
        assert state["mariadb"] == {"external": f"127.0.0.1:{mysql_port}"}
        import tango

        db = tango.Database(*state["tango_host"].split(":"))
        assert "DataBaseds/2" in db.get_server_list("DataBaseds/*")
        run.cli("db", "down", "--db-dir", str(tmp_path / "db"))
        assert proddb.status(tmp_path / "db")["running"]["databaseds"] is False

        proddb.Admin(sock=sock).run("SET GLOBAL sql_mode = 'STRICT_TRANS_TABLES';")
        strict = run.cli(*args, check=False, env={**env, "MYSQL_ADMIN_PASSWORD": "s3cret"})
        assert strict.returncode == 1 and "sql_mode=NO_ENGINE_SUBSTITUTION" in strict.stderr
    finally:
        run.cli("db", "down", "--db-dir", str(server_dir), check=False)
    assert proddb.status(server_dir)["running"]["mariadb"] is False


def _beamline(run: BeamlineRun) -> list[str]:
    return [str(Path(sys.executable).parent / "beamline"), "--run-dir", str(run.run_dir)]


def _client(run: BeamlineRun, device: str, prefix: list[str]) -> dict:
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", CLIENT, device],
        capture_output=True,
        text=True,
        env=run.env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
