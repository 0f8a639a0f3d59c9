"""Shutter: a beam shutter driven by a PLC over TCP (Tango layer only)."""

from __future__ import annotations

import tango
from tango import DevState
from tango.server import device_property

from tango_devices.common.device_base import (
    BeamlineDevice,
    component_attribute,
    component_command,
    run_server,
)
from tango_devices.shutter.shutter_logic import ShutterConfig, ShutterLogic


class Shutter(BeamlineDevice):
    """Open/Close with a travel time; DISABLE while a PLC interlock is active."""

    Port = device_property(
        dtype=str, mandatory=True, doc="pyserial URL of the PLC, e.g. socket://plc1.bl01:9102"
    )
    Shutter = device_property(dtype=str, default_value="fe", doc="The shutter's name in the PLC")
    Timeout = device_property(dtype=float, default_value=0.5, doc="Per-request timeout (s)")
    PollPeriod = device_property(dtype=float, default_value=0.1, doc="PLC poll period (s)")
    ReconnectPeriod = device_property(
        dtype=float, default_value=1.0, doc="Retry period while the PLC is unreachable (s)"
    )

    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self.set_change_event("Interlock", True, False)
        self.set_change_event("InterlockReason", True, False)
        config = ShutterConfig(
            url=self.Port,
            shutter=self.Shutter,
            timeout=self.Timeout,
            poll_period=self.PollPeriod,
            reconnect_period=self.ReconnectPeriod,
        )

        def make() -> ShutterLogic:
            logic = ShutterLogic(config, thread_context=tango.EnsureOmniThread)
            logic.add_value_listener(self._publish)
            return logic

        self.start_logic(make, wait=min(1.0, 2 * self.Timeout))

    def _publish(self) -> None:
        with tango.AutoTangoMonitor(self):
            logic = self.logic
            if logic.interlock is not None:
                self.push("Interlock", logic.interlock)
                self.push("InterlockReason", logic.interlock_text)

    Interlock = component_attribute(
        "Interlock",
        "interlock",
        dtype=bool,
        description="A PLC interlock is active (Open is refused).",
    )

    InterlockReason = component_attribute(
        "InterlockReason",
        "interlock_text",
        dtype=str,
        description="Why the interlock is active (empty when it is not).",
    )

    Open = component_command(
        "Open", "open", "Open the shutter (refused while an interlock is active)."
    )

    Close = component_command("Close", "close", "Close the shutter.")

    Reset = component_command("Reset", "reset", "Clear a latched shutter fault in the PLC.")


def main(args=None) -> None:
    run_server((Shutter,), args=args)


if __name__ == "__main__":
    main()
