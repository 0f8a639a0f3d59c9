"""A full disk under the archive: the writer writes nothing it cannot finish
(the free space is checked and the cycle's space reserved first), counts the
rows it could not write, journals them as a gap when it writes again, and
never reports them as stored; an HDF5 error that h5py can only hand to
sys.unraisablehook still fails the cycle. The logic turns this into ALARM
with the reason, refuses Flush, and goes back to ON by itself."""

from __future__ import annotations

import errno
import os

import pytest

from tango_devices.common.statemachine import State
from tango_devices.logger import states
from tango_devices.logger.logger_logic import LoggerConfig, LoggerLogic, NotStored
from tango_devices.logger.model import VALID, AttrMeta
from tango_devices.logger.reader import ArchiveReader
from tango_devices.logger.store import (
    ArchiveWriter,
    WriteFailed,
    WriterPolicy,
    hdf5_errors,
    list_files,
)

DEV = "bl01/mot/x"
POS = AttrMeta(DEV, "Position", "float")
STATUS = AttrMeta(DEV, "Status", "json")
MB = 1_000_000


class Disk:
    """Stands for os.statvfs of the archive's file system: ``free`` bytes free."""

    def __init__(self, free: int = 10_000 * MB, total: int = 20_000 * MB) -> None:
        self.free, self.total = free, total

    def __call__(self, _path):
        disk = self

        class Result:
            f_frsize = 1
            f_bavail = disk.free
            f_blocks = disk.total

        return Result()


def make_writer(tmp_path, disk: Disk) -> ArchiveWriter:
    w = ArchiveWriter(tmp_path / "archive", WriterPolicy(schema_delay=0.0, min_free_bytes=MB))
    w.statvfs = disk
    w.open()
    for meta in (POS, STATUS):
        w.add_meta(meta)
    return w


def rows(t0: float, n: int, value: float = 0.0):
    return [(t0 + i, value + i, VALID) for i in range(n)]


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture
def writer(tmp_path, disk):
    w = make_writer(tmp_path, disk)
    yield w
    w.close()


def test_a_full_disk_writes_nothing_counts_the_rows_and_journals_the_gap(writer, disk):
    w = writer
    w.cycle({POS.key: [(1000.0, 1.0, VALID)]})
    first, size = w.path, w.file_size()
    disk.free = 0
    result = w.cycle({POS.key: rows(1001.0, 4, 9.0), STATUS.key: [(1001.0, "lost", VALID)]})
    assert (result.rows, result.lost) == (0, 5)
    full = result.disk_full
    assert full is not None and full.free == 0
    text = full.describe()
    assert str(w.directory) in text and "is full" in text and "mounted on" in text
    assert w.file_size() == size  # nothing touched the file
    r = ArchiveReader(w.directory)
    assert r.history(f"{DEV}/Position", 0, 2000, 0)["values"] == [1.0]
    assert w.cycle({POS.key: rows(1005.0, 2)}).lost == 2  # still full: more rows lost
    disk.free = 10_000 * MB  # space again
    result = w.cycle({POS.key: [(1010.0, 3.0, VALID)]})
    assert (result.rows, result.lost, result.rotated) == (1, 0, None)
    assert w.path == first  # the same file goes on
    for reader in (ArchiveReader(w.directory, live=w), ArchiveReader(w.directory)):
        out = reader.history(f"{DEV}/Position", 0, 2000, 0)
        assert out["values"] == [1.0, 3.0]  # never a row that was not written
        (gap,) = out["gaps"]
        assert gap["cause"].startswith("7 rows not written: the disk holding the archive")
        assert gap["start"] <= 1001.0 and gap["end"] >= 1006.0
        # nor a value as of a moment: the lost 9.0 never shows
        at = reader.configuration_at(DEV, 1007.0)["attributes"]
        assert at["Position"]["value"] == 1.0 and "Status" not in at


