"""Each bad input: one line naming the file and the problem, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from affine import Affine
from conftest import write_raster

from landcover.cli import main


@pytest.fixture
def args(zion, zion_images):
    """Arguments of a good Zion run; each test breaks one thing."""
    return {"--image": zion_images, "--labels": [str(zion / "nlcd2011.tif")], "--scheme": ["nlcd-grouped"],
            "--tile-size": ["480m"], "--aoi": [str(zion / "zion.gpkg")]}


def run_bad(capsys, tmp_path, args: dict, *extra: str) -> str:
    out = tmp_path / "out"
    argv = ["chips", "--quiet", "--out", str(out), *extra]
    for flag, values in args.items():
        argv += [flag, *map(str, values)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landcover: error: ") and "\n" not in err, err
    assert not out.exists(), "nothing may be written on bad input"
    return err


def test_missing_image(capsys, tmp_path, args):
    args["--image"] = [tmp_path / "nope.tif"]
    assert run_bad(capsys, tmp_path, args).endswith("nope.tif: no such file")


def test_unreadable_raster(capsys, tmp_path, args):
    junk = tmp_path / "junk.tif"
    junk.write_text("this is not a raster")
    args["--labels"] = [junk]
    assert "junk.tif: not a readable raster" in run_bad(capsys, tmp_path, args)


def test_raster_without_crs(capsys, tmp_path, args):
    flat = write_raster(tmp_path / "flat.tif", np.ones((50, 50), np.uint16), None, Affine.identity())
    args["--image"] = [flat]
    assert "flat.tif: has no CRS" in run_bad(capsys, tmp_path, args)


def test_imagery_and_labels_that_do_not_overlap(capsys, tmp_path, args):
    far = write_raster(tmp_path / "far.tif", np.full((20, 20), 41, np.uint8), "EPSG:32612",
                       Affine(30, 0, 600000, 0, -30, 5000000))
    args["--labels"] = [far]
    assert "far.tif: the labels do not overlap the imagery" in run_bad(capsys, tmp_path, args)


def test_aoi_outside_the_image(capsys, tmp_path, args):
    import geopandas as gpd
    from shapely.geometry import box

    aoi = tmp_path / "elsewhere.geojson"
    gpd.GeoDataFrame(geometry=[box(-100, 40, -99, 41)], crs="EPSG:4326").to_file(aoi)
    args["--aoi"] = [aoi]
    assert "elsewhere.geojson: the AOI lies outside the imagery" in run_bad(capsys, tmp_path, args)


@pytest.mark.parametrize("size, message", [("10m", "smaller than one pixel"), ("0px", "smaller than one pixel"),
                                           ("40000m", "larger than the scene"),
                                           ("480", "tile size '480' has no unit: write 480m (metres) or 480px")])
def test_tile_size_out_of_range(capsys, tmp_path, args, size, message):
    args["--tile-size"] = [size]
    assert message in run_bad(capsys, tmp_path, args)


def test_unknown_scheme(capsys, tmp_path, args):
    args["--scheme"] = ["corine"]
    assert "corine: unknown class scheme (built in: lcmap, nlcd, nlcd-grouped" in run_bad(capsys, tmp_path, args)


def test_band_index_out_of_range(capsys, tmp_path, args):
    assert "band 7 is out of range: the stack has bands 1..4" in run_bad(capsys, tmp_path, args, "--bands", "1", "7")


def test_label_codes_absent_from_the_scheme(capsys, tmp_path, args):
    scheme = tmp_path / "forest-only.yaml"
    scheme.write_text("name: forest-only\nclasses:\n  - {codes: [41, 42, 43], name: Forest}\n")
    args["--scheme"] = [scheme]
    err = run_bad(capsys, tmp_path, args)
    assert "nlcd2011.tif: label codes [11, 21, 22, 23, 31, 52, 71, 81, 82, 90, 95] are not in scheme" in err


def test_the_console_script_exits_non_zero(tmp_path):
    done = subprocess.run([sys.executable, "-m", "landcover", "chips", "--image", str(tmp_path / "a.tif"),
                           "--labels", str(tmp_path / "b.tif"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().endswith("a.tif: no such file")
    assert not (tmp_path / "out").exists()
