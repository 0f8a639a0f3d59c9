"""The experiment queue on the real beamline against what goes wrong (issue 18):
hostile input to every command, a big batch while other clients work, and a
full disk under the queue's database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
import tango

from beamline import procs
from tests.helpers import wait_until
from tests.system.conftest import QUEUE, fill_disk, small_disk

pytestmark = [pytest.mark.system, pytest.mark.slow]

LONG = ("ascan", "sample_x", 0, 1, 100, 0.1)  # ~15 s: ended early by the tests
DEEP = "[" * 100_000


def add(q, macro, *args, **spec):
    return json.loads(q.Add(json.dumps({"macro": macro, "args": list(args), **spec})))


def refusal(fn, *args) -> tango.DevError:
    with pytest.raises(tango.DevFailed) as info:
        fn(*args)
    return info.value.args[0]


def db_file(beamline) -> Path:
    (path,) = (beamline.run_dir / "queue").glob("*.sqlite")
    return path


def on_file(path: Path) -> list[str]:
    """The queue's order as a fresh reader of the file finds it."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [uid for (uid,) in conn.execute("SELECT uid FROM items ORDER BY pos")]


def looks(q) -> tuple:
    """What a client sees of the queue (the running item's progress aside)."""
    snap = json.loads(q.Get())
    running = (snap["running"] or {}).get("uid")
    return snap["state"], running, [i["uid"] for i in snap["items"]], len(json.loads(q.History("")))


# (argument, words the refusal must contain: the field it names)
BAD = {
    "Add": [
        (DEEP, ["nested more than"]),
        ('{"macro": "ct", "args": [0.1], "uid": 5}', ["uid", "not of type 'string'"]),
        ('{"macro": "ct", "args": [NaN]}', ["NaN", "finite"]),
        ('{"macro": "ct", "args": [1e400]}', ["args.0", "too large"]),
        ('{"macro": "ct", "args": [0.1], "repeat": 0}', ["repeat"]),
        ('{"macro": "ct", "args": [0.1], "position": "middle"}', ["position"]),
        ('{"macro": "ct", "colour": "red"}', ["colour"]),
        ('{"macro": ["ct"]}', ["macro"]),
        ('"ct"', ["not of type 'object'"]),
        ("", ["not of type 'object'"]),
        ("{macro: ct", ["not valid JSON"]),
    ],
    "AddBatch": [
        (DEEP, ["nested more than"]),
        ('{"items": []}', ["items"]),
        ('{"items": "ct 0.1"}', ["items"]),
        (
            '{"items": [{"macro": "ct", "uid": "u1"}, {"macro": "ct", "uid": "u1"}]}',
            ["items.1.uid"],
        ),
        ('{"items": [{"macro": "ct", "args": [0.1]}, {"macro": 5}]}', ["items.1.macro"]),
        ('{"items": [{"macro": "ct"}], "timeout": -1}', ["timeout"]),
        ('{"items": [{"macro": "ct", "args": [[0.1]]}]}', ["items.0.args.0"]),
    ],
    "Update": [
        (DEEP, ["nested more than"]),
        ('{"uid": ["a"]}', ["uid"]),
        ('{"repeat": 2}', ["uid"]),
        ('{"uid": "a", "repeat": 1e23}', ["repeat"]),
        ('{"uid": "a", "position": "front"}', ["position"]),
    ],
    "Move": [
        (DEEP, ["nested more than"]),
        ('{"uid": "a"}', ["position"]),
        ('{"uid": "a", "position": 1e23}', ["position"]),
        ('{"uid": "a", "position": {"before": 5}}', ["position.before"]),
        ("5", ["not of type 'object'"]),
    ],
    "Remove": [
        (DEEP, ["nested more than"]),
        ('{"uids": [5]}', ["uids.0"]),
        ('{"uids": [["a"]]}', ["uids.0"]),
        ('{"uids": []}', ["uids"]),
        ('{"uids": ["a", "a"]}', ["uids", "non-unique"]),
        ("a b", ["does not match"]),
    ],
    "Duplicate": [
        (DEEP, ["nested more than"]),
        ('{"uid": 5}', ["uid"]),
        ('{"uid": "a", "position": "middle"}', ["position"]),
        ("{}", ["uid"]),
    ],
    "History": [
        (DEEP, ["nested more than"]),
        ('{"limit": 1e23}', ["limit", "maximum"]),
        ("[]", ["not of type 'object'"]),
        ('{"limit": -1}', ["limit"]),
        ('{"limit": "abc"}', ["limit"]),
        ('{"lmit": 3}', ["lmit"]),
    ],
    # allowed only while a macro runs: sent while one does
    "Pause": [
        (DEEP, ["nested more than"]),
        ('"x"', ["not of type 'object'"]),
        ('{"deferred": "yes"}', ["deferred"]),
        ("[1]", ["not of type 'object'"]),
    ],
    **{
        action: [
            (DEEP, ["nested more than"]),
            ('{"timeout": 0}', ["timeout"]),
            ('{"timeout": 1e23}', ["timeout"]),
            ('{"timeout": "x"}', ["timeout"]),
            ('"x"', ["not of type 'object'"]),
        ]
        for action in ("StopMacro", "AbortMacro", "HaltMacro")
    },
}


