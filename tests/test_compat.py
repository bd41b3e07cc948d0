"""Tests for landcover.compat, run in fresh interpreters so import order is real."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _require(module: str) -> None:
    """Skip when ``module`` is missing, except under CI where it must be installed."""
    # find_spec, not importorskip: importing torchvision unguarded raises RuntimeError.
    if os.environ.get("CI") != "true" and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter with ``src`` importable; return its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("module", ["torchvision", "timm"])
def test_guard_then_import(module: str) -> None:
    """Importing torchvision, or a library built on it, works after the guard."""
    _require("torchvision")
    _require(module)
    out = _run(
        f"""
        from landcover.compat import guard_torchvision

        guard_torchvision()
        import {module}

        print("imported")
        """
    )
    assert out.split() == ["imported"]


@pytest.fixture(scope="module")
def guarded() -> dict:
    """One fresh interpreter: the guard called three times (the first call's answer, whether the second changed
    anything), then the replaced operators run on known inputs. What each test below reads."""
    _require("torchvision")
    return json.loads(_run(
        """
        import json
        import sys

        from landcover import compat

        first = compat.guard_torchvision()
        state = (list(sys.meta_path), list(compat._LIBRARIES))
        second = compat.guard_torchvision()
        unchanged = state == (list(sys.meta_path), list(compat._LIBRARIES))
        import torch
        import torchvision
        from torchvision.ops import batched_nms, nms, roi_align

        unsupported = None
        if first:
            try:
                torchvision.ops.roi_pool(torch.rand(1, 1, 4, 4), torch.zeros(1, 5), 2)
            except NotImplementedError as error:
                unsupported = "roi_pool" in str(error)
        idempotent = {"calls": [first, second, compat.guard_torchvision()], "unchanged": unchanged,
                      "unsupported": unsupported}

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0],
                              [5.0, 0.0, 15.0, 10.0]])
        scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
        empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
        found = {"half": nms(boxes, scores, 0.5).tolist(), "third": nms(boxes, scores, 0.3).tolist(),
                 "dtype": str(nms(boxes, scores, 0.5).dtype),
                 "batched": batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.3).tolist(),
                 "empty": [empty.numel(), str(empty.dtype)]}

        ramp = torch.arange(8.0).repeat(8, 1)[None, None]  # value == x
        rois = torch.tensor([[0.0, 1.0, 1.0, 5.0, 5.0]], requires_grad=False)
        features = ramp.clone().requires_grad_()
        pooled = roi_align(features, rois, 2, 1.0, 2, True)
        pooled.sum().backward()
        roi = {"pooled": pooled[0, 0].tolist(), "grad_sum": features.grad.sum().item()}
        print(json.dumps({"idempotent": idempotent, "nms": found, "roi_align": roi}))
        """
    ))


def test_nms_known_example(guarded: dict) -> None:
    """The nms operator keeps the expected boxes, best score first."""
    result = guarded["nms"]
    assert result["half"] == [3, 0, 2]
    assert result["third"] == [3, 2]
    assert result["dtype"] == "torch.int64"
    assert result["batched"] == [3, 1, 2]
    assert result["empty"] == [0, "torch.int64"]


def test_roi_align_linear_ramp(guarded: dict) -> None:
    """roi_align samples a linear ramp exactly at the bin centres."""
    result = guarded["roi_align"]
    # aligned=True shifts by half a pixel: bins span x in [0.5, 2.5] and [2.5, 4.5].
    pooled = [value for row in result["pooled"] for value in row]
    assert pooled == pytest.approx([1.5, 3.5, 1.5, 3.5])
    assert result["grad_sum"] == pytest.approx(4.0)


def test_guard_is_idempotent(guarded: dict) -> None:
    """A second call changes nothing and returns the first call's answer."""
    result = guarded["idempotent"]
    first = result["calls"][0]
    assert isinstance(first, bool)
    assert result["calls"] == [first, first, first]
    assert result["unchanged"]
    assert result["unsupported"] in ({True} if first else {None})
