"""Virtual SMC motion controller: the physics of its axes and its ASCII protocol.

Pure logic: no I/O, no ``tango``. The transport (``server.py``) feeds request
lines to :meth:`SmcController.handle_line` and writes the replies back. The
protocol is specified in ``docs/protocol-motion.md``.

Time is injected. :meth:`SmcAxis.update` advances the motion analytically to
a given instant: the moment a limit switch, the home switch or the target is
reached is computed exactly, so the result does not depend on how often the
axis is looked at, and unit tests can use a fake clock.

Positions are kept in two frames:

- the *mechanical* position (float steps), where the switches are;
- the *position register* = mechanical + offset, which is what the protocol
  reports (rounded to an integer) and moves to. ``POS`` and a home search
  change the offset, never the mechanical position.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tango_devices.simulators.common import (
    E_BAD_ARGUMENT,
    Command,
    CommandError,
    LineProtocol,
    check_fault_kind,
    check_keys,
    decimal_arg,
    is_int,
    no_args,
    non_empty_string,
    numbered,
    one_arg,
    optional_bool,
    printable,
    seconds_between,
)

# Re-exported: the codes and line limit every protocol shares, under this module too.
from tango_devices.simulators.common import E_UNKNOWN_COMMAND as E_UNKNOWN_COMMAND
from tango_devices.simulators.common import MAX_LINE as MAX_LINE

FIRMWARE_VERSION = "1.0"
MAX_STEPS = 2_000_000_000
MIN_ACCELERATION_TIME = 0.001
MAX_ACCELERATION_TIME = 10.0
HISTORY = 256  # motion changes an axis remembers (for position_at / crossing_time_between)

# Status word bits (docs/protocol-motion.md).
MOVING = 0x001
POWER = 0x002
LIM_NEG = 0x004
LIM_POS = 0x008
HOME_SW = 0x010
FAULT = 0x020
HOMED = 0x040
INTERLOCK = 0x080
HOMING = 0x100

# Error codes (E_UNKNOWN_COMMAND = 1 and E_BAD_ARGUMENT = 2 are every protocol's).
E_NO_SUCH_AXIS = 3
E_NOT_POWERED = 4
E_BUSY = 5
E_LIMIT = 6
E_FAULT = 7
E_INTERLOCK = 8


class SmcError(CommandError):
    """A request the controller refuses: becomes ``ERROR <code> <message>``."""


def _floor_round(x: float) -> int:
    """Round half up (``round`` rounds half to even, which a counter does not)."""
    return math.floor(x + 0.5)


# --------------------------------------------------------------- configuration
AXIS_KEYS = (
    "label",
    "position",
    "low_switch",
    "high_switch",
    "home_switch",
    "home_position",
    "velocity",
    "max_velocity",
    "acceleration_time",
    "powered",
)
_OPTIONAL_AXIS_KEYS = ("label", "powered")


@dataclass(frozen=True)
class AxisConfig:
    """Configuration of one axis; every position is in steps, switches are
    mechanical positions, ``position`` is the initial mechanical position (and
    register: the offset starts at 0)."""

    label: str
    position: int
    low_switch: int
    high_switch: int
    home_switch: int
    home_position: int
    velocity: int
    max_velocity: int
    acceleration_time: float
    powered: bool = True

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> AxisConfig:
        """Validate a config mapping; ``ValueError`` names the bad key with the
        ``where`` prefix (e.g. ``axes.3.``)."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{where.rstrip('.')}: must be an object with keys {', '.join(AXIS_KEYS)}"
            )
        check_keys(where, data, AXIS_KEYS)
        for key in AXIS_KEYS:
            if key not in data and key not in _OPTIONAL_AXIS_KEYS:
                raise ValueError(f"{where}{key}: missing (required)")

        def integer(key: str, positive: bool = False) -> int:
            value = data[key]
            if not is_int(value) or (positive and value <= 0):
                kind = "a positive integer" if positive else "an integer"
                raise ValueError(f"{where}{key}: must be {kind}, got {value!r}")
            if abs(value) > MAX_STEPS:
                raise ValueError(f"{where}{key}: must be within +-{MAX_STEPS}, got {value}")
            return value

        default_label = f"axis {where.rstrip('.').rsplit('.', 1)[-1]}"
        label = non_empty_string(where, "label", data.get("label", default_label))
        powered = optional_bool(where, data, "powered", True)
        acct = seconds_between(
            where,
            "acceleration_time",
            data["acceleration_time"],
            MIN_ACCELERATION_TIME,
            MAX_ACCELERATION_TIME,
        )
        cfg = cls(
            label=label,
            position=integer("position"),
            low_switch=integer("low_switch"),
            high_switch=integer("high_switch"),
            home_switch=integer("home_switch"),
            home_position=integer("home_position"),
            velocity=integer("velocity", positive=True),
            max_velocity=integer("max_velocity", positive=True),
            acceleration_time=acct,
            powered=powered,
        )
        if cfg.low_switch >= cfg.high_switch:
            raise ValueError(
                f"{where}low_switch: must be below high_switch ({cfg.high_switch}), "
                f"got {cfg.low_switch}"
            )
        if not cfg.low_switch < cfg.home_switch < cfg.high_switch:
            raise ValueError(
                f"{where}home_switch: must lie between low_switch ({cfg.low_switch}) and "
                f"high_switch ({cfg.high_switch}), got {cfg.home_switch}"
            )
        if not cfg.low_switch <= cfg.position <= cfg.high_switch:
            raise ValueError(
                f"{where}position: must lie between low_switch ({cfg.low_switch}) and "
                f"high_switch ({cfg.high_switch}), got {cfg.position}"
            )
        if cfg.velocity > cfg.max_velocity:
            raise ValueError(
                f"{where}velocity: must not exceed max_velocity ({cfg.max_velocity}), "
                f"got {cfg.velocity}"
            )
        return cfg


