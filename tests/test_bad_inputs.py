"""Bad inputs met at run time on real data (issue #27's trial): each is one line naming the file or flag, exit 2,
no traceback, and nothing left behind. Parse-time ranges are in test_reliability's BAD_NUMBERS table."""

from __future__ import annotations

import json
import socket

import numpy as np
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
