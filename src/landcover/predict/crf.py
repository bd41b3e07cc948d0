"""Whole rasters through the dense CRF (`landcover.segment.crf`): per-class probabilities (a probability COG from
predict, or a hybrid's tile evidence) and the imagery into a refined class-map COG, block by block.

The CRF runs on a grid `downscale` times the map's resolution (the seeds' 0.25 by default; image averaged onto it,
probabilities averaged or, for tile evidence, taken nearest). That grid is cut into square blocks of `CRF_BLOCK_PX`
cells, each run with a margin of `settings.reach` cells of context on every side and only its core kept, so memory
is bounded and blocks do not show: a cell's result depends on its surroundings only within the kernels' reach. The
refined probabilities are upscaled back to the map's pixels (bilinear) and the class is their argmax. A row of blocks
is an engine task and a resume step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from scipy.ndimage import median_filter

from landcover.engine import use_threads
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene, open_raster, same_crs
from landcover.geo.stretch import Stretch
from landcover.maps.classmap import NODATA, PROB_SCALE, scale_probabilities
from landcover.predict.request import CRF_BLOCK_PX, check_crf
from landcover.segment.crf import CrfSettings, dense_crf
from landcover.segment.crfdefaults import CrfChoice, resolve_crf

EVIDENCE_STRIP = 1024
"""Rows of a probability raster read at once when its evidence is counted."""


@dataclass(frozen=True)
class CrfJob:
    """What a worker needs to refine rows of blocks (sent once per worker)."""

    probabilities: str
    """A raster of per-class probabilities: on the map's grid, or (tile evidence) a coarser tile map."""
    threshold: float | None
    """Tile evidence: cells whose top probability is >= this become their class with that confidence, the rest
    unknown. None: the probabilities are the unaries as they are."""
    scene: Scene
    stretch: Stretch | None
    settings: CrfSettings
    crs: CRS
    transform: Affine
    height: int
    width: int
    n_classes: int
    probabilities_out: bool
    block: int = CRF_BLOCK_PX
    aoi: shapely.Geometry | None = None
    """Pixels outside it are nodata."""
    evidence_resampling: str = "nearest"
    """How evidence reaches the CRF's grid: nearest for tile maps, average for scribbles (a cell holds the share of
    each class among its scribbled pixels)."""
    median: int = 0
    """A median filter of this size over each class's refined probabilities on the CRF's grid (0: none)."""
    threads: int | None = None
    """numba threads per worker (None: all cores, in-process): a pool's workers share the cores."""
    fixed: str | None = None
    """An evidence raster on the map's grid (`label`'s scribbles): its marked pixels keep their class in the map."""
    lattice: tuple[int, int] = (0, 0)
    """Cells of the CRF's grid (rows, columns) the first block starts before the map's corner: a tile of a tiled
    map has its blocks where the whole map's are."""

    @property
    def crf_transform(self) -> Affine:
        return self.transform * Affine.scale(1 / self.settings.downscale)

    @property
    def crf_height(self) -> int:
        return max(1, math.ceil(self.height * self.settings.downscale - 1e-9))

    @property
    def crf_width(self) -> int:
        return max(1, math.ceil(self.width * self.settings.downscale - 1e-9))

    @property
    def margin(self) -> int:
        return self.settings.reach

    @property
    def block_rows(self) -> int:
        return math.ceil((self.crf_height + self.lattice[0]) / self.block)

    @property
    def block_cols(self) -> int:
        return math.ceil((self.crf_width + self.lattice[1]) / self.block)

    def block_span(self, index: int, axis: int) -> tuple[int, int]:
        """The CRF cells [start, end) of block `index` along rows (axis 0) or columns (1)."""
        start, size = index * self.block - self.lattice[axis], (self.crf_height, self.crf_width)[axis]
        return max(0, start), min(size, start + self.block)

    def map_rows(self, index: int) -> tuple[int, int]:
        """The map rows [y0, y1) whose centres fall in block row `index` of the CRF's grid."""
        r0, r1 = self.block_span(index, 0)
        return self._map_span(r0, self.height), self._map_span(r1, self.height) if r1 < self.crf_height else self.height

    def map_cols(self, index: int) -> tuple[int, int]:
        c0, c1 = self.block_span(index, 1)
        return self._map_span(c0, self.width), self._map_span(c1, self.width) if c1 < self.crf_width else self.width

    def _map_span(self, cell: int, size: int) -> int:
        return min(size, max(0, math.ceil(cell / self.settings.downscale - 0.5 - 1e-9)))


