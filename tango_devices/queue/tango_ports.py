"""The queue's Tango side: the MacroServer (validation, needed devices), the
Door (running macros), device readiness and interlocks."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tango

from tango_devices.common.door import DoorClient, DoorError, MacroRun, find_supervisor
from tango_devices.queue.queue_logic import QueueError

ELEMENT_TYPES = {
    "Moveable",
    "Motor",
    "PseudoMotor",
    "ExpChannel",
    "CTExpChannel",
    "ZeroDExpChannel",
    "OneDExpChannel",
    "TwoDExpChannel",
    "MeasurementGroup",
    "IORegister",
    "Countable",
    "Acquirable",
}
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _desc(exc: tango.DevFailed) -> str:
    try:
        return exc.args[0].desc.strip().splitlines()[0]
    except (IndexError, AttributeError):
        return str(exc)


class _Plan:
    """One macro's parameters, arranged once for checking many items."""

    def __init__(self, macro: str, params: list[dict]) -> None:
        self.macro = macro
        self.params = params
        fixed = []
        for p in params:
            if isinstance(p.get("type"), list):
                break
            fixed.append(p)
        self.fixed = fixed
        self.repeat = params[len(fixed)] if len(fixed) < len(params) else None
        self.required = [p for p in fixed if p.get("default_value") is None]
        self.members = (
            [m for m in self.repeat["type"] if isinstance(m, dict)]
            if self.repeat is not None and len(params) == len(fixed) + 1
            else None
        )

    @property
    def usage(self) -> str:
        return " ".join(
            [self.macro]
            + [
                f"<{p['name']}>" if p.get("default_value") is None else f"[{p['name']}]"
                for p in self.params
            ]
        )

    def check(self, args: list[str], is_element: Callable[[str], bool]) -> None:
        macro, fixed = self.macro, self.fixed
        if len(args) < len(self.required):
            missing = ", ".join(p["name"] for p in self.required[len(args) :])
            raise QueueError(
                f"{macro} needs {len(self.required)} argument(s), missing {missing}: {self.usage}"
            )
        if self.repeat is None and len(args) > len(fixed):
            raise QueueError(
                f"{macro} takes at most {len(fixed)} argument(s), got {len(args)}: {self.usage}"
            )
        for param, value in zip(fixed, args, strict=False):
            self.check_type(param, value, is_element)
        if self.members is not None:
            members, rest, repeat = self.members, args[len(fixed) :], self.repeat
            if members and rest:
                if len(rest) % len(members):
                    names = " ".join(m.get("name", "?") for m in members)
                    raise QueueError(
                        f"{macro}: {self.repeat['name']} takes groups of ({names}), "
                        f"got {len(rest)} value(s): {self.usage}"
                    )
                for n, value in enumerate(rest):
                    self.check_type(members[n % len(members)], value, is_element)
            elif not rest and repeat.get("min", 1) and repeat.get("default_value") is None:
                raise QueueError(f"{macro} needs at least one {self.repeat['name']}: {self.usage}")

    def check_type(self, param: dict, value: str, is_element: Callable[[str], bool]) -> None:
        kind, name = param.get("type"), param.get("name")
        finite = True
        try:
            if kind == "Integer":
                int(value)
            elif kind == "Float":
                finite = math.isfinite(float(value))
            elif kind == "Boolean" and value.lower() not in TRUE | FALSE:
                raise ValueError
        except ValueError:
            raise QueueError(f"{self.macro}: {name} must be {kind}, not {value!r}") from None
        if not finite:  # "nan", "inf": no position, no time
            raise QueueError(f"{self.macro}: {name} must be a finite Float, not {value!r}")
        if kind in ELEMENT_TYPES and not is_element(value):
            raise QueueError(
                f"{self.macro}: {name} must name a Sardana element ({kind}), {value!r} is none"
            )


