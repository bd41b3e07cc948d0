"""Blocks of prediction windows: planned over the map's cells, read once (direct or warped) as the chips were
made, inferred in batches on a runtime, and recorded so a killed run resumes."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover.atomic import replacing
from landcover.bundle import Bundle
from landcover.engine import Engine, use_threads
from landcover.errors import LandcoverError
from landcover.geo.grid import Grid
from landcover.geo.raster import Scene
from landcover.geo.stretch import Stretch
from landcover.predict.runtime import Runtime, load_runtime, open_runtime


@dataclass(frozen=True)
class Block:
    """A rectangle of windows [r0, r1) x [c0, c1) read at once; `keep` marks windows inside the AOI."""

    id: str
    r0: int
    r1: int
    c0: int
    c1: int
    keep: np.ndarray = field(compare=False, repr=False)


@dataclass(frozen=True)
class RasterJob:
    """Everything a worker needs to turn blocks into probabilities (sent once per worker)."""

    bundle: str
    runtime: str
    scene: Scene
    png: bool
    """The bundle's chips were 8-bit PNGs: imagery is made 8-bit the same way (stretch, or as is)."""
    stretch: Stretch | None
    grid: Grid
    direct: bool
    resampling: str
    rows: int
    cols: int
    """Map cells (one per stride) down and across; windows are k x k cells, k = tile / stride."""
    batch_size: int
    max_nodata: float
    threads: int | None

    @property
    def k(self) -> int:
        """Cells a window spans per side."""
        return self.grid.tile // self.grid.stride


@dataclass
class BlockResult:
    """A block's predicted windows (absolute window row, col), their probabilities and its cells' validity."""

    id: str
    rows: np.ndarray
    cols: np.ndarray
    probs: np.ndarray
    cell_valid: np.ndarray
    """Valid share of each cell the block reads: cells [r0, r1 + k - 1) x [c0, c1 + k - 1)."""
    seconds_read: float = 0.0
    seconds_infer: float = 0.0


def window_sums(cells: np.ndarray, k: int) -> np.ndarray:
    """Sum over every k x k window of a cell array: (rows - k + 1, cols - k + 1)."""
    if k == 1:
        return cells.astype(np.float64)
    return np.lib.stride_tricks.sliding_window_view(cells.astype(np.float64), (k, k)).sum(axis=(-1, -2))


def plan_blocks(job: RasterJob, cell_in_aoi: np.ndarray, block_windows: int) -> list[Block]:
    """Square blocks of about block_windows windows; blocks with no window in the AOI are left out."""
    k = job.k
    nwr, nwc = job.rows - k + 1, job.cols - k + 1
    if nwr < 1 or nwc < 1:
        raise LandcoverError(f"the imagery is smaller than one {job.grid.tile * job.grid.res:g} m tile",
                             job.scene.paths[0])
    keep = window_sums(cell_in_aoi, k) > 0
    side = max(1, round(math.sqrt(block_windows)))
    blocks = []
    for r0 in range(0, nwr, side):
        for c0 in range(0, nwc, side):
            r1, c1 = min(r0 + side, nwr), min(c0 + side, nwc)
            sub = keep[r0:r1, c0:c1]
            if sub.any():
                blocks.append(Block(f"b{r0:06d}-{c0:06d}", r0, r1, c0, c1, sub.copy()))
    return blocks


@dataclass
class LoadedBlock:
    """A block's pixels as the chips were made, its cells' validity and the windows to predict."""

    block: Block
    pixels: np.ndarray
    cell_valid: np.ndarray
    windows: np.ndarray
    """(n, 2) window row, col (relative to the block) to predict."""
    seconds: float


def load_block(job: RasterJob, block: Block) -> LoadedBlock:
    """Read (or warp) the block's pixels once, make them what the chips were, and pick the windows to predict."""
    t0 = time.perf_counter()
    grid, s, k = job.grid, job.grid.stride, job.k
    nr, nc = block.r1 - block.r0 + k - 1, block.c1 - block.c0 + k - 1
    width, height = nc * s, nr * s
    x, y = grid.origin(block.c0, block.r0)
    scene = job.scene
    if job.direct:
        col = round((x - scene.transform.c) / scene.transform.a)
        row = round((y - scene.transform.f) / scene.transform.e)
        pixels, valid = scene.read(Window(col, row, width, height))
    else:
        pixels, valid = scene.read_warped(grid.crs, Affine(grid.res, 0, x, 0, -grid.res, y), width, height,
                                          Resampling[job.resampling])
    if job.png:
        pixels = job.stretch.apply(pixels) if job.stretch else pixels.astype(np.uint8)
    cell_valid = valid.reshape(nr, s, nc, s).mean(axis=(1, 3)).astype(np.float32)
    window_valid = window_sums(cell_valid, k) / (k * k)
    wanted = block.keep & (window_valid >= 1 - job.max_nodata - 1e-9)
    return LoadedBlock(block, pixels, cell_valid, np.argwhere(wanted), time.perf_counter() - t0)


def infer_block(job: RasterJob, loaded: LoadedBlock, runtime: Runtime | None = None) -> BlockResult:
    """Probabilities for the block's windows, in batches (by default on the worker's cached runtime)."""
    t0 = time.perf_counter()
    runtime = runtime or open_runtime(job.bundle, job.runtime, job.threads)
    use_threads(job.threads)
    s, t = job.grid.stride, job.grid.tile
    windows = loaded.windows
    probs = []
    for i in range(0, len(windows), job.batch_size):
        batch = np.stack([loaded.pixels[:, r * s:r * s + t, c * s:c * s + t]
                          for r, c in windows[i:i + job.batch_size]])
        probs.append(np.asarray(runtime.predict_proba(torch.from_numpy(batch.astype(np.float32))), np.float32))
    block = loaded.block
    return BlockResult(block.id, windows[:, 0] + block.r0, windows[:, 1] + block.c0,
                       np.concatenate(probs) if probs else np.zeros((0, 0), np.float32), loaded.cell_valid,
                       loaded.seconds, time.perf_counter() - t0)


def run_block(job: RasterJob, block: Block) -> BlockResult:
    """One engine task: read a block and predict its windows (the model loaded once per worker)."""
    return infer_block(job, load_block(job, block))


def run_blocks(job: RasterJob, bundle: Bundle, blocks: list[Block], engine: Engine):
    """Results block by block; in-process, the next blocks are read while this one is inferred."""
    if engine.name != "local" and not (engine.name == "process" and engine.workers == 1):
        yield from engine.map(run_block, job, blocks, spawn=True)
        return
    runtime = load_runtime(bundle, job.runtime)
    with ThreadPoolExecutor(1) as reader:
        ahead = [reader.submit(load_block, job, b) for b in blocks[:2]]
        for i in range(len(blocks)):
            loaded = ahead.pop(0).result()
            if i + 2 < len(blocks):
                ahead.append(reader.submit(load_block, job, blocks[i + 2]))
            yield infer_block(job, loaded, runtime)


def save_result(path: Path, result: BlockResult) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, rows=result.rows, cols=result.cols, probs=result.probs, cell_valid=result.cell_valid)


def load_result(path: Path) -> BlockResult:
    with np.load(path) as data:
        return BlockResult(path.stem, data["rows"], data["cols"], data["probs"], data["cell_valid"])
