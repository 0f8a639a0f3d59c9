"""`beamline config generate`: a beamline of any size from the demo's blocks."""

from __future__ import annotations

import json
import subprocess

import pytest

from beamline import config as cfg
from beamline import generate
from tests.helpers import BEAMLINE, PROJECT

DEMO = PROJECT / "db_config"


@pytest.mark.parametrize("servers", [25, 50, 100, 200])
def test_a_beamline_of_n_servers_loads_with_every_object_a_server(tmp_path, servers):
    spec = generate.Spec.for_servers(servers)
    assert spec.servers() == servers
    generate.write(spec, DEMO, tmp_path / "bl")
    c = cfg.load(tmp_path / "bl", tmp_path / "run")
    assert len(c.servers) == servers
    assert all(s.level == 2 for n, s in c.servers.items() if n.startswith("motor/m"))


def test_motors_go_on_controllers_of_eight_axes_and_become_sardana_elements(tmp_path):
    spec = generate.Spec(motors=5 + 20, cameras=2, scalers=2, valves=3, motor_records=2)
    generate.write(spec, DEMO, tmp_path / "bl")
    sim = json.loads((tmp_path / "bl" / "simulation.json").read_text())
    smcs = {n: c for n, c in sim["controllers"].items() if c["kind"] == "smc" and n != "smc1"}
    assert sorted(len(c["axes"]) for c in smcs.values()) == [4, 8, 8]
    labels = [a["label"] for c in smcs.values() for a in c["axes"].values()]
    assert labels == [f"m{n:03d}" for n in range(1, 21)]
    assert len(set(c["port"] for c in sim["controllers"].values())) == len(sim["controllers"])
    yaml = (tmp_path / "bl" / "sardana" / "bl01.yaml").read_text()
    for name in [*labels, "r001", "scaler2_i0", "cam2_image", "cam2_roi_sum", "valve3"]:
        assert f"          {name}: {{axis:" in yaml, name
    motors = json.loads((tmp_path / "bl" / "tango" / "motors.json").read_text())
    m009 = motors["servers"]["Motor"]["m009"]["Motor"]["bl01/mot/m009"]["properties"]
    assert m009["Axis"] == ["1"] and "smc3" in m009["Port"][0]  # the 9th: controller 2, axis 1
    assert sim["overrides"]["bl01/mot/m009"] == {"Port": "socket://{listen}:{smc3.port}"}


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"motors": 0}, ["--motors 0", "demo's 5", "5 or more"]),
        ({"cameras": 0}, ["--cameras 0"]),
        ({"valves": -3}, ["--valves -3"]),
        ({"axes_per_controller": 9}, ["--axes-per-controller 9", "1 to 8 axes"]),
        ({"axes_per_controller": 0}, ["--axes-per-controller 0"]),
        ({"motors": 5000}, ["at most 2000"]),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_written(tmp_path, kwargs, words):
    with pytest.raises(generate.GenerateError) as refused:
        generate.write(generate.Spec(**kwargs), DEMO, tmp_path / "bl")
    for word in words:
        assert word in str(refused.value)
    assert not (tmp_path / "bl").exists() and list(tmp_path.iterdir()) == []


def test_the_cli_writes_a_beamline_and_refuses_bad_input_clearly(tmp_path):
    def run(*args):
        return subprocess.run(
            [BEAMLINE, "--config-dir", str(DEMO), "config", "generate", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run("--out", str(tmp_path / "bl"), "--motors", "13", "--gauges", "2")
    assert ok.returncode == 0, ok.stderr
    assert "27 servers" in ok.stdout  # the demo's 18, 8 motors and a gauge more
    assert f"--config-dir {tmp_path / 'bl'} up" in ok.stdout
    again = run("--out", str(tmp_path / "bl"))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    for args, words in (
        (["--motors", "0"], ["--motors 0"]),
        (["--lasers", "3"], ["No such option", "--lasers"]),
        (["--axes-per-controller", "12"], ["1 to 8 axes"]),
        (["--servers", "3"], ["the demo alone has 18"]),
        (["--hosts", "a,a"], ["names a more than once"]),
    ):
        bad = run("--out", str(tmp_path / "other"), *args)
        assert bad.returncode == 2, (args, bad.stdout)
        assert all(w in bad.stderr for w in words), bad.stderr
        assert "Traceback" not in bad.stderr
        assert not (tmp_path / "other").exists()
    check = subprocess.run(
        [BEAMLINE, "--config-dir", str(tmp_path / "bl"), "config", "check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    two = run("--out", str(tmp_path / "two"), "--servers", "30", "--hosts", "hosta,hostb")
    assert two.returncode == 0, two.stderr
    assert "31 servers" not in two.stdout and "30 servers" in two.stdout
    assert "--host NAME" in two.stdout and "hosta first" in two.stdout


def test_hosts_spread_the_servers_and_each_further_host_gets_a_supervisor(tmp_path):
    spec = generate.Spec.for_servers(60, hosts=("hosta", "hostb"))
    assert spec.servers() == 60
    generate.write(spec, DEMO, tmp_path / "bl")
    c = cfg.load(tmp_path / "bl", tmp_path / "run")
    assert len(c.servers) == 60
    hosts = {n: s.host for n, s in c.servers.items()}
    assert set(hosts.values()) == {"hosta", "hostb"}
    for name in ("supervisor/supervisor", "supervisor/standby", "sardana/bl01"):
        assert hosts[name] == "hosta", name
    for name in (
        "datalogger/logger",
        "eventrelay/relay",
        "experimentqueue/queue",
        "supervisor/hostb",
    ):
        assert hosts[name] == "hostb", name
    motors = [h for n, h in hosts.items() if n.startswith("motor/")]
    assert abs(motors.count("hosta") - motors.count("hostb")) <= 1
    system = json.loads((tmp_path / "bl" / "tango" / "system.json").read_text())
    hostb = system["servers"]["Supervisor"]["hostb"]["Supervisor"]["bl01/sys/supervisor-hostb"]
    assert hostb["properties"]["HangTimeout"] == ["3.0"]


@pytest.mark.parametrize(
    "hosts,words",
    [
        (("hosta", "host.b"), ["--hosts host.b", "short host names"]),
        (("hosta", "HostA"), ["names hosta more than once"]),
        (("hosta", "standby"), ["--hosts standby", "Supervisor/standby"]),
        (("",), ["short host names"]),
    ],
)
def test_bad_hosts_are_refused_and_nothing_is_written(tmp_path, hosts, words):
    with pytest.raises(generate.GenerateError) as refused:
        generate.write(generate.Spec(hosts=hosts), DEMO, tmp_path / "bl")
    for word in words:
        assert word in str(refused.value)
    assert list(tmp_path.iterdir()) == []
