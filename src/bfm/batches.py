"""``bfm batch``: assemble one bfm-batch/1 file from the tiles of the months it touches.

Pure part: :func:`assemble` turns opened tile datasets into a :class:`bfm.batch.Batch`.
I/O part: :func:`build_batch` opens exactly the tiles it is given and writes the batch.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bfm.batch import GROUPS, Batch, write_batch
from bfm.grid import Grid
from bfm.provenance import provenance
from bfm.tiles import open_tile
from bfm.timeaxis import check_step, next_time, parse_t0

log = logging.getLogger(__name__)

# Batch group <- the tile modality it is read from (variable names are the same).
TILE_OF_GROUP = {
    "surface": "era5_surface",
    "atmospheric": "era5_atmospheric",
    "species": "species_occurrence",
    "static": "era5_static",
}


def _select_times(ds: xr.Dataset, times: Sequence[pd.Timestamp], what: str) -> xr.Dataset:
    have = pd.DatetimeIndex(ds["time"].values)
    missing = [str(t) for t in times if t not in have]
    if missing:
        raise ValueError(f"{what}: tiles lack time(s) {missing} (have {have.min()}..{have.max()})")
    return ds.sel(time=list(times))


def _check_grid(ds: xr.Dataset, grid: Grid, what: str) -> None:
    lat, lon = ds["latitude"].values, ds["longitude"].values
    if lat.shape != (grid.n_lat,) or not np.allclose(lat, grid.latitudes):
        raise ValueError(f"{what}: latitude {lat.shape} does not match the grid {grid}")
    if lon.shape != (grid.n_lon,) or not np.allclose(lon, grid.longitudes):
        raise ValueError(f"{what}: longitude {lon.shape} does not match the grid {grid}")


def assemble(t0: pd.Timestamp, step: str, grid: Grid, tiles: dict[str, xr.Dataset]) -> Batch:
    """Build the batch (t0, t0 + step) from tile datasets keyed by modality.

    Period tiles must already be concatenated along time; the static tile has no time.
    """
    times = (pd.Timestamp(t0), next_time(t0, step))
    groups: dict[str, dict[str, np.ndarray]] = {}
    levels = np.zeros(0, np.int64)
    species = np.zeros(0, np.int64)
    for group, modality in TILE_OF_GROUP.items():
        ds = tiles[modality]
        _check_grid(ds, grid, modality)
        if GROUPS[group].kind != "static":
            ds = _select_times(ds, times, modality)
        if group == "atmospheric":
            levels = ds["level"].values.astype(np.int64)
        if group == "species":
            species = ds["species"].values.astype(np.int64)
        groups[group] = {}
        for var in GROUPS[group].variables:
            if var not in ds:
                raise ValueError(f"{modality}: tile lacks variable {var!r}")
            groups[group][var] = np.ascontiguousarray(ds[var].values, dtype=np.float32)
    return Batch(times=times, step=step, grid=grid, levels=levels, species=species, groups=groups)


def _open_period_tiles(modality: str, paths: Sequence[str]) -> xr.Dataset:
    parts = [open_tile(p, modality) for p in sorted(paths)]
    return parts[0] if len(parts) == 1 else xr.concat(parts, dim="time", data_vars="all")


def build_batch(
    t0: str, step: str, grid: Grid, tile_paths: dict[str, Sequence[str]], out: str | Path
) -> Path:
    check_step(step)
    start = parse_t0(t0)
    tiles = {}
    for modality, paths in tile_paths.items():
        tiles[modality] = _open_period_tiles(modality, paths)
    try:
        batch = assemble(start, step, grid, tiles)
    finally:
        for ds in tiles.values():
            ds.close()
    path = write_batch(batch, out, provenance({"grid": grid.to_dict(), "step": step}))
    log.info("wrote %s (%s .. %s)", path, *batch.times)
    return path


def _run(args: argparse.Namespace) -> int:
    from bfm.cliutil import parse_grid_arg

    build_batch(
        args.t0,
        args.step,
        parse_grid_arg(args.grid),
        {
            "era5_surface": args.surface,
            "era5_atmospheric": args.atmospheric,
            "species_occurrence": args.species,
            "era5_static": [args.static],
        },
        args.out,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="assemble one bfm-batch/1 HDF5 file from tiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--t0", required=True, help="first time of the batch, YYYYMMDDTHH")
    p.add_argument("--step", required=True, help="model step: 6h, 1D or 1MS")
    p.add_argument("--grid", required=True, help="LAT_MIN,LAT_MAX,LON_MIN,LON_MAX,RES")
    p.add_argument("--surface", nargs="+", required=True, help="era5_surface tile(s)")
    p.add_argument("--atmospheric", nargs="+", required=True, help="era5_atmospheric tile(s)")
    p.add_argument("--species", nargs="+", required=True, help="species_occurrence tile(s)")
    p.add_argument("--static", required=True, help="era5_static tile")
    p.add_argument("--out", required=True, help="output batch file (.h5)")
    p.set_defaults(func=_run)
