"""The supervisor's process scan against real processes: servers found by
command line and run directory, an ended one (even a zombie) gone at once,
a forked server found once it has taken its command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tango_devices.supervisor.processes import ProcessWatcher

SLEEPER = "import time\nwhile True: time.sleep(0.05)\n"
TITLED_LATER = (
    "import time\n"
    "from tango_devices.common.forkserver import set_process_title\n"
    "time.sleep(0.3)\n"
    "set_process_title(b'/usr/bin/python3\\0/x/Valve\\0v9\\0', 'Valve')\n"
    "while True: time.sleep(0.05)\n"
)


@pytest.fixture
def spawn(tmp_path):
    procs = []

    def start(name: str, code: str, run_dir, *args: str) -> subprocess.Popen:
        script = tmp_path / name
        script.write_text(code)
        env = {**os.environ, "BEAMLINE_RUN_DIR": str(run_dir)}
        p = subprocess.Popen([sys.executable, str(script), *args], env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def until(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


def test_servers_of_this_run_are_found_and_an_ended_one_is_gone_at_once(spawn, tmp_path):
    ours = spawn("Motor", SLEEPER, tmp_path, "m1")
    spawn("Shutter", SLEEPER, tmp_path / "elsewhere", "s1")  # another run directory
    spawn("helper.py", SLEEPER, tmp_path, "-x")  # not a server's command line
    watcher = ProcessWatcher(str(tmp_path))
    until(lambda: watcher.scan().get("motor/m1") == [ours.pid])
    assert "shutter/s1" not in watcher.scan()
    assert set(watcher.scan()) == {"motor/m1"}
    os.kill(ours.pid, signal.SIGKILL)
    until(lambda: "motor/m1" not in watcher.scan())
    # it ended (a zombie, or still exiting) and was never counted as running
    # since: only the test, its parent, reaps it
    assert ours.wait(timeout=5) == -signal.SIGKILL


def test_a_forked_server_is_found_once_it_has_taken_its_command_line(spawn, tmp_path):
    later = spawn("zygote.py", TITLED_LATER, tmp_path, "--socket")
    watcher = ProcessWatcher(str(tmp_path))
    assert "valve/v9" not in watcher.scan()  # still the fork server's command line
    until(lambda: watcher.scan().get("valve/v9") == [later.pid])


def test_a_young_process_that_changes_what_it_runs_is_seen_as_what_it_runs_now(spawn, tmp_path):
    """Between fork and exec a stub shows its parent's command line (another
    server's, when the supervisor starts it): that must not stick."""
    changing = spawn("Shutter", TITLED_LATER, tmp_path, "s0")
    watcher = ProcessWatcher(str(tmp_path))
    until(lambda: watcher.scan().get("shutter/s0") == [changing.pid])
    until(lambda: watcher.scan().get("valve/v9") == [changing.pid])
    assert "shutter/s0" not in watcher.scan()


def test_a_stub_that_hands_over_during_the_scan_is_followed_by_its_successor(spawn, tmp_path):
    """A scan on a busy host takes seconds. A stub that hands its server over
    to a fork-server child meanwhile has ended when the scan checks it, and
    the child, born after the scan listed /proc, must still be found: else
    the supervisor reads a live server as vanished and starts it again."""
    stub = spawn("Motor", SLEEPER, tmp_path, "m1")
    successor = []

    class BusyHost(ProcessWatcher):
        def _identify(self, pid):
            result = super()._identify(pid)
            if pid == stub.pid and not successor:  # the handover, mid-scan
                successor.append(spawn("Motor", SLEEPER, tmp_path, "m1"))
                # the stub ends only once its successor looks like it (the
                # fork server's ready pipe); a new process's command line is
                # set a moment after Popen returns (exec closes the pipe
                # Popen waits on before the kernel sets up the arguments)
                until(lambda: b"Motor" in Path(f"/proc/{successor[0].pid}/cmdline").read_bytes())
                stub.kill()
                stub.wait()  # reaped: gone from /proc
            return result

    watcher = BusyHost(str(tmp_path))
    assert watcher.scan() == {"motor/m1": [successor[0].pid]}
    assert watcher.scan() == {"motor/m1": [successor[0].pid]}


def test_wake_ends_a_wait_at_once_and_only_that_wait():
    import threading

    watcher = ProcessWatcher(run_dir="/nonexistent")
    try:
        t0 = time.monotonic()
        assert watcher.wait(0.05) is False  # nothing to wake it: the whole timeout
        assert time.monotonic() - t0 >= 0.05
        threading.Timer(0.1, watcher.wake).start()
        t0 = time.monotonic()
        assert watcher.wait(30.0) is True
        assert time.monotonic() - t0 < 10.0
        watcher.wake()
        watcher.wake()  # two wakes before one wait: one early return, then a full wait
        assert watcher.wait(5.0) is True
        assert watcher.wait(0.05) is False
    finally:
        watcher.close()
    watcher.wake()  # after close: harmless


SPINNER = "while True: pass\n"


def test_wait_seconds_tells_a_process_starved_of_cpu_from_a_sleeping_one(spawn, tmp_path):
    """Three busy loops on one CPU each wait for it about two thirds of the
    time; a sleeping process waits for none. (The supervisor does not take a
    silent, starved server for a hung one.)"""
    cpu = sorted(os.sched_getaffinity(0))[0]
    spinners = [spawn(f"spin{i}.py", SPINNER, tmp_path) for i in range(3)]
    sleeper = spawn("sleep.py", SLEEPER, tmp_path)
    for p in spinners:
        os.sched_setaffinity(p.pid, {cpu})
    watcher = ProcessWatcher(str(tmp_path))
    before = {p.pid: watcher.wait_seconds(p.pid) for p in [*spinners, sleeper]}
    t0 = time.monotonic()
    time.sleep(1.0)
    elapsed = time.monotonic() - t0
    grew = {pid: watcher.wait_seconds(pid) - w for pid, w in before.items()}
    assert all(grew[p.pid] >= 0.3 * elapsed for p in spinners), grew
    assert grew[sleeper.pid] < 0.1 * elapsed, grew
    for p in spinners:
        p.kill()
        p.wait()
    assert watcher.wait_seconds(spinners[0].pid) is None
