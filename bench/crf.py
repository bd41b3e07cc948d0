"""The dense CRF: landcover's (a permutohedral lattice compiled with numba) against pydensecrf2 (Krähenbühl's C++),
seconds per megapixel, peak memory and label agreement on the same unaries, kernels and iterations; and the hybrid
dense map of Zion (tile classifier + CRF) in km² per hour.

Run from the repository root:  python bench/crf.py [--out bench/results] [--sizes 1 4 16]
`--quick` (what CI runs): 0.25 MP only and a smaller hybrid; its figures are not ones of record.
pydensecrf2 is in the bench extra (`pip install -c constraints.txt -e ".[bench]"`; it builds with g++): without it
the reference rows say so.

Images: the NAIP North Dakota years tiled into a mosaic (bench/predict.py's), RGB, cut to 1, 4 and 16 MP squares.
Unaries: four classes from the image's brightness quartiles at probability 0.7, with a third of the pixels given
random probabilities instead (seed 0), so the CRF has real edges to follow and noise to remove. Settings: the seeds'
(smoothness sxy 60 w 5, appearance sxy 60 srgb 1 w 100, 20 iterations) and DeepLab-style (sxy 3 w 3; sxy 80 srgb 13
w 10; 5 iterations), both at the image's resolution. Each run is a fresh process (peak RSS is its own); landcover's
numba code is compiled before the clock starts (it is cached on disk after the first use). Peak RSS includes
each process's imports (numba and llvmlite: about 140 MB; pydensecrf2 about 30 MB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fresh_process, machine, zion, zion_classifier, zion_images
from predict import build_mosaic

SETTINGS = {"seed": {}, "deeplab": {"sxy_gaussian": 3, "compat_gaussian": 3, "sxy_bilateral": 80, "srgb": 13,
                                    "compat_bilateral": 10, "iterations": 5}}
CHILD = """
import json, sys, time
import numpy as np
which, image_path, probs_path, labels_path, settings = sys.argv[1:6]
settings = json.loads(settings)
image, p = np.load(image_path), np.load(probs_path)
if which == "landcover":
    from landcover.segment.crf import CrfSettings, dense_crf
    s = CrfSettings(**settings)
    dense_crf(p[:, :32, :32], image[:, :32, :32], s)  # compile (or load the cached code) before timing
    t = time.perf_counter()
    labels = dense_crf(p, image, s).argmax(axis=0)
else:  # without importing landcover, so the peak memory is pydensecrf2's own
    import pydensecrf.densecrf as dcrf
    n, h, w = p.shape
    t = time.perf_counter()
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(p, 1e-6, None)).reshape(n, -1)))
    crf.addPairwiseGaussian(sxy=settings["sxy_gaussian"], compat=settings["compat_gaussian"])
    crf.addPairwiseBilateral(sxy=settings["sxy_bilateral"], srgb=settings["srgb"], compat=settings["compat_bilateral"],
                             rgbim=np.ascontiguousarray(image.transpose(1, 2, 0)))
    labels = np.array(crf.inference(settings["iterations"])).reshape(n, h, w).argmax(axis=0)
