"""Classical classifier heads (logistic regression, random forest, gradient-boosted trees) saved as plain arrays
and read back with numpy.

A head is fitted with scikit-learn (`fit_head`) and saved as two files that any tool can read without
scikit-learn and without running code (no pickle, no joblib):

``<prefix>.json`` (UTF-8 JSON object)::

    format      "landcover-head"
    version     1 (loaders refuse other versions)
    kind        "logreg", "rf" or "gbt"
    n_classes   C, the number of classes of the label scheme (width of predict_proba)
    n_features  D, the length of one feature vector
    classes     the K label ids present in training, ascending, each in [0, C)
    params      the scikit-learn parameters used to fit (informative)
    meta        free-form provenance given to `save_head` (informative)
    tensors     {name: {"dtype": ..., "shape": [...]}} for every tensor in the safetensors file

``<prefix>.safetensors`` (the safetensors format: an 8-byte little-endian header length, a JSON header, raw
little-endian arrays; its header metadata repeats ``format``, ``version`` and ``kind``). Tensors by kind:

``logreg`` (standardise, then multinomial logistic regression)::

    classes    int64    (K,)    label id of each row of coef
    mean       float64  (D,)    StandardScaler mean
    scale      float64  (D,)    StandardScaler scale (1 where a feature was constant)
    coef       float64  (K, D)  one row per present class
    intercept  float64  (K,)

    p = softmax(((X - mean) / scale) @ coef.T + intercept)   (a two-class fit is stored as rows [0, w], [w])

``rf`` (random forest; T trees, N nodes in all, trees stored one after another)::

    classes             int64    (K,)    label id of each column of value
    node_offsets        int64    (T+1,)  tree t owns nodes node_offsets[t]:node_offsets[t+1]
    children_left       int64    (N,)    left child, as an index within its own tree; -1 at a leaf
    children_right      int64    (N,)    right child, likewise; a child's index is larger than its parent's
    feature             int64    (N,)    feature tested at the node; -2 at a leaf
    threshold           float64  (N,)    go left when float32(x[feature]) <= threshold
    missing_go_to_left  uint8    (N,)    where x[feature] is NaN: 1 go left, 0 go right
    value               float64  (N, K)  class probabilities at the node (rows sum to 1)

    p = mean over trees of value[leaf reached]

``gbt`` (gradient-boosted trees, scikit-learn's HistGradientBoostingClassifier; M raw outputs: 1 for two classes,
else K; T trees, each adding to one output; nodes stored as for ``rf``, compared in float64)::

    classes, node_offsets, children_left, children_right, feature, missing_go_to_left   as for rf
    threshold           float64  (N,)    go left when x[feature] <= threshold
    baseline            float64  (M,)    raw score before any tree
    tree_output         int64    (T,)    the output each tree adds its leaf value to
    value               float64  (N,)    raw score added at a leaf

    raw = baseline + sum over trees t of value[leaf reached] (into column tree_output[t])
    p = softmax(raw); with two classes p = [1 - sigmoid(raw), sigmoid(raw)]

Columns of present classes are placed at their label ids in the (n, C) output; classes absent from
training get probability 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from landcover.atomic import replacing, write_text
from landcover.errors import LandcoverError, refuse_pickle
from landcover.models.trees import boosted_sum, forest_sum, forest_top, pure_classes, walk_arrays

FORMAT = "landcover-head"
VERSION = 1
"""Bumped when the file layout changes meaning; loaders refuse other versions."""
KINDS = ("logreg", "rf", "gbt")
TENSORS = {
    "logreg": {"classes": "int64", "mean": "float64", "scale": "float64", "coef": "float64",
               "intercept": "float64"},
    "rf": {"classes": "int64", "node_offsets": "int64", "children_left": "int64", "children_right": "int64",
           "feature": "int64", "threshold": "float64", "missing_go_to_left": "uint8", "value": "float64"},
    "gbt": {"classes": "int64", "baseline": "float64", "tree_output": "int64", "node_offsets": "int64",
            "children_left": "int64", "children_right": "int64", "feature": "int64", "threshold": "float64",
            "missing_go_to_left": "uint8", "value": "float64"},
}
"""The tensors each kind stores, with their dtypes."""


class Head:
    """A fitted head: numpy arrays and `predict_proba`; `estimator` is the scikit-learn model when just fitted."""

    kind = ""

    def __init__(self, arrays: dict[str, np.ndarray], n_classes: int, n_features: int, params: dict | None = None,
                 meta: dict | None = None):
        self.arrays = arrays
        self.n_classes = int(n_classes)
        self.n_features = int(n_features)
        self.params = dict(params or {})
        self.meta = dict(meta or {})
        self.estimator: object | None = None

    @property
    def classes(self) -> np.ndarray:
        """Label ids present in training (the columns that can be non-zero)."""
        return self.arrays["classes"]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, n_classes); absent classes get 0."""
        X = self._check_X(X)
        out = np.zeros((len(X), self.n_classes))
        out[:, self.classes] = self._proba_present(X)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable label id per row."""
        return self.predict_proba(X).argmax(axis=1)

    def predict_top(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The most probable label id per row and its probability (argmax and max of `predict_proba`)."""
        proba = self.predict_proba(X)
        return proba.argmax(axis=1), proba.max(axis=1)

    def _proba_present(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _walk(self, dtype: type) -> tuple[np.ndarray, ...]:
        """A tree head's roots and node arrays as the kernels walk them (made once, kept)."""
        if getattr(self, "_walking", None) is None:
            a = self.arrays
            self._walking = (a["node_offsets"][:-1].astype(np.int64), *walk_arrays(
                a["node_offsets"], a["children_left"], a["children_right"], a["feature"], a["threshold"],
                a["missing_go_to_left"], dtype))
        return self._walking

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise LandcoverError(f"the {self.kind} head expects features of shape (n, {self.n_features}), "
                                 f"got {X.shape}")
        return X

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_classes={self.n_classes}, n_features={self.n_features}, "
                f"classes={self.classes.tolist()})")


