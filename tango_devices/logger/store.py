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
- **Late attributes.** A SWMR writer may only append to datasets that exist
  (the HDF5 SWMR user's guide: no new groups, datasets or attributes), so
  attributes that appear after a file was created (a device server started
  later, the next level of ``beamline up``) go into the file's *extra* table:
  one set of datasets for all of them, each row with the number of its
  attribute, the numbers given in the journal (``extra`` records, written
  before the rows). Device settings likewise go into ``extra_settings``. No
  new file for them: one logger start makes one file.
- **Rotation.** A new file is started when the extra table holds
  ``max_extra_rows`` rows (the new file gives every attribute its own
  datasets), when the file reaches ``max_file_size`` and at local midnight.
  Each new file starts with the last row of every attribute and the last
  settings of every device (*carried* rows, counted in the group's
  ``carried`` attribute), so a file alone answers "what was the
  configuration at t" for any t it covers.
- **A full disk.** Before writing, the writer checks the free space of the
  archive's file system (``min_free_bytes`` plus twice what a cycle needs);
  without it nothing is written (the file stays as it was), the rows of the
  cycle are counted as lost and, once writing works again, journalled as a
  ``lost`` gap. Errors HDF5 meets while writing (including those h5py can
  only report to ``sys.unraisablehook``, when a dataset it closes cannot be
  flushed) fail the cycle: its rows count as lost, the file is abandoned
  and the next cycle starts a new one. Nothing is counted as written that
  did not reach the file.
- **Catalog.** ``index.json`` keeps, per closed file, its index (which
  attributes and time ranges it holds), its journal and its attribute
  descriptions, so a reader answers the first query after a restart by
  opening only the files it needs (:class:`Catalog`).

Layout (docs/logger.md has the full description)::

    /                      attrs: format, seq, created, session, reason, previous
    /logger/flushes        float64: wall time of every flush
    /logger/journal        JSON records: start, gap, stop, rotate, index, error, dropped,
                           lost, extra
    /values/<dom>/<fam>/<member>/<attr>/{time,quality,value | time,quality,end,blob}
    /settings/<dom>/<fam>/<member>/{time,end,blob}   attribute configs, properties (JSON)
    /extra/{key,time,quality,num,int,end,blob}       rows of attributes newer than the file
    /extra_settings/{time,end,blob}                  settings of devices newer than the file
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import sys
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

FORMAT = "bl01-logger/2"  # 2: the extra table (format 1 files are read as before)
FILE_RE = re.compile(r"^archive-(\d{6})-(\d{8}T\d{6}Z)\.h5$")
CATALOG = "index.json"
CHUNK = 512
BLOB_CHUNK = 4096
EXTRA_CHUNK = 4096
MiB = 1024 * 1024
FILE_BYTES_PER_ATTRIBUTE = 16 * 1024  # a new file: datasets, first chunks, headers
EXTRA_COLUMNS = ("key", "time", "quality", "num", "int", "end")  # one entry per row


class StoreError(Exception):
    """The archive directory cannot be written (the operator must act)."""


@dataclass
class DiskFull:
    """Not enough free space for the next write, and where."""

    directory: Path
    mount: str
    fstype: str
    free: int
    total: int
    needed: int

    def describe(self) -> str:
        return (
            f"the disk holding the archive directory {self.directory} is full "
            f"({self.fstype} file system mounted on {self.mount}: "
            f"{self.free / 1e6:.1f} MB free of {self.total / 1e6:.1f} MB, "
            f"{self.needed / 1e6:.1f} MB needed)"
        )


class WriteFailed(StoreError):
    """A write cycle failed: its rows were not written (``lost``), the file was
    abandoned; ``disk_full`` when the cause is a full disk."""

    def __init__(self, message: str, lost: int, disk_full: DiskFull | None = None) -> None:
        super().__init__(message)
        self.lost = lost
        self.disk_full = disk_full


def is_disk_full(exc: BaseException | None) -> bool:
    """Is ``exc`` (or what caused it) 'no space left' (ENOSPC, EDQUOT)?"""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "errno = 28," in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) of the file system holding ``path``."""
    try:
        real = os.path.realpath(path)
        best = ("/", "?")
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[0]):
                    best = (mount, parts[2])
        return best
    except OSError:
        return ("?", "?")


# ------------------------------------------------------- reserving disk space
FALLOC_FL_KEEP_SIZE = 0x01
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except (OSError, AttributeError):  # not Linux: the free-space check alone
    _fallocate = None


def reserve(fd: int, offset: int, length: int) -> bool | None:
    """Allocate ``length`` bytes from ``offset`` without changing the file's size
    (fallocate with KEEP_SIZE), so that writes there cannot meet a full disk:
    True when reserved, False when there is no room (ENOSPC, EDQUOT), None
    when the file system cannot (then only the free-space check protects)."""
    if _fallocate is None or length <= 0:
        return None
    if _fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSPC, errno.EDQUOT):
        return False
    return None


def release(fd: int) -> None:
    """Give back what :func:`reserve` allocated beyond the file's end: a
    truncation to its own size frees it (ext4, xfs, tmpfs; punching a hole
    beyond the end does not, on ext4)."""
    os.ftruncate(fd, os.fstat(fd).st_size)


# ------------------------------------------------------ HDF5 errors h5py hides
# After an HDF5 write error the library's state for that file is unusable:
# closing it again (or flushing it) can crash the process. Such files are
# closed once, as far as HDF5 manages, and then kept here, never touched again.
_POISONED: list = []

_capturing: dict[int, list[BaseException]] = {}
_hook_lock = threading.Lock()
_previous_hook = None


def _unraisable(info) -> None:
    errors = _capturing.get(threading.get_ident())
    if errors is not None and isinstance(info.exc_value, Exception):
        errors.append(info.exc_value)
        return
    (_previous_hook or sys.__unraisablehook__)(info)


@contextlib.contextmanager
def hdf5_errors():
    """Collect, in this thread, the exceptions raised where Python cannot pass
    them on: h5py closes a dataset when its last reference goes, and an HDF5
    error then (a chunk that cannot be written: ENOSPC) only reaches
    ``sys.unraisablehook`` ("Exception ignored in ... __dealloc__"). The block
    gets the list; other threads' unraisable exceptions go where they went."""
    global _previous_hook
    with _hook_lock:
        if sys.unraisablehook is not _unraisable:
            _previous_hook = sys.unraisablehook
            sys.unraisablehook = _unraisable
    errors: list[BaseException] = []
    tid = threading.get_ident()
    outer = _capturing.get(tid)
    _capturing[tid] = errors
    try:
        yield errors
    finally:
        if outer is None:
            del _capturing[tid]
        else:
            outer.extend(errors)
            _capturing[tid] = outer


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
    unsealed: list[str] = field(default_factory=list)  # no room to seal them now
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
        except (OSError, ValueError) as exc:
            bad = path.with_name(path.name + ".corrupt")
            log.error("archive file %s cannot be read (%s): renamed to %s", path, exc, bad.name)
            with contextlib.suppress(OSError):
                os.replace(path, bad)
            rec.corrupt.append(f"{path.name}: {exc}")
            continue
        if flags:
            try:
                sealing.seal(path)
                rec.sealed.append(path.name)
            except OSError as exc:
                # No room for the sealed copy (a full disk): the file is sound and
                # reads as a SWMR reader; the next start seals it.
                log.warning("archive file %s left unsealed for now: %s", path, exc)
                with contextlib.suppress(OSError):
                    os.unlink(path.with_name(path.name + ".sealing.tmp"))
                rec.unsealed.append(f"{path.name}: {exc}")
        usable.append(path)
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


