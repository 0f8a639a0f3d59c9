"""The TimingUnit logic and the Scaler's and Detector's hardware-trigger modes,
each over its real driver talking to the virtual hardware in this process (the
timing unit wired to the scaler's gate and the camera's trigger) on a fake
clock: settings written through and refused without change, trains refused
by the unit with its reason, one buffered point per gate and one numbered
frame per pulse, link loss and recovery. The real processes are in
tests/system/test_timing_device.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tango_devices.common.statemachine import CommandRefused, State
from tango_devices.detector.detector_logic import (
    AcquisitionMode,
    DetectorConfig,
    DetectorError,
    DetectorLogic,
    TriggerMode,
)
from tango_devices.drivers import line_client
from tango_devices.scaler.scaler_logic import ScalerConfig, ScalerError, ScalerLogic
from tango_devices.simulators.server import parse_config
from tango_devices.timing.timing_logic import (
    TimingConfig,
    TimingError,
    TimingLogic,
    TrainMode,
    TrainRefused,
    TrainSettings,
)
from tests.unit.test_timing_model import config

URLS = {"tg1": "socket://tg1:1", "scaler1": "socket://scaler1:1", "cam1": "socket://cam1:1"}


class SimPort:
    """A pyserial-like port whose other end is a simulated controller: each
    request line is answered by its ``handle_line`` at once. ``down`` cuts the
    link (opening and writing fail, like a dropped connection)."""

    def __init__(self, controller):
        self.controller = controller
        self.buffer = b""
        self.is_open = False
        self.down = False

    def open(self) -> None:
        if self.down:
            raise OSError("connection refused")
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def reset_input_buffer(self) -> None:
        self.buffer = b""

    def write(self, data: bytes) -> int:
        if self.down:
            raise OSError(32, "broken pipe")
        for line in data.decode().splitlines():
            reply = self.controller.handle_line(line)
            if reply:
                self.buffer += reply if isinstance(reply, bytes) else reply.encode() + b"\r\n"
        return len(data)

    def read_until(self, terminator: bytes = b"\n", size: int | None = None) -> bytes:
        index = self.buffer.find(terminator)
        end = len(self.buffer) if index < 0 else index + len(terminator)
        if size is not None:
            end = min(end, size)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def read(self, size: int = 1) -> bytes:
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


class Hardware:
    """The simulated timing unit, scaler, camera and SMC on one fake clock,
    and the logics of the three devices connected to them (not polling in
    the background: each test polls when it wants the state to follow)."""

    def __init__(self, monkeypatch, clock, **timing):
        self.clock = clock
        built = parse_config(config(**timing), clock=clock).controllers
        self.sim = {name: built[name].controller for name in ("tg1", "scaler1", "cam1", "smc1")}
        self.ports = {URLS[n]: SimPort(self.sim[n]) for n in URLS}
        monkeypatch.setattr(
            line_client.serial,
            "serial_for_url",
            lambda url, timeout, do_not_open: self.ports[url],
        )
        self.tg = TimingLogic(TimingConfig(URLS["tg1"]), clock=clock)
        self.ct = ScalerLogic(ScalerConfig(URLS["scaler1"], ("i0", "diode")))
        self.cam = DetectorLogic(DetectorConfig(URLS["cam1"]))
        for logic in (self.tg, self.ct, self.cam):
            assert logic._try_connect()
            logic.poll_once()

    def poll(self) -> None:
        for logic in (self.tg, self.ct, self.cam):
            logic.poll_once()

    def run(self, seconds: float, step: float = 0.005) -> None:
        end = self.clock.t + seconds
        while self.clock.t < end - 1e-12:
            self.clock.advance(min(step, end - self.clock.t))
            self.sim["tg1"].deliver()  # as the simulator's event loop does while a train runs
        self.poll()

    def unit(self, query: str) -> str:
        return self.sim["tg1"].handle_line(query).split(maxsplit=1)[1]


@pytest.fixture
def hw(monkeypatch, clock) -> Hardware:
    return Hardware(monkeypatch, clock)


def test_connect_reads_the_settings_and_wiring_from_the_unit(hw):
    assert hw.tg.state is State.ON
    assert hw.tg.settings == TrainSettings(TrainMode.TIME, 0.0, 1.0, 0.5, 1, 1, 0, 100)
    assert hw.tg.outputs == ["1:scaler1", "2:cam1"]
    assert hw.tg.encoders == ["1:smc1/1"]
    assert hw.tg.pulses_sent == 0 and hw.tg.train_state == "IDLE"
    assert hw.tg.status.startswith("Ready (")


def test_settings_are_written_through_and_bad_ones_change_nothing(hw):
    hw.tg.set_period(0.01)
    hw.tg.set_width(0.004)
    hw.tg.set_count(20)
    hw.tg.set_mode(TrainMode.POSITION)
    hw.tg.set_position_step(-50)
    assert (hw.unit("?PERIOD"), hw.unit("?WIDTH"), hw.unit("?COUNT")) == ("0.01", "0.004", "20")
    assert (hw.unit("?MODE"), hw.unit("?PSTEP")) == ("POSITION", "-50")
    before = hw.tg.settings
    for setter, value, words in (
        (hw.tg.set_period, -1.0, "Period must be between"),
        (hw.tg.set_width, float("nan"), "Width must be a finite number"),
        (hw.tg.set_count, 0, "Count must be between 1"),
        (hw.tg.set_count, 2.5, "Count must be a whole number"),
        (hw.tg.set_position_step, 0, "PositionStep must not be 0"),
        (hw.tg.set_encoder, 2, "wired: 1:smc1/1"),
        (hw.tg.set_mode, 7, "Mode must be one of 0 TIME, 1 POSITION"),
        (hw.tg.set_count, 2_000_000, "refused by the timing unit"),  # more than it records
    ):
        with pytest.raises(TimingError, match=words):
            setter(value)
    assert hw.tg.settings == before
    assert (hw.unit("?PERIOD"), hw.unit("?COUNT"), hw.unit("?PSTEP")) == ("0.01", "20", "-50")


def test_a_whole_train_loads_all_or_nothing(hw):
    hw.tg.load_train(json.dumps({"mode": "time", "count": 5, "period": 0.02, "width": 0.01}))
    assert hw.tg.settings == TrainSettings(TrainMode.TIME, 0.0, 0.02, 0.01, 5, 1, 0, 100)
    before = hw.tg.settings
    for text, words in (
        ('{"mode": "time", "count": 5, "width": 0.01}', "'period' is a required property"),
        ('{"mode": "time", "count": 0, "period": 1, "width": 0.1}', "count: 0 is less than"),
        ('{"mode": "position", "count": 5, "step": 5, "width": 0.1}', "'start' is a required"),
        ('{"mode": "time", "count": 5, "period": 1, "width": 0.1, "speed": 2}', "speed"),
        ('{"mode": "time", "count": 5, "period": NaN, "width": 0.1}', "NaN is not a number"),
        ('{"mode": "time", "count": 5, "period": 1, "width": -0.1}', "Width must be between"),
        ("[1, 2", "not valid JSON"),
    ):
        with pytest.raises(TimingError, match=words) as refused:
            hw.tg.load_train(text)
        assert 'Give JSON such as {"mode": "time"' in str(refused.value) or "Width" in str(
            refused.value
        )
    # the unit refuses the last value (more pulses than it records): what was
    # sent before it is put back
    with pytest.raises(TimingError, match="the train's settings are as before"):
        hw.tg.load_train(
            json.dumps({"mode": "time", "count": 2_000_000, "period": 0.5, "width": 0.2})
        )
    assert hw.tg.settings == before
    assert (hw.unit("?PERIOD"), hw.unit("?WIDTH"), hw.unit("?COUNT")) == ("0.02", "0.01", "5")


def test_a_poll_that_read_the_settings_before_a_write_does_not_undo_it(hw, monkeypatch):
    """The poll thread reads the unit's settings every settings period; a
    LoadTrain (or a setting's write) from a client thread may finish while
    such a read is under way: the old values the poll read must not replace
    what the write stored (they did, until the next read a second later)."""
    read = hw.tg._read_settings
    train = {"mode": "time", "count": 20, "period": 0.02, "width": 0.01}

    def read_then_a_client_writes():
        old = read()
        monkeypatch.setattr(hw.tg, "_read_settings", read)
        hw.tg.load_train(json.dumps(train))  # lands while the poll is between read and apply
        return old

    monkeypatch.setattr(hw.tg, "_read_settings", read_then_a_client_writes)
    hw.clock.advance(hw.tg.config.settings_period)
    hw.tg.poll_once()
    assert hw.tg.settings == TrainSettings(TrainMode.TIME, 0.0, 0.02, 0.01, 20, 1, 0, 100)
    hw.clock.advance(hw.tg.config.settings_period)  # the next read takes the unit's values
    hw.tg.poll_once()
    assert hw.tg.settings == TrainSettings(TrainMode.TIME, 0.0, 0.02, 0.01, 20, 1, 0, 100)


def test_a_time_train_gates_the_scaler_and_triggers_the_camera(hw):
    n = 8
    hw.ct.arm_buffer(n)
    assert hw.ct.state is State.RUNNING and hw.ct.buffer_armed
    hw.cam.set_trigger(TriggerMode.EXTERNAL)
    hw.cam.set_mode(AcquisitionMode.MULTIPLE)
    hw.cam.set_frames(n)
    hw.cam.set_exposure(0.005)
    hw.cam.start()
    assert hw.cam.state is State.RUNNING
    first_frame = hw.cam.buffer_value("first")
    hw.tg.load_train(json.dumps({"mode": "time", "count": n, "period": 0.02, "width": 0.01}))
    hw.tg.arm()
    assert hw.tg.state is State.STANDBY and "Armed: time train of 8" in hw.tg.status
    with pytest.raises(CommandRefused, match=r"write_Period is not allowed in state STANDBY"):
        hw.tg.set_period(0.5)
    hw.tg.start()
    assert hw.tg.state is State.RUNNING
    hw.run(0.07)
    assert hw.tg.state is State.RUNNING and 0 < hw.tg.pulses_sent < n
    hw.run(0.2)
    assert hw.tg.state is State.ON and hw.tg.pulses_sent == n
    assert hw.ct.state is State.ON and hw.ct.buffer_value("state") == "DONE"
    assert hw.ct.buffer_value("taken") == n
    points = hw.ct.read_buffer(0, 0)
    assert points.first == 0 and points.counts.shape == (n, 2)
    np.testing.assert_allclose(points.gate_time, 0.01)
    assert (points.counts[:, 0] > 0).all()  # i0 counted in every gate
    later = hw.ct.read_buffer(5, 3)
    np.testing.assert_array_equal(later.counts, points.counts[5:])
    pulses = hw.tg.read_pulses(0, 0)
    assert [p.index for p in pulses] == list(range(n))
    np.testing.assert_allclose([p.time for p in pulses], np.arange(n) * 0.02, atol=1e-9)
    assert hw.cam.state is State.ON and hw.cam.buffer_value("count") == n
    assert hw.cam.buffer_value("missed") == 0
    frame = hw.cam.read_frame(first_frame + n - 1)
    assert frame.shape == (64, 64) and frame.dtype == np.uint16
    with pytest.raises(DetectorError, match="not acquired yet"):
        hw.cam.read_frame(first_frame + n)
    with pytest.raises(ScalerError, match=r"points 7\.\.8 not taken: 8 point\(s\) taken"):
        hw.ct.read_buffer(7, 2)
    with pytest.raises(TimingError, match=r"pulses 8\.\.8 were not sent"):
        hw.tg.read_pulses(8, 1)
    # a done buffer is still armed on the scaler: counting in software disarms it first
    hw.ct.start()
    assert hw.ct.state is State.RUNNING and not hw.ct.buffer_armed


def test_a_train_the_scaler_cannot_take_is_refused_with_the_units_reason(hw):
    hw.ct.arm_buffer(3)
    hw.tg.load_train(json.dumps({"mode": "time", "count": 5, "period": 0.02, "width": 0.01}))
    with pytest.raises(TrainRefused) as refused:
        hw.tg.arm()
    text = str(refused.value)
    assert text.startswith("Arm refused by the timing unit: COUNT 5 pulses, but scaler1")
    assert "lower COUNT" in text and text.endswith("Nothing was changed.")
    assert hw.tg.state is State.ON and hw.unit("?STATUS") == "IDLE 0 0"
    hw.tg.set_width(0.02)  # not shorter than the period: refused by the unit too
    with pytest.raises(TrainRefused, match="WIDTH 0.02 s is not shorter than the time between"):
        hw.tg.start()
    assert hw.tg.state is State.ON and hw.ct.buffer_value("taken") == 0


def test_stop_ends_the_train_and_disarms_the_scaler(hw):
    hw.ct.arm_buffer(100)
    hw.tg.load_train(json.dumps({"mode": "time", "count": 100, "period": 0.01, "width": 0.005}))
    hw.tg.start()
    hw.run(0.1)
    hw.tg.stop()
    sent = hw.tg.pulses_sent
    assert hw.tg.state is State.ON and 0 < sent < 100
    hw.run(0.1)
    assert hw.tg.pulses_sent == sent
    assert hw.ct.state is State.RUNNING and hw.ct.buffer_value("taken") == sent
    hw.ct.stop()
    assert hw.ct.state is State.ON and hw.ct.buffer_value("state") == "IDLE"
    assert len(hw.ct.read_buffer(0, 0).gate_time) == sent  # the points stay readable


def test_a_position_train_fires_on_the_axis_crossings(hw):
    hw.ct.arm_buffer(4)
    hw.tg.load_train(
        json.dumps(
            {
                "mode": "position",
                "count": 4,
                "start": 100,
                "step": 100,
                "width": 0.001,
                "encoder": 1,
            }
        )
    )
    hw.tg.start()
    assert hw.tg.state is State.RUNNING
    hw.run(0.2)
    assert hw.tg.pulses_sent == 0  # the axis stands still: the train waits
    assert hw.sim["smc1"].handle_line("1:MOVE 1000") == "1:MOVE OK"
    hw.run(1.0)
    assert hw.tg.state is State.ON and hw.tg.pulses_sent == 4
    assert [p.position for p in hw.tg.read_pulses(0, 4)] == [100, 200, 300, 400]
    assert hw.ct.buffer_value("taken") == 4


def test_refused_commands_name_the_state_and_the_cause(hw):
    hw.tg.load_train(json.dumps({"mode": "time", "count": 100, "period": 0.01, "width": 0.005}))
    hw.tg.start()
    for call, name in (
        (hw.tg.arm, "Arm"),
        (hw.tg.start, "Start"),
        (lambda: hw.tg.load_train("{}"), "LoadTrain"),
    ):
        with pytest.raises(CommandRefused) as refused:
            call()
        text = str(refused.value)
        assert text.startswith(f"{name} is not allowed in state RUNNING (Running: ")
        assert " of 100 pulse(s) sent (time train" in text
        assert "Stop ends it" in text and text.endswith(
            "allowed in: " + ("ON" if name != "Start" else "ON, STANDBY")
        )
    hw.ct.arm_buffer(5)
    with pytest.raises(CommandRefused, match=r"ArmBuffer is not allowed in state RUNNING \(Armed"):
        hw.ct.arm_buffer(5)
    with pytest.raises(ScalerError, match=r"more points than the scaler's buffer holds \(1000\)"):
        hw.ct.stop() or hw.ct.arm_buffer(1001)
    with pytest.raises(DetectorError, match="set TriggerMode to EXTERNAL"):
        hw.cam.read_frame(1)


def test_link_loss_gives_fault_and_it_recovers_by_itself(hw):
    port = hw.ports[URLS["tg1"]]
    port.down = True
    hw.tg.poll_once()
    assert hw.tg.state is State.FAULT
    assert "No link to the timing unit" in hw.tg.status and "recovers by itself" in hw.tg.status
    assert hw.tg.settings is None and hw.tg.pulses_sent is None
    with pytest.raises(CommandRefused, match="Arm is not allowed in state FAULT"):
        hw.tg.arm()
    assert not hw.tg._try_connect()
    port.down = False
    assert hw.tg._try_connect()
    hw.tg.poll_once()
    assert hw.tg.state is State.ON and hw.tg.settings is not None
