"""The train/ valid/ test/ folder tree other tools expect, made of hard links to the chips."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from landcover.errors import LandcoverError

TREE_MARK = ".landcover-split"
"""The file that marks a --materialize folder as ours (and so replaceable by the next split)."""


def check_tree_target(target: Path) -> Path:
    """The --materialize folder, if it is new, empty, or one an earlier split made."""
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / TREE_MARK).exists())):
        raise LandcoverError("--materialize folder exists and holds other files; choose an empty or new folder",
                             target)
    return target


def build_tree(frame: pd.DataFrame, root: Path, target: Path, names: tuple[str, ...]) -> Path:
    """The train/ valid/ test/ tree under a temporary name: <class>/ folders, or images/ + labels/ for pairs."""
    pairs = "label_path" in frame.columns and frame["label_path"].notna().any()
    links = []
    for row in frame[frame["split"].isin(names)].itertuples(index=False):
        rel = Path(row.path)
        if pairs:
            links.append((rel, Path(row.split) / "images" / rel.name))
            links.append((Path(row.label_path), Path(row.split) / "labels" / Path(row.label_path).name))
        else:
            folder = rel.parts[0] if len(rel.parts) > 1 else str(row.label)
            links.append((rel, Path(row.split) / folder / rel.name))
    dests = [d for _, d in links]
    if len(set(dests)) != len(dests):
        raise LandcoverError("two chips would share one file name in the --materialize tree", target)
    missing = next((src for src, _ in links if not (root / src).is_file()), None)
    if missing is not None:
        raise LandcoverError("chip file listed in the manifest is missing", root / missing)
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for folder in sorted({d.parent for d in dests}):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    for src, dest in links:
        try:
            os.link(root / src, tmp / dest)
        except OSError:
            shutil.copy2(root / src, tmp / dest)
    (tmp / TREE_MARK).write_text("made by `landcover split --materialize`; replaced by the next one\n")
    return tmp
