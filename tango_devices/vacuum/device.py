"""VacuumGauge and Valve: vacuum devices over EPICS Channel Access (Tango layer only).

Each class is its own server executable (``VacuumGauge``, ``Valve``)."""

from __future__ import annotations

import math
import time

import tango
from tango import DevState
from tango.server import attribute, device_property

from tango_devices.common.device_base import BeamlineDevice, component_command, run_server
from tango_devices.vacuum.vacuum_logic import EpicsConfig, GaugeLogic, ValveLogic


class _EpicsDevice(BeamlineDevice):
    PV = device_property(
        dtype=str, mandatory=True, doc="PV prefix of the device on the IOC, e.g. BL01:VAC:GAUGE1"
    )
    EpicsAddrList = device_property(
        dtype=str,
        default_value="",
        doc="EPICS_CA_ADDR_LIST for this server (host:port ...); empty = the environment's",
    )
    Timeout = device_property(dtype=float, default_value=1.0, doc="Connection/put timeout (s)")
    ReconnectPeriod = device_property(
        dtype=float, default_value=1.0, doc="Retry period while the IOC is unreachable (s)"
    )
    RestPollPeriod = device_property(
        dtype=float,
        default_value=2.0,
        doc="Poll period once nothing has changed for 30 s (s; 0: PollPeriod always). "
        "A change on the IOC wakes the poll at once (Channel Access monitors)",
    )

    def epics_config(self, poll_period: float) -> EpicsConfig:
        return EpicsConfig(
            pv=self.PV,
            addr_list=self.EpicsAddrList or None,
            timeout=self.Timeout,
            poll_period=poll_period,
            reconnect_period=self.ReconnectPeriod,
            rest_period=self.RestPollPeriod or None,
        )


class VacuumGauge(_EpicsDevice):
    """A vacuum gauge: Pressure in mbar; ALARM above the Pressure attribute's max_alarm."""

    PollPeriod = device_property(dtype=float, default_value=0.5, doc="Poll period (s)")

    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self.set_change_event("Pressure", True, True)
        props = self.get_device_attr().get_attr_by_name("Pressure").get_properties()
        alarm_above = _number(props.max_alarm)
        config = self.epics_config(self.PollPeriod)

        def make() -> GaugeLogic:
            logic = GaugeLogic(config, alarm_above, thread_context=tango.EnsureOmniThread)
            logic.add_value_listener(self._publish)
            return logic

        self.start_logic(make, wait=self.Timeout + 0.5)

    def _publish(self) -> None:
        with tango.AutoTangoMonitor(self):
            logic = self.logic
            if logic.pressure is None:
                return
            if logic.link_ok:
                quality = tango.AttrQuality.ATTR_VALID
                if logic.alarm_above is not None and logic.pressure > logic.alarm_above:
                    quality = tango.AttrQuality.ATTR_ALARM
            else:
                quality = tango.AttrQuality.ATTR_INVALID
            self.push("Pressure", logic.pressure, quality)

    @attribute(
        dtype=float,
        unit="mbar",
        format="%.2e",
        rel_change="5",
        description="Pressure at the gauge. The device goes to ALARM above max_alarm.",
    )
    def Pressure(self):
        logic = self.need_logic("read_Pressure")
        value = self.value_or_fail(logic.pressure, "Pressure")
        if not logic.link_ok:
            return value, time.time(), tango.AttrQuality.ATTR_INVALID
        return value


class Valve(_EpicsDevice):
    """A vacuum valve: Open/Close; MOVING during its travel; FAULT if it sticks."""

    PollPeriod = device_property(dtype=float, default_value=0.5, doc="Poll period (s)")

    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        config = self.epics_config(self.PollPeriod)
        self.start_logic(
            lambda: ValveLogic(config, thread_context=tango.EnsureOmniThread),
            wait=self.Timeout + 0.5,
        )

    Open = component_command("Open", "open", "Open the valve.")

    Close = component_command("Close", "close", "Close the valve.")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def gauge_main(args=None) -> None:
    run_server((VacuumGauge,), args=args)


def valve_main(args=None) -> None:
    run_server((Valve,), args=args)
