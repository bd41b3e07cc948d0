"""Maps of any extent as tiles written by the workers (`predict --tiles SIZE --out DIR/`), #30.

The map's grid is cut into square output tiles of SIZE (m or px), aligned to the grid's origin: for per-pixel
bundles the grid is the imagery's own pixels (read at the bundle's resolution), for a tile classifier its cells,
one per stride (SIZE whole cells). Each tile is one engine task: it reads its window with a halo of context (the
pixel model's: twice its filters' reach; a tile map's: every window that covers one of its cells) through small
VRTs of the inputs clipped to that window, maps it with `predict_raster` (the same windows, features and heads as a
map of the whole raster; an 8-bit chip bundle's stretch is the whole scene's), crops the halo and writes its own
COG from the worker (temporary name, then renamed) with a record beside it (class counts, the COG's SHA-256, the
node that made it). The driver keeps one small record per tile and writes DIR/index.vrt (the mosaic: `landcover
map`, `evaluate` and `change` read DIR as it) and a STAC collection (DIR/catalog.json, one item per tile with the
projection extension, its class areas and checksum).

A rerun with the same bundle, imagery and settings skips every tile whose COG matches its record (resume after a
killed driver, or a finished run; other settings are refused until --overwrite); a tile whose task fails is tried
once more, then reported, and the others finish. For the pixel model and tile classifiers the mosaic equals the
single-COG map of the same inputs: a pixel model's windows read their filters' reach around them, and a tile map's
cells average the same windows, so no class depends on the tile that holds it. A segmentation network's tiles place
their windows differently from one whole-raster run, so its tiles join without seams but are not bit-identical to
it. Dense (CRF) maps are not tiled in this version.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from landcover.atomic import write_text
from landcover.bundle import load_bundle
from landcover.errors import LandcoverError
from landcover.geo.grid import on_lattice, parse_length, to_pixels
from landcover.geo.raster import absolute, gdal_path, remote_reading
from landcover.geo.stretch import Stretch
from landcover.locks import output_lock
from landcover.maps.classmap import NODATA, ClassMap, write_class_map
from landcover.onnx_graph import file_sha256
from landcover.predict.bands import pixel_grid
from landcover.predict.outputs import fingerprint, open_scene
from landcover.predict.raster import chip_stretch, map_cells, tile_grid
from landcover.predict.request import MapRequest

MIN_TILE_PX = 256
SEGMENTATION_HALO_PX = 128
"""A segmentation network's tiles read this much context (a quarter of its default window)."""
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
    """What every tile's task needs: the bundle, the imagery, the map's grid, the halo, the folder."""

    bundle: str
    images: tuple[str, ...]
    bands: tuple[int, ...] | None
    nodata: float | str | None
    window: str | None
    overlap: str | None
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
    cell: int = 1
    """Imagery pixels a cell spans (a tile map's stride; 1 for per-pixel maps)."""
    stride: str | None = None
    max_nodata: float = 0.25
    batch_size: int | None = None
    runtime: str = "auto"
    stretch: Stretch | None = None
    """8-bit chip bundles: the whole scene's stretch, the same for every tile."""


def predict_tiled(bundle_path: str | Path, images: list[str | Path], out: str | Path, tiles: str,
                  request: MapRequest | None = None, **options) -> dict:
    """Map the imagery with a bundle into tiles of `tiles` (m or px) under the folder `out`, each written by the
    task that made it; returns the run's summary (also DIR/tiles.json). The request's engine, bands, nodata,
    stride, max_nodata, window, overlap, batch size, runtime and log apply. Imagery may be URLs: each task reads
    its own window of them."""
    images = [absolute(p) for p in images]
    with remote_reading(images):
        return _predict_tiled(bundle_path, images, Path(out), tiles, MapRequest.of(request, options))


