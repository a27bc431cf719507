"""World Bank World Development Indicators: land, agricultural land use and forest, per
country and year, rasterised onto the grid by area fractions (``bfm.sources.countries``).

Indicators (``INDICATORS``): AG.LND.TOTL.K2 (land area, km2), AG.LND.AGRI.ZS, AG.LND.ARBL.ZS,
AG.LND.CROP.ZS, AG.LND.FRST.ZS (% of land area) and AG.LND.IRIG.AG.ZS (% of agricultural
land), for the modalities ``land``, ``agriculture`` and ``forest``.

**Raw layout**: one file per indicator for the whole window, ``<CODE>.json`` (e.g.
``AG.LND.FRST.ZS.json``): the API v2 answer to
``GET <api>/country/all/indicator/<CODE>?format=json&date=<Y0>:<Y1>&per_page=<n>&page=<k>``
with every page joined into one envelope ``[meta, rows]`` (meta says page 1 of 1, as one page
of ``per_page`` >= total would). Each row: ``indicator.id``, ``country.id`` (ISO2),
``countryiso3code``, ``date`` (a year, as a string), ``value`` (a number or null). ``country/
all`` mixes aggregates (EUU, WLD, regions, income groups) into the countries; ``open`` keeps
the countries of the boundary file only. The API reports an error as the one-element array
``[{"message": [{"id", "key", "value"}]}]`` (with HTTP 200): it becomes an error naming the
indicator. ``sample`` writes the same envelope: deterministic values for the boundary
countries the World Bank reports, some nulls, and five aggregates.

**File mode** (``path``: a folder): per indicator ``<CODE>.json`` as above, or the bulk CSV
download ``API_<CODE>_DS2_en_csv_v2_*.zip`` (or the ``.csv`` in it): a few preamble lines
("Data Source", "Last Updated Date"), then ``"Country Name","Country Code","Indicator Name",
"Indicator Code","1960",...`` wide by year.

**Tiles**: each year's country values by area fraction, then onto the tile's times by the
yearly rule (``tiling.yearly_at``: the value of the year the step falls in; missing where the
source has none; never carried forward).

Options (``sources.worldbank.options``):

- ``boundaries``: country GeoJSON (default ``resources/countries/countries.geojson``);
- ``codes``: ISO3/ISO2/M49 table (default ``resources/countries/codes.csv``; the sample's
  ISO2 ``country.id``);
- ``api``: API base URL (default ``https://api.worldbank.org/v2``);
- ``per_page``: rows per page of a download (default 1000).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bfm.contracts.catalogue import Modality
from bfm.fileio import atomic_path
from bfm.sources import countries, manifest
from bfm.sources.base import Source, Study, register
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.httpjson import fetch_json, scratch_dir
from bfm.sources.worldbank_formats import INDICATORS, NAMES, envelope, read, sample_body

if TYPE_CHECKING:
    import xarray as xr

API = "https://api.worldbank.org/v2"
OPTIONS = {"boundaries": countries.BOUNDARIES, "codes": countries.CODES, "api": API,
           "per_page": 1000}  # fmt: skip
SERVICE = Service("worldbank")
LICENCE = "CC BY 4.0"
CITATION = "World Bank, World Development Indicators (WDI), https://data.worldbank.org"


def options(study: Study) -> dict[str, Any]:
    """The source's options with defaults; an unknown key is an error."""
    return study.options_with("worldbank", OPTIONS)


def parse_name(name: str) -> str:
    """``AG.LND.FRST.ZS.json`` -> ``AG.LND.FRST.ZS``."""
    code = name.removesuffix(".json")
    if not name.endswith(".json") or code not in NAMES:
        raise ValueError(f"worldbank: raw file {name!r} is not <CODE>.json with CODE one of "
                         f"{sorted(NAMES)}")  # fmt: skip
    return code


def request(code: str, years: Sequence[int], per_page: int) -> dict[str, Any]:
    """The query of a download (the manifest records it; ``page`` runs 1..meta.pages)."""
    return {"indicator": code, "country": "all", "format": "json",
            "date": f"{min(years)}:{max(years)}", "per_page": int(per_page)}  # fmt: skip


def write(path: Path, body: list) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    return path


def sample(path: str | Path, code: str, boundaries: str | Path, codes_table: str | Path,
           years: Sequence[int], seed: int = 0, per_page: int = 1000) -> Path:  # fmt: skip
    """Write a synthetic download of ``code`` (the API v2 envelope) and its manifest (whose
    request is what a download of it with ``per_page`` sends)."""
    path = write(Path(path), sample_body(code, boundaries, codes_table, years, seed))
    manifest.write_manifest(path, source="worldbank", request=request(code, years, per_page),
                            url=f"sample:worldbank?seed={seed}", licence=LICENCE,
                            citation=CITATION)  # fmt: skip
    return path


