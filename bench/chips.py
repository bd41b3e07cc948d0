"""Chips throughput on Zion: `landcover chips` (class folders and shards) against a per-pixel loop, TorchGeo 0.8
and a bare-read ceiling.

Run from the repository root:  python bench/chips.py [--out bench/results] [--tiles N] [--repeats R] [--profile]
[--quick]. Reads ../shared/data/zion (or $LANDCOVER_DATA/zion); writes <out>/chips.json and prints a table.
`--quick` (seconds; what CI runs) measures one run of each layout with one worker, 20 per-pixel tiles and at most
100 TorchGeo samples.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import math
import os
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is first imported: 2 cores, benches run one at a time

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import rasterio
from common import ROOT, machine, say
from pyproj import Transformer
from rasterio.windows import Window

from landcover.chips.cut import cut_chips
from landcover.chips.labels import LabelPatch, LabelRaster
from landcover.chips.rules import Rules
from landcover.engine import Engine
from landcover.geo.grid import Grid, make_grid
from landcover.geo.raster import Scene
from landcover.schemes import INVALID, ClassScheme, load_scheme

BANDS = ("b2", "b3", "b4", "b5")
TILE = (480.0, "m")  # 16 px of 30 m
SCHEME = "nlcd-grouped"
CONFIGS = {
    "points3": (["points:3"], 0),
    "keepall": (["purity:0"], 10**9),
}
"""landcover rule sets: the realistic one, and one that writes every tile (like readers that deliver every tile)."""
RUNS = (("points3", "folders", "png"), ("keepall", "folders", "png"), ("keepall", "shards", "webdataset"),
        ("keepall", "shards", "tfrecord"))
"""(rules, layout, format) of the landcover runs; each with 1 and 2 workers."""
QUICK_RUNS = (("points3", "folders", "png"), ("keepall", "shards", "webdataset"))
TARGETS = {"torchgeo": 10.0, "per_pixel": 100.0, "ceiling": 0.5}
"""Goals for keep-all class folders (one file per chip), workers=1."""
SHARD_TARGETS = {"torchgeo": 40.0, "ceiling": 0.5}
"""Goals for keep-all WebDataset shards, workers=1."""
SLOW_RUN_S = 30.0
"""A landcover run slower than this is repeated twice, not three times."""


@dataclass(frozen=True)
class Inputs:
    """The Zion pair: four Landsat band files and the NLCD raster on its own grid."""

    bands: tuple[Path, ...]
    labels: Path

    def scene(self) -> Scene:
        """The imagery as a landcover scene."""
        return Scene.open(list(self.bands))


def find_inputs() -> Inputs:
    """The Zion files under $LANDCOVER_DATA or ../shared/data; exit with a clear message if absent."""
    data = Path(os.environ.get("LANDCOVER_DATA", ROOT.parent / "shared" / "data"))
    zion = data / "zion"
    inputs = Inputs(tuple(zion / f"landsat_{b}.tif" for b in BANDS), zion / "nlcd2011.tif")
    missing = [p.name for p in (*inputs.bands, inputs.labels) if not p.exists()]
    if missing:
        sys.exit(f"bench/chips.py: the Zion data is not there: {zion} lacks {', '.join(missing)}.\n"
                 f"It is read from ../shared/data relative to the repository root, or from $LANDCOVER_DATA "
                 f"(looked in {data}); see that folder's README. Nothing was measured.")
    return inputs


def per_second(n: int, seconds: float) -> float:
    """A rate, guarded against a zero time."""
    return n / seconds if seconds > 0 else float("inf")


def grid_tiles(grid: Grid, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(cols, rows), lattice indices from the grid's origin, of every tile that lies in the scene, row by row
    (`Grid.tiles_covering` gives their upper-left corners in map units)."""
    xs, ys = grid.tiles_covering(scene.bounds)
    return np.rint((xs - grid.x0) / grid.step).astype(int), np.rint((grid.y0 - ys) / grid.step).astype(int)


