"""Country polygons, their area fractions on a Grid, and country values rasterised by them.

**Boundaries** (``resources/countries/``, README.md there): ``countries.geojson``, Natural
Earth 1:110m admin-0 countries (public domain), a FeatureCollection whose features carry
``properties.iso3`` (ISO 3166-1 alpha-3: the World Bank's country codes) and a (multi)polygon
in lon/lat (WGS84); ``codes.csv`` maps each ``iso3`` to ``iso2`` and the UN M49 numeric code
(the UN SDG API's ``geoAreaCode``). A user's boundary file must follow the same layout.

**Fractions**: for every cell and country, the fraction of the cell's area inside the country,
by exactextract (exact coverage of grid cells by polygons, computed along the polygons' rings
in C++; it is also what GDAL and R's exactextractr use). On the Europe grid (153 x 321 cells,
0.25 deg) the 175 countries take about 0.03 s. The fraction is that of the cell's lon/lat
rectangle: within a cell the true (spherical) share differs from it by at most about
``res * pi / 360 * tan(lat)`` (0.6 % at 70 N for 0.25 deg); every sum over cells weights by
the true cell areas (``Grid.cell_areas``, see :meth:`Fractions.country_areas`). Where the
1:110m polygons overlap a little, a cell's fractions are scaled to sum to 1. Fractions depend
only on the grid and the boundary file: they are computed once per process (a functools
cache keyed by the grid and the file's path, size and modification time).

**Rasterising** (the catalogue's ``area-fraction`` regrid method): the value of a cell is the
mean of the values of the countries covering it, weighted by their fractions and renormalised
over the covered part that has a value: a coastal cell takes its country's value, a border
cell the mix. A country without a value (NaN) in a year does not count; a cell covered by no
country with a value (the sea) is missing.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bfm import __version__
from bfm.contracts import tile as contract
from bfm.contracts.catalogue import Modality
from bfm.contracts.grid import Grid
from bfm.fileio import read_features
from bfm.sources import tiling
from bfm.sources.base import Study

if TYPE_CHECKING:
    import xarray as xr

BOUNDARIES = "resources/countries/countries.geojson"
CODES = "resources/countries/codes.csv"
CHECKOUT = Path(__file__).resolve().parents[3]  # where resources/ lies in a source checkout
OVERLAP_TOLERANCE = 1e-6  # fractions summing to less than 1 + this are float noise


def resource(path: str | Path) -> Path:
    """A shipped resource: ``path`` as given (relative to the working directory), else the
    same relative path in the bfm checkout (where a working directory lacks resources/)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not (CHECKOUT / p).exists():
        return p
    return CHECKOUT / p


@dataclass(frozen=True)
class Countries:
    """The countries of a boundary file, in file order.

    Attributes:
        path: the file.
        codes: ISO 3166-1 alpha-3 codes (``properties.iso3``).
        names: ``properties.name`` (the code where absent).
        features: the GeoJSON features (geometry as in the file).
    """

    path: str
    codes: tuple[str, ...]
    names: tuple[str, ...]
    features: tuple[dict[str, Any], ...]


