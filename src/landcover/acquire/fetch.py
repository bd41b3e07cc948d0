"""Reading an item's assets for the area only: the output grid, per-pixel cloud masks, and one item's windows read
(GDAL range requests on remote COGs) onto that grid into a local file, with retries on network errors."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.features import geometry_mask
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_geom
from rasterio.windows import Window
from shapely.geometry import mapping, shape

from landcover.acquire.catalog import FoundItem, sign_href
from landcover.atomic import replacing
from landcover.errors import LandcoverError
from landcover.geo.raster import GDAL_REMOTE

STRIP = 1024
"""Rows of an item's window read at a time (bounds memory: a whole Sentinel-2 tile is never held)."""

MAX_OUTPUT_PIXELS = 4e9
"""The largest output grid acquire writes, in pixels a band (a 63,000 px square): four times the README's 1.2
gigapixel NAIP county; larger areas are several runs, or a coarser --resolution."""


@dataclass(frozen=True)
class Mask:
    """A per-pixel cloud mask: an asset whose listed values, or any of whose listed bits, mark a pixel unusable."""

    asset: str
    values: tuple[int, ...] = ()
    bits: tuple[int, ...] = ()

    def drop(self, data: np.ndarray) -> np.ndarray:
        """True where a pixel is unusable."""
        dropped = np.isin(data, self.values) if self.values else np.zeros(data.shape, bool)
        for bit in self.bits:
            dropped |= (data.astype(np.int64) >> bit) & 1 == 1
        return dropped

    def describe(self) -> str:
        what = f"values {list(self.values)}" if self.values else f"bits {list(self.bits)}"
        return f"{self.asset}: drop {what}"


MASKS = {
    # Sentinel-2 L2A scene classification: no data, saturated/defective, cloud shadow, cloud medium/high, cirrus
    "scl": Mask("SCL", values=(0, 1, 3, 8, 9, 10)),
    # Landsat Collection 2 QA_PIXEL bits: fill, dilated cloud, cirrus, cloud, cloud shadow
    "qa_pixel": Mask("qa_pixel", bits=(0, 1, 2, 3, 4)),
}


def parse_mask(text: str | None) -> Mask | None:
    """'scl', 'qa_pixel', 'ASSET:V1,V2,...' (values to drop) or 'none'."""
    if text in (None, "", "none"):
        return None
    if text in MASKS:
        return MASKS[text]
    asset, _, values = str(text).partition(":")
    try:
        parsed = tuple(int(v) for v in values.split(",") if v.strip())
    except ValueError:
        parsed = ()
    if not asset or not parsed:
        raise LandcoverError(f"--mask {text!r}: give scl, qa_pixel, none or ASSET:VALUES (e.g. cloud:1,2)")
    return Mask(asset, values=parsed)


