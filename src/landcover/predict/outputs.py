"""What every whole-raster prediction shares: the bands it reads, its outputs (refusing to clobber, resuming a
matching unfinished run) and the result it reports."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from rasterio.enums import Resampling

from landcover.atomic import write_text
from landcover.bundle import Bundle
from landcover.chips.check import pick_bands
from landcover.errors import LandcoverError
from landcover.geo.grid import area_text
from landcover.geo.raster import Scene, absolute, open_raster
from landcover.schemes import load_scheme


@dataclass
class RasterResult:
    """What a prediction wrote and measured."""

    out: Path
    files: dict[str, Path]
    counts: dict[str, int]
    """Map cells per class (and 'nodata')."""
    hectares: dict[str, float]
    windows: int
    skipped: int
    resumed: int
    seconds: float
    seconds_read: float
    seconds_infer: float
    reading: str
    scores: dict = field(default_factory=dict)
    runtime: str = "torch"
    unit: str = "window"
    """What `windows` counts: windows of a network, or blocks of the dense CRF."""

    @property
    def tiles_per_second(self) -> float:
        """Windows predicted per second of wall time (this run's windows only)."""
        return self.windows / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        """A few lines for the terminal."""
        total = sum(self.hectares.values())
        lines = [f"map: {self.out}  ({self.reading})"]
        if self.unit == "block":
            resumed = f", {self.resumed} block rows resumed" if self.resumed else ""
            lines.append(f"CRF: {self.windows} blocks{resumed}; {self.seconds:.1f} s in all")
        else:
            lines.append(f"windows: {self.windows} predicted, {self.skipped} skipped (nodata/AOI)"
                         + (f", {self.resumed} blocks resumed" if self.resumed else "")
                         + f"; {self.seconds:.1f} s, {self.tiles_per_second:.1f} tiles/s on {self.runtime}")
        shares = ", ".join(f"{n} {area_text(h)} ({100 * h / total:.1f}%)" for n, h in self.hectares.items() if h)
        lines.append(f"classes: {shares}" if total else "classes: none predicted")
        for name, score in self.scores.items():
            lines.append(f"agreement with truth ({name}): {score['agreement']:.3f} over {score['n_cells']} cells")
        lines += [f"{k}: {v}" for k, v in self.files.items() if k != "map"]
        return "\n".join(lines)


@contextmanager
def kept_only_when_started(state: Path) -> Iterator[None]:
    """On failure, remove a prediction's state unless a block finished (then a rerun resumes from it)."""
    try:
        yield
    except BaseException:
        if not any(state.glob("*.npz")):
            shutil.rmtree(state, ignore_errors=True)
        raise


def check_map_name(out: Path) -> None:
    """A class map is a GeoTIFF: refuse any other name before anything is written."""
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise LandcoverError("the map is a GeoTIFF: give --out a .tif name", out)


def output_files(out: Path, smooth: int, probabilities: bool) -> dict[str, Path]:
    stem = out.with_suffix("")
    files = {"map": out, "tiles": Path(f"{stem}.tiles.parquet"), "summary": Path(f"{stem}.json")}
    if smooth:
        files["smoothed"] = Path(f"{stem}.smooth{smooth}.tif")
    if probabilities:
        files["probabilities"] = Path(f"{stem}.probs.tif")
    return files


def fingerprint(sources: list[str | Path], images: list[str], settings: dict) -> str:
    """What a resumed run must match: its sources (a bundle folder's files, or a file, by name, size and time; a
    bundle's ONNX graph left out, as predict may rewrite it), the imagery and the settings that change results."""
    found = []
    for source in map(Path, sources):
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix != ".onnx"
                       and p.name != "onnx.json") if source.is_dir() else [source]
        found += [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    data = {"sources": found, "images": [absolute(p) for p in images], **settings}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_outputs(out: Path, files: dict[str, Path], state: Path, fingerprint: str, overwrite: bool) -> None:
    """Refuse to clobber a finished map unless told; resume a matching unfinished run, else start afresh."""
    if state.exists():
        stamp = state / "fingerprint"
        if stamp.exists() and stamp.read_text() == fingerprint:
            return
        if not overwrite:
            raise LandcoverError("an unfinished prediction with other settings is in the way (rerun it with its "
                                 "own settings, or pass --overwrite)", state)
        shutil.rmtree(state)
    existing = [p for p in files.values() if p.exists()]
    if existing and not overwrite:
        raise LandcoverError("exists (pass --overwrite to replace it)", existing[0])
    if not out.parent.exists():
        out.parent.mkdir(parents=True)
    state.mkdir()
    write_text(state / "fingerprint", fingerprint)


def check_truth(truth: str | Path | None, truth_scheme: str | None, resampling: str) -> None:
    """Before any work: --truth needs --scheme and must open; the resampling must be one GDAL knows."""
    if truth and not truth_scheme:
        raise LandcoverError("--truth needs --scheme (how its codes map to classes)", truth)
    if truth:
        load_scheme(truth_scheme)
        open_raster(truth).close()
    if resampling not in Resampling.__members__:
        raise LandcoverError(f"unknown resampling {resampling!r}")


def open_scene(bundle: Bundle, images: list[str], bands: list[int] | None,
               nodata: float | str | None = None) -> tuple[list[int], Scene]:
    """The stack bands that make the bundle's chip bands (`pick_bands`) and the scene of them (`nodata` over the
    files' own), refusing imagery with fewer bands than the bundle reads."""
    picks = pick_bands(bundle.chip, images, bands)
    scene = Scene.open(images, bands=picks, name=Path(images[0]).stem, nodata=nodata)
    need = max(bundle.input.bands) + 1
    context = bundle.pixels.context if bundle.pixels else ()
    if scene.count < need and context:
        raise LandcoverError(f"band mismatch: the bundle reads {need} bands, the imagery's {need - len(context)} then "
                             f"{len(context)} of another model's class probabilities on the imagery's grid (the "
                             f"studio's DIR/context.tif: name it last in --image); the stack gives {scene.count}",
                             images[0])
    if scene.count < need:
        raise LandcoverError(f"band mismatch: the bundle reads {need} bands, the imagery gives {scene.count}",
                             images[0])
    if context:  # the probabilities never make a pixel of no imagery valid
        scene = replace(scene, valid_bands=need - len(context))
    return picks, scene


def appearance_scene(bundle: Bundle, picks: list[int], images: list[str], nodata: float | str | None = None
                     ) -> tuple[list[int], Scene]:
    """The bands the CRF's appearance kernel compares for a bundle's map (the three its encoder took as RGB, else
    the first three it reads) and the scene of them."""
    rgb = bundle.chip.get("rgb_bands")
    look = [picks[bundle.input.bands[i]] for i in rgb] if rgb and len(rgb) == 3 else picks[:3]
    return look, Scene.open(images, bands=look, name=Path(images[0]).stem, nodata=nodata)
