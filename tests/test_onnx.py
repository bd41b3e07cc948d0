"""ONNX export and the onnxruntime runtime on Zion bundles: same probabilities as torch, stale and missing graphs."""

from __future__ import annotations

import json
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.predict.runtime import choose_runtime, load_runtime

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def zion_bundles(tmp_path_factory, park_chips):
    """Zion park chips (see conftest), a bundle fine-tuned for 1 epoch, a features one."""
    chips, runs = park_chips, tmp_path_factory.mktemp("onnx") / "runs"
    common = ["train", "--quiet", "--manifest", str(chips), "--runs", str(runs), "--arch", "efficientnet-lite0",
              "--input-size", "32", "--batch-size", "16", "--rgb-bands", "3", "2", "1"]
    assert main([*common, "--name", "finetune", "--epochs", "1", "--train-from", "head"]) == 0
    assert main([*common, "--name", "features", "--mode", "features", "--head", "logreg", "--no-onnx"]) == 0
    return {"chips": chips, "finetune": runs / "finetune" / "bundle", "features": runs / "features" / "bundle"}


@pytest.fixture(scope="module")
def test_chips(zion_bundles):
    """Every chip, raw, as one float batch (what predict_dataset feeds a bundle)."""
    from landcover.train.data import ChipDataset

    dataset = ChipDataset(zion_bundles["chips"])
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def copy_bundle(zion_bundles, kind, tmp_path):
    return shutil.copytree(zion_bundles[kind], tmp_path / kind)


@pytest.mark.parametrize("kind", ["finetune", "features"])
def test_onnx_probabilities_match_torch(zion_bundles, test_chips, tmp_path, kind):
    from landcover.onnx_graph import export_onnx
    from landcover.predict.runtime import load_runtime, open_runtime

    bundle_path = copy_bundle(zion_bundles, kind, tmp_path)
    assert export_onnx(bundle_path) == bundle_path / "model.onnx"
    record = json.loads((bundle_path / "onnx.json").read_text())
    assert record["kind"] == kind and record["opset"] == 17 and record["input"] == {"name": "input", "bands": 4,
                                                                                      "size": 32}
    assert record["output"] == ("probabilities" if kind == "finetune" else "features")
    assert 0 <= record["max_abs_diff"] <= 1e-4 and record["checked_batch"] == 6
    if kind == "features":
        assert 0 < record["max_rel_feature_diff"] <= 1e-4
    assert not list(bundle_path.glob(".*.tmp"))
    onnx_rt = open_runtime(bundle_path, "onnx", threads=1)
    torch_rt = load_runtime(onnx_rt.bundle, "torch")
    assert (onnx_rt.name, torch_rt.name) == ("onnx", "torch")
    want = torch_rt.predict_proba(test_chips)
    got = onnx_rt.predict_proba(test_chips)
    assert len(test_chips) > 200 and got.shape == want.shape == (len(test_chips), 8)
    assert np.abs(got - want).max() <= 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert np.allclose(got.sum(1), 1, atol=1e-5)
    # The batch axis is dynamic: one chip at a time gives the same rows.
    single = np.concatenate([onnx_rt.predict_proba(test_chips[i:i + 1]) for i in range(5)])
    assert np.abs(single - got[:5]).max() <= 1e-5


