"""The studio's pixel model: trained on a person's labels, it maps any tile of the view (its classes and how sure
it is), proposes where to label next, and becomes a bundle that `landcover predict` maps the whole raster with.

Tiles: a tile at level k is mapped from level k's own pixels (the filters' scales are metres, so they mean the same
at every level): level 0 is the model's map itself, the levels above a preview of it. The classes and the
uncertainty layer (1 - the top class's probability) come from one computation, kept for the last tiles asked.

Suggestions follow the annotator bench (`bench/annotate.py`): among a random sample of the imagery's valid pixels
(in SUGGEST_BLOCKS small blocks scattered over the raster), half the places are drawn at random with a chance in
proportion to how unsure the model is there (1 - its top probability), taken in turn at least the model's largest
filter scale from each other and from every label so far; the other half are random places. The least sure
places themselves keep picking mixed pixels and edges (below random clicks in the bench's rounds 2, 3 and 5 on
Zion): the draw still goes mostly where the model is unsure, and what it is sure of can be wrong, which only the
random half finds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from landcover.bundle import Bundle, InputSpec
from landcover.geo.raster import Scene
from landcover.maps.classmap import hex_rgb
from landcover.models.heads import Head
from landcover.models.pixelfeatures import PixelFeatures
from landcover.studio.context import Context
from landcover.studio.tiles import TILE_PX, TileSource, class_png, rgba_png

SUGGEST_BLOCKS = 48
SUGGEST_BLOCK_PX = 64
"""Suggestions look at the pixels of this many blocks of this side, at random over the imagery (196k pixels)."""
CANDIDATES = 20_000
"""Of those, the valid pixels the model is asked about (a random sample, as the bench's)."""
KEPT_TILES = 64
"""The model's last tiles (classes and top probabilities) kept: the class and uncertainty layers share them."""
FEATURES_MB = 832
"""Memory for display tiles' features (27 MB a tile of 4 bands' 102 features, 29 MB with a bundle's 8 classes after
them: 28 tiles either way, a full-HD view)."""


@dataclass
class StudioModel:
    """A fitted pixel model (features and head) for the studio's classes, version `version`."""

    spec: PixelFeatures
    head: Head
    classes: list[dict]
    version: int
    pixels: int
    """Labelled pixels it was trained on."""
    lut: np.ndarray = field(init=False, repr=False)
    kept: OrderedDict = field(init=False, repr=False, default_factory=OrderedDict)

    def __post_init__(self):
        self.lut = np.zeros((256, 4), np.uint8)  # class id -> RGBA; 255 (no data) transparent
        for i, c in enumerate(self.classes):
            self.lut[i] = [*hex_rgb(c["color"]), 255]

    def tile(self, features: TileFeatures, level: int, col: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """A tile's class ids (255: no data) and top probabilities (0 where no data), from the level's pixels."""
        key = (level, col, row)
        if key in self.kept:
            self.kept.move_to_end(key)
            return self.kept[key]
        X, ok = features.get(level, col, row)
        X = X[:len(self.spec.names)]  # a model without the context reads the imagery's features, their prefix
        ids = np.full((TILE_PX, TILE_PX), 255, np.uint8)
        top = np.zeros((TILE_PX, TILE_PX), np.float32)
        if ok.all():  # the tile's features as rows without a copy
            best, sure = self.spec.top(self.head, X.reshape(len(X), -1).T)
            ids[:], top[:] = best.reshape(ids.shape), sure.reshape(ids.shape)
        elif ok.any():
            ids[ok], top[ok] = self.spec.top(self.head, X[:, ok].T)
        self.kept[key] = ids, top
        if len(self.kept) > KEPT_TILES:
            self.kept.popitem(last=False)
        return ids, top

    def class_png(self, features: TileFeatures, level: int, col: int, row: int) -> bytes:
        return class_png(self.tile(features, level, col, row)[0], self.lut)

    def uncertainty_png(self, features: TileFeatures, level: int, col: int, row: int) -> bytes:
        """Magenta where the model is unsure: opacity the square of 1 - the top probability (stretched from the floor
        1/classes), so the unsure stand out and the fairly sure leave the map visible."""
        ids, top = self.tile(features, level, col, row)
        floor = 1 / len(self.classes)
        unsure = np.clip((1 - top) / (1 - floor), 0, 1)
        rgba = np.zeros((*ids.shape, 4), np.uint8)
        rgba[..., 0], rgba[..., 2] = 255, 255
        rgba[..., 3] = np.where(ids != 255, np.rint(220 * unsure ** 2), 0).astype(np.uint8)
        return rgba_png(rgba)

    def suggest(self, stack: Scene, taken: np.ndarray, k: int, seed: int) -> list[list[float]]:
        """k places to label next ([x, y] pixel centres, level 0): half drawn by how unsure the model is, spread
        out, half random.
        `stack`: the bands the model reads (the imagery's, then the context's if it blends them in)."""
        rng = np.random.default_rng(seed)
        rows, cols, features = self._sample(stack, rng)
        if not len(rows):
            return []
        sure = self.spec.top(self.head, features)[1]
        spread = max(self.spec.scales_m) / stack.res[0]
        unsure = unsure_spread(rows, cols, sure, taken, k // 2, spread, rng)
        rest = np.setdiff1d(np.arange(len(rows)), unsure)
        random = rng.choice(rest, min(len(rest), k - len(unsure)), replace=False)
        picked = np.concatenate([unsure, random])
        return [[float(cols[i]) + 0.5, float(rows[i]) + 0.5] for i in picked]

    def _sample(self, stack: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, columns and features of up to CANDIDATES valid pixels in blocks at random over the imagery."""
        res = stack.res[0]
        halo, side = self.spec.halo_px(res), SUGGEST_BLOCK_PX
        rows, cols, xs = [], [], []
        for _ in range(SUGGEST_BLOCKS):
            r0 = int(rng.integers(0, max(1, stack.height - side + 1)))
            c0 = int(rng.integers(0, max(1, stack.width - side + 1)))
            pixels, valid = stack.read(Window(c0 - halo, r0 - halo, side + 2 * halo, side + 2 * halo))
            core = np.s_[halo:halo + side, halo:halo + side]
            ok = valid[core]
            if not ok.any():
                continue
            r, c = np.nonzero(ok)
            rows.append(r + r0)
            cols.append(c + c0)
            xs.append(self.spec.compute(pixels, valid, res)[(slice(None), *core)][:, ok].T)
        if not rows:
            return np.zeros(0, int), np.zeros(0, int), np.zeros((0, len(self.spec.names)), np.float32)
        rows, cols, X = np.concatenate(rows), np.concatenate(cols), np.concatenate(xs)
        keep = rng.choice(len(rows), min(CANDIDATES, len(rows)), replace=False)
        return rows[keep], cols[keep], X[keep]

    def bundle(self, stack: Scene, display_bands: list[int]) -> Bundle:
        """The model as a pixel bundle reading every band of `stack` (the imagery's, then the context's when the
        model reads them), as `train --task pixels` makes: the bands it was cut from recorded as a manifest records
        them (`chip_source`), so predict picks them."""
        from landcover.train.run import chip_source

        n = stack.count
        rgb = [b - 1 for b in display_bands] if len(display_bands) == 3 else None
        dtype = str(np.dtype(stack.dtype))
        chip = {"size_px": TILE_PX, "res": float(stack.res[0]), "crs": stack.crs.to_string(), "dtype": dtype,
                "rgb_bands": rgb, "scenes": [Path(stack.paths[0]).stem],
                **chip_source({"format": "studio", "scenes": [{"paths": list(stack.paths), "dtype": dtype,
                                                              "bands": [list(b) for b in stack.band_sources]}]})}
        return Bundle("pixels", "filters", self.classes, InputSpec(tuple(range(n)), (0.0,) * n, (1.0,) * n,
                                                                   (0.0,) * n, (1.0,) * n, TILE_PX, resize=False),
                      chip, {"studio_labels_pixels": self.pixels, "model_version": self.version}, head=self.head,
                      task="pixels", pixels=self.spec)


class TileFeatures:
    """The pixel features of display tiles, kept (least recently used out) up to `budget_mb`: they do not change
    when the model does, so after a retraining the view is re-mapped by the head alone (on Zion's tiles the
    features are half of a tile's time). With a `context` (a bundle's probabilities), its bands are the last
    features."""

    def __init__(self, imagery: TileSource, spec: PixelFeatures, budget_mb: float = FEATURES_MB,
                 context: Context | None = None):
        self.imagery, self.spec, self.budget, self.context = imagery, spec, budget_mb * 2 ** 20, context
        self.kept: OrderedDict = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, level: int, col: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(features, TILE_PX, TILE_PX) float32 and validity of a tile, from the level's pixels."""
        key = (level, col, row)
        with self.lock:
            if key in self.kept:
                self.kept.move_to_end(key)
                return self.kept[key]
        imagery = self.imagery
        imagery.check(level, col, row)
        res = imagery.stack.res[0] * 2 ** level
        halo = self.spec.halo_px(res)
        pixels, valid = imagery.stack_window(level, Window(col * TILE_PX - halo, row * TILE_PX - halo,
                                                          TILE_PX + 2 * halo, TILE_PX + 2 * halo))
        core = np.s_[halo:halo + TILE_PX, halo:halo + TILE_PX]
        ok = np.ascontiguousarray(valid[core])
        features = np.zeros((len(self.spec.names), TILE_PX, TILE_PX), np.float32)
        if ok.any():
            alone = self.spec.without_context()
            features[:len(alone.names)] = alone.compute(pixels, valid, res)[(slice(None), *core)]
            if self.context is not None:
                features[len(alone.names):] = self.context.tile(imagery.stack, level,
                                                                Window(col * TILE_PX, row * TILE_PX, TILE_PX, TILE_PX))
        with self.lock:
            self.kept[key] = features, ok
            self.bytes += features.nbytes
            while self.bytes > self.budget and len(self.kept) > 1:
                dropped, _ = self.kept.popitem(last=False)[1]
                self.bytes -= dropped.nbytes
        return features, ok


def unsure_spread(rows: np.ndarray, cols: np.ndarray, sure: np.ndarray, taken: np.ndarray, k: int, spread: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Indices of k candidates (pixel `rows`, `cols`, the model's top probability `sure`) drawn at random without
    replacement, each with a chance in proportion to how unsure the model is there (1 - `sure`), taken in turn at
    least `spread` px (in rows or columns) from each other and from `taken` ((n, 2) rows and columns); where too
    few lie apart, the next drawn of the rest fill the k."""
    weight = np.clip(1 - np.asarray(sure, np.float64), 1e-9, None)
    order = np.argsort(-rng.random(len(weight)) ** (1 / weight), kind="stable")  # a weighted draw, in order
    placed = [tuple(p) for p in np.asarray(taken, float).reshape(-1, 2)]
    chosen: list[int] = []
    for i in order:
        r, c = rows[i], cols[i]
        if all(abs(r - a) >= spread or abs(c - b) >= spread for a, b in placed):
            chosen.append(int(i))
            placed.append((r, c))
            if len(chosen) == k:
                return np.array(chosen, np.int64)
    picked = set(chosen)
    rest = [int(i) for i in order if int(i) not in picked]
    return np.array(chosen + rest[:k - len(chosen)], np.int64)
