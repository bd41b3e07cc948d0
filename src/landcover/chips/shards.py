"""Chips cut straight into shards (`--layout shards`): the worker that cuts a block of tiles encodes its chips
into one WebDataset tar or TFRecord file, so a run creates a few dozen files instead of one per chip; with a
`shard_size`, the blocks' shards are kept with the run's state and dealt, once every block is done, into shards of
that many chips (copied byte for byte). Each chip's manifest row records its shard (`path`), its `key` there,
and the byte range of its pixels (`byte_offset`, `byte_count`), so training and export read any chip without
scanning the shard.

Pixels are stored as they are read, in the imagery's dtype with all bands (as `--format tif` stores them):
a `.npy` member in a tar (beside `.cls` and `.json`, the members `landcover export --format webdataset` writes),
or a tf.train.Example with image/array, image/shape and image/dtype (as `export --encoding array` writes).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii
from pathlib import Path

import numpy as np

from landcover.atomic import replacing
from landcover.datasets.formats.example import array_features, encode_example, frame_record
from landcover.datasets.formats.members import TAR_END, npy_bytes, padded_size, tar_member
from landcover.datasets.formats.webdataset import sample_key

SHARD_FORMATS = ("webdataset", "tfrecord")
SHARD_DIR = "shards"
SUFFIXES = {"webdataset": ".tar", "tfrecord": ".tfrecord"}
RECORD_HEADER = 12
"""Bytes before a TFRecord record's data: its length (8) and the length's CRC (4)."""


def shard_name(stem: str, fmt: str) -> str:
    """A shard's path in its folder: shards/<block>.tar (one a block), or shards/shard-00000.tar (of a size)."""
    return f"{SHARD_DIR}/{stem}{SUFFIXES[fmt]}"


def write_block_shards(out: Path, block_id: str, fmt: str, rows: list[dict], chips: list[np.ndarray]) -> None:
    """Write a block's chips (manifest rows and their pixels, in order) into one shard under `out`, under a temporary
    name and then renamed; record each chip's shard, key, byte_offset and byte_count in its row."""
    payloads = [npy_bytes(chip) if fmt == "webdataset" else encode_example({
        "image/chip_id": [row["chip_id"]], "image/class/label": [row["label_id"]],
        "image/class/text": [row["label"] or ""], "image/format": [b"raw"], **array_features("image", chip)})
        for row, chip in zip(rows, chips, strict=True)]
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    _write_shard(out, shard_name(block_id, fmt), fmt, rows, payloads)


def merge_shards(out: Path, blocks: Path, fmt: str, shard_size: int, rows: list[dict]) -> None:
    """Deal the chips of the blocks' shards (under `blocks`, as `rows` record them) into shards of `shard_size`
    chips under `out`, in row order, their payloads copied byte for byte; the rows then point at them."""
    (out / SHARD_DIR).mkdir(exist_ok=True)
    for index, start in enumerate(range(0, len(rows), shard_size)):
        group = rows[start:start + shard_size]
        payloads = []
        for row in group:
            with open(blocks / row["path"], "rb") as f:
                f.seek(row["byte_offset"])
                payloads.append(f.read(row["byte_count"]))
        _write_shard(out, shard_name(f"shard-{index:05d}", fmt), fmt, group, payloads)


def _write_shard(out: Path, name: str, fmt: str, rows: list[dict], payloads: list[bytes]) -> None:
    """One shard: each chip's payload (its .npy, or its tf.train.Example) framed as a tar member with .cls and
    .json beside it, or as a TFRecord record."""
    parts: list[bytes] = []
    position = 0
    for number, (row, data) in enumerate(zip(rows, payloads, strict=True)):
        if fmt == "webdataset":
            key = sample_key(row["chip_id"])
            members = [tar_member(f"{key}.npy", data), tar_member(f"{key}.cls", str(row["label_id"]).encode()),
                       tar_member(f"{key}.json", _meta_json(row))]
            offset = position + len(members[0]) - padded_size(len(data))
        else:
            key = str(number)
            members = [frame_record(data)]
            offset = position + RECORD_HEADER
        row.update(path=name, key=key, byte_offset=offset, byte_count=len(data))
        parts += members
        position += sum(len(m) for m in members)
    if fmt == "webdataset":
        parts.append(TAR_END)
    with replacing(out / name) as tmp:
        tmp.write_bytes(b"".join(parts))


def _meta_json(row: dict) -> bytes:
    """A chip's facts in its shard (`<key>.json`), as `landcover export` writes them (keys sorted): the JSON is
    put together here, as json.dumps takes about 17 us a chip."""
    text = {k: _string(row[k]) for k in ("chip_id", "crs", "label", "region", "scene")}
    bounds = ", ".join(repr(float(v)) for v in row["bounds"])  # finite floats: repr is their JSON
    label_id = "null" if row["label_id"] is None else int(row["label_id"])
    return (f'{{"bounds": [{bounds}], "chip_id": {text["chip_id"]}, "crs": {text["crs"]}, "label": {text["label"]}, '
            f'"label_id": {label_id}, "region": {text["region"]}, "scene": {text["scene"]}, "split": null}}').encode()


def _string(value: object) -> str:
    return "null" if value is None else encode_basestring_ascii(str(value))
