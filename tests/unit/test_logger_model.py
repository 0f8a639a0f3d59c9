"""The logger's pure helpers: kinds, values, times, include/exclude patterns,
decimation, configuration diffs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from tango_devices.logger import configuration
from tango_devices.logger.decimate import decimate, minmax_indices, stride_indices
from tango_devices.logger.model import (
    ERROR,
    INVALID,
    VALID,
    AttrMeta,
    decode_scalar,
    encode_json,
    kind_for,
    parse_time,
    split_key,
    to_jsonable,
)
from tango_devices.logger.selection import Pattern, Selection

# ------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("tango_type", "fmt", "kind"),
    [
        ("DevDouble", "SCALAR", "float"),
        ("DevFloat", "SCALAR", "float"),
        ("DevLong64", "SCALAR", "int"),
        ("DevUChar", "SCALAR", "int"),
        ("DevBoolean", "SCALAR", "bool"),
        ("DevState", "SCALAR", "state"),
        ("DevEnum", "SCALAR", "enum"),
        ("DevString", "SCALAR", "json"),
        ("DevDouble", "SPECTRUM", "json"),
        ("DevUShort", "IMAGE", "json"),
        ("DevEncoded", "SCALAR", "json"),
    ],
)
def test_kind_for_every_tango_type(tango_type, fmt, kind):
    assert kind_for(tango_type, fmt) == kind


def test_decode_scalar_per_kind():
    state = AttrMeta("a/b/c", "State", "state")
    enum = AttrMeta("a/b/c", "Mode", "enum", labels=("SINGLE", "MULTIPLE"))
    assert decode_scalar(state, 0, VALID) == "ON"
    assert decode_scalar(state, 8, VALID) == "FAULT"
    assert decode_scalar(enum, 1, VALID) == "MULTIPLE"
    assert decode_scalar(enum, 7, VALID) == 7  # a label the archive never saw
    assert decode_scalar(AttrMeta("a/b/c", "On", "bool"), 1, VALID) is True
    assert decode_scalar(AttrMeta("a/b/c", "X", "float"), 2.5, VALID) == 2.5
    assert decode_scalar(AttrMeta("a/b/c", "X", "float"), np.nan, VALID) is None
    assert decode_scalar(AttrMeta("a/b/c", "X", "float"), 2.5, INVALID) is None
    assert decode_scalar(AttrMeta("a/b/c", "X", "int"), 3, ERROR) is None


def test_json_encoding_of_tango_values():
    assert to_jsonable(np.array([1.0, np.nan])) == [1.0, None]
    assert to_jsonable(np.arange(4, dtype=np.uint16).reshape(2, 2)) == [[0, 1], [2, 3]]
    assert to_jsonable(np.float32(0.5)) == 0.5
    assert to_jsonable(b"\x01\xff") == {"bytes_hex": "01ff"}
    assert to_jsonable(("fmt", b"ab")) == ["fmt", {"bytes_hex": "6162"}]
    assert encode_json("é") == b'"\\u00e9"'


def test_meta_round_trips_through_hdf5_attributes():
    meta = AttrMeta("bl01/det/cam1", "Mode", "enum", "DevEnum", "SCALAR", ("A", "B"), "mm")
    assert AttrMeta.from_attrs(meta.as_attrs()) == meta
    assert meta.key == "bl01/det/cam1/mode"


def test_split_key_names_what_is_wrong():
    assert split_key("bl01/mot/sample_x/Position") == ("bl01/mot/sample_x", "Position")
    with pytest.raises(ValueError, match="domain/family/member/attribute"):
        split_key("bl01/mot/sample_x")


# ------------------------------------------------------------------- times
def test_parse_time_forms():
    now = 1_800_000_000.0
    assert parse_time(12.5, now) == 12.5
    assert parse_time("now", now) == now
    assert parse_time("-10m", now) == now - 600
    assert parse_time("-2h", now) == now - 7200
    assert parse_time("-1d", now) == now - 86400
    assert parse_time("1700000000.25", now) == 1700000000.25
    assert (
        parse_time("2026-11-22T10:00:00Z", now)
        == dt.datetime(2026, 11, 22, 10, tzinfo=dt.UTC).timestamp()
    )
    local = dt.datetime(2026, 11, 22, 10).astimezone().timestamp()
    assert parse_time("2026-11-22T10:00:00", now) == local
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish", now)


# --------------------------------------------------------------- selection
def test_patterns_match_part_by_part():
    sel = Selection(["bl01"], ["bl01/sys/logger", "*/*/*/Image", "bl01/mot/*/Dial*"])
    assert sel.wants("bl01/mot/sample_x", "Position")
    assert sel.wants("BL01/Mot/Sample_X", "position")  # Tango names ignore case
    assert not sel.wants("bl01/mot/sample_x", "DialPosition")
    assert not sel.wants("bl01/det/cam1", "Image")
    assert sel.wants("bl01/det/cam1", "RoiSum")
    assert not sel.wants("bl02/mot/x", "Position")
    assert sel.wants_device("bl01/det/cam1")  # only one attribute is excluded
    assert not sel.wants_device("bl01/sys/logger")  # the whole device is
    assert not sel.wants_device("sys/database/2")


def test_star_never_crosses_a_slash():
    assert Pattern.parse("bl01/*").matches("bl01/mot/x", "Position")
    assert Pattern.parse("bl01/*").parts == ("bl01", "*", "*", "*")
    assert not Pattern.parse("bl01/mot").matches_device("bl01/motor/x")
    assert not Pattern.parse("*/mot/x/pos*").matches("bl01/mot/x", "DialPosition")


@pytest.mark.parametrize("bad", ["a/b/c/d/e", "a//b", "   "])
def test_bad_patterns_are_refused(bad):
    with pytest.raises(ValueError, match="pattern"):
        Pattern.parse(bad)


def test_selection_reports_every_bad_pattern():
    with pytest.raises(ValueError) as info:
        Selection(["a/b/c/d/e"], ["x//y"])
    assert "'a/b/c/d/e'" in str(info.value) and "'x//y'" in str(info.value)


# -------------------------------------------------------------- decimation
def test_minmax_keeps_spikes_a_stride_would_lose():
    values = np.zeros(10_000)
    values[4321] = 50.0
    values[8765] = -50.0
    picks = minmax_indices(values, 100)
    assert len(picks) <= 100
    assert 4321 in picks and 8765 in picks
    assert np.all(np.diff(picks) > 0)  # time order
    stride = stride_indices(10_000, 100)
    assert 4321 not in stride


def test_decimate_only_when_there_are_more_points_than_asked():
    idx, method = decimate(5, np.arange(5.0), 10)
    assert method == "none" and idx.tolist() == [0, 1, 2, 3, 4]
    idx, method = decimate(1000, None, 10)
    assert method == "stride" and len(idx) == 10 and idx[0] == 0
    idx, method = decimate(1000, np.arange(1000.0), 10)
    assert method == "minmax" and len(idx) == 10 and idx[-1] == 999


def test_a_bucket_without_values_keeps_its_first_row():
    values = np.arange(100.0)
    values[40:60] = np.nan
    picks = minmax_indices(values, 10)  # buckets of 20 rows: 40..59 has no value
    assert 40 in picks


# ----------------------------------------------------------- configuration
def _config(offset, max_value, memorized):
    return configuration.assemble(
        "bl01/mot/x",
        100.0,
        {"Offset": {"value": offset, "quality": "VALID", "time": 90.0}},
        {"Position": {"time": 10.0, "config": {"max_value": max_value, "unit": "mm"}}},
        {
            "time": 50.0,
            "properties": {"Axis": ["1"]},
            "attribute_properties": {"Offset": {"__value": [memorized]}},
        },
    )


def test_assemble_puts_value_config_and_db_properties_per_attribute():
    cfg = _config(0.5, "20", "0.5")
    assert cfg["attributes"]["Offset"]["value"] == 0.5
    assert cfg["attributes"]["Offset"]["properties"] == {"__value": ["0.5"]}
    assert cfg["attributes"]["Position"]["config"]["max_value"] == "20"
    assert cfg["attributes"]["Position"]["value"] is None
    assert cfg["properties"] == {"Axis": ["1"]}


def test_diff_shows_exactly_what_changed_and_ignores_times():
    before = _config(0.5, "20", "0.5")
    after = _config(0.75, "20", "0.75")
    after["attributes"]["Offset"]["time"] = 999.0  # a new row, same setting elsewhere
    changed = configuration.diff(before, after)
    assert changed == {
        "attributes.Offset.properties.__value": {"before": ["0.5"], "after": ["0.75"]},
        "attributes.Offset.value": {"before": 0.5, "after": 0.75},
    }
    assert configuration.diff(before, before) == {}
    assert "attributes.Offset.time" in configuration.diff(before, after, ignore_times=False)
