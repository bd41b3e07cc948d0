"""Class maps on disk: Cloud-Optimised GeoTIFFs with a colour table, class names and provenance tags."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from landcover.atomic import temp_path
from landcover.errors import LandcoverError
from landcover.geo.raster import open_raster

NODATA = 255
"""Class maps are uint8 class ids; 255 marks nodata (no imagery, outside the AOI, not predicted)."""
PROB_SCALE = 254
"""Probability COGs store round(p * 254) in uint8, 255 nodata; GDAL's scale (1/254) turns them back into p."""
CLASSES_TAG = "LANDCOVER_CLASSES"


def hex_rgb(color: str) -> tuple[int, int, int]:
    """'#1c5f2c' -> (28, 95, 44)."""
    text = color.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def write_cog(path: str | Path, data: np.ndarray, transform: Affine, crs: CRS, nodata: float | None,
              colormap: dict[int, tuple[int, ...]] | None = None, tags: dict[str, str] | None = None,
              band_tags: list[dict[str, str]] | None = None, descriptions: list[str] | None = None,
              scales: list[float] | None = None, resampling: str = "MODE", category_names: list[str] | None = None,
              blocksize: int = 256) -> Path:
    """Write (bands, h, w) or (h, w) as a deflate COG with overviews, under a temporary name then renamed."""
    path = Path(path)
    data = data[None] if data.ndim == 2 else data
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype,
               "crs": crs, "transform": transform, "nodata": nodata}
    tmp = temp_path(path)
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(data)
                if colormap:
                    dst.write_colormap(1, colormap)
                if tags:
                    dst.update_tags(**tags)
                for i in range(count):
                    if band_tags and band_tags[i]:
                        dst.update_tags(i + 1, **band_tags[i])
                    if descriptions:
                        dst.set_band_description(i + 1, descriptions[i])
                if scales:
                    dst.scales = tuple(scales)
                    dst.offsets = tuple(0.0 for _ in scales)
            with mem.open() as src:
                rasterio.shutil.copy(src, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(blocksize),
                                     OVERVIEW_RESAMPLING=resampling, RESAMPLING="NEAREST")
        aux = Path(f"{path}.aux.xml")
        if category_names:
            _write_categories(Path(f"{tmp}.aux.xml"), category_names)
        os.replace(tmp, path)
        if category_names:
            os.replace(f"{tmp}.aux.xml", aux)
        else:
            aux.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.aux.xml").unlink(missing_ok=True)
    return path


def _write_categories(path: Path, names: list[str]) -> None:
    """A PAM sidecar with band 1's category names (GDAL and QGIS read class names from it)."""
    items = "".join(f"<Category>{escape(n)}</Category>" for n in names)
    path.write_text(f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{items}</CategoryNames>'
                    f"</PAMRasterBand></PAMDataset>\n")


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


def write_class_map(cm: ClassMap, path: str | Path) -> Path:
    """A class-map COG: colour table and class names (band tags + .aux.xml categories), mode overviews."""
    colormap = {i: (0, 0, 0, 0) for i in range(256)}
    for c in cm.classes:
        colormap[int(c["id"])] = (*hex_rgb(c["color"]), 255)
    names = [""] * (max(int(c["id"]) for c in cm.classes) + 1)
    for c in cm.classes:
        names[int(c["id"])] = c["name"]
    band_tags = {f"CLASS_{int(c['id'])}": c["name"] for c in cm.classes}
    tags = {**cm.tags, CLASSES_TAG: json.dumps(cm.classes)}
    return write_cog(path, cm.data.astype(np.uint8), cm.transform, cm.crs, NODATA, colormap=colormap, tags=tags,
                     band_tags=[band_tags], descriptions=["class"], resampling="MODE", category_names=names)


def read_class_map(path: str | Path) -> ClassMap:
    """A class map written by write_class_map (classes from its tags), or a clear error."""
    with open_raster(path) as src:
        tags = src.tags()
        if CLASSES_TAG not in tags:
            raise LandcoverError("not a landcover class map (no LANDCOVER_CLASSES tag; make it with "
                                 "`landcover predict`)", path)
        if src.crs is None:
            raise LandcoverError("has no CRS", path)
        data = src.read(1)
        classes = json.loads(tags.pop(CLASSES_TAG))
        return ClassMap(data, src.transform, src.crs, classes, tags)


def write_probabilities(path: str | Path, probs: np.ndarray, valid: np.ndarray, transform: Affine, crs: CRS,
                        classes: list[dict], tags: dict[str, str] | None = None) -> Path:
    """Per-class probabilities (classes, h, w) in [0, 1] as a uint8 COG (p * 254, 255 nodata, GDAL scale 1/254)."""
    scaled = np.rint(np.clip(probs, 0, 1) * PROB_SCALE).astype(np.uint8)
    scaled[:, ~valid] = NODATA
    return write_cog(path, scaled, transform, crs, NODATA, tags=tags, descriptions=[c["name"] for c in classes],
                     scales=[1 / PROB_SCALE] * len(classes), resampling="AVERAGE")


def read_probabilities(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities as float32 (classes, h, w), valid mask) from a probability COG."""
    with open_raster(path) as src:
        raw = src.read()
    valid = raw[0] != NODATA
    return raw.astype(np.float32) / PROB_SCALE, valid