# --------------------------------------------------------------------- physics
@dataclass(frozen=True)
class _Segment:
    """Constant acceleration from ``t0`` for ``duration`` seconds (may be inf)."""

    t0: float
    p0: float
    v0: float
    a: float
    duration: float

    @property
    def t_end(self) -> float:
        return self.t0 + self.duration

    def position(self, t: float) -> float:
        dt = t - self.t0
        return self.p0 + self.v0 * dt + 0.5 * self.a * dt * dt

    def velocity(self, t: float) -> float:
        return self.v0 + self.a * (t - self.t0)


class _Profile:
    """A monotonic motion made of constant-acceleration segments.

    ``end_position`` (finite profiles) is where the motion ends exactly, so a
    move lands on its target step whatever the rounding of the segments.
    """

    def __init__(
        self,
        kind: str,
        direction: int,
        accel: float,
        segments: list[_Segment],
        end_position: float | None,
    ):
        self.kind = kind  # "move", "home" or "stop"
        self.direction = direction
        self.accel = accel  # magnitude, used by a decelerating stop
        self.segments = segments
        self.end_position = end_position

    @property
    def end_time(self) -> float:
        return self.segments[-1].t_end

    def _segment_at(self, t: float) -> _Segment:
        for seg in self.segments:
            if t <= seg.t_end:
                return seg
        return self.segments[-1]

    def position(self, t: float) -> float:
        if t >= self.end_time and self.end_position is not None:
            return self.end_position
        return self._segment_at(t).position(t)

    def velocity(self, t: float) -> float:
        if t >= self.end_time:
            return 0.0
        return self._segment_at(t).velocity(t)

    def crossing_time(self, x: float) -> float | None:
        """First instant the motion reaches ``x``, or None if it never does."""
        s = self.direction
        for seg in self.segments:
            distance = s * (x - seg.p0)
            if distance < 0:
                return None  # behind us: a monotonic motion never comes back
            seg_distance = (
                math.inf if math.isinf(seg.duration) else s * (seg.position(seg.t_end) - seg.p0)
            )
            if distance <= seg_distance:
                v, a = s * seg.v0, s * seg.a
                root = math.sqrt(max(v * v + 2.0 * a * distance, 0.0))
                dt = 0.0 if v + root == 0 else 2.0 * distance / (v + root)
                return seg.t0 + min(dt, seg.duration)
        if self.end_position is not None and s * (x - self.end_position) <= 0:
            return self.end_time
        return None

    def first_event(
        self, now: float, low_switch: float, high_switch: float, home_switch: float | None = None
    ) -> tuple[float, str, float] | None:
        """What ends this motion by ``now``, if anything: ``(when, what, where)``.

        ``what`` is ``"end"`` (the profile's own end, a move's target), ``"home"``
        (a home search reaching ``home_switch``) or ``"limit"`` (the switch in
        the direction of motion); at the same instant in that order.
        """
        limit = high_switch if self.direction > 0 else low_switch
        events: list[tuple[float, int, str, float]] = []  # (time, priority, what, where)
        if self.end_position is not None:
            events.append((self.end_time, 0, "end", self.end_position))
        if home_switch is not None and self.kind == "home":
            t_home = self.crossing_time(home_switch)
            if t_home is not None:
                events.append((t_home, 1, "home", float(home_switch)))
        t_limit = self.crossing_time(limit)
        if t_limit is not None:
            events.append((t_limit, 2, "limit", float(limit)))
        events = [e for e in events if e[0] <= now]
        if not events:
            return None
        when, _, what, where = min(events)
        return when, what, where


