"""Class maps drawn for people: over their imagery, beside a reference map, and the change between two maps."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import WindowError
from rasterio.transform import array_bounds, from_bounds
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from landcover.atomic import check_output, replacing
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene, open_raster, require_crs, same_crs
from landcover.geo.stretch import Stretch
from landcover.maps.classmap import NODATA, ClassMap, hex_rgb, read_class_map
from landcover.plots import new_figure
from landcover.schemes import load_scheme

MAX_DISPLAY_PX = 1500
"""Figures draw maps and imagery at most this many pixels on the long side."""
DPI = 100
PANEL_IN = 7.0
"""Width in inches of the map panel of a one-panel figure (4.5 each with side-by-side panels)."""
LEGEND_IN = 2.75
OTHER = 254
"""Reference cells whose class the map does not have (drawn grey; they count as disagreement)."""
OTHER_COLOR = "#9e9e9e"
AGREE_COLOR, DISAGREE_COLOR = "#1a9850", "#d73027"
UNCHANGED_COLOR = "#dcdcdc"


class MapWarning(UserWarning):
    """Something a figure can do without (its imagery, a scale bar): the map is still drawn."""


def legend_entries(data: np.ndarray, classes: list[dict]) -> list[tuple[str, str, float]]:
    """(name, colour, share % of the valid cells) of each class present in `data`, in class id order."""
    counts = np.bincount(data[data != NODATA].ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    return [(c["name"], c["color"], 100.0 * counts[int(c["id"])] / total)
            for c in classes if counts[int(c["id"])] > 0]


def scale_bar_length(width_m: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k metres) of at most a fifth of the width."""
    target = width_m / 5
    step = 10.0 ** math.floor(math.log10(target))
    return max(m * step for m in (1, 2, 5) if m * step <= target)


def display_grid(cm: ClassMap, detail: float | None = None) -> tuple[Affine, int, int]:
    """A grid over the map's extent to draw on: the map's cells, finer down to `detail`, at most MAX_DISPLAY_PX."""
    h, w = cm.data.shape
    left, bottom, right, top = array_bounds(h, w, cm.transform)
    size = min(abs(cm.transform.a), abs(cm.transform.e), detail or math.inf)
    size = max(size, max(right - left, top - bottom) / MAX_DISPLAY_PX)
    width, height = max(1, round((right - left) / size)), max(1, round((top - bottom) / size))
    return from_bounds(left, bottom, right, top, width, height), width, height


def figure_size(cm: ClassMap, panels: int = 1) -> tuple[float, float]:
    """Figure (width, height) in inches for `panels` map panels side by side and a legend."""
    h, w = cm.data.shape
    left, bottom, right, top = array_bounds(h, w, cm.transform)
    panel_w = PANEL_IN if panels == 1 else 4.5
    height = min(max(panel_w * (top - bottom) / (right - left), 2.5), 12.0) + 0.75
    return panel_w * panels + LEGEND_IN, round(height * 4) / 4  # quarter inches: whole pixels at DPI


