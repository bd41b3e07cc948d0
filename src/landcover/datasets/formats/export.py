"""Export a chips manifest to dataset files: shards planned here, written in parallel on the engine."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from landcover.atomic import check_output, replacing, temp_path, write_text
from landcover.datasets.formats.mapfile import write_mapfile
from landcover.datasets.formats.sample import Sample, file_type
from landcover.datasets.formats.tfrecord import ENCODINGS, write_tfrecord
from landcover.datasets.formats.webdataset import write_webdataset
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.locks import output_lock
from landcover.manifest import read_manifest
from landcover.progress import progress_bar
from landcover.version import __version__

FORMATS = ("tfrecord", "webdataset", "mapfile")
NO_SPLIT = "data"
"""The file prefix of chips without a split (every chip, in a manifest that has not been split)."""
SPLIT_ORDER = ("train", "valid", "test")
LEFT_OUT = ("unused",)
"""Splits exported only when asked for by name (`landcover split` marks held-out chips 'unused')."""
NO_CLASS = -1
"""The label_id written for a chip without a single class (a segmentation pair may have none)."""
CARD = "export.json"
LABELS = "labels.txt"
SPLIT_INFO = "dataset_split_info.csv"
REQUIRED = ("chip_id", "path", "label", "label_id")


@dataclass(frozen=True)
class ExportJob:
    """What every shard task shares: the format, the encoding and the output folder (absolute)."""

    fmt: str
    encoding: str
    out: str


@dataclass(frozen=True)
class Shard:
    """One output file and the samples it holds, in order."""

    name: str
    prefix: str
    samples: tuple[Sample, ...]


@dataclass
class ExportResult:
    """What an export wrote."""

    out: Path
    fmt: str
    encoding: str
    files: dict[str, list[str]] = field(default_factory=dict)  # prefix -> file names
    counts: dict[str, int] = field(default_factory=dict)  # prefix -> chips
    left_out: dict[str, int] = field(default_factory=dict)  # split -> chips not exported

    def summary(self) -> str:
        """A few lines a person reads at the end of a run."""
        what = f"{self.fmt}, {self.encoding}" if self.fmt == "tfrecord" else self.fmt
        lines = [f"{sum(self.counts.values())} chips in {self.out} ({what})"]
        for prefix, names in self.files.items():
            lines.append(f"  {prefix:<10} {self.counts[prefix]:>7} chips in {len(names)} "
                         f"file{'s' if len(names) > 1 else ''}: {names[0]}{' ...' if len(names) > 1 else ''}")
        for split, n in self.left_out.items():
            lines.append(f"left out: {n} chips of split {split!r} (name it with --split to export it)")
        return "\n".join(lines)


def shard_names(fmt: str, prefix: str, n: int) -> list[str]:
    """The file names of a prefix's n shards."""
    if fmt == "tfrecord":
        return [f"{prefix}-{i + 1:05d}-of-{n:05d}.tfrecord" for i in range(n)]
    if fmt == "webdataset":
        return [f"{prefix}-{i:06d}.tar" for i in range(n)]
    return [f"{prefix}.tsv"]


