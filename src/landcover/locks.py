"""An OS-level lock on an output, so that two runs never write the same files; the OS drops it when its process
dies, so a killed run never leaves a stale lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from landcover.errors import LandcoverError


def lock_path(output: str | Path) -> Path:
    """Where the lock of an output lives: a file in the temp folder named after the output's absolute path (so
    nothing is left beside the output, and a folder that does not exist yet can be locked)."""
    key = hashlib.sha256(str(Path(output).resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "landcover-locks" / f"{key}.lock"


@contextmanager
def output_lock(output: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `output` for the block; another process holding it is an error naming its PID."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LandcoverError(f"is in use by process {holder} (another landcover run is writing it): wait for "
                                 "it to finish, or stop it", output) from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
