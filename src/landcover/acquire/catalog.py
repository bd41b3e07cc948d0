"""Finding imagery and labels for an area: STAC catalogs (an item-search API, or a static catalog walked locally),
the public APIs by name, the area of interest and the date range a search takes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import box, shape

from landcover.errors import LandcoverError


@dataclass(frozen=True)
class Preset:
    """A public STAC API by name: its URL, and how its asset hrefs are signed before reading (None: they are not)."""

    url: str
    signing: str | None = None


PRESETS = {
    "planetary-computer": Preset("https://planetarycomputer.microsoft.com/api/stac/v1", "planetary-computer"),
    "earth-search": Preset("https://earth-search.aws.element84.com/v1"),
}


@dataclass(frozen=True)
class Catalog:
    """Where items are searched: `kind` 'api' (STAC item search) or 'static' (a catalog.json walked locally)."""

    source: str
    kind: str
    signing: str | None = None

    def describe(self) -> str:
        return self.source


def open_catalog(text: str) -> Catalog:
    """A preset name, a path to a static catalog (its catalog.json or its folder), or a URL: one ending in .json is
    a static catalog, any other an item-search API."""
    if text in PRESETS:
        preset = PRESETS[text]
        return Catalog(preset.url, "api", preset.signing)
    if "://" in text:
        return Catalog(text, "static" if text.split("?")[0].endswith(".json") else "api")
    path = Path(text)
    if path.is_dir():
        path = path / "catalog.json"
    if not path.is_file():
        raise LandcoverError(f"no such catalog (give a catalog.json, its folder, a URL or one of "
                             f"{', '.join(PRESETS)})", text)
    return Catalog(str(path.resolve()), "static")


def sign_href(href: str, signing: str | None) -> str:
    """An asset href made readable: Planetary Computer blob-storage URLs get a SAS token (the planetary-computer
    package asks its token endpoint; PC_SDK_SAS_URL and PC_SDK_SUBSCRIPTION_KEY configure it)."""
    if signing is None:
        return href
    if signing == "planetary-computer":
        import planetary_computer

        try:
            return planetary_computer.sign_url(href)
        except Exception as exc:  # requests' and pydantic's errors alike: the token endpoint did not answer usably
            raise LandcoverError(f"signing failed (Planetary Computer token endpoint): {_first_line(exc)}",
                                 href) from None
    raise LandcoverError(f"unknown signing {signing!r}")


@dataclass(frozen=True)
class DateRange:
    """An inclusive range of instants in UTC; either end may be open (None)."""

    start: datetime | None
    end: datetime | None

    def contains(self, start: datetime | None, end: datetime | None) -> bool:
        """Whether an item's time (an instant, or its start..end) overlaps the range."""
        if start is None:
            return True
        end = end or start
        return (self.start is None or end >= self.start) and (self.end is None or start <= self.end)

    def to_stac(self) -> str | None:
        if self.start is None and self.end is None:
            return None
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return f"{self.start.strftime(fmt) if self.start else '..'}/{self.end.strftime(fmt) if self.end else '..'}"


def parse_datetime_range(text: str | None) -> DateRange:
    """'2021-01-01/2021-12-31', '2021/2022', '2021-06/..': a range START/END of dates (a year, a month or a day,
    or a full ISO time); a partial END runs to its last instant."""
    if not text:
        return DateRange(None, None)
    if text.count("/") != 1:
        raise LandcoverError(f"--datetime {text!r} is not a range: give START/END, e.g. 2021-01-01/2021-12-31 "
                             f"(either end may be '..')")
    first, last = (part.strip() for part in text.split("/"))
    start = None if first in ("", "..") else _instant(first, text, end=False)
    end = None if last in ("", "..") else _instant(last, text, end=True)
    if start and end and start > end:
        raise LandcoverError(f"--datetime {text!r} is not a range: it ends before it starts")
    return DateRange(start, end)


def parse_date(text: str, what: str) -> datetime:
    """One date or instant (the start of a partial date), in UTC."""
    return _instant(text, what, end=False)


