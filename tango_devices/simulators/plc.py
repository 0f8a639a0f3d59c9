"""Virtual front-end shutter PLC: shutters, interlocks and its ASCII protocol.

Pure logic: no I/O, no ``tango``. The transport (``server.py``) feeds request
lines to :meth:`PlcController.handle_line`. The protocol is specified in
``docs/protocol-plc.md``.

Time is injected and the model is evaluated when it is looked at (a request,
a physics read of a shutter source, the control port): a shutter's travel is
computed analytically, so the result does not depend on how often it is
polled. An interlock is tripped at the first evaluation that sees its physics
input above the threshold.

Each shutter has a *position* between 0 (closed) and 1 (open) and a
*target*; it moves at ``1 / travel_time`` per second towards the target. A
``stuck`` fault freezes the position: the PLC's motion watchdog then latches
a FAULT once a motion has not completed within twice the travel time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Re-exported: the codes and line limit every protocol shares, under this module too.
from tango_devices.simulators.common import E_BAD_ARGUMENT as E_BAD_ARGUMENT
from tango_devices.simulators.common import E_UNKNOWN_COMMAND as E_UNKNOWN_COMMAND
from tango_devices.simulators.common import MAX_LINE as MAX_LINE
from tango_devices.simulators.common import (
    Command,
    CommandError,
    PhysicsController,
    check_fault_kind,
    check_keys,
    check_name,
    entries,
    is_number,
    no_args,
    non_empty_string,
    optional_bool,
    printable,
    seconds_between,
)
from tango_devices.simulators.physics import INPUTS

FIRMWARE_VERSION = "1.0"
MIN_TRAVEL_TIME = 0.001
MAX_TRAVEL_TIME = 60.0
WATCHDOG_FACTOR = 2.0  # a motion not done within this many travel times is a fault
_ARRIVED = 1e-9  # travel fraction left that counts as arrived (clock rounding)

# Error codes (docs/protocol-plc.md; E_UNKNOWN_COMMAND = 1 and E_BAD_ARGUMENT = 2 are common).
E_NO_SUCH_SHUTTER = 3
E_FAULT = 7
E_INTERLOCK = 8

OPEN, CLOSED, MOVING, FAULT = "OPEN", "CLOSED", "MOVING", "FAULT"


class PlcError(CommandError):
    """A request the PLC refuses: becomes ``ERROR <code> <message>``."""


# --------------------------------------------------------------- configuration
@dataclass(frozen=True)
class InterlockConfig:
    """Active while ``physics.value(input)`` is above ``above``."""

    name: str
    input: str
    above: float
    text: str

    @classmethod
    def from_dict(cls, data: Any, where: str) -> InterlockConfig:
        """Validate one entry of ``interlocks``; ``ValueError`` names the key."""
        keys = ("name", "input", "above", "text")
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{where.rstrip('.')}: must be an object such as "
                '{"name": "vacuum", "input": "pressure", "above": 1e-5, "text": "..."}'
            )
        check_keys(where, data, keys)
        for key in ("name", "input", "above"):
            if key not in data:
                raise ValueError(f"{where}{key}: missing (required)")
        name = non_empty_string(where, "name", data["name"])
        quantity = data["input"]
        if quantity not in INPUTS:
            raise ValueError(
                f"{where}input: must be a physics quantity ({', '.join(INPUTS)}), got {quantity!r}"
            )
        above = data["above"]
        if not is_number(above):
            raise ValueError(f"{where}above: must be a number, got {above!r}")
        default_text = f"{name} interlock: {quantity} above {above:g}"
        text = non_empty_string(where, "text", data.get("text", default_text))
        return cls(name, quantity, float(above), printable(text))


# --------------------------------------------------------------------- physics
class Shutter:
    """One shutter: position 0 (closed) .. 1 (open), target, stuck and fault."""

    def __init__(self, name: str, travel_time: float, is_open: bool, now: float = 0.0):
        self.name = name
        self.travel_time = travel_time
        self.position = 1.0 if is_open else 0.0
        self.target = self.position
        self.stuck = False
        self.fault_text: str | None = None
        self._now = now
        self._command_time: float | None = None  # watchdog start of the motion in progress

    @property
    def state(self) -> str:
        """``OPEN``, ``CLOSED``, ``MOVING`` or ``FAULT`` as the PLC reports it."""
        if self.fault_text is not None:
            return FAULT
        if self.position == self.target:
            return OPEN if self.target == 1.0 else CLOSED
        return MOVING

    @property
    def fully_open(self) -> bool:
        """Physically fully open (a shutter stuck open lets the beam through)."""
        return self.position >= 1.0

    def update(self, now: float) -> None:
        """Advance the travel to ``now``; latch the watchdog fault if stuck."""
        if now < self._now:
            now = self._now  # the clock is monotonic; ignore a step back
        elapsed, self._now = now - self._now, now
        if self.fault_text is not None or self.position == self.target:
            return
        if self.stuck:
            if self._command_time is None:
                self._command_time = now
            limit = WATCHDOG_FACTOR * self.travel_time
            if now >= self._command_time + limit:
                wanted = "OPEN" if self.target == 1.0 else "CLOSED"
                self.fault_text = f"shutter stuck: not {wanted} within {limit:g} s"
                self._command_time = None
            return
        remaining = abs(self.target - self.position) - elapsed / self.travel_time
        if remaining <= _ARRIVED:  # arrived (within float rounding of the clock)
            self.position = self.target
            self._command_time = None
        else:
            self.position = self.target - remaining if self.target > 0.5 else remaining

    def command(self, is_open: bool, now: float) -> None:
        """Drive towards open or closed (from wherever the shutter is)."""
        self.update(now)
        if self.fault_text is not None:
            raise PlcError(E_FAULT, f"shutter fault: {self.fault_text}; RESET first")
        target = 1.0 if is_open else 0.0
        if target != self.target:
            self.target = target
            self._command_time = now if self.position != target else None

    def set_stuck(self, stuck: bool, now: float) -> None:
        """The mechanism jams (freezes) or frees; freed, a motion goes on."""
        self.update(now)
        self.stuck = stuck
        if not stuck and self.position != self.target and self.fault_text is None:
            self._command_time = now  # the watchdog restarts with the motion

    def reset(self, now: float) -> None:
        """Acknowledge a latched fault; the shutter then drives closed (safe state)."""
        self.update(now)
        if self.fault_text is None:
            return
        if self.stuck:
            raise PlcError(E_FAULT, "cannot reset: the shutter is still stuck")
        self.fault_text = None
        self.target = 0.0
        self._command_time = now if self.position != 0.0 else None


# -------------------------------------------------------------------- protocol
class PlcController(PhysicsController):
    """A virtual shutter PLC speaking the ASCII protocol of ``docs/protocol-plc.md``.

    ``config``: ``{"shutters": {"fe": {"travel_time": 0.3, "open": false}},
    "interlocks": [{"name", "input", "above", "text"}]}`` (``kind`` and
    ``port`` are accepted and ignored). ``ValueError`` names the bad key.
    Registers the physics sources ``<name>/shutter_open`` (1.0 when every
    shutter is fully open) and ``<name>/<shutter>/open``.
    """

    kind = "plc"
    fault_kinds = ("interlock", "stuck")
    addressed = True  # ``name:COMMAND``: a shutter command, or a PLC command without ``name:``
    printable_errors = True

    def _configure(self, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise ValueError("must be an object with a 'shutters' object")
        check_keys("", config, ("kind", "port", "shutters", "interlocks"))
        self.shutters = self._build_shutters(config.get("shutters"), self._clock())
        self.interlocks = self._build_interlocks(config.get("interlocks", []))
        self.manual_interlock: str | None = None
        self._evaluating = False
        self._commands: dict[str, Command] = {
            "?ID": Command(self._cmd_id),
            "?SHUTTERS": Command(self._cmd_shutters),
            "?STATE": Command(self._cmd_state, addressed=True),
            "?ILK": Command(self._cmd_ilk, addressed=True),
            "?FAULT": Command(self._cmd_fault, addressed=True),
            "OPEN": Command(self._cmd_open, addressed=True),
            "CLOSE": Command(self._cmd_close, addressed=True),
            "RESET": Command(self._cmd_reset, addressed=True),
        }
        self._register_sources()

    @staticmethod
    def _build_shutters(config: Any, now: float) -> dict[str, Shutter]:
        if not isinstance(config, Mapping) or not config:
            raise ValueError(
                'shutters: must be a non-empty object such as {"fe": {"travel_time": 0.3}}'
            )
        shutters = {}
        for name, spec in entries(config):
            where = f"shutters.{name}."
            check_name(f"shutters.{name}", name)
            if not isinstance(spec, Mapping):
                raise ValueError(
                    f"shutters.{name}: must be an object such as {{'travel_time': 0.3}}"
                )
            check_keys(where, spec, ("travel_time", "open"))
            if "travel_time" not in spec:
                raise ValueError(f"{where}travel_time: missing (required, seconds)")
            travel = seconds_between(
                where, "travel_time", spec["travel_time"], MIN_TRAVEL_TIME, MAX_TRAVEL_TIME
            )
            is_open = optional_bool(where, spec, "open", False)
            shutters[name] = Shutter(name, travel, is_open, now)
        if not shutters:
            raise ValueError("shutters: must define at least one shutter")
        return shutters

    @staticmethod
    def _build_interlocks(config: Any) -> list[InterlockConfig]:
        if not isinstance(config, list):
            raise ValueError("interlocks: must be a list of {name, input, above, text} objects")
        return [
            InterlockConfig.from_dict(item, f"interlocks.{i}.") for i, item in enumerate(config)
        ]

    def _register_sources(self) -> None:
        def all_open() -> float:
            self.update()
            return 1.0 if all(s.fully_open for s in self.shutters.values()) else 0.0

        self.physics.register_source(f"{self.name}/shutter_open", all_open)
        for shutter in self.shutters.values():

            def one_open(shutter: Shutter = shutter) -> float:
                self.update()
                return 1.0 if shutter.fully_open else 0.0

            self.physics.register_source(f"{self.name}/{shutter.name}/open", one_open)

    # ------------------------------------------------------------ public API
    def update(self, now: float | None = None) -> float:
        """Advance every shutter to ``now`` (default: the clock) and apply the
        interlocks: an active interlock drives every shutter closed. Returns ``now``."""
        if now is None:
            now = self._clock()
        for shutter in self.shutters.values():
            shutter.update(now)
        if self._evaluating:
            return now  # a physics input read back one of our own sources
        self._evaluating = True
        try:
            tripped = bool(self.active_interlocks())
        finally:
            self._evaluating = False
        if tripped:
            for shutter in self.shutters.values():
                if shutter.target != 0.0 and shutter.fault_text is None:
                    shutter.command(False, now)
        return now

    def active_interlocks(self) -> list[str]:
        """The texts of the interlocks active now (the injected one first)."""
        texts = [] if self.manual_interlock is None else [self.manual_interlock]
        for ilk in self.interlocks:
            if self.physics.value(ilk.input) > ilk.above:
                texts.append(ilk.text)
        return texts

    def shutter(self, name: str) -> Shutter:
        """The shutter ``name``, updated to now; ``ValueError`` names the valid ones."""
        if name not in self.shutters:
            raise ValueError(
                f"PLC {self.name} has no shutter {name!r}: valid shutters are "
                + ", ".join(self.shutters)
            )
        self.update()
        return self.shutters[name]

    def inject_fault(self, kind: str, request: Mapping[str, Any]) -> str:
        """Fault injection from the control port; returns a description.

        ``interlock`` (optional ``text``): a manual interlock until ``clear``.
        ``stuck`` (``shutter``, optional with a single shutter): the shutter
        stops moving until ``clear``; a motion then ends in FAULT.
        """
        check_fault_kind(self.name, kind, self.fault_kinds)
        if kind == "interlock":
            text = request.get("text", "manual interlock (injected)")
            if not isinstance(text, str) or not text:
                raise ValueError(f"fault interlock: 'text' must be a string, got {text!r}")
            self.manual_interlock = printable(text)
            self.update()
            return f"interlock active: {self.manual_interlock}"
        name = request.get("shutter")
        if name is None and len(self.shutters) == 1:
            name = next(iter(self.shutters))
        if name is None:
            raise ValueError(
                f"fault stuck needs a 'shutter': valid shutters are {', '.join(self.shutters)}"
            )
        shutter = self.shutter(name)
        shutter.set_stuck(True, self._clock())
        return f"shutter {name} stuck: it no longer moves"

    def clear_faults(self) -> None:
        """Remove the manual interlock and free stuck shutters; a latched
        FAULT stays until RESET."""
        now = self.update()
        self.manual_interlock = None
        for shutter in self.shutters.values():
            if shutter.stuck:
                shutter.set_stuck(False, now)

    def active_faults(self) -> list[str]:
        """Injected faults in effect and latched shutter faults."""
        self.update()
        faults = [] if self.manual_interlock is None else [f"interlock: {self.manual_interlock}"]
        for name, shutter in self.shutters.items():
            if shutter.stuck:
                faults.append(f"shutter {name} stuck")
            if shutter.fault_text is not None:
                faults.append(f"fault on shutter {name}: {shutter.fault_text}")
        return faults

    def status(self) -> dict[str, Any]:
        """Every shutter's state and position, and the active interlocks."""
        self.update()
        return {
            "shutters": {
                name: {
                    "state": s.state,
                    "position": round(s.position, 6),
                    "stuck": s.stuck,
                    "fault": s.fault_text,
                }
                for name, s in self.shutters.items()
            },
            "interlocks": self.active_interlocks(),
        }

    # --------------------------------------------------------------- commands
    def _advance(self) -> float:
        return self.update()

    def _target(self, address: str, sep: str) -> Shutter:
        if not sep:
            raise PlcError(
                E_NO_SUCH_SHUTTER, "no such shutter: shutter name required (name:command)"
            )
        if address not in self.shutters:
            raise PlcError(
                E_NO_SUCH_SHUTTER, f"no such shutter: valid shutters are {' '.join(self.shutters)}"
            )
        return self.shutters[address]

    def _unaddressable(self, command: str) -> PlcError:
        return PlcError(E_NO_SUCH_SHUTTER, f"no such shutter: {command} is a PLC command")

    def _cmd_id(self, args: list[str]) -> str:
        no_args(args)
        return f"PLC-{len(self.shutters)} {FIRMWARE_VERSION}"

    def _cmd_shutters(self, args: list[str]) -> str:
        no_args(args)
        return " ".join(self.shutters)

    def _cmd_state(self, shutter: Shutter, args: list[str], now: float) -> str:
        no_args(args)
        return f"{shutter.state} {1 if self.active_interlocks() else 0}"

    def _cmd_ilk(self, shutter: Shutter, args: list[str], now: float) -> str:
        no_args(args)
        return "; ".join(self.active_interlocks()) or "NONE"

    def _cmd_fault(self, shutter: Shutter, args: list[str], now: float) -> str:
        no_args(args)
        return "NONE" if shutter.fault_text is None else printable(shutter.fault_text)

    def _cmd_open(self, shutter: Shutter, args: list[str], now: float) -> str:
        no_args(args)
        if shutter.fault_text is not None:
            raise PlcError(E_FAULT, f"shutter fault: {shutter.fault_text}; RESET first")
        active = self.active_interlocks()
        if active:
            raise PlcError(E_INTERLOCK, f"interlock active: {'; '.join(active)}")
        shutter.command(True, now)
        return "OK"

    def _cmd_close(self, shutter: Shutter, args: list[str], now: float) -> str:
        no_args(args)
        shutter.command(False, now)
        return "OK"

    def _cmd_reset(self, shutter: Shutter, args: list[str], now: float) -> str:
        no_args(args)
        shutter.reset(now)
        return "OK"
