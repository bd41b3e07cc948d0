"""Whole rasters through a segmentation bundle into per-pixel class-map COGs (see `landcover.predict.bands` for
how windows are blended and banded). `predict_raster` calls it for segmentation bundles."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from landcover.atomic import replacing, write_text
from landcover.bundle import Bundle
from landcover.engine import Engine, in_order
from landcover.errors import LandcoverError
from landcover.geo.grid import parse_length, scene_footprint, to_pixels
from landcover.geo.raster import Scene, absolute
from landcover.locks import output_lock
from landcover.maps.classmap import NODATA, finish_draft, start_draft, write_rows
from landcover.models.segmenters import STRIDE
from landcover.predict.bands import (
    WINDOW_PX,
    BandResult,
    PixelJob,
    bundle_reads_png,
    chip_stretch,
    join_rows,
    pixel_grid,
    plan_bands,
    reading,
    run_band,
)
from landcover.predict.outputs import (
    RasterResult,
    fingerprint,
    kept_only_when_started,
    open_scene,
    output_files,
    prepare_outputs,
)
from landcover.predict.request import MapRequest
from landcover.progress import progress_bar

PIXEL_MODEL_WINDOW_PX = 1024
"""The pixel model's default window: its features take 4 bytes x ~100 per pixel, 0.4 GB for a 1024 px window."""
MIN_WINDOW_PX = 256
"""The smallest window the pixel model's sizing picks (smaller ones read more context and make more calls)."""
BATCH_PIXELS = 8 * 256 * 256
"""Default pixels per batch: 2 windows of 512 px (about as many pixels as 500 classification tiles of 32)."""


