"""Chip extraction: tiles of a grid judged by the rules, written to class folders, and the manifest."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover.atomic import check_output, replacing, write_text
from landcover.bounds import COUNT
from landcover.chips.folder import (
    FEW_NODATA,
    FEW_NODATA_KEY,
    STATE_DIR,
    ChipsResult,
    finished_run,
    manifest_frame,
    nodata_hint,
    prepare_out,
    rejection_counts,
)
from landcover.chips.labels import LabelRaster, LabelVector, read_layer, summarise_codes
from landcover.chips.pairs import write_classified_tiles
from landcover.chips.rules import REJECTIONS, Rules, judge, judge_fixed, judge_mask
from landcover.chips.shards import SHARD_FORMATS, merge_shards, write_block_shards
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.geo.grid import Grid, footprint, on_lattice, scene_footprint
from landcover.geo.raster import Scene, crs_name
from landcover.geo.stretch import Stretch, scene_stretch
from landcover.locks import output_lock
from landcover.manifest import write_manifest
from landcover.progress import progress_bar
from landcover.schemes import INVALID, ClassScheme

FORMATS = ("png", "tif")
LAYOUTS = ("folders", "pairs", "shards")
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
    labels: LabelRaster | LabelVector
    scheme: ClassScheme
    grid: Grid
    rules: Rules
    out: str
    fmt: str = "png"
    layout: str = "folders"
    stretches: tuple[Stretch | None, ...] = ()
    resampling: str = "bilinear"
    lut: np.ndarray = field(default=None, compare=False, repr=False)
    shard_size: int | None = None

    def describe(self) -> dict:
        """The job as plain data: what the manifest and chips.json record, and what a resume must match."""
        return {
            "scenes": [{"name": s.name, "paths": list(s.paths), "region": r,
                        "bands": [list(b) for b in s.band_sources], "crs": crs_name(s.crs), "dtype": s.dtype,
                        "nodata": list(s.nodata), "png_stretch": st.to_dict() if st else None}
                       for s, r, st in zip(self.scenes, self.regions, self.stretches, strict=True)],
            "labels": _describe_labels(self.labels),
            "scheme": self.scheme.to_dict(),
            "grid": self.grid.to_dict(),
            "rules": self.rules.to_dict(),
            "format": self.fmt,
            "layout": self.layout,
            "resampling": self.resampling,
            **({"shard_size": self.shard_size} if self.layout == "shards" else {}),
        }


def _describe_labels(labels: LabelRaster | LabelVector) -> dict:
    if isinstance(labels, LabelRaster):
        return {"kind": "raster", "path": labels.path, "crs_wkt": labels.crs.to_wkt()}
    digest = hashlib.sha256(shapely.to_wkb(labels.geometries).sum() + labels.classes.tobytes()).hexdigest()[:16]
    return {"kind": "points" if labels.is_points else "polygons", "path": labels.path,
            "features": len(labels.geometries), "all_touched": labels.all_touched, "sha256": digest,
            "background": None if labels.background == INVALID else int(labels.background)}


@dataclass(frozen=True)
class Block:
    """Tiles of one scene that are read and judged together."""

    id: str
    scene: int
    xs: np.ndarray
    ys: np.ndarray
    """Upper-left corners of the tiles' cores, in the grid CRS."""
    fixed: np.ndarray | None = None
    """Class ids given with the tiles (tiles centred on labelled points), else None."""


