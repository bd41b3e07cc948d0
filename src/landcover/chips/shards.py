"""Chips cut straight into shards (`--layout shards`): the worker that cuts a block of tiles encodes its chips
into one WebDataset tar or TFRecord file (or one per `shard_size` chips), so a run creates a few dozen files
instead of one per chip. Each chip's manifest row records its shard (`path`), its `key` there, and the byte range
of its pixels (`byte_offset`, `byte_count`), so training and export read any chip without scanning the shard.

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


def shard_groups(n_chips: int, shard_size: int | None) -> list[range]:
    """A block's chips (by position) dealt into shards: all in one, or `shard_size` at a time."""
    size = shard_size or max(1, n_chips)
    return [range(start, min(start + size, n_chips)) for start in range(0, n_chips, size)]


def shard_name(block_id: str, index: int, groups: int, fmt: str) -> str:
    """A shard's path in the chips folder: shards/<block>.tar, or shards/<block>-<i>.tar for several."""
    stem = block_id if groups == 1 else f"{block_id}-{index:04d}"
    return f"{SHARD_DIR}/{stem}{SUFFIXES[fmt]}"


def write_block_shards(out: Path, block_id: str, fmt: str, shard_size: int | None, rows: list[dict],
                       chips: list[np.ndarray]) -> None:
    """Write a block's chips (manifest rows and their pixels, in order) into its shards, each under a temporary
    name and then renamed; record each chip's shard, key, byte_offset and byte_count in its row."""
    groups = shard_groups(len(rows), shard_size)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    for index, group in enumerate(groups):
        name = shard_name(block_id, index, len(groups), fmt)
        parts: list[bytes] = []
        position = 0
        for number, i in enumerate(group):
            row = rows[i]
            if fmt == "webdataset":
                key = sample_key(row["chip_id"])
                data = npy_bytes(chips[i])
                members = [tar_member(f"{key}.npy", data), tar_member(f"{key}.cls", str(row["label_id"]).encode()),
                           tar_member(f"{key}.json", _meta_json(row))]
                offset = position + len(members[0]) - padded_size(len(data))
            else:
                key = str(number)
                data = encode_example({"image/chip_id": [row["chip_id"]], "image/class/label": [row["label_id"]],
                                       "image/class/text": [row["label"] or ""], "image/format": [b"raw"],
                                       **array_features("image", chips[i])})
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
