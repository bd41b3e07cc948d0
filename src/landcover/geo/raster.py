"""Opening rasters, stacking them into scenes, and reading windows (direct or warped)."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landcover.errors import LandcoverError

GDAL_REMOTE = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing, no side-car probes: only the file's bytes
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "2",  # GDAL's own retries on 429/502/503/504, inside ours
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_CACHEMAX": 128,
}
"""GDAL settings for reading rasters over HTTP."""


def is_remote(path: str | Path) -> bool:
    """A URL or a GDAL virtual path (/vsicurl/..., /vsis3/...): read through GDAL, not the file system."""
    text = str(path)
    return "://" in text or text.startswith("/vsi")


def absolute(path: str | Path) -> str:
    """A raster's path as recorded (tags, fingerprints, tasks on other machines): a local file made absolute, a URL
    or GDAL virtual path as it is."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def gdal_path(path: str | Path) -> str:
    """What GDAL itself opens (a VRT's source, say): http(s) URLs through /vsicurl/, local files absolute."""
    text = str(path)
    return f"/vsicurl/{text}" if text.startswith(("http://", "https://")) else absolute(text)


def remote_reading(paths: list[str]) -> AbstractContextManager:
    """GDAL_REMOTE's settings while any of `paths` is remote (a local raster keeps its side-cars: .aux.xml, .ovr)."""
    return rasterio.Env(**GDAL_REMOTE) if any(is_remote(p) for p in paths) else nullcontext()


def tiles_index(path: str | Path, probabilities: bool = False) -> Path | None:
    """The mosaic of a folder of map tiles (`predict --tiles` writes DIR/index.vrt; with --probabilities also
    DIR/probs.vrt, the tiles' probabilities), or None."""
    index = Path(path) / ("probs.vrt" if probabilities else "index.vrt")
    return index if Path(path).is_dir() and index.is_file() else None


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster for reading, or fail with one line naming the file. A folder is read as the mosaic of its
    tiles (`tiles_index`)."""
    path = str(path)
    if not Path(path).exists() and not is_remote(path):
        raise LandcoverError("no such file", path)
    if Path(path).is_dir():
        index = tiles_index(path)
        if index is None:
            raise LandcoverError("is a folder without index.vrt (a tiled map's folder, from predict --tiles, holds "
                                 "one): give a raster", path)
        path = str(index)
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        reason = str(exc).split("\n")[0].replace(path, "").strip(" :'")
        raise LandcoverError(f"not a readable raster ({reason or 'GDAL could not open it'})", path) from None


@contextmanager
def georeferencing_optional() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning, which says nothing wrong about images that need no
    georeferencing (chips made elsewhere, JPEGs). Warning filters are process-wide and `catch_warnings` is not
    thread-safe: code that opens images on threads enters this once, in the calling thread, around them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@contextmanager
def open_image(path: str | Path) -> Iterator[rasterio.DatasetReader]:
    """rasterio.open for images that may carry no georeferencing, without the warning; errors are rasterio's."""
    with georeferencing_optional(), rasterio.open(path) as src:
        yield src


OPEN_READERS = 16
"""Datasets a process keeps open for `read_from` (opening a GeoTIFF costs about 3 ms; a chips or predict worker
reads many blocks from the same few files)."""
REOPEN_AFTER_BYTES = 64 << 20
"""An open dataset is closed and reopened after this many bytes were read from it. GDAL keeps the blocks of an open
dataset in its cache (up to 5% of RAM by default): streaming once through a 16k x 16k raster from one open dataset
grew a process by 1 GB that no read used again. Closing drops them; capping GDAL_CACHEMAX instead slowed every
read by a third."""
_readers: OrderedDict[tuple, list] = OrderedDict()  # key -> [dataset, bytes read since it was opened]


def read_from(path: str | Path, read: Callable[[rasterio.DatasetReader], np.ndarray]) -> np.ndarray:
    """`read(dataset)` on a dataset kept open in this process while the file is unchanged (keyed on the process id
    too: a forked worker opens its own, never sharing a file offset with its parent)."""
    path = str(path)
    try:
        stat = os.stat(path)
        key = (os.getpid(), path, stat.st_mtime_ns, stat.st_size)
    except OSError:  # a remote or /vsi path: no file to watch
        key = (os.getpid(), path, None, None)
    entry = _readers.pop(key, None)
    if entry is None:
        entry = [open_raster(path), 0]
        while len(_readers) >= OPEN_READERS:
            _readers.popitem(last=False)[1][0].close()
    data = read(entry[0])
    entry[1] += data.nbytes
    if entry[1] > REOPEN_AFTER_BYTES:
        entry[0].close()
    else:
        _readers[key] = entry
    return data


