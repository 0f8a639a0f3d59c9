"""The experiment queue on the real beamline: validation, runs, history,
interlocks, readiness and a kill -9 of the queue server mid-item."""

from __future__ import annotations

import json
import os
import signal

import pytest
import tango

from beamline import procs
from tests.helpers import wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]

QUEUE = "bl01/sys/queue"


def add(q, macro, *args, repeat=1, meta=None, position="back"):
    spec = {"macro": macro, "args": list(args), "repeat": repeat, "position": position}
    if meta:
        spec["meta"] = meta
    return json.loads(q.Add(json.dumps(spec)))


def history(q):
    return json.loads(q.History(""))


def wait_idle(q, timeout=120):
    wait_until(
        lambda: q.QueueState == "idle" and q.QueueLength == 0 and not q.RunningItem,
        timeout,
        "the queue to run everything",
    )


def rejected(fn, *args) -> str:
    with pytest.raises(tango.DevFailed) as info:
        fn(*args)
    return info.value.args[0].desc


def test_bad_items_are_rejected_and_change_nothing(queue):
    before = queue.QueueLength
    assert "no macro 'nosuch'" in rejected(queue.Add, json.dumps({"macro": "nosuch"}))
    text = rejected(queue.Add, json.dumps({"macro": "ascan", "args": ["sample_x", 0]}))
    assert "ascan needs" in text and "missing" in text
    text = rejected(queue.Add, json.dumps({"macro": "ct", "args": ["fast"]}))
    assert "must be Float" in text and "'fast'" in text
    text = rejected(queue.Add, json.dumps({"macro": "mv", "args": ["nomotor", 1]}))
    assert "nomotor" in text
    assert "not valid JSON" in rejected(queue.Add, "{macro: ct")
    batch = {"items": [{"macro": "ct", "args": [0.01]}, {"macro": "ct", "args": ["x"]}]}
    assert "item 1" in rejected(queue.AddBatch, json.dumps(batch))
    assert queue.QueueLength == before
    assert "no item with uid" in rejected(queue.Remove, json.dumps({"uids": ["nope"]}))
    assert "limit: 'abc' is not of type 'integer'" in rejected(
        queue.History, json.dumps({"limit": "abc"})
    )
    bare = add(queue, "ct", 0.01)
    assert json.loads(queue.Remove(bare["uid"]))[0]["uid"] == bare["uid"]  # a bare uid
    assert queue.QueueLength == before


def test_items_run_in_order_with_repeats_and_history(queue):
    queue.HistoryClear()
    a = add(queue, "ct", 0.01, repeat=2)
    b = add(queue, "ascan", "sample_x", 0, 0.2, 2, 0.01)
    c = add(queue, "ct", 0.02, position="front")
    queue.Move(json.dumps({"uid": b["uid"], "position": {"before": a["uid"]}}))
    order = [i["uid"] for i in json.loads(queue.Items)]
    assert order == [c["uid"], b["uid"], a["uid"]]
    queue.Start()
    wait_idle(queue)
    done = history(queue)
    assert [h["uid"] for h in done] == order
    assert all(h["outcome"] == "finished" for h in done), done
    assert done[-1]["repetitions_done"] == 2
    assert all(h["ended"] >= h["started"] for h in done)


def test_an_interlock_holds_the_queue_until_it_clears(beamline, queue):
    queue.HistoryClear()
    beamline.cli("sim", "fault", "ioc1", "vacuum_leak")
    try:
        wait_until(
            lambda: beamline.proxy("bl01/vac/gauge1").state() == tango.DevState.ALARM,
            20,
            "the vacuum alarm",
        )
        item = add(queue, "ct", 0.01)
        queue.Start()
        wait_until(lambda: "vacuum" in queue.BlockedBy, 10, "BlockedBy naming the interlock")
        assert queue.QueueLength == 1 and history(queue) == []
    finally:
        beamline.cli("sim", "clear", "ioc1")
    wait_idle(queue, 60)
    assert queue.BlockedBy == ""
    assert [h["uid"] for h in history(queue)] == [item["uid"]]


def test_an_item_whose_device_is_down_fails_or_waits_by_policy(beamline, queue):
    queue.HistoryClear()
    beamline.cli("stop", "Motor/sample_y")
    try:
        failing = add(queue, "mv", "sample_y", 0.5, meta={"on_device_down": "fail"})
        waiting = add(queue, "mv", "sample_y", 0.6)
        other = add(queue, "ct", 0.01)
        queue.Start()
        wait_until(
            lambda: {h["uid"] for h in history(queue)} >= {failing["uid"], other["uid"]},
            60,
            "the failing item recorded and the next item run",
            on_timeout=lambda: f"queue: {queue.Get()} history: {history(queue)}",
        )
        by_uid = {h["uid"]: h for h in history(queue)}
        assert by_uid[failing["uid"]]["outcome"] == "failed"
        assert "sample_y" in by_uid[failing["uid"]]["error"]
        assert by_uid[other["uid"]]["outcome"] == "finished"
        assert waiting["uid"] not in by_uid  # still waiting for its device
        # (the runner looks at the waiting item again once the other has run)
        wait_until(lambda: "sample_y" in queue.BlockedBy, 20, "BlockedBy naming sample_y")
    finally:
        beamline.cli("start", "Motor/sample_y")
    wait_idle(queue, 60)
    assert history(queue)[-1]["uid"] == waiting["uid"]


