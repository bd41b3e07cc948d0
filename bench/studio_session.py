"""The studio in a real browser: how fast a raster of any size opens and pans, and a scripted labelling session.

Run from the repository root:
    python bench/studio_session.py [--out bench/results] [--size 16384] [--rounds 6] [--clicks 20]
        [--image RASTER... --truth REF --truth-scheme S --scheme S]
`--quick` (what CI runs): a 2,048 px mosaic, a short pan, 3 rounds of 10 clicks; it checks the bench works, not
figures of record.

Part 1, the imagery at any size: real NAIP, the North Dakota years laid side by side into one 16384 x 16384 mosaic
at 1 m (4 bands, uint8, no overviews: bench/predict.py's). Timed: the studio opened on it the first time (its
display pyramid built into the cache), then again (the cache read), until the server answers; headless Chromium
(Debian's chromium + chromium-driver, Selenium) opening the page until the view's tiles are drawn; a pan session
(zoom to the imagery's own pixels, 30 drags of a third of the view round a square, zoom out and in): every tile's
time from request to drawn (the page's own record) -> p50, p95; the server's time per tile, one at a time.

Part 2, a labelling session (default: Zion, Landsat 8 bands 2-5 at 30 m, reference NLCD 2011 grouped): the page is
driven as a person would. Round 1: `--clicks` points at random pixels the reference classes, each placed with the
point tool (the view centred on it, a click in the middle) in the reference's class. Then each round: "retrain"
(timed: the server's retraining, and by the page itself from its answer to the last of the view's model tiles drawn,
per megapixel the view shows at the imagery's pixels: 0.77 Mpx here, in 20 tiles), then "suggest" `--clicks` places
and each labelled in turn as above (a place the reference has no class for is passed over). After the last round,
"map all" (timed, with its assessment against the reference). Accuracy per round: the studio's model on a fixed
random sample of 200,000 reference pixels; beside it, for the same clicks, the model bench/annotate.py fits
(features of the whole scene at once, `fit_pixel_head`): the two are the same model (the features of a pixel do not
depend on the window it is read in, nor the forest on the order of its rows). With `--bundle B` (or `--zion-bundle`:
the tile classifier the tests share, trained here on Zion's chips) the studio starts with that bundle as
`landcover studio --bundle` does, the sessions wait for its map, and the bench's model on the same clicks is blended
with its probabilities as the studio's (`fit_with_context`); the bundle's own accuracy and the shares chosen are
reported. Writes <out>/studio_session.json and prints it.
"""

from __future__ import annotations

import argparse
import itertools
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
from common import ROOT, load, machine, say, zion, zion_classifier, zion_images
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


def chromium():
    """Headless Chromium (Debian's chromium + chromium-driver) under Selenium, 1280 x 900."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                            options=options)


def settled(driver, seconds: float = 60) -> None:
    """Until every tile the page asked for has come (or failed)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(lambda d: d.execute_script(
        "const s = window.studio.stats; return s.requested > 0 && s.loaded + s.failed === s.requested"))


