"""The tile contract: one CF-1.10 NetCDF per modality and period on the target grid.

Paths: ``results/tiles/<modality>/<period>.nc`` (``bfm.paths.tile_path``); a static modality
has one tile, ``static.nc``. Which modalities exist, their dims, variables, units and CF names
come from ``bfm.contracts.catalogue``; the per-source builders that make tiles live in
``bfm.sources`` (each source's ``to_tile``).

Coordinates: ``time`` (datetime), ``level`` (int hPa, ascending), ``latitude`` (descending),
``longitude``; a species modality's ``species`` dimension has no coordinate variable (the keys
are in the study's order, not sorted, and a CF coordinate variable must be monotonic) but the
auxiliary coordinates ``species_key`` (int64 GBIF keys) and ``scientific_name``.
Data variables are float32 with ``units``, ``long_name``, ``standard_name`` where CF has one,
``cell_methods``, a NaN ``_FillValue`` and two quality counts (``n_out_of_range``: native
values outside the variable's valid range that were set missing; ``n_incomplete``: native
interval means left missing because one of their native values was missing). Global
attributes: Conventions, title, modality, source, licence, citation, history, institution, grid
(``Grid.to_json()``), step, time_rule, period, provenance (bfm_version, git_commit,
config_hash) and ``settings_hash`` (the hash of the config keys the tile depends on).

Time rule (``TIME_RULE``, also in every tile): the tile's times are the configured steps of
the window inside the month. A continuous field at time t is the mean of its native values
in [t, t + step); a value is missing where any native value of its interval is missing (no
partial means). Point observations are counted in [t, t + step).

Valid range (``VALID_RANGE_RULE``): a native value outside its variable's catalogue range is
set missing and counted; if more than ``MAX_OUT_OF_RANGE`` of a variable's native values are
out of range, the file is refused (a wrong unit or an undeclared fill value, not a few bad
values). A written tile never holds a value outside the range.

``write_tile`` validates and writes atomically, with a quality report ``<tile>.qc.json``
beside it; ``open_tile`` opens and validates. ``write_tile_parts`` writes the same file from a
:class:`TileParts` (the tile made one data variable at a time): its peak memory is one
variable of the tile, not all of them (a month of 6-hourly pressure levels at the Europe grid
is 317 MB per variable).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bfm.contracts import catalogue, timeaxis
from bfm.contracts.catalogue import STATIC_PERIOD, DimsKind, Modality, RegridMethod, Variable
from bfm.contracts.grid import Grid
from bfm.fileio import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import xarray as xr

TIME_RULE = (
    "times are the configured steps of the window inside the month; a continuous field at t is "
    "the mean of its native values in [t, t + step) (6h from 6-hourly data: the value at t), "
    "missing where any of them is missing; point observations are counted in [t, t + step), a "
    "date-only eventDate at 00:00"
)
YEARLY_RULE = (
    "times are the configured steps of the window inside the month; each takes the value of "
    "the year it falls in, missing where the source has no value for that year (never "
    "carried forward or back)"
)
MAX_OUT_OF_RANGE = 0.01
VALID_RANGE_RULE = (
    "native values outside the variable's valid range are set missing and counted "
    f"(n_out_of_range); more than {MAX_OUT_OF_RANGE:.0%} of them refuses the file"
)
INSTITUTION = "Biodiversity Foundation Model (BFM) pipeline"
QC_SUFFIX = ".qc.json"
SPECIES_KEY = "species_key"  # the auxiliary coordinate of a tile's species dimension
QC_COUNTS = ("n_out_of_range", "n_incomplete")
REQUIRED_ATTRS = ("Conventions", "title", "modality", "source", "licence", "citation", "history",
                  "institution", "grid", "time_rule", "bfm_version", "git_commit",
                  "config_hash", "settings_hash")  # fmt: skip
COORD_ATTRS = {
    "time": {"standard_name": "time", "long_name": "time", "axis": "T"},
    "level": {"units": "hPa", "standard_name": "air_pressure", "long_name": "pressure level",
              "positive": "down", "axis": "Z"},
    "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude",
                 "axis": "Y"},
    "longitude": {"units": "degrees_east", "standard_name": "longitude",
                  "long_name": "longitude", "axis": "X"},
    "species_key": {"long_name": "GBIF species key"},
    "scientific_name": {"long_name": "scientific name of the species"},
}  # fmt: skip
AREA_METHOD = {
    RegridMethod.CONSERVATIVE: "area: mean",
    RegridMethod.MODE: "area: mode",
    RegridMethod.NEAREST: "area: point",
    RegridMethod.COUNT: "area: sum",
    RegridMethod.AREA_FRACTION: "area: mean",
    RegridMethod.POINTS: "area: mean",
}


def period_of_tile(modality: Modality, period: str | None) -> str:
    """The period key of a tile: ``YYYY-MM`` for periodic modalities, ``static`` else."""
    if not modality.periodic:
        if period not in (None, STATIC_PERIOD):
            raise ValueError(
                f"--period: modality {modality.name!r} is static; its one tile has "
                f"period {STATIC_PERIOD!r}, got {period!r}"
            )
        return STATIC_PERIOD
    if period is None or period == STATIC_PERIOD:
        raise ValueError(f"--period: modality {modality.name!r} has one tile per month (YYYY-MM)")
    return timeaxis.check_period(period)


def finish(
    ds: xr.Dataset,
    modality: Modality,
    grid: Grid,
    period: str,
    attrs: Mapping[str, str],
    prov: Mapping[str, str],
    time_method: str = "",
) -> xr.Dataset:
    """Put the contract's coordinates and attributes on a builder's Dataset.

    ``attrs`` are the source's: source, licence, citation, history (and step for periodic
    tiles); ``time_method`` is the CF time part of ``cell_methods`` (``time: mean``, ...).
    """
    ds = finish_frame(ds, modality, grid, period, attrs, prov)
    for var in modality.variables:
        finish_variable(ds[var.name].attrs, var, time_method)
    return ds


def finish_frame(
    ds: xr.Dataset,
    modality: Modality,
    grid: Grid,
    period: str,
    attrs: Mapping[str, str],
    prov: Mapping[str, str],
) -> xr.Dataset:
    """:func:`finish` but for the data variables' attributes: the coordinates and the global
    attributes (the frame of a :class:`TileParts`)."""
    ds = ds.assign_coords(latitude=grid.latitudes, longitude=grid.longitudes)
    for name, coord_attrs in COORD_ATTRS.items():
        if name in ds.coords:
            ds[name].attrs.update(coord_attrs)
    ds.attrs = {
        "Conventions": "CF-1.10",
        "title": f"BFM {modality.name} tile" + (f" {period}" if modality.periodic else ""),
        "modality": modality.name,
        "institution": INSTITUTION,
        "grid": grid.to_json(),
        "time_rule": TIME_RULE if modality.periodic else "invariant fields: no time axis",
        **({"period": period} if modality.periodic else {}),
        **dict(attrs),
        **dict(prov),
    }
    return ds


def finish_variable(a: dict, var: Variable, time_method: str = "") -> dict:
    """Put the contract's attributes of ``var`` on a data variable's attributes ``a``
    (in place; returned): units, names, cell_methods, valid range, the quality counts."""
    a.update(units=var.units, long_name=var.long_name)
    if var.standard_name:
        a["standard_name"] = var.standard_name
    a["cell_methods"] = " ".join(p for p in (time_method, AREA_METHOD[var.regrid]) if p)
    for key, bound in zip(("valid_min", "valid_max"), var.valid_range, strict=True):
        if np.isfinite(bound):
            a[key] = np.float32(bound)
    for key in QC_COUNTS:
        a.setdefault(key, 0)
    return a


# --- validation -----------------------------------------------------------------------------
def _check_attrs(ds: xr.Dataset, modality: Modality, where: str) -> Grid:
    missing = [
        k for k in REQUIRED_ATTRS + (("step",) if modality.periodic else ()) if k not in ds.attrs
    ]
    if missing:
        raise ValueError(f"{where}: missing global attribute(s) {missing}")
    if ds.attrs["Conventions"] != "CF-1.10" or ds.attrs["modality"] != modality.name:
        raise ValueError(
            f"{where}: attributes Conventions/modality are not CF-1.10/{modality.name}"
        )
    try:
        return Grid.from_json(ds.attrs["grid"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: attribute 'grid' is not a valid grid ({err})") from err


def _check_range(values: np.ndarray, var: Variable, where: str) -> None:
    lo, hi = var.valid_range
    # A float32 tile holds the nearest float32 of a bound (0.92 is 0.92000002).
    flo, fhi = (values.dtype.type(b) for b in (lo, hi))
    if values.size == 0 or (np.fmin.reduce(values, axis=None) >= flo
                            and np.fmax.reduce(values, axis=None) <= fhi):  # fmt: skip
        return  # no copy of a month of values (fmin/fmax skip NaN) when all are inside
    finite = values[np.isfinite(values)]
    bad = finite[(finite < flo) | (finite > fhi)]
    if bad.size:
        raise ValueError(
            f"{where}: variable {var.name!r} holds {bad.size} value(s) outside "
            f"its valid range [{lo}, {hi}] (e.g. {bad.flat[0]!r})"
        )


def _spec(modality: str, where: str) -> Modality:
    try:
        return catalogue.modality(modality)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _check_frame(ds: xr.Dataset, spec: Modality, where: str) -> Grid:
    """The global attributes and the grid's coordinates."""
    grid = _check_attrs(ds, spec, where)
    for name, expected in (("latitude", grid.latitudes), ("longitude", grid.longitudes)):
        if name not in ds.coords:
            raise ValueError(f"{where}: missing coordinate {name!r}")
        got = ds[name].values
        if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-9):
            raise ValueError(f"{where}: coordinate {name!r} does not match the grid {grid}")
    return grid


