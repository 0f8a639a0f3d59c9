"""The logger's command arguments: every bad value is refused with an
ArgumentError naming the field (the device turns it into LOGGER_BAD_INPUT),
never a Python error; ListArchived's pattern is bounded and matched without
fnmatch's blow-ups."""

from __future__ import annotations

import fnmatch
import json
import random
import re._parser as sre_parse

import pytest

from tango_devices.common.jsonargs import ArgumentError
from tango_devices.logger.model import VALID, AttrMeta
from tango_devices.logger.reader import (
    ArchiveReader,
    configuration_args,
    history_args,
    list_pattern,
)
from tango_devices.logger.selection import Glob
from tango_devices.logger.store import ArchiveWriter, WriterPolicy

NOW = 1_800_000_000.0
LIMIT = 100_000
NAME = "bl01/mot/x/Position"


def test_good_history_arguments():
    assert history_args(NAME, LIMIT, NOW) == (NAME, NOW - 3600, NOW, 1000)
    args = {"attribute": NAME, "start": "-10m", "end": NOW - 1, "max_points": 0}
    assert history_args(json.dumps(args), LIMIT, NOW) == (NAME, NOW - 600, NOW - 1, LIMIT)
    assert history_args(json.dumps({"name": NAME, "max_points": 5}), LIMIT, NOW)[3] == 5
    assert configuration_args("bl01/mot/x", NOW) == ("bl01/mot/x", NOW)
    assert configuration_args('{"device": "bl01/mot/x", "time": 5}', NOW) == ("bl01/mot/x", 5.0)


BAD_HISTORY = [
    # (argument, words the refusal must contain)
    ("[" * 100_000, ["100,000 characters", "at most 65,536"]),
    ("[" * 10_000, ["nested more than"]),
    ("{" * 5_000, ["not valid JSON"]),
    ('{"attribute": ' * 40 + "1" + "}" * 40, ["nested more than"]),
    ("x" * 100_000, ["attribute", "at most 256"]),
    ('{"attribute": "' + "a/" * 5000 + '"}', ["attribute", "10,000 characters; at most 256"]),
    ("", ["attribute", "say which attribute"]),
    ("{}", ["attribute", "say which attribute"]),
    ("[1, 2]", ["(top level)", "object"]),
    ('"bl01/mot/x/Position"', ["(top level)", "object"]),
    ('{"attribute": 5}', ["attribute", "string"]),
    ('{"attribute": "bl01/mot/x"}', ["attribute", "not domain/family/member/attribute"]),
    ('{"attribute": "bl01/mot/x/P", "start": NaN}', ["NaN", "finite"]),
    ('{"attribute": "bl01/mot/x/P", "start": Infinity}', ["Infinity"]),
    ('{"attribute": "bl01/mot/x/P", "start": 1e400}', ["start"]),
    ('{"attribute": "bl01/mot/x/P", "start": 1e300}', ["start", "after the year 5000"]),
    ('{"attribute": "bl01/mot/x/P", "start": -5}', ["start", "before 1970"]),
    ('{"attribute": "bl01/mot/x/P", "start": [1]}', ["start", "not of type"]),
    ('{"attribute": "bl01/mot/x/P", "start": {"a": 1}}', ["start", "not of type"]),
    ('{"attribute": "bl01/mot/x/P", "start": true}', ["start", "not of type"]),
    ('{"attribute": "bl01/mot/x/P", "start": ""}', ["start"]),
    ('{"attribute": "bl01/mot/x/P", "start": "yesterday"}', ["start", "is not a time"]),
    ('{"attribute": "bl01/mot/x/P", "end": "' + "9" * 1000 + '"}', ["end", "at most 64"]),
    ('{"attribute": "bl01/mot/x/P", "start": "-999999999999d"}', ["start", "before 1970"]),
    ('{"attribute": "bl01/mot/x/P", "start": 10, "end": 5}', ["end", "before start"]),
    ('{"attribute": "bl01/mot/x/P", "max_points": -1}', ["max_points", "minimum"]),
    ('{"attribute": "bl01/mot/x/P", "max_points": 1e23}', ["max_points"]),
    ('{"attribute": "bl01/mot/x/P", "max_points": 100001}', ["max_points", "100000"]),
    ('{"attribute": "bl01/mot/x/P", "max_points": 1.5}', ["max_points", "integer"]),
    ('{"attribute": "bl01/mot/x/P", "max_points": "10"}', ["max_points", "integer"]),
    ('{"attribute": "bl01/mot/x/P", "max_points": ' + "9" * 5000 + "}", ["digits"]),
    ('{"attribute": "bl01/mot/x/P", "maxpoints": 10}', ["maxpoints", "unexpected"]),
    ('{"attribute": "bl01/mot/x/P"', ["not valid JSON"]),
]


