"""landcover acquire: a static STAC catalog and an item-search API built from the ten real North Dakota NAIP years
(each band a COG, with a synthetic cloud layer), served on 127.0.0.1 with Range requests; composites checked pixel by
pixel against references computed here, bytes served, errors, resume, presets; NLCD as a label product."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import need_data
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import from_bounds
from stac_helpers import AOI_UTM, BANDS, CLOUD, StacServer, build_naip_catalog

from landcover.acquire.catalog import PRESETS, open_catalog, sign_href
from landcover.acquire.run import acquire_area
from landcover.cli import main
from landcover.errors import LandcoverError

SCL_DROP = (0, 1, 3, 8, 9, 10)
BBOX = [float(v) for v in transform_bounds("EPSG:26914", "EPSG:4326", *AOI_UTM)]


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory) -> Path:
    return build_naip_catalog(need_data("naip_nd"), tmp_path_factory.mktemp("stac") / "catalog").parent


@pytest.fixture(scope="module")
def server(catalog_root):
    with StacServer(catalog_root) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server):
    server.reset()


def years(root: Path) -> list[Path]:
    return sorted(p for p in (root / "files").iterdir())


def observations(root: Path, out: Path, chosen: list[str] | None = None):
    """Every year's bands and validity warped (nearest) onto the composite's grid, computed here from the files."""
    with rasterio.open(out / ("composite.tif" if (out / "composite.tif").exists() else "valid_count.tif")) as c:
        transform, crs, shape = c.transform, c.crs, (c.height, c.width)
    stack, valid, names = [], [], []
    for folder in years(root):
        if chosen is not None and folder.name not in chosen:
            continue
        bands, ok = [], np.ones(shape, bool)
        for name in (*BANDS, "SCL"):
            with rasterio.open(folder / f"{name}.tif") as src:
                dst = np.zeros(shape, np.uint8)
                reproject(src.read(1), dst, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                          dst_crs=crs, resampling=Resampling.nearest, src_nodata=src.nodata, dst_nodata=0)
            if name == "SCL":
                ok &= ~np.isin(dst, SCL_DROP)
                scl = dst
            else:
                ok &= dst != 0
                bands.append(dst)
        stack.append(np.stack(bands))
        valid.append(ok)
        names.append((folder.name, scl))
    return np.stack(stack), np.stack(valid), names


def median_reference(stack: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per pixel and band, the median of the valid years (rounded half to even); 0 (nodata) where none is valid."""
    values = np.where(valid[:, None], stack.astype(float), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(values, axis=0)
    return np.where(np.isnan(med), 0, np.rint(med)).astype(np.uint8)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_median_of_masked_years_equals_reference_and_reads_only_the_aoi_tiles(server, catalog_root, tmp_path):
    out = tmp_path / "median"
    result = acquire_area(f"{server.base}/catalog.json", out, list(BANDS), bbox=BBOX, mask="scl", progress=False)
    assert len(result.items) == 10 and result.fetched == 10
    stack, valid, _ = observations(catalog_root, out)
    composite = read(out / "composite.tif")
    assert composite.shape == (4, 202, 202)
    assert valid.sum(0).min() < 10 and (~valid).sum() > 20000  # the clouds took pixels out
    np.testing.assert_array_equal(composite, median_reference(stack, valid))
    np.testing.assert_array_equal(read(out / "valid_count.tif")[0], valid.sum(0))
    with rasterio.open(out / "composite.tif") as src:
        assert src.crs.to_epsg() == 26914 and src.res == (5.0, 5.0) and src.nodata == 0
        assert src.descriptions == BANDS and src.profile["tiled"]
    records = json.loads((out / "items.json").read_text())
    assert [i["id"] for i in records["items"]] == sorted(i["id"] for i in records["items"])
    assert all(i["hrefs"]["red"].startswith(server.base) for i in records["items"])
    import pystac

    described = pystac.Item.from_dict(json.loads((out / "composite.json").read_text()))
    assert described.properties["proj:shape"] == [202, 202] and set(described.assets) == {"composite",
                                                                                           "valid_count"}
    # Only the area's tiles (and each file's header) were read: every range served lies in them, up to the 16 KB
    # GDAL reads at a time.
    total_size = sum(p.stat().st_size for p in catalog_root.rglob("*.tif"))
    assert server.file_bytes() < 0.35 * total_size
    for path, ranges in server.ranges.items():
        allowed = _aoi_tile_ranges(catalog_root / path.lstrip("/"), out)
        for first, last in ranges:
            outside = (last - first + 1) - sum(max(0, min(last, b) - max(first, a) + 1) for a, b in allowed)
            assert outside <= 16384, f"{path}: range {first}-{last} reads {outside} bytes outside the area"


def _aoi_tile_ranges(path: Path, out: Path) -> list[tuple[int, int]]:
    """Byte ranges a reader of the area needs: the header (before the first tile) and the tiles under the area."""
    with rasterio.open(out / "composite.tif") as c:
        bounds = c.bounds
    with rasterio.open(path) as src:
        window = from_bounds(*bounds, src.transform)
        tiles = [(int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1) or 0),
                  int(src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1) or 0), x, y)
                 for y in range(-(-src.height // 256)) for x in range(-(-src.width // 256))]
        first_tile = min(offset for offset, size, _, _ in tiles if size)
        c0, r0 = int(window.col_off) - 2, int(window.row_off) - 2
        c1, r1 = int(window.col_off + window.width) + 2, int(window.row_off + window.height) + 2
        needed = [(o, o + s - 1) for o, s, x, y in tiles
                  if s and x * 256 < c1 and (x + 1) * 256 > c0 and y * 256 < r1 and (y + 1) * 256 > r0]
    return [(0, first_tile - 1), *needed]


def test_closest_takes_the_next_nearest_date_where_clouds_hide_the_nearest(server, catalog_root, tmp_path):
    out = tmp_path / "closest"
    acquire_area(str(catalog_root / "catalog.json"), out, list(BANDS), bbox=BBOX, mask="scl",
                 composite="closest:2015-09-26", engine="process:2", progress=False)  # items as pool tasks
    stack, valid, names = observations(catalog_root, out)
    composite = read(out / "composite.tif")
    folders = [n for n, _ in names]
    nearest, second = folders.index("20150926"), folders.index("20160816")
    hidden = (names[nearest][1] == CLOUD) & valid[second]
    clear = valid[nearest]
    assert hidden.sum() > 5000 and clear.sum() > 20000
    np.testing.assert_array_equal(composite[:, clear], stack[nearest][:, clear])
    np.testing.assert_array_equal(composite[:, hidden], stack[second][:, hidden])


def test_api_search_pages_filters_cloud_and_matches_the_static_catalog(server, catalog_root, tmp_path):
    api = acquire_area(f"{server.base}/api", tmp_path / "api", list(BANDS), collections=["naip-nd"], bbox=BBOX,
                       datetime="2014/2018", max_cloud=1.0, mask="scl", composite="mosaic", progress=False)
    assert server.requests["/api"] >= 1
    assert [i.id for i in api.items] == ["nd-20140720", "nd-20160816", "nd-20170827", "nd-20180716"]
    assert api.cloudy == 1 and "1 left out by cloud cover" in api.summary()  # 2015's large cloud
    acquire_area(str(catalog_root / "catalog.json"), tmp_path / "static", list(BANDS), bbox=BBOX,
                 datetime="2014-01-01/2018-12-31", max_cloud=1.0, mask="scl", composite="mosaic", progress=False)
    api_composite = read(tmp_path / "api" / "composite.tif")
    np.testing.assert_array_equal(api_composite, read(tmp_path / "static" / "composite.tif"))
    stack, valid, _ = observations(catalog_root, tmp_path / "api", ["20140720", "20160816", "20170827", "20180716"])
    newest_first = np.argmax(valid[::-1], axis=0)
    chosen = len(valid) - 1 - newest_first
    expected = np.take_along_axis(stack, chosen[None, None].repeat(4, 1), axis=0)[0]
    expected[:, ~valid.any(0)] = 0
    np.testing.assert_array_equal(api_composite, expected)


def test_crs_and_resolution_override_the_items_grid(server, catalog_root, tmp_path):
    out = tmp_path / "wgs84-utm"
    acquire_area(f"{server.base}/api", out, list(BANDS), bbox=BBOX, datetime="2016/2018", mask="scl",
                 crs="EPSG:32614", resolution=10, progress=False)
    with rasterio.open(out / "composite.tif") as src:
        assert src.crs.to_epsg() == 32614 and src.res == (10.0, 10.0)
        assert src.transform.c % 10 == 0 and src.transform.f % 10 == 0  # aligned to the 10 m lattice
    stack, valid, _ = observations(catalog_root, out, ["20160816", "20170827", "20180716"])
    np.testing.assert_array_equal(read(out / "composite.tif"), median_reference(stack, valid))


def test_none_writes_one_masked_stack_per_item(server, catalog_root, tmp_path, capsys):
    out = tmp_path / "none"
    result = acquire_area(f"{server.base}/api", out, list(BANDS), bbox=BBOX, datetime="2019/..", mask="scl",
                          composite="none", progress=False)
    assert len(result.stacks) == 2 and not (out / "composite.tif").exists()
    stack, valid, _ = observations(catalog_root, out, ["20190904", "20200831"])
    for k, name in enumerate(["nd-20190904", "nd-20200831"]):
        expected = np.where(valid[k][None], stack[k], 0)
        np.testing.assert_array_equal(read(out / "items" / f"{name}.tif"), expected)
        assert json.loads((out / "items" / f"{name}.json").read_text())["properties"]["landcover:items"] == [name]
    np.testing.assert_array_equal(read(out / "valid_count.tif")[0], valid.sum(0))
    assert_other_requests_need_overwrite(server, out, capsys)


def assert_other_requests_need_overwrite(server, out, capsys):
    """A finished output is not replaced by a different request (here: other assets, a median) without
    --overwrite, which then removes the earlier stacks; a folder of other files is not written into."""
    command = ["acquire", "--catalog", f"{server.base}/api", "--bbox", *map(str, BBOX), "--datetime", "2019/..",
               "--assets", "red", "--out", str(out), "--quiet"]
    before = sorted(p.name for p in out.rglob("*"))
    assert main(command) == 2
    assert "holds the output of a different acquire request" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert main([*command, "--overwrite"]) == 0
    assert not (out / "items").exists() and read(out / "composite.tif").shape[0] == 1
    assert main(command) == 0  # the same request again rewrites its own output
    other = out.parent / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"not ours")
    assert main([*command[:-3], "--out", str(other), "--quiet"]) == 2
    assert "photos: holds other files, not an acquire's output" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["holiday.jpg"]


@pytest.mark.parametrize(("args", "message"), [
    (["--datetime", "1990/1991"], "no items found for collection naip-nd, bbox"),
    (["--assets", "red", "B99"], "has no asset 'B99' (it has: SCL, blue, green, nir, red)"),
    (["--datetime", "2020-05-01/2019-01-01"], "is not a range: it ends before it starts"),
    (["--datetime", "2020-05-01"], "is not a range: give START/END"),
    (["--composite", "closest"], "choose none, median, mosaic or closest:YYYY-MM-DD"),
    (["--mask", "SCL"], "give scl, qa_pixel, none or ASSET:VALUES"),
])
def test_bad_requests_say_what_is_wrong(server, tmp_path, capsys, args, message):
    base = ["acquire", "--catalog", f"{server.base}/api", "--collection", "naip-nd", "--bbox", *map(str, BBOX),
            "--assets", *BANDS, "--out", str(tmp_path / "out"), "--quiet"]
    for flag in ("--assets", "--datetime", "--composite", "--mask"):
        if flag in args and flag in base:
            at = base.index(flag)
            del base[at:at + (1 + len(BANDS) if flag == "--assets" else 2)]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err
    assert not (tmp_path / "out" / "composite.tif").exists()


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_an_aoi_without_crs_is_refused(tmp_path, capsys):
    import geopandas as gpd
    from shapely.geometry import box

    gpd.GeoDataFrame(geometry=[box(*AOI_UTM)]).to_file(tmp_path / "aoi.shp")
    assert main(["acquire", "--catalog", "earth-search", "--aoi", str(tmp_path / "aoi.shp"), "--assets", "red",
                 "--out", str(tmp_path / "out")]) == 2
    assert "aoi.shp: has no CRS" in capsys.readouterr().err


@pytest.mark.parametrize("failure", [pytest.param("500", marks=pytest.mark.slow), "drop"])
def test_server_errors_fail_clearly_and_the_rerun_fetches_only_what_is_missing(server, catalog_root, tmp_path,
                                                                                 capsys, failure):
    out = tmp_path / "out"
    command = ["acquire", "--catalog", f"{server.base}/catalog.json", "--bbox", *map(str, BBOX), "--assets", *BANDS,
               "--mask", "scl", "--retries", "1", "--out", str(out), "--quiet"]
    server.fail["/files/20170827/nir.tif"] = failure
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "asset 'nir' of item nd-20170827: reading failed after 2 tries" in err and "rerun" in err
    assert not (out / "composite.tif").exists()
    assert len(list((out / ".acquire").glob("item-*.tif"))) == 6  # 2009..2016 were fetched and kept
    server.reset()
    assert main(command) == 0
    assert "fetched 4 item(s), 6 already fetched (resumed)" in capsys.readouterr().out
    assert not any("/files/2009" in p or "/files/2015" in p for p in server.requests)
    stack, valid, _ = observations(catalog_root, out)
    np.testing.assert_array_equal(read(out / "composite.tif"), median_reference(stack, valid))


@pytest.mark.parametrize("failure", ["500", "drop"])
def test_a_failing_search_says_so(server, tmp_path, failure):
    server.fail["/api/search"] = failure
    with pytest.raises(LandcoverError, match=r"/api: item search failed: "):
        acquire_area(f"{server.base}/api", tmp_path / "out", list(BANDS), bbox=BBOX, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_killed_run_resumes_without_fetching_finished_items(server, catalog_root, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "landcover", "acquire", "--catalog", f"{server.base}/catalog.json", "--bbox",
               *map(str, BBOX), "--assets", *BANDS, "--mask", "scl", "--out", str(out), "--quiet"]
    server.fail["/files/20160816/"] = "slow"  # the sixth item stalls: the run is killed while waiting for it
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 60
    while len(list((out / ".acquire").glob("item-*.tif"))) < 5 and time.time() < deadline:
        time.sleep(0.2)
    process.kill()
    process.wait()
    assert len(list((out / ".acquire").glob("item-*.tif"))) == 5
    assert not (out / "composite.tif").exists()
    server.reset()
    result = acquire_area(f"{server.base}/catalog.json", out, list(BANDS), bbox=BBOX, mask="scl", progress=False)
    assert (result.fetched, result.resumed) == (5, 5)
    done = ("20090818", "20100629", "20120731", "20140720", "20150926")
    assert not [p for p in server.requests if any(f"/files/{d}/" in p for d in done)]
    stack, valid, _ = observations(catalog_root, out)
    np.testing.assert_array_equal(read(out / "composite.tif"), median_reference(stack, valid))
    assert not (out / ".acquire").exists()


def test_a_four_band_asset_gives_the_same_bands_as_four_single_band_assets(server, catalog_root, tmp_path):
    """NAIP on the public APIs is one 4-band 'image' asset per item: its bands come out in order."""
    import pystac
    from shapely.geometry import box, mapping

    naip = need_data("naip_nd")
    catalog = pystac.Catalog("naip-image", "one 4-band asset per item")
    for path in sorted(naip.glob("*.tif"))[-3:]:
        with rasterio.open(path) as src:
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        stamp = path.stem.rsplit("_", 1)[-1]
        item = pystac.Item(f"nd-{stamp}", mapping(box(*bounds)), list(bounds),
                           pystac.utils.str_to_datetime(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:]}T00:00:00Z"), {})
        item.add_asset("image", pystac.Asset(str(path), roles=["data"]))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "image"))
    catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    image = acquire_area(str(tmp_path / "image"), tmp_path / "one", ["image"], bbox=BBOX, datetime="2018/..",
                         composite="mosaic", progress=False)
    assert image.fetched == 3
    acquire_area(f"{server.base}/api", tmp_path / "four", list(BANDS), bbox=BBOX, datetime="2018/..",
                 composite="mosaic", progress=False)
    with rasterio.open(tmp_path / "one" / "composite.tif") as src:
        assert src.descriptions == ("image_1", "image_2", "image_3", "image_4")
    np.testing.assert_array_equal(read(tmp_path / "one" / "composite.tif"), read(tmp_path / "four" / "composite.tif"))


