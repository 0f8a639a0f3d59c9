"""The Sardana controllers and macros load the way the Pool and the
MacroServer load them (from their paths, not as a package), and declare what
clients validate against."""

import importlib.util
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
CONTROLLERS = PROJECT / "sardana_macros" / "controllers"
MACROS = PROJECT / "sardana_macros" / "macros"

CLASSES = {
    "BeamlineMotorCtrl": "BeamlineMotorController",
    "BeamlineCounterTimerCtrl": "BeamlineCounterTimerController",
    "BeamlineRoiCtrl": "BeamlineRoiController",
    "BeamlineTwoDCtrl": "BeamlineTwoDController",
    "BeamlineIORegisterCtrl": "BeamlineIORegisterController",
    "BeamlineTriggerGateCtrl": "BeamlineTriggerGateController",
}


def test_every_controller_file_is_listed():
    assert {p.stem for p in CONTROLLERS.glob("*.py")} == set(CLASSES)


@pytest.mark.parametrize("module", sorted(CLASSES))
def test_controller_module_loads_like_the_pool_loads_it(module):
    import taurus
    from sardana.sardanamodulemanager import ModuleManager

    taurus.setLogLevel(taurus.Warning)
    ok, info = ModuleManager().isValidModule(module, [str(CONTROLLERS)])
    assert ok, f"{module}: {info[1]!r}"
    spec = importlib.util.spec_from_file_location(module, CONTROLLERS / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cls = getattr(mod, CLASSES[module])
    assert "Device" in cls.ctrl_properties or "Devices" in cls.ctrl_properties


def _macros(monkeypatch):
    # parameter types are registered by a running MacroServer
    from sardana.macroserver.macro import Type

    for name in ("Moveable", "Motor", "Float", "Integer", "String", "Boolean"):
        monkeypatch.setattr(Type, name, name, raising=False)
    spec = importlib.util.spec_from_file_location("beamline_macros", MACROS / "beamline_macros.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "name", ["align_peak", "shutter_open", "shutter_close", "acquire_images", "check_beamline"]
)
def test_macro_declares_parameters_and_needed_devices(name, monkeypatch):
    from sardana.macroserver.macro import Macro

    cls = getattr(_macros(monkeypatch), name)
    assert issubclass(cls, Macro)
    assert isinstance(cls.param_def, list)
    for param in cls.param_def:
        assert len(param) == 4 and param[3], f"{name}: parameter {param[0]} needs a description"
    needs = cls.hints["needs"]
    assert all(n.startswith("@") or n.count("/") == 2 for n in needs)
    for n in needs:
        if n.startswith("@"):
            assert n[1:] in {p[0] for p in cls.param_def}, f"{name}: {n} names no parameter"
