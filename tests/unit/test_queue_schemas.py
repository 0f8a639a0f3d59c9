"""The queue's command arguments (queue/schemas.py): one schema per command,
refusals that name the field and say how the command is used, and the
compiled quick check, which must never accept what jsonschema refuses."""

from __future__ import annotations

import copy
import json
import random
import time

import jsonschema
import pytest

from tango_devices.common.jsonargs import ArgumentError
from tango_devices.queue.schemas import SCHEMAS, USAGE, argument, quick_check

DEEP = "[" * 100_000


@pytest.mark.parametrize(
    "command,text,field",
    [
        # the cases
        ("Add", DEEP, "nested more than"),
        ("Pause", '"x"', "(top level): 'x' is not of type 'object', 'null'"),
        ("History", '{"limit": 1e23}', "limit: 1e+23 is greater than the maximum"),
        ("History", "[]", "(top level): [] is not of type"),
        ("Remove", '{"uids": [["a"]]}', "uids.0: ['a'] is not of type 'string'"),
        ("Remove", '{"uids": [5]}', "uids.0: 5 is not of type 'string'"),
        ("Remove", '{"uids": ["a", "a"]}', "uids: ['a', 'a'] has non-unique elements"),
        (
            "AddBatch",
            '{"items": [{"macro": "ct", "uid": "a"}, {"macro": "ct", "uid": "a"}]}',
            "items.1.uid: 'a' is also the uid of items.0",
        ),
        ("Add", '{"macro": "ct", "args": [NaN]}', "NaN is not a number JSON allows"),
        ("Add", '{"macro": "ct", "args": [Infinity]}', "Infinity is not a number JSON allows"),
        ("Add", '{"macro": "ct", "args": [1e400]}', "args.0: a number too large to be finite"),
        ("Add", '{"macro": "ct", "uid": 5}', "uid: 5 is not of type 'string'"),
        # more of each command
        ("Add", '{"macro": "ct", "args": [0.1], "repeat": 10001}', "repeat: 10001"),
        ("Add", '{"macro": "ct", "meta": {"on_device_down": "retry"}}', "meta.on_device_down"),
        ("Add", '{"macro": "c t"}', "macro: 'c t' does not match"),
        ("Add", '{"macro": "ct", "position": {"before": "a", "after": "b"}}', "position"),
        ("AddBatch", '{"items": []}', "items: [] should be non-empty"),
        ("AddBatch", '{"items": [{"macro": "ct"}], "timeout": 0}', "timeout: 0"),
        ("AddBatch", "[1]", "items.0: 1 is not of type 'object'"),
        ("Update", '{"repeat": 2}', "'uid' is a required property"),
        ("Move", '{"uid": "a", "position": true}', "position: True is not valid"),
        ("Duplicate", '{"uid": "a", "colour": 1}', "'colour' was unexpected"),
        ("Remove", "a/b", "'a/b' does not match"),
        ("Pause", '{"deferred": 1}', "deferred: 1 is not of type 'boolean'"),
        ("StopMacro", '{"timeout": 601}', "timeout: 601 is greater than the maximum of 600"),
        ("History", '{"limit": -1}', "limit: -1 is less than the minimum of 0"),
    ],
)
def test_bad_arguments_are_refused_naming_the_field_and_the_usage(command, text, field):
    with pytest.raises(ArgumentError) as refused:
        argument(command, text)
    message = str(refused.value)
    assert message.startswith(f"{command}: "), message
    assert field in message, message
    assert message.endswith(USAGE[command]), message


@pytest.mark.parametrize(
    "command,text,value",
    [
        (
            "Add",
            '{"macro": "ct", "args": [0.1, "x", true]}',
            {"macro": "ct", "args": [0.1, "x", True]},
        ),
        (
            "Add",
            '{"macro": "ct", "repeat": 2.0, "position": 1.0}',
            {"macro": "ct", "repeat": 2, "position": 1},
        ),
        ("AddBatch", '[{"macro": "ct", "repeat": 3.0}]', {"items": [{"macro": "ct", "repeat": 3}]}),
        ("Remove", "5", {"uids": ["5"]}),
        ("Remove", ' "abc" ', {"uids": ["abc"]}),
        ("Remove", '["a", "b"]', {"uids": ["a", "b"]}),
        ("Duplicate", "a1", {"uid": "a1"}),
        (
            "Duplicate",
            '{"uid": "a1", "position": {"after": "b"}}',
            {"uid": "a1", "position": {"after": "b"}},
        ),
        ("Pause", "", None),
        ("History", "  ", None),
        ("History", '{"limit": 5.0}', {"limit": 5}),
        ("HaltMacro", '{"timeout": 0.5}', {"timeout": 0.5}),
    ],
)
def test_good_arguments_pass_with_integers_as_ints(command, text, value):
    got = argument(command, text)
    assert got == value
    for key in ("repeat", "position", "limit"):
        if isinstance(got, dict) and key in got and isinstance(value[key], int):
            assert type(got[key]) is int


