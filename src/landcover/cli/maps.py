"""The `landcover map` and `landcover change` commands: draw a class map; compare two class maps."""

from __future__ import annotations

import argparse

from landcover.bounds import COUNT, FRACTION
from landcover.cli.common import warnings_as_lines
from landcover.errors import LandcoverError

MAP_EXAMPLE = """examples:
  landcover map out/map.tif --out map.png
  landcover map out/map.tif --out map.png --image naip/m_4709963_se_14_1_20200831.tif --bands 4 1 2
  landcover map out/map.tif --out compare.png --truth zion/nlcd2011.tif --scheme nlcd-grouped

The imagery under the map defaults to the rasters the map was predicted from (recorded in
the map). With --truth, the figure shows truth | prediction | agreement and the share of
cells where they agree; truth classes are matched to the map's classes by name."""

CHANGE_EXAMPLE = """examples:
  landcover change map2016.tif map2020.tif --out change/
  landcover change map2016.tif map2020.tif --out change/ --to Developed --min-cells 4

change/ holds transitions.csv (hectares, from-class rows x to-class columns), change.tif
(a COG: from_id * n_classes + to_id + 1 where the class changed, 0 unchanged, 255 nodata;
class names of each value in change.tif.aux.xml), candidates.geojson (EPSG:4326) and
candidates.gpkg (the maps' CRS): the changed patches, ranked by confidence when both maps
have probabilities, else by area; change.json (totals and settings) and change.png."""


def _map_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map", help="draw a class map as a PNG: over its imagery, or beside a reference map",
                       description="Draw a class map (a COG written by landcover) in its class colours over a "
                                   "stretched rendering of its imagery, with a legend of the classes present (their "
                                   "share of the map) and a scale bar. With --truth, draw truth | prediction | "
                                   "agreement and print the cell agreement.",
                       epilog=MAP_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("map", metavar="MAP", help="a class map GeoTIFF written by landcover")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")
    p.add_argument("--image", nargs="+", metavar="RASTER",
                   help="imagery to draw under the map, stacked as bands in this order (default: the imagery the "
                        "map records)")
    p.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N",
                   help="1 band (grey) or 3 bands (red green blue), 1-based over the stack (default: the map's "
                        "recorded RGB bands, else 1 2 3, else 1)")
    p.add_argument("--truth", metavar="RASTER",
                   help="a land-cover raster to compare with (any CRS and grid; resampled onto the map by majority)")
    p.add_argument("--scheme", help="with --truth: the class scheme of its codes, a built-in name (see `landcover "
                                    "schemes`) or a YAML/JSON file")
    p.add_argument("--alpha", type=FRACTION.parse, default=0.6, metavar="F",
                   help="opacity of the class colours over the imagery, 0..1 (default 0.6)")
    p.add_argument("--title", help="figure title (default: the map's file name)")
    p.add_argument("--beside", metavar="MAP", help="another class map of the same classes drawn before this one "
                                                   "(e.g. a tile map beside a per-pixel map)")

    def run(args: argparse.Namespace) -> None:
        from landcover.maps.figures import compare_to_truth, render_map

        if args.truth and not args.scheme:
            raise LandcoverError("--truth needs --scheme (how the truth raster's codes become classes)")
        out = warnings_as_lines(render_map, args.map, args.out, image=args.image, bands=args.bands,
                                 truth=args.truth, scheme=args.scheme, alpha=args.alpha, title=args.title,
                                 beside=args.beside)
        if args.truth:
            stats = compare_to_truth(args.map, args.truth, args.scheme)
            if stats["agreement"] is None:
                print("agreement: no cell is valid in both maps")
            else:
                print(f"agreement: {100 * stats['agreement']:.1f}% of {stats['n_cells']:,} cells valid in both"
                      + (f" ({stats['n_other']:,} truth cells of classes the map lacks)" if stats["n_other"] else ""))
        print(f"figure: {out}")

    p.set_defaults(run=run)


def _change_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("change", help="compare two class maps: transition areas, changed patches, a figure",
                       description="Compare a class map BEFORE with one AFTER (same classes; AFTER is resampled, "
                                   "nearest, onto BEFORE's grid if they differ): hectares of every from -> to "
                                   "transition, a change raster, and the changed patches as polygons ranked by "
                                   "confidence (both maps' class probabilities) or, without those, by area.",
                       epilog=CHANGE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", metavar="BEFORE", help="the earlier class map")
    p.add_argument("after", metavar="AFTER", help="the later class map")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    p.add_argument("--to", dest="to_classes", nargs="+", metavar="CLASS",
                   help="candidate patches only of change to these classes (default: any change)")
    p.add_argument("--from", dest="from_classes", nargs="+", metavar="CLASS",
                   help="candidate patches only of change from these classes (default: any other class)")
    p.add_argument("--min-cells", type=COUNT.parse, default=1, metavar="N",
                   help="drop candidate patches of fewer than N cells (8-connected; default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")

    def run(args: argparse.Namespace) -> None:
        from landcover.maps.change import detect_change

        result = warnings_as_lines(detect_change, args.before, args.after, args.out, to_classes=args.to_classes,
                                    from_classes=args.from_classes, min_cells=args.min_cells,
                                    overwrite=args.overwrite, progress=not args.quiet)
        print(result.summary())

    p.set_defaults(run=run)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the `map` and `change` subcommands."""
    _map_parser(sub)
    _change_parser(sub)