def test_presets_name_the_public_apis_and_sign_planetary_computer_hrefs(server, monkeypatch):
    import planetary_computer
    from planetary_computer import sas

    pc, es = open_catalog("planetary-computer"), open_catalog("earth-search")
    assert (pc.source, pc.kind, pc.signing) == (PRESETS["planetary-computer"].url, "api", "planetary-computer")
    assert pc.source == "https://planetarycomputer.microsoft.com/api/stac/v1"
    assert (es.source, es.kind, es.signing) == ("https://earth-search.aws.element84.com/v1", "api", None)
    # The token endpoint is this loopback server: the package asks it for the container's token, once.
    monkeypatch.setenv("PC_SDK_SAS_URL", f"{server.base}/sas")
    planetary_computer.settings.Settings.get.cache_clear()
    sas.TOKEN_CACHE.clear()
    server.tokens["/sas/naipeuwest/naip"] = "st=2099&se=2099&sp=rl&sig=loopback"
    href = "https://naipeuwest.blob.core.windows.net/naip/v002/ma/2021/ma_060cm_2021/42071/m_4207101_ne_19_060_2021.tif"
    assert sign_href(href, "planetary-computer") == f"{href}?st=2099&se=2099&sp=rl&sig=loopback"
    assert sign_href(href, "planetary-computer").endswith("sig=loopback")
    assert server.requests["/sas/naipeuwest/naip"] == 1
    other = "https://landsateuwest.blob.core.windows.net/landsat-c2/x.tif"  # no token served for it: a clear error
    with pytest.raises(LandcoverError, match="signing failed"):
        sign_href(other, "planetary-computer")
    assert sign_href(f"{server.base}/files/a.tif", "planetary-computer") == f"{server.base}/files/a.tif"
    assert sign_href(href, None) == href
    planetary_computer.settings.Settings.get.cache_clear()


