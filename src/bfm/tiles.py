"""Tiles: one CF-1.10 NetCDF per modality and period on the target grid (DESIGN.md §3).

Paths: ``results/tiles/<modality>/<period>.nc``; the static tile is
``results/tiles/era5_static/static.nc``.

======================  ==================================  ===================================
modality                variables                           dims
======================  ==================================  ===================================
``era5_surface``        t2m, msl, u10, v10                  time, latitude, longitude
``era5_atmospheric``    z, t, u, v, q                       time, level, latitude, longitude
``era5_static``         z, lsm, slt                         latitude, longitude
``species_occurrence``  occurrence (records per cell)       time, species, latitude, longitude
======================  ==================================  ===================================

Coordinates: ``time`` (datetime), ``level`` (int hPa, ascending), ``species`` (int64 GBIF keys,
with a ``scientific_name`` string variable), ``latitude`` (descending), ``longitude``. Data
variables are float32 with ``units``, ``long_name``, ``standard_name`` where CF has one,
``cell_methods`` and a NaN ``_FillValue``. Global attributes: Conventions, title, modality,
source, licence, citation, history, institution, grid (``Grid.to_json()``), step, time_rule,
period and the provenance (bfm_version, git_commit, config_hash).

Time rule (also in each tile's ``time_rule`` attribute): the tile's times are the configured
steps of the window inside the month (``bfm.timeaxis.steps_in_period``). A continuous
instantaneous field (ERA5, 6-hourly) at time t is the mean of its native times in
[t, t + step): for step 6h that is the value at t, for 1D the mean of 00/06/12/18 UTC, for 1MS
the monthly mean; every native time of the interval must be present. Point observations are
counted in [t, t + step); a date-only eventDate counts at 00:00 of its day.

Regridding (``bfm.regrid``): conservative for continuous fields including the land fraction
lsm (after the time mean); majority (mode) for the soil type slt; counts for occurrences.

Builders (``era5_tile``, ``era5_static_tile``, ``species_tile``) are pure: Dataset or
DataFrame in, Dataset out. ``write_tile`` and ``open_tile`` validate and do the I/O.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bfm import __version__, regrid, timeaxis
from bfm.cliutil import add_grid_argument
from bfm.fileio import atomic_path
from bfm.grid import Grid
from bfm.paths import tile_path  # noqa: F401  (part of this module's interface)
from bfm.provenance import provenance
from bfm.sources import era5, gbif

log = logging.getLogger(__name__)
TIME_RULE = (
    "times are the configured steps of the window inside the month; a continuous field at t is "
    "the mean of its native times in [t, t + step) (6h from 6-hourly data: the value at t); "
    "point observations are counted in [t, t + step), a date-only eventDate at 00:00"
)
INSTITUTION = "Biodiversity Foundation Model (BFM) pipeline"
REQUIRED_ATTRS = ("Conventions", "title", "modality", "source", "licence", "citation", "history",
                  "institution", "grid", "time_rule", "bfm_version", "git_commit",
                  "config_hash")  # fmt: skip


@dataclass(frozen=True)
class Var:
    units: str
    long_name: str
    standard_name: str | None = None
    method: str = "conservative"  # conservative | mode | count


@dataclass(frozen=True)
class Modality:
    dims: tuple[str, ...]
    variables: dict[str, Var]


MODALITIES = {
    "era5_surface": Modality(("time", "latitude", "longitude"), {
        "t2m": Var("K", "2 metre temperature", "air_temperature"),
        "msl": Var("Pa", "mean sea level pressure", "air_pressure_at_mean_sea_level"),
        "u10": Var("m s-1", "10 metre eastward wind", "eastward_wind"),
        "v10": Var("m s-1", "10 metre northward wind", "northward_wind"),
    }),
    "era5_atmospheric": Modality(("time", "level", "latitude", "longitude"), {
        "z": Var("m2 s-2", "geopotential", "geopotential"),
        "t": Var("K", "temperature", "air_temperature"),
        "u": Var("m s-1", "eastward wind", "eastward_wind"),
        "v": Var("m s-1", "northward wind", "northward_wind"),
        "q": Var("kg kg-1", "specific humidity", "specific_humidity"),
    }),
    "era5_static": Modality(("latitude", "longitude"), {
        "z": Var("m2 s-2", "surface geopotential", "surface_geopotential"),
        "lsm": Var("1", "land area fraction", "land_area_fraction"),
        "slt": Var("1", "soil type (0 water, 1..7 ERA5 soil classes)", None, "mode"),
    }),
    "species_occurrence": Modality(("time", "species", "latitude", "longitude"), {
        "occurrence": Var("1", "number of occurrence records", None, "count"),
    }),
}  # fmt: skip
ERA5_MODALITY = {"surface": "era5_surface", "atmospheric": "era5_atmospheric"}
COORD_ATTRS = {
    "time": {"standard_name": "time", "long_name": "time", "axis": "T"},
    "level": {"units": "hPa", "standard_name": "air_pressure", "long_name": "pressure level",
              "positive": "down", "axis": "Z"},
    "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude",
                 "axis": "Y"},
    "longitude": {"units": "degrees_east", "standard_name": "longitude",
                  "long_name": "longitude", "axis": "X"},
    "species": {"long_name": "GBIF species key"},
}  # fmt: skip


# --- pure builders -------------------------------------------------------------------------
def _native_grid(raw: xr.Dataset, grid: Grid, where: str) -> Grid:
    try:
        native = regrid.grid_from_coords(raw["latitude"].values, raw["longitude"].values)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if not regrid.covers(native, grid):
        raise ValueError(f"{where}: latitude/longitude {native} do not cover the target {grid}")
    return native


def _interval_index(events: pd.DatetimeIndex, times: pd.DatetimeIndex, step: str) -> np.ndarray:
    """Index k of the interval [times[k], times[k] + step) holding each event, else -1."""
    ends = times + timeaxis.offset(step)
    pos = times.searchsorted(events, side="right") - 1
    ok = np.asarray(events.notna()) & (pos >= 0)
    ok[ok] &= np.asarray(events[ok] < ends[pos[ok]])
    return np.where(ok, pos, -1)


def _check_native_times(
    native: pd.DatetimeIndex, times: pd.DatetimeIndex, step: str, where: str
) -> None:
    cadence = pd.Timedelta(np.diff(native.values).min()) if len(native) > 1 else None
    for t in times:
        end = t + timeaxis.offset(step)
        needed = pd.date_range(t, end, freq=cadence, inclusive="left") if cadence else [t]
        missing = pd.DatetimeIndex(needed).difference(native)
        if len(missing):
            raise ValueError(
                f"{where}: time: native time {missing[0]} is missing "
                f"(needed for the tile time {t} with step {step})"
            )


def _time_mean(data: np.ndarray, members: np.ndarray) -> np.ndarray:
    """NaN-aware mean of data[members] over the first axis, float64."""
    total = np.zeros(data.shape[1:])
    count = np.zeros(data.shape[1:])
    for i in members:
        values = data[i].astype(np.float64)
        finite = np.isfinite(values)
        total += np.where(finite, values, 0.0)
        count += finite
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def era5_tile(
    raw: xr.Dataset,
    group: str,
    grid: Grid,
    times: pd.DatetimeIndex,
    step: str,
    prov: Mapping[str, str],
    period: str,
) -> xr.Dataset:
    """Regrid a normalised ERA5 month (``era5.open``) to the tile of ``period``."""
    where = raw.encoding.get("source", "<era5 dataset>")
    if group not in ERA5_MODALITY:
        raise ValueError(f"{where}: group {group!r} has no time tile (use {list(ERA5_MODALITY)})")
    modality = ERA5_MODALITY[group]
    spec = MODALITIES[modality]
    if len(times) == 0:
        raise ValueError(f"{where}: time: no step of the window falls in period {period}")
    native = _native_grid(raw, grid, where)
    native_times = pd.DatetimeIndex(raw["time"].values)
    _check_native_times(native_times, times, step, where)
    index = _interval_index(native_times, pd.DatetimeIndex(times), step)
    members = [np.flatnonzero(index == k) for k in range(len(times))]
    data_vars = {}
    for name in spec.variables:
        if name not in raw:
            raise ValueError(f"{where}: missing variable {name!r} of group {group!r}")
        if set(raw[name].dims) != set(spec.dims):
            raise ValueError(
                f"{where}: variable {name!r} has dims {raw[name].dims}, need {spec.dims}"
            )
        values = raw[name].transpose(*spec.dims).values
        fields = [regrid.conservative(_time_mean(values, m), native, grid) for m in members]
        data_vars[name] = (spec.dims, np.stack(fields).astype(np.float32))
    coords = {"time": pd.DatetimeIndex(times)}
    if "level" in spec.dims:
        coords["level"] = raw["level"].values.astype(np.int64)
    time_method = "point" if all(len(m) == 1 for m in members) else "mean"
    attrs = {
        "source": f"ECMWF ERA5 {era5.DATASETS[group]} ({Path(where).name}: "
        f"{raw.attrs.get('history', 'no history')})",
        "licence": era5.LICENCE,
        "citation": era5.CITATION,
        "history": f"bfm {__version__} tile era5: time mean over [t, t + {step}), conservative "
        f"regridding {native.res} -> {grid.res} deg",
        "step": step,
    }
    ds = xr.Dataset(data_vars, coords=coords)
    return _finish(ds, modality, grid, period, attrs, prov, f"time: {time_method} area: mean")


def era5_static_tile(raw: xr.Dataset, grid: Grid, prov: Mapping[str, str]) -> xr.Dataset:
    """Regrid the ERA5 invariants: z and lsm conservatively, slt by majority."""
    where = raw.encoding.get("source", "<era5 dataset>")
    native = _native_grid(raw, grid, where)
    spec = MODALITIES["era5_static"]
    data_vars = {}
    for name, var in spec.variables.items():
        if name not in raw:
            raise ValueError(f"{where}: missing variable {name!r} of group 'static'")
        field = raw[name].isel(time=0) if "time" in raw[name].dims else raw[name]
        method = regrid.mode if var.method == "mode" else regrid.conservative
        data_vars[name] = (spec.dims, method(field.values, native, grid).astype(np.float32))
    attrs = {
        "source": f"ECMWF ERA5 {era5.DATASETS['static']} invariants ({Path(where).name})",
        "licence": era5.LICENCE,
        "citation": era5.CITATION,
        "history": f"bfm {__version__} tile era5-static: conservative (z, lsm) and majority "
        f"(slt) regridding {native.res} -> {grid.res} deg",
    }
    return _finish(xr.Dataset(data_vars), "era5_static", grid, None, attrs, prov, "area: mean")


def species_tile(
    occurrences: pd.DataFrame,
    species: pd.DataFrame,
    grid: Grid,
    times: pd.DatetimeIndex,
    step: str,
    prov: Mapping[str, str],
    period: str,
) -> xr.Dataset:
    """Count occurrence records (``gbif.open``) per time step, species and cell."""
    where = occurrences.attrs.get("source", "<occurrences>")
    if len(times) == 0:
        raise ValueError(f"{where}: time: no step of the window falls in period {period}")
    occ = occurrences
    if "occurrenceStatus" in occ.columns:  # ABSENT records are not occurrences
        occ = occ[occ["occurrenceStatus"].astype(str).str.upper() != "ABSENT"]
    keys = species["gbif_key"].to_numpy(np.int64)
    sp = pd.Index(keys).get_indexer(occ["speciesKey"].fillna(-1).astype(np.int64).to_numpy())
    t = _interval_index(pd.DatetimeIndex(occ["eventDate"]), pd.DatetimeIndex(times), step)
    group = np.where((sp >= 0) & (t >= 0), t * len(keys) + sp, -1)
    lat, lon = occ["decimalLatitude"].to_numpy(), occ["decimalLongitude"].to_numpy()
    counts = regrid.count_points(lat, lon, grid, group, len(times) * len(keys))
    counts = counts.reshape(len(times), len(keys), *grid.shape).astype(np.float32)
    ds = xr.Dataset(
        {
            "occurrence": (MODALITIES["species_occurrence"].dims, counts),
            "scientific_name": ("species", species["scientific_name"].astype(str).to_numpy(object)),
        },
        coords={"time": pd.DatetimeIndex(times), "species": keys},
    )
    ds["scientific_name"].attrs["long_name"] = "scientific name of the species"
    attrs = {
        "source": f"GBIF occurrence download, SIMPLE_CSV ({Path(where).name})",
        "licence": occurrences.attrs.get("licence", gbif.LICENCE),
        "citation": occurrences.attrs.get("citation", "GBIF.org, GBIF Occurrence Download"),
        "history": f"bfm {__version__} tile species: records counted per cell in [t, t + {step})",
        "step": step,
    }
    return _finish(ds, "species_occurrence", grid, period, attrs, prov, "time: sum area: sum")


def _finish(
    ds: xr.Dataset,
    modality: str,
    grid: Grid,
    period: str | None,
    attrs: dict[str, str],
    prov: Mapping[str, str],
    cell_methods: str,
) -> xr.Dataset:
    ds = ds.assign_coords(latitude=grid.latitudes, longitude=grid.longitudes)
    for name, coord_attrs in COORD_ATTRS.items():
        if name in ds.coords:
            ds[name].attrs.update(coord_attrs)
    for name, var in MODALITIES[modality].variables.items():
        ds[name].attrs.update({"units": var.units, "long_name": var.long_name})
        if var.standard_name:
            ds[name].attrs["standard_name"] = var.standard_name
        ds[name].attrs["cell_methods"] = cell_methods.replace(
            "area: mean", "area: mode" if var.method == "mode" else "area: mean"
        )
    ds.attrs = {
        "Conventions": "CF-1.10",
        "title": f"BFM {modality} tile" + (f" {period}" if period else ""),
        "modality": modality,
        "institution": INSTITUTION,
        "grid": grid.to_json(),
        "time_rule": TIME_RULE if "time" in ds.dims else "invariant fields: no time axis",
        **({"period": period} if period else {}),
        **attrs,
        **dict(prov),
    }
    return ds


# --- validation and I/O --------------------------------------------------------------------
def validate_tile(ds: xr.Dataset, modality: str, where: str) -> Grid:
    """Raise ValueError naming ``where`` and the field if ``ds`` breaks the tile contract."""
    if modality not in MODALITIES:
        raise ValueError(f"{where}: unknown modality {modality!r} (known: {list(MODALITIES)})")
    spec = MODALITIES[modality]
    for key in REQUIRED_ATTRS + (("step",) if "time" in spec.dims else ()):
        if key not in ds.attrs:
            raise ValueError(f"{where}: missing global attribute {key!r}")
    if ds.attrs["Conventions"] != "CF-1.10" or ds.attrs["modality"] != modality:
        raise ValueError(f"{where}: attributes Conventions/modality are not CF-1.10/{modality}")
    try:
        grid = Grid.from_json(ds.attrs["grid"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: attribute 'grid' is not a valid grid ({err})") from err
    for name, expected in (("latitude", grid.latitudes), ("longitude", grid.longitudes)):
        if name not in ds.coords:
            raise ValueError(f"{where}: missing coordinate {name!r}")
        values = ds[name].values
        if values.shape != expected.shape or not np.allclose(values, expected, atol=1e-9):
            raise ValueError(f"{where}: coordinate {name!r} does not match the grid {grid}")
    for name in spec.variables:
        if name not in ds.data_vars:
            raise ValueError(f"{where}: missing variable {name!r}")
        if ds[name].dims != spec.dims or ds[name].dtype != np.float32:
            raise ValueError(
                f"{where}: variable {name!r} has dims {ds[name].dims} and dtype "
                f"{ds[name].dtype}, expected {spec.dims} float32"
            )
    for coord in set(spec.dims) - {"latitude", "longitude"}:
        if coord not in ds.coords:
            raise ValueError(f"{where}: missing coordinate {coord!r}")
    if "species" in spec.dims and "scientific_name" not in ds.variables:
        raise ValueError(f"{where}: missing variable 'scientific_name'")
    return grid


def _encoding(ds: xr.Dataset) -> dict:
    # One chunk per 2-D field; no _FillValue on coordinates (CF); integer hours for time.
    enc: dict = {name: {"_FillValue": None} for name in ds.coords}
    for name, var in ds.data_vars.items():
        if var.dtype == np.float32:
            chunks = tuple(ds.sizes[d] if d in ("latitude", "longitude") else 1 for d in var.dims)
            enc[name] = dict(zlib=True, complevel=4, shuffle=True, chunksizes=chunks,
                             _FillValue=np.float32(np.nan))  # fmt: skip
    if "time" in ds.coords:
        enc["time"].update(units="hours since 1970-01-01", calendar="proleptic_gregorian")
        enc["time"]["dtype"] = "int64"
    return enc


def write_tile(ds: xr.Dataset, path: str | Path) -> Path:
    """Validate and write atomically (temp file + rename)."""
    path = Path(path)
    validate_tile(ds, str(ds.attrs.get("modality")), str(path))
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=_encoding(ds))
    return path


def open_tile(path: str | Path, modality: str) -> xr.Dataset:
    """Open (lazily; close it or use ``with``) and validate a tile of ``modality``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tile")
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as netCDF ({err})") from err
    try:
        validate_tile(ds, modality, str(path))
    except ValueError:
        ds.close()
        raise
    return ds


