"""iNaturalist research-grade observations and their photos, from the API v1.

**Search**: ``GET <api>/observations`` per species with ``taxon_name``, the grid's bbox
(``swlat/swlng/nelat/nelng``: the outer cell edges), ``d1/d2`` (observed-on dates),
``quality_grade=research``, ``photos=true``, ``geo=true``, ``captive=false``, ``per_page=200``,
``order_by=id&order=asc``. The answer is ``{"total_results", "page", "per_page", "results"}``.
The API serves no result past the 10,000th of a search (``page * per_page <= 10,000``), so a
harvest never pages: each next page asks ``id_above=<the last id of the page before>`` until
a page holds fewer than ``per_page`` results. Pages stream into a scratch folder
(``bfm.sources.httpjson``): 429 (honouring Retry-After), 5xx, resets and malformed JSON are
retried, and a rerun after an interruption reuses every page it has, so it sends only the
rest and writes the same file. The answer's ids must rise above ``id_above``, or the
download stops (a server ignoring the order would loop forever).

**Courtesy** (the API's terms): at most one request a second (``SERVICE.min_interval``), an
identifying ``User-Agent``, and at most ``DAILY_BUDGET`` requests per client: a download that
reaches it stops with an error saying how far it got; run it again later and it resumes.

**Raw file** ``observations.jsonl.gz``: gzip JSON Lines, one observation result per line as the
API returns it, sorted by id, each id once; the manifest records the query (no credentials:
the API needs none for reads), the number of observations and their licences.

**Photos** (``download_photos``): per study species the first ``per_species`` photos (by
observation id) whose own ``license_code`` is open (CC0 / CC BY*; null is all rights
reserved: skipped and counted), fetched in the ``size`` variant (``square`` in the URL
replaced), at most ``max_bytes`` each (by Content-Length, or counted while streaming), and
only when they are a whole JPEG or PNG. The zip holds ``<gbif_key>/<photo_id>.<ext>`` once per
species and ``index.csv`` (``INDEX_COLUMNS``); what was skipped is counted in
``<zip>.quarantine.json``.

**Records** (``records``): the occurrence contract's record and media tables. Position from
``geojson`` (else ``location`` "lat,lon"), uncertainty from ``public_positional_accuracy``
(which covers the obscuring of the public position) else ``positional_accuracy``, the time
from ``time_observed_at`` (with its UTC offset) else the day ``observed_on``; basis
HUMAN_OBSERVATION (LIVING_SPECIMEN when ``captive``); a null licence is
``all-rights-reserved``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import requests
from tqdm import tqdm

from bfm import __version__
from bfm.contracts import occurrence as contract
from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.fileio import atomic_path
from bfm.sources import inaturalist_formats as formats
from bfm.sources import manifest
from bfm.sources.base import Study, register
from bfm.sources.http import CHUNK, Client, DownloadError, Service, Sleep
from bfm.sources.httpjson import fetch_json, scratch_dir
from bfm.sources.inaturalist_formats import API, INDEX_COLUMNS, PER_PAGE, WINDOW, request_params
from bfm.sources.occurrence_base import OccurrenceSource, zip_media
from bfm.species_list import read_species

__all__ = ["API", "DAILY_BUDGET", "INDEX_COLUMNS", "PER_PAGE", "RAW_NAME", "SERVICE", "WINDOW",
           "download", "download_photos", "open_photos", "records", "request_params", "sample",
           "sample_photos"]  # fmt: skip

log = logging.getLogger(__name__)
SERVICE = Service("inaturalist", min_interval=1.0, backoff=5.0, max_wait=600.0)
USER_AGENT = f"bfm/{__version__} (Biodiversity Foundation Model data pipeline)"
DAILY_BUDGET = 10_000  # requests a day (the API's terms)
RAW_NAME = "observations.jsonl.gz"
PHOTOS_NAME = "photos.zip"


def make_client(service: Service = SERVICE, sleep: Sleep | None = None) -> Client:
    """A client of the API that identifies the project."""
    kwargs: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
    return Client(service, headers={"User-Agent": USER_AGENT}, **kwargs)


def _identify(client: Client) -> None:
    """Send the project's User-Agent unless the caller's client already sets its own."""
    if str(client.session.headers.get("User-Agent", "")).startswith("python-requests"):
        client.session.headers["User-Agent"] = USER_AGENT


def _within_budget(client: Client, budget: int, doing: str) -> None:
    if client.requests >= budget:
        raise DownloadError(f"inaturalist: the daily budget of {budget} requests is spent, "
                            f"stopped at {doing}; run it again tomorrow: what was fetched "
                            f"is kept and reused")  # fmt: skip


# --- observations ---------------------------------------------------------------------------
def _page(body: Any, unit: str, above: int, asked: int) -> tuple[list[dict[str, Any]], int]:
    """The results of one answer and its page size; ids must rise above ``above``."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise DownloadError(f"{unit}: not an observation search answer (no 'results' list): "
                            f"{str(body)[:200]}")  # fmt: skip
    results = body["results"]
    if not all(isinstance(r, dict) and isinstance(r.get("id"), int) for r in results):
        raise DownloadError(f"{unit}: a result without an integer 'id'")
    ids = [int(r["id"]) for r in results]
    if ids and (ids[0] <= above or any(b <= a for a, b in zip(ids, ids[1:], strict=False))):
        raise DownloadError(f"{unit}: ids {ids[0]}..{ids[-1]} do not rise above id_above="
                            f"{above} (the server ignored order_by=id&order=asc)")  # fmt: skip
    size = body.get("per_page")
    return results, int(size) if isinstance(size, int) and size > 0 else asked


