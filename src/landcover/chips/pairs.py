"""Segmentation pairs: the metadata that makes images/ + labels/ open as ArcGIS "Classified Tiles"."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np

from landcover.atomic import write_text
from landcover.geo.grid import Grid
from landcover.geo.raster import Scene
from landcover.schemes import ClassScheme


def _rgb(color: str) -> list[int]:
    return [int(color[i:i + 2], 16) for i in (1, 3, 5)]


def write_classified_tiles(out: Path, manifest: gpd.GeoDataFrame, scheme: ClassScheme, grid: Grid,
                           scene: Scene) -> None:
    """Write map.txt, esri_model_definition.emd, esri_accumulated_stats.json and stats.txt.

    Mask values are class id + 1 (0: no class), as the Classified Tiles layout numbers classes."""
    classes = [{"Value": c.id + 1, "Name": c.name, "Color": _rgb(c.color)} for c in scheme.classes]
    counts = manifest["label"].value_counts() if len(manifest) else {}
    emd = {
        "ModelType": "ImageClassification",
        "ImageHeight": grid.chip, "ImageWidth": grid.chip,
        "ExtractBands": list(range(scene.count)),
        "ImageSpaceUsed": "MAP_SPACE",
        "CellSize": {"x": grid.res, "y": grid.res},
        "SpatialReference": grid.crs.to_wkt(),
        "Classes": classes,
    }
    stats = {
        "Version": "1.0", "MetaDataMode": "Classified_Tiles", "OutputFeatures": False,
        "NumBands": scene.count, "TileSizeX": grid.chip, "TileSizeY": grid.chip,
        "NumTiles": len(manifest), "NumClasses": len(classes),
        "MinCellSize": {"x": grid.res, "y": grid.res}, "MaxCellSize": {"x": grid.res, "y": grid.res},
        "Classes": [{"ClassValue": c["Value"], "ClassName": c["Name"], "Color": c["Color"],
                     "NumTiles": int(counts.get(c["Name"], 0))} for c in classes],
    }
    labelled = manifest["labelled_frac"].to_numpy(float) if len(manifest) else np.zeros(0)
    lines = [f"tiles: {len(manifest)}", f"tile size: {grid.chip} x {grid.chip} px at {grid.res:g}",
             f"mean labelled fraction: {labelled.mean() if labelled.size else 0:.4f}"]
    lines += [f"class {c['ClassValue']} {c['ClassName']}: majority in {c['NumTiles']} tiles"
              for c in stats["Classes"]]
    files = {
        "map.txt": "".join(f"{p} {q}\n" for p, q in zip(manifest["path"], manifest["label_path"], strict=True)),
        "esri_model_definition.emd": json.dumps(emd, indent=2),
        "esri_accumulated_stats.json": json.dumps(stats, indent=2),
        "stats.txt": "\n".join(lines) + "\n",
    }
    for name, text in files.items():
        write_text(out / name, text)
