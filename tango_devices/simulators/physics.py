"""One physics model for the whole virtual beamline (no I/O, no tango).

A Gaussian X-ray beam goes through the slits (horizontal and vertical gaps),
is reflected by a mirror (its pitch steers the beam horizontally and sets the
reflectivity), passes the front-end shutter, hits the sample (a small feature
on a stage that moves in x and y) and ends on a 2D camera at distance det_z.

- ``i0`` (upstream monitor) sees the flux through the slits, times the mirror
  reflectivity, when the shutter is open;
- ``diode`` (behind the sample) sees i0 times the overlap of the beam with the
  sample feature: a Gaussian peak in sample_x and sample_y, centred where the
  beam lands (which moves with the mirror pitch);
- the camera sees a Gaussian spot whose position moves with the mirror pitch
  and whose size grows with the detector distance and the slit gaps;
- with the shutter closed every channel sees the dark rate only.

Inputs come from the simulated controllers, which register *sources* by name
(``"smc1/3"`` = axis 3 of controller smc1, in steps; ``"ioc1/mirror_pitch"``,
``"plc1/shutter_open"``, ...). The ``physics`` section of the simulator
configuration maps each physical quantity to a source and a scale. Counting
noise (Poisson) is added by the consumers (scaler, camera), not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

INPUTS = (
    "slit_h",
    "slit_v",
    "sample_x",
    "sample_y",
    "det_z",
    "mirror_pitch",
    "shutter_open",
    "pressure",
)

DEFAULTS: dict[str, Any] = {
    "flux": 2.0e6,  # counts/s on i0 with the slits wide open and the mirror on its optimum
    "dark_rate": 5.0,  # counts/s on every channel with the shutter closed
    "beam_sigma_h": 0.6,  # mm, at the slits
    "beam_sigma_v": 0.3,  # mm, at the slits
    "mirror_optimum": 3.0,  # mrad, pitch of best reflectivity
    "mirror_acceptance": 0.4,  # mrad, Gaussian width of the reflectivity curve
    "pitch_to_x": 2.5,  # mm of beam displacement at the sample per mrad of pitch
    "sample_feature": [
        1.5,
        -0.8,
    ],  # mm, sample stage (x, y) where the feature is in the beam at optimum pitch
    "feature_sigma": 0.15,  # mm, size of the sample feature
    "diode_efficiency": 0.4,
    "camera_size": [512, 512],  # pixels (width, height)
    "pixel_size": 0.02,  # mm
    "pitch_to_pixels": 60.0,  # spot displacement on the camera, pixels per mrad
    "spot_sigma_per_m": 8.0,  # spot sigma in pixels per metre of det_z (divergence)
    "spot_sigma_min": 3.0,  # pixels
    "camera_gain": 2.0,  # counts/s on the whole camera per count/s on i0
}


class PhysicsError(ValueError):
    """Bad physics configuration; the message starts with the key."""


@dataclass(frozen=True)
class Input:
    source: str
    scale: float = 1.0
    default: float = 0.0


@dataclass(frozen=True)
class Spot:
    """The beam on the camera, in pixels; ``peak`` in counts per second at the centre."""

    x: float
    y: float
    sigma_x: float
    sigma_y: float
    peak: float
    dark: float


Source = Callable[[], float]


class BeamlinePhysics:
    """The model: sources in, rates and the camera spot out."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        inputs = config.pop("inputs", {})
        unknown = set(config) - set(DEFAULTS) - {"_comment"}
        if unknown:
            raise PhysicsError(
                f"{sorted(unknown)[0]}: unknown physics parameter; known: {', '.join(DEFAULTS)}"
            )
        self.params = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        for key, value in self.params.items():
            if isinstance(DEFAULTS[key], float) and not isinstance(value, int | float):
                raise PhysicsError(f"{key}: must be a number, got {value!r}")
        self.inputs: dict[str, Input] = {}
        if not isinstance(inputs, Mapping):
            raise PhysicsError("inputs: must map a quantity to {source, scale}")
        for name, spec in inputs.items():
            if name.startswith("_"):
                continue
            if name not in INPUTS:
                raise PhysicsError(f"inputs.{name}: unknown quantity; known: {', '.join(INPUTS)}")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("source"), str):
                raise PhysicsError(
                    f'inputs.{name}: must be {{"source": "controller/signal", "scale": 1.0}}'
                )
            self.inputs[name] = Input(
                spec["source"], float(spec.get("scale", 1.0)), float(spec.get("default", 0.0))
            )
        self._sources: dict[str, Source] = {}

    # ------------------------------------------------------------- sources
    def register_source(self, name: str, source: Source) -> None:
        """A controller offers a live value under ``name`` (``"smc1/3"``)."""
        self._sources[name] = source

    def missing_sources(self) -> list[str]:
        """Inputs whose source no controller registered (checked at start-up)."""
        return [
            f"inputs.{q}: no controller provides {i.source!r}"
            for q, i in self.inputs.items()
            if i.source not in self._sources
        ]

    def value(self, quantity: str) -> float:
        """A physical input in its unit (mm, mrad, mbar, 1/0 for the shutter)."""
        spec = self.inputs.get(quantity)
        if spec is None:
            return _NEUTRAL.get(quantity, 0.0)
        source = self._sources.get(spec.source)
        if source is None:
            return spec.default
        return float(source()) * spec.scale

    # ------------------------------------------------------------- outputs
    def shutter_open(self) -> bool:
        return self.value("shutter_open") > 0.5

    def pressure(self) -> float:
        return self.value("pressure")

    def reflectivity(self) -> float:
        p = self.params
        d = self.value("mirror_pitch") - p["mirror_optimum"]
        return math.exp(-0.5 * (d / p["mirror_acceptance"]) ** 2)

    def slit_transmission(self) -> float:
        p = self.params
        th = math.erf(max(self.value("slit_h"), 0.0) / (2 * math.sqrt(2) * p["beam_sigma_h"]))
        tv = math.erf(max(self.value("slit_v"), 0.0) / (2 * math.sqrt(2) * p["beam_sigma_v"]))
        return th * tv

    def beam_at_sample(self) -> tuple[float, float, float, float]:
        """Beam centre (x, y) in sample-stage coordinates and its sigmas (mm).

        A narrow slit also narrows the beam (a gap g passes at most ~g/2.35 sigma)."""
        p = self.params
        dx = p["pitch_to_x"] * (self.value("mirror_pitch") - p["mirror_optimum"])
        cx, cy = p["sample_feature"]
        sh = min(p["beam_sigma_h"], max(self.value("slit_h"), 1e-3) / 2.355)
        sv = min(p["beam_sigma_v"], max(self.value("slit_v"), 1e-3) / 2.355)
        return cx - dx, cy, sh, sv

    def i0_rate(self) -> float:
        if not self.shutter_open():
            return 0.0
        return self.params["flux"] * self.slit_transmission() * self.reflectivity()

    def diode_rate(self) -> float:
        i0 = self.i0_rate()
        if i0 == 0.0:
            return 0.0
        bx, by, sh, sv = self.beam_at_sample()
        f = self.params["feature_sigma"]
        wx, wy = math.hypot(sh, f), math.hypot(sv, f)
        overlap = math.exp(-0.5 * ((self.value("sample_x") - bx) / wx) ** 2) * math.exp(
            -0.5 * ((self.value("sample_y") - by) / wy) ** 2
        )
        return i0 * self.params["diode_efficiency"] * overlap

    def rates(self) -> dict[str, float]:
        """Counts per second per scaler signal, dark rate included."""
        dark = self.params["dark_rate"]
        return {"i0": self.i0_rate() + dark, "diode": self.diode_rate() + dark}

    def spot(self) -> Spot:
        p = self.params
        width, height = p["camera_size"]
        det_z_m = max(self.value("det_z"), 1.0) / 1000.0
        sigma_x = max(p["spot_sigma_min"], p["spot_sigma_per_m"] * det_z_m * 10 * p["beam_sigma_h"])
        sigma_y = max(p["spot_sigma_min"], p["spot_sigma_per_m"] * det_z_m * 10 * p["beam_sigma_v"])
        x = width / 2 + p["pitch_to_pixels"] * (self.value("mirror_pitch") - p["mirror_optimum"])
        y = height / 2
        total = p["camera_gain"] * self.i0_rate()  # counts/s, spread over the Gaussian
        peak = total / (2 * math.pi * sigma_x * sigma_y)
        return Spot(x, y, sigma_x, sigma_y, peak, p["dark_rate"] / 100.0)


# What an unconfigured quantity reads (a bare simulator still makes light).
_NEUTRAL = {
    "slit_h": 20.0,
    "slit_v": 20.0,
    "sample_x": DEFAULTS["sample_feature"][0],
    "sample_y": DEFAULTS["sample_feature"][1],
    "det_z": 300.0,
    "mirror_pitch": DEFAULTS["mirror_optimum"],
    "shutter_open": 1.0,
    "pressure": 1e-8,
}