# --- command line --------------------------------------------------------------------------
def _window(args: argparse.Namespace) -> pd.DatetimeIndex:
    timeaxis.check_step(args.step)
    timeaxis.period_bounds(args.period)  # validates YYYY-MM
    return timeaxis.steps_in_period(args.period, args.start, args.end, args.step)


def _settings(args: argparse.Namespace, modality: str) -> dict:
    keys = ("period", "start", "end", "step")
    return {
        "modality": modality,
        "grid": args.grid.to_dict(),
        **{k: getattr(args, k) for k in keys if hasattr(args, k)},
    }


def _write(ds: xr.Dataset, out: str) -> int:
    log.info("wrote %s", write_tile(ds, out))
    return 0


def _run_era5(args: argparse.Namespace) -> int:
    prov = provenance(_settings(args, ERA5_MODALITY[args.group]))
    raw = era5.open(args.input, args.group)
    times = _window(args)
    return _write(
        era5_tile(raw, args.group, args.grid, times, args.step, prov, args.period), args.out
    )


def _run_static(args: argparse.Namespace) -> int:
    prov = provenance(_settings(args, "era5_static"))
    return _write(era5_static_tile(era5.open(args.input, "static"), args.grid, prov), args.out)


def _run_species(args: argparse.Namespace) -> int:
    prov = provenance(_settings(args, "species_occurrence"))
    occurrences, species = gbif.open(args.input), gbif.read_species(args.species)
    times = _window(args)
    ds = species_tile(occurrences, species, args.grid, times, args.step, prov, args.period)
    return _write(ds, args.out)


