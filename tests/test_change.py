"""Change between class maps made from the real NAIP North Dakota time series (NDVI classes on 30 m cells)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from xml.etree import ElementTree

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from conftest import need_data
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject
from scipy import ndimage

from landcover.cli.maps import add_parsers
from landcover.errors import LandcoverError
from landcover.maps.change import detect_change
from landcover.maps.classmap import ClassMap, read_class_map, read_probabilities, write_class_map, write_probabilities

CLASSES = [{"id": 0, "name": "Water", "color": "#466b9f"}, {"id": 1, "name": "Bare", "color": "#b3ac9f"},
           {"id": 2, "name": "Vegetation", "color": "#1c5f2c"}]
GRID = (Affine(30, 0, 485910, 0, -30, 5209230), 155, 119)
"""A 30 m grid inside every year's NAIP footprint (the years' 5 m grids are offset from each other by up to 3 m)."""
UTM14 = CRS.from_epsg(26914)


def naip(year: int) -> Path:
    """The NAIP quarter-quad of one year."""
    return next(need_data("naip_nd").glob(f"*_{year}*.tif"))


def naip_map(year: int, out: Path, grid=GRID, crs: CRS = UTM14, probs: bool = True,
             classes: list[dict] = CLASSES) -> ClassMap:
    """A class map of one NAIP year: mean NDVI per cell, softmax of Water (< -0.1) / Bare / Vegetation (> 0.25)."""
    transform, width, height = grid
    with rasterio.open(naip(year)) as src:
        bands = src.read().astype(np.float32)
        ndvi = (bands[3] - bands[0]) / np.maximum(bands[3] + bands[0], 1)
        mean = np.full((height, width), np.nan, dtype=np.float32)
        reproject(ndvi, mean, src_transform=src.transform, src_crs=src.crs, dst_transform=transform, dst_crs=crs,
                  dst_nodata=np.nan, resampling=Resampling.average)
    valid = ~np.isnan(mean)
    z = np.nan_to_num(mean)
    logits = np.stack([(-0.1 - z) / 0.05, np.zeros_like(z), (z - 0.25) / 0.05])
    p = np.exp(logits - logits.max(axis=0))
    p /= p.sum(axis=0)
    tags = {"LANDCOVER_IMAGES": json.dumps([str(naip(year))])}
    if probs:
        write_probabilities(out.with_suffix(".probs.tif"), p, valid, transform, crs, classes)
        tags["LANDCOVER_PROBABILITIES"] = out.with_suffix(".probs.tif").name
    cm = ClassMap(np.where(valid, p.argmax(axis=0), 255).astype(np.uint8), transform, crs, classes, tags)
    write_class_map(cm, out)
    return cm


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, ClassMap, ClassMap]:
    folder = tmp_path_factory.mktemp("naip_maps")
    b, a = naip_map(2009, folder / "m2009.tif"), naip_map(2017, folder / "m2017.tif")
    return folder / "m2009.tif", folder / "m2017.tif", b, a


def decode(change: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(from, to) class ids of change cells."""
    return (change.astype(int) - 1) // n, (change.astype(int) - 1) % n


