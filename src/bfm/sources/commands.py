"""``bfm sample <source>``: write deterministic synthetic source files (offline demo, tests).

Each writes the file in the source's native format plus ``<file>.manifest.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

from bfm.cliutil import add_grid_argument, add_levels_argument
from bfm.sources import era5, gbif

log = logging.getLogger(__name__)


def _sample_era5(args: argparse.Namespace) -> int:
    if args.group == "static" and args.period is not None:
        raise ValueError("--period: not used for --group static (the invariants have no month)")
    if args.group != "static" and args.period is None:
        raise ValueError(f"--period: required for --group {args.group} (YYYY-MM)")
    began = time.perf_counter()
    path = era5.sample(args.out, args.group, args.grid, args.period, args.levels, args.seed)
    log.info("wrote %s in %.1f s", path, time.perf_counter() - began)
    return 0


def _sample_gbif(args: argparse.Namespace) -> int:
    species = gbif.read_species(args.species)
    began = time.perf_counter()
    path = gbif.sample(
        args.out, species, args.start, args.end, args.grid, args.seed, args.climate_seed
    )
    log.info("wrote %s in %.1f s", path, time.perf_counter() - began)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bfm sample era5`` and ``bfm sample gbif``."""
    sample = sub.add_parser("sample", help="write synthetic source files in native formats")
    sources = sample.add_subparsers(title="sources", metavar="SOURCE", required=True)

    p = sources.add_parser("era5", help="one ERA5 download unit (new-CDS netCDF)")
    p.add_argument("--group", required=True, choices=era5.GROUPS, help="ERA5 variable group")
    p.add_argument("--period", help="month YYYY-MM (surface, atmospheric; not for static)")
    add_grid_argument(p)
    add_levels_argument(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the sample climate")
    p.add_argument("--out", required=True, help="netCDF file to write")
    p.set_defaults(func=_sample_era5)

    p = sources.add_parser("gbif", help="a GBIF SIMPLE_CSV occurrence download (zip)")
    p.add_argument("--species", required=True, help="species list CSV (gbif_key, ...)")
    p.add_argument("--start", required=True, help="first day of the occurrences, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last day of the occurrences, YYYY-MM-DD")
    add_grid_argument(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the occurrence sampling")
    p.add_argument(
        "--climate-seed",
        type=int,
        default=None,
        help="seed of the sample climate the species follow: pass the ERA5 sample's --seed "
        "(default: --seed)",
    )
    p.add_argument("--out", required=True, help="zip file to write")
    p.set_defaults(func=_sample_gbif)
