"""Maps of any extent as tiles written by the workers (`predict --tiles SIZE --out DIR/`), #30.

The map's grid is cut into square output tiles of SIZE (m or px), aligned to the grid's origin: for per-pixel
bundles and dense maps the grid is the imagery's own pixels (read at the bundle's resolution), for a tile classifier
its cells, one per stride (SIZE whole cells). Each tile is one engine task: it reads its window with a halo of
context (the pixel model's: twice its filters' reach; a segmentation network's: every window that covers one of its
pixels, the tile being whole steps of the windows; a tile map's: every window that covers one of its cells; a dense
map's: the CRF's margin around whole blocks of its grid, and the evidence's own halo beyond) through small VRTs of
the inputs clipped to that window, maps it with `predict_raster` or `predict_dense` (the same windows, features,
heads and CRF blocks as a map of the whole raster; an 8-bit chip bundle's stretch is the whole scene's), crops the
halo and writes its own COG from the worker (temporary name, then renamed) with a record beside it (class counts,
the COG's SHA-256, the node that made it). The driver keeps one small record per tile and writes DIR/index.vrt (the
mosaic: `landcover map`, `evaluate` and `change` read DIR as it) and a STAC collection (DIR/catalog.json, one item
per tile with the projection extension, its class areas and checksum).

A rerun with the same bundle, imagery and settings skips every tile whose COG matches its record (resume after a
killed driver, or a finished run; other settings are refused until --overwrite); a tile whose task fails is tried
once more, then reported, and the others finish. The mosaic equals the single-COG map of the same inputs: a pixel
model's windows read their filters' reach around them, a segmentation network's windows fall at the same places
as in the whole raster's map and add up in fixed point (`landcover.predict.bands`), a tile map's cells average
the same windows, and a dense map's tiles run the whole map's CRF blocks (placed on its lattice, the appearance
stretched as the whole scene is) on the same evidence, so no class depends on the tile that holds it.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from landcover.atomic import write_text
from landcover.bundle import Bundle, load_bundle
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.geo.grid import on_lattice, parse_length, to_pixels
from landcover.geo.raster import absolute, gdal_path, remote_reading
from landcover.geo.stretch import scene_stretch
from landcover.locks import output_lock
from landcover.maps.classmap import NODATA, ClassMap, write_class_map, write_scaled_probabilities
from landcover.onnx_graph import file_sha256
from landcover.predict.bands import chip_stretch, pixel_grid
from landcover.predict.crf import crf_for
from landcover.predict.mosaic import write_catalog, write_index
from landcover.predict.outputs import appearance_scene, fingerprint, open_scene
from landcover.predict.pixels import window_sizes
from landcover.predict.raster import map_cells, tile_grid
from landcover.predict.request import MapRequest

MIN_TILE_PX = 256
RETRIES = 1


@dataclass(frozen=True)
class TileTask:
    index: int
    row: int
    col: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"r{self.row:07d}_c{self.col:07d}"


@dataclass(frozen=True)
class TileJob:
    """What every tile's task needs: the bundle, the imagery, the map's grid, the halo, the folder, the request."""

    bundle: str
    images: tuple[str, ...]
    crs_wkt: str
    transform: tuple[float, ...]
    height: int
    width: int
    """The map's grid: its cells down and across (a per-pixel map's are the imagery's pixels)."""
    halo: int
    """Cells of context read around a tile on every side."""
    out: str
    classes: tuple[tuple[int, str], ...]
    image_shape: tuple[int, int]
    """The imagery's pixels down and across (every input shares the grid)."""
    request: MapRequest
    """The map's options as each task runs them: in-process with its share of the cores, the whole scene's
    stretches, explicit windows."""
    cell: int = 1
    """Imagery pixels a cell spans (a tile map's stride; 1 for per-pixel and dense maps)."""
    dense: bool = False
    """Through the CRF (`predict_dense`): the tiles are whole blocks of its grid, `crf_cell` pixels a CRF cell."""
    crf_cell: int = 1

    @property
    def probabilities(self) -> bool:
        return self.request.probabilities


