"""TFRecord files of chips: one `tf.train.Example` per chip (framing and encoding in example.py).

Features: image/chip_id, image/class/label, image/class/text, and either image/encoded + image/format (the chip
file's bytes, encoding 'raw') or image/array + image/shape + image/dtype with image/format 'raw' (its pixels,
encoding 'array'); mask/... the same for segmentation masks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from landcover.datasets.formats.example import (
    FeatureValue,
    array_features,
    array_from_features,
    decode_example,
    encode_example,
    frame_record,
    read_records,
)
from landcover.datasets.formats.sample import Sample, decode_image, file_type, squeeze_mask
from landcover.errors import LandcoverError

ENCODINGS = ("raw", "array")


def sample_features(sample: Sample, encoding: str = "raw") -> dict[str, FeatureValue]:
    """The Example features of one chip: the file's bytes ('raw') or its decoded pixels ('array')."""
    features: dict[str, FeatureValue] = {
        "image/chip_id": [sample.chip_id], "image/class/label": [int(sample.label_id)],
        "image/class/text": [sample.label or ""]}
    if encoding == "raw":
        features.update({"image/encoded": [sample.image_bytes()], "image/format": [sample.ext]})
        if sample.mask_path is not None:
            features.update({"mask/encoded": [sample.mask_bytes()], "mask/format": [file_type(sample.mask_path)]})
    elif encoding == "array":
        features.update(array_features("image", sample.image_array()))
        features["image/format"] = [b"raw"]
        if sample.mask_path is not None:
            features.update(array_features("mask", sample.mask_array()))
    else:
        raise LandcoverError(f"unknown encoding {encoding!r} (choose from {', '.join(ENCODINGS)})")
    return features


def write_tfrecord(path: str | Path, samples: Iterable[Sample], encoding: str = "raw") -> int:
    """Write samples as one TFRecord file; returns how many."""
    n = 0
    with open(path, "wb") as f:
        for sample in samples:
            if encoding == "array" and sample.in_shard and Path(sample.path).suffix == ".tfrecord":
                data = sample.member_bytes()  # already this Example: copied, not decoded
            else:
                data = encode_example(sample_features(sample, encoding))
            f.write(frame_record(data))
            n += 1
    return n


def read_tfrecord(paths: str | Path | Iterable[str | Path], decode: bool = False,
                  verify: bool = True) -> Iterator[dict]:
    """The samples of TFRecord files, as written: chip_id, label, label_id, format ('png', 'tif', or 'raw'
    for arrays), image (file bytes, or an array (bands, height, width) in its dtype), and mask when present
    ((height, width) array or file bytes). decode=True decodes file bytes to arrays too."""
    for path in [paths] if isinstance(paths, str | Path) else paths:
        for index, record in enumerate(read_records(path, verify)):
            try:
                features = decode_example(record)
                yield _sample_dict(features, decode)
            except (ValueError, KeyError) as exc:
                raise LandcoverError(f"record {index} is not a landcover sample ({exc})", path) from None


def _sample_dict(features: dict[str, list], decode: bool) -> dict:
    out = {"chip_id": features["image/chip_id"][0].decode(), "label": features["image/class/text"][0].decode() or None,
           "label_id": int(features["image/class/label"][0]), "format": features["image/format"][0].decode()}
    if "image/array" in features:
        out["image"] = array_from_features(features, "image")
    else:
        out["image"] = decode_image(features["image/encoded"][0]) if decode else features["image/encoded"][0]
    if "mask/array" in features:
        out["mask"] = array_from_features(features, "mask")
    elif "mask/encoded" in features:
        data = features["mask/encoded"][0]
        out["mask"] = squeeze_mask(decode_image(data)) if decode else data
    return out
