"""Whole-raster prediction on real Zion and North Dakota NAIP imagery: maps, overlap, AOI, warping, resume, engines."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from conftest import need_data, write_raster
from rasterio.warp import Resampling, calculate_default_transform, reproject

from landcover.cli import main
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.predict.raster import plurality_filter, predict_raster

torch.set_num_threads(2)


def test_map_cells_are_the_chip_predictions(zion_bundle, zion_tile_map):
    """Cut from the raster with the chips' bands and stretch, every window is predicted as its chip is."""
    from landcover.bundle import load_bundle
    from landcover.predict.chips import predict_dataset
    from landcover.train.data import ChipDataset

    bundle, _, root = zion_bundle
    summary = json.loads(zion_tile_map.with_suffix(".json").read_text())
    assert "directly" in summary["reading"] and summary["skipped"] == 0
    tiles = gpd.read_parquet(zion_tile_map.with_name("map.tiles.parquet"))
    chips = ChipDataset(root / "chips", None)
    probs, _ = predict_dataset(load_bundle(bundle), chips, progress=False)
    joined = tiles.set_index("tile_id").loc[chips.frame["chip_id"]]
    names = [f"p_{n}" for n in ("Water", "Developed", "Barren", "Forest", "Shrubland", "Grassland", "Cultivated",
                                "Wetlands")]
    assert len(joined) == len(chips) > 1000
    assert np.abs(joined[names].to_numpy() - probs).max() < 1e-4
    with rasterio.open(zion_tile_map) as src:
        data = src.read(1)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # (89 x 70 cells: no overviews needed)
        assert src.nodata == 255 and src.colormap(1)[3][:3] == (0x1C, 0x5F, 0x2C)  # Forest's colour
        assert src.res == (480.0, 480.0) and src.crs.to_epsg() == 32612
        r, c = rasterio.transform.rowcol(src.transform, *shapely.get_coordinates(
            joined.geometry.centroid).T)
    assert np.array_equal(data[r, c], probs.argmax(1))
    assert (data != 255).all()  # no nodata in the Landsat scene
    assert sum(summary["counts"].values()) == data.size and summary["windows"] == len(tiles)


def test_overlapping_windows_average_their_probabilities(zion_bundle, zion_crop, tmp_path):
    bundle, images = zion_bundle[0], zion_crop
    predict_raster(bundle, images, tmp_path / "m.tif", stride="240m", probabilities=True, progress=False,
                   log=lambda _: None)
    tiles = gpd.read_parquet(tmp_path / "m.tiles.parquet")
    p_cols = [c for c in tiles.columns if c.startswith("p_")]
    with rasterio.open(tmp_path / "m.probs.tif") as probs_src, rasterio.open(tmp_path / "m.tif") as map_src:
        probs = probs_src.read().astype(np.float64) / 254
        classes = map_src.read(1)
        assert map_src.res == (240.0, 240.0)
    rows, cols = tiles["window_row"].to_numpy(), tiles["window_col"].to_numpy()
    table = tiles[p_cols].to_numpy()
    rng = np.random.default_rng(0)
    for r, c in zip(rng.integers(0, classes.shape[0], 50), rng.integers(0, classes.shape[1], 50), strict=True):
        covering = (rows <= r) & (r <= rows + 1) & (cols <= c) & (c <= cols + 1)
        assert 1 <= covering.sum() <= 4
        mean = table[covering].mean(axis=0)
        assert np.abs(probs[:, r, c] - mean).max() <= 0.5 / 254 + 1e-6
        assert classes[r, c] == mean.argmax()


def test_aoi_smoothing_and_truth_scores(zion_bundle, tmp_path):
    bundle, images, _ = zion_bundle
    zion = need_data("zion")
    result = predict_raster(bundle, images, tmp_path / "park.tif", aoi=zion / "zion.gpkg", smooth=3,
                            truth=zion / "nlcd2011.tif", truth_scheme="nlcd-grouped", progress=False,
                            log=lambda _: None)
    park = shapely.union_all(gpd.read_file(zion / "zion.gpkg").to_crs(32612).geometry.values)
    with rasterio.open(tmp_path / "park.tif") as src:
        data, transform = src.read(1), src.transform
    with rasterio.open(tmp_path / "park.smooth3.tif") as src:
        smoothed = src.read(1)
    rr, cc = np.mgrid[0:data.shape[0], 0:data.shape[1]]
    xs, ys = rasterio.transform.xy(transform, rr.ravel(), cc.ravel())
    inside = shapely.contains_xy(park, xs, ys).reshape(data.shape)
    assert ((data != 255) == inside).all()
    assert np.array_equal(smoothed, plurality_filter(data, 8, 3))
    assert set(result.scores) == {"map", "smoothed 3x3"}
    for score in result.scores.values():
        assert 0.3 < score["agreement"] <= 1 and score["n_cells"] == inside.sum()
    assert "agreement with truth" in result.summary()


