"""`check_inputs`: what a chips or predict run on these inputs will meet, found in seconds before a long run:
CRSs, nodata shares, band counts against a bundle, overlaps of imagery, labels and AOI, disk for the chips."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from landcover.bundle import load_bundle
from landcover.chips.cut import read_aoi
from landcover.chips.folder import FEW_NODATA, SPECK_ADVICE
from landcover.chips.labels import LabelRaster, summarise_codes
from landcover.errors import LandcoverError
from landcover.geo.grid import footprint, make_grid, parse_length, scene_footprint
from landcover.geo.raster import NODATA_NONE, Scene, crs_name
from landcover.schemes import load_scheme

SAMPLE_PX = 512
"""Imagery is sampled at most this many pixels a side to measure its nodata share."""
NODATA_WARN = 0.5
SPECK_BUDGET_PX = 4096 * 4096
"""At most this many pixels are read at full resolution to find nodata specks."""
SPECK_WARN = 0.05
"""Specks in this share of the sampled tiles are a warning."""


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
        warnings = sum(level == "warning" for level, _ in self.findings)
        verdict = (f"{self.problems} problem(s): the run would stop" if self.problems else
                   f"no problem found, {warnings} warning(s) to read" if warnings else "no problem found")
        return "\n".join([*lines, verdict])


def check_inputs(image: list[str | Path], *, bands: list[int] | None = None, labels: str | Path | None = None,
                 scheme: str | Path | None = None, aoi: str | Path | None = None, bundle: str | Path | None = None,
                 tile_size: str = "480m", fmt: str = "png", out: str | Path | None = None,
                 nodata: float | str | None = None) -> CheckReport:
    """Inspect a run's inputs and say what will happen: the imagery (CRS, resolution, bands, nodata share), the
    labels and AOI (CRS, overlap with the imagery, codes the scheme lacks), a bundle (band count, resolution:
    read directly or warped) and, with `out`, the chips planned against the free disk there. `nodata` (a value or
    'none') replaces the imagery's declared nodata value, as the run's --nodata would.

        print(check_inputs(["b2.tif", "b3.tif"], labels="nlcd.tif", scheme="nlcd-grouped", out="chips/").summary())
    """
    report = CheckReport()
    try:
        scene = Scene.open([str(p) for p in image], bands, nodata=nodata)
    except LandcoverError as exc:
        report.add("problem", str(exc))
        return report
    unit = "degrees" if scene.crs.is_geographic else "m"
    utm = " (geographic: tiles are cut on the UTM zone of its centre)" if scene.crs.is_geographic else ""
    report.add("ok", f"imagery: {len(scene.paths)} file(s), {scene.count} band(s) {scene.dtype}, {scene.width} x "
                     f"{scene.height} px of {scene.res[0]:g} {unit} on {crs_name(scene.crs)}{utm}")
    share = nodata_share(scene)
    values = "--nodata none: no nodata value" if nodata == NODATA_NONE else f"nodata values {list(scene.nodata)}"
    if share >= 1:
        report.add("problem", f"imagery nodata: every pixel read is nodata ({values}): nothing to chip or predict"
                              + ("; if that value is real data, pass --nodata none"
                                 if any(v is not None for v in scene.nodata) else ""))
    else:
        report.add("warning" if share > NODATA_WARN else "ok", f"imagery nodata: {100 * share:.1f}% of the pixels "
                   f"({values}" + ("; tiles with nodata pixels are rejected unless --max-nodata allows them)"
                                   if share else ")"))
    try:
        grid = make_grid([scene], parse_length(tile_size, "tile size"))
    except LandcoverError as exc:
        report.add("problem", str(exc))
        return report
    if 0 < share < 1:
        _check_specks(report, scene, round(grid.tile * grid.res / scene.res[0]) if not scene.crs.is_geographic
                      else grid.tile)
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
        _check_bundle(report, Path(bundle), scene, [str(p) for p in image], bands)
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


def nodata_specks(scene: Scene, tile_px: int, budget: int = SPECK_BUDGET_PX) -> tuple[int, int, int]:
    """Rows of tiles of `tile_px` read at full resolution, evenly spread over the scene (all of them if the scene
    holds at most `budget` pixels): (tiles holding data, tiles whose nodata pixels are under FEW_NODATA of them and
    touch none of their edges: specks inside the data, not a collar or a wedge that runs on past the tile, and the
    nodata pixels in those tiles)."""
    side = max(1, min(tile_px, scene.width, scene.height))
    cols, rows = scene.width // side, scene.height // side
    picked = np.unique(np.linspace(0, rows - 1, max(1, min(rows, budget // (side * scene.width)))).round())
    data = specks = speck_px = 0
    for row in picked.astype(int):
        _, valid = scene.read(Window(0, row * side, cols * side, side))
        for missing in np.split(~valid, cols, axis=1):
            n = int(missing.sum())
            if n == missing.size:
                continue
            data += 1
            edges = missing[0].any() or missing[-1].any() or missing[:, 0].any() or missing[:, -1].any()
            if 0 < n < FEW_NODATA * missing.size and not edges:
                specks += 1
                speck_px += n
    return data, specks, speck_px


def _check_specks(report: CheckReport, scene: Scene, tile_px: int) -> None:
    """Nodata scattered inside the data: a warning naming --nodata none and --max-nodata when it would cost
    tiles."""
    data, specks, pixels = nodata_specks(scene, tile_px)
    if not specks:
        return
    report.add("warning" if specks >= SPECK_WARN * data else "ok",
               f"imagery nodata in specks: {specks} of {data} tiles of {tile_px} px read "
               f"({100 * specks / data:.0f}%) hold nodata in under {100 * FEW_NODATA:g}% of their pixels, scattered "
               f"inside the data ({pixels:,} pixels), not a collar: chips would reject them; {SPECK_ADVICE}")


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


def _check_bundle(report: CheckReport, bundle: Path, scene: Scene, images: list[str],
                  bands: list[int] | None) -> None:
    """The bundle loads as predict would load it (weights included), the bands it reads against the imagery's, and
    whether predict reads the imagery directly or warps it."""
    try:
        loaded = load_bundle(bundle)
        picks = pick_bands(loaded.chip, images, bands)
    except LandcoverError as exc:
        report.add("problem", str(exc))
        return
    chip = loaded.chip
    need = max(loaded.input.bands) + 1
    given = len(picks)
    report.add("ok" if given >= need else "problem",
               f"bundle {bundle}: reads {need} band(s), the imagery gives {given}"
               + (f" (stack bands {picks})" if picks != list(range(1, given + 1)) else ""))
    res = float(chip.get("res", 0))
    if scene.crs.is_geographic or not math.isclose(scene.res[0], res, rel_tol=1e-3):
        report.add("ok", f"predict will warp the imagery on the fly to the bundle's {res:g} m")
    else:
        report.add("ok", f"predict will read the imagery directly (the bundle's {res:g} m)")


def pick_bands(chip: dict, images: list[str], bands: list[int] | None) -> list[int]:
    """1-based stack bands that make a bundle's chip bands (`chip`: its model.json's "chip"): --bands, else the
    bands the chips were cut from, found by file name and band; a stack that cannot give them is refused in
    plain words."""
    if bands:
        return list(bands)
    stack = Scene.open(images)
    source = chip.get("source_bands")
    files = chip.get("source_files") or []
    if source and len(files) == len(images):
        offsets: dict[int, int] = {}
        for pos, (fi, _) in enumerate(stack.band_sources):
            offsets.setdefault(fi, pos)
        picks = [offsets.get(fi, -stack.count) + b for fi, b in source]
        if all(1 <= p <= stack.count and stack.band_sources[p - 1] == (fi, b)
               for p, (fi, b) in zip(picks, source, strict=True)):
            return picks
    if not source or stack.count == len(source):
        return list(range(1, stack.count + 1))
    cut = ", ".join(f"band {b} of {files[fi] if fi < len(files) else f'file {fi + 1}'}" for fi, b in source)
    raise LandcoverError(f"the bundle reads {len(source)} bands ({cut}, as its chips were cut); the imagery stacks "
                         f"{stack.count} band{'' if stack.count == 1 else 's'} in {len(images)} file(s): name the "
                         f"{len(source)} to read, in that order, with --bands (1-based over the stack)",
                         ", ".join(images))


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
