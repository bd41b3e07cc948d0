"""The CRF's settings as a user gives them: kernel widths in metres ('90m') or in pixels of the CRF's grid (a plain
number), and everything not given chosen from the imagery's pixel size, so one default means the same on a 0.1 m
photograph and on 30 m Landsat. The seeds' numbers stay available as the preset 'seed'.

Defaults by the imagery's pixel size r (metres), the CRF's grid being r / downscale:

| r             | downscale | smoothness kernel | appearance kernel  | Potts weights (smooth, appearance) |
|---------------|-----------|-------------------|--------------------|------------------------------------|
| < 1 m         | 0.25      | 3 px = 12 r       | 60 px = 240 r      | 3, 10                              |
| 1 m to < 5 m  | 0.5       | 3 px = 6 r        | 60 px = 120 r      | 3, 10                              |
| >= 5 m        | 1         | 3 px = 3 r        | 60 px = 60 r       | 3, 10                              |

e.g. 0.1 m photos: 1.2 m and 24 m; 1 m NAIP: 6 m and 120 m; 30 m Landsat: 90 m and 1.8 km (the seeds' 60 px at
0.25 were 7.2 km there). The appearance kernel compares bands within 13 display levels with weight 10 (DeepLab's
values for photographs), 10 mean-field iterations. Measured at 30 m: the NC scribbles (polygon interiors) score
0.664 on the points (the seeds' preset 0.493; 1 level and weight 30, 0.624); the Zion U-Net's map refined agrees
with NLCD on 0.680 of a corner's pixels (0.623 before, 0.646 with the seeds') with a third of its isolated
pixels; 10 iterations score as 20.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from landcover.errors import LandcoverError
from landcover.segment.crf import CrfSettings

PRESETS = ("auto", "seed")
"""auto: by the imagery's resolution (the table above); seed: the seeds' numbers (CrfSettings' defaults)."""
WIDTHS = ("sxy_gaussian", "sxy_bilateral")
"""The settings that are lengths: metres with an 'm', else pixels of the CRF's grid."""


@dataclass(frozen=True)
class CrfChoice:
    """A preset and the settings given over it (widths as '90m' or CRF pixels), resolved once the grid is known."""

    preset: str = "auto"
    given: tuple[tuple[str, float | str], ...] = ()

    def resolve(self, res_m: float) -> CrfSettings:
        """The settings for imagery of `res_m` metres per pixel."""
        if self.preset not in PRESETS:
            raise LandcoverError(f"--crf-preset {self.preset!r}: choose {' or '.join(PRESETS)}")
        base = CrfSettings() if self.preset == "seed" else defaults_for(res_m)
        given = dict(self.given)
        known = {f.name for f in fields(CrfSettings)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise LandcoverError(f"unknown CRF settings {unknown}")
        downscale = float(given.get("downscale", base.downscale))
        for name in WIDTHS:
            if isinstance(given.get(name), str):
                given[name] = width_px(given[name], res_m / downscale, name)
        return replace(base, **given)

    def to_dict(self) -> dict:
        return {"preset": self.preset, **dict(self.given)}


def defaults_for(res_m: float) -> CrfSettings:
    """The default settings for imagery of `res_m` metres per pixel (the module's table)."""
    downscale = 0.25 if res_m < 1 else 0.5 if res_m < 5 else 1.0
    return CrfSettings(sxy_gaussian=3.0, compat_gaussian=3.0, sxy_bilateral=60.0, srgb=13.0, compat_bilateral=10.0,
                       iterations=10, downscale=downscale)


def parse_width(text: str | float, name: str) -> tuple[float, bool]:
    """A kernel width: (value, in metres?) from '90m' (metres) or a plain number (pixels of the CRF's grid)."""
    text = str(text).strip()
    metres = text.endswith("m")
    try:
        value = float(text[:-1] if metres else text)
    except ValueError:
        raise LandcoverError(f"--{name.replace('_', '-')} {text!r} is not a length in metres ('90m') or pixels "
                             "(3)") from None
    if not 0 < value < float("inf"):
        raise LandcoverError(f"--{name.replace('_', '-')} {text!r} is out of range: it must be > 0")
    return value, metres


def width_px(text: str | float, crf_res_m: float, name: str) -> float:
    """'90m' -> CRF pixels at `crf_res_m` metres each; a plain number is already pixels."""
    value, metres = parse_width(text, name)
    return value / crf_res_m if metres else value


def resolve_crf(settings: CrfSettings | CrfChoice | None, res: float, geographic: bool = False) -> CrfSettings:
    """Concrete settings for a grid of `res` CRS units a pixel (degrees counted as 111 km): CrfSettings as given,
    a CrfChoice (or None, the defaults) resolved."""
    if isinstance(settings, CrfSettings):
        return settings
    return (settings or CrfChoice()).resolve(res * 111_320 if geographic else res)
