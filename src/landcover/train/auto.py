"""Mode auto: train the spectral, fused, spectral-gbt and finetune candidates on the same chips, keep the cheapest
one that no costlier candidate clearly beats on the validation chips, and record the comparison.

Each candidate is an ordinary run in ``<run>/candidates/<name>`` (spectral with a random forest, fused with logistic
regression, spectral-gbt with gradient-boosted trees, finetune with the run's own settings), which writes its
validation predictions. Going up in cost, a candidate replaces the one kept so far only when its validation macro-F1
is higher in at least `SURE` of the paired bootstrap resamples of the validation chips: a validation split of a
hundred chips cannot tell a one-chip difference from a better model, and the fine-tune score is the best of its
epochs, so already picked on those chips. The chosen candidate's bundle, metrics and curves are copied to the run
folder, so that evaluate and predict take the auto run as they take any other; its summary.json names the winner and
lists every candidate's scores, training time and share of resamples won. A candidate that finished is not trained
again on --resume; a fine-tune candidate that stopped continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from landcover.atomic import temp_path
from landcover.errors import LandcoverError
from landcover.evaluate import share_better
from landcover.train.config import TrainConfig
from landcover.train.runs import dump_json, read_val_predictions

CANDIDATES = {"spectral": ("spectral", "rf"), "fused": ("fused", "logreg"), "spectral-gbt": ("spectral", "gbt"),
              "finetune": ("finetune", None)}
"""Name: (mode, head), in order of training cost."""
SURE = 0.9
"""The share of bootstrap resamples a costlier candidate must win to replace a cheaper one."""
COPIED = ("bundle", "metrics.csv", "curves.png")


def train_auto(config: TrainConfig, out: Path, progress: bool, train: Callable[..., Path]) -> dict:
    """Train each candidate under out/candidates (reusing finished ones), copy the best to out; the summary."""
    scores = {}
    for name, (mode, head) in CANDIDATES.items():
        folder = out / "candidates" / name
        started = time.perf_counter()
        if not (folder / "bundle" / "model.json").exists():
            if progress:
                print(f"auto: training the {name} candidate")
            candidate = dataclasses.replace(config, mode=mode, head=head, runs=str(folder.parent), name=name,
                                            mlflow_uri=None, extra=dict(config.extra))
            candidate.check()
            resume = (folder / "checkpoints" / "last").exists()
            train(config=candidate, resume=resume, overwrite=not resume and folder.exists(), progress=progress)
            summary = json.loads((folder / "summary.json").read_text())
            dump_json(folder / "summary.json", {**summary, "train_s": round(time.perf_counter() - started, 2)})
        summary = json.loads((folder / "summary.json").read_text())
        scores[name] = {"val_macro_f1": summary["best_val_macro_f1"], "val_acc": summary.get("val_acc"),
                        "head": summary.get("head"), "train_s": summary.get("train_s")}
    chosen = _choose(out, scores)
    source = out / "candidates" / chosen
    for name in COPIED:
        _copy(source / name, out / name)
    chosen_summary = json.loads((source / "summary.json").read_text())
    summary = {"mode": "auto", "chosen": chosen, "rule": f"a costlier candidate replaces the one kept when it wins "
                                                          f"{SURE:.0%} of 1000 paired bootstrap resamples of the "
                                                          f"validation chips (macro-F1)",
               "head": scores[chosen]["head"],
               "best_epoch": chosen_summary.get("best_epoch"), "best_val_macro_f1": scores[chosen]["val_macro_f1"],
               "val_acc": scores[chosen]["val_acc"], "candidates": scores,
               **({"onnx": chosen_summary["onnx"]} if "onnx" in chosen_summary else {})}
    dump_json(out / "summary.json", summary)
    if progress:
        table = ", ".join(f"{m} {s['val_macro_f1']:.3f}" for m, s in scores.items())
        print(f"auto: kept {chosen} (validation macro-F1: {table})")
    return summary


def _choose(out: Path, scores: dict[str, dict]) -> str:
    """The cheapest candidate no costlier one beats in SURE of the resamples; each candidate's share is recorded."""
    names = list(CANDIDATES)
    found = {name: read_val_predictions(out / "candidates" / name) for name in names}
    chips, y, _ = found[names[0]]
    if any(ids != chips for ids, _, _ in found.values()):
        raise LandcoverError("the candidates were validated on different chips: train the auto run again with "
                             "--overwrite", out / "candidates")
    classes = 1 + max(int(max(labels.max(), pred.max())) for _, labels, pred in found.values())
    kept = names[0]
    for name in names[1:]:
        share = share_better(y, found[kept][2], found[name][2], classes)
        scores[name]["share_better_than_kept"] = {"kept": kept, "share": share}
        if share >= SURE:
            kept = name
    return kept


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