# --- download --------------------------------------------------------------------------------
def download(path: str | Path, code: str, years: Sequence[int], client: Client,
             api: str = API, per_page: int = 1000) -> Path:  # fmt: skip
    """Fetch every page of ``code`` for ``years``, join them, write the file and manifest."""
    path = Path(path)
    unit = f"worldbank {path.name}"
    url = f"{api.rstrip('/')}/country/all/indicator/{code}"
    query = request(code, years, per_page)
    params = {k: query[k] for k in ("format", "date", "per_page")}
    scratch = scratch_dir(path)
    first: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    page, pages = 1, 1
    while page <= pages:
        body = fetch_json(client, url, {**params, "page": page}, f"{unit} page {page}", scratch)
        try:
            meta, got = envelope(body, code, f"{unit} page {page}")
        except ValueError as err:
            shutil.rmtree(scratch, ignore_errors=True)  # never reuse an error answer
            raise DownloadError(str(err)) from err
        first = first or meta
        if meta.get("total") != first.get("total"):
            shutil.rmtree(scratch, ignore_errors=True)
            raise DownloadError(
                f"{unit}: page {page} says {meta.get('total')} rows, page 1 "
                f"said {first.get('total')}: the data changed; run again"
            )
        pages = int(meta.get("pages") or 0)
        rows += got
        page += 1
    if len(rows) != int(first.get("total") or 0):
        raise DownloadError(f"{unit}: {len(rows)} rows over {pages} page(s), meta.total says "
                            f"{first.get('total')}")  # fmt: skip
    meta = {**first, "page": 1, "pages": 1, "per_page": len(rows), "total": len(rows)}
    write(path, [meta, rows])
    shutil.rmtree(scratch, ignore_errors=True)
    manifest.write_manifest(path, source="worldbank", request=query, url=url, licence=LICENCE,
                            citation=CITATION)  # fmt: skip
    return path


# --- the source ------------------------------------------------------------------------------
def table(files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
    """The indicators of ``modality`` as a Dataset (country, year) over the window's years."""
    import xarray as xr

    found = countries.load(options(study)["boundaries"])
    years = study.years()
    by_code = {_code_of(Path(f)): Path(f) for f in files}
    data_vars, updated = {}, {}
    for var in modality.variables:
        code = INDICATORS[var.name]
        if code not in by_code:
            raise ValueError(f"worldbank: no file of indicator {code} among {list(files)}")
        rows, updated[code] = read(by_code[code], code)
        rows = rows[rows["iso3"].isin(found.codes) & rows["year"].isin(years)]
        dup = rows.duplicated(["iso3", "year"])
        if dup.any():
            first = rows[dup].iloc[0]
            raise ValueError(f"{by_code[code]}: {first['iso3']} {first['year']} appears twice")
        wide = rows.pivot(index="iso3", columns="year", values="value")
        wide = wide.reindex(index=list(found.codes), columns=years)
        data_vars[var.name] = (("country", "year"), wide.to_numpy(np.float64))
    ds = xr.Dataset(data_vars, coords={"country": list(found.codes), "year": years})
    ds.attrs["lastupdated"] = json.dumps(updated)
    ds.encoding["source"] = ", ".join(str(by_code[INDICATORS[v]]) for v in modality.variable_names)
    return ds


def _code_of(path: Path) -> str:
    for code in NAMES:
        if path.name in (f"{code}.json",) or path.name.startswith(f"API_{code}_"):
            return code
    raise ValueError(f"{path}: not <CODE>.json or API_<CODE>_DS2_*.zip/.csv of an indicator "
                     f"in {sorted(NAMES)}")  # fmt: skip


class WorldBank(Source):
    """World Bank WDI: raw files ``<CODE>.json``, one per indicator for the whole window."""

    name = "worldbank"
    licence = LICENCE
    citation = CITATION
    service = "worldbank"

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        return [f"{INDICATORS[v]}.json" for v in modality.variable_names]

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        # Country values: the grid does not change a raw file; the window's years do.
        years = study.years()
        return {"source": dict(study.settings(self.name)), "years": [years[0], years[-1]]}

    def tile_inputs(self, modality: Modality, study: Study) -> list[str]:
        o = options(study)
        return [str(countries.resource(o["boundaries"])), str(countries.resource(o["codes"]))]

    def user_file(self, path: str, name: str) -> str:
        folder, code = Path(path), parse_name(name)
        if (folder / name).exists():
            return str(folder / name)
        bulk = sorted(folder.glob(f"API_{code}_DS2*.zip")) or sorted(
            folder.glob(f"API_{code}_DS2*.csv")
        )
        return str(bulk[0]) if len(bulk) == 1 else str(folder / name)

    def sample(self, name: str, out: Path, study: Study) -> Path:
        opts, seed = options(study), int(study.settings(self.name).get("seed", 0))
        return sample(out, parse_name(name), opts["boundaries"], opts["codes"],
                      study.years(), seed, int(opts["per_page"]))  # fmt: skip

    def download(self, name: str, out: Path, study: Study) -> Path:
        opts = options(study)
        return download(out, parse_name(name), study.years(), Client(SERVICE),
                        str(opts["api"]), int(opts["per_page"]))  # fmt: skip

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        return table(files, modality, study)

    def to_tile(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        codes = [INDICATORS[v] for v in modality.variable_names]
        updated = json.loads(native.attrs.get("lastupdated", "{}"))
        stamp = ", ".join(f"{c} last updated {updated.get(c) or 'n.d.'}" for c in codes)
        attrs = {
            "source": f"World Bank World Development Indicators ({stamp})",
            "licence": LICENCE,
            "citation": f"{CITATION}; indicators {', '.join(codes)}",
        }
        return countries.country_tile(native, modality, study, period,
                                      options(study)["boundaries"], attrs, prov)  # fmt: skip


register(WorldBank())
