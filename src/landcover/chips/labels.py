"""Label rasters: codes mapped to class ids, resampled once onto the chip grid or looked up at points."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from landcover.errors import LandcoverError
from landcover.geo.raster import (
    crs_name,
    open_raster,
    read_from,
    require_crs,
    same_crs,
    source_pixels,
    transformer,
)
from landcover.schemes import INVALID, ClassScheme, palette, parse_scheme


@dataclass(frozen=True)
class LabelRaster:
    """A single-band land-cover raster whose codes a scheme maps to classes."""

    path: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    nodata: float | None

    @classmethod
    def open(cls, path: str | Path, band: int = 1) -> LabelRaster:
        """Open and check a label raster."""
        with open_raster(path) as src:
            crs = require_crs(src)
            if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
                raise LandcoverError(f"labels must be integer codes, not {src.dtypes[0]}", path)
            return cls(str(path), crs, src.transform, src.width, src.height, src.nodata)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the label CRS."""
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)

    def window_for(self, bounds: tuple[float, float, float, float], crs: CRS) -> Window | None:
        """The native window (one pixel of margin) covering bounds given in another CRS."""
        native = transformer(crs, self.crs).transform_bounds(*bounds, densify_pts=21)
        w = window_from_bounds(*native, transform=self.transform)
        col0, row0 = math.floor(w.col_off) - 1, math.floor(w.row_off) - 1
        col1, row1 = math.ceil(w.col_off + w.width) + 1, math.ceil(w.row_off + w.height) + 1
        col0, row0, col1, row1 = max(col0, 0), max(row0, 0), min(col1, self.width), min(row1, self.height)
        if col1 <= col0 or row1 <= row0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)

    def read_codes(self, window: Window) -> np.ndarray:
        """Raw label codes in a native window."""
        return read_from(self.path, lambda src: src.read(1, window=window))

    def classes(self, window: Window, lut: np.ndarray) -> np.ndarray:
        """Class ids (INVALID for nodata and ignored codes) in a native window."""
        codes = self.read_codes(window)
        classes = lut[codes.astype(np.int64) & 0xFFFF]
        classes[(codes < 0) | (codes > 0xFFFF)] = INVALID
        if self.nodata is not None:
            classes[codes == self.nodata] = INVALID
        return classes

    def on_grid(self, crs: CRS, transform: Affine, width: int, height: int, lut: np.ndarray,
                points: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Class ids on a block of the grid (resampled once, nearest), and at exact points inside it."""
        west, north = transform.c, transform.f
        bounds = (west, north + height * transform.e, west + width * transform.a, north)
        window = self.window_for(bounds, crs)
        if window is None:
            empty = None if points is None else np.full(len(points[0]), INVALID, np.uint8)
            return np.full((height, width), INVALID, np.uint8), empty
        patch = LabelPatch(self, self.classes(window, lut), window)
        found = None if points is None else patch.at_points(points[0], points[1], crs)
        return patch.to_grid(crs, transform, width, height), found

    def unknown_codes(self, scheme: ClassScheme, window: Window | None = None) -> list[int]:
        """Codes in the raster (or a window of it) that the scheme neither maps nor ignores."""
        known = scheme.known_codes()
        if self.nodata is not None:
            known.add(int(self.nodata))
        found: set[int] = set()
        with rasterio.open(self.path) as src:
            win = window or Window(0, 0, self.width, self.height)
            step = 4096
            for r in range(int(win.row_off), int(win.row_off + win.height), step):
                h = min(step, int(win.row_off + win.height) - r)
                block = src.read(1, window=Window(win.col_off, r, win.width, h))
                found.update(int(v) for v in np.unique(block))
        return sorted(found - known)


@dataclass(frozen=True)
class LabelPatch:
    """Class ids of a native label window, ready for grid resampling and point look-ups."""

    labels: LabelRaster
    classes: np.ndarray
    window: Window

    @property
    def transform(self) -> Affine:
        """Transform of the patch's top-left pixel."""
        return rasterio.windows.transform(self.window, self.labels.transform)

    def to_grid(self, crs: CRS, transform: Affine, width: int, height: int) -> np.ndarray:
        """Class ids resampled (nearest, once) onto a grid: each grid pixel takes the label pixel its centre falls
        in; INVALID outside the labels."""
        cols, rows = source_pixels(crs, transform, width, height, self.labels.crs, self.transform)
        cols, rows = np.floor(cols).astype(np.intp), np.floor(rows).astype(np.intp)
        h, w = self.classes.shape
        inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        out = np.full((height, width), INVALID, dtype=np.uint8)
        out[inside] = self.classes[rows[inside], cols[inside]]
        return out

    def at_points(self, xs: np.ndarray, ys: np.ndarray, crs: CRS) -> np.ndarray:
        """Class ids at exact point locations given in another CRS (INVALID outside)."""
        if same_crs(crs, self.labels.crs):
            lx, ly = xs, ys
        else:
            lx, ly = transformer(crs, self.labels.crs).transform(xs, ys)
        cols, rows = ~self.transform @ (np.asarray(lx), np.asarray(ly))
        cols, rows = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
        h, w = self.classes.shape
        inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        out = np.full(cols.shape, INVALID, dtype=np.uint8)
        out[inside] = self.classes[rows[inside], cols[inside]]
        return out


@dataclass(frozen=True)
class LabelVector:
    """A vector layer burned into class ids: polygons (rasterized per block) or points (one tile each)."""

    path: str
    geometries: np.ndarray
    """Shapely geometries in the grid CRS."""
    classes: np.ndarray
    """The class id of each geometry."""
    all_touched: bool = False
    background: int = INVALID
    """The class id of pixels no polygon covers (INVALID: unlabelled)."""

    @property
    def is_points(self) -> bool:
        """Whether the layer holds points (tiles are centred on them) rather than polygons."""
        return bool(len(self.geometries)) and bool(np.all(shapely.get_type_id(self.geometries) == 0))

    def on_grid(self, crs: CRS, transform: Affine, width: int, height: int, lut: np.ndarray | None = None,
                points: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Class ids on a block of the grid (the background, by default INVALID, where no polygon), and at exact
        points inside it.

        The geometries are already in the grid CRS and carry class ids, so `crs` and `lut` are not needed."""
        out = np.full((height, width), self.background, dtype=np.uint8)
        west, north = transform.c, transform.f
        east, south = west + width * transform.a, north + height * transform.e
        bounds = shapely.bounds(self.geometries)
        near = np.flatnonzero((bounds[:, 0] < east) & (bounds[:, 2] > west)
                              & (bounds[:, 1] < north) & (bounds[:, 3] > south))
        if len(near):
            rasterize(zip(self.geometries[near], self.classes[near].astype(int), strict=True), out=out,
                      transform=transform, all_touched=self.all_touched)
        if points is None:
            return out, None
        xs, ys = points
        found = np.full(len(xs), INVALID, dtype=np.uint8)
        for i in near:  # later polygons win, as they do when rasterized
            found[shapely.contains_xy(self.geometries[i], xs, ys)] = self.classes[i]
        return out, found


def read_layer(path: str | Path, what: str) -> gpd.GeoDataFrame:
    """Read a vector layer (any OGR format) that must have a CRS, or fail with one line naming the file."""
    if not Path(path).exists():
        raise LandcoverError("no such file", path)
    try:
        frame = gpd.read_file(path)
    except Exception as exc:
        raise LandcoverError(f"not a readable vector layer ({str(exc).splitlines()[0]})", path) from None
    if not isinstance(frame, gpd.GeoDataFrame):  # a table (CSV): points from its coordinate columns
        frame = points_from_table(frame, path, what)
    if frame.crs is None:
        raise LandcoverError(f"the {what} has no CRS (set one, e.g. ogr2ogr -a_srs EPSG:XXXX)", path)
    return frame


LONGITUDES = ("lon", "lng", "long", "longitude", "x_wgs84")
LATITUDES = ("lat", "latitude", "y_wgs84")


def points_from_table(table: pd.DataFrame, path: str | Path, what: str) -> gpd.GeoDataFrame:
    """Points from a table's lon/lat columns (WGS84, any case); x/y columns alone carry no CRS and are refused."""
    columns = {c.lower(): c for c in table.columns}
    lon = next((columns[c] for c in LONGITUDES if c in columns), None)
    lat = next((columns[c] for c in LATITUDES if c in columns), None)
    if lon is None or lat is None:
        xy = "x" in columns and "y" in columns
        raise LandcoverError(f"a table as the {what} needs lon and lat columns (WGS84 degrees)"
                             + ("; x/y columns carry no CRS: give lon/lat, or a GeoPackage with its CRS" if xy else
                                f"; it has: {', '.join(map(str, table.columns))}"), path)
    try:
        x, y = pd.to_numeric(table[lon]), pd.to_numeric(table[lat])
    except (TypeError, ValueError):
        raise LandcoverError(f"columns {lon!r} and {lat!r} must hold numbers", path) from None
    return gpd.GeoDataFrame(table.drop(columns=[lon, lat]), geometry=gpd.points_from_xy(x, y), crs="EPSG:4326")


def read_vector_labels(path: str | Path, crs: CRS, scheme: ClassScheme | None, attribute: str | None = None,
                       burn_value: int | None = None, class_name: str = "feature", strict: bool = False,
                       all_touched: bool = False, background: str | None = None
                       ) -> tuple[LabelVector, ClassScheme, int]:
    """Read a vector layer as labels in the grid CRS; returns it, its scheme, and how many features were skipped.

    Values come from `attribute` (integer codes or class names) or are all `burn_value`. Without a scheme, one
    is built from the distinct values (and `background`, first). Invalid geometries are skipped and counted (an
    error with `strict`). Pixels no polygon covers are unlabelled, or with `background` that class (footprints
    of one kind, such as buildings, against everything else).
    """
    path = str(path)
    if (attribute is None) == (burn_value is None):
        raise LandcoverError("vector labels need one of --burn-attribute or --burn-value", path)
    frame = read_layer(path, "layer")
    if frame.empty:
        raise LandcoverError("the layer has no features", path)
    if attribute is not None and attribute not in frame.columns:
        fields = ", ".join(c for c in frame.columns if c != "geometry")
        raise LandcoverError(f"no attribute {attribute!r} (the layer has: {fields})", path)
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    bad = ~frame.geometry.is_valid
    if bad.any():
        if strict:
            first = frame.index[bad][0]
            raise LandcoverError(f"{int(bad.sum())} invalid geometries (first: feature {first}; drop --strict to "
                                 "skip them)", path)
        frame = frame[~bad]
    if frame.empty:
        raise LandcoverError("the layer has no valid geometry", path)
    values = frame[attribute] if attribute is not None else pd.Series(burn_value, index=frame.index)
    if scheme is None:
        scheme = scheme_from_values(values, class_name if burn_value is not None else None, path, background)
    classes = _classes_for(values, scheme, path)
    fill = INVALID
    if background is not None:
        ids = {c.name.lower(): c.id for c in scheme.classes}
        if background.lower() not in ids:
            raise LandcoverError(f"--background {background!r} is not a class of scheme {scheme.name!r} "
                                 f"({', '.join(c.name for c in scheme.classes)})", path)
        fill = ids[background.lower()]
    geometries = frame.to_crs(CRS(crs).to_wkt()).geometry.values
    if not np.isfinite(shapely.bounds(geometries)).all():
        raise LandcoverError(f"features do not project into the grid CRS ({crs_name(crs)}): is the layer's CRS "
                             f"({frame.crs.to_string()}) right?", path)
    return LabelVector(path, np.asarray(geometries), classes, all_touched, fill), scheme, int(bad.sum())


def scheme_from_values(values: pd.Series, name: str | None, source: str,
                       background: str | None = None) -> ClassScheme:
    """A scheme with one class per distinct value (integer codes sorted; text values as names), after a
    `background` class (code 0, or one past the largest code when 0 is taken)."""
    distinct = sorted(values.dropna().unique().tolist(), key=lambda v: (isinstance(v, str), v))
    if all(isinstance(v, int | np.integer) for v in distinct):
        entries = [{"name": name or str(v), "code": int(v)} for v in distinct]
    else:
        entries = [{"name": str(v), "code": i + 1} for i, v in enumerate(distinct)]
    if background is not None and background.lower() not in {e["name"].lower() for e in entries}:
        codes = {e["code"] for e in entries}
        entries.insert(0, {"name": background, "code": 0 if 0 not in codes else max(codes) + 1})
    for entry, color in zip(entries, palette(len(entries)), strict=True):
        entry["color"] = color
    return parse_scheme({"name": Path(source).stem, "description": f"classes of {Path(source).name}",
                         "classes": entries}, source)


def _classes_for(values: pd.Series, scheme: ClassScheme, source: str) -> np.ndarray:
    """Class ids of attribute values: integers are codes, text matches class names (any case)."""
    lut = scheme.lookup()
    by_name = {c.name.lower(): c.id for c in scheme.classes}
    out = np.full(len(values), INVALID, dtype=np.uint8)
    unknown = set()
    for i, v in enumerate(values.tolist()):
        if isinstance(v, int | np.integer) or (isinstance(v, float) and float(v).is_integer()):
            code = int(v)
            if 0 <= code < 65536 and (lut[code] != INVALID or code in scheme.ignore):
                out[i] = lut[code]
                continue
        elif isinstance(v, str) and v.lower() in by_name:
            out[i] = by_name[v.lower()]
            continue
        unknown.add(v)
    if unknown:
        shown = sorted(map(str, unknown))[:10]
        raise LandcoverError(f"label values {shown} are not in scheme {scheme.name!r}", source)
    return out


def summarise_codes(codes: list, shown: int = 20) -> str:
    """A list of codes, cut short when long: '[1, 2, 3]', or the first `shown` 'and N more (M distinct values: is this
    a land-cover raster of class codes?)'."""
    if len(codes) <= shown:
        return str(list(codes))
    return (f"{list(codes[:shown])} and {len(codes) - shown:,} more ({len(codes):,} distinct values: is this a "
            "land-cover raster of class codes?)")
