"""Every figure in one place."""

from __future__ import annotations

from pathlib import Path

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
