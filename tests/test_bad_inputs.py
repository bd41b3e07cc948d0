"""Bad inputs met at run time on real data (issue #27's trial): each is one line naming the file or flag, exit 2,
no traceback, and nothing left behind. Parse-time ranges are in test_reliability's BAD_NUMBERS table."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import rasterio
from conftest import write_raster

from landcover.cli import main


def one_line(capsys, argv, *expected) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and all(e in err for e in expected), err
    return err


def test_a_busy_port_is_one_line_and_leaves_no_work_folder(zion_crop, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line(capsys, ["label", "--image", *zion_crop, "--serve", "--no-browser", "--classes", "forest", "shrub",
                          "--out", tmp_path / "dense.tif", "--port", port], f"--port {port}", "cannot listen")
    assert not list(tmp_path.iterdir())


def test_a_probability_raster_given_as_a_map_is_named(zion_bundle, zion_crop, zion, tmp_path, capsys):
    bundle = zion_bundle[0]
    assert main(["predict", str(bundle), "--image", *zion_crop, "--out", str(tmp_path / "m.tif"), "--probabilities",
                 "--quiet"]) == 0
    capsys.readouterr()
    probs = tmp_path / "m.probs.tif"
    one_line(capsys, ["evaluate", probs, "--truth", zion / "nlcd2011.tif", "--scheme", "nlcd-grouped", "--out",
                      tmp_path / "acc"], "m.probs.tif", "is not a class map", "8 bands", "give the class map itself")
    one_line(capsys, ["map", probs, "--out", tmp_path / "m.png"], "m.probs.tif", "is not a class map")
    assert not (tmp_path / "acc").exists() and not (tmp_path / "m.png").exists()


def test_a_one_class_reference_is_said_to_assess_nothing_else(zion_tile_map, tmp_path, capsys):
    with rasterio.open(zion_tile_map) as src:
        forest = write_raster(tmp_path / "forest.tif", np.full(src.shape, 42, np.uint8), src.crs, src.transform)
    assert main(["evaluate", str(zion_tile_map), "--truth", str(forest), "--scheme", "nlcd-grouped", "--out",
                 str(tmp_path / "acc")]) == 0
    out = capsys.readouterr().out
    assert "warning: the reference holds one class (Forest)" in out
    assert "one class" in json.loads((tmp_path / "acc" / "accuracy.json").read_text())["warning"]


def test_small_areas_print_in_square_metres(tmp_path):
    """A class of three 30 m pixels is 2,700 m², not '0 ha' (what predict's summary printed on small scenes)."""
    from landcover.geo.grid import area_text
    from landcover.predict.outputs import RasterResult

    assert [area_text(h) for h in (12345.4, 12.34, 0.45, 0)] == ["12,345 ha", "12.3 ha", "4,500 m²", "0 m²"]
    result = RasterResult(tmp_path / "m.tif", {}, {"Forest": 3, "Water": 137}, {"Forest": 0.27, "Water": 12.33},
                          windows=1, skipped=0, resumed=0, seconds=1.0, seconds_read=0.0, seconds_infer=0.0,
                          reading="direct")
    classes = next(line for line in result.summary().splitlines() if line.startswith("classes:"))
    assert classes == "classes: Forest 2,700 m² (2.1%), Water 12.3 ha (97.9%)"


def nc_point_table(tmp_path, columns: tuple[str, str]):
    """The NC scene's labelled points as a CSV table with the given coordinate columns (lon/lat in WGS84)."""
    import geopandas as gpd
    from conftest import need_data

    folder = need_data("landsat_nc")
    points = gpd.read_file(folder / "landsat96_points.shp").to_crs("EPSG:4326")
    table = tmp_path / "points.csv"
    points.assign(**{columns[0]: points.geometry.x, columns[1]: points.geometry.y})[
        [columns[0], columns[1], "label"]].to_csv(table, index=False)
    return folder, table


def test_scribbles_from_a_lon_lat_table_and_x_y_refused(tmp_path, capsys):
    folder, table = nc_point_table(tmp_path, ("Longitude", "Latitude"))
    image = [str(folder / f"lsat7_2000_{b}.tif") for b in (40, 30, 20)]
    assert main(["label", "--image", *image, "--scribbles", str(table), "--class-field", "label", "--out",
                 str(tmp_path / "dense.tif"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "dense.json").read_text())
    assert len(summary["scribbled_pixels"]) == 7 and sum(summary["scribbled_pixels"].values()) > 700
    (tmp_path / "xy").mkdir()
    _, xy = nc_point_table(tmp_path / "xy", ("x", "y"))
    one_line(capsys, ["label", "--image", *image, "--scribbles", xy, "--class-field", "label", "--out",
                      tmp_path / "xy.tif"], "points.csv", "x/y columns carry no CRS")
    assert not (tmp_path / "xy.tif").exists()


def test_dense_labels_out_of_another_format_leave_nothing(tmp_path, capsys):
    folder, table = nc_point_table(tmp_path, ("lon", "lat"))
    image = [str(folder / f"lsat7_2000_{b}.tif") for b in (40, 30, 20)]
    one_line(capsys, ["label", "--image", *image, "--scribbles", table, "--class-field", "label", "--out",
                      tmp_path / "dense.png"], "dense.png", "give --out a .tif name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv"]


def test_probabilities_with_a_nan_patch_or_none_at_all(zion_seg_run, zion_crop, tmp_path, capsys):
    """A NaN patch is no evidence (said, and filled from around it by the CRF, not called the first class); a
    raster of zeros is refused."""
    probs = tmp_path / "m.probs.tif"
    assert main(["predict", str(zion_seg_run / "bundle"), "--image", *zion_crop, "--out", str(tmp_path / "m.tif"),
                 "--probabilities", "--quiet"]) == 0
    with rasterio.open(probs) as src:
        p = src.read().astype(np.float32) / 254
        profile = {**src.profile, "dtype": "float32", "nodata": None}
        names, tags = src.descriptions, src.tags()
    p[:, 100:130, 200:230] = np.nan

    def write(path, data):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**tags)
            for i, name in enumerate(names):
                dst.set_band_description(i + 1, name)
        return path

    patched = write(tmp_path / "nan.tif", p)
    capsys.readouterr()
    assert main(["crf", str(patched), "--image", *zion_crop, "--out", str(tmp_path / "r.tif"), "--quiet"]) == 0
    assert "900 of 126,000 cells (0.7%) hold no probabilities" in capsys.readouterr().out
    with rasterio.open(tmp_path / "r.tif") as src:
        refined = src.read(1)
    patch = refined[100:130, 200:230]
    assert (patch != 255).all() and np.bincount(patch.ravel()).argmax() == np.bincount(
        refined[90:140, 190:240].ravel()).argmax()  # the patch takes its surroundings' class
    zeros = write(tmp_path / "zeros.tif", np.zeros_like(p))
    one_line(capsys, ["crf", zeros, "--image", *zion_crop, "--out", tmp_path / "z.tif"], "zeros.tif",
             "holds no probabilities", "NaN or all zero")
    assert not (tmp_path / "z.tif").exists()


def test_a_chip_dataset_given_as_images_is_read_by_its_manifest(zion_bundle, park_chips, zion, tmp_path, capsys):
    """Its manifest lists the chips, so a figure beside them is never one; a dataset in shards is refused."""
    import shutil

    from PIL import Image

    from landcover.manifest import read_manifest
    from landcover.predict.folder import find_chips

    folder = shutil.copytree(park_chips, tmp_path / "chips")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "split_counts.png")  # a figure, not a chip
    frame, _ = read_manifest(folder / "manifest.parquet")
    assert find_chips(folder) == sorted(frame["path"]) and len(frame) > 200
    shards = tmp_path / "shards"
    assert main(["chips", "--quiet", "--image", *[str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)],
                 "--labels", str(zion / "nlcd2011.tif"), "--scheme", "nlcd-grouped", "--tile-size", "960m", "--aoi",
                 str(zion / "zion.gpkg"), "--layout", "shards", "--out", str(shards)]) == 0
    one_line(capsys, ["predict", zion_bundle[0], "--images", shards, "--out", tmp_path / "p.csv"], "shards",
             "members of shards", "landcover evaluate")
    assert not (tmp_path / "p.csv").exists()