@dataclass(frozen=True)
class OutputGrid:
    """Where every item is read to: a CRS, a north-up transform and a size; `area` masks pixels outside the AOI."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    area: dict | None = None
    """The AOI polygon as GeoJSON in `crs`, when pixels outside it are nodata (an --aoi file); None for a box."""

    @property
    def res(self) -> float:
        return self.transform.a

    def window_of(self, geometry: dict | None) -> Window | None:
        """The pixel window of a WGS84 footprint on this grid (None: it misses the grid)."""
        if geometry is None:
            return Window(0, 0, self.width, self.height)
        footprint = shape(transform_geom("EPSG:4326", self.crs, geometry))
        left, bottom, right, top = footprint.bounds
        inv = ~self.transform
        c0, r0 = inv * (left, top)
        c1, r1 = inv * (right, bottom)
        c0, r0 = max(0, math.floor(c0)), max(0, math.floor(r0))
        c1, r1 = min(self.width, math.ceil(c1)), min(self.height, math.ceil(r1))
        return Window(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None

    def area_mask(self, window: Window) -> np.ndarray:
        """True inside the AOI polygon for the pixels of a window (all-touched)."""
        h, w = int(window.height), int(window.width)
        if self.area is None:
            return np.ones((h, w), bool)
        transform = rasterio.windows.transform(window, self.transform)
        return geometry_mask([self.area], (h, w), transform, invert=True, all_touched=True)

    def to_dict(self) -> dict:
        return {"crs": self.crs.to_string(), "transform": list(self.transform)[:6], "width": self.width,
                "height": self.height}


def parse_crs(text: str | None) -> CRS | None:
    """An --crs value (EPSG:32618, a WKT or PROJ string), checked before any search."""
    if not text:
        return None
    try:
        return CRS.from_user_input(text)
    except Exception:  # rasterio's CRSError and friends
        raise LandcoverError(f"--crs {text!r} is not a CRS rasterio knows") from None


def output_grid(items: list[FoundItem], assets: list[str], area: shapely.Geometry, mask_by_area: bool,
                crs: CRS | None, resolution: float | None, signing: str | None, retries: int = 3) -> OutputGrid:
    """The items' native grid over the AOI (the most common CRS among them, the finest of the assets' pixel
    sizes, aligned to the reference asset's pixels), unless `crs` / `resolution` override it."""
    reference = _reference_item(items)
    native = [_header(reference, a, signing, retries) for a in assets]
    ref_crs, ref_transform = min(native, key=lambda h: h[1].a)[:2]
    target = crs or ref_crs
    same = target == ref_crs
    if resolution is not None:
        res = float(resolution)
    elif same:
        res = ref_transform.a
    else:
        h = native[0]
        default, _, _ = calculate_default_transform(ref_crs, target, h[2], h[3], *h[4])
        res = default.a
    origin_x, origin_y = (ref_transform.c, ref_transform.f) if same else (0.0, 0.0)
    projected = shape(transform_geom("EPSG:4326", target, mapping(area)))
    left, bottom, right, top = projected.bounds
    x0 = origin_x + math.floor((left - origin_x) / res) * res
    y1 = origin_y + math.ceil((top - origin_y) / res) * res
    width = max(1, math.ceil((right - x0) / res - 1e-9))
    height = max(1, math.ceil((y1 - bottom) / res - 1e-9))
    if width * height > MAX_OUTPUT_PIXELS:
        raise LandcoverError(f"the output grid would be {width:,} x {height:,} px ({width * height / 1e9:,.1f} "
                             f"gigapixels a band) at {res:g} {target.linear_units or 'units'}: at most "
                             f"{MAX_OUTPUT_PIXELS / 1e9:g} gigapixels; give a coarser --resolution or a smaller area")
    return OutputGrid(target, Affine(res, 0, x0, 0, -res, y1), width, height,
                      mapping(projected) if mask_by_area else None)


def _reference_item(items: list[FoundItem]) -> FoundItem:
    """The newest item in the most common CRS (from proj:code / proj:epsg where the items give it)."""
    common = Counter(i.proj_code for i in items).most_common(1)[0][0]
    return [i for i in items if i.proj_code == common][-1]


def _header(item: FoundItem, asset: str, signing: str | None, retries: int) -> tuple:
    def read(src: rasterio.DatasetReader) -> tuple:
        if src.crs is None:
            raise LandcoverError(f"asset {asset!r} of item {item.id} has no CRS", item.hrefs[asset])
        return src.crs, src.transform, src.width, src.height, src.bounds

    return with_retries(item.hrefs[asset], signing, read, f"asset {asset!r} of item {item.id}", retries)


def with_retries(href: str, signing: str | None, read, what: str, retries: int = 3, backoff: float = 1.0):
    """read(dataset) on a raster opened from href, retried with doubling waits when a remote read fails."""
    remote = "://" in href and not href.startswith("file://")
    for attempt in range(retries + 1):
        try:
            with rasterio.Env(**GDAL_REMOTE), rasterio.open(sign_href(href, signing)) as src:
                return read(src)
        except RasterioError as exc:
            reason = str(exc).split("\n")[0]
            if not remote:
                raise LandcoverError(f"{what}: not a readable raster ({reason})", href) from None
            if attempt == retries:
                raise LandcoverError(f"{what}: reading failed after {retries + 1} tries ({reason}); rerun the same "
                                     f"command to resume", href) from None
            time.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FetchJob:
    """What every item's fetch shares: the grid, the assets (in band order), the mask, signing and retries."""

    grid: OutputGrid
    bands: AssetBands
    mask: Mask | None
    resampling: str
    signing: str | None
    cache: str
    retries: int = 3
    backoff: float = 1.0


@dataclass
class Fetched:
    index: int
    item_id: str
    window: tuple[int, int, int, int] | None
    valid: int
    seconds: float


