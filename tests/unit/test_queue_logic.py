"""The experiment queue's engine against fake ports (no Tango): validation,
positions, the run loop with repetitions, stop, pause, interlocks, device
readiness by policy, escalation, and reconciliation of an item a dead
process was running. The run loop is a real thread; tests wait for what it
does with a deadline, never with a fixed sleep."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest

from tango_devices.queue.queue_logic import Deadline, QueueError, QueueLogic
from tango_devices.queue.store import Item, QueueStore, StoreError
from tests.helpers import wait_until

DOOR = "door/test/1"


# ------------------------------------------------------------------ fakes
class FakeMacros:
    """ct <time>, mv <motor> <position>, ascan <motor> <start> <end> <n> <time>."""

    SIGNATURES = {"ct": (float,), "mv": (str, float), "ascan": (str, float, float, int, float)}

    def __init__(self) -> None:
        self.validated: list[tuple[str, list[str]]] = []
        self.checkers = 0  # how many requests were checked

    def checker(self):
        self.checkers += 1
        return self.validate

    def validate(self, macro: str, args: list[str]) -> None:
        self.validated.append((macro, list(args)))
        if macro not in self.SIGNATURES:
            raise QueueError(f"no macro {macro!r} on the MacroServer")
        kinds = self.SIGNATURES[macro]
        if len(args) != len(kinds):
            raise QueueError(f"{macro} takes {len(kinds)} argument(s), got {len(args)}")
        for kind, value in zip(kinds, args, strict=True):
            try:
                kind(value)
            except ValueError:
                raise QueueError(f"{macro}: {value!r} is not {kind.__name__}") from None

    def needs(self, macro: str, args: list[str]) -> list[str]:
        return [DOOR, *([args[0]] if macro in ("mv", "ascan") else [])]


class FakeRun:
    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.outcome = "running"
        self.error_text = ""
        self.ended: float | None = None
        self.step = 0.0
        self.done = threading.Event()

    def end(self, outcome: str = "finish", error: str = "") -> None:
        self.outcome, self.error_text, self.ended = outcome, error, time.time()
        self.done.set()


class FakeDoor:
    """Macros end when the test says so (or at once with ``auto``)."""

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto
        self.runs: list[FakeRun] = []
        self.calls: list[str] = []
        self.refusals: list[str] = []  # the next RunMacro calls are refused with these
        self.deaf_to: set[str] = set()  # stop/abort/release that do not end the macro
        self.ignore_first: dict[str, int] = {}  # how many of them are ignored (too early)
        self.verdict = SimpleNamespace(outcome="unknown", error_text="no record", run=None)
        self.on_start = lambda run: None

    def start(self, args: list[str]) -> FakeRun:
        if self.refusals:
            raise RuntimeError(self.refusals.pop(0))
        run = FakeRun(list(args))
        self.runs.append(run)
        self.on_start(run)
        if self.auto:
            run.end()
        return run

    def wait(self, run: FakeRun, timeout: float | None = None) -> FakeRun:
        run.done.wait(timeout)
        return run

    def running(self) -> FakeRun | None:
        return next((r for r in self.runs if not r.done.is_set()), None)

    def _end(self, how: str, outcome: str) -> None:
        self.calls.append(how)
        run = self.running()
        if self.ignore_first.get(how, 0) > 0:
            self.ignore_first[how] -= 1  # Sardana: the macro has not really started yet
            return
        if run is not None and how not in self.deaf_to:
            run.end(outcome)

    def stop(self) -> None:
        self._end("stop", "stop")

    def abort(self) -> None:
        self._end("abort", "abort")

    def release(self) -> None:
        self._end("release", "abort")

    def restart(self) -> None:  # the supervisor restarts Sardana: the macro is lost
        self._end("restart", "lost")

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")

    def busy(self) -> bool:
        return self.running() is not None

    def reconcile(self, macro: str, door_started: float):
        self.calls.append(f"reconcile {macro}")
        return self.verdict

    def started(self) -> list[list[str]]:
        return [r.args for r in self.runs]


class FakeHealth:
    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.active: list[str] = []

    def down(self, devices: list[str]) -> list[str]:
        return [f"{d} does not answer" for d in devices if d in self.dead]

    def interlocks(self) -> list[str]:
        return list(self.active)


class Rig:
    """An engine on a store file with fake ports; ``reopen`` is the next process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.logics: list[QueueLogic] = []
        self.doors: list[FakeDoor] = []
        self.blocked_seen: list[str] = []

    def logic(
        self,
        door: FakeDoor | None = None,
        health: FakeHealth | None = None,
        start: bool = True,
        macros: FakeMacros | None = None,
    ) -> QueueLogic:
        store = QueueStore(self.path)
        door = door or FakeDoor()
        eng = QueueLogic(
            store,
            macros or FakeMacros(),
            door,
            health or FakeHealth(),
            readiness_timeout=0.5,
            hold_period=0.01,
        )
        eng.on_change = lambda: self.blocked_seen.append(eng.blocked_by)
        self.logics.append(eng)
        self.doors.append(door)
        if start:
            eng.open()
            assert eng.reconciled.wait(10), "the interrupted item was not reconciled"
        return eng

    def close(self) -> None:
        for door in self.doors:
            door.auto = True
            for run in door.runs:
                if not run.done.is_set():
                    run.end("abort")
        for eng in self.logics:
            eng._resumed.set()
            eng.close()
            eng.store.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path / "queue.sqlite")
    yield r
    r.close()


def uids(eng: QueueLogic) -> list[str]:
    return [i.uid for i in eng.store.items]


def on_disk(path: Path) -> list[dict]:
    s = QueueStore(path)
    try:
        return [i.as_dict() for i in s.items]
    finally:
        s.close()


def history(eng: QueueLogic) -> list:
    return eng.store.history()


def ct(t: float = 0.1, **kw) -> dict:
    return {"macro": "ct", "args": [t], **kw}


