"""The World Bank source's native formats: the API v2 envelope, the bulk CSV download, and
deterministic samples of the envelope (``bfm.sources.worldbank`` documents the layouts)."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.contracts.grid import Grid
from bfm.sources import countries

INDICATORS = {
    "land_area": "AG.LND.TOTL.K2",
    "agricultural_land": "AG.LND.AGRI.ZS",
    "irrigated_land": "AG.LND.IRIG.AG.ZS",
    "arable_land": "AG.LND.ARBL.ZS",
    "permanent_cropland": "AG.LND.CROP.ZS",
    "forest_area": "AG.LND.FRST.ZS",
}
NAMES = {
    "AG.LND.TOTL.K2": "Land area (sq. km)",
    "AG.LND.AGRI.ZS": "Agricultural land (% of land area)",
    "AG.LND.IRIG.AG.ZS": "Agricultural irrigated land (% of total agricultural land)",
    "AG.LND.ARBL.ZS": "Arable land (% of land area)",
    "AG.LND.CROP.ZS": "Permanent cropland (% of land area)",
    "AG.LND.FRST.ZS": "Forest area (% of land area)",
}
# Aggregates that `country/all` mixes in (iso3, id, name), a few of the ~50.
AGGREGATES = (("AFE", "ZH", "Africa Eastern and Southern"), ("ECS", "Z7", "Europe & Central "
              "Asia"), ("EUU", "EU", "European Union"), ("HIC", "XD", "High income"),
              ("WLD", "1W", "World"))  # fmt: skip
NOT_REPORTED = frozenset({"ATA", "ATF", "ESH", "FLK", "TWN"})  # no WDI rows for these
LAST_UPDATED = "2025-07-01"  # the samples' meta.lastupdated


# --- the API v2 envelope ---------------------------------------------------------------------
def envelope(body: Any, code: str, where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, rows) of an API v2 answer; the one-element error array raises naming ``code``."""
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        messages = body[0].get("message") or [{}]
        text = "; ".join(f"{m.get('id', '?')} {m.get('key', '')}: {m.get('value', '')}"
                         for m in messages)  # fmt: skip
        raise ValueError(f"{where}: the World Bank API answered with an error for indicator "
                         f"{code}: {text}")  # fmt: skip
    if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], dict)):
        raise ValueError(f"{where}: not a World Bank API v2 answer [meta, rows] for {code}")
    rows = body[1] or []  # no data: [meta, null]
    if not isinstance(rows, list):
        raise ValueError(f"{where}: rows of indicator {code} are not a list")
    return body[0], rows


def api_table(body: Any, code: str, where: str) -> tuple[pd.DataFrame, str]:
    """Rows of an API v2 answer as (iso3, year, value) and meta.lastupdated."""
    meta, rows = envelope(body, code, where)
    records = []
    for i, row in enumerate(rows):
        got = (row.get("indicator") or {}).get("id")
        if got != code:
            raise ValueError(f"{where}: row {i}: indicator {got!r}, expected {code}")
        year, value = str(row.get("date", "")), row.get("value")
        if not year.isdigit():
            raise ValueError(f"{where}: row {i}: date {year!r} is not a year")
        if value is not None and not isinstance(value, int | float):
            raise ValueError(f"{where}: row {i}: value {value!r} is not a number or null")
        records.append((str(row.get("countryiso3code") or ""), int(year),
                        np.nan if value is None else float(value)))  # fmt: skip
    table = pd.DataFrame(records, columns=["iso3", "year", "value"])
    return table, str(meta.get("lastupdated", ""))


# --- the bulk CSV ----------------------------------------------------------------------------
def bulk_table(text: str, code: str, where: str) -> tuple[pd.DataFrame, str]:
    """The bulk CSV (preamble, then wide by year) as (iso3, year, value) and its update date."""
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith('"Country Name"')), None)
    if head is None:
        raise ValueError(f'{where}: no header line starting with "Country Name"')
    updated = next((line.split(",")[1].strip('"') for line in lines[:head]
                    if line.startswith('"Last Updated Date"')), "")  # fmt: skip
    table = pd.read_csv(io.StringIO("\n".join(lines[head:])), dtype=str, keep_default_na=False)
    missing = [c for c in ("Country Code", "Indicator Code") if c not in table.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}")
    other = set(table["Indicator Code"]) - {code}
    if other:
        raise ValueError(f"{where}: indicator(s) {sorted(other)}, expected {code}")
    years = [c for c in table.columns if c.strip().isdigit()]
    long = table.melt(id_vars=["Country Code"], value_vars=years, var_name="year")
    values = pd.to_numeric(long["value"].str.strip(), errors="coerce")
    out = pd.DataFrame({"iso3": long["Country Code"], "year": long["year"].astype(int),
                        "value": values.astype(np.float64)})  # fmt: skip
    return out, updated


