"""The logger's HDF5 files: round trips, rotation, carried rows, queries,
gaps, and a writer killed with SIGKILL (really, in a subprocess) whose files
all open afterwards with everything up to its last flush."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tango_devices.logger import seal
from tango_devices.logger.model import ALARM, INVALID, VALID, AttrMeta
from tango_devices.logger.reader import ArchiveReader, QueryError
from tango_devices.logger.store import (
    FORMAT,
    ArchiveWriter,
    StoreError,
    WriterPolicy,
    list_files,
    open_for_read,
)

DEV = "bl01/mot/x"
POS = AttrMeta(DEV, "Position", "float", "DevDouble", unit="mm")
STATE = AttrMeta(DEV, "State", "state", "DevState")
STATUS = AttrMeta(DEV, "Status", "json", "DevString")
COUNTS = AttrMeta(DEV, "Counts", "json", "DevLong", "SPECTRUM")
HOMED = AttrMeta(DEV, "Homed", "bool", "DevBoolean")
STEPS = AttrMeta(DEV, "Steps", "int", "DevLong64")
MODE = AttrMeta(DEV, "Mode", "enum", "DevEnum", labels=("SINGLE", "MULTIPLE"))
ALL = (POS, STATE, STATUS, COUNTS, HOMED, STEPS, MODE)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


_OPEN: list[ArchiveWriter] = []


@pytest.fixture(autouse=True)
def _close_writers():
    yield
    while _OPEN:
        _OPEN.pop().close()


def writer(tmp_path: Path, clock=None, **policy) -> ArchiveWriter:
    """A writer with every test attribute registered (closed after the test)."""
    policy.setdefault("schema_delay", 0.0)
    w = ArchiveWriter(tmp_path, WriterPolicy(**policy), clock=clock or time.time)
    w.open()
    _OPEN.append(w)
    for meta in ALL:
        w.add_meta(meta)
    return w


def config_record(attr: str, **config) -> dict:
    return {"kind": "config", "attribute": attr, "config": config}


def props_record(props: dict, attr_props: dict | None = None) -> dict:
    return {"kind": "properties", "properties": props, "attribute_properties": attr_props or {}}


def test_every_kind_round_trips(tmp_path):
    w = writer(tmp_path)
    t = 1000.0
    w.cycle(
        {
            POS.key: [(t, 1.5, VALID), (t + 1, None, INVALID), (t + 2, 2.5, ALARM)],
            STATE.key: [(t, 0, VALID), (t + 1, 6, VALID)],
            STATUS.key: [(t, "Ready é", VALID)],
            COUNTS.key: [(t, np.array([1, 2, 3], dtype=np.int32), VALID)],
            HOMED.key: [(t, True, VALID)],
            STEPS.key: [(t, 2**40, VALID)],
            MODE.key: [(t, 1, VALID)],
        }
    )
    r = ArchiveReader(tmp_path, live=w)

    def h(meta):
        out = r.history(f"{DEV}/{meta.attribute}", 0, 2000, 0)
        return out["values"], out["qualities"]

    assert h(POS) == ([1.5, None, 2.5], ["VALID", "INVALID", "ALARM"])
    assert h(STATE)[0] == ["ON", "MOVING"]
    assert h(STATUS)[0] == ["Ready é"]
    assert h(COUNTS)[0] == [[1, 2, 3]]
    assert h(HOMED)[0] == [True]
    assert h(STEPS)[0] == [2**40]
    assert h(MODE)[0] == ["MULTIPLE"]
    w.close()
    # closed: a plain h5py open works, and so does a reader without the writer
    with h5py.File(list_files(tmp_path)[-1]) as f:
        assert f["values/bl01/mot/x/position/time"].shape == (3,)
    assert ArchiveReader(tmp_path).history(f"{DEV}/Position", 0, 2000, 0)["values"] == [
        1.5,
        None,
        2.5,
    ]


def test_history_range_decimation_and_unknown_names(tmp_path):
    w = writer(tmp_path)
    times = 1000.0 + np.arange(10_000) * 0.1
    values = np.sin(np.arange(10_000) / 100.0)
    values[5555] = 9.0  # a spike
    w.cycle({POS.key: list(zip(times.tolist(), values.tolist(), [VALID] * 10_000, strict=True))})
    r = ArchiveReader(tmp_path, live=w)
    out = r.history(f"{DEV}/position", 1100.0, 1199.95, 100)
    assert out["count"] == 1000  # 1100.0 .. 1199.9
    assert out["returned"] <= 100 and out["decimated"] and out["method"] == "minmax"
    assert out["times"] == sorted(out["times"])
    spike = r.history(f"{DEV}/Position", 0, 5000, 50)
    assert 9.0 in spike["values"]
    full = r.history(f"{DEV}/Position", 1000.0, 1000.35, 0)
    assert full["values"] == pytest.approx(values[:4].tolist())
    with pytest.raises(QueryError, match="not archived"):
        r.history(f"{DEV}/Nothing", 0, 1, 10)
    with pytest.raises(QueryError, match="before start"):
        r.history(f"{DEV}/Position", 10, 1, 10)


def test_out_of_order_times_are_returned_sorted(tmp_path):
    w = writer(tmp_path)
    w.cycle({POS.key: [(1003.0, 3.0, VALID), (1001.0, 1.0, VALID), (1002.0, 2.0, VALID)]})
    out = ArchiveReader(tmp_path, live=w).history(f"{DEV}/Position", 0, 2000, 0)
    assert out["times"] == [1001.0, 1002.0, 1003.0]
    assert out["values"] == [1.0, 2.0, 3.0]


def test_new_attributes_go_into_the_current_file(tmp_path):
    w = writer(tmp_path)
    w.cycle(
        {POS.key: [(1000.0, 1.0, VALID)]},
        settings=[(DEV, 1000.0, props_record({"Axis": ["1"]}))],
    )
    first = w.path
    # a device that starts later: new attributes of every kind, and its settings
    late = "bl01/mot/late"
    metas = [
        AttrMeta(late, "Position", "float", unit="mm"),
        AttrMeta(late, "State", "state"),
        AttrMeta(late, "Steps", "int"),
        AttrMeta(late, "Status", "json"),
        AttrMeta(late, "Mode", "enum", labels=("A", "B")),
    ]
    for meta in metas:
        w.add_meta(meta)
    result = w.cycle(
        {
            metas[0].key: [(1010.0, 2.5, VALID), (1011.0, 3.5, ALARM)],
            metas[1].key: [(1010.0, 6, VALID)],
            metas[2].key: [(1010.0, 2**40, VALID)],
            metas[3].key: [(1010.0, "Moving", VALID), (1012.0, None, INVALID)],
            metas[4].key: [(1010.0, 1, VALID)],
            POS.key: [(1010.0, 1.5, VALID)],
        },
        settings=[(late, 1010.0, props_record({"Axis": ["7"]}))],
    )
    assert result.rotated is None and w.path == first and len(list_files(tmp_path)) == 1
    assert result.rows == 8

    def check(r: ArchiveReader) -> None:
        h = r.history(f"{late}/Position", 0, 2000, 0)
        assert (h["values"], h["qualities"], h["unit"]) == ([2.5, 3.5], ["VALID", "ALARM"], "mm")
        assert r.history(f"{late}/State", 0, 2000, 0)["values"] == ["MOVING"]
        assert r.history(f"{late}/Steps", 0, 2000, 0)["values"] == [2**40]
        assert r.history(f"{late}/Status", 0, 2000, 0)["values"] == ["Moving", None]
        assert r.history(f"{late}/Mode", 0, 2000, 0)["values"] == ["B"]
        assert r.history(f"{DEV}/Position", 0, 2000, 0)["values"] == [1.0, 1.5]
        at = r.configuration_at(late, 1011.5)
        assert at["attributes"]["Position"]["value"] == 3.5
        assert at["attributes"]["Status"]["value"] == "Moving"
        assert at["properties"] == {"Axis": ["7"]}
        assert r.configuration_at(late, 1010.5)["attributes"]["Position"]["value"] == 2.5
        listed = {i["attribute"]: i["rows"] for i in r.list_attributes(f"{late}/*")}
        assert listed == {
            f"{late}/{m.attribute}": n for m, n in zip(metas, [2, 1, 1, 2, 1], strict=True)
        }

    check(ArchiveReader(tmp_path, live=w))  # through the writer's own handle
    check(ArchiveReader(tmp_path))  # from the file, as a SWMR reader
    w.close()
    check(ArchiveReader(tmp_path))  # closed: from its index (and the catalog)
    with h5py.File(first) as f:
        assert f.attrs["format"] == FORMAT and f["extra/key"].shape == (7,)


def test_a_full_extra_table_starts_a_new_file_with_carried_rows(tmp_path):
    w = writer(tmp_path, max_extra_rows=3)
    w.cycle(
        {POS.key: [(1000.0, 1.0, VALID)]},
        settings=[
            (DEV, 1000.0, config_record("Position", max_value="20")),
            (DEV, 1000.0, props_record({"Axis": ["1"]})),
        ],
    )
    first = w.path
    offset = AttrMeta(DEV, "Offset", "float")
    w.add_meta(offset)
    result = w.cycle({offset.key: [(1010.0, 0.5, VALID)], POS.key: [(1010.0, 1.5, VALID)]})
    assert result.rotated is None and w.path == first  # in the extra table
    w.cycle({offset.key: [(1011.0, 0.6, VALID), (1012.0, 0.7, VALID)]})
    result = w.cycle({offset.key: [(1013.0, 0.8, VALID)], POS.key: [(1013.0, 1.6, VALID)]})
    assert result.rotated == "new attributes" and w.path != first
    assert seal.is_sealed(first)  # the old file was closed cleanly
    with open_for_read(w.path) as h5:
        pos = h5["values/bl01/mot/x/position"]
        assert pos.attrs["carried"] == 1
        # rows of known attributes went to the old file first, so the carried
        # row is the latest one
        assert pos["time"][:].tolist() == [1013.0]
        assert h5["values/bl01/mot/x/offset"].attrs["carried"] == 1  # its own dataset now
        assert h5["settings/bl01/mot/x"].attrs["carried"] == 2
    r = ArchiveReader(tmp_path, live=w)
    # history never repeats a carried row
    assert r.history(f"{DEV}/Position", 0, 2000, 0)["times"] == [1000.0, 1010.0, 1013.0]
    assert r.history(f"{DEV}/Offset", 0, 2000, 0)["values"] == [0.5, 0.6, 0.7, 0.8]
    # the configuration at 1005 comes from the first file, at 1020 from the second alone
    at = r.configuration_at(DEV, 1005.0)
    assert at["attributes"]["Position"]["value"] == 1.0
    assert at["attributes"]["Position"]["config"] == {"max_value": "20"}
    assert "Offset" not in at["attributes"]
    at = r.configuration_at(DEV, 1020.0)
    assert at["attributes"]["Offset"]["value"] == 0.8
    assert at["attributes"]["Position"]["value"] == 1.6
    assert at["properties"] == {"Axis": ["1"]}
    os.unlink(first)  # the newer file is self-contained
    at = ArchiveReader(tmp_path, live=w).configuration_at(DEV, 1020.0)
    assert at["attributes"]["Position"]["config"] == {"max_value": "20"}
    assert at["attributes"]["Offset"]["value"] == 0.8


def test_an_attribute_that_changes_kind_keeps_its_history(tmp_path):
    w = writer(tmp_path)
    w.cycle({STEPS.key: [(1000.0, 5, VALID)]})
    w.add_meta(AttrMeta(DEV, "Steps", "json", "DevString"))  # a new server version
    w.cycle({STEPS.key: [(1001.0, "five", VALID)]})
    r = ArchiveReader(tmp_path, live=w)
    assert r.history(f"{DEV}/Steps", 0, 2000, 0)["values"] == [5, "five"]
    assert r.configuration_at(DEV, 2000.0)["attributes"]["Steps"]["value"] == "five"
    assert len(list_files(tmp_path)) == 1


def test_configuration_at_before_and_after_a_change(tmp_path):
    w = writer(tmp_path)
    w.cycle(
        {POS.key: [(1000.0, 1.0, VALID)]},
        settings=[
            (DEV, 1000.0, config_record("Position", max_value="20")),
            (DEV, 1000.0, props_record({"Axis": ["1"]}, {"Offset": {"__value": ["0"]}})),
        ],
    )
    w.cycle(
        {},
        settings=[
            (DEV, 1050.0, config_record("Position", max_value="15")),
            (DEV, 1050.0, props_record({"Axis": ["1"]}, {"Offset": {"__value": ["0"]}})),
        ],
    )
    r = ArchiveReader(tmp_path, live=w)
    from tango_devices.logger.configuration import diff

    changed = diff(r.configuration_at(DEV, 1049.9), r.configuration_at(DEV, 1050.0))
    assert changed == {"attributes.Position.config.max_value": {"before": "20", "after": "15"}}
    with pytest.raises(QueryError, match="not archived"):
        r.configuration_at("bl01/mot/none", 1000.0)
    with pytest.raises(QueryError, match="not a device name"):
        r.configuration_at("bl01/mot", 1000.0)


def test_rotation_by_size_and_by_day(tmp_path):
    clock = Clock(1_800_000_000.0)
    w = writer(tmp_path, clock=clock, max_file_size=64 * 1024)
    for i in range(20):
        w.cycle({POS.key: [(1000.0 + i * 2000 + k, float(k), VALID) for k in range(2000)]})
    assert len(list_files(tmp_path)) > 2
    before = len(list_files(tmp_path))
    big = writer(tmp_path / "d", clock=clock)
    big.cycle({POS.key: [(1.0, 1.0, VALID)]})
    clock.t += 86400
    assert big.cycle({POS.key: [(2.0, 2.0, VALID)]}).rotated == "new day"
    out = ArchiveReader(tmp_path, live=w).history(f"{DEV}/Position", 0, 1e9, 0)
    assert out["count"] == 40_000 and before == len(list_files(tmp_path))


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path):
    writer(tmp_path)
    with pytest.raises(StoreError, match="another logger"):
        ArchiveWriter(tmp_path).open()


def test_a_clean_stop_is_recorded_as_a_gap_at_the_next_start(tmp_path):
    w = writer(tmp_path)
    w.cycle({POS.key: [(time.time(), 1.0, VALID)]})
    w.close()
    stopped = time.time()
    w2 = writer(tmp_path)
    w2.cycle({POS.key: [(time.time(), 2.0, VALID)]})
    gaps = ArchiveReader(tmp_path, live=w2).gaps(0, time.time() + 1)
    assert len(gaps) == 1
    assert gaps[0]["start"] <= stopped <= gaps[0]["end"]
    assert "stopped" in gaps[0]["cause"]


def test_too_large_values_become_error_rows_with_the_reason(tmp_path):
    w = writer(tmp_path, max_value_bytes=100)
    w.cycle({COUNTS.key: [(1000.0, np.arange(1000), VALID), (1001.0, np.arange(3), VALID)]})
    out = ArchiveReader(tmp_path, live=w).history(f"{DEV}/Counts", 0, 2000, 0)
    assert out["qualities"] == ["ERROR", "VALID"]
    assert out["values"] == [None, [0, 1, 2]]
    assert out["errors"][0]["reason"] == "VALUE_TOO_LARGE"


def test_leftovers_are_cleaned_and_broken_files_set_aside(tmp_path):
    (tmp_path / "archive-000007-20260101T000000Z.h5.tmp").write_bytes(b"half a file")
    (tmp_path / "archive-000003-20260101T000000Z.h5").write_bytes(b"not hdf5 at all")
    w = ArchiveWriter(tmp_path)
    rec = w.open()
    _OPEN.append(w)
    assert rec.removed == ["archive-000007-20260101T000000Z.h5.tmp"]
    assert rec.corrupt and (tmp_path / "archive-000003-20260101T000000Z.h5.corrupt").exists()
    assert list_files(tmp_path) == []
    w.close()  # the problem is on record, in a file of its own
    (path,) = list_files(tmp_path)
    with h5py.File(path) as f:
        journal = [json.loads(x) for x in _blobs(f["logger/journal"])]
    assert any(j["kind"] == "corrupt" and "000003" in j["file"] for j in journal)


def _blobs(group):
    ends = group["end"][:]
    blob = group["blob"][:].tobytes()
    return [blob[s:e] for s, e in zip([0, *ends[:-1]], ends, strict=True)]


# ------------------------------------------------------------ kill -9
CRASHER = r"""
import json, os, signal, sys, time
from tango_devices.logger.model import AttrMeta
from tango_devices.logger.store import ArchiveWriter, WriterPolicy
directory, kill_after = sys.argv[1], int(sys.argv[2])
w = ArchiveWriter(directory, WriterPolicy(schema_delay=0, max_file_size=2 * 1024 * 1024))
w.open()
metas = [AttrMeta(f"bl01/test/d{i % 4}", f"a{i}", "float") for i in range(24)]
metas.append(AttrMeta("bl01/test/d0", "Text", "json"))
for m in metas:
    w.add_meta(m)
