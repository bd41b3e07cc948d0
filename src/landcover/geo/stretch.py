"""The 8-bit scaling of PNG chips: per-band percentiles computed once per scene, recorded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling

from landcover.geo.raster import Scene

SAMPLE_PX = 1024
"""Percentiles are taken on a decimated read of at most this many pixels a side."""


@dataclass(frozen=True)
class Stretch:
    """Linear per-band stretch: value lo -> 0, hi -> 255, clipped."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] = (2.0, 98.0)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Bands x rows x cols in any dtype to uint8."""
        lo = np.asarray(self.low, dtype=np.float32)[:, None, None]
        span = np.maximum(np.asarray(self.high, dtype=np.float32)[:, None, None] - lo, 1e-12)
        scaled = (pixels.astype(np.float32) - lo) * (255.0 / span)
        return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        """The stretch as plain data: percentiles used and the per-band values they gave."""
        return {"method": "percentile", "percentiles": list(self.percentiles),
                "low": list(self.low), "high": list(self.high)}


def scene_stretch(scene: Scene, percentiles: tuple[float, float] = (2.0, 98.0)) -> Stretch | None:
    """The stretch for a scene's PNG chips, or None for 8-bit imagery (written as is)."""
    if np.dtype(scene.dtype) == np.uint8:
        return None
    scale = max(scene.width, scene.height) / SAMPLE_PX
    shape = (max(1, round(scene.height / max(scale, 1))), max(1, round(scene.width / max(scale, 1))))
    low, high = [], []
    for (fi, band), nodata in zip(scene.band_sources, scene.nodata, strict=True):
        with rasterio.open(scene.paths[fi]) as src:
            data = src.read(band, out_shape=shape, resampling=Resampling.nearest).astype(np.float64)
        keep = ~np.isnan(data)
        if nodata is not None and not np.isnan(nodata):
            keep &= data != nodata
        values = data[keep]
        lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
        low.append(float(lo))
        high.append(float(hi))
    return Stretch(tuple(low), tuple(high), tuple(percentiles))