class LogisticHead(Head):
    """Standardised features into a multinomial logistic regression."""

    kind = "logreg"

    def _proba_present(self, X: np.ndarray) -> np.ndarray:
        a = self.arrays
        z = ((X.astype(np.float64) - a["mean"]) / a["scale"]) @ a["coef"].T + a["intercept"]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z


class ForestHead(Head):
    """A random forest: the mean of each tree's leaf class probabilities."""

    kind = "rf"

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return len(self.arrays["node_offsets"]) - 1

    def _proba_present(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)  # scikit-learn's forests compare float32 features
        return forest_sum(X, *self._walk(np.float32), *self._leaves()) / self.n_trees

    def predict_top(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As `Head.predict_top`, from the trees' sums row by row (no (n, classes) array: a map tile in about a fifth
        less time). The present classes are in ascending order, so the first most probable of them is argmax's."""
        X = np.asarray(self._check_X(X), dtype=np.float32)
        best, top = forest_top(X, *self._walk(np.float32), *self._leaves())
        return self.classes[best], top

    def _leaves(self) -> tuple[np.ndarray, np.ndarray]:
        """The nodes' class probabilities and each one-class leaf's class (made once, kept)."""
        if getattr(self, "_pure", None) is None:
            self._pure = pure_classes(self.arrays["value"])
        return self.arrays["value"], self._pure


class BoostedHead(Head):
    """Gradient-boosted trees: each tree adds its leaf value to one output's raw score; softmax (sigmoid for
    two classes) of baseline + sums."""

    kind = "gbt"

    def _proba_present(self, X: np.ndarray) -> np.ndarray:
        a = self.arrays
        X = np.asarray(X, dtype=np.float64)  # histogram boosting compares float64 features
        raw = boosted_sum(X, *self._walk(np.float64), a["value"], a["tree_output"], a["baseline"])
        if raw.shape[1] == 1:
            p = np.exp(-np.logaddexp(0.0, -raw[:, 0]))  # sigmoid, without overflow for large |raw|
            return np.stack([1.0 - p, p], axis=1)
        raw -= raw.max(axis=1, keepdims=True)
        np.exp(raw, out=raw)
        return raw / raw.sum(axis=1, keepdims=True)


HEAD_TYPES: dict[str, type[Head]] = {"logreg": LogisticHead, "rf": ForestHead, "gbt": BoostedHead}


