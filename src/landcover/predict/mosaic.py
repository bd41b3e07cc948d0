"""What a tiled run (`landcover.predict.tiled`) writes around its tiles: DIR/index.vrt (the mosaic of class ids),
DIR/probs.vrt (of their probabilities) and the STAC collection DIR/catalog.json with one item per tile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine

from landcover.atomic import write_text
from landcover.maps.classmap import NODATA


class TiledGrid(Protocol):
    """The map's grid as a tiled run describes it (`landcover.predict.tiled.TileJob` is one)."""

    crs_wkt: str
    transform: tuple[float, ...]
    height: int
    width: int
    classes: tuple[tuple[int, str], ...]


def write_index(path: Path, records: list[dict], job: TiledGrid, probabilities: bool = False) -> None:
    """DIR/index.vrt: the tiles' mosaic on the map's grid, one band of class ids (nodata where no tile); with
    `probabilities`, DIR/probs.vrt: theirs, a band per class (`landcover crf DIR` refines it)."""
    suffix = ".probs.tif" if probabilities else ".tif"

    def band(b: int) -> str:
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">tiles/{r["name"]}{suffix}</SourceFilename>'
            f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{r["width"]}" ySize="{r["height"]}"/>'
            f'<DstRect xOff="{r["col"]}" yOff="{r["row"]}" xSize="{r["width"]}" ySize="{r["height"]}"/>'
            "</SimpleSource>" for r in records)
        return f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>{NODATA}</NoDataValue>{sources}</VRTRasterBand>'

    transform = Affine(*job.transform)
    write_text(path, (f'<VRTDataset rasterXSize="{job.width}" rasterYSize="{job.height}">'
                      f"<SRS>{escape(job.crs_wkt)}</SRS><GeoTransform>"
                      f"{', '.join(map(repr, transform.to_gdal()))}</GeoTransform>"
                      f"{''.join(band(b + 1) for b in range(len(job.classes) if probabilities else 1))}"
                      "</VRTDataset>\n"))
    first = path.parent / "tiles" / f"{records[0]['name']}{suffix}" if records else None
    if first is not None:  # the classes' names and colours and the imagery, as the tiles carry them
        with rasterio.open(first) as src, rasterio.open(path, "r+") as vrt:
            vrt.update_tags(**{k: v for k, v in src.tags().items() if k.startswith("LANDCOVER_")
                               and k != "LANDCOVER_TILE"})
            if probabilities:
                for b in range(1, src.count + 1):
                    vrt.set_band_description(b, src.descriptions[b - 1])
            else:
                vrt.write_colormap(1, src.colormap(1))


STAC_VERSION = "1.0.0"
PROJECTION = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"


def write_catalog(out: Path, records: list[dict], job: TiledGrid, res: float) -> None:
    """DIR/catalog.json: a STAC collection of the tiles, DIR/items/NAME.json one item each (projection extension,
    class areas in hectares, the COG's checksum, the node that made it)."""
    from rasterio.warp import transform_bounds

    crs = rasterio.crs.CRS.from_wkt(job.crs_wkt)
    grid = Affine(*job.transform)
    (out / "items").mkdir(exist_ok=True)
    boxes = []
    for r in records:
        transform = grid * Affine.translation(r["col"], r["row"])
        left, top = transform * (0, 0)
        right, bottom = transform * (r["width"], r["height"])
        box = transform_bounds(crs, "EPSG:4326", left, min(top, bottom), right, max(top, bottom))
        boxes.append(box)
        west, south, east, north = box
        item = {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [PROJECTION, FILE],
                "id": r["name"], "collection": "landcover-tiles", "bbox": list(box),
                "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                                 [west, north], [west, south]]]},
                "properties": {"datetime": None, "start_datetime": None, "end_datetime": None,
                               "proj:wkt2": job.crs_wkt, "proj:shape": [r["height"], r["width"]],
                               "proj:transform": list(transform)[:6], "landcover:node": r["node"],
                               "landcover:hectares": {k: v * res * res / 1e4 for k, v in r["counts"].items()}},
                "assets": {"map": {"href": f"../tiles/{r['name']}.tif",
                                   "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                                   "roles": ["data"], "file:checksum": "1220" + r["sha256"]}},
                "links": [{"rel": "collection", "href": "../catalog.json", "type": "application/json"},
                          {"rel": "root", "href": "../catalog.json", "type": "application/json"}]}
        write_text(out / "items" / f"{r['name']}.json", json.dumps(item, indent=1))
    extent = np.array(boxes) if boxes else np.zeros((1, 4))
    collection = {"type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [], "id": "landcover-tiles",
                  "description": "A class map as tiles, each written by the landcover task that made it",
                  "license": "other", "extent": {
                      "spatial": {"bbox": [[float(extent[:, 0].min()), float(extent[:, 1].min()),
                                            float(extent[:, 2].max()), float(extent[:, 3].max())]]},
                      "temporal": {"interval": [[None, None]]}},
                  "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                            {"rel": "self", "href": "./catalog.json", "type": "application/json"},
                            *({"rel": "item", "href": f"./items/{r['name']}.json", "type": "application/geo+json"}
                              for r in records)]}
    write_text(out / "catalog.json", json.dumps(collection, indent=1))
