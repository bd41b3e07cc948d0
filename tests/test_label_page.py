"""`landcover label --serve`: the server's validation over real HTTP on 127.0.0.1, and the page in a real headless
Chromium (Debian's chromium + chromium-driver, driven by Selenium): strokes of two classes drawn, Run, Save."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import headless_chromium, need_data, post_json
from PIL import Image

from landcover.label.server import LabelSession, make_server, serve, session_classes
from landcover.maps.classmap import read_class_map

CLASSES = ["forest", "developed", "water"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The server on a free port of 127.0.0.1 over the NC scene (false colour), stopped after the tests (or when
    idle for two minutes)."""
    folder = need_data("landsat_nc")
    images = [str(folder / f"lsat7_2000_{b}.tif") for b in (40, 30, 20)]
    out = tmp_path_factory.mktemp("page") / "dense.tif"
    session = LabelSession(images, out, session_classes(None, CLASSES))
    server = make_server(session, 0, idle_seconds=120)
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    assert server.server_address[0] == "127.0.0.1"
    yield f"http://127.0.0.1:{server.server_address[1]}", session, folder
    server.shutdown()
    thread.join(10)
    shutil.rmtree(session.work, ignore_errors=True)


def test_every_request_is_checked(page):
    url, session, _ = page
    with urllib.request.urlopen(f"{url}/api/info", timeout=10) as response:
        info = json.loads(response.read())
    assert [c["name"] for c in info["classes"]] == CLASSES and info["width"] == session.display[1]
    w, h = info["width"], info["height"]
    line = [[10, 10], [40, 40]]
    cases = (({"strokes": [{"class": "moon", "points": line}, {"class": "forest", "points": line}]}, 400,
              "unknown class 'moon'"),
             ({"strokes": [{"class": "forest", "points": [[w + 5, 10]]}, {"class": "water", "points": line}]}, 400,
              "leaves the image"),
             ({"strokes": [{"class": "forest", "points": line}]}, 400, "one class only"),
             ({"strokes": []}, 400, "no strokes"))
    for body, status, message in cases:
        got, answer = post_json(f"{url}/api/run", json.dumps(body).encode())
        assert got == status and message in answer["error"], (body, answer)
    got, answer = post_json(f"{url}/api/run", b"{not json")
    assert got == 400 and "not JSON" in answer["error"]
    got, answer = post_json(f"{url}/api/run", b"{}", {"Content-Length": str(50 * 1024 * 1024)})
    assert got == 413 and "at most" in answer["error"]
    strings = {"strokes": [{"class": "forest", "points": [["a", "b"]]}, {"class": "water", "points": line}]}
    got, answer = post_json(f"{url}/api/run", json.dumps(strings).encode())
    assert got == 400 and "points must be a list of [x, y] pairs" in answer["error"]
    for length in ("abc", "-1"):
        status, answer = raw_post(url, length, b"{}")
        assert status == 400 and "is not a number of bytes" in answer["error"], (length, answer)
    assert h > 100 and not session.out.exists()


def raw_post(url: str, length: str, body: bytes) -> tuple[int, dict]:
    """A POST with a Content-Length header as given (urllib would correct it); the answer must come at once."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST /api/run HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n".encode() + body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.mark.slow
def test_draw_run_and_save_in_headless_chromium(page, tmp_path):
    driver = headless_chromium()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, session, folder = page
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        canvas = driver.find_element(By.ID, "canvas")
        scale, x0, y0 = driver.execute_script("return [state.view.scale, state.view.x, state.view.y]")
        size = canvas.size
        # strokes across the interiors of labelled polygons: two forest, two developed
        polygons = gpd.read_file(folder / "landsat96_polygons.shp").to_crs(session.scene.crs.to_wkt())
        for name in ("forest", "developed"):
            driver.find_element(By.ID, f"class-{name}").click()
            for geom in polygons[polygons["label"] == name].geometry.iloc[:2]:
                col, row = ~session.scene.transform * (geom.centroid.x, geom.centroid.y)
                dx, dy = col / session.scale, row / session.scale  # display pixels
                cx, cy = x0 + scale * dx - size["width"] / 2, y0 + scale * dy - size["height"] / 2
                (ActionChains(driver).move_to_element_with_offset(canvas, int(cx) - 4, int(cy))
                 .click_and_hold().move_by_offset(4, 2).move_by_offset(4, -2).release().perform())
        strokes = driver.execute_script("return state.strokes.map(s => s.class)")
        assert strokes == ["forest", "forest", "developed", "developed"]
        before = Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")
        driver.find_element(By.ID, "run").click()
        status = driver.find_element(By.ID, "status")
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done")
                                         or status.get_attribute("class") == "error")
        assert "done in" in status.text, status.text
        WebDriverWait(driver, 10).until(lambda d: d.execute_script("return state.overlay !== null"))
        shares = driver.find_elements(By.CSS_SELECTOR, "#proportions li")
        assert [s.text.split()[0] for s in shares] == ["forest", "developed"]  # the page's order and colours
        shot = tmp_path / "page.png" if not os.environ.get("LANDCOVER_SHOT") else Path(os.environ["LANDCOVER_SHOT"])
        driver.save_screenshot(str(shot))
        after = Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")
        changed = (np.abs(np.asarray(after, int) - np.asarray(before, int)).sum(axis=2) > 30).mean()
        assert changed > 0.3, changed  # the result now covers the image
        assert not session.out.exists()  # Run writes to the work folder only
        driver.find_element(By.ID, "save").click()
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "save")
    finally:
        driver.quit()
    out = session.out
    assert Image.open(shot).size[0] >= 1000
    for name in ("dense.tif", "dense.json", "dense.png", "dense.scribbles.geojson"):
        assert (out.parent / name).exists(), name
    layer = gpd.read_file(out.parent / "dense.scribbles.geojson")
    assert sorted(layer["class"]) == ["developed", "developed", "forest", "forest"]
    dense = read_class_map(out)
    colours = {c["name"]: c["color"] for c in session.classes}
    assert [(c["name"], c["color"]) for c in dense.classes] == [(n, colours[n]) for n in ("forest", "developed")]
    with rasterio.open(folder / "lsat7_2000_40.tif") as src:
        assert dense.data.shape == src.shape
    report = json.loads((out.parent / "dense.json").read_text())
    assert set(report["shares"]) == {"developed", "forest"} and all(report["scribbled_pixels"].values())
