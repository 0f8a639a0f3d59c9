"""The Sardana motor controller's motion settings, without Tango: a setting
the Motor device refuses while the axis moves is written once it stops
(after a stop or an abort a scan restores the motor's velocity while it is
still decelerating)."""

import pytest

from tests.helpers import load_sardana_module


@pytest.fixture(scope="module")
def mot():
    return load_sardana_module("controllers/BeamlineMotorCtrl.py")


class MovingLink:
    """A Motor device that refuses settings until it has stopped."""

    name = "bl01/mot/sample_x"

    def __init__(self, refused, moving_polls=3):
        self.refused = refused
        self.moving_polls = moving_polls
        self.calls = []

    def write(self, attribute, value):
        self.calls.append(("write", attribute, value))
        if self.moving_polls:
            raise self.refused(
                f"{self.name} refused write {attribute}: write_{attribute} is not allowed in "
                "state MOVING (Moving to 3 mm.); allowed in: ALARM, OFF, ON"
            )

    def wait_not(self, states, timeout):
        self.calls.append(("wait_not", tuple(str(s) for s in states), timeout))
        self.moving_polls = 0


def _controller(mot, link):
    ctrl = object.__new__(mot.BeamlineMotorController)
    ctrl.links = [link]
    return ctrl


@pytest.mark.parametrize(
    "par, attribute", [("Velocity", "Velocity"), ("Acceleration", "Acceleration")]
)
def test_a_setting_refused_while_moving_is_written_once_stopped(mot, par, attribute):
    link = MovingLink(mot.DeviceRefused)
    _controller(mot, link).SetAxisPar(1, par, 2.5)
    assert link.calls == [
        ("write", attribute, 2.5),
        ("wait_not", ("MOVING",), mot.SETTLE_TIMEOUT),
        ("write", attribute, 2.5),
    ]


def test_another_refusal_is_not_retried(mot):
    link = MovingLink(mot.DeviceRefused)
    link.write = lambda attribute, value: (_ for _ in ()).throw(
        mot.DeviceRefused("bl01/mot/sample_x refused write Velocity: 99 is above the maximum")
    )
    with pytest.raises(mot.DeviceRefused, match="above the maximum"):
        _controller(mot, link).SetAxisPar(1, "Velocity", 99.0)
    assert link.calls == []  # no wait for a motion: the value itself was refused
