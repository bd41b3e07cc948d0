"""What the benches share: where the real data is, what machine the figures were taken on, a landcover command run
in this process or in a fresh one (its seconds and peak memory), and the Zion classifier several benches time."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LANDCOVER_DATA", ROOT.parent / "shared" / "data"))
ZION_BANDS = ("b2", "b3", "b4", "b5")

CLI_CHILD = """
import json, sys, time
from landcover.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over the exec)
peak = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0] / 1024
print("BENCH " + json.dumps({"rc": rc, "seconds": time.perf_counter() - t, "peak_rss_mb": peak}))
"""
"""A landcover command in a fresh process, printing its seconds and peak memory on a line of its own."""


def say(text: str) -> None:
    """A progress line on stderr, so stdout keeps only the results."""
    print(text, file=sys.stderr, flush=True)


def load() -> float:
    """The 1-minute load average (other jobs on the machine disturb the timings)."""
    return round(os.getloadavg()[0], 2)


def data_folder(name: str, *needed: str) -> Path:
    """A folder of the shared real data ($LANDCOVER_DATA or ../shared/data), or exit saying what is missing."""
    folder = DATA / name
    missing = [n for n in needed if not (folder / n).exists()] if folder.exists() else [name]
    if missing:
        sys.exit(f"{Path(sys.argv[0]).name}: real data not found: {folder} lacks {', '.join(missing)}. It is read "
                 "from ../shared/data beside the repository, or $LANDCOVER_DATA; see that folder's README. Nothing "
                 "was measured.")
    return folder


def zion() -> Path:
    """The Zion folder (Landsat 8 bands 2-5, NLCD 2011, the park), or exit."""
    return data_folder("zion", *[f"landsat_{b}.tif" for b in ZION_BANDS], "nlcd2011.tif", "zion.gpkg")


def zion_images(folder: Path) -> list[str]:
    return [str(folder / f"landsat_{b}.tif") for b in ZION_BANDS]


def machine(*packages: str) -> dict:
    """What the figures were taken on: cores, platform, Python, GDAL and the versions of `packages`."""
    import rasterio

    versions = {}
    for name in ("landcover", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or None,
            "python": platform.python_version(), "gdal": rasterio.__gdal_version__, "versions": versions}


def landcover_cli(argv: list[str]) -> tuple[float, str]:
    """One `landcover` command in this process: (seconds, what it printed); raise if it fails."""
    from landcover import cli

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        status = cli.main(argv)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"landcover {' '.join(argv)} exited with {status}:\n{out.getvalue()}")
    return seconds, out.getvalue()


def fresh_process(argv: list[str], code: str = CLI_CHILD) -> dict:
    """`code` (by default one landcover command, `argv` its arguments) in a fresh Python process, from the repository
    root: the JSON of its BENCH line (seconds, peak memory); exit with its output if it fails."""
    cmd = [sys.executable, "-c", code, *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    line = [x for x in done.stdout.splitlines() if x.startswith("BENCH ")]
    if done.returncode or not line or json.loads(line[-1][6:]).get("rc"):
        sys.exit(f"failed: {' '.join(cmd[3:])}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(line[-1][6:])


def zion_classifier(work: Path, input_size: int = 32, aoi: Path | None = None) -> Path:
    """The classifier the tests also share: true-colour 480 m chips of Zion where 3 x 3 NLCD points agree (inside
    `aoi` if given), split by blocks of 4 x 4 80:10:10, frozen Lite0 features at `input_size` px + logistic
    regression. Returns the bundle."""
    folder = zion()
    chips, runs = work / "chips", work / "runs"
    landcover_cli(["chips", "--quiet", "--image", *zion_images(folder), "--bands", "3", "2", "1", "--labels",
                   str(folder / "nlcd2011.tif"), "--scheme", "nlcd-grouped", "--tile-size", "480m", "--rule",
                   "points:3", "--out", str(chips), *(["--aoi", str(aoi)] if aoi else [])])
    landcover_cli(["split", str(chips), "--blocks", "4", "--ratios", "80:10:10", "--no-plot"])
    landcover_cli(["train", "--quiet", "--manifest", str(chips), "--runs", str(runs), "--name", "b", "--mode",
                   "features", "--head", "logreg", "--arch", "efficientnet-lite0", "--input-size", str(input_size)])
    return runs / "b" / "bundle"


@contextlib.contextmanager
def workspace(out: Path, keep: bool, prefix: str) -> Iterator[Path]:
    """A temporary work folder under `out`, removed afterwards unless kept."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    try:
        yield work
    finally:
        if keep:
            say(f"kept the work folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def model_only(bundle: Path, shape: tuple[int, int, int, int], runtime: str = "torch") -> float:
    """Windows per second of a bundle's network alone on an in-memory batch of random 8-bit windows of `shape`
    (batch, bands, side, side): the best of 3 after a warm-up."""
    import numpy as np
    import torch

    from landcover.predict.runtime import open_runtime

    rt = open_runtime(bundle, runtime)
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape).astype(np.float32))
    rt.predict_proba(batch)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        rt.predict_proba(batch)
        best = max(best, shape[0] / (time.perf_counter() - start))
    return best