def predict_pixels(bundle: Bundle, images: list[str], out: Path, request: MapRequest, why: str = "") -> RasterResult:
    """A class for every pixel of a raster from a loaded segmentation bundle (`predict_raster` checks the request,
    loads the bundle and picks the runtime, then calls this). Outputs: `out` (class-map COG at the imagery's grid,
    or the bundle's resolution warped), <out>.json, with `probabilities` <out>.probs.tif. The request's `window`
    (default 512 px) and `overlap` (default a quarter window) in px or m; `batch_size` in windows (default as many
    as hold 8 x 256² pixels)."""
    started = time.perf_counter()
    r = request
    engine, log = r.runner, r.log
    picks, scene = open_scene(bundle, images, r.bands, r.nodata)
    job = _job(bundle, scene, r, engine)
    plan = plan_bands(job)
    log(f"{reading(job)}; {job.height} x {job.width} px map, {job.window_rows * job.window_cols} windows of "
        f"{job.window} px overlapping by {job.overlap} px, in {len(plan)} bands")
    log(f"runtime: {r.runtime} ({why})")
    files = output_files(out, 0, r.probabilities)
    del files["tiles"]
    state = out.with_name(f".{out.name}.landcover-state")
    stamp = fingerprint([job.bundle], images, {
        "bands": picks, "nodata": r.nodata, "crs": job.crs.to_wkt(), "transform": list(job.transform)[:6],
        "size": [job.height, job.width],
        "window": job.window, "overlap": job.overlap, "context": job.context, "aoi": str(r.aoi), "runtime": job.runtime,
        "resampling": job.resampling, "probabilities": job.probabilities})
    drafts = {"map": state / "map.tif", "probabilities": state / "probs.tif"}
    res = job.transform.a
    tags = {"LANDCOVER_BUNDLE": str(Path(bundle.path).resolve()),
            "LANDCOVER_IMAGES": json.dumps([absolute(p) for p in images]),
            "LANDCOVER_BANDS": json.dumps(picks), "LANDCOVER_TASK": "segmentation",
            "LANDCOVER_WINDOW_PX": str(job.window), "LANDCOVER_OVERLAP_PX": str(job.overlap)}
    rgb = bundle.chip.get("rgb_bands")
    if rgb and len(rgb) == 3:  # what `landcover map` draws underneath: the bands the encoder took as RGB
        tags["LANDCOVER_DISPLAY_BANDS"] = json.dumps([picks[bundle.input.bands[i]] for i in rgb])
    if r.probabilities:
        tags["LANDCOVER_PROBABILITIES"] = files["probabilities"].name
    with output_lock(out), kept_only_when_started(state):
        prepare_outputs(out, files, state, stamp, r.overwrite)
        record = state / "progress.npz"
        done = _load_progress(record) if record.exists() else None
        if done is None:
            start_draft(drafts["map"], job.height, job.width, job.transform, job.crs, bundle.classes, tags)
            if r.probabilities:
                start_draft(drafts["probabilities"], job.height, job.width, job.transform, job.crs, bundle.classes,
                            tags, probabilities=True)
            done = {"bands": 0, "pending": None, "pending_valid": None, "counts": np.zeros(256, np.int64),
                    "windows": 0, "skipped": 0}
        resumed = done["bands"]
        todo = plan[resumed:]
        totals = {"windows": 0, "read": 0.0, "infer": 0.0}
        per_band = {b.index: (b.j1 - b.j0) * job.window_cols for b in plan}
        initial = sum(per_band[b.index] for b in plan[:resumed])
        with progress_bar(total=job.window_rows * job.window_cols, initial=initial, unit="window", desc="predict",
                          enabled=r.progress, leave=False) as bar:
            for ready in in_order(engine.map(run_band, job, todo, spawn=True), resumed):
                _write_band(job, ready, done, drafts)
                _save_progress(record, done)
                totals["windows"] += ready.windows
                totals["read"] += ready.seconds_read
                totals["infer"] += ready.seconds_infer
                bar.update(per_band[ready.index])
                initial += per_band[ready.index]
                if r.on_progress:
                    r.on_progress(initial, job.window_rows * job.window_cols)
                ready = None  # a band's arrays go before the next band's are made (memory: 2 bands, not 3)
        counts_all = done["counts"]
        if not counts_all[:bundle.n_classes].any() and not r.allow_empty:
            shutil.rmtree(state)
            raise LandcoverError("no pixel could be predicted: the imagery is all nodata (or outside the AOI); "
                                 "--allow-empty writes the empty map instead", images[0])
        finish_draft(drafts["map"], files["map"], bundle.classes)
        if r.probabilities:
            finish_draft(drafts["probabilities"], files["probabilities"], bundle.classes, probabilities=True)
        scores = {}
        if r.truth:
            from landcover.maps.figures import compare_to_truth

            scores["map"] = compare_to_truth(files["map"], r.truth, r.truth_scheme)
        counts = {c["name"]: int(counts_all[int(c["id"])]) for c in bundle.classes}
        counts["nodata"] = int(counts_all[NODATA])
        seconds = time.perf_counter() - started
        result = RasterResult(out, files, counts, {n: v * res * res / 1e4 for n, v in counts.items() if n != "nodata"},
                              windows=totals["windows"], skipped=done["skipped"], resumed=resumed, seconds=seconds,
                              seconds_read=totals["read"], seconds_infer=totals["infer"], reading=reading(job),
                              scores=scores, runtime=r.runtime)
        summary = {"task": "segmentation", "bundle": tags["LANDCOVER_BUNDLE"], "images": [str(Path(p).resolve())
                                                                                           for p in images],
                   "bands": picks, "crs": job.crs.to_wkt(), "transform": list(job.transform)[:6],
                   "pixels": [job.height, job.width], "res_m": res, "reading": reading(job), "window_px": job.window,
                   "overlap_px": job.overlap, "aoi": str(r.aoi) if r.aoi else None, "runtime": r.runtime,
                   "engine": engine.name, "workers": engine.workers, "counts": counts, "hectares": result.hectares,
                   "windows": done["windows"], "skipped": done["skipped"], "resumed_bands": resumed,
                   "seconds": round(seconds, 3), "windows_per_second": round(result.tiles_per_second, 2),
                   "scores": scores, "files": {k: v.name for k, v in files.items()}}
        write_text(files["summary"], json.dumps(summary, indent=2, default=str))
        shutil.rmtree(state, ignore_errors=True)
        return result


def check_pixel_options(request: MapRequest) -> None:
    """Refuse tile-map options with a segmentation bundle (its map already has a class per pixel)."""
    if request.stride:
        raise LandcoverError("--stride sets the cell of tile maps: a segmentation bundle maps every pixel (use "
                             "--overlap to set how far its windows overlap)")
    if request.smooth:
        raise LandcoverError("--smooth is for tile maps in this version: a segmentation map is per pixel already")


