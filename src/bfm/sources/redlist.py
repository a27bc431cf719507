"""Red List Index: the national RLI of SDG indicator 15.5.1 (UN SDG series ER_RSK_LST),
rasterised by area fraction (``bfm.sources.countries``), and the RLI of the study's species.

**rli**: ``GET <sdg_api>/Series/Data?seriesCode=ER_RSK_LST&areaCode=<M49>...&timePeriod=<Y>...
&page=<k>&pageSize=<n>`` (one ``areaCode`` per boundary country with an M49 code in
``codes.csv``, one ``timePeriod`` per year of the window) answers pages ``{"size",
"totalElements", "totalPages", "pageNumber", "attributes", "dimensions", "data": [...]}``;
each row has ``geoAreaCode`` (M49, a string), ``timePeriodStart`` (a year) and ``value``
(a string). Regional rows are dropped (their codes are no country's); where an area and year
has several rows, the ``Reporting Type`` G (global monitoring) row wins.

**rli_species**: Butchart et al. (2007, PLoS ONE 2:e140): RLI = 1 - sum(W) / (5 N) over the N
configured species with a category, weights LC 0, NT 1, VU 2, EN 3, CR 4, CR(PE), CR(PEW), EW
and EX 5 (CR(PE) counts as extinct, as in the IUCN's RLI guidance); DD and NE, and species
without a category, are left out; no species left: missing. Old codes LR/lc -> LC, LR/nt and
LR/cd -> NT. The categories are the current ones, so the index is the same every year (no
back-casting over assessment histories); it is a study-level index, so the tile holds the
same value on every cell some boundary country covers (land), and is missing at sea.
Categories come from, in order: the option ``categories`` (a CSV with ``gbif_key`` and
``red_list_category``); that column in the species list; else the raw file ``iucn.json``.

**Raw layout**: ``rli.json``, every page of the SDG answer joined into one object (page 1 of
1); ``iucn.json`` (only where the categories come from IUCN): ``{"source": ..., "scope": ...,
"species": [{"gbif_key", "scientific_name", "status", "response"}]}``, ``response`` being the
IUCN Red List API v4 answer to ``GET <iucn_api>/taxa/scientific_name?genus_name=..&
species_name=..`` (``Authorization: <token>``, the token from the environment variable
``IUCN_API_TOKEN``; 401: the token is refused, the download fails; 404: no such taxon,
recorded as status 404, no category). The species' category is that of the latest assessment
whose scope is the option ``scope``. ``sample`` writes both files: deterministic values in
the same formats. IUCN asks for ~2 s between calls (``IUCN_PAUSE``).

**File mode** (``path``: a folder or the RLI file): ``rli.json`` as above, or a CSV, either the
UN SDG export (columns ``GeoAreaCode``, ``TimePeriod``, ``Value``; ``SeriesCode`` and
``Reporting Type`` used where present) or Our World in Data's (``Code`` ISO3, ``Year`` and a
column whose name holds ``ER_RSK_LST``); ``iucn.json`` beside it when needed.

Options (``sources.redlist.options``): ``boundaries``, ``codes`` (as for worldbank),
``categories`` (CSV, default none), ``scope`` (IUCN assessment scope, default ``Global``),
``sdg_api`` (default ``https://unstats.un.org/sdgapi/v1/sdg``), ``iucn_api`` (default
``https://api.iucnredlist.org/api/v4``), ``page_size`` (UN SDG rows per page, default 500).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bfm.contracts.catalogue import Modality
from bfm.fileio import atomic_path
from bfm.sources import countries, gbif, manifest, redlist_formats
from bfm.sources.base import Source, Study, register
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.httpjson import fetch_json, scratch_dir
from bfm.sources.redlist_formats import SERIES, WEIGHTS, category

if TYPE_CHECKING:
    import xarray as xr

SDG_API = "https://unstats.un.org/sdgapi/v1/sdg"
IUCN_API = "https://api.iucnredlist.org/api/v4"
OPTIONS = {"boundaries": countries.BOUNDARIES, "codes": countries.CODES, "categories": None,
           "scope": "Global", "sdg_api": SDG_API, "iucn_api": IUCN_API,
           "page_size": 500}  # fmt: skip
SDG_SERVICE, IUCN_SERVICE = Service("unsdg"), Service("iucn")
TOKEN_ENV = "IUCN_API_TOKEN"
IUCN_PAUSE = 2.0  # seconds between IUCN calls (its terms)
RLI_FILE, IUCN_FILE = "rli.json", "iucn.json"
CATEGORY_COLUMN = "red_list_category"
LICENCE = ("UN SDG Global Database: free to use with attribution; IUCN Red List: "
           "non-commercial use with citation")  # fmt: skip
CITATION = ("IUCN and BirdLife International, Red List Index (SDG indicator 15.5.1, series "
            "ER_RSK_LST), UN SDG Global Database, https://unstats.un.org/sdgs/dataportal; "
            "IUCN, The IUCN Red List of Threatened Species, https://www.iucnredlist.org; "
            "Butchart et al. (2007) PLoS ONE 2:e140")  # fmt: skip


def options(study: Study) -> dict[str, Any]:
    """The source's options with defaults; an unknown key is an error."""
    return study.options_with("redlist", OPTIONS)


