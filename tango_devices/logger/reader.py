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
a query open only the files that hold rows in its range.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tango_devices.logger import configuration
from tango_devices.logger.decimate import decimate
from tango_devices.logger.model import (
    JSON,
    NO_VALUE,
    QUALITY_NAMES,
    AttrMeta,
    attr_key,
    decode_scalar,
    iso,
    split_key,
)
from tango_devices.logger.seal import is_sealed
from tango_devices.logger.store import (
    FILE_RE,
    ArchiveWriter,
    BlobLog,
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


@dataclass
class FileInfo:
    path: Path
    seq: int
    created: float
    end: float | None
    live: bool
    values: dict[str, list] = field(default_factory=dict)
    settings: dict[str, list] = field(default_factory=dict)
    journal: list[dict] = field(default_factory=list)
    metas: dict[str, AttrMeta] = field(default_factory=dict)


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
            journal=journal,
        )
        index = next((j for j in reversed(journal) if j.get("kind") == "index"), None)
        for group in _walk_values(h5):
            meta = AttrMeta.from_attrs(group.attrs)
            info.metas[meta.key] = meta
            if index is None:
                n = _rowcount(group)
                info.values[meta.key] = _index_of(
                    group["time"][:n], int(group.attrs.get("carried", 0))
                )
        if index is not None:
            info.values = {k: list(v) for k, v in index.get("values", {}).items()}
            info.settings = {k: list(v) for k, v in index.get("settings", {}).items()}
        else:
            for group in _walk_settings(h5):
                n = min(group["time"].shape[0], group["end"].shape[0])
                info.settings[str(group.attrs["device"]).lower()] = _index_of(
                    group["time"][:n], int(group.attrs.get("carried", 0))
                )
    return info


class ArchiveReader:
    def __init__(self, directory: str | Path, live: ArchiveWriter | None = None) -> None:
        self.directory = Path(directory)
        self.live = live
        self._cache: dict[Path, tuple[tuple[int, int], FileInfo]] = {}

    # ------------------------------------------------------------ files
    def files(self) -> list[FileInfo]:
        infos = []
        live_path = None
        if self.live is not None:
            with self.live.lock:
                if self.live.h5 is not None:
                    live_path = self.live.path
                    live_info = self._live_info()
        for path in list_files(self.directory):
            if path == live_path:
                infos.append(live_info)
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            cached = self._cache.get(path)
            if cached and cached[0] == stamp:
                infos.append(cached[1])
                continue
            try:
                info = load_info(path)
            except (OSError, KeyError, ValueError):
                continue  # being sealed or renamed right now; next query sees it
            with contextlib.suppress(OSError, ValueError):
                if is_sealed(path):
                    self._cache[path] = (stamp, info)
            infos.append(info)
        return infos

    def _live_info(self) -> FileInfo:
        w = self.live
        return FileInfo(
            path=w.path,
            seq=w.seq,
            created=w.created,
            end=time.time(),
            live=True,
            values={k: list(v) for k, v in w.index.items()},
            settings={k: list(v) for k, v in w.settings_index.items()},
            journal=list(w.journal_entries),
            metas={k: w.metas[k] for k in w.schema if k in w.metas},
        )

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
        times_parts, qual_parts, value_parts = [], [], []
        for info in infos:
            entry = info.values.get(key)
            meta = info.metas.get(key, meta)
            if not entry or entry[ROWS] - entry[CARRIED] <= 0:
                continue
            hfirst, hlast = _num(entry[HFIRST]), _num(entry[HLAST])
            if hfirst is None or hlast < start or hfirst > end:
                continue
            with self._open(info) as h5:
                if values_path(key) not in h5:
                    continue
                group = h5[values_path(key)]
                meta = AttrMeta.from_attrs(group.attrs)
                carried = int(group.attrs.get("carried", 0))
                n = _rowcount(group)
                t = group["time"][carried:n]
                idx = np.flatnonzero((t >= start) & (t <= end))
                if len(idx) == 0:
                    continue
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                sel = slice(None) if hi - lo == len(idx) else idx - lo  # usually contiguous
                times_parts.append(t[lo:hi][sel])
                qual_parts.append(group["quality"][carried + lo : carried + hi][sel])
                value_parts.append(_read_values(group, meta, carried + lo, carried + hi)[sel])
        if meta is None:
            raise QueryError(f"{device}/{attribute} is not archived")
        if times_parts:
            times = np.concatenate(times_parts)
            quals = np.concatenate(qual_parts).astype(np.int64)
            values = np.concatenate(value_parts)
        else:
            times, quals, values = np.zeros(0), np.zeros(0, np.int64), np.zeros(0)
        if len(times) > 1 and np.any(np.diff(times) < 0):
            order = np.argsort(times, kind="stable")
            times, quals, values = times[order], quals[order], values[order]
        count = len(times)
        numeric = meta.kind in ("float", "int", "bool")
        series = None
        if numeric:
            series = values.astype(np.float64)
            series[np.isin(quals, NO_VALUE)] = np.nan
        picks, method = decimate(count, series, max_points)
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
                    if values_path(key) not in h5:
                        continue
                    group = h5[values_path(key)]
                    meta = AttrMeta.from_attrs(group.attrs)
                    row = _last_row_at(group, meta, t)
                    if row is not None:
                        values[meta.attribute] = row
                        resolved.add(key)
                if want_settings and settings_path(low) in h5:
                    file_configs, file_props = settings_at(BlobLog.read(h5[settings_path(low)]), t)
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
                if kind not in ("gap", "dropped"):
                    continue
                gs, ge = float(j.get("start", 0)), float(j.get("end", 0))
                if ge < start or gs > end:
                    continue
                cause = j.get("cause", "")
                if kind == "dropped":
                    cause = f"{j.get('count', '?')} events dropped: {cause}".rstrip(": ")
                out.append({"start": gs, "end": ge, "cause": cause})
        return sorted(out, key=lambda g: g["start"])

    def list_attributes(self, pattern: str = "*") -> list[dict]:
        """Archived attributes matching a shell pattern on the full name."""
        pat = pattern.lower()
        found: dict[str, dict] = {}
        for info in self.files():
            for key, entry in info.values.items():
                meta = info.metas.get(key)
                if meta is None or not fnmatch.fnmatchcase(key, pat):
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
