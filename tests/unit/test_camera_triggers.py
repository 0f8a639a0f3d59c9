"""The camera controllers on hardware triggers, without Tango: the 2D image
and ROI controllers share one acquisition of the camera (a fake link in
place of the Detector device): set up and started once, each numbered frame
read once and handed to each controller once, in order; the camera back on
INTERNAL trigger afterwards; refusals before anything is written; the
software path (Snap) unchanged."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import tango
from sardana import State
from sardana.pool import AcqSynch

from sardana_macros.tango_link import TriggeredFrames, check_triggered_plan
from tests.helpers import load_sardana_module

HEIGHT, WIDTH = 4, 6


def _load(module):
    return load_sardana_module(f"controllers/{module}.py")


@pytest.fixture(scope="module")
def twod():
    return _load("BeamlineTwoDCtrl")


@pytest.fixture(scope="module")
def roi():
    return _load("BeamlineRoiCtrl")


class FakeCamera:
    """The Detector device as the controllers see it: settings, Start/Stop,
    a frame buffer numbered from ``base`` (``trigger()`` takes one frame)."""

    name = "bl01/det/cam1"
    last_error = ""

    def __init__(self, base=41):
        self.attributes = {
            "AcquisitionMode": 0,
            "NumberOfFrames": 7,
            "TriggerMode": 0,
            "ExposureTime": 0.1,
            "Height": HEIGHT,
            "Width": WIDTH,
            "Roi": [1, 1, 3, 2],
            "MissedTriggers": 0,
        }
        self.calls = []
        self.dev_state = tango.DevState.ON
        self.base = base  # the next frame's number
        self.frames = {}  # number -> pixels

    @property
    def first(self):
        return min(self.frames) if self.frames else self.base

    def trigger(self):
        number = self.base
        self.frames[number] = np.arange(HEIGHT * WIDTH, dtype=np.uint16) + number
        self.base += 1
        if len(self.frames) >= self.attributes["NumberOfFrames"]:
            self.dev_state = tango.DevState.ON

    def read(self, attribute):
        self.calls.append(("read", attribute))
        if attribute == "FirstFrame":
            return self.first
        if attribute == "BufferedFrames":
            return len(self.frames)
        return self.attributes[attribute]

    def write(self, attribute, value):
        self.calls.append(("write", attribute, value))
        assert self.dev_state != tango.DevState.RUNNING, f"write {attribute} refused while RUNNING"
        self.attributes[attribute] = value

    def command(self, name, *args):
        self.calls.append((name, *args))
        if name == "Start":
            self.frames = {}
            self.dev_state = tango.DevState.RUNNING
        elif name == "Stop":
            self.dev_state = tango.DevState.ON
        elif name == "Snap":
            self.base += 1
        elif name == "ReadFrame":
            return self.frames[args[0]].copy()
        return None

    def call(self, what, fn):
        self.calls.append(("call", what))
        return fn(_Proxy(self))

    def written(self, attribute):
        return [c[2] for c in self.calls if c[:2] == ("write", attribute)]

    def commands(self):
        return [c[0] for c in self.calls if c[0] not in ("read", "write", "call")]


class _Proxy:
    """What ``call`` hands its function: the DeviceProxy's side."""

    def __init__(self, camera):
        self.camera = camera

    def read_attributes(self, names):
        camera = self.camera
        return [
            SimpleNamespace(value=camera.dev_state if n == "State" else camera.read(n))
            for n in names
        ]

    def state(self):
        return self.camera.dev_state


def _controllers(twod, roi, synchronization=AcqSynch.HardwareTrigger, clock=None):
    camera = FakeCamera()
    # every look at the camera a fresh one, unless the test gives the clock
    shared = TriggeredFrames(camera, clock=clock or itertools.count().__next__)
    # the properties as the Pool hands them (with their defaults)
    props = {"Device": camera.name, "LatencyTime": 0.1, "ReadoutTime": 0.005, "BufferFrames": 1000}
    image = twod.BeamlineTwoDController("camctrl", dict(props))
    counters = roi.BeamlineRoiController("roictrl", dict(props))
    for ctrl in (image, counters):
        ctrl.link = camera
        ctrl.frames = shared
        ctrl.SetCtrlPar("synchronization", synchronization)
    return camera, image, counters


