"""One Tango database client kept across calls (no tango logic of its own).

A client is made once and reused: a new ``tango.Database()`` per call is a
new connection each time (at 200 devices, thousands a minute). After a
failure it is dropped and the next call makes a new one: a cppTango client
that failed refuses to reconnect for a second (``RECONNECTION_DELAY``), a new
one tries at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import tango

T = TypeVar("T")
log = logging.getLogger(__name__)


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


class LatestWrites:
    """Stores values through ``write`` in its own thread, the latest only.

    ``put(value)`` returns at once: a caller holding a lock (a supervisor's
    loop) never waits for a database that is slow or stopped (a write to a
    stopped database can block for over a minute). Values put while a write
    is under way replace each other; only the last is written. A failed write
    is tried again every ``retry`` seconds until it is stored or a newer value
    replaces it."""

    def __init__(
        self, write: Callable[[T], None], retry: float = 5.0, name: str = "latest-writes"
    ) -> None:
        self._write = write
        self.retry = retry
        self._lock = threading.Lock()
        self._pending: list = []  # [value] when one waits to be written
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, value: T) -> None:
        with self._lock:
            self._pending = [value]
            self._idle.clear()
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is left to write (False: still pending)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _run(self) -> None:
        with tango.EnsureOmniThread():
            while not self._closed:
                self._wake.wait()
                self._wake.clear()
                with self._lock:
                    if not self._pending:
                        continue
                    value = self._pending.pop()
                try:
                    self._write(value)
                except Exception as exc:  # noqa: BLE001 - kept, tried again
                    log.warning("could not store %r (again in %g s): %s", value, self.retry, exc)
                    with self._lock:
                        if not self._pending:  # nothing newer: this one again
                            self._pending = [value]
                    self._wake.wait(self.retry)
                    self._wake.set()
                    continue
                with self._lock:
                    if not self._pending:
                        self._idle.set()