def fit_head(kind: str, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0,
             sample_weight: np.ndarray | None = None, **params) -> Head:
    """Fit a 'logreg', 'rf' or 'gbt' head on features X and label ids y (scikit-learn parameters as keywords;
    `sample_weight` per row). 'gbt' weighs classes inversely to their frequency unless told otherwise: the rare
    classes count in training as they do in the macro-F1 it is judged by."""
    X, y = _check_training(kind, X, y, n_classes)
    try:
        if kind == "logreg":
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            params = {"max_iter": 1000, **params}
            estimator = make_pipeline(StandardScaler(), LogisticRegression(random_state=seed, **params))
        elif kind == "gbt":
            from sklearn.ensemble import HistGradientBoostingClassifier

            params = {"class_weight": "balanced", **params}
            estimator = HistGradientBoostingClassifier(random_state=seed, **params)
        else:
            from sklearn.ensemble import RandomForestClassifier

            params = {"n_estimators": 200, **params}
            estimator = RandomForestClassifier(random_state=seed, **params)
    except TypeError as exc:
        raise LandcoverError(f"bad parameter for the {kind} head ({exc})") from None
    try:
        weights = {} if sample_weight is None else {
            "logisticregression__sample_weight" if kind == "logreg" else "sample_weight": sample_weight}
        estimator.fit(X, y, **weights)
    except ValueError as exc:
        raise LandcoverError(f"cannot fit the {kind} head ({str(exc).splitlines()[0]})") from None
    head = from_sklearn(estimator, n_classes, params={**params, "seed": seed})
    head.estimator = estimator
    return head


def from_sklearn(estimator: object, n_classes: int, params: dict | None = None) -> Head:
    """Copy a fitted scikit-learn model (StandardScaler + LogisticRegression, or a random forest) into a Head."""
    steps = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    model = steps[-1]
    name = type(model).__name__
    classes = np.asarray(model.classes_, dtype=np.int64)
    if name == "LogisticRegression":
        scaler = steps[0] if len(steps) == 2 else None
        if len(steps) > 2 or (scaler is not None and type(scaler).__name__ != "StandardScaler"):
            raise LandcoverError("a logreg head is LogisticRegression, optionally after a StandardScaler")
        d = model.coef_.shape[1]
        mean = np.zeros(d) if scaler is None or scaler.mean_ is None else scaler.mean_
        scale = np.ones(d) if scaler is None or scaler.scale_ is None else scaler.scale_
        coef, intercept = np.asarray(model.coef_, float), np.asarray(model.intercept_, float)
        if len(coef) == 1 and len(classes) == 2:  # binary fits hold one row: sigmoid(z) == softmax([0, z])
            coef, intercept = np.vstack([np.zeros(d), coef[0]]), np.array([0.0, intercept[0]])
        arrays = {"classes": classes, "mean": mean, "scale": scale, "coef": coef, "intercept": intercept}
        head: Head = LogisticHead(_typed(arrays, "logreg"), n_classes, d, params)
    elif name == "RandomForestClassifier" and len(steps) == 1:
        if getattr(model, "n_outputs_", 1) != 1:
            raise LandcoverError("an rf head predicts one label per sample (n_outputs == 1)")
        trees = [e.tree_ for e in model.estimators_]
        sizes = [t.node_count for t in trees]
        value = np.concatenate([t.value[:, 0, :] for t in trees])
        sums = value.sum(axis=1, keepdims=True)
        arrays = {
            "classes": classes,
            "node_offsets": np.concatenate([[0], np.cumsum(sizes)]),
            "children_left": np.concatenate([t.children_left for t in trees]),
            "children_right": np.concatenate([t.children_right for t in trees]),
            "feature": np.concatenate([t.feature for t in trees]),
            "threshold": np.concatenate([t.threshold for t in trees]),
            "missing_go_to_left": np.concatenate([_missing_left(t) for t in trees]),
            "value": value / np.where(sums == 0, 1.0, sums),
        }
        head = ForestHead(_typed(arrays, "rf"), n_classes, model.n_features_in_, params)
    elif name == "HistGradientBoostingClassifier" and len(steps) == 1:
        head = BoostedHead(_typed(_boosted_arrays(model, classes), "gbt"), n_classes, model.n_features_in_, params)
    else:
        raise LandcoverError(f"cannot store a {name} as a head (kinds: {', '.join(KINDS)})")
    if classes.min() < 0 or classes.max() >= n_classes:
        raise LandcoverError(f"label ids must lie in [0, {n_classes}), got {classes.tolist()}")
    return head


