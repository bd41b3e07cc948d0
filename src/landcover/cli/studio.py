"""The `landcover studio` command: a local page showing imagery of any size with a class map over it, where a person
labels, retrains the pixel model and maps the whole raster."""

from __future__ import annotations

import argparse

from landcover.bounds import COUNT, POSITIVE
from landcover.cli.common import nodata_option
from landcover.cli.label import PORT

STUDIO_EXAMPLE = """examples:
  landcover studio --image naip_mosaic.tif --out studio/
  landcover studio --image landsat_b2.tif landsat_b3.tif landsat_b4.tif landsat_b5.tif --bands 3 2 1 \\
      --scheme nlcd-grouped --truth nlcd2011.tif --truth-scheme nlcd-grouped --out studio/

The page (127.0.0.1 only) shows the imagery as tiles of the level the zoom needs: a raster over 4,096 px a
side without overviews gets them once, in DIR/cache/. The map is any class map (landcover's COGs, or one
band of class ids with category names), on the imagery's grid or warped to it. Labels go to
DIR/labels.geojson; "map all" writes DIR/bundle/ and DIR/map.tif (and, with --truth, DIR/assessment/):
`landcover predict DIR/bundle --image ... --out again.tif` makes the same map."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register studio."""
    p = sub.add_parser("studio", help="a local page: a map over its imagery, labels, retraining, the whole map",
                       description="Serve a page on 127.0.0.1 that shows the imagery at any size (pan, zoom, bands, "
                                   "stretch) with a class map over it, where labels retrain the pixel model, it "
                                   "suggests where to label next, and maps the whole raster.",
                       epilog=STUDIO_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", nargs="+", required=True, metavar="RASTER", help="the imagery, stacked as bands")
    first = p.add_mutually_exclusive_group()
    first.add_argument("--map", metavar="MAP.tif", help="a class map to show over the imagery")
    first.add_argument("--bundle", metavar="B", help="a model bundle: its map of the imagery (made as the studio "
                       "starts, into DIR/bundle-map.tif) is the first map, its classes the ones labelled, and its "
                       "class probabilities (DIR/context.tif) more features of the pixel model where they help")
    p.add_argument("--out", required=True, metavar="DIR", help="the studio's folder (its display cache)")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="the classes to label (default: the map's)")
    p.add_argument("--scheme", help="the classes to label: a scheme's, with its colours")
    p.add_argument("--truth", metavar="REF", help="reference data: a land-cover raster (shown as a layer) or "
                   "polygons/points (with --truth-field); every map the page makes is assessed against it")
    p.add_argument("--truth-scheme", metavar="S", help="the scheme turning the reference raster's codes into classes")
    p.add_argument("--truth-field", metavar="FIELD", help="vector reference: the attribute holding the class")
    p.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N",
                   help="1-based stack bands shown: red green blue, or one (grey); default the first three")
    nodata_option(p)
    p.add_argument("--port", type=PORT.parse, default=0, help="the page's port (default: any free one)")
    p.add_argument("--idle-minutes", type=POSITIVE.parse, default=30,
                   help="stop after this many minutes without a request (default 30)")
    p.add_argument("--no-browser", action="store_true", help="print the page's address without opening it")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from landcover.errors import LandcoverError
    from landcover.label.server import serve
    from landcover.studio.mapping import Reference
    from landcover.studio.server import StudioSession, make_server

    if args.bands and len(args.bands) not in (1, 3):
        raise LandcoverError(f"--bands takes 1 band (grey) or 3 (red green blue), not {len(args.bands)}")
    reference = Reference(args.truth, args.truth_scheme, args.truth_field) if args.truth else None
    session = StudioSession(args.image, Path(args.out), args.map, args.bundle, args.classes, args.scheme, args.bands,
                            args.nodata, reference)
    server = make_server(session, args.port, idle_seconds=60 * args.idle_minutes)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"studio: {url}  (stops after {args.idle_minutes:g} idle minutes; Ctrl-C stops it now)", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    serve(server)
