"""Spectral features of chips, the input of `spectral` and `fused` bundles: per-band statistics, and normalised
difference indices (NDVI, NDWI, ...) where the bands' roles (red, NIR, ...) are known.

Features, in this order: for each band in turn its ``mean, std, min, max, p10, p50, p90`` over the chip's valid
(finite) pixels (std with ddof 0, percentiles linearly interpolated); then for each index its ``mean, std`` of
(a - b) / (a + b) over the pixels where a + b != 0. A chip with no valid pixel gives NaN; `SpectralSpec.features`
hands a head 0 in place of NaN.

Band roles come from what the chips' source files say: band descriptions ('red', 'nir08', 'B04'), or file names
in the usual Landsat and Sentinel-2 spellings (``LC08_..._SR_B4``, ``T33UUP_..._B04``, GRASS's ``lsat7_2000_30``).
A name without a sensor (``landsat_b4``) is read as Landsat 8/9 (OLI), the current collection.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from landcover.errors import LandcoverError

BAND_STATS = ("mean", "std", "min", "max", "p10", "p50", "p90")
ROLES = ("blue", "green", "red", "nir", "swir1", "swir2")
INDICES = {
    "ndvi": ("nir", "red"),      # vegetation (Rouse et al. 1974)
    "ndwi": ("green", "nir"),    # open water (McFeeters 1996)
    "mndwi": ("green", "swir1"),  # water, built-up suppressed (Xu 2006)
    "ndbi": ("swir1", "nir"),    # built-up (Zha et al. 2003)
}
"""Normalised difference indices: name -> (a, b) roles of (a - b) / (a + b)."""

WORDS = {"blue": "blue", "green": "green", "red": "red", "nir": "nir", "nir08": "nir", "swir1": "swir1",
         "swir16": "swir1", "swir2": "swir2", "swir22": "swir2"}
SENTINEL2 = {"02": "blue", "03": "green", "04": "red", "08": "nir", "8a": "nir", "11": "swir1", "12": "swir2"}
OLI = {"2": "blue", "3": "green", "4": "red", "5": "nir", "6": "swir1", "7": "swir2"}
TM = {"1": "blue", "2": "green", "3": "red", "4": "nir", "5": "swir1", "7": "swir2"}
GRASS_TM = {"10": "blue", "20": "green", "30": "red", "40": "nir", "50": "swir1", "70": "swir2"}
"""Band numbers per sensor (Sentinel-2 MSI, Landsat 8/9 OLI, Landsat 4-7 TM/ETM+, and GRASS's TM naming)."""


def band_role(name: str) -> str | None:
    """The role of a band from its description or file name, or None when the name does not say."""
    text = name.lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", text) if t]
    for token in tokens:
        if token in WORDS:
            return WORDS[token]
    last = next((t for t in reversed(tokens) if re.fullmatch(r"b?(\d{1,2}|8a)", t)), None)
    if last is None:
        return None
    number = last.lstrip("b")
    if re.search(r"lsat[457]|l[et]0[457]|landsat[_-]?[457]|etm", text):
        return GRASS_TM.get(number) if len(number) == 2 and number.endswith("0") else TM.get(number)
    if re.search(r"sentinel|s2[ab]?[_-]|msi|l2a|l1c", text) or (len(number) == 2 and last.startswith("b")):
        return SENTINEL2.get(number.zfill(2) if number != "8a" else number)
    if last.startswith("b") or "landsat" in text or re.search(r"l[co]0[89]|oli", text):
        return OLI.get(number)
    return None


def check_roles(roles: Sequence[str | None]) -> None:
    """Refuse a role that is not one of ROLES ('-' or None: a band without one)."""
    for role in roles:
        if role not in (None, "-") and role not in ROLES:
            raise LandcoverError(f"band role {role!r} is not one of {', '.join(ROLES)} (or '-' for none)")


def indices_for(roles: Sequence[str | None]) -> tuple[tuple[str, int, int], ...]:
    """The indices the roles allow: (name, band a, band b), 0-based, in INDICES' order."""
    where = {role: i for i, role in reversed(list(enumerate(roles))) if role}
    return tuple((name, where[a], where[b]) for name, (a, b) in INDICES.items() if a in where and b in where)


@dataclass(frozen=True)
class SpectralSpec:
    """How a chip becomes its spectral feature vector: the bands (named), their roles and the indices."""

    band_names: tuple[str, ...]
    roles: tuple[str | None, ...]
    indices: tuple[tuple[str, int, int], ...]

    @classmethod
    def from_roles(cls, band_names: Sequence[str], roles: Sequence[str | None]) -> SpectralSpec:
        if len(roles) != len(band_names):
            raise LandcoverError(f"{len(roles)} band roles for {len(band_names)} chip bands")
        check_roles(roles)
        return cls(tuple(band_names), tuple(roles), indices_for(roles))

    @property
    def names(self) -> list[str]:
        """Feature names in order ('red_mean', ..., 'ndvi_std')."""
        return ([f"{band}_{stat}" for band in self.band_names for stat in BAND_STATS]
                + [f"{name}_{stat}" for name, _, _ in self.indices for stat in ("mean", "std")])

    def features(self, chips: np.ndarray) -> np.ndarray:
        """(n, bands, h, w) chips -> (n, features) float32 (as the feature cache holds them), 0 where a chip gives
        none."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1] != len(self.band_names):
            raise LandcoverError(f"spectral features of {len(self.band_names)}-band chips: got {chips.shape}")
        return np.nan_to_num(batch_features(chips, self.indices), nan=0.0).astype(np.float32)

    def to_dict(self) -> dict:
        return {"band_names": list(self.band_names), "roles": list(self.roles),
                "indices": [list(i) for i in self.indices], "features": self.names}

    @classmethod
    def from_dict(cls, data: dict) -> SpectralSpec:
        return cls(tuple(data["band_names"]), tuple(data["roles"]), tuple(tuple(i) for i in data["indices"]))


def batch_features(chips: np.ndarray, indices: Sequence[tuple[str, int, int]] = (),
                   valid: np.ndarray | None = None) -> np.ndarray:
    """(n, bands, h, w) -> (n, bands * 7 + 2 * len(indices)); see the module doc. `valid` (n, h, w) masks pixels."""
    n, bands = chips.shape[:2]
    data = chips.reshape(n, bands, -1).astype(np.float64)
    keep = np.isfinite(data).all(axis=1)
    if valid is not None:
        keep &= np.asarray(valid, bool).reshape(n, -1)
    data = np.where(keep[:, None], data, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a chip without valid pixels gives NaN by design
        q = np.nanpercentile(data, [10, 50, 90], axis=2) if not keep.all() else np.percentile(data, [10, 50, 90],
                                                                                                axis=2)
        stats = [np.nanmean(data, 2), np.nanstd(data, 2), np.nanmin(data, 2), np.nanmax(data, 2), q[0], q[1], q[2]]
        out = [np.stack(stats, axis=2).reshape(n, -1)]
        for _, a, b in indices:
            total = data[:, a] + data[:, b]
            ratio = np.where(total != 0, (data[:, a] - data[:, b]) / np.where(total != 0, total, 1), np.nan)
            out.append(np.stack([np.nanmean(ratio, 1), np.nanstd(ratio, 1)], axis=1))
    return np.concatenate(out, axis=1)


def spectral_features(pixels: np.ndarray, valid: np.ndarray | None = None,
                      indices: Sequence[tuple[str, int, int]] = ()) -> np.ndarray:
    """One chip (bands, h, w) -> its feature vector (float64); NaN where it has no valid pixel."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3:
        raise LandcoverError(f"spectral features need a chip of shape (bands, h, w), got {pixels.shape}")
    for name, a, b in indices:
        if not (0 <= a < pixels.shape[0] and 0 <= b < pixels.shape[0]):
            raise LandcoverError(f"{name}: bands {a}, {b} are not band indices of a {pixels.shape[0]}-band chip")
    if valid is not None and np.asarray(valid).shape != pixels.shape[1:]:
        raise LandcoverError(f"valid mask {np.asarray(valid).shape} does not match the chip's {pixels.shape[1:]}")
    return batch_features(pixels[None], indices, None if valid is None else np.asarray(valid)[None])[0]
