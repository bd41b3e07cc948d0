"""Change between two class maps: transition areas, a change raster and ranked candidate polygons."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import shapes
from rasterio.warp import reproject

from landcover.atomic import check_output
from landcover.errors import LandcoverError
from landcover.geo.cog import write_cog
from landcover.geo.raster import crs_name, same_crs, transformer
from landcover.maps.classmap import NODATA, ClassMap, hex_rgb, read_class_map, read_probabilities
from landcover.progress import progress_bar

UNCHANGED = 0
WIDE_NODATA = 65535
"""change.tif is uint8 (nodata 255) while from_id * n + to_id + 1 fits below 255 (up to 15 classes), else uint16."""


@dataclass
class ChangeResult:
    """What detect_change found and wrote."""

    out_dir: Path
    classes: list[str]
    hectares: pd.DataFrame
    """From-class rows x to-class columns, hectares (no totals)."""
    changed_ha: float
    unchanged_ha: float
    nodata_ha: float
    candidates: pd.DataFrame
    """A GeoDataFrame in the maps' CRS: rank, from, to, area_ha, cells, confidence, geometry."""
    ranking: str
    """'confidence' or 'area' (when the maps have no probabilities)."""
    resampled: str | None = None
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines: changed area, top transitions, candidates and files."""
        valid = self.changed_ha + self.unchanged_ha
        share = 100 * self.changed_ha / valid if valid else 0.0
        lines = [f"changed: {self.changed_ha:,.1f} ha of {valid:,.1f} ha valid in both maps ({share:.1f}%); "
                 f"nodata in either: {self.nodata_ha:,.1f} ha"]
        changes = [(f, t, float(self.hectares.loc[f, t])) for f in self.classes for t in self.classes
                   if f != t and self.hectares.loc[f, t] > 0]
        for f, t, ha in sorted(changes, key=lambda x: -x[2])[:5]:
            lines.append(f"  {f} -> {t}: {ha:,.1f} ha")
        how = "by confidence" if self.ranking == "confidence" else "by area (no probabilities)"
        lines.append(f"candidates: {len(self.candidates)} polygons, ranked {how}")
        if self.resampled:
            lines.append(f"note: {self.resampled}")
        lines.append(f"files: {self.out_dir}/ {', '.join(self.files)}")
        return "\n".join(lines)


def _same_grid(a: ClassMap, b: ClassMap) -> bool:
    return a.data.shape == b.data.shape and a.transform.almost_equals(b.transform) and same_crs(a.crs, b.crs)


def _onto(data: np.ndarray, src: ClassMap, dst: ClassMap, nodata: float = NODATA) -> np.ndarray:
    """Bands or one band of `src`'s grid resampled (nearest) onto `dst`'s grid."""
    out = np.full(data.shape[:-2] + dst.data.shape, nodata, dtype=data.dtype)
    reproject(data, out, src_transform=src.transform, src_crs=src.crs, dst_transform=dst.transform, dst_crs=dst.crs,
              src_nodata=nodata, dst_nodata=nodata, resampling=Resampling.nearest)
    return out


def _class_ids(names: list[str] | None, cm: ClassMap, option: str) -> set[int] | None:
    if not names:
        return None
    ids = {c["name"].casefold(): int(c["id"]) for c in cm.classes}
    unknown = [n for n in names if n.casefold() not in ids]
    if unknown:
        raise LandcoverError(f"{option}: unknown class {', '.join(map(repr, unknown))} (the maps' classes: "
                             f"{', '.join(cm.names)})")
    return {ids[n.casefold()] for n in names}


def _probabilities(path: Path, cm: ClassMap, names: list[str]) -> tuple[np.ndarray | None, str | None]:
    """The map's probabilities on its own grid, band i = class `names[i]` (NaN where none), or None and why not."""
    name = cm.tags.get("LANDCOVER_PROBABILITIES")
    if not name:
        return None, f"{path} records no probabilities (LANDCOVER_PROBABILITIES)"
    file = path.parent / name
    if not file.exists():
        return None, f"{path}: its probability file {file} is not found"
    probs, valid = read_probabilities(file)
    if probs.shape != (len(cm.classes), *cm.data.shape):
        return None, f"{file}: {probs.shape[0]} bands of {probs.shape[1:]} do not match the map's classes and grid"
    probs[:, ~valid] = np.nan
    band = {c["name"].casefold(): k for k, c in enumerate(cm.classes)}
    out = np.full((len(names), *cm.data.shape), np.nan, dtype=np.float32)
    for i, class_name in enumerate(names):
        if class_name.casefold() in band:
            out[i] = probs[band[class_name.casefold()]]
    return out, None


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LandcoverError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LandcoverError("exists and is not empty (use --overwrite to replace it)", out)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to `out`, replacing what was there."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def detect_change(before: str | Path, after: str | Path, out_dir: str | Path, to_classes: list[str] | None = None,
                  from_classes: list[str] | None = None, min_cells: int = 1, overwrite: bool = False,
                  progress: bool = True) -> ChangeResult:
    """Compare two class maps of the same classes (`after` is resampled onto `before`'s grid if they differ) and
    write into `out_dir`: transitions.csv (hectares from x to), change.tif, candidates.geojson/.gpkg (changed
    patches of the `to_classes`/`from_classes` transitions of at least `min_cells` cells), change.json, change.png.

        result = detect_change("maps/2016.tif", "maps/2020.tif", "change/", to_classes=["Developed"])
    """
    before, after, out = Path(before), Path(after), Path(out_dir)
    b, a = read_class_map(before), read_class_map(after)
    if sorted(map(str.casefold, b.names)) != sorted(map(str.casefold, a.names)):
        raise LandcoverError(f"has classes {a.names}, not those of {before} ({b.names}): change needs two maps of "
                             "the same classes", after)
    if not b.crs.is_projected:
        raise LandcoverError("is in a geographic CRS: areas need a projected CRS (warp it to one first)", before)
    n = max(int(c["id"]) for c in b.classes) + 1
    if min_cells < 1:
        raise LandcoverError(f"min_cells must be at least 1, not {min_cells}")
    to_ids, from_ids = _class_ids(to_classes, b, "--to"), _class_ids(from_classes, b, "--from")
    check_output(out, "folder")
    _check_out(out, overwrite)

    # after's ids as before's, by class name; after's grid onto before's
    by_name = {c["name"].casefold(): int(c["id"]) for c in b.classes}
    remap = np.full(256, NODATA, dtype=np.uint8)
    for c in a.classes:
        remap[int(c["id"])] = by_name[c["name"].casefold()]
    after_data = remap[a.data]
    resampled = None
    if not _same_grid(a, b):
        after_data = _onto(after_data, a, b)
        ha, wa = a.data.shape
        resampled = (f"{after.name} ({wa}x{ha} cells of {abs(a.transform.a):g} on {crs_name(a.crs)}) is on another "
                     f"grid than {before.name} ({b.data.shape[1]}x{b.data.shape[0]} cells of "
                     f"{abs(b.transform.a):g} on {crs_name(b.crs)}): resampled (nearest) onto {before.name}'s grid")
        if progress:
            print(f"note: {resampled}", file=sys.stderr)

    factor = b.crs.linear_units_factor[1]
    cell_ha = b.cell_area * factor**2 / 10_000
    valid = (b.data < n) & (after_data < n)  # nodata, or ids that name no class
    pair = b.data.astype(np.int32) * n + after_data
    counts = np.bincount(pair[valid], minlength=n * n).reshape(n, n)
    names = [f"class {i}" for i in range(n)]
    for c in b.classes:
        names[int(c["id"])] = c["name"]
    nodata = NODATA if n * n + 1 < NODATA else WIDE_NODATA
    code = np.where(valid, pair + 1, nodata).astype(np.uint8 if nodata == NODATA else np.uint16)
    code[valid & (b.data == after_data)] = UNCHANGED

    # candidates: 8-connected components of each matching transition
    probs_b, why_b = _probabilities(before, b, names)
    probs_a, why_a = _probabilities(after, a, names) if probs_b is not None else (None, None)
    ranking = "confidence" if probs_a is not None else "area"
    if probs_a is not None and resampled:
        probs_a = _onto(np.nan_to_num(probs_a, nan=-1.0), a, b, nodata=-1.0)
        probs_a[probs_a < 0] = np.nan
    rows, dropped = _components(code, counts, n, names, b, to_ids, from_ids, min_cells, cell_ha, probs_b, probs_a,
                                progress)
    candidates = _rank(rows, ranking, b)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        hectares = pd.DataFrame(counts * cell_ha, index=pd.Index(names, name="from"), columns=names)
        files = _write(tmp, before, after, b, a, after_data, code, counts, cell_ha, names, n, candidates, ranking,
                       why_b or why_a, resampled, dropped, {"to_classes": to_classes, "from_classes": from_classes,
                                                            "min_cells": min_cells})
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    changed = int(counts.sum() - np.trace(counts))
    return ChangeResult(out, names, hectares, changed * cell_ha, int(np.trace(counts)) * cell_ha,
                        int((~valid).sum()) * cell_ha, candidates, ranking, resampled, files)


