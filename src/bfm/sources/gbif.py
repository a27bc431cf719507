"""GBIF occurrences: the SIMPLE_CSV download format, a climate-driven sample, and open.

A SIMPLE_CSV download is a zip ``<key>.zip`` holding one tab-separated ``<key>.csv`` with the
50 columns of ``SIMPLE_CSV_COLUMNS``, unquoted, multi-values ``;``-joined.

The sample draws occurrences from the analytic climate (``bfm.sources.climate``) so that the
species layer is learnable from the ERA5 layer of the same climate seed: every species gets a
deterministic niche (thermal optimum and tolerance on the daily mean 2 m temperature, a
preference for lowlands or highlands, a base rate), the occurrence intensity per land cell and
day is ``rate * area * land fraction * thermal * habitat``, counts are Poisson and positions are
uniform within the cell. About 40 % of the records have a date-only ``eventDate``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.contracts import occurrence as contract
from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Quarantine
from bfm.fileio import atomic_path
from bfm.sources import manifest
from bfm.sources.base import Study, register
from bfm.sources.climate import Climate
from bfm.sources.occurrence_base import OccurrenceSource
from bfm.species_list import HIGHER, read_species

SIMPLE_CSV_COLUMNS = (
    "gbifID", "datasetKey", "occurrenceID", "kingdom", "phylum", "class", "order", "family",
    "genus", "species", "infraspecificEpithet", "taxonRank", "scientificName",
    "verbatimScientificName", "verbatimScientificNameAuthorship", "countryCode", "locality",
    "stateProvince", "occurrenceStatus", "individualCount", "publishingOrgKey",
    "decimalLatitude", "decimalLongitude", "coordinateUncertaintyInMeters",
    "coordinatePrecision", "elevation", "elevationAccuracy", "depth", "depthAccuracy",
    "eventDate", "day", "month", "year", "taxonKey", "speciesKey", "basisOfRecord",
    "institutionCode", "collectionCode", "catalogNumber", "recordNumber", "identifiedBy",
    "dateIdentified", "license", "rightsHolder", "recordedBy", "typeStatus",
    "establishmentMeans", "lastInterpreted", "mediaType", "issue",
)  # fmt: skip
REQUIRED_COLUMNS = ("speciesKey", "decimalLatitude", "decimalLongitude", "eventDate")
# What ``open`` keeps by default: enough to grid, filter and attribute the records.
KEPT_COLUMNS = REQUIRED_COLUMNS + (
    "gbifID", "scientificName", "occurrenceStatus", "basisOfRecord", "license",
    "countryCode", "coordinateUncertaintyInMeters", "datasetKey", "occurrenceID",
    "catalogNumber", "species",
)  # fmt: skip
LICENCE = "CC BY 4.0 (records CC0 / CC BY / CC BY-NC; a download carries the most restrictive)"
CITATION = "GBIF.org ({date}) GBIF Occurrence Download {key}"
# Rough country boxes (lat_min, lat_max, lon_min, lon_max), small countries first: the sample
# geography is synthetic, so an approximate countryCode is all that is meaningful.
COUNTRY_BOXES = (
    ("CH", 45.8, 47.8, 5.9, 10.5), ("AT", 46.4, 49.0, 9.5, 17.2), ("SI", 45.4, 46.9, 13.4, 16.6),
    ("BE", 49.5, 51.5, 2.5, 6.4), ("NL", 50.8, 53.6, 3.3, 7.2), ("CZ", 48.5, 51.1, 12.1, 18.9),
    ("SK", 47.7, 49.6, 16.8, 22.6), ("HU", 45.7, 48.6, 16.1, 22.9), ("DK", 54.5, 57.8, 8.0, 12.7),
    ("HR", 42.4, 46.6, 13.5, 19.5), ("PL", 49.0, 54.9, 14.1, 24.2), ("DE", 47.3, 55.1, 5.9, 15.0),
    ("IT", 36.6, 47.1, 6.6, 18.5), ("FR", 42.3, 51.1, -4.8, 8.2), ("GB", 49.9, 58.7, -8.2, 1.8),
    ("ES", 36.0, 43.8, -9.3, 3.3),
)  # fmt: skip
RATE_PER_KM2_DAY = 2e-5  # records per km2 of land and day at a species' optimum (x 0.6..1.6)
CHUNK_ROWS = 500_000  # records read at a time where a download is streamed


@dataclass(frozen=True)
class Niche:
    """Where a sample species occurs: daily mean t2m optimum/tolerance (K), terrain, rate."""

    t_opt: float
    tolerance: float
    highland: bool
    rate: float  # records per km2 of land and day at the optimum


def niches(keys: list[int], seed: int) -> dict[int, Niche]:
    """Deterministic niches; thermal optima spread evenly over 266..290 K in a seeded order."""
    rng = np.random.default_rng([seed, 0])
    optima = np.linspace(266.0, 290.0, len(keys)) if len(keys) > 1 else np.array([278.0])
    order = rng.permutation(len(keys))
    return {
        int(key): Niche(
            t_opt=float(optima[order[i]]),
            tolerance=float(rng.uniform(6.0, 10.0)),
            highland=bool(rng.random() < 0.35),
            rate=float(RATE_PER_KM2_DAY * rng.uniform(0.6, 1.6)),
        )
        for i, key in enumerate(keys)
    }


def download_key(seed: int) -> str:
    """``0000001-<yymmddHHMMSS>`` with a moment in 2024 derived from the seed."""
    moment = dt.datetime(2024, 1, 1) + dt.timedelta(seconds=(seed * 2654435761) % 31_536_000)
    return f"0000001-{moment:%y%m%d%H%M%S}"


def daily_mean_t2m(climate: Climate, days: pd.DatetimeIndex, grid: Grid) -> np.ndarray:
    """Mean of the 00/06/12/18 UTC 2 m temperatures per day and cell, (days, n_lat, n_lon)."""
    times = (days.values[:, None] + np.arange(4) * np.timedelta64(6, "h")).ravel()
    surf = climate.surface(grid.latitudes, grid.longitudes)
    t2m = climate.t2m(times, grid.latitudes, grid.longitudes, surf)
    return t2m.reshape(len(days), 4, *grid.shape).mean(axis=1)


def intensity(
    niche: Niche, t2m: np.ndarray, orography: np.ndarray, lsm: np.ndarray, area_km2: np.ndarray
) -> np.ndarray:
    """Expected records per cell and day."""
    thermal = np.exp(-0.5 * ((t2m - niche.t_opt) / niche.tolerance) ** 2)
    if niche.highland:
        habitat = 0.2 + 0.8 * np.clip(orography / 1500.0, 0.0, 1.0)
    else:
        habitat = np.exp(-orography / 1200.0)
    return niche.rate * area_km2 * lsm * habitat * thermal


def _month_chunks(start: pd.Timestamp, end: pd.Timestamp) -> list[pd.DatetimeIndex]:
    days = pd.date_range(start, end, freq="D")
    return [days[days.to_period("M") == p] for p in days.to_period("M").unique()]


def sample_records(
    species: pd.DataFrame, start: str, end: str, grid: Grid, seed: int, climate_seed: int
) -> pd.DataFrame:
    """Occurrence records (one row per record, raw values) for every species, day by day."""
    months = sample_record_months(species, start, end, grid, seed, climate_seed)
    return pd.concat(list(months), ignore_index=True)


def sample_record_months(
    species: pd.DataFrame, start: str, end: str, grid: Grid, seed: int, climate_seed: int
) -> Iterator[pd.DataFrame]:
    """:func:`sample_records` one month at a time (each sorted by date and species key):
    only one month of records is ever in memory."""
    climate = Climate.from_seed(climate_seed)
    surf = climate.surface(grid.latitudes, grid.longitudes)
    area_km2 = grid.cell_areas() / 1e6
    keys = [int(k) for k in species["gbif_key"]]
    niche = niches(keys, seed)
    rng = np.random.default_rng([seed, 1])
    for days in _month_chunks(pd.Timestamp(start), pd.Timestamp(end)):
        parts = []
        t2m = daily_mean_t2m(climate, days, grid)
        for key in keys:
            lam = intensity(niche[key], t2m, surf.orography, surf.lsm, area_km2)
            counts = rng.poisson(lam)
            day, row, col = np.nonzero(counts)
            n = counts[day, row, col]
            day, row, col = (np.repeat(a, n) for a in (day, row, col))
            jitter = rng.uniform(0.02, 0.98, size=(2, day.size))
            parts.append(
                pd.DataFrame(
                    {
                        "speciesKey": key,
                        "date": days.values[day],
                        "seconds": rng.integers(0, 86400, day.size),
                        "dated_only": rng.random(day.size) < 0.4,
                        "lat": grid.lat_edges()[row] - jitter[0] * grid.res,
                        "lon": grid.lon_edges()[col] + jitter[1] * grid.res,
                        "elevation": surf.orography[row, col],
                    }
                )
            )
        records = pd.concat(parts, ignore_index=True)
        parts.clear()  # while the month is written, only its sorted records are held
        yield records.sort_values(["date", "speciesKey"], kind="stable", ignore_index=True)


def _country(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    code = np.full(lat.shape, "", dtype=object)
    for name, la0, la1, lo0, lo1 in reversed(COUNTRY_BOXES):  # earlier boxes win
        inside = (lat >= la0) & (lat <= la1) & (lon >= lo0) & (lon <= lo1)
        code[inside] = name
    return code


def _taxon_columns(records: pd.DataFrame, species: pd.DataFrame) -> dict:
    names = species.set_index("gbif_key")["scientific_name"]
    sci = names.loc[records["speciesKey"]].to_numpy()
    genus = np.array([s.split()[0] for s in sci], dtype=object)
    ranks = species.set_index("gbif_key")[list(HIGHER)].loc[records["speciesKey"]]
    keys = records["speciesKey"].astype(str)
    columns: dict[str, Any] = {c: ranks[c].to_numpy(object) for c in HIGHER}
    columns.update(genus=genus, species=sci, scientificName=sci, verbatimScientificName=sci)
    columns.update(taxonRank="SPECIES", taxonKey=keys, speciesKey=keys)
    return columns


def _where_when_columns(records: pd.DataFrame, rng: np.random.Generator) -> dict:
    lat, lon = records["lat"].to_numpy(), records["lon"].to_numpy()
    dates = pd.DatetimeIndex(records["date"])
    stamp = dates + pd.to_timedelta(records["seconds"].to_numpy(), unit="s")
    date_only = records["dated_only"].to_numpy()
    event = np.where(date_only, dates.strftime("%Y-%m-%d"), stamp.strftime("%Y-%m-%dT%H:%M:%S"))
    with_elevation = rng.random(len(records)) < 0.25
    elevation = records["elevation"].round(1).astype(str)
    uncertainty = rng.choice(["10.0", "25.0", "100.0", "250.0"], len(records))
    return {
        "countryCode": _country(lat, lon),
        "decimalLatitude": records["lat"].round(5).astype(str),
        "decimalLongitude": records["lon"].round(5).astype(str),
        "coordinateUncertaintyInMeters": uncertainty,
        "elevation": np.where(with_elevation, elevation, ""),
        "eventDate": event,
        "day": dates.day.astype(str),
        "month": dates.month.astype(str),
        "year": dates.year.astype(str),
    }


def _record_columns(n: int, seed: int, rng: np.random.Generator, first: int = 0) -> dict:
    key = download_key(seed)
    index = np.arange(first, first + n)
    ids = (index + 4_000_000_000 + 1_000_000 * (seed % 1000)).astype(str)
    return {
        "gbifID": ids,
        "datasetKey": f"50c9509d-22c7-4a22-a47d-8c48425ef4{seed % 100:02d}",
        "occurrenceID": [f"urn:bfm:sample:{key}:{i}" for i in index],
        "occurrenceStatus": "PRESENT",
        "individualCount": "1",
        "publishingOrgKey": "28eb1a3f-1c15-4a95-931a-4af90ecb574d",
        "basisOfRecord": "HUMAN_OBSERVATION",
        "institutionCode": "BFM",
        "collectionCode": "sample",
        "catalogNumber": ids,
        "license": "CC_BY_4_0",
        "recordedBy": [f"observer {i}" for i in rng.integers(1, 500, n)],
        "lastInterpreted": f"20{key[8:10]}-{key[10:12]}-{key[12:14]}T00:00:00.000Z",
        "issue": np.where(rng.random(n) < 0.1, "COORDINATE_ROUNDED", ""),
    }


def simple_csv_table(records: pd.DataFrame, species: pd.DataFrame, seed: int, part: int = 0,
                     first: int = 0) -> pd.DataFrame:  # fmt: skip
    """The 50 SIMPLE_CSV columns, all as strings, for ``sample_records`` output: part
    ``part`` (a month) of the sample, whose first record is record ``first`` of the download
    (the gbifIDs count on); the fields no reader uses (elevation, uncertainty, observer,
    issue) are drawn from the part's own stream, so that parts are written one by one."""
    n = len(records)
    rng = np.random.default_rng([seed, 2, part])
    columns = dict.fromkeys(SIMPLE_CSV_COLUMNS, "")  # unknown fields stay blank, as in GBIF
    columns.update(_taxon_columns(records, species))
    columns.update(_where_when_columns(records, rng))
    columns.update(_record_columns(n, seed, rng, first))
    return pd.DataFrame({c: columns[c] for c in SIMPLE_CSV_COLUMNS}, index=range(n))