def test_no_room_to_reserve_is_a_full_disk_too(writer):
    """The free-space check passes, but another process took the space: the
    reservation (fallocate) fails and nothing is written."""
    w = writer
    w.cycle({POS.key: [(1000.0, 1.0, VALID)]})
    size = w.file_size()
    w.reserve = lambda fd, offset, length: False
    result = w.cycle({POS.key: rows(1001.0, 3)})
    assert (result.rows, result.lost) == (0, 3) and result.disk_full is not None
    assert w.file_size() == size
    w.reserve = lambda fd, offset, length: True
    assert w.cycle({POS.key: [(1010.0, 2.0, VALID)]}).rows == 1
    assert ArchiveReader(w.directory).history(f"{DEV}/Position", 0, 2000, 0)["values"] == [
        1.0,
        2.0,
    ]


class _FailsWhenCollected:
    """What h5py does when HDF5 cannot flush a dataset it closes: an exception
    in a destructor, which Python only hands to sys.unraisablehook."""

    def __del__(self):
        raise OSError(errno.ENOSPC, "Driver write request failed (errno = 28, No space left)")


def test_an_hdf5_error_h5py_cannot_raise_still_fails_the_cycle(writer):
    w = writer
    w.cycle({POS.key: [(1000.0, 1.0, VALID)]})
    first = w.path
    w.mid_write_hook = lambda: _FailsWhenCollected()  # half-way through the write
    with pytest.raises(WriteFailed) as failed:
        w.cycle({POS.key: rows(1001.0, 4), STATUS.key: [(1001.0, "x", VALID)]})
    assert failed.value.lost == 5 and failed.value.disk_full is not None
    assert w.h5 is None  # the file is given up
    w.mid_write_hook = None
    result = w.cycle({POS.key: [(1010.0, 3.0, VALID)]})
    assert result.rows == 1 and w.path != first  # a new file
    out = ArchiveReader(w.directory, live=w).history(f"{DEV}/Position", 0, 2000, 0)
    assert out["times"][-1] == 1010.0 and 3.0 in out["values"]
    assert any(g["cause"].startswith("5 rows not written") for g in out["gaps"])


def test_errors_of_other_threads_are_not_taken(monkeypatch):
    import threading

    from tango_devices.logger import store

    passed_on = []
    with hdf5_errors() as mine:
        monkeypatch.setattr(store, "_previous_hook", lambda info: passed_on.append(info))
        t = threading.Thread(target=lambda: _FailsWhenCollected())
        t.start()
        t.join()
    assert mine == []
    assert [str(info.exc_value) for info in passed_on] == [
        "[Errno 28] Driver write request failed (errno = 28, No space left)"
    ]  # to the hook that was there before, as Python always does


def test_closing_on_a_full_disk_gives_up_what_it_cannot_write(tmp_path, disk):
    from tango_devices.logger import seal

    w = make_writer(tmp_path, disk)
    w.cycle({POS.key: [(1000.0, 1.0, VALID)]})
    disk.free = 0
    w.cycle({POS.key: rows(1001.0, 2)})
    w.held[POS.key] = rows(1003.0, 3)  # received, not written yet, when the logger stops
    path = w.path
    w.close()  # no exception; the held rows are given up, the file closed cleanly
    assert seal.is_sealed(path)
    out = ArchiveReader(w.directory).history(f"{DEV}/Position", 0, 2000, 0)
    assert out["values"] == [1.0]
    assert [g["cause"][:19] for g in out["gaps"]] == ["5 rows not written:"]
    w2 = ArchiveWriter(w.directory)
    w2.open()  # the lock is released: a new logger can take the directory
    w2.close()


# ------------------------------------------------------------- the logic
def _logic(tmp_path, disk: Disk) -> LoggerLogic:
    writer = ArchiveWriter(tmp_path / "archive", WriterPolicy(schema_delay=0.0, min_free_bytes=MB))
    writer.statvfs = disk
    return LoggerLogic(writer, lambda ev: ev, LoggerConfig(flush_period=3600.0))


