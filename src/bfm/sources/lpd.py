"""The Living Planet Database (LPD) file: its CSV columns, reading it, a synthetic sample.

The CSV (``LPD2022_public.csv`` layout; comma-separated, quoted where needed, latin-1, missing
values the string ``NULL``): the 30 columns of ``META_COLUMNS``, then one column per year
1950..2020 (``YEAR_COLUMNS``). Uncertain: ``Replicate`` and ``Citation`` are absent from some
releases and later releases may add years or columns, so ``open`` needs only ``ID`` (a whole
number, unique), ``Binomial`` (``Genus_species``), ``Latitude``, ``Longitude`` and at least one
year column (any 4-digit header); the others are not read. A value is ``NULL`` (any case),
empty or a number >= 0; anything else is refused with the file, data row, ID, column and rule.

``open`` drops, and counts in the Dataset's attributes (``COUNT_NAMES``), the rows with
unusable coordinates (not a number, latitude outside [-90, 90], longitude outside
[-180, 180]; counted first), with no value, and with a single value (the LPI needs two
points): ``n_rows`` = the three dropped counts + ``n_populations``.

``sample`` writes populations clustered at sites inside the grid, each a noisy log-linear
trend of its species over a span that mostly covers the window, with NULL gaps (about a
quarter of the years inside the span) and, for small counts, a few zeros.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bfm.contracts.grid import Grid
from bfm.fileio import atomic_path
from bfm.sources import manifest

if TYPE_CHECKING:
    import xarray as xr

META_COLUMNS = (
    "ID", "Binomial", "Replicate", "Reference", "Citation", "Class", "Order", "Family", "Genus",
    "Species", "Subspecies", "Common_name", "Location", "Country", "All_countries", "Region",
    "Latitude", "Longitude", "Specific_location", "temperate_or_tropical", "System", "T_realm",
    "T_biome", "FW_realm", "FW_biome", "M_realm", "M_ocean", "M_biome", "Units", "Method",
)  # fmt: skip
YEAR_COLUMNS = tuple(str(y) for y in range(1950, 2021))
COLUMNS = META_COLUMNS + YEAR_COLUMNS
REQUIRED_COLUMNS = ("ID", "Binomial", "Latitude", "Longitude")
MISSING = ("NULL", "")
LICENCE = (
    "Living Planet Database data-use agreement (www.livingplanetindex.org): no "
    "redistribution of the raw data"
)
CITATION = (
    "LPI 2022. Living Planet Index database. www.livingplanetindex.org; WWF (2022) Living "
    "Planet Report 2022"
)
COUNT_NAMES = ("n_rows", "n_dropped_coordinates", "n_dropped_no_values",
               "n_dropped_one_value", "n_populations")  # fmt: skip
# Sample species: Binomial, Class, Order, Family, Common_name, System, Units, trend (log10/yr).
SPECIES = (
    ("Lynx_lynx", "Mammalia", "Carnivora", "Felidae", "Eurasian lynx", "Terrestrial",
     "Number of individuals", 0.010),
    ("Canis_lupus", "Mammalia", "Carnivora", "Canidae", "Grey wolf", "Terrestrial",
     "Number of individuals", 0.020),
    ("Capreolus_capreolus", "Mammalia", "Artiodactyla", "Cervidae", "Roe deer", "Terrestrial",
     "Density individuals/km2", 0.0),
    ("Erithacus_rubecula", "Aves", "Passeriformes", "Muscicapidae", "European robin",
     "Terrestrial", "Number of breeding pairs", -0.005),
    ("Vanellus_vanellus", "Aves", "Charadriiformes", "Charadriidae", "Northern lapwing",
     "Terrestrial", "Number of breeding pairs", -0.030),
    ("Ciconia_ciconia", "Aves", "Ciconiiformes", "Ciconiidae", "White stork", "Terrestrial",
     "Number of breeding pairs", 0.020),
    ("Salmo_salar", "Actinopteri", "Salmoniformes", "Salmonidae", "Atlantic salmon",
     "Freshwater", "Number of returning adults", -0.015),
    ("Lutra_lutra", "Mammalia", "Carnivora", "Mustelidae", "Eurasian otter", "Freshwater",
     "Number of occupied sites", 0.015),
    ("Bufo_bufo", "Amphibia", "Anura", "Bufonidae", "Common toad", "Freshwater",
     "Number of adults", -0.020),
    ("Phoca_vitulina", "Mammalia", "Carnivora", "Phocidae", "Harbour seal", "Marine",
     "Number of individuals", 0.010),
)  # fmt: skip
REALMS = {  # T_realm, T_biome, FW_realm, FW_biome, M_realm, M_ocean, M_biome by System
    "Terrestrial": ("Palearctic", "Temperate broadleaf and mixed forests") + ("NULL",) * 5,
    "Freshwater": ("NULL", "NULL", "Palearctic", "Temperate coastal rivers", "NULL", "NULL",
                   "NULL"),
    "Marine": ("NULL",) * 4 + ("Temperate Northern Atlantic", "Atlantic north temperate",
                               "Temperate shelf and seas"),
}  # fmt: skip


# --- reading --------------------------------------------------------------------------------
def _column_name(name: object) -> str:
    # a byte-order mark read as text (a UTF-8 file read as latin-1) is not part of a name
    return str(name).strip().lstrip("\ufeff").removeprefix("ï»¿")


def _read(path: Path, encoding: str, **options: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, encoding=encoding, keep_default_na=False, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read as a CSV in {encoding} ({err})") from err


def header(path: str | Path, encoding: str = "latin-1") -> list[str]:
    """The column names, checked: the required ones, a year column, none repeated."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Living Planet Database CSV")
    names = [_column_name(c) for c in _read(path, encoding, nrows=0, dtype=str).columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing} (an LPD CSV has {list(REQUIRED_COLUMNS)} and "
            "one column per year)"
        )
    if not year_columns(names):
        raise ValueError(f"{path}: no year column (4-digit headers such as '1970')")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ValueError(f"{path}: repeated column(s) {repeated}")
    return names


