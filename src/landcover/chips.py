"""Chip extraction: tiles of a grid judged by the rules, written to class folders, and the manifest."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.grid import Grid, footprint, on_lattice, scene_footprint
from landcover.labels import LabelPatch, LabelRaster
from landcover.manifest import COLUMNS, empty_frame, read_manifest, write_manifest
from landcover.raster import Scene, crs_name
from landcover.rules import REJECTIONS, Rules, judge
from landcover.schemes import INVALID, ClassScheme
from landcover.stretch import Stretch, scene_stretch

FORMATS = ("png", "tif")
STATE_DIR = ".landcover-state"
BLOCK_PX = 2048
"""Blocks of tiles are read, warped and labelled together, up to about this many pixels a side."""
TARGET_BLOCKS = 32
"""Blocks are sized so a run has about this many (enough to balance a few workers, few enough to keep
each block's fixed cost of opening files and setting up the label warp small)."""


@dataclass(frozen=True)
class ChipJob:
    """Everything a worker needs to cut and write the chips of a block of tiles."""

    scenes: tuple[Scene, ...]
    regions: tuple[str, ...]
    labels: LabelRaster
    scheme: ClassScheme
    grid: Grid
    rules: Rules
    out: str
    fmt: str = "png"
    stretches: tuple[Stretch | None, ...] = ()
    resampling: str = "bilinear"
    lut: np.ndarray = field(default=None, compare=False, repr=False)

    def describe(self) -> dict:
        """The job as plain data: what the manifest and chips.json record, and what a resume must match."""
        return {
            "scenes": [{"name": s.name, "paths": list(s.paths), "region": r,
                        "bands": [list(b) for b in s.band_sources], "crs": crs_name(s.crs), "dtype": s.dtype,
                        "nodata": list(s.nodata), "png_stretch": st.to_dict() if st else None}
                       for s, r, st in zip(self.scenes, self.regions, self.stretches, strict=True)],
            "labels": {"path": self.labels.path, "crs_wkt": self.labels.crs.to_wkt()},
            "scheme": self.scheme.to_dict(),
            "grid": self.grid.to_dict(),
            "rules": self.rules.to_dict(),
            "format": self.fmt,
            "resampling": self.resampling,
        }


@dataclass(frozen=True)
class Block:
    """Tiles of one scene that are read and judged together."""

    id: str
    scene: int
    cols: np.ndarray
    rows: np.ndarray


@dataclass
class ChipsResult:
    """What a chips run produced."""

    manifest: gpd.GeoDataFrame
    rejected: Counter
    out: Path
    resumed_blocks: int = 0

    def summary(self) -> str:
        """A few lines a person reads at the end of a run."""
        kept = self.manifest["label"].value_counts().sort_index() if len(self.manifest) else pd.Series(dtype=int)
        note = {0: "", -1: " (already complete: nothing to do)"}.get(
            self.resumed_blocks, f" (resumed: {self.resumed_blocks} blocks were already done)")
        lines = [f"{len(self.manifest)} chips in {self.out}{note}"]
        lines += [f"  {name:<28} {n:>7}" for name, n in kept.items()]
        rejected = ", ".join(f"{reason} {self.rejected[reason]}" for reason in REJECTIONS if self.rejected[reason])
        lines.append(f"rejected: {rejected or 'none'}")
        return "\n".join(lines)


def make_chips(scenes: list[Scene], labels: LabelRaster, scheme: ClassScheme, grid: Grid, rules: Rules,
               out: str | Path, *, regions: list[str] | None = None, aoi: str | Path | None = None,
               fmt: str = "png", resampling: str = "bilinear", engine: Engine | None = None,
               overwrite: bool = False, progress: bool = True, block_tiles: int | None = None) -> ChipsResult:
    """Cut, judge and write the chips of every tile; resume a killed run into the same folder."""
    if fmt not in FORMATS:
        raise LandcoverError(f"unknown chip format {fmt!r} (choose from {', '.join(FORMATS)})")
    if resampling not in Resampling.__members__:
        raise LandcoverError(f"unknown resampling {resampling!r}")
    if fmt == "png":
        for s in scenes:
            if s.count not in (1, 3, 4):
                raise LandcoverError(f"PNG chips hold 1, 3 or 4 bands, the scene has {s.count}: pick bands "
                                     "with --bands or write GeoTIFF chips with --format tif", s.paths[0])
    engine = engine or Engine()
    footprints = [scene_footprint(s, grid.crs) for s in scenes]
    label_fp = footprint(labels.bounds, labels.crs, grid.crs)
    if not any(fp.intersects(label_fp) for fp in footprints):
        raise LandcoverError(f"the labels do not overlap the imagery ({', '.join(s.paths[0] for s in scenes)})",
                             labels.path)
    area = shapely.union_all(footprints)
    aoi_geom = None
    if aoi is not None:
        aoi_geom = read_aoi(aoi, grid)
        if not aoi_geom.intersects(area):
            raise LandcoverError("the AOI lies outside the imagery", aoi)
    window = labels.window_for(shapely.intersection(area, label_fp).bounds, grid.crs)
    unknown = labels.unknown_codes(scheme, window)
    if unknown:
        raise LandcoverError(f"label codes {unknown} are not in scheme {scheme.name!r} "
                             "(add them to a scheme file, or to its 'ignore' list)", labels.path)
    stretches = tuple(scene_stretch(s) if fmt == "png" else None for s in scenes)
    job = ChipJob(tuple(scenes), tuple(regions or [s.name for s in scenes]), labels, scheme, grid, rules,
                  str(Path(out).resolve()), fmt, stretches, resampling, scheme.lookup())
    blocks, outside = plan_blocks(grid, footprints, aoi_geom, block_tiles)
    info = job.describe()
    fingerprint = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]
    finished = _finished_run(Path(out), fingerprint)
    if finished is not None:
        return finished
    out, state = _prepare_out(Path(out), fingerprint, overwrite)

    rejected = Counter(outside_aoi=outside)
    records: list[dict] = []
    todo = []
    for block in blocks:
        record = state / f"{block.id}.json"
        if record.exists():
            done = json.loads(record.read_text())
            records += done["rows"]
            rejected.update(done["rejected"])
        else:
            todo.append(block)
    resumed = len(blocks) - len(todo)
    total = sum(len(b.cols) for b in blocks)
    with tqdm(total=total, initial=total - sum(len(b.cols) for b in todo), unit="tile", desc="chips",
              disable=not progress, leave=False) as bar:
        for block_id, rows, counts, n in engine.map(process_block, job, todo):
            _write_atomic(state / f"{block_id}.json", json.dumps({"rows": rows, "rejected": counts}))
            records += rows
            rejected.update(counts)
            bar.update(n)
    manifest = _manifest_frame(records, grid)
    info.update(fingerprint=fingerprint, counts=manifest["label"].value_counts().sort_index().to_dict(),
                rejected={r: rejected[r] for r in REJECTIONS})
    write_manifest(manifest, out / "manifest.parquet", info)
    _write_atomic(out / "chips.json", json.dumps(info, indent=2, default=str))
    shutil.rmtree(state)
    return ChipsResult(manifest, rejected, out, resumed)


