"""Chips throughput on Zion: `landcover chips` against a per-pixel loop, TorchGeo 0.8 and a bare-read ceiling.

Run from the repository root:  python bench/chips.py [--out bench/results] [--tiles N] [--repeats R] [--profile]
Reads ../shared/data/zion (or $LANDCOVER_DATA/zion); writes <out>/chips.json and prints a table.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import math
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is first imported: 2 cores, benches run one at a time

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from landcover.chips.cut import cut_chips
from landcover.chips.labels import LabelPatch, LabelRaster
from landcover.chips.rules import Rules
from landcover.engine import Engine
from landcover.geo.grid import Grid, make_grid
from landcover.geo.raster import Scene
from landcover.schemes import INVALID, ClassScheme, load_scheme

ROOT = Path(__file__).resolve().parents[1]
BANDS = ("b2", "b3", "b4", "b5")
TILE = (480.0, "m")  # 16 px of 30 m
SCHEME = "nlcd-grouped"
CONFIGS = {
    "points3": (["points:3"], 0),
    "keepall": (["purity:0"], 10**9),
}
"""landcover rule sets: the realistic one, and one that writes every tile (like readers that deliver every tile)."""
TARGETS = {"torchgeo": 10.0, "per_pixel": 100.0, "ceiling": 0.5}
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


def say(text: str) -> None:
    """A progress line on stderr, so stdout keeps only the results."""
    print(text, file=sys.stderr, flush=True)


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


def run_landcover(inputs: Inputs, config: str, workers: int, work: Path) -> tuple[float, int]:
    """One end-to-end chips run into a fresh folder: (seconds, chips written)."""
    specs, max_nodata = CONFIGS[config]
    out = Path(tempfile.mkdtemp(prefix=f"lc-{config}-w{workers}-", dir=work))
    try:
        start = time.perf_counter()
        scene = inputs.scene()
        grid = make_grid([scene], TILE)
        result = cut_chips([scene], LabelRaster.open(inputs.labels), load_scheme(SCHEME), grid,
                            Rules.parse(specs, max_nodata=max_nodata), out / "chips", aoi=None, fmt="png",
                            engine=Engine.choose(None, workers=workers), progress=False)
        seconds = time.perf_counter() - start
        return seconds, len(result.manifest)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_landcover(inputs: Inputs, config: str, workers: int, work: Path, repeats: int, tiles: int) -> dict:
    """Best of `repeats` end-to-end runs (two if a run is slow): tiles/s and chips/s."""
    times: list[float] = []
    chips = 0
    while len(times) < repeats:
        seconds, chips = run_landcover(inputs, config, workers, work)
        times.append(seconds)
        if seconds > SLOW_RUN_S:
            repeats = min(repeats, 2)
    best = min(times)
    return {"config": config, "rules": CONFIGS[config][0], "workers": workers, "tiles": tiles, "chips": chips,
            "seconds": best, "runs_s": times, "tiles_per_s": per_second(tiles, best),
            "chips_per_s": per_second(chips, best)}


def profile_landcover(inputs: Inputs, work: Path, top: int = 10) -> str:
    """cProfile of one keep-all run with workers=1: the top entries by cumulative time in landcover/rasterio/PIL."""
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, _ = run_landcover(inputs, "keepall", 1, work)
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("cumulative").print_stats(r"landcover|rasterio|PIL", top)
    stats.sort_stats("tottime").print_stats(top)
    return f"keep-all, workers=1, under cProfile: {seconds:.2f} s\n{buffer.getvalue()}"


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


def machine() -> dict:
    """What the figures were taken on."""
    versions = {}
    for name in ("landcover", "rasterio", "pyproj", "numpy", "pillow", "torch", "torchgeo"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or None,
            "python": platform.python_version(), "gdal": rasterio.__gdal_version__, "versions": versions}


def table(results: dict) -> str:
    """The figures and ratios as a plain-text table."""
    lines = [f"{'approach':<44} {'tiles':>6} {'chips':>6} {'seconds':>8} {'tiles/s':>9} {'chips/s':>9}"]
    for run in results["landcover"]:
        label = f"landcover chips {run['config']:<8} workers={run['workers']}"
        lines.append(f"{label:<44} {run['tiles']:>6} {run['chips']:>6} {run['seconds']:>8.2f} "
                     f"{run['tiles_per_s']:>9.0f} {run['chips_per_s']:>9.0f}")
    pp = results["per_pixel"]
    lines.append(f"{'(a) per-pixel pyproj + 1x1 reads (subset)':<44} {pp['tiles']:>6} {'':>6} "
                 f"{pp['seconds']:>8.2f} {pp['tiles_per_s']:>9.1f}")
    tg = results["torchgeo"]
    if "skipped" in tg:
        lines.append(f"{'(b) TorchGeo':<44} skipped: {tg['skipped']}")
    else:
        lines.append(f"{'(b) TorchGeo ' + tg['version'] + ' GridGeoSampler':<44} {tg['samples']:>6} {'':>6} "
                     f"{tg['seconds']:>8.2f} {tg['tiles_per_s']:>9.0f}")
    ce = results["ceiling"]
    lines.append(f"{'(c) ceiling: bare rasterio window reads':<44} {ce['tiles']:>6} {'':>6} "
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
    """Headline ratios (keep-all, workers=1: one process, like the others) and the points:3 figures."""
    runs = {(r["config"], r["workers"]): r["tiles_per_s"] for r in results["landcover"]}
    tg = results["torchgeo"].get("tiles_per_s")
    out: list[dict] = []

    def add(name: str, value: float | None, target: float | None, percent: bool = False) -> None:
        if value is None:
            return
        out.append({"name": name, "value": value, "target": target, "percent": percent,
                    "met": None if target is None else bool(value >= target)})

    for config in ("keepall", "points3"):
        headline = config == "keepall"
        lc = runs[(config, 1)]
        add(f"landcover {config} w1 / TorchGeo", lc / tg if tg else None, TARGETS["torchgeo"] if headline else None)
        add(f"landcover {config} w1 / per-pixel", lc / results["per_pixel"]["tiles_per_s"],
            TARGETS["per_pixel"] if headline else None)
        add(f"landcover {config} w1 / ceiling", lc / results["ceiling"]["tiles_per_s"],
            TARGETS["ceiling"] if headline else None, percent=True)
        add(f"landcover {config} workers 2 vs 1 (speed-up)", runs[(config, 2)] / lc, None)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every bench in turn, print the table, write chips.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--tiles", type=int, default=400, help="tiles for the (slow) per-pixel approach")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast benches (best is kept)")
    parser.add_argument("--torchgeo-limit", type=int, default=None,
                        help="stop TorchGeo after this many samples (default: all)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one keep-all workers=1 run")
    args = parser.parse_args(argv)
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
                               "machine": machine(), "data": {"bands": [str(p) for p in inputs.bands],
                                                              "labels": str(inputs.labels)},
                               "grid": grid.to_dict() | {"tiles": len(cols), "cols": ncols, "rows": nrows},
                               "landcover": []}
    try:
        for config in CONFIGS:
            for workers in (1, 2):
                say(f"landcover chips {config} workers={workers} ...")
                results["landcover"].append(bench_landcover(inputs, config, workers, work, args.repeats, len(cols)))

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