def read_table(path: Path, encoding: str, columns: Sequence[str]) -> pd.DataFrame:
    """Some columns as stripped strings."""
    wanted = set(columns)
    table = _read(path, encoding, dtype=str, usecols=lambda c: _column_name(c) in wanted)
    table.columns = [_column_name(c) for c in table.columns]
    return table.apply(lambda col: col.str.strip())


def year_columns(names: Sequence[str]) -> list[str]:
    return [c for c in names if re.fullmatch(r"\d{4}", c)]


def year_axis(columns: Sequence[str]) -> np.ndarray:
    """Consecutive years from the first to the last year column."""
    return np.arange(min(map(int, columns)), max(map(int, columns)) + 1)


def fast_values(path: Path, encoding: str, columns: Sequence[str]) -> np.ndarray | None:
    """The year columns parsed as numbers by the CSV reader (NULL and empty missing), on
    ``year_axis``; None where some value is anything else (``parse_values`` names it)."""
    wanted = set(columns)
    options: dict[str, Any] = dict(dtype=np.float64, na_values=list(MISSING))
    try:
        frame = _read(path, encoding, usecols=lambda c: _column_name(c) in wanted, **options)
    except ValueError:
        return None
    frame.columns = [_column_name(c) for c in frame.columns]
    years = year_axis(columns)
    out = np.full((len(frame), len(years)), np.nan)
    for column in columns:
        out[:, int(column) - years[0]] = frame[column].to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        return out if (np.isnan(out) | (np.isfinite(out) & (out >= 0))).all() else None


def _bad(where: Path, table: pd.DataFrame, row: int, column: str, rule: str) -> ValueError:
    value = table[column].iloc[row]
    return ValueError(
        f"{where}: data row {row + 1} (ID {table['ID'].iloc[row]!r}), column {column!r}: "
        f"{value!r} {rule}"
    )


