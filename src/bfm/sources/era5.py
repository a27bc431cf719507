"""ERA5 from the Copernicus Climate Data Store: request, sample, download and open.

Three download units (``group``), each one netCDF file in the new-CDS layout (since 2024-09):

- ``surface``: t2m (K), msl (Pa), u10, v10 (m s-1); 6-hourly, one calendar month per file;
- ``atmospheric``: z (m2 s-2), t (K), u, v (m s-1), q (kg kg-1) on pressure levels; 6-hourly,
  one month per file;
- ``static``: z (surface geopotential, m2 s-2), lsm (land fraction 0..1), slt (soil type 0..7,
  0 = water, stored as float32 like ERA5); one time.

Native layout: dims ``(valid_time, [pressure_level], latitude, longitude)``; ``valid_time`` int64
seconds since 1970-01-01; ``pressure_level`` float64 hPa, stored decreasing; latitude descending;
scalar coordinate ``number`` and string ``expver`` per time; float32 variables with internal
zlib compression and a NaN ``_FillValue``.

The native grid is 0.25 deg and covers the target grid's cells completely: the 0.25 deg cells
whose union contains the target's outer cell edges (what a CDS ``area`` request for that box
returns). ``open`` reads this layout, the old-CDS ``time``/``level`` layout (int16 packed) and
global files (longitudes 0..360) lazily into the normalised form: dims ``(time, [level],
latitude, longitude)``, time as datetime64, level int hPa ascending, latitude descending,
longitude ascending in [-180, 180). Nothing is loaded; ``bfm.sources.tiling`` reads the file
a few native times at a time.

``download`` (mode ``download``) asks the CDS for one unit through cdsapi
(``bfm.sources.era5_cds``: credentials, the job, the transfer, zips). Its options, config key
``sources.era5.options`` (they tune the transfer and never change a file, so changing them
reruns nothing):

- ``retries`` (10): attempts after the first for each CDS API call and for the file;
- ``sleep_max`` (120): seconds, the longest poll interval and wait between attempts;
- ``timeout`` (60): seconds to wait for a connection and for each read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bfm.contracts import timeaxis
from bfm.contracts.catalogue import DEFAULT_LEVELS, Modality
from bfm.contracts.grid import Grid
from bfm.fileio import atomic_path
from bfm.sources import manifest, tiling
from bfm.sources.base import Source, Study, register
from bfm.sources.climate import Climate

if TYPE_CHECKING:
    import xarray as xr

    from bfm.contracts.tile import TileParts

NATIVE_RES = 0.25
# Options (sources.era5.options) that tune the transfer, not the file: no rerun when changed.
TRANSFER_OPTIONS = frozenset({"retries", "sleep_max", "timeout"})
GROUPS = ("surface", "atmospheric", "static")
DATASETS = {
    "surface": "reanalysis-era5-single-levels",
    "atmospheric": "reanalysis-era5-pressure-levels",
    "static": "reanalysis-era5-single-levels",
}
STATIC_TIME = "2000-01-01T00:00"  # invariants: CDS returns them at the requested date
LICENCE = "Licence to use Copernicus products"
CITATION = (
    "Hersbach, H. et al. (2020) The ERA5 global reanalysis, Q. J. R. Meteorol. Soc. 146, "
    "1999-2049; ERA5 single levels doi:10.24381/cds.adbb2d47, pressure levels "
    "doi:10.24381/cds.bd0915c6. Contains modified Copernicus Climate Change Service information."
)


@dataclass(frozen=True)
class Variable:
    short_name: str
    request_name: str
    units: str
    long_name: str
    standard_name: str | None
    param_id: int


_V = Variable
VARIABLES: dict[str, tuple[Variable, ...]] = {
    "surface": (
        _V("t2m", "2m_temperature", "K", "2 metre temperature", "air_temperature", 167),
        _V("msl", "mean_sea_level_pressure", "Pa", "Mean sea level pressure",
           "air_pressure_at_mean_sea_level", 151),
        _V("u10", "10m_u_component_of_wind", "m s**-1", "10 metre U wind component",
           "eastward_wind", 165),
        _V("v10", "10m_v_component_of_wind", "m s**-1", "10 metre V wind component",
           "northward_wind", 166),
    ),
    "atmospheric": (
        _V("z", "geopotential", "m**2 s**-2", "Geopotential", "geopotential", 129),
        _V("t", "temperature", "K", "Temperature", "air_temperature", 130),
        _V("u", "u_component_of_wind", "m s**-1", "U component of wind", "eastward_wind", 131),
        _V("v", "v_component_of_wind", "m s**-1", "V component of wind", "northward_wind", 132),
        _V("q", "specific_humidity", "kg kg**-1", "Specific humidity", "specific_humidity", 133),
    ),
    "static": (
        _V("z", "geopotential", "m**2 s**-2", "Geopotential", "geopotential", 129),
        _V("lsm", "land_sea_mask", "(0 - 1)", "Land-sea mask", "land_binary_mask", 172),
        _V("slt", "soil_type", "~", "Soil type", None, 43),
    ),
}  # fmt: skip
COORD_ATTRS = {
    "number": {"long_name": "ensemble member numerical id", "units": "1",
               "standard_name": "realization"},
    "valid_time": {"long_name": "time", "standard_name": "time",
                   "units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"},
    "pressure_level": {"units": "hPa", "long_name": "pressure", "standard_name": "air_pressure",
                       "positive": "down", "stored_direction": "decreasing"},
    "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude",
                 "stored_direction": "decreasing"},
    "longitude": {"units": "degrees_east", "standard_name": "longitude",
                  "long_name": "longitude"},
    "expver": {"long_name": "expver"},
}  # fmt: skip


def check_group(group: str) -> str:
    if group not in GROUPS:
        raise ValueError(f"era5: group {group!r} is not one of {GROUPS}")
    return group


def native_grid(target: Grid) -> Grid:
    """The 0.25 deg grid whose cells cover every cell of ``target`` (see the module doc)."""
    half = NATIVE_RES / 2

    def snap(x: float, rounding: Callable[[float], int]) -> float:
        return rounding(round(x / NATIVE_RES, 9)) * NATIVE_RES

    lat_e, lon_e = target.lat_edges(), target.lon_edges()
    return Grid(
        lat_min=max(snap(lat_e[-1] + half, math.floor), -90.0),
        lat_max=min(snap(lat_e[0] - half, math.ceil), 90.0),
        lon_min=snap(lon_e[0] + half, math.floor),
        lon_max=snap(lon_e[-1] - half, math.ceil),
        res=NATIVE_RES,
    )


def month_times(period: str) -> pd.DatetimeIndex:
    """The 6-hourly times (00, 06, 12, 18 UTC) of every day of a ``YYYY-MM`` month."""
    start = timeaxis.period_bounds(period)[0]
    return pd.date_range(start, start + pd.offsets.MonthBegin(1), freq="6h", inclusive="left")


def request(
    group: str, grid: Grid, period: str | None, levels: Sequence[int] = DEFAULT_LEVELS
) -> dict:
    """The CDS request (as the web form writes it) for one download unit on ``grid``."""
    check_group(group)
    native = native_grid(grid)
    times = pd.DatetimeIndex([STATIC_TIME]) if group == "static" else month_times(str(period))
    req: dict = {
        "product_type": ["reanalysis"],
        "variable": [v.request_name for v in VARIABLES[group]],
        "year": sorted({f"{t.year}" for t in times}),
        "month": sorted({f"{t.month:02d}" for t in times}),
        "day": sorted({f"{t.day:02d}" for t in times}),
        "time": sorted({t.strftime("%H:%M") for t in times}),
        "area": [native.lat_max, native.lon_min, native.lat_min, native.lon_max],
        "data_format": "netcdf",
        "download_format": "unarchived",
    }
    if group == "atmospheric":
        req["pressure_level"] = [str(level) for level in sorted(levels)]
    return {"dataset": DATASETS[group], "request": req}


def _fields(
    group: str, climate: Climate, times: np.ndarray, levels: Sequence[int], native: Grid
) -> dict[str, np.ndarray]:
    lat, lon = native.latitudes, native.longitudes
    surf = climate.surface(lat, lon)
    if group == "static":
        g = 9.80665
        return {"z": (g * surf.orography)[None], "lsm": surf.lsm[None], "slt": surf.slt[None]}
    if group == "surface":
        u10, v10 = climate.wind10(times, lat, lon, surf)
        return {
            "t2m": climate.t2m(times, lat, lon, surf),
            "msl": climate.msl(times, lat, lon),
            "u10": u10,
            "v10": v10,
        }
    return climate.pressure_levels(times, levels, lat, lon, surf, dtype=np.float32)


def sample_dataset(
    group: str,
    grid: Grid,
    period: str | None = None,
    levels: Sequence[int] = DEFAULT_LEVELS,
    seed: int = 0,
    times: pd.DatetimeIndex | None = None,
) -> xr.Dataset:
    """A synthetic ERA5 download unit for ``grid`` (pure; see the module doc for the layout).

    ``times``: only these of the period's 6-hourly times (a writer that builds a large month
    chunk by chunk); every field is a closed-form function of its time, so the chunks of a
    month are the slices of the whole month's dataset.
    """
    import xarray as xr

    check_group(group)
    if group == "static":
        times = pd.DatetimeIndex([STATIC_TIME])
    elif period is None:
        raise ValueError(f"era5: group {group!r} needs a period (YYYY-MM)")
    else:
        whole = month_times(period)
        if times is None:
            times = whole
        elif not pd.DatetimeIndex(times).isin(whole).all():
            raise ValueError(f"era5: times {times} are not 6-hourly times of period {period}")
        times = pd.DatetimeIndex(times)
    native = native_grid(grid)
    levels_desc = sorted(levels, reverse=True)  # the CDS stores pressure_level decreasing
    values = _fields(group, Climate.from_seed(seed), times.values, levels_desc, native)
    dims: tuple[str, ...] = ("valid_time", "pressure_level", "latitude", "longitude")
    if group != "atmospheric":
        dims = ("valid_time", "latitude", "longitude")
    data_vars = {
        var.short_name: (dims, values[var.short_name].astype(np.float32), _var_attrs(var, group))
        for var in VARIABLES[group]
    }
    coords: dict[str, tuple[Any, ...]] = {
        "number": ((), np.int64(0)),
        "valid_time": ("valid_time", times.values.astype("datetime64[s]").astype(np.int64)),
        "latitude": ("latitude", native.latitudes),
        "longitude": ("longitude", native.longitudes),
        "expver": ("valid_time", np.array(["0001"] * len(times), dtype=object)),
    }
    if group == "atmospheric":
        coords["pressure_level"] = ("pressure_level", np.asarray(levels_desc, dtype=np.float64))
    coords = {name: (*value, COORD_ATTRS[name]) for name, value in coords.items()}
    attrs = {
        "GRIB_centre": "ecmf",
        "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
        "GRIB_subCentre": 0,
        "Conventions": "CF-1.7",
        "institution": "European Centre for Medium-Range Weather Forecasts",
        # No wall-clock time: the same seed gives the same file.
        "history": f"bfm sample era5: synthetic {DATASETS[group]} ({group}), seed={seed}, "
        "written in the new-CDS netCDF layout",
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _var_attrs(var: Variable, group: str) -> dict:
    attrs = {
        "units": var.units,
        "long_name": var.long_name,
        "GRIB_paramId": var.param_id,
        "GRIB_shortName": var.short_name,
        "GRIB_units": var.units,
        "GRIB_name": var.long_name,
        "GRIB_stepType": "instant",
        "GRIB_typeOfLevel": "isobaricInhPa" if group == "atmospheric" else "surface",
        "GRIB_gridType": "regular_ll",
    }
    if var.standard_name:
        attrs["standard_name"] = var.standard_name
    return attrs


def netcdf_encoding(ds: xr.Dataset) -> dict:
    """The CDS files' netCDF encoding: zlib level 1 + shuffle, one chunk per time, NaN fill."""
    enc: dict = {}
    for name, var in ds.data_vars.items():
        chunks = tuple(1 if d == "valid_time" else ds.sizes[d] for d in var.dims)
        enc[name] = {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": chunks,
                     "_FillValue": np.float32(np.nan)}  # fmt: skip
    for name in ("valid_time", "latitude", "longitude", "pressure_level", "number"):
        if name in ds.variables:
            enc[name] = {"_FillValue": None}
    return enc


