"""The studio page: a local HTTP server (127.0.0.1 only) showing a raster of any size as tiles, with a class map
over it, read on demand (`landcover.studio.tiles`). It stops by itself after `idle_seconds` without a request.

API (every request checked: a 4xx with a message otherwise):
  GET  /api/info                              the imagery's size, levels and tile size, its bands and the display
                                              (bands, stretch), the map's classes (or null)
  GET  /tiles/image/{level}/{col}/{row}.png   an imagery tile (transparent where there is no data)
  GET  /tiles/map/{level}/{col}/{row}.png     a map tile, classes in their colours (with a map)
  POST /api/display                           {"bands": [r, g, b] or [grey], "percentiles": [low, high]}: the
                                              imagery's display from then on (tile URLs carry its version)
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from landcover.errors import LandcoverError
from landcover.geo.raster import Scene
from landcover.label.server import BadRequest, PageHandler, local_server, serve
from landcover.studio.tiles import TILE_PX, MapTiles, TileSource

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/studio.js": ("studio.js", "text/javascript; charset=utf-8"),
          "/studio.css": ("studio.css", "text/css; charset=utf-8")}
TILE = re.compile(r"^/tiles/(image|map)/(\d{1,2})/(\d{1,7})/(\d{1,7})\.png$")


@dataclass
class StudioSession:
    """What the studio's server holds: the imagery's tiles and display, the map's tiles, the output folder."""

    images: list[str]
    out: Path
    map_path: str | None = None
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

    def info(self) -> dict:
        stack, imagery = self.imagery.stack, self.imagery
        return {"size": [stack.height, stack.width], "levels": imagery.levels, "tile_px": TILE_PX,
                "res": stack.res[0], "crs": stack.crs.to_string(), "band_count": stack.count,
                "display": {"bands": imagery.bands, "low": imagery.low, "high": imagery.high,
                            "percentiles": list(imagery.percentiles), "version": self.display_version},
                "map": None if self.map_tiles is None else {"path": self.map_tiles.path,
                                                            "classes": self.map_tiles.classes}}

    def tile(self, layer: str, level: int, col: int, row: int) -> bytes:
        try:
            if layer == "image":
                return self.imagery.tile_png(level, col, row)
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
                if path != "/api/display":
                    raise BadRequest(404, f"no such action: {path}")
                self._json(200, session.display(self._body()))

            self._answer(work)

    return local_server(Handler, port, idle_seconds)


def studio(images: list[str | Path], out: str | Path, map_path: str | Path | None = None,
           bands: list[int] | None = None, nodata: float | str | None = None, port: int = 0,
           idle_minutes: float = 30) -> str:
    """Start the studio's server in the background and return its address (in a notebook:
    `IPython.display.IFrame(lc.studio(["naip.tif"], "studio/"), 1000, 600)`); it stops after `idle_minutes` without
    a request."""
    session = StudioSession([str(p) for p in images], Path(out), None if map_path is None else str(map_path), bands,
                            nodata)
    server = make_server(session, port, 60 * idle_minutes)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"
