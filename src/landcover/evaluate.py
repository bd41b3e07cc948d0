"""Metrics and reports for a classifier's predictions: accuracy, per-class scores, kappa, confusion matrices.

Conventions for metrics that are undefined (0/0), stated once here and in every report:

- precision of a class never predicted and recall of a class absent from `y_true` are undefined: NaN in
  the `Report`, null in JSON, empty in CSV, "-" in text. F1 is 2TP / (2TP + FP + FN), so it is defined
  (0 when TP = 0) for every class that is present or predicted; a class neither present nor predicted
  has all three undefined.
- macro averages are plain means over the averaged classes, skipping undefined values; weighted averages
  weight by support, skipping undefined values. By default the averaged classes are those present in
  `y_true` or predicted (scikit-learn's default `labels`, and its `zero_division=np.nan`); with
  `ignore_absent=True` only those present in `y_true`. Macro recall is then the balanced accuracy.
- Cohen's kappa is undefined (NaN) when chance agreement is 1 (one class in both truth and prediction).
- the predicted class is the argmax of `probs`; ties go to the lower class id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landcover.atomic import replacing, write_text
from landcover.errors import LandcoverError
from landcover.plots import confusion_matrix

SCHEMA = "landcover.report/1"
"""The `schema` value of report.json; bumped when its keys change meaning."""
PROB_TOLERANCE = 1e-3
"""How far a row of `probs` may sum from 1 (float32 softmax over many classes drifts by ~1e-6)."""
TOP_CONFUSIONS = 10
"""How many of the largest off-diagonal cells a report lists by default."""
CONVENTIONS = (
    "undefined metrics (0/0) are null: precision of a never-predicted class, recall of a class absent from the "
    "truth; F1 = 2TP/(2TP+FP+FN) is 0, not null, when TP = 0. Macro and weighted averages skip nulls and run "
    "over `averaged_classes` (present in truth or predicted; only present when ignore_absent). Macro recall is "
    "the balanced accuracy. Predicted class = argmax of the probabilities, ties to the lower id."
)


@dataclass(eq=False)
class Report:
    """Every number of one evaluation, per class and overall, with the confusion matrix and the worst confusions."""

    class_names: list[str]
    confusion: np.ndarray
    accuracy: float
    kappa: float
    mean_probability: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    class_mean_probability: np.ndarray
    averaged: np.ndarray
    macro: dict[str, float]
    weighted: dict[str, float]
    worst_confusions: list[dict[str, Any]]
    ignore_absent: bool = False
    predictions: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def n_samples(self) -> int:
        """How many predictions were evaluated."""
        return int(self.confusion.sum())

    @property
    def support(self) -> np.ndarray:
        """True samples per class (confusion row sums)."""
        return self.confusion.sum(axis=1)

    @property
    def predicted(self) -> np.ndarray:
        """Predictions per class (confusion column sums)."""
        return self.confusion.sum(axis=0)

    @property
    def n_classes_present(self) -> int:
        """Classes with at least one true sample."""
        return int((self.support > 0).sum())

    @property
    def confusion_shares(self) -> np.ndarray:
        """The row-normalised confusion matrix (share of each true class; NaN rows for absent classes)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.confusion / self.support[:, None]

    def per_class(self) -> pd.DataFrame:
        """One row per class: id, support, predictions, precision, recall, F1, mean probability, averaged."""
        return pd.DataFrame({
            "class": self.class_names,
            "id": np.arange(len(self.class_names)),
            "support": self.support,
            "predicted": self.predicted,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_probability": self.class_mean_probability,
            "averaged": self.averaged,
        })

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as None) with the keys of report.json."""
        names = self.class_names
        return {
            "schema": SCHEMA,
            "n_samples": self.n_samples,
            "n_classes": len(names),
            "n_classes_present": self.n_classes_present,
            "n_classes_predicted": int((self.predicted > 0).sum()),
            "ignore_absent": self.ignore_absent,
            "averaged_classes": [n for n, a in zip(names, self.averaged, strict=True) if a],
            "accuracy": _num(self.accuracy),
            "kappa": _num(self.kappa),
            "mean_probability": _num(self.mean_probability),
            "macro": {k: _num(v) for k, v in self.macro.items()},
            "weighted": {k: _num(v) for k, v in self.weighted.items()},
            "per_class": [{k: _num(v) for k, v in row.items()} for row in self.per_class().to_dict("records")],
            "confusion": {"classes": list(names), "counts": self.confusion.tolist()},
            "worst_confusions": [dict(c) for c in self.worst_confusions],
            "conventions": CONVENTIONS,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild a report from `to_dict()` output or a read report.json (without the predictions table)."""
        if data.get("schema") != SCHEMA:
            raise LandcoverError(f"not a landcover report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        rows = data["per_class"]

        def column(key: str) -> np.ndarray:
            return np.array([_nan(r[key]) for r in rows], dtype=float)

        return cls(
            class_names=list(data["confusion"]["classes"]),
            confusion=np.array(data["confusion"]["counts"], dtype=np.int64).reshape(len(rows), len(rows)),
            accuracy=_nan(data["accuracy"]), kappa=_nan(data["kappa"]),
            mean_probability=_nan(data["mean_probability"]),
            precision=column("precision"), recall=column("recall"), f1=column("f1"),
            class_mean_probability=column("mean_probability"),
            averaged=np.array([bool(r["averaged"]) for r in rows]),
            macro={k: _nan(v) for k, v in data["macro"].items()},
            weighted={k: _nan(v) for k, v in data["weighted"].items()},
            worst_confusions=[dict(c) for c in data["worst_confusions"]],
            ignore_absent=bool(data["ignore_absent"]),
        )

    def summary(self, title: str = "") -> str:
        """A few lines for a person: headline numbers, a per-class table and the worst confusions."""
        k, averaged = len(self.class_names), int(self.averaged.sum())
        lines = [title] if title else []
        lines += [
            f"{self.n_samples} samples, {self.n_classes_present} of {k} classes present, "
            f"{int((self.predicted > 0).sum())} predicted",
            f"overall accuracy {_fmt(self.accuracy)}   Cohen's kappa {_fmt(self.kappa)}   "
            f"mean probability of the predicted class {_fmt(self.mean_probability)}",
            f"macro    precision {_fmt(self.macro['precision'])}  recall {_fmt(self.macro['recall'])}  "
            f"F1 {_fmt(self.macro['f1'])}   (over {averaged} classes; macro recall = balanced accuracy)",
            f"weighted precision {_fmt(self.weighted['precision'])}  recall {_fmt(self.weighted['recall'])}  "
            f"F1 {_fmt(self.weighted['f1'])}",
            "",
        ]
        width = max([5, *(len(n) for n in self.class_names)])
        lines.append(f"{'class':<{width}}  {'support':>7}  {'predicted':>9}  {'precision':>9}  {'recall':>6}  "
                     f"{'F1':>5}  {'mean p':>6}")
        for row in self.per_class().itertuples(index=False):
            mark = "" if row.averaged else "  (not averaged)"
            lines.append(f"{row[0]:<{width}}  {row.support:>7}  {row.predicted:>9}  {_fmt(row.precision):>9}  "
                         f"{_fmt(row.recall):>6}  {_fmt(row.f1):>5}  {_fmt(row.mean_probability, 2):>6}{mark}")
        lines.append("(precision = user's accuracy, recall = producer's accuracy; '-' = undefined, 0/0)")
        if self.worst_confusions:
            lines += ["", "worst confusions (true -> predicted: count, share of the true class):"]
            lines += [f"  {c['true']} -> {c['predicted']}: {c['count']} ({c['share']:.1%})"
                      for c in self.worst_confusions]
        return "\n".join(lines) + "\n"


def evaluate_predictions(y_true: np.ndarray, probs: np.ndarray, class_names: list[str],
                         chip_ids: list[str] | None = None, ignore_absent: bool = False,
                         top_confusions: int = TOP_CONFUSIONS) -> Report:
    """Score class probabilities against true class ids; see the module docstring for undefined metrics."""
    y_true, probs, class_names = _check(y_true, probs, class_names, chip_ids)
    k = len(class_names)
    y_pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(y_pred)), y_pred]
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_probability = np.bincount(y_pred, weights=confidence, minlength=k) / confusion.sum(axis=0)
    predictions = None
    if chip_ids is not None:
        predictions = pd.DataFrame({
            "chip_id": list(chip_ids),
            "true": [class_names[i] for i in y_true],
            "predicted": [class_names[i] for i in y_pred],
            "probability": confidence,
            "correct": y_true == y_pred,
        })
    return report_from_confusion(confusion, class_names, ignore_absent, top_confusions, float(confidence.mean()),
                                 class_probability, predictions)


