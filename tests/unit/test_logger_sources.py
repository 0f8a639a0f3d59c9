"""The logger's database reads stay bounded however many devices it watches."""

from __future__ import annotations

import pytest

from tango_devices.logger.tango_sources import SourceSettings


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
