"""A segmentation bundle scored per pixel on one split of a pairs manifest: report.json (pixel accuracy, per-class
precision, recall, F1 and IoU, mIoU, frequency-weighted IoU, kappa), the confusion matrix (JSON and PNG, counts and
row shares), summary.txt, and tiles.png (a few tiles: image | truth | prediction). Unlabelled pixels are left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from landcover.atomic import replacing, write_text
from landcover.bundle import Bundle, load_bundle
from landcover.errors import LandcoverError
from landcover.plots import confusion_matrix
from landcover.progress import progress_bar
from landcover.segment.data import PairDataset, pair_windows
from landcover.segment.metrics import add_to_confusion, pixel_scores

FIGURE_TILES = 4
"""Tiles drawn in tiles.png: those with the most labelled pixels, one per class where the split allows."""


def evaluate_segmentation(bundle_path: str | Path, manifest: str | Path, split: str = "test",
                          out: str | Path | None = None, batch_size: int = 16, progress: bool = True) -> tuple[dict,
                                                                                                              Path]:
    """Score a segmentation bundle on the pairs of one split; write the report folder (default
    <bundle>/../eval-<split>) and return the scores and that folder.

        scores, folder = evaluate_segmentation("runs/unet/bundle", "pairs/", "test")
        scores["miou"], scores["iou"]["Forest"]
    """
    bundle = load_bundle(bundle_path)
    if not bundle.per_pixel:
        raise LandcoverError("is a classification bundle: score it with `landcover evaluate` on class chips",
                             bundle.path)
    dataset = PairDataset(manifest, split)
    names = [c["name"] for c in bundle.classes]
    check_pairs(bundle, dataset)
    confusion = np.zeros((len(names), len(names)), np.int64)
    predictions = []
    if bundle.kind == "pixels":  # its filters read each pair's window from the imagery, with their context
        halo = bundle.pixels.halo_px(float(bundle.chip["res"]))
        for i, pixels, valid in progress_bar(pair_windows(dataset, halo),
                                         total=len(dataset), desc="evaluate", unit="tile", enabled=progress,
                                         leave=False):
            target = dataset.read(i)[1]
            pixels = np.where(valid, pixels, np.nan).astype(np.float32)  # off the imagery: no data, as predict reads
            p = bundle.pixel_proba(pixels[None])[0]
            predicted = p[:, halo:halo + target.shape[0], halo:halo + target.shape[1]].argmax(0)[None]
            add_to_confusion(confusion, target, predicted)
            predictions.append(predicted.astype(np.uint8))
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for raw, target in progress_bar(loader, desc="evaluate", unit="batch", enabled=progress, leave=False):
            predicted = bundle.predict_proba(raw).argmax(1)
            add_to_confusion(confusion, target.numpy(), predicted)
            predictions.append(predicted.astype(np.uint8))
    scores = {"bundle": str(Path(bundle_path).resolve()), "manifest": str(dataset.path), "split": split,
              "tiles": len(dataset), **pixel_scores(confusion, names)}
    out = Path(out) if out else Path(bundle_path).parent / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(bundle_path).parent.name} on {split}"
    write_text(out / "report.json", json.dumps(scores, indent=2))
    write_text(out / "confusion.json", json.dumps({"classes": names, "counts": scores["confusion"]}, indent=2))
    confusion_matrix(confusion, names, out / "confusion.png", title=f"{title}: pixels")
    write_text(out / "summary.txt", summary(scores, title) + "\n")
    tiles_figure(dataset, np.concatenate(predictions), bundle, out / "tiles.png", title)
    return scores, out


def check_pairs(bundle: Bundle, dataset: PairDataset) -> None:
    """Refuse pairs the bundle cannot score: too few bands, another class list, another tile size."""
    image = dataset.read(0)[0]
    need = max(bundle.input.bands) + 1
    if image.shape[0] < need:
        raise LandcoverError(f"the bundle reads {need} bands but the images have {image.shape[0]}", dataset.path)
    scheme = [c["name"] for c in dataset.info["scheme"]["classes"]]
    if scheme != [c["name"] for c in bundle.classes]:
        raise LandcoverError(f"the pairs' classes {scheme} are not the bundle's", dataset.path)


def summary(scores: dict, title: str = "") -> str:
    """A few lines for the terminal: the headline scores, then IoU and F1 per class present."""
    lines = [title] if title else []
    lines.append(f"{scores['pixels']:,} labelled pixels in {scores['tiles']} tiles: pixel accuracy "
                 f"{_f(scores['pixel_accuracy'])}, mIoU {_f(scores['miou'])}, frequency-weighted IoU "
                 f"{_f(scores['fwiou'])}, kappa {_f(scores['kappa'])}")
    lines.append(f"{'class':<14}{'pixels':>10}{'predicted':>11}{'precision':>11}{'recall':>8}{'F1':>7}{'IoU':>7}")
    for name, row in scores["per_class"].items():
        if row["pixels"] or row["predicted"]:
            lines.append(f"{name:<14}{row['pixels']:>10,}{row['predicted']:>11,}{_f(row['precision']):>11}"
                         f"{_f(row['recall']):>8}{_f(row['f1']):>7}{_f(row['iou']):>7}")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def tiles_figure(dataset: PairDataset, predicted: np.ndarray, bundle: Bundle, out: Path, title: str) -> Path:
    """Image | truth | prediction for a few tiles, in the scheme's colours (unlabelled truth in white)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    picks = _figure_tiles(dataset, FIGURE_TILES)
    colors = ListedColormap(["#ffffff"] + [c["color"] for c in bundle.classes])
    fig = Figure(figsize=(7.5, 2.5 * len(picks) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picks), 3, squeeze=False)
    for row, i in zip(axes, picks, strict=True):
        image, target = dataset.read(i)
        for ax, data, label in ((row[0], _display(image, bundle), "image"), (row[1], target + 1, "truth"),
                                (row[2], predicted[i].astype(np.int64) + 1, "prediction")):
            if label == "image":
                ax.imshow(data)
            else:
                ax.imshow(data, cmap=colors, vmin=0, vmax=len(bundle.classes), interpolation="nearest")
            ax.set_title(f"{label}: {dataset.frame['chip_id'].iat[i]}" if label == "image" else label, fontsize=7)
            ax.set_axis_off()
    shown = sorted({int(v) for i in picks for v in np.unique(dataset.read(i)[1]) if v >= 0}
                   | {int(v) for i in picks for v in np.unique(predicted[i])})
    fig.legend(handles=[Patch(color=bundle.classes[k]["color"], label=bundle.classes[k]["name"]) for k in shown],
               loc="outside lower center", ncols=min(4, max(1, len(shown))), fontsize=8)
    fig.suptitle(title, fontsize=10)
    with replacing(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _figure_tiles(dataset: PairDataset, n: int) -> list[int]:
    """Up to n tiles: for each class in turn, the tile where it covers most pixels, then the most labelled."""
    counts = np.stack([np.bincount(dataset.read(i)[1][dataset.read(i)[1] >= 0], minlength=dataset.n_classes)
                       for i in range(len(dataset))])
    picks: list[int] = []
    for k in np.argsort(-counts.sum(0)):
        if counts[:, k].sum() and len(picks) < n:
            best = int(np.argmax(np.where(np.isin(np.arange(len(counts)), picks), -1, counts[:, k])))
            if best not in picks:
                picks.append(best)
    for i in np.argsort(-counts.sum(1)):
        if len(picks) < min(n, len(dataset)) and int(i) not in picks:
            picks.append(int(i))
    return picks


def _display(image: np.ndarray, bundle: Bundle) -> np.ndarray:
    """An image's RGB bands (the bundle's rgb positions) stretched to [0, 1] with the bundle's scaling."""
    spec = bundle.input
    rgb = bundle.chip.get("rgb_bands") or ([0, 1, 2] if len(spec.bands) >= 3 else [0, 0, 0])
    channels = []
    for position in rgb:
        band = spec.bands[position]
        low, high = spec.low[position], spec.high[position]
        channels.append(np.clip((image[band].astype(np.float64) - low) / max(high - low, 1e-12), 0, 1))
    return np.stack(channels, axis=-1)
