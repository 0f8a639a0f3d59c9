"""`beamline queue` against the real queue on a real beamline: every command,
tables and --json, and bad input (exit code 2 with the queue's reason, never
a traceback). The CLI finds the database through the run directory."""

from __future__ import annotations

import json
import subprocess

import pytest
import tango

from tests.helpers import BEAMLINE, wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]

QUEUE = "bl01/sys/queue"
LONG = ("ascan", "sample_x", "0", "1", "100", "0.1")  # ~15 s: ended early by the tests


@pytest.fixture(autouse=True)
def _no_history(request):
    """Each test starts with no history (and, by the conftest, an idle, empty queue)."""
    if "queue" in request.fixturenames:
        request.getfixturevalue("queue").HistoryClear()


def run(beamline, *args: str) -> subprocess.CompletedProcess:
    return beamline.cli("queue", *args, check=False, timeout=120)


def ok(beamline, *args: str) -> str:
    proc = run(beamline, *args)
    assert proc.returncode == 0, f"queue {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def js(beamline, *args: str):
    return json.loads(ok(beamline, *args, "--json"))


def refused(beamline, *args: str, code: int = 2) -> str:
    """The command fails with ``code`` and a message, not a traceback."""
    proc = run(beamline, *args)
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.stderr


def order(beamline) -> list[str]:
    return [i["uid"] for i in js(beamline, "list")["items"]]


def test_add_list_move_remove_clear(beamline, queue):
    a = js(beamline, "add", "ct", "0.01", "--repeat", "2", "--meta", "sample=A1", "--meta", "t=300")
    assert (a["macro"], a["args"], a["repeat"]) == ("ct", ["0.01"], 2)
    assert a["meta"] == {"sample": "A1", "t": 300}
    b = js(
        beamline,
        "add",
        "ascan",
        "sample_x",
        "0",
        "0.2",
        "2",
        "0.01",
        "--position",
        "front",
        "--on-device-down",
        "fail",
    )
    assert b["meta"] == {"on_device_down": "fail"}
    c = js(beamline, "add", "ct", "0.02", "--position", f"after:{b['uid']}")
    d = js(beamline, "add", "mv", "sample_x", "-0.5")  # a negative number is an argument
    assert d["args"] == ["sample_x", "-0.5"]
    assert order(beamline) == [b["uid"], c["uid"], a["uid"], d["uid"]]
    assert queue.QueueLength == 4

    table = ok(beamline, "list")
    assert "queue idle: 4 item(s) waiting" in table
    for item in (a, b, c, d):
        assert item["uid"] in table
    assert "ascan sample_x 0 0.2 2 0.01" in table and "sample=A1, t=300" in table
    assert "on_device_down=fail" in table
    assert "item(s) waiting" in ok(beamline, "list", "--limit", "1")
    assert "3 more item(s)" in ok(beamline, "list", "--limit", "1")

    assert f"moved {d['uid']} to position 0 of 4" in ok(beamline, "move", d["uid"], "front")
    assert js(beamline, "move", b["uid"], "back") == {"uid": b["uid"], "index": 3, "length": 4}
    ok(beamline, "move", a["uid"], f"before:{c['uid']}")
    assert order(beamline) == [d["uid"], a["uid"], c["uid"], b["uid"]]
    ok(beamline, "move", b["uid"], "1")
    assert order(beamline) == [d["uid"], b["uid"], a["uid"], c["uid"]]

    out = ok(beamline, "remove", d["uid"], c["uid"])
    assert f"removed {d['uid']}: mv sample_x -0.5" in out and c["uid"] in out
    removed = js(beamline, "remove", b["uid"])
    assert [r["uid"] for r in removed] == [b["uid"]]
    assert order(beamline) == [a["uid"]]
    assert js(beamline, "clear") == {"removed": 1}
    assert "cleared 0 item(s)" in ok(beamline, "clear")
    assert queue.QueueLength == 0


def test_duplicate_a_queued_and_a_finished_item(beamline, queue):
    a = js(beamline, "add", "ct", "0.01", "--repeat", "2", "--meta", "sample=A1")
    b = js(beamline, "add", "ct", "0.02")
    out = ok(beamline, "duplicate", a["uid"])
    assert f"(copy of {a['uid']}): ct 0.01 x2" in out
    copy_uid = out.split()[1]
    assert order(beamline) == [a["uid"], copy_uid, b["uid"]]
    copy = next(i for i in js(beamline, "list")["items"] if i["uid"] == copy_uid)
    assert (copy["macro"], copy["args"], copy["repeat"], copy["meta"]) == (
        "ct",
        ["0.01"],
        2,
        {"sample": "A1"},
    )
    front = js(beamline, "duplicate", b["uid"], "--position", "front")
    assert order(beamline) == [front["uid"], a["uid"], copy_uid, b["uid"]]
    assert "no item with uid 'nope'" in refused(beamline, "duplicate", "nope")
    assert len(order(beamline)) == 4  # a refused copy added nothing
    ok(beamline, "clear")
    ok(beamline, "add", "ct", "0.01")
    ok(beamline, "start")
    wait_until(
        lambda: len(js(beamline, "history")) == 1 and queue.QueueState == "idle",
        60,
        "the item run",
    )
    (done,) = js(beamline, "history")
    again = js(beamline, "duplicate", done["uid"])  # from the history: to the back
    assert order(beamline) == [again["uid"]] and again["args"] == ["0.01"]


