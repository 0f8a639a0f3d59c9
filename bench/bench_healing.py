"""Healing: time from a fault to the device answering, our supervisor against
the stock Starter's own auto-restart, in the same run.

- SIGKILL of a Motor server, >= 10 times each: until a *new* client's read
  answers; also until an *existing* client (a DeviceProxy that saw the
  failure) reads again, and until a plain event subscriber and a
  ResilientSubscription get events again. Target: p95 <= 1.0 s (new client).
- A hung device (TestHang: its thread blocked) until a new client answers.
  Target: HangTimeout (3 s) + 1 s.
- The stock Starter: the supervisors stopped, AutoRestartDuration = 1 and the
  Starter restarted with DEBUG=true in its environment (it then counts
  AutoRestartDuration in seconds instead of minutes), the same kills.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

from bench.common import beamline

KILLS = 10
SERVER, DEVICE = "Motor/slit_v", "bl01/mot/slit_v"


def now() -> float:
    return time.monotonic()


def answer_new(bench, deadline=30.0) -> float:
    import tango

    t0 = now()
    while now() - t0 < deadline:
        try:
            p = tango.DeviceProxy(f"tango://{bench.tango_host}/{DEVICE}")
            p.set_timeout_millis(300)
            p.state()
            return now()
        except tango.DevFailed:
            time.sleep(0.005)
    raise RuntimeError(f"{DEVICE} did not come back within {deadline} s")


def server_pid(bench) -> int:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        c = p.info["cmdline"] or []
        ours = len(c) >= 3 and c[1].endswith("/Motor") and c[2] == SERVER.split("/")[1]
        if ours and p.environ().get("BEAMLINE_RUN_DIR") == str(bench.run_dir):
            return p.pid
    raise RuntimeError(f"{SERVER} is not running")


class Watchers:
    """An existing client and two event subscribers, measuring their recovery."""

    def __init__(self, bench):
        import tango

        from tango_devices.common.events import ResilientSubscription

        self.existing = tango.DeviceProxy(f"tango://{bench.tango_host}/{DEVICE}")
        self.existing.set_timeout_millis(300)
        self.plain_events: list[float] = []
        self.resilient_events: list[float] = []
        proxy = tango.DeviceProxy(f"tango://{bench.tango_host}/{DEVICE}")
        proxy.subscribe_event(
            "State",
            tango.EventType.CHANGE_EVENT,
            lambda e: None if e.err else self.plain_events.append(now()),
        )
        self._plain_proxy = proxy
        self.resilient = ResilientSubscription(
            DEVICE,
            "State",
            lambda e: None if e.err else self.resilient_events.append(now()),
            tango_host=bench.tango_host,
        )

    def existing_back(self, deadline=30.0) -> float:
        import tango

        t0 = now()
        while now() - t0 < deadline:
            try:
                self.existing.state()
                return now()
            except tango.DevFailed:
                time.sleep(0.005)
        return float("nan")


def measure_kills(bench, n, with_watchers: bool, settle) -> dict:
    new, existing, plain, resilient = [], [], [], []
    watchers = Watchers(bench) if with_watchers else None
    for _ in range(n):
        settle()
        n_plain = len(watchers.plain_events) if watchers else 0
        n_res = len(watchers.resilient_events) if watchers else 0
        pid = server_pid(bench)
        t_kill = now()
        os.kill(pid, signal.SIGKILL)
        t_new = answer_new(bench)
        new.append(t_new - t_kill)
        if watchers:
            existing.append(watchers.existing_back() - t_kill)
            deadline = now() + 15
            while now() < deadline and (
                len(watchers.plain_events) <= n_plain or len(watchers.resilient_events) <= n_res
            ):
                time.sleep(0.01)
            plain.append(
                watchers.plain_events[n_plain] - t_kill
                if len(watchers.plain_events) > n_plain
                else float("nan")
            )
            resilient.append(
                watchers.resilient_events[n_res] - t_kill
                if len(watchers.resilient_events) > n_res
                else float("nan")
            )
    return {"new": new, "existing": existing, "plain": plain, "resilient": resilient}


def pct(values, q) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def line(label, values) -> str:
    p50, p95 = pct(values, 50), pct(values, 95)
    return f"  {label:<46} p50 {p50:6.2f} s   p95 {p95:6.2f} s   (n={len(values)})"


def wait_supervisor(bench) -> None:
    import tango

    deadline = now() + 30
    while now() < deadline:
        try:
            sup = bench.proxy("bl01/sys/supervisor")
            if sup.Servers and all(st == "RUNNING" for st in sup.ServerStates):
                return
        except (tango.DevFailed, AttributeError):  # not (yet) back
            pass
        time.sleep(0.1)
    raise RuntimeError("the supervisor did not come back")


def supervisor_rows(bench):
    sup = bench.proxy("bl01/sys/supervisor")
    return {r["server"]: r for r in json.loads(sup.Report)["servers"]}


def run() -> dict:
    import tango

    results = {}
    with beamline(BEAMLINE_TEST_HOOKS="1") as bench:
        # Kills a few seconds apart are independent faults, not a crash loop:
        # forget a failure after 1 s of good health (default 10 s).
        db = tango.Database(*bench.tango_host.split(":"))
        db.put_device_property("bl01/sys/supervisor", {"StableAfter": ["1.0"]})
        bench.proxy("bl01/sys/supervisor-standby").RestartServer("Supervisor/supervisor")
        wait_supervisor(bench)

        def supervised_settle():
            deadline = now() + 30
            while now() < deadline:
                if supervisor_rows(bench)[SERVER]["state"] == "RUNNING":
                    time.sleep(1.2)  # a benchmark, not a test: let the server be stable
                    return
                time.sleep(0.05)

        supervised_settle()
        ours = measure_kills(bench, KILLS, True, supervised_settle)
        results["supervisor"] = ours

        # a hang: the device's thread blocked
        hangs = []
        for _ in range(3):
            supervised_settle()
            proxy = bench.proxy(DEVICE)
            proxy.set_timeout_millis(200)
            t0 = now()
            with contextlib.suppress(tango.DevFailed):
                proxy.command_inout("TestHang", 120.0)
            hangs.append(answer_new_after_hang(bench, t0) - t0)
        results["hang"] = hangs

        # the stock Starter's own auto-restart
        bench.cli("stop", "Supervisor/standby")
        bench.cli("stop", "Supervisor/supervisor")
        restart_starter_with_autorestart(bench)

        def starter_settle():
            # the Starter restarts only servers that ran longer than AutoRestartDuration
            time.sleep(1.2)

        stock = measure_kills(bench, KILLS, False, starter_settle)
        results["starter"] = stock

    print(f"Healing of {SERVER} after SIGKILL ({KILLS} kills each)")
    print(line("supervisor: new client answers", ours["new"]))
    print(line("supervisor: existing DeviceProxy answers", ours["existing"]))
    print(line("supervisor: ResilientSubscription event", ours["resilient"]))
    print(line("supervisor: plain event subscriber event", ours["plain"]))
    print(line("stock Starter (AutoRestart 1 s): new client", stock["new"]))
    ratio = pct(stock["new"], 95) / pct(ours["new"], 95)
    print(f"  ratio of p95 (Starter / supervisor): {ratio:.1f}x")
    print("Hung device (TestHang) to a new client answering, HangTimeout 3 s")
    print(line("supervisor", hangs))
    return results


def answer_new_after_hang(bench, t0) -> float:
    return answer_new_from(bench, t0)


def answer_new_from(bench, t0, deadline=30.0) -> float:
    """First time after the hang's kill that a new client answers (the hung
    device itself never answers: wait for the restarted one)."""
    import tango

    old = server_pid_safe(bench)
    while now() - t0 < deadline:
        pid = server_pid_safe(bench)
        if pid is not None and pid != old:
            try:
                p = tango.DeviceProxy(f"tango://{bench.tango_host}/{DEVICE}")
                p.set_timeout_millis(300)
                p.state()
                return now()
            except tango.DevFailed:
                pass
        time.sleep(0.005)
    raise RuntimeError("the hung server was not restarted")


def server_pid_safe(bench):
    try:
        return server_pid(bench)
    except RuntimeError:
        return None


def restart_starter_with_autorestart(bench) -> None:
    import tango

    state = json.loads((bench.run_dir / "state.json").read_text())
    starter = state["starter"]
    device = starter["device"]
    db = tango.Database(*bench.tango_host.split(":"))
    db.put_device_property(device, {"AutoRestartDuration": ["1"]})
    os.kill(starter["pid"], signal.SIGKILL)
    import psutil

    env = psutil.Process(server_pid(bench)).environ()  # the servers' = the Starter's
    env["DEBUG"] = "true"  # AutoRestartDuration in seconds
    with open(bench.run_dir / "logs" / "starter-debug.log", "ab") as log:
        subprocess.Popen(
            ["/usr/lib/tango/Starter", starter["host"]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = now() + 30
    while now() < deadline:
        try:
            p = tango.DeviceProxy(f"tango://{bench.tango_host}/{device}")
            p.set_timeout_millis(500)
            lines = p.read_attribute("Servers").value or ()
            if any(ln.startswith(SERVER + "\tON") for ln in lines):
                return
        except tango.DevFailed:
            pass
        time.sleep(0.2)
    raise RuntimeError("the DEBUG Starter did not come up")


if __name__ == "__main__":
    run()
