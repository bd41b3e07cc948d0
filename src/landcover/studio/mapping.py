"""The studio's "Map all": the current model over the whole raster through landcover's own prediction path.

The model is saved as DIR/bundle (a pixel bundle, as `train --task pixels` writes), then `predict_raster` maps
every pixel into DIR/map.tif (a class-map COG; the same engine, windows, resume and outputs as `landcover predict
DIR/bundle --image ... --out DIR/map.tif`, which reproduces it). With the CRF toggle on, the model's map and
probabilities go to DIR/model-map.tif and the dense CRF (`refine_raster`, settings from the imagery's resolution)
refines them into DIR/map.tif (`landcover crf DIR/model-map.probs.tif --image ... --out DIR/map.tif` reproduces
that). With a reference (`--truth`), the map is assessed (`assess_map`: accuracies and area-adjusted class areas
with 95% intervals) into DIR/assessment/. The work runs in a thread; the page polls `state()`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from landcover.bundle import save_bundle
from landcover.errors import LandcoverError
from landcover.label.server import BadRequest


@dataclass
class Reference:
    """Reference data to assess the studio's maps against (`assess_map`'s truth, scheme and field)."""

    path: str
    scheme: str | None = None
    field: str | None = None

    def check(self) -> bool:
        """Refuse a reference that cannot be read (one line naming it); whether it is a raster (a layer)."""
        from landcover.geo.raster import open_raster
        from landcover.maps.accuracy import VECTOR_SUFFIXES
        from landcover.maps.classmap import raster_classes
        from landcover.schemes import load_scheme

        if Path(self.path).suffix.lower() in VECTOR_SUFFIXES:
            if not Path(self.path).exists():
                raise LandcoverError("no such file", self.path)
            if not self.field:
                raise LandcoverError("vector reference data need --truth-field (the attribute holding each "
                                     "feature's class)", self.path)
            return False
        open_raster(self.path).close()
        if self.scheme:
            load_scheme(self.scheme)
        else:
            raster_classes(self.path)  # its own class names, else a clear error (name --truth-scheme)
        return True


@dataclass
class MapJob:
    """Map all, one run at a time, its state for the page."""

    out: Path
    images: list[str]
    nodata: float | str | None = None
    reference: Reference | None = None
    log: object = print
    status: dict = field(default_factory=lambda: {"state": "idle"})
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def map_path(self) -> Path:
        return self.out / "map.tif"

    def state(self) -> dict:
        with self.lock:
            return dict(self.status)

    def start(self, bundle: Path, crf: bool = False, model_version: int = 0, save=None,
              target: Path | None = None, images: list[str] | None = None, probabilities: bool = False,
              on_done=None) -> dict:
        """Map the raster with the bundle at `bundle` (first saved there when `save`, the studio model's Bundle)
        into `target` (default DIR/map.tif) in a thread; refused while one runs. `images`: what the bundle reads
        (default the imagery); `probabilities`: keep them beside the map; `on_done()` is called once it is made."""
        with self.lock:
            if self.status["state"] == "running":
                raise BadRequest(409, "a map is being made: wait for it to finish")
            self.status = {"state": "running", "stage": "saving the bundle", "done": 0, "total": 0,
                           "run": self.status.get("run", 0) + 1, "model_version": model_version, "crf": crf,
                           "map": str(target or self.map_path), "started": time.time()}
        threading.Thread(target=self._run, args=(Path(bundle), save, crf, Path(target or self.map_path),
                                                 images or self.images, probabilities, on_done), daemon=True).start()
        return self.state()

    def _update(self, **values) -> None:
        with self.lock:
            self.status.update(values)

    def _run(self, bundle_dir: Path, save, crf: bool, target: Path, images: list[str], probabilities: bool,
             on_done) -> None:
        from landcover.predict.dense import refine_raster
        from landcover.predict.raster import predict_raster

        started = time.perf_counter()
        try:
            if save is not None:
                save_bundle(save, bundle_dir)
            common = {"nodata": self.nodata, "overwrite": True, "progress": False, "log": lambda _: None}
            first = target.with_name(f"model-{target.name}") if crf else target
            self._update(stage="mapping with the model")
            predict_raster(bundle_dir, images, first, probabilities=crf or probabilities,
                           on_progress=lambda done, total: self._update(done=done, total=total), **common)
            if crf:
                self._update(stage="refining with the CRF", done=0, total=0)
                refine_raster(first.with_suffix(".probs.tif"), self.images, target,
                              on_progress=lambda done, total: self._update(done=done, total=total), **common)
            assessment = None
            if self.reference is not None:
                self._update(stage="assessing against the reference")
                assessment = assess(target, self.reference, self.out / f"assessment-{target.stem}"
                                    if target != self.map_path else self.out / "assessment")
            if on_done is not None:
                on_done()
            files = ([bundle_dir] if save is not None else []) + [target]
            self._update(state="done", stage="", seconds=round(time.perf_counter() - started, 2),
                         files=[str(p.relative_to(self.out)) for p in files], assessment=assessment)
        except (LandcoverError, OSError, ValueError) as exc:
            self._update(state="failed", stage="", message=str(exc))
            self.log(f"map all failed: {exc}")


def assess(map_path: Path, reference: Reference, out: Path) -> dict:
    """The map against the reference (files into `out`) and what the page shows of it."""
    from landcover.maps.accuracy import assess_map

    result = assess_map(map_path, reference.path, out, reference.field, reference.scheme)
    e = result.estimates
    return {"reference": Path(reference.path).name, "samples": int(result.report.confusion.sum()),
            "accuracy": _number(result.report.accuracy), "kappa": _number(result.report.kappa),
            "overall_accuracy": _number(e["overall_accuracy"]),
            "overall_accuracy_ci95": _number(e["overall_accuracy_ci95"]),
            "classes": [{"class": row["class"], **{k: _number(row.get(k)) for k in (
                "mapped_ha", "estimated_ha", "estimated_ha_ci95", "users", "producers")}} for row in e["classes"]],
            "folder": out.name}


def _number(value) -> float | None:
    """A number for JSON (NaN, where a class has no sample, becomes null)."""
    return None if value is None or not math.isfinite(value) else round(float(value), 4)