def test_queue_logger_and_supervisor_publish_their_tables(beamline, queue):
    from tango_devices.logger.states import LOGGER_TABLE
    from tango_devices.queue.states import QUEUE_TABLE
    from tango_devices.supervisor.states import SUPERVISOR_TABLE

    for device, table in (
        (queue, QUEUE_TABLE),
        (beamline.proxy("bl01/sys/logger"), LOGGER_TABLE),
        (beamline.proxy("bl01/sys/supervisor"), SUPERVISOR_TABLE),
    ):
        assert json.loads(device.CommandStates) == table.command_states(), device.dev_name()
    # the queue's refusals come from its table, with its reason
    with pytest.raises(tango.DevFailed) as refused_resume:
        queue.Resume()
    err = refused_resume.value.args[0]
    assert err.reason == "API_CommandNotAllowed"
    assert err.desc.startswith("Resume is not allowed in state idle (the queue is not paused)")


def test_add_batch_from_json_and_yaml_then_start_and_history(beamline, queue, tmp_path):
    as_json = tmp_path / "batch.json"
    as_json.write_text(
        json.dumps([{"macro": "ct", "args": [0.01], "repeat": 2, "meta": {"n": 1}}, "ct 0.02"])
    )
    as_yaml = tmp_path / "batch.yaml"
    as_yaml.write_text(
        "position: front\n"
        "items:\n"
        "  - macro: ascan\n"
        "    args: [sample_x, 0, 0.2, 2, 0.01]\n"
        "  - mv sample_x 0.1\n"
    )
    first = js(beamline, "add-batch", str(as_json))
    assert [i["args"] for i in first] == [["0.01"], ["0.02"]] and first[0]["repeat"] == 2
    out = ok(beamline, "add-batch", str(as_yaml))
    assert "added 2 item(s)" in out and "ascan sample_x 0 0.2 2 0.01" in out
    listed = js(beamline, "list")["items"]
    assert [i["macro"] for i in listed] == ["ascan", "mv", "ct", "ct"]  # the file's position
    expected = [i["uid"] for i in listed]

    assert js(beamline, "start") == {"command": "Start", "state": "running"}
    wait_until(
        lambda: len(js(beamline, "history")) == 4 and queue.QueueState == "idle",
        120,
        "the four items run",
        on_timeout=lambda: ok(beamline, "list") + ok(beamline, "history"),
    )
    done = js(beamline, "history")
    assert [h["uid"] for h in done] == expected
    assert all(h["outcome"] == "finished" for h in done), done
    assert done[2]["repetitions_done"] == 2 and done[2]["meta"] == {"n": 1}
    table = ok(beamline, "history")
    assert table.count("finished") == 4 and "2/2" in table and expected[0] in table
    assert [h["uid"] for h in js(beamline, "history", "--limit", "1")] == [expected[-1]]
    assert "queue idle: 0 item(s) waiting" in ok(beamline, "list")

    assert "cleared 4 history entries" in ok(beamline, "history-clear")
    assert js(beamline, "history") == [] and "no history" in ok(beamline, "history")
    assert js(beamline, "history-clear") == {"removed": 0}


