"""The studio's loop (#29): labels of every kind, the model's uncertainty, suggestions of where to label next, and Map
all through landcover's prediction path (the command line makes the same map from the studio's bundle), assessed
against a reference; over real HTTP on 127.0.0.1 and in a real headless Chromium, on Zion with NLCD 2011."""

from __future__ import annotations

import io
import json
import os
import threading
import time

import numpy as np
import pytest
import rasterio
from conftest import headless_chromium, need_data, post_json
from PIL import Image
from test_studio import get

from landcover.cli import main
from landcover.label.server import serve
from landcover.studio.mapping import Reference
from landcover.studio.server import StudioSession, make_server


def start(images: list[str], out) -> tuple[str, StudioSession, object]:
    """A studio over Zion (red, green, blue shown), classes NLCD grouped, NLCD 2011 as the reference."""
    session = StudioSession(images, out, scheme="nlcd-grouped", bands=[3, 2, 1], log=lambda _: None,
                            reference=Reference(str(need_data("zion", "nlcd2011.tif")), "nlcd-grouped"))
    server = make_server(session, 0, idle_seconds=120)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", session, server


@pytest.fixture(scope="module")
def studio(zion_images, tmp_path_factory):
    url, session, server = start(zion_images, tmp_path_factory.mktemp("studio") / "st")
    yield url, session
    server.shutdown()


def nlcd_ids(session: StudioSession) -> np.ndarray:
    """NLCD 2011 as the scheme's class ids on the imagery's grid (nearest; 255 where no class)."""
    from rasterio.warp import Resampling, reproject

    from landcover.schemes import load_scheme

    stack = session.imagery.stack
    codes = np.zeros((stack.height, stack.width), np.uint16)
    with rasterio.open(need_data("zion", "nlcd2011.tif")) as src:
        reproject(rasterio.band(src, 1), codes, dst_transform=stack.transform, dst_crs=stack.crs,
                  resampling=Resampling.nearest)
    return load_scheme("nlcd-grouped").lookup()[codes]


def points(session: StudioSession, truth: np.ndarray, per_class: int = 15) -> list[dict]:
    """Points at random pixels of each class NLCD holds (at least 100 px of it), labelled with its class."""
    rng = np.random.default_rng(0)
    out = []
    for c in session.classes:
        rows, cols = np.nonzero(truth == c["id"])
        if len(rows) >= 100:
            out += [{"class": c["name"], "kind": "point", "points": [[cols[k] + 0.5, rows[k] + 0.5]]}
                    for k in rng.choice(len(rows), per_class, replace=False)]
    return out


