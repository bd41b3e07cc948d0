"""The main job: the whole pipeline on the Zion sample (Landsat 8 + NLCD 2011), from rasters to results."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from landcover.errors import LandcoverError

ZION_FILES = ("landsat_b2.tif", "landsat_b3.tif", "landsat_b4.tif", "landsat_b5.tif", "nlcd2011.tif", "zion.gpkg")
GET_DATA = ("the Zion sample (Landsat 8 bands 2-5, NLCD 2011, park boundary) comes from the R package "
            "spDataLarge (CC0, https://github.com/Nowosad/spDataLarge, inst/raster and inst/vector): "
            "put the files in DIR/zion/ and pass --data DIR")


def find_zion(data: str | Path | None = None) -> Path:
    """The folder holding the Zion files: --data, then $LANDCOVER_DATA, then ../shared/data."""
    candidates = [Path(data)] if data else []
    if os.environ.get("LANDCOVER_DATA"):
        candidates.append(Path(os.environ["LANDCOVER_DATA"]))
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[4] / "shared" / "data"]
    for base in candidates:
        for folder in (base / "zion", base):
            if all((folder / f).exists() for f in ZION_FILES):
                return folder
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise LandcoverError(f"Zion sample not found (looked in {looked}); {GET_DATA}")


def run_demo(data: str | Path | None = None, out: str | Path = "landcover-demo", progress: bool = True) -> Path:
    """Run every stage on Zion into `out`; returns the output folder."""
    from landcover.chips.cut import cut_chips
    from landcover.chips.labels import LabelRaster
    from landcover.chips.rules import Rules
    from landcover.datasets.formats import export
    from landcover.datasets.splits import split_manifest
    from landcover.geo.grid import make_grid
    from landcover.geo.raster import Scene
    from landcover.maps.figures import render_map
    from landcover.plots import chip_sheet
    from landcover.predict.chips import evaluate_bundle
    from landcover.predict.raster import predict_raster
    from landcover.schemes import load_scheme
    from landcover.train.trainer import train_model

    zion = find_zion(data)
    out = Path(out)
    images = [zion / f"landsat_b{b}.tif" for b in (2, 3, 4, 5)]
    # Stage 1, chips: true-colour PNGs (red, green, blue = stack bands 3, 2, 1), 480 m tiles, 3 x 3 points agree.
    scene = Scene.open(images, bands=[3, 2, 1], name="zion")
    grid = make_grid([scene], (480, "m"))
    print(f"[1/9] chips: Landsat 8 + NLCD 2011 (nlcd-grouped), {grid.tile * grid.res:g} m tiles, points:3, "
          f"inside the park boundary -> {out / 'chips'}")
    result = cut_chips([scene], LabelRaster.open(zion / "nlcd2011.tif"), load_scheme("nlcd-grouped"), grid,
                       Rules.parse(["points:3"]), out / "chips", regions=["zion"], aoi=zion / "zion.gpkg",
                       progress=progress)
    print(result.summary())
    if result.manifest["path"].str.endswith(".png").all() and len(result.manifest):
        sheet = chip_sheet(result.manifest, out / "chips", load_scheme("nlcd-grouped"), out / "chips.png")
        print(f"sample chips per class: {sheet}")
    # Stage 2, split: spatial blocks of 4 x 4 tiles (1.9 km), 80:10:10, stratified by class, no tile leaks.
    print(f"[2/9] split: blocks of 4 x 4 tiles, 80:10:10 -> {out / 'chips' / 'split.json'}")
    split = split_manifest(out / "chips", "80:10:10", blocks=4)
    print(split.summary())
    # Stage 3, export: TFRecord shards per split (the chips' PNG bytes), readable without TensorFlow.
    print(f"[3/9] export: TFRecord, 2 shards per split -> {out / 'tfrecord'}")
    exported = export(out / "chips", out / "tfrecord", "tfrecord", shards=2, overwrite=True, progress=progress)
    print(exported.summary())
    # Stage 4, train: the chips' spectral features (per-band statistics) + a random forest. On these chips it scored
    # 0.951 on the test split where frozen ImageNet Lite0 features + logistic regression scored 0.805, and its maps
    # are the better ones: 0.660 of the park's 30 m pixels agree with NLCD (0.635), the hybrid 0.687 (0.639).
    run = out / "runs" / "spectral-rf"
    print(f"[4/9] train: spectral features of the chips (band statistics) + random forest -> {run}")
    if (run / "bundle" / "model.json").exists():
        print("already trained (delete the run folder to train again)")
    else:
        shutil.rmtree(run, ignore_errors=True)
        train_model(out / "chips", runs=str(out / "runs"), name=run.name, mode="spectral", head="rf",
                    progress=progress)
    # Stage 5, evaluate: the bundle on the test split (report.json, confusion.png, summary.txt).
    print(f"[5/9] evaluate: the bundle on the test split -> {run / 'eval-test'}")
    report, _ = evaluate_bundle(run / "bundle", out / "chips", "test", progress=progress)
    print(report.summary())
    # Stage 6, predict: the whole scene inside the park into a class-map COG, windows overlapping by half,
    # smoothed 3 x 3, with probabilities, both maps scored against NLCD cell by cell.
    maps = out / "maps"
    print(f"[6/9] predict: the Landsat scene inside the park, 240 m stride, smoothed 3 x 3 -> {maps / 'zion.tif'}")
    result = predict_raster(run / "bundle", images, maps / "zion.tif", stride="240m", aoi=zion / "zion.gpkg",
                            smooth=3, probabilities=True, truth=zion / "nlcd2011.tif", truth_scheme="nlcd-grouped",
                            overwrite=True, progress=progress)
    print(result.summary())
    # Stage 7, map: the class map over the true-colour scene, beside NLCD.
    print(f"[7/9] map: prediction beside NLCD 2011 -> {maps / 'zion.png'}")
    render_map(maps / "zion.tif", maps / "zion.png", truth=zion / "nlcd2011.tif", scheme="nlcd-grouped",
               title="Zion: spectral forest vs NLCD 2011")
    segment_stage(zion, images, out, progress)
    dense_stage(zion, images, out, run / "bundle", progress)
    return out


SEGMENT_EPOCHS = 3


def segment_stage(zion: Path, images: list[Path], out: Path, progress: bool) -> None:
    """Stage 8: a U-Net (Lite0 ImageNet encoder) on 64 px image/mask pairs inside the park for a few epochs, its
    test-pair scores, and the park mapped per 30 m pixel, drawn beside the tile map and NLCD."""
    from landcover.chips.make import make_chips
    from landcover.datasets.splits import split_manifest
    from landcover.predict.raster import predict_raster
    from landcover.segment.evaluate import evaluate_segmentation
    from landcover.train.trainer import train_model

    pairs, run, maps = out / "pairs", out / "runs" / "unet", out / "maps"
    print(f"[8/9] segment: U-Net on 64 px image/mask pairs inside the park, {SEGMENT_EPOCHS} epochs; the park "
          f"mapped per pixel -> {maps / 'zion-pixels.tif'}")
    if (run / "bundle" / "model.json").exists():
        print("already trained (delete the run folder to train again)")
    else:
        make_chips(images, pairs, labels=zion / "nlcd2011.tif", scheme="nlcd-grouped", tile_size="64px",
                   layout="pairs", aoi=zion / "zion.gpkg", overwrite=True, progress=progress, log=lambda _: None)
        split_manifest(pairs, "70:15:15", blocks=2, plot=False)
        shutil.rmtree(run, ignore_errors=True)
        train_model(pairs, runs=str(out / "runs"), name=run.name, task="segmentation", rgb_bands=[3, 2, 1],
                    epochs=SEGMENT_EPOCHS, batch_size=8, progress=False)
    scores, _ = evaluate_segmentation(run / "bundle", pairs, "test", progress=progress)
    print(f"test pairs: pixel accuracy {scores['pixel_accuracy']:.3f}, mIoU {scores['miou']:.3f}")
    result = predict_raster(run / "bundle", images, maps / "zion-pixels.tif", aoi=zion / "zion.gpkg",
                            truth=zion / "nlcd2011.tif", truth_scheme="nlcd-grouped", overwrite=True,
                            progress=progress, log=lambda _: None)
    print(result.summary())
    beside_tile_map(zion, maps, "zion-pixels", "U-Net per 30 m pixel")


def dense_stage(zion: Path, images: list[Path], out: Path, bundle: Path, progress: bool) -> None:
    """Stage 9: the hybrid dense map (the stage-4 classifier on every tile, confident tiles as evidence, the dense
    CRF at its settings for 30 m imagery) inside the park at 30 m, drawn beside the tile map, and both maps
    assessed against NLCD 2011 (accuracies and area estimates with 95% confidence intervals)."""
    from landcover.maps.accuracy import assess_map
    from landcover.predict.dense import predict_dense

    maps = out / "maps"
    print(f"[9/9] dense: tiles as evidence, the dense CRF gives every 30 m pixel a class -> {maps / 'zion-dense.tif'}")
    result = predict_dense(bundle, images, maps / "zion-dense.tif", aoi=zion / "zion.gpkg", overwrite=True,
                           progress=progress, log=lambda _: None)
    print(result.summary())
    beside_tile_map(zion, maps, "zion-dense", "the hybrid dense map (30 m)")
    for name in ("zion", "zion-dense"):
        assessment = assess_map(maps / f"{name}.tif", zion / "nlcd2011.tif", maps / f"{name}.accuracy",
                                scheme="nlcd-grouped")
        e = assessment.estimates
        print(f"{name}.tif against NLCD 2011 (nearest onto its grid): overall accuracy {e['overall_accuracy']:.3f} "
              f"± {e['overall_accuracy_ci95']:.3f}, kappa {assessment.report.kappa:.3f} -> {maps / f'{name}.accuracy'}")


def beside_tile_map(zion: Path, maps: Path, name: str, what: str) -> None:
    """maps/<name>.png: NLCD | the tile map | the map <name>.tif | agreement."""
    from landcover.maps.figures import render_map

    figure = render_map(maps / f"{name}.tif", maps / f"{name}.png", truth=zion / "nlcd2011.tif", scheme="nlcd-grouped",
                        beside=maps / "zion.tif", title=f"Zion: tile map (240 m cells) and {what} vs NLCD 2011")
    print(f"figure: {figure}")