def _instant(part: str, whole: str, end: bool) -> datetime:
    try:
        if re.fullmatch(r"\d{4}", part):
            year = int(part)
            first, nxt = date(year, 1, 1), date(year + 1, 1, 1)
        elif re.fullmatch(r"\d{4}-\d{2}", part):
            year, month = map(int, part.split("-"))
            first, nxt = date(year, month, 1), date(year + (month == 12), month % 12 + 1, 1)
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", part):
            first = date.fromisoformat(part)
            nxt = first + timedelta(days=1)
        else:
            moment = datetime.fromisoformat(part.replace("Z", "+00:00"))
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except ValueError:
        raise LandcoverError(f"{whole!r}: {part!r} is not a date (YYYY, YYYY-MM, YYYY-MM-DD or an ISO time)") from None
    moment = datetime.combine(nxt if end else first, datetime.min.time(), UTC)
    return moment - timedelta(microseconds=1) if end else moment


def parse_aoi(aoi: str | None, bbox: list[float] | None) -> tuple[shapely.Geometry, bool]:
    """The area of interest in WGS84 longitude/latitude, and whether it is a polygon to mask by (an --aoi file)
    rather than a box."""
    if (aoi is None) == (bbox is None):
        raise LandcoverError("give the area as --aoi FILE or --bbox W S E N (one of them)")
    if bbox is not None:
        west, south, east, north = bbox
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise LandcoverError(f"--bbox {' '.join(map(str, bbox))}: give W S E N in degrees (longitude, latitude), "
                                 f"with W < E and S < N")
        return box(west, south, east, north), False
    import geopandas as gpd

    path = Path(aoi)
    if not path.exists():
        raise LandcoverError("no such file", path)
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio's errors: the driver could not read it
        raise LandcoverError(f"not a readable vector file ({_first_line(exc)})", path) from None
    if frame.empty:
        raise LandcoverError("holds no geometry: the area of interest is empty", path)
    if frame.crs is None:
        raise LandcoverError("has no CRS: the area of interest must say where it is", path)
    try:
        frame = frame.to_crs("EPSG:4326")
    except Exception as exc:  # pyproj could not build the transformation
        raise LandcoverError(f"its CRS cannot be turned into longitude/latitude ({_first_line(exc)})", path) from None
    geometry = shapely.union_all(frame.geometry.values)
    if geometry.is_empty or not np.isfinite(geometry.bounds).all():
        raise LandcoverError("its geometry is empty or not finite in longitude/latitude", path)
    return geometry, geometry.geom_type in ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class FoundItem:
    """What acquisition needs of a STAC item: its id and time, footprint, cloud cover and asset hrefs."""

    id: str
    collection: str | None
    start: datetime | None
    end: datetime | None
    geometry: dict | None
    cloud_cover: float | None
    hrefs: dict[str, str]
    classes: dict[str, list] = field(default_factory=dict)
    """classification:classes of the assets that declare them (land-cover products)."""
    proj_code: str | None = None
    """The item's CRS as proj:code (or proj:epsg) says, where it does."""

    @property
    def time(self) -> datetime | None:
        """The item's time: its datetime, or the middle of its start..end."""
        if self.start is None or self.end is None or self.end == self.start:
            return self.start
        return self.start + (self.end - self.start) / 2

    def to_dict(self) -> dict:
        return {"id": self.id, "collection": self.collection, "datetime": iso_time(self.time),
                "start_datetime": iso_time(self.start), "end_datetime": iso_time(self.end),
                "eo:cloud_cover": self.cloud_cover, "hrefs": self.hrefs}


