"""A training run's settings: the keys of a config file, checked before anything runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from landcover.bounds import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SHARE, WHOLE, Bound
from landcover.errors import LandcoverError
from landcover.segment import LOSSES

TASKS = ("classification", "segmentation", "pixels")
MODES = ("finetune", "features", "spectral", "fused", "auto")
"""Classification modes: the whole network; frozen features + a head; spectral features + a head; both into one
head; and auto (spectral, fused, spectral-gbt and finetune compared on the validation split)."""
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "exponential", "cosine")
HEADS = ("logreg", "rf", "gbt")
"""Classical heads: logistic regression, random forest, gradient-boosted trees (classes weighted by frequency)."""
BOUNDS: dict[str, Bound] = {
    "input_size": Bound(8, 2048, integer=True), "sample_frac": SHARE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
    "momentum": FRACTION, "step_size": COUNT, "gamma": POSITIVE, "epochs": COUNT, "batch_size": COUNT,
    "workers": WHOLE, "early_stopping": WHOLE, "checkpoint_every": COUNT, "seed": WHOLE, "pixels_per_class": COUNT,
}
"""The valid range of every numeric setting (the CLI checks flags against the same ranges)."""


@dataclass
class TrainConfig:
    """Everything a training run needs: a YAML/JSON config file holds these keys, `train_model(**settings)` and
    command-line flags override them; `TrainConfig.load(path, overrides)` reads and checks one."""

    manifest: str = ""
    runs: str = "runs"
    name: str | None = None
    task: str = "classification"
    """'classification' (a class per chip), 'segmentation' (a network, a class per pixel, from image/mask pairs) or
    'pixels' (a classical head on per-pixel filter features, from image/mask pairs)."""
    mode: str = "finetune"
    architecture: str | None = None
    """Classification: the backbone (default efficientnet-lite0); segmentation: the decoder (unet, fpn,
    deeplabv3plus; default unet)."""
    encoder: str = "efficientnet-lite0"
    """Segmentation: the decoder's backbone."""
    loss: str = "ce+dice"
    """Segmentation: ce, dice or ce+dice."""
    weights: str = "imagenet"
    bands: list[int] | None = None
    """1-based chip bands to use, in model input order (default: all)."""
    rgb_bands: list[int] | None = None
    """1-based positions, within `bands`, of red, green and blue (for pretrained first-layer filters)."""
    train_split: str = "train"
    val_split: str = "valid"
    input_size: int | None = None
    """Model input size (default: the backbone's pretraining size)."""
    head: str | None = None
    """features, spectral, fused, pixels: 'logreg', 'rf' or 'gbt' (default rf for spectral and pixels, else
    logreg)."""
    scales: list[str] | None = None
    """pixels: the filters' scales, lengths such as '30m' (default 1, 2, 4 and 8 pixels of the imagery)."""
    pixels_per_class: int = 20000
    """pixels: labelled pixels sampled per class for training (all of a class that has fewer)."""
    band_roles: list[str] | None = None
    """spectral, fused: each chip band's role (blue, green, red, nir, swir1, swir2, '-'); default: what the chips'
    source files say."""
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
    onnx: bool = True
    """Write the bundle's model.onnx at the end (when onnx and onnxruntime are installed): predict's default
    runtime then runs it on onnxruntime."""
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
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LandcoverError(f"unknown settings {unknown} (see TrainConfig for the keys)")
        data.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**data)
        config.check()
        return config

    def check(self) -> None:
        """Refuse settings that cannot work, before anything runs."""
        if self.architecture is None:
            self.architecture = {"segmentation": "unet", "pixels": "filters"}.get(self.task, "efficientnet-lite0")
        if self.head is None:
            self.head = "rf" if self.task == "pixels" or self.mode == "spectral" else "logreg"
        from landcover.models.spectral import check_roles  # here: landcover.models imports torch, the CLI need not

        check_roles(self.band_roles or ())
        if self.task == "segmentation" and self.mode != "finetune":
            raise LandcoverError("segmentation trains the whole network: leave out --mode (features is for "
                                 "classification)")
        if self.task == "pixels" and self.mode != "finetune":
            raise LandcoverError("--task pixels fits a head (--head) on per-pixel features: leave out --mode")
        for value, allowed, what in ((self.task, TASKS, "task"), (self.loss, LOSSES, "loss"),
                                     (self.mode, MODES, "mode"), (self.optimizer, OPTIMIZERS, "optimizer"),
                                     (self.schedule, SCHEDULES, "schedule"), (self.head, HEADS, "head"),
                                     (self.class_weights, ("none", "balanced"), "class_weights")):
            if value not in allowed:
                raise LandcoverError(f"{what} {value!r} is not one of {', '.join(allowed)}")
        if not self.manifest:
            raise LandcoverError("no manifest given (--manifest or 'manifest:' in the config)")
        for key, bound in BOUNDS.items():
            if getattr(self, key) is not None:
                bound.check(getattr(self, key), key)
        for key in ("bands", "rgb_bands"):
            for band in getattr(self, key) or ():
                COUNT.check(band, f"{key} (1-based)")

    def to_dict(self) -> dict:
        """The resolved config, as written to the run folder."""
        return dataclasses.asdict(self)
