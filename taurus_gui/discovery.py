"""What the GUI configuration asks the Tango database: the beamline's
devices and the Sardana MacroServer and Door. Queried when the GUI starts,
so a device added to db_config shows up without editing the GUI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# Tango's own devices and Sardana's element devices are not beamline devices.
SKIP_PREFIXES = ("dserver/", "sys/database/", "tango/admin/", "sys/tg_test/", "sys/access_control/")
SARDANA_CLASSES = ("Pool", "MacroServer", "Door")


def tango_host() -> str:
    """The database the GUI was started for (TANGO_HOST when it started)."""
    return os.environ.get("TANGO_HOST", "")


def trl(name: str) -> str:
    """``tango://HOST:PORT/name``: fully qualified, so that every proxy and
    Taurus model of the GUI talks to the database it was started for, even in
    a process whose Tango client layer cached an older TANGO_HOST."""
    host = tango_host()
    if not host or name.startswith("tango://"):
        return name
    return f"tango://{host}/{name}"


@dataclass
class Discovered:
    devices: dict[str, str] = field(default_factory=dict)  # device -> class
    macroserver: str | None = None
    door: str | None = None
    error: str = ""


def discover(domain: str = "bl01") -> Discovered:
    """The devices of ``domain`` (and their classes) from the database."""
    import tango

    found = Discovered()
    try:
        host, _, port = tango_host().rpartition(":")
        db = tango.Database(host, int(port)) if host and port.isdigit() else tango.Database()
        for server in db.get_server_list("*"):
            for name, klass in _pairs(db.get_device_class_list(server)):
                low = name.lower()
                if low.startswith(SKIP_PREFIXES) or not low.startswith(f"{domain}/"):
                    continue
                if klass == "MacroServer" and found.macroserver is None:
                    found.macroserver = name
                elif klass == "Door" and found.door is None:
                    found.door = name
                found.devices[name] = klass
    except tango.DevFailed as exc:
        found.error = exc.args[0].desc.strip()
    return found


def _pairs(flat) -> list[tuple[str, str]]:
    items = list(flat)
    return list(zip(items[0::2], items[1::2], strict=False))
