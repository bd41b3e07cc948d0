"""Whole rasters through a segmentation bundle: a class for every pixel, from overlapping windows blended with
weights that fall towards each window's edges, computed in bands of window rows so memory stays bounded.

Windows of `window` px start every `window - overlap` px from the map's top-left corner. Each window's per-pixel
probabilities are weighted by a taper (1 inside, falling linearly over `overlap` px to its edges; where two
windows overlap their weights sum to 1) and the weighted sums are normalised, so the map does not change where
one window ends and the next begins. A band (an engine task and a resume step) holds whole window rows; the
`overlap` rows it shares with the next band are handed on as weighted sums, so no window is computed twice. The
sums are kept in fixed point (integers, `SUM_SCALE` a unit), whose addition does not depend on its order: how the
windows fall into bands, chunks and batches changes nothing, and a window placed at the same spot of a clipped
raster (a tile of `predict --tiles`) adds exactly what it adds to the whole raster's map. Within a band, windows
are read and inferred a chunk of columns at a time, the next chunk read while this one is inferred.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import shapely
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.windows import Window

from landcover.bundle import Bundle
from landcover.engine import use_threads
from landcover.geo.grid import PIXEL_TOLERANCE, make_grid, scene_footprint
from landcover.geo.raster import Scene, crs_name, same_crs
from landcover.geo.stretch import Stretch, scene_stretch
from landcover.maps.classmap import NODATA, scale_probabilities
from landcover.predict.runtime import open_runtime

WINDOW_PX = 512
"""Default window side. A network trained on small tiles still sees past them (its receptive field is larger), so
what it says about a pixel depends a little on the window around it: on Zion, 512 px windows agree with the whole
scene in one window on 93% of pixels, 256 px windows on 86% (tests/test_predict_pixels.py); large windows also keep
the encoder busy."""
BAND_PX = 1024
"""Rows per band, about: with the chunk width below, what bounds a worker's memory whatever the raster's size."""
CHUNK_PX = 2048
"""Columns read and inferred at once within a band."""
SUM_SCALE = 2 ** 24
"""A weighted probability of 1 in the fixed-point sums (a float32's precision; at most 4 windows cover a pixel, as
the overlap is at most half a window, so a sum stays below 2**26 and fits int32)."""


@dataclass(frozen=True)
class PixelJob:
    """Everything a worker needs to turn bands of windows into per-pixel probabilities (sent once per worker)."""

    bundle: str
    runtime: str
    scene: Scene
    png: bool
    stretch: Stretch | None
    crs: CRS
    transform: Affine
    """The map's grid: the imagery's own, or the bundle's resolution on the imagery's (or its UTM) CRS."""
    height: int
    width: int
    direct: bool
    """The map's pixels are the imagery's: windows are read, not warped."""
    resampling: str
    window: int
    overlap: int
    batch_size: int
    threads: int | None
    n_classes: int
    probabilities: bool
    aoi: shapely.Geometry | None = None
    nodata_nan: bool = False
    """Hand the runtime NaN where the imagery has no data (the pixel model's filters then leave it out)."""
    context: int = 0
    """Pixels of imagery read around each window and handed to the runtime with it, whose output is cropped back:
    the pixel model's filters' reach, so a pixel's features are the same whichever window holds it (and windows need
    not overlap)."""

    @property
    def step(self) -> int:
        return self.window - self.overlap

    @property
    def window_rows(self) -> int:
        return max(1, math.ceil((self.height - self.overlap) / self.step))

    @property
    def window_cols(self) -> int:
        return max(1, math.ceil((self.width - self.overlap) / self.step))

    def taper(self) -> np.ndarray:
        """A window's pixel weights (window, window): 1 inside, linear over `overlap` px to (nearly) 0 at its edges."""
        i = np.arange(self.window) + 0.5
        ramp = np.minimum(1.0, np.minimum(i, self.window - i) / self.overlap) if self.overlap else np.ones(self.window)
        return np.outer(ramp, ramp).astype(np.float32)


@dataclass(frozen=True)
class Band:
    """Window rows [j0, j1): an engine task and a resume step."""

    index: int
    j0: int
    j1: int


@dataclass
class BandResult:
    """A band's finished rows (from `row`) and the weighted sums of the rows it shares with its neighbours."""

    index: int
    row: int
    classes: np.ndarray
    """(h, width) uint8 class ids, NODATA where not predicted."""
    probs: np.ndarray | None
    """(n_classes, h, width) uint8 scaled probabilities, with `probabilities`."""
    top: np.ndarray | None
    """(n_classes + 1, overlap, width) int32: weighted probability sums and the weight (fixed point), of the rows
    shared with the band above (None for the first band)."""
    bottom: np.ndarray | None
    top_valid: np.ndarray | None
    bottom_valid: np.ndarray | None
    windows: int
    skipped: int
    seconds_read: float
    seconds_infer: float


def pixel_grid(scene: Scene, res: float) -> tuple[CRS, Affine, int, int, bool]:
    """The map's grid for a bundle of ground resolution `res`: the imagery's own pixels when they are square, on a
    projected CRS and of that resolution; else `res` on the imagery's CRS (its UTM zone for degrees), warped."""
    if (not scene.crs.is_geographic and all(math.isclose(r, res, rel_tol=PIXEL_TOLERANCE) for r in scene.res)
            and scene.transform.b == 0 and scene.transform.d == 0):
        return scene.crs, scene.transform, scene.height, scene.width, True
    grid = make_grid([scene], (res, "m"), resolution=res)
    left, bottom, right, top = scene_footprint(scene, grid.crs).bounds
    x0, y0 = math.floor(left / res) * res, math.ceil(top / res) * res
    width, height = math.ceil((right - x0) / res - 1e-6), math.ceil((y0 - bottom) / res - 1e-6)
    direct = same_crs(grid.crs, scene.crs) and scene.transform == Affine(res, 0, x0, 0, -res, y0)
    return grid.crs, Affine(res, 0, x0, 0, -res, y0), height, width, direct


def reading(job: PixelJob) -> str:
    """How the imagery is read, for the log."""
    if job.direct:
        return f"reading {job.scene.res[0]:g} m imagery directly (the bundle's ground resolution)"
    unit = " degrees" if job.scene.crs.is_geographic else " m"
    return (f"warping imagery on the fly from {crs_name(job.scene.crs)} at {job.scene.res[0]:g}{unit} to "
            f"{crs_name(job.crs)} at {job.transform.a:g} m (the bundle's ground resolution), {job.resampling}")


def plan_bands(job: PixelJob) -> list[Band]:
    """Bands of about BAND_PX rows of whole window rows."""
    per_band = max(1, round(BAND_PX / job.step))
    return [Band(i, j0, min(j0 + per_band, job.window_rows))
            for i, j0 in enumerate(range(0, job.window_rows, per_band))]


@dataclass
class _Chunk:
    """A band's pixels over window columns [i0, i1), padded to whole windows (and `context` around), and the
    validity of the windows' own pixels."""

    i0: int
    i1: int
    pixels: np.ndarray
    valid: np.ndarray
    seconds: float


def _mirrored(start: int, length: int, size: int) -> np.ndarray:
    """Indices [start, start + length) folded back into [0, size) as a mirror (symmetric, edge pixel repeated)."""
    index = np.arange(start, start + length) % (2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)


def _read(job: PixelJob, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Map pixels [row, row + height) x [col, col + width); past the map's bottom and right edges the imagery is
    mirrored (so edge windows see plausible context, the same whichever chunk reads them) and not valid."""
    rows, cols = _mirrored(row, height, job.height), _mirrored(col, width, job.width)
    r0, c0 = int(rows.min()), int(cols.min())
    h, w = int(rows.max()) + 1 - r0, int(cols.max()) + 1 - c0
    scene = job.scene
    if job.direct:
        pixels, valid = scene.read(Window(c0, r0, w, h))  # a direct map's grid is the imagery's
    else:
        x, y = job.transform * (c0, r0)
        pixels, valid = scene.read_warped(job.crs, Affine(job.transform.a, 0, x, 0, job.transform.e, y), w, h,
                                          Resampling[job.resampling])
    if job.png:
        pixels = job.stretch.apply(pixels) if job.stretch else pixels.astype(np.uint8)
    if job.nodata_nan:
        pixels = np.where(valid, pixels, np.nan).astype(np.float32)
    if job.aoi is not None:
        x, y = job.transform * (c0, r0)
        valid &= ~geometry_mask([job.aoi], (h, w), Affine(job.transform.a, 0, x, 0, job.transform.e, y))
    inside = ((np.arange(row, row + height) >= 0) & (np.arange(row, row + height) < job.height))[:, None] & (
        (np.arange(col, col + width) >= 0) & (np.arange(col, col + width) < job.width))
    pick = np.ix_(rows - r0, cols - c0)
    return pixels[(slice(None), *pick)], valid[pick] & inside


def _load_chunk(job: PixelJob, band: Band, i0: int, i1: int) -> _Chunk:
    t0 = time.perf_counter()
    s, c = job.step, job.context
    pixels, valid = _read(job, band.j0 * s - c, i0 * s - c, (band.j1 - band.j0) * s + job.overlap + 2 * c,
                          (i1 - i0) * s + job.overlap + 2 * c)
    return _Chunk(i0, i1, pixels, valid[c:valid.shape[0] - c, c:valid.shape[1] - c], time.perf_counter() - t0)


def run_band(job: PixelJob, band: Band) -> BandResult:
    """One engine task: the band's windows, chunk by chunk, blended into finished rows and shared-row sums."""
    runtime = open_runtime(job.bundle, job.runtime, job.threads)
    use_threads(job.threads)
    s, o, win, c, ctx = job.step, job.overlap, job.window, job.n_classes, job.context
    top_row, height = band.j0 * s, (band.j1 - band.j0) * s + o
    first, last = band.j0 == 0, band.j1 == job.window_rows
    row0 = 0 if first else o  # finished rows of the band's footprint: [row0, row1)
    row1 = min(height if last else height - o, job.height - top_row)
    taper = torch.from_numpy(job.taper())
    weight = torch.round(taper * SUM_SCALE).to(torch.int32)
    per_chunk = max(1, round(CHUNK_PX / s))
    whole = job.batch_size // math.gcd(job.batch_size, band.j1 - band.j0)
    per_chunk = math.ceil(per_chunk / whole) * whole  # a chunk's windows fill whole batches
    spans = [(i, min(i + per_chunk, job.window_cols)) for i in range(0, job.window_cols, per_chunk)]
    classes = np.full((row1 - row0, job.width), NODATA, np.uint8)
    probs = np.full((c, row1 - row0, job.width), NODATA, np.uint8) if job.probabilities else None
    top = None if first else np.zeros((c + 1, o, job.width), np.int32)
    bottom = None if last else np.zeros((c + 1, o, job.width), np.int32)
    top_valid = None if first else np.zeros((o, job.width), bool)
    bottom_valid = None if last else np.zeros((o, job.width), bool)
    carry = None  # weighted sums of the `overlap` columns the previous chunk shares with this one
    windows = skipped = 0
    seconds_read = seconds_infer = 0.0
    with ThreadPoolExecutor(1) as reader:
        ahead = [reader.submit(_load_chunk, job, band, *span) for span in spans[:2]]
        for k in range(len(spans)):
            chunk = ahead.pop(0).result()
            if k + 2 < len(spans):
                ahead.append(reader.submit(_load_chunk, job, band, *spans[k + 2]))
            seconds_read += chunk.seconds
            t0 = time.perf_counter()
            sums = torch.zeros((c + 1, height, chunk.valid.shape[1]), dtype=torch.int32)
            if carry is not None:
                sums[:, :, :o] = carry
            spots = [(r * s, (i - chunk.i0) * s) for r in range(band.j1 - band.j0) for i in range(chunk.i0, chunk.i1)]
            spots_kept = [(y, x) for y, x in spots if chunk.valid[y:y + win, x:x + win].any()]
            skipped += len(spots) - len(spots_kept)
            windows += len(spots_kept)
            for b in range(0, len(spots_kept), job.batch_size):
                batch = spots_kept[b:b + job.batch_size]
                raw = np.stack([chunk.pixels[:, y:y + win + 2 * ctx, x:x + win + 2 * ctx] for y, x in batch]
                               ).astype(np.float32)
                p = torch.from_numpy(np.asarray(runtime.predict_proba(torch.from_numpy(raw)), np.float32))
                p = p[:, :, ctx:ctx + win, ctx:ctx + win]
                for (y, x), pw in zip(batch, p, strict=True):
                    sums[:c, y:y + win, x:x + win] += torch.round(pw * taper * SUM_SCALE).to(torch.int32)
                    sums[c, y:y + win, x:x + win] += weight
            done = chunk.valid.shape[1] if k == len(spans) - 1 else (chunk.i1 - chunk.i0) * s
            col0 = chunk.i0 * s
            done = min(done, job.width - col0)
            carry = sums[:, :, done:done + o].clone() if k < len(spans) - 1 else None
            finished = sums[:, :, :done].numpy()
            valid = chunk.valid[:, :done]
            cols = slice(col0, col0 + done)
            _finish(finished[:, row0:row1], valid[row0:row1], classes[:, cols],
                    None if probs is None else probs[:, :, cols])
            if top is not None:
                top[:, :, cols], top_valid[:, cols] = finished[:, :o], valid[:o]
            if bottom is not None:
                bottom[:, :, cols], bottom_valid[:, cols] = finished[:, height - o:], valid[height - o:]
            seconds_infer += time.perf_counter() - t0
    return BandResult(band.index, top_row + row0, classes, probs, top, bottom, top_valid, bottom_valid, windows,
                      skipped, seconds_read, seconds_infer)


def _finish(sums: np.ndarray, valid: np.ndarray, classes: np.ndarray, probs: np.ndarray | None) -> None:
    """Weighted sums (n_classes + 1, h, w; fixed point) into class ids (and scaled probabilities), in place; pixels
    with no window or no valid imagery become NODATA."""
    weight = sums[-1]
    known = valid & (weight > 0)
    classes[:] = np.where(known, sums[:-1].argmax(axis=0), NODATA)  # the weight divides every class alike
    if probs is not None:
        probs[:] = scale_probabilities(sums[:-1].astype(np.float32) / np.maximum(weight, 1).astype(np.float32), known)


def join_rows(above: np.ndarray, above_valid: np.ndarray, below: np.ndarray, below_valid: np.ndarray,
              probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows two bands share: their weighted sums added (into `above`, which is used up), then finished like
    any other rows."""
    sums = np.add(above, below, out=above)
    classes = np.empty(sums.shape[1:], np.uint8)
    probs = np.empty((sums.shape[0] - 1, *sums.shape[1:]), np.uint8) if probabilities else None
    _finish(sums, above_valid & below_valid, classes, probs)
    return classes, probs


def bundle_reads_png(bundle: Bundle) -> bool:
    """The bundle's chips were 8-bit PNGs: imagery is made 8-bit the same way."""
    return bundle.chip.get("format", "png" if bundle.chip.get("dtype") == "uint8" else "tif") == "png"


def chip_stretch(bundle: Bundle, scene: Scene) -> Stretch | None:
    """How a bundle of 8-bit (PNG) chips sees the scene: its percentiles stretched to 8 bits (None: already 8-bit,
    or chips that were not PNG)."""
    if not bundle_reads_png(bundle) or np.dtype(scene.dtype) == np.uint8:
        return None
    return scene_stretch(scene, tuple(bundle.chip.get("stretch_percentiles") or (2.0, 98.0)))
