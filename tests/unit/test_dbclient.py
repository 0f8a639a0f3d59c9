"""KeptDatabase: one client across calls, a new one after a failure."""

from __future__ import annotations

import pytest
import tango

from tango_devices.common import dbclient


class FakeDatabase:
    made = 0
    fail = False

    def __init__(self) -> None:
        FakeDatabase.made += 1
        self.timeout = None

    def set_timeout_millis(self, ms: int) -> None:
        self.timeout = ms

    def get_info(self) -> str:
        if FakeDatabase.fail:
            tango.Except.throw_exception("API_CorbaException", "no database", "get_info")
        return "ok"


def test_one_client_kept_and_a_new_one_after_a_failure(monkeypatch):
    monkeypatch.setattr(dbclient.tango, "Database", FakeDatabase)
    FakeDatabase.made, FakeDatabase.fail = 0, False
    kept = dbclient.KeptDatabase(timeout_ms=250)
    assert kept(lambda db: db.get_info()) == "ok"
    assert kept(lambda db: db.timeout) == 250
    assert FakeDatabase.made == 1
    FakeDatabase.fail = True
    with pytest.raises(tango.DevFailed):
        kept(lambda db: db.get_info())
    FakeDatabase.fail = False
    assert kept(lambda db: db.get_info()) == "ok"
    assert FakeDatabase.made == 2  # the failed client was dropped


def test_latest_writes_never_block_the_caller_and_store_the_last_value():
    """A write that blocks (a stopped database) does not block put(); values
    put meanwhile replace each other; a failed write is tried again."""
    import threading

    release, writing = threading.Event(), threading.Event()
    stored: list = []
    failures = [1]  # the first write after the blocked one fails once

    def write(value):
        if value == "first":
            writing.set()
            assert release.wait(10)
        elif failures:
            failures.pop()
            raise RuntimeError("database down")
        stored.append(value)

    writes = dbclient.LatestWrites(write, retry=0.01)
    writes.put("first")  # blocks in the writer thread
    assert writing.wait(10)
    for value in ("a", "b", "c"):
        writes.put(value)  # returns at once
    assert not writes.flush(0.05), "still writing"
    release.set()
    assert writes.flush(10)
    assert stored == ["first", "c"], "the values put meanwhile replaced each other"
    writes.close()