def cut_chips(scenes: list[Scene], labels: LabelRaster | LabelVector, scheme: ClassScheme, grid: Grid,
              rules: Rules, out: str | Path, *, regions: list[str] | None = None, aoi: str | Path | None = None,
              fmt: str = "png", layout: str = "folders", resampling: str = "bilinear",
              engine: Engine | None = None, overwrite: bool = False, progress: bool = True,
              block_tiles: int | None = None, allow_empty: bool = False, shard_size: int | None = None) -> ChipsResult:
    """Cut, judge and write the chips of every tile of opened scenes and labels; resume a killed run into the same
    folder. (`make_chips` takes file names and settings and calls this.)

    Layout `folders` writes `<class>/<key>.<fmt>`; `pairs` writes `images/<key>.tif` and `labels/<key>.tif`
    (segmentation masks) with the Classified Tiles metadata; `shards` writes `shards/<block>.tar` (fmt
    'webdataset') or `.tfrecord`, one per block, or `shards/shard-00000.tar`... of `shard_size` chips each. A
    point layer as labels centres a tile on each point. A run that keeps no chip is an error saying why
    (`allow_empty` writes the empty manifest)."""
    check_output(out, "folder")
    _check_output_options(scenes, labels, fmt, layout, resampling)
    for value, name in ((block_tiles, "--block-tiles"), (shard_size, "--shard-size")):
        if value is not None:
            COUNT.check(value, name)
    engine = engine or Engine()
    footprints = [scene_footprint(s, grid.crs) for s in scenes]
    if isinstance(labels, LabelRaster):
        label_fp = footprint(labels.bounds, labels.crs, grid.crs)
    else:
        label_fp = shapely.box(*shapely.total_bounds(labels.geometries)).buffer(grid.res)
    if not any(fp.intersects(label_fp) for fp in footprints):
        raise LandcoverError(f"the labels do not overlap the imagery ({', '.join(s.paths[0] for s in scenes)})",
                             labels.path)
    area = shapely.union_all(footprints)
    aoi_geom = None
    if aoi is not None:
        aoi_geom = read_aoi(aoi, grid.crs)
        if not aoi_geom.intersects(area):
            raise LandcoverError("the AOI lies outside the imagery", aoi)
    if isinstance(labels, LabelRaster):
        window = labels.window_for(shapely.intersection(area, label_fp).bounds, grid.crs)
        unknown = labels.unknown_codes(scheme, window)
        if unknown:
            raise LandcoverError(f"label codes {summarise_codes(unknown)} are not in scheme {scheme.name!r} (add them "
                                 "to a scheme file, or to its 'ignore' list)", labels.path)
    stretches = tuple(scene_stretch(s) if fmt == "png" else None for s in scenes)
    job = ChipJob(tuple(scenes), tuple(regions or [s.name for s in scenes]), labels, scheme, grid, rules,
                  str(Path(out).resolve()), fmt, layout, stretches, resampling, scheme.lookup(), shard_size)
    point_layer = labels if isinstance(labels, LabelVector) and labels.is_points else None
    blocks, rejected = plan_blocks(grid, footprints, aoi_geom, block_tiles, point_layer)
    info = job.describe()
    fingerprint = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with output_lock(out):
        finished = finished_run(Path(out), fingerprint)
        if finished is not None:
            return finished
        created = not Path(out).exists()
        out, state = prepare_out(Path(out), fingerprint, overwrite)
        try:
            return _run(job, blocks, rejected, info, fingerprint, out, state, progress, engine, allow_empty)
        except BaseException:
            if created and not any(state.glob("b*.json")):  # nothing done: leave nothing behind
                shutil.rmtree(out, ignore_errors=True)
            raise


def _run(job: ChipJob, blocks: list[Block], rejected: Counter, info: dict, fingerprint: str, out: Path, state: Path,
         progress: bool, engine: Engine, allow_empty: bool) -> ChipsResult:
    """Cut the blocks not yet done, then write the manifest and chips.json (and the pairs' metadata)."""
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
    total = sum(len(b.xs) for b in blocks)
    with progress_bar(total=total, initial=total - sum(len(b.xs) for b in todo), unit="tile", desc="chips",
                      enabled=progress, leave=False) as bar:
        for block_id, rows, counts, n in engine.map(process_block, job, todo):
            write_text(state / f"{block_id}.json", json.dumps({"rows": rows, "rejected": counts}))
            records += rows
            rejected.update(counts)
            bar.update(n)
    if not records and not allow_empty:  # cut_chips removes the folder if this run made it
        shutil.rmtree(state)
        hint = nodata_hint(rejected)
        raise LandcoverError("no tile passed the rules, so no chip was written (rejected: "
                             f"{rejection_counts(rejected)}){'; ' + hint if hint else ''}; --allow-empty writes an "
                             "empty manifest instead", out)
    grid, scheme, scenes, layout = job.grid, job.scheme, job.scenes, job.layout
    if layout == "shards" and job.shard_size:
        records.sort(key=lambda row: row["chip_id"])
        merge_shards(out, state, job.fmt, job.shard_size, records)
    manifest = manifest_frame(records, grid)
    info.update(fingerprint=fingerprint, counts=manifest["label"].value_counts().sort_index().to_dict(),
                rejected={r: rejected[r] for r in REJECTIONS})
    if layout == "pairs":
        write_classified_tiles(out, manifest, scheme, grid, scenes[0])
    write_manifest(manifest, out / "manifest.parquet", info)
    write_text(out / "chips.json", json.dumps(info, indent=2, default=str))
    shutil.rmtree(state)
    return ChipsResult(manifest, rejected, out, resumed)


