"""The Red List source's native formats: reading the UN SDG answer and CSV exports and the
IUCN v4 answers, and writing deterministic samples of both (``bfm.sources.redlist`` documents
the layouts)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SERIES = "ER_RSK_LST"
WEIGHTS = {"LC": 0, "NT": 1, "VU": 2, "EN": 3, "CR": 4, "CR(PE)": 5, "CR(PEW)": 5, "EW": 5,
           "EX": 5}  # fmt: skip
EXCLUDED = frozenset({"DD", "NE"})
LEGACY = {"LR/LC": "LC", "LR/NT": "NT", "LR/CD": "NT"}
REGIONS = (("1", "World"), ("150", "Europe"), ("419", "Latin America and the Caribbean"))
NOT_REPORTED = frozenset({"ATA", "ATF", "TWN"})  # the samples have no rows for these


def category(value: Any, where: str) -> str | None:
    """An IUCN category code, normalised (``"cr (pe)"`` -> ``CR(PE)``); None if blank."""
    text = "" if value is None else str(value).strip().upper().replace(" ", "")
    if not text or text == "NAN":
        return None
    text = LEGACY.get(text, text)
    if text not in WEIGHTS and text not in EXCLUDED:
        raise ValueError(f"{where}: {value!r} is not an IUCN Red List category "
                         f"({', '.join([*WEIGHTS, *sorted(EXCLUDED)])})")  # fmt: skip
    return text


# --- UN SDG ----------------------------------------------------------------------------------
def _by_area_year(rows: pd.DataFrame, where: str) -> pd.DataFrame:
    """One row per (area, year): the Reporting Type G row first, then file order."""
    rows = rows.assign(_g=(rows["type"] != "G").astype(int)).sort_values("_g", kind="stable")
    rows = rows.drop_duplicates(["area", "year"]).drop(columns=["_g", "type"])
    bad = rows["value"].notna() & ~rows["value"].between(-1e9, 1e9)
    if bad.any():
        raise ValueError(f"{where}: value {rows['value'][bad].iloc[0]!r} is not a number")
    return rows


def sdg_rows(body: Any, where: str) -> pd.DataFrame:
    """The rows of a Series/Data answer as (area M49, year, value, type)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError(f"{where}: not a UN SDG Series/Data answer (no 'data' list)")
    records = []
    for i, row in enumerate(body["data"]):
        if row.get("series", SERIES) != SERIES:
            raise ValueError(f"{where}: data[{i}]: series {row.get('series')!r}, need {SERIES}")
        try:
            year = int(float(row["timePeriodStart"]))
            area = str(int(str(row["geoAreaCode"])))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: data[{i}]: bad geoAreaCode/timePeriodStart "
                             f"({err!r})") from err  # fmt: skip
        value = pd.to_numeric(str(row.get("value", "")).strip() or "nan", errors="coerce")
        kind = (row.get("dimensions") or {}).get("Reporting Type", "G")
        records.append((area, year, float(value), kind))
    return pd.DataFrame(records, columns=["area", "year", "value", "type"])


def csv_rows(path: Path) -> tuple[pd.DataFrame, bool]:
    """A CSV export as (area, year, value, type); True where areas are ISO3 (OWID)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    owid = [c for c in table.columns if SERIES in c]
    if {"GeoAreaCode", "TimePeriod", "Value"} <= set(table.columns):
        if "SeriesCode" in table.columns:
            table = table[table["SeriesCode"] == SERIES]
        area = table["GeoAreaCode"].str.strip().map(lambda v: str(int(v)) if v.isdigit() else v)
        year, value = table["TimePeriod"], table["Value"]
        kind = table["Reporting Type"] if "Reporting Type" in table.columns else "G"
        iso3 = False
    elif {"Code", "Year"} <= set(table.columns) and len(owid) == 1:
        area, year, value, kind, iso3 = table["Code"], table["Year"], table[owid[0]], "G", True
    else:
        raise ValueError(
            f"{path}: neither the UN SDG CSV export (GeoAreaCode, TimePeriod, "
            f"Value) nor Our World in Data's (Code, Year, ...{SERIES}...)"
        )
    years = pd.to_numeric(year, errors="coerce")
    if years.isna().any():
        raise ValueError(f"{path}: year {year[years.isna()].iloc[0]!r} is not a number")
    out = pd.DataFrame(
        {
            "area": area,
            "year": years.astype(int),
            "value": pd.to_numeric(value, errors="coerce"),
            "type": kind,
        }
    )
    return out, iso3  # fmt: skip


def read_rli(path: str | Path, m49: Mapping[str, str]) -> pd.DataFrame:
    """An RLI file (API JSON or CSV export) as (iso3, year, value) of the countries in
    ``m49`` (M49 -> ISO3); other areas (regions) are dropped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Red List Index file")
    if path.suffix == ".csv":
        rows, iso3 = csv_rows(path)
    else:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        rows, iso3 = sdg_rows(body, str(path)), False
    rows = _by_area_year(rows, str(path))
    codes = rows["area"] if iso3 else rows["area"].map(dict(m49))
    wanted = set(m49.values())
    out = pd.DataFrame({"iso3": codes, "year": rows["year"], "value": rows["value"]})
    return out[out["iso3"].isin(wanted)].reset_index(drop=True)


