"""The data logger on the real beamline: real Starter, real servers, real
events. A move comes back from GetHistory exactly as the motor published it;
a changed limit or offset shows in GetConfigurationAt exactly where it
changed; a logger killed with SIGKILL in the middle of a write (a test hook,
and a plain kill -9 from outside) leaves files that all open, with every
event up to its last flush, and carries on after the supervisor restarts it,
with the gap on record. Bad input to any command is refused with a reason of
ours; a full disk is ALARM with the reason, and the logger recovers by itself.

The beamline runs with BEAMLINE_TEST_HOOKS=1 (TestKillMidWrite)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import h5py
import psutil
import pytest
import tango

from tango_devices.logger import seal
from tango_devices.logger.configuration import diff
from tango_devices.logger.reader import ArchiveReader
from tango_devices.logger.store import FORMAT, list_files, open_for_read
from tests.helpers import running_beamline, wait_until
from tests.system.conftest import Events, fill_disk, small_disk, wait_state

pytestmark = [pytest.mark.system, pytest.mark.slow]

S = tango.DevState
LOGGER = "bl01/sys/logger"


@pytest.fixture(scope="module")
def bl(tmp_path_factory):
    with running_beamline(tmp_path_factory.mktemp("logger"), hooks=True) as run:
        logger = run.proxy(LOGGER, timeout_ms=15000)
        wait_until(lambda: logger.state() == S.ON, 30, "the logger ON")
        wait_until(
            lambda: (
                {"bl01/mot/sample_x", "bl01/mot/sample_y", "bl01/mot/det_z", "bl01/det/cam1"}
                <= connected(logger)
            ),
            60,
            "the logger subscribed to the motors and the camera",
        )
        yield run


def connected(logger) -> set[str]:
    return {d["device"] for d in json.loads(logger.Report)["devices"] if d["connected"]}


def history(logger, name, start, end="now", max_points=0) -> dict:
    args = {"attribute": name, "start": start, "end": end, "max_points": max_points}
    return json.loads(logger.GetHistory(json.dumps(args)))


def config_at(logger, device, t) -> dict:
    return json.loads(logger.GetConfigurationAt(json.dumps({"device": device, "time": t})))


def logger_pid(run) -> int:
    for p in psutil.process_iter(["cmdline"]):
        c = p.info["cmdline"] or []
        if len(c) >= 3 and c[1].endswith("/DataLogger") and c[2] == "logger":
            with contextlib.suppress(psutil.Error):
                if p.environ().get("BEAMLINE_RUN_DIR") == str(run.run_dir):
                    return p.pid
    raise AssertionError("no DataLogger process")


# ------------------------------------------------------------- history
def test_a_move_comes_back_from_get_history_as_the_motor_published_it(bl):
    logger = bl.proxy(LOGGER, timeout_ms=15000)
    motor = bl.proxy("bl01/mot/sample_x")
    wait_state(motor, S.ON, 20)
    seen = Events(motor, "Position")
    try:
        t0 = time.time()
        motor.Position = 2.0
        wait_until(lambda: motor.state() == S.MOVING or motor.Position == 2.0, 5, "a move")
        wait_state(motor, S.ON, 20)
        motor.Position = 0.5
        wait_state(motor, S.ON, 20)
        wait_until(
            lambda: seen.items and seen.items[-1].value == pytest.approx(0.5), 5, "last event"
        )
        mine = [item for item in seen.records() if item[0] >= t0]
        out = wait_until(
            lambda: (
                (h := history(logger, "bl01/mot/sample_x/Position", t0))["count"] >= len(mine) and h
            ),
            10,
            "the move in the archive",
        )
    finally:
        seen.close()
    archived = list(zip(out["times"], out["values"], out["qualities"], strict=True))
    for t, value, quality in mine:  # every event the motor published, same time, value, quality
        assert (t, pytest.approx(value), quality) in archived, (t, value, quality)
    values = out["values"]
    assert max(values) == pytest.approx(2.0) and values[-1] == pytest.approx(0.5)
    assert "CHANGING" in out["qualities"] and out["qualities"][-1] == "VALID"
    assert out["times"] == sorted(out["times"]) and out["unit"] == "mm"
    # more points than asked: decimated, keeping the extremes
    small = history(logger, "bl01/mot/sample_x/Position", t0, max_points=4)
    assert small["decimated"] and small["returned"] <= 4 and small["count"] == out["count"]
    assert max(small["values"]) == pytest.approx(2.0)


def test_the_history_cli_asks_the_logger_and_reads_the_files(bl):
    out = json.loads(
        bl.cli("history", "get", "bl01/mot/sample_x/Position", "--start", "-1h", "--json").stdout
    )
    assert out["count"] >= 2 and out["values"][-1] == pytest.approx(0.5)
    text = bl.cli("history", "get", "bl01/mot/sample_x/Position", "--start", "-1h").stdout
    assert "bl01/mot/sample_x/Position [mm]" in text and "VALID" in text
    offline = json.loads(
        bl.cli(
            "history",
            "get",
            "bl01/mot/sample_x/Position",
            "--dir",
            str(bl.run_dir / "archive"),
            "--json",
        ).stdout
    )  # the same answer from the files (read as a SWMR reader while the logger writes)
    assert offline["values"][-1] == pytest.approx(0.5)
    config = bl.cli("history", "config", "bl01/mot/sample_x").stdout
    assert "Position" in config and "Port" in config
    bad = bl.cli("history", "get", "bl01/mot/sample_x/Nothing", check=False)
    assert bad.returncode == 2 and "not archived" in bad.stderr


# ------------------------------------------------------- configuration
def test_a_changed_limit_differs_exactly_there(bl):
    logger = bl.proxy(LOGGER, timeout_ms=15000)
    motor = bl.proxy("bl01/mot/sample_y")
    info = motor.get_attribute_config("Position")
    old_max = info.max_value
    wait_until(
        lambda: config_at(logger, "bl01/mot/sample_y", time.time())["properties"],
        15,
        "sample_y's properties in the archive",
    )
    before_t = time.time()
    wait_until(
        lambda: config_at(logger, "bl01/mot/sample_y", before_t)["attributes"]["Position"][
            "config"
        ],
        10,
        "sample_y's configuration in the archive",
    )
    info.max_value = "15"
    motor.set_attribute_config(info)
    try:

        def changed():
            now = time.time()
            a = config_at(logger, "bl01/mot/sample_y", now)["attributes"]["Position"]
            return (
                a["config"]["max_value"] == "15" and a["properties"].get("max_value") == ["15"]
            ) and now

        after_t = wait_until(changed, 15, "the new limit and its database property archived")
        before = config_at(logger, "bl01/mot/sample_y", before_t)
        after = config_at(logger, "bl01/mot/sample_y", after_t)
        assert diff(before, after) == {
            "attributes.Position.config.max_value": {"before": old_max, "after": "15"},
            "attributes.Position.properties.max_value": {"before": [old_max], "after": ["15"]},
        }
        # the CLI says the same
        cli = json.loads(
            bl.cli(
                "history", "diff", "bl01/mot/sample_y", str(before_t), str(after_t), "--json"
            ).stdout
        )
        assert set(cli) == {
            "attributes.Position.config.max_value",
            "attributes.Position.properties.max_value",
        }
    finally:
        info.max_value = old_max
        motor.set_attribute_config(info)


def test_a_changed_offset_differs_exactly_there(bl):
    logger = bl.proxy(LOGGER, timeout_ms=15000)
    motor = bl.proxy("bl01/mot/det_z")
    wait_state(motor, S.ON, 20)
    old = motor.Offset
    wait_until(
        lambda: config_at(logger, "bl01/mot/det_z", time.time())["properties"],
        15,
        "det_z's properties in the archive",
    )
    before_t = time.time()
    wait_until(
        lambda: (
            config_at(logger, "bl01/mot/det_z", before_t)["attributes"]["Offset"]["value"]
            == pytest.approx(old)
        ),
        10,
        "det_z's offset in the archive",
    )
    motor.Offset = old + 0.25
    try:

        def changed():
            now = time.time()
            a = config_at(logger, "bl01/mot/det_z", now)["attributes"]
            offset = a["Offset"]
            memorized = offset["properties"].get("__value", ["nan"])[0]
            return (
                offset["value"] == pytest.approx(old + 0.25)
                and float(memorized) == pytest.approx(old + 0.25)
                and now
            )

        after_t = wait_until(changed, 15, "the new offset and its memorized value archived")
        before = config_at(logger, "bl01/mot/det_z", before_t)
        after = config_at(logger, "bl01/mot/det_z", after_t)
        changes = diff(before, after)
        assert set(changes) == {
            "attributes.Offset.value",
            "attributes.Offset.properties.__value",
            "attributes.Position.value",
        }, changes
        position = changes["attributes.Position.value"]
        assert position["after"] - position["before"] == pytest.approx(0.25)
    finally:
        motor.Offset = old


def test_hardware_devices_are_archived_from_events_with_nothing_read_every_second(bl):
    """Every attribute of a motor, the scaler and the camera reaches the
    logger as events (no read of each every second per device: at 200 servers
    that was 1,500 reads a second)."""
    logger = bl.proxy(LOGGER, timeout_ms=15000)
    devices = ("bl01/mot/det_z", "bl01/ct/scaler", "bl01/det/cam1")

    def modes():
        rows = json.loads(logger.read_attribute("Report").value)["devices"]
        found = {r["device"]: r["attributes"] for r in rows if r["device"] in devices}
        return found if len(found) == len(devices) and all(found.values()) else None

    found = wait_until(modes, 30, "the logger to describe the devices")
    polled = {d: sorted(a for a, m in attrs.items() if m == "poll") for d, attrs in found.items()}
    assert polled == {d: [] for d in devices}, polled
    assert found["bl01/mot/det_z"]["Velocity"] == "change"


# ------------------------------------------------------------ restarts
def test_a_restarted_device_is_archived_again_at_once(bl):
    logger = bl.proxy(LOGGER, timeout_ms=15000)
    motor = bl.proxy("bl01/mot/sample_x")
    pid = next(
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (c := p.info["cmdline"] or [])[1:3] and c[1].endswith("/Motor") and c[2] == "sample_x"
    )
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: motor.state() == S.ON, 20, "sample_x back (the supervisor restarts it)")
    back = time.time()
    motor.Position = 1.25
    wait_state(motor, S.ON, 20)
    out = wait_until(
        lambda: (
            (h := history(logger, "bl01/mot/sample_x/Position", t_kill))["values"]
            and h["values"][-1] == pytest.approx(1.25)
            and h
        ),
        10,
        "the move after the restart in the archive",
    )
    latency = time.time() - back
    assert latency < 8.0, f"events resumed only {latency:.1f} s after the device was back"
    assert [t for t in out["times"] if t >= back]  # new events, not only the old subscription's


# ------------------------------------------------------------- kill -9
def _files_open(archive: Path) -> tuple[list[str], list[str]]:
    """Every file opens with h5py: (plainly readable, readable as SWMR reader only)."""
    plain, swmr = [], []
    for path in list_files(archive):
        try:
            with h5py.File(path, "r") as f:
                assert f.attrs["format"] == FORMAT
            plain.append(path.name)
        except OSError:
            assert not seal.is_sealed(path), f"{path.name} is sealed and does not open"
            with open_for_read(path) as f:
                assert f.attrs["format"] == FORMAT
            swmr.append(path.name)
    return plain, swmr


def _wait_logger_on(bl):
    """The logger may still be restarting after an earlier test's kill."""
    logger = bl.proxy(LOGGER, timeout_ms=15000)
    wait_until(lambda: logger.state() == S.ON, 60, "the logger ON")
    return logger


