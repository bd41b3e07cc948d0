"""Label rasters: codes mapped to class ids, resampled once onto the chip grid or looked up at points."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from landcover.errors import LandcoverError
from landcover.raster import open_raster, require_crs, transformer
from landcover.schemes import INVALID, ClassScheme


@dataclass(frozen=True)
class LabelRaster:
    """A single-band land-cover raster whose codes a scheme maps to classes."""

    path: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    nodata: float | None

    @classmethod
    def open(cls, path: str | Path, band: int = 1) -> LabelRaster:
        """Open and check a label raster."""
        with open_raster(path) as src:
            crs = require_crs(src)
            if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
                raise LandcoverError(f"labels must be integer codes, not {src.dtypes[0]}", path)
            return cls(str(path), crs, src.transform, src.width, src.height, src.nodata)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the label CRS."""
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)

    def window_for(self, bounds: tuple[float, float, float, float], crs: CRS) -> Window | None:
        """The native window (one pixel of margin) covering bounds given in another CRS."""
        native = transformer(crs, self.crs).transform_bounds(*bounds, densify_pts=21)
        w = window_from_bounds(*native, transform=self.transform)
        col0, row0 = math.floor(w.col_off) - 1, math.floor(w.row_off) - 1
        col1, row1 = math.ceil(w.col_off + w.width) + 1, math.ceil(w.row_off + w.height) + 1
        col0, row0, col1, row1 = max(col0, 0), max(row0, 0), min(col1, self.width), min(row1, self.height)
        if col1 <= col0 or row1 <= row0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)

    def read_codes(self, window: Window) -> np.ndarray:
        """Raw label codes in a native window."""
        with rasterio.open(self.path) as src:
            return src.read(1, window=window)

    def classes(self, window: Window, lut: np.ndarray) -> np.ndarray:
        """Class ids (INVALID for nodata and ignored codes) in a native window."""
        codes = self.read_codes(window)
        classes = lut[codes.astype(np.int64) & 0xFFFF]
        classes[(codes < 0) | (codes > 0xFFFF)] = INVALID
        if self.nodata is not None:
            classes[codes == self.nodata] = INVALID
        return classes

    def unknown_codes(self, scheme: ClassScheme, window: Window | None = None) -> list[int]:
        """Codes in the raster (or a window of it) that the scheme neither maps nor ignores."""
        known = scheme.known_codes()
        if self.nodata is not None:
            known.add(int(self.nodata))
        found: set[int] = set()
        with rasterio.open(self.path) as src:
            win = window or Window(0, 0, self.width, self.height)
            step = 4096
            for r in range(int(win.row_off), int(win.row_off + win.height), step):
                h = min(step, int(win.row_off + win.height) - r)
                block = src.read(1, window=Window(win.col_off, r, win.width, h))
                found.update(int(v) for v in np.unique(block))
        return sorted(found - known)


@dataclass(frozen=True)
class LabelPatch:
    """Class ids of a native label window, ready for grid resampling and point look-ups."""

    labels: LabelRaster
    classes: np.ndarray
    window: Window

    @property
    def transform(self) -> Affine:
        """Transform of the patch's top-left pixel."""
        return rasterio.windows.transform(self.window, self.labels.transform)

    def to_grid(self, crs: CRS, transform: Affine, width: int, height: int) -> np.ndarray:
        """Class ids resampled (nearest, once) onto a grid; INVALID outside the labels."""
        out = np.full((height, width), INVALID, dtype=np.uint8)
        reproject(self.classes, out, src_transform=self.transform, src_crs=self.labels.crs,
                  src_nodata=INVALID, dst_transform=transform, dst_crs=crs, dst_nodata=INVALID,
                  resampling=Resampling.nearest, init_dest_nodata=True)
        return out

    def at_points(self, xs: np.ndarray, ys: np.ndarray, crs: CRS) -> np.ndarray:
        """Class ids at exact point locations given in another CRS (INVALID outside)."""
        if CRS(crs) == CRS(self.labels.crs):
            lx, ly = xs, ys
        else:
            lx, ly = transformer(crs, self.labels.crs).transform(xs, ys)
        cols, rows = ~self.transform @ (np.asarray(lx), np.asarray(ly))
        cols, rows = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
        h, w = self.classes.shape
        inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        out = np.full(cols.shape, INVALID, dtype=np.uint8)
        out[inside] = self.classes[rows[inside], cols[inside]]
        return out