def truth_on_grid(cm: ClassMap, truth: str | Path, scheme: str) -> np.ndarray:
    """A label raster as the map's class ids on the map's grid: codes -> scheme classes -> map classes by name
    (OTHER where the map lacks the class), resampled by majority (mode)."""
    sch = load_scheme(scheme)
    ids = {c["name"].casefold(): int(c["id"]) for c in cm.classes}
    remap = np.full(256, NODATA, dtype=np.uint8)
    for c in sch.classes:
        remap[c.id] = ids.get(c.name.casefold(), OTHER)
    if not (remap[: len(sch.classes)] != OTHER).any():
        raise LandcoverError(f"none of scheme {sch.name}'s classes ({', '.join(c.name for c in sch.classes)}) is "
                             f"a class of the map ({', '.join(cm.names)}); classes are matched by name", truth)
    lookup = remap[sch.lookup()]
    h, w = cm.data.shape
    with open_raster(truth) as src:
        crs = require_crs(src)
        bounds = transform_bounds(cm.crs, crs, *array_bounds(h, w, cm.transform), densify_pts=21)
        window = window_from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        window = Window(window.col_off - 2, window.row_off - 2, window.width + 4, window.height + 4)
        try:
            window = window.intersection(Window(0, 0, src.width, src.height))
        except WindowError:
            raise LandcoverError("does not overlap the map", truth) from None
        codes = src.read(1, window=window)
        valid = src.read_masks(1, window=window) > 0
        src_transform = src.window_transform(window)
    ok = valid & (codes >= 0) & (codes < 65536) & (codes == np.floor(codes))
    classes = np.full(codes.shape, NODATA, dtype=np.uint8)
    classes[ok] = lookup[codes[ok].astype(np.int64)]
    out = np.full((h, w), NODATA, dtype=np.uint8)
    reproject(classes, out, src_transform=src_transform, src_crs=crs, dst_transform=cm.transform, dst_crs=cm.crs,
              src_nodata=NODATA, dst_nodata=NODATA, resampling=Resampling.mode)
    return out


def compare_to_truth(map_path: str | Path | ClassMap, truth: str | Path, scheme: str) -> dict:
    """Cell agreement of a class map with a label raster (see truth_on_grid), over cells valid in both."""
    cm = map_path if isinstance(map_path, ClassMap) else read_class_map(map_path)
    ref = truth_on_grid(cm, truth, scheme)
    return _agreement(cm, ref, str(truth), scheme)


def _agreement(cm: ClassMap, ref: np.ndarray, truth: str, scheme: str) -> dict:
    both = (cm.data != NODATA) & (ref != NODATA)
    n = int(both.sum())
    agree = both & (cm.data == ref)
    known = both & (ref != OTHER)
    per_class = {}
    for c in cm.classes:
        i = int(c["id"])
        per_class[c["name"]] = {"truth": int((both & (ref == i)).sum()), "map": int((both & (cm.data == i)).sum()),
                                "agree": int((agree & (ref == i)).sum())}
    return {"agreement": float(agree.sum() / n) if n else None, "n_cells": n,
            "n_other": int((both & (ref == OTHER)).sum()),
            "agreement_known_classes": float(agree.sum() / known.sum()) if known.any() else None,
            "classes": per_class, "truth": truth, "scheme": scheme}


def _lut(classes: list[dict], alpha: float, other: bool = False) -> np.ndarray:
    """A 256 x 4 uint8 RGBA table from class id to colour (`alpha` opacity), nodata transparent."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    a = round(255 * alpha)
    for c in classes:
        lut[int(c["id"])] = (*hex_rgb(c["color"]), a)
    if other:
        lut[OTHER] = (*hex_rgb(OTHER_COLOR), a)
    return lut


def _on_display(data: np.ndarray, cm: ClassMap, transform: Affine, width: int, height: int) -> np.ndarray:
    """Class ids as drawn: the map's own cells, or their majority on the display grid where those are finer."""
    if data.shape[1] <= width and data.shape[0] <= height:
        return data
    out = np.full((height, width), NODATA, dtype=np.uint8)
    reproject(data, out, src_transform=cm.transform, src_crs=cm.crs, dst_transform=transform, dst_crs=cm.crs,
              src_nodata=NODATA, dst_nodata=NODATA, resampling=Resampling.mode)
    return out