def _kill_and_check(bl, how: str) -> None:
    logger = _wait_logger_on(bl)
    archive = bl.run_dir / "archive"
    cam = bl.proxy("bl01/det/cam1")
    cam.ExposureTime = 0.005
    cam.AcquisitionMode = 2  # CONTINUOUS: a steady stream of events
    frames = Events(cam, "FrameCounter")
    pid = logger_pid(bl)
    try:
        t_start = time.time()
        cam.Start()
        # the logger archives the frames (a logger restarted by an earlier
        # test subscribes again first: what came before is not its to keep)
        wait_until(
            lambda: history(logger, "bl01/det/cam1/FrameCounter", t_start)["count"] > 0,
            30,
            "the logger archiving the camera's frames",
        )
        t_from = time.time()
        n = len(frames.items)
        wait_until(lambda: len(frames.items) > n + 20, 10, "frame events")
        t_request = time.time()
        logger.Flush()  # everything received before this call is durable now
        expected = [item for item in frames.records() if t_from <= item[0] < t_request - 0.05]
        if how == "hook":
            # SIGKILL half-way through the next write: on a busy machine that
            # write may come before this command's reply (the reply is lost)
            with contextlib.suppress(tango.DevFailed):
                logger.TestKillMidWrite()
        else:
            n = len(frames.items)  # events keep flowing, then a kill -9 from outside
            wait_until(lambda: len(frames.items) > n + 5, 10, "more frame events")
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(pid), 10, "the logger killed")
        t_kill = time.time()
        # right away, whatever the supervisor is doing: every file opens
        plain, swmr = _files_open(archive)
        assert swmr  # the file being written (one file per start: maybe the only one)
        # and holds every frame event up to the last flush
        out = ArchiveReader(archive).history("bl01/det/cam1/FrameCounter", expected[0][0], t_kill)
        archived = set(zip(out["times"], out["values"], strict=True))
        missing = [(t, v) for t, v, _q in expected if (t, v) not in archived]
        assert not missing, f"{len(missing)} flushed events missing, first {missing[:3]}"
        # the supervisor restarts the logger; it seals the file and records the gap
        wait_until(lambda: logger_pid(bl) != pid, 20, "the logger restarted")
        fresh = bl.proxy(LOGGER, timeout_ms=15000)
        wait_until(lambda: fresh.state() == S.ON, 20, "the restarted logger ON")
        wait_until(lambda: not _files_open(archive)[1], 10, "every file sealed")
        after = time.time()
        wait_until(
            lambda: history(fresh, "bl01/det/cam1/FrameCounter", after)["count"] > 0,
            20,
            "frame events archived again after the restart",
        )
        gaps = history(fresh, "bl01/det/cam1/FrameCounter", t_kill - 5, "now")["gaps"]
        gap = [g for g in gaps if g["start"] <= t_kill <= g["end"]]
        assert gap and "kill -9" in gap[0]["cause"], gaps
        assert gap[0]["start"] >= t_request - 1.0  # the last flush, not earlier
    finally:
        frames.close()
        with contextlib.suppress(tango.DevFailed):
            cam.Stop()
        wait_state(cam, S.ON, 20)
        cam.AcquisitionMode = 0


