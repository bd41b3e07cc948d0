"""The `landcover predict` and `landcover export-onnx` commands: a model bundle applied to rasters or chip folders."""

from __future__ import annotations

import argparse

from landcover.bounds import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SHARE, WHOLE, Bound
from landcover.cli.common import engine_options, nodata_option
from landcover.engine import Engine
from landcover.errors import LandcoverError

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
    nodata_option(g)
    g.add_argument("--stride", help="step between windows, m or px, dividing the tile (default: the tile; "
                                    "smaller steps overlap windows and average their probabilities)")
    g.add_argument("--aoi", metavar="VECTOR", help="map only cells whose centre lies inside these polygons")
    g.add_argument("--window", help="segmentation bundles: window side, px or m, a multiple of 32 px (default 512px)")
    g.add_argument("--overlap", help="segmentation bundles: how far windows overlap, px or m, at most half the "
                                     "window (default a quarter); overlaps are blended with weights that fall "
                                     "towards window edges, so windows leave no seams")
    g.add_argument("--tiles", metavar="SIZE",
                   help="write the map as tiles of SIZE (m or px; a tile map's: whole strides) into the folder "
                        "--out, each by the task that made it, with index.vrt and a STAC catalog.json; resumes tile "
                        "by tile")
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
    d = p.add_argument_group("dense maps through the CRF (--image)")
    d.add_argument("--dense", choices=["crf"],
                   help="crf: a class for every pixel through the dense CRF. A tile classifier gives the hybrid "
                        "map (confident tiles as evidence, <out stem>.tiles.tif kept); a segmentation bundle's "
                        "per-pixel probabilities are refined (<out stem>.pixels.tif kept)")
    d.add_argument("--crf", action="store_true", help="the same as --dense crf")
    d.add_argument("--decimate", type=COUNT.parse, metavar="N",
                   help="hybrid: classify every N-th tile in each direction (default 1: all)")
    d.add_argument("--threshold", type=FRACTION.parse, metavar="P",
                   help="hybrid: tiles whose top probability is >= P are evidence, the rest unknown (default 0.5)")
    d.add_argument("--evidence-model", choices=["pixels", "none"],
                   help="hybrid: none (default): the confident tiles alone are evidence; pixels: they train the pixel "
                        "model, whose probabilities are the CRF's evidence everywhere")
    crf_options(p)
    engine_options(p)

    def run(args: argparse.Namespace) -> None:
        if args.images:
            from landcover.predict.folder import predict_folder

            result = predict_folder(args.bundle, args.images, args.out, runtime=args.runtime,
                                    batch_size=args.batch_size or 64, overwrite=args.overwrite, progress=not args.quiet)
            print(result.summary())
            return
        dense = args.dense or args.crf
        crf_given = [k for k in (*CRF_OPTIONS, "crf_preset") if getattr(args, k) is not None]
        if not dense and (args.decimate or args.threshold is not None or args.evidence_model or crf_given):
            raise LandcoverError("--decimate, --threshold, --evidence-model and the CRF settings are for dense maps: "
                                 "add --dense crf")
        if dense and (args.smooth or args.truth):
            raise LandcoverError("--smooth and --truth are for tile and per-pixel maps: score a dense map with "
                                 "`landcover evaluate MAP --truth ...`")
        request = map_request(args, bands=args.bands, stride=args.stride, aoi=args.aoi, smooth=args.smooth,
                              truth=args.truth, truth_scheme=args.scheme, max_nodata=args.max_nodata,
                              batch_size=args.batch_size, runtime=args.runtime, resampling=args.resampling,
                              allow_empty=args.allow_empty, window=args.window, overlap=args.overlap,
                              decimate=args.decimate or 1, threshold=0.5 if args.threshold is None else args.threshold,
                              evidence_model=args.evidence_model or "none")
        if args.tiles:
            if args.smooth or args.truth or args.aoi:
                raise LandcoverError("--tiles writes class-map tiles (and with --probabilities theirs, which "
                                     "`landcover crf DIR` refines): --smooth, --truth and --aoi are for single maps "
                                     "in this version")
            from landcover.predict.tiled import predict_tiled

            summary = predict_tiled(args.bundle, args.image, args.out, args.tiles, request, dense=bool(dense))
            print(f"{args.out}: {summary['tiles']} tiles ({summary['written']} written, {summary['resumed']} already "
                  f"there), index.vrt{', probs.vrt' if args.probabilities else ''} and catalog.json; "
                  f"{summary['seconds']} s")
            return
        if dense:
            from landcover.predict.dense import predict_dense

            print(predict_dense(args.bundle, args.image, args.out, request).summary())
            return
        from landcover.predict.raster import predict_raster

        print(predict_raster(args.bundle, args.image, args.out, request).summary())

    p.set_defaults(run=run)


