"""A generated beamline of 50 servers on a deliberately loaded machine (two
busy loops per core beside it): one `beamline up` brings every device up, no
server slow from the load is killed as hung (neither by the supervisor nor the
supervisor by its standby), a killed server is healed, and `down` leaves
nothing. The figures at 25-200 servers are `bench scale`'s (docs/benchmarks.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import PROJECT, BeamlineRun, wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]

SERVERS = 50
KILLED = "Motor/m001"
KILLED_DEVICE = "bl01/mot/m001"


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes that each keep a core busy, at the beamline's own
    priority, for the block."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)


def killed_as_hung(report: list[dict]) -> list[str]:
    """Servers whose last failure was a hang (a kill by the supervisor)."""
    return [
        f"{r['server']}: {r['last_cause']}"
        for r in report
        if (r.get("last_cause") or "").startswith(("hang", "did not answer"))
    ]


def test_fifty_servers_come_up_whole_and_heal_under_load(tmp_path):
    from beamline import generate

    config_dir = tmp_path / "config"
    spec = generate.Spec.for_servers(SERVERS)
    generate.write(spec, PROJECT / "db_config", config_dir)
    run = BeamlineRun(tmp_path / "run", config_dir)
    with cpu_hogs(2 * (os.cpu_count() or 2)) as hogs:
        try:
            up = run.up()
            assert all(h.poll() is None for h in hogs), "a CPU hog ended before up did"
            # one `up`, every device answering (up exits 1 naming each one that does not)
            assert up.get("failures", []) == [], up
            supervisors = {
                s: run.proxy(f"bl01/sys/{s}", 10000) for s in ("supervisor", "supervisor-standby")
            }
            for name, sup in supervisors.items():
                report = sup_report(sup)
                assert killed_as_hung(report) == [], f"{name} killed slow servers: {report}"
            supervised = {r["server"] for r in sup_report(supervisors["supervisor"])}
            assert KILLED in supervised and len(supervised) >= spec.servers() - 2, supervised
            wait_until(
                lambda: all(r["state"] == "RUNNING" for r in sup_report(supervisors["supervisor"])),
                30,
                "the supervisor to see every server running",
            )
            # a crash under load is healed
            (pid,) = run.server_pids(KILLED)
            os.kill(pid, signal.SIGKILL)
            wait_until(
                lambda: run.server_pids(KILLED) not in ([], [pid]),
                30,
                f"{KILLED} to be started again",
            )
            wait_until(lambda: answers(run, KILLED_DEVICE), 30, f"{KILLED_DEVICE} to answer again")
            record = {r["server"]: r for r in sup_report(supervisors["supervisor"])}[KILLED]
            assert record["restarts"] == 1 and "SIGKILL" in record["last_cause"], record
            assert killed_as_hung(sup_report(supervisors["supervisor-standby"])) == []
        finally:
            result = run.down()
    assert result["leftovers"] == []
    assert run.processes() == []


def sup_report(proxy) -> list[dict]:
    import json

    return json.loads(proxy.read_attribute("Report").value)["servers"]


def answers(run: BeamlineRun, device: str) -> bool:
    try:
        run.proxy(device).state()
    except Exception:  # noqa: BLE001 - not answering yet
        return False
    return True