def predict_tiled(bundle_path: str | Path, images: list[str | Path], out: str | Path, tiles: str,
                  request: MapRequest | None = None, dense: bool = False, **options) -> dict:
    """Map the imagery with a bundle into tiles of `tiles` (m or px) under the folder `out`, each written by the
    task that made it; returns the run's summary (also DIR/tiles.json). The request's engine, bands, nodata,
    stride, max_nodata, window, overlap, batch size, runtime, probabilities and log apply; with `dense`, the map
    goes through the CRF (a segmentation map refined, or the hybrid of a tile classifier) with the request's CRF
    settings. Imagery may be URLs: each task reads its own window of them."""
    images = [absolute(p) for p in images]
    with remote_reading(images):
        return _predict_tiled(bundle_path, images, Path(out), tiles, MapRequest.of(request, options), dense)


def _predict_tiled(bundle_path: str | Path, images: list[str], out: Path, tiles: str, r: MapRequest,
                   dense: bool) -> dict:
    started = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise LandcoverError("is a file: --tiles writes a folder of tiles", out)
    bundle = load_bundle(bundle_path)
    picks, scene = open_scene(bundle, images, list(r.bands) if r.bands else None, r.nodata)
    res = float(bundle.chip["res"])
    size = to_pixels(parse_length(tiles, "--tiles"), res, "--tiles")
    task = replace(r, bands=tuple(picks), stretch=chip_stretch(bundle, scene), engine=Engine(
        "local", threads=r.runner.task_threads), log=_silent, on_progress=None, progress=False, overwrite=False)
    crf_cell = 1
    if bundle.per_pixel or dense:
        crs, transform, height, width, direct = pixel_grid(scene, res)
        cell = 1
        if size < MIN_TILE_PX:
            raise LandcoverError(f"--tiles {tiles} is {size} px: at least {MIN_TILE_PX} px a side")
        if bundle.kind == "pixels":
            halo, unit, what = 2 * bundle.pixels.halo_px(res), 1, ""
        elif bundle.per_pixel:  # a network's windows: tiles of whole steps, a halo holding every window over the tile
            side, margin, _ = window_sizes(bundle, height, width, r)
            unit = side - margin
            halo = -(-side // unit) * unit
            task = replace(task, window=f"{side}px", overlap=f"{margin}px")
            what = f"whole steps of its windows ({unit} px: {side} px windows overlapping by {margin} px)"
        else:  # the hybrid's tile evidence: every window over the tile, cells (and every N-th) where the map's are
            grid = tile_grid(bundle, scene, r.stride)
            halo, unit = grid.tile, grid.stride * r.decimate
            what = f"whole cells of its {grid.stride} px stride" + (f", {r.decimate} at a time" * (r.decimate > 1))
        if dense:
            halo, unit, crf_cell, task = _dense_plan(bundle, picks, images, crs, transform, halo, unit, task)
            what = f"whole blocks of the CRF ({task.crf_block} cells of {crf_cell} px)" + (f" and {what}" * bool(what))
        if size % unit:
            raise LandcoverError(f"--tiles {tiles} is {size} px: a {'dense' if dense else 'segmentation'} map's tiles "
                                 f"are {what}, e.g. {max(1, round(size / unit)) * unit} px")
    else:  # a tile classifier: tiles of whole cells, each reading the windows that cover its cells
        bundle.require_classifier("prediction")
        grid = tile_grid(bundle, scene, r.stride)
        (height, width), direct = map_cells(scene, grid), on_lattice(scene, grid)
        crs, transform = grid.crs, Affine(grid.step, 0, grid.x0, 0, -grid.step, grid.y0)
        cell, halo = grid.stride, grid.tile // grid.stride - 1
        if size % cell or size < grid.tile:
            raise LandcoverError(f"--tiles {tiles} is {size} px: a tile map's tiles are whole cells of its "
                                 f"{cell} px stride, at least one {grid.tile} px window")
        size //= cell
    if not direct:
        raise LandcoverError(f"--tiles reads the imagery on its own grid: it is not at the bundle's {res:g} m (map "
                             "the whole raster, or resample the imagery first)", images[0])
    out.mkdir(parents=True, exist_ok=True)
    job = TileJob(str(Path(bundle.path).resolve()), tuple(images), crs.to_wkt(), tuple(transform)[:6], height, width,
                  halo, str(out.resolve()), tuple((int(c["id"]), c["name"]) for c in bundle.classes),
                  (scene.height, scene.width), task, cell, dense, crf_cell)
    tasks = [TileTask(i, row, col, min(size, height - row), min(size, width - col))
             for i, (row, col) in enumerate((row, col) for row in range(0, height, size)
                                            for col in range(0, width, size))]
    settings = {k: v for k, v in asdict(task).items() if k not in ("engine", "log", "on_progress", "stretch",
                                                                    "crf_stretch", "crf_lattice")}
    stamp = fingerprint([job.bundle], images, {**settings, "tile_px": size, "halo": halo, "cell": cell, "dense": dense})
    with output_lock(out / "tiles.json"):
        kept = out / ".fingerprint"
        if kept.exists() and kept.read_text() != stamp:
            if not r.overwrite:
                raise LandcoverError("holds tiles of another run (another bundle, imagery or settings): pass "
                                     "--overwrite to replace them, or name another folder", out)
            for stale in ("tiles", "items"):
                shutil.rmtree(out / stale, ignore_errors=True)
        write_text(kept, stamp)
        return _run_tiles(out, job, tasks, size, res * cell, r, started)


def _dense_plan(bundle: Bundle, picks: list[int], images: list[str], crs: CRS, transform: Affine, halo: int,
                unit: int, task: MapRequest) -> tuple[int, int, int, MapRequest]:
    """A dense map's tiles: whole blocks of the CRF's grid (so each block is the whole map's, run with the same
    margin), the halo also holding the evidence under the blocks' margins, on every lattice the evidence needs;
    the CRF's appearance stretched as the whole scene is."""
    if task.evidence_model != "none":
        raise LandcoverError("--tiles with --evidence-model pixels: the pixel model is trained on the whole map's "
                             "confident tiles; map it as one raster")
    settings = crf_for(task.crf, crs, transform)
    crf_cell = round(1 / settings.downscale)
    if abs(crf_cell * settings.downscale - 1) > 1e-9:
        raise LandcoverError(f"--tiles with the CRF needs a downscale of 1/N (1, 0.5, 0.25, ...), not "
                             f"{settings.downscale:g}")
    unit = math.lcm(unit, crf_cell)
    halo = -(-(halo + settings.reach * crf_cell) // unit) * unit
    _, appearance = appearance_scene(bundle, picks, images, task.nodata)
    return halo, math.lcm(unit, task.crf_block * crf_cell), crf_cell, replace(
        task, crf_stretch=scene_stretch(appearance))


def _silent(_: str) -> None:
    return None


def _run_tiles(out: Path, job: TileJob, tasks: list[TileTask], size: int, res: float, r: MapRequest,
               started: float) -> dict:
    """The tiles not yet written, on the engine (each failure tried once more), then the index and catalog. The
    summary times the tasks (from the first sent to the last answer) apart from the driver's own work around them
    (the plan, checking tiles already written, the index and catalog)."""
    for scratch in (out / "tiles").glob(".r*"):  # a killed run's tasks' scratch folders
        shutil.rmtree(scratch, ignore_errors=True)
    records = {t.index: record for t in tasks if (record := finished(out, t, job.probabilities)) is not None}
    resumed = len(records)
    todo = [t for t in tasks if t.index not in records]
    height, width, halo = job.height, job.width, job.halo
    r.log(f"{len(tasks)} tiles of {size} cells ({size * res:g} m) over the {height} x {width} cell map, halo "
          f"{halo} cells; {resumed} already written")
    failed: dict[int, str] = {}
    mapping = time.perf_counter()
    for attempt in range(RETRIES + 1):
        for result in r.runner.map(run_tile, job, todo, spawn=True):
            if "error" in result:
                failed[result["index"]] = result["error"]
            else:
                records[result["index"]] = result
                failed.pop(result["index"], None)
        todo = [t for t in tasks if t.index in failed]
        if not todo or attempt == RETRIES:
            break
        r.log(f"{len(todo)} tile(s) failed; trying them again")
    mapped = time.perf_counter()
    ordered = [records[t.index] for t in tasks if t.index in records]
    write_index(out / "index.vrt", ordered, job)
    if job.probabilities:
        write_index(out / "probs.vrt", ordered, job, probabilities=True)
    write_catalog(out, ordered, job, res)
    nodes: dict[str, int] = {}
    for record in ordered:
        nodes[record["node"]] = nodes.get(record["node"], 0) + 1
    summary = {"tiles": len(tasks), "written": len(tasks) - resumed - len(failed), "resumed": resumed,
               "failed": {tasks[i].name: message for i, message in failed.items()}, "tile_cells": size,
               "tile_m": size * res, "cell_m": res, "halo_cells": halo, "grid": [height, width], "nodes": nodes,
               "seconds": round(time.perf_counter() - started, 2), "tasks_seconds": round(mapped - mapping, 2),
               "driver_seconds": round(time.perf_counter() - started - (mapped - mapping), 2)}
    write_text(out / "tiles.json", json.dumps(summary, indent=2))
    if failed:
        raise LandcoverError(f"{len(failed)} of {len(tasks)} tiles failed twice (the others are written; run "
                             f"again to retry them): {next(iter(summary['failed'].values()))}", out)
    return summary


def finished(out: Path, task: TileTask, probabilities: bool = False) -> dict | None:
    """A tile's record when its COG (and probabilities) are there and match the checksums the record gives; else
    None."""
    record, cog = out / "tiles" / f"{task.name}.json", out / "tiles" / f"{task.name}.tif"
    probs = cog.with_suffix(".probs.tif")
    if not (record.is_file() and cog.is_file() and (probs.is_file() or not probabilities)):
        return None
    kept = json.loads(record.read_text())
    return kept if (kept.get("sha256") == file_sha256(cog) and kept.get("index") == task.index
                    and (not probabilities or kept.get("probs_sha256") == file_sha256(probs))) else None


def run_tile(job: TileJob, task: TileTask) -> dict:
    """One tile, on whichever worker runs it: its window with the halo mapped, the halo cropped, its COG and record
    written. A failure is returned (the driver retries), not raised."""
    from landcover.predict.dense import predict_dense
    from landcover.predict.raster import predict_raster

    try:
        r0, c0 = max(0, task.row - job.halo), max(0, task.col - job.halo)  # in cells
        r1 = min(job.height, task.row + task.height + job.halo)
        c1 = min(job.width, task.col + task.width + job.halo)
        tiles = Path(job.out) / "tiles"
        tiles.mkdir(parents=True, exist_ok=True)
        with remote_reading(job.images), tempfile.TemporaryDirectory(prefix=f".{task.name}-", dir=tiles) as scratch:
            window = window_of(job, r0, r1, c0, c1)
            inputs = [clipped_vrt(path, window, Path(scratch) / f"{i}-{Path(path).stem}.vrt")
                      for i, path in enumerate(job.images)]
            if job.dense:  # the CRF's blocks where the whole map's fall (in cells of its grid from the clip's corner)
                block = job.request.crf_block
                lattice = ((r0 // job.crf_cell) % block, (c0 // job.crf_cell) % block)
                predict_dense(job.bundle, inputs, Path(scratch) / "map.tif", replace(job.request, crf_lattice=lattice))
            else:
                predict_raster(job.bundle, inputs, Path(scratch) / "map.tif", job.request)
            core = Window(task.col - c0, task.row - r0, task.width, task.height)
            with rasterio.open(Path(scratch) / "map.tif") as src:
                data = src.read(1, window=core)
                tags = {k: v for k, v in src.tags().items() if k.startswith("LANDCOVER_")}
            scaled = None
            if job.probabilities:
                with rasterio.open(Path(scratch) / "map.probs.tif") as src:
                    scaled = src.read(window=core)
        tags["LANDCOVER_IMAGES"] = json.dumps(list(job.images))  # the imagery, not this task's clipped VRTs
        classes = [{"id": i, "name": n} for i, n in job.classes]
        transform = Affine(*job.transform) * Affine.translation(task.col, task.row)
        meta = json.loads(tags.pop("LANDCOVER_CLASSES"))
        cog = tiles / f"{task.name}.tif"
        crs = rasterio.crs.CRS.from_wkt(job.crs_wkt)
        tags.pop("LANDCOVER_PROBABILITIES", None)
        write_class_map(ClassMap(data, transform, crs, meta, {**tags, "LANDCOVER_TILE": task.name}), cog)
        counts = np.bincount(data.ravel(), minlength=256)
        record = {"index": task.index, "name": task.name, "row": task.row, "col": task.col,
                  "height": task.height, "width": task.width, "sha256": file_sha256(cog), "node": node_id(),
                  "counts": {c["name"]: int(counts[c["id"]]) for c in classes}, "nodata": int(counts[NODATA])}
        if scaled is not None:
            probs = write_scaled_probabilities(cog.with_suffix(".probs.tif"), scaled, transform, crs, meta,
                                               {**tags, "LANDCOVER_TILE": task.name})
            record["probs_sha256"] = file_sha256(probs)
        write_text(tiles / f"{task.name}.json", json.dumps(record))
        return record
    except Exception as exc:  # reported by the driver with the tile's name
        return {"index": task.index, "error": f"{task.name}: {type(exc).__name__}: {exc}"}


def window_of(job: TileJob, r0: int, r1: int, c0: int, c1: int) -> Window:
    """The imagery window under cells [r0, r1) x [c0, c1); where they are the map's last cells, to the raster's
    edge, so the clipped raster ends where the whole one does (its tile map has the same cells)."""
    bottom = job.image_shape[0] if r1 == job.height else r1 * job.cell
    right = job.image_shape[1] if c1 == job.width else c1 * job.cell
    return Window(c0 * job.cell, r0 * job.cell, right - c0 * job.cell, bottom - r0 * job.cell)


def node_id() -> str:
    """The Ray node running this task, else the machine's name."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


def clipped_vrt(path: str, window: Window, out: Path) -> str:
    """A VRT of `window` of the raster at `path` (every band, its nodata and georeferencing), written to `out`."""
    with rasterio.open(path) as src:
        transform = src.window_transform(window)
        bands = []
        for b in range(1, src.count + 1):
            nodata = "" if src.nodatavals[b - 1] is None else f"<NoDataValue>{src.nodatavals[b - 1]!r}</NoDataValue>"
            gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                         "int32": "Int32", "float32": "Float32", "float64": "Float64"}[src.dtypes[b - 1]]
            bands.append(
                f'<VRTRasterBand dataType="{gdal_type}" band="{b}">{nodata}<SimpleSource>'
                f'<SourceFilename relativeToVRT="0">{escape(gdal_path(path))}</SourceFilename>'
                f"<SourceBand>{b}</SourceBand>"
                f'<SrcRect xOff="{window.col_off}" yOff="{window.row_off}" xSize="{window.width}" '
                f'ySize="{window.height}"/><DstRect xOff="0" yOff="0" xSize="{window.width}" '
                f'ySize="{window.height}"/></SimpleSource></VRTRasterBand>')
        xml = (f'<VRTDataset rasterXSize="{window.width}" rasterYSize="{window.height}">'
               f"<SRS>{escape(src.crs.to_wkt())}</SRS><GeoTransform>{', '.join(map(repr, transform.to_gdal()))}"
               f"</GeoTransform>{''.join(bands)}</VRTDataset>")
    out.write_text(xml)
    return str(out)