def sample(
    path: str | Path,
    group: str,
    grid: Grid,
    period: str | None = None,
    levels: Sequence[int] = DEFAULT_LEVELS,
    seed: int = 0,
) -> Path:
    """Write a synthetic ERA5 file and its manifest; returns the file's path."""
    path = Path(path)
    ds = sample_dataset(group, grid, period, levels, seed)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=netcdf_encoding(ds))
    manifest.write_manifest(
        path,
        source="era5",
        request=request(group, grid, period, levels),
        url=f"sample:era5?seed={seed}",
        licence=LICENCE,
        citation=CITATION,
    )
    return path


def open(
    path: str | Path,
    group: str | None = None,
    grid: Grid | None = None,
    levels: Sequence[int] | None = None,
) -> xr.Dataset:
    """Open an ERA5 netCDF (new or old CDS layout; an area or the globe) lazily, normalised.

    Nothing is loaded: the Dataset keeps the file open (``close()`` closes it) and readers
    load what they index. ``grid``: keep only the native cells that overlap the cells of this
    target grid (a global file then reads only the target's region); ``levels``: keep only
    these pressure levels, which must all be in the file.
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such ERA5 file")
    try:
        raw = xr.open_dataset(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as netCDF ({err})") from err
    try:
        ds = tiling.take(_normalise(raw, path, group), _selection(raw, path, grid, levels))
    except BaseException:
        raw.close()
        raise
    ds.set_close(raw.close)
    ds.encoding["source"] = str(path)
    return ds


def _normalise(raw: xr.Dataset, path: Path, group: str | None) -> xr.Dataset:
    """Names, coordinate values and checks of the normalised form (lazy; no reordering)."""
    names = {"valid_time": "time", "pressure_level": "level"}
    ds = raw.rename({k: v for k, v in names.items() if k in raw.variables})
    ds = ds.drop_vars([c for c in ("number", "expver") if c in ds.variables])
    for coord in ("latitude", "longitude"):
        if coord not in ds.coords:
            raise ValueError(f"{path}: missing coordinate {coord!r}")
    if group is not None and check_group(group) != "static" and "time" not in ds.dims:
        raise ValueError(f"{path}: missing time dimension 'valid_time' (or 'time')")
    if group is not None:
        missing = [v.short_name for v in VARIABLES[group] if v.short_name not in ds.data_vars]
        if missing:
            raise ValueError(f"{path}: missing variable(s) {missing} of group {group!r}")
        if group == "atmospheric" and "level" not in ds.dims:
            raise ValueError(f"{path}: missing dimension 'pressure_level' (or 'level')")
    if "level" in ds.coords:
        ds = ds.assign_coords(level=ds["level"].values.round().astype(np.int64))
    lon = ds["longitude"].values
    return ds.assign_coords(longitude=_wrapped(lon)) if (lon >= 180).any() else ds


def _wrapped(lon: np.ndarray) -> np.ndarray:
    """Longitudes in [-180, 180) (a global file's 0..360 wrapped), unchanged if already so."""
    return ((lon + 180.0) % 360.0) - 180.0 if (lon >= 180).any() else lon


def _selection(
    raw: xr.Dataset, path: Path, grid: Grid | None, levels: Sequence[int] | None
) -> dict[str, np.ndarray]:
    """Per dimension whose order or extent changes, the file positions in normalised order
    (level ascending, latitude descending, longitude ascending) that ``grid`` and ``levels``
    need: the native cells overlapping the target's cells, the levels asked for."""
    out: dict[str, np.ndarray] = {}
    for dim in ("pressure_level", "level", "latitude", "longitude"):
        if dim not in raw.dims:
            continue
        values = raw[dim].values.astype(np.float64)
        values = _wrapped(values) if dim == "longitude" else values
        order = np.argsort(-values if dim == "latitude" else values, kind="stable")
        if dim in ("latitude", "longitude"):
            order = order[_overlapping(values[order], grid, dim)]
        elif levels is not None:
            have = values[order].round().astype(np.int64)
            absent = sorted(set(levels) - set(have.tolist()))
            if absent:
                raise ValueError(
                    f"{path}: pressure level(s) {absent} of the config key "
                    f"'levels' are not in the file (it has {sorted(have.tolist())})"
                )
            order = order[np.isin(have, list(levels))]
        if not np.array_equal(order, np.arange(raw.sizes[dim])):
            out["level" if dim == "pressure_level" else dim] = order
    return out


def _overlapping(centres: np.ndarray, grid: Grid | None, dim: str) -> np.ndarray:
    """Which native cells (regular ``centres``) overlap the cells of ``grid``; all if none or
    fewer than two would (the tile builder then says what the file does not cover)."""
    keep = np.ones(centres.shape, dtype=bool)
    if grid is None or centres.size < 2:
        return keep
    edges = grid.lat_edges() if dim == "latitude" else grid.lon_edges()
    lo, hi, half = float(edges.min()), float(edges.max()), abs(centres[1] - centres[0]) / 2
    overlap = (centres + half > lo + 1e-6) & (centres - half < hi - 1e-6)
    return overlap if overlap.sum() >= 2 else keep


# Download unit (CDS request group) of each ERA5 modality.
UNIT_OF_MODALITY = {
    "era5_surface": "surface",
    "era5_atmospheric": "atmospheric",
    "era5_static": "static",
}


class ERA5(Source):
    """ERA5: raw files ``<unit>/<YYYY-MM>.nc`` (surface, atmospheric) and ``static/static.nc``,
    one CDS download unit each."""

    name = "era5"
    licence = LICENCE
    citation = CITATION
    service = "cds"

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        unit = UNIT_OF_MODALITY[modality.name]
        return [f"{unit}/{period}.nc"]

    @staticmethod
    def parse_name(name: str) -> tuple[str, str | None]:
        """``surface/2010-01.nc`` -> ("surface", "2010-01"); ``static/static.nc`` -> ("static",
        None)."""
        unit, _, file = name.partition("/")
        stem = file.removesuffix(".nc")
        ok = unit in GROUPS and file.endswith(".nc") and (unit == "static") == (stem == "static")
        if ok and unit != "static":
            try:
                timeaxis.check_period(stem)
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(
                f"era5: raw file {name!r} is not <surface|atmospheric>/YYYY-MM.nc "
                "or static/static.nc"
            )
        return unit, None if unit == "static" else stem

    def sample(self, name: str, out: Path, study: Study) -> Path:
        unit, period = self.parse_name(name)
        seed = int(study.settings(self.name).get("seed", 0))
        return sample(out, unit, study.grid, period, study.levels, seed)

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        """The default, less the download options that do not change the file's bytes."""
        out = super().raw_settings(name, study)
        source = out["source"]
        if isinstance(source.get("options"), Mapping):
            keep = {k: v for k, v in source["options"].items() if k not in TRANSFER_OPTIONS}
            out["source"] = {**source, "options": keep}
        return out

    def download(self, name: str, out: Path, study: Study) -> Path:
        """Fetch raw file ``name`` from the CDS, with its manifest (``era5_cds.download``)."""
        from bfm.sources import era5_cds

        unit, period = self.parse_name(name)
        return era5_cds.download(f"{self.name} {name}", Path(out), unit, period, study)

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        """The raw file opened lazily, cut to the cells of the study's grid (and its levels)."""
        (path,) = files
        unit = UNIT_OF_MODALITY[modality.name]
        return open(path, unit, study.grid, study.levels if unit == "atmospheric" else None)

    def to_tile(
        self,
        native: xr.Dataset,
        modality: Modality,
        study: Study,
        period: str,
        prov: Mapping[str, str],
    ) -> xr.Dataset:
        return self.tile_parts(native, modality, study, period, prov).dataset()

    def tile_parts(
        self,
        native: xr.Dataset,
        modality: Modality,
        study: Study,
        period: str,
        prov: Mapping[str, str],
    ) -> TileParts:
        """``to_tile`` as ``tiling.gridded_parts``: each variable made when iterated."""
        where = Path(native.encoding.get("source", "<era5 dataset>")).name
        unit = UNIT_OF_MODALITY[modality.name]
        kind = "invariants " if unit == "static" else ""
        attrs = {
            "source": f"ECMWF ERA5 {DATASETS[unit]} {kind}({where}: "
            f"{native.attrs.get('history', 'no history')})",
            "licence": LICENCE,
            "citation": CITATION,
        }
        return tiling.gridded_parts(
            native, modality, study.grid, study.times_in(period), study.step, period, attrs, prov
        )


register(ERA5())
