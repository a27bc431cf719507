"""Pure helpers that sources' ``to_tile`` share: the time rule, the valid-range rule and
per-variable regridding (rules in ``bfm.contracts.tile``).

:func:`gridded_tile` is the whole ``to_tile`` of a source whose native form is a regular
lat/lon Dataset with dims ``(time, [level], latitude, longitude)`` (static: no time).

Streaming: the native Dataset may be lazy (a file opened without loading). A periodic field is
then read in blocks of native times of at most :data:`BLOCK_BYTES` (one read per block); each
block is masked (valid-range rule) and added to the running means of the tile times it
belongs to, and a tile time is regridded as soon as its last native time has been added. A
month of 0.25 deg Europe pressure levels (1.6 GB of float32) is never in memory at once, and
the results are those of the whole-array computation bit for bit: the same values are summed
in the same order (native time order), and the valid-range counts and the refusal threshold
are over the whole field. :func:`take` cuts and reorders a lazy Dataset without loading it.

The tile is made one variable at a time too: :func:`gridded_parts` yields each variable as it
is computed, and ``contract.write_tile_parts`` writes it and lets it go before the next one
(``bfm tile`` for ERA5), so a job holds one variable of the tile, not all of them (the same
file as ``write_tile`` of :func:`gridded_tile`, byte for byte).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
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


def take(ds: xr.Dataset, positions: Mapping[str, np.ndarray]) -> xr.Dataset:
    """``ds.isel(positions)`` that stays lazy and reads fast from a netCDF file.

    A dimension whose positions are one ascending run becomes a slice; one descending run
    an index (read as a slice, reversed in memory); several runs (a global 0..360 file
    wrapped to [-180, 180), then cut to Europe: two runs of longitudes) a lazy variable that
    reads each run as a slice and joins them: indexing a netCDF variable with scattered
    positions would read it once per position.
    """
    for dim, pos in positions.items():
        pos = np.asarray(pos, dtype=np.int64)
        steps = np.diff(pos)
        if len(pos) and (steps == 1).all():
            ds = ds.isel({dim: slice(int(pos[0]), int(pos[-1]) + 1)})
        elif (steps == -1).all():
            ds = ds.isel({dim: pos})
        else:
            ds = _take_runs(ds, dim, pos)
    return ds


def _take_runs(ds: xr.Dataset, dim: str, pos: np.ndarray) -> xr.Dataset:
    import xarray as xr
    from xarray.core import indexing

    def lazy(var: xr.Variable) -> xr.Variable:
        runs = _runs_array()(var, var.dims.index(dim), pos)
        # Cached like a variable of xr.open_dataset: ``.values`` loads once and may be edited.
        data = indexing.MemoryCachedArray(indexing.LazilyIndexedArray(runs))
        return xr.Variable(var.dims, data, var.attrs, var.encoding)

    lazies = {name: lazy(v.variable) for name, v in ds.data_vars.items() if dim in v.dims}
    out = ds.isel({dim: slice(0, len(pos))}).assign(lazies)  # the dimension's new size
    coords = {name: ds[name].variable.isel({dim: pos}) for name in ds.coords
              if dim in ds[name].dims}  # fmt: skip
    return out.assign_coords(coords)


@functools.cache
def _runs_array() -> type:
    """The lazy array class of :func:`take` (made on first use: xarray is imported late)."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class Runs(BackendArray):
        """``source`` at positions ``pos`` along ``axis``, one read per run of consecutive
        positions (an xarray backend array with BASIC indexing)."""

        def __init__(self, source: xr.Variable, axis: int, pos: np.ndarray) -> None:
            self.source, self.axis, self.pos = source, axis, pos
            shape = list(source.shape)
            shape[axis] = len(pos)
            self.shape, self.dtype = tuple(shape), source.dtype

        def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, self._read
            )

        def _read(self, key: tuple) -> np.ndarray:
            before, after = key[: self.axis], key[self.axis + 1 :]
            wanted = self.pos[key[self.axis]]
            if np.ndim(wanted) == 0:
                return np.asarray(self.source[(*before, int(wanted), *after)].values)
            # Integer keys before the axis drop dimensions: the axis moves left in the result.
            axis = self.axis - sum(not isinstance(k, slice) for k in before)
            runs = np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1)
            parts = [
                np.asarray(self.source[(*before, slice(r[0], r[-1] + 1), *after)].values)
                for r in runs
                if len(r)
            ]
            if not parts:  # an empty selection
                return np.asarray(self.source[(*before, slice(0, 0), *after)].values)
            return np.concatenate(parts, axis=axis)

    return Runs


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


