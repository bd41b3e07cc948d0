"""The README's Python API block, run exactly as it stands, from a folder beside shared/ as a user would."""

from __future__ import annotations

import json
import re

import pytest
import rasterio
from conftest import ROOT, need_data

from landcover.manifest import read_manifest


def readme_api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_api_goes_from_rasters_to_a_class_map(tmp_path, monkeypatch, capsys):
    data = need_data("zion").parent
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    exec(compile(readme_api_block(), str(ROOT / "README.md"), "exec"), {"__name__": "readme"})

    frame, info = read_manifest(work / "zion-api" / "chips" / "manifest.parquet")
    assert len(frame) > 300 and set(frame["split"]) == {"train", "valid", "test"}
    assert info["split"]["leaking_pairs"] == 0
    report = json.loads((work / "zion-api" / "runs" / "lite0-logreg" / "eval-test" / "report.json").read_text())
    assert report["n_samples"] == (frame["split"] == "test").sum() and report["accuracy"] > 0.6
    with rasterio.open(work / "zion-api" / "maps" / "zion.tif") as src, \
            rasterio.open(data / "zion" / "landsat_b2.tif") as landsat:
        assert src.crs == landsat.crs and src.res == (480.0, 480.0)
    summary = json.loads((work / "zion-api" / "maps" / "zion.json").read_text())
    assert summary["scores"]["map"]["agreement"] > 0.6
    assert (work / "zion-api" / "maps" / "zion.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "chips in zion-api/chips" in out and "accuracy" in out
