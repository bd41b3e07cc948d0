"""The studio page: a local HTTP server (127.0.0.1 only) showing a raster of any size as tiles, with a class map
over it, read on demand (`landcover.studio.tiles`), and a person's labels retraining the pixel model
(`landcover.studio.labels`). It stops by itself after `idle_seconds` without a request.

API (every request checked: a 4xx with a message otherwise):
  GET  /api/info                              the imagery's size, levels and tile size, its bands and the display
                                              (bands, stretch), the map's classes (or null)
  GET  /tiles/image/{level}/{col}/{row}.png   an imagery tile (transparent where there is no data)
  GET  /tiles/map/{level}/{col}/{row}.png     a map tile, classes in their colours (with a map)
  GET  /tiles/model/{level}/{col}/{row}.png   the retrained pixel model's classes (after a retrain)
  POST /api/display                           {"bands": [r, g, b] or [grey], "percentiles": [low, high]}: the
                                              imagery's display from then on (tile URLs carry its version)
  POST /api/labels                            {"labels": [{"class", "kind": "point"|"stroke", "points": [[x, y],
                                              ...], "width"}]} in the imagery's pixels: every label, kept and
                                              written to DIR/labels.geojson
  POST /api/retrain                           {}: the pixel model on the labels; {"seconds", "pixels",
                                              "model_version"}
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from landcover.errors import LandcoverError
from landcover.geo.raster import Scene
from landcover.label.server import BadRequest, PageHandler, local_server, png, serve, session_classes
from landcover.maps.classmap import hex_rgb
from landcover.studio.labels import Labels
from landcover.studio.tiles import TILE_PX, MapTiles, TileSource

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/studio.js": ("studio.js", "text/javascript; charset=utf-8"),
          "/studio.css": ("studio.css", "text/css; charset=utf-8")}
TILE = re.compile(r"^/tiles/(image|map|model)/(\d{1,2})/(\d{1,7})/(\d{1,7})\.png$")


@dataclass
class StudioSession:
    """What the studio's server holds: the imagery's tiles and display, the map's tiles, the output folder."""

    images: list[str]
    out: Path
    map_path: str | None = None
    class_names: list[str] | None = None
    scheme: str | None = None
    bands: list[int] | None = None
    nodata: float | str | None = None
    log: object = print
    display_version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        from landcover.maps.classmap import raster_classes

        self.out = Path(self.out)
        Scene.open(self.images, nodata=self.nodata)  # the inputs are checked before anything is written
        if self.map_path:
            raster_classes(self.map_path)
        if self.out.exists() and not self.out.is_dir():
            raise LandcoverError("is a file: --out names the studio's folder", self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = self.out / "cache"
        self.imagery = TileSource(self.images, self.cache, self.bands, self.nodata, log=self.log)
        self.map_tiles = MapTiles(self.map_path, self.imagery) if self.map_path else None
        self.classes = label_classes(self.scheme, self.class_names, self.map_tiles)
        self.labels = Labels(self.out / "labels.geojson", self.classes, self.imagery.stack) if self.classes else None
        self.model = None
        self.model_version = 0

    def info(self) -> dict:
        stack, imagery = self.imagery.stack, self.imagery
        return {"size": [stack.height, stack.width], "levels": imagery.levels, "tile_px": TILE_PX,
                "res": stack.res[0], "crs": stack.crs.to_string(), "band_count": stack.count,
                "display": {"bands": imagery.bands, "low": imagery.low, "high": imagery.high,
                            "percentiles": list(imagery.percentiles), "version": self.display_version},
                "map": None if self.map_tiles is None else {"path": self.map_tiles.path,
                                                            "classes": self.map_tiles.classes},
                "classes": self.classes, "labels": None if self.labels is None else self.labels.summary(),
                "model_version": self.model_version}

    def tile(self, layer: str, level: int, col: int, row: int) -> bytes:
        try:
            if layer == "image":
                return self.imagery.tile_png(level, col, row)
            if layer == "model":
                return self.model_tile(level, col, row)
            if self.map_tiles is None:
                raise BadRequest(404, "no map: start the studio with --map MAP.tif")
            return self.map_tiles.tile_png(level, col, row)
        except LandcoverError as exc:  # a tile off the grid
            raise BadRequest(404, str(exc)) from None

    def display(self, body: object) -> dict:
        """A new display (bands, percentiles) for the imagery: checked, then the tiles' source swapped."""
        if not isinstance(body, dict) or not set(body) <= {"bands", "percentiles"}:
            raise BadRequest(400, 'expected {"bands": [r, g, b] or [grey], "percentiles": [low, high]}')
        bands = body.get("bands", self.imagery.bands)
        n = self.imagery.stack.count
        if (not isinstance(bands, list) or len(bands) not in (1, 3)
                or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= n for b in bands)):
            raise BadRequest(400, f"bands: 1 or 3 band numbers in 1..{n}")
        given = body.get("percentiles", list(self.imagery.percentiles))
        if (not isinstance(given, list) or len(given) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in given)
                or not 0 <= given[0] < given[1] <= 100):
            raise BadRequest(400, "percentiles: [low, high] with 0 <= low < high <= 100")
        low, high = given
        with self.lock:
            self.imagery = TileSource(self.images, self.cache, bands, self.nodata, (float(low), float(high)),
                                      log=self.log)
            if self.map_tiles is not None:
                self.map_tiles.imagery = self.imagery
            self.display_version += 1
        return self.info()

    def set_labels(self, body: object) -> dict:
        """The page's labels, all of them: checked and written."""
        if self.labels is None:
            raise BadRequest(400, "no classes to label: start the studio with --classes, --scheme or --map")
        if not isinstance(body, dict) or set(body) != {"labels"}:
            raise BadRequest(400, 'expected {"labels": [...]}')
        with self.lock:
            return self.labels.replace(body["labels"])

    def retrain(self) -> dict:
        """The pixel model on every label so far."""
        from landcover.predict.evidence import scene_features
        from landcover.train.pixels import fit_pixel_head

        if self.labels is None:
            raise BadRequest(400, "no classes to label: start the studio with --classes, --scheme or --map")
        started = time.perf_counter()
        stack = self.imagery.stack
        spec = scene_features(stack)
        X, y = self.labels.training_pixels(spec, stack)
        head = fit_pixel_head("rf", X, y, len(self.classes))
        lut = np.zeros((256, 4), np.uint8)  # class id -> RGBA; 255 (no data) transparent
        for i, c in enumerate(self.classes):
            lut[i] = [*hex_rgb(c["color"]), 255]
        with self.lock:
            self.model = (spec, head, lut)
            self.model_version += 1
        return {"seconds": round(time.perf_counter() - started, 3), "pixels": len(y),
                "model_version": self.model_version}

    def model_tile(self, level: int, col: int, row: int) -> bytes:
        """A tile of the current model's map, from the level's own pixels (level 0: the map itself)."""
        if self.model is None:
            raise BadRequest(404, "no model yet: label two classes and retrain")
        spec, head, lut = self.model
        self.imagery.check(level, col, row)
        res = self.imagery.stack.res[0] * 2 ** level
        halo = spec.halo_px(res)
        pixels, valid = self.imagery.stack_window(level, Window(col * TILE_PX - halo, row * TILE_PX - halo,
                                                               TILE_PX + 2 * halo, TILE_PX + 2 * halo))
        core = np.s_[halo:halo + TILE_PX, halo:halo + TILE_PX]
        features = spec.compute(pixels, valid, res)[(slice(None), *core)]
        ok = valid[core]
        ids = np.full((TILE_PX, TILE_PX), 255, np.uint8)
        if ok.any():
            ids[ok] = head.predict_proba(features[:, ok].T).argmax(axis=1)
        return png(lut[ids])


