"""Mode auto: train the spectral, fused and finetune candidates on the same chips, keep the one with the best
validation macro-F1, and record the comparison.

Each candidate is an ordinary run in ``<run>/candidates/<mode>`` (spectral with a random forest, fused with
logistic regression, finetune with the run's own settings). The chosen candidate's bundle, metrics and curves are
copied to the run folder, so that evaluate and predict take the auto run as they take any other; its
summary.json says which candidate won and lists every candidate's scores and training time. A tie goes to the
cheaper candidate (spectral, then fused). A candidate that finished is not trained again on --resume; a fine-tune
candidate that stopped continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from landcover.atomic import temp_path
from landcover.train.config import TrainConfig
from landcover.train.runs import dump_json

CANDIDATES = ("spectral", "fused", "finetune")
"""In order of cost: the first of equal scores is kept."""
COPIED = ("bundle", "metrics.csv", "curves.png")


def train_auto(config: TrainConfig, out: Path, progress: bool, train: Callable[..., Path]) -> dict:
    """Train each candidate under out/candidates (reusing finished ones), copy the best to out; the summary."""
    scores = {}
    for mode in CANDIDATES:
        folder = out / "candidates" / mode
        started = time.perf_counter()
        if not (folder / "bundle" / "model.json").exists():
            if progress:
                print(f"auto: training the {mode} candidate")
            candidate = dataclasses.replace(config, mode=mode, head=None, runs=str(folder.parent), name=mode,
                                            mlflow_uri=None, extra=dict(config.extra))
            candidate.check()
            resume = (folder / "checkpoints" / "last").exists()
            train(config=candidate, resume=resume, overwrite=not resume and folder.exists(), progress=progress)
            summary = json.loads((folder / "summary.json").read_text())
            dump_json(folder / "summary.json", {**summary, "train_s": round(time.perf_counter() - started, 2)})
        summary = json.loads((folder / "summary.json").read_text())
        scores[mode] = {"val_macro_f1": summary["best_val_macro_f1"], "val_acc": summary.get("val_acc"),
                        "head": summary.get("head"), "train_s": summary.get("train_s")}
    chosen = max(CANDIDATES, key=lambda m: (scores[m]["val_macro_f1"], -CANDIDATES.index(m)))
    source = out / "candidates" / chosen
    for name in COPIED:
        _copy(source / name, out / name)
    chosen_summary = json.loads((source / "summary.json").read_text())
    summary = {"mode": "auto", "chosen": chosen, "head": scores[chosen]["head"],
               "best_epoch": chosen_summary.get("best_epoch"), "best_val_macro_f1": scores[chosen]["val_macro_f1"],
               "val_acc": scores[chosen]["val_acc"], "candidates": scores,
               **({"onnx": chosen_summary["onnx"]} if "onnx" in chosen_summary else {})}
    dump_json(out / "summary.json", summary)
    if progress:
        table = ", ".join(f"{m} {s['val_macro_f1']:.3f}" for m, s in scores.items())
        print(f"auto: kept {chosen} (validation macro-F1: {table})")
    return summary


def _copy(source: Path, target: Path) -> None:
    """Copy a file or folder over target under a temporary name, then rename it into place."""
    if not source.exists():
        return
    tmp = temp_path(target)
    shutil.rmtree(tmp, ignore_errors=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp)
    if target.is_dir():
        shutil.rmtree(target)
    tmp.replace(target)
