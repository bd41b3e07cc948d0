"""Segmentation losses over per-pixel logits (n, classes, h, w) and class ids (n, h, w) with IGNORE for unlabelled
pixels: cross-entropy (optionally class-weighted), soft Dice, or their sum. Unlabelled pixels add nothing."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from landcover.errors import LandcoverError
from landcover.segment import LOSSES
from landcover.segment.data import IGNORE

DICE_SMOOTH = 1.0
"""Added to the Dice numerator and denominator, so a class absent from the batch and never predicted scores 1."""


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the mean over classes of the soft Dice coefficient between softmax probabilities and one-hot targets,
    over labelled pixels only."""
    labelled = (target != IGNORE).unsqueeze(1).to(logits.dtype)
    probs = torch.softmax(logits, dim=1) * labelled
    one_hot = nn.functional.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    one_hot = one_hot * labelled
    dims = (0, 2, 3)
    overlap = (probs * one_hot).sum(dims)
    sizes = probs.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * overlap + DICE_SMOOTH) / (sizes + DICE_SMOOTH)).mean()


def make_loss(name: str, class_weights: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                 torch.Tensor]:
    """The loss called `name` ('ce', 'dice' or 'ce+dice'); `class_weights` weight the cross-entropy."""
    if name not in LOSSES:
        raise LandcoverError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})")
    cross_entropy = nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != IGNORE).any():  # a batch of unlabelled pixels teaches nothing (CE would be NaN)
            return logits.sum() * 0
        parts = []
        if name in ("ce", "ce+dice"):
            parts.append(cross_entropy(logits, target))
        if name in ("dice", "ce+dice"):
            parts.append(dice_loss(logits, target))
        return sum(parts)

    return loss
