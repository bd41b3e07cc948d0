"""`train_model`: a run from its settings to a bundle: a classical head on fixed features (frozen network,
spectral or both), fine-tuning, a segmentation network, or auto (the best of spectral, fused, spectral-gbt and
finetune)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from landcover.atomic import check_output, write_text
from landcover.errors import LandcoverError
from landcover.locks import output_lock
from landcover.train.auto import train_auto
from landcover.train.config import TrainConfig
from landcover.train.finetune import fine_tune
from landcover.train.frozen import fit_features
from landcover.train.pixels import train_pixels
from landcover.train.run import Run
from landcover.train.runs import dump_json, read_metrics, run_dir
from landcover.train.segmentation import SegmentationRun, train_segmentation


def train_model(manifest: str | Path | None = None, *, config: str | Path | TrainConfig | None = None,
                resume: bool = False, overwrite: bool = False, progress: bool = True, **settings: object) -> Path:
    """Train a land-cover classifier on the chips of a split manifest (or, with task='segmentation', a per-pixel
    network on image/mask pairs); return the run folder (bundle in bundle/).

    `manifest` is a manifest.parquet or its chips folder. `config` is a YAML/JSON file or a `TrainConfig`;
    `settings` are its keys (task, mode, architecture, encoder, loss, weights, head, epochs, lr, name, runs, ...;
    see `TrainConfig`) and override the file. `resume=True` continues the run `name` from its last checkpoint;
    `overwrite=True` replaces a run of that name.

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
    if resume and not _resumable(out):
        raise LandcoverError("nothing to resume (no checkpoints/last)", out)
    check_output(out, "folder")
    rank = int(os.environ.get("RANK", 0))
    new_runs = not out.parent.exists()
    try:
        _train(config, out, resume, overwrite, progress, rank)
    except BaseException:
        if rank == 0 and new_runs and out.parent.is_dir() and not any(out.parent.iterdir()):
            out.parent.rmdir()  # a refused first run leaves no empty runs/ behind
        raise
    if config.mlflow_uri and rank == 0:
        from landcover.train.tracking import log_to_mlflow

        run_id = log_to_mlflow(config.mlflow_uri, out, config.to_dict(), read_metrics(out))
        if progress:
            print(f"logged to MLflow ({config.mlflow_uri}): run {run_id}")
    return out


def _train(config: TrainConfig, out: Path, resume: bool, overwrite: bool, progress: bool, rank: int) -> None:
    with output_lock(out) if rank == 0 else contextlib.nullcontext():
        torch.manual_seed(config.seed)
        # checks before writing (auto: each candidate checks its own)
        run = (SegmentationRun(config) if config.task == "segmentation"
               else None if config.mode == "auto" or config.task == "pixels" else Run(config))
        if rank == 0:
            if overwrite:
                shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        try:
            if config.task == "segmentation":
                train_segmentation(run, out, resume, progress)
            elif config.task == "pixels":
                train_pixels(config, out, progress)
            elif config.mode == "auto":
                train_auto(config, out, progress, train_model)
            elif config.mode in ("features", "spectral", "fused"):
                fit_features(run, out, progress)
            else:
                fine_tune(run, out, resume, progress)
        except BaseException:
            if rank == 0 and not _resumable(out):  # nothing to resume: leave nothing
                shutil.rmtree(out, ignore_errors=True)
            raise
        if rank == 0 and config.mode != "auto":  # auto copies its chosen candidate's graph
            _write_graph(out, config.onnx)


def _resumable(out: Path) -> bool:
    """Whether a run folder holds work to continue: a checkpoint, or (auto) a candidate's."""
    return (out / "checkpoints" / "last").exists() or any((out / "candidates").glob("*/summary.json")) or any(
        (out / "candidates").glob("*/checkpoints/last"))


def _write_graph(out: Path, wanted: bool) -> None:
    """Export the bundle's network to bundle/model.onnx (for predict's default runtime) when asked and onnx is
    installed; summary.json's 'onnx' says what happened. A network that will not export is a note, not a failure:
    the bundle still runs on torch."""
    if not wanted:
        note = "not written (--no-onnx): predict runs on torch"
    elif (kind := json.loads((out / "bundle" / "model.json").read_text())["kind"]) in ("spectral", "pixels"):
        note = f"not written (a {kind} bundle has no network: its head runs on numpy)"
    else:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            note = "not written (onnx and onnxruntime are not installed): predict runs on torch"
        else:
            from landcover.onnx_graph import ONNX_RECORD, export_onnx

            started = time.perf_counter()
            try:
                graph = export_onnx(out / "bundle")
            except LandcoverError as exc:
                note = f"not written ({exc}): predict runs on torch"
            else:
                diff = json.loads((graph.parent / ONNX_RECORD).read_text())["max_abs_diff"]
                note = (f"bundle/model.onnx written in {time.perf_counter() - started:.1f} s (probabilities within "
                        f"{diff:.1e} of torch): predict runs it on onnxruntime")
    summary = out / "summary.json"
    dump_json(summary, {**(json.loads(summary.read_text()) if summary.exists() else {}), "onnx": note})
