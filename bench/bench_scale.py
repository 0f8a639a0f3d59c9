"""A whole beamline on one host, at N = 25, 50, 100 and 200 servers
(`beamline config generate --servers N`), each run from cold:

- cold start: `beamline up` until every device answers (and how many did not);
- idle CPU over IDLE seconds, per process kind and in total (from /proc), and
  the supervisors' share;
- memory: PSS per process kind, in total, and per device server on average;
- `beamline status` time;
- crash: SIGKILL of KILLS random motor servers, each until a new client
  answers (p50, p95);
- hang: SIGSTOP of one motor server until a new process answers;
- the logger: events archived per second while idle, its backlog;
- `beamline down` time.

Environment: BENCH_SCALE_N (default "25,50,100,200"), BENCH_SCALE_IDLE
(default 30 s), BENCH_SCALE_KILLS (default 10), BENCH_SCALE_FORK ("1": servers
forked from the fork server, the default of `up`; "0": `--no-fork-server`;
"both": each size both ways, the reference in the same run), BENCH_SCALE_DB
("embedded": the embedded PyDatabaseds, the default of `up`; "production":
Tango's C++ DataBaseds on a private MariaDB made by `beamline db up`; "both"),
BENCH_SCALE_HOSTS ("2": each size also split over two hosts, network
namespaces on this machine with one central database: cold start, idle, PSS
and `status`; needs root, ip and unshare).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.common import PROJECT, Bench, free_port

SIZES = [int(n) for n in os.environ.get("BENCH_SCALE_N", "25,50,100,200").split(",")]
IDLE = float(os.environ.get("BENCH_SCALE_IDLE", "30"))
KILLS = int(os.environ.get("BENCH_SCALE_KILLS", "10"))
FORK = {"1": [True], "0": [False], "both": [True, False]}[os.environ.get("BENCH_SCALE_FORK", "1")]
#: "2": each size also on two hosts (network namespaces, one central database)
HOSTS = os.environ.get("BENCH_SCALE_HOSTS", "1")
DBS = {"embedded": ["embedded"], "production": ["production"], "both": ["embedded", "production"]}[
    os.environ.get("BENCH_SCALE_DB", "embedded")
]


def run_processes(*run_dirs: Path, db_dir: Path | None = None) -> dict[int, str]:
    """pid -> kind, for every process of these runs (their BEAMLINE_RUN_DIR),
    and of the production database in ``db_dir``."""
    import psutil

    out = {}
    if db_dir is not None:
        from beamline import proddb

        for pid, cmdline in proddb._processes_of(db_dir):
            out[pid] = "database" if "DataBaseds" in cmdline else "MariaDB"  # (no access control)
    wanted = {str(d) for d in run_dirs}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["pid"] in out or p.environ().get("BEAMLINE_RUN_DIR") not in wanted:
                continue
        except (psutil.Error, OSError):
            continue
        out[p.info["pid"]] = kind_of(p.info["cmdline"] or [])
    return out


def kind_of(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for needle, kind in (
        ("PyDatabaseds", "database"),
        ("beamline-forkserver", "fork server"),
        ("beamline-sim", "simulator"),
        ("/Starter", "Starter"),
        ("Supervisor", "supervisors"),
        ("DataLogger", "logger"),
        ("ExperimentQueue", "queue"),
        ("Sardana", "Sardana"),
    ):
        if needle in text:
            return kind
    exe = Path(cmdline[1]).name if len(cmdline) > 1 else (cmdline[0] if cmdline else "?")
    return f"server:{exe}"


def cpu_times(pids) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def pss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def answer(bench: Bench, device: str, deadline: float = 60.0) -> float:
    import tango

    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        try:
            p = tango.DeviceProxy(f"tango://{bench.tango_host}/{device}")
            p.set_timeout_millis(300)
            p.state()
            return time.monotonic()
        except tango.DevFailed:
            time.sleep(0.01)
    raise RuntimeError(f"{device} did not answer within {deadline} s")


def pid_of(run_dir: Path, server: str) -> int:
    from beamline import procs

    pids = procs.server_pids(run_dir, [server]).get(server.lower(), [])
    if not pids:
        raise RuntimeError(f"{server} is not running")
    return pids[0]


SETTLE_WINDOW = 5.0  # s
SETTLE_MAX = 120.0  # s


def settle(processes: Callable[[], dict[int, str]]) -> float:
    """Wait until the start-up's tail is over before measuring idle: the
    logger and the relay go on subscribing for a while after every device
    answers (at 200 servers, idle measured 5 s after `up` had the relay at 32 %
    of a core instead of 4). Settled: two SETTLE_WINDOW windows in a row whose
    total CPU differs by less than a tenth (or SETTLE_MAX), and no sooner than
    REST_AFTER (hardware untouched that long is polled at its rest period:
    idle is a beamline at rest). Returns the wait."""
    from tango_devices.common.component import REST_AFTER

    t0 = time.monotonic()
    time.sleep(max(SETTLE_WINDOW, REST_AFTER - 2 * SETTLE_WINDOW))
    last = None
    while time.monotonic() - t0 < SETTLE_MAX:
        procs = processes()
        before = cpu_times(procs)
        time.sleep(SETTLE_WINDOW)
        after = cpu_times(procs)
        used = sum(after[p] - before[p] for p in before if p in after)
        if last is not None and abs(used - last) < 0.1 * max(last, 1e-9):
            break
        last = used
    return time.monotonic() - t0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def measure_at_rest(processes: Callable[[], dict[int, str]]) -> dict:
    """Right after `up`: the CPU every process used to start (every process
    of the run is new); then, once settled, idle CPU over IDLE seconds per
    kind and PSS."""
    out: dict = {}
    procs = processes()
    started = cpu_times(procs)
    out["start_cpu_s"] = sum(started.values())
    start_by_kind: dict[str, float] = defaultdict(float)
    for pid, t in started.items():
        start_by_kind[procs[pid]] += t
    out["start_cpu_by_kind_s"] = {k: round(v, 1) for k, v in sorted(start_by_kind.items())}
    out["start_cpu_per_server_s"] = sum(
        t for pid, t in started.items() if procs[pid].startswith("server:")
    ) / max(1, sum(1 for k in procs.values() if k.startswith("server:")))
    out["settle_s"] = settle(processes)
    procs = processes()
    before = cpu_times(procs)
    time.sleep(IDLE)
    after = cpu_times(procs)
    by_kind: dict[str, float] = defaultdict(float)
    pss: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for pid, kind in procs.items():
        if pid in before and pid in after:
            by_kind[kind] += (after[pid] - before[pid]) / IDLE * 100
        pss[kind] += pss_mib(pid)
        count[kind] += 1
    servers = [k for k in by_kind if k.startswith("server:")]
    out["idle_cpu_total_pct"] = sum(by_kind.values())
    out["idle_cpu_supervisors_pct"] = by_kind.get("supervisors", 0.0)
    out["idle_cpu_servers_pct"] = sum(by_kind[k] for k in servers)
    out["idle_cpu_by_kind_pct"] = dict(sorted(by_kind.items()))
    out["pss_total_mib"] = sum(pss.values())
    n_servers = sum(count[k] for k in servers)
    out["pss_per_device_server_mib"] = sum(pss[k] for k in servers) / max(1, n_servers)
    out["pss_by_kind_mib"] = {k: round(v) for k, v in sorted(pss.items())}
    return out


def one_size(n: int, tmp: Path, fork: bool, db: str = "embedded") -> dict:
    from beamline import generate

    config = tmp / f"config{n}"
    spec = generate.Spec.for_servers(n)
    generate.write(spec, PROJECT / "db_config", config, force=True)
    tag = f"{n}{'' if fork else '-nofork'}{'' if db == 'embedded' else '-' + db}"
    bench = Bench(tmp / f"run{tag}", free_port())
    out: dict = {"servers": n, "fork_server": fork, "database": db, "hosts": 1}
    db_dir = None
    if db == "production":
        # made before the clock starts: a beamline's database outlives its starts
        db_dir = tmp / f"proddb{tag}"
        made = json.loads(
            bench.cli(
                "db",
                "up",
                "--db-dir",
                str(db_dir),
                "--port",
                str(bench.port),
                "--mysql-port",
                str(free_port()),
                "--json",
            ).stdout
        )
        bench.tango_host = made["tango_host"]
    where = (
        ["--port", str(bench.port), "--db-bind", "127.0.0.1"]
        if db_dir is None
        else ["--tango-host", bench.tango_host]
    )
    try:
        t0 = time.perf_counter()
        up = json.loads(
            bench.cli(
                "--config-dir",
                str(config),
                "up",
                *where,
                "--sim-auto-ports",
                "--json",
                *([] if fork else ["--no-fork-server"]),
                check=False,
            ).stdout
            or "{}"
        )
        out["cold_start_s"] = time.perf_counter() - t0
        out["not_answering"] = len(up.get("failures", [])) if up else None
        os.environ["TANGO_HOST"] = bench.tango_host
        out.update(measure_at_rest(lambda: run_processes(bench.run_dir, db_dir=db_dir)))
        t0 = time.perf_counter()
        bench.cli("--config-dir", str(config), "status", "--json", check=False)
        out["status_s"] = time.perf_counter() - t0
        motors = [f"m{i:03d}" for i in range(1, spec.motors - 4)] or ["sample_x"]
        mttr = []
        for name in random.Random(n).sample(motors, min(KILLS, len(motors))):
            pid = pid_of(bench.run_dir, f"Motor/{name}")
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
            mttr.append(answer(bench, f"bl01/mot/{name}") - t_kill)
            time.sleep(1.0)
        out["crash_to_answer_p50_s"] = statistics.median(mttr)
        out["crash_to_answer_p95_s"] = percentile(mttr, 0.95)
        name = motors[-1]
        pid = pid_of(bench.run_dir, f"Motor/{name}")
        t_stop = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        deadline = t_stop + 60
        while time.monotonic() < deadline:
            try:
                if pid_of(bench.run_dir, f"Motor/{name}") != pid:
                    break
            except RuntimeError:
                pass
            time.sleep(0.05)
        out["hang_to_answer_s"] = answer(bench, f"bl01/mot/{name}") - t_stop
        gui = subprocess.run(
            [sys.executable, "-m", "bench.gui_open", "90"],
            capture_output=True,
            text=True,
            cwd=PROJECT,
            env={**os.environ, "TANGO_HOST": bench.tango_host},
            timeout=300,
        )
        try:
            opened = json.loads(gui.stdout.strip().splitlines()[-1])
            out["gui_window_s"] = opened["window_s"]
            out["gui_all_states_s"] = opened["all_states_s"]
            out["gui_tiles_without_state"] = opened["without_state"]
        except (ValueError, IndexError, KeyError):
            out["gui_error"] = (gui.stdout + gui.stderr)[-2000:]
        logger = bench.proxy("bl01/sys/logger")
        written = [logger.read_attribute("EventsWritten").value]
        time.sleep(10)
        written.append(logger.read_attribute("EventsWritten").value)
        out["logger_events_per_s"] = (written[1] - written[0]) / 10
        out["logger_backlog"] = logger.read_attribute("Backlog").value
    finally:
        t0 = time.perf_counter()
        bench.cli("down", check=False)
        out["down_s"] = time.perf_counter() - t0
        os.environ.pop("TANGO_HOST", None)
        if db_dir is not None:
            bench.cli("db", "down", "--db-dir", str(db_dir), check=False)
    return out


def two_hosts_size(n: int, tmp: Path) -> dict:
    """The same N on two hosts (each a network and PID namespace on this
    machine, tests/netns.py), one central embedded database: `beamline config
    generate --hosts hosta,hostb`, then `up --host` on host A (which writes the
    configuration and runs the virtual hardware) and on host B; both hosts
    share this machine's two cores."""
    from beamline import generate
    from tests.netns import BEAMLINE, two_hosts

    names = ("hosta", "hostb")
    config = tmp / f"config{n}-2hosts"
    spec = generate.Spec.for_servers(n, hosts=names)
    generate.write(spec, PROJECT / "db_config", config, force=True)
    base = tmp / f"hosts{n}"
    base.mkdir()
    out: dict = {"servers": n, "fork_server": True, "database": "embedded", "hosts": 2}
    try:
        with two_hosts(base, config, names) as world:
            hosts = world.hosts
            t0 = time.perf_counter()
            rc_a = hosts["hosta"].start(timeout=600, check=False)
            out["cold_start_host_a_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            rc_b = hosts["hostb"].start("--no-sim", "--no-config", timeout=600, check=False)
            out["cold_start_host_b_s"] = time.perf_counter() - t1
            out["cold_start_s"] = time.perf_counter() - t0
            out["up_exit_codes"] = [rc_a, rc_b]
            failures: int | None = 0
            for h in hosts.values():
                try:
                    failures += len(json.loads((h.run_dir / "up.json").read_text())["failures"])
                except (OSError, ValueError, KeyError):
                    failures = None
                    break
            out["not_answering"] = failures
            os.environ["TANGO_HOST"] = world.tango_host

            def processes() -> dict[int, str]:
                found = run_processes(*(h.run_dir for h in hosts.values()))
                found[world.db.pid] = "database"
                return found

            out.update(measure_at_rest(processes))
            t0 = time.perf_counter()
            status = subprocess.run(
                [BEAMLINE, "--run-dir", str(hosts["hosta"].run_dir), "--config-dir", str(config)]
                + ["status", "--json"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            out["status_s"] = time.perf_counter() - t0
            try:
                data = json.loads(status.stdout)
                out["status_hosts_answering"] = sum(1 for h in data["hosts"] if h["answers"])
            except (ValueError, KeyError):
                out["status_error"] = (status.stdout + status.stderr)[-2000:]
    finally:
        os.environ.pop("TANGO_HOST", None)
    return out


ROWS = [
    ("servers", "servers", "{:.0f}"),
    ("fork server", "fork_server", "{}"),
    ("database", "database", "{}"),
    ("hosts", "hosts", "{}"),
    ("cold start (s)", "cold_start_s", "{:.1f}"),
    ("cold start, host A (s)", "cold_start_host_a_s", "{:.1f}"),
    ("cold start, host B after A (s)", "cold_start_host_b_s", "{:.1f}"),
    ("CPU to start, all processes (s)", "start_cpu_s", "{:.0f}"),
    ("CPU to start, per device server (s)", "start_cpu_per_server_s", "{:.2f}"),
    ("not answering after up", "not_answering", "{}"),
    ("waited for the start-up to settle (s)", "settle_s", "{:.0f}"),
    ("idle CPU, total (% of a core)", "idle_cpu_total_pct", "{:.0f}"),
    ("idle CPU, device servers", "idle_cpu_servers_pct", "{:.0f}"),
    ("idle CPU, supervisors", "idle_cpu_supervisors_pct", "{:.1f}"),
    ("PSS total (MiB)", "pss_total_mib", "{:.0f}"),
    ("PSS per device server (MiB)", "pss_per_device_server_mib", "{:.1f}"),
    ("beamline status (s)", "status_s", "{:.1f}"),
    ("status: hosts answering", "status_hosts_answering", "{}"),
    ("crash -> answering p50 (s)", "crash_to_answer_p50_s", "{:.2f}"),
    ("crash -> answering p95 (s)", "crash_to_answer_p95_s", "{:.2f}"),
    ("hang (SIGSTOP) -> answering (s)", "hang_to_answer_s", "{:.1f}"),
    ("GUI: window open (s)", "gui_window_s", "{:.1f}"),
    ("GUI: every tile's state shown (s)", "gui_all_states_s", "{:.1f}"),
    ("logger events/s (idle)", "logger_events_per_s", "{:.0f}"),
    ("logger backlog", "logger_backlog", "{}"),
    ("beamline down (s)", "down_s", "{:.1f}"),
]


def run() -> list[dict]:
    from beamline.generate import Spec

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for n in SIZES:
            for fork in FORK:
                for db in DBS:
                    print(f"-- N = {n}, fork server: {fork}, database: {db}", flush=True)
                    try:
                        results.append(one_size(n, Path(tmp), fork, db))
                    except Exception as exc:  # noqa: BLE001 - a size that fails is reported
                        print(f"N = {n} failed: {exc}", flush=True)
                        results.append(
                            {"servers": n, "fork_server": fork, "database": db, "error": str(exc)}
                        )
                    print(json.dumps(results[-1], indent=1), flush=True)
            if HOSTS == "2" and n < Spec(hosts=("a", "b")).servers():
                print(f"-- N = {n}: fewer servers than a beamline on two hosts has", flush=True)
            elif HOSTS == "2":
                print(f"-- N = {n} on two hosts", flush=True)
                try:
                    results.append(two_hosts_size(n, Path(tmp)))
                except Exception as exc:  # noqa: BLE001 - a size that fails is reported
                    print(f"N = {n} on two hosts failed: {exc}", flush=True)
                    results.append({"servers": n, "hosts": 2, "error": str(exc)})
                print(json.dumps(results[-1], indent=1), flush=True)
    print("| " + " | ".join(["measure", *(str(r["servers"]) for r in results)]) + " |")
    print("| " + " | ".join(["---"] * (len(results) + 1)) + " |")
    for label, key, fmt in ROWS[1:]:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for r in results]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return results