# --- categories and the index ----------------------------------------------------------------
def red_list_index(categories: Iterable[str | None]) -> float:
    """Butchart's RLI of a set of species' categories (NaN if none counts)."""
    weights = [WEIGHTS[c] for c in categories if c in WEIGHTS]
    if not weights:
        return float("nan")
    return 1.0 - sum(weights) / (5.0 * len(weights))


def categories_origin(study: Study) -> str:
    """Where the species' categories come from: ``option``, ``species list`` or ``iucn``."""
    if options(study)["categories"]:
        return "option"
    path = Path(study.species_list or study.species)  # the resolved list keeps its columns
    if not path.exists():
        return "iucn"  # the species list's own check reports it
    with open(path, newline="", encoding="utf-8") as f:
        columns = [c.strip() for c in next(csv.reader(f), [])]
    return "species list" if CATEGORY_COLUMN in columns else "iucn"


def table_categories(path: str | Path, keys: Sequence[int]) -> dict[int, str | None]:
    """``red_list_category`` per ``gbif_key`` of a CSV, for ``keys`` (None: not listed)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file of Red List categories")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("gbif_key", CATEGORY_COLUMN) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (need gbif_key, "
                         f"{CATEGORY_COLUMN})")  # fmt: skip
    got = {}
    for i, row in table.iterrows():
        key = str(row["gbif_key"]).strip()
        if not key.isdigit():
            raise ValueError(f"{path}: row {int(i) + 2}: gbif_key {key!r} is not an integer")
        got[int(key)] = category(row[CATEGORY_COLUMN], f"{path}: row {int(i) + 2}")
    return {k: got.get(k) for k in keys}


def species_categories(files: Sequence[str | Path], study: Study) -> tuple[dict, str]:
    """Each configured species' category and a description of where they came from."""
    species = gbif.read_species(study.species)
    keys = [int(k) for k in species["gbif_key"]]
    origin = categories_origin(study)
    if origin == "option":
        path = options(study)["categories"]
        return table_categories(path, keys), f"categories from {path}"
    if origin == "species list":
        return table_categories(study.species, keys), f"categories from {study.species}"
    iucn = [Path(f) for f in files if Path(f).name == IUCN_FILE]
    if not iucn:
        raise ValueError(f"redlist: no {IUCN_FILE} among {list(files)} (the categories come "
                         "from IUCN: neither the option 'categories' nor the species list's "
                         f"column {CATEGORY_COLUMN!r} gives them)")  # fmt: skip
    got = redlist_formats.read_iucn(iucn[0])
    return {k: got.get(k) for k in keys}, f"IUCN Red List API v4 ({iucn[0].name})"


# --- downloads -------------------------------------------------------------------------------
def m49_codes(boundaries: str | Path, codes_table: str | Path) -> dict[str, str]:
    """M49 code -> ISO3 for the boundary countries that have one."""
    found = set(countries.load(boundaries).codes)
    table = countries.read_codes(codes_table)
    return {m: c for c, m in zip(table["iso3"], table["m49"], strict=True) if m and c in found}


def sdg_request(m49: Iterable[str], years: Sequence[int], page_size: int) -> dict[str, Any]:
    return {"seriesCode": SERIES, "areaCode": sorted(m49, key=int),
            "timePeriod": [str(y) for y in years], "pageSize": int(page_size)}  # fmt: skip


