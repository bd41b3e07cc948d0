"""The `landcover` command: parses arguments, calls the library, prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from landcover import __version__
from landcover.errors import LandcoverError

CHIPS_EXAMPLE = """example:
  landcover chips --image zion/landsat_b2.tif zion/landsat_b3.tif zion/landsat_b4.tif zion/landsat_b5.tif \\
      --labels zion/nlcd2011.tif --scheme nlcd-grouped --tile-size 480m \\
      --rule points:3 --aoi zion/zion.gpkg --region zion --out chips/

Files after one --image are stacked as bands in the order given; repeat --image for
another scene (e.g. a neighbouring tile in another UTM zone): all scenes are cut on
one grid. A killed run, rerun with the same arguments, resumes where it stopped."""


def _chips_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chips", help="cut imagery + a land-cover raster into a labelled chip dataset",
                       description="Cut imagery into tiles on a metric grid, label each tile from a land-cover "
                                   "raster (resampled across CRSs), keep the tiles the rules accept, and write "
                                   "chips in class folders with a GeoParquet manifest.",
                       epilog=CHIPS_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--image", action="append", nargs="+", required=True, metavar="RASTER",
                   help="imagery raster(s) of one scene, stacked as bands in this order; repeat for more scenes")
    g.add_argument("--bands", type=int, nargs="+", metavar="N",
                   help="pick and order bands, 1-based over the stack (default: all)")
    which = g.add_mutually_exclusive_group(required=True)
    which.add_argument("--labels", metavar="RASTER", help="land-cover raster (integer codes)")
    which.add_argument("--labels-vector", metavar="VECTOR",
                       help="labels from a vector layer (GeoJSON, GeoPackage, Shapefile; any CRS): polygons are "
                            "rasterized per tile; points each get a tile centred on them")
    g.add_argument("--burn-attribute", metavar="FIELD",
                   help="vector labels: the attribute holding class codes or class names")
    g.add_argument("--burn-value", type=int, metavar="CODE", help="vector labels: burn every feature as this code")
    g.add_argument("--class-name", default="feature",
                   help="with --burn-value and no --scheme: the class's name (default 'feature')")
    g.add_argument("--all-touched", action="store_true",
                   help="vector labels: burn every pixel a polygon touches, not only those whose centre it covers")
    g.add_argument("--strict", action="store_true", help="vector labels: fail on invalid geometries (default: "
                                                          "skip them and report how many)")
    g.add_argument("--scheme",
                   help="class scheme: a built-in name (see `landcover schemes`) or a YAML/JSON file (default: "
                        "nlcd for rasters; for vectors, one class per distinct value)")
    g.add_argument("--aoi", metavar="VECTOR", help="keep only tiles wholly inside these polygons")
    g.add_argument("--region", action="append", metavar="NAME",
                   help="region recorded for splitting (once for all scenes, or once per scene; "
                        "default: the scene's file name)")
    g = p.add_argument_group("grid")
    g.add_argument("--tile-size", default="480m", help="tile side in metres ('480m') or pixels ('16px')")
    g.add_argument("--overlap", default="0px", help="overlap between neighbouring tiles (m or px)")
    g.add_argument("--padding", default="0px",
                   help="context added around each tile in the chip (m or px); rules judge the core tile")
    g.add_argument("--crs", help="grid CRS (default: the first scene's; geographic imagery gets its UTM zone)")
    g.add_argument("--resolution", type=float, help="grid pixel size in CRS units (default: the imagery's)")
    g.add_argument("--resampling", default="bilinear",
                   help="imagery resampling where it must be warped onto the grid (labels: always nearest)")
    g = p.add_argument_group("rules")
    g.add_argument("--rule", action="append", metavar="RULE",
                   help="points:K (all K x K sample points agree) and/or purity:P (majority share >= P); "
                        "default points:3 for class folders from a raster or polygons, none for pairs")
    g.add_argument("--max-nodata", type=int, default=0, metavar="N",
                   help="reject tiles with more than N nodata imagery pixels (default 0)")
    g.add_argument("--keep", type=float, default=1.0, metavar="F", help="keep a random fraction F of passing tiles")
    g.add_argument("--seed", type=int, default=0, help="seed for --keep (default 0)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--layout", default="folders", choices=["folders", "pairs"],
                   help="folders: <class>/<key> chips for classification; pairs: images/<key>.tif + "
                        "labels/<key>.tif masks for segmentation (ArcGIS 'Classified Tiles')")
    g.add_argument("--format", choices=["png", "tif"],
                   help="png: 8-bit, percentile-stretched per scene; tif: all bands, native dtype, LZW, "
                        "georeferenced (default: png for folders, tif for pairs)")
    g.add_argument("--min-labelled", type=float, default=0.0, metavar="F",
                   help="pairs: reject tiles whose mask has less than a fraction F of labelled pixels")
    g.add_argument("--keep-empty", action="store_true", help="pairs: also keep tiles with no labelled pixel")
    g.add_argument("--overwrite", action="store_true", help="replace a finished chips run in --out")
    g = _engine_args(p)
    g.add_argument("--block-tiles", type=int, metavar="N",
                   help="a task is a block of N x N tiles, read and labelled together (default: sized for "
                        "about 32 tasks)")
    p.set_defaults(run=_run_chips)


def _engine_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The engine options every parallel command shares; returns their group."""
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "process", "ray"],
                   help="local (one process), process (a pool of --workers), ray (a Ray cluster)")
    g.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    g.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return g


