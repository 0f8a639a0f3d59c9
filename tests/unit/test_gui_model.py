"""The GUI's model: layout along the beam, command permissions, table rows."""

import json

import pytest

from taurus_gui import model
from taurus_gui.model import Section


def test_layout_keeps_configured_order_and_collects_unplaced_devices():
    sections = [
        Section("Slits", ("bl01/mot/slit_h", "bl01/mot/slit_v")),
        Section("Ghost", ("bl01/mot/not_there",)),
        Section("Shutter", ("bl01/shutter/fe",)),
    ]
    existing = ["BL01/Shutter/FE", "bl01/mot/slit_v", "bl01/mot/slit_h", "bl01/new/thing"]
    result = model.layout(sections, existing)
    assert [s.title for s in result.sections] == ["Slits", "Shutter", "Other"]
    assert result.sections[0].devices == ("bl01/mot/slit_h", "bl01/mot/slit_v")
    # the database's spelling wins; names compare case-insensitively
    assert result.sections[1].devices == ("BL01/Shutter/FE",)
    assert result.sections[2].devices == ("bl01/new/thing",)
    assert result.missing == ["bl01/mot/not_there"]


def test_layout_without_unplaced_devices_has_no_other_section():
    result = model.layout([Section("A", ("a/b/c",))], ["a/b/c"])
    assert [s.title for s in result.sections] == ["A"]


def test_command_enabled_follows_the_device_table():
    table = model.parse_command_states(
        json.dumps({"Home": ["ON", "ALARM"], "Stop": ["ON", "MOVING"], "write_Position": ["ON"]})
    )
    assert model.command_enabled("Home", "ON", table)
    assert not model.command_enabled("Home", "MOVING", table)
    assert model.command_enabled("Stop", "moving", table)
    assert model.write_enabled("Position", "ON", table)
    assert not model.write_enabled("Position", "FAULT", table)
    # not in the table (Init, a Sardana command): allowed while the device answers
    assert model.command_enabled("Init", "FAULT", table)
    assert not model.command_enabled("Home", None, table)
    assert not model.command_enabled("Home", "UNKNOWN", table)


def test_parse_command_states_rejects_what_is_not_a_table():
    assert model.parse_command_states("") == {}
    with pytest.raises(ValueError):
        model.parse_command_states("[1, 2]")


def test_parse_macro_line():
    assert model.parse_macro_line("ascan sample_x 0 1 10 0.1") == {
        "macro": "ascan",
        "args": ["sample_x", "0", "1", "10", "0.1"],
    }
    assert model.parse_macro_line("  ct 'a b'") == {"macro": "ct", "args": ["a b"]}
    with pytest.raises(ValueError, match="type a macro"):
        model.parse_macro_line("   ")
    with pytest.raises(ValueError, match="cannot read"):
        model.parse_macro_line("ct 'unclosed")


def test_queue_rows_and_running_summary():
    items = [
        {"uid": "u1", "macro": "ct", "args": ["0.1"], "repeat": 1, "meta": {}},
        {"uid": "u2", "macro": "ascan", "args": ["m", "0", "1"], "repeat": 3, "meta": {"s": 1}},
    ]
    rows = model.queue_rows(json.dumps(items))
    assert [r["uid"] for r in rows] == ["u1", "u2"]
    assert rows[1] == {"uid": "u2", "macro": "ascan m 0 1", "repeat": "3", "meta": "s=1"}
    assert model.queue_rows("") == []
    running = {"macro": "ascan", "args": ["m"], "repeat": 3, "repetition": 2, "progress": 42.7}
    text, percent = model.running_summary(json.dumps(running))
    assert text == "ascan m  (repetition 2 of 3)"
    assert percent == 42
    assert model.running_summary("") == ("nothing running", 0)
    over = dict(running, progress=250)
    assert model.running_summary(json.dumps(over))[1] == 100


def test_history_rows():
    entries = [
        {
            "macro": "ct",
            "args": ["0.1"],
            "repeat": 2,
            "repetitions_done": 1,
            "outcome": "failed",
            "error": "bl01/mot/sample_x does not answer",
            "started": 1_700_000_000.0,
            "ended": None,
        }
    ]
    (row,) = model.history_rows(json.dumps(entries))
    assert row["outcome"] == "failed"
    assert row["repetitions"] == "1/2"
    assert row["ended"] == ""
    assert row["started"].count(":") == 2
    assert "does not answer" in row["error"]


def test_supervisor_rows():
    report = {
        "host": "h",
        "servers": [
            {
                "server": "Motor/slit_h",
                "state": "RUNNING",
                "pid": 12,
                "restarts": 2,
                "uptime": 3725.2,
                "last_cause": "signal 9 (SIGKILL)",
                "last_recovery": 0.41,
            },
            {
                "server": "Shutter/fe",
                "state": "STOPPED",
                "pid": 0,
                "restarts": 0,
                "uptime": 0,
                "last_cause": "",
                "last_recovery": None,
            },
        ],
    }
    rows = model.supervisor_rows(json.dumps(report))
    assert rows[0]["uptime"] == "1:02:05"
    assert rows[0]["last_recovery"] == "0.41 s"
    assert rows[0]["last_cause"] == "signal 9 (SIGKILL)"
    assert rows[1]["pid"] == "" and rows[1]["last_recovery"] == ""


@pytest.mark.parametrize(
    "value, expected",
    [(None, "UNKNOWN"), ("ON", "ON"), ("DevState.MOVING", "MOVING"), ("fault", "FAULT")],
)
def test_state_name(value, expected):
    assert model.state_name(value) == expected
    assert "background-color" in model.state_style(expected)


def test_status_line_texts():
    assert model.interlock_text(True).startswith("INTERLOCKED")
    assert model.interlock_text(False) == "clear"
    assert model.or_none("") == "none" and model.or_none(None) == "none"
    assert model.or_none(" vacuum bad ") == "vacuum bad"


def test_layout_groups_unplaced_devices_by_class_when_classes_are_known():
    """A beamline of 200 devices: the ones no section names, grouped by class."""
    existing = {f"bl01/mot/m{i:03d}": "Motor" for i in range(1, 161)}
    existing |= {"bl01/ct/s1": "Scaler", "bl01/mot/slit_h": "Motor", "bl01/x/y": ""}
    result = model.layout([Section("Slits", ("bl01/mot/slit_h",))], existing)
    assert [s.title for s in result.sections] == ["Slits", "Motor (160)", "Other (1)", "Scaler (1)"]
    assert result.sections[1].devices[:2] == ("bl01/mot/m001", "bl01/mot/m002")
    assert "bl01/mot/slit_h" not in result.sections[1].devices
    assert len(result.sections[1].devices) > model.GRID_OVER
