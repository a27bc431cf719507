"""bfm batch: assemble one bfm-batch/1 file from the tiles of the months it touches.

Give every modality of the study its tiles with --tile MODALITY=PATH (repeat it, or join the
paths of one modality with commas): the tiles of the months of t0 and t0 + step, and the one
'static' tile of a static modality. The grid, step and the modalities come from --config;
a tile built under other settings than the config implies (its settings_hash) is refused,
so a batch never mixes stale tiles into a new study.

Pure part: assemble() turns opened tile datasets into a Batch. I/O part: build_batch() opens
exactly the tiles it is given and writes the batch atomically.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts import catalogue
from bfm.contracts.batch import Batch, write_batch
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.grid import Grid
from bfm.contracts.tile import SPECIES_KEY, open_tile
from bfm.contracts.timeaxis import next_time, parse_t0
from bfm.provenance import provenance
from bfm.workflow import Plan, load_plan

log = logging.getLogger(__name__)


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


def assemble(t0: pd.Timestamp, step: str, grid: Grid, tiles: Mapping[str, xr.Dataset]) -> Batch:
    """Build the batch (t0, t0 + step) from tile datasets keyed by modality.

    Periodic tiles must already be concatenated along time; a static tile has no time.
    """
    times = (pd.Timestamp(t0), next_time(t0, step))
    groups: dict[str, dict[str, np.ndarray]] = {}
    levels = np.zeros(0, np.int64)
    species = np.zeros(0, np.int64)
    for name in (m.name for m in catalogue.modalities() if m.name in tiles):
        spec, ds = catalogue.modality(name), tiles[name]
        _check_grid(ds, grid, name)
        if spec.periodic:
            ds = _select_times(ds, times, name)
        if spec.kind == DimsKind.LEVEL:
            levels = ds["level"].values.astype(np.int64)
        if spec.kind == DimsKind.SPECIES:
            species = ds[SPECIES_KEY].values.astype(np.int64)
        missing = [v for v in spec.variable_names if v not in ds]
        if missing:
            raise ValueError(f"{name}: tile lacks variable(s) {missing}")
        groups[spec.group] = {
            v: np.ascontiguousarray(ds[v].values, dtype=np.float32) for v in spec.variable_names
        }
    return Batch(times=times, step=step, grid=grid, levels=levels, species=species, groups=groups)


def _open_tiles(modality: str, paths: Sequence[str | Path], plan: Plan) -> xr.Dataset:
    expected = plan.tile_settings_hash(catalogue.modality(modality))
    parts = []
    try:
        for path in sorted(paths):
            ds = open_tile(path, modality)
            parts.append(ds)
            if ds.attrs["settings_hash"] != expected:
                raise ValueError(
                    f"{path}: built under other settings than the config implies for "
                    f"{modality} (settings_hash {ds.attrs['settings_hash'][:12]}, expected "
                    f"{expected[:12]}): rerun the workflow, which rebuilds it"
                )
    except BaseException:
        for ds in parts:
            ds.close()
        raise
    return parts[0] if len(parts) == 1 else xr.concat(parts, dim="time", data_vars="all")


def build_batch(
    t0: str, tile_paths: Mapping[str, Sequence[str | Path]], out: str | Path, plan: Plan
) -> Path:
    start = parse_t0(t0)
    wanted = {m.name for m in plan.modalities}
    missing, extra = sorted(wanted - set(tile_paths)), sorted(set(tile_paths) - wanted)
    if missing or extra:
        raise ValueError(
            f"--tile: the study's modalities are {sorted(wanted)}; missing "
            f"{missing}, not in the study {extra}"
        )
    tiles: dict[str, xr.Dataset] = {}
    try:
        for modality, paths in tile_paths.items():
            tiles[modality] = _open_tiles(modality, paths, plan)
        batch = assemble(start, plan.step, plan.grid, tiles)
    finally:
        for ds in tiles.values():
            ds.close()
    path = write_batch(batch, out, provenance(plan.config, plan.batch_settings()))
    log.info("wrote %s (%s .. %s)", path, *batch.times)
    return path


def parse_tile_args(values: Sequence[str]) -> dict[str, list[str]]:
    """``["era5_surface=a.nc,b.nc", "era5_static=s.nc"]`` -> {modality: [paths]}."""
    out: dict[str, list[str]] = {}
    for value in values:
        modality, sep, paths = value.partition("=")
        if not sep or not modality or not paths:
            raise ValueError(f"--tile: expected MODALITY=PATH[,PATH...], got {value!r}")
        catalogue.modality(modality)  # names the known ones when unknown
        out.setdefault(modality, []).extend(p for p in paths.split(",") if p)
    return out


def _run(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    build_batch(args.t0, parse_tile_args(args.tile), args.out, plan)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "batch", __doc__, "assemble one bfm-batch/1 HDF5 file from tiles")
    p.add_argument("--t0", required=True, help="first time of the batch, YYYYMMDDTHH")
    p.add_argument(
        "--tile",
        action="append",
        required=True,
        metavar="MODALITY=PATH",
        help="tile(s) of one modality; repeat for every modality of the study",
    )
    add_config_argument(p)
    p.add_argument("--out", required=True, help="output batch file (.h5)")
    p.set_defaults(func=_run)
