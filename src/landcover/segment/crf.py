"""The fully connected CRF of Krähenbühl & Koltun (2011): mean-field inference with a Gaussian smoothness kernel over
pixel position and a bilateral appearance kernel over position and the image's bands, filtered on a permutohedral
lattice (Adams, Baek & Davis 2010) compiled with numba, so it installs without a compiler.

Mean field: Q starts as the softmax of the unaries' negatives; each iteration adds, per kernel, its weight times the
kernel-filtered Q (symmetrically normalised, the pixel itself included) to the negative unaries, passes that through
the label compatibility, and takes the softmax again. With the Potts model (costs w for unlike labels) that is the
same as adding w times the filtered Q of the label itself, which is what is computed.

The lattice: each pixel's features (position / sxy, bands / srgb) are lifted onto the plane of d+1 coordinates
summing to zero, tiled by simplices whose corners are lattice points; a value is splatted onto its simplex's d+1
corners with barycentric weights, blurred with (1, 2, 1) / 4 along each of the d+1 lattice directions, and sliced
back with the same weights. That is a Gaussian filter of unit standard deviation in feature space, up to a constant
that the normalisation removes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numba
import numpy as np

PROB_FLOOR = 1e-6
"""Probabilities are clipped to this before taking logs, so a zero never makes an infinite unary."""


@dataclass(frozen=True)
class CrfSettings:
    """Every setting of the CRF. The defaults are the seeds' (Buscombe & Ritchie 2018): kernels 60 px wide on the
    CRF's grid, appearance differences of 1 grey level per band, Potts weights 5 (smoothness) and 100 (appearance),
    20 iterations, on the image downscaled by 0.25 (its labels upscaled back)."""

    sxy_gaussian: float = 60.0
    """Standard deviation of the smoothness kernel, px on the CRF's (downscaled) grid."""
    compat_gaussian: float = 5.0
    """Potts weight of the smoothness kernel."""
    sxy_bilateral: float = 60.0
    """Positional standard deviation of the appearance kernel, px on the CRF's grid."""
    srgb: float = 1.0
    """Band standard deviation of the appearance kernel, in 8-bit display levels."""
    compat_bilateral: float = 100.0
    """Potts weight of the appearance kernel."""
    iterations: int = 20
    downscale: float = 0.25
    """The image and probabilities are resampled by this factor before the CRF (1 keeps full resolution)."""
    compatibility: tuple[tuple[float, ...], ...] | None = field(default=None)
    """A label compatibility matrix of costs (n x n, rows the label, columns its neighbour's) used instead of
    Potts; each kernel's weight multiplies it."""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"smoothness sxy {self.sxy_gaussian:g} w {self.compat_gaussian:g}; appearance sxy "
                f"{self.sxy_bilateral:g} srgb {self.srgb:g} w {self.compat_bilateral:g}; {self.iterations} "
                f"iterations at {self.downscale:g} x")

    @property
    def reach(self) -> int:
        """How far (CRF px) a pixel's result depends on its surroundings, for the margin of blocks: about three
        standard deviations of the wider kernel."""
        return math.ceil(3 * max(self.sxy_gaussian if self.compat_gaussian else 0,
                                 self.sxy_bilateral if self.compat_bilateral else 0, 1))


DEEPLAB = CrfSettings(sxy_gaussian=3, compat_gaussian=3, sxy_bilateral=80, srgb=13, compat_bilateral=10, iterations=5,
                      downscale=1.0)
"""Settings of the kind DeepLab (Chen et al.) tuned for photographs at full resolution, for comparison."""


class Lattice:
    """Features (N, d) on a permutohedral lattice: what `filter` needs to blur values over them."""

    def __init__(self, features: np.ndarray):
        features = np.ascontiguousarray(features, np.float32)
        self.n, self.d = features.shape
        if self.n * (self.d + 1) >= 2 ** 31:
            raise ValueError(f"{self.n} points are too many for one lattice: run the CRF in blocks")
        self.vertices, self.weights, self.neighbours = _build(features)
        self.entries, self.starts = _by_vertex(self.vertices, self.n_vertices)
        self.norm = 1.0 / np.sqrt(self.filter(np.ones((self.n, 1), np.float32)) + 1e-20)

    @property
    def n_vertices(self) -> int:
        return self.neighbours.shape[1]

    def filter(self, values: np.ndarray) -> np.ndarray:
        """(N, c) values Gaussian-filtered over the features (unnormalised, the point itself included)."""
        lattice = _splat(np.ascontiguousarray(values, np.float32), self.weights, self.entries, self.starts)
        return _slice(_blur(lattice, self.neighbours), self.vertices, self.weights)

    def normalised(self, values: np.ndarray) -> np.ndarray:
        """The symmetrically normalised filter: norm * filter(norm * values)."""
        return self.filter(values * self.norm) * self.norm


