"""The logger's HDF5 files: layout, writing, rotation, crash recovery (no tango).

Files are ``archive-<seq>-<UTC start>.h5`` in one directory, written one at a
time by a single :class:`ArchiveWriter`:

- **SWMR.** The active file is created under a ``.tmp`` name, its groups and
  datasets are made, it is switched to HDF5's SWMR mode and only then renamed
  to its final name. From then on HDF5 orders every write so that the file on
  disk is consistent at any instant: a kill -9 leaves a file that opens (as a
  SWMR reader) with everything up to the last flush. The next start *seals*
  such files (:mod:`.seal`) so that a plain ``h5py.File(path)`` opens them
  too, and records the gap. A ``.tmp`` file is never data: it is removed.
- **Append-only.** One group per attribute with chunked, resizable datasets
  ``time`` (float64, the Tango timestamp), ``quality`` (int8) and ``value``
  (or ``end``/``blob`` for JSON-encoded values), appended to at every flush.
- **Rotation.** SWMR cannot create datasets in an open file, so a new file is
  started when new attributes appear (at most every ``schema_delay``; their
  rows wait in memory meanwhile), when the file reaches ``max_file_size``
  and at local midnight. Each new file starts with the last row of every
  attribute and the last settings of every device (*carried* rows, counted
  in the group's ``carried`` attribute), so a file alone answers "what was
  the configuration at t" for any t it covers.

Layout (docs/logger.md has the full description)::

    /                      attrs: format, seq, created, session, reason, previous
    /logger/flushes        float64: wall time of every flush
    /logger/journal        JSON records: start, gap, stop, rotate, index, error, dropped
    /values/<dom>/<fam>/<member>/<attr>/{time,quality,value | time,quality,end,blob}
    /settings/<dom>/<fam>/<member>/{time,end,blob}   attribute configs, properties (JSON)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tango_devices.logger import seal as sealing
from tango_devices.logger.model import (
    ERROR,
    JSON,
    KINDS,
    AttrMeta,
    encode_json,
    scalar_code,
)

log = logging.getLogger(__name__)

FORMAT = "bl01-logger/1"
FILE_RE = re.compile(r"^archive-(\d{6})-(\d{8}T\d{6}Z)\.h5$")
CHUNK = 512
BLOB_CHUNK = 4096
MiB = 1024 * 1024


class StoreError(Exception):
    """The archive directory cannot be written (the operator must act)."""


# --------------------------------------------------------------- file helpers
def list_files(directory: Path) -> list[Path]:
    """Archive files, oldest first (by sequence number)."""
    if not directory.is_dir():
        return []
    found = []
    for entry in os.scandir(directory):
        match = FILE_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    return [p for _, p in sorted(found)]


def values_path(key: str) -> str:
    return "values/" + key


def settings_path(device: str) -> str:
    return "settings/" + device.lower()


def open_for_read(path: Path) -> h5py.File:
    """Any archive file, sealed or still written (or left by a crash): SWMR read."""
    return h5py.File(path, "r", libver="latest", swmr=True)


def _grow(ds: h5py.Dataset, data: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize((n + len(data),))
    ds[n:] = data


class BlobLog:
    """A group of records: ``time`` (float64), ``end`` (int64, cumulative end
    offset of each record in ``blob``) and ``blob`` (uint8)."""

    @staticmethod
    def create(group: h5py.Group) -> None:
        group.create_dataset("time", (0,), maxshape=(None,), dtype="f8", chunks=(256,))
        group.create_dataset("end", (0,), maxshape=(None,), dtype="i8", chunks=(256,))
        group.create_dataset("blob", (0,), maxshape=(None,), dtype="u1", chunks=(BLOB_CHUNK,))

    @staticmethod
    def append(group: h5py.Group, times: list[float], payloads: list[bytes]) -> None:
        if not times:
            return
        blob, end = group["blob"], group["end"]
        start = int(end[-1]) if end.shape[0] else 0
        ends = start + np.cumsum([len(p) for p in payloads], dtype=np.int64)
        _grow(blob, np.frombuffer(b"".join(payloads), dtype=np.uint8))
        _grow(end, ends)
        _grow(group["time"], np.asarray(times, dtype=np.float64))

    @staticmethod
    def read(group: h5py.Group) -> list[tuple[float, bytes]]:
        n = min(group["time"].shape[0], group["end"].shape[0])
        if n == 0:
            return []
        times = group["time"][:n]
        ends = group["end"][:n]
        blob = group["blob"][: int(ends[-1])].tobytes()
        starts = np.concatenate(([0], ends[:-1]))
        return [
            (float(t), blob[int(s) : int(e)]) for t, s, e in zip(times, starts, ends, strict=True)
        ]


def read_journal(h5: h5py.File) -> list[dict]:
    out = []
    for _t, payload in BlobLog.read(h5["logger/journal"]):
        with contextlib.suppress(ValueError):
            out.append(json.loads(payload))
    return out


def last_flush(h5: h5py.File) -> float | None:
    flushes = h5["logger/flushes"]
    return float(flushes[-1]) if flushes.shape[0] else None


# ------------------------------------------------------------------ recovery
@dataclass
class Recovery:
    sealed: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    last_file: str | None = None
    gap_start: float | None = None
    cause: str = ""


def recover(directory: Path) -> Recovery:
    """Make every file of ``directory`` readable after a crash; find where the
    previous session ended."""
    rec = Recovery()
    for entry in os.scandir(directory):
        if entry.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                rec.removed.append(entry.name)
    usable = []
    for path in list_files(directory):
        try:
            flags = sealing.consistency_flags(path)
            if flags:
                with open_for_read(path):
                    pass
                sealing.seal(path)
                rec.sealed.append(path.name)
            usable.append(path)
        except (OSError, ValueError) as exc:
            bad = path.with_name(path.name + ".corrupt")
            log.error("archive file %s cannot be read (%s): renamed to %s", path, exc, bad.name)
            with contextlib.suppress(OSError):
                os.replace(path, bad)
            rec.corrupt.append(f"{path.name}: {exc}")
    if usable:
        last = usable[-1]
        rec.last_file = last.name
        try:
            with open_for_read(last) as h5:
                journal = read_journal(h5)
                flushed = last_flush(h5)
                created = float(h5.attrs.get("created", 0.0))
        except (OSError, KeyError) as exc:
            rec.corrupt.append(f"{last.name}: {exc}")
            return rec
        stop = next((j for j in reversed(journal) if j.get("kind") == "stop"), None)
        if stop is not None and journal and journal[-1] is stop:
            rec.gap_start = float(stop["time"])
            rec.cause = "the logger was stopped"
        else:
            rec.gap_start = max(t for t in (flushed, created) if t is not None)
            rec.cause = (
                "the logger died without closing its file (crash or kill -9); "
                "events after its last flush were lost"
            )
    return rec


# -------------------------------------------------------------------- writer
@dataclass
class WriterPolicy:
    max_file_size: int = 256 * MiB
    rotate_daily: bool = True
    schema_delay: float = 2.0  # s: new attributes wait at most this for a new file
    max_value_bytes: int = 64 * 1024  # a JSON-encoded value larger than this is not stored


@dataclass
class CycleResult:
    rows: int = 0  # value rows written
    held: int = 0  # value rows waiting for a file that has their attribute
    flush_duration: float = 0.0
    rotated: str | None = None  # reason, when a new file was started
    journal: list[dict] = field(default_factory=list)


Row = tuple[float, Any, int]  # (Tango time, value or None, quality)


class ArchiveWriter:
    """Writes the archive directory (one instance per directory: a lock file
    keeps a second logger out). Not thread-safe by itself: the logger's writer
    thread calls it, and queries take :attr:`lock`."""

    def __init__(
        self,
        directory: str | Path,
        policy: WriterPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.policy = policy or WriterPolicy()
        self.clock = clock
        self.session = uuid.uuid4().hex[:12]
        self.lock = threading.RLock()
        self.metas: dict[str, AttrMeta] = {}
        self.devices: dict[str, str] = {}  # lower -> name, devices with settings
        self.h5: h5py.File | None = None
        self.path: Path | None = None
        self.seq = 0
        self.created = 0.0
        self.schema: set[str] = set()  # value keys in the active file
        self.schema_devices: set[str] = set()
        self.index: dict[
            str, list[float]
        ] = {}  # key -> [first, last, rows, carried, hfirst, hlast]
        self.settings_index: dict[str, list[float]] = {}
        self.journal_entries: list[dict] = []  # of the active file
        self.last_rows: dict[str, tuple[float, Any, int]] = {}  # encoded, for carrying
        self.last_settings: dict[str, dict[str, tuple[float, bytes]]] = {}
        self.held: dict[str, list[Row]] = {}
        self.held_settings: list[tuple[str, float, dict]] = []
        self.held_since: float | None = None
        self.pending_journal: list[dict] = []
        self.too_large_reported: set[str] = set()
        self.mid_write_hook: Callable[[], None] | None = None  # test hook
        self.recovery: Recovery | None = None
        self.opened_at = 0.0
        self._lockfile = None

    # ---------------------------------------------------------- lifecycle
    def open(self) -> Recovery:
        """Lock the directory, seal files left by a crash, note the gap."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lockfile = open(self.directory / ".logger.lock", "a+")  # noqa: SIM115
        except OSError as exc:
            raise StoreError(f"cannot use the archive directory {self.directory}: {exc}") from exc
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            self._lockfile = None
            raise StoreError(
                f"another logger is writing {self.directory} (its lock file is held)"
            ) from None
        rec = recover(self.directory)
        self.recovery = rec
        files = list_files(self.directory)
        self.seq = int(FILE_RE.match(files[-1].name).group(1)) if files else 0
        now = self.opened_at = self.clock()
        self.pending_journal.append({"kind": "start", "time": now, "session": self.session})
        if rec.gap_start is not None:
            self.pending_journal.append(
                {
                    "kind": "gap",
                    "time": now,
                    "start": rec.gap_start,
                    "end": now,
                    "cause": rec.cause,
                    "previous_file": rec.last_file,
                }
            )
        for name in rec.sealed:
            self.pending_journal.append({"kind": "sealed", "time": now, "file": name})
        for problem in rec.corrupt:
            self.pending_journal.append({"kind": "corrupt", "time": now, "file": problem})
        return rec

    def close(self, reason: str = "stop") -> None:
        """Write the index and a 'stop' record, then close (the file is sealed)."""
        with self.lock:
            if self.h5 is None and any(
                e.get("kind") in ("gap", "sealed", "corrupt") for e in self.pending_journal
            ):
                with contextlib.suppress(StoreError, OSError):
                    self._rotate("start", self.clock())  # the gap must be on record
            if self.h5 is not None:
                self._write_held(self.h5)
                self._close_active({"kind": "stop", "time": self.clock(), "reason": reason})
            if self._lockfile is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                self._lockfile.close()
                self._lockfile = None

    # ------------------------------------------------------------- input
    def abandon(self) -> None:
        """After a write error: drop the active file (it stays readable up to its
        last flush); the next cycle starts a new one."""
        with self.lock:
            h5, self.h5 = self.h5, None
            self.schema, self.schema_devices = set(), set()
            if h5 is not None:
                with contextlib.suppress(Exception):
                    h5.close()

    def add_meta(self, meta: AttrMeta) -> None:
        old = self.metas.get(meta.key)
        if old is not None and old != meta:
            if old.kind != meta.kind:
                # the attribute changed type (a new server version): new file, new dataset
                self.schema.discard(meta.key)
                self.last_rows.pop(meta.key, None)
            self.pending_journal.append(
                {"kind": "meta", "time": self.clock(), "attribute": meta.key, "kind_now": meta.kind}
            )
        self.metas[meta.key] = meta

    def cycle(
        self,
        values: dict[str, list[Row]],
        settings: Iterable[tuple[str, float, dict]] = (),
        journal: Iterable[dict] = (),
        force: bool = False,
    ) -> CycleResult:
        """Write one batch and flush: the writer thread calls this every flush
        period. ``force``: start a file for new attributes now, without waiting."""
        t0 = time.perf_counter()
        result = CycleResult()
        with self.lock:
            self.pending_journal.extend(journal)
            for key, rows in values.items():
                if rows and key in self.metas:
                    self.held.setdefault(key, []).extend(rows)
                elif rows:
                    log.warning(
                        "%d row(s) of %s dropped: attribute never registered", len(rows), key
                    )
            for dev, t, record in settings:
                self.devices.setdefault(dev.lower(), dev)
                self.held_settings.append((dev, t, record))
            now = self.clock()
            reason = self._rotation_reason(now, force)
            if reason:
                self._rotate(reason, now)
                result.rotated = reason
            if self.h5 is None:
                result.held = sum(len(r) for r in self.held.values())
                return result
            result.rows = self._write_held(self.h5)
            result.held = sum(len(r) for r in self.held.values())
            self._write_journal(self.h5)
            _grow(self.h5["logger/flushes"], np.asarray([self.clock()], dtype=np.float64))
            self.h5.flush()
        result.flush_duration = time.perf_counter() - t0
        return result

    # ---------------------------------------------------------- rotation
    def _rotation_reason(self, now: float, force: bool = False) -> str | None:
        missing = any(k not in self.schema for k in self.held) or any(
            d.lower() not in self.schema_devices for d, _t, _r in self.held_settings
        )
        if missing:
            if self.held_since is None:
                self.held_since = now
            if force or now - self.held_since >= self.policy.schema_delay:
                return "start" if self.h5 is None else "new attributes"
        else:
            self.held_since = None
        if self.h5 is None:
            waited = now - self.opened_at >= self.policy.schema_delay
            if self.pending_journal and (force or waited):
                return "start"
            return None
        if self.policy.rotate_daily and _local_day(now) != _local_day(self.created):
            return "new day"
        try:
            size = self.path.stat().st_size if self.path else 0
        except OSError:
            size = 0
        if size >= self.policy.max_file_size:
            return "size"
        return None

    def _next_name(self, now: float) -> str:
        self.seq += 1
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"archive-{self.seq:06d}-{stamp}.h5"

    def _rotate(self, reason: str, now: float) -> None:
        old_path = self.path
        if self.h5 is not None:
            self._write_held(self.h5)  # so the rows carried into the new file are the latest
        name = self._next_name(now)
        final = self.directory / name
        tmp = self.directory / (name + ".tmp")
        try:
            h5 = h5py.File(tmp, "w", libver="latest")
        except OSError as exc:
            raise StoreError(f"cannot create {tmp}: {exc}") from exc
        try:
            h5.attrs.update(
                {
                    "format": FORMAT,
                    "seq": self.seq,
                    "created": now,
                    "session": self.session,
                    "reason": reason,
                    "previous": old_path.name if old_path else "",
                }
            )
            logger = h5.create_group("logger")
            logger.create_dataset("flushes", (0,), maxshape=(None,), dtype="f8", chunks=(1024,))
            BlobLog.create(logger.create_group("journal"))
            index: dict[str, list[float]] = {}
            schema = set()
            for key, meta in sorted(self.metas.items()):
                group = h5.create_group(values_path(key))
                group.attrs.update(meta.as_attrs())
                _create_values(group, meta)
                carried = self.last_rows.get(key)
                group.attrs["carried"] = 1 if carried else 0
                if carried:
                    _append_encoded(group, meta, [carried])
                    index[key] = [carried[0], carried[0], 1, 1, np.inf, -np.inf]
                schema.add(key)
            settings_index: dict[str, list[float]] = {}
            devices = set()
            for low, dev in sorted(self.devices.items()):
                group = h5.create_group(settings_path(dev))
                group.attrs["device"] = dev
                BlobLog.create(group)
                carried_settings = sorted(self.last_settings.get(low, {}).values())
                group.attrs["carried"] = len(carried_settings)
                if carried_settings:
                    BlobLog.append(
                        group, [t for t, _ in carried_settings], [p for _, p in carried_settings]
                    )
                    ts = [t for t, _ in carried_settings]
                    settings_index[low] = [min(ts), max(ts), len(ts), len(ts), np.inf, -np.inf]
                devices.add(low)
            h5.swmr_mode = True
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                h5.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.h5 is not None:
            self._close_active({"kind": "rotate", "time": now, "next": name, "reason": reason})
        self.h5, self.path, self.created = h5, final, now
        self.schema, self.schema_devices = schema, devices
        self.index, self.settings_index = index, settings_index
        self.journal_entries = []
        self.held_since = None
        log.info("archive file %s started (%s)", name, reason)

    def _close_active(self, record: dict) -> None:
        h5 = self.h5
        self.h5 = None
        try:
            self.pending_journal.append(
                {"kind": "index", "time": record["time"], **self.index_record()}
            )
            self.pending_journal.append(record)
            self._write_journal(h5)
            _grow(h5["logger/flushes"], np.asarray([self.clock()], dtype=np.float64))
            h5.flush()
        finally:
            h5.close()

    def index_record(self) -> dict:
        return {
            "values": {k: _index_json(v) for k, v in self.index.items()},
            "settings": {k: _index_json(v) for k, v in self.settings_index.items()},
        }

    # ------------------------------------------------------------ writing
    def _write_held(self, h5: h5py.File) -> int:
        written = 0
        keys = [k for k in self.held if k in self.schema]
        hook_at = len(keys) // 2 if self.mid_write_hook else -1
        for i, key in enumerate(keys):
            if i == hook_at:
                self.mid_write_hook()
            rows = self.held.pop(key)
            meta = self.metas[key]
            encoded = self._encode(meta, rows)
            _append_encoded(h5[values_path(key)], meta, encoded)
            self.last_rows[key] = encoded[-1]
            _update_index(self.index, key, [r[0] for r in encoded])
            written += len(rows)
        keep = []
        by_dev: dict[str, list[tuple[float, bytes, dict]]] = {}
        for dev, t, record in self.held_settings:
            if dev.lower() in self.schema_devices:
                by_dev.setdefault(dev.lower(), []).append((t, encode_json(record), record))
            else:
                keep.append((dev, t, record))
        self.held_settings = keep
        for low, items in by_dev.items():
            BlobLog.append(
                h5[settings_path(low)], [t for t, _, _ in items], [p for _, p, _ in items]
            )
            last = self.last_settings.setdefault(low, {})
            for t, payload, record in items:
                last[_settings_slot(record)] = (t, payload)
            _update_index(self.settings_index, low, [t for t, _, _ in items])
        return written

    def _encode(self, meta: AttrMeta, rows: list[Row]) -> list[tuple[float, Any, int]]:
        if meta.kind != JSON:
            out = []
            for t, v, q in rows:
                try:
                    out.append((t, scalar_code(meta.kind, v), q))
                except (TypeError, ValueError):
                    out.append((t, scalar_code(meta.kind, None), ERROR))
            return out
        out = []
        limit = self.policy.max_value_bytes
        for t, v, q in rows:
            payload = b"" if v is None else encode_json(v)
            if len(payload) > limit:
                if meta.key not in self.too_large_reported:
                    self.too_large_reported.add(meta.key)
                    self.pending_journal.append(
                        {
                            "kind": "error",
                            "time": t,
                            "attribute": meta.key,
                            "reason": "VALUE_TOO_LARGE",
                            "desc": f"{len(payload)} bytes encoded, more than "
                            f"{limit} (MaxValueSize): values not stored",
                        }
                    )
                payload, q = b"", ERROR
            out.append((t, payload, q))
        return out

    def _write_journal(self, h5: h5py.File) -> None:
        if not self.pending_journal:
            return
        entries, self.pending_journal = self.pending_journal, []
        BlobLog.append(
            h5["logger/journal"],
            [float(e.get("time", 0.0)) for e in entries],
            [json.dumps(e, default=str).encode() for e in entries],
        )
        self.journal_entries.extend(entries)

    # -------------------------------------------------------------- info
    def file_size(self) -> int:
        try:
            return self.path.stat().st_size if self.path else 0
        except OSError:
            return 0

    def archive_size(self) -> tuple[int, int]:
        """(total bytes, number of files) of the directory."""
        total = count = 0
        for path in list_files(self.directory):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
                count += 1
        return total, count


