"""The labelling page: a local HTTP server (127.0.0.1 only) serving a drawing page over the image, taking strokes,
running the CRF (`landcover.label.dense.label_raster`) and saving the results. It stops by itself after
`idle_seconds` without a request.

API (JSON; every request validated, a 4xx with a message otherwise):
  GET  /api/info        the display image's size, the classes (id, name, colour), the image's size in pixels
  GET  /api/image.png   the image stretched for display (at most DISPLAY_PX a side)
  POST /api/run         {"strokes": [{"class": NAME, "width": PX, "points": [[x, y], ...]}, ...]} in display
                        pixels: the dense labels as {"overlay": URL, "proportions": {...}}
  GET  /api/result.png  the last run's labels, coloured, at display size
  POST /api/save        the same strokes: <out> and its report and figure, and <out stem>.scribbles.geojson
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from PIL import Image
from rasterio.enums import Resampling

from landcover.errors import LandcoverError
from landcover.geo.raster import Scene
from landcover.maps.classmap import hex_rgb
from landcover.schemes import load_scheme, parse_scheme
from landcover.segment.crf import CrfSettings
from landcover.segment.crfdefaults import CrfChoice

DISPLAY_PX = 2048
MAX_BODY = 5 * 1024 * 1024
"""Largest request body accepted (413 beyond)."""
MAX_POINTS = 200_000
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}


class BadRequest(Exception):
    """A request the page should not have sent: answered with its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class LabelSession:
    """What the server holds: the image, its display rendering, the classes, the settings and the last result."""

    images: list[str]
    out: Path
    classes: list[dict]
    bands: list[int] | None = None
    nodata: float | str | None = None
    settings: CrfSettings | CrfChoice = field(default_factory=CrfChoice)
    median: int = 0
    overwrite: bool = False
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="landcover-label-")))
    runs: int = 0
    result_png: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        scene = Scene.open(self.images)
        picks = self.bands or list(range(1, min(scene.count, 3) + 1))
        self.scene = Scene.open(self.images, bands=picks, name=Path(self.images[0]).stem, nodata=self.nodata)
        self.bands = picks
        scale = max(self.scene.width, self.scene.height) / DISPLAY_PX
        self.scale = max(scale, 1.0)
        self.display = (max(1, round(self.scene.height / self.scale)), max(1, round(self.scene.width / self.scale)))
        if self.out.exists() and not self.overwrite:
            raise LandcoverError("exists (pass --overwrite to replace it)", self.out)

    def info(self) -> dict:
        return {"width": self.display[1], "height": self.display[0], "classes": self.classes,
                "image_pixels": [self.scene.height, self.scene.width], "out": str(self.out)}

    def image_png(self) -> bytes:
        from landcover.label.dense import display_rgb

        rgb, valid = display_rgb(self.scene, self.display)
        return png(np.where(valid[..., None], rgb, 0).astype(np.uint8))

    def strokes_to_layer(self, body: dict) -> gpd.GeoDataFrame:
        """Validated strokes as buffered lines in the image's CRS, with their class names."""
        strokes = body.get("strokes") if isinstance(body, dict) else None
        if not isinstance(strokes, list) or not strokes:
            raise BadRequest(400, "no strokes: draw at least two classes")
        names = {c["name"] for c in self.classes}
        h, w = self.display
        geoms, labels, total = [], [], 0
        for i, stroke in enumerate(strokes):
            if not isinstance(stroke, dict):
                raise BadRequest(400, f"stroke {i + 1} is not an object")
            if stroke.get("class") not in names:
                raise BadRequest(400, f"stroke {i + 1}: unknown class {stroke.get('class')!r} (classes: "
                                      f"{', '.join(sorted(names))})")
            try:
                points = np.asarray(stroke["points"], dtype=float) if isinstance(stroke.get("points"), list) else None
            except (TypeError, ValueError):  # strings, ragged lists
                points = None
            if points is None or points.ndim != 2 or points.shape[1] != 2 or not len(points):
                raise BadRequest(400, f"stroke {i + 1}: points must be a list of [x, y] pairs")
            total += len(points)
            if total > MAX_POINTS:
                raise BadRequest(413, f"more than {MAX_POINTS} points in all")
            if (points < 0).any() or (points[:, 0] > w).any() or (points[:, 1] > h).any() or not np.isfinite(
                    points).all():
                raise BadRequest(400, f"stroke {i + 1} leaves the image ({w} x {h} display pixels)")
            width = stroke.get("width", 4)
            if not isinstance(width, int | float) or not 0 < width <= 500:
                raise BadRequest(400, f"stroke {i + 1}: width must be between 0 and 500 display pixels")
            xs, ys = self.scene.transform * (points[:, 0] * self.scale, points[:, 1] * self.scale)
            line = shapely.Point(xs[0], ys[0]) if len(points) == 1 else shapely.LineString(np.c_[xs, ys])
            geoms.append(line.buffer(width / 2 * self.scale * abs(self.scene.transform.a)))
            labels.append(stroke["class"])
        if len(set(labels)) < 2:
            raise BadRequest(400, "strokes of one class only: a CRF needs two classes or more")
        return gpd.GeoDataFrame({"class": labels}, geometry=geoms, crs=self.scene.crs.to_wkt())

    def run(self, body: dict, out: Path) -> dict:
        """Strokes through the CRF into `out`; the labels coloured at display size."""
        from landcover.label.dense import label_raster

        layer = self.strokes_to_layer(body)
        with self.lock:
            strokes = out.with_name(f"{out.with_suffix('').name}.scribbles.geojson")
            strokes.parent.mkdir(parents=True, exist_ok=True)
            layer.to_crs(4326).to_file(strokes, driver="GeoJSON")  # GeoJSON is WGS84 (RFC 7946)
            scheme = parse_scheme({"name": "page", "classes": [{"name": c["name"], "code": i + 1, "color": c["color"]}
                                                               for i, c in enumerate(self.classes)]})
            result = label_raster(self.images, strokes, out, class_field="class", scheme=scheme, bands=self.bands,
                                  nodata=self.nodata, settings=self.settings, median=self.median, overwrite=True,
                                  progress=False,
                                  log=lambda _: None)
            with rasterio.open(out) as src:
                labels = src.read(1, out_shape=self.display, resampling=Resampling.nearest)
            lut = np.zeros((256, 4), np.uint8)
            for c in result.classes:
                lut[int(c["id"])] = [*hex_rgb(c["color"]), 255]
            self.result_png = png(lut[labels])
            self.runs += 1
            total = max(1, sum(result.pixels.values()))
            return {"overlay": f"/api/result.png?run={self.runs}", "seconds": round(result.seconds, 2),
                    "proportions": {n: round(v / total, 4) for n, v in result.pixels.items()},
                    "files": {k: str(v) for k, v in result.files.items()}}


