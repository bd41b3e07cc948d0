"""Every bench runs: `python bench/<name>.py --quick` completes on the real data and writes its JSON, so a change
that breaks a bench fails here, not months later. Timings are not asserted (benches run on an idle machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, need_data

pytestmark = pytest.mark.slow


def run_bench(name: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, f"bench/{name}.py --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_chips_bench(tmp_path):
    need_data("zion")
    done = run_bench("chips", tmp_path)
    result = json.loads((tmp_path / "chips.json").read_text())
    assert result["quick"] and "landcover keepall shards webdataset w1" in done.stdout
    runs = {(r["config"], r["layout"]): r for r in result["landcover"]}
    assert runs[("keepall", "shards")]["chips"] == result["grid"]["tiles"] == 6230
    assert runs[("keepall", "shards")]["files"] < 100 < runs[("points3", "folders")]["files"]
    exact = result["shards_exact"]
    assert exact["chips"] == exact["equal"] == 200
    assert result["per_pixel"]["label_agreement"] == 1.0
    assert not list(tmp_path.glob("work-*")), "the bench left its work folder"


def test_train_bench(tmp_path):
    need_data("zion")
    run_bench("train", tmp_path)
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["quick"] and result["settings"]["epochs"] == 1 and result["dataset"]["chips"] > 100
    for method in ("spectral", "features", "head", "all"):
        assert 0 <= result["methods"][method]["test_accuracy"] <= 1
    assert result["methods"]["spectral"]["test_accuracy"] > 0.7
    assert result["throughput"]["bare"]["images_per_s"] > 0


def test_accuracy_bench(tmp_path):
    need_data("zion")
    need_data("landsat_nc")
    done = run_bench("accuracy", tmp_path)
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert result["quick"] and set(result["datasets"]) == {"zion", "nc-points"}
    for name, data in result["datasets"].items():
        assert len(data["per_seed"]) == 1 and data["dataset"]["chips"] > 100
        summary = data["summary"]
        assert {"spectral", "spectral-gbt", "features", "fused", "finetune", "auto"} <= set(summary)
        assert summary["auto"]["chosen"][0] in ("spectral", "fused", "spectral-gbt", "finetune")
        shares = {m: row["test_share_better_than_spectral"]["mean"] for m, row in summary.items()
                  if "test_share_better_than_spectral" in row}
        assert "spectral" not in shares and set(shares) >= {"spectral-gbt", "finetune", "auto"}
        assert all(0 <= v <= 1 for v in shares.values())
        assert "test_predictions" not in data["per_seed"][0]["spectral"]  # per-chip predictions are not kept
        assert summary["spectral"]["test_accuracy"]["mean"] > 0.6, name
        assert f"{name}:" in done.stdout and "goal auto - best" in done.stdout
    assert not list(tmp_path.glob("accuracy-work-*")), "the bench left its work folder"


def test_predict_bench(tmp_path):
    need_data("naip_nd")
    run_bench("predict", tmp_path)
    result = json.loads((tmp_path / "predict.json").read_text())
    assert result["quick"] and result["large"]["windows"] == 16 and result["small"]["windows"] == 4
    assert result["large"]["runtime"] == "torch" and result["large_onnx"]["runtime"] == "onnx"
    assert result["engines"]["local, default runtime"]["runtime"] == "onnx"


def test_onnx_speed_bench(tmp_path):
    need_data("zion")
    run_bench("onnx_speed", tmp_path)
    result = json.loads((tmp_path / "onnx.json").read_text())
    assert {(t["bundle"], t["runtime"]) for t in result["timings"]} == {
        ("finetune", "torch"), ("finetune", "onnx"), ("features", "torch"), ("features", "onnx")}
    assert all(e["max_abs_diff"] <= 1e-4 for e in result["exports"].values())


def test_segmentation_bench(tmp_path):
    need_data("zion")
    need_data("naip_nd")
    run_bench("segmentation", tmp_path)
    result = json.loads((tmp_path / "segmentation.json").read_text())
    assert result["quick"] and result["epochs"] == 1 and result["pairs"]["test"] > 10
    methods = result["methods"]
    assert set(methods) == {"landcover", "random forest", "pixel model", "tile map", "torchgeo"}
    assert methods["pixel model"]["zion_pixels_per_s"]["pixels"] > 0
    for name, scores in methods.items():
        if name == "torchgeo" and "skipped" in scores:  # TorchGeo is the bench extra, not a dev dependency
            continue
        assert 0 < scores["miou"] <= scores["pixel_accuracy"] <= 1, name
        assert scores["pixels"] == methods["landcover"]["pixels"] > 50_000, name  # the same test pixels
    assert result["large"]["windows"] == 9 and result["small"]["windows"] == 1
    assert result["bare_loop"]["images_per_s"] > 0 and result["model_only_windows_per_second"] > 0


def test_crf_bench(tmp_path):
    need_data("naip_nd")
    need_data("zion")
    run_bench("crf", tmp_path)
    result = json.loads((tmp_path / "crf.json").read_text())
    assert result["quick"] and [r["settings"] for r in result["crf"]] == ["seed", "deeplab"]
    for row in result["crf"]:
        assert row["landcover"]["seconds_per_megapixel"] > 0 and row["megapixels"] == 0.25
        if isinstance(row["pydensecrf2"], dict):  # the reference is the bench extra, not a dev dependency
            assert row["agreement"] >= 0.98
    assert result["hybrid"]["km2"] > 1000 and result["hybrid"]["km2_per_hour"] > 0
    assert not list(tmp_path.glob("work-*")), "the bench left its work folder"


def test_annotate_bench(tmp_path):
    need_data("zion")
    run_bench("annotate", tmp_path)
    result = json.loads((tmp_path / "annotate.json").read_text())
    zion = result["tasks"]["zion"]
    assert result["quick"] and zion["clickable"] > 100_000 and zion["scored"] > 100_000
    for strategy in ("random", "suggested"):
        curve = zion["curves"][strategy]
        assert [c["clicks"] for c in curve] == [10, 20, 30] and all(0 < c["accuracy"] <= 1 for c in curve)
    first = [zion["curves"][s][0]["accuracy"] for s in ("random", "suggested")]
    assert first[0] == first[1]  # the same first round
    assert 0.5 < zion["reference"]["accuracy"] <= 1 and (tmp_path / "annotate.png").stat().st_size > 10_000


def test_studio_session_bench(tmp_path):
    need_data("naip_nd")
    run_bench("studio_session", tmp_path)
    result = json.loads((tmp_path / "studio_session.json").read_text())
    assert result["quick"] and result["levels"] == 4 and result["browser"]["failed"] == 0
    assert result["browser"]["panning_ms"]["tiles"] > 5 and result["server"]["level0_ms"]["tiles"] == 40
    labelling = result["labelling"]  # 3 rounds of 10 clicks on Zion in the page, then map all
    curve = labelling["curve"]
    # one session of 10-click rounds moves by a few hundredths either way: 30 clicks must map Zion better than the
    # annotator bench's 20 random clicks do on average (0.585)
    assert [c["clicks"] for c in curve] == [10, 20, 30] and curve[-1]["studio"] > 0.6
    assert labelling["largest_gap_to_annotate_bench"] == 0  # the model bench/annotate.py fits on the same clicks
    assert {"map.tif", "bundle/model.json", "labels.geojson", "assessment/accuracy.json"} <= set(
        labelling["map_all"]["files"]) and 0.4 < labelling["map_all"]["overall_accuracy"] < 1


def test_scale_bench(tmp_path):
    """Every way to map timed at 1 m and 30 m, a tiled run with its driver's share, the simulated driver, and the
    cost table built from them."""
    need_data("naip_nd")
    need_data("zion")
    run_bench("scale", tmp_path)
    result = json.loads((tmp_path / "scale.json").read_text())
    methods = {"tile map, torch", "tile map, onnxruntime", "U-Net", "pixel model", "dense CRF"}
    for res in ("1", "30"):
        assert set(result["throughput"][res]) == methods
        assert all(row["km2_per_hour_per_core"] > 0 and row["km2"] > 0 for row in result["throughput"][res].values())
    local = result["tiled"]["local, process pool x2"]
    assert local["tiles"] == 16 and 0 < local["driver_share"] < 1 and local["cog_bytes_per_pixel"] > 0
    assert local["equals_single_map"] and result["tiled"]["single_map_seconds"] > 0  # NAIP, byte for byte
    assert result["driver"]["simulated"][0]["tiles"] == 1000 and result["driver"]["resume_check_ms_per_tile"] > 0
    assert len(result["costs"]) == 2 * len(methods) * 3
    conus = next(r for r in result["costs"] if r["area"] == "CONUS" and r["res_m"] == 1 and r["method"] == "U-Net")
    middlesex = next(r for r in result["costs"] if r["area"].startswith("Middlesex") and r["res_m"] == 1
                     and r["method"] == "U-Net")
    assert conus["node_hours"] == pytest.approx(middlesex["node_hours"] * 8_100_000 / 2_200, rel=0.01)