def _check_output_options(scenes: list[Scene], labels: LabelRaster | LabelVector, fmt: str, layout: str,
                          resampling: str) -> None:
    """Refuse output options that cannot work together, before anything is read or written."""
    if layout not in LAYOUTS:
        raise LandcoverError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    formats = SHARD_FORMATS if layout == "shards" else FORMATS
    if fmt not in formats:
        raise LandcoverError(f"--layout {layout} writes chips as {' or '.join(formats)}, not {fmt!r}")
    if resampling not in Resampling.__members__:
        raise LandcoverError(f"unknown resampling {resampling!r}")
    if layout == "pairs" and fmt != "tif":
        raise LandcoverError("--layout pairs writes GeoTIFF images and masks: use --format tif")
    if layout == "pairs" and isinstance(labels, LabelVector) and labels.is_points:
        raise LandcoverError("point labels give one class per tile, not masks: use --layout folders", labels.path)
    if fmt == "png":
        for s in scenes:
            if s.count not in (1, 3, 4):
                raise LandcoverError(f"PNG chips hold 1, 3 or 4 bands, the scene has {s.count}: pick bands "
                                     "with --bands or write GeoTIFF chips with --format tif", s.paths[0])


def read_aoi(path: str | Path, crs: CRS) -> shapely.Geometry:
    """The union of an AOI layer's polygons, in `crs`."""
    frame = read_layer(path, "AOI layer")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if frame.empty:
        raise LandcoverError("the AOI layer has no geometry", path)
    geom = shapely.union_all(shapely.make_valid(frame.to_crs(crs.to_wkt()).geometry.values))
    if geom.area == 0:
        raise LandcoverError("the AOI has no area (polygons are needed)", path)
    return geom