def reference_labels(inputs: Inputs, grid: Grid, scheme: ClassScheme, ncols: int, nrows: int) -> np.ndarray:
    """Class ids of the whole tile extent as landcover resamples them (nearest, once), for agreement checks."""
    labels = LabelRaster.open(inputs.labels)
    transform = grid.chip_transform(*grid.origin(0, 0))
    width, height = ncols * grid.stride, nrows * grid.stride
    bounds = (transform.c, transform.f - height * grid.res, transform.c + width * grid.res, transform.f)
    window = labels.window_for(bounds, grid.crs)
    patch = LabelPatch(labels, labels.classes(window, scheme.lookup()), window)
    return patch.to_grid(grid.crs, transform, width, height)


def run_landcover(inputs: Inputs, config: str, layout: str, fmt: str, workers: int, work: Path,
                  check: Any = None) -> tuple[float, Any]:
    """One end-to-end chips run into a fresh folder: (seconds, the manifest); `check(folder, manifest)` runs on the
    output before it is removed."""
    specs, max_nodata = CONFIGS[config]
    out = Path(tempfile.mkdtemp(prefix=f"lc-{config}-{layout}-w{workers}-", dir=work))
    try:
        start = time.perf_counter()
        scene = inputs.scene()
        grid = make_grid([scene], TILE)
        result = cut_chips([scene], LabelRaster.open(inputs.labels), load_scheme(SCHEME), grid,
                            Rules.parse(specs, max_nodata=max_nodata), out / "chips", aoi=None, fmt=fmt,
                            layout=layout, engine=Engine.choose(None, workers=workers), progress=False)
        seconds = time.perf_counter() - start
        if check is not None:
            check(out / "chips", result.manifest)
        return seconds, result.manifest
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_landcover(inputs: Inputs, run: tuple[str, str, str], workers: int, work: Path, repeats: int,
                    tiles: int) -> tuple[dict, Any]:
    """Best of `repeats` end-to-end runs (two if a run is slow): tiles/s and chips/s; and the last manifest."""
    config, layout, fmt = run
    times: list[float] = []
    manifest = None
    files: list[int] = []
    while len(times) < repeats:
        seconds, manifest = run_landcover(inputs, config, layout, fmt, workers, work,
                                          lambda folder, _: files.append(sum(1 for p in folder.rglob("*")
                                                                             if p.is_file())))
        times.append(seconds)
        if seconds > SLOW_RUN_S:
            repeats = min(repeats, 2)
    best = min(times)
    return {"config": config, "layout": layout, "format": fmt, "rules": CONFIGS[config][0], "workers": workers,
            "tiles": tiles, "chips": len(manifest), "files": files[-1], "seconds": best, "runs_s": times,
            "tiles_per_s": per_second(tiles, best), "chips_per_s": per_second(len(manifest), best)}, manifest


def shard_pixels_exact(inputs: Inputs, manifest: Any, work: Path, sample: int = 200) -> dict:
    """Read a sample of keep-all chips back from WebDataset shards and compare them with bare window reads of the
    band files: the shards must hold the imagery's pixels exactly."""
    from landcover.datasets.chips import read_row

    checked = {}

    def check(folder: Path, frame: Any) -> None:
        picks = np.random.default_rng(0).choice(len(frame), min(sample, len(frame)), replace=False)
        srcs = [rasterio.open(p) for p in inputs.bands]
        try:
            equal = 0
            for i in picks:
                chip = read_row(folder, frame, int(i))
                left, bottom, right, top = frame.geometry.iat[int(i)].bounds
                window = rasterio.windows.from_bounds(left, bottom, right, top, srcs[0].transform).round_offsets()
                window = Window(window.col_off, window.row_off, chip.shape[2], chip.shape[1])
                direct = np.stack([src.read(1, window=window) for src in srcs])
                equal += bool(np.array_equal(chip, direct))
        finally:
            for src in srcs:
                src.close()
        checked.update(chips=len(picks), equal=equal, labels_equal_folders=bool(
            manifest is not None and frame["chip_id"].tolist() == manifest["chip_id"].tolist()
            and frame["label"].tolist() == manifest["label"].tolist()))

    run_landcover(inputs, "keepall", "shards", "webdataset", 1, work, check)
    return checked


