"""A beamline of its own: `up` that names a failing device, `down` that leaves
nothing behind. (Not beside the module-scoped `beamline` fixture: two test
beamlines in one PID namespace would see each other's servers, which the
real Starter finds by command line.)"""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import tango

from tests.helpers import PROJECT, BeamlineRun

pytestmark = pytest.mark.system


@pytest.mark.slow
def test_down_leaves_nothing_and_up_names_a_failing_device(tmp_path):
    config_dir = tmp_path / "db_config"
    shutil.copytree(PROJECT / "db_config", config_dir)
    # A server that exits at once at start-up: `beamline-sim broken` (an
    # executable in StartDsPath that does not accept this command line).
    (config_dir / "tango/broken.json").write_text(
        json.dumps({"servers": {"beamline-sim": {"broken": {"Broken": {"bl01/test/broken": {}}}}}})
    )
    starter = json.loads((config_dir / "starter.json").read_text())
    starter["servers"]["beamline-sim/broken"] = {
        "host": "@local",
        "level": 2,
        "controlled": True,
        "external": True,  # not one of the suite's servers: its class is not checked
    }
    (config_dir / "starter.json").write_text(json.dumps(starter))
    run = BeamlineRun(tmp_path / "run", config_dir)
    try:
        proc = run.cli(
            "up",
            "--port",
            str(run.port),
            "--db-bind",
            "127.0.0.1",
            "--sim-auto-ports",
            "--timeout",
            "20",
            check=False,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert (
            "bl01/test/broken (beamline-sim/broken) does not answer: "
            "server beamline-sim/broken is not running" in proc.stdout
        )
        assert "last lines of" in proc.stdout and "beamline-sim_broken.log" in proc.stdout
        assert "error: the following arguments are required: --config" in proc.stdout
        from beamline import config as cfg

        config = cfg.load(PROJECT / "db_config")
        n = sum(len(config.devices_of(s.name)) for s in config.servers_by_level()[2])
        assert f"level 2: {n}/{n + 1} devices answering" in proc.stdout
        # the other devices are up
        p = tango.DeviceProxy(f"tango://{run.tango_host}/bl01/mot/sample_x")
        assert p.state() == tango.DevState.ON
        assert run.processes(), "up should have left processes running"
        sim_port = run.sim_state()["controllers"]["smc1"]["port"]
    finally:
        result = run.down()
    assert "database" in result["stopped"] and "Starter" in result["stopped"]
    assert result["leftovers"] == []
    assert run.processes() == []
    for port in (run.port, sim_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after down"
    # down twice is harmless
    assert run.cli("down").returncode == 0


@pytest.mark.slow
def test_existing_database_is_used_and_left_running(tmp_path):
    """--tango-host: an existing Tango database is configured and used, none is
    started, and `down` leaves that database running."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from beamline import procs, tangodb
    from tests.helpers import free_port, wait_until

    port = free_port()
    env = dict(os.environ, PYTANGO_DATABASE_NAME=str(tmp_path / "external.db"))
    env.pop("TANGO_HOST", None)
    exe = Path(sys.executable).parent / "PyDatabaseds"
    with open(tmp_path / "external-db.log", "wb") as log:
        db = subprocess.Popen(
            [str(exe), "--host", "127.0.0.1", "--port", str(port), "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    external = f"127.0.0.1:{port}"
    run = BeamlineRun(tmp_path / "run")
    try:
        wait_until(lambda: tangodb.answers(external), 20, "the external database")
        proc = run.cli("up", "--tango-host", external, "--sim-auto-ports", "--json")
        result = json.loads(proc.stdout)
        assert result["tango_host"] == external
        assert result["database"] == {"embedded": False}
        assert result["failures"] == []
        motor = tango.DeviceProxy(f"tango://{external}/bl01/mot/sample_y")
        assert motor.state() == tango.DevState.ON
        assert not (run.run_dir / "tango_database.db").exists()
        down = run.down()
        assert "database" not in down["stopped"]
        assert tangodb.answers(external), "down must not stop a database it did not start"
        assert procs.find_processes(run.run_dir) == []
    finally:
        run.cli("down", check=False)
        db.terminate()
        db.wait(10)
