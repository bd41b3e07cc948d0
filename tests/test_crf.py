"""The dense CRF: its lattice filter, mean field (against pydensecrf2 where installed), blocks, the hybrid and the
segmentation maps on Zion, the `crf` command, resume, dense maps as tiles (#30) and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import need_data, write_raster
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from scipy.ndimage import distance_transform_edt, gaussian_filter

from landcover.cli import main
from landcover.maps.classmap import read_class_map, read_probabilities
from landcover.maps.figures import truth_on_grid
from landcover.predict.dense import predict_dense
from landcover.predict.tiled import predict_tiled
from landcover.segment.crf import DEEPLAB, CrfSettings, Lattice, dense_crf, pixel_features
from landcover.segment.crfdefaults import CrfChoice


def naip_crop(size: int = 160) -> np.ndarray:
    """RGB of a real NAIP crop (North Dakota 2020, 5 m): fields, roads, farmsteads."""
    path = need_data("naip_nd", "m_4709963_se_14_1_20200831.tif")
    with rasterio.open(path) as src:
        return src.read([1, 2, 3], window=((200, 200 + size), (300, 300 + size)))


def noisy_unaries(image: np.ndarray, n: int = 4, seed: int = 0) -> np.ndarray:
    """Classes from brightness quartiles at p 0.7, a third of the pixels replaced by random probabilities."""
    rng = np.random.default_rng(seed)
    grey = image.mean(axis=0)
    labels = np.digitize(grey, np.quantile(grey, [0.25, 0.5, 0.75]))
    p = np.where(np.arange(n)[:, None, None] == labels, 0.7, 0.1).astype(np.float32)
    flip = rng.random(grey.shape) < 0.3
    p[:, flip] = rng.dirichlet(np.ones(n), int(flip.sum())).T
    return p


def isolated(classes: np.ndarray) -> int:
    """Mapped pixels none of whose 8 neighbours has their class."""
    padded = np.pad(classes, 1, mode="edge")
    h, w = classes.shape
    same = sum((padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == classes).astype(int)
               for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    return int(((same == 0) & (classes != 255)).sum())


def nlcd_agreement(map_path, zion, on=None) -> float:
    """Share of 30 m pixels (of the map `on`, default the map itself) where the map (nearest) agrees with NLCD
    2011 grouped."""
    grid = read_class_map(on or map_path)
    with rasterio.open(map_path) as src, WarpedVRT(src, crs=grid.crs, transform=grid.transform,
                                                   width=grid.data.shape[1], height=grid.data.shape[0],
                                                   resampling=Resampling.nearest) as vrt:
        data = vrt.read(1)
    ref = truth_on_grid(grid, zion / "nlcd2011.tif", "nlcd-grouped")
    ok = (data != 255) & (ref != 255)
    return float((data[ok] == ref[ok]).mean())


def test_lattice_filter_is_a_gaussian_of_sxy():
    h = w = 81
    lattice = Lattice(pixel_features(h, w, 5.0))
    impulse = np.zeros((h * w, 1), np.float32)
    impulse[40 * w + 40] = 1
    got = lattice.filter(impulse)[:, 0].reshape(h, w)
    got /= got.sum()
    reference = np.zeros((h, w))
    reference[40, 40] = 1
    reference = gaussian_filter(reference, 5.0)
    assert np.corrcoef(got.ravel(), reference.ravel())[0, 1] > 0.99
    r2 = ((np.mgrid[0:h, 0:w] - 40) ** 2).sum(axis=0)
    assert np.sqrt((got * r2).sum() / 2) == pytest.approx(5.0, rel=0.05)
    ones = lattice.filter(np.ones((h * w, 1), np.float32))[:, 0].reshape(h, w)
    assert ones[20:60, 20:60].std() / ones[20:60, 20:60].mean() < 0.05  # flat inside: normalisation is smooth


def test_mean_field_spreads_sparse_evidence_along_the_image():
    image = naip_crop()
    grey = image.mean(axis=0)
    truth = (grey > np.median(grey)).astype(int)
    rng = np.random.default_rng(1)
    seen = rng.random(truth.shape) < 0.02
    p = np.full((2, *truth.shape), 0.5, np.float32)
    p[:, seen] = np.where(np.arange(2)[:, None] == truth[seen], 0.9, 0.1)
    q = dense_crf(p, image, CrfSettings(sxy_gaussian=3, downscale=1))  # the seed appearance kernel, full resolution
    assert q.shape == p.shape and np.allclose(q.sum(axis=0), 1, atol=1e-4)
    accuracy = (q.argmax(axis=0) == truth)[~seen].mean()
    _, (rows, cols) = distance_transform_edt(~seen, return_indices=True)
    nearest = (truth[rows, cols] == truth)[~seen].mean()  # each pixel the class of the nearest evidence
    assert accuracy > 0.9 and accuracy > nearest + 0.1, (accuracy, nearest)
    assert np.allclose(dense_crf(p, image, CrfSettings(iterations=0)), p, atol=1e-5)  # no iteration: the unaries
    # Potts weights are the cost matrix w (1 - I): the same result through the matrix path
    potts = CrfSettings(sxy_gaussian=3, compat_gaussian=1, compat_bilateral=1, iterations=5, downscale=1)
    matrix = CrfSettings(sxy_gaussian=3, compat_gaussian=1, compat_bilateral=1, iterations=5, downscale=1,
                         compatibility=((0.0, 1.0), (1.0, 0.0)))
    assert np.allclose(dense_crf(p, image, potts), dense_crf(p, image, matrix), atol=1e-4)


def test_labels_agree_with_pydensecrf2():
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is the optional reference (bench extra)")
    image = naip_crop(200)
    p = noisy_unaries(image)
    n, h, w = p.shape
    for settings in (CrfSettings(), DEEPLAB):
        crf = dcrf.DenseCRF2D(w, h, n)
        crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(p, 1e-6, None)).reshape(n, -1)))
        crf.addPairwiseGaussian(sxy=settings.sxy_gaussian, compat=settings.compat_gaussian)
        crf.addPairwiseBilateral(sxy=settings.sxy_bilateral, srgb=settings.srgb, compat=settings.compat_bilateral,
                                 rgbim=np.ascontiguousarray(image.transpose(1, 2, 0)))
        theirs = np.array(crf.inference(settings.iterations)).reshape(n, h, w).argmax(axis=0)
        ours = dense_crf(p, image, settings).argmax(axis=0)
        assert (ours == theirs).mean() >= 0.98
        assert (ours != p.argmax(axis=0)).mean() > 0.1  # the CRF did change labels


@pytest.fixture(scope="module")
def seg_dense(zion_seg_run, zion_crop, tmp_path_factory):
    """The Zion U-Net's per-pixel map of a 300 x 420 px corner refined by the CRF in the same run (seed settings)."""
    out = tmp_path_factory.mktemp("dense") / "zion.tif"
    assert main(["predict", str(zion_seg_run / "bundle"), "--image", *zion_crop, "--out", str(out), "--crf",
                 "--quiet"]) == 0
    return out