def iso_time(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


@dataclass(frozen=True)
class Search:
    """One search: collections, the area (WGS84), the date range and the largest eo:cloud_cover kept."""

    collections: tuple[str, ...]
    area: shapely.Geometry
    dates: DateRange
    max_cloud: float | None = None

    def describe(self) -> str:
        west, south, east, north = self.area.bounds
        parts = [f"collection {', '.join(self.collections)}" if self.collections else "every collection",
                 f"bbox {west:.4f} {south:.4f} {east:.4f} {north:.4f}",
                 f"datetime {self.dates.to_stac() or 'any'}"]
        if self.max_cloud is not None:
            parts.append(f"cloud cover <= {self.max_cloud:g}%")
        return ", ".join(parts)


def search_items(catalog: Catalog, search: Search) -> tuple[list[FoundItem], int]:
    """The items that match, oldest first, and how many matched all but the cloud-cover limit."""
    raw = _api_items(catalog, search) if catalog.kind == "api" else _static_items(catalog, search)
    found, cloudy = [], 0
    for item in raw:
        candidate = _found(item)
        if not _matches(candidate, search):
            continue
        if search.max_cloud is not None and (candidate.cloud_cover or 0) > search.max_cloud:
            cloudy += 1
            continue
        found.append(candidate)
    unique = {item.id: item for item in found}  # a static catalog may list an item under two parents
    ordered = sorted(unique.values(), key=lambda i: (i.time or datetime.min.replace(tzinfo=UTC), i.id))
    return ordered, cloudy


def _matches(item: FoundItem, search: Search) -> bool:
    if search.collections and item.collection not in search.collections:
        return False
    if not search.dates.contains(item.start, item.end):
        return False
    return item.geometry is None or shape(item.geometry).intersects(search.area)


def _api_items(catalog: Catalog, search: Search) -> list[dict]:
    from pystac_client import Client, ConformanceClasses
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(catalog.source)
        options = {"bbox": list(search.area.bounds), "limit": 100}
        if search.collections:
            options["collections"] = list(search.collections)
        if search.dates.to_stac():
            options["datetime"] = search.dates.to_stac()
        if search.max_cloud is not None and client.conforms_to(ConformanceClasses.QUERY):
            options["query"] = {"eo:cloud_cover": {"lte": search.max_cloud}}
        return list(client.search(**options).items_as_dicts())
    except (APIError, OSError, ValueError) as exc:  # requests' connection errors are OSErrors; bad JSON, ValueErrors
        raise LandcoverError(f"item search failed: {_first_line(exc)}", catalog.source) from None
    except Exception as exc:  # pystac-client's conformance and format errors
        raise LandcoverError(f"not a STAC item-search API ({type(exc).__name__}: {_first_line(exc)})",
                             catalog.source) from None


def _static_items(catalog: Catalog, search: Search) -> list[dict]:
    import pystac

    try:
        root = pystac.Catalog.from_file(catalog.source)
        items = []
        for item in root.get_items(recursive=True):
            if search.collections and item.collection_id not in search.collections:
                continue
            item.make_asset_hrefs_absolute()
            items.append(item.to_dict(transform_hrefs=False))
        return items
    except pystac.STACError as exc:
        raise LandcoverError(f"not a STAC catalog ({_first_line(exc)})", catalog.source) from None
    except Exception as exc:  # OSError, bad JSON, and pystac's own "Could not read uri" (a bare Exception)
        raise LandcoverError(f"cannot read the static catalog ({_first_line(_cause(exc))})", catalog.source) from None


def _cause(exc: BaseException) -> BaseException:
    """The error underneath a wrapper that only says it could not read (pystac's StacIO wraps urllib's)."""
    for _ in range(10):  # a chain, never a loop
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def _found(item: dict) -> FoundItem:
    props = item.get("properties") or {}
    start = _parse_time(props.get("start_datetime") or props.get("datetime"))
    end = _parse_time(props.get("end_datetime") or props.get("datetime"))
    assets = item.get("assets") or {}
    cloud = props.get("eo:cloud_cover")
    return FoundItem(
        id=str(item["id"]), collection=item.get("collection"), start=start, end=end,
        geometry=item.get("geometry"), cloud_cover=None if cloud is None else float(cloud),
        hrefs={name: a["href"] for name, a in assets.items() if "href" in a},
        classes={name: a["classification:classes"] for name, a in assets.items() if "classification:classes" in a},
        proj_code=props.get("proj:code") or (f"EPSG:{props['proj:epsg']}" if props.get("proj:epsg") else None))


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0]
    return text[:300] or type(exc).__name__
