"""`make_chips`: imagery and labels, named by file, into a labelled chip dataset (the chips stage's entry point)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from landcover.chips.cut import cut_chips
from landcover.chips.folder import ChipsResult
from landcover.chips.labels import LabelRaster, read_vector_labels
from landcover.chips.rules import Rules
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.geo.grid import make_grid, parse_length
from landcover.geo.raster import Scene, open_raster
from landcover.schemes import ClassScheme, load_scheme, parse_scheme

PathLike = str | Path


def scene_paths(image: PathLike | Sequence[PathLike] | Sequence[Sequence[PathLike]]) -> list[list[str]]:
    """Imagery as scenes of files: one path (one scene), a list of paths (one scene, stacked as bands in that
    order), or a list of such lists (several scenes, cut on one grid)."""
    if isinstance(image, str | Path):
        return [[str(image)]]
    image = list(image)
    if not image:
        raise LandcoverError("no imagery given")
    if all(isinstance(p, str | Path) for p in image):
        return [[str(p) for p in image]]
    return [[str(p) for p in ([s] if isinstance(s, str | Path) else s)] for s in image]


def make_chips(image: PathLike | Sequence[PathLike] | Sequence[Sequence[PathLike]], out: PathLike, *,
               labels: PathLike | None = None, labels_vector: PathLike | None = None,
               burn_attribute: str | None = None, burn_value: int | None = None, class_name: str = "feature",
               all_touched: bool = False, background: str | None = None, strict: bool = False,
               scheme: str | PathLike | None = None,
               bands: list[int] | None = None, nodata: float | str | None = None, aoi: PathLike | None = None,
               regions: str | list[str] | None = None,
               tile_size: str | float = "480m", overlap: str | float = "0px", padding: str | float = "0px",
               crs: str | None = None, resolution: float | None = None, resampling: str = "bilinear",
               rules: str | list[str] | None = None, max_nodata: int = 0, keep: float = 1.0, seed: int = 0,
               layout: str = "folders", fmt: str | None = None, min_labelled: float = 0.0, keep_empty: bool = False,
               overwrite: bool = False, allow_empty: bool = False, engine: Engine | str | None = None,
               block_tiles: int | None = None, shard_size: int | None = None, progress: bool = True,
               log: Callable[[str], None] | None = None) -> ChipsResult:
    """Cut imagery into tiles on a metric grid, label each tile, keep those the rules accept, and write the chips
    with a GeoParquet manifest into `out`; returns what was written (`result.summary()` says it in a few lines).

    Labels are a land-cover raster (`labels`, codes mapped by `scheme`; by default the classes a landcover class
    map names, else 'nlcd') or a vector layer (`labels_vector` with `burn_attribute` or `burn_value`; pixels
    outside its polygons are unlabelled, or the class `background`). `rules` are 'points:K' and/or 'purity:P'
    (default points:3 for class folders). `layout` 'folders' writes <class>/<key>.png (or `fmt='tif'`);
    'pairs' writes images/ + labels/ GeoTIFF masks for segmentation; 'shards' encodes the chips straight into
    WebDataset tars (`fmt='webdataset'`, the default) or TFRecord files, one per block of tiles or per
    `shard_size` chips, the manifest recording each chip's shard and byte range. `engine` is 'local', 'process:N' or
    'ray[:N]'. A killed run, called again with the same arguments, resumes. Keeping no chip is an error that
    says why, unless `allow_empty`.

        make_chips(["b2.tif", "b3.tif", "b4.tif"], "chips/", labels="nlcd.tif", scheme="nlcd-grouped",
                   tile_size="480m", aoi="park.gpkg")
    """
    if (labels is None) == (labels_vector is None):
        raise LandcoverError("give one of labels (a raster) or labels_vector (a vector layer)")
    scenes = [Scene.open(paths, bands, nodata=nodata) for paths in scene_paths(image)]
    if isinstance(regions, str):
        regions = [regions]
    if regions and len(regions) not in (1, len(scenes)):
        raise LandcoverError(f"--region given {len(regions)} times for {len(scenes)} scenes: give it once or "
                             "once per scene")
    if regions and len(regions) == 1:
        regions = regions * len(scenes)
    grid = make_grid(scenes, parse_length(tile_size, "tile size"), parse_length(overlap, "overlap"),
                     parse_length(padding, "padding"), crs, resolution)
    if labels is not None:
        class_scheme = load_scheme(scheme) if scheme else _raster_scheme(labels)
        label_source = LabelRaster.open(labels)
    else:
        label_source, class_scheme, skipped = read_vector_labels(
            labels_vector, grid.crs, load_scheme(scheme) if scheme else None, burn_attribute, burn_value,
            class_name, strict, all_touched, background)
        if skipped:
            warnings.warn(f"{labels_vector}: skipped {skipped} invalid geometries (--strict to fail)",
                          stacklevel=2)
    classify = layout == "folders" and not (labels_vector is not None and label_source.is_points)
    rule_set = Rules.parse([rules] if isinstance(rules, str) else rules, max_nodata, keep, seed, min_labelled,
                           keep_empty, default=("points:3",) if classify else ())
    if log:
        log(f"grid: {grid.tile} px tiles of {grid.res:g} m ({grid.tile * grid.res:g} m) on "
            f"{grid.crs.to_string()}, stride {grid.stride} px, padding {grid.pad} px")
    return cut_chips(scenes, label_source, class_scheme, grid, rule_set, out, regions=regions, aoi=aoi,
                     fmt=fmt or {"pairs": "tif", "shards": "webdataset"}.get(layout, "png"), layout=layout,
                     resampling=resampling,
                     engine=Engine.of(engine), overwrite=overwrite, progress=progress, block_tiles=block_tiles,
                     allow_empty=allow_empty, shard_size=shard_size)


def _raster_scheme(labels: str | PathLike) -> ClassScheme:
    """Without --scheme: the classes a landcover class map names (dense labels from `landcover label`, a predicted
    map), else NLCD's."""
    with open_raster(labels) as src:
        named = src.tags().get("LANDCOVER_CLASSES")
    if not named:
        return load_scheme("nlcd")
    classes = [{"name": c["name"], "code": int(c["id"]), "color": c["color"]} for c in json.loads(named)]
    return parse_scheme({"name": Path(labels).stem, "description": f"the classes of {Path(labels).name}",
                         "classes": classes}, str(labels))
