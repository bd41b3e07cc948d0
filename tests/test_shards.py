"""`landcover chips --layout shards`: chips encoded straight into WebDataset / TFRecord shards, the same pixels and
labels as GeoTIFF chips, resumable by block, and read by split, export, train and evaluate."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pandas as pd
import pytest

from landcover.chips.folder import STATE_DIR
from landcover.cli import main
from landcover.datasets.chips import read_chip
from landcover.datasets.formats import read_tfrecord, read_webdataset
from landcover.datasets.splits import split_manifest
from landcover.errors import LandcoverError
from landcover.manifest import read_manifest
from landcover.train.data import ChipDataset


def chips_args(zion, zion_images, out, *extra) -> list[str]:
    return ["chips", "--quiet", "--image", *zion_images, "--labels", str(zion / "nlcd2011.tif"), "--scheme",
            "nlcd-grouped", "--tile-size", "480m", "--rule", "purity:0.75", "--aoi", str(zion / "zion.gpkg"),
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def tif_chips(tmp_path_factory, zion, zion_images):
    out = tmp_path_factory.mktemp("tif") / "chips"
    assert main(chips_args(zion, zion_images, out, "--format", "tif")) == 0
    return out


@pytest.fixture(scope="module")
def shard_chips(tmp_path_factory, zion, zion_images):
    out = tmp_path_factory.mktemp("shards") / "chips"
    assert main(chips_args(zion, zion_images, out, "--layout", "shards")) == 0
    return out


def test_shards_hold_the_pixels_and_labels_of_tif_chips(tif_chips, shard_chips):
    tif, _ = read_manifest(tif_chips / "manifest.parquet")
    shards, info = read_manifest(shard_chips / "manifest.parquet")
    assert info["layout"] == "shards" and info["format"] == "webdataset" and len(shards) == len(tif) > 800
    assert shards["chip_id"].tolist() == tif["chip_id"].tolist()
    assert shards["label"].tolist() == tif["label"].tolist()
    files = sorted(p.name for p in (shard_chips / "shards").iterdir())
    assert files == sorted(set(shards["path"].str.removeprefix("shards/"))) and 5 < len(files) < 60
    assert not [p for p in shard_chips.rglob("*") if p.is_file() and p.suffix == ".tif"]
    by_id = dict(zip(tif["chip_id"], tif["path"], strict=True))
    dataset = ChipDataset(shard_chips, preload=False)
    for i in range(0, len(shards), 7):  # byte-range reads give the GeoTIFF chip's pixels, dtype and all bands
        got, want = dataset.read(i), read_chip(tif_chips / by_id[shards["chip_id"].iat[i]])
        assert got.dtype == want.dtype == np.uint16 and np.array_equal(got, want)
    # Each shard is a standard tar that WebDataset readers take: <key>.npy, .cls, .json per chip, in order.
    first = shard_chips / shards["path"].iat[0]
    with tarfile.open(first) as tar:
        names = tar.getnames()
    rows = shards[shards["path"] == shards["path"].iat[0]].sort_values("byte_offset")
    assert names[:3] == [f"{rows['key'].iat[0]}.npy", f"{rows['key'].iat[0]}.cls", f"{rows['key'].iat[0]}.json"]
    assert len(names) == 3 * len(rows)
    samples = list(read_webdataset(first, decode=True))
    assert [s["chip_id"] for s in samples] == rows["chip_id"].tolist()
    assert [s["label_id"] for s in samples] == rows["label_id"].tolist()
    assert samples[0]["meta"]["bounds"] == list(rows.geometry.iat[0].bounds)


def test_tfrecord_shards_of_a_given_size(tmp_path, zion, zion_images, shard_chips):
    out = tmp_path / "tfr"
    assert main(chips_args(zion, zion_images, out, "--layout", "shards", "--format", "tfrecord",
                           "--shard-size", "50")) == 0
    frame, info = read_manifest(out / "manifest.parquet")
    reference, _ = read_manifest(shard_chips / "manifest.parquet")
    counts = frame["path"].value_counts()
    assert info["format"] == "tfrecord" and info["shard_size"] == 50 and counts.max() == 50
    assert len(counts) == -(-len(frame) // 50) and counts.min() == len(frame) - 50 * (len(counts) - 1)  # merged
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-{i:05d}.tfrecord" for i in range(len(counts))]
    assert not (out / STATE_DIR).exists()
    assert all(p.endswith(".tfrecord") for p in counts.index)
    records = {s["chip_id"]: s for s in read_tfrecord(sorted(out.glob("shards/*.tfrecord")))}
    assert len(records) == len(frame)
    wds = ChipDataset(shard_chips, preload=False)
    for i in range(0, len(frame), 11):
        chip_id = frame["chip_id"].iat[i]
        assert np.array_equal(records[chip_id]["image"], wds.read(int(np.flatnonzero(reference["chip_id"] ==
                                                                                       chip_id)[0])))
        assert records[chip_id]["label_id"] == frame["label_id"].iat[i]


def test_a_failed_run_resumes_by_block(tmp_path, zion, zion_images, shard_chips, monkeypatch, capsys):
    import landcover.chips.cut as cut

    real, calls = cut.write_block_shards, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    out = tmp_path / "chips"
    argv = chips_args(zion, zion_images, out, "--layout", "shards", "--block-tiles", "4")
    monkeypatch.setattr(cut, "write_block_shards", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        main(argv)
    written = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    done = len(list((out / STATE_DIR).glob("b*.json")))  # the 4 written, and any block without a chip
    assert len(written) == 4 and done >= 4 and not list(out.rglob(".*.tmp")) and not (out / "manifest.parquet").exists()
    monkeypatch.setattr(cut, "write_block_shards", real)
    capsys.readouterr()
    assert main(argv) == 0
    assert f"resumed: {done} blocks" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in written.items()), "finished shards were written again"
    got, _ = read_manifest(out / "manifest.parquet")
    want, _ = read_manifest(shard_chips / "manifest.parquet")
    assert got["chip_id"].tolist() == want["chip_id"].tolist() and got["label"].tolist() == want["label"].tolist()
    dataset = ChipDataset(out)
    reference = ChipDataset(shard_chips)
    assert all(np.array_equal(dataset.read(i), reference.read(i)) for i in range(len(got)))


def test_split_export_train_and_evaluate_read_shards(tmp_path, zion, zion_images, shard_chips):
    chips = shutil.copytree(shard_chips, tmp_path / "chips")
    assert main(["split", str(chips), "--blocks", "4", "--ratios", "70:15:15", "--no-plot"]) == 0
    with pytest.raises(LandcoverError, match="chips are in shards"):
        split_manifest(chips, "70:15:15", blocks=4, materialize=tmp_path / "tree", plot=False)
    frame, _ = read_manifest(chips / "manifest.parquet")
    assert set(frame["split"]) == {"train", "valid", "test"}
    # Export re-shards by split: the .npy members are copied byte for byte, TFRecord arrays carry the same pixels.
    assert main(["export", str(chips), "--format", "webdataset", "--shards", "2", "--out", str(tmp_path / "wds")]) == 0
    assert main(["export", str(chips), "--format", "tfrecord", "--encoding", "array", "--out",
                 str(tmp_path / "tfr")]) == 0
    source = {s["chip_id"]: s["image"] for s in read_webdataset(sorted((chips / "shards").glob("*.tar")))}
    exported = list(read_webdataset(sorted((tmp_path / "wds").glob("*.tar"))))
    assert len(exported) == len(frame) and all(s["image"] == source[s["chip_id"]] for s in exported)
    assert {s["meta"]["split"] for s in exported} == {"train", "valid", "test"}
    test_ids = set(frame.loc[frame["split"] == "test", "chip_id"])
    records = list(read_tfrecord(sorted((tmp_path / "tfr").glob("test-*.tfrecord"))))
    assert {r["chip_id"] for r in records} == test_ids
    assert all(np.array_equal(r["image"], np.load(io.BytesIO(source[r["chip_id"]]))) for r in records)
    assert main(["export", str(chips), "--format", "mapfile", "--out", str(tmp_path / "map")]) == 2
    assert not (tmp_path / "map").exists()
    # Train and evaluate straight from the shards.
    runs = tmp_path / "runs"
    assert main(["train", "--quiet", "--manifest", str(chips), "--runs", str(runs), "--name", "f", "--mode",
                 "features", "--head", "logreg", "--input-size", "32", "--rgb-bands", "3", "2", "1", "--no-onnx"]) == 0
    bundle = runs / "f" / "bundle"
    assert json.loads((bundle / "model.json").read_text())["chip"]["format"] == "webdataset"
    assert main(["evaluate", str(bundle), "--manifest", str(chips), "--quiet", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n_samples"] == len(test_ids) and report["accuracy"] > 0.6
    pd.testing.assert_series_equal(pd.Series(sorted(test_ids)), pd.Series(sorted(
        pd.read_csv(tmp_path / "ev" / "predictions.csv")["chip_id"])), check_names=False)
