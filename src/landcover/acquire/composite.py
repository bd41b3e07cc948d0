"""Per-pixel compositing of the fetched items: the median of the valid observations, the valid observation closest
in time to a date, or the newest valid one (a mosaic), block by block; and the output rasters and STAC item."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from landcover.acquire.catalog import FoundItem, iso_time
from landcover.acquire.fetch import OutputGrid, cache_path
from landcover.geo.cog import CACHE_MB, copy_to_cog

BLOCK = 1024
"""Output pixels per side of one compositing task."""
METHODS = ("median", "closest", "mosaic", "none")


@dataclass(frozen=True)
class Method:
    """How observations become one value per pixel: 'median', 'closest' (to `target`), 'mosaic' (newest valid
    first) or 'none' (one stack per item)."""

    name: str
    target: datetime | None = None

    def describe(self) -> str:
        return f"closest:{self.target.date().isoformat()}" if self.target else self.name

    def priority(self, items: list[FoundItem]) -> list[int]:
        """Item positions in the order they win a pixel (closest / mosaic); ties go to the earlier item."""
        if self.name == "closest":
            return sorted(range(len(items)), key=lambda i: (abs((items[i].time - self.target).total_seconds()), i))
        return sorted(range(len(items)), key=lambda i: (-(items[i].time.timestamp() if items[i].time else 0), i))


def composite(data: np.ndarray, valid: np.ndarray, method: Method, order: list[int] | None,
              nodata: float) -> np.ndarray:
    """Observations (n, bands, h, w) with validity (n, h, w) into one (bands, h, w); nodata where none is valid.
    Median: per pixel and band over the valid observations (integers rounded half to even); otherwise the first
    valid observation in `order`."""
    _, bands, h, w = data.shape
    anyvalid = valid.any(axis=0)
    if method.name == "median":
        exact = np.float32 if data.dtype.itemsize <= 2 or data.dtype == np.float32 else np.float64  # half the memory
        stack = np.where(valid[:, None], data.astype(exact), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: no valid observation
            out = np.nanmedian(stack, axis=0)
        if np.issubdtype(data.dtype, np.integer):
            out = np.rint(out)
    else:
        ranked = valid[order]
        chosen = np.asarray(order)[ranked.argmax(axis=0)]
        out = np.take_along_axis(data, np.broadcast_to(chosen[None, None], (1, bands, h, w)), axis=0)[0]
    out = np.where(anyvalid[None], out, nodata)
    return out.astype(data.dtype)


@dataclass(frozen=True)
class CompositeJob:
    """What every block shares: the grid, the fetched items and their windows, the method and the output type."""

    grid: OutputGrid
    items: tuple[FoundItem, ...]
    windows: tuple[tuple[int, int, int, int] | None, ...]
    bands: tuple[str, ...]
    """The output's band names (the assets' bands in order)."""
    dtype: str
    nodata: float
    method: Method
    cache: str


@dataclass
class Block:
    window: tuple[int, int, int, int]
    data: np.ndarray | None
    count: np.ndarray
    inside: int
    """Pixels of the block inside the AOI."""


def composite_block(job: CompositeJob, window: tuple[int, int, int, int]) -> Block:
    """One output block: the items overlapping it read from the cache, composited, with the valid-observation
    count."""
    col, row, w, h = window
    inside = int(job.grid.area_mask(Window(*window)).sum())
    present, data, valid = [], [], []
    for index, item_window in enumerate(job.windows):
        piece = _overlap(window, item_window)
        if piece is None:
            continue
        block_data = np.zeros((len(job.bands), h, w), job.dtype)
        block_valid = np.zeros((h, w), bool)
        (c0, r0, pw, ph), (ic, ir) = piece
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(cache_path(job.cache, index)) as src:
            read = src.read(window=Window(c0 - ic, r0 - ir, pw, ph))
        block_data[:, r0 - row:r0 - row + ph, c0 - col:c0 - col + pw] = read[:-1]
        block_valid[r0 - row:r0 - row + ph, c0 - col:c0 - col + pw] = read[-1] > 0
        present.append(index)
        data.append(block_data)
        valid.append(block_valid)
    if not present:
        return Block(window, None, np.zeros((h, w), np.uint16), inside)
    valid_stack = np.stack(valid)
    count = valid_stack.sum(axis=0).astype(np.uint16)
    if job.method.name == "none":
        return Block(window, None, count, inside)
    items = [job.items[i] for i in present]
    order = None if job.method.name == "median" else job.method.priority(items)
    return Block(window, composite(np.stack(data), valid_stack, job.method, order, job.nodata), count, inside)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int] | None) -> tuple | None:
    if b is None:
        return None
    c0, r0 = max(a[0], b[0]), max(a[1], b[1])
    c1, r1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return ((c0, r0, c1 - c0, r1 - r0), b[:2]) if c1 > c0 and r1 > r0 else None


def blocks(grid: OutputGrid) -> list[tuple[int, int, int, int]]:
    return [(c, r, min(BLOCK, grid.width - c), min(BLOCK, grid.height - r))
            for r in range(0, grid.height, BLOCK) for c in range(0, grid.width, BLOCK)]


def start_draft(path: Path, grid: OutputGrid, count: int, dtype: str, nodata: float | None,
                descriptions: list[str] | None = None) -> Path:
    """An empty tiled GeoTIFF on the grid (nodata everywhere), filled by write_block and made a COG by finish."""
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
               "crs": grid.crs, "transform": grid.transform, "nodata": nodata, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "BIGTIFF": "IF_SAFER"}
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(descriptions or []):
            dst.set_band_description(i + 1, name)
    return path


def write_block(draft: Path, window: tuple[int, int, int, int], data: np.ndarray) -> None:
    data = data[None] if data.ndim == 2 else data
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(draft, "r+") as dst:
        dst.write(data, window=Window(*window))


def finish(draft: Path, path: Path, categorical: bool) -> Path:
    """The draft as a deflate COG (mode overviews for class codes, average for imagery), then removed."""
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(draft) as src:
        copy_to_cog(src, path, "MODE" if categorical else "AVERAGE", None)
    draft.unlink()
    return path


def item_stack(job: CompositeJob, index: int, draft: Path) -> None:
    """`none`: one item's bands on the whole grid, nodata where it has no valid observation."""
    col, row, w, h = job.windows[index]
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(cache_path(job.cache, index)) as src, \
            rasterio.open(draft, "r+") as dst:
        for r in range(0, h, BLOCK):
            piece = Window(0, r, w, min(BLOCK, h - r))
            read = src.read(window=piece)
            data = np.where(read[-1:] > 0, read[:-1], np.asarray(job.nodata).astype(job.dtype))
            dst.write(data, window=Window(col, row + r, w, piece.height))


