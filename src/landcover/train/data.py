"""Torch datasets over a manifest: chips read from disk (files, or byte ranges of shards), their scaling statistics,
augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from landcover.datasets.chips import PRELOAD_BYTES, read_row, read_rows
from landcover.errors import LandcoverError
from landcover.manifest import read_manifest

SCALE_PERCENTILES = (2.0, 98.0)
"""Non-8-bit chips are scaled to [0, 1] between these per-band percentiles of the training chips."""


def scaling_for(frame: pd.DataFrame, root: Path, bands: tuple[int, ...], sample: int = 256,
                seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band (low, high) that map chips to [0, 1]: (0, 255) for 8-bit, else percentiles of a sample."""
    picks = frame.sample(min(sample, len(frame)), random_state=seed)
    chips = read_rows(root, picks)
    if chips[0].dtype == np.uint8:
        return tuple(0.0 for _ in bands), tuple(255.0 for _ in bands)
    stack = np.concatenate([c[list(bands)].reshape(len(bands), -1) for c in chips], axis=1).astype(np.float64)
    low, high = np.nanpercentile(stack, SCALE_PERCENTILES, axis=1)
    return tuple(map(float, low)), tuple(map(float, high))


class ChipDataset(torch.utils.data.Dataset):
    """The chips of one split of a manifest: (raw pixels as a float tensor, class id). A split that fits in
    PRELOAD_BYTES is read once; a larger one is read chip by chip (a shard chip is one seek and read)."""

    def __init__(self, manifest: str | Path, split: str | None = None, augment: bool = False,
                 frame: pd.DataFrame | None = None, preload: bool | None = None):
        path = Path(manifest)
        path = path / "manifest.parquet" if path.is_dir() else path
        self.root = path.parent
        if frame is None:
            frame, self.info = read_manifest(path)
        else:
            self.info = {}
        if split is not None:
            if "split" not in frame.columns or frame["split"].isna().all():
                raise LandcoverError("the manifest has no split yet: run `landcover split` first", path)
            frame = frame[frame["split"] == split]
            if frame.empty:
                raise LandcoverError(f"split {split!r} has no chips", path)
        frame = frame[frame["label_id"].notna()]
        self.frame = frame.reset_index(drop=True)
        self.labels = self.frame["label_id"].astype(int).to_numpy()
        self.augment = augment
        self.path = path
        self.chips: list[np.ndarray] | None = None
        if preload or (preload is None and len(self.frame) and self._bytes() <= PRELOAD_BYTES):
            self.chips = read_rows(self.root, self.frame)

    def read(self, index: int) -> np.ndarray:
        """The raw chip at a position, as stored (bands, height, width)."""
        return self.chips[index] if self.chips is not None else read_row(self.root, self.frame, index)

    def _bytes(self) -> int:
        """Memory the split's chips take once read (estimated from the first chip)."""
        return self.read(0).nbytes * len(self.frame)

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.read(index).astype(np.float32))
        if self.augment:  # flips and 90-degree turns: the eight symmetries of a square chip
            g = torch.randint(0, 8, ()).item()
            x = torch.rot90(x, g % 4, dims=(1, 2))
            if g >= 4:
                x = torch.flip(x, dims=(2,))
        return x, int(self.labels[index])
