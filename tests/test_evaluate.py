"""Evaluation metrics against scikit-learn, undefined-metric conventions, written reports and input errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics

from landcover.errors import LandcoverError
from landcover.evaluate import Report, evaluate_predictions, read_report, write_report


def one_hot(y_pred, k: int, confidence: float = 0.7) -> np.ndarray:
    """Probabilities whose argmax is `y_pred`: `confidence` on it, the rest spread evenly."""
    y_pred = np.asarray(y_pred)
    probs = np.full((len(y_pred), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(y_pred)), y_pred] = confidence
    return probs


def random_case(seed: int, n: int, k: int, drop_true: int | None = None, drop_pred: int | None = None):
    """Random labels and softmax probabilities, optionally with a class absent from truth or never predicted."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    if drop_true is not None:
        y[y == drop_true] = (drop_true + 1) % k
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    if drop_pred is not None:
        logits[:, drop_pred] -= 50
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y, (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def sklearn_scores(y, y_pred, labels, average):
    """scikit-learn's precision, recall, F1 with undefined values as NaN (left out of averages)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metrics.precision_recall_fscore_support(y, y_pred, labels=labels, average=average,
                                                       zero_division=np.nan)


def assert_matches_sklearn(report: Report, y, probs, ignore_absent: bool = False) -> None:
    """Every metric of `report` equals scikit-learn's on the same labels."""
    k = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    close = {"rtol": 1e-12, "atol": 1e-12, "equal_nan": True}
    np.testing.assert_array_equal(report.confusion, metrics.confusion_matrix(y, y_pred, labels=range(k)))
    assert report.accuracy == pytest.approx(metrics.accuracy_score(y, y_pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = metrics.cohen_kappa_score(y, y_pred)
        balanced = metrics.balanced_accuracy_score(y, y_pred)
    np.testing.assert_allclose(report.kappa, kappa, **close)
    precision, recall, _, support = sklearn_scores(y, y_pred, list(range(k)), None)
    np.testing.assert_allclose(report.precision, precision, **close)
    np.testing.assert_allclose(report.recall, recall, **close)
    np.testing.assert_array_equal(report.support, support)
    # F1 is defined for every class present or predicted: scikit-learn's own default gives the same numbers
    seen = (report.support > 0) | (report.predicted > 0)
    np.testing.assert_allclose(report.f1[seen], metrics.f1_score(y, y_pred, labels=np.flatnonzero(seen),
                                                                 average=None), **close)
    assert np.isnan(report.f1[~seen]).all()
    labels = np.unique(y) if ignore_absent else np.union1d(y, y_pred)
    for average, ours in (("macro", report.macro), ("weighted", report.weighted)):
        expected = sklearn_scores(y, y_pred, labels, average)[:3]
        np.testing.assert_allclose([ours["precision"], ours["recall"], ours["f1"]], expected, **close)
    np.testing.assert_allclose(report.macro["recall"], balanced, **close)
    if not ignore_absent:
        np.testing.assert_allclose(report.macro["f1"], metrics.f1_score(y, y_pred, average="macro"), **close)
    confidence = probs.max(axis=1)
    np.testing.assert_allclose(report.mean_probability, confidence.mean(), rtol=1e-6)
    for c in range(k):
        expected = confidence[y_pred == c].mean() if (y_pred == c).any() else math.nan
        np.testing.assert_allclose(report.class_mean_probability[c], expected, rtol=1e-6, equal_nan=True)


NAMES = ["water", "forest", "shrub", "barren"]


@pytest.mark.parametrize(("seed", "n", "k", "drop_true", "drop_pred"), [
    (0, 500, 4, None, None), (1, 37, 7, None, None), (2, 3000, 20, 5, 11), (3, 200, 6, 2, 2), (4, 1, 3, None, None),
])
@pytest.mark.parametrize("ignore_absent", [False, True])
def test_random_cases_match_sklearn(seed, n, k, drop_true, drop_pred, ignore_absent):
    y, probs = random_case(seed, n, k, drop_true, drop_pred)
    report = evaluate_predictions(y, probs, [f"c{i}" for i in range(k)], ignore_absent=ignore_absent)
    assert_matches_sklearn(report, y, probs, ignore_absent)
    assert report.n_samples == n


def test_class_never_predicted():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([0, 0, 1, 0, 1, 2, 1, 1])  # barren (3) is never predicted
    report = evaluate_predictions(y, one_hot(pred, 4), NAMES)
    assert_matches_sklearn(report, y, one_hot(pred, 4))
    assert report.predicted[3] == 0
    assert math.isnan(report.precision[3]) and report.recall[3] == 0 and report.f1[3] == 0
    assert report.averaged.all()
    assert report.macro["precision"] == pytest.approx((2 / 3 + 1 / 4 + 1) / 3)  # the undefined one skipped
    assert report.macro["recall"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    row = report.to_dict()["per_class"][3]
    assert row["precision"] is None and row["mean_probability"] is None and row["recall"] == 0


def test_class_absent_from_truth():
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 2, 1, 1, 1])  # shrub (2) predicted once, never true; barren (3) neither
    probs = one_hot(pred, 4)
    report = evaluate_predictions(y, probs, NAMES)
    assert_matches_sklearn(report, y, probs)
    assert report.n_classes_present == 2
    assert math.isnan(report.recall[2]) and report.precision[2] == 0 and report.f1[2] == 0
    assert np.isnan([report.precision[3], report.recall[3], report.f1[3]]).all()
    assert report.averaged.tolist() == [True, True, True, False]
    assert report.macro["f1"] == pytest.approx((0.8 + 1 + 0) / 3)
    strict = evaluate_predictions(y, probs, NAMES, ignore_absent=True)
    assert_matches_sklearn(strict, y, probs, ignore_absent=True)
    assert strict.averaged.tolist() == [True, True, False, False]
    assert strict.macro["f1"] == pytest.approx(0.9)
    assert strict.accuracy == report.accuracy == pytest.approx(5 / 6)
    data = report.to_dict()
    assert data["averaged_classes"] == ["water", "forest", "shrub"]
    assert (data["n_classes"], data["n_classes_present"], data["n_classes_predicted"]) == (4, 2, 3)


def test_perfect_predictions():
    y = np.array([0, 1, 2, 3, 3, 2, 1, 0, 0])
    report = evaluate_predictions(y, one_hot(y, 4, 1.0), NAMES)
    assert report.accuracy == report.kappa == 1.0
    assert report.macro == report.weighted == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert report.mean_probability == 1.0
    assert report.worst_confusions == []
    np.testing.assert_array_equal(report.confusion, np.diag([3, 2, 2, 2]))


def test_kappa_known_example():
    # Cohen's textbook table: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o = 0.7, p_e = 0.5, kappa = 0.4
    y = np.array([0] * 25 + [1] * 25)
    pred = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    report = evaluate_predictions(y, one_hot(pred, 2), ["yes", "no"])
    assert report.kappa == pytest.approx(0.4)
    assert report.kappa == pytest.approx(metrics.cohen_kappa_score(y, pred))


def test_kappa_undefined_for_one_class():
    report = evaluate_predictions(np.zeros(5, int), one_hot(np.zeros(5, int), 3), ["a", "b", "c"])
    assert math.isnan(report.kappa) and report.accuracy == 1.0
    assert report.to_dict()["kappa"] is None


def test_argmax_ties_go_to_lower_id_and_worst_confusions():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    probs = one_hot([1, 1, 0, 0, 1, 0, 0, 1, 2], 3)
    probs[0] = [0.5, 0.5, 0.0]  # a tie: predicted 0
    report = evaluate_predictions(y, probs, ["a", "b", "c"], top_confusions=3)
    assert report.confusion[0, 0] == 2
    assert report.worst_confusions == [  # by count, then by share of the true class; c -> b (1, 25%) left out
        {"true": "c", "predicted": "a", "count": 2, "share": 0.5},
        {"true": "b", "predicted": "a", "count": 1, "share": 0.5},
        {"true": "a", "predicted": "b", "count": 1, "share": pytest.approx(1 / 3)},
    ]


def test_write_report_files(tmp_path):
    y, probs = random_case(7, 300, 8, drop_true=6, drop_pred=2)
    names = [f"land cover class {i}" for i in range(8)]
    ids = [f"chip{i:04d}" for i in range(len(y))]
    report = evaluate_predictions(y, probs, names, chip_ids=ids)
    paths = write_report(report, tmp_path / "report", title="random test")
    assert set(paths) == {"report.json", "confusion.json", "confusion.png", "summary.txt", "per_class.csv",
                          "predictions.csv"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert not list((tmp_path / "report").glob(".*.tmp"))

    data = json.loads(paths["report.json"].read_text())
    assert data["title"] == "random test"
    assert {k: v for k, v in data.items() if k != "title"} == json.loads(json.dumps(report.to_dict()))
    assert data["per_class"][6]["recall"] is None and data["per_class"][2]["precision"] is None
    back = read_report(paths["report.json"].parent)
    assert back.summary() == report.summary()
    assert back.to_dict() == report.to_dict()

    confusion = json.loads(paths["confusion.json"].read_text())
    assert confusion["counts"] == report.confusion.tolist() and confusion["classes"] == names
    assert confusion["row_normalized"][6] == [None] * 8
    np.testing.assert_allclose(np.sum(confusion["row_normalized"][0]), 1.0)

    with Image.open(paths["confusion.png"]) as png:
        png.verify()
    with Image.open(paths["confusion.png"]) as png:
        assert png.format == "PNG" and 600 <= png.width <= 3000 and 300 <= png.height <= 1600
        assert png.width > png.height

    table = pd.read_csv(paths["per_class.csv"])
    assert table["class"].tolist() == names and table["support"].tolist() == report.support.tolist()
    assert np.isnan(table.loc[6, "recall"])
    predictions = pd.read_csv(paths["predictions.csv"])
    assert predictions["chip_id"].tolist() == ids
    assert (predictions["true"] == [names[i] for i in y]).all()
    assert (predictions["predicted"] == [names[i] for i in probs.argmax(axis=1)]).all()
    np.testing.assert_allclose(predictions["probability"], probs.max(axis=1), rtol=1e-6)

    text = paths["summary.txt"].read_text()
    assert text.startswith("random test\n300 samples, 7 of 8 classes present")
    assert "land cover class 6" in text and "worst confusions" in text


def test_write_report_without_chip_ids_and_many_classes(tmp_path):
    y, probs = random_case(8, 400, 20)
    paths = write_report(evaluate_predictions(y, probs, [f"class {i}" for i in range(20)]), tmp_path)
    assert "predictions.csv" not in paths and not (tmp_path / "predictions.csv").exists()
    with Image.open(paths["confusion.png"]) as png:
        assert png.width <= 3000 and png.height <= 1600


def test_summary_lines():
    y = np.array([0, 0, 1, 1])
    text = evaluate_predictions(y, one_hot([0, 1, 1, 1], 3), ["water", "forest", "barren"]).summary()
    assert "4 samples, 2 of 3 classes present, 2 predicted" in text
    assert "overall accuracy 0.750" in text and "Cohen's kappa 0.500" in text
    assert "barren" in text and "(not averaged)" in text


@pytest.mark.parametrize(("y", "probs", "names", "ids", "message"), [
    ([], np.zeros((0, 2)), ["a", "b"], None, "nothing to evaluate: y_true is empty"),
    ([0, 1], one_hot([0, 1], 2), [], None, "no class names given"),
    ([0, 1], one_hot([0, 1], 2), ["a", "a"], None, "class names repeat: a"),
    ([[0, 1]], one_hot([0, 1], 2), ["a", "b"], None, "y_true must be one label id per sample (1-D)"),
    (["a", "b"], one_hot([0, 1], 2), ["a", "b"], None, "y_true must hold integer class ids"),
    ([0.5, 1], one_hot([0, 1], 2), ["a", "b"], None, "y_true must hold integer class ids"),
    ([0, 1, 1], one_hot([0, 1], 2), ["a", "b"], None, "probs must have shape (n_samples, n_classes) = (3, 2)"),
    ([0, 1], one_hot([0, 1], 3), ["a", "b"], None, "probs must have shape (n_samples, n_classes) = (2, 2)"),
    ([0, 2], one_hot([0, 1], 2), ["a", "b"], None, "1 label ids outside 0..1 (first: 2 at row 1)"),
    ([0, -1], one_hot([0, 1], 2), ["a", "b"], None, "1 label ids outside 0..1 (first: -1 at row 1)"),
    ([0, 1], np.array([[1.5, -0.5], [0, 1]]), ["a", "b"], None, "probs must lie in [0, 1]: 1 rows do not"),
    ([0, 1], np.array([[np.nan, 1], [0, 1]]), ["a", "b"], None, "probs must lie in [0, 1]"),
    ([0, 1], np.array([[0.5, 0.4], [0, 1]]), ["a", "b"], None, "probs rows must sum to 1: 1 rows do not (first: "
                                                              "row 0 sums to 0.9); pass softmax outputs"),
    ([0, 1], one_hot([0, 1], 2), ["a", "b"], ["x"], "1 chip ids for 2 samples"),
    ([0, 1], one_hot([0, 1], 2), ["a", "b"], ["x", "x"], "chip ids repeat: 1 duplicates"),
])
def test_bad_input(y, probs, names, ids, message):
    with pytest.raises(LandcoverError) as error:
        evaluate_predictions(np.array(y), probs, names, chip_ids=ids)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_lenient_inputs():
    y = np.array([0.0, 1.0, 1.0])  # integral floats are fine, as are rows off by float32 rounding
    probs = one_hot([0, 1, 0], 2).astype(np.float32) * np.float32(1 + 1e-5)
    report = evaluate_predictions(y, probs, ["a", "b"])
    assert report.accuracy == pytest.approx(2 / 3)


def test_read_report_errors(tmp_path):
    (tmp_path / "report.json").write_text('{"schema": "something else"}')
    with pytest.raises(LandcoverError, match="not a landcover report"):
        read_report(tmp_path)
    with pytest.raises(LandcoverError, match="cannot read the report"):
        read_report(tmp_path / "missing.json")
