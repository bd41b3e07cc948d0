"""The studio in a real browser: how fast a raster of any size opens and its tiles come while a person pans.

Run from the repository root:  python bench/studio_session.py [--out bench/results] [--size 16384] [--quick]
`--quick` (what CI runs): a 2,048 px mosaic and a short session; it checks the bench works, not figures of record.

Imagery: real NAIP, the North Dakota years laid side by side into one 16384 x 16384 mosaic at 1 m (4 bands, uint8,
no overviews: bench/predict.py's). Steps, each timed:
  1. the studio opened on it the first time (its display pyramid built into the cache), then again (the cache
     read): until the server answers;
  2. headless Chromium (Debian's chromium + chromium-driver, Selenium) opens the page and waits for the view's
     tiles: the page's open time;
  3. a scripted session: zoom to the imagery's own pixels, 30 drags of a third of the view in a loop, zoom out
     and in again; every tile's time from request to drawn (the page's own record) -> p50, p95, and the server's
     time per tile (HTTP on loopback, one at a time, level 0 and the top levels).
This first part of #29 (imagery and a map at any size) has no labelling yet: the rounds of labels, retraining and
accuracy come with the next part. Writes <out>/studio_session.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load, machine
from predict import build_mosaic

from landcover.label.server import serve
from landcover.studio.server import StudioSession, make_server


def open_studio(image: Path, out: Path) -> tuple[float, str, object]:
    """The studio's server on a free port of 127.0.0.1; seconds until it answers."""
    started = time.perf_counter()
    session = StudioSession([str(image)], out, log=lambda _: None)
    server = make_server(session, 0, idle_seconds=600)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    with urllib.request.urlopen(url + "api/info", timeout=30) as response:
        json.loads(response.read())
    return time.perf_counter() - started, url, server


def server_tile_times(url: str, levels: int, tiles: int) -> dict:
    """Seconds per tile asked one at a time: 40 tiles of level 0 drawn at random from its `tiles` x `tiles`, and
    every tile of the top 3 levels."""
    def timed(path: str) -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(url + path, timeout=30) as response:
            response.read()
        return time.perf_counter() - started

    picks = np.random.default_rng(0).integers(0, tiles, (40, 2))
    level0 = [timed(f"tiles/image/0/{c}/{r}.png") for c, r in picks]
    top = [timed(f"tiles/image/{lv}/{c}/{r}.png") for lv in range(levels - 3, levels)
           for c in range(2 ** (levels - 1 - lv)) for r in range(2 ** (levels - 1 - lv))]
    return {"level0_ms": percentiles(level0), "top_levels_ms": percentiles(top)}


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    pick = lambda q: round(ms[min(len(ms) - 1, int(q * (len(ms) - 1)))], 1)  # noqa: E731
    return {"tiles": len(ms), "p50": pick(0.5), "p95": pick(0.95), "max": round(ms[-1], 1)}


def browser_session(url: str, size: int, drags: int) -> dict:
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                              options=options)

    def settled() -> None:
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "const s = window.studio.stats; return s.requested > 0 && s.loaded + s.failed === s.requested"))

    try:
        started = time.perf_counter()
        driver.get(url)
        settled()
        page_open = time.perf_counter() - started
        zoom = ("const v = document.getElementById('view'); "
                "window.studio.zoomAt(v.clientWidth / 2, v.clientHeight / 2, arguments[0])")
        driver.execute_script("window.studio.stats.times = []")
        driver.execute_script("window.studio.state.scale = 1; window.studio.panTo(arguments[0], arguments[0])",
                              size / 2)
        settled()
        for i in range(drags):  # a third of the view each way, round a square
            dx, dy = [(1, 0), (0, 1), (-1, 0), (0, -1)][i // max(1, drags // 4) % 4]
            driver.execute_script("const s = window.studio.state, v = document.getElementById('view');"
                                  "window.studio.panTo(s.x + arguments[0] * v.clientWidth / 3,"
                                  " s.y + arguments[1] * v.clientHeight / 3)", dx, dy)
            settled()
        for factor in (1 / 8, 8):
            driver.execute_script(zoom, factor)
            settled()
        stats = driver.execute_script("return window.studio.stats")
        return {"page_open_s": round(page_open, 2), "failed": stats["failed"],
                "panning_ms": percentiles([t / 1000 for t in stats["times"]])}
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--quick", action="store_true", help="a 2,048 px mosaic, 4 drags (not of record)")
    parser.add_argument("--work", help="folder for the mosaic and the studio (default: a temporary folder)")
    args = parser.parse_args(argv)
    size, drags = (2048, 4) if args.quick else (args.size, 30)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-studio-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = {"quick": args.quick, "size": size, "load_before": load(),
                   "machine": machine("selenium"),
                   "chromium": subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()}
        image = build_mosaic(work / f"naip_{size}.tif", size)
        first, url, server = open_studio(image, work / "studio")
        server.shutdown()
        again, url, server = open_studio(image, work / "studio")
        results["open_first_s"], results["open_cached_s"] = round(first, 2), round(again, 2)
        with urllib.request.urlopen(url + "api/info", timeout=30) as response:
            levels = json.loads(response.read())["levels"]
        results["levels"] = levels
        results["server"] = server_tile_times(url, levels, -(-size // 256))
        results["browser"] = browser_session(url, size, drags)
        server.shutdown()
        (out / "studio_session.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
