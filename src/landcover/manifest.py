"""The manifest: a GeoParquet table, one row per chip, that every later stage reads."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq

from landcover.atomic import replacing
from landcover.errors import LandcoverError
from landcover.version import __version__

FORMAT_VERSION = 1
"""Bumped when the manifest's columns change meaning; readers refuse newer versions."""

COLUMNS = ("chip_id", "path", "label", "label_id", "region", "scene", "split", "crs", "purity",
           "agree_points", "n_points", "nodata_px", "size_px", "res", "geometry")
META_KEY = b"landcover"


def write_manifest(frame: gpd.GeoDataFrame, path: str | Path, info: dict) -> None:
    """Write the manifest atomically, with the dataset description in the file's metadata."""
    with replacing(path) as tmp:
        frame.to_parquet(tmp, index=False)
        table = pq.read_table(tmp)
        meta = {**(table.schema.metadata or {}),
                META_KEY: json.dumps({"format_version": FORMAT_VERSION, "landcover": __version__, **info},
                                     default=str).encode()}
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def read_manifest(path: str | Path) -> tuple[gpd.GeoDataFrame, dict]:
    """Read a manifest (GeoParquet, one row per chip) and its dataset description (scheme, grid, rules, scenes,
    split settings) from its metadata; refuse files from a newer landcover.

        frame, info = read_manifest("chips/manifest.parquet")
        frame.groupby(["split", "label"]).size()
    """
    path = Path(path)
    if not path.is_file():
        raise LandcoverError("no such manifest", path)
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:
        raise LandcoverError("not a Parquet file", path) from None
    if META_KEY not in meta:
        raise LandcoverError("not a landcover manifest (no 'landcover' metadata)", path)
    info = json.loads(meta[META_KEY])
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise LandcoverError(f"manifest format {info['format_version']} is newer than this landcover "
                             f"({__version__}, format {FORMAT_VERSION}): upgrade landcover", path)
    frame = gpd.read_parquet(path)
    return frame, info


def empty_frame(crs: str) -> gpd.GeoDataFrame:
    """A manifest with no rows but every column."""
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS if c != "geometry"})
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs))