# ------------------------------------------------------------------- catalog
@dataclass
class FileInfo:
    """What a file holds: per attribute and device its index entry ([first,
    last, rows, carried, first and last without the carried rows]), its
    journal, the descriptions of its attributes (``metas``; ``extra``: the
    numbers and descriptions of the attributes in its extra table)."""

    path: Path
    seq: int
    created: float
    end: float | None
    live: bool
    values: dict[str, list] = field(default_factory=dict)
    settings: dict[str, list] = field(default_factory=dict)
    journal: list[dict] = field(default_factory=list)
    metas: dict[str, AttrMeta] = field(default_factory=dict)
    extra: dict[str, list[tuple[int, AttrMeta]]] = field(default_factory=dict)


CATALOG_FORMAT = "bl01-logger-index/1"
UNCATALOGUED_JOURNAL = ("index", "extra")  # kept elsewhere in the entry


def catalog_journal(journal: list[dict]) -> list[dict]:
    """The journal records a catalog entry keeps (the index and the extra
    numbers have their own fields)."""
    return [j for j in journal if j.get("kind") not in UNCATALOGUED_JOURNAL]


def _meta_list(meta: AttrMeta) -> list:
    return [
        meta.device,
        meta.attribute,
        meta.kind,
        meta.tango_type,
        meta.data_format,
        list(meta.labels),
        meta.unit,
    ]


