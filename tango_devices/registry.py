"""The Tango device servers shipped with the suite, by server (executable) name.

Every server here is also a console script of the same name in setup.py (the
Starter starts a server by executable name); a unit test checks both agree.
"""

from __future__ import annotations

import importlib
from typing import Any

#: server name -> ("module:DeviceClass", "module:entry point")
SERVERS: dict[str, tuple[str, str]] = {
    "Motor": ("tango_devices.motor.device:Motor", "tango_devices.motor.device:main"),
    "Shutter": ("tango_devices.shutter.device:Shutter", "tango_devices.shutter.device:main"),
    "Scaler": ("tango_devices.scaler.device:Scaler", "tango_devices.scaler.device:main"),
    "Detector": ("tango_devices.detector.device:Detector", "tango_devices.detector.device:main"),
    "TimingUnit": (
        "tango_devices.timing.device:TimingUnit",
        "tango_devices.timing.device:main",
    ),
    "VacuumGauge": (
        "tango_devices.vacuum.device:VacuumGauge",
        "tango_devices.vacuum.device:gauge_main",
    ),
    "Valve": ("tango_devices.vacuum.device:Valve", "tango_devices.vacuum.device:valve_main"),
    "Supervisor": (
        "tango_devices.supervisor.device:Supervisor",
        "tango_devices.supervisor.device:main",
    ),
    "DataLogger": ("tango_devices.logger.device:DataLogger", "tango_devices.logger.device:main"),
    "EventRelay": (
        "tango_devices.relay.device:EventRelay",
        "tango_devices.relay.device:main",
    ),
    "ExperimentQueue": (
        "tango_devices.queue.device:ExperimentQueue",
        "tango_devices.queue.device:main",
    ),
}


def device_classes() -> dict[str, Any]:
    """Tango class name -> class (imports the device modules)."""
    classes = {}
    for target, _entry in SERVERS.values():
        module, cls = target.split(":")
        klass = getattr(importlib.import_module(module), cls)
        classes[klass.__name__] = klass
    return classes