def _wkt(crs: CRS) -> str:
    """A CRS's WKT: the key of the cached look-ups below (comparing or building CRSs costs about 1 ms, and
    writing a WKT 0.3 ms, so the WKT of the last few CRS objects seen is kept with them)."""
    held = _wkts.get(id(crs))
    if held is not None and held[0] is crs:
        return held[1]
    wkt = crs.to_wkt() if isinstance(crs, CRS) else CRS(crs).to_wkt()
    if len(_wkts) >= 64:
        _wkts.pop(next(iter(_wkts)))
    _wkts[id(crs)] = (crs, wkt)  # the object is held, so its id is not reused while the entry lives
    return wkt


_wkts: dict[int, tuple[object, str]] = {}


def transformer(src_crs: CRS, dst_crs: CRS) -> Transformer:
    """A cached pyproj transformer between two CRSs, x/y (easting/northing) order."""
    return _transformer(_wkt(src_crs), _wkt(dst_crs))


@lru_cache(maxsize=64)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(src_wkt, dst_wkt, always_xy=True)


def source_pixels(dst_crs: CRS, dst_transform: Affine, width: int, height: int, src_crs: CRS,
                  src_transform: Affine, step: int = 16, tolerance: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel centre of a destination grid falls on a source grid in another CRS: (cols, rows) in source
    pixels, each (height, width). The transform is exact at every `step`-th pixel and bilinear in between (GDAL's
    approximate transformer does the same, with a ~10 ms set-up per call); where the interpolation strays more
    than `tolerance` source pixels from the exact transform at the lattice cells' centres, every pixel is
    transformed exactly."""
    same = same_crs(dst_crs, src_crs)
    to_src = None if same else transformer(dst_crs, src_crs)

    def exact(cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = dst_transform * (cols, rows)
        if to_src is not None:
            x, y = to_src.transform(x, y)
        return ~src_transform * (np.asarray(x), np.asarray(y))

    centres_c, centres_r = np.arange(width) + 0.5, np.arange(height) + 0.5
    if same:
        return exact(*np.meshgrid(centres_c, centres_r))
    nc, nr = max(2, -(-(width - 1) // step) + 1), max(2, -(-(height - 1) // step) + 1)
    lattice_c, lattice_r = 0.5 + step * np.arange(nc), 0.5 + step * np.arange(nr)
    known = exact(*np.meshgrid(lattice_c, lattice_r))
    mid_c, mid_r = np.meshgrid(lattice_c[:-1] + step / 2, lattice_r[:-1] + step / 2)
    for value, truth in zip(known, exact(mid_c, mid_r), strict=True):
        guess = (value[:-1, :-1] + value[:-1, 1:] + value[1:, :-1] + value[1:, 1:]) / 4
        if np.abs(guess - truth).max() > tolerance:
            return exact(*np.meshgrid(centres_c, centres_r))
    ic = np.minimum(((centres_c - 0.5) // step).astype(np.intp), nc - 2)
    ir = np.minimum(((centres_r - 0.5) // step).astype(np.intp), nr - 2)
    wc = ((centres_c - lattice_c[ic]) / step)[None, :]
    wr = ((centres_r - lattice_r[ir]) / step)[:, None]
    r0, r1, c0, c1 = ir[:, None], ir[:, None] + 1, ic[None, :], ic[None, :] + 1
    return tuple((v[r0, c0] * (1 - wc) + v[r0, c1] * wc) * (1 - wr) + (v[r1, c0] * (1 - wc) + v[r1, c1] * wc) * wr
                 for v in known)


def crs_name(crs: CRS) -> str:
    """The CRS as 'EPSG:n' where PROJ identifies it, else as WKT (looked up once per CRS per process)."""
    return _crs_name(_wkt(crs))


@lru_cache(maxsize=64)
def _crs_name(wkt: str) -> str:
    return CRS.from_wkt(wkt).to_string()


def canonical_crs(crs: CRS) -> CRS:
    """The EPSG definition where PROJ identifies one (GDAL would write that code into every GeoTIFF anyway,
    after a slow search per file), else the CRS as it is."""
    name = crs_name(crs)
    return CRS.from_string(name) if name.startswith("EPSG:") else CRS(crs)


def same_crs(a: CRS, b: CRS) -> bool:
    """Whether two CRSs are the same, also when one is an unnamed copy of an EPSG definition."""
    return _same_crs(_wkt(a), _wkt(b))


@lru_cache(maxsize=64)
def _same_crs(a: str, b: str) -> bool:
    return a == b or CRS.from_wkt(a) == CRS.from_wkt(b) or _crs_name(a) == _crs_name(b)


def require_crs(src: rasterio.DatasetReader) -> CRS:
    """The dataset's CRS, or a clear failure when it has none."""
    if src.crs is None:
        raise LandcoverError("has no CRS (georeference it, e.g. gdal_edit.py -a_srs EPSG:XXXX)", src.name)
    if src.transform.b != 0 or src.transform.d != 0:
        raise LandcoverError("rotated rasters are not supported (warp it to north-up first)", src.name)
    return src.crs


NODATA_NONE = "none"
"""`--nodata none`: every pixel is data (a mask or alpha band still counts)."""


def parse_nodata(text: str | float | None) -> float | str | None:
    """`--nodata VALUE|none`: a number overrides the files' declared nodata value (as GDAL's -srcnodata does),
    'none' reads every pixel as data; None keeps what the files declare."""
    if text is None or (isinstance(text, str) and text.strip().lower() == NODATA_NONE):
        return None if text is None else NODATA_NONE
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LandcoverError(f"--nodata {text!r} is not a pixel value (e.g. 0, 255, -9999) or none") from None
    if not np.isfinite(value):
        raise LandcoverError(f"--nodata {text!r} is not a finite pixel value or none (NaN pixels are always nodata)")
    return value


@dataclass(frozen=True)
class Scene:
    """One imagery source: rasters on one grid stacked into bands, a subset of them picked."""

    name: str
    paths: tuple[str, ...]
    band_sources: tuple[tuple[int, int], ...]
    """For each picked band: (index into paths, 1-based band in that file)."""
    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: tuple[float | None, ...]
    nodata_override: float | str | None = None
    """`--nodata`: a value read as nodata in every band instead of the files' own, or 'none'; None: the files'."""
    valid_bands: int | None = None
    """Only the first this many bands say where a pixel is valid (None: all): bands stacked after the imagery, such
    as another model's probabilities (`PixelFeatures.context`), never make a pixel of no imagery valid."""

    @classmethod
    def open(cls, paths: list[str | Path], bands: list[int] | None = None, name: str | None = None,
             nodata: float | str | None = None) -> Scene:
        """Stack the files in order; `bands` (1-based over the stack) picks and orders bands; `nodata` (a value, or
        'none') replaces the nodata value the files declare."""
        if not paths:
            raise LandcoverError("a scene needs at least one raster")
        stacked: list[tuple[int, int]] = []
        dtypes: list[str] = []
        nodatas: list[float | None] = []
        first = None
        for i, path in enumerate(paths):
            with open_raster(path) as src:
                crs = require_crs(src)
                if first is None:
                    first = (crs, src.transform, src.width, src.height, src.name)
                elif (crs != first[0] or not src.transform.almost_equals(first[1])
                      or (src.width, src.height) != first[2:4]):
                    raise LandcoverError(f"cannot stack with {first[4]}: a different grid "
                                         f"({src.width}x{src.height} {crs} vs {first[2]}x{first[3]} {first[0]})",
                                         src.name)
                for b in range(1, src.count + 1):
                    stacked.append((i, b))
                    dtypes.append(src.dtypes[b - 1])
                    nodatas.append(src.nodatavals[b - 1])
        picks = bands or list(range(1, len(stacked) + 1))
        for b in picks:
            if not 1 <= b <= len(stacked):
                raise LandcoverError(f"band {b} is out of range: the stack has bands 1..{len(stacked)}",
                                     paths[0] if len(paths) == 1 else ", ".join(map(str, paths)))
        crs, transform, width, height, _ = first
        return cls(
            name=name or Path(str(paths[0])).stem,
            paths=tuple(str(p) for p in paths),
            band_sources=tuple(stacked[b - 1] for b in picks),
            crs=crs,
            transform=transform,
            width=width,
            height=height,
            dtype=str(np.result_type(*[dtypes[b - 1] for b in picks])),
            nodata=tuple(nodatas[b - 1] if nodata is None else None if nodata == NODATA_NONE else float(nodata)
                         for b in picks),
            nodata_override=nodata,
        )

    @property
    def count(self) -> int:
        """Number of picked bands."""
        return len(self.band_sources)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the scene's CRS."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return min(left, right), min(top, bottom), max(left, right), max(top, bottom)

    def _by_file(self) -> dict[int, list[tuple[int, int]]]:
        """Picked bands grouped by file: file index -> [(output position, file band)]."""
        groups: dict[int, list[tuple[int, int]]] = {}
        for pos, (fi, b) in enumerate(self.band_sources):
            groups.setdefault(fi, []).append((pos, b))
        return groups

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity of a window on the scene's own grid; outside the raster is invalid."""
        h, w = int(window.height), int(window.width)
        out = np.zeros((self.count, h, w), dtype=self.dtype)
        valid = np.zeros((h, w), dtype=bool)
        inner = window.intersection(Window(0, 0, self.width, self.height)) if _overlaps(window, self) else None
        if inner is None:
            return out, valid
        r0, c0 = int(inner.row_off - window.row_off), int(inner.col_off - window.col_off)
        sl = (slice(r0, r0 + int(inner.height)), slice(c0, c0 + int(inner.width)))
        for fi, picks in self._by_file().items():
            data = read_from(self.paths[fi], lambda src, p=picks: src.read([b for _, b in p], window=inner))
            for k, (pos, _) in enumerate(picks):
                out[pos][sl] = data[k]
        n = self.valid_bands or self.count
        valid[sl] = _valid_pixels(out[:n, sl[0], sl[1]], self.nodata[:n])
        return out, valid

    def read_warped(self, crs: CRS, transform: Affine, width: int, height: int,
                    resampling: Resampling = Resampling.bilinear) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity warped onto another grid (CRS, transform, size)."""
        out = np.zeros((self.count, height, width), dtype=self.dtype)
        valid = np.ones((height, width), dtype=bool)
        for fi, picks in self._by_file().items():
            def warp(src: rasterio.DatasetReader, p: list = picks) -> np.ndarray:
                """The picked bands warped, then the validity mask (alpha or the dataset mask) as a last band."""
                own = ColorInterp.alpha in src.colorinterp  # RGBA files have their own
                extra = {}
                if self.nodata_override is not None:  # the declared value replaced (or dropped): -srcnodata
                    extra["src_nodata"] = None if self.nodata_override == NODATA_NONE else self.nodata_override
                alpha = not own and (src.nodata is None or self.nodata_override is not None)
                with WarpedVRT(src, crs=crs, transform=transform, width=width, height=height,
                               resampling=resampling, add_alpha=alpha, **extra) as vrt:
                    mask = vrt.read(vrt.count) if alpha else vrt.dataset_mask()
                    return np.concatenate([vrt.read([b for _, b in p]), (mask > 0)[None].astype(self.dtype)])

            data = read_from(self.paths[fi], warp)
            valid &= data[-1].astype(bool)
            for k, (pos, _) in enumerate(picks):
                out[pos] = data[k]
        n = self.valid_bands or self.count
        valid &= _valid_pixels(out[:n], self.nodata[:n])
        return out, valid


def _overlaps(window: Window, scene: Scene) -> bool:
    return (window.col_off < scene.width and window.row_off < scene.height
            and window.col_off + window.width > 0 and window.row_off + window.height > 0)


def _valid_pixels(data: np.ndarray, nodata: tuple[float | None, ...]) -> np.ndarray:
    """Valid pixels, as GDAL masks them: not every band at its nodata value, and no band NaN."""
    all_nodata = np.ones(data.shape[1:], dtype=bool)
    any_nan = np.zeros(data.shape[1:], dtype=bool)
    for band, nd in zip(data, nodata, strict=True):
        if np.issubdtype(band.dtype, np.floating):
            any_nan |= np.isnan(band)
        if nd is None or np.isnan(nd):
            all_nodata[:] = False
        else:
            all_nodata &= band == nd
    return ~(all_nodata | any_nan)
