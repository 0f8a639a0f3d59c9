"""Hardware synchronization in the Sardana controllers, without Tango: the
TriggerGate controller's train from a synchronization description, and the
counter/timer controller's gated-buffer path (a fake link in place of the
Scaler device), with its software path unchanged."""

import pytest

from tests.helpers import load_sardana_module


def _load(module):
    return load_sardana_module(f"controllers/{module}.py")


@pytest.fixture(scope="module")
def tg():
    return _load("BeamlineTriggerGateCtrl")


@pytest.fixture(scope="module")
def ct():
    return _load("BeamlineCounterTimerCtrl")


def _ascanct_description(repeats=51, active=0.01, total=0.0101, delay=0.25):
    """What ascanct's CTScan hands the Pool (both domains)."""
    from sardana.pool.pooldefs import SynchDomain as D
    from sardana.pool.pooldefs import SynchParam as P
    from sardana.pool.poolsynchronization import SynchDescription

    return SynchDescription(
        [
            {
                P.Delay: {D.Time: delay, D.Position: 0.004},
                P.Initial: {D.Position: 0.0},
                P.Active: {D.Time: active, D.Position: 0.0198},
                P.Total: {D.Time: total, D.Position: 0.02},
                P.Repeats: repeats,
            }
        ]
    )


class FakeLink:
    """The Scaler (or TimingUnit) device as the controllers see it."""

    name = "bl01/ct/scaler"
    last_error = ""

    def __init__(self, attributes=None, buffer=None):
        self.attributes = dict(attributes or {})
        self.calls = []
        self.buffer = buffer if buffer is not None else []  # rows taken so far

    def read(self, attribute):
        self.calls.append(("read", attribute))
        return self.attributes[attribute]

    def write(self, attribute, value):
        self.calls.append(("write", attribute, value))
        self.attributes[attribute] = value

    def command(self, name, *args):
        self.calls.append((name, *args))
        if name == "ReadBuffer":
            first, count = args[0]
            rows = self.buffer[first:] if count == 0 else self.buffer[first : first + count]
            return [first, len(rows)] + [v for row in rows for v in row]
        return None


# ---------------------------------------------------------------- TriggerGate
def test_time_train_from_the_ascanct_description(tg):
    train = tg.time_train(_ascanct_description())
    assert train == {"mode": "time", "count": 51, "delay": 0.25, "period": 0.0101, "width": 0.01}


def test_time_train_refuses_several_groups_naming_them(tg):
    description = list(_ascanct_description()) * 2
    with pytest.raises(ValueError, match="has 2 groups"):
        tg.time_train(description)


def test_trigger_gate_loads_arms_starts_and_stops_the_unit(tg):
    ctrl = tg.BeamlineTriggerGateController("tgctrl", {"Device": "bl01/tim/tg1"})
    ctrl.link = FakeLink()
    ctrl.SynchOne(1, _ascanct_description(repeats=7))
    assert ctrl.PreStartOne(1) is True
    ctrl.StartOne(1)
    ctrl.AbortOne(1)
    names = [c[0] for c in ctrl.link.calls]
    assert names == ["LoadTrain", "Arm", "Start", "Stop"]
    import json

    assert json.loads(ctrl.link.calls[0][1])["count"] == 7


def test_trigger_gate_has_one_axis(tg):
    ctrl = tg.BeamlineTriggerGateController("tgctrl", {"Device": "bl01/tim/tg1"})
    ctrl.AddDevice(1)
    with pytest.raises(ValueError, match="axis 1"):
        ctrl.AddDevice(2)


# ------------------------------------------------------------- counter/timer
def _ct(ct, synchronization, **attributes):
    ctrl = ct.BeamlineCounterTimerController(
        "ctctrl", {"Device": "bl01/ct/scaler", "LatencyTime": 0.1}
    )
    ctrl.link = FakeLink({"DeadTime": 0.0001, "BufferSize": 1000, **attributes})
    ctrl.SetCtrlPar("synchronization", synchronization)
    return ctrl


def test_hardware_gate_arms_the_buffer_and_reads_only_new_points(ct):
    from sardana.pool import AcqSynch

    ctrl = _ct(ct, AcqSynch.HardwareGate)
    ctrl.PrepareOne(1, 0.01, 3, 0.0001, 1)
    ctrl.LoadOne(1, 0.01, 3, 0.0001)
    ctrl.PreStartAll()
    ctrl.StartAll()
    assert ("ArmBuffer", 3) in ctrl.link.calls
    assert not any(c[0] == "write" for c in ctrl.link.calls), "no PresetTime with a gate"
    ctrl.link.buffer.extend([[10000, 5, 7], [10000, 6, 8]])
    ctrl.ReadAll()
    assert ctrl.ReadOne(1) == [0.01, 0.01]  # the gate's length, s
    assert ctrl.ReadOne(2) == [5, 6]
    assert ctrl.ReadOne(3) == [7, 8]
    ctrl.link.buffer.append([9999, 9, 11])
    ctrl.ReadAll()
    assert ctrl.ReadOne(2) == [9]
    assert ctrl.ReadOne(3) == [11]
    ctrl.ReadAll()  # nothing new
    assert ctrl.ReadOne(2) == []
    reads = [c[1] for c in ctrl.link.calls if c[0] == "ReadBuffer"]
    assert reads == [[0, 0], [2, 0], [3, 0]]


