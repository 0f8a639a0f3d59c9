"""What the logger archives, and how values and times are represented (no tango).

Every archived attribute has an :class:`AttrMeta`: its device and name, and a
*kind* that decides the HDF5 storage of its values:

=========  ==============  ==================================================
kind       HDF5 dtype      Tango types
=========  ==============  ==================================================
float      float64         DevDouble, DevFloat scalars
int        int64           integer scalars (DevShort ... DevULong64, DevUChar)
bool       uint8           DevBoolean scalars
state      uint8           DevState scalars (labels: the DevState names)
enum       int16           DevEnum scalars (labels: the enum labels)
json       bytes (UTF-8)   strings, spectra, images, DevEncoded, anything else
=========  ==============  ==================================================

Qualities are Tango's AttrQuality numbers (VALID 0, INVALID 1, ALARM 2,
CHANGING 3, WARNING 4) plus ERROR (5): the attribute could not be read or its
event carried an error; such a row has no value.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUALITY_NAMES = ("VALID", "INVALID", "ALARM", "CHANGING", "WARNING", "ERROR")
VALID, INVALID, ALARM, CHANGING, WARNING, ERROR = range(6)
NO_VALUE = (INVALID, ERROR)

#: Tango's DevState names, in enum order
STATE_NAMES = (
    "ON",
    "OFF",
    "CLOSE",
    "OPEN",
    "INSERT",
    "EXTRACT",
    "MOVING",
    "STANDBY",
    "FAULT",
    "INIT",
    "RUNNING",
    "ALARM",
    "DISABLE",
    "UNKNOWN",
)

KINDS = {
    "float": (np.float64, math.nan),
    "int": (np.int64, 0),
    "bool": (np.uint8, 0),
    "state": (np.uint8, len(STATE_NAMES) - 1),
    "enum": (np.int16, -1),
}
JSON = "json"

_FLOAT_TYPES = {"DevDouble", "DevFloat"}
_INT_TYPES = {
    "DevShort",
    "DevUShort",
    "DevLong",
    "DevULong",
    "DevLong64",
    "DevULong64",
    "DevUChar",
}


def kind_for(tango_type: str, data_format: str) -> str:
    """The storage kind for a Tango data type name and format name."""
    if data_format != "SCALAR":
        return JSON
    if tango_type in _FLOAT_TYPES:
        return "float"
    if tango_type in _INT_TYPES:
        return "int"
    return {"DevBoolean": "bool", "DevState": "state", "DevEnum": "enum"}.get(tango_type, JSON)


def attr_key(device: str, attribute: str) -> str:
    """The case-insensitive key of an attribute: ``bl01/mot/sample_x/position``."""
    return f"{device}/{attribute}".lower()


def split_key(name: str) -> tuple[str, str]:
    """``"bl01/mot/sample_x/Position"`` -> (device, attribute); raises ValueError."""
    parts = name.strip().strip("/").split("/")
    if len(parts) != 4 or not all(parts):
        raise ValueError(f"{name!r} is not domain/family/member/attribute")
    return "/".join(parts[:3]), parts[3]


@dataclass(frozen=True)
class AttrMeta:
    device: str
    attribute: str
    kind: str
    tango_type: str = ""
    data_format: str = "SCALAR"
    labels: tuple[str, ...] = field(default=())
    unit: str = ""

    @property
    def key(self) -> str:
        return attr_key(self.device, self.attribute)

    def as_attrs(self) -> dict[str, Any]:
        """HDF5 attributes of the attribute's group."""
        return {
            "device": self.device,
            "attribute": self.attribute,
            "kind": self.kind,
            "tango_type": self.tango_type,
            "data_format": self.data_format,
            "labels": json.dumps(list(self.labels)),
            "unit": self.unit,
        }

    @classmethod
    def from_attrs(cls, attrs) -> AttrMeta:
        return cls(
            device=str(attrs["device"]),
            attribute=str(attrs["attribute"]),
            kind=str(attrs["kind"]),
            tango_type=str(attrs.get("tango_type", "")),
            data_format=str(attrs.get("data_format", "SCALAR")),
            labels=tuple(json.loads(attrs.get("labels", "[]"))),
            unit=str(attrs.get("unit", "")),
        )


