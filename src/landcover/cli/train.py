"""The training commands: `landcover train`, `evaluate` and `runs`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from landcover.bounds import COUNT
from landcover.errors import LandcoverError
from landcover.train.config import BOUNDS, HEADS, MODES

TRAIN_EXAMPLE = """examples:
  landcover train --manifest chips/ --mode features --arch efficientnet-lite0 --head logreg
  landcover train --manifest chips/ --arch efficientnet-lite0 --train-from last-block --epochs 10 --name lite0
  landcover train --config run.yaml --lr 3e-4          # flags override the config file
  landcover train --config run.yaml --name lite0 --resume
  torchrun --nproc_per_node 2 -m landcover train --config run.yaml   # data parallel (gloo on CPU)
The run folder (runs/<name>/) holds config.yaml, metrics.csv, curves.png, checkpoints/last and
checkpoints/best (safetensors + state.json) and bundle/, the model evaluate and predict need."""


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a land-cover classifier on a chip manifest",
                       description="Train a classifier on the chips of a manifest: frozen pretrained features "
                                   "with logistic regression or a random forest, or fine-tuning from a chosen "
                                   "depth. A YAML/JSON config holds the whole run; flags override it.",
                       epilog=TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file with the run's settings")
    p.add_argument("--resume", action="store_true", help="continue the run --name from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run --name if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("data")
    g.add_argument("--manifest", help="manifest.parquet (or its chips folder), already split")
    g.add_argument("--train-split", help="split to train on (default train)")
    g.add_argument("--val-split", help="split to validate on (default valid)")
    g.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N", help="1-based chip bands, in input order")
    g.add_argument("--rgb-bands", type=COUNT.parse, nargs=3, metavar="N",
                   help="positions (1-based, within --bands) of red, green, blue: they get the pretrained "
                        "RGB filters (default 1 2 3)")
    g.add_argument("--runs", help="folder of runs (default runs)")
    g.add_argument("--name", help="run name (default: mode-architecture-time)")
    g = p.add_argument_group("model")
    g.add_argument("--task", choices=["classification", "segmentation", "pixels"],
                   help="classification (a class per chip, default); segmentation (a network, a class per pixel, "
                        "from `landcover chips --layout pairs`); pixels (the pixel model: a classical head on "
                        "per-pixel band, index and multi-scale filter features, from the same pairs: seconds to "
                        "train)")
    g.add_argument("--mode", choices=MODES,
                   help="finetune (default): the whole network; features: frozen network features + a classical "
                        "head; spectral: band statistics and indices (NDVI, NDWI, ...) + a head, no network; fused: "
                        "frozen features and spectral features into one head; auto: spectral (rf), fused, spectral "
                        "(gbt) and finetune compared on the validation split, the best kept")
    g.add_argument("--band-roles", nargs="+", metavar="ROLE",
                   help="spectral and fused: each chip band's role (blue green red nir swir1 swir2, '-' for none), "
                        "when the chips' source files do not say")
    g.add_argument("--arch", dest="architecture",
                   help="classification: resnet18, resnet50, mobilenetv2 or efficientnet-lite0 (default); "
                        "segmentation: the decoder, unet (default), fpn or deeplabv3plus")
    g.add_argument("--encoder", help="segmentation: the decoder's backbone (default efficientnet-lite0; resnet18, "
                                     "resnet50, mobilenetv2)")
    g.add_argument("--loss", choices=["ce", "dice", "ce+dice"], help="segmentation: the loss (default ce+dice)")
    g.add_argument("--weights", help="imagenet (default), none, or a local .safetensors file")
    g.add_argument("--input-size", type=BOUNDS["input_size"].parse,
                   help="model input size in pixels (default: the backbone's)")
    g.add_argument("--head", choices=HEADS,
                   help="features, spectral, fused and pixels: the classical head: logistic regression, random forest "
                        "or gradient-boosted trees with balanced class weights (default rf for spectral and pixels, "
                        "else logreg)")
    g.add_argument("--sample-frac", type=BOUNDS["sample_frac"].parse,
                   help="features mode: fraction of training chips to use")
    g.add_argument("--scales", nargs="+", metavar="LENGTH",
                   help="pixels: the filters' scales, e.g. 30m 60m 120m 240m (default 1, 2, 4 and 8 pixels of the "
                        "imagery, kept in metres)")
    g.add_argument("--pixels-per-class", type=BOUNDS["pixels_per_class"].parse, metavar="N",
                   help="pixels: labelled pixels sampled per class (default 20000; all of a rarer class)")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--train-from", help="head, last-block, all (default), or a layer name")
    g.add_argument("--freeze-bn", action="store_true", default=None, help="keep BatchNorm statistics frozen")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="default adamw")
    g.add_argument("--lr", type=BOUNDS["lr"].parse, help="learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=BOUNDS["weight_decay"].parse, help="default 1e-4")
    g.add_argument("--schedule", choices=["none", "step", "exponential", "cosine"], help="default cosine")
    g.add_argument("--step-size", type=BOUNDS["step_size"].parse, metavar="EPOCHS",
                   help="step schedule: epochs between decays")
    g.add_argument("--gamma", type=BOUNDS["gamma"].parse, help="step/exponential schedule: decay factor (default 0.5)")
    g.add_argument("--epochs", type=BOUNDS["epochs"].parse, help="default 10")
    g.add_argument("--batch-size", type=BOUNDS["batch_size"].parse, help="default 32")
    g.add_argument("--workers", type=BOUNDS["workers"].parse, help="data-loading processes (default 0)")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no random flips and 90-degree rotations")
    g.add_argument("--class-weights", choices=["none", "balanced"], help="weight the loss against imbalance")
    g.add_argument("--early-stopping", type=BOUNDS["early_stopping"].parse, metavar="EPOCHS",
                   help="stop after this many epochs without a better validation macro-F1")
    g.add_argument("--checkpoint-every", type=BOUNDS["checkpoint_every"].parse, metavar="EPOCHS", help="default 1")
    g.add_argument("--seed", type=BOUNDS["seed"].parse, help="default 0")
    g.add_argument("--mlflow-uri", help="also log the run to this MLflow tracking URI")
    g.add_argument("--no-onnx", dest="onnx", action="store_false", default=None,
                   help="do not write the bundle's model.onnx (written by default when onnx is installed; "
                        "predict then runs on onnxruntime)")

    def run(args: argparse.Namespace) -> None:
        from landcover.train.trainer import train_model

        names = ("manifest", "train_split", "val_split", "bands", "rgb_bands", "runs", "name", "task", "mode",
                 "encoder", "loss", "architecture", "weights", "input_size", "head", "sample_frac", "train_from",
                 "freeze_bn", "optimizer", "lr", "weight_decay", "schedule", "step_size", "gamma", "epochs",
                 "batch_size", "workers", "augment", "class_weights", "early_stopping", "checkpoint_every", "seed",
                 "mlflow_uri", "onnx", "band_roles", "scales", "pixels_per_class")
        out = train_model(config=args.config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                          **{n: getattr(args, n) for n in names})
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        if "best_val_miou" in summary:
            print(f"validation mIoU {summary['best_val_miou']:.3f} (best epoch {summary['best_epoch']})")
        if "best_val_macro_f1" in summary:
            print(f"validation macro-F1 {summary['best_val_macro_f1']:.3f} (best epoch {summary['best_epoch']})")
        if "onnx" in summary:
            print(f"onnx: {summary['onnx']}")
        print(f"run: {out}  bundle: {out / 'bundle'}")

    p.set_defaults(run=run)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a model bundle on a split, or a class map against reference data",
                       description="A bundle on the chips of one split (--manifest): accuracy, per-class "
                                   "precision/recall/F1, macro and weighted F1, Cohen's kappa, mean posterior of the "
                                   "predicted class, the confusion matrix; report.json, confusion.png and a summary. "
                                   "A segmentation bundle is scored per pixel on pairs (IoU, mIoU, tiles.png). "
                                   "A class map (MAP.tif, --truth): the same scores against a reference raster "
                                   "(resampled nearest onto the map), polygons or points, plus per-class IoU and "
                                   "area-adjusted accuracies and class areas with 95% confidence intervals "
                                   "(Olofsson et al. 2014) in accuracy.json and areas.png.")
    p.add_argument("target", metavar="BUNDLE|MAP",
                   help="a model bundle folder, or a class map (a GeoTIFF, or the folder of a tiled map)")
    p.add_argument("--manifest", help="bundles: manifest.parquet or its chips folder")
    p.add_argument("--split", default="test", help="bundles: which split to score (default test)")
    p.add_argument("--truth", metavar="REFERENCE",
                   help="maps: a land-cover raster, or a vector layer of polygons or points")
    p.add_argument("--truth-field", metavar="F", help="maps, vector reference: the attribute with each class "
                                                      "(names, or codes with --scheme)")
    p.add_argument("--scheme", help="maps: the class scheme of the reference's codes (e.g. nlcd-grouped); classes "
                                    "are matched to the map's by name")
    p.add_argument("--out", help="report folder (default: eval-<split> beside the bundle; <map>.accuracy beside "
                                 "the map)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> None:
        from landcover.geo.raster import tiles_index

        target = Path(args.target)
        tiled = tiles_index(target) is not None  # a map's tiles (predict --tiles)
        if (target.is_file() or tiled) and not args.manifest:  # a map: bundles are folders
            from landcover.maps.accuracy import assess_map

            if not args.truth:
                raise LandcoverError("scoring a map needs --truth (a reference raster, polygons or points)", target)
            out = args.out or (target / "accuracy" if tiled else
                               target.with_name(f"{target.with_suffix('').name}.accuracy"))
            print(assess_map(target, args.truth, out, truth_field=args.truth_field, scheme=args.scheme).summary())
            return
        if not args.manifest:
            raise LandcoverError("scoring a bundle needs --manifest (and --split)", target)
        from landcover.bundle import bundle_task

        if bundle_task(args.target) in ("segmentation", "pixels"):
            from landcover.segment.evaluate import evaluate_segmentation, summary

            scores, out = evaluate_segmentation(args.target, args.manifest, args.split, args.out,
                                                progress=not args.quiet)
            print(summary(scores))
        else:
            from landcover.predict.chips import evaluate_bundle

            report, out = evaluate_bundle(args.target, args.manifest, args.split, args.out, progress=not args.quiet)
            print(report.summary())
        print(f"report: {out}")

    p.set_defaults(run=run)


def _runs_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list training runs, or compare some",
                       description="List the runs in a folder with their key settings and best validation "
                                   "scores; `landcover runs compare A B ...` prints a table and draws their "
                                   "validation curves on one figure.")
    p.add_argument("action", nargs="?", choices=["list", "compare"], default="list")
    p.add_argument("names", nargs="*", metavar="RUN", help="runs to compare (names in --runs, or folders)")
    p.add_argument("--runs", default="runs", help="folder of runs (default runs)")
    p.add_argument("--out", help="compare: the figure (default <runs>/compare.png)")

    def run(args: argparse.Namespace) -> None:
        from landcover.train.runs import compare, list_runs

        if args.action == "list":
            table = list_runs(args.runs)
            print(table.to_string(index=False) if len(table) else f"no runs in {args.runs}")
            return
        if len(args.names) < 1:
            raise LandcoverError("runs compare needs one or more runs")
        folders = [Path(n) if Path(n).is_dir() else Path(args.runs) / n for n in args.names]
        table, figure = compare(folders, args.out or Path(args.runs) / "compare.png")
        print(table.to_string(index=False))
        print(f"curves: {figure}")

    p.set_defaults(run=run)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register train, evaluate and runs."""
    _train_parser(sub)
    _evaluate_parser(sub)
    _runs_parser(sub)
