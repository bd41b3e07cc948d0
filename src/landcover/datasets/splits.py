"""Train / valid / test splits of a manifest: by group (region) or spatial block, stratified, balanced, leak-free."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from landcover.atomic import write_text
from landcover.bounds import COUNT
from landcover.datasets.materialize import build_tree, check_tree_target
from landcover.errors import LandcoverError
from landcover.manifest import read_manifest, write_manifest
from landcover.plots import split_counts

SPLITS = ("train", "valid", "test")
UNUSED = "unused"
"""The split of rows held out by balancing or by the overlap guard: kept in the manifest, used by no stage."""
RESTARTS = 8
"""Seeded restarts of the group assignment search; the lowest-cost assignment wins."""
MAX_SWAP_GROUPS = 600
"""Above this many groups the search only moves groups (pairwise swaps cost G^2 memory)."""


@dataclass(frozen=True)
class SplitSpec:
    """How to split: group column, spatial blocks of N x N tiles, or random; ratios, balance, seed, guard."""

    ratios: tuple[float, ...] = (0.8, 0.2)
    by: str = "region"
    blocks: int | None = None
    random: bool = False
    balance: str | None = None
    seed: int = 0
    guard: bool = True

    @property
    def mode(self) -> str:
        """'random', 'blocks' or 'group'."""
        return "random" if self.random else "blocks" if self.blocks else "group"

    @property
    def names(self) -> tuple[str, ...]:
        """The split names, in ratio order."""
        return SPLITS[:len(self.ratios)]

    def to_dict(self) -> dict:
        """The settings as plain data (recorded in the manifest and split.json)."""
        d = {"mode": self.mode, **asdict(self), "ratios": dict(zip(self.names, self.ratios, strict=True))}
        for key, keep in (("by", "group"), ("blocks", "blocks")):
            if self.mode != keep:
                d.pop(key)
        d.pop("random")
        if self.mode == "random":
            d.pop("guard")
        return d


@dataclass
class SplitResult:
    """A split manifest and what the split achieved."""

    frame: gpd.GeoDataFrame
    spec: SplitSpec
    counts: pd.DataFrame
    """Chips per class (rows) and split (columns, plus 'unused' and 'total')."""
    overlaps: int
    """Pairs of chips in different splits whose footprints overlap, before the guard."""
    leaks: int
    """Such pairs left in the written split (0 with the guard on)."""
    unused: dict = field(default_factory=dict)
    """Rows set to 'unused', by reason: 'guard' and 'balance'."""
    groups: dict = field(default_factory=dict)
    """Group (or block) -> split, for group and block modes."""
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        """The class-by-split table and the leakage line a person reads after a split."""
        how = {"group": f"by {self.spec.by} ({len(self.groups)} groups)",
               "blocks": f"by blocks of {self.spec.blocks} x {self.spec.blocks} tiles ({len(self.groups)} blocks)",
               "random": "at random, stratified by class"}[self.spec.mode]
        lines = [f"split {int(self.counts['total'].sum())} chips {how}, seed {self.spec.seed}"]
        cols = list(self.counts.columns)
        width = max([5, *(len(str(c)) for c in self.counts.index)])
        lines.append(f"  {'class':<{width}}" + "".join(f" {c:>8}" for c in cols))
        for name, row in self.counts.iterrows():
            lines.append(f"  {name!s:<{width}}" + "".join(f" {int(v):>8}" for v in row))
        total = self.counts.sum()
        lines.append(f"  {'total':<{width}}" + "".join(f" {int(v):>8}" for v in total))
        used = total[list(self.spec.names)].sum()
        shares = "  ".join(f"{s} {total[s] / used:.1%} (target {r:.1%})"
                           for s, r in zip(self.spec.names, self.spec.ratios, strict=True)) if used else ""
        lines.append(f"  shares: {shares}")
        guard = f", guard set {self.unused.get('guard', 0)} chips unused" if self.spec.mode != "random" else ""
        lines.append(f"overlapping footprints across splits: {self.overlaps} pairs{guard}; left: {self.leaks}")
        lines += self.notes
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Everything split.json records."""
        total = self.counts.sum()
        used = total[list(self.spec.names)].sum()
        return {"settings": self.spec.to_dict(),
                "counts": {s: {c: int(n) for c, n in self.counts[s].items() if n}
                           for s in [*self.spec.names, UNUSED]},
                "sizes": {s: int(total[s]) for s in [*self.spec.names, UNUSED]},
                "shares": {s: round(float(total[s] / used), 6) if used else 0.0 for s in self.spec.names},
                "unused": dict(self.unused), "overlapping_pairs": self.overlaps, "leaking_pairs": self.leaks,
                "groups": dict(self.groups), "notes": list(self.notes)}


