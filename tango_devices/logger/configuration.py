"""A device's configuration at a moment, and what changed between two (no tango).

The logger answers "what was set when" from three archived streams of a
device, each taken as of the requested time (the last record at or before it):

- every attribute's value (with its Tango timestamp and quality);
- every attribute's configuration (unit, format, limits, alarms, event
  thresholds, ... as in Tango's AttributeInfoEx), from ATTR_CONF events;
- the device's properties and its attributes' properties in the Tango
  database (memorized values ``__value``, limits stored there, ...).
"""

from __future__ import annotations

from typing import Any

from tango_devices.logger.model import iso


def assemble(
    device: str,
    t: float,
    values: dict[str, dict],
    configs: dict[str, dict],
    properties: dict | None,
    gap: dict | None = None,
) -> dict[str, Any]:
    """The GetConfigurationAt answer.

    ``values``: attribute -> {"value", "quality", "time"}; ``configs``:
    attribute -> {"time", "config"}; ``properties``: the last properties
    record ({"time", "properties", "attribute_properties"}) or None.
    """
    attribute_properties = (properties or {}).get("attribute_properties", {}) or {}
    by_lower: dict[str, str] = {}
    for name in [*values, *configs, *attribute_properties]:
        by_lower.setdefault(name.lower(), name)
    attributes: dict[str, dict] = {}
    for low, name in sorted(by_lower.items()):
        value = _get(values, low)
        config = _get(configs, low)
        props = _get(attribute_properties, low)
        attributes[name] = {
            "value": value.get("value") if value else None,
            "quality": value.get("quality") if value else None,
            "time": value.get("time") if value else None,
            "config": config.get("config") if config else None,
            "config_time": config.get("time") if config else None,
            "properties": props or {},
        }
    return {
        "device": device,
        "time": t,
        "time_iso": iso(t),
        "attributes": attributes,
        "properties": (properties or {}).get("properties", {}) or {},
        "properties_time": (properties or {}).get("time"),
        "logger_gap": gap,
    }


def _get(mapping: dict, low: str):
    for key, value in mapping.items():
        if key.lower() == low:
            return value
    return None


TIME_FIELDS = ("time", "config_time", "properties_time", "time_iso", "logger_gap")


def flatten(config: dict[str, Any], ignore_times: bool = True) -> dict[str, Any]:
    """``{"attributes.Position.config.max_value": "20", ...}`` (leaves only;
    an empty mapping has none)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if ignore_times and k in TIME_FIELDS:
                    continue
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    body = {k: v for k, v in config.items() if k not in ("device",)}
    walk("", body)
    return out


def diff(before: dict[str, Any], after: dict[str, Any], ignore_times: bool = True) -> dict:
    """Leaves that differ: path -> {"before": ..., "after": ...} (a missing leaf is None)."""
    a, b = flatten(before, ignore_times), flatten(after, ignore_times)
    changed = {}
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            changed[path] = {"before": a.get(path), "after": b.get(path)}
    return changed
