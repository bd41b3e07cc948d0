"""The studio page: a local HTTP server (127.0.0.1 only) showing a raster of any size as tiles, with a class map
over it, read on demand (`landcover.studio.tiles`), a person's labels (`landcover.studio.labels`) retraining the
pixel model (`landcover.studio.model`), and the whole raster mapped with it (`landcover.studio.mapping`). It stops by
itself after `idle_seconds` without a request.

API (every request checked: a 4xx with a message otherwise):
  GET  /api/info                              the imagery's size, levels and tile size, its bands and the display
                                              (bands, stretch), the map's classes (or null), the reference's, the
                                              classes to label, the labels, the model's version
  GET  /tiles/{layer}/{level}/{col}/{row}.png a tile of a layer: image (transparent where there is no data), map
                                              (classes in their colours), reference (with --truth, a raster), model
                                              (the retrained model's classes), uncertainty (1 - its top probability)
  POST /api/display                           {"bands": [r, g, b] or [grey], "percentiles": [low, high]}: the
                                              imagery's display from then on (tile URLs carry its version)
  POST /api/labels                            {"labels": [{"class", "kind": "point"|"stroke"|"polygon", "points":
                                              [[x, y], ...], "width"}]} in the imagery's pixels: every label, kept and
                                              written to DIR/labels.geojson
  POST /api/retrain                           {}: the pixel model on the labels; {"seconds", "pixels",
                                              "model_version", "context"} (with --bundle: the share of
                                              its probabilities in the model's, each share's Brier score)
  POST /api/suggest                           {"count": n}: {"places": [[x, y], ...]} to label next
  POST /api/map                               {"crf": false|true}: map the whole raster (DIR/bundle, DIR/map.tif;
                                              with --truth DIR/assessment/); GET /api/map: how far it is
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from landcover.bundle import load_bundle
from landcover.errors import LandcoverError
from landcover.geo.raster import Scene
from landcover.label.server import BadRequest, PageHandler, local_server, serve, session_classes
from landcover.models.pixelfeatures import PixelFeatures
from landcover.studio.context import CONTEXT_TIF, Context, fit_with_context, write_context
from landcover.studio.labels import Labels
from landcover.studio.mapping import MapJob, Reference
from landcover.studio.model import StudioModel, TileFeatures
from landcover.studio.tiles import TILE_PX, MapTiles, TileSource

MAX_SUGGESTIONS = 100
VIEWED_TILES = 64
"""Image tiles remembered as shown."""
WARM_TILES = 28
"""The last shown of them whose features are computed ahead of a retraining (a full-HD view; FEATURES_MB holds
them)."""

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/studio.js": ("studio.js", "text/javascript; charset=utf-8"),
          "/studio.css": ("studio.css", "text/css; charset=utf-8")}
TILE = re.compile(r"^/tiles/(image|map|reference|model|uncertainty)/(\d{1,2})/(\d{1,7})/(\d{1,7})\.png$")


@dataclass
class StudioSession:
    """What the studio's server holds: the imagery's tiles and display, the map's tiles, the output folder."""

    images: list[str]
    out: Path
    map_path: str | None = None
    bundle_path: str | None = None
    """A model bundle whose map of the imagery is the first map (made when the studio starts)."""
    class_names: list[str] | None = None
    scheme: str | None = None
    bands: list[int] | None = None
    nodata: float | str | None = None
    reference: Reference | None = None
    log: object = print
    display_version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        from landcover.maps.classmap import raster_classes

        self.out = Path(self.out)
        Scene.open(self.images, nodata=self.nodata)  # the inputs are checked before anything is written
        if self.map_path:
            raster_classes(self.map_path)
        if self.map_path and self.bundle_path:
            raise LandcoverError("give --map or --bundle, not both (the bundle's map is the first map)")
        bundle = load_bundle(self.bundle_path) if self.bundle_path else None
        if bundle is not None:
            from landcover.predict.outputs import open_scene

            open_scene(bundle, self.images, None, self.nodata)  # the imagery gives the bands it reads
        if self.out.exists() and not self.out.is_dir():
            raise LandcoverError("is a file: --out names the studio's folder", self.out)
        raster_reference = self.reference is not None and self.reference.check()
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = self.out / "cache"
        self.imagery = TileSource(self.images, self.cache, self.bands, self.nodata, log=self.log)
        self.job = MapJob(self.out, self.images, self.nodata, self.reference, self.log)
        if not self.map_path and not bundle and self.job.map_path.exists():  # its own map from an earlier session
            self.map_path = str(self.job.map_path)
        self.map_tiles = MapTiles(self.map_path, self.imagery) if self.map_path else None
        self.reference_tiles = None
        if raster_reference:
            self.reference_tiles = MapTiles(self.reference.path, self.imagery, self.reference.scheme)
        self.classes = label_classes(self.scheme, self.class_names, self.map_tiles or self.reference_tiles,
                                     bundle.classes if bundle else None)
        self.shown_run = 0
        self.context: Context | None = None
        """With --bundle: its class probabilities on the imagery's grid, once its map is made."""
        if bundle is not None and not self.map_tiles:  # the bundle's map and probabilities, made in the background
            target = self.out / "bundle-map.tif"
            self.job.start(Path(self.bundle_path), target=target, probabilities=True,
                           on_done=lambda: self.take_context(target.with_suffix(".probs.tif"), bundle.classes))
        self.labels = Labels(self.out / "labels.geojson", self.classes, self.imagery.stack) if self.classes else None
        self.model: StudioModel | None = None
        self.features: TileFeatures | None = None
        self.model_version = 0
        self.viewed: OrderedDict = OrderedDict()
        """The imagery's tiles last shown (level, col, row): their features are computed while a person labels."""
        self.warming: threading.Thread | None = None

    def info(self) -> dict:
        stack, imagery = self.imagery.stack, self.imagery
        return {"size": [stack.height, stack.width], "levels": imagery.levels, "tile_px": TILE_PX,
                "res": stack.res[0], "crs": stack.crs.to_string(), "band_count": stack.count,
                "display": {"bands": imagery.bands, "low": imagery.low, "high": imagery.high,
                            "percentiles": list(imagery.percentiles), "version": self.display_version},
                "map": None if self.map_tiles is None else {"path": self.map_tiles.path, "classes":
                                                            self.map_tiles.classes, "version": self.shown_run},
                "reference": None if self.reference is None else {
                    "path": self.reference.path, "layer": self.reference_tiles is not None,
                    "classes": None if self.reference_tiles is None else self.reference_tiles.classes},
                "classes": self.classes, "labels": None if self.labels is None else self.labels.summary(),
                "model_version": self.model_version, "mapping": self.map_state()}

    def tile(self, layer: str, level: int, col: int, row: int) -> bytes:
        try:
            if layer == "image":
                png = self.imagery.tile_png(level, col, row)
                with self.lock:
                    self.viewed[level, col, row] = True
                    self.viewed.move_to_end((level, col, row))
                    if len(self.viewed) > VIEWED_TILES:
                        self.viewed.popitem(last=False)
                return png
            if layer in ("model", "uncertainty"):
                model = self.model
                if model is None:
                    raise BadRequest(404, "no model yet: label two classes and retrain")
                draw = model.class_png if layer == "model" else model.uncertainty_png
                return draw(self.features, level, col, row)
            tiles = self.map_tiles if layer == "map" else self.reference_tiles
            if tiles is None:
                raise BadRequest(404, f"no {layer}: start the studio with --map MAP.tif (or map all)"
                                 if layer == "map" else "no reference raster: start the studio with --truth REF")
            return tiles.tile_png(level, col, row)
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
            answer = self.labels.replace(body["labels"])
        self.warm()
        return answer

    def tile_features(self) -> TileFeatures:
        """The display tiles' features (kept across retrainings) for the pixel model's features of this imagery
        (and, with --bundle once its map is made, its probabilities)."""
        from landcover.predict.evidence import scene_features

        spec, context = scene_features(self.imagery.stack), self.context
        if context is not None:
            spec = replace(spec, context=context.names)
        with self.lock:
            if self.features is None or self.features.spec != spec:
                self.features = TileFeatures(self.imagery, spec, context=context)
            return self.features

    def take_context(self, probs: Path, bundle_classes: list[dict]) -> None:
        """The bundle's probabilities onto the imagery's grid (DIR/context.tif), for the model from its next
        retraining: when its classes are the ones labelled."""
        if [c["name"] for c in bundle_classes] != [c["name"] for c in self.classes]:
            self.log("the bundle's classes are not the ones labelled: its probabilities stay out of the model")
            return
        self.context = write_context(probs, self.imagery.stack, self.out / CONTEXT_TIF)

    def model_stack(self, spec: PixelFeatures) -> Scene:
        """What a model of these features reads: the imagery's bands, then the context's if it uses them."""
        return self.context.stack(self.imagery.stack) if spec.context else self.imagery.stack

    def warm(self) -> None:
        """While a person labels, the features of the tiles in view are computed in the background (once at a
        time), so that the first retraining's view is re-mapped as fast as the later ones."""
        if self.warming is not None and self.warming.is_alive():
            return

        def run() -> None:
            features = self.tile_features()
            with self.lock:
                keys = list(reversed(self.viewed))
            for key in keys[:WARM_TILES]:
                try:
                    features.get(*key)
                except LandcoverError:  # a tile of an earlier display's grid
                    continue

        self.warming = threading.Thread(target=run, daemon=True)
        self.warming.start()

    def retrain(self) -> dict:
        """The pixel model on every label so far."""
        from landcover.train.pixels import fit_pixel_head

        if self.labels is None:
            raise BadRequest(400, "no classes to label: start the studio with --classes, --scheme or --map")
        started = time.perf_counter()
        spec = self.tile_features().spec
        X, y = self.labels.training_pixels(spec, self.model_stack(spec))
        context = None
        if spec.context:  # the bundle's probabilities, their share chosen on the labels
            head, spec, context = fit_with_context(X, y, len(self.classes), spec)
        else:
            head = fit_pixel_head("rf", X, y, len(self.classes))
        with self.lock:
            self.model_version += 1
            self.model = StudioModel(spec, head, self.classes, self.model_version, len(y))
        return {"seconds": round(time.perf_counter() - started, 3), "pixels": len(y),
                "model_version": self.model_version, "context": context}

    def suggest(self, body: object) -> dict:
        """Places to label next: {"count": n} -> {"places": [[x, y], ...]}."""
        if not isinstance(body, dict) or set(body) - {"count"}:
            raise BadRequest(400, 'expected {"count": n}')
        count = body.get("count", 10)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SUGGESTIONS:
            raise BadRequest(400, f"count: a whole number in 1..{MAX_SUGGESTIONS}")
        model = self.model
        if model is None:
            raise BadRequest(400, "no model yet: label two classes and retrain, then ask for suggestions")
        taken = [[y, x] for item in self.labels.items for x, y in item["points"]]
        started = time.perf_counter()
        places = model.suggest(self.model_stack(model.spec), np.asarray(taken, float), count,
                               seed=model.version * 7919 + len(taken))
        return {"places": places, "seconds": round(time.perf_counter() - started, 3)}

    def map_all(self, body: object) -> dict:
        """{"crf": bool}: the whole raster through the prediction path with the current model."""
        if not isinstance(body, dict) or set(body) - {"crf"} or not isinstance(body.get("crf", False), bool):
            raise BadRequest(400, 'expected {"crf": false} or {"crf": true}')
        model = self.model
        if model is None:
            raise BadRequest(400, "no model yet: label two classes and retrain before mapping")
        stack = self.model_stack(model.spec)
        return self.job.start(self.out / "bundle", body.get("crf", False), model.version,
                              model.bundle(stack, self.imagery.bands), images=list(stack.paths))

    def map_state(self) -> dict:
        """How far Map all is; a finished map becomes the map layer."""
        state = self.job.state()
        if state["state"] == "done" and self.shown_run != state["run"]:
            with self.lock:
                self.map_path = state["map"]
                self.map_tiles = MapTiles(self.map_path, self.imagery)
                self.shown_run = state["run"]
        return state