def test_doctor_names_what_would_stop_a_run(zion_bundle, zion_seg_run, zion_crop, tmp_path, capsys):
    """A 4-band stack for a bundle cut from three files, pickled weights, imagery that is all nodata: each is a
    problem (exit 2) in plain words, and the run itself says the same in one line."""
    import shutil

    bundle = zion_bundle[0]
    with rasterio.open(zion_crop[0]) as src:
        profile = {**src.profile, "count": 4}
        stacked = tmp_path / "stack.tif"
        with rasterio.open(stacked, "w", **profile) as dst:
            for i, path in enumerate(zion_crop, 1):
                with rasterio.open(path) as band:
                    dst.write(band.read(1), i)
        empty = write_raster(tmp_path / "empty.tif", np.full(src.shape, 65535, np.uint16), src.crs, src.transform,
                             65535)
    words = ("the bundle reads 3 bands (band 1 of landsat_b4.tif, band 1 of landsat_b3.tif, band 1 of "
             "landsat_b2.tif, as its chips were cut); the imagery stacks 4 bands in 1 file(s)")
    assert main(["doctor", "--image", str(stacked), "--bundle", str(bundle)]) == 2
    out = capsys.readouterr().out
    assert "problem: " in out and words in out and "[[2, 1]" not in out
    assert out.strip().endswith("the run would stop")
    one_line(capsys, ["predict", bundle, "--image", stacked, "--out", tmp_path / "m.tif"], words, "--bands")
    assert main(["doctor", "--image", str(stacked), "--bundle", str(bundle), "--bands", "3", "2", "1"]) == 0
    capsys.readouterr()

    pickled = shutil.copytree(zion_seg_run / "bundle", tmp_path / "pickled")
    (pickled / "weights.safetensors").write_bytes(__import__("pickle").dumps({"w": [1.0]}))
    assert main(["doctor", "--image", *zion_crop, "--bundle", str(pickled)]) == 2
    assert "weights.safetensors: is a pickle" in capsys.readouterr().out

    assert main(["doctor", "--image", str(empty)]) == 2
    assert ("problem: imagery nodata: every pixel read is nodata (nodata values [65535.0]): nothing to chip or "
            "predict; if that value is real data, pass --nodata none") in capsys.readouterr().out
    assert main(["doctor", "--image", str(empty), "--nodata", "none"]) == 0
    capsys.readouterr()