def parse_ratios(text: str) -> tuple[float, ...]:
    """'80:20' or '0.94:0.05:0.01' -> fractions of train, valid (, test); they must sum to 1 or 100."""
    parts = [p for p in re.split(r"[:,/]", str(text).strip())]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise LandcoverError(f"--ratios {text!r} is not like '80:20' or '0.7:0.2:0.1'") from None
    if len(values) not in (2, 3):
        raise LandcoverError(f"--ratios {text!r} needs 2 (train:valid) or 3 (train:valid:test) parts")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise LandcoverError(f"--ratios {text!r}: every ratio must be a positive number")
    total = sum(values)
    if not (math.isclose(total, 1, abs_tol=1e-6) or math.isclose(total, 100, abs_tol=1e-4)):
        raise LandcoverError(f"--ratios {text!r} sums to {total:g}, not 1 or 100")
    return tuple(v / total for v in values)


def parse_balance(text: str | None) -> tuple[str, int] | None:
    """None, 'min' -> ('min', 0), 'cap:N' -> ('cap', N)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(min|cap:(\d+))\s*", str(text))
    if not match or (match.group(2) is not None and int(match.group(2)) < 1):
        raise LandcoverError(f"--balance {text!r} is not 'min' or 'cap:N' (N >= 1)")
    return ("cap", int(match.group(2))) if match.group(2) else ("min", 0)


def block_ids(frame: gpd.GeoDataFrame, n: int, grid: dict | None = None) -> pd.Series:
    """Each chip's block of n x n tiles, by its upper-left corner, as 'b<col>_<row>'.

    A block's side is n tile widths (the grid's tile size, so overlap does not change the blocks; without
    a recorded grid, the footprint width), aligned on the grid's origin. A chip belongs to the block that
    holds its upper-left corner, even where it reaches into the next one (the overlap guard handles that).
    """
    if n < 1:
        raise LandcoverError(f"--blocks {n} must be >= 1")
    bounds = frame.geometry.bounds
    if grid and {"tile_px", "res", "x0", "y0"} <= grid.keys():
        width, pad = grid["tile_px"] * grid["res"], grid.get("pad_px", 0) * grid["res"]
        x0, y0 = grid["x0"] - pad, grid["y0"] + pad
    else:
        width, x0, y0 = float(np.median(bounds["maxx"] - bounds["minx"])), 0.0, 0.0
    side = n * width
    cols = np.floor((bounds["minx"].to_numpy() - x0) / side + 1e-9).astype(int)
    rows = np.floor((y0 - bounds["maxy"].to_numpy()) / side + 1e-9).astype(int)
    return pd.Series([f"b{c}_{r}" for c, r in zip(cols, rows, strict=True)], index=frame.index)


def _cost(counts: np.ndarray, ratio: np.ndarray, class_totals: np.ndarray) -> np.ndarray:
    """Per-split cost of split class counts (..., K): size share off target, plus mean class share off target."""
    n = class_totals.sum()
    size = (counts.sum(-1) / n - ratio) ** 2
    share = ((counts / class_totals - ratio[..., None]) ** 2).mean(-1)
    return size + share


def assign_groups(groups: pd.Series, labels: pd.Series, ratios: tuple[float, ...], seed: int = 0) -> dict:
    """Assign whole groups to splits so each split's size and class mix approach the targets.

    Cost of an assignment: over splits, (split share of all chips - ratio)^2 plus the mean over classes of
    (split share of the class's chips - ratio)^2, so size counts as much as all classes together and a rare
    class as much as a common one. Search: greedy (largest group first, to the split whose cost drops most;
    no split left empty), then best-improvement hill climbing over single-group moves and pairwise swaps;
    repeated from RESTARTS seeded, perturbed orders, keeping the cheapest. Returns group -> split index.
    """
    table = pd.crosstab(groups, labels)
    names, counts = table.index.tolist(), table.to_numpy(float)
    n_groups, n_splits = len(names), len(ratios)
    ratio, totals = np.asarray(ratios, float), counts.sum(0)
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for attempt in range(RESTARTS):
        noise = rng.lognormal(0, 0.5 if attempt else 0.0, n_groups) * (1 + 1e-6 * rng.random(n_groups))
        assign = _greedy(counts, ratio, totals, np.argsort(-counts.sum(1) * noise, kind="stable"))
        assign = _climb(counts, ratio, totals, assign)
        split_counts = np.stack([counts[assign == s].sum(0) for s in range(n_splits)])
        cost = _cost(split_counts, ratio, totals).sum()
        if cost < best_cost - 1e-12:
            best, best_cost = assign, cost
    return {g: int(s) for g, s in zip(names, best, strict=True)}


def _greedy(counts: np.ndarray, ratio: np.ndarray, totals: np.ndarray, order: np.ndarray) -> np.ndarray:
    n_splits = len(ratio)
    split_counts = np.zeros((n_splits, counts.shape[1]))
    members = np.zeros(n_splits, int)
    assign = np.empty(len(counts), int)
    for left, g in zip(range(len(order), 0, -1), order, strict=True):
        delta = _cost(split_counts + counts[g], ratio, totals) - _cost(split_counts, ratio, totals)
        empty = members == 0
        if left <= empty.sum():  # the last groups must fill the empty splits
            delta = np.where(empty, delta, np.inf)
        s = int(np.argmin(delta))
        assign[g], members[s] = s, members[s] + 1
        split_counts[s] += counts[g]
    return assign


def _climb(counts: np.ndarray, ratio: np.ndarray, totals: np.ndarray, assign: np.ndarray) -> np.ndarray:
    n_splits, assign = len(ratio), assign.copy()
    swaps = len(counts) <= MAX_SWAP_GROUPS
    for _ in range(20 * len(counts) + 100):
        split_counts = np.stack([counts[assign == s].sum(0) for s in range(n_splits)])
        members = np.bincount(assign, minlength=n_splits)
        base = _cost(split_counts, ratio, totals)
        own = split_counts[assign]
        leave = _cost(own - counts, ratio[assign], totals) - base[assign]
        join = _cost(split_counts[None] + counts[:, None], ratio, totals) - base
        move = leave[:, None] + join
        move[np.arange(len(counts)), assign] = np.inf
        move[members[assign] == 1] = np.inf  # never empty a split
        g, s = np.unravel_index(np.argmin(move), move.shape)
        best = move[g, s]
        if swaps:
            swap_in = own[:, None] - counts[:, None] + counts[None]  # g's split, after g <-> h
            swap = (_cost(swap_in, ratio[assign][:, None], totals) - base[assign][:, None]
                    + _cost(swap_in.transpose(1, 0, 2), ratio[assign][None], totals) - base[assign][None])
            swap[assign[:, None] == assign[None]] = np.inf
            h1, h2 = np.unravel_index(np.argmin(swap), swap.shape)
            if swap[h1, h2] < best:
                if swap[h1, h2] >= -1e-12:
                    break
                assign[h1], assign[h2] = assign[h2], assign[h1]
                continue
        if best >= -1e-12:
            break
        assign[g] = s
    return assign


def random_split(labels: pd.Series, ratios: tuple[float, ...], seed: int = 0) -> np.ndarray:
    """Split indices for rows at random, stratified: within every class and overall, counts track the ratios.

    Rows are shuffled within each class and laid out class after class; each row then goes to the split
    furthest behind its target count so far (smooth weighted round robin), so any run of rows, and so
    every class, is split in the ratios to within one chip per split.
    """
    rng = np.random.default_rng(seed)
    codes = pd.factorize(labels, sort=True)[0]
    order = np.lexsort((rng.random(len(codes)), codes))
    ratio = np.asarray(ratios, float)
    given = np.zeros(len(ratio))
    out = np.empty(len(codes), int)
    for i, row in enumerate(order):
        s = int(np.argmax(ratio * (i + 1) - given))
        out[row] = s
        given[s] += 1
    return out


def overlapping_pairs(geoms: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, in different splits whose footprints overlap with positive area (touching is not)."""
    if len(geoms) < 2:
        return np.empty((0, 2), int)
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = (i < j) & (split[i] != split[j])
    i, j = i[keep], j[keep]
    area = shapely.area(shapely.intersection(geoms[i], geoms[j]))
    tiny = 1e-9 * np.minimum(shapely.area(geoms[i]), shapely.area(geoms[j]))
    pairs = np.column_stack([i[area > tiny], j[area > tiny]])
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _guard(geoms: np.ndarray, split: np.ndarray, ratios: tuple[float, ...]) -> np.ndarray:
    """Set unused (-1) one chip of every overlapping cross-split pair: the one whose split is most over target.

    Pairs are visited in a fixed order; each time, the chip of the split with the most chips per unit of
    ratio goes, so the guard's losses are shared in proportion to the ratios rather than all taken from train.
    """
    split = split.copy()
    sizes = np.bincount(split, minlength=len(ratios)).astype(float)
    weight = np.asarray(ratios, float)
    for i, j in overlapping_pairs(geoms, split):
        if split[i] >= 0 and split[j] >= 0:
            a, b = split[i], split[j]
            victim = i if sizes[a] / weight[a] >= sizes[b] / weight[b] else j
            sizes[split[victim]] -= 1
            split[victim] = -1
    return split


def _balance(split: np.ndarray, labels: np.ndarray, how: tuple[str, int], seed: int, n_splits: int) -> np.ndarray:
    """Within each split, keep a seeded random `target` chips of each class; the rest become unused (-1)."""
    split = split.copy()
    for s in range(n_splits):
        rows = np.flatnonzero(split == s)
        if not len(rows):
            continue
        classes, sizes = np.unique(labels[rows], return_counts=True)
        target = sizes.min() if how[0] == "min" else how[1]
        for k, (cls, size) in enumerate(zip(classes, sizes, strict=True)):
            if size > target:
                members = rows[labels[rows] == cls]
                rng = np.random.default_rng([seed, s, k])
                split[rng.permutation(members)[target:]] = -1
    return split


def split_frame(frame: gpd.GeoDataFrame, spec: SplitSpec, info: dict | None = None,
                source: str | Path | None = None) -> SplitResult:
    """Split a manifest in memory: assign, guard against overlaps, balance, count. Only `split` changes."""
    names = spec.names
    if not len(frame):
        raise LandcoverError("the manifest has no chips to split", source)
    if len(frame) < len(names):
        raise LandcoverError(f"{len(frame)} chips cannot fill {len(names)} splits", source)
    balance = parse_balance(spec.balance)
    # row order does not matter (chips in one shard share a path: their chip_id orders them)
    order = np.lexsort((frame["chip_id"].astype(str).to_numpy(), frame["path"].astype(str).to_numpy()))
    rows = frame.iloc[order]
    labels = _labels(rows).to_numpy()
    groups: dict = {}
    if spec.mode == "random":
        split = random_split(pd.Series(labels), spec.ratios, spec.seed)
    else:
        if spec.mode == "blocks":
            keys = block_ids(rows, spec.blocks, (info or {}).get("grid"))
            what = f"{keys.nunique()} blocks of {spec.blocks} x {spec.blocks} tiles"
        else:
            if spec.by not in frame.columns:
                raise LandcoverError(f"no column {spec.by!r} to split by (columns: "
                                     f"{', '.join(c for c in frame.columns if c != 'geometry')})", source)
            keys = rows[spec.by]
            if keys.isna().any():
                raise LandcoverError(f"column {spec.by!r} is empty for {int(keys.isna().sum())} chips", source)
            keys = keys.astype(str)
            what = f"column {spec.by!r} has {keys.nunique()} distinct value(s), which"
        if keys.nunique() < len(names):
            raise LandcoverError(f"{what} cannot fill {len(names)} splits ({', '.join(names)}): "
                                 "give fewer ratios, or use smaller --blocks or another column", source)
        assigned = assign_groups(keys.reset_index(drop=True), pd.Series(labels), spec.ratios, spec.seed)
        groups = {g: names[s] for g, s in sorted(assigned.items())}
        split = keys.map(assigned).to_numpy()
    geoms = rows.geometry.to_numpy()
    unused: dict = {}
    overlaps = len(overlapping_pairs(geoms, split))
    if spec.mode != "random" and spec.guard and overlaps:
        split = _guard(geoms, split, spec.ratios)
        unused["guard"] = int((split < 0).sum())
    notes = []
    if spec.mode == "random" and overlaps:
        notes.append("note: overlapping chips landed in different splits; use --blocks or --by to keep them apart")
    if balance:
        before = int((split < 0).sum())
        split = _balance(split, labels, balance, spec.seed, len(names))
        unused["balance"] = int((split < 0).sum()) - before
    empty = [n for s, n in enumerate(names) if not (split == s).any()]
    if empty:
        raise LandcoverError(f"split {', '.join(empty)} would hold no chips"
                             + (" after the overlap guard (try --no-guard or larger --blocks)"
                                if unused.get("guard") else ""), source)
    used = split >= 0
    leaks = len(overlapping_pairs(geoms[used], split[used]))
    values = np.array([*names, UNUSED], dtype=object)[np.where(split >= 0, split, len(names))]
    placed = np.empty(len(frame), dtype=object)
    placed[order] = values
    out = frame.copy()
    out["split"] = pd.Series(placed, index=frame.index, dtype="string")
    counts = pd.crosstab(_labels(out), out["split"]).reindex(columns=[*names, UNUSED], fill_value=0)
    counts = counts.sort_values(list(names), ascending=False)
    counts["total"] = counts.sum(axis=1)
    counts.columns.name, counts.index.name = None, None
    return SplitResult(out, spec, counts, overlaps, leaks, unused, groups, notes)


def _labels(frame: pd.DataFrame) -> pd.Series:
    """Class names as text; chips with no class (e.g. empty segmentation masks) are '(none)'."""
    return frame["label"].astype(object).where(frame["label"].notna(), "(none)").astype(str)


def split_manifest(path: str | Path, ratios: str | tuple[float, ...] = "80:20", *, by: str = "region",
                   blocks: int | None = None, random: bool = False, balance: str | None = None, seed: int = 0,
                   guard: bool = True, materialize: str | Path | None = None, plot: bool = True) -> SplitResult:
    """Assign every chip of a manifest (a file, or the chips folder holding it) to train / valid (/ test), in place;
    write split.json, split_counts.png and, with `materialize`, a folder tree of hard links.

    Whole groups go to one split: chips sharing a value of the column `by`, or square `blocks` of N x N tiles;
    `random=True` splits chips at random. `ratios` is '80:20' or '80:10:10' (or fractions); `balance` is 'min' or
    'cap:N'; `guard` holds out one chip of every pair that overlaps across splits.

        split_manifest("chips/", "80:10:10", blocks=4)
    """
    ratios = parse_ratios(ratios if isinstance(ratios, str) else ":".join(str(r) for r in ratios))
    if blocks is not None:
        COUNT.check(blocks, "--blocks")
    spec = SplitSpec(ratios, by, blocks, random, balance, seed, guard)
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.parquet"
    frame, info = read_manifest(path)
    if materialize and info.get("layout") == "shards":
        raise LandcoverError("--materialize links chip files into a folder tree, and these chips are in shards: "
                             "`landcover export --format webdataset` (or tfrecord) writes them per split", path)
    target = check_tree_target(Path(materialize)) if materialize else None
    result = split_frame(frame, spec, info, path)
    root = path.parent
    tmp_tree = build_tree(result.frame, root, target, spec.names) if target else None
    info = {k: v for k, v in info.items() if k not in ("format_version", "landcover")}
    summary = result.to_dict()
    info["split"] = {**summary["settings"], "counts": summary["counts"], "leaking_pairs": result.leaks}
    write_manifest(result.frame, path, info)
    write_text(root / "split.json", json.dumps({"manifest": path.name, **summary}, indent=2))
    if plot:
        split_counts(result.counts[list(spec.names)], root / "split_counts.png",
                     title=f"{path.parent.name}/{path.name}: chips per class and split")
    else:
        (root / "split_counts.png").unlink(missing_ok=True)  # never leave a figure of an older split
    if tmp_tree:
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp_tree, target)
    return result
