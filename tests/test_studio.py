"""`landcover studio` (#29, first part: the imagery at any size with a map over it): the server's checks over real
HTTP on 127.0.0.1, the page in a real headless Chromium (pan, zoom to the imagery's own pixels, the map over it, a
new display), the notebook's `lc.studio`, and its bad inputs."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import headless_chromium, need_data, post_json
from PIL import Image

from landcover.cli import main
from landcover.label.server import serve
from landcover.studio.server import StudioSession, make_server


@pytest.fixture(scope="module")
def studio(zion_images, tmp_path_factory):
    """The studio over Zion's four bands (red, green, blue shown) with NLCD grouped (its own ~31 m grid, warped per
    tile) as the map, on a free port of 127.0.0.1; stopped after the tests (or when idle for two minutes)."""
    session = StudioSession(zion_images, tmp_path_factory.mktemp("studio") / "st",
                            str(need_data("zion", "nlcd.tif")), bands=[3, 2, 1], log=lambda _: None)
    server = make_server(session, 0, idle_seconds=120)
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    assert server.server_address[0] == "127.0.0.1"
    yield f"http://127.0.0.1:{server.server_address[1]}", session
    server.shutdown()
    thread.join(10)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_every_request_is_checked(studio):
    url, session = studio
    status, body = get(f"{url}/api/info")
    info = json.loads(body)
    assert status == 200 and info["size"] == [1428, 1128] and info["levels"] == 4 and info["band_count"] == 4
    assert [c["name"] for c in info["map"]["classes"]][1:4] == ["Water", "Developed", "Barren"]
    status, body = get(f"{url}/tiles/map/1/1/1.png")
    tile = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
    assert status == 200 and tile.shape == (256, 256, 4) and (tile[..., 3] == 255).mean() > 0.9
    for path, code, said in (("/tiles/image/4/0/0.png", 404, "level 4 is outside 0..3"),
                             ("/tiles/image/0/5/0.png", 404, "outside level 0's 5 x 6 tiles"),
                             ("/tiles/other/0/0/0.png", 404, "no such page"),
                             ("/../../etc/passwd", 404, "no such page"),
                             ("/static/../server.py", 404, "no such page")):
        status, body = get(url + path)
        assert status == code and said in json.loads(body)["error"], (path, body)
    for body, code, said in ((b"[1]", 400, "expected"), (b"{x", 400, "not JSON"),
                             (b'{"bands": [5, 1, 2]}', 400, "band numbers in 1..4"),
                             (b'{"bands": [1, 2]}', 400, "1 or 3"), (b'{"percentiles": [50, 10]}', 400, "low < high"),
                             (b'{"percentiles": [5]}', 400, "low < high"),
                             (b'{"percentiles": "x"}', 400, "low < high")):
        status, answer = post_json(f"{url}/api/display", body)
        assert status == code and said in answer["error"], (body, answer)
    status, answer = post_json(f"{url}/api/display", b"x" * 10, {"Content-Length": str(6 * 1024 * 1024)})
    assert status == 413
    status, answer = post_json(f"{url}/api/nothing", b"{}")
    assert status == 404 and "no such action" in answer["error"]
    assert session.display_version == 0
    status, body = get(f"{url}/tiles/model/0/0/0.png")
    assert status == 404 and "retrain" in json.loads(body)["error"]


def test_a_session_in_a_real_browser(studio):
    driver = headless_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, session = studio

    def settled() -> dict:
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "const s = window.studio.stats; return s.requested > 0 && s.loaded + s.failed === s.requested"))
        return driver.execute_script("return {stats: window.studio.stats, level: document.getElementById('status')"
                                     ".textContent, tiles: [...document.querySelectorAll('.tile')].map(i => "
                                     "i.getAttribute('src'))}")

    try:
        started = time.perf_counter()
        driver.get(url + "/")
        opened = settled()
        assert time.perf_counter() - started < 10 and opened["stats"]["failed"] == 0
        # the whole scene fits at level 0 here (a screen pixel is 1.6 of the imagery's): 5 x 6 tiles a layer
        assert opened["level"].startswith("level 0") and len(opened["tiles"]) == 60
        middle = ("const v = document.getElementById('view'); "
                  "window.studio.zoomAt(v.clientWidth / 2, v.clientHeight / 2, ")
        driver.execute_script(middle + "1 / 4)")  # zoomed out: level 2's tiles, each 4 x 4 of the imagery's pixels
        far = settled()
        assert far["level"].startswith("level 2") and {t.split("/")[2:4] == ["map", "2"] for t in far["tiles"]} == {
            True, False} and far["stats"]["failed"] == 0
        driver.execute_script(middle + "16)")  # zoomed in to 2.5 screen pixels a pixel: level 0 again, a few tiles
        close = settled()
        assert close["level"].startswith("level 0") and len(close["tiles"]) < 40 and close["stats"]["failed"] == 0
        assert {t.split("/")[2] for t in close["tiles"]} == {"image", "map"}
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
        assert shot[100:800, 100:900].std() > 10  # imagery and map drawn, not an empty grey view
        # a new display from the panel: bands 4 3 2 (false colour), tiles asked again at version 1
        field = driver.find_element(By.ID, "bands")
        field.clear()
        field.send_keys("4 3 2")
        driver.find_element(By.ID, "apply-display").click()
        WebDriverWait(driver, 30).until(lambda d: all("v=1" in t for t in d.execute_script(
            "return [...document.querySelectorAll('#image-layer .tile')].map(i => i.getAttribute('src'))")))
        assert settled()["stats"]["failed"] == 0 and session.imagery.bands == [4, 3, 2]
        # label: the point tool, three clicks of Forest and three of Shrubland, one undone; retrain; the model's tiles
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.support.ui import Select

        view = driver.find_element(By.ID, "view")
        state_xy = driver.execute_script("return [window.studio.state.x, window.studio.state.y]")
        driver.find_element(By.CSS_SELECTOR, "input[name=tool][value=point]").click()
        for name, spots in (("Forest", ((-200, -150), (-120, 40), (60, -200))),
                            ("Shrubland", ((150, 120), (220, 200), (90, 260), (10, 10)))):
            Select(driver.find_element(By.ID, "class")).select_by_visible_text(name)
            for dx, dy in spots:
                ActionChains(driver).move_to_element_with_offset(view, dx, dy).click().perform()
        driver.find_element(By.ID, "undo").click()
        WebDriverWait(driver, 10).until(lambda d: len(session.labels.items) == 6)
        driver.execute_script("window.studio.panTo(-2000, -2000)")  # the view off the imagery: a click is refused
        ActionChains(driver).move_to_element_with_offset(view, 0, 0).click().perform()
        WebDriverWait(driver, 10).until(lambda d: "leaves the imagery" in d.find_element(By.ID, "message").text)
        WebDriverWait(driver, 10).until(lambda d: d.execute_script("return window.studio.state.labels.length") == 6)
        driver.execute_script("window.studio.panTo(arguments[0], arguments[1])", *state_xy)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#labels-layer circle")) == 6
        assert [i["class"] for i in session.labels.items] == ["Forest"] * 3 + ["Shrubland"] * 3
        driver.find_element(By.ID, "retrain").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-layer .tile"))
        assert settled()["stats"]["failed"] == 0 and session.model_version == 1
        assert "trained on 6 pixels" in driver.find_element(By.ID, "label-status").text
        if os.environ.get("LANDCOVER_SHOT"):  # the README's figure: LANDCOVER_SHOT=docs/studio.png pytest -k browser
            driver.find_element(By.ID, "show-map").click()
            settled()
            driver.save_screenshot(os.environ["LANDCOVER_SHOT"])
        times = sorted(driver.execute_script("return window.studio.stats.times"))
        print(f"studio on Zion: {len(times)} tiles, p95 {times[int(0.95 * (len(times) - 1))]:.0f} ms in the browser")
    finally:
        driver.quit()


def test_a_notebook_opens_the_same_page(zion_images, tmp_path):
    import landcover as lc

    url = lc.studio(zion_images[:3], tmp_path / "st", idle_minutes=1)
    assert url.startswith("http://127.0.0.1:")
    status, body = get(url + "api/info")
    assert status == 200 and json.loads(body)["map"] is None


def test_bad_inputs_are_one_line(zion_images, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for argv, said in ((["--image", *zion_images, "--out", str(tmp_path / "file")], "is a file"),
                       (["--image", *zion_images, "--map", zion_images[0], "--out", str(tmp_path / "a")],
                        "class map"),
                       (["--image", *zion_images, "--bands", "1", "2", "--out", str(tmp_path / "b")], "1 band"),
                       (["--image", *zion_images, "--truth", str(tmp_path / "none.tif"), "--out", str(tmp_path / "c")],
                        "no such file"),
                       (["--image", *zion_images, "--truth", str(tmp_path / "file"), "--out", str(tmp_path / "d")],
                        "not a readable raster"),
                       (["--image", *zion_images, "--bundle", str(tmp_path / "nobundle"), "--out",
                         str(tmp_path / "e")], "nobundle"),
                       (["--image", *zion_images, "--truth", str(need_data("zion", "zion.gpkg")), "--out",
                         str(tmp_path / "f")], "--truth-field")):
        assert main(["studio", *argv, "--no-browser"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def nlcd_on_grid(zion_images) -> np.ndarray:
    """NLCD grouped (class ids as nlcd.tif holds them) on the imagery's grid, nearest."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(zion_images[0]) as src:
        out = np.full((src.height, src.width), 255, np.uint8)
        crs, transform = src.crs, src.transform
    with rasterio.open(need_data("zion", "nlcd.tif")) as src:
        reproject(rasterio.band(src, 1), out, src_nodata=src.nodata, dst_nodata=255, dst_crs=crs,
                  dst_transform=transform, resampling=Resampling.nearest)
    return out


