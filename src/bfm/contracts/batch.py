"""The batch contract, schema ``bfm-batch/1`` (docs/architecture.md, "Batches").

A batch holds two consecutive model times (t0, t0 + step) of every modality on the grid, in
one HDF5 file ``results/batches/<YYYYMMDDTHH>.h5``:

- root datasets ``time`` (int64 seconds since 1970-01-01, (2,)), ``latitude`` (descending),
  ``longitude``; ``level`` groups carry their ``level`` coordinate (hPa) and the ``species``
  group carries ``species_key`` (GBIF keys, int64): the per-species embeddings live in the
  species table and are looked up by key;
- one group per variable group, one float32 dataset per variable, NaN = missing:

  ======================  ==========  ===================================
  kind                    example     shape
  ======================  ==========  ===================================
  ``time``                surface     ``(2, lat, lon)``
  ``static``              static      ``(lat, lon)``
  ``level``               atmospheric ``(2, level, lat, lon)``
  ``species``             species     ``(2, species_key, lat, lon)``
  ======================  ==========  ===================================

- root attrs: ``schema``, ``times`` (ISO strings), ``step``, ``grid`` (JSON), ``groups``
  and provenance (``bfm_version``, ``git_commit``, ``config_hash``).

Files are written with h5netcdf (netCDF4 dimension scales), so they open with h5py and with
``xarray.open_dataset(path, engine="h5netcdf", group="surface")``. Never a pickle.

Compression (``Compression``, default ``COMPRESSION``): one chunk per 2-D (lat, lon) field,
each with a Fletcher-32 checksum. The default is Blosc (lz4, level 5, byte shuffle) from
``hdf5plugin``, chosen by ``bfm bench loader`` at the Europe grid: 1.1-1.2x gzip's bytes,
decoded 2.5-3.4x and written 4.6-4.8x as fast as gzip (level 4 + shuffle, the earlier
default); figures in benchmarks/README.md. Importing this module imports ``hdf5plugin``,
which registers the filter with h5py; any other reader (xarray, h5py alone) must
``import hdf5plugin`` first. Older gzip batches read as before (h5py decodes gzip itself).

Reading part of a batch: ``read_batch(only=groups, time=0 or 1)`` decodes only those groups
and, of their time-dependent fields, only that time (the training target needs the next
batch's dynamic groups at its second time alone). Fast paths over the same files live in
``bfm.contracts.batch_io``: ``BatchFile`` (fields decoded into the caller's arrays, the
training loader's) and ``BatchWriter`` (a month of batches from one template, ``bfm
batches``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import h5netcdf
import h5py
import hdf5plugin  # registers the Blosc/LZ4 filters with h5py: before any batch is opened
import numpy as np
import pandas as pd

from bfm.contracts import catalogue
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.grid import Grid
from bfm.contracts.timeaxis import parse_t0
from bfm.fileio import atomic_path

# hdf5plugin registers its filters only where none is available, and importing netCDF4 sets
# HDF5_PLUGIN_PATH to netCDF4's own plugins (built against another HDF5 library), which every
# child process inherits (Snakemake's jobs): h5py would then find netCDF4's Blosc and fail in
# its callback ("error during user callback"). Ours are registered whatever is available.
hdf5plugin.register(("blosc", "lz4"), force=True)

SCHEMA = "bfm-batch/1"
# The coordinate dataset of a level or species group (one per group, inside it).
INNER_COORD = {DimsKind.LEVEL: "level", DimsKind.SPECIES: "species_key"}


class Compression(StrEnum):
    """How a batch's fields are compressed (``bfm bench loader`` compares them)."""

    NONE = "none"
    GZIP = "gzip"  # level 4 + shuffle: batches written before Blosc was the default
    LZ4 = "lz4"  # hdf5plugin's LZ4, no shuffle
    BLOSC_LZ4 = "blosc-lz4"  # Blosc, lz4 level 5, byte shuffle
    BLOSC_ZSTD = "blosc-zstd"  # Blosc, zstd level 1, byte shuffle


