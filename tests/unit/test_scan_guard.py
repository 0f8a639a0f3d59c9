"""The guard of continuous scans without Tango: what it computes and says
(sardana_macros/scan_checks.py), the general hook's checks with fakes in
place of the measurement group, the motors and the synchronizer elements
(sardana_macros/macros/scan_guard.py), the TriggerGate controller's
LostTrain, and the configured general hook merged into a MacroServer's
environment that users extended with defgh (beamline/sardana_yaml.py)."""

import weakref
from pathlib import Path

import pytest
import tango

from beamline import sardana_yaml
from sardana_macros import scan_checks
from tests.helpers import load_sardana_module

ROOT = Path(__file__).resolve().parents[2] / "sardana_macros"


def _load(path: Path, name: str):
    return load_sardana_module(str(path.relative_to(ROOT)))


@pytest.fixture(scope="module")
def guard():
    return _load(ROOT / "macros" / "scan_guard.py", "scan_guard")


@pytest.fixture(scope="module")
def tg():
    return _load(ROOT / "controllers" / "BeamlineTriggerGateCtrl.py", "BeamlineTriggerGateCtrl")


def _dev_failed(*descs):
    errors = []
    for desc in descs:
        err = tango.DevError()
        err.desc, err.reason, err.origin = desc, "R", "o"
        errors.append(err)
    return tango.DevFailed(*errors)


# ------------------------------------------------------------ scan_checks
def test_scan_velocities_as_ctscan_computes_them():
    # ascanct sample_x 0 1 10 0.01 with a 0.1 ms latency: 11 points of
    # 10.1 ms; the motor covers the range and one interval more at constant speed
    active = 11 * 0.0101
    (v,) = scan_checks.scan_velocities([0.0], [1.0], 10, True, active)
    assert v == pytest.approx(1.1 / active)
    # without the last point; a second motor at its own speed; one not moving
    assert scan_checks.scan_velocities([0.0, 2.0, 5.0], [1.0, 0.0, 5.0], -10, False, 0.1) == (
        pytest.approx([10.0, 20.0, 0.0])
    )


def test_scan_velocities_refuse_a_time_that_is_not_positive():
    with pytest.raises(ValueError, match="active time must be positive"):
        scan_checks.scan_velocities([0.0], [1.0], 10, True, 0.0)


def test_first_reason_takes_the_controllers_message_without_the_class():
    descs = [
        "ValueError: 1000001 points do not fit in the buffer of bl01/ct/scaler (1000000 "
        "points): scan fewer points, or split the scan",
        "Cannot execute command",
        "Failed to execute command_inout on device mntgrp/x/mg_cont, command Prepare",
    ]
    assert scan_checks.first_reason(descs).startswith("1000001 points do not fit")
    nested = ["sardana_macros.tango_link.DeviceRefused: bl01/mot/sample_x refused write Velocity"]
    assert scan_checks.first_reason(nested) == "bl01/mot/sample_x refused write Velocity"
    assert scan_checks.first_reason(["plain text\nmore"]) == "plain text"
    assert scan_checks.first_reason(["", "  "]) == "no reason given"


def test_refusals_name_the_scan_the_cause_and_the_fix():
    text = scan_checks.group_refusal("ascanct", "mg_cont", "the reason")
    assert text == (
        "ascanct refused before any motor moved: measurement group mg_cont cannot take "
        "this scan: the reason"
    )
    text = scan_checks.speed_refusal("meshct", "sample_x", 49.5, "too fast")
    assert "meshct refused before any motor moved: sample_x cannot move at 49.5" in text
    assert "(too fast)" in text and "a longer integration time" in text


# --------------------------------------------------------- the general hook
class FakeGroup:
    def __init__(self, error=None, config=None):
        self.error = error
        self.calls = []
        self.config = config or {"controllers": {}}

    def getName(self):
        return "mg_cont"

    def setNbStarts(self, n):
        self.calls.append(("NbStarts", n))

    def prepare(self):
        self.calls.append(("Prepare",))
        if self.error:
            raise self.error


