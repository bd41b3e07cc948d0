"""The `landcover` command: one thin module per command group parses arguments, calls the library and prints."""

from __future__ import annotations

import argparse
import os
import sys

from landcover.cli import acquire, data, label, maps, predict, studio, train
from landcover.cli.common import Parser
from landcover.errors import LandcoverError
from landcover.version import __version__


def _run_demo(args: argparse.Namespace) -> None:
    from landcover.cli.demo import run_demo

    run_demo(args.data, args.out, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `landcover` command."""
    parser = Parser(prog="landcover", description="Aerial and satellite imagery into land-cover maps.")
    parser.add_argument("--version", action="version", version=f"landcover {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_parsers(sub)
    train.add_parsers(sub)
    predict.add_parsers(sub)
    maps.add_parsers(sub)
    label.add_parsers(sub)
    studio.add_parsers(sub)
    acquire.add_parsers(sub)
    data.add_schemes_parser(sub)
    data.add_doctor_parser(sub)
    p = sub.add_parser("demo", help="run the whole pipeline on the Zion sample (Landsat 8 + NLCD 2011)",
                       description="Run the whole pipeline on the Zion sample, from rasters to results.")
    p.add_argument("--data", help="folder holding zion/ (default: $LANDCOVER_DATA, then ../shared/data)")
    p.add_argument("--out", default="landcover-demo", help="output folder (default ./landcover-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args) or 0
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`landcover schemes -v | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except LandcoverError as exc:
        print(f"landcover: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("landcover: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
