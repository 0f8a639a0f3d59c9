"""The surroundings fail, the beamline does no damage: a full disk and a dead
Tango database never make a device acknowledge a setting it did not store,
never make the supervisor kill what is only slow or restart into a loop, and
`beamline status` says what is wrong.

One beamline whose run directory (the embedded database's file, the logs,
the archive) is a small file system of its own, filled up on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import tango

from beamline import tangodb
from beamline.runtime import RunContext
from tests.helpers import BEAMLINE, running_beamline, wait_until
from tests.system.conftest import fill_disk, small_disk, wait_state

pytestmark = pytest.mark.system

S = tango.DevState
SETTINGS = [  # (device, attribute, a new value, another one)
    ("bl01/mot/sample_x", "Offset", 0.25, -0.5),
    ("bl01/ct/scaler", "PresetTime", 0.7, 0.4),
    ("bl01/det/cam1", "ExposureTime", 0.03, 0.02),
    ("bl01/det/cam1", "Roi", [10, 20, 30, 40], [5, 6, 7, 8]),
]


@pytest.fixture(scope="module")
def bl(tmp_path_factory):
    disk = small_disk(tmp_path_factory.mktemp("surroundings") / "run", "300m")
    with disk as run_dir, running_beamline(run_dir) as run:
        supervisor = run.proxy("bl01/sys/supervisor")
        wait_until(
            lambda: supervisor.Servers and all(st == "RUNNING" for st in supervisor.ServerStates),
            60,
            "the supervisor to see every server running",
        )
        yield run


def value(proxy, attr):
    v = proxy.read_attribute(attr).value
    return list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v


def stored(run, device: str, attr: str) -> list[str]:
    db = tango.Database(*run.tango_host.split(":"))
    return list(db.get_device_attribute_property(device, [attr])[attr].get("__value", []))


def refused_unchanged(proxies, which: int, words) -> None:
    """Each setting written with its value number ``which`` (0 or 1): refused,
    the reason named, and the device unchanged."""
    for device, attr, *values in SETTINGS:
        new = values[which]
        proxy = proxies[device]
        before = value(proxy, attr)
        with pytest.raises(tango.DevFailed) as refused:
            proxy.write_attribute(attr, new)
        err = refused.value.args[0]
        assert err.reason == "SETTING_NOT_STORED", (device, attr, err.reason, err.desc)
        assert "nothing changed" in err.desc and all(w in err.desc for w in words), err.desc
        assert value(proxy, attr) == before, (device, attr)


def test_a_full_disk_refuses_settings_and_changes_nothing(bl):
    proxies = {d: bl.proxy(d) for d, *_ in SETTINGS}
    motor = proxies["bl01/mot/sample_x"]
    filler = fill_disk(bl.run_dir)
    try:
        refused_unchanged(proxies, 0, ["full"])
        before = motor.Offset
        with pytest.raises(tango.DevFailed, match="SETTING_NOT_STORED|nothing changed"):
            motor.SetPosition(motor.Position + 1.0)
        assert motor.Offset == before
    finally:
        filler.unlink()
    # space is back: the same writes are stored and applied
    for device, attr, new, _other in SETTINGS:
        proxies[device].write_attribute(attr, new)
        assert value(proxies[device], attr) == pytest.approx(new)
        assert [float(v) for v in stored(bl, device, attr)] == pytest.approx(
            new if isinstance(new, list) else [new]
        )


def kill_database(run) -> int:
    pid = run.state()["database"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(pid), 10, "the database killed")
    return pid


def start_database(run) -> None:
    ctx = RunContext.create(run.run_dir, run.config_dir)
    info = tangodb.start_embedded(ctx, run.port, "127.0.0.1")
    ctx.update_state(database={"embedded": True, **info})


def server_pid(run, server: str) -> int | None:
    pids = run.server_pids(server)
    return pids[0] if pids else None


def test_with_the_database_down_nothing_is_damaged_and_it_heals_once_back(bl):
    proxies = {d: bl.proxy(d) for d, *_ in SETTINGS}
    supervisor = bl.proxy("bl01/sys/supervisor")
    det_z = bl.proxy("bl01/mot/det_z")
    wait_state(det_z, S.ON, 20)
    restarts = dict(zip(supervisor.Servers, supervisor.ServerRestarts, strict=True))
    kill_database(bl)
    try:
        # settings: refused and unchanged, the reason named
        refused_unchanged(proxies, 1, ["database"])
        # a death: seen without the database, not restarted into a loop
        pid = server_pid(bl, "Motor/det_z")
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: (
                "Tango database down: 1 server(s) waiting to restart (Motor/det_z)"
                in supervisor.Status()
            ),
            10,
            "the supervisor to say it waits for the database",
            on_timeout=lambda: supervisor.Status(),
        )
        assert supervisor.state() == S.ALARM
        states = dict(zip(supervisor.Servers, supervisor.ServerStates, strict=True))
        assert states["Motor/det_z"] == "WAITING"
        assert server_pid(bl, "Motor/det_z") is None  # nothing started into a failure
        # status: says so, exits non-zero, shows what it can reach
        status = subprocess.run(
            [BEAMLINE, "--run-dir", str(bl.run_dir), "--config-dir", str(bl.config_dir), "status"],
            env=bl.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode != 0, status.stdout
        assert "database" in status.stdout and "not answering" in status.stdout
        assert "Traceback" not in status.stdout + status.stderr
        shown = json.loads(
            subprocess.run(
                [BEAMLINE, "--run-dir", str(bl.run_dir), "status", "--json"],
                env=bl.env(),
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
        by_device = {d["device"]: d for s in shown["servers"] for d in s["devices"]}
        assert by_device["bl01/mot/sample_x"]["state"] == "ON"  # its own answer
        assert by_device["bl01/mot/det_z"]["state"] is None
        assert shown["database"]["answers"] is False
    finally:
        start_database(bl)
    wait_state(det_z, S.ON, 30)
    wait_until(lambda: supervisor.state() == S.ON, 30, "the supervisor ON again")
    # a while later: only det_z was restarted; nothing was killed as hung
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        now = dict(zip(supervisor.Servers, supervisor.ServerRestarts, strict=True))
        changed = {s: n - restarts[s] for s, n in now.items() if n != restarts[s]}
        assert changed == {"Motor/det_z": 1}, (changed, list(supervisor.LastFailureCauses))
        time.sleep(0.5)
    for device, attr, _first, new in SETTINGS:  # and settings are stored again
        proxies[device].write_attribute(attr, new)
        assert value(proxies[device], attr) == pytest.approx(new)
