"""Component logic of a timing / trigger unit over TCP (no tango import).

The unit (``docs/protocol-timing.md``) makes the pulse trains of continuous
scans: in time (delay, period, width, count) or on the positions of an axis
(start, step, width, count, encoder), cabled to the scaler's gate and the
camera's trigger. The train's settings live in the unit: they are read from
it at every connection (and once a second while idle, so a change made by
another client shows), checked here and written through to it, only while
it is idle. Arm checks the train against the unit and what it drives; a
train the unit refuses (its error 6) is a :class:`TrainRefused` carrying the
unit's text, which names the problem and the fix; nothing changes then.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tango_devices.common import jsonargs
from tango_devices.common.component import Component, ComponentError
from tango_devices.drivers.errors import ControllerRejected, LinkError, ProtocolError
from tango_devices.drivers.timing import E_SETTINGS, Pulse, TimingClient, TimingStatus
from tango_devices.timing import states as st

MAX_TIME = 3600.0  # s: the longest delay, period or width the unit takes
MIN_TIME = 1e-6  # s: the unit's clock
MAX_STEPS = 2_000_000_000  # the SMC position register's range
#: most pulses of one ReadPulses (more in several calls)
MAX_PULSES_READ = 10_000


class TimingError(ComponentError):
    pass


class TrainRefused(TimingError):
    """The unit refused a train (its error 6): the text names the problem and the fix."""


class TrainMode(enum.IntEnum):
    TIME = 0
    POSITION = 1


@dataclass(frozen=True)
class TimingConfig:
    url: str
    timeout: float = 0.5
    poll_period: float = 0.2
    busy_period: float = 0.02
    reconnect_period: float = 1.0
    settings_period: float = 1.0

    def validate(self) -> None:
        problems = []
        if not self.url:
            problems.append("Port is empty: set it to a pyserial URL such as socket://host:port")
        if not self.timeout > 0:
            problems.append(f"Timeout must be positive, not {self.timeout}")
        if problems:
            raise TimingError("Bad configuration: " + "; ".join(problems))


@dataclass(frozen=True)
class TrainSettings:
    """What the unit holds (times in s, positions in encoder steps)."""

    mode: TrainMode = TrainMode.TIME
    delay: float = 0.0
    period: float = 1.0
    width: float = 0.5
    count: int = 1
    encoder: int = 0
    position_start: int = 0
    position_step: int = 100

    def describe(self) -> str:
        if self.mode is TrainMode.TIME:
            return (
                f"time train of {self.count} pulse(s), period {self.period:g} s, "
                f"width {self.width:g} s, delay {self.delay:g} s"
            )
        return (
            f"position train of {self.count} pulse(s) from {self.position_start} every "
            f"{self.position_step} steps of encoder {self.encoder}, width {self.width:g} s"
        )


@dataclass(frozen=True)
class TimingObservation:
    status: TimingStatus
    settings: TrainSettings | None  # when read again with this observation
    settings_gen: int = 0  # the settings' generation when the read began


# ------------------------------------------------------------------ checks
def _seconds(name: str, value: Any, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TimingError(f"{name} must be a finite number of seconds, not {value!r}")
    if not low <= value <= MAX_TIME:
        raise TimingError(f"{name} must be between {low:g} and {MAX_TIME:g} s, not {value!r}")
    return round(float(value), 6)  # the unit's 1 MHz clock


def _integer(name: str, value: Any, low: int, high: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise TimingError(f"{name} must be a whole number{what}, not {value!r}")
    if not low <= int(value) <= high:
        raise TimingError(f"{name} must be between {low} and {high}{what}, not {int(value)}")
    return int(value)


def _mode(value: Any) -> TrainMode:
    if isinstance(value, str):
        try:
            return TrainMode[value.strip().upper()]
        except KeyError:
            pass
    elif not isinstance(value, bool) and isinstance(value, int):
        with contextlib.suppress(ValueError):
            return TrainMode(value)
    names = ", ".join(f"{m.value} {m.name}" for m in TrainMode)
    raise TimingError(f"Mode must be one of {names}, not {value!r}")


#: the JSON a LoadTrain takes (checked before anything is sent)
TRAIN_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "mode": {"enum": ["time", "position", "TIME", "POSITION"]},
        "count": {"type": "integer", "minimum": 1},
        "width": {"type": "number"},
        "period": {"type": "number"},
        "delay": {"type": "number"},
        "start": {"type": "integer"},
        "step": {"type": "integer"},
        "encoder": {"type": "integer", "minimum": 0},
    },
    "required": ["mode", "count", "width"],
    "additionalProperties": False,
    "allOf": [
        {
            "if": {"properties": {"mode": {"enum": ["time", "TIME"]}}},
            "then": {
                "required": ["period"],
                "not": {"anyOf": [{"required": ["start"]}, {"required": ["step"]}]},
            },
        },
        {
            "if": {"properties": {"mode": {"enum": ["position", "POSITION"]}}},
            "then": {
                "required": ["start", "step"],
                "not": {"anyOf": [{"required": ["period"]}, {"required": ["delay"]}]},
            },
        },
    ],
}


class TimingLogic(Component):
    table = st.TIMING_TABLE
    hardware = "the timing unit"
    error_class = TimingError

    def __init__(
        self,
        config: TimingConfig,
        driver_factory: Callable[..., object] = TimingClient,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config.validate()
        self.config = config
        super().__init__(
            driver_factory(config.url, timeout=config.timeout),
            config.url,
            idle_period=config.poll_period,
            busy_period=config.busy_period,
            reconnect_period=config.reconnect_period,
            thread_context=thread_context,
        )
        self._clock = clock
        self._settings: TrainSettings | None = None
        self._settings_read_at = -math.inf
        # bumped by every write: a poll's read of the settings that began
        # before a write finished is older than what the write stored
        self._settings_gen = 0
        self._status: TimingStatus | None = None
        self._outputs: dict[int, str] = {}
        self._encoders: dict[int, str] = {}

    # ------------------------------------------------------------ observing
    def on_connect(self) -> None:
        outputs = self._driver.outputs()
        encoders = self._driver.encoders()
        settings = self._read_settings()
        with self._lock:
            self._outputs, self._encoders = outputs, encoders
            self._settings = settings
            self._settings_read_at = self._clock()

    def _read_settings(self) -> TrainSettings:
        d = self._driver
        return TrainSettings(
            mode=TrainMode[d.mode()],
            delay=d.delay(),
            period=d.period(),
            width=d.width(),
            count=d.count(),
            encoder=d.encoder(),
            position_start=d.position_start(),
            position_step=d.position_step(),
        )

    def observe(self) -> TimingObservation:
        status = self._driver.status()
        settings = None
        gen = self._settings_gen
        if status.state == "IDLE" and self._clock() - self._settings_read_at >= (
            self.config.settings_period
        ):
            settings = self._read_settings()
        return TimingObservation(status, settings, gen)

    def apply(self, obs: TimingObservation) -> None:
        self._status = obs.status
        if obs.settings is not None and obs.settings_gen == self._settings_gen:
            self._settings = obs.settings
            self._settings_read_at = self._clock()

    def classify(self, obs: TimingObservation) -> tuple[str, str]:
        status = obs.status
        train = (self._settings or TrainSettings()).describe()
        if status.state == "ARMED":
            return st.ARMED, (
                f"Armed: {train}; waiting for Start (Stop disarms; the settings change only "
                "while idle)."
            )
        if status.state == "RUNNING":
            return st.RUNNING_OBSERVED, (
                f"Running: {status.sent} of {status.count} pulse(s) sent ({train}); Stop ends "
                "it (the settings change only while idle)."
            )
        last = (
            f"; last train: {status.sent} of {status.count} pulse(s) sent" if status.count else ""
        )
        return st.IDLE, f"Ready ({self.identity}): {train}{last}."

    def publish_key(self):
        status = self._status
        return (status, self._settings) if self.link_ok else None

    def busy(self) -> bool:
        return self.machine.state in (st.STANDBY, st.RUNNING)

    # -------------------------------------------------------------- readings
    @property
    def settings(self) -> TrainSettings | None:
        return self._settings if self.link_ok else None

    def setting(self, name: str) -> Any:
        settings = self.settings
        return None if settings is None else getattr(settings, name)

    @property
    def pulses_sent(self) -> int | None:
        status = self._status
        return status.sent if status is not None and self.link_ok else None

    @property
    def train_count(self) -> int | None:
        status = self._status
        return status.count if status is not None and self.link_ok else None

    @property
    def train_state(self) -> str | None:
        status = self._status
        return status.state if status is not None and self.link_ok else None

    @property
    def outputs(self) -> list[str]:
        return [f"{n}:{name}" for n, name in sorted(self._outputs.items())]

    @property
    def encoders(self) -> list[str]:
        return [f"{n}:{name}" for n, name in sorted(self._encoders.items())]

    def encoder_position(self) -> int:
        """The selected encoder's position now (steps), asked of the unit."""
        return self.call("EncoderPosition", self._driver.encoder_position)

    # --------------------------------------------------------------- settings
    def _checked(self, name: str, value: Any) -> Any:
        """``value`` for setting ``name`` (the TrainSettings field), checked."""
        if name == "mode":
            return _mode(value)
        if name == "delay":
            return _seconds("Delay", value, 0.0)
        if name in ("period", "width"):
            return _seconds(name.capitalize(), value, MIN_TIME)
        if name == "count":
            return _integer("Count", value, 1, 10_000_000, " pulses")
        if name == "encoder":
            high = len(self._encoders)
            return _integer("Encoder", value, 0, high, f" (0 = none; wired: {self._wired()})")
        if name == "position_start":
            return _integer("PositionStart", value, -MAX_STEPS, MAX_STEPS, " steps")
        if name == "position_step":
            step = _integer("PositionStep", value, -MAX_STEPS, MAX_STEPS, " steps")
            if step == 0:
                raise TimingError(
                    "PositionStep must not be 0: it is the steps between pulses, its sign "
                    "the direction of motion (e.g. +100 or -100)"
                )
            return step
        raise KeyError(name)

    def _wired(self) -> str:
        return ", ".join(self.encoders) or "none wired"

    def _send(self, what: str, name: str, value: Any) -> None:
        d = self._driver
        senders = {
            "mode": lambda v: d.set_mode(v.name),
            "delay": d.set_delay,
            "period": d.set_period,
            "width": d.set_width,
            "count": d.set_count,
            "encoder": d.set_encoder,
            "position_start": d.set_position_start,
            "position_step": d.set_position_step,
        }
        self.call(what, senders[name], value)

    def _current(self, what: str) -> TrainSettings:
        settings = self.settings
        if settings is None or not self._driver.connected:
            raise TimingError(f"{what}: {self.status}")
        return settings

    def _store(self, **changes: Any) -> None:
        with self._lock:
            self._settings_gen += 1
            if self._settings is not None:
                self._settings = replace(self._settings, **changes)
        self.republish()

    def set_setting(self, name: str, attribute: str, value: Any) -> None:
        """Write one setting (``name`` of TrainSettings, ``attribute`` its Tango
        name): checked here, then by the unit; refused, nothing changes."""
        self.require(f"write_{attribute}")
        checked = self._checked(name, value)
        self._current(f"write_{attribute}")
        self._send(f"{attribute} {value}", name, checked)
        self._store(**{name: checked})

    set_mode = functools.partialmethod(set_setting, "mode", "Mode")
    set_delay = functools.partialmethod(set_setting, "delay", "Delay")
    set_period = functools.partialmethod(set_setting, "period", "Period")
    set_width = functools.partialmethod(set_setting, "width", "Width")
    set_count = functools.partialmethod(set_setting, "count", "Count")
    set_encoder = functools.partialmethod(set_setting, "encoder", "Encoder")
    set_position_start = functools.partialmethod(set_setting, "position_start", "PositionStart")
    set_position_step = functools.partialmethod(set_setting, "position_step", "PositionStep")

    def load_train(self, text: str) -> None:
        """A whole train in one command (JSON, see :data:`TRAIN_SCHEMA`), all
        or nothing: every value is checked first; if the unit refuses one,
        the settings sent before it are put back."""
        self.require("LoadTrain")
        try:
            spec = jsonargs.parse(text, TRAIN_SCHEMA, "LoadTrain")
        except jsonargs.ArgumentError as exc:
            raise TimingError(
                f'{exc}. Give JSON such as {{"mode": "time", "count": 100, '
                f'"period": 0.01, "width": 0.005}} or {{"mode": "position", '
                f'"count": 100, "start": 0, "step": 50, "width": 0.001, '
                f'"encoder": 3}}'
            ) from None
        mode = _mode(spec["mode"])
        wanted: dict[str, Any] = {"mode": mode}
        names = {"count": "count", "width": "width", "encoder": "encoder"}
        if mode is TrainMode.TIME:
            names.update(period="period", delay="delay")
            spec.setdefault("delay", 0.0)
        else:
            names.update(start="position_start", step="position_step")
        for key, name in names.items():
            if key in spec:
                wanted[name] = self._checked(name, spec[key])
        old = self._current("LoadTrain")
        sent: list[str] = []
        try:
            for name, value in wanted.items():
                self._send("LoadTrain", name, value)
                sent.append(name)
        except TimingError as exc:
            try:
                for name in reversed(sent):
                    self._send("LoadTrain", name, getattr(old, name))
                kept = "the train's settings are as before"
                self._store()  # a poll may have read some of the values sent and undone
            except TimingError as undo:
                kept = f"and putting the old settings back failed too ({undo})"
                with self._lock:
                    self._settings_gen += 1
                    self._settings_read_at = -math.inf  # read them again
            raise TimingError(f"{exc}; {kept}") from exc
        self._store(**wanted)

    # -------------------------------------------------------------- commands
    def call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """As :meth:`Component.call`; a train the unit refuses (error 6) is a
        :class:`TrainRefused` with the unit's text (the problem and the fix)."""
        try:
            result = fn(*args)
            self.wake()
            return result
        except ControllerRejected as exc:
            if exc.code == E_SETTINGS:
                text = exc.text.removeprefix("settings: ")
                raise TrainRefused(
                    f"{what} refused by the timing unit: {text}. Nothing was changed."
                ) from exc
            raise TimingError(
                f"{what} refused by {self.hardware}: {exc.text} (error {exc.code})"
            ) from exc
        except (LinkError, ProtocolError) as exc:
            self.wake()
            raise TimingError(f"{what} failed: {exc}") from exc
        except ValueError as exc:  # the driver's own check of an argument
            raise TimingError(f"{what}: {exc}") from exc

    def arm(self) -> None:
        """Check the train against the unit and what it drives; wait for Start."""
        self.require("Arm")
        self.call("Arm", self._driver.arm)
        self.poll_once()

    def start(self) -> None:
        """Start the train (armed first by the unit when idle)."""
        self.require("Start")
        self.call("Start", self._driver.start)
        self.poll_once()

    def stop(self) -> None:
        """No pulse starts after now (a pulse already high ends at its time)."""
        self.require("Stop")
        self.call("Stop", self._driver.stop)
        self.poll_once()

    def read_pulses(self, first: int, count: int) -> list[Pulse]:
        """Pulses ``first`` .. of the unit's record of the current (or last)
        train; ``count`` 0: every pulse sent from ``first`` (at most
        :data:`MAX_PULSES_READ`)."""
        self.require("ReadPulses")
        first = _integer("first", first, 0, 10_000_000, " (pulse index)")
        count = _integer("count", count, 0, MAX_PULSES_READ, " (0: every pulse sent)")
        sent = self.call("ReadPulses", self._driver.status).sent
        if count == 0:
            count = min(max(sent - first, 0), MAX_PULSES_READ)
            if count == 0:
                return []
        if first + count > sent:
            so_far = f"{sent} pulse(s) sent so far (0..{sent - 1})" if sent else "no pulse sent yet"
            raise TimingError(
                f"ReadPulses {first} {count}: pulses {first}..{first + count - 1} were not sent: "
                f"{so_far}; read sent pulses only"
            )
        return self.call("ReadPulses", lambda: list(self._driver.iter_pulses(first, count)))
