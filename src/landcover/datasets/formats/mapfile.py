"""Map files: one line per chip, `path<TAB>label_id` (and `<TAB>mask path` for segmentation).

Paths are relative to the map file's own folder (so the export and the chips folder can move together),
with '/' separators; readers resolve them against that folder. The chips themselves are not copied.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from landcover.datasets.formats.sample import Sample
from landcover.errors import LandcoverError


def write_mapfile(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write one map file; returns how many lines."""
    folder = Path(path).resolve().parent
    lines = []
    for s in samples:
        fields = [_relative(s.path, folder), str(int(s.label_id))]
        if s.mask_path is not None:
            fields.append(_relative(s.mask_path, folder))
        if any("\t" in f or "\n" in f for f in fields):
            raise LandcoverError("a path holds a tab or a newline, which a map file cannot", s.path)
        lines.append("\t".join(fields) + "\n")
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def _relative(path: str, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def read_mapfile(path: str | Path) -> Iterator[tuple]:
    """(path, label_id) per line, or (path, label_id, mask path) in a segmentation map file; paths are
    resolved against the map file's folder."""
    path = Path(path)
    if not path.is_file():
        raise LandcoverError("no such map file", path)
    folder = path.resolve().parent
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if fields == [""]:
                continue
            if len(fields) not in (2, 3) or not fields[1].lstrip("-").isdigit():
                raise LandcoverError(f"line {number} is not 'path<TAB>label_id[<TAB>mask]'", path)
            row = (_resolve(folder, fields[0]), int(fields[1]))
            yield (*row, _resolve(folder, fields[2])) if len(fields) == 3 else row


def _resolve(folder: Path, text: str) -> Path:
    return Path(os.path.normpath(folder / text))
