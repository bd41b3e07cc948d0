"""`landcover acquire`: search a STAC catalog for an area, fetch the area's windows of every item (resumable), and
composite them per pixel into one COG (or one stack per item), with the valid-observation count, the items used and
a STAC item describing the result."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from landcover.acquire.catalog import (
    FoundItem,
    Search,
    open_catalog,
    parse_aoi,
    parse_date,
    parse_datetime_range,
    search_items,
)
from landcover.acquire.composite import (
    METHODS,
    CompositeJob,
    Method,
    blocks,
    composite_block,
    finish,
    item_stack,
    stac_item,
    start_draft,
    write_block,
)
from landcover.acquire.fetch import (
    FetchJob,
    OutputGrid,
    asset_bands,
    cache_path,
    fetch_item,
    output_grid,
    parse_crs,
    parse_mask,
)
from landcover.atomic import check_output, write_text
from landcover.bounds import POSITIVE
from landcover.engine import Engine
from landcover.errors import LandcoverError
from landcover.locks import output_lock
from landcover.progress import progress_bar

RESAMPLINGS = ("nearest", "bilinear", "cubic", "average", "mode")


@dataclass
class AcquireResult:
    out: Path
    catalog: str
    search: str
    items: list[FoundItem]
    cloudy: int
    grid: dict
    method: str
    files: dict[str, str]
    valid_share: float
    mean_count: float
    fetched: int
    resumed: int
    seconds: float
    stacks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        grid = self.grid
        res = abs(grid["transform"][0])
        lines = [f"acquired {len(self.items)} item(s) from {self.catalog} ({self.search})"
                 + (f"; {self.cloudy} left out by cloud cover" if self.cloudy else ""),
                 f"  grid: {grid['width']} x {grid['height']} px at {res:g} in {grid['crs']}; fetched {self.fetched}"
                 f" item(s), {self.resumed} already fetched (resumed); {self.seconds:.1f} s",
                 f"  {self.method}: {100 * self.valid_share:.1f}% of pixels have a valid observation "
                 f"({self.mean_count:.2f} per pixel on average)"]
        lines += [f"  {name}: {path}" for name, path in self.files.items()]
        if self.stacks:
            lines.append(f"  {len(self.stacks)} stack(s) in {self.out / 'items'}")
        return "\n".join(lines)


def acquire_area(catalog: str, out: str | Path, assets: list[str], *, collections: list[str] | None = None,
            aoi: str | None = None, bbox: list[float] | None = None, datetime: str | None = None,
            max_cloud: float | None = None, crs: str | None = None, resolution: float | None = None,
            mask: str | None = None, composite: str = "median", resampling: str = "nearest",
            engine: Engine | str | None = None, retries: int = 3, overwrite: bool = False,
            progress: bool = True) -> AcquireResult:
    """Imagery (or labels) for an area from a STAC catalog, composited per pixel into `out`/composite.tif.
    A finished `out` is rewritten by the same request; another request on it needs `overwrite`."""
    started = time.perf_counter()
    method = parse_method(composite)
    if resampling not in RESAMPLINGS:
        raise LandcoverError(f"--resampling {resampling!r}: choose from {', '.join(RESAMPLINGS)}")
    if max_cloud is not None and not 0 <= max_cloud <= 100:
        raise LandcoverError(f"--max-cloud {max_cloud:g} must be a percentage (0..100)")
    if not assets:
        raise LandcoverError("give the assets to read (--assets B04 B03 B02 ...)")
    if resolution is not None:
        POSITIVE.check(resolution, "--resolution")
    target_crs = parse_crs(crs)
    cloud_mask = parse_mask(mask)
    area, by_area = parse_aoi(aoi, bbox)
    search = Search(tuple(collections or ()), area, parse_datetime_range(datetime), max_cloud)
    source = open_catalog(catalog)
    out = check_output(out, "folder")
    items, cloudy = search_items(source, search)
    if not items:
        more = f" ({cloudy} more over the cloud-cover limit)" if cloudy else ""
        raise LandcoverError(f"no items found for {search.describe()}{more}", source.describe())
    if cloud_mask is not None:  # the presets' mask assets are 'SCL' on Planetary Computer, 'scl' on Earth Search
        names = {a.lower(): a for a in items[-1].hrefs}
        cloud_mask = replace(cloud_mask, asset=names.get(cloud_mask.asset.lower(), cloud_mask.asset))
    _check_assets(items, assets + ([cloud_mask.asset] if cloud_mask else []))
    if method.name == "closest" and any(i.time is None for i in items):
        raise LandcoverError("--composite closest needs every item's datetime", source.describe())
    grid = output_grid(items, assets, area, by_area, target_crs, resolution, source.signing, retries)
    bands = asset_bands(items, assets, source.signing, retries)
    nodata = _output_nodata(bands.dtype, bands.nodata)
    fingerprint = {"catalog": source.source, "items": [i.id for i in items], "assets": assets,
                   "mask": mask or "none", "grid": grid.to_dict(), "area": grid.area is not None,
                   "resampling": resampling, "bands": bands.names, "dtype": bands.dtype}
    request = _digest({**fingerprint, "composite": method.describe()})
    with output_lock(out):
        _check_earlier(out, request, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        state = out / ".acquire"
        resumed = _prepare_state(state, fingerprint)
        job = FetchJob(grid, bands, cloud_mask, resampling, source.signing, str(state), retries)
        windows = _fetch(job, items, engine, progress)
        cjob = CompositeJob(grid, tuple(items), tuple(windows), tuple(bands.names), bands.dtype, nodata, method,
                            str(state))
        categorical = any(a in i.classes for i in items for a in assets)
        files, stacks, count = _write_outputs(out, state, cjob, engine, categorical, progress)
        used = [i for i, w in zip(items, windows, strict=True) if w is not None]
        _write_records(out, source.source, search, grid, items, windows, method,
                       cloud_mask.describe() if cloud_mask else "none", files, stacks, request)
        shutil.rmtree(state)
    inside = count[1] if count[1] else grid.width * grid.height
    return AcquireResult(out, source.describe(), search.describe(), used, cloudy, grid.to_dict(), method.describe(),
                         files, count[0] / inside, count[2] / inside, len(items) - len(resumed), len(resumed),
                         time.perf_counter() - started, stacks)


def parse_method(text: str) -> Method:
    name, _, date = str(text).partition(":")
    if name not in METHODS or (name == "closest") != bool(date):
        raise LandcoverError(f"--composite {text!r}: choose none, median, mosaic or closest:YYYY-MM-DD")
    return Method(name, parse_date(date, f"--composite {text}") if date else None)


def _check_assets(items: list[FoundItem], assets: list[str]) -> None:
    for item in items:
        missing = [a for a in assets if a not in item.hrefs]
        if missing:
            raise LandcoverError(f"item {item.id} has no asset {', '.join(map(repr, missing))} (it has: "
                                 f"{', '.join(sorted(item.hrefs)) or 'none'})")


def _output_nodata(dtype: str, nodata: float | None) -> float:
    if nodata is not None:
        return nodata
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return float("nan")
    return 0 if kind.kind == "u" else int(np.iinfo(kind).min)


OUTPUTS = ("composite.tif", "valid_count.tif", "items.json", "composite.json", "items")


def _digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _check_earlier(out: Path, digest: str, overwrite: bool) -> None:
    """Refuse to write over another request's finished output, or into a folder of other files, without
    `overwrite`; with it, the earlier outputs go (other files stay)."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    record = out / "items.json"
    earlier = json.loads(record.read_text()).get("request") if record.is_file() else None
    if not overwrite:
        if record.is_file() and earlier != digest:
            raise LandcoverError("holds the output of a different acquire request (other assets, area, dates, grid "
                                 "or composite): pass --overwrite to replace it, or choose a new folder", out)
        if not record.is_file() and not (out / ".acquire").is_dir():
            raise LandcoverError("holds other files, not an acquire's output: choose a new or empty folder, or pass "
                                 "--overwrite to write beside them", out)
    if overwrite and earlier != digest:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _prepare_state(state: Path, fingerprint: dict) -> set[int]:
    """The work folder of this request: a different request's is cleared; returns the items already fetched."""
    digest = _digest(fingerprint)
    record = state / "job.json"
    if state.exists() and (not record.exists() or json.loads(record.read_text()).get("digest") != digest):
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    if not record.exists():
        write_text(record, json.dumps({"digest": digest, **fingerprint}, indent=1))
    return {i for i in range(len(fingerprint["items"])) if cache_path(state, i).exists()}