def test_prepare_refuses_a_gap_shorter_than_the_dead_time_naming_it(ct):
    from sardana.pool import AcqSynch

    ctrl = _ct(ct, AcqSynch.HardwareTrigger)
    with pytest.raises(ValueError) as exc:
        ctrl.PrepareOne(1, 0.01, 50, 0.00005, 1)
    text = str(exc.value)
    assert "50 us between two gates" in text and "dead time" in text and "100 us" in text
    assert "latency time of at least 0.0001 s" in text
    assert not any(c[0] in ("ArmBuffer", "Start") for c in ctrl.link.calls)


def test_prepare_refuses_more_points_than_the_buffer_holds(ct):
    from sardana.pool import AcqSynch

    ctrl = _ct(ct, AcqSynch.HardwareGate)
    with pytest.raises(ValueError, match=r"1001 points do not fit .* \(1000 points\)"):
        ctrl.PrepareOne(1, 0.01, 1001, 0.001, 1)


def test_hardware_start_is_refused(ct):
    from sardana.pool import AcqSynch

    with pytest.raises(ValueError, match="hardware start"):
        _ct(ct, AcqSynch.HardwareStart)


def test_software_path_is_unchanged(ct):
    from sardana.pool import AcqSynch

    ctrl = _ct(ct, AcqSynch.SoftwareTrigger)
    ctrl.PrepareOne(1, 0.5, 1, 0.0, 1)  # no check, nothing read
    ctrl.LoadOne(1, 0.5, 1, 0.0)
    ctrl.PreStartAll()
    ctrl.StartAll()
    assert ctrl.link.calls == [("Count", 0.5)]  # PresetTime and Start in one call
    assert ctrl.GetCtrlPar("latency_time") == 0.1


class _Configuration:
    def __init__(self, synchronization):
        self.synchronization = synchronization

    def get_acq_synch_by_controller(self, controller):
        return self.synchronization


class _Group:
    """Stands for the Pool's measurement group asking for its latency time."""

    def __init__(self, synchronization):
        self.configuration = _Configuration(synchronization)

    def latency_time(self, ctrl):
        return ctrl.GetCtrlPar("latency_time")


def test_latency_time_follows_the_asking_group_configuration(ct):
    from sardana.pool import AcqSynch

    ctrl = _ct(ct, AcqSynch.SoftwareTrigger)  # the last acquisition was a step scan
    ctrl._getPoolController = lambda: None
    # the dead time and one tick of the timing unit's clock
    assert _Group(AcqSynch.HardwareGate).latency_time(ctrl) == pytest.approx(0.000101)
    assert _Group(AcqSynch.SoftwareTrigger).latency_time(ctrl) == 0.1


# ------------------------------------------------------------ position trains
def _scan_description(start, total, repeats=51, active=0.01):
    from sardana.pool.pooldefs import SynchDomain as D
    from sardana.pool.pooldefs import SynchParam as P

    return [
        {
            P.Delay: {D.Time: 0.2, D.Position: 0.004},
            P.Initial: {D.Position: start},
            P.Active: {D.Time: active, D.Position: 0.0198},
            P.Total: {D.Time: 0.0101, D.Position: total},
            P.Repeats: repeats,
        }
    ]


def test_position_train_in_encoder_steps_of_the_motor_device(tg):
    # Position = DialPosition + Offset, steps = DialPosition x StepsPerUnit
    train = tg.position_train(_scan_description(1.0, 0.02), 3, offset=0.5, steps_per_unit=1000)
    assert train == {
        "mode": "position",
        "count": 51,
        "start": 500,
        "step": 20,
        "width": 0.01,
        "encoder": 3,
    }
    backwards = tg.position_train(_scan_description(1.0, -0.02), 3, 0.0, 1000)
    assert backwards["start"] == 1000 and backwards["step"] == -20


def test_position_train_refuses_a_step_of_part_of_an_encoder_step(tg):
    with pytest.raises(ValueError, match=r"16\.6667 encoder steps .* whole number of steps"):
        tg.position_train(_scan_description(0.0, 1 / 60), 3, 0.0, 1000)


def test_trigger_gate_loads_a_position_train_for_the_moveable_on_its_input(tg):
    ctrl = tg.BeamlineTriggerGateController(
        "tgctrl", {"Device": "bl01/tim/tg1", "Encoders": "3:bl01/mot/sample_x"}
    )
    ctrl.link = FakeLink()
    ctrl._motor_scale = lambda number: (0.0, 1000.0)
    ctrl.SetAxisPar(1, "active_input", 3)  # the Pool, then PrepareOne
    ctrl.PrepareOne(1, 1)
    ctrl.SynchOne(1, _scan_description(0.0, 0.02))
    import json

    loaded = json.loads(ctrl.link.calls[0][1])
    assert loaded["mode"] == "position" and loaded["encoder"] == 3 and loaded["step"] == 20
    ctrl.SetAxisPar(1, "active_input", None)  # timescan: no moveable
    ctrl.PrepareOne(1, 1)
    ctrl.SynchOne(1, _scan_description(0.0, 0.02))
    assert json.loads(ctrl.link.calls[1][1])["mode"] == "time"
    # MoveableOnInput cleared: the Pool sets no input at all
    ctrl.SetAxisPar(1, "active_input", 3)
    ctrl.PrepareOne(1, 1)
    ctrl.PrepareOne(1, 1)
    ctrl.SynchOne(1, _scan_description(0.0, 0.02))
    assert json.loads(ctrl.link.calls[2][1])["mode"] == "time"


def test_trigger_gate_encoders_property_is_checked(tg):
    with pytest.raises(ValueError, match="is not <input>:<motor device>"):
        tg.BeamlineTriggerGateController("tgctrl", {"Device": "d/e/f", "Encoders": "x:bl01/mot/a"})
