"""Labels from vector layers (polygons and points) and segmentation chip pairs, on real data."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import need_data
from shapely.geometry import Polygon

from landcover.cli import main
from landcover.manifest import read_manifest


def run(*args) -> int:
    return main(["chips", "--quiet", *map(str, args)])


def test_building_pairs_carry_the_footprint_area(tmp_path):
    atlanta = need_data("buildings_atlanta")
    image, footprints = atlanta / "sample_geotiff.tif", atlanta / "geotiff_labels.geojson"
    out = tmp_path / "pairs"
    assert run("--image", image, "--labels-vector", footprints, "--burn-value", "1", "--class-name", "building",
               "--layout", "pairs", "--tile-size", "64px", "--keep-empty", "--out", out) == 0
    frame, info = read_manifest(out / "manifest.parquet")
    assert info["layout"] == "pairs" and len(frame) == (900 // 64) ** 2
    buildings = gpd.read_file(footprints).to_crs(frame.crs).union_all()
    burned = expected = 0.0
    for _, row in frame.iterrows():
        assert row["path"] == f"images/{row['chip_id']}.tif" and row["label_path"] == f"labels/{row['chip_id']}.tif"
        with rasterio.open(out / row["path"]) as im, rasterio.open(out / row["label_path"]) as lab:
            assert im.dtypes[0] == "uint16" and im.profile["compress"] == "lzw" and im.crs == lab.crs
            assert lab.count == 1 and lab.dtypes[0] == "uint8" and lab.transform == im.transform
            mask = lab.read(1)
            assert set(np.unique(mask)) <= {0, 1}
            burned += int((mask == 1).sum())
            assert row["labelled_frac"] == pytest.approx((mask == 1).mean(), abs=1e-6)
        expected += row.geometry.intersection(buildings).area / 0.5 ** 2
    assert expected > 10000 and burned == pytest.approx(expected, rel=0.02)
    # The Classified Tiles metadata: class values, names, colours, and the image/label map.
    emd = json.loads((out / "esri_model_definition.emd").read_text())
    assert emd["Classes"] == [{"Value": 1, "Name": "building", "Color": emd["Classes"][0]["Color"]}]
    stats = json.loads((out / "esri_accumulated_stats.json").read_text())
    assert stats["MetaDataMode"] == "Classified_Tiles" and stats["NumTiles"] == len(frame)
    lines = (out / "map.txt").read_text().splitlines()
    assert len(lines) == len(frame) and lines[0] == f"{frame['path'][0]} {frame['label_path'][0]}"
    # Without --keep-empty, tiles with no building are dropped.
    sparse = tmp_path / "sparse"
    assert run("--image", image, "--labels-vector", footprints, "--burn-value", "1", "--layout", "pairs",
               "--tile-size", "64px", "--min-labelled", "0.05", "--out", sparse) == 0
    kept, info = read_manifest(sparse / "manifest.parquet")
    assert (kept["labelled_frac"] >= 0.05).all() and 0 < len(kept) < len(frame)
    assert info["rejected"]["empty"] + info["rejected"]["under_labelled"] == len(frame) - len(kept)


def test_all_touched_burns_more(tmp_path):
    atlanta = need_data("buildings_atlanta")
    counts = []
    for extra in ([], ["--all-touched"]):
        out = tmp_path / f"p{len(extra)}"
        assert run("--image", atlanta / "sample_geotiff.tif", "--labels-vector", atlanta / "geotiff_labels.geojson",
                   "--burn-value", "1", "--layout", "pairs", "--tile-size", "128px", *extra, "--out", out) == 0
        frame, _ = read_manifest(out / "manifest.parquet")
        counts.append(sum(int(rasterio.open(out / p).read(1).sum()) for p in frame["label_path"]))
    assert counts[1] > counts[0]


def test_zion_raster_labels_make_pairs(tmp_path, zion, zion_images):
    out = tmp_path / "pairs"
    assert run("--image", *zion_images, "--labels", zion / "nlcd2011.tif", "--scheme", "nlcd-grouped",
               "--layout", "pairs", "--tile-size", "960m", "--aoi", zion / "zion.gpkg", "--out", out) == 0
    frame, _ = read_manifest(out / "manifest.parquet")
    row = frame.iloc[len(frame) // 2]
    with rasterio.open(out / row["label_path"]) as lab, rasterio.open(zion / "nlcd2011.tif") as nlcd:
        mask = lab.read(1)
        # the centre of pixel (5, 7), looked up in the native NLCD raster
        x, y = lab.xy(5, 7)
        from pyproj import Transformer

        lx, ly = Transformer.from_crs(lab.crs, nlcd.crs, always_xy=True).transform(x, y)
        code = int(nlcd.read(1)[nlcd.index(lx, ly)])
    groups = {11: 1, 12: 1, 21: 2, 22: 2, 23: 2, 24: 2, 31: 3, 41: 4, 42: 4, 43: 4, 52: 5, 71: 6, 81: 7, 82: 7,
              90: 8, 95: 8}
    assert mask[5, 7] == groups[code]
    assert row["label_id"] + 1 == np.bincount(mask.ravel()).argmax()


def test_points_give_tiles_centred_on_them(tmp_path):
    nc = need_data("landsat_nc")
    bands = [nc / f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
    out = tmp_path / "points"
    assert run("--image", *bands, "--labels-vector", nc / "landsat96_points.shp", "--burn-attribute", "label",
               "--tile-size", "5px", "--format", "tif", "--out", out) == 0
    frame, info = read_manifest(out / "manifest.parquet")
    points = gpd.read_file(nc / "landsat96_points.shp").to_crs(frame.crs)
    assert set(frame["label"]) <= set(points["label"]) and len(frame) > 600
    assert len(frame) + sum(info["rejected"].values()) == len(points)
    tree = shapely.STRtree(points.geometry.values)
    for _, row in frame.iterrows():
        centre = row.geometry.centroid
        nearest = points.iloc[tree.nearest(centre)]
        assert centre.distance(nearest.geometry) <= 28.5 / 2 * 2 ** 0.5 + 1e-6  # within half a pixel
        assert nearest["label"] == row["label"]
    with rasterio.open(out / frame["path"].iloc[0]) as chip:
        assert chip.shape == (5, 5) and chip.count == 6


def test_polygon_classes_from_an_attribute_with_a_scheme(tmp_path):
    nc = need_data("landsat_nc")
    polygons = gpd.read_file(nc / "landsat96_polygons.shp")
    field = "id" if "id" in polygons.columns else polygons.columns[0]
    out = tmp_path / "polys"
    assert run("--image", nc / "lsat7_2000_30.tif", "--labels-vector", nc / "landsat96_polygons.shp",
               "--burn-attribute", field, "--tile-size", "3px", "--format", "tif", "--out", out) == 0
    frame, _ = read_manifest(out / "manifest.parquet")
    assert len(frame) > 0
    polygons = polygons.to_crs(frame.crs)
    for _, row in frame.iterrows():
        holders = polygons[polygons.contains(row.geometry.centroid)]
        assert str(holders.iloc[-1][field]) == row["label"]


@pytest.fixture
def image():
    return need_data("buildings_atlanta", "sample_geotiff.tif")


def bad(capsys, tmp_path, *args) -> str:
    out = tmp_path / "out"
    assert main(["chips", "--quiet", "--tile-size", "64px", "--out", str(out), *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landcover: error: ") and "\n" not in err and not out.exists()
    return err


def test_vector_bad_input(capsys, tmp_path, image):
    footprints = need_data("buildings_atlanta", "geotiff_labels.geojson")
    layer = gpd.read_file(footprints)
    nocrs = tmp_path / "nocrs.shp"  # GeoJSON is WGS 84 by definition; a shapefile without .prj has no CRS
    layer.set_crs(None, allow_override=True).to_file(nocrs)
    assert "nocrs.shp: the layer has no CRS" in bad(capsys, tmp_path, "--image", image, "--labels-vector", nocrs,
                                                        "--burn-value", "1")
    assert "no attribute 'kind'" in bad(capsys, tmp_path, "--image", image, "--labels-vector", footprints,
                                        "--burn-attribute", "kind")
    empty = tmp_path / "empty.gpkg"
    layer.iloc[:0].to_file(empty)
    assert "empty.gpkg: the layer has no features" in bad(capsys, tmp_path, "--image", image, "--labels-vector",
                                                          empty, "--burn-value", "1")
    broken = tmp_path / "broken.geojson"
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    minx, miny, _, _ = layer.total_bounds
    shifted = shapely.affinity.translate(shapely.affinity.scale(bowtie, 5, 5, origin=(0, 0)), minx, miny)
    gpd.GeoDataFrame(geometry=[*layer.geometry, shifted], crs=layer.crs).to_file(broken)
    assert "broken.geojson: 1 invalid geometries" in bad(capsys, tmp_path, "--image", image, "--labels-vector",
                                                         broken, "--burn-value", "1", "--layout", "pairs",
                                                         "--strict")
    assert run("--image", image, "--labels-vector", broken, "--burn-value", "1", "--layout", "pairs",
               "--tile-size", "64px", "--out", tmp_path / "skipped") == 0
    assert "skipped 1 invalid geometries" in capsys.readouterr().err
    assert "--layout pairs writes GeoTIFF" in bad(capsys, tmp_path, "--image", image, "--labels-vector", footprints,
                                                  "--burn-value", "1", "--layout", "pairs", "--format", "png")
