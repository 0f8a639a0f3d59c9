"""Two hosts on one machine: each a network namespace (its own address on a
bridge, via a veth pair) with its own host name, PID namespace and /proc, one
central Tango database in between. The same db_config assigns every server to
a host; `beamline up --host` on each starts its Starter and only its servers,
and each host's supervisor heals its own servers.

A client sees every device; killing every process of host B leaves host A's
devices answering; bringing host B back restores its devices.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests import netns
from tests.helpers import PROJECT, wait_until
from tests.netns import BEAMLINE, NEEDS_NAMESPACES, Host, answering

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    NEEDS_NAMESPACES,
]

HOST_B_SERVERS = ("DataLogger/logger", "ExperimentQueue/queue", "Supervisor/hostb")
HOST_B_DEVICES = ("bl01/sys/logger", "bl01/sys/queue", "bl01/sys/supervisor-hostb")
HOST_A_DEVICES = (
    "bl01/mot/sample_x",
    "bl01/shutter/fe",
    "bl01/ct/scaler",
    "bl01/vac/gauge1",
    "bl01/sys/supervisor",
)


def two_host_config(dest: Path) -> Path:
    """db_config with hosts: B runs the logger, the queue and its own
    supervisor; A runs everything else."""
    shutil.copytree(PROJECT / "db_config", dest)
    starter = json.loads((dest / "starter.json").read_text())
    for name, info in starter["servers"].items():
        info["host"] = "hostb" if name in HOST_B_SERVERS else "hosta"
    starter["servers"]["Supervisor/hostb"] = {"host": "hostb", "level": 1, "controlled": True}
    (dest / "starter.json").write_text(json.dumps(starter, indent=2))
    system = json.loads((dest / "tango" / "system.json").read_text())
    system["servers"]["Supervisor"]["hostb"] = {
        "Supervisor": {"bl01/sys/supervisor-hostb": {"properties": {"HangTimeout": ["3.0"]}}}
    }
    (dest / "tango" / "system.json").write_text(json.dumps(system, indent=2))
    return dest


def status_check(host: Host, tango_host: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BEAMLINE, "--run-dir", str(host.run_dir), "--config-dir", str(host.config)]
        + ["status", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TANGO_HOST": tango_host},
    )


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    base = tmp_path_factory.mktemp("hosts")
    config = two_host_config(base / "db_config")
    with netns.two_hosts(base, config) as world:
        world.hosts["hosta"].start()  # writes the configuration, runs the virtual hardware
        world.hosts["hostb"].start("--no-sim", "--no-config")
        yield world.net, world.hosts, world.tango_host, base


def test_every_device_of_both_hosts_answers_a_client(two_hosts):
    _net, hosts, tango_host, base = two_hosts
    wait_until(
        lambda: all(
            not s.startswith("no answer")
            for s in answering(tango_host, HOST_A_DEVICES + HOST_B_DEVICES).values()
        ),
        60,
        "every device answering",
        on_timeout=lambda: str(answering(tango_host, HOST_A_DEVICES + HOST_B_DEVICES)),
    )
    up_b = json.loads((hosts["hostb"].run_dir / "up.json").read_text())
    assert up_b["failures"] == []
    # each host's Starter runs only its own servers
    from beamline.starter import Starter

    def running(host):
        view = Starter(tango_host, host).servers()
        return {s.name for s in view.values() if s.state == "ON"}

    wait_until(lambda: set(HOST_B_SERVERS) <= running("hostb"), 30, "host B's Starter view")
    assert "Motor/sample_x" in running("hosta")
    assert not running("hostb") & {"Motor/sample_x", "Sardana/bl01", "Supervisor/supervisor"}
    # `beamline status` from host A shows both hosts
    status = subprocess.run(
        [
            BEAMLINE,
            "--run-dir",
            str(hosts["hosta"].run_dir),
            "--config-dir",
            str(hosts["hosta"].config),
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TANGO_HOST": tango_host},
    )
    data = json.loads(status.stdout)
    assert {h["host"]: h["answers"] for h in data["hosts"]} == {"hosta": True, "hostb": True}
    assert data["supervisor"]["hosts"].keys() >= {"hosta", "hostb"}


def test_host_b_supervisor_heals_its_own_servers(two_hosts):
    _net, hosts, tango_host, _base = two_hosts
    import tango

    sup_b = tango.DeviceProxy(f"tango://{tango_host}/bl01/sys/supervisor-hostb")
    wait_until(
        lambda: "ExperimentQueue/queue" in (sup_b.read_attribute("Servers").value or ()),
        60,
        "host B's supervisor watching the queue",
    )
    report = json.loads(sup_b.Report)
    assert report["host"] == "hostb"
    assert {r["server"] for r in report["servers"]} == {
        "DataLogger/logger",
        "ExperimentQueue/queue",
    }
    sup_a = tango.DeviceProxy(f"tango://{tango_host}/bl01/sys/supervisor")
    watched_a = {r["server"] for r in json.loads(sup_a.Report)["servers"]}
    assert "ExperimentQueue/queue" not in watched_a and "Motor/sample_x" in watched_a

    # a crash on host B: host B's supervisor restarts it
    from beamline import procs

    def queue_row():
        rows = json.loads(sup_b.Report)["servers"]
        return next(r for r in rows if r["server"] == "ExperimentQueue/queue")

    wait_until(lambda: queue_row()["state"] == "RUNNING", 60, "the queue RUNNING on host B")
    before = queue_row()["restarts"]
    pids = procs.server_pids(hosts["hostb"].run_dir, ["ExperimentQueue/queue"])
    assert pids, "the queue's process on host B"
    for pid in pids["experimentqueue/queue"]:
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: queue_row()["restarts"] == before + 1 and queue_row()["state"] == "RUNNING",
        60,
        "host B's supervisor restarting the queue",
        on_timeout=lambda: str(queue_row()),
    )
    assert answering(tango_host, ["bl01/sys/queue"])["bl01/sys/queue"] == "ON"


def test_killing_host_b_leaves_host_a_answering_and_host_b_comes_back(two_hosts):
    _net, hosts, tango_host, _base = two_hosts
    wait_until(
        lambda: all(s == "ON" for s in answering(tango_host, HOST_B_DEVICES).values()),
        60,
        "host B's devices ON",
        on_timeout=lambda: str(answering(tango_host, HOST_B_DEVICES)),
    )
    hosts["hostb"].kill()
    wait_until(
        lambda: all(
            s.startswith("no answer") for s in answering(tango_host, HOST_B_DEVICES).values()
        ),
        30,
        "host B's devices gone",
    )
    a = answering(tango_host, HOST_A_DEVICES)
    assert not any(s.startswith("no answer") for s in a.values()), a
    # the health checks: host A healthy, host B not (each checks its own servers)
    assert status_check(hosts["hosta"], tango_host).returncode == 0
    down_b = status_check(hosts["hostb"], tango_host)
    assert down_b.returncode == 1
    assert "bl01/sys/queue (ExperimentQueue/queue) does not answer" in down_b.stderr

    hosts["hostb"].start("--no-sim", "--no-config")
    wait_until(
        lambda: all(s == "ON" for s in answering(tango_host, HOST_B_DEVICES).values()),
        90,
        "host B's devices back",
        on_timeout=lambda: str(answering(tango_host, HOST_B_DEVICES)),
    )
    a = answering(tango_host, HOST_A_DEVICES)
    assert not any(s.startswith("no answer") for s in a.values()), a
    assert status_check(hosts["hostb"], tango_host).returncode == 0