def browser_session(url: str, size: int, drags: int) -> dict:
    driver = chromium()
    try:
        started = time.perf_counter()
        driver.get(url)
        settled(driver)
        page_open = time.perf_counter() - started
        zoom = ("const v = document.getElementById('view'); "
                "window.studio.zoomAt(v.clientWidth / 2, v.clientHeight / 2, arguments[0])")
        driver.execute_script("window.studio.stats.times = []")
        driver.execute_script("window.studio.state.scale = 1; window.studio.panTo(arguments[0], arguments[0])",
                              size / 2)
        settled(driver)
        for i in range(drags):  # a third of the view each way, round a square
            dx, dy = [(1, 0), (0, 1), (-1, 0), (0, -1)][i // max(1, drags // 4) % 4]
            driver.execute_script("const s = window.studio.state, v = document.getElementById('view');"
                                  "window.studio.panTo(s.x + arguments[0] * v.clientWidth / 3,"
                                  " s.y + arguments[1] * v.clientHeight / 3)", dx, dy)
            settled(driver)
        for factor in (1 / 8, 8):
            driver.execute_script(zoom, factor)
            settled(driver)
        stats = driver.execute_script("return window.studio.stats")
        return {"page_open_s": round(page_open, 2), "failed": stats["failed"],
                "panning_ms": percentiles([t / 1000 for t in stats["times"]])}
    finally:
        driver.quit()


def imagery_at_any_size(work: Path, size: int, drags: int) -> dict:
    """Part 1: the mosaic opened (first time, then cached), the server's tile times, the pan session."""
    results = {}
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
    return results


def reference_ids(stack, truth: str, scheme: str, names: list[str]) -> np.ndarray:
    """The reference's classes on the imagery's grid (nearest), as the studio's class ids (255: none)."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    from landcover.schemes import load_scheme

    codes = np.zeros((stack.height, stack.width), np.uint16)
    with rasterio.open(truth) as src:
        reproject(rasterio.band(src, 1), codes, dst_transform=stack.transform, dst_crs=stack.crs,
                  resampling=Resampling.nearest)
    loaded = load_scheme(scheme)
    ids = np.array([names.index(c.name) if c.name in names else 255 for c in loaded.classes] + [255] * 256, np.uint8)
    return ids[np.minimum(loaded.lookup()[codes], len(loaded.classes))]


def label_at(driver, place: list[float], name: str) -> None:
    """A point of class `name` as a person places it: the view centred on the place, a click in the middle."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "class")).select_by_visible_text(name)
    driver.execute_script("window.studio.state.scale = Math.max(2, window.studio.state.scale);"
                          "window.studio.panTo(arguments[0], arguments[1])", *place)
    ActionChains(driver).move_to_element(driver.find_element(By.ID, "view")).click().perform()


def labelling_task(images: list[str], truth: str, truth_scheme: str, scheme: str) -> dict:
    """What the scripted sessions share: every pixel's features (as bench/annotate.py computes them), the
    reference on the imagery's grid as the studio's class ids, the pixels it classes, a fixed sample to score on."""
    from annotate import scene_arrays

    from landcover.geo.raster import Scene
    from landcover.label.server import session_classes

    stack = Scene.open(images)
    names = [c["name"] for c in session_classes(scheme, None)]
    X, valid = scene_arrays(stack)
    truth_ids = reference_ids(stack, truth, truth_scheme, names)
    known = np.flatnonzero(valid & (truth_ids.ravel() < len(names)))
    scored = np.random.default_rng(0).choice(known, min(200_000, len(known)), replace=False)
    return {"X": X, "truth": truth_ids, "known": known, "scored": scored, "names": names, "width": stack.width}


def labelling(images: list[str], truth: str, truth_scheme: str, scheme: str, bands: list[int] | None, work: Path,
              rounds: int, clicks: int, seeds: int, bundle: str | None = None) -> dict:
    """Part 2: `seeds` scripted sessions (their first clicks differ); per round the mean accuracy of the studio's
    model and of bench/annotate.py's on the same clicks, the slowest retraining and view re-mapping."""
    task = labelling_task(images, truth, truth_scheme, scheme)
    runs = [labelling_session(task, images, truth, truth_scheme, scheme, bands, work / f"labelling-{seed}", rounds,
                              clicks, seed, bundle) for seed in range(seeds)]
    curve = [{"clicks": points[0]["clicks"],
              **{k: round(float(np.mean([p["accuracy"][k] for p in points])), 4) for k in ("studio",
                                                                                            "annotate_bench")},
              "retrain_s": max(p["retrain_s"] for p in points),
              "remap_s_per_mpx": max(p["remap_s_per_mpx"] for p in points)}
             for points in zip(*(r["rounds"] for r in runs), strict=True)]
    studio = [c["studio"] for c in curve]
    return {"images": [Path(p).name for p in images], "reference": Path(truth).name, "classes": task["names"],
            "scored_pixels": len(task["scored"]), "seeds": seeds, "clicks_per_round": clicks, "curve": curve,
            "rises_every_round": all(b > a for a, b in itertools.pairwise(studio)),
            **({"bundle": bundle, "bundle_alone": runs[0]["bundle_alone"],
                "bundle_shares": [[p["accuracy"]["bundle_share"] for p in r["rounds"]] for r in runs]}
               if bundle else {}),
            "largest_gap_to_annotate_bench": round(max(abs(p["accuracy"]["studio"] - p["accuracy"]["annotate_bench"])
                                                       for r in runs for p in r["rounds"]), 4),
            "map_all": runs[0]["map_all"], "runs": runs}


def with_bundle(session: StudioSession, X: np.ndarray, seconds: float = 900) -> np.ndarray:
    """Once the studio has made its `--bundle`'s map: every pixel's features with the bundle's probabilities after
    them (DIR/context.tif, what the studio's model reads)."""
    import rasterio

    deadline = time.monotonic() + seconds
    while session.context is None:
        if session.job.state()["state"] == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"the bundle's map was not made: {session.job.state()}")
        time.sleep(0.5)
    with rasterio.open(session.context.path) as src:
        probs = src.read().reshape(src.count, -1).T.astype(np.float32)
    return np.hstack([X, probs])


