"""Classical heads saved without pickle, the feature cache, and spectral features on real Landsat pixels."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import rasterio
import torch
from conftest import need_data
from rasterio.windows import Window

from landcover.errors import LandcoverError
from landcover.models.heads import fit_head, load_head, save_head
from landcover.models.spectral import SpectralSpec, band_role, spectral_features
from landcover.train.features import extract_features

N_CLASSES = 5
PRESENT = (0, 1, 3, 4)
"""Label id 2 never occurs in training: its probability column must stay 0, in its place."""


@pytest.fixture(scope="module")
def training() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separable-ish features for four of five classes, plus held-out rows (some out of range)."""
    rng = np.random.default_rng(7)
    y = rng.choice(PRESENT, size=300)
    X = rng.normal(size=(300, 6)) + 1.5 * np.eye(6)[y]
    X_new = rng.normal(scale=2.0, size=(200, 6))
    return X, y, X_new


def sklearn_proba(estimator, X: np.ndarray) -> np.ndarray:
    """scikit-learn's probabilities widened to all N_CLASSES columns."""
    out = np.zeros((len(X), N_CLASSES))
    out[:, estimator.classes_] = estimator.predict_proba(X)
    return out


@pytest.mark.parametrize(("kind", "params"), [("logreg", {}), ("logreg", {"class_weight": "balanced"}),
                                             ("rf", {"n_estimators": 25}),
                                             ("rf", {"n_estimators": 10, "class_weight": "balanced", "max_depth": 4}),
                                             ("gbt", {"max_iter": 30}), ("gbt", {"class_weight": None})])
def test_head_round_trip_equals_sklearn(tmp_path, training, kind, params):
    X, y, X_new = training
    head = fit_head(kind, X, y, N_CLASSES, seed=3, **params)
    written = save_head(head, tmp_path / "head", meta={"backbone": "test"})
    assert [p.name for p in written] == ["head.safetensors", "head.json"]
    doc = json.loads((tmp_path / "head.json").read_text())
    assert doc["format"] == "landcover-head" and doc["version"] == 1 and doc["kind"] == kind
    assert doc["classes"] == list(PRESENT) and doc["meta"] == {"backbone": "test"}
    loaded = load_head(tmp_path / "head")
    for rows in (X, X_new):
        expected = sklearn_proba(head.estimator, rows)
        proba = loaded.predict_proba(rows)
        assert proba.shape == (len(rows), N_CLASSES)
        np.testing.assert_allclose(proba, expected, atol=1e-6, rtol=0)
        assert (proba[:, 2] == 0).all()
    assert (loaded.predict(X_new) == head.estimator.predict(X_new)).mean() > 0.99
    assert load_head(tmp_path / "head.json").kind == kind  # either file names the head


def test_one_class_leaves_add_what_their_probabilities_add(training):
    """The forest kernel's shortcut (a leaf holding one class adds one vote) gives the very sums the leaves'
    probability vectors give, on a forest with both kinds of leaves."""
    from landcover.models.trees import forest_sum, pure_classes

    X, y, X_new = training
    head = fit_head("rf", X, y, N_CLASSES, n_estimators=12, min_samples_leaf=3)
    value = head.arrays["value"]
    pure = pure_classes(value)
    leaves = head.arrays["children_left"] == -1
    assert (pure[leaves] >= 0).any() and (pure[leaves] < 0).any() and (pure[~leaves] < 0).all()
    rows = np.asarray(X_new, np.float32)
    walk = head._walk(np.float32)
    assert np.array_equal(forest_sum(rows, *walk, value, pure), forest_sum(rows, *walk, value, np.full_like(pure, -1)))
    # a map tile's classes and how sure: argmax and max of the probabilities, label ids of the absent class skipped
    proba = head.predict_proba(X_new)
    best, top = head.predict_top(X_new)
    assert np.array_equal(best, proba.argmax(axis=1)) and np.array_equal(top, proba.max(axis=1))
    assert set(best) <= set(PRESENT) and len(set(best)) > 1


