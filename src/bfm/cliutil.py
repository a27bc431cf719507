"""Argument parsing shared by the ``bfm`` subcommands (grid, pressure levels).

The parse functions raise ``ValueError`` (usable from Python); the ``add_*`` helpers wrap them
so that argparse prints their message rather than a generic "invalid value".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from bfm.grid import Grid

GRID_METAVAR = "LAT_MIN,LAT_MAX,LON_MIN,LON_MAX,RES"
DEFAULT_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


def parse_grid_arg(text: str) -> Grid:
    """``"44,56,0,20,0.5"`` -> Grid(lat_min=44, lat_max=56, lon_min=0, lon_max=20, res=0.5)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 5:
        raise ValueError(f"--grid: expected {GRID_METAVAR}, got {text!r}")
    try:
        lat_min, lat_max, lon_min, lon_max, res = (float(p) for p in parts)
    except ValueError as err:
        raise ValueError(f"--grid: expected five numbers {GRID_METAVAR}, got {text!r}") from err
    return Grid(lat_min=lat_min, lat_max=lat_max, lon_min=lon_min, lon_max=lon_max, res=res)


def parse_levels_arg(text: str) -> tuple[int, ...]:
    """``"1000,50,500"`` -> (50, 500, 1000): unique positive hPa values, ascending."""
    try:
        levels = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as err:
        raise ValueError(
            f"--levels: expected comma-separated integers (hPa), got {text!r}"
        ) from err
    if not levels:
        raise ValueError(f"--levels: no pressure level given in {text!r}")
    if any(level <= 0 or level > 1100 for level in levels):
        raise ValueError(f"--levels: levels must lie in (0, 1100] hPa, got {levels}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"--levels: repeated level in {levels}")
    return tuple(sorted(levels))


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = parse.__name__
    return convert


def add_grid_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add ``--grid LAT_MIN,LAT_MAX,LON_MIN,LON_MAX,RES`` (outermost cell centres, degrees)."""
    parser.add_argument(
        "--grid",
        type=_argparse_type(parse_grid_arg),
        required=required,
        metavar=GRID_METAVAR,
        help="target grid: outermost cell centres and spacing in degrees, e.g. 44,56,0,20,0.5",
    )


def add_levels_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--levels 50,100,...`` (hPa), defaulting to the 13 ERA5 levels of the design."""
    parser.add_argument(
        "--levels",
        type=_argparse_type(parse_levels_arg),
        default=DEFAULT_LEVELS,
        metavar="HPA,HPA,...",
        help="pressure levels in hPa (default: the 13 levels 50..1000)",
    )
