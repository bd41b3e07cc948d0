"""A model bundle on the chips of a manifest: class probabilities per chip, and the evaluation report of a split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landcover.bundle import Bundle, load_bundle
from landcover.errors import LandcoverError
from landcover.evaluate import Report, evaluate_predictions, write_report
from landcover.progress import progress_bar
from landcover.train.data import ChipDataset


def check_compatible(bundle: Bundle, dataset: ChipDataset) -> None:
    """Refuse chips the bundle cannot read: too few bands, or classes it does not know."""
    bundle.require_classifier("evaluation")
    chip = dataset.read(0)
    need = max(bundle.input.bands) + 1
    if chip.shape[0] < need:
        raise LandcoverError(f"the bundle reads {need} bands but the chips have {chip.shape[0]}", dataset.path)
    known = {c["name"]: c["id"] for c in bundle.classes}
    names = dict(zip(dataset.frame["label"], dataset.frame["label_id"], strict=True))
    wrong = sorted(n for n, i in names.items() if known.get(n) != i)
    if wrong:
        raise LandcoverError(f"classes {wrong} are not the bundle's classes (or have other ids)", dataset.path)


@torch.no_grad()
def predict_dataset(bundle: Bundle, dataset: ChipDataset, batch_size: int = 64,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, classes) and true label ids for every chip of a dataset."""
    check_compatible(bundle, dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs, labels = [], []
    for raw, y in progress_bar(loader, desc="predict", unit="batch", enabled=progress, leave=False):
        probs.append(bundle.predict_proba(raw))
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def evaluate_bundle(bundle_path: str | Path, manifest: str | Path, split: str, out: str | Path | None = None,
                    progress: bool = True) -> tuple[Report, Path]:
    """Score a model bundle on the chips of one split of a manifest; write the report folder (report.json,
    confusion.png, summary.txt; default <bundle>/../eval-<split>) and return the report and that folder.

        report, folder = evaluate_bundle("runs/lite0-lr/bundle", "chips/", "test")
        print(report.summary())
    """
    bundle = load_bundle(bundle_path)
    dataset = ChipDataset(manifest, split)
    probs, labels = predict_dataset(bundle, dataset, progress=progress)
    report = evaluate_predictions(labels, probs, [c["name"] for c in bundle.classes],
                                  chip_ids=list(dataset.frame["chip_id"]))
    out = Path(out) if out else Path(bundle_path).parent / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out, title=f"{Path(bundle_path).parent.name} on {split}")
    return report, out
