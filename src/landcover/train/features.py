"""Features for classical heads: frozen-network features, cached on disk (spectral features: `models/spectral.py`).

Feature cache: ``<cache>/<digest>.safetensors`` holds ``features`` (float32, (n, d)) and ``labels`` ((n,), the
labels' own numeric dtype); ``<cache>/<digest>.json`` records the key it was computed for. ``digest`` is the first
20 hex digits of the SHA-256 of the key as canonical JSON (sorted keys), so the same manifest, split, backbone,
weights and preprocessing find the same file, and any change computes afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from landcover.atomic import replacing, write_text
from landcover.errors import LandcoverError
from landcover.progress import progress_bar

if TYPE_CHECKING:
    import torch

CACHE_FORMAT = "landcover-features"
CACHE_VERSION = 1


def cache_key_digest(key: dict) -> str:
    """The file stem a key is cached under: a SHA-256 prefix of its canonical JSON."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:20]


def extract_features(featurize: Callable[[torch.Tensor], torch.Tensor],
                     batches: Iterable[tuple[torch.Tensor, np.ndarray]], cache: Path | None, key: dict,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, (n, d)) and labels of a stream of (images, labels) batches, reused from `cache` if there."""
    paths = None
    if cache is not None:
        stem = Path(cache) / cache_key_digest(key)
        paths = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
        cached = _read_cache(*paths, key)
        if cached is not None:
            return cached
    features, labels = _featurize_all(featurize, batches, progress)
    if paths is not None and len(features):
        _write_cache(*paths, key, features, labels)
    return features, labels


def _featurize_all(featurize: Callable, batches: Iterable, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Run featurize over every batch without gradients; concatenate features (float32) and labels."""
    import torch

    features, labels = [], []
    total = len(batches) if hasattr(batches, "__len__") else None
    with torch.no_grad():
        for images, batch_labels in progress_bar(batches, total=total, desc="features", unit="batch", enabled=progress):
            out = featurize(images)
            batch_labels = np.asarray(batch_labels.cpu() if isinstance(batch_labels, torch.Tensor) else batch_labels)
            if out.shape[0] != len(batch_labels):
                raise LandcoverError(f"featurize returned {out.shape[0]} rows for a batch of {len(batch_labels)}")
            features.append(out.detach().reshape(out.shape[0], -1).to("cpu", torch.float32).numpy())
            labels.append(batch_labels.reshape(-1))
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features), np.concatenate(labels)


def _read_cache(tensors_path: Path, json_path: Path, key: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached (features, labels) for key, or None if absent, for another key, or unreadable."""
    if not (tensors_path.is_file() and json_path.is_file()):
        return None
    try:
        doc = json.loads(json_path.read_text())
        if doc.get("format") != CACHE_FORMAT or doc.get("version") != CACHE_VERSION:
            return None
        if _canonical(doc.get("key")) != _canonical(key):
            return None
        arrays = load_file(tensors_path)
        features, labels = arrays["features"], arrays["labels"]
    except (OSError, ValueError, KeyError, AttributeError, SafetensorError):
        return None
    if features.ndim != 2 or labels.shape != (len(features),) or features.dtype != np.float32:
        return None
    return features, labels


def _write_cache(tensors_path: Path, json_path: Path, key: dict, features: np.ndarray, labels: np.ndarray) -> None:
    """Store features and labels for key, each file atomically; the JSON is written last."""
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
        raise LandcoverError(f"only numeric labels can be cached, got dtype {labels.dtype}")
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.unlink(missing_ok=True)
    with replacing(tensors_path) as tmp:
        save_file({"features": np.ascontiguousarray(features), "labels": np.ascontiguousarray(labels)}, tmp,
                  metadata={"format": CACHE_FORMAT, "version": str(CACHE_VERSION)})
    doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": json.loads(_canonical(key)),
           "n": int(features.shape[0]), "dim": int(features.shape[1]), "labels_dtype": str(labels.dtype)}
    write_text(json_path, json.dumps(doc, indent=2) + "\n")


def _canonical(key: object) -> str:
    """A key as canonical JSON (sorted keys; paths and other objects as strings)."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
