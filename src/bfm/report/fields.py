"""Map items: the per-gridpoint error maps, forecast against truth, species suitability.

Inputs (CF NetCDF, read with xarray and netCDF4):

- ``error_maps.nc`` of ``bfm evaluate`` (``bfm.evaluation.error_maps``): dims (lead,
  latitude, longitude), float32 ``rmse_{forecast}_{short}`` per forecast (model,
  persistence, climatology) and headline line (``rmse_model_z500``), attrs ``units``,
  ``long_name``, ``bfm_variable``, ``bfm_channel``;
- ``forecast.nc`` of ``bfm predict``: dims time (valid times), latitude, longitude, ``level``
  (hPa) for atmospheric variables and ``species``; per dynamic variable ``v`` the ensemble
  mean (physical units) and ``v_spread``; scalar coordinate ``forecast_reference_time``,
  auxiliary coordinate ``lead(time)``; optional ``suitability`` (species, latitude,
  longitude) with ``species_key`` (or a ``species`` coordinate) and ``species_name``;
- the truth of a valid time: the batch whose second time (``times[1]``) is that time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.contracts.batch import read_batch
from bfm.report.common import HEADLINE_ORDER, figure_format, save_figure
from bfm.report.maps import (
    BOUNDARIES,
    MapGrid,
    Panel,
    colorbar,
    country_rings,
    draw_field,
    draw_rows,
    limits,
    map_figure,
    symmetric,
)

# The fields of the forecast maps: (batch group, variable, level or None, short name).
FORECAST_FIELDS = (("surface", "t2m", None, "t2m"), ("surface", "msl", None, "msl"),
                   ("atmospheric", "z", 500, "z500"))  # fmt: skip
SEQUENTIAL, DIVERGING, SUITABILITY = "viridis", "RdBu_r", "YlGn"
SUITABILITY_COLUMNS = 5


def open_netcdf(path: str | Path) -> Any:
    """An xarray Dataset of a NetCDF file; ValueError naming the file when it is not one."""
    import xarray as xr

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot open as NetCDF ({err})") from err


def _grid(ds: Any, path: str | Path) -> MapGrid:
    for name in ("latitude", "longitude"):
        if name not in ds.coords:
            raise ValueError(f"{path}: no coordinate {name!r}")
    return MapGrid.of(ds["latitude"].values, ds["longitude"].values, str(path))


# --- error maps -----------------------------------------------------------------------------


def error_map_lines(ds: Any, path: str | Path) -> list[str]:
    """The short names with a ``rmse_model_<short>`` map, headline order first."""
    shorts = [str(v).removeprefix("rmse_model_") for v in ds.data_vars
              if str(v).startswith("rmse_model_")]  # fmt: skip
    if not shorts:
        raise ValueError(f"{path}: no variable rmse_model_<line> (the evaluated model has no "
                         "headline line, so there is no error map to draw)")  # fmt: skip
    for s in shorts:
        if tuple(ds[f"rmse_model_{s}"].dims) != ("lead", "latitude", "longitude"):
            raise ValueError(f"{path}: rmse_model_{s} has dims {ds[f'rmse_model_{s}'].dims}, "
                             "expected ('lead', 'latitude', 'longitude')")  # fmt: skip
    rank = {s: i for i, s in enumerate(HEADLINE_ORDER)}
    return sorted(shorts, key=lambda s: (rank.get(s, len(rank)), s))


def error_map_rows(ds: Any, path: str | Path, lead: int) -> list[list[Panel]]:
    """Per headline line: the model's RMSE at ``lead`` (0 .. max) and the model's minus
    persistence's RMSE (diverging, centred at 0) where the file has persistence."""
    leads = [int(v) for v in ds["lead"].values] if "lead" in ds.coords else []
    if lead not in leads:
        raise ValueError(f"{path}: lead {lead} is not in the file (leads: {leads})")
    rows = []
    for short in error_map_lines(ds, path):
        model = ds[f"rmse_model_{short}"].sel(lead=lead)
        unit = model.attrs.get("units", "")
        values = np.asarray(model.values, float)
        row = [Panel(f"{short}: model RMSE", values, SEQUENTIAL, 0.0, limits(values)[1],
                     f"RMSE ({unit})")]  # fmt: skip
        name = f"rmse_persistence_{short}"
        if name in ds:
            diff = values - np.asarray(ds[name].sel(lead=lead).values, float)
            row.append(Panel(f"{short}: model - persistence RMSE", diff, DIVERGING,
                             *symmetric(diff), f"RMSE difference ({unit})"))  # fmt: skip
        rows.append(row)
    return rows