def read(path: str | Path, code: str) -> tuple[pd.DataFrame, str]:
    """One indicator's file (API JSON, bulk zip or bulk CSV): (iso3, year, value), updated."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such World Bank file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if Path(m).name.startswith(f"API_{code}_")]
            if len(members) != 1:
                raise ValueError(f"{path}: expected one API_{code}_*.csv inside, found {members}")
            text = zf.read(members[0]).decode("utf-8-sig")
        return bulk_table(text, code, f"{path}:{members[0]}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".csv":
        return bulk_table(text, code, str(path))
    try:
        body = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return api_table(body, code, str(path))


# --- sample ----------------------------------------------------------------------------------
def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _profile(seed: int, iso3: str, area_km2: float) -> dict[str, tuple[float, float]]:
    """A country's (level in the first year, change per year) of every indicator."""
    rng = _rng(seed, "profile", iso3)
    agri = rng.uniform(5.0, 75.0)
    return {
        "AG.LND.TOTL.K2": (round(area_km2 * rng.uniform(0.95, 1.0), -1), 0.0),
        "AG.LND.AGRI.ZS": (agri, rng.uniform(-0.3, 0.1)),
        "AG.LND.ARBL.ZS": (agri * rng.uniform(0.1, 0.8), rng.uniform(-0.2, 0.05)),
        "AG.LND.CROP.ZS": (agri * rng.uniform(0.0, 0.12), rng.uniform(-0.02, 0.02)),
        "AG.LND.IRIG.AG.ZS": (rng.uniform(0.0, 25.0), rng.uniform(-0.1, 0.3)),
        "AG.LND.FRST.ZS": (rng.uniform(0.5, min(70.0, 99.0 - agri)), rng.uniform(-0.2, 0.2)),
    }


def _series(code: str, seed: int, iso3: str, area_km2: float, years: Sequence[int]) -> list:
    level, change = _profile(seed, iso3, area_km2)[code]
    rng = _rng(seed, code, iso3)
    if code == "AG.LND.TOTL.K2":
        values = np.full(len(years), level)
    else:
        t = np.arange(len(years))
        noise = rng.normal(0.0, 0.15, len(years))
        values = np.clip(level + change * t + noise, 0.0, 100.0).round(3)
    sparse = code == "AG.LND.IRIG.AG.ZS"  # few countries report irrigation every year
    if sparse and rng.random() < 0.35:
        return [None] * len(years)
    null = rng.random(len(years)) < (0.3 if sparse else 0.03)
    return [None if n else float(v) for v, n in zip(values, null, strict=True)]


def sample_body(code: str, boundaries: str | Path, codes_table: str | Path,
                years: Sequence[int], seed: int) -> list:  # fmt: skip
    """The API v2 envelope of a download of ``code`` for the boundary countries (pure)."""
    found = countries.load(boundaries)
    iso2 = dict(zip(*(countries.read_codes(codes_table)[c] for c in ("iso3", "iso2")),
                    strict=True))  # fmt: skip
    world = Grid(-89.5, 89.5, -179.5, 179.5, 0.5)
    areas = countries.fractions(world, boundaries).country_areas()
    reported = sorted(
        ((n, c) for c, n in zip(found.codes, found.names, strict=True) if c not in NOT_REPORTED),
    )
    by_country: dict[str, list] = {c: _series(code, seed, c, areas[c], years) for _, c in reported}
    rows = []
    places = [(a, i, n) for a, i, n in AGGREGATES] + [(c, iso2.get(c, c[:2]), n)
                                                     for n, c in reported]  # fmt: skip
    for iso3, cid, name in places:
        series = by_country.get(iso3) or _aggregate(by_country, iso3, years)
        for year, value in sorted(zip(years, series, strict=True), reverse=True):
            rows.append({"indicator": {"id": code, "value": NAMES[code]},
                         "country": {"id": cid, "value": name}, "countryiso3code": iso3,
                         "date": str(year), "value": value, "unit": "", "obs_status": "",
                         "decimal": 0 if code == "AG.LND.TOTL.K2" else 1})  # fmt: skip
    meta = {
        "page": 1,
        "pages": 1,
        "per_page": len(rows),
        "total": len(rows),
        "sourceid": "2",
        "sourcename": "World Development Indicators",
        "lastupdated": LAST_UPDATED,
    }
    return [meta, rows]


def _aggregate(by_country: Mapping[str, list], iso3: str, years: Sequence[int]) -> list:
    """An aggregate's made-up series: the mean of every 7th country (a region's stand-in)."""
    start = zlib.crc32(iso3.encode()) % 7
    members = [v for i, (_, v) in enumerate(sorted(by_country.items())) if i % 7 == start]
    out = []
    for k in range(len(years)):
        got = [m[k] for m in members if m[k] is not None]
        out.append(round(float(np.mean(got)), 3) if got else None)
    return out