def test_the_logger_goes_alarm_with_the_reason_and_back_to_on_by_itself(tmp_path, disk):
    c = _logic(tmp_path, disk)
    c.start()
    try:
        for meta in (POS, STATUS):
            c.register(meta)
        sink = c.sink(POS.key)
        sink((1000.0, 1.0, VALID, None))
        c.flush_now()
        assert c.machine.state is State.ON
        written = c.stats.events_written
        disk.free = 0
        for i in range(6):
            sink((1001.0 + i, 2.0, VALID, None))
        with pytest.raises(NotStored) as refused:
            c.flush_now()  # Flush must not acknowledge what is not stored
        assert refused.value.disk_full
        st = c.stats
        assert c.machine.state is State.ALARM
        status = c.machine.status
        assert status.startswith("Disk full: the disk holding the archive directory")
        assert str(c.directory) in status and "6 rows not written since" in status
        assert (st.rows_lost, st.errors, st.events_written) == (6, 1, written)
        assert st.last_error in status and "6 rows not written" in st.last_error
        sink((1010.0, 3.0, VALID, None))
        with pytest.raises(NotStored):
            c.flush_now()
        assert "7 rows not written" in c.machine.status and c.stats.errors == 2
        disk.free = 10_000 * MB
        sink((1020.0, 4.0, VALID, None))
        c.flush_now()
        assert c.machine.state is State.ON and c.machine.status.startswith("Archiving")
        assert c.stats.rows_lost == 7 and c.stats.events_written == written + 1
        out = c.reader.history(f"{DEV}/Position", 0, 2000, 0)
        assert out["values"] == [1.0, 4.0]
        assert [g["cause"][:19] for g in out["gaps"]] == ["7 rows not written:"]
    finally:
        c.stop()


def test_the_table_sends_a_full_disk_to_alarm_from_every_state():
    from tango_devices.common.statemachine import StateMachine

    for source in states.LOGGER_STATES:
        machine = StateMachine(states.LOGGER_TABLE)
        machine._state = source
        assert machine.fire(states.DISK_FULL) is State.ALARM
        assert machine.is_allowed("GetHistory") and machine.is_allowed("Flush")


def test_reserving_gives_the_space_back_when_the_file_is_closed(tmp_path):
    """The real fallocate (where the file system has it): what is reserved
    beyond the file's end is released when the file is closed."""
    w = ArchiveWriter(tmp_path, WriterPolicy(schema_delay=0.0))
    w.open()
    w.add_meta(POS)
    w.cycle({POS.key: rows(1000.0, 100)})
    w.cycle({POS.key: rows(2000.0, 100)})
    path = w.path
    st = os.stat(path)
    reserved = w._reserved_to - st.st_size
    if reserved <= 0:
        pytest.skip("this file system has no fallocate")
    assert st.st_blocks * 512 >= st.st_size + reserved  # allocated beyond the end
    w.close()
    st = os.stat(path)
    assert st.st_blocks * 512 < st.st_size + 64 * 1024  # given back
    assert len(list_files(tmp_path)) == 1


def test_a_crash_left_file_is_kept_when_there_is_no_room_to_seal_it(tmp_path, monkeypatch):
    """Sealing works on a copy: on a full disk it cannot, and the file (sound,
    readable as a SWMR reader) must not be taken for a broken one."""
    from tango_devices.logger import seal, store

    w = ArchiveWriter(tmp_path, WriterPolicy(schema_delay=0.0))
    w.open()
    w.add_meta(POS)
    w.cycle({POS.key: [(1000.0, 1.0, VALID)]})
    left = w.path  # the writer "dies": its file is never closed
    w._lockfile.close()
    assert not seal.is_sealed(left)

    def no_room(path):
        (path.parent / (path.name + ".sealing.tmp")).write_bytes(b"half a copy")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.sealing, "seal", no_room)
    again = ArchiveWriter(tmp_path, WriterPolicy(schema_delay=0.0))
    rec = again.open()
    try:
        assert rec.corrupt == [] and rec.sealed == [] and left.name in rec.unsealed[0]
        assert list_files(tmp_path) == [left]  # kept under its name
        assert not list(tmp_path.glob("*.sealing.tmp"))
        out = ArchiveReader(tmp_path).history(f"{DEV}/Position", 0, 2000, 0)
        assert out["values"] == [1.0]
    finally:
        again.close()
