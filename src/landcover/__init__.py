"""landcover: aerial and satellite imagery into land-cover maps.

The Python API, one function per stage of the data flow (each takes paths, numbers and strings, and returns
what the command line prints a summary of):

    import landcover as lc
    chips = lc.make_chips(["b2.tif", "b3.tif", "b4.tif"], "chips/", labels="nlcd.tif", scheme="nlcd-grouped")
    lc.split_manifest("chips/", "80:10:10", blocks=4)
    run = lc.train_model("chips/", mode="features", head="logreg", name="lite0-lr")
    report, _ = lc.evaluate_bundle(run / "bundle", "chips/", "test")
    result = lc.predict_raster(run / "bundle", ["b2.tif", "b3.tif", "b4.tif"], "maps/map.tif")

Stages load when first used, so `import landcover` stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from landcover.version import __version__

_API = {
    # acquisition: imagery and labels for an area from STAC catalogs
    "acquire_area": "landcover.acquire.run",
    # chips: imagery + labels -> chips and a manifest
    "make_chips": "landcover.chips.make",
    "import_chips": "landcover.chips.imported",
    "read_manifest": "landcover.manifest",
    "load_scheme": "landcover.schemes",
    # datasets: splits and training-ready files
    "split_manifest": "landcover.datasets.splits",
    "export": "landcover.datasets.formats.export",
    # training: a manifest -> a run folder with a model bundle
    "train_model": "landcover.train.trainer",
    "TrainConfig": "landcover.train.config",
    "list_runs": "landcover.train.runs",
    # evaluation and prediction with a bundle
    "load_bundle": "landcover.bundle",
    "evaluate_bundle": "landcover.predict.chips",
    "evaluate_segmentation": "landcover.segment.evaluate",
    "predict_raster": "landcover.predict.raster",
    "predict_folder": "landcover.predict.folder",
    "predict_dense": "landcover.predict.dense",
    "refine_raster": "landcover.predict.dense",
    "MapRequest": "landcover.predict.request",
    "export_onnx": "landcover.onnx_graph",
    # maps
    "render_map": "landcover.maps.figures",
    "detect_change": "landcover.maps.change",
    "assess_map": "landcover.maps.accuracy",
    # labelling: scribbles -> dense labels
    "label_raster": "landcover.label.dense",
    # the studio: a map over its imagery at any size, in the browser
    "studio": "landcover.studio.server",  # the package is callable too: lc.studio(...) either way
    # the ground
    "Engine": "landcover.engine",
    "LandcoverError": "landcover.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import a stage the first time one of its API names is used."""
    if name not in _API:
        raise AttributeError(f"module 'landcover' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
