"""The studio's imagery at any size: square display tiles of a raster at zoom levels, read on demand.

Level 0 shows the raster's own pixels; each level above halves the resolution, up to the level where one tile
holds the whole raster. A tile is TILE_PX pixels a side; tile (level k, col, row) covers source pixels
[col, col + 1) x TILE_PX x 2^k across and the same down.

Levels above 0 come from a pyramid: the raster's own overviews when it is one file that has them (GDAL picks
the one to read), the raster itself when it is small (at most DIRECT_PX a side), and otherwise a pyramid built once
into a cache folder: level k is a GeoTIFF of every band at 2^k source pixels a pixel, each the mean of the valid
pixels under it (none valid: no data), built from the level below in strips, so memory stays bounded whatever the
raster's size. A cache is named by the rasters' paths, sizes and modification times and the nodata choice: a
changed raster gets a new one; it is written under a temporary name and renamed when whole.

Display: up to three of the stack's bands (`bands`, 1-based; default the first three, one band shows grey), each
stretched linearly between `percentiles` of its valid pixels on the top level; pixels without data are
transparent.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover.atomic import temp_path
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene, open_raster

TILE_PX = 256
DIRECT_PX = 4096
"""Rasters with no side longer than this are read directly at every level (the top level reads 16 Mpx)."""
STRIP_PX = 256
"""Rows of a level written at once while it is built (twice as many read below: 128 MB for a 16k-wide 4-band
stack)."""


class TileSource:
    """Display tiles of a stack of rasters (`Scene.open`'s files, bands and nodata), at any level."""

    def __init__(self, images: list[str], cache: Path, bands: list[int] | None = None,
                 nodata: float | str | None = None, percentiles: tuple[float, float] = (2.0, 98.0),
                 log: Callable[[str], None] = print):
        stack = Scene.open(images, nodata=nodata)
        self.bands = bands or list(range(1, min(3, stack.count) + 1))
        if len(self.bands) not in (1, 3):
            raise LandcoverError(f"the display takes 1 band (grey) or 3 (red, green, blue), not {len(self.bands)}")
        self.scene = Scene.open(images, bands=self.bands, nodata=nodata)
        self.stack, self.percentiles = stack, percentiles
        longest = max(stack.width, stack.height)
        self.levels = max(1, math.ceil(math.log2(longest / TILE_PX)) + 1)
        self.pyramid: list[Path] = []
        if self.levels > 1 and longest > DIRECT_PX and not _has_overviews(stack):
            self.pyramid = build_pyramid(stack, Path(cache), self.levels - 1, log)
        top = self.whole(self.levels - 1)
        self.low, self.high = _percentiles(*top, percentiles)

    def level_size(self, level: int) -> tuple[int, int]:
        """(height, width) of a level in its own pixels."""
        return math.ceil(self.stack.height / 2 ** level), math.ceil(self.stack.width / 2 ** level)

    def tiles(self, level: int) -> tuple[int, int]:
        """(rows, cols) of tiles at a level."""
        h, w = self.level_size(level)
        return math.ceil(h / TILE_PX), math.ceil(w / TILE_PX)

    def check(self, level: int, col: int, row: int) -> None:
        """Refuse a tile off the grid: a level past the top, a column or row past the level's tiles."""
        if not 0 <= level < self.levels:
            raise LandcoverError(f"level {level} is outside 0..{self.levels - 1}")
        rows, cols = self.tiles(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise LandcoverError(f"tile {col}, {row} is outside level {level}'s {cols} x {rows} tiles")

    def read(self, level: int, col: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The display bands (bands, TILE_PX, TILE_PX) and validity of a tile."""
        self.check(level, col, row)
        return self._window(level, Window(col * TILE_PX, row * TILE_PX, TILE_PX, TILE_PX))

    def whole(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """The display bands and validity of a whole level."""
        self.check(level, 0, 0)
        h, w = self.level_size(level)
        return self._window(level, Window(0, 0, w, h))

    def stack_window(self, level: int, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Every band of the stack and validity over a window of a level (past the raster: no data)."""
        return self._window(level, window, every_band=True)

    def _window(self, level: int, window: Window, every_band: bool = False) -> tuple[np.ndarray, np.ndarray]:
        scene = self.stack if every_band else self.scene
        if level == 0:
            return scene.read(window)
        if self.pyramid:
            bands = list(range(1, self.stack.count + 1)) if every_band else self.bands
            return _read_level(self.pyramid[level - 1], bands, window)
        return _read_decimated(scene, 2 ** level, window, self.level_size(level))

    def tile_png(self, level: int, col: int, row: int) -> bytes:
        """A tile as a PNG: the display bands stretched, no data transparent."""
        pixels, valid = self.read(level, col, row)
        lo = np.asarray(self.low, np.float32)[:, None, None]
        span = np.maximum(np.asarray(self.high, np.float32)[:, None, None] - lo, 1e-6)
        rgb = np.clip(np.rint((pixels.astype(np.float32) - lo) * (255 / span)), 0, 255).astype(np.uint8)
        if len(rgb) == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        rgba = np.concatenate([rgb, (valid * 255).astype(np.uint8)[None]]).transpose(1, 2, 0)
        return rgba_png(np.ascontiguousarray(rgba))


def build_pyramid(stack: Scene, cache: Path, levels: int, log: Callable[[str], None] = print) -> list[Path]:
    """Levels 1..`levels` of a stack (every band) in a cache folder named by the inputs; built once."""
    key = hashlib.sha256(json.dumps({
        "paths": [str(Path(p).resolve()) for p in stack.paths],
        "stats": [[os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in stack.paths],
        "nodata": str(stack.nodata_override)}).encode()).hexdigest()[:16]
    folder = cache / f"pyramid-{Path(stack.paths[0]).stem}-{key}"
    paths = [folder / f"level-{k}.tif" for k in range(1, levels + 1)]
    if all(p.exists() for p in paths):
        return paths
    tmp = temp_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"building display overviews of {stack.width} x {stack.height} px into {folder} (once)")
    below: Path | None = None
    for k in range(1, levels + 1):
        _halve(stack, below, tmp / f"level-{k}.tif", k)
        below = tmp / f"level-{k}.tif"
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return paths


def _halve(stack: Scene, below: Path | None, out: Path, level: int) -> None:
    """Level `level` from the one below (the stack itself for level 1): 2 x 2 means of the valid pixels."""
    height, width = math.ceil(stack.height / 2 ** level), math.ceil(stack.width / 2 ** level)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": stack.count, "dtype": stack.dtype,
               "crs": stack.crs, "transform": stack.transform @ Affine.scale(2 ** level),
               "tiled": True, "blockxsize": TILE_PX, "blockysize": TILE_PX, "compress": "deflate"}
    all_bands = list(range(1, stack.count + 1))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as dst:
        for top in range(0, height, STRIP_PX):
            rows = min(STRIP_PX, height - top)
            window = Window(0, 2 * top, 2 * width, 2 * rows)
            pixels, valid = stack.read(window) if below is None else _read_level(below, all_bands, window)
            summed = (pixels.astype(np.float32) * valid).reshape(stack.count, rows, 2, width, 2).sum(axis=(2, 4))
            count = valid.reshape(rows, 2, width, 2).sum(axis=(1, 3))
            mean = summed / np.maximum(count, 1)
            if np.issubdtype(np.dtype(stack.dtype), np.integer):
                mean = np.rint(mean)
            dst.write(mean.astype(stack.dtype), window=Window(0, top, width, rows))
            dst.write_mask((count > 0).astype(np.uint8) * 255, window=Window(0, top, width, rows))


def _read_level(path: Path, bands: list[int], window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Bands and validity of a window of a pyramid level; past its edges no data."""
    with rasterio.open(path) as src:
        out = np.zeros((len(bands), int(window.height), int(window.width)), src.dtypes[0])
        valid = np.zeros(out.shape[1:], bool)
        inner = window.intersection(Window(0, 0, src.width, src.height))
        r0, c0 = int(inner.row_off - window.row_off), int(inner.col_off - window.col_off)
        h, w = int(inner.height), int(inner.width)
        out[:, r0:r0 + h, c0:c0 + w] = src.read(bands, window=inner)
        valid[r0:r0 + h, c0:c0 + w] = src.read_masks(1, window=inner) > 0
    return out, valid


def _read_decimated(scene: Scene, factor: int, window: Window, level: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A window of a level read from the source at 1/factor (GDAL reads the files' overviews where they have
    them), averaged; past the raster's edges no data."""
    out = np.zeros((scene.count, int(window.height), int(window.width)), scene.dtype)
    valid = np.zeros(out.shape[1:], bool)
    inner = window.intersection(Window(0, 0, level[1], level[0]))
    r0, c0 = int(inner.row_off - window.row_off), int(inner.col_off - window.col_off)
    h, w = int(inner.height), int(inner.width)
    source = Window(inner.col_off * factor, inner.row_off * factor,
                    min(w * factor, scene.width - inner.col_off * factor),
                    min(h * factor, scene.height - inner.row_off * factor))
    for pos, (fi, band) in enumerate(scene.band_sources):
        with rasterio.open(scene.paths[fi]) as src:
            data = src.read(band, window=source, out_shape=(h, w), resampling=Resampling.average, masked=True)
            nodata = scene.nodata[pos]
            keep = ~np.ma.getmaskarray(data) if scene.nodata_override is None else (
                np.ones((h, w), bool) if nodata is None else data.filled(nodata) != nodata)
        out[pos, r0:r0 + h, c0:c0 + w] = data.filled(0)
        valid[r0:r0 + h, c0:c0 + w] = keep if pos == 0 else valid[r0:r0 + h, c0:c0 + w] & keep
    return out, valid


def _has_overviews(stack: Scene) -> bool:
    """One file with overviews: GDAL reads levels from them."""
    if len(stack.paths) != 1:
        return False
    with rasterio.open(stack.paths[0]) as src:
        return bool(src.overviews(1))


def _percentiles(pixels: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float]
                 ) -> tuple[list[float], list[float]]:
    """Per band, the values at the two percentiles of the valid pixels (0 and 1 where none is valid)."""
    low, high = [], []
    for band in pixels:
        values = band[valid].astype(np.float64)
        lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
        low.append(float(lo))
        high.append(float(hi) if hi > lo else float(lo) + 1)
    return low, high


class MapTiles:
    """Display tiles of a class map over the imagery's tiles: each tile of the imagery's grid at a level, classes
    in their colours, no data (and no class) transparent. A map on the imagery's grid is read decimated (nearest:
    GDAL reads its overviews, which landcover's COGs have); one on another grid is warped per tile (nearest). With
    a `scheme` the raster holds the scheme's codes (a reference such as NLCD), shown as its classes."""

    def __init__(self, path: str | Path, imagery: TileSource, scheme: str | None = None):
        from landcover.maps.classmap import NODATA, hex_rgb, raster_classes
        from landcover.schemes import load_scheme

        self.path, self.imagery = str(path), imagery
        self.codes = None
        if scheme:
            loaded = load_scheme(scheme)
            self.classes = [{"id": c.id, "name": c.name, "color": c.color} for c in loaded.classes]
            self.codes = np.where(loaded.lookup() < len(loaded.classes), loaded.lookup(), 255).astype(np.uint8)
        else:
            self.classes, _ = raster_classes(path)
        self.lut = np.zeros((256, 4), np.uint8)
        for c in self.classes:
            if int(c["id"]) != NODATA:
                self.lut[int(c["id"])] = [*hex_rgb(c["color"]), 255]
        stack = imagery.stack
        with open_raster(path) as src:
            self.crs, self.transform, self.nodata = src.crs, src.transform, src.nodata
            self.same_grid = (src.crs == stack.crs and src.transform.almost_equals(stack.transform)
                              and (src.width, src.height) == (stack.width, stack.height))

    def tile_png(self, level: int, col: int, row: int) -> bytes:
        self.imagery.check(level, col, row)
        factor, stack = 2 ** level, self.imagery.stack
        classes = np.full((TILE_PX, TILE_PX), 255, np.uint8 if self.codes is None else np.uint16)
        with rasterio.open(self.path) as src:
            if self.same_grid:
                window = Window(col * TILE_PX * factor, row * TILE_PX * factor, TILE_PX * factor,
                                TILE_PX * factor).intersection(Window(0, 0, src.width, src.height))
                h, w = math.ceil(window.height / factor), math.ceil(window.width / factor)
                classes[:h, :w] = src.read(1, window=window, out_shape=(h, w), resampling=Resampling.nearest)
            else:
                from rasterio.warp import reproject

                reproject(rasterio.band(src, 1), classes, src_nodata=self.nodata, dst_nodata=255,
                          dst_crs=stack.crs, resampling=Resampling.nearest,
                          dst_transform=stack.transform @ Affine.translation(col * TILE_PX * factor,
                                                                             row * TILE_PX * factor)
                          @ Affine.scale(factor))
        if self.nodata is not None and self.nodata != 255:
            classes[classes == self.nodata] = 255
        if self.codes is not None:
            classes = self.codes[classes]
        return class_png(classes.astype(np.uint8), self.lut)


def rgba_png(rgba: np.ndarray) -> bytes:
    """(h, w, 4) uint8 as a PNG, compressed lightly (a tile is made for one look)."""
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def class_png(ids: np.ndarray, lut: np.ndarray) -> bytes:
    """Class ids (h, w) uint8 as a palette PNG, colours and opacity from `lut` (256, 4): a third the bytes of RGBA
    and several times faster to encode."""
    image = Image.fromarray(ids, mode="P")
    image.putpalette(lut[:, :3].ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, transparency=bytes(lut[:, 3].tolist()))
    return buffer.getvalue()
