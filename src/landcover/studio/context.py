"""A model bundle's class probabilities in the studio's pixel model (`landcover studio --bundle B`).

The bundle's map of the imagery is made, as the studio starts, with its probabilities (DIR/bundle-map.probs.tif,
one band a class, on the bundle's own grid: a tile classifier's one pixel a tile), then warped (bilinear) onto the
imagery's grid into DIR/context.tif (once: Zion's 1.6 Mpx in 0.4 s; a GeoTIFF, not a warping VRT, whose small
window reads cost 40 ms each). The pixel model reads it as bands after the imagery's (`PixelFeatures.context`),
and its class probabilities become the forest's (on the imagery's features) blended with the bundle's, the
bundle's share chosen at every retraining from the labels alone: of SHARES, the one whose blend has the lowest
Brier score on the labelled pixels, each classified by the trees that did not draw it (out of bag). A model with a
share names the file as an input: `landcover predict DIR/bundle --image IMAGERY... DIR/context.tif` makes the same
map as Map all. Display tiles above level 0 read the probabilities warped onto their level's grid directly.

Why a blend and not more features: on Zion's simulated annotator (bench/annotate.py, mean of 3 runs), the
probabilities of a strong model (the bench's reference, 0.759 alone) as 8 more features of the forest (kept where
its out-of-bag accuracy was at least as high; tried on 2026-12-07, not kept) gave 0.598 after 20 suggested clicks
and 0.726 after 200, below the model alone: a forest on tens of clicks, trying 10 of 110 features per split, cannot
learn to trust them. Blended, the map keeps 0.759 from the first click (the share 1 chosen in 97% of the
retrainings). A weak model's (a frozen-feature tile classifier, 0.586 alone) starts the curve a little higher
(0.606-0.619 against 0.585-0.613 after 20 clicks in two runs of the bench) and ends 0.01 below to level with the
model without it after 200 suggested clicks (shares mostly 1/4 and 1/2); random clicks with it run 0.01-0.03 below
random clicks without it: 20-200 clicks' out-of-bag votes are a noisy judge of the share (each row's come from
about a third of the trees, noisier than the whole forest's, which any smooth blend seems to improve). Choosing the
share by out-of-bag accuracy instead of the Brier score dipped in more rounds (0.661 and 0.674 against neighbours
near 0.70).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover.atomic import replacing
from landcover.geo.raster import Scene
from landcover.models.heads import Head
from landcover.models.pixelfeatures import PixelFeatures

CONTEXT_TIF = "context.tif"
STRIP_PX = 1024
"""Rows of the context warped at a time."""
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The context's shares of the class probabilities tried at each retraining."""


@dataclass(frozen=True)
class Context:
    """The bundle's probabilities (`probs`, its grid) and the same on the imagery's grid (`path`), one band a class."""

    probs: Path
    path: Path
    names: tuple[str, ...]

    def stack(self, imagery: Scene) -> Scene:
        """The imagery's bands then the context's, validity from the imagery's alone."""
        stack = Scene.open([*imagery.paths, str(self.path)], nodata=imagery.nodata_override)
        return replace(stack, valid_bands=imagery.count)

    def tile(self, imagery: Scene, level: int, window: Window) -> np.ndarray:
        """(classes, h, w) float32 over a window of a level: the context's own pixels at level 0 (what predict reads),
        the probabilities warped onto the level's grid above it."""
        if level == 0:
            return Scene.open([str(self.path)]).read(window)[0].astype(np.float32)
        size = 2 ** level
        x, y = imagery.transform * (window.col_off * size, window.row_off * size)
        grid = Affine(imagery.transform.a * size, 0, x, 0, imagery.transform.e * size, y)
        pixels, _ = Scene.open([str(self.probs)]).read_warped(imagery.crs, grid, int(window.width),
                                                              int(window.height), Resampling.bilinear)
        return pixels.astype(np.float32)


def write_context(probs: Path, imagery: Scene, out: Path) -> Context:
    """The probability raster `probs` warped (bilinear) onto the imagery's grid into the GeoTIFF `out` (tiled,
    compressed; strips of STRIP_PX rows, temp name, then rename)."""
    from rasterio.vrt import WarpedVRT

    with rasterio.open(probs) as src, WarpedVRT(src, crs=imagery.crs, transform=imagery.transform,
                                                 width=imagery.width, height=imagery.height,
                                                 resampling=Resampling.bilinear) as warped:
        names = tuple(d or f"class_{i + 1}" for i, d in enumerate(src.descriptions))
        profile = {"driver": "GTiff", "width": imagery.width, "height": imagery.height, "count": src.count,
                   "dtype": src.dtypes[0], "nodata": src.nodata, "crs": imagery.crs, "transform": imagery.transform,
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2}
        with replacing(out) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for row in range(0, imagery.height, STRIP_PX):
                window = Window(0, row, imagery.width, min(STRIP_PX, imagery.height - row))
                dst.write(warped.read(window=window), window=window)
            for band, name in enumerate(names, 1):
                dst.set_band_description(band, name)
    return Context(Path(probs).resolve(), Path(out).resolve(), names)


def fit_with_context(X: np.ndarray, y: np.ndarray, n_classes: int, spec: PixelFeatures, seed: int = 0
                     ) -> tuple[Head, PixelFeatures, dict]:
    """The pixel model on labelled pixels `X` (`spec`'s features, the context's last): the forest on the imagery's
    features, and the context's share of the probabilities (of SHARES) whose blend has the lowest Brier score on
    the labelled pixels, the forest's votes out of bag (ties: the smaller share). Returns the head, the features
    with that share (no context where it is 0) and each share's Brier score."""
    from landcover.train.pixels import fit_pixel_head

    with warnings.catch_warnings():  # a few clicks: some never left out of a tree's draw (no out-of-bag vote)
        warnings.simplefilter("ignore", UserWarning)
        head = fit_pixel_head("rf", X[:, :spec.head_columns], y, n_classes, seed, out_of_bag=True)
    votes = head.estimator.oob_decision_function_
    seen = np.isfinite(votes).all(axis=1) & (votes.sum(axis=1) > 0)
    forest = np.zeros((len(y), n_classes))
    forest[:, head.estimator.classes_] = np.nan_to_num(votes)
    truth = np.eye(n_classes)[y[seen]]
    brier = {}
    for share in SHARES:
        p = replace(spec, context_share=share).proba(_Votes(forest), X)[seen]
        brier[share] = float(((p - truth) ** 2).sum(axis=1).mean()) if seen.any() else 0.0
    share = min(SHARES, key=lambda s: (brier[s], s))
    used = replace(spec, context_share=share) if share else spec.without_context()
    return head, used, {"share": share, "brier": {f"{s:g}": round(v, 4) for s, v in brier.items()},
                        "labelled": int(seen.sum())}


@dataclass(frozen=True)
class _Votes:
    """The forest's out-of-bag probabilities of the labelled pixels, in place of its head (`proba` reads them)."""

    p: np.ndarray

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.p
