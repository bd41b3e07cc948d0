"""A chip's pixels from a manifest row: its file (PNG or GeoTIFF), or its byte range in a shard. What training,
segmentation pairs, prediction of chip folders and the benchmarks read chips with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from PIL import Image

from landcover.datasets.formats.members import read_member_array
from landcover.errors import LandcoverError
from landcover.geo.raster import open_image

PRELOAD_BYTES = 1 << 30
"""A split whose chips fit in this much memory is read once and kept (epochs then cost no I/O)."""

def read_chip(path: str | Path) -> np.ndarray:
    """A chip's pixels as (bands, height, width) in their stored dtype (PNG or GeoTIFF)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as im:
                data = np.asarray(im)
            return data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
        with open_image(path) as src:  # chips imported from elsewhere may carry no georeferencing: fine here
            return src.read()
    except (OSError, rasterio.errors.RasterioIOError) as exc:
        raise LandcoverError(f"cannot read chip ({str(exc).splitlines()[0]})", path) from None


def in_shards(frame: pd.DataFrame) -> bool:
    """Whether a manifest's chips are members of shards (`landcover chips --layout shards`) rather than files."""
    return "byte_offset" in frame.columns


def read_row(root: Path, frame: pd.DataFrame, index: int) -> np.ndarray:
    """The chip of one manifest row (by position): its file, or its byte range in a shard."""
    if in_shards(frame):
        return read_member_array(root / frame["path"].iat[index], frame["byte_offset"].iat[index],
                                 frame["byte_count"].iat[index], frame["chip_id"].iat[index])
    return read_chip(root / frame["path"].iat[index])


def read_rows(root: Path, frame: pd.DataFrame) -> list[np.ndarray]:
    """The chips of every row, in row order; shards are read one after another, each member in file order."""
    order = (np.lexsort((frame["byte_offset"].to_numpy(), frame["path"].to_numpy())) if in_shards(frame)
             else range(len(frame)))
    chips: list = [None] * len(frame)
    for i in order:
        chips[i] = read_row(root, frame, i)
    return chips