def test_killed_mid_write_every_file_opens_with_the_data_up_to_the_last_flush(bl):
    _kill_and_check(bl, "hook")


def test_kill_9_from_outside_every_file_opens_with_the_data_up_to_the_last_flush(bl):
    _kill_and_check(bl, "kill")


# ---------------------------------------------------------- statistics
def test_statistics_are_published_with_change_events(bl):
    logger = _wait_logger_on(bl)
    seen: list[int] = []
    sid = logger.subscribe_event(
        "EventsWritten",
        tango.EventType.CHANGE_EVENT,
        lambda ev: None if ev.err else seen.append(ev.attr_value.value),
    )
    try:
        motor = bl.proxy("bl01/mot/slit_h")
        motor.Position = motor.Position + 0.5
        wait_until(lambda: len(seen) >= 3 and seen[-1] > seen[0], 15, "EventsWritten events")
    finally:
        logger.unsubscribe_event(sid)
    assert logger.Backlog >= 0 and logger.EventsDropped == 0
    assert 0 < logger.WriteLatency < 5.0
    assert logger.ArchiveSize >= logger.CurrentFileSize > 0
    assert logger.FileCount == len(list_files(bl.run_dir / "archive"))
    assert logger.ErrorCount == 0, logger.LastError
    assert logger.CurrentFile.startswith("archive-")


