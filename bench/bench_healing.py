"""Healing: time from a fault to the device answering, our supervisor against
the stock Starter's own auto-restart, in the same run.

- SIGKILL of a Motor server, >= 10 times each: until a *new* client's read
  answers; also until an *existing* client reads again: one that made no
  call while the server was down, and one reading every 10 ms through the
  outage (a GUI's poll: cppTango lets a proxy that failed reconnect once a
  second), and until every kind of event subscriber gets a good
  event again (issue 16): a plain PyTango subscriber, a C++ one (built against
  the installed cppTango when g++ and its headers are there), a Taurus
  attribute listener, the Sardana Pool's motor element of the same axis, and
  ResilientSubscription; and whether each saw error events (API_EventTimeout).
  Then the same subscribers on a beamline without the event relay, for
  comparison. Targets: p95 <= 1.0 s (new client; every subscriber).
- A hung device (TestHang: its thread blocked) until a new client answers.
  Target: HangTimeout (3 s) + 1 s.
- The stock Starter: the supervisors stopped, AutoRestartDuration = 1 and the
  Starter restarted with DEBUG=true in its environment (it then counts
  AutoRestartDuration in seconds instead of minutes), the same kills.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import beamline

KILLS = 10
KILLS_WITHOUT_RELAY = 5
SERVER, DEVICE = "Motor/slit_v", "bl01/mot/slit_v"
POOL_ELEMENT = "slit_v"  # the Pool's motor element of the same axis (an alias)


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


CLIENTS = Path(__file__).resolve().parent / "clients"
EVENT_DEADLINE = 15.0  # s after a kill to wait for each subscriber's first good event
#: the subscribers, in the order of the report
SUBSCRIBERS = {
    "plain": "plain PyTango subscriber (State)",
    "cpp": "C++ subscriber, cppTango (State)",
    "taurus": "Taurus attribute listener (State)",
    "pool": "Sardana Pool's motor element (Position read)",
    "resilient": "ResilientSubscription (State)",
}


def cpp_subscriber() -> Path | None:
    """The C++ subscriber, built once (None without g++ or cppTango's headers)."""
    exe = Path(tempfile.gettempdir()) / "beamline-bench-cpp-subscriber"
    source = CLIENTS / "cpp_subscriber.cpp"
    if exe.exists() and exe.stat().st_mtime >= source.stat().st_mtime:
        return exe
    try:
        flags = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "tango"], capture_output=True, text=True
        )
        if flags.returncode != 0:
            return None
        built = subprocess.run(
            ["g++", "-O1", "-o", str(exe), str(source), *flags.stdout.split()],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        return None
    return exe if built.returncode == 0 else None


class Watchers:
    """An existing client and every kind of event subscriber, each recording
    (wall time, good?) of its events: in this process (PyTango, the Pool's
    element, ResilientSubscription) or as a process of its own (C++, Taurus)."""

    def __init__(self, bench):
        import tango

        from tango_devices.common.events import ResilientSubscription

        kinds = [*SUBSCRIBERS, "polling"]
        self.events: dict[str, list[tuple[float, bool]]] = {k: [] for k in kinds}
        self.missing: dict[str, str] = {}
        self._procs: list[subprocess.Popen] = []
        url = f"tango://{bench.tango_host}/{DEVICE}"
        self.existing = tango.DeviceProxy(url)
        self.existing.set_timeout_millis(300)

        def record(name):
            return lambda e: self.events[name].append((time.time(), not e.err))

        self._plain = tango.DeviceProxy(url)
        self._plain.subscribe_event("State", tango.EventType.CHANGE_EVENT, record("plain"))
        self.resilient = ResilientSubscription(
            DEVICE, "State", record("resilient"), tango_host=bench.tango_host
        )
        # the Pool reads our motor through its controller (no subscription):
        # its view is back when a read of its element's Position answers
        self._pool = tango.DeviceProxy(f"tango://{bench.tango_host}/{POOL_ELEMENT}")
        self._pool.set_timeout_millis(1000)
        self._pool_stop = threading.Event()
        self._pool_thread = threading.Thread(target=self._read_pool, daemon=True)
        self._pool_thread.start()
        # a client reading State every 10 ms, through the outage (a GUI's poll)
        self._polling = tango.DeviceProxy(url)
        self._polling.set_timeout_millis(300)
        self._polling_thread = threading.Thread(target=self._poll, daemon=True)
        self._polling_thread.start()
        env = {**os.environ, "TANGO_HOST": bench.tango_host}
        cpp = cpp_subscriber()
        if cpp is None:
            self.missing["cpp"] = "not built: no g++ or no cppTango headers (libtango-dev)"
        else:
            self._spawn("cpp", [str(cpp), DEVICE, "State"], env)
        self._spawn(
            "taurus",
            [sys.executable, "-m", "bench.clients.taurus_listener", f"{url}/State"],
            {**env, "QT_QPA_PLATFORM": "offscreen"},
        )
        deadline = time.time() + 30
        while time.time() < deadline and not all(
            self.events[k] for k in SUBSCRIBERS if k not in self.missing
        ):
            time.sleep(0.05)

    def _read_pool(self) -> None:
        import tango

        with tango.EnsureOmniThread():
            while not self._pool_stop.is_set():
                try:
                    value = self._pool.read_attribute("Position")
                    ok = value.quality == tango.AttrQuality.ATTR_VALID
                except tango.DevFailed:
                    ok = False
                self.events["pool"].append((time.time(), ok))
                self._pool_stop.wait(0.02)

    def _poll(self) -> None:
        import tango

        with tango.EnsureOmniThread():
            while not self._pool_stop.is_set():
                try:
                    self._polling.state()
                    ok = True
                except tango.DevFailed:
                    ok = False
                self.events["polling"].append((time.time(), ok))
                self._pool_stop.wait(0.01)

    def _spawn(self, name, cmd, env) -> None:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=str(CLIENTS.parent.parent),
        )
        self._procs.append(proc)

        def read():
            for line in proc.stdout:
                parts = line.split()
                if len(parts) >= 2 and parts[1] in ("ok", "err"):
                    self.events[name].append((float(parts[0]), parts[1] == "ok"))

        threading.Thread(target=read, daemon=True).start()

    def _after(self, name: str, t: float) -> list[tuple[float, bool]]:
        """The events of ``name`` after ``t``, oldest first (read from the end:
        the Pool's reader adds 50 a second)."""
        events = self.events[name]
        out = []
        for i in range(len(events) - 1, -1, -1):
            if events[i][0] <= t:
                break
            out.append(events[i])
        return out[::-1]

    def first_good_after(self, name: str, t: float) -> float:
        return next((w for w, ok in self._after(name, t) if ok), float("nan"))

    def errors_between(self, name: str, t0: float, t1: float) -> int:
        return sum(1 for w, ok in self._after(name, t0) if not ok and w <= t1)

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

    def close(self) -> None:
        self._pool_stop.set()
        self._pool_thread.join(5)
        self._polling_thread.join(5)
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self.resilient.close()