def test_crf_on_a_segmentation_map_agrees_no_less_and_is_smoother(seg_dense, zion):
    pixels = seg_dense.with_name("zion.pixels.tif")
    assert pixels.exists() and seg_dense.with_name("zion.pixels.probs.tif").exists()
    before, after = nlcd_agreement(pixels, zion), nlcd_agreement(seg_dense, zion)
    print(f"agreement with NLCD: per-pixel map {before:.3f}, refined {after:.3f}")
    assert after >= before
    raw, refined = read_class_map(pixels), read_class_map(seg_dense)
    assert refined.data.shape == raw.data.shape and refined.transform == raw.transform
    assert isolated(refined.data) <= isolated(raw.data) / 2
    assert refined.tags["LANDCOVER_DENSE"] == "crf"


@pytest.mark.slow
def test_blocks_do_not_show_and_a_killed_run_resumes(seg_dense, zion_crop, tmp_path, monkeypatch):
    import landcover.predict.dense as dense
    from landcover.predict.dense import refine_raster

    probs = seg_dense.with_name("zion.pixels.probs.tif")
    settings = CrfSettings(sxy_gaussian=3, compat_gaussian=3, sxy_bilateral=10, srgb=13, compat_bilateral=10,
                           iterations=5, downscale=0.5)
    whole = refine_raster(probs, zion_crop, tmp_path / "whole.tif", crf=settings, crf_block=4096, progress=False,
                          log=lambda m: None)
    real_rows = dense.run_rows

    def dies_on_row_2(job, index):
        if index == 2:
            raise KeyboardInterrupt
        return real_rows(job, index)

    monkeypatch.setattr(dense, "run_rows", dies_on_row_2)
    with pytest.raises(KeyboardInterrupt):
        refine_raster(probs, zion_crop, tmp_path / "blocks.tif", crf=settings, crf_block=64, progress=False,
                      log=lambda m: None)
    assert not (tmp_path / "blocks.tif").exists()
    monkeypatch.setattr(dense, "run_rows", real_rows)
    blocks = refine_raster(probs, zion_crop, tmp_path / "blocks.tif", crf=settings, crf_block=64, progress=False,
                           log=lambda m: None)
    assert blocks.resumed == 2 and whole.resumed == 0
    a, b = read_class_map(whole.out).data, read_class_map(blocks.out).data
    assert (a == b).mean() >= 0.995
    # rows of blocks on a process pool (each worker given its share of the cores): the same map
    pooled = refine_raster(probs, zion_crop, tmp_path / "pooled.tif", crf=settings, crf_block=64, progress=False,
                           engine="process:2", log=lambda m: None)
    assert (read_class_map(pooled.out).data == b).all()


