"""Sardana on the real beamline: our controllers, macros, HDF5 scan files,
stop/abort, and recovery when a motor server or Sardana itself is killed.

Everything runs through the real Door of the real Sardana server, started by
the Starter like every other server (`beamline up`)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import h5py
import pytest
import tango

from tango_devices.common.door import DoorClient
from tests.helpers import poll_until, wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]

DOOR = "bl01/sardana/door"
PROJECT_MACROS = Path(__file__).resolve().parents[2] / "sardana_macros" / "macros"
S = tango.DevState
# the physics model: the diode sees a Gaussian feature centred at sample_x = 1.5 mm
# (mirror_pitch at 3.0 mrad puts the beam on the sample)
PEAK_CENTRE = 1.5
CENTRE_TOLERANCE = 0.05  # mm: a 21-point scan over 3 mm has 0.15 mm steps


@pytest.fixture
def door(beamline):
    """A fresh client per test: after a test that restarted Sardana, a kept
    one would wait for cppTango's 10 s heartbeat to get events again."""
    client = DoorClient(f"tango://{beamline.tango_host}/{DOOR}")
    yield client
    client.close()


def run_ok(door: DoorClient, *macro, timeout: float = 120):
    run = door.run([str(m) for m in macro], timeout=timeout)
    assert run.ok, f"{' '.join(map(str, macro))}: {run.outcome}: {run.error_text}"
    return run


def scan_file(beamline):
    return beamline.run_dir / "scans" / "bl01_scans.h5"


def last_entry(beamline, title: str):
    """The newest scan entry whose title starts with ``title``: {dataset: array}."""
    with h5py.File(scan_file(beamline), "r") as f:
        entries = [k for k in f if f[k].attrs.get("NX_class") in ("NXentry", b"NXentry")]
        entries.sort(key=lambda k: int("".join(c for c in k if c.isdigit()) or 0))
        for name in reversed(entries):
            if f[name]["title"][()].decode().startswith(title):
                m = f[name]["measurement"]
                return {k: m[k][()] for k in m if isinstance(m[k], h5py.Dataset)}
        titles = [f[name]["title"][()].decode() for name in entries]
    raise AssertionError(f"no scan titled {title!r} in {scan_file(beamline)}: {titles}")


def server_pid(beamline, server: str) -> int:
    pids = beamline.server_pids(server)
    assert pids, f"{server} is not running"
    return pids[0]


def wait_points(run, n: int, timeout: float = 30):
    """Until the scan has printed ``n`` data rows (header excluded); fails at
    once, saying why, if the scan ends before."""

    def points() -> int:
        return sum(1 for line in run.output if line.strip()[:1].isdigit())

    wait_until(lambda: points() >= n or run.ended is not None, timeout, f"{n} scan points")
    assert points() >= n, (
        f"the scan ended ({run.outcome}) after {points()} point(s): {run.error_text}\n"
        + "\n".join(run.output[-20:])
    )


def supervisor_row(beamline, server):
    import json

    report = json.loads(beamline.proxy("bl01/sys/supervisor").Report)
    return next(r for r in report["servers"] if r["server"] == server)


@pytest.fixture(scope="module")
def beam(beamline):
    """Shutter open, mirror on the sample: the diode sees the feature."""
    with DoorClient(f"tango://{beamline.tango_host}/{DOOR}") as door:
        run_ok(door, "shutter_open")
        run_ok(door, "mv", "mirror_pitch", 3.0)
    return beamline


def test_align_peak_finds_the_centre_and_the_file_holds_every_point(beam, door):
    run = run_ok(door, "align_peak", "sample_x", 0, 3, 21, 0.05)
    # the Result event may trail the macro's end (and the Door back to ON)
    wait_until(lambda: run.result, 5, "the macro's result")
    centre, fwhm = (float(v) for v in run.result)
    assert centre == pytest.approx(PEAK_CENTRE, abs=CENTRE_TOLERANCE)
    assert 0.2 < fwhm < 3.0
    position = beam.proxy("bl01/mot/sample_x").Position
    assert position == pytest.approx(centre, abs=0.01)  # moved to the centre
    data = last_entry(beam, "ascan sample_x 0.0 3.0 20 0.05")
    for channel in ("sample_x", "ct_time", "i0", "diode", "roi_sum"):
        assert channel in data, f"{channel} missing from the scan file: {sorted(data)}"
        assert len(data[channel]) == 21, f"{channel}: {len(data[channel])} points"
    assert data["sample_x"][0] == pytest.approx(0.0, abs=1e-6)
    assert data["sample_x"][-1] == pytest.approx(3.0, abs=1e-6)
    assert max(data["diode"]) > 10 * max(1.0, min(data["diode"]))  # a real peak was recorded


def test_align_peak_refuses_to_move_when_there_is_no_peak(beam, door):
    before = beam.proxy("bl01/mot/sample_y").Position
    run = door.run(["align_peak", "sample_y", before, before + 0.01, 5, 0.01], timeout=60)
    assert run.outcome == "exception"
    assert "was not moved" in run.error_text
    assert beam.proxy("bl01/mot/sample_y").Position == pytest.approx(before + 0.01, abs=1e-3)