def _imagery(map_path: Path, cm: ClassMap, image: list[str] | None, bands: list[int] | None) -> Scene | None:
    """The scene to draw under the map: `image`, else the map's recorded imagery; None (and a warning) if none."""
    explicit = bool(image)
    if explicit:
        paths = [str(p) for p in image]
    else:
        raw = cm.tags.get("LANDCOVER_IMAGES")
        if not raw:
            warnings.warn(f"{map_path}: no imagery recorded in the map (LANDCOVER_IMAGES) and none given: drawing "
                          "the class map alone", MapWarning, stacklevel=3)
            return None
        recorded = json.loads(raw)
        paths = []
        for p in [recorded] if isinstance(recorded, str) else recorded:
            found = next((c for c in (Path(p), map_path.parent / p) if c.exists()), None)
            if found is None:
                warnings.warn(f"{map_path}: its imagery {p} is not found: drawing the class map alone",
                              MapWarning, stacklevel=3)
                return None
            paths.append(str(found))
    try:
        count = Scene.open(paths).count
        recorded_bands = cm.tags.get("LANDCOVER_DISPLAY_BANDS") or cm.tags.get("LANDCOVER_BANDS")
        if bands is None and recorded_bands and not explicit:
            bands = [int(b) for b in json.loads(recorded_bands)]
        if bands is None:
            bands = [1, 2, 3] if count >= 3 else [1]
        if len(bands) not in (1, 3):
            raise LandcoverError(f"draw 1 band (grey) or 3 bands (RGB), not {len(bands)}", paths[0])
        return Scene.open(paths, bands)
    except LandcoverError as exc:
        if explicit:
            raise
        warnings.warn(f"{map_path}: its imagery cannot be drawn ({exc}): drawing the class map alone", MapWarning,
                      stacklevel=3)
        return None


def _image_res(scene: Scene, cm: ClassMap) -> float:
    """The imagery's pixel size measured in the map's CRS."""
    if same_crs(scene.crs, cm.crs):
        return min(scene.res)
    transform, _, _ = calculate_default_transform(scene.crs, cm.crs, scene.width, scene.height, *scene.bounds)
    return abs(transform.a)


def _background(scene: Scene, cm: ClassMap, transform: Affine, width: int, height: int,
                map_path: Path) -> np.ndarray | None:
    """The imagery warped onto the display grid, 2-98 % stretched per band, as RGBA (nodata transparent)."""
    coarse = abs(transform.a) > 1.5 * _image_res(scene, cm)
    data, valid = scene.read_warped(cm.crs, transform, width, height,
                                    Resampling.average if coarse else Resampling.bilinear)
    if not valid.any():
        warnings.warn(f"{map_path}: its imagery {scene.paths[0]} does not cover the map: drawing the class map "
                      "alone", MapWarning, stacklevel=3)
        return None
    low, high = zip(*(np.percentile(band[valid], (2, 98)) for band in data), strict=True)
    rgb = Stretch(tuple(map(float, low)), tuple(map(float, high))).apply(data)
    if len(rgb) == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return np.dstack([*rgb, np.where(valid, 255, 0).astype(np.uint8)])


def _scale_bar(ax, cm: ClassMap, extent: tuple[float, float, float, float]) -> None:
    """A black bar of a round length in the lower left, labelled in m or km (projected maps only)."""
    from matplotlib.patches import Rectangle

    if not cm.crs.is_projected:
        return
    left, right, bottom, top = extent
    factor = cm.crs.linear_units_factor[1]
    length = scale_bar_length((right - left) * factor)
    x0, y0, bar_h = left + 0.04 * (right - left), bottom + 0.04 * (top - bottom), 0.012 * (top - bottom)
    ax.add_patch(Rectangle((x0, y0), length / factor, bar_h, facecolor="black", edgecolor="white", linewidth=0.8))
    ax.text(x0 + length / factor / 2, y0 + 1.8 * bar_h, f"{length / 1000:g} km" if length >= 1000 else
            f"{length:g} m", ha="center", va="bottom", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})


