"""Files a reader never sees half-written (written under a temporary name beside the target, then renamed), and
outputs checked for being writable before any work starts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from landcover.errors import LandcoverError


def temp_path(path: str | Path) -> Path:
    """The temporary name a file is written under: hidden, beside it, ending in .tmp."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def check_output(path: str | Path, kind: str = "file") -> Path:
    """Refuse, before any work, an output that cannot be written: a file where a folder is asked for (or the
    reverse), or a place under a file or in a folder this process cannot write. `kind` is 'file' or 'folder'."""
    path = Path(path)
    if path.exists() and kind == "folder" and not path.is_dir():
        raise LandcoverError("is a file: the output here is a folder", path)
    if path.is_dir() and kind == "file":
        raise LandcoverError("is a folder: give the name of the file to write", path)
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LandcoverError(f"cannot be written: {parent} is a file, not a folder", path)
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise LandcoverError(f"cannot be written: creating a file in {parent} failed ({exc.strerror})",
                             path) from None
    return path
