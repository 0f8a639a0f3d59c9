"""Component logic of a shutter driven by a PLC over TCP (no tango import)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from tango_devices.common.component import Component, ComponentError
from tango_devices.drivers.plc import ShutterPlc
from tango_devices.shutter import states as st


class ShutterError(ComponentError):
    pass


@dataclass(frozen=True)
class ShutterConfig:
    url: str
    shutter: str
    timeout: float = 0.5
    poll_period: float = 0.1
    reconnect_period: float = 1.0

    def validate(self) -> None:
        problems = []
        if not self.url:
            problems.append("Port is empty: set it to a pyserial URL such as socket://host:port")
        if not self.shutter:
            problems.append("Shutter is empty: set it to the shutter's name in the PLC (e.g. fe)")
        if self.timeout <= 0:
            problems.append(f"Timeout must be positive, not {self.timeout}")
        if problems:
            raise ShutterError("Bad configuration: " + "; ".join(problems))


class ShutterLogic(Component):
    table = st.SHUTTER_TABLE
    hardware = "the shutter PLC"
    error_class = ShutterError

    def __init__(
        self,
        config: ShutterConfig,
        driver_factory: Callable[..., object] = ShutterPlc,
        thread_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        config.validate()
        self.config = config
        super().__init__(
            driver_factory(config.url, timeout=config.timeout),
            f"{config.url}, shutter {config.shutter}",
            idle_period=config.poll_period,
            busy_period=min(config.poll_period, 0.05),
            reconnect_period=config.reconnect_period,
            thread_context=thread_context,
        )
        self._plc_state: str | None = None
        self._interlock = False
        self._interlock_text: str | None = None

    def observe(self):
        return self._driver.read_status(self.config.shutter)

    def apply(self, status) -> None:
        self._plc_state = status.state
        self._interlock = status.interlock
        self._interlock_text = status.interlock_text

    def classify(self, status) -> tuple[str, str]:
        trigger = st.classify(status.state, status.interlock)
        if trigger == st.HW_FAULT:
            text = (
                f"The PLC reports a shutter fault (state {status.state}): the shutter did not "
                "reach its end position. Check the shutter and its air supply, then run Reset."
            )
        elif trigger == st.INTERLOCKED:
            text = (
                f"Interlock active: {status.interlock_text or 'no reason given by the PLC'}. "
                "The shutter is closed and Open is refused until the interlock clears."
            )
        elif trigger == st.MOVING_OBSERVED:
            text = "Shutter moving."
        elif trigger == st.OPENED:
            text = "Shutter open."
        else:
            text = "Shutter closed."
        return trigger, text

    def publish_key(self):
        return (self._interlock, self._interlock_text)

    def busy(self) -> bool:
        return self.machine.state is st.MOVING

    @property
    def interlock(self) -> bool | None:
        return self._interlock if self.link_ok else None

    @property
    def interlock_text(self) -> str:
        return self._interlock_text or ""

    def open(self) -> None:
        self.require("Open")
        self.call("Open", self._driver.open, self.config.shutter)
        self.poll_once()

    def close(self) -> None:
        self.require("Close")
        self.call("Close", self._driver.close_shutter, self.config.shutter)
        self.poll_once()

    def reset(self) -> None:
        self.require("Reset")
        self.call("Reset", self._driver.reset, self.config.shutter)
        self.poll_once()
