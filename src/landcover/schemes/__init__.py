"""Class schemes: label codes, class names, colours and groupings, kept as data files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from landcover.errors import LandcoverError

INVALID = 255
"""Class id used for pixels that carry no class (ignored codes, nodata, outside the labels)."""


def palette(n: int) -> list[str]:
    """n distinct colours ('#rrggbb', evenly spaced hues) for classes that come without their own."""
    import colorsys

    colors = [colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.85) for i in range(n)]
    return ["#" + "".join(f"{round(c * 255):02x}" for c in rgb) for rgb in colors]


@dataclass(frozen=True)
class LandClass:
    """One output class: its id, name, display colour and the label codes it gathers."""

    id: int
    name: str
    color: str
    codes: tuple[int, ...]

    @property
    def slug(self) -> str:
        """A file-system-safe folder name for the class."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass(frozen=True)
class ClassScheme:
    """Label codes mapped to classes; codes in `ignore` carry no class."""

    name: str
    classes: tuple[LandClass, ...]
    ignore: tuple[int, ...] = ()
    description: str = ""
    source: str = field(default="", compare=False)

    def lookup(self) -> np.ndarray:
        """A 65536-entry table from label code to class id (INVALID where no class)."""
        table = np.full(65536, INVALID, dtype=np.uint8)
        for c in self.classes:
            table[list(c.codes)] = c.id
        return table

    def known_codes(self) -> set[int]:
        """Every code the scheme names, as a class or as ignored."""
        return {code for c in self.classes for code in c.codes} | set(self.ignore)

    def by_id(self, class_id: int) -> LandClass:
        """The class with this id."""
        return self.classes[class_id]

    def to_dict(self) -> dict:
        """The scheme as plain data (what the scheme file holds, ids made explicit)."""
        return {
            "name": self.name,
            "description": self.description,
            "ignore": list(self.ignore),
            "classes": [
                {"id": c.id, "name": c.name, "color": c.color, "codes": list(c.codes)}
                for c in self.classes
            ],
        }


def builtin_schemes() -> list[str]:
    """Names of the schemes shipped with the package."""
    files = resources.files(__package__)
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_scheme(name_or_path: str | Path) -> ClassScheme:
    """Load a class scheme (codes, class names, colours, grouping): a shipped one by name ('nlcd', 'nlcd-grouped';
    `landcover schemes -v` lists them) or a user's YAML/JSON file by path."""
    text_path = str(name_or_path)
    if text_path in builtin_schemes():
        source = f"{text_path} (built in)"
        text = resources.files(__package__).joinpath(f"{text_path}.yaml").read_text()
    else:
        path = Path(text_path)
        if not path.is_file():
            known = ", ".join(builtin_schemes())
            raise LandcoverError(f"unknown class scheme (built in: {known}; or give a YAML/JSON file)",
                                 text_path)
        source, text = str(path), path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LandcoverError(f"not a valid YAML/JSON scheme ({exc.__class__.__name__})", source) from None
    return parse_scheme(data, source)


def parse_scheme(data: object, source: str = "<scheme>") -> ClassScheme:
    """Build a ClassScheme from plain data, checking it names each code once."""
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise LandcoverError("a scheme needs a non-empty 'classes' list", source)
    classes, seen = [], {}
    for i, entry in enumerate(data["classes"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise LandcoverError(f"class #{i + 1} needs a 'name'", source)
        codes = entry.get("codes", [entry["code"]] if "code" in entry else None)
        if not codes:
            raise LandcoverError(f"class {entry['name']!r} needs 'code' or 'codes'", source)
        for code in codes:
            if not isinstance(code, int) or not 0 <= code < 65536:
                raise LandcoverError(f"class {entry['name']!r}: code {code!r} is not an integer 0..65535", source)
            if code in seen:
                raise LandcoverError(f"code {code} is in both {seen[code]!r} and {entry['name']!r}", source)
            seen[code] = entry["name"]
        classes.append(LandClass(i, str(entry["name"]), str(entry.get("color", "#808080")), tuple(codes)))
    if len(classes) >= INVALID:
        raise LandcoverError(f"at most {INVALID - 1} classes are supported", source)
    ignore = tuple(int(c) for c in data.get("ignore", []))
    return ClassScheme(str(data.get("name", Path(source).stem)), tuple(classes), ignore,
                       str(data.get("description", "")), source)
