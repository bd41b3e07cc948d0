"""TFRecord framing and `tf.train.Example` wire encoding, without TensorFlow.

A TFRecord file is a run of records, each framed as
    uint64 length | uint32 masked CRC-32C of those 8 bytes | data | uint32 masked CRC-32C of data
(little-endian). The data is a serialized `tf.train.Example` protocol buffer:
    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }   (map entries: key = 1, value = 2)
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }
Map entries are written sorted by key, so a shard's bytes depend only on its samples.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from landcover.datasets.formats.crc32c import masked_crc32c
from landcover.errors import LandcoverError

BYTES, FLOAT, INT64 = 1, 2, 3  # the Feature oneof's field numbers
FeatureValue = Sequence[bytes] | Sequence[int] | Sequence[float] | np.ndarray


# --- framing ---------------------------------------------------------------------------------------------

def frame_record(data: bytes) -> bytes:
    """One record with its TFRecord framing."""
    header = struct.pack("<Q", len(data))
    return b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                     struct.pack("<I", masked_crc32c(data))))


def read_records(path: str | Path, verify: bool = True) -> Iterator[bytes]:
    """The records of one TFRecord file; a wrong CRC or a cut-off record is an error naming the byte."""
    with open(path, "rb") as f:
        index = 0
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise LandcoverError(f"corrupt TFRecord: record {index} at byte {offset} is cut off", path)
            length, length_crc = struct.unpack("<QI", header)
            if verify and masked_crc32c(header[:8]) != length_crc:
                raise LandcoverError(f"corrupt TFRecord: record {index} at byte {offset}: length CRC mismatch",
                                     path)
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise LandcoverError(f"corrupt TFRecord: record {index} at byte {offset} is cut off", path)
            if verify and masked_crc32c(data) != struct.unpack("<I", tail)[0]:
                raise LandcoverError(f"corrupt TFRecord: record {index} at byte {offset}: data CRC mismatch",
                                     path)
            yield data
            index += 1


# --- tf.train.Example wire encoding ---------------------------------------------------------------------

def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64s as their two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(values: FeatureValue) -> bytes:
    if isinstance(values, bytes | str | int | float):
        values = [values]
    if isinstance(values, np.ndarray):
        kind = FLOAT if values.dtype.kind == "f" else INT64 if values.dtype.kind in "iub" else BYTES
        values = values.ravel().tolist()
    else:
        values = list(values)
        first = values[0] if values else b""
        kind = (FLOAT if isinstance(first, float | np.floating) else
                INT64 if isinstance(first, int | np.integer) else BYTES)
    if kind == BYTES:
        payload = b"".join(_field(1, v.encode() if isinstance(v, str) else bytes(v)) for v in values)
    elif kind == FLOAT:
        payload = _field(1, struct.pack(f"<{len(values)}f", *values)) if values else b""
    else:
        payload = _field(1, b"".join(_varint(int(v)) for v in values)) if values else b""
    return _field(kind, payload)


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """A serialized tf.train.Example. Values: bytes/str lists become bytes_list, ints int64_list, floats
    float_list (float32); a scalar is a one-value list; an empty list is an empty bytes_list."""
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, _feature(features[key])))
                       for key in sorted(features))
    return _field(1, entries)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view):
            raise ValueError("truncated varint")
        b = view[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of each field of one protocol buffer message."""
    view, pos = memoryview(data), 0
    while pos < len(view):
        key, pos = _read_varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(view, pos)
        elif wire in (1, 2, 5):
            size = 8 if wire == 1 else 4 if wire == 5 else None
            if size is None:
                size, pos = _read_varint(view, pos)
            value, pos = view[pos:pos + size], pos + size
            if pos > len(view):
                raise ValueError("truncated field")
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_feature(data: memoryview) -> list:
    values: list = []
    for kind, _, body in _fields(data):  # the oneof: the last kind present wins, as in protobuf
        values = []
        for number, wire, item in _fields(body):
            if number != 1:
                continue
            if kind == BYTES:
                values.append(bytes(item))
            elif kind == FLOAT:
                values.extend(struct.unpack(f"<{len(item) // 4}f", item) if wire == 2 else
                              struct.unpack("<f", item))
            elif kind == INT64:
                if wire == 0:
                    values.append(_signed(item))
                else:
                    values.extend(_signed(v) for v in _packed_varints(item))
    return values


def _packed_varints(packed: memoryview) -> Iterator[int]:
    pos = 0
    while pos < len(packed):
        value, pos = _read_varint(packed, pos)
        yield value


def decode_example(data: bytes) -> dict[str, list]:
    """A serialized tf.train.Example as {feature name: list of bytes, ints or floats}."""
    try:
        features: dict[str, list] = {}
        for number, _, body in _fields(data):
            if number != 1:
                continue
            for entry_number, _, entry in _fields(body):
                if entry_number != 1:
                    continue
                key, value = "", memoryview(b"")
                for n, _, part in _fields(entry):
                    if n == 1:
                        key = bytes(part).decode()
                    elif n == 2:
                        value = part
                features[key] = _decode_feature(value)
        return features
    except (ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"not a tf.train.Example ({exc})") from None


# --- arrays ---------------------------------------------------------------------------------------------

def array_features(prefix: str, array: np.ndarray) -> dict[str, FeatureValue]:
    """An array as Example features: <prefix>/array (little-endian bytes), <prefix>/shape, <prefix>/dtype."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {f"{prefix}/array": [np.ascontiguousarray(little).tobytes()], f"{prefix}/shape": list(array.shape),
            f"{prefix}/dtype": [array.dtype.name]}


def array_from_features(features: dict[str, list], prefix: str) -> np.ndarray:
    """The array `array_features` stored under a prefix, in its dtype."""
    dtype = np.dtype(features[f"{prefix}/dtype"][0].decode())
    flat = np.frombuffer(features[f"{prefix}/array"][0], dtype.newbyteorder("<"))
    return flat.reshape(features[f"{prefix}/shape"]).astype(dtype)