def test_every_command_refuses_bad_input_naming_the_field_and_nothing_changes(beamline, queue):
    """Was: RecursionError, AttributeError, OverflowError, TypeError and
    ValueError as PyDs_PythonError; NaN taken as an argument; '[]' taken as
    'no limit'."""
    queue.HistoryClear()
    running = add(queue, *LONG)
    a = add(queue, "ct", 0.01, uid="a")
    queue.Start()
    wait_until(lambda: queue.RunningItem, 20, "the long item running")
    path = db_file(beamline)
    before, file_before = looks(queue), on_file(path)
    assert before[1] == running["uid"] and before[2] == [a["uid"]]
    for command, cases in BAD.items():
        for text, words in cases:
            err = refusal(getattr(queue, command), text)
            what = f"{command}({text[:60]!r}): {err.reason}: {err.desc}"
            assert err.reason == "QUEUE_BAD_INPUT", what
            assert err.desc.startswith(f"{command}: "), what
            for word in words:
                assert word in err.desc, what
            assert looks(queue) == before, what
    assert on_file(path) == file_before
    # a string "nan" for a Float parameter is refused by the macro's validation
    err = refusal(queue.Add, json.dumps({"macro": "ct", "args": ["nan"]}))
    assert err.reason == "QUEUE_REJECTED" and "finite" in err.desc, err.desc
    err = refusal(queue.Add, json.dumps({"macro": "ct", "args": [0.1], "uid": "a"}))
    assert err.reason == "QUEUE_REJECTED" and "own uid" in err.desc, err.desc
    assert looks(queue) == before and on_file(path) == file_before
    queue.AbortMacro(json.dumps({"timeout": 5}))


def test_a_uid_is_text_in_add_and_remove_and_after_a_restart(beamline, queue):
    """Was: an item added with uid 5 could not be removed with Remove("5")
    until the queue restarted."""
    err = refusal(queue.Add, json.dumps({"macro": "ct", "args": [0.1], "uid": 5}))
    assert err.reason == "QUEUE_BAD_INPUT" and "uid: 5 is not of type 'string'" in err.desc
    assert json.loads(queue.Items) == []
    for uid in ("5", "6", "7"):
        add(queue, "ct", 0.01, uid=uid)
    assert [i["uid"] for i in json.loads(queue.Remove("5"))] == ["5"]  # a bare uid
    assert [i["uid"] for i in json.loads(queue.Remove('"6"'))] == ["6"]  # a JSON string
    pid = procs.server_pids(beamline.run_dir, ["ExperimentQueue/queue"])["experimentqueue/queue"]
    os.kill(pid[0], signal.SIGKILL)
    fresh = beamline.proxy(QUEUE, timeout_ms=10000)
    wait_until(lambda: fresh.state() != tango.DevState.INIT, 30, "the queue restarted")
    assert [i["uid"] for i in json.loads(fresh.Items)] == ["7"]
    assert [i["uid"] for i in json.loads(fresh.Remove(json.dumps({"uids": ["7"]})))] == ["7"]


