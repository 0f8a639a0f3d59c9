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
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tango_devices.common.statemachine import State, StateMachine
from tango_devices.drivers.motion_ascii import (
    AxisStatus,
    ControllerRejected,
    LinkError,
    MotionController,
    MotionControllerError,
    ProtocolError,
)
from tango_devices.motor import states as st

log = logging.getLogger(__name__)


class MotorError(Exception):
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


ValueListener = Callable[[Reading], None]


class MotorLogic:
    """One axis of an SMC motion controller."""

    def __init__(
        self,
        config: MotorConfig,
        driver_factory: Callable[..., MotionController] = MotionController,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        """``thread_context`` wraps the poll thread's life (the Tango layer passes
        ``tango.EnsureOmniThread`` so the thread may call into cppTango)."""
        config.validate()
        self.config = config
        self._thread_context = thread_context
        self._driver = driver_factory(config.url, timeout=config.timeout)
        self.machine = StateMachine(
            st.MOTOR_TABLE,
            f"Connecting to the motion controller at {config.url}, axis {config.axis}",
        )
        self._lock = threading.Lock()
        self._steps: int | None = None
        self._status: AxisStatus | None = None
        self._velocity_steps: int | None = None
        self._acceleration_time: float | None = None
        self._offset = 0.0
        self._target: float | None = None
        self._link_ok = False
        self._ever_connected = False
        self._fault_text: str | None = None
        self._identity = ""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()  # one hardware observation at a time
        self._fire_lock = threading.Lock()  # state changes in observation order
        self._seq = 0
        self._fired_seq = 0
        self._quality = Quality.INVALID
        self._value_listeners: list[ValueListener] = []
        self._published: tuple | None = None

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Start polling in the background; returns at once (never blocks on hardware)."""
        if self._thread and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"motor-poll-{self.config.axis}", daemon=True
        )
        self._thread.start()

    def stop_polling(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._driver.close()

    def wait_until_known(self, timeout: float) -> bool:
        """Wait until the first observation has been made (state left INIT)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.machine.state is not State.INIT:
                return True
            time.sleep(0.01)
        return self.machine.state is not State.INIT

    def add_value_listener(self, listener: ValueListener) -> None:
        """Called with the new Position reading whenever the position or its
        quality changed, before any state change that observation causes (from
        the poll thread, or from a command thread that observed the change)."""
        self._value_listeners.append(listener)

    def _run(self) -> None:
        with self._thread_context():
            while not self._stopping.is_set():
                if not self._driver.connected and not self._try_connect():
                    self._sleep(self.config.reconnect_period)
                    continue
                self.poll_once(publish=True)
                moving = self.machine.state is State.MOVING
                self._sleep(
                    self.config.moving_poll_period if moving else self.config.idle_poll_period
                )

    def _sleep(self, period: float) -> None:
        self._wake.wait(period)
        self._wake.clear()

    def _try_connect(self) -> bool:
        try:
            identity = self._driver.connect()
            velocity = self._driver.read_velocity(self.config.axis)
            acct = self._driver.read_acceleration_time(self.config.axis)
        except MotionControllerError as exc:
            self._driver.close()
            with self._poll_lock:
                seq = self._next_seq()
                self._link_ok = False
                self._quality = Quality.INVALID
            self._publish()
            self._fire(seq, st.COMM_LOST, self._failure_text(exc))
            return False
        with self._lock:
            self._identity = identity
            self._velocity_steps = velocity
            self._acceleration_time = acct
            self._ever_connected = True
        log.info("connected to %s (%s), axis %d", self.config.url, identity, self.config.axis)
        return True

    # ------------------------------------------------------------ observing
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def poll_once(self, publish: bool = True) -> None:
        """Read the axis once and let the state follow the observation.

        Value listeners run before the state changes, so a client that sees
        the new state also reads the new value. No lock of this class is held
        while any listener runs (listeners may wait for the Tango device lock,
        which a command thread may hold while it waits for this class).
        """
        with self._poll_lock:
            seq = self._next_seq()
            try:
                steps, status = self._driver.read_position_status(self.config.axis)
                fault_text = None
                if status.fault:
                    try:
                        fault_text = self._driver.read_fault(self.config.axis)
                    except MotionControllerError:
                        fault_text = None
            except MotionControllerError as exc:
                if not isinstance(exc, ControllerRejected):
                    self._driver.close()
                with self._lock:
                    self._link_ok = False
                    self._quality = Quality.INVALID
                failure = exc
            else:
                failure = None
                with self._lock:
                    self._steps = steps
                    self._status = status
                    self._link_ok = True
                    self._fault_text = fault_text
                    moving = status.moving or status.homing
                    self._quality = Quality.CHANGING if moving else Quality.VALID
                    if not moving:
                        self._target = None
        if publish:
            self._publish()
        if failure is not None:
            self._fire(seq, st.COMM_LOST, self._failure_text(failure))
            return
        trigger = st.classify(True, status)
        self._fire(seq, trigger, self._status_text(trigger, status, fault_text))

    def _fire(self, seq: int, trigger: str, text: str) -> None:
        with self._fire_lock:
            if seq < self._fired_seq:
                return  # a newer observation has already decided the state
            self._fired_seq = seq
            self.machine.fire(trigger, text, notify=False)
        self.machine.notify()

    def _publish(self) -> None:
        reading = self.position()
        key = (reading.value, reading.quality)
        if key == self._published:
            return
        self._published = key
        for listener in list(self._value_listeners):
            try:
                listener(reading)
            except Exception:  # a listener must never stop the poll thread
                log.exception("value listener failed")

    def republish(self) -> None:
        """Have the next observation call the value listeners even if nothing changed."""
        self._published = None
        self._wake.set()

    def _failure_text(self, exc: MotionControllerError) -> str:
        if isinstance(exc, ProtocolError):
            what = "Garbled reply from the motion controller"
        elif isinstance(exc, ControllerRejected):
            what = "The motion controller refused the status request"
        else:
            what = "No link to the motion controller"
        return (
            f"{what} ({self.config.url}, axis {self.config.axis}): {exc}. "
            f"Retrying every {self.config.reconnect_period:g} s; the state recovers by itself "
            "when the controller answers again (check its power, cable or terminal server)."
        )

    def _status_text(self, trigger: str, status: AxisStatus, fault_text: str | None) -> str:
        unit = self.config.unit
        if trigger == st.HW_FAULT:
            return (
                f"Axis fault reported by the controller: {fault_text or 'no description'}. "
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
        return f"Ready ({self._identity}, axis {self.config.axis})."

    # -------------------------------------------------------------- readings
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def status(self) -> str:
        return self.machine.status

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
    def link_ok(self) -> bool:
        return self._link_ok

    @property
    def target(self) -> float | None:
        return self._target

    # -------------------------------------------------------------- commands
    def _call(self, what: str, fn, *args):
        """Run a driver call; turn driver failures into MotorError naming the command."""
        try:
            return fn(*args)
        except ControllerRejected as exc:
            raise MotorError(
                f"{what} refused by the controller: {exc.text} (error {exc.code})"
            ) from exc
        except (LinkError, ProtocolError) as exc:
            self._wake.set()  # let the poller notice and reconnect
            raise MotorError(f"{what} failed: {exc}") from exc

    def _require(self, command: str) -> None:
        state = self.machine.state
        reason = self.machine.status if state in (State.FAULT, State.DISABLE) else ""
        self.machine.check(command, reason)

    def move_to(self, position: float) -> None:
        """Absolute move in user units. Returns once the controller accepted it."""
        self._require("write_Position")
        if not math.isfinite(position):
            raise MotorError(f"Position must be a finite number, not {position!r}")
        target_steps = round((position - self._offset) * self.config.steps_per_unit)
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
        self._call(f"Move to {position:g}", self._driver.move, self.config.axis, target_steps)
        self.poll_once()

    def stop(self) -> None:
        self._require("Stop")
        self._call("Stop", self._driver.stop, self.config.axis)
        self.poll_once()

    def home(self, direction: int = 1) -> None:
        self._require("Home")
        self._target = None
        self._call("Home", self._driver.home, self.config.axis, 1 if direction >= 0 else -1)
        self.poll_once()

    def power_on(self) -> None:
        self._require("On")
        status = self._status
        if status is not None and status.fault:
            self._call("Reset", self._driver.reset, self.config.axis)
        self._call("On", self._driver.power, self.config.axis, True)
        self.poll_once()

    def power_off(self) -> None:
        self._require("Off")
        self._call("Off", self._driver.power, self.config.axis, False)
        self.poll_once()

    def reset(self) -> None:
        self._require("Reset")
        self._call("Reset", self._driver.reset, self.config.axis)
        self.poll_once()

    def set_position(self, position: float) -> float:
        """Calibrate: change the offset so that the current position reads ``position``.

        Returns the new offset (the device persists it). The hardware is not touched.
        """
        self._require("SetPosition")
        if not math.isfinite(position):
            raise MotorError(f"SetPosition needs a finite number, not {position!r}")
        dial = self.dial_position().value
        if dial is None:
            raise MotorError("SetPosition needs the current position, which is not known yet")
        self._offset = position - dial
        self._publish()
        return self._offset

    def set_offset(self, offset: float) -> None:
        self._require("write_Offset")
        if not math.isfinite(offset):
            raise MotorError(f"Offset must be a finite number, not {offset!r}")
        self._offset = offset
        self._publish()

    def set_velocity(self, velocity: float) -> None:
        self._require("write_Velocity")
        if not math.isfinite(velocity) or velocity <= 0:
            raise MotorError(f"Velocity must be a positive number, not {velocity!r}")
        steps = round(velocity * abs(self.config.steps_per_unit))
        if steps < 1:
            raise MotorError(
                f"Velocity {velocity:g} {self.config.unit}/s is below one step per second"
            )
        self._call(f"Velocity {velocity:g}", self._driver.write_velocity, self.config.axis, steps)
        self._velocity_steps = self._call(
            "Velocity read-back", self._driver.read_velocity, self.config.axis
        )

    def set_acceleration(self, seconds: float) -> None:
        self._require("write_Acceleration")
        if not math.isfinite(seconds) or seconds <= 0:
            raise MotorError(
                f"Acceleration time must be a positive number of seconds, not {seconds!r}"
            )
        self._call(
            f"Acceleration {seconds:g} s",
            self._driver.write_acceleration_time,
            self.config.axis,
            seconds,
        )
        self._acceleration_time = self._call(
            "Acceleration read-back", self._driver.read_acceleration_time, self.config.axis
        )
