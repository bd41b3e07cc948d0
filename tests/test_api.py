"""The Python API in the quick tier: `import landcover as lc` from a manifest and a bundle to a scored map, with the
map's options given as keywords and as one MapRequest (the README's whole block runs in the slow tier)."""

from __future__ import annotations

import json

import numpy as np
import rasterio


def test_the_api_from_a_bundle_to_a_scored_map(zion_bundle, zion_crop, zion, tmp_path):
    import landcover as lc

    bundle, _, root = zion_bundle
    frame, info = lc.read_manifest(root / "chips" / "manifest.parquet")
    assert set(frame["split"]) == {"train", "valid", "test"} and info["scheme"]["name"] == "nlcd-grouped"
    report, folder = lc.evaluate_bundle(bundle, root / "chips", "test", out=tmp_path / "eval", progress=False)
    assert report.n_samples == (frame["split"] == "test").sum() and (folder / "report.json").exists()

    keywords = lc.predict_raster(bundle, zion_crop, tmp_path / "kw.tif", stride="240m", smooth=3,
                                 truth=zion / "nlcd2011.tif", truth_scheme="nlcd-grouped", progress=False,
                                 log=lambda _: None)
    request = lc.MapRequest(stride="240m", smooth=3, truth=zion / "nlcd2011.tif", truth_scheme="nlcd-grouped",
                            progress=False, log=lambda _: None)
    one_object = lc.predict_raster(bundle, zion_crop, tmp_path / "req.tif", request)
    with rasterio.open(keywords.out) as a, rasterio.open(one_object.out) as b:
        assert a.res == (240.0, 240.0) and np.array_equal(a.read(), b.read())
    assert keywords.scores["map"]["agreement"] == one_object.scores["map"]["agreement"] > 0.3
    assert json.loads((tmp_path / "req.json").read_text())["smooth"] == 3
    assert lc.render_map(one_object.out, tmp_path / "map.png").stat().st_size > 10_000
