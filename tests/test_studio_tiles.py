"""The studio's imagery at any size (#29, first part): display tiles at every level, from the raster's overviews,
the raster itself, or a pyramid built once into a cache; real Zion (four files, no overviews) and NAIP."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
import rasterio
from conftest import need_data
from PIL import Image

from landcover.errors import LandcoverError
from landcover.studio import tiles
from landcover.studio.tiles import TILE_PX, TileSource


def block_means(pixels: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of the valid pixels over factor x factor blocks (the edges padded as no data)."""
    b, h, w = pixels.shape
    H, W = -(-h // factor) * factor, -(-w // factor) * factor
    p, v = np.zeros((b, H, W)), np.zeros((H, W))
    p[:, :h, :w], v[:h, :w] = pixels, valid
    sums = (p * v).reshape(b, H // factor, factor, W // factor, factor).sum(axis=(2, 4))
    counts = v.reshape(H // factor, factor, W // factor, factor).sum(axis=(1, 3))
    return sums / np.maximum(counts, 1), counts > 0


def test_a_pyramid_built_once_gives_each_levels_block_means(zion_images, tmp_path, monkeypatch):
    monkeypatch.setattr(tiles, "DIRECT_PX", 512)  # Zion (1,428 px) as a raster too large to read whole
    said: list[str] = []
    source = TileSource(zion_images, tmp_path / "cache", bands=[3, 2, 1], log=said.append)
    assert source.levels == 4 and len(source.pyramid) == 3 and len(said) == 1
    with rasterio.open(zion_images[0]) as src:
        full = np.stack([rasterio.open(p).read(1) for p in (zion_images[2], zion_images[1], zion_images[0])])
        valid = np.ones(full.shape[1:], bool)
        shape = (src.height, src.width)
    for level in (1, 2, 3):
        means, ok = block_means(full.astype(np.float64), valid, 2 ** level)
        got, got_valid = source.whole(level)
        assert got.shape[1:] == means.shape[1:] == source.level_size(level)
        assert (got_valid == ok).all()
        # each level is the mean of the one below, rounded: within a count of the direct mean per level
        assert np.abs(got.astype(np.float64) - means).max() <= level
    tile, tile_valid = source.read(1, 1, 1)
    assert tile.shape == (3, TILE_PX, TILE_PX) and tile_valid.all()
    rows, cols = source.tiles(0)
    assert (rows, cols) == (-(-shape[0] // TILE_PX), -(-shape[1] // TILE_PX))
    edge, edge_valid = source.read(0, cols - 1, rows - 1)  # the last tile: past the raster, no data
    assert edge_valid[:shape[0] % TILE_PX, :shape[1] % TILE_PX].all() and not edge_valid[-1, -1]
    np.testing.assert_array_equal(edge[:, :shape[0] % TILE_PX, :shape[1] % TILE_PX],
                                  full[:, -(shape[0] % TILE_PX):, -(shape[1] % TILE_PX):])
    # opened again: the cache is used as it is; a raster changed since: built again
    said.clear()
    started = time.perf_counter()
    TileSource(zion_images, tmp_path / "cache", bands=[3, 2, 1], log=said.append)
    assert not said and time.perf_counter() - started < 2
    os.utime(zion_images[0], ns=(time.time_ns(), time.time_ns()))
    TileSource(zion_images, tmp_path / "cache", bands=[3, 2, 1], log=said.append)
    assert len(said) == 1 and len(list((tmp_path / "cache").iterdir())) == 2


def test_tiles_from_the_files_overviews_and_as_pngs(tmp_path):
    naip = need_data("naip_nd", "m_4709963_se_14_1_20090818.tif")
    source = TileSource([str(naip)], tmp_path / "cache", log=lambda _: None)
    assert not source.pyramid and source.levels == 3  # 934 px: levels 0, 1, 2; GDAL reads the file's overviews
    with rasterio.open(naip) as src:
        direct = src.read([1, 2, 3], out_shape=(3, 181, 234), resampling=rasterio.enums.Resampling.average)
    got, valid = source.whole(2)
    assert got.shape == (3, 181, 234) and valid.mean() > 0.9
    np.testing.assert_array_equal(got[:, valid], direct[:, valid])
    png = Image.open(io.BytesIO(source.tile_png(2, 0, 0)))
    assert png.mode == "RGBA" and png.size == (TILE_PX, TILE_PX)
    rgba = np.asarray(png)
    assert (rgba[:181, :234, 3][valid] == 255).all() and (rgba[181:, :, 3] == 0).all()  # past the raster: clear
    assert rgba[:181, :234, :3][valid].std() > 20  # stretched between the 2nd and 98th percentiles
    with pytest.raises(LandcoverError, match="outside level 2"):
        source.read(2, 1, 0)
    with pytest.raises(LandcoverError, match="level 3 is outside"):
        source.tile_png(3, 0, 0)
    grey = TileSource([str(naip)], tmp_path / "c2", bands=[4], log=lambda _: None)  # the NIR band alone
    one = np.asarray(Image.open(io.BytesIO(grey.tile_png(0, 0, 0))))
    assert (one[..., 0] == one[..., 1]).all() and (one[..., 1] == one[..., 2]).all()
    with pytest.raises(LandcoverError, match=r"1 band \(grey\) or 3"):
        TileSource([str(naip)], tmp_path / "c3", bands=[1, 2], log=lambda _: None)


def test_a_map_on_the_imagerys_grid_reads_as_a_map_warped_to_it(zion_images, tmp_path):
    """NLCD grouped (its own ~31 m grid) warped per tile, and the same map first warped onto the imagery's grid (read
    decimated): the same classes in every tile drawn."""
    from rasterio.warp import Resampling, reproject

    from landcover.maps.classmap import CLASSES_TAG, raster_classes
    from landcover.studio.tiles import MapTiles

    nlcd = need_data("zion", "nlcd.tif")
    imagery = TileSource(zion_images, tmp_path / "cache", log=lambda _: None)
    with rasterio.open(zion_images[0]) as src:
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint8",
                   "crs": src.crs, "transform": src.transform, "nodata": 255}
    on_grid = np.full((profile["height"], profile["width"]), 255, np.uint8)
    with rasterio.open(nlcd) as src:
        reproject(rasterio.band(src, 1), on_grid, src_nodata=src.nodata, dst_nodata=255, dst_crs=profile["crs"],
                  dst_transform=profile["transform"], resampling=Resampling.nearest)
    with rasterio.open(tmp_path / "map.tif", "w", **profile) as dst:
        dst.write(on_grid, 1)
        dst.update_tags(**{CLASSES_TAG: json.dumps(raster_classes(nlcd)[0])})
    warped, direct = MapTiles(nlcd, imagery), MapTiles(tmp_path / "map.tif", imagery)
    assert not warped.same_grid and direct.same_grid
    for col, row in ((0, 0), (2, 3), (4, 5)):  # the last: the corner tile, partly past the map
        a = np.asarray(Image.open(io.BytesIO(warped.tile_png(0, col, row))).convert("RGBA"))
        b = np.asarray(Image.open(io.BytesIO(direct.tile_png(0, col, row))).convert("RGBA"))
        assert (a == b).all(axis=-1).mean() > 0.999 and (a[..., 3] == 255).mean() > 0.2
