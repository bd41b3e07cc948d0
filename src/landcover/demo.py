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
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for base in candidates:
        for folder in (base / "zion", base):
            if all((folder / f).exists() for f in ZION_FILES):
                return folder
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise LandcoverError(f"Zion sample not found (looked in {looked}); {GET_DATA}")


def run_demo(data: str | Path | None = None, out: str | Path = "landcover-demo", progress: bool = True) -> Path:
    """Run every stage on Zion into `out`; returns the output folder."""
    from landcover.chips import make_chips
    from landcover.formats import export
    from landcover.grid import make_grid
    from landcover.labels import LabelRaster
    from landcover.plots import chip_sheet
    from landcover.predict import evaluate_bundle
    from landcover.raster import Scene
    from landcover.rules import Rules
    from landcover.schemes import load_scheme
    from landcover.splits import SplitSpec, split_manifest
    from landcover.train import TrainConfig, train

    zion = find_zion(data)
    out = Path(out)
    images = [zion / f"landsat_b{b}.tif" for b in (2, 3, 4, 5)]
    # Stage 1, chips: true-colour PNGs (red, green, blue = stack bands 3, 2, 1), 480 m tiles, 3 x 3 points agree.
    scene = Scene.open(images, bands=[3, 2, 1], name="zion")
    grid = make_grid([scene], (480, "m"))
    print(f"[1/5] chips: Landsat 8 + NLCD 2011 (nlcd-grouped), {grid.tile * grid.res:g} m tiles, points:3, "
          f"inside the park boundary -> {out / 'chips'}")
    result = make_chips([scene], LabelRaster.open(zion / "nlcd2011.tif"), load_scheme("nlcd-grouped"), grid,
                        Rules.parse(["points:3"]), out / "chips", regions=["zion"], aoi=zion / "zion.gpkg",
                        progress=progress)
    print(result.summary())
    if result.manifest["path"].str.endswith(".png").all() and len(result.manifest):
        sheet = chip_sheet(result.manifest, out / "chips", load_scheme("nlcd-grouped"), out / "chips.png")
        print(f"sample chips per class: {sheet}")
    # Stage 2, split: spatial blocks of 4 x 4 tiles (1.9 km), 80:10:10, stratified by class, no tile leaks.
    print(f"[2/5] split: blocks of 4 x 4 tiles, 80:10:10 -> {out / 'chips' / 'split.json'}")
    split = split_manifest(out / "chips", SplitSpec(ratios=(0.8, 0.1, 0.1), blocks=4))
    print(split.summary())
    # Stage 3, export: TFRecord shards per split (the chips' PNG bytes), readable without TensorFlow.
    print(f"[3/5] export: TFRecord, 2 shards per split -> {out / 'tfrecord'}")
    exported = export(out / "chips", out / "tfrecord", "tfrecord", shards=2, overwrite=True, progress=progress)
    print(exported.summary())
    # Stage 4, train: frozen ImageNet EfficientNet-Lite0 features (offline weights) + logistic regression.
    run = out / "runs" / "lite0-logreg"
    print(f"[4/5] train: frozen efficientnet-lite0 (ImageNet) features + logistic regression -> {run}")
    if (run / "bundle" / "model.json").exists():
        print("already trained (delete the run folder to train again)")
    else:
        shutil.rmtree(run, ignore_errors=True)
        train(TrainConfig(manifest=str(out / "chips"), runs=str(out / "runs"), name=run.name, mode="features",
                          architecture="efficientnet-lite0", head="logreg"), progress=progress)
    # Stage 5, evaluate: the bundle on the test split (report.json, confusion.png, summary.txt).
    print(f"[5/5] evaluate: the bundle on the test split -> {run / 'eval-test'}")
    report, _ = evaluate_bundle(run / "bundle", out / "chips", "test", progress=progress)
    print(report.summary())
    return out
