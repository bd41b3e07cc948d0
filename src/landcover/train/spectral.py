"""The chips' bands as spectral features see them: names and roles (red, NIR, ...) from what the chips' source
files say (band descriptions, Landsat and Sentinel-2 file names), or from `--band-roles`."""

from __future__ import annotations

from pathlib import Path

import rasterio

from landcover.errors import LandcoverError
from landcover.geo.raster import open_image
from landcover.models.spectral import SpectralSpec, band_role


def spectral_spec(info: dict, n_bands: int, first_chip: Path, roles: list[str] | None) -> SpectralSpec:
    """The spectral spec of a manifest's chips: each band's name, and its role from `roles` (one per chip band,
    '-' for none) or else from the source."""
    names = band_names(info, n_bands, first_chip)
    if roles is not None:
        if len(roles) != n_bands:
            raise LandcoverError(f"--band-roles gives {len(roles)} role(s) for chips of {n_bands} band(s)")
        chosen = [None if r == "-" else r for r in roles]
    else:
        chosen = [band_role(n) for n in names]
    labels = [role or name for role, name in zip(chosen, names, strict=True)]
    if len(set(labels)) != len(labels):  # two bands of one role: keep them apart in the feature names
        labels = [f"b{i + 1}_{label}" for i, label in enumerate(labels)]
    return SpectralSpec.from_roles(labels, chosen)


def band_names(info: dict, n_bands: int, first_chip: Path) -> list[str]:
    """What the source says of each chip band: the source band's description, else its file's name (for a one-band
    file), else the chip file's band description, else 'b<N>'."""
    names: list[str | None] = [None] * n_bands
    scene = (info.get("scenes") or [{}])[0]
    paths, sources = scene.get("paths") or [], scene.get("bands") or []
    if len(sources) == n_bands:
        for k, (file_index, band) in enumerate(sources):
            path = Path(paths[file_index])
            described = _descriptions(path)
            if described is not None:
                names[k] = described[band - 1] or (path.stem if len(described) == 1 else None)
            else:
                names[k] = path.stem if sum(1 for f, _ in sources if f == file_index) == 1 else None
    chip = _descriptions(first_chip) or []
    return [name or (chip[i] if i < len(chip) and chip[i] else f"b{i + 1}") for i, name in enumerate(names)]


def _descriptions(path: Path) -> list[str | None] | None:
    """A raster's band descriptions (None where a band has none), or None when it cannot be opened."""
    try:
        with open_image(path) as src:
            return list(src.descriptions)
    except (rasterio.errors.RasterioIOError, OSError):
        return None
