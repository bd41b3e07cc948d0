"""`landcover import`: a chip dataset someone else made (EuroSAT, UC Merced, a class-folder tree, with or without
train/ valid/ test/ above the class folders) turned into a manifest, the chips referenced in place or copied."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import pandas as pd
import rasterio
from rasterio.errors import RasterioError

from landcover.atomic import check_output
from landcover.errors import LandcoverError
from landcover.geo.grid import footprint
from landcover.geo.raster import open_image
from landcover.locks import output_lock
from landcover.manifest import COLUMNS, write_manifest
from landcover.progress import progress_bar
from landcover.schemes import ClassScheme, LandClass, load_scheme, palette

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "test": "test", "testing": "test"}
"""Folder names read as splits (what `landcover split --materialize` writes, and the usual spellings)."""


@dataclass
class ImportResult:
    """What `import_chips` wrote and what it left out."""

    out: Path
    chips: int
    counts: dict[str, dict[str, int]]
    """split (or '(none)') -> class -> chips."""
    shape: tuple
    georeferenced: int
    problems: dict[str, list[str]] = field(default_factory=dict)
    """'unreadable', 'other shape', 'empty class folder' -> the paths (relative to the tree)."""
    seconds: float = 0.0

    def summary(self, next_step: bool = True) -> str:
        """Lines for the terminal: chips, classes, splits, what was left out and why, the next step."""
        bands, h, w, dtype = self.shape
        splits = ", ".join(f"{s} {sum(c.values())}" for s, c in self.counts.items())
        classes = sorted({name for c in self.counts.values() for name in c})
        lines = [f"imported {self.chips} chips ({bands} band(s), {h} x {w} px, {dtype}; {self.georeferenced} "
                 f"georeferenced) in {len(classes)} classes into {self.out / 'manifest.parquet'} "
                 f"({self.seconds:.1f} s)", f"  splits: {splits}"]
        for kind, paths in self.problems.items():
            shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            lines.append(f"  left out, {kind}: {len(paths)} ({shown})")
        if next_step and "(none)" in self.counts:
            lines.append(f"  next: landcover split {self.out} --random --ratios 80:10:10")
        return "\n".join(lines)


def import_chips(tree: str | Path, out: str | Path, *, scheme: str | None = None, copy: bool = False,
                 strict: bool = False, overwrite: bool = False, progress: bool = True) -> ImportResult:
    """A manifest for a folder of class folders (optionally under train/ valid/ test/), every image GDAL reads;
    chips stay where they are (paths relative to `out`) unless `copy`. `overwrite` replaces an earlier import."""
    started = time.perf_counter()
    tree, out = Path(tree), Path(out)
    if not tree.is_dir():
        raise LandcoverError("no such folder (give the folder that holds the class folders)", tree)
    check_output(out, "folder")
    if (out / "manifest.parquet").exists() and not overwrite:
        raise LandcoverError("already holds a manifest (pass --overwrite to replace it, or choose a new folder)",
                             out)
    found, empty = _walk(tree)
    if not found:
        raise LandcoverError("holds no class folders with images (.tif, .png, .jpg) in them", tree)
    classes = sorted({c for _, c, _ in found})
    chosen = _scheme(scheme, classes, tree)
    ids = {key: c for c in chosen.classes for key in (c.name.lower(), c.slug)}  # folders: names or slugs
    rows, problems, shapes = [], {"unreadable": [], "other shape": [], "empty class folder": empty}, Counter()
    headers = []
    for split, name, path in progress_bar(found, desc="chips", unit="chip", enabled=progress):
        try:
            headers.append((split, name, path, _header(path)))
        except (RasterioError, OSError) as exc:
            problems["unreadable"].append(f"{path.relative_to(tree)} ({str(exc).splitlines()[0][:80]})")
            continue
        shapes[headers[-1][3]["shape"]] += 1
    if not shapes:
        raise LandcoverError("no image in the tree could be read", tree)
    shape = shapes.most_common(1)[0][0]
    for split, name, path, head in headers:
        if head["shape"] != shape:
            problems["other shape"].append(f"{path.relative_to(tree)} ({_shape(head['shape'])} where most are "
                                           f"{_shape(shape)})")
            continue
        cls = ids[name.lower()]
        rows.append({"chip_id": str(path.relative_to(tree).with_suffix("")).replace(os.sep, "/"), "file": path,
                     "label": cls.name, "label_id": cls.id, "split": split, **head})
    problems = {k: v for k, v in problems.items() if v}
    if strict and problems:
        kind, paths = next(iter(problems.items()))
        raise LandcoverError(f"--strict: {sum(map(len, problems.values()))} problem(s), first {kind}: {paths[0]}",
                             tree)
    with output_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:  # the earlier import's copies go with it
            shutil.rmtree(out / "chips", ignore_errors=True)
        frame = _frame(rows, tree, out, copy)
        info = {"scheme": chosen.to_dict(), "format": Path(rows[0]["file"]).suffix.lstrip(".").lower(),
                "layout": "imported", "imported": {"tree": str(tree.resolve()), "copied": copy,
                                                   "left_out": {k: len(v) for k, v in problems.items()}},
                "scenes": []}
        write_manifest(frame, out / "manifest.parquet", info)
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        split = row["split"] or "(none)"
        counts.setdefault(split, Counter())[row["label"]] += 1
    return ImportResult(out, len(rows), {k: dict(v) for k, v in counts.items()}, shape,
                        sum(1 for r in rows if r["crs"]), problems, time.perf_counter() - started)


def split_folders(tree: str | Path) -> list[str]:
    """The folders directly under `tree` read as splits (train/, valid/, test/ and their usual spellings)."""
    top = sorted(p for p in Path(tree).iterdir() if p.is_dir() and not p.name.startswith("."))
    return [p.name for p in top if p.name.lower() in SPLIT_FOLDERS]


def _walk(tree: Path) -> tuple[list[tuple[str | None, str, Path]], list[str]]:
    """(split, class folder, image) for every image under the class folders, and the class folders without any."""
    split_dirs = [tree / name for name in split_folders(tree)]
    roots = [(SPLIT_FOLDERS[p.name.lower()], p) for p in split_dirs] if split_dirs else [(None, tree)]
    found, empty = [], []
    for split, root in roots:
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                empty.append(str(folder.relative_to(tree)))
            found += [(split, folder.name, p) for p in images]
    return found, empty


def _scheme(name: str | None, classes: list[str], tree: Path) -> ClassScheme:
    """--scheme's classes, which must name every class folder; else one class per folder, in name order."""
    if name is None:
        colors = palette(len(classes))
        return ClassScheme(tree.name, tuple(LandClass(i, c, colors[i], (i,)) for i, c in enumerate(classes)),
                           description=f"class folders of {tree}")
    chosen = load_scheme(name)
    known = {c.name.lower() for c in chosen.classes} | {c.slug for c in chosen.classes}
    unknown = [c for c in classes if c.lower() not in known]
    if unknown:
        raise LandcoverError(f"class folder(s) {unknown} are not classes of scheme {chosen.name!r} "
                             f"({', '.join(c.name for c in chosen.classes)})", tree)
    return chosen