@dataclass
class CrfRows:
    """A row of blocks refined: map rows from `row`."""

    index: int
    row: int
    classes: np.ndarray
    probs: np.ndarray | None
    blocks: int
    seconds: float


def probability_scale(src: rasterio.DatasetReader) -> float:
    """What turns stored values into probabilities: 1/254 for landcover's uint8 probability COGs, 1 for floats."""
    if np.dtype(src.dtypes[0]).kind == "f":
        return 1.0
    if src.dtypes[0] == "uint8":
        return 1.0 / PROB_SCALE
    raise LandcoverError(f"probabilities must be uint8 (landcover's p * {PROB_SCALE}) or floats in [0, 1], not "
                         f"{src.dtypes[0]}", src.name)


def crf_for(settings: CrfSettings | CrfChoice | None, crs: CRS, transform: Affine) -> CrfSettings:
    """The CRF's settings on a grid (its CRS and transform): given ones as they are, a choice resolved for the
    grid's pixel size (`landcover.segment.crfdefaults`), and checked."""
    resolved = resolve_crf(settings, abs(transform.a), crs.is_geographic)
    check_crf(resolved)
    return resolved


def missing_evidence(path: str) -> tuple[int, int]:
    """(cells with data, of which hold no probabilities: NaN in a band, or all zero) of a probability raster, read
    in strips: what `refine_raster` says before the CRF, and refuses when nothing is left."""
    cells = missing = 0
    with open_raster(path) as src:
        for row in range(0, src.height, EVIDENCE_STRIP):
            window = Window(0, row, src.width, min(EVIDENCE_STRIP, src.height - row))
            p = src.read(window=window).astype(np.float32)
            data = src.dataset_mask(window=window) > 0
            none = ~np.isfinite(p).all(axis=0) | (np.nan_to_num(p).sum(axis=0) <= 0)
            cells += int(data.sum())
            missing += int((data & none).sum())
    return cells, missing


def run_rows(job: CrfJob, index: int) -> CrfRows:
    """One engine task: block row `index`, every block with its margin through the CRF, cores upscaled to the map."""
    started = time.perf_counter()
    use_threads(job.threads)
    y0, y1 = job.map_rows(index)
    classes = np.full((y1 - y0, job.width), NODATA, np.uint8)
    probs = np.full((job.n_classes, y1 - y0, job.width), NODATA, np.uint8) if job.probabilities_out else None
    r0, r1 = job.block_span(index, 0)
    m = job.margin
    for j in range(job.block_cols):
        c0, c1 = job.block_span(j, 1)
        top, left = max(0, r0 - m), max(0, c0 - m)
        bottom, right = min(job.crf_height, r1 + m), min(job.crf_width, c1 + m)
        unary, image, valid = _read_block(job, top, left, bottom - top, right - left)
        if not valid.any():
            continue
        q = dense_crf(unary, image, job.settings)
        if job.median > 1:
            q = median_filter(q, size=(1, job.median, job.median), mode="nearest")
        x0, x1 = job.map_cols(j)
        refined = _to_map(job, q, top, left, y0, y1, x0, x1)
        known = _to_map(job, valid[None].astype(np.float32), top, left, y0, y1, x0, x1, nearest=True)[0] > 0
        if job.aoi is not None:
            corner = job.transform * Affine.translation(x0, y0)
            known &= ~geometry_mask([job.aoi], (y1 - y0, x1 - x0), corner)
        classes[:, x0:x1] = np.where(known, refined.argmax(axis=0), NODATA)
        if job.fixed is not None:  # what a person drew stays what they drew
            with rasterio.open(job.fixed) as src:
                marks = src.read(window=Window(x0, y0, x1 - x0, y1 - y0))
            classes[:, x0:x1] = np.where(marks[0] != NODATA, marks.argmax(axis=0), classes[:, x0:x1])
        if probs is not None:
            probs[:, :, x0:x1] = scale_probabilities(refined, known)
    return CrfRows(index, y0, classes, probs, job.block_cols, time.perf_counter() - started)