def _save(fig, out: Path, info: dict) -> Path:
    """Write the figure as a PNG (atomically), with `info` as JSON in its Description text chunk."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Description": json.dumps(info)})
    return out


def _patch(color: str, label: str):
    from matplotlib.patches import Patch

    return Patch(facecolor=color, edgecolor="black", linewidth=0.5, label=label)


def _other_map_on_grid(path: str | Path, cm: ClassMap) -> tuple[np.ndarray, float]:
    """Another class map's ids on this map's grid (nearest cell), NODATA outside it, and its own cell size; its
    classes must match."""
    other = read_class_map(path)
    if [c["name"] for c in other.classes] != cm.names:
        raise LandcoverError(f"has other classes than the map beside it ({', '.join(cm.names)})", path)
    out = np.full(cm.data.shape, NODATA, np.uint8)
    reproject(other.data, out, src_transform=other.transform, src_crs=other.crs, dst_transform=cm.transform,
              dst_crs=cm.crs, src_nodata=NODATA, dst_nodata=NODATA, resampling=Resampling.nearest)
    return out, abs(other.transform.a)


def render_map(map_path: str | Path, out_png: str | Path, image: list[str] | None = None,
               bands: list[int] | None = None, truth: str | None = None, scheme: str | None = None,
               alpha: float = 0.6, title: str | None = None, beside: str | Path | None = None) -> Path:
    """Draw a class map (a COG landcover wrote) as a PNG over its imagery (the rasters it records, or `image`),
    with a legend and a scale bar; with `truth` (a land-cover raster) and its `scheme`: truth | map | agreement;
    `beside`, another class map of the same classes (a tile map beside a per-pixel one, say), adds its panel
    before this one. Returns the PNG's path.

        render_map("maps/zion.tif", "maps/zion.png", truth="nlcd2011.tif", scheme="nlcd-grouped")
    """
    map_path, out = Path(map_path), Path(out_png)
    if out.suffix.lower() != ".png":
        raise LandcoverError("the figure is a PNG: give --out a .png name", out)
    check_output(out, "file")
    if not 0.0 <= alpha <= 1.0:
        raise LandcoverError(f"alpha {alpha} is not between 0 and 1")
    if truth and not scheme:
        raise LandcoverError("a truth raster needs a scheme (how its codes become classes)", truth)
    cm = read_class_map(map_path)
    scene = _imagery(map_path, cm, image, bands)
    transform, width, height = display_grid(cm, _image_res(scene, cm) if scene else None)
    background = _background(scene, cm, transform, width, height, map_path) if scene else None
    opacity = alpha if background is not None else 1.0
    lut = _lut(cm.classes, opacity)
    panels = [("prediction", cm.data, lut)]
    if beside is not None:
        other, cell = _other_map_on_grid(beside, cm)
        panels.insert(0, (f"{Path(beside).name} ({cell:g} m cells)", other, lut))
    entries = legend_entries(cm.data, cm.classes)
    info: dict = {"map": str(map_path), "legend": [{"name": n, "color": c, "share": s} for n, c, s in entries],
                  "imagery": list(scene.paths) if background is not None else None,
                  "beside": str(beside) if beside else None}
    if truth:
        ref = truth_on_grid(cm, truth, scheme)
        stats = _agreement(cm, ref, str(truth), scheme)
        both = (cm.data != NODATA) & (ref != NODATA)
        agree = np.where(both, (cm.data == ref).astype(np.uint8), NODATA)
        agree_lut = _lut([{"id": 0, "color": DISAGREE_COLOR}, {"id": 1, "color": AGREE_COLOR}], 1.0)
        panels = [("truth", ref, _lut(cm.classes, opacity, other=True)), *panels, ("agreement", agree, agree_lut)]
        info["agreement"] = stats
    fig, axes = new_figure(*figure_size(cm, len(panels)), cols=len(panels))
    axes = np.atleast_1d(axes)
    left, bottom, right, top = array_bounds(*cm.data.shape, cm.transform)
    extent = (left, right, bottom, top)
    for ax, (name, data, table) in zip(axes, panels, strict=True):
        if background is not None and name != "agreement":
            ax.imshow(background, extent=extent, interpolation="antialiased")
        ax.imshow(table[_on_display(data, cm, transform, width, height)], extent=extent, interpolation="nearest")
        ax.set_axis_off()
        if len(panels) > 1:
            ax.set_title(name, fontsize=10)
        _scale_bar(ax, cm, extent)
    handles = [_patch(c, f"{n}  {s:.1f}%" if s >= 0.05 else f"{n}  <0.1%") for n, c, s in entries]
    if truth:
        names = {n for n, _, _ in entries}
        handles += [_patch(c["color"], f"{c['name']}  (truth only)") for c in cm.classes
                    if c["name"] not in names and info["agreement"]["classes"][c["name"]]["truth"]]
        if info["agreement"]["n_other"]:
            handles.append(_patch(OTHER_COLOR, "truth: not a map class"))
        handles += [_patch(AGREE_COLOR, "agree"), _patch(DISAGREE_COLOR, "disagree")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False,
               title="class  (share of map)", title_fontsize=8)
    heading = title or map_path.name
    if truth:
        share = info["agreement"]["agreement"]
        heading += (f"\nagreement with {Path(truth).name}: "
                    + (f"{100 * share:.1f}% of {info['agreement']['n_cells']:,} cells" if share is not None else
                       "no cell valid in both"))
    if background is None:
        heading += "\n(no imagery)"
    fig.suptitle(heading, fontsize=10)
    return _save(fig, out, info)


def change_figure(before: ClassMap, after: np.ndarray, change: np.ndarray, hectares: np.ndarray, out: str | Path,
                  title: str = "") -> Path:
    """Before | after | change panels in class colours, and the transition matrix (hectares) as a heatmap.

    `change`: 0 where unchanged, 1 + the new class id where changed, NODATA where either map has none."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    n = len(hectares)
    transform, width, height = display_grid(before)
    left, bottom, right, top = array_bounds(*before.data.shape, before.transform)
    extent = (left, right, bottom, top)
    lut = _lut(before.classes, 1.0)
    names = [""] * n
    for c in before.classes:
        names[int(c["id"])] = c["name"]
    change_lut = np.zeros((256, 4), dtype=np.uint8)
    change_lut[0] = (*hex_rgb(UNCHANGED_COLOR), 255)
    change_lut[1:n + 1] = lut[:n]
    panel_w = 4.5
    map_h = round(4 * min(max(panel_w * (top - bottom) / (right - left), 2.5), 9.0)) / 4
    fig = Figure(figsize=(2 * panel_w + LEGEND_IN, 2 * map_h + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, 2)
    display = lambda data: _on_display(data, before, transform, width, height)  # noqa: E731
    for ax, data, table, name in ((grid[0, 0], before.data, lut, "before"), (grid[0, 1], after, lut, "after"),
                                  (grid[1, 0], change, change_lut, "change (colour: new class; grey: unchanged)")):
        ax.imshow(table[display(data)], extent=extent, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, fontsize=10)
        _scale_bar(ax, before, extent)
    ax = grid[1, 1]
    present = [i for i in range(n) if names[i] and (hectares[i].any() or hectares[:, i].any())]
    values = hectares[np.ix_(present, present)]
    if values.any():
        cmap = colormaps["Blues"].with_extremes(bad="white")
        norm = LogNorm(vmin=values[values > 0].min(), vmax=max(values.max(), 2 * values[values > 0].min()))
        image = ax.imshow(np.ma.masked_equal(values, 0), cmap=cmap, interpolation="nearest", norm=norm)
        fig.colorbar(image, ax=ax, shrink=0.8, label="hectares (log colour)")
        k = len(present)
        size = max(5.0, min(8.0, 90 / max(k, 1)))
        for i in range(k):
            for j in range(k):
                if values[i, j] > 0:
                    ax.text(j, i, f"{values[i, j]:,.1f}", ha="center", va="center", fontsize=size,
                            color="white" if norm(values[i, j]) > 0.6 else "black",
                            fontweight="bold" if i != j else "normal")
        labels = [names[i] for i in present]
        ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
    ax.set(xlabel="after (to)", ylabel="before (from)")
    ax.set_title("transitions, hectares (off-diagonal: change)", fontsize=10)
    shown = set(np.unique(before.data)) | set(np.unique(after))
    handles = [_patch(c["color"], c["name"]) for c in before.classes if int(c["id"]) in shown]
    handles.append(_patch(UNCHANGED_COLOR, "unchanged"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(out), {"classes": names, "hectares": hectares.tolist()})