# ------------------------------------------------------------ bad input
BAD_INPUT = {
    "GetHistory": [
        "[" * 100_000,  # was a RecursionError (PyDs_PythonError)
        "[" * 5_000,
        "{" * 5_000,
        "x" * 100_000,
        "",
        "{}",
        "[1, 2]",
        '{"attribute": 5}',
        '{"attribute": "bl01/mot/sample_x"}',
        '{"attribute": "bl01/mot/sample_x/Position", "start": NaN}',
        '{"attribute": "bl01/mot/sample_x/Position", "start": -Infinity}',
        '{"attribute": "bl01/mot/sample_x/Position", "start": 1e308}',
        '{"attribute": "bl01/mot/sample_x/Position", "end": "-99999999999d"}',
        '{"attribute": "bl01/mot/sample_x/Position", "start": [1]}',
        '{"attribute": "bl01/mot/sample_x/Position", "start": "' + "1" * 10_000 + '"}',
        '{"attribute": "bl01/mot/sample_x/Position", "max_points": 1e30}',
        '{"attribute": "bl01/mot/sample_x/Position", "max_points": -1}',
        '{"attribute": "bl01/mot/sample_x/Position", "max_points": ' + "9" * 5000 + "}",
        '{"attribute": "bl01/mot/sample_x/Position", "maxpoints": 10}',
    ],
    "GetConfigurationAt": [
        "[" * 100_000,
        "[" * 5_000,
        "d" * 100_000,
        "",
        "bl01/mot",
        '{"device": "bl01/mot/sample_x", "time": NaN}',
        '{"device": "bl01/mot/sample_x", "time": 1e300}',
        '{"device": "bl01/mot/sample_x", "time": {"a": 1}}',
        '{"device": ' + "[" * 100 + "]" * 100 + "}",
    ],
    "ListArchived": ["[" * 30_000, "*" * 100_000, "a" * 257],
}


