"""The data commands: `landcover chips`, `schemes`, `split` and `export`."""

from __future__ import annotations

import argparse
import sys

from landcover.bounds import COUNT, FRACTION, POSITIVE, SHARE, WHOLE
from landcover.cli.common import engine_options, nodata_option, warnings_as_lines
from landcover.engine import Engine

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
    g.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N",
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
    g.add_argument("--background", metavar="NAME",
                   help="polygon labels: pixels no polygon covers are this class (added to a scheme built from "
                        "the layer), not unlabelled: e.g. building footprints against 'background'")
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
    g.add_argument("--resolution", type=POSITIVE.parse, help="grid pixel size in CRS units (default: the imagery's)")
    g.add_argument("--resampling", default="bilinear",
                   help="imagery resampling where it must be warped onto the grid (labels: always nearest)")
    g = p.add_argument_group("rules")
    g.add_argument("--rule", action="append", metavar="RULE",
                   help="points:K (all K x K sample points agree) and/or purity:P (majority share >= P); "
                        "default points:3 for class folders from a raster or polygons, none for pairs")
    g.add_argument("--max-nodata", type=WHOLE.parse, default=0, metavar="N",
                   help="reject tiles with more than N nodata imagery pixels (default 0)")
    nodata_option(g)
    g.add_argument("--keep", type=SHARE.parse, default=1.0, metavar="F",
                   help="keep a random fraction F of passing tiles")
    g.add_argument("--seed", type=WHOLE.parse, default=0, help="seed for --keep (default 0)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--layout", default="folders", choices=["folders", "pairs", "shards"],
                   help="folders: <class>/<key> chips for classification; pairs: images/<key>.tif + "
                        "labels/<key>.tif masks for segmentation (ArcGIS 'Classified Tiles'); shards: chips "
                        "encoded straight into a few WebDataset or TFRecord files (one per block of tiles)")
    g.add_argument("--format", choices=["png", "tif", "webdataset", "tfrecord"],
                   help="png: 8-bit, percentile-stretched per scene; tif: all bands, native dtype, LZW, "
                        "georeferenced (default: png for folders, tif for pairs); shards: webdataset (default) or "
                        "tfrecord, all bands in the native dtype")
    g.add_argument("--shard-size", type=COUNT.parse, metavar="N",
                   help="shards: N chips a shard (the last holds the rest), dealt once every block is cut "
                        "(default: one shard per block of tiles)")
    g.add_argument("--min-labelled", type=FRACTION.parse, default=0.0, metavar="F",
                   help="pairs: reject tiles whose mask has less than a fraction F of labelled pixels")
    g.add_argument("--keep-empty", action="store_true", help="pairs: also keep tiles with no labelled pixel")
    g.add_argument("--overwrite", action="store_true", help="replace a finished chips run in --out")
    g.add_argument("--allow-empty", action="store_true",
                   help="write an empty manifest when no tile passes the rules (default: an error saying why)")
    g = engine_options(p)
    g.add_argument("--block-tiles", type=COUNT.parse, metavar="N",
                   help="a task is a block of N x N tiles, read and labelled together (default: sized for "
                        "about 32 tasks)")
    p.set_defaults(run=_run_chips)


def _run_chips(args: argparse.Namespace) -> None:
    from landcover.chips.make import make_chips

    result = warnings_as_lines(
        make_chips, args.image, args.out, labels=args.labels, labels_vector=args.labels_vector,
        burn_attribute=args.burn_attribute, burn_value=args.burn_value, class_name=args.class_name,
        all_touched=args.all_touched, background=args.background, strict=args.strict, scheme=args.scheme,
        bands=args.bands, nodata=args.nodata, aoi=args.aoi,
        regions=args.region, tile_size=args.tile_size, overlap=args.overlap, padding=args.padding, crs=args.crs,
        resolution=args.resolution, resampling=args.resampling, rules=args.rule, max_nodata=args.max_nodata,
        keep=args.keep, seed=args.seed, layout=args.layout, fmt=args.format, min_labelled=args.min_labelled,
        keep_empty=args.keep_empty, overwrite=args.overwrite, allow_empty=args.allow_empty,
        engine=Engine.choose(args.engine, args.workers, args.ray_address), block_tiles=args.block_tiles,
        shard_size=args.shard_size,
        progress=not args.quiet, log=None if args.quiet else lambda line: print(line, file=sys.stderr))
    print(result.summary())


