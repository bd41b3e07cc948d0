"""`train_model`: a run from its settings to a bundle, by frozen features or by fine-tuning."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
import yaml

from landcover.atomic import check_output, write_text
from landcover.errors import LandcoverError
from landcover.locks import output_lock
from landcover.train.config import TrainConfig
from landcover.train.finetune import fine_tune
from landcover.train.frozen import fit_features
from landcover.train.run import Run
from landcover.train.runs import read_metrics, run_dir


def train_model(manifest: str | Path | None = None, *, config: str | Path | TrainConfig | None = None,
                resume: bool = False, overwrite: bool = False, progress: bool = True, **settings: object) -> Path:
    """Train a land-cover classifier on the chips of a split manifest; return the run folder (bundle in bundle/).

    `manifest` is a manifest.parquet or its chips folder. `config` is a YAML/JSON file or a `TrainConfig`;
    `settings` are its keys (mode, architecture, weights, head, epochs, lr, name, runs, ...; see `TrainConfig`)
    and override the file. `resume=True` continues the run `name` from its last checkpoint; `overwrite=True`
    replaces a run of that name.

        run = train_model("chips/", mode="features", head="logreg", input_size=64, name="lite0-lr")
    """
    if isinstance(config, TrainConfig):
        if manifest is not None or settings:
            raise LandcoverError("give either a TrainConfig or a manifest and settings, not both")
        config.check()
    else:
        config = TrainConfig.load(config, {"manifest": None if manifest is None else str(manifest), **settings})
    out = run_dir(config)
    if resume and overwrite:
        raise LandcoverError("--resume continues a run and --overwrite replaces it: choose one")
    if out.exists() and not (resume or overwrite) and (out / "config.yaml").exists():
        raise LandcoverError("the run folder exists: pass --resume to continue it, --overwrite to replace it, or "
                             "choose another --name", out)
    if resume and not (out / "checkpoints" / "last").exists():
        raise LandcoverError("nothing to resume (no checkpoints/last)", out)
    check_output(out, "folder")
    rank = int(os.environ.get("RANK", 0))
    with output_lock(out) if rank == 0 else contextlib.nullcontext():
        torch.manual_seed(config.seed)
        run = Run(config)
        if rank == 0:
            if overwrite:
                shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        try:
            if config.mode == "features":
                fit_features(run, out, progress)
            else:
                fine_tune(run, out, resume, progress)
        except BaseException:
            if rank == 0 and not (out / "checkpoints" / "last").exists():  # nothing to resume: leave nothing
                shutil.rmtree(out, ignore_errors=True)
            raise
    if config.mlflow_uri and rank == 0:
        from landcover.train.tracking import log_to_mlflow

        run_id = log_to_mlflow(config.mlflow_uri, out, config.to_dict(), read_metrics(out))
        if progress:
            print(f"logged to MLflow ({config.mlflow_uri}): run {run_id}")
    return out