@pytest.mark.parametrize("kind", ["rf", "gbt"])
def test_tree_heads_follow_sklearn_on_missing_values(tmp_path, training, kind):
    X, y, X_new = training
    X = X.copy()
    X[np.random.default_rng(1).random(X.shape) < 0.1] = np.nan
    X_new = np.where(np.random.default_rng(2).random(X_new.shape) < 0.2, np.nan, X_new)
    head = fit_head(kind, X, y, N_CLASSES, **({"n_estimators": 10} if kind == "rf" else {}))
    save_head(head, tmp_path / kind)
    np.testing.assert_allclose(load_head(tmp_path / kind).predict_proba(X_new),
                               sklearn_proba(head.estimator, X_new), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["logreg", "gbt"])
def test_two_class_round_trip(tmp_path, training, kind):
    X, y, _ = training
    y2 = np.where(y < 2, 1, 4)
    head = fit_head(kind, X, y2, N_CLASSES)
    save_head(head, tmp_path / "bin")
    np.testing.assert_allclose(load_head(tmp_path / "bin").predict_proba(X), sklearn_proba(head.estimator, X),
                               atol=1e-6, rtol=0)


def test_loading_refuses_pickles_and_malformed_files(tmp_path, training):
    X, y, _ = training
    head = fit_head("logreg", X, y, N_CLASSES)
    (tmp_path / "head.pkl").write_bytes(pickle.dumps(head.estimator))
    with pytest.raises(LandcoverError, match=r"head\.pkl: is a pickle .*runs arbitrary code"):
        load_head(tmp_path / "head.pkl")
    save_head(head, tmp_path / "head")
    (tmp_path / "head.safetensors").write_bytes(pickle.dumps({"coef": head.arrays["coef"]}))
    with pytest.raises(LandcoverError, match=r"head\.safetensors: is a pickle"):
        load_head(tmp_path / "head")

    save_head(head, tmp_path / "head")
    doc = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "head.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(LandcoverError, match=r"head\.json: head format version 99 is not supported"):
        load_head(tmp_path / "head")
    (tmp_path / "head.json").write_text(json.dumps({**doc, "n_features": 7}))
    with pytest.raises(LandcoverError, match=r"head\.safetensors: logreg head tensors have inconsistent shapes"):
        load_head(tmp_path / "head")
    (tmp_path / "head.json").write_text("{not json")
    with pytest.raises(LandcoverError, match=r"head\.json: not valid JSON"):
        load_head(tmp_path / "head")
    (tmp_path / "head.json").write_text(json.dumps(doc))
    (tmp_path / "head.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(LandcoverError, match=r"head\.safetensors: not a readable safetensors file"):
        load_head(tmp_path / "head")
    with pytest.raises(LandcoverError, match=r"other\.json: head file is missing"):
        load_head(tmp_path / "other")


def test_fit_head_rejects_bad_input(training):
    from landcover.models.heads import KINDS
    from landcover.train.config import HEADS

    assert HEADS == KINDS  # the CLI's list (kept free of torch) names exactly the heads there are
    X, y, _ = training
    with pytest.raises(LandcoverError, match="unknown head kind 'svm'"):
        fit_head("svm", X, y, N_CLASSES)
    with pytest.raises(LandcoverError, match=r"label ids must lie in \[0, 4\)"):
        fit_head("logreg", X, y, 4)
    with pytest.raises(LandcoverError, match="at least two classes"):
        fit_head("rf", X, np.zeros(len(X), int), N_CLASSES)


def test_feature_cache_reuses_and_recomputes(tmp_path):
    rng = np.random.default_rng(0)
    batches = [(torch.from_numpy(rng.normal(size=(4, 3, 8, 8)).astype(np.float32)), np.arange(4) + 4 * i)
               for i in range(3)]
    calls = []
    weights = torch.randn(3, 5)

    def featurize(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        assert not torch.is_grad_enabled()
        return images.mean(dim=(2, 3)) @ weights

    key = {"manifest": "abc123", "split": "train", "backbone": "toy", "weights": "none", "preprocess": [1, 2]}
    features, labels = extract_features(featurize, batches, tmp_path, key, progress=False)
    assert features.dtype == np.float32 and features.shape == (12, 5) and labels.tolist() == list(range(12))
    assert calls == [4, 4, 4] and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["key"] == key

    again = extract_features(featurize, batches, tmp_path, dict(reversed(key.items())), progress=False)
    assert calls == [4, 4, 4]  # a second head reuses the features: no featurizing
    np.testing.assert_array_equal(again[0], features)
    np.testing.assert_array_equal(again[1], labels)

    extract_features(featurize, batches, tmp_path, {**key, "split": "valid"}, progress=False)
    assert calls == [4, 4, 4] * 2 and len(list(tmp_path.glob("*.safetensors"))) == 2
    uncached = extract_features(featurize, batches, None, key, progress=False)
    np.testing.assert_allclose(uncached[0], features)


def test_spectral_features_on_real_landsat_window():
    zion = need_data("zion")
    window = Window(col_off=300, row_off=200, width=16, height=16)
    bands = []
    for b in (2, 3, 4, 5):
        with rasterio.open(zion / f"landsat_b{b}.tif") as src:
            bands.append(src.read(1, window=window))
    pixels = np.stack(bands)  # uint16: blue, green, red, NIR
    spec = SpectralSpec.from_roles(["blue", "green", "red", "nir"], [band_role(f"landsat_b{b}") for b in (2, 3, 4, 5)])
    assert spec.indices == (("ndvi", 3, 2), ("ndwi", 1, 3))  # Landsat 8 numbering, no SWIR: no MNDWI / NDBI
    features = spectral_features(pixels, indices=spec.indices)
    names = spec.names
    assert features.shape == (len(names),) == (32,)
    np.testing.assert_array_equal(spec.features(pixels[None])[0], features.astype(np.float32))
    got = dict(zip(names, features, strict=True))
    for i, band in enumerate(["blue", "green", "red", "nir"]):
        values = pixels[i].astype(np.float64).ravel()
        expected = [values.mean(), values.std(), values.min(), values.max(), *np.percentile(values, [10, 50, 90])]
        np.testing.assert_allclose([got[f"{band}_{s}"] for s in ("mean", "std", "min", "max", "p10", "p50", "p90")],
                                   expected, rtol=1e-12)
    red, nir = pixels[2].astype(np.float64), pixels[3].astype(np.float64)
    ndvi = (nir - red) / (nir + red)
    np.testing.assert_allclose([got["ndvi_mean"], got["ndvi_std"]], [ndvi.mean(), ndvi.std()], rtol=1e-12)
    assert 0 < got["ndvi_mean"] < 1
    green = pixels[1].astype(np.float64)
    np.testing.assert_allclose(got["ndwi_mean"], ((green - nir) / (green + nir)).mean(), rtol=1e-12)
    valid = np.zeros((16, 16), bool)
    valid[:8] = True  # only the top half counts
    top = spectral_features(pixels, valid)
    assert top.shape == (28,)
    np.testing.assert_allclose(top[0], pixels[0, :8].mean(), rtol=1e-12)
    assert np.isnan(spectral_features(pixels, np.zeros((16, 16), bool))).all()


@pytest.mark.parametrize(("name", "role"), [
    ("landsat_b5", "nir"), ("LC08_L2SP_038034_20200812_SR_B4", "red"), ("lsat7_2000_40", "nir"),
    ("lsat7_2000_50", "swir1"), ("LE07_L2SP_016035_20000612_SR_B4", "nir"), ("T33UUP_20230801_B04_10m", "red"),
    ("B8A", "nir"), ("swir16", "swir1"), ("nir08", "nir"), ("red", "red"), ("NAIP-VA-b1", None),
    ("image_1", None), ("sentinel2_b11", "swir1"),
])
def test_band_roles_from_names(name, role):
    assert band_role(name) == role
