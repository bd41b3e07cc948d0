"""What every command shares: one-line argument errors, the engine options, library warnings as one line each."""

from __future__ import annotations

import argparse
import sys
import warnings

from landcover.bounds import COUNT


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the command, the problem, where to look), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def engine_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The engine options every parallel command shares; returns their group."""
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "process", "ray"],
                   help="local (one process), process (a pool of --workers), ray (a Ray cluster)")
    g.add_argument("--workers", type=COUNT.parse, default=1, help="worker processes (default 1)")
    g.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return g


def nodata_option(p: argparse.ArgumentParser) -> None:
    """--nodata VALUE|none: the imagery's nodata value, over what its files declare."""
    def parse(text: str) -> float | str:
        from landcover.errors import LandcoverError
        from landcover.geo.raster import parse_nodata

        try:
            return parse_nodata(text)
        except LandcoverError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--nodata ")) from None

    p.add_argument("--nodata", type=parse, metavar="VALUE|none",
                   help="the imagery's nodata value instead of the one its files declare (as GDAL's -srcnodata); "
                        "none: every pixel is data (a mask or alpha band still counts), e.g. for a photo whose "
                        "white pixels equal its declared nodata 255")


def warnings_as_lines(func, *args, **kwargs):
    """Call func; print each user warning it raises as one `warning:` line on stderr (libraries' deprecation
    notices, e.g. rasterio's own use of affine, are not the user's business)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    return result