def _move_profile(t0: float, p0: float, target: float, velocity: float, acct: float) -> _Profile:
    """Trapezoid (triangle for short moves) from rest at ``p0`` to rest at ``target``."""
    s = 1 if target > p0 else -1
    distance = abs(target - p0)
    accel = velocity / acct
    ramp = velocity * acct / 2.0  # distance to reach the velocity
    if distance >= 2.0 * ramp:
        t_ramp, v_peak, t_cruise = acct, velocity, (distance - 2.0 * ramp) / velocity
    else:
        v_peak = math.sqrt(accel * distance)
        t_ramp, t_cruise = v_peak / accel, 0.0
    segs = [_Segment(t0, p0, 0.0, s * accel, t_ramp)]
    p1 = segs[0].position(segs[0].t_end)
    segs.append(_Segment(segs[0].t_end, p1, s * v_peak, 0.0, t_cruise))
    p2 = segs[1].position(segs[1].t_end)
    segs.append(_Segment(segs[1].t_end, p2, s * v_peak, -s * accel, t_ramp))
    return _Profile("move", s, accel, segs, target)


def _home_profile(t0: float, p0: float, direction: int, velocity: float, acct: float) -> _Profile:
    """Accelerate to the slew velocity, then run until something stops the search."""
    accel = velocity / acct
    ramp = _Segment(t0, p0, 0.0, direction * accel, acct)
    cruise = _Segment(ramp.t_end, ramp.position(ramp.t_end), direction * velocity, 0.0, math.inf)
    return _Profile("home", direction, accel, [ramp, cruise], None)


def _stop_profile(t0: float, p0: float, v0: float, accel: float, limit: float | None) -> _Profile:
    """Decelerate from ``v0`` to rest; never beyond ``limit`` (a move's target)."""
    s = 1 if v0 > 0 else -1
    duration = abs(v0) / accel
    end = p0 + v0 * duration / 2.0
    if limit is not None and s * (end - limit) > 0:
        end = limit
    return _Profile("stop", s, accel, [_Segment(t0, p0, v0, -s * accel, duration)], end)