CRF_EXAMPLE = """examples:
  landcover predict runs/unet/bundle --image b2.tif b3.tif b4.tif b5.tif --out maps/zion.tif --probabilities
  landcover crf maps/zion.probs.tif --image b2.tif b3.tif b4.tif b5.tif --out maps/zion-crf.tif --downscale 1

The probabilities (one band per class: predict's <map>.probs.tif, or any raster whose bands are named
after their classes) must be on the imagery's grid. The appearance kernel compares the map's display
bands (else the first three), stretched to 0..255. Defaults are the seeds' (Buscombe & Ritchie 2018)."""


def crf_options(p: argparse.ArgumentParser) -> None:
    """The CRF's settings as options (defaults: by the imagery's resolution, landcover.segment.crfdefaults)."""
    g = p.add_argument_group("dense CRF settings (defaults chosen from the imagery's pixel size: see docs/predict.md)")
    g.add_argument("--crf-preset", choices=["auto", "seed"],
                   help="auto (default): settings by the imagery's resolution; seed: the seeds' numbers (kernels 60 "
                        "px on a grid downscaled by 0.25, made for 0.1 m photographs); the options below override")
    g.add_argument("--downscale", type=SHARE.parse, metavar="F",
                   help="run the CRF on the image resampled by F, labels upscaled back (1: full resolution)")
    g.add_argument("--sxy-gaussian", type=width, metavar="LENGTH",
                   help="smoothness kernel width: metres ('90m') or px of the CRF's grid (a plain number)")
    g.add_argument("--compat-gaussian", type=NON_NEGATIVE.parse, metavar="W",
                   help="smoothness Potts weight (0 drops the kernel)")
    g.add_argument("--sxy-bilateral", type=width, metavar="LENGTH",
                   help="appearance kernel width: metres ('1800m') or px of the CRF's grid")
    g.add_argument("--srgb", type=POSITIVE.parse, metavar="LEVELS", help="appearance kernel band width, 8-bit levels")
    g.add_argument("--compat-bilateral", type=NON_NEGATIVE.parse, metavar="W",
                   help="appearance Potts weight (0 drops the kernel)")
    g.add_argument("--iterations", type=WHOLE.parse, metavar="N", help="mean-field iterations")


def width(text: str) -> float | str:
    """A kernel width: '90m' (kept as text, turned into pixels once the grid is known) or CRF pixels (> 0)."""
    from landcover.segment.crfdefaults import parse_width

    try:
        value, metres = parse_width(text, "width")
    except LandcoverError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--width ")) from None
    return text.strip() if metres else value


CRF_OPTIONS = ("downscale", "sxy_gaussian", "compat_gaussian", "sxy_bilateral", "srgb", "compat_bilateral",
               "iterations")


def crf_settings(args: argparse.Namespace):
    """The CrfChoice the options give: the preset, and the settings given over it."""
    from landcover.segment.crfdefaults import CrfChoice

    return CrfChoice(args.crf_preset or "auto",
                     tuple((k, getattr(args, k)) for k in CRF_OPTIONS if getattr(args, k) is not None))


def map_request(args: argparse.Namespace, **fields: object):
    """The MapRequest the options give: the CRF settings, the engine, --probabilities, --overwrite and --quiet, and
    `fields` over them."""
    from landcover.predict.request import MapRequest

    engine = Engine.choose(args.engine, args.workers, args.ray_address)
    return MapRequest.of(None, {"crf": crf_settings(args), "engine": engine,
                                "probabilities": args.probabilities, "overwrite": args.overwrite, "nodata": args.nodata,
                                "progress": not args.quiet, **fields})


def _crf_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crf", help="refine a probability raster with the dense CRF against its imagery",
                       description="Refine per-class probabilities (e.g. predict's map.probs.tif) with the fully "
                                   "connected CRF (Krähenbühl & Koltun 2011) against the imagery, block by block, "
                                   "into a class-map COG (<out>.json beside it).",
                       epilog=CRF_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probabilities", metavar="PROBS", help="a probability raster, one band per class (or the folder "
                                                          "of predict --tiles --probabilities)")
    p.add_argument("--image", nargs="+", required=True, metavar="RASTER", help="the imagery, stacked as bands")
    p.add_argument("--out", required=True, help="the refined class map (.tif)")
    p.add_argument("--bands", type=COUNT.parse, nargs="+", metavar="N",
                   help="1-based stack bands the appearance kernel compares (default: the display bands)")
    nodata_option(p)
    p.add_argument("--probabilities", action="store_true", help="also write the refined probabilities")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    crf_options(p)
    engine_options(p)

    def run(args: argparse.Namespace) -> None:
        from landcover.predict.dense import refine_raster

        print(refine_raster(args.probabilities, args.image, args.out, map_request(args, bands=args.bands)).summary())

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
    """Register predict, crf and export-onnx."""
    _predict_parser(sub)
    _crf_parser(sub)
    _export_onnx_parser(sub)
