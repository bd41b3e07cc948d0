"""The `landcover predict` and `landcover export-onnx` commands: a model bundle applied to rasters or chip folders."""

from __future__ import annotations

import argparse

from landcover.bounds import COUNT, FRACTION, WHOLE, Bound
from landcover.cli.common import engine_options
from landcover.engine import Engine

PREDICT_EXAMPLE = """examples:
  landcover predict runs/lite0/bundle --image zion/landsat_b2.tif zion/landsat_b3.tif zion/landsat_b4.tif \\
      zion/landsat_b5.tif --out maps/zion.tif --stride 240m --smooth 3 --probabilities
  landcover predict runs/lite0/bundle --image naip_2020.tif --aoi county.gpkg --out maps/2020.tif \\
      --engine ray --workers 2
  landcover predict runs/lite0/bundle --images chips/ --out predictions.csv

A raster (--image) is cut into the bundle's tiles (its chip size at its ground resolution; warped on
the fly when the imagery's CRS or resolution differ) and becomes maps/zion.tif: a Cloud-Optimised
GeoTIFF class map, one pixel per --stride, with the classes' colours and names; beside it
zion.tiles.parquet (one row per window: footprint, class, probability per class), zion.json (settings,
class areas, timing), and with --smooth 3 / --probabilities zion.smooth3.tif / zion.probs.tif.
The imagery is read as the chips were made: the same bands (--bands overrides), the same 8-bit
stretch. A killed run, rerun with the same arguments, resumes where it stopped.

A folder (--images) of PNG/JPG/GeoTIFF chips becomes a CSV or Parquet table (file, class,
confidence, p_<class>); with class subfolders named after the bundle's classes, also an evaluation."""


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="apply a model bundle to a whole raster (class map COG) or a chip folder",
                       description="Predict land cover with a model bundle: a whole raster into a class-map COG "
                                   "(overlapping windows averaged, optional smoothing and probabilities), or a "
                                   "folder of chips into a table of classes and probabilities.",
                       epilog=PREDICT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="a model bundle folder (runs/<name>/bundle)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", nargs="+", metavar="RASTER",
                       help="imagery raster(s) of one scene, stacked as bands in this order")
    which.add_argument("--images", metavar="DIR", help="a folder of chips (searched recursively)")
    p.add_argument("--out", required=True,
                   help="the class map (.tif) for --image; the table (.csv or .parquet) for --images")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--allow-empty", action="store_true",
                   help="write the map even when no cell can be predicted (default: an error saying why)")
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"],
                   help="run the network with onnxruntime when the bundle holds a fresh model.onnx (training writes "
                        "it), else torch (auto, the default); or name one")
    p.add_argument("--batch-size", type=COUNT.parse,
                   help="windows or chips per batch (default 64; for segmentation bundles 2 windows of 512 px)")
    g = p.add_argument_group("rasters (--image)")
    g.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N",
                   help="1-based stack bands that make the chips' bands (default: those the chips were cut from)")
    g.add_argument("--stride", help="step between windows, m or px, dividing the tile (default: the tile; "
                                    "smaller steps overlap windows and average their probabilities)")
    g.add_argument("--aoi", metavar="VECTOR", help="map only cells whose centre lies inside these polygons")
    g.add_argument("--window", help="segmentation bundles: window side, px or m, a multiple of 32 px (default 512px)")
    g.add_argument("--overlap", help="segmentation bundles: how far windows overlap, px or m, at most half the "
                                     "window (default a quarter); overlaps are blended with weights that fall "
                                     "towards window edges, so windows leave no seams")
    g.add_argument("--smooth", type=WHOLE.parse, default=0, metavar="N",
                   help="also write the map after an N x N plurality filter on the cell grid (e.g. 3)")
    g.add_argument("--probabilities", action="store_true",
                   help="also write per-class probabilities as a uint8 COG (p x 254, GDAL scale 1/254)")
    g.add_argument("--max-nodata", type=FRACTION.parse, default=0.25, metavar="F",
                   help="skip windows with more than this fraction of nodata pixels (default 0.25)")
    g.add_argument("--resampling", default="bilinear", help="imagery resampling where it must be warped")
    g.add_argument("--truth", metavar="RASTER", help="a land-cover raster to score the map (and smoothed map) "
                                                     "against, cell by cell (with --scheme)")
    g.add_argument("--scheme", help="with --truth: the class scheme of its codes (e.g. nlcd-grouped)")
    engine_options(p)

    def run(args: argparse.Namespace) -> None:
        if args.images:
            from landcover.predict.folder import predict_folder

            result = predict_folder(args.bundle, args.images, args.out, runtime=args.runtime,
                                    batch_size=args.batch_size or 64, overwrite=args.overwrite, progress=not args.quiet)
            print(result.summary())
            return
        from landcover.predict.raster import predict_raster

        engine = Engine.choose(args.engine, args.workers, args.ray_address)
        result = predict_raster(args.bundle, args.image, args.out, bands=args.bands, stride=args.stride,
                                aoi=args.aoi, smooth=args.smooth, probabilities=args.probabilities,
                                truth=args.truth, truth_scheme=args.scheme, max_nodata=args.max_nodata,
                                batch_size=args.batch_size, runtime=args.runtime, engine=engine,
                                resampling=args.resampling, overwrite=args.overwrite,
                                allow_empty=args.allow_empty, window=args.window, overlap=args.overlap,
                                progress=not args.quiet)
        print(result.summary())

    p.set_defaults(run=run)


def _export_onnx_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="(re)write a bundle's ONNX graph (training writes one)",
                       description="Export the bundle's network to BUNDLE/model.onnx (dynamic batch), check it "
                                   "against torch on a test batch, and record the check in BUNDLE/onnx.json.")
    p.add_argument("bundle", metavar="BUNDLE", help="a model bundle folder")
    p.add_argument("--opset", type=Bound(7, integer=True).parse, default=17, help="ONNX opset (default 17)")

    def run(args: argparse.Namespace) -> None:
        import json

        from landcover.onnx_graph import export_onnx

        path = export_onnx(args.bundle, opset=args.opset)
        record = json.loads((path.parent / "onnx.json").read_text())
        print(f"onnx: {path}  (max |difference| from torch: {record.get('max_abs_diff', float('nan')):.2e})")

    p.set_defaults(run=run)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register predict and export-onnx."""
    _predict_parser(sub)
    _export_onnx_parser(sub)
