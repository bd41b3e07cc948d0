"""`check_inputs`: what a chips or predict run on these inputs will meet, found in seconds before a long run:
CRSs, nodata shares, band counts against a bundle, overlaps of imagery, labels and AOI, disk for the chips."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely

from landcover.chips.cut import read_aoi
from landcover.chips.labels import LabelRaster, summarise_codes
from landcover.errors import LandcoverError
from landcover.geo.grid import footprint, make_grid, parse_length, scene_footprint
from landcover.geo.raster import Scene, crs_name
from landcover.schemes import load_scheme

SAMPLE_PX = 512
"""Imagery is sampled at most this many pixels a side to measure its nodata share."""
NODATA_WARN = 0.5


@dataclass
class CheckReport:
    """Findings, each 'ok', 'warning' or 'problem' with one line of text."""

    findings: list[tuple[str, str]] = field(default_factory=list)

    def add(self, level: str, text: str) -> None:
        self.findings.append((level, text))

    @property
    def problems(self) -> int:
        """How many findings would stop the run."""
        return sum(level == "problem" for level, _ in self.findings)

    def summary(self) -> str:
        """One line per finding, then the verdict."""
        lines = [f"{level}: {text}" for level, text in self.findings]
        verdict = "no problem found" if not self.problems else f"{self.problems} problem(s): the run would stop"
        return "\n".join([*lines, verdict])


def check_inputs(image: list[str | Path], *, bands: list[int] | None = None, labels: str | Path | None = None,
                 scheme: str | Path | None = None, aoi: str | Path | None = None, bundle: str | Path | None = None,
                 tile_size: str = "480m", fmt: str = "png", out: str | Path | None = None) -> CheckReport:
    """Inspect a run's inputs and say what will happen: the imagery (CRS, resolution, bands, nodata share), the
    labels and AOI (CRS, overlap with the imagery, codes the scheme lacks), a bundle (band count, resolution:
    read directly or warped) and, with `out`, the chips planned against the free disk there.

        print(check_inputs(["b2.tif", "b3.tif"], labels="nlcd.tif", scheme="nlcd-grouped", out="chips/").summary())
    """
    report = CheckReport()
    try:
        scene = Scene.open([str(p) for p in image], bands)
    except LandcoverError as exc:
        report.add("problem", str(exc))
        return report
    unit = "degrees" if scene.crs.is_geographic else "m"
    utm = " (geographic: tiles are cut on the UTM zone of its centre)" if scene.crs.is_geographic else ""
    report.add("ok", f"imagery: {len(scene.paths)} file(s), {scene.count} band(s) {scene.dtype}, {scene.width} x "
                     f"{scene.height} px of {scene.res[0]:g} {unit} on {crs_name(scene.crs)}{utm}")
    share = nodata_share(scene)
    level = "warning" if share > NODATA_WARN else "ok"
    report.add(level, f"imagery nodata: {100 * share:.1f}% of the pixels (nodata values {list(scene.nodata)}"
                      + ("; tiles with nodata pixels are rejected unless --max-nodata allows them)" if share else ")"))
    try:
        grid = make_grid([scene], parse_length(tile_size, "tile size"))
    except LandcoverError as exc:
        report.add("problem", str(exc))
        return report
    area = scene_footprint(scene, grid.crs)
    if labels is not None:
        area = _check_labels(report, labels, scheme, scene, grid, area)
    if aoi is not None:
        try:
            geom = read_aoi(aoi, grid.crs)
            inside = geom.intersection(area).area / max(area.area, 1e-9)
            report.add("ok" if inside > 0 else "problem", f"AOI {aoi}: covers {100 * inside:.1f}% of the imagery"
                       + ("" if inside > 0 else " (it lies outside the imagery)"))
            area = geom.intersection(area)
        except LandcoverError as exc:
            report.add("problem", str(exc))
    if bundle is not None:
        _check_bundle(report, Path(bundle), scene)
    if out is not None and area.area > 0:
        _check_disk(report, Path(out), area.area, grid.tile, scene, fmt, grid.tile * grid.res)
    return report


def nodata_share(scene: Scene) -> float:
    """Share of nodata pixels (every band at its nodata value, or any band NaN), on a decimated read."""
    scale = max(scene.width, scene.height) / SAMPLE_PX
    shape = (max(1, round(scene.height / max(scale, 1))), max(1, round(scene.width / max(scale, 1))))
    missing = np.ones(shape, bool)
    nan = np.zeros(shape, bool)
    for (file_index, band), nodata in zip(scene.band_sources, scene.nodata, strict=True):
        with rasterio.open(scene.paths[file_index]) as src:
            data = src.read(band, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        floating = np.issubdtype(data.dtype, np.floating)
        if floating:
            nan |= np.isnan(data)
        if nodata is None or math.isnan(nodata):
            missing &= np.isnan(data) if floating else False
        else:
            missing &= data == nodata
    return float((missing | nan).mean())


def _check_labels(report: CheckReport, labels: str | Path, scheme: str | Path | None, scene: Scene, grid,
                  area: shapely.Geometry) -> shapely.Geometry:
    """Labels' CRS, their overlap with the imagery and, with a scheme, the codes it lacks; returns the overlap."""
    try:
        raster = LabelRaster.open(labels)
    except LandcoverError as exc:
        report.add("problem", str(exc))
        return area
    label_area = footprint(raster.bounds, raster.crs, grid.crs)
    covered = label_area.intersection(area).area / max(area.area, 1e-9)
    same = "the imagery's CRS" if raster.crs == scene.crs else f"{crs_name(raster.crs)} (resampled once, nearest)"
    report.add("ok" if covered > 0.5 else "warning" if covered > 0 else "problem",
               f"labels {labels}: on {same}; they cover {100 * covered:.1f}% of the imagery")
    if scheme is not None and covered > 0:
        try:
            window = raster.window_for(label_area.intersection(area).bounds, grid.crs)
            unknown = raster.unknown_codes(load_scheme(scheme), window)
            report.add("problem" if unknown else "ok", f"label codes: {len(unknown)} not in scheme {scheme}"
                       + (f": {summarise_codes(unknown)}" if unknown else ""))
        except LandcoverError as exc:
            report.add("problem", str(exc))
    return label_area.intersection(area)