# By the numbers of bfm bench loader (module docstring): fast to decode, near gzip's size.
COMPRESSION = Compression.BLOSC_LZ4


def filters(compression: Compression) -> dict[str, Any]:
    """The h5py dataset keywords of ``compression`` (compression, compression_opts, shuffle)."""
    if compression == Compression.GZIP:
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == Compression.LZ4:
        return dict(hdf5plugin.LZ4())
    if compression == Compression.BLOSC_LZ4:
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if compression == Compression.BLOSC_ZSTD:
        return dict(hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.SHUFFLE))
    return {}


class BatchError(ValueError):
    """A batch (file) breaks the bfm-batch/1 contract."""


@dataclass(frozen=True)
class Batch:
    """Two model times of every variable group on one grid.

    Attributes:
        times: (t0, t0 + step).
        step: the configured step (``6h``, ``1D``, ``1MS``).
        grid: the grid all fields lie on.
        levels: pressure levels in hPa, ``(L,)``.
        species: GBIF species keys, ``(S,)``.
        groups: ``{group: {variable: float32 array}}``, shapes as in the module docstring.
        attrs: provenance and any extra string attributes.
    """

    times: tuple[pd.Timestamp, pd.Timestamp]
    step: str
    grid: Grid
    levels: np.ndarray
    species: np.ndarray
    groups: dict[str, dict[str, np.ndarray]]
    attrs: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"
    require: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self, self.require)

    def expected_shape(self, group: str) -> tuple[int, ...]:
        sizes = {
            "time": 2,
            "level": len(self.levels),
            "species_key": len(self.species),
            "latitude": self.grid.n_lat,
            "longitude": self.grid.n_lon,
        }
        return tuple(sizes[d] for d in catalogue.of_group(group).batch_dims)


def _spec(group: str, where: str) -> catalogue.Modality:
    try:
        return catalogue.of_group(group)
    except ValueError as err:
        raise BatchError(f"{where}: {err}") from err


def validate(batch: Batch, require: tuple[str, ...] = ()) -> None:
    """Raise BatchError naming the source and the field if ``batch`` breaks the contract."""
    where = batch.source
    t0, t1 = batch.times
    if not t1 > t0:
        raise BatchError(f"{where}: times must increase, got {t0} and {t1}")
    missing_groups = [g for g in require if g not in batch.groups]
    if missing_groups:
        raise BatchError(f"{where}: missing group(s) {missing_groups} (required: {list(require)})")
    for name, variables in batch.groups.items():
        spec = _spec(name, where)
        missing = [v for v in spec.variable_names if v not in variables]
        if missing:
            raise BatchError(f"{where}: group {name!r} lacks variables {missing}")
        expected = batch.expected_shape(name)
        for var, arr in variables.items():
            if arr.dtype != np.float32:
                raise BatchError(f"{where}: {name}/{var} has dtype {arr.dtype}, expected float32")
            if arr.shape != expected:
                raise BatchError(
                    f"{where}: {name}/{var} has shape {arr.shape}, expected {expected} "
                    f"{spec.batch_dims}"
                )


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    # One chunk per 2-D field (lat, lon): a reader of one level or species reads one chunk.
    return tuple([1] * (len(shape) - 2) + list(shape[-2:]))


def write_batch(batch: Batch, path: str | Path, provenance: dict[str, str],
                compression: Compression = COMPRESSION) -> Path:  # fmt: skip
    """Write atomically (temp file + rename): a failure never leaves a half-written batch."""
    with atomic_path(path) as tmp, h5netcdf.File(tmp, "w") as f:
        _write(f, batch, provenance, filters(Compression(compression)))
    return Path(path)


