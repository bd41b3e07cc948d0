"""A classical head (logistic regression, random forest or gradient-boosted trees) on fixed features: a frozen
pretrained network's (mode features), the chips' spectral features (mode spectral), or both side by side
(mode fused)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from landcover.bundle import save_bundle
from landcover.evaluate import macro_f1
from landcover.models.backbones import pooled_features
from landcover.models.heads import fit_head
from landcover.train.features import extract_features
from landcover.train.run import Run
from landcover.train.runs import dump_json, write_metrics, write_val_predictions


def fit_features(run: Run, out: Path, progress: bool) -> Path:
    """Featurize train and val chips once (cached), fit the head, write metrics and the bundle."""
    config = run.config
    model = run.model.eval() if run.model is not None else None
    for p in model.parameters() if model is not None else ():
        p.requires_grad_(False)
    train = run.train
    if config.sample_frac < 1:
        keep = train.frame.sample(frac=config.sample_frac, random_state=config.seed).index
        train = type(train)(train.path, frame=train.frame.loc[keep].reset_index(drop=True))
    train.augment = False
    cache = Path(config.runs) / ".features-cache"
    bundle = run.bundle(config.mode)
    base_key = {"mode": config.mode, "input": run.input.to_dict(),
                "spectral": bundle.spectral.to_dict() if bundle.spectral else None,
                "manifest_sha256": bundle.provenance["manifest_sha256"]}
    if model is not None:
        base_key.update(architecture=config.architecture, weights=config.weights)

    def featurize(raw: torch.Tensor) -> torch.Tensor:
        pooled = None if model is None else pooled_features(model, run.input.prepare(raw)).numpy()
        return torch.from_numpy(bundle.head_input(pooled, raw))

    start = time.perf_counter()
    x_train, y_train = extract_features(featurize, run.loader(train, False), cache,
                                        {**base_key, "split": config.train_split, "rows": len(train),
                                         "sample_frac": config.sample_frac, "seed": config.seed}, progress)
    x_val, y_val = extract_features(featurize, run.loader(run.val, False), cache,
                                    {**base_key, "split": config.val_split, "rows": len(run.val)}, progress)
    featurized = time.perf_counter() - start
    start = time.perf_counter()
    head = fit_head(config.head, x_train, y_train, len(run.classes), seed=config.seed,  # gbt: always balanced
                    **({"class_weight": "balanced"} if config.class_weights == "balanced" else {}))
    fitted = time.perf_counter() - start
    probs = head.predict_proba(x_val) if hasattr(head, "predict_proba") else None
    pred = np.asarray(probs).argmax(1)
    train_pred = np.asarray(head.predict_proba(x_train)).argmax(1)
    row = {"epoch": 1, "train_acc": float((train_pred == y_train).mean()), "val_acc": float((pred == y_val).mean()),
           "val_macro_f1": macro_f1(y_val, pred, len(run.classes)), "featurize_s": featurized, "fit_s": fitted,
           "images_per_s": (len(y_train) + len(y_val)) / max(featurized, 1e-9)}
    write_metrics(out, [row])
    write_val_predictions(out, list(run.val.frame["chip_id"]), y_val, pred)
    save_bundle(run.bundle(config.mode, head), out / "bundle")
    dump_json(out / "summary.json", {"mode": config.mode, "head": config.head, "best_epoch": 1,
                                     "best_val_macro_f1": row["val_macro_f1"], "val_acc": row["val_acc"],
                                     "features": x_train.shape[1]})
    if progress:
        what = {"features": f"frozen {config.architecture} features", "spectral": "spectral features",
                "fused": f"frozen {config.architecture} + spectral features"}[config.mode]
        print(f"{config.head} on {what}: val acc {row['val_acc']:.3f}, macro-F1 {row['val_macro_f1']:.3f} "
              f"({len(y_train)} train / {len(y_val)} val chips)")
    return out