def _components(code: np.ndarray, counts: np.ndarray, n: int, names: list[str], cm: ClassMap, to_ids, from_ids,
                min_cells: int, cell_ha: float, probs_b, probs_a, progress: bool) -> tuple[list[dict], dict]:
    """One row per kept component: transition, cells, area, mean confidence and geometry (the map's CRS)."""
    from scipy import ndimage
    from shapely.geometry import shape
    from shapely.ops import unary_union
    from shapely.validation import make_valid

    transitions = [(f, t) for f in range(n) for t in range(n) if f != t and counts[f, t]
                   and (to_ids is None or t in to_ids) and (from_ids is None or f in from_ids)]
    labels = np.zeros(code.shape, dtype=np.int32)
    rows: list[dict] = []
    dropped = {"components": 0, "cells": 0}
    eight = np.ones((3, 3), dtype=bool)
    for f, t in progress_bar(transitions, desc="candidates", unit="transition", enabled=progress, leave=False):
        mask = code == f * n + t + 1
        lab, k = ndimage.label(mask, structure=eight)
        inside = lab[mask]
        cells = np.bincount(inside, minlength=k + 1)
        conf = np.full(k + 1, np.nan)
        if probs_a is not None:
            value = probs_a[t][mask] * probs_b[f][mask]
            ok = ~np.isnan(value)
            seen = np.bincount(inside[ok], minlength=k + 1)
            total = np.bincount(inside[ok], weights=value[ok], minlength=k + 1)
            conf[seen > 0] = total[seen > 0] / seen[seen > 0]
        keep = cells >= min_cells
        keep[0] = False
        dropped["components"] += int(k - keep.sum())
        dropped["cells"] += int(cells[1:][~keep[1:]].sum())
        new_id = np.zeros(k + 1, dtype=np.int32)
        new_id[keep] = np.arange(len(rows) + 1, len(rows) + 1 + int(keep.sum()))
        labels[mask] = new_id[inside]
        for i in np.flatnonzero(keep):
            rows.append({"from": names[f], "to": names[t], "cells": int(cells[i]), "area_ha": cells[i] * cell_ha,
                         "confidence": None if np.isnan(conf[i]) else float(conf[i]), "id": int(new_id[i])})
    polygons: dict[int, list] = {}
    for geom, value in shapes(labels, mask=labels > 0, connectivity=8, transform=cm.transform):
        polygons.setdefault(int(value), []).append(shape(geom))
    for row in rows:
        parts = polygons[row.pop("id")]
        geom = parts[0] if len(parts) == 1 else unary_union(parts)
        row["geometry"] = geom if geom.is_valid else make_valid(geom)
    return rows, dropped


