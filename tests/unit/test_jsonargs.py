"""JSON command arguments: bounded, schema-checked, refused with the field named."""

from __future__ import annotations

import re

import pytest

from tango_devices.common.jsonargs import ArgumentError, check, loads, parse

LIMIT = {
    "type": ["object", "null"],
    "properties": {"limit": {"type": "integer", "minimum": 0, "maximum": 1_000_000}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "text,words",
    [
        ("[" * 100_000, ["nested more than"]),
        ('{"a": ' * 30 + "1" + "}" * 30, ["nested more than 16"]),
        ("[NaN]", ["NaN", "finite"]),
        ('{"x": -Infinity}', ["-Infinity"]),
        ("1" * 5000, ["digits"]),
        ("{'a': 1}", ["not valid JSON", "column 2"]),
        ("", ["not valid JSON"]),
    ],
)
def test_bad_text_is_refused_with_what_and_why(text, words):
    with pytest.raises(ArgumentError) as refused:
        loads(text, "Add")
    message = str(refused.value)
    assert message.startswith("Add: ")
    for word in words:
        assert word in message, message


def test_size_is_bounded():
    with pytest.raises(ArgumentError, match="at most 10 are taken"):
        loads("[" + "1," * 10 + "1]", "AddBatch", max_bytes=10)


@pytest.mark.parametrize(
    "text,field",
    [
        ('{"limit": 1e23}', "limit"),
        ('{"limit": -1}', "limit"),
        ('{"limit": true}', "limit"),
        ('{"limit": "10"}', "limit"),
        ('{"lmit": 10}', "(top level)"),
        ("[]", "(top level)"),
    ],
)
def test_schema_refusals_name_the_field(text, field):
    with pytest.raises(ArgumentError, match=rf"^History: {re.escape(field)}: "):
        parse(text, LIMIT, "History")


def test_good_arguments_pass_unchanged():
    assert parse('{"limit": 5}', LIMIT, "History") == {"limit": 5}
    assert parse("", LIMIT, "History") is None
    assert check({"limit": 0}, LIMIT, "History") == {"limit": 0}
    assert loads('{"a": [1, 2.5, "x"]}', "Get") == {"a": [1, 2.5, "x"]}


def test_a_number_too_large_for_a_float_is_refused():
    with pytest.raises(ArgumentError, match=r"^Add: args.0: a number too large to be finite"):
        loads('{"args": [1e400]}', "Add")


def test_depth_counts_arrays_and_objects_exactly():
    assert loads(nested := "[" * 16 + "]" * 16, "Get") is not None and nested
    with pytest.raises(ArgumentError, match="nested more than 16"):
        loads("[" * 17 + "]" * 17, "Get")
    wide = "[" + ",".join(['{"a": [1, 2]}'] * 20_000) + "]"
    assert len(loads(wide, "AddBatch")) == 20_000


def test_a_long_value_is_quoted_in_part_and_the_reason_kept():
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}}
    with pytest.raises(ArgumentError) as refused:
        parse('{"name": "' + "x" * 5000 + '"}', schema, "GetHistory")
    text = str(refused.value)
    assert text.startswith("GetHistory: name: 'xxxx") and "is too long" in text
    assert "(5,002 characters)" in text and len(text) < 300