def test_hybrid_dense_map_beats_the_tile_map_per_30m_pixel(zion_bundle, zion, tmp_path):
    bundle, images, _ = zion_bundle
    out = tmp_path / "hybrid.tif"
    assert main(["predict", str(bundle), "--image", *images, "--out", str(out), "--dense", "crf", "--quiet"]) == 0
    tiles = out.with_name("hybrid.tiles.tif")
    dense = read_class_map(out)
    with rasterio.open(images[0]) as src:
        assert dense.data.shape == src.shape and dense.transform == src.transform  # the imagery's 30 m pixels
    assert read_class_map(tiles).transform.a == 480
    tile_score, dense_score = nlcd_agreement(tiles, zion, on=out), nlcd_agreement(out, zion)
    print(f"agreement with NLCD per 30 m pixel: tile map {tile_score:.3f}, hybrid dense map {dense_score:.3f}")
    assert dense_score > tile_score + 0.01


@pytest.mark.slow
def test_a_decimated_hybrid_still_gives_every_pixel_a_class(zion_bundle, zion_tile_map, zion, tmp_path):
    """A quarter of the tiles classified, still a class for every pixel, and better than the full tile map (scored,
    as above, on the dense map's 30 m pixels)."""
    bundle, images, _ = zion_bundle
    sparse = tmp_path / "sparse.tif"
    assert main(["predict", str(bundle), "--image", *images, "--out", str(sparse), "--dense", "crf", "--decimate",
                 "2", "--threshold", "0.6", "--quiet"]) == 0
    tile_score = nlcd_agreement(zion_tile_map, zion, on=sparse)
    tile_cells = read_class_map(sparse.with_name("sparse.tiles.tif")).data
    assert (tile_cells != 255).mean() < 0.3
    assert (read_class_map(sparse).data != 255).all()
    assert nlcd_agreement(sparse, zion) > tile_score


@pytest.mark.slow
def test_dense_maps_as_tiles_equal_the_single_map(zion_seg_run, zion_bundle, zion_images, tmp_path, capsys):
    """#30: dense maps written as tiles by two workers equal the single dense map, pixel and probability: a U-Net's
    map refined (96 px windows: tiles of whole steps and whole CRF blocks, 384 px, whose halo of 192 px puts the
    clipped rasters' corners between blocks, so each tile places its blocks where the whole map's fall) and the
    hybrid of the tile classifier (every 2nd cell of 240 m classified). Blocks of 128 cells and a 10 px appearance
    kernel keep it small; a size that is not whole blocks is one line."""
    crop = []
    for image in zion_images:  # 640 x 768 px of the park: 2 x 2 tiles
        with rasterio.open(image) as src:
            window = rasterio.windows.Window(300, 300, 768, 640)
            crop.append(str(write_raster(tmp_path / Path(image).name, src.read(1, window=window), src.crs,
                                         src.window_transform(window), src.nodata)))
    small = {"crf_block": 128, "crf": CrfChoice(given=(("sxy_bilateral", "10"),)), "log": lambda _: None}
    runs = {"unet": (zion_seg_run / "bundle", {"window": "96px", "overlap": "0px", "probabilities": True}),
            "hybrid": (zion_bundle[0], {"stride": "240m", "decimate": 2})}
    for name, (bundle, options) in runs.items():
        single, tiled = tmp_path / f"{name}.tif", tmp_path / name
        predict_dense(bundle, crop, single, progress=False, **small, **options)
        summary = predict_tiled(bundle, crop, tiled, "384px", dense=True, engine="process:2", **small, **options)
        assert summary["tiles"] == 4 and not summary["failed"]
        whole = read_class_map(single).data
        assert np.array_equal(whole, read_class_map(tiled / "index.vrt").data), name
        assert len(np.unique(whole)) >= 3
        if options.get("probabilities"):
            assert summary["halo_cells"] == 192
            assert np.array_equal(read_probabilities(single.with_suffix(".probs.tif"))[0],
                                  read_probabilities(tiled / "probs.vrt")[0])
    capsys.readouterr()
    assert main(["predict", str(zion_seg_run / "bundle"), "--quiet", "--image", *crop, "--crf", "--tiles", "384px",
                 "--out", str(tmp_path / "other")]) == 2
    assert "tiles are whole blocks of the CRF (512 cells of 1 px)" in capsys.readouterr().err