def report_from_confusion(confusion: np.ndarray, class_names: list[str], ignore_absent: bool = False,
                          top_confusions: int = TOP_CONFUSIONS, mean_probability: float = math.nan,
                          class_mean_probability: np.ndarray | None = None,
                          predictions: pd.DataFrame | None = None) -> Report:
    """Every score of a (true, predicted) count matrix; without probabilities (a class map's cells against
    reference samples) the mean probabilities are NaN."""
    confusion = np.asarray(confusion, np.int64)
    k = len(class_names)
    tp, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    n = int(confusion.sum())
    if n == 0:
        raise LandcoverError("no samples to score")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted
        recall = tp / support
        f1 = 2 * tp / (2 * tp + (predicted - tp) + (support - tp))
    averaged = support > 0 if ignore_absent else (support > 0) | (predicted > 0)
    chance = float(support @ predicted) / n**2
    accuracy = float(tp.sum()) / n
    kappa = (accuracy - chance) / (1 - chance) if chance < 1 else math.nan
    metrics = {"precision": precision, "recall": recall, "f1": f1}
    macro = {name: _mean(values, averaged) for name, values in metrics.items()}
    weighted = {name: _mean(values, averaged, support) for name, values in metrics.items()}
    return Report(
        class_names=list(class_names), confusion=confusion, accuracy=accuracy, kappa=float(kappa),
        mean_probability=mean_probability, precision=precision, recall=recall, f1=f1,
        class_mean_probability=(np.full(k, math.nan) if class_mean_probability is None
                                else class_mean_probability),
        averaged=averaged, macro=macro, weighted=weighted,
        worst_confusions=_worst(confusion, list(class_names), top_confusions), ignore_absent=ignore_absent,
        predictions=predictions,
    )