def _fetch(job: FetchJob, items: list[FoundItem], engine: Engine | str | None,
           progress: bool) -> list[tuple[int, int, int, int] | None]:
    """Every item's window, fetching those not in the cache yet (an engine task each)."""
    import rasterio

    windows: list = [None] * len(items)
    todo = []
    for index, item in enumerate(items):
        path = cache_path(job.cache, index)
        if path.exists():
            with rasterio.open(path) as src:
                windows[index] = tuple(int(v) for v in src.tags()["LANDCOVER_WINDOW"].split(","))
        else:
            todo.append((index, item))
    bar = progress_bar(total=len(todo), desc="items", unit="item", enabled=progress)
    try:
        for fetched in Engine.of(engine).map(fetch_item, job, todo):
            windows[fetched.index] = fetched.window
            bar.update()
    finally:
        bar.close()
    return windows


def _write_outputs(out: Path, state: Path, job: CompositeJob, engine: Engine | str | None,
                   categorical: bool, progress: bool) -> tuple[dict[str, str], list[str], tuple[int, int, float]]:
    """composite.tif (or the per-item stacks) and valid_count.tif; returns the files, the stacks and
    (pixels with a valid observation, pixels in the AOI, sum of counts)."""
    grid = job.grid
    drafts = {"valid_count": start_draft(state / "valid_count.tif", grid, 1, "uint16", None, ["valid observations"])}
    if job.method.name != "none":
        drafts["composite"] = start_draft(state / "composite.tif", grid, len(job.bands), job.dtype, job.nodata,
                                          list(job.bands))
    covered = total = inside = 0
    bar = progress_bar(total=grid.width * grid.height, desc="composite", unit="px", unit_scale=True,
                       enabled=progress)
    try:
        for block in Engine.of(engine).map(composite_block, job, blocks(grid)):
            write_block(drafts["valid_count"], block.window, block.count)
            if block.data is not None:
                write_block(drafts["composite"], block.window, block.data)
            covered += int((block.count > 0).sum())
            total += int(block.count.sum())
            inside += block.inside
            bar.update(block.window[2] * block.window[3])
    finally:
        bar.close()
    files = {}
    if "composite" in drafts:
        files["composite"] = str(finish(drafts["composite"], out / "composite.tif", categorical))
    files["valid_count"] = str(finish(drafts["valid_count"], out / "valid_count.tif", False))
    stacks = []
    if job.method.name == "none":
        (out / "items").mkdir(exist_ok=True)
        for index, item in enumerate(job.items):
            if job.windows[index] is None:
                continue
            draft = start_draft(state / f"stack-{index}.tif", grid, len(job.bands), job.dtype, job.nodata,
                                list(job.bands))
            item_stack(job, index, draft)
            stacks.append(str(finish(draft, out / "items" / f"{_safe(item.id)}.tif", categorical)))
    return files, stacks, (covered, inside, total)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_records(out: Path, catalog: str, search: Search, grid: OutputGrid, items: list[FoundItem],
                   windows: list, method: Method, mask: str, files: dict[str, str], stacks: list[str],
                   request: str) -> None:
    """items.json (the items used, their hrefs unsigned, the request's digest) and the STAC item of each output
    raster."""
    used = [i for i, w in zip(items, windows, strict=True) if w is not None]
    record = {"catalog": catalog, "search": search.describe(), "composite": method.describe(),
              "mask": mask, "request": request, "items": [i.to_dict() for i in used]}
    if stacks:
        for entry, stack in zip(record["items"], stacks, strict=True):
            entry["output"] = str(Path(stack).relative_to(out))
    write_text(out / "items.json", json.dumps(record, indent=1))
    count = {"valid_count": Path(files["valid_count"]).name}
    if "composite" in files:
        described = stac_item("composite", grid, used, {"composite": "composite.tif", **count}, method, mask)
        write_text(out / "composite.json", json.dumps(described, indent=1))
    for item, stack in zip(used, stacks, strict=False):
        described = stac_item(Path(stack).stem, grid, [item], {"data": Path(stack).name}, method, mask)
        write_text(Path(stack).with_suffix(".json"), json.dumps(described, indent=1))