def test_plurality_filter_against_brute_force():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 4, (30, 40)).astype(np.uint8)
    classes[rng.random(classes.shape) < 0.1] = 255
    out = plurality_filter(classes, 4, 3)
    for r in range(30):
        for c in range(40):
            if classes[r, c] == 255:
                assert out[r, c] == 255
                continue
            hood = classes[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].ravel()
            votes = np.bincount(hood[hood != 255], minlength=4)
            best = np.flatnonzero(votes == votes.max())
            assert out[r, c] == (classes[r, c] if classes[r, c] in best else best[0])


def test_warped_imagery_gives_the_same_map(zion_bundle, zion_tile_map, tmp_path):
    """Imagery in another CRS and resolution (Zion warped to CONUS Albers at 25 m) is warped back on the fly."""
    bundle, images, _ = zion_bundle
    warped = []
    for path in images:
        with rasterio.open(path) as src:
            transform, w, h = calculate_default_transform(src.crs, "EPSG:5070", src.width, src.height, *src.bounds,
                                                          resolution=25)
            data = np.zeros((h, w), src.dtypes[0])
            reproject(src.read(1), data, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs="EPSG:5070", resampling=Resampling.bilinear, dst_nodata=65535)
            warped.append(str(write_raster(tmp_path / f"albers_{len(warped)}.tif", data, "EPSG:5070", transform,
                                           nodata=65535)))
    said = []
    result = predict_raster(bundle, warped, tmp_path / "albers.tif", progress=False, log=said.append)
    assert "warping imagery on the fly from EPSG:5070 at 25 m to EPSG:5070 at 30 m" in said[0]
    with rasterio.open(tmp_path / "albers.tif") as src:
        assert src.crs.to_epsg() == 5070 and src.res == (480.0, 480.0)
        data, albers = src.read(1), src.transform
    valid = data != 255
    assert valid.mean() > 0.5 and result.windows > 3000  # the rotated footprint leaves nodata corners
    with rasterio.open(zion_tile_map) as src:
        direct = np.full(data.shape, 255, np.uint8)
        reproject(src.read(1), direct, src_transform=src.transform, src_crs=src.crs, dst_transform=albers,
                  dst_crs="EPSG:5070", resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
    both = valid & (direct != 255)
    agreement = (data[both] == direct[both]).mean()
    print(f"warped vs direct map: {agreement:.3f} of {both.sum()} cells")
    assert agreement > 0.7  # 480 m cells on two grids turned ~2 degrees apart


def test_killed_run_resumes_to_the_same_outputs(zion_bundle, zion_crop, tmp_path, monkeypatch):
    import landcover.predict.blocks as pb

    bundle, images = zion_bundle[0], zion_crop
    whole = predict_raster(bundle, images, tmp_path / "whole.tif", block_windows=40, progress=False,
                           log=lambda _: None)
    real, calls = pb.infer_block, []

    def dying(job, loaded, runtime=None):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(job, loaded, runtime)

    monkeypatch.setattr(pb, "infer_block", dying)
    with pytest.raises(KeyboardInterrupt):
        predict_raster(bundle, images, tmp_path / "cut.tif", block_windows=40, progress=False, log=lambda _: None)
    records = list((tmp_path / ".cut.tif.landcover-state").glob("*.npz"))
    assert not (tmp_path / "cut.tif").exists() and len(records) == 4
    done = sum(len(np.load(r)["rows"]) for r in records)
    monkeypatch.setattr(pb, "infer_block", real)
    with pytest.raises(LandcoverError, match="other settings"):
        predict_raster(bundle, images, tmp_path / "cut.tif", block_windows=10, progress=False, log=lambda _: None)
    resumed = predict_raster(bundle, images, tmp_path / "cut.tif", block_windows=40, progress=False,
                             log=lambda _: None)
    assert resumed.resumed == 4 and resumed.windows == whole.windows - done > 0
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(tmp_path / "cut.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert not (tmp_path / ".cut.tif.landcover-state").exists()
    with pytest.raises(LandcoverError, match="exists"):
        predict_raster(bundle, images, tmp_path / "cut.tif", progress=False, log=lambda _: None)


def test_bad_input(zion_bundle, tmp_path, capsys):
    bundle, images, _ = zion_bundle
    zion = need_data("zion")
    out = str(tmp_path / "m.tif")
    base = ["predict", str(bundle), "--quiet", "--out", out]
    cases = [
        (["--image", images[0]], "the bundle reads 3 bands (band 1 of landsat_b4.tif, band 1 of landsat_b3.tif, band "
                                  "1 of landsat_b2.tif, as its chips were cut); the imagery stacks 1 band in 1 file"),
        (["--image", *images, "--bands", "1"], "band mismatch: the bundle reads 3 bands, the imagery gives 1"),
        (["--image", *images, "--stride", "100m"], "must divide the tile"),
        (["--image", str(tmp_path / "nocrs.tif")], "has no CRS"),
    ]
    write_raster(tmp_path / "nocrs.tif", np.zeros((3, 40, 40), np.uint8), None, rasterio.Affine.identity())
    far = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1000, 1000)], crs=32612)
    far.to_file(tmp_path / "far.gpkg")
    cases.append((["--image", *images, "--aoi", str(tmp_path / "far.gpkg")], "does not overlap the AOI"))
    cases.append((["--image", *images, "--truth", str(zion / "nlcd2011.tif")], "--truth needs --scheme"))
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("m.*")) and not list(tmp_path.glob(".m.tif*"))
    assert main(["predict", str(bundle), "--quiet", "--image", *images, "--out", str(tmp_path / "m.png")]) == 2
    assert "give --out a .tif name" in capsys.readouterr().err


