"""The supervisor's load on the database and on the servers stays bounded
however many servers it watches."""

from __future__ import annotations

import threading
import time

import pytest
import tango

from tango_devices.supervisor import tango_backends
from tango_devices.supervisor.tango_backends import DeviceLists, TangoProber


class FakeDatabase:
    lists = {
        "Motor/x": ["bl01/mot/x", "Motor", "dserver/Motor/x", "DServer"],
        "Motor/new": ["dserver/Motor/new", "DServer"],  # its device not registered yet
    }
    calls: list[str] = []
    down = False

    def get_device_class_list(self, server):
        FakeDatabase.calls.append(server)
        if FakeDatabase.down:
            raise tango.DevFailed()
        return list(self.lists[server])


@pytest.fixture
def db(monkeypatch):
    FakeDatabase.calls = []
    FakeDatabase.down = False
    monkeypatch.setattr(tango_backends.tango, "Database", FakeDatabase)
    return FakeDatabase


def test_device_lists_are_asked_once_per_ttl(db):
    now = [0.0]
    lists = DeviceLists(ttl=60.0, clock=lambda: now[0])
    for t in (0.0, 5.0, 59.0):
        now[0] = t
        assert lists.pairs("Motor/x") == [("bl01/mot/x", "Motor"), ("dserver/Motor/x", "DServer")]
    assert db.calls == ["Motor/x"]
    now[0] = 61.0
    lists.pairs("Motor/x")
    assert db.calls == ["Motor/x", "Motor/x"]


def test_a_server_without_devices_yet_is_asked_again_next_time(db):
    lists = DeviceLists(ttl=60.0, clock=lambda: 0.0)
    lists.pairs("Motor/new")
    lists.pairs("Motor/new")
    assert db.calls == ["Motor/new", "Motor/new"]


def test_a_database_failure_is_raised_and_nothing_is_kept(db):
    lists = DeviceLists(ttl=60.0, clock=lambda: 0.0)
    db.down = True
    with pytest.raises(tango.DevFailed):
        lists.pairs("Motor/x")
    db.down = False
    assert lists.pairs("Motor/x")[0] == ("bl01/mot/x", "Motor")


@pytest.mark.parametrize(("devices", "period"), [(1, 0.2), (18, 0.2), (80, 0.2), (200, 0.5)])
def test_the_probe_period_keeps_the_state_reads_under_the_rate(devices, period):
    prober = TangoProber(period=0.2, max_rate=400.0)
    assert prober.effective_period(devices) == pytest.approx(period)
    assert devices / prober.effective_period(devices) <= 400.0 + 1e-9


class HangingProxy:
    """A device that answers ``answers`` States, then never again: each
    later request times out after the client's timeout, as cppTango's does."""

    answers = 3
    timeout_ms: list[int] = []

    def __init__(self, name):
        self.asked = 0
        self.timeout = 3.0

    def set_timeout_millis(self, ms):
        HangingProxy.timeout_ms.append(ms)
        self.timeout = ms / 1000

    def command_inout_asynch(self, name):
        self.asked += 1
        return self.asked

    def command_inout_reply(self, request, wait):
        if request <= HangingProxy.answers:
            return tango.DevState.ON
        time.sleep(self.timeout)
        tango.Except.throw_exception("API_DeviceTimedOut", "no answer in time", "test")


def test_a_silence_is_counted_from_the_last_answer_not_from_the_unanswered_request(monkeypatch):
    """The probe asks one period after each answer and waits the hang time
    less that period: a hang is seen the hang time after the last answer,
    whatever the period (not up to a period later)."""
    HangingProxy.timeout_ms = []
    monkeypatch.setattr(tango_backends.tango, "DeviceProxy", HangingProxy)
    woke = threading.Event()
    probe = tango_backends._Probe(
        "bl01/mot/x", timeout=0.1, period=0.3, confirm=0.5, on_change=woke.set
    )
    try:
        deadline = time.monotonic() + 10
        while probe.silent_since is None:
            assert time.monotonic() < deadline, "the probe never saw the silence"
            time.sleep(0.01)
        assert HangingProxy.timeout_ms == [300]  # the hang time (0.6 s) less one period
        # the request went out a period after the last answer; the silence
        # began at that answer
        assert probe.silent_since - probe.last_answer == pytest.approx(0.0, abs=0.1)
    finally:
        probe.stop.set()
        probe.thread.join(5)
