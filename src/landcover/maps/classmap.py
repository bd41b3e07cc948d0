"""Class maps on disk: Cloud-Optimised GeoTIFFs with a colour table, class names and provenance tags."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from landcover.errors import LandcoverError
from landcover.geo.cog import CACHE_MB, copy_to_cog, describe, write_cog
from landcover.geo.raster import open_raster
from landcover.schemes import palette

NODATA = 255
"""Class maps are uint8 class ids; 255 marks nodata (no imagery, outside the AOI, not predicted)."""
PROB_SCALE = 254
"""Probability COGs store round(p * 254) in uint8, 255 nodata; GDAL's scale (1/254) turns them back into p."""
CLASSES_TAG = "LANDCOVER_CLASSES"


def hex_rgb(color: str) -> tuple[int, int, int]:
    """'#1c5f2c' -> (28, 95, 44)."""
    text = color.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


@dataclass
class ClassMap:
    """A class map in memory: uint8 class ids (NODATA where none) on a georeferenced grid, and its classes."""

    data: np.ndarray
    transform: Affine
    crs: CRS
    classes: list[dict]
    """[{'id', 'name', 'color'}] in class id order, as a bundle lists them."""
    tags: dict[str, str] = field(default_factory=dict)
    """Provenance: LANDCOVER_BUNDLE, LANDCOVER_IMAGES (JSON list), LANDCOVER_PROBABILITIES (file name) ..."""

    @property
    def cell_area(self) -> float:
        """Ground area of one map pixel in square CRS units (m² on projected CRSs)."""
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d)

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [c["name"] for c in self.classes]


def _class_styling(classes: list[dict], tags: dict[str, str]) -> dict:
    """write_cog's styling of a class map: colour table, class names (band tags + categories), provenance."""
    colormap = {i: (0, 0, 0, 0) for i in range(256)}
    for c in classes:
        colormap[int(c["id"])] = (*hex_rgb(c["color"]), 255)
    names = [""] * (max(int(c["id"]) for c in classes) + 1)
    for c in classes:
        names[int(c["id"])] = c["name"]
    band_tags = {f"CLASS_{int(c['id'])}": c["name"] for c in classes}
    return {"colormap": colormap, "tags": {**tags, CLASSES_TAG: json.dumps(classes)}, "band_tags": [band_tags],
            "descriptions": ["class"], "category_names": names}


def _probability_styling(classes: list[dict], tags: dict[str, str] | None) -> dict:
    return {"tags": {**(tags or {}), CLASSES_TAG: json.dumps(classes)}, "descriptions": [c["name"] for c in classes],
            "scales": [1 / PROB_SCALE] * len(classes)}


def write_class_map(cm: ClassMap, path: str | Path) -> Path:
    """A class-map COG: colour table and class names (band tags + .aux.xml categories), mode overviews."""
    style = _class_styling(cm.classes, cm.tags)
    names = style.pop("category_names")
    return write_cog(path, cm.data.astype(np.uint8), cm.transform, cm.crs, NODATA, resampling="MODE",
                     category_names=names, **style)


def start_draft(path: str | Path, height: int, width: int, transform: Affine, crs: CRS, classes: list[dict],
                tags: dict[str, str], probabilities: bool = False) -> Path:
    """An empty tiled GeoTIFF (all nodata) for a class map, or with `probabilities` its per-class probabilities,
    too large to hold at once: fill it with write_rows, then finish_draft makes it the COG."""
    style = _probability_styling(classes, tags) if probabilities else _class_styling(classes, tags)
    style.pop("category_names", None)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(classes) if probabilities else 1,
               "dtype": "uint8", "crs": crs, "transform": transform, "nodata": NODATA, "tiled": True,
               "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}  # uncompressed: rows land as written
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(path, "w", **profile) as dst:
        describe(dst, **style)
    return Path(path)


def write_rows(draft: str | Path, row: int, data: np.ndarray) -> None:
    """Write (h, w) class ids or (classes, h, w) scaled probabilities into a draft from `row` down (flushed)."""
    data = data[None] if data.ndim == 2 else data
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(draft, "r+") as dst:
        dst.write(data, window=Window(0, row, data.shape[2], data.shape[1]))


def finish_draft(draft: str | Path, path: str | Path, classes: list[dict], probabilities: bool = False) -> Path:
    """The draft as a COG at `path` (class maps: mode overviews and a categories sidecar; probabilities: average)."""
    names = None if probabilities else _class_styling(classes, {})["category_names"]
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(draft) as src:
        return copy_to_cog(src, Path(path), "AVERAGE" if probabilities else "MODE", names)


