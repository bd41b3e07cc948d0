"""`landcover export`: TFRecord, WebDataset and map files from real Zion chips, read back pixel-exact."""

from __future__ import annotations

import csv
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from conftest import need_data
from PIL import Image

from landcover.cli import main
from landcover.datasets.formats import (
    Sample,
    chip_id_from_key,
    decode_example,
    encode_example,
    export,
    read_mapfile,
    read_records,
    read_tfrecord,
    read_webdataset,
    sample_key,
    write_webdataset,
)
from landcover.datasets.formats.crc32c import crc32c, crc32c_numpy, masked_crc32c
from landcover.errors import LandcoverError
from landcover.manifest import read_manifest, write_manifest

NAMES = ["Water", "Developed", "Barren", "Forest", "Shrubland", "Grassland", "Cultivated", "Wetlands"]


def make_chips(out: Path, *extra: str) -> Path:
    zion = need_data("zion")
    images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
    assert main(["chips", "--quiet", "--image", *images, "--labels", str(zion / "nlcd2011.tif"), "--scheme",
                 "nlcd-grouped", "--tile-size", "480m", "--out", str(out), *extra]) == 0
    return out / "manifest.parquet"


@pytest.fixture(scope="module")
def png_chips(tmp_path_factory) -> Path:
    """~300 8-bit PNG chips, 16 x 16 px, four bands (RGBA: Landsat bands 2-5, stretched)."""
    return make_chips(tmp_path_factory.mktemp("png"), "--rule", "purity:0.8", "--keep", "0.1")


@pytest.fixture(scope="module")
def tif_chips(tmp_path_factory) -> Path:
    """~300 GeoTIFF chips: 4 bands of native uint16 Landsat pixels, LZW."""
    return make_chips(tmp_path_factory.mktemp("tif"), "--rule", "purity:0.8", "--keep", "0.1", "--format", "tif")


@pytest.fixture(scope="module")
def pair_chips(tmp_path_factory) -> Path:
    """Segmentation pairs: images/<key>.tif (uint16, 4 bands) and labels/<key>.tif (uint8 masks)."""
    return make_chips(tmp_path_factory.mktemp("pairs"), "--keep", "0.05", "--layout", "pairs", "--format", "tif")


@pytest.fixture(scope="module")
def split_chips(tif_chips) -> Path:
    """The GeoTIFF chips split train/valid/test, a few held out as 'unused' (a second manifest beside them)."""
    frame, info = read_manifest(tif_chips)
    splits = np.array(["train"] * 6 + ["valid"] * 2 + ["test"] * 1 + ["unused"])
    frame["split"] = splits[np.arange(len(frame)) % 10]
    path = tif_chips.with_name("split.parquet")
    write_manifest(frame, path, info)
    return path


def original(path: Path) -> np.ndarray:
    """A chip's pixels as (bands, height, width), read with the library that wrote it."""
    if path.suffix == ".png":
        with Image.open(path) as im:
            array = np.asarray(im)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    with rasterio.open(path) as src:
        return src.read()


def by_chip(manifest: Path) -> dict:
    frame, _ = read_manifest(manifest)
    return {row.chip_id: row for row in frame.itertuples(index=False)}


# --- checksums and the protocol buffer ---------------------------------------------------------------------

