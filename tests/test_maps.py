"""Class-map figures and agreement with a reference, on Zion (NLCD + Landsat 8) and NAIP North Dakota."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import need_data
from PIL import Image
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from landcover.cli.maps import add_parsers
from landcover.errors import LandcoverError
from landcover.maps.classmap import ClassMap, write_class_map
from landcover.maps.figures import (
    DPI,
    MapWarning,
    compare_to_truth,
    figure_size,
    legend_entries,
    render_map,
    scale_bar_length,
    truth_on_grid,
)
from landcover.schemes import load_scheme

SCHEME = load_scheme("nlcd-grouped")
CLASSES = [{"id": c.id, "name": c.name, "color": c.color} for c in SCHEME.classes]
NAMES = [c.name for c in SCHEME.classes]


def nlcd_grouped() -> tuple[np.ndarray, Affine, rasterio.crs.CRS]:
    """Zion's NLCD 2011 as nlcd-grouped class ids on its own grid."""
    with rasterio.open(need_data("zion", "nlcd2011.tif")) as src:
        return SCHEME.lookup()[src.read(1)], src.transform, src.crs


def landsat() -> list[str]:
    return [str(need_data("zion", f"landsat_b{b}.tif")) for b in (2, 3, 4, 5)]


def png(path: Path) -> tuple[tuple[int, int], dict]:
    """A PNG's size in pixels and the JSON the figure records in its Description."""
    with Image.open(path) as image:
        return image.size, json.loads(image.text["Description"])


def expected_size(cm: ClassMap, panels: int) -> tuple[int, int]:
    width, height = figure_size(cm, panels)
    return round(width * DPI), round(height * DPI)


@pytest.fixture(scope="module")
def zion_crop(tmp_path_factory) -> tuple[Path, ClassMap]:
    """A 300 x 300 cell NLCD window as a class map that records the Landsat scene (bands 4 3 2 as RGB)."""
    ids, transform, crs = nlcd_grouped()
    window = Window(500, 600, 300, 300)
    cm = ClassMap(ids[600:900, 500:800].copy(), rasterio.windows.transform(window, transform), crs, CLASSES,
                  {"LANDCOVER_IMAGES": json.dumps(landsat()), "LANDCOVER_BANDS": "[3, 2, 1]"})
    path = tmp_path_factory.mktemp("zion") / "zion_map.tif"
    write_class_map(cm, path)
    return path, cm


def test_compare_to_itself_on_its_grid_and_perturbed(tmp_path):
    ids, transform, crs = nlcd_grouped()
    write_class_map(ClassMap(ids, transform, crs, CLASSES), tmp_path / "same.tif")
    stats = compare_to_truth(tmp_path / "same.tif", need_data("zion", "nlcd2011.tif"), "nlcd-grouped")
    assert stats["agreement"] == 1.0 and stats["n_cells"] == ids.size and stats["n_other"] == 0
    counts = np.bincount(ids.ravel(), minlength=8)
    assert {n: s["truth"] for n, s in stats["classes"].items()} == dict(zip(NAMES, counts.tolist(), strict=True))

    # change a band of rows to Forest and blank another: agreement computed independently over cells valid in both
    edited = ids.copy()
    edited[100:400] = 3
    edited[900:1000] = 255
    write_class_map(ClassMap(edited, transform, crs, CLASSES), tmp_path / "edited.tif")
    stats = compare_to_truth(tmp_path / "edited.tif", need_data("zion", "nlcd2011.tif"), "nlcd-grouped")
    valid = edited != 255
    assert stats["n_cells"] == valid.sum()
    assert stats["agreement"] == (edited[valid] == ids[valid]).sum() / valid.sum()
    forest = stats["classes"]["Forest"]
    assert forest["map"] == (edited == 3).sum() and forest["agree"] == ((edited == 3) & (ids == 3)).sum()