class MacroPort:
    """What the MacroServer declares about each macro (cached per macro)."""

    def __init__(self, macro_server: str, door: str) -> None:
        self.macro_server = macro_server
        self.door = door
        self._info: dict[str, dict] = {}
        self._hardware: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def info(self, macro: str) -> dict:
        with self._lock:
            if macro in self._info:
                return self._info[macro]
        try:
            ms = tango.DeviceProxy(self.macro_server)
            ms.set_timeout_millis(3000)
            names = ms.read_attribute("MacroList").value or ()
            if macro not in names:
                close = [n for n in names if n.lower() == macro.lower()]
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise QueueError(f"no macro {macro!r} on {self.macro_server}{hint}")
            info = json.loads(ms.GetMacroInfo([macro])[0])
        except tango.DevFailed as exc:
            raise QueueError(
                f"cannot check macro {macro!r}: {self.macro_server} does not answer "
                f"({_desc(exc)}); try again when Sardana is up"
            ) from None
        with self._lock:
            self._info[macro] = info
        return info

    def checker(self) -> Callable[[str, list[str]], None]:
        """``validate`` for one request (an item or a whole batch), in memory:
        each macro's description comes from the cache (asked for once per
        macro), and the Sardana element names are read from the Tango
        database once, at the first element parameter, then looked up in a
        set. (Asking the database per element took 1.2 ms: 20,000 ``mv``
        items took 25 s.)"""
        plans: dict[str, _Plan] = {}
        elements: set[str] | None = None

        def is_element(name: str) -> bool:
            nonlocal elements
            if elements is None:
                elements = self.element_names()
            return name in elements

        def check(macro: str, args: list[str]) -> None:
            plan = plans.get(macro)
            if plan is None:
                plan = plans[macro] = _Plan(macro, self.info(macro).get("parameters") or [])
            plan.check(args, is_element)

        return check

    def validate(self, macro: str, args: list[str]) -> None:
        self.checker()(macro, args)

    def element_names(self) -> set[str]:
        """Every alias in the Tango database (Sardana's elements are aliases)."""
        try:
            return set(tango.Database().get_device_alias_list("*"))
        except tango.DevFailed as exc:
            raise QueueError(
                f"cannot check element names: the Tango database does not answer ({_desc(exc)})"
            ) from None

    def needs(self, macro: str, args: list[str]) -> list[str]:
        """The Door, the devices in hints["needs"] ("@param": the element a
        parameter names) and every element parameter."""
        try:
            info = self.info(macro)
        except QueueError:
            return [self.door]
        params = info.get("parameters") or []
        values = {p.get("name"): v for p, v in self._pairs(params, args)}
        devices = [self.door]
        for need in (info.get("hints") or {}).get("needs", []):
            if need.startswith("@"):
                value = values.get(need[1:])
                if value:
                    devices.append(value)
            else:
                devices.append(need)
        for param, value in self._pairs(params, args):
            if param.get("type") in ELEMENT_TYPES and value not in devices:
                devices.append(value)
        # a Sardana element answers while the device behind it is down: check both
        for name in list(devices):
            hardware = self.hardware_of(name)
            if hardware and hardware not in devices:
                devices.append(hardware)
        return devices

    @staticmethod
    def _pairs(params: list[dict], args: list[str]) -> list[tuple[dict, str]]:
        """(parameter, value) for every argument, repeat groups unrolled."""
        pairs = []
        for n, param in enumerate(params):
            kind = param.get("type")
            if isinstance(kind, list):
                members = [m for m in kind if isinstance(m, dict)] or [{}]
                rest = args[n:]
                pairs += [(members[i % len(members)], v) for i, v in enumerate(rest)]
                return pairs
            if n < len(args):
                pairs.append((param, args[n]))
        return pairs

    def hardware_of(self, alias: str) -> str | None:
        """The beamline device behind a Sardana element (from its controller's
        Device/Devices property and the element's axis), or None."""
        if "/" in alias:
            return None
        with self._lock:
            if alias in self._hardware:
                return self._hardware[alias]
        found = None
        try:
            db = tango.Database()
            element = db.get_device_alias(alias)
            props = db.get_device_property(element, ["axis", "ctrl_id"])
            axis, ctrl = int(props["axis"][0]), props["ctrl_id"][0]
            ctrl_dev = db.get_device_alias(ctrl) if "/" not in ctrl else ctrl
            cprops = db.get_device_property(ctrl_dev, ["Devices", "Device"])
            names = list(cprops["Devices"]) or list(cprops["Device"])
            names = [n.strip() for v in names for n in v.split(",") if n.strip()]
            if len(names) == 1:
                found = names[0]
            elif 1 <= axis <= len(names):
                found = names[axis - 1]
        except (tango.DevFailed, KeyError, IndexError, ValueError):
            found = None
        with self._lock:
            self._hardware[alias] = found
        return found


