"""The pixel model (`train --task pixels`): a classical head on per-pixel filter features
(`landcover.models.pixelfeatures`), trained from the image/mask pairs of a split manifest.

Each pair's window is read from the imagery the pairs were cut from, with `halo_px` of context around it, so a
pixel's features are the ones a whole-raster prediction computes (not those of a 64 px chip cut off at its edges).
Labelled pixels are sampled per class (all of a class with fewer than `pixels_per_class`, a random share of the
others: stratified), the head is fitted on the training split's sample and scored on every labelled pixel of the
validation split (pixel accuracy, mIoU). The split is the manifest's own (`landcover split` by spatial blocks).
`fit_pixel_head` is the same fit on features and class ids in memory (the labelling page's scribbles).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from landcover.bundle import Bundle, InputSpec, save_bundle
from landcover.errors import LandcoverError
from landcover.geo.grid import parse_length
from landcover.models.heads import Head, fit_head
from landcover.models.pixelfeatures import PixelFeatures, default_scales
from landcover.progress import progress_bar
from landcover.segment.data import IGNORE, PairDataset, class_pixels, pair_windows
from landcover.segment.metrics import add_to_confusion, pixel_scores
from landcover.train.config import TrainConfig
from landcover.train.run import chip_facts, input_bands, provenance, scheme_classes
from landcover.train.runs import dump_json
from landcover.train.spectral import spectral_spec

HEAD_PARAMS = {"rf": {"n_estimators": 16, "max_depth": 12, "max_features": 0.3, "min_samples_leaf": 10,
                      "n_jobs": -1},
               "gbt": {"max_iter": 150, "learning_rate": 0.1, "early_stopping": False, "class_weight": None},
               "logreg": {}}
"""The heads' settings for per-pixel features (a hundred thousand rows and more). The pixels are weighted back to
their classes' shares (the sample is stratified). On Zion (bench/segmentation.py's split, 102 features, 92k pixels,
test blocks), pixel accuracy / mIoU over classes with >= 1,000 px / node visits per pixel (what mapping costs): 40
trees of leaves >= 10 pixels trying a tenth of the features per split, unbounded: 0.747 / 0.450 / 740; 24 trees cut
at depth 16: 0.744 / 0.447 / 372; 20 cut at depth 14 trying a quarter: 0.747 / 0.450 / 285; these 16 cut at depth
12 trying 30%: 0.746 / 0.449 / 203 (3.6x fewer visits than the first; 0.744 / 0.447 since nodata left the
filters' sums). 40,000 pixels per class instead of 20,000, scales to 16 px, all pairwise band ratios, smoothing the
probabilities or a second (auto-context) forest on the first's smoothed probabilities: within 0.004 either way;
boosted trees 0.701 / 0.421; rare classes weighted up (the weights 1 / share to the power 0.75 or 0.5 instead of
1): 0.741 / 0.446 and 0.733 / 0.442 (Developed's IoU 0.003 and 0.016)."""


FEW_ROWS = 20_000
"""Below this many labelled pixels (clicks and scribbles, not a training split) the forest is unbounded, trying the
square root of the features per split, of leaves of a pixel per 500 labelled (one pixel below 1,000: a few dozen
clicks must still split): 24 trees below 2,000 labelled, 16 from there, where the trees grow deep enough that
walking them is most of re-mapping the studio's view after a retraining. On Zion's simulated annotator
(bench/annotate.py, 3 runs) the large-sample forest (16 trees cut at depth 12) scored 0.01-0.03 less after 200
clicks, 40 trees no better than 24, 16 trees 0.005-0.009 less than 24 (and 0.015 less on NC's 1,791 scribbled
pixels). Zion, 3 random sets of 20 px patches each, accuracy on 200,000 NLCD pixels and seconds to map 1.31 Mpx, 24
trees of leaves of a pixel per 2,000 labelled against these: 2,000 px 0.734 / 1.24 s vs 0.741 / 0.80 s, 10,000 px
0.767 / 1.68 s vs 0.766 / 1.03 s."""


def pixel_spec(dataset: PairDataset, bands: tuple[int, ...], roles: list[str] | None, scales: list[str] | None,
               res: float) -> PixelFeatures:
    """The features a config asks for: the picked bands named and given roles as spectral bundles do (config
    band_roles, else what the source files say), at config scales (default 1, 2, 4, 8 pixels of `res`)."""
    first = dataset.root / dataset.frame["path"].iat[0]
    n = dataset.read(0)[0].shape[0]
    spectral = spectral_spec(dataset.info, n, first, roles)
    scales_m = [_metres(s, res) for s in scales] if scales else default_scales(res)
    return PixelFeatures.create([spectral.band_names[b] for b in bands], [spectral.roles[b] for b in bands],
                                scales_m)


def _metres(text: str, res: float) -> float:
    value, unit = parse_length(text, "--scales")
    return value * res if unit == "px" else value


def split_pixels(dataset: PairDataset, spec: PixelFeatures, bands: tuple[int, ...], keep: np.ndarray | None,
                 seed: int, progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, F) and class ids (n,) of a split's labelled pixels: a share `keep[class]` of each class (all
    with keep None)."""
    res = float(dataset.frame["res"].iat[0])
    halo = spec.halo_px(res)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i, pixels, valid in progress_bar(pair_windows(dataset, halo, bands), total=len(dataset), desc=desc,
                                         unit="tile", enabled=progress, leave=False):
        target = dataset.read(i)[1]
        chosen = target != IGNORE
        if keep is not None:
            chosen &= rng.random(target.shape) < keep[np.clip(target, 0, None)]
        if not chosen.any():
            continue
        features = spec.compute(pixels, valid, res)[:, halo:halo + target.shape[0], halo:halo + target.shape[1]]
        xs.append(features[:, chosen].T)
        ys.append(target[chosen])
    if not xs:
        raise LandcoverError(f"the {desc} split has no labelled pixel", dataset.path)
    return np.concatenate(xs), np.concatenate(ys)


def fit_pixel_head(kind: str, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0,
                   sample_weight: np.ndarray | None = None, out_of_bag: bool = False) -> Head:
    """A head fitted on per-pixel features: with the settings for many rows (HEAD_PARAMS), or a forest for a few
    (below FEW_ROWS: unbounded, its leaves growing with the rows). `out_of_bag` (a forest): each row's class
    probabilities from the trees that did not draw it are kept (`head.estimator.oob_decision_function_`, in the
    rows' order as given).

    The rows are fitted in an order of their own (`canonical_order`): the same labelled pixels give the same head
    whatever order they come in (a forest's draws are of row numbers), so the studio restarted on its labels, or a
    bench fitting the same clicks from its own arrays, gets the same model."""
    params = dict(HEAD_PARAMS[kind])
    if kind == "rf" and len(y) < FEW_ROWS:
        params.update(min_samples_leaf=max(1, len(y) // 500), n_estimators=24 if len(y) < 2000 else 16,
                      max_features="sqrt", max_depth=None)
    if out_of_bag:
        params["oob_score"] = True
    order = canonical_order(X, y)
    head = fit_head(kind, X[order], y[order], n_classes, seed=seed,
                    sample_weight=None if sample_weight is None else sample_weight[order], **params)
    if out_of_bag:
        head.estimator.oob_decision_function_ = head.estimator.oob_decision_function_[np.argsort(order)]
    return head


def canonical_order(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """An order of rows that depends on their values alone: by a fixed random projection of the features (distinct
    rows get distinct keys), then the class (equal rows of different classes). In float64, 65,536 rows at a time."""
    direction = np.random.default_rng(0).standard_normal(X.shape[1])
    key = np.concatenate([np.nan_to_num(np.asarray(X[i:i + 65_536], np.float64)) @ direction
                          for i in range(0, len(X), 65_536)] or [np.empty(0)])
    return np.lexsort((y, key))


def train_pixels(config: TrainConfig, out: Path, progress: bool) -> None:
    """Sample, fit, score on the validation split, write the bundle and summary.json."""
    started = time.perf_counter()
    train, val = PairDataset(config.manifest, config.train_split), PairDataset(config.manifest, config.val_split)
    classes = scheme_classes(train.info)
    first = train.read(0)[0]
    bands, rgb = input_bands(config, first.shape[0], train.path)
    res = float(train.frame["res"].iat[0])
    spec = pixel_spec(train, bands, config.band_roles, config.scales, res)
    counts = class_pixels(train)
    if (counts > 0).sum() < 2:
        raise LandcoverError(f"the {config.train_split!r} split labels {(counts > 0).sum()} class(es): a pixel model "
                             "needs at least two", train.path)
    keep = np.minimum(1.0, config.pixels_per_class / np.maximum(counts, 1))
    X, y = split_pixels(train, spec, bands, keep, config.seed, progress, config.train_split)
    sampled = time.perf_counter()
    head = fit_pixel_head(config.head, X, y, len(classes), config.seed, sample_weight=1 / keep[y])
    fitted = time.perf_counter()
    Xv, yv = split_pixels(val, spec, bands, None, config.seed, progress, config.val_split)
    confusion = add_to_confusion(np.zeros((len(classes),) * 2, np.int64), yv,
                                 head.predict_proba(Xv).argmax(1))
    scores = pixel_scores(confusion, [c["name"] for c in classes])
    n = len(bands)
    bundle = Bundle("pixels", "filters", classes, InputSpec(bands, (0.0,) * n, (1.0,) * n, (0.0,) * n, (1.0,) * n,
                                                           int(first.shape[-1]), resize=False),
                    chip_facts(train.frame, first, rgb, train.info),
                    provenance(config, train.path, len(train), len(val)), head=head, task="pixels", pixels=spec)
    save_bundle(bundle, out / "bundle")
    dump_json(out / "summary.json", {
        "task": "pixels", "head": config.head, "features": len(spec.names), "scales_m": list(spec.scales_m),
        "train_pixels": len(y), "train_pixels_per_class": {c["name"]: int((y == k).sum())
                                                                 for k, c in enumerate(classes)},
        "val_pixels": len(yv), "val_pixel_accuracy": scores["pixel_accuracy"], "val_miou": scores["miou"],
        "val_iou": scores["iou"], "seconds": {"features": round(sampled - started, 2),
                                             "fit": round(fitted - sampled, 2),
                                             "total": round(time.perf_counter() - started, 2)}})
    if progress:
        print(f"validation pixel accuracy {scores['pixel_accuracy']:.3f}, mIoU {scores['miou']:.3f} on "
              f"{len(yv):,} pixels; {len(y):,} training pixels, {len(spec.names)} features; "
              f"{time.perf_counter() - started:.1f} s")
