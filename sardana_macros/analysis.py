"""Peak analysis for the alignment macros (numpy only, no Sardana, no Tango)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class FitError(ValueError):
    """No peak could be fitted; the message says why."""


@dataclass(frozen=True)
class Gaussian:
    center: float
    sigma: float
    amplitude: float
    offset: float

    @property
    def fwhm(self) -> float:
        return FWHM_PER_SIGMA * abs(self.sigma)

    def __call__(self, x):
        return self.offset + self.amplitude * np.exp(
            -0.5 * ((np.asarray(x) - self.center) / self.sigma) ** 2
        )


def fit_gaussian(x, y, iterations: int = 50) -> Gaussian:
    """Least-squares fit of offset + amplitude * exp(-(x-c)^2 / 2 sigma^2).

    Starts from the moments of the background-subtracted data, then refines
    with Gauss-Newton (Levenberg damping). Raises FitError when there is no
    peak to fit (too few points, flat data, or a peak at the edge of the range).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size != y.size or x.size < 5:
        raise FitError(f"need at least 5 points with values to fit a peak, got {x.size}")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise FitError("the data contain NaN or infinite values")
    median = float(np.median(y))
    if median - float(y.min()) > 2 * (float(y.max()) - median):
        raise FitError("the data show a dip, not a peak: is this the right counter?")
    offset = float(np.min(y))
    signal = y - offset
    total = float(signal.sum())
    span = float(x.max() - x.min())
    if total <= 0 or float(signal.max()) <= 0 or span <= 0:
        raise FitError("the data are flat: no peak in the scanned range")
    noise = math.sqrt(max(offset, 1.0))
    if float(signal.max()) < 5 * noise:
        raise FitError(
            f"no clear peak: the highest value is only {signal.max():.3g} above the "
            f"background {offset:.3g} (noise ~{noise:.2g})"
        )
    center = float((x * signal).sum() / total)
    sigma = math.sqrt(max(float((signal * (x - center) ** 2).sum() / total), (span / x.size) ** 2))
    params = np.array([center, sigma, float(signal.max()), offset])
    damping = 1e-3
    for _ in range(iterations):
        c, s, a, b = params
        e = np.exp(-0.5 * ((x - c) / s) ** 2)
        model = b + a * e
        residual = y - model
        jac = np.column_stack(
            [a * e * (x - c) / s**2, a * e * (x - c) ** 2 / s**3, e, np.ones_like(x)]
        )
        jtj = jac.T @ jac
        step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), jac.T @ residual)
        trial = params + step
        trial[1] = abs(trial[1]) or s
        new_residual = y - (trial[3] + trial[2] * np.exp(-0.5 * ((x - trial[0]) / trial[1]) ** 2))
        if (new_residual**2).sum() <= (residual**2).sum():
            params, damping = trial, max(damping / 3, 1e-9)
            if np.all(np.abs(step) <= 1e-10 * (np.abs(params) + 1e-12)):
                break
        else:
            damping *= 10
    fit = Gaussian(float(params[0]), float(abs(params[1])), float(params[2]), float(params[3]))
    if not x.min() <= fit.center <= x.max():
        raise FitError(
            f"the fitted centre {fit.center:.6g} is outside the scanned range "
            f"[{x.min():.6g}, {x.max():.6g}]: scan a wider or shifted range"
        )
    if fit.amplitude <= 0:
        raise FitError("the fit found a dip, not a peak")
    return fit
