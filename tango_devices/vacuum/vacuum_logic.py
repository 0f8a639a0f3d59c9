"""Component logic of a vacuum gauge and a valve over EPICS Channel Access
(no tango import). Both are monitored by pyepics; a change on the IOC wakes the
poll thread at once, so the state follows within milliseconds."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from tango_devices.common.component import Component, ComponentError
from tango_devices.vacuum import states as st


class VacuumError(ComponentError):
    pass


@dataclass(frozen=True)
class EpicsConfig:
    pv: str
    addr_list: str | None = None
    timeout: float = 1.0
    poll_period: float = 0.5
    reconnect_period: float = 1.0
    rest_period: float | None = None  # the poll period once nothing changed for a while

    def validate(self, what: str) -> None:
        if not self.pv:
            raise VacuumError(f"Bad configuration: PV is empty: set it to the {what}'s PV prefix")


def _gauge_driver(config: EpicsConfig):
    from tango_devices.drivers import epics_ca
    from tango_devices.drivers.epics_vacuum import VacuumGauge

    epics_ca.configure(config.addr_list)
    return VacuumGauge(config.pv, timeout=config.timeout)


def _valve_driver(config: EpicsConfig):
    from tango_devices.drivers import epics_ca
    from tango_devices.drivers.epics_vacuum import VacuumValve

    epics_ca.configure(config.addr_list)
    return VacuumValve(config.pv, timeout=config.timeout)


class _EpicsComponent(Component):
    def __init__(self, config: EpicsConfig, driver, thread_context) -> None:
        self.config = config
        super().__init__(
            driver,
            f"EPICS {config.pv}",
            idle_period=config.poll_period,
            busy_period=0.05,
            reconnect_period=config.reconnect_period,
            thread_context=thread_context,
            rest_period=config.rest_period,
        )
        # pyepics calls back from its own thread on every value or connection change
        driver.add_listener(self.wake)


@dataclass(frozen=True)
class GaugeReading:
    pressure: float
    severity: int
    status: str


class GaugeLogic(_EpicsComponent):
    table = st.GAUGE_TABLE
    hardware = "the vacuum gauge IOC"
    error_class = VacuumError

    def __init__(
        self,
        config: EpicsConfig,
        alarm_above: float | None = None,
        driver_factory: Callable[[EpicsConfig], object] = _gauge_driver,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        config.validate("gauge")
        self.alarm_above = alarm_above
        self._pressure: float | None = None
        self._severity = 0
        super().__init__(config, driver_factory(config), thread_context)

    def observe(self) -> GaugeReading:
        severity, status = self._driver.alarm()
        return GaugeReading(self._driver.pressure(), severity, status)

    def apply(self, reading: GaugeReading) -> None:
        self._pressure = reading.pressure
        self._severity = reading.severity

    def classify(self, reading: GaugeReading) -> tuple[str, str]:
        in_alarm = self.machine.state is st.ALARM
        trigger = st.classify_gauge(reading.pressure, reading.severity, self.alarm_above, in_alarm)
        if trigger == st.INVALID:
            return trigger, (
                f"The gauge reports an invalid reading ({reading.status}): check the gauge "
                "head and its controller."
            )
        if trigger == st.ABOVE_ALARM:
            return trigger, (
                f"Pressure {reading.pressure:.2e} mbar is above the alarm threshold "
                f"{self.alarm_above:.1e} mbar."
            )
        return trigger, f"Pressure {reading.pressure:.2e} mbar."

    def publish_key(self):
        return (self._pressure, self._severity, self.link_ok)

    @property
    def pressure(self) -> float | None:
        return self._pressure

    @property
    def severity(self) -> int:
        return self._severity


class ValveLogic(_EpicsComponent):
    table = st.VALVE_TABLE
    hardware = "the valve IOC"
    error_class = VacuumError

    def __init__(
        self,
        config: EpicsConfig,
        driver_factory: Callable[[EpicsConfig], object] = _valve_driver,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        config.validate("valve")
        self._valve_state: str | None = None
        super().__init__(config, driver_factory(config), thread_context)

    def observe(self) -> str:
        return self._driver.state()

    def apply(self, state: str) -> None:
        self._valve_state = state

    def classify(self, state: str) -> tuple[str, str]:
        trigger = st.classify_valve(state)
        if trigger == st.STUCK:
            return trigger, (
                f"The valve reports {state}: it did not reach its end position. Check the "
                "valve and its compressed air, then command it again."
            )
        return trigger, {
            st.OPENED: "Valve open.",
            st.CLOSED: "Valve closed.",
            st.MOVING_OBSERVED: "Valve moving.",
        }[trigger]

    def busy(self) -> bool:
        return self.machine.state is st.MOVING

    def open(self) -> None:
        self.require("Open")
        self.call("Open", self._driver.open_valve)
        self.poll_once()

    def close(self) -> None:
        self.require("Close")
        self.call("Close", self._driver.close_valve)
        self.poll_once()