def _predict_tiled(bundle_path: str | Path, images: list[str], out: Path, tiles: str, r: MapRequest) -> dict:
    started = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise LandcoverError("is a file: --tiles writes a folder of tiles", out)
    bundle = load_bundle(bundle_path)
    picks, scene = open_scene(bundle, images, list(r.bands) if r.bands else None, r.nodata)
    res = float(bundle.chip["res"])
    size = to_pixels(parse_length(tiles, "--tiles"), res, "--tiles")
    if bundle.per_pixel:
        crs, transform, height, width, direct = pixel_grid(scene, res)
        cell, stretch = 1, None
        halo = 2 * bundle.pixels.halo_px(res) if bundle.kind == "pixels" else SEGMENTATION_HALO_PX
        if size < MIN_TILE_PX:
            raise LandcoverError(f"--tiles {tiles} is {size} px: at least {MIN_TILE_PX} px a side")
    else:  # a tile classifier: tiles of whole cells, each reading the windows that cover its cells
        bundle.require_classifier("prediction")
        grid = tile_grid(bundle, scene, r.stride)
        (height, width), direct = map_cells(scene, grid), on_lattice(scene, grid)
        crs, transform = grid.crs, Affine(grid.step, 0, grid.x0, 0, -grid.step, grid.y0)
        cell, halo, stretch = grid.stride, grid.tile // grid.stride - 1, chip_stretch(bundle, scene)
        if size % cell or size < grid.tile:
            raise LandcoverError(f"--tiles {tiles} is {size} px: a tile map's tiles are whole cells of its "
                                 f"{cell} px stride, at least one {grid.tile} px window")
        size //= cell
    if not direct:
        raise LandcoverError(f"--tiles reads the imagery on its own grid: it is not at the bundle's {res:g} m (map "
                             "the whole raster, or resample the imagery first)", images[0])
    out.mkdir(parents=True, exist_ok=True)
    job = TileJob(str(Path(bundle.path).resolve()), tuple(images), tuple(picks), r.nodata, r.window, r.overlap,
                  crs.to_wkt(), tuple(transform)[:6], height, width, halo, str(out.resolve()),
                  tuple((int(c["id"]), c["name"]) for c in bundle.classes), (scene.height, scene.width), cell,
                  r.stride, r.max_nodata, r.batch_size, r.runtime, stretch)
    tasks = [TileTask(i, row, col, min(size, height - row), min(size, width - col))
             for i, (row, col) in enumerate((row, col) for row in range(0, height, size)
                                            for col in range(0, width, size))]
    stamp = fingerprint([job.bundle], images, {"bands": picks, "nodata": r.nodata, "window": r.window,
                                               "overlap": r.overlap, "tile_px": size, "halo": halo, "cell": cell,
                                               "stride": r.stride, "max_nodata": r.max_nodata,
                                               "runtime": r.runtime})
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


def _run_tiles(out: Path, job: TileJob, tasks: list[TileTask], size: int, res: float, r: MapRequest,
               started: float) -> dict:
    """The tiles not yet written, on the engine (each failure tried once more), then the index and catalog. The
    summary times the tasks (from the first sent to the last answer) apart from the driver's own work around them
    (the plan, checking tiles already written, the index and catalog)."""
    for scratch in (out / "tiles").glob(".r*"):  # a killed run's tasks' scratch folders
        shutil.rmtree(scratch, ignore_errors=True)
    records = {t.index: record for t in tasks if (record := finished(out, t)) is not None}
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


def finished(out: Path, task: TileTask) -> dict | None:
    """A tile's record when its COG is there and matches the checksum the record gives; else None."""
    record, cog = out / "tiles" / f"{task.name}.json", out / "tiles" / f"{task.name}.tif"
    if not (record.is_file() and cog.is_file()):
        return None
    kept = json.loads(record.read_text())
    return kept if kept.get("sha256") == file_sha256(cog) and kept.get("index") == task.index else None


def run_tile(job: TileJob, task: TileTask) -> dict:
    """One tile, on whichever worker runs it: its window with the halo mapped, the halo cropped, its COG and record
    written. A failure is returned (the driver retries), not raised."""
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
            predict_raster(job.bundle, inputs, Path(scratch) / "map.tif", bands=job.bands, nodata=job.nodata,
                           window=job.window, overlap=job.overlap, stride=job.stride, max_nodata=job.max_nodata,
                           batch_size=job.batch_size, runtime=job.runtime, stretch=job.stretch, progress=False,
                           log=lambda _: None)
            with rasterio.open(Path(scratch) / "map.tif") as src:
                data = src.read(1, window=Window(task.col - c0, task.row - r0, task.width, task.height))
                tags = {k: v for k, v in src.tags().items() if k.startswith("LANDCOVER_")}
        tags["LANDCOVER_IMAGES"] = json.dumps(list(job.images))  # the imagery, not this task's clipped VRTs
        classes = [{"id": i, "name": n} for i, n in job.classes]
        transform = Affine(*job.transform) * Affine.translation(task.col, task.row)
        meta = json.loads(tags.pop("LANDCOVER_CLASSES"))
        cog = tiles / f"{task.name}.tif"
        write_class_map(ClassMap(data, transform, rasterio.crs.CRS.from_wkt(job.crs_wkt), meta,
                                 {**tags, "LANDCOVER_TILE": task.name}), cog)
        counts = np.bincount(data.ravel(), minlength=256)
        record = {"index": task.index, "name": task.name, "row": task.row, "col": task.col,
                  "height": task.height, "width": task.width, "sha256": file_sha256(cog), "node": node_id(),
                  "counts": {c["name"]: int(counts[c["id"]]) for c in classes}, "nodata": int(counts[NODATA])}
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