def stac_item(item_id: str, grid: OutputGrid, items: list[FoundItem], assets: dict[str, str], method: Method,
              mask: str) -> dict:
    """A STAC item describing an output raster on the grid (projection extension; the items it came from)."""
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping, shape

    left, top = grid.transform * (0, 0)
    right, bottom = grid.transform * (grid.width, grid.height)
    footprint = shape(transform_geom(grid.crs, "EPSG:4326", mapping(box(left, bottom, right, top)),
                                     antimeridian_cutting=True, precision=7))
    times = [i.time for i in items if i.time]
    code = grid.crs.to_string() if grid.crs.to_epsg() is None else f"EPSG:{grid.crs.to_epsg()}"
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id,
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "geometry": mapping(footprint), "bbox": list(footprint.bounds),
        "properties": {"datetime": None, "start_datetime": iso_time(min(times)) if times else None,
                       "end_datetime": iso_time(max(times)) if times else None, "proj:code": code,
                       "proj:shape": [grid.height, grid.width], "proj:transform": list(grid.transform)[:6],
                       "landcover:composite": method.describe(), "landcover:mask": mask,
                       "landcover:items": [i.id for i in items]},
        "links": [],
        "assets": {name: {"href": f"./{href}", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                          "roles": ["data"]} for name, href in assets.items()},
    }