def labelling_session(task: dict, images: list[str], truth: str, truth_scheme: str, scheme: str,
                      bands: list[int] | None, folder: Path, rounds: int, clicks: int, seed: int,
                      bundle: str | None = None) -> dict:
    """One scripted session in Chromium: per round the clicks, retraining and view re-mapping seconds, the studio's
    accuracy and bench/annotate.py's for the same clicks (with `bundle`, the studio started with `--bundle` and the
    bench's model blended with its probabilities as `fit_with_context` does); then map all."""
    import re

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from landcover.studio.context import fit_with_context
    from landcover.studio.mapping import Reference
    from landcover.train.pixels import fit_pixel_head

    session = StudioSession(images, folder, scheme=scheme, bands=bands, reference=Reference(truth, truth_scheme),
                            bundle_path=bundle, log=lambda _: None)
    server = make_server(session, 0, idle_seconds=600)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    stack, names, X, truth_ids, scored = (session.imagery.stack, task["names"], task["X"], task["truth"],
                                          task["scored"])
    assert names == [c["name"] for c in session.classes]
    out = {"seed": seed, "rounds": []}
    if bundle:
        X = with_bundle(session, X)
    spec = session.tile_features().spec  # the studio's features (with the bundle's probabilities, once made)
    if spec.context:
        out["bundle_alone"] = round(float((X[scored, spec.head_columns:].argmax(1) == truth_ids.ravel()[scored])
                                          .mean()), 4)
    rng = np.random.default_rng([seed, 1])
    first = [[c + 0.5, r + 0.5] for r, c in zip(*np.unravel_index(rng.choice(task["known"], clicks, replace=False),
                                                                   truth_ids.shape), strict=True)]
    driver = chromium()
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(url)
        settled(driver)
        driver.find_element(By.CSS_SELECTOR, "input[name=tool][value=point]").click()
        driver.execute_script("document.getElementById('suggest-count').value = arguments[0]", clicks)
        for round_ in range(rounds):
            if round_:
                driver.execute_script("document.getElementById('suggest-status').textContent = ''")
                driver.find_element(By.ID, "suggest").click()
                wait.until(lambda d: "places" in d.find_element(By.ID, "suggest-status").text)
                places = driver.execute_script("return window.studio.state.suggestions")
            else:
                places = first
            started = time.perf_counter()
            for place in places:
                k = truth_ids[int(place[1]), int(place[0])]
                if k < len(names):
                    expected = len(session.labels.items) + 1
                    label_at(driver, place, names[k])
                    wait.until(lambda d, n=expected: len(session.labels.items) == n)
            labelling = time.perf_counter() - started
            driver.execute_script("window.studio.state.scale = 1; window.studio.panTo(arguments[0], arguments[1])",
                                  stack.width / 2, stack.height / 2)
            settled(driver)
            started = time.perf_counter()
            driver.find_element(By.ID, "retrain").click()
            wait.until(lambda d, v=round_ + 1: d.execute_script("return window.studio.state.info.model_version") == v)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-layer .tile"))
            settled(driver)
            seen = time.perf_counter() - started
            timing = driver.execute_script(
                "const v = document.getElementById('view'), s = window.studio.stats, t = window.studio.state;"
                "return [s.lastLoaded - s.retrained, Math.min(v.clientWidth / t.scale, t.info.size[1]) *"
                "        Math.min(v.clientHeight / t.scale, t.info.size[0])]")
            remap_s, view_mpx = timing[0] / 1000, timing[1] / 1e6
            trained = re.search(r"trained on (\d+) pixels in ([\d.]+) s",
                                driver.find_element(By.ID, "label-status").text)
            retrain_s = float(trained.group(2))
            clicked = np.array([int(p[1]) * stack.width + int(p[0]) for item in session.labels.items
                                for p in item["points"]])
            if spec.context:
                bench_head, bench_spec, _ = fit_with_context(X[clicked], truth_ids.ravel()[clicked], len(names), spec)
            else:
                bench_head, bench_spec = fit_pixel_head("rf", X[clicked], truth_ids.ravel()[clicked], len(names)), spec
            accuracy = {"studio": float((session.model.spec.proba(session.model.head, X[scored]).argmax(1)
                                         == truth_ids.ravel()[scored]).mean()),
                        "annotate_bench": float((bench_spec.proba(bench_head, X[scored]).argmax(1)
                                                 == truth_ids.ravel()[scored]).mean())}
            if spec.context:
                accuracy["bundle_share"] = session.model.spec.context_share
            out["rounds"].append({"clicks": len(clicked), "placing_s": round(labelling, 2),
                                  "retrain_s": retrain_s, "view_remap_s": round(remap_s, 2),
                                  "view_mpx": round(view_mpx, 2), "remap_s_per_mpx": round(remap_s / view_mpx, 2),
                                  "page_s": round(seen, 2),
                                  "accuracy": {k: round(v, 4) for k, v in accuracy.items()}})
            say(f"seed {seed} round {round_ + 1}: {len(clicked)} clicks, accuracy {accuracy['studio']:.3f} (annotate "
                f"bench {accuracy['annotate_bench']:.3f}), retrain {retrain_s:.2f} s, view {remap_s:.2f} s "
                f"({view_mpx:.2f} Mpx)")
        started = time.perf_counter()
        driver.find_element(By.ID, "map-all").click()
        WebDriverWait(driver, 600).until(lambda d: session.job.state().get("files") == ["bundle", "map.tif"]
                                         and "accuracy" in d.find_element(By.ID, "assessment").text)
        job = session.job.state()  # (with --bundle, the page showed the assessment of the bundle's map before)
        out["map_all"] = {"seconds": job["seconds"], "page_s": round(time.perf_counter() - started, 2),
                          "overall_accuracy": job["assessment"]["overall_accuracy"],
                          "overall_accuracy_ci95": job["assessment"]["overall_accuracy_ci95"],
                          "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                                          if p.is_file() and "cache" not in p.parts)}
        return out
    finally:
        driver.quit()
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--size", type=int, default=16384, help="part 1's mosaic side in px (0: no part 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a 2,048 px mosaic, 4 drags, 3 rounds of 10 clicks (not of record)")
    parser.add_argument("--work", help="folder for the mosaic and the studio (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clicks", type=int, default=20, help="clicks a round")
    parser.add_argument("--seeds", type=int, default=3, help="scripted sessions averaged (their first clicks differ)")
    parser.add_argument("--image", nargs="+", help="part 2's imagery (default: Zion's Landsat bands 2-5)")
    parser.add_argument("--bands", type=int, nargs="+", help="part 2's display bands (default with Zion: 3 2 1)")
    parser.add_argument("--truth", help="part 2's reference raster (default: Zion's NLCD 2011)")
    parser.add_argument("--truth-scheme", default="nlcd-grouped")
    parser.add_argument("--scheme", default="nlcd-grouped", help="the classes labelled")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--bundle", help="part 2's studio started with this model bundle (`landcover studio --bundle`)")
    given.add_argument("--zion-bundle", action="store_true",
                       help="part 2's studio started with the tile classifier the tests share (trained here on Zion)")
    args = parser.parse_args(argv)
    size, drags = (2048, 4) if args.quick else (args.size, 30)
    rounds, clicks, seeds = (3, 10, 1) if args.quick else (args.rounds, args.clicks, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-studio-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.image and not args.truth:
        parser.error("--image needs --truth (the reference the scripted session labels with)")
    if args.image:
        images, bands, truth = args.image, args.bands, args.truth
    else:
        folder = zion()
        images, bands, truth = zion_images(folder), args.bands or [3, 2, 1], args.truth or str(folder / "nlcd2011.tif")
    try:
        results = {"quick": args.quick, "size": size, "load_before": load(),
                   "machine": machine("selenium"),
                   "chromium": subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()}
        if size:
            results.update(imagery_at_any_size(work, size, drags))
        bundle = str(zion_classifier(work / "bundle")) if args.zion_bundle else args.bundle
        results["labelling"] = labelling(images, truth, args.truth_scheme, args.scheme, bands, work, rounds,
                                         clicks, seeds, bundle)
        (out / "studio_session.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
