"""The command line: help for newcomers, and the demo (the main job) on the Zion sample."""

from __future__ import annotations

import json

import pytest
import rasterio
from PIL import Image

from landcover.cli import main
from landcover.datasets.formats import read_tfrecord
from landcover.manifest import read_manifest


@pytest.mark.parametrize("command", [[], ["chips"], ["demo"], ["schemes"], ["doctor"], ["predict"], ["export-onnx"],
                                     ["map"], ["change"], ["crf"], ["evaluate"], ["label"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0
    assert "usage: landcover" in capsys.readouterr().out


def test_schemes_lists_the_builtins(capsys):
    assert main(["schemes", "-v"]) == 0
    out = capsys.readouterr().out
    assert "nlcd-grouped" in out and "Developed" in out and "21, 22, 23, 24" in out


@pytest.mark.slow
def test_demo_runs_the_pipeline_on_zion(tmp_path, zion, capsys):
    assert main(["demo", "--data", str(zion.parent), "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    frame, info = read_manifest(tmp_path / "demo" / "chips" / "manifest.parquet")
    assert len(frame) > 300 and set(frame["label"]) >= {"Forest", "Shrubland"}
    assert info["scheme"]["name"] == "nlcd-grouped" and info["rules"]["points"] == 3
    assert set(frame["split"]) == {"train", "valid", "test"} and info["split"]["leaking_pairs"] == 0
    assert (tmp_path / "demo" / "chips" / "split_counts.png").exists()
    records = list(read_tfrecord(sorted((tmp_path / "demo" / "tfrecord").glob("*.tfrecord"))))
    assert sorted(r["chip_id"] for r in records) == sorted(frame["chip_id"])
    run = tmp_path / "demo" / "runs" / "spectral-rf"
    assert (run / "bundle" / "model.json").exists() and (run / "bundle" / "head.safetensors").exists()
    report = json.loads((run / "eval-test" / "report.json").read_text())
    assert report["n_samples"] == (frame["split"] == "test").sum() and report["accuracy"] > 0.85
    maps = tmp_path / "demo" / "maps"
    summary = json.loads((maps / "zion.json").read_text())
    assert summary["windows"] > 5000 and summary["scores"]["map"]["agreement"] > 0.7
    assert {"map", "smoothed 3x3"} <= set(summary["scores"])
    for name in ("zion.tif", "zion.smooth3.tif", "zion.probs.tif", "zion.tiles.parquet", "zion.png"):
        assert (maps / name).exists(), name
    # Stage 8: a U-Net on pairs inside the park; the park mapped per 30 m pixel, drawn beside the tile map.
    seg = json.loads((maps / "zion-pixels.json").read_text())
    assert seg["task"] == "segmentation" and seg["scores"]["map"]["agreement"] > 0.5
    with rasterio.open(maps / "zion-pixels.tif") as pixels, rasterio.open(zion / "landsat_b2.tif") as image:
        assert (pixels.transform, pixels.shape) == (image.transform, image.shape)
    with Image.open(maps / "zion-pixels.png") as png:
        figure = json.loads(png.text["Description"])
    assert figure["beside"].endswith("zion.tif") and figure["agreement"]["n_cells"] > 100_000
    # Stage 9: the hybrid dense map at 30 m beside the tile map, both assessed against NLCD.
    with rasterio.open(maps / "zion-dense.tif") as dense, rasterio.open(zion / "landsat_b2.tif") as image:
        assert (dense.transform, dense.shape) == (image.transform, image.shape)
        inside = dense.read(1) != 255
        assert 0.3 < inside.mean() < 0.5  # the park, not the whole scene
    overall = {}
    for name in ("zion", "zion-dense"):
        accuracy = json.loads((maps / f"{name}.accuracy" / "accuracy.json").read_text())
        assert 0.5 < accuracy["overall_accuracy"] < 1 and accuracy["classes"][0]["class"] == "Water"
        overall[name] = accuracy["overall_accuracy"]
    assert overall["zion-dense"] > overall["zion"] + 0.01  # the CRF adds to its tile map (0.687 against 0.660)
    assert (maps / "zion-dense.accuracy" / "areas.png").exists() and (maps / "zion-dense.png").exists()
    out = capsys.readouterr().out
    assert "chips in" in out and "[7/9] map" in out and "[8/9] segment" in out and "test pairs: pixel accuracy" in out
    assert "[9/9] dense" in out and "zion-dense.tif against NLCD 2011" in out


def test_demo_without_data_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LANDCOVER_DATA", str(tmp_path / "nowhere"))
    import landcover.cli.demo

    monkeypatch.setattr(landcover.cli.demo, "__file__", str(tmp_path / "a" / "b" / "c" / "d" / "demo.py"))
    assert main(["demo", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Zion sample not found" in err and "spDataLarge" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
