"""One home for a map's options: what the per-tile, per-pixel and dense (CRF) paths read, built once by the CLI and
accepted as keywords by the API (`predict_raster(bundle, images, out, stride="240m", smooth=3)`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from landcover.bounds import COUNT
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.geo.stretch import Stretch
from landcover.segment.crf import CrfSettings
from landcover.segment.crfdefaults import CrfChoice, resolve_crf

BLOCK_WINDOWS = 64
"""Tile maps: windows per block (one read, one engine task, one resume record): bounds memory whatever the
raster's size."""
CRF_BLOCK_PX = 512
"""Dense maps: core side of a CRF block, in cells of the CRF's grid (each also reads `reach` cells of margin)."""


@dataclass(frozen=True)
class MapRequest:
    """Every option of a whole-raster map. Fields a path does not use keep their defaults (the CLI refuses them
    where they mean nothing, e.g. --stride with a segmentation bundle)."""

    bands: tuple[int, ...] | None = None
    """1-based stack bands that make the bundle's chip bands (default: those the chips were cut from); for `crf`,
    the bands the appearance kernel compares."""
    aoi: str | Path | None = None
    """Map only cells (pixels) inside these polygons."""
    nodata: float | str | None = None
    """The imagery's nodata value over the one its files declare, or 'none' (every pixel is data)."""
    probabilities: bool = False
    """Also write per-class probabilities (<out>.probs.tif)."""
    truth: str | Path | None = None
    """A land-cover raster to score the map against, with `truth_scheme`."""
    truth_scheme: str | None = None
    # tile maps
    stride: str | None = None
    """Tile maps: the step between windows, m or px, dividing the tile (default: the tile)."""
    smooth: int = 0
    """Tile maps: also write the map after an N x N plurality filter."""
    max_nodata: float = 0.25
    """Tile maps: skip windows with more than this share of nodata pixels."""
    decimate: int = 1
    """Tile maps: classify only every N-th tile in each direction (the rest nodata), as the hybrid dense map asks."""
    block_windows: int = BLOCK_WINDOWS
    stretch: Stretch | None = None
    """Tile maps of 8-bit (PNG) chip bundles: the stretch to 8 bits (default: the scene's own percentiles; a tiled
    run gives every tile the whole scene's)."""
    # per-pixel maps
    window: str | None = None
    """Segmentation bundles: window side, px or m (default 512 px)."""
    overlap: str | None = None
    """Segmentation bundles: how far windows overlap, px or m (default a quarter window)."""
    # the network
    batch_size: int | None = None
    runtime: str = "auto"
    """'auto' (onnxruntime when the bundle holds a fresh model.onnx, else torch), 'torch' or 'onnx'."""
    resampling: str = "bilinear"
    """Imagery resampling where it must be warped."""
    # dense maps through the CRF
    crf: CrfSettings | CrfChoice = field(default_factory=CrfChoice)
    """The CRF's settings: a CrfChoice (the default: by the imagery's resolution, widths in metres or pixels) or
    CrfSettings used as they are."""
    threshold: float = 0.5
    """Hybrid: tiles whose top probability is >= this are evidence, the rest unknown."""
    evidence_model: str = "none"
    """Hybrid: 'none' (the confident tiles alone) or 'pixels' (the confident tiles' pixels train the pixel model,
    whose probabilities are the CRF's evidence everywhere: on the demo's Zion map 0.645 of NLCD's pixels against
    0.646 without, in twice the time, so not the default)."""
    crf_block: int = CRF_BLOCK_PX
    crf_stretch: Stretch | None = None
    """Dense maps: the appearance bands' stretch to display levels (default: the scene's own; a tiled run gives
    every tile the whole scene's)."""
    crf_lattice: tuple[int, int] = (0, 0)
    """Dense maps: where the CRF's blocks start, rows and columns (cells of its grid) before the map's corner: a
    tile of a tiled run places them where the whole map's fall."""
    # the run
    engine: Engine | str | None = None
    """'local', 'process:N' or 'ray[:N]' (or an Engine)."""
    overwrite: bool = False
    allow_empty: bool = False
    """Write the map even when no cell can be predicted (default: an error saying why)."""
    progress: bool = True
    on_progress: Callable[[int, int], None] | None = None
    """Called with (done, total) windows (CRF: blocks) as the map is made: what a page shows (the studio's)."""
    log: Callable[[str], None] = print

    @classmethod
    def of(cls, request: MapRequest | None, options: dict[str, Any]) -> MapRequest:
        """The request an API call describes: `request` (or the defaults) with keyword `options` over it, checked."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown map options {unknown}: see landcover.predict.request.MapRequest")
        if options.get("bands") is not None:
            options["bands"] = tuple(options["bands"])
        made = replace(request or cls(), **options)
        made.check()
        return made

    @property
    def runner(self) -> Engine:
        """The engine the work runs on."""
        return Engine.of(self.engine)

    def check(self) -> None:
        """Refuse values no path can use, naming the option."""
        if not 0 <= self.max_nodata <= 1:
            raise LandcoverError(f"--max-nodata {self.max_nodata} must be a fraction between 0 and 1")
        if self.batch_size is not None:
            COUNT.check(self.batch_size, "--batch-size")
        if self.smooth and (self.smooth < 3 or self.smooth % 2 == 0):
            raise LandcoverError(f"--smooth {self.smooth} must be an odd window size >= 3")
        if self.decimate < 1:
            raise LandcoverError(f"--decimate {self.decimate} must be a whole number >= 1 (1: every tile)")
        if self.evidence_model not in ("pixels", "none"):
            raise LandcoverError(f"--evidence-model {self.evidence_model!r}: choose pixels or none")
        if not 0 <= self.threshold <= 1:
            raise LandcoverError(f"--threshold {self.threshold} must be a probability between 0 and 1")
        check_crf(resolve_crf(self.crf, 30.0))  # a bad preset, width or setting fails here, before any work


def check_crf(settings: CrfSettings) -> None:
    """Refuse CRF settings the CRF cannot use, with the option's name."""
    if not 0 < settings.downscale <= 1:
        raise LandcoverError(f"--downscale {settings.downscale:g} must be in (0, 1] (1: full resolution)")
    for name in ("sxy_gaussian", "sxy_bilateral", "srgb"):
        if getattr(settings, name) <= 0:
            raise LandcoverError(f"--{name.replace('_', '-')} must be > 0")
    if settings.iterations < 0:
        raise LandcoverError(f"--iterations {settings.iterations} must be >= 0")