def wait_run(door: FakeDoor, n: int, what: str = "") -> FakeRun:
    """The n-th macro the Door was asked to run (1-based), once it is asked."""
    wait_until(lambda: len(door.runs) >= n, 5, what or f"macro number {n} to start")
    return door.runs[n - 1]


def wait_history(eng: QueueLogic, n: int) -> list:
    wait_until(
        lambda: len(history(eng)) >= n,
        5,
        f"{n} history entries",
        on_timeout=lambda: f"snapshot {eng.snapshot()} history {history(eng)}",
    )
    return history(eng)


# -------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "spec,words",
    [
        ({"macro": "nosuch"}, ["item:", "no macro 'nosuch'"]),
        ({"macro": "ct", "args": []}, ["item:", "ct takes 1 argument"]),
        ({"macro": "ct", "args": ["fast"]}, ["item:", "'fast' is not float"]),
        ({"macro": "ct", "args": [0.1], "repeat": 0}, ["item:", "repeat", "0"]),
        ({"macro": "ct", "args": [0.1], "repeat": True}, ["item:", "repeat"]),
        ({"macro": "ct", "args": {"t": 1}}, ["item:", "args"]),
        ({"macro": "ct", "args": [0.1], "colour": "red"}, ["item:", "unknown key", "colour"]),
        ({"macro": "", "args": []}, ["item:", "macro"]),
        ({"macro": "ct", "args": [0.1], "meta": []}, ["item:", "meta"]),
        (
            {"macro": "ct", "args": [0.1], "meta": {"on_device_down": "retry"}},
            ["item:", "on_device_down", "retry"],
        ),
        (["ct", 0.1], ["item:", "object"]),
    ],
)
def test_a_rejected_item_says_what_is_wrong_and_changes_nothing(rig, spec, words):
    eng = rig.logic()
    first = eng.add(ct())
    before = on_disk(rig.path)
    with pytest.raises(QueueError) as info:
        eng.add(spec)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert uids(eng) == [first.uid] and on_disk(rig.path) == before


def test_a_batch_with_one_bad_item_names_it_and_adds_nothing(rig):
    eng = rig.logic()
    eng.add(ct())
    before = on_disk(rig.path)
    batch = [ct(0.1), ct(0.2), {"macro": "mv", "args": ["sample_x", "far"]}, ct(0.3)]
    with pytest.raises(QueueError, match=r"^item 2: mv: 'far' is not float"):
        eng.add_batch(batch)
    for bad in ([], None, {"items": [ct()]}):
        with pytest.raises(QueueError, match="non-empty list"):
            eng.add_batch(bad)
    assert on_disk(rig.path) == before and len(eng.store.items) == 1


def test_a_batch_with_a_uid_already_queued_or_twice_adds_nothing(rig):
    eng = rig.logic()
    a = eng.add(ct())
    before = on_disk(rig.path)
    with pytest.raises(ValueError, match="duplicate"):
        eng.add_batch([ct(uid="fresh"), ct(uid=a.uid)])
    with pytest.raises(ValueError, match="duplicate"):
        eng.add_batch([ct(uid="x"), ct(uid="x")])
    assert on_disk(rig.path) == before


def test_a_valid_item_with_a_bad_position_adds_nothing(rig):
    eng = rig.logic()
    eng.add(ct())
    for position in ("middle", {"before": "nope"}, {"beside": eng.store.items[0].uid}, 5, -3, True):
        with pytest.raises(QueueError):
            eng.add(ct(), position)
    assert len(eng.store.items) == 1 and len(on_disk(rig.path)) == 1


def test_arguments_are_validated_and_stored_as_text(rig):
    eng = rig.logic()
    item = eng.add({"macro": "mv", "args": ["sample_x", 1.5], "repeat": 2, "meta": {"k": 1}})
    assert eng.macros.validated[-1] == ("mv", ["sample_x", "1.5"])
    (stored,) = on_disk(rig.path)
    assert stored["args"] == ["sample_x", "1.5"] and stored["repeat"] == 2
    assert stored["meta"] == {"k": 1} and stored["uid"] == item.uid


def test_update_validates_the_merged_item_and_keeps_its_place(rig):
    eng = rig.logic()
    a, b, c = (eng.add(ct(t)) for t in (0.1, 0.2, 0.3))
    with pytest.raises(QueueError, match=f"item {b.uid}: ct: 'slow' is not float"):
        eng.update(b.uid, {"args": ["slow"]})
    with pytest.raises(QueueError, match="no item with uid 'nope'"):
        eng.update("nope", {"repeat": 2})
    assert on_disk(rig.path)[1]["args"] == ["0.2"]
    eng.update(b.uid, {"args": [0.5], "repeat": 4})
    assert uids(eng) == [a.uid, b.uid, c.uid]
    assert on_disk(rig.path)[1]["args"] == ["0.5"] and on_disk(rig.path)[1]["repeat"] == 4


def test_remove_of_one_missing_uid_removes_nothing(rig):
    eng = rig.logic()
    a, b = eng.add(ct()), eng.add(ct())
    with pytest.raises(QueueError, match="nothing was removed"):
        eng.remove([a.uid, "nope"])
    assert uids(eng) == [a.uid, b.uid]
    assert [i.uid for i in eng.remove([b.uid])] == [b.uid] and uids(eng) == [a.uid]


def test_duplicate_of_a_queued_item_goes_right_after_it_under_a_new_uid(rig):
    eng = rig.logic()
    a = eng.add({"macro": "mv", "args": ["sample_x", 1.5], "repeat": 3, "meta": {"k": 1}})
    b = eng.add(ct())
    copy = eng.duplicate(a.uid)
    assert copy.uid not in (a.uid, b.uid)
    assert uids(eng) == [a.uid, copy.uid, b.uid]
    stored = on_disk(rig.path)[1]
    assert (stored["macro"], stored["args"], stored["repeat"], stored["meta"]) == (
        "mv",
        ["sample_x", "1.5"],
        3,
        {"k": 1},
    )
    front = eng.duplicate(b.uid, "front")
    assert uids(eng) == [front.uid, a.uid, copy.uid, b.uid]