def read_aoi(path: str | Path, grid: Grid) -> shapely.Geometry:
    """The union of an AOI layer's polygons, in the grid's CRS."""
    if not Path(path).exists():
        raise LandcoverError("no such file", path)
    try:
        frame = gpd.read_file(path)
    except Exception as exc:
        raise LandcoverError(f"not a readable vector layer ({str(exc).splitlines()[0]})", path) from None
    if frame.crs is None:
        raise LandcoverError("the AOI layer has no CRS", path)
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if frame.empty:
        raise LandcoverError("the AOI layer has no geometry", path)
    geom = shapely.union_all(shapely.make_valid(frame.to_crs(grid.crs.to_wkt()).geometry.values))
    if geom.area == 0:
        raise LandcoverError("the AOI has no area (polygons are needed)", path)
    return geom


def plan_blocks(grid: Grid, footprints: list[shapely.Geometry], aoi: shapely.Geometry | None,
                block_tiles: int | None = None) -> tuple[list[Block], int]:
    """Tiles that lie in a scene (and the AOI), grouped into square blocks of `block_tiles` a side
    (default: about TARGET_BLOCKS blocks); also the count of tiles outside the AOI."""
    area = shapely.union_all(footprints)
    cols, rows = grid.tiles_covering(area.bounds)
    boxes = grid.chip_boxes(cols, rows)
    owner = np.full(len(cols), -1)
    for i, fp in enumerate(footprints):  # a tile belongs to the first scene that holds all of it
        shapely.prepare(fp)
        owner[(owner < 0) & shapely.contains(fp, boxes)] = i
    for i, fp in enumerate(footprints):  # else to the first that touches it (its edge pixels count as nodata)
        owner[(owner < 0) & shapely.intersects(fp, boxes)] = i
    outside = 0
    if aoi is not None:
        shapely.prepare(aoi)
        inside = shapely.contains(aoi, boxes)
        outside = int(((owner >= 0) & ~inside).sum())
        owner[~inside] = -1
    if block_tiles is None:
        block_tiles = math.ceil(math.sqrt(max(1, int((owner >= 0).sum())) / TARGET_BLOCKS))
    side = max(1, min(block_tiles, BLOCK_PX // grid.stride))
    blocks = []
    keys = np.stack([owner, cols // side, rows // side], axis=1)
    for key in np.unique(keys[owner >= 0], axis=0):
        sel = np.all(keys == key, axis=1)
        blocks.append(Block(f"b{key[0]}_{key[1]}_{key[2]}", int(key[0]), cols[sel], rows[sel]))
    return blocks, outside


def process_block(job: ChipJob, block: Block) -> tuple[str, list[dict], dict, int]:
    """Read, label and judge one block of tiles; write the chips that pass. Returns its manifest rows."""
    grid, scene = job.grid, job.scenes[block.scene]
    c0, r0 = int(block.cols.min()), int(block.rows.min())
    width = (int(block.cols.max()) - c0) * grid.stride + grid.chip
    height = (int(block.rows.max()) - r0) * grid.stride + grid.chip
    transform = grid.chip_transform(c0, r0)
    pixels, valid = _read_block(scene, grid, transform, width, height, job.resampling)
    left, top = transform.c, transform.f
    bounds = (left, top - height * grid.res, left + width * grid.res, top)
    window = job.labels.window_for(bounds, grid.crs)
    if window is None:
        classes = np.full((height, width), INVALID, np.uint8)
        patch = None
    else:
        patch = LabelPatch(job.labels, job.labels.classes(window, job.lut), window)
        classes = patch.to_grid(grid.crs, transform, width, height)
    points = None
    if job.rules.points:
        off = job.rules.point_offsets(grid.tile) * grid.res
        ox, oy = grid.origin(block.cols[:, None, None], block.rows[:, None, None])
        xs = np.broadcast_to(ox + off[None, None, :], (len(block.cols), len(off), len(off)))
        ys = np.broadcast_to(oy - off[None, :, None], xs.shape)
        if patch is None:
            points = np.full((len(block.cols), len(off) ** 2), INVALID, np.uint8)
        else:
            points = patch.at_points(xs.ravel(), ys.ravel(), grid.crs).reshape(len(block.cols), -1)
    if job.fmt == "png":  # 8-bit once for the whole block, nodata black
        stretch = job.stretches[block.scene]
        pixels = stretch.apply(pixels) if stretch else pixels.astype(np.uint8)
        pixels[:, ~valid] = 0
    rows: list[dict] = []
    rejected: Counter = Counter()
    crs_text = crs_name(grid.crs)
    for i, (col, row) in enumerate(zip(block.cols, block.rows, strict=True)):
        y, x = (row - r0) * grid.stride, (col - c0) * grid.stride
        chip = np.s_[y:y + grid.chip, x:x + grid.chip]
        core = classes[y + grid.pad:y + grid.pad + grid.tile, x + grid.pad:x + grid.pad + grid.tile]
        key = grid.key(col, row)
        verdict = judge(job.rules, key, core, None if points is None else points[i],
                        int(grid.chip ** 2 - valid[chip].sum()))
        if verdict.reason:
            rejected[verdict.reason] += 1
            continue
        cls = job.scheme.by_id(verdict.label_id)
        rel = f"{cls.slug}/{key}.{job.fmt}"
        target = Path(job.out) / rel
        if not target.exists():
            _write_chip(job, scene, pixels[:, chip[0], chip[1]], grid.chip_transform(col, row), target)
        cx, cy = grid.chip_transform(col, row) @ (0, 0)
        rows.append({
            "chip_id": key, "path": rel, "label": cls.name, "label_id": cls.id,
            "region": job.regions[block.scene], "scene": scene.name, "crs": crs_text,
            "purity": round(verdict.purity, 6), "agree_points": verdict.agree_points,
            "n_points": (job.rules.points or 0) ** 2 or None, "nodata_px": verdict.nodata_px,
            "size_px": grid.chip, "res": grid.res,
            "bounds": [cx, cy - grid.chip * grid.res, cx + grid.chip * grid.res, cy],
        })
    return block.id, rows, dict(rejected), len(block.cols)


def _read_block(scene: Scene, grid: Grid, transform, width: int, height: int,
                resampling: str) -> tuple[np.ndarray, np.ndarray]:
    """The block's pixels on the grid: a plain window when the scene sits on the grid's lattice."""
    if on_lattice(scene, grid):
        col = (transform.c - scene.transform.c) / grid.res
        row = (scene.transform.f - transform.f) / grid.res
        return scene.read(Window(round(col), round(row), width, height))
    return scene.read_warped(grid.crs, transform, width, height, Resampling[resampling])


def _write_chip(job: ChipJob, scene: Scene, pixels: np.ndarray, transform, target: Path) -> None:
    """Write one chip (8-bit PNG, or native GeoTIFF) under a temporary name, then rename it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if job.fmt == "png":
        image = np.moveaxis(pixels, 0, -1)
        Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image)).save(tmp, "PNG")
    else:
        nodata = scene.nodata[0] if len(set(scene.nodata)) == 1 else None
        profile = {"driver": "GTiff", "width": pixels.shape[2], "height": pixels.shape[1],
                   "count": pixels.shape[0], "dtype": pixels.dtype, "crs": job.grid.crs,
                   "transform": transform, "nodata": nodata, "compress": "lzw"}
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(pixels)
    os.replace(tmp, target)


def _finished_run(out: Path, fingerprint: str) -> ChipsResult | None:
    """The result of an identical run that already finished in this folder, if there is one."""
    card = out / "chips.json"
    if not (card.exists() and (out / "manifest.parquet").exists() and not (out / STATE_DIR).exists()):
        return None
    if json.loads(card.read_text()).get("fingerprint") != fingerprint:
        return None
    frame, info = read_manifest(out / "manifest.parquet")
    return ChipsResult(frame, Counter(info.get("rejected", {})), out, resumed_blocks=-1)


def _prepare_out(out: Path, fingerprint: str, overwrite: bool) -> tuple[Path, Path]:
    """Create (or reopen, to resume) the output folder; refuse one that holds another run."""
    state = out / STATE_DIR
    marker = state / "run.json"
    manifest = out / "manifest.parquet"
    if out.exists() and any(out.iterdir()):
        same = marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint
        if not same:
            if not overwrite:
                what = "a finished chips run" if manifest.exists() else "other files"
                raise LandcoverError(f"the output folder holds {what}; choose another --out or pass --overwrite",
                                     out)
            if not (manifest.exists() or marker.exists()):
                raise LandcoverError("--overwrite only replaces a landcover chips folder; this one holds "
                                     "other files", out)
            shutil.rmtree(out)
    state.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp"):
        stale.unlink()
    if not marker.exists():
        _write_atomic(marker, json.dumps({"fingerprint": fingerprint}))
    return out, state


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _manifest_frame(records: list[dict], grid: Grid) -> gpd.GeoDataFrame:
    crs = grid.crs.to_wkt()
    if not records:
        return empty_frame(crs)
    frame = pd.DataFrame.from_records(records).sort_values("chip_id", kind="stable").reset_index(drop=True)
    geometry = shapely.box(*np.array(frame.pop("bounds").tolist()).T)
    frame["split"] = pd.Series([None] * len(frame), dtype="string")
    frame["agree_points"] = frame["agree_points"].astype("Int64")
    frame["n_points"] = frame["n_points"].astype("Int64")
    frame = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometry, crs=crs))
    return frame[list(COLUMNS)]