def plot_error_maps(path: str | Path, out: str | Path, lead: int = 1,
                    boundaries: str | Path = BOUNDARIES) -> Path:  # fmt: skip
    """Per headline line: the model's RMSE per cell at ``lead`` and the model's minus
    persistence's RMSE (negative, blue: the model is better there)."""
    figure_format(out)
    with open_netcdf(path) as ds:
        grid, rows = _grid(ds, path), error_map_rows(ds, path, lead)
    title = f"Per-gridpoint RMSE at lead {lead} (held-out batches)"
    return draw_rows(grid, rows, 2, title, boundaries, out)


# --- forecast against truth -----------------------------------------------------------------


def batch_times(path: str | Path) -> tuple[pd.Timestamp, ...]:
    """The ``times`` root attribute of a batch file (without reading its fields)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs["times"]
    except (OSError, KeyError) as err:
        raise ValueError(f"{path}: not a batch file with root attribute 'times' ({err})") from err
    try:
        return tuple(pd.Timestamp(t) for t in json.loads(raw))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: root attribute 'times' is not a JSON list of times") from err


def truth_batch(batches: Sequence[str | Path], valid: pd.Timestamp) -> Path:
    """The batch whose second time is ``valid``; ValueError when none of them is."""
    for path in batches:
        times = batch_times(path)
        if len(times) == 2 and times[1] == valid:
            return Path(path)
    raise ValueError(f"no batch among the {len(batches)} given has times[1] = {valid} (the "
                     "truth of that valid time of the forecast)")  # fmt: skip


def forecast_fields(ds: Any, path: str | Path) -> list[tuple[str, str, int | None, str]]:
    """(group, name in the file, level, short) of the FORECAST_FIELDS the forecast has (z500
    needs level 500); ValueError for none."""
    found = []
    for group, var, level, short in FORECAST_FIELDS:
        # bfm predict prefixes a name two dynamic groups share with the group: atmospheric_z
        name = next((n for n in (var, f"{group}_{var}") if n in ds.data_vars), None)
        if name is None:
            continue
        levels = [int(x) for x in ds["level"].values] if "level" in ds[name].dims else []
        if level is None or level in levels:
            found.append((group, name, level, short))
    if not found:
        raise ValueError(f"{path}: none of t2m, msl and z (at 500 hPa) is in the forecast")
    return found


def _lead_label(ds: Any, i: int) -> str:
    if "lead" not in ds.coords:
        return f"step {i + 1}"
    value = ds["lead"].values[i]
    if np.issubdtype(np.asarray(value).dtype, np.timedelta64):
        return f"lead {pd.Timedelta(value)}"
    return f"lead {int(value)}"


def _forecast_panel(ds: Any, var: str, level: int | None, i: int) -> np.ndarray:
    field = ds[var].isel(time=i)
    if level is not None:
        field = field.sel(level=level)
    if tuple(field.dims) != ("latitude", "longitude"):
        raise ValueError(f"forecast variable {var!r}: dims {field.dims} left after choosing "
                         "a time and level, expected (latitude, longitude)")  # fmt: skip
    return np.asarray(field.values, float)


def forecast_rows(ds: Any, path: str | Path, batches: Sequence[str | Path]) -> list[list[Panel]]:
    """Per field (t2m, msl, z500) and lead (the first and the last): forecast | truth (one
    scale) | forecast - truth (diverging, centred at 0)."""
    grid, fields = _grid(ds, path), forecast_fields(ds, path)
    if "time" not in ds.dims or ds.sizes["time"] < 1:
        raise ValueError(f"{path}: no dimension 'time' (the valid times)")
    steps = sorted({0, ds.sizes["time"] - 1})
    truths = {}
    for i in steps:
        valid = pd.Timestamp(ds["time"].values[i])
        # only the groups drawn: a plugin's group in the batch needs no module here
        batch = read_batch(truth_batch(batches, valid), only=tuple({g for g, *_ in fields}))
        if not grid.matches(batch.grid.latitudes, batch.grid.longitudes):
            raise ValueError(f"{batch.source}: grid {batch.grid} is not the grid of the "
                             f"forecast {path}")  # fmt: skip
        truths[i] = (valid, batch)
    rows = []
    for group, var, level, short in fields:
        unit = ds[var].attrs.get("units", "")
        for i in steps:
            valid, batch = truths[i]
            truth = batch.groups[group][var.removeprefix(f"{group}_")][1]
            if level is not None:
                truth = truth[list(batch.levels).index(level)]
            truth = np.asarray(truth, float)
            pred = _forecast_panel(ds, var, level, i)
            when = f"{short}, {_lead_label(ds, i)}, valid {valid:%Y-%m-%d %H:%M}"
            lo, hi = limits(pred, truth)
            rows.append([
                Panel(f"{when}\nforecast (ensemble mean)", pred, SEQUENTIAL, lo, hi, ""),
                Panel(f"{when}\ntruth", truth, SEQUENTIAL, lo, hi, f"{short} ({unit})"),
                Panel(f"{when}\nforecast - truth", pred - truth, DIVERGING,
                      *symmetric(pred - truth), f"error ({unit})"),
            ])  # fmt: skip
    return rows


def plot_forecast_maps(path: str | Path, batches: Sequence[str | Path], out: str | Path,
                       boundaries: str | Path = BOUNDARIES) -> Path:  # fmt: skip
    """For t2m, msl and z500 at the first and the last lead: forecast | truth | forecast
    minus truth, forecast and truth on one colour scale."""
    figure_format(out)
    with open_netcdf(path) as ds:
        grid, rows = _grid(ds, path), forecast_rows(ds, path, batches)
        start = ds.coords.get("forecast_reference_time")
        since = f" from {pd.Timestamp(start.values):%Y-%m-%d %H:%M}" if start is not None else ""
    title = f"Forecast{since} against the truth (held-out batches)"
    return draw_rows(grid, rows, 3, title, boundaries, out)


# --- species suitability --------------------------------------------------------------------


def species_titles(ds: Any) -> list[str]:
    """Per species: its name where the file has ``species_name``, else its GBIF key."""
    n = ds.sizes["species"]
    if "species_name" in ds.variables:
        return [str(s) for s in ds["species_name"].values]
    for name in ("species_key", "species"):
        if name in ds.variables:
            return [f"GBIF key {int(k)}" for k in ds[name].values]
    return [f"species {i + 1}" for i in range(n)]


def plot_suitability_maps(path: str | Path, out: str | Path,
                          boundaries: str | Path = BOUNDARIES) -> Path:  # fmt: skip
    """One small map per species of the forecast's ``suitability`` (0..1)."""
    figure_format(out)
    with open_netcdf(path) as ds:
        if "suitability" not in ds.data_vars:
            raise ValueError(f"{path}: no variable 'suitability': this forecast has no "
                             "species suitability to map (bfm predict writes it for a model "
                             "with an SDM head)")  # fmt: skip
        suit = ds["suitability"]
        if tuple(suit.dims) != ("species", "latitude", "longitude"):
            raise ValueError(f"{path}: suitability has dims {suit.dims}, expected "
                             "('species', 'latitude', 'longitude')")  # fmt: skip
        values = np.asarray(suit.values, float)
        bad = np.isfinite(values) & ((values < 0) | (values > 1))
        if bad.any():
            raise ValueError(f"{path}: suitability must lie in 0..1, got values from "
                             f"{np.nanmin(values):.4g} to {np.nanmax(values):.4g}")  # fmt: skip
        grid, titles = _grid(ds, path), species_titles(ds)
        if not titles:
            raise ValueError(f"{path}: suitability has no species")
        rings = country_rings(boundaries)
        ncols = min(SUITABILITY_COLUMNS, len(titles))
        fig, axes = map_figure(grid, math.ceil(len(titles) / ncols), ncols, extra_width=0.2)
        mesh = None
        for ax, title, field in zip(axes.flat, titles, values, strict=False):
            mesh = draw_field(ax, grid, field, title=title, cmap=SUITABILITY, vmin=0.0,
                              vmax=1.0, rings=rings)  # fmt: skip
        for ax in axes.flat[len(titles) :]:
            ax.set_visible(False)
        if mesh is not None:
            colorbar(fig, mesh, list(axes.flat[: len(titles)]), "suitability (0..1)")
        fig.suptitle("Species suitability", fontsize=10)
    return save_figure(fig, out)
