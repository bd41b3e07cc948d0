"""Spectral and fused models (band statistics and indices into a classical head), and mode auto, on real Zion chips:
train, bundle, evaluate, predict chips, folders and whole rasters, ONNX where a network exists."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio

from landcover.cli import main
from landcover.manifest import read_manifest


def train(chips, runs, name, *extra):
    return main(["train", "--quiet", "--manifest", str(chips), "--runs", str(runs), "--name", name, *extra])


@pytest.fixture(scope="module")
def spectral_runs(park_chips, tmp_path_factory):
    """A spectral (rf) and a fused (logreg, frozen lite0 at 32 px) run on the park chips."""
    runs = tmp_path_factory.mktemp("spectral") / "runs"
    assert train(park_chips, runs, "spectral", "--mode", "spectral") == 0
    assert train(park_chips, runs, "fused", "--mode", "fused", "--input-size", "32") == 0
    return runs


def test_spectral_bundle_reads_roles_from_the_landsat_file_names(spectral_runs, park_chips):
    from landcover.bundle import load_bundle
    from landcover.predict.chips import predict_dataset
    from landcover.train.data import ChipDataset

    summary = json.loads((spectral_runs / "spectral" / "summary.json").read_text())
    assert summary["mode"] == "spectral" and summary["head"] == "rf"
    assert summary["features"] == 4 * 7 + 2 * 2  # 7 statistics per band; mean and std of NDVI and NDWI
    assert "no network" in summary["onnx"] and not (spectral_runs / "spectral" / "bundle" / "model.onnx").exists()
    bundle = load_bundle(spectral_runs / "spectral" / "bundle")
    assert bundle.kind == "spectral" and bundle.model is None
    assert bundle.spectral.roles == ("blue", "green", "red", "nir")
    assert [name for name, _, _ in bundle.spectral.indices] == ["ndvi", "ndwi"]
    # the bundle's probabilities are its head on the features of the raw chips, computed here independently
    test = ChipDataset(park_chips, "test")
    probs, labels = predict_dataset(bundle, test, progress=False)
    raw = np.stack([test.read(i) for i in range(len(test))]).astype(np.float64)
    ndvi = (raw[:, 3] - raw[:, 2]) / (raw[:, 3] + raw[:, 2])
    features = bundle.spectral.features(raw)
    assert np.allclose(features[:, 0], raw[:, 0].mean((1, 2)), rtol=1e-5)  # blue mean
    assert np.allclose(features[:, 4 * 7], ndvi.mean((1, 2)), rtol=1e-4, atol=1e-6)  # ndvi mean
    assert np.allclose(probs, bundle.head.predict_proba(features))
    assert (probs.argmax(1) == labels).mean() > 0.6


def test_spectral_and_fused_evaluate_and_predict_like_other_bundles(spectral_runs, park_chips, zion_images, tmp_path):
    import torch

    from landcover.bundle import load_bundle
    from landcover.predict.chips import predict_dataset
    from landcover.predict.folder import predict_folder
    from landcover.predict.runtime import open_runtime
    from landcover.train.data import ChipDataset

    for name in ("spectral", "fused"):
        bundle = spectral_runs / name / "bundle"
        assert main(["evaluate", str(bundle), "--manifest", str(park_chips), "--split", "test", "--quiet",
                     "--out", str(tmp_path / f"eval-{name}")]) == 0
        report = json.loads((tmp_path / f"eval-{name}" / "report.json").read_text())
        assert report["macro"]["f1"] > 0.6, (name, report["macro"])
        out = tmp_path / f"{name}.tif"
        assert main(["predict", str(bundle), "--image", *zion_images, "--out", str(out), "--quiet"]) == 0
        with rasterio.open(out) as src:
            classes = src.read(1)
            assert src.crs is not None and len(np.unique(classes[classes != src.nodata])) >= 3
    # fused: the frozen network runs on onnxruntime, the spectral part on numpy, the same probabilities as torch
    fused = load_bundle(spectral_runs / "fused" / "bundle")
    assert fused.kind == "fused" and fused.spectral is not None and fused.model is not None
    summary = json.loads((spectral_runs / "fused" / "summary.json").read_text())
    assert "model.onnx written" in summary["onnx"]
    test = ChipDataset(park_chips, "test")
    torch_probs, _ = predict_dataset(fused, test, progress=False)
    onnx = open_runtime(spectral_runs / "fused" / "bundle", "onnx")
    raw = torch.from_numpy(np.stack([test.read(i) for i in range(len(test))]).astype(np.float32))
    assert np.abs(onnx.predict_proba(raw) - torch_probs).max() < 1e-3
    # and folders of chips: a spectral bundle on the chips' own class folders, evaluated against them
    result = predict_folder(spectral_runs / "spectral" / "bundle", park_chips, tmp_path / "folder.csv",
                            progress=False)
    assert result.predicted == len(list(park_chips.rglob("*.tif"))) and result.skipped == []


def test_band_roles_given_or_refused(park_chips, tmp_path, capsys):
    from landcover.bundle import load_bundle

    runs = tmp_path / "runs"
    assert train(park_chips, runs, "r", "--mode", "spectral", "--band-roles", "-", "-", "nir", "red") == 0
    spec = load_bundle(runs / "r" / "bundle").spectral
    assert spec.roles == (None, None, "nir", "red") and [i[0] for i in spec.indices] == ["ndvi"]
    assert spec.indices[0][1:] == (2, 3)
    capsys.readouterr()
    assert train(park_chips, runs, "bad1", "--mode", "spectral", "--band-roles", "red", "nir") == 2
    assert "--band-roles gives 2 role(s) for chips of 4 band(s)" in capsys.readouterr().err
    assert train(park_chips, runs, "bad2", "--mode", "spectral", "--band-roles", "red", "nir", "uv", "-") == 2
    err = capsys.readouterr().err
    assert "'uv'" in err and len(err.strip().splitlines()) == 1
    assert not (runs / "bad1").exists() and not (runs / "bad2").exists()


@pytest.mark.slow
def test_auto_keeps_the_best_candidate_and_records_the_comparison(park_chips, tmp_path):
    from landcover.bundle import load_bundle
    from landcover.predict.chips import predict_dataset
    from landcover.train.data import ChipDataset
    from landcover.train.runs import list_runs

    runs = tmp_path / "runs"
    assert train(park_chips, runs, "auto", "--mode", "auto", "--input-size", "32", "--epochs", "1",
                 "--batch-size", "16") == 0
    out = runs / "auto"
    summary = json.loads((out / "summary.json").read_text())
    scores = {m: c["val_macro_f1"] for m, c in summary["candidates"].items()}
    assert list(scores) == ["spectral", "fused", "spectral-gbt", "finetune"]
    kept = "spectral"  # the rule, step by step: a costlier candidate must win 90% of the resamples
    for mode in ("fused", "spectral-gbt", "finetune"):
        record = summary["candidates"][mode]["share_better_than_kept"]
        assert record["kept"] == kept and 0 <= record["share"] <= 1
        kept = mode if record["share"] >= 0.9 else kept
    assert summary["chosen"] == kept and summary["best_val_macro_f1"] == scores[kept]
    val = pd.read_csv(out / "candidates" / "finetune" / "val_predictions.csv")
    frame, _ = read_manifest(park_chips / "manifest.parquet")
    assert list(val["chip_id"]) == list(frame.loc[frame["split"] == "valid", "chip_id"])
    right = (val["label_id"] == val["predicted_id"]).mean()
    assert right == pytest.approx(summary["candidates"]["finetune"]["val_acc"])
    # the boosted-trees candidate's saved head (numpy, no scikit-learn) predicts what scikit-learn did in training
    gbt = load_bundle(out / "candidates" / "spectral-gbt" / "bundle")
    assert gbt.kind == "spectral" and gbt.head.kind == "gbt" and gbt.head.params["class_weight"] == "balanced"
    probs, _ = predict_dataset(gbt, ChipDataset(park_chips, "valid"), progress=False)
    val = pd.read_csv(out / "candidates" / "spectral-gbt" / "val_predictions.csv")
    assert (probs.argmax(1) == val["predicted_id"].to_numpy()).all()
    for mode in scores:
        assert scores[mode] == json.loads((out / "candidates" / mode / "summary.json").read_text())[
            "best_val_macro_f1"]
        assert summary["candidates"][mode]["train_s"] > 0
    chosen = json.loads((out / "candidates" / summary["chosen"] / "bundle" / "model.json").read_text())
    assert json.loads((out / "bundle" / "model.json").read_text()) == chosen
    assert main(["evaluate", str(out / "bundle"), "--manifest", str(park_chips), "--split", "test", "--quiet"]) == 0
    table = list_runs(runs)
    assert table.set_index("run").loc["auto", "mode"] == "auto"
    # a resumed auto run trains no finished candidate again
    stamps = {m: (out / "candidates" / m / "bundle" / "model.json").stat().st_mtime_ns for m in scores}
    shutil.rmtree(out / "bundle")
    assert train(park_chips, runs, "auto", "--mode", "auto", "--input-size", "32", "--epochs", "1",
                 "--batch-size", "16", "--resume") == 0
    assert stamps == {m: (out / "candidates" / m / "bundle" / "model.json").stat().st_mtime_ns for m in scores}
    assert json.loads((out / "bundle" / "model.json").read_text()) == chosen


def test_share_better_tells_a_clear_win_from_a_one_chip_difference():
    from landcover.evaluate import share_better

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 100)
    noisy = np.where(rng.random(100) < 0.3, (y + 1) % 3, y)  # 70% right
    assert share_better(y, noisy, noisy, 3) == 0  # equal is not better
    assert share_better(y, noisy, y, 3) == 1  # all right beats 70% right in every resample
    one_more = noisy.copy()
    one_more[np.flatnonzero(noisy != y)[0]] = y[np.flatnonzero(noisy != y)[0]]
    assert 0.2 < share_better(y, noisy, one_more, 3) < 0.9  # one chip more right: not sure
    assert share_better(y, noisy, one_more, 3, seed=5) != share_better(y, noisy, one_more, 3, seed=6)


def test_a_spectral_bundle_runs_on_numpy_and_points_nowhere_else(spectral_runs):
    from landcover.bundle import load_bundle
    from landcover.errors import LandcoverError
    from landcover.predict.runtime import choose_runtime

    bundle = load_bundle(spectral_runs / "spectral" / "bundle")
    runtime, why = choose_runtime(bundle)
    assert runtime == "torch" and "numpy" in why and "export-onnx" not in why
    with pytest.raises(LandcoverError, match="no network"):
        choose_runtime(bundle, "onnx")
