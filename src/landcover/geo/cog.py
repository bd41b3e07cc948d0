"""Cloud-Optimised GeoTIFFs: written whole from an array, or copied from an open raster (a draft filled in parts),
under a temporary name then renamed, with tags, band names, scales, colour table and a categories sidecar."""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from landcover.atomic import temp_path

CACHE_MB = 64
"""GDAL's block cache while COGs are written (its default, 5% of memory, would grow with the raster)."""


def write_cog(path: str | Path, data: np.ndarray, transform: Affine, crs: CRS, nodata: float | None,
              colormap: dict[int, tuple[int, ...]] | None = None, tags: dict[str, str] | None = None,
              band_tags: list[dict[str, str]] | None = None, descriptions: list[str] | None = None,
              scales: list[float] | None = None, resampling: str = "MODE", category_names: list[str] | None = None,
              blocksize: int = 256) -> Path:
    """Write (bands, h, w) or (h, w) as a deflate COG with overviews, under a temporary name then renamed."""
    data = data[None] if data.ndim == 2 else data
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype,
               "crs": crs, "transform": transform, "nodata": nodata}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
            describe(dst, colormap, tags, band_tags, descriptions, scales)
        with mem.open() as src:
            return copy_to_cog(src, Path(path), resampling, category_names, blocksize)


def describe(dst: rasterio.io.DatasetWriter, colormap: dict | None = None, tags: dict | None = None,
              band_tags: list | None = None, descriptions: list | None = None, scales: list | None = None) -> None:
    """Colour table, tags, band names and scales of a GeoTIFF being written."""
    if colormap:
        dst.write_colormap(1, colormap)
    if tags:
        dst.update_tags(**tags)
    for i in range(dst.count):
        if band_tags and band_tags[i]:
            dst.update_tags(i + 1, **band_tags[i])
        if descriptions:
            dst.set_band_description(i + 1, descriptions[i])
    if scales:
        dst.scales = tuple(scales)
        dst.offsets = tuple(0.0 for _ in scales)


def copy_to_cog(src: rasterio.DatasetReader, path: Path, resampling: str, category_names: list[str] | None,
                 blocksize: int = 256) -> Path:
    """Copy an open raster to a deflate COG at `path` (temporary name, then renamed), with a categories sidecar."""
    tmp = temp_path(path)
    try:
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB, GDAL_NUM_THREADS="ALL_CPUS"):  # compression on every core
            rasterio.shutil.copy(src, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(blocksize),
                                 OVERVIEW_RESAMPLING=resampling, RESAMPLING="NEAREST")
        aux = Path(f"{path}.aux.xml")
        if category_names:
            write_categories(Path(f"{tmp}.aux.xml"), category_names)
        os.replace(tmp, path)
        if category_names:
            os.replace(f"{tmp}.aux.xml", aux)
        else:
            aux.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.aux.xml").unlink(missing_ok=True)
    return path


def write_categories(path: Path, names: list[str]) -> None:
    """A PAM sidecar with band 1's category names (GDAL and QGIS read class names from it)."""
    items = "".join(f"<Category>{escape(n)}</Category>" for n in names)
    path.write_text(f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{items}</CategoryNames>'
                    f"</PAMRasterBand></PAMDataset>\n")