def test_kill_the_queue_mid_item_nothing_lost_or_run_twice(beamline, queue):
    queue.HistoryClear()
    long = add(queue, "ascan", "sample_x", 0, 1, 20, 0.1)
    after = add(queue, "ct", 0.01)
    queue.Start()
    wait_until(lambda: queue.RunningItem, 20, "the long item running")
    pid = procs.server_pids(beamline.run_dir, ["ExperimentQueue/queue"])["experimentqueue/queue"][0]
    os.kill(pid, signal.SIGKILL)
    fresh = beamline.proxy(QUEUE, timeout_ms=10000)

    def back():
        fresh.ping()
        return fresh.state() != tango.DevState.INIT

    wait_until(back, 30, "the queue restarted by the supervisor")
    wait_until(
        lambda: len(json.loads(fresh.History(""))) == 2 and fresh.QueueLength == 0,
        120,
        "both items in the history",
    )
    done = json.loads(fresh.History(""))
    assert [h["uid"] for h in done] == [long["uid"], after["uid"]]
    assert done[0]["outcome"] in ("finished", "unknown") and "reconciled" in done[0]["error"]
    assert done[1]["outcome"] == "finished"


LONG = ("ascan", "sample_x", 0, 1, 30, 0.1)


def test_pause_resume_stop_and_stop_cancel(beamline, queue):
    queue.HistoryClear()
    door = beamline.proxy("bl01/sardana/door")
    first = add(queue, *LONG)
    second = add(queue, "ct", 0.01)
    queue.Start()
    wait_until(lambda: queue.RunningItem, 20, "the first item running")
    queue.Pause("")
    wait_until(lambda: door.state() == tango.DevState.STANDBY, 10, "the Door paused")
    assert queue.QueueState == "paused" and queue.state() == tango.DevState.STANDBY
    queue.Resume()
    wait_until(lambda: door.state() == tango.DevState.RUNNING, 10, "the Door running again")
    queue.Stop()  # after the current item
    assert queue.QueueState == "stopping"
    queue.StopCancel()
    assert queue.QueueState == "running"
    queue.Pause(json.dumps({"deferred": True}))
    wait_until(
        lambda: queue.QueueState == "paused" and not queue.RunningItem, 60, "paused after it"
    )
    assert [h["uid"] for h in history(queue)] == [first["uid"]]
    assert history(queue)[0]["outcome"] == "finished" and queue.QueueLength == 1
    queue.Resume()
    queue.Start()
    wait_idle(queue)
    assert [h["uid"] for h in history(queue)] == [first["uid"], second["uid"]]


@pytest.mark.parametrize("action,outcome", [("StopMacro", "stopped"), ("AbortMacro", "aborted")])
def test_stop_or_abort_the_running_macro(beamline, queue, action, outcome):
    queue.HistoryClear()
    running = add(queue, *LONG)
    waiting = add(queue, "ct", 0.01)
    queue.Start()
    wait_until(lambda: queue.RunningItem, 20, "the item running")
    with pytest.raises(tango.DevFailed) as bad:
        getattr(queue, action)(json.dumps({"timeout": "x"}))
    assert bad.value.args[0].reason == "QUEUE_BAD_INPUT"
    assert "timeout: 'x' is not of type 'number'" in bad.value.args[0].desc
    assert json.loads(queue.RunningItem)["uid"] == running["uid"]  # the bad one changed nothing
    queue.set_timeout_millis(120000)  # the escalation's last step restarts Sardana
    step = json.loads(getattr(queue, action)(json.dumps({"timeout": 5})))
    wait_until(lambda: not queue.RunningItem, 60, "the item ended")
    (entry,) = history(queue)
    assert entry["uid"] == running["uid"]
    if step == "restart":
        # Sardana's abort can hang (sardana #978, #1619): the last step of the
        # escalation restarted it, and the item is recorded as lost
        assert entry["outcome"] == "lost"
        wait_until(
            lambda: beamline.proxy("bl01/sardana/door").state() == tango.DevState.ON,
            120,
            "the Door ready after the restart",
        )
    else:
        assert step == action.lower().replace("macro", "")
        assert entry["outcome"] == outcome
    # the queue stops: the next item waits for an operator
    assert queue.QueueState == "idle" and json.loads(queue.Items)[0]["uid"] == waiting["uid"]
    assert beamline.proxy("bl01/sardana/door").state() == tango.DevState.ON
    queue.Clear()


