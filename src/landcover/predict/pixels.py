"""Whole rasters through a segmentation bundle into per-pixel class-map COGs (see `landcover.predict.bands` for
how windows are blended and banded). `predict_raster` calls it for segmentation bundles."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from landcover.atomic import replacing, write_text
from landcover.bundle import Bundle
from landcover.engine import Engine, in_order
from landcover.errors import LandcoverError
from landcover.geo.grid import parse_length, scene_footprint, to_pixels
from landcover.geo.raster import Scene
from landcover.geo.stretch import scene_stretch
from landcover.locks import output_lock
from landcover.maps.classmap import NODATA, finish_draft, start_draft, write_rows
from landcover.predict.bands import (
    WINDOW_PX,
    BandResult,
    PixelJob,
    bundle_reads_png,
    join_rows,
    pixel_grid,
    plan_bands,
    reading,
    run_band,
    window_threads,
)
from landcover.predict.outputs import (
    RasterResult,
    kept_only_when_started,
    open_scene,
    output_files,
    prepare_outputs,
)
from landcover.progress import progress_bar
from landcover.segment.trainer import STRIDE

BATCH_PIXELS = 8 * 256 * 256
"""Default pixels per batch: 2 windows of 512 px (about as many pixels as 500 classification tiles of 32)."""


def predict_pixels(bundle: Bundle, images: list[str], out: Path, bands: list[int] | None = None,
                   aoi: str | Path | None = None, probabilities: bool = False, truth: str | Path | None = None,
                   truth_scheme: str | None = None, window: str | None = None, overlap: str | None = None,
                   batch_size: int | None = None, runtime: str = "torch", engine: Engine | None = None,
                   resampling: str = "bilinear", overwrite: bool = False, allow_empty: bool = False,
                   progress: bool = True, log: Callable[[str], None] = print, why: str = "") -> RasterResult:
    """A class for every pixel of a raster from a loaded segmentation bundle (`predict_raster` checks the common
    arguments, loads the bundle and picks the runtime, then calls this). Outputs: `out` (class-map COG at the
    imagery's grid, or the bundle's resolution warped), <out>.json, with `probabilities` <out>.probs.tif.
    `window` (default 512 px) and `overlap` (default a quarter window) in px or m; `batch_size` in windows (default
    as many as hold 8 x 256² pixels)."""
    started = time.perf_counter()
    engine = engine or Engine()
    picks, scene = open_scene(bundle, images, bands)
    job = _job(bundle, scene, runtime, window, overlap, batch_size, engine, resampling, probabilities, aoi)
    plan = plan_bands(job)
    log(f"{reading(job)}; {job.height} x {job.width} px map, {job.window_rows * job.window_cols} windows of "
        f"{job.window} px overlapping by {job.overlap} px, in {len(plan)} bands")
    log(f"runtime: {runtime} ({why})")
    files = output_files(out, 0, probabilities)
    del files["tiles"]
    state = out.with_name(f".{out.name}.landcover-state")
    fingerprint = _fingerprint(job, images, picks, aoi)
    drafts = {"map": state / "map.tif", "probabilities": state / "probs.tif"}
    res = job.transform.a
    tags = {"LANDCOVER_BUNDLE": str(Path(bundle.path).resolve()),
            "LANDCOVER_IMAGES": json.dumps([str(Path(p).resolve()) for p in images]),
            "LANDCOVER_BANDS": json.dumps(picks), "LANDCOVER_TASK": "segmentation",
            "LANDCOVER_WINDOW_PX": str(job.window), "LANDCOVER_OVERLAP_PX": str(job.overlap)}
    rgb = bundle.chip.get("rgb_bands")
    if rgb and len(rgb) == 3:  # what `landcover map` draws underneath: the bands the encoder took as RGB
        tags["LANDCOVER_DISPLAY_BANDS"] = json.dumps([picks[bundle.input.bands[i]] for i in rgb])
    if probabilities:
        tags["LANDCOVER_PROBABILITIES"] = files["probabilities"].name
    with output_lock(out), kept_only_when_started(state):
        prepare_outputs(out, files, state, fingerprint, overwrite)
        record = state / "progress.npz"
        done = _load_progress(record) if record.exists() else None
        if done is None:
            start_draft(drafts["map"], job.height, job.width, job.transform, job.crs, bundle.classes, tags)
            if probabilities:
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
                          enabled=progress, leave=False) as bar:
            for ready in in_order(engine.map(run_band, job, todo, spawn=True), resumed):
                _write_band(job, ready, done, drafts)
                _save_progress(record, done)
                totals["windows"] += ready.windows
                totals["read"] += ready.seconds_read
                totals["infer"] += ready.seconds_infer
                bar.update(per_band[ready.index])
                ready = None  # a band's arrays go before the next band's are made (memory: 2 bands, not 3)
        counts_all = done["counts"]
        if not counts_all[:bundle.n_classes].any() and not allow_empty:
            shutil.rmtree(state)
            raise LandcoverError("no pixel could be predicted: the imagery is all nodata (or outside the AOI); "
                                 "--allow-empty writes the empty map instead", images[0])
        finish_draft(drafts["map"], files["map"], bundle.classes)
        if probabilities:
            finish_draft(drafts["probabilities"], files["probabilities"], bundle.classes, probabilities=True)
        scores = {}
        if truth:
            from landcover.maps.figures import compare_to_truth

            scores["map"] = compare_to_truth(files["map"], truth, truth_scheme)
        counts = {c["name"]: int(counts_all[int(c["id"])]) for c in bundle.classes}
        counts["nodata"] = int(counts_all[NODATA])
        seconds = time.perf_counter() - started
        result = RasterResult(out, files, counts, {n: v * res * res / 1e4 for n, v in counts.items() if n != "nodata"},
                              windows=totals["windows"], skipped=done["skipped"], resumed=resumed, seconds=seconds,
                              seconds_read=totals["read"], seconds_infer=totals["infer"], reading=reading(job),
                              scores=scores, runtime=runtime)
        summary = {"task": "segmentation", "bundle": tags["LANDCOVER_BUNDLE"], "images": [str(Path(p).resolve())
                                                                                           for p in images],
                   "bands": picks, "crs": job.crs.to_wkt(), "transform": list(job.transform)[:6],
                   "pixels": [job.height, job.width], "res_m": res, "reading": reading(job), "window_px": job.window,
                   "overlap_px": job.overlap, "aoi": str(aoi) if aoi else None, "runtime": runtime,
                   "engine": engine.name, "workers": engine.workers, "counts": counts, "hectares": result.hectares,
                   "windows": done["windows"], "skipped": done["skipped"], "resumed_bands": resumed,
                   "seconds": round(seconds, 3), "windows_per_second": round(result.tiles_per_second, 2),
                   "scores": scores, "files": {k: v.name for k, v in files.items()}}
        write_text(files["summary"], json.dumps(summary, indent=2, default=str))
        shutil.rmtree(state, ignore_errors=True)
        return result


def check_pixel_options(stride: str | None, smooth: int) -> None:
    """Refuse tile-map options with a segmentation bundle (its map already has a class per pixel)."""
    if stride:
        raise LandcoverError("--stride sets the cell of tile maps: a segmentation bundle maps every pixel (use "
                             "--overlap to set how far its windows overlap)")
    if smooth:
        raise LandcoverError("--smooth is for tile maps in this version: a segmentation map is per pixel already")


def _job(bundle: Bundle, scene: Scene, runtime: str, window: str | None, overlap: str | None,
         batch_size: int | None, engine: Engine, resampling: str, probabilities: bool,
         aoi: str | Path | None) -> PixelJob:
    res = float(bundle.chip["res"])
    crs, transform, height, width, direct = pixel_grid(scene, res)
    size = to_pixels(parse_length(window, "window"), res, "window") if window else WINDOW_PX
    if size < STRIDE or size % STRIDE:
        raise LandcoverError(f"--window {window} must be a multiple of {STRIDE} px (the encoder halves it five "
                             "times)")
    margin = to_pixels(parse_length(overlap, "overlap"), res, "overlap") if overlap else size // 4
    if not 0 <= margin <= size // 2:
        raise LandcoverError(f"--overlap {overlap} must be between 0 and half the window ({size // 2} px)")
    batch_size = batch_size or max(1, BATCH_PIXELS // size ** 2)
    stretch = None
    png = bundle_reads_png(bundle)
    if png and np.dtype(scene.dtype) != np.uint8:
        stretch = scene_stretch(scene, tuple(bundle.chip.get("stretch_percentiles") or (2.0, 98.0)))
    geom = None
    if aoi is not None:
        from landcover.chips.cut import read_aoi

        geom = read_aoi(aoi, crs)
        if not geom.intersects(scene_footprint(scene, crs)):
            raise LandcoverError(f"the imagery ({scene.paths[0]}) does not overlap the AOI", aoi)
    return PixelJob(str(Path(bundle.path).resolve()), runtime, scene, png, stretch, crs, transform, height, width,
                    direct, resampling, size, margin, batch_size, window_threads(engine.name, engine.workers),
                    bundle.n_classes, probabilities, geom)


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


def _fingerprint(job: PixelJob, images: list[str], picks: list[int], aoi) -> str:
    """What a resumed run must match: bundle, imagery, bands, grid, windows and the settings that change results."""
    bundle = Path(job.bundle)
    weights = sorted(p for p in bundle.rglob("*") if p.is_file() and p.suffix != ".onnx" and p.name != "onnx.json")
    data = {"bundle": [(str(p.relative_to(bundle)), p.stat().st_size, p.stat().st_mtime_ns) for p in weights],
            "images": [str(Path(p).resolve()) for p in images], "bands": picks, "crs": job.crs.to_wkt(),
            "transform": list(job.transform)[:6], "size": [job.height, job.width], "window": job.window,
            "overlap": job.overlap, "aoi": str(aoi), "runtime": job.runtime, "resampling": job.resampling,
            "probabilities": job.probabilities}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
