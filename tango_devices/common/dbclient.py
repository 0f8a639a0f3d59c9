"""One Tango database client kept across calls (no tango logic of its own).

A client is made once and reused: a new ``tango.Database()`` per call is a
new connection each time (at 200 devices, thousands a minute). After a
failure it is dropped and the next call makes a new one: a cppTango client
that failed refuses to reconnect for a second (``RECONNECTION_DELAY``), a new
one tries at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import tango

T = TypeVar("T")


class KeptDatabase:
    """``kept(lambda db: db.get_info())``: the call on the kept client; a
    ``DevFailed`` (or the ``RuntimeError`` of a client that cannot be made)
    drops the client and is raised."""

    def __init__(self, timeout_ms: int | None = None) -> None:
        self.timeout_ms = timeout_ms
        self._db = None

    def __call__(self, call: Callable[[tango.Database], T]) -> T:
        try:
            if self._db is None:
                db = tango.Database()
                if self.timeout_ms is not None:
                    db.set_timeout_millis(self.timeout_ms)
                self._db = db
            return call(self._db)
        except (tango.DevFailed, RuntimeError):
            self._db = None
            raise
