"""bfm tile MODALITY: regrid a source's raw files into one CF NetCDF tile on the grid.

The modality's source (catalogue) opens the raw files (--input, as the source names them:
bfm sample/download, or your own in file mode) and builds the tile of --period (YYYY-MM; a
static modality has the one period 'static') on the grid and time axis of --config. The tile
is validated against the tile contract and written atomically with its quality report
(<tile>.qc.json: values masked by the valid-range rule and by the time rule).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from bfm import sources
from bfm.cliutil import add_command, add_config_argument
from bfm.contracts import catalogue
from bfm.contracts.tile import period_of_tile, written_quality
from bfm.fileio import netcdf_chunk_cache
from bfm.provenance import provenance
from bfm.workflow import Plan, load_plan

log = logging.getLogger(__name__)
# A tile job reads its raw files in blocks of native times and writes each 2-D chunk once:
# a small chunk cache per variable (the netCDF default, 64 MiB a variable and kept while a file
# is open, was 0.6 GiB of the atmospheric month's 0.9 GiB at 1D; a cut CDS month's chunks fit).
CHUNK_CACHE = 16 << 20


def _job(modality_name: str, period: str | None, plan: Plan
         ) -> tuple[sources.Source, catalogue.Modality, str, dict[str, str]]:  # fmt: skip
    """The source, modality, period and provenance of one tile."""
    modality = catalogue.modality(modality_name)
    if modality not in plan.modalities:
        raise ValueError(
            f"{modality.name}: its source {modality.source!r} is not a source of "
            "this study (config key 'sources')"
        )
    period = period_of_tile(modality, period)
    prov = provenance(plan.config, plan.tile_settings(modality))
    return sources.get(modality.source), modality, period, prov


def build_tile(
    modality_name: str, period: str | None, inputs: Sequence[str | Path], plan: Plan
) -> xr.Dataset:
    """The tile of one modality and period from its raw files (opened by its source)."""
    src, modality, period, prov = _job(modality_name, period, plan)
    return src.tile(inputs, modality, plan.study, period, prov)


def write_tile(
    modality_name: str, period: str | None, inputs: Sequence[str | Path], plan: Plan,
    out: str | Path,
) -> Path:  # fmt: skip
    """Build the tile and write it (the source's ``write_tile``: the contract's file, made
    one variable at a time where the source can)."""
    src, modality, period, prov = _job(modality_name, period, plan)
    with netcdf_chunk_cache(CHUNK_CACHE):
        return src.write_tile(inputs, modality, plan.study, period, prov, out)


def _run(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    path = write_tile(args.modality, args.period, args.input, plan, args.out)
    masked = {v: q for v, q in written_quality(path).items() if any(q.values())}
    if masked:
        log.warning("%s: values set missing (see %s.qc.json): %s", path, path.name, masked)
    log.info("wrote %s", path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "tile", __doc__, "regrid raw source files into a CF NetCDF tile")
    p.add_argument(
        "modality",
        metavar="MODALITY",
        help=f"one of: {', '.join(m.name for m in catalogue.modalities())}",
    )
    p.add_argument(
        "--period", help="month of the tile, YYYY-MM ('static' or none for a static modality)"
    )
    p.add_argument("--input", nargs="+", required=True, help="the raw files of the tile")
    add_config_argument(p)
    p.add_argument("--out", required=True, help="tile to write (.nc)")
    p.set_defaults(func=_run)
