"""Reliability on real data: geographic imagery in predict, reruns after failures, locks, corrupt weights, output
paths, empty results, and every out-of-range number refused at parse time."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from conftest import need_data, write_raster
from rasterio.warp import Resampling, calculate_default_transform, reproject

from landcover.cli import main
from landcover.locks import lock_path
from landcover.manifest import read_manifest, write_manifest


def fails(capsys, argv, *expected) -> str:
    """Run the CLI; assert exit 2 and one line on stderr holding every expected fragment; return that line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse refuses bad flags while parsing
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def zion_chips_args(zion, out, *extra):
    images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
    return ["chips", "--quiet", "--image", *images, "--labels", str(zion / "nlcd2011.tif"), "--scheme",
            "nlcd-grouped", "--tile-size", "480m", "--rule", "purity:0.75", "--out", str(out), *extra]


@pytest.mark.slow
def test_predict_warps_geographic_imagery_onto_its_utm_zone(zion_bundle, zion_tile_map, tmp_path, capsys):
    """Zion in EPSG:4326 (degrees) is mapped on UTM 12N, as `chips` cuts it, and agrees with the direct map."""
    bundle, images, _ = zion_bundle
    geographic = []
    for path in images:
        with rasterio.open(path) as src:
            transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
            data = np.zeros((h, w), src.dtypes[0])
            reproject(src.read(1), data, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs="EPSG:4326", resampling=Resampling.bilinear, dst_nodata=65535)
            geographic.append(write_raster(tmp_path / f"wgs84_{len(geographic)}.tif", data, "EPSG:4326", transform,
                                           nodata=65535))
    assert main(["predict", str(bundle), "--image", *map(str, geographic), "--out", str(tmp_path / "deg.tif"),
                 "--quiet"]) == 0
    assert "degrees to EPSG:32612 at 30 m" in capsys.readouterr().out
    with rasterio.open(tmp_path / "deg.tif") as deg, rasterio.open(zion_tile_map) as utm:
        assert deg.crs.to_epsg() == 32612 and deg.res == (480.0, 480.0)
        on_utm = np.full(utm.shape, 255, np.uint8)
        reproject(deg.read(1), on_utm, src_transform=deg.transform, src_crs=deg.crs, dst_transform=utm.transform,
                  dst_crs=utm.crs, resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
        direct = utm.read(1)
    both = (on_utm != 255) & (direct != 255)
    assert both.sum() > 3000 and (on_utm[both] == direct[both]).mean() > 0.7


def test_a_failed_predict_leaves_nothing_in_the_way(zion_bundle, tmp_path, capsys):
    bundle, images, _ = zion_bundle
    bundle = shutil.copytree(bundle, tmp_path / "bundle")
    (bundle / "model.onnx").unlink()  # --runtime onnx then fails once the run has been planned
    out = tmp_path / "maps" / "m.tif"
    fails(capsys, ["predict", bundle, "--image", *images, "--out", out, "--runtime", "onnx"], "model.onnx")
    assert not list(tmp_path.rglob("*landcover-state*")) and not out.exists()
    assert main(["predict", str(bundle), "--image", *images, "--out", str(out), "--quiet"]) == 0
    assert out.exists() and not list(tmp_path.rglob("*landcover-state*"))


def test_a_failed_train_leaves_no_run_folder(park_chips, tmp_path, capsys):
    chips = tmp_path / "chips"
    shutil.copytree(park_chips, chips)
    frame, info = read_manifest(chips / "manifest.parquet")
    write_manifest(frame[frame["label"] == "Forest"], chips / "manifest.parquet", info)
    runs = tmp_path / "runs"
    argv = ["train", "--quiet", "--manifest", chips, "--runs", runs, "--name", "r", "--mode", "features",
            "--input-size", "32", "--no-onnx"]
    fails(capsys, argv, "class")
    assert not (runs / "r").exists()
    assert main(["runs", "--runs", str(runs)]) == 0 and "no runs" in capsys.readouterr().out
    write_manifest(frame, chips / "manifest.parquet", info)
    assert main([str(a) for a in argv]) == 0
    assert "validation macro-F1" in capsys.readouterr().out  # --quiet hides bars, not the result
    fails(capsys, argv, "the run folder exists", "--overwrite")
    assert main([str(a) for a in argv] + ["--overwrite"]) == 0


def test_corrupt_weights_are_one_line(zion_bundle, tmp_path, capsys):
    """A fine-tuned bundle whose weights file is truncated, or a pickle renamed to .safetensors."""
    bundle, images, root = zion_bundle
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    meta = json.loads((broken / "model.json").read_text())
    meta.update(kind="finetune", weights="weights.safetensors", head=None)
    (broken / "model.json").write_text(json.dumps(meta))
    weights = broken / "weights.safetensors"
    for content, expected in ((b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": {", "not a readable safetensors file"),
                              (None, "is a pickle")):
        if content is None:
            torch.save({"w": torch.zeros(2)}, weights)
        else:
            weights.write_bytes(content)
        for argv in (["evaluate", broken, "--manifest", root / "chips", "--split", "test", "--quiet"],
                     ["predict", broken, "--image", *images, "--out", tmp_path / "m.tif", "--quiet"],
                     ["export-onnx", broken]):
            fails(capsys, argv, "weights.safetensors", expected)
    assert not (tmp_path / "m.tif").exists()


def test_outputs_that_cannot_be_written_are_refused_before_any_work(zion_bundle, tmp_path, capsys):
    bundle, images, root = zion_bundle
    zion = need_data("zion")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    fails(capsys, zion_chips_args(zion, a_file / "chips"), "a_file is a file, not a folder")
    fails(capsys, zion_chips_args(zion, a_file), "is a file: the output here is a folder")
    fails(capsys, zion_chips_args(zion, "/proc/landcover/chips"), "cannot be written")
    fails(capsys, ["train", "--manifest", root / "chips", "--runs", a_file / "runs", "--mode", "features"],
          "cannot be written")
    fails(capsys, ["export", root / "chips", "--format", "mapfile", "--out", a_file / "x"], "cannot be written")
    folder = tmp_path / "a_folder.tif"
    folder.mkdir()
    started = time.perf_counter()
    fails(capsys, ["predict", bundle, "--image", *images, "--out", folder, "--overwrite"], "is a folder")
    assert time.perf_counter() - started < 10  # refused up front, not after the whole prediction
    fails(capsys, ["map", root / "runs" / "b" / "bundle" / "model.json", "--out", tmp_path / "x.tif"],
          "give --out a .png name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder.tif"]


def test_a_second_run_on_the_same_output_is_refused(tmp_path, capsys):
    zion = need_data("zion")
    out = tmp_path / "chips"
    first = subprocess.Popen([sys.executable, "-m", "landcover", *zion_chips_args(zion, out, "--block-tiles", "4",
                                                                                  "--keep", "0.1")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = lock_path(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before the second could start"
    fails(capsys, zion_chips_args(zion, out), f"in use by process {first.pid}")
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert "chips in" in stdout and (out / "manifest.parquet").exists() and not lock.exists()


def test_empty_results_are_errors_that_say_why(zion_bundle, tmp_path, capsys):
    zion = need_data("zion")
    bundle, _, _ = zion_bundle
    with rasterio.open(zion / "landsat_b2.tif") as src:
        nan = np.full((3, src.height, src.width), np.nan, np.float32)
        blank = write_raster(tmp_path / "nan.tif", nan, src.crs, src.transform)
    argv = ["chips", "--quiet", "--image", blank, "--labels", zion / "nlcd2011.tif", "--scheme", "nlcd-grouped",
            "--format", "tif", "--out", tmp_path / "chips"]
    fails(capsys, argv, "no tile passed the rules", "nodata", "--allow-empty")
    assert not (tmp_path / "chips").exists()
    assert main([str(a) for a in argv] + ["--allow-empty"]) == 0
    assert len(read_manifest(tmp_path / "chips" / "manifest.parquet")[0]) == 0
    capsys.readouterr()
    fails(capsys, ["predict", bundle, "--image", blank, "--out", tmp_path / "m.tif", "--quiet"],
          "no map cell could be predicted", "--allow-empty")
    assert not (tmp_path / "m.tif").exists() and not list(tmp_path.glob(".m.tif*"))


def test_nodata_dominated_rejections_name_max_nodata(tmp_path, capsys):
    """Imagery with nodata declared as 255 and scattered white pixels: the summary points to --max-nodata and
    --nodata none."""
    zion = need_data("zion")
    rng = np.random.default_rng(0)
    with rasterio.open(zion / "landsat_b4.tif") as src:
        window = rasterio.windows.Window(300, 300, 256, 256)
        data = (src.read(1, window=window) // 64).clip(0, 254).astype(np.uint8)
        data[rng.random(data.shape) < 0.01] = 255
        image = write_raster(tmp_path / "white.tif", data, src.crs, src.window_transform(window), nodata=255)
    assert main(["chips", "--quiet", "--image", str(image), "--labels", str(zion / "nlcd2011.tif"), "--scheme",
                 "nlcd-grouped", "--rule", "purity:0.5", "--out", str(tmp_path / "chips")]) == 0
    out = capsys.readouterr().out
    assert "rejected for nodata" in out and "--max-nodata" in out and "--nodata none" in out


def test_small_things(zion_bundle, tmp_path, capsys):
    zion = need_data("zion")
    _, _, root = zion_bundle
    piped = subprocess.run(f"{sys.executable} -m landcover schemes -v | head -1", shell=True, capture_output=True,
                           text=True)
    assert piped.stdout.startswith("lcmap") and "Error" not in piped.stderr and "Traceback" not in piped.stderr
    loud = [a for a in zion_chips_args(zion, tmp_path / "c", "--keep", "0.05") if a != "--quiet"]
    run = subprocess.run([sys.executable, "-m", "landcover", *loud], capture_output=True, text=True)
    assert run.returncode == 0 and "\r" not in run.stderr and "tile/s" not in run.stderr  # no bars off a terminal
    fails(capsys, ["train", "--manifest", root / "chips", "--runs", tmp_path / "runs", "--rgb-bands", "5", "6", "7",
                   "--mode", "features"], "--rgb-bands 5 6 7", "1..3")
    assert not (tmp_path / "runs").exists()
    fails(capsys, ["split", root / "chips", "--blocks", "0"], "--blocks", "whole number >= 1")
    codes = np.arange(1000, dtype=np.uint16).repeat(1000).reshape(1000, 1000)
    with rasterio.open(zion / "landsat_b2.tif") as src:
        labels = write_raster(tmp_path / "codes.tif", codes, src.crs, src.transform)
    err = fails(capsys, [*zion_chips_args(zion, tmp_path / "x")[:7], "--labels", labels, "--out", tmp_path / "x"],
                "] and ", "distinct values: is this a land-cover raster")
    assert len(err) < 400


BAD_NUMBERS = [
    (["chips", "--image", "a.tif", "--labels", "b.tif", "--out", "o", "--resolution", "0"], "--resolution"),
    (["chips", "--image", "a.tif", "--labels", "b.tif", "--out", "o", "--block-tiles", "0"], "--block-tiles"),
    (["chips", "--image", "a.tif", "--labels", "b.tif", "--out", "o", "--keep", "1.5"], "--keep"),
    (["chips", "--image", "a.tif", "--labels", "b.tif", "--out", "o", "--workers", "0"], "--workers"),
    (["split", "m", "--blocks", "-2"], "--blocks"),
    (["export", "m", "--format", "tfrecord", "--out", "o", "--shards", "0"], "--shards"),
    (["train", "--manifest", "m", "--batch-size", "0"], "--batch-size"),
    (["train", "--manifest", "m", "--lr", "-1"], "--lr"),
    (["train", "--manifest", "m", "--input-size", "0"], "--input-size"),
    (["train", "--manifest", "m", "--input-size", "100000"], "--input-size"),
    (["train", "--manifest", "m", "--epochs", "nan"], "--epochs"),
    (["train", "--manifest", "m", "--sample-frac", "0"], "--sample-frac"),
    (["predict", "b", "--image", "a.tif", "--out", "m.tif", "--batch-size", "0"], "--batch-size"),
    (["predict", "b", "--image", "a.tif", "--out", "m.tif", "--max-nodata", "2"], "--max-nodata"),
    (["map", "m.tif", "--out", "m.png", "--alpha", "-0.1"], "--alpha"),
    (["change", "a.tif", "b.tif", "--out", "o", "--min-cells", "0"], "--min-cells"),
    (["acquire", "--catalog", "c.json", "--bbox", "0", "0", "1", "1", "--assets", "b", "--out", "o", "--resolution",
      "inf"], "--resolution"),
    (["acquire", "--catalog", "c.json", "--bbox", "0", "0", "1", "1", "--assets", "b", "--out", "o", "--resolution",
      "1e309"], "--resolution"),
    (["crf", "p.tif", "--image", "a.tif", "--out", "r.tif", "--downscale", "0"], "--downscale"),
    (["chips", "--image", "a.tif", "--labels", "b.tif", "--out", "o", "--nodata", "white"], "--nodata"),
    (["predict", "b", "--image", "a.tif", "--out", "m.tif", "--nodata", "inf"], "--nodata"),
    (["crf", "p.tif", "--image", "a.tif", "--out", "r.tif", "--nodata", "nan"], "--nodata"),
    (["label", "--image", "a.tif", "--scribbles", "s.gpkg", "--out", "d.tif", "--nodata", "-"], "--nodata"),
    (["doctor", "--image", "a.tif", "--nodata", "1e999"], "--nodata"),
    (["export-onnx", "b", "--opset", "-1"], "--opset"),
    (["import", "tree", "--out", "o", "--seed", "-3"], "--seed"),
    (["label", "--image", "a.tif", "--serve", "--classes", "a", "b", "--out", "d.tif", "--port", "70000"], "--port"),
    (["studio", "--image", "a.tif", "--out", "st", "--port", "70000"], "--port"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_NUMBERS, ids=[" ".join([*a[:1], f]) for a, f in BAD_NUMBERS])
def test_out_of_range_numbers_are_refused_at_parse_time(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err and ("out of range" in err or "is not" in err), err
    assert not list(tmp_path.iterdir())


def test_library_checks_the_same_ranges():
    from landcover.errors import LandcoverError
    from landcover.train.config import TrainConfig

    with pytest.raises(LandcoverError, match=r"lr -1\.0 is out of range"):
        TrainConfig.load(None, {"manifest": "m", "lr": -1.0})
    assert pd.isna(TrainConfig.load(None, {"manifest": "m"}).input_size)


MISSING = [
    (["chips", "--image", "nope.tif", "--labels", "nope_labels.tif", "--out", "o"], "nope.tif"),
    (["split", "nope/manifest.parquet"], "nope/manifest.parquet"),
    (["export", "nope/manifest.parquet", "--format", "mapfile", "--out", "o"], "nope/manifest.parquet"),
    (["train", "--manifest", "nope/manifest.parquet", "--mode", "features"], "nope/manifest.parquet"),
    (["evaluate", "nope_bundle", "--manifest", "m"], "nope_bundle"),
    (["predict", "nope_bundle", "--image", "a.tif", "--out", "m.tif"], "nope_bundle"),
    (["predict", "nope_bundle", "--images", "nope_chips", "--out", "p.csv"], "nope_chips"),
    (["export-onnx", "nope_bundle"], "nope_bundle"),
    (["map", "nope.tif", "--out", "m.png"], "nope.tif"),
    (["change", "nope_a.tif", "nope_b.tif", "--out", "o"], "nope_a.tif"),
    (["runs", "compare", "nope_run"], "nope_run"),
    (["acquire", "--catalog", "nope/catalog.json", "--bbox", "0", "0", "1", "1", "--assets", "b", "--out", "o"],
     "nope/catalog.json"),
    (["import", "nope_tree", "--out", "o"], "nope_tree"),
    (["label", "--image", "nope.tif", "--scribbles", "nope.gpkg", "--out", "d.tif"], "nope"),
    (["studio", "--image", "nope.tif", "--out", "st"], "nope"),
    (["crf", "nope.probs.tif", "--image", "nope.tif", "--out", "r.tif"], "nope"),
]
NO_INPUTS = {"demo", "schemes"}
"""Commands that read no file of the user's. `doctor` reports a missing file as a problem in its report (see
test_doctor_says_what_a_run_will_meet)."""


def test_every_command_has_its_bad_inputs_in_the_tables():
    """The tables keep themselves: a new command fails here until it has a missing-input case and a bad number."""
    from landcover.cli import build_parser

    parser = build_parser()
    commands = set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    missing, numbers = {a[0] for a, _ in MISSING}, {a[0] for a, _ in BAD_NUMBERS}
    assert commands - NO_INPUTS - {"doctor"} <= missing, sorted(commands - NO_INPUTS - {"doctor"} - missing)
    numeric = {c for c in commands if any(a.type is not None and a.type.__qualname__.endswith("parse")
                                          for a in next(a for a in parser._actions
                                                        if isinstance(a, argparse._SubParsersAction))
                                          .choices[c]._actions)}
    assert numeric <= numbers, f"add a bad number for {sorted(numeric - numbers)} to BAD_NUMBERS"


@pytest.mark.parametrize(("argv", "named"), MISSING, ids=[a[0] for a, _ in MISSING])
def test_missing_inputs_are_one_line_naming_the_file(argv, named, tmp_path, monkeypatch, capsys):
    """Every command, given an input that is not there: exit 2, one line naming it, nothing written."""
    monkeypatch.chdir(tmp_path)
    fails(capsys, argv, named)
    assert not list(tmp_path.iterdir())


def test_doctor_says_what_a_run_will_meet(zion_bundle, tmp_path, capsys):
    zion, nd = need_data("zion"), need_data("naip_nd")
    bundle, images, _ = zion_bundle
    argv = ["doctor", "--image", *images, "--labels", zion / "nlcd2011_albers.tif", "--scheme", "nlcd-grouped",
            "--aoi", zion / "zion.gpkg", "--bundle", bundle, "--out", tmp_path / "chips"]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "on EPSG:5070 (resampled once, nearest); they cover 100.0% of the imagery" in out
    assert "AOI" in out and "41." in out and "read the imagery directly" in out and "GB free" in out
    assert out.strip().endswith("no problem found") and not (tmp_path / "chips").exists()
    naip = sorted(nd.glob("*.tif"))[0]
    with rasterio.open(zion / "landsat_b2.tif") as src:
        blank = write_raster(tmp_path / "nan.tif", np.full((src.height, src.width), np.nan, np.float32), src.crs,
                             src.transform)
    assert main(["doctor", "--image", str(blank), "--labels", str(naip), "--bundle", str(bundle)]) == 2
    out = capsys.readouterr().out
    assert "problem: imagery nodata: every pixel read is nodata (nodata values [None]): nothing" in out
    assert "cover 0.0% of the imagery" in out and "problem(s): the run would stop" in out
    assert "the bundle reads 3 bands (band 1 of landsat_b4.tif, band 1 of landsat_b3.tif, band 1 of " in out
    assert "the imagery stacks 1 band in 1 file(s): name the 3 to read, in that order, with --bands" in out
