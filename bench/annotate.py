"""How many clicks a good map costs: a simulated annotator labels pixels for the pixel model, round after round.

Run from the repository root:  python bench/annotate.py [--out bench/results] [--rounds 10] [--clicks 20] [--seeds 3]
`--quick` (what CI runs): 3 rounds of 10 clicks, Zion only: it checks the bench works; not figures of record.

Data (real): Zion (Landsat 8 bands 2-5, 30 m) inside the park, labels NLCD 2011 grouped (nearest onto the
imagery's grid): the park's blocks of 32 x 32 px (960 m) are dealt alternately into a clickable half and a scored
half, like a chessboard. North Carolina (Landsat 7, 6 bands, 28.5 m): clicks fall inside the 34 labelled polygons
(their class), scores are the ~750 labelled points on the image.

A click is one labelled pixel, labelled with the truth. Each round adds `--clicks` clicks, retrains the pixel model
(landcover's: a forest on per-pixel band, index and filter features, computed once for the scene, as the
labelling page would) on every click so far and re-maps the scored pixels. Strategies, both starting from the same
random first round:
  random     clicks drawn at random from the clickable pixels;
  suggested  the model proposes half the round: among a random sample of clickable pixels, places drawn with a
             chance in proportion to how unsure it is (1 - its top probability), taken in turn at least `SPREAD_PX`
             from each other and from earlier clicks; the other half are random clicks (what it is sure of can be
             wrong: only exploring finds that);
and, on Zion, both strategies again with another model's class probabilities blended into the pixel model's, as
`landcover studio --bundle` does (their share chosen at each retraining on the clicks so far): a weak model's (the
frozen-feature tile classifier the tests share, trained on chips of the clickable half only, its probabilities
warped onto the imagery's grid as the studio warps them) and a strong one's (the reference below); and a
reference: the same model trained on the clickable half's labelled pixels (sampled per class as `train --task
pixels` does). Each curve is the mean over `--seeds` runs (the first round's clicks and the random draws differ by
seed): one run's curve moves by 0.02-0.05 from round to round. Timings: retraining on the round's clicks, and
re-mapping a 1-megapixel view from its features. Writes <out>/annotate.json and annotate.png (accuracy against
clicks, every strategy, both datasets).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, data_folder, load, machine, say, workspace, zion, zion_classifier, zion_images

from landcover.geo.raster import Scene
from landcover.models.pixelfeatures import PixelFeatures
from landcover.predict.evidence import scene_features
from landcover.studio.context import SHARES, fit_with_context, write_context
from landcover.studio.model import CANDIDATES, unsure_spread
from landcover.train.pixels import fit_pixel_head

BLOCK_PX = 32
SPREAD_PX = 8
"""Suggested clicks of one round lie at least this far from each other and from earlier clicks (240 m at 30 m): the
pixel model's largest filter scale, as the studio's suggestions."""
REFERENCE_PER_CLASS = 20_000


def scene_arrays(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's features (pixels, features) float32 and validity, computed once for the whole scene."""
    from rasterio.windows import Window

    spec = scene_features(scene)
    halo = spec.halo_px(scene.res[0])  # outside the raster is nodata, as the studio and predict read it
    pixels, valid = scene.read(Window(-halo, -halo, scene.width + 2 * halo, scene.height + 2 * halo))
    features = spec.compute(pixels, valid, scene.res[0])[:, halo:-halo, halo:-halo]
    return features.reshape(len(features), -1).T.copy(), valid[halo:-halo, halo:-halo].ravel()


