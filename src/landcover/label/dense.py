"""Sparse scribbles to dense labels (Buscombe & Ritchie 2018's labelling): a few strokes per class over an image, the
dense CRF spreads them to every pixel, and the result is a class-map COG ready for `landcover chips --labels`, with
its class proportions and a figure. The CRF's blocks, margins and grid are `landcover.predict.crf`'s."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling

from landcover.atomic import replacing, write_text
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.geo.grid import area_text
from landcover.geo.raster import Scene
from landcover.geo.stretch import scene_stretch
from landcover.label.scribbles import Scribbles, read_scribbles, write_evidence
from landcover.maps.classmap import NODATA, hex_rgb
from landcover.plots import new_figure
from landcover.predict.crf import CrfJob, crf_for
from landcover.predict.dense import run_crf
from landcover.predict.evidence import CONFIDENCE, STRIP_ROWS, fit_marks, write_model_evidence
from landcover.predict.outputs import check_map_name
from landcover.predict.request import CRF_BLOCK_PX, MapRequest
from landcover.schemes import ClassScheme
from landcover.segment.crf import CrfSettings
from landcover.segment.crfdefaults import CrfChoice

MODELS = ("pixels", "none")
"""What gives the CRF its evidence away from the strokes: the pixel model trained on them, or nothing (uniform)."""
FIGURE_PX = 900
"""The figure's panels are drawn at about this many pixels on their long side."""


@dataclass
class LabelResult:
    """What `label_raster` wrote and measured."""

    out: Path
    files: dict[str, Path]
    classes: list[dict]
    pixels: dict[str, int]
    hectares: dict[str, float]
    scribbled: dict[str, int]
    seconds: float

    def summary(self) -> str:
        total = sum(self.pixels.values()) or 1
        lines = [f"dense labels: {self.out}  ({self.seconds:.1f} s)"]
        for c in self.classes:
            name = c["name"]
            lines.append(f"  {name:<16} {self.pixels[name]:>12,} px {area_text(self.hectares[name]):>14} "
                         f"{100 * self.pixels[name] / total:>6.1f}%   ({self.scribbled[name]:,} px scribbled)")
        lines += [f"{k}: {v}" for k, v in self.files.items() if k != "map"]
        return "\n".join(lines)