def test_cli_then_change_between_naip_years(zion_bundle, tmp_path, capsys):
    """North Dakota NAIP (5 m, 4 bands, uint8) in 2009 and 2020 through the CLI, then the change between them."""
    bundle, _, _ = zion_bundle
    nd = need_data("naip_nd")
    maps = {}
    for year, name in (("2009", "m_4709963_se_14_1_20090818.tif"), ("2020", "m_4709963_se_14_1_20200831.tif")):
        maps[year] = tmp_path / f"nd{year}.tif"
        assert main(["predict", str(bundle), "--quiet", "--image", str(nd / name), "--bands", "1", "2", "3",
                     "--stride", "240m", "--probabilities", "--out", str(maps[year])]) == 0
        assert "warping imagery on the fly from EPSG:26914 at 5 m" in capsys.readouterr().out
    assert main(["change", str(maps["2009"]), str(maps["2020"]), "--out", str(tmp_path / "change")]) == 0
    with rasterio.open(maps["2009"]) as a, rasterio.open(maps["2020"]) as b:
        before, after = a.read(1), b.read(1)
        cell_ha = a.res[0] * a.res[1] / 1e4
    both = (before != 255) & (after != 255)
    transitions = np.loadtxt(tmp_path / "change" / "transitions.csv", delimiter=",", skiprows=1,
                             usecols=range(1, 9), max_rows=8)
    expected = np.zeros((8, 8))
    np.add.at(expected, (before[both], after[both]), cell_ha)
    assert np.allclose(transitions, expected)
    assert both.sum() > 200 and (tmp_path / "change" / "change.png").exists()


@pytest.mark.slow
def test_process_pool_and_ray_write_the_identical_map(zion_bundle, tmp_path):
    bundle, images, _ = zion_bundle
    outs = {}
    for name, engine in (("local", Engine()), ("process", Engine("process", 2)), ("ray", Engine("ray", 2))):
        outs[name] = tmp_path / f"{name}.tif"
        predict_raster(bundle, images, outs[name], stride="240m", aoi=need_data("zion", "zion.gpkg"),
                       probabilities=True, engine=engine, progress=False, log=lambda _: None)
    arrays = {}
    for name, path in outs.items():
        with rasterio.open(path) as m, rasterio.open(path.with_suffix(".probs.tif")) as p:
            arrays[name] = (m.read(), p.read())
    for name in ("process", "ray"):
        assert np.array_equal(arrays[name][0], arrays["local"][0]), name
        assert np.abs(arrays[name][1].astype(int) - arrays["local"][1]).max() <= 1, name


@pytest.mark.slow
def test_a_tile_map_as_tiles_equals_the_single_map(zion_bundle, zion_crop, tmp_path, capsys):
    """#30: a tile classifier's map written as tiles of whole cells, each by its own task (2 workers): with windows
    every half cell (--stride 240m, each cell the mean of 4 windows) the mosaic equals the single map cell for cell,
    the 8-bit chips' stretch being the whole scene's in every tile; class areas in the STAC items add up."""
    bundle, _, _ = zion_bundle
    single, tiled = tmp_path / "single.tif", tmp_path / "tiled"
    predict_raster(bundle, zion_crop, single, stride="240m", progress=False, log=lambda _: None)
    argv = ["predict", str(bundle), "--quiet", "--image", *zion_crop, "--stride", "240m", "--out", str(tiled)]
    assert main([*argv, "--tiles", "4800m", "--workers", "2"]) == 0  # 20 cells of 240 m a side
    with rasterio.open(single) as a, rasterio.open(tiled / "index.vrt") as b:
        whole, mosaic = a.read(1), b.read(1)
        assert b.transform == a.transform and b.shape == a.shape == (37, 52)
    assert np.array_equal(whole, mosaic) and len(np.unique(whole)) >= 3
    summary = json.loads((tiled / "tiles.json").read_text())
    assert summary["tiles"] == 2 * 3 and summary["halo_cells"] == 1 and summary["cell_m"] == 240
    hectares = sum(sum(json.loads(p.read_text())["properties"]["landcover:hectares"].values())
                   for p in (tiled / "items").glob("*.json"))
    assert hectares == pytest.approx((whole != 255).sum() * 5.76)  # 240 m cells: 5.76 ha
    capsys.readouterr()
    assert main([*argv[:-2], "--out", str(tmp_path / "other"), "--tiles", "5000m"]) == 2
    assert "whole cells of its 8 px stride" in capsys.readouterr().err
