"""Clearing a pyepics channel never frees what libca may still call back into."""

from __future__ import annotations

import gc
import weakref

from tango_devices.drivers import epics_ca


class _Callback:
    def __call__(self, **_kw):
        pass


class FakePV:
    """What _destroy touches of a pyepics PV: its chid, its monitor reference
    (callback, user argument, event id) and disconnect()."""

    def __init__(self):
        callback = _Callback()
        self.chid = 7
        self._monref = (callback, [callback], 1)
        self.callback = weakref.ref(callback)
        self.disconnected = False

    def disconnect(self):
        self.disconnected = True
        self._monref = None

    def _check_auto_monitor(self):
        self._monref = (_Callback(), None, 2)


class FakeCA:
    def __init__(self):
        self.cleared = []

    def clear_channel(self, chid):
        self.cleared.append(chid)


def test_a_cleared_channels_monitor_callback_stays_alive(monkeypatch):
    ca = FakeCA()
    monkeypatch.setattr(epics_ca, "ca_module", lambda: ca)
    pv = FakePV()
    slot = epics_ca._Slot("BL01:VAC:VALVE1:STATE", pv=pv)
    callback = pv.callback
    epics_ca._destroy([slot])
    slot.pv = pv = None
    gc.collect()
    assert ca.cleared == [7]
    # libca holds a raw pointer to the callback until (and a moment after)
    # the channel is cleared: a freed one runs whatever reuses its memory
    assert callback() is not None, "the monitor's callback was freed with the channel"


class CachingCA(FakeCA):
    """pyepics' two caches: by context and name, and by channel id."""

    def __init__(self):
        super().__init__()
        self._cache = {"ctx": {}}
        self._chid_cache = {}

    def current_context(self):
        return "ctx"

    def add(self, name, chid):
        entry = object()
        self._cache["ctx"][name] = entry
        self._chid_cache[chid] = entry
        return entry


def test_the_last_cleared_channel_of_a_name_leaves_no_cache_entry(monkeypatch):
    """A dead entry left in pyepics' cache would hand the next channel of that
    name a cleared libca channel that never connects."""
    ca = CachingCA()
    monkeypatch.setattr(epics_ca, "ca_module", lambda: ca)
    monkeypatch.setattr(epics_ca, "_LIVE", epics_ca.Counter())
    name = "BL01:VAC:GAUGE1:STAT"
    ca.add(name, 7)
    first, second = epics_ca._Slot(name, pv=FakePV()), epics_ca._Slot(name, pv=FakePV())
    epics_ca._LIVE[name] = 2  # two drivers of the process use the PV
    epics_ca._destroy([first])
    assert name in ca._cache["ctx"] and 7 in ca._chid_cache  # still used
    epics_ca._destroy([second])
    assert name not in ca._cache["ctx"]
    assert ca._chid_cache == {}
    assert name not in epics_ca._LIVE


def test_a_dead_entry_is_dropped_before_a_channel_of_its_name_is_created(monkeypatch):
    ca = CachingCA()
    monkeypatch.setattr(epics_ca, "_LIVE", epics_ca.Counter())
    ca.add("X", 9)  # left behind, e.g. by another client of pyepics
    epics_ca._forget_dead_entry(ca, "X")
    assert ca._cache["ctx"] == {} and ca._chid_cache == {}
    kept = ca.add("Y", 10)
    epics_ca._LIVE["Y"] = 1
    epics_ca._forget_dead_entry(ca, "Y")
    assert ca._cache["ctx"]["Y"] is kept


def test_a_cleared_pv_subscribes_no_more(monkeypatch):
    monkeypatch.setattr(epics_ca, "ca_module", lambda: FakeCA())
    pv = FakePV()
    epics_ca._destroy([epics_ca._Slot("X", pv=pv)])
    pv._check_auto_monitor()  # a connection callback in flight
    assert pv._monref is None
    assert pv.disconnected


def test_the_graveyard_lets_go_after_a_while(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(epics_ca.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(epics_ca, "_GRAVEYARD", [])
    old = _Callback()
    ref = weakref.ref(old)
    epics_ca._bury(old)
    old = None
    now[0] += epics_ca.GRAVEYARD_KEEP + 1
    epics_ca._bury(_Callback())
    gc.collect()
    assert ref() is None
    assert len(epics_ca._GRAVEYARD) == 1
