"""Chips inside shards: the byte layouts of a tar member and a .npy file, and reading one chip back from its
byte range (`path`, `byte_offset`, `byte_count` in a shards manifest) without scanning the shard.

A chip in a WebDataset tar is the data of its `<key>.npy` member; in a TFRecord file, the data of its record (a
tf.train.Example with image/array, image/shape, image/dtype). Open shards are kept per process (a few), so
reading the chips of a shard one by one costs one open.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

import numpy as np

from landcover.datasets.formats.example import array_from_features, decode_example
from landcover.errors import LandcoverError

NPY_MAGIC = b"\x93NUMPY"
BLOCK = 512
TAR_END = bytes(2 * BLOCK)
"""Two zero blocks close a tar archive."""
OPEN_SHARDS = 8
"""Shards a process keeps open for reading."""
_USTAR = bytearray(BLOCK)
for _start, _value in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"), (136, b"00000000000\0"),
                       (148, b" " * 8), (156, b"0"), (257, b"ustar\x0000")):
    _USTAR[_start:_start + len(_value)] = _value
_USTAR_SUM = sum(_USTAR)


def tar_member(name: str, data: bytes) -> bytes:
    """One regular file of a tar archive: its header, its data, zeros up to a 512-byte boundary. The data starts
    `len(result) - padded_size(len(data))` bytes in."""
    encoded = name.encode()
    size = b"%011o\0" % len(data)
    if len(encoded) <= 100 and len(data) < 8 ** 11:
        head = bytearray(_USTAR)
        head[:len(encoded)] = encoded
        head[124:136] = size
        head[148:156] = b"%06o\0 " % (_USTAR_SUM + sum(encoded) + sum(size))
    else:  # a long name or a huge file: the tarfile module writes a PAX extended header first
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        head = info.tobuf(tarfile.PAX_FORMAT)
    return b"".join((head, data, bytes(padded_size(len(data)) - len(data))))


def padded_size(n: int) -> int:
    """Bytes a member's data takes in a tar archive: n rounded up to whole 512-byte blocks."""
    return -(-n // BLOCK) * BLOCK


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (what np.save writes), C order."""
    return _npy_header(array.dtype.str, array.shape) + np.ascontiguousarray(array).tobytes()


@functools.lru_cache(maxsize=64)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The .npy header of arrays of this dtype and shape (chips of a run share one)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def read_member(path: str | Path, offset: int, length: int, chip_id: str = "") -> bytes:
    """The bytes of one chip in a shard."""
    f = _open_shard(str(path))
    f.seek(int(offset))
    data = f.read(int(length))
    if len(data) != length:
        raise LandcoverError(f"chip {chip_id}: the shard ends before its bytes ({length} at {offset})", path)
    return data


def read_member_array(path: str | Path, offset: int, length: int, chip_id: str = "") -> np.ndarray:
    """One chip of a shard as an array (bands, height, width) in its stored dtype."""
    return decode_member(read_member(path, offset, length, chip_id), path, chip_id)


def decode_member(data: bytes, path: str | Path, chip_id: str = "") -> np.ndarray:
    """A shard member's bytes (a .npy file, or a tf.train.Example with an image array) as an array."""
    try:
        if data.startswith(NPY_MAGIC):
            return np.load(io.BytesIO(data), allow_pickle=False)
        return array_from_features(decode_example(data), "image")
    except (ValueError, KeyError, OSError) as exc:
        raise LandcoverError(f"chip {chip_id}: its bytes in the shard are not a chip ({exc})", path) from None


_handles: OrderedDict[tuple[int, str], BinaryIO] = OrderedDict()


def _open_shard(path: str) -> BinaryIO:
    """An open shard, from the process's few (the least recently used one is closed to make room); keyed on the
    process id too, so a forked worker (a DataLoader's) never shares a file offset with its parent."""
    key = (os.getpid(), path)
    f = _handles.pop(key, None)
    if f is None:
        try:
            f = open(path, "rb")  # noqa: SIM115 - kept open across calls, closed on eviction
        except OSError as exc:
            raise LandcoverError(f"cannot read shard ({exc.strerror})", path) from None
        while len(_handles) >= OPEN_SHARDS:
            _handles.popitem(last=False)[1].close()
    _handles[key] = f
    return f
