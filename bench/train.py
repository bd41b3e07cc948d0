"""Training on Zion chips: landcover's frozen features and fine-tuning against a spectral random forest and TorchGeo.

Run from the repository root:  python bench/train.py [--out bench/results] [--epochs N] [--input-size PX] [--profile]
[--quick]. Reads ../shared/data/zion (or $LANDCOVER_DATA/zion); builds chips and a block split in a temporary
folder with the `landcover` command, trains every method on the same chips, split and epochs, scores each on the
test split with landcover.evaluate, times landcover's training loop against a bare torch loop, writes
<out>/train.json and prints a table. `--quick` (under a minute; what CI runs) trains each method for 1 epoch at
32 px on the chips inside the park (960 m tiles) with a few bare-loop batches, and 1 TorchGeo epoch when it is
installed: it checks the bench works; its figures are not ones of record.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import logging
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch
from common import ROOT, landcover_cli, load, machine, say, workspace
from common import zion as zion_folder

from landcover.compat import guard_torchvision

guard_torchvision()  # before anything imports torchvision, timm or TorchGeo

from landcover.bundle import InputSpec  # noqa: E402
from landcover.datasets.chips import read_chip  # noqa: E402
from landcover.evaluate import Report, evaluate_predictions, read_report  # noqa: E402
from landcover.models.heads import fit_head  # noqa: E402
from landcover.models.spectral import spectral_features  # noqa: E402
from landcover.train.config import TrainConfig  # noqa: E402
from landcover.train.data import ChipDataset  # noqa: E402
from landcover.train.run import Run  # noqa: E402
from landcover.train.runs import read_metrics  # noqa: E402

BANDS = ("b2", "b3", "b4", "b5")
"""Landsat 8 blue, green, red, NIR: the chip bands, in this order."""
TILE = "480m"
RULE = "purity:0.75"
SCHEME = "nlcd-grouped"
SPLIT_BLOCKS = 4
SPLIT_RATIOS = "70:15:15"
RGB_BANDS = (3, 2, 1)
"""1-based chip band positions of red, green and blue (b4, b3, b2): they get the pretrained RGB filters."""
RED, NIR = 2, 3
"""0-based chip band indices for NDVI in the spectral baseline."""
ARCH = "efficientnet-lite0"
TORCHGEO_MODEL = "tf_efficientnet_lite0"
"""timm's name for the TF-ported Lite0 ('same' padding, BatchNorm eps 1e-3): the very network landcover builds.
timm's `efficientnet_lite0` pads symmetrically with eps 1e-5, so the same weights compute other features."""
THROUGHPUT_TARGET = 0.9
"""landcover's fine-tuning images/s over a bare torch loop's."""


@dataclass(frozen=True)
class Settings:
    """One bench run's shared training settings (the same for every deep method)."""

    epochs: int
    input_size: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    class_weights: str


def per_second(n: int, seconds: float) -> float:
    """A rate, guarded against a zero time."""
    return n / seconds if seconds > 0 else float("inf")


def disturbed(rates: list[float]) -> list[int]:
    """1-based epochs that ran at under half the median rate: another job had the cores (the median is kept)."""
    middle = statistics.median(rates) if rates else 0.0
    return [i + 1 for i, rate in enumerate(rates) if rate < middle / 2]


def make_dataset(zion: Path, work: Path, quick: bool = False) -> tuple[Path, dict]:
    """Chips (GeoTIFF, 4 bands, uint16) and a block split, built with the landcover command (quick: 960 m chips
    inside the park)."""
    chips = work / "chips"
    subset = ["--tile-size", "960m", "--aoi", str(zion / "zion.gpkg")] if quick else ["--tile-size", TILE]
    argv = ["chips", "--image", *[str(zion / f"landsat_{b}.tif") for b in BANDS], "--labels",
            str(zion / "nlcd2011.tif"), "--scheme", SCHEME, *subset, "--rule", RULE, "--format", "tif",
            "--region", "zion", "--out", str(chips), "--quiet"]
    chips_s, _ = landcover_cli(argv)
    split_argv = ["split", str(chips), "--blocks", str(SPLIT_BLOCKS), "--ratios", SPLIT_RATIOS, "--no-plot"]
    split_s, _ = landcover_cli(split_argv)
    manifest = chips / "manifest.parquet"
    frame = ChipDataset(manifest).frame
    counts: dict[str, dict[str, int]] = {}
    for (label, split), n in frame.groupby(["label", "split"]).size().items():
        counts.setdefault(str(label), {})[str(split)] = int(n)
    order = sorted(counts, key=lambda c: -sum(counts[c].values()))
    return manifest, {"chips_command": " ".join(["landcover", *argv]), "split_command": " ".join(["landcover",
                                                                                                   *split_argv]),
                      "chips_s": chips_s, "split_s": split_s, "chips": len(frame),
                      "size_px": int(frame["size_px"].iat[0]), "res_m": float(frame["res"].iat[0]),
                      "class_counts": {c: counts[c] for c in order},
                      "split_sizes": {str(k): int(v) for k, v in frame["split"].value_counts().items()}}