@pytest.mark.parametrize(("text", "words"), BAD_HISTORY, ids=range(len(BAD_HISTORY)))
def test_bad_history_arguments_are_refused_naming_the_field(text, words):
    with pytest.raises(ArgumentError) as refused:
        history_args(text, LIMIT, NOW)
    message = str(refused.value)
    assert message.startswith("GetHistory: ") and len(message) < 1000, message[:300]
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("value", [None, 5, 1.5, b"bytes", ["a"]])
def test_arguments_that_are_not_text(value):
    for call in (
        lambda: history_args(value, LIMIT, NOW),
        lambda: configuration_args(value, NOW),
        lambda: list_pattern(value),
    ):
        with pytest.raises(ArgumentError, match="not "):
            call()


BAD_CONFIGURATION = [
    ("[" * 10_000, ["nested more than"]),
    ("[" * 100_000, ["100,000 characters"]),
    ("", ["device", "say which device"]),
    ("bl01/mot", ["device", "not a device name"]),
    ("bl01//x", ["device", "not a device name"]),
    ("d" * 10_000, ["device", "at most 256"]),
    ('{"device": "bl01/mot/x", "time": NaN}', ["NaN"]),
    ('{"device": "bl01/mot/x", "time": 1e308}', ["time", "after the year 5000"]),
    ('{"device": "bl01/mot/x", "time": "soon"}', ["time", "is not a time"]),
    ('{"device": ["bl01/mot/x"]}', ["device", "not of type"]),
    ('{"device": "bl01/mot/x", "at": 5}', ["at", "unexpected"]),
]


@pytest.mark.parametrize(("text", "words"), BAD_CONFIGURATION, ids=range(len(BAD_CONFIGURATION)))
def test_bad_configuration_arguments_are_refused_naming_the_field(text, words):
    with pytest.raises(ArgumentError) as refused:
        configuration_args(text, NOW)
    message = str(refused.value)
    assert message.startswith("GetConfigurationAt: ") and len(message) < 1000, message[:300]
    for word in words:
        assert word in message, message


# ------------------------------------------------------------ ListArchived
def test_a_pattern_is_bounded(tmp_path):
    assert list_pattern("") == "*" and list_pattern("  bl01/* ") == "bl01/*"
    w = ArchiveWriter(tmp_path, WriterPolicy(schema_delay=0.0))
    w.open()
    try:
        meta = AttrMeta("bl01/mot/x", "Position", "float")
        w.add_meta(meta)
        w.cycle({meta.key: [(1000.0, 1.0, VALID)]})
        r = ArchiveReader(tmp_path, live=w)
        with pytest.raises(ArgumentError, match="30,000 characters; at most 256"):
            r.list_attributes("[" * 30_000)
        assert [i["attribute"] for i in r.list_attributes("[" * 200)] == []
        assert [i["attribute"] for i in r.list_attributes("BL01/*/[wxy]/pos*")] == [
            "bl01/mot/x/Position"
        ]
    finally:
        w.close()


ALPHABET = "ab/[]!-*?c^\\"


def test_the_glob_matches_as_fnmatch_does():
    rng = random.Random(18)
    for _ in range(4_000):
        pattern = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 9)))
        name = "".join(rng.choice("ab/[]!-c^\\") for _ in range(rng.randint(0, 9)))
        assert Glob(pattern).match(name) == fnmatch.fnmatchcase(name, pattern), (pattern, name)


def _repeats(parsed) -> bool:
    for op, arg in parsed:
        if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT):
            return True
        if op is sre_parse.SUBPATTERN and _repeats(arg[-1]):
            return True
    return False


@pytest.mark.parametrize(
    "pattern",
    ["[" * 200, "*a" * 100 + "b", "*" * 256, "[!a-z]*?*[0-9]", "bl01/*/*/*", "a[" + "]" * 50],
)
def test_the_glob_never_backtracks(pattern):
    """Each piece between stars is a regular expression without any repetition
    (fnmatch.translate gives ``.*`` and lookaheads that can backtrack); the
    pieces are found left to right, each once."""
    glob = Glob(pattern)
    for regex, _size in glob._pieces:
        assert not _repeats(sre_parse.parse(regex.pattern)), regex.pattern
    assert _repeats(sre_parse.parse(fnmatch.translate("*a*b")))  # what it replaces
    assert glob.match("a" * 256) == fnmatch.fnmatchcase("a" * 256, pattern)
