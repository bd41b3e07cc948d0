"""The house rules, read from the source: stages import downward only, no cycles, short modules, a typed API."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import landcover

PACKAGE = Path(landcover.__file__).parent
MAX_LINES = 450
LEVELS = {
    # the ground every stage stands on
    "errors": 0, "atomic": 0, "engine": 0, "compat": 0, "version": 0, "bounds": 0, "locks": 0, "progress": 0,
    # the two contracts, the class schemes, and what they name (networks, heads) or draw (plain-data figures)
    "schemes": 1, "manifest": 1, "models": 1, "bundle": 1, "onnx_graph": 1, "plots": 1,
    "geo": 2,
    "chips": 3, "datasets": 3, "evaluate": 3, "acquire": 3,
    "segment": 4,
    "train": 5,
    "predict": 6, "maps": 6, "label": 6, "studio": 6,
    "cli": 7,
    "__init__": 8, "__main__": 8,
}
"""A module may import modules of its own level or below: cli -> predict/maps/label -> train -> segment (pairs,
losses, pixel scores, the CRF) -> chips/datasets/evaluate/acquire -> geo -> contracts -> ground."""


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every landcover module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("landcover"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("landcover")}
    return found


def level(module: str) -> int:
    parts = module.split(".")
    return LEVELS["__init__" if len(parts) == 1 else parts[1]]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {d for d in imports(path) if d in mods and d != name and not name.startswith(d + ".")}
            for name, path in mods.items()}


def test_every_module_has_a_level():
    unplaced = sorted({m.split(".")[1] for m in modules() if "." in m} - set(LEVELS))
    assert not unplaced, f"add these to LEVELS: {unplaced}"


def test_stages_import_downward_only():
    upward = [f"{m} -> {d}" for m, deps in graph().items() for d in deps if level(d) > level(m)]
    assert not upward


def test_no_import_cycles():
    g, cycles, done, stack = graph(), [], set(), []

    def visit(u: str) -> None:
        done.add(u)
        stack.append(u)
        for v in sorted(g[u]):
            if v in stack:
                cycles.append(" -> ".join([*stack[stack.index(v):], v]))
            elif v not in done:
                visit(v)
        stack.pop()

    for u in sorted(g):
        if u not in done:
            visit(u)
    assert not cycles


def test_modules_read_in_one_sitting():
    long = {name: n for name, path in modules().items() if (n := path.read_text().count("\n")) > MAX_LINES}
    assert not long


def test_import_landcover_loads_no_stage():
    code = ("import sys, landcover; heavy = [m for m in ('torch', 'rasterio', 'landcover.train') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in landcover.__all__ if n != "__version__"])
def test_api_names_are_documented_and_typed(name):
    obj = getattr(landcover, name)
    assert name in dir(landcover)
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 40, f"{name} needs a docstring a newcomer understands"
    if inspect.isfunction(obj):
        signature = inspect.signature(obj)
        untyped = [p for p, v in signature.parameters.items()
                   if v.annotation is inspect.Parameter.empty and v.kind is not v.VAR_KEYWORD]
        assert not untyped and signature.return_annotation is not inspect.Signature.empty, name


def test_every_folder_is_a_regular_package():
    """A folder without __init__.py imports in an editable install but is left out of a wheel."""
    folders = {p.parent for p in PACKAGE.rglob("*.py")}
    assert not sorted(str(f.relative_to(PACKAGE)) for f in folders if not (f / "__init__.py").exists())


MAX_PARAMETERS = 10


def test_predict_functions_take_a_request_not_a_list():
    """A map's options live in one MapRequest (landcover.predict.request): no public function in predict/ grows a
    long parameter list again (keyword options, **options, do not count)."""
    long = []
    for name, path in modules().items():
        if not name.startswith("landcover.predict"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None)
                if n > MAX_PARAMETERS:
                    long.append(f"{name}.{node.name}: {n}")
    assert not long


def test_segmentation_training_sits_with_training():
    """segment/ holds what pixels need below training (pairs, losses, scores, the CRF); training a segmentation
    network is train/'s, so segment/ never imports train/."""
    up = [f"{m} -> {d}" for m, deps in graph().items() if m.startswith("landcover.segment")
          for d in deps if d.startswith("landcover.train")]
    assert not up and level("landcover.train.trainer") > level("landcover.segment.crf")