def test_transitions_raster_and_candidates(pair, tmp_path):
    before, after, b, a = pair
    result = detect_change(before, after, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(result.files)
    assert not list(tmp_path.glob(".out*"))  # the temporary folder was renamed, nothing left beside it

    # transitions.csv: cross-tabulated cell counts x the cell area, totals, summing to the area valid in both
    valid = (b.data != 255) & (a.data != 255)
    counts = np.zeros((3, 3), dtype=np.int64)
    np.add.at(counts, (b.data[valid], a.data[valid]), 1)
    cell_ha = 30 * 30 / 10_000
    table = pd.read_csv(out / "transitions.csv", index_col=0)
    names = [c["name"] for c in CLASSES]
    assert list(table.index) == [*names, "total"] and list(table.columns) == [*names, "total"]
    assert np.array_equal(table.loc[names, names].to_numpy(), counts * cell_ha)
    assert table.loc["total", "total"] == valid.sum() * cell_ha
    assert np.array_equal(table.loc[names, "total"].to_numpy(), counts.sum(axis=1) * cell_ha)
    assert counts.sum() - np.trace(counts) > 1000  # real change between 2009 and 2017
    assert result.changed_ha == (counts.sum() - np.trace(counts)) * cell_ha

    # change.tif decodes back to (before, after) in every cell; its categories name the transitions
    with rasterio.open(out / "change.tif") as src:
        change = src.read(1)
        assert src.transform == b.transform and src.nodata == 255
        colormap = src.colormap(1)
    frm, to = decode(change, 3)
    moved = (change != 0) & (change != 255)
    assert np.array_equal(change == 255, ~valid)
    assert np.array_equal(change == 0, valid & (b.data == a.data))
    assert np.array_equal(frm[moved], b.data[moved]) and np.array_equal(to[moved], a.data[moved])
    assert colormap[1 * 3 + 2 + 1][:3] == (0x1C, 0x5F, 0x2C)  # Bare -> Vegetation in Vegetation's colour
    categories = [c.text or "" for c in ElementTree.parse(out / "change.tif.aux.xml").iter("Category")]
    assert categories[0] == "unchanged" and categories[1 * 3 + 2 + 1] == "Bare -> Vegetation"

    # candidates: per transition their areas add up to the matrix; polygons cover exactly their cells
    gpkg = gpd.read_file(out / "candidates.gpkg")
    assert gpkg.crs == UTM14 and len(gpkg) == len(result.candidates) > 10
    for (f, t), group in gpkg.groupby(["from", "to"]):
        assert group["cells"].sum() == counts[names.index(f), names.index(t)]
        assert group["area_ha"].sum() == pytest.approx(counts[names.index(f), names.index(t)] * cell_ha)
    np.testing.assert_allclose(gpkg.geometry.area, gpkg["cells"] * 900.0, rtol=1e-9)
    assert list(gpkg["rank"]) == list(range(1, len(gpkg) + 1))
    assert (np.diff(gpkg["confidence"].to_numpy()) <= 0).all()

    # the best candidate's confidence: mean of p_after(to) * p_before(from) over its cells, computed here
    top = gpkg.iloc[0]
    cells = rasterize([top.geometry], out_shape=b.data.shape, transform=b.transform).astype(bool)
    assert cells.sum() == top["cells"]
    pb, _ = read_probabilities(before.with_suffix(".probs.tif"))
    pa, _ = read_probabilities(after.with_suffix(".probs.tif"))
    f, t = names.index(top["from"]), names.index(top["to"])
    assert np.all(b.data[cells] == f) and np.all(a.data[cells] == t)
    assert top["confidence"] == pytest.approx(float((pa[t][cells] * pb[f][cells]).mean()), rel=1e-5)

    # candidates.geojson: RFC 7946 (WGS84 lon/lat, no crs member), the same features in the same order
    geojson = json.loads((out / "candidates.geojson").read_text())
    assert "crs" not in geojson and len(geojson["features"]) == len(gpkg)
    first = geojson["features"][0]
    assert first["properties"] == {"rank": 1, "from": top["from"], "to": top["to"], "area_ha": top["area_ha"],
                                   "cells": top["cells"], "confidence": pytest.approx(top["confidence"])}
    lon, lat = np.array(first["geometry"]["coordinates"][0]).T
    assert ((lon > -99.3) & (lon < -99.0) & (lat > 46.9) & (lat < 47.1)).all()
    wgs84 = gpd.read_file(out / "candidates.geojson")
    assert wgs84.to_crs(UTM14).geometry.area.sum() == pytest.approx(gpkg.geometry.area.sum(), rel=1e-4)

    report = json.loads((out / "change.json").read_text())
    assert report["candidates"]["ranking"] == "confidence" and report["candidates"]["fallback"] is None
    assert report["resampled"] is None and report["cell_area_ha"] == cell_ha
    assert report["totals"]["changed_ha"] == result.changed_ha
    assert report["transitions_ha"]["Bare -> Vegetation"] == counts[1, 2] * cell_ha
    with Image.open(out / "change.png") as png:
        assert png.width > 800
    assert "changed:" in result.summary() and "Bare -> Vegetation" in result.summary()


def test_from_to_filters_and_min_cells(pair, tmp_path):
    before, after, b, a = pair
    result = detect_change(before, after, tmp_path / "out", to_classes=["water"], from_classes=["Bare"],
                           min_cells=4, progress=False)
    frame = result.candidates
    assert set(zip(frame["from"], frame["to"], strict=True)) == {("Bare", "Water")}
    lab, _ = ndimage.label((b.data == 1) & (a.data == 0), structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    assert len(frame) == (sizes >= 4).sum() and frame["cells"].sum() == sizes[sizes >= 4].sum()
    assert sizes[sizes < 4].sum() > 0  # some were dropped, and the report says how many
    report = json.loads((tmp_path / "out" / "change.json").read_text())
    assert report["candidates"]["dropped_below_min_cells"] == {"components": int((sizes < 4).sum()),
                                                               "cells": int(sizes[sizes < 4].sum())}
    assert report["settings"] == {"to_classes": ["water"], "from_classes": ["Bare"], "min_cells": 4}


def test_after_on_another_grid_is_resampled(pair, tmp_path, capsys):
    before, _, b, _ = pair
    # a coarser 60 m grid with the same origin, without probabilities: cell (r, c) lies in coarse (r // 2, c // 2)
    coarse = naip_map(2020, tmp_path / "m2020_60m.tif", grid=(Affine(60, 0, 485910, 0, -60, 5209230), 78, 60),
                      probs=False)
    result = detect_change(before, tmp_path / "m2020_60m.tif", tmp_path / "out", progress=True)
    assert "resampled (nearest)" in capsys.readouterr().err and result.resampled
    rows, cols = np.indices(b.data.shape)
    expected = coarse.data[np.minimum(rows // 2, 59), np.minimum(cols // 2, 77)]
    expected[rows // 2 >= 60] = 255
    with rasterio.open(tmp_path / "out" / "change.tif") as src:
        change = src.read(1)
    to = decode(change, 3)[1]
    same = change == 0
    moved = (change != 0) & (change != 255)
    assert np.array_equal(to[moved], expected[moved]) and np.array_equal(b.data[same], expected[same])
    assert np.array_equal(change == 255, (b.data == 255) | (expected == 255))
    report = json.loads((tmp_path / "out" / "change.json").read_text())
    assert report["candidates"]["ranking"] == "area" and "records no probabilities" in report["candidates"]["fallback"]
    assert report["candidates"]["confidence"] is None and "resampled" in report["resampled"]
    assert result.candidates["confidence"].isna().all()
    assert (np.diff(result.candidates["cells"].to_numpy()) <= 0).all()  # ranked by area

    # another CRS (WGS84 UTM 14N, about a metre from NAD83's): resampled onto before's grid it is nearly the
    # 2020 map made on before's grid; areas add up to the area valid in both maps
    other = tmp_path / "m2020_wgs84.tif"
    naip_map(2020, other, grid=(Affine(30, 0, 485880, 0, -30, 5209260), 157, 121), crs=CRS.from_epsg(32614))
    same_grid = naip_map(2020, tmp_path / "m2020.tif", probs=False).data
    result = detect_change(before, other, tmp_path / "out2", progress=False)
    assert "EPSG:32614" in result.resampled and result.ranking == "confidence"
    assert result.hectares.to_numpy().sum() == pytest.approx(result.changed_ha + result.unchanged_ha)
    with rasterio.open(tmp_path / "out2" / "change.tif") as src:
        change = src.read(1)
    to = np.where(change == 0, b.data, decode(change, 3)[1])
    assert (to == same_grid).mean() > 0.9


def test_identical_maps_give_no_change(pair, tmp_path):
    before, _, b, _ = pair
    result = detect_change(before, before, tmp_path / "out", progress=False)
    assert result.changed_ha == 0 and len(result.candidates) == 0
    assert result.unchanged_ha == pytest.approx((b.data != 255).sum() * 0.09)
    with rasterio.open(tmp_path / "out" / "change.tif") as src:
        assert set(np.unique(src.read(1))) <= {0, 255}
    assert json.loads((tmp_path / "out" / "candidates.geojson").read_text())["features"] == []
    assert len(gpd.read_file(tmp_path / "out" / "candidates.gpkg")) == 0


def test_refusals(pair, tmp_path):
    before, after, b, _ = pair
    renamed = [dict(c, name="Crops") if c["name"] == "Vegetation" else c for c in CLASSES]
    write_class_map(ClassMap(b.data, b.transform, b.crs, renamed), tmp_path / "renamed.tif")
    with pytest.raises(LandcoverError, match="same classes") as info:
        detect_change(before, tmp_path / "renamed.tif", tmp_path / "out", progress=False)
    assert info.value.path == str(tmp_path / "renamed.tif")
    with pytest.raises(LandcoverError, match="no such file"):
        detect_change(before, tmp_path / "missing.tif", tmp_path / "out", progress=False)
    with pytest.raises(LandcoverError, match="unknown class 'Forest'"):
        detect_change(before, after, tmp_path / "out", to_classes=["Forest"], progress=False)
    assert not (tmp_path / "out").exists()

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier results")
    with pytest.raises(LandcoverError, match="not empty"):
        detect_change(before, after, out, progress=False)
    assert (out / "old.txt").exists()
    detect_change(before, after, out, overwrite=True, progress=False)
    assert not (out / "old.txt").exists() and (out / "change.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_change(pair, tmp_path, capsys):
    before, after, _, _ = pair
    parser = argparse.ArgumentParser(prog="landcover")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["change", str(before), str(after), "--out", str(tmp_path / "out"), "--to",
                              "Vegetation", "--min-cells", "2", "--quiet"])
    args.run(args)
    printed = capsys.readouterr().out
    assert "changed:" in printed and "candidates:" in printed
    assert set(read_class_map(before).names) == {"Water", "Bare", "Vegetation"}
    frame = gpd.read_file(tmp_path / "out" / "candidates.gpkg")
    assert set(frame["to"]) == {"Vegetation"} and frame["cells"].min() >= 2


def test_full_nlcd_classes_need_a_wide_change_raster(tmp_path):
    """Full NLCD (20 classes with Alaska's): codes up to 401 do not fit a byte, so change.tif is uint16 (nodata 65535).
    Before: Zion's NLCD 2011 on its own UTM grid; after: the Albers copy, resampled onto it (real disagreement)."""
    from landcover.schemes import load_scheme

    zion = need_data("zion")
    scheme = load_scheme("nlcd")
    classes = [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(scheme.classes)]
    assert len(classes) == 20
    maps = []
    for name in ("nlcd2011.tif", "nlcd2011_albers.tif"):
        with rasterio.open(zion / name) as src:
            ids = scheme.lookup()[src.read(1)]
            ids = np.where(ids < len(classes), ids, 255).astype(np.uint8)
            maps.append(ClassMap(ids, src.transform, src.crs, classes))
            write_class_map(maps[-1], tmp_path / name)
    result = detect_change(tmp_path / "nlcd2011.tif", tmp_path / "nlcd2011_albers.tif", tmp_path / "out",
                           min_cells=4, progress=False)
    with rasterio.open(tmp_path / "out" / "change.tif") as src:
        change = src.read(1)
        assert src.dtypes[0] == "uint16" and src.nodata == 65535
    b = maps[0].data
    moved = (change != 0) & (change != 65535)
    frm, to = decode(change, 20)
    assert moved.sum() > 1000 and np.array_equal(frm[moved], b[moved]) and (frm[moved] != to[moved]).all()
    assert result.changed_ha == pytest.approx(moved.sum() * maps[0].cell_area / 1e4)
    assert (tmp_path / "out" / "change.png").exists()
