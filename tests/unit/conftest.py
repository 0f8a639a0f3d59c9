"""Helpers shared by the unit tests (each lives here once)."""

from __future__ import annotations

import pytest


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.advance(0.5)``)."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
