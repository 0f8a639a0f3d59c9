"""The experiment queue's SQLite store: order, all-or-nothing edits, what a
reopened store finds, and writers killed with SIGKILL (really, in a
subprocess) in the middle of an edit: the queue is then the one before the
edit or the one after it, never anything else."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tango_devices.queue.store import HistoryEntry, Item, QueueStore

PROJECT = Path(__file__).resolve().parents[2]
_OPEN: list[QueueStore] = []


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    while _OPEN:
        _OPEN.pop().close()


def store_at(path: Path) -> QueueStore:
    s = QueueStore(path)
    _OPEN.append(s)
    return s


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "queue.sqlite"


def items(*uids: str) -> list[Item]:
    return [Item("ct", [str(n / 10)], 1, {"n": n}, uid) for n, uid in enumerate(uids)]


def order(store: QueueStore) -> list[str]:
    return [i.uid for i in store.items]


def on_disk(path: Path) -> list[dict]:
    """What a fresh process would find."""
    s = QueueStore(path)
    try:
        return [i.as_dict() for i in s.items]
    finally:
        s.close()


# ------------------------------------------------------------------ order
def test_insert_at_the_back_front_and_middle_keeps_the_order(db):
    s = store_at(db)
    s.insert(items("a", "b"), 99)  # past the end: the back
    s.insert(items("c"), 0)
    s.insert(items("d", "e"), 2)
    s.insert(items("f"), -5)  # before the front: the front
    assert order(s) == ["f", "c", "a", "d", "e", "b"]
    assert [i["uid"] for i in on_disk(db)] == order(s)


def test_new_items_get_a_unique_uid_and_an_added_time(db):
    s = store_at(db)
    before = time.time()
    added = s.insert([Item("ct", ["0.1"]) for _ in range(50)], 0)
    assert len({i.uid for i in added}) == 50 and all(i.uid for i in added)
    assert all(before <= i.added <= time.time() for i in added)


def test_move_update_remove_clear_and_the_same_after_reopening(db):
    s = store_at(db)
    s.insert(items("a", "b", "c", "d"), 0)
    s.move("a", 2)
    assert order(s) == ["b", "c", "a", "d"]
    s.move("d", 0)
    s.move("b", 99)
    assert order(s) == ["d", "c", "a", "b"]
    old_added = s.get("c").added
    s.update(Item("mv", ["sample_x", "1"], 3, {"who": "me"}, "c"))
    assert s.get("c").added == old_added  # an update keeps the item's place and age
    removed = s.remove(["a", "d"])
    assert [i.uid for i in removed] == ["d", "a"]
    expected = [i.as_dict() for i in s.items]
    assert [i["uid"] for i in expected] == ["c", "b"]
    assert on_disk(db) == expected
    assert expected[0]["macro"] == "mv" and expected[0]["repeat"] == 3
    assert s.clear() == 2
    assert s.items == [] and on_disk(db) == []


def test_edits_naming_a_missing_uid_change_nothing(db):
    s = store_at(db)
    s.insert(items("a", "b"), 0)
    with pytest.raises(KeyError, match="nope"):
        s.remove(["a", "nope"])
    with pytest.raises(KeyError, match="nope"):
        s.move("nope", 0)
    with pytest.raises(KeyError, match="nope"):
        s.update(Item("ct", [], 1, {}, "nope"))
    assert order(s) == ["a", "b"] and [i["uid"] for i in on_disk(db)] == ["a", "b"]


# ---------------------------------------------------------- all or nothing
def test_a_batch_with_a_uid_already_queued_changes_nothing(db):
    s = store_at(db)
    s.insert(items("a", "b"), 0)
    before = on_disk(db)
    with pytest.raises(ValueError, match="duplicate uid.*b"):
        s.insert(items("x", "b", "y"), 1)
    assert order(s) == ["a", "b"] and on_disk(db) == before


def test_a_batch_with_a_uid_twice_changes_nothing(db):
    s = store_at(db)
    s.insert(items("a"), 0)
    with pytest.raises(ValueError, match="duplicate uid"):
        s.insert(items("x", "y", "x"), 0)
    assert order(s) == ["a"] and [i["uid"] for i in on_disk(db)] == ["a"]


def test_a_batch_failing_half_way_through_its_transaction_is_rolled_back(db):
    """The last item cannot be written (not JSON): the rows written before it
    in the same transaction are rolled back, in memory and on disk."""
    s = store_at(db)
    s.insert(items("a", "b"), 0)
    bad = [*items("x", "y"), Item("ct", [], 1, {"not json": object()}, "z")]
    with pytest.raises(TypeError):
        s.insert(bad, 1)
    assert order(s) == ["a", "b"]
    assert [i["uid"] for i in on_disk(db)] == ["a", "b"]
    s.insert(items("x"), 1)  # the store still works, and x was not left behind
    assert order(s) == ["a", "x", "b"]


# ------------------------------------------------------ current and history
def entry(uid: str, outcome: str = "finished", **kw) -> HistoryEntry:
    values = dict(
        uid=uid,
        macro="ct",
        args=["0.1"],
        repeat=2,
        repetitions_done=2,
        outcome=outcome,
        error="",
        started=1.0,
        ended=2.0,
        meta={"k": "v"},
    )
    values.update(kw)
    return HistoryEntry(**values)


def test_pop_to_current_and_finish_current_move_an_item_through_in_one_step_each(db):
    s = store_at(db)
    s.insert(items("a", "b", "c"), 0)
    s.pop_to_current("b", {"uid": "b", "rep": 0})
    assert order(s) == ["a", "c"] and s.get_meta("current") == {"uid": "b", "rep": 0}
    again = store_at(db)
    assert order(again) == ["a", "c"] and again.get_meta("current")["uid"] == "b"
    s.finish_current(entry("b", error="none"))
    assert s.get_meta("current") is None
    (h,) = store_at(db).history()
    assert (h.uid, h.outcome, h.repetitions_done, h.meta) == ("b", "finished", 2, {"k": "v"})


def test_pop_to_current_of_a_missing_uid_changes_nothing(db):
    s = store_at(db)
    s.insert(items("a"), 0)
    with pytest.raises(KeyError):
        s.pop_to_current("nope", {"uid": "nope"})
    assert order(s) == ["a"] and s.get_meta("current") is None


def test_a_failing_finish_current_keeps_the_current_item_and_writes_no_history(db):
    s = store_at(db)
    s.insert(items("a"), 0)
    s.pop_to_current("a", {"uid": "a"})
    with pytest.raises(TypeError):
        s.finish_current(entry("a", meta={"bad": object()}))
    assert s.get_meta("current") == {"uid": "a"} and s.history() == []


def test_history_is_oldest_first_with_a_limit_on_the_newest_and_can_be_cleared(db):
    s = store_at(db)
    for n in range(5):
        s.finish_current(entry(f"u{n}", started=float(n)))
    assert [h.uid for h in s.history()] == ["u0", "u1", "u2", "u3", "u4"]
    assert [h.uid for h in s.history(2)] == ["u3", "u4"]
    assert s.clear_history() == 5
    assert store_at(db).history() == []


def test_meta_values_round_trip_and_none_deletes(db):
    s = store_at(db)
    s.set_meta("running", True)
    s.set_meta("current", {"uid": "a", "args": [1, "x"]})
    assert store_at(db).get_meta("running") is True
    s.set_meta("running", None)
    assert store_at(db).get_meta("running", "absent") == "absent"
    assert store_at(db).get_meta("current") == {"uid": "a", "args": [1, "x"]}


def test_the_database_is_in_wal_mode(db):
    store_at(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --------------------------------------------------------------- kill -9
# The same deterministic sequence of edits, replayed by the writer (on the
# store) and by the test (on a plain list): the test knows the queue after
# every edit.
EDITS = '''
import random


def edits(seed):
    """Yield (edit, queue after it) forever; uids are unique across edits."""
    rng = random.Random(seed)
    model = []
    k = 0
    while True:
        k += 1
        roll = rng.random()
        if not model or roll < 0.4:
            at = rng.randint(0, len(model))
            batch = [(f"e{k}n{j}", "ct", [str(j)], 1 + j % 3) for j in range(rng.randint(1, 300))]
            model[at:at] = batch
            edit = ("insert", batch, at)
        elif roll < 0.6:
            item = rng.choice(model)
            at = rng.randint(0, len(model) - 1)
            model.remove(item)
            model.insert(at, item)
            edit = ("move", item[0], at)
        elif roll < 0.8:
            gone = set(rng.sample([m[0] for m in model], min(len(model), rng.randint(1, 40))))
            model = [m for m in model if m[0] not in gone]
            edit = ("remove", sorted(gone))
        elif roll < 0.97:
            i = rng.randrange(len(model))
            model[i] = (model[i][0], "mv", ["sample_x", str(k)], 2)
            edit = ("update", model[i])
        else:
            model = []
            edit = ("clear",)
        yield edit, [tuple(m[:2]) + (tuple(m[2]), m[3]) for m in model]
'''

WRITER = (
    EDITS
    + """
