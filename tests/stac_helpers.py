"""A STAC catalog built from the real North Dakota NAIP years (each band a COG, plus a synthetic Sentinel-2-style
scene-classification layer of clouds), and an HTTP server on 127.0.0.1 that honours Range requests, counts the bytes
it serves, can fail or stall chosen files, and answers a minimal STAC item search (with paging)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.shutil
from RangeHTTPServer import RangeRequestHandler
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

BANDS = ("red", "green", "blue", "nir")
CLEAR, SHADOW, CLOUD = 4, 3, 9
AOI_UTM = (487000.0, 5206500.0, 488000.0, 5207500.0)
"""The test area in the NAIP's own CRS (EPSG:26914): 200 x 200 pixels of 5 m."""


def write_cog(path: Path, data: np.ndarray, profile: dict) -> None:
    """One band as a deflate COG with 256-pixel tiles (how NAIP, Sentinel-2 and Landsat are served)."""
    with MemoryFile() as mem:
        with mem.open(**{**profile, "count": 1, "dtype": data.dtype}) as dst:
            dst.write(data, 1)
        with mem.open() as src:
            rasterio.shutil.copy(src, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE="256")


def cloud_layer(shape: tuple[int, int], year_index: int, transform) -> np.ndarray:
    """SCL-style codes: clear (4) with a cloud disk (9) and its shadow (3) somewhere over the test area; the 2015
    item (index 4) gets a large cloud over the area's centre."""
    rows, cols = np.indices(shape)
    inv = ~transform
    c0, r0 = inv * (AOI_UTM[0], AOI_UTM[3])
    c1, r1 = inv * (AOI_UTM[2], AOI_UTM[1])
    rng = np.random.default_rng(year_index)
    if year_index == 4:
        cc, cr, radius = (c0 + c1) / 2, (r0 + r1) / 2, 60
    else:
        cc, cr, radius = rng.uniform(c0, c1), rng.uniform(r0, r1), rng.uniform(20, 45)
    layer = np.full(shape, CLEAR, np.uint8)
    layer[(cols - cc - 25) ** 2 + (rows - cr - 25) ** 2 < radius ** 2] = SHADOW
    layer[(cols - cc) ** 2 + (rows - cr) ** 2 < radius ** 2] = CLOUD
    return layer


def build_naip_catalog(naip_dir: Path, root: Path) -> Path:
    """catalog.json -> collection naip-nd -> one item per year (assets red, green, blue, nir, SCL)."""
    root.mkdir(parents=True, exist_ok=True)
    catalog = pystac.Catalog("naip-nd-test", "North Dakota NAIP years with synthetic clouds")
    collection = pystac.Collection("naip-nd", "NAIP, one quarter-quad, ten years",
                                   pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                                                 pystac.TemporalExtent([[None, None]])))
    catalog.add_child(collection)
    for k, path in enumerate(sorted(naip_dir.glob("*.tif"))):
        stamp = re.search(r"_(\d{8})\.tif$", path.name).group(1)
        when = datetime.strptime(stamp, "%Y%m%d").replace(tzinfo=UTC)
        folder = root / "files" / stamp
        folder.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path) as src:
            data, profile = src.read(), src.profile
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            transform = src.transform
        profile.update(driver="GTiff", tiled=False)
        for band, name in zip(data, BANDS, strict=True):
            write_cog(folder / f"{name}.tif", band, profile)
        scl = cloud_layer(data.shape[1:], k, transform)
        write_cog(folder / "SCL.tif", scl, {**profile, "nodata": None})
        item = pystac.Item(f"nd-{stamp}", mapping(box(*bounds)), list(bounds), when,
                           {"eo:cloud_cover": round(100 * float((scl == CLOUD).mean()), 3), "proj:code": "EPSG:26914"})
        for name in (*BANDS, "SCL"):
            item.add_asset(name, pystac.Asset(str(folder / f"{name}.tif"), media_type=pystac.MediaType.COG,
                                              roles=["data"]))
        collection.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


