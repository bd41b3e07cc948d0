"""landcover import: chip folder trees made elsewhere (our own --materialize tree, a tree of plain JPEGs) become
manifests that split, train, evaluate and predict read as they read our own chips."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from landcover.chips.imported import import_chips
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.manifest import read_manifest
from landcover.predict.chips import evaluate_bundle
from landcover.predict.folder import predict_folder

TRAIN = ["--quiet", "--mode", "features", "--head", "logreg", "--arch", "efficientnet-lite0", "--input-size", "32"]


def test_a_materialized_tree_imports_back_with_its_labels_and_splits_and_trains(park_chips, tmp_path):
    chips = tmp_path / "chips"
    shutil.copytree(park_chips, chips)
    assert main(["split", str(chips), "--blocks", "3", "--ratios", "70:15:15", "--no-plot",
                 "--materialize", str(tmp_path / "tree")]) == 0
    assert main(["import", str(tmp_path / "tree"), "--out", str(tmp_path / "x"), "--ratios", "80:20"]) == 2
    assert not (tmp_path / "x").exists()  # the tree's own split is not overridden
    result = import_chips(tmp_path / "tree", tmp_path / "imported", scheme="nlcd-grouped", progress=False)
    original, _ = read_manifest(chips / "manifest.parquet")
    imported, info = read_manifest(tmp_path / "imported" / "manifest.parquet")
    assert result.chips == len(original) and result.georeferenced == len(original) and not result.problems

    def by_file(frame):
        return {Path(p).name: (label, split) for p, label, split in zip(frame["path"], frame["label"], frame["split"],
                                                                          strict=True)}

    assert by_file(imported) == by_file(original)
    assert info["scheme"]["name"] == "nlcd-grouped" and info["layout"] == "imported"
    assert all((tmp_path / "imported" / p).resolve().is_file() for p in imported["path"])  # referenced in place
    assert set(imported["crs"]) == {"EPSG:32612"} and imported.crs.to_epsg() == 4326
    with rasterio.open(chips / original["path"].iat[0]) as src:
        centre = src.lnglat()
    row = imported[imported["path"].map(lambda p: Path(p).name) == Path(original["path"].iat[0]).name].iloc[0]
    assert row.geometry.contains(__import__("shapely").Point(*centre))  # the footprint, in longitude/latitude
    runs = tmp_path / "runs"
    assert main(["train", "--manifest", str(tmp_path / "imported"), "--runs", str(runs), "--name", "imp",
                 *TRAIN]) == 0
    report, _ = evaluate_bundle(runs / "imp" / "bundle", tmp_path / "imported", "test", progress=False)
    assert report.accuracy > 0.6
    assert main(["export", str(tmp_path / "imported"), "--format", "webdataset", "--shards", "2", "--quiet",
                 "--out", str(tmp_path / "wds")]) == 0
    assert len(list((tmp_path / "wds").glob("*.tar"))) >= 2


def _jpeg_tree(park_chips: Path, root: Path) -> Path:
    """Zion chips as plain 8-bit RGB JPEGs in class folders (no georeferencing), with an unreadable file, an image
    of another size and an empty class folder."""
    frame, _ = read_manifest(park_chips / "manifest.parquet")
    for path, label in zip(frame["path"], frame["label"], strict=True):
        with rasterio.open(park_chips / path) as src:
            rgb = src.read([3, 2, 1]).astype(np.float64)
        rgb = np.clip((rgb - 6000) / (16000 - 6000) * 255, 0, 255).astype(np.uint8)
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.moveaxis(rgb, 0, -1)).save(root / label / f"{Path(path).stem}.jpg", quality=95)
    (root / "Forest" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "Forest" / "big.jpg")
    (root / "Water").mkdir()
    return root


def test_a_jpeg_tree_without_georeferencing_imports_splits_trains_and_predicts(park_chips, tmp_path, capsys):
    tree = _jpeg_tree(park_chips, tmp_path / "jpegs")
    assert main(["import", str(tree), "--out", str(tmp_path / "ds"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "left out, unreadable: 1 (Forest/broken.jpg" in out
    assert "left out, other shape: 1 (Forest/big.jpg (3 band(s) 64 x 64 uint8 where most are 3 band(s) 32 x 32" in out
    assert "left out, empty class folder: 1 (Water)" in out
    assert "next: landcover split" in out and "0 georeferenced" in out
    frame, info = read_manifest(tmp_path / "ds" / "manifest.parquet")
    assert [c["name"] for c in info["scheme"]["classes"]] == ["Barren", "Forest", "Shrubland"]
    assert frame["split"].isna().all() and frame.geometry.isna().all() and set(frame["crs"]) == {""}
    assert main(["import", str(tree), "--out", str(tmp_path / "split"), "--ratios", "70:15:15", "--quiet"]) == 0
    split, _ = read_manifest(tmp_path / "split" / "manifest.parquet")
    shares = split["split"].value_counts(normalize=True)
    assert set(shares.index) == {"train", "valid", "test"} and abs(shares["train"] - 0.7) < 0.1
    runs = tmp_path / "runs"
    assert main(["train", "--manifest", str(tmp_path / "split"), "--runs", str(runs), "--name", "jpg", *TRAIN]) == 0
    report, _ = evaluate_bundle(runs / "jpg" / "bundle", tmp_path / "split", "test", progress=False)
    assert report.accuracy > 0.6
    shutil.rmtree(tree / "Water")
    (tree / "Forest" / "broken.jpg").unlink()
    (tree / "Forest" / "big.jpg").unlink()
    result = predict_folder(runs / "jpg" / "bundle", tree, tmp_path / "pred.csv", progress=False)
    assert result.summary() and (tmp_path / "pred.csv").stat().st_size > 1000


def test_strict_fails_on_the_first_problem_and_writes_nothing(park_chips, tmp_path, capsys):
    tree = _jpeg_tree(park_chips, tmp_path / "jpegs")
    assert main(["import", str(tree), "--out", str(tmp_path / "ds"), "--strict", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--strict: 3 problem(s), first unreadable: Forest/broken.jpg" in err and err.count("\n") == 1
    assert not (tmp_path / "ds").exists()
    with pytest.raises(LandcoverError, match=r"class folder\(s\) \['Forest'\] are not classes of scheme 'lcmap'"):
        (tree / "Barren").rename(tree / "barren")
        shutil.rmtree(tree / "Shrubland")
        import_chips(tree, tmp_path / "ds2", scheme="lcmap", progress=False)
    with pytest.raises(LandcoverError, match="holds no class folders with images"):
        import_chips(tree / "Water", tmp_path / "ds3", progress=False)


def test_bad_ratios_write_nothing_and_a_rerun_replaces_with_overwrite(park_chips, tmp_path, capsys):
    tree = _jpeg_tree(park_chips, tmp_path / "jpegs")
    out = tmp_path / "ds"
    assert main(["import", str(tree), "--out", str(out), "--ratios", "50:20", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--ratios '50:20' sums to 70" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["import", str(tree), "--out", str(out), "--ratios", "80:20", "--quiet"]) == 0
    assert main(["import", str(tree), "--out", str(out), "--quiet"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["import", str(tree), "--out", str(out), "--ratios", "70:15:15", "--overwrite", "--quiet"]) == 0
    frame, _ = read_manifest(out / "manifest.parquet")
    assert set(frame["split"]) == {"train", "valid", "test"}
