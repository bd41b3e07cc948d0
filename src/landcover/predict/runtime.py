"""Where a bundle's network runs: torch (the bundle itself) or onnxruntime (its ``model.onnx``, see
`landcover.onnx_graph`), and `auto`, the default: onnxruntime when the bundle holds a fresh graph and onnxruntime
is installed (about twice torch's speed on CPU), else torch.

A runtime has the contract of `Bundle.predict_proba`: raw chips (n, bands, h, w) in, class probabilities
(n, n_classes) out. Both runtimes apply `bundle.input.prepare` first; the ONNX graph starts from its output.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from landcover.bundle import Bundle, load_bundle
from landcover.errors import LandcoverError
from landcover.onnx_graph import INPUT_NAME, ONNX_FILE, check_onnx, import_onnxruntime, onnx_session

RUNTIMES = ("auto", "torch", "onnx")


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
        return self.bundle.head_proba(out, raw)


def load_runtime(bundle: Bundle, runtime: str = "auto", threads: int | None = None) -> Runtime:
    """A runtime for a loaded bundle: 'torch' (the bundle), 'onnx' (its model.onnx on onnxruntime), or 'auto'
    (onnx when `choose_runtime` finds a fresh graph, else torch)."""
    if threads is not None and threads < 1:
        raise LandcoverError(f"threads must be at least 1, got {threads}")
    name, _ = choose_runtime(bundle, runtime)
    return (OnnxRuntime if name == "onnx" else TorchRuntime)(bundle, threads)


def choose_runtime(bundle: Bundle, runtime: str = "auto") -> tuple[str, str]:
    """The runtime that will run this bundle, and why: 'onnx' or 'torch'. Asked for by name, a runtime that cannot
    run is an error before any work starts ('onnx' without onnxruntime or without a fresh graph); 'auto' picks
    onnx when it can and says why not when it cannot."""
    if runtime not in RUNTIMES:
        raise LandcoverError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    if runtime == "torch":
        return "torch", "asked for"
    if bundle.kind in ("spectral", "pixels"):  # features and a head: numpy, no network to export
        if runtime == "onnx":
            raise LandcoverError(f"a {bundle.kind} bundle has no network: its head runs on numpy (leave out "
                                 "--runtime)", bundle.path)
        what = "band statistics" if bundle.kind == "spectral" else "per-pixel filter features"
        return "torch", f"a {bundle.kind} bundle: {what} and a head, on numpy"
    if bundle.path is None:
        if runtime == "onnx":
            raise LandcoverError("the onnx runtime needs a saved bundle (its model.onnx lives in the bundle folder)")
        return "torch", "the bundle is not saved, so it has no model.onnx"
    try:
        import_onnxruntime()
        record = check_onnx(bundle)
    except LandcoverError as exc:
        if runtime == "onnx":
            raise
        return "torch", str(exc)
    diff = record.get("max_abs_diff")
    checked = f"{diff:.1e} from torch at export" if isinstance(diff, float) else "not checked against torch"
    return "onnx", f"{'asked for' if runtime == 'onnx' else 'a fresh model.onnx'}; {checked}"


def open_runtime(bundle_path: str | Path, runtime: str = "auto", threads: int | None = None) -> Runtime:
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