cycle = 0
while True:
    if cycle == kill_after:
        w.mid_write_hook = lambda: os.kill(os.getpid(), signal.SIGKILL)
    rows = {}
    for m in metas:
        base = 1000.0 + cycle
        if m.kind == "float":
            rows[m.key] = [(base + k * 0.001, float(cycle * 1000 + k), 0) for k in range(200)]
        else:
            rows[m.key] = [(base + k * 0.001, "x" * 50 + str(k), 0) for k in range(200)]
    w.cycle(rows)
    print(json.dumps({"cycle": cycle, "last": 1000.0 + cycle + 0.199}), flush=True)
    cycle += 1
"""


def _crash_writer(directory: Path, kill_after: int, kill_at: float | None = None) -> dict | None:
    """Run the writer until it is killed; the last cycle it reported flushed."""
    with subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(directory), str(kill_after)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        last = None
        deadline = time.monotonic() + 60
        start = None
        for line in proc.stdout:
            last = json.loads(line)
            start = start or time.monotonic()
            if kill_at is not None and time.monotonic() - start >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "the writer never got killed"
        # lines printed after our last read are flushed cycles too
        for line in proc.stdout.read().splitlines():
            last = json.loads(line)
        assert proc.wait(10) == -signal.SIGKILL
    return last


def _check_after_crash(directory: Path, last: dict) -> None:
    files = list_files(directory)
    assert files
    unsealed = [p for p in files if not seal.is_sealed(p)]
    assert unsealed, "a killed writer leaves its active file unsealed"
    for path in files:  # every file opens as a SWMR reader, even before sealing
        with open_for_read(path):
            pass
    w = ArchiveWriter(directory)
    rec = w.open()
    assert sorted(rec.sealed) == sorted(p.name for p in unsealed)
    assert "kill -9" in rec.cause
    for path in list_files(directory):  # and now with a plain open
        with h5py.File(path, "r") as f:
            assert f.attrs["format"] == FORMAT
    w.close()
    r = ArchiveReader(directory)
    for name in ("bl01/test/d0/a0", "bl01/test/d3/a23", "bl01/test/d0/Text"):
        out = r.history(name, 0, last["last"], 0)
        # every row up to the last flush: 200 per cycle
        assert out["count"] >= 200 * (last["cycle"] + 1), name
        assert out["times"][-1] >= last["last"] - 1e-9
    gaps = r.gaps(0, time.time() + 1)
    assert gaps and "kill -9" in gaps[-1]["cause"]


def test_killed_half_way_through_a_write_every_file_opens_with_its_flushed_data(tmp_path):
    last = _crash_writer(tmp_path, kill_after=7)
    assert last["cycle"] == 6  # killed inside cycle 7, before its flush
    _check_after_crash(tmp_path, last)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_at_a_random_moment_every_file_opens_with_its_flushed_data(tmp_path, seed):
    rng = random.Random(seed)
    last = _crash_writer(tmp_path, kill_after=-1, kill_at=rng.uniform(0.2, 1.5))
    _check_after_crash(tmp_path, last)
