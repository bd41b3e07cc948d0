"""Compatibility guards for third-party libraries that landcover imports.

The torchvision wheel on the package registry is a CUDA build whose compiled
``_C`` extension does not load next to a CPU-only torch. torchvision then fails
at import time (``operator torchvision::nms does not exist``) and so do timm and
torchgeo, which import it. :func:`guard_torchvision` defines the
``torchvision::*`` operators with pure-torch kernels before torchvision is first
imported, so that those imports succeed, and leaves everything untouched where
the real compiled operators load.

Fallback kernels: ``nms`` and ``qnms`` (greedy non-maximum suppression),
``roi_align`` and its backward, and ``_cuda_version``. The remaining operators
(``roi_pool``, ``ps_roi_align``, ``ps_roi_pool``, ``deform_conv2d``,
``qroi_align``, ``box_iou_rotated`` and their backwards) are defined so that
torchvision can register its meta kernels, but raise :class:`NotImplementedError`
when called.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import math
import sys
from typing import TYPE_CHECKING, Final, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import ModuleType

    import torch

__all__ = ["guard_torchvision"]

_NAMESPACE: Final = "torchvision"
_EXTENSION_MODULE: Final = "torchvision.extension"

# Schemas of the operators that torchvision's Python code looks up or registers
# kernels for when its compiled extension reports itself as loaded.
_SCHEMAS: Final[dict[str, str]] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": (
        "roi_align(Tensor input, Tensor rois, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
        "bool aligned) -> Tensor"
    ),
    "_roi_align_backward": (
        "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
        "bool aligned) -> Tensor"
    ),
    "qroi_align": (
        "qroi_align(Tensor input, Tensor rois, float input_scale, "
        "int input_zero_point, float rois_scale, int rois_zero_point, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "roi_pool": (
        "roi_pool(Tensor input, Tensor rois, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_roi_pool_backward": (
        "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
        "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "ps_roi_align": (
        "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, int sampling_ratio) "
        "-> (Tensor, Tensor)"
    ),
    "_ps_roi_align_backward": (
        "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
        "int sampling_ratio, SymInt batch_size, SymInt channels, SymInt height, "
        "SymInt width) -> Tensor"
    ),
    "ps_roi_pool": (
        "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_ps_roi_pool_backward": (
        "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
        "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "deform_conv2d": (
        "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, "
        "Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
        "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, "
        "bool use_mask) -> Tensor"
    ),
    "_deform_conv2d_backward": (
        "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, "
        "Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, "
        "SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
        "SymInt groups, SymInt offset_groups, bool use_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "_cuda_version": "_cuda_version() -> int",
}

# Keeps the operator library alive: dropping it would unregister the fallbacks.
_LIBRARIES: list[object] = []


@functools.cache
def guard_torchvision() -> bool:
    """Register pure-torch torchvision operators if the compiled ones cannot load."""
    return _install_fallbacks()


def _install_fallbacks() -> bool:
    """Define the fallback operators and patch torchvision's extension check."""
    if importlib.util.find_spec("torch") is None:
        return False
    spec = importlib.util.find_spec(_NAMESPACE)
    if spec is None or _operators_available():
        return False
    _register_operators()
    extension = sys.modules.get(_EXTENSION_MODULE)
    if extension is not None:
        _mark_ops_loaded(extension)
    else:
        sys.meta_path.insert(0, _ExtensionFinder())
    return True


def _operators_available() -> bool:
    """Tell whether ``torchvision::nms`` exists or the compiled extension loads."""
    import torch

    if hasattr(getattr(torch.ops, _NAMESPACE), "nms"):
        return True
    path = _extension_path()
    if path is None:
        return False
    try:
        torch.ops.load_library(path)
    except (OSError, ImportError, RuntimeError):
        return False
    return hasattr(getattr(torch.ops, _NAMESPACE), "nms")


def _extension_path() -> str | None:
    """Locate torchvision's compiled ``_C`` extension without importing torchvision."""
    spec = importlib.util.find_spec(_NAMESPACE)
    if spec is None or not spec.submodule_search_locations:
        return None
    loader_details = (
        importlib.machinery.ExtensionFileLoader,
        importlib.machinery.EXTENSION_SUFFIXES,
    )
    for location in spec.submodule_search_locations:
        found = importlib.machinery.FileFinder(location, loader_details).find_spec("_C")
        if found is not None and found.origin is not None:
            return found.origin
    return None


def _register_operators() -> None:
    """Define every ``torchvision::*`` schema and attach the pure-torch kernels."""
    import torch

    library = torch.library.Library(_NAMESPACE, "DEF")
    for schema in _SCHEMAS.values():
        library.define(schema)
    kernels = {
        "nms": _nms_kernel,
        "qnms": _qnms_kernel,
        "roi_align": _roi_align_kernel,
        "_roi_align_backward": _roi_align_backward_kernel,
    }
    for name in _SCHEMAS:
        if name == "_cuda_version":
            continue
        library.impl(name, kernels.get(name, _unsupported(name)), "CompositeExplicitAutograd")
    library.impl("_cuda_version", _cuda_version_kernel, "CompositeImplicitAutograd")
    _LIBRARIES.append(library)


def _mark_ops_loaded(extension: ModuleType) -> None:
    """Make torchvision's ``_has_ops()`` report the fallback operators as available."""

    def has_ops() -> bool:
        """Report that ``torchvision::*`` operators are available (fallback kernels)."""
        return True

    extension._has_ops = has_ops


class _PatchingLoader(importlib.abc.Loader):
    """Loader that runs ``torchvision.extension``, then marks the ops as loaded."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        """Wrap the loader that would normally execute ``torchvision.extension``."""
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        """Delegate module creation to the wrapped loader."""
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Execute the module, then patch its ``_has_ops``."""
        self._loader.exec_module(module)
        _mark_ops_loaded(module)