@dataclass
class Verdict:
    outcome: str  # running | finish | stop | abort | exception | unknown
    error_text: str = ""
    run: Any = None


class DoorPort:
    """The Door, reconnected after Sardana restarts."""

    def __init__(self, door: str) -> None:
        self.name = door
        self._client: DoorClient | None = None
        self._lock = threading.Lock()

    def client(self) -> DoorClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = DoorClient(self.name)
                except tango.DevFailed as exc:
                    raise DoorError(f"{self.name} does not answer: {_desc(exc)}") from None
            return self._client

    def _drop(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    def start(self, args: list[str]) -> MacroRun:
        try:
            return self.client().start(args)
        except DoorError:
            self._drop()
            raise

    def wait(self, run: MacroRun, timeout: float | None = None) -> MacroRun:
        run = self.client().wait(run, timeout)
        if run.outcome == "lost":
            self._drop()
        return run

    def _command(self, name: str) -> None:
        try:
            proxy = tango.DeviceProxy(self.name)
            proxy.set_timeout_millis(3000)
            proxy.command_inout(name)
        except tango.DevFailed as exc:
            raise QueueError(f"{self.name} refused {name}: {_desc(exc)}") from None

    def stop(self) -> None:
        self._command("StopMacro")

    def abort(self) -> None:
        self._command("AbortMacro")

    def release(self) -> None:
        self._command("ReleaseMacro")

    def pause(self, timeout: float = 5.0) -> None:
        """Pause the running macro. Sardana ignores PauseMacro until the macro
        has really started (and refuses it before RunMacro is through), so ask
        again until the Door is paused."""
        deadline = time.monotonic() + timeout
        proxy = tango.DeviceProxy(self.name)
        proxy.set_timeout_millis(3000)
        last = ""
        while time.monotonic() < deadline:
            try:
                state = proxy.state()
                if state == tango.DevState.STANDBY:
                    return
                if state == tango.DevState.RUNNING:
                    proxy.command_inout("PauseMacro")
            except tango.DevFailed as exc:
                last = _desc(exc)
            pause_deadline = time.monotonic() + 0.5
            while time.monotonic() < pause_deadline:
                try:
                    if proxy.state() == tango.DevState.STANDBY:
                        return
                except tango.DevFailed as exc:
                    last = _desc(exc)
                time.sleep(0.02)
        raise QueueError(f"{self.name} did not pause within {timeout:g} s {last}".strip())

    def resume(self) -> None:
        self._command("ResumeMacro")

    def restart(self) -> None:
        """The last resort: the supervisor restarts the Door's server (Sardana
        then comes back with a ready Door)."""
        try:
            server = tango.Database().get_device_info(self.name).ds_full_name
            find_supervisor(server).RestartServer(server)
        except (tango.DevFailed, DoorError) as exc:
            text = _desc(exc) if isinstance(exc, tango.DevFailed) else str(exc)
            raise QueueError(f"could not restart the server of {self.name}: {text}") from None
        self._drop()

    def busy(self) -> bool:
        try:
            proxy = tango.DeviceProxy(self.name)
            proxy.set_timeout_millis(1000)
            return proxy.state() in (tango.DevState.RUNNING, tango.DevState.STANDBY)
        except tango.DevFailed:
            return False

    def reconcile(self, macro: str, door_started: float) -> Verdict:
        """What became of ``macro`` started at ``door_started`` by a queue that died."""
        try:
            proxy = tango.DeviceProxy(self.name)
            proxy.set_timeout_millis(3000)
            state = proxy.state()
            status = proxy.read_attribute("MacroStatus")
        except tango.DevFailed as exc:
            return Verdict("unknown", f"{self.name} does not answer: {_desc(exc)}")
        items = []
        try:
            fmt, data = status.value
            items = json.loads(bytes(data).decode()) if data else []
        except (TypeError, ValueError):
            items = []
        if state in (tango.DevState.RUNNING, tango.DevState.STANDBY):
            if proxy.status().find(macro) >= 0:
                client = self.client()
                run = MacroRun([macro])
                with client._lock:
                    client._current = run
                    client._ended.clear()
                return Verdict("running", run=run)
            return Verdict("unknown", f"{self.name} runs another macro")
        when = status.get_date().totime()
        if when < door_started - 1.0 or not items:
            return Verdict("unknown", "the Door has no record of it")
        last = items[-1]
        outcome = last.get("state", "unknown")
        if outcome not in ("finish", "stop", "abort", "exception"):
            return Verdict("unknown", f"the Door's last status is {outcome!r}")
        return Verdict(outcome, str(last.get("exc_value", "")))


INTERLOCK = re.compile(
    r"^\s*(?P<dev>[^\s/]+/[^\s/]+/[^\s/]+)/(?P<attr>\w+)\s*(?P<op>==|!=|>=|<=|>|<|in)\s*"
    r"(?P<value>[^:]+?)\s*:\s*(?P<label>.+)$"
)


@dataclass
class Interlock:
    device: str
    attribute: str
    op: str
    value: str
    label: str

    @classmethod
    def parse(cls, text: str) -> Interlock:
        m = INTERLOCK.match(text)
        if not m:
            raise ValueError(
                f"interlock {text!r}: write 'domain/family/member/Attribute OP VALUE : label', "
                "OP one of == != > < >= <= in (in: comma-separated values)"
            )
        return cls(m["dev"], m["attr"], m["op"], m["value"].strip(), m["label"].strip())

    def active(self, value: Any) -> bool:
        text = str(value)
        if self.op == "in":
            return text in {v.strip() for v in self.value.split(",")}
        if self.op in ("==", "!="):
            return (text == self.value) == (self.op == "==")
        number, limit = float(value), float(self.value)
        return {
            ">": number > limit,
            "<": number < limit,
            ">=": number >= limit,
            "<=": number <= limit,
        }[self.op]


class HealthPort:
    def __init__(self, interlocks: list[Interlock], timeout: float) -> None:
        self.interlock_list = interlocks
        self.timeout = timeout
        self._proxies: dict[str, tango.DeviceProxy] = {}

    def _proxy(self, name: str) -> tango.DeviceProxy:
        proxy = self._proxies.get(name)
        if proxy is None:
            proxy = tango.DeviceProxy(name)
            proxy.set_timeout_millis(int(self.timeout * 1000))
            self._proxies[name] = proxy
        return proxy

    def down(self, devices: list[str]) -> list[str]:
        bad = []
        for name in devices:
            try:
                state = self._proxy(name).state()
            except tango.DevFailed as exc:
                self._proxies.pop(name, None)  # a new proxy sees a restarted device at once
                bad.append(f"{name} does not answer ({_desc(exc)})")
                continue
            if state == tango.DevState.FAULT:
                bad.append(f"{name} is FAULT")
        return bad

    def interlocks(self) -> list[str]:
        active = []
        for lock in self.interlock_list:
            try:
                proxy = self._proxy(lock.device)
                if lock.attribute.lower() == "state":
                    value = str(proxy.state())
                else:
                    value = proxy.read_attribute(lock.attribute).value
            except tango.DevFailed:
                self._proxies.pop(lock.device, None)
                active.append(f"{lock.label} (cannot read {lock.device}/{lock.attribute})")
                continue
            if lock.active(value):
                active.append(f"{lock.label} ({lock.device}/{lock.attribute} = {value})")
        return active


def now() -> float:
    return time.time()
