"""Virtual timing / trigger unit: pulse trains, their wiring and its protocol.

Pure logic: no I/O, no ``tango``. The transport (``server.py``) feeds request
lines to :meth:`TimingController.handle_line`. The protocol is specified in
``docs/protocol-timing.md``.

The unit makes one pulse train at a time, like a PandA's pulse generator and
position compare, an NI 6602 counter or an IcePAP position output:

- ``TIME`` mode: ``COUNT`` pulses of ``WIDTH`` seconds, one every ``PERIOD``
  seconds, the first ``DELAY`` seconds after ``START``;
- ``POSITION`` mode: ``COUNT`` pulses of ``WIDTH`` seconds, pulse k when the
  selected encoder (an SMC axis wired to an encoder input) reaches
  ``PSTART + k x PSTEP`` steps moving in the direction of ``PSTEP``.

Its outputs are wired (in the simulator's configuration) to the gate input
of scalers (each pulse is a gate: one buffered point) and the trigger input
of cameras (each rising edge: one frame). Everything is computed in
(injected) time: the pulse times are exact (time mode: from START; position
mode: the axis's exact crossing times from its remembered motion), whenever
they are looked at. They are delivered to the outputs at any request to the
unit or to a wired scaler or camera, and inside the simulator's event loop
every :data:`TICK` seconds while a train runs. The unit keeps its own record
of every pulse it sent: index, time since START and the encoder position.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tango_devices.simulators.common import (
    E_BAD_ARGUMENT,
    Command,
    CommandError,
    PhysicsController,
    WithoutFaults,
    check_keys,
    format_seconds,
    is_int,
    no_args,
    numbered,
    one_arg,
    seconds_arg,
)

FIRMWARE_VERSION = "1.0"
TICK = 0.005  # s, delivery of the pulses inside an event loop while a train runs
MAX_TIME = 3600.0  # s, longest delay, period or width
MIN_TIME = 1e-6  # s, shortest period or width (the unit's 1 MHz clock)
DEFAULT_MAX_PULSES = 1_000_000
MAX_PULSES_LIMIT = 10_000_000
MAX_STEPS = 2_000_000_000
MAX_READ = 100  # pulses of one ?PULSES reply
MODES = ("TIME", "POSITION")
STATES = ("IDLE", "ARMED", "RUNNING")

# Error codes (docs/protocol-timing.md; E_UNKNOWN_COMMAND = 1 and E_BAD_ARGUMENT = 2 are common).
E_BUSY = 5
E_SETTINGS = 6
E_NOT_SENT = 7


class TimingError(CommandError):
    """A request the unit refuses: becomes ``ERROR <code> <message>``."""


def _count_arg(args: list[str], what: str, low: int, high: int) -> int:
    text = one_arg(args, what)
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or not low <= int(text) <= high:
        raise TimingError(E_BAD_ARGUMENT, f"bad argument: {what} must be {low}..{high}, got {text}")
    return int(text)


def _steps_arg(args: list[str], what: str) -> int:
    text = one_arg(args, f"{what}, an integer number of steps")
    body = text[1:] if text[:1] in "+-" else text
    if not (body.isascii() and body.isdigit()) or len(body) > 12 or abs(int(text)) > MAX_STEPS:
        raise TimingError(
            E_BAD_ARGUMENT,
            f"bad argument: {what} must be an integer number of steps within +-{MAX_STEPS}, "
            f"got {text}",
        )
    return int(text)


class TimingController(WithoutFaults, PhysicsController):
    """A virtual timing unit speaking the protocol of ``docs/protocol-timing.md``.

    ``config``: ``{"outputs": {"1": "scaler1", "2": "cam1"}, "encoders": {"1":
    "smc1/3"}, "max_pulses": 1000000}``: each output drives the gate input of
    the named scaler or the trigger input of the named camera; each encoder
    input follows an SMC axis (``controller/axis``); both are resolved by
    :meth:`wire` once every controller exists. ``kind`` and ``port`` are
    accepted and ignored. ``ValueError`` names the bad key.
    """

    kind = "timing"

    def _configure(self, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise ValueError("must be an object with 'outputs' and 'encoders'")
        check_keys("", config, ("kind", "port", "outputs", "encoders", "max_pulses"))
        self._output_names = self._names("outputs", config.get("outputs", {}), "output")
        self._encoder_names = self._names("encoders", config.get("encoders", {}), "encoder")
        for key, source in self._encoder_names.items():
            controller, _, axis = source.partition("/")
            if not controller or not axis.isdigit():
                raise ValueError(
                    f"encoders.{key}: must name an SMC axis as 'controller/axis' "
                    f"(such as 'smc1/3'), got {source!r}"
                )
        max_pulses = config.get("max_pulses", DEFAULT_MAX_PULSES)
        if not is_int(max_pulses) or not 1 <= max_pulses <= MAX_PULSES_LIMIT:
            raise ValueError(
                f"max_pulses: must be an integer 1..{MAX_PULSES_LIMIT}, got {max_pulses!r}"
            )
        self.max_pulses = max_pulses
        self.scalers: list[Any] = []  # (wired) gate inputs
        self.cameras: list[Any] = []  # (wired) trigger inputs
        self.encoders: dict[int, Any] = {}  # number -> SmcAxis
        # settings
        self.mode = "TIME"
        self.delay = 0.0
        self.period = 1.0
        self.width = 0.5
        self.count = 1
        self.encoder = 1 if self._encoder_names else 0
        self.pstart = 0
        self.pstep = 100
        # the train
        self.state = "IDLE"
        self.sent = 0  # pulses sent in the current (or last) train
        self._train = 0  # pulses of the current train
        self._start = 0.0
        self._processed = 0.0  # pulses are delivered up to this instant
        self._falls: list[tuple[float, float]] = []  # (rise, fall) of pulses not ended yet
        self._times = np.zeros(0)
        self._positions = np.zeros(0, dtype=np.int64)
        self._delivering = False
        self._tick: asyncio.TimerHandle | None = None
        self._commands: dict[str, Command] = {
            "?ID": Command(self._cmd_id),
            "?OUTPUTS": Command(self._cmd_outputs),
            "?ENCODERS": Command(self._cmd_encoders),
            "MODE": Command(self._cmd_mode),
            "?MODE": Command(self._query(lambda: self.mode)),
            "DELAY": Command(self._time_setting("delay", 0.0)),
            "?DELAY": Command(self._query(lambda: format_seconds(self.delay))),
            "PERIOD": Command(self._time_setting("period", MIN_TIME)),
            "?PERIOD": Command(self._query(lambda: format_seconds(self.period))),
            "WIDTH": Command(self._time_setting("width", MIN_TIME)),
            "?WIDTH": Command(self._query(lambda: format_seconds(self.width))),
            "COUNT": Command(self._cmd_count),
            "?COUNT": Command(self._query(lambda: str(self.count))),
            "ENCODER": Command(self._cmd_encoder),
            "?ENCODER": Command(self._query(lambda: str(self.encoder))),
            "PSTART": Command(self._cmd_pstart),
            "?PSTART": Command(self._query(lambda: str(self.pstart))),
            "PSTEP": Command(self._cmd_pstep),
            "?PSTEP": Command(self._query(lambda: str(self.pstep))),
            "?ENCPOS": Command(self._cmd_encpos),
            "ARM": Command(self._ok_action(self.arm)),
            "START": Command(self._ok_action(self.start)),
            "STOP": Command(self._ok_action(self.stop)),
            "?STATUS": Command(self._cmd_status),
            "?PULSES": Command(self._cmd_pulses),
        }

    @staticmethod
    def _names(section: str, data: Any, what: str) -> dict[int, str]:
        if not isinstance(data, Mapping):
            raise ValueError(f'{section}: must be an object such as {{"1": "name"}}')

        def check(key: str, value: Any) -> None:
            if not isinstance(value, str) or not value:
                raise ValueError(f"{section}.{key}: must be a controller name, got {value!r}")

        return numbered(section, data, what, check)

    # ------------------------------------------------------------- wiring
    def wire(self, controllers: Mapping[str, Any]) -> None:
        """Connect the outputs and encoder inputs to the simulator's other
        controllers (by name); ``ValueError`` names the bad key."""
        names = ", ".join(sorted(controllers))
        for number, name in self._output_names.items():
            target = controllers.get(name)
            kind = getattr(target, "kind", None)
            if kind not in ("scaler", "camera"):
                what = f"a {kind} controller" if target is not None else "no controller"
                raise ValueError(
                    f"outputs.{number}: {name!r} is {what}; an output drives the gate of a "
                    f"scaler or the trigger of a camera (controllers: {names})"
                )
            if target in self.scalers or target in self.cameras:
                raise ValueError(f"outputs.{number}: {name!r} is wired to two outputs")
            (self.scalers if kind == "scaler" else self.cameras).append(target)
            target.upstream.append(self.deliver)
        for number, source in self._encoder_names.items():
            name, _, axis = source.partition("/")
            controller = controllers.get(name)
            axes = getattr(controller, "axes", None)
            if getattr(controller, "kind", None) != "smc" or axes is None:
                raise ValueError(
                    f"encoders.{number}: {name!r} is no SMC controller of this simulator "
                    f"(controllers: {names})"
                )
            if int(axis) not in axes:
                raise ValueError(
                    f"encoders.{number}: {name} has no axis {axis}: valid axes are 1..{len(axes)}"
                )
            self.encoders[number] = axes[int(axis)]

    # ------------------------------------------------------------- pulses
    def _axis(self) -> Any:
        return self.encoders.get(self.encoder)

    def _position_at(self, when: float) -> int:
        axis = self._axis()
        return math.floor(axis.position_at(when) + 0.5) if axis is not None else 0

    def deliver(self, now: float | None = None) -> float:
        """Send every pulse edge up to ``now`` (default: the clock) to the
        outputs and into the record. Returns ``now``."""
        if now is None:
            now = self._clock()
        if self._delivering or now < self._processed:
            return now
        self._delivering = True
        try:
            if self.state == "RUNNING":
                axis = self._axis()
                if axis is not None:
                    axis.update(now)
                self._rises(now)
            self._ends(now)
            self._processed = now
        finally:
            self._delivering = False
        return now

    def _rises(self, now: float) -> None:
        while self.sent < self._train:
            when = self._next_rise(now)
            if when is None:
                return
            k = self.sent
            self._times[k] = when - self._start
            self._positions[k] = self._position_at(when)
            self.sent += 1
            for camera in self.cameras:
                camera.trigger(when)
            self._falls.append((when, when + self.width))
        self.state = "IDLE"  # the last pulse has started: the train is done

    def _next_rise(self, now: float) -> float | None:
        """When pulse ``sent`` starts, if it does by ``now``."""
        k = self.sent
        if self.mode == "TIME":
            when = self._start + self.delay + k * self.period
            return when if when <= now else None
        after = self._start + self._times[k - 1] if k else self._start
        axis = self._axis()
        target = self.pstart + k * self.pstep
        direction = 1 if self.pstep > 0 else -1
        return axis.crossing_time_between(target, direction, after, now)

    def _ends(self, now: float) -> None:
        while self._falls and self._falls[0][1] <= now:
            rise, fall = self._falls.pop(0)
            for scaler in self.scalers:
                scaler.gate(rise, fall)

    # ------------------------------------------------------------- checks
    def _spacing(self) -> float:
        """The shortest time between two pulses of the train (position mode:
        at the axis's velocity setting)."""
        if self.mode == "TIME":
            return self.period
        axis = self._axis()
        return abs(self.pstep) / axis.velocity

    def _check_settings(self) -> None:
        """Refuse a train the unit or what it drives cannot do (the reason
        and the fix)."""
        if self.count > self.max_pulses:
            raise TimingError(
                E_SETTINGS,
                f"settings: COUNT {self.count} is more than the unit records "
                f"({self.max_pulses} pulses): lower COUNT",
            )
        if self.mode == "POSITION":
            if self._axis() is None:
                raise TimingError(
                    E_SETTINGS,
                    "settings: POSITION mode needs an encoder: select one with ENCODER "
                    f"(1..{len(self.encoders)})"
                    if self.encoders
                    else "settings: POSITION mode needs an encoder and none is wired "
                    "to this unit (its 'encoders' configuration)",
                )
            spacing = self._spacing()
            what = (
                f"pulses every {abs(self.pstep)} steps at {self._axis().velocity} steps/s "
                f"come every {spacing:g} s"
            )
        else:
            spacing = self.period
            what = f"the period is {spacing:g} s"
        if self.width >= spacing:
            raise TimingError(
                E_SETTINGS,
                f"settings: WIDTH {self.width:g} s is not shorter than the time between "
                f"pulses ({what}): a pulse must end before the next one starts; lower WIDTH"
                + (" or raise PERIOD" if self.mode == "TIME" else ", raise PSTEP or slow the axis"),
            )
        for scaler in self.scalers:
            if not scaler.armed:
                continue
            gap = spacing - self.width
            if gap < scaler.dead_time:
                raise TimingError(
                    E_SETTINGS,
                    f"settings: {what} and WIDTH is {self.width:g} s: only {gap:g} s between "
                    f"gates, shorter than {scaler.name} can count ({scaler.dead_time:g} s "
                    f"dead time between gates); make the time between pulses at least "
                    f"WIDTH + {scaler.dead_time:g} s or lower WIDTH",
                )
            free = scaler.free_points()
            if self.count > free:
                raise TimingError(
                    E_SETTINGS,
                    f"settings: COUNT {self.count} pulses, but {scaler.name} is armed for "
                    f"{free} more point(s): ARM {scaler.name} for {self.count} points "
                    f"(its buffer holds {scaler.buffer_size}) or lower COUNT",
                )
        for camera in self.cameras:
            if not (camera.acquiring and camera.trigger_source == "EXTERNAL"):
                continue
            if spacing < camera.period:
                raise TimingError(
                    E_SETTINGS,
                    f"settings: {what}, shorter than {camera.name} needs per frame "
                    f"({camera.period:g} s exposure + readout): lengthen the time between "
                    f"pulses or shorten {camera.name}'s exposure",
                )
            free = camera.free_frames()
            if free is not None and self.count > free:
                raise TimingError(
                    E_SETTINGS,
                    f"settings: COUNT {self.count} pulses, but {camera.name} takes {free} "
                    f"more frame(s): set {camera.name}'s FRAMES to {self.count} (MODE "
                    "MULTIPLE) or lower COUNT",
                )

    def _check_idle(self) -> None:
        self.deliver()
        if self.state != "IDLE":
            raise TimingError(E_BUSY, f"busy: {self.state.lower()}; STOP first")

    # ------------------------------------------------------------- train
    def arm(self, now: float) -> None:
        """Check the settings against the unit and what it drives, clear the
        record and wait for START."""
        self.deliver(now)
        if self.state == "RUNNING":
            raise TimingError(E_BUSY, "busy: running; STOP first")
        self._sync_outputs(now)
        self._check_settings()
        self._clear_record()
        self.state = "ARMED"

    def _clear_record(self) -> None:
        self.sent = 0
        self._train = self.count
        self._times = np.zeros(self.count)
        self._positions = np.zeros(self.count, dtype=np.int64)

    def start(self, now: float) -> None:
        """Start the train now (arming first if needed), after checking the
        settings again (what it drives may have been armed since); a refused
        START leaves the unit as it was."""
        self.deliver(now)
        if self.state == "RUNNING":
            raise TimingError(E_BUSY, "busy: running; STOP first")
        self._sync_outputs(now)
        self._check_settings()
        if self.mode == "POSITION":
            position = self._axis().position_at(now)
            if (self.pstart - position) * self.pstep <= 0:
                raise TimingError(
                    E_SETTINGS,
                    f"settings: encoder {self.encoder} is at {math.floor(position + 0.5)}, "
                    f"already at or beyond the first pulse position PSTART {self.pstart} "
                    f"for PSTEP {self.pstep}: move the axis before PSTART first",
                )
        if self.state == "IDLE":
            self._clear_record()
        self.state = "RUNNING"
        self._start = now
        self._processed = now
        self._schedule_tick()

    def stop(self, now: float) -> None:
        """No pulse starts after now; a pulse already started ends at its time."""
        self.deliver(now)
        if self.state != "IDLE":
            self.state = "IDLE"
            self._train = self.sent
        if not self._falls:
            self._cancel_tick()

    def _sync_outputs(self, now: float) -> None:
        """Bring what the unit drives up to now before reading its state."""
        for target in (*self.scalers, *self.cameras):
            target.update(now)

    def pulses(self, first: int, count: int) -> list[tuple[int, float, int | None]]:
        """Pulses ``first`` .. ``first + count - 1`` of the record: index, time
        since START (s) and encoder position (None without an encoder)."""
        self.deliver()
        if not 1 <= count <= MAX_READ:
            raise TimingError(
                E_BAD_ARGUMENT, f"bad argument: read 1..{MAX_READ} pulses at a time, got {count}"
            )
        if first + count > self.sent:
            raise TimingError(
                E_NOT_SENT,
                f"pulses {first}..{first + count - 1} not sent: {self.sent} pulse(s) sent "
                + (f"(0..{self.sent - 1})" if self.sent else "yet")
                + f" of {self._train}; read sent pulses only",
            )
        encoder = self._axis() is not None
        return [
            (i, float(self._times[i]), int(self._positions[i]) if encoder else None)
            for i in range(first, first + count)
        ]

    # -------------------------------------------------------- event loop
    def _schedule_tick(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (unit tests): delivered at each request
        self._cancel_tick()
        self._tick = loop.call_later(TICK, self._on_tick)

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _on_tick(self) -> None:
        self._tick = None
        self.deliver()
        for target in (*self.scalers, *self.cameras):
            target.update()
        if self.state == "RUNNING" or self._falls:
            self._schedule_tick()

    # ------------------------------------------------------------ public API
    def status(self) -> dict[str, Any]:
        """Settings, state and wiring, for the control port."""
        self.deliver()
        return {
            "state": self.state,
            "sent": self.sent,
            "count": self.count,
            "mode": self.mode,
            "delay": self.delay,
            "period": self.period,
            "width": self.width,
            "encoder": self.encoder,
            "pstart": self.pstart,
            "pstep": self.pstep,
            "outputs": {str(n): name for n, name in self._output_names.items()},
            "encoders": {str(n): name for n, name in self._encoder_names.items()},
        }

    # --------------------------------------------------------------- commands
    def _query(self, value: Any) -> Any:
        def handler(args: list[str]) -> str:
            no_args(args)
            return value()

        return handler

    def _time_setting(self, name: str, low: float) -> Any:
        def handler(args: list[str]) -> str:
            value = seconds_arg(args, name, low, MAX_TIME)
            self._check_idle()
            setattr(self, name, value)
            return "OK"

        return handler

    def _cmd_id(self, args: list[str]) -> str:
        no_args(args)
        return f"TIMING-{len(self._output_names)} {FIRMWARE_VERSION}"

    def _cmd_outputs(self, args: list[str]) -> str:
        no_args(args)
        return " ".join(f"{n}:{name}" for n, name in self._output_names.items()) or "NONE"

    def _cmd_encoders(self, args: list[str]) -> str:
        no_args(args)
        return " ".join(f"{n}:{name}" for n, name in self._encoder_names.items()) or "NONE"

    def _cmd_mode(self, args: list[str]) -> str:
        text = one_arg(args, " or ".join(MODES)).upper()
        if text not in MODES:
            raise TimingError(
                E_BAD_ARGUMENT, f"bad argument: mode must be {', '.join(MODES)}, got {text}"
            )
        self._check_idle()
        self.mode = text
        return "OK"

    def _cmd_count(self, args: list[str]) -> str:
        value = _count_arg(args, "count (pulses)", 1, self.max_pulses)
        self._check_idle()
        self.count = value
        return "OK"

    def _cmd_encoder(self, args: list[str]) -> str:
        value = _count_arg(args, "encoder (0 = none)", 0, len(self._encoder_names))
        self._check_idle()
        self.encoder = value
        return "OK"

    def _cmd_pstart(self, args: list[str]) -> str:
        value = _steps_arg(args, "pstart")
        self._check_idle()
        self.pstart = value
        return "OK"

    def _cmd_pstep(self, args: list[str]) -> str:
        value = _steps_arg(args, "pstep")
        if value == 0:
            raise TimingError(
                E_BAD_ARGUMENT,
                "bad argument: pstep must not be 0: steps between pulses, its sign the "
                "direction of motion (+100 or -100)",
            )
        self._check_idle()
        self.pstep = value
        return "OK"

    def _cmd_encpos(self, args: list[str]) -> str:
        no_args(args)
        now = self.deliver()
        axis = self._axis()
        if axis is None:
            raise TimingError(E_SETTINGS, "settings: no encoder selected (ENCODER 0)")
        axis.update(now)
        return str(self._position_at(now))

    def _cmd_status(self, args: list[str]) -> str:
        no_args(args)
        self.deliver()
        return f"{self.state} {self.sent} {self._train}"

    def _cmd_pulses(self, args: list[str]) -> str:
        if len(args) != 2 or not all(a.isascii() and a.isdigit() and len(a) <= 12 for a in args):
            got = " ".join(args) or "nothing"
            raise TimingError(
                E_BAD_ARGUMENT,
                f"bad argument: expected the first pulse and a number of pulses, got {got}",
            )
        first, count = int(args[0]), int(args[1])
        records = self.pulses(first, count)
        return f"{first} {count} " + " ".join(
            f"{format_seconds(t)},{'-' if p is None else p}" for _, t, p in records
        )