def _check_variable(variable: xr.Variable, name: str, spec: Modality, where: str) -> None:
    if variable.dims != spec.tile_dims or variable.dtype != np.float32:
        raise ValueError(
            f"{where}: variable {name!r} has dims {variable.dims} and dtype "
            f"{variable.dtype}, expected {spec.tile_dims} float32"
        )


def validate_tile(ds: xr.Dataset, modality: str, where: str, values: bool = False) -> Grid:
    """Raise ValueError naming ``where`` and the field if ``ds`` breaks the tile contract.

    ``values`` also checks every value against the variables' valid ranges (on write).
    """
    spec = _spec(modality, where)
    grid = _check_frame(ds, spec, where)
    missing = [v for v in spec.variable_names if v not in ds.data_vars]
    if missing:
        raise ValueError(f"{where}: missing variable(s) {missing} of modality {modality!r}")
    for name in spec.variable_names:
        _check_variable(ds[name].variable, name, spec, where)
    needed = set(spec.tile_dims) - {"latitude", "longitude", "species"}
    if spec.kind == DimsKind.SPECIES:
        needed |= {SPECIES_KEY, "scientific_name"}
    for coord in sorted(needed):
        if coord not in ds.coords:
            raise ValueError(f"{where}: missing coordinate {coord!r}")
    if values:
        for var in spec.variables:
            _check_range(ds[var.name].values, var, where)
    return grid