def _read_block(job: CrfJob, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """Unary probabilities (n, h, w), the image in display levels (bands, h, w) and validity, on the CRF's grid."""
    transform = job.crf_transform * Affine.translation(col, row)
    scene = job.scene
    if job.settings.downscale == 1 and same_crs(scene.crs, job.crs) and scene.transform == job.transform:
        pixels, valid = scene.read(Window(col, row, width, height))
    else:
        pixels, valid = scene.read_warped(job.crs, transform, width, height,
                                          Resampling.average if job.settings.downscale < 1 else Resampling.bilinear)
    image = job.stretch.apply(pixels) if job.stretch else pixels.astype(np.uint8)
    tiles = job.threshold is not None
    with open_raster(job.probabilities) as src, WarpedVRT(
            src, crs=job.crs, transform=transform, width=width, height=height,
            resampling=(Resampling[job.evidence_resampling] if tiles else
                        Resampling.nearest if job.settings.downscale == 1 else Resampling.average)) as vrt:
        stored = vrt.read()
        known = vrt.dataset_mask() > 0
        p = stored.astype(np.float32) * probability_scale(src)
    n = job.n_classes
    uniform = np.float32(1 / n)
    if tiles:
        confidence = p.max(axis=0)
        known &= confidence >= job.threshold
        labels = p.argmax(axis=0)
        rest = (1 - confidence) / max(n - 1, 1)
        unary = np.where(np.arange(n)[:, None, None] == labels, confidence, rest)
        unary = np.where(known, unary, uniform).astype(np.float32)
    else:
        valid &= known
        known &= np.isfinite(p).all(axis=0) & (np.nan_to_num(p).sum(axis=0) > 0)  # NaN or all zero: no evidence
        unary = np.where(known, np.nan_to_num(p), uniform).astype(np.float32)
    return unary, image, valid


def _to_map(job: CrfJob, values: np.ndarray, top: int, left: int, y0: int, y1: int, x0: int, x1: int,
            nearest: bool = False) -> np.ndarray:
    """(c, h, w) values on the CRF's grid (block origin top, left) at map pixels [y0, y1) x [x0, x1): the value at
    each map pixel's centre, bilinear (or nearest) between CRF cell centres."""
    ds = job.settings.downscale
    if ds == 1:
        return values[:, y0 - top:y1 - top, x0 - left:x1 - left]
    rows = (np.arange(y0, y1) + 0.5) * ds - 0.5 - top
    cols = (np.arange(x0, x1) + 0.5) * ds - 0.5 - left
    out = _interpolate(values, rows, axis=1, nearest=nearest)
    return _interpolate(out, cols, axis=2, nearest=nearest)


def _interpolate(values: np.ndarray, at: np.ndarray, axis: int, nearest: bool) -> np.ndarray:
    size = values.shape[axis]
    if nearest:
        return np.take(values, np.clip(np.rint(at).astype(int), 0, size - 1), axis=axis)
    at = np.clip(at, 0, size - 1)
    i0 = np.minimum(np.floor(at).astype(int), max(size - 2, 0))
    i1 = np.minimum(i0 + 1, size - 1)
    f = (at - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    f = f.reshape(shape)
    return np.take(values, i0, axis=axis) * (1 - f) + np.take(values, i1, axis=axis) * f


def check_same_grid(probabilities: str, scene: Scene) -> tuple[CRS, Affine, int, int]:
    """The probabilities' grid, refused unless it is the imagery's (same CRS, pixels and origin)."""
    with open_raster(probabilities) as src:
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
    if crs is None:
        raise LandcoverError("has no CRS", probabilities)
    tol = 1e-3 * max(abs(transform.a), 1e-9)  # a thousandth of a pixel
    if (not same_crs(crs, scene.crs) or (height, width) != (scene.height, scene.width)
            or any(abs(a - b) > tol for a, b in zip(transform[:6], scene.transform[:6], strict=True))):
        raise LandcoverError(f"the probabilities' grid ({width} x {height} px of {transform.a:g}, origin "
                             f"{transform.c:.1f}, {transform.f:.1f}) is not the imagery's ({scene.width} x "
                             f"{scene.height} px of {scene.transform.a:g}, origin {scene.transform.c:.1f}, "
                             f"{scene.transform.f:.1f} in {scene.paths[0]}): refine a map with the imagery it was "
                             "predicted from", probabilities)
    return crs, transform, height, width