def _add_window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--period", required=True, help="month of the tile, YYYY-MM")
    p.add_argument("--start", required=True, help="first time of the window, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last time of the window, YYYY-MM-DD")
    p.add_argument("--step", required=True, choices=timeaxis.STEPS, help="model time step")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bfm tile era5``, ``bfm tile era5-static`` and ``bfm tile species``."""
    tile = sub.add_parser("tile", help="regrid raw source files into CF NetCDF tiles")
    kinds = tile.add_subparsers(title="modalities", metavar="KIND", required=True)
    p = kinds.add_parser("era5", help="ERA5 surface or pressure-level month -> tile")
    p.add_argument("--group", required=True, choices=tuple(ERA5_MODALITY), help="ERA5 group")
    p.add_argument("--input", required=True, help="raw ERA5 netCDF of the month")
    add_grid_argument(p)
    _add_window(p)
    p.add_argument("--out", required=True, help="tile to write (.nc)")
    p.set_defaults(func=_run_era5)
    p = kinds.add_parser("era5-static", help="ERA5 invariants (z, lsm, slt) -> static tile")
    p.add_argument("--input", required=True, help="raw ERA5 static netCDF")
    add_grid_argument(p)
    p.add_argument("--out", required=True, help="tile to write (.nc)")
    p.set_defaults(func=_run_static)
    p = kinds.add_parser("species", help="GBIF occurrences -> per-species count tile")
    p.add_argument("--input", required=True, help="GBIF SIMPLE_CSV download (.zip or .csv)")
    p.add_argument("--species", required=True, help="species list CSV (gbif_key, ...)")
    add_grid_argument(p)
    _add_window(p)
    p.add_argument("--out", required=True, help="tile to write (.nc)")
    p.set_defaults(func=_run_species)
