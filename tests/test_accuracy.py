"""Map accuracy assessment: the area-adjusted estimators against Olofsson et al. (2014)'s worked example, and
`landcover evaluate MAP` against the North Carolina points and polygons, a reference raster, and bad input."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import need_data
from rasterio.features import rasterize
from sklearn.ensemble import RandomForestClassifier

from landcover.cli import main
from landcover.maps.accuracy import area_adjusted

# Olofsson et al. (2014), section 5: rows map class, columns reference class; strata sizes in 30 m pixels.
EXAMPLE = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
EXAMPLE_MAPPED = np.array([200_000, 150_000, 3_200_000, 6_450_000])


def test_area_adjusted_estimates_reproduce_the_worked_example():
    e = area_adjusted(EXAMPLE, EXAMPLE_MAPPED, 0.09, ["deforestation", "gain", "stable forest", "stable non-forest"])
    deforestation = e["classes"][0]
    # the paper's figures: 21,158 ha ± 6,158 ha of deforestation; user's 0.88, producer's 0.75, overall 0.95
    assert round(deforestation["estimated_ha"]) == 21158
    assert round(deforestation["estimated_ha_ci95"]) == 6158
    assert deforestation["users"] == pytest.approx(0.88)
    assert deforestation["producers"] == pytest.approx(0.75, abs=0.005)
    assert e["overall_accuracy"] == pytest.approx(0.95, abs=0.005)
    # by hand: p_ij = W_i n_ij / n_i.
    w = EXAMPLE_MAPPED / EXAMPLE_MAPPED.sum()
    n_i = EXAMPLE.sum(axis=1)
    p = w[:, None] * EXAMPLE / n_i[:, None]
    assert e["overall_accuracy"] == pytest.approx(np.trace(p))
    for j, row in enumerate(e["classes"]):
        assert row["estimated_share"] == pytest.approx(p[:, j].sum())
        assert row["producers"] == pytest.approx(p[j, j] / p[:, j].sum())
        se = np.sqrt(sum(w[i] ** 2 * (EXAMPLE[i, j] / n_i[i]) * (1 - EXAMPLE[i, j] / n_i[i]) / (n_i[i] - 1)
                         for i in range(4)))
        assert row["estimated_ha_ci95"] == pytest.approx(1.959964 * se * EXAMPLE_MAPPED.sum() * 0.09)
    se_overall = np.sqrt(sum(w[i] ** 2 * (EXAMPLE[i, i] / n_i[i]) * (1 - EXAMPLE[i, i] / n_i[i]) / (n_i[i] - 1)
                             for i in range(4)))
    assert e["overall_accuracy_ci95"] == pytest.approx(1.959964 * se_overall)


@pytest.fixture(scope="module")
def nc_map(tmp_path_factory):
    """A map of the North Carolina Landsat 7 scene from a per-pixel random forest trained on the 34 labelled
    polygons, written as a plain categorical GeoTIFF: class names only in its .aux.xml, as GIS tools write them."""
    nc = need_data("landsat_nc")
    bands = [nc / f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
    stack = []
    for path in bands:
        with rasterio.open(path) as src:
            stack.append(src.read(1).astype(np.float32))
            profile, transform, crs, nodata = src.profile, src.transform, src.crs, src.nodata
    pixels = np.stack(stack)
    valid = (pixels[0] != nodata) & np.isfinite(pixels).all(axis=0)
    polygons = gpd.read_file(nc / "landsat96_polygons.shp").to_crs(crs.to_wkt())
    names = sorted(polygons["label"].unique())
    burned = rasterize(zip(polygons.geometry, polygons["label"].map(names.index) + 1, strict=True),
                       out_shape=valid.shape, transform=transform, fill=0, dtype="int32")
    train = (burned > 0) & valid
    forest = RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=2)
    forest.fit(pixels[:, train].T, burned[train] - 1)
    classes = np.full(valid.shape, 255, np.uint8)
    classes[valid] = forest.predict(pixels[:, valid].T)
    out = tmp_path_factory.mktemp("ncmap") / "nc.tif"
    profile.update(dtype="uint8", count=1, nodata=255)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(classes, 1)
    items = "".join(f"<Category>{n}</Category>" for n in names)
    (out.parent / "nc.tif.aux.xml").write_text(f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{items}'
                                               "</CategoryNames></PAMRasterBand></PAMDataset>\n")
    return out, names, classes, transform, crs


def test_points_against_a_map_of_the_nc_scene(nc_map, tmp_path):
    path, names, classes, transform, crs = nc_map
    points = need_data("landsat_nc", "landsat96_points.shp")
    out = tmp_path / "acc"
    assert main(["evaluate", str(path), "--truth", str(points), "--truth-field", "label", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    accuracy = json.loads((out / "accuracy.json").read_text())
    # the same pairs computed here: each point's map pixel, its label
    frame = gpd.read_file(points).to_crs(crs.to_wkt())
    cols, rows = ~transform * (frame.geometry.x.values, frame.geometry.y.values)
    rows, cols = np.floor(rows).astype(int), np.floor(cols).astype(int)
    inside = (rows >= 0) & (rows < classes.shape[0]) & (cols >= 0) & (cols < classes.shape[1])
    mapped = classes[rows[inside], cols[inside]]
    labels = frame["label"].values[inside]
    keep = mapped != 255
    all_names = report["confusion"]["classes"]
    assert all_names[:len(names)] == names  # the map's classes first, then reference classes the map lacks
    assert report["n_samples"] == int(keep.sum()) > 800  # 885: the rest fall on the scene's nodata
    assert accuracy["reference_points_outside_map"] == int((~inside).sum())
    hits = sum(all_names[m] == lab for m, lab in zip(mapped[keep], labels[keep], strict=True))
    assert report["accuracy"] == pytest.approx(hits / keep.sum())
    # area-adjusted estimates from the map's own class areas
    counts = np.array(report["confusion"]["counts"]).T  # rows: map class
    mapped_px = np.bincount(classes[classes != 255], minlength=len(all_names))
    expected = area_adjusted(counts, mapped_px, 28.5 ** 2 / 1e4, all_names)
    assert accuracy["overall_accuracy"] == pytest.approx(expected["overall_accuracy"])
    assert sum(r["estimated_share"] or 0 for r in accuracy["classes"]) == pytest.approx(1.0)
    print(f"NC map against 1,000 points: accuracy {report['accuracy']:.3f}, area-adjusted "
          f"{accuracy['overall_accuracy']:.3f} ± {accuracy['overall_accuracy_ci95']:.3f}")
    assert (out / "confusion.png").stat().st_size > 0 and (out / "areas.png").stat().st_size > 0


def test_polygons_and_rasters_as_reference(nc_map, tmp_path):
    path, _, classes, transform, crs = nc_map
    polygons = need_data("landsat_nc", "landsat96_polygons.shp")
    assert main(["evaluate", str(path), "--truth", str(polygons), "--truth-field", "label", "--out",
                 str(tmp_path / "poly")]) == 0
    report = json.loads((tmp_path / "poly" / "report.json").read_text())
    frame = gpd.read_file(polygons).to_crs(crs.to_wkt())
    covered = rasterize(frame.geometry, out_shape=classes.shape, transform=transform, fill=0, default_value=1)
    # the vectors' datum (NAD83(HARN)) differs from the rasters': transformation pipelines may place edges ~1 m apart
    assert report["n_samples"] == pytest.approx(int(((covered > 0) & (classes != 255)).sum()), rel=0.01)
    assert report["accuracy"] > 0.9  # the forest was trained on these pixels
    # a map against itself, as a raster reference with its own class names: everything agrees
    assert main(["evaluate", str(path), "--truth", str(path), "--out", str(tmp_path / "self")]) == 0
    same = json.loads((tmp_path / "self" / "report.json").read_text())
    assert same["accuracy"] == 1.0 and same["kappa"] == pytest.approx(1.0)
    assert same["n_samples"] == int((classes != 255).sum())


def test_bad_input_is_one_line(nc_map, zion_images, tmp_path, capsys):
    path = nc_map[0]
    points = need_data("landsat_nc", "landsat96_points.shp")
    zion_points = tmp_path / "far.gpkg"
    frame = gpd.read_file(points)
    frame.to_file(zion_points)
    cases = (([zion_images[0], "--truth", str(path)], "has no class names"),
             ([str(path), "--truth", str(points)], "need --truth-field"),
             ([str(path), "--truth", str(points), "--truth-field", "nope"], "no attribute 'nope'"),
             ([str(path)], "needs --truth"))
    for argv, message in cases:
        assert main(["evaluate", *argv, "--out", str(tmp_path / "x")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    zion_map = tmp_path / "zion.tif"
    with rasterio.open(zion_images[0]) as src:
        profile = src.profile
        profile.update(dtype="uint8", nodata=255)
        with rasterio.open(zion_map, "w", **profile) as dst:
            dst.write(np.zeros((1, src.height, src.width), np.uint8))
    (tmp_path / "zion.tif.aux.xml").write_text('<PAMDataset><PAMRasterBand band="1"><CategoryNames><Category>forest'
                                               "</Category></CategoryNames></PAMRasterBand></PAMDataset>\n")
    assert main(["evaluate", str(zion_map), "--truth", str(zion_points), "--truth-field", "label", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "all 1000 reference points lie outside the map" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