def _stamp(path: str | Path) -> tuple[str, int, int]:
    p = resource(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such country boundary file")
    st = p.stat()
    return str(p.resolve()), st.st_size, st.st_mtime_ns


def load(path: str | Path = BOUNDARIES) -> Countries:
    """The countries of a boundary GeoJSON (cached per file version)."""
    return _load(*_stamp(path))


@functools.cache
def _load(path: str, size: int, mtime_ns: int) -> Countries:
    import shapely
    from shapely.geometry import shape

    codes: list[str] = []
    names, features = [], []
    for i, feature in enumerate(read_features(path)):
        props = feature.get("properties") or {}
        code = str(props.get("iso3", ""))
        if len(code) != 3 or not code.isalpha() or not code.isupper():
            raise ValueError(f"{path}: feature {i}: properties.iso3 {code!r} is not an ISO3 code")
        if code in codes:
            raise ValueError(f"{path}: feature {i}: iso3 {code!r} appears twice")
        geometry = feature.get("geometry") or {}
        if geometry.get("type") not in ("Polygon", "MultiPolygon"):
            raise ValueError(f"{path}: {code}: geometry must be a Polygon or MultiPolygon")
        if not shapely.is_valid(shape(geometry)):
            reason = shapely.is_valid_reason(shape(geometry))
            raise ValueError(f"{path}: {code}: invalid geometry ({reason})")
        codes.append(code)
        names.append(str(props.get("name", code)))
        features.append(feature)
    if not codes:
        raise ValueError(f"{path}: no features")
    return Countries(path, tuple(codes), tuple(names), tuple(features))


def read_codes(path: str | Path = CODES) -> pd.DataFrame:
    """The code table: columns iso3, iso2, m49 (str; empty where the UN has no code), name."""
    p = resource(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such country code table")
    with open(p, newline="", encoding="utf-8") as f:
        table = pd.DataFrame(list(csv.DictReader(f)), dtype=str)
    missing = [c for c in ("iso3", "m49") if c not in table.columns]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing} (need iso3, m49)")
    m49 = table["m49"].str.strip()
    bad = m49[(m49 != "") & ~m49.str.fullmatch(r"\d{1,3}")]
    if len(bad):
        raise ValueError(f"{p}: column 'm49': {bad.iloc[0]!r} is not a numeric M49 code")
    table["m49"] = m49.map(lambda v: str(int(v)) if v else "")  # "040" -> "40" as the API
    return table


@dataclass(frozen=True)
class Fractions:
    """Sparse cell-by-country area fractions of one grid.

    Attributes:
        grid: the grid.
        codes: the boundary file's country codes.
        cell: flat cell index (row-major, north first) of each entry.
        country: index into ``codes`` of each entry.
        fraction: the share of the cell's area inside the country (0 < f <= 1).
    """

    grid: Grid
    codes: tuple[str, ...]
    cell: np.ndarray
    country: np.ndarray
    fraction: np.ndarray

    def covered(self) -> np.ndarray:
        """The share of each cell covered by some country (0 = sea), (n_lat, n_lon)."""
        n = self.grid.n_lat * self.grid.n_lon
        return np.bincount(self.cell, self.fraction, minlength=n).reshape(self.grid.shape)

    def country_areas(self) -> dict[str, float]:
        """Each country's area inside the grid in km2 (fractions times true cell areas)."""
        area = self.grid.cell_areas().ravel() / 1e6
        sums = np.bincount(self.country, self.fraction * area[self.cell], len(self.codes))
        return dict(zip(self.codes, sums.tolist(), strict=True))


def fractions(grid: Grid, path: str | Path = BOUNDARIES) -> Fractions:
    """The area fractions of ``grid``'s cells in the countries of boundary file ``path``."""
    return _fractions(grid, *_stamp(path))


@functools.cache
def _fractions(grid: Grid, path: str, size: int, mtime_ns: int) -> Fractions:
    from exactextract import exact_extract
    from exactextract.feature import JSONFeatureSource
    from exactextract.raster import NumPyRasterSource

    countries = _load(path, size, mtime_ns)
    lon_e = grid.lon_edges()
    top, bottom = grid.lat_max + grid.res / 2, grid.lat_min - grid.res / 2  # unclipped
    raster = NumPyRasterSource(np.zeros(grid.shape), lon_e[0], bottom, lon_e[-1], top)
    features = [
        {"type": "Feature", "properties": {"index": i}, "geometry": f["geometry"]}
        for i, f in enumerate(countries.features)
    ]
    found = exact_extract(raster, JSONFeatureSource(features), ["cell_id", "coverage"],
                          include_cols=["index"])  # fmt: skip
    cells, owners, shares = [], [], []
    for row in found:
        props = row["properties"]
        cells.append(np.asarray(props["cell_id"], dtype=np.int64))
        shares.append(np.asarray(props["coverage"], dtype=np.float64))
        owners.append(np.full(len(cells[-1]), int(props["index"]), dtype=np.int64))
    cell, country, share = (np.concatenate(a) for a in (cells, owners, shares))
    keep = share > 0
    cell, country, share = cell[keep], country[keep], share[keep]
    # A cell clipped at a pole is shorter than res: its share is of the clipped cell.
    lat_e = grid.lat_edges()
    height = np.abs(lat_e[:-1] - lat_e[1:]) / grid.res
    share = share / height[cell // grid.n_lon]
    total = np.bincount(cell, share, minlength=grid.n_lat * grid.n_lon)
    share = share / np.maximum(total[cell], 1.0)  # overlapping polygons: scale to 1
    order = np.lexsort((country, cell))
    return Fractions(grid, countries.codes, cell[order], country[order], share[order])


def rasterise(fr: Fractions, codes: Sequence[str], values: np.ndarray) -> np.ndarray:
    """Country values -> grid values by area fractions (the module's rule).

    ``values`` (Y, K): K countries' values (NaN = no value) for Y years, columns in the order
    of ``codes``; codes not in the boundary file are ignored. Returns (Y, n_lat, n_lon).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(codes):
        raise ValueError(f"rasterise: values {values.shape=} do not match {len(codes)} codes")
    if len(set(codes)) != len(codes):
        raise ValueError("rasterise: repeated country code")
    column = pd.Index(list(codes)).get_indexer(list(fr.codes))[fr.country]
    n = fr.grid.n_lat * fr.grid.n_lon
    out = np.full((len(values), n), np.nan)
    for y, row in enumerate(values):
        v = np.where(column >= 0, row[np.maximum(column, 0)], np.nan)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        w = np.where(ok, fr.fraction, 0.0)
        num = np.bincount(fr.cell, np.where(ok, w * v, 0.0), minlength=n)
        den = np.bincount(fr.cell, w, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(den > 0, num / den, np.nan)
        # A weighted mean lies within its values; clip the last-bit rounding past them.
        out[y] = np.clip(mean, v[ok].min(), v[ok].max())
    return out.reshape(len(values), *fr.grid.shape)


def country_tile(
    native: xr.Dataset,
    modality: Modality,
    study: Study,
    period: str,
    boundaries: str | Path,
    attrs: Mapping[str, str],
    prov: Mapping[str, str],
) -> xr.Dataset:
    """The tile of yearly country values: each year rasterised by area fractions, then the
    yearly rule (``tiling.yearly_at``: the value of the year each step falls in).

    ``native`` has coordinates ``country`` (ISO3) and ``year`` (int); a variable with dims
    (country, year) is rasterised, one with dims (year,) (a study-level index) is the same
    value on every cell some country covers. The valid-range rule applies to the native
    values (``tiling.mask_out_of_range``).
    """
    import xarray as xr

    where = native.encoding.get("source", f"<{modality.source} dataset>")
    grid, times = study.grid, study.times_in(period)
    if len(times) == 0:
        raise ValueError(f"{where}: time: no step of the window falls in period {period}")
    missing = [v for v in modality.variable_names if v not in native]
    if missing:
        raise ValueError(f"{where}: missing variable(s) {missing} of {modality.name!r}")
    fr = fractions(grid, boundaries)
    land = fr.covered() > 0
    years = native["year"].values.astype(np.int64)
    codes = [str(c) for c in native["country"].values]
    data_vars = {}
    for var in modality.variables:
        field = native[var.name]
        values, n_bad = tiling.mask_out_of_range(field.values.astype(np.float64), var, where)
        if field.dims == ("country", "year"):
            yearly = rasterise(fr, codes, values.T)
        elif field.dims == ("year",):
            yearly = np.where(land[None], values[:, None, None], np.nan)
        else:
            raise ValueError(f"{where}: variable {var.name!r} has dims {field.dims}, "
                             "need (country, year) or (year,)")  # fmt: skip
        out = tiling.yearly_at(years, yearly, times).astype(np.float32)
        data_vars[var.name] = xr.Variable(modality.tile_dims, out, {"n_out_of_range": n_bad})
    ds = xr.Dataset(data_vars, coords={"time": pd.DatetimeIndex(times)})
    attrs = {
        **attrs,
        "history": f"bfm {__version__} tile {modality.name}: yearly country values "
        f"rasterised by area fraction ({Path(boundaries).name}), each step taking the value "
        "of its year (missing where the source has none; never carried forward)",
        "step": study.step,
        "time_rule": contract.YEARLY_RULE,
    }
    return contract.finish(ds, modality, grid, period, attrs, prov)