def parse_values(table: pd.DataFrame, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """The population values (rows, consecutive years from the first to the last year
    column; NaN for NULL and for years without a column) and those years."""
    columns = year_columns(list(table.columns))
    years = year_axis(columns)
    out = np.full((len(table), len(years)), np.nan)
    for column in columns:
        text = table[column]
        missing = text.str.upper().isin(MISSING).to_numpy()
        values = _numbers(np.where(missing, "nan", text.to_numpy(str)))
        with np.errstate(invalid="ignore"):
            bad = ~missing & ~(np.isfinite(values) & (values >= 0))
        if bad.any():
            rule = "is not a population value (a number >= 0, or NULL for none)"
            raise _bad(where, table, int(np.argmax(bad)), column, rule)
        out[:, int(column) - years[0]] = np.where(missing, np.nan, values)
    return out, years


def _numbers(text: np.ndarray) -> np.ndarray:
    """Strings to float64 (numpy's parser, fast); NaN where one is not a number."""
    try:
        return text.astype(np.float64)
    except ValueError:
        return pd.to_numeric(pd.Series(text), errors="coerce").to_numpy(np.float64)


def parse_ids(table: pd.DataFrame, where: Path) -> np.ndarray:
    ok = table["ID"].str.fullmatch(r"\d+").to_numpy()
    if not ok.all():
        raise _bad(where, table, int(np.argmax(~ok)), "ID", "is not a whole number")
    ids = table["ID"].astype(np.int64).to_numpy()
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise _bad(where, table, int(np.argmax(dup)), "ID", "repeats an earlier row's ID")
    empty = table["Binomial"].str.upper().isin(MISSING).to_numpy()
    if empty.any():
        raise _bad(where, table, int(np.argmax(empty)), "Binomial", "is empty (need Genus_species)")
    return ids


def coordinates(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latitude, longitude (in [-180, 180)) and whether they are usable."""
    lat = pd.to_numeric(table["Latitude"], errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(table["Longitude"], errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        usable = (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    return lat, np.where(lon == 180.0, -180.0, lon), usable


def open(path: str | Path, encoding: str = "latin-1") -> xr.Dataset:
    """The LPD's usable populations: dim ``population`` (the ``ID``), ``year``; variables
    ``latitude``, ``longitude``, ``binomial`` and ``value`` (population, year; NaN missing);
    attributes ``source`` and the counts of ``COUNT_NAMES`` (see the module docstring)."""
    import xarray as xr

    path = Path(path)
    years = year_columns(header(path, encoding))
    table = read_table(path, encoding, REQUIRED_COLUMNS)
    ids = parse_ids(table, path)
    values = fast_values(path, encoding, years)
    if values is None:  # some value is not a number: find it and name it
        values = parse_values(read_table(path, encoding, [*REQUIRED_COLUMNS, *years]), path)[0]
    lat, lon, usable = coordinates(table)
    n_values = np.isfinite(values).sum(axis=1)
    keep = usable & (n_values >= 2)
    counts = {
        "n_rows": len(table),
        "n_dropped_coordinates": int((~usable).sum()),
        "n_dropped_no_values": int((usable & (n_values == 0)).sum()),
        "n_dropped_one_value": int((usable & (n_values == 1)).sum()),
        "n_populations": int(keep.sum()),
    }
    ds = xr.Dataset(
        {
            "latitude": ("population", lat[keep]),
            "longitude": ("population", lon[keep]),
            "binomial": ("population", table["Binomial"].to_numpy(object)[keep]),
            "value": (("population", "year"), values[keep]),
        },
        coords={"population": ids[keep], "year": year_axis(years)},
        attrs={"source": str(path), **counts},
    )
    ds.encoding["source"] = str(path)
    return ds


# --- the sample -----------------------------------------------------------------------------
def _sites(grid: Grid, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``n`` populations clustered at about n / 4 sites, inside the grid."""
    n_sites = max(1, n // 4)
    row = rng.integers(0, grid.n_lat, n_sites)
    col = rng.integers(0, grid.n_lon, n_sites)
    site = rng.integers(0, n_sites, n)
    jitter = rng.uniform(0.05, 0.95, size=(2, n)) * grid.res
    lat = grid.lat_edges()[row[site] + 1] + jitter[0]
    lon = grid.lon_edges()[col[site]] + jitter[1]
    return np.round(lat, 4), np.round(lon, 4)


def _series(
    trend: float, first: int, last: int, counts: bool, rng: np.random.Generator
) -> dict[str, str]:
    """One population's year columns: a noisy log-linear trend with NULL gaps."""
    years = np.arange(first, last + 1)
    level = rng.uniform(0.3, 3.5) + (trend + rng.normal(0, 0.01)) * (years - first)
    values = 10 ** (level + rng.normal(0, 0.05, len(years)))
    observed = rng.random(len(years)) >= 0.25
    observed[[0, -1]] = True
    text = [f"{round(v):d}" if counts else f"{v:.4g}" for v in values]
    out = dict.fromkeys(YEAR_COLUMNS, "NULL")
    out.update({str(y): t for y, t, o in zip(years, text, observed, strict=True) if o})
    return out


def sample_table(grid: Grid, start: str, end: str, seed: int = 0, n: int = 300) -> pd.DataFrame:
    """``n`` synthetic populations inside ``grid`` in the LPD columns, all as strings; their
    spans mostly cover the window's years (within 1950..2020)."""
    rng = np.random.default_rng([seed, 1950])
    lat, lon = _sites(grid, n, rng)
    y0 = int(np.clip(pd.Timestamp(start).year, 1951, 2020))
    y1 = int(np.clip(pd.Timestamp(end).year, y0, 2020))
    rows = []
    for i in range(n):
        sp = SPECIES[int(rng.integers(0, len(SPECIES)))]
        first = int(rng.integers(max(1950, y0 - 30), y0))
        last = int(rng.integers(y1, 2021))
        counts = not sp[6].startswith("Density")
        site = "Réserve naturelle" if i % 7 == 0 else "Monitoring site"
        meta = dict.fromkeys(META_COLUMNS, "NULL")
        meta.update(zip(("T_realm", "T_biome", "FW_realm", "FW_biome", "M_realm", "M_ocean",
                         "M_biome"), REALMS[sp[5]], strict=True))  # fmt: skip
        meta.update(
            ID=str(1000 + i), Binomial=sp[0], Replicate="0", Class=sp[1], Order=sp[2],
            Family=sp[3], Genus=sp[0].split("_")[0], Species=sp[0].split("_")[1],
            Common_name=sp[4], Location=f"{site} {i}", Country="Synthetic",
            All_countries="Synthetic", Region="Europe", Latitude=f"{lat[i]:.4f}",
            Longitude=f"{lon[i]:.4f}", Specific_location=str(int(rng.random() < 0.5)),
            temperate_or_tropical="Temperate", System=sp[5], Units=sp[6], Method="Counts",
            Reference=f"Synthetic survey {i}, bfm sample (seed {seed})",
        )  # fmt: skip
        rows.append({**meta, **_series(sp[7], first, last, counts, rng)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def sample(path: str | Path, grid: Grid, start: str, end: str, seed: int = 0, n: int = 300) -> Path:
    """Write a synthetic LPD CSV (latin-1) and its manifest."""
    path = Path(path)
    table = sample_table(grid, start, end, seed, n)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, encoding="latin-1", quoting=csv.QUOTE_MINIMAL,
                     lineterminator="\n")  # fmt: skip
    manifest.write_manifest(
        path,
        source="lpi",
        request={
            "file": path.name,
            "populations": n,
            "grid": grid.to_dict(),
            "start": start,
            "end": end,
        },
        url=f"sample:lpi?seed={seed}",
        licence=LICENCE,
        citation=CITATION,
    )
    return path