def test_missing_and_stale_graphs_are_refused(zion_bundles, tmp_path):
    from landcover.onnx_graph import export_onnx
    from landcover.predict.runtime import open_runtime

    bundle_path = copy_bundle(zion_bundles, "finetune", tmp_path)
    (bundle_path / "model.onnx").unlink()
    with pytest.raises(LandcoverError, match=r"no model.onnx: run `landcover export-onnx .*finetune`"):
        open_runtime(bundle_path, "onnx")
    export_onnx(bundle_path)
    runtime = open_runtime(bundle_path, "onnx")
    assert open_runtime(bundle_path, "onnx") is runtime  # cached while the files are unchanged
    # Weights changed after the export (a retrained head written in place): the graph is stale.
    weights = load_file(bundle_path / "weights.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + 1.0
    save_file(weights, bundle_path / "weights.safetensors", metadata={"format": "pt"})
    with pytest.raises(LandcoverError, match=r"model.onnx is stale: its weights differ.*landcover export-onnx"):
        open_runtime(bundle_path, "onnx")
    export_onnx(bundle_path)
    assert open_runtime(bundle_path, "onnx") is not runtime
    # Another input size in model.json, a replaced graph, a lost record.
    meta = json.loads((bundle_path / "model.json").read_text())
    (bundle_path / "model.json").write_text(json.dumps({**meta, "input": {**meta["input"], "size": 64}}))
    with pytest.raises(LandcoverError, match=r"model.onnx is stale: its input differs"):
        open_runtime(bundle_path, "onnx")
    (bundle_path / "model.json").write_text(json.dumps(meta))
    with open(bundle_path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(LandcoverError, match=r"model.onnx changed after export"):
        open_runtime(bundle_path, "onnx")
    (bundle_path / "onnx.json").unlink()
    with pytest.raises(LandcoverError, match=r"onnx.json is missing or unreadable"):
        open_runtime(bundle_path, "onnx")


def test_features_graph_survives_a_new_head_but_not_a_new_backbone(zion_bundles, tmp_path):
    from landcover.onnx_graph import export_onnx
    from landcover.predict.runtime import open_runtime

    bundle_path = copy_bundle(zion_bundles, "features", tmp_path)
    export_onnx(bundle_path)
    # The head runs outside the graph: replacing it (here by the same head, rewritten) keeps model.onnx valid.
    (bundle_path / "head.json").write_text((bundle_path / "head.json").read_text() + "\n")
    assert open_runtime(bundle_path, "onnx").name == "onnx"
    meta = json.loads((bundle_path / "model.json").read_text())
    (bundle_path / "model.json").write_text(json.dumps({**meta, "input": {**meta["input"], "bands": [0, 1, 2]}}))
    with pytest.raises(LandcoverError, match=r"model.onnx is stale"):
        open_runtime(bundle_path, "onnx")


def test_export_refuses_a_graph_that_disagrees(zion_bundles, tmp_path, monkeypatch):
    import landcover.onnx_graph as onnx_graph

    bundle_path = copy_bundle(zion_bundles, "finetune", tmp_path)
    monkeypatch.setattr(onnx_graph, "TOLERANCE", -1.0)
    before = {n: (bundle_path / n).read_bytes() for n in ("model.onnx", "onnx.json")}
    with pytest.raises(LandcoverError, match=r"differ from torch's by up to .* model.onnx was not written"):
        onnx_graph.export_onnx(bundle_path)
    assert {n: (bundle_path / n).read_bytes() for n in before} == before  # the graph from training stays, as is
    for name in before:
        (bundle_path / name).unlink()
    with pytest.raises(LandcoverError, match=r"model.onnx was not written"):
        onnx_graph.export_onnx(bundle_path)
    assert not (bundle_path / "model.onnx").exists() and not (bundle_path / "onnx.json").exists()
    assert not list(bundle_path.glob(".*"))
    # check=False writes without comparing, and says so.
    onnx_graph.export_onnx(bundle_path, check=False)
    assert json.loads((bundle_path / "onnx.json").read_text())["max_abs_diff"] is None


def test_runtime_choice_errors_and_pickling(zion_bundles, tmp_path, monkeypatch):
    from landcover.bundle import load_bundle
    from landcover.onnx_graph import export_onnx
    from landcover.predict.runtime import TorchRuntime, choose_runtime, load_runtime, open_runtime

    bundle = load_bundle(zion_bundles["finetune"])
    with pytest.raises(LandcoverError, match=r"unknown runtime 'tensorrt' \(choose from auto, torch, onnx\)"):
        load_runtime(bundle, "tensorrt")
    runtime = load_runtime(bundle, "torch", threads=2)
    assert isinstance(runtime, TorchRuntime) and torch.get_num_threads() == 2
    # A runtime pickles as its bundle path: a worker process reopens it (the cache makes that free here).
    clone = pickle.loads(pickle.dumps(runtime))
    assert clone.name == "torch" and clone.bundle.path == bundle.path.resolve()
    bundle_path = copy_bundle(zion_bundles, "finetune", tmp_path)
    export_onnx(bundle_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(LandcoverError, match=r"needs onnxruntime: pip install onnxruntime"):
        open_runtime(bundle_path, "onnx")
    # auto falls back to torch without onnxruntime, and says why.
    assert choose_runtime(load_bundle(bundle_path))[0] == "torch"
    assert "needs onnxruntime" in choose_runtime(load_bundle(bundle_path))[1]


def test_training_writes_the_graph_and_auto_runs_it(zion_bundles, test_chips, tmp_path):
    """`landcover train` exports model.onnx (unless --no-onnx); predict's default runtime then runs it, with the
    probabilities torch gives within the recorded tolerance, and falls back to torch when the graph is stale."""
    from landcover.bundle import load_bundle

    finetune, features = zion_bundles["finetune"], zion_bundles["features"]
    summary = json.loads((finetune.parent / "summary.json").read_text())
    assert summary["onnx"].startswith("bundle/model.onnx written in") and "onnxruntime" in summary["onnx"]
    assert json.loads((features.parent / "summary.json").read_text())["onnx"].startswith("not written (--no-onnx)")
    assert not (features / "model.onnx").exists()
    bundle = load_bundle(finetune)
    name, why = choose_runtime(bundle)
    assert name == "onnx" and why.startswith("a fresh model.onnx")
    auto, torch_rt = load_runtime(bundle), load_runtime(bundle, "torch")
    record = json.loads((finetune / "onnx.json").read_text())
    got, want = auto.predict_proba(test_chips), torch_rt.predict_proba(test_chips)
    assert auto.name == "onnx" and np.abs(got - want).max() <= record["tolerance"]
    assert choose_runtime(load_bundle(features)) == ("torch", f"{features}: the bundle has no model.onnx: run "
                                                              f"`landcover export-onnx {features}`")
    stale = copy_bundle(zion_bundles, "finetune", tmp_path)
    weights = load_file(stale / "weights.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] - 1.0
    save_file(weights, stale / "weights.safetensors", metadata={"format": "pt"})
    name, why = choose_runtime(load_bundle(stale))
    assert name == "torch" and "model.onnx is stale" in why