def _check_bundle(report: CheckReport, bundle: Path, scene: Scene) -> None:
    """The bands a bundle reads against the imagery's, and whether predict reads it directly or warps it."""
    try:
        meta = json.loads((bundle / "model.json").read_text())
    except (OSError, ValueError):
        report.add("problem", f"{bundle}: not a model bundle (model.json missing or unreadable)")
        return
    chip = meta.get("chip", {})
    need = len(chip.get("source_bands") or []) or max(meta["input"]["bands"]) + 1
    report.add("ok" if scene.count >= need else "problem",
               f"bundle {bundle}: reads {need} band(s), the imagery gives {scene.count}")
    res = float(chip.get("res", 0))
    if scene.crs.is_geographic or not math.isclose(scene.res[0], res, rel_tol=1e-3):
        report.add("ok", f"predict will warp the imagery on the fly to the bundle's {res:g} m")
    else:
        report.add("ok", f"predict will read the imagery directly (the bundle's {res:g} m)")


def _check_disk(report: CheckReport, out: Path, area_m2: float, tile_px: int, scene: Scene, fmt: str,
                tile_m: float) -> None:
    """The most chips the area can hold and their size, against the free disk where they would go."""
    tiles = int(area_m2 // tile_m ** 2)
    itemsize = 1 if fmt == "png" else np.dtype(scene.dtype).itemsize
    channels = min(scene.count, 4) if fmt == "png" else scene.count
    need = tiles * (tile_px ** 2 * channels * itemsize + 1024)
    parent = out
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    report.add("ok" if need < free else "problem",
               f"chips: at most {tiles:,} tiles of {tile_m:g} m, up to {need / 1e6:,.1f} MB uncompressed; "
               f"{free / 1e9:,.1f} GB free at {parent}")
