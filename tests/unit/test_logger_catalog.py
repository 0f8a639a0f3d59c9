"""The archive's catalog and files per start: a fresh reader's first query
opens only the files it needs, whatever the number of files (the catalog
kept across restarts); attributes that appear after a file was made go into
that file, so a start makes one file, not one per start level."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tango_devices.logger import reader as reader_module
from tango_devices.logger.model import VALID, AttrMeta
from tango_devices.logger.reader import ArchiveReader, load_info
from tango_devices.logger.store import (
    CATALOG,
    ArchiveWriter,
    Catalog,
    WriterPolicy,
    file_stamp,
    list_files,
)

DEV = "bl01/mot/x"
POS = AttrMeta(DEV, "Position", "float", "DevDouble", unit="mm")
STATUS = AttrMeta(DEV, "Status", "json", "DevString")
FILES = 100
PER_FILE = 10  # rows of Position per file, 1 s apart: file i holds [10 i, 10 i + 9] + T0
T0 = 1_700_000_000.0


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The names of the files the reader opens (with h5py), in order."""
    names: list[str] = []
    real = reader_module.open_for_read

    def counting(path):
        names.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(reader_module, "open_for_read", counting)
    return names


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return _make_files(tmp_path_factory.mktemp("hundred"))


@pytest.fixture
def archive(made, tmp_path) -> Path:
    """A copy of the hundred files (times, and so the catalog's stamps, kept)."""
    target = tmp_path / "archive"
    shutil.copytree(made, target, copy_function=shutil.copy2)
    return target


def hundred_files(directory: Path) -> list[Path]:
    files = list_files(directory)
    assert len(files) == FILES
    return files


def holding(files: list[Path], start: float, end: float) -> list[str]:
    """The files with Position rows in [start, end] (carried rows excluded),
    found by reading every file with h5py directly."""
    out = []
    for path in files:
        with h5py.File(path, "r") as f:
            group = f["values/bl01/mot/x/position"]
            times = group["time"][int(group.attrs["carried"]) :]
            if np.any((times >= start) & (times <= end)):
                out.append(path.name)
    return out


def _make_files(directory: Path) -> Path:
    """FILES closed archive files made by the store: a rotation by size at
    every cycle (each file also carries the last row of the one before)."""
    w = ArchiveWriter(directory, WriterPolicy(schema_delay=0.0, max_file_size=1))
    w.open()
    for meta in (POS, STATUS):
        w.add_meta(meta)
    for i in range(FILES):
        base = T0 + i * PER_FILE
        rows = [(base + k, float(i * PER_FILE + k), VALID) for k in range(PER_FILE)]
        w.cycle(
            {POS.key: rows, STATUS.key: [(base, f"file {i}", VALID)]},
            settings=[(DEV, base, {"kind": "properties", "properties": {"N": [str(i)]}})],
            force=True,
        )
    w.close()
    return directory


def test_a_fresh_readers_first_query_opens_only_the_files_it_needs(archive, opened):
    files = hundred_files(archive)
    start, end = T0 + 40 * PER_FILE + 2, T0 + 42 * PER_FILE + 5
    needed = holding(files, start, end)
    assert 2 <= len(needed) <= 4
    r = ArchiveReader(archive)  # a restarted logger, a CLI: nothing in memory
    out = r.history(f"{DEV}/Position", start, end, 0)
    assert out["times"] == [float(t) for t in range(int(start), int(end) + 1)]
    assert out["values"] == [t - T0 for t in out["times"]]
    assert opened == needed
    # the configuration at a moment: the newest file that covers it, only
    opened.clear()
    t = T0 + 70 * PER_FILE + 3
    at = r.configuration_at(DEV, t)
    assert at["attributes"]["Position"]["value"] == 70 * PER_FILE + 3
    assert at["properties"] == {"N": ["70"]}
    # the file after it carries its last rows and settings, so it is read first;
    # the value at t is only in the file that holds it: two files of a hundred
    names = [p.name for p in files]
    (holder,) = holding(files, t - 3, t)
    assert opened == [names[names.index(holder) + 1], holder], opened
    # the list of what is archived opens nothing
    opened.clear()
    listed = r.list_attributes("bl01/mot/*")
    assert [(i["attribute"], i["rows"]) for i in listed] == [
        (f"{DEV}/Position", FILES * PER_FILE),
        (f"{DEV}/Status", FILES),
    ]
    assert opened == []


