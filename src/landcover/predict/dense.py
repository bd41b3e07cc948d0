"""Dense maps through the CRF: a probability raster refined against its imagery (`landcover crf`), a segmentation
map refined in the same run (`predict --crf`), and the hybrid (`predict CLASSIFIER --dense crf`): a tile classifier
on every N-th tile, its confident tiles as sparse evidence, the CRF giving every pixel of the imagery a class
(Buscombe & Ritchie 2018's "method 1"). The blocks, their margins and the grid are `landcover.predict.crf`'s."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from landcover.atomic import replacing, write_text
from landcover.bundle import load_bundle
from landcover.engine import in_order
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene, absolute, tiles_index
from landcover.geo.stretch import scene_stretch
from landcover.locks import output_lock
from landcover.maps.classmap import NODATA, finish_draft, raster_classes, start_draft, write_rows
from landcover.predict.bands import pixel_grid
from landcover.predict.crf import CrfJob, check_same_grid, crf_for, missing_evidence, run_rows
from landcover.predict.evidence import TileMarks, fit_marks, write_model_evidence
from landcover.predict.outputs import (
    RasterResult,
    appearance_scene,
    check_map_name,
    fingerprint,
    kept_only_when_started,
    open_scene,
    output_files,
    prepare_outputs,
)
from landcover.predict.request import MapRequest
from landcover.progress import progress_bar


def refine_raster(probabilities: str | Path, images: list[str | Path], out: str | Path,
                  request: MapRequest | None = None, **options: Any) -> RasterResult:
    """Refine a probability raster (one band per class, e.g. predict's <map>.probs.tif, or a `predict --tiles
    --probabilities` folder) with the dense CRF against the imagery it was predicted from (the same grid), into a
    class-map COG at `out`. The request's (or keyword) `crf` settings, `crf_block`, `probabilities` (also write the
    refined ones) and `bands` (the image bands the appearance kernel compares; default: the map's display bands,
    else the first three) apply."""
    r = MapRequest.of(request, options)
    probabilities, out = str(probabilities), Path(out)
    if Path(probabilities).is_dir():  # a tiled map's folder: its tiles' probabilities
        if (index := tiles_index(probabilities, probabilities=True)) is None:
            raise LandcoverError("is a folder without probs.vrt: run predict --tiles with --probabilities to "
                                 "refine its tiles", probabilities)
        probabilities = str(index)
    images = [str(p) for p in images]
    classes, tags = raster_classes(probabilities, probabilities=True)
    cells, missing = missing_evidence(probabilities)
    if cells and missing == cells:
        raise LandcoverError(f"holds no probabilities: every one of its {cells:,} cells is NaN or all zero",
                             probabilities)
    if missing:
        r.log(f"{missing:,} of {cells:,} cells ({100 * missing / cells:.1f}%) hold no probabilities (NaN or all "
              "zero): no evidence there, the CRF gives them the classes around them")
    scene = Scene.open(images)
    picks = list(r.bands) if r.bands else _display_bands(tags, scene.count)
    scene = Scene.open(images, bands=picks, name=Path(images[0]).stem, nodata=r.nodata)
    crs, transform, height, width = check_same_grid(probabilities, scene)
    job = CrfJob(probabilities, None, scene, scene_stretch(scene), crf_for(r.crf, crs, transform), crs, transform,
                 height, width, len(classes), r.probabilities, r.crf_block)
    tags = {**{k: v for k, v in tags.items() if k.startswith("LANDCOVER_")}, "LANDCOVER_REFINED_FROM":
            str(Path(probabilities).resolve())}
    return run_crf(job, classes, images, picks, out, tags, r)


def predict_dense(bundle_path: str | Path, images: list[str | Path], out: str | Path,
                  request: MapRequest | None = None, **options: Any) -> RasterResult:
    """A dense map through the CRF, kept beside `out` with what it was made from (the map's options: a
    `MapRequest`, or its fields as keywords).

    A tile classifier gives the hybrid: every `decimate`-th tile in each direction is classified; tiles whose top
    probability is >= `threshold` become evidence (their class, with that confidence) over their footprint, the
    rest unknown; the CRF gives every pixel of the imagery a class (<stem>.tiles.tif and .tiles.probs.tif kept).
    A segmentation bundle's per-pixel probabilities are refined against the imagery (<stem>.pixels.tif and
    .pixels.probs.tif kept). The first step is `predict_raster` with the same request (e.g. window, overlap, aoi)."""
    from landcover.predict.raster import predict_raster

    r = MapRequest.of(request, options)
    out = Path(out)
    r = replace(r, engine=r.runner)
    bundle = load_bundle(bundle_path)
    segmentation = bundle.per_pixel
    if segmentation and r.decimate != 1:
        raise LandcoverError("--decimate is for tile classifiers: a segmentation bundle maps every pixel")
    images = [str(p) for p in images]
    first = out.with_name(f"{out.with_suffix('').name}.{'pixels' if segmentation else 'tiles'}.tif")
    first_files = output_files(first, 0, True)
    if not segmentation:
        del first_files["tiles"]
    state = out.with_name(f".{out.name}.landcover-state")
    if state.exists() and all(p.exists() for p in first_files.values()):  # a killed dense run: its first step is done
        first_result = None
    else:
        first_result = predict_raster(bundle_path, images, first, replace(r, probabilities=True))
    picks, scene = open_scene(bundle, images, r.bands, r.nodata)
    crs, transform, height, width, _ = pixel_grid(scene, float(bundle.chip["res"]))
    look, appearance = appearance_scene(bundle, picks, images, r.nodata)
    aoi = None
    if r.aoi is not None:
        from landcover.chips.cut import read_aoi

        aoi = read_aoi(r.aoi, crs)
    evidence, threshold = str(first_files["probabilities"]), None if segmentation else r.threshold
    model_evidence = out.with_name(f".{out.name}.model.tif")
    if not segmentation and r.evidence_model == "pixels":  # confident tiles train the pixel model: its evidence
        if not (state.exists() and model_evidence.exists()):
            marks = TileMarks(evidence, bundle.classes, r.threshold)
            t0 = time.perf_counter()
            spec, head = fit_marks(scene, marks)
            with replacing(model_evidence) as tmp:
                write_model_evidence(scene, marks, spec, head, tmp)
            r.log(f"pixel model: trained on the confident tiles' pixels ({len(spec.names)} features), mapped in "
                  f"{time.perf_counter() - t0:.1f} s: its probabilities are the CRF's evidence")
        evidence, threshold = str(model_evidence), None
    job = CrfJob(evidence, threshold, appearance, r.crf_stretch or scene_stretch(appearance),
                 crf_for(r.crf, crs, transform), crs, transform, height, width, bundle.n_classes, r.probabilities,
                 r.crf_block, aoi, lattice=r.crf_lattice)
    tags = {"LANDCOVER_BUNDLE": str(Path(bundle_path).resolve()), "LANDCOVER_DENSE": "crf",
            "LANDCOVER_REFINED_FROM": first.name, "LANDCOVER_DISPLAY_BANDS": json.dumps(look)}
    if segmentation:
        r.log(f"per-pixel probabilities refined by the CRF over {height} x {width} px")
    else:
        tags.update(LANDCOVER_DECIMATE=str(r.decimate), LANDCOVER_THRESHOLD=f"{r.threshold:g}",
                    LANDCOVER_EVIDENCE_MODEL=r.evidence_model)
        r.log(f"hybrid: tiles classified every {r.decimate} in each direction, confident ones (p >= "
              f"{r.threshold:g}) the evidence; CRF over {height} x {width} px")
    result = run_crf(job, bundle.classes, images, look, out, tags, r)
    model_evidence.unlink(missing_ok=True)
    if first_result is not None:
        result.seconds += first_result.seconds
    return result


def run_crf(job: CrfJob, classes: list[dict], images: list[str], picks: list[int], out: Path, tags: dict,
            request: MapRequest) -> RasterResult:
    """Rows of blocks through the CRF (on an engine, resumable) into a class-map COG at `out` and <out>.json; the
    request gives the engine, overwrite, progress and log."""
    started = time.perf_counter()
    engine, log = request.runner, request.log
    check_map_name(out)
    job = replace(job, threads=engine.task_threads)
    s = job.settings
    reading = (f"CRF on a {job.crf_height} x {job.crf_width} grid ({s.downscale:g} x the map's {job.transform.a:g} "
               f"m), blocks of {job.block} + {job.margin} margin")
    log(f"{reading}; {s.describe()}")
    files = output_files(out, 0, job.probabilities_out)
    del files["tiles"]
    state = out.with_name(f".{out.name}.landcover-state")
    tags = {**tags, "LANDCOVER_IMAGES": json.dumps([absolute(p) for p in images]),
            "LANDCOVER_CRF": json.dumps(s.to_dict()), "LANDCOVER_TASK": "dense"}
    drafts = {"map": state / "map.tif", "probabilities": state / "probs.tif"}
    stamp = fingerprint([job.probabilities], images, {
        "bands": picks, "nodata": job.scene.nodata_override, "crs": job.crs.to_wkt(),
        "transform": list(job.transform)[:6], "size": [job.height, job.width],
        "block": job.block, "lattice": job.lattice, "settings": job.settings.to_dict(), "threshold": job.threshold,
        "probs": job.probabilities_out, "aoi": None if job.aoi is None else hashlib.sha256(job.aoi.wkb).hexdigest()})
    with output_lock(out), kept_only_when_started(state):
        prepare_outputs(out, files, state, stamp, request.overwrite)
        record = state / "progress.npz"
        if record.exists():
            with np.load(record) as data:
                done, counts = int(data["rows"]), data["counts"]
        else:
            start_draft(drafts["map"], job.height, job.width, job.transform, job.crs, classes, tags)
            if job.probabilities_out:
                start_draft(drafts["probabilities"], job.height, job.width, job.transform, job.crs, classes, tags,
                            probabilities=True)
            done, counts = 0, np.zeros(256, np.int64)
        resumed = done
        seconds_crf = 0.0
        with progress_bar(total=job.block_rows * job.block_cols, initial=done * job.block_cols, unit="block",
                          desc="crf", enabled=request.progress, leave=False) as bar:
            todo = list(range(done, job.block_rows))
            for ready in in_order(engine.map(run_rows, job, todo, spawn=True), done):
                write_rows(drafts["map"], ready.row, ready.classes)
                if ready.probs is not None:
                    write_rows(drafts["probabilities"], ready.row, ready.probs)
                counts += np.bincount(ready.classes.ravel(), minlength=256)
                done += 1
                with replacing(record) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, rows=np.array(done), counts=counts)
                seconds_crf += ready.seconds
                bar.update(ready.blocks)
                if request.on_progress:
                    request.on_progress(done * job.block_cols, job.block_rows * job.block_cols)
                ready = None
        finish_draft(drafts["map"], files["map"], classes)
        if job.probabilities_out:
            finish_draft(drafts["probabilities"], files["probabilities"], classes, probabilities=True)
        res = abs(job.transform.a)
        per_class = {c["name"]: int(counts[int(c["id"])]) for c in classes}
        per_class["nodata"] = int(counts[NODATA])
        seconds = time.perf_counter() - started
        megapixels = job.height * job.width / 1e6
        result = RasterResult(out, files, per_class,
                              {n: v * res * res / 1e4 for n, v in per_class.items() if n != "nodata"},
                              windows=(job.block_rows - resumed) * job.block_cols, skipped=0, resumed=resumed,
                              seconds=seconds, seconds_read=0.0, seconds_infer=seconds_crf, reading=reading,
                              unit="block")
        summary = {"task": "dense", "images": json.loads(tags["LANDCOVER_IMAGES"]), "bands": picks,
                   "crs": job.crs.to_wkt(), "transform": list(job.transform)[:6], "pixels": [job.height, job.width],
                   "crf": s.to_dict(), "crf_grid": [job.crf_height, job.crf_width], "block": job.block,
                   "margin": job.margin, "evidence_threshold": job.threshold, "engine": engine.name,
                   "counts": per_class, "hectares": result.hectares, "resumed_block_rows": resumed,
                   "seconds": round(seconds, 3), "seconds_per_megapixel": round(seconds / max(megapixels, 1e-9), 3),
                   "tags": {k: v for k, v in tags.items() if k != "LANDCOVER_CRF"},
                   "files": {k: v.name for k, v in files.items()}}
        write_text(files["summary"], json.dumps(summary, indent=2, default=str))
        shutil.rmtree(state, ignore_errors=True)
        return result


def _display_bands(tags: dict[str, str], count: int) -> list[int]:
    if "LANDCOVER_DISPLAY_BANDS" in tags:
        picks = json.loads(tags["LANDCOVER_DISPLAY_BANDS"])
        if all(1 <= b <= count for b in picks):
            return picks
    return list(range(1, min(count, 3) + 1))
