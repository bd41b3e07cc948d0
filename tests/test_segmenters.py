"""Segmentation networks (#10): smp decoders over timm encoders, with the classifiers' offline ImageNet weights
and band adaptation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from landcover.errors import LandcoverError
from landcover.models import build_model
from landcover.models.segmenters import build_segmenter, import_smp

import_smp()  # a dependency: its absence is a failure, not a skip
torch.set_num_threads(2)


def classifier_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's last block output: what the features-only encoder's deepest level is."""
    return model.blocks(model.bn1(model.conv_stem(x)))


def test_the_encoder_carries_the_classifiers_imagenet_weights():
    net, pre = build_segmenter("unet", "efficientnet-lite0", 8, 4, "imagenet", (2, 1, 0))
    classifier, classifier_pre = build_model("efficientnet-lite0", 0, 4, "imagenet", (2, 1, 0))
    assert pre == classifier_pre  # Lite0's own normalisation, spread over the 4 bands the same way
    net.eval()
    classifier.eval()
    x = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        deepest = net.encoder.model(x)[-1]
        assert torch.allclose(deepest, classifier_features(classifier, x), atol=1e-5)
        # ImageNet filters, not random ones: a random encoder gives other features.
        random, _ = build_segmenter("unet", "efficientnet-lite0", 8, 4, "none")
        random.eval()
        assert not torch.allclose(random.encoder.model(x)[-1], deepest, atol=1e-2)


@pytest.mark.parametrize("decoder", ["unet", "fpn", "deeplabv3plus"])
@pytest.mark.parametrize("bands", [1, 4, 7])
def test_every_decoder_gives_per_pixel_logits_for_any_band_count(decoder, bands):
    net, pre = build_segmenter(decoder, "efficientnet-lite0", 5, bands, "imagenet",
                               (2, 1, 0) if bands >= 3 else None)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, bands, 64, 64))
    assert out.shape == (2, 5, 64, 64) and torch.isfinite(out).all() and len(pre.mean) == bands


def test_a_classifier_weights_file_loads_into_the_encoder(tmp_path):
    classifier, _ = build_model("resnet18", 6, 3, "none")
    torch.nn.init.normal_(classifier.conv1.weight)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, tmp_path / "r18.safetensors")
    net, _ = build_segmenter("fpn", "resnet18", 2, 3, str(tmp_path / "r18.safetensors"))
    assert torch.equal(net.encoder.model.conv1.weight, classifier.conv1.weight)  # 3 bands in order: as they are
    net4, _ = build_segmenter("fpn", "resnet18", 2, 4, str(tmp_path / "r18.safetensors"), (0, 1, 2))
    assert net4.encoder.model.conv1.weight.shape[1] == 4  # RGB filters adapted to 4 bands


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(LandcoverError, match="unknown decoder 'segformer'; choose one of unet, fpn, deeplabv3plus"):
        build_segmenter("segformer", "efficientnet-lite0", 2)
    with pytest.raises(LandcoverError, match="unknown encoder 'vit'"):
        build_segmenter("unet", "vit", 2)
    with pytest.raises(LandcoverError, match="num_classes >= 1"):
        build_segmenter("unet", "resnet18", 0, weights="none")
    other, _ = build_model("mobilenetv2", 2, 3, "none")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "m.safetensors")
    with pytest.raises(LandcoverError, match=r"m.safetensors: not weights of this encoder: \d+ tensors missing"):
        build_segmenter("unet", "resnet18", 2, weights=str(tmp_path / "m.safetensors"))