# --- I/O ------------------------------------------------------------------------------------
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


def qc_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + QC_SUFFIX)


def quality(ds: xr.Dataset) -> dict[str, dict[str, int]]:
    """The quality counts of a tile's variables (see the module docstring)."""
    spec = catalogue.modality(str(ds.attrs["modality"]))
    return {v: {k: int(ds[v].attrs.get(k, 0)) for k in QC_COUNTS} for v in spec.variable_names}


def written_quality(path: str | Path) -> dict[str, dict[str, int]]:
    """The quality counts of a written tile, from its quality report."""
    return dict(json.loads(qc_path(path).read_text())["variables"])


def _write_report(ds: xr.Dataset, path: Path) -> None:
    report = {
        "tile": path.name,
        "modality": ds.attrs["modality"],
        "rule": VALID_RANGE_RULE,
        "time_rule": ds.attrs["time_rule"],
        "variables": quality(ds),
    }
    write_text_atomic(qc_path(path), json.dumps(report, indent=1) + "\n")


def write_tile(ds: xr.Dataset, path: str | Path) -> Path:
    """Validate (values included) and write atomically, with the quality report beside it."""
    path = Path(path)
    validate_tile(ds, str(ds.attrs.get("modality")), str(path), values=True)
    _write_report(ds, path)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=_encoding(ds))
    return path


