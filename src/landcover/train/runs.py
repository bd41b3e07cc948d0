"""The run folder (runs/<name>/: metrics.csv, curves.png, JSON records) and the run history: the runs in a
folder with their key settings and scores, and side-by-side comparisons."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from landcover.atomic import write_text
from landcover.errors import LandcoverError
from landcover.train.config import TrainConfig

COLUMNS = ("run", "task", "mode", "architecture", "weights", "train_from", "head", "epochs", "best_epoch",
           "val_acc", "val_macro_f1", "val_miou", "images_per_s")


def run_row(folder: Path) -> dict:
    """One run's settings and scores (its best epoch's validation metrics)."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    metrics = read_metrics(folder)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    best_epoch = summary.get("best_epoch")
    best = next((r for r in metrics if r.get("epoch") == best_epoch), metrics[-1] if metrics else {})
    return {"run": folder.name, "task": config.get("task", "classification"), "mode": config.get("mode"),
            "architecture": config.get("architecture"),
            "weights": config.get("weights"),
            "train_from": config.get("train_from") if config.get("mode") == "finetune" else None,
            "head": summary.get("head", config.get("head")) if config.get("mode") != "finetune" else None,
            "epochs": len(metrics), "best_epoch": best_epoch, "val_acc": best.get("val_acc"),
            "val_macro_f1": best.get("val_macro_f1"), "val_miou": best.get("val_miou"),
            "images_per_s": best.get("images_per_s"),
            "finished": (folder / "bundle" / "model.json").exists()}


def list_runs(runs: str | Path = "runs") -> pd.DataFrame:
    """Every training run under a folder, newest first: a table of its settings, best epoch and validation
    scores (one row per run folder holding a config.yaml; `finished` says whether its bundle was written)."""
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


def run_dir(config: TrainConfig) -> Path:
    """The run's folder: runs/<name> (name defaults to mode-architecture-time)."""
    kind = f"pixels-{config.head}" if config.task == "pixels" else f"{config.mode}-{config.architecture}"
    name = config.name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(config.runs) / name


def write_metrics(out: Path, rows: list[dict]) -> None:
    """metrics.csv (one row per epoch) and curves.png."""
    from landcover.plots import training_curves

    fields = list(rows[0])
    lines = [",".join(fields)] + [",".join(_cell(r.get(f)) for f in fields) for r in rows]
    write_text(out / "metrics.csv", "\n".join(lines) + "\n")
    training_curves(rows, out / "curves.png", title=out.name)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def read_metrics(out: Path) -> list[dict]:
    """metrics.csv back as rows of numbers."""
    path = out / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str) -> float | str | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def write_val_predictions(out: Path, chip_ids: list[str], y: np.ndarray, pred: np.ndarray) -> None:
    """val_predictions.csv: the validation chips' label_id and the bundle's predicted id (what mode auto compares)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["chip_id", "label_id", "predicted_id"])
    writer.writerows([c, int(a), int(b)] for c, a, b in zip(chip_ids, y, pred, strict=True))
    write_text(out / "val_predictions.csv", text.getvalue())


def read_val_predictions(out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A run's val_predictions.csv: chip ids, label ids, predicted ids."""
    with open(out / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return ([r["chip_id"] for r in rows], np.array([int(r["label_id"]) for r in rows], dtype=np.int64),
            np.array([int(r["predicted_id"]) for r in rows], dtype=np.int64))


def dump_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(data, indent=2, default=str))