def test_nlcd_tiles_as_a_label_product_give_chips_their_labels(tmp_path):
    """NLCD (Albers) cut into two tiles, each a STAC item with classification:classes, mosaicked over the park."""
    import pystac

    zion = need_data("zion")
    source = zion / "nlcd2011_albers.tif"
    root = tmp_path / "nlcd"
    catalog = pystac.Catalog("nlcd-test", "NLCD 2011 in two tiles")
    with rasterio.open(source) as src:
        half = src.width // 2
        for name, window in (("west", rasterio.windows.Window(0, 0, half, src.height)),
                             ("east", rasterio.windows.Window(half, 0, src.width - half, src.height))):
            (root / name).mkdir(parents=True)
            profile = {**src.profile, "width": int(window.width), "height": int(window.height),
                       "transform": src.window_transform(window)}
            with rasterio.open(root / name / "nlcd.tif", "w", **profile) as dst:
                dst.write(src.read(window=window))
            bounds = transform_bounds(src.crs, "EPSG:4326", *rasterio.windows.bounds(window, src.transform))
            from shapely.geometry import box, mapping

            item = pystac.Item(f"nlcd-2011-{name}", mapping(box(*bounds)), list(bounds),
                               pystac.utils.str_to_datetime("2011-07-01T00:00:00Z"), {"proj:code": "EPSG:5070"})
            item.add_asset("data", pystac.Asset(str(root / name / "nlcd.tif"), roles=["data"],
                                                extra_fields={"classification:classes": [
                                                    {"value": 42, "description": "Evergreen Forest"}]}))
            catalog.add_item(item)
        nlcd, nlcd_transform, nlcd_crs = src.read(1), src.transform, src.crs
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    out = tmp_path / "labels"
    assert main(["acquire", "--catalog", str(root), "--aoi", str(zion / "zion.gpkg"), "--assets", "data",
                 "--composite", "mosaic", "--out", str(out), "--quiet"]) == 0
    with rasterio.open(out / "composite.tif") as src:
        labels, transform = src.read(1), src.transform
        assert src.crs == nlcd_crs and src.res == (30.0, 30.0) and src.nodata == 255
        col, row = ~nlcd_transform * (transform.c, transform.f)
        assert col == int(col) and row == int(row)  # on NLCD's own grid
        expected = nlcd[int(row):int(row) + src.height, int(col):int(col) + src.width]
    inside = labels != 255
    assert 0.3 < inside.mean() < 0.8  # the park polygon, not its box
    np.testing.assert_array_equal(labels[inside], expected[inside])
    assert set(np.unique(labels[inside])) >= {31, 41, 42, 52}
    images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4, 5)]
    assert main(["chips", "--quiet", "--image", *images, "--labels", str(out / "composite.tif"), "--scheme",
                 "nlcd-grouped", "--tile-size", "960m", "--rule", "purity:0.6", "--format", "tif",
                 "--out", str(tmp_path / "chips")]) == 0
    import geopandas as gpd

    manifest = gpd.read_parquet(tmp_path / "chips" / "manifest.parquet")
    assert len(manifest) > 100 and {"Forest", "Shrubland"} <= set(manifest["label"])


@pytest.mark.parametrize("where", ["nothing listening", "404"])
def test_an_unreachable_catalog_is_one_line(server, tmp_path, capsys, where):
    import socket

    if where == "404":
        url = f"{server.base}/nowhere/catalog.json"
    else:
        with socket.socket() as s:  # a port nothing listens on: bound, then released
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/catalog.json"
    out = tmp_path / "out"
    assert main(["acquire", "--catalog", url, "--bbox", *map(str, BBOX), "--assets", *BANDS, "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and url in err and "cannot read the static catalog" in err
    assert not out.exists()


def test_an_output_grid_too_large_is_refused_before_any_fetch(server, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["acquire", "--catalog", f"{server.base}/catalog.json", "--bbox", *map(str, BBOX), "--assets",
                 *BANDS, "--resolution", "0.001", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the output grid would be" in err and "gigapixels" in err, err
    assert not out.exists()  # nothing fetched, no work folder: only the reference item's headers were read