def export(manifest: str | Path, out: str | Path, fmt: str, *, shards: int = 1, encoding: str = "raw",
           splits: list[str] | None = None, shuffle: bool = True, seed: int = 0, engine: Engine | str | None = None,
           overwrite: bool = False, progress: bool = True) -> ExportResult:
    """Write the chips of a manifest as training-ready files in `out`: `fmt` 'tfrecord' or 'webdataset' (`shards`
    files per split) or 'mapfile' (a TSV per split), with labels.txt, dataset_split_info.csv and export.json.
    `splits` picks splits (default all but 'unused'); `engine` is 'local', 'process:N' or 'ray[:N]'.

        export("chips/", "tfrecord/", "tfrecord", shards=4)
    """
    if fmt not in FORMATS:
        raise LandcoverError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    if encoding not in ENCODINGS:
        raise LandcoverError(f"unknown encoding {encoding!r} (choose from {', '.join(ENCODINGS)})")
    if encoding != "raw" and fmt != "tfrecord":
        raise LandcoverError(f"--encoding {encoding} applies to tfrecord only ({fmt} stores the chip files)")
    if shards < 1:
        raise LandcoverError(f"--shards {shards} must be >= 1")
    if fmt == "mapfile" and shards > 1:
        raise LandcoverError("map files are not sharded: one per split (leave out --shards)")
    check_output(out, "folder")
    manifest = Path(manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.parquet"
    frame, info = read_manifest(manifest)
    if fmt == "mapfile" and "byte_offset" in frame.columns:
        raise LandcoverError("map files list chip files, and these chips are in shards: export them as webdataset "
                             "or tfrecord", manifest)
    root = manifest.resolve().parent
    groups, left_out = _groups(frame, root, splits, manifest)
    classes = class_names(frame, info, manifest)
    for prefix, samples in groups.items():
        if shards > len(samples):
            where = "the manifest" if prefix == NO_SPLIT else f"split {prefix!r}"
            raise LandcoverError(f"--shards {shards} is more than the {len(samples)} chips of {where}")
    checked: set[str] = set()
    for samples in groups.values():
        for s in samples:
            for path in (s.path, s.mask_path):
                if path is not None and path not in checked:
                    if not os.path.isfile(path):
                        raise LandcoverError(f"chip {s.chip_id}: file missing", path)
                    checked.add(path)
    plan = plan_shards(groups, fmt, shards, shuffle, seed)
    with output_lock(out):
        out, created = _prepare_out(Path(out), overwrite)
        job = ExportJob(fmt, encoding, str(out))
        try:
            _run(job, plan, Engine.of(engine), progress)
            result = ExportResult(out, fmt, encoding, left_out=left_out)
            for shard in plan:
                result.files.setdefault(shard.prefix, []).append(shard.name)
                result.counts[shard.prefix] = result.counts.get(shard.prefix, 0) + len(shard.samples)
            write_text(out / LABELS, "".join(f"{name}\n" for name in classes))
            write_text(out / SPLIT_INFO, _split_info(plan, root))
            card = {"format": fmt, "encoding": encoding, "manifest": str(Path(manifest).resolve()),
                    "chips": sum(result.counts.values()), "splits": {p: {"chips": result.counts[p], "files": names}
                                                                     for p, names in result.files.items()},
                    "classes": classes, "masks": any(s.mask_path for sh in plan for s in sh.samples),
                    "shuffle": shuffle, "seed": seed, "landcover": __version__}
            write_text(out / CARD, json.dumps(card, indent=2))
        except BaseException:
            _remove_partial(out, plan, created)
            raise
        return result


def _groups(frame: pd.DataFrame, root: Path, splits: list[str] | None,
            manifest: str | Path) -> tuple[dict[str, list[Sample]], dict[str, int]]:
    """The manifest's samples by file prefix (split name, or NO_SPLIT), in the order files are written;
    and the chips of the splits left out."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise LandcoverError(f"the manifest lacks column(s) {', '.join(missing)}", manifest)
    if frame.empty:
        raise LandcoverError("the manifest has no chips", manifest)
    duplicated = frame["chip_id"][frame["chip_id"].duplicated()]
    if len(duplicated):
        raise LandcoverError(f"chip_id {duplicated.iloc[0]!r} is in the manifest twice", manifest)
    split = frame["split"] if "split" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    prefixes = split.astype(object).where(split.notna(), NO_SPLIT)
    present = set(prefixes)
    if splits:
        if present == {NO_SPLIT}:
            raise LandcoverError("the manifest has no splits yet, so --split cannot pick any", manifest)
        unknown = [s for s in splits if s not in present - {NO_SPLIT}]
        if unknown:
            raise LandcoverError(f"no split {unknown[0]!r} in the manifest (it has "
                                 f"{', '.join(sorted(present - {NO_SPLIT}))})", manifest)
        present = set(splits)
    left_out = {p: int((prefixes == p).sum()) for p in sorted(present & set(LEFT_OUT)) if not splits}
    present -= set(left_out)
    if not present:
        raise LandcoverError(f"every chip is in split {', '.join(left_out)}: name it with --split to export it",
                             manifest)
    for prefix in present:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", prefix):
            raise LandcoverError(f"split name {prefix!r} cannot name a file (letters, digits, '_', '-', '.')",
                                 manifest)
    order = sorted(present, key=lambda p: (p == NO_SPLIT, p not in SPLIT_ORDER,
                                           SPLIT_ORDER.index(p) if p in SPLIT_ORDER else 0, p))
    mask_paths = frame["label_path"] if "label_path" in frame.columns else None
    sharded = "byte_offset" in frame.columns
    bounds = frame.geometry.bounds.to_numpy()
    groups: dict[str, list[Sample]] = {p: [] for p in order}
    for i, row in enumerate(frame.itertuples(index=False)):
        prefix = prefixes.iloc[i]
        if prefix not in groups:
            continue
        label_id = NO_CLASS if pd.isna(row.label_id) else int(row.label_id)
        if label_id < NO_CLASS:
            raise LandcoverError(f"chip {row.chip_id}: label_id {label_id} is not a class id", manifest)
        mask = mask_paths.iloc[i] if mask_paths is not None else None
        if not sharded:
            file_type(row.path)  # PNG or GeoTIFF, else an error naming the file
        groups[prefix].append(Sample(
            chip_id=str(row.chip_id), label=_text(row.label), label_id=label_id, path=str(root / row.path),
            region=_text(getattr(row, "region", None)), scene=_text(getattr(row, "scene", None)),
            split=None if prefix == NO_SPLIT else prefix, crs=_text(getattr(row, "crs", None)),
            bounds=tuple(float(v) for v in bounds[i]),
            mask_path=None if mask is None or pd.isna(mask) else str(root / mask),
            offset=int(row.byte_offset) if sharded else None, length=int(row.byte_count) if sharded else None))
    return groups, left_out


def _text(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def class_names(frame: pd.DataFrame, info: dict, manifest: str | Path = "") -> list[str]:
    """Class names by label_id: the manifest's scheme, checked against its rows (or the rows alone)."""
    pairs = frame[["label_id", "label"]].drop_duplicates()
    scheme = (info.get("scheme") or {}).get("classes")
    names = {int(c["id"]): str(c["name"]) for c in scheme} if scheme else {}
    for label_id, label in pairs.itertuples(index=False):
        if pd.isna(label_id) or int(label_id) < 0:
            continue
        known = names.setdefault(int(label_id), str(label))
        if known != label:
            raise LandcoverError(f"label_id {label_id} is {label!r} in a row but {known!r} in the class scheme",
                                 manifest)
    return [names.get(i, f"class-{i}") for i in range(max(names) + 1)] if names else []


def plan_shards(groups: dict[str, list[Sample]], fmt: str, shards: int, shuffle: bool, seed: int) -> list[Shard]:
    """Each prefix's samples (shuffled with a seeded generator, unless not) dealt into contiguous shards."""
    plan = []
    for prefix, samples in groups.items():
        order = np.random.default_rng(seed).permutation(len(samples)) if shuffle else np.arange(len(samples))
        n = 1 if fmt == "mapfile" else shards
        for name, part in zip(shard_names(fmt, prefix, n), np.array_split(order, n), strict=True):
            plan.append(Shard(name, prefix, tuple(samples[i] for i in part)))
    return plan


WRITERS: dict[str, Callable] = {"tfrecord": write_tfrecord, "webdataset": write_webdataset,
                                "mapfile": write_mapfile}


def write_shard(job: ExportJob, shard: Shard) -> tuple[str, int]:
    """Write one shard under a temporary name, then rename it (an engine task)."""
    with replacing(Path(job.out) / shard.name) as tmp:
        if job.fmt == "tfrecord":
            write_tfrecord(tmp, shard.samples, job.encoding)
        else:
            WRITERS[job.fmt](tmp, shard.samples)
    return shard.name, len(shard.samples)


def _run(job: ExportJob, plan: list[Shard], engine: Engine, progress: bool) -> None:
    if job.fmt == "mapfile":  # nothing to convert: the lines are written here
        for shard in plan:
            write_shard(job, shard)
        return
    total = sum(len(s.samples) for s in plan)
    results = engine.map(write_shard, job, plan)
    try:
        with progress_bar(total=total, unit="chip", desc=f"export {job.fmt}", enabled=progress, leave=False) as bar:
            for _, n in results:
                bar.update(n)
    finally:  # on an error, stop the pool's pending shards and wait for its running ones before cleaning up
        getattr(results, "close", lambda: None)()


def _prepare_out(out: Path, overwrite: bool) -> tuple[Path, bool]:
    """The output folder, absolute: new or empty, or a previous export when overwriting."""
    if out.exists() and not out.is_dir():
        raise LandcoverError("--out is a file, not a folder", out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LandcoverError("the output folder is not empty; choose another --out or pass --overwrite", out)
        if not (out / CARD).exists():
            raise LandcoverError(f"--overwrite only replaces a landcover export (with {CARD}); this folder holds "
                                 "other files", out)
        shutil.rmtree(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return out.resolve(), created


def _remove_partial(out: Path, plan: list[Shard], created: bool) -> None:
    """Undo a failed export: its shards and side files go, and the folder if this run made it."""
    for name in [s.name for s in plan] + [LABELS, SPLIT_INFO, CARD]:
        for path in (out / name, temp_path(out / name)):
            path.unlink(missing_ok=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _split_info(plan: list[Shard], root: Path) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "shard", "index", "class name", "class id"])
    for shard in plan:
        for index, s in enumerate(shard.samples):
            where = Path(os.path.relpath(s.path, root)).as_posix() + (f"#{s.chip_id}" if s.in_shard else "")
            writer.writerow([where, shard.name, index, s.label or "", s.label_id])
    return buf.getvalue()


