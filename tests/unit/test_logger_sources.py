"""The logger's database reads stay bounded however many devices it watches;
an attribute read for want of a subscription is subscribed to once it can be."""

from __future__ import annotations

import pytest
import tango

from tango_devices.logger import tango_sources
from tango_devices.logger.selection import Selection
from tango_devices.logger.tango_sources import DeviceWatch, SourceSettings


@pytest.mark.parametrize(
    ("watched", "period"),
    [(0, 3.0), (18, 3.0), (30, 3.0), (60, 6.0), (200, 20.0)],
)
def test_the_property_period_grows_beyond_what_the_read_rate_allows(watched, period):
    settings = SourceSettings(property_poll_period=3.0, property_reads_per_second=10.0)
    settings.watched = watched
    assert settings.property_period() == pytest.approx(period)
    # whatever the count, the database is asked about <= 10 devices a second
    assert watched / settings.property_period() <= 10.0


def test_a_zero_read_rate_is_not_a_division_by_zero():
    settings = SourceSettings(property_poll_period=3.0, property_reads_per_second=0.0)
    settings.watched = 5
    assert settings.property_period() > 3.0


class RefusingProxy:
    """Refuses subscriptions to the attributes in ``refuse`` (a device too
    busy to answer, or an attribute without events)."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.subscribed: list[tuple[str, object]] = []

    def subscribe_event(self, name, kind, callback):
        if name in self.refuse:
            try:
                tango.Except.throw_exception("API_CommandTimedOut", "busy", "subscribe")
            except tango.DevFailed as exc:
                raise exc from None
        self.subscribed.append((name, kind))
        return len(self.subscribed)


class SinkLogic:
    def sink(self, key):
        return lambda event: None


def test_attributes_read_for_want_of_a_subscription_are_subscribed_to_once_they_can_be():
    watch = DeviceWatch("bl01/mot/m001", SinkLogic(), Selection([], []), SourceSettings())
    watch.proxy = RefusingProxy({"Velocity", "EncoderPosition"})
    watch.poll_names = ["Velocity", "EncoderPosition"]
    watch.modes = {"Velocity": "poll", "EncoderPosition": "poll", "Position": "change"}
    watch._subscribe_polled()
    assert watch.poll_names == ["Velocity", "EncoderPosition"]  # still refused: still read
    watch.proxy.refuse = {"EncoderPosition"}
    watch._subscribe_polled()
    assert watch.poll_names == ["EncoderPosition"]
    assert watch.modes["Velocity"] == "change"
    assert ("Velocity", tango.EventType.CHANGE_EVENT) in watch.proxy.subscribed
    assert len(watch.subscriptions) == 1  # kept, to be unsubscribed with the rest


def test_the_first_property_reads_are_spread_at_the_read_rate():
    settings = SourceSettings(property_first_within=3.0, property_reads_per_second=10.0)
    settings.watched = 18
    assert settings.first_property_delay() == pytest.approx(3.0)
    settings.watched = 200
    assert settings.first_property_delay() == pytest.approx(20.0)


def test_a_sign_of_changed_properties_asks_two_reads_and_subscribing_asks_none(monkeypatch):
    """A configuration event or a writable attribute's change asks a read
    0.5 s and 3 s later (the database is otherwise read every 30 s); asked
    again while those are pending, nothing more; the events that
    subscribing itself delivers ask nothing."""
    clock = [100.0]
    monkeypatch.setattr(tango_sources.time, "monotonic", lambda: clock[0])
    watch = DeviceWatch("bl01/mot/m001", SinkLogic(), Selection([], []), SourceSettings())
    watch._connecting = True
    watch.properties_soon()
    assert watch._asked_properties_due(200.0) == (False, None)
    watch._connecting = False
    watch.properties_soon()
    clock[0] = 100.2
    watch.properties_soon()  # pending already: no new reads
    assert watch._asked_properties_due(100.2) == (False, 100.5)
    assert watch._asked_properties_due(100.6) == (True, 103.0)
    assert watch._asked_properties_due(101.0) == (False, 103.0)
    assert watch._asked_properties_due(103.0) == (True, None)
    assert watch._asked_properties_due(200.0) == (False, None)
