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
Position (and DialPosition) change events are pushed at most every 100 ms while
moving and always for a settled value; State events are pushed the moment the
state changes; the settings and switches (``EVENTED``) when they change.
"""

from __future__ import annotations

import threading
import time

import tango
from tango import AttrWriteType, DevState
from tango.server import attribute, command, device_property

from tango_devices.common.device_base import (
    QUALITY,
    BeamlineDevice,
    component_attribute,
    component_command,
    run_server,
)
from tango_devices.motor.motor_logic import MotorConfig, MotorLogic, Quality

POSITION_EVENT_PERIOD = 0.1  # s, while moving
CACHE_GRACE = 10.0  # s after start-up during which a failed cache fill is retried


class Motor(BeamlineDevice):
    """A motor axis on an SMC ASCII motion controller (serial line or TCP)."""

    #: attributes served from the polling cache, refreshed by the device itself
    EXTERNALLY_POLLED = ("Position",)
    #: change events pushed by the kernel when they change (DialPosition: with Position)
    EVENTED = (
        "Offset",
        "Velocity",
        "Acceleration",
        "LowLimitSwitch",
        "HighLimitSwitch",
        "HomeSwitch",
        "Homed",
    )

    Port = device_property(
        dtype=str,
        mandatory=True,
        doc="pyserial URL of the SMC motion controller (/dev/ttyUSB0, socket://host:port, "
        "rfc2217://...), or ca://RECORD for an EPICS motor record",
    )
    Axis = device_property(dtype=int, mandatory=True, doc="Axis number on the controller (1..N)")
    StepsPerUnit = device_property(
        dtype=float, default_value=1000.0, doc="Controller steps per user unit (negative inverts)"
    )
    Timeout = device_property(dtype=float, default_value=0.5, doc="Per-request timeout (s)")
    IdlePollPeriod = device_property(
        dtype=float, default_value=0.5, doc="Hardware poll period when not moving (s)"
    )
    RestPollPeriod = device_property(
        dtype=float,
        default_value=1.0,
        doc="Hardware poll period once nothing has changed and no command came for 30 s "
        "(s; 0: IdlePollPeriod always)",
    )
    ReconnectPeriod = device_property(
        dtype=float, default_value=1.0, doc="Retry period while the controller is unreachable (s)"
    )
    EpicsAddrList = device_property(
        dtype=str,
        default_value="",
        doc="For a ca:// Port: EPICS_CA_ADDR_LIST of this server (host:port ...); "
        "empty = the environment's",
    )
    HomeDirection = device_property(
        dtype=int, default_value=1, doc="Direction of the home search: 1 or -1"
    )

    # ------------------------------------------------------------------ init
    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self.set_change_event("Position", True, True)
        self.set_change_event("DialPosition", True, False)
        self._last_event = 0.0
        self._cached = True
        self._server_ready = getattr(self, "_server_ready", False)
        self._cache_grace = getattr(self, "_cache_grace", time.monotonic() + CACHE_GRACE)
        unit = self.get_device_attr().get_attr_by_name("Position").get_properties().unit
        config = MotorConfig(
            url=self.Port,
            axis=self.Axis,
            steps_per_unit=self.StepsPerUnit,
            unit="" if unit in ("", "No unit") else unit,
            timeout=self.Timeout,
            idle_poll_period=self.IdlePollPeriod,
            rest_poll_period=self.RestPollPeriod or None,
            reconnect_period=self.ReconnectPeriod,
            epics_addr_list=self.EpicsAddrList or None,
        )

        def make() -> MotorLogic:
            logic = MotorLogic(config, thread_context=tango.EnsureOmniThread)
            logic.add_value_listener(self._publish_position)
            return logic

        self.start_logic(make, wait=min(1.0, 2 * self.Timeout))

    def _publish_position(self) -> None:
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
                    if not self._server_ready or time.monotonic() < self._cache_grace:
                        # polling is configured while the server starts: try again soon
                        threading.Timer(0.2, self.logic.republish).start()
                        return
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
            self.push_at("Position", reading.value, now, quality)
            dial = self.logic.dial_position()
            if dial.value is not None:
                self.push_at("DialPosition", dial.value, now, QUALITY[dial.quality.value])

    def server_init_hook(self) -> None:
        """The server is up and its polling configured: fill the cache now."""
        self._server_ready = True
        self._cache_grace = time.monotonic() + CACHE_GRACE
        if self.logic is not None:
            self.logic.republish()

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
        return self._reading(self.need_logic("read_Position").position(), "Position")

    @Position.write
    def Position(self, value: float) -> None:
        self.run("write_Position", self.need_logic("write_Position").move_to, value)

    def is_Position_allowed(self, req_type) -> bool:
        return self.check_write(req_type, "write_Position")

    @attribute(
        dtype=float,
        format="%10.4f",
        description="Position of the axis as the controller counts it (steps / StepsPerUnit).",
    )
    def DialPosition(self):
        return self._reading(self.need_logic("read_DialPosition").dial_position(), "DialPosition")

    Offset = component_attribute(
        "Offset",
        "offset",
        "set_offset",
        dtype=float,
        persist=True,
        format="%10.4f",
        description="User offset: Position = DialPosition + Offset. Kept in the database.",
    )

    Velocity = component_attribute(
        "Velocity",
        "velocity",
        "set_velocity",
        dtype=float,
        format="%8.4f",
        description="Slew velocity in user units per second.",
    )

    Acceleration = component_attribute(
        "Acceleration",
        "acceleration",
        "set_acceleration",
        dtype=float,
        unit="s",
        format="%6.3f",
        description="Acceleration (and deceleration) time to reach the velocity, in seconds.",
    )

    def _switch(self, name: str, field: str) -> bool:
        status = self.need_logic(f"read_{name}").axis_status
        return bool(getattr(self.value_or_fail(status, name), field))

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
        self.value_or_fail(reading.value, name)
        return reading.value, time.time(), QUALITY[reading.quality.value]

    # -------------------------------------------------------------- commands
    On = component_command("On", "power_on", "Power the axis (clears a latched fault first).")

    Off = component_command("Off", "power_off", "Switch the amplifier off.")

    Stop = component_command("Stop", "stop", "Decelerating stop of a move or home search.")

    @command(doc_in="Search the home switch (direction from the HomeDirection property).")
    def Home(self) -> None:
        self.run("Home", self.need_logic("Home").home, self.HomeDirection)

    def is_Home_allowed(self) -> bool:
        return self.check("Home")

    Reset = component_command("Reset", "reset", "Clear a latched axis fault on the controller.")

    @command(
        dtype_in=float,
        doc_in="Calibrate: the current position becomes this value (changes Offset, "
        "which is kept in the database; the motor does not move).",
    )
    def SetPosition(self, position: float) -> None:
        logic = self.need_logic("SetPosition")
        old = logic.offset
        offset = self.run("SetPosition", logic.set_position, position)
        self.persist("Offset", offset, lambda: logic.set_offset(old), "SetPosition")

    def is_SetPosition_allowed(self) -> bool:
        return self.check("SetPosition")


def main(args=None) -> None:
    run_server((Motor,), args=args)


if __name__ == "__main__":
    main()
