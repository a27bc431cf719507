"""Pure helpers that sources' ``to_tile`` share: the time rule, the valid-range rule and
per-variable regridding (rules in ``bfm.contracts.tile``).

:func:`gridded_tile` is the whole ``to_tile`` of a source whose native form is a regular
lat/lon Dataset with dims ``(time, [level], latitude, longitude)`` (static: no time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bfm import __version__, regrid
from bfm.contracts import tile as contract
from bfm.contracts import timeaxis
from bfm.contracts.catalogue import Modality, RegridMethod, Variable
from bfm.contracts.grid import Grid

if TYPE_CHECKING:
    import xarray as xr

REGRIDDERS: dict[RegridMethod, Callable[[np.ndarray, Grid, Grid], np.ndarray]] = {
    RegridMethod.CONSERVATIVE: regrid.conservative,
    RegridMethod.MODE: regrid.mode,
    RegridMethod.NEAREST: regrid.nearest,
}


def native_grid(raw: xr.Dataset, grid: Grid, where: str) -> Grid:
    """The regular grid of a native Dataset; it must cover every cell of ``grid``."""
    try:
        native = regrid.grid_from_coords(raw["latitude"].values, raw["longitude"].values)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if not regrid.covers(native, grid):
        raise ValueError(f"{where}: latitude/longitude {native} do not cover the target {grid}")
    return native


def interval_index(events: pd.DatetimeIndex, times: pd.DatetimeIndex, step: str) -> np.ndarray:
    """Index k of the interval [times[k], times[k] + step) holding each event, else -1."""
    ends = times + timeaxis.offset(step)
    pos = times.searchsorted(events, side="right") - 1
    ok = np.asarray(events.notna()) & (pos >= 0)
    ok[ok] &= np.asarray(events[ok] < ends[pos[ok]])
    return np.where(ok, pos, -1)


def check_native_times(
    native: pd.DatetimeIndex, times: pd.DatetimeIndex, step: str, where: str
) -> None:
    """Every native time of every tile interval must be in the file (else the file is cut)."""
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


def interval_mean(data: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, int]:
    """Mean of ``data[members]`` over the first axis (float64) and the number of values left
    missing because some member was missing there (the time rule: no partial means)."""
    total = np.zeros(data.shape[1:])
    complete = np.ones(data.shape[1:], dtype=bool)
    some = np.zeros(data.shape[1:], dtype=bool)
    for i in members:
        values = data[i].astype(np.float64)
        finite = np.isfinite(values)
        total += np.where(finite, values, 0.0)
        complete &= finite
        some |= finite
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(complete, total / len(members), np.nan)
    return mean, int((some & ~complete).sum())


def mask_out_of_range(values: np.ndarray, var: Variable, where: str) -> tuple[np.ndarray, int]:
    """Set native values outside ``var``'s valid range missing (the valid-range rule).

    Returns the masked array (float, a copy only when something is masked) and the count;
    raises ValueError naming ``where``, the variable and a value when too many are bad.
    """
    lo, hi = var.valid_range
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(values) & ((values < lo) | (values > hi))
    n = int(bad.sum())
    if not n:
        return values, 0
    if n > contract.MAX_OUT_OF_RANGE * values.size:
        example = values[bad].flat[0]
        raise ValueError(
            f"{where}: variable {var.name!r}: {n} of {values.size} values lie outside its valid "
            f"range [{lo}, {hi}] (e.g. {example!r}): a wrong unit or an undeclared fill value?"
        )
    return np.where(bad, np.nan, values).astype(values.dtype), n


def gridded_tile(
    raw: xr.Dataset,
    modality: Modality,
    grid: Grid,
    times: pd.DatetimeIndex,
    step: str,
    period: str,
    attrs: Mapping[str, str],
    prov: Mapping[str, str],
) -> xr.Dataset:
    """Regrid a normalised native Dataset to the tile of ``period`` (the time rule, the
    valid-range rule, then each variable's catalogue regrid method)."""
    import xarray as xr

    where = raw.encoding.get("source", f"<{modality.source} dataset>")
    native = native_grid(raw, grid, where)
    dims = modality.tile_dims
    coords: dict = {}
    time_method = ""
    if modality.periodic:
        if len(times) == 0:
            raise ValueError(f"{where}: time: no step of the window falls in period {period}")
        native_times = pd.DatetimeIndex(raw["time"].values)
        check_native_times(native_times, times, step, where)
        index = interval_index(native_times, pd.DatetimeIndex(times), step)
        members: Sequence[np.ndarray] = [np.flatnonzero(index == k) for k in range(len(times))]
        coords["time"] = pd.DatetimeIndex(times)
        time_method = "time: point" if all(len(m) == 1 for m in members) else "time: mean"
    if "level" in dims:
        coords["level"] = raw["level"].values.astype(np.int64)
    missing = [v for v in modality.variable_names if v not in raw]
    if missing:
        raise ValueError(f"{where}: missing variable(s) {missing} of {modality.name!r}")
    data_vars = {}
    for var in modality.variables:
        field = raw[var.name]
        if not modality.periodic and "time" in field.dims:
            field = field.isel(time=0)
        if set(field.dims) != set(dims):
            raise ValueError(f"{where}: variable {var.name!r} has dims {field.dims}, need {dims}")
        values, n_bad = mask_out_of_range(field.transpose(*dims).values, var, where)
        method = REGRIDDERS[var.regrid]
        if modality.periodic:
            parts = [interval_mean(values, m) for m in members]
            out = np.stack([method(mean, native, grid) for mean, _ in parts])
            n_incomplete = sum(n for _, n in parts)
        else:
            out, n_incomplete = method(values, native, grid), 0
        data_vars[var.name] = xr.Variable(
            dims, out.astype(np.float32), {"n_out_of_range": n_bad, "n_incomplete": n_incomplete}
        )
    attrs = {
        **attrs,
        "history": f"bfm {__version__} tile {modality.name}: "
        + (f"time mean over [t, t + {step}), " if modality.periodic else "")
        + f"regridding {native.res} -> {grid.res} deg ({_methods(modality)})",
    }
    if modality.periodic:
        attrs["step"] = step
    ds = xr.Dataset(data_vars, coords=coords)
    return contract.finish(ds, modality, grid, period, attrs, prov, time_method)


def _methods(modality: Modality) -> str:
    return ", ".join(f"{v.name} {v.regrid.value}" for v in modality.variables)


def yearly_at(years: np.ndarray, values: np.ndarray, times: pd.DatetimeIndex) -> np.ndarray:
    """The yearly rule: at each model time, the value of the year the time falls in.

    ``years`` (Y,) ints, ``values`` (Y, ...) with NaN where the source has no value; the
    result is (T, ...), NaN for a time whose year the source lacks: a value is never carried
    forward or back from another year.
    """
    years = np.asarray(years)
    if len(set(years.tolist())) != len(years):
        raise ValueError(f"yearly values: repeated year in {sorted(years.tolist())}")
    index = {int(y): i for i, y in enumerate(years)}
    out = np.full((len(times), *values.shape[1:]), np.nan)
    for k, year in enumerate(pd.DatetimeIndex(times).year):
        if int(year) in index:
            out[k] = values[index[int(year)]]
    return out
