"""Where a bundle's network runs: torch (the bundle itself) or onnxruntime (its exported ``model.onnx``).

A runtime has the contract of `Bundle.predict_proba`: raw chips (n, bands, h, w) in, class probabilities
(n, n_classes) out. Both runtimes apply `bundle.input.prepare` first; the ONNX graph starts from its output.
For a 'finetune' bundle the graph ends in the softmax (probabilities); for a 'features' bundle it ends in the
pooled features and the bundle's head (numpy) turns them into probabilities.

``<bundle>/onnx.json`` (written by `landcover.predict.onnx_export.export_onnx`) says what the graph was made from::

    format, version   "landcover-onnx", 1
    kind, architecture, output ("probabilities" or "features")
    input             {"name", "bands", "size"}: the graph's input is (batch, bands, size, size), float32
    opset, exporter   ONNX opset and which torch exporter wrote it
    source            {"what", "sha256"}: the weights file ('finetune'), or the frozen backbone's tensors
                      ('features': its head runs outside the graph, so changing the head does not stale it)
    onnx_sha256       the sha256 of model.onnx itself
    max_abs_diff      largest |probability difference| against torch measured at export (null: not checked)
    max_rel_feature_diff  'features' only: largest |feature difference| over the largest |feature|

A runtime refuses a model.onnx whose record does not match the bundle as it is now.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landcover.bundle import Bundle, load_bundle
from landcover.errors import LandcoverError

RUNTIMES = ("torch", "onnx")
ONNX_FILE = "model.onnx"
ONNX_RECORD = "onnx.json"
ONNX_FORMAT = "landcover-onnx"
ONNX_VERSION = 1
INPUT_NAME = "input"


class Runtime:
    """Runs a bundle's network on raw chip batches; subclasses say where."""

    name = ""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        self.bundle = bundle
        self.threads = threads

    def predict_proba(self, raw: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, n_classes) for a batch of raw chips (n, bands, h, w)."""
        raise NotImplementedError

    def __reduce__(self):
        """Pickle as (bundle path, runtime name, threads): a worker reopens the bundle instead of unpickling it."""
        if self.bundle.path is None:
            raise TypeError("a runtime over an unsaved bundle cannot be pickled")
        return open_runtime, (str(self.bundle.path), self.name, self.threads)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.bundle.path}, threads={self.threads})"


class TorchRuntime(Runtime):
    """The bundle's own torch network (`Bundle.predict_proba`)."""

    name = "torch"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        super().__init__(bundle, threads)
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread count

    def predict_proba(self, raw: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, n_classes) for a batch of raw chips (n, bands, h, w)."""
        return self.bundle.predict_proba(raw)


class OnnxRuntime(Runtime):
    """The bundle's exported model.onnx on onnxruntime's CPU execution provider."""

    name = "onnx"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        super().__init__(bundle, threads)
        self.record = check_onnx(bundle)
        self.session = onnx_session(bundle.path / ONNX_FILE, threads)

    def predict_proba(self, raw: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, n_classes) for a batch of raw chips (n, bands, h, w)."""
        x = self.bundle.input.prepare(raw).numpy()
        out = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
        if self.bundle.kind == "finetune":
            return out
        return self.bundle.head.predict_proba(out)


def load_runtime(bundle: Bundle, runtime: str = "torch", threads: int | None = None) -> Runtime:
    """A runtime for a loaded bundle: 'torch' (the bundle) or 'onnx' (its model.onnx on onnxruntime)."""
    if threads is not None and threads < 1:
        raise LandcoverError(f"threads must be at least 1, got {threads}")
    if runtime == "torch":
        return TorchRuntime(bundle, threads)
    if runtime == "onnx":
        if bundle.path is None:
            raise LandcoverError("the onnx runtime needs a saved bundle (its model.onnx lives in the bundle folder)")
        return OnnxRuntime(bundle, threads)
    raise LandcoverError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")


def check_runtime(bundle: Bundle, runtime: str) -> None:
    """Refuse, before any work starts, a runtime that cannot run this bundle: an unknown name, or 'onnx' without
    onnxruntime or without a fresh `landcover export-onnx` of the bundle."""
    if runtime not in RUNTIMES:
        raise LandcoverError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    if runtime == "onnx":
        if bundle.path is None:
            raise LandcoverError("the onnx runtime needs a saved bundle (its model.onnx lives in the bundle folder)")
        import_onnxruntime()
        check_onnx(bundle)


def open_runtime(bundle_path: str | Path, runtime: str = "torch", threads: int | None = None) -> Runtime:
    """Load a bundle and its runtime, reusing one already opened in this process while its files are unchanged."""
    if runtime not in RUNTIMES:
        raise LandcoverError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    path = Path(bundle_path).resolve()
    return _open_cached(path, runtime, threads, _files_state(path))


@functools.lru_cache(maxsize=4)
def _open_cached(path: Path, runtime: str, threads: int | None, state: tuple) -> Runtime:
    """open_runtime's cache: keyed on the bundle's path and its files' sizes and times."""
    return load_runtime(load_bundle(path), runtime, threads)


def _files_state(path: Path) -> tuple:
    """(name, size, mtime) of every file in the bundle folder: a rewritten bundle gets a new cache entry."""
    if not path.is_dir():
        return ()
    entries = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file():
            stat = entry.stat()
            entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


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
