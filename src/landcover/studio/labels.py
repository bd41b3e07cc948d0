"""The studio's labels and the pixel features they train on.

A label is a point, a stroke or a polygon of one class, in the imagery's own pixel coordinates (level 0): a stroke
with a width in pixels, a polygon every pixel it touches. The page sends the whole list when it changes (undo and
erase are the page's); the list is checked (classes, shapes, bounds, sizes) and written at once to
DIR/labels.geojson (the imagery's CRS, under a temporary name, then renamed), and read back when the studio starts
again on DIR.

Retraining fits the pixel model (`landcover.studio.model`; features `landcover.predict.evidence.scene_features`:
bands, indices, filters at 1, 2, 4, 8 pixels) on the labelled pixels: the imagery is read in small blocks, only
those a label touches, with the filters' reach around each, so labels on a 16k mosaic read their neighbourhoods,
not the raster.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window

from landcover.atomic import write_text
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene
from landcover.label.server import BadRequest

KINDS = ("point", "stroke", "polygon")
MAX_LABELS = 5000
MAX_POINTS = 100_000
MAX_WIDTH_PX = 64
BLOCK_PX = 128
"""Retraining reads the imagery in blocks of this side that a label touches (with the filters' reach around)."""


class Labels:
    """Points and strokes of named classes on a scene's pixels, kept in `path` (GeoJSON)."""

    def __init__(self, path: Path, classes: list[dict], scene: Scene):
        self.path, self.classes, self.scene = Path(path), classes, scene
        self.items: list[dict] = []
        self.kept: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        """Each labelled block's features and classes at the last retraining, by the block and its labels."""
        if self.path.exists():
            try:
                self.items = self.check(_from_geojson(json.loads(self.path.read_text()), scene))
            except (ValueError, KeyError, TypeError, BadRequest) as exc:
                raise LandcoverError(f"cannot read the studio's labels ({exc}): move the file away to start afresh",
                                     self.path) from None

    def check(self, items: object) -> list[dict]:
        """Labels as the page sends them, checked: [{"class", "kind": "point"|"stroke"|"polygon", "points",
        "width"}] (a polygon's points its outline, not closed)."""
        names = {c["name"] for c in self.classes}
        if not isinstance(items, list) or len(items) > MAX_LABELS:
            raise BadRequest(400, f"labels: a list of at most {MAX_LABELS}")
        total, out = 0, []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or item.get("kind") not in KINDS:
                raise BadRequest(400, f"label {i + 1}: an object of kind 'point', 'stroke' or 'polygon'")
            if item.get("class") not in names:
                raise BadRequest(400, f"label {i + 1}: unknown class {item.get('class')!r}")
            try:
                points = np.asarray(item.get("points"), dtype=float)
            except (TypeError, ValueError):
                points = np.zeros((0, 0))
            if points.ndim != 2 or points.shape[1:] != (2,) or not len(points) or not np.isfinite(points).all():
                raise BadRequest(400, f"label {i + 1}: points must be a list of [x, y] pairs")
            if item["kind"] == "point" and len(points) != 1:
                raise BadRequest(400, f"label {i + 1}: a point has one [x, y]")
            if item["kind"] == "polygon" and (len(points) < 3 or shapely.Polygon(points).buffer(0).area < 0.25):
                raise BadRequest(400, f"label {i + 1}: a polygon has at least 3 corners and an area")
            total += len(points)
            if total > MAX_POINTS:
                raise BadRequest(413, f"more than {MAX_POINTS} points in all")
            if ((points < 0).any() or (points[:, 0] > self.scene.width).any()
                    or (points[:, 1] > self.scene.height).any()):
                raise BadRequest(400, f"label {i + 1} leaves the imagery ({self.scene.width} x {self.scene.height} px)")
            width = item.get("width", 1)
            if not isinstance(width, int | float) or isinstance(width, bool) or not 0 < width <= MAX_WIDTH_PX:
                raise BadRequest(400, f"label {i + 1}: width must be in (0, {MAX_WIDTH_PX}] pixels")
            out.append({"class": item["class"], "kind": item["kind"], "points": points.tolist(),
                        "width": float(width)})
        return out

    def replace(self, items: object) -> dict:
        """The page's list: checked, kept, written."""
        self.items = self.check(items)
        write_text(self.path, json.dumps(_to_geojson(self.items, self.scene)))
        return self.summary()

    def summary(self) -> dict:
        counts = {c["name"]: 0 for c in self.classes}
        for item in self.items:
            counts[item["class"]] += 1
        return {"labels": self.items, "per_class": counts}

    def shapes(self) -> list[tuple[shapely.Geometry, int]]:
        """Each label as a shape in level-0 pixel coordinates with its class id."""
        ids = {c["name"]: int(c["id"]) for c in self.classes}
        out = []
        for item in self.items:
            points = np.asarray(item["points"])
            if item["kind"] == "polygon":  # every pixel it touches
                out.append((shapely.Polygon(points).buffer(0), ids[item["class"]]))
                continue
            if item["kind"] == "point":  # a click labels the pixel it falls in (wider: a disc about its centre)
                line = shapely.Point(np.floor(points[0]) + 0.5)
            else:
                line = shapely.Point(points[0]) if len(points) == 1 else shapely.LineString(points)
            out.append((line.buffer(max(item["width"], 1) / 2 - 0.01), ids[item["class"]]))
        return out

    def training_pixels(self, spec, stack: Scene) -> tuple[np.ndarray, np.ndarray]:
        """Features (n, F) and class ids of the labelled pixels. The imagery is read in blocks of BLOCK_PX, only
        those a label touches, each with the filters' reach around it: a long stroke over a large raster reads the
        blocks along it, not its bounding box, and a pixel under two labels counts once (the later one's class). A
        block whose labels are as they were at the last call is not read again."""
        res = stack.res[0]
        halo = spec.halo_px(res)
        touched: dict[tuple[int, int], list[tuple[shapely.Geometry, int]]] = {}
        for shape, class_id in self.shapes():
            left, top, right, bottom = shape.bounds
            for bi in range(int(top // BLOCK_PX), int(bottom // BLOCK_PX) + 1):
                for bj in range(int(left // BLOCK_PX), int(right // BLOCK_PX) + 1):
                    box = shapely.box(bj * BLOCK_PX, bi * BLOCK_PX, (bj + 1) * BLOCK_PX, (bi + 1) * BLOCK_PX)
                    if shape.intersects(box):
                        touched.setdefault((bi, bj), []).append((shape, class_id + 1))
        xs, ys = [], []
        kept, self.kept = self.kept, {}
        for (bi, bj), shapes in touched.items():
            key = (bi, bj, spec, res, tuple((shape.wkb, value) for shape, value in shapes))
            if key in kept:  # the block's labels as at the last retraining: its pixels' features kept
                self.kept[key] = kept[key]
                xs.append(kept[key][0])
                ys.append(kept[key][1])
                continue
            r0, c0 = bi * BLOCK_PX - halo, bj * BLOCK_PX - halo
            pixels, valid = stack.read(Window(c0, r0, BLOCK_PX + 2 * halo, BLOCK_PX + 2 * halo))
            burned = np.zeros(valid.shape, np.int32)
            core = np.s_[halo:halo + BLOCK_PX, halo:halo + BLOCK_PX]  # the block's own pixels: each counted once
            burned[core] = rasterize([(shapely.affinity.translate(shape, -c0 - halo, -r0 - halo), value)
                                      for shape, value in shapes], out_shape=(BLOCK_PX, BLOCK_PX), fill=0,
                                     all_touched=True, dtype="int32")
            seen = (burned > 0) & valid
            if seen.any():
                self.kept[key] = spec.compute(pixels, valid, res)[:, seen].T, burned[seen].astype(np.int64) - 1
                xs.append(self.kept[key][0])
                ys.append(self.kept[key][1])
        if not ys or len(set(np.concatenate(ys).tolist())) < 2:
            raise BadRequest(400, "label at least two classes on the imagery's valid pixels before retraining")
        return np.concatenate(xs), np.concatenate(ys)


def _to_geojson(items: list[dict], scene: Scene) -> dict:
    """Labels as GeoJSON features in the scene's CRS (pixel centres and widths turned into map units)."""
    features = []
    for item in items:
        xs, ys = scene.transform * np.asarray(item["points"]).T
        coords = np.c_[xs, ys].tolist()
        geometry = {"type": "Point", "coordinates": coords[0]} if item["kind"] == "point" else {
            "type": "Polygon", "coordinates": [coords + coords[:1]]} if item["kind"] == "polygon" else {
            "type": "LineString", "coordinates": coords}
        features.append({"type": "Feature", "geometry": geometry, "properties": {
            "class": item["class"], "width_m": item["width"] * scene.res[0]}})
    return {"type": "FeatureCollection", "crs_wkt": scene.crs.to_wkt(), "features": features}


def _from_geojson(doc: dict, scene: Scene) -> list[dict]:
    inverse = ~scene.transform
    items = []
    for feature in doc["features"]:
        geometry = feature["geometry"]
        kind = {"Point": "point", "LineString": "stroke", "Polygon": "polygon"}[geometry["type"]]
        coords = geometry["coordinates"]
        coords = np.asarray([coords] if kind == "point" else coords[0][:-1] if kind == "polygon" else coords, float)
        cols, rows = inverse * coords.T
        items.append({"class": feature["properties"]["class"], "kind": kind, "points": np.c_[cols, rows].tolist(),
                      "width": feature["properties"]["width_m"] / scene.res[0]})
    return items