def profile_landcover(inputs: Inputs, work: Path, top: int = 10) -> str:
    """cProfile of one keep-all run into shards with workers=1: the top entries by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, _ = run_landcover(inputs, "keepall", "shards", "webdataset", 1, work)
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("cumulative").print_stats(r"landcover|rasterio|PIL", top)
    stats.sort_stats("tottime").print_stats(top)
    return f"keep-all shards, workers=1, under cProfile: {seconds:.2f} s\n{buffer.getvalue()}"


def bench_per_pixel(inputs: Inputs, grid: Grid, cols: np.ndarray, rows: np.ndarray) -> tuple[dict, np.ndarray]:
    """Each pixel centre of each tile transformed alone with pyproj and its label read with a 1x1 window."""
    size = grid.tile
    found = np.full((len(cols), size, size), INVALID, dtype=np.uint16)
    band_srcs = [rasterio.open(p) for p in inputs.bands]
    label_src = rasterio.open(inputs.labels)
    try:
        to_labels = Transformer.from_crs(band_srcs[0].crs, label_src.crs, always_xy=True)
        inverse = ~label_src.transform
        start = time.perf_counter()
        for i, (col, row) in enumerate(zip(cols, rows, strict=True)):
            window = Window(int(col) * grid.stride, int(row) * grid.stride, size, size)
            pixels = np.stack([src.read(1, window=window) for src in band_srcs])
            x0, y0 = grid.origin(int(col), int(row))
            for r in range(size):
                for c in range(size):
                    x, y = to_labels.transform(x0 + (c + 0.5) * grid.res, y0 - (r + 0.5) * grid.res)
                    lc, lr = inverse * (x, y)
                    lc, lr = math.floor(lc), math.floor(lr)
                    if 0 <= lc < label_src.width and 0 <= lr < label_src.height:
                        found[i, r, c] = label_src.read(1, window=Window(lc, lr, 1, 1))[0, 0]
            del pixels
        seconds = time.perf_counter() - start
    finally:
        for src in (*band_srcs, label_src):
            src.close()
    return {"tiles": len(cols), "seconds": seconds, "tiles_per_s": per_second(len(cols), seconds),
            "pixel_lookups": len(cols) * size * size}, found


def bench_ceiling(inputs: Inputs, grid: Grid, cols: np.ndarray, rows: np.ndarray, repeats: int) -> dict:
    """Bare windowed reads of every tile from the four band files (opened once): no warp, labels or encoding."""
    srcs = [rasterio.open(p) for p in inputs.bands]
    times = []
    try:
        windows = [Window(int(c) * grid.stride, int(r) * grid.stride, grid.tile, grid.tile)
                   for c, r in zip(cols, rows, strict=True)]
        for _ in range(repeats):
            start = time.perf_counter()
            for window in windows:
                for src in srcs:
                    src.read(1, window=window)
            times.append(time.perf_counter() - start)
    finally:
        for src in srcs:
            src.close()
    best = min(times)
    return {"tiles": len(cols), "seconds": best, "runs_s": times, "tiles_per_s": per_second(len(cols), best)}


def bench_torchgeo(inputs: Inputs, grid: Grid, ncols: int, nrows: int, limit: int | None) -> tuple[dict, Any]:
    """TorchGeo 0.8: RasterDataset imagery & labels on the imagery grid, GridGeoSampler 16 px, DataLoader."""
    from landcover.compat import guard_torchvision

    guard_torchvision()
    try:
        import shapely
        import torch
        import torchgeo
        from torch.utils.data import DataLoader
        from torchgeo.datasets import RasterDataset, stack_samples
        from torchgeo.samplers import GridGeoSampler, Units
    except ImportError as exc:
        return {"skipped": f"TorchGeo is not importable ({exc}); pip install -e '.[bench]' -c constraints.txt"}, None
    torch.set_num_threads(1)

    class Landsat(RasterDataset):
        """The four Landsat band files, one band per file."""

        filename_glob = f"landsat_{BANDS[0]}.tif"  # one file per scene; the other bands are found by name
        filename_regex = r"^landsat_(?P<band>b\d+)\.tif$"
        separate_files = True
        all_bands = BANDS
        is_image = True

    class Nlcd(RasterDataset):
        """NLCD 2011 codes on their own grid (warped to the imagery CRS and resolution by TorchGeo)."""

        filename_glob = "nlcd2011.tif"
        is_image = False

    zion = inputs.labels.parent
    start = time.perf_counter()
    images = Landsat(zion, crs=grid.crs, res=grid.res, bands=BANDS)
    labels = Nlcd(zion, crs=grid.crs, res=grid.res)
    dataset = images & labels
    left, top = grid.origin(0, 0)
    roi = shapely.box(left, top - nrows * grid.step, left + ncols * grid.step, top)
    sampler = GridGeoSampler(dataset, size=grid.tile, stride=grid.stride, roi=roi, units=Units.PIXELS)
    unrestricted = len(GridGeoSampler(dataset, size=grid.tile, stride=grid.stride, units=Units.PIXELS))
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0, collate_fn=stack_samples)
    setup = time.perf_counter() - start

    mosaic = np.full((nrows * grid.tile, ncols * grid.tile), -1, dtype=np.int32)
    off_grid = 0
    count = 0
    start = time.perf_counter()
    for batch in loader:
        xs, ys, _ = batch["bounds"][0]
        col, row = (xs.start - left) / grid.step, (top - ys.stop) / grid.step
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6 or batch["mask"].shape[-2:] != (16, 16):
            off_grid += 1
        else:
            r, c = round(row) * grid.tile, round(col) * grid.tile
            if 0 <= r < mosaic.shape[0] and 0 <= c < mosaic.shape[1]:
                mosaic[r:r + grid.tile, c:c + grid.tile] = batch["mask"][0].numpy()
        count += 1
        if limit is not None and count >= limit:
            break
    seconds = time.perf_counter() - start
    return {"version": torchgeo.__version__, "setup_s": setup, "sampler_len": len(sampler),
            "sampler_len_without_roi": unrestricted, "samples": count,
            "limited_to": limit, "samples_off_grid": off_grid, "seconds": seconds,
            "tiles_per_s": per_second(count, seconds),
            "image_shape": list(batch["image"].shape), "mask_shape": list(batch["mask"].shape)}, mosaic


def agreement(reference: np.ndarray, found: np.ndarray) -> float:
    """Share of pixels (where `found` has a value) whose class equals landcover's reference."""
    have = found >= 0
    return float((reference[have] == found[have]).mean()) if have.any() else float("nan")


