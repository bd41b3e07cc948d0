"""Shared fixtures: the real data in ../shared/data (a skip locally, a failure under CI)."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LANDCOVER_DATA", ROOT.parent / "shared" / "data"))


def skip_or_fail(message: str) -> None:
    """Skip clearly when something the test needs is absent; under CI=true that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def need_data(*parts: str) -> Path:
    """A path under the shared data folder; skip clearly if absent (fail under CI=true)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        skip_or_fail(f"real data not found: {path} (tests read ../shared/data; see its README)")
    return path


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `build` fills once per test session, shared by every pytest-xdist worker (the first to come builds
    it under a lock in the session's common temp folder, the others wait and reuse it)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def zion() -> Path:
    return need_data("zion")


@pytest.fixture(scope="session")
def zion_images(zion: Path) -> list[str]:
    return [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]


@pytest.fixture(scope="session")
def zion_crop(zion_images, tmp_path_factory) -> list[str]:
    """A 300 x 420 px corner of the four Zion bands (written as files): fast enough to predict many times."""
    root = tmp_path_factory.mktemp("crop")
    paths = []
    for image in zion_images:
        with rasterio.open(image) as src:
            window = rasterio.windows.Window(400, 500, 420, 300)
            data, transform = src.read(1, window=window), src.window_transform(window)
            paths.append(str(write_raster(root / Path(image).name, data, src.crs, transform, src.nodata)))
    return paths


def write_raster(path: Path, data: np.ndarray, crs: str, transform, nodata=None) -> Path:
    """Write a small GeoTIFF (bands x rows x cols, or rows x cols)."""
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="session")
def park_chips(tmp_path_factory) -> Path:
    """Zion GeoTIFF chips inside the park (4 bands, uint16, 32 px), split by blocks 70:15:15 (read-only: copy
    before changing anything)."""
    from landcover.cli import main

    zion = need_data("zion")

    def build(root: Path) -> None:
        images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
        assert main(["chips", "--quiet", "--image", *images, "--labels", str(zion / "nlcd2011.tif"), "--scheme",
                     "nlcd-grouped", "--tile-size", "960m", "--rule", "purity:0.6", "--format", "tif",
                     "--aoi", str(zion / "zion.gpkg"), "--out", str(root / "chips")]) == 0
        assert main(["split", str(root / "chips"), "--blocks", "3", "--ratios", "70:15:15", "--no-plot"]) == 0

    return built_once(tmp_path_factory, "park", build) / "chips"


@pytest.fixture(scope="session")
def zion_bundle(tmp_path_factory):
    """True-colour PNG chips of Zion (stretched from uint16), frozen lite0 features at 32 px + logistic regression
    (read-only: copy before changing anything). Returns the bundle, the four Landsat bands and the work folder."""
    from landcover.cli import main

    zion = need_data("zion")
    images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]

    def build(root: Path) -> None:
        assert main(["chips", "--quiet", "--image", *images, "--bands", "3", "2", "1", "--labels",
                     str(zion / "nlcd2011.tif"), "--scheme", "nlcd-grouped", "--tile-size", "480m", "--rule",
                     "points:3", "--out", str(root / "chips")]) == 0
        assert main(["split", str(root / "chips"), "--blocks", "4", "--ratios", "80:10:10", "--no-plot"]) == 0
        assert main(["train", "--quiet", "--manifest", str(root / "chips"), "--runs", str(root / "runs"), "--name",
                     "b", "--mode", "features", "--head", "logreg", "--arch", "efficientnet-lite0", "--input-size",
                     "32"]) == 0

    root = built_once(tmp_path_factory, "predict", build)
    return root / "runs" / "b" / "bundle", images, root


@pytest.fixture(scope="session")
def zion_tile_map(zion_bundle, tmp_path_factory) -> Path:
    """zion_bundle's map of the whole Landsat scene at the default settings, with its tiles.parquet (read-only)."""
    from landcover.predict.raster import predict_raster

    bundle, images, _ = zion_bundle

    def build(root: Path) -> None:
        predict_raster(bundle, images, root / "map.tif", progress=False, log=lambda _: None)

    return built_once(tmp_path_factory, "tile-map", build) / "map.tif"


@pytest.fixture(scope="session")
def zion_pairs(tmp_path_factory):
    """Zion segmentation pairs inside the park: 64 px tiles, NLCD 2011 (Albers) masks, split by blocks 70:15:15
    (read-only: copy before changing anything)."""
    from landcover.cli import main

    zion = need_data("zion")

    def build(root: Path) -> None:
        images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
        assert main(["chips", "--quiet", "--image", *images, "--labels", str(zion / "nlcd2011_albers.tif"),
                     "--scheme", "nlcd-grouped", "--tile-size", "64px", "--layout", "pairs", "--aoi",
                     str(zion / "zion.gpkg"), "--out", str(root / "pairs")]) == 0
        assert main(["split", str(root / "pairs"), "--blocks", "2", "--ratios", "70:15:15", "--no-plot"]) == 0

    return built_once(tmp_path_factory, "pairs", build) / "pairs"


@pytest.fixture(scope="session")
def zion_seg_run(zion_pairs, tmp_path_factory):
    """A U-Net (Lite0 encoder) trained 2 epochs on the Zion pairs: the run folder (read-only)."""
    from landcover.cli import main

    def build(root: Path) -> None:
        assert main(["train", "--quiet", "--task", "segmentation", "--manifest", str(zion_pairs), "--runs",
                     str(root / "runs"), "--name", "unet", "--batch-size", "8", "--rgb-bands", "3", "2", "1",
                     "--seed", "3", "--epochs", "2"]) == 0

    return built_once(tmp_path_factory, "seg", build) / "runs" / "unet"


def headless_chromium():
    """A headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, 1200 x 900; skipped (failed
    under CI) when it is not installed. The caller quits it."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        skip_or_fail("headless Chromium not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


def post_json(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """POST `body` as JSON to a local page's server: (status, the JSON answer), 4xx and 5xx included."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