def download_rli(path: str | Path, request: Mapping[str, Any], client: Client,
                 api: str = SDG_API) -> Path:  # fmt: skip
    """Fetch every page of the SDG series, join them, write the file and its manifest."""
    path = Path(path)
    unit, url, scratch = f"redlist {path.name}", f"{api.rstrip('/')}/Series/Data", scratch_dir(path)
    first: dict[str, Any] = {}
    rows: list[Any] = []
    page, pages = 1, 1
    while page <= pages:
        body = fetch_json(client, url, {**request, "page": page}, f"{unit} page {page}", scratch)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            shutil.rmtree(scratch, ignore_errors=True)  # never reuse a bad answer
            raise DownloadError(f"{unit} page {page}: not a UN SDG Series/Data answer "
                                "(no 'data' list)")  # fmt: skip
        first = first or body
        if body.get("totalElements") != first.get("totalElements"):
            shutil.rmtree(scratch, ignore_errors=True)
            raise DownloadError(
                f"{unit}: page {page} says {body.get('totalElements')} rows, "
                f"page 1 said {first.get('totalElements')}: run again"
            )
        pages = int(body.get("totalPages") or 0)
        rows += body["data"]
        page += 1
    if len(rows) != int(first.get("totalElements") or 0):
        raise DownloadError(f"{unit}: {len(rows)} rows over {pages} page(s), totalElements "
                            f"says {first.get('totalElements')}")  # fmt: skip
    joined = {**first, "size": len(rows), "totalPages": 1, "pageNumber": 1, "data": rows}
    _write_json(path, joined)
    shutil.rmtree(scratch, ignore_errors=True)
    manifest.write_manifest(path, source="redlist", request=dict(request), url=url,
                            licence=LICENCE, citation=CITATION)  # fmt: skip
    return path


def download_iucn(path: str | Path, species: pd.DataFrame, client: Client,
                  api: str = IUCN_API, scope: str = "Global") -> Path:  # fmt: skip
    """Ask IUCN for each species (a Client carrying the Authorization header); write the
    responses and the manifest."""
    path = Path(path)
    unit, url = f"redlist {path.name}", f"{api.rstrip('/')}/taxa/scientific_name"
    scratch = scratch_dir(path)
    entries = []
    for i, (key, name) in enumerate(zip(species["gbif_key"], species["scientific_name"],
                                        strict=True)):  # fmt: skip
        if i:
            client.sleep(IUCN_PAUSE)
        parts = str(name).split()
        entry: dict[str, Any] = {"gbif_key": int(key), "scientific_name": str(name)}
        if len(parts) < 2:
            entries.append({**entry, "status": "not a binomial", "response": None})
            continue
        params = {"genus_name": parts[0], "species_name": parts[1]}
        try:
            body = fetch_json(client, url, params, f"{unit} {name}", scratch)
            entries.append({**entry, "status": 200, "response": body})
        except DownloadError as err:
            if "HTTP 404 " in str(err):
                entries.append({**entry, "status": 404, "response": None})
            elif "HTTP 401 " in str(err):
                raise DownloadError(f"{unit}: the IUCN Red List API refused the token in "
                                    f"{TOKEN_ENV} (HTTP 401)") from None  # fmt: skip
            else:
                raise
    _write_json(path, {"source": "IUCN Red List API v4 /taxa/scientific_name", "scope": scope,
                       "species": entries})  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)
    request = {"endpoint": "taxa/scientific_name", "scope": scope,
               "species": [str(n) for n in species["scientific_name"]]}  # fmt: skip
    manifest.write_manifest(path, source="redlist", request=request, url=url, licence=LICENCE,
                            citation=CITATION)  # fmt: skip
    return path


def iucn_client(service: Service = IUCN_SERVICE, **kwargs: Any) -> Client:
    """A Client sending the token of ``IUCN_API_TOKEN`` (missing: a clear error)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise DownloadError(f"redlist {IUCN_FILE}: set the environment variable {TOKEN_ENV} "
                            "to your IUCN Red List API token (https://api.iucnredlist.org/"
                            "users/sign_up)")  # fmt: skip
    return Client(service, headers={"Authorization": token}, **kwargs)


def _write_json(path: Path, body: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, separators=(",", ":")) + "\n")


# --- the source ------------------------------------------------------------------------------
def table(files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
    """rli (country, year) and rli_species (year,) over the window's years."""
    import xarray as xr

    opts = options(study)
    found = countries.load(opts["boundaries"])
    years = study.years()
    rli_files = [Path(f) for f in files if Path(f).name != IUCN_FILE]
    if len(rli_files) != 1:
        raise ValueError(f"redlist: expected one RLI file among {list(files)}")
    m49 = m49_codes(opts["boundaries"], opts["codes"])
    rows = redlist_formats.read_rli(rli_files[0], m49)
    rows = rows[rows["iso3"].isin(found.codes) & rows["year"].isin(years)]
    wide = rows.pivot(index="iso3", columns="year", values="value")
    wide = wide.reindex(index=list(found.codes), columns=years)
    cats, origin = species_categories(files, study)
    index = red_list_index(cats.values())
    counted = sum(c in WEIGHTS for c in cats.values())
    ds = xr.Dataset(
        {"rli": (("country", "year"), wide.to_numpy(np.float64)),
         "rli_species": (("year",), np.full(len(years), index))},
        coords={"country": list(found.codes), "year": years},
        attrs={"species_categories": json.dumps({str(k): v for k, v in cats.items()}),
               "species_origin": f"{origin}: {counted} of {len(cats)} species counted"},
    )  # fmt: skip
    ds.encoding["source"] = ", ".join(str(f) for f in files)
    return ds