def pixel_features(height: int, width: int, sxy: float, image: np.ndarray | None = None,
                   srgb: float = 1.0) -> np.ndarray:
    """(N, 2 [+ bands]) features of a grid's pixels, row-major: col / sxy, row / sxy [, band values / srgb] (the
    order pydensecrf uses: the lattice's cells are not symmetric in the features' order)."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    parts = [cols.ravel() / sxy, rows.ravel() / sxy]
    if image is not None:
        parts += [band.ravel().astype(np.float32) / srgb for band in image]
    return np.stack(parts, axis=1)


def dense_crf(probabilities: np.ndarray, image: np.ndarray, settings: CrfSettings = CrfSettings()) -> np.ndarray:
    """Refined per-pixel probabilities (n_classes, h, w) float32 from unary probabilities (n_classes, h, w; a pixel
    with no evidence has equal probabilities) and an image (bands, h, w) in display levels (0..255), on the grid
    given (downscaling is the caller's)."""
    n, h, w = probabilities.shape
    if image.shape[1:] != (h, w):
        raise ValueError(f"image {image.shape[1:]} and probabilities {(h, w)} differ in size")
    unary = -np.log(np.clip(probabilities.reshape(n, -1).T.astype(np.float32), PROB_FLOOR, None))  # (N, n)
    kernels = []
    if settings.compat_gaussian:
        kernels.append((Lattice(pixel_features(h, w, settings.sxy_gaussian)), settings.compat_gaussian))
    if settings.compat_bilateral:
        kernels.append((Lattice(pixel_features(h, w, settings.sxy_bilateral, image, settings.srgb)),
                        settings.compat_bilateral))
    costs = None if settings.compatibility is None else np.asarray(settings.compatibility, np.float32)
    if costs is not None and costs.shape != (n, n):
        raise ValueError(f"the compatibility matrix is {costs.shape}, the classes {n}")
    q = _softmax(-unary)
    for _ in range(settings.iterations):
        energy = -unary
        for lattice, weight in kernels:
            message = lattice.normalised(q)
            energy = energy - weight * (message @ costs.T) if costs is not None else energy + weight * message
        q = _softmax(energy)
    return np.ascontiguousarray(q.T).reshape(n, h, w)


@numba.njit(cache=True, parallel=True)
def _softmax(energy: np.ndarray) -> np.ndarray:
    """Softmax over classes of (N, n) energies."""
    n, c = energy.shape
    out = np.empty_like(energy)
    for p in numba.prange(n):
        top = energy[p, 0]
        for k in range(1, c):
            top = max(top, energy[p, k])
        total = 0.0
        for k in range(c):
            e = math.exp(energy[p, k] - top)
            out[p, k] = e
            total += e
        for k in range(c):
            out[p, k] /= total
    return out


@numba.njit(cache=True, inline="always")
def _mix(h: np.uint64, k: np.int64) -> np.uint64:
    return (h ^ np.uint64(np.uint32(k))) * np.uint64(1099511628211)


@numba.njit(cache=True, inline="always")
def _final(h: np.uint64) -> np.uint64:
    h ^= h >> np.uint64(33)  # the high bits into the low ones that the table index takes
    h *= np.uint64(0xFF51AFD7ED558CCD)
    return h ^ (h >> np.uint64(33))


@numba.njit(cache=True)
def _find(table: np.ndarray, keys: np.ndarray, key: np.ndarray) -> tuple[int, int]:
    """(slot, vertex) of `key` in an open-addressing table; vertex -1 where absent (slot then free)."""
    d = key.shape[0]
    h = np.uint64(14695981039346656037)
    for i in range(d):
        h = _mix(h, key[i])
    mask = np.int64(table.shape[0] - 1)
    slot = np.int64(_final(h) & np.uint64(mask))
    while True:
        v = table[slot]
        if v < 0:
            return slot, -1
        same = True
        for i in range(d):
            if keys[v, i] != key[i]:
                same = False
                break
        if same:
            return slot, v
        slot = (slot + 1) & mask


@numba.njit(cache=True, inline="always")
def _neighbour(table: np.ndarray, keys: np.ndarray, v: int, j: int, sign: int) -> int:
    """The vertex one step from vertex v along lattice direction j (sign +1 or -1), or -1: keys[v] + sign * (1, ..,
    1, -d at j, 1, ..) without building it."""
    d = keys.shape[1]
    h = np.uint64(14695981039346656037)
    for i in range(d):
        h = _mix(h, keys[v, i] + sign * (-d if i == j else 1))
    mask = np.int64(table.shape[0] - 1)
    slot = np.int64(_final(h) & np.uint64(mask))
    while True:
        u = table[slot]
        if u < 0:
            return -1
        same = True
        for i in range(d):
            if keys[u, i] != keys[v, i] + sign * (-d if i == j else 1):
                same = False
                break
        if same:
            return u
        slot = (slot + 1) & mask


@numba.njit(cache=True, parallel=True)
def _neighbours(table: np.ndarray, keys: np.ndarray, count: int) -> np.ndarray:
    d1 = keys.shape[1] + 1
    neighbours = np.empty((d1, count, 2), np.int32)
    for v in numba.prange(count):
        for j in range(d1):
            neighbours[j, v, 0] = _neighbour(table, keys, v, j, 1)
            neighbours[j, v, 1] = _neighbour(table, keys, v, j, -1)
    return neighbours


@numba.njit(cache=True)
def _rehash(keys: np.ndarray, count: int, size: int) -> np.ndarray:
    table = np.full(size, -1, np.int32)
    for v in range(count):
        slot, _ = _find(table, keys, keys[v])
        table[slot] = v
    return table


CHUNK = 4096


@numba.njit(cache=True, parallel=True)
def _simplices(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each point's enclosing simplex on the lattice (Adams et al. 2010): its remainder-0 corner and the ranks that
    give the other corners, and the point's barycentric weights; points in parallel."""
    n, d = features.shape
    d1 = d + 1
    scale = np.empty(d)
    for i in range(d):
        scale[i] = math.sqrt(2.0 / 3.0) * d1 / math.sqrt((i + 1.0) * (i + 2.0))
    rem0s = np.empty((n, d1), np.int32)
    ranks = np.empty((n, d1), np.int8)
    weights = np.empty((n, d1), np.float32)
    for chunk in numba.prange((n + CHUNK - 1) // CHUNK):
        elevated = np.empty(d1)
        rem0 = np.empty(d1, np.int64)
        rank = np.empty(d1, np.int64)
        bary = np.empty(d1 + 1)
        for p in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            total = 0.0
            for i in range(d, 0, -1):
                cf = features[p, i - 1] * scale[i - 1]
                elevated[i] = total - i * cf
                total += cf
            elevated[0] = total
            s = 0
            for i in range(d1):
                v = elevated[i] / d1
                up = math.ceil(v) * d1
                down = math.floor(v) * d1
                rem0[i] = up if up - elevated[i] < elevated[i] - down else down
                s += rem0[i]
            s //= d1
            rank[:] = 0
            for i in range(d):
                for j in range(i + 1, d1):
                    if elevated[i] - rem0[i] < elevated[j] - rem0[j]:
                        rank[i] += 1
                    else:
                        rank[j] += 1
            if s > 0:
                for i in range(d1):
                    if rank[i] >= d1 - s:
                        rem0[i] -= d1
                        rank[i] += s - d1
                    else:
                        rank[i] += s
            elif s < 0:
                for i in range(d1):
                    if rank[i] < -s:
                        rem0[i] += d1
                        rank[i] += d1 + s
                    else:
                        rank[i] += s
            bary[:] = 0.0
            for i in range(d1):
                v = (elevated[i] - rem0[i]) / d1
                bary[d - rank[i]] += v
                bary[d1 - rank[i]] -= v
            bary[0] += 1.0 + bary[d1]
            for i in range(d1):
                rem0s[p, i] = rem0[i]
                ranks[p, i] = rank[i]
                weights[p, i] = bary[i]
    return rem0s, ranks, weights


@numba.njit(cache=True)
def _corners(rem0s: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each point's d+1 simplex corners as vertex indices (a hash table of lattice keys), and the keys and table."""
    n, d1 = rem0s.shape
    d = d1 - 1
    vertices = np.empty((n, d1), np.int32)
    capacity = 1024
    while capacity < 2 * n:
        capacity *= 2
    keys = np.empty((capacity // 2, d), np.int32)
    table = np.full(capacity, -1, np.int32)
    count = 0
    key = np.empty(d, np.int32)
    for p in range(n):
        if p > 0:
            same = True
            for i in range(d1):
                if rem0s[p, i] != rem0s[p - 1, i] or ranks[p, i] != ranks[p - 1, i]:
                    same = False
                    break
            if same:  # the previous point's simplex (neighbouring pixels often share one): no hashing
                for r in range(d1):
                    vertices[p, r] = vertices[p - 1, r]
                continue
        for r in range(d1):
            for i in range(d):
                key[i] = rem0s[p, i] + r if ranks[p, i] <= d - r else rem0s[p, i] + r - d1
            slot, v = _find(table, keys, key)
            if v < 0:
                if count == keys.shape[0]:
                    grown = np.empty((2 * keys.shape[0], d), np.int32)
                    grown[:count] = keys[:count]
                    keys = grown
                    table = _rehash(keys, count, 2 * keys.shape[0])
                    slot, v = _find(table, keys, key)
                keys[count] = key
                table[slot] = count
                v = count
                count += 1
            vertices[p, r] = v
    return vertices, keys[:count], table


def _build(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each point's d+1 simplex corners (vertex indices) and barycentric weights, and each vertex's two neighbours
    along each of the d+1 lattice directions (-1 where absent)."""
    rem0s, ranks, weights = _simplices(features)
    vertices, keys, table = _corners(rem0s, ranks)
    del rem0s, ranks
    return vertices, weights, _neighbours(table, keys, keys.shape[0])


@numba.njit(cache=True)
def _by_vertex(vertices: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """The (point, corner) pairs grouped by vertex (a counting sort): their flat index p * (d+1) + r into
    `vertices` and `weights`, and each vertex's start among them."""
    n, d1 = vertices.shape
    starts = np.zeros(n_vertices + 1, np.int64)
    for p in range(n):
        for r in range(d1):
            starts[vertices[p, r] + 1] += 1
    for v in range(n_vertices):
        starts[v + 1] += starts[v]
    fill = starts[:-1].copy()
    entries = np.empty(n * d1, np.int32)
    for p in range(n):
        for r in range(d1):
            v = vertices[p, r]
            entries[fill[v]] = p * d1 + r
            fill[v] += 1
    return entries, starts


@numba.njit(cache=True, parallel=True)
def _splat(values: np.ndarray, weights: np.ndarray, entries: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(N, c) point values onto (V, c) lattice vertices, each vertex gathering its points' weighted values."""
    c = values.shape[1]
    d1 = weights.shape[1]
    flat = weights.ravel()
    m = starts.shape[0] - 1
    lattice = np.zeros((m, c), np.float32)
    for v in numba.prange(m):
        for i in range(starts[v], starts[v + 1]):
            e = entries[i]
            p = e // d1
            w = flat[e]
            for k in range(c):
                lattice[v, k] += w * values[p, k]
    return lattice


@numba.njit(cache=True, parallel=True)
def _blur(lattice: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(1, 2, 1) / 4 along each lattice direction in turn."""
    m, c = lattice.shape
    current, spare = lattice, np.empty_like(lattice)
    for j in range(neighbours.shape[0]):
        for v in numba.prange(m):
            a, b = neighbours[j, v, 0], neighbours[j, v, 1]
            for k in range(c):
                total = np.float32(0.5) * current[v, k]
                if a >= 0:
                    total += np.float32(0.25) * current[a, k]
                if b >= 0:
                    total += np.float32(0.25) * current[b, k]
                spare[v, k] = total
        current, spare = spare, current
    return current


@numba.njit(cache=True, parallel=True)
def _slice(lattice: np.ndarray, vertices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(V, c) lattice values back onto the (N, c) points."""
    c = lattice.shape[1]
    n, d1 = vertices.shape
    out = np.zeros((n, c), np.float32)
    for p in numba.prange(n):
        for r in range(d1):
            w = weights[p, r]
            v = vertices[p, r]
            for k in range(c):
                out[p, k] += w * lattice[v, k]
    return out
