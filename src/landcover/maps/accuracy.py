"""Accuracy assessment of a class map against reference data: a land-cover raster (any grid or CRS, resampled once,
nearest, onto the map), polygons (burned onto the map's grid) or points (the map read at each point).

Besides the scores of any evaluation (overall accuracy, per-class user's and producer's accuracy, F1, IoU, kappa,
confusion matrix), it gives what good practice asks of a map (Olofsson et al. 2014, Remote Sensing of Environment
148:42-57): the map's classes are strata whose sizes are the mapped areas, so accuracies and class areas are
estimated with each reference sample weighted by its stratum's share of the map (W_i = mapped pixels_i / all
mapped pixels; p_ij = W_i n_ij / n_i.), with standard errors and 95% confidence intervals. A raster reference
covering the map is a census (every pixel sampled); the estimates then reduce to pixel counting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landcover.atomic import replacing, write_text
from landcover.errors import LandcoverError
from landcover.evaluate import Report, report_from_confusion, write_report
from landcover.geo.raster import open_raster, require_crs
from landcover.maps.classmap import NODATA, raster_classes
from landcover.plots import new_figure
from landcover.schemes import load_scheme

STRIP_ROWS = 2048
"""Map rows read at once: memory stays bounded whatever the map's size."""
Z95 = 1.959964
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet", ".kml", ".gml")


