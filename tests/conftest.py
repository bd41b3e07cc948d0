"""Shared fixtures: the real data in ../shared/data (a skip locally, a failure under CI)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LANDCOVER_DATA", ROOT.parent / "shared" / "data"))


def need_data(*parts: str) -> Path:
    """A path under the shared data folder; skip clearly if absent (fail under CI=true)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        message = f"real data not found: {path} (tests read ../shared/data; see its README)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def zion() -> Path:
    return need_data("zion")


@pytest.fixture
def zion_images(zion: Path) -> list[str]:
    return [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]


def write_raster(path: Path, data: np.ndarray, crs: str, transform, nodata=None) -> Path:
    """Write a small GeoTIFF (bands x rows x cols, or rows x cols)."""
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return path
