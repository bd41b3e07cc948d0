"""Per-pixel maps from a segmentation bundle (#10) on real Zion imagery: the imagery's grid, no seams at window
edges, windowed equal to one window within a stated tolerance, banding that changes nothing, resume, engines,
tiles equal to the single map (#30), AOI, warping, runtimes, `landcover map` and `change` on the maps, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import torch
from conftest import need_data, write_raster
from rasterio.warp import Resampling, calculate_default_transform, reproject

import landcover.predict.bands as bands_module
import landcover.predict.pixels as pixels_module
from landcover.cli import main
from landcover.engine import Engine
from landcover.maps.classmap import NODATA, read_class_map, read_probabilities, write_class_map
from landcover.predict.raster import predict_raster

torch.set_num_threads(2)

MARGIN = 32
"""Pixels this close to the raster's edges are left out of the windowed-vs-one-window comparison."""
AGREEMENT = 0.90
MEAN_PROBABILITY_DIFF = 0.025
"""The stated tolerance: windows of 512 px overlapping by 128, blended, against the whole scene in one window (the
difference is the network's: trained on 64 px tiles, it sees past them, so a pixel's class depends a little on
the window around it; 256 px windows agree on 86%)."""


def quiet(_):
    return None


@pytest.fixture(scope="module")
def default_map(zion_seg_run, zion_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("pixels") / "zion.tif"
    truth = need_data("zion", "nlcd2011.tif")
    assert main(["predict", str(zion_seg_run / "bundle"), "--image", *zion_images, "--out", str(out), "--quiet",
                 "--probabilities", "--truth", str(truth), "--scheme", "nlcd-grouped"]) == 0
    return out


def boundary_rates(classes: np.ndarray, edges: set[int]) -> tuple[float, float]:
    """How often a pixel's class differs from its left / upper neighbour: across window edges, and elsewhere."""
    rows, cols = classes.shape
    across = np.concatenate([(classes[:, 1:] != classes[:, :-1]).ravel(), (classes[1:] != classes[:-1]).ravel()])
    positions = np.concatenate([np.tile(np.arange(1, cols), rows), np.repeat(np.arange(1, rows), cols)])
    on_edge = np.isin(positions, sorted(edges))
    return float(across[on_edge].mean()), float(across[~on_edge].mean())


def window_edges(step: int, window: int, size: int) -> set[int]:
    return {e for j in range(size // step + 2) for e in (j * step, j * step + window) if 0 < e < size}


def test_a_class_for_every_pixel_on_the_imagery_grid_without_seams(default_map, zion_seg_run, zion_images,
                                                                   tmp_path):
    cm = read_class_map(default_map)
    with rasterio.open(zion_images[0]) as src:
        assert (cm.crs, cm.transform, cm.data.shape) == (src.crs, src.transform, (src.height, src.width))
    bundle_classes = json.loads((zion_seg_run / "bundle" / "model.json").read_text())["classes"]
    assert cm.classes == bundle_classes and cm.tags["LANDCOVER_TASK"] == "segmentation"
    with rasterio.open(default_map) as src:
        assert src.colormap(1)[3][:3] == tuple(int(bundle_classes[3]["color"][i:i + 2], 16) for i in (1, 3, 5))
    assert (cm.data != NODATA).all()  # Zion has no nodata: every pixel gets a class
    probs, valid = read_probabilities(default_map.with_suffix(".probs.tif"))
    assert valid.all() and np.abs(probs.sum(0) - 1).max() < 0.03
    assert (probs.argmax(0) == cm.data).mean() > 0.995  # the most probable class (up to rounding to 1/254)
    summary = json.loads(default_map.with_suffix(".json").read_text())
    assert summary["task"] == "segmentation" and (summary["window_px"], summary["overlap_px"]) == (512, 128)
    assert sum(summary["counts"].values()) == cm.data.size
    assert summary["scores"]["map"]["agreement"] > 0.5
    # No seams: pixels across window edges disagree no more often than pixels elsewhere (within 20%, about
    # three standard errors here) ...
    edges = window_edges(384, 512, max(cm.data.shape))
    edge, interior = boundary_rates(cm.data, edges)
    assert edge <= 1.2 * interior, (edge, interior)
    # ... while windows that neither overlap nor blend leave a seam this measure sees.
    butted = tmp_path / "butted.tif"
    predict_raster(zion_seg_run / "bundle", zion_images, butted, overlap="0px", progress=False, log=quiet)
    edge, interior = boundary_rates(read_class_map(butted).data, window_edges(512, 512, max(cm.data.shape)))
    assert edge > 2 * interior, (edge, interior)


def test_windows_equal_one_window_within_the_stated_tolerance(default_map, zion_seg_run, zion_images, tmp_path):
    whole = tmp_path / "whole.tif"
    predict_raster(zion_seg_run / "bundle", zion_images, whole, window="1440px", overlap="0px", probabilities=True,
                   progress=False, log=quiet)
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    one, windowed = read_class_map(whole).data, read_class_map(default_map).data
    assert (one[inner] == windowed[inner]).mean() >= AGREEMENT
    p_one, _ = read_probabilities(whole.with_suffix(".probs.tif"))
    p_windowed, _ = read_probabilities(default_map.with_suffix(".probs.tif"))
    assert np.abs(p_one[:, inner[0], inner[1]] - p_windowed[:, inner[0], inner[1]]).mean() <= MEAN_PROBABILITY_DIFF


def test_a_window_past_the_map_is_the_window_that_covers_it(zion_seg_run, zion_crop, tmp_path):
    """--window 4096px on a 300 x 420 px map computes one 448 px window (not a 4096 px one, 84x the pixels: what
    made it 9x slower than 512 px windows on Zion), says so, and gives the same map."""
    said = []
    for name, window in (("big", "4096px"), ("fit", "448px")):
        predict_raster(zion_seg_run / "bundle", zion_crop, tmp_path / f"{name}.tif", window=window, overlap="0px",
                       progress=False, log=said.append)
    assert said[0] == "--window 4096px: one window of 448 px covers the 300 x 420 px map"
    assert "1 windows of 448 px" in said[1]
    np.testing.assert_array_equal(read_class_map(tmp_path / "big.tif").data, read_class_map(tmp_path / "fit.tif").data)


def _predict(bundle, images, out, **options):
    predict_raster(bundle, images, out, window="128px", overlap="32px", probabilities=True, progress=False,
                   log=quiet, **options)
    with rasterio.open(out) as m, rasterio.open(out.with_suffix(".probs.tif")) as p:
        return m.read(1), p.read()


def test_bands_and_chunks_change_nothing_and_a_killed_run_resumes(zion_seg_run, zion_crop, tmp_path, monkeypatch):
    bundle = zion_seg_run / "bundle"
    classes, probs = _predict(bundle, zion_crop, tmp_path / "one_band.tif")
    monkeypatch.setattr(bands_module, "BAND_PX", 100)  # 3 window rows a band: 4 bands
    monkeypatch.setattr(bands_module, "CHUNK_PX", 150)  # 2 window columns a chunk
    small_classes, small_probs = _predict(bundle, zion_crop, tmp_path / "bands.tif")
    # The blend's sums are fixed point: windows summed in another order (other bands, chunks, batches) give the
    # same bytes (float sums differed on 1 pixel in 10,000 here).
    assert np.array_equal(small_classes, classes) and np.array_equal(small_probs, probs)
    real, calls = pixels_module.run_band, []

    def dying(job, band):
        calls.append(band.index)
        if band.index == 2:
            raise KeyboardInterrupt("killed")
        return real(job, band)

    monkeypatch.setattr(pixels_module, "run_band", dying)
    out = tmp_path / "resumed.tif"
    with pytest.raises(KeyboardInterrupt):
        _predict(bundle, zion_crop, out)
    assert not out.exists() and (tmp_path / ".resumed.tif.landcover-state" / "progress.npz").exists()
    monkeypatch.setattr(pixels_module, "run_band", real)
    calls.clear()
    result = predict_raster(bundle, zion_crop, out, window="128px", overlap="32px", probabilities=True, progress=False,
                            log=quiet)
    assert result.resumed == 2
    with rasterio.open(out) as m, rasterio.open(out.with_suffix(".probs.tif")) as p:
        assert np.array_equal(m.read(1), small_classes) and np.array_equal(p.read(), small_probs)
    assert not (tmp_path / ".resumed.tif.landcover-state").exists()


@pytest.mark.slow
def test_process_pool_and_ray_write_the_identical_map(zion_seg_run, zion_crop, tmp_path):
    bundle = zion_seg_run / "bundle"
    local = _predict(bundle, zion_crop, tmp_path / "local.tif")
    for name, engine in (("process", Engine("process", 2)), ("ray", Engine("ray", 2))):
        classes, probs = _predict(bundle, zion_crop, tmp_path / f"{name}.tif", engine=engine)
        assert np.array_equal(classes, local[0]) and np.array_equal(probs, local[1]), name


@pytest.mark.slow
def test_a_segmentation_map_as_tiles_equals_the_single_map(zion_seg_run, zion_crop, tmp_path, capsys):
    """#30: a U-Net's map written as tiles by two workers: tiles of whole window steps (128 px windows overlapping
    by 32: steps of 96 px, tiles of 288), each reading every window over it, give the single map's bytes, and so
    do their probabilities, which `landcover crf DIR` refines into the single map's refinement; a size that is not
    whole steps is one line."""
    bundle = str(zion_seg_run / "bundle")
    single, tiled = tmp_path / "single.tif", tmp_path / "tiled"
    options = ["--window", "128px", "--overlap", "32px", "--probabilities"]
    assert main(["predict", bundle, "--quiet", "--image", *zion_crop, "--out", str(single), *options]) == 0
    argv = ["predict", bundle, "--quiet", "--image", *zion_crop, *options, "--workers", "2", "--tiles"]
    assert main([*argv, "288px", "--out", str(tiled)]) == 0
    with rasterio.open(single) as a, rasterio.open(tiled / "index.vrt") as b:
        whole, mosaic = a.read(1), b.read(1)
        assert b.transform == a.transform and b.shape == a.shape == (300, 420)
    assert np.array_equal(whole, mosaic) and len(np.unique(whole)) > 4
    assert np.array_equal(read_probabilities(single.with_suffix(".probs.tif"))[0],
                          read_probabilities(tiled / "probs.vrt")[0])
    for source, out in ((single.with_suffix(".probs.tif"), "crf-single.tif"), (tiled, "crf-tiles.tif")):
        assert main(["crf", str(source), "--quiet", "--image", *zion_crop, "--out", str(tmp_path / out)]) == 0
    refined = read_class_map(tmp_path / "crf-tiles.tif").data
    assert np.array_equal(read_class_map(tmp_path / "crf-single.tif").data, refined)
    assert 0.5 < (refined == whole).mean() < 1  # the CRF changed something, not everything
    summary = json.loads((tiled / "tiles.json").read_text())
    assert summary["tiles"] == 2 * 2 and summary["halo_cells"] == 192
    capsys.readouterr()
    assert main([*argv, "400px", "--out", str(tmp_path / "other")]) == 2
    assert "whole steps of its windows (96 px" in capsys.readouterr().err


def test_aoi_warped_imagery_and_both_runtimes(zion_seg_run, zion_crop, tmp_path, capsys):
    bundle = zion_seg_run / "bundle"
    onnx, _ = _predict(bundle, zion_crop, tmp_path / "onnx.tif", runtime="onnx")
    torch_map, _ = _predict(bundle, zion_crop, tmp_path / "torch.tif", runtime="torch")
    assert (onnx == torch_map).mean() > 0.999
    # AOI: the park boundary cuts the zion_crop; outside it is nodata, inside every pixel is mapped.
    aoi = need_data("zion", "zion.gpkg")
    cut, _ = _predict(bundle, zion_crop, tmp_path / "aoi.tif", aoi=aoi)
    inside = cut != NODATA
    assert 0.05 < inside.mean() < 0.95
    assert (cut[inside] == onnx[inside]).mean() > 0.97  # same windows where the AOI keeps them whole
    # Warped: the zion_crop in Albers (EPSG:5070) is mapped at the bundle's 30 m on the Albers grid, and agrees
    # with the direct map where the two grids are brought together.
    warped = []
    for path in zion_crop:
        with rasterio.open(path) as src:
            transform, width, height = calculate_default_transform(src.crs, "EPSG:5070", src.width, src.height,
                                                                   *src.bounds, resolution=30)
            data = np.zeros((height, width), src.dtypes[0])
            reproject(src.read(1), data, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs="EPSG:5070", resampling=Resampling.bilinear, dst_nodata=0)
            warped.append(str(write_raster(tmp_path / f"albers_{path.split('/')[-1]}", data, "EPSG:5070",
                                           transform, 0)))
    assert main(["predict", str(bundle), "--image", *warped, "--out", str(tmp_path / "albers.tif")]) == 0
    assert "directly" in capsys.readouterr().out  # 30 m Albers imagery is read as it is: its grid is the map's
    albers = read_class_map(tmp_path / "albers.tif")
    assert albers.crs.to_epsg() == 5070 and albers.transform.a == 30
    back = np.full(onnx.shape, NODATA, np.uint8)
    with rasterio.open(tmp_path / "onnx.tif") as src:
        reproject(albers.data, back, src_transform=albers.transform, src_crs=albers.crs, dst_transform=src.transform,
                  dst_crs=src.crs, resampling=Resampling.nearest, src_nodata=NODATA, dst_nodata=NODATA)
    both = (back != NODATA)
    assert both.mean() > 0.8 and (back[both] == onnx[both]).mean() > 0.7


def test_map_and_change_read_per_pixel_maps(default_map, zion_images, tmp_path):
    assert main(["map", str(default_map), "--image", *zion_images, "--bands", "3", "2", "1", "--out",
                 str(tmp_path / "map.png")]) == 0
    # a later per-pixel map: the same one with a block of the park turned into its second class
    later = tmp_path / "later.tif"
    cm = read_class_map(default_map)
    data = cm.data.copy()
    block = data[300:500, 400:700]
    block[block != NODATA] = 1
    write_class_map(replace(cm, data=data), later)
    assert main(["change", str(default_map), str(later), "--out", str(tmp_path / "change"), "--quiet"]) == 0
    before, after = read_class_map(default_map).data, read_class_map(later).data
    changed = json.loads((tmp_path / "change" / "change.json").read_text())
    assert (tmp_path / "map.png").stat().st_size > 10_000
    assert (before != after).any()
    assert changed["totals"]["changed_ha"] == pytest.approx(int((before != after).sum()) * 0.09)


def test_bad_input_is_one_line(zion_seg_run, zion_bundle, zion_crop, tmp_path, capsys):
    bundle = str(zion_seg_run / "bundle")
    out = tmp_path / "m.tif"
    for extra, message in ((["--window", "100px"], "must be a multiple of 32 px"),
                           (["--overlap", "300px"], "must be between 0 and half the window"),
                           (["--smooth", "3"], "--smooth is for tile maps"),
                           (["--stride", "64px"], "--stride sets the cell of tile maps")):
        assert main(["predict", bundle, "--image", *zion_crop, "--out", str(out), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # the tile classifier refuses per-pixel options
    assert main(["predict", str(zion_bundle[0]), "--image", *zion_crop, "--out", str(out), "--quiet", "--window",
                 "256px"]) == 2
    assert "--window and --overlap are for segmentation bundles" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*landcover-state"))