@dataclass
class MapAssessment:
    """An assessment's scores (a `Report`, rows the reference) and the area-adjusted estimates."""

    report: Report
    estimates: dict
    files: dict[str, Path]
    reference: str

    def summary(self) -> str:
        e = self.estimates
        lines = [self.report.summary(f"map against {self.reference}"),
                 f"area-adjusted overall accuracy {e['overall_accuracy']:.3f} ± {e['overall_accuracy_ci95']:.3f} "
                 f"(95% CI; Olofsson et al. 2014)",
                 f"{'class':<16} {'mapped ha':>12} {'estimated ha':>14} {'± 95% CI':>10} {'user':>6} {'producer':>8}"]
        for row in e["classes"]:
            lines.append(f"{row['class']:<16} {row['mapped_ha']:>12,.0f} {_f(row['estimated_ha'], 14, ',.0f')} "
                         f"{_f(row['estimated_ha_ci95'], 10, ',.0f')} {_f(row['users'], 6, '.3f')} "
                         f"{_f(row['producers'], 8, '.3f')}")
        if e.get("warning"):
            lines.append(f"warning: {e['warning']}")
        if e.get("reference_points_outside_map"):
            lines.append(f"{e['reference_points_outside_map']} reference points lie outside the map (left out)")
        if e["unsampled_classes"]:
            lines.append(f"mapped classes with no reference sample (left out of the estimates): "
                         f"{', '.join(e['unsampled_classes'])}")
        lines += [f"{k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


def assess_map(map_path: str | Path, truth: str | Path, out_dir: str | Path, truth_field: str | None = None,
               scheme: str | None = None) -> MapAssessment:
    """Score a class map (landcover's, or any categorical raster with category names) against reference data and
    write report.json, confusion.json/.png, per_class.csv, summary.txt (as a bundle's evaluation) plus
    accuracy.json (area-adjusted estimates) and areas.png into `out_dir`. Reference codes become classes through
    `scheme`, or by class name (the reference's own names, or the text of `truth_field`)."""
    map_path, truth = str(map_path), str(truth)
    classes = raster_classes(map_path)[0]
    vector = Path(truth).suffix.lower() in VECTOR_SUFFIXES
    if vector and not truth_field:
        raise LandcoverError("vector reference data need --truth-field (the attribute holding each feature's class)",
                             truth)
    with open_raster(map_path) as src:
        crs = require_crs(src)
        mapped = _mapped_counts(src)
        outside = 0
        if vector:
            names, pairs, outside = _vector_pairs(src, crs, truth, truth_field, scheme, classes)
        else:
            names, pairs = _raster_pairs(src, crs, truth, scheme, classes)
        cell_m2 = abs(src.transform.a * src.transform.e - src.transform.b * src.transform.d)
    k = len(names)
    if not pairs.size:
        raise LandcoverError("no reference sample falls on a mapped pixel of the map", truth)
    confusion = np.bincount(pairs[1].astype(np.int64) * k + pairs[0], minlength=k * k).reshape(k, k)
    report = report_from_confusion(confusion, names)  # rows: reference, columns: map
    mapped_all = np.zeros(k, np.int64)
    mapped_all[:len(classes)] = mapped[:len(classes)]
    estimates = area_adjusted(confusion.T, mapped_all, cell_m2 / 1e4, names)
    estimates["iou"] = _iou(confusion)
    estimates["reference_points_outside_map"] = outside
    present = [names[i] for i in np.flatnonzero(confusion.sum(axis=1))]
    if len(present) < 2:
        estimates["warning"] = (f"the reference holds one class ({', '.join(present)}): it cannot tell the map's "
                                "classes apart, so the accuracies and area estimates, and their narrow intervals, "
                                "say nothing about the others")
    out = Path(out_dir)
    files = write_report(report, out, title=f"{Path(map_path).name} against {Path(truth).name}")
    files["accuracy.json"] = out / "accuracy.json"
    write_text(files["accuracy.json"], json.dumps({"map": str(Path(map_path).resolve()),
                                                   "reference": str(Path(truth).resolve()),
                                                   "samples": int(confusion.sum()), **estimates}, indent=2) + "\n")
    files["areas.png"] = _areas_figure(estimates, out / "areas.png")
    return MapAssessment(report, estimates, files, Path(truth).name)


def area_adjusted(counts: np.ndarray, mapped: np.ndarray, pixel_ha: float, names: list[str]) -> dict:
    """Olofsson et al. (2014) estimators from sample counts n_ij (rows: map class i, columns: reference class j)
    and mapped pixels per class: overall, user's and producer's accuracies and class areas, each with a 95%
    confidence interval half-width. Map classes with mapped area but no sample are left out (and named)."""
    n = np.asarray(counts, np.float64)
    big_n = np.asarray(mapped, np.float64)
    rows = n.sum(axis=1)
    sampled = rows > 0
    total = big_n[sampled].sum()
    w = np.where(sampled, big_n / max(total, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(sampled[:, None], n / rows[:, None], 0.0)  # n_ij / n_i.
        dof = np.where(rows > 1, rows - 1, np.nan)
        p = w[:, None] * share
        users = np.where(sampled, np.diag(share), np.nan)
        col = p.sum(axis=0)
        producers = np.diag(p) / col
        overall = float(np.trace(p))
        var_overall = np.nansum(np.where(sampled, w ** 2 * users * (1 - users) / dof, 0.0))
        var_users = users * (1 - users) / dof
        var_area = np.nansum(np.where(sampled[:, None], w[:, None] ** 2 * share * (1 - share) / dof[:, None], 0.0),
                             axis=0)
        n_hat = (big_n[:, None] * share).sum(axis=0)  # estimated pixels of each reference class
        var_producers = np.full(len(names), np.nan)
        for j in range(len(names)):
            if not n_hat[j]:
                continue
            others = [i for i in range(len(names)) if i != j and sampled[i]]
            own = (big_n[j] ** 2 * (1 - producers[j]) ** 2 * users[j] * (1 - users[j]) / dof[j]) if sampled[j] else 0
            rest = sum(big_n[i] ** 2 * share[i, j] * (1 - share[i, j]) / dof[i] for i in others if rows[i] > 1)
            var_producers[j] = (own + producers[j] ** 2 * rest) / n_hat[j] ** 2
    area_ha = total * pixel_ha
    table = []
    for j, name in enumerate(names):
        table.append({"class": name, "mapped_pixels": int(big_n[j]), "mapped_ha": float(big_n[j] * pixel_ha),
                      "samples_mapped": int(rows[j]), "samples_reference": int(n[:, j].sum()),
                      "weight": float(w[j]), "estimated_share": _num(col[j]),
                      "estimated_ha": _num(col[j] * area_ha), "estimated_ha_ci95": _num(Z95 * math.sqrt(var_area[j])
                                                                                          * area_ha),
                      "users": _num(users[j]), "users_ci95": _num(Z95 * math.sqrt(var_users[j])),
                      "producers": _num(producers[j]), "producers_ci95": _num(Z95 * math.sqrt(var_producers[j]))})
    return {"overall_accuracy": overall, "overall_accuracy_ci95": float(Z95 * math.sqrt(var_overall)),
            "mapped_area_ha": float(area_ha), "pixel_ha": pixel_ha, "classes": table,
            "unsampled_classes": [names[i] for i in range(len(names)) if big_n[i] > 0 and not sampled[i]],
            "method": "Olofsson et al. 2014: stratified estimators, strata = map classes, 95% CI = 1.96 SE"}


def _strips(src: rasterio.DatasetReader):
    for row in range(0, src.height, STRIP_ROWS):
        yield Window(0, row, src.width, min(STRIP_ROWS, src.height - row))


def _mapped_counts(src: rasterio.DatasetReader) -> np.ndarray:
    counts = np.zeros(65536, np.int64)
    for window in _strips(src):
        data = src.read(1, window=window)
        valid = src.read_masks(1, window=window) > 0
        counts += np.bincount(data[valid].astype(np.int64).ravel(), minlength=65536)[:65536]
    counts[NODATA] = 0
    return counts


def _name_ids(classes: list[dict], reference_names: list[str]) -> tuple[list[str], np.ndarray]:
    """All class names (the map's, then reference classes the map lacks) and each reference class's index."""
    names = [""] * (max(int(c["id"]) for c in classes) + 1)
    for c in classes:
        names[int(c["id"])] = c["name"]
    index = {n.casefold(): i for i, n in enumerate(names) if n}
    ids = []
    for name in reference_names:
        if name.casefold() not in index:
            index[name.casefold()] = len(names)
            names.append(name)
        ids.append(index[name.casefold()])
    return names, np.array(ids, np.int64)


def _raster_pairs(src: rasterio.DatasetReader, crs, truth: str, scheme: str | None,
                  classes: list[dict]) -> tuple[list[str], np.ndarray]:
    """(map id, reference id) of every map pixel with a reference value, the reference read nearest on the map."""
    if scheme:
        sch = load_scheme(scheme)
        lookup = sch.lookup().astype(np.int64)
        names, ids = _name_ids(classes, [c.name for c in sch.classes])
        code_to_id = np.where(lookup < len(sch.classes), ids[np.minimum(lookup, len(ids) - 1)], -1)
    else:
        try:
            own = raster_classes(truth)[0]
        except LandcoverError:
            raise LandcoverError("the reference raster's codes need --scheme (e.g. nlcd-grouped), or class names of "
                                 "its own", truth) from None
        names, ids = _name_ids(classes, [c["name"] for c in own])
        code_to_id = np.full(65536, -1, np.int64)
        code_to_id[[int(c["id"]) for c in own]] = ids
    pairs = []
    with open_raster(truth) as ref:
        require_crs(ref)
        with WarpedVRT(ref, crs=crs, transform=src.transform, width=src.width, height=src.height,
                       resampling=Resampling.nearest) as vrt:
            for window in _strips(src):
                codes = vrt.read(1, window=window).astype(np.int64)
                ok = (vrt.read_masks(1, window=window) > 0) & (src.read_masks(1, window=window) > 0)
                ok &= (codes >= 0) & (codes < len(code_to_id))
                got = src.read(1, window=window)
                ref_ids = np.where(ok, code_to_id[np.clip(codes, 0, len(code_to_id) - 1)], -1)
                keep = ok & (ref_ids >= 0) & (got != NODATA)
                pairs.append(np.stack([got[keep].astype(np.int64), ref_ids[keep]]))
    return names, np.concatenate(pairs, axis=1)


def _vector_pairs(src: rasterio.DatasetReader, crs, truth: str, field: str, scheme: str | None,
                  classes: list[dict]) -> tuple[list[str], np.ndarray, int]:
    """(map id, reference id) at each point, or at each map pixel whose centre a polygon covers; and how many
    points lie outside the map."""
    from landcover.chips.labels import read_vector_labels

    sch = load_scheme(scheme) if scheme else None
    labels, sch, _ = read_vector_labels(truth, crs, sch, attribute=field)
    names, ids = _name_ids(classes, [c.name for c in sch.classes])
    geoms, ref = labels.geometries, ids[labels.classes.astype(np.int64)]
    kinds = {g.geom_type for g in geoms}
    if kinds <= {"Point", "MultiPoint"}:
        xs = np.array([g.centroid.x for g in geoms])
        ys = np.array([g.centroid.y for g in geoms])
        cols, rows = ~src.transform * (xs, ys)
        cols, rows = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
        inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        if not inside.any():
            raise LandcoverError(f"all {len(geoms)} reference points lie outside the map "
                                 f"({Path(src.name).name}): is it the right map or CRS?", truth)
        got = np.array([src.read(1, window=Window(c, r, 1, 1))[0, 0] for c, r in zip(cols[inside], rows[inside],
                                                                                       strict=True)])
        keep = got != NODATA
        return names, np.stack([got[keep].astype(np.int64), ref[inside][keep]]), int((~inside).sum())
    pairs = []
    for window in _strips(src):
        transform = src.window_transform(window)
        burned = rasterize(zip(geoms, ref + 1, strict=True), out_shape=(int(window.height), int(window.width)),
                           transform=transform, fill=0, dtype="int32")
        got = src.read(1, window=window)
        keep = (burned > 0) & (got != NODATA) & (src.read_masks(1, window=window) > 0)
        pairs.append(np.stack([got[keep].astype(np.int64), burned[keep].astype(np.int64) - 1]))
    if not any(p.size for p in pairs):
        raise LandcoverError("no reference polygon covers a mapped pixel of the map", truth)
    return names, np.concatenate(pairs, axis=1), 0


def _iou(confusion: np.ndarray) -> list:
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return [_num(v) for v in tp / union]


def _areas_figure(estimates: dict, out: Path) -> Path:
    """Mapped area against the area-adjusted estimate (with its 95% CI) per class."""
    rows = [r for r in estimates["classes"] if r["mapped_ha"] or (r["estimated_ha"] or 0)]
    fig, (ax, acc) = new_figure(10, 3.8)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["mapped_ha"] for r in rows], 0.4, label="mapped", color="#9e9e9e")
    ax.bar(x + 0.2, [r["estimated_ha"] or 0 for r in rows], 0.4, label="estimated (95% CI)", color="#3f7fbf",
           yerr=[r["estimated_ha_ci95"] or 0 for r in rows], capsize=3)
    ax.set_xticks(x, [r["class"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("hectares")
    ax.legend(fontsize=8)
    ax.set_title("class areas", fontsize=10)
    for offset, key, label, color in ((-0.2, "users", "user's", "#e08030"), (0.2, "producers", "producer's",
                                                                             "#30a060")):
        acc.bar(x + offset, [r[key] or 0 for r in rows], 0.4, label=label, color=color,
                yerr=[r[f"{key}_ci95"] or 0 for r in rows], capsize=3)
    acc.set_xticks(x, [r["class"] for r in rows], rotation=30, ha="right", fontsize=8)
    acc.set_ylim(0, 1.05)
    acc.legend(fontsize=8)
    acc.set_title(f"accuracy (overall {estimates['overall_accuracy']:.3f})", fontsize=10)
    with replacing(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _num(value: float):
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _f(value, width: int, spec: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{format(value, spec):>{width}}"