def _meta_from(item: list) -> AttrMeta:
    device, attribute, kind, tango_type, data_format, labels, unit = item
    return AttrMeta(device, attribute, kind, tango_type, data_format, tuple(labels), unit)


def file_stamp(path: Path) -> tuple[int, int]:
    """(mtime in ns, size): a catalog entry is valid while the file's stamp is."""
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


class Catalog:
    """``index.json`` in the archive directory: for every closed (sealed) file,
    what :class:`FileInfo` says, with the file's stamp. A reader uses an
    entry while the file's stamp matches (a file sealed after a crash, or
    replaced, is read again). Only the logger writes it (atomically: a
    temporary file renamed over it); a damaged or missing catalog only costs
    opening the files once more. Thread-safe."""

    def __init__(self, directory: str | Path, writable: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CATALOG
        self.writable = writable
        self.lock = threading.Lock()
        self._entries: dict[str, tuple[tuple[int, int], FileInfo]] | None = None
        self._stamp: tuple[int, int] | None = None
        self._dirty = False

    def _load(self) -> dict[str, tuple[tuple[int, int], FileInfo]]:
        try:
            stamp = file_stamp(self.path)
        except OSError:
            stamp = None
        if self._entries is not None and (self._dirty or stamp == self._stamp):
            return self._entries
        entries: dict[str, tuple[tuple[int, int], FileInfo]] = {}
        if stamp is not None:
            try:
                data = json.loads(self.path.read_bytes())
                if data.get("format") == CATALOG_FORMAT:
                    metas = [_meta_from(m) for m in data["metas"]]
                    for name, e in data["files"].items():
                        entries[name] = (tuple(e["stamp"]), self._info(name, e, metas))
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                log.warning("the archive catalog %s is unusable (%s): rebuilt", self.path, exc)
                entries = {}
        self._entries, self._stamp = entries, stamp
        return entries

    def _info(self, name: str, e: dict, metas: list[AttrMeta]) -> FileInfo:
        return FileInfo(
            path=self.directory / name,
            seq=int(e["seq"]),
            created=float(e["created"]),
            end=e["end"],
            live=False,
            values=e["values"],
            settings=e["settings"],
            journal=e["journal"],
            metas={k: metas[i] for k, i in e["metas"].items()},
            extra={k: [(int(n), metas[i]) for n, i in v] for k, v in e["extra"].items()},
        )

    def get(self, path: Path, stamp: tuple[int, int]) -> FileInfo | None:
        with self.lock:
            found = self._load().get(path.name)
        if found is None or tuple(found[0]) != tuple(stamp):
            return None
        return found[1]

    def names(self) -> set[str]:
        with self.lock:
            return set(self._load())

    def put(self, info: FileInfo, stamp: tuple[int, int]) -> None:
        if not self.writable:
            return
        with self.lock:
            self._load()[info.path.name] = (stamp, info)
            self._dirty = True

    def prune(self, keep: set[str]) -> None:
        """Forget the files that are gone."""
        if not self.writable:
            return
        with self.lock:
            entries = self._load()
            for name in set(entries) - keep:
                del entries[name]
                self._dirty = True

    def save(self) -> None:
        """Write the catalog if it changed (a failure is logged: it is a cache)."""
        if not self.writable:
            return
        with self.lock:
            if not self._dirty or self._entries is None:
                return
            table: dict[tuple, int] = {}

            def ref(meta: AttrMeta) -> int:
                item = _meta_list(meta)
                return table.setdefault(json.dumps(item), len(table))

            files = {}
            for name, (stamp, info) in sorted(self._entries.items()):
                files[name] = {
                    "stamp": list(stamp),
                    "seq": info.seq,
                    "created": info.created,
                    "end": info.end,
                    "values": info.values,
                    "settings": info.settings,
                    "journal": info.journal,
                    "metas": {k: ref(m) for k, m in info.metas.items()},
                    "extra": {k: [[n, ref(m)] for n, m in v] for k, v in info.extra.items()},
                }
            data = {
                "format": CATALOG_FORMAT,
                "metas": [json.loads(t) for t in table],
                "files": files,
            }
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(data, separators=(",", ":"), default=_json_number))
                os.replace(tmp, self.path)
            except OSError as exc:
                log.warning("cannot write the archive catalog %s: %s", self.path, exc)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                return
            self._dirty = False
            with contextlib.suppress(OSError):
                self._stamp = file_stamp(self.path)