def _run_chips(args: argparse.Namespace) -> None:
    from landcover.chips import make_chips
    from landcover.engine import Engine
    from landcover.grid import make_grid, parse_length
    from landcover.labels import LabelRaster, read_vector_labels
    from landcover.raster import Scene
    from landcover.rules import Rules
    from landcover.schemes import load_scheme

    engine = Engine.choose(args.engine, args.workers, args.ray_address)
    scenes = [Scene.open(paths, args.bands) for paths in args.image]
    regions = args.region
    if regions and len(regions) not in (1, len(scenes)):
        raise LandcoverError(f"--region given {len(regions)} times for {len(scenes)} scenes: give it once or "
                             "once per scene")
    if regions and len(regions) == 1:
        regions = regions * len(scenes)
    grid = make_grid(scenes, parse_length(args.tile_size, "tile size"), parse_length(args.overlap, "overlap"),
                     parse_length(args.padding, "padding"), args.crs, args.resolution)
    if args.labels:
        scheme = load_scheme(args.scheme or "nlcd")
        labels = LabelRaster.open(args.labels)
    else:
        scheme = load_scheme(args.scheme) if args.scheme else None
        labels, scheme, skipped = read_vector_labels(args.labels_vector, grid.crs, scheme, args.burn_attribute,
                                                     args.burn_value, args.class_name, args.strict,
                                                     args.all_touched)
        if skipped:
            print(f"warning: {args.labels_vector}: skipped {skipped} invalid geometries (--strict to fail)",
                  file=sys.stderr)
    classify = args.layout == "folders" and not (args.labels_vector and labels.is_points)
    rules = Rules.parse(args.rule, args.max_nodata, args.keep, args.seed, args.min_labelled, args.keep_empty,
                        default=("points:3",) if classify else ())
    if not args.quiet:
        print(f"grid: {grid.tile} px tiles of {grid.res:g} m ({grid.tile * grid.res:g} m) on "
              f"{grid.crs.to_string()}, stride {grid.stride} px, padding {grid.pad} px", file=sys.stderr)
    fmt = args.format or ("tif" if args.layout == "pairs" else "png")
    result = make_chips(scenes, labels, scheme, grid, rules, args.out, regions=regions, aoi=args.aoi,
                        fmt=fmt, layout=args.layout, resampling=args.resampling, engine=engine,
                        overwrite=args.overwrite, progress=not args.quiet, block_tiles=args.block_tiles)
    print(result.summary())


