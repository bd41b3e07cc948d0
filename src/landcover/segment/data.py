"""Image/mask pairs of a `landcover chips --layout pairs` manifest as a torch dataset for segmentation.

A mask stores class id + 1, 0 where no class is known (the pairs convention); the dataset gives class ids with
IGNORE (-1) for those pixels, which the loss and the metrics leave out, so sparse labels (polygons covering part of
a tile) train correctly. Augmentation moves image and mask together through the eight symmetries of a square.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from landcover.datasets.chips import PRELOAD_BYTES, read_chip
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene
from landcover.manifest import read_manifest

IGNORE = -1
"""The target of an unlabelled pixel (mask value 0)."""


def read_pair(root: Path, image: str, mask: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An image (bands, h, w) in its stored dtype and its class ids (h, w) as int64, IGNORE where unlabelled."""
    pixels = read_chip(root / image)
    values = read_chip(root / mask)
    if values.shape[0] != 1 or values.shape[1:] != pixels.shape[1:]:
        raise LandcoverError(f"the mask is {values.shape[0]} x {values.shape[1]} x {values.shape[2]}, its image "
                             f"{pixels.shape[0]} x {pixels.shape[1]} x {pixels.shape[2]}: a mask is one band of the "
                             "image's size", root / mask)
    target = values[0].astype(np.int64) - 1
    if target.max(initial=IGNORE) >= n_classes:
        raise LandcoverError(f"mask value {int(target.max()) + 1} is beyond the scheme's {n_classes} classes (values "
                             f"are class id + 1, 0 = no label)", root / mask)
    return pixels, target


class PairDataset(torch.utils.data.Dataset):
    """The pairs of one split: (raw pixels as a float tensor (bands, h, w), class ids (h, w), IGNORE unlabelled)."""

    def __init__(self, manifest: str | Path, split: str | None = None, augment: bool = False,
                 preload: bool | None = None):
        path = Path(manifest)
        path = path / "manifest.parquet" if path.is_dir() else path
        self.path, self.root = path, path.parent
        frame, self.info = read_manifest(path)
        if "label_path" not in frame.columns:
            raise LandcoverError("the manifest holds class chips, not image/mask pairs: cut pairs with `landcover "
                                 "chips --layout pairs`", path)
        if split is not None:
            if frame["split"].isna().all():
                raise LandcoverError("the manifest has no split yet: run `landcover split` first", path)
            frame = frame[frame["split"] == split]
            if frame.empty:
                raise LandcoverError(f"split {split!r} has no pairs", path)
        self.frame: pd.DataFrame = frame.reset_index(drop=True)
        self.n_classes = len(self.info["scheme"]["classes"])
        self.augment = augment
        self.pairs: list[tuple[np.ndarray, np.ndarray]] | None = None
        if len(self.frame) and (preload or (preload is None and self._bytes() <= PRELOAD_BYTES)):
            self.pairs = [self.read(i) for i in range(len(self.frame))]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw image and class ids at a position."""
        if self.pairs is not None:
            return self.pairs[index]
        return read_pair(self.root, self.frame["path"].iat[index], self.frame["label_path"].iat[index],
                         self.n_classes)

    def _bytes(self) -> int:
        """Memory the split's pairs take once read (estimated from the first)."""
        image, target = self.read(0)
        return (image.nbytes + target.nbytes) * len(self.frame)

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.read(index)
        x, y = torch.from_numpy(image.astype(np.float32)), torch.from_numpy(target)
        if self.augment:
            x, y = symmetry(x, y, int(torch.randint(0, 8, ())))
        return x, y


def source_scene(dataset: PairDataset, name: str) -> Scene:
    """The imagery a manifest's scene `name` was cut from, its bands as the chips hold them."""
    for scene in dataset.info.get("scenes") or []:
        if scene.get("name") == name:
            paths = [Path(p) if Path(p).exists() else dataset.root / p for p in scene["paths"]]
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise LandcoverError(f"the pixel model reads the pairs' windows from the imagery they were cut from, "
                                     f"and {missing[0]} is not there", dataset.path)
            stack = Scene.open(paths)
            offsets: dict[int, int] = {}
            for pos, (fi, _) in enumerate(stack.band_sources):
                offsets.setdefault(fi, pos)
            return Scene.open(paths, [offsets[fi] + b for fi, b in scene["bands"]], name=name)
    raise LandcoverError(f"the manifest does not record scene {name!r} (cut the pairs with `landcover chips`)",
                         dataset.path)


def pair_windows(dataset: PairDataset, halo: int, bands: tuple[int, ...] | None = None
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Each pair's window read from its imagery with `halo` px around it: (index, pixels (bands, h, w), valid),
    `bands` (0-based chip bands) picked, or all."""
    scenes: dict[str, Scene] = {}
    frame = dataset.frame
    for i in range(len(frame)):
        name = frame["scene"].iat[i]
        if name not in scenes:
            scenes[name] = source_scene(dataset, name)
        scene = scenes[name]
        res, size = float(frame["res"].iat[i]), int(frame["size_px"].iat[i])
        left, _, _, top = frame.geometry.iat[i].bounds
        transform = Affine(res, 0, left - halo * res, 0, -res, top + halo * res)
        pixels, valid = scene.read_warped(CRS.from_user_input(frame["crs"].iat[i]), transform, size + 2 * halo,
                                          size + 2 * halo, Resampling.bilinear)
        yield i, pixels if bands is None else pixels[list(bands)], valid


def symmetry(x: torch.Tensor, y: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the eight symmetries of a square (g in 0..7: g % 4 quarter turns, then a flip for g >= 4), applied to
    an image (bands, h, w) and its mask (h, w) alike."""
    x, y = torch.rot90(x, g % 4, dims=(-2, -1)), torch.rot90(y, g % 4, dims=(-2, -1))
    if g >= 4:
        x, y = torch.flip(x, dims=(-1,)), torch.flip(y, dims=(-1,))
    return x, y


def class_pixels(dataset: PairDataset) -> np.ndarray:
    """Labelled pixels per class over a dataset (for class weights and reports)."""
    counts = np.zeros(dataset.n_classes, np.int64)
    for i in range(len(dataset)):
        target = dataset.read(i)[1]
        counts += np.bincount(target[target >= 0], minlength=dataset.n_classes)
    return counts
