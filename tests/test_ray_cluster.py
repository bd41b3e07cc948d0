"""A real Ray cluster on this machine (#30): a head and two worker nodes started as separate `ray start` processes on
127.0.0.1, each worker with its own resource; chips made on it equal one process's, the work spread over both
workers, tiled maps equal a local run's, and a worker node killed mid-run (its raylet and workers, by PID) costs
nothing but time, for chips and for tiles."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import skip_or_fail
from test_resume_engines import manifest, one_process_chips, zion_args

from landcover.chips.folder import STATE_DIR
from landcover.cli import main

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
NODES = ("landcover_node_a", "landcover_node_b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(*args: str, env: dict) -> None:
    done = subprocess.run([RAY, "start", "--disable-usage-stats",
                           "--object-store-memory", str(150 * 2 ** 20), *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def raylet_of(resource: str) -> int | None:
    """The PID of the raylet serving the node that holds `resource` (from /proc: its command line names it)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "raylet" in cmdline.split(" ")[0] and resource in cmdline:
                return int(proc.name)
    return None


def children(pid: int) -> list[int]:
    """Every process under `pid` (its Ray workers)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out += [int(proc.name), *children(int(proc.name))]
    return out


def kill_node_after(run: subprocess.Popen, folder: Path, pattern: str, count: int, resource: str,
                    seconds: float) -> int:
    """Once `count` files matching `pattern` are in `folder` (work the run has finished), kill the worker node that
    holds `resource` (its raylet and workers) while the run goes on; returns how many were there by then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(list(folder.glob(pattern))) < count and run.poll() is None:
        time.sleep(0.05)
    raylet = raylet_of(resource)
    assert raylet is not None and run.poll() is None, "the run ended before the node could be killed"
    for pid in [raylet, *children(raylet)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(list(folder.glob(pattern)))


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs (it schedules, never runs tasks) and two 1-CPU worker nodes, each with its own resource;
    stopped after the module's tests (the last kills a node): (its address, the environment its drivers need). Ray
    binds its servers to every interface whatever address it is given (it resolves 127.0.0.1 to the machine's
    address), so the cluster takes a token made for the test: a process without it cannot join or submit work.
    Drivers run as their own processes: Ray's core reads the token once, when Ray is first imported."""
    if importlib.util.find_spec("ray") is None:
        skip_or_fail("Ray is not installed")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "OMP_NUM_THREADS": "1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    ray_start("--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false", env=env)
    try:
        for name in NODES:
            ray_start("--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", json.dumps({name: 1}),
                      env=env)
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_chips_on_a_three_node_cluster_equal_one_process(cluster, tmp_path, zion, zion_images):
    address, env = cluster
    reference = one_process_chips(tmp_path, zion, zion_images)
    out = tmp_path / "cluster"
    argv = zion_args(zion, zion_images, out, "--block-tiles", "3", "--engine", "ray", "--ray-address", address)
    driver = ("import json, sys; from landcover import engine; from landcover.cli import main; "
              "code = main(sys.argv[1:]); print(json.dumps(engine.RAY_NODES)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", driver, *argv], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    pd.testing.assert_frame_equal(manifest(out), reference)
    for name in reference["path"]:  # every chip, byte for byte
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    print(f"chips on the cluster: tasks per node {sorted(nodes.values())}")
    assert len(nodes) == 2 and min(nodes.values()) >= 3  # both workers ran blocks, the head none


def test_tiles_mapped_on_the_cluster_equal_a_local_run(cluster, zion_pairs, zion_images, tmp_path):
    """`predict --tiles` with the pixel model: each tile written by the worker node that made it (named in its STAC
    item), the same bytes as the tiles one process writes, and still when a worker node is killed mid-run."""
    address, env = cluster
    runs = tmp_path / "runs"
    assert main(["train", "--quiet", "--task", "pixels", "--manifest", str(zion_pairs), "--runs", str(runs),
                 "--name", "px", "--pixels-per-class", "2000"]) == 0
    argv = ["predict", str(runs / "px" / "bundle"), "--image", *zion_images, "--tiles", "400px"]
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    done = subprocess.run([sys.executable, "-m", "landcover", *argv, "--out", str(tmp_path / "cluster"), "--engine",
                           "ray", "--ray-address", address], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    local = sorted((tmp_path / "local" / "tiles").glob("*.tif"))
    assert len(local) == 12
    for tile in local:
        assert tile.read_bytes() == (tmp_path / "cluster" / "tiles" / tile.name).read_bytes()
    nodes = [json.loads(p.read_text())["properties"]["landcover:node"]
             for p in (tmp_path / "cluster" / "items").glob("*.json")]
    print(f"tiles on the cluster: per node {sorted(nodes.count(n) for n in set(nodes))}")
    assert len(nodes) == 12 and len(set(nodes)) == 2  # both worker nodes wrote tiles
    # A worker node killed mid-run (its raylet and workers): its tiles are made on the other, each tile once, the
    # same bytes; then the node is started again for the tests after this one.
    fault = tmp_path / "fault"
    run = subprocess.Popen([sys.executable, "-m", "landcover", *argv, "--out", str(fault), "--engine", "ray",
                            "--ray-address", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    done_before = kill_node_after(run, fault / "tiles", "*.json", 2, NODES[0], 300)
    try:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        print(f"a worker node killed after {done_before} of 12 tiles: the run finished on the other")
        assert done_before < 12
        assert sorted(p.name for p in (fault / "tiles").glob("*.tif")) == [p.name for p in local]
        for tile in local:
            assert tile.read_bytes() == (fault / "tiles" / tile.name).read_bytes()
        summary = json.loads((fault / "tiles.json").read_text())
        assert summary["written"] == 12 and not summary["failed"]
    finally:
        ray_start("--address", address, "--num-cpus", "1", "--resources", json.dumps({NODES[0]: 1}), env=env)


def test_a_worker_node_killed_mid_run(cluster, tmp_path, zion, zion_images):
    """The run goes on on the surviving node (Ray retries the lost node's tasks): every chip once, the same
    manifest."""
    address, env = cluster
    reference = one_process_chips(tmp_path, zion, zion_images)
    out = tmp_path / "fault"
    argv = zion_args(zion, zion_images, out, "--block-tiles", "3", "--engine", "ray", "--ray-address", address)
    run = subprocess.Popen([sys.executable, "-m", "landcover", *argv], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    state = out / STATE_DIR
    done_before = kill_node_after(run, state, "b*.json", 4, NODES[1], 120)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    print(f"a worker node killed after {done_before} blocks: the run finished on the other")
    pd.testing.assert_frame_equal(manifest(out), reference)
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == sorted(map(Path, reference["path"]))