def zion_task() -> dict:
    """Zion: features, NLCD grouped on the imagery's grid, clickable and scored pixels (a chessboard of blocks)."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import geometry_mask
    from rasterio.warp import Resampling, reproject

    from landcover.schemes import load_scheme

    folder = zion()
    scene = Scene.open(zion_images(folder))
    X, valid = scene_arrays(scene)
    with rasterio.open(folder / "nlcd2011.tif") as src:
        codes = np.zeros((scene.height, scene.width), np.uint16)
        reproject(rasterio.band(src, 1), codes, dst_transform=scene.transform, dst_crs=scene.crs,
                  resampling=Resampling.nearest)
    scheme = load_scheme("nlcd-grouped")
    truth = scheme.lookup()[codes].astype(np.int64).ravel()
    park = gpd.read_file(folder / "zion.gpkg").to_crs(scene.crs)
    inside = ~geometry_mask(park.geometry, (scene.height, scene.width), scene.transform)
    rows, cols = np.indices((scene.height, scene.width))
    board = ((rows // BLOCK_PX + cols // BLOCK_PX) % 2 == 0).ravel()
    known = valid & inside.ravel() & (truth < len(scheme.classes))
    return {"name": "zion", "X": X, "truth": truth, "clickable": np.flatnonzero(known & board),
            "scored": np.flatnonzero(known & ~board), "n_classes": len(scheme.classes), "width": scene.width,
            "scene": scene}


def tile_classifier_probabilities(task: dict, work: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """A tile classifier's class probabilities (pixels, classes) on the imagery's grid, as the studio's --bundle
    makes them: the classifier trained on chips of the clickable half only, its map's probabilities warped."""
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    from landcover.predict.raster import predict_raster

    scene = task["scene"]
    clickable = np.zeros(scene.height * scene.width, np.uint8)
    clickable[task["clickable"]] = 1
    grid = clickable.reshape(scene.height, scene.width)
    blocks = [shape(g) for g, v in shapes(grid, mask=grid.astype(bool), transform=scene.transform) if v == 1]
    gpd.GeoDataFrame(geometry=blocks, crs=scene.crs).to_file(work / "clickable.gpkg")
    bundle = zion_classifier(work, aoi=work / "clickable.gpkg")
    predict_raster(bundle, list(scene.paths), work / "map.tif", probabilities=True, progress=False,
                   log=lambda _: None)
    context = write_context(work / "map.probs.tif", scene, work / "context.tif")
    with rasterio.open(context.path) as src:
        return src.read().reshape(len(context.names), -1).T.astype(np.float32), context.names


def pixel_model_probabilities(task: dict) -> tuple[np.ndarray, tuple[str, ...]]:
    """The reference pixel model's class probabilities (pixels, classes), scaled to 0..254 as a probability raster
    holds them."""
    head = reference_model(task, np.random.default_rng(0), 0)[0]
    rows = range(0, len(task["X"]), 200_000)
    probs = np.vstack([head.predict_proba(task["X"][i:i + 200_000]) for i in rows])
    return np.rint(probs * 254).astype(np.float32), tuple(f"class_{i}" for i in range(probs.shape[1]))


def with_context(task: dict, probs: np.ndarray, names: tuple[str, ...]) -> dict:
    """The task with another model's class probabilities as the last features, blended as the studio's --bundle."""
    scored = task["scored"]
    return {**task, "X": np.hstack([task["X"], probs]), "spec": replace(scene_features(task["scene"]), context=names),
            "alone": float((probs[scored].argmax(1) == task["truth"][scored]).mean())}


def reference_model(task: dict, rng: np.random.Generator, seed: int) -> tuple[object, np.ndarray]:
    """The pixel model on the clickable half's labelled pixels (up to REFERENCE_PER_CLASS a class, weighted back to
    the classes' shares) and the pixels it was trained on."""
    truth = task["truth"][task["clickable"]]
    counts = np.bincount(truth, minlength=task["n_classes"])
    keep = np.minimum(1.0, REFERENCE_PER_CLASS / np.maximum(counts, 1))
    picked = task["clickable"][rng.random(len(truth)) < keep[truth]]
    return fit_pixel_head("rf", task["X"][picked], task["truth"][picked], task["n_classes"], seed,
                          sample_weight=1 / keep[task["truth"][picked]]), picked


def nc_task() -> dict:
    """North Carolina: clicks inside the labelled polygons, scores on the labelled points."""
    import geopandas as gpd
    from rasterio.features import rasterize

    folder = data_folder("landsat_nc", "lsat7_2000_10.tif", "landsat96_points.shp", "landsat96_polygons.shp")
    scene = Scene.open([str(folder / f"lsat7_2000_{b}.tif") for b in (10, 20, 30, 40, 50, 70)])
    X, valid = scene_arrays(scene)
    polygons = gpd.read_file(folder / "landsat96_polygons.shp").to_crs(scene.crs.to_wkt())
    names = sorted(set(polygons["label"]))
    burned = rasterize(zip(polygons.geometry, polygons["label"].map(names.index) + 1, strict=True),
                       out_shape=(scene.height, scene.width), transform=scene.transform, fill=0,
                       dtype="int32").ravel() - 1
    points = gpd.read_file(folder / "landsat96_points.shp").to_crs(scene.crs.to_wkt())
    points = points[points["label"].isin(names)]
    cols, rows = ~scene.transform * (points.geometry.x.values, points.geometry.y.values)
    rows, cols = np.floor(rows).astype(int), np.floor(cols).astype(int)
    on = (rows >= 0) & (rows < scene.height) & (cols >= 0) & (cols < scene.width)
    scored = rows[on] * scene.width + cols[on]
    truth = burned.copy()
    truth[scored] = points["label"].map(names.index).values[on]
    return {"name": "nc", "X": X, "truth": truth, "clickable": np.flatnonzero(valid & (burned >= 0)),
            "scored": scored[valid[scored]], "n_classes": len(names), "width": scene.width}


