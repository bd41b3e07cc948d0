"""Whole rasters into class maps: the bundle's tiles on the imagery, overlap averaging, smoothing, COG outputs."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine

from landcover.atomic import check_output, replacing, write_text
from landcover.bundle import Bundle, load_bundle
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.geo.grid import Grid, make_grid, on_lattice, parse_length, scene_footprint, to_pixels
from landcover.geo.raster import Scene, absolute, crs_name
from landcover.geo.stretch import Stretch
from landcover.locks import output_lock
from landcover.maps.classmap import NODATA, ClassMap, write_class_map, write_probabilities
from landcover.predict.bands import bundle_reads_png, chip_stretch
from landcover.predict.blocks import (
    Block,
    BlockResult,
    RasterJob,
    load_result,
    plan_blocks,
    run_blocks,
    save_result,
)
from landcover.predict.outputs import (
    RasterResult,
    check_map_name,
    check_truth,
    fingerprint,
    kept_only_when_started,
    open_scene,
    output_files,
    prepare_outputs,
)
from landcover.predict.pixels import check_pixel_options, predict_pixels
from landcover.predict.request import MapRequest
from landcover.predict.runtime import choose_runtime
from landcover.progress import progress_bar

BATCH_TILES = 64
"""Default windows per batch for classifiers."""
MIN_CELL_VALID = 0.5
"""A map cell is nodata when less than this share of its imagery pixels is valid."""


def plurality_filter(classes: np.ndarray, n_classes: int, size: int = 3) -> np.ndarray:
    """Each cell becomes the most common class in its size x size neighbourhood (nodata ignored and kept;
    ties keep the cell's own class when it is among the most common, else the lowest class id)."""
    if size <= 1:
        return classes.copy()
    h, w = classes.shape
    r = size // 2
    padded = np.zeros((n_classes, h + 2 * r, w + 2 * r), np.int16)
    for c in range(n_classes):
        padded[c, r:r + h, r:r + w] = classes == c
    votes = np.zeros((n_classes, h, w), np.int16)
    for dy in range(size):
        for dx in range(size):
            votes += padded[:, dy:dy + h, dx:dx + w]
    best = votes.max(axis=0)
    out = votes.argmax(axis=0).astype(np.uint8)
    own = np.where(classes < n_classes, classes, 0).astype(np.intp)
    keep_own = np.take_along_axis(votes, own[None], axis=0)[0] == best
    out = np.where(keep_own, own, out).astype(np.uint8)
    out[classes >= n_classes] = NODATA
    return out


def predict_raster(bundle_path: str | Path, images: list[str | Path], out: str | Path,
                   request: MapRequest | None = None, **options: Any) -> RasterResult:
    """Predict a whole raster with a model bundle into a class-map COG at `out` (.tif). The map's options are a
    `MapRequest` (`landcover.predict.request`: its fields are also accepted as keywords). A classifier's map has one
    cell per `stride`; a segmentation bundle's has a class per pixel (`landcover.predict.pixels`: windows of
    `window` px, default 512, overlapping by `overlap`, default a quarter window, blended; `stride`, `smooth` and
    `max_nodata` are for tile maps). `decimate=N` classifies only every N-th tile in each direction (the rest
    nodata), as the hybrid dense map (`landcover.predict.dense`) asks.

    `images` are the scene's rasters, stacked as bands (the bands the chips were cut from are picked, `bands`
    overrides). Beside the map: <out>.tiles.parquet (one row per window), <out>.json (settings, class areas,
    timing); `smooth=3` adds <out>.smooth3.tif, `probabilities=True` <out>.probs.tif. `aoi` limits the map to
    polygons; `truth` with `truth_scheme` scores it against a land-cover raster. `runtime` 'auto' (onnxruntime
    when the bundle holds a fresh model.onnx, else torch), 'torch' or 'onnx'. `engine` is 'local',
    'process:N' or 'ray[:N]'. A killed run, called again with the same arguments, resumes. A map with no
    predicted cell (all imagery nodata) is an error unless `allow_empty`.

        result = predict_raster("runs/lite0-lr/bundle", ["b2.tif", "b3.tif", "b4.tif", "b5.tif"], "maps/zion.tif",
                                stride="240m", smooth=3)
    """
    started = time.perf_counter()
    r = MapRequest.of(request, options)
    engine = r.runner
    out = Path(out)
    images = [str(p) for p in images]
    check_map_name(out)
    check_output(out, "file")
    check_truth(r.truth, r.truth_scheme, r.resampling)
    bundle = load_bundle(bundle_path)
    runtime, why = choose_runtime(bundle, r.runtime)
    if bundle.per_pixel:
        check_pixel_options(r)
        return predict_pixels(bundle, images, out, replace(r, runtime=runtime, engine=engine), why)
    bundle.require_classifier("prediction")
    if r.window or r.overlap:
        raise LandcoverError("--window and --overlap are for segmentation bundles: a tile classifier's windows are "
                             "its tiles (--stride overlaps them)")
    log, every = r.log, r.decimate
    picks, scene = open_scene(bundle, images, r.bands, r.nodata)
    grid = tile_grid(bundle, scene, r.stride)
    job = _job(bundle, scene, grid, runtime, r.resampling, r.batch_size or BATCH_TILES, r.max_nodata, engine,
               r.stretch)
    reading = _reading(job)
    cell_in_aoi = _aoi_cells(job, r.aoi)
    if every > 1:
        rr, cc = np.mgrid[0:job.rows, 0:job.cols]
        cell_in_aoi &= (rr % every == 0) & (cc % every == 0)
    blocks = plan_blocks(job, cell_in_aoi, r.block_windows)
    log(f"{reading}; {job.rows} x {job.cols} cells of {grid.step:g} m, {sum(int(b.keep.sum()) for b in blocks)} "
        f"windows of {grid.tile} px in {len(blocks)} blocks")
    log(f"runtime: {runtime} ({why})")
    files = output_files(out, r.smooth, r.probabilities)
    stamp = fingerprint([job.bundle], images, {
        "bands": picks, "nodata": r.nodata, "grid": job.grid.to_dict(), "aoi": str(r.aoi), "max_nodata": job.max_nodata,
        "runtime": job.runtime, "resampling": job.resampling, "block_windows": r.block_windows,
        **({"every": every} if every > 1 else {})})
    state = out.with_name(f".{out.name}.landcover-state")
    with output_lock(out), kept_only_when_started(state):
        prepare_outputs(out, files, state, stamp, r.overwrite)
        results: dict[str, BlockResult] = {}
        for block in blocks:
            record = state / f"{block.id}.npz"
            if record.exists():
                results[block.id] = load_result(record)
        resumed = len(results)
        todo = [b for b in blocks if b.id not in results]
        total = sum(int(b.keep.sum()) for b in blocks)
        with progress_bar(total=total, initial=total - sum(int(b.keep.sum()) for b in todo), unit="tile",
                          desc="predict", enabled=r.progress, leave=False) as bar:
            for result in run_blocks(job, bundle, todo, engine):
                save_result(state / f"{result.id}.npz", result)
                results[result.id] = result
                bar.update(len(result.rows))
                if r.on_progress:
                    r.on_progress(sum(len(x.rows) for x in results.values()), total)
        classes, probs, valid = _assemble(job, blocks, results, cell_in_aoi, bundle.n_classes)
        if not valid.any() and not r.allow_empty:
            shutil.rmtree(state)
            raise LandcoverError(f"no map cell could be predicted: all {total} windows were skipped (more than "
                                 f"{r.max_nodata:g} of their pixels nodata, --max-nodata); --allow-empty writes the "
                                 "empty map instead", images[0])
        tags = {"LANDCOVER_BUNDLE": str(Path(bundle_path).resolve()),
                "LANDCOVER_IMAGES": json.dumps([absolute(p) for p in images]),
                "LANDCOVER_BANDS": json.dumps(picks), "LANDCOVER_STRIDE_M": f"{grid.step:g}",
                "LANDCOVER_TILE_M": f"{grid.tile * grid.res:g}"}
        if r.probabilities:
            tags["LANDCOVER_PROBABILITIES"] = files["probabilities"].name
        transform = Affine(grid.step, 0, grid.x0, 0, -grid.step, grid.y0)
        write_class_map(ClassMap(classes, transform, grid.crs, bundle.classes, tags), files["map"])
        if r.smooth:
            smoothed = plurality_filter(classes, bundle.n_classes, r.smooth)
            write_class_map(ClassMap(smoothed, transform, grid.crs, bundle.classes,
                                     {**tags, "LANDCOVER_SMOOTH": str(r.smooth)}), files["smoothed"])
        if r.probabilities:
            write_probabilities(files["probabilities"], probs, valid, transform, grid.crs, bundle.classes, tags)
        _write_tiles(files["tiles"], job, blocks, results, bundle)
        scores = {}
        if r.truth:
            from landcover.maps.figures import compare_to_truth

            scores["map"] = compare_to_truth(files["map"], r.truth, r.truth_scheme)
            if r.smooth:
                scores[f"smoothed {r.smooth}x{r.smooth}"] = compare_to_truth(files["smoothed"], r.truth,
                                                                             r.truth_scheme)
        cell_ha = grid.step ** 2 / 1e4
        counts = {c["name"]: int((classes == c["id"]).sum()) for c in bundle.classes}
        counts["nodata"] = int((classes == NODATA).sum())
        result = RasterResult(
            out, files, counts, {n: v * cell_ha for n, v in counts.items() if n != "nodata"},
            windows=sum(len(results[b.id].rows) for b in todo),
            skipped=total - sum(len(results[b.id].rows) for b in blocks), resumed=resumed,
            seconds=time.perf_counter() - started,
            seconds_read=sum(results[b.id].seconds_read for b in todo),
            seconds_infer=sum(results[b.id].seconds_infer for b in todo), reading=reading, scores=scores,
            runtime=runtime)
        summary = {"bundle": tags["LANDCOVER_BUNDLE"], "images": json.loads(tags["LANDCOVER_IMAGES"]), "bands": picks,
                   "grid": grid.to_dict(), "reading": reading, "cells": [job.rows, job.cols], "stride_m": grid.step,
                   "max_nodata": r.max_nodata, "aoi": str(r.aoi) if r.aoi else None, "smooth": r.smooth,
                   "runtime": runtime,
                   "engine": engine.name, "workers": engine.workers, "counts": counts, "hectares": result.hectares,
                   "windows": result.windows, "skipped": result.skipped, "resumed_blocks": resumed,
                   "seconds": round(result.seconds, 3), "tiles_per_second": round(result.tiles_per_second, 2),
                   "scores": scores, "files": {k: v.name for k, v in files.items()}}
        write_text(files["summary"], json.dumps(summary, indent=2, default=str))
        shutil.rmtree(state, ignore_errors=True)
        return result


def tile_grid(bundle: Bundle, scene: Scene, stride: str | None) -> Grid:
    """The bundle's tiles (size in px at its ground resolution, every stride) on the imagery's CRS, or, for
    imagery in degrees, on the UTM zone of its centre (as `landcover chips` cuts it)."""
    tile, res = int(bundle.chip["size_px"]), float(bundle.chip["res"])
    step = to_pixels(parse_length(stride, "stride"), res, "stride") if stride else tile
    if not 1 <= step <= tile or tile % step:
        raise LandcoverError(f"--stride {stride} must divide the tile ({tile} px of {res:g} m = {tile * res:g} m) "
                             "into whole steps")
    unit, size = ("m", res) if scene.crs.is_geographic else ("px", 1)
    return make_grid([scene], (tile * size, unit), overlap=((tile - step) * size, unit), resolution=res)


def _reading(job: RasterJob) -> str:
    """How the imagery is read, for the log: plain windows, or warped onto the bundle's grid."""
    scene, grid = job.scene, job.grid
    if job.direct:
        return f"reading {scene.res[0]:g} m imagery directly (the bundle's ground resolution)"
    unit = " degrees" if scene.crs.is_geographic else " m"
    return (f"warping imagery on the fly from {crs_name(scene.crs)} at {scene.res[0]:g}{unit} to "
            f"{crs_name(grid.crs)} at {grid.res:g} m (the bundle's ground resolution), {job.resampling}")


def map_cells(scene: Scene, grid: Grid) -> tuple[int, int]:
    """The tile map's cells (one per stride) down and across the scene."""
    _, bottom, right, _ = scene_footprint(scene, grid.crs).bounds
    eps = 1e-6
    return math.floor((grid.y0 - bottom) / grid.step + eps), math.floor((right - grid.x0) / grid.step + eps)


def _job(bundle: Bundle, scene: Scene, grid: Grid, runtime: str, resampling: str, batch_size: int,
         max_nodata: float, engine: Engine, stretch: Stretch | None = None) -> RasterJob:
    rows, cols = map_cells(scene, grid)
    png = bundle_reads_png(bundle)
    stretch = (stretch or chip_stretch(bundle, scene)) if png else None
    threads = engine.task_threads
    return RasterJob(str(Path(bundle.path).resolve()), runtime, scene, png, stretch, grid, on_lattice(scene, grid),
                     resampling, rows, cols, batch_size, max_nodata, threads)


def _aoi_cells(job: RasterJob, aoi: str | Path | None) -> np.ndarray:
    """Cells whose centre lies inside the AOI (all cells without one)."""
    inside = np.ones((job.rows, job.cols), bool)
    if aoi is None:
        return inside
    from landcover.chips.cut import read_aoi

    geom = read_aoi(aoi, job.grid.crs)
    if not geom.intersects(scene_footprint(job.scene, job.grid.crs)):
        raise LandcoverError(f"the imagery ({job.scene.paths[0]}) does not overlap the AOI", aoi)
    rr, cc = np.mgrid[0:job.rows, 0:job.cols]
    xs = job.grid.x0 + (cc + 0.5) * job.grid.step
    ys = job.grid.y0 - (rr + 0.5) * job.grid.step
    inside = shapely.contains_xy(geom, xs, ys)
    if not inside.any():
        raise LandcoverError("no map cell centre lies inside the AOI", aoi)
    return inside


def _assemble(job: RasterJob, blocks: list[Block], results: dict[str, BlockResult], cell_in_aoi: np.ndarray,
              n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell classes, mean probabilities of the windows covering each cell, and cell validity (block order)."""
    k = job.k
    sums = np.zeros((n_classes, job.rows, job.cols), np.float64)
    hits = np.zeros((job.rows, job.cols), np.int32)
    cell_valid = np.zeros((job.rows, job.cols), np.float32)
    for block in blocks:
        nr, nc = results[block.id].cell_valid.shape
        cell_valid[block.r0:block.r0 + nr, block.c0:block.c0 + nc] = results[block.id].cell_valid
    rows = np.concatenate([results[b.id].rows for b in blocks]).astype(np.intp)
    cols = np.concatenate([results[b.id].cols for b in blocks]).astype(np.intp)
    window_probs = np.concatenate([results[b.id].probs.reshape(-1, n_classes) for b in blocks])
    size = job.rows * job.cols
    for dy in range(k):  # each window adds its probabilities to the k x k cells it covers
        for dx in range(k):
            cells = (rows + dy) * job.cols + cols + dx
            hits += np.bincount(cells, minlength=size).reshape(hits.shape).astype(np.int32)
            for c in range(n_classes):
                sums[c] += np.bincount(cells, weights=window_probs[:, c], minlength=size).reshape(hits.shape)
    valid = (hits > 0) & (cell_valid >= MIN_CELL_VALID) & cell_in_aoi
    probs = (sums / np.maximum(hits, 1)).astype(np.float32)
    classes = probs.argmax(axis=0).astype(np.uint8)
    classes[~valid] = NODATA
    return classes, probs, valid


def _write_tiles(path: Path, job: RasterJob, blocks: list[Block], results: dict[str, BlockResult],
                 bundle: Bundle) -> None:
    """tiles.parquet: one row per predicted window: footprint, class, confidence, probability per class."""
    import geopandas as gpd
    import pandas as pd

    rows = np.concatenate([results[b.id].rows for b in blocks]).astype(int)
    cols = np.concatenate([results[b.id].cols for b in blocks]).astype(int)
    probs = np.concatenate([results[b.id].probs.reshape(-1, bundle.n_classes) for b in blocks])
    xs, ys = job.grid.origin(cols, rows)
    names = [c["name"] for c in bundle.classes]
    ids = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    frame = pd.DataFrame({"tile_id": [job.grid.key(x, y) for x, y in zip(xs, ys, strict=True)],
                          "window_row": rows, "window_col": cols, "class_id": ids.astype(np.int16),
                          "class": [names[i] for i in ids], "confidence": probs.max(axis=1) if len(probs) else []})
    for i, name in enumerate(names):
        frame[f"p_{name}"] = probs[:, i]
    tiles = gpd.GeoDataFrame(frame, geometry=job.grid.chip_boxes(xs, ys), crs=job.grid.crs.to_wkt())
    with replacing(path) as tmp:
        tiles.to_parquet(tmp)