def measure_kills(bench, n, with_watchers: bool, settle) -> dict:
    out: dict[str, list[float]] = {"new": [], "existing": [], "polling": []}
    out.update({k: [] for k in SUBSCRIBERS})
    errors = dict.fromkeys(SUBSCRIBERS, 0)
    watchers = Watchers(bench) if with_watchers else None
    try:
        for _ in range(n):
            settle()
            pid = server_pid(bench)
            t_kill, wall_kill = now(), time.time()
            os.kill(pid, signal.SIGKILL)
            t_new = answer_new(bench)
            out["new"].append(t_new - t_kill)
            if watchers is None:
                continue
            out["existing"].append(watchers.existing_back() - t_kill)
            deadline = time.time() + EVENT_DEADLINE
            active = [k for k in [*SUBSCRIBERS, "polling"] if k not in watchers.missing]
            while time.time() < deadline and any(
                math.isnan(watchers.first_good_after(k, wall_kill)) for k in active
            ):
                time.sleep(0.01)
            for k in active:
                out[k].append(watchers.first_good_after(k, wall_kill) - wall_kill)
                if k in errors:
                    errors[k] += watchers.errors_between(k, wall_kill, time.time()) > 0
    finally:
        if watchers is not None:
            watchers.close()
    out["kills_with_error_events"] = errors
    out["missing"] = watchers.missing if watchers else {}
    return out


