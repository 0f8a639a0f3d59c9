"""`beamline up` with devices that do not answer: the stacks of our servers
whose process runs are asked for (SIGUSR1, faulthandler), never Sardana's."""

import signal
from types import SimpleNamespace

from beamline import orchestrator


def test_stacks_are_asked_of_our_running_servers_only(monkeypatch, tmp_path):
    ctx = SimpleNamespace(run_dir=tmp_path)
    running = {"datalogger/logger": [101], "sardana/bl01": [102]}
    monkeypatch.setattr(
        orchestrator.procs,
        "server_pids",
        lambda run_dir, servers: {
            k: v for k, v in running.items() if k in {s.lower() for s in servers}
        },
    )
    sent = []
    monkeypatch.setattr(orchestrator.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(orchestrator.time, "sleep", lambda s: None)
    asked = orchestrator._dump_stacks(ctx, ["DataLogger/logger", "Sardana/bl01", "Motor/gone"])
    assert asked == {"DataLogger/logger"}
    assert sent == [(101, signal.SIGUSR1)]  # Sardana would die of SIGUSR1; Motor/gone has no pid