def plan_blocks(grid: Grid, footprints: list[shapely.Geometry], aoi: shapely.Geometry | None,
                block_tiles: int | None = None, points: LabelVector | None = None) -> tuple[list[Block], Counter]:
    """Tiles that lie in a scene (and the AOI), grouped into square blocks of `block_tiles` a side
    (default: about TARGET_BLOCKS blocks); also the counts of tiles rejected on the way.

    Tiles are the grid's lattice, or, for a point layer, one tile centred on each point."""
    rejected: Counter = Counter()
    fixed = None
    if points is None:
        xs, ys = grid.tiles_covering(shapely.union_all(footprints).bounds)
    else:
        xs, ys = grid.centred_on(shapely.get_x(points.geometries), shapely.get_y(points.geometries))
        keys = [grid.key(x, y) for x, y in zip(xs, ys, strict=True)]
        first = np.zeros(len(keys), bool)
        first[np.unique(keys, return_index=True)[1]] = True  # two points on one tile: the first one wins
        rejected["duplicate"] = int((~first).sum())
        xs, ys, fixed = xs[first], ys[first], points.classes[first]
    boxes = grid.chip_boxes(xs, ys)
    owner = np.full(len(xs), -1)
    for i, fp in enumerate(footprints):  # a tile belongs to the first scene that holds all of it
        shapely.prepare(fp)
        owner[(owner < 0) & shapely.contains(fp, boxes)] = i
    for i, fp in enumerate(footprints):  # else to the first that touches it (its edge pixels count as nodata)
        owner[(owner < 0) & shapely.intersects(fp, boxes)] = i
    rejected["outside_scene"] = int((owner < 0).sum())
    if aoi is not None:
        shapely.prepare(aoi)
        inside = shapely.contains(aoi, boxes)
        rejected["outside_aoi"] = int(((owner >= 0) & ~inside).sum())
        owner[~inside] = -1
    if block_tiles is None:  # scattered points: size blocks by the area they spread over
        left, bottom, right, top = shapely.union_all(footprints).bounds
        spread = (right - left) * (top - bottom) / grid.step ** 2 if points is not None else (owner >= 0).sum()
        block_tiles = math.ceil(math.sqrt(max(1, int(spread)) / TARGET_BLOCKS))
    side = max(1, min(block_tiles, BLOCK_PX // grid.stride)) * grid.step
    cells = np.stack([owner, np.floor((xs - grid.x0) / side), np.floor((grid.y0 - ys) / side)], axis=1).astype(int)
    blocks = []
    for cell in np.unique(cells[owner >= 0], axis=0):
        sel = np.all(cells == cell, axis=1)
        blocks.append(Block(f"b{cell[0]}_{cell[1]}_{cell[2]}", int(cell[0]), xs[sel], ys[sel],
                            None if fixed is None else fixed[sel]))
    return blocks, rejected


def process_block(job: ChipJob, block: Block) -> tuple[str, list[dict], dict, int]:
    """Read, label and judge one block of tiles; write the chips that pass. Returns its manifest rows."""
    grid, scene, res = job.grid, job.scenes[block.scene], job.grid.res
    left, top = block.xs.min() - grid.pad * res, block.ys.max() + grid.pad * res
    width = round((block.xs.max() - block.xs.min()) / res) + grid.chip
    height = round((block.ys.max() - block.ys.min()) / res) + grid.chip
    transform = Affine(res, 0, left, 0, -res, top)
    pixels, valid = _read_block(scene, grid, transform, width, height, job.resampling)
    samples = None
    if job.rules.points and block.fixed is None and job.layout != "pairs":
        off = job.rules.point_offsets(grid.tile) * res
        px = np.broadcast_to(block.xs[:, None, None] + off[None, None, :], (len(block.xs), len(off), len(off)))
        py = np.broadcast_to(block.ys[:, None, None] - off[None, :, None], px.shape)
        samples = (px.ravel(), py.ravel())
    classes = found = None
    if block.fixed is None or job.layout == "pairs":
        classes, found = job.labels.on_grid(grid.crs, transform, width, height, job.lut, samples)
    if found is not None:
        found = found.reshape(len(block.xs), -1)
    if job.fmt == "png":  # 8-bit once for the whole block, nodata black
        stretch = job.stretches[block.scene]
        pixels = stretch.apply(pixels) if stretch else pixels.astype(np.uint8)
        pixels[:, ~valid] = 0
    rows: list[dict] = []
    chips: list[np.ndarray] = []  # layout shards: written together at the end
    rejected: Counter = Counter()
    crs_text = crs_name(grid.crs)
    size = grid.chip * res
    for i, (x, y) in enumerate(zip(block.xs, block.ys, strict=True)):
        c, r = round((x - left) / res) - grid.pad, round((top - y) / res) - grid.pad
        chip = np.s_[r:r + grid.chip, c:c + grid.chip]
        key = grid.key(x, y)
        nodata_px = int(grid.chip ** 2 - valid[chip].sum())
        if job.layout == "pairs":
            verdict = judge_mask(job.rules, key, classes[chip], nodata_px)
        elif block.fixed is not None:
            verdict = judge_fixed(job.rules, key, int(block.fixed[i]), nodata_px)
        else:
            core = classes[r + grid.pad:r + grid.pad + grid.tile, c + grid.pad:c + grid.pad + grid.tile]
            verdict = judge(job.rules, key, core, None if found is None else found[i], nodata_px)
        if verdict.reason:
            rejected[verdict.reason] += 1
            if verdict.reason == "nodata" and nodata_px < FEW_NODATA * grid.chip ** 2:
                rejected[FEW_NODATA_KEY] += 1
            continue
        cls = job.scheme.by_id(verdict.label_id) if verdict.label_id != INVALID else None
        row = {"chip_id": key, "label": cls.name if cls else None, "label_id": cls.id if cls else None,
               "region": job.regions[block.scene], "scene": scene.name, "crs": crs_text,
               "purity": round(verdict.purity, 6), "agree_points": verdict.agree_points,
               "n_points": len(found[i]) if found is not None else None, "nodata_px": nodata_px,
               "size_px": grid.chip, "res": res,
               "bounds": [x - grid.pad * res, y + grid.pad * res - size, x - grid.pad * res + size,
                          y + grid.pad * res]}
        if job.layout == "shards":
            chips.append(pixels[:, chip[0], chip[1]])
            rows.append(row)
            continue
        chip_transform = grid.chip_transform(x, y)
        if job.layout == "pairs":
            mask = classes[chip]
            row["path"], row["label_path"] = f"images/{key}.tif", f"labels/{key}.tif"
            row["labelled_frac"] = round(float((mask != INVALID).mean()), 6)
            _write_once(job, scene, pixels[:, chip[0], chip[1]], chip_transform, row["path"])
            _write_once(job, None, pair_mask(mask)[None], chip_transform, row["label_path"])
        else:
            row["path"] = f"{cls.slug}/{key}.{job.fmt}"
            _write_once(job, scene, pixels[:, chip[0], chip[1]], chip_transform, row["path"])
        rows.append(row)
    if chips:
        # with a shard size, a block's shard is kept with the run's state until every block is done
        write_block_shards(Path(job.out) / (STATE_DIR if job.shard_size else ""), block.id, job.fmt, rows, chips)
    return block.id, rows, dict(rejected), len(block.xs)


def pair_mask(classes: np.ndarray) -> np.ndarray:
    """A segmentation label mask: class id + 1 (the Classified Tiles value), 0 where no class."""
    return np.where(classes == INVALID, 0, classes.astype(np.uint16) + 1).astype(np.uint8)


def _write_once(job: ChipJob, scene: Scene | None, pixels: np.ndarray, transform: Affine, rel: str) -> None:
    """Write a chip unless a finished one is already there (a resumed run)."""
    target = Path(job.out) / rel
    if not target.exists():
        _write_chip(job, scene, pixels, transform, target)


def _read_block(scene: Scene, grid: Grid, transform, width: int, height: int,
                resampling: str) -> tuple[np.ndarray, np.ndarray]:
    """The block's pixels on the grid: a plain window when the scene sits on the grid's lattice."""
    if on_lattice(scene, grid):
        col = (transform.c - scene.transform.c) / grid.res
        row = (scene.transform.f - transform.f) / grid.res
        return scene.read(Window(round(col), round(row), width, height))
    return scene.read_warped(grid.crs, transform, width, height, Resampling[resampling])


def _write_chip(job: ChipJob, scene: Scene | None, pixels: np.ndarray, transform: Affine, target: Path) -> None:
    """Write one chip atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:
        _encode_chip(job, scene, pixels, transform, tmp)


def _encode_chip(job: ChipJob, scene: Scene | None, pixels: np.ndarray, transform: Affine, tmp: Path) -> None:
    """Encode a chip into a file: 8-bit PNG, or GeoTIFF (native imagery, or a mask when scene is None)."""
    if job.fmt == "png" and scene is not None:
        image = np.moveaxis(pixels, 0, -1)
        Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image)).save(tmp, "PNG")
    else:
        nodata = scene.nodata[0] if scene is not None and len(set(scene.nodata)) == 1 else None
        profile = {"driver": "GTiff", "width": pixels.shape[2], "height": pixels.shape[1],
                   "count": pixels.shape[0], "dtype": pixels.dtype, "crs": job.grid.crs,
                   "transform": transform, "nodata": nodata, "compress": "lzw"}
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(pixels)