def test_standard_scans_ct_and_images_with_our_elements(beam, door):
    ct = run_ok(door, "ct", 0.05)
    assert any("diode" in line for line in ct.output)
    run_ok(door, "dscan", "slit_h", -0.1, 0.1, 4, 0.01)
    data = last_entry(beam, "dscan slit_h -0.1 0.1 4 0.01")
    assert len(data["slit_h"]) == 5 and len(data["i0"]) == 5
    run_ok(door, "mesh", "sample_x", 1.0, 1.2, 2, "sample_y", 0, 0.2, 2, 0.01)
    data = last_entry(beam, "mesh sample_x 1.0 1.2 2 sample_y 0.0 0.2 2 0.01")
    assert len(data["diode"]) == 9
    run_ok(door, "acquire_images", 3, 0.02)
    data = last_entry(beam, "timescan 3 0.02 0.0")
    assert data["cam1_image"].shape == (3, 512, 512)
    assert len(data["roi_sum"]) == 3 and min(data["roi_sum"]) > 0


def test_check_beamline_reports_every_device_healthy(beam, door):
    run = run_ok(door, "check_beamline")
    assert any("bl01/mot/sample_x" in line for line in run.output)
    assert run.output[-1].startswith("check_beamline: every device answers")


@pytest.mark.parametrize("how", ["stop", "abort"])
def test_stop_and_abort_a_running_scan(beam, door, how):
    motor = beam.proxy("bl01/mot/sample_x")
    run = door.start(["ascan", "sample_x", "0", "3", "40", "0.1"])
    wait_points(run, 2)
    getattr(door, how)()
    door.wait(run, timeout=10)
    if run.outcome == "timeout":
        # Sardana's abort can hang (sardana #978, #1619: the macro thread waits
        # for a MOVING event that never comes, where no exception reaches it):
        # the client's last resort restarts Sardana, and the Door is ready
        assert door.make_ready(timeout=3.0) == "restarted Sardana/bl01"
        assert run.outcome == "lost"
    else:
        assert run.outcome == how, run.error_text
        if not poll_until(lambda: not door.busy(), 10):
            # the same hang after the macro said it ended (the Door stays
            # RUNNING): the last resort again, and it must work ("ready" when
            # the Door got there by itself just after the 10 s)
            ends = ("ready", "aborted", "released", "restarted Sardana/bl01")
            assert door.make_ready(timeout=3.0) in ends
    # ready: ON, or ALARM when the abort reached the scan while it waited for
    # the motion: Sardana's Taurus motion then raises its own AbortException
    # (sardana.taurus.core.tango.sardana.pool), which the MacroServer does not
    # take for an abort ("An error occurred while running ascan"), so the
    # Door ends in ALARM, Sardana's "the last macro ended with an exception"
    wait_until(
        lambda: not door.busy(),
        10,
        "the Door ready",
        on_timeout=lambda: f"Door {door.state()}: {door.proxy.status()}; run {run.outcome}",
    )
    run_ok(door, "ct", 0.01)  # it takes the next macro, which ends it ON
    wait_until(lambda: door.state() == S.ON, 10, "the Door ON after the next macro")
    wait_until(lambda: motor.state() == S.ON, 10, "sample_x stopped")
    stopped_at = motor.Position
    assert 0 < stopped_at < 3.0
    points = sum(1 for line in run.output if line.strip()[:1].isdigit())
    assert points < 41
    again = door.run(["ascan", "sample_x", "0", "0.2", "2", "0.01"], timeout=30)
    if again.outcome == "timeout" and how == "abort":
        # the abort reached the Pool inside the controller's StartOne: the
        # MacroServer aborts by raising AbortException in the macro's thread,
        # which runs the Pool's code itself (one Sardana process), and the
        # Pool's motion of sample_x then waits for ever ("motctrl throws
        # exception on StartOne" in its log; sardana #978): the last resort
        assert door.make_ready(timeout=3.0) == "restarted Sardana/bl01"
        again = door.run(["ascan", "sample_x", "0", "0.2", "2", "0.01"], timeout=120)
    assert again.ok, f"{again.outcome}: {again.error_text}"


def test_killed_motor_server_fails_the_scan_naming_the_device_then_scans_work(beam, door):
    run = door.start(["ascan", "sample_x", "0", "3", "40", "0.1"])
    wait_points(run, 2)
    killed = server_pid(beam, "Motor/sample_x")
    os.kill(killed, signal.SIGKILL)
    door.wait(run, timeout=60)
    assert run.outcome == "exception"
    assert "bl01/mot/sample_x" in run.error_text, run.error_text
    wait_until(
        lambda: (
            supervisor_row(beam, "Motor/sample_x")["state"] == "RUNNING"
            and supervisor_row(beam, "Motor/sample_x")["pid"] != killed
        ),
        30,
        "the supervisor to restore Motor/sample_x",
    )
    # no Pool restart: the controller reconnects by itself
    deadline = time.monotonic() + 30
    while True:
        retry = door.run(["ascan", "sample_x", "0", "0.2", "2", "0.01"], timeout=60)
        if retry.ok or time.monotonic() > deadline:
            break
    assert retry.ok, retry.error_text


