"""Training a land-cover classifier on a manifest: frozen features + a classical head, or fine-tuning."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from landcover.atomic import write_text
from landcover.bundle import Bundle
from landcover.data import ChipDataset, InputSpec, read_chip, scaling_for
from landcover.errors import LandcoverError

MODES = ("finetune", "features")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "exponential", "cosine")


@dataclass
class TrainConfig:
    """Everything a run needs; a YAML/JSON config file holds these keys, command-line flags override them."""

    manifest: str = ""
    runs: str = "runs"
    name: str | None = None
    mode: str = "finetune"
    architecture: str = "efficientnet-lite0"
    weights: str = "imagenet"
    bands: list[int] | None = None
    """1-based chip bands to use, in model input order (default: all)."""
    rgb_bands: list[int] | None = None
    """1-based positions, within `bands`, of red, green and blue (for pretrained first-layer filters)."""
    train_split: str = "train"
    val_split: str = "valid"
    input_size: int | None = None
    """Model input size (default: the backbone's pretraining size)."""
    head: str = "logreg"
    sample_frac: float = 1.0
    train_from: str = "all"
    freeze_bn: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    step_size: int = 10
    gamma: float = 0.5
    epochs: int = 10
    batch_size: int = 32
    workers: int = 0
    augment: bool = True
    class_weights: str = "none"
    early_stopping: int = 0
    checkpoint_every: int = 1
    seed: int = 0
    mlflow_uri: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict) -> TrainConfig:
        """A config file (YAML or JSON) with command-line overrides applied; unknown keys are an error."""
        data: dict = {}
        if path:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except FileNotFoundError:
                raise LandcoverError("no such config file", path) from None
            except yaml.YAMLError as exc:
                raise LandcoverError(f"not valid YAML/JSON ({exc.__class__.__name__})", path) from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LandcoverError(f"unknown config keys {unknown}", path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**data)
        config.check()
        return config

    def check(self) -> None:
        """Refuse settings that cannot work, before anything runs."""
        for value, allowed, what in ((self.mode, MODES, "mode"), (self.optimizer, OPTIMIZERS, "optimizer"),
                                     (self.schedule, SCHEDULES, "schedule"), (self.head, ("logreg", "rf"), "head"),
                                     (self.class_weights, ("none", "balanced"), "class_weights")):
            if value not in allowed:
                raise LandcoverError(f"{what} {value!r} is not one of {', '.join(allowed)}")
        if not self.manifest:
            raise LandcoverError("no manifest given (--manifest or 'manifest:' in the config)")
        if self.epochs < 1 or self.batch_size < 1 or not 0 < self.sample_frac <= 1:
            raise LandcoverError("epochs and batch_size must be >= 1, sample_frac in (0, 1]")

    def to_dict(self) -> dict:
        """The resolved config, as written to the run folder."""
        return dataclasses.asdict(self)


def run_dir(config: TrainConfig) -> Path:
    """The run's folder: runs/<name> (name defaults to mode-architecture-time)."""
    name = config.name or f"{config.mode}-{config.architecture}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(config.runs) / name


