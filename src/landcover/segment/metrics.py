"""Per-pixel scores of a segmentation: a confusion matrix accumulated over batches (unlabelled pixels left out),
and what the field reports from it."""

from __future__ import annotations

import numpy as np

from landcover.segment.data import IGNORE


def add_to_confusion(confusion: np.ndarray, target: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Add pixels to a (true, predicted) count matrix in place; pixels whose target is IGNORE are left out."""
    n = confusion.shape[0]
    target, predicted = np.asarray(target).ravel(), np.asarray(predicted).ravel()
    keep = target != IGNORE
    confusion += np.bincount(target[keep] * n + predicted[keep], minlength=n * n).reshape(n, n)
    return confusion


def pixel_scores(confusion: np.ndarray, class_names: list[str]) -> dict:
    """Pixel accuracy, per-class precision (user's accuracy), recall (producer's), F1 and IoU, mean IoU over the
    classes present in the truth or predicted, frequency-weighted IoU and Cohen's kappa, from a confusion matrix
    of pixel counts (rows: truth)."""
    confusion = np.asarray(confusion, np.float64)
    total = confusion.sum()
    hits = np.diag(confusion)
    truth, predicted = confusion.sum(1), confusion.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = hits / predicted
        recall = hits / truth
        f1 = 2 * hits / (truth + predicted)
        iou = hits / (truth + predicted - hits)
    present = (truth + predicted) > 0
    expected = (truth * predicted).sum() / total ** 2 if total else np.nan
    accuracy = hits.sum() / total if total else np.nan
    kappa = (accuracy - expected) / (1 - expected) if total and expected < 1 else np.nan
    per_class = {name: {"pixels": int(truth[i]), "predicted": int(predicted[i]), "precision": _num(precision[i]),
                        "recall": _num(recall[i]), "f1": _num(f1[i]), "iou": _num(iou[i])}
                 for i, name in enumerate(class_names)}
    return {"pixels": int(total), "pixel_accuracy": _num(accuracy),
            "miou": _num(np.mean(iou[present])) if present.any() else None,
            "fwiou": _num((truth[present] * iou[present]).sum() / total) if total else None,
            "kappa": _num(kappa), "iou": {name: per_class[name]["iou"] for name in class_names},
            "per_class": per_class, "confusion": confusion.astype(np.int64).tolist()}


def _num(value: float) -> float | None:
    """A float for JSON, None where undefined (0/0)."""
    return None if value is None or not np.isfinite(value) else float(value)