def _json_number(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON")


# -------------------------------------------------------------------- writer
@dataclass
class WriterPolicy:
    max_file_size: int = 256 * MiB
    rotate_daily: bool = True
    schema_delay: float = 2.0  # s: the first file waits at most this for attributes
    max_value_bytes: int = 64 * 1024  # a JSON-encoded value larger than this is not stored
    max_extra_rows: int = 500_000  # rows in the extra table before a new file
    min_free_bytes: int = 4 * MiB  # free space kept on the archive's file system


@dataclass
class CycleResult:
    rows: int = 0  # value rows written
    held: int = 0  # value rows waiting for the first file
    flush_duration: float = 0.0
    rotated: str | None = None  # reason, when a new file was started
    lost: int = 0  # value rows not written (a full disk)
    disk_full: DiskFull | None = None
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
        self.catalog = Catalog(self.directory, writable=True)
        self.metas: dict[str, AttrMeta] = {}
        self.devices: dict[str, str] = {}  # lower -> name, devices with settings
        self.h5: h5py.File | None = None
        self.path: Path | None = None
        self.seq = 0  # of the newest file made
        self.file_seq = 0  # of the active file
        self.created = 0.0
        self.schema: dict[str, AttrMeta] = {}  # value keys with a group in the active file
        self.schema_devices: set[str] = set()
        self.extra: dict[str, list[tuple[int, AttrMeta]]] = {}  # key -> extra numbers
        self.extra_rows = 0
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
        self.loss: dict | None = None  # rows not written, until it is journalled
        self.growth: collections.deque = collections.deque(maxlen=10)  # bytes per cycle
        self.statvfs = os.statvfs  # (tests replace it)
        self.reserve = reserve  # (tests replace it)
        self._fd: int | None = None  # the active file, for reserving space
        self._reserved_to = 0  # offset up to which space is reserved
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
        self.catalog.prune({p.name for p in files})
        self.catalog.save()
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
        for problem in rec.unsealed:
            self.pending_journal.append({"kind": "unsealed", "time": now, "file": problem})
        return rec

    def close(self, reason: str = "stop") -> None:
        """Write the index and a 'stop' record, then close (the file is sealed).
        On a full disk, what cannot be written is given up (and logged)."""
        with self.lock:
            try:
                with hdf5_errors() as errors:
                    if self.h5 is None and (
                        self.loss is not None
                        or any(
                            e.get("kind") in ("gap", "sealed", "corrupt")
                            for e in self.pending_journal
                        )
                    ):
                        with contextlib.suppress(StoreError, OSError):
                            if self._space(self.clock(), "start") is None:
                                self._rotate("start", self.clock())  # the gap must be on record
                    if self.h5 is not None:
                        now = self.clock()
                        full = self._space(now, None)
                        if full is not None:  # the held rows are given up, the file closed
                            self._lose_held(now, full.describe())
                        if self.loss is not None:
                            self.pending_journal.append({"kind": "lost", "time": now, **self.loss})
                            log.error("closing the archive: %s", self.pending_journal[-1])
                            self.loss = None
                        self._write_held(self.h5)
                        self._close_active({"kind": "stop", "time": self.clock(), "reason": reason})
                if errors:
                    raise StoreError(f"HDF5: {errors[0]}")
            except (StoreError, OSError, RuntimeError, ValueError, KeyError) as exc:
                lost = self._held_rows()
                log.error("closing the archive: %s (%d rows not written)", exc, lost)
                self.held.clear()
                self._abandon(poisoned=True)
            finally:
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
            self._abandon()

    def _abandon(self, poisoned: bool = False) -> None:
        h5, self.h5 = self.h5, None
        self.schema, self.schema_devices = {}, set()
        self.extra, self.extra_rows = {}, 0
        if h5 is not None:
            with hdf5_errors(), contextlib.suppress(Exception):
                h5.close()  # (within the space still reserved)
            if poisoned:
                _POISONED.append(h5)  # never closed again, never collected
        self._release_space()

    def add_meta(self, meta: AttrMeta) -> None:
        old = self.metas.get(meta.key)
        if old is not None and old != meta:
            if old.kind != meta.kind:
                # the attribute changed type (a new server version): its rows go to
                # the extra table until the next file gives it a dataset of its kind
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
        period. ``force``: start the first file now, without waiting for
        attributes. On a full disk nothing is written (``result.lost``,
        ``result.disk_full``); a failed write raises :class:`WriteFailed`."""
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
            if self.h5 is None and reason is None:
                result.held = self._held_rows()
                return result
            full = self._space(now, reason)
            if full is None:
                full = self._write_cycle(now, reason, result)
            if full is not None:
                result.lost = self._lose_held(now, full.describe())
                result.disk_full = full
                return result
        result.flush_duration = time.perf_counter() - t0
        return result

    def _write_cycle(self, now: float, reason: str | None, result: CycleResult) -> DiskFull | None:
        """Rotate if asked, reserve the space, write, flush. A DiskFull when the
        space cannot be reserved (nothing written); WriteFailed when HDF5 fails."""
        attempted = self._held_rows()
        held = dict(self.held)
        saved = (
            dict(self.last_rows),
            {k: dict(v) for k, v in self.last_settings.items()},
            list(self.held_settings),
            list(self.pending_journal),
            self.loss,
        )
        size_before = self.file_size() if reason is None else 0
        failure: BaseException | None = None
        with hdf5_errors() as errors:
            try:
                if reason:
                    self._rotate(reason, now)
                    result.rotated = reason
                if not self._reserve_space():
                    return self._disk_full(0, self._cycle_bytes())
                if self.loss is not None:
                    self.pending_journal.append({"kind": "lost", "time": now, **self.loss})
                    self.loss = None
                result.rows = self._write_held(self.h5)
                self._write_journal(self.h5)
                _grow(self.h5["logger/flushes"], np.asarray([self.clock()], dtype=np.float64))
                self.h5.flush()
            except Exception as exc:  # noqa: BLE001 - h5py raises OSError, RuntimeError, ...
                failure = exc
        if failure is None and errors:
            failure = errors[0]
        if failure is None:
            if reason is None:  # a new file's datasets are counted by _space
                self.growth.append(max(0, self.file_size() - size_before))
            return
        # Nothing of this cycle counts as written: restore what it consumed.
        self.last_rows, self.last_settings, self.held_settings = saved[0], saved[1], saved[2]
        self.pending_journal, self.loss = saved[3], saved[4]
        self.held.clear()
        self._abandon(poisoned=True)
        full = self._disk_full(0, self._cycle_bytes()) if is_disk_full(failure) else None
        cause = full.describe() if full else f"writing the archive failed: {failure}"
        self._note_loss(now, attempted, cause, [r[0] for rows in held.values() for r in rows])
        raise WriteFailed(cause, attempted, full) from failure

    # ------------------------------------------------------- disk space
    def _cycle_bytes(self) -> int:
        """What the next write may add to the file, generously: twice the most a
        recent cycle added, or 32 bytes a row, and 256 KiB for HDF5's metadata."""
        return 2 * max(max(self.growth, default=0), 32 * self._held_rows()) + 256 * 1024

    def _space(self, now: float, reason: str | None) -> DiskFull | None:
        """None when the next write fits on the disk with ``min_free_bytes`` to spare."""
        needed = self.policy.min_free_bytes + self._cycle_bytes()
        if reason:
            needed += FILE_BYTES_PER_ATTRIBUTE * (len(self.metas) + len(self.devices) + 8)
        return self._disk_full(needed, needed)

    def _disk_full(self, needed: int, report: int) -> DiskFull | None:
        """None if ``needed`` bytes are free (0: always a DiskFull, for the report)."""
        try:
            st = self.statvfs(self.directory)
        except OSError:
            return None if needed else DiskFull(self.directory, "?", "?", 0, 0, report)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        if needed and free >= needed:
            return None
        mount, fstype = mount_of(self.directory)
        return DiskFull(self.directory, mount, fstype, free, total, report)

    def disk_status(self) -> DiskFull:
        """The archive's file system now (for a report)."""
        return self._disk_full(0, self._cycle_bytes())

    def _reserve_space(self) -> bool:
        """Reserve what this cycle may write beyond the active file's end, so that
        nothing else can take it between the check and the write (HDF5 cannot
        recover from a write that meets a full disk). False: no room."""
        if self._fd is None:
            return True
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            return True
        end = size + self._cycle_bytes()
        if end <= self._reserved_to:
            return True
        start = max(size, self._reserved_to)
        done = self.reserve(self._fd, start, end - start)
        if done is False:
            return False
        if done:
            self._reserved_to = end
        return True

    def _release_space(self) -> None:
        """Give back what is reserved beyond the file's end, and the descriptor."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._reserved_to > os.fstat(fd).st_size:
                release(fd)
        except OSError as exc:
            log.warning("releasing the space reserved after %s: %s", self.path, exc)
        finally:
            self._reserved_to = 0
            with contextlib.suppress(OSError):
                os.close(fd)

    def _lose_held(self, now: float, cause: str) -> int:
        """The held rows cannot be written: count them, note the interval."""
        n = self._held_rows()
        self._note_loss(now, n, cause, [r[0] for rows in self.held.values() for r in rows])
        self.held.clear()
        self.held_since = None
        return n

    def _note_loss(self, now: float, n: int, cause: str, times: list[float] = ()) -> None:
        if not n and self.loss is None:
            return
        lo = min([now, *times]) if times else now
        hi = max([now, *times]) if times else now
        if self.loss is None:
            self.loss = {"start": lo, "end": hi, "count": n, "cause": cause}
        else:
            self.loss["start"] = min(self.loss["start"], lo)
            self.loss["end"] = max(self.loss["end"], hi)
            self.loss["count"] += n
            self.loss["cause"] = cause

    def _held_rows(self) -> int:
        return sum(len(r) for r in self.held.values())

    # ---------------------------------------------------------- rotation
    def _rotation_reason(self, now: float, force: bool = False) -> str | None:
        if self.h5 is None:
            if self.held or self.held_settings:
                if self.held_since is None:
                    self.held_since = now
                if force or now - self.held_since >= self.policy.schema_delay:
                    return "start"
            waited = now - self.opened_at >= self.policy.schema_delay
            if self.pending_journal and (force or waited):
                return "start"
            return None
        self.held_since = None
        if self.extra_rows >= self.policy.max_extra_rows:
            return "new attributes"
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
            with contextlib.suppress(OSError):
                os.unlink(tmp)
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
            schema: dict[str, AttrMeta] = {}
            for key, meta in sorted(self.metas.items()):
                group = h5.create_group(values_path(key))
                group.attrs.update(meta.as_attrs())
                _create_values(group, meta)
                carried = self.last_rows.get(key)
                group.attrs["carried"] = 1 if carried else 0
                if carried:
                    _append_encoded(group, meta, [carried])
                    index[key] = [carried[0], carried[0], 1, 1, np.inf, -np.inf]
                schema[key] = meta
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
            _create_extra(h5.create_group("extra"))
            BlobLog.create(h5.create_group("extra_settings"))
            h5.swmr_mode = True
            os.replace(tmp, final)
        except BaseException:
            with hdf5_errors(), contextlib.suppress(Exception):
                h5.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.h5 is not None:
            self._close_active({"kind": "rotate", "time": now, "next": name, "reason": reason})
        self._release_space()
        with contextlib.suppress(OSError):
            self._fd = os.open(final, os.O_RDWR | os.O_CLOEXEC)
        self.h5, self.path, self.created, self.file_seq = h5, final, now, self.seq
        self.schema, self.schema_devices = schema, devices
        self.extra, self.extra_rows = {}, 0
        self.index, self.settings_index = index, settings_index
        self.journal_entries = []
        self.held_since = None
        log.info("archive file %s started (%s)", name, reason)

    def _close_active(self, record: dict) -> None:
        h5, path = self.h5, self.path
        self.h5 = None
        try:
            self.pending_journal.append(
                {"kind": "index", "time": record["time"], **self.index_record()}
            )
            self.pending_journal.append(record)
            self._write_journal(h5)
            _grow(h5["logger/flushes"], np.asarray([self.clock()], dtype=np.float64))
            h5.flush()
            info = self.file_info(live=False)
            info.end = float(h5["logger/flushes"][-1])
        finally:
            h5.close()
            self._release_space()
        with contextlib.suppress(OSError):
            self.catalog.put(info, file_stamp(path))
            self.catalog.save()

    def index_record(self) -> dict:
        return {
            "values": {k: _index_json(v) for k, v in self.index.items()},
            "settings": {k: _index_json(v) for k, v in self.settings_index.items()},
        }

    def file_info(self, live: bool = True) -> FileInfo:
        """What the active file holds (for queries, and the catalog when it closes)."""
        metas = dict(self.schema)
        for key, numbers in self.extra.items():
            metas[key] = numbers[-1][1]
        return FileInfo(
            path=self.path,
            seq=self.file_seq,
            created=self.created,
            end=time.time() if live else None,
            live=live,
            values={k: _index_json(v) if not live else list(v) for k, v in self.index.items()},
            settings={
                k: _index_json(v) if not live else list(v) for k, v in self.settings_index.items()
            },
            journal=list(self.journal_entries) if live else catalog_journal(self.journal_entries),
            metas=metas,
            extra={k: list(v) for k, v in self.extra.items()},
        )

    # ------------------------------------------------------------ writing
    def _write_held(self, h5: h5py.File) -> int:
        written = 0
        keys = list(self.held)
        hook_at = len(keys) // 2 if self.mid_write_hook else -1
        extra_rows: list[tuple[int, AttrMeta, list]] = []
        for i, key in enumerate(keys):
            if i == hook_at:
                self.mid_write_hook()
            rows = self.held.pop(key)
            meta = self.metas[key]
            encoded = self._encode(meta, rows)
            own = self.schema.get(key)
            if own is not None and own.kind == meta.kind:
                _append_encoded(h5[values_path(key)], meta, encoded)
            else:
                extra_rows.append((self._extra_number(h5, key, meta), meta, encoded))
            self.last_rows[key] = encoded[-1]
            _update_index(self.index, key, [r[0] for r in encoded])
            written += len(rows)
        if extra_rows:
            self.extra_rows += _append_extra(h5["extra"], extra_rows)
        by_dev: dict[str, list[tuple[float, bytes, dict]]] = {}
        late: dict[str, list[tuple[float, bytes, dict]]] = {}  # devices newer than the file
        late_payloads: list[tuple[float, bytes]] = []
        for dev, t, record in self.held_settings:
            low = dev.lower()
            item = (t, encode_json(record), record)
            if low in self.schema_devices:
                by_dev.setdefault(low, []).append(item)
            else:
                late.setdefault(low, []).append(item)
                late_payloads.append((t, encode_json({"device": low, **record})))
        self.held_settings = []
        for low, items in by_dev.items():
            BlobLog.append(
                h5[settings_path(low)], [t for t, _, _ in items], [p for _, p, _ in items]
            )
        if late_payloads:
            BlobLog.append(
                h5["extra_settings"], [t for t, _ in late_payloads], [p for _, p in late_payloads]
            )
        for low, items in (*by_dev.items(), *late.items()):
            last = self.last_settings.setdefault(low, {})
            for t, payload, record in items:
                last[_settings_slot(record)] = (t, payload)
            _update_index(self.settings_index, low, [t for t, _, _ in items])
        return written

    def _extra_number(self, h5: h5py.File, key: str, meta: AttrMeta) -> int:
        """The number of ``key`` in the extra table (made, and journalled before
        any row, the first time; again when the attribute changed kind)."""
        numbers = self.extra.get(key)
        if numbers and numbers[-1][1].kind == meta.kind:
            return numbers[-1][0]
        number = sum(len(v) for v in self.extra.values())
        self.extra.setdefault(key, []).append((number, meta))
        self.pending_journal.append(
            {
                "kind": "extra",
                "time": self.clock(),
                "attribute": key,
                "id": number,
                "meta": _meta_list(meta),
            }
        )
        self._write_journal(h5)
        return number

    def _encode(self, meta: AttrMeta, rows: list[Row]) -> list[tuple[float, Any, int]]:
        if meta.kind != JSON:
            out = []
            for t, v, q in rows:
                try:
                    out.append((t, scalar_code(meta.kind, v), q))
                except (TypeError, ValueError, OverflowError):
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
        entries = self.pending_journal
        BlobLog.append(
            h5["logger/journal"],
            [float(e.get("time", 0.0)) for e in entries],
            [json.dumps(e, default=str).encode() for e in entries],
        )
        self.pending_journal = []
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
    return [None if v is None or not np.isfinite(v) else v for v in entry]


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


# ------------------------------------------------------------ the extra table
EXTRA_DTYPES = {"key": "i4", "time": "f8", "quality": "i1", "num": "f8", "int": "i8", "end": "i8"}


def _create_extra(group: h5py.Group) -> None:
    for name, dtype in EXTRA_DTYPES.items():
        group.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(EXTRA_CHUNK,))
    group.create_dataset("blob", (0,), maxshape=(None,), dtype="u1", chunks=(BLOB_CHUNK,))


def _append_extra(group: h5py.Group, batches: list[tuple[int, AttrMeta, list]]) -> int:
    """Rows of several attributes: numbers go to ``num`` (float) or ``int``,
    JSON payloads to ``blob`` (``end`` is every row's end offset). Values
    first, ``time`` last, as for an attribute's own group."""
    keys, times, quals, nums, ints, payloads = [], [], [], [], [], []
    for number, meta, rows in batches:
        kind = meta.kind
        for t, v, q in rows:
            keys.append(number)
            times.append(t)
            quals.append(q)
            if kind == JSON:
                nums.append(np.nan)
                ints.append(0)
                payloads.append(v)
            elif kind == "float":
                nums.append(v)
                ints.append(0)
                payloads.append(b"")
            else:
                nums.append(np.nan)
                ints.append(v)
                payloads.append(b"")
    end = group["end"]
    start = int(end[-1]) if end.shape[0] else 0
    _grow(group["blob"], np.frombuffer(b"".join(payloads), dtype=np.uint8))
    _grow(end, start + np.cumsum([len(p) for p in payloads], dtype=np.int64))
    _grow(group["num"], np.asarray(nums, dtype=np.float64))
    _grow(group["int"], np.asarray(ints, dtype=np.int64))
    _grow(group["quality"], np.asarray(quals, dtype=np.int8))
    _grow(group["key"], np.asarray(keys, dtype=np.int32))
    _grow(group["time"], np.asarray(times, dtype=np.float64))
    return len(keys)


def extra_rowcount(group: h5py.Group) -> int:
    return min(group[name].shape[0] for name in EXTRA_COLUMNS)