def test_the_catalog_says_what_reading_the_file_says(archive):
    files = hundred_files(archive)
    catalog = Catalog(archive)
    for path in (files[0], files[57], files[-1]):
        entry = catalog.get(path, file_stamp(path))
        assert entry is not None, path.name
        read = load_info(path)
        assert entry.values == read.values and entry.settings == read.settings
        assert entry.metas == read.metas and entry.extra == read.extra
        assert entry.journal == read.journal and entry.end == read.end
        assert (entry.seq, entry.created) == (read.seq, read.created)


def test_files_the_catalog_does_not_know_are_read_once_and_catalogued(archive, opened):
    files = hundred_files(archive)
    (archive / CATALOG).unlink()  # an archive of an older version, or a lost catalog
    r = ArchiveReader(archive)
    out = r.history(f"{DEV}/Position", T0, T0 + 5, 0)
    assert out["values"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    needed = holding(files, T0, T0 + 5)
    assert opened == [p.name for p in files] + needed  # each read once, then the data
    # the logger's reader writes down what it learns: the next restart is fast
    w = ArchiveWriter(archive)
    w.open()
    try:
        ArchiveReader(archive, live=w).files()
        os.utime(files[10], ns=(1, 1))  # a file changed since it was catalogued
        opened.clear()
        start, end = T0 + 985, T0 + 999
        fresh = ArchiveReader(archive)
        assert fresh.history(f"{DEV}/Position", start, end, 0)["count"] == 15
        assert opened == [files[10].name, *holding(files, start, end)]
    finally:
        w.close()


def test_a_damaged_catalog_costs_a_read_not_an_answer(archive, opened):
    files = hundred_files(archive)
    (archive / CATALOG).write_text('{"format": "bl01-logger-index/1", "files": {"x": ')
    out = ArchiveReader(archive).history(f"{DEV}/Position", T0, T0 + 1e6, 0)
    assert out["count"] == FILES * PER_FILE
    assert opened == [p.name for p in files] + holding(files, T0, T0 + 1e6)


def test_the_catalog_forgets_files_that_are_gone(archive):
    files = hundred_files(archive)
    for path in files[:30]:
        path.unlink()
    w = ArchiveWriter(archive)
    w.open()
    w.close()
    names = set(json.loads((archive / CATALOG).read_text())["files"])
    assert names == {p.name for p in list_files(archive)}
    assert not names & {p.name for p in files[:30]}


# ------------------------------------------------------- files per start
def test_a_start_makes_one_file_whatever_the_number_of_start_levels(tmp_path):
    """`beamline up` starts the logger, then the servers level by level: each
    level's attributes appear a few seconds after the previous ones."""
    for start in range(3):  # three restarts of the whole beamline
        w = ArchiveWriter(tmp_path, WriterPolicy(schema_delay=0.0))
        w.open()
        t = T0 + start * 1000
        for level in range(4):
            metas = [AttrMeta(f"bl01/l{level}/d{d}", "Value", "float") for d in range(5)]
            for meta in metas:
                w.add_meta(meta)
            for _ in range(3):
                t += 1
                w.cycle(
                    {m.key: [(t, float(level), VALID)] for m in metas},
                    settings=[
                        (m.device, t, {"kind": "properties", "properties": {}}) for m in metas
                    ],
                )
        w.close()
        assert len(list_files(tmp_path)) == start + 1
    r = ArchiveReader(tmp_path)
    assert r.history("bl01/l3/d4/Value", 0, T0 + 1e4, 0)["count"] == 3 * 3
    assert r.configuration_at("bl01/l2/d0", T0 + 2500)["attributes"]["Value"]["value"] == 2.0
