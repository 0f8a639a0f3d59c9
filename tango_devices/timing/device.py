"""TimingUnit: a timing / trigger unit making the pulse trains of continuous
scans (Tango layer only).

The train's settings are writable attributes (written through to the unit,
only while it is idle); Arm, Start and Stop run the train; PulsesSent and
TrainState follow it (change events, at most 10 per second while it runs,
and at its end). LoadTrain sets a whole train in one command (what a
Sardana TriggerGate controller does); ReadPulses reads the unit's record of
the pulses it sent.
"""

from __future__ import annotations

import math
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
from tango_devices.timing.timing_logic import (
    MAX_PULSES_READ,
    MAX_TIME,
    TimingConfig,
    TimingLogic,
    TrainMode,
    TrainRefused,
)

EVENT_PERIOD = 0.1  # s, while a train runs


def _setting(name: str, field: str, setter: str, description: str, **kwargs):
    return component_attribute(
        name,
        lambda logic: logic.setting(field),
        setter,
        description=description + " Written to the unit, only while it is idle.",
        **kwargs,
    )


class TimingUnit(BeamlineDevice):
    """Pulse trains in time or on an axis's positions: Arm, Start, Stop."""

    #: change events pushed by the kernel when they change (EncoderPosition, which follows
    #: the motion, is left to be read)
    EVENTED = (
        "Mode",
        "Period",
        "Width",
        "Delay",
        "Count",
        "PositionStart",
        "PositionStep",
        "Encoder",
        "TrainCount",
        "Outputs",
        "Encoders",
    )

    Port = device_property(
        dtype=str,
        mandatory=True,
        doc="pyserial URL of the timing unit, e.g. socket://tg1.bl01:9105",
    )
    Timeout = device_property(dtype=float, default_value=0.5, doc="Per-request timeout (s)")
    PollPeriod = device_property(dtype=float, default_value=0.2, doc="Poll period when idle (s)")
    ReconnectPeriod = device_property(
        dtype=float, default_value=1.0, doc="Retry period while the unit is unreachable (s)"
    )

    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self._last_event = 0.0
        for name in ("PulsesSent", "TrainState"):
            self.set_change_event(name, True, False)
        config = TimingConfig(
            url=self.Port,
            timeout=self.Timeout,
            poll_period=self.PollPeriod,
            reconnect_period=self.ReconnectPeriod,
        )

        def make() -> TimingLogic:
            logic = TimingLogic(config, thread_context=tango.EnsureOmniThread)
            logic.add_value_listener(self._publish)
            return logic

        self.start_logic(make, wait=min(1.0, 2 * self.Timeout))

    def _publish(self) -> None:
        with tango.AutoTangoMonitor(self):
            logic = self.logic
            sent, state = logic.pulses_sent, logic.train_state
            if sent is None:
                return
            now = time.monotonic()
            if state == "RUNNING" and now - self._last_event < EVENT_PERIOD:
                return  # throttled while running; the end is always published
            self._last_event = now
            self.push("PulsesSent", sent)
            self.push("TrainState", state)

    def refuse(self, exc: Exception, origin: str) -> None:
        if isinstance(exc, TrainRefused):
            throw("TRAIN_REFUSED", str(exc), origin)
        super().refuse(exc, origin)

    # ------------------------------------------------------------ the train
    Mode = _setting(
        "Mode",
        "mode",
        "set_mode",
        "TIME: pulses every Period; POSITION: pulses every PositionStep steps of the Encoder.",
        dtype=TrainMode,
    )
    Delay = _setting(
        "Delay",
        "delay",
        "set_delay",
        "TIME: from Start to the first pulse.",
        dtype=float,
        unit="s",
        format="%.6f",
        min_value="0",
        max_value=str(MAX_TIME),
    )
    Period = _setting(
        "Period",
        "period",
        "set_period",
        "TIME: from one pulse to the next.",
        dtype=float,
        unit="s",
        format="%.6f",
        min_value="0.000001",
        max_value=str(MAX_TIME),
    )
    Width = _setting(
        "Width",
        "width",
        "set_width",
        "How long each pulse is high (the scaler's gate time).",
        dtype=float,
        unit="s",
        format="%.6f",
        min_value="0.000001",
        max_value=str(MAX_TIME),
    )
    Count = _setting(
        "Count", "count", "set_count", "Pulses in the train.", dtype=int, min_value="1"
    )
    Encoder = _setting(
        "Encoder",
        "encoder",
        "set_encoder",
        "The encoder input POSITION follows and the record shows (0: none; see Encoders).",
        dtype=int,
        min_value="0",
    )
    PositionStart = _setting(
        "PositionStart",
        "position_start",
        "set_position_start",
        "POSITION: the encoder position of the first pulse.",
        dtype=int,
        unit="steps",
    )
    PositionStep = _setting(
        "PositionStep",
        "position_step",
        "set_position_step",
        "POSITION: steps between pulses, not 0; its sign is the direction of motion.",
        dtype=int,
        unit="steps",
    )

    PulsesSent = component_attribute(
        "PulsesSent",
        "pulses_sent",
        dtype=int,
        description="Pulses sent of the current (or last) train.",
    )
    TrainCount = component_attribute(
        "TrainCount",
        "train_count",
        dtype=int,
        description="Pulses of the current (or last) train (0 before the first).",
    )
    TrainState = component_attribute(
        "TrainState",
        "train_state",
        dtype=str,
        description="The unit's state: IDLE, ARMED or RUNNING.",
    )

    @attribute(dtype=(str,), max_dim_x=64, description="What each output is cabled to (n:name).")
    def Outputs(self):
        return self.need_logic("read_Outputs").outputs

    @attribute(
        dtype=(str,), max_dim_x=64, description="The axis each encoder input follows (n:axis)."
    )
    def Encoders(self):
        return self.need_logic("read_Encoders").encoders

    @attribute(dtype=int, unit="steps", description="The selected encoder's position now.")
    def EncoderPosition(self) -> int:
        logic = self.need_logic("read_EncoderPosition")
        return self.run("read_EncoderPosition", logic.encoder_position)

    # -------------------------------------------------------------- commands
    Arm = component_command(
        "Arm",
        "arm",
        "Check the train against the unit and what it drives (the scaler's buffer, the "
        "camera's frames) and wait for Start. Arm the scaler and start the camera first.",
    )

    Start = component_command("Start", "start", "Start the train (armed first when idle).")

    Stop = component_command(
        "Stop", "stop", "No pulse starts after now; a pulse already high ends at its time."
    )

    def is_LoadTrain_allowed(self) -> bool:
        return self.check("LoadTrain")

    @command(
        dtype_in=str,
        doc_in='JSON, all or nothing: {"mode": "time", "count": N, "period": s, "width": s, '
        '"delay": s} or {"mode": "position", "count": N, "start": steps, "step": steps, '
        '"width": s, "encoder": n}',
    )
    def LoadTrain(self, text: str) -> None:
        self.run("LoadTrain", self.need_logic("LoadTrain").load_train, text)

    def is_ReadPulses_allowed(self) -> bool:
        return self.check("ReadPulses")

    @command(
        dtype_in=(np.int64,),
        doc_in=f"[first, count]: pulses of the record (count 0: every pulse sent from first; "
        f"at most {MAX_PULSES_READ})",
        dtype_out=(float,),
        doc_out="[first, n, then n times (s since Start), then n encoder positions (steps; "
        "NaN without an encoder)]",
    )
    def ReadPulses(self, args) -> np.ndarray:
        logic = self.need_logic("ReadPulses")
        values = [int(v) for v in args]
        if len(values) != 2:
            throw(
                "TIMINGUNIT_ERROR",
                f"ReadPulses takes [first, count], not {values}",
                "ReadPulses",
            )
        pulses = self.run("ReadPulses", logic.read_pulses, *values)
        out = np.empty(2 + 2 * len(pulses))
        out[0], out[1] = values[0], len(pulses)
        out[2 : 2 + len(pulses)] = [p.time for p in pulses]
        out[2 + len(pulses) :] = [math.nan if p.position is None else p.position for p in pulses]
        return out


def main(args=None) -> None:
    run_server((TimingUnit,), args=args)


if __name__ == "__main__":
    main()