def test_labels_kept_retrained_and_mapped(studio, zion_images):
    """Points labelled with NLCD's class (30 a class, four classes) are written to labels.geojson, read back by a new
    studio on the folder, and retrain the pixel model, whose level-0 tiles agree with NLCD."""
    url, session = studio
    names = [c["name"] for c in session.classes]
    truth = nlcd_on_grid(zion_images)
    map_names = {int(c["id"]): c["name"] for c in session.map_tiles.classes}
    rng = np.random.default_rng(0)
    labels = []
    for name in ("Barren", "Forest", "Shrubland", "Developed"):
        code = next(k for k, v in map_names.items() if v == name)
        rows, cols = np.nonzero(truth == code)
        for k in rng.choice(len(rows), 30, replace=False):
            labels.append({"class": name, "kind": "point", "points": [[cols[k] + 0.5, rows[k] + 0.5]], "width": 1})
    for bad, said in (([{"class": "Lava", "kind": "point", "points": [[1, 1]]}], "unknown class"),
                      ([{"class": "Forest", "kind": "point", "points": [[1, 1], [2, 2]]}], "one [x, y]"),
                      ([{"class": "Forest", "kind": "stroke", "points": [[1, 1], [5000, 2]]}], "leaves the imagery"),
                      ([{"class": "Forest", "kind": "point", "points": [[1, 1]], "width": 0}], "width"),
                      ([{"class": "Forest", "kind": "line", "points": [[1, 1]]}], "kind")):
        status, answer = post_json(f"{url}/api/labels", json.dumps({"labels": bad}).encode())
        assert status == 400 and said in answer["error"], (bad, answer)
    status, answer = post_json(f"{url}/api/labels", json.dumps({"labels": labels[:30]}).encode())
    assert status == 200 and answer["per_class"]["Barren"] == 30
    status, answer = post_json(f"{url}/api/retrain", b"{}")
    assert status == 400 and "two classes" in answer["error"]
    status, answer = post_json(f"{url}/api/labels", json.dumps({"labels": labels}).encode())
    assert status == 200 and sum(answer["per_class"].values()) == 120
    saved = json.loads((session.out / "labels.geojson").read_text())
    assert len(saved["features"]) == 120 and saved["features"][0]["properties"]["class"] == "Barren"
    again = StudioSession(zion_images, session.out, str(need_data("zion", "nlcd.tif")), bands=[3, 2, 1],
                          log=lambda _: None)
    assert again.labels.items == session.labels.items  # read back from labels.geojson
    status, answer = post_json(f"{url}/api/retrain", b"{}")
    assert status == 200 and answer["pixels"] == 120 and answer["seconds"] < 10
    agree = []
    for col, row in ((1, 1), (2, 3), (3, 4)):
        status, body = get(f"{url}/tiles/model/0/{col}/{row}.png")
        assert status == 200
        rgba = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
        lut = {tuple(int(c["color"][i:i + 2], 16) for i in (1, 3, 5)): c["name"] for c in session.classes}
        predicted = np.array([[lut.get(tuple(p[:3]), "") for p in line] for line in rgba])
        window = truth[row * 256:(row + 1) * 256, col * 256:(col + 1) * 256]
        named = np.vectorize(lambda v: map_names.get(int(v), ""))(window)
        agree.append((predicted[:window.shape[0], :window.shape[1]] == named).mean())
    print(f"studio model after 120 points: agreement with NLCD on three tiles {np.round(agree, 3).tolist()}")
    assert np.mean(agree) > 0.5 and set(names) >= {"Forest", "Shrubland"}


def test_retraining_reads_the_blocks_under_the_labels(zion_images, tmp_path):
    """A stroke across the whole scene and a point on it: every pixel under them once (the point's class where they
    meet), read block by block along the stroke."""
    from rasterio.features import rasterize

    from landcover.geo.raster import Scene
    from landcover.predict.evidence import scene_features
    from landcover.studio.labels import Labels

    stack = Scene.open(zion_images)
    classes = [{"id": 0, "name": "a", "color": "#ff0000"}, {"id": 1, "name": "b", "color": "#0000ff"}]
    labels = Labels(tmp_path / "labels.geojson", classes, stack)
    labels.replace([{"class": "a", "kind": "stroke", "points": [[5, 5], [1100, 1400]], "width": 3},
                    {"class": "b", "kind": "point", "points": [[552.5, 705.5]]}])
    X, y = labels.training_pixels(scene_features(stack), stack)
    whole = rasterize([(shape, k + 1) for shape, k in labels.shapes()], out_shape=(stack.height, stack.width),
                      all_touched=True, dtype="int32")
    assert len(y) == (whole > 0).sum() and (y == 1).sum() == (whole == 2).sum() == 1
    assert X.shape == (len(y), len(scene_features(stack).names)) and np.isfinite(X).all()
