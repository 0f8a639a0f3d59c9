"""Start-up time of the servers: `beamline up` (every server of a level at
once, a DevStart each) against the Starter's own DevStartAll(level) (one
server after another), on the same servers, database and Starter, alternating.
Also the time of a cold `beamline up` (database, virtual hardware, Starter and
servers), for information: the real Starter alone needs ~5 s before it answers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Bench, free_port

ROUNDS = 3


def devices_answer(bench, devices) -> bool:
    import tango

    for d in devices:
        try:
            p = tango.DeviceProxy(f"tango://{bench.tango_host}/{d}")
            p.set_timeout_millis(1000)
            p.state()
        except tango.DevFailed:
            return False
    return True


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def starter_states(starter) -> dict[str, str]:
    lines = starter.read_attribute("Servers").value or ()
    return {ln.split("\t")[0]: ln.split("\t")[1] for ln in lines}


def stop_all(bench, starter, servers):
    # The Starter stops only what its ping (every 2 s) has seen running.
    wait(
        lambda: all(starter_states(starter).get(s) == "ON" for s in servers),
        60,
        "the Starter to see every server running",
    )
    starter.command_inout("DevStopAll", 2)
    wait(
        lambda: all(starter_states(starter).get(s) == "FAULT" for s in servers),
        60,
        "the Starter to see every server stopped",
    )


def run() -> dict:
    from beamline import config as cfg

    config = cfg.load()
    level2 = config.servers_by_level()[2]
    servers = [s.name for s in level2]
    devices = [d for s in servers for d in config.devices_of(s)]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bench = Bench(Path(tmp), free_port())
        try:
            t0 = time.perf_counter()
            bench.up()
            cold = time.perf_counter() - t0
            import tango

            starter = tango.DeviceProxy(
                f"tango://{bench.tango_host}/tango/admin/{cfg.short_hostname()}"
            )
            starter.set_timeout_millis(120000)
            ours, theirs = [], []
            for _ in range(ROUNDS):
                stop_all(bench, starter, servers)
                t0 = time.perf_counter()
                bench.up()
                ours.append(time.perf_counter() - t0)
                stop_all(bench, starter, servers)
                t0 = time.perf_counter()
                starter.command_inout("DevStartAll", 2)
                wait(lambda: devices_answer(bench, devices), 300, "DevStartAll's servers")
                theirs.append(time.perf_counter() - t0)
        finally:
            bench.cli("down", check=False)
    ratio = statistics.median(theirs) / statistics.median(ours)
    print(f"Start-up of {len(servers)} servers (level 2) until every device answers")

    def runs(xs):
        return ", ".join(f"{x:.2f}" for x in xs)

    print(
        "  beamline up (all at once, incl. CLI start): "
        f"median {statistics.median(ours):.2f} s  [{runs(ours)}]"
    )
    print(
        "  Starter DevStartAll(2) (one by one):        "
        f"median {statistics.median(theirs):.2f} s  [{runs(theirs)}]"
    )
    print(f"  speed-up: {ratio:.1f}x")
    print(f"  cold beamline up (database, simulator, Starter, servers): {cold:.2f} s")
    return {"up_s": ours, "devstartall_s": theirs, "speedup": ratio, "cold_up_s": cold}


if __name__ == "__main__":
    run()