def write_report(report: Report, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write report.json, confusion.json/.png, summary.txt, per_class.csv (and predictions.csv); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in
             ("report.json", "confusion.json", "confusion.png", "summary.txt", "per_class.csv")}
    write_text(paths["report.json"], json.dumps({"title": title, **report.to_dict()}, indent=2) + "\n")
    shares = [[_num(v) for v in row] for row in report.confusion_shares.tolist()]
    confusion = {"classes": report.class_names, "rows": "true class", "columns": "predicted class",
                 "counts": report.confusion.tolist(), "row_normalized": shares}
    write_text(paths["confusion.json"], json.dumps(confusion, indent=1) + "\n")
    confusion_matrix(report.confusion, report.class_names, paths["confusion.png"],
                     title=title or f"confusion matrix, {report.n_samples} samples")
    write_text(paths["summary.txt"], report.summary(title))
    _write_csv(report.per_class(), paths["per_class.csv"])
    if report.predictions is not None:
        paths["predictions.csv"] = out / "predictions.csv"
        _write_csv(report.predictions, paths["predictions.csv"])
    return paths


def read_report(path: str | Path) -> Report:
    """Read a report.json (or the folder holding one) back into a `Report`."""
    path = Path(path)
    path = path / "report.json" if path.is_dir() else path
    try:
        return Report.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LandcoverError(f"cannot read the report: {error}", path) from None


