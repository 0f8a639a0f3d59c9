"""`beamline queue` input parsing (no device): positions, metadata, batch files."""

from __future__ import annotations

import json

import click
import pytest

from beamline.queue_cli import load_batch, parse_meta, parse_position


@pytest.mark.parametrize(
    "text,expected",
    [
        (None, "back"),
        ("front", "front"),
        ("back", "back"),
        ("0", 0),
        ("-1", -1),
        (" 3 ", 3),
        ("before:abc123", {"before": "abc123"}),
        ("after:abc123", {"after": "abc123"}),
    ],
)
def test_positions(text, expected):
    assert parse_position(text) == expected


@pytest.mark.parametrize("text", ["middle", "before:", "beside:abc", "1.5", ""])
def test_bad_positions_say_what_is_accepted(text):
    with pytest.raises(click.BadParameter, match="front, back, an index"):
        parse_position(text)


def test_meta_values_that_read_as_json_are_taken_as_such():
    assert parse_meta(("sample=A1", "t=300", "ok=true", "x=0.5", "list=[1, 2]", "e=")) == {
        "sample": "A1",
        "t": 300,
        "ok": True,
        "x": 0.5,
        "list": [1, 2],
        "e": "",
    }
    with pytest.raises(click.BadParameter, match="KEY=VALUE"):
        parse_meta(("novalue",))
    with pytest.raises(click.BadParameter, match="KEY=VALUE"):
        parse_meta(("=5",))


def test_a_batch_file_in_json_or_yaml_with_objects_and_lines(tmp_path):
    as_json = tmp_path / "b.json"
    as_json.write_text(json.dumps([{"macro": "ct", "args": [0.1]}, "ascan sample_x 0 1 10 0.1"]))
    items, position = load_batch(str(as_json))
    assert items == [
        {"macro": "ct", "args": [0.1]},
        {"macro": "ascan", "args": ["sample_x", "0", "1", "10", "0.1"]},
    ]
    assert position is None
    as_yaml = tmp_path / "b.yml"
    as_yaml.write_text("position: front\nitems:\n  - {macro: ct, args: [0.1], repeat: 2}\n")
    assert load_batch(str(as_yaml)) == ([{"macro": "ct", "args": [0.1], "repeat": 2}], "front")
    no_suffix = tmp_path / "batch"
    no_suffix.write_text("- ct 0.1\n")  # neither JSON nor a known suffix: YAML
    assert load_batch(str(no_suffix))[0] == [{"macro": "ct", "args": ["0.1"]}]


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("bad.json", "[1,", "not valid JSON"),
        ("bad.yaml", "items: [", "not valid YAML"),
        ("empty.json", "[]", "non-empty list"),
        ("object.json", '{"macro": "ct"}', "non-empty list"),
        ("blank.json", '[""]', "empty line"),
    ],
)
def test_a_bad_batch_file_exits_2_naming_the_problem(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        load_batch(str(path))
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_batch_file_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        load_batch(str(tmp_path / "missing.json"))
    assert info.value.code == 2 and "cannot read" in capsys.readouterr().err
