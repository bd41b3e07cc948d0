"""A grid of square tiles on a projected CRS, and the stable keys that name its tiles."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS
from rasterio.warp import calculate_default_transform, transform_bounds

from landcover.bounds import POSITIVE
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene, canonical_crs, same_crs, transformer

_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(m|px)?\s*$")


def area_text(hectares: float) -> str:
    """An area as a person reads it at any scale: '12,345 ha', '12.3 ha', or in m² below a hectare."""
    if hectares >= 100:
        return f"{hectares:,.0f} ha"
    if hectares >= 1:
        return f"{hectares:,.1f} ha"
    return f"{hectares * 1e4:,.0f} m²"


def parse_length(text: str | float, what: str = "size") -> tuple[float, str]:
    """'480m' -> (480.0, 'm'); '16px' -> (16.0, 'px'); a number without its unit is refused (metres and pixels
    differ 30-fold on Landsat, 300-fold on a 10 cm photo), except 0."""
    match = _LENGTH.match(str(text))
    if not match:
        raise LandcoverError(f"{what} {text!r} is not a length like '480m' or '16px'")
    value, unit = float(match.group(1)), match.group(2)
    if unit is None and value != 0:
        raise LandcoverError(f"{what} {text!r} has no unit: write {value:g}m (metres) or {value:g}px (pixels)")
    return value, unit or "px"


def to_pixels(length: tuple[float, str], res: float, what: str) -> int:
    """A length in metres or pixels as a whole number of grid pixels."""
    value, unit = length
    px = value if unit == "px" else value / res
    if px != 0 and round(px) < 1:
        raise LandcoverError(f"{what} {value:g}{unit} is smaller than one pixel ({res:g} m)")
    return round(px)


PIXEL_TOLERANCE = 1e-3
"""Pixels whose sides differ by less than this fraction are treated as square (e.g. 300.038 x 300.042 m)."""


def on_lattice(scene: Scene, grid: Grid) -> bool:
    """Whether the scene's pixels are the grid's pixels: same CRS, same size, origins a whole number apart."""
    if not same_crs(scene.crs, grid.crs):
        return False
    if not all(math.isclose(r, grid.res, rel_tol=PIXEL_TOLERANCE) for r in scene.res):
        return False
    col, row = (grid.x0 - scene.transform.c) / grid.res, (scene.transform.f - grid.y0) / grid.res
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def _num(value: float) -> str:
    """A coordinate or size for a key: fixed-point, trailing zeros dropped."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def utm_crs_for(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone CRS that holds a point."""
    info = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return CRS.from_epsg(int(info[0].code))


