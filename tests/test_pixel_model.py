"""The pixel model (#28): per-pixel filter features in metres, computed in blocks with a halo exactly as over the
whole raster; `train --task pixels` on real Zion pairs; its bundle scored per pixel, mapping whole rasters, with no
pickle and no network; the tree kernels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import need_data

from landcover.bundle import load_bundle
from landcover.cli import main
from landcover.maps.classmap import read_class_map
from landcover.models.pixelfeatures import PixelFeatures, default_scales
from landcover.segment.data import PairDataset
from landcover.segment.metrics import add_to_confusion


@pytest.fixture(scope="module")
def pixel_run(zion_pairs, tmp_path_factory):
    runs = tmp_path_factory.mktemp("pixel-runs")
    assert main(["train", "--quiet", "--task", "pixels", "--manifest", str(zion_pairs), "--runs", str(runs),
                 "--name", "px", "--pixels-per-class", "4000"]) == 0
    return runs / "px"


def test_features_of_a_block_with_its_halo_equal_the_whole_rasters(zion_crop):
    """Metres, not pixels: the same scales in metres at 30 m are 1, 2, 4, 8 px; a block read with halo_px of context
    gives the whole crop's features in its core."""
    pixels = np.stack([rasterio.open(p).read(1) for p in zion_crop]).astype(np.float32)
    spec = PixelFeatures.create(["blue", "green", "red", "nir"], ["blue", "green", "red", "nir"], default_scales(30))
    assert spec.scales_m == (30.0, 60.0, 120.0, 240.0) and spec.halo_px(30.0) == 25
    assert [i[0] for i in spec.indices] == ["ndvi", "ndwi"] and len(spec.names) == 6 * (1 + 4 * 4)
    whole = spec.compute(pixels, None, 30.0)
    halo = spec.halo_px(30.0)
    r0, r1, c0, c1 = 100, 180, 150, 260
    block = spec.compute(pixels[:, r0 - halo:r1 + halo, c0 - halo:c1 + halo], None, 30.0)
    np.testing.assert_allclose(block[:, halo:-halo, halo:-halo], whole[:, r0:r1, c0:c1], rtol=1e-4, atol=1e-3)
    # the same features on a 15 m grid of the same ground need twice the pixels of halo
    assert spec.halo_px(15.0) == 49


def test_features_near_nodata_and_the_rasters_edge_do_not_depend_on_the_window(zion_crop):
    """Nodata takes no part in the filters: a pixel beside a hole of nodata, or at the raster's edge (outside it is
    invalid, as a window read past the edge gives it), has the same features in every window holding its halo."""
    pixels = np.stack([rasterio.open(p).read(1) for p in zion_crop]).astype(np.float32)
    spec = PixelFeatures.create(["blue", "green", "red", "nir"], ["blue", "green", "red", "nir"], default_scales(30))
    halo = spec.halo_px(30.0)
    valid = np.ones(pixels.shape[1:], bool)
    valid[120:160, 200:240] = False  # a hole of nodata
    padded = np.pad(pixels, ((0, 0), (halo, halo), (halo, halo)))  # outside the raster: invalid
    padded_valid = np.pad(valid, halo)
    whole = spec.compute(padded, padded_valid, 30.0)[:, halo:-halo, halo:-halo]
    for r0, c0 in ((110, 190), (100, 230), (0, 0), (250, 370)):  # around the hole, and at two corners
        r1, c1 = r0 + 50, c0 + 50
        block = spec.compute(padded[:, r0:r1 + 2 * halo, c0:c1 + 2 * halo],
                             padded_valid[r0:r1 + 2 * halo, c0:c1 + 2 * halo], 30.0)[:, halo:-halo, halo:-halo]
        np.testing.assert_array_equal(block, whole[:, r0:r1, c0:c1])
    assert np.isnan(whole[:, 130, 210]).all() and np.isfinite(whole[:, 118, 210]).all()
    # the hole does not drag its neighbours' smoothed values towards anything: the fill is no value at all
    smooth = spec.names.index("nir_smooth_240m")
    near = whole[smooth, 118, 190:250]
    assert near.min() > 0.5 * np.nanmedian(pixels[3]) and np.isfinite(near).all()