class FakeMotor:
    def __init__(self, name, velocity=5.0, refuse_above=None):
        self.name, self.velocity, self.refuse_above = name, velocity, refuse_above
        self.writes = []

    def getName(self):
        return self.name

    def getVelocity(self, force=False):
        return self.velocity

    def setVelocity(self, value):
        if self.refuse_above is not None and value > self.refuse_above:
            raise _dev_failed(
                f"sardana_macros.tango_link.DeviceRefused: bl01/mot/{self.name} refused "
                "write Velocity: above the maximum authorized"
            )
        self.writes.append(value)
        self.velocity = value


class FakeGScan:
    do_last_point = True

    def __init__(self, group, motors, active_time):
        self.measurement_group = group
        self._physical_moveables = motors
        self.acq_duration = active_time
        self._env = {}


class FakeScan:
    def __init__(self, gscan, motors, starts, finals, nr_interv=10, name="ascanct"):
        self._gScan = gscan
        self.motors, self.starts, self.finals, self.nr_interv = motors, starts, finals, nr_interv
        self.name = name
        self.hooks = []
        self.warnings = []

    def getName(self):
        return self.name

    def appendHook(self, hook_info):
        self.hooks.append(hook_info)

    def warning(self, text):
        self.warnings.append(text)


class FakeHookMacro:
    """Stands for the hook macro object: its parent is the scan."""

    def __init__(self, scan):
        self.scan = scan
        self.debugs = []

    def getParentMacro(self):
        return self.scan

    def debug(self, *args):
        self.debugs.append(args)


def _run_guard(guard, scan):
    hook = FakeHookMacro(scan)
    cls = guard.continuous_scan_guard
    for name in ("_check_group", "_check_speeds", "_try_velocity"):
        setattr(hook, name, getattr(cls, name).__get__(hook))
    cls.run(hook)
    return hook


def _scan(group, motors=None, finals=None, active=0.111):
    motors = motors or [FakeMotor("sample_x", refuse_above=20.0)]
    gscan = FakeGScan(group, motors, active)
    starts = [0.0] * len(motors)
    return FakeScan(gscan, motors, starts, finals or [1.0] * len(motors))


def test_guard_prepares_the_group_and_tries_the_speed_then_puts_it_back(guard):
    group = FakeGroup()
    scan = _scan(group)
    _run_guard(guard, scan)
    assert group.calls == [("NbStarts", 1), ("Prepare",)]
    motor = scan.motors[0]
    assert motor.writes == [pytest.approx(1.1 / 0.111), 5.0]  # tried, then put back
    # the scan's own post-scan check, once
    assert [hints for _, hints in scan.hooks] == [["post-scan"]]


def test_guard_refuses_what_the_group_refuses_with_the_controllers_reason(guard):
    group = FakeGroup(error=_dev_failed("ValueError: 11 points do not fit in the buffer"))
    scan = _scan(group)
    with pytest.raises(RuntimeError) as exc:
        _run_guard(guard, scan)
    assert str(exc.value) == (
        "ascanct refused before any motor moved: measurement group mg_cont cannot take "
        "this scan: 11 points do not fit in the buffer"
    )
    assert scan.motors[0].writes == [] and scan.hooks == []


def test_guard_refuses_a_speed_the_motor_refuses_and_leaves_its_velocity(guard):
    scan = _scan(FakeGroup(), finals=[5.0])  # 5.5 / 0.111 s: ~50 units/s
    with pytest.raises(RuntimeError) as exc:
        _run_guard(guard, scan)
    text = str(exc.value)
    assert text.startswith("ascanct refused before any motor moved: sample_x cannot move at 49.5")
    assert "bl01/mot/sample_x refused write Velocity: above the maximum authorized" in text
    assert scan.motors[0].velocity == 5.0 and scan.motors[0].writes == []