def write_index(path: Path, records: list[dict], job: TileJob) -> None:
    """DIR/index.vrt: the tiles' mosaic on the map's grid, one band of class ids (nodata where no tile)."""
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="1">tiles/{r["name"]}.tif</SourceFilename>'
        f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{r["width"]}" ySize="{r["height"]}"/>'
        f'<DstRect xOff="{r["col"]}" yOff="{r["row"]}" xSize="{r["width"]}" ySize="{r["height"]}"/>'
        "</SimpleSource>" for r in records)
    transform = Affine(*job.transform)
    write_text(path, (f'<VRTDataset rasterXSize="{job.width}" rasterYSize="{job.height}">'
                      f"<SRS>{escape(job.crs_wkt)}</SRS><GeoTransform>"
                      f"{', '.join(map(repr, transform.to_gdal()))}</GeoTransform>"
                      f'<VRTRasterBand dataType="Byte" band="1"><NoDataValue>{NODATA}</NoDataValue>{sources}'
                      "</VRTRasterBand></VRTDataset>\n"))
    first = path.parent / "tiles" / f"{records[0]['name']}.tif" if records else None
    if first is not None:  # the classes' names and colours and the imagery, as the tiles carry them
        with rasterio.open(first) as src, rasterio.open(path, "r+") as vrt:
            vrt.update_tags(**{k: v for k, v in src.tags().items() if k.startswith("LANDCOVER_")
                               and k != "LANDCOVER_TILE"})
            vrt.write_colormap(1, src.colormap(1))


STAC_VERSION = "1.0.0"
PROJECTION = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"


def write_catalog(out: Path, records: list[dict], job: TileJob, res: float) -> None:
    """DIR/catalog.json: a STAC collection of the tiles, DIR/items/NAME.json one item each (projection extension,
    class areas in hectares, the COG's checksum, the node that made it)."""
    from rasterio.warp import transform_bounds

    crs = rasterio.crs.CRS.from_wkt(job.crs_wkt)
    grid = Affine(*job.transform)
    (out / "items").mkdir(exist_ok=True)
    boxes = []
    for r in records:
        transform = grid * Affine.translation(r["col"], r["row"])
        left, top = transform * (0, 0)
        right, bottom = transform * (r["width"], r["height"])
        box = transform_bounds(crs, "EPSG:4326", left, min(top, bottom), right, max(top, bottom))
        boxes.append(box)
        west, south, east, north = box
        item = {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [PROJECTION, FILE],
                "id": r["name"], "collection": "landcover-tiles", "bbox": list(box),
                "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                                 [west, north], [west, south]]]},
                "properties": {"datetime": None, "start_datetime": None, "end_datetime": None,
                               "proj:wkt2": job.crs_wkt, "proj:shape": [r["height"], r["width"]],
                               "proj:transform": list(transform)[:6], "landcover:node": r["node"],
                               "landcover:hectares": {k: v * res * res / 1e4 for k, v in r["counts"].items()}},
                "assets": {"map": {"href": f"../tiles/{r['name']}.tif",
                                   "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                                   "roles": ["data"], "file:checksum": "1220" + r["sha256"]}},
                "links": [{"rel": "collection", "href": "../catalog.json", "type": "application/json"},
                          {"rel": "root", "href": "../catalog.json", "type": "application/json"}]}
        write_text(out / "items" / f"{r['name']}.json", json.dumps(item, indent=1))
    extent = np.array(boxes) if boxes else np.zeros((1, 4))
    collection = {"type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [], "id": "landcover-tiles",
                  "description": "A class map as tiles, each written by the landcover task that made it",
                  "license": "other", "extent": {
                      "spatial": {"bbox": [[float(extent[:, 0].min()), float(extent[:, 1].min()),
                                            float(extent[:, 2].max()), float(extent[:, 3].max())]]},
                      "temporal": {"interval": [[None, None]]}},
                  "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                            {"rel": "self", "href": "./catalog.json", "type": "application/json"},
                            *({"rel": "item", "href": f"./items/{r['name']}.json", "type": "application/geo+json"}
                              for r in records)]}
    write_text(out / "catalog.json", json.dumps(collection, indent=1))
