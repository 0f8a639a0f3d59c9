"""Component logic of one motor axis: owns the driver, polls the hardware,
keeps the state machine following what it observes, reconnects by itself.

No Tango import: the device layer (``device.py``) is a thin shell over this
class, and unit tests drive it with a fake driver.

Units: the controller counts steps. ``dial = steps / steps_per_unit`` and the
user position is ``dial + offset``. Velocity is in user units per second,
acceleration is the time (s) to reach the velocity, as on most Tango motors.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from tango_devices.common.component import Component, ComponentError
from tango_devices.drivers.motion_ascii import AxisStatus, MotionController
from tango_devices.motor import states as st


class MotorError(ComponentError):
    """A motor command failed for a reason the operator can act on."""


class Quality(enum.Enum):
    VALID = "VALID"
    CHANGING = "CHANGING"
    INVALID = "INVALID"


@dataclass(frozen=True)
class MotorConfig:
    url: str
    axis: int
    steps_per_unit: float = 1000.0
    unit: str = "mm"
    timeout: float = 0.5
    idle_poll_period: float = 0.2
    moving_poll_period: float = 0.02
    reconnect_period: float = 1.0
    epics_addr_list: str | None = None
    rest_poll_period: float | None = None  # the poll period once nothing changed for a while

    def validate(self) -> None:
        problems = []
        if not self.url:
            problems.append("Port is empty: set it to a pyserial URL such as socket://host:port")
        if self.axis < 1:
            problems.append(f"Axis must be 1 or more, not {self.axis}")
        if not math.isfinite(self.steps_per_unit) or self.steps_per_unit == 0:
            problems.append(f"StepsPerUnit must be a non-zero number, not {self.steps_per_unit}")
        if self.timeout <= 0:
            problems.append(f"Timeout must be positive, not {self.timeout}")
        if problems:
            raise MotorError("Bad configuration: " + "; ".join(problems))


@dataclass(frozen=True)
class Reading:
    value: float | None
    quality: Quality


def make_driver(url: str, timeout: float, addr_list: str | None = None):
    """The backend for a ``Port``: ``ca://RECORD`` is an EPICS motor record,
    anything else a pyserial URL of an SMC motion controller."""
    if url.startswith("ca://"):
        from tango_devices.drivers import epics_ca
        from tango_devices.drivers.epics_motor import EpicsMotorRecord

        epics_ca.configure(addr_list)
        return EpicsMotorRecord(url, timeout=timeout)
    return MotionController(url, timeout=timeout)


@dataclass(frozen=True)
class AxisObservation:
    steps: int
    status: AxisStatus
    fault_text: str | None


class MotorLogic(Component):
    """One motor axis: an SMC controller axis or an EPICS motor record."""

    table = st.MOTOR_TABLE
    error_class = MotorError

    def __init__(
        self,
        config: MotorConfig,
        driver_factory: Callable[..., object] = make_driver,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        config.validate()
        self.config = config
        epics = config.url.startswith("ca://")
        self.hardware = "the EPICS motor record" if epics else "the motion controller"
        where = config.url if epics else f"{config.url}, axis {config.axis}"
        driver = (
            driver_factory(config.url, timeout=config.timeout, addr_list=config.epics_addr_list)
            if epics
            else driver_factory(config.url, timeout=config.timeout)
        )
        super().__init__(
            driver,
            where,
            idle_period=config.idle_poll_period,
            busy_period=config.moving_poll_period,
            reconnect_period=config.reconnect_period,
            thread_context=thread_context,
            rest_period=config.rest_poll_period,
        )
        self._steps: int | None = None
        self._status: AxisStatus | None = None
        self._velocity_steps: int | None = None
        self._acceleration_time: float | None = None
        self._offset = 0.0
        # what the controller can represent, in user units from the dial zero
        self.max_steps = int(getattr(driver, "MAX_STEPS", 2**31 - 1))
        self.dial_range = self.max_steps / abs(config.steps_per_unit)
        self._target: float | None = None
        self._fault_text: str | None = None
        self._quality = Quality.INVALID

    # ------------------------------------------------------------ observing
    def on_connect(self) -> None:
        axis = self.config.axis
        velocity = self._driver.read_velocity(axis)
        acct = self._driver.read_acceleration_time(axis)
        with self._lock:
            self._velocity_steps = velocity
            self._acceleration_time = acct

    def observe(self) -> AxisObservation:
        steps, status = self._driver.read_position_status(self.config.axis)
        fault_text = self._driver.read_fault(self.config.axis) if status.fault else None
        return AxisObservation(steps, status, fault_text)

    def apply(self, obs: AxisObservation) -> None:
        self._steps = obs.steps
        self._status = obs.status
        self._fault_text = obs.fault_text
        moving = obs.status.moving or obs.status.homing
        self._quality = Quality.CHANGING if moving else Quality.VALID
        if not moving:
            self._target = None

    def on_link_lost(self) -> None:
        self._quality = Quality.INVALID

    def classify(self, obs: AxisObservation) -> tuple[str, str]:
        trigger = st.classify(True, obs.status)
        return trigger, self._status_text(trigger, obs.status, obs.fault_text)

    def publish_key(self):
        reading = self.position()
        return (reading.value, reading.quality)

    def busy(self) -> bool:
        return self.machine.state is st.MOVING

    def _status_text(self, trigger: str, status: AxisStatus, fault_text: str | None) -> str:
        unit = self.config.unit
        if trigger == st.HW_FAULT:
            return (
                f"Axis fault reported by {self.hardware}: {fault_text or 'no description'}. "
                "Remove the cause, then run Reset (or On)."
            )
        if trigger == st.INTERLOCKED:
            return "Interlock input active: motion is disabled until the interlock clears."
        if trigger == st.POWERED_OFF:
            return "Amplifier power is off. Run On to power the axis."
        if trigger == st.MOVING_OBSERVED:
            if status.homing:
                return "Homing: searching the home switch."
            target = self._target
            return f"Moving to {target:.6g} {unit}." if target is not None else "Moving."
        if trigger == st.AT_LIMIT:
            if status.high_limit:
                return (
                    "High (positive) limit switch active: only moves towards lower dial "
                    "positions are allowed."
                )
            return (
                "Low (negative) limit switch active: only moves towards higher dial "
                "positions are allowed."
            )
        return f"Ready ({self._identity}, {self.where.split(', ')[-1]})."

    # -------------------------------------------------------------- readings
    def dial_position(self) -> Reading:
        with self._lock:
            steps, quality = self._steps, self._quality
        if steps is None:
            return Reading(None, Quality.INVALID)
        return Reading(steps / self.config.steps_per_unit, quality)

    def position(self) -> Reading:
        dial = self.dial_position()
        if dial.value is None:
            return dial
        return Reading(dial.value + self._offset, dial.quality)

    @property
    def offset(self) -> float:
        return self._offset

    @property
    def velocity(self) -> float | None:
        v = self._velocity_steps
        return None if v is None else v / abs(self.config.steps_per_unit)

    @property
    def acceleration(self) -> float | None:
        return self._acceleration_time

    @property
    def axis_status(self) -> AxisStatus | None:
        return self._status

    @property
    def target(self) -> float | None:
        return self._target

    # -------------------------------------------------------------- commands
    def move_to(self, position: float) -> None:
        """Absolute move in user units. Returns once the controller accepted it."""
        self.require("write_Position")
        if not math.isfinite(position):
            raise MotorError(f"Position must be a finite number, not {position!r}")
        dial = position - self._offset
        if abs(dial) > self.dial_range:
            low, high = self._user_range()
            raise MotorError(
                f"Position {position:g} is beyond what {self.hardware} can reach: "
                f"{low:g} to {high:g} {self.config.unit} with Offset {self._offset:g} "
                f"(+-{self.max_steps:,} steps at {self.config.steps_per_unit:g} steps per unit)"
            )
        target_steps = round(dial * self.config.steps_per_unit)
        with self._lock:
            status, steps = self._status, self._steps
        if status is not None and steps is not None:
            if status.high_limit and target_steps > steps:
                raise MotorError(
                    f"Move to {position:g} refused: the high (positive) limit switch is "
                    "active; move towards lower dial positions first."
                )
            if status.low_limit and target_steps < steps:
                raise MotorError(
                    f"Move to {position:g} refused: the low (negative) limit switch is "
                    "active; move towards higher dial positions first."
                )
        self._target = position
        self.call(f"Move to {position:g}", self._driver.move, self.config.axis, target_steps)
        self.poll_once()

    def stop(self) -> None:
        self.require("Stop")
        self.call("Stop", self._driver.stop, self.config.axis)
        self.poll_once()

    def home(self, direction: int = 1) -> None:
        self.require("Home")
        self._target = None
        self.call("Home", self._driver.home, self.config.axis, 1 if direction >= 0 else -1)
        self.poll_once()

    def power_on(self) -> None:
        self.require("On")
        status = self._status
        if status is not None and status.fault:
            self.call("Reset", self._driver.reset, self.config.axis)
        self.call("On", self._driver.power, self.config.axis, True)
        self.poll_once()

    def power_off(self) -> None:
        self.require("Off")
        self.call("Off", self._driver.power, self.config.axis, False)
        self.poll_once()

    def reset(self) -> None:
        self.require("Reset")
        self.call("Reset", self._driver.reset, self.config.axis)
        self.poll_once()

    def set_position(self, position: float) -> float:
        """Calibrate: change the offset so that the current position reads ``position``.

        Returns the new offset (the device persists it). The hardware is not touched.
        """
        self.require("SetPosition")
        if not math.isfinite(position):
            raise MotorError(f"SetPosition needs a finite number, not {position!r}")
        dial = self.dial_position().value
        if dial is None:
            raise MotorError("SetPosition needs the current position, which is not known yet")
        offset = position - dial
        self._check_offset(offset, f"SetPosition {position:g}")
        self._offset = offset
        self._publish()
        return self._offset

    def set_offset(self, offset: float) -> None:
        self.require("write_Offset")
        if not math.isfinite(offset):
            raise MotorError(f"Offset must be a finite number, not {offset!r}")
        self._check_offset(offset, f"Offset {offset:g}")
        self._offset = offset
        self._publish()

    def _check_offset(self, offset: float, what: str) -> None:
        """An offset keeps user positions representable: within the dial range."""
        if abs(offset) > self.dial_range:
            raise MotorError(
                f"{what} refused: the offset would be {offset:g} {self.config.unit}, beyond "
                f"+-{self.dial_range:g} {self.config.unit} (the range of {self.hardware}: "
                f"+-{self.max_steps:,} steps at {self.config.steps_per_unit:g} steps per unit)"
            )

    def _user_range(self) -> tuple[float, float]:
        return self._offset - self.dial_range, self._offset + self.dial_range

    def set_velocity(self, velocity: float) -> None:
        self.require("write_Velocity")
        if not math.isfinite(velocity) or velocity <= 0:
            raise MotorError(f"Velocity must be a positive number, not {velocity!r}")
        steps = round(velocity * abs(self.config.steps_per_unit))
        if steps < 1:
            raise MotorError(
                f"Velocity {velocity:g} {self.config.unit}/s is below one step per second"
            )
        self.call(f"Velocity {velocity:g}", self._driver.write_velocity, self.config.axis, steps)
        self._velocity_steps = self.call(
            "Velocity read-back", self._driver.read_velocity, self.config.axis
        )

    def set_acceleration(self, seconds: float) -> None:
        self.require("write_Acceleration")
        if not math.isfinite(seconds) or seconds <= 0:
            raise MotorError(
                f"Acceleration time must be a positive number of seconds, not {seconds!r}"
            )
        self.call(
            f"Acceleration {seconds:g} s",
            self._driver.write_acceleration_time,
            self.config.axis,
            seconds,
        )
        self._acceleration_time = self.call(
            "Acceleration read-back", self._driver.read_acceleration_time, self.config.axis
        )
