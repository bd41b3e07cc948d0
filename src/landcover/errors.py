"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class LandcoverError(Exception):
    """Bad input or an impossible request, raised by every stage: its message is one line a user can act on, naming
    the file when there is one (the CLI prints it and exits with status 2)."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def refuse_pickle(path: str | Path, expected: str = "safetensors") -> None:
    """Refuse a Python pickle (pickle / joblib / torch.save) file: loading one can run arbitrary code."""
    path = Path(path)
    magic = b""
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(2)
    if path.suffix.lower() in PICKLE_SUFFIXES or magic[:1] == b"\x80" or magic == b"PK":
        raise LandcoverError(f"is a pickle (pickle / joblib / torch.save): loading one runs arbitrary code, so "
                             f"landcover only reads {expected}", path)
