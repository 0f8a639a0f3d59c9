"""The Tango device classes shipped with the suite, by Tango class name.

Every server here is also a console script of the same name in setup.py
(the Starter starts a server by executable name); a unit test checks both
lists agree.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Tango server (executable) name -> "module:Class" of its one device class.
SERVERS: dict[str, str] = {
    "Motor": "tango_devices.motor.device:Motor",
}


def device_classes() -> dict[str, Any]:
    classes = {}
    for target in SERVERS.values():
        module, cls = target.split(":")
        klass = getattr(importlib.import_module(module), cls)
        classes[klass.__name__] = klass
    return classes
