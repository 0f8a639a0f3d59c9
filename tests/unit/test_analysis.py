"""Peak fitting for align_peak: finds the centre and width of noisy peaks,
refuses data without a peak."""

import numpy as np
import pytest

from sardana_macros.analysis import FitError, Gaussian, fit_gaussian


@pytest.mark.parametrize(
    "center,sigma,amplitude,offset",
    [(1.5, 0.6, 2000.0, 10.0), (-0.3, 0.05, 50.0, 0.0), (3.2, 1.0, 1e6, 5e4)],
)
def test_recovers_centre_and_width_of_a_noisy_peak(center, sigma, amplitude, offset):
    rng = np.random.default_rng(7)
    x = np.linspace(center - 4 * sigma, center + 4 * sigma, 21)
    truth = Gaussian(center, sigma, amplitude, offset)
    y = rng.poisson(truth(x)).astype(float)
    fit = fit_gaussian(x, y)
    assert fit.center == pytest.approx(center, abs=0.05 * sigma)
    assert fit.fwhm == pytest.approx(truth.fwhm, rel=0.1)
    assert fit.amplitude == pytest.approx(amplitude, rel=0.15)


def test_peak_off_centre_in_the_range_is_found():
    x = np.linspace(0, 3, 15)
    y = Gaussian(0.8, 0.3, 100.0, 1.0)(x)
    assert fit_gaussian(x, y).center == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(
    "x,y,message",
    [
        (np.arange(4.0), np.array([0, 5, 5, 0.0]), "at least 5 points"),
        (np.arange(10.0), np.full(10, 3.0), "flat"),
        (np.arange(10.0), np.r_[np.ones(9), np.nan], "NaN"),
        (np.arange(10.0), -Gaussian(5, 1, 100, 0)(np.arange(10.0)) + 200, "dip"),
    ],
)
def test_no_peak_is_a_clear_error(x, y, message):
    with pytest.raises(FitError, match=message):
        fit_gaussian(x, y)