class _RunningMean:
    """The time rule's mean over the native values of one tile time, added one at a time in
    native time order (what :func:`interval_mean` computes over a whole array)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.total = np.zeros(shape)
        self.complete = np.ones(shape, dtype=bool)
        self.some = np.zeros(shape, dtype=bool)
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        values = values.astype(np.float64)
        finite = np.isfinite(values)
        self.total += np.where(finite, values, 0.0)
        self.complete &= finite
        self.some |= finite
        self.n += 1

    def result(self) -> tuple[np.ndarray, int]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.complete, self.total / self.n, np.nan)
        return mean, int((self.some & ~self.complete).sum())


def interval_mean(data: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, int]:
    """Mean of ``data[members]`` over the first axis (float64) and the number of values left
    missing because some member was missing there (the time rule: no partial means)."""
    acc = _RunningMean(data.shape[1:])
    for i in members:
        acc.add(data[i])
    return acc.result()


def _out_of_range(values: np.ndarray, var: Variable) -> np.ndarray:
    lo, hi = var.valid_range
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & ((values < lo) | (values > hi))


def _masked(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    return np.where(bad, np.nan, values).astype(values.dtype)


def _check_out_of_range(n: int, size: int, example: object, var: Variable, where: str) -> None:
    if n > contract.MAX_OUT_OF_RANGE * size:
        lo, hi = var.valid_range
        raise ValueError(
            f"{where}: variable {var.name!r}: {n} of {size} values lie outside its valid "
            f"range [{lo}, {hi}] (e.g. {example!r}): a wrong unit or an undeclared fill value?"
        )


def mask_out_of_range(values: np.ndarray, var: Variable, where: str) -> tuple[np.ndarray, int]:
    """Set native values outside ``var``'s valid range missing (the valid-range rule).

    Returns the masked array (float, a copy only when something is masked) and the count;
    raises ValueError naming ``where``, the variable and a value when too many are bad.
    """
    bad = _out_of_range(values, var)
    n = int(bad.sum())
    if not n:
        return values, 0
    _check_out_of_range(n, values.size, values[bad].flat[0], var, where)
    return _masked(values, bad), n


BLOCK_BYTES = 64 << 20  # native values read at once per variable (a few days of Europe)

Regridder = Callable[[np.ndarray, Grid, Grid], np.ndarray]


def _read(field: xr.DataArray, block: slice, dims: Sequence[Hashable], where: str) -> np.ndarray:
    """Native times ``block`` of ``field`` as an array with ``dims`` (from disk if lazy)."""
    try:
        return np.asarray(field.isel(time=block).transpose(*dims).values)
    except (OSError, RuntimeError) as err:
        raise ValueError(
            f"{where}: variable {field.name!r}: cannot read native times "
            f"{block.start}..{block.stop - 1} ({err})"
        ) from err


def _stream_mean(
    field: xr.DataArray,
    var: Variable,
    index: np.ndarray,
    n_times: int,
    regrid_to: Callable[[np.ndarray], np.ndarray],
    where: str,
) -> tuple[np.ndarray, int, int]:
    """The time rule and the valid-range rule over ``field`` read block by block.

    ``index[i]`` is the tile time of native time i (-1: none). Returns the regridded tile
    times (float32), the out-of-range count and the incomplete count.
    """
    dims = field.dims
    if dims[0] != "time":
        raise ValueError(f"{where}: variable {var.name!r}: time must be the first of {dims}")
    n_native = field.sizes["time"]
    row_bytes = field.dtype.itemsize * field.size // max(n_native, 1)
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    left = np.bincount(index[index >= 0], minlength=n_times)
    running: dict[int, _RunningMean] = {}
    done: set[int] = set()
    out: np.ndarray | None = None
    n_bad, n_incomplete, example = 0, 0, None

    def finish(k: int) -> None:
        nonlocal out, n_incomplete
        mean, incomplete = running.pop(k, _RunningMean(field.shape[1:])).result()
        regridded = regrid_to(mean)
        if out is None:
            out = np.empty((n_times, *regridded.shape), dtype=np.float32)
        out[k] = regridded  # the float32 cast of the float64 result, as a whole-array astype
        done.add(k)
        n_incomplete += incomplete

    for start in range(0, n_native, step):
        block = slice(start, min(start + step, n_native))
        values = _read(field, block, dims, where)
        bad = _out_of_range(values, var)
        n_block = int(bad.sum())
        if n_block:
            example = values[bad].flat[0] if example is None else example
            n_bad += n_block
            values = _masked(values, bad)
        for i, k in enumerate(index[block].tolist()):
            if k < 0:
                continue
            running.setdefault(k, _RunningMean(values.shape[1:])).add(values[i])
            left[k] -= 1
            if left[k] == 0:
                finish(k)
        del values, bad
    _check_out_of_range(n_bad, field.size, example, var, where)
    for k in range(n_times):  # a tile time without native times: all missing
        if k not in done:
            finish(k)
    assert out is not None
    return out, n_bad, n_incomplete


def _regridder(method: Regridder, src: Grid, dst: Grid) -> Callable[[np.ndarray], np.ndarray]:
    return lambda field: method(field, src, dst)


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
    valid-range rule, then each variable's catalogue regrid method); a lazy Dataset is read
    block by block (module doc)."""
    return gridded_parts(raw, modality, grid, times, step, period, attrs, prov).dataset()