# ------------------------------------------------------------------ values
def to_jsonable(value: Any) -> Any:
    """A value as plain JSON types (numpy arrays and scalars, enums, bytes)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return [to_jsonable(v) for v in value.tolist()] if value.ndim == 1 else _nested(value)
        return value.tolist()
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, (bytes, bytearray)):
        return {"bytes_hex": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "name") and isinstance(getattr(value, "name", None), str):
        return value.name  # an enum (DevState, AttrQuality, ...)
    return str(value)


def _nested(array: np.ndarray) -> list:
    return [to_jsonable(row) for row in array]


def encode_json(value: Any) -> bytes:
    return json.dumps(to_jsonable(value), separators=(",", ":")).encode()


def scalar_code(kind: str, value: Any) -> Any:
    """The number stored for a scalar of ``kind`` (None: the kind's fill value)."""
    if value is None:
        return KINDS[kind][1]
    if kind == "float":
        return float(value)
    return int(value)


def decode_scalar(meta: AttrMeta, code: Any, quality: int) -> Any:
    """A stored number back to what a client sees (None for rows without value)."""
    if quality in NO_VALUE:
        return None
    kind = meta.kind
    if kind == "float":
        value = float(code)
        return value if math.isfinite(value) else None
    if kind == "bool":
        return bool(code)
    if kind == "state":
        names = meta.labels or STATE_NAMES
        return names[int(code)] if 0 <= int(code) < len(names) else str(int(code))
    if kind == "enum":
        labels = meta.labels
        return labels[int(code)] if 0 <= int(code) < len(labels) else int(code)
    return int(code)


# ------------------------------------------------------------------- times
_RELATIVE = re.compile(r"^\s*-\s*(\d{1,12}(?:\.\d{0,9})?)\s*(s|m|min|h|d|w)\s*$", re.I)
_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
TIME_MIN, TIME_MAX = 0.0, 1e11  # s since the epoch: 1970 .. year 5138
MAX_TIME_TEXT = 64
_TIME_FORMS = (
    "use seconds since the epoch, 'now', '-10m', '-2h', '-1d' or ISO 8601 "
    "(2026-11-22T10:15:00, local time unless a zone is given)"
)


def parse_time(spec: Any, now: float | None = None) -> float:
    """Seconds since the epoch from a number, ``"now"``, a relative time
    (``"-10m"``, ``"-2h"``, ``"-1d"``) or ISO 8601 (local time when no zone);
    ValueError for anything else, and for a time before 1970 or after
    ``TIME_MAX`` (NaN and infinities included)."""
    now = time.time() if now is None else now
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _bounded(float(spec), spec)
    if not isinstance(spec, str):
        raise ValueError(f"a time is a number or text, not {type(spec).__name__}; {_TIME_FORMS}")
    if len(spec) > MAX_TIME_TEXT:
        raise ValueError(f"a time is at most {MAX_TIME_TEXT} characters, not {len(spec)}")
    text = spec.strip()
    if text.lower() == "now":
        return _bounded(now, spec)
    match = _RELATIVE.match(text)
    if match:
        return _bounded(now - float(match.group(1)) * _UNITS[match.group(2).lower()], spec)
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return _bounded(number, spec)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local time
        stamp = moment.timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{spec!r} is not a time: {_TIME_FORMS}") from None
    return _bounded(stamp, spec)


def _bounded(t: float, spec: Any) -> float:
    if not math.isfinite(t):
        raise ValueError(f"{spec!r} is not a time: {_TIME_FORMS}")
    if t < TIME_MIN:
        raise ValueError(f"{spec!r} is before 1970 (the archive starts at the epoch)")
    if t > TIME_MAX:
        raise ValueError(f"{spec!r} is after the year 5000 (at most {TIME_MAX:.0f} s)")
    return t


def iso(t: float | None) -> str | None:
    """Local ISO 8601 with milliseconds and the zone offset."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")