def _header(path: Path) -> dict:
    """What the manifest records of one image: shape, CRS, resolution and footprint (WGS84) where georeferenced."""
    with open_image(path) as src:
        shape = (src.count, src.height, src.width, src.dtypes[0])
        if src.crs is None:
            return {"shape": shape, "crs": "", "res": float("nan"), "geometry": None}
        return {"shape": shape, "crs": src.crs.to_string(), "res": float(abs(src.transform.a)),
                "geometry": footprint(tuple(src.bounds), src.crs, rasterio.crs.CRS.from_epsg(4326))}


def _shape(shape: tuple) -> str:
    bands, h, w, dtype = shape
    return f"{bands} band(s) {h} x {w} {dtype}"


def _frame(rows: list[dict], tree: Path, out: Path, copy: bool) -> gpd.GeoDataFrame:
    """The manifest's rows: paths relative to `out` (the chips in place, or copied under out/chips/)."""
    records = []
    for row in rows:
        source = Path(row["file"])
        if copy:
            target = out / "chips" / source.relative_to(tree)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            rel = target.relative_to(out).as_posix()
        else:
            rel = Path(os.path.relpath(source.resolve(), out.resolve())).as_posix()
        w = row["shape"][2]
        records.append({"chip_id": row["chip_id"], "path": rel, "label": row["label"], "label_id": row["label_id"],
                        "region": None, "scene": None, "split": row["split"], "crs": row["crs"], "purity": None,
                        "agree_points": None, "n_points": None, "nodata_px": None, "size_px": w, "res": row["res"],
                        "geometry": row["geometry"]})
    frame = pd.DataFrame(records, columns=list(COLUMNS))
    geometry = gpd.GeoSeries(list(frame["geometry"]), crs="EPSG:4326")  # footprints in lon/lat; None without CRS
    return gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=geometry)
