"""Queries over the archive files (no tango): history of an attribute, the
configuration of a device at a time, gaps, the list of archived attributes.

Used by the DataLogger device (which hands it its live writer, so the active
file is read through the writer's own handle) and offline by ``beamline
history --dir`` on a copy of the files or while the logger is down. Every
file is opened as a SWMR reader, so it reads files being written by another
process and files left by a crash, sealed or not.

Each file has an index (per attribute: first and last time, rows, carried
rows, first and last time without the carried rows): written into its
journal when the file is closed, computed once and cached otherwise; it lets
a query open only the files that hold rows in its range. The logger keeps
every closed file's index in the directory's catalog (``index.json``,
:class:`~tango_devices.logger.store.Catalog`), so even the first query after
a restart opens only the files it needs.

The commands' arguments are checked here too (:func:`history_args`,
:func:`configuration_args`, :func:`list_pattern`): bounded, refused with the
field named (:class:`~tango_devices.common.jsonargs.ArgumentError`).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tango_devices.common import jsonargs
from tango_devices.common.jsonargs import ArgumentError
from tango_devices.logger import configuration
from tango_devices.logger.decimate import decimate
from tango_devices.logger.model import (
    JSON,
    KINDS,
    MAX_TIME_TEXT,
    NO_VALUE,
    QUALITY_NAMES,
    AttrMeta,
    attr_key,
    decode_scalar,
    iso,
    parse_time,
    split_key,
)
from tango_devices.logger.seal import is_sealed
from tango_devices.logger.selection import Glob
from tango_devices.logger.store import (
    FILE_RE,
    ArchiveWriter,
    BlobLog,
    Catalog,
    FileInfo,
    catalog_journal,
    extra_rowcount,
    file_stamp,
    last_flush,
    list_files,
    open_for_read,
    read_journal,
    settings_path,
    values_path,
)

FIRST, LAST, ROWS, CARRIED, HFIRST, HLAST = range(6)
BLOB_READ_LIMIT = 16 * 1024 * 1024


class QueryError(ValueError):
    """A query the archive cannot answer as asked (bad name, bad range)."""


# ------------------------------------------------------------- arguments
MAX_NAME = 256  # characters of an attribute or device name
MAX_PATTERN = 256  # characters of a ListArchived pattern
MAX_ARGUMENT = 64 * 1024  # characters of a query's JSON text
_TIME = {"type": ["number", "string"], "minLength": 1, "maxLength": MAX_TIME_TEXT}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}


def history_schema(max_points: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "attribute": _NAME,
            "name": _NAME,
            "start": _TIME,
            "end": _TIME,
            "max_points": {"type": "integer", "minimum": 0, "maximum": max_points},
        },
        "additionalProperties": False,
    }


CONFIGURATION_SCHEMA = {
    "type": "object",
    "properties": {"device": _NAME, "name": _NAME, "time": _TIME},
    "additionalProperties": False,
}


def _object_or_name(text: Any, what: str, field: str) -> dict:
    """A JSON object, or (text that does not look like JSON) just a name."""
    if not isinstance(text, str):
        raise ArgumentError(f"{what}: takes JSON text or a name, not {type(text).__name__}")
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"'):
        return jsonargs.loads(stripped, what, max_bytes=MAX_ARGUMENT)
    if len(stripped) > MAX_NAME:
        raise ArgumentError(
            f"{what}: {field}: a name of {len(stripped):,} characters; at most {MAX_NAME} are taken"
        )
    return {field: stripped} if stripped else {}


def _check(args: Any, schema: dict, what: str) -> dict:
    """The schema check, after saying plainly which text is too long (the
    schema's own message quotes the whole text, cut short)."""
    if isinstance(args, dict):
        for field, spec in schema["properties"].items():
            value = args.get(field)
            limit = spec.get("maxLength")
            if isinstance(value, str) and limit is not None and len(value) > limit:
                raise ArgumentError(
                    f"{what}: {field}: {len(value):,} characters; at most {limit} are taken"
                )
    return jsonargs.check(args, schema, what)


def _time_arg(args: dict, field: str, default: Any, now: float, what: str) -> float:
    try:
        return parse_time(args.get(field, default), now)
    except ValueError as exc:
        raise ArgumentError(f"{what}: {field}: {exc}") from None


def history_args(text: Any, max_points: int, now: float) -> tuple[str, float, float, int]:
    """GetHistory's argument -> (attribute, start, end, max_points): JSON
    ``{"attribute", "start", "end", "max_points"}`` or just the attribute's
    name; defaults: the last hour, 1,000 points (0: ``max_points``, the most
    the logger returns). ArgumentError names the field."""
    what = "GetHistory"
    args = _check(_object_or_name(text, what, "attribute"), history_schema(max_points), what)
    name = args.get("attribute") or args.get("name")
    if not name:
        raise ArgumentError(
            f'{what}: attribute: say which attribute: {{"attribute": "domain/family/member/attr"}}'
        )
    try:
        split_key(name)
    except ValueError as exc:
        raise ArgumentError(f"{what}: attribute: {exc}") from None
    end = _time_arg(args, "end", "now", now, what)
    start = _time_arg(args, "start", max(end - 3600.0, 0.0), now, what)
    if end < start:
        raise ArgumentError(f"{what}: end ({iso(end)}) is before start ({iso(start)})")
    wanted = int(args.get("max_points", 1000))
    return name, start, end, max_points if wanted == 0 else wanted


def configuration_args(text: Any, now: float) -> tuple[str, float]:
    """GetConfigurationAt's argument -> (device, time): JSON ``{"device",
    "time"}`` or just the device's name; default time: now."""
    what = "GetConfigurationAt"
    args = _check(_object_or_name(text, what, "device"), CONFIGURATION_SCHEMA, what)
    device = args.get("device") or args.get("name")
    if not device:
        raise ArgumentError(
            f'{what}: device: say which device: {{"device": "domain/family/member"}}'
        )
    parts = device.strip().strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise ArgumentError(
            f"{what}: device: {device!r} is not a device name (domain/family/member)"
        )
    return device, _time_arg(args, "time", "now", now, what)


def list_pattern(pattern: Any) -> str:
    """ListArchived's pattern, bounded (empty: every attribute)."""
    if not isinstance(pattern, str):
        raise ArgumentError(f"ListArchived: takes a pattern (text), not {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN:
        raise ArgumentError(
            f"ListArchived: the pattern is {len(pattern):,} characters; at most {MAX_PATTERN} "
            "are taken (domain/family/member/attribute with * ? [...])"
        )
    return pattern.strip() or "*"


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _rowcount(group: h5py.Group) -> int:
    names = ["time", "quality", "end" if "end" in group else "value"]
    return min(group[n].shape[0] for n in names if n in group)


def _walk_values(h5: h5py.File) -> Iterator[h5py.Group]:
    if "values" not in h5:
        return
    for dom in h5["values"].values():
        for fam in dom.values():
            for member in fam.values():
                yield from member.values()


def _walk_settings(h5: h5py.File) -> Iterator[h5py.Group]:
    if "settings" not in h5:
        return
    for dom in h5["settings"].values():
        for fam in dom.values():
            yield from fam.values()


def _index_of(times: np.ndarray, carried: int) -> list:
    if len(times) == 0:
        return [None, None, 0, carried, None, None]
    hist = times[carried:]
    return [
        float(times.min()),
        float(times.max()),
        len(times),
        carried,
        float(hist.min()) if len(hist) else None,
        float(hist.max()) if len(hist) else None,
    ]


def load_info(path: Path) -> FileInfo:
    """Read a file's attributes, journal and index (computing the index if the
    file was never closed)."""
    seq = int(FILE_RE.match(path.name).group(1))
    with open_for_read(path) as h5:
        journal = read_journal(h5)
        info = FileInfo(
            path=path,
            seq=seq,
            created=float(h5.attrs.get("created", 0.0)),
            end=last_flush(h5),
            live=False,
            journal=catalog_journal(journal),
        )
        for j in journal:
            if j.get("kind") == "extra":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    device, attribute, kind, tango_type, data_format, labels, unit = j["meta"]
                    meta = AttrMeta(
                        device, attribute, kind, tango_type, data_format, tuple(labels), unit
                    )
                    info.extra.setdefault(str(j["attribute"]), []).append((int(j["id"]), meta))
        index = next((j for j in reversed(journal) if j.get("kind") == "index"), None)
        for group in _walk_values(h5):
            meta = AttrMeta.from_attrs(group.attrs)
            info.metas[meta.key] = meta
            if index is None:
                n = _rowcount(group)
                info.values[meta.key] = _index_of(
                    group["time"][:n], int(group.attrs.get("carried", 0))
                )
        for key, numbers in info.extra.items():
            info.metas[key] = numbers[-1][1]
        if index is not None:
            info.values = {k: list(v) for k, v in index.get("values", {}).items()}
            info.settings = {k: list(v) for k, v in index.get("settings", {}).items()}
        else:
            if info.extra and "extra" in h5:
                _index_extra(h5["extra"], info)
            for group in _walk_settings(h5):
                n = min(group["time"].shape[0], group["end"].shape[0])
                info.settings[str(group.attrs["device"]).lower()] = _index_of(
                    group["time"][:n], int(group.attrs.get("carried", 0))
                )
            if "extra_settings" in h5:
                late: dict[str, list[float]] = {}
                for t, payload in BlobLog.read(h5["extra_settings"]):
                    with contextlib.suppress(ValueError, AttributeError):
                        late.setdefault(str(json.loads(payload).get("device")), []).append(t)
                for low, times in late.items():
                    _merge_index(info.settings, low, np.asarray(times))
    return info


def _index_extra(group: h5py.Group, info: FileInfo) -> None:
    n = extra_rowcount(group)
    if n == 0:
        return
    keys = group["key"][:n]
    times = group["time"][:n]
    for key, numbers in info.extra.items():
        mask = np.isin(keys, [number for number, _meta in numbers])
        if mask.any():
            _merge_index(info.values, key, times[mask])


def _merge_index(index: dict[str, list], key: str, times: np.ndarray) -> None:
    lo, hi = float(times.min()), float(times.max())
    entry = index.get(key)
    if entry is None:
        index[key] = [lo, hi, len(times), 0, lo, hi]
        return
    entry[0] = lo if entry[0] is None else min(entry[0], lo)
    entry[1] = hi if entry[1] is None else max(entry[1], hi)
    entry[2] += len(times)
    entry[4] = lo if entry[4] is None else min(entry[4], lo)
    entry[5] = hi if entry[5] is None else max(entry[5], hi)


class ArchiveReader:
    def __init__(self, directory: str | Path, live: ArchiveWriter | None = None) -> None:
        self.directory = Path(directory)
        self.live = live
        # the logger's reader records what it learns in the catalog; others only read it
        self.catalog = live.catalog if live is not None else Catalog(self.directory)
        self._cache: dict[Path, tuple[tuple[int, int], FileInfo]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ files
    def files(self) -> list[FileInfo]:
        """Every file's :class:`FileInfo`, oldest first: the active file's from the
        writer, a closed file's from memory or the catalog while its stamp
        matches, else read from the file (and, for the logger, catalogued)."""
        infos = []
        live_path = None
        if self.live is not None:
            with self.live.lock:
                if self.live.h5 is not None:
                    live_path = self.live.path
                    live_info = self.live.file_info(live=True)
        learned = False
        for path in list_files(self.directory):
            if path == live_path:
                infos.append(live_info)
                continue
            try:
                stamp = file_stamp(path)
            except OSError:
                continue
            cached = self._cache.get(path)
            if cached and cached[0] == stamp:
                infos.append(cached[1])
                continue
            info = self.catalog.get(path, stamp)
            if info is None:
                try:
                    info = load_info(path)
                except (OSError, KeyError, ValueError):
                    continue  # being sealed or renamed right now; next query sees it
                sealed = False
                with contextlib.suppress(OSError, ValueError):
                    sealed = is_sealed(path) and file_stamp(path) == stamp
                if not sealed:
                    infos.append(info)
                    continue
                self.catalog.put(info, stamp)
                learned = True
            with self._lock:
                self._cache[path] = (stamp, info)
            infos.append(info)
        if learned:
            self.catalog.save()
        return infos

    @contextlib.contextmanager
    def _open(self, info: FileInfo) -> Iterator[h5py.File]:
        if info.live and self.live is not None:
            with self.live.lock:
                if self.live.h5 is not None and self.live.path == info.path:
                    yield self.live.h5
                    return
        with open_for_read(info.path) as h5:
            yield h5

    # ---------------------------------------------------------- history
    def history(
        self, name: str, start: float, end: float, max_points: int = 1000
    ) -> dict[str, Any]:
        """Times, values and qualities of ``name`` (domain/family/member/attribute)
        between ``start`` and ``end``, decimated to ``max_points`` (0: all)."""
        device, attribute = split_key(name)
        if end < start:
            raise QueryError(f"end ({iso(end)}) is before start ({iso(start)})")
        key = attr_key(device, attribute)
        infos = self.files()
        meta: AttrMeta | None = None
        times_parts, qual_parts, value_parts, part_metas = [], [], [], []
        for info in infos:
            entry = info.values.get(key)
            meta = info.metas.get(key, meta)
            if not entry or entry[ROWS] - entry[CARRIED] <= 0:
                continue
            hfirst, hlast = _num(entry[HFIRST]), _num(entry[HLAST])
            if hfirst is None or hlast < start or hfirst > end:
                continue
            with self._open(info) as h5:
                parts = _group_rows(h5, key, start, end)
                parts += _extra_rows(h5, info.extra.get(key), start, end)
            for t, q, v, part_meta in parts:  # the file's own dataset, then its extra rows
                meta = part_meta
                times_parts.append(t)
                qual_parts.append(q)
                value_parts.append(v)
                part_metas.append(part_meta)
        if meta is None:
            raise QueryError(f"{device}/{attribute} is not archived")
        # an attribute that changed kind (a new server version): each row as its part stored it
        mixed = len({m.kind for m in part_metas}) > 1
        if times_parts:
            times = np.concatenate(times_parts)
            quals = np.concatenate(qual_parts).astype(np.int64)
            if mixed or len({p.dtype for p in value_parts}) > 1:
                value_parts = [p.astype(object) for p in value_parts]
            values = np.concatenate(value_parts)
            part_of = np.concatenate([np.full(len(t), i) for i, t in enumerate(times_parts)])
        else:
            times, quals, values = np.zeros(0), np.zeros(0, np.int64), np.zeros(0)
            part_of = np.zeros(0, np.int64)
        if len(times) > 1 and np.any(np.diff(times) < 0):
            order = np.argsort(times, kind="stable")
            times, quals, values = times[order], quals[order], values[order]
            part_of = part_of[order]
        count = len(times)
        numeric = meta.kind in ("float", "int", "bool") and not mixed
        series = None
        if numeric:
            series = values.astype(np.float64)
            series[np.isin(quals, NO_VALUE)] = np.nan
        picks, method = decimate(count, series, max_points)
        if mixed:
            out_values = [
                _decode(part_metas[i], v, q)
                for v, q, i in zip(
                    values[picks], quals[picks].tolist(), part_of[picks].tolist(), strict=True
                )
            ]
        else:
            out_values = _decode_many(meta, values[picks], quals[picks])
        return {
            "attribute": f"{meta.device}/{meta.attribute}",
            "kind": meta.kind,
            "unit": meta.unit,
            "start": start,
            "end": end,
            "count": count,
            "returned": len(picks),
            "decimated": method != "none",
            "method": method,
            "times": times[picks].tolist(),
            "values": out_values,
            "qualities": [
                QUALITY_NAMES[q] if 0 <= q < 6 else str(q) for q in quals[picks].tolist()
            ],
            "gaps": self._gaps(infos, start, end),
            "errors": [
                {k: j.get(k) for k in ("time", "reason", "desc")}
                for info in infos
                for j in info.journal
                if j.get("kind") == "error"
                and j.get("attribute") == key
                and start <= float(j.get("time", 0)) <= end
            ],
        }

    # --------------------------------------------------- configuration
    def configuration_at(self, device: str, t: float) -> dict[str, Any]:
        """Every attribute value and setting of ``device`` as of ``t``."""
        device = device.strip().strip("/")
        low = device.lower()
        if len(low.split("/")) != 3:
            raise QueryError(f"{device!r} is not a device name (domain/family/member)")
        prefix = low + "/"
        infos = self.files()
        needed = {
            k
            for info in infos
            for k, e in info.values.items()
            if k.startswith(prefix) and _num(e[FIRST]) is not None and _num(e[FIRST]) <= t
        }
        known = any(k.startswith(prefix) for info in infos for k in info.values) or any(
            low in info.settings for info in infos
        )
        if not known:
            raise QueryError(f"{device} is not archived")
        values: dict[str, dict] = {}
        configs: dict[str, dict] = {}
        properties: dict | None = None
        resolved: set[str] = set()
        for info in reversed(infos):
            todo = [
                k
                for k in needed - resolved
                if k in info.values
                and _num(info.values[k][FIRST]) is not None
                and _num(info.values[k][FIRST]) <= t
            ]
            sentry = info.settings.get(low)
            want_settings = (
                sentry is not None and _num(sentry[FIRST]) is not None and _num(sentry[FIRST]) <= t
            )
            if not todo and not want_settings:
                continue
            with self._open(info) as h5:
                for key in todo:
                    row, name = None, None
                    if values_path(key) in h5:
                        group = h5[values_path(key)]
                        meta = AttrMeta.from_attrs(group.attrs)
                        row, name = _last_row_at(group, meta, t), meta.attribute
                    late = _last_extra_row_at(h5, info.extra.get(key), t)
                    if late is not None and (row is None or late[0]["time"] >= row["time"]):
                        row, name = late
                    if row is not None:
                        values[name] = row
                        resolved.add(key)
                if want_settings:
                    records = []
                    if settings_path(low) in h5:
                        records = BlobLog.read(h5[settings_path(low)])
                    if "extra_settings" in h5:
                        records += _late_settings(h5["extra_settings"], low)
                    file_configs, file_props = settings_at(records, t)
                    have = {k.lower() for k in configs}
                    for attr, cfg in file_configs.items():
                        if attr.lower() not in have:
                            configs[attr] = cfg
                    if properties is None:
                        properties = file_props
            if needed <= resolved and properties is not None:
                break
        gap = next(
            (g for g in self._gaps(infos, t, t) if g["start"] <= t <= g["end"]),
            None,
        )
        return configuration.assemble(device, t, values, configs, properties, gap)

    # ------------------------------------------------------------- misc
    def gaps(self, start: float, end: float) -> list[dict]:
        return self._gaps(self.files(), start, end)

    @staticmethod
    def _gaps(infos: list[FileInfo], start: float, end: float) -> list[dict]:
        out = []
        for info in infos:
            for j in info.journal:
                kind = j.get("kind")
                if kind not in ("gap", "dropped", "lost"):
                    continue
                gs, ge = float(j.get("start", 0)), float(j.get("end", 0))
                if ge < start or gs > end:
                    continue
                cause = j.get("cause", "")
                if kind == "dropped":
                    cause = f"{j.get('count', '?')} events dropped: {cause}".rstrip(": ")
                elif kind == "lost":
                    cause = f"{j.get('count', '?')} rows not written: {cause}".rstrip(": ")
                gap = {"start": gs, "end": ge, "cause": cause}
                if gap not in out:  # a record written again after a failed write
                    out.append(gap)
        return sorted(out, key=lambda g: g["start"])

    def list_attributes(self, pattern: str = "*") -> list[dict]:
        """Archived attributes matching a shell pattern on the full name."""
        glob = Glob(list_pattern(pattern).lower())
        found: dict[str, dict] = {}
        for info in self.files():
            for key, entry in info.values.items():
                meta = info.metas.get(key)
                if meta is None or not glob.match(key):
                    continue
                item = found.setdefault(
                    key,
                    {
                        "attribute": f"{meta.device}/{meta.attribute}",
                        "kind": meta.kind,
                        "unit": meta.unit,
                        "first": None,
                        "last": None,
                        "rows": 0,
                    },
                )
                first, last = _num(entry[HFIRST]), _num(entry[HLAST])
                if first is not None:
                    item["first"] = first if item["first"] is None else min(item["first"], first)
                    item["last"] = last if item["last"] is None else max(item["last"], last)
                item["rows"] += int(entry[ROWS]) - int(entry[CARRIED])
        return [found[k] for k in sorted(found)]

    def summary(self) -> list[dict]:
        """One line per file: name, created, last flush, sealed, size."""
        out = []
        for info in self.files():
            try:
                size = info.path.stat().st_size
                sealed = is_sealed(info.path)
            except (OSError, ValueError):
                size, sealed = 0, False
            out.append(
                {
                    "file": info.path.name,
                    "created": info.created,
                    "last_flush": info.end,
                    "active": info.live,
                    "sealed": sealed,
                    "size": size,
                    "attributes": len(info.values),
                }
            )
        return out


# ------------------------------------------------------------- row access
Part = tuple[np.ndarray, np.ndarray, np.ndarray, AttrMeta]  # times, qualities, values, meta


def _group_rows(h5: h5py.File, key: str, start: float, end: float) -> list[Part]:
    """Rows of ``key`` in its own group (carried rows excluded) in [start, end]."""
    if values_path(key) not in h5:
        return []
    group = h5[values_path(key)]
    meta = AttrMeta.from_attrs(group.attrs)
    carried = int(group.attrs.get("carried", 0))
    n = _rowcount(group)
    t = group["time"][carried:n]
    idx = np.flatnonzero((t >= start) & (t <= end))
    if len(idx) == 0:
        return []
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    sel = slice(None) if hi - lo == len(idx) else idx - lo  # usually contiguous
    return [
        (
            t[lo:hi][sel],
            group["quality"][carried + lo : carried + hi][sel],
            _read_values(group, meta, carried + lo, carried + hi)[sel],
            meta,
        )
    ]


def _extra_rows(
    h5: h5py.File, numbers: list[tuple[int, AttrMeta]] | None, start: float, end: float
) -> list[Part]:
    """Rows in the file's extra table under ``numbers`` in [start, end]."""
    if not numbers or "extra" not in h5:
        return []
    group = h5["extra"]
    n = extra_rowcount(group)
    if n == 0:
        return []
    keys = group["key"][:n]
    times = group["time"][:n]
    parts = []
    for number, meta in numbers:
        idx = np.flatnonzero((keys == number) & (times >= start) & (times <= end))
        if len(idx) == 0:
            continue
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        sel = idx - lo
        quals = group["quality"][lo:hi][sel]
        parts.append((times[idx], quals, _read_extra_values(group, meta, lo, hi)[sel], meta))
    return parts


def _read_extra_values(group: h5py.Group, meta: AttrMeta, lo: int, hi: int) -> np.ndarray:
    """Stored values of extra rows lo..hi as their kind stores them."""
    if meta.kind == "float":
        return group["num"][lo:hi]
    if meta.kind != JSON:
        return group["int"][lo:hi].astype(KINDS[meta.kind][0])
    return _read_values(group, meta, lo, hi)


def _last_extra_row_at(
    h5: h5py.File, numbers: list[tuple[int, AttrMeta]] | None, t: float
) -> tuple[dict, str] | None:
    """The last extra row under ``numbers`` at or before ``t``, and its attribute name."""
    best = None
    for times, quals, values, meta in _extra_rows(h5, numbers, -np.inf, t):
        i = len(times) - 1 - int(np.argmax(times[::-1]))  # the last of the latest time
        if best is None or times[i] >= best[0]:
            best = (float(times[i]), int(quals[i]), values[i], meta)
    if best is None:
        return None
    time_, quality, stored, meta = best
    return (
        {
            "value": _decode(meta, stored, quality),
            "quality": QUALITY_NAMES[quality] if 0 <= quality < 6 else str(quality),
            "time": time_,
        },
        meta.attribute,
    )


def _late_settings(group: h5py.Group, device: str) -> list[tuple[float, bytes]]:
    """The settings records of ``device`` in a file's ``extra_settings``."""
    out = []
    for t, payload in BlobLog.read(group):
        try:
            record = json.loads(payload)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("device") == device:
            out.append((t, payload))
    return out


def _read_values(group: h5py.Group, meta: AttrMeta, lo: int, hi: int) -> np.ndarray:
    """Stored values of rows lo..hi: numbers, or JSON payloads (object array)."""
    if meta.kind != JSON:
        return group["value"][lo:hi]
    ends = group["end"][max(lo - 1, 0) : hi]
    start = int(ends[0]) if lo > 0 else 0
    ends = ends[1:] if lo > 0 else ends
    starts = np.concatenate(([start], ends[:-1])).astype(np.int64)
    out = np.empty(hi - lo, dtype=object)
    total = int(ends[-1]) - start if len(ends) else 0
    if total <= BLOB_READ_LIMIT:
        blob = group["blob"][start : start + total].tobytes()
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            out[i] = blob[int(s) - start : int(e) - start]
    else:
        blob_ds = group["blob"]
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            out[i] = blob_ds[int(s) : int(e)].tobytes()
    return out


def _decode_many(meta: AttrMeta, stored: np.ndarray, quals: np.ndarray) -> list:
    """Stored values of several rows as a client sees them (vectorised for numbers)."""
    missing = np.isin(quals, NO_VALUE)
    if meta.kind == "float":
        numbers = stored.astype(np.float64)
        numbers[missing | ~np.isfinite(numbers)] = np.nan
        return [None if v != v else v for v in numbers.tolist()]
    if meta.kind in ("int", "bool"):
        plain = stored.astype(bool if meta.kind == "bool" else np.int64).tolist()
        return [None if m else v for v, m in zip(plain, missing.tolist(), strict=True)]
    return [_decode(meta, v, int(q)) for v, q in zip(stored, quals.tolist(), strict=True)]


def _decode(meta: AttrMeta, stored: Any, quality: int) -> Any:
    if meta.kind != JSON:
        return decode_scalar(meta, stored, quality)
    if quality in NO_VALUE or not stored:
        return None
    try:
        return json.loads(stored)
    except ValueError:
        return None


def _last_row_at(group: h5py.Group, meta: AttrMeta, t: float) -> dict | None:
    n = _rowcount(group)
    if n == 0:
        return None
    times = group["time"][:n]
    ok = np.flatnonzero(times <= t)
    if len(ok) == 0:
        return None
    best = times[ok].max()
    i = int(ok[times[ok] == best][-1])
    quality = int(group["quality"][i])
    stored = _read_values(group, meta, i, i + 1)[0]
    return {
        "value": _decode(meta, stored, quality),
        "quality": QUALITY_NAMES[quality] if 0 <= quality < 6 else str(quality),
        "time": float(times[i]),
    }


def settings_at(records: list[tuple[float, bytes]], t: float) -> tuple[dict, dict | None]:
    """From one settings log: the last config record of each attribute and the
    last properties record at or before ``t``."""
    configs: dict[str, dict] = {}
    properties = None
    for rt, payload in sorted(records, key=lambda r: r[0]):
        if rt > t:
            break
        try:
            rec = json.loads(payload)
        except ValueError:
            continue
        if rec.get("kind") == "config" and rec.get("attribute"):
            configs[str(rec["attribute"])] = {"time": rt, "config": rec.get("config")}
        elif rec.get("kind") == "properties":
            properties = {
                "time": rt,
                "properties": rec.get("properties", {}),
                "attribute_properties": rec.get("attribute_properties", {}),
            }
    return configs, properties