def test_guard_leaves_pseudo_motors_to_sardana(guard):
    pseudo = FakeMotor("gap", refuse_above=0.0)
    scan = _scan(FakeGroup(), motors=[pseudo])
    scan._gScan._physical_moveables = [FakeMotor("slit_h")]
    _run_guard(guard, scan)  # the pseudo motor's speed is not tried
    assert pseudo.writes == []


def test_guard_does_nothing_outside_a_continuous_scan(guard):
    hook = FakeHookMacro(None)
    guard.continuous_scan_guard.run(hook)
    assert hook.debugs


class FakeElement:
    def __init__(self, lost, alias="tg_train"):
        self.lost, self._alias = lost, alias

    def set_timeout_millis(self, ms):
        pass

    def read_attribute(self, name):
        if self.lost is None:
            raise _dev_failed(f"no attribute {name}")
        return type("Value", (), {"value": self.lost})()

    def alias(self):
        return self._alias


def _with_elements(monkeypatch, guard, elements):
    monkeypatch.setattr(guard.tango, "DeviceProxy", lambda name: elements[name])


class ConfiguredGroup(FakeGroup):
    def getDeviceProxy(self):
        import json

        group = self
        return type(
            "P",
            (),
            {"read_attribute": lambda s, n: type("V", (), {"value": json.dumps(group.config)})()},
        )()


def test_end_check_fails_a_scan_whose_synchronizer_lost_its_train(guard, monkeypatch):
    sync = "tango://h:1/triggergate/tgctrl/1"
    group = ConfiguredGroup(
        config={"controllers": {"c": {"synchronizer": sync}, "s": {"synchronizer": "software"}}}
    )
    element = FakeElement("bl01/tim/tg1 stopped answering while the train ran")
    _with_elements(monkeypatch, guard, {sync: element})
    scan = _scan(group)
    _run_guard(guard, scan)
    ((check, _),) = scan.hooks
    scan._gScan._env["endstatus"] = 0  # ScanEndStatus.Normal
    with pytest.raises(RuntimeError) as exc:
        check()
    assert str(exc.value) == (
        "ascanct: the synchronizer tg_train lost its train: "
        "bl01/tim/tg1 stopped answering while the train ran"
    )
    # after a stop, an abort or another error: a warning, the first error stays
    scan._gScan._env["endstatus"] = 3
    check()
    assert scan.warnings and "tg_train lost its train" in scan.warnings[0]
    # a train followed to its end, or a synchronizer without LostTrain: nothing
    element.lost = ""
    scan._gScan._env["endstatus"] = 0
    check()
    element.lost = None
    check()


def test_guard_refuses_the_next_meshct_row_after_a_lost_train(guard, monkeypatch):
    sync = "tango://h:1/triggergate/tgctrl/1"
    group = ConfiguredGroup(config={"controllers": {"c": {"synchronizer": sync}}})
    element = FakeElement("")
    _with_elements(monkeypatch, guard, {sync: element})
    scan = _scan(group)
    _run_guard(guard, scan)  # row 1
    element.lost = "bl01/tim/tg1 stopped answering"
    with pytest.raises(RuntimeError, match="tg_train lost its train"):
        _run_guard(guard, scan)  # row 2: not prepared, nothing moves
    assert group.calls.count(("Prepare",)) == 1
    assert len(scan.hooks) == 1


def test_end_check_holds_no_scan_alive(guard):
    scan = _scan(FakeGroup())
    check = guard._EndCheck(scan, scan._gScan.measurement_group)
    ref = weakref.ref(scan)
    del scan
    assert ref() is None
    check()  # the scan is gone: nothing to do


# ------------------------------------------------- TriggerGate: LostTrain
class DownLink:
    name = "bl01/tim/tg1"

    def __init__(self, tg):
        self.tg = tg
        self.down = False
        self.state = tango.DevState.ON
        self.last_error = ""

    def call(self, what, fn):
        if self.down:
            self.last_error = "connection refused"
            raise self.tg.DeviceDown(f"{self.name} does not answer ({what}): connection refused")
        return self.state if what == "State" else "status"

    def command(self, name, *args):
        if self.down:
            raise self.tg.DeviceDown(f"{self.name} does not answer ({name})")
        if name == "Start":
            self.state = tango.DevState.RUNNING