class _ExtensionFinder(importlib.abc.MetaPathFinder):
    """One-shot finder that wraps the loader of ``torchvision.extension``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        """Return a patched spec for ``torchvision.extension``, None for others."""
        if fullname != _EXTENSION_MODULE:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def _unsupported(name: str) -> Callable[..., NoReturn]:
    """Build a kernel that raises for an operator without a pure-torch fallback."""

    def kernel(*_args: object) -> NoReturn:
        """Raise because this operator has no fallback implementation."""
        message = (
            f"torchvision::{name} is unavailable: torchvision's compiled operators do "
            "not load with this torch build, and landcover only provides pure-torch "
            "fallbacks for nms and roi_align"
        )
        raise NotImplementedError(message)

    return kernel


def _cuda_version_kernel() -> int:
    """Report that the fallback operators were built without CUDA."""
    return -1


def _nms_kernel(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of ``(x1, y1, x2, y2)`` boxes, best first."""
    import torch

    if dets.dim() != 2 or dets.size(1) != 4:
        msg = f"boxes should be a [N, 4] tensor, got shape {tuple(dets.shape)}"
        raise ValueError(msg)
    if scores.dim() != 1 or scores.size(0) != dets.size(0):
        shape = tuple(scores.shape)
        msg = f"scores should be a [N] tensor matching boxes, got shape {shape}"
        raise ValueError(msg)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = dets[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    remaining = torch.arange(boxes.size(0), device=dets.device)
    keep: list[torch.Tensor] = []
    while remaining.numel() > 0:
        best, rest = remaining[0], remaining[1:]
        keep.append(best)
        width = (torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest])).clamp(min=0)
        height = (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest])).clamp(min=0)
        inter = width * height
        iou = inter / (areas[best] + areas[rest] - inter)
        # "Not above" rather than "at most": a NaN overlap (degenerate boxes) keeps
        # the box, as upstream does.
        remaining = rest[~(iou > iou_threshold)]
    if not keep:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    return order[torch.stack(keep)]


def _qnms_kernel(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression on the integer representation of quantized inputs."""
    return _nms_kernel(dets.double(), scores.double(), iou_threshold)


def _axis_weights(
    start: float,
    extent: float,
    pooled: int,
    grid: int,
    length: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, int, int]:
    """Bilinear sampling weights along one axis, with the span of pixels they cover."""
    import torch

    dtype = torch.promote_types(like.dtype, torch.float32)
    bin_size = extent / pooled
    bins = torch.arange(pooled, dtype=dtype, device=like.device)[:, None]
    offsets = torch.arange(grid, dtype=dtype, device=like.device)[None, :] + 0.5
    pos = start + bins * bin_size + offsets * (bin_size / grid)
    valid = (pos >= -1) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= length - 1
    low = torch.where(at_edge, length - 1, low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, 0.0, pos - low.to(dtype))
    scale = valid.to(dtype) / grid
    first, stop = int(low.min()), int(high.max()) + 1
    weights = torch.zeros(pooled, stop - first, dtype=dtype, device=like.device)
    weights.scatter_add_(1, low - first, (1 - frac) * scale)
    weights.scatter_add_(1, high - first, frac * scale)
    return weights.to(like.dtype), first, stop


def _roi_geometry(
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> list[tuple[int, float, float, float, float, int, int]]:
    """Per RoI: batch index, start y/x, height/width and sampling grid rows/cols."""
    offset = 0.5 if aligned else 0.0
    geometry = []
    for batch, x1, y1, x2, y2 in rois.tolist():
        start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        width, height = (
            x2 * spatial_scale - offset - start_x,
            y2 * spatial_scale - offset - start_y,
        )
        if not aligned:
            width, height = max(width, 1.0), max(height, 1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(height / pooled_height)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(width / pooled_width)
        geometry.append((int(batch), start_y, start_x, height, width, grid_h, grid_w))
    return geometry


def _roi_align_kernel(
    features: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """RoI Align: average of bilinear samples over each output bin of every RoI."""
    import torch

    _, channels, height, width = features.shape
    output = features.new_zeros(rois.size(0), channels, pooled_height, pooled_width)
    if output.numel() == 0:
        return output
    geometry = _roi_geometry(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    for k, (batch, start_y, start_x, roi_h, roi_w, grid_h, grid_w) in enumerate(geometry):
        if grid_h <= 0 or grid_w <= 0:
            continue
        wy, y0, y1 = _axis_weights(start_y, roi_h, pooled_height, grid_h, height, features)
        wx, x0, x1 = _axis_weights(start_x, roi_w, pooled_width, grid_w, width, features)
        output[k] = torch.einsum("ph,chw,qw->cpq", wy, features[batch, :, y0:y1, x0:x1], wx)
    return output


def _roi_align_backward_kernel(
    grad: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """Gradient of :func:`_roi_align_kernel` with respect to its input feature map."""
    import torch

    grad_input = grad.new_zeros(batch_size, channels, height, width)
    if grad.numel() == 0 or grad_input.numel() == 0:
        return grad_input
    geometry = _roi_geometry(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    for k, (batch, start_y, start_x, roi_h, roi_w, grid_h, grid_w) in enumerate(geometry):
        if grid_h <= 0 or grid_w <= 0:
            continue
        wy, y0, y1 = _axis_weights(start_y, roi_h, pooled_height, grid_h, height, grad)
        wx, x0, x1 = _axis_weights(start_x, roi_w, pooled_width, grid_w, width, grad)
        grad_input[batch, :, y0:y1, x0:x1] += torch.einsum("ph,cpq,qw->chw", wy, grad[k], wx)
    return grad_input
