"""Every figure in one place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from landcover.atomic import replacing
from landcover.schemes import ClassScheme


def chip_sheet(manifest: pd.DataFrame, root: str | Path, scheme: ClassScheme, out: str | Path,
               per_class: int = 8, scale: int = 4, seed: int = 0) -> Path:
    """A contact sheet: a row of sample chips per class, with the class colour, name and count."""
    root, out = Path(root), Path(out)
    counts = manifest["label"].value_counts()
    classes = [c for c in scheme.classes if c.name in counts.index]
    sample_px = int(manifest["size_px"].max()) * scale if len(manifest) else 64
    label_w, pad = 200, 6
    width = label_w + per_class * (sample_px + pad) + pad
    height = max(1, len(classes)) * (sample_px + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, cls in enumerate(classes):
        y = pad + i * (sample_px + pad)
        draw.rectangle([pad, y, pad + 18, y + 18], fill=cls.color, outline="black")
        draw.text((pad + 26, y + 3), f"{cls.name}  ({counts[cls.name]} chips)", fill="black")
        rows = manifest[manifest["label"] == cls.name]
        picks = rows.sample(min(per_class, len(rows)), random_state=seed)
        for j, path in enumerate(picks["path"]):
            with Image.open(root / path) as chip:
                chip = chip.convert("RGB") if chip.mode in ("RGB", "RGBA", "L") else chip
                chip = chip.resize((sample_px, sample_px), Image.NEAREST)
            sheet.paste(chip, (label_w + j * (sample_px + pad), y))
    with replacing(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out


def split_counts(counts: pd.DataFrame, out: str | Path, title: str = "chips per class and split") -> Path:
    """A grouped bar chart of chips per class (rows of `counts`) and split (its columns), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    fig = Figure(figsize=(max(6.0, 1.1 * len(counts) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, counts.shape[1])
    colors = {"train": "#4c72b0", "valid": "#dd8452", "test": "#55a868", "unused": "#b0b0b0"}
    for i, split in enumerate(counts.columns):
        xs = [j + (i - (counts.shape[1] - 1) / 2) * width for j in range(len(counts))]
        bars = ax.bar(xs, counts[split].to_numpy(), width, label=str(split), color=colors.get(str(split)))
        ax.bar_label(bars, fontsize=7, padding=1)
    positive = counts.to_numpy()[counts.to_numpy() > 0]
    log = len(positive) and positive.max() / positive.min() > 50
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(counts)), [str(c) for c in counts.index], rotation=30, ha="right")
    ax.set_ylabel("chips (log scale)" if log else "chips")
    ax.set_title(title, fontsize=10)
    ax.legend(title="split")
    with replacing(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def confusion_matrix(counts: np.ndarray, class_names: list[str], out: str | Path, title: str = "") -> Path:
    """Confusion matrix as two panels, counts (log colour) and shares of each true class, written atomically."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    out = Path(out)
    counts = np.asarray(counts, dtype=np.int64)
    k = len(class_names)
    support = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = counts / support[:, None]
    side = max(3.0, 0.42 * k)
    fig = Figure(figsize=(2 * side + 4.0, side + 1.8), layout="constrained")
    FigureCanvasAgg(fig)
    fontsize = max(5.0, min(9.0, 130 / max(k, 1)))
    panels = [
        (np.ma.masked_equal(counts, 0), LogNorm(vmin=1, vmax=max(2, int(counts.max()))), "Blues",
         "counts (log colour scale)", [f"{name} ({n})" for name, n in zip(class_names, support, strict=True)]),
        (np.ma.masked_invalid(shares), None, "Oranges", "share of each true class (diagonal = recall)",
         list(class_names)),
    ]
    for col, (values, norm, cmap_name, panel_title, ylabels) in enumerate(panels):
        ax = fig.add_subplot(1, 2, col + 1)
        cmap = colormaps[cmap_name].with_extremes(bad="white" if col == 0 else "#e6e6e6")
        image = ax.imshow(values, cmap=cmap, norm=norm, vmin=None if norm else 0.0, vmax=None if norm else 1.0,
                          interpolation="nearest", aspect="equal")
        fig.colorbar(image, ax=ax, shrink=0.8)
        if k <= 30:
            for i, j in zip(*np.nonzero(counts), strict=True):
                dark = (norm(counts[i, j]) if norm else shares[i, j]) > 0.6
                text = str(counts[i, j]) if col == 0 else f"{shares[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=fontsize + 1)
        ax.set_yticks(range(k), ylabels, fontsize=fontsize + 1)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (support)" if col == 0 else "true class")
        ax.set_title(panel_title, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    with replacing(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def new_figure(width: float = 9, height: float = 3.6, cols: int = 2):
    """A matplotlib figure on the Agg canvas (no display needed) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols)


def training_curves(rows: list[dict], out: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and validation."""
    fig, (loss_ax, acc_ax) = new_figure()
    epochs = [r["epoch"] for r in rows]
    for key, ax, label in (("train_loss", loss_ax, "train"), ("val_loss", loss_ax, "valid"),
                           ("train_acc", acc_ax, "train"), ("val_acc", acc_ax, "valid"),
                           ("val_macro_f1", acc_ax, "valid macro-F1"), ("val_miou", acc_ax, "valid mIoU")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="score", title="accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title, fontsize=10)
    with replacing(Path(out)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(out)


def compare_curves(runs: dict[str, list[dict]], out: Path) -> Path:
    """Validation loss and macro-F1 per epoch of several runs on one figure."""
    fig, (loss_ax, f1_ax) = new_figure()
    for name, rows in runs.items():
        epochs = [r["epoch"] for r in rows]
        if any(r.get("val_loss") is not None for r in rows):
            loss_ax.plot(epochs, [r.get("val_loss") for r in rows], marker="o", label=name)
        f1_ax.plot(epochs, [r.get("val_macro_f1") for r in rows], marker="o", label=name)
    loss_ax.set(xlabel="epoch", ylabel="validation loss", title="validation loss")
    f1_ax.set(xlabel="epoch", ylabel="validation macro-F1", title="validation macro-F1", ylim=(0, 1))
    for ax in (loss_ax, f1_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    with replacing(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out