def _harvest(client: Client, url: str, params: dict[str, Any], scratch: Path, budget: int,
             label: str) -> list[dict[str, Any]]:  # fmt: skip
    """Every result of one species' search, page by page with ``id_above``."""
    got: list[dict[str, Any]] = []
    above, pages = 0, 0
    bar = tqdm(desc=f"inaturalist {label}", unit="page", file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip
    with bar:
        while True:
            _within_budget(client, budget, f"{label} after {pages} page(s) ({len(got)} "
                           f"observations, id_above={above})")  # fmt: skip
            query = dict(params) if not pages else {**params, "id_above": above}
            unit = f"inaturalist {label} id_above={above}"
            body = fetch_json(client, url, query, unit, scratch)
            try:
                results, size = _page(body, unit, above, int(params["per_page"]))
            except DownloadError:
                shutil.rmtree(scratch, ignore_errors=True)  # never reuse a wrong answer
                raise
            if not pages and isinstance(body.get("total_results"), int):
                bar.total = -(-body["total_results"] // size)
            got += results
            pages += 1
            bar.update(1)
            if len(results) < size:
                return got
            above = results[-1]["id"]


def download(out: str | Path, species: pd.DataFrame, start: str, end: str, grid: Grid,
             client: Client | None = None, base_url: str = API, *, per_page: int = PER_PAGE,
             budget: int = DAILY_BUDGET) -> Path:  # fmt: skip
    """Harvest every species' observations into ``out`` (``observations.jsonl.gz``) and its
    manifest; resumable (see the module docstring)."""
    out = Path(out)
    client = client or make_client()
    _identify(client)
    url = f"{base_url.rstrip('/')}/observations"
    scratch = scratch_dir(out)
    found: dict[int, dict[str, Any]] = {}
    names = [formats.taxon_name(n) for n in species["scientific_name"]]
    for i, name in enumerate(names):
        params = request_params(name, start, end, grid, per_page=per_page)
        label = f"{name} ({i + 1}/{len(names)})"
        for obs in _harvest(client, url, params, scratch, budget, label):
            found.setdefault(obs["id"], obs)  # a name searched twice: each observation once
    observations = [found[k] for k in sorted(found)]
    formats.write_observations(out, observations)
    shutil.rmtree(scratch, ignore_errors=True)
    request = formats.manifest_request(species, start, end, grid, per_page)
    licence = formats.licence_summary(o.get("license_code") for o in observations)
    manifest.write_manifest(out, source="inaturalist", request=request, url=url,
                            licence=licence, citation=formats.CITATION)  # fmt: skip
    log.info("inaturalist: %d observations of %d species in %d requests", len(observations),
             len(names), client.requests)  # fmt: skip
    return out


# --- photos ---------------------------------------------------------------------------------
def fetch_capped(client: Client, url: str, unit: str, max_bytes: int) -> bytes | None:
    """The body of ``url``, or None when it is larger than ``max_bytes`` (announced or
    streamed); a body cut short is fetched again, per the service's retries."""
    s = client.service
    for attempt in range(s.retries + 1):
        response = client.request("GET", url, unit, stream=True)
        with response:
            length = response.headers.get("Content-Length")
            if length is not None and int(length) > max_bytes:
                return None
            data = bytearray()
            try:
                for chunk in response.iter_content(CHUNK):
                    data += chunk
                    if len(data) > max_bytes:
                        return None
            except requests.RequestException as err:
                why = f"body cut short ({type(err).__name__})"
            else:
                if length is None or len(data) == int(length):
                    return bytes(data)
                why = f"{len(data)} bytes instead of {length}"
        if attempt == s.retries:
            raise DownloadError(f"{s.name} {unit}: {why} from {url.split('?')[0]} "
                                f"{s.retries + 1} times")  # fmt: skip
        wait = min(s.max_wait, s.backoff * 2**attempt)
        log.warning("%s %s: %s; retry %d/%d in %.0f s", s.name, unit, why, attempt + 1,
                    s.retries, wait)  # fmt: skip
        client.sleep(wait)
    raise AssertionError("unreachable")


def species_of(observations: Path, species: pd.DataFrame | None) -> pd.DataFrame:
    """``species`` or, when None, the species (gbif_key, scientific_name) its manifest names."""
    if species is not None:
        return species
    try:
        taxa = manifest.read_manifest(observations)["request"]["species"]
    except (FileNotFoundError, KeyError, TypeError) as err:
        raise ValueError(f"{observations}: no manifest naming its species (request.species): "
                         f"pass the species list") from err  # fmt: skip
    return pd.DataFrame({"gbif_key": [int(t["gbif_key"]) for t in taxa],
                         "scientific_name": [str(t["taxon_name"]) for t in taxa]})  # fmt: skip


def download_photos(observations: str | Path, out_zip: str | Path, client: Client, *,
                    size: str = "medium", per_species: int = 5, max_bytes: int = 2_000_000,
                    species: pd.DataFrame | None = None,
                    budget: int = DAILY_BUDGET) -> Path:  # fmt: skip
    """Fetch up to ``per_species`` open-licensed photos per species into ``out_zip`` (see the
    module docstring), with its manifest and quarantine report. ``species`` defaults to the
    species the observations' manifest names."""
    observations, out_zip = Path(observations), Path(out_zip)
    formats.photo_url("x/square.jpg", size)  # an unknown size fails before any request
    _identify(client)
    taxa = species_of(observations, species)
    scratch = out_zip.with_name(f".{out_zip.name}.photos")  # fetched photos, for a rerun
    q = Quarantine(str(out_zip))
    hosts: set[str] = set()

    def fetch(key: int, photo: dict[str, Any]) -> bytes | str:
        url = formats.photo_url(str(photo.get("url") or ""), size)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return formats.MEDIA_UNAVAILABLE
        hosts.add(f"{parts.scheme}://{parts.netloc}")
        cached, refused = scratch / f"{photo['id']}.bin", scratch / f"{photo['id']}.too_large"
        if cached.exists():
            return cached.read_bytes()
        if refused.exists():
            return Reason.TOO_LARGE_MEDIA.value
        _within_budget(client, budget, f"photo {photo['id']} of species {key} "
                       f"({q.read - 1} photo(s) looked at before)")  # fmt: skip
        try:
            data = fetch_capped(client, url, f"photo {photo['id']}", max_bytes)
        except DownloadError as err:
            if err.status in (403, 404, 410):
                return formats.MEDIA_UNAVAILABLE
            raise
        with atomic_path(cached if data is not None else refused) as tmp:
            tmp.write_bytes(data or b"")
        return data if data is not None else Reason.TOO_LARGE_MEDIA.value

    candidates = formats.photo_candidates(observations, taxa)
    kept = formats.collect_photos(candidates, per_species, q, fetch)
    formats.write_photo_zip(out_zip, kept)
    request = {"observations": observations.name, "size": size, "per_species": per_species,
               "max_bytes": max_bytes}  # fmt: skip
    formats.write_photo_manifest(out_zip, request, " ".join(sorted(hosts)), kept)
    q.write(out_zip, kept=len(kept))
    shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s", q.summary())
    return out_zip


def open_photos(path: str | Path) -> pd.DataFrame:
    """The ``index.csv`` of a photo zip; every row's ``path`` must be a member of the zip."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such iNaturalist photo zip")
    with zipfile.ZipFile(path) as zf:
        if "index.csv" not in zf.namelist():
            raise ValueError(f"{path}: no index.csv in the photo zip")
        with zf.open("index.csv") as f:
            index = pd.read_csv(f, dtype=str, keep_default_na=False)
        members = set(zf.namelist())
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"{path}:index.csv: missing column(s) {missing}")
    absent = sorted(set(index["path"]) - members)
    if absent:
        raise ValueError(f"{path}:index.csv: row path {absent[0]!r} is not in the zip")
    index["species_key"] = pd.to_numeric(index["species_key"]).astype("Int64")
    index["photo_id"] = pd.to_numeric(index["photo_id"]).astype(np.int64)
    index["size"] = pd.to_numeric(index["size"]).astype(np.int64)
    index.attrs["source"] = str(path)
    return index.loc[:, list(INDEX_COLUMNS)]


# --- samples --------------------------------------------------------------------------------
def sample(out: str | Path, species: pd.DataFrame, start: str, end: str, grid: Grid,
           seed: int, climate_seed: int | None = None) -> Path:  # fmt: skip
    """Write a synthetic ``observations.jsonl.gz`` (API v1 results, ids ascending) and its
    manifest: the GBIF sample's niches (same ``seed``) and climate (``climate_seed``, default
    ``seed``), +01:00/+02:00 times (15 % date-only), photos under mixed licences, and a few
    bad records (no location, an impossible date, a species outside the study)."""
    out = Path(out)
    observations = formats.sample_observations(species, start, end, grid, seed, climate_seed)
    formats.write_observations(out, observations)
    url = f"sample:inaturalist?seed={seed}"
    url += "" if climate_seed is None else f"&climate_seed={climate_seed}"
    manifest.write_manifest(
        out, source="inaturalist", request=formats.manifest_request(species, start, end, grid),
        url=url, licence=formats.licence_summary(o.get("license_code") for o in observations),
        citation=formats.CITATION,
    )  # fmt: skip
    return out


def sample_photos(observations: str | Path, out_zip: str | Path, seed: int, *,
                  per_species: int = 5, species: pd.DataFrame | None = None) -> Path:  # fmt: skip
    """A photo zip like ``download_photos``'s with small generated images, its manifest and
    quarantine report."""
    observations, out_zip = Path(observations), Path(out_zip)
    q = Quarantine(str(out_zip))

    def fetch(key: int, photo: dict[str, Any]) -> bytes:
        kind = "png" if str(photo.get("url", "")).split("?")[0].endswith(".png") else "jpg"
        return formats.sample_image(seed, key, int(photo["id"]), kind)

    candidates = formats.photo_candidates(observations, species_of(observations, species))
    kept = formats.collect_photos(candidates, per_species, q, fetch)
    formats.write_photo_zip(out_zip, kept)
    request = {"observations": observations.name, "size": "medium", "per_species": per_species}
    formats.write_photo_manifest(out_zip, request, f"sample:inaturalist-photos?seed={seed}", kept)
    q.write(out_zip, kept=len(kept))
    return out_zip


# --- records --------------------------------------------------------------------------------
def _position(obs: dict[str, Any]) -> tuple[Any, Any]:
    """(lat, lon) from geojson [lon, lat], else location "lat,lon"; None where absent."""
    point = obs.get("geojson") or {}
    coords = point.get("coordinates") if isinstance(point, dict) else None
    if isinstance(coords, list) and len(coords) == 2:
        return coords[1], coords[0]
    lat, _, lon = str(obs.get("location") or "").partition(",")
    return (lat, lon) if lon else (None, None)


def _row(obs: dict[str, Any]) -> dict[str, Any]:
    lat, lon = _position(obs)
    accuracy = obs.get("public_positional_accuracy")
    if accuracy is None:
        accuracy = obs.get("positional_accuracy")
    return {
        "record_id": f"inaturalist:{obs['id']}",
        "scientific_name": str((obs.get("taxon") or {}).get("name") or ""),
        "latitude": lat, "longitude": lon, "uncertainty_m": accuracy,
        "time": obs.get("time_observed_at") or "", "day": obs.get("observed_on") or "",
        "basis": "LIVING_SPECIMEN" if obs.get("captive") is True else "HUMAN_OBSERVATION",
        "licence": str(obs.get("license_code") or formats.ALL_RIGHTS_RESERVED),
    }  # fmt: skip


def records(path: str | Path, species: pd.DataFrame
            ) -> tuple[pd.DataFrame, pd.DataFrame, Quarantine]:  # fmt: skip
    """The record table, the media table (one image per photo) and the quarantine of an
    observations file; lines that are not observations are counted (``malformed_record``)."""
    path = Path(path)
    q = Quarantine(str(path))
    found, bad = formats.read_observations(path)
    q.saw(len(found) + len(bad))
    formats.count(
        q, formats.MALFORMED_RECORD, len(bad), f"{path.name} line {bad[0]}" if bad else ""
    )
    cols = ["record_id", "scientific_name", "latitude", "longitude", "uncertainty_m", "time",
            "day", "basis", "licence"]  # fmt: skip
    table = pd.DataFrame([_row(o) for o in found], columns=cols)
    time, day = contract.parse_dates(table["time"]), contract.parse_dates(table["day"])
    # the time of day where it parses, else the day; else why neither is usable
    use = np.where(time["precision"] == "time", "time",
                   np.where(day["precision"] != "missing", "day", "time"))  # fmt: skip
    for c in ("start", "end", "precision"):
        table[c] = time[c].where(use == "time", day[c]).to_numpy()
    table["species_key"] = contract.match_species(table["scientific_name"], species)
    table = table.assign(same_as="", source="inaturalist", status="PRESENT")
    media = [
        {"record_id": f"inaturalist:{o['id']}", "species_key": key, "kind": "image",
         "uri": str(p.get("url") or ""), "content": "",
         "licence": str(p.get("license_code") or formats.ALL_RIGHTS_RESERVED),
         "attribution": str(p.get("attribution") or "")}
        for o, key in zip(found, table["species_key"], strict=True)
        for p in (o.get("photos") or []) if isinstance(p, dict)
    ]  # fmt: skip
    media_table = pd.DataFrame(media, columns=list(contract.MEDIA_COLUMNS))
    return (contract.conform(table, str(path)), contract.conform_media(media_table, str(path)), q)


class INaturalist(OccurrenceSource):
    """iNaturalist: one raw file ``observations.jsonl.gz`` of every species over the window."""

    name = "inaturalist"
    licence = "per observation and photo (license_code): CC0, CC BY, CC BY-NC, ..."
    citation = formats.CITATION
    service = "inaturalist"
    raw_name = RAW_NAME

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        return {**super().raw_settings(name, study), "climate_seed": self.climate_seed(study)}

    def _check(self, name: str) -> None:
        if name not in (RAW_NAME, PHOTOS_NAME):
            raise ValueError(f"inaturalist: raw file {name!r} is not {RAW_NAME!r} or "
                             f"{PHOTOS_NAME!r}")  # fmt: skip

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        if name == PHOTOS_NAME:  # the photos of the observations file beside it
            return [*super().raw_inputs(name, study), str(self.raw_file(RAW_NAME, study))]
        return super().raw_inputs(name, study)

    def sample(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        species = read_species(study.species)
        if name == PHOTOS_NAME:
            return sample_photos(out.with_name(RAW_NAME), out, self.seed(study), species=species)
        return sample(out, species, study.start, study.end, study.grid,
                      self.seed(study), self.climate_seed(study))  # fmt: skip

    def download(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        species = read_species(study.species)
        if name == PHOTOS_NAME:
            return download_photos(out.with_name(RAW_NAME), out, make_client(), species=species)
        return download(out, species, study.start, study.end, study.grid)

    def media_names(self, study: Study) -> list[str]:
        return [PHOTOS_NAME]

    def media(self, files: Sequence[str | Path], study: Study
              ) -> tuple[pd.DataFrame, Callable[[str], bytes]]:  # fmt: skip
        (path,) = files
        return zip_media(path, open_photos(path), "image", "path")

    def records(self, files: Sequence[str | Path], study: Study
                ) -> tuple[pd.DataFrame, pd.DataFrame, Quarantine]:  # fmt: skip
        (path,) = files
        return records(path, read_species(study.species))


register(INaturalist())