@dataclass
class Blended:
    """A head read through features with a context: its probabilities blended with the context's (as the studio's)."""

    head: object
    spec: PixelFeatures

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.spec.proba(self.head, X[:, :len(self.spec.names)])

    def predict_top(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.spec.top(self.head, X[:, :len(self.spec.names)])


def fit(task: dict, picked: np.ndarray, seed: int):
    """The pixel model on the picked pixels (with a context, the studio's: the share of the context's probabilities
    chosen on the picked pixels)."""
    if "spec" in task:
        head, spec, choice = fit_with_context(task["X"][picked], task["truth"][picked], task["n_classes"],
                                              task["spec"], seed)
        task.setdefault("shares", []).append(choice["share"])
        return Blended(head, spec)
    return fit_pixel_head("rf", task["X"][picked], task["truth"][picked], task["n_classes"], seed)


def accuracy(task: dict, head) -> float:
    scored = task["scored"]
    return float((head.predict_proba(task["X"][scored]).argmax(1) == task["truth"][scored]).mean())


def suggest(task: dict, head, taken: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k clicks: half drawn by how unsure the model is, spread out, half at random."""
    unsure = drawn_unsure(task, head, taken, k // 2, rng)
    rest = np.setdiff1d(task["clickable"], np.concatenate([taken, unsure]))
    return np.concatenate([unsure, rng.choice(rest, k - len(unsure), replace=False)])


def drawn_unsure(task: dict, head, taken: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k clickable pixels drawn by how unsure the model is, spread out (the next drawn of the rest where the
    clickable pixels are too few to keep them apart: NC's polygons): the studio's own choice (`unsure_spread`)."""
    pool = rng.choice(task["clickable"], min(CANDIDATES, len(task["clickable"])), replace=False)
    pool = np.setdiff1d(pool, taken)
    sure = head.predict_top(task["X"][pool])[1]
    width = task["width"]
    placed = np.c_[taken // width, taken % width]
    return pool[unsure_spread(pool // width, pool % width, sure, placed, k, SPREAD_PX, rng)]


def run_task(task: dict, rounds: int, clicks: int, seed: int, strategies: tuple[str, ...] = ("random", "suggested")
             ) -> dict:
    rng = np.random.default_rng([seed, 0])
    first = rng.choice(task["clickable"], clicks, replace=False)
    curves: dict[str, list[dict]] = {}
    for strategy in strategies:
        srng = np.random.default_rng([seed, 1])
        taken = first.copy()
        curve = []
        head = None
        for round_ in range(rounds):
            if round_:
                if strategy == "random":
                    more = srng.choice(np.setdiff1d(task["clickable"], taken), clicks, replace=False)
                else:
                    more = suggest(task, head, taken, clicks, srng)
                taken = np.concatenate([taken, more])
            t0 = time.perf_counter()
            head = fit(task, taken, seed)
            retrain = time.perf_counter() - t0
            curve.append({"clicks": len(taken), "accuracy": accuracy(task, head), "retrain_s": round(retrain, 3)})
            say(f"{task['name']} {strategy}: {len(taken)} clicks, accuracy {curve[-1]['accuracy']:.3f}")
        curves[strategy] = curve
    if "spec" in task:  # the context's runs: no reference, no timing
        return {"curves": curves}
    reference, picked = reference_model(task, rng, seed)
    view = task["X"][:1_000_000] if len(task["X"]) >= 1_000_000 else np.resize(task["X"], (1_000_000,
                                                                                         task["X"].shape[1]))
    t0 = time.perf_counter()
    head.predict_top(view)  # what the studio does for a tile: classes and how sure
    remap = time.perf_counter() - t0
    return {"clickable": len(task["clickable"]), "scored": len(task["scored"]), "curves": curves,
            "reference": {"pixels": len(picked), "accuracy": accuracy(task, reference)},
            "remap_1mpx_s": round(remap, 3)}


def mean_curves(runs: list[dict]) -> dict:
    """Per strategy and round the mean accuracy (and each run's), the slowest retraining."""
    return {strategy: [{"clicks": points[0]["clicks"],
                        "accuracy": float(np.mean([p["accuracy"] for p in points])),
                        "runs": [round(p["accuracy"], 4) for p in points],
                        "retrain_s": max(p["retrain_s"] for p in points)}
                       for points in zip(*(r["curves"][strategy] for r in runs), strict=True)]
            for strategy in runs[0]["curves"]}


def mean_of_runs(task: dict, rounds: int, clicks: int, seeds: int) -> dict:
    """`run_task` with seeds 0 .. seeds - 1: the mean curves, the reference, the slowest re-mapping."""
    runs = [run_task(task, rounds, clicks, seed) for seed in range(seeds)]
    return {**runs[0], "seeds": seeds, "curves": mean_curves(runs),
            "reference": {"pixels": runs[0]["reference"]["pixels"],
                          "accuracy": float(np.mean([r["reference"]["accuracy"] for r in runs]))},
            "remap_1mpx_s": max(r["remap_1mpx_s"] for r in runs)}


def figure(results: dict, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(results["tasks"]), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results["tasks"]), squeeze=False)[0]
    for ax, (name, r) in zip(axes, results["tasks"].items(), strict=True):
        for strategy, curve in r["curves"].items():
            ax.plot([c["clicks"] for c in curve], [c["accuracy"] for c in curve], marker="o", label=strategy)
        ax.axhline(r["reference"]["accuracy"], color="grey", ls="--", label="every clickable pixel")
        ax.set_title(name)
        ax.set_xlabel("clicks")
        ax.set_ylabel("accuracy on the scored pixels")
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="runs averaged per curve")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds of 10 clicks, one run, Zion only (not of record)")
    args = parser.parse_args(argv)
    rounds, clicks, seeds = (3, 10, 1) if args.quick else (args.rounds, args.clicks, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"quick": args.quick, "rounds": rounds, "clicks_per_round": clicks, "seeds": seeds, "load_before": load(),
               "machine": machine("scikit-learn", "numba"), "tasks": {}}
    for make in (zion_task,) if args.quick else (zion_task, nc_task):
        t0 = time.perf_counter()
        task = make()
        features_s = round(time.perf_counter() - t0, 1)
        say(f"{task['name']}: features of {len(task['X']):,} pixels in {features_s} s")
        result = results["tasks"][task["name"]] = mean_of_runs(task, rounds, clicks, seeds)
        result["features_s"] = features_s
        if task["name"] == "zion" and not args.quick:
            with workspace(out, False, "annotate-work-") as work:
                contexts = {"a tile classifier's probabilities": tile_classifier_probabilities(task, work),
                            "the reference's probabilities": pixel_model_probabilities(task)}
            result["contexts"] = {}
            for label, (probs, names) in contexts.items():
                context = with_context(task, probs, names)
                runs = [run_task(context, rounds, clicks, seed) for seed in range(seeds)]
                for strategy, curve in mean_curves(runs).items():
                    result["curves"][f"{strategy}, with {label}"] = curve
                shares = np.asarray(context["shares"])
                result["contexts"][label] = {"alone": context["alone"], "shares_chosen": {
                    f"{s:g}": round(float(np.mean(shares == s)), 3) for s in SHARES}}
                del context
    (out / "annotate.json").write_text(json.dumps(results, indent=2))
    figure(results, out / "annotate.png")
    for name, r in results["tasks"].items():
        last = {s: c[-1] for s, c in r["curves"].items()}
        print(f"{name}: after {last['random']['clicks']} clicks random {last['random']['accuracy']:.3f}, suggested "
              f"{last['suggested']['accuracy']:.3f}; every clickable pixel {r['reference']['accuracy']:.3f}; "
              f"retrain {max(c['retrain_s'] for c in r['curves']['suggested']):.2f} s, re-map 1 Mpx "
              f"{r['remap_1mpx_s']:.2f} s")
        for label, context in r.get("contexts", {}).items():
            print(f"{name}: with {label} (alone {context['alone']:.3f}) after {last['random']['clicks']} clicks random "
                  f"{r['curves'][f'random, with {label}'][-1]['accuracy']:.3f}, suggested "
                  f"{r['curves'][f'suggested, with {label}'][-1]['accuracy']:.3f}; the context's shares chosen "
                  f"{context['shares_chosen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