def fetch_item(job: FetchJob, task: tuple[int, FoundItem]) -> Fetched:
    """One item's AOI window, every asset read onto the output grid, written to the cache as the asset bands plus
    a validity band (1 where every asset has data, the mask keeps the pixel and it lies in the AOI)."""
    index, item = task
    started = time.perf_counter()
    window = job.grid.window_of(item.geometry)
    path = cache_path(job.cache, index)
    if window is None:
        return Fetched(index, item.id, None, 0, 0.0)
    h, w = int(window.height), int(window.width)
    transform = rasterio.windows.transform(window, job.grid.transform)
    profile = {"driver": "GTiff", "width": w, "height": h, "count": len(job.bands.names) + 1,
               "dtype": job.bands.dtype,
               "crs": job.grid.crs, "transform": transform, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    valid_total = 0
    with replacing(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, h, STRIP):
            strip = Window(0, row, w, min(STRIP, h - row))
            data, valid = read_strip(job, item, transform, (h, w), strip)
            valid &= job.grid.area_mask(Window(window.col_off, window.row_off + row, w, strip.height))
            data[:, ~valid] = 0
            dst.write(np.concatenate([data, valid[None].astype(job.bands.dtype)]), window=strip)
            valid_total += int(valid.sum())
        dst.update_tags(LANDCOVER_ITEM=item.id, LANDCOVER_WINDOW=",".join(map(str, _ints(window))))
    return Fetched(index, item.id, _ints(window), valid_total, time.perf_counter() - started)


def read_strip(job: FetchJob, item: FoundItem, transform: Affine, shape_hw: tuple[int, int],
               strip: Window) -> tuple[np.ndarray, np.ndarray]:
    """The assets' pixels (bands, rows, cols) over a strip of an item's window, and where they are usable."""
    h, w = shape_hw
    bands, valid = [], np.ones((int(strip.height), int(strip.width)), bool)
    resampling = Resampling[job.resampling]
    for asset, count in zip(job.bands.assets, job.bands.counts, strict=True):
        data, ok = _warped(job, item, asset, count, transform, h, w, strip, resampling)
        bands.append(data.astype(job.bands.dtype, copy=False))
        valid &= ok
    if job.mask is not None:
        flags, ok = _warped(job, item, job.mask.asset, 1, transform, h, w, strip, Resampling.nearest)
        valid &= ok & ~job.mask.drop(flags[0])
    return np.concatenate(bands), valid


def _warped(job: FetchJob, item: FoundItem, asset: str, count: int, transform: Affine, h: int, w: int,
            strip: Window, resampling: Resampling) -> tuple[np.ndarray, np.ndarray]:
    """An asset's first `count` bands over a strip of the item's window on the output grid, and where it has data
    (not every band at nodata; inside the file)."""
    def read(src: rasterio.DatasetReader) -> tuple[np.ndarray, np.ndarray]:
        if src.count < count:
            raise LandcoverError(f"asset {asset!r} of item {item.id} has {src.count} band(s), the newest item's has "
                                 f"{count}", item.hrefs[asset])
        nodata = src.nodata
        with WarpedVRT(src, crs=job.grid.crs, transform=transform, width=w, height=h, resampling=resampling,
                       add_alpha=nodata is None) as vrt:  # one warp gives the data and where it is
            if nodata is None:
                data = vrt.read([*range(1, count + 1), vrt.count], window=strip)
                return data[:-1], data[-1] > 0
            data = vrt.read(list(range(1, count + 1)), window=strip)
        empty = np.isnan(data) if np.isnan(nodata) else data == nodata
        return data, ~empty.all(axis=0)

    return with_retries(item.hrefs[asset], job.signing, read, f"asset {asset!r} of item {item.id}", job.retries,
                        job.backoff)


def cache_path(cache: str | Path, index: int) -> Path:
    return Path(cache) / f"item-{index:05d}.tif"


def _ints(window: Window) -> tuple[int, int, int, int]:
    return int(window.col_off), int(window.row_off), int(window.width), int(window.height)


@dataclass(frozen=True)
class AssetBands:
    """What the output holds: every band of each asset in order, in one data type, with the first asset's nodata."""

    assets: tuple[str, ...]
    counts: tuple[int, ...]
    dtype: str
    nodata: float | None

    @property
    def names(self) -> list[str]:
        """Band descriptions: the asset's name, numbered where an asset has several bands (NAIP's 'image')."""
        return [a if n == 1 else f"{a}_{k + 1}" for a, n in zip(self.assets, self.counts, strict=True)
                for k in range(n)]


def asset_bands(items: list[FoundItem], assets: list[str], signing: str | None, retries: int = 3) -> AssetBands:
    """The assets' band counts, a data type wide enough for all of them and the first one's nodata, as the newest
    item has them."""
    item = items[-1]
    headers = [with_retries(item.hrefs[a], signing, lambda src: (src.count, src.dtypes[0], src.nodata),
                            f"asset {a!r} of item {item.id}", retries) for a in assets]
    return AssetBands(tuple(assets), tuple(h[0] for h in headers), str(np.result_type(*[h[1] for h in headers])),
                      headers[0][2])