import os
import signal
import sys

from tango_devices.queue.store import Item, QueueStore

path, seed, kill_edit, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = QueueStore(path)
statements = 0


def count(sql):
    global statements
    statements += 1
    if statements == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


for k, (edit, _) in enumerate(edits(seed), 1):
    if k == kill_edit:
        store._db.set_trace_callback(count)
    kind = edit[0]
    if kind == "insert":
        store.insert([Item(m, list(a), r, {}, u) for u, m, a, r in edit[1]], edit[2])
    elif kind == "move":
        store.move(edit[1], edit[2])
    elif kind == "remove":
        store.remove(edit[1])
    elif kind == "update":
        u, m, a, r = edit[1]
        store.update(Item(m, list(a), r, {}, u))
    else:
        store.clear()
    if k == kill_edit:
        print("complete", statements, flush=True)
        sys.exit(0)
    print(k, flush=True)
"""
)


def _states(seed: int, n: int) -> list[list[tuple]]:
    """The queue after edit 0 (empty), 1, ..., n."""
    ns: dict = {}
    exec(EDITS, ns)
    states: list[list[tuple]] = [[]]
    for _, after in ns["edits"](seed):
        states.append(after)
        if len(states) > n:
            return states
    raise AssertionError


def _found(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:  # the file survived intact
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s = QueueStore(path)
    try:
        return [(i.uid, i.macro, tuple(i.args), i.repeat) for i in s.items]
    finally:
        s.close()


def _run_writer(
    path: Path, seed: int, kill_edit: int = 0, kill_at: int = 0, kill_after: float | None = None
) -> tuple[int, int | None]:
    """Run the writer until it dies of SIGKILL (or completes ``kill_edit``): the
    last edit it acknowledged, and how many statements ``kill_edit`` ran if it
    completed."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    args = [sys.executable, "-c", WRITER, str(path), str(seed), str(kill_edit), str(kill_at)]
    last, complete = 0, None
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) as proc:
        deadline = time.monotonic() + 60
        started = None
        for line in proc.stdout:
            if line.startswith("complete"):
                complete = int(line.split()[1])
                continue
            last = int(line)
            started = started or time.monotonic()
            if kill_after is not None and time.monotonic() - started >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "the writer was never killed"
        for line in proc.stdout.read().splitlines():  # acknowledged before it died
            last = int(line)
        assert proc.wait(10) == (0 if complete is not None else -signal.SIGKILL)
    return last, complete


