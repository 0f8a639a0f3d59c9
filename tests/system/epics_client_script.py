"""The EPICS drivers in a process of their own, driven by JSON lines (system tests).

libca reads its environment once per process, and each test's IOC is on
another port, so the tests run the pyepics side here:

    python -m tests.system.epics_client_script 127.0.0.1:PORT

One JSON request per line on stdin, one JSON reply per line on stdout:

    {"op": "new", "name": "g", "cls": "VacuumGauge", "args": ["BL01:VAC:GAUGE1"]}
    {"op": "call", "name": "g", "method": "pressure", "args": []}
    {"op": "attr", "name": "g", "attr": "connected"}
    {"op": "listen", "name": "g"}       count the driver's listener calls
    {"op": "count", "name": "g"}        -> the count so far
    {"op": "repeater"}                  -> this process runs the loopback repeater
    {"op": "churn", "name": "g", "cycles": 300, "period": 0.002}
                                        connect (timing out) and close, again
                                        and again, while the channels'
                                        re-search runs every ``period`` s;
                                        -> how many connects timed out
    {"op": "exit"}

Replies: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"LinkError", "message": "...", "code": null}``. Never imported at runtime.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import traceback
from typing import Any

from tango_devices.drivers import epics_ca
from tango_devices.drivers.epics_motor import EpicsMotorRecord
from tango_devices.drivers.epics_vacuum import VacuumGauge, VacuumValve
from tango_devices.drivers.errors import DriverError

CLASSES = {c.__name__: c for c in (VacuumGauge, VacuumValve, EpicsMotorRecord)}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


class Server:
    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == "new":
            self.objects[request["name"]] = CLASSES[request["cls"]](
                *request.get("args", []), **request.get("kwargs", {})
            )
            return None
        if op == "call":
            method = getattr(self.objects[request["name"]], request["method"])
            return method(*request.get("args", []), **request.get("kwargs", {}))
        if op == "attr":
            return getattr(self.objects[request["name"]], request["attr"])
        if op == "listen":
            name = request["name"]
            self.counts[name] = 0
            self.objects[name].add_listener(lambda: self._count(name))
            return None
        if op == "count":
            with self._lock:
                return self.counts[request["name"]]
        if op == "repeater":
            return epics_ca.repeater_running()
        if op == "churn":
            return self._churn(self.objects[request["name"]], request["cycles"], request["period"])
        raise ValueError(f"unknown op {op!r}")

    @staticmethod
    def _churn(driver: Any, cycles: int, period: float) -> int:
        """What a device does when its IOC answers late, as fast as possible:
        connect, time out, close, connect again, while the channels' own
        re-search (a timer thread) re-creates them every ``period`` s."""
        saved = epics_ca.RESEARCH_FIRST, epics_ca.RESEARCH_MAX, driver.timeout
        epics_ca.RESEARCH_FIRST, epics_ca.RESEARCH_MAX = period, 2 * period
        driver.timeout = period
        timed_out = 0
        try:
            for _ in range(cycles):
                try:
                    driver.connect()
                except DriverError:
                    timed_out += 1
                driver.close()
        finally:
            epics_ca.RESEARCH_FIRST, epics_ca.RESEARCH_MAX, driver.timeout = saved
        return timed_out

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


def main(argv: list[str]) -> int:
    epics_ca.configure(argv[0] if argv else None)
    server = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        try:
            reply = {"ok": True, "result": _jsonable(server.handle(request))}
        except DriverError as exc:
            reply = {
                "ok": False,
                "error": type(exc).__name__,
                "message": str(exc),
                "code": getattr(exc, "code", None),
            }
        except Exception as exc:  # a bug in a driver or a test: report it whole
            reply = {
                "ok": False,
                "error": type(exc).__name__,
                "message": f"{exc}\n{traceback.format_exc()}",
                "code": None,
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    for obj in server.objects.values():
        obj.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