def bitwise_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("crc", [crc32c, crc32c_numpy], ids=["compiled", "numpy"])
def test_crc32c_matches_the_standard_and_a_bitwise_reference(crc):
    assert crc(b"123456789") == 0xE3069283
    assert crc(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4
    assert crc(b"\xff" * 32) == 0x62A8AB43
    assert crc(bytes(range(32))) == 0x46DD794E
    rng = np.random.default_rng(0)
    for n in (1023, 1025, 4096 + 3, 20011):  # the byte loop and the lane-parallel path
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc(data) == bitwise_crc32c(data)
        assert crc(data[n // 3:], crc(data[:n // 3])) == crc(data)
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def example_class():
    """tf.train.Example built from its published .proto definition with protobuf (no TensorFlow)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="landcover_test_example.proto", package="tensorflow",
                                             syntax="proto3")

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            f = m.field.add(name=field_name, number=number, type=kind,
                            label=F.LABEL_REPEATED if type_name in (None, "entry") else F.LABEL_OPTIONAL)
            if type_name == "entry":
                f.type_name = ".tensorflow.Features.FeatureEntry"
            elif type_name:
                f.type_name = type_name
            if kind in (F.TYPE_FLOAT, F.TYPE_INT64):
                f.options.packed = True
        return m

    message("BytesList", [("value", 1, F.TYPE_BYTES, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, None)])
    feature = message("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, ".tensorflow.BytesList"),
                                  ("float_list", 2, F.TYPE_MESSAGE, ".tensorflow.FloatList"),
                                  ("int64_list", 3, F.TYPE_MESSAGE, ".tensorflow.Int64List")])
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, "entry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    message("Example", [("features", 1, F.TYPE_MESSAGE, ".tensorflow.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def test_example_bytes_match_protobuf_both_ways():
    Example = example_class()
    values = {"image/encoded": [bytes(range(256)) * 3, b""], "image/class/label": [3, -1, 2**63 - 1, -2**63],
              "image/bounds": [301905.0, -0.25, 1.5], "image/class/text": ["Forest"], "empty": []}
    mine = encode_example(values)
    theirs = Example()
    for key, value in values.items():
        feature = theirs.features.feature[key]
        if key == "image/class/label":
            feature.int64_list.value.extend(value)
        elif key == "image/bounds":
            feature.float_list.value.extend(value)
        else:
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in value)
    assert theirs.SerializeToString(deterministic=True) == mine  # map entries sorted by key, lists packed
    parsed = Example.FromString(mine)
    assert list(parsed.features.feature["image/class/label"].int64_list.value) == values["image/class/label"]
    decoded = decode_example(theirs.SerializeToString())
    assert decoded["image/class/label"] == values["image/class/label"]
    assert decoded["image/bounds"] == values["image/bounds"]
    assert decoded["image/encoded"] == values["image/encoded"] and decoded["empty"] == []
    assert decoded["image/class/text"] == [b"Forest"]


# --- round trips on real chips -----------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["raw", "array"])
@pytest.mark.parametrize("chips", ["png_chips", "tif_chips"])
def test_tfrecord_round_trip_is_pixel_exact(tmp_path, request, chips, encoding):
    manifest = request.getfixturevalue(chips)
    result = export(manifest, tmp_path / "out", "tfrecord", shards=3, encoding=encoding, progress=False)
    names = [f"data-0000{i}-of-00003.tfrecord" for i in (1, 2, 3)]
    assert result.files == {"data": names}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [*names, "labels.txt", "dataset_split_info.csv", "export.json"])
    rows = by_chip(manifest)
    samples = list(read_tfrecord([tmp_path / "out" / n for n in names]))
    assert sorted(s["chip_id"] for s in samples) == sorted(rows) and len(samples) == result.counts["data"]
    for s in samples:
        row = rows[s["chip_id"]]
        assert (s["label"], s["label_id"]) == (row.label, row.label_id)
        expected = original(manifest.parent / row.path)
        if encoding == "raw":
            assert s["format"] == Path(row.path).suffix[1:]
            assert s["image"] == (manifest.parent / row.path).read_bytes()  # the file, byte for byte
            image = read_one(tmp_path, s["image"], row.path)
        else:
            assert s["format"] == "raw"
            image = s["image"]
        assert image.dtype == expected.dtype and image.shape == expected.shape
        np.testing.assert_array_equal(image, expected)
    assert expected.dtype == (np.uint16 if chips == "tif_chips" else np.uint8) and expected.shape[0] == 4
    assert (tmp_path / "out" / "labels.txt").read_text().splitlines() == NAMES
    with open(tmp_path / "out" / "dataset_split_info.csv", newline="") as f:
        info = list(csv.DictReader(f))
    assert list(info[0]) == ["file", "shard", "index", "class name", "class id"]
    where = {(r["shard"], int(r["index"])): r for r in info}
    for name in names:
        for index, s in enumerate(read_tfrecord(tmp_path / "out" / name)):
            r = where[(name, index)]
            assert (r["file"], r["class name"], int(r["class id"])) == (rows[s["chip_id"]].path, s["label"],
                                                                         s["label_id"])
    assert len(where) == len(rows)


def read_one(tmp_path: Path, data: bytes, rel: str) -> np.ndarray:
    """Encoded bytes back to pixels through a file, with the writing library (not landcover's decoder)."""
    path = tmp_path / f"decoded{Path(rel).suffix}"
    path.write_bytes(data)
    return original(path)


@pytest.mark.parametrize("chips", ["png_chips", "tif_chips"])
def test_webdataset_round_trip_is_pixel_exact(tmp_path, request, chips):
    manifest = request.getfixturevalue(chips)
    result = export(manifest, tmp_path / "out", "webdataset", shards=2, progress=False)
    assert result.files == {"data": ["data-000000.tar", "data-000001.tar"]}
    rows = by_chip(manifest)
    ext = "png" if chips == "png_chips" else "tif"
    with tarfile.open(tmp_path / "out" / "data-000000.tar") as tar:
        first = tar.getnames()[:3]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    key = first[0].split(".")[0]
    assert first == [f"{key}.{ext}", f"{key}.cls", f"{key}.json"]
    shards = [tmp_path / "out" / n for n in result.files["data"]]
    samples = list(read_webdataset(shards, decode=True))
    assert sorted(s["chip_id"] for s in samples) == sorted(rows)
    for s in samples:
        row = rows[s["chip_id"]]
        assert (s["label"], s["label_id"], s["format"]) == (row.label, row.label_id, ext)
        assert s["meta"]["bounds"] == list(row.geometry.bounds) and s["meta"]["crs"] == row.crs
        assert s["meta"]["region"] == row.region and s["meta"]["split"] is None
        expected = original(manifest.parent / row.path)
        assert s["image"].dtype == expected.dtype
        np.testing.assert_array_equal(s["image"], expected)
    raw = next(read_webdataset(shards[0]))
    assert raw["image"] == (manifest.parent / rows[raw["chip_id"]].path).read_bytes()


def test_webdataset_keys_hold_no_dot_and_give_back_the_chip_id(tmp_path, tif_chips):
    chip_ids = ["s16-r0.5-p0-x1.5-y2", "s16-r30-p0-x301905-y4115205", "odd%id/with.dots and space"]
    for chip_id in chip_ids:
        key = sample_key(chip_id)
        assert "." not in key and "/" not in key and " " not in key and chip_id_from_key(key) == chip_id
    assert sample_key("s16-r0.5-p0-x1.5-y2") == "s16-r0%2E5-p0-x1%2E5-y2"
    frame, _ = read_manifest(tif_chips)
    paths = [str(tif_chips.parent / p) for p in frame["path"][:3]]
    samples = [Sample(c, "Forest", 3, p) for c, p in zip(chip_ids, paths, strict=True)]
    write_webdataset(tmp_path / "keys.tar", samples)
    back = list(read_webdataset(tmp_path / "keys.tar"))
    assert [s["chip_id"] for s in back] == chip_ids and [s["key"] for s in back] == list(map(sample_key, chip_ids))
    meta_less = tmp_path / "meta_less.tar"  # a shard without .json still gives the chip_id, from the key
    with tarfile.open(tmp_path / "keys.tar") as src, tarfile.open(meta_less, "w") as dst:
        for m in src.getmembers():
            if not m.name.endswith(".json"):
                dst.addfile(m, src.extractfile(m))
    assert [s["chip_id"] for s in read_webdataset(meta_less)] == chip_ids


def test_mapfile_points_at_the_chips(tmp_path, png_chips):
    result = export(png_chips, tmp_path / "maps", "mapfile", progress=False)
    assert result.files == {"data": ["data.tsv"]}
    rows = by_chip(png_chips)
    entries = list(read_mapfile(tmp_path / "maps" / "data.tsv"))
    assert len(entries) == len(rows)
    by_path = {str((png_chips.parent / r.path).resolve()): r for r in rows.values()}
    for path, label_id in entries:
        assert path.is_absolute() and path.is_file() and by_path[str(path.resolve())].label_id == label_id
    first = (tmp_path / "maps" / "data.tsv").read_text().splitlines()[0].split("\t")
    assert len(first) == 2 and not Path(first[0]).is_absolute()  # relative to the map file's folder
    assert (tmp_path / "maps" / "labels.txt").read_text().splitlines() == NAMES


# --- splits, masks -----------------------------------------------------------------------------------------

def test_one_set_of_shards_per_split_and_unused_left_out(tmp_path, split_chips):
    frame, _ = read_manifest(split_chips)
    counts = frame["split"].value_counts()
    result = export(split_chips, tmp_path / "all", "tfrecord", shards=2, progress=False)
    assert list(result.files) == ["train", "valid", "test"] and result.left_out == {"unused": counts["unused"]}
    assert result.files["valid"] == ["valid-00001-of-00002.tfrecord", "valid-00002-of-00002.tfrecord"]
    for split in ("train", "valid", "test"):
        samples = list(read_tfrecord([tmp_path / "all" / n for n in result.files[split]]))
        assert len(samples) == counts[split] == result.counts[split]
        assert set(s["chip_id"] for s in samples) == set(frame.loc[frame["split"] == split, "chip_id"])
    assert "left out: " in result.summary()
    one = export(split_chips, tmp_path / "train", "webdataset", splits=["train"], progress=False)
    assert list(one.files) == ["train"] and one.files["train"] == ["train-000000.tar"]
    assert {s["meta"]["split"] for s in read_webdataset(tmp_path / "train" / "train-000000.tar")} == {"train"}
    maps = export(split_chips, tmp_path / "maps", "mapfile", splits=["test", "unused"], progress=False)
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.tsv")) == ["test.tsv", "unused.tsv"]
    assert maps.counts == {"test": counts["test"], "unused": counts["unused"]}
    with pytest.raises(LandcoverError, match="no split 'holdout'"):
        export(split_chips, tmp_path / "x", "mapfile", splits=["holdout"], progress=False)


def test_segmentation_masks_travel_with_their_chips(tmp_path, pair_chips):
    frame, info = read_manifest(pair_chips)
    frame["label"] = frame["label"].astype(object)
    frame.loc[frame.index[:2], ["label", "label_id"]] = None  # a pair may carry no single class
    manifest = pair_chips.with_name("seg.parquet")
    write_manifest(frame, manifest, info)
    rows = by_chip(manifest)

    def check(sample, image, mask):
        row = rows[sample["chip_id"]]
        np.testing.assert_array_equal(image, original(pair_chips.parent / row.path))
        expected = original(pair_chips.parent / row.label_path)[0]
        assert mask.dtype == np.uint8 and mask.shape == expected.shape == (16, 16)
        np.testing.assert_array_equal(mask, expected)
        if pd.isna(row.label_id):
            assert sample["label_id"] == -1 and sample["label"] is None
        else:
            assert (sample["label_id"], sample["label"]) == (row.label_id, row.label)

    for encoding in ("raw", "array"):
        out = tmp_path / f"tfr-{encoding}"
        export(manifest, out, "tfrecord", encoding=encoding, progress=False)
        samples = list(read_tfrecord(out / "data-00001-of-00001.tfrecord", decode=True))
        assert len(samples) == len(rows)
        for s in samples:
            check(s, s["image"], s["mask"])
    export(manifest, tmp_path / "wds", "webdataset", progress=False)
    with tarfile.open(tmp_path / "wds" / "data-000000.tar") as tar:
        assert tar.getnames()[3].endswith(".mask.tif")
    for s in read_webdataset(tmp_path / "wds" / "data-000000.tar", decode=True):
        check(s, s["image"], s["mask"])
    export(manifest, tmp_path / "map", "mapfile", progress=False)
    for path, label_id, mask in read_mapfile(tmp_path / "map" / "data.tsv"):
        assert path.parent.name == "images" and mask.parent.name == "labels" and mask.name == path.name
        assert path.is_file() and mask.is_file() and label_id >= -1


# --- integrity, engines, errors ----------------------------------------------------------------------------

def test_tfrecord_framing_crcs_catch_a_corrupted_byte(tmp_path, png_chips):
    export(png_chips, tmp_path / "out", "tfrecord", progress=False)
    path = tmp_path / "out" / "data-00001-of-00001.tfrecord"
    data = path.read_bytes()
    length, length_crc = struct.unpack("<QI", data[:12])  # the framing, checked with an independent CRC
    mask = lambda c: (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # noqa: E731
    assert length_crc == mask(bitwise_crc32c(data[:8]))
    assert struct.unpack("<I", data[12 + length:16 + length])[0] == mask(bitwise_crc32c(data[12:12 + length]))
    assert len(list(read_records(path))) == len(read_manifest(png_chips)[0])
    second = 16 + length  # a byte inside the second record's data, then one of its length
    for offset, message in ((second + 12 + 40, "record 1 at byte .*: data CRC mismatch"),
                            (second + 2, "record 1 at byte .*: length CRC mismatch")):
        broken = bytearray(data)
        broken[offset] ^= 0x01
        path.write_bytes(bytes(broken))
        with pytest.raises(LandcoverError, match=message):
            list(read_tfrecord(path))
    path.write_bytes(data[:-3])
    with pytest.raises(LandcoverError, match="is cut off"):
        list(read_tfrecord(path))


@pytest.mark.parametrize("fmt", ["tfrecord", "webdataset"])
def test_process_pool_writes_the_same_bytes_as_one_process(tmp_path, tif_chips, fmt):
    assert main(["export", str(tif_chips), "--format", fmt, "--shards", "3", "--quiet", "--out",
                 str(tmp_path / "one")]) == 0
    assert main(["export", str(tif_chips.parent), "--format", fmt, "--shards", "3", "--quiet", "--workers", "2",
                 "--out", str(tmp_path / "pool")]) == 0
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "pool").iterdir()) and len(files) == 6
    for name in files:
        if name != "export.json":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes(), name


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, png_chips, capsys):
    def fails(*args: str) -> str:
        capsys.readouterr()
        assert main(["export", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("landcover: error: ") and err.count("\n") == 1
        return err

    out = tmp_path / "out"
    n = len(read_manifest(png_chips)[0])
    assert f"--shards {n + 1} is more than the {n} chips" in fails(png_chips, "--format", "tfrecord", "--shards",
                                                                     n + 1, "--out", out)
    assert "no such manifest" in fails(tmp_path / "nope.parquet", "--format", "mapfile", "--out", out)
    frame, info = read_manifest(png_chips)
    newer = tmp_path / "newer.parquet"
    table = pq.read_table(png_chips)
    meta = json.loads(table.schema.metadata[b"landcover"])
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata,
                                                  b"landcover": json.dumps({**meta, "format_version": 99})}), newer)
    assert "is newer than this landcover" in fails(newer, "--format", "mapfile", "--out", out)
    missing = png_chips.with_name("missing.parquet")
    frame.loc[5, "path"] = "forest/not-there.png"
    write_manifest(frame, missing, info)
    err = fails(missing, "--format", "webdataset", "--out", out)
    assert "file missing" in err and "not-there.png" in err and frame.loc[5, "chip_id"] in err
    assert "applies to tfrecord only" in fails(png_chips, "--format", "webdataset", "--encoding", "array",
                                               "--out", out)
    assert not out.exists()
    with pytest.raises(LandcoverError, match="unknown export format 'hdf5'"):
        export(png_chips, out, "hdf5")
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the CLI offers the formats it knows
        main(["export", str(png_chips), "--format", "hdf5", "--out", str(out)])
    assert "invalid choice: 'hdf5'" in capsys.readouterr().err


def test_a_failing_shard_leaves_nothing_half_written(tmp_path, png_chips):
    frame, info = read_manifest(png_chips)
    (png_chips.parent / "broken.png").write_bytes(b"not an image")
    frame.loc[len(frame) // 2, "path"] = "broken.png"
    broken = png_chips.with_name("broken.parquet")
    write_manifest(frame, broken, info)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        assert main(["export", str(broken), "--format", "tfrecord", "--encoding", "array", "--shards", "4",
                     "--quiet", "--workers", str(workers), "--out", str(out)]) == 2
        assert not out.exists()
    out = tmp_path / "kept"
    out.mkdir()
    with pytest.raises(LandcoverError, match=r"not a PNG, TIFF or \.npy image"):
        export(broken, out, "tfrecord", encoding="array", shards=4, progress=False)
    assert out.is_dir() and not any(out.iterdir())  # the folder it was given stays, empty


def test_out_must_be_new_empty_or_overwritten(tmp_path, png_chips, capsys):
    out = tmp_path / "out"
    args = ["export", str(png_chips), "--format", "webdataset", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(args) == 2 and "not empty" in capsys.readouterr().err
    assert main([*args, "--shards", "2", "--overwrite"]) == 0
    assert "in 2 files" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.tar")) == ["data-000000.tar", "data-000001.tar"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["export", str(png_chips), "--format", "mapfile", "--out", str(other), "--overwrite"]) == 2
    assert "only replaces a landcover export" in capsys.readouterr().err
    assert (other / "notes.txt").exists()


def test_cli_help_names_formats_and_files(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    for word in ("tfrecord", "webdataset", "mapfile", "--shards", "--encoding", "labels.txt",
                 "dataset_split_info.csv", "-00001-of-", "--workers"):
        assert word in text
    assert "--block-tiles" not in text
