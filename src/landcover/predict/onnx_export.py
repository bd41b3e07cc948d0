"""Export a bundle's network to ``<bundle>/model.onnx`` (and ``onnx.json``), checked against torch."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landcover.atomic import temp_path, write_text
from landcover.bundle import Bundle, load_bundle
from landcover.errors import LandcoverError
from landcover.models.backbones import pooled_features
from landcover.predict.runtime import INPUT_NAME, ONNX_FILE, ONNX_RECORD, expected_record, file_sha256, onnx_session
from landcover.version import __version__

TOLERANCE = 1e-4
"""Largest |probability difference| between onnxruntime and torch an export may have (for 'features' bundles
also the largest feature difference, relative to the largest |feature|)."""
CHECK_BATCH = 6
"""Chips in the fixed random batch the check runs (not the export's batch of 2, to exercise the dynamic axis)."""
CHECK_SEED = 0


class _Probabilities(nn.Module):
    """A 'finetune' network with its softmax: the graph ends in class probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


class _Features(nn.Module):
    """A 'features' backbone: the graph ends in the pooled features the bundle's head reads."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.model, x)


def export_onnx(bundle_path: str | Path, opset: int = 17, check: bool = True) -> Path:
    """Export a bundle's network to <bundle>/model.onnx (dynamic batch axis) for `runtime='onnx'` in predict, check
    it against torch on a test batch, and record the check in onnx.json; refuse a graph that disagrees with torch.
    Returns the graph's path."""
    if opset < 7:
        raise LandcoverError(f"opset {opset} is too old for these networks (use 13 or later; default 17)")
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise LandcoverError("exporting to ONNX needs onnx: pip install onnx onnxruntime") from None
    bundle = load_bundle(bundle_path)
    folder = Path(bundle.path)
    net = (_Probabilities if bundle.kind == "finetune" else _Features)(bundle.model).eval()
    output = "probabilities" if bundle.kind == "finetune" else "features"
    size, bands = bundle.input.size, len(bundle.input.bands)
    target = folder / ONNX_FILE
    tmp = temp_path(target)
    try:
        exporter = _export(net, torch.zeros(2, bands, size, size), tmp, opset, output)
        found = _check(bundle, net, tmp) if check else {}
        record = {
            **expected_record(bundle), "opset": _opset(tmp), "exporter": exporter, "onnx_sha256": file_sha256(tmp),
            "max_abs_diff": found.get("max_abs_diff"), "max_rel_feature_diff": found.get("max_rel_feature_diff"),
            "checked_batch": CHECK_BATCH if check else None, "tolerance": TOLERANCE,
            "torch": torch.__version__, "onnxruntime": _ort_version(), "landcover": __version__,
        }
        (folder / ONNX_RECORD).unlink(missing_ok=True)  # never a record beside a graph it does not describe
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    write_text(folder / ONNX_RECORD, json.dumps(record, indent=2) + "\n")
    return target


def _export(net: nn.Module, example: torch.Tensor, path: Path, opset: int, output: str) -> str:
    """Export with torch's TorchScript exporter, else its torch.export one; return which one wrote the file."""
    names = {"input_names": [INPUT_NAME], "output_names": [output]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}}, **names)
        return "torchscript"
    except Exception as legacy:  # removed or failing in a later torch: fall back to the torch.export exporter
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **names)
            return "dynamo"
        except Exception as exc:
            first = str(legacy).splitlines()[0] if str(legacy) else type(legacy).__name__
            raise LandcoverError(f"torch cannot export this network to ONNX ({first}; then "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                                 path.parent) from None


def _check(bundle: Bundle, net: nn.Module, path: Path) -> dict:
    """Compare onnxruntime on `path` with torch on a fixed batch; refuse differences over the tolerances."""
    x = _check_batch(bundle)
    with torch.no_grad():
        want = net(x).numpy().astype(np.float64)
    got = onnx_session(path).run(None, {INPUT_NAME: x.numpy()})[0].astype(np.float64)
    if got.shape != want.shape:
        raise LandcoverError(f"the exported graph gives shape {got.shape}, torch {want.shape}", bundle.path)
    found = {}
    if bundle.kind == "features":  # random chips can saturate the head: the features' error is checked as well
        found["max_rel_feature_diff"] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        want, got = bundle.head.predict_proba(want), bundle.head.predict_proba(got)
    found["max_abs_diff"] = float(np.abs(got - want).max())
    for key, what in (("max_abs_diff", "probabilities"), ("max_rel_feature_diff", "features (relative)")):
        if key in found and not found[key] <= TOLERANCE:
            raise LandcoverError(f"the exported graph's {what} differ from torch's by up to {found[key]:.2e} "
                                 f"(tolerance {TOLERANCE:.0e}); model.onnx was not written", bundle.path)
    return found


def _check_batch(bundle: Bundle) -> torch.Tensor:
    """Model input from fixed random raw chips through `InputSpec.prepare`: half noise, half near-uniform."""
    spec = bundle.input
    generator = torch.Generator().manual_seed(CHECK_SEED)
    n, bands, size = CHECK_BATCH, max(spec.bands) + 1, int(bundle.chip.get("size_px") or spec.size)
    unit = torch.rand(n, bands, size, size, generator=generator)
    base = 0.1 + 0.8 * torch.rand(n, bands, 1, 1, generator=generator)
    unit[n // 2:] = (base + 0.05 * torch.randn(n, bands, size, size, generator=generator))[n // 2:].clamp(0, 1)
    low = torch.zeros(bands)
    span = torch.ones(bands)
    for i, band in enumerate(spec.bands):
        low[band], span[band] = spec.low[i], spec.high[i] - spec.low[i]
    return spec.prepare(low.view(1, -1, 1, 1) + unit * span.view(1, -1, 1, 1))


def _opset(path: Path) -> int | None:
    """The graph's ONNX opset as written (torch's newer exporter may keep a later one than asked for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _ort_version() -> str | None:
    """onnxruntime's version (the check ran on it), or None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__
