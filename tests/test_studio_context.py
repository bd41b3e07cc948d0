"""The studio's `--bundle` as context (#29): the bundle's class probabilities on the imagery's grid, blended with the
pixel model's as far as the labels say; the saved bundle names them and the command line makes the same map. On
Zion with the shared frozen-feature tile classifier; the pieces (context features, validity, the blend's share) on
small arrays."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import rasterio
from conftest import headless_chromium
from rasterio.windows import Window
from test_studio_model import nlcd_ids, points

from landcover.cli import main
from landcover.geo.raster import Scene
from landcover.label.server import serve
from landcover.models.pixelfeatures import PixelFeatures
from landcover.studio.context import fit_with_context
from landcover.studio.model import StudioModel
from landcover.studio.server import StudioSession, make_server
from landcover.train.pixels import fit_pixel_head


def test_context_bands_are_features_as_they_are():
    spec = PixelFeatures.create(["red", "nir"], ["red", "nir"], [30.0])
    with_context = PixelFeatures.from_dict({**spec.to_dict(), "context": ["Water", "Forest"]})
    assert with_context.context == ("Water", "Forest") and with_context.without_context() == spec
    assert with_context.names == [*spec.names, "context_Water", "context_Forest"]
    assert PixelFeatures.from_dict(with_context.to_dict()) == with_context
    rng = np.random.default_rng(0)
    imagery = rng.integers(0, 3000, (2, 40, 50)).astype(np.uint16)
    context = rng.integers(0, 255, (2, 40, 50)).astype(np.uint16)
    valid = np.ones((40, 50), bool)
    valid[3, 4] = False
    both = with_context.compute(np.concatenate([imagery, context]), valid, 30.0)
    alone = spec.compute(imagery, valid, 30.0)
    assert np.array_equal(both[:len(alone)], alone, equal_nan=True)
    assert np.array_equal(both[len(alone):, valid], context[:, valid].astype(np.float32))
    assert np.isnan(both[:, 3, 4]).all()


def test_bands_after_the_imagery_never_make_a_pixel_valid(tmp_path):
    """A pixel of no imagery stays invalid under a context band that has a value there, read directly or warped."""
    transform = rasterio.transform.from_origin(500_000, 4_000_000, 30, 30)
    imagery = np.full((1, 8, 9), 7, np.uint16)
    imagery[0, 2, 3] = 0
    for name, data, nodata in (("imagery.tif", imagery, 0), ("context.tif", np.full((1, 8, 9), 9, np.uint8), 255)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=9, height=8, count=1, dtype=data.dtype,
                           crs="EPSG:32612", transform=transform, nodata=nodata) as dst:
            dst.write(data)
    stacked = Scene.open([tmp_path / "imagery.tif", tmp_path / "context.tif"])
    assert stacked.read(Window(0, 0, 9, 8))[1][2, 3]  # as GDAL masks a stack: not every band at its nodata
    scene = replace(stacked, valid_bands=1)
    for _, valid in (scene.read(Window(0, 0, 9, 8)), scene.read_warped(scene.crs, transform, 9, 8)):
        assert not valid[2, 3] and valid.sum() == 8 * 9 - 1


def test_the_contexts_share_is_chosen_on_the_labels():
    """Context columns that hold the class (blurred) beside imagery features of noise get a share; context columns of
    noise beside imagery features that hold the class get none (and the features drop them): the choice is the
    blend's Brier score on the labelled pixels, the forest's votes out of bag. The blend is what `proba` says."""
    spec = PixelFeatures.create(["b1"], [None], [30.0])
    spec = PixelFeatures.from_dict({**spec.to_dict(), "context": ["a", "b", "c"]})
    n = spec.head_columns
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    context = np.eye(3)[y] * 200 + np.abs(rng.normal(0, 60, (300, 3)))
    head, used, choice = fit_with_context(np.hstack([rng.normal(0, 1, (300, n)), context]), y, 3, spec)
    assert choice["share"] >= 0.5 and used == replace(spec, context_share=choice["share"]), choice
    assert choice["brier"]["1"] < choice["brier"]["0"] - 0.2 and head.n_features == n
    X = np.hstack([rng.normal(0, 1, (50, n)), context[:50]])
    want = (1 - used.context_share) * head.predict_proba(X[:, :n]) + used.context_share * (
        X[:, n:] / X[:, n:].sum(axis=1, keepdims=True))
    assert np.allclose(used.proba(head, X), want)
    best, top = used.top(head, X)
    assert np.array_equal(best, want.argmax(1)) and np.allclose(top, want.max(1))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    imagery = np.eye(3)[y][:, np.arange(n) % 3] * 200 + rng.normal(0, 60, (300, n))
    head, used, choice = fit_with_context(np.hstack([imagery, rng.uniform(0, 250, (300, 3))]), y, 3, spec)
    assert choice["share"] == 0 and used == spec.without_context(), choice


def test_a_bundles_probabilities_as_context(zion_bundle, zion_images, tmp_path, capsys):
    """--bundle: its map is made with its probabilities, warped onto the imagery's grid (DIR/context.tif); they are
    the last features of the display tiles; retraining says their share; a model that blends them in saves a bundle
    naming them, whose map the command line makes again with context.tif given last (one line without it)."""
    bundle, _, _ = zion_bundle
    out = tmp_path / "st"
    session = StudioSession(zion_images, out, bundle_path=str(bundle), bands=[3, 2, 1], log=lambda _: None)
    deadline = time.monotonic() + 120
    while session.map_state()["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.25)
    context, stack = session.context, session.imagery.stack
    assert context is not None and context.names == tuple(c["name"] for c in session.classes)
    with rasterio.open(context.path) as src, rasterio.open(context.probs) as probs:
        assert (src.height, src.width, src.count) == (stack.height, stack.width, probs.count)
        warped = src.read()
        coarse = probs.read()
        # at the centre of a probability pixel (16 x 16 imagery pixels) the bilinear value is that pixel's own
        row, col = 20, 30
        centre = ~stack.transform * (probs.transform * (col + 0.5, row + 0.5))
        assert np.abs(warped[:, int(centre[1]), int(centre[0])].astype(int) - coarse[:, row, col]).max() <= 8
    truth = nlcd_ids(session)
    session.set_labels({"labels": points(session, truth)})
    answer = session.retrain()
    assert set(answer["context"]) == {"share", "brier", "labelled"}, answer
    assert (session.model.spec.context == context.names) == (answer["context"]["share"] > 0)
    features, ok = session.features.get(0, 1, 1)
    assert ok.all() and np.array_equal(features[-len(context.names):],
                                       warped[:, 256:512, 256:512].astype(np.float32))
    assert session.features.get(2, 0, 0)[0].shape[0] == len(session.features.spec.names)  # a level above warps
    in_the_page(session)
    if not answer["context"]["share"]:  # the same labels through a model that blends them in
        spec = session.features.spec
        X, y = session.labels.training_pixels(spec, session.model_stack(spec))
        session.model = StudioModel(replace(spec, context_share=0.5), fit_pixel_head(
            "rf", X[:, :spec.head_columns], y, len(session.classes)), session.classes, 2, len(y))
    session.map_all({})
    deadline = time.monotonic() + 120
    while session.map_state()["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.25)
    assert session.map_state()["state"] == "done"
    with rasterio.open(out / "map.tif") as src:
        mapped = src.read(1)
    again = tmp_path / "again.tif"
    assert main(["predict", str(out / "bundle"), "--image", *zion_images, str(out / "context.tif"), "--out",
                 str(again)]) == 0
    with rasterio.open(again) as src:
        assert np.array_equal(src.read(1), mapped)
    capsys.readouterr()
    assert main(["predict", str(out / "bundle"), "--image", *zion_images, "--out", str(tmp_path / "no.tif")]) == 2
    said = capsys.readouterr().err.strip()
    assert "context.tif" in said and len(said.splitlines()) == 1, said
    level0 = session.model.tile(session.features, 0, 1, 1)[0]
    assert np.array_equal(level0, mapped[256:512, 256:512])  # the model's tile is its map
    said = []
    other = StudioSession(zion_images, tmp_path / "other", bundle_path=str(bundle), class_names=["Forest", "Shrubland"],
                          log=said.append)
    while other.map_state()["state"] == "running" and time.monotonic() < deadline + 120:
        time.sleep(0.25)
    assert other.context is None and other.tile_features().spec.context == ()
    assert said == ["the bundle's classes are not the ones labelled: its probabilities stay out of the model"]


def in_the_page(session: StudioSession) -> None:
    """Retrain from the page in Chromium: it says the bundle's share, and the model's tiles are drawn."""
    import threading

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = make_server(session, 0, idle_seconds=60)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    driver = headless_chromium()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "retrain").is_enabled())
        driver.find_element(By.ID, "retrain").click()
        wait.until(lambda d: "the bundle's share" in d.find_element(By.ID, "label-status").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-layer .tile"))
    finally:
        driver.quit()
        server.shutdown()