def download_request(species: pd.DataFrame, start: str, end: str, grid: Grid) -> dict:
    """The GBIF download request (predicate) that a real download of the same data sends."""
    lat_e, lon_e = grid.lat_edges(), grid.lon_edges()
    s, n, w, e = lat_e[-1], lat_e[0], lon_e[0], lon_e[-1]
    polygon = f"POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))"  # counter-clockwise
    predicates = [
        {"type": "in", "key": "TAXON_KEY", "values": [str(k) for k in species["gbif_key"]]},
        {"type": "within", "geometry": polygon},
        {"type": "greaterThanOrEquals", "key": "EVENT_DATE", "value": start},
        {"type": "lessThanOrEquals", "key": "EVENT_DATE", "value": end},
        {"type": "equals", "key": "HAS_COORDINATE", "value": "true"},
        {"type": "equals", "key": "OCCURRENCE_STATUS", "value": "PRESENT"},
    ]
    return {"format": "SIMPLE_CSV", "predicate": {"type": "and", "predicates": predicates}}


def sample(
    path: str | Path,
    species: pd.DataFrame,
    start: str,
    end: str,
    grid: Grid,
    seed: int = 0,
    climate_seed: int | None = None,
) -> Path:
    """Write a SIMPLE_CSV download zip of sample occurrences and its manifest.

    ``climate_seed`` is the seed of the ERA5 sample whose climate the species follow
    (default: ``seed``).
    """
    if pd.Timestamp(end) < pd.Timestamp(start):
        raise ValueError(f"gbif: --end {end} is before --start {start}")
    climate_seed = seed if climate_seed is None else climate_seed
    months = sample_record_months(species, start, end, grid, seed, climate_seed)
    key = download_key(seed)
    path = Path(path)
    info = zipfile.ZipInfo(f"{key}.csv", date_time=(2000 + int(key[8:10]), 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    # Fixed member time: same seed, same bytes. Written a month at a time (bounded memory).
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(("\t".join(SIMPLE_CSV_COLUMNS) + "\n").encode())
            first = 0
            for part, records in enumerate(months):
                table = simple_csv_table(records, species, seed, part, first)
                text = table.to_csv(sep="\t", index=False, header=False,
                                    quoting=csv.QUOTE_NONE, lineterminator="\n")  # fmt: skip
                f.write(text.encode())
                first += len(records)
                del records, table, text  # not held while the next month is drawn
    manifest.write_manifest(
        path,
        source="gbif",
        request=download_request(species, start, end, grid),
        url=f"sample:gbif?seed={seed}&climate_seed={climate_seed}",
        licence=LICENCE,
        citation=citation_of(key),
    )
    return path


def parse_event_dates(values: pd.Series) -> pd.Series:
    """ISO 8601 dates, date-times and intervals (start kept) -> naive UTC timestamps.

    A date-only value is midnight of that day; unparseable values are NaT.
    """
    first = values.astype(str).str.split("/", n=1).str[0].str.strip()
    parsed = pd.to_datetime(first, format="ISO8601", errors="coerce", utc=True)
    return parsed.dt.tz_localize(None)


def _read_table(path: Path, all_columns: bool) -> tuple[pd.DataFrame, str]:
    usecols = None if all_columns else (lambda c: c in KEPT_COLUMNS)
    options = dict(sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    options["usecols"] = usecols
    if not zipfile.is_zipfile(path):
        return pd.read_csv(path, **options), str(path)
    from bfm.sources import gbif_dwca  # members checked: no traversal, no zip bomb

    with gbif_dwca.open_zip_member(path, ".csv") as f:
        table = pd.read_csv(io.TextIOWrapper(f, "utf-8"), **options)
    member = next(m for m in gbif_dwca.members(path) if m.endswith(".csv"))  # the one read
    return table, f"{path}:{member}"


def _read_chunks(path: Path, rows: int) -> Iterator[tuple[pd.DataFrame, str]]:
    """:func:`_read_table` (kept columns) ``rows`` rows at a time."""
    options = dict(sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                   usecols=lambda c: c in KEPT_COLUMNS, chunksize=rows)  # fmt: skip
    if not zipfile.is_zipfile(path):
        with pd.read_csv(path, **options) as reader:
            yield from ((chunk, str(path)) for chunk in reader)
        return
    from bfm.sources import gbif_dwca  # members checked: no traversal, no zip bomb

    member = next(m for m in gbif_dwca.members(path) if m.endswith(".csv"))
    with gbif_dwca.open_zip_member(path, ".csv") as f:
        with pd.read_csv(io.TextIOWrapper(f, "utf-8"), **options) as reader:
            yield from ((chunk, f"{path}:{member}") for chunk in reader)


def open(path: str | Path, all_columns: bool = False) -> pd.DataFrame:
    """Read a SIMPLE_CSV download (zip or bare .csv) into a DataFrame.

    Columns: speciesKey (Int64), decimalLatitude, decimalLongitude (float64), eventDate
    (datetime64, naive UTC; NaT where unparseable) and the other ``KEPT_COLUMNS`` present
    (all 50 with ``all_columns``), as strings. ``df.attrs["source"]`` names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GBIF download")
    table, name = _read_table(path, all_columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing} (a SIMPLE_CSV download has them)")
    table["speciesKey"] = pd.to_numeric(table["speciesKey"], errors="coerce").astype("Int64")
    for column in ("decimalLatitude", "decimalLongitude"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(np.float64)
    table["eventDate"] = parse_event_dates(table["eventDate"])
    key = Path(name.rsplit(":", 1)[-1]).stem
    table.attrs.update(source=name, download_key=key, citation=citation_of(key))
    if "license" in table.columns:
        table.attrs["licence"] = licence_of(table["license"])
    return table


def citation_of(key: str) -> str:
    """The GBIF citation of a download key ``NNNNNNN-yymmddHHMMSS[mmm]``."""
    stamp = key.partition("-")[2]
    date = f"20{stamp[:2]}-{stamp[2:4]}-{stamp[4:6]}" if stamp[:6].isdigit() else "n.d."
    return CITATION.format(date=date, key=key)


def licence_of(licenses: pd.Series) -> str:
    """The licence of a download: the most restrictive of its records' licences."""
    values = {str(v).upper() for v in licenses.unique() if str(v)}
    if any("NC" in v for v in values):
        return "CC BY-NC 4.0"
    if any("BY" in v for v in values):
        return "CC BY 4.0"
    if values and all("CC0" in v for v in values):
        return "CC0 1.0"
    return LICENCE


def records(path: str | Path, species: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame,
                                                            Quarantine]:  # fmt: skip
    """The occurrence contract's record table of a SIMPLE_CSV download (no media: SIMPLE_CSV
    has none) and its quarantine (nothing is dropped here: ``contract.clean`` does it).

    ``record_id`` is ``gbif:<gbifID>``; a republished iNaturalist or Xeno-canto record gets
    ``same_as`` (``gbif_dwca.same_as``); the name matched is ``species`` (the accepted
    binomial), else ``scientificName``; a non-numeric coordinate is missing (NaN), a date is
    read at its real precision (``contract.parse_dates``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GBIF download")
    raw, where = _read_table(path, all_columns=False)
    q = Quarantine(where)
    q.saw(len(raw))
    return _record_table(raw, where, species), contract.empty_media(), q


def record_chunks(path: str | Path, species: pd.DataFrame, rows: int = CHUNK_ROWS
                  ) -> Iterator[pd.DataFrame]:  # fmt: skip
    """:func:`records`' table ``rows`` records at a time, reading the download as it goes
    (one chunk in memory)."""
    for table, _q in counted_chunks(path, species, rows):
        yield table


def counted_chunks(path: str | Path, species: pd.DataFrame, rows: int = CHUNK_ROWS
                   ) -> Iterator[tuple[pd.DataFrame, Quarantine]]:  # fmt: skip
    """:func:`record_chunks` with each chunk's quarantine (its rows read, as :func:`records`
    counts them); a download without records gives one empty chunk."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GBIF download")
    for raw, where in _read_chunks(path, rows):
        q = Quarantine(where)
        q.saw(len(raw))
        yield _record_table(raw, where, species), q


def _record_table(raw: pd.DataFrame, where: str, species: pd.DataFrame) -> pd.DataFrame:
    from bfm.sources import gbif_dwca

    missing = [c for c in REQUIRED_COLUMNS + ("gbifID",) if c not in raw.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing} (a SIMPLE_CSV download has them)")

    def column(name: str) -> pd.Series:
        return raw[name] if name in raw.columns else pd.Series("", index=raw.index, dtype=str)

    names = column("species").where(column("species") != "", column("scientificName"))
    dates = contract.parse_dates(raw["eventDate"])
    table = pd.DataFrame({
        "record_id": "gbif:" + raw["gbifID"].astype(str).str.strip(),
        "same_as": gbif_dwca.same_as(raw),
        "source": "gbif",
        "scientific_name": names,
        "species_key": contract.match_species(names, species),
        "latitude": pd.to_numeric(raw["decimalLatitude"], errors="coerce"),
        "longitude": pd.to_numeric(raw["decimalLongitude"], errors="coerce"),
        "uncertainty_m": pd.to_numeric(column("coordinateUncertaintyInMeters"), errors="coerce"),
        "start": dates["start"], "end": dates["end"], "precision": dates["precision"],
        "basis": column("basisOfRecord").str.upper(),
        "status": column("occurrenceStatus").str.upper().replace("", "PRESENT"),
        "licence": column("license"),
    })  # fmt: skip
    return contract.conform(table, where)


RAW_NAME = "occurrences.zip"


class GBIF(OccurrenceSource):
    """GBIF: one raw file ``occurrences.zip``, a SIMPLE_CSV download of every configured
    species over the whole window (combined with the other occurrence sources)."""

    name = "gbif"
    licence = LICENCE
    citation = "GBIF.org, GBIF Occurrence Download"
    service = "gbif"
    raw_name = RAW_NAME

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        # The sample follows the ERA5 sample climate of the same study (its seed).
        return {**super().raw_settings(name, study), "climate_seed": self.climate_seed(study)}

    def user_file(self, path: str, name: str) -> str:
        # file mode: `path` is the download zip itself, media.zip and effort.zip beside it,
        # or a folder holding the three
        if path.endswith((".zip", ".csv")):
            return path if name == RAW_NAME else str(Path(path).with_name(name))
        return super().user_file(path, name)

    def _check(self, name: str) -> None:
        names = self.names()
        if name not in names:
            raise ValueError(f"gbif: raw file {name!r} is not one of {names}")

    @staticmethod
    def names() -> list[str]:
        from bfm.sources import gbif_effort, gbif_media

        return [RAW_NAME, gbif_media.MEDIA_NAME, gbif_effort.EFFORT_NAME]

    def effort_name(self, study: Study) -> str | None:
        """``effort.zip``: the sampling effort (records per class, day and cell) when the
        option ``effort`` is on (``gbif_effort``)."""
        from bfm.sources import gbif_effort

        return gbif_effort.EFFORT_NAME if self.options(study)["effort"] else None

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        from bfm.sources import gbif_effort

        sampled = study.settings(self.name)["mode"] == "sample"
        if name == gbif_effort.EFFORT_NAME and sampled:  # the sample counts its own records
            return [self.raw_file(RAW_NAME, study), study.species]
        return super().raw_inputs(name, study)

    def media_names(self, study: Study) -> list[str]:
        """``media.zip``: photos and recordings of the multimedia extension (gbif_media)."""
        from bfm.sources import gbif_media

        return [gbif_media.MEDIA_NAME] if self.options(study)["media"] else []

    def options(self, study: Study) -> dict[str, Any]:
        opts = study.options_with(self.name, {"media": True, "media_per_species": 20,
                                              "effort": True})  # fmt: skip
        for flag in ("media", "effort"):
            if not isinstance(opts[flag], bool):
                raise ValueError(f"config: sources.gbif.options.{flag}: true or false, got "
                                 f"{opts[flag]!r}")  # fmt: skip
        n = opts["media_per_species"]
        if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise ValueError(f"config: sources.gbif.options.media_per_species: a positive "
                             f"integer, got {n!r}")  # fmt: skip
        return opts

    def media(self, files: Sequence[str | Path], study: Study
              ) -> tuple[pd.DataFrame, Callable[[str], bytes]]:  # fmt: skip
        from bfm.sources import gbif_media

        (path,) = files
        return gbif_media.open_media(path)

    def sample(self, name: str, out: Path, study: Study) -> Path:
        from bfm.sources import gbif_effort, gbif_media

        self._check(name)
        seed = self.seed(study)
        if name == gbif_media.MEDIA_NAME:
            return gbif_media.sample_media(out, read_species(study.species), seed)
        if name == gbif_effort.EFFORT_NAME:
            species = read_species(study.species)
            chunks = record_chunks(self.raw_file(RAW_NAME, study), species)
            return gbif_effort.sample(out, chunks, species, study.grid, study.start, study.end,
                                      seed)  # fmt: skip
        return sample(
            out,
            read_species(study.species),
            study.start,
            study.end,
            study.grid,
            seed,
            self.climate_seed(study),
        )

    def download(self, name: str, out: Path, study: Study) -> Path:
        """``occurrences.zip``: a SIMPLE_CSV download through GBIF's asynchronous API
        (``gbif_api``; credentials GBIF_USER, GBIF_PWD, GBIF_EMAIL from the environment);
        ``media.zip``: a DwC-A download of the records with media, then their photos and
        recordings, at most ``media_per_species`` per species and kind (``gbif_media``);
        ``effort.zip``: an SQL download counting the records of the species' classes per
        day and cell (``gbif_effort``)."""
        from bfm.sources import gbif_api, gbif_effort, gbif_media, occurrences

        self._check(name)
        species = read_species(study.species)
        years = pd.Timestamp(study.start).year, pd.Timestamp(study.end).year
        if name == gbif_effort.EFFORT_NAME:
            classes = sorted(set(gbif_effort.species_classes(species).values()))
            limit = occurrences.options(study)["max_uncertainty_m"]
            return gbif_effort.download(out, classes, years[0], years[1], study.grid,
                                        max_uncertainty_m=limit)  # fmt: skip
        if name == gbif_media.MEDIA_NAME:
            per_species = self.options(study)["media_per_species"]
            return gbif_media.download(out, species, years[0], years[1], study.grid,
                                       per_species=per_species)  # fmt: skip
        keys = [int(k) for k in species["gbif_key"]]
        predicate = gbif_api.download_predicate(keys, years[0], years[1], study.grid)
        return gbif_api.download(out, predicate, fmt="SIMPLE_CSV")

    def records(self, files: Sequence[str | Path], study: Study
                ) -> tuple[pd.DataFrame, pd.DataFrame, Quarantine]:  # fmt: skip
        (path,) = files
        return records(path, read_species(study.species))

    def record_chunks(self, files: Sequence[str | Path], study: Study, rows: int
                      ) -> Iterator[tuple[pd.DataFrame, Quarantine]]:  # fmt: skip
        """The download read ``rows`` records at a time (:func:`counted_chunks`)."""
        (path,) = files
        return counted_chunks(path, read_species(study.species), rows)


register(GBIF())
