"""Networks for land-cover chips: a timm backbone for any band count with the preprocessing its weights expect,
how deep to train it, and its pooled features.

Four architectures, each a timm model (``ARCHITECTURES``). :func:`build_model` returns the network and
the :class:`Preprocess` its weights were trained with. Weights are ``"none"`` (random init, seeded by
the caller), ``"imagenet"`` or a local state-dict file of the same timm architecture.
Band adaptation: see `landcover.models.weights`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from landcover.errors import LandcoverError
from landcover.models.weights import (
    ARCHITECTURES,
    TIMM_OPTIONS,
    imagenet_state,
    import_timm,
    lite0_state_from_package,
    load_state,
    load_weights_file,
)

_BATCH_NORMS: Final = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class Preprocess:
    """Per-band normalisation, in the model's input band order, for inputs scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    interpolation: str

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(x - mean) / std`` over the band axis of a ``(..., bands, H, W)`` tensor."""
        if x.shape[-3] != len(self.mean):
            msg = f"input has {x.shape[-3]} bands, the model expects {len(self.mean)}"
            raise LandcoverError(msg)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (lists for the per-band tuples)."""
        values = asdict(self)
        return {**values, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            input_size=int(values["input_size"]),
            interpolation=str(values["interpolation"]),
        )


# EfficientNet-Lite's own preprocessing (TF "inception style", kept for post-quantisation): (x*255 - 127) / 128.
_LITE0_PREPROCESS: Final = Preprocess((127 / 255,) * 3, (128 / 255,) * 3, 224, "bicubic")


def build_model(
    arch: str,
    num_classes: int,
    in_chans: int = 3,
    weights: str = "imagenet",
    rgb_bands: tuple[int, int, int] | None = (0, 1, 2),
) -> tuple[nn.Module, Preprocess]:
    """Build a timm backbone with a ``num_classes`` head (0: none) for ``in_chans`` bands, and its preprocessing."""
    if arch not in ARCHITECTURES:
        msg = f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        raise LandcoverError(msg)
    if num_classes < 0 or in_chans < 1:
        msg = f"need num_classes >= 0 (0: no classifier) and in_chans >= 1, got {num_classes} and {in_chans}"
        raise LandcoverError(msg)
    bands = check_rgb_bands(rgb_bands, in_chans)
    timm = import_timm()
    options = TIMM_OPTIONS.get(arch, {})
    model = timm.create_model(ARCHITECTURES[arch], num_classes=num_classes, in_chans=in_chans, **options)
    preprocess = band_preprocess(arch, model.pretrained_cfg, in_chans, bands)
    if weights == "none":
        return model, preprocess
    rgb_filters = weights == "imagenet"
    if rgb_filters:
        source = f"{arch} ImageNet weights"
        state = imagenet_state(arch, model)
    else:
        path = Path(weights)
        if not path.is_file():
            raise LandcoverError("weights must be 'none', 'imagenet' or an existing weights file", path)
        source = str(path)
        state = load_weights_file(path)
        if arch == "efficientnet-lite0" and "_conv_stem.weight" in state:
            state = lite0_state_from_package(state)
    load_state(model, state, rgb_bands=bands, source=source, rgb_filters=rgb_filters)
    return model, preprocess


def set_trainable(model: nn.Module, train_from: str = "all", freeze_bn: bool = False) -> list[str]:
    """Train ``train_from`` and everything after it in forward order; freeze the rest; return trainable names.

    ``"head"`` is the classifier; ``"last-block"`` is the module of timm's last feature level
    (``layer4`` for ResNets, ``blocks.6`` for MobileNetV2 and EfficientNet-Lite0) onward; ``"all"``
    is everything; any other value is a module name (``layer3``, ``blocks.5.2``). BatchNorm layers
    in the frozen part, and every BatchNorm layer with ``freeze_bn``, stay in eval mode: call
    :func:`apply_bn_mode` again after each ``model.train()``.
    """
    names = [name for name, _ in model.named_parameters()]
    if train_from == "all":
        start = 0
    else:
        prefix = {"head": model.pretrained_cfg["classifier"], "last-block": model.feature_info[-1]["module"]}.get(
            train_from, train_from
        )
        start = next((i for i, name in enumerate(names) if name.startswith(prefix + ".")), -1)
        if start < 0:
            modules = [name for name, module in model.named_children() if any(True for _ in module.parameters())]
            msg = (
                f"cannot train from {train_from!r}: use head, last-block, all or a module name "
                f"with parameters, e.g. {', '.join(modules)}"
            )
            raise LandcoverError(msg)
    for i, parameter in enumerate(model.parameters()):
        parameter.requires_grad_(i >= start)
    apply_bn_mode(model, freeze_bn)
    return names[start:]


def apply_bn_mode(model: nn.Module, freeze_bn: bool = False) -> None:
    """Put frozen BatchNorm layers (all of them with ``freeze_bn``) in eval mode; call after ``model.train()``."""
    for module in model.modules():
        if isinstance(module, _BATCH_NORMS):
            parameters = list(module.parameters(recurse=False))
            frozen = bool(parameters) and not any(p.requires_grad for p in parameters)
            if freeze_bn or frozen:
                module.eval()


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logits features of a batch, shape ``(batch, feature_dim(model))``."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def feature_dim(model: nn.Module) -> int:
    """Length of the pooled pre-logits feature vector."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def check_rgb_bands(rgb_bands: tuple[int, int, int] | None, in_chans: int) -> tuple[int, int, int] | None:
    """Validate the input positions of red, green and blue (None below 3 bands: no room for them)."""
    if rgb_bands is None or in_chans < 3:
        return None
    bands = tuple(int(b) for b in rgb_bands)
    if len(bands) != 3 or len(set(bands)) != 3 or not all(0 <= b < in_chans for b in bands):
        msg = f"rgb_bands must be 3 distinct band positions in 0..{in_chans - 1}, got {rgb_bands}"
        raise LandcoverError(msg)
    return bands[0], bands[1], bands[2]


def band_preprocess(arch: str, pretrained_cfg: dict[str, Any], in_chans: int,
                    rgb_bands: tuple[int, int, int] | None) -> Preprocess:
    """The preprocessing of the architecture's ImageNet weights (timm's pretrained config; Lite0's own), spread
    over `in_chans` bands."""
    return _adapt_preprocess(_pretrained_preprocess(arch, pretrained_cfg), in_chans, rgb_bands)


def _pretrained_preprocess(arch: str, cfg: dict[str, Any]) -> Preprocess:
    """The RGB preprocessing the architecture's ImageNet weights were trained with."""
    if arch == "efficientnet-lite0":
        return _LITE0_PREPROCESS
    return Preprocess(tuple(cfg["mean"]), tuple(cfg["std"]), int(cfg["input_size"][-1]), str(cfg["interpolation"]))


def _adapt_preprocess(rgb: Preprocess, in_chans: int, rgb_bands: tuple[int, int, int] | None) -> Preprocess:
    """Spread RGB statistics over ``in_chans`` bands; other bands get the mean of the RGB values."""
    mean = [sum(rgb.mean) / 3] * in_chans
    std = [sum(rgb.std) / 3] * in_chans
    if rgb_bands is not None:
        for channel, band in enumerate(rgb_bands):
            mean[band], std[band] = rgb.mean[channel], rgb.std[channel]
    return Preprocess(tuple(mean), tuple(std), rgb.input_size, rgb.interpolation)