def _run_schemes(args: argparse.Namespace) -> None:
    from landcover.schemes import builtin_schemes, load_scheme

    for name in builtin_schemes():
        scheme = load_scheme(name)
        print(f"{name}: {scheme.description} ({len(scheme.classes)} classes)")
        if args.verbose:
            for c in scheme.classes:
                print(f"  {c.id:>3}  {c.name:<30} {c.color}  codes {', '.join(map(str, c.codes))}")


def _run_demo(args: argparse.Namespace) -> None:
    from landcover.demo import run_demo

    run_demo(args.data, args.out, progress=not args.quiet)


SPLIT_EXAMPLE = """examples:
  landcover split chips/manifest.parquet --ratios 80:20            # whole regions to train or valid
  landcover split chips/ --by scene --ratios 70:20:10
  landcover split chips/ --blocks 4 --ratios 80:10:10 --balance cap:500 --materialize dataset/
  landcover split chips/ --random --ratios 0.9:0.1 --seed 3

Writes the split into the manifest (column `split`: train, valid, test, or unused for chips
held out by --balance or by the overlap guard), and split.json + split_counts.png next to it.
The same inputs and --seed give the same split."""


def _split_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="split a chip manifest into train/valid/test without spatial leakage",
                       description="Assign every chip of a manifest to train, valid (and test): whole groups "
                                   "(regions, or spatial blocks of tiles) go to one split, chosen so each split's "
                                   "size and class mix approach the ratios; chips that overlap a chip of another "
                                   "split are held out; classes can be balanced.",
                       epilog=SPLIT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", metavar="MANIFEST", help="manifest.parquet, or the chips folder holding it")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--by", "--by-column", dest="by", default="region", metavar="COLUMN",
                      help="keep chips sharing a value of this manifest column in one split (default: region; "
                           "e.g. scene, or a county column you added)")
    mode.add_argument("--blocks", type=int, metavar="N",
                      help="square blocks N tiles wide go whole to one split (a chip goes with the block holding "
                           "its upper-left corner): for a single scene, or too few regions")
    mode.add_argument("--random", action="store_true",
                      help="chips at random, stratified by class (neighbours may land in different splits)")
    p.add_argument("--ratios", default="80:20", metavar="R",
                   help="train:valid or train:valid:test, as percents or fractions summing to 100 or 1 "
                        "(default 80:20)")
    p.add_argument("--balance", metavar="HOW",
                   help="min: down-sample every class to the rarest class's count; cap:N: at most N chips per "
                        "class; applied within every split; the chips left out become 'unused'")
    p.add_argument("--seed", type=int, default=0, help="seed for the search, random splits and balancing (default 0)")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="with --by/--blocks, keep chips that overlap a chip of another split (only report them); "
                        "by default one chip of every such pair becomes 'unused'")
    p.add_argument("--materialize", metavar="DIR",
                   help="also build DIR/train/<class>/ ... (or DIR/train/images + labels for pairs) of hard "
                        "links (copies across file systems)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw split_counts.png")

    def run(args: argparse.Namespace) -> None:
        from landcover.splits import SplitSpec, parse_ratios, split_manifest

        spec = SplitSpec(parse_ratios(args.ratios), args.by, args.blocks, args.random, args.balance, args.seed,
                         args.guard)
        result = split_manifest(args.manifest, spec, args.materialize, args.plot)
        print(result.summary())
        if args.materialize:
            print(f"folder tree: {args.materialize}")

    p.set_defaults(run=run)


