"""Virtual EPICS IOC: vacuum gauges, vacuum valves and motor records over Channel Access.

Two halves, as for the other controller kinds:

- the *model* (:class:`GaugeModel`, :class:`ValveModel`, :class:`MotorRecordModel`,
  gathered in :class:`IocController`): pure logic with an injected clock, no
  I/O, so unit tests drive it with a fake clock;
- the *transport* (:class:`IocPort`): a caproto asyncio Channel Access server
  on the simulator's listen address, its PVs kept in step with the model.

The PVs, the fault kinds and how to point a CA client at the simulator are
described in ``docs/epics-ioc.md``. No ``tango`` import, no driver import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from caproto import (
    AccessRights,
    AlarmSeverity,
    AlarmStatus,
    ChannelAlarm,
    ChannelData,
    ChannelDouble,
    ChannelEnum,
    ChannelInteger,
    ChannelShort,
    ChannelString,
    SkipWrite,
)
from caproto import Beacon as _Beacon
from caproto.asyncio.server import Context as _CaprotoContext
from caproto.asyncio.utils import _TransportWrapper

from tango_devices.simulators.common import (
    check_fault_kind,
    check_keys,
    check_name,
    entries,
    optional_bool,
)
from tango_devices.simulators.physics import BeamlinePhysics
from tango_devices.simulators.smc import _move_profile, _Profile, _stop_profile

log = logging.getLogger("beamline-sim.ioc")

Clock = Callable[[], float]

KIND = "epics_ioc"
#: period of the loop that copies the model into the PVs (RBV at 50 Hz while moving)
UPDATE_PERIOD = 0.02
#: a gauge reading (with its noise) is refreshed this often: once a second, as
#: a vacuum gauge's record is usually scanned ("SCAN 1 second"); at 0.2 s every
#: gauge sent five CA updates a second into its device server at rest (16
#: gauges: a tenth of a core in the gauges alone at 200 servers)
GAUGE_SAMPLE_PERIOD = 1.0
#: where the IOC sends its beacons (to the CA repeater on this host, as every IOC does)
BEACON_PORT = int(os.environ.get("EPICS_CA_REPEATER_PORT", "5065"))
MAX_BEACON_PERIOD = 15.0

# Motor record MSTA bits (motor record documentation, "MSTA": bit n is mask 1 << (n-1)).
MSTA_DIRECTION = 0x0001  # bit 1: last direction of motion was positive
MSTA_DONE = 0x0002  # bit 2: motion is complete
MSTA_PLUS_LS = 0x0004  # bit 3: plus (high) limit switch active
MSTA_PROBLEM = 0x0200  # bit 10: driver or hardware problem
MSTA_MOVING = 0x0400  # bit 11: non-zero velocity
MSTA_MINUS_LS = 0x2000  # bit 14: minus (low) limit switch active
MSTA_HOMED = 0x4000  # bit 15: the motor has been homed

SPMG_STOP, SPMG_PAUSE, SPMG_MOVE, SPMG_GO = range(4)
SPMG_NAMES = ("Stop", "Pause", "Move", "Go")
CNEN_NAMES = ("Disable", "Enable")
GAUGE_STAT_NAMES = ("OK", "LEAK")
VALVE_CMD_NAMES = ("CLOSE", "OPEN")
VALVE_STATES = ("CLOSED", "OPEN", "MOVING", "STUCK")
MIN_ACCL = 0.001
MAX_ACCL = 10.0

# EPICS record-name characters, without '.', which separates the field name
_PV_RE = re.compile(r"[A-Za-z0-9_:;<>\[\]-]+")


# ================================================================= configuration
def _number(where: str, data: Mapping[str, Any], key: str, default: float | None = None) -> float:
    if key not in data:
        if default is None:
            raise ValueError(f"{where}{key}: missing (required)")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}{key}: must be a number, got {value!r}")
    return float(value)


def _positive(where: str, data: Mapping[str, Any], key: str, default: float | None = None):
    value = _number(where, data, key, default)
    if value <= 0:
        raise ValueError(f"{where}{key}: must be above 0, got {value:g}")
    return value


def _pv(where: str, data: Mapping[str, Any]) -> str:
    value = data.get("pv")
    if value is None:
        raise ValueError(f'{where}pv: missing (required), e.g. "VAC:GAUGE1"')
    if not isinstance(value, str) or not _PV_RE.fullmatch(value):
        raise ValueError(
            f"{where}pv: must be a record name of letters, digits and _ - : ; < > [ ] "
            f"(no '.': it separates the field), got {value!r}"
        )
    return value


def _section(where: str, data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where.rstrip('.')}: must be an object")
    return data


@dataclass(frozen=True)
class GaugeConfig:
    """A vacuum gauge; pressures in mbar, ``time_constant`` in seconds."""

    pv: str
    base_pressure: float
    leak_pressure: float
    time_constant: float
    high: float
    hihi: float
    noise: float = 0.02

    KEYS = ("pv", "base_pressure", "leak_pressure", "time_constant", "high", "hihi", "noise")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> GaugeConfig:
        """Validate; ``ValueError`` names the key with the ``where`` prefix."""
        data = _section(where, data)
        check_keys(where, data, cls.KEYS)
        cfg = cls(
            pv=_pv(where, data),
            base_pressure=_positive(where, data, "base_pressure"),
            leak_pressure=_positive(where, data, "leak_pressure"),
            time_constant=_positive(where, data, "time_constant"),
            high=_positive(where, data, "high"),
            hihi=_positive(where, data, "hihi"),
            noise=_number(where, data, "noise", 0.02),
        )
        if cfg.leak_pressure <= cfg.base_pressure:
            raise ValueError(
                f"{where}leak_pressure: must be above base_pressure ({cfg.base_pressure:g}), "
                f"got {cfg.leak_pressure:g}"
            )
        if cfg.hihi <= cfg.high:
            raise ValueError(f"{where}hihi: must be above high ({cfg.high:g}), got {cfg.hihi:g}")
        if not 0.0 <= cfg.noise <= 0.5:
            raise ValueError(f"{where}noise: must be a fraction 0..0.5, got {cfg.noise:g}")
        return cfg


@dataclass(frozen=True)
class ValveConfig:
    """A pneumatic vacuum valve; ``open`` is its position at start-up."""

    pv: str
    travel_time: float
    open: bool = False

    KEYS = ("pv", "travel_time", "open")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ValveConfig:
        data = _section(where, data)
        check_keys(where, data, cls.KEYS)
        travel = _positive(where, data, "travel_time")
        if travel > 60:
            raise ValueError(f"{where}travel_time: must be at most 60 s, got {travel:g}")
        is_open = optional_bool(where, data, "open", False)
        return cls(_pv(where, data), travel, is_open)


@dataclass(frozen=True)
class MotorConfig:
    """A motor record; positions in engineering units (dial = user, OFF starts at 0),
    ``acceleration`` in seconds to reach the velocity (the record's ACCL)."""

    pv: str
    egu: str
    mres: float
    position: float
    low_switch: float
    high_switch: float
    home: float
    velocity: float
    max_velocity: float
    acceleration: float
    powered: bool = True

    KEYS = (
        "pv",
        "egu",
        "mres",
        "position",
        "low_switch",
        "high_switch",
        "home",
        "velocity",
        "max_velocity",
        "acceleration",
        "powered",
    )

    @classmethod
    def from_dict(cls, data: Any, where: str) -> MotorConfig:
        data = _section(where, data)
        check_keys(where, data, cls.KEYS)
        egu = data.get("egu", "")
        if not isinstance(egu, str) or len(egu) > 15:
            raise ValueError(f"{where}egu: must be a unit of at most 15 characters, got {egu!r}")
        powered = optional_bool(where, data, "powered", True)
        cfg = cls(
            pv=_pv(where, data),
            egu=egu,
            mres=_positive(where, data, "mres"),
            position=_number(where, data, "position"),
            low_switch=_number(where, data, "low_switch"),
            high_switch=_number(where, data, "high_switch"),
            home=_number(where, data, "home"),
            velocity=_positive(where, data, "velocity"),
            max_velocity=_positive(where, data, "max_velocity"),
            acceleration=_positive(where, data, "acceleration"),
            powered=powered,
        )
        if cfg.low_switch >= cfg.high_switch:
            raise ValueError(
                f"{where}low_switch: must be below high_switch ({cfg.high_switch:g}), "
                f"got {cfg.low_switch:g}"
            )
        for key in ("position", "home"):
            value = getattr(cfg, key)
            if not cfg.low_switch <= value <= cfg.high_switch:
                raise ValueError(
                    f"{where}{key}: must lie between low_switch ({cfg.low_switch:g}) and "
                    f"high_switch ({cfg.high_switch:g}), got {value:g}"
                )
        if cfg.velocity > cfg.max_velocity:
            raise ValueError(
                f"{where}velocity: must not exceed max_velocity ({cfg.max_velocity:g}), "
                f"got {cfg.velocity:g}"
            )
        if not MIN_ACCL <= cfg.acceleration <= MAX_ACCL:
            raise ValueError(
                f"{where}acceleration: must be {MIN_ACCL:g}..{MAX_ACCL:g} s, "
                f"got {cfg.acceleration:g}"
            )
        return cfg


# ======================================================================== models
class GaugeModel:
    """A vacuum gauge: the pressure relaxes, in log10(pressure), towards its
    target with the configured time constant: the base pressure normally, the
    leak pressure while a leak is injected. Readings carry a relative noise."""

    def __init__(self, key: str, config: GaugeConfig, now: float, rng: random.Random):
        self.key = key
        self.config = config
        self.leak = False
        self._rng = rng
        self._log_p0 = math.log10(config.base_pressure)
        self._t0 = now
        self._sample: tuple[float, float] | None = None  # (time, reading)

    def _target(self) -> float:
        return self.config.leak_pressure if self.leak else self.config.base_pressure

    def pressure(self, now: float) -> float:
        """The true pressure at ``now`` (mbar), without noise."""
        target = math.log10(self._target())
        decay = math.exp(-max(now - self._t0, 0.0) / self.config.time_constant)
        return 10.0 ** (target + (self._log_p0 - target) * decay)

    def reading(self, now: float) -> float:
        """What the gauge shows: the pressure with its noise, refreshed every
        :data:`GAUGE_SAMPLE_PERIOD`."""
        if (
            self._sample is None
            or now - self._sample[0] >= GAUGE_SAMPLE_PERIOD
            or now < self._sample[0]
        ):
            noise = self.config.noise * self._rng.gauss(0.0, 1.0) if self.config.noise else 0.0
            self._sample = (now, self.pressure(now) * max(1.0 + noise, 0.5))
        return self._sample[1]

    def set_leak(self, on: bool, now: float) -> None:
        """Start (or stop) a leak: the pressure heads for the leak (or base) pressure."""
        self._log_p0 = math.log10(self.pressure(now))
        self._t0 = now
        self.leak = on
        self._sample = None

    def alarm(self, value: float) -> tuple[AlarmStatus, AlarmSeverity]:
        """Alarm of a reading: HIHI (major) from ``hihi`` up, HIGH (minor) from ``high`` up."""
        if value >= self.config.hihi:
            return AlarmStatus.HIHI, AlarmSeverity.MAJOR_ALARM
        if value >= self.config.high:
            return AlarmStatus.HIGH, AlarmSeverity.MINOR_ALARM
        return AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM


class ValveModel:
    """A valve that travels between closed (0) and open (1) in ``travel_time``.

    Stuck (fault), it keeps its position: a command (or the one in progress)
    reports MOVING for the travel time, then STUCK. Freed, it completes the
    last command.
    """

    def __init__(self, key: str, config: ValveConfig, now: float):
        self.key = key
        self.config = config
        self.commanded_open = config.open
        self.stuck = False
        self._f0 = 1.0 if config.open else 0.0
        self._t0 = now
        self._command_time = now - config.travel_time

    def _target(self) -> float:
        return 1.0 if self.commanded_open else 0.0

    def open_fraction(self, now: float) -> float:
        """0.0 closed .. 1.0 fully open."""
        if self.stuck:
            return self._f0
        target = self._target()
        step = max(now - self._t0, 0.0) / self.config.travel_time
        if target > self._f0:
            return min(self._f0 + step, target)
        return max(self._f0 - step, target)

    def state(self, now: float) -> str:
        """CLOSED, OPEN, MOVING or STUCK."""
        fraction = self.open_fraction(now)
        if fraction == self._target():
            return "OPEN" if fraction == 1.0 else "CLOSED"
        if self.stuck and now >= self._command_time + self.config.travel_time:
            return "STUCK"
        return "MOVING"

    def command(self, open_: bool, now: float) -> None:
        """Open (True) or close (False)."""
        self._f0 = self.open_fraction(now)
        self._t0 = now
        if open_ != self.commanded_open or self._f0 != (1.0 if open_ else 0.0):
            self._command_time = now
        self.commanded_open = open_

    def set_stuck(self, on: bool, now: float) -> None:
        self._f0 = self.open_fraction(now)
        self._t0 = now
        self.stuck = on


class MotorRecordModel:
    """The mechanics behind a motor record, in engineering units.

    Motion is trapezoidal (the SMC simulator's profiles); reaching a limit
    switch stops the motor at once at the switch. A new target while moving
    stops the motor, then moves it to the new target (as the motor record
    does). ``dial`` is the exact dial position; DRBV is it rounded to MRES.
    """

    def __init__(self, key: str, config: MotorConfig, now: float):
        self.key = key
        self.config = config
        self.dial = float(config.position)
        self.dval = self.dial  # target, dial
        self.offset = 0.0
        self.velocity = config.velocity
        self.acceleration = config.acceleration
        self.enabled = config.powered
        self.spmg = SPMG_GO
        self.homed = False
        self.problem = False
        self.direction = 1
        self.home_direction = 0  # +1 / -1 while homing (HOMF / HOMR read 1)
        self._profile: _Profile | None = None
        self._pending: float | None = None  # target to move to once the stop ends
        self._pending_home = 0
        self._now = now

    # ------------------------------------------------------------- reading
    @property
    def drbv(self) -> float:
        mres = self.config.mres
        return round(self.dial / mres) * mres

    @property
    def rbv(self) -> float:
        return self.drbv + self.offset

    @property
    def val(self) -> float:
        return self.dval + self.offset

    @property
    def user_position(self) -> float:
        return self.dial + self.offset

    @property
    def moving(self) -> bool:
        return self._profile is not None

    @property
    def high_limit(self) -> bool:
        return self.dial >= self.config.high_switch

    @property
    def low_limit(self) -> bool:
        return self.dial <= self.config.low_switch

    @property
    def msta(self) -> int:
        bits = (
            (self.direction > 0, MSTA_DIRECTION),
            (not self.moving, MSTA_DONE),
            (self.high_limit, MSTA_PLUS_LS),
            (self.problem, MSTA_PROBLEM),
            (self.moving, MSTA_MOVING),
            (self.low_limit, MSTA_MINUS_LS),
            (self.homed, MSTA_HOMED),
        )
        return sum(mask for on, mask in bits if on)

    def alarm(self) -> tuple[AlarmStatus, AlarmSeverity]:
        """The record's alarm: STATE/MAJOR on a problem, HWLIMIT/MINOR on a limit switch."""
        if self.problem:
            return AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM
        if self.high_limit or self.low_limit:
            return AlarmStatus.HWLIMIT, AlarmSeverity.MINOR_ALARM
        return AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM

    # ------------------------------------------------------------- physics
    def update(self, now: float) -> None:
        """Advance the motion to ``now`` (a stop then a pending move, if need be)."""
        now = max(now, self._now)
        self._now = now
        while self._profile is not None:
            profile = self._profile
            event = profile.first_event(now, self.config.low_switch, self.config.high_switch)
            if event is None:
                self.dial = profile.position(now)
                return
            when, what, where = event
            self.dial = where
            self._profile = None
            if what == "limit":
                self._pending = None
                self._end_motion(homed=False)
            elif self._pending is not None:
                target, self._pending = self._pending, None
                self._start(target, when, self._pending_home)
            else:
                self._end_motion(homed=self.home_direction != 0, reached=profile.kind == "move")

    def _end_motion(self, homed: bool, reached: bool = False) -> None:
        """A motion ended: at its target (``reached``), or stopped short (VAL
        then follows RBV, except in Pause, which keeps the target)."""
        if homed:
            self.homed = True
        self.home_direction = 0
        if self.spmg == SPMG_MOVE:
            self.spmg = SPMG_PAUSE
        if not reached and self.spmg != SPMG_PAUSE:
            self.dval = self.drbv

    def _can_move(self) -> bool:
        return self.enabled and not self.problem and self.spmg in (SPMG_MOVE, SPMG_GO)

    def _start(self, target: float, now: float, home_direction: int) -> None:
        """Start a move from rest at ``now`` (``update`` has run)."""
        self.home_direction = home_direction
        distance = target - self.dial
        if abs(distance) < 1e-12:
            self.dial = target
            self._end_motion(homed=home_direction != 0, reached=True)
            return
        direction = 1 if distance > 0 else -1
        if (direction > 0 and self.high_limit) or (direction < 0 and self.low_limit):
            self._end_motion(homed=False)  # further into an active limit: nothing moves
            return
        self.direction = direction
        self._profile = _move_profile(now, self.dial, target, self.velocity, self.acceleration)

    def _go(self, target: float, now: float, home_direction: int = 0) -> None:
        if self._profile is None:
            self._start(target, now, home_direction)
            return
        # moving: stop first, then go to the new target (the motor record's retarget)
        self._pending = target
        self._pending_home = home_direction
        self.home_direction = 0
        self._decelerate(now)
        if self._profile is None:  # it was not moving yet: go at once
            self._pending = None
            self._start(target, now, home_direction)

    def _decelerate(self, now: float) -> None:
        """Replace the motion by a decelerating stop (never beyond a move's target)."""
        profile = self._profile
        if profile is None or profile.kind == "stop":
            return
        v0 = profile.velocity(now)
        if profile.direction * v0 <= 0.0:
            self._profile = None
            if self._pending is None:
                self._end_motion(homed=False)
            return
        self._profile = _stop_profile(now, self.dial, v0, profile.accel, profile.end_position)

    def _halt(self) -> None:
        """Stop at once (amplifier off, problem)."""
        self._profile = None
        self._pending = None
        self.home_direction = 0
        self.dval = self.drbv

    # ------------------------------------------------------------ commands
    def move_dial(self, target: float, now: float) -> None:
        """DVAL (or VAL - OFF) written: move there if motion is allowed."""
        self.update(now)
        if not math.isfinite(target):
            return
        self.dval = target
        if self.spmg == SPMG_PAUSE:
            return  # kept as the target until Move or Go
        if not self._can_move():
            self.dval = self.drbv  # refused: VAL goes back to the read-back
            return
        self._go(target, now)

    def move_user(self, target: float, now: float) -> None:
        self.move_dial(target - self.offset, now)

    def stop(self, now: float) -> None:
        """STOP written: decelerate; VAL becomes the position where it stops."""
        self.update(now)
        self._pending = None
        if self._profile is None:
            self.dval = self.drbv
            return
        self._decelerate(now)
        self.home_direction = 0

    def home(self, direction: int, now: float) -> None:
        """HOMF (+1) / HOMR (-1) written: move to the home position, then set homed."""
        self.update(now)
        if not self._can_move():
            return
        self.dval = self.config.home
        self._go(self.config.home, now, direction)

    def set_velocity(self, value: float) -> None:
        """VELO, limited to 0 < VELO <= VMAX (an invalid value is ignored)."""
        if math.isfinite(value) and value > 0:
            self.velocity = min(value, self.config.max_velocity)

    def set_acceleration(self, value: float) -> None:
        if math.isfinite(value):
            self.acceleration = min(max(value, MIN_ACCL), MAX_ACCL)

    def set_offset(self, value: float, now: float) -> None:
        self.update(now)
        if math.isfinite(value):
            self.offset = value

    def set_enabled(self, on: bool, now: float) -> None:
        """CNEN: disabling stops the motor at once."""
        self.update(now)
        if not on:
            self._halt()
        self.enabled = on

    def set_spmg(self, mode: int, now: float) -> None:
        """SPMG: Stop and Pause decelerate; Move and Go resume towards VAL."""
        self.update(now)
        if mode not in range(4):
            return
        self.spmg = mode
        if mode in (SPMG_STOP, SPMG_PAUSE):
            self._pending = None
            self.home_direction = 0
            self._decelerate(now)
            if mode == SPMG_STOP and self._profile is None:
                self.dval = self.drbv
            return
        if self._profile is None and self._can_move():
            if abs(self.dval - self.dial) >= self.config.mres / 2:
                self._start(self.dval, now, 0)
            elif mode == SPMG_MOVE:
                self.spmg = SPMG_PAUSE

    def set_problem(self, on: bool, now: float) -> None:
        """The fault ``motor_problem``: MSTA problem bit, the motor stops at once."""
        self.update(now)
        if on:
            self._halt()
        self.problem = on


# ==================================================================== controller
class IocController:
    """Every gauge, valve and motor record of one IOC, and its faults.

    ``config`` is the controller's section of the simulator configuration;
    ``ValueError`` names the bad key relative to it (``gauges.gauge1.high: ...``).
    """

    kind = KIND
    fault_kinds = ("vacuum_leak", "valve_stuck", "motor_problem")
    KEYS = ("kind", "port", "prefix", "gauges", "valves", "motors")

    def __init__(self, name: str, config: Mapping[str, Any], clock: Clock, seed: int | None = None):
        self.name = name
        self._clock = clock
        if not isinstance(config, Mapping):
            raise ValueError("must be an object with 'prefix', 'gauges', 'valves', 'motors'")
        check_keys("", config, self.KEYS)
        prefix = config.get("prefix", "")
        if not isinstance(prefix, str) or (prefix and not _PV_RE.fullmatch(prefix)):
            raise ValueError(
                "prefix: must be letters, digits and _ - : ; < > [ ] "
                f'such as "BL01:", got {prefix!r}'
            )
        self.prefix = prefix
        now = clock()
        rng = random.Random(seed)
        self.gauges = {
            k: GaugeModel(k, c, now, rng)
            for k, c in self._section(config, "gauges", GaugeConfig.from_dict).items()
        }
        self.valves = {
            k: ValveModel(k, c, now)
            for k, c in self._section(config, "valves", ValveConfig.from_dict).items()
        }
        self.motors = {
            k: MotorRecordModel(k, c, now)
            for k, c in self._section(config, "motors", MotorConfig.from_dict).items()
        }
        if not (self.gauges or self.valves or self.motors):
            raise ValueError("gauges: an IOC needs at least one gauge, valve or motor")
        self._check_unique_records()

    @staticmethod
    def _section(config: Mapping[str, Any], key: str, parse: Callable[[Any, str], Any]):
        section = config.get(key, {})
        if not isinstance(section, Mapping):
            raise ValueError(
                f'{key}: must be an object mapping names to devices, e.g. {{"x1": {{...}}}}'
            )
        out = {}
        for name, entry in entries(section):
            check_name(f"{key}.{name}", name)
            out[name] = parse(entry, f"{key}.{name}.")
        return out

    def _check_unique_records(self) -> None:
        seen: dict[str, str] = {}
        for section, devices in (
            ("gauges", self.gauges),
            ("valves", self.valves),
            ("motors", self.motors),
        ):
            for key, device in devices.items():
                record = self.record(device)
                where = f"{section}.{key}.pv"
                if record in seen:
                    raise ValueError(f"{where}: {record} is already used by {seen[record]}")
                seen[record] = where

    def record(self, device: GaugeModel | ValveModel | MotorRecordModel) -> str:
        """The full record name (prefix + pv) of a device."""
        return self.prefix + device.config.pv

    # ---------------------------------------------------------------- time
    def update(self, now: float | None = None) -> float:
        """Advance every motor to ``now`` (default: the clock); returns it."""
        now = self._clock() if now is None else now
        for motor in self.motors.values():
            motor.update(now)
        return now

    def now(self) -> float:
        return self._clock()

    # --------------------------------------------------------------- faults
    def _pick(self, kind: str, request: Mapping[str, Any], key: str, devices: Mapping[str, Any]):
        if not devices:
            raise ValueError(f"fault {kind}: IOC {self.name} has no {key}s")
        if key not in request:
            return list(devices.values())
        chosen = request[key]
        if chosen not in devices:
            raise ValueError(
                f"fault {kind}: unknown {key} {chosen!r}: valid {key}s are {', '.join(devices)}"
            )
        return [devices[chosen]]

    def inject_fault(self, kind: str, request: Mapping[str, Any]) -> str:
        """Fault injection from the control port; returns a description.

        ``vacuum_leak`` (optional ``gauge``), ``valve_stuck`` (optional
        ``valve``), ``motor_problem`` (optional ``motor``); without the
        selector the fault hits every device of that type.
        """
        now = self.update()
        check_fault_kind(self.name, kind, self.fault_kinds)
        if kind == "vacuum_leak":
            gauges = self._pick(kind, request, "gauge", self.gauges)
            for gauge in gauges:
                gauge.set_leak(True, now)
            return f"vacuum leak: pressure rising on {', '.join(g.key for g in gauges)}"
        if kind == "valve_stuck":
            valves = self._pick(kind, request, "valve", self.valves)
            for valve in valves:
                valve.set_stuck(True, now)
            return f"valve stuck: {', '.join(v.key for v in valves)} ignore commands"
        motors = self._pick(kind, request, "motor", self.motors)  # motor_problem
        for motor in motors:
            motor.set_problem(True, now)
        return f"motor problem (MSTA 0x200) on {', '.join(m.key for m in motors)}"

    def clear_faults(self) -> None:
        """End every leak (the gauges pump down), free the valves, clear the problems."""
        now = self.update()
        for gauge in self.gauges.values():
            if gauge.leak:
                gauge.set_leak(False, now)
        for valve in self.valves.values():
            if valve.stuck:
                valve.set_stuck(False, now)
        for motor in self.motors.values():
            if motor.problem:
                motor.set_problem(False, now)

    def active_faults(self) -> list[str]:
        faults = [f"vacuum leak on {k}" for k, g in self.gauges.items() if g.leak]
        faults += [f"valve {k} stuck" for k, v in self.valves.items() if v.stuck]
        faults += [f"problem on motor {k}" for k, m in self.motors.items() if m.problem]
        return faults

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Pressures, valve states and motor positions, for the control port."""
        now = self.update()
        return {
            "prefix": self.prefix,
            "gauges": {
                k: {
                    "pv": self.record(g),
                    "pressure": g.pressure(now),
                    "alarm": g.alarm(g.pressure(now))[1].name,
                    "leak": g.leak,
                }
                for k, g in self.gauges.items()
            },
            "valves": {
                k: {
                    "pv": self.record(v),
                    "state": v.state(now),
                    "open": v.open_fraction(now),
                    "stuck": v.stuck,
                }
                for k, v in self.valves.items()
            },
            "motors": {
                k: {
                    "pv": self.record(m),
                    "position": m.rbv,
                    "dial": m.drbv,
                    "target": m.val,
                    "moving": m.moving,
                    "msta": f"0x{m.msta:04X}",
                    "homed": m.homed,
                    "problem": m.problem,
                    "enabled": m.enabled,
                    "spmg": SPMG_NAMES[m.spmg],
                }
                for k, m in self.motors.items()
            },
        }

    # -------------------------------------------------------------- physics
    def register_sources(self, physics: BeamlinePhysics) -> None:
        """``<name>/pressure`` (first gauge), ``<name>/<gauge>/pressure``,
        ``<name>/<valve>/open`` (fraction, 1.0 fully open) and
        ``<name>/<motor>`` (user position in EGU)."""
        clock = self._clock
        for index, gauge in enumerate(self.gauges.values()):

            def pressure(gauge=gauge) -> float:
                return gauge.pressure(clock())

            physics.register_source(f"{self.name}/{gauge.key}/pressure", pressure)
            if index == 0:
                physics.register_source(f"{self.name}/pressure", pressure)
        for valve in self.valves.values():

            def fraction(valve=valve) -> float:
                return valve.open_fraction(clock())

            physics.register_source(f"{self.name}/{valve.key}/open", fraction)
        for motor in self.motors.values():

            def position(motor=motor) -> float:
                motor.update(clock())
                return motor.user_position

            physics.register_source(f"{self.name}/{motor.key}", position)


def make_controller(
    name: str, config: Mapping[str, Any], clock: Clock, physics: BeamlinePhysics
) -> IocController:
    """The ``epics_ioc`` factory of :data:`~tango_devices.simulators.server.CONTROLLER_KINDS`."""
    controller = IocController(name, config, clock)
    controller.register_sources(physics)
    return controller


# ====================================================================== channels
class _Hooked:
    """A channel whose client writes go to the model (``on_put``), never stored
    as written: the model's result is published instead. Without ``on_put``
    the channel is read-only for clients."""

    on_put: Callable[[Any], Awaitable[None]] | None = None

    def check_access(self, hostname: str, username: str) -> AccessRights:
        if self.on_put is None:
            return AccessRights.READ
        return AccessRights.READ | AccessRights.WRITE

    async def verify_value(self, value: Any) -> Any:
        if self.on_put is None:  # pragma: no cover - refused by check_access first
            raise PermissionError("read-only PV")
        await self.on_put(value)
        return SkipWrite


class _Double(_Hooked, ChannelDouble):
    pass


class _Short(_Hooked, ChannelShort):
    pass


class _Long(_Hooked, ChannelInteger):
    pass


class _Enum(_Hooked, ChannelEnum):
    pass


class _String(_Hooked, ChannelString):
    pass


def _enum_index(channel: ChannelEnum, value: Any) -> int | None:
    if isinstance(value, str):
        return channel.enum_strings.index(value) if value in channel.enum_strings else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class IocDatabase:
    """The PVs of one IOC start-up (a fresh set each time the IOC starts), bound
    to the controller's model: :meth:`sync` publishes what changed."""

    def __init__(self, controller: IocController):
        self.controller = controller
        self.pvdb: dict[str, ChannelData] = {}
        self._values: list[tuple[ChannelData, Callable[[float], Any]]] = []
        self._alarms: list[tuple[ChannelAlarm, Callable[[float], tuple[Any, Any]]]] = []
        self._value_alarms: dict[ChannelData, Callable[[Any], tuple[Any, Any]]] = {}
        for gauge in controller.gauges.values():
            self._add_gauge(gauge)
        for valve in controller.valves.values():
            self._add_valve(valve)
        for motor in controller.motors.values():
            self._add_motor(motor)

    # -------------------------------------------------------------- building
    def _add(
        self,
        name: str,
        channel: ChannelData,
        value: Callable[[float], Any] | None = None,
        on_put: Callable[[Any, float], None] | None = None,
    ) -> ChannelData:
        if on_put is not None:

            async def hook(written: Any, on_put=on_put) -> None:
                on_put(written, self.controller.update())
                await self.sync()

            channel.on_put = hook
        if value is not None:
            self._values.append((channel, value))
        self.pvdb[name] = channel
        return channel

    def _add_gauge(self, gauge: GaugeModel) -> None:
        base = self.controller.record(gauge)
        cfg = gauge.config
        now = self.controller.now()
        reading = gauge.reading(now)
        status, severity = gauge.alarm(reading)
        pres = _Double(
            value=reading,
            units="mbar",
            precision=2,
            upper_alarm_limit=cfg.hihi,
            upper_warning_limit=cfg.high,
            upper_disp_limit=cfg.leak_pressure,
            lower_disp_limit=cfg.base_pressure,
            alarm=ChannelAlarm(status=status, severity=severity),
            reported_record_type="ai",
        )
        self._add(f"{base}:PRES", pres, gauge.reading)
        self._value_alarms[pres] = gauge.alarm
        stat = _Enum(value="OK", enum_strings=GAUGE_STAT_NAMES, reported_record_type="bi")
        self._add(f"{base}:STAT", stat, lambda now: GAUGE_STAT_NAMES[gauge.leak])

    def _add_valve(self, valve: ValveModel) -> None:
        base = self.controller.record(valve)
        now = self.controller.now()

        def command(value: Any, now: float) -> None:
            index = _enum_index(cmd, value)
            if index in (0, 1):
                valve.command(bool(index), now)

        cmd = _Enum(
            value=VALVE_CMD_NAMES[valve.commanded_open],
            enum_strings=VALVE_CMD_NAMES,
            reported_record_type="bo",
        )
        self._add(f"{base}:CMD", cmd, lambda now: VALVE_CMD_NAMES[valve.commanded_open], command)
        state = _Enum(
            value=valve.state(now), enum_strings=VALVE_STATES, reported_record_type="mbbi"
        )
        self._add(f"{base}:STATE", state, valve.state)

    def _add_motor(self, motor: MotorRecordModel) -> None:
        record = self.controller.record(motor)
        cfg = motor.config
        status, severity = motor.alarm()
        alarm = ChannelAlarm(status=status, severity=severity)
        self._alarms.append((alarm, lambda now: motor.alarm()))
        common = {"alarm": alarm, "reported_record_type": "motor"}
        egu = {"units": cfg.egu, "precision": max(0, min(9, -math.floor(math.log10(cfg.mres))))}

        def double(field: str, value: Callable[[float], float], on_put=None, units=True):
            kwargs = {**common, **(egu if units else {"precision": 3})}
            channel = _Double(value=value(0.0), **kwargs)
            return self._add(f"{record}.{field}", channel, value, on_put)

        def short(field: str, value: Callable[[float], int], on_put=None):
            channel = _Short(value=int(value(0.0)), **common)
            return self._add(f"{record}.{field}", channel, value, on_put)

        def flag(field: str, action: Callable[[float], None]) -> None:
            def put(value: Any, now: float) -> None:
                if _as_float(value) != 0:
                    action(now)

            short(field, lambda now: 0, put)

        val = double(
            "VAL", lambda now: motor.val, lambda v, now: motor.move_user(_as_float(v), now)
        )
        self.pvdb[record] = val  # the bare record name is its VAL
        double("DVAL", lambda now: motor.dval, lambda v, now: motor.move_dial(_as_float(v), now))
        double("RBV", lambda now: motor.rbv)
        double("DRBV", lambda now: motor.drbv)
        short("DMOV", lambda now: int(not motor.moving))
        short("MOVN", lambda now: int(motor.moving))
        short("HLS", lambda now: int(motor.high_limit))
        short("LLS", lambda now: int(motor.low_limit))
        flag("STOP", motor.stop)
        short(
            "HOMF",
            lambda now: int(motor.home_direction > 0),
            lambda v, now: motor.home(1, now) if _as_float(v) != 0 else None,
        )
        short(
            "HOMR",
            lambda now: int(motor.home_direction < 0),
            lambda v, now: motor.home(-1, now) if _as_float(v) != 0 else None,
        )
        double("VELO", lambda now: motor.velocity, lambda v, now: motor.set_velocity(_as_float(v)))
        double("VMAX", lambda now: cfg.max_velocity)
        double(
            "ACCL",
            lambda now: motor.acceleration,
            lambda v, now: motor.set_acceleration(_as_float(v)),
            units=False,
        )
        double("MRES", lambda now: cfg.mres)
        double("OFF", lambda now: motor.offset, lambda v, now: motor.set_offset(_as_float(v), now))
        self._add(f"{record}.EGU", _String(value=cfg.egu, **common))
        self._add(f"{record}.MSTA", _Long(value=motor.msta, **common), lambda now: motor.msta)

        def enable(value: Any, now: float) -> None:
            index = _enum_index(cnen, value)
            if index in (0, 1):
                motor.set_enabled(bool(index), now)

        cnen = _Enum(value=CNEN_NAMES[motor.enabled], enum_strings=CNEN_NAMES, **common)
        self._add(f"{record}.CNEN", cnen, lambda now: CNEN_NAMES[motor.enabled], enable)

        def mode(value: Any, now: float) -> None:
            index = _enum_index(spmg, value)
            if index is not None:
                motor.set_spmg(index, now)

        spmg = _Enum(value=SPMG_NAMES[motor.spmg], enum_strings=SPMG_NAMES, **common)
        self._add(f"{record}.SPMG", spmg, lambda now: SPMG_NAMES[motor.spmg], mode)

    # ---------------------------------------------------------------- syncing
    async def sync(self) -> None:
        """Copy the model into the PVs; only changed values are published (in
        the order of the fields, so DMOV comes after RBV)."""
        now = self.controller.update()
        for alarm, current in self._alarms:
            status, severity = current(now)
            if (alarm.status, alarm.severity) != (status, severity):
                await alarm.write(status=status, severity=severity)
        for channel, current in self._values:
            value = current(now)
            if value == channel.value:
                continue
            alarm_of = self._value_alarms.get(channel)
            if alarm_of is None:
                await channel.write(value, verify_value=False)
                continue
            status, severity = alarm_of(value)
            if (channel.alarm.status, channel.alarm.severity) == (status, severity):
                await channel.write(value, verify_value=False)
            else:
                await channel.write(value, verify_value=False, status=status, severity=severity)


# ===================================================================== transport
def free_ca_port(host: str) -> int:
    """A port free for both TCP and UDP on ``host`` (CA uses both numbers)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for both TCP and UDP on {host}")


class _LoopbackContext(_CaprotoContext):
    """caproto's asyncio CA server, confined to one address and port.

    - TCP and the UDP search port are exactly ``port`` on ``host`` (caproto
      would fall back to a random TCP port);
    - beacons go to the CA repeater on ``host`` only (caproto would broadcast
      them to 255.255.255.255);
    - the process environment (EPICS_CAS_*) is neither read for these nor changed;
    - :meth:`shut` stops listening and closes every client connection (caproto
      leaves the listening server and the connections open when cancelled).
    """

    def __init__(self, pvdb: dict[str, ChannelData], host: str, port: int, beacon_port: int):
        super().__init__(pvdb, [host])
        self.ca_server_port = port
        self.ignore_addresses = []
        self._host = host
        self._beacon_port = beacon_port
        self._servers: list[asyncio.AbstractServer] = []
        self._clients: set[_TransportWrapper] = set()

    async def _bind_tcp_sockets_with_consistent_port_number(self, make_socket):
        sockets = {}
        try:
            for interface in self.interfaces:
                sockets[interface] = await make_socket(interface, self.ca_server_port)
        except OSError:
            for sock in sockets.values():
                sock.close()
            raise
        return self.ca_server_port, sockets

    async def server_accept_loop(self, sock: socket.socket) -> None:
        def new_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # asyncio sets TCP_NODELAY only for sockets made with IPPROTO_TCP, and
            # caproto makes them with 0: without it every second reply in a row
            # waits for the client's delayed ACK (40 ms)
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = _TransportWrapper(reader, writer)
            self._clients.add(transport)
            self.server_tasks.create(self._serve(transport))

        self._servers.append(await asyncio.start_server(new_client, sock=sock))

    async def _serve(self, transport: _TransportWrapper) -> None:
        try:
            await self.tcp_handler(transport, transport.getpeername())
        finally:
            self._clients.discard(transport)

    async def broadcast_beacon_loop(self) -> None:
        for _, wrapper in self.beacon_socks.values():
            wrapper.close()  # caproto's broadcast beacon sockets: never used
        self.beacon_socks.clear()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        period = 0.02
        try:
            while True:
                beacon = _Beacon(13, self.port, self.beacon_count, self._host)
                with contextlib.suppress(OSError):
                    sock.sendto(self.broadcaster.send(beacon), (self._host, self._beacon_port))
                self.beacon_count += 1
                period = min(period * 2, MAX_BEACON_PERIOD)
                await asyncio.sleep(period)
        finally:
            sock.close()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def shut(self) -> None:
        """Stop listening and close every client connection (an orderly close,
        as when an IOC exits)."""
        for server in self._servers:
            server.close()
        for client in list(self._clients):
            with contextlib.suppress(OSError, RuntimeError):
                client.writer.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


class IocPort:
    """Serves one :class:`IocController` over Channel Access (the ``Port`` of
    ``server.py``). Link fault ``ioc_down``: the CA server stops (clients are
    disconnected, searches go unanswered); ``clear`` starts it again on the
    same port."""

    link_faults = ("ioc_down",)

    def __init__(self, spec: Any, host: str, rng: random.Random):
        self.spec = spec
        self.name: str = spec.name
        self.controller: IocController = spec.controller
        self.host = host
        self.port: int = spec.port
        self.faults: set[str] = set()
        self._context: _LoopbackContext | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        logging.getLogger("caproto").setLevel(logging.WARNING)

    @property
    def listening(self) -> bool:
        return self._context is not None

    @property
    def clients(self) -> int:
        return self._context.client_count if self._context is not None else 0

    async def listen(self) -> None:
        """Start the CA server (again, after ``ioc_down``: on the same port)."""
        if self._context is not None:
            return
        if ":" in self.host:
            raise OSError(
                0, f"controller {self.name}: the EPICS IOC listens on IPv4 only, not {self.host}"
            )
        if self.port == 0:
            self.port = free_ca_port(self.host)
        database = IocDatabase(self.controller)
        context = _LoopbackContext(database.pvdb, self.host, self.port, BEACON_PORT)
        ready = asyncio.Event()

        async def started(_async_lib: Any) -> None:
            ready.set()

        run = asyncio.create_task(context.run(startup_hook=started), name=f"ioc-{self.name}")
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            exc = run.exception()
            await context.shut()
            raise OSError(
                getattr(exc, "errno", None) or 0,
                f"cannot serve Channel Access on {self.host}:{self.port} (TCP and UDP) for "
                f"controller {self.name}: {getattr(exc, 'strerror', None) or exc}",
            )
        updater = asyncio.create_task(self._update_loop(database), name=f"ioc-{self.name}-update")
        self._context = context
        self._tasks = [run, updater]
        log.info(
            "%s: EPICS IOC (%d PVs, prefix %r) on %s:%d",
            self.name,
            len(database.pvdb),
            self.controller.prefix,
            self.host,
            self.port,
        )

    async def _update_loop(self, database: IocDatabase) -> None:
        while True:
            try:
                await database.sync()
            except Exception:  # keep serving; a bug shows in the log
                log.exception("%s: updating the PVs failed", self.name)
            await asyncio.sleep(UPDATE_PERIOD)

    async def close(self) -> None:
        """Stop the CA server and disconnect every client."""
        context, self._context = self._context, None
        tasks, self._tasks = self._tasks, []
        if context is None:
            return
        await context.shut()
        for task in reversed(tasks):  # the update loop first, then caproto's server
            task.cancel()
            await asyncio.wait([task])

    async def inject(self, kind: str) -> None:
        self.faults.add(kind)
        if kind == "ioc_down":
            await self.close()

    async def clear(self) -> None:
        self.faults.clear()
        await self.listen()


def register(controller_kinds: dict[str, Any], port_kinds: dict[str, Any]) -> None:
    """Add the ``epics_ioc`` kind to the simulator's registries (``server.py``)."""
    controller_kinds[KIND] = make_controller
    port_kinds[KIND] = IocPort