def _check(y_true: np.ndarray, probs: np.ndarray, class_names: list[str],
           chip_ids: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated copies of the inputs, or a one-line LandcoverError saying what is wrong."""
    names = [str(n) for n in class_names]
    if not names:
        raise LandcoverError("no class names given")
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise LandcoverError(f"class names repeat: {', '.join(duplicated)}")
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    if y.ndim != 1:
        raise LandcoverError(f"y_true must be one label id per sample (1-D), got shape {y.shape}")
    if y.size == 0:
        raise LandcoverError("nothing to evaluate: y_true is empty")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise LandcoverError(f"y_true must hold integer class ids, got dtype {y.dtype}")
    if p.ndim != 2 or p.shape != (len(y), len(names)):
        raise LandcoverError(f"probs must have shape (n_samples, n_classes) = ({len(y)}, {len(names)}), "
                             f"got {p.shape}")
    bad = np.flatnonzero((y < 0) | (y >= len(names)))
    if bad.size:
        raise LandcoverError(f"{bad.size} label ids outside 0..{len(names) - 1} "
                             f"(first: {y[bad[0]]} at row {bad[0]})")
    bad = np.flatnonzero(~np.all(np.isfinite(p) & (p >= -1e-6) & (p <= 1 + 1e-6), axis=1))
    if bad.size:
        raise LandcoverError(f"probs must lie in [0, 1]: {bad.size} rows do not (first: row {bad[0]})")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > PROB_TOLERANCE)
    if bad.size:
        raise LandcoverError(f"probs rows must sum to 1: {bad.size} rows do not (first: row {bad[0]} sums to "
                             f"{sums[bad[0]]:.4g}); pass softmax outputs, not logits")
    if chip_ids is not None:
        if len(chip_ids) != len(y):
            raise LandcoverError(f"{len(chip_ids)} chip ids for {len(y)} samples")
        if len(set(chip_ids)) != len(chip_ids):
            raise LandcoverError(f"chip ids repeat: {len(chip_ids) - len(set(chip_ids))} duplicates")
    return y.astype(np.int64), p, names


def _mean(values: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean (or weighted mean) of the defined values among the masked classes; NaN if none is defined."""
    keep = mask & ~np.isnan(values)
    if weights is not None:
        keep &= weights > 0
    if not keep.any():
        return math.nan
    return float(np.average(values[keep], weights=None if weights is None else weights[keep]))


def _worst(confusion: np.ndarray, names: list[str], top: int) -> list[dict[str, Any]]:
    """The `top` largest off-diagonal cells, largest count first (ties: larger share, then class order)."""
    support = confusion.sum(axis=1)
    cells = [(int(confusion[i, j]), confusion[i, j] / support[i], i, j)
             for i, j in zip(*np.nonzero(confusion), strict=True) if i != j]
    cells.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    return [{"true": names[i], "predicted": names[j], "count": count, "share": float(share)}
            for count, share, i, j in cells[:max(0, top)]]


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table atomically (NaN as an empty cell)."""
    with replacing(path) as tmp:
        frame.to_csv(tmp, index=False)


def _num(value: Any) -> Any:
    """A JSON-safe scalar: numpy to Python, NaN to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _nan(value: Any) -> float:
    """None back to NaN, numbers to float."""
    return math.nan if value is None else float(value)


def _fmt(value: float, digits: int = 3) -> str:
    """A number for text tables; '-' when undefined."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro F1 over the classes present in y or pred (the training-time summary score)."""
    scores = []
    for k in range(n_classes):
        tp = int(((pred == k) & (y == k)).sum())
        fp, fn = int(((pred == k) & (y != k)).sum()), int(((pred != k) & (y == k)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def share_better(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int, *, resamples: int = 1000,
                 seed: int = 0) -> float:
    """The share of paired bootstrap resamples of the chips (the same chips for both) in which predictions b score a
    higher macro F1 than predictions a: how sure a small validation split lets one be that b is better."""
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(resamples):
        pick = rng.integers(0, len(y), len(y))
        wins += macro_f1(y[pick], pred_b[pick], n_classes) > macro_f1(y[pick], pred_a[pick], n_classes)
    return wins / resamples
