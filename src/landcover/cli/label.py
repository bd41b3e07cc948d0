"""The `landcover label` command: scribbles over an image into dense labels through the CRF."""

from __future__ import annotations

import argparse

from landcover.bounds import COUNT, POSITIVE, WHOLE, Bound
from landcover.cli.common import engine_options, nodata_option
from landcover.cli.predict import crf_options, crf_settings
from landcover.engine import Engine
from landcover.errors import LandcoverError

LABEL_EXAMPLE = """examples:
  landcover label --image lsat7_2000_40.tif lsat7_2000_30.tif lsat7_2000_20.tif \\
      --scribbles strokes.gpkg --class-field label --out dense.tif
  landcover label --image naip.tif --scribbles strokes.tif --scheme nlcd-grouped --out dense.tif --median 3

Scribbles are a vector layer (lines, polygons, points; any CRS; --class-field names each stroke's class,
or holds codes of --scheme) or a raster of class codes (0 = unlabelled). They are burned onto the image's
grid (lines touching a pixel mark it); the CRF (defaults: the seeds' settings, on the image downscaled by
0.25) spreads them to every pixel. dense.tif feeds `landcover chips --labels dense.tif` directly."""

PORT = Bound(0, 65535, integer=True)
"""A TCP port; 0 asks for any free one."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register label."""
    p = sub.add_parser("label", help="scribbles over an image into dense labels (the dense CRF)",
                       description="A few strokes per class over an image become a label for every pixel: "
                                   "dense.tif (a class-map COG), dense.json (class proportions, scribbled pixels, "
                                   "settings) and dense.png (image | scribbles | result).",
                       epilog=LABEL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", nargs="+", required=True, metavar="RASTER", help="the imagery, stacked as bands")
    p.add_argument("--scribbles", metavar="FILE", help="a vector layer or a raster of class codes")
    p.add_argument("--class-field", metavar="F", help="vector scribbles: the attribute with each stroke's class")
    p.add_argument("--scheme", help="the class scheme of the scribbles' codes (names need none)")
    p.add_argument("--out", required=True, help="the dense labels (.tif)")
    p.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N",
                   help="1-based stack bands the CRF compares (default the first three)")
    nodata_option(p)
    p.add_argument("--model", choices=["pixels", "none"], default="pixels",
                   help="pixels (default): the pixel model, trained on the scribbled pixels of every image band, gives "
                        "the CRF its evidence where nobody scribbled; none: the CRF spreads the scribbles alone (far "
                        "from them it has only ties, which a few short strokes can tip into one class everywhere)")
    p.add_argument("--median", type=WHOLE.parse, default=0, metavar="N",
                   help="median-filter the refined probabilities over N x N cells of the CRF's grid (odd; 0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g = p.add_argument_group("in the browser")
    g.add_argument("--serve", action="store_true",
                   help="draw the scribbles on a page served on 127.0.0.1 (Run shows the result, Save writes --out "
                        "and <out stem>.scribbles.geojson)")
    g.add_argument("--port", type=PORT.parse, default=0, help="the page's port (default: any free one)")
    g.add_argument("--classes", nargs="+", metavar="NAME", help="the classes to offer (or --scheme's)")
    g.add_argument("--idle-minutes", type=POSITIVE.parse, default=30,
                   help="stop after this many minutes without a request (default 30)")
    g.add_argument("--no-browser", action="store_true", help="print the page's address without opening it")
    crf_options(p)
    engine_options(p)

    def run(args: argparse.Namespace) -> None:
        from landcover.label.dense import label_raster

        if args.serve:
            return _serve(args)
        if not args.scribbles:
            raise LandcoverError("give --scribbles FILE, or draw them in the browser with --serve")

        result = label_raster(args.image, args.scribbles, args.out, class_field=args.class_field,
                              scheme=args.scheme, bands=args.bands, nodata=args.nodata, settings=crf_settings(args),
                              median=args.median, model=args.model,
                              engine=Engine.choose(args.engine, args.workers, args.ray_address),
                              overwrite=args.overwrite, progress=not args.quiet)
        print(result.summary())

    p.set_defaults(run=run)


def _serve(args: argparse.Namespace) -> None:
    """The drawing page: served on 127.0.0.1 until idle for --idle-minutes (or Ctrl-C)."""
    import shutil
    from pathlib import Path

    from landcover.label.server import LabelSession, make_server, serve, session_classes

    session = LabelSession(args.image, Path(args.out), session_classes(args.scheme, args.classes), bands=args.bands,
                           nodata=args.nodata, settings=crf_settings(args), median=args.median,
                           overwrite=args.overwrite)
    try:
        server = make_server(session, args.port, idle_seconds=60 * args.idle_minutes)
    except BaseException:
        shutil.rmtree(session.work, ignore_errors=True)
        raise
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"labelling page: {url}  (stops after {args.idle_minutes:g} idle minutes; Ctrl-C stops it now)", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        serve(server)
    finally:
        shutil.rmtree(session.work, ignore_errors=True)  # Run's results; Save wrote --out
