"""The supervisor's load on the database and on the servers stays bounded
however many servers it watches."""

from __future__ import annotations

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
