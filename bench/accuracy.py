"""Accuracy on real datasets: spectral RF, frozen features, fused, fine-tuning, mode auto and TorchGeo, over seeds.

Run from the repository root:  python bench/accuracy.py [--datasets zion nc-points nc-polygons] [--seeds 5]
[--epochs 10] [--input-size 64] [--out bench/results] [--quick]. Builds each dataset's chips and block split once
with the `landcover` command, then for every training seed: `landcover train --mode auto` (whose candidates are
the spectral, fused, spectral-gbt and fine-tune rows: random forest on band statistics and indices; logistic
regression on frozen Lite0 + spectral features; gradient-boosted trees on the spectral features; the whole network
fine-tuned), `--mode features` (frozen Lite0 + logistic regression) and TorchGeo 0.8's ClassificationTask
(bench/train.py's setup: same chips, inputs, start weights, optimizer and epochs). Each bundle is scored on the
test split with `landcover evaluate`, and against the spectral forest's predictions in 1000 paired bootstrap
resamples of the test chips (the "> RF" column: the share of resamples in which the method's macro-F1 is higher).
Writes <out>/accuracy.json after every seed (a cut run keeps what it measured) and prints mean, spread and the
goals. `--quick` (what CI runs) checks the bench works: 1 seed, 1 epoch at 32 px, the Zion chips inside the park
and the North Carolina points.

Datasets:
- zion: bench/train.py's: Landsat 8 b2-b5, 480 m chips (16 px) labelled by NLCD 2011 (nlcd-grouped, purity 0.75),
  blocks of 4 tiles split 70:15:15.
- nc-points: the 1,000 labelled points of the GRASS North Carolina sample (7 classes), a 7 x 7 px (210 m) chip of
  the 6 Landsat 7 bands centred on each; blocks of 4 tiles split 70:15:15.
- nc-polygons: the 34 labelled polygons, rasterized into 5 x 5 px (150 m) chips (purity 0.6); the same split.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from common import DATA, ROOT, landcover_cli, machine, say
from train import Settings, class_names, scores, torchgeo_run

from landcover.evaluate import read_report, share_better
from landcover.train.data import ChipDataset

NC_BANDS = ("10", "20", "30", "40", "50", "70")
"""Landsat 7 ETM+ bands 1, 2, 3, 4, 5, 7 (GRASS names lsat7_2000_NN): blue, green, red, NIR, SWIR1, SWIR2."""
ZION_BANDS = ("b2", "b3", "b4", "b5")
RGB_BANDS = ("3", "2", "1")
"""Both datasets start with blue, green, red: their positions of red, green and blue."""
SPLIT = ["--blocks", "4", "--ratios", "70:15:15", "--no-plot"]
METHODS = {
    "spectral": "spectral (band stats + indices) -> RF",
    "spectral-gbt": "spectral -> gradient-boosted trees",
    "features": "frozen lite0 -> logreg",
    "fused": "frozen lite0 + spectral -> logreg",
    "finetune": "fine-tune all",
    "auto": "landcover train --mode auto",
    "torchgeo": "TorchGeo ClassificationTask (all)",
}
OURS = ("spectral", "spectral-gbt", "features", "fused", "finetune")
"""landcover's methods a user chooses; auto is scored against the best of them."""


def dataset_commands(name: str, quick: bool) -> list[str]:
    """The `landcover chips` arguments of a dataset (without --out)."""
    if name == "zion":
        zion = DATA / "zion"
        subset = ["--tile-size", "960m", "--aoi", str(zion / "zion.gpkg")] if quick else ["--tile-size", "480m"]
        return ["chips", "--image", *[str(zion / f"landsat_{b}.tif") for b in ZION_BANDS], "--labels",
                str(zion / "nlcd2011.tif"), "--scheme", "nlcd-grouped", *subset, "--rule", "purity:0.75",
                "--format", "tif", "--quiet"]
    nc = DATA / "landsat_nc"
    images = [str(nc / f"lsat7_2000_{b}.tif") for b in NC_BANDS]
    if name == "nc-points":
        return ["chips", "--image", *images, "--labels-vector", str(nc / "landsat96_points.shp"), "--burn-attribute",
                "label", "--tile-size", "7px", "--format", "tif", "--quiet"]
    return ["chips", "--image", *images, "--labels-vector", str(nc / "landsat96_polygons.shp"), "--burn-attribute",
            "label", "--tile-size", "5px", "--rule", "purity:0.6", "--format", "tif", "--quiet"]