def test_a_unit_lost_while_its_train_runs_is_reported_until_the_next_acquisition(tg):
    from sardana import State

    ctrl = tg.BeamlineTriggerGateController("tgctrl", {"Device": "bl01/tim/tg1"})
    ctrl.link = DownLink(tg)
    ctrl.PrepareOne(1, 1)
    ctrl.StartOne(1)
    assert ctrl.StateOne(1)[0] == State.Moving
    ctrl.link.down = True
    state, status = ctrl.StateOne(1)
    assert state == State.Fault
    assert status.startswith(
        "bl01/tim/tg1 stopped answering while the train of this acquisition ran "
        "(connection refused)"
    )
    assert ctrl.GetAxisExtraPar(1, "LostTrain") == status
    # still down: the device's own cause, the loss kept
    assert "does not answer (State)" in ctrl.StateOne(1)[1]
    assert ctrl.GetAxisExtraPar(1, "LostTrain") == status
    # back: its state again, the loss kept for the scan to report
    ctrl.link.down, ctrl.link.state = False, tango.DevState.ON
    assert ctrl.StateOne(1) == (State.On, "bl01/tim/tg1 is ON")
    assert ctrl.GetAxisExtraPar(1, "LostTrain") == status
    ctrl.PrepareOne(1, 1)  # the next acquisition
    assert ctrl.GetAxisExtraPar(1, "LostTrain") == ""


def test_a_unit_down_between_trains_is_a_fault_but_no_lost_train(tg):
    from sardana import State

    ctrl = tg.BeamlineTriggerGateController("tgctrl", {"Device": "bl01/tim/tg1"})
    ctrl.link = DownLink(tg)
    ctrl.PrepareOne(1, 1)
    ctrl.StartOne(1)
    ctrl.link.state = tango.DevState.ON  # the train ended
    assert ctrl.StateOne(1)[0] == State.On
    ctrl.link.down = True
    state, status = ctrl.StateOne(1)
    assert state == State.Fault and "does not answer (State)" in status
    assert ctrl.GetAxisExtraPar(1, "LostTrain") == ""
    with pytest.raises(ValueError, match="unknown axis attribute"):
        ctrl.GetAxisExtraPar(1, "Other")


# ------------------------------------- the configured hook in the environment
GUARD = ["continuous_scan_guard", ["post-configuration"]]


def _env(variables):
    return sardana_yaml.SardanaEnv("sardana/bl01.yaml", "bl01/sardana/macroserver", None, variables)


def test_configured_general_hook_is_added_beside_the_users_own():
    user = ("user_hook_probe", ["post-configuration"])  # as defgh stores it
    env = _env({"_GeneralHooks": [GUARD], "ActiveMntGrp": "mg_bl01"})
    updates = sardana_yaml.environment_updates(
        env, {"_GeneralHooks": [user], "ActiveMntGrp": "mg_bl01"}
    )
    assert updates == {"_GeneralHooks": ([user], [user, GUARD])}


def test_configured_general_hook_present_changes_nothing():
    env = _env({"_GeneralHooks": [GUARD]})
    current = {
        "_GeneralHooks": [
            ("lsenv", ["pre-scan"]),
            ("continuous_scan_guard", ("post-configuration",)),
        ]
    }
    assert sardana_yaml.environment_updates(env, current) == {}


def test_configured_general_hook_on_a_fresh_environment_or_a_bad_entry():
    env = _env({"_GeneralHooks": [GUARD]})
    assert sardana_yaml.environment_updates(env, {}) == {"_GeneralHooks": (None, [GUARD])}
    odd = ["not a hook", ("x", "pre-scan")]
    assert sardana_yaml.merge_general_hooks(odd, [GUARD]) == [*odd, GUARD]
    assert sardana_yaml.merge_general_hooks([("x", "pre-scan")], [["x", ["pre-scan"]]]) is None