def _rank(rows: list[dict], ranking: str, cm: ClassMap):
    """Candidates as a GeoDataFrame in the map's CRS, ranked by confidence (or area), best first."""
    import geopandas as gpd

    columns = ["rank", "from", "to", "area_ha", "cells", "confidence"]
    if not rows:
        return gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs=cm.crs)
    frame = pd.DataFrame(rows)
    keys = ["confidence", "cells"] if ranking == "confidence" else ["cells"]
    frame = frame.sort_values(keys, ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return gpd.GeoDataFrame(frame[[*columns, "geometry"]], geometry="geometry", crs=cm.crs)


def _geojson(candidates, cm: ClassMap) -> dict:
    """The candidates as an RFC 7946 FeatureCollection: WGS84 longitude/latitude, counter-clockwise shells."""
    from shapely import set_precision, transform
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient

    to_wgs84 = transformer(cm.crs, CRS.from_epsg(4326)).transform
    features = []
    for row in candidates.to_dict("records"):
        geom = transform(row["geometry"], to_wgs84, interleaved=False)
        geom = set_precision(geom, 1e-7)
        parts = getattr(geom, "geoms", [geom])
        geom = type(geom)([orient(p, 1.0) for p in parts]) if len(parts) > 1 else orient(parts[0], 1.0)
        props = {"rank": int(row["rank"]), "from": row["from"], "to": row["to"], "area_ha": float(row["area_ha"]),
                 "cells": int(row["cells"]),
                 "confidence": None if pd.isna(row["confidence"]) else float(row["confidence"])}
        features.append({"type": "Feature", "properties": props, "geometry": mapping(geom)})
    return {"type": "FeatureCollection", "features": features}


def _write(tmp: Path, before: Path, after: Path, b: ClassMap, a: ClassMap, after_data: np.ndarray, code: np.ndarray,
           counts: np.ndarray, cell_ha: float, names: list[str], n: int, candidates, ranking: str, why: str | None,
           resampled: str | None, dropped: dict, settings: dict) -> list[str]:
    """Every output file into the temporary folder; returns their names."""
    from landcover.maps.figures import UNCHANGED_COLOR, change_figure

    table = pd.DataFrame(counts * cell_ha, index=pd.Index(names, name="from_to_hectares"), columns=names)
    table["total"] = counts.sum(axis=1) * cell_ha
    table.loc["total"] = [*(counts.sum(axis=0) * cell_ha), counts.sum() * cell_ha]
    table.to_csv(tmp / "transitions.csv")

    nodata = NODATA if code.dtype == np.uint8 else WIDE_NODATA
    colormap = {i: (0, 0, 0, 0) for i in range(256)} if nodata == NODATA else None  # palettes: 8-bit only
    categories = ["unchanged"] + [""] * (n * n)
    colors = {int(c["id"]): c["color"] for c in b.classes}
    for f in range(n):
        for t in range(n):
            if f != t:
                if colormap is not None:
                    colormap[f * n + t + 1] = (*hex_rgb(colors.get(t, "#000000")), 255)
                categories[f * n + t + 1] = f"{names[f]} -> {names[t]}"
    if colormap is not None:
        colormap[UNCHANGED] = (*hex_rgb(UNCHANGED_COLOR), 255)
    encoding = {"classes": names, "value": "from_id * n_classes + to_id + 1", "unchanged": UNCHANGED,
                "nodata": nodata, "before": str(before), "after": str(after)}
    write_cog(tmp / "change.tif", code, b.transform, b.crs, nodata, colormap=colormap,
              tags={"LANDCOVER_CHANGE": json.dumps(encoding)}, descriptions=["change"], resampling="NEAREST",
              category_names=categories)

    (tmp / "candidates.geojson").write_text(json.dumps(_geojson(candidates, b)) + "\n")
    candidates.to_file(tmp / "candidates.gpkg", driver="GPKG", layer="candidates")

    diag = int(np.trace(counts))
    changed = int(counts.sum()) - diag
    transitions = {f"{names[f]} -> {names[t]}": counts[f, t] * cell_ha for f in range(n) for t in range(n)
                   if f != t and counts[f, t]}
    files = ["transitions.csv", "change.tif", "change.tif.aux.xml", "candidates.geojson", "candidates.gpkg",
             "change.json", "change.png"]
    report = {
        "before": str(before), "after": str(after), "classes": names, "crs": crs_name(b.crs),
        "cell_size": [abs(b.transform.a), abs(b.transform.e)], "cell_area_ha": cell_ha,
        "grid": {"width": b.data.shape[1], "height": b.data.shape[0], "transform": list(b.transform)[:6]},
        "resampled": resampled,
        "totals": {"changed_ha": changed * cell_ha, "unchanged_ha": diag * cell_ha,
                   "valid_ha": int(counts.sum()) * cell_ha, "changed_share": changed / counts.sum() if counts.sum()
                   else None, "nodata_ha": int((code == nodata).sum()) * cell_ha,
                   "nodata_cells": {"before": int((b.data == NODATA).sum()),
                                    "after": int((after_data == NODATA).sum()),
                                    "either": int((code == nodata).sum())}},
        "transitions_ha": dict(sorted(transitions.items(), key=lambda kv: -kv[1])),
        "candidates": {"count": len(candidates), "ranking": ranking,
                       "confidence": ("mean over the component of p_after(to) * p_before(from)"
                                      if ranking == "confidence" else None),
                       "fallback": None if ranking == "confidence" else
                       f"no probabilities for both maps ({why}): confidence is null, ranked by area",
                       "dropped_below_min_cells": dropped, "crs": "EPSG:4326 (candidates.geojson); "
                       f"{crs_name(b.crs)} (candidates.gpkg)"},
        "settings": settings,
        "change_tif": encoding,
        "files": files,
    }
    (tmp / "change.json").write_text(json.dumps(report, indent=2) + "\n")
    hectares = counts * cell_ha
    # the figure colours a change by its new class
    shown = np.where(code == nodata, NODATA, np.where(code == UNCHANGED, UNCHANGED, after_data.astype(np.int32) + 1))
    change_figure(b, after_data, shown.astype(np.uint8), hectares, tmp / "change.png",
                  title=f"{before.name} -> {after.name}")
    return files