def make_dataset(name: str, work: Path, quick: bool) -> tuple[Path, dict]:
    """Chips and a block split for a dataset; what they hold."""
    chips = work / name
    argv = [*dataset_commands(name, quick), "--out", str(chips)]
    missing = [a for a in argv if a.startswith(str(DATA)) and not Path(a).exists()]
    if missing:
        sys.exit(f"bench/accuracy.py: the data is not there: {', '.join(missing)} (read from ../shared/data or "
                 f"$LANDCOVER_DATA; see its README). Nothing was measured.")
    landcover_cli(argv)
    landcover_cli(["split", str(chips), *SPLIT])
    frame = ChipDataset(chips).frame
    counts = {str(k): {str(s): int(n) for s, n in g["split"].value_counts().items()}
              for k, g in frame.groupby("label")}
    return chips / "manifest.parquet", {"command": " ".join(["landcover", *argv]), "chips": len(frame),
                                        "size_px": int(frame["size_px"].iat[0]), "class_counts": counts,
                                        "split_sizes": {str(k): int(v) for k, v in frame["split"].value_counts()
                                                        .items()}}


def scored(bundle: Path, manifest: Path, out: Path) -> dict:
    """`landcover evaluate` of a bundle on the test split: the scores bench/train.py reports, and the predictions."""
    landcover_cli(["evaluate", str(bundle), "--manifest", str(manifest), "--split", "test", "--out", str(out),
                   "--quiet"])
    predictions = pd.read_csv(out / "predictions.csv", dtype=str)[["chip_id", "true", "predicted"]]
    return {**scores(read_report(out)), "test_predictions": predictions.to_dict("list")}


def paired_shares(rows: dict[str, dict]) -> None:
    """Each method's share of 1000 paired bootstrap resamples of the test chips in which its macro-F1 is higher
    than the spectral forest's (as `--mode auto` compares candidates on the validation chips); drops the
    per-chip predictions."""
    found = {m: pd.DataFrame(r.pop("test_predictions")).set_index("chip_id") for m, r in rows.items()
             if "test_predictions" in r}
    base = found["spectral"]
    names = sorted(set(base["true"]) | {c for f in found.values() for c in f["predicted"]})
    ids = {name: i for i, name in enumerate(names)}
    y, reference = base["true"].map(ids).to_numpy(), base["predicted"].map(ids).to_numpy()
    for method, frame in found.items():
        if method != "spectral":
            frame = frame.loc[base.index]
            rows[method]["test_share_better_than_spectral"] = share_better(
                y, reference, frame["predicted"].map(ids).to_numpy(), len(names))


def one_seed(manifest: Path, runs: Path, s: Settings, torchgeo: bool) -> dict[str, dict]:
    """Every method trained with one seed, scored on the test split."""
    common = ["--manifest", str(manifest), "--runs", str(runs), "--arch", "efficientnet-lite0", "--rgb-bands",
              *RGB_BANDS, "--input-size", str(s.input_size), "--batch-size", str(s.batch_size), "--seed", str(s.seed),
              "--lr", str(s.lr), "--weight-decay", str(s.weight_decay), "--epochs", str(s.epochs), "--quiet",
              "--no-onnx"]
    rows: dict[str, dict] = {}
    say(f"  seed {s.seed}: landcover train --mode auto (spectral, fused, spectral-gbt, finetune) ...")
    auto_s, _ = landcover_cli(["train", *common, "--name", "auto", "--mode", "auto"])
    summary = json.loads((runs / "auto" / "summary.json").read_text())
    for mode, candidate in summary["candidates"].items():
        folder = runs / "auto" / "candidates" / mode
        rows[mode] = {"train_s": candidate["train_s"], "val_macro_f1": candidate["val_macro_f1"],
                      **scored(folder / "bundle", manifest, folder / "eval-test")}
    rows["auto"] = {"train_s": auto_s, "chosen": summary["chosen"], "val_macro_f1": summary["best_val_macro_f1"],
                    **scored(runs / "auto" / "bundle", manifest, runs / "auto" / "eval-test")}
    say(f"  seed {s.seed}: frozen features + logreg ...")
    features_s, _ = landcover_cli(["train", *common, "--name", "features", "--mode", "features"])
    rows["features"] = {"train_s": features_s, **scored(runs / "features" / "bundle", manifest,
                                                         runs / "features" / "eval-test")}
    if torchgeo:
        say(f"  seed {s.seed}: TorchGeo ...")
        tg = torchgeo_run(manifest, runs / "torchgeo", class_names(manifest), s)
        rows["torchgeo"] = tg if "skipped" in tg else {k: tg[k] for k in ("train_s", *rows["features"]) if k in tg}
    paired_shares(rows)
    return rows