def test_bad_input_is_one_line(seg_dense, zion_seg_run, zion_images, tmp_path, capsys):
    out = tmp_path / "r.tif"
    tile_probs = tmp_path / "t.probs.tif"
    with rasterio.open(seg_dense.with_name("zion.pixels.probs.tif")) as src:
        profile = src.profile
        data = src.read(window=((0, 100), (0, 120)))
        profile.update(width=120, height=100, transform=src.transform * rasterio.Affine.scale(2))
        tags = src.tags()
        names = src.descriptions
    with rasterio.open(tile_probs, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for i, name in enumerate(names):
            dst.set_band_description(i + 1, name)
    cases = ((["crf", str(tile_probs), "--image", *zion_images, "--out", str(out)], "is not the imagery's"),
             (["crf", str(zion_images[0]), "--image", *zion_images, "--out", str(out)], "has no class names"),
             (["predict", str(zion_seg_run / "bundle"), "--image", *zion_images, "--out", str(out), "--decimate",
               "2"], "are for dense maps: add --dense crf"),
             (["predict", str(zion_seg_run / "bundle"), "--image", *zion_images, "--out", str(out), "--crf",
               "--decimate", "2"], "--decimate is for tile classifiers"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".*landcover-state"))
    # the CLI refuses --downscale 0 while parsing (test_reliability's table); the library says the same
    from landcover.errors import LandcoverError
    from landcover.predict.dense import refine_raster

    with pytest.raises(LandcoverError, match=r"--downscale 0 must be in \(0, 1\]"):
        refine_raster(seg_dense.with_name("zion.pixels.probs.tif"), zion_images, out, crf=CrfSettings(downscale=0))


def test_crf_settings_in_metres_and_by_resolution(capsys):
    """Kernel widths in metres become pixels of the CRF's grid; unset settings follow the imagery's pixel size; the
    seeds' numbers are the 'seed' preset; the CLI takes both spellings and refuses a bad one in one line."""
    import argparse

    from landcover.cli.predict import crf_options, crf_settings
    from landcover.errors import LandcoverError
    from landcover.segment.crf import CrfSettings
    from landcover.segment.crfdefaults import CrfChoice, defaults_for

    assert [defaults_for(r).downscale for r in (0.1, 0.6, 1, 4.9, 5, 30)] == [0.25, 0.25, 0.5, 0.5, 1, 1]
    landsat = CrfChoice().resolve(30.0)
    assert landsat.downscale == 1 and landsat.sxy_gaussian * 30 == 90 and landsat.sxy_bilateral * 30 == 1800
    photo = CrfChoice().resolve(0.1)  # 0.25 x: CRF pixels of 0.4 m
    assert photo.sxy_gaussian * 0.4 == pytest.approx(1.2)
    assert CrfChoice("seed").resolve(30.0) == CrfSettings()
    given = CrfChoice("auto", (("sxy_gaussian", "90m"), ("downscale", 0.5), ("sxy_bilateral", 7.0))).resolve(30.0)
    assert given.sxy_gaussian == 1.5 and given.sxy_bilateral == 7.0 and given.compat_bilateral == 10
    with pytest.raises(LandcoverError, match="--sxy-gaussian '-3m' is out of range: it must be > 0"):
        CrfChoice("auto", (("sxy_gaussian", "-3m"),)).resolve(30.0)
    parser = argparse.ArgumentParser()
    crf_options(parser)
    args = parser.parse_args(["--sxy-gaussian", "90m", "--crf-preset", "seed", "--iterations", "5"])
    choice = crf_settings(args)
    assert choice.preset == "seed" and dict(choice.given) == {"sxy_gaussian": "90m", "iterations": 5}
    assert choice.resolve(30.0).sxy_gaussian == pytest.approx(90 / 120)  # the seeds' 0.25 x grid: 120 m pixels
    with pytest.raises(SystemExit):
        parser.parse_args(["--sxy-gaussian", "wide"])
    assert "'wide' is not a length in metres" in capsys.readouterr().err