def save_head(head: Head, path_prefix: str | Path, meta: dict | None = None) -> list[Path]:
    """Write <prefix>.safetensors (arrays) and <prefix>.json (structure); return both paths."""
    if not isinstance(head, Head):
        raise LandcoverError(f"save_head takes a Head from fit_head or from_sklearn, not a {type(head).__name__}")
    tensors_path, json_path = _paths(path_prefix)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in _typed(head.arrays, head.kind).items()}
    with replacing(tensors_path) as tmp:
        save_file(arrays, tmp, metadata={"format": FORMAT, "version": str(VERSION), "kind": head.kind})
    doc = {
        "format": FORMAT, "version": VERSION, "kind": head.kind, "n_classes": head.n_classes,
        "n_features": head.n_features, "classes": head.classes.tolist(), "params": head.params,
        "meta": {**head.meta, **(meta or {})},
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()},
    }
    write_text(json_path, json.dumps(doc, indent=2, default=str) + "\n")
    return [tensors_path, json_path]


def load_head(path_prefix: str | Path) -> Head:
    """Read a head saved by `save_head` (the prefix, or either of its two files); refuse anything else."""
    given = Path(path_prefix)
    if given.is_file() and given.suffix not in (".json", ".safetensors"):
        refuse_pickle(given, "heads from <prefix>.json + <prefix>.safetensors")
        raise LandcoverError("not a landcover head: expected <prefix>.json and <prefix>.safetensors", given)
    tensors_path, json_path = _paths(given)
    for path in (json_path, tensors_path):
        if not path.is_file():
            raise LandcoverError("head file is missing (a head is <prefix>.json + <prefix>.safetensors)", path)
    try:
        doc = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        refuse_pickle(json_path, "heads from <prefix>.json + <prefix>.safetensors")
        raise LandcoverError(f"not valid JSON ({str(exc).splitlines()[0]})", json_path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LandcoverError(f"not a landcover head description (format is not {FORMAT!r})", json_path)
    if doc.get("version") != VERSION:
        raise LandcoverError(f"head format version {doc.get('version')!r} is not supported (this landcover "
                             f"reads version {VERSION})", json_path)
    kind = doc.get("kind")
    if kind not in KINDS:
        raise LandcoverError(f"unknown head kind {kind!r} (kinds: {', '.join(KINDS)})", json_path)
    try:
        n_classes, n_features = int(doc["n_classes"]), int(doc["n_features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LandcoverError(f"head description lacks a valid n_classes / n_features ({exc})", json_path) from None
    try:
        arrays = load_file(tensors_path)
    except (SafetensorError, OSError, ValueError) as exc:
        refuse_pickle(tensors_path, "heads from <prefix>.json + <prefix>.safetensors")
        raise LandcoverError(f"not a readable safetensors file ({str(exc).splitlines()[0]})", tensors_path) from None
    _check_arrays(arrays, kind, n_classes, n_features, tensors_path)
    return HEAD_TYPES[kind](arrays, n_classes, n_features, doc.get("params"), doc.get("meta"))


def _check_training(kind: str, X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate fit_head's inputs; return X as a 2-D float array and y as int64."""
    if kind not in KINDS:
        raise LandcoverError(f"unknown head kind {kind!r} (kinds: {', '.join(KINDS)})")
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise LandcoverError(f"features must be (n, d) and labels (n,), got {X.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise LandcoverError(f"labels must be integer label ids, got dtype {y.dtype}")
    present = np.unique(y)
    if len(present) < 2:
        raise LandcoverError(f"a head needs at least two classes in training, got {present.tolist()}")
    if present[0] < 0 or present[-1] >= n_classes:
        raise LandcoverError(f"label ids must lie in [0, {n_classes}), got {present.tolist()}")
    if kind == "logreg" and not np.isfinite(X).all():
        raise LandcoverError("the logreg head needs finite features (NaN or inf found); rf and gbt accept NaN")
    return X.astype(np.float64, copy=False), y.astype(np.int64, copy=False)


def _check_arrays(arrays: dict[str, np.ndarray], kind: str, n_classes: int, n_features: int, path: Path) -> None:
    """Refuse tensors that do not match the documented names, dtypes and shapes."""
    expected = TENSORS[kind]
    if set(arrays) != set(expected):
        raise LandcoverError(f"{kind} head tensors are {sorted(arrays)}, expected {sorted(expected)}", path)
    for name, dtype in expected.items():
        if arrays[name].dtype != np.dtype(dtype):
            raise LandcoverError(f"tensor {name!r} is {arrays[name].dtype}, expected {dtype}", path)
    classes = arrays["classes"]
    k = len(classes)
    shapes_ok = classes.ndim == 1 and k >= 1 and (np.diff(classes) > 0).all()
    shapes_ok = shapes_ok and classes[0] >= 0 and classes[-1] < n_classes
    if kind == "logreg":
        shapes_ok = shapes_ok and arrays["coef"].shape == (k, n_features) and arrays["intercept"].shape == (k,)
        shapes_ok = shapes_ok and arrays["mean"].shape == arrays["scale"].shape == (n_features,)
    else:
        offsets = arrays["node_offsets"]
        n = offsets[-1] if offsets.ndim == 1 and len(offsets) >= 2 else -1
        shapes_ok = shapes_ok and n >= 1 and offsets[0] == 0 and bool((np.diff(offsets) > 0).all())
        for name in ("children_left", "children_right", "feature", "threshold", "missing_go_to_left"):
            shapes_ok = shapes_ok and arrays[name].shape == (n,)
        if kind == "rf":
            shapes_ok = shapes_ok and arrays["value"].shape == (n, k)
        else:
            outputs = 1 if k == 2 else k
            trees = arrays["tree_output"]
            shapes_ok = shapes_ok and arrays["value"].shape == (n,) and arrays["baseline"].shape == (outputs,)
            shapes_ok = shapes_ok and trees.shape == (len(offsets) - 1,) and bool(((trees >= 0)
                                                                                  & (trees < outputs)).all())
        if shapes_ok:  # every child must point inside its own tree, every split at a real feature
            size = np.repeat(np.diff(offsets), np.diff(offsets))
            local = np.arange(n) - np.repeat(offsets[:-1], np.diff(offsets))
            split = arrays["children_left"] != -1
            for child in (arrays["children_left"], arrays["children_right"]):
                inside = (child[split] > local[split]) & (child[split] < size[split])
                shapes_ok = shapes_ok and bool(inside.all())
            shapes_ok = shapes_ok and bool(((arrays["feature"][split] >= 0)
                                            & (arrays["feature"][split] < n_features)).all())
    if not shapes_ok:
        raise LandcoverError(f"{kind} head tensors have inconsistent shapes or values", path)


def _typed(arrays: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """The arrays cast to the documented dtypes."""
    return {name: np.asarray(arrays[name], dtype=dtype) for name, dtype in TENSORS[kind].items()}


def _boosted_arrays(model: object, classes: np.ndarray) -> dict[str, np.ndarray]:
    """A fitted HistGradientBoostingClassifier's trees in the gbt layout (leaves: children -1, feature -2)."""
    trees = [(output, predictor.nodes) for iteration in model._predictors
             for output, predictor in enumerate(iteration)]
    if any(nodes["is_categorical"].any() for _, nodes in trees):
        raise LandcoverError("a gbt head takes numeric features only (the model split on categorical ones)")
    nodes = np.concatenate([n for _, n in trees])
    leaf = nodes["is_leaf"].astype(bool)
    return {"classes": classes, "baseline": np.asarray(model._baseline_prediction, float).reshape(-1),
            "tree_output": np.array([output for output, _ in trees]),
            "node_offsets": np.concatenate([[0], np.cumsum([len(n) for _, n in trees])]),
            "children_left": np.where(leaf, -1, nodes["left"].astype(np.int64)),
            "children_right": np.where(leaf, -1, nodes["right"].astype(np.int64)),
            "feature": np.where(leaf, -2, nodes["feature_idx"]), "threshold": nodes["num_threshold"],
            "missing_go_to_left": nodes["missing_go_to_left"], "value": nodes["value"]}


def _missing_left(tree: object) -> np.ndarray:
    """Where NaNs go at each node (scikit-learn < 1.3 trees have no such array: right)."""
    nan_left = getattr(tree, "missing_go_to_left", None)
    return np.zeros(tree.node_count, np.uint8) if nan_left is None else np.asarray(nan_left, np.uint8)


def _paths(path_prefix: str | Path) -> tuple[Path, Path]:
    """(<prefix>.safetensors, <prefix>.json); a path already ending in either suffix names its prefix."""
    path = Path(path_prefix)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