def gridded_parts(
    raw: xr.Dataset,
    modality: Modality,
    grid: Grid,
    times: pd.DatetimeIndex,
    step: str,
    period: str,
    attrs: Mapping[str, str],
    prov: Mapping[str, str],
) -> contract.TileParts:
    """:func:`gridded_tile` one variable at a time (``contract.write_tile_parts`` writes each
    as it is made): the frame and the checks of ``raw`` now, each variable when iterated."""
    import xarray as xr

    where = raw.encoding.get("source", f"<{modality.source} dataset>")
    native = native_grid(raw, grid, where)
    dims = modality.tile_dims
    coords: dict = {}
    time_method = ""
    index = np.zeros(0, dtype=np.int64)
    if modality.periodic:
        if len(times) == 0:
            raise ValueError(f"{where}: time: no step of the window falls in period {period}")
        native_times = pd.DatetimeIndex(raw["time"].values)
        check_native_times(native_times, times, step, where)
        index = interval_index(native_times, pd.DatetimeIndex(times), step)
        counts = np.bincount(index[index >= 0], minlength=len(times))
        coords["time"] = pd.DatetimeIndex(times)
        time_method = "time: point" if (counts == 1).all() else "time: mean"
    if "level" in dims:
        coords["level"] = raw["level"].values.astype(np.int64)
    missing = [v for v in modality.variable_names if v not in raw]
    if missing:
        raise ValueError(f"{where}: missing variable(s) {missing} of {modality.name!r}")
    fields = {var.name: _field(raw, var, modality, where) for var in modality.variables}
    attrs = {
        **attrs,
        "history": f"bfm {__version__} tile {modality.name}: "
        + (f"time mean over [t, t + {step}), " if modality.periodic else "")
        + f"regridding {native.res} -> {grid.res} deg ({_methods(modality)})",
    }
    if modality.periodic:
        attrs["step"] = step
    frame = contract.finish_frame(xr.Dataset(coords=coords), modality, grid, period, attrs, prov)

    def variable(var: Variable) -> xr.Variable:
        method: Regridder = REGRIDDERS[var.regrid]
        if modality.periodic:
            out, n_bad, n_incomplete = _stream_mean(
                fields[var.name], var, index, len(times), _regridder(method, native, grid), where
            )
        else:
            values, n_bad = mask_out_of_range(fields[var.name].values, var, where)
            out, n_incomplete = method(values, native, grid).astype(np.float32), 0
        qc = {"n_out_of_range": n_bad, "n_incomplete": n_incomplete}
        return xr.Variable(dims, out, contract.finish_variable(qc, var, time_method))

    # A generator: the variable made last is let go before the next one is made.
    return contract.TileParts(frame, ((v.name, variable(v)) for v in modality.variables))


def _field(raw: xr.Dataset, var: Variable, modality: Modality, where: str) -> xr.DataArray:
    """``raw[var.name]`` (lazy) with the modality's tile dims, in order."""
    field = raw[var.name]
    if not modality.periodic and "time" in field.dims:
        field = field.isel(time=0)
    if set(field.dims) != set(modality.tile_dims):
        raise ValueError(
            f"{where}: variable {var.name!r} has dims {field.dims}, need {modality.tile_dims}"
        )
    return field.transpose(*modality.tile_dims)


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
