"""Helpers shared by the system tests (each lives here once)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from tests.helpers import poll_until, wait_until

QUEUE = "bl01/sys/queue"


def wait_state(proxy, state, timeout: float = 10.0) -> None:
    """Poll until ``proxy`` is in ``state``; fail naming the device and its Status."""
    wait_until(
        lambda: proxy.state() == state,
        timeout,
        f"{proxy.dev_name()} {state}",
        on_timeout=lambda: f"state {proxy.state()}, status: {proxy.status()}",
    )


class Events:
    """A client's own record of one attribute's events (error events are
    skipped): the attribute values of change events, or the events
    themselves for data-ready events. Wait on a predicate, never sleep."""

    def __init__(self, proxy, attr: str, kind=tango.EventType.CHANGE_EVENT):
        self.proxy = proxy
        self.kind = kind
        self.items: list = []
        self.errors: list[tuple[float, str]] = []  # (time, reason) of each error event
        self.cond = threading.Condition()
        self.id = proxy.subscribe_event(attr, kind, self._cb)

    def _cb(self, ev) -> None:
        if ev.err:
            with self.cond:
                self.errors.append((time.time(), ev.errors[0].reason))
            return
        item = ev if self.kind == tango.EventType.DATA_READY_EVENT else ev.attr_value
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.items), timeout)
        assert ok, f"no {what} within {timeout} s; got {self._describe()}"

    def wait_live(self, timeout: float = 10.0) -> None:
        """Return once an event pushed now reaches this subscriber. Tango
        gives no such promise when subscribe_event returns (cppTango #524):
        the value it hands over is a synchronous read, and ZeroMQ may not yet
        have passed the subscription to the server, which drops what it
        pushes meanwhile. Our devices' RepublishEvents pushes State and every
        evented attribute again; one arriving shows the channel is live (the
        device's subscriptions travel in order on one connection)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                before = len(self.items)
            self.proxy.RepublishEvents()
            with self.cond:
                if self.cond.wait_for(lambda n=before: len(self.items) > n, 0.5):
                    return
            assert time.monotonic() < deadline, (
                f"{self.proxy.dev_name()}: no event reached a new subscriber within {timeout} s"
            )

    def records(self) -> list[tuple[float, object, str]]:
        """(time, value, quality name) of each change event so far."""
        with self.cond:
            items = list(self.items)
        return [
            (v.time.totime(), v.value, str(v.quality).split(".")[-1].removeprefix("ATTR_"))
            for v in items
        ]

    def _describe(self) -> str:
        if self.kind == tango.EventType.DATA_READY_EVENT:
            return f"{len(self.items)} event(s)"
        return str([(v.value, str(v.quality)) for v in self.items][-20:])

    def close(self) -> None:
        self.proxy.unsubscribe_event(self.id)


def reset_queue(q, timeout: float = 60.0) -> None:
    """Back to an idle, empty queue (best effort: also after a failed test).
    Each step is tried on its own, and the queue is cleared until it is empty
    and nothing runs (an abort Sardana does not end takes a restart of the
    Door's server, during which the queue's item is still running)."""
    for step in (
        lambda: q.QueueState == "paused" and q.Resume(),
        q.Stop,
        lambda: q.RunningItem and q.AbortMacro(json.dumps({"timeout": 5})),
    ):
        with contextlib.suppress(tango.DevFailed):
            step()

    def cleared() -> bool:
        q.Clear()
        return json.loads(q.Items) == [] and not q.RunningItem

    poll_until(cleared, timeout, interval=0.2)


@pytest.fixture(scope="module")
def queue(beamline):
    """The experiment queue of the module's beamline, once it and the Door are ready."""
    q = beamline.proxy(QUEUE, timeout_ms=10000)
    wait_until(lambda: q.state() != tango.DevState.INIT, 20, "the queue ready")
    door = beamline.proxy("bl01/sardana/door")
    wait_until(lambda: door.state() == tango.DevState.ON, 60, "the Door ready")
    return q


@pytest.fixture(autouse=True)
def _door_ready(request):
    """A test that leaves the beamline's Door busy (a stuck abort) never fails
    the tests after it: the Door is made ready again (abort, release, and a
    restart of Sardana as the last resort), and the test is told."""
    yield
    if "beamline" not in request.fixturenames:
        return
    from tango_devices.common.door import DoorClient, DoorError

    beamline = request.getfixturevalue("beamline")
    try:
        proxy = beamline.proxy("bl01/sardana/door")
        if proxy.state() in (tango.DevState.ON, tango.DevState.ALARM):
            return
    except tango.DevFailed:
        return  # no Sardana in this beamline, or it is being restarted by the test
    with DoorClient(f"tango://{beamline.tango_host}/bl01/sardana/door") as door:
        try:
            what = door.make_ready(timeout=5.0)
        except DoorError as exc:
            pytest.fail(f"the Door was left busy and could not be made ready: {exc}")
    if what != "ready":
        print(f"the Door was left busy by {request.node.name}: {what}")


@pytest.fixture(autouse=True)
def _fresh_queue(request):
    """Each test that uses the queue leaves it idle and empty, even when it fails."""
    yield
    if "queue" in request.fixturenames:
        reset_queue(request.getfixturevalue("queue"))


@contextlib.contextmanager
def small_disk(path: Path, size: str = "20m") -> Iterator[Path]:
    """A file system of ``size`` (tmpfs) mounted at ``path`` for the block, for
    disk-full tests; needs root (the suite's run is root in its own mount
    namespace, so nothing leaks to the host)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill_disk(path: Path, leave: int = 0) -> Path:
    """Fill the file system holding ``path`` until ``leave`` bytes are free;
    returns the filler file (delete it to give the space back)."""
    filler = path / ".filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "ab") as f:
        while True:
            free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk[: max(1, min(len(chunk), free - leave))])
                f.flush()
            except OSError:  # ENOSPC: full
                break
    return filler
