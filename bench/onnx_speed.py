"""Inference speed on CPU: a bundle's torch network against its ONNX export on onnxruntime.

Run from the repository root:  python bench/onnx_speed.py [--out bench/results] [--input-size 224] [--batch-size 32]
Reads ../shared/data/zion (or $LANDCOVER_DATA/zion); builds Zion chips (4-band uint16 GeoTIFF, 32 px) with the
`landcover` command in a temporary folder, trains two EfficientNet-Lite0 bundles on them at the given input size
(fine-tune: one epoch of the head; features: frozen ImageNet backbone + logistic regression), exports each to
ONNX, and times `Runtime.predict_proba` (InputSpec.prepare, then the network, then the head where there is one)
on batches of real chips: torch and onnxruntime, 1 and 2 threads, best of 3. Prints a markdown table and writes
<out>/onnx.json. `--quick` (seconds; what CI runs): chips inside the park only, 64 px input, 2 batches of 16, one
repeat, 2 threads: it checks the bench works; its figures are not ones of record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from common import ROOT, landcover_cli, load, machine, say, workspace
from common import zion as zion_folder

from landcover.compat import guard_torchvision

guard_torchvision()  # before anything imports torchvision or timm

from landcover.onnx_graph import export_onnx  # noqa: E402
from landcover.predict.runtime import load_runtime  # noqa: E402
from landcover.train.data import ChipDataset  # noqa: E402

BANDS = ("b2", "b3", "b4", "b5")
ARCH = "efficientnet-lite0"
TILE = "960m"
RULE = "purity:0.6"
BUNDLES = {
    "finetune": ["--epochs", "1", "--train-from", "head"],
    "features": ["--mode", "features", "--head", "logreg"],
}


def make_bundles(zion: Path, work: Path, input_size: int, quick: bool = False) -> tuple[Path, dict[str, Path]]:
    """Chips, a block split and the two bundles, all with the landcover command (quick: inside the park only)."""
    chips, runs = work / "chips", work / "runs"
    landcover_cli(["chips", "--quiet", "--image", *[str(zion / f"landsat_{b}.tif") for b in BANDS],
                   "--labels", str(zion / "nlcd2011.tif"), "--scheme", "nlcd-grouped", "--tile-size", TILE,
                   "--rule", RULE, "--format", "tif", "--out", str(chips),
                   *(["--aoi", str(zion / "zion.gpkg")] if quick else [])])
    landcover_cli(["split", str(chips), "--blocks", "3", "--ratios", "70:15:15", "--no-plot"])
    bundles = {}
    for name, extra in BUNDLES.items():
        say(f"  training the {name} bundle at {input_size} px ...")
        landcover_cli(["train", "--quiet", "--manifest", str(chips), "--runs", str(runs), "--name", name,
                       "--arch", ARCH, "--input-size", str(input_size), "--batch-size", "32",
                       "--rgb-bands", "3", "2", "1", "--no-onnx", *extra])  # the export is timed below
        bundles[name] = runs / name / "bundle"
    return chips, bundles


def real_batches(chips: Path, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    """The first chips of the test split as raw float batches (what a runtime is given)."""
    dataset = ChipDataset(chips, "test")
    n = min(len(dataset), batch_size * n_batches)
    raw = torch.stack([dataset[i][0] for i in range(n)])
    return [raw[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def time_runtime(bundle_path: Path, runtime: str, threads: int, batches: list[torch.Tensor],
                 repeats: int) -> dict:
    """Best-of-`repeats` chips/s of `Runtime.predict_proba` over the batches, after one warm-up batch."""
    from landcover.bundle import load_bundle

    torch.set_num_threads(threads)
    rt = load_runtime(load_bundle(bundle_path), runtime, threads=threads)
    rt.predict_proba(batches[0])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            rt.predict_proba(batch)
        times.append(time.perf_counter() - start)
    chips = sum(len(b) for b in batches)
    best = min(times)
    return {"chips": chips, "seconds": times, "best_s": best, "chips_per_s": chips / best,
            "ms_per_batch": 1000 * best / len(batches), "load": load()}


def table(results: dict) -> str:
    """The figures as a markdown table, with onnxruntime's speed-up over torch at the same thread count."""
    lines = ["| bundle | runtime | threads | chips/s | ms / batch | onnx / torch |", "|---|---|---:|---:|---:|---:|"]
    rows = results["timings"]
    for r in rows:
        torch_row = next(t for t in rows if t["bundle"] == r["bundle"] and t["threads"] == r["threads"]
                         and t["runtime"] == "torch")
        ratio = f"{r['chips_per_s'] / torch_row['chips_per_s']:.2f}x" if r["runtime"] == "onnx" else ""
        lines.append(f"| {r['bundle']} | {r['runtime']} | {r['threads']} | {r['chips_per_s']:.1f} | "
                     f"{r['ms_per_batch']:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build chips and bundles, export them, time both runtimes, print the table, write onnx.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--input-size", type=int, default=224, help="model input size in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="chips per batch (default 32)")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per repeat (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the best is kept (default 3)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--keep-work", action="store_true", help="keep the chips and bundles")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: a small subset at 64 px (checks the bench works; not figures of record)")
    args = parser.parse_args(argv)
    if args.quick:
        args.input_size, args.batch_size, args.batches, args.repeats, args.threads = 64, 16, 2, 1, [2]
    zion = zion_folder()
    began = time.perf_counter()
    results: dict[str, Any] = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                               "machine": machine("torch", "timm", "onnx", "onnxruntime", "numpy"),
                               "settings": {**vars(args), "out": str(args.out), "arch": ARCH}, "load_before": load(),
                               "exports": {}, "timings": []}
    with workspace(args.out, args.keep_work, "onnx-work-") as work:
        say("chips, split and bundles with the landcover command ...")
        chips, bundles = make_bundles(zion, work, args.input_size, args.quick)
        batches = real_batches(chips, args.batch_size, args.batches)
        for name, path in bundles.items():
            start = time.perf_counter()
            export_onnx(path)
            record = json.loads((path / "onnx.json").read_text())
            results["exports"][name] = {"seconds": time.perf_counter() - start,
                                        "max_abs_diff": record["max_abs_diff"], "exporter": record["exporter"],
                                        "onnx_mb": (path / "model.onnx").stat().st_size / 2**20}
            for threads in args.threads:
                for runtime in ("torch", "onnx"):
                    say(f"timing {name} on {runtime}, {threads} thread(s) ...")
                    row = time_runtime(path, runtime, threads, batches, args.repeats)
                    results["timings"].append({"bundle": name, "runtime": runtime, "threads": threads, **row})
    results["load_after"] = load()
    results["total_s"] = time.perf_counter() - began
    print(f"{ARCH} at {args.input_size} px, batches of {args.batch_size} real Zion chips (4 bands, 32 px, resized "
          f"by InputSpec), {args.batches} batches, best of {args.repeats}; {results['machine']['cores']} cores; "
          f"load {results['load_before']} before, {results['load_after']} after")
    for name, e in results["exports"].items():
        print(f"export {name}: {e['seconds']:.1f} s ({e['exporter']}), {e['onnx_mb']:.1f} MB, max |prob diff| "
              f"{e['max_abs_diff']:.1e}")
    print()
    print(table(results))
    (args.out / "onnx.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
