"""Scoring a folder of Zion chips: the same probabilities as predict_dataset, bad chips skipped, csv and parquet."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from PIL import Image

from landcover.cli import main
from landcover.errors import LandcoverError

torch.set_num_threads(2)
PER_CLASS = 12


@pytest.fixture(scope="module")
def zion(tmp_path_factory, park_chips):
    """Zion park chips (see conftest), a features + logreg bundle, a small chip folder.

    The folder holds up to PER_CLASS chips of each class in class folders (named by slug, and one by class
    name in its own case) and a few in a folder that names no class.
    """
    from landcover.manifest import read_manifest

    root = tmp_path_factory.mktemp("predict-folder")
    chips, runs = park_chips, root / "runs"
    assert main(["train", "--quiet", "--manifest", str(chips), "--runs", str(runs), "--arch", "efficientnet-lite0",
                 "--input-size", "32", "--batch-size", "16", "--rgb-bands", "3", "2", "1", "--name", "features",
                 "--mode", "features", "--head", "logreg"]) == 0
    frame, _ = read_manifest(chips / "manifest.parquet")
    picked = frame[frame["split"] == "test"].sort_values("path").groupby("label").head(PER_CLASS)
    folder = root / "images"
    rows = []
    for i, row in enumerate(picked.itertuples()):
        cls_folder = row.path.split("/")[0]
        sub = "Shrubland" if cls_folder == "shrubland" else ("unsorted" if i % 10 == 0 else cls_folder)
        rel = f"{sub}/{row.path.split('/')[1]}"
        (folder / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(chips / row.path, folder / rel)
        rows.append({"file": rel, "path": row.path, "label": row.label, "label_id": row.label_id,
                     "scored": sub != "unsorted"})
    return {"chips": chips, "bundle": runs / "features" / "bundle", "images": folder,
            "frame": picked.reset_index(drop=True), "files": pd.DataFrame(rows)}


@pytest.fixture(scope="module")
def reference(zion):
    """predict_dataset's probabilities for the folder's chips, by file name in the folder."""
    from landcover.bundle import load_bundle
    from landcover.predict.chips import predict_dataset
    from landcover.train.data import ChipDataset

    dataset = ChipDataset(zion["chips"] / "manifest.parquet", frame=zion["frame"])
    probs, labels = predict_dataset(load_bundle(zion["bundle"]), dataset, progress=False)
    by_path = dict(zip(dataset.frame["path"], range(len(dataset.frame)), strict=True))
    files = zion["files"]
    order = [by_path[p] for p in files["path"]]
    return files.assign(row=order), probs[order], labels[order]


def test_folder_predictions_and_evaluation_match_predict_dataset(zion, reference, tmp_path, caplog):
    from landcover.evaluate import evaluate_predictions
    from landcover.predict.folder import predict_folder

    files, probs, labels = reference
    out = tmp_path / "preds.csv"
    with caplog.at_level(logging.WARNING, logger="landcover.predict.folder"):
        result = predict_folder(zion["bundle"], zion["images"], out, runtime="torch", batch_size=16,
                                    progress=False)
    assert result.predicted == len(files) and result.skipped == [] and result.out == out
    table = pd.read_csv(out)
    names = [c for c in table.columns if c.startswith("p_")]
    assert list(table.columns[:4]) == ["file", "class", "class_id", "confidence"] and len(names) == 8
    assert names[:4] == ["p_Water", "p_Developed", "p_Barren", "p_Forest"]
    assert table["file"].tolist() == sorted(files["file"])  # sorted, relative to the folder
    table = table.set_index("file").loc[files["file"]]
    got = table[names].to_numpy()
    assert np.abs(got - probs).max() <= 1e-5
    assert np.array_equal(table["class_id"], probs.argmax(1))
    assert table["class"].tolist() == [names[i][2:] for i in probs.argmax(1)]
    assert np.allclose(table["confidence"], probs.max(1), atol=1e-6)
    # Chips in class folders (slug or name, any case) are scored; those in `unsorted/` are predicted only.
    scored = files["scored"].to_numpy()
    assert result.scored == scored.sum() and result.unscored == (~scored).sum() > 0
    assert "in folders not named after a class (unsorted): predicted, not scored" in caplog.text
    want = evaluate_predictions(labels[scored], probs[scored], [n[2:] for n in names])
    report = result.report
    assert np.array_equal(report.confusion, want.confusion) and report.n_samples == scored.sum()
    assert report.accuracy == pytest.approx(want.accuracy) and report.kappa == pytest.approx(want.kappa)
    assert report.macro["f1"] == pytest.approx(want.macro["f1"])
    assert report.n_classes_present >= 2
    eval_dir = tmp_path / "preds-eval"
    assert result.report_dir == eval_dir and (eval_dir / "report.json").is_file()
    assert (eval_dir / "confusion.png").is_file() and len(pd.read_csv(eval_dir / "predictions.csv")) == scored.sum()
    summary = result.summary()
    assert f"{len(files)} chips predicted with torch" in summary and f"accuracy {want.accuracy:.3f}" in summary


def test_corrupt_and_odd_sized_chips_are_skipped_and_named(zion, reference, tmp_path, caplog, monkeypatch):
    import landcover.predict.folder as pf
    from landcover.datasets.chips import read_chip

    files, probs, _ = reference
    images = shutil.copytree(zion["images"], tmp_path / "images")
    first = images / files["file"].iloc[0]
    pixels = read_chip(first)
    # A PNG with a valid signature and garbage after it, and a chip of another size (16 px, cut from a real one).
    png = images / "forest" / "broken.png"
    Image.fromarray(np.moveaxis(pixels[:3] >> 8, 0, -1).astype(np.uint8)).save(png)
    data = bytearray(png.read_bytes())
    data[40:] = np.random.default_rng(0).integers(0, 256, len(data) - 40, dtype=np.uint8).tobytes()
    png.write_bytes(bytes(data))
    (images / "forest" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    with rasterio.open(first) as src:
        profile = {**src.profile, "width": 16, "height": 16, "blockxsize": 16, "blockysize": 16, "tiled": False}
    with rasterio.open(images / "forest" / "small.tif", "w", **profile) as dst:
        dst.write(pixels[:, :16, :16])
    monkeypatch.setattr(pf, "WARN_LIMIT", 2)
    with caplog.at_level(logging.WARNING, logger="landcover.predict.folder"):
        result = pf.predict_folder(zion["bundle"], images, tmp_path / "preds.parquet", progress=False)
    skipped = dict(result.skipped)
    assert sorted(skipped) == ["forest/broken.png", "forest/garbage.jpg", "forest/small.tif"]
    assert skipped["forest/broken.png"].startswith("unreadable")
    assert skipped["forest/garbage.jpg"].startswith("unreadable")
    assert skipped["forest/small.tif"] == "other shape: 4x16x16 uint16, the first chip is 4x32x32 uint16"
    assert caplog.text.count("skipped forest/") == 2 and "1 more chips skipped (3 in all" in caplog.text
    assert result.predicted == len(files) and result.n_skipped == 3 and "3 skipped" in result.summary()
    table = pd.read_parquet(tmp_path / "preds.parquet").set_index("file")
    assert len(table) == len(files) and not {"forest/broken.png", "forest/small.tif"} & set(table.index)
    got = table.loc[files["file"], [c for c in table.columns if c.startswith("p_")]].to_numpy()
    assert np.abs(got - probs).max() <= 1e-5
    assert result.report.n_samples == files["scored"].sum()


def test_outputs_csv_parquet_overwrite_and_bad_requests(zion, tmp_path):
    from landcover.predict.folder import predict_folder

    bundle, images = zion["bundle"], zion["images"]
    csv, parquet = tmp_path / "p.csv", tmp_path / "t.parquet"
    predict_folder(bundle, images, csv, progress=False)
    predict_folder(bundle, images, parquet, progress=False, workers=1, batch_size=7)
    a, b = pd.read_csv(csv), pd.read_parquet(parquet)
    assert a["file"].tolist() == b["file"].tolist() and a["class"].tolist() == b["class"].tolist()
    assert np.abs(a.iloc[:, 3:].to_numpy() - b.iloc[:, 3:].to_numpy()).max() <= 1e-5
    assert str(b["class"].dtype) in ("string", "object") and b["class_id"].dtype == np.int64
    with pytest.raises(LandcoverError, match=r"p.csv: the output exists"):
        predict_folder(bundle, images, csv, progress=False)
    csv.unlink()
    with pytest.raises(LandcoverError, match=r"p-eval: the evaluation folder exists"):
        predict_folder(bundle, images, csv, progress=False)
    before = (tmp_path / "p-eval" / "report.json").stat().st_mtime_ns
    predict_folder(bundle, images, csv, progress=False, overwrite=True)
    assert (tmp_path / "p-eval" / "report.json").stat().st_mtime_ns > before
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    with pytest.raises(LandcoverError, match=r"must end in .csv or .parquet"):
        predict_folder(bundle, images, tmp_path / "p.txt", progress=False)
    (tmp_path / "empty" / "forest").mkdir(parents=True)
    with pytest.raises(LandcoverError, match=r"empty: no chips"):
        predict_folder(bundle, tmp_path / "empty", tmp_path / "q.csv", progress=False)
    with pytest.raises(LandcoverError, match=r"unknown runtime"):
        predict_folder(bundle, images, tmp_path / "q.csv", runtime="tflite", progress=False)
    # 3-band chips for a 4-band bundle: refused, naming the chip.
    three = tmp_path / "three" / "forest"
    three.mkdir(parents=True)
    first = images / zion["files"]["file"].iloc[0]
    with rasterio.open(first) as src:
        profile, pixels = {**src.profile, "count": 3}, src.read()
    with rasterio.open(three / "a.tif", "w", **profile) as dst:
        dst.write(pixels[:3])
    with pytest.raises(LandcoverError, match=r"three/forest/a.tif: the bundle reads 4 bands but the chips have 3"):
        predict_folder(bundle, tmp_path / "three", tmp_path / "q.csv", progress=False)
    # No chip in a class folder: predicted only, and an older evaluation beside the output goes.
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(first, plain / "a.tif")
    result = predict_folder(bundle, plain, csv, progress=False, overwrite=True)
    assert result.report is None and result.scored == 0 and not (tmp_path / "p-eval").exists()


def test_onnx_runtime_gives_the_same_table(zion, reference, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from landcover.onnx_graph import export_onnx
    from landcover.predict.folder import predict_folder

    files, probs, _ = reference
    bundle = shutil.copytree(zion["bundle"], tmp_path / "bundle")
    export_onnx(bundle)
    result = predict_folder(bundle, zion["images"], tmp_path / "p.csv", runtime="onnx", progress=False)
    assert result.runtime == "onnx" and "predicted with onnx" in result.summary()
    table = pd.read_csv(tmp_path / "p.csv").set_index("file").loc[files["file"]]
    assert np.abs(table[[c for c in table.columns if c.startswith("p_")]].to_numpy() - probs).max() <= 1e-4
    assert np.array_equal(table["class_id"], probs.argmax(1))