def raster_classes(path: str | Path, probabilities: bool = False) -> tuple[list[dict], dict[str, str]]:
    """The classes of a raster read as classes ([{'id', 'name', 'color'}]) and its other tags: landcover's
    LANDCOVER_CLASSES tag, else for a probability raster (one band per class) the band descriptions, for a class
    map (one band of integer ids) the category names GDAL keeps in its .aux.xml sidecar (empty names skipped), with
    colours from the palette; else a clear error."""
    with open_raster(path) as src:
        tags = src.tags()
        count, dtype, descriptions = src.count, np.dtype(src.dtypes[0]), list(src.descriptions)
    if not probabilities and count != 1:
        what = "a probability raster (one band per class)? give the class map itself" if CLASSES_TAG in tags else \
            "a class map has one band of integer class ids"
        raise LandcoverError(f"is not a class map: it has {count} bands ({what})", path)
    if CLASSES_TAG in tags:
        return json.loads(tags.pop(CLASSES_TAG)), tags
    if probabilities:
        if not all(descriptions):
            raise LandcoverError("has no class names (no LANDCOVER_CLASSES tag and unnamed bands): name each band "
                                 "after its class", path)
        if len(descriptions) > NODATA:
            raise LandcoverError(f"has {len(descriptions)} bands: at most {NODATA} classes fit a class map", path)
        named = list(enumerate(descriptions))
    else:
        if dtype.kind not in "iu":
            raise LandcoverError("is not a categorical map (one band of integer class ids)", path)
        named = [(i, n) for i, n in enumerate(_category_names(Path(f"{path}.aux.xml"))) if n and i != NODATA]
        if not named:
            raise LandcoverError("has no class names: not a landcover class map (no LANDCOVER_CLASSES tag) and no "
                                 "category names in its .aux.xml; make it with `landcover predict`, or name its "
                                 "categories (e.g. in QGIS)", path)
    colors = palette(max(i for i, _ in named) + 1)
    return [{"id": i, "name": n, "color": colors[i]} for i, n in named], tags


def read_class_map(path: str | Path) -> ClassMap:
    """A class map (`raster_classes` names its classes) with its data, or a clear error."""
    classes, tags = raster_classes(path)
    with open_raster(path) as src:
        if src.crs is None:
            raise LandcoverError("has no CRS", path)
        return ClassMap(src.read(1), src.transform, src.crs, classes, tags)


def _category_names(aux: Path) -> list[str]:
    if not aux.exists():
        return []
    try:
        root = ElementTree.parse(aux).getroot()
    except ElementTree.ParseError:
        return []
    band = root.find("PAMRasterBand[@band='1']")
    found = band.find("CategoryNames") if band is not None else None
    return [item.text or "" for item in found] if found is not None else []


def scale_probabilities(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Probabilities (classes, h, w) in [0, 1] as stored: uint8 p * 254, 255 where not valid."""
    scaled = np.rint(np.clip(probs, 0, 1) * PROB_SCALE).astype(np.uint8)
    scaled[:, ~valid] = NODATA
    return scaled


def write_probabilities(path: str | Path, probs: np.ndarray, valid: np.ndarray, transform: Affine, crs: CRS,
                        classes: list[dict], tags: dict[str, str] | None = None) -> Path:
    """Per-class probabilities (classes, h, w) in [0, 1] as a uint8 COG (p * 254, 255 nodata, GDAL scale 1/254)."""
    return write_scaled_probabilities(path, scale_probabilities(probs, valid), transform, crs, classes, tags)


def write_scaled_probabilities(path: str | Path, scaled: np.ndarray, transform: Affine, crs: CRS,
                               classes: list[dict], tags: dict[str, str] | None = None) -> Path:
    """Probabilities already scaled as stored (uint8 p * 254, 255 nodata; e.g. a window of a probability COG) as a
    probability COG."""
    return write_cog(path, scaled, transform, crs, NODATA, resampling="AVERAGE", **_probability_styling(classes, tags))


def read_probabilities(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities as float32 (classes, h, w), valid mask) from a probability COG."""
    with open_raster(path) as src:
        raw = src.read()
    valid = raw[0] != NODATA
    return raw.astype(np.float32) / PROB_SCALE, valid
