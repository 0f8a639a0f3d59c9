"""Scaler: a counter/timer with named channels (Tango layer only).

One read-only attribute per channel, generated from the ``Channels`` property
(no copy-pasted attribute blocks); counts are pushed as change events while
counting (at most 10 per second) and at the end of the count.
"""

from __future__ import annotations

import time

import numpy as np
import tango
from tango import DevState
from tango.server import attribute, command, device_property

from tango_devices.common.device_base import (
    BeamlineDevice,
    component_attribute,
    component_command,
    run_server,
    throw,
)
from tango_devices.scaler.scaler_logic import MAX_BUFFER_READ, ScalerConfig, ScalerLogic

EVENT_PERIOD = 0.1  # s, while counting


class Scaler(BeamlineDevice):
    """Counter/timer: Start counts every channel for PresetTime seconds."""

    #: change events pushed by the kernel when they change (counts: by _publish)
    EVENTED = (
        "PresetTime",
        "ChannelNames",
        "BufferPoints",
        "BufferSize",
        "MissedGates",
        "OverflowGates",
        "DeadTime",
    )

    Port = device_property(
        dtype=str, mandatory=True, doc="pyserial URL of the scaler, e.g. socket://scaler.bl01:9103"
    )
    Channels = device_property(
        dtype=(str,),
        default_value=["i0", "diode"],
        doc="Channel names in hardware order (channel 1, 2, ...); one attribute each",
    )
    Timeout = device_property(dtype=float, default_value=0.5, doc="Per-request timeout (s)")
    PollPeriod = device_property(dtype=float, default_value=0.2, doc="Poll period when idle (s)")
    ReconnectPeriod = device_property(
        dtype=float, default_value=1.0, doc="Retry period while the scaler is unreachable (s)"
    )

    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self._last_event = 0.0
        self._running = False
        for name in ("ElapsedTime", "Counts", "PointsTaken", "BufferState"):
            self.set_change_event(name, True, False)
        config = ScalerConfig(
            url=self.Port,
            channels=tuple(self.Channels),
            timeout=self.Timeout,
            poll_period=self.PollPeriod,
            reconnect_period=self.ReconnectPeriod,
        )

        def make() -> ScalerLogic:
            logic = ScalerLogic(config, thread_context=tango.EnsureOmniThread)
            logic.add_value_listener(self._publish)
            return logic

        self.start_logic(make, wait=min(1.0, 2 * self.Timeout))

    def initialize_dynamic_attributes(self) -> None:
        for index, name in enumerate(self.Channels, start=1):
            attr = attribute(
                name=name,
                dtype=tango.DevLong64,
                fget=self._read_channel,
                description=f"Counts of channel {index} ({name}) in the last or current count.",
                format="%d",
                unit="counts",
            )
            self.add_attribute(attr)
            self.set_change_event(name, True, False)

    def _publish(self) -> None:
        with tango.AutoTangoMonitor(self):
            logic = self.logic
            counts = logic.counts()
            if counts is None:
                return
            now = time.monotonic()
            running = logic.counting or logic.buffer_armed
            # throttle while counting; always publish the final counts
            if running and self._running and now - self._last_event < EVENT_PERIOD:
                return
            self._last_event, self._running = now, running
            for name, value in counts.items():
                self.push(name, value)
            self.push("Counts", list(counts.values()))
            self.push("ElapsedTime", logic.elapsed)
            taken = logic.buffer_value("taken")
            if taken is not None:
                self.push("PointsTaken", taken)
                self.push("BufferState", logic.buffer_value("state"))

    def _read_channel(self, attr) -> int:
        counts = self.value_or_fail(self.need_logic("read_channel").counts(), attr.get_name())
        return counts[attr.get_name()]

    PresetTime = component_attribute(
        "PresetTime",
        "preset",
        "set_preset",
        dtype=float,
        persist=True,
        unit="s",
        format="%8.3f",
        min_value="0.001",
        max_value="3600",
        description="Counting time of Start, in seconds. Kept in the database.",
    )

    ElapsedTime = component_attribute(
        "ElapsedTime",
        "elapsed",
        dtype=float,
        unit="s",
        format="%8.3f",
        description="Time counted so far.",
    )

    @attribute(
        dtype=(tango.DevLong64,),
        max_dim_x=64,
        description="Counts of every channel, in the order of the Channels property.",
    )
    def Counts(self):
        counts = self.value_or_fail(self.need_logic("read_Counts").counts(), "Counts")
        return list(counts.values())

    @attribute(dtype=(str,), max_dim_x=64, description="The channel names, in hardware order.")
    def ChannelNames(self):
        return list(self.Channels)

    # ------------------------------------------- gated buffered counting
    PointsTaken = component_attribute(
        "PointsTaken",
        lambda logic: logic.buffer_value("taken"),
        dtype=int,
        description="Gated buffer: points taken of BufferPoints (one per gate).",
    )
    BufferPoints = component_attribute(
        "BufferPoints",
        lambda logic: logic.buffer_value("points"),
        dtype=int,
        description="Gated buffer: points of the armed (or last) acquisition.",
    )
    BufferState = component_attribute(
        "BufferState",
        lambda logic: logic.buffer_value("state"),
        dtype=str,
        description="Gated buffer: IDLE (not armed), ARMED (taking points) or DONE (every "
        "point taken).",
    )
    MissedGates = component_attribute(
        "MissedGates",
        lambda logic: logic.buffer_value("missed"),
        dtype=int,
        description="Gates that came within the dead time of the previous one (lost).",
    )
    OverflowGates = component_attribute(
        "OverflowGates",
        lambda logic: logic.buffer_value("overflow"),
        dtype=int,
        description="Gates that came after the last armed point (lost).",
    )
    BufferSize = component_attribute(
        "BufferSize",
        "buffer_size",
        dtype=int,
        description="The most points one ArmBuffer may ask for.",
    )
    DeadTime = component_attribute(
        "DeadTime",
        "dead_time",
        dtype=float,
        unit="s",
        format="%.6f",
        description="Time the scaler needs between two gates (its latency).",
    )

    def is_ArmBuffer_allowed(self) -> bool:
        return self.check("ArmBuffer")

    @command(
        dtype_in=np.int64,
        doc_in="points: one per gate on the gate input (1..BufferSize); the buffer is cleared",
    )
    def ArmBuffer(self, points: int) -> None:
        """Gated buffered counting for hardware-triggered scans: RUNNING until
        every point is taken (or Stop); arm it before the timing unit."""
        self.run("ArmBuffer", self.need_logic("ArmBuffer").arm_buffer, int(points))

    def is_ReadBuffer_allowed(self) -> bool:
        return self.check("ReadBuffer")

    @command(
        dtype_in=(np.int64,),
        doc_in=f"[first, count]: points of the gated buffer (count 0: every point taken from "
        f"first; at most {MAX_BUFFER_READ})",
        dtype_out=(np.int64,),
        doc_out="[first, n, then n rows of (gate time in us, counts of each channel in the "
        "order of ChannelNames)]",
    )
    def ReadBuffer(self, args) -> np.ndarray:
        logic = self.need_logic("ReadBuffer")
        values = [int(v) for v in args]
        if len(values) != 2:
            throw("SCALER_ERROR", f"ReadBuffer takes [first, count], not {values}", "ReadBuffer")
        points = self.run("ReadBuffer", logic.read_buffer, *values)
        n = len(points.gate_time)
        rows = np.empty((n, 1 + points.counts.shape[1]), dtype=np.int64)
        rows[:, 0] = np.rint(points.gate_time * 1e6)
        rows[:, 1:] = points.counts
        return np.concatenate([np.array([points.first, n], dtype=np.int64), rows.ravel()])

    Start = component_command(
        "Start", "start", "Clear the counts and count for PresetTime seconds."
    )

    def is_Count_allowed(self) -> bool:
        return self.check("Count")

    @command(
        dtype_in=float,
        doc_in="seconds (0.001 to 3600): the PresetTime of this count and the next ones",
    )
    def Count(self, seconds: float) -> None:
        """PresetTime = seconds, then Start: one call for each point of a step
        scan. A changed PresetTime is stored as a write of it is (stored and
        applied, or refused with nothing changed and no count started)."""
        logic = self.need_logic("Count")
        old = logic.preset
        if seconds != old:
            self.run("Count", logic.set_preset, float(seconds))
            self.persist("PresetTime", logic.preset, lambda: logic.set_preset(old), "Count")
        self.run("Count", logic.start)

    Stop = component_command(
        "Stop",
        "stop",
        "Stop counting now (the counts so far are kept); disarm the gated buffer (its points "
        "stay readable).",
    )

    Clear = component_command("Clear", "clear", "Clear the counts.")


def main(args=None) -> None:
    run_server((Scaler,), args=args)


if __name__ == "__main__":
    main()