def label_raster(images: list[str | Path], scribbles: str | Path, out: str | Path, class_field: str | None = None,
                 scheme: str | ClassScheme | None = None, bands: list[int] | None = None,
                 nodata: float | str | None = None, settings: CrfSettings | CrfChoice | None = None, median: int = 0,
                 block: int = CRF_BLOCK_PX, model: str = "pixels",
                 engine: Engine | str | None = None, overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> LabelResult:
    """Dense labels for every pixel of an image from scribbles (a vector layer whose `class_field` names each
    stroke's class, or codes through `scheme`; or a raster of class codes, 0 unlabelled). Writes `out` (a class-map
    COG on the image's grid), <out>.json (class proportions in pixels, hectares and shares, scribbled pixels per
    class, settings, seconds) and <out>.png (image | scribbles | result). `model` 'pixels' (the default) trains the
    pixel model on the scribbled pixels (every band of the images) and hands its probabilities to the CRF as
    evidence, so far from the strokes a class comes from the image, never from a tie; 'none' gives the CRF the
    scribbles alone. On NC's points, at the CRF's defaults by resolution: the polygons' interiors scribbled 0.648
    through the model, 0.664-0.668 the CRF alone, 0.552 the model alone; three short strokes a polygon 0.630
    through the model, the CRF alone one class everywhere in one run of three (tests/test_label.py). Scribbled
    pixels keep their class. `bands` pick the image bands the CRF compares (default the first three); `median` > 1
    median-filters the refined probabilities."""
    started = time.perf_counter()
    if median < 0 or (median and median % 2 == 0):
        raise LandcoverError(f"--median {median} must be an odd window size (or 0)")
    if model not in MODELS:
        raise LandcoverError(f"--model {model!r}: choose {' or '.join(MODELS)}")
    out = Path(out)
    check_map_name(out)  # before the scribbles' evidence raster is written beside it
    images = [str(p) for p in images]
    scene = Scene.open(images)
    picks = bands or list(range(1, min(scene.count, 3) + 1))
    if max(picks) > scene.count:
        raise LandcoverError(f"--bands {picks}: the imagery has {scene.count} bands", images[0])
    scene = Scene.open(images, bands=picks, name=Path(images[0]).stem, nodata=nodata)
    settings = crf_for(settings, scene.crs, scene.transform)
    marks = read_scribbles(scribbles, scene.crs, class_field, scheme)
    evidence = out.with_name(f".{out.name}.scribbles.tif")
    state = out.with_name(f".{out.name}.landcover-state")
    if not (state.exists() and evidence.exists()):  # a resumed run keeps the evidence it started with
        if out.exists() and not overwrite:
            raise LandcoverError("exists (pass --overwrite to replace it)", out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(evidence) as tmp:
            write_evidence(marks, tmp, scene.crs, scene.transform, scene.width, scene.height)
    with rasterio.open(evidence) as src:
        counts = _scribbled(src, len(marks.classes))
    log(f"scribbles: {sum(counts):,} px over {len(marks.classes)} classes from {Path(str(scribbles)).name}")
    unaries = evidence
    if model == "pixels":
        unaries = out.with_name(f".{out.name}.model.tif")
        if not (state.exists() and unaries.exists()):
            full = Scene.open(images, name=Path(images[0]).stem, nodata=nodata)
            t0 = time.perf_counter()
            spec, head = fit_marks(full, marks)
            with replacing(unaries) as tmp:
                write_model_evidence(full, marks, spec, head, tmp)
            log(f"pixel model: {len(spec.names)} features of {full.count} bands, trained on the scribbled pixels "
                f"and mapped in {time.perf_counter() - t0:.1f} s: its probabilities are the CRF's evidence")
    job = CrfJob(str(unaries), 0.0, scene, scene_stretch(scene), settings, scene.crs, scene.transform, scene.height,
                 scene.width, len(marks.classes), False, block, evidence_resampling="average", median=median,
                 fixed=str(evidence))
    tags = {"LANDCOVER_SCRIBBLES": str(Path(str(scribbles)).resolve()), "LANDCOVER_DENSE": "scribbles",
            "LANDCOVER_DISPLAY_BANDS": json.dumps(picks)}
    result = run_crf(job, marks.classes, images, picks, out, tags,
                     MapRequest(engine=engine, overwrite=overwrite, progress=progress, log=log))
    names = [c["name"] for c in marks.classes]
    scribbled = dict(zip(names, (int(k) for k in counts), strict=True))
    summary = json.loads(result.files["summary"].read_text())
    total = sum(result.counts[n] for n in names) or 1
    summary.update(task="labels", model=model, scribbles=str(Path(str(scribbles)).resolve()), class_field=class_field,
                   scribbled_pixels=scribbled, shares={n: result.counts[n] / total for n in names},
                   confidence=CONFIDENCE, median=median, seconds=round(time.perf_counter() - started, 3))
    write_text(result.files["summary"], json.dumps(summary, indent=2, default=str))
    files = {**result.files, "figure": out.with_suffix(".png")}
    _figure(scene, marks, out, files["figure"], "model + CRF" if model == "pixels" else "CRF")
    evidence.unlink(missing_ok=True)
    unaries.unlink(missing_ok=True)
    return LabelResult(out, files, marks.classes, {n: result.counts[n] for n in names},
                       {n: result.hectares[n] for n in names}, scribbled, time.perf_counter() - started)


def _scribbled(src: rasterio.DatasetReader, n: int) -> list[int]:
    counts = np.zeros(n, np.int64)
    for _, window in src.block_windows(1):
        data = src.read(window=window)
        seen = data[0] != NODATA
        counts += np.bincount(data[:, seen].argmax(axis=0), minlength=n)[:n]
    return counts.tolist()


def display_rgb(scene: Scene, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The image averaged down to `shape` (height, width) and stretched for display: (h, w, 3) uint8 (a one-band
    image as grey) and its validity."""
    h, w = shape
    pixels, valid = scene.read_warped(scene.crs, scene.transform * rasterio.Affine.scale(scene.width / w,
                                                                                         scene.height / h),
                                      w, h, Resampling.average)
    stretch = scene_stretch(scene)
    image = stretch.apply(pixels) if stretch else pixels.astype(np.uint8)
    image = np.repeat(image[:1], 3, axis=0) if image.shape[0] < 3 else image[:3]
    return np.moveaxis(image, 0, -1), valid


def _figure(scene: Scene, marks: Scribbles, out: Path, png: Path, method: str) -> Path:
    """Image | scribbles over it (each stroke kept visible at the figure's scale) | the dense labels, with a legend
    of the classes and their shares."""
    classes = marks.classes
    scale = max(scene.width, scene.height) / FIGURE_PX
    shape = (max(1, round(scene.height / max(scale, 1))), max(1, round(scene.width / max(scale, 1))))
    rgb, _ = display_rgb(scene, shape)
    lut = np.zeros((256, 4), np.float32)
    for c in classes:
        lut[int(c["id"])] = [*(v / 255 for v in hex_rgb(c["color"])), 1.0]
    with rasterio.open(out) as src:
        labels = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    strokes = _strokes(scene, marks, shape)
    fig, axes = new_figure(13, 4.6, 3)
    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(rgb)
    axes[1].imshow(np.where((strokes != NODATA)[..., None], lut[strokes], 0))
    axes[1].set_title("scribbles", fontsize=10)
    axes[2].imshow(rgb)
    axes[2].imshow(lut[labels] * np.array([1, 1, 1, 0.75], np.float32))
    axes[2].set_title(f"dense labels ({method})", fontsize=10)
    total = max(1, int((labels != NODATA).sum()))
    from matplotlib.patches import Patch

    handles = [Patch(color=lut[int(c["id"])][:3], label=f"{c['name']} {100 * (labels == c['id']).sum() / total:.1f}%")
               for c in classes]
    axes[2].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    for ax in axes:
        ax.set_axis_off()
    with replacing(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return png


def _strokes(scene: Scene, marks: Scribbles, shape: tuple[int, int]) -> np.ndarray:
    """The scribbles' class ids at the figure's `shape`: a figure pixel takes a class when any image pixel under it
    is scribbled, then the strokes are thickened by a pixel each side so a 1 px line stays visible."""
    from scipy.ndimage import grey_dilation

    h, w = shape
    shown = np.zeros(shape, np.int16)  # class id + 1, 0 unscribbled
    cols = np.minimum((np.arange(scene.width) * w) // scene.width, w - 1)
    for row in range(0, scene.height, STRIP_ROWS):
        rows = min(STRIP_ROWS, scene.height - row)
        ids = marks.on_grid(scene.crs, scene.transform * Affine.translation(0, row), scene.width, rows)
        r, c = np.nonzero(ids != NODATA)
        np.maximum.at(shown, (np.minimum(((row + r) * h) // scene.height, h - 1), cols[c]), ids[r, c] + 1)
    shown = grey_dilation(shown, size=3)
    return np.where(shown > 0, shown - 1, NODATA).astype(np.uint8)