def test_kill_sardana_mid_item_recorded_as_lost_then_the_queue_runs_again(beamline, queue):
    queue.HistoryClear()
    running = add(queue, *LONG)
    nxt = add(queue, "ct", 0.01)
    queue.Start()
    wait_until(lambda: queue.RunningItem, 20, "the item running")
    pid = procs.server_pids(beamline.run_dir, ["Sardana/bl01"])["sardana/bl01"][0]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: history(queue), 30, "the running item recorded")
    (entry,) = history(queue)
    assert entry["uid"] == running["uid"] and entry["outcome"] == "lost"
    assert "bl01/sardana/door" in entry["error"]
    assert queue.QueueState == "idle" and "lost" in queue.LastError
    door = beamline.proxy("bl01/sardana/door")
    wait_until(lambda: door.state() == tango.DevState.ON, 60, "Sardana restored")
    queue.Start()
    wait_idle(queue, 60)
    assert [h["uid"] for h in history(queue)] == [running["uid"], nxt["uid"]]
    assert history(queue)[1]["outcome"] == "finished"


def test_kill_the_queue_and_sardana_together_mid_item(beamline, queue):
    queue.HistoryClear()
    running = add(queue, *LONG)
    nxt = add(queue, "ct", 0.01)
    queue.Start()
    wait_until(lambda: queue.RunningItem, 20, "the item running")
    pids = procs.server_pids(beamline.run_dir, ["ExperimentQueue/queue", "Sardana/bl01"])
    for pid in (pids["experimentqueue/queue"][0], pids["sardana/bl01"][0]):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: history(queue), 60, "the interrupted item reconciled")
    (entry,) = history(queue)
    assert entry["uid"] == running["uid"]
    assert entry["outcome"] in ("unknown", "lost"), entry
    assert json.loads(queue.Items)[0]["uid"] == nxt["uid"]  # not lost, not started
    door = beamline.proxy("bl01/sardana/door")
    wait_until(lambda: door.state() == tango.DevState.ON, 60, "Sardana restored")
    queue.Start()
    wait_idle(queue, 60)
    assert [h["uid"] for h in history(queue)] == [running["uid"], nxt["uid"]]


def test_update_remove_clear_and_progress_events(beamline, queue):
    queue.HistoryClear()
    a = add(queue, "ct", 0.01)
    b = add(queue, "ct", 0.02)
    updated = json.loads(queue.Update(json.dumps({"uid": a["uid"], "repeat": 3})))
    assert updated["repeat"] == 3 and updated["uid"] == a["uid"]
    text = rejected(queue.Update, json.dumps({"uid": a["uid"], "args": ["x"]}))
    assert "must be Float" in text
    assert json.loads(queue.Items)[0]["repeat"] == 3  # the rejected update changed nothing
    removed = json.loads(queue.Remove(json.dumps({"uids": [b["uid"]]})))
    assert [r["uid"] for r in removed] == [b["uid"]] and queue.QueueLength == 1
    assert json.loads(queue.Clear()) == 1 and queue.QueueLength == 0

    progress = []
    sid = queue.subscribe_event(
        "RunningItem",
        tango.EventType.CHANGE_EVENT,
        lambda ev: (
            progress.append(json.loads(ev.attr_value.value)["progress"])
            if not ev.err and ev.attr_value.value
            else None
        ),
    )
    try:
        add(queue, *LONG)
        queue.Start()
        wait_until(lambda: any(0 < p < 100 for p in progress), 30, "progress events mid-scan")
        wait_idle(queue)
    finally:
        queue.unsubscribe_event(sid)


def test_kill_the_queue_idle_and_between_items_loses_nothing(beamline, queue):
    queue.HistoryClear()
    items = [add(queue, "ct", 0.01) for _ in range(3)]

    def kill_queue():
        pid = procs.server_pids(beamline.run_dir, ["ExperimentQueue/queue"])
        os.kill(pid["experimentqueue/queue"][0], signal.SIGKILL)
        wait_until(lambda: queue.ping() >= 0 and queue.QueueLength >= 0, 30, "the queue back")

    kill_queue()  # idle: every item still queued, in order
    assert [i["uid"] for i in json.loads(queue.Items)] == [i["uid"] for i in items]
    queue.Start()
    wait_until(lambda: len(history(queue)) >= 1, 30, "one item done")
    kill_queue()  # between (or during) items
    queue_state = queue.QueueState
    if queue_state == "idle" and queue.QueueLength:
        queue.Start()
    wait_idle(queue, 60)
    assert [h["uid"] for h in history(queue)] == [i["uid"] for i in items]


def test_a_continuous_scan_runs_from_the_queue(beamline, queue):
    """ascanct from the queue on the gated group: every point on a pulse."""
    queue.HistoryClear()
    items = [
        add(queue, "senv", "ActiveMntGrp", "mg_cont"),
        add(queue, "ascanct", "sample_x", 0, 0.5, 20, 0.01),
        add(queue, "senv", "ActiveMntGrp", "mg_bl01"),
    ]
    queue.Start()
    wait_idle(queue)
    done = history(queue)
    assert [h["uid"] for h in done] == [i["uid"] for i in items]
    assert all(h["outcome"] == "finished" for h in done), done
    # the last train and the last buffer are this scan's: 21 points, 21 gates
    assert beamline.proxy("bl01/tim/tg1").PulsesSent == 21
    scaler = beamline.proxy("bl01/ct/scaler")
    assert scaler.PointsTaken == 21 and scaler.MissedGates == 0