def label_classes(scheme: str | None, names: list[str] | None, map_tiles: MapTiles | None,
                  bundle_classes: list[dict] | None = None) -> list[dict]:
    """The classes a person labels, ids 0..n-1 in order: a scheme's, names given, a bundle's, or the map's (or else
    the reference raster's; none: no labels)."""
    if scheme or names:
        given = session_classes(scheme, names)
    elif bundle_classes:
        given = bundle_classes
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
                elif path == "/api/map":
                    self._json(200, session.map_state())
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
                           "/api/retrain": lambda _: session.retrain(), "/api/suggest": session.suggest,
                           "/api/map": session.map_all}
                if path not in actions:
                    raise BadRequest(404, f"no such action: {path}")
                self._json(200, actions[path](self._body()))

            self._answer(work)

    return local_server(Handler, port, idle_seconds)


def studio(images: list[str | Path], out: str | Path, map_path: str | Path | None = None,
           classes: list[str] | None = None, scheme: str | None = None, bands: list[int] | None = None,
           nodata: float | str | None = None, truth: str | Path | None = None, truth_scheme: str | None = None,
           truth_field: str | None = None, bundle: str | Path | None = None, port: int = 0,
           idle_minutes: float = 30) -> str:
    """Start the studio's server in the background and return its address (in a notebook:
    `IPython.display.IFrame(lc.studio(["naip.tif"], "studio/"), 1000, 600)`); it stops after `idle_minutes` without
    a request. `truth` (a land-cover raster with `truth_scheme`, or polygons/points with `truth_field`) is shown as
    a layer (rasters) and assesses every map the page makes; a model `bundle`'s map of the imagery is the first
    map."""
    reference = None if truth is None else Reference(str(truth), truth_scheme, truth_field)
    session = StudioSession([str(p) for p in images], Path(out), None if map_path is None else str(map_path),
                            None if bundle is None else str(bundle), classes, scheme, bands, nodata, reference)
    server = make_server(session, port, 60 * idle_minutes)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"
