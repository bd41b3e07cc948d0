"""Per-pixel features of the pixel model (`train --task pixels`): what a classical head reads at every pixel.

Channels: the bands as read, then the normalised difference indices their roles allow (NDVI, NDWI, ... as
`landcover.models.spectral` defines them). For each channel: its value, and at each scale sigma (a length in
metres, turned into pixels of the grid the features are computed on):
  smooth     the Gaussian-smoothed value G_sigma * c
  gradient   |grad (G_sigma * c)| x sigma: edges at that scale (central differences of the smoothed channel)
  log        -sigma^2 laplacian(G_sigma * c): blobs brighter than around them at that scale (Laplacian of Gaussian)
  std        sqrt(G_sigma * c^2 - (G_sigma * c)^2): local texture
This is the filter-bank idea of interactive pixel classifiers such as ilastik's: a forest on smoothed and
differentiated responses at a few scales tells a field from a forest by texture and a road from a roof by shape,
which one pixel's bands cannot. The default scales are 1, 2, 4 and 8 pixels of the training imagery, stored in
metres, so a bundle computes the same features at prediction as in training whatever the resolution it is fed.

Context bands (`context`, after the imagery's bands) are another model's class probabilities on the imagery's grid
(the studio's `--bundle`): taken as they are, one feature each after the filters', with no index or filter. The
head reads the imagery's features only; `proba` blends its probabilities with the context's (normalised), the
context's share `context_share` of them.

Invalid pixels (nodata, and outside the raster) take no part: each Gaussian is over the valid pixels only (the
filtered values divided by the filtered validity: normalised convolution), and their own features are NaN (what
the heads send down the tree's missing-value branch). A block then needs `halo_px` pixels of context on each side
to give the values the whole raster would give, near nodata and the raster's edges too: callers read windows with
that margin (filling invalid pixels with the window's mean instead made a pixel's features depend on the window it
was read in: the studio's clicks near Zion's edges differed from predict's by up to 1,100). The Gaussians are
separable float32 convolutions compiled with numba (edges mirrored, the edge pixel repeated), about six times
faster than scipy's float64 filter; each channel's gradient, Laplacian and deviation follow in one more pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numba
import numpy as np

from landcover.errors import LandcoverError
from landcover.models.spectral import check_roles, indices_for

FILTERS = ("smooth", "gradient", "log", "std")
SCALES_PX = (1.0, 2.0, 4.0, 8.0)
"""Default scales, in pixels of the training imagery (stored in metres)."""
TRUNCATE = 3.0
"""Gaussian kernels are cut at this many sigmas: the halo a block needs is TRUNCATE x the largest sigma (+1 for the
differences)."""


@dataclass(frozen=True)
class PixelFeatures:
    """How a window of bands becomes per-pixel features: the bands (named, with roles), the indices, the scales."""

    band_names: tuple[str, ...]
    roles: tuple[str | None, ...]
    indices: tuple[tuple[str, int, int], ...]
    scales_m: tuple[float, ...]
    context: tuple[str, ...] = ()
    """Names of the bands after `band_names`: another model's probability of each class (no index, no filter)."""
    context_share: float = 0.0
    """The context's share of the class probabilities (`proba`), the head's the rest."""

    @classmethod
    def create(cls, band_names: Sequence[str], roles: Sequence[str | None], scales_m: Sequence[float]) -> PixelFeatures:
        if len(roles) != len(band_names):
            raise LandcoverError(f"{len(roles)} band roles for {len(band_names)} bands")
        check_roles(roles)
        if not scales_m or any(not (math.isfinite(s) and s > 0) for s in scales_m):
            raise LandcoverError(f"pixel feature scales must be lengths > 0, got {list(scales_m)}")
        roles = tuple(None if r in (None, "-") else r for r in roles)
        return cls(tuple(band_names), roles, indices_for(roles), tuple(sorted(float(s) for s in scales_m)))

    @property
    def channels(self) -> list[str]:
        return [*self.band_names, *(name for name, _, _ in self.indices)]

    @property
    def n_bands(self) -> int:
        """Bands a window must have: the imagery's, then the context's."""
        return len(self.band_names) + len(self.context)

    @property
    def names(self) -> list[str]:
        """Feature names in order: every channel's value, then per scale and filter ('ndvi_std_60m'), then the
        context bands ('context_water')."""
        out = list(self.channels)
        for scale in self.scales_m:
            out += [f"{c}_{f}_{scale:g}m" for c in self.channels for f in FILTERS]
        return out + [f"context_{c}" for c in self.context]

    def without_context(self) -> PixelFeatures:
        """The same features of the imagery alone (its names a prefix of these)."""
        return replace(self, context=(), context_share=0.0)

    @property
    def head_columns(self) -> int:
        """The features a head reads: the imagery's (the context's come after them)."""
        return len(self.names) - len(self.context)

    def proba(self, head, X: np.ndarray) -> np.ndarray:
        """Class probabilities (rows, classes) of feature rows X: the head's on the imagery's features, blended with
        the context's values normalised to sum to 1 (their share `context_share`)."""
        share = self.context_share
        p = head.predict_proba(X[:, :self.head_columns]) if share < 1 else 0.0
        if share > 0:
            given = np.asarray(X[:, self.head_columns:], np.float64)
            total = given.sum(axis=1, keepdims=True)
            p = (1 - share) * p + share * np.where(total > 0, given / np.where(total > 0, total, 1),
                                                   1 / len(self.context))
        return p

    def top(self, head, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's most probable class and its probability, as `proba` gives them (the head's own fast path
        when the context has no share)."""
        if not self.context_share:
            return head.predict_top(X[:, :self.head_columns])
        p = self.proba(head, X)
        best = p.argmax(axis=1)
        return best, p[np.arange(len(p)), best].astype(np.float32)

    def to_dict(self) -> dict:
        return {"band_names": list(self.band_names), "roles": list(self.roles),
                "indices": [list(i) for i in self.indices], "scales_m": list(self.scales_m), "filters": list(FILTERS),
                "truncate": TRUNCATE, "context": list(self.context), "context_share": self.context_share,
                "features": self.names}

    @classmethod
    def from_dict(cls, data: dict) -> PixelFeatures:
        if data.get("filters", list(FILTERS)) != list(FILTERS) or data.get("truncate", TRUNCATE) != TRUNCATE:
            raise LandcoverError(f"the bundle's pixel features ({data.get('filters')}, truncate "
                                 f"{data.get('truncate')}) are not this landcover's: upgrade landcover")
        return cls(tuple(data["band_names"]), tuple(data["roles"]), tuple(tuple(i) for i in data["indices"]),
                   tuple(float(s) for s in data["scales_m"]), tuple(data.get("context", ())),
                   float(data.get("context_share", 0.0)))

    def halo_px(self, res: float) -> int:
        """Pixels of context a block needs on each side at ground resolution `res` (metres per pixel)."""
        return math.ceil(TRUNCATE * max(self.scales_m) / res) + 1

    def compute(self, pixels: np.ndarray, valid: np.ndarray | None, res: float, threads: int | None = None
                ) -> np.ndarray:
        """(bands, h, w) pixels and (h, w) validity at `res` metres per pixel -> (features, h, w) float32; the
        channels are filtered on `threads` threads (default: numba's, every core unless a pool's or Ray's task was
        given its share, `landcover.engine.use_threads`; the filters release the GIL)."""
        if pixels.ndim != 3 or pixels.shape[0] != self.n_bands:
            raise LandcoverError(f"pixel features of {self.n_bands}-band imagery: got {pixels.shape}")
        data = pixels[:len(self.band_names)].astype(np.float32)
        ok = np.isfinite(data).all(axis=0) if valid is None else valid & np.isfinite(data).all(axis=0)
        channels = list(data)
        with np.errstate(divide="ignore", invalid="ignore"):
            for _, a, b in self.indices:
                total = data[a] + data[b]
                channels.append(np.where(total != 0, (data[a] - data[b]) / total, 0).astype(np.float32))
        n = len(channels)
        out = np.empty((len(self.names), *data.shape[1:]), np.float32)
        kernels = [gaussian_kernel(scale / res) for scale in self.scales_m]
        weights = [_valid_weight(ok, kernel) for kernel in kernels]  # in every window: the same values in any

        def filtered(k: int) -> None:
            out[k] = c = np.where(ok, channels[k], np.float32(0))
            square = np.empty_like(c)
            for j, scale in enumerate(self.scales_m):
                at = n + 4 * (j * n + k)
                _gaussian(c, kernels[j], out[at])
                _gaussian(c * c, kernels[j], square)
                out[at] *= weights[j]
                square *= weights[j]
                _derived(out[at], square, np.float32(scale / res), out[at + 1], out[at + 2], out[at + 3])

        with ThreadPoolExecutor(threads or numba.get_num_threads()) as pool:
            list(pool.map(filtered, range(n)))
        if self.context:
            out[len(out) - len(self.context):] = pixels[len(self.band_names):]
        if not ok.all():
            out[:, ~ok] = np.nan
        return out


def _valid_weight(ok: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """1 / the Gaussian of the validity mask (0 where no valid pixel is in reach): what turns the Gaussian of a
    channel zeroed at invalid pixels into the weighted mean of the valid ones."""
    reach = np.empty(ok.shape, np.float32)
    _gaussian(ok.astype(np.float32), kernel, reach)
    with np.errstate(divide="ignore"):
        return np.where(reach > 1e-6, 1 / reach, np.float32(0)).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The sampled, normalised Gaussian of `sigma` pixels, cut at TRUNCATE sigmas (float32)."""
    radius = int(TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return (weights / weights.sum()).astype(np.float32)


@numba.njit(cache=True, inline="always")
def _mirror(k: int, n: int) -> int:
    """Index k folded into [0, n) by reflection about the edges (the edge pixel repeated: d c b a | a b c d)."""
    while k < 0 or k >= n:
        k = -k - 1 if k < 0 else 2 * n - k - 1
    return k


@numba.njit(cache=True, nogil=True)
def _gaussian(channel: np.ndarray, kernel: np.ndarray, out: np.ndarray) -> None:
    """The separable Gaussian of a channel into `out`, in float32: columns, then rows, each inner loop over a
    contiguous row (vectorised: four times scipy's filter, which works in float64 per line)."""
    h, w = channel.shape
    r = len(kernel) // 2
    columns = np.zeros((h, w), np.float32)
    for i in range(h):
        for t in range(-r, r + 1):
            row, weight = channel[_mirror(i + t, h)], kernel[t + r]
            for j in range(w):
                columns[i, j] += weight * row[j]
    line = np.empty(w + 2 * r, np.float32)
    for i in range(h):
        for j in range(w + 2 * r):
            line[j] = columns[i, _mirror(j - r, w)]
        row = out[i]
        row[:] = 0
        for t in range(2 * r + 1):
            weight = kernel[t]
            for j in range(w):
                row[j] += weight * line[j + t]


@numba.njit(cache=True, nogil=True)
def _derived(smooth: np.ndarray, square: np.ndarray, sigma: np.float32, gradient: np.ndarray, log: np.ndarray,
             std: np.ndarray) -> None:
    """From a channel's smoothed value and smoothed square at one scale, in one pass: the gradient magnitude
    (central differences, one-sided at the edges) x sigma, -sigma^2 x the 5-point Laplacian (edges replicated) and
    the local standard deviation."""
    h, w = smooth.shape
    for i in range(h):
        up, down = max(i - 1, 0), min(i + 1, h - 1)
        for j in range(w):
            left, right = max(j - 1, 0), min(j + 1, w - 1)
            g = smooth[i, j]
            gy = (smooth[down, j] - smooth[up, j]) / np.float32(max(down - up, 1))
            gx = (smooth[i, right] - smooth[i, left]) / np.float32(max(right - left, 1))
            gradient[i, j] = np.sqrt(gx * gx + gy * gy) * sigma
            around = smooth[up, j] + smooth[down, j] + smooth[i, left] + smooth[i, right]
            log[i, j] = (around - 4 * g) * -(sigma * sigma)
            std[i, j] = np.sqrt(max(square[i, j] - g * g, np.float32(0)))


def default_scales(res: float) -> tuple[float, ...]:
    """The default scales in metres for imagery of `res` metres per pixel."""
    return tuple(s * res for s in SCALES_PX)
