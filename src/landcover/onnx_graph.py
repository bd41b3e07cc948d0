"""A bundle's ONNX graph: ``<bundle>/model.onnx`` exported from its network and checked against torch, and
``<bundle>/onnx.json``, the record that says what the graph was made from::

    format, version   "landcover-onnx", 1
    kind, architecture, output ("probabilities" or "features")
    input             {"name", "bands", "size"}: the graph's input is (batch, bands, size, size), float32
    opset, exporter   ONNX opset and which torch exporter wrote it
    source            {"what", "sha256"}: the weights file ('finetune'), or the frozen backbone's tensors
                      ('features': its head runs outside the graph, so changing the head does not stale it)
    onnx_sha256       the sha256 of model.onnx itself
    max_abs_diff      largest |probability difference| against torch measured at export (null: not checked)
    max_rel_feature_diff  'features' only: largest |feature difference| over the largest |feature|

For a 'finetune' bundle the graph ends in the softmax (probabilities); for a 'features' bundle in the pooled
features, which the bundle's head (numpy) turns into probabilities. The graph is part of the bundle contract
(training writes it, prediction runs it), so it lives beside `bundle.py`; `check_onnx` refuses a graph whose
record does not match the bundle as it is now.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landcover.atomic import temp_path, write_text
from landcover.bundle import Bundle, load_bundle
from landcover.errors import LandcoverError
from landcover.models.backbones import pooled_features
from landcover.version import __version__

ONNX_FILE = "model.onnx"
ONNX_RECORD = "onnx.json"
ONNX_FORMAT = "landcover-onnx"
ONNX_VERSION = 1
INPUT_NAME = "input"
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
    if bundle.model is None:
        raise LandcoverError(f"a {bundle.kind} bundle has no network to export (its head runs on numpy)",
                             bundle.path)
    net = (_Probabilities if bundle.kind == "finetune" else _Features)(bundle.model).eval()
    output = "probabilities" if bundle.kind == "finetune" else "features"
    size, bands = bundle.input.size, len(bundle.input.bands)
    target = folder / ONNX_FILE
    tmp = temp_path(target)
    try:
        exporter = _export(net, torch.zeros(2, bands, size, size), tmp, opset, output, bundle.task == "segmentation")
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


def _export(net: nn.Module, example: torch.Tensor, path: Path, opset: int, output: str, any_size: bool) -> str:
    """Export with torch's TorchScript exporter, else its torch.export one; return which one wrote the file.
    The batch axis is dynamic; with `any_size` (segmentation: windows of any size) height and width too."""
    names = {"input_names": [INPUT_NAME], "output_names": [output]}
    axes = {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                              dynamic_axes={INPUT_NAME: axes, output: axes}, **names)
        return "torchscript"
    except Exception as legacy:  # removed or failing in a later torch: fall back to the torch.export exporter
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                                  dynamic_shapes=({k: torch.export.Dim(v) for k, v in axes.items()},), verbose=False,
                                  **names)
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
    if bundle.kind != "finetune":  # random chips can saturate the head: the features' error is checked as well
        found["max_rel_feature_diff"] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        if bundle.spectral is not None:  # fused: the spectral part is numpy, the same on both sides
            zeros = np.zeros((len(want), len(bundle.spectral.names)))
            want, got = np.hstack([want, zeros]), np.hstack([got, zeros])
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


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession on the CPU provider (`threads` intra-op threads; None: its default)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise LandcoverError(f"onnxruntime cannot load the graph ({str(exc).splitlines()[0]}); rerun "
                             f"`landcover export-onnx {path.parent}`", path) from None


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a LandcoverError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise LandcoverError("the onnx runtime needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def source_fingerprint(bundle: Bundle) -> dict:
    """What an ONNX export of this bundle depends on: the weights file, or the frozen backbone's tensors."""
    if bundle.kind == "finetune":
        return {"what": "weights.safetensors", "sha256": file_sha256(bundle.path / "weights.safetensors")}
    digest = hashlib.sha256()
    for name, tensor in sorted(bundle.model.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return {"what": f"backbone tensors ({bundle.backbone_weights})", "sha256": digest.hexdigest()}


def expected_record(bundle: Bundle) -> dict:
    """The onnx.json fields that must match the bundle as it is now."""
    return {
        "format": ONNX_FORMAT, "version": ONNX_VERSION, "kind": bundle.kind, "architecture": bundle.architecture,
        "output": "probabilities" if bundle.kind == "finetune" else "features",
        "input": {"name": INPUT_NAME, "bands": len(bundle.input.bands), "size": bundle.input.size},
        "source": source_fingerprint(bundle),
    }


def check_onnx(bundle: Bundle) -> dict:
    """Read onnx.json and refuse a missing or stale model.onnx (one exported from other weights or input)."""
    folder = Path(bundle.path)
    fix = f"run `landcover export-onnx {folder}`"
    graph, record_path = folder / ONNX_FILE, folder / ONNX_RECORD
    if not graph.is_file():
        raise LandcoverError(f"the bundle has no {ONNX_FILE}: {fix}", folder)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        raise LandcoverError(f"{ONNX_RECORD} is missing or unreadable, so {ONNX_FILE} cannot be trusted: {fix}",
                             folder) from None
    if not isinstance(record, dict):
        raise LandcoverError(f"{ONNX_RECORD} is not a JSON object: {fix}", record_path)
    for key, want in expected_record(bundle).items():
        if record.get(key) != want:
            what = "weights differ" if key == "source" else f"{key} differs"
            raise LandcoverError(f"{ONNX_FILE} is stale: its {what} from the bundle's (exported from "
                                 f"{_short(record.get(key))}, now {_short(want)}): {fix}", folder)
    if record.get("onnx_sha256") != file_sha256(graph):
        raise LandcoverError(f"{ONNX_FILE} changed after export (sha256 differs from {ONNX_RECORD}): {fix}", folder)
    return record


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _short(value: object) -> str:
    """A record value for a one-line message (hashes cut to 12 characters)."""
    if isinstance(value, dict) and "sha256" in value:
        return f"sha256 {str(value['sha256'])[:12]}"
    return json.dumps(value)
