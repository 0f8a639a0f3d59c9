"""`beamline up / status / down / config` as a user runs them: real processes."""

from __future__ import annotations

import json

import pytest
import tango

from beamline import config as cfg
from tests.helpers import wait_until

pytestmark = pytest.mark.system

CONFIG = cfg.load()
SARDANA_CORE = ("Pool", "MacroServer", "Door")
SERVERS = sorted(s.name for s in CONFIG.servers.values())


def test_status_shows_every_server_with_pid_and_starter_state(beamline):
    def all_on():
        data = beamline.status()
        return data if all(s["starter_state"] == "ON" for s in data["servers"]) else None

    # the Starter pings each server every 2 s: wait for its view to settle
    data = wait_until(all_on, 15, "the Starter to report every server ON")
    assert data["tango_host"] == beamline.tango_host
    assert data["database"] == {
        "embedded": True,
        "pid": beamline.state()["database"]["pid"],
        "answers": True,
    }
    servers = {s["server"]: s for s in data["servers"]}
    assert sorted(servers) == SERVERS
    for name, s in servers.items():
        assert len(s["pids"]) == 1, f"{name} should run exactly once: {s['pids']}"
        assert s["level"] == CONFIG.servers[name.lower()].level and s["controlled"] is True
        assert [d["state"] for d in s["devices"]] != [None], f"{name} does not answer"
    # the pids are those of real processes running the server's command line
    from beamline import procs

    found = {p.server: p.pid for p in procs.find_processes(beamline.run_dir, SERVERS)}
    assert found == {n: servers[n]["pids"][0] for n in SERVERS}


def test_status_counts_sardana_elements_and_asks_them_on_request(beamline):
    """Sardana's elements answer State through the hardware devices, which
    `status` asks itself: counted, not asked, unless --elements."""

    def sardana(*args):
        data = json.loads(beamline.cli("status", "--json", *args).stdout)
        return next(s for s in data["servers"] if s["server"] == "Sardana/bl01")

    every = CONFIG.devices_of("Sardana/bl01")
    core = {d for d in every if CONFIG.devices[d.lower()].device_class in SARDANA_CORE}

    def answering():
        s = sardana()
        return s if all(d["state"] for d in s["devices"]) else None

    short = wait_until(answering, 15, "Sardana's core devices to answer")
    assert {d["device"] for d in short["devices"]} == core
    assert sorted(short["elements"]) == sorted(set(every) - core) and short["elements"]
    full = sardana("--elements")
    assert sorted(d["device"] for d in full["devices"]) == sorted(every)
    assert full["elements"] == []
    assert all(d["state"] for d in full["devices"]), [d for d in full["devices"] if not d["state"]]
    assert f"+ {len(short['elements'])} Sardana elements" in beamline.cli("status").stdout


def test_human_status_and_config_check(beamline):
    out = beamline.cli("status").stdout
    assert "Motor/sample_x" in out and "bl01/mot/sample_x" in out
    assert f"TANGO_HOST={beamline.tango_host}" in out
    check = beamline.cli("config", "check").stdout
    assert f"ok: {len(CONFIG.servers)} servers, {len(CONFIG.devices)} devices" in check


def test_config_is_applied_and_applying_again_changes_nothing(beamline):
    diff = beamline.cli("config", "diff", "--json", check=False)
    assert diff.returncode == 0, diff.stdout
    assert json.loads(diff.stdout) == []
    apply = beamline.cli("config", "apply").stdout
    assert "database already up to date" in apply
    db = tango.Database(*beamline.tango_host.split(":"))
    props = db.get_device_property("bl01/mot/sample_x", ["Port", "Axis", "polled_attr"])
    sim = beamline.sim_state()
    assert list(props["Port"]) == [f"socket://127.0.0.1:{sim['controllers']['smc1']['port']}"]
    assert list(props["Axis"]) == ["3"]
    assert list(props["polled_attr"]) == ["position", "0"]
    info = db.get_server_info("Motor/sample_x")
    assert (info.level, info.mode) == (2, 1)


def test_config_diff_shows_a_change_made_behind_its_back(beamline):
    db = tango.Database(*beamline.tango_host.split(":"))
    db.put_device_attribute_property("bl01/mot/det_z", {"Position": {"max_value": ["990"]}})
    try:
        diff = beamline.cli("config", "diff", check=False)
        assert diff.returncode == 1
        assert "~ bl01/mot/det_z: attribute Position.max_value: '990' -> '1000.0'" in diff.stdout
    finally:
        beamline.cli("config", "apply")
    assert beamline.cli("config", "diff", check=False).returncode == 0


def test_up_again_starts_nothing_new(beamline):
    before = {p.pid for p in beamline.processes()}
    result = beamline.up()
    assert result["failures"] == []
    after = {p.pid for p in beamline.processes()}
    assert after == before


def test_sim_cli_injects_and_clears_faults_and_rejects_bad_input(beamline):
    motor = beamline.proxy("bl01/mot/slit_v")
    out = beamline.cli("sim", "fault", "smc1", "interlock", "--axis", "2").stdout
    assert out.startswith("smc1: ") and "(axis 2)" in out
    wait_until(lambda: motor.state() == tango.DevState.DISABLE, 10, "DISABLE")
    beamline.cli("sim", "clear", "smc1")
    wait_until(lambda: motor.state() == tango.DevState.ON, 10, "ON")
    status = json.loads(beamline.cli("sim", "status", "--json").stdout)
    assert status["ok"] is True and "smc1" in json.dumps(status)

    bad = beamline.cli("sim", "fault", "nope", "drop", check=False)
    assert bad.returncode == 2
    assert "nope" in bad.stderr and "smc1" in bad.stderr  # names the problem and the choices
    missing_axis = beamline.cli("sim", "fault", "smc1", "axis_fault", check=False)
    assert missing_axis.returncode == 2 and "axis_fault needs --axis N" in missing_axis.stderr
    bad_kind = beamline.cli("sim", "fault", "smc1", "melt", check=False)
    assert bad_kind.returncode == 2
    assert "unknown fault kind 'melt'" in bad_kind.stderr and "drop" in bad_kind.stderr


def test_logs_and_unknown_server_names(beamline):
    out = beamline.cli("logs", "bl01/mot/sample_x", "-n", "50").stdout
    assert "connected to socket://127.0.0.1:" in out
    bad = beamline.cli("stop", "Motor/nope", check=False)
    assert bad.returncode == 2
    assert "no server or device named 'Motor/nope'" in bad.stderr
    assert "Motor/sample_x" in bad.stderr  # lists the valid names
