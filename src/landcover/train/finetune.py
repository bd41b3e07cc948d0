"""Fine-tuning at a chosen depth: the epoch loop, checkpoints, exact resume, early stopping, DDP."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from landcover.bundle import save_bundle
from landcover.errors import LandcoverError
from landcover.evaluate import macro_f1
from landcover.models.backbones import apply_bn_mode, set_trainable
from landcover.progress import progress_bar
from landcover.train.checkpoints import close_epoch, load_checkpoint, start_or_resume
from landcover.train.config import TrainConfig
from landcover.train.run import Run
from landcover.train.runs import dump_json, write_metrics, write_val_predictions


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW over the trainable parameters."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped once per epoch."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    if config.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def class_weights(run: Run) -> torch.Tensor | None:
    """Inverse-frequency weights ('balanced'), or None."""
    if run.config.class_weights != "balanced":
        return None
    counts = np.bincount(run.train.labels, minlength=len(run.classes)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(run.classes) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, epoch: int, what: str) -> None:
    """Backpropagate a batch's loss and step; a NaN or infinite loss stops the run with what to try."""
    if not torch.isfinite(loss):
        raise LandcoverError(f"the loss became {loss.item()} in epoch {epoch}: lower the learning rate "
                             f"(now {optimizer.param_groups[0]['lr']:g}) or check the {what} for NaN pixels")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def start_distributed() -> tuple[int, int]:
    """(world size, rank) under torchrun (gloo, which runs on CPU), else (1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return world, int(os.environ.get("RANK", 0))


def epoch_sampler(dataset, world: int, rank: int, seed: int, epoch: int):
    """This rank's share of the training set for an epoch (None in one process: the loader shuffles)."""
    if world == 1:
        return None
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, world, rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def summed(world: int, *values: float) -> list[float]:
    """Values summed over the ranks (as they are in one process)."""
    if world == 1:
        return list(values)
    totals = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(totals)
    return totals.tolist()


def rank0_says_stop(world: int, stop: bool) -> bool:
    """Rank 0's early-stopping decision, the same on every rank."""
    flag = torch.tensor([int(stop)])
    if world > 1:
        dist.broadcast(flag, 0)
    return bool(flag.item())


def end_distributed(world: int) -> None:
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def fine_tune(run: Run, out: Path, resume: bool, progress: bool) -> Path:
    """Train the network for the configured epochs; keep last/best checkpoints and write the bundle."""
    config = run.config
    world, rank = start_distributed()
    model = run.model
    trainable = set_trainable(model, config.train_from, config.freeze_bn)
    if not trainable:
        raise LandcoverError(f"train_from {config.train_from!r} leaves no parameter to train")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params)
    schedule = make_schedule(config, optimizer)
    state, rows = start_or_resume(out, model, optimizer, schedule, resume)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(run))
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        torch.manual_seed(config.seed * 1000 + epoch)
        sampler = epoch_sampler(run.train, world, rank, config.seed, epoch)
        loss, acc, seconds, seen = _train_epoch(run, net, optimizer, loss_fn, run.loader(run.train, True, epoch,
                                                                                        sampler),
                                                progress and rank == 0, epoch)
        schedule.step()
        loss_sum, correct, seen = summed(world, loss * seen, acc * seen, seen)
        loss, acc, seen = loss_sum / seen, correct / seen, int(seen)
        if rank == 0:
            val_loss, val_acc, val_f1, _ = _validate(run, model, loss_fn)
            rows.append({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss,
                         "train_acc": acc, "val_loss": val_loss, "val_acc": val_acc, "val_macro_f1": val_f1,
                         "images_per_s": seen / seconds, "seconds": seconds})
            close_epoch(out, model, optimizer, schedule, state, epoch, val_f1, config.checkpoint_every, config.epochs)
            write_metrics(out, rows)
            if progress:
                print(f"epoch {epoch}/{config.epochs}: train loss {loss:.4f} acc {acc:.3f} | val loss "
                      f"{val_loss:.4f} acc {val_acc:.3f} macro-F1 {val_f1:.3f} | {seen / seconds:.0f} img/s")
        if rank0_says_stop(world, config.early_stopping > 0 and state["stale"] >= config.early_stopping):
            if rank == 0:
                print(f"early stopping: no better val macro-F1 for {config.early_stopping} epochs")
            break
    if rank == 0:
        load_checkpoint(out / "checkpoints" / "best", model)
        _, val_acc, _, (y, pred) = _validate(run, model, loss_fn)
        write_val_predictions(out, list(run.val.frame["chip_id"]), y, pred)
        save_bundle(run.bundle("finetune"), out / "bundle")
        dump_json(out / "summary.json", {"mode": "finetune", "best_epoch": state["best_epoch"],
                                         "best_val_macro_f1": state["best_score"], "val_acc": val_acc,
                                         "epochs_run": rows[-1]["epoch"] if rows else 0})
    del net  # DDP's reducer goes while its process group lives (freed after, it can deadlock in gloo)
    end_distributed(world)
    return out


def _train_epoch(run: Run, net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: torch.nn.Module,
                 loader: torch.utils.data.DataLoader, progress: bool, epoch: int) -> tuple[float, float, float, int]:
    """One pass over the training chips: mean loss, accuracy, seconds, images."""
    net.train()
    apply_bn_mode(net.module if hasattr(net, "module") else net, run.config.freeze_bn)
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for raw, y in progress_bar(loader, desc=f"epoch {epoch}", unit="batch", enabled=progress, leave=False):
        x = run.input.prepare(raw)
        logits = net(x)
        loss = loss_fn(logits, y)
        optimizer_step(optimizer, loss, epoch, "chips")
        total_loss += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / seen, correct / seen, time.perf_counter() - start, seen


@torch.no_grad()
def _validate(run: Run, model: torch.nn.Module,
              loss_fn: torch.nn.Module) -> tuple[float, float, float, tuple[np.ndarray, np.ndarray]]:
    """Validation loss, accuracy, macro F1, and the (labels, predictions) they come from."""
    model.eval()
    losses, preds, ys = 0.0, [], []
    for raw, y in run.loader(run.val, False):
        logits = model(run.input.prepare(raw))
        losses += float(loss_fn(logits, y)) * len(y)
        preds.append(logits.argmax(1).numpy())
        ys.append(y.numpy())
    pred, y = np.concatenate(preds), np.concatenate(ys)
    return losses / len(y), float((pred == y).mean()), macro_f1(y, pred, len(run.classes)), (y, pred)