def test_the_pixel_model_trains_scores_and_maps_a_raster(pixel_run, zion_pairs, zion_crop, tmp_path, capsys):
    summary = json.loads((pixel_run / "summary.json").read_text())
    assert summary["task"] == "pixels" and summary["features"] == 102 and summary["scales_m"] == [30, 60, 120, 240]
    assert summary["val_pixel_accuracy"] > 0.6 and summary["seconds"]["total"] < 60
    bundle = pixel_run / "bundle"
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["task"] == "pixels" and meta["kind"] == "pixels" and meta["pixels"]["features"][-1] == "ndwi_std_240m"
    assert not [p for p in bundle.rglob("*") if p.suffix in (".pkl", ".pt", ".pickle")]
    capsys.readouterr()
    assert main(["evaluate", str(bundle), "--manifest", str(zion_pairs), "--split", "test",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["pixel_accuracy"] > 0.6 and report["pixels"] > 10000
    truth = need_data("zion", "nlcd2011.tif")
    out = tmp_path / "map.tif"
    assert main(["predict", str(bundle), "--image", *zion_crop, "--out", str(out), "--probabilities", "--truth",
                 str(truth), "--scheme", "nlcd-grouped", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "per-pixel filter features and a head, on numpy" in said
    agreement = float(said.split("agreement with truth (map): ")[1].split()[0])
    assert agreement > 0.6
    classes = read_class_map(out)
    with rasterio.open(zion_crop[0]) as src:
        assert classes.data.shape == src.shape and classes.transform == src.transform
    assert (classes.data != 255).all() and (tmp_path / "map.probs.tif").exists()
    loaded = load_bundle(bundle)
    assert loaded.per_pixel and loaded.model is None
    assert main(["export-onnx", str(bundle)]) == 2
    assert "a pixels bundle has no network to export" in capsys.readouterr().err


def test_evaluate_scores_the_pixels_predict_maps(pixel_run, zion_crop, tmp_path):
    """Pairs cut from the crop, those at its edges included: evaluate reads each with the filters' reach as predict
    reads the raster (no data past the imagery's edge), so both give the pairs' pixels the same classes."""
    truth = need_data("zion", "nlcd2011_albers.tif")
    pairs, bundle = tmp_path / "pairs", pixel_run / "bundle"
    assert main(["chips", "--quiet", "--image", *zion_crop, "--labels", str(truth), "--scheme", "nlcd-grouped",
                 "--tile-size", "64px", "--layout", "pairs", "--out", str(pairs)]) == 0
    assert main(["split", str(pairs), "--blocks", "1", "--no-plot"]) == 0
    assert main(["evaluate", str(bundle), "--manifest", str(pairs), "--split", "train", "--out",
                 str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert main(["predict", str(bundle), "--image", *zion_crop, "--out", str(tmp_path / "map.tif"), "--quiet"]) == 0
    classes = read_class_map(tmp_path / "map.tif")
    train = PairDataset(pairs, "train")
    confusion = np.zeros((train.n_classes,) * 2, np.int64)
    for i in range(len(train)):
        target = train.read(i)[1]
        left, _, _, top = train.frame.geometry.iat[i].bounds
        col, row = (round(v) for v in ~classes.transform * (left, top))
        add_to_confusion(confusion, target, classes.data[row:row + target.shape[0], col:col + target.shape[1]])
    assert confusion.sum() == report["pixels"] > 10000
    assert np.trace(confusion) / confusion.sum() == pytest.approx(report["pixel_accuracy"], abs=0.002)


def test_windows_blend_into_the_map_one_window_gives(pixel_run, zion_crop, tmp_path):
    """Windows of 256 px overlapping by the filters' reach agree with one window over the crop (edges left out)."""
    from landcover.predict.raster import predict_raster

    for name, window in (("one", "448px"), ("many", "256px")):
        predict_raster(pixel_run / "bundle", zion_crop, tmp_path / f"{name}.tif", window=window, progress=False,
                       log=lambda _: None)
    one, many = read_class_map(tmp_path / "one.tif").data, read_class_map(tmp_path / "many.tif").data
    assert (one[25:-25, 25:-25] == many[25:-25, 25:-25]).mean() > 0.97


def test_tree_kernels_give_scikit_learns_probabilities():
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from landcover.models.heads import from_sklearn

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 12)).astype(np.float32)
    X[rng.random(X.shape) < 0.02] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 3]) > 0).astype(int) + (np.nan_to_num(X[:, 5]) > 1)
    for estimator in (RandomForestClassifier(20, min_samples_leaf=3, random_state=0),
                      HistGradientBoostingClassifier(max_iter=30, random_state=0)):
        Xf = np.nan_to_num(X) if isinstance(estimator, RandomForestClassifier) else X
        estimator.fit(Xf, y)
        head = from_sklearn(estimator, 3)
        np.testing.assert_allclose(head.predict_proba(Xf), estimator.predict_proba(Xf), atol=1e-9)


def test_a_map_as_tiles_written_by_the_workers(pixel_run, zion_images, tmp_path, capsys):
    """#30: `predict --tiles` on two worker processes: each tile's COG is written by its task, the mosaic (index.vrt)
    equals the single map of the same inputs pixel for pixel, the STAC items describe the tiles; a rerun redoes only
    a tile that is missing or altered; a tile that cannot be written is tried twice, reported, and the others kept."""
    import hashlib

    bundle, single, tiled = str(pixel_run / "bundle"), tmp_path / "single.tif", tmp_path / "tiled"
    assert main(["predict", bundle, "--image", *zion_images, "--out", str(single)]) == 0
    argv = ["predict", bundle, "--image", *zion_images, "--out", str(tiled), "--tiles", "12000m", "--workers", "2"]
    assert main(argv) == 0  # 400 px tiles of the 1428 x 1128 px map: 4 x 3, the last row and column narrower
    with rasterio.open(single) as a, rasterio.open(tiled / "index.vrt") as b:
        whole, mosaic = a.read(1), b.read(1)
        assert b.transform == a.transform and b.crs == a.crs and b.tags()["LANDCOVER_CLASSES"]
    assert np.array_equal(whole, mosaic)
    catalog = json.loads((tiled / "catalog.json").read_text())
    items = [json.loads((tiled / link["href"]).read_text()) for link in catalog["links"] if link["rel"] == "item"]
    assert len(items) == 12 and {i["properties"]["proj:shape"][0] for i in items} == {400, 228}
    for item in items:
        cog = (tiled / "items" / item["assets"]["map"]["href"]).resolve()
        assert item["assets"]["map"]["file:checksum"] == "1220" + hashlib.sha256(cog.read_bytes()).hexdigest()
    hectares = sum(sum(i["properties"]["landcover:hectares"].values()) for i in items)
    assert hectares == pytest.approx((whole != 255).sum() * 0.09)  # 30 m pixels: 0.09 ha
    summary = json.loads((tiled / "tiles.json").read_text())
    assert summary["written"] == 12 and len(summary["nodes"]) == 1
    truth = str(need_data("zion", "nlcd2011.tif"))
    for name, mapped in (("single", single), ("tiled", tiled)):  # the folder is read as its mosaic, index.vrt
        assert main(["evaluate", str(mapped), "--truth", truth, "--scheme", "nlcd-grouped", "--quiet", "--out",
                     str(tmp_path / f"eval-{name}")]) == 0
    scores = [json.loads((tmp_path / f"eval-{n}" / "accuracy.json").read_text())["overall_accuracy"]
              for n in ("single", "tiled")]
    assert scores[0] == scores[1]
    assert main(["change", str(single), str(tiled), "--quiet", "--out", str(tmp_path / "change")]) == 0
    totals = json.loads((tmp_path / "change" / "change.json").read_text())["totals"]
    assert totals["changed_ha"] == 0 and totals["unchanged_ha"] == pytest.approx((whole != 255).sum() * 0.09)
    assert main(["map", str(tiled), "--image", *zion_images, "--out", str(tmp_path / "tiled.png")]) == 0
    assert main(["map", str(tiled / "tiles"), "--out", str(tmp_path / "x.png")]) == 2
    assert "without index.vrt" in capsys.readouterr().err
    # resume: a missing tile and an altered one are made again, the other ten are left as they are
    tiles = sorted((tiled / "tiles").glob("*.tif"))
    tiles[0].unlink()
    with open(tiles[5], "ab") as fh:
        fh.write(b"\0")
    kept = {p: p.stat().st_mtime_ns for p in tiles[1:5] + tiles[6:]}
    capsys.readouterr()
    assert main(argv) == 0
    assert "12 tiles (2 written, 10 already there)" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    with rasterio.open(tiled / "index.vrt") as b:
        assert np.array_equal(whole, b.read(1))
    # other settings in the same folder: refused, nothing touched
    assert main([*argv[:-4], "--tiles", "300px"]) == 2
    assert "holds tiles of another run" in capsys.readouterr().err
    # a tile that cannot be written (a folder in its place): tried again, then one line naming it; the rest kept
    tiles[3].unlink()
    tiles[3].mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 12 tiles failed twice" in err[0] and tiles[3].stem in err[0]
    assert json.loads((tiled / "tiles.json").read_text())["failed"].keys() == {tiles[3].stem}
    # refined by the CRF (at 30 m: blocks of 512 px), tiles are whole blocks
    assert main(["predict", bundle, "--image", *zion_images, "--out", str(tmp_path / "dense"), "--crf", "--tiles",
                 "400px"]) == 2
    assert "a dense map's tiles are whole blocks of the CRF (512 cells of 1 px), e.g. 512 px" in capsys.readouterr().err


def test_a_killed_tiled_run_finishes_only_the_remaining_tiles(pixel_run, zion_images, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "tiled"
    argv = ["predict", str(pixel_run / "bundle"), "--image", *zion_images, "--out", str(out), "--tiles", "256px"]
    driver = subprocess.Popen([sys.executable, "-m", "landcover", *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("tiles/*.json"))) < 5 and driver.poll() is None:
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    written = len(list(out.glob("tiles/*.json")))
    assert 5 <= written < 30 and not (out / "index.vrt").exists(), "the kill came too late to test"
    capsys.readouterr()
    assert main(argv) == 0  # 6 x 5 tiles of 256 px
    assert f"30 tiles ({30 - written} written, {written} already there)" in capsys.readouterr().out


@pytest.mark.slow
def test_tiles_of_imagery_read_over_http_window_by_window(pixel_run, zion_images, tmp_path):
    """#30: imagery given as URLs (a Range-honouring HTTP server on 127.0.0.1): each tile's task reads its own
    window of the remote bands, never a whole file, and the mosaic equals the one made from the local files."""
    from pathlib import Path

    from stac_helpers import StacServer

    bundle = str(pixel_run / "bundle")
    assert main(["predict", bundle, "--quiet", "--image", *zion_images, "--out", str(tmp_path / "local"), "--tiles",
                 "12000m"]) == 0
    with StacServer(Path(zion_images[0]).parent) as server:
        urls = [f"{server.base}/{Path(p).name}" for p in zion_images]
        assert main(["predict", bundle, "--quiet", "--image", *urls, "--out", str(tmp_path / "remote"), "--tiles",
                     "12000m", "--workers", "2"]) == 0
    with rasterio.open(tmp_path / "local" / "index.vrt") as a, rasterio.open(tmp_path / "remote" / "index.vrt") as b:
        assert np.array_equal(a.read(1), b.read(1))
        assert json.loads(b.tags()["LANDCOVER_IMAGES"]) == urls
    for path in zion_images:
        size = Path(path).stat().st_size
        ranges = server.ranges[f"/{Path(path).name}"]
        assert len(ranges) >= 4 and max(last - first + 1 for first, last in ranges) < size / 2  # windows, not files
