"""Segmentation on Zion: landcover's U-Net against a per-pixel random forest, the tile map and TorchGeo's
SemanticSegmentationTask, scored per 30 m pixel on held-out blocks; prediction throughput and memory; training speed.

Run from the repository root:  python bench/segmentation.py [--out bench/results] [--epochs 60] [--size 16384]
`--quick` (about a minute; what CI runs): pairs inside the park, 1 epoch, a small forest, 512 and 1024 px
rasters: it checks the bench works; its figures are not ones of record.

Data: Landsat 8 bands 2-5 of Zion and NLCD 2011 (nlcd-grouped), cut into 64 px image/mask pairs over the whole scene
(`landcover chips --layout pairs`) and split by blocks of 3 x 3 pairs (5.8 km) 70:15:15. Every method is scored on
the labelled pixels of the test pairs (`segment.metrics.pixel_scores`: pixel accuracy, mIoU over the classes
present):
  1. landcover: `landcover train --task segmentation` (U-Net, EfficientNet-Lite0 encoder with ImageNet weights,
     ce+dice, AdamW, cosine schedule, flips and 90-degree turns), the best epoch by validation mIoU;
  2. a per-pixel random forest on the four band values and NDVI, fitted on every labelled pixel of the train
     pairs (50 trees, each on a quarter of them), the classical approach;
  2b. landcover's pixel model (`train --task pixels`: a forest on bands, indices and multi-scale filter
     responses), scored on each test pair's window read with the filters' reach; it and the U-Net then map the
     whole Zion scene (pixels per second, the same process);
  3. the tile map of the demo (#5): 480 m chips labelled by points:3, each in the split of the pair that holds
     it, frozen Lite0 features at 64 px + logistic regression, the scene predicted with a 240 m stride; each
     pixel takes its cell's class;
  4. TorchGeo 0.8's SemanticSegmentationTask (its cross-entropy) training the same network from the same
     start (the module is handed to the task), on the same batches of prepared pairs, optimizer and epochs;
     its best checkpoint by validation loss.
Then, as bench/predict.py does with tiles: a U-Net timing bundle (Lite0 ImageNet encoder, 4 bands, untrained
decoder, 1 m) predicts the 16k x 16k NAIP mosaic and its 2k corner in fresh processes: windows/s against the
network alone on the same 512 px windows, and peak RSS; and landcover's training images/s against a bare loop
(forward, loss, backward, AdamW step on prepared tensors in memory) on the same pairs and batch size.
Writes <out>/segmentation.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fresh_process, landcover_cli, model_only, zion
from predict import build_mosaic, cut  # the NAIP mosaic of bench/predict.py

from landcover.compat import guard_torchvision

guard_torchvision()  # before anything imports torchvision, timm or TorchGeo

from landcover.segment.data import PairDataset  # noqa: E402
from landcover.segment.metrics import add_to_confusion, pixel_scores  # noqa: E402

BATCH = 16
WINDOW = 512
COMMON_PIXELS = 1000
"""mIoU is also given over the classes with at least this many test pixels: on Zion's test blocks Water has 15,
and one method's luck on them moves the mean of eight IoUs by 0.03."""


def run_cli(*argv: str) -> float:
    """A landcover command in this process; its seconds (a failure stops the bench)."""
    return landcover_cli(list(argv))[0]


def make_pairs(work: Path, quick: bool) -> Path:
    """64 px pairs over the scene (inside the park with --quick), split by blocks of 3 x 3 pairs."""
    z = zion()
    pairs = work / "pairs"
    if not (pairs / "manifest.parquet").exists():
        run_cli("chips", "--quiet", "--image", *[str(z / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)], "--labels",
                str(z / "nlcd2011.tif"), "--scheme", "nlcd-grouped", "--tile-size", "64px", "--layout", "pairs",
                *(["--aoi", str(z / "zion.gpkg")] if quick else []), "--out", str(pairs))
        run_cli("split", str(pairs), "--blocks", "2" if quick else "3", "--ratios", "70:15:15", "--no-plot")
    return pairs


