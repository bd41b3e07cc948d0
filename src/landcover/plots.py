"""Every figure in one place."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

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
    tmp = out.with_name(f".{out.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