@dataclass(frozen=True)
class Grid:
    """Square tiles of `tile` pixels at `res` CRS units, every `stride` pixels, `pad` pixels of context."""

    crs: CRS
    res: float
    tile: int
    stride: int
    pad: int
    x0: float
    y0: float
    """Upper-left corner of the core of tile (col 0, row 0)."""

    @property
    def chip(self) -> int:
        """Chip width in pixels: the core tile plus padding on both sides."""
        return self.tile + 2 * self.pad

    @property
    def step(self) -> float:
        """Distance between neighbouring tile origins in CRS units."""
        return self.stride * self.res

    def origin(self, col: int, row: int) -> tuple[float, float]:
        """Upper-left corner of a tile's core."""
        return self.x0 + col * self.step, self.y0 - row * self.step

    def chip_transform(self, x: float, y: float) -> Affine:
        """Affine transform of the chip (core plus padding) whose core's upper-left corner is (x, y)."""
        return Affine(self.res, 0, x - self.pad * self.res, 0, -self.res, y + self.pad * self.res)

    def key(self, x: float, y: float) -> str:
        """Stable tile key: core size (px), resolution, padding (px), core's upper-left corner."""
        return f"s{self.tile}-r{_num(self.res)}-p{self.pad}-x{_num(x)}-y{_num(y)}"

    def chip_boxes(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Chip footprints (core plus padding) of cores whose upper-left corners are (xs, ys)."""
        x, y = np.asarray(xs) - self.pad * self.res, np.asarray(ys) + self.pad * self.res
        size = self.chip * self.res
        return shapely.box(x, y - size, x + size, y)

    def tiles_covering(self, bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """Upper-left corners (xs, ys) of every lattice tile whose chip lies wholly within bounds."""
        left, bottom, right, top = bounds
        span, eps = self.chip * self.res, 1e-6 * self.res
        c0 = math.ceil((left + self.pad * self.res - self.x0) / self.step - eps)
        c1 = math.floor((right - span + self.pad * self.res - self.x0) / self.step + eps)
        r0 = math.ceil((self.y0 - top + self.pad * self.res) / self.step - eps)
        r1 = math.floor((self.y0 - bottom - span + self.pad * self.res) / self.step + eps)
        if c1 < c0 or r1 < r0:
            return np.empty(0), np.empty(0)
        rows, cols = np.mgrid[r0:r1 + 1, c0:c1 + 1]
        return self.origin(cols.ravel(), rows.ravel())

    def centred_on(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Upper-left corners of tiles centred on points, snapped to the grid's pixel lattice."""
        half = self.tile * self.res / 2
        return (self.x0 + np.round((np.asarray(xs) - half - self.x0) / self.res) * self.res,
                self.y0 - np.round((self.y0 - np.asarray(ys) - half) / self.res) * self.res)

    def to_dict(self) -> dict:
        """The grid's parameters as plain data."""
        return {"crs": self.crs.to_string(), "res": self.res, "tile_px": self.tile, "stride_px": self.stride,
                "pad_px": self.pad, "x0": self.x0, "y0": self.y0}


def footprint(bounds: tuple[float, float, float, float], crs: CRS, to_crs: CRS) -> shapely.Geometry:
    """A rectangle given in one CRS as a polygon in another (edges densified)."""
    left, bottom, right, top = bounds
    if same_crs(crs, to_crs):
        return shapely.box(left, bottom, right, top)
    n = 51
    t = np.linspace(0, 1, n)
    xs = np.concatenate([left + (right - left) * t, np.full(n, right), right - (right - left) * t, np.full(n, left)])
    ys = np.concatenate([np.full(n, top), top - (top - bottom) * t, np.full(n, bottom), bottom + (top - bottom) * t])
    tx, ty = transformer(crs, to_crs).transform(xs, ys)
    return shapely.make_valid(shapely.Polygon(np.column_stack([tx, ty])))


def scene_footprint(scene: Scene, crs: CRS) -> shapely.Geometry:
    """A scene's extent as a polygon in another CRS."""
    return footprint(scene.bounds, scene.crs, crs)


def make_grid(scenes: list[Scene], tile: tuple[float, str], overlap: tuple[float, str] = (0, "px"),
              padding: tuple[float, str] = (0, "px"), crs: str | None = None,
              resolution: float | None = None) -> Grid:
    """The grid for a run: on the first scene's CRS and pixel lattice unless told otherwise."""
    first = scenes[0]
    if resolution is not None:
        POSITIVE.check(resolution, "--resolution")
    if crs:
        try:
            grid_crs = CRS.from_user_input(crs)
        except Exception:
            raise LandcoverError(f"--crs {crs!r} is not a CRS rasterio understands") from None
    else:
        grid_crs = CRS(first.crs)
    if ProjCRS(grid_crs.to_wkt()).is_geographic and tile[1] == "m":
        left, bottom, right, top = transform_bounds(first.crs, "EPSG:4326", *first.bounds)
        grid_crs = utm_crs_for((left + right) / 2, (bottom + top) / 2)
    grid_crs = canonical_crs(grid_crs)
    on_scene_crs = same_crs(grid_crs, first.crs)
    if resolution:
        res = float(resolution)
    elif on_scene_crs and math.isclose(*first.res, rel_tol=PIXEL_TOLERANCE):
        res = first.res[0]
    else:
        t, _, _ = calculate_default_transform(first.crs, grid_crs, first.width, first.height, *first.bounds)
        res = float(f"{max(abs(t.a), abs(t.e)):.3g}")
    if on_scene_crs and all(math.isclose(r, res, rel_tol=PIXEL_TOLERANCE) for r in first.res):
        x0, y0 = first.transform.c, first.transform.f
    else:
        left, bottom, right, top = scene_footprint(first, grid_crs).bounds
        x0, y0 = math.floor(left / res) * res, math.ceil(top / res) * res
    tile_px = to_pixels(tile, res, "tile size")
    if tile_px < 1:
        raise LandcoverError(f"tile size {tile[0]:g}{tile[1]} is smaller than one pixel ({res:g})")
    overlap_px = to_pixels(overlap, res, "overlap") if overlap[0] else 0
    pad_px = to_pixels(padding, res, "padding") if padding[0] else 0
    if overlap_px >= tile_px:
        raise LandcoverError(f"overlap ({overlap_px} px) must be smaller than the tile ({tile_px} px)")
    grid = Grid(grid_crs, res, tile_px, tile_px - overlap_px, pad_px, x0, y0)
    for scene in scenes:
        left, bottom, right, top = scene_footprint(scene, grid_crs).bounds
        if grid.chip * res > min(right - left, top - bottom) + 1e-6 * res:
            raise LandcoverError(
                f"tile size {tile_px * res:g} m ({grid.chip} px with padding) is larger than the scene "
                f"({(right - left):g} x {(top - bottom):g} m)", scene.paths[0])
    return grid