def test_pause_resume_stop_and_abort_the_running_macro(beamline, queue):
    long = js(beamline, "add", *LONG)
    nxt = js(beamline, "add", "ct", "0.01")
    ok(beamline, "start")
    wait_until(lambda: queue.RunningItem, 20, "the long item running")
    running = js(beamline, "list")["running"]
    assert running["uid"] == long["uid"] and running["repetition"] == 1
    assert f"running {long['uid']}: ascan sample_x 0 1 100 0.1" in ok(beamline, "list")

    assert "the queue is paused" in ok(beamline, "pause")
    door = beamline.proxy("bl01/sardana/door")
    wait_until(lambda: door.state() == tango.DevState.STANDBY, 10, "the Door paused")
    assert js(beamline, "resume") == {"command": "Resume", "state": "running"}
    assert "the queue is stopping" in ok(beamline, "stop")
    assert js(beamline, "stop-cancel")["state"] == "running"
    ok(beamline, "pause", "--deferred")
    assert "pauses after the current item" in ok(beamline, "list")
    ok(beamline, "resume")  # cancels the deferred pause

    # (20 s per escalation step: Sardana ends an ascan slowly on a loaded machine)
    assert js(beamline, "abort", "--timeout", "20") == {
        "command": "AbortMacro",
        "ended_by": "abort",
    }
    wait_until(lambda: js(beamline, "history"), 20, "the aborted item recorded")
    (entry,) = js(beamline, "history")
    assert (entry["uid"], entry["outcome"]) == (long["uid"], "aborted")
    assert "aborted" in ok(beamline, "history")
    listed = js(beamline, "list")
    assert listed["state"] == "idle" and [i["uid"] for i in listed["items"]] == [nxt["uid"]]
    assert "aborted" in listed["last_error"] and "last error" in ok(beamline, "list")


def test_stop_macro_and_halt_end_the_running_macro(beamline, queue):
    js(beamline, "add", *LONG)
    ok(beamline, "start")
    wait_until(lambda: queue.RunningItem, 20, "the item running")
    assert "the running macro ended after stop" in ok(beamline, "stop-macro", "--timeout", "20")
    wait_until(lambda: not queue.RunningItem, 20, "the item ended")
    assert js(beamline, "history")[0]["outcome"] == "stopped"
    assert "no macro is running" in refused(beamline, "halt")


def test_bad_input_is_refused_with_the_reason_and_changes_nothing(beamline, queue, tmp_path):
    keep = js(beamline, "add", "ct", "0.01")
    err = refused(beamline, "add", "nosuch")
    assert "error: Add:" in err and "no macro 'nosuch'" in err
    assert "must be Float" in refused(beamline, "add", "ct", "fast")
    assert "ascan needs" in refused(beamline, "add", "ascan", "sample_x", "0")
    assert "nomotor" in refused(beamline, "add", "mv", "nomotor", "1")
    assert "no item with uid 'nope'" in refused(
        beamline, "add", "ct", "1", "--position", "before:nope"
    )
    assert "outside the queue" in refused(beamline, "add", "ct", "1", "--position", "7")
    assert "--position" in refused(beamline, "add", "ct", "1", "--position", "middle")
    assert "POSITION" in refused(beamline, "move", keep["uid"], "middle")
    assert "KEY=VALUE" in refused(beamline, "add", "ct", "1", "--meta", "novalue")
    assert "--repeat" in refused(beamline, "add", "ct", "1", "--repeat", "0")
    err = refused(beamline, "add", "ct", "1", "--repet", "2")
    assert "No such option" in err and "--repeat" in err

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"macro": "ct", "args": [0.1]},')
    assert "not valid JSON" in refused(beamline, "add-batch", str(bad_json))
    empty = tmp_path / "empty.yaml"
    empty.write_text("[]\n")
    assert "non-empty list" in refused(beamline, "add-batch", str(empty))
    one_bad = tmp_path / "one_bad.json"
    one_bad.write_text(json.dumps(["ct 0.01", "ct 0.02", {"macro": "ct", "args": ["x"]}]))
    err = refused(beamline, "add-batch", str(one_bad))
    assert "item 2" in err and "must be Float" in err
    assert "cannot read" in refused(beamline, "add-batch", str(tmp_path / "missing.json"))

    assert "no item with uid 'nope'" in refused(beamline, "remove", keep["uid"], "nope")
    assert "no item with uid 'nope'" in refused(beamline, "move", "nope", "front")
    assert "not paused" in refused(beamline, "resume")
    assert "no stop is pending" in refused(beamline, "stop-cancel")
    assert "nothing to pause" in refused(beamline, "pause")
    assert "no macro is running" in refused(beamline, "abort")
    assert order(beamline) == [keep["uid"]]  # nothing was added or removed

    err = refused(beamline, "--device", "bl01/sys/nosuch", "list", code=1)
    assert "bl01/sys/nosuch does not answer" in err


def test_without_a_beamline_or_tango_host_it_says_what_to_do(beamline, tmp_path):
    env = beamline.env()
    proc = subprocess.run(
        [BEAMLINE, "--run-dir", str(tmp_path / "nothing"), "queue", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "no Tango database" in proc.stderr
    assert "Traceback" not in proc.stderr
    # TANGO_HOST alone is enough
    proc = subprocess.run(
        [BEAMLINE, "--run-dir", str(tmp_path / "nothing"), "queue", "list", "--json"],
        env={**env, "TANGO_HOST": beamline.tango_host},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] in ("idle", "running")