def class_names(manifest: Path) -> list[str]:
    """The scheme's class names in label id order."""
    info = ChipDataset(manifest).info
    return [c["name"] for c in sorted(info["scheme"]["classes"], key=lambda c: c["id"])]


def scores(report: Report) -> dict:
    """The figures a row of the table needs, plus per-class F1 and support."""
    per_class = {name: {"support": int(n), "f1": float(f)}
                 for name, n, f, averaged in zip(report.class_names, report.support, report.f1, report.averaged,
                                                 strict=True) if averaged}
    present = report.support > 0
    return {"test_accuracy": report.accuracy, "test_macro_f1": report.macro["f1"],
            "test_macro_f1_present": float(np.nanmean(report.f1[present])), "test_kappa": report.kappa,
            "averaged_classes": [n for n, a in zip(report.class_names, report.averaged, strict=True) if a],
            "per_class": per_class, "confusion": report.confusion.tolist()}


def spectral_baseline(manifest: Path, names: list[str], s: Settings) -> dict:
    """Per-chip band statistics and NDVI into a random forest, fitted on train, scored on test."""
    def featurize(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Features, label ids and chip ids of one split."""
        data = ChipDataset(manifest, split)
        x = np.stack([spectral_features(data.read(i), indices=(("ndvi", NIR, RED),)) for i in range(len(data))])
        return x, data.labels, list(data.frame["chip_id"])

    start = time.perf_counter()
    x_train, y_train, _ = featurize("train")
    featurized = time.perf_counter() - start
    head = fit_head("rf", x_train, y_train, len(names), seed=s.seed,
                    class_weight="balanced" if s.class_weights == "balanced" else None)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    x_test, y_test, ids = featurize("test")
    report = evaluate_predictions(y_test, head.predict_proba(x_test), names, chip_ids=ids)
    return {"method": "spectral stats + NDVI, random forest", "train_s": train_s, "featurize_s": featurized,
            "eval_s": time.perf_counter() - start, "train_chips": len(y_train), "features": int(x_train.shape[1]),
            "images_per_s": per_second(len(y_train), train_s), "images_per_s_means": "train chips / train wall time",
            **scores(report)}


def train_args(manifest: Path, runs: Path, name: str, s: Settings) -> list[str]:
    """`landcover train` arguments shared by every landcover deep run."""
    return ["train", "--manifest", str(manifest), "--runs", str(runs), "--name", name, "--arch", ARCH,
            "--rgb-bands", *map(str, RGB_BANDS), "--input-size", str(s.input_size), "--batch-size",
            str(s.batch_size), "--seed", str(s.seed), "--class-weights", s.class_weights, "--quiet",
            "--no-onnx"]  # training time only: the ONNX export at the end is not part of what is compared


def landcover_run(manifest: Path, runs: Path, name: str, extra: list[str], s: Settings) -> dict:
    """`landcover train` then `landcover evaluate` on the test split: wall times, throughput and test scores."""
    load_before = load()
    argv = [*train_args(manifest, runs, name, s), *extra]
    train_s, printed = landcover_cli(argv)
    rows = read_metrics(runs / name)
    eval_out = runs / name / "eval-test"
    eval_s, _ = landcover_cli(["evaluate", str(runs / name / "bundle"), "--manifest", str(manifest), "--split",
                               "test", "--out", str(eval_out), "--quiet"])
    summary = json.loads((runs / name / "summary.json").read_text())
    rates = [float(r["images_per_s"]) for r in rows]
    return {"command": " ".join(["landcover", *argv]), "train_s": train_s, "eval_s": eval_s,
            "epoch_images_per_s": rates, "disturbed_epochs": disturbed(rates), "images_per_s": statistics.median(rates),
            "epoch_s": [float(r["seconds"]) for r in rows if r.get("seconds") is not None],
            "best_epoch": summary.get("best_epoch"), "val_macro_f1": summary.get("best_val_macro_f1"),
            "metrics": rows, "load_before": load_before, "load_after": load(), "printed": printed.strip(),
            **scores(read_report(eval_out))}


def reference_run(manifest: Path, runs: Path, s: Settings) -> Run:
    """landcover's Run for fine-tuning (chips, InputSpec, seeded pretrained model), as `landcover train` builds it."""
    config = TrainConfig(manifest=str(manifest), runs=str(runs), architecture=ARCH, rgb_bands=list(RGB_BANDS),
                         input_size=s.input_size, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
                         epochs=s.epochs, seed=s.seed, class_weights=s.class_weights)
    config.check()
    torch.manual_seed(config.seed)
    return Run(config)


class Prepared:
    """Collate raw chips into a TorchGeo-style batch dict, through landcover's InputSpec."""

    def __init__(self, spec: InputSpec):
        """Prepare with this spec."""
        self.spec = spec

    def __call__(self, items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        """{'image': prepared batch, 'label': class ids}."""
        raw = torch.stack([x for x, _ in items])
        return {"image": self.spec.prepare(raw), "label": torch.tensor([y for _, y in items])}


def torchgeo_run(manifest: Path, work: Path, names: list[str], s: Settings) -> dict:
    """TorchGeo 0.8's ClassificationTask on the same chips, inputs, start weights, optimizer and epochs."""
    try:
        import lightning.pytorch as pl
        import torchgeo
        from lightning.pytorch.callbacks import Callback, ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger
        from torchgeo.trainers import ClassificationTask
    except ImportError as exc:
        return {"skipped": f"TorchGeo/Lightning not importable ({exc}); pip install -e '.[bench]' -c constraints.txt"}
    from landcover.train.finetune import class_weights

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")

    class Task(ClassificationTask):
        """ClassificationTask with landcover's optimizer: AdamW (same weight decay) and a cosine schedule."""

        def configure_optimizers(self) -> dict:
            """AdamW over the trainable parameters, cosine-annealed per epoch over the run."""
            optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.hparams["lr"],
                                          weight_decay=s.weight_decay)
            return {"optimizer": optimizer,
                    "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs)}

    class Chips(pl.LightningDataModule):
        """landcover's ChipDataset splits (train augmented with the 8 square symmetries) as prepared batches."""

        def __init__(self, run: Run):
            """The splits of `run` (train, valid) and the test split of the same manifest."""
            super().__init__()
            self.run = run
            self.test = ChipDataset(manifest, "test")
            self.collate = Prepared(run.input)

        def loader(self, dataset: ChipDataset, shuffle: bool) -> torch.utils.data.DataLoader:
            """Batches of prepared chips, no worker processes (like `landcover train`'s default)."""
            return torch.utils.data.DataLoader(dataset, batch_size=s.batch_size, shuffle=shuffle, num_workers=0,
                                               collate_fn=self.collate)

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            """The train split, shuffled, augmented."""
            return self.loader(self.run.train, True)

        def val_dataloader(self) -> torch.utils.data.DataLoader:
            """The valid split."""
            return self.loader(self.run.val, False)

        def predict_dataloader(self) -> torch.utils.data.DataLoader:
            """The test split, in manifest order."""
            return self.loader(self.test, False)

    class EpochTimer(Callback):
        """Seconds and images of each training epoch: first batch fetched to last optimizer step, no validation."""

        def __init__(self) -> None:
            """No epochs yet."""
            self.start = 0.0
            self.last = 0.0
            self.seen = 0
            self.epochs: list[tuple[float, int]] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            """Start the clock."""
            self.start, self.seen = time.perf_counter(), 0

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, index: int) -> None:
            """Note the time and count the images."""
            self.last = time.perf_counter()
            self.seen += len(batch["label"])

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            """Record the epoch (validation, which ran in between, is not counted)."""
            self.epochs.append((self.last - self.start, self.seen))

    load_before = load()
    start = time.perf_counter()
    pl.seed_everything(s.seed, verbose=False)
    run = reference_run(manifest, work / "torchgeo-run", s)
    task = Task(model=TORCHGEO_MODEL, weights=None, in_channels=len(run.input.bands), num_classes=len(names),
                lr=s.lr, class_weights=class_weights(run))
    task.model.load_state_dict(run.model.state_dict())  # the same adapted ImageNet weights and seeded head
    data = Chips(run)
    timer = EpochTimer()
    checkpoint = ModelCheckpoint(dirpath=work / "torchgeo-ckpt", monitor=task.monitor, mode=task.mode)
    trainer = pl.Trainer(max_epochs=s.epochs, accelerator="cpu", devices=1, callbacks=[checkpoint, timer],
                         logger=CSVLogger(work / "torchgeo-logs"), enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=work / "torchgeo")
    trainer.fit(task, datamodule=data)
    train_s = time.perf_counter() - start

    def test_report(ckpt: str | None) -> tuple[Report, float]:
        """Test-split report of the current weights (None) or the best checkpoint ('best'), and its seconds."""
        began = time.perf_counter()
        probs = torch.cat(trainer.predict(task, datamodule=data, ckpt_path=ckpt)).numpy().astype(np.float64)
        return evaluate_predictions(data.test.labels, probs, names,
                                    chip_ids=list(data.test.frame["chip_id"])), time.perf_counter() - began

    last, _ = test_report(None)
    best, eval_s = test_report("best")
    rates = [per_second(n, sec) for sec, n in timer.epochs]
    return {"method": f"TorchGeo {torchgeo.__version__} ClassificationTask", "model": TORCHGEO_MODEL,
            "train_s": train_s, "eval_s": eval_s, "epoch_images_per_s": rates, "disturbed_epochs": disturbed(rates),
            "images_per_s": statistics.median(rates), "epoch_s": [sec for sec, _ in timer.epochs],
            "best_checkpoint": Path(checkpoint.best_model_path).name, "monitor": task.monitor,
            "last_epoch": {"test_accuracy": last.accuracy, "test_macro_f1": last.macro["f1"]},
            "load_before": load_before, "load_after": load(), **scores(best),
            "test_predictions": best.predictions[["chip_id", "true", "predicted"]].to_dict("list")}


def prepared_train_tensors(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training chip through the InputSpec (no augmentation), held in memory."""
    data = ChipDataset(run.train.path, run.config.train_split)
    loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
    xs, ys = zip(*[(run.input.prepare(raw), y) for raw, y in loader], strict=True)
    return torch.cat(xs), torch.cat(ys)


def bare_loop(run: Run, s: Settings, max_batches: int | None) -> dict:
    """Forward, backward and AdamW step over in-memory prepared tensors, in shuffled batches: the ceiling."""
    from landcover.models.backbones import set_trainable

    x, y = prepared_train_tensors(run)
    model = run.model
    set_trainable(model, "all")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(s.seed))
    batches = list(torch.split(order, s.batch_size))

    def step(index: torch.Tensor) -> None:
        """One optimizer step on the batch of these rows."""
        loss = loss_fn(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up, not timed (landcover's epochs run warm after the first)
    timed = batches[1:] if max_batches is None else batches[1:1 + max_batches]
    load_before = load()
    start = time.perf_counter()
    for index in timed:
        step(index)
    seconds = time.perf_counter() - start
    images = sum(len(i) for i in timed)
    return {"images": images, "batches": len(timed), "seconds": seconds, "images_per_s": per_second(images, seconds),
            "load_before": load_before, "load_after": load()}


class InMemoryChips(ChipDataset):
    """A ChipDataset whose chips are decoded once and kept in memory (what a chip cache would give)."""

    def __init__(self, data: ChipDataset):
        """Read every chip of `data` now."""
        super().__init__(data.path, frame=data.frame, augment=data.augment)
        self.chips = [torch.from_numpy(read_chip(self.root / p).astype(np.float32)) for p in self.frame["path"]]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """The kept chip, with landcover's augmentation (the eight symmetries of a square)."""
        x = self.chips[index]
        if self.augment:
            g = torch.randint(0, 8, ()).item()
            x = torch.rot90(x, g % 4, dims=(1, 2))
            if g >= 4:
                x = torch.flip(x, dims=(2,))
        return x, int(self.labels[index])


def data_pipeline(run: Run) -> dict:
    """landcover's training input alone for one epoch (DataLoader, then InputSpec.prepare); and with chips in memory."""
    def epoch(dataset: ChipDataset) -> tuple[float, float, int]:
        """Seconds in the loader and in prepare, and images, over one shuffled epoch."""
        fetch = prepare = 0.0
        seen = 0
        start = time.perf_counter()
        for raw, y in run.loader(dataset, True, 1):
            fetched = time.perf_counter()
            run.input.prepare(raw)
            done = time.perf_counter()
            fetch, prepare, seen = fetch + fetched - start, prepare + done - fetched, seen + len(y)
            start = time.perf_counter()
        return fetch, prepare, seen

    fetch, prepare, seen = epoch(run.train)
    in_memory, _, _ = epoch(InMemoryChips(run.train))
    return {"images": seen, "loader_s": fetch, "prepare_s": prepare,
            "images_per_s": per_second(seen, fetch + prepare), "in_memory_loader_s": in_memory}


PROFILE_PARTS: dict[str, tuple[str, str]] = {
    "epoch (landcover.train.finetune._train_epoch)": ("landcover/train/finetune.py", "_train_epoch"),
    "DataLoader __next__ (read, augment, collate)": ("torch/utils/data/dataloader.py", "__next__"),
    "  read_chip (rasterio open + read)": ("landcover/datasets/chips.py", "read_chip"),
    "InputSpec.prepare (scale, resize, normalise)": ("landcover/bundle.py", "prepare"),
    "forward (timm EfficientNet.forward)": ("timm/models/efficientnet.py", "forward"),
    "backward (Tensor.backward)": ("torch/_tensor.py", "backward"),
    "optimizer step (AdamW, i.e. Adam.step)": ("torch/optim/adam.py", "step"),
    "zero_grad": ("torch/optim/optimizer.py", "zero_grad"),
}
"""cProfile entries summarised: (file path suffix, function name); cumulative seconds are reported."""


def profile_epoch(manifest: Path, work: Path, s: Settings) -> dict:
    """cProfile of one epoch of landcover's own fine-tuning loop (train from all), as `landcover train` runs it."""
    from landcover.models.backbones import set_trainable
    from landcover.train.finetune import _train_epoch, make_optimizer

    run = reference_run(manifest, work / "profile-run", s)
    set_trainable(run.model, "all")
    optimizer = make_optimizer(run.config, [p for p in run.model.parameters() if p.requires_grad])
    loss_fn = torch.nn.CrossEntropyLoss()
    profiler = cProfile.Profile()
    profiler.enable()
    _, _, seconds, seen = _train_epoch(run, run.model, optimizer, loss_fn, run.loader(run.train, True, 1), False, 1)
    profiler.disable()
    stats = pstats.Stats(profiler)
    parts: dict[str, float] = {}
    for label, (suffix, name) in PROFILE_PARTS.items():
        parts[label] = sum(entry[3] for (path, _, func), entry in stats.stats.items()  # type: ignore[attr-defined]
                           if func == name and path.replace("\\", "/").endswith(suffix))
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(r"landcover|torch/utils/data|rasterio",
                                                                                15)
    return {"epoch_s": seconds, "images": seen, "images_per_s": per_second(seen, seconds), "parts_s": parts,
            "top": buffer.getvalue()}


def fmt(value: float | None, spec: str) -> str:
    """A number for the table, '-' when absent."""
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def ratios(results: dict) -> list[dict]:
    """The goals: landcover's best macro-F1 over TorchGeo's and the baseline's; throughput over the bare loop."""
    ours = {k: results["methods"][k] for k in ("features", "head", "all") if k in results["methods"]}
    best_key = max(ours, key=lambda k: ours[k]["test_macro_f1"])
    best = ours[best_key]["test_macro_f1"]
    out = []
    for other, label in (("spectral", "spectral RF"), ("torchgeo", "TorchGeo")):
        theirs = results["methods"].get(other, {}).get("test_macro_f1")
        if theirs is not None:
            out.append({"name": f"landcover best ({best_key}) macro-F1 - {label}", "value": best - theirs,
                        "format": "+.3f", "target": "> 0", "met": bool(best > theirs)})
    tp = results.get("throughput", {})
    if tp.get("ratio") is not None:
        out.append({"name": "landcover fine-tune images/s / bare torch loop", "value": tp["ratio"], "format": ".1%",
                    "target": f">= {THROUGHPUT_TARGET:.0%}", "met": bool(tp["ratio"] >= THROUGHPUT_TARGET)})
    tg = results["methods"].get("torchgeo", {}).get("images_per_s")
    if tg and "all" in results["methods"]:
        out.append({"name": "landcover fine-tune images/s / TorchGeo", "value": results["methods"]["all"]
                    ["images_per_s"] / tg, "format": ".2f", "target": None, "met": None})
    return out


ROW_LABELS = {
    "spectral": "spectral stats + NDVI -> random forest",
    "features": "landcover frozen lite0 -> logreg",
    "head": "landcover fine-tune head",
    "all": "landcover fine-tune all",
    "torchgeo": "TorchGeo ClassificationTask (all)",
}


def table(results: dict) -> str:
    """The figures and goals as a plain-text table."""
    lines = [f"{'method':<40} {'test acc':>8} {'macro-F1':>8} {'present':>8} {'train s':>8} {'images/s':>9}"]
    for key, label in ROW_LABELS.items():
        row = results["methods"].get(key)
        if row is None:
            continue
        if "skipped" in row:
            lines.append(f"{label:<40} skipped: {row['skipped']}")
            continue
        lines.append(f"{label:<40} {fmt(row['test_accuracy'], '.3f'):>8} {fmt(row['test_macro_f1'], '.3f'):>8} "
                     f"{fmt(row['test_macro_f1_present'], '.3f'):>8} {fmt(row['train_s'], '.1f'):>8} "
                     f"{fmt(row['images_per_s'], '.1f'):>9}")
    bare = results.get("throughput", {}).get("bare")
    if bare:
        lines.append(f"{'bare torch loop (in-memory tensors)':<40} {'':>8} {'':>8} {'':>8} "
                     f"{fmt(bare['seconds'], '.1f'):>8} {fmt(bare['images_per_s'], '.1f'):>9}")
    lines += ["", f"{'goal':<56} {'value':>8} {'target':>8}  met"]
    for r in results["ratios"]:
        value = format(r["value"], r["format"]) + ("x" if r["format"] == ".2f" else "")
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"{r['name']:<56} {value:>8} {r['target'] or '':>8}  {met}")
    return "\n".join(lines)


def stage(label: str, results: dict, key: str, fn: Callable[[], dict]) -> None:
    """Run one stage, store its result under results['methods'][key] and say how long it took."""
    say(f"{label} ...")
    start = time.perf_counter()
    results["methods"][key] = fn()
    say(f"  done in {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Build the dataset, run every method in turn, print the table, write train.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every fine-tuning run (default 10)")
    parser.add_argument("--input-size", type=int, default=64,
                        help="model input size in pixels for every deep run; chips are 16 px (default 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32 (landcover's default)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (landcover's default 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--class-weights", choices=["none", "balanced"], default="none",
                        help="weight every method's loss (or head) against class imbalance (default none)")
    parser.add_argument("--bare-batches", type=int, default=None,
                        help="timed batches of the bare torch loop (default: one epoch)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one landcover epoch even when throughput meets the target")
    parser.add_argument("--skip-torchgeo", action="store_true", help="leave TorchGeo out")
    parser.add_argument("--keep-work", action="store_true", help="keep the chips and runs folder")
    parser.add_argument("--quick", action="store_true",
                        help="under a minute: 1 epoch at 32 px on a small subset (checks the bench works; not "
                             "figures of record)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.input_size, args.bare_batches = 1, 32, min(args.bare_batches or 3, 3)
    settings = Settings(args.epochs, args.input_size, args.batch_size, args.lr, args.weight_decay, args.seed,
                        args.class_weights)
    zion = zion_folder()
    began = time.perf_counter()
    results: dict[str, Any] = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                               "machine": {**machine("torch", "timm", "torchgeo", "lightning", "scikit-learn", "numpy"),
                                           "torch_threads": torch.get_num_threads()},
                               "settings": vars(settings) | {"arch": ARCH, "rgb_bands": RGB_BANDS,
                                                             "torchgeo_model": TORCHGEO_MODEL},
                               "quick": args.quick, "methods": {}}
    with workspace(args.out, args.keep_work, "train-work-") as work:
        say("chips and split with the landcover command ...")
        manifest, results["dataset"] = make_dataset(zion, work, args.quick)
        names = class_names(manifest)
        ds = results["dataset"]
        say(f"  {ds['chips']} chips ({ds['size_px']} px, {ds['res_m']:g} m): {ds['split_sizes']}")
        runs = work / "runs"
        lr = ["--lr", str(settings.lr), "--weight-decay", str(settings.weight_decay), "--epochs", str(settings.epochs)]
        stage("1. spectral baseline (random forest)", results, "spectral",
              lambda: spectral_baseline(manifest, names, settings))
        stage("2. frozen lite0 features + logistic regression", results, "features",
              lambda: landcover_run(manifest, runs, "features", ["--mode", "features", "--head", "logreg"], settings))
        stage(f"3. fine-tune head, {settings.epochs} epochs", results, "head",
              lambda: landcover_run(manifest, runs, "head", ["--mode", "finetune", "--train-from", "head", *lr],
                                    settings))
        stage(f"4. fine-tune all, {settings.epochs} epochs", results, "all",
              lambda: landcover_run(manifest, runs, "all", ["--mode", "finetune", "--train-from", "all", *lr],
                                    settings))
        if not args.skip_torchgeo:
            stage(f"5. TorchGeo ClassificationTask, {settings.epochs} epochs", results, "torchgeo",
                  lambda: torchgeo_run(manifest, work, names, settings))

        say("throughput: bare torch loop over in-memory tensors ...")
        run = reference_run(manifest, work / "bare-run", settings)
        bare = bare_loop(run, settings, args.bare_batches)
        ours = results["methods"]["all"]["images_per_s"]
        results["throughput"] = {"landcover_images_per_s": ours, "bare": bare,
                                 "ratio": ours / bare["images_per_s"], "target": THROUGHPUT_TARGET,
                                 "data_pipeline": data_pipeline(run)}
        if args.profile or (results["throughput"]["ratio"] < THROUGHPUT_TARGET and not args.quick):
            say("cProfile of one landcover fine-tuning epoch ...")
            results["throughput"]["profile"] = profile_epoch(manifest, work, settings)
    results["ratios"] = ratios(results)
    results["total_s"] = time.perf_counter() - began

    ds = results["dataset"]
    print(f"training on Zion chips, {results['date']}, {results['machine']['cores']} cores, "
          f"torch threads {results['machine']['torch_threads']}")
    print(f"{ds['chips']} chips of {ds['size_px']} px ({ds['size_px'] * ds['res_m']:g} m, {RULE}), split "
          f"{SPLIT_RATIOS} by blocks of {SPLIT_BLOCKS} tiles; {settings.epochs} epochs, input "
          f"{settings.input_size} px, batch {settings.batch_size}, AdamW lr {settings.lr:g} wd "
          f"{settings.weight_decay:g}, cosine")
    splits = ("train", "valid", "test")
    print(f"  {'class':<12}" + "".join(f"{s:>7}" for s in splits))
    for label, counts in ds["class_counts"].items():
        print(f"  {label:<12}" + "".join(f"{counts.get(s, 0):>7}" for s in splits))
    print()
    print(table(results))
    print("  macro-F1: landcover.evaluate's convention, over classes present in the test split or predicted (a "
          "predicted absent class scores F1 0); present: over the classes with test chips only")
    tp = results["throughput"]
    pipe = tp["data_pipeline"]
    print(f"  landcover's input pipeline alone: {pipe['loader_s']:.2f} s loading + {pipe['prepare_s']:.2f} s "
          f"prepare per epoch ({pipe['images_per_s']:.0f} images/s)")
    print(f"  with the chips decoded once and kept in memory, the loader would take {pipe['in_memory_loader_s']:.2f} s "
          f"per epoch")
    for key, label in ROW_LABELS.items():
        if results["methods"].get(key, {}).get("disturbed_epochs"):
            print(f"  {label}: epochs {results['methods'][key]['disturbed_epochs']} ran at under half the median "
                  f"images/s (another job on the machine); images/s is the median, train s includes them")
    tg = results["methods"].get("torchgeo", {})
    if "last_epoch" in tg:
        print(f"  TorchGeo: best checkpoint by {tg['monitor']} ({tg['best_checkpoint']}); last epoch scores "
              f"acc {tg['last_epoch']['test_accuracy']:.3f}, macro-F1 {tg['last_epoch']['test_macro_f1']:.3f}")
    if "profile" in tp:
        prof = tp["profile"]
        print(f"\ncProfile, one landcover epoch: {prof['epoch_s']:.1f} s, {prof['images_per_s']:.1f} images/s")
        for label, seconds in prof["parts_s"].items():
            print(f"  {label:<48} {seconds:>7.2f} s  {seconds / prof['epoch_s']:>6.1%}")
    print(f"total bench time {results['total_s']:.0f} s")
    path = args.out / "train.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