def label_classes(scheme: str | None, names: list[str] | None, map_tiles: MapTiles | None) -> list[dict]:
    """The classes a person labels, ids 0..n-1 in order: a scheme's, names given, or the map's (none: no labels)."""
    if scheme or names:
        given = session_classes(scheme, names)
    elif map_tiles is not None:
        given = [c for c in map_tiles.classes if c["name"] not in ("", "NA")]
    else:
        return []
    return [{"id": i, "name": c["name"], "color": c["color"]} for i, c in enumerate(given)]


def make_server(session: StudioSession, port: int = 0, idle_seconds: float = 1800):
    """The studio's server on 127.0.0.1 (`port` 0: any free one); `landcover.label.server.serve` runs it."""

    class Handler(PageHandler):
        def do_GET(self) -> None:
            path = self.touch()

            def work() -> None:
                if path in STATIC:
                    self._static("landcover.studio", *STATIC[path])
                elif path == "/api/info":
                    self._json(200, session.info())
                elif match := TILE.match(path):
                    layer, level, col, row = match.group(1), *map(int, match.groups()[1:])
                    self._send(200, session.tile(layer, level, col, row), "image/png")
                else:
                    raise BadRequest(404, f"no such page: {path}")

            self._answer(work)

        def do_POST(self) -> None:
            path = self.touch()

            def work() -> None:
                actions = {"/api/display": session.display, "/api/labels": session.set_labels,
                           "/api/retrain": lambda _: session.retrain()}
                if path not in actions:
                    raise BadRequest(404, f"no such action: {path}")
                self._json(200, actions[path](self._body()))

            self._answer(work)

    return local_server(Handler, port, idle_seconds)


def studio(images: list[str | Path], out: str | Path, map_path: str | Path | None = None,
           classes: list[str] | None = None, scheme: str | None = None, bands: list[int] | None = None,
           nodata: float | str | None = None, port: int = 0, idle_minutes: float = 30) -> str:
    """Start the studio's server in the background and return its address (in a notebook:
    `IPython.display.IFrame(lc.studio(["naip.tif"], "studio/"), 1000, 600)`); it stops after `idle_minutes` without
    a request."""
    session = StudioSession([str(p) for p in images], Path(out), None if map_path is None else str(map_path),
                            classes, scheme, bands, nodata)
    server = make_server(session, port, 60 * idle_minutes)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"
