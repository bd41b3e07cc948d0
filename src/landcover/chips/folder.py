"""The chips folder: its run state (resume), the manifest frame it ends with, and the result a run reports."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from landcover.atomic import write_text
from landcover.chips.rules import REJECTIONS
from landcover.errors import LandcoverError
from landcover.geo.grid import Grid
from landcover.manifest import COLUMNS, empty_frame, read_manifest

STATE_DIR = ".landcover-state"


@dataclass
class ChipsResult:
    """What a chips run produced."""

    manifest: gpd.GeoDataFrame
    rejected: Counter
    out: Path
    resumed_blocks: int = 0

    def summary(self) -> str:
        """A few lines a person reads at the end of a run."""
        kept = self.manifest["label"].value_counts().sort_index() if len(self.manifest) else pd.Series(dtype=int)
        note = {0: "", -1: " (already complete: nothing to do)"}.get(
            self.resumed_blocks, f" (resumed: {self.resumed_blocks} blocks were already done)")
        lines = [f"{len(self.manifest)} chips in {self.out}{note}"]
        lines += [f"  {name:<28} {n:>7}" for name, n in kept.items()]
        lines.append(f"rejected: {rejection_counts(self.rejected)}")
        hint = nodata_hint(self.rejected)
        return "\n".join([*lines, f"note: {hint}"] if hint else lines)


def rejection_counts(rejected: Counter) -> str:
    """'outside_aoi 3803, points_disagree 2019', in the order the rules check them."""
    return ", ".join(f"{reason} {rejected[reason]}" for reason in REJECTIONS if rejected[reason]) or "none"


FEW_NODATA = 0.01
"""A tile rejected for nodata in under this share of its pixels holds specks, not a collar or a wedge."""
FEW_NODATA_KEY = "nodata_few"
"""The count of such tiles, kept beside the rejections (not a rejection of its own)."""
SPECK_ADVICE = ("pixels at the declared nodata value may be real (white sand or roofs at 255 in an 8-bit photo): "
                "--nodata none reads every pixel as data, --max-nodata N keeps tiles with up to N nodata pixels")
"""What chips' summary and doctor say of nodata in specks."""


def nodata_hint(rejected: Counter) -> str | None:
    """A hint when most tiles rejected for nodata hold only a few nodata pixels (real pixels at the declared nodata
    value, e.g. white sand at 255) and they are a tenth or more of the rejections in the imagery; or when nodata
    pixels rejected most of the tiles that lay in the imagery."""
    judged = sum(n for reason, n in rejected.items() if reason in REJECTIONS
                 and reason not in ("outside_aoi", "outside_scene"))
    few = rejected[FEW_NODATA_KEY]
    if few * 2 > rejected["nodata"] and rejected["nodata"] * 10 >= judged:
        return (f"{few} tiles were rejected for nodata in under {100 * FEW_NODATA:g}% of their pixels: scattered "
                f"{SPECK_ADVICE}")
    if rejected["nodata"] and rejected["nodata"] * 2 > judged:
        return (f"{rejected['nodata']} tiles were rejected for nodata pixels: --max-nodata N keeps tiles with up to N "
                "nodata pixels (check the imagery's declared nodata value too: --nodata VALUE|none overrides it)")
    return None


def finished_run(out: Path, fingerprint: str) -> ChipsResult | None:
    """The result of an identical run that already finished in this folder, if there is one."""
    card = out / "chips.json"
    if not (card.exists() and (out / "manifest.parquet").exists() and not (out / STATE_DIR).exists()):
        return None
    if json.loads(card.read_text()).get("fingerprint") != fingerprint:
        return None
    frame, info = read_manifest(out / "manifest.parquet")
    return ChipsResult(frame, Counter(info.get("rejected", {})), out, resumed_blocks=-1)


def prepare_out(out: Path, fingerprint: str, overwrite: bool) -> tuple[Path, Path]:
    """Create (or reopen, to resume) the output folder; refuse one that holds another run."""
    state = out / STATE_DIR
    marker = state / "run.json"
    manifest = out / "manifest.parquet"
    if out.exists() and any(out.iterdir()):
        same = marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint
        if not same:
            if not overwrite:
                what = "a finished chips run" if manifest.exists() else "other files"
                raise LandcoverError(f"the output folder holds {what}; choose another --out or pass --overwrite",
                                     out)
            if not (manifest.exists() or marker.exists()):
                raise LandcoverError("--overwrite only replaces a landcover chips folder; this one holds "
                                     "other files", out)
            shutil.rmtree(out)
    state.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp"):
        stale.unlink()
    if not marker.exists():
        write_text(marker, json.dumps({"fingerprint": fingerprint}))
    return out, state


def manifest_frame(records: list[dict], grid: Grid) -> gpd.GeoDataFrame:
    """Manifest rows sorted by chip id: the standard columns, then any the layout adds."""
    crs = grid.crs.to_wkt()
    if not records:
        return empty_frame(crs)
    frame = pd.DataFrame.from_records(records).sort_values("chip_id", kind="stable").reset_index(drop=True)
    geometry = shapely.box(*np.array(frame.pop("bounds").tolist()).T)
    frame["split"] = pd.Series([None] * len(frame), dtype="string")
    for column in ("label_id", "agree_points", "n_points"):
        frame[column] = frame[column].astype("Int64")
    frame = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometry, crs=crs))
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]
