"""What a config describes, prepared for every classification mode: the chips, the network (none for spectral),
the input pipeline and the spectral features."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from landcover.bundle import Bundle, InputSpec
from landcover.errors import LandcoverError
from landcover.models.backbones import build_model
from landcover.models.spectral import SpectralSpec
from landcover.train.config import TrainConfig
from landcover.train.data import ChipDataset, scaling_for
from landcover.train.spectral import spectral_spec


def chip_source(info: dict) -> dict:
    """How the chips were cut from imagery, so predict can cut a raster the same way: the chip format, the
    source bands ([file index, 1-based band] over the first scene's files) and the PNG stretch's percentiles."""
    scene = (info.get("scenes") or [{}])[0]
    stretch = scene.get("png_stretch")
    return {"format": info.get("format"), "source_files": [Path(p).name for p in scene.get("paths", [])],
            "source_bands": scene.get("bands"), "source_dtype": scene.get("dtype"),
            "stretch_percentiles": stretch["percentiles"] if stretch else None}


def scheme_classes(info: dict) -> list[dict]:
    """The classes a bundle lists ({'id', 'name', 'color'}, in label id order) from a manifest's scheme."""
    return [{"id": c["id"], "name": c["name"], "color": c["color"]} for c in info["scheme"]["classes"]]


def chip_facts(frame: pd.DataFrame, first: np.ndarray, rgb: tuple[int, int, int] | None, info: dict) -> dict:
    """The chips as a bundle records them: size, ground resolution, CRS, dtype, RGB positions, source."""
    return {"size_px": int(first.shape[-1]), "res": float(frame["res"].iat[0]), "crs": str(frame["crs"].iat[0]),
            "dtype": str(first.dtype), "rgb_bands": list(rgb) if rgb else None,
            "scenes": [s.get("name") for s in info.get("scenes", [])], **chip_source(info)}


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def input_bands(config: TrainConfig, n_bands: int, source: Path) -> tuple[tuple[int, ...], tuple[int, int, int] | None]:
    """The 0-based chip bands the network reads (config.bands, 1-based, else all) and the input positions of red,
    green and blue (config.rgb_bands, 1-based within those, else the first three); checked against the chips."""
    bands = tuple(b - 1 for b in config.bands) if config.bands else tuple(range(n_bands))
    if max(bands) >= n_bands or min(bands) < 0:
        raise LandcoverError(f"bands {config.bands} are out of range: the chips have {n_bands} bands", source)
    if config.rgb_bands and (len(config.rgb_bands) != 3 or len(set(config.rgb_bands)) != 3
                             or not all(1 <= b <= len(bands) for b in config.rgb_bands)):
        raise LandcoverError(f"--rgb-bands {' '.join(map(str, config.rgb_bands))}: give the positions of red, "
                             f"green and blue, 3 distinct values in 1..{len(bands)} (1-based, within the "
                             f"{len(bands)} input bands)")
    rgb = tuple(b - 1 for b in config.rgb_bands) if config.rgb_bands else ((0, 1, 2) if len(bands) >= 3 else None)
    return bands, rgb


def provenance(config: TrainConfig, manifest: Path, n_train: int, n_val: int) -> dict:
    """Where a bundle came from: the manifest (and its hash), the splits and their sizes, the config, the time."""
    return {"manifest": str(Path(config.manifest)), "manifest_sha256": _file_sha(manifest),
            "train_split": config.train_split, "val_split": config.val_split, "train_chips": n_train,
            "val_chips": n_val, "config": config.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class Splits:
    """The training and validation splits a config names (chips, or image/mask pairs), their classes, and batches of
    them: what every run prepares before its network."""

    def __init__(self, config: TrainConfig, dataset: type):
        self.config = config
        self.train = dataset(config.manifest, config.train_split, augment=config.augment)
        self.val = dataset(config.manifest, config.val_split)
        self.classes = scheme_classes(self.train.info)

    def loader(self, dataset: torch.utils.data.Dataset, shuffle: bool, epoch: int = 0,
               sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
        """Batches of a split; the shuffle order depends only on the seed and the epoch (and, under DDP, the rank's
        sampler)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size,
                                           shuffle=shuffle and sampler is None, sampler=sampler,
                                           num_workers=self.config.workers, generator=generator,
                                           persistent_workers=False)


class Run(Splits):
    """The chips, model, input pipeline and spectral features a classification config describes (shared by the
    training modes)."""

    def __init__(self, config: TrainConfig):
        super().__init__(config, ChipDataset)
        info = self.train.info
        names = {c["id"]: c["name"] for c in self.classes}
        for dataset in (self.train, self.val):
            pairs = set(zip(dataset.frame["label_id"].astype(int), dataset.frame["label"], strict=True))
            unknown = sorted(f"{name} ({i})" for i, name in pairs if names.get(i) != name)
            if unknown:
                raise LandcoverError(f"classes {unknown} are not in the manifest's scheme "
                                     f"{info['scheme'].get('name')!r}", dataset.path)
        present = sorted(set(self.train.frame["label"]))
        if len(present) < 2:
            raise LandcoverError(f"the {config.train_split!r} split holds one class ({', '.join(present) or 'none'}):"
                                 " a classifier needs chips of at least two", self.train.path)
        first = self.train.read(0)
        bands, rgb = input_bands(config, first.shape[0], self.train.path)
        self.rgb_bands = rgb
        low, high = scaling_for(self.train.frame, self.train.root, bands, seed=config.seed)
        self.spectral: SpectralSpec | None = None
        if config.mode in ("spectral", "fused"):
            first_path = self.train.root / self.train.frame["path"].iat[0]
            self.spectral = spectral_spec(info, first.shape[0], first_path, config.band_roles)
        if config.mode == "spectral":  # no network: the input spec only records the chips' bands and scaling
            self.model = None
            self.input = InputSpec(bands, low, high, (0.0,) * len(bands), (1.0,) * len(bands), first.shape[-1])
        else:
            n_out = len(self.classes) if config.mode == "finetune" else 0
            self.model, pre = build_model(config.architecture, n_out, len(bands), config.weights, rgb)
            self.input = InputSpec(bands, low, high, tuple(pre.mean), tuple(pre.std),
                                   config.input_size or pre.input_size, pre.interpolation)
        self.chip = chip_facts(self.train.frame, first, rgb, info)

    def bundle(self, kind: str, head: object | None = None) -> Bundle:
        """A bundle of the current model (and head) with its provenance."""
        c = self.config
        return Bundle(kind, "none" if kind == "spectral" else c.architecture, self.classes, self.input, self.chip,
                      provenance(c, self.train.path, len(self.train), len(self.val)),
                      c.weights if kind in ("features", "fused") else "none", model=self.model, head=head,
                      spectral=self.spectral if kind in ("spectral", "fused") else None)