seconds = time.perf_counter() - t
np.save(labels_path, labels.astype(np.uint8))
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over the exec)
peak = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0] / 1024
print("BENCH " + json.dumps({"seconds": seconds, "peak_rss_mb": peak}))
"""


def unaries(image: np.ndarray, n: int = 4, seed: int = 0) -> np.ndarray:
    """Brightness quartiles at p 0.7, a third of the pixels replaced by random probabilities."""
    rng = np.random.default_rng(seed)
    grey = image.mean(axis=0)
    labels = np.digitize(grey, np.quantile(grey, [0.25, 0.5, 0.75]))
    p = np.where(np.arange(n)[:, None, None] == labels, 0.7, 0.1).astype(np.float32)
    flip = rng.random(grey.shape) < 1 / 3
    p[:, flip] = rng.dirichlet(np.ones(n), int(flip.sum())).T
    return p


def has_reference() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def run(which: str, work: Path, side: int, settings: dict) -> dict:
    """One CRF in a fresh process: seconds, peak RSS; its labels saved for the agreement."""
    from landcover.segment.crf import CrfSettings

    settings = CrfSettings(**{**CrfSettings(downscale=1.0).to_dict(), **settings}).to_dict()
    result = fresh_process([which, str(work / f"image-{side}.npy"), str(work / f"probs-{side}.npy"),
                            str(work / f"{which}-{side}.npy"), json.dumps(settings)], CHILD)
    result["seconds_per_megapixel"] = result["seconds"] / (side * side / 1e6)
    return result


def hybrid(work: Path, quick: bool) -> dict:
    """Zion: the shared classifier (bench/common.py), then `predict --dense crf` timed in a fresh process."""
    bundle = zion_classifier(work)
    out = work / "dense.tif"
    extra = ["--decimate", "2"] if quick else []
    seconds = fresh_process(["predict", str(bundle), "--image", *zion_images(zion()), "--out", str(out), "--dense",
                             "crf", "--quiet", *extra])["seconds"]
    with rasterio.open(out) as src:
        km2 = src.width * src.height * abs(src.transform.a * src.transform.e) / 1e6
    return {"pixels": [src.height, src.width], "km2": km2, "seconds": seconds, "km2_per_hour": km2 / seconds * 3600,
            "decimate": 2 if quick else 1, "settings": "the seeds' (downscale 0.25)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16], help="megapixels")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not (DATA / "naip_nd").exists() or not (DATA / "zion").exists():
        sys.exit(f"real data not found in {DATA} (see ../shared/data/README.md)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [0.25] if args.quick else args.sizes
    sides = [round(float(np.sqrt(mp * 1e6))) for mp in sizes]
    reference = has_reference()
    work = Path(tempfile.mkdtemp(prefix="work-crf-", dir=out))
    try:
        mosaic = build_mosaic(work / "mosaic.tif", max(sides))
        rows = []
        for side in sides:
            with rasterio.open(mosaic) as src:
                image = src.read([1, 2, 3], window=Window(0, 0, side, side))
            np.save(work / f"image-{side}.npy", image)
            np.save(work / f"probs-{side}.npy", unaries(image))
            for name, settings in SETTINGS.items():
                ours = run("landcover", work, side, settings)
                row = {"megapixels": side * side / 1e6, "settings": name, "landcover": ours}
                if reference:
                    theirs = run("pydensecrf2", work, side, settings)
                    a, b = np.load(work / f"landcover-{side}.npy"), np.load(work / f"pydensecrf2-{side}.npy")
                    row.update(pydensecrf2=theirs, agreement=float((a == b).mean()),
                               speed_ratio=theirs["seconds"] / ours["seconds"],
                               memory_ratio=ours["peak_rss_mb"] / theirs["peak_rss_mb"])
                else:
                    row["pydensecrf2"] = "skipped: not installed (the bench extra)"
                rows.append(row)
                print(line(row), flush=True)
        result = {"quick": args.quick, "machine": machine("numba", "numpy"), "crf": rows,
                  "hybrid": hybrid(work, args.quick)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "crf.json").write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


def line(row: dict) -> str:
    ours, theirs = row["landcover"], row["pydensecrf2"]
    text = (f"{row['megapixels']:.2f} MP {row['settings']}: landcover {ours['seconds_per_megapixel']:.2f} s/MP "
            f"{ours['peak_rss_mb']:.0f} MB")
    if isinstance(theirs, dict):
        text += (f"; pydensecrf2 {theirs['seconds_per_megapixel']:.2f} s/MP {theirs['peak_rss_mb']:.0f} MB; "
                 f"agreement {row['agreement']:.4f}")
    return text


def report(result: dict) -> str:
    lines = ["| MP | settings | landcover s/MP | pydensecrf2 s/MP | speed (theirs / ours) | landcover peak MB | "
             "pydensecrf2 peak MB | labels agreeing |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["crf"]:
        ours, theirs = r["landcover"], r["pydensecrf2"]
        if isinstance(theirs, dict):
            lines.append(f"| {r['megapixels']:.2f} | {r['settings']} | {ours['seconds_per_megapixel']:.2f} | "
                         f"{theirs['seconds_per_megapixel']:.2f} | {r['speed_ratio']:.2f} | "
                         f"{ours['peak_rss_mb']:.0f} | {theirs['peak_rss_mb']:.0f} | {100 * r['agreement']:.2f}% |")
        else:
            lines.append(f"| {r['megapixels']:.2f} | {r['settings']} | {ours['seconds_per_megapixel']:.2f} | - | - | "
                         f"{ours['peak_rss_mb']:.0f} | - | - |")
    h = result["hybrid"]
    lines.append(f"\nhybrid dense map of Zion ({h['pixels'][0]} x {h['pixels'][1]} px, {h['km2']:,.0f} km², every "
                 f"{h['decimate']} tile): {h['seconds']:.1f} s, {h['km2_per_hour']:,.0f} km²/h")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
