"""Dataset files from a chips manifest: TFRecord and WebDataset shards and map files, each with a reader.

    export(manifest, out, "tfrecord", shards=4, encoding="array")   # or "webdataset", "mapfile"
    for sample in read_tfrecord(sorted(Path(out).glob("train-*.tfrecord"))): ...

TFRecord (tfrecord.py) needs no TensorFlow: its framing, CRC-32C and tf.train.Example encoding are here.
"""

from landcover.datasets.formats.export import FORMATS, ExportResult, class_names, export, shard_names
from landcover.datasets.formats.mapfile import read_mapfile, write_mapfile
from landcover.datasets.formats.sample import Sample, decode_image
from landcover.datasets.formats.tfrecord import (
    ENCODINGS,
    decode_example,
    encode_example,
    read_records,
    read_tfrecord,
    write_tfrecord,
)
from landcover.datasets.formats.webdataset import chip_id_from_key, read_webdataset, sample_key, write_webdataset

__all__ = [
    "ENCODINGS", "FORMATS", "ExportResult", "Sample", "chip_id_from_key", "class_names", "decode_example",
    "decode_image", "encode_example", "export", "read_mapfile", "read_records", "read_tfrecord",
    "read_webdataset", "sample_key", "shard_names", "write_mapfile", "write_tfrecord", "write_webdataset",
]
