"""The logger's database reads stay bounded however many devices it watches;
an attribute read for want of a subscription is subscribed to once it can be."""

from __future__ import annotations

import pytest
import tango

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
