"""Segmentation pairs as a dataset (#10): masks to class ids with unlabelled pixels ignored, joint augmentation, bad
pairs refused in one line; pixel scores from a confusion matrix."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
import torch

from landcover.errors import LandcoverError
from landcover.segment.data import IGNORE, PairDataset, class_pixels, symmetry
from landcover.segment.metrics import add_to_confusion, pixel_scores


def test_pairs_give_class_ids_with_unlabelled_pixels_ignored(zion_pairs):
    dataset = PairDataset(zion_pairs, "train")
    assert len(dataset) > 5 and dataset.n_classes == 8 and dataset.pairs is not None
    x, y = dataset[0]
    assert x.dtype == torch.float32 and x.shape == (4, 64, 64) and y.dtype == torch.int64 and y.shape == (64, 64)
    with rasterio.open(zion_pairs / dataset.frame["label_path"].iat[0]) as src:
        mask = src.read(1)
    assert np.array_equal(y.numpy(), mask.astype(np.int64) - 1)
    assert set(np.unique(y)) <= set(range(-1, 8))
    counts = class_pixels(dataset)
    labelled = sum(int((dataset.read(i)[1] >= 0).sum()) for i in range(len(dataset)))
    assert counts.sum() == labelled and counts[3] > 0  # Forest is most of the park


def test_augmentation_moves_image_and_mask_together():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    y = x[0].long()  # a mask equal to band 0: every symmetry must keep them equal
    seen = set()
    for g in range(8):
        ax, ay = symmetry(x, y, g)
        assert torch.equal(ax[0].long(), ay)
        seen.add(tuple(ay.flatten().tolist()))
    assert len(seen) == 8  # eight different symmetries


def test_bad_pairs_are_one_line(zion_pairs, tmp_path, park_chips):
    with pytest.raises(LandcoverError, match="holds class chips, not image/mask pairs"):
        PairDataset(park_chips, "train")
    copy = shutil.copytree(zion_pairs, tmp_path / "pairs")
    dataset = PairDataset(copy, "train", preload=False)
    mask_path = copy / dataset.frame["label_path"].iat[0]
    with rasterio.open(mask_path) as src:
        profile, mask = src.profile, src.read(1)
    with rasterio.open(mask_path, "w", **{**profile, "width": 32, "height": 32}) as dst:
        dst.write(mask[None, :32, :32])
    with pytest.raises(LandcoverError, match=r"mask is 1 x 32 x 32, its image 4 x 64 x 64"):
        dataset.read(0)
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.write(np.full((1, 64, 64), 12, np.uint8))
    with pytest.raises(LandcoverError, match=r"mask value 12 is beyond the scheme's 8 classes"):
        dataset.read(0)


def test_pixel_scores_from_a_confusion_matrix():
    target = np.array([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    predicted = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
    confusion = add_to_confusion(np.zeros((4, 4), np.int64), target, predicted)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    scores = pixel_scores(confusion, ["a", "b", "c", "d"])
    assert scores["pixels"] == 6 and scores["pixel_accuracy"] == pytest.approx(4 / 6)
    iou = {"a": 1 / 3, "b": 2 / 3, "c": 1 / 2}
    assert scores["iou"]["d"] is None  # absent and never predicted: left out of the mean
    assert all(scores["iou"][k] == pytest.approx(v) for k, v in iou.items())
    assert scores["miou"] == pytest.approx(np.mean(list(iou.values())))
    assert scores["fwiou"] == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 2 * 1 / 2) / 6)
    expected = (2 * 2 + 2 * 3 + 2 * 1) / 36
    assert scores["kappa"] == pytest.approx((4 / 6 - expected) / (1 - expected))
    assert scores["per_class"]["b"] == {"pixels": 2, "predicted": 3, "precision": pytest.approx(2 / 3),
                                        "recall": 1.0, "f1": pytest.approx(0.8), "iou": pytest.approx(2 / 3)}


def test_losses_ignore_unlabelled_pixels():
    from landcover.segment.losses import dice_loss, make_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=generator, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8), generator=generator)
    sparse = target.clone()
    sparse[:, :, 4:] = IGNORE
    for name in ("ce", "dice", "ce+dice"):
        loss = make_loss(name)
        # What the ignored pixels hold (their logits) changes nothing.
        changed = logits.detach().clone()
        changed[:, :, :, 4:] = 100.0
        assert torch.isclose(loss(logits, sparse), loss(changed, sparse))
        value = loss(logits, sparse)
        value.backward()
        assert logits.grad[:, :, :, 4:].abs().max() == 0 and logits.grad[:, :, :, :4].abs().max() > 0
        logits.grad = None
        assert loss(logits, torch.full_like(target, IGNORE)).item() == 0  # nothing labelled: nothing to learn
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(perfect, target).item() < 1e-6 and dice_loss(-perfect, target).item() > 0.9
    with pytest.raises(LandcoverError, match="unknown loss 'focal'"):
        make_loss("focal")