def test_every_command_refuses_bad_input_with_a_reason_of_ours(bl):
    logger = _wait_logger_on(bl)
    logger.set_timeout_millis(3000)  # the client's usual timeout: refusals are immediate
    for command, values in BAD_INPUT.items():
        for value in values:
            with pytest.raises(tango.DevFailed) as refused:
                logger.command_inout(command, value)
            err = refused.value.args[0]
            assert err.reason == "LOGGER_BAD_INPUT", (command, value[:40], err.reason, err.desc)
            assert err.desc.startswith(f"{command}: ") and len(err.desc) < 1000, err.desc[:300]
    assert logger.state() == S.ON  # the device keeps its state
    # a good question still gets its answer, an unknown name our own reason
    assert json.loads(logger.ListArchived("bl01/mot/sample_x/pos*"))
    with pytest.raises(tango.DevFailed) as unknown:
        logger.GetHistory('{"attribute": "bl01/mot/sample_x/Nothing"}')
    assert unknown.value.args[0].reason == "LOGGER_QUERY_ERROR"
    # the CLI says what is wrong
    bad = bl.cli("history", "get", "bl01/mot/sample_x/Position", "--max-points", "-3", check=False)
    assert bad.returncode == 2 and "max_points" in bad.stderr and "minimum" in bad.stderr


