"""Servers forked from the fork server, under the real Starter: the Starter
sees, lists, stops, kills and starts them as it did the processes it
executed; the supervisor heals them; without the fork server servers start
on their own, and `up` brings it back."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
import tango

from beamline import procs
from tango_devices.registry import SERVERS
from tango_devices.relay import ports as event_ports
from tests.helpers import running_beamline, wait_until

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with running_beamline(tmp_path_factory.mktemp("forked")) as r:
        yield r


SERVERS_OF_THE_DEMO = [
    "Sardana/bl01",
    "ExperimentQueue/queue",
    "Motor/sample_x",
    "Supervisor/supervisor",
    "DataLogger/logger",
]


def fork_server_pid(run) -> int:
    pid = run.state().get("forkserver", {}).get("pid")
    assert pid and psutil.pid_exists(pid), f"no fork server in {run.state()}"
    return pid


def pid_of(run, server: str) -> int | None:
    pids = run.server_pids(server)
    return pids[0] if len(pids) == 1 else None


def answers(run, device: str) -> bool:
    try:
        run.proxy(device, timeout_ms=500).state()
        return True
    except tango.DevFailed:
        return False


def start(starter, server: str) -> bool:
    try:
        starter.DevStart(server)
        return True
    except tango.DevFailed as exc:
        if exc.args[0].reason != "ALREADY_RUNNING":
            raise
        return False


def restarted(run, server: str, device: str, old: int | None) -> int:
    """Wait until ``server`` runs in a process other than ``old`` and ``device`` answers."""
    wait_until(
        lambda: pid_of(run, server) not in (None, old) and answers(run, device),
        20,
        f"{server} running again in a new process",
    )
    return pid_of(run, server)


def test_every_suite_server_is_forked_and_looks_executed(run):
    fork = fork_server_pid(run)
    starter = run.proxy(f"tango/admin/{run.state()['starter']['host']}")
    expected = {s.lower() for s in procs.server_pids(run.run_dir, SERVERS_OF_THE_DEMO)}
    wait_until(
        lambda: expected <= {s.lower() for s in starter.DevGetRunningServers(True)},
        15,
        "the Starter to list every server as running",
    )
    listed = set(starter.DevGetRunningServers(True))
    ours = [s for s in listed if s.split("/")[0] in SERVERS]
    assert len(ours) >= 10, listed
    for server in ours:
        pid = pid_of(run, server)
        assert pid is not None, f"{server}: one process expected"
        proc = psutil.Process(pid)
        assert proc.ppid() == fork, f"{server} (pid {pid}) is not a child of the fork server"
        exe, instance = server.split("/")
        args = [a for a in proc.cmdline() if a]
        assert [os.path.basename(a) for a in args[1:]] == [exe, instance], args
        assert proc.name() == exe[:15]
        assert proc.environ().get("BEAMLINE_RUN_DIR") == str(run.run_dir)
        if event_ports.relayed(server):
            relayed_as_planned(run, server, pid)
    assert "Sardana/bl01" in listed  # not one of ours: executed as before
    assert psutil.Process(pid_of(run, "Sardana/bl01")).ppid() != fork


def test_the_starter_kills_stops_and_starts_forked_servers(run):
    fork = fork_server_pid(run)
    starter = run.proxy(f"tango/admin/{run.state()['starter']['host']}", timeout_ms=10000)
    old = pid_of(run, "Motor/slit_v")
    starter.HardKillServer("Motor/slit_v")
    new = restarted(run, "Motor/slit_v", "bl01/mot/slit_v", old)  # by the supervisor
    assert psutil.Process(new).ppid() == fork

    supervisor = run.proxy("bl01/sys/supervisor")
    supervisor.StopServer("Motor/slit_h")  # on purpose: not restarted
    wait_until(lambda: pid_of(run, "Motor/slit_h") is None, 15, "slit_h stopped")
    wait_until(
        lambda: "Motor/slit_h" in starter.DevGetStopServers(True),
        15,
        "the Starter to list slit_h as stopped",
    )
    # the Starter executes the stub itself (it answers "already running" for
    # a moment after it has listed a server as stopped, forked or not)
    wait_until(lambda: start(starter, "Motor/slit_h"), 15, "the Starter to start slit_h")
    new = restarted(run, "Motor/slit_h", "bl01/mot/slit_h", None)
    assert psutil.Process(new).ppid() == fork
    wait_until(
        lambda: "Motor/slit_h" in starter.DevGetRunningServers(True),
        15,
        "the Starter to list slit_h as running",
    )


def listening(pid: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def relayed_as_planned(run, server: str, pid: int) -> None:
    """``pid`` has the event relay's shim and binds its heartbeat on the
    planned port, not the advertised one (which the relay holds)."""
    route = event_ports.load(run.run_dir)[server.lower()]
    assert any("_portmap" in m.path for m in psutil.Process(pid).memory_maps()), server
    wait_until(
        lambda: route.heartbeat_bound in listening(pid),
        10,
        f"{server} listening on its heartbeat port {route.heartbeat_bound}",
    )
    assert route.heartbeat not in listening(pid)


def test_without_the_fork_server_servers_start_on_their_own_until_up_again(run):
    fork = fork_server_pid(run)
    os.kill(fork, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(fork), 10, "the fork server gone")
    assert answers(run, "bl01/mot/sample_x"), "its children live on"

    old = pid_of(run, "Motor/sample_y")
    os.kill(old, signal.SIGKILL)
    new = restarted(run, "Motor/sample_y", "bl01/mot/sample_y", old)
    assert psutil.Process(new).ppid() != fork
    # started on its own, it executed itself once more with the relay's shim
    relayed_as_planned(run, "Motor/sample_y", new)

    run.up()
    fork = fork_server_pid(run)
    old = pid_of(run, "Motor/det_z")
    os.kill(old, signal.SIGKILL)
    new = restarted(run, "Motor/det_z", "bl01/mot/det_z", old)
    assert psutil.Process(new).ppid() == fork
    relayed_as_planned(run, "Motor/det_z", new)