EXPORT_EXAMPLE = """examples:
  landcover export chips/ --format tfrecord --shards 4 --out tfrecords/
  landcover export chips/manifest.parquet --format tfrecord --encoding array --split train valid --out tfr/
  landcover export chips/ --format webdataset --shards 8 --workers 2 --out shards/
  landcover export chips/ --format mapfile --out maps/

One set of files per split (prefix: the split's name, or 'data' for a manifest not yet split):
  tfrecord    <prefix>-00001-of-0000N.tfrecord: tf.train.Example records (no TensorFlow needed)
  webdataset  <prefix>-000000.tar ...: <key>.png|tif, <key>.cls, <key>.json (+ <key>.mask.tif)
  mapfile     <prefix>.tsv: chip path (relative to DIR) <TAB> label_id
plus labels.txt (class names, line N = label_id N), dataset_split_info.csv (file, shard, index,
class name, class id) and export.json. Chips of split 'unused' are left out unless named with
--split. Read the files back with landcover.formats.read_tfrecord / read_webdataset / read_mapfile."""


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a chip manifest as TFRecord or WebDataset shards, or map files",
                       description="Write the chips of a manifest as training-ready dataset files: TFRecord "
                                   "shards of tf.train.Example records, WebDataset tar shards, or tab-separated "
                                   "map files; segmentation masks (label_path) travel with their chips. Shards "
                                   "are written in parallel and renamed into place only when complete.",
                       epilog=EXPORT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", metavar="MANIFEST", help="manifest.parquet, or the chips folder holding it")
    p.add_argument("--format", required=True, choices=["tfrecord", "webdataset", "mapfile"],
                   help="which dataset files to write (the files each makes are listed below)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty, or see --overwrite)")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="files per split for tfrecord and webdataset (default 1); more shards than chips is "
                        "an error")
    p.add_argument("--encoding", default="raw", choices=["raw", "array"],
                   help="tfrecord only: raw stores each chip file's bytes (image/encoded, image/format); array "
                        "stores decoded pixels (image/array, image/shape = bands, height, width, image/dtype) "
                        "(default raw)")
    p.add_argument("--split", nargs="+", metavar="NAME", help="export only these splits (default: all but 'unused')")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                   help="keep manifest order (default: chips are shuffled with --seed before being dealt into "
                        "shards, so every shard mixes classes and places)")
    p.add_argument("--seed", type=int, default=0, help="seed for the shuffle (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    _engine_args(p)

    def run(args: argparse.Namespace) -> None:
        from landcover.engine import Engine
        from landcover.formats import export

        engine = Engine.choose(args.engine, args.workers, args.ray_address)
        result = export(args.manifest, args.out, args.format, shards=args.shards, encoding=args.encoding,
                        splits=args.split, shuffle=args.shuffle, seed=args.seed, engine=engine,
                        overwrite=args.overwrite, progress=not args.quiet)
        print(result.summary())

    p.set_defaults(run=run)


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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("data")
    g.add_argument("--manifest", help="manifest.parquet (or its chips folder), already split")
    g.add_argument("--train-split", help="split to train on (default train)")
    g.add_argument("--val-split", help="split to validate on (default valid)")
    g.add_argument("--bands", type=int, nargs="+", metavar="N", help="1-based chip bands, in input order")
    g.add_argument("--rgb-bands", type=int, nargs=3, metavar="N",
                   help="positions (1-based, within --bands) of red, green, blue: they get the pretrained "
                        "RGB filters (default 1 2 3)")
    g.add_argument("--runs", help="folder of runs (default runs)")
    g.add_argument("--name", help="run name (default: mode-architecture-time)")
    g = p.add_argument_group("model")
    g.add_argument("--mode", choices=["finetune", "features"], help="default finetune")
    g.add_argument("--arch", dest="architecture",
                   help="resnet18, resnet50, mobilenetv2 or efficientnet-lite0 (default)")
    g.add_argument("--weights", help="imagenet (default), none, or a local .safetensors file")
    g.add_argument("--input-size", type=int, help="model input size in pixels (default: the backbone's)")
    g.add_argument("--head", choices=["logreg", "rf"], help="features mode: the classical head")
    g.add_argument("--sample-frac", type=float, help="features mode: fraction of training chips to use")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--train-from", help="head, last-block, all (default), or a layer name")
    g.add_argument("--freeze-bn", action="store_true", default=None, help="keep BatchNorm statistics frozen")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="default adamw")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, help="default 1e-4")
    g.add_argument("--schedule", choices=["none", "step", "exponential", "cosine"], help="default cosine")
    g.add_argument("--step-size", type=int, metavar="EPOCHS", help="step schedule: epochs between decays")
    g.add_argument("--gamma", type=float, help="step/exponential schedule: decay factor (default 0.5)")
    g.add_argument("--epochs", type=int, help="default 10")
    g.add_argument("--batch-size", type=int, help="default 32")
    g.add_argument("--workers", type=int, help="data-loading processes (default 0)")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no random flips and 90-degree rotations")
    g.add_argument("--class-weights", choices=["none", "balanced"], help="weight the loss against imbalance")
    g.add_argument("--early-stopping", type=int, metavar="EPOCHS",
                   help="stop after this many epochs without a better validation macro-F1")
    g.add_argument("--checkpoint-every", type=int, metavar="EPOCHS", help="default 1")
    g.add_argument("--seed", type=int, help="default 0")
    g.add_argument("--mlflow-uri", help="also log the run to this MLflow tracking URI")

    def run(args: argparse.Namespace) -> None:
        from landcover.train import TrainConfig, train

        names = ("manifest", "train_split", "val_split", "bands", "rgb_bands", "runs", "name", "mode",
                 "architecture", "weights", "input_size", "head", "sample_frac", "train_from", "freeze_bn",
                 "optimizer", "lr", "weight_decay", "schedule", "step_size", "gamma", "epochs", "batch_size",
                 "workers", "augment", "class_weights", "early_stopping", "checkpoint_every", "seed", "mlflow_uri")
        config = TrainConfig.load(args.config, {n: getattr(args, n) for n in names})
        out = train(config, resume=args.resume, progress=not args.quiet)
        print(f"run: {out}  bundle: {out / 'bundle'}")

    p.set_defaults(run=run)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a model bundle on one split of a manifest",
                       description="Accuracy, per-class precision/recall/F1, macro and weighted F1, Cohen's kappa, "
                                   "mean posterior of the predicted class and the confusion matrix of a bundle on "
                                   "the chips of one split; report.json, confusion.png and a summary.")
    p.add_argument("bundle", metavar="BUNDLE", help="a model bundle folder (runs/<name>/bundle)")
    p.add_argument("--manifest", required=True, help="manifest.parquet or its chips folder")
    p.add_argument("--split", default="test", help="which split to score (default test)")
    p.add_argument("--out", help="report folder (default: eval-<split> beside the bundle)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> None:
        from landcover.predict import evaluate_bundle

        report, out = evaluate_bundle(args.bundle, args.manifest, args.split, args.out, progress=not args.quiet)
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
        from landcover.runs import compare, list_runs

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `landcover` command."""
    parser = argparse.ArgumentParser(prog="landcover",
                                     description="Aerial and satellite imagery into land-cover maps.")
    parser.add_argument("--version", action="version", version=f"landcover {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _chips_parser(sub)
    _split_parser(sub)
    _export_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _runs_parser(sub)
    from landcover import cli_maps, cli_predict

    cli_predict.add_parsers(sub)
    cli_maps.add_parsers(sub)
    p = sub.add_parser("schemes", help="list the built-in class schemes",
                       description="List the class schemes shipped with landcover.")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each scheme's classes and codes")
    p.set_defaults(run=_run_schemes)
    p = sub.add_parser("demo", help="run the whole pipeline on the Zion sample (Landsat 8 + NLCD 2011)",
                       description="Run the whole pipeline on the Zion sample, from rasters to results.")
    p.add_argument("--data", help="folder holding zion/ (default: $LANDCOVER_DATA, then ../shared/data)")
    p.add_argument("--out", default="landcover-demo", help="output folder (default ./landcover-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except LandcoverError as exc:
        print(f"landcover: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("landcover: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
