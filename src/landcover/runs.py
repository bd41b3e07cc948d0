"""Run history: the runs in a folder with their key settings and scores, and side-by-side comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from landcover.errors import LandcoverError
from landcover.train import read_metrics

COLUMNS = ("run", "mode", "architecture", "weights", "train_from", "head", "epochs", "best_epoch",
           "val_acc", "val_macro_f1", "images_per_s")


def run_row(folder: Path) -> dict:
    """One run's settings and scores (its best epoch's validation metrics)."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    metrics = read_metrics(folder)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    best_epoch = summary.get("best_epoch")
    best = next((r for r in metrics if r.get("epoch") == best_epoch), metrics[-1] if metrics else {})
    return {"run": folder.name, "mode": config.get("mode"), "architecture": config.get("architecture"),
            "weights": config.get("weights"),
            "train_from": config.get("train_from") if config.get("mode") == "finetune" else None,
            "head": config.get("head") if config.get("mode") == "features" else None,
            "epochs": len(metrics), "best_epoch": best_epoch, "val_acc": best.get("val_acc"),
            "val_macro_f1": best.get("val_macro_f1"), "images_per_s": best.get("images_per_s"),
            "finished": (folder / "bundle" / "model.json").exists()}


def list_runs(runs: str | Path = "runs") -> pd.DataFrame:
    """Every run under a folder (newest first)."""
    root = Path(runs)
    folders = sorted((p for p in root.glob("*/config.yaml")), key=lambda p: p.stat().st_mtime, reverse=True)
    rows = [run_row(p.parent) for p in folders]
    return pd.DataFrame(rows, columns=[*COLUMNS, "finished"])


def compare(runs: list[str | Path], out: str | Path | None = None) -> tuple[pd.DataFrame, Path | None]:
    """A table of the runs' settings and scores, and (with out) their curves drawn on one figure."""
    from landcover.plots import compare_curves

    folders = [Path(r) for r in runs]
    for folder in folders:
        if not (folder / "config.yaml").exists():
            raise LandcoverError("not a run folder (no config.yaml)", folder)
    table = pd.DataFrame([run_row(f) for f in folders], columns=[*COLUMNS, "finished"])
    figure = compare_curves({f.name: read_metrics(f) for f in folders}, Path(out)) if out else None
    return table, figure