class QuietServer(ThreadingHTTPServer):
    """A request that fails after its test moved on (a 'slow' one, or a client gone) is not printed into the next
    test's captured stderr."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class StacServer:
    """Files under `root` over HTTP with Range requests, plus /api (landing page) and /api/search."""

    PAGE = 4

    def __init__(self, root: Path):
        self.root = root
        self.bytes: Counter = Counter()
        self.requests: Counter = Counter()
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        self.fail: dict[str, str] = {}  # path fragment -> '500' | 'drop' | 'slow'
        self.tokens: dict[str, str] = {}  # /sas/<account>/<container> -> a SAS token (a Planetary Computer stand-in)
        server = self

        class Handler(RangeRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def _trouble(self) -> bool:
                for fragment, mode in list(server.fail.items()):  # a test may change it while a request sleeps
                    if fragment in self.path:
                        if mode == "500":
                            self.send_error(500, "injected failure")
                        elif mode == "drop":
                            self.connection.shutdown(socket.SHUT_RDWR)
                            self.close_connection = True
                        else:
                            time.sleep(30)
                            continue
                        return True
                return False

            def do_HEAD(self):
                if not self._trouble():
                    super().do_HEAD()

            def do_GET(self):
                server.requests[self.path] += 1
                if self.path.rstrip("/") == "/api":
                    return self._json(server.landing())
                if self.path in server.tokens:
                    return self._json({"msft:expiry": "2099-01-01T00:00:00Z", "token": server.tokens[self.path]})
                if not self._trouble():
                    super().do_GET()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self._trouble():
                    return
                if self.path == "/api/search":
                    return self._json(server.search(body))
                self.send_error(404)

            def _json(self, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def send_head(self):
                f = super().send_head()
                if f is not None and getattr(self, "range", None):
                    first, last = self.range
                    size = Path(self.translate_path(self.path)).stat().st_size
                    server.ranges.setdefault(self.path, []).append((first, min(last or size - 1, size - 1)))
                return f

            def copyfile(self, source, outputfile):
                path = self.path

                class Counting:
                    def write(self, data):
                        server.bytes[path] += len(data)
                        return outputfile.write(data)

                super().copyfile(source, Counting())

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StacServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        self.bytes.clear()
        self.requests.clear()
        self.ranges.clear()
        self.fail.clear()

    def file_bytes(self) -> int:
        return sum(v for k, v in self.bytes.items() if k.endswith(".tif"))

    def landing(self) -> dict:
        api = f"{self.base}/api"
        return {"type": "Catalog", "id": "test-api", "stac_version": "1.0.0", "description": "loopback item search",
                "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
                "links": [{"rel": "self", "href": api, "type": "application/json"},
                          {"rel": "root", "href": api, "type": "application/json"},
                          {"rel": "search", "href": f"{api}/search", "type": "application/geo+json",
                           "method": "POST"}]}

    def items(self) -> list[dict]:
        """Every item, asset hrefs made absolute URLs on this server."""
        found = []
        for path in sorted(self.root.glob("*/*/*.json")):
            item = json.loads(path.read_text())
            if item.get("type") != "Feature":
                continue
            folder = path.parent.relative_to(self.root)
            for asset in item["assets"].values():
                resolved = (self.root / folder / asset["href"]).resolve().relative_to(self.root.resolve())
                asset["href"] = f"{self.base}/{resolved.as_posix()}"
            item["links"] = []
            found.append(item)
        return found

    def search(self, body: dict) -> dict:
        """bbox, datetime and collections filters; PAGE items per page, `token` the offset of the next page."""
        def keep(item: dict) -> bool:
            if body.get("collections") and item.get("collection") not in body["collections"]:
                return False
            if body.get("bbox"):
                w, s, e, n = body["bbox"]
                bw, bs, be, bn = item["bbox"]
                if bw > e or be < w or bs > n or bn < s:
                    return False
            if body.get("datetime"):
                start, _, end = body["datetime"].partition("/")
                when = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
                if start not in ("", "..") and when < datetime.fromisoformat(start.replace("Z", "+00:00")):
                    return False
                if end not in ("", "..") and when > datetime.fromisoformat(end.replace("Z", "+00:00")):
                    return False
            return True

        matched = [i for i in self.items() if keep(i)]
        offset = int(body.get("token") or 0)
        page = matched[offset:offset + self.PAGE]
        links = []
        if offset + self.PAGE < len(matched):
            links.append({"rel": "next", "href": f"{self.base}/api/search", "method": "POST",
                          "body": {**body, "token": str(offset + self.PAGE)}})
        return {"type": "FeatureCollection", "features": page, "links": links}
