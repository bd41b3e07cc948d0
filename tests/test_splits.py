"""`landcover split` on real Zion chips: no leakage across splits, whole regions, ratios, strata, balance, seeds."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import need_data
from PIL import Image

from landcover.cli import main
from landcover.datasets.splits import SplitSpec, parse_ratios, split_frame
from landcover.errors import LandcoverError
from landcover.manifest import read_manifest, write_manifest


def make_chips(out, *extra) -> None:
    zion = need_data("zion")
    images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
    assert main(["chips", "--quiet", "--image", *images, "--labels", str(zion / "nlcd2011.tif"),
                 "--scheme", "nlcd-grouped", "--rule", "purity:0.75", "--out", str(out), *extra]) == 0


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """About 3,400 touching 480 m chips over the whole Zion scene (no AOI), 6 classes."""
    out = tmp_path_factory.mktemp("split") / "plain"
    make_chips(out, "--tile-size", "480m")
    return out


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """About 2,900 960 m chips every 480 m: each overlaps its neighbours by half."""
    out = tmp_path_factory.mktemp("split") / "overlap"
    make_chips(out, "--tile-size", "960m", "--overlap", "480m")
    return out


@pytest.fixture
def chips(tmp_path, plain):
    """A private copy of the plain chips folder (split writes into it)."""
    return shutil.copytree(plain, tmp_path / "chips")


@pytest.fixture
def manifest_only(tmp_path, plain):
    """A folder holding a copy of the plain manifest alone (enough for what fails before any chip is read)."""
    (tmp_path / "chips").mkdir()
    shutil.copy(plain / "manifest.parquet", tmp_path / "chips")
    return tmp_path / "chips"


def split(capsys, *argv) -> str:
    assert main(["split", *map(str, argv)]) == 0
    return capsys.readouterr().out


def cross_split_overlaps(frame) -> int:
    """Pairs of used chips in different splits whose footprints share positive area (checked independently)."""
    used = frame[frame["split"].isin(["train", "valid", "test"])]
    geoms, names = used.geometry.to_numpy(), used["split"].to_numpy()
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    cross = (i < j) & (names[i] != names[j])
    return int((shapely.area(shapely.intersection(geoms[i[cross]], geoms[j[cross]])) > 1e-6).sum())


@pytest.mark.parametrize("layout", ["plain", "overlapping"])
def test_block_split_leaks_no_tile(request, tmp_path, capsys, layout):
    folder = shutil.copytree(request.getfixturevalue(layout), tmp_path / layout)
    out = split(capsys, folder, "--blocks", "3", "--ratios", "70:15:15")
    frame, info = read_manifest(folder / "manifest.parquet")
    assert set(frame["split"]) <= {"train", "valid", "test", "unused"} and frame["split"].notna().all()
    assert cross_split_overlaps(frame) == 0
    assert "left: 0" in out
    report = json.loads((folder / "split.json").read_text())
    assert report["leaking_pairs"] == 0 and info["split"]["mode"] == "blocks"
    # every block of 3 x 3 tiles (by chip origin) lies in one split, apart from chips the guard set unused
    tile = info["grid"]["tile_px"] * info["grid"]["res"]
    bounds = frame.geometry.bounds
    blocks = (np.floor((bounds["minx"] - info["grid"]["x0"]) / (3 * tile) + 1e-9).astype(int).astype(str) + "_"
              + np.floor((info["grid"]["y0"] - bounds["maxy"]) / (3 * tile) + 1e-9).astype(int).astype(str))
    used = frame["split"] != "unused"
    assert (frame[used].groupby(blocks[used])["split"].nunique() == 1).all()
    if layout == "plain":  # touching edges are no overlap: nothing to guard
        assert report["overlapping_pairs"] == 0 and report["sizes"]["unused"] == 0
    else:  # half-overlapping tiles straddle blocks: the guard held one chip of each pair out
        assert report["overlapping_pairs"] > 0 and report["unused"]["guard"] == report["sizes"]["unused"] > 0
        assert split(capsys, folder, "--blocks", "3", "--ratios", "70:15:15", "--no-guard")
        frame, _ = read_manifest(folder / "manifest.parquet")
        assert cross_split_overlaps(frame) == report["overlapping_pairs"] > 0  # the checker sees them


def with_regions(folder, bins: int) -> None:
    """Rewrite the manifest with `bins` regions: west-to-east strips of equal chip count."""
    frame, info = read_manifest(folder / "manifest.parquet")
    x = frame.geometry.bounds["minx"]
    frame["region"] = pd.qcut(x.rank(method="dense"), bins, labels=[f"strip{i}" for i in range(bins)]).astype(str)
    write_manifest(frame, folder / "manifest.parquet", {k: v for k, v in info.items() if k != "format_version"})


def test_region_split_keeps_each_region_in_one_split(chips, capsys):
    with_regions(chips, 2)
    split(capsys, chips, "--ratios", "80:20")
    frame, _ = read_manifest(chips / "manifest.parquet")
    per_region = frame.groupby("region")["split"].agg(set)
    assert sorted(map(sorted, per_region)) == [["train"], ["valid"]]
    with_regions(chips, 12)
    out = split(capsys, chips, "--by-column", "region", "--ratios", "70:20:10", "--seed", "1")
    frame, _ = read_manifest(chips / "manifest.parquet")
    assert (frame.groupby("region")["split"].nunique() == 1).all()
    assert set(frame["split"]) == {"train", "valid", "test"}
    assert cross_split_overlaps(frame) == 0 and "by region (12 groups)" in out
    shares = frame["split"].value_counts(normalize=True)
    for name, target in zip(["train", "valid", "test"], [0.7, 0.2, 0.1], strict=True):
        assert abs(shares[name] - target) < 0.05, shares


def test_ratios_and_class_shares_are_close_to_targets(plain):
    frame, info = read_manifest(plain / "manifest.parquet")
    result = split_frame(frame, SplitSpec((0.8, 0.1, 0.1), blocks=2), info)
    out = result.frame
    sizes = out["split"].value_counts(normalize=True)
    overall = out["label"].value_counts(normalize=True)
    for name, target in zip(["train", "valid", "test"], [0.8, 0.1, 0.1], strict=True):
        assert abs(sizes[name] - target) < 0.01, sizes
        share = out[out["split"] == name]["label"].value_counts(normalize=True)
        for cls in ("Forest", "Shrubland", "Barren"):  # the classes with >= 50 chips
            assert abs(share[cls] - overall[cls]) < 0.02, (name, cls, share[cls], overall[cls])
    # --random: every class is split in the ratios to within a chip or two
    result = split_frame(frame, SplitSpec((0.7, 0.2, 0.1), random=True, seed=5), info)
    counts = pd.crosstab(result.frame["label"], result.frame["split"])
    for cls, row in counts.iterrows():
        n = row.sum()
        for name, target in zip(["train", "valid", "test"], [0.7, 0.2, 0.1], strict=True):
            assert abs(row.get(name, 0) - target * n) <= 2, (cls, row.to_dict())


def test_balance_marks_the_excess_unused(plain):
    frame, info = read_manifest(plain / "manifest.parquet")
    result = split_frame(frame, SplitSpec((0.8, 0.2), blocks=4, balance="min"), info)
    out = result.frame
    assert len(out) == len(frame) and out["split"].notna().all()
    for name in ("train", "valid"):
        counts = out[out["split"] == name]["label"].value_counts()
        assert counts.nunique() == 1, counts  # every class present in the split has the rarest one's count
    assert result.unused["balance"] == (out["split"] == "unused").sum() > 0
    result = split_frame(frame, SplitSpec((0.8, 0.2), blocks=4, balance="cap:100"), info)
    before = split_frame(frame, SplitSpec((0.8, 0.2), blocks=4), info).frame
    after = result.frame
    for name in ("train", "valid"):
        was = before[before["split"] == name]["label"].value_counts()
        now = after[after["split"] == name]["label"].value_counts()
        pd.testing.assert_series_equal(now.sort_index(), was.clip(upper=100).sort_index(), check_names=False)
    # a balanced-out chip keeps its row, and only its split changed
    pd.testing.assert_frame_equal(after.drop(columns="split"), frame.drop(columns="split"))


def test_same_seed_same_split_whatever_the_row_order(plain):
    frame, info = read_manifest(plain / "manifest.parquet")
    for spec in (SplitSpec((0.7, 0.2, 0.1), blocks=3, seed=7, balance="cap:300"),
                 SplitSpec((0.8, 0.2), random=True, seed=7)):
        first = split_frame(frame, spec, info).frame.set_index("chip_id")["split"]
        shuffled = frame.sample(frac=1, random_state=1).reset_index(drop=True)
        again = split_frame(shuffled, spec, info).frame.set_index("chip_id")["split"]
        pd.testing.assert_series_equal(first, again.loc[first.index])
        other = split_frame(frame, replace(spec, seed=8), info).frame
        assert (other.set_index("chip_id")["split"] != first).any()


@pytest.mark.parametrize(("argv", "message"), [
    (["--ratios", "80:30"], "sums to 110, not 1 or 100"),
    (["--ratios", "0.5:0.3"], "sums to 0.8, not 1 or 100"),
    (["--ratios", "100"], "needs 2 (train:valid) or 3"),
    (["--ratios", "a:b"], "is not like '80:20'"),
    (["--ratios", "100:0"], "every ratio must be a positive number"),
    (["--by", "county"], "manifest.parquet: no column 'county' to split by"),
    (["--by", "region"], "manifest.parquet: column 'region' has 1 distinct value(s), which cannot fill 2 splits"),
    (["--blocks", "200", "--ratios", "80:10:10"], "blocks of 200 x 200 tiles cannot fill 3 splits"),
    (["--balance", "max"], "--balance 'max' is not 'min' or 'cap:N'"),
])
def test_bad_input_is_one_line_and_writes_nothing(manifest_only, capsys, argv, message):
    chips = manifest_only
    before = (chips / "manifest.parquet").read_bytes()
    assert main(["split", str(chips), *argv, "--materialize", str(chips.parent / "tree")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landcover: error: ") and "\n" not in err and message in err, err
    assert (chips / "manifest.parquet").read_bytes() == before
    assert not (chips / "split.json").exists() and not (chips.parent / "tree").exists()
    assert not list(chips.glob(".*.tmp"))


def test_missing_and_newer_manifests_are_refused(manifest_only, capsys, tmp_path):
    chips = manifest_only
    assert main(["split", str(tmp_path / "nowhere" / "manifest.parquet")]) == 2
    assert capsys.readouterr().err.strip().endswith("nowhere/manifest.parquet: no such manifest")
    path = chips / "manifest.parquet"
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"landcover"])
    pq.write_table(table.replace_schema_metadata(
        {**table.schema.metadata, b"landcover": json.dumps({**meta, "format_version": 99}).encode()}), path)
    assert main(["split", str(path)]) == 2
    assert "manifest format 99 is newer than this landcover" in capsys.readouterr().err
    with pytest.raises(LandcoverError, match=r"sums to 1\.1, not 1 or 100"):
        parse_ratios("0.6:0.5")
    assert parse_ratios("94:5:1") == pytest.approx((0.94, 0.05, 0.01))


def test_materialize_builds_the_class_folder_tree(chips, capsys):
    tree = chips.parent / "dataset"
    out = split(capsys, chips, "--blocks", "4", "--ratios", "80:10:10", "--balance", "cap:150",
                "--materialize", tree)
    assert "Forest" in out and "folder tree" in out
    frame, info = read_manifest(chips / "manifest.parquet")
    assert info["split"]["balance"] == "cap:150" and info["split"]["seed"] == 0
    report = json.loads((chips / "split.json").read_text())
    for name in ("train", "valid", "test"):
        rows = frame[frame["split"] == name]
        assert report["sizes"][name] == len(rows)
        for folder, group in rows.groupby(rows["path"].str.split("/").str[0]):
            files = sorted(p.name for p in (tree / name / folder).iterdir())
            assert files == sorted(group["path"].str.split("/").str[1])
            for path in (tree / name / folder).iterdir():
                assert path.stat().st_nlink >= 2  # a hard link, not a copy
                with Image.open(path) as img:
                    assert img.size == (16, 16)
    on_disk = sum(1 for p in tree.rglob("*.png"))
    assert on_disk == (frame["split"] != "unused").sum() < len(frame)
    with Image.open(chips / "split_counts.png") as img:
        assert img.format == "PNG"
    # a second split replaces its own tree; a folder holding anything else is refused
    split(capsys, chips, "--random", "--ratios", "80:20", "--materialize", tree)
    assert sorted(p.name for p in tree.iterdir()) == [".landcover-split", "train", "valid"]
    (chips.parent / "other").mkdir()
    (chips.parent / "other" / "notes.txt").write_text("mine")
    assert main(["split", str(chips), "--materialize", str(chips.parent / "other")]) == 2
    assert "holds other files" in capsys.readouterr().err


def test_materialize_pairs_layout(plain, tmp_path, capsys):
    """A segmentation manifest (images/ + labels/, label_path): the tree gets train/images and train/labels."""
    frame, info = read_manifest(plain / "manifest.parquet")
    frame = frame.iloc[::40].reset_index(drop=True)
    root = tmp_path / "pairs"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for path in frame["path"]:
        key = path.split("/")[1]
        shutil.copy(plain / path, root / "images" / key)
        shutil.copy(plain / path, root / "labels" / key)
    frame["label_path"] = "labels/" + frame["path"].str.split("/").str[1]
    frame["path"] = "images/" + frame["path"].str.split("/").str[1]
    frame["labelled_frac"] = 1.0
    write_manifest(frame, root / "manifest.parquet", {k: v for k, v in info.items() if k != "format_version"})
    split(capsys, root, "--blocks", "4", "--ratios", "75:25", "--materialize", tmp_path / "tree", "--no-plot")
    out, _ = read_manifest(root / "manifest.parquet")
    assert list(out.columns) == list(frame.columns) and (out["labelled_frac"] == 1.0).all()
    for name in ("train", "valid"):
        n = int((out["split"] == name).sum())
        assert n > 0 and math.isclose(n / len(out), 0.75 if name == "train" else 0.25, abs_tol=0.1)
        assert len(list((tmp_path / "tree" / name / "images").iterdir())) == n
        assert len(list((tmp_path / "tree" / name / "labels").iterdir())) == n
    assert not (root / "split_counts.png").exists()