@pytest.fixture(scope="module")
def pan_declared_grey(tmp_path_factory):
    """The real 0.5 m Atlanta panchromatic image, declaring as nodata a grey level its bright roofs really hold
    (173 pixels, scattered): the collision of a declared value with real pixels."""
    from conftest import need_data

    folder = need_data("buildings_atlanta")
    with rasterio.open(folder / "sample_geotiff.tif") as src:
        data, profile = src.read(1), src.profile
    values, counts = np.unique(data, return_counts=True)
    bright = values > np.percentile(data, 97)
    grey = int(values[bright][counts[bright].argmax()])
    path = tmp_path_factory.mktemp("pan") / "pan.tif"
    with rasterio.open(path, "w", **{**profile, "nodata": grey}) as dst:
        dst.write(data, 1)
    return path, folder / "geotiff_labels.geojson", int((data == grey).sum())


def test_nodata_colliding_with_real_pixels_is_diagnosed_and_overridden(pan_declared_grey, tmp_path, capsys):
    image, buildings, colliding = pan_declared_grey
    assert colliding > 100
    assert main(["doctor", "--image", str(image), "--tile-size", "32m"]) == 0
    out = capsys.readouterr().out
    specks = next(line for line in out.splitlines() if "in specks" in line)
    assert specks.startswith("warning:") and "of 196 tiles of 64 px" in specks
    assert "--nodata none" in specks and "--max-nodata" in specks and "warning(s) to read" in out
    chips = ["chips", "--quiet", "--image", str(image), "--labels-vector", str(buildings), "--burn-value", "1",
             "--class-name", "building", "--background", "other", "--tile-size", "32m", "--rule", "purity:0.5"]
    assert main([*chips, "--out", str(tmp_path / "declared")]) == 0
    out = capsys.readouterr().out
    rejected = int(out.split("rejected: nodata ")[1].split()[0])
    assert rejected > 30 and f"note: {rejected} tiles were rejected for nodata in under 1% of their pixels" in out
    assert "--nodata none reads every pixel as data" in out
    assert main([*chips, "--nodata", "none", "--out", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "196 chips" in out and "rejected: none" in out and "note:" not in out
    assert main(["doctor", "--image", str(image), "--tile-size", "32m", "--nodata", "none"]) == 0
    assert "in specks" not in capsys.readouterr().out


def test_a_nodata_override_reads_the_same_direct_and_warped(tmp_path):
    """--nodata replaces the declared value in direct reads and warped reads alike (GDAL's -srcnodata); 'none'
    leaves only the footprint as the warped mask."""
    from affine import Affine
    from conftest import need_data
    from rasterio.windows import Window

    from landcover.geo.raster import Scene

    rgb = need_data("landsat_rasterio") / "RGB.byte.tif"  # nodata 0 declared: its collar, and a few real specks
    declared = Scene.open([rgb])
    none = Scene.open([rgb], nodata="none")
    white = Scene.open([rgb], nodata=255)
    whole = Window(0, 0, declared.width, declared.height)
    pixels, valid = declared.read(whole)
    assert (~valid).sum() == (pixels == 0).all(0).sum() > 100000
    assert none.read(whole)[1].all()
    assert (~white.read(whole)[1]).sum() == (pixels == 255).all(0).sum() > 10000
    t = declared.transform * Affine.translation(-10, -10)  # a grid reaching past the raster
    for scene in (declared, none, white):
        _, ok = scene.read_warped(scene.crs, t, declared.width + 20, declared.height + 20,
                                       rasterio.enums.Resampling.nearest)
        inside = np.zeros(ok.shape, bool)
        inside[10:-10, 10:-10] = True
        direct = scene.read(whole)[1]
        np.testing.assert_array_equal(ok[10:-10, 10:-10], direct)
        assert not ok[~inside].any()


def test_refused_trainings_leave_no_runs_folder(park_chips, tmp_path, capsys, monkeypatch):
    """A training set of one class is refused by every mode before any feature is cached; early refusals (wrong
    band roles for auto, a learning rate that makes the loss NaN) leave no empty runs/ behind."""
    import shutil

    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    one = shutil.copytree(park_chips, tmp_path / "forest")
    table = pq.read_table(one / "manifest.parquet")
    pq.write_table(table.filter(np.array(table["label"].to_pylist()) == "Forest"), one / "manifest.parquet")
    for mode in ("finetune", "spectral", "features"):
        one_line(capsys, ["train", "--manifest", one, "--mode", mode, "--quiet"], "manifest.parquet",
                 "the 'train' split holds one class (Forest): a classifier needs chips of at least two")
        assert not (tmp_path / "runs").exists()
    one_line(capsys, ["train", "--manifest", park_chips, "--mode", "auto", "--band-roles", "red", "green"],
             "--band-roles gives 2 role(s) for chips of 4 band(s)")
    assert not (tmp_path / "runs").exists()
    assert main(["train", "--manifest", str(park_chips), "--lr", "1e30", "--epochs", "1", "--input-size", "32",
                 "--no-onnx", "--quiet"]) == 2
    assert "the loss became nan in epoch 1: lower the learning rate" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
