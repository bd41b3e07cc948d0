"""Scribbles: a few strokes per class, from a vector layer (lines, polygons, points; any CRS) or a raster of class
codes (0 = unlabelled), burned onto the image's grid as the CRF's evidence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landcover.errors import LandcoverError
from landcover.geo.raster import open_raster, require_crs
from landcover.maps.classmap import NODATA
from landcover.predict.evidence import STRIP_ROWS, evidence_profile, labelled_evidence
from landcover.schemes import ClassScheme, load_scheme


@dataclass
class Scribbles:
    """Scribbles as class ids on a grid's strips, and the classes they name."""

    path: str
    classes: list[dict]
    geometries: np.ndarray | None
    """Vector scribbles in the grid CRS (None for a raster)."""
    ids: np.ndarray | None
    """The class id of each geometry."""
    code_to_id: np.ndarray | None
    """Raster scribbles: class id of each code (NODATA for unlabelled)."""

    def on_grid(self, crs: CRS, transform: Affine, width: int, height: int) -> np.ndarray:
        """(height, width) class ids, NODATA where nothing is scribbled."""
        if self.geometries is not None:
            burned = rasterize(zip(self.geometries, self.ids.astype(np.int32), strict=True), out_shape=(height, width),
                               transform=transform, fill=NODATA, all_touched=True, dtype="int32")
            return burned.astype(np.uint8)
        with open_raster(self.path) as src, WarpedVRT(src, crs=crs, transform=transform, width=width, height=height,
                                                      resampling=Resampling.nearest) as vrt:
            codes = vrt.read(1).astype(np.int64)
            known = vrt.dataset_mask() > 0
        ok = known & (codes > 0) & (codes < len(self.code_to_id))
        return np.where(ok, self.code_to_id[np.clip(codes, 0, len(self.code_to_id) - 1)], NODATA).astype(np.uint8)


def read_scribbles(path: str | Path, crs: CRS, class_field: str | None,
                   scheme: str | ClassScheme | None) -> Scribbles:
    """Scribbles from a vector layer (`class_field` holds class names, or codes with `scheme`) or a raster of codes
    (through `scheme`, else each code its own class), in the grid CRS."""
    path = str(path)
    if not Path(path).exists():
        raise LandcoverError("no such file", path)
    try:
        with rasterio.open(path) as src:  # a raster of codes; vector layers are not rasters GDAL opens
            require_crs(src)
            dtype = src.dtypes[0]
    except rasterio.errors.RasterioIOError:
        dtype = None
    if dtype is not None:
        if np.dtype(dtype).kind not in "iu":
            raise LandcoverError("raster scribbles are integer class codes (0 = unlabelled)", path)
        return _raster_scribbles(path, scheme)
    if not class_field:
        raise LandcoverError("vector scribbles need --class-field (the attribute naming each stroke's class)", path)
    from landcover.chips.labels import read_vector_labels

    if isinstance(scheme, str):
        scheme = load_scheme(scheme)
    labels, sch, _ = read_vector_labels(path, crs, scheme, attribute=class_field, all_touched=True)
    used = sorted(set(labels.classes.tolist()))
    classes = [{"id": i, "name": sch.classes[c].name, "color": sch.classes[c].color} for i, c in enumerate(used)]
    remap = np.full(256, NODATA, np.int64)
    remap[used] = np.arange(len(used))
    return Scribbles(path, classes, labels.geometries, remap[labels.classes.astype(np.int64)], None)


def _raster_scribbles(path: str, scheme: str | ClassScheme | None) -> Scribbles:
    with open_raster(path) as src:
        counts = np.zeros(65536, np.int64)
        for row in range(0, src.height, STRIP_ROWS):
            window = Window(0, row, src.width, min(STRIP_ROWS, src.height - row))
            data = src.read(1, window=window).astype(np.int64)
            ok = (src.read_masks(1, window=window) > 0) & (data > 0) & (data < 65536)
            counts += np.bincount(data[ok], minlength=65536)
    codes = np.flatnonzero(counts)
    if scheme:
        sch = load_scheme(scheme) if isinstance(scheme, str) else scheme
        lookup = sch.lookup()
        unknown = [int(c) for c in codes if lookup[c] >= len(sch.classes)]
        if unknown:
            raise LandcoverError(f"codes {unknown[:10]} are not in scheme {sch.name!r}", path)
        used = sorted({int(lookup[c]) for c in codes})
        classes = [{"id": i, "name": sch.classes[c].name, "color": sch.classes[c].color} for i, c in enumerate(used)]
        code_to_id = np.full(65536, NODATA, np.int64)
        for c in codes:
            code_to_id[c] = used.index(int(lookup[c]))
    else:
        from landcover.schemes import palette

        classes = [{"id": i, "name": str(int(c)), "color": color}
                   for i, (c, color) in enumerate(zip(codes, palette(len(codes)), strict=True))]
        code_to_id = np.full(65536, NODATA, np.int64)
        code_to_id[codes] = np.arange(len(codes))
    return Scribbles(path, classes, None, None, code_to_id)


def write_evidence(scribbles: Scribbles, path: Path, crs: CRS, transform: Affine, width: int,
                   height: int) -> np.ndarray:
    """The scribbles as a probability raster on the grid (their class at CONFIDENCE, the rest shared; nodata where
    unscribbled), strip by strip; returns the scribbled pixels per class."""
    n = len(scribbles.classes)
    if n < 2:
        raise LandcoverError(f"the scribbles name one class only ({scribbles.classes[0]['name'] if n else 'none'}): "
                             "a CRF needs strokes of two classes or more", scribbles.path)
    counts = np.zeros(n, np.int64)
    with rasterio.open(path, "w", **evidence_profile(n, crs, transform, width, height)) as dst:
        for row in range(0, height, STRIP_ROWS):
            rows = min(STRIP_ROWS, height - row)
            ids = scribbles.on_grid(crs, transform * Affine.translation(0, row), width, rows)
            seen = ids != NODATA
            counts += np.bincount(ids[seen], minlength=n)[:n]
            dst.write(np.where(seen, labelled_evidence(ids, n), NODATA).astype(np.uint8),
                      window=Window(0, row, width, rows))
        dst.update_tags(LANDCOVER_CLASSES=json.dumps(scribbles.classes))
    if not counts.any():
        raise LandcoverError("no scribble falls on the image: are they for this image, in a CRS it can be placed "
                             "in?", scribbles.path)
    missing = [c["name"] for c, k in zip(scribbles.classes, counts, strict=True) if not k]
    if len(missing) >= n - 1:
        raise LandcoverError(f"only one class has strokes on the image (none for {', '.join(missing)}): a CRF "
                             "needs two or more", scribbles.path)
    return counts

