"""The `landcover acquire` command: imagery or labels for an area from a STAC catalog, composited per pixel."""

from __future__ import annotations

import argparse

from landcover.bounds import POSITIVE, WHOLE
from landcover.cli.common import engine_options
from landcover.engine import Engine

ACQUIRE_EXAMPLE = """examples:
  landcover acquire --catalog earth-search --collection sentinel-2-l2a --bbox -71.2 42.3 -71.1 42.4 \\
      --datetime 2023-06-01/2023-08-31 --max-cloud 40 --assets red green blue nir --mask scl \\
      --composite median --out s2-summer
  landcover acquire --catalog planetary-computer --collection landsat-c2-l2 --aoi park.gpkg \\
      --datetime 2021 --assets red green blue nir08 --mask qa_pixel --composite closest:2021-07-01 --out ls
  landcover acquire --catalog stac/catalog.json --aoi area.gpkg --assets data --composite mosaic --out labels

Only the area's byte ranges of each COG are read (GDAL range requests). The grid is the items' own (the most
common CRS, the finest asset's pixels, aligned to them) unless --crs / --resolution say otherwise. Fetched items
are kept in OUT/.acquire until the composite is written: rerun the same command to resume."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register acquire."""
    p = sub.add_parser("acquire", help="imagery or labels for an area from a STAC catalog, composited per pixel",
                       description="Search a STAC catalog (an item-search API or a static catalog) for an area and "
                                   "dates, read only the area's windows of each item's assets, and write "
                                   "OUT/composite.tif (a COG, the assets as bands), OUT/valid_count.tif, "
                                   "OUT/items.json and OUT/composite.json (a STAC item).",
                       epilog=ACQUIRE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", required=True, metavar="URL|PATH|PRESET",
                   help="a STAC API URL, a static catalog (catalog.json, its folder or URL), or planetary-computer "
                        "/ earth-search")
    p.add_argument("--collection", nargs="+", metavar="NAME", help="collection(s) to search")
    area = p.add_mutually_exclusive_group(required=True)
    area.add_argument("--aoi", metavar="FILE", help="a vector file of the area (pixels outside its polygons are "
                                                    "nodata)")
    area.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"),
                      help="the area as a box in longitude/latitude")
    p.add_argument("--datetime", metavar="A/B", help="date range, e.g. 2021-05-01/2021-09-30, 2021/2022, 2021-06/..")
    p.add_argument("--max-cloud", type=float, metavar="PCT", help="leave out items with eo:cloud_cover above PCT")
    p.add_argument("--assets", nargs="+", required=True, metavar="NAME", help="assets to read, as bands in order")
    p.add_argument("--crs", help="output CRS (default: the items' own)")
    p.add_argument("--resolution", type=POSITIVE.parse, metavar="R",
                   help="output pixel size in CRS units (default: the finest asset's)")
    p.add_argument("--resampling", default="nearest", choices=["nearest", "bilinear", "cubic", "average", "mode"],
                   help="onto the output grid (default nearest)")
    p.add_argument("--mask", default="none", metavar="scl|qa_pixel|ASSET:VALUES|none",
                   help="per-pixel cloud mask: Sentinel-2 SCL, Landsat QA_PIXEL bits, or an asset's values to drop")
    p.add_argument("--composite", default="median", metavar="none|median|mosaic|closest:DATE",
                   help="per pixel: median of valid observations (default), the newest valid one (mosaic; for "
                        "labels), the one closest in time to DATE, or none (one stack per item in OUT/items)")
    p.add_argument("--retries", type=WHOLE.parse, default=3, help="tries after a failed remote read (default 3)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier acquire's output made by a different request, or write into a folder "
                        "of other files")
    engine_options(p)

    def run(args: argparse.Namespace) -> None:
        from landcover.acquire.run import acquire_area

        result = acquire_area(args.catalog, args.out, args.assets, collections=args.collection, aoi=args.aoi,
                         bbox=args.bbox, datetime=args.datetime, max_cloud=args.max_cloud, crs=args.crs,
                         resolution=args.resolution, mask=args.mask, composite=args.composite,
                         resampling=args.resampling, retries=args.retries, overwrite=args.overwrite,
                         engine=Engine.choose(args.engine, args.workers, args.ray_address), progress=not args.quiet)
        print(result.summary())

    p.set_defaults(run=run)