def _start(ctrls, value=0.01, repetitions=3, latency=0.006, nb_starts=1):
    """As the Pool does: every PrepareOne, then every LoadOne, PreStartAll, StartAll."""
    for ctrl in ctrls:
        ctrl.PrepareOne(1, value, repetitions, latency, nb_starts)
    for ctrl in ctrls:
        ctrl.LoadOne(1, value, repetitions, latency)
    for ctrl in ctrls:
        ctrl.PreStartAll()
    for ctrl in ctrls:
        ctrl.StartAll()


def _read(image, counters):
    image.ReadAll()
    counters.StateAll()
    counters.ReadAll()
    return image.ReadOne(1), counters.ReadOne(1)


def _expected_sum(number):
    frame = (np.arange(HEIGHT * WIDTH, dtype=np.uint16) + number).reshape(HEIGHT, WIDTH)
    return float(frame[1:3, 1:4].sum())  # Roi [1, 1, 3, 2]


# ------------------------------------------------------------- the checks
def test_plan_counts_repetitions_times_starts():
    assert check_triggered_plan("cam", 0.01, 20, 0.005, 2, 0.005, 100000) == 40


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((0.01, 20, 0.002, 1, 0.005, 100000), "shorter than the readout time of cam"),
        ((0.01, 20, 0.002, 1, 0.005, 100000), "use a latency time of at least 0.005 s"),
        ((0.01, 600, 0.005, 2, 0.005, 1000), "1200 frames (600 x 2 start(s)) are more than cam"),
        ((0.01, 600, 0.005, 2, 0.005, 1000), "scan fewer points, or split the scan"),
        ((0.0, 20, 0.005, 1, 0.005, 1000), "monitor counting is not supported"),
        ((120.0, 2, 0.005, 1, 0.005, 1000), "outside the exposure times of cam"),
    ],
)
def test_plan_refusals_name_the_problem_and_the_fix(args, words):
    with pytest.raises(ValueError) as exc:
        check_triggered_plan("cam", *args)
    assert words in str(exc.value)


def test_gate_and_start_are_refused_for_both_controllers(twod, roi):
    camera, image, counters = _controllers(twod, roi)
    for ctrl in (image, counters):
        for synch in (AcqSynch.HardwareGate, AcqSynch.HardwareStart):
            with pytest.raises(ValueError, match="synchronize it by trigger"):
                ctrl.SetCtrlPar("synchronization", synch)
        ctrl.SetCtrlPar("synchronization", AcqSynch.HardwareTrigger)  # accepted
    assert camera.calls == []


def test_latency_is_the_readout_for_hardware_triggers(twod, roi):
    _camera, image, counters = _controllers(twod, roi)
    for ctrl in (image, counters):
        assert ctrl.GetCtrlPar("latency_time") == pytest.approx(0.005 + 1e-6)
    _camera, image, counters = _controllers(twod, roi, AcqSynch.SoftwareTrigger)
    for ctrl in (image, counters):
        assert ctrl.GetCtrlPar("latency_time") == pytest.approx(0.1)


def test_a_refused_prepare_writes_nothing(twod, roi):
    camera, image, counters = _controllers(twod, roi)
    with pytest.raises(ValueError, match="shorter than the readout time"):
        image.PrepareOne(1, 0.01, 10, 0.001, 1)
    assert not camera.written("TriggerMode") and "Start" not in camera.commands()


# ------------------------------------------------------- one acquisition
def test_both_controllers_share_one_start_and_get_each_frame_once(twod, roi):
    camera, image, counters = _controllers(twod, roi)
    _start([image, counters], repetitions=3)
    # set up and started once, before any trigger: EXTERNAL, MULTIPLE, 3 frames
    assert camera.commands() == ["Start"]
    assert camera.written("TriggerMode") == [1]
    assert camera.written("AcquisitionMode") == [1]
    assert camera.written("NumberOfFrames") == [3]
    assert camera.written("ExposureTime") == [0.01]
    assert image.StateOne(1)[0] == State.Moving

    frames, sums = _read(image, counters)
    assert frames == [] and sums == []
    camera.trigger()
    camera.trigger()
    frames, sums = _read(image, counters)
    assert [int(f[0, 0]) for f in frames] == [41, 42]
    assert all(f.shape == (HEIGHT, WIDTH) for f in frames)
    assert sums == [_expected_sum(41), _expected_sum(42)]
    assert image.ReadOne(1) == [] and counters.ReadOne(1) == []  # each once
    assert [c[1] for c in camera.calls if c[0] == "ReadFrame"] == [41, 42]  # read once

    camera.trigger()
    assert image.StateOne(1)[0] == State.On
    counters.StateAll()
    assert counters.StateOne(2)[0] == State.On
    frames, _sums = _read(image, counters)
    assert [int(f[0, 0]) for f in frames] == [43]
    assert counters.ReadOne(3)  # the centroid y of frame 43
    # every frame read by both: back on INTERNAL, the settings as before
    assert camera.written("TriggerMode") == [1, 0]
    assert camera.attributes["AcquisitionMode"] == 0
    assert camera.attributes["NumberOfFrames"] == 7
    assert [c[1] for c in camera.calls if c[0] == "ReadFrame"] == [41, 42, 43]


