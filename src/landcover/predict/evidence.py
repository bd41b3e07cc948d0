"""Sparse evidence through the pixel model: labelled pixels (a person's scribbles, or the tiles a classifier is
confident about) train a forest on per-pixel filter features (`landcover.models.pixelfeatures`,
`landcover.train.pixels`), and its probabilities over the whole image are the CRF's evidence. Far from every
labelled pixel a class then comes from what the pixel looks like, not from a tie between uniform probabilities
(three strokes inside each NC polygon came out 99% one class that way).

The image is read in strips of rows with the filters' halo above and below, twice: once for the scribbled pixels'
features (strips without a stroke are skipped), once to write the probabilities; memory depends on the strip, not
on the image. Labelled pixels keep their class at CONFIDENCE. They are the training set as they are: on NC's
scribbles, weighing the classes equally instead made the rare ones spread (points 0.517 against 0.587).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landcover.errors import LandcoverError
from landcover.geo.raster import Scene
from landcover.maps.classmap import NODATA, PROB_SCALE
from landcover.models.heads import Head
from landcover.models.pixelfeatures import PixelFeatures, default_scales
from landcover.train.pixels import fit_pixel_head
from landcover.train.spectral import spectral_spec

STRIP_ROWS = 1024
CONFIDENCE = 0.9
"""The probability a labelled pixel gives its class (the rest shared by the others): the seeds' gt_prob kind."""
MAX_TRAINING_PIXELS = 200_000
"""Labelled pixels beyond this many are sampled down at random (the classes keep their shares) before the fit."""


class Marks(Protocol):
    """Labelled pixels on any grid: the classes, and class ids (NODATA where unlabelled) on a grid's pixels."""

    classes: list[dict]

    def on_grid(self, crs: CRS, transform: Affine, width: int, height: int) -> np.ndarray: ...


@dataclass
class TileMarks:
    """A tile classifier's confident cells as labelled pixels: its probability raster (one band per class), a cell
    labelled where its top probability is at least `threshold`."""

    path: str
    classes: list[dict]
    threshold: float

    def on_grid(self, crs: CRS, transform: Affine, width: int, height: int) -> np.ndarray:
        with rasterio.open(self.path) as src, WarpedVRT(src, crs=crs, transform=transform, width=width,
                                                        height=height, resampling=Resampling.nearest) as vrt:
            p = vrt.read()
            known = vrt.dataset_mask() > 0
        confident = known & (p.max(axis=0) >= self.threshold * PROB_SCALE)
        return np.where(confident, p.argmax(axis=0), NODATA).astype(np.uint8)


def scene_features(scene: Scene) -> PixelFeatures:
    """The pixel model's features for a scene's bands: roles from what its files say, scales 1..8 pixels."""
    info = {"scenes": [{"paths": list(scene.paths), "bands": [list(b) for b in scene.band_sources]}]}
    spectral = spectral_spec(info, scene.count, Path(scene.paths[0]), None)
    return PixelFeatures.create(spectral.band_names, spectral.roles, default_scales(scene.res[0]))


def _strips(scene: Scene, halo: int):
    """(row, rows, pixels, valid) of each strip of the scene, read with `halo` rows above and below."""
    for row in range(0, scene.height, STRIP_ROWS):
        rows = min(STRIP_ROWS, scene.height - row)
        top = max(0, row - halo)
        bottom = min(scene.height, row + rows + halo)
        pixels, valid = scene.read(Window(0, top, scene.width, bottom - top))
        yield row, rows, row - top, pixels, valid


def fit_marks(scene: Scene, marks: Marks, seed: int = 0) -> tuple[PixelFeatures, Head]:
    """The pixel model fitted on the labelled pixels of `scene`."""
    spec = scene_features(scene)
    res, halo = scene.res[0], spec.halo_px(scene.res[0])
    n = len(marks.classes)
    xs, ys = [], []
    for row, rows, at, pixels, valid in _strips(scene, halo):
        ids = marks.on_grid(scene.crs, scene.transform * Affine.translation(0, row), scene.width, rows)
        seen = (ids != NODATA) & valid[at:at + rows]
        if not seen.any():
            continue
        features = spec.compute(pixels, valid, res)[:, at:at + rows]
        xs.append(features[:, seen].T)
        ys.append(ids[seen].astype(np.int64))
    if not xs:
        raise LandcoverError("no labelled pixel falls on the image's valid pixels: nothing to train the pixel model "
                             "on", scene.paths[0])
    X, y = np.concatenate(xs), np.concatenate(ys)
    if len(y) > MAX_TRAINING_PIXELS:
        keep = np.random.default_rng(seed).choice(len(y), MAX_TRAINING_PIXELS, replace=False)
        X, y = X[keep], y[keep]
    head = fit_pixel_head("rf", X, y, n, seed)
    return spec, head


def evidence_profile(n: int, crs: CRS, transform: Affine, width: int, height: int) -> dict:
    """An evidence raster's profile: n bands of uint8 probabilities (p x PROB_SCALE), NODATA where none."""
    return {"driver": "GTiff", "width": width, "height": height, "count": n, "dtype": "uint8", "crs": crs,
            "transform": transform, "nodata": NODATA, "tiled": True, "blockxsize": 256, "blockysize": 256,
            "compress": "deflate"}


def labelled_evidence(ids: np.ndarray, n: int) -> np.ndarray:
    """(n, h, w) uint8 evidence of labelled pixels (class ids (h, w)): their class at CONFIDENCE, the rest shared."""
    rest = round((1 - CONFIDENCE) / (n - 1) * PROB_SCALE)
    return np.where(np.arange(n)[:, None, None] == ids, round(CONFIDENCE * PROB_SCALE), rest).astype(np.uint8)


def write_model_evidence(scene: Scene, marks: Marks, spec: PixelFeatures, head: Head, path: Path) -> None:
    """The model's probabilities over the scene as the CRF's evidence raster (uint8, p x PROB_SCALE; NODATA where
    the imagery has none), labelled pixels at their class with CONFIDENCE."""
    n = len(marks.classes)
    res, halo = scene.res[0], spec.halo_px(scene.res[0])
    profile = evidence_profile(n, scene.crs, scene.transform, scene.width, scene.height)
    with rasterio.open(path, "w", **profile) as dst:
        for row, rows, at, pixels, valid in _strips(scene, halo):
            features = spec.compute(pixels, valid, res)[:, at:at + rows]
            inside = valid[at:at + rows]
            p = np.zeros((n, rows, scene.width), np.float32)
            if inside.any():
                p[:, inside] = head.predict_proba(features[:, inside].T).T
            ids = marks.on_grid(scene.crs, scene.transform * Affine.translation(0, row), scene.width, rows)
            scaled = np.where(ids != NODATA, labelled_evidence(ids, n), np.rint(p * PROB_SCALE))
            scaled = np.clip(scaled, 1, PROB_SCALE).astype(np.uint8)  # never p = 0: no -log 0
            dst.write(np.where(inside, scaled, NODATA), window=Window(0, row, scene.width, rows))
        dst.update_tags(LANDCOVER_CLASSES=json.dumps(marks.classes))
