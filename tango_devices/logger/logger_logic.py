"""The logger's engine (no tango): event queue, writer thread, statistics.

Event callbacks only append ``(key, raw event)`` to a deque (the *backlog*):
nothing else happens on the event thread, so the logger receives events
about as fast as an empty callback would. A writer thread wakes every
``flush_period``, drains the backlog, decodes each raw event with the
injected ``decode`` (the Tango layer's), groups rows by attribute, writes
them with the :class:`~tango_devices.logger.store.ArchiveWriter` and flushes.
Attribute descriptions, settings records and journal records go through a
second small queue, taken first, so a description always precedes its
attribute's rows.

Error events are archived as ERROR rows only when they start an error (or
change its reason), with the reason in the file's journal; the next good
value ends it. When the backlog is full (``max_backlog``), new events are
counted and dropped, and the interval is journalled as a gap.

When the archive's disk is full, the writer writes nothing: the rows of each
cycle are counted (``rows_lost``, ``errors``), the state is ALARM with a
Status saying where (directory, file system) and how many rows since when,
Flush is refused; the first cycle with room again writes, journals the
interval as a gap and returns to ON. A write that fails otherwise gives
FAULT; its rows are counted as lost too.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tango_devices.common.statemachine import StateMachine
from tango_devices.logger.model import ERROR, AttrMeta, iso
from tango_devices.logger.reader import ArchiveReader
from tango_devices.logger.states import (
    ARCHIVING,
    DEGRADED,
    DISK_FULL,
    LOGGER_TABLE,
    STORE_FAILED,
)
from tango_devices.logger.store import (
    ArchiveWriter,
    DiskFull,
    StoreError,
    WriteFailed,
    is_disk_full,
)

log = logging.getLogger(__name__)

#: decode(raw) -> (Tango time, value, quality, error); error is None or (reason, desc)
Decoder = Callable[[Any], tuple[float, Any, int, tuple[str, str] | None]]
DROP_ALARM_WINDOW = 60.0  # s: dropped events keep the logger in ALARM this long
RATE_WINDOW = 5.0  # s over which EventsPerSecond is averaged
SIZE_SCAN_PERIOD = 5.0  # s between scans of the archive directory's size
FULL_LOG_PERIOD = 60.0  # s: a full disk is logged at most this often (the Status says it all)


@dataclass
class LoggerConfig:
    flush_period: float = 1.0
    max_backlog: int = 2_000_000
    max_batch: int = 1_000_000  # events decoded per cycle at most


@dataclass
class Stats:
    events_per_second: float = 0.0
    events_received: int = 0  # taken from the backlog, plus dropped
    events_written: int = 0  # value rows made durable
    events_dropped: int = 0
    backlog: int = 0
    write_latency: float = 0.0  # s: oldest event of the last flush, from reception to durable
    flush_duration: float = 0.0  # s: writing and flushing the last batch
    last_flush: float = 0.0  # wall time of the last completed flush
    current_file: str = ""
    current_file_size: int = 0
    archive_size: int = 0
    file_count: int = 0
    errors: int = 0  # failed write cycles and undecodable events
    rows_lost: int = 0  # value rows that could not be written
    last_error: str = ""
    cycles: int = 0
    attributes: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class NotStored(Exception):
    """Flush could not make the data durable (``disk_full``: the disk is full)."""

    def __init__(self, message: str, disk_full: bool) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class LoggerLogic:
    def __init__(
        self,
        writer: ArchiveWriter,
        decode: Decoder,
        config: LoggerConfig | None = None,
        thread_context: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer = writer
        self.decode = decode
        self.config = config or LoggerConfig()
        self.clock = clock
        self.thread_context = thread_context
        self.reader = ArchiveReader(writer.directory, live=writer)
        self.machine = StateMachine(LOGGER_TABLE, "Opening the archive directory")
        self.events: collections.deque = collections.deque()
        self.control: collections.deque = collections.deque()
        self.stats = Stats()
        self.status_extra: Callable[[], str] = lambda: ""
        self._stats_listeners: list[Callable[[Stats], None]] = []
        self._dropped = 0  # incremented on the event thread
        self._dropped_journalled = 0
        self._in_error: dict[str, str] = {}
        self._rates: collections.deque = collections.deque()
        self._last_drop_at = -1e18
        self._last_size_scan = -1e18
        self._prev_drain = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._started = 0
        self._force = False
        self._thread: threading.Thread | None = None
        self._outcome: NotStored | None = None  # of the last completed cycle
        self._full_since: float | None = None  # the disk is full since (wall time)
        self._full_rows = 0  # rows not written since then
        self._full_logged = -1e18  # the last time a full disk was logged

    # ------------------------------------------------------------- inputs
    def sink(self, key: str) -> Callable[[Any], None]:
        """The event callback of one attribute: appends, nothing else."""
        events = self.events
        append = events.append
        limit = self.config.max_backlog

        def callback(event: Any) -> None:
            if len(events) < limit:
                append((key, event))
            else:
                self._dropped += 1

        return callback

    def put(self, key: str, t: float, value: Any, quality: int, error=None) -> None:
        """An already decoded row (values read by polling)."""
        if len(self.events) < self.config.max_backlog:
            self.events.append((key, (t, value, quality, error)))
        else:
            self._dropped += 1

    def register(self, meta: AttrMeta) -> None:
        self.control.append(("meta", meta))

    def settings(self, device: str, t: float, record: dict) -> None:
        """A settings record: {"kind": "config", "attribute", "config"} or
        {"kind": "properties", "properties", "attribute_properties"}."""
        self.control.append(("settings", (device, t, record)))

    def journal(self, record: dict) -> None:
        self.control.append(("journal", record))

    def on_stats(self, listener: Callable[[Stats], None]) -> None:
        self._stats_listeners.append(listener)

    # ---------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Open the directory (sealing what a crash left) and start writing."""
        try:
            rec = self.writer.open()
        except StoreError as exc:
            self._fail(str(exc))
            raise
        if rec.sealed:
            log.warning("sealed %d file(s) left by a crash: %s", len(rec.sealed), rec.sealed)
        self.machine.fire(ARCHIVING, "Archiving: waiting for the first events")
        self._thread = threading.Thread(target=self._run, name="logger-writer", daemon=True)
        self._thread.start()
        # Read what the catalog does not know yet (files of an older version,
        # files sealed after a crash) now, not in the first query.
        threading.Thread(target=self._warm_up, name="logger-catalog", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.reader.files()
        except Exception as exc:  # noqa: BLE001 - a cache: the first query does it then
            log.warning("reading the archive's index: %s", exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the file cleanly (it is sealed). No
        statistics listener runs any more (the caller may hold their locks)."""
        self._stats_listeners = []
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self.writer.close()

    def flush_now(self, timeout: float = 10.0) -> float:
        """Write everything received so far now (the first file is made at once
        instead of after the schema delay); returns the flush's wall time.
        NotStored when that cycle could not write (a full disk, a failed write)."""
        with self._done:
            target = self._started + 1  # the first cycle that starts after this request
            self._force = True
            self._wake.set()
            ok = self._done.wait_for(lambda: self.stats.cycles >= target, timeout)
            outcome = self._outcome
        if not ok:
            raise TimeoutError(f"no write cycle completed within {timeout:g} s")
        if outcome is not None:
            raise outcome
        return self.stats.last_flush

    # ------------------------------------------------------------- thread
    def _run(self) -> None:
        ctx = self.thread_context() if self.thread_context else None
        if ctx is not None:
            ctx.__enter__()
        try:
            while not self._stop.is_set():
                self._wake.wait(self.config.flush_period)
                self._wake.clear()
                self.cycle()
            self.cycle()
        finally:
            try:
                self.writer.close()
            except Exception as exc:  # noqa: BLE001 - last words
                log.error("closing the archive: %s", exc)
            if ctx is not None:
                ctx.__exit__(None, None, None)

    def cycle(self) -> None:
        """Drain, decode, write, flush, publish statistics (the writer thread)."""
        with self._done:
            self._started += 1
            force, self._force = self._force, False
        drain_start = self.clock()
        metas, settings, journal = [], [], []
        control = self.control
        while control:
            kind, item = control.popleft()
            if kind == "meta":
                metas.append(item)
            elif kind == "settings":
                settings.append(item)
            else:
                journal.append(item)
        groups, taken = self._drain(journal)
        dropped = self._dropped - self._dropped_journalled
        if dropped:
            self._dropped_journalled += dropped
            self._last_drop_at = drain_start
            journal.append(
                {
                    "kind": "dropped",
                    "time": drain_start,
                    "start": self._prev_drain or drain_start,
                    "end": drain_start,
                    "count": dropped,
                    "cause": f"the backlog was full ({self.config.max_backlog} events)",
                }
            )
        st = self.stats
        failed: str | None = None
        full: DiskFull | None = None
        lost = 0
        try:
            for meta in metas:
                self.writer.add_meta(meta)
            result = self.writer.cycle(groups, settings, journal, force=force)
            if result.disk_full is not None:
                full, lost = result.disk_full, result.lost
        except WriteFailed as exc:
            full, lost, result = exc.disk_full, exc.lost, None
            failed = None if full else str(exc)
        except (StoreError, OSError, RuntimeError, ValueError, KeyError) as exc:
            lost = sum(len(rows) for rows in groups.values())
            self.writer.abandon()
            result = None
            if is_disk_full(exc):
                full = self.writer.disk_status()
            else:
                failed = f"writing the archive failed: {exc}"
        now = self.clock()
        outcome = None
        if full is not None or failed:
            st.errors += 1
            st.rows_lost += lost
            if full is not None:
                if self._full_since is None:
                    self._full_since = drain_start
                self._full_rows += lost
                st.last_error = (
                    f"Disk full: {full.describe()}; {self._full_rows} rows not written since "
                    f"{iso(self._full_since)}"
                )
            else:
                st.last_error = f"{failed} ({lost} rows not written)"
            if full is None or drain_start - self._full_logged >= FULL_LOG_PERIOD:
                self._full_logged = drain_start if full is not None else -1e18
                log.error("%s", st.last_error)
            outcome = NotStored(st.last_error, full is not None)
        else:
            if self._full_since is not None:
                log.warning("writing the archive again: %s", st.last_error)
            self._full_since, self._full_rows, self._full_logged = None, 0, -1e18
        if result is not None:
            st.events_written += result.rows
            st.flush_duration = result.flush_duration
            if self.writer.h5 is not None:
                st.last_flush = now
                if self._prev_drain is not None:
                    st.write_latency = now - self._prev_drain
            held = result.held
        else:
            held = 0
        st.events_received += taken + dropped
        st.events_dropped = self._dropped
        st.backlog = len(self.events) + held
        self._rates.append((now, st.events_received))
        while len(self._rates) > 2 and now - self._rates[0][0] > RATE_WINDOW:
            self._rates.popleft()
        t0, n0 = self._rates[0]
        st.events_per_second = (st.events_received - n0) / (now - t0) if now > t0 else 0.0
        st.current_file = self.writer.path.name if self.writer.path else ""
        st.current_file_size = self.writer.file_size()
        st.attributes = len(self.writer.metas)
        if now - self._last_size_scan >= SIZE_SCAN_PERIOD or result and result.rotated:
            self._last_size_scan = now
            st.archive_size, st.file_count = self.writer.archive_size()
        self._prev_drain = drain_start
        # Completion first: a Tango command waiting in flush_now() holds the
        # device monitor, which the state mirror and the listeners take.
        with self._done:
            st.cycles = self._started
            self._outcome = outcome
            self._done.notify_all()
        if self._stop.is_set():
            return  # stopping: the caller (delete_device) may hold the monitor
        self._classify(failed, full is not None, now)
        for listener in list(self._stats_listeners):
            try:
                listener(st)
            except Exception as exc:  # noqa: BLE001 - a listener never stops the writer
                log.warning("stats listener failed: %s", exc)

    def _drain(self, journal: list[dict]) -> tuple[dict[str, list], int]:
        events = self.events
        n = min(len(events), self.config.max_batch)
        groups: dict[str, list] = {}
        decode = self.decode
        in_error = self._in_error
        popleft = events.popleft
        bad = 0
        for _ in range(n):
            key, raw = popleft()
            try:
                t, value, quality, error = raw if type(raw) is tuple else decode(raw)
            except Exception as exc:  # noqa: BLE001 - one bad event never stops the writer
                bad += 1
                self.stats.last_error = f"cannot decode an event of {key}: {exc}"
                continue
            if error is not None:
                reason = error[0]
                if in_error.get(key) == reason:
                    continue
                in_error[key] = reason
                journal.append(
                    {
                        "kind": "error",
                        "time": t,
                        "attribute": key,
                        "reason": reason,
                        "desc": error[1],
                    }
                )
                value, quality = None, ERROR
            elif key in in_error:
                del in_error[key]
            rows = groups.get(key)
            if rows is None:
                groups[key] = [(t, value, quality)]
            else:
                rows.append((t, value, quality))
        if bad:
            self.stats.errors += bad
        return groups, n

    def _classify(self, failed: str | None, disk_full: bool, now: float) -> None:
        st = self.stats
        extra = self.status_extra()
        where = (
            f"{st.current_file} ({st.current_file_size / 1e6:.1f} MB)" if st.current_file else ""
        )
        if disk_full:
            self.machine.fire(
                DISK_FULL,
                f"{st.last_error}. Nothing is written while the disk is full "
                f"({st.rows_lost} rows lost in all, RowsLost); free space there and the "
                f"logger writes again by itself. {extra}".strip(),
            )
            return
        if failed:
            self._fail(
                f"{st.last_error}. Check the archive directory {self.writer.directory}; "
                "retrying every flush period."
            )
            return
        rate = f"{st.events_per_second:.0f} events/s"
        if now - self._last_drop_at < DROP_ALARM_WINDOW:
            self.machine.fire(
                DEGRADED,
                f"Dropping events: the backlog reached {self.config.max_backlog} "
                f"({st.events_dropped} dropped so far); {rate}. {extra}".strip(),
            )
        elif st.backlog > self.config.max_backlog // 2:
            self.machine.fire(
                DEGRADED,
                f"Falling behind: {st.backlog} events waiting to be written; {rate}. "
                f"{extra}".strip(),
            )
        else:
            target = f" into {where}" if where else " (no file yet)"
            self.machine.fire(
                ARCHIVING,
                f"Archiving {st.attributes} attributes{target}; {rate}. {extra}".strip(),
            )

    def _fail(self, text: str) -> None:
        self.machine.fire(STORE_FAILED, text)

    # ------------------------------------------------------------ helpers
    @property
    def directory(self) -> Path:
        return self.writer.directory

    def kill_mid_write(self) -> None:
        """Test hook: SIGKILL this process half-way through the next write."""
        import signal

        self.writer.mid_write_hook = lambda: os.kill(os.getpid(), signal.SIGKILL)
        self._wake.set()