def table(results: dict) -> str:
    """The figures and ratios as a plain-text table."""
    lines = [f"{'approach':<44} {'tiles':>6} {'chips':>6} {'files':>6} {'seconds':>8} {'tiles/s':>9} {'chips/s':>9}"]
    for run in results["landcover"]:
        label = f"landcover {run['config']} {run['layout']} {run['format']} w{run['workers']}"
        lines.append(f"{label:<44} {run['tiles']:>6} {run['chips']:>6} {run['files']:>6} {run['seconds']:>8.2f} "
                     f"{run['tiles_per_s']:>9.0f} {run['chips_per_s']:>9.0f}")
    pp = results["per_pixel"]
    lines.append(f"{'(a) per-pixel pyproj + 1x1 reads (subset)':<44} {pp['tiles']:>6} {'':>6} {'':>6} "
                 f"{pp['seconds']:>8.2f} {pp['tiles_per_s']:>9.1f}")
    tg = results["torchgeo"]
    if "skipped" in tg:
        lines.append(f"{'(b) TorchGeo':<44} skipped: {tg['skipped']}")
    else:
        lines.append(f"{'(b) TorchGeo ' + tg['version'] + ' GridGeoSampler':<44} {tg['samples']:>6} {'':>6} {'':>6} "
                     f"{tg['seconds']:>8.2f} {tg['tiles_per_s']:>9.0f}")
    ce = results["ceiling"]
    lines.append(f"{'(c) ceiling: bare rasterio window reads':<44} {ce['tiles']:>6} {'':>6} {'':>6} "
                 f"{ce['seconds']:>8.3f} {ce['tiles_per_s']:>9.0f}")
    lines.append("")
    lines.append(f"{'ratio':<56} {'value':>9} {'target':>8}  met")
    for r in results["ratios"]:
        target = "" if r["target"] is None else (f">= {r['target']:.0%}" if r["percent"] else f">= {r['target']:g}x")
        value = f"{r['value']:.0%}" if r["percent"] else f"{r['value']:.1f}x"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"{r['name']:<56} {value:>9} {target:>8}  {met}")
    return "\n".join(lines)


