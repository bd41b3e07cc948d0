"""The `landcover` command: parses arguments, calls the library, prints."""

from __future__ import annotations

import argparse
import sys

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
    g.add_argument("--labels", required=True, metavar="RASTER", help="land-cover raster (integer codes)")
    g.add_argument("--scheme", default="nlcd",
                   help="class scheme: a built-in name (see `landcover schemes`) or a YAML/JSON file "
                        "(default: nlcd)")
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
                        "default points:3")
    g.add_argument("--max-nodata", type=int, default=0, metavar="N",
                   help="reject tiles with more than N nodata imagery pixels (default 0)")
    g.add_argument("--keep", type=float, default=1.0, metavar="F", help="keep a random fraction F of passing tiles")
    g.add_argument("--seed", type=int, default=0, help="seed for --keep (default 0)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--format", default="png", choices=["png", "tif"],
                   help="png: 8-bit, percentile-stretched per scene; tif: all bands, native dtype, LZW, "
                        "georeferenced (default png)")
    g.add_argument("--overwrite", action="store_true", help="replace a finished chips run in --out")
    _engine_args(p)
    p.set_defaults(run=_run_chips)


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "process", "ray"],
                   help="local (one process), process (a pool of --workers), ray (a Ray cluster)")
    g.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    g.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--block-tiles", type=int, metavar="N",
                   help="a task is a block of N x N tiles, read and labelled together (default: sized for "
                        "about 32 tasks)")


def _run_chips(args: argparse.Namespace) -> None:
    from landcover.chips import make_chips
    from landcover.engine import Engine
    from landcover.grid import make_grid, parse_length
    from landcover.labels import LabelRaster
    from landcover.raster import Scene
    from landcover.rules import Rules
    from landcover.schemes import load_scheme

    scheme = load_scheme(args.scheme)
    rules = Rules.parse(args.rule, args.max_nodata, args.keep, args.seed)
    engine = Engine.choose(args.engine, args.workers, args.ray_address)
    scenes = [Scene.open(paths, args.bands) for paths in args.image]
    regions = args.region
    if regions and len(regions) not in (1, len(scenes)):
        raise LandcoverError(f"--region given {len(regions)} times for {len(scenes)} scenes: give it once or "
                             "once per scene")
    if regions and len(regions) == 1:
        regions = regions * len(scenes)
    labels = LabelRaster.open(args.labels)
    grid = make_grid(scenes, parse_length(args.tile_size, "tile size"), parse_length(args.overlap, "overlap"),
                     parse_length(args.padding, "padding"), args.crs, args.resolution)
    if not args.quiet:
        print(f"grid: {grid.tile} px tiles of {grid.res:g} m ({grid.tile * grid.res:g} m) on "
              f"{grid.crs.to_string()}, stride {grid.stride} px, padding {grid.pad} px", file=sys.stderr)
    result = make_chips(scenes, labels, scheme, grid, rules, args.out, regions=regions, aoi=args.aoi,
                        fmt=args.format, resampling=args.resampling, engine=engine, overwrite=args.overwrite,
                        progress=not args.quiet, block_tiles=args.block_tiles)
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `landcover` command."""
    parser = argparse.ArgumentParser(prog="landcover",
                                     description="Aerial and satellite imagery into land-cover maps.")
    parser.add_argument("--version", action="version", version=f"landcover {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _chips_parser(sub)
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