def test_a_batch_of_20000_items_is_checked_fast():
    """jsonschema alone took ~80 us an item (1.6 s for 20,000); the figure is
    in the benchmark, this only guards against falling back to it."""
    items = [{"macro": "mv", "args": ["sample_x", 0.5], "meta": {"n": n}} for n in range(20_000)]
    text = json.dumps({"items": items})
    quick = quick_check(SCHEMAS["AddBatch"])
    value = json.loads(text)
    t0 = time.process_time()
    assert quick(value)
    quick_cpu = time.process_time() - t0
    t0 = time.process_time()
    jsonschema.Draft202012Validator(SCHEMAS["AddBatch"]).validate(value)
    full_cpu = time.process_time() - t0
    assert quick_cpu < full_cpu / 3, (quick_cpu, full_cpu)
    assert len(argument("AddBatch", text)["items"]) == 20_000


# --------------------------------------------- quick check == jsonschema
def _good(command: str, rng: random.Random):
    item = {"macro": "ct", "args": [0.1, "x"], "repeat": 2, "meta": {"k": 1}, "uid": "u-1"}
    return {
        "Add": {**item, "position": "front", "timeout": 3},
        "AddBatch": {"items": [dict(item, uid=f"u{n}") for n in range(3)], "position": 2},
        "Update": {"uid": "a", "args": [1], "repeat": 3, "meta": {}},
        "Move": {"uid": "a", "position": {"before": "b"}},
        "Remove": {"uids": ["a", "b"], "timeout": 1.5},
        "Duplicate": {"uid": "a", "position": "back"},
        "Pause": {"deferred": True},
        "History": {"limit": 10},
        "StopMacro": {"timeout": 2},
        "AbortMacro": None,
        "HaltMacro": {},
        "BareUid": "abc",
    }[command]


ODD = [
    None, True, False, 0, 1, -1, 2.0, 2.5, 1e23, -1e23, float("inf"), float("-inf"), "",
    "a b", "x" * 70, "front", "middle", "ct", [], [1], ["a", "a"], ["a", "b"], {}, {"x": 1},
    {"before": "a"}, {"before": 5}, {"before": "a", "after": "b"}, 10_001, 600, 601, 0.0,
]  # fmt: skip


def _mutate(value, rng: random.Random):
    """The value with one part replaced, added or removed, somewhere."""
    value = copy.deepcopy(value)
    if not isinstance(value, dict | list) or rng.random() < 0.2:
        return rng.choice(ODD)
    if isinstance(value, dict):
        if not value or rng.random() < 0.2:
            value[rng.choice(["macro", "args", "uid", "zzz", "position", "limit"])] = rng.choice(
                ODD
            )
            return value
        key = rng.choice(list(value))
        if rng.random() < 0.15:
            del value[key]
        else:
            value[key] = _mutate(value[key], rng)
        return value
    if not value or rng.random() < 0.2:
        value.append(rng.choice(ODD))
        return value
    i = rng.randrange(len(value))
    value[i] = _mutate(value[i], rng)
    return value


@pytest.mark.parametrize("command", list(SCHEMAS))
def test_the_quick_check_never_accepts_what_jsonschema_refuses(command):
    rng = random.Random(command)
    validator = jsonschema.Draft202012Validator(SCHEMAS[command])
    quick = quick_check(SCHEMAS[command])
    good = _good(command, rng)
    assert quick(good) and validator.is_valid(good)
    accepted = refused = 0
    for _ in range(3000):
        value = _mutate(good, rng)
        for _ in range(rng.randrange(3)):
            value = _mutate(value, rng)
        fast, full = quick(value), validator.is_valid(value)
        assert not (fast and not full), f"quick check accepts {value!r}"
        # it may only hand over to jsonschema, never disagree the other way
        # except where it is deliberately cautious (none of these values)
        assert fast == full, f"quick {fast}, jsonschema {full}: {value!r}"
        accepted += full
        refused += not full
    assert accepted > 50 and refused > 50  # both kinds were tried


def test_the_quick_check_knows_only_the_keywords_it_implements():
    with pytest.raises(ValueError, match="does not know"):
        quick_check({"type": "object", "patternProperties": {"^a": {}}})
    with pytest.raises(ValueError, match="only enums of strings"):
        quick_check({"enum": [1, 2]})
