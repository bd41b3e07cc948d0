"""Segmentation training (#10): `landcover train --task segmentation` on Zion pairs into a run folder and a bundle
that rebuilds the network; exact resume; bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import need_data
from rasterio import open as rasterio_open
from safetensors.torch import load_file

from landcover.bundle import load_bundle
from landcover.cli import main
from landcover.segment.data import PairDataset
from landcover.segment.metrics import add_to_confusion, pixel_scores
from landcover.train.runs import list_runs

torch.set_num_threads(2)


def seg_args(pairs, runs, name, *extra) -> list[str]:
    return ["train", "--quiet", "--task", "segmentation", "--manifest", str(pairs), "--runs", str(runs), "--name",
            name, "--batch-size", "8", "--rgb-bands", "3", "2", "1", "--seed", "3", *extra]


@pytest.fixture(scope="module")
def trained(zion_seg_run):
    return zion_seg_run


def test_a_run_trains_a_unet_into_a_segmentation_bundle(trained, zion_pairs):
    assert {p.name for p in trained.iterdir()} >= {"config.yaml", "metrics.csv", "curves.png", "summary.json",
                                                   "checkpoints", "bundle"}
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["epochs_run"] == 2 and 0 < summary["best_val_miou"] < 1
    meta = json.loads((trained / "bundle" / "model.json").read_text())
    assert (meta["task"], meta["architecture"], meta["encoder"]) == ("segmentation", "unet", "efficientnet-lite0")
    assert meta["input"]["size"] == 64 and meta["input"]["bands"] == [0, 1, 2, 3]
    assert not list(trained.rglob("*.pt*")) and not list(trained.rglob("*.pkl"))
    row = list_runs(trained.parent).set_index("run").loc["unet"]
    assert row["task"] == "segmentation" and row["val_miou"] == pytest.approx(summary["best_val_miou"])
    # The bundle rebuilds the best epoch's network: its validation scores are the ones metrics.csv recorded.
    bundle = load_bundle(trained / "bundle")
    val = PairDataset(zion_pairs, "valid")
    raw = torch.stack([val[i][0] for i in range(len(val))])
    target = np.stack([val.read(i)[1] for i in range(len(val))])
    probs = bundle.predict_proba(raw)
    assert probs.shape == (len(val), 8, 64, 64) and np.allclose(probs.sum(1), 1, atol=1e-5)
    scores = pixel_scores(add_to_confusion(np.zeros((8, 8), np.int64), target, probs.argmax(1)),
                          [c["name"] for c in bundle.classes])
    best = next(r for r in _metrics(trained) if r["epoch"] == summary["best_epoch"])
    assert scores["miou"] == pytest.approx(best["val_miou"], abs=1e-6)
    assert scores["pixel_accuracy"] == pytest.approx(best["val_acc"], abs=1e-6)


def _metrics(run) -> list[dict]:
    lines = (run / "metrics.csv").read_text().splitlines()
    keys = lines[0].split(",")
    return [{k: float(v) for k, v in zip(keys, line.split(","), strict=True)} for line in lines[1:]]


@pytest.mark.slow
def test_resume_continues_exactly(trained, zion_pairs, tmp_path, monkeypatch):
    import landcover.train.segmentation as trainer

    real = trainer._train_epoch

    def dies_in_epoch_2(run, net, loader, optimizer, loss_fn, epoch, progress):
        if epoch == 2:
            raise KeyboardInterrupt  # as a killed run
        return real(run, net, loader, optimizer, loss_fn, epoch, progress)

    runs = tmp_path / "runs"
    argv = seg_args(zion_pairs, runs, "unet", "--epochs", "2", "--no-onnx")
    monkeypatch.setattr(trainer, "_train_epoch", dies_in_epoch_2)
    assert main(argv) == 130  # "interrupted (rerun the same command to resume)"
    assert (runs / "unet" / "checkpoints" / "last").is_dir() and not (runs / "unet" / "bundle").exists()
    monkeypatch.setattr(trainer, "_train_epoch", real)
    assert main([*argv, "--resume"]) == 0
    resumed = load_file(runs / "unet" / "checkpoints" / "last" / "model.safetensors")
    straight = load_file(trained / "checkpoints" / "last" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert [r["val_miou"] for r in _metrics(runs / "unet")] == [r["val_miou"] for r in _metrics(trained)]


def test_bad_input_is_one_line(zion_pairs, park_chips, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(seg_args(park_chips, runs, "a", "--epochs", "1")) == 2
    assert "holds class chips, not image/mask pairs" in capsys.readouterr().err
    assert main(seg_args(zion_pairs, runs, "b", "--mode", "features")) == 2
    assert "segmentation trains the whole network" in capsys.readouterr().err
    assert main(seg_args(zion_pairs, runs, "c", "--arch", "segformer")) == 2
    assert "unknown decoder 'segformer'" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())  # nothing half-written


def test_tiles_the_encoder_cannot_halve_five_times_are_refused(zion, zion_images, tmp_path, capsys):
    pairs = tmp_path / "pairs48"
    assert main(["chips", "--quiet", "--image", *zion_images, "--labels", str(zion / "nlcd2011_albers.tif"),
                 "--scheme", "nlcd-grouped", "--tile-size", "48px", "--layout", "pairs", "--aoi",
                 str(zion / "zion.gpkg"), "--out", str(pairs)]) == 0
    assert main(["split", str(pairs), "--blocks", "2", "--ratios", "70:15:15", "--no-plot"]) == 0
    capsys.readouterr()
    assert main(seg_args(pairs, tmp_path / "runs", "odd", "--epochs", "1")) == 2
    assert "must be square and a multiple of 32 px, these are 48 x 48" in capsys.readouterr().err


def test_evaluate_scores_pixels_and_draws_tiles(trained, zion_pairs, zion_images, park_chips, tmp_path, capsys):
    bundle = str(trained / "bundle")
    out = tmp_path / "eval"
    assert main(["evaluate", bundle, "--manifest", str(zion_pairs), "--split", "valid", "--quiet", "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "labelled pixels in" in printed and "mIoU" in printed and "Forest" in printed
    assert {p.name for p in out.iterdir()} == {"report.json", "confusion.json", "confusion.png", "summary.txt",
                                               "tiles.png"}
    report = json.loads((out / "report.json").read_text())
    best = next(r for r in _metrics(trained) if r["epoch"] == json.loads((trained / "summary.json").read_text())[
        "best_epoch"])
    assert report["miou"] == pytest.approx(best["val_miou"], abs=1e-6)
    assert report["pixel_accuracy"] == pytest.approx(best["val_acc"], abs=1e-6)
    assert set(report["iou"]) == {c["name"] for c in json.loads((trained / "bundle" / "model.json").read_text())[
        "classes"]}
    val = PairDataset(zion_pairs, "valid")
    labelled = sum(int((val.read(i)[1] >= 0).sum()) for i in range(len(val)))
    assert report["pixels"] == labelled == np.sum(report["confusion"])  # unlabelled pixels left out
    # A classification manifest, and tile-map options for a per-pixel map, are refused in one line.
    assert main(["evaluate", bundle, "--manifest", str(park_chips), "--quiet", "--out", str(tmp_path / "e")]) == 2
    assert "holds class chips, not image/mask pairs" in capsys.readouterr().err
    assert main(["predict", bundle, "--image", *zion_images, "--out", str(tmp_path / "m.tif"), "--quiet",
                 "--stride", "32px"]) == 2
    assert "--stride sets the cell of tile maps" in capsys.readouterr().err
    assert not (tmp_path / "m.tif").exists() and not (tmp_path / "e").exists()


def test_sparse_polygon_labels_train_and_only_labelled_pixels_count(tmp_path):
    """landsat_nc: the 34 labelled polygons cover about 5% of each 32 px tile; the rest is 0 (no label)."""
    nc = need_data("landsat_nc")
    pairs = tmp_path / "pairs"
    assert main(["chips", "--quiet", "--image", *[str(nc / f"lsat7_2000_{b}.tif") for b in (10, 20, 30, 40, 50, 70)],
                 "--labels-vector", str(nc / "landsat96_polygons.shp"), "--burn-attribute", "label",
                 "--tile-size", "32px", "--layout", "pairs", "--out", str(pairs)]) == 0
    assert main(["split", str(pairs), "--random", "--ratios", "60:20:20", "--no-plot"]) == 0
    train = PairDataset(pairs, "train")
    labelled = np.mean([(train.read(i)[1] >= 0).mean() for i in range(len(train))])
    assert 0 < labelled < 0.2
    runs = tmp_path / "runs"
    assert main(["train", "--quiet", "--task", "segmentation", "--manifest", str(pairs), "--runs", str(runs),
                 "--name", "nc", "--epochs", "1", "--batch-size", "8", "--rgb-bands", "3", "2", "1", "--no-onnx"]) == 0
    metrics = _metrics(runs / "nc")
    assert np.isfinite([metrics[0]["train_loss"], metrics[0]["val_loss"]]).all()
    assert main(["evaluate", str(runs / "nc" / "bundle"), "--manifest", str(pairs), "--split", "test", "--quiet",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    test = PairDataset(pairs, "test")
    assert report["pixels"] == sum(int((test.read(i)[1] >= 0).sum()) for i in range(len(test)))
    assert report["pixels"] < 0.2 * len(test) * 32 * 32


@pytest.mark.slow
def test_atlanta_building_footprints_against_background(tmp_path, capsys):
    """SpaceNet Atlanta (0.5 m panchromatic, 43 footprints): polygons burned as 'building', every other pixel
    'background'; a U-Net trained on 64 px tiles finds buildings on held-out blocks."""
    import geopandas as gpd

    atlanta = need_data("buildings_atlanta")
    pairs, runs = tmp_path / "pairs", tmp_path / "runs"
    assert main(["chips", "--quiet", "--image", str(atlanta / "sample_geotiff.tif"), "--labels-vector",
                 str(atlanta / "geotiff_labels.geojson"), "--burn-value", "1", "--class-name", "building",
                 "--background", "background", "--tile-size", "64px", "--layout", "pairs", "--out", str(pairs)]) == 0
    assert main(["split", str(pairs), "--blocks", "3", "--ratios", "70:15:15", "--no-plot"]) == 0
    train = PairDataset(pairs, "train")
    masks = np.stack([train.read(i)[1] for i in range(len(train))])
    assert set(np.unique(masks)) == {0, 1}  # background everywhere no polygon is: nothing unlabelled
    with rasterio_open(atlanta / "sample_geotiff.tif") as src:
        area = (src.bounds.right - src.bounds.left) * (src.bounds.top - src.bounds.bottom)
    share = gpd.read_file(atlanta / "geotiff_labels.geojson").area.sum() / area
    assert abs((masks == 1).mean() - share) < 0.02  # about 4% of pixels are buildings
    assert main(["train", "--quiet", "--task", "segmentation", "--manifest", str(pairs), "--runs", str(runs),
                 "--name", "b", "--batch-size", "8", "--epochs", "8", "--seed", "0", "--no-onnx"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(runs / "b" / "bundle"), "--manifest", str(pairs), "--split", "test", "--quiet",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    print(f"Atlanta buildings, held-out blocks: building IoU {report['iou']['building']:.3f}, "
          f"mIoU {report['miou']:.3f}")
    assert report["iou"]["building"] > 0.15 and report["iou"]["background"] > 0.9


@pytest.mark.slow
def test_two_process_data_parallel_training(zion_pairs, tmp_path):
    """torchrun with two CPU processes (gloo): each trains on half the pairs; rank 0 validates and writes."""
    import os
    import subprocess
    import sys

    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29534", "-m", "landcover", *seg_args(zion_pairs, runs, "ddp", "--epochs", "2",
                                                                  "--no-onnx")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _metrics(runs / "ddp")
    assert [r["epoch"] for r in rows] == [1, 2] and all(0 <= r["val_miou"] <= 1 for r in rows)
    assert load_bundle(runs / "ddp" / "bundle").task == "segmentation"
