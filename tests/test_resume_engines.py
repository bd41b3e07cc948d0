"""A killed run resumes to the same manifest; the process pool and Ray give what one process gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from landcover.chips.folder import STATE_DIR
from landcover.cli import main


def zion_args(zion, zion_images, out, *extra) -> list[str]:
    return ["chips", "--quiet", "--image", *zion_images, "--labels", str(zion / "nlcd2011.tif"),
            "--scheme", "nlcd-grouped", "--tile-size", "480m", "--rule", "purity:0.75",
            "--aoi", str(zion / "zion.gpkg"), "--out", str(out), *extra]


def manifest(out) -> pd.DataFrame:
    frame = pd.read_parquet(out / "manifest.parquet")
    frame["geometry"] = frame["geometry"].map(bytes)
    return frame


def one_process_chips(tmp_path, zion, zion_images) -> pd.DataFrame:
    """Zion's chips made in this process (blocks of 3 tiles) into tmp_path/reference: their manifest."""
    out = tmp_path / "reference"
    assert main(zion_args(zion, zion_images, out, "--block-tiles", "3")) == 0
    return manifest(out)


@pytest.fixture
def reference(tmp_path, zion, zion_images):
    return one_process_chips(tmp_path, zion, zion_images)


def test_killed_run_resumes_to_the_same_manifest(tmp_path, zion, zion_images, reference, capsys):
    out = tmp_path / "killed"
    argv = zion_args(zion, zion_images, out, "--block-tiles", "3")
    proc = subprocess.Popen([sys.executable, "-m", "landcover", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = out / STATE_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(state.glob("b*.json"))) < 10:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_blocks = len(list(state.glob("b*.json")))
    assert done_blocks >= 10 and not (out / "manifest.parquet").exists(), "the kill came too late to test"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert before
    capsys.readouterr()
    assert main(argv) == 0
    assert "resumed:" in capsys.readouterr().out
    pd.testing.assert_frame_equal(manifest(out), reference)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished chips were written again"
    assert not state.exists()
    assert main(argv) == 0 and "already complete" in capsys.readouterr().out


def test_a_finished_folder_is_not_overwritten_by_another_run(tmp_path, zion, zion_images, capsys):
    out = tmp_path / "chips"
    assert main(zion_args(zion, zion_images, out)) == 0
    assert main(zion_args(zion, zion_images, out, "--keep", "0.5")) == 2
    assert "holds a finished chips run" in capsys.readouterr().err
    assert main(zion_args(zion, zion_images, out, "--keep", "0.5", "--overwrite")) == 0


def test_process_pool_matches_one_process(tmp_path, zion, zion_images, reference):
    out = tmp_path / "pool"
    assert main(zion_args(zion, zion_images, out, "--block-tiles", "3", "--workers", "2")) == 0
    pd.testing.assert_frame_equal(manifest(out), reference)


@pytest.mark.slow
def test_ray_local_cluster_matches_one_process(tmp_path, zion, zion_images, reference, monkeypatch):
    """A local Ray engine starts its own instance, even where a past cluster's address lingers (here RAY_ADDRESS
    names a dead one, as a cluster once started with `ray start` leaves its address behind)."""
    pytest.importorskip("ray") if os.environ.get("CI") != "true" else None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    out = tmp_path / "ray"
    assert main(zion_args(zion, zion_images, out, "--block-tiles", "3", "--engine", "ray", "--workers", "2")) == 0
    pd.testing.assert_frame_equal(manifest(out), reference)
    pngs = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert pngs == sorted(p for p in map(__import__("pathlib").Path, reference["path"]))
