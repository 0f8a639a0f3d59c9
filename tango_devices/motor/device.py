"""Motor: one axis per device server process (Tango layer only).

Behaviour lives in :class:`~tango_devices.motor.motor_logic.MotorLogic`; this
file declares properties, attributes and commands, answers is_*_allowed from
the Motor transition table and maps errors to DevFailed.

Position is served from Tango's polling cache, so client reads do not enter
Python: it is polled *externally triggered* (``polled_attr`` = position, 0,
which ``beamline config`` adds for every Motor) and the device fills the cache
itself after every observation of the hardware, before any state change that
observation causes: a client that sees the motor back ON reads the final
position, and a client that calibrates reads the new position at once.
Position change events are pushed at most every 100 ms while moving and always
for a settled value; State events are pushed the moment the state changes.
"""

from __future__ import annotations

import time

import tango
from tango import AttrWriteType, DevState
from tango.server import attribute, command, device_property

from tango_devices.common.device_base import QUALITY, BeamlineDevice, run_server, throw
from tango_devices.common.statemachine import CommandRefused
from tango_devices.motor.motor_logic import MotorConfig, MotorError, MotorLogic, Quality

POSITION_EVENT_PERIOD = 0.1  # s, while moving


class Motor(BeamlineDevice):
    """A motor axis on an SMC ASCII motion controller (serial line or TCP)."""

    #: attributes served from the polling cache, refreshed by the device itself
    EXTERNALLY_POLLED = ("Position",)

    Port = device_property(
        dtype=str,
        mandatory=True,
        doc="pyserial URL of the motion controller: /dev/ttyUSB0, socket://host:port, rfc2217://...",
    )
    Axis = device_property(dtype=int, mandatory=True, doc="Axis number on the controller (1..N)")
    StepsPerUnit = device_property(
        dtype=float, default_value=1000.0, doc="Controller steps per user unit (negative inverts)"
    )
    Timeout = device_property(dtype=float, default_value=0.5, doc="Per-request timeout (s)")
    IdlePollPeriod = device_property(
        dtype=float, default_value=0.2, doc="Hardware poll period when not moving (s)"
    )
    ReconnectPeriod = device_property(
        dtype=float, default_value=1.0, doc="Retry period while the controller is unreachable (s)"
    )
    HomeDirection = device_property(
        dtype=int, default_value=1, doc="Direction of the home search: 1 or -1"
    )

    # ------------------------------------------------------------------ init
    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self.set_change_event("Position", True, True)
        self.logic: MotorLogic | None = None
        self._last_event = 0.0
        self._cached = True
        self._server_ready = getattr(self, "_server_ready", False)
        unit = self.get_device_attr().get_attr_by_name("Position").get_properties().unit
        config = MotorConfig(
            url=self.Port,
            axis=self.Axis,
            steps_per_unit=self.StepsPerUnit,
            unit="" if unit in ("", "No unit") else unit,
            timeout=self.Timeout,
            idle_poll_period=self.IdlePollPeriod,
            reconnect_period=self.ReconnectPeriod,
        )
        try:
            logic = MotorLogic(config, thread_context=tango.EnsureOmniThread)
        except MotorError as exc:
            self.set_state(DevState.FAULT)
            self.set_status(f"{exc}. Fix the device properties, then run Init.")
            return
        self.init_state_events(logic.machine)
        logic.add_value_listener(self._publish_position)
        self.logic = logic
        self.set_status(logic.status)
        logic.start()
        # Give a reachable controller a moment so the first State read is real;
        # never block the server start on unreachable hardware.
        logic.wait_until_known(timeout=min(1.0, 2 * self.Timeout))

    def _publish_position(self, _reading) -> None:
        """Value listener (any thread): fill the Position cache and push the
        change event, under the device monitor with the *current* reading, so
        the last fill always holds the latest value."""
        with tango.AutoTangoMonitor(self):
            reading = self.logic.position()
            if reading.value is None:
                return
            quality = QUALITY[reading.quality.value]
            now = time.time()
            if self._cached:
                # No w_value: Tango keeps the last written set point. (A w_value
                # outside min/max makes cppTango throw inside the fill while it
                # holds the poll monitor, which then stays locked for good.)
                data = tango.TimedAttrData(value=reading.value, quality=quality, time_stamp=now)
                try:
                    tango.Util.instance().fill_attr_polling_buffer(self, "Position", data)
                except tango.DevFailed as exc:
                    if not self._server_ready:
                        return  # polling starts with the server: server_init_hook refills
                    self._cached = False
                    self.warn_stream(
                        "Position is not polled externally, so reads are not served from the "
                        "polling cache: add polled_attr [position, 0] to the device properties "
                        f"(beamline config apply does). {exc.args[0].desc}"
                    )
            if (
                reading.quality is Quality.CHANGING
                and now - self._last_event < POSITION_EVENT_PERIOD
            ):
                return
            self._last_event = now
            self.push_change_event("Position", reading.value, now, quality)

    def server_init_hook(self) -> None:
        """The server is up and its polling configured: fill the cache now."""
        self._server_ready = True
        if self.logic is not None:
            self.logic.republish()

    def delete_device(self) -> None:
        if self.logic is not None:
            self.logic.stop_polling()
            self.logic = None

    def _logic(self, origin: str) -> MotorLogic:
        if self.logic is None:
            throw("MOTOR_NOT_CONFIGURED", self.get_status(), origin)
        return self.logic

    def _run(self, origin: str, fn, *args):
        try:
            return fn(*args)
        except (CommandRefused, MotorError) as exc:
            self.refuse(exc, origin)

    def _check(self, what: str) -> bool:
        """is_*_allowed: refuse with the state, the allowed states and the cause."""
        logic = self._logic(f"Motor.is_{what}_allowed")
        try:
            logic.machine.check(what, logic.status if not logic.machine.is_allowed(what) else "")
        except CommandRefused as exc:
            throw("API_CommandNotAllowed", str(exc), f"Motor.{what}")
        return True

    # ------------------------------------------------------------ attributes
    @attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        abs_change="0.0001",
        format="%10.4f",
        description="User position = DialPosition + Offset. Writing it starts an absolute "
        "move; min_value/max_value are the soft limits.",
    )
    def Position(self):
        return self._reading(self._logic("Motor.read_Position").position(), "Position")

    @Position.write
    def Position(self, value: float) -> None:
        self._run("Motor.write_Position", self._logic("Motor.write_Position").move_to, value)

    def is_Position_allowed(self, req_type) -> bool:
        if req_type == tango.AttReqType.READ_REQ:
            return True
        return self._check("write_Position")

    @attribute(
        dtype=float,
        format="%10.4f",
        description="Position of the axis as the controller counts it (steps / StepsPerUnit).",
    )
    def DialPosition(self):
        return self._reading(self._logic("Motor.read_DialPosition").dial_position(), "DialPosition")

    @attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        format="%10.4f",
        description="User offset: Position = DialPosition + Offset. Memorized in the database.",
    )
    def Offset(self) -> float:
        return self._logic("Motor.read_Offset").offset

    @Offset.write
    def Offset(self, value: float) -> None:
        self._run("Motor.write_Offset", self._logic("Motor.write_Offset").set_offset, value)

    def is_Offset_allowed(self, req_type) -> bool:
        if req_type == tango.AttReqType.READ_REQ:
            return True
        return self._check("write_Offset")

    @attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        format="%8.4f",
        description="Slew velocity in user units per second.",
    )
    def Velocity(self):
        return self._optional(self._logic("Motor.read_Velocity").velocity, "Velocity")

    @Velocity.write
    def Velocity(self, value: float) -> None:
        self._run("Motor.write_Velocity", self._logic("Motor.write_Velocity").set_velocity, value)

    def is_Velocity_allowed(self, req_type) -> bool:
        if req_type == tango.AttReqType.READ_REQ:
            return True
        return self._check("write_Velocity")

    @attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        unit="s",
        format="%6.3f",
        description="Acceleration (and deceleration) time to reach the velocity, in seconds.",
    )
    def Acceleration(self):
        return self._optional(self._logic("Motor.read_Acceleration").acceleration, "Acceleration")

    @Acceleration.write
    def Acceleration(self, value: float) -> None:
        self._run(
            "Motor.write_Acceleration",
            self._logic("Motor.write_Acceleration").set_acceleration,
            value,
        )

    def is_Acceleration_allowed(self, req_type) -> bool:
        if req_type == tango.AttReqType.READ_REQ:
            return True
        return self._check("write_Acceleration")

    def _switch(self, name: str, field: str) -> bool:
        status = self._logic(f"Motor.read_{name}").axis_status
        if status is None:
            throw("MOTOR_NOT_CONNECTED", f"{name} is not known yet: {self.get_status()}", name)
        return bool(getattr(status, field))

    @attribute(dtype=bool, description="Low (negative) hardware limit switch active.")
    def LowLimitSwitch(self) -> bool:
        return self._switch("LowLimitSwitch", "low_limit")

    @attribute(dtype=bool, description="High (positive) hardware limit switch active.")
    def HighLimitSwitch(self) -> bool:
        return self._switch("HighLimitSwitch", "high_limit")

    @attribute(dtype=bool, description="Home switch active.")
    def HomeSwitch(self) -> bool:
        return self._switch("HomeSwitch", "home_switch")

    @attribute(dtype=bool, description="A home search has completed since the axis was powered.")
    def Homed(self) -> bool:
        return self._switch("Homed", "homed")

    def _reading(self, reading, name: str):
        if reading.value is None:
            throw("MOTOR_NOT_CONNECTED", f"{name} is not known yet: {self.get_status()}", name)
        return reading.value, time.time(), QUALITY[reading.quality.value]

    def _optional(self, value, name: str):
        if value is None:
            throw("MOTOR_NOT_CONNECTED", f"{name} is not known yet: {self.get_status()}", name)
        return value

    # -------------------------------------------------------------- commands
    @command(doc_in="Power the axis (clears a latched fault first).")
    def On(self) -> None:
        self._run("Motor.On", self._logic("Motor.On").power_on)

    def is_On_allowed(self) -> bool:
        return self._check("On")

    @command(doc_in="Switch the amplifier off.")
    def Off(self) -> None:
        self._run("Motor.Off", self._logic("Motor.Off").power_off)

    def is_Off_allowed(self) -> bool:
        return self._check("Off")

    @command(doc_in="Decelerating stop of a move or home search.")
    def Stop(self) -> None:
        self._run("Motor.Stop", self._logic("Motor.Stop").stop)

    def is_Stop_allowed(self) -> bool:
        return self._check("Stop")

    @command(doc_in="Search the home switch (direction from the HomeDirection property).")
    def Home(self) -> None:
        self._run("Motor.Home", self._logic("Motor.Home").home, self.HomeDirection)

    def is_Home_allowed(self) -> bool:
        return self._check("Home")

    @command(doc_in="Clear a latched axis fault on the controller.")
    def Reset(self) -> None:
        self._run("Motor.Reset", self._logic("Motor.Reset").reset)

    def is_Reset_allowed(self) -> bool:
        return self._check("Reset")

    @command(
        dtype_in=float,
        doc_in="Calibrate: the current position becomes this value (changes Offset, "
        "which is memorized; the motor does not move).",
    )
    def SetPosition(self, position: float) -> None:
        offset = self._run(
            "Motor.SetPosition", self._logic("Motor.SetPosition").set_position, position
        )
        self._memorize("Offset", offset)

    def is_SetPosition_allowed(self) -> bool:
        return self._check("SetPosition")

    def _memorize(self, attr: str, value: float) -> None:
        """Store a memorized attribute's value the way Tango does for a client write."""
        try:
            db = tango.Util.instance().get_database()
            db.put_device_attribute_property(self.get_name(), {attr: {"__value": [repr(value)]}})
        except (tango.DevFailed, RuntimeError) as exc:
            self.warn_stream(f"could not memorize {attr}={value}: {exc}")


def main(args=None) -> None:
    run_server((Motor,), args=args)


if __name__ == "__main__":
    main()