def test_while_a_big_batch_is_added_other_clients_are_answered_and_never_failed_yet_stored(
    beamline, queue
):
    """Was: AddBatch of 20,000 `mv` took 54 s; meanwhile every other client's
    Get and Add timed out, and 7 of those 'failed' Adds were stored all the same."""
    batch_client = beamline.proxy(QUEUE, timeout_ms=120_000)
    other = beamline.proxy(QUEUE)  # Tango's default timeout, 3 s
    items = [{"macro": "mv", "args": ["sample_x", 0.5], "meta": {"n": n}} for n in range(20_000)]
    payload = json.dumps({"items": items, "timeout": 120})
    done = threading.Event()
    result: dict = {}

    def batch():
        try:
            result["added"] = len(json.loads(batch_client.AddBatch(payload)))
        except tango.DevFailed as exc:
            result["error"] = exc.args[0].desc
        finally:
            done.set()

    thread = threading.Thread(target=batch, daemon=True)
    thread.start()
    gets, acked, failed = 0, {}, {}
    n = 0
    while not done.is_set():
        snap = json.loads(other.Get())  # must answer within its normal timeout
        assert "items" in snap
        gets += 1
        n += 1
        try:
            item = add(other, "ct", 0.01, meta={"tag": n})
            acked[n] = item["uid"]
        except tango.DevFailed as exc:
            failed[n] = (exc.args[0].reason, exc.args[0].desc)
    thread.join(10)
    assert result.get("added") == 20_000, result
    assert gets >= 1
    stored = json.loads(other.Get())["items"]
    tags = {i["meta"].get("tag"): i["uid"] for i in stored if "tag" in i["meta"]}
    assert sum(1 for i in stored if "n" in i["meta"]) == 20_000
    for tag, uid in acked.items():
        assert tags.get(tag) == uid, f"Add {tag} acknowledged as {uid} but not stored"
    for tag, why in failed.items():
        assert tag not in tags, f"Add {tag} failed ({why}) yet was stored"
    other.set_timeout_millis(30_000)
    other.Clear()


EDITS = {
    "Add": lambda q: q.Add(
        json.dumps({"macro": "ct", "args": [0.01], "meta": {"pad": "x" * 9000}})
    ),
    "AddBatch": lambda q: q.AddBatch(
        json.dumps({"items": [{"macro": "ct", "args": [0.01]} for _ in range(50)]})
    ),
    "Update": lambda q: q.Update(json.dumps({"uid": "a", "repeat": 3})),
    "Move": lambda q: q.Move(json.dumps({"uid": "c", "position": "front"})),
    "Remove": lambda q: q.Remove(json.dumps({"uids": ["a"]})),
    "Duplicate": lambda q: q.Duplicate("b"),
    "Clear": lambda q: q.Clear(),
}


def test_a_full_disk_refuses_every_edit_saying_so_and_edits_work_again_once_space_returns(
    beamline, queue, tmp_path
):
    """Was: 'sqlite3.OperationalError: cannot rollback - no transaction is
    active' (PyDs_PythonError). The queue's database on a small file system,
    filled up: every edit is refused with the file, the cause and 'nothing
    was changed'; Get and the file read back show the queue as it was; space
    back: an Add works without a restart."""
    db = tango.Database(*beamline.tango_host.split(":"))
    mount = tmp_path / "small"
    with small_disk(mount, "2m"):
        path = mount / "queue.sqlite"
        db.put_device_property(QUEUE, {"Database": [str(path)]})
        try:
            queue.Init()
            wait_until(lambda: queue.state() != tango.DevState.INIT, 20, "the queue on the tmpfs")
            for uid in ("a", "b", "c"):
                add(queue, "ct", 0.01, uid=uid)
            before, file_before = looks(queue), on_file(path)
            assert before[2] == file_before == ["a", "b", "c"]
            filler = fill_disk(mount)
            for name, edit in EDITS.items():
                err = refusal(edit, queue)
                what = f"{name}: {err.reason}: {err.desc}"
                assert err.reason == "QUEUE_STORE_ERROR", what
                assert str(path) in err.desc and "the disk is full" in err.desc, what
                assert "nothing was changed" in err.desc and "free space" in err.desc, what
                assert looks(queue) == before, what
                assert on_file(path) == file_before, what
            filler.unlink()  # space is back: no restart
            item = add(queue, "ct", 0.01, uid="d")
            assert item["uid"] == "d" and on_file(path) == ["a", "b", "c", "d"]
            assert [i["uid"] for i in json.loads(queue.Items)] == ["a", "b", "c", "d"]
        finally:
            db.delete_device_property(QUEUE, ["Database"])
            queue.Init()
            wait_until(lambda: queue.state() != tango.DevState.INIT, 20, "the queue back")