def pct(values, q) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def line(label, values) -> str:
    p50, p95 = pct(values, 50), pct(values, 95)
    worst = max((v for v in values if v == v), default=float("nan"))
    return (
        f"  {label:<46} p50 {p50:6.2f} s   p95 {p95:6.2f} s   max {worst:6.2f} s"
        f"   (n={len(values)})"
    )


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


def stable_kills(bench) -> None:
    """Kills a few seconds apart are independent faults, not a crash loop:
    the supervisor forgets a failure after 1 s of good health (default 10 s)."""
    import tango

    db = tango.Database(*bench.tango_host.split(":"))
    db.put_device_property("bl01/sys/supervisor", {"StableAfter": ["1.0"]})
    bench.proxy("bl01/sys/supervisor-standby").RestartServer("Supervisor/supervisor")
    wait_supervisor(bench)


def supervised_settle_for(bench):
    def settle():
        deadline = now() + 30
        while now() < deadline:
            if supervisor_rows(bench)[SERVER]["state"] == "RUNNING":
                time.sleep(1.2)  # a benchmark, not a test: let the server be stable
                return
            time.sleep(0.05)

    return settle


def run() -> dict:
    import tango

    results = {}
    with beamline(BEAMLINE_TEST_HOOKS="1") as bench:
        relay = bench.proxy("bl01/sys/eventrelay")
        if relay.state() != tango.DevState.ON:
            raise RuntimeError(f"the event relay is not relaying: {relay.status()}")
        stable_kills(bench)
        supervised_settle = supervised_settle_for(bench)
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

    # the same subscribers without the event relay, for comparison
    with beamline(BEAMLINE_TEST_HOOKS="1", BEAMLINE_NO_EVENT_RELAY="1") as bench:
        stable_kills(bench)
        settle = supervised_settle_for(bench)
        settle()
        bare = measure_kills(bench, KILLS_WITHOUT_RELAY, True, settle)
        results["without_relay"] = bare

    print(f"Healing of {SERVER} after SIGKILL ({KILLS} kills each)")
    print(line("supervisor: new client answers", ours["new"]))
    print(line("supervisor: existing DeviceProxy, idle while down", ours["existing"]))
    print(line("supervisor: existing DeviceProxy, polling 10 ms", ours["polling"]))
    print(f"First good event after the kill, with the event relay ({KILLS} kills):")
    report_events(ours)
    print(f"... and without it ({KILLS_WITHOUT_RELAY} kills, BEAMLINE_NO_EVENT_RELAY=1):")
    report_events(bare)
    print(line("stock Starter (AutoRestart 1 s): new client", stock["new"]))
    ratio = pct(stock["new"], 95) / pct(ours["new"], 95)
    print(f"  ratio of p95 (Starter / supervisor): {ratio:.1f}x")
    print("Hung device (TestHang) to a new client answering, HangTimeout 3 s")
    print(line("supervisor", hangs))
    return results


def report_events(result: dict) -> None:
    for key, label in SUBSCRIBERS.items():
        if key in result["missing"]:
            print(f"  {label:<46} skipped: {result['missing'][key]}")
            continue
        values = result[key]
        lost = sum(1 for v in values if v != v)
        errors = result["kills_with_error_events"][key]
        what = "failed reads" if key == "pool" else "error events"
        print(
            line(label, values)
            + f"   {what} after {errors}/{len(values)} kills"
            + (f", no event within {EVENT_DEADLINE:g} s after {lost}" if lost else "")
        )


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
