"""Data logger: sustained events/s archived without backlog growth, against the
rate an empty Python event callback receives the same events, in the same run;
and the latency of a query for one day of one attribute at 10 Hz.

Events: an extra server in the bench beamline (``EventSource/bench``, device
``bl01/bench/source``, defined here) pushes change events as fast as it can
on one of two attributes: ``Ref`` for the reference client (a separate Python
process whose callback only counts; the logger excludes ``Ref``) and
``Value`` for the logger. Rounds alternate. The logger's rate is the number
of events that reached the HDF5 file (GetHistory's count after the backlog
drained) over the burst; its backlog is sampled during the burst (the
sawtooth of a 1 s flush period; it must not grow from the first half to the
second) and no event may be dropped.

Query: a day at 10 Hz (864,000 rows) written as an archive file into the
logger's directory, then GetHistory for the whole day (1,000 points, and the
logger's maximum, 100,000) through Tango, against reading the same two
datasets raw with h5py in the bench process.

First query after a restart: 100 closed archive files of 60 attributes
(made by the store) in a directory of their own, the logger restarted on it
(Init), then GetHistory of one minute of one attribute, against the same
query once warm; and, in the bench process, a fresh reader's first query
with the archive's catalog (index.json) and without it (what every first
query cost before the catalog). Files made by one start: FileCount once the
bench beamline is up (the logger starts first, the servers after it, level
by level).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import PROJECT, beamline

SOURCE_DEVICE = "bl01/bench/source"
SOURCE_SERVER = "EventSource/bench"
ROUNDS = 3
BURST = 6.0  # s
LADDER = (5000, 10000, 15000, 20000)  # events/s, paced
STEP = 4.0  # s per paced burst


# ------------------------------------------------------------ event source
def source_main(instance: str) -> None:
    """The EventSource server (run in its own process by the benchmark)."""
    import tango
    from tango.server import Device, attribute, command

    class EventSource(Device):
        def init_device(self):
            super().init_device()
            self._pushed = 0
            self._last = "{}"
            self._busy = False
            for name in ("Value", "Ref"):
                self.set_change_event(name, True, False)

        @attribute(dtype=float)
        def Value(self):
            return 0.0

        @attribute(dtype=float)
        def Ref(self):
            return 0.0

        @attribute(dtype=str, doc="JSON of the last burst: first, last, count")
        def LastBurst(self):
            return self._last

        @attribute(dtype=bool)
        def Busy(self):
            return self._busy

        @command(dtype_in=(str,), doc_in="[attribute, seconds, rate (0: as fast as possible)]")
        def Burst(self, args):
            name, seconds = args[0], float(args[1])
            rate = float(args[2]) if len(args) > 2 else 0.0
            self._busy = True
            threading.Thread(target=self._burst, args=(name, seconds, rate), daemon=True).start()

        def _burst(self, name, seconds, rate):
            with tango.EnsureOmniThread():
                valid = tango.AttrQuality.ATTR_VALID
                push = self.push_change_event
                clock = time.time
                first = clock()
                end = first + seconds
                n = 0
                now = first
                while now < end:
                    for _ in range(50):
                        n += 1
                        push(name, float(n), clock(), valid)
                    now = clock()
                    if rate > 0 and first + n / rate > now:
                        time.sleep(first + n / rate - now)
                        now = clock()
                self._last = json.dumps({"first": first, "last": now, "count": n})
                self._busy = False

    tango.server.run((EventSource,), args=["EventSource", instance])


def reference_main(tango_host: str, seconds: float) -> None:
    """A client with an empty callback (it only counts) on ``Ref``."""
    import tango

    count = [0]

    def callback(_event) -> None:
        count[0] += 1

    proxy = tango.DeviceProxy(f"tango://{tango_host}/{SOURCE_DEVICE}")
    sid = proxy.subscribe_event("Ref", tango.EventType.CHANGE_EVENT, callback)
    count[0] = 0  # not the value read at subscription
    print("ready", flush=True)
    sys.stdin.readline()  # the burst has started
    time.sleep(seconds)
    proxy.unsubscribe_event(sid)
    print(count[0], flush=True)


# ------------------------------------------------------------------ rounds
def start_source(bench) -> subprocess.Popen:
    import tango

    db = tango.Database(*bench.tango_host.split(":"))
    info = tango.DbDevInfo()
    info.name, info._class, info.server = SOURCE_DEVICE, "EventSource", SOURCE_SERVER
    db.add_device(info)
    env = {**os.environ, "TANGO_HOST": bench.tango_host, "ORBendPoint": "giop:tcp:127.0.0.1:"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_logger", "source", "bench"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            bench.proxy(SOURCE_DEVICE).ping()
            return proc
        except tango.DevFailed:
            if time.monotonic() > deadline:
                raise RuntimeError("the event source did not start") from None
            time.sleep(0.1)


def burst(source, attr: str, seconds: float = BURST, rate: float = 0.0) -> dict:
    source.Burst([attr, str(seconds), str(rate)])
    time.sleep(seconds)
    while source.Busy:
        time.sleep(0.05)
    return json.loads(source.LastBurst)


def reference_round(bench, source, seconds: float = BURST, rate: float = 0.0) -> tuple:
    """(events received per second, events pushed per second)."""
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bench_logger",
            "reference",
            bench.tango_host,
            str(seconds + 1),
        ],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout.readline().strip() == "ready"
        source.Burst(["Ref", str(seconds), str(rate)])
        proc.stdin.write("go\n")
        proc.stdin.flush()
        received = int(proc.stdout.readline())
    while source.Busy:
        time.sleep(0.05)
    pushed = json.loads(source.LastBurst)
    return received / (pushed["last"] - pushed["first"]), pushed["count"] / (
        pushed["last"] - pushed["first"]
    )


def logger_round(logger, source, seconds: float = BURST, rate: float = 0.0) -> dict:
    dropped0 = logger.EventsDropped
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        import tango

        with tango.EnsureOmniThread():
            while not stop.is_set():
                samples.append((time.time(), logger.Backlog))
                stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        pushed = burst(source, "Value", seconds, rate)
    finally:
        stop.set()
        sampler.join()
    deadline = time.monotonic() + 60
    while logger.Backlog > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    logger.Flush()
    out = json.loads(
        logger.GetHistory(
            json.dumps(
                {
                    "attribute": f"{SOURCE_DEVICE}/Value",
                    "start": pushed["first"] - 0.001,
                    "end": pushed["last"] + 0.001,
                    "max_points": 1,
                }
            )
        )
    )
    duration = pushed["last"] - pushed["first"]
    during = [b for t, b in samples if pushed["first"] <= t <= pushed["last"]]
    half = len(during) // 2
    return {
        "rate": out["count"] / duration,
        "archived": out["count"],
        "count": pushed["count"],
        "pushed": pushed["count"] / duration,
        "backlog_first_half": max(during[:half] or [0]),
        "backlog_second_half": max(during[half:] or [0]),
        "dropped": logger.EventsDropped - dropped0,
    }


# ------------------------------------------------------------------- query
def day_file(directory: Path, t0: float) -> Path:
    """One day of bl01/bench/day/value at 10 Hz, as a closed archive file."""
    import numpy as np

    from tango_devices.logger.model import AttrMeta
    from tango_devices.logger.store import ArchiveWriter, WriterPolicy, list_files

    writer = ArchiveWriter(directory, WriterPolicy(schema_delay=0, max_file_size=2**40))
    writer.open()
    meta = AttrMeta("bl01/bench/day", "value", "float", "DevDouble", unit="mm")
    writer.add_meta(meta)
    n = 864_000
    times = t0 + np.arange(n) * 0.1
    values = np.sin(np.arange(n) / 3000.0) + np.random.default_rng(1).normal(0, 0.01, n)
    step = 86_400
    for i in range(0, n, step):
        chunk = zip(times[i : i + step].tolist(), values[i : i + step].tolist(), strict=True)
        rows = [(t, v, 0) for t, v in chunk]
        writer.cycle({meta.key: rows}, force=True)
    writer.close()
    return list_files(directory)[0]


def query_latency(bench, logger) -> dict:
    import h5py
    import tango

    t0 = time.time() - 3 * 86400
    archive = Path(json.loads(logger.Report)["directory"])
    with tempfile.TemporaryDirectory(prefix="bench-day-") as tmp:
        made = day_file(Path(tmp), t0)
        stamp = made.name.split("-")[2]
        target = archive / f"archive-000000-{stamp}"  # sorts before the logger's own files
        shutil.move(made, target)
    proxy = tango.DeviceProxy(f"tango://{bench.tango_host}/bl01/sys/logger")
    proxy.set_timeout_millis(60000)

    def query(points: int) -> tuple[float, dict]:
        args = {"attribute": "bl01/bench/day/value", "start": t0, "end": t0 + 86400}
        args["max_points"] = points
        start = time.perf_counter()
        out = json.loads(proxy.GetHistory(json.dumps(args)))
        return time.perf_counter() - start, out

    cold, first = query(1000)
    assert first["count"] == 864_000, first["count"]
    warm = [query(1000)[0] for _ in range(5)]
    full = [query(100_000)[0] for _ in range(3)]

    def raw() -> float:
        start = time.perf_counter()
        with h5py.File(target, "r", libver="latest", swmr=True) as f:
            g = f["values/bl01/bench/day/value"]
            g["time"][:]
            g["value"][:]
        return time.perf_counter() - start

    reference = [raw() for _ in range(5)]
    return {
        "cold": cold,
        "warm": statistics.median(warm),
        "full": statistics.median(full),
        "raw": statistics.median(reference),
    }


# --------------------------------------------------------- first query
RESTART_FILES = 100
RESTART_ATTRIBUTES = 60


def many_files(directory: Path, t0: float) -> None:
    """RESTART_FILES closed files, 10 minutes each, RESTART_ATTRIBUTES attributes."""
    from tango_devices.logger.model import AttrMeta
    from tango_devices.logger.store import ArchiveWriter, WriterPolicy

    writer = ArchiveWriter(directory, WriterPolicy(schema_delay=0, max_file_size=1))
    writer.open()
    metas = [
        AttrMeta(f"bl01/bench/d{i % 15}", f"a{i}", "float", "DevDouble")
        for i in range(RESTART_ATTRIBUTES)
    ]
    for meta in metas:
        writer.add_meta(meta)
    for f in range(RESTART_FILES):
        base = t0 + f * 600
        rows = [(base + k * 10, float(k), 0) for k in range(60)]
        writer.cycle({m.key: rows for m in metas}, force=True)
    writer.close()


def restart_query(bench, logger) -> dict:
    import tango

    from tango_devices.logger.reader import ArchiveReader
    from tango_devices.logger.store import CATALOG

    db = tango.Database(*bench.tango_host.split(":"))
    t0 = time.time() - 10 * 86400
    start = t0 + 50 * 600
    args = json.dumps({"attribute": "bl01/bench/d3/a48", "start": start, "end": start + 60})

    def wait_on() -> None:
        deadline = time.monotonic() + 60
        while logger.state() != tango.DevState.ON and time.monotonic() < deadline:
            time.sleep(0.1)

    def timed(fn) -> float:
        began = time.perf_counter()
        out = fn()
        assert out["count"] == 7, out["count"]
        return time.perf_counter() - began

    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        directory = Path(tmp) / "archive"
        many_files(directory, t0)
        bare = Path(tmp) / "bare"
        shutil.copytree(directory, bare, copy_function=shutil.copy2)
        (bare / CATALOG).unlink()
        db.put_device_property("bl01/sys/logger", {"Directory": [str(directory)]})
        try:
            logger.Init()
            wait_on()
            first = timed(lambda: json.loads(logger.GetHistory(args)))
            warm = statistics.median(
                timed(lambda: json.loads(logger.GetHistory(args))) for _ in range(5)
            )

            def offline(where: Path) -> float:
                return timed(
                    lambda: ArchiveReader(where).history(
                        json.loads(args)["attribute"], start, start + 60, 1000
                    )
                )

            with_catalog = statistics.median(offline(directory) for _ in range(3))
            without = statistics.median(offline(bare) for _ in range(3))
        finally:
            db.delete_device_property("bl01/sys/logger", "Directory")
            logger.Init()
            wait_on()
    return {"first": first, "warm": warm, "fresh_catalog": with_catalog, "fresh_bare": without}


# --------------------------------------------------------------------- run
def run() -> dict:
    import tango

    with beamline() as bench:
        logger = bench.proxy("bl01/sys/logger")
        logger.set_timeout_millis(30000)
        deadline = time.monotonic() + 60
        while logger.state() != tango.DevState.ON and time.monotonic() < deadline:
            time.sleep(0.2)
        files_per_start = logger.FileCount
        db = tango.Database(*bench.tango_host.split(":"))
        exclude = list(db.get_device_property("bl01/sys/logger", "Exclude")["Exclude"])
        db.put_device_property("bl01/sys/logger", {"Exclude": [*exclude, f"{SOURCE_DEVICE}/Ref"]})
        logger.Init()
        proc = start_source(bench)
        try:
            source = bench.proxy(SOURCE_DEVICE)
            source.set_timeout_millis(10000)
            logger.Rescan()
            while time.monotonic() < deadline + 60:
                devices = {d["device"]: d for d in json.loads(logger.Report)["devices"]}
                if devices.get(SOURCE_DEVICE, {}).get("attributes", {}).get("Value") == "change":
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError("the logger never subscribed to the event source")
            refs, logs = [], []
            for _ in range(ROUNDS):
                refs.append(reference_round(bench, source))
                logs.append(logger_round(logger, source))
            ladder = []
            for rate in LADDER:
                ref_rate, ref_pushed = reference_round(bench, source, STEP, rate)
                lg = logger_round(logger, source, STEP, rate)
                ladder.append((rate, ref_rate / ref_pushed, lg))
            query = query_latency(bench, logger)
            restart = restart_query(bench, logger)
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    ref = statistics.median(r[0] for r in refs)
    ours = statistics.median(r["rate"] for r in logs)
    print("Events: empty Python callback (reference) vs the logger archiving to HDF5")
    print(
        f"  {'round':>5}  {'ref recv/s':>10}  {'ref pushed/s':>12}  {'logger archived/s':>17}"
        f"  {'pushed/s':>9}  {'backlog max 1st/2nd half':>24}  dropped"
    )
    for i, (r, lg) in enumerate(zip(refs, logs, strict=True), 1):
        print(
            f"  {i:>5}  {r[0]:>10,.0f}  {r[1]:>12,.0f}  {lg['rate']:>17,.0f}  {lg['pushed']:>9,.0f}"
            f"  {lg['backlog_first_half']:>11,} / {lg['backlog_second_half']:<10,}  {lg['dropped']}"
        )
    print(
        f"  median: reference {ref:,.0f}/s, logger {ours:,.0f}/s, ratio {ours / ref:.2f}"
        " (target >= 0.6)"
    )
    print("Paced: share of the pushed events received (reference) and archived (logger)")
    print(f"  {'rate/s':>7}  {'reference':>9}  {'logger':>7}  {'backlog max 1st/2nd half':>24}")
    for rate, ref_share, lg in ladder:
        share = lg["archived"] / lg["count"]
        print(
            f"  {rate:>7,}  {ref_share:>9.3f}  {share:>7.3f}"
            f"  {lg['backlog_first_half']:>11,} / {lg['backlog_second_half']:<10,}"
        )
    print("Query: one day of one attribute at 10 Hz (864,000 rows)")
    print(
        f"  GetHistory 1,000 points: {query['cold'] * 1e3:.0f} ms cold, "
        f"{query['warm'] * 1e3:.0f} ms warm; 100,000 points: {query['full'] * 1e3:.0f} ms; "
        f"raw h5py read of time+value: {query['raw'] * 1e3:.0f} ms"
    )
    print(
        f"First query after a restart: {RESTART_FILES} files of {RESTART_ATTRIBUTES} attributes,"
        " one minute of one attribute"
    )
    print(
        f"  GetHistory after Init: {restart['first'] * 1e3:.0f} ms first, "
        f"{restart['warm'] * 1e3:.0f} ms warm (ratio {restart['first'] / restart['warm']:.1f}); "
        f"a fresh reader: {restart['fresh_catalog'] * 1e3:.0f} ms with the catalog, "
        f"{restart['fresh_bare'] * 1e3:.0f} ms without "
        f"(ratio {restart['fresh_bare'] / restart['fresh_catalog']:.0f})"
    )
    print(f"Files made by one start of the bench beamline: {files_per_start}")
    return {
        "reference": refs,
        "logger": logs,
        "ratio": ours / ref,
        "ladder": ladder,
        "query": query,
        "restart": restart,
        "files_per_start": files_per_start,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "source":
        source_main(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "reference":
        reference_main(sys.argv[2], float(sys.argv[3]))
    else:
        run()