def wait_for_map(url: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = json.loads(get(f"{url}/api/map")[1])
        if state["state"] != "running":
            return state
        time.sleep(0.25)
    raise AssertionError("map all did not finish")


def test_every_new_request_is_checked(studio):
    url, _ = studio
    info = json.loads(get(f"{url}/api/info")[1])
    assert info["reference"]["layer"] and info["map"] is None and info["mapping"]["state"] == "idle"
    assert [c["name"] for c in info["classes"]][:3] == ["Water", "Developed", "Barren"]
    status, body = get(f"{url}/tiles/reference/1/1/1.png")  # NLCD's codes shown as the scheme's classes
    colours = {tuple(p[:3]) for p in np.asarray(Image.open(io.BytesIO(body)).convert("RGBA")).reshape(-1, 4) if p[3]}
    forest = tuple(int(next(c for c in info["classes"] if c["name"] == "Forest")["color"][i:i + 2], 16)
                   for i in (1, 3, 5))
    assert status == 200 and forest in colours
    for path, body, code, said in (
            ("/api/suggest", b'{"count": 5}', 400, "no model yet"), ("/api/map", b"{}", 400, "no model yet"),
            ("/api/labels", json.dumps({"labels": [{"class": "Forest", "kind": "polygon", "points": [[1, 1], [9, 9]]}]}
                                       ).encode(), 400, "at least 3 corners"),
            ("/api/labels", json.dumps({"labels": [{"class": "Forest", "kind": "polygon",
                                                    "points": [[1, 1], [9, 9], [5, 5]]}]}).encode(), 400, "an area")):
        status, answer = post_json(url + path, body)
        assert status == code and said in answer["error"], (path, answer)
    status, body = get(f"{url}/tiles/uncertainty/0/0/0.png")
    assert status == 404 and "retrain" in json.loads(body)["error"]


def test_suggest_map_all_and_the_command_line_agree(studio, zion_images, tmp_path):
    url, session = studio
    truth = nlcd_ids(session)
    shown = [(0, 0, 0), (0, 1, 0), (1, 1, 1)]
    for level, col, row in shown:
        assert get(f"{url}/tiles/image/{level}/{col}/{row}.png")[0] == 200
    labels = [*points(session, truth), {"class": "Forest", "kind": "polygon",
                                        "points": [[300, 400], [330, 400], [330, 420], [300, 425]]}]
    status, answer = post_json(f"{url}/api/labels", json.dumps({"labels": labels}).encode())
    assert status == 200 and answer["per_class"]["Forest"] == 16
    session.warming.join(60)  # the tiles shown get their features while the person labels, before any retraining
    assert set(shown) <= set(session.features.kept) and session.model is None
    status, answer = post_json(f"{url}/api/retrain", b"{}")
    assert status == 200 and answer["pixels"] > len(labels) + 500  # the polygon's ~650 pixels and the points
    for body, said in ((b'{"count": 0}', "1..100"), (b'{"count": "x"}', "1..100"), (b'{"n": 3}', "expected")):
        status, answer = post_json(f"{url}/api/suggest", body)
        assert status == 400 and said in answer["error"]
    status, answer = post_json(f"{url}/api/suggest", b'{"count": 10}')
    places = np.asarray(answer["places"])
    assert status == 200 and places.shape == (10, 2)
    stack = session.imagery.stack
    rows, cols = np.floor(places[:, 1]).astype(int), np.floor(places[:, 0]).astype(int)
    assert (rows < stack.height).all() and (cols < stack.width).all()
    taken = np.array([p for item in session.labels.items for p in item["points"]])
    for k, (x, y) in enumerate(places[:5]):  # the unsure half: apart from each other and from every label
        others = np.vstack([taken, np.delete(places[:5], k, axis=0)])
        assert (np.maximum(abs(others[:, 0] - x), abs(others[:, 1] - y)) >= 8).all()
    status, body = get(f"{url}/tiles/uncertainty/0/1/1.png")
    alpha = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))[..., 3]
    assert status == 200 and alpha.std() > 10  # sure and unsure parts of the tile
    status, answer = post_json(f"{url}/api/map", b'{"crf": "yes"}')
    assert status == 400
    status, answer = post_json(f"{url}/api/map", b'{"crf": false}')
    assert status == 200 and answer["state"] == "running"
    status, again = post_json(f"{url}/api/map", b"{}")
    assert status == 409 and "being made" in again["error"]
    state = wait_for_map(url)
    assert state["state"] == "done", state
    out = session.out
    assert state["files"] == ["bundle", "map.tif"] and (out / "assessment" / "accuracy.json").exists()
    with rasterio.open(out / "map.tif") as src:
        mapped = src.read(1)
    known = (mapped != 255) & (truth != 255)
    agree = float((mapped == truth)[known].mean())
    print(f"studio map all on Zion after {len(labels)} labels: {agree:.3f} of NLCD 2011's pixels, "
          f"{state['seconds']} s")
    assert state["assessment"]["accuracy"] == pytest.approx(agree, abs=2e-4) and state["assessment"]["samples"] == \
        known.sum()
    info = json.loads(get(f"{url}/api/info")[1])
    assert info["map"]["path"] == str(out / "map.tif") and info["map"]["version"] == 1
    assert get(f"{url}/tiles/map/0/1/1.png")[0] == 200
    assert main(["predict", str(out / "bundle"), "--image", *zion_images, "--out", str(tmp_path / "again.tif")]) == 0
    with rasterio.open(tmp_path / "again.tif") as src:
        assert np.array_equal(src.read(1), mapped)  # the command line makes the studio's map from its bundle
    reopened = StudioSession(zion_images, out, scheme="nlcd-grouped", bands=[3, 2, 1], log=lambda _: None)
    assert reopened.map_path == str(out / "map.tif") and reopened.labels.items == session.labels.items
    # a studio started from the bundle (--bundle): its map of the imagery, made as it starts, is the first map
    from_bundle = StudioSession(zion_images, tmp_path / "st2", bundle_path=str(out / "bundle"), log=lambda _: None)
    assert [c["name"] for c in from_bundle.classes] == [c["name"] for c in session.classes]
    deadline = time.monotonic() + 120
    while from_bundle.map_state()["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.25)
    assert from_bundle.info()["map"]["path"] == str(tmp_path / "st2" / "bundle-map.tif")
    with rasterio.open(tmp_path / "st2" / "bundle-map.tif") as src:
        assert np.array_equal(src.read(1), mapped)


@pytest.mark.slow
def test_map_all_refined_with_the_crf(studio):
    """The CRF toggle: the model's map and probabilities, then the dense CRF over them into DIR/map.tif."""
    url, session = studio
    if session.model is None:  # run alone: the model and its map first
        post_json(f"{url}/api/labels", json.dumps({"labels": points(session, nlcd_ids(session))}).encode())
        post_json(f"{url}/api/retrain", b"{}")
        post_json(f"{url}/api/map", b'{"crf": false}')
        assert wait_for_map(url)["state"] == "done"
    before = json.loads((session.out / "assessment" / "accuracy.json").read_text())["overall_accuracy"]
    status, _ = post_json(f"{url}/api/map", b'{"crf": true}')
    state = wait_for_map(url, 300)
    assert status == 200 and state["state"] == "done" and state["crf"], state
    with rasterio.open(session.out / "map.tif") as src:
        assert src.tags()["LANDCOVER_TASK"] == "dense"
    assert (session.out / "model-map.probs.tif").exists()
    after = state["assessment"]["overall_accuracy"]
    print(f"studio map all on Zion: the model's map {before:.3f}, refined by the CRF {after:.3f}")
    assert after > before


@pytest.mark.slow
def test_the_loop_in_a_real_browser(zion_images, tmp_path):
    """In Chromium: a polygon drawn and a label erased, retrain, the uncertainty layer, suggestions clicked through,
    Map all with its progress and the assessment panel."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, session, server = start(zion_images, tmp_path / "st")
    truth = nlcd_ids(session)
    session.set_labels({"labels": points(session, truth, 10)})  # an earlier session's labels, restored by the page
    driver = headless_chromium()
    wait = WebDriverWait(driver, 60)

    def settled() -> None:
        wait.until(lambda d: d.execute_script(
            "const s = window.studio.stats; return s.requested > 0 && s.loaded + s.failed === s.requested"))

    try:
        driver.get(url + "/")
        settled()
        n = len(session.labels.items)
        assert driver.execute_script("return window.studio.state.labels.length") == n
        view = driver.find_element(By.ID, "view")
        Select(driver.find_element(By.ID, "class")).select_by_visible_text("Forest")
        driver.find_element(By.CSS_SELECTOR, "input[name=tool][value=polygon]").click()
        for dx, dy in ((-60, -60), (-20, -60), (-20, -20)):
            ActionChains(driver).move_to_element_with_offset(view, dx, dy).click().perform()
        ActionChains(driver).move_to_element_with_offset(view, -60, -20).double_click().perform()
        wait.until(lambda d: len(session.labels.items) == n + 1)
        polygon = session.labels.items[-1]
        assert polygon["kind"] == "polygon" and len(polygon["points"]) == 4
        assert driver.find_elements(By.CSS_SELECTOR, "#labels-layer polygon")
        first = session.labels.items[0]["points"][0]  # erase: a click on the first point removes it
        driver.find_element(By.CSS_SELECTOR, "input[name=tool][value=erase]").click()
        x, y = driver.execute_script("return window.studio.screen(arguments[0])", first)
        ActionChains(driver).move_to_element_with_offset(view, x - view.size["width"] / 2,
                                                         y - view.size["height"] / 2).click().perform()
        wait.until(lambda d: len(session.labels.items) == n)
        assert first not in [p for item in session.labels.items for p in item["points"]]
        driver.find_element(By.ID, "retrain").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-layer .tile"))
        driver.find_element(By.ID, "show-uncertainty").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#uncertainty-layer .tile"))
        settled()
        driver.find_element(By.ID, "suggest").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#labels-layer circle.suggestion")) == 10)
        driver.find_element(By.CSS_SELECTOR, "input[name=tool][value=point]").click()
        for i in range(3):  # "next" centres the view on a suggestion; a click there labels it and it goes
            place = driver.execute_script("return window.studio.state.suggestions[0]")
            cls = next(c["name"] for c in session.classes if c["id"] == truth[int(place[1]), int(place[0])])
            Select(driver.find_element(By.ID, "class")).select_by_visible_text(cls)
            driver.find_element(By.ID, "next-suggestion").click()
            ActionChains(driver).move_to_element(view).click().perform()
            wait.until(lambda d, i=i: len(session.labels.items) == n + i + 1)
            assert driver.execute_script("return window.studio.state.suggestions.length") == 9 - i
            label = session.labels.items[-1]
            assert label["class"] == cls and np.allclose(label["points"][0], place, atol=1)
        driver.find_element(By.ID, "map-all").click()
        wait.until(lambda d: "accuracy" in d.find_element(By.ID, "assessment").text)
        assert "map.tif" in driver.find_element(By.ID, "map-status").text
        wait.until(lambda d: any("/tiles/map/" in t and "v=1" in t for t in d.execute_script(
            "return [...document.querySelectorAll('#map-layer .tile')].map(i => i.getAttribute('src'))")))
        rows = driver.find_elements(By.CSS_SELECTOR, "#assessment tr")
        assert len(rows) == 1 + len(session.classes)
        if os.environ.get("LANDCOVER_SHOT"):  # the README's figure: LANDCOVER_SHOT=docs/studio.png pytest -k loop
            driver.find_element(By.ID, "show-model").click()  # the map of the whole raster alone under the labels
            driver.find_element(By.ID, "show-uncertainty").click()
            driver.find_element(By.ID, "suggest").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#labels-layer circle.suggestion")) == 10)
            driver.execute_script("window.studio.fit()")
            settled()
            driver.save_screenshot(os.environ["LANDCOVER_SHOT"])
    finally:
        driver.quit()
        server.shutdown()


def test_suggestions_are_drawn_by_how_unsure_the_model_is():
    """The unsure half of the suggestions is a draw weighted by 1 - the top probability: nine times as unsure, about
    nine times as often; never a place within the spread of another or of a label; the draw itself is random (not
    the least sure in turn)."""
    from landcover.studio.model import unsure_spread

    rng = np.random.default_rng(0)
    rows, cols = np.divmod(np.arange(100 * 100), 100)
    sure = np.where(rng.random(len(rows)) < 0.5, 0.9, 0.1)  # unsure 0.9 or 0.1
    counts = np.zeros(2)
    for seed in range(200):
        picked = unsure_spread(rows, cols, sure, np.empty((0, 2)), 5, 0, np.random.default_rng(seed))
        counts += [(sure[picked] == 0.9).sum(), (sure[picked] == 0.1).sum()]
    assert 7 < counts[1] / counts[0] < 11.5, counts
    taken = np.array([[50.0, 50.0]])
    picked = unsure_spread(rows, cols, sure, taken, 20, 8, np.random.default_rng(1))
    places = np.c_[rows[picked], cols[picked]]
    for k, (r, c) in enumerate(places):
        others = np.vstack([taken, np.delete(places, k, axis=0)])
        assert (np.maximum(abs(others[:, 0] - r), abs(others[:, 1] - c)) >= 8).all()
    again = unsure_spread(rows, cols, sure, taken, 20, 8, np.random.default_rng(2))
    assert set(picked) != set(again)


def test_the_same_labels_give_the_same_model_in_any_order(zion_crop, tmp_path):
    """Labels made in another order (or restored from labels.geojson) give the same model, and it is the model
    `fit_pixel_head` fits on the whole raster's features of the same pixels (what bench/annotate.py fits): the
    features of a pixel at the raster's edge do not depend on the block it was read in, nor the forest on the
    rows' order."""
    from rasterio.windows import Window

    from landcover.train.pixels import fit_pixel_head

    sessions = [StudioSession(zion_crop, tmp_path / name, class_names=["low", "high"], log=lambda _: None)
                for name in ("a", "b")]
    stack = sessions[0].imagery.stack
    spec = sessions[0].tile_features().spec
    halo = spec.halo_px(stack.res[0])
    pixels, valid = stack.read(Window(-halo, -halo, stack.width + 2 * halo, stack.height + 2 * halo))
    X = spec.compute(pixels, valid, stack.res[0])[:, halo:-halo, halo:-halo].reshape(len(spec.names), -1).T
    nir = pixels[3, halo:-halo, halo:-halo].ravel()
    rng = np.random.default_rng(0)
    picked = np.r_[rng.choice(stack.width * stack.height, 60, replace=False), [0, stack.width - 1]]  # and 2 corners
    y = (nir[picked] > np.median(nir)).astype(int)
    items = [{"class": ["low", "high"][k], "kind": "point", "points": [[p % stack.width + 0.5, p // stack.width + 0.5]]}
             for p, k in zip(picked, y, strict=True)]
    sessions[0].set_labels({"labels": items})
    sessions[1].set_labels({"labels": items[::-1]})
    restored = StudioSession(zion_crop, tmp_path / "a", class_names=["low", "high"], log=lambda _: None)
    assert len(restored.labels.items) == len(items)  # read back from a/labels.geojson
    by_hand = fit_pixel_head("rf", X[picked], y, 2)
    for session in [*sessions, restored]:
        session.retrain()
        np.testing.assert_array_equal(session.model.head.predict_proba(X), by_hand.predict_proba(X))