def test_the_next_acquisition_starts_the_camera_again(twod, roi):
    camera, image, counters = _controllers(twod, roi)
    for base in (41, 43):
        _start([image, counters], repetitions=2)
        camera.trigger()
        camera.trigger()
        frames, sums = _read(image, counters)
        assert [int(f[0, 0]) for f in frames] == [base, base + 1]
        assert len(sums) == 2
    assert camera.commands().count("Start") == 2
    assert camera.written("TriggerMode") == [1, 0, 1, 0]


def test_the_image_alone_takes_its_frames(twod, roi):
    camera, image, _counters = _controllers(twod, roi)
    _start([image], repetitions=1)
    camera.trigger()
    image.ReadAll()
    assert [int(f[0, 0]) for f in image.ReadOne(1)] == [41]
    assert camera.written("TriggerMode") == [1, 0]


def test_abort_stops_the_camera_and_puts_it_back(twod, roi):
    camera, image, counters = _controllers(twod, roi)
    _start([image, counters], repetitions=5)
    camera.trigger()
    image.AbortOne(1)
    counters.AbortOne(1)
    assert camera.commands() == ["Start", "Stop"]
    assert camera.written("TriggerMode") == [1, 0]
    assert camera.attributes["NumberOfFrames"] == 7
    # ended for the Pool; the frame taken before the stop is still read, once
    assert image.StateOne(1)[0] == State.On
    frames, sums = _read(image, counters)
    assert [int(f[0, 0]) for f in frames] == [41] and len(sums) == 1
    assert _read(image, counters) == ([], [])


def test_missed_triggers_fail_the_acquisition_naming_them(twod, roi):
    camera, image, counters = _controllers(twod, roi)
    _start([image, counters], repetitions=5)
    camera.attributes["MissedTriggers"] = 2
    state, status = image.StateOne(1)
    assert state == State.Fault
    assert "missed 2 trigger(s)" in status and "lengthen the period" in status
    assert camera.written("TriggerMode") == [1, 0] and "Stop" in camera.commands()


def test_a_failed_hardware_acquisition_is_put_back_by_the_next_software_one(twod, roi):
    camera, image, counters = _controllers(twod, roi)
    _start([image, counters], repetitions=5)  # then the timing unit refused Arm
    for ctrl in (image, counters):
        ctrl.SetCtrlPar("synchronization", AcqSynch.SoftwareTrigger)
    image.LoadOne(1, 0.02, 1, 0)
    assert camera.commands() == ["Start", "Stop"]
    assert camera.written("TriggerMode") == [1, 0]


def test_both_controllers_state_queries_share_one_read_of_the_camera(twod, roi):
    now = [0.0]
    camera, image, counters = _controllers(twod, roi, clock=lambda: now[0])
    _start([image, counters], repetitions=2)
    reads = lambda: sum(1 for c in camera.calls if c[0] == "call")  # noqa: E731
    before = reads()
    image.StateOne(1)
    counters.StateAll()
    assert reads() == before + 1
    now[0] += 0.05
    camera.trigger()
    camera.trigger()
    assert image.StateOne(1)[0] == State.On  # a new look after POLL_SHARED
    assert reads() == before + 2


# ------------------------------------------------------------ software path
def test_software_acquisitions_snap_once_as_before(twod, roi):
    camera, image, counters = _controllers(twod, roi, AcqSynch.SoftwareTrigger)
    _start([image, counters], value=0.02, repetitions=1, latency=0.1)
    assert camera.commands() == ["Snap"]
    assert camera.written("ExposureTime") == [0.02]
    assert not camera.written("TriggerMode")
