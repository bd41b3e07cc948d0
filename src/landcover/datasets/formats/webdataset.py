"""WebDataset shards: plain tar files where the files of one sample share a key and sit together.

Per sample: `<key>.png` or `<key>.tif` (the chip file as is) or `<key>.npy` (the pixels as a NumPy array file:
chips cut straight into shards), `<key>.cls` (label id as text), `<key>.json` (chip_id, label, label_id, region,
scene, split, crs, bounds) and, for segmentation, `<key>.mask.tif`. WebDataset splits a name at its first dot
into key and field, so a key holds no dot: it is the chip_id with '%', '.', '/', '\\' and whitespace
percent-escaped ('s16-r0.5-...' becomes 's16-r0%2E5-...'), which `chip_id_from_key` undoes. Tar headers (POSIX
ustar, written by members.tar_member) carry no time or owner, so a shard's bytes depend only on its samples.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote

from landcover.datasets.formats.members import TAR_END, tar_member
from landcover.datasets.formats.sample import Sample, decode_image, file_type, squeeze_mask
from landcover.errors import LandcoverError

_UNSAFE = re.compile(r"[%./\\\s]")
IMAGE_EXTS = ("png", "tif", "npy")


def sample_key(chip_id: str) -> str:
    """The chip_id as a WebDataset key: no dots, reversible with chip_id_from_key."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), chip_id)


def chip_id_from_key(key: str) -> str:
    """The chip_id a key was made from."""
    return unquote(key)


def write_webdataset(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write samples as one tar shard; returns how many."""
    n = 0
    with open(path, "wb") as f:
        for sample in samples:
            key = sample_key(sample.chip_id)
            f.write(tar_member(f"{key}.{sample.ext}", sample.image_bytes()))
            f.write(tar_member(f"{key}.cls", str(int(sample.label_id)).encode()))
            f.write(tar_member(f"{key}.json", json.dumps(sample.meta(), sort_keys=True).encode()))
            if sample.mask_path is not None:
                f.write(tar_member(f"{key}.mask.{file_type(sample.mask_path)}", sample.mask_bytes()))
            n += 1
        f.write(TAR_END)
    return n


def read_webdataset(paths: str | Path | Iterable[str | Path], decode: bool = False) -> Iterator[dict]:
    """The samples of tar shards, as written: key, chip_id, label, label_id, format ('png' or 'tif'),
    image (file bytes), meta (the json), and mask (file bytes) when present. decode=True gives arrays:
    image (bands, height, width) and mask (height, width)."""
    for path in [paths] if isinstance(paths, str | Path) else paths:
        try:
            with tarfile.open(path) as tar:
                yield from _samples(tar, path, decode)
        except tarfile.TarError as exc:
            raise LandcoverError(f"not a readable tar shard ({exc})", path) from None


def _samples(tar: tarfile.TarFile, path: str | Path, decode: bool) -> Iterator[dict]:
    key, files = None, {}
    for member in tar:
        if not member.isfile():
            continue
        base = member.name.rsplit("/", 1)
        stem, _, field = base[-1].partition(".")
        name = f"{base[0]}/{stem}" if len(base) == 2 else stem
        if name != key and key is not None:
            yield _sample_dict(key, files, path, decode)
            files = {}
        key = name
        files[field] = tar.extractfile(member).read()
    if key is not None:
        yield _sample_dict(key, files, path, decode)


def _sample_dict(key: str, files: dict[str, bytes], path: str | Path, decode: bool) -> dict:
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None or "cls" not in files:
        raise LandcoverError(f"sample {key!r} lacks an image or a .cls file ({', '.join(sorted(files))})", path)
    meta = json.loads(files["json"]) if "json" in files else {}
    out = {"key": key, "chip_id": meta.get("chip_id", chip_id_from_key(key.rsplit("/", 1)[-1])),
           "label": meta.get("label"), "label_id": int(files["cls"]), "format": ext, "meta": meta,
           "image": decode_image(files[ext], path) if decode else files[ext]}
    mask = next((files[f] for f in files if f.startswith("mask.")), None)
    if mask is not None:
        out["mask"] = squeeze_mask(decode_image(mask, path)) if decode else mask
    return out