def test_duplicate_of_a_running_or_finished_item_goes_to_the_back(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    a, b = eng.add(ct(0.1)), eng.add(ct(0.2))
    eng.start()
    run = wait_run(door, 1)
    copy = eng.duplicate(a.uid)  # a runs now
    assert uids(eng) == [b.uid, copy.uid]
    run.end()
    wait_run(door, 2).end()
    wait_history(eng, 2)
    again = eng.duplicate(a.uid)  # from the history
    assert uids(eng)[-1] == again.uid and on_disk(rig.path)[-1]["args"] == ["0.1"]


def test_duplicate_of_an_unknown_or_no_longer_valid_item_changes_nothing(rig):
    eng = rig.logic()
    a = eng.add(ct())
    before = on_disk(rig.path)
    with pytest.raises(QueueError, match="no item with uid 'nope' in the queue or its history"):
        eng.duplicate("nope")
    with pytest.raises(QueueError, match="position"):
        eng.duplicate(a.uid, "middle")
    # the macro is gone from the MacroServer since the item was queued
    eng.macros.SIGNATURES = {k: v for k, v in FakeMacros.SIGNATURES.items() if k != "ct"}
    with pytest.raises(QueueError, match=f"copy of {a.uid}: no macro 'ct'"):
        eng.duplicate(a.uid)
    assert on_disk(rig.path) == before


# --------------------------------------------------------------- positions
def test_add_at_the_back_front_an_index_and_before_or_after_an_item(rig):
    eng = rig.logic()
    a = eng.add(ct())  # back by default
    b = eng.add(ct(), "back")
    c = eng.add(ct(), "front")
    d = eng.add(ct(), 1)
    e = eng.add(ct(), {"before": a.uid})
    f = eng.add(ct(), {"after": b.uid})
    g = eng.add(ct(), -1)  # the back, like a list's end
    h = eng.add(ct(), -2)  # just before the last
    assert uids(eng) == [c.uid, d.uid, e.uid, a.uid, b.uid, f.uid, h.uid, g.uid]
    batch = eng.add_batch([ct(), ct()], {"after": c.uid})
    assert uids(eng)[1:3] == [i.uid for i in batch]
    assert [i["uid"] for i in on_disk(rig.path)] == uids(eng)


def test_move_to_the_front_the_back_and_before_or_after_an_item(rig):
    eng = rig.logic()
    a, b, c, d = (eng.add(ct()) for _ in range(4))
    eng.move(d.uid, "front")
    assert uids(eng) == [d.uid, a.uid, b.uid, c.uid]
    eng.move(d.uid, "back")
    assert uids(eng) == [a.uid, b.uid, c.uid, d.uid]
    eng.move(a.uid, {"after": c.uid})
    assert uids(eng) == [b.uid, c.uid, a.uid, d.uid]
    eng.move(d.uid, {"before": b.uid})
    assert uids(eng) == [d.uid, b.uid, c.uid, a.uid]
    eng.move(b.uid, {"after": b.uid})  # next to itself: stays
    assert uids(eng) == [d.uid, b.uid, c.uid, a.uid]
    eng.move(a.uid, 0)
    assert uids(eng) == [a.uid, d.uid, b.uid, c.uid]
    with pytest.raises(QueueError, match="no item with uid 'nope'"):
        eng.move("nope", "front")
    with pytest.raises(QueueError, match="no item with uid 'nope'"):
        eng.move(a.uid, {"after": "nope"})
    assert [i["uid"] for i in on_disk(rig.path)] == [a.uid, d.uid, b.uid, c.uid]


# ------------------------------------------------------------- running
def test_items_run_in_order_with_their_repetitions_then_the_queue_is_idle(rig):
    door = FakeDoor(auto=True)
    eng = rig.logic(door)
    a = eng.add(ct(0.1, repeat=3))
    b = eng.add({"macro": "mv", "args": ["sample_x", 2]})
    eng.start()
    done = wait_history(eng, 2)
    assert door.started() == [["ct", "0.1"]] * 3 + [["mv", "sample_x", "2"]]
    assert [(h.uid, h.outcome, h.repetitions_done) for h in done] == [
        (a.uid, "finished", 3),
        (b.uid, "finished", 1),
    ]
    assert all(h.started <= h.ended for h in done)
    wait_until(lambda: eng.state == "idle", 5, "the queue idle after its last item")
    assert eng.store.items == [] and eng.store.get_meta("current") is None
    assert eng.store.get_meta("running") is False


def test_an_empty_queue_started_goes_idle_and_runs_what_is_added_after_a_new_start(rig):
    door = FakeDoor(auto=True)
    eng = rig.logic(door)
    eng.start()
    wait_until(lambda: eng.state == "idle", 5, "idle")
    a = eng.add(ct())
    eng.start()
    assert [h.uid for h in wait_history(eng, 1)] == [a.uid]


def test_the_running_item_is_shown_with_its_repetition(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    a = eng.add(ct(0.1, repeat=2))
    eng.start()
    wait_run(door, 1).end()
    wait_run(door, 2)
    running = eng.snapshot()["running"]
    assert running["uid"] == a.uid and running["repetition"] == 2
    assert eng.store.get_meta("current")["uid"] == a.uid


def test_a_failed_macro_is_recorded_and_the_queue_goes_on(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    a = eng.add(ct(0.1, repeat=3))
    b = eng.add(ct(0.2))
    eng.start()
    wait_run(door, 1).end("exception", "the counter is FAULT")
    wait_run(door, 2).end()
    first, second = wait_history(eng, 2)
    assert (first.uid, first.outcome, first.repetitions_done) == (a.uid, "failed", 0)
    assert "the counter is FAULT" in first.error and "the counter is FAULT" in eng.last_error
    assert (second.uid, second.outcome) == (b.uid, "finished")


@pytest.mark.parametrize("outcome,recorded", [("stop", "stopped"), ("abort", "aborted")])
def test_a_stopped_or_aborted_macro_stops_the_queue(rig, outcome, recorded):
    door = FakeDoor()
    eng = rig.logic(door)
    a = eng.add(ct())
    b = eng.add(ct())
    eng.start()
    wait_run(door, 1).end(outcome)
    (h,) = wait_history(eng, 1)
    assert (h.uid, h.outcome) == (a.uid, recorded)
    wait_until(lambda: eng.state == "idle", 5, "the queue to stop")
    assert uids(eng) == [b.uid] and len(door.runs) == 1


def test_a_lost_door_stops_the_queue_with_the_item_recorded_as_lost(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    a = eng.add(ct())
    eng.add(ct())
    eng.start()
    wait_run(door, 1).end("lost", "door/test/1 does not answer")
    (h,) = wait_history(eng, 1)
    assert (h.uid, h.outcome) == (a.uid, "lost") and "does not answer" in h.error
    wait_until(lambda: eng.state == "idle", 5, "the queue to stop")
    assert "lost" in eng.last_error and len(door.runs) == 1


def test_a_macro_the_door_refuses_fails_its_item_and_the_next_one_runs(rig):
    door = FakeDoor(auto=True)
    door.refusals = ["the Door runs another macro"]
    eng = rig.logic(door)
    a = eng.add(ct())
    b = eng.add(ct())
    eng.start()
    first, second = wait_history(eng, 2)
    assert (first.uid, first.outcome, first.repetitions_done) == (a.uid, "failed", 0)
    assert "not started" in first.error and "another macro" in first.error
    assert (second.uid, second.outcome) == (b.uid, "finished")


# ------------------------------------------------------- stop and pause
def test_stop_ends_the_queue_after_the_current_item_with_all_its_repetitions(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    a = eng.add(ct(0.1, repeat=2))
    b = eng.add(ct(0.2))
    eng.start()
    wait_run(door, 1)
    eng.stop()
    assert eng.state == "stopping"
    door.runs[0].end()
    wait_run(door, 2).end()  # the current item is finished, repetitions included
    (h,) = wait_history(eng, 1)
    assert (h.uid, h.repetitions_done) == (a.uid, 2)
    wait_until(lambda: eng.state == "idle", 5, "idle after the current item")
    assert uids(eng) == [b.uid] and len(door.runs) == 2
    eng.start()
    wait_run(door, 3).end()
    assert [h.uid for h in wait_history(eng, 2)] == [a.uid, b.uid]


def test_stop_cancel_lets_the_queue_go_on(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    with pytest.raises(QueueError, match="no stop is pending"):
        eng.stop_cancel()
    a, b = eng.add(ct()), eng.add(ct())
    eng.start()
    wait_run(door, 1)
    eng.stop()
    eng.stop_cancel()
    assert eng.state == "running"
    door.runs[0].end()
    wait_run(door, 2).end()
    assert [h.uid for h in wait_history(eng, 2)] == [a.uid, b.uid]


def test_stop_of_an_idle_queue_and_start_again(rig):
    door = FakeDoor(auto=True)
    health = FakeHealth()
    health.active = ["vacuum"]
    eng = rig.logic(door, health)
    eng.add(ct())
    eng.start()
    wait_until(lambda: "vacuum" in eng.blocked_by, 5, "held by the interlock")
    eng.stop()  # nothing runs: stopped at once
    assert eng.state == "idle"
    wait_until(lambda: eng.blocked_by == "", 5, "BlockedBy cleared when stopped")
    health.active = []
    eng.start()
    wait_history(eng, 1)


def test_deferred_pause_pauses_after_the_current_item(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    a, b = eng.add(ct()), eng.add(ct())
    with pytest.raises(QueueError, match="nothing to pause"):
        eng.pause(deferred=True)
    eng.start()
    wait_run(door, 1)
    eng.pause(deferred=True)
    assert eng.state == "running" and eng.snapshot()["pause_deferred"]
    door.runs[0].end()
    wait_until(lambda: eng.state == "paused", 5, "paused after the item")
    assert [h.uid for h in history(eng)] == [a.uid]
    assert len(door.runs) == 1 and "pause" not in door.calls  # the macro was not paused
    eng.resume()
    wait_run(door, 2).end()
    assert [h.uid for h in wait_history(eng, 2)] == [a.uid, b.uid]


def test_immediate_pause_pauses_the_macro_and_no_repetition_starts_until_resume(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    eng.add(ct(0.1, repeat=2))
    eng.start()
    first = wait_run(door, 1)
    eng.pause()
    assert eng.state == "paused" and door.calls == ["pause"]
    first.end()  # it ended anyway (the pause came at its very end)
    wait_until(lambda: eng.current and eng.current.repetition == 1, 5, "repetition 1 done")
    # the run loop is now held; a deadline shows that nothing starts meanwhile
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert len(door.runs) == 1, "a repetition started while paused"
        time.sleep(0.01)
    eng.resume()
    assert door.calls == ["pause"]  # the macro had ended: nothing to resume on the Door
    wait_run(door, 2).end()
    (h,) = wait_history(eng, 1)
    assert h.repetitions_done == 2


def test_resume_of_a_queue_that_is_not_paused_is_refused(rig):
    eng = rig.logic()
    with pytest.raises(QueueError, match="not paused"):
        eng.resume()
    with pytest.raises(QueueError, match="nothing to pause"):
        eng.pause()


def test_start_of_a_paused_queue_is_refused(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    eng.add(ct())
    eng.start()
    wait_run(door, 1)
    eng.pause()
    with pytest.raises(QueueError, match="paused: Resume"):
        eng.start()


# ------------------------------------------------------------ escalation
def test_stop_of_the_running_macro_escalates_to_abort_and_stops_the_queue(rig):
    door = FakeDoor()
    door.deaf_to = {"stop"}
    eng = rig.logic(door)
    a, b = eng.add(ct()), eng.add(ct())
    eng.start()
    wait_run(door, 1)
    assert eng.macro_action("stop", timeout=0.2) == "abort"
    assert door.calls == ["stop", "abort"]
    (h,) = wait_history(eng, 1)
    assert (h.uid, h.outcome) == (a.uid, "aborted")
    assert eng.state == "idle" and uids(eng) == [b.uid]


def test_a_stop_the_door_ignored_because_it_came_too_early_is_sent_again(rig):
    door = FakeDoor()
    door.ignore_first = {"stop": 1}
    eng = rig.logic(door)
    eng.add(ct())
    eng.start()
    wait_run(door, 1)
    assert eng.macro_action("stop", timeout=2.0) == "stop"
    assert door.calls == ["stop", "stop"]
    (h,) = wait_history(eng, 1)
    assert h.outcome == "stopped"


def test_a_macro_that_abort_cannot_end_is_ended_by_a_restart_of_sardana(rig):
    door = FakeDoor()
    door.deaf_to = {"abort", "release"}
    eng = rig.logic(door)
    eng.add(ct())
    eng.start()
    wait_run(door, 1)
    assert eng.macro_action("abort", timeout=0.1) == "restart"
    assert door.calls[-1] == "restart" and door.calls.count("restart") == 1
    (h,) = wait_history(eng, 1)
    assert h.outcome == "lost" and eng.state == "idle"


def test_a_macro_that_ignores_everything_is_reported(rig):
    door = FakeDoor()
    door.deaf_to = {"abort", "release", "restart"}
    eng = rig.logic(door)
    eng.add(ct())
    eng.start()
    wait_run(door, 1)
    with pytest.raises(QueueError, match="did not end after abort then release then restart"):
        eng.macro_action("abort", timeout=0.1)


def test_macro_actions_need_a_running_macro_and_a_known_action(rig):
    eng = rig.logic()
    with pytest.raises(QueueError, match="no macro is running"):
        eng.macro_action("abort")
    with pytest.raises(QueueError, match="unknown action"):
        eng.macro_action("explode")


# ------------------------------------------------------------ interlocks
def test_an_interlock_drops_the_remaining_repetitions_and_holds_the_queue(rig):
    door = FakeDoor()
    health = FakeHealth()
    eng = rig.logic(door, health)
    a = eng.add(ct(0.1, repeat=3))
    b = eng.add(ct(0.2))
    eng.start()
    first = wait_run(door, 1)
    health.active = ["vacuum (bl01/vac/gauge1/State = ALARM)"]
    first.end()  # the running repetition was not disturbed
    (h,) = wait_history(eng, 1)
    assert door.calls == [] and first.outcome == "finish"
    assert (h.uid, h.outcome, h.repetitions_done) == (a.uid, "finished", 1)
    assert "remaining 2 repetition(s) dropped" in h.error and "vacuum" in h.error
    wait_until(lambda: eng.blocked_by.startswith("interlock: vacuum"), 5, "BlockedBy")
    assert any(s.startswith("interlock: vacuum") for s in rig.blocked_seen)  # published
    assert eng.state == "running" and uids(eng) == [b.uid] and len(door.runs) == 1
    health.active = []
    wait_run(door, 2).end()
    assert [x.uid for x in wait_history(eng, 2)] == [a.uid, b.uid]
    wait_until(lambda: eng.blocked_by == "", 5, "BlockedBy cleared")


def test_an_interlock_active_before_start_holds_every_item(rig):
    door = FakeDoor(auto=True)
    health = FakeHealth()
    health.active = ["front-end shutter interlock", "vacuum"]
    eng = rig.logic(door, health)
    eng.add(ct())
    eng.start()
    wait_until(lambda: eng.blocked_by, 5, "BlockedBy")
    assert "front-end shutter interlock" in eng.blocked_by and "vacuum" in eng.blocked_by
    assert door.runs == [] and history(eng) == []
    health.active = []
    wait_history(eng, 1)


# -------------------------------------------------------------- readiness
def test_an_item_whose_device_is_down_fails_or_waits_by_policy(rig):
    door = FakeDoor(auto=True)
    health = FakeHealth()
    health.dead = {"sample_y"}
    eng = rig.logic(door, health)
    failing = eng.add({"macro": "mv", "args": ["sample_y", 1], "meta": {"on_device_down": "fail"}})
    waiting = eng.add({"macro": "mv", "args": ["sample_y", 2]})  # wait is the default
    other = eng.add({"macro": "mv", "args": ["sample_x", 3]})
    eng.start()
    first, second = wait_history(eng, 2)
    assert (first.uid, first.outcome, first.repetitions_done) == (failing.uid, "failed", 0)
    assert "not started" in first.error and "sample_y does not answer" in first.error
    assert (second.uid, second.outcome) == (other.uid, "finished")  # passed the waiting one
    wait_until(lambda: waiting.uid in eng.blocked_by, 5, "BlockedBy naming the waiting item")
    assert "sample_y does not answer" in eng.blocked_by
    assert uids(eng) == [waiting.uid] and door.started() == [["mv", "sample_x", "3"]]
    health.dead = set()
    third = wait_history(eng, 3)[2]
    assert (third.uid, third.outcome) == (waiting.uid, "finished")


def test_a_down_door_holds_every_item(rig):
    door = FakeDoor(auto=True)
    health = FakeHealth()
    health.dead = {DOOR}
    eng = rig.logic(door, health)
    eng.add(ct())
    eng.start()
    wait_until(lambda: DOOR in eng.blocked_by, 5, "BlockedBy naming the Door")
    assert door.runs == []
    health.dead = set()
    wait_history(eng, 1)


# ---------------------------------------------------------- reconciliation
def crashed_mid_item(path: Path, door_started: bool, rep: int = 0, repeat: int = 1, **meta):
    """The store as a process killed while running item 'cur' left it: 'cur'
    recorded as current, 'next' still queued."""
    s = QueueStore(path)
    s.insert([Item("ct", ["0.5"], repeat, {}, "cur"), Item("ct", ["0.1"], 1, {}, "next")], 0)
    current = {"uid": "cur", "item": s.get("cur").as_dict(), "started": time.time(), "rep": rep}
    s.pop_to_current("cur", current)
    if door_started:
        current["door_started"] = time.time()
        s.set_meta("current", current)
    for key, value in meta.items():
        s.set_meta(key, value)
    s.close()


def test_reconcile_an_item_whose_macro_never_started_puts_it_back_at_the_front(rig):
    crashed_mid_item(rig.path, door_started=False)
    door = FakeDoor(auto=True)
    eng = rig.logic(door)
    assert uids(eng) == ["cur", "next"] and eng.store.get_meta("current") is None
    assert history(eng) == [] and door.calls == []  # no need to ask the Door
    eng.start()
    wait_history(eng, 2)
    assert door.started() == [["ct", "0.5"], ["ct", "0.1"]]  # once each


def test_reconcile_of_an_item_the_door_finished_records_it_and_the_queue_goes_on(rig):
    crashed_mid_item(rig.path, door_started=True, running=True)
    door = FakeDoor(auto=True)
    door.verdict = SimpleNamespace(outcome="finish", error_text="", run=None)
    eng = rig.logic(door)
    assert door.calls == ["reconcile ct"]
    first = history(eng)[0]
    assert (first.uid, first.outcome, first.repetitions_done) == ("cur", "finished", 1)
    assert "reconciled" in first.error
    # the queue was running: it goes on with the next item, never the reconciled one again
    wait_history(eng, 2)
    assert door.started() == [["ct", "0.1"]]


@pytest.mark.parametrize(
    "verdict,outcome",
    [("stop", "stopped"), ("abort", "aborted"), ("exception", "failed"), ("lost", "unknown")],
)
def test_reconcile_of_an_item_that_did_not_finish_records_it_and_holds_the_queue(
    rig, verdict, outcome
):
    """Like an item lost while the queue ran: an operator decides what next."""
    crashed_mid_item(rig.path, door_started=True, running=True)
    door = FakeDoor(auto=True)
    door.verdict = SimpleNamespace(outcome=verdict, error_text="", run=None)
    eng = rig.logic(door)
    (h,) = history(eng)
    assert (h.uid, h.outcome, h.repetitions_done) == ("cur", outcome, 0)
    assert "reconciled" in h.error and f"cur (ct 0.5): {outcome}" in eng.last_error
    assert eng.state == "idle" and uids(eng) == ["next"] and eng.store.get_meta("current") is None
    eng.start()
    wait_history(eng, 2)
    assert door.started() == [["ct", "0.1"]]  # the next item, never the reconciled one


def test_reconcile_an_item_the_door_knows_nothing_of_records_its_outcome_as_unknown(rig):
    crashed_mid_item(rig.path, door_started=True)
    door = FakeDoor(auto=True)
    door.verdict = SimpleNamespace(outcome="unknown", error_text="the Door has no record", run=None)
    eng = rig.logic(door)
    (h,) = history(eng)
    assert (h.uid, h.outcome) == ("cur", "unknown") and "the Door has no record" in h.error
    assert uids(eng) == ["next"] and door.runs == []
    eng.start()
    wait_history(eng, 2)
    assert door.started() == [["ct", "0.1"]]


def test_reconcile_of_a_repeated_item_counts_what_ran_and_runs_no_more(rig):
    crashed_mid_item(rig.path, door_started=True, rep=1, repeat=3)
    door = FakeDoor(auto=True)
    door.verdict = SimpleNamespace(outcome="finish", error_text="", run=None)
    eng = rig.logic(door)
    (h,) = history(eng)
    assert (h.outcome, h.repetitions_done) == ("finished", 2)
    assert "1 repetition(s) not run" in h.error


def test_reconcile_keeps_watching_a_macro_the_door_still_runs(rig):
    crashed_mid_item(rig.path, door_started=True, running=True)
    door = FakeDoor(auto=True)
    still = FakeRun(["ct", "0.5"])
    door.verdict = SimpleNamespace(outcome="running", error_text="", run=still)
    eng = rig.logic(door, start=False)
    opener = threading.Thread(target=eng.open, daemon=True)
    opener.start()
    wait_until(lambda: door.calls == ["reconcile ct"], 5, "the Door asked")
    assert history(eng) == [] and door.runs == []  # nothing new while it runs
    still.end("finish")
    opener.join(5)
    (first, second) = wait_history(eng, 2)
    assert (first.uid, first.outcome, first.repetitions_done) == ("cur", "finished", 1)
    assert second.uid == "next" and door.started() == [["ct", "0.1"]]


def test_a_reconciled_item_is_never_reconciled_twice(rig):
    crashed_mid_item(rig.path, door_started=True)
    door = FakeDoor(auto=True)
    door.verdict = SimpleNamespace(outcome="finish", error_text="", run=None)
    first = rig.logic(door)
    first.close()
    first.store.close()
    rig.logics.remove(first)
    second_door = FakeDoor(auto=True)
    again = rig.logic(second_door)
    assert second_door.calls == [] and len(history(again)) == 1


# -------------------------------------------- crash windows (known bugs)
def _snapshot(src: Path, dst: Path) -> None:
    """The database as a process killed at this moment leaves it (everything
    committed so far, nothing else)."""
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def test_killed_between_runmacro_and_its_record_the_item_is_not_run_twice(rig, tmp_path):
    door = FakeDoor(auto=True)
    crash = tmp_path / "at-crash.sqlite"
    door.on_start = lambda run: crash.exists() or _snapshot(rig.path, crash)
    eng = rig.logic(door)
    eng.add(ct(0.5))
    eng.start()
    wait_history(eng, 1)
    # the next process starts from what the killed one left; the Door did run the macro
    after = Rig(crash)
    try:
        door2 = FakeDoor(auto=True)
        door2.verdict = SimpleNamespace(outcome="finish", error_text="", run=None)
        eng2 = after.logic(door2)
        wait_until(lambda: eng2.state == "idle" and not eng2.store.items, 5, "idle")
        assert door2.runs == [], "the item ran a second time"
    finally:
        after.close()


def test_killed_while_putting_a_never_started_item_back_the_next_start_works(rig):
    crashed_mid_item(rig.path, door_started=False)
    s = QueueStore(rig.path)
    s.insert([Item(**s.get_meta("current")["item"])], 0)  # the first of the two steps
    s.close()
    eng = rig.logic(FakeDoor(auto=True))
    assert uids(eng) == ["cur", "next"]


def test_a_paused_queue_is_still_paused_after_a_restart(rig):
    health = FakeHealth()
    health.dead = {"sample_y"}
    eng = rig.logic(FakeDoor(auto=True), health)
    eng.add({"macro": "mv", "args": ["sample_y", 1]})
    eng.start()
    wait_until(lambda: "sample_y" in eng.blocked_by, 5, "waiting for sample_y")
    eng.pause()
    assert eng.state == "paused"
    eng.close()
    eng.store.close()
    rig.logics.remove(eng)
    again = rig.logic(FakeDoor(auto=True), FakeHealth())
    assert again.state == "paused"


def test_a_paused_queue_told_to_stop_can_still_be_resumed(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    eng.add(ct(0.1, repeat=2))
    eng.start()
    wait_run(door, 1)
    eng.pause()
    eng.stop()
    eng.resume()
    assert "resume" in door.calls


def test_abort_while_paused_between_repetitions_starts_nothing_more(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    eng.add(ct(0.1, repeat=3))
    eng.start()
    first = wait_run(door, 1)
    eng.pause()
    first.end()  # the pause came too late for this repetition
    wait_until(lambda: eng.current and eng.current.repetition == 1, 5, "repetition 1 done")
    eng.macro_action("abort", timeout=0.2)
    wait_until(
        lambda: history(eng) or len(door.runs) > 1, 5, "the item recorded or a new repetition"
    )
    assert len(door.runs) == 1, "a repetition started after the abort"


def test_open_returns_while_the_door_still_runs_the_reconciled_macro(rig):
    crashed_mid_item(rig.path, door_started=True)
    door = FakeDoor(auto=True)
    still = FakeRun(["ct", "0.5"])
    door.verdict = SimpleNamespace(outcome="running", error_text="", run=still)
    eng = rig.logic(door, start=False)
    opener = threading.Thread(target=eng.open, daemon=True)
    opener.start()
    try:
        opener.join(2)
        assert not opener.is_alive(), "open() still waits for the Door's macro"
    finally:
        still.end("finish")
        opener.join(5)


# ------------------------------------------------------ hostile input
def test_a_number_as_uid_is_refused_and_a_text_uid_is_the_same_text_everywhere(rig):
    """An item added with uid 5 could not be removed with "5" until a restart
    (5 in memory, '5' in the file)."""
    eng = rig.logic()
    with pytest.raises(QueueError, match="'uid' must be a string"):
        eng.add(ct(uid=5))
    with pytest.raises(QueueError, match="'uid' must be a string"):
        eng.add_batch([ct(uid="a"), ct(uid=6)])
    assert uids(eng) == [] and on_disk(rig.path) == []
    eng.add(ct(uid="5"))
    eng.add(ct(uid="6"))
    assert [i["uid"] for i in on_disk(rig.path)] == uids(eng) == ["5", "6"]
    assert [i.uid for i in eng.remove(["5"])] == ["5"]
    eng.close()
    again = rig.logic()  # the next process
    assert uids(again) == ["6"] and [i.uid for i in again.remove(["6"])] == ["6"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_as_arguments_are_refused(rig, bad):
    eng = rig.logic()
    with pytest.raises(QueueError, match=r"args\.0: .* is not a finite number"):
        eng.add(ct(bad))
    with pytest.raises(QueueError, match=r"item 1: args\.1: .* is not a finite number"):
        eng.add_batch([ct(), {"macro": "mv", "args": ["sample_x", bad]}])
    assert uids(eng) == [] and on_disk(rig.path) == []


def test_a_uid_already_queued_or_twice_in_a_batch_is_a_queue_refusal_naming_it(rig):
    """Was a bare ValueError (PyDs_PythonError at the device)."""
    eng = rig.logic()
    eng.add(ct(uid="a"))
    with pytest.raises(QueueError, match=r"duplicate uid\(s\): a: every item needs its own uid"):
        eng.add(ct(uid="a"))
    with pytest.raises(QueueError, match="within the batch.*nothing was added"):
        eng.add_batch([ct(uid="x"), ct(uid="x")])
    assert uids(eng) == ["a"] and [i["uid"] for i in on_disk(rig.path)] == ["a"]


def test_an_integral_float_repeat_is_the_integer(rig):
    eng = rig.logic()
    assert eng.add(ct(repeat=2.0)).repeat == 2
    with pytest.raises(QueueError, match="repeat"):
        eng.add(ct(repeat=2.5))


# ---------------------------------------------------------------- batches
class GatedMacros(FakeMacros):
    """Checking the item ``ct 0.999`` waits until the test opens the gate:
    a batch in the middle of being checked."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def validate(self, macro: str, args: list[str]) -> None:
        if args == ["0.999"]:
            self.entered.set()
            assert self.gate.wait(10), "the test never opened the gate"
        super().validate(macro, args)


def _in_thread(fn, *args, **kw) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_the_queue_answers_and_takes_other_edits_while_a_batch_is_checked(rig):
    """Was: AddBatch held the queue's lock while checking 20,000 items; every
    other client's Get and Add waited (and timed out)."""
    macros = GatedMacros()
    eng = rig.logic(macros=macros)
    first = eng.add(ct())
    batch_thread, batch = _in_thread(eng.add_batch, [ct(0.999)] + [ct(0.1) for _ in range(50)])
    try:
        assert macros.entered.wait(5), "the batch never started being checked"
        other_thread, other = _in_thread(
            lambda: (eng.snapshot(), eng.add(ct(0.5)), eng.snapshot()["length"])
        )
        other_thread.join(5)
        assert not other_thread.is_alive(), "Get and Add waited for the batch being checked"
        snap, added, length = other["value"]
        assert snap["length"] == 1 and length == 2  # the batch is not in yet
    finally:
        macros.gate.set()
    batch_thread.join(5)
    assert [i.uid for i in eng.store.items] == [first.uid, added.uid] + [
        i.uid for i in batch["value"]
    ]
    assert [i["uid"] for i in on_disk(rig.path)] == uids(eng)


def test_a_batch_checked_past_its_deadline_is_refused_and_nothing_is_stored(rig):
    """A client that timed out never finds its batch stored behind its back:
    past the deadline (from the client's timeout) nothing is committed."""
    macros = GatedMacros()
    eng = rig.logic(macros=macros)
    deadline = Deadline.for_client(0.3)  # committed within 0.2 s, or not at all
    t, out = _in_thread(eng.add_batch, [ct(0.1), ct(0.999), ct(0.2)], "back", deadline)
    assert macros.entered.wait(5)
    wait_until(lambda: deadline.left() < 0, 5, "the deadline to pass")
    macros.gate.set()
    t.join(5)
    assert isinstance(out.get("error"), QueueError), out
    text = str(out["error"])
    assert "nothing was changed" in text and "0.3 s" in text and '"timeout"' in text
    assert uids(eng) == [] and on_disk(rig.path) == []


def test_an_edit_waiting_past_its_deadline_for_another_commit_is_refused(rig):
    eng = rig.logic()
    a = eng.add(ct())
    with eng._edit_lock:  # another client's batch being committed
        for edit in (
            lambda d: eng.add(ct(), deadline=d),
            lambda d: eng.remove([a.uid], deadline=d),
            lambda d: eng.move(a.uid, "front", deadline=d),
            lambda d: eng.clear(deadline=d),
        ):
            with pytest.raises(QueueError, match="another edit was being committed"):
                edit(Deadline.for_client(0.15))
    assert uids(eng) == [a.uid] and [i["uid"] for i in on_disk(rig.path)] == [a.uid]
    eng.add(ct(), deadline=Deadline.for_client())  # and with time to spare it works
    assert len(uids(eng)) == 2


def test_a_position_is_taken_against_the_queue_as_it_is_when_the_edit_commits(rig):
    """'after b' stays after b even when the runner takes the first item off
    between the check and the commit."""
    eng = rig.logic()
    a, b, c = eng.add(ct(uid="a")), eng.add(ct(uid="b")), eng.add(ct(uid="c"))
    where = eng._where({"after": "b"})
    eng.store.pop_to_current(a.uid, {"uid": a.uid})  # the runner, meanwhile
    eng.store.insert([Item("ct", ["1"], 1, {}, "x")], where)
    assert uids(eng) == [b.uid, "x", c.uid]


# -------------------------------------------------------- the disk fails
class DiskFull:
    """The store's connection, every COMMIT failing as on a full disk (SQLite
    rolls back, then says so) while ``full``."""

    def __init__(self, store: QueueStore) -> None:
        self.real = store._db
        self.full = True
        store._db = self

    def __getattr__(self, name):
        return getattr(self.real, name)

    def cursor(self):
        disk = self

        class Cursor:
            def __init__(self) -> None:
                self.real = disk.real.cursor()

            def __getattr__(self, name):
                return getattr(self.real, name)

            def execute(self, sql, *args):
                if sql == "COMMIT" and disk.full:
                    self.real.execute("ROLLBACK")
                    raise sqlite3.OperationalError("database or disk is full")
                return self.real.execute(sql, *args)

        return Cursor()


def test_a_full_disk_refuses_every_edit_with_the_cause_and_nothing_changes(rig):
    eng = rig.logic()
    a, b = eng.add(ct(uid="a")), eng.add(ct(uid="b"))
    before = on_disk(rig.path)
    disk = DiskFull(eng.store)
    for name, edit in {
        "add": lambda: eng.add(ct()),
        "add_batch": lambda: eng.add_batch([ct(), ct()]),
        "update": lambda: eng.update(a.uid, {"repeat": 3}),
        "move": lambda: eng.move(b.uid, "front"),
        "remove": lambda: eng.remove([a.uid]),
        "clear": eng.clear,
        "duplicate": lambda: eng.duplicate(a.uid),
    }.items():
        with pytest.raises(StoreError) as refused:
            edit()
        text = str(refused.value)
        assert "the disk is full" in text and "nothing was changed" in text, (name, text)
        assert str(rig.path) in text, name
        assert uids(eng) == [a.uid, b.uid] and on_disk(rig.path) == before, name
    disk.full = False  # space is back: no restart needed
    eng.add(ct(uid="c"))
    assert [i["uid"] for i in on_disk(rig.path)] == ["a", "b", "c"]


def test_a_full_disk_refuses_start_but_never_keeps_stop_from_acting(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    eng.add(ct())
    disk = DiskFull(eng.store)
    with pytest.raises(StoreError, match="the disk is full.*nothing was changed"):
        eng.start()
    assert eng.state == "idle" and door.runs == []
    disk.full = False
    eng.start()
    wait_run(door, 1)
    disk.full = True
    with pytest.raises(
        StoreError, match=r"Stop took effect \(the queue is stopping\).*disk is full"
    ):
        eng.stop()
    assert eng.state == "stopping"
    with pytest.raises(StoreError, match="the macro ended after abort and the queue is idle"):
        eng.macro_action("abort", timeout=1)
    assert eng.state == "idle"
    disk.full = False
    (h,) = wait_history(eng, 1)
    assert h.outcome == "aborted"


def test_the_runner_waits_for_the_disk_to_record_an_outcome_then_goes_on(rig):
    door = FakeDoor()
    eng = rig.logic(door)
    a, b = eng.add(ct()), eng.add(ct())
    eng.start()
    run = wait_run(door, 1)
    disk = DiskFull(eng.store)
    run.end()
    wait_until(
        lambda: "cannot record the queue's progress" in eng.blocked_by, 5, "BlockedBy saying why"
    )
    assert "the disk is full" in eng.blocked_by and history(eng) == []
    assert len(door.runs) == 1  # nothing more starts before the outcome is recorded
    disk.full = False
    door.auto = True
    wait_history(eng, 2)
    assert [h.uid for h in history(eng)] == [a.uid, b.uid]
    wait_until(lambda: eng.state == "idle" and not eng.blocked_by, 5, "idle, nothing blocking")