@dataclass(frozen=True)
class TileParts:
    """A tile made one data variable at a time (:func:`write_tile_parts`).

    Attributes:
        frame: the tile without its data variables: coordinates and global attributes
            (:func:`finish_frame`).
        variables: ``(name, variable)`` of each data variable, finished
            (:func:`finish_variable`), each made as it is iterated; iterated once.
    """

    frame: xr.Dataset
    variables: Iterable[tuple[str, xr.Variable]]

    def dataset(self) -> xr.Dataset:
        """The whole tile in memory (what :func:`write_tile` writes)."""
        import xarray as xr

        return xr.Dataset(dict(self.variables), coords=self.frame.coords, attrs=self.frame.attrs)


def write_tile_parts(parts: TileParts, path: str | Path) -> Path:
    """:func:`write_tile` of ``parts.dataset()``, holding one data variable at a time.

    The frame is checked and written to the temporary file first; each variable is checked
    (dims, dtype, valid range) and written as it is made, then let go; the written file is
    validated (``validate_tile``) before the quality report is written and the file renamed
    to ``path``. On any error nothing is left at ``path`` (nor a report). The file holds the
    same values, attributes and encoding as ``write_tile``'s (the coordinates come first).
    """
    import xarray as xr
    from xarray.backends import NetCDF4DataStore

    path, where = Path(path), str(path)
    modality = str(parts.frame.attrs.get("modality"))
    spec = _spec(modality, where)
    _check_frame(parts.frame, spec, where)
    coords = xr.Dataset(coords=parts.frame.coords)
    # Coordinates that are not dimensions go with each variable (its "coordinates" attribute).
    aux = coords.drop_vars([c for c in coords.coords if c in coords.dims]).coords
    with atomic_path(path) as tmp:
        # One open file for all variables (netCDF-C forgets the order of the attributes of
        # variables added to a reopened file), written in write_tile's order: the global
        # attributes, the data variables, the coordinates.
        store = NetCDF4DataStore.open(tmp, mode="w", format="NETCDF4")
        try:
            xr.Dataset(attrs=parts.frame.attrs).dump_to_store(store)
            for name, variable in parts.variables:
                if name in spec.variable_names:
                    _check_variable(variable, name, spec, where)
                    _check_range(variable.values, spec.variable(name), where)
                part = xr.Dataset({name: variable}, coords=aux)
                part.dump_to_store(store, encoding=_encoding(part))  # written now (numpy)
                del variable, part  # before the next variable is made
            coords.dump_to_store(store, encoding=_encoding(coords))
        finally:
            store.close()
        with xr.open_dataset(tmp, engine="netcdf4") as written:
            validate_tile(written, modality, where)
            _write_report(written, path)
    return path


def open_tile(path: str | Path, modality: str) -> xr.Dataset:
    """Open (lazily; close it or use ``with``) and validate a tile of ``modality``."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tile")
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot read as netCDF ({err})") from err
    try:
        validate_tile(ds, modality, str(path))
    except ValueError:
        ds.close()
        raise
    return ds