# ------------------------------------------------------------ full disk
def test_a_full_disk_is_alarm_with_the_reason_and_the_logger_recovers(bl, tmp_path):
    """The archive on a 20 MB tmpfs: filled while frames flow, the logger goes
    ALARM saying where and how many rows it could not write, acknowledges
    nothing, and writes again by itself once the space is back."""
    logger = _wait_logger_on(bl)
    db = tango.Database(*bl.tango_host.split(":"))
    cam = bl.proxy("bl01/det/cam1")
    with small_disk(tmp_path / "disk", "20m") as disk:
        archive = disk / "archive"
        db.put_device_property(LOGGER, {"Directory": [str(archive)]})
        try:
            logger.Init()
            wait_until(lambda: logger.state() == S.ON, 30, "the logger ON on the small disk")
            assert json.loads(logger.Report)["directory"] == str(archive)
            wait_until(
                lambda: "bl01/det/cam1" in connected(logger), 30, "the logger subscribed to cam1"
            )
            cam.ExposureTime = 0.01
            cam.AcquisitionMode = 2  # CONTINUOUS: a steady stream of events
            cam.Start()
            t0 = time.time()
            wait_until(
                lambda: history(logger, "bl01/det/cam1/FrameCounter", t0)["count"] > 5,
                20,
                "frames archived on the small disk",
            )
            assert logger.ErrorCount == 0
            filler = fill_disk(disk)
            t_fill = time.time()
            wait_state(logger, S.ALARM, 20)  # (the old logger stayed ON, ErrorCount 0)
            wait_until(lambda: logger.RowsLost > 0, 10, "rows counted as lost")
            status = logger.status()
            assert status.startswith("Disk full"), status
            for words in (str(archive), f"mounted on {disk}", "tmpfs", "rows not written"):
                assert words in status, (words, status)
            assert logger.ErrorCount > 0 and logger.LastError.startswith("Disk full")
            # nothing is reported as stored while the disk is full
            lost, written = logger.RowsLost, logger.EventsWritten
            wait_until(lambda: logger.RowsLost > lost + 5, 10, "more rows lost")
            assert logger.state() == S.ALARM and logger.EventsWritten == written
            with pytest.raises(tango.DevFailed) as refused:
                logger.Flush()
            assert refused.value.args[0].reason == "LOGGER_DISK_FULL"
            stats = bl.cli("history", "stats").stdout
            assert "ALARM" in stats and "Disk full" in stats
            assert re.search(r"rows lost [1-9]\d*", stats), stats
            # space again: back to ON by itself, new rows archived
            filler.unlink()
            t_free = time.time()
            wait_state(logger, S.ON, 20)
            total = logger.RowsLost
            out = wait_until(
                lambda: (
                    (h := history(logger, "bl01/det/cam1/FrameCounter", t_free))["count"] > 3 and h
                ),
                20,
                "frames archived again after the space came back",
            )
            assert out["times"][-1] > t_free
            assert logger.Flush() > t_free  # acknowledged again: durable
            gaps = history(logger, "bl01/det/cam1/FrameCounter", t_fill - 5)["gaps"]
            lost_gaps = [g for g in gaps if "rows not written" in g["cause"]]
            assert len(lost_gaps) == 1, gaps
            assert lost_gaps[0]["cause"].startswith(f"{total} rows not written: the disk"), gaps
            assert logger.RowsLost == total  # nothing more lost after the space came back
        finally:
            with contextlib.suppress(tango.DevFailed):
                cam.Stop()
            db.delete_device_property(LOGGER, "Directory")
            logger.Init()
            wait_until(lambda: logger.state() == S.ON, 30, "the logger ON in its own directory")
    wait_state(cam, S.ON, 20)
    cam.AcquisitionMode = 0
    assert json.loads(logger.Report)["directory"] == str(bl.run_dir / "archive")