def _local_day(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t).date()


def _settings_slot(record: dict) -> str:
    if record.get("kind") == "config":
        return "config:" + str(record.get("attribute", "")).lower()
    return str(record.get("kind", ""))


def _index_json(entry: list[float]) -> list:
    return [None if not np.isfinite(v) else v for v in entry]


def _update_index(index: dict[str, list[float]], key: str, times: list[float]) -> None:
    lo, hi = min(times), max(times)
    entry = index.get(key)
    if entry is None:
        index[key] = [lo, hi, len(times), 0, lo, hi]
        return
    entry[0] = min(entry[0], lo)
    entry[1] = max(entry[1], hi)
    entry[2] += len(times)
    entry[4] = min(entry[4], lo)
    entry[5] = max(entry[5], hi)


def _create_values(group: h5py.Group, meta: AttrMeta) -> None:
    group.create_dataset("time", (0,), maxshape=(None,), dtype="f8", chunks=(CHUNK,))
    group.create_dataset("quality", (0,), maxshape=(None,), dtype="i1", chunks=(CHUNK,))
    if meta.kind == JSON:
        group.create_dataset("end", (0,), maxshape=(None,), dtype="i8", chunks=(CHUNK,))
        group.create_dataset("blob", (0,), maxshape=(None,), dtype="u1", chunks=(BLOB_CHUNK,))
    else:
        dtype, fill = KINDS[meta.kind]
        group.create_dataset(
            "value", (0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK,), fillvalue=fill
        )


def _append_encoded(group: h5py.Group, meta: AttrMeta, rows: list[tuple[float, Any, int]]) -> None:
    """Values first, time last: a reader takes the shortest dataset as the row count."""
    if meta.kind == JSON:
        end = group["end"]
        start = int(end[-1]) if end.shape[0] else 0
        payloads = [r[1] for r in rows]
        _grow(group["blob"], np.frombuffer(b"".join(payloads), dtype=np.uint8))
        _grow(end, start + np.cumsum([len(p) for p in payloads], dtype=np.int64))
    else:
        dtype = KINDS[meta.kind][0]
        _grow(group["value"], np.asarray([r[1] for r in rows], dtype=dtype))
    _grow(group["quality"], np.asarray([r[2] for r in rows], dtype=np.int8))
    _grow(group["time"], np.asarray([r[0] for r in rows], dtype=np.float64))
