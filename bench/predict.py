"""Whole-raster prediction: throughput against model-only inference, memory against raster size, km²/h, engines.

Run from the repository root:  python bench/predict.py [--out bench/results] [--size 16384] [--quick]
`--quick` (under a minute; what CI runs): 512 and 1024 px rasters, the local engine only: it checks the bench
works; its figures are not ones of record.

Imagery: real NAIP. The ten North Dakota NAIP years in ../shared/data/naip_nd (4 bands, RGBN, uint8) are laid side
by side into one mosaic declared at 1 m (the resolution NAIP is flown at), 16384 x 16384 pixels (268 km²), and its
2048 x 2048 corner is cut out as the small raster. Model: EfficientNet-Lite0 with its real ImageNet weights, adapted
to 4 bands, 224 px input, 224 px chips at 1 m (224 m tiles) and an untrained 8-class head: a timing bundle (its
weights do not change the cost; no NAIP labels ship with the data).

Measured, each prediction in a fresh process (peak RSS of that process):
  1. model-only: bundle.predict_proba on an in-memory batch of 64 windows (best of 3) -> tiles/s;
  2. predict on the 16k raster and on the 2k raster (local engine): tiles/s, peak RSS; ratio to (1), RSS ratio;
  3. km²/h at 1 m, 4 bands, 224 m tiles;
  4. engines on a 4096 x 4096 cut (324 windows): local, process pool 2, Ray 1 and 2 workers (a local cluster
     started by the run, so its start-up is part of the overhead; peak RSS is the driver's only), all on torch;
  5. onnxruntime vs torch, model-only, on the engine cut and on the large raster; and the default runtime
     ('auto') once the bundle holds its model.onnx, which must pick onnxruntime.
Writes <out>/predict.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, fresh_process, model_only

TILE_PX = 224
BATCH = 64
def build_mosaic(out: Path, size: int) -> Path:
    """A size x size, 4-band uint8 NAIP mosaic at 1 m (tiled, deflate), from the North Dakota years."""
    if out.exists():
        return out
    years = sorted((DATA / "naip_nd").glob("*.tif"))
    if not years:
        sys.exit(f"real data not found: {DATA / 'naip_nd'} (see ../shared/data/README.md)")
    tiles = []
    for path in years:
        with rasterio.open(path) as src:
            tiles.append(src.read())
            crs, left, top = src.crs, src.transform.c, src.transform.f
    h, w = min(t.shape[1] for t in tiles), min(t.shape[2] for t in tiles)
    tiles = [t[:, :h, :w] for t in tiles]  # the years differ by a pixel or two
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint8", "crs": crs,
               "transform": rasterio.Affine(1, 0, left, 0, -1, top), "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "deflate"}
    tmp = out.with_name(f".{out.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:  # strips of whole 512 px blocks: no block is written twice
        for top in range(0, size, 512):
            rows = min(512, size - top)
            strip = np.empty((4, rows, size), np.uint8)
            for row0 in range(top // h * h, top + rows, h):
                for col0 in range(0, size, w):
                    tile = tiles[(row0 // h * 7 + col0 // w) % len(tiles)]
                    r0, r1 = max(row0, top), min(row0 + h, top + rows, size)
                    c1 = min(col0 + w, size)
                    strip[:, r0 - top:r1 - top, col0:c1] = tile[:, r0 - row0:r1 - row0, :c1 - col0]
            dst.write(strip, window=Window(0, top, size, rows))
    tmp.rename(out)
    return out


def cut(src_path: Path, out: Path, size: int) -> Path:
    """The upper-left size x size corner of a raster, as its own file."""
    if out.exists():
        return out
    with rasterio.open(src_path) as src:
        profile = {**src.profile, "width": size, "height": size}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=Window(0, 0, size, size)))
    return out


def timing_bundle(out: Path, res: float = 1.0, chip_px: int = TILE_PX, input_px: int = TILE_PX) -> Path:
    """Lite0 (ImageNet weights, 4 bands), chips of `chip_px` at `res` m (default 224 px at 1 m) read at `input_px`,
    an untrained 8-class head, saved as a bundle."""
    from landcover.bundle import Bundle, InputSpec, save_bundle
    from landcover.models.backbones import build_model
    from landcover.schemes import load_scheme

    if (out / "model.json").exists():
        return out
    scheme = load_scheme("nlcd-grouped")
    classes = [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(scheme.classes)]
    model, pre = build_model("efficientnet-lite0", len(classes), 4, "imagenet", (0, 1, 2))
    spec = InputSpec((0, 1, 2, 3), (0.0,) * 4, (255.0,) * 4, tuple(pre.mean), tuple(pre.std), input_px,
                     pre.interpolation)
    chip = {"size_px": chip_px, "res": res, "crs": "EPSG:26914", "dtype": "uint8", "rgb_bands": [0, 1, 2],
            "format": "tif", "source_files": ["naip.tif"], "source_bands": [[0, b] for b in (1, 2, 3, 4)]}
    save_bundle(Bundle("finetune", "efficientnet-lite0", classes, spec, chip,
                       {"note": "timing bundle: untrained head"}, model=model.eval()), out)
    return out


def predict(bundle: Path, image: Path, out: Path, *extra: str) -> dict:
    """One `landcover predict` in a fresh process: its summary plus wall time and peak RSS."""
    for p in out.parent.glob(f"{out.stem}*"):
        p.unlink()
    run = fresh_process(["predict", str(bundle), "--quiet", "--image", str(image), "--out", str(out), "--batch-size",
                         str(BATCH), *extra])
    summary = json.loads(out.with_suffix(".json").read_text())
    return {**run, "windows": summary["windows"], "tiles_per_second": summary["tiles_per_second"],
            "seconds_in_predict": summary["seconds"], "runtime": summary["runtime"]}


def main(argv: list[str] | None = None) -> int:
    """Build the rasters and the bundle, time every prediction, write predict.json and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--size", type=int, default=16384, help="side of the large raster in pixels")
    parser.add_argument("--quick", action="store_true",
                        help="512 and 1024 px rasters, local engine (checks the bench works; not figures of record)")
    parser.add_argument("--work", help="folder for the mosaic and maps (default: a temporary folder)")
    args = parser.parse_args(argv)
    size, small_px, mid_px = (1024, 512, 1024) if args.quick else (args.size, 2048, 4096)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building the NAIP mosaic ({size} px) in {work} ...", flush=True)
    big = build_mosaic(work / f"naip_{size}.tif", size)
    small, mid = cut(big, work / f"naip_{small_px}.tif", small_px), cut(big, work / f"naip_{mid_px}.tif", mid_px)
    bundle = timing_bundle(work / "bundle")
    results: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                 "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
                     "quick": args.quick, "size": size, "small_px": small_px, "mid_px": mid_px, "batch": BATCH,
                     "tile_px": TILE_PX}
    results["model_only_tiles_per_second"] = model_only(bundle, (BATCH, 4, TILE_PX, TILE_PX))
    print(f"model only: {results['model_only_tiles_per_second']:.1f} tiles/s", flush=True)
    for name, image in (("small", small), ("large", big)):
        results[name] = predict(bundle, image, work / f"map_{name}.tif", "--runtime", "torch")
        print(f"{name}: {results[name]}", flush=True)
    results["throughput_ratio"] = results["large"]["tiles_per_second"] / results["model_only_tiles_per_second"]
    results["rss_ratio"] = results["large"]["peak_rss_mb"] / results["small"]["peak_rss_mb"]
    results["km2_per_hour"] = results["large"]["tiles_per_second"] * (TILE_PX / 1000) ** 2 * 3600
    engines = {"local": (), "process x2": ("--engine", "process", "--workers", "2"),
               "ray x1": ("--engine", "ray", "--workers", "1"), "ray x2": ("--engine", "ray", "--workers", "2")}
    results["engines"] = {}
    if args.quick:  # the engine raster is the large one: its local run is already measured
        engines, results["engines"]["local"] = {}, results["large"]
    for name, extra in engines.items():
        results["engines"][name] = predict(bundle, mid, work / "map_engine.tif", "--runtime", "torch", *extra)
        print(f"{name}: {results['engines'][name]}", flush=True)
    from landcover.onnx_graph import export_onnx

    export_onnx(bundle)
    results["onnx_model_only_tiles_per_second"] = model_only(bundle, (BATCH, 4, TILE_PX, TILE_PX), "onnx")
    results["engines"]["local, onnxruntime"] = predict(bundle, mid, work / "map_engine.tif", "--runtime", "onnx")
    results["large_onnx"] = (results["engines"]["local, onnxruntime"] if args.quick else  # the same raster
                             predict(bundle, big, work / "map_large_onnx.tif", "--runtime", "onnx"))
    print(f"large, onnxruntime: {results['large_onnx']}", flush=True)
    results["engines"]["local, default runtime"] = predict(bundle, mid, work / "map_engine.tif")
    if results["engines"]["local, default runtime"]["runtime"] != "onnx":
        sys.exit("the default runtime did not pick the bundle's fresh model.onnx")
    (out / "predict.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


def report(r: dict) -> str:
    """The markdown tables for bench/README.md."""
    lines = ["| raster | windows | tiles/s | vs model-only | peak RSS |", "|---|---:|---:|---:|---:|",
             f"| model only (in-memory batch of {r['batch']}) | | {r['model_only_tiles_per_second']:.1f} | 100% | |"]
    for name, side in (("small", r["small_px"]), ("large", r["size"]), ("large_onnx", r["size"])):
        x = r[name]
        runtime = ", onnxruntime" if name.endswith("onnx") else ""
        lines.append(f"| {side} x {side} NAIP{runtime} | {x['windows']} | {x['tiles_per_second']:.1f} | "
                     f"{100 * x['tiles_per_second'] / r['model_only_tiles_per_second']:.0f}% | "
                     f"{x['peak_rss_mb']:.0f} MB |")
    lines += ["", f"throughput ratio {100 * r['throughput_ratio']:.1f}%, peak RSS ratio {r['rss_ratio']:.2f}, "
                  f"{r['km2_per_hour']:.1f} km²/h (1 m, 4 bands, 224 m tiles)", "",
              f"| engine ({r['mid_px']} x {r['mid_px']}, {r['engines']['local']['windows']} windows) | wall s | "
              "tiles/s in predict |", "|---|---:|---:|"]
    for name, x in r["engines"].items():
        lines.append(f"| {name} | {x['seconds']:.1f} | {x['tiles_per_second']:.1f} |")
    lines.append(f"\nonnxruntime model only: {r['onnx_model_only_tiles_per_second']:.1f} tiles/s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