def summarise(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Per method: mean, standard deviation, min and max of each score over the seeds, and mean per-class F1."""
    out = {}
    for method in METHODS:
        runs = [r[method] for r in per_seed if method in r and "skipped" not in r[method]]
        if not runs:
            continue
        row: dict[str, Any] = {"seeds": len(runs)}
        for key in ("test_accuracy", "test_macro_f1", "test_macro_f1_present", "train_s",
                    "test_share_better_than_spectral"):
            if key not in runs[0]:
                continue
            values = [float(r[key]) for r in runs]
            row[key] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values),
                        "max": max(values), "values": values}
        classes = sorted({c for r in runs for c in r["per_class"]})
        row["per_class_f1"] = {c: statistics.fmean(r["per_class"][c]["f1"] for r in runs if c in r["per_class"])
                               for c in classes}
        if method == "auto":
            row["chosen"] = [r["chosen"] for r in runs]
        out[method] = row
    return out


def goals(summary: dict[str, dict]) -> list[dict]:
    """Our best method against the spectral RF and TorchGeo, beyond the seed spread (the difference of mean macro-F1
    over the sum of both standard deviations), and auto against our best."""
    ours = {m: summary[m] for m in OURS if m in summary}
    best = max(ours, key=lambda m: ours[m]["test_macro_f1"]["mean"])
    mean, spread = ours[best]["test_macro_f1"]["mean"], ours[best]["test_macro_f1"]["std"]
    out = []
    for other in ("spectral", "torchgeo"):
        if other in summary and other != best:
            theirs = summary[other]["test_macro_f1"]
            margin = mean - theirs["mean"]
            out.append({"name": f"best ({best}) - {other}", "value": margin, "spread": spread + theirs["std"],
                        "met": bool(margin > spread + theirs["std"])})
            if other == "spectral":  # the same question asked of the test chips: how sure is the difference?
                out[-1]["test_share"] = ours[best]["test_share_better_than_spectral"]["mean"]
        elif other == best:
            out.append({"name": f"best is {other}", "value": 0.0, "spread": spread, "met": False})
    if "auto" in summary:
        auto = summary["auto"]["test_macro_f1"]
        margin = auto["mean"] - mean
        out.append({"name": f"auto - best ({best})", "value": margin, "spread": spread + auto["std"],
                    "met": bool(margin >= -(spread + auto["std"]))})
    return out


def table(name: str, result: dict) -> str:
    """One dataset's figures as text."""
    lines = [f"{name}: {result['dataset']['chips']} chips of {result['dataset']['size_px']} px, "
             f"splits {result['dataset']['split_sizes']}, {len(result['per_seed'])} seed(s)",
             f"  {'method':<40} {'accuracy':>15} {'macro-F1':>15} {'present':>15} {'train s':>8} {'> RF':>5}"]
    for method, label in METHODS.items():
        row = result["summary"].get(method)
        if row is None:
            continue
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in ("test_accuracy", "test_macro_f1",
                                                                       "test_macro_f1_present")]
        extra = f"  chose {', '.join(row['chosen'])}" if "chosen" in row else ""
        share = row.get("test_share_better_than_spectral", {}).get("mean")
        lines.append(f"  {label:<40} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {row['train_s']['mean']:>8.1f} "
                     f"{'' if share is None else f'{share:.2f}':>5}" + extra)
    best = max((m for m in OURS if m in result["summary"]),
               key=lambda m: result["summary"][m]["test_macro_f1"]["mean"])
    per_class = result["summary"][best]["per_class_f1"]
    lines.append(f"  per-class F1 of {best}: " + ", ".join(f"{c} {f:.2f}" for c, f in per_class.items()))
    for g in result["goals"]:
        sure = f"; better on {g['test_share']:.0%} of test resamples" if "test_share" in g else ""
        lines.append(f"  goal {g['name']}: {g['value']:+.3f} (spread {g['spread']:.3f}{sure}) "
                     f"{'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build each dataset, train every method for every seed, write accuracy.json, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=["zion", "nc-points", "nc-polygons"],
                        default=["zion", "nc-points", "nc-polygons"])
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1 (default 5)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    parser.add_argument("--input-size", type=int, default=64, help="network input size in pixels (default 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--skip-torchgeo", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch at 32 px, small datasets")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.input_size = 1, 1, 32
        args.datasets = [d for d in args.datasets if d != "nc-polygons"]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "accuracy.json"
    began = time.perf_counter()
    results: dict[str, Any] = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                               "machine": machine("torch", "timm", "torchgeo", "scikit-learn"), "quick": args.quick,
                               "settings": {"seeds": args.seeds, "epochs": args.epochs, "input_size": args.input_size,
                                            "batch_size": args.batch_size, "lr": 1e-3, "weight_decay": 1e-4},
                               "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="accuracy-work-", dir=args.out) as work:
        for name in args.datasets:
            say(f"{name}: chips and split ...")
            manifest, info = make_dataset(name, Path(work), args.quick)
            result = results["datasets"][name] = {"dataset": info, "per_seed": []}
            for seed in range(args.seeds):
                s = Settings(args.epochs, args.input_size, args.batch_size, 1e-3, 1e-4, seed, "none")
                runs = Path(work) / f"{name}-seed{seed}"
                result["per_seed"].append(one_seed(manifest, runs, s, not args.skip_torchgeo))
                result["summary"] = summarise(result["per_seed"])
                result["goals"] = goals(result["summary"])
                results["total_s"] = time.perf_counter() - began
                path.write_text(json.dumps(results, indent=2, default=str))
            print(table(name, result), flush=True)
    print(f"total bench time {time.perf_counter() - began:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