def scores_of(truth: list[np.ndarray], predicted: list[np.ndarray], names: list[str]) -> dict:
    """Pixel accuracy and mIoU over the labelled pixels (truth >= 0)."""
    confusion = np.zeros((len(names), len(names)), np.int64)
    for t, p in zip(truth, predicted, strict=True):
        add_to_confusion(confusion, t, p)
    s = pixel_scores(confusion, names)
    support = dict(zip(names, confusion.sum(axis=1).tolist(), strict=True))
    common = [n for n in names if support[n] >= COMMON_PIXELS]
    return {"pixel_accuracy": s["pixel_accuracy"], "miou": s["miou"], "iou": s["iou"], "support": support,
            "miou_common": float(np.mean([s["iou"][n] or 0.0 for n in common])), "pixels": int(confusion.sum())}


def test_pairs(pairs: Path) -> tuple[PairDataset, list[np.ndarray], list[str]]:
    test = PairDataset(pairs, "test")
    names = [c["name"] for c in test.info["scheme"]["classes"]]
    return test, [test.read(i)[1] for i in range(len(test))], names


def ours(pairs: Path, work: Path, epochs: int) -> dict:
    """`landcover train --task segmentation`, then its network on the test pairs."""
    from landcover.bundle import load_bundle

    run = work / "runs" / "unet"
    seconds = run_cli("train", "--quiet", "--task", "segmentation", "--manifest", str(pairs), "--runs",
                      str(work / "runs"), "--name", "unet", "--epochs", str(epochs), "--batch-size", str(BATCH),
                      "--rgb-bands", "3", "2", "1", "--seed", "0", "--no-onnx", "--overwrite")
    bundle = load_bundle(run / "bundle")
    test, truth, names = test_pairs(pairs)
    predicted = [bundle.predict_proba(torch.from_numpy(test.read(i)[0][None].astype(np.float32)))[0].argmax(0)
                 for i in range(len(test))]
    rates = [float(line.split(",")[7]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    return {"method": "landcover U-Net (Lite0 ImageNet encoder, ce+dice)", "train_s": seconds,
            "images_per_s": statistics.median(rates[1:] or rates), **scores_of(truth, predicted, names)}


def pixel_features(image: np.ndarray) -> np.ndarray:
    """(pixels, 5): the four bands and NDVI ((NIR - red) / (NIR + red), bands 4 and 3)."""
    bands = image.reshape(image.shape[0], -1).astype(np.float64)
    ndvi = (bands[3] - bands[2]) / np.maximum(bands[3] + bands[2], 1e-9)
    return np.vstack([bands, ndvi]).T


def random_forest(pairs: Path, quick: bool) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    train = PairDataset(pairs, "train")
    xs, ys = [], []
    for i in range(len(train)):
        image, mask = train.read(i)
        known = mask.ravel() >= 0
        xs.append(pixel_features(image)[known])
        ys.append(mask.ravel()[known])
    x, y = np.concatenate(xs), np.concatenate(ys)
    forest = RandomForestClassifier(n_estimators=10 if quick else 50, max_samples=0.25, min_samples_leaf=2,
                                    n_jobs=-1, random_state=0)
    start = time.perf_counter()
    forest.fit(x, y)
    seconds = time.perf_counter() - start
    test, truth, names = test_pairs(pairs)
    predicted = [forest.predict(pixel_features(test.read(i)[0])).reshape(truth[i].shape) for i in range(len(test))]
    return {"method": "random forest per pixel (4 bands + NDVI)", "train_pixels": len(y), "train_s": seconds,
            **scores_of(truth, predicted, names)}


def pixel_model(pairs: Path, work: Path) -> dict:
    """`landcover train --task pixels` (the forest on per-pixel filter features), scored per pixel on the test pairs
    (each pair's window read with the filters' reach, as `landcover evaluate` does); then the Zion scene mapped by it
    and by the U-Net run above, one after the other in this process, pixels per second."""
    from landcover.segment.evaluate import evaluate_segmentation

    seconds = run_cli("train", "--quiet", "--task", "pixels", "--manifest", str(pairs), "--runs", str(work / "runs"),
                      "--name", "pixels", "--overwrite")
    scores, _ = evaluate_segmentation(work / "runs" / "pixels" / "bundle", pairs, "test", work / "eval-pixels",
                                      progress=False)
    confusion = np.array(scores["confusion"])
    support = dict(zip(scores["iou"], confusion.sum(axis=1).tolist(), strict=True))
    common = [n for n, k in support.items() if k >= COMMON_PIXELS]
    z = zion()
    images = [str(z / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
    rates = {}
    for name in ("pixels", "unet"):
        bundle = work / "runs" / name / "bundle"
        if bundle.exists():
            mapped = run_cli("predict", str(bundle), "--image", *images, "--out", str(work / f"zion-{name}.tif"),
                             "--quiet", "--overwrite")
            rates[name] = 1428 * 1128 / mapped
    return {"method": "landcover pixel model (forest on 102 per-pixel filter features)", "train_s": seconds,
            "pixel_accuracy": scores["pixel_accuracy"], "miou": scores["miou"], "iou": scores["iou"],
            "support": support, "miou_common": float(np.mean([scores["iou"][n] or 0.0 for n in common])),
            "pixels": scores["pixels"], "zion_pixels_per_s": rates}


def tile_map(pairs: Path, work: Path) -> dict:
    """The demo's tile classifier, its chips split as the pairs are, its 240 m-stride map scored per pixel."""
    import geopandas as gpd
    import rasterio
    from rasterio.warp import Resampling, reproject

    from landcover.manifest import read_manifest, write_manifest

    z = zion()
    images = [str(z / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
    chips = work / "tile-chips"
    start = time.perf_counter()
    if not (chips / "manifest.parquet").exists():
        run_cli("chips", "--quiet", "--image", *images, "--bands", "3", "2", "1", "--labels", str(z / "nlcd2011.tif"),
                "--scheme", "nlcd-grouped", "--tile-size", "480m", "--rule", "points:3", "--out", str(chips))
    frame, info = read_manifest(chips / "manifest.parquet")
    tiles, _ = read_manifest(pairs / "manifest.parquet")
    centres = gpd.GeoDataFrame(frame[["chip_id"]], geometry=frame.geometry.centroid, crs=frame.crs)
    joined = gpd.sjoin(centres, tiles[["split", "geometry"]], how="left", predicate="within")
    split = joined.drop_duplicates("chip_id").set_index("chip_id")["split"]
    frame["split"] = frame["chip_id"].map(split).fillna("unused").to_numpy()
    write_manifest(frame, chips / "manifest.parquet", info)
    run_cli("train", "--quiet", "--manifest", str(chips), "--runs", str(work / "runs"), "--name", "tiles",
            "--mode", "features", "--arch", "efficientnet-lite0", "--head", "logreg", "--input-size", "64",
            "--overwrite")
    train_s = time.perf_counter() - start
    out = work / "tile-map.tif"
    run_cli("predict", str(work / "runs" / "tiles" / "bundle"), "--quiet", "--image", *images, "--stride", "240m",
            "--out", str(out), "--overwrite")
    test, truth, names = test_pairs(pairs)
    predicted = []
    with rasterio.open(out) as src:
        classes, transform, crs = src.read(1), src.transform, src.crs
    for i in range(len(test)):
        with rasterio.open(test.root / test.frame["path"].iloc[i]) as tile:
            grid = np.full(truth[i].shape, 255, np.uint8)
            reproject(classes, grid, src_transform=transform, src_crs=crs, dst_transform=tile.transform,
                      dst_crs=tile.crs, resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
        predicted.append(np.where(grid == 255, (truth[i] + 1) % len(names), grid))  # no map cell: wrong
    return {"method": "tile map (frozen Lite0 + logistic regression, 480 m tiles, 240 m stride)",
            "train_s": train_s, "train_chips": int((frame["split"] == "train").sum()),
            **scores_of(truth, predicted, names)}


def torchgeo_run(pairs: Path, work: Path, epochs: int) -> dict:
    """TorchGeo's SemanticSegmentationTask on the same network, start, batches, optimizer and epochs."""
    try:
        import lightning.pytorch as pl
        import torchgeo
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger
        from torchgeo.trainers import SemanticSegmentationTask
    except ImportError as exc:
        return {"skipped": f"TorchGeo/Lightning not importable ({exc}); pip install -e '.[bench]' -c constraints.txt"}
    from landcover.segment.data import IGNORE
    from landcover.train.config import TrainConfig
    from landcover.train.segmentation import SegmentationRun

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    config = TrainConfig(manifest=str(pairs), runs=str(work / "tg"), task="segmentation", architecture="unet",
                         rgb_bands=[3, 2, 1], epochs=epochs, batch_size=BATCH, seed=0, onnx=False)
    config.check()
    torch.manual_seed(0)
    run = SegmentationRun(config)

    class Task(SemanticSegmentationTask):
        def configure_optimizers(self) -> dict:
            optimizer = torch.optim.AdamW(self.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            return {"optimizer": optimizer,
                    "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)}

    def collate(items):
        return {"image": run.input.prepare(torch.stack([x for x, _ in items])),
                "mask": torch.stack([y for _, y in items])}

    class Pairs(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(run.train, batch_size=BATCH, shuffle=True, collate_fn=collate)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(run.val, batch_size=BATCH, collate_fn=collate)

    start = time.perf_counter()
    pl.seed_everything(0, verbose=False)
    task = Task(model="unet", backbone="resnet18", weights=None, in_channels=len(run.input.bands),
                num_classes=len(run.classes), ignore_index=IGNORE, lr=config.lr)
    task.model = run.model  # the same network and start as landcover's run
    checkpoint = ModelCheckpoint(dirpath=work / "tg-ckpt", monitor="val_loss", mode="min")
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[checkpoint],
                         logger=CSVLogger(work / "tg-logs"), enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=work / "tg")
    trainer.fit(task, datamodule=Pairs())
    seconds = time.perf_counter() - start
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    task.load_state_dict(best)
    task.eval()
    test, truth, names = test_pairs(pairs)
    with torch.no_grad():
        predicted = [task.model(run.input.prepare(torch.from_numpy(test.read(i)[0][None].astype(np.float32))))[0]
                     .argmax(0).numpy() for i in range(len(test))]
    return {"method": f"TorchGeo {torchgeo.__version__} SemanticSegmentationTask (same U-Net and start, ce)",
            "train_s": seconds, **scores_of(truth, predicted, names)}


def bare_loop(pairs: Path, batches: int) -> dict:
    """Forward, ce+dice, backward and AdamW step on prepared pairs held in memory: the training ceiling."""
    from landcover.segment.losses import make_loss
    from landcover.train.config import TrainConfig
    from landcover.train.segmentation import SegmentationRun

    config = TrainConfig(manifest=str(pairs), runs="unused", task="segmentation", architecture="unet",
                         rgb_bands=[3, 2, 1], batch_size=BATCH, seed=0, onnx=False)
    config.check()
    run = SegmentationRun(config)
    x = run.input.prepare(torch.stack([run.train[i][0] for i in range(len(run.train))]))
    y = torch.stack([run.train[i][1] for i in range(len(run.train))])
    model, loss_fn = run.model.train(), make_loss(config.loss, None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    order = list(torch.split(torch.randperm(len(y), generator=torch.Generator().manual_seed(0)), BATCH))
    order = (order * (batches // len(order) + 2))[:batches + 1]

    def step(index: torch.Tensor) -> None:
        loss = loss_fn(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(order[0])
    start = time.perf_counter()
    for index in order[1:]:
        step(index)
    seconds = time.perf_counter() - start
    return {"images": sum(len(i) for i in order[1:]), "seconds": seconds,
            "images_per_s": sum(len(i) for i in order[1:]) / seconds}


def timing_bundle(out: Path, res: float = 1.0) -> Path:
    """U-Net, Lite0 ImageNet encoder, 4 bands, an untrained 8-class decoder, at `res` m: cost, not accuracy."""
    from landcover.bundle import Bundle, InputSpec, save_bundle
    from landcover.models.segmenters import build_segmenter
    from landcover.schemes import load_scheme

    if (out / "model.json").exists():
        return out
    classes = [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(load_scheme("nlcd-grouped").classes)]
    model, pre = build_segmenter("unet", "efficientnet-lite0", len(classes), 4, "imagenet", (0, 1, 2))
    spec = InputSpec((0, 1, 2, 3), (0.0,) * 4, (255.0,) * 4, tuple(pre.mean), tuple(pre.std), 64, pre.interpolation,
                     resize=False)
    chip = {"size_px": 64, "res": res, "crs": "EPSG:26914", "dtype": "uint8", "rgb_bands": [0, 1, 2],
            "format": "tif", "source_files": ["naip.tif"], "source_bands": [[0, b] for b in (1, 2, 3, 4)]}
    save_bundle(Bundle("finetune", "unet", classes, spec, chip, {"note": "timing bundle: untrained decoder"},
                       model=model.eval(), task="segmentation", encoder="efficientnet-lite0"), out)
    return out


def predict_child(bundle: Path, image: Path, out: Path) -> dict:
    """One `landcover predict` in a fresh process: its summary, wall time and peak RSS."""
    for p in out.parent.glob(f"{out.stem}*"):
        p.unlink()
    run = fresh_process(["predict", str(bundle), "--quiet", "--image", str(image), "--out", str(out), "--runtime",
                         "torch"])
    summary = json.loads(out.with_suffix(".json").read_text())
    return {**run, "windows": summary["windows"], "windows_per_second": summary["windows_per_second"],
            "pixels": summary["pixels"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--size", type=int, default=16384, help="side of the large NAIP raster in pixels")
    parser.add_argument("--quick", action="store_true", help="1 epoch, park pairs, small rasters (not of record)")
    parser.add_argument("--work", help="folder for pairs, runs and maps (default: a temporary folder)")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the prediction timings (the accuracy figures already in --out are kept)")
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else args.epochs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return measure(args, epochs, out, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def accuracy(args: argparse.Namespace, epochs: int, out: Path, work: Path, results: dict) -> None:
    """The four methods on the Zion test pairs, and training speed against the bare loop."""
    pairs = make_pairs(work, args.quick)
    results["pairs"] = {s: len(PairDataset(pairs, s)) for s in ("train", "valid", "test")}
    methods = {}
    for name, fn in (("landcover", lambda: ours(pairs, work, epochs)),
                     ("random forest", lambda: random_forest(pairs, args.quick)),
                     ("pixel model", lambda: pixel_model(pairs, work)),
                     ("tile map", lambda: tile_map(pairs, work)),
                     ("torchgeo", lambda: torchgeo_run(pairs, work, epochs))):
        methods[name] = fn()
        print(f"{name}: { {k: v for k, v in methods[name].items() if k != 'iou'} }", flush=True)
        results["methods"] = methods
        (out / "segmentation.json").write_text(json.dumps(results, indent=2))  # kept if a later stage fails
    results["bare_loop"] = bare_loop(pairs, 4 if args.quick else 40)
    results["train_vs_bare_loop"] = methods["landcover"]["images_per_s"] / results["bare_loop"]["images_per_s"]


def measure(args: argparse.Namespace, epochs: int, out: Path, work: Path) -> int:
    """Every measurement, into <out>/segmentation.json and the printed tables."""
    results: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                 "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
                     "quick": args.quick, "epochs": epochs, "batch": BATCH}
    if args.speed_only:  # keep the accuracy figures of an earlier run in the same file
        previous = out / "segmentation.json"
        kept = json.loads(previous.read_text()) if previous.exists() else {}
        results.update({k: kept[k] for k in ("pairs", "methods", "bare_loop", "train_vs_bare_loop", "epochs")
                        if k in kept})
    else:
        accuracy(args, epochs, out, work, results)
    size, small_px = (1024, 512) if args.quick else (args.size, 2048)
    big = build_mosaic(work / f"naip_{size}.tif", size)
    small = cut(big, work / f"naip_{small_px}.tif", small_px)
    bundle = timing_bundle(work / "timing-bundle")
    from landcover.predict.pixels import BATCH_PIXELS

    batch = max(1, BATCH_PIXELS // WINDOW ** 2)
    results["model_only_windows_per_second"] = model_only(bundle, (batch, 4, WINDOW, WINDOW))
    for name, image in (("small", small), ("large", big)):
        results[name] = predict_child(bundle, image, work / f"map_{name}.tif")
        print(f"{name}: {results[name]}", flush=True)
    results["throughput_ratio"] = results["large"]["windows_per_second"] / results["model_only_windows_per_second"]
    results["rss_ratio"] = results["large"]["peak_rss_mb"] / results["small"]["peak_rss_mb"]
    (out / "segmentation.json").write_text(json.dumps(results, indent=2))
    print(report(results, size, small_px))
    return 0


def report(r: dict, size: int, small_px: int) -> str:
    """The markdown tables for bench/README.md."""
    lines = []
    if "methods" in r:
        lines += accuracy_tables(r)
    lines += ["| raster (U-Net, 512 px windows, overlap 128) | windows | windows/s | vs model-only | peak RSS |",
              "|---|---:|---:|---:|---:|",
              f"| model only (in memory) | | {r['model_only_windows_per_second']:.2f} | 100% | |"]
    for name, side in (("small", small_px), ("large", size)):
        x = r[name]
        lines.append(f"| {side} x {side} NAIP | {x['windows']} | {x['windows_per_second']:.2f} | "
                     f"{100 * x['windows_per_second'] / r['model_only_windows_per_second']:.0f}% | "
                     f"{x['peak_rss_mb']:.0f} MB |")
    lines.append(f"\nthroughput ratio {100 * r['throughput_ratio']:.1f}%, peak RSS ratio {r['rss_ratio']:.2f}")
    return "\n".join(lines)


def accuracy_tables(r: dict) -> list[str]:
    """The methods' scores, IoU per class, and training speed."""
    lines = [f"Zion, 64 px pairs, {r['pairs']['train']}/{r['pairs']['valid']}/{r['pairs']['test']} train/valid/test "
             f"(blocks), {r['epochs']} epochs, per 30 m pixel on the test pairs", "",
             f"| method | pixel accuracy | mIoU | mIoU, classes with >= {COMMON_PIXELS} test pixels | train s |",
             "|---|---:|---:|---:|---:|"]
    scored = {name: m for name, m in r["methods"].items() if "skipped" not in m}
    for m in r["methods"].values():
        if "skipped" in m:
            lines.append(f"| skipped: {m['skipped']} | | | | |")
            continue
        lines.append(f"| {m['method']} | {m['pixel_accuracy']:.3f} | {m['miou']:.3f} | {m['miou_common']:.3f} | "
                     f"{m['train_s']:.0f} |")
    support = next(iter(scored.values()))["support"]
    lines += ["", "| IoU per class (test pixels) | " + " | ".join(scored) + " |",
              "|---|" + "---:|" * len(scored)]
    for name, pixels in support.items():
        lines.append(f"| {name} ({pixels:,}) | " + " | ".join(f"{(m['iou'][name] or 0):.3f}" for m in scored.values())
                     + " |")
    lines += ["", f"training: {r['methods']['landcover']['images_per_s']:.1f} images/s, bare loop "
                  f"{r['bare_loop']['images_per_s']:.1f}: {100 * r['train_vs_bare_loop']:.0f}%", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
