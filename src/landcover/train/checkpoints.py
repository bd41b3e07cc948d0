"""Training checkpoints without pickles: model and optimizer tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from landcover.atomic import temp_path, write_text
from landcover.errors import LandcoverError, refuse_pickle


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as tensors (for safetensors) and plain data (for JSON)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, state: dict) -> None:
    """Write model.safetensors, optimizer.safetensors and state.json into `folder`, atomically as a whole."""
    tmp = temp_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, meta = _optimizer_split(optimizer)
    save_file(tensors, tmp / "optimizer.safetensors")
    meta["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    write_text(tmp / "state.json", json.dumps({**state, "optimizer": meta}, indent=1, default=float))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict:
    """Restore what save_checkpoint wrote; returns the training state (epoch, best score, ...)."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        for stray in folder.glob("*"):
            refuse_pickle(stray)
        raise LandcoverError("no checkpoint here (model.safetensors is missing)", folder)
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(weights))
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_join(load_file(folder / "optimizer.safetensors"), state["optimizer"]))
    if scheduler is not None and state["optimizer"].get("scheduler"):
        scheduler.load_state_dict(state["optimizer"]["scheduler"])
    return state


def close_epoch(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None, state: dict, epoch: int, score: float,
                every: int, last_epoch: int) -> None:
    """After an epoch scored `score` on validation: update the run state (best score and epoch, epochs without
    improvement), save checkpoints/best when it improved and checkpoints/last every `every` epochs and at the
    end."""
    improved = score > state["best_score"]
    state.update(epoch=epoch, stale=0 if improved else state["stale"] + 1)
    if improved:
        state.update(best_score=score, best_epoch=epoch)
        save_checkpoint(out / "checkpoints" / "best", model, optimizer, scheduler, state)
    if epoch % every == 0 or epoch == last_epoch:
        save_checkpoint(out / "checkpoints" / "last", model, optimizer, scheduler, state)


def start_or_resume(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule,
                    resume: bool) -> tuple[dict, list[dict]]:
    """A training loop's state (epoch, best score and epoch, epochs without improvement) and its metrics rows:
    fresh, or with `resume` as checkpoints/last left them (model, optimizer and schedule restored)."""
    from landcover.train.runs import read_metrics

    if not resume:
        return {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "stale": 0}, []
    state = load_checkpoint(out / "checkpoints" / "last", model, optimizer, schedule)
    return state, [r for r in read_metrics(out) if r["epoch"] <= state["epoch"]]