class RedList(Source):
    """Red List Index: raw ``rli.json`` (UN SDG) and, where the categories come from IUCN,
    ``iucn.json``."""

    name = "redlist"
    licence = LICENCE
    citation = CITATION
    service = "unsdg"  # iucn.json's requests go to api.iucnredlist.org in the same job

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        return [RLI_FILE] + ([IUCN_FILE] if categories_origin(study) == "iucn" else [])

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        out: dict[str, Any] = {"source": dict(study.settings(self.name))}
        if name == IUCN_FILE:
            return {**out, "species": study.species}
        years = study.years()
        return {**out, "years": [years[0], years[-1]]}

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        return [study.species] if name == IUCN_FILE else []

    def tile_inputs(self, modality: Modality, study: Study) -> list[str]:
        o = options(study)
        files = [str(countries.resource(o["boundaries"])), str(countries.resource(o["codes"])),
                 study.species]  # fmt: skip
        return files + ([str(o["categories"])] if o["categories"] else [])

    def user_file(self, path: str, name: str) -> str:
        given = Path(path)
        is_file = given.suffix in (".json", ".csv")
        folder = given.parent if is_file else given
        if name == IUCN_FILE:
            return str(folder / IUCN_FILE)
        if is_file:
            return str(given)
        csv = folder / "rli.csv"
        return str(csv if csv.exists() and not (folder / RLI_FILE).exists() else folder / name)

    def sample(self, name: str, out: Path, study: Study) -> Path:
        opts, seed = options(study), int(study.settings(self.name).get("seed", 0))
        if name == RLI_FILE:
            m49 = m49_codes(opts["boundaries"], opts["codes"])
            body: Any = redlist_formats.sample_rli(m49, study.years(), seed)
            request = sdg_request(m49, study.years(), int(opts["page_size"]))
        elif name == IUCN_FILE:
            species = gbif.read_species(study.species)
            body = redlist_formats.sample_iucn(species, seed, str(opts["scope"]))
            request = {"endpoint": "taxa/scientific_name", "scope": opts["scope"],
                       "species": [str(n) for n in species["scientific_name"]]}  # fmt: skip
        else:
            raise ValueError(f"redlist: raw file {name!r} is not {RLI_FILE} or {IUCN_FILE}")
        _write_json(out, body)
        manifest.write_manifest(out, source="redlist", request=request,
                                url=f"sample:redlist?seed={seed}", licence=LICENCE,
                                citation=CITATION)  # fmt: skip
        return out

    def download(self, name: str, out: Path, study: Study) -> Path:
        opts = options(study)
        if name == RLI_FILE:
            m49 = m49_codes(opts["boundaries"], opts["codes"])
            request = sdg_request(m49, study.years(), int(opts["page_size"]))
            return download_rli(out, request, Client(SDG_SERVICE), str(opts["sdg_api"]))
        if name == IUCN_FILE:
            return download_iucn(out, gbif.read_species(study.species), iucn_client(),
                                 str(opts["iucn_api"]), str(opts["scope"]))  # fmt: skip
        raise ValueError(f"redlist: raw file {name!r} is not {RLI_FILE} or {IUCN_FILE}")

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        return table(files, modality, study)

    def to_tile(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        attrs = {"source": f"UN SDG Global Database, series {SERIES} (national Red List "
                 f"Index); rli_species: {native.attrs.get('species_origin', '')}",
                 "licence": LICENCE, "citation": CITATION}  # fmt: skip
        return countries.country_tile(native, modality, study, period,
                                      options(study)["boundaries"], attrs, prov)  # fmt: skip


register(RedList())
