"""Class schemes, grid keys and rules, on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.crs import CRS

from landcover.chips.rules import Rules, judge
from landcover.errors import LandcoverError
from landcover.geo.grid import Grid, parse_length, to_pixels
from landcover.schemes import INVALID, builtin_schemes, load_scheme


def test_builtin_nlcd_schemes():
    assert {"nlcd", "nlcd-grouped"} <= set(builtin_schemes())
    nlcd = load_scheme("nlcd")
    conus = {11, 12, 21, 22, 23, 24, 31, 41, 42, 43, 52, 71, 81, 82, 90, 95}
    assert conus <= {c.codes[0] for c in nlcd.classes} and all(c.color.startswith("#") for c in nlcd.classes)
    grouped = load_scheme("nlcd-grouped")
    lut = grouped.lookup()
    names = {c.name: c for c in grouped.classes}
    assert len(names) == 8
    assert {int(lut[code]) for code in (21, 22, 23, 24)} == {names["Developed"].id}
    assert {int(lut[code]) for code in (41, 42, 43)} == {names["Forest"].id}
    assert {int(lut[code]) for code in (90, 95)} == {names["Wetlands"].id}
    assert lut[0] == INVALID and 0 in grouped.ignore


def test_user_scheme_file_and_its_errors(tmp_path):
    good = tmp_path / "two.json"
    good.write_text('{"name": "two", "classes": [{"name": "Tree", "codes": [1, 2]}, {"name": "Other", "code": 3}]}')
    scheme = load_scheme(good)
    assert [c.name for c in scheme.classes] == ["Tree", "Other"] and scheme.lookup()[2] == 0
    clash = tmp_path / "clash.yaml"
    clash.write_text("classes:\n  - {name: A, codes: [1]}\n  - {name: B, codes: [1]}\n")
    with pytest.raises(LandcoverError, match="code 1 is in both 'A' and 'B'"):
        load_scheme(clash)


def test_lengths():
    assert parse_length("480m") == (480.0, "m") and parse_length("16px") == (16.0, "px")
    assert parse_length("0") == (0.0, "px")
    with pytest.raises(LandcoverError, match=r"tile size '480' has no unit: write 480m \(metres\) or 480px"):
        parse_length("480", "tile size")
    assert to_pixels((480, "m"), 30, "tile") == 16
    with pytest.raises(LandcoverError, match="smaller than one pixel"):
        to_pixels((10, "m"), 30, "tile")
    with pytest.raises(LandcoverError, match="not a length"):
        parse_length("big")


def test_grid_keys_and_tiles():
    grid = Grid(CRS.from_epsg(32612), 30.0, 16, 16, 2, 300000.0, 4150000.0)
    x, y = grid.origin(1, 2)
    assert grid.key(x, y) == "s16-r30-p2-x300480-y4149040"
    assert grid.chip == 20
    t = grid.chip_transform(x, y)
    assert (t.c, t.f) == (300480.0 - 60, 4149040.0 + 60)
    xs, ys = grid.tiles_covering((300000.0 - 60, 4150000.0 - 480 * 3 - 60, 300000.0 + 480 * 2 + 60, 4150000.0 + 60))
    assert sorted(zip(xs, ys, strict=True)) == sorted(grid.origin(c, r) for c in range(2) for r in range(3))
    box = grid.chip_boxes(np.array([300000.0]), np.array([4150000.0]))[0]
    assert box.bounds == (299940.0, 4149460.0, 300540.0, 4150060.0)
    cx, cy = grid.centred_on(np.array([300250.0]), np.array([4149750.0]))
    assert (cx[0], cy[0]) == (300000.0, 4150000.0)  # 240 m up-left of the point, snapped to the 30 m lattice


def test_rules_points_purity_nodata_keep():
    core = np.full((4, 4), 2, np.uint8)
    core[0, 0] = 5
    rules = Rules.parse(["points:2"])
    assert judge(rules, "k", core, np.array([2, 2, 2, 2], np.uint8), 0).reason is None
    assert judge(rules, "k", core, np.array([2, 5, 2, 2], np.uint8), 0).reason == "points_disagree"
    assert judge(rules, "k", core, np.full(4, INVALID, np.uint8), 0).reason == "unlabelled"
    assert judge(rules, "k", core, np.array([2, 2, 2, 2], np.uint8), 1).reason == "nodata"
    purity = Rules.parse(["purity:0.95"])
    verdict = judge(purity, "k", core, None, 0)
    assert verdict.reason == "impure" and verdict.purity == pytest.approx(15 / 16)
    assert judge(Rules.parse(["purity:0.9"]), "k", core, None, 0).label_id == 2
    both = Rules.parse(["points:2", "purity:0.9"])
    assert judge(both, "k", core, np.array([5, 5, 5, 5], np.uint8), 0).reason == "rules_disagree"
    keep = Rules.parse(["purity:0"], keep=0.25, seed=7)
    kept = [keep.sampled(f"tile{i}") for i in range(4000)]
    assert 0.22 < np.mean(kept) < 0.28 and kept == [keep.sampled(f"tile{i}") for i in range(4000)]
    assert kept != [Rules.parse(["purity:0"], keep=0.25, seed=8).sampled(f"tile{i}") for i in range(4000)]
    for bad in (["points:x"], ["purity:1.5"], ["nearest:3"]):
        with pytest.raises(LandcoverError):
            Rules.parse(bad)


def test_engine_of_takes_names_with_worker_counts():
    from landcover.engine import Engine

    assert Engine.of(None) == Engine() and Engine.of("process:2") == Engine("process", 2)
    assert Engine.of("ray") == Engine("ray", 1) and Engine.of(Engine("ray", 3)) == Engine("ray", 3)
    for bad in ("process:two", "spark", "process:0"):
        with pytest.raises(LandcoverError):
            Engine.of(bad)


def test_scene_paths_reads_one_file_one_stack_or_several_scenes():
    from landcover.chips.make import scene_paths

    assert scene_paths("a.tif") == [["a.tif"]]
    assert scene_paths(["b2.tif", "b3.tif"]) == [["b2.tif", "b3.tif"]]
    assert scene_paths([["a1.tif", "a2.tif"], "b.tif"]) == [["a1.tif", "a2.tif"], ["b.tif"]]
    with pytest.raises(LandcoverError):
        scene_paths([])