def test_killed_sardana_server_is_restarted_and_macros_run_again(beamline, beam, door):
    run = door.start(["ascan", "sample_x", "0", "3", "40", "0.1"])
    wait_points(run, 2)
    killed = server_pid(beamline, "Sardana/bl01")
    os.kill(killed, signal.SIGKILL)
    door.wait(run, timeout=30)
    assert run.outcome == "lost", run.outcome
    assert DOOR in run.exc_value
    wait_until(
        lambda: (
            supervisor_row(beamline, "Sardana/bl01")["state"] == "RUNNING"
            and supervisor_row(beamline, "Sardana/bl01")["pid"] != killed
        ),
        60,
        "the supervisor to restore Sardana/bl01",
    )
    with DoorClient(f"tango://{beamline.tango_host}/{DOOR}") as fresh:
        run_ok(fresh, "ct", 0.01)
        run_ok(fresh, "ascan", "sample_x", 0, 0.2, 2, 0.01)


def test_spock_connects_to_the_door(beamline):
    import subprocess

    from tests.helpers import BEAMLINE

    env = beamline.env()
    proc = subprocess.run(
        [
            BEAMLINE,
            "--run-dir",
            str(beamline.run_dir),
            "--config-dir",
            str(beamline.config_dir),
            "spock",
            "--simple-prompt",
        ],
        input="ct 0.01\nexit\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Connected to door_bl01" in proc.stdout, proc.stdout
    assert "ct_time" in proc.stdout and "diode" in proc.stdout


def test_user_macros_are_written_to_the_run_directory_never_the_installed_code(beamline):
    ms = beamline.proxy("bl01/sardana/macroserver", timeout_ms=10000)
    project = PROJECT_MACROS
    before = sorted(p.name for p in project.iterdir())
    path, _code, _line = ms.GetMacroCode(["zzprobe_module"])
    assert path == str(beamline.run_dir / "user_macros" / "zzprobe_module.py")
    assert sorted(p.name for p in project.iterdir()) == before


STUCK_MACRO = """
import time

from sardana.macroserver.macro import Macro, Type


class stuck_in_c(Macro):
    \"\"\"Blocks in one C call: Sardana's abort cannot end it (test only).\"\"\"

    param_def = [["seconds", Type.Float, 600, "how long"]]

    def run(self, seconds):
        time.sleep(seconds)
"""


def test_a_macro_that_abort_cannot_end_leaves_the_door_ready_after_a_restart(beamline, door):
    """Aborts that hang are a known Sardana problem: the Door client's last
    resort is a restart of Sardana's server through the supervisor."""
    (beamline.run_dir / "user_macros" / "stuck_test.py").write_text(STUCK_MACRO)
    ms = beamline.proxy("bl01/sardana/macroserver", timeout_ms=10000)
    ms.ReloadMacroLib(["stuck_test"])
    run = door.start(["stuck_in_c", "600"])
    wait_until(lambda: door.proxy.state() == S.RUNNING, 10, "the stuck macro running")
    assert door.make_ready(timeout=2.0) == "restarted Sardana/bl01"
    assert door.proxy.state() == S.ON
    assert door.wait(run, timeout=30).outcome in ("lost", "abort")
    with DoorClient(f"tango://{beamline.tango_host}/{DOOR}") as fresh:
        run_ok(fresh, "ct", 0.01)


def test_the_queue_ends_a_macro_abort_cannot_end_with_a_restart_of_sardana(beamline, queue):
    (beamline.run_dir / "user_macros" / "stuck_test.py").write_text(STUCK_MACRO)
    ms = beamline.proxy("bl01/sardana/macroserver", timeout_ms=10000)
    wait_until(lambda: ms.state() == S.ON, 60, "the MacroServer ready")
    ms.ReloadMacroLib(["stuck_test"])
    queue.HistoryClear()
    item = json.loads(queue.Add(json.dumps({"macro": "stuck_in_c", "args": [600]})))
    queue.Start()
    door = beamline.proxy(DOOR)
    wait_until(lambda: door.state() == S.RUNNING, 20, "the stuck macro running")
    queue.set_timeout_millis(60000)
    assert json.loads(queue.AbortMacro(json.dumps({"timeout": 1}))) == "restart"
    wait_until(lambda: not queue.RunningItem, 60, "the item ended")
    (entry,) = json.loads(queue.History(""))
    assert entry["uid"] == item["uid"] and entry["outcome"] == "lost"
    wait_until(lambda: door.state() == S.ON, 120, "the Door ready after the restart")
