"""Stored decision trees evaluated with numba: the forest and boosted heads' inner loop.

A head keeps its trees as flat node arrays (see `landcover.models.heads`); `walk_arrays` turns them once into the
arrays walked here: absolute child indices, with every leaf its own two children (a row that reached its leaf stays
there). Each block of rows passes every tree while the rows stay in the core's cache, and LANES rows walk a tree
together, one level at a time: their paths are independent, so the processor overlaps the loads of one with the
comparisons of another instead of waiting on each node in turn (a per-pixel model sends millions of rows). A NaN
feature goes the way the tree learnt for missing values; otherwise left when x <= threshold, as scikit-learn decides.
X may be any layout: a per-pixel model passes its feature-major block transposed, without a copy. A forest's leaf
that holds one class (every leaf of a forest grown on a few hundred clicks) adds one vote instead of its whole
probability vector (the same sums), and `forest_top` gives a map tile only each row's most probable class and its
probability, without the (n, K) array: with both, the studio's view re-maps in 0.70 s a shown megapixel after 120
clicks instead of 0.93 s (Zion, bench/README.md).
"""

from __future__ import annotations

import numba
import numpy as np

BLOCK = 2048
"""Rows walked through every tree together: they stay in the core's cache while the trees pass over them."""
LANES = 8
"""Rows walking one tree side by side."""


def walk_arrays(offsets: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
                threshold: np.ndarray, nan_left: np.ndarray, dtype: type) -> tuple[np.ndarray, ...]:
    """The node arrays of trees stored as scikit-learn writes them (children relative to their tree, -1 under a
    leaf) as the kernels walk them: children absolute, leaves pointing at themselves, thresholds of the features'
    `dtype` (float32 thresholds rounded down: for float32 x, x <= t exactly when x <= the float64 t)."""
    starts = np.repeat(offsets[:-1], np.diff(offsets)).astype(np.int64)
    leaf = np.asarray(left) == -1
    index = np.arange(len(leaf), dtype=np.int64)
    walk_left = np.where(leaf, index, starts + left).astype(np.int64)
    walk_right = np.where(leaf, index, starts + right).astype(np.int64)
    cut = np.asarray(threshold, np.float64)
    if dtype == np.float32:
        narrow = cut.astype(np.float32)
        cut = np.where(narrow.astype(np.float64) > cut, np.nextafter(narrow, np.float32(-np.inf)), narrow)
    return (walk_left, walk_right, np.where(leaf, 0, feature).astype(np.int64), np.asarray(cut, dtype),
            np.asarray(nan_left, np.bool_))


def pure_classes(value: np.ndarray) -> np.ndarray:
    """Per node, the class a leaf gives all of its probability (exactly 1.0), else -1."""
    return np.where((value == 1.0).any(axis=1), value.argmax(axis=1), -1).astype(np.int64)


@numba.njit(cache=True, inline="always")
def _walk(X: np.ndarray, i0: int, m: int, root: int, at: np.ndarray, left: np.ndarray, right: np.ndarray,
          feature: np.ndarray, threshold: np.ndarray, nan_left: np.ndarray) -> None:
    """Rows i0 .. i0 + m from the root down to their leaves, side by side; their leaves left in at[:m]."""
    for k in range(m):
        at[k] = root
    moving = True
    while moving:
        moving = False
        for k in range(m):
            node = at[k]
            v = X[i0 + k, feature[node]]
            go_left = (v <= threshold[node]) | ((v != v) & nan_left[node])
            step = left[node] if go_left else right[node]
            moving |= step != node
            at[k] = step


@numba.njit(cache=True, inline="always")
def _forest_block(X: np.ndarray, r0: int, r1: int, roots: np.ndarray, left: np.ndarray, right: np.ndarray,
                  feature: np.ndarray, threshold: np.ndarray, nan_left: np.ndarray, value: np.ndarray,
                  pure: np.ndarray, sums: np.ndarray) -> None:
    """Rows r0 .. r1 through every tree, each leaf's value vector added to sums[row - r0] (a one-class leaf: one
    vote)."""
    at = np.empty(LANES, np.int64)
    for root in roots:
        for i0 in range(r0, r1, LANES):
            m = min(LANES, r1 - i0)
            _walk(X, i0, m, root, at, left, right, feature, threshold, nan_left)
            for k in range(m):
                leaf, row = at[k], i0 - r0 + k
                if pure[leaf] >= 0:
                    sums[row, pure[leaf]] += 1.0
                else:
                    for c in range(sums.shape[1]):
                        sums[row, c] += value[leaf, c]


@numba.njit(cache=True, parallel=True)
def forest_sum(X: np.ndarray, roots: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
               threshold: np.ndarray, nan_left: np.ndarray, value: np.ndarray, pure: np.ndarray) -> np.ndarray:
    """Sum over trees of each row's leaf value vector: (n, K) from value (nodes, K); `pure` is `pure_classes(value)`."""
    n = X.shape[0]
    out = np.zeros((n, value.shape[1]))
    for block in numba.prange((n + BLOCK - 1) // BLOCK):
        r0, r1 = block * BLOCK, min(n, (block + 1) * BLOCK)
        _forest_block(X, r0, r1, roots, left, right, feature, threshold, nan_left, value, pure, out[r0:r1])
    return out


@numba.njit(cache=True, parallel=True)
def forest_top(X: np.ndarray, roots: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
               threshold: np.ndarray, nan_left: np.ndarray, value: np.ndarray, pure: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most probable column of the forest's mean (the first of equals, as argmax) and that probability:
    what `forest_sum(...) / trees` gives, without the (n, K) array (a map tile wants only these two)."""
    n, k_out, trees = X.shape[0], value.shape[1], len(roots)
    best = np.empty(n, np.int64)
    top = np.empty(n)
    for block in numba.prange((n + BLOCK - 1) // BLOCK):
        r0, r1 = block * BLOCK, min(n, (block + 1) * BLOCK)
        sums = np.zeros((r1 - r0, k_out))
        _forest_block(X, r0, r1, roots, left, right, feature, threshold, nan_left, value, pure, sums)
        for row in range(r1 - r0):
            pick, most = 0, sums[row, 0] / trees
            for c in range(1, k_out):
                p = sums[row, c] / trees
                if p > most:
                    pick, most = c, p
            best[r0 + row], top[r0 + row] = pick, most
    return best, top


@numba.njit(cache=True, parallel=True)
def boosted_sum(X: np.ndarray, roots: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
                threshold: np.ndarray, nan_left: np.ndarray, value: np.ndarray, tree_output: np.ndarray,
                baseline: np.ndarray) -> np.ndarray:
    """Baseline plus, per output, the sum of its trees' leaf values: (n, outputs) raw scores."""
    n = X.shape[0]
    out = np.empty((n, len(baseline)))
    for block in numba.prange((n + BLOCK - 1) // BLOCK):
        r0, r1 = block * BLOCK, min(n, (block + 1) * BLOCK)
        at = np.empty(LANES, np.int64)
        for i in range(r0, r1):
            out[i] = baseline
        for t in range(len(roots)):
            for i0 in range(r0, r1, LANES):
                m = min(LANES, r1 - i0)
                _walk(X, i0, m, roots[t], at, left, right, feature, threshold, nan_left)
                for k in range(m):
                    out[i0 + k, tree_output[t]] += value[at[k]]
    return out