def _job(bundle: Bundle, scene: Scene, r: MapRequest, engine: Engine) -> PixelJob:
    res = float(bundle.chip["res"])
    crs, transform, height, width, direct = pixel_grid(scene, res)
    size, margin, context = window_sizes(bundle, height, width, r)
    model = bundle.kind == "pixels"
    batch_size = r.batch_size or (1 if model else max(1, BATCH_PIXELS // size ** 2))
    png = bundle_reads_png(bundle)
    stretch = (r.stretch or chip_stretch(bundle, scene)) if png else None
    geom = None
    if r.aoi is not None:
        from landcover.chips.cut import read_aoi

        geom = read_aoi(r.aoi, crs)
        if not geom.intersects(scene_footprint(scene, crs)):
            raise LandcoverError(f"the imagery ({scene.paths[0]}) does not overlap the AOI", r.aoi)
    return PixelJob(str(Path(bundle.path).resolve()), r.runtime, scene, png, stretch, crs, transform, height, width,
                    direct, r.resampling, size, margin, batch_size, engine.task_threads,
                    bundle.n_classes, r.probabilities, geom, nodata_nan=model, context=context)


def window_sizes(bundle: Bundle, height: int, width: int, r: MapRequest) -> tuple[int, int, int]:
    """The windows a map of `height` x `width` px takes: their side and overlap (the request's, else the defaults:
    a network's 512 px overlapping by a quarter, the pixel model's least work) and the context read around each."""
    res = float(bundle.chip["res"])
    window, overlap = r.window, r.overlap
    model = bundle.kind == "pixels"  # the pixel model: filters need `halo` px of context, not a network's quarter
    size = to_pixels(parse_length(window, "window"), res, "window") if window else (
        PIXEL_MODEL_WINDOW_PX if model else WINDOW_PX)
    if not model and (size < STRIDE or size % STRIDE):
        raise LandcoverError(f"--window {window} must be a multiple of {STRIDE} px (the encoder halves it five "
                             "times)")
    context = bundle.pixels.halo_px(res) if model else 0  # the pixel model reads its filters' reach around
    margin = to_pixels(parse_length(overlap, "overlap"), res, "overlap") if overlap else (0 if model else size // 4)
    if not 0 <= margin <= size // 2:
        raise LandcoverError(f"--overlap {overlap} must be between 0 and half the window ({size // 2} px)")
    longest = max(height, width)
    whole = _ceil(longest, STRIDE) * STRIDE
    if model and not window:  # the size whose windows compute the fewest pixels (none mostly past the map's edge)
        size = min(range(min(size, max(MIN_WINDOW_PX, 4 * margin)), size + 1), key=lambda s: (
            _ceil(height - margin, s - margin) * _ceil(width - margin, s - margin) * (s + 2 * context) ** 2, -s))
    if size > whole:  # a window past the map would mostly compute padding (4096 px on a 1428 px map: 9x the work)
        r.log(f"--window {window}: one window of {whole} px covers the {height} x {width} px map")
        size, margin = whole, min(margin, whole // 2 if overlap or model else whole // 4)
    return size, margin, context


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _write_band(job: PixelJob, result: BandResult, done: dict, drafts: dict[str, Path]) -> None:
    """A band's rows into the drafts: first the rows it shares with the band above (both bands' sums), then its own."""
    pieces = []
    if result.top is not None:
        classes, probs = join_rows(done["pending"], done["pending_valid"], result.top, result.top_valid,
                                   job.probabilities)
        pieces.append((result.row - job.overlap, classes, probs))
        done["pending"] = result.top = None
    pieces.append((result.row, result.classes, result.probs))
    for row, classes, probs in pieces:
        write_rows(drafts["map"], row, classes)
        if probs is not None:
            write_rows(drafts["probabilities"], row, probs)
        done["counts"] += np.bincount(classes.ravel(), minlength=256)
    done.update(bands=done["bands"] + 1, pending=result.bottom, pending_valid=result.bottom_valid,
                windows=done["windows"] + result.windows, skipped=done["skipped"] + result.skipped)


def _save_progress(path: Path, done: dict) -> None:
    """Bands written so far, the last one's shared-row sums and the running counts (a resume starts from here)."""
    arrays = {"bands": np.array(done["bands"]), "counts": done["counts"], "windows": np.array(done["windows"]),
              "skipped": np.array(done["skipped"])}
    if done["pending"] is not None:
        arrays.update(pending=done["pending"], pending_valid=done["pending_valid"])
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _load_progress(path: Path) -> dict:
    with np.load(path) as data:
        return {"bands": int(data["bands"]), "counts": data["counts"], "windows": int(data["windows"]),
                "skipped": int(data["skipped"]), "pending": data.get("pending"),
                "pending_valid": data.get("pending_valid")}
