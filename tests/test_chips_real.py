"""Chips from real imagery and labels (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import need_data, write_raster
from PIL import Image
from pyproj import Transformer
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds

from landcover.cli import main
from landcover.manifest import read_manifest
from landcover.schemes import load_scheme


def run(*args: str) -> int:
    return main(["chips", "--quiet", *map(str, args)])


def constant_labels(tmp_path: Path, image: Path, code: int = 41, crs: str = "EPSG:4326") -> Path:
    """A one-code label raster in another CRS that covers an image (labels need not come from NLCD)."""
    with rasterio.open(image) as src:
        left, bottom, right, top = transform_bounds(src.crs, crs, *src.bounds)
    pad_x, pad_y = (right - left) * 0.1, (top - bottom) * 0.1
    n = 50
    transform = Affine((right - left + 2 * pad_x) / n, 0, left - pad_x, 0, -(top - bottom + 2 * pad_y) / n,
                       top + pad_y)
    return write_raster(tmp_path / f"labels_{image.stem}.tif", np.full((n, n), code, np.uint8), crs, transform)


@pytest.mark.parametrize("label_file", ["nlcd2011.tif", "nlcd2011_albers.tif"])
def test_zion_chips_carry_the_label_at_their_centre(tmp_path, zion, zion_images, label_file):
    out = tmp_path / "chips"
    assert run("--image", *zion_images, "--labels", zion / label_file, "--scheme", "nlcd-grouped",
               "--tile-size", "480m", "--rule", "points:3", "--aoi", zion / "zion.gpkg", "--region", "zion",
               "--out", out) == 0
    frame, info = read_manifest(out / "manifest.parquet")
    assert len(frame) > 300 and set(frame["region"]) == {"zion"}
    assert frame["chip_id"].is_unique and (frame["agree_points"] == 9).all()
    # Independent check: project every chip centre into the label CRS with pyproj and read the native code.
    scheme = load_scheme("nlcd-grouped")
    code_to_name = {code: c.name for c in scheme.classes for code in c.codes}
    centres = frame.geometry.centroid
    with rasterio.open(zion / label_file) as src:
        codes = src.read(1)
        lx, ly = Transformer.from_crs(frame.crs, src.crs, always_xy=True).transform(centres.x, centres.y)
        rows, cols = rasterio.transform.rowcol(src.transform, lx, ly)
    truth = [code_to_name[int(codes[r, c])] for r, c in zip(rows, cols, strict=True)]
    assert list(frame["label"]) == truth
    # Chips sit in their class folder and hold the tile: 16 x 16 px, four bands (RGBA PNG).
    for _, row in frame.sample(20, random_state=0).iterrows():
        assert row["path"].split("/")[0] == scheme.classes[row["label_id"]].slug
        with Image.open(out / row["path"]) as im:
            assert im.size == (16, 16) and im.mode == "RGBA"
    # Every chip lies wholly inside the park boundary.
    park = gpd.read_file(zion / "zion.gpkg").to_crs(frame.crs).union_all()
    assert frame.geometry.within(park.buffer(1e-6)).all()
    # The PNG stretch is recorded, per band, once for the scene.
    stretch = info["scenes"][0]["png_stretch"]
    assert stretch["percentiles"] == [2.0, 98.0] and len(stretch["low"]) == 4
    assert all(lo < hi for lo, hi in zip(stretch["low"], stretch["high"], strict=True))


def test_zion_geotiff_chips_keep_native_pixels(tmp_path, zion, zion_images):
    out = tmp_path / "chips"
    assert run("--image", *zion_images, "--labels", zion / "nlcd2011.tif", "--scheme", "nlcd-grouped",
               "--tile-size", "16px", "--rule", "purity:0.8", "--keep", "0.3", "--format", "tif",
               "--out", out) == 0
    frame, _ = read_manifest(out / "manifest.parquet")
    assert (frame["purity"] >= 0.8).all() and frame["agree_points"].isna().all()
    sources = [rasterio.open(p) for p in zion_images]
    for _, row in frame.sample(10, random_state=1).iterrows():
        with rasterio.open(out / row["path"]) as chip:
            assert chip.count == 4 and chip.dtypes[0] == "uint16" and chip.crs == sources[0].crs
            assert chip.profile["compress"] == "lzw"
            window = from_bounds(*chip.bounds, transform=sources[0].transform)
            expected = np.stack([s.read(1, window=window) for s in sources])
            np.testing.assert_array_equal(chip.read(), expected)


def test_naip_single_band_files_stack_in_the_given_order(tmp_path):
    va = need_data("naip_va")
    bands = [va / f"NAIP-VA-b{i}.tiff" for i in (1, 2, 3, 4)]
    labels = constant_labels(tmp_path, bands[0])
    out = tmp_path / "chips"
    assert run("--image", *bands, "--bands", "4", "1", "2", "3", "--labels", labels, "--tile-size", "100m",
               "--format", "tif", "--max-nodata", "100000", "--out", out) == 0
    frame, _ = read_manifest(out / "manifest.parquet")
    assert len(frame) == (597 // 100) * (510 // 100)
    for _, row in frame.iterrows():
        with rasterio.open(out / row["path"]) as chip:
            data = chip.read()
            for k, source in enumerate([bands[3], bands[0], bands[1], bands[2]]):
                with rasterio.open(source) as src:
                    window = from_bounds(*chip.bounds, transform=src.transform)
                    np.testing.assert_array_equal(data[k], src.read(1, window=window))


def test_naip_scenes_in_two_utm_zones_share_one_grid(tmp_path):
    va = need_data("naip_va")
    zone17 = va / "m_3607824_se_17_1_20160620_subset.tif"
    zone18 = va / "m_3607717_sw_18_1_20160620_subset.tif"
    with rasterio.open(zone18) as src:  # stretch the labels over both quarter-quads
        left, bottom, right, top = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    wide = tmp_path / "labels_both.tif"
    write_raster(wide, np.full((40, 80), 41, np.uint8), "EPSG:4326",
                 Affine((right - left) * 3 / 80, 0, left - (right - left), 0, -(top - bottom) * 1.5 / 40,
                        top + (top - bottom) * 0.25))
    out = tmp_path / "chips"
    assert run("--image", zone17, "--image", zone18, "--labels", wide, "--tile-size", "50m", "--format", "tif",
               "--out", out) == 0
    frame, info = read_manifest(out / "manifest.parquet")
    assert set(frame["crs"]) == {"EPSG:26917"} and info["grid"]["crs"] == "EPSG:26917"
    counts = frame["scene"].value_counts()
    assert set(counts.index) == {zone17.stem, zone18.stem}
    assert counts[zone17.stem] == 36  # 300 m / 50 m, the native grid: every tile
    assert counts[zone18.stem] >= 16  # warped across the zone line: the tiles wholly inside
    for _, row in frame[frame["scene"] == zone18.stem].iterrows():
        with rasterio.open(out / row["path"]) as chip:
            assert chip.crs.to_epsg() == 26917 and chip.shape == (50, 50) and chip.read().any(axis=0).all()
    assert frame.geometry.union_all().area == pytest.approx(len(frame) * 50 * 50)  # no tile is cut twice


@pytest.mark.slow
def test_tiles_in_the_nodata_collar_are_rejected(tmp_path):
    image = need_data("landsat_rasterio", "RGB.byte.tif")
    labels = constant_labels(tmp_path, image, crs="EPSG:3857")
    out = tmp_path / "chips"
    assert run("--image", image, "--labels", labels, "--tile-size", "8px", "--format", "tif", "--out", out) == 0
    frame, info = read_manifest(out / "manifest.parquet")
    with rasterio.open(image) as src:
        valid = src.dataset_mask() > 0
    expected = set()
    for r in range(0, valid.shape[0] - 7, 8):
        for c in range(0, valid.shape[1] - 7, 8):
            if valid[r:r + 8, c:c + 8].all():
                expected.add((r, c))
    with rasterio.open(image) as src:
        half = src.res[0] / 2  # the centre of each chip's first pixel
        kept = {tuple(int(v) for v in src.index(g.bounds[0] + half, g.bounds[3] - half)) for g in frame.geometry}
    assert kept == expected
    assert info["rejected"]["nodata"] == (valid.shape[0] // 8) * (valid.shape[1] // 8) - len(expected) > 1000


def test_geographic_imagery_is_cut_on_its_utm_zone(tmp_path):
    from rasterio.warp import calculate_default_transform, reproject

    source = need_data("landsat_rasterio", "RGB.byte.tif")
    geographic = tmp_path / "rgb_wgs84.tif"
    with rasterio.open(source) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                                               *src.bounds)
        data = np.zeros((3, height, width), np.uint8)
        reproject(src.read(), data, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs="EPSG:4326", src_nodata=0, dst_nodata=0)
    write_raster(geographic, data, "EPSG:4326", transform, nodata=0)
    labels = constant_labels(tmp_path, source, crs="EPSG:3857")
    out = tmp_path / "chips"
    assert run("--image", geographic, "--labels", labels, "--tile-size", "3000m", "--out", out) == 0
    frame, info = read_manifest(out / "manifest.parquet")
    assert info["grid"]["crs"] == "EPSG:32618" and len(frame) > 100
    side = info["grid"]["tile_px"] * info["grid"]["res"]
    assert abs(side - 3000) <= info["grid"]["res"] / 2 and np.allclose(frame.geometry.area, side * side)
    with Image.open(out / frame["path"].iloc[0]) as chip:
        assert chip.mode == "RGB" and np.asarray(chip).any(axis=2).all()


def test_float32_and_int16_bands_stack_with_nodata(tmp_path):
    nc = need_data("landsat_nc")
    files = [nc / f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
    labels = constant_labels(tmp_path, files[0], crs="EPSG:3358")
    out = tmp_path / "tif"
    assert run("--image", *files, "--labels", labels, "--tile-size", "20px", "--format", "tif", "--out", out) == 0
    frame, _ = read_manifest(out / "manifest.parquet")
    with rasterio.open(out / frame["path"].iloc[0]) as chip, rasterio.open(files[5]) as band7:
        assert chip.count == 6 and chip.dtypes[0] == "float32"
        window = from_bounds(*chip.bounds, transform=band7.transform)
        np.testing.assert_array_equal(chip.read(6), band7.read(1, window=window).astype(np.float32))
    png = tmp_path / "png"
    assert run("--image", *files, "--bands", "3", "2", "1", "--labels", labels, "--tile-size", "20px",
               "--out", png) == 0
    frame, info = read_manifest(png / "manifest.parquet")
    stretch = info["scenes"][0]["png_stretch"]
    assert len(stretch["low"]) == 3 and all(lo > -99999 for lo in stretch["low"])
    with Image.open(png / frame["path"].iloc[0]) as chip:
        assert chip.mode == "RGB" and chip.size == (20, 20)