def _run_schemes(args: argparse.Namespace) -> None:
    from landcover.schemes import builtin_schemes, load_scheme

    for name in builtin_schemes():
        scheme = load_scheme(name)
        print(f"{name}: {scheme.description} ({len(scheme.classes)} classes)")
        if args.verbose:
            for c in scheme.classes:
                print(f"  {c.id:>3}  {c.name:<30} {c.color}  codes {', '.join(map(str, c.codes))}")


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
    mode.add_argument("--blocks", type=COUNT.parse, metavar="N",
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
    p.add_argument("--seed", type=WHOLE.parse, default=0,
                   help="seed for the search, random splits and balancing (default 0)")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="with --by/--blocks, keep chips that overlap a chip of another split (only report them); "
                        "by default one chip of every such pair becomes 'unused'")
    p.add_argument("--materialize", metavar="DIR",
                   help="also build DIR/train/<class>/ ... (or DIR/train/images + labels for pairs) of hard "
                        "links (copies across file systems)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw split_counts.png")

    def run(args: argparse.Namespace) -> None:
        from landcover.datasets.splits import split_manifest

        result = split_manifest(args.manifest, args.ratios, by=args.by, blocks=args.blocks, random=args.random,
                                balance=args.balance, seed=args.seed, guard=args.guard,
                                materialize=args.materialize, plot=args.plot)
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
--split. Read the files back with landcover.datasets.formats.read_tfrecord / read_webdataset / read_mapfile."""


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
    p.add_argument("--shards", type=COUNT.parse, default=1, metavar="N",
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
    p.add_argument("--seed", type=WHOLE.parse, default=0, help="seed for the shuffle (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    engine_options(p)

    def run(args: argparse.Namespace) -> None:
        from landcover.datasets.formats import export

        engine = Engine.choose(args.engine, args.workers, args.ray_address)
        result = export(args.manifest, args.out, args.format, shards=args.shards, encoding=args.encoding,
                        splits=args.split, shuffle=args.shuffle, seed=args.seed, engine=engine,
                        overwrite=args.overwrite, progress=not args.quiet)
        print(result.summary())

    p.set_defaults(run=run)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register chips, import, split and export."""
    _chips_parser(sub)
    _import_parser(sub)
    _split_parser(sub)
    _export_parser(sub)


def _import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="a chip folder tree (EuroSAT-style class folders) into a chip manifest",
                       description="Write a manifest for chips someone else made: class folders of images (any "
                                   "format GDAL reads, georeferenced or not), optionally under train/ valid/ test/ "
                                   "(the split is taken from those folders, else left for `landcover split`). "
                                   "Then train, evaluate, predict and export work on it as on `landcover chips`.")
    p.add_argument("tree", help="the folder holding the class folders (or train/ valid/ test/ above them)")
    p.add_argument("--out", required=True, help="the new dataset folder (manifest.parquet)")
    p.add_argument("--scheme", help="a class scheme whose classes the folders are named after (default: one class "
                                    "per folder, in name order)")
    p.add_argument("--copy", action="store_true", help="copy the chips under OUT/chips (default: referenced in "
                                                        "place)")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable image, an image of another shape "
                                                          "or an empty class folder (default: left out and named)")
    p.add_argument("--ratios", metavar="R",
                   help="for a tree without train/ valid/ test/ folders: split the chips at random, e.g. 80:10:10 "
                        "(the same as `landcover split OUT --random --ratios R` afterwards; georeferenced chips are "
                        "better split by blocks there)")
    p.add_argument("--seed", type=WHOLE.parse, default=0, help="seed for --ratios (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import into OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> None:
        from pathlib import Path

        from landcover.chips.imported import import_chips, split_folders
        from landcover.datasets.splits import parse_ratios
        from landcover.errors import LandcoverError

        if args.ratios:
            parse_ratios(args.ratios)  # before anything is written
        splits = split_folders(args.tree) if Path(args.tree).is_dir() else []
        if args.ratios and splits:
            raise LandcoverError(f"--ratios: its folders already split the chips ({', '.join(splits)}); drop --ratios "
                                 "to keep that split", args.tree)
        result = import_chips(args.tree, args.out, scheme=args.scheme, copy=args.copy, strict=args.strict,
                              overwrite=args.overwrite, progress=not args.quiet)
        if args.ratios:
            from landcover.datasets.splits import split_manifest

            print(result.summary(next_step=False))
            print(split_manifest(args.out, args.ratios, random=True, seed=args.seed).summary())
        else:
            print(result.summary())

    p.set_defaults(run=run)


def add_doctor_parser(sub: argparse._SubParsersAction) -> None:
    """Register doctor: a look at a run's inputs before a long run."""
    p = sub.add_parser("doctor", help="inspect a run's inputs before a long run and say what will happen",
                       description="Inspect imagery (CRS, bands, nodata share), labels and AOI (overlap with the "
                                   "imagery, codes the scheme lacks), a bundle (bands, direct or warped reading) and "
                                   "the disk the chips would need, in seconds; exit status 2 if the run would stop.")
    p.add_argument("--image", nargs="+", required=True, metavar="RASTER", help="imagery raster(s) of one scene")
    p.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N", help="1-based bands of the stack")
    p.add_argument("--labels", metavar="RASTER", help="a land-cover raster")
    p.add_argument("--scheme", help="the labels' class scheme (a built-in name or a YAML/JSON file)")
    p.add_argument("--aoi", metavar="VECTOR", help="AOI polygons")
    p.add_argument("--bundle", metavar="BUNDLE", help="a model bundle the imagery will be predicted with")
    p.add_argument("--tile-size", default="480m", help="tile side for the planned chips (default 480m)")
    p.add_argument("--format", default="png", choices=["png", "tif"], help="chip format planned (default png)")
    p.add_argument("--out", metavar="DIR", help="where the chips would go (checks the free disk there)")
    nodata_option(p)

    def run(args: argparse.Namespace) -> int:
        from landcover.chips.check import check_inputs

        report = check_inputs(args.image, bands=args.bands, labels=args.labels, scheme=args.scheme, aoi=args.aoi,
                              bundle=args.bundle, tile_size=args.tile_size, fmt=args.format, out=args.out,
                              nodata=args.nodata)
        print(report.summary())
        return 2 if report.problems else 0

    p.set_defaults(run=run)


def add_schemes_parser(sub: argparse._SubParsersAction) -> None:
    """Register schemes (listed after the pipeline's commands)."""
    p = sub.add_parser("schemes", help="list the built-in class schemes",
                       description="List the class schemes shipped with landcover.")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each scheme's classes and codes")
    p.set_defaults(run=_run_schemes)