def png(array: np.ndarray) -> bytes:
    """An array (h, w[, channels]) of uint8 as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def session_classes(scheme: str | None, names: list[str] | None) -> list[dict]:
    """The classes offered on the page: a scheme's (with its colours) or names given (colours from a palette)."""
    if scheme:
        return [{"id": c.id, "name": c.name, "color": c.color} for c in load_scheme(scheme).classes]
    if not names or len(set(names)) < 2:
        raise LandcoverError("the page needs the classes to offer: --scheme S or --classes NAME NAME ...")
    from landcover.schemes import palette

    return [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(names, palette(len(names)),
                                                                            strict=True))]


class PageHandler(BaseHTTPRequestHandler):
    """What a local page's handler needs (the labelling page's and the studio's): quiet, answers with a length and
    no caching, JSON bodies read within MAX_BODY; each request marks the server busy (see `serve`)."""

    def log_message(self, *args) -> None:  # quiet: the terminal shows what matters
        pass

    def touch(self) -> str:
        """Note the request's time; its path without the query."""
        self.server.last_request = time.monotonic()
        return self.path.split("?")[0]

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _static(self, package: str, name: str, kind: str) -> None:
        self._send(200, resources.files(package).joinpath("static", name).read_bytes(), kind)

    def _body(self) -> object:
        """The request's JSON body (BadRequest for a bad Content-Length, a body over MAX_BODY, or not JSON)."""
        text = self.headers.get("Content-Length") or "0"
        if not text.strip().isdigit():  # 'abc' or '-1' (which would read until the client gives up)
            self.close_connection = True
            raise BadRequest(400, f"Content-Length {text!r} is not a number of bytes")
        length = int(text)
        if length > MAX_BODY:
            raise BadRequest(413, f"the request is {length:,} bytes: at most {MAX_BODY:,}")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            raise BadRequest(400, "the request is not JSON") from None

    def _answer(self, work: Callable[[], None]) -> None:
        """Run `work`; a refusal or an error becomes a JSON answer with its status and message. A page that went
        away before its answer (a tile no longer on screen, a closed tab) is let go quietly."""
        try:
            try:
                work()
            except (BrokenPipeError, ConnectionResetError):
                raise
            except BadRequest as exc:
                self._json(exc.status, {"error": str(exc)})
            except LandcoverError as exc:
                self._json(422, {"error": str(exc)})
            except Exception as exc:  # a defect of ours: still an answer, with what happened
                self._json(500, {"error": f"internal error ({type(exc).__name__}: {str(exc).splitlines()[0]})"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def local_server(handler: type[PageHandler], port: int = 0, idle_seconds: float = 1800) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (`port` 0: any free one) with `handler`; `serve` runs it until idle."""
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise LandcoverError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}; another "
                             "program holds it? leave --port out for any free one)") from None
    server.daemon_threads = True
    server.last_request = time.monotonic()
    server.idle_seconds = idle_seconds
    return server


def make_server(session: LabelSession, port: int = 0, idle_seconds: float = 1800) -> ThreadingHTTPServer:
    """The labelling page's server on 127.0.0.1 (`port` 0: any free one); `serve` runs it until idle."""

    class Handler(PageHandler):
        def do_GET(self) -> None:
            path = self.touch()
            if path in STATIC:
                self._static("landcover.label", *STATIC[path])
            elif path == "/api/info":
                self._json(200, session.info())
            elif path == "/api/image.png":
                self._send(200, session.image_png(), "image/png")
            elif path == "/api/result.png" and session.result_png is not None:
                self._send(200, session.result_png, "image/png")
            else:
                self._json(404, {"error": f"no such page: {path}"})

        def do_POST(self) -> None:
            path = self.touch()

            def work() -> None:
                if path not in ("/api/run", "/api/save"):
                    raise BadRequest(404, f"no such action: {path}")
                body = self._body()
                target = session.out if path == "/api/save" else session.work / "dense.tif"
                self._json(200, session.run(body, target))

            self._answer(work)

    return local_server(Handler, port, idle_seconds)


def serve(server: ThreadingHTTPServer) -> None:
    """Answer requests until `idle_seconds` pass without one (or the server is shut down)."""
    watcher = threading.Thread(target=_stop_when_idle, args=(server,), daemon=True)
    watcher.start()
    server.serve_forever(poll_interval=0.2)
    server.server_close()


def _stop_when_idle(server: ThreadingHTTPServer) -> None:
    while time.monotonic() - server.last_request < server.idle_seconds:
        time.sleep(min(1.0, server.idle_seconds / 4))
    server.shutdown()

