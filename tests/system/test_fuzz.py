"""Every command and writable attribute of every one of our devices, driven
with generated bad values (hypothesis): each is refused with a DevFailed whose
reason is a clear one (never PyDs_PythonError: a Python error reaching the
user), or accepted as harmless; the device stays in its state with its
settings, and no server is restarted.

Deterministic in CI (``derandomize``); ``FUZZ_SEED=random`` explores anew.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import tango
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import wait_until
from tests.system.conftest import wait_state

pytestmark = pytest.mark.system

DEVICES = [
    "bl01/mot/sample_x",
    "bl01/mot/mirror_pitch",
    "bl01/shutter/fe",
    "bl01/ct/scaler",
    "bl01/det/cam1",
    "bl01/tim/tg1",
    "bl01/vac/gauge1",
    "bl01/vac/valve1",
    "bl01/sys/queue",
    "bl01/sys/logger",
    "bl01/sys/supervisor",
]
# commands that act on the world when given a *valid* argument; they are
# driven with values that can never be valid for them
NOT_FUZZED = {
    "init",
    "state",
    "status",
    "testcrash",
    "testhang",
    "testkillmidwrite",
    # the supervisor's commands take a server name: a valid one stops/restarts it
    "stopserver",
    "startserver",
    "restartserver",
}
# a Python error reaching the client: what this test forbids
PYTHON_ERRORS = ("PyDs_PythonError", "PyDs_UnexpectedFailure")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
RANDOM = os.environ.get("FUZZ_SEED") == "random"

NUMBERS = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -1e308, 1e23, -1e23, 2.0**63, -(2.0**63)]
)
# integers each type can carry, none of them a valid setting of ours
SHORTS = st.sampled_from([-32768, -1, 100, 32767])
ENUMS = st.sampled_from([3, 100, 65535])  # unsigned on the wire; AcquisitionMode has 0..2
LONGS = st.sampled_from([2**31 - 1, -(2**31), 10**9, -(10**9), -1])
LONG64S = st.sampled_from([2**63 - 1, -(2**63), 2**62, -(2**62), 10**12])


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSONISH = st.one_of(
    st.text(st.characters(max_codepoint=255), max_size=200),  # a DevString is Latin-1
    st.sampled_from(
        [
            "",
            "{",
            "[" * 100_000,
            nested(5000),
            '{"a": ' * 200 + "1" + "}" * 200,
            "NaN",
            '{"limit": 1e23}',
            '{"uid": ["a"]}',
            '{"uid": 5}',
            '{"uids": [[]]}',
            '{"macro": "ct", "args": [NaN]}',
            '{"macro": "ct", "args": [1e400]}',
            '{"macro": "ct", "args": [0.1], "repeat": 1e99}',
            '{"items": {}}',
            '{"deferred": "yes"}',
            '{"timeout": -1}',
            '{"attribute": "x/y/z/w", "start": "yesterday"}',
            '{"attribute": "bl01/mot/sample_x/Position", "max_points": -5}',
            '{"device": ["bl01/mot/sample_x"]}',
            '"x"',
            "[]",
            "null",
            "1" * 5000,
            "x" * 100_000,
            json.dumps({"a": "\x00\udc80"}, ensure_ascii=True),
        ]
    ),
)


def bad_values(kind, fmt) -> st.SearchStrategy:
    """Values that no attribute or command of ours may take as valid."""
    if fmt == tango.AttrDataFormat.SPECTRUM or kind == tango.CmdArgType.DevVarLong64Array:
        return st.one_of(
            st.just([]),
            st.lists(LONG64S, min_size=1, max_size=4),
            st.lists(st.integers(-5, 5), min_size=5, max_size=9),  # too many
        )
    if kind in (tango.CmdArgType.DevDouble, tango.CmdArgType.DevFloat):
        return NUMBERS
    if kind == tango.CmdArgType.DevShort:
        return SHORTS
    if kind == tango.CmdArgType.DevEnum:
        return ENUMS
    if kind in (tango.CmdArgType.DevLong, tango.CmdArgType.DevULong):
        return LONGS
    if kind in (tango.CmdArgType.DevLong64, tango.CmdArgType.DevULong64):
        return LONG64S
    if kind == tango.CmdArgType.DevString:
        return JSONISH
    raise AssertionError(f"no bad values for {kind} {fmt}: add them")


@pytest.fixture(scope="module")
def world(beamline):
    supervisor = beamline.proxy("bl01/sys/supervisor")
    wait_until(
        lambda: supervisor.Servers and all(s == "RUNNING" for s in supervisor.ServerStates),
        60,
        "every server running",
    )
    proxies = {d: beamline.proxy(d, timeout_ms=10000) for d in DEVICES}
    for proxy in proxies.values():
        wait_until(lambda p=proxy: p.state() != tango.DevState.INIT, 20, "ready")
    restarts = list(supervisor.ServerRestarts)
    yield proxies
    assert list(supervisor.ServerRestarts) == restarts, "a server was restarted while fuzzed"


def targets():
    """(device, kind, name) for every command with an argument and every
    writable attribute of our devices, read from a running beamline at
    collection time is not possible: listed from the device classes."""
    from tango_devices import registry

    classes = registry.device_classes()
    by_device = {
        "bl01/mot/sample_x": "Motor",
        "bl01/mot/mirror_pitch": "Motor",
        "bl01/shutter/fe": "Shutter",
        "bl01/ct/scaler": "Scaler",
        "bl01/det/cam1": "Detector",
        "bl01/tim/tg1": "TimingUnit",
        "bl01/vac/gauge1": "VacuumGauge",
        "bl01/vac/valve1": "Valve",
        "bl01/sys/queue": "ExperimentQueue",
        "bl01/sys/logger": "DataLogger",
        "bl01/sys/supervisor": "Supervisor",
    }
    out = []
    for device, cls_name in by_device.items():
        cls = classes[cls_name]
        for name, (arg_in, _out, _info) in cls.TangoClassClass.cmd_list.items():
            if name.lower() in NOT_FUZZED or arg_in[0] == tango.CmdArgType.DevVoid:
                continue
            out.append(pytest.param(device, "command", name, id=f"{device}:{name}()"))
        for name, attr in cls.TangoClassClass.attr_list.items():
            if attr.attr_write in (tango.AttrWriteType.READ_WRITE, tango.AttrWriteType.WRITE):
                out.append(pytest.param(device, "attribute", name, id=f"{device}:{name}="))
    return out


def snapshot(proxy, attribute: str | None):
    state = proxy.state()
    value = None
    if attribute:
        v = proxy.read_attribute(attribute).value
        value = list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v
    return state, value


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("device,kind,name", targets())
def test_bad_values_are_refused_cleanly_and_change_nothing(world, device, kind, name):
    proxy = world[device]
    if kind == "command":
        info = proxy.command_query(name)
        strategy = bad_values(info.in_type, None)
    else:
        config = proxy.get_attribute_config(name)
        strategy = bad_values(config.data_type, config.data_format)
    wait_state(proxy, proxy.state())  # it answers

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(strategy)
    def drive(value):
        before = snapshot(proxy, name if kind == "attribute" else None)
        try:
            if kind == "command":
                proxy.command_inout(name, value)
            else:
                proxy.write_attribute(name, value)
        except tango.DevFailed as exc:
            err = exc.args[0]
            assert err.reason not in PYTHON_ERRORS, (
                f"{device} {name}({str(value)[:80]!r}): a Python error reached the client: "
                f"{err.desc[:500]}"
            )
            assert err.desc.strip(), f"{device} {name}: a refusal without a message"
        else:
            if kind == "attribute":
                pytest.fail(f"{device}: {name} = {str(value)[:80]!r} was accepted")
        after = snapshot(proxy, name if kind == "attribute" else None)
        assert after[0] == before[0], f"{device} went {before[0]} -> {after[0]} on {name}"
        assert same(after[1], before[1]), f"{device}.{name} changed: {before[1]} -> {after[1]}"

    drive()