def _write(f: h5netcdf.File, batch: Batch, provenance: dict[str, str],
           compress: dict[str, Any], data: bool = True) -> None:  # fmt: skip
    """The batch's groups, variables, dimension scales and attributes; its fields' values
    too unless not ``data`` (``bfm.contracts.batch_io.BatchWriter``'s template)."""
    g = batch.grid
    f.dimensions = {"time": 2, "latitude": g.n_lat, "longitude": g.n_lon}
    seconds = np.array([pd.Timestamp(t).value // 10**9 for t in batch.times], dtype=np.int64)
    _coord(
        f,
        "time",
        seconds,
        units="seconds since 1970-01-01",
        calendar="proleptic_gregorian",
        standard_name="time",
    )
    _coord(f, "latitude", g.latitudes, units="degrees_north", standard_name="latitude")
    _coord(f, "longitude", g.longitudes, units="degrees_east", standard_name="longitude")
    for gname, variables in batch.groups.items():
        grp = f.create_group(gname)
        spec = catalogue.of_group(gname)
        kind = spec.kind
        if kind == DimsKind.LEVEL:
            grp.dimensions = {"level": len(batch.levels)}
            _coord(
                grp,
                "level",
                np.asarray(batch.levels, dtype=np.int64),
                units="hPa",
                positive="down",
                standard_name="air_pressure",
            )
        elif kind == DimsKind.SPECIES:
            grp.dimensions = {"species_key": len(batch.species)}
            _coord(
                grp,
                "species_key",
                np.asarray(batch.species, dtype=np.int64),
                long_name="GBIF species key",
            )
        for var, arr in variables.items():
            v = grp.create_variable(
                var,
                spec.batch_dims,
                dtype=arr.dtype,
                data=arr if data else None,
                chunks=_chunks(arr.shape),
                **compress,
                fletcher32=True,  # a checksum per chunk: damaged bytes fail loudly on read
                fillvalue=np.float32(np.nan),
            )
            v.attrs["units"] = spec.variable(var).units
    f.attrs.update(_root_attrs(batch, provenance))


def _root_attrs(batch: Batch, provenance: dict[str, str]) -> dict[str, str]:
    return {
        "schema": SCHEMA,
        "times": json.dumps([pd.Timestamp(t).isoformat() for t in batch.times]),
        "step": batch.step,
        "grid": batch.grid.to_json(),
        "groups": json.dumps(sorted(batch.groups)),
        **{k: str(v) for k, v in batch.attrs.items()},
        **provenance,
    }


def _coord(parent: h5netcdf.Group, name: str, data: np.ndarray, **attrs: str) -> None:
    v = parent.create_variable(name, (name,), data=data)
    v.attrs.update(attrs)


def _attr(f: h5py.File, path: Path, key: str) -> str:
    if key not in f.attrs:
        raise BatchError(f"{path}: missing root attribute {key!r}")
    value = f.attrs[key]
    return value.decode() if isinstance(value, bytes) else str(value)


def batch_attrs(path: str | Path) -> tuple[tuple[pd.Timestamp, pd.Timestamp], str]:
    """The two times and the settings_hash of a batch file, from its attributes (no data;
    torch-free, for the batch rules as well as the training data)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            raw, settings = f.attrs["times"], f.attrs.get("settings_hash", "")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        t0, t1 = (pd.Timestamp(t) for t in json.loads(text))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the batch attribute 'times' ({err})") from err
    if parse_t0(path.stem) != t0:
        raise ValueError(f"{path}: file name says t0={parse_t0(path.stem)}, attribute says {t0}")
    return (t0, t1), settings.decode() if isinstance(settings, bytes) else str(settings)


def read_batch(path: str | Path, require: tuple[str, ...] = (),
               only: tuple[str, ...] | None = None, time: int | None = None) -> Batch:  # fmt: skip
    """Read and validate a batch file; BatchError names the file and the field on any breach,
    and on any damage to the file (its datasets carry checksums). With ``only``, just those
    groups are read (the others, a plugin's say, are neither read nor checked). With ``time``
    (0 or 1), time-dependent fields are read at that time alone (half the bytes decoded); the
    other time holds NaN (missing), so shapes stay those of the contract."""
    if time not in (None, 0, 1):
        raise ValueError(f"read_batch: time must be 0, 1 or None, got {time!r}")
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as err:
        raise BatchError(f"{path}: cannot open as HDF5 ({err})") from err
    try:
        with f:
            return _read(f, path, require, only, time)
    except BatchError:
        raise
    except READ_ERRORS as err:
        raise damaged(path, err) from err


READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


def damaged(path: str | Path, err: BaseException) -> BatchError:
    """The error of a batch file that HDF5 or its attributes could not be read from."""
    return BatchError(f"{path}: damaged or unreadable ({type(err).__name__}: {err}); "
                      "delete it and rerun the workflow to rebuild it")  # fmt: skip


def _header(f: h5py.File, path: Path) -> tuple[Grid, tuple[pd.Timestamp, ...], list[str]]:
    """The checked root of a batch file: its grid, times and the groups it lists."""
    schema = _attr(f, path, "schema")
    if schema != SCHEMA:
        raise BatchError(f"{path}: attribute 'schema' is {schema!r}, expected {SCHEMA!r}")
    try:
        grid = Grid.from_json(_attr(f, path, "grid"))
        times = tuple(pd.Timestamp(t) for t in json.loads(_attr(f, path, "times")))
        names = json.loads(_attr(f, path, "groups"))
    except (ValueError, KeyError, TypeError) as err:
        raise BatchError(f"{path}: bad root attribute: {err}") from err
    if len(times) != 2:
        raise BatchError(f"{path}: attribute 'times' must hold 2 times, got {len(times)}")
    coords = {}
    for name in ("time", "latitude", "longitude"):
        if name not in f:
            raise BatchError(f"{path}: missing coordinate dataset {name!r}")
        coords[name] = f[name][()]
    seconds = [pd.Timestamp(t).value // 10**9 for t in times]
    if list(coords["time"]) != seconds:
        raise BatchError(f"{path}: dataset 'time' {list(coords['time'])} != attrs {times}")
    for name, expected in (("latitude", grid.latitudes), ("longitude", grid.longitudes)):
        if coords[name].shape != expected.shape or not np.allclose(coords[name], expected):
            raise BatchError(f"{path}: dataset {name!r} does not match the grid {grid}")
    return grid, times, names


def _read(f: h5py.File, path: Path, require: tuple[str, ...],
          only: tuple[str, ...] | None = None, time: int | None = None) -> Batch:  # fmt: skip
    grid, times, names = _header(f, path)
    groups: dict[str, dict[str, np.ndarray]] = {}
    levels, species = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for gname in names:
        if only is not None and gname not in only:
            continue
        if gname not in f or not isinstance(f[gname], h5py.Group):
            raise BatchError(f"{path}: attribute 'groups' lists {gname!r} but no such group")
        grp = f[gname]
        kind = _spec(gname, str(path)).kind
        coord = INNER_COORD.get(kind)
        if coord is not None:
            if coord not in grp:
                raise BatchError(f"{path}: group {gname!r} lacks coordinate {coord!r}")
            if kind == DimsKind.LEVEL:
                levels = grp[coord][()]
            else:
                species = grp[coord][()]
        at = None if kind == DimsKind.STATIC else time
        groups[gname] = {
            v: grp[v][()] if at is None else _at_time(grp[v], at)
            for v in grp
            if v != coord and isinstance(grp[v], h5py.Dataset)
        }
    attrs = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}
    return Batch(
        times=times,
        step=attrs.get("step", ""),
        grid=grid,
        levels=levels,
        species=species,
        groups=groups,
        attrs=attrs,
        source=str(path),
        require=require,
    )


def _at_time(ds: h5py.Dataset, time: int) -> np.ndarray:
    """The whole dataset's shape, read at ``time`` alone (leading axis); NaN at the other."""
    if ds.ndim == 0 or ds.shape[0] != 2:
        return np.asarray(ds[()])  # a breach of the shape: validate() names it
    out = np.empty(ds.shape, dtype=ds.dtype)
    out[1 - time] = np.nan
    ds.read_direct(out, np.s_[time], np.s_[time])  # decoded straight into place
    return out
