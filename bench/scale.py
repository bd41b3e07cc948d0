"""What a state or a continent costs: each way to map at 1 m and 30 m, the tiled driver's own cost up to 100,000
tiles, a 1,000-tile run locally and on a Ray cluster of two worker nodes, and node-hours from those figures.

Run from the repository root:  python bench/scale.py [--out bench/results] [--work W] [--quick]
`--quick` (what CI runs): a 1,024 px mosaic, 512 px rasters, 1,000 simulated tiles, the cluster part left out: it
checks the bench works, not figures of record.

Part 1, throughput. Rasters: real NAIP (the North Dakota years laid side by side at 1 m, bench/predict.py's
mosaic, its 2048 x 2048 corner: 4.2 km²) and Zion (Landsat 8, 4 bands at 30 m, 1,450 km²). Each way to map runs
as one `landcover predict` (or `crf`) in a fresh process on the whole machine; its own seconds (the summary's, so
start-up is not counted) give km²/h, and per core that divided by the machine's cores. Bundles are timing bundles,
whose weights do not change the cost: tile maps, Lite0 with ImageNet weights and an untrained head (224 px chips
at 1 m; 16 px chips read at 32 px at 30 m, as the demo's classifier), torch and onnxruntime; the U-Net (Lite0
encoder, untrained decoder); the pixel model (the default features at the imagery's resolution, the training
split's forest fitted on labels of random 64 px blocks: no feature explains them, so every tree grows to its depth
cap, as the real Zion model's do: mapping costs the node visits a pixel); the dense CRF at the defaults for the
resolution, on the pixel model's probabilities.

Part 2, the driver of a tiled run (`predict --tiles`): the index, the STAC catalog and the summary written for 1,000,
10,000 and 100,000 simulated 256 px tile records (each in a fresh process: seconds and peak memory), and the check
a rerun makes of each tile already there (its COG's checksum), timed on real tiles.

Part 3, a 1,000-tile run: the pixel model over an 8192 x 8192 NAIP mosaic in 256 px tiles (1,024 tiles, 67 km² at
1 m, each read with its 50 px halo), on a process pool of 2 workers, then on a Ray cluster started here (a head that
runs nothing and two 1-CPU worker nodes, `ray start` on 127.0.0.1 with a token): both with one thread a worker. The
driver's share is its own seconds (plan, resume checks, index, catalog) over the run's; the cluster's throughput
against the local one is tiles/s over the same tiles on the same two cores.

Part 4, the cost table (printed, and in bench/README.md): node-hours on 16-core nodes and output bytes (the tiles'
COG bytes per pixel, measured) for Middlesex County MA, one state and CONUS, at 1 m and 30 m.
Writes <out>/scale.json and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fresh_process, load, machine, say, zion, zion_images
from predict import build_mosaic, cut
from predict import timing_bundle as tile_bundle
from segmentation import timing_bundle as unet_bundle

AREAS_KM2 = {"Middlesex County, MA": 2_200, "Georgia (one state)": 153_910, "CONUS": 8_100_000}
NODE_CORES = 16
TILE_PX = 256
SIMULATED = (1_000, 10_000, 100_000)
DRIVER_CHILD = """
import json, sys, time
sys.path.insert(0, "bench")
from scale import simulated_driver
t = time.perf_counter()
result = simulated_driver(int(sys.argv[1]), sys.argv[2], sys.argv[3])
peak = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0] / 1024
print("BENCH " + json.dumps({"rc": 0, "seconds": time.perf_counter() - t, "peak_rss_mb": peak, **result}))
"""
"""The simulated driver in a fresh process (its own peak memory)."""


def pixel_bundle(out: Path, images: list[str]) -> Path:
    """A pixel-model timing bundle for `images` (see the module's docstring)."""
    from landcover.bundle import Bundle, InputSpec, save_bundle
    from landcover.geo.raster import Scene
    from landcover.models.heads import fit_head
    from landcover.predict.evidence import scene_features
    from landcover.schemes import load_scheme
    from landcover.train.pixels import HEAD_PARAMS
    from landcover.train.run import chip_source

    if (out / "model.json").exists():
        return out
    stack = Scene.open(images)
    spec, res = scene_features(stack), stack.res[0]
    side = min(1024, stack.height, stack.width)
    pixels, valid = stack.read(Window((stack.width - side) // 2, (stack.height - side) // 2, side, side))
    features = spec.compute(pixels, valid, res)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 8, (side // 64 + 1, side // 64 + 1))
    labels = np.repeat(np.repeat(blocks, 64, axis=0), 64, axis=1)[:side, :side]
    rows, cols = np.nonzero(valid)
    pick = rng.choice(len(rows), min(40_000, len(rows)), replace=False)
    head = fit_head("rf", features[:, rows[pick], cols[pick]].T, labels[rows[pick], cols[pick]], 8,
                    **HEAD_PARAMS["rf"])
    classes = [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(load_scheme("nlcd-grouped").classes)]
    n, dtype = stack.count, str(np.dtype(stack.dtype))
    chip = {"size_px": TILE_PX, "res": float(res), "crs": stack.crs.to_string(), "dtype": dtype, "rgb_bands": [0, 1, 2],
            **chip_source({"format": "tif", "scenes": [{"paths": list(images), "dtype": dtype,
                                                        "bands": [list(b) for b in stack.band_sources]}]})}
    save_bundle(Bundle("pixels", "filters", classes, InputSpec(tuple(range(n)), (0.0,) * n, (1.0,) * n, (0.0,) * n,
                                                               (1.0,) * n, TILE_PX, resize=False), chip,
                       {"note": "timing bundle: labels of random 64 px blocks"}, head=head, task="pixels",
                       pixels=spec), out)
    return out


def timed(command: str, source: str, images: list[str], out: Path, *extra: str) -> dict:
    """One `landcover predict` or `crf` of `source` in a fresh process: its seconds, km² mapped, km²/h per core."""
    for p in out.parent.glob(f"{out.stem}*"):
        p.unlink()
    run = fresh_process([command, source, "--quiet", "--image", *images, "--out", str(out), *extra])
    summary = out.with_suffix(".json")
    seconds = json.loads(summary.read_text()).get("seconds", run["seconds"]) if summary.exists() else run["seconds"]
    with rasterio.open(out) as src:
        km2 = float((src.read(1) != 255).sum()) * abs(src.res[0] * src.res[1]) / 1e6
    return {"seconds": round(seconds, 2), "process_seconds": round(run["seconds"], 2),
            "peak_rss_mb": round(run["peak_rss_mb"]), "km2": round(km2, 2),
            "km2_per_hour_per_core": round(km2 / seconds * 3600 / os.cpu_count(), 1)}


def throughput(work: Path, name: str, images: list[str], res: float) -> dict:
    """Every way to map one raster, side by side."""
    from landcover.onnx_graph import export_onnx

    chip, size = (224, 224) if res < 10 else (16, 32)
    tiles = tile_bundle(work / f"tile-{name}", res, chip, size)
    rows = {"tile map, torch": timed("predict", str(tiles), images, work / f"{name}-tile.tif", "--runtime", "torch")}
    export_onnx(tiles)
    rows["tile map, onnxruntime"] = timed("predict", str(tiles), images, work / f"{name}-tile-onnx.tif",
                                          "--runtime", "onnx")
    rows["U-Net"] = timed("predict", str(unet_bundle(work / f"unet-{name}", res)), images,
                          work / f"{name}-unet.tif", "--runtime", "torch")
    pixels = pixel_bundle(work / f"pixels-{name}", images)
    rows["pixel model"] = timed("predict", str(pixels), images, work / f"{name}-pixels.tif", "--probabilities")
    rows["dense CRF"] = timed("crf", str(work / f"{name}-pixels.probs.tif"), images, work / f"{name}-crf.tif")
    for method, row in rows.items():
        say(f"{name} ({res:g} m), {method}: {row['km2_per_hour_per_core']:,} km²/h a core ({row['seconds']} s)")
    return rows


def simulated_driver(n: int, folder: str, first_tile: str) -> dict:
    """What the driver writes for n tile records of 256 px (a square grid): seconds of the index and the catalog."""
    import time

    from rasterio.crs import CRS

    from landcover.predict.mosaic import write_catalog, write_index
    from landcover.predict.request import MapRequest
    from landcover.predict.tiled import TileJob

    out = Path(folder)
    shutil.rmtree(out, ignore_errors=True)
    (out / "tiles").mkdir(parents=True)
    side = int(np.ceil(np.sqrt(n)))
    records = [{"index": i, "name": f"r{i // side * TILE_PX:07d}_c{i % side * TILE_PX:07d}", "row": i // side * TILE_PX,
                "col": i % side * TILE_PX, "height": TILE_PX, "width": TILE_PX, "sha256": f"{i:064x}",
                "node": f"node-{i % 2}", "counts": {f"class {k}": TILE_PX * TILE_PX // 8 for k in range(8)},
                "nodata": 0} for i in range(n)]
    shutil.copy(first_tile, out / "tiles" / f"{records[0]['name']}.tif")
    crs = CRS.from_epsg(26914)
    extent = side * TILE_PX
    job = TileJob("bundle", ("naip.tif",), crs.to_wkt(), (1.0, 0.0, 500000.0, 0.0, -1.0, 5200000.0), extent, extent,
                  50, str(out), tuple((k, f"class {k}") for k in range(8)), (extent, extent), MapRequest())
    started = time.perf_counter()
    write_index(out / "index.vrt", records, job)
    indexed = time.perf_counter()
    write_catalog(out, records, job, 1.0)
    catalogued = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    return {"tiles": n, "index_s": round(indexed - started, 2), "catalog_s": round(catalogued - indexed, 2)}


def driver(work: Path, tiles_dir: Path, sizes: tuple[int, ...]) -> dict:
    """Part 2: the simulated driver at each size, and the resume check per real tile."""
    import time

    from landcover.predict.tiled import TileTask, finished

    first = sorted((tiles_dir / "tiles").glob("*.tif"))[0]
    rows = []
    for n in sizes:
        row = fresh_process([str(n), str(work / "simulated"), str(first)], DRIVER_CHILD)
        row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items() if k != "rc"}
        row["seconds_per_1000"] = round(row["seconds"] / n * 1000, 3)
        rows.append(row)
        say(f"driver, {n:,} simulated tiles: {row['seconds']} s ({row['seconds_per_1000']} s per 1,000), peak "
            f"{row['peak_rss_mb']} MB")
    records = [json.loads(p.read_text()) for p in sorted((tiles_dir / "tiles").glob("*.json"))]
    started = time.perf_counter()
    kept = sum(finished(tiles_dir, TileTask(r["index"], r["row"], r["col"], r["height"], r["width"])) is not None
               for r in records)
    check = (time.perf_counter() - started) / max(1, len(records))
    assert kept == len(records), "the tiles of the 1,000-tile run should all be kept"
    return {"simulated": rows, "resume_check_ms_per_tile": round(check * 1000, 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_cluster(env: dict):
    """A head that runs nothing and two 1-CPU worker nodes on 127.0.0.1 (`ray start`, a fresh token): the address."""
    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()

    def start(*args: str) -> None:
        done = subprocess.run([ray, "start", "--disable-usage-stats", "--object-store-memory", str(150 * 2 ** 20),
                               *args], capture_output=True, text=True, env=env, timeout=120)
        if done.returncode:
            sys.exit(f"ray start failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    try:
        start("--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false")
        for node in ("a", "b"):
            start("--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", json.dumps({node: 1}))
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120, env=env)


def tiled_runs(work: Path, mosaic: Path, bundle: Path, cluster: bool) -> dict:
    """Part 3: the same tiles on a local pool of 2 workers and on the cluster's two worker nodes."""
    one_thread = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    saved = dict(os.environ)
    runs = {}
    try:
        os.environ.update(one_thread)
        engines = {"local, process pool x2": ["--workers", "2"]}
        if cluster:
            os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})
            os.environ.pop("RAY_ADDRESS", None)
        with ray_cluster(dict(os.environ)) if cluster else contextlib.nullcontext() as address:
            if cluster:
                engines["Ray cluster, 2 worker nodes"] = ["--engine", "ray", "--ray-address", address]
            for name, extra in engines.items():
                out = work / f"tiles-{len(runs)}"
                shutil.rmtree(out, ignore_errors=True)
                run = fresh_process(["predict", str(bundle), "--quiet", "--image", str(mosaic), "--tiles",
                                     f"{TILE_PX}px", "--out", str(out), *extra])
                summary = json.loads((out / "tiles.json").read_text())
                cogs = sorted((out / "tiles").glob("*.tif"))
                runs[name] = {"tiles": summary["tiles"], "seconds": summary["seconds"],
                              "tasks_seconds": summary["tasks_seconds"], "driver_seconds": summary["driver_seconds"],
                              "driver_share": round(summary["driver_seconds"] / summary["seconds"], 4),
                              "tiles_per_second": round(summary["tiles"] / summary["tasks_seconds"], 2),
                              "process_seconds": round(run["seconds"], 1), "peak_rss_mb": round(run["peak_rss_mb"]),
                              "nodes": summary["nodes"], "cog_bytes_per_pixel": round(
                                  sum(p.stat().st_size for p in cogs) / (summary["grid"][0] * summary["grid"][1]), 4),
                              "folder": str(out)}
                say(f"{name}: {summary['tiles']} tiles in {summary['seconds']} s, driver {summary['driver_seconds']} s"
                    f" ({runs[name]['driver_share']:.1%}), {runs[name]['tiles_per_second']} tiles/s")
        # The same map as one COG from one process (one thread, as each tile's worker): the tiles' mosaic must be
        # it, byte for byte, and its time is the tiles' core-seconds without their halos.
        single = work / "single-map.tif"
        run = fresh_process(["predict", str(bundle), "--quiet", "--image", str(mosaic), "--out", str(single),
                             "--overwrite"])
        with rasterio.open(single) as src:
            whole = src.read(1)
        for record in runs.values():
            with rasterio.open(Path(record["folder"]) / "index.vrt") as src:
                record["equals_single_map"] = bool(np.array_equal(src.read(1), whole))
        runs["single_map_seconds"] = round(run["seconds"], 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if cluster:
        local, remote = (row for row in runs.values() if isinstance(row, dict))
        runs["cluster_over_local"] = round(remote["tiles_per_second"] / local["tiles_per_second"], 3)
    return runs


def cost_table(rates: dict, bytes_per_pixel: dict) -> list[dict]:
    """Node-hours on NODE_CORES-core nodes and output bytes for each area, resolution and way to map."""
    rows = []
    for res, methods in rates.items():
        for method, rate in methods.items():
            for area, km2 in AREAS_KM2.items():
                node_hours = km2 / (rate * NODE_CORES)
                rows.append({"res_m": res, "method": method, "area": area, "km2": km2,
                             "node_hours": round(node_hours, 3), "nodes_for_a_day": int(np.ceil(node_hours / 24)),
                             "output_gb": round(km2 * 1e6 / res ** 2 * bytes_per_pixel[res] / 1e9, 4)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--work", help="folder for the rasters, bundles and maps (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="small rasters, 1,000 simulated tiles, no cluster")
    args = parser.parse_args(argv)
    mosaic_px, cut_px, sizes = (1024, 512, SIMULATED[:1]) if args.quick else (8192, 2048, SIMULATED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results: dict = {"quick": args.quick, "load_before": load(), "machine": machine("onnxruntime", "ray"),
                         "cores": os.cpu_count(), "node_cores": NODE_CORES}
        mosaic = build_mosaic(work / f"naip_{mosaic_px}.tif", mosaic_px)
        naip = [str(cut(mosaic, work / f"naip_{cut_px}.tif", cut_px))]
        zion_bands = zion_images(zion())
        if args.quick:  # a corner of Zion
            zion_bands = [str(cut(Path(p), work / f"zion_{Path(p).name}", 256)) for p in zion_bands]
        results["throughput"] = {"1": throughput(work, "naip", naip, 1.0),
                                 "30": throughput(work, "zion", zion_bands, 30.0)}
        pixels = pixel_bundle(work / "pixels-naip", naip)
        results["tiled"] = tiled_runs(work, mosaic, pixels, cluster=not args.quick)
        local = next(iter(results["tiled"].values()))
        results["driver"] = driver(work, Path(local["folder"]), sizes)
        with rasterio.open(work / "zion-pixels.tif") as src:  # a 30 m COG's bytes a pixel
            zion_bpp = (work / "zion-pixels.tif").stat().st_size / (src.width * src.height)
        rates = {res: {m: row["km2_per_hour_per_core"] for m, row in rows.items()}
                 for res, rows in results["throughput"].items()}
        results["costs"] = cost_table({1: rates["1"], 30: rates["30"]},
                                      {1: local["cog_bytes_per_pixel"], 30: round(zion_bpp, 4)})
        (out / "scale.json").write_text(json.dumps(results, indent=2))
        print(report(results))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def gigabytes(gb: float) -> str:
    return f"{gb / 1000:,.1f} TB" if gb >= 1000 else f"{gb:,.1f} GB" if gb >= 1 else f"{gb * 1000:,.1f} MB"


def report(r: dict) -> str:
    """The markdown tables for bench/README.md."""
    lines = ["| way to map | km²/h a core, 1 m | km²/h a core, 30 m |", "|---|---:|---:|"]
    for method, row in r["throughput"]["1"].items():
        lines.append(f"| {method} | {row['km2_per_hour_per_core']:,} | "
                     f"{r['throughput']['30'][method]['km2_per_hour_per_core']:,} |")
    lines += ["", "| tiled run | tiles | seconds | driver | tiles/s | mosaic = one-process map |",
              "|---|---:|---:|---:|---:|---|"]
    for name, row in r["tiled"].items():
        if isinstance(row, dict):
            lines.append(f"| {name} | {row['tiles']:,} | {row['seconds']} | {row['driver_seconds']} s "
                         f"({row['driver_share']:.1%}) | {row['tiles_per_second']} | "
                         f"{'yes' if row['equals_single_map'] else 'NO'} |")
    lines.append(f"| one COG, one process at one thread | | {r['tiled']['single_map_seconds']} | | | |")
    lines += ["", "| simulated tiles | driver seconds | per 1,000 | peak MB |", "|---:|---:|---:|---:|"]
    for row in r["driver"]["simulated"]:
        lines.append(f"| {row['tiles']:,} | {row['seconds']} | {row['seconds_per_1000']} | {row['peak_rss_mb']} |")
    areas = list(AREAS_KM2)
    lines += ["", f"| res | way to map | {' | '.join(f'node-hours, {a}' for a in areas)} | nodes for CONUS in a day |",
              "|---:|---|" + "---:|" * (len(areas) + 1)]
    for (res, method), rows in itertools.groupby(r["costs"], key=lambda row: (row["res_m"], row["method"])):
        rows = {row["area"]: row for row in rows}
        hours = " | ".join(f"{rows[a]['node_hours']:,.2f}" if rows[a]["node_hours"] < 10 else
                           f"{rows[a]['node_hours']:,.0f}" for a in areas)
        lines.append(f"| {res} m | {method} | {hours} | {rows['CONUS']['nodes_for_a_day']:,} |")
    lines += ["", f"| res | {' | '.join(f'output, {a}' for a in areas)} |", "|---:|" + "---:|" * len(areas)]
    for res in (1, 30):
        rows = {row["area"]: row for row in r["costs"] if row["res_m"] == res}
        lines.append(f"| {res} m | {' | '.join(gigabytes(rows[a]['output_gb']) for a in areas)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
