"""Training (fine-tuning and frozen features), bundles, resume, evaluation and run history on Zion chips."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import need_data
from safetensors.torch import load_file

from landcover.cli import main

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def chips(park_chips):
    """Zion GeoTIFF chips inside the park (4 bands, uint16, 32 px), split by spatial blocks (shared, read-only)."""
    return park_chips


@pytest.fixture(scope="module")
def head_run(chips, tmp_path_factory):
    """One epoch of the head alone, batch norm frozen (ONNX left out): what the tests of bundles and evaluation
    read (read-only: copy before changing anything)."""
    runs = tmp_path_factory.mktemp("head") / "runs"
    assert main(train_args(chips, runs, "head", "--epochs", "1", "--train-from", "head", "--freeze-bn")) == 0
    return runs / "head"


def train_args(chips, runs, name, *extra) -> list[str]:
    return ["train", "--quiet", "--manifest", str(chips), "--runs", str(runs), "--name", name,
            "--arch", "efficientnet-lite0", "--input-size", "32", "--batch-size", "16", "--rgb-bands", "3", "2",
            "1", "--no-onnx", *map(str, extra)]


@pytest.mark.slow
def test_fine_tune_writes_a_complete_run_and_resumes_exactly(chips, tmp_path):
    runs = tmp_path / "runs"
    assert main(train_args(chips, runs, "straight", "--epochs", "2", "--train-from", "last-block")) == 0
    run = runs / "straight"
    for name in ("config.yaml", "metrics.csv", "curves.png", "summary.json", "checkpoints/last/model.safetensors",
                 "checkpoints/last/optimizer.safetensors", "checkpoints/best/state.json",
                 "bundle/weights.safetensors", "bundle/model.json"):
        assert (run / name).exists(), name
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss") and len(rows) == 3
    meta = json.loads((run / "bundle" / "model.json").read_text())
    assert meta["kind"] == "finetune" and meta["architecture"] == "efficientnet-lite0"
    assert [c["name"] for c in meta["classes"]][:2] == ["Water", "Developed"]
    assert meta["input"]["bands"] == [0, 1, 2, 3] and meta["input"]["size"] == 32
    assert meta["chip"]["size_px"] == 32 and meta["chip"]["res"] == 30.0
    assert meta["provenance"]["manifest_sha256"] and meta["provenance"]["config"]["epochs"] == 2
    # One epoch, then --resume to two: the same weights as two epochs straight (a step schedule, which does
    # not depend on the number of epochs, so extending the run changes nothing but its length).
    step = ["--train-from", "last-block", "--schedule", "step", "--step-size", "1"]
    assert main(train_args(chips, runs, "straight-step", "--epochs", "2", *step)) == 0
    assert main(train_args(chips, runs, "resumed", "--epochs", "1", *step)) == 0
    assert main(train_args(chips, runs, "resumed", "--epochs", "2", "--resume", *step)) == 0
    a = load_file(runs / "straight-step" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(runs / "resumed" / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [r.split(",") for r in (runs / "resumed" / "metrics.csv").read_text().splitlines()[1:]]
    straight = [r.split(",") for r in (runs / "straight-step" / "metrics.csv").read_text().splitlines()[1:]]
    assert [r[:7] for r in rows] == [r[:7] for r in straight]  # epoch, lr, losses and scores; not timings
    # The run history lists both, and compares them on one figure.
    assert main(["runs", "--runs", str(runs)]) == 0
    assert main(["runs", "compare", "straight", "resumed", "--runs", str(runs)]) == 0
    assert (runs / "compare.png").exists()


def test_head_only_leaves_the_backbone_untouched(head_run):
    from landcover.bundle import load_bundle
    from landcover.models import build_model

    trained = load_bundle(head_run / "bundle").model.state_dict()
    start, _ = build_model("efficientnet-lite0", 8, 4, "imagenet", (2, 1, 0))
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, trained[k])]
    assert changed and all(k.startswith("classifier") for k in changed)


@pytest.mark.parametrize("head", ["logreg", "rf"])
def test_frozen_features_with_a_classical_head(chips, tmp_path, head):
    runs = tmp_path / "runs"
    assert main(train_args(chips, runs, head, "--mode", "features", "--head", head)) == 0
    summary = json.loads((runs / head / "summary.json").read_text())
    assert summary["best_val_macro_f1"] > 0.2
    cache = list((runs / ".features-cache").glob("*.safetensors"))
    assert len(cache) == 2  # train and valid features, reused by the next head
    assert main(train_args(chips, runs, head + "2", "--mode", "features", "--head", head)) == 0
    assert sorted((runs / ".features-cache").glob("*.safetensors")) == sorted(cache)
    assert main(["evaluate", str(runs / head / "bundle"), "--manifest", str(chips), "--split", "test",
                 "--quiet"]) == 0
    report = json.loads((runs / head / "eval-test" / "report.json").read_text())
    assert 0 <= report["accuracy"] <= 1 and (runs / head / "eval-test" / "confusion.png").exists()


def test_evaluate_reports_what_the_bundle_predicts(head_run, chips, tmp_path):
    from landcover.bundle import load_bundle
    from landcover.predict.chips import predict_dataset
    from landcover.train.data import ChipDataset

    assert main(["evaluate", str(head_run / "bundle"), "--manifest", str(chips), "--split", "test",
                 "--quiet", "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    probs, labels = predict_dataset(load_bundle(head_run / "bundle"), ChipDataset(chips, "test"), progress=False)
    assert report["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_bad_input(chips, head_run, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"

    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err

    fails(train_args(chips, runs, "x", "--val-split", "nowhere"), "split 'nowhere' has no chips")
    fails(train_args(chips, runs, "x", "--bands", "1", "7"), "bands [1, 7] are out of range")
    fails(["evaluate", str(tmp_path), "--manifest", str(chips)], "model.json is missing")
    shutil.copytree(head_run, runs / "b")
    bundle = runs / "b" / "bundle"
    (bundle / "weights.safetensors").rename(bundle / "w.bak")
    fails(["evaluate", str(bundle), "--manifest", str(chips)], "weights file weights.safetensors is missing")
    (bundle / "w.bak").rename(bundle / "weights.safetensors")
    meta = json.loads((bundle / "model.json").read_text())
    (bundle / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    fails(["evaluate", str(bundle), "--manifest", str(chips)], "bundle format 99 is newer")
    (bundle / "model.json").write_text(json.dumps(meta))
    pickled = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1)}, pickled)
    fails(["evaluate", str(pickled), "--manifest", str(chips)], "is a pickle")
    fails(train_args(chips, runs, "nan", "--epochs", "1", "--lr", "1e30", "--optimizer", "sgd"),
          "the loss became")
    fails(train_args(chips, runs, "b", "--epochs", "1"), "the run folder exists")
    # A 4-band bundle on 3-band PNG chips.
    zion = need_data("zion")
    png = tmp_path / "png"
    images = [str(zion / f"landsat_b{b}.tif") for b in (2, 3, 4)]
    assert main(["chips", "--quiet", "--image", *images, "--labels", str(zion / "nlcd2011.tif"), "--scheme",
                 "nlcd-grouped", "--tile-size", "960m", "--rule", "purity:0.6", "--aoi", str(zion / "zion.gpkg"),
                 "--out", str(png)]) == 0
    assert main(["split", str(png), "--random", "--ratios", "80:20", "--no-plot"]) == 0
    fails(["evaluate", str(bundle), "--manifest", str(png), "--split", "valid"],
          "the bundle reads 4 bands but the chips have 3")
    # A manifest whose classes are not its scheme's.
    import geopandas as gpd

    from landcover.manifest import read_manifest, write_manifest

    frame, info = read_manifest(png / "manifest.parquet")
    frame.loc[frame.index[0], "label"] = "Glacier"
    write_manifest(gpd.GeoDataFrame(frame), png / "manifest.parquet", info)
    fails(train_args(png, runs, "unknown", "--epochs", "1"), "classes ['Glacier (")


@pytest.mark.slow
def test_two_process_data_parallel_training(chips, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", "-m", "landcover",
                           *train_args(chips, runs, "ddp", "--epochs", "1", "--weights", "none")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (runs / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and (runs / "ddp" / "bundle" / "model.json").exists()
    # Two nodes (#30): two torchrun launchers of one process each, a static rendezvous on 127.0.0.1 (node ranks 0
    # and 1, gloo): the same two ranks, so the same weights as the one-node run after the same steps.
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                               "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", "29543",
                               "-m", "landcover", *train_args(chips, runs, "two-nodes", "--epochs", "1", "--weights",
                                                              "none")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    one_node = load_file(runs / "ddp" / "bundle" / "weights.safetensors")
    two_nodes = load_file(runs / "two-nodes" / "bundle" / "weights.safetensors")
    assert one_node.keys() == two_nodes.keys()
    assert all(torch.equal(one_node[k], two_nodes[k]) for k in one_node)


def test_config_file_with_overrides_and_mlflow(chips, tmp_path, monkeypatch, capsys):
    import yaml

    mlflow = pytest.importorskip("mlflow") if os.environ.get("CI") != "true" else __import__("mlflow")
    runs = tmp_path / "runs"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"manifest": str(chips), "runs": str(runs), "name": "cfg", "mode": "features",
                                      "head": "logreg", "architecture": "efficientnet-lite0", "input_size": 32,
                                      "rgb_bands": [3, 2, 1], "lr": 0.5}))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store stands in for the user's server
    uri = f"file://{tmp_path / 'mlruns'}"
    assert main(["train", "--quiet", "--config", str(config), "--head", "rf", "--mlflow-uri", uri]) == 0
    resolved = yaml.safe_load((runs / "cfg" / "config.yaml").read_text())
    assert resolved["head"] == "rf" and resolved["lr"] == 0.5 and resolved["mode"] == "features"
    client = mlflow.tracking.MlflowClient(uri)
    logged = client.search_runs([client.get_experiment_by_name("landcover").experiment_id])
    assert len(logged) == 1 and logged[0].data.params["head"] == "rf" and "val_macro_f1" in logged[0].data.metrics
    config.write_text(config.read_text() + "learning_rate: 0.1\n")
    assert main(["train", "--quiet", "--config", str(config)]) == 2
    assert "unknown config keys ['learning_rate']" in capsys.readouterr().err
