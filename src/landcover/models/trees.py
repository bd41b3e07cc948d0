"""Stored decision trees evaluated with numba: the forest and boosted heads' inner loop.

A head keeps its trees as flat node arrays (see `landcover.models.heads`); here every row of X walks every tree
to its leaf and the leaves' values are summed, in one compiled pass over the rows (in parallel), with no
per-tree temporary arrays: a per-pixel model calls this on hundreds of thousands of rows at a time. A NaN feature
goes the way the tree learnt for missing values; otherwise left when x <= threshold, as scikit-learn decides.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _leaf(x: np.ndarray, lo: int, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
          threshold: np.ndarray, nan_left: np.ndarray) -> int:
    node = 0
    while left[lo + node] != -1:
        v = x[feature[lo + node]]
        go_left = nan_left[lo + node] if np.isnan(v) else v <= threshold[lo + node]
        node = left[lo + node] if go_left else right[lo + node]
    return lo + node


BLOCK = 512
"""Rows walked through every tree together: they stay in the core's cache while the trees pass over them."""


@numba.njit(cache=True, parallel=True)
def forest_sum(X: np.ndarray, offsets: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
               threshold: np.ndarray, nan_left: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Sum over trees of each row's leaf value vector: (n, K) from value (nodes, K)."""
    n, trees, k_out = X.shape[0], len(offsets) - 1, value.shape[1]
    out = np.zeros((n, k_out))
    for block in numba.prange((n + BLOCK - 1) // BLOCK):
        r0, r1 = block * BLOCK, min(n, (block + 1) * BLOCK)
        for t in range(trees):
            for i in range(r0, r1):
                leaf = _leaf(X[i], offsets[t], left, right, feature, threshold, nan_left)
                for k in range(k_out):
                    out[i, k] += value[leaf, k]
    return out


@numba.njit(cache=True, parallel=True)
def boosted_sum(X: np.ndarray, offsets: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
                threshold: np.ndarray, nan_left: np.ndarray, value: np.ndarray, tree_output: np.ndarray,
                baseline: np.ndarray) -> np.ndarray:
    """Baseline plus, per output, the sum of its trees' leaf values: (n, outputs) raw scores."""
    n, trees = X.shape[0], len(offsets) - 1
    out = np.empty((n, len(baseline)))
    for block in numba.prange((n + BLOCK - 1) // BLOCK):
        r0, r1 = block * BLOCK, min(n, (block + 1) * BLOCK)
        for i in range(r0, r1):
            out[i] = baseline
        for t in range(trees):
            for i in range(r0, r1):
                out[i, tree_output[t]] += value[_leaf(X[i], offsets[t], left, right, feature, threshold, nan_left)]
    return out
