"""Experiment queue: the overhead per item, and big batches.

(a) Overhead per item. N x ``ct 0.01`` run through the queue (one AddBatch,
then Start), against the same N macros run back to back on the Door with
``DoorClient`` in the same run, rounds alternating. One observer, a separate
subscription to the Door's ``MacroStatus`` events, timestamps every macro's
``start`` and its end (``finish`` ...) with the Door's own event times; the
gap between the end of one macro and the start of the next is compared
(medians). The queue checks the interlocks and the devices an item needs
before each item, as it always does. Target: at most 20 ms more per item.
Also the same with 10,000 other items queued behind the N.

(b) Big batches: AddBatch of 10,000 items, Get, the Items and QueueState
attributes, one Add at the front and at the back with 10,000 queued,
``beamline queue list`` (table and --json) and Clear.

(c) Batches of any macro (issue 18): AddBatch of 20,000 ``mv sample_x 0.5``
(an element parameter: was 25-54 s) and of 20,000 ``ct 0.01``, from a client
with Tango's default 3 s timeout (target <= 2 s each; the queue stores a
batch only if it can answer within the client's timeout); and another
client's Get while a 20,000-item ``mv`` batch is being checked, against the
same Get with nothing else going on (target < 100 ms).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time

from bench.common import BIN, beamline

DOOR = "bl01/sardana/door"
QUEUE = "bl01/sys/queue"
N = 30
ROUNDS = 3
MACRO = ["ct", "0.01"]
BIG = 10_000
HUGE = 20_000
TERMINAL = ("finish", "stop", "abort", "exception")


class DoorObserver:
    """The Door's macro starts and ends, with the Door's event timestamps."""

    def __init__(self, door_name: str) -> None:
        import tango

        self.tango = tango
        self.proxy = tango.DeviceProxy(door_name)
        self.lock = threading.Lock()
        self.starts: dict[str, float] = {}
        self.ends: dict[str, tuple[float, str]] = {}
        self.ended = threading.Condition(self.lock)
        self.eid = self.proxy.subscribe_event(
            "MacroStatus", tango.EventType.CHANGE_EVENT, self._on_event, stateless=True
        )

    def close(self) -> None:
        self.proxy.unsubscribe_event(self.eid)

    def reset(self) -> None:
        with self.lock:
            self.starts.clear()
            self.ends.clear()

    def _on_event(self, ev) -> None:
        if ev.err or ev.attr_value is None or not ev.attr_value.value:
            return
        _, data = ev.attr_value.value
        if not data:
            return
        try:
            items = json.loads(bytes(data).decode())
        except ValueError:
            return
        t = ev.attr_value.time.totime()
        with self.lock:
            for item in items:
                mid, state = str(item.get("id")), item.get("state")
                if state == "start":
                    self.starts.setdefault(mid, t)
                elif state in TERMINAL and mid not in self.ends:
                    self.ends[mid] = (t, state)
            self.ended.notify_all()

    def wait_ends(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.ends) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"only {len(self.ends)} of {n} macros ended")
                self.ended.wait(left)

    def gaps(self, n: int) -> tuple[list[float], float]:
        """Gaps between consecutive macros (the first n) and the time per macro."""
        with self.lock:
            runs = sorted(
                (self.starts[m], self.ends[m][0], self.ends[m][1])
                for m in self.ends
                if m in self.starts
            )[:n]
        bad = [r for r in runs if r[2] != "finish"]
        if len(runs) < n or bad:
            raise RuntimeError(f"{len(runs)} macros seen, not finished: {bad[:3]}")
        gaps = [b[0] - a[1] for a, b in zip(runs, runs[1:], strict=False)]
        return gaps, (runs[-1][1] - runs[0][0]) / n


def _direct(door, observer: DoorObserver) -> tuple[list[float], float]:
    observer.reset()
    for _ in range(N):
        run = door.run(MACRO, timeout=60)
        if not run.ok:
            raise RuntimeError(f"{' '.join(MACRO)}: {run.outcome}: {run.error_text}")
    observer.wait_ends(N, 30)
    return observer.gaps(N)


def _queued(queue, observer: DoorObserver, behind: int = 0) -> tuple[list[float], float]:
    queue.Clear()
    queue.HistoryClear()
    if behind:
        filler = [{"macro": "ct", "args": [0.01]} for _ in range(behind)]
        queue.AddBatch(json.dumps({"items": filler, "timeout": 60}))
    items = [{"macro": MACRO[0], "args": MACRO[1:]} for _ in range(N)]
    queue.AddBatch(json.dumps({"items": items, "position": "front", "timeout": 60}))
    observer.reset()
    queue.Start()
    observer.wait_ends(N, 120)
    if behind:
        queue.Stop()  # the item after the N may have started: it ends, then the queue stops
    deadline = time.monotonic() + 60
    while queue.RunningItem or queue.QueueState != "idle":
        if time.monotonic() > deadline:
            raise RuntimeError("the queue did not go idle")
        time.sleep(0.05)
    history = json.loads(queue.History(json.dumps({"limit": N + 2})))
    if behind:
        queue.Clear()
    finished = [h for h in history if h["outcome"] == "finished"]
    if len(finished) < N:
        raise RuntimeError(f"queue history: {history[-3:]}")
    return observer.gaps(N)


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(0.9 * (len(values) - 1))]
    return (
        f"median {statistics.median(values) * 1000:6.1f} ms, mean "
        f"{statistics.fmean(values) * 1000:6.1f}, p90 {p90 * 1000:6.1f}, "
        f"max {values[-1] * 1000:6.1f}"
    )


def _timed(fn, repeat: int = 1) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def overhead(bench, queue) -> dict:
    from tango_devices.common.door import DoorClient

    door = DoorClient(f"tango://{bench.tango_host}/{DOOR}", timeout_ms=10000)
    observer = DoorObserver(f"tango://{bench.tango_host}/{DOOR}")
    try:
        door.run(MACRO, timeout=60)  # warm up both paths
        _queued(queue, observer)
        direct, queued = [], []
        direct_per, queued_per = [], []
        for _ in range(ROUNDS):
            gaps, per = _direct(door, observer)
            direct += gaps
            direct_per.append(per)
            gaps, per = _queued(queue, observer)
            queued += gaps
            queued_per.append(per)
        behind_gaps, behind_per = _queued(queue, observer, behind=BIG)
    finally:
        observer.close()
        door.close()
    d, q, b = (statistics.median(x) for x in (direct, queued, behind_gaps))
    print(
        f"(a) {ROUNDS} rounds of {N} x `{' '.join(MACRO)}`: gap between the end of a macro "
        "and the start of the next (the Door's MacroStatus event times)"
    )
    print(f"  direct, DoorClient back to back: {_ms(direct)}")
    print(f"  through the queue:               {_ms(queued)}")
    print(
        f"  time per macro, start to end of the run: direct "
        f"{statistics.median(direct_per) * 1000:.1f} ms, queue "
        f"{statistics.median(queued_per) * 1000:.1f} ms"
    )
    print(f"  overhead of the queue per item: {(q - d) * 1000:+.1f} ms (target <= +20 ms)")
    print(
        f"  with {BIG:,} more items queued behind: {_ms(behind_gaps)}; overhead "
        f"{(b - d) * 1000:+.1f} ms per item; time per macro {behind_per * 1000:.1f} ms"
    )
    return {"direct": d, "queued": q, "behind": b}


def batches(bench, queue) -> dict:
    queue.set_timeout_millis(180_000)
    queue.Clear()
    items = [{"macro": "ct", "args": [0.01], "meta": {"n": n}} for n in range(BIG)]
    payload = json.dumps({"items": items, "timeout": 180})
    adds = []
    for _ in range(2):
        queue.Clear()
        adds += _timed(lambda: queue.AddBatch(payload))
    n = queue.QueueLength
    if n != BIG:
        raise RuntimeError(f"{n} items queued, expected {BIG}")
    get = _timed(queue.Get, 5)
    items_read = _timed(lambda: queue.read_attribute("Items"), 5)
    state_read = _timed(lambda: queue.read_attribute("QueueState"), 20)
    one = json.dumps({"macro": "ct", "args": [0.01], "position": "front"})
    front = _timed(lambda: queue.Add(one), 5)
    back = _timed(lambda: queue.Add(json.dumps({"macro": "ct", "args": [0.01]})), 5)
    cli = [str(BIN / "beamline"), "--run-dir", str(bench.run_dir), "queue", "list"]

    def run_cli(*extra):
        proc = subprocess.run([*cli, *extra], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr)

    cli_table = _timed(run_cli, 2)
    cli_all = _timed(lambda: run_cli("--limit", "0"), 1)
    cli_json = _timed(lambda: run_cli("--json"), 2)
    clear = _timed(queue.Clear)
    state_empty = _timed(lambda: queue.read_attribute("QueueState"), 20)
    cli_empty = _timed(run_cli, 2)
    med = statistics.median
    print(f"(b) {BIG:,} items")
    print(
        f"  AddBatch (validated, committed): {' / '.join(f'{t:.2f}' for t in adds)} s "
        f"({med(adds) / BIG * 1e6:.0f} us per item)"
    )
    print(f"  Get (the whole queue as JSON):  {med(get) * 1000:.0f} ms")
    print(f"  read Items:                     {med(items_read) * 1000:.0f} ms")
    print(
        f"  read QueueState: {med(state_read) * 1000:.1f} ms with {BIG:,} queued, "
        f"{med(state_empty) * 1000:.1f} ms empty"
    )
    print(
        f"  Add one item with {BIG:,} queued: at the front {med(front) * 1000:.0f} ms, "
        f"at the back {med(back) * 1000:.0f} ms"
    )
    print(
        f"  `beamline queue list`: {med(cli_table):.2f} s (table of the first 100), "
        f"--limit 0 {cli_all[0]:.2f} s (table of all), --json {med(cli_json):.2f} s; "
        f"empty queue {med(cli_empty):.2f} s (Python start-up)"
    )
    print(f"  Clear:                          {clear[0] * 1000:.0f} ms")
    return {"add_batch": med(adds), "get": med(get), "items": med(items_read)}


def _batch(macro: str, args: list, n: int = HUGE, **extra) -> str:
    items = [{"macro": macro, "args": args, "meta": {"n": k}} for k in range(n)]
    return json.dumps({"items": items, **extra})


def any_macro(bench, queue) -> dict:
    import tango

    client = bench.proxy(QUEUE)  # Tango's default timeout: 3 s, as in the issue
    payloads = {"mv": _batch("mv", ["sample_x", 0.5]), "ct": _batch("ct", [0.01])}
    times: dict[str, list[float]] = {"mv": [], "ct": []}
    failures: dict[str, list[str]] = {"mv": [], "ct": []}
    for _ in range(ROUNDS):
        for macro, payload in payloads.items():
            queue.Clear()
            t0 = time.perf_counter()
            try:
                client.AddBatch(payload)
                times[macro].append(time.perf_counter() - t0)
                expected = HUGE
            except tango.DevFailed as exc:
                failures[macro].append(exc.args[0].reason)
                expected = 0 if exc.args[0].reason == "QUEUE_REJECTED" else None
            length = queue.QueueLength  # stored whole when acknowledged, not at all if refused
            if expected is not None and length != expected:
                raise RuntimeError(f"{macro}: {length} items stored, expected {expected}")

    # Get from another client while a batch is checked, against Get alone
    other = bench.proxy(QUEUE)
    loader = bench.proxy(QUEUE)
    loader.set_timeout_millis(180_000)
    queue.Clear()
    alone = _timed(other.Get, 50)
    during: list[float] = []
    after = 0
    done = threading.Event()

    def load() -> None:
        try:
            loader.AddBatch(_batch("mv", ["sample_x", 0.5], timeout=180))
        finally:
            done.set()

    thread = threading.Thread(target=load)
    thread.start()
    while not done.is_set():
        t0 = time.perf_counter()
        snap = json.loads(other.Get())
        took = time.perf_counter() - t0
        if snap["items"]:
            after += 1  # answered after the batch was committed: a 20,000-item answer
        else:
            during.append(took)
    thread.join()
    queue.Clear()
    med = statistics.median
    print(f"(c) AddBatch of {HUGE:,} items, client timeout 3 s, {ROUNDS} rounds")
    for macro in ("mv", "ct"):
        line = " / ".join(f"{t:.2f}" for t in times[macro]) or "-"
        ok = f"median {med(times[macro]):.2f} s" if times[macro] else "never stored"
        refused = f"; refused {len(failures[macro])}x ({', '.join(failures[macro])})"
        print(
            f"  `{macro}` x {HUGE:,}: {line} s ({ok}, target <= 2 s)"
            + (refused if failures[macro] else "")
        )
    print(
        f"  Get from another client while {HUGE:,} `mv` items are checked: "
        f"{_ms(during) if during else 'no Get fell in the check'} ({len(during)} Gets; "
        f"target < 100 ms); alone: {_ms(alone)}"
    )
    if during:
        print(f"  ratio (median during / alone): {med(during) / med(alone):.1f}")
    return {
        "mv_batch": med(times["mv"]) if times["mv"] else None,
        "ct_batch": med(times["ct"]) if times["ct"] else None,
        "get_during": max(during) if during else None,
        "get_alone": med(alone),
        "gets_after": after,
    }


def run(parts: tuple[str, ...] = ("overhead", "batches", "any_macro")) -> dict:
    import tango

    with beamline() as bench:
        queue = bench.proxy(QUEUE)
        queue.set_timeout_millis(60_000)
        door = bench.proxy(DOOR)
        deadline = time.monotonic() + 90
        while True:
            try:
                if door.state() == tango.DevState.ON and queue.state() != tango.DevState.INIT:
                    break
            except tango.DevFailed:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Door or the queue is not ready")
            time.sleep(0.2)
        results: dict = {}
        if "overhead" in parts:
            results.update(overhead(bench, queue))
        if "batches" in parts:
            results.update(batches(bench, queue))
        if "any_macro" in parts:
            results.update(any_macro(bench, queue))
    return results


if __name__ == "__main__":
    import sys

    run(tuple(sys.argv[1:]) or ("overhead", "batches", "any_macro"))
