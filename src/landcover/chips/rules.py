"""Rules that label a tile or reject it: point agreement, purity, nodata, random keep."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

import numpy as np

from landcover.errors import LandcoverError
from landcover.schemes import INVALID

REJECTIONS = ("outside_aoi", "outside_scene", "duplicate", "nodata", "unlabelled", "points_disagree", "impure",
              "rules_disagree", "empty", "under_labelled", "not_sampled")
"""Reasons a tile can be rejected, in the order the rules check them."""


@dataclass(frozen=True)
class Rules:
    """How tiles are kept: K x K points agree and/or purity >= P, at most N nodata pixels, keep a fraction."""

    points: int | None = 3
    purity: float | None = None
    max_nodata: int = 0
    keep: float = 1.0
    seed: int = 0
    min_labelled: float = 0.0
    keep_empty: bool = False

    @classmethod
    def parse(cls, specs: list[str] | None, max_nodata: int = 0, keep: float = 1.0, seed: int = 0,
              min_labelled: float = 0.0, keep_empty: bool = False, default: tuple[str, ...] = ("points:3",)) -> Rules:
        """Rules from specs like 'points:3' and 'purity:0.9' (`default` when none are given)."""
        points = purity = None
        if not 0 <= min_labelled <= 1:
            raise LandcoverError(f"--min-labelled {min_labelled} must be between 0 and 1")
        for spec in specs or default:
            match = re.fullmatch(r"(points|purity):([0-9.]+)", spec.strip())
            if not match:
                raise LandcoverError(f"rule {spec!r} is not 'points:K' or 'purity:P'")
            kind, value = match.groups()
            if kind == "points":
                if not value.isdigit() or int(value) < 1:
                    raise LandcoverError(f"rule {spec!r}: K must be a whole number >= 1")
                points = int(value)
            else:
                purity = float(value)
                if not 0 <= purity <= 1:
                    raise LandcoverError(f"rule {spec!r}: P must be between 0 and 1")
        if max_nodata < 0:
            raise LandcoverError(f"--max-nodata {max_nodata} must be >= 0")
        if not 0 < keep <= 1:
            raise LandcoverError(f"--keep {keep} must be in (0, 1]")
        return cls(points, purity, max_nodata, keep, seed, min_labelled, keep_empty)

    def to_dict(self) -> dict:
        """The rules as plain data."""
        return {"points": self.points, "purity": self.purity, "max_nodata": self.max_nodata,
                "keep": self.keep, "seed": self.seed, "min_labelled": self.min_labelled,
                "keep_empty": self.keep_empty}

    def point_offsets(self, tile: int) -> np.ndarray:
        """Sample point positions within a core tile, in pixels from its upper-left corner."""
        k = self.points or 0
        return (np.arange(k) + 0.5) * tile / k

    def sampled(self, key: str) -> bool:
        """Whether `--keep` keeps this tile: a seeded draw that depends only on the key."""
        if self.keep >= 1:
            return True
        digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.keep


@dataclass(frozen=True)
class Verdict:
    """A tile's label (or the reason it was rejected) and the evidence for it."""

    label_id: int
    reason: str | None
    purity: float
    agree_points: int | None
    nodata_px: int


def judge(rules: Rules, key: str, core: np.ndarray, points: np.ndarray | None, nodata_px: int) -> Verdict:
    """Apply the rules to one tile: core class ids on the chip grid, class ids at the sample points."""
    counts = np.bincount(core.ravel(), minlength=INVALID + 1)[:INVALID]
    majority = int(counts.argmax())
    purity = float(counts[majority]) / core.size
    agree = None
    label = majority if counts[majority] else INVALID
    if points is not None:
        pc = np.bincount(points, minlength=INVALID + 1)
        top = int(pc[:INVALID].argmax())
        agree = int(pc[top]) if pc[top] else 0
    def verdict(reason: str | None, lab: int = label) -> Verdict:
        return Verdict(lab, reason, purity, agree, nodata_px)
    if nodata_px > rules.max_nodata:
        return verdict("nodata")
    if points is not None:
        if agree == 0:
            return verdict("unlabelled", INVALID)
        if agree < len(points):
            return verdict("points_disagree", top)
        label = top
    if label == INVALID:
        return verdict("unlabelled")
    if rules.purity is not None:
        if purity < rules.purity:
            return verdict("impure")
        if label != majority:
            return verdict("rules_disagree")
    if not rules.sampled(key):
        return verdict("not_sampled")
    return verdict(None, label)


def judge_fixed(rules: Rules, key: str, label_id: int, nodata_px: int) -> Verdict:
    """A tile whose label is given (centred on a labelled point): only nodata and --keep apply."""
    reason = "nodata" if nodata_px > rules.max_nodata else None if rules.sampled(key) else "not_sampled"
    return Verdict(label_id, reason, 1.0, None, nodata_px)


def judge_mask(rules: Rules, key: str, mask: np.ndarray, nodata_px: int) -> Verdict:
    """A segmentation pair: enough labelled pixels (empty tiles only with keep_empty), then the usual rules."""
    counts = np.bincount(mask.ravel(), minlength=INVALID + 1)[:INVALID]
    labelled = float(counts.sum()) / mask.size
    majority = int(counts.argmax()) if counts.sum() else INVALID
    verdict = Verdict(majority, None, float(counts.max()) / mask.size, None, nodata_px)
    if nodata_px > rules.max_nodata:
        return replace(verdict, reason="nodata")
    if labelled == 0 and not rules.keep_empty:
        return replace(verdict, reason="empty")
    if labelled < rules.min_labelled and not (labelled == 0 and rules.keep_empty):
        return replace(verdict, reason="under_labelled")
    if rules.purity is not None and verdict.purity < rules.purity:
        return replace(verdict, reason="impure")
    if not rules.sampled(key):
        return replace(verdict, reason="not_sampled")
    return verdict