def _first_edit(seed: int, kind: str, after: int = 5) -> int:
    ns: dict = {}
    exec(EDITS, ns)
    for k, (edit, _) in enumerate(ns["edits"](seed), 1):
        if k > after and edit[0] == kind:
            return k
    raise AssertionError


@pytest.mark.parametrize("kind", ["insert", "move", "remove", "update"])
def test_a_writer_killed_at_any_statement_of_an_edit_leaves_the_queue_before_it(tmp_path, kind):
    """Killed just before each statement of an edit in turn (the first, the
    second, in the middle of its rows, just before COMMIT): the queue is the
    one before that edit; left alone, the one after it."""
    seed = 7
    k = _first_edit(seed, kind)
    states = _states(seed, k)
    last, n = _run_writer(tmp_path / "full.sqlite", seed, kill_edit=k, kill_at=10**9)
    assert (last, _found(tmp_path / "full.sqlite")) == (k - 1, states[k])
    assert n >= 3  # BEGIN, the rows, COMMIT
    for kill_at in sorted({1, 2, 3, n // 2, n - 1, n}):
        path = tmp_path / f"killed-at-{kill_at}.sqlite"
        last, complete = _run_writer(path, seed, kill_edit=k, kill_at=kill_at)
        assert complete is None and last == k - 1
        assert _found(path) == states[k - 1], f"killed at statement {kill_at}/{n} of edit {k}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_writer_killed_at_a_random_moment_leaves_the_old_or_the_new_queue(tmp_path, seed):
    path = tmp_path / "q.sqlite"
    kill_after = random.Random(seed).uniform(0.05, 0.6)
    last, _ = _run_writer(path, seed, kill_after=kill_after)
    states = _states(seed, last + 1)
    found = _found(path)
    assert found in (states[last], states[last + 1]), (
        f"after edit {last} the queue is neither the queue after it nor the one after the next"
    )
    # the next process carries on from there
    s = store_at(path)
    s.insert(items("after-the-crash"), 0)
    assert order(store_at(path))[0] == "after-the-crash"


CURRENT = """
import os
import signal
import sys

from tango_devices.queue.store import HistoryEntry, Item, QueueStore

path, step, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = QueueStore(path)
if step == "pop":
    store.insert([Item("ct", ["0.1"], 1, {}, u) for u in ("a", "b", "c")], 0)
statements = 0


def count(sql):
    global statements
    statements += 1
    if statements == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


store._db.set_trace_callback(count)
if step == "pop":
    store.pop_to_current("b", {"uid": "b", "rep": 0})
else:
    store.finish_current(HistoryEntry("b", "ct", ["0.1"], 1, 1, "finished", "", 1.0, 2.0, {}))
print(statements, flush=True)
"""


def _current_step(path: Path, step: str, kill_at: int = 0) -> int | None:
    """Statements the step ran, or None when it was killed."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run(
        [sys.executable, "-c", CURRENT, str(path), step, str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode == -signal.SIGKILL:
        return None
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def test_killed_at_any_statement_of_pop_to_current_the_item_stays_queued(tmp_path):
    n = _current_step(tmp_path / "full.sqlite", "pop")
    s = store_at(tmp_path / "full.sqlite")
    assert order(s) == ["a", "c"] and s.get_meta("current") == {"uid": "b", "rep": 0}
    assert n >= 3
    for kill_at in range(1, n + 1):
        path = tmp_path / f"killed-at-{kill_at}.sqlite"
        assert _current_step(path, "pop", kill_at) is None
        s = store_at(path)
        assert order(s) == ["a", "b", "c"], f"killed at statement {kill_at}/{n}"
        assert s.get_meta("current") is None, f"killed at statement {kill_at}/{n}"


def test_killed_at_any_statement_of_finish_current_the_item_stays_current(tmp_path):
    full = tmp_path / "full.sqlite"
    _current_step(full, "pop")
    n = _current_step(full, "finish")
    s = store_at(full)
    assert s.get_meta("current") is None and [h.uid for h in s.history()] == ["b"]
    assert n >= 3
    for kill_at in range(1, n + 1):
        path = tmp_path / f"killed-at-{kill_at}.sqlite"
        _current_step(path, "pop")
        assert _current_step(path, "finish", kill_at) is None
        s = store_at(path)
        assert s.get_meta("current") == {"uid": "b", "rep": 0}, f"statement {kill_at}/{n}"
        assert s.history() == [], f"killed at statement {kill_at}/{n}"


# ------------------------------------------------------- the file fails
# Real SQLite failures: a database that may not grow (max_page_count: SQLite's
# own "database or disk is full", rolled back by SQLite itself), a connection
# that may not write, a file another connection holds locked, a corrupt file;
# and a COMMIT that fails after SQLite rolled back (a wrapper).
def refusal(fn) -> str:
    """'ExceptionType: message' of what ``fn`` raised (it must raise)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - which one is the point
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("no refusal")


def _full(s: QueueStore) -> None:
    """No room for one more page."""
    pages = s._db.execute("PRAGMA page_count").fetchone()[0]
    s._db.execute(f"PRAGMA max_page_count = {pages}")


def _space_back(s: QueueStore) -> None:
    s._db.execute("PRAGMA max_page_count = 1073741823")


BIG_META = {"pad": "x" * 20_000}  # needs new pages


def _growing_writes(s: QueueStore) -> dict:
    """Every write that needs new pages (removals and moves need none under
    max_page_count; the failing COMMIT below covers them)."""
    return {
        "insert": lambda: s.insert([Item("ct", ["0.1"], 1, dict(BIG_META), "new")], 0),
        "insert batch": lambda: s.insert(
            [Item("ct", [str(n)], 1, dict(BIG_META)) for n in range(20)], 1
        ),
        "update": lambda: s.update(Item("mv", ["sample_x", "1"], 2, dict(BIG_META), "b")),
        "set_meta": lambda: s.set_meta("running", BIG_META),
        "pop_to_current": lambda: s.pop_to_current("b", {"uid": "b", **BIG_META}),
        "finish_current": lambda: s.finish_current(entry("b", meta=BIG_META)),
    }


def _filled(db: Path) -> QueueStore:
    s = store_at(db)
    s.insert(items("a", "b", "c"), 0)
    s.finish_current(entry("old"))
    return s


def _everything(s: QueueStore, db: Path) -> tuple:
    return (on_disk(db), s.get_meta("current"), s.get_meta("running"), s.history())


@pytest.mark.parametrize("write", list(_growing_writes(QueueStore.__new__(QueueStore))))
def test_a_full_disk_refuses_every_write_naming_file_and_cause_and_changes_nothing(db, write):
    s = _filled(db)
    before = _everything(s, db)
    memory = [i.as_dict() for i in s.items]
    _full(s)
    text = refusal(_growing_writes(s)[write])
    assert text.startswith("StoreError: cannot write the queue's database"), text
    assert str(db) in text and "the disk is full" in text and "nothing was changed" in text
    assert "free on" in text and "free space there" in text and "cannot rollback" not in text
    assert [i.as_dict() for i in s.items] == memory == before[0]
    assert _everything(store_at(db), db) == before


def test_a_full_disk_refuses_an_insert_and_edits_work_again_once_space_returns(db):
    """The reported bug: 'cannot rollback - no transaction is active' instead of
    the cause; then, without reopening, the next edit works."""
    s = _filled(db)
    before = on_disk(db)
    version = s.version
    _full(s)
    text = refusal(lambda: s.insert([Item("ct", ["0.1"], 1, dict(BIG_META), "new")], 0))
    assert "cannot rollback" not in text and text.startswith("StoreError: "), text
    assert "the disk is full" in text and "nothing was changed" in text
    assert order(s) == ["a", "b", "c"] and on_disk(db) == before and s.version == version
    text = refusal(
        lambda: s.insert([Item("ct", [str(n)], 1, dict(BIG_META)) for n in range(50)], 3)
    )
    assert text.startswith("StoreError: ") and "the disk is full" in text, text
    assert on_disk(db) == before
    _space_back(s)
    s.insert([Item("ct", ["0.1"], 1, dict(BIG_META), "new")], 0)
    assert order(s) == ["new", "a", "b", "c"] and [i["uid"] for i in on_disk(db)] == order(s)


def test_a_read_only_database_refuses_writes_naming_the_cause(db):
    s = _filled(db)
    s._db.execute("PRAGMA query_only = 1")  # what a read-only file gives: SQLITE_READONLY
    for fn in (lambda: s.insert(items("x"), 0), lambda: s.remove(["a"]), s.clear):
        text = refusal(fn)
        assert text.startswith("StoreError: ") and "read-only" in text and str(db) in text, text
    assert order(s) == ["a", "b", "c"] and [i["uid"] for i in on_disk(db)] == ["a", "b", "c"]
    s._db.execute("PRAGMA query_only = 0")
    s.remove(["a"])
    assert [i["uid"] for i in on_disk(db)] == ["b", "c"]


def test_a_database_locked_by_another_program_is_refused_within_the_busy_timeout(db):
    s = QueueStore(db, busy_timeout=0.2)
    _OPEN.append(s)
    s.insert(items("a"), 0)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another program writing
        t0 = time.monotonic()
        text = refusal(lambda: s.insert(items("b"), 0))
        assert text.startswith("StoreError: ") and "another program holds" in text, text
        assert time.monotonic() - t0 < 5  # not SQLite's default 5 s per attempt
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert order(s) == ["a"]
    s.insert(items("b"), 0)
    assert order(s) == ["b", "a"]


def test_a_corrupt_file_is_reported_at_open_naming_it(tmp_path):
    path = tmp_path / "queue.sqlite"
    path.write_bytes(b"this is not an SQLite file at all" * 200)
    text = refusal(lambda: QueueStore(path))
    assert text.startswith("StoreError: ") and str(path) in text and "corrupt" in text, text


class _FailingCommit:
    """A connection whose COMMIT fails after SQLite rolled the transaction back
    (what an I/O error at commit time does)."""

    def __init__(self, real: sqlite3.Connection, message: str) -> None:
        self.real, self.message = real, message

    def __getattr__(self, name):
        return getattr(self.real, name)

    def cursor(self):
        outer = self

        class Cursor:
            def __init__(self) -> None:
                self.real = outer.real.cursor()

            def __getattr__(self, name):
                return getattr(self.real, name)

            def execute(self, sql, *args):
                if sql == "COMMIT":
                    self.real.execute("ROLLBACK")
                    raise sqlite3.OperationalError(outer.message)
                return self.real.execute(sql, *args)

        return Cursor()


@pytest.mark.parametrize(
    "message,cause",
    [
        ("database or disk is full", "the disk is full"),
        ("disk I/O error", "I/O error"),
        ("attempt to write a readonly database", "read-only"),
    ],
)
def test_a_failing_commit_is_reported_with_its_cause_and_changes_nothing(db, message, cause):
    s = _filled(db)
    real = s._db
    s._db = _FailingCommit(real, message)
    try:
        for fn in (
            lambda: s.insert(items("x", "y"), 1),
            lambda: s.move("c", 0),
            lambda: s.remove(["b"]),
            lambda: s.update(Item("mv", ["m", "1"], 1, {}, "a")),
            s.clear,
            lambda: s.pop_to_current("a", {"uid": "a"}),
            lambda: s.set_meta("running", True),
            lambda: s.finish_current(entry("a")),
            s.clear_history,
        ):
            text = refusal(fn)
            assert text.startswith("StoreError: ") and cause in text, text
            assert "nothing was changed" in text
            assert order(s) == ["a", "b", "c"]
    finally:
        s._db = real
    assert [i["uid"] for i in on_disk(db)] == ["a", "b", "c"] and s.get_meta("current") is None
    assert s.get_meta("running") is None and [h.uid for h in s.history()] == ["old"]
    s.move("c", 0)
    assert [i["uid"] for i in on_disk(db)] == ["c", "a", "b"]


def test_an_edit_past_its_deadline_is_rolled_back_before_commit(db):
    s = _filled(db)
    with pytest.raises(TimeoutError):
        s.insert(items("x"), 0, deadline=time.monotonic() - 1)
    with pytest.raises(TimeoutError):
        s.remove(["a"], deadline=time.monotonic() - 1)
    assert order(s) == ["a", "b", "c"] and [i["uid"] for i in on_disk(db)] == ["a", "b", "c"]
