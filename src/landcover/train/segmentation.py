"""Segmentation training: image/mask pairs of a split manifest into a bundle (task 'segmentation'), with the run
folder of classification: config, checkpoints (last, best by validation mIoU), exact resume, early stopping,
metrics.csv and curves.png per epoch (loss, pixel accuracy, mIoU), summary.json."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from landcover.bundle import Bundle, InputSpec, save_bundle
from landcover.errors import LandcoverError
from landcover.models.segmenters import STRIDE, build_segmenter
from landcover.progress import progress_bar
from landcover.segment.data import PairDataset, class_pixels
from landcover.segment.losses import make_loss
from landcover.segment.metrics import add_to_confusion, pixel_scores
from landcover.train.checkpoints import close_epoch, load_checkpoint, start_or_resume
from landcover.train.config import TrainConfig
from landcover.train.data import scaling_for
from landcover.train.finetune import (
    end_distributed,
    epoch_sampler,
    make_optimizer,
    make_schedule,
    optimizer_step,
    rank0_says_stop,
    start_distributed,
    summed,
)
from landcover.train.run import Splits, chip_facts, input_bands, provenance
from landcover.train.runs import dump_json, write_metrics


class SegmentationRun(Splits):
    """The pairs, network and input pipeline a segmentation config describes."""

    def __init__(self, config: TrainConfig):
        super().__init__(config, PairDataset)
        first = self.train.read(0)[0]
        size = int(first.shape[-1])
        if size % STRIDE or first.shape[-2] != size:
            raise LandcoverError(f"segmentation tiles must be square and a multiple of {STRIDE} px, these are "
                                 f"{first.shape[-2]} x {size}: cut pairs with e.g. --tile-size 64px", self.train.path)
        bands, rgb = input_bands(config, first.shape[0], self.train.path)
        self.model, pre = build_segmenter(config.architecture, config.encoder, len(self.classes), len(bands),
                                          config.weights, rgb)
        low, high = scaling_for(self.train.frame, self.train.root, bands, seed=config.seed)
        self.input = InputSpec(bands, low, high, tuple(pre.mean), tuple(pre.std), size, pre.interpolation,
                               resize=False)
        self.chip = chip_facts(self.train.frame, first, rgb, info=self.train.info)

    def bundle(self) -> Bundle:
        """A bundle of the current network with its provenance."""
        c = self.config
        return Bundle("finetune", c.architecture, self.classes, self.input, self.chip,
                      provenance(c, self.train.path, len(self.train), len(self.val)), model=self.model,
                      task="segmentation", encoder=c.encoder)

    def class_weights(self) -> torch.Tensor | None:
        """Inverse pixel-frequency weights ('balanced'), or None."""
        if self.config.class_weights != "balanced":
            return None
        counts = class_pixels(self.train).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(self.classes) * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)


def train_segmentation(run: SegmentationRun, out: Path, resume: bool, progress: bool) -> Path:
    """Train a segmentation network for the configured epochs; keep last/best checkpoints; write the bundle.
    Under torchrun, each rank trains on its share of the pairs (DDP, gloo); rank 0 validates and writes."""
    config, model = run.config, run.model
    world, rank = start_distributed()
    optimizer = make_optimizer(config, list(model.parameters()))
    schedule = make_schedule(config, optimizer)
    state, rows = start_or_resume(out, model, optimizer, schedule, resume)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = make_loss(config.loss, run.class_weights())
    names = [c["name"] for c in run.classes]
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        torch.manual_seed(config.seed * 1000 + epoch)
        loader = run.loader(run.train, True, epoch, epoch_sampler(run.train, world, rank, config.seed, epoch))
        loss_sum, correct, labelled, seen, seconds = _train_epoch(run, net, loader, optimizer, loss_fn, epoch,
                                                                  progress and rank == 0)
        loss_sum, correct, labelled, seen = summed(world, loss_sum, correct, labelled, seen)
        loss, acc = loss_sum / seen, correct / max(labelled, 1)
        schedule.step()
        if rank == 0:
            val_loss, scores = _validate(run, loss_fn, names)
            miou = scores["miou"] or 0.0
            rows.append({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss,
                         "train_acc": acc, "val_loss": val_loss, "val_acc": scores["pixel_accuracy"],
                         "val_miou": miou, "images_per_s": seen / seconds, "seconds": seconds})
            close_epoch(out, model, optimizer, schedule, state, epoch, miou, config.checkpoint_every, config.epochs)
            write_metrics(out, rows)
            if progress:
                print(f"epoch {epoch}/{config.epochs}: train loss {loss:.4f} pixel acc {acc:.3f} | val loss "
                      f"{val_loss:.4f} pixel acc {scores['pixel_accuracy']:.3f} mIoU {miou:.3f} | "
                      f"{seen / seconds:.0f} img/s")
        if rank0_says_stop(world, config.early_stopping > 0 and state["stale"] >= config.early_stopping):
            if rank == 0:
                print(f"early stopping: no better val mIoU for {config.early_stopping} epochs")
            break
    if rank == 0:
        load_checkpoint(out / "checkpoints" / "best", model)
        save_bundle(run.bundle(), out / "bundle")
        dump_json(out / "summary.json", {"task": "segmentation", "best_epoch": state["best_epoch"],
                                         "best_val_miou": state["best_score"],
                                         "epochs_run": rows[-1]["epoch"] if rows else 0})
    del net  # DDP's reducer goes while its process group lives (freed after, it can deadlock in gloo)
    end_distributed(world)
    return out


def _train_epoch(run: SegmentationRun, net: torch.nn.Module, loader: torch.utils.data.DataLoader,
                 optimizer: torch.optim.Optimizer, loss_fn, epoch: int,
                 progress: bool) -> tuple[float, int, int, int, float]:
    """One pass over (this rank's share of) the training pairs: summed loss, correct and labelled pixels, images,
    seconds."""
    net.train()
    total_loss, correct, labelled, seen = 0.0, 0, 0, 0
    start = time.perf_counter()
    for raw, y in progress_bar(loader, desc=f"epoch {epoch}", unit="batch", enabled=progress, leave=False):
        logits = net(run.input.prepare(raw))
        loss = loss_fn(logits, y)
        optimizer_step(optimizer, loss, epoch, "pairs")
        known = y >= 0
        total_loss += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1)[known] == y[known]).sum())
        labelled += int(known.sum())
        seen += len(y)
    return total_loss, correct, labelled, seen, time.perf_counter() - start


@torch.no_grad()
def _validate(run: SegmentationRun, loss_fn, names: list[str]) -> tuple[float, dict]:
    """Validation loss and pixel scores (unlabelled pixels left out)."""
    run.model.eval()
    confusion = np.zeros((len(names), len(names)), np.int64)
    losses, seen = 0.0, 0
    for raw, y in run.loader(run.val, False):
        logits = run.model(run.input.prepare(raw))
        losses += float(loss_fn(logits, y)) * len(y)
        seen += len(y)
        add_to_confusion(confusion, y.numpy(), logits.argmax(1).numpy())
    return losses / seen, pixel_scores(confusion, names)