def chip_source(info: dict) -> dict:
    """How the chips were cut from imagery, so predict can cut a raster the same way: the chip format, the
    source bands ([file index, 1-based band] over the first scene's files) and the PNG stretch's percentiles."""
    scene = (info.get("scenes") or [{}])[0]
    stretch = scene.get("png_stretch")
    return {"format": info.get("format"), "source_files": [Path(p).name for p in scene.get("paths", [])],
            "source_bands": scene.get("bands"), "source_dtype": scene.get("dtype"),
            "stretch_percentiles": stretch["percentiles"] if stretch else None}


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class Run:
    """The data, model and input pipeline a config describes (shared by both training modes)."""

    def __init__(self, config: TrainConfig):
        from landcover.models import build_model

        self.config = config
        self.train = ChipDataset(config.manifest, config.train_split, augment=config.augment)
        self.val = ChipDataset(config.manifest, config.val_split)
        info = self.train.info
        self.classes = [{"id": c["id"], "name": c["name"], "color": c["color"]} for c in info["scheme"]["classes"]]
        names = {c["id"]: c["name"] for c in self.classes}
        for dataset in (self.train, self.val):
            pairs = set(zip(dataset.frame["label_id"].astype(int), dataset.frame["label"], strict=True))
            unknown = sorted(f"{name} ({i})" for i, name in pairs if names.get(i) != name)
            if unknown:
                raise LandcoverError(f"classes {unknown} are not in the manifest's scheme "
                                     f"{info['scheme'].get('name')!r}", dataset.path)
        first = read_chip(self.train.root / self.train.frame["path"].iat[0])
        bands = tuple(b - 1 for b in config.bands) if config.bands else tuple(range(first.shape[0]))
        if max(bands) >= first.shape[0] or min(bands) < 0:
            raise LandcoverError(f"bands {config.bands} are out of range: the chips have {first.shape[0]} bands",
                                 self.train.path)
        rgb = tuple(b - 1 for b in config.rgb_bands) if config.rgb_bands else (
            (0, 1, 2) if len(bands) >= 3 else None)
        self.rgb_bands = rgb
        n_out = len(self.classes) if config.mode == "finetune" else 0
        self.model, pre = build_model(config.architecture, n_out, len(bands), config.weights, rgb)
        low, high = scaling_for(self.train.frame, self.train.root, bands, seed=config.seed)
        self.input = InputSpec(bands, low, high, tuple(pre.mean), tuple(pre.std),
                               config.input_size or pre.input_size, pre.interpolation)
        self.chip = {"size_px": int(first.shape[-1]), "res": float(self.train.frame["res"].iat[0]),
                     "crs": str(self.train.frame["crs"].iat[0]), "dtype": str(first.dtype),
                     "rgb_bands": list(rgb) if rgb else None,
                     "scenes": [s.get("name") for s in info.get("scenes", [])], **chip_source(info)}

    def bundle(self, kind: str, head: object | None = None) -> Bundle:
        """A bundle of the current model (and head) with its provenance."""
        c = self.config
        provenance = {"manifest": str(Path(c.manifest)), "manifest_sha256": _file_sha(self.train.path),
                      "train_split": c.train_split, "val_split": c.val_split,
                      "train_chips": len(self.train), "val_chips": len(self.val), "config": c.to_dict(),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return Bundle(kind, c.architecture, self.classes, self.input, self.chip, provenance,
                      c.weights if kind == "features" else "none", model=self.model, head=head)

    def loader(self, dataset: ChipDataset, shuffle: bool, epoch: int = 0,
               sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
        """Batches of raw chips; the shuffle order depends only on the seed and the epoch."""
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size,
                                           shuffle=shuffle and sampler is None, sampler=sampler,
                                           num_workers=self.config.workers, generator=generator,
                                           persistent_workers=False)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train as the config says; returns the run folder (with the bundle in bundle/)."""
    out = run_dir(config)
    if out.exists() and not resume and (out / "config.yaml").exists():
        raise LandcoverError("the run folder exists: pass --resume to continue it, or choose another --name", out)
    if resume and not (out / "checkpoints" / "last").exists():
        raise LandcoverError("nothing to resume (no checkpoints/last)", out)
    torch.manual_seed(config.seed)
    run = Run(config)
    rank = int(os.environ.get("RANK", 0))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    if config.mode == "features":
        from landcover.training_features import fit_features

        fit_features(run, out, progress)
    else:
        from landcover.finetune import fine_tune

        fine_tune(run, out, resume, progress)
    if config.mlflow_uri and rank == 0:
        from landcover.tracking import log_to_mlflow

        run_id = log_to_mlflow(config.mlflow_uri, out, config.to_dict(), read_metrics(out))
        if progress:
            print(f"logged to MLflow ({config.mlflow_uri}): run {run_id}")
    return out


def write_metrics(out: Path, rows: list[dict]) -> None:
    """metrics.csv (one row per epoch) and curves.png."""
    from landcover.plots import training_curves

    fields = list(rows[0])
    lines = [",".join(fields)] + [",".join(_cell(r.get(f)) for f in fields) for r in rows]
    write_text(out / "metrics.csv", "\n".join(lines) + "\n")
    training_curves(rows, out / "curves.png", title=out.name)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def read_metrics(out: Path) -> list[dict]:
    """metrics.csv back as rows of numbers."""
    path = out / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str) -> float | str | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro F1 over the classes present in y or pred (the training-time summary score)."""
    scores = []
    for k in range(n_classes):
        tp = int(((pred == k) & (y == k)).sum())
        fp, fn = int(((pred == k) & (y != k)).sum()), int(((pred != k) & (y == k)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def dump_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(data, indent=2, default=str))