class SmcAxis:
    """One axis: mechanics, switches, motion profile and the latched states."""

    def __init__(self, number: int, config: AxisConfig, now: float = 0.0):
        self.number = number
        self.config = config
        self.mechanical = float(config.position)
        self.offset = 0.0
        self.velocity = config.velocity
        self.acceleration_time = config.acceleration_time
        self.powered = config.powered
        self.homed = False
        self.interlock = False
        self.fault_text: str | None = None
        self._profile: _Profile | None = None
        self._now = now
        # (time, offset, profile or None, mechanical): every change of the motion or of
        # the offset, so that where the axis was at a past instant stays known exactly
        self._history: deque[tuple[float, float, _Profile | None, float]] = deque(maxlen=HISTORY)
        self._log(now)

    # ---------------------------------------------------------------- reading
    @property
    def register(self) -> float:
        return self.mechanical + self.offset

    @property
    def position(self) -> int:
        """The position register as reported: integer steps."""
        return _floor_round(self.register)

    @property
    def moving(self) -> bool:
        return self._profile is not None

    @property
    def homing(self) -> bool:
        return self._profile is not None and self._profile.kind == "home"

    @property
    def low_limit(self) -> bool:
        return self.mechanical <= self.config.low_switch

    @property
    def high_limit(self) -> bool:
        return self.mechanical >= self.config.high_switch

    @property
    def home_switch(self) -> bool:
        return abs(self.mechanical - self.config.home_switch) < 0.5

    @property
    def status_word(self) -> int:
        bits = (
            (self.moving, MOVING),
            (self.powered, POWER),
            (self.low_limit, LIM_NEG),
            (self.high_limit, LIM_POS),
            (self.home_switch, HOME_SW),
            (self.fault_text is not None, FAULT),
            (self.homed, HOMED),
            (self.interlock, INTERLOCK),
            (self.homing, HOMING),
        )
        return sum(mask for on, mask in bits if on)

    # ---------------------------------------------------------------- physics
    def update(self, now: float) -> None:
        """Advance the motion to ``now``, handling the first event on the way."""
        if now < self._now:
            now = self._now  # the clock is monotonic; ignore a step back
        self._now = now
        profile = self._profile
        if profile is None:
            return
        cfg = self.config
        event = profile.first_event(now, cfg.low_switch, cfg.high_switch, cfg.home_switch)
        if event is None:
            self.mechanical = profile.position(now)
            return
        when, what, where = event
        self.mechanical = where
        self._profile = None
        self._log(when)
        if what == "home":
            self._found_home()
            self._log(when)
        elif what == "limit" and profile.kind == "home":
            side = "high" if profile.direction > 0 else "low"
            self.fault_text = f"home switch not found: {side} limit switch reached"

    def _found_home(self) -> None:
        self.offset = self.config.home_position - self.mechanical
        self.homed = True

    def _halt(self) -> None:
        """Stop at once (hard stop); the search, if any, is abandoned."""
        if self._profile is not None:
            self._profile = None
            self._log(self._now)

    def _log(self, when: float) -> None:
        """Remember the motion as it is from ``when`` on (after a change)."""
        self._history.append((when, self.offset, self._profile, self.mechanical))

    # ----------------------------------------------------- the past (triggers)
    def position_at(self, when: float) -> float:
        """The position register at ``when`` (not after the last update), from
        the remembered motion: exact whatever happened since."""
        history = self._history
        i = max(bisect.bisect_right([h[0] for h in history], when) - 1, 0)
        _, offset, profile, mechanical = history[i]
        if profile is None:
            return mechanical + offset
        return profile.position(when) + offset

    def crossing_time_between(
        self, register: float, direction: int, after: float, until: float
    ) -> float | None:
        """The first instant in (``after``, ``until``] at which the axis, moving
        in ``direction`` (+1/-1), reaches ``register`` from before it; None if
        it does not (a jump of the register by POS or homing is no crossing)."""
        history = list(self._history)
        for i, (t0, offset, profile, _) in enumerate(history):
            t1 = history[i + 1][0] if i + 1 < len(history) else math.inf
            lo, hi = max(t0, after), min(t1, until)
            if profile is None or lo >= hi or profile.direction != direction:
                continue
            target = register - offset
            if direction * (target - profile.position(lo)) <= 0:
                continue  # already there or beyond at the start of this stretch
            when = profile.crossing_time(target)
            if when is not None and lo < when <= hi:
                return when
        return None

    def _check_can_move(self, direction: int) -> None:
        if self.interlock:
            raise SmcError(E_INTERLOCK, "interlock active")
        if self.fault_text is not None:
            raise SmcError(E_FAULT, f"axis fault: {self.fault_text}")
        if not self.powered:
            raise SmcError(E_NOT_POWERED, "axis not powered")
        if self.moving:
            raise SmcError(E_BUSY, "axis busy")
        if direction > 0 and self.high_limit:
            raise SmcError(E_LIMIT, "high limit switch active")
        if direction < 0 and self.low_limit:
            raise SmcError(E_LIMIT, "low limit switch active")

    # --------------------------------------------------------------- commands
    def move(self, target: int, now: float) -> None:
        """Absolute move of the position register to ``target`` steps."""
        self.update(now)
        target_mech = target - self.offset
        direction = (target_mech > self.mechanical) - (target_mech < self.mechanical)
        self._check_can_move(direction)
        if direction == 0:
            return
        self._profile = _move_profile(
            now, self.mechanical, target_mech, self.velocity, self.acceleration_time
        )
        self._log(now)

    def home(self, direction: int, now: float) -> None:
        """Search the home switch moving in ``direction`` (+1 or -1)."""
        self.update(now)
        self._check_can_move(direction)
        if self.home_switch:
            self._found_home()
            self._log(now)
            return
        self._profile = _home_profile(
            now, self.mechanical, direction, self.velocity, self.acceleration_time
        )
        self._log(now)

    def stop(self, now: float) -> None:
        """Decelerating stop; ends a home search without homing."""
        self.update(now)
        profile = self._profile
        if profile is None or profile.kind == "stop":
            return
        v0 = profile.velocity(now)
        if profile.direction * v0 <= 0.0:
            self._halt()
            return
        limit = profile.end_position if profile.kind == "move" else None
        self._profile = _stop_profile(now, self.mechanical, v0, profile.accel, limit)
        self._log(now)

    def set_position(self, value: int, now: float) -> None:
        """Calibrate: the register reads ``value`` from now on; nothing moves."""
        self.update(now)
        if self.moving:
            raise SmcError(E_BUSY, "axis busy")
        self.offset = value - self.mechanical
        self._log(now)

    def set_power(self, on: bool, now: float) -> None:
        self.update(now)
        if not on:
            self._halt()
        self.powered = on

    def set_interlock(self, on: bool, now: float) -> None:
        """The external interlock input: blocks motion and stops it at once."""
        self.update(now)
        if on:
            self._halt()
        self.interlock = on

    def latch_fault(self, text: str, now: float) -> None:
        """Latch an axis fault (stops the axis at once) until :meth:`reset`."""
        self.update(now)
        self._halt()
        self.fault_text = text

    def reset(self, now: float) -> None:
        """Clear the latched fault (the simulator's faults have no lasting cause)."""
        self.update(now)
        self.fault_text = None

    def set_velocity(self, value: int) -> None:
        if not 0 < value <= self.config.max_velocity:
            raise SmcError(
                E_BAD_ARGUMENT,
                f"bad argument: velocity must be 1..{self.config.max_velocity} steps/s, "
                f"got {value}",
            )
        self.velocity = value

    def set_acceleration_time(self, value: float) -> None:
        if not MIN_ACCELERATION_TIME <= value <= MAX_ACCELERATION_TIME:
            raise SmcError(
                E_BAD_ARGUMENT,
                f"bad argument: acceleration time must be {MIN_ACCELERATION_TIME:g}.."
                f"{MAX_ACCELERATION_TIME:g} s, got {value:g}",
            )
        self.acceleration_time = value