def sample_rli(m49: Mapping[str, str], years: Sequence[int], seed: int) -> dict[str, Any]:
    """A Series/Data answer (one page) for the countries of ``m49`` and a few regions."""
    data = []
    areas = sorted(m49.items(), key=lambda kv: int(kv[0]))
    for area, iso3 in [*REGIONS, *areas]:
        if iso3 in NOT_REPORTED:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(f"rli {area}".encode())])
        start, fall = rng.uniform(0.72, 0.99), rng.uniform(0.0, 0.004)
        for k, year in enumerate(years):
            value = float(np.clip(start - fall * k + rng.normal(0, 0.001), 0.0, 1.0))
            data.append(_sdg_row(area, iso3, year, value))
    return {"size": len(data), "totalElements": len(data), "totalPages": 1, "pageNumber": 1,
            "attributes": [{"id": "Nature", "codes": [{"code": "G", "description":
                            "Global monitoring data"}]}, {"id": "Units", "codes":
                            [{"code": "INDEX", "description": "Index"}]}],
            "dimensions": [{"id": "Reporting Type", "codes": [{"code": "G",
                            "description": "Global"}]}], "data": data}  # fmt: skip


def _sdg_row(area: str, name: str, year: int, value: float) -> dict[str, Any]:
    return {"goal": ["15"], "target": ["15.5"], "indicator": ["15.5.1"], "series": SERIES,
            "seriesDescription": "Red List Index", "seriesCount": "1", "geoAreaCode": area,
            "geoAreaName": name, "timePeriodStart": float(year), "value": f"{value:.5f}",
            "valueType": "Float", "time_detail": None, "timeCoverage": None,
            "upperBound": f"{min(value + 0.01, 1.0):.5f}",
            "lowerBound": f"{max(value - 0.01, 0.0):.5f}", "basePeriod": None,
            "source": "IUCN and BirdLife International (sample)", "geoInfoUrl": None,
            "footnotes": [], "attributes": {"Nature": "G", "Units": "INDEX"},
            "dimensions": {"Reporting Type": "G"}}  # fmt: skip


# --- IUCN ------------------------------------------------------------------------------------
def iucn_category(response: Any, scope: str, where: str) -> str | None:
    """The category of the latest assessment of ``scope`` in a /taxa/scientific_name answer."""
    if response is None:
        return None
    if not isinstance(response, dict) or not isinstance(response.get("assessments"), list):
        raise ValueError(f"{where}: not an IUCN /taxa/scientific_name answer (no assessments)")
    found = []
    for a in response["assessments"]:
        scopes = [str((s.get("description") or {}).get("en", "")) for s in a.get("scopes", [])]
        if a.get("latest") and scope.lower() in (s.lower() for s in scopes):
            found.append((str(a.get("year_published", "")), a.get("red_list_category_code")))
    return category(max(found)[1], where) if found else None


def read_iucn(path: str | Path) -> dict[int, str | None]:
    """gbif_key -> category of an ``iucn.json``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such IUCN file")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(body, dict) or not isinstance(body.get("species"), list):
        raise ValueError(f"{path}: no 'species' list (see bfm.sources.redlist)")
    scope = str(body.get("scope", "Global"))
    return {int(e["gbif_key"]): iucn_category(e.get("response"), scope,
                                              f"{path}: {e.get('scientific_name')}")
            for e in body["species"]}  # fmt: skip


def sample_iucn(species: pd.DataFrame, seed: int, scope: str = "Global") -> dict[str, Any]:
    """An ``iucn.json`` of deterministic answers (one species in ten not found)."""
    entries = []
    codes = ("LC", "LC", "LC", "NT", "VU", "EN", "CR", "DD")
    for key, name in zip(species["gbif_key"], species["scientific_name"], strict=True):
        rng = np.random.default_rng([seed, int(key)])
        entry: dict[str, Any] = {"gbif_key": int(key), "scientific_name": str(name)}
        if rng.random() < 0.1:
            entries.append({**entry, "status": 404, "response": None})
            continue
        genus, _, epithet = str(name).partition(" ")
        sis = int(rng.integers(1_000, 200_000))
        latest, older = str(rng.choice(codes)), str(rng.choice(codes))
        assessments = [_assessment(sis, latest, 2023 - int(rng.integers(0, 6)), True, scope),
                       _assessment(sis, older, 2008, False, scope)]  # fmt: skip
        taxon = {"sis_id": sis, "scientific_name": str(name), "genus_name": genus,
                 "species_name": epithet, "species": True, "subpopulation": False,
                 "infrarank": False}  # fmt: skip
        entries.append(
            {**entry, "status": 200, "response": {"taxon": taxon, "assessments": assessments}}
        )
    return {"source": "IUCN Red List API v4 /taxa/scientific_name (sample)", "scope": scope,
            "species": entries}  # fmt: skip


def _assessment(sis: int, code: str, year: int, latest: bool, scope: str) -> dict[str, Any]:
    ident = sis * 10 + int(latest)
    return {"assessment_id": ident, "latest": latest, "year_published": str(year),
            "red_list_category_code": code,
            "url": f"https://www.iucnredlist.org/species/{sis}/{ident}",
            "scopes": [{"code": "1" if scope == "Global" else "2",
                        "description": {"en": scope}}]}  # fmt: skip