def ratios(results: dict) -> list[dict]:
    """Headline ratios (keep-all, workers=1: one process, like the others), for class folders and for shards."""
    runs = {(r["config"], r["layout"], r["format"], r["workers"]): r["tiles_per_s"] for r in results["landcover"]}
    tg = results["torchgeo"].get("tiles_per_s")
    if results["torchgeo"].get("limited_to"):
        tg = None  # a limited TorchGeo run (--quick) times too few samples for a ratio of record
    out: list[dict] = []

    def add(name: str, value: float | None, target: float | None, percent: bool = False) -> None:
        if value is None:
            return
        out.append({"name": name, "value": value, "target": target, "percent": percent,
                    "met": None if target is None else bool(value >= target)})

    for config, layout, fmt in RUNS:
        lc = runs.get((config, layout, fmt, 1))
        if lc is None:
            continue
        goals = {("keepall", "folders"): TARGETS, ("keepall", "shards"): SHARD_TARGETS}.get((config, layout), {})
        if fmt == "tfrecord":
            goals = {}
        name = f"landcover {config} {layout} {fmt} w1"
        add(f"{name} / TorchGeo", lc / tg if tg else None, goals.get("torchgeo"))
        add(f"{name} / per-pixel", lc / results["per_pixel"]["tiles_per_s"], goals.get("per_pixel"))
        add(f"{name} / ceiling", lc / results["ceiling"]["tiles_per_s"], goals.get("ceiling"), percent=True)
        two = runs.get((config, layout, fmt, 2))
        add(f"landcover {config} {layout} {fmt} workers 2 vs 1", two / lc if two else None, None)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every bench in turn, print the table, write chips.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--tiles", type=int, default=400, help="tiles for the (slow) per-pixel approach")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast benches (best is kept)")
    parser.add_argument("--torchgeo-limit", type=int, default=None,
                        help="stop TorchGeo after this many samples (default: all)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one keep-all shards workers=1 run")
    parser.add_argument("--quick", action="store_true",
                        help="seconds, not minutes: one run per layout, one worker, 20 per-pixel tiles, at most 100 "
                             "TorchGeo samples (checks the bench works; not figures of record)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.tiles = 1, min(args.tiles, 20)
        args.torchgeo_limit = min(args.torchgeo_limit or 100, 100)
    inputs = find_inputs()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.out))

    scene = inputs.scene()
    grid = make_grid([scene], TILE)
    cols, rows = grid_tiles(grid, scene)
    ncols, nrows = int(cols.max()) + 1, int(rows.max()) + 1
    scheme = load_scheme(SCHEME)
    say(f"Zion: {len(cols)} tiles of {grid.tile} px ({ncols} x {nrows}), grid {grid.crs} {grid.res:g} m")
    results: dict[str, Any] = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                               "machine": machine("rasterio", "pyproj", "numpy", "pillow", "torch", "torchgeo"),
                               "data": {"bands": [str(p) for p in inputs.bands], "labels": str(inputs.labels)},
                               "grid": grid.to_dict() | {"tiles": len(cols), "cols": ncols, "rows": nrows},
                               "quick": args.quick, "landcover": []}
    try:
        manifests = {}
        for run in QUICK_RUNS if args.quick else RUNS:
            for workers in (1,) if args.quick else (1, 2):
                say(f"landcover chips {' '.join(run)} workers={workers} ...")
                figures, manifests[run] = bench_landcover(inputs, run, workers, work, args.repeats, len(cols))
                results["landcover"].append(figures)
        say("shards: pixels and labels ...")
        results["shards_exact"] = shard_pixels_exact(inputs, manifests.get(("keepall", "folders", "png")), work)

        reference = reference_labels(inputs, grid, scheme, ncols, nrows)
        lut = scheme.lookup()

        n = max(1, min(args.tiles, len(cols)))
        say(f"(a) per-pixel approach on the first {n} tiles ...")
        results["per_pixel"], codes = bench_per_pixel(inputs, grid, cols[:n], rows[:n])
        ref_tiles = np.stack([reference[r * grid.tile:(r + 1) * grid.tile, c * grid.tile:(c + 1) * grid.tile]
                              for c, r in zip(cols[:n], rows[:n], strict=True)])
        results["per_pixel"]["label_agreement"] = agreement(ref_tiles, lut[codes].astype(np.int32))

        say("(b) TorchGeo GridGeoSampler ...")
        results["torchgeo"], mosaic = bench_torchgeo(inputs, grid, ncols, nrows, args.torchgeo_limit)
        if mosaic is not None:
            mapped = np.where(mosaic >= 0, lut[np.clip(mosaic, 0, 0xFFFF)].astype(np.int32), -1)
            results["torchgeo"]["label_agreement"] = agreement(reference, mapped)

        say("(c) ceiling: bare windowed reads ...")
        results["ceiling"] = bench_ceiling(inputs, grid, cols, rows, args.repeats)
        results["ratios"] = ratios(results)

        if args.profile:
            say("cProfile of landcover keep-all workers=1 ...")
            results["profile"] = profile_landcover(inputs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"chips throughput, Zion ({len(cols)} tiles of 16 px / 480 m), {results['date']}, "
          f"{results['machine']['cores']} cores")
    print(table(results))
    notes = []
    exact = results["shards_exact"]
    notes.append(f"shards: {exact['equal']} of {exact['chips']} sampled chips equal bare window reads of the bands"
                 + ("; chip ids and labels equal the class-folder run's" if exact["labels_equal_folders"] else ""))
    if "label_agreement" in results["per_pixel"]:
        notes.append(f"per-pixel labels equal landcover's: {results['per_pixel']['label_agreement']:.2%} of pixels")
    tg = results["torchgeo"]
    if "skipped" not in tg:
        notes.append(f"TorchGeo: sampler length {tg['sampler_len']} ({tg['sampler_len_without_roi']} without the "
                     f"ROI: partial tiles at the edges), yielded {tg['samples']} samples"
                     f"{' (limited)' if tg['limited_to'] else ''}, {tg['samples_off_grid']} off the grid; "
                     f"setup {tg['setup_s']:.2f} s (not in the rate); labels equal landcover's: "
                     f"{tg['label_agreement']:.2%} of pixels")
    for note in notes:
        print(f"  {note}")
    if "profile" in results:
        print()
        print(results["profile"])
    path = args.out / "chips.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
