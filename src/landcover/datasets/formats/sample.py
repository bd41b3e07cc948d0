"""One chip on its way into a dataset file: its manifest facts, and its pixels as file bytes or an array.

A chip is a file (`path`), or a member of a shard that `landcover chips --layout shards` wrote (`path` the shard,
`offset` and `length` its byte range: a .npy member of a tar, or a tf.train.Example of a TFRecord file)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rasterio.io import MemoryFile

from landcover.datasets.formats.members import NPY_MAGIC, decode_member, npy_bytes, read_member
from landcover.errors import LandcoverError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


@dataclass(frozen=True)
class Sample:
    """A manifest row reduced to what the dataset formats carry; paths are absolute."""

    chip_id: str
    label: str | None
    label_id: int
    path: str
    region: str | None = None
    scene: str | None = None
    split: str | None = None
    crs: str | None = None
    bounds: tuple[float, float, float, float] | None = None
    mask_path: str | None = None
    offset: int | None = None
    length: int | None = None

    @property
    def in_shard(self) -> bool:
        """Whether the chip is a member of a shard rather than a file of its own."""
        return self.offset is not None

    @property
    def ext(self) -> str:
        """The chip's file type as the formats name it: 'png', 'tif', or 'npy' (pixels from a shard)."""
        return "npy" if self.in_shard else file_type(self.path)

    def member_bytes(self) -> bytes:
        """A shard chip's bytes as the shard holds them (a .npy file, or a tf.train.Example)."""
        return read_member(self.path, self.offset, self.length, self.chip_id)

    def image_bytes(self) -> bytes:
        """The chip file, byte for byte (for a chip in a shard: its pixels as a .npy file)."""
        if self.in_shard:
            data = self.member_bytes()
            return data if data.startswith(NPY_MAGIC) else npy_bytes(decode_member(data, self.path, self.chip_id))
        return _read(self.path, self.chip_id)

    def image_array(self) -> np.ndarray:
        """The chip's pixels, (bands, height, width), in the file's own dtype."""
        return decode_image(self.image_bytes(), self.path)

    def mask_bytes(self) -> bytes | None:
        """The label mask file (segmentation), byte for byte; None without one."""
        return None if self.mask_path is None else _read(self.mask_path, self.chip_id)

    def mask_array(self) -> np.ndarray | None:
        """The label mask, (height, width) for a one-band mask; None without one."""
        data = self.mask_bytes()
        return None if data is None else squeeze_mask(decode_image(data, self.mask_path))

    def meta(self) -> dict:
        """The manifest facts as plain JSON-ready data."""
        return {"chip_id": self.chip_id, "label": self.label, "label_id": self.label_id, "region": self.region,
                "scene": self.scene, "split": self.split, "crs": self.crs,
                "bounds": None if self.bounds is None else list(self.bounds)}


def file_type(path: str | Path) -> str:
    """'png' or 'tif' from a chip file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix in (".tif", ".tiff"):
        return "tif"
    raise LandcoverError("chips must be PNG or GeoTIFF files (.png, .tif)", path)


def decode_image(data: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """PNG, TIFF or .npy file bytes as an array (bands, height, width) in the file's dtype."""
    if data.startswith(NPY_MAGIC):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if data.startswith(PNG_MAGIC):
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im)
        return np.ascontiguousarray(array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0))
    if data[:4] in TIFF_MAGICS:
        with MemoryFile(data) as mem, mem.open() as src:
            return src.read()
    raise LandcoverError("not a PNG, TIFF or .npy image", source)


def squeeze_mask(array: np.ndarray) -> np.ndarray:
    """A one-band mask as (height, width); several bands stay (bands, height, width)."""
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def _read(path: str, chip_id: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise LandcoverError(f"chip {chip_id}: file missing", path) from None
    except OSError as exc:
        raise LandcoverError(f"chip {chip_id}: unreadable ({exc.strerror})", path) from None