def test_truth_resampled_by_majority_onto_a_coarser_grid(tmp_path):
    ids, transform, crs = nlcd_grouped()
    h, w = (ids.shape[0] // 3) * 3, (ids.shape[1] // 3) * 3
    blocks = ids[:h, :w].reshape(h // 3, 3, w // 3, 3).transpose(0, 2, 1, 3).reshape(h // 3, w // 3, 9)
    counts = np.stack([(blocks == k).sum(axis=2) for k in range(8)], axis=-1)
    majority = counts.argmax(axis=-1).astype(np.uint8)
    untied = (counts == counts.max(axis=-1, keepdims=True)).sum(axis=-1) == 1
    cm = ClassMap(majority, transform * Affine.scale(3), crs, CLASSES)
    ref = truth_on_grid(cm, need_data("zion", "nlcd2011.tif"), "nlcd-grouped")
    assert np.array_equal(ref[untied], majority[untied])  # GDAL's mode is the majority of the 3 x 3 block
    assert untied.mean() > 0.8
    stats = compare_to_truth(cm, need_data("zion", "nlcd2011.tif"), "nlcd-grouped")
    assert stats["agreement"] >= untied.mean() and stats["n_cells"] == majority.size


def test_render_with_truth_in_another_crs(zion_crop, tmp_path):
    path, cm = zion_crop
    albers = need_data("zion", "nlcd2011_albers.tif")
    out = render_map(path, tmp_path / "compare.png", truth=str(albers), scheme="nlcd-grouped", title="Zion")
    size, info = png(out)
    assert size == expected_size(cm, 3)
    stats = compare_to_truth(path, albers, "nlcd-grouped")
    assert info["agreement"] == stats
    assert 0.8 < stats["agreement"] < 1.0  # the Albers copy was resampled once to another grid and back
    assert info["imagery"] == landsat()


def test_render_over_recorded_imagery(tmp_path):
    # a two-class NAIP map (NDVI > 0.25 on 30 m cells) recording its 4-band image: RGB from bands 1 2 3
    image = next(need_data("naip_nd").glob("*_2012*.tif"))
    transform = Affine(30, 0, 485910, 0, -30, 5209230)
    with rasterio.open(image) as src:
        bands = src.read([1, 4]).astype(np.float32)
        ndvi = (bands[1] - bands[0]) / np.maximum(bands[1] + bands[0], 1)
        mean = np.zeros((119, 155), dtype=np.float32)
        reproject(ndvi, mean, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=src.crs, resampling=Resampling.average)
        crs = src.crs
    data = (mean > 0.25).astype(np.uint8)
    data[:10] = 255
    classes = [{"id": 0, "name": "Other", "color": "#b3ac9f"}, {"id": 1, "name": "Vegetation", "color": "#1c5f2c"},
               {"id": 2, "name": "Water", "color": "#466b9f"}]
    cm = ClassMap(data, transform, crs, classes, {"LANDCOVER_IMAGES": json.dumps([str(image)])})
    write_class_map(cm, tmp_path / "naip.tif")
    out = render_map(tmp_path / "naip.tif", tmp_path / "sub" / "naip.png")
    size, info = png(out)
    assert size == expected_size(cm, 1) == (975, round(figure_size(cm)[1] * DPI))
    assert info["imagery"] == [str(image)]
    legend = [e["name"] for e in info["legend"]]
    assert legend == ["Other", "Vegetation"]  # the classes present; Water is not
    veg = (data == 1).sum() / (data != 255).sum()
    assert info["legend"][1]["share"] == pytest.approx(100 * veg)
    assert legend_entries(data, classes) == [(n["name"], c["color"], n["share"])
                                             for n, c in zip(info["legend"], classes, strict=False)]
    with Image.open(out) as figure:  # the map area is imagery under colour, not flat class colours
        pixels = np.asarray(figure.convert("RGB"))[100:500, 100:600].reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1000


def test_missing_imagery_draws_the_map_alone(zion_crop, tmp_path):
    path, cm = zion_crop
    moved = ClassMap(cm.data, cm.transform, cm.crs, CLASSES, {"LANDCOVER_IMAGES": json.dumps(["/nowhere/x.tif"])})
    write_class_map(moved, tmp_path / "moved.tif")
    with pytest.warns(MapWarning, match="not found: drawing the class map alone"):
        out = render_map(tmp_path / "moved.tif", tmp_path / "moved.png")
    size, info = png(out)
    assert info["imagery"] is None and size == expected_size(cm, 1)
    write_class_map(ClassMap(cm.data, cm.transform, cm.crs, CLASSES), tmp_path / "bare.tif")
    with pytest.warns(MapWarning, match="no imagery recorded"):
        render_map(tmp_path / "bare.tif", tmp_path / "bare.png")
    # imagery given explicitly overrides the recorded one; bad explicit input is an error, not a warning
    out = render_map(tmp_path / "moved.tif", tmp_path / "grey.png", image=landsat()[3:], alpha=0.3)
    assert png(out)[1]["imagery"] == landsat()[3:]
    with pytest.raises(LandcoverError, match="1 band"):
        render_map(path, tmp_path / "x.png", image=landsat(), bands=[1, 2])
    with pytest.raises(LandcoverError, match="no such file"):
        render_map(path, tmp_path / "x.png", image=["/nowhere/x.tif"])


def test_refusals(zion_crop, tmp_path):
    path, _ = zion_crop
    truth = str(need_data("zion", "nlcd2011.tif"))
    with pytest.raises(LandcoverError, match="needs a scheme"):
        render_map(path, tmp_path / "x.png", truth=truth)
    scheme = tmp_path / "other.yaml"
    scheme.write_text("classes:\n  - {codes: [41, 42, 43], name: Trees}\n")
    with pytest.raises(LandcoverError, match="matched by name"):
        compare_to_truth(path, truth, str(scheme))
    with pytest.raises(LandcoverError, match="not a landcover class map"):
        render_map(truth, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_scale_bar_lengths():
    assert scale_bar_length(4650) == 500
    assert scale_bar_length(33_800) == 5000
    assert scale_bar_length(123) == 20
    assert scale_bar_length(1000) == 200


def test_cli_map(zion_crop, tmp_path, capsys):
    path, _ = zion_crop
    parser = argparse.ArgumentParser(prog="landcover")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["map", str(path), "--out", str(tmp_path / "m.png"), "--truth",
                              str(need_data("zion", "nlcd2011.tif")), "--scheme", "nlcd-grouped"])
    args.run(args)
    printed = capsys.readouterr().out
    assert "agreement: 100.0% of 90,000 cells" in printed and (tmp_path / "m.png").exists()
    bare = tmp_path / "bare.tif"
    write_class_map(ClassMap(zion_crop[1].data, zion_crop[1].transform, zion_crop[1].crs, CLASSES), bare)
    args = parser.parse_args(["map", str(bare), "--out", str(tmp_path / "b.png")])
    args.run(args)
    assert capsys.readouterr().err.startswith("warning: ")
