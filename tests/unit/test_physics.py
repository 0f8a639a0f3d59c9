"""The shared physics model of the virtual beamline."""

from __future__ import annotations

import math

import pytest

from tango_devices.simulators.physics import DEFAULTS, BeamlinePhysics, PhysicsError


def model(**values):
    inputs = {name: {"source": f"test/{name}"} for name in values}
    p = BeamlinePhysics({"inputs": inputs})
    for name, value in values.items():
        p.register_source(f"test/{name}", lambda v=value: v)
    return p


NOMINAL = dict(
    slit_h=20.0,
    slit_v=20.0,
    sample_x=1.5,
    sample_y=-0.8,
    det_z=300.0,
    mirror_pitch=3.0,
    shutter_open=1.0,
    pressure=1e-8,
)


def test_closed_shutter_gives_dark_counts_only():
    p = model(**{**NOMINAL, "shutter_open": 0.0})
    assert p.rates() == {"i0": DEFAULTS["dark_rate"], "diode": DEFAULTS["dark_rate"]}
    assert p.spot().peak == 0.0


def test_open_shutter_full_flux_at_optimum():
    p = model(**NOMINAL)
    assert p.i0_rate() == pytest.approx(DEFAULTS["flux"], rel=1e-3)
    assert p.diode_rate() == pytest.approx(
        DEFAULTS["flux"] * DEFAULTS["diode_efficiency"], rel=1e-3
    )


def test_slits_cut_the_flux_monotonically():
    rates = [model(**{**NOMINAL, "slit_h": g}).i0_rate() for g in (0.1, 0.5, 1.0, 2.0, 20.0)]
    assert rates == sorted(rates) and rates[0] < 0.2 * rates[-1]


def test_diode_peaks_where_the_beam_meets_the_feature():
    xs = [1.5 + 0.05 * i for i in range(-20, 21)]
    rates = [model(**{**NOMINAL, "sample_x": x}).diode_rate() for x in xs]
    assert xs[rates.index(max(rates))] == pytest.approx(1.5)
    # the mirror pitch moves the beam: the peak moves by pitch_to_x per mrad
    shifted = [model(**{**NOMINAL, "mirror_pitch": 3.1, "sample_x": x}).diode_rate() for x in xs]
    expected = 1.5 - DEFAULTS["pitch_to_x"] * 0.1
    assert xs[shifted.index(max(shifted))] == pytest.approx(expected, abs=0.026)


def test_mirror_reflectivity_and_camera_spot_follow_the_pitch():
    at_optimum = model(**NOMINAL)
    off = model(**{**NOMINAL, "mirror_pitch": 3.4})
    assert off.reflectivity() == pytest.approx(math.exp(-0.5))
    assert at_optimum.spot().x == pytest.approx(256)
    assert off.spot().x == pytest.approx(256 + DEFAULTS["pitch_to_pixels"] * 0.4)
    # total camera counts = gain * i0 (the Gaussian integral)
    s = at_optimum.spot()
    assert 2 * math.pi * s.sigma_x * s.sigma_y * s.peak == pytest.approx(
        DEFAULTS["camera_gain"] * at_optimum.i0_rate()
    )


def test_bad_configuration_names_the_key():
    with pytest.raises(PhysicsError, match="^fluxx: unknown physics parameter"):
        BeamlinePhysics({"fluxx": 1})
    with pytest.raises(PhysicsError, match="^inputs.slit_x: unknown quantity"):
        BeamlinePhysics({"inputs": {"slit_x": {"source": "a/b"}}})
    p = BeamlinePhysics({"inputs": {"slit_h": {"source": "smc9/1"}}})
    assert p.missing_sources() == ["inputs.slit_h: no controller provides 'smc9/1'"]