# -------------------------------------------------------------------- protocol
_INT_RE = re.compile(r"[+-]?\d+")
_DECIMAL_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _int_arg(args: list[str]) -> int:
    text = one_arg(args, "an integer number of steps")
    if not _INT_RE.fullmatch(text):
        raise SmcError(E_BAD_ARGUMENT, f"bad argument: not an integer: {text}")
    value = int(text)
    if abs(value) > MAX_STEPS:
        raise SmcError(E_BAD_ARGUMENT, f"bad argument: out of range (+-{MAX_STEPS}): {text}")
    return value


class SmcController(LineProtocol):
    """A virtual multi-axis SMC controller speaking the ASCII protocol.

    ``config`` is the controller's configuration mapping: ``{"axes": {"1":
    {...}, ...}}`` (the ``kind`` and ``port`` keys of the simulator's config
    are accepted and ignored). Raises ``ValueError`` naming the bad key
    (``axes.3.velocity: ...``) if it is invalid.
    """

    kind = "smc"
    fault_kinds = ("axis_fault", "interlock")
    addressed = True  # ``n:COMMAND``: an axis command, or a controller command without ``n:``
    printable_errors = True

    def __init__(
        self, name: str, config: Mapping[str, Any], clock: Callable[[], float] = time.monotonic
    ):
        self.name = name
        self._clock = clock
        self.axes = self._build_axes(config, clock())
        self._commands: dict[str, Command] = {
            "?ID": Command(self._cmd_id),
            "?AXES": Command(self._cmd_axes),
            "?POS": Command(self._cmd_query_pos, addressed=True),
            "?STATUS": Command(self._cmd_query_status, addressed=True),
            "?PS": Command(self._cmd_query_ps, addressed=True),
            "?VEL": Command(self._cmd_query_vel, addressed=True),
            "VEL": Command(self._cmd_vel, addressed=True),
            "?ACCT": Command(self._cmd_query_acct, addressed=True),
            "ACCT": Command(self._cmd_acct, addressed=True),
            "MOVE": Command(self._cmd_move, addressed=True),
            "STOP": Command(self._cmd_stop, addressed=True),
            "HOME": Command(self._cmd_home, addressed=True),
            "POS": Command(self._cmd_pos, addressed=True),
            "POWER": Command(self._cmd_power, addressed=True),
            "?POWER": Command(self._cmd_query_power, addressed=True),
            "?FAULT": Command(self._cmd_query_fault, addressed=True),
            "RESET": Command(self._cmd_reset, addressed=True),
        }

    @staticmethod
    def _build_axes(config: Mapping[str, Any], now: float) -> dict[int, SmcAxis]:
        if not isinstance(config, Mapping):
            raise ValueError("must be an object with an 'axes' object")
        check_keys("", config, ("kind", "port", "axes"))
        axes_cfg = config.get("axes")
        if not isinstance(axes_cfg, Mapping) or not axes_cfg:
            raise ValueError(
                "axes: must be a non-empty object mapping axis numbers ('1', '2', ...) to axes"
            )
        return {
            n: SmcAxis(n, AxisConfig.from_dict(axis_cfg, f"axes.{n}."), now)
            for n, axis_cfg in numbered("axes", axes_cfg, "axis").items()
        }

    # ------------------------------------------------------------ public API
    def axis(self, number: int) -> SmcAxis:
        """The axis ``number``, updated to now; ``ValueError`` names the valid axes."""
        if not is_int(number) or number not in self.axes:
            raise ValueError(
                f"controller {self.name} has no axis {number!r}: valid axes are 1..{len(self.axes)}"
            )
        axis = self.axes[number]
        axis.update(self._clock())
        return axis

    def inject_axis_fault(self, axis: int, text: str) -> None:
        """Latch a fault on ``axis`` (stops it); it stays until ``n:RESET``."""
        self.axis(axis).latch_fault(printable(text) or "injected fault", self._clock())

    def set_interlock(self, axis: int, on: bool) -> None:
        """Drive the external interlock input of ``axis``."""
        self.axis(axis).set_interlock(on, self._clock())

    def inject_fault(self, kind: str, request: Mapping[str, Any]) -> str:
        """Fault injection from the control port; returns a description.

        ``ValueError`` names the problem and the valid choices.
        """
        check_fault_kind(self.name, kind, self.fault_kinds)
        if "axis" not in request:
            raise ValueError(f"fault {kind} needs an 'axis': valid axes are 1..{len(self.axes)}")
        number = request["axis"]
        if kind == "axis_fault":
            text = request.get("text", "injected fault")
            if not isinstance(text, str):
                raise ValueError(f"fault axis_fault: 'text' must be a string, got {text!r}")
            self.inject_axis_fault(number, text)
            return f"axis {number} fault latched: {text}"
        self.set_interlock(number, True)
        return f"axis {number} interlock active"

    def clear_faults(self) -> None:
        """Release every interlock; latched axis faults stay until RESET."""
        for number in self.axes:
            self.set_interlock(number, False)

    def active_faults(self) -> list[str]:
        """Injected faults in effect: interlocks and latched axis faults."""
        faults = []
        for number, axis in self.axes.items():
            if axis.interlock:
                faults.append(f"interlock on axis {number}")
            if axis.fault_text is not None:
                faults.append(f"fault on axis {number}: {axis.fault_text}")
        return faults

    def status(self) -> dict[str, Any]:
        """Every axis's position, status word and fault, for the control port."""
        now = self._clock()
        axes = {}
        for number, axis in self.axes.items():
            axis.update(now)
            axes[str(number)] = {
                "label": axis.config.label,
                "position": axis.position,
                "status": f"0x{axis.status_word:04X}",
                "moving": axis.moving,
                "interlock": axis.interlock,
                "fault": axis.fault_text,
            }
        return {"axes": axes}

    # ---------------------------------------------------------------- parsing
    def _echo_address(self, address: str) -> str:
        return str(int(address)) if _is_number(address) else address

    def _advance(self) -> float:
        now = self._clock()
        for axis in self.axes.values():
            axis.update(now)
        return now

    def _target(self, address: str, sep: str) -> SmcAxis:
        if not sep:
            raise SmcError(E_NO_SUCH_AXIS, "no such axis: axis number required (n:command)")
        if not _is_number(address) or int(address) not in self.axes:
            raise SmcError(E_NO_SUCH_AXIS, "no such axis")
        return self.axes[int(address)]

    def _unaddressable(self, command: str) -> SmcError:
        return SmcError(E_NO_SUCH_AXIS, f"no such axis: {command} is a controller command")

    # --------------------------------------------------------------- commands
    def _cmd_id(self, args: list[str]) -> str:
        no_args(args)
        return f"SMC-{len(self.axes)} {FIRMWARE_VERSION}"

    def _cmd_axes(self, args: list[str]) -> str:
        no_args(args)
        return str(len(self.axes))

    def _cmd_query_pos(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        return str(axis.position)

    def _cmd_query_status(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        return f"0x{axis.status_word:04X}"

    def _cmd_query_ps(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        return f"{axis.position} 0x{axis.status_word:04X}"

    def _cmd_query_vel(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        return str(axis.velocity)

    def _cmd_vel(self, axis: SmcAxis, args: list[str], now: float) -> str:
        axis.set_velocity(_int_arg(args))
        return "OK"

    def _cmd_query_acct(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        return f"{axis.acceleration_time:g}"

    def _cmd_acct(self, axis: SmcAxis, args: list[str], now: float) -> str:
        text = decimal_arg(args, "a number of seconds", _DECIMAL_RE)
        axis.set_acceleration_time(float(text))
        return "OK"

    def _cmd_move(self, axis: SmcAxis, args: list[str], now: float) -> str:
        axis.move(_int_arg(args), now)
        return "OK"

    def _cmd_stop(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        axis.stop(now)
        return "OK"

    def _cmd_home(self, axis: SmcAxis, args: list[str], now: float) -> str:
        text = one_arg(args, "a direction, +1 or -1")
        if text not in ("+1", "1", "-1"):
            raise SmcError(E_BAD_ARGUMENT, f"bad argument: direction must be +1 or -1, got {text}")
        axis.home(-1 if text == "-1" else 1, now)
        return "OK"

    def _cmd_pos(self, axis: SmcAxis, args: list[str], now: float) -> str:
        axis.set_position(_int_arg(args), now)
        return "OK"

    def _cmd_power(self, axis: SmcAxis, args: list[str], now: float) -> str:
        text = one_arg(args, "ON or OFF").upper()
        if text not in ("ON", "OFF"):
            raise SmcError(E_BAD_ARGUMENT, f"bad argument: expected ON or OFF, got {text}")
        axis.set_power(text == "ON", now)
        return "OK"

    def _cmd_query_power(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        return "ON" if axis.powered else "OFF"

    def _cmd_query_fault(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        return "NONE" if axis.fault_text is None else printable(axis.fault_text)

    def _cmd_reset(self, axis: SmcAxis, args: list[str], now: float) -> str:
        no_args(args)
        axis.reset(now)
        return "OK"
