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
