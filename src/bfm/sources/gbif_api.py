"""GBIF API v1: species match, occurrence search split under the offset cap, and the
asynchronous occurrence download (docs/reference: sources.md §11.1-11.3).

**Species match** ``GET <api>/species/match?name=<name>&strict=true&verbose=false``: one JSON
object per name (``usageKey``, ``acceptedUsageKey`` for a synonym, ``status``, ``rank``,
``matchType`` EXACT/FUZZY/HIGHERRANK/NONE, ``confidence``, ``kingdom`` .. ``species`` and
their ``*Key``). A name is accepted when it matches EXACT, or FUZZY with ``confidence`` at
least ``min_confidence``; every other name is listed in one error, never guessed. A synonym
is resolved to its ``acceptedUsageKey`` (column ``key``) and logged. Answers are cached in a
JSON file: a name asked once is never asked again; each entry records the URL, the checklist
(the GBIF Backbone) and the date it was asked.

**Search** ``GET <api>/occurrence/search`` pages of at most 300 results (``offset``,
``endOfRecords``); GBIF refuses ``offset + limit > 100,000``. :func:`search_plan` asks the
``count`` of the query (``limit=0``) and halves it, by years first (``year=a,b``), then by
area (the longer side of ``decimalLatitude=a,b`` / ``decimalLongitude=c,d``), until every
piece counts at most 100,000. Ranges are inclusive, so a record on a shared edge comes in two
pieces: records are kept once by ``key``. The raw file is JSON Lines (gzip) of the result
objects as GBIF sends them; the manifest lists the pieces. Pages go through
``bfm.sources.httpjson`` (resets, truncation, malformed JSON; an interrupted run reuses them).

**Download** ``POST <api>/occurrence/download/request`` (HTTP Basic, JSON body with
``creator``, ``notificationAddresses``, ``format``, ``predicate``) answers 201 with the key as
plain text; 420 (too many downloads running) is retried like 429. The key is written at once
to ``<out>.request.json``: a rerun polls that key and never requests a second download.
``GET <api>/occurrence/download/<key>`` walks PREPARING -> RUNNING -> SUCCEEDED (KILLED,
CANCELLED, FAILED, FILE_ERASED: an error naming the key); the zip comes from ``downloadLink``
(a redirect to storage, followed) with ``Client.download``: resumed, and ``size`` checked.

Credentials come from the environment (``GBIF_USER``, ``GBIF_PWD``, ``GBIF_EMAIL``, pygbif's
names), are sent only with the POST and never appear in logs, errors, state or manifest.

pygbif (0.7.0) is not used: its species match calls a hard-coded ``api.gbif.org/v2`` (another
answer shape), its download calls hard-code ``http://api.gbif.org/v1`` (the password would
travel over plain HTTP), its search base URL is a module global, it has no retries or
Retry-After, and importing it configures the root logger and imports matplotlib.pyplot.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from tqdm import tqdm

from bfm.contracts.grid import Grid
from bfm.fileio import atomic_path, write_text_atomic
from bfm.sources import manifest
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.httpjson import fetch_json, scratch_dir

log = logging.getLogger(__name__)
T = TypeVar("T")
API = "https://api.gbif.org/v1"
SERVICE = Service("gbif")
BACKBONE = "GBIF Backbone Taxonomy (datasetKey d7dddbf4-2cf0-4f39-9b2a-bb099caae36c)"
CACHE_SCHEMA, STATE_SCHEMA = "bfm-gbif-match/1", "bfm-gbif-request/1"
MAX_RECORDS = 100_000  # GBIF's cap on offset + limit of a search
PAGE = 300  # the largest search page
FORMATS = ("SIMPLE_CSV", "DWCA")
RUNNING = ("PREPARING", "RUNNING", "SUSPENDED")
FAILED = ("KILLED", "CANCELLED", "FAILED", "FILE_ERASED")
BUSY_WAIT = 60.0  # seconds before the first retry after HTTP 420 (doubled, up to max_wait)
LICENCE = "the download's licence (records CC0 / CC BY / CC BY-NC; the most restrictive)"
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
MATCH_COLUMNS = ("name", "key", "usageKey", "acceptedUsageKey", "scientificName",
                 "canonicalName", "rank", "status", "synonym", "matchType", "confidence",
                 *RANKS, *(f"{r}Key" for r in RANKS), "asked")  # fmt: skip
KEY_COLUMNS = ("key", "usageKey", "acceptedUsageKey", *(f"{r}Key" for r in RANKS))


def _client(client: Client | None) -> Client:
    return client or Client(SERVICE)


def _bar(items: list[T], desc: str) -> tqdm[T]:
    """A progress bar to stderr (the rule's log), sparse when stderr is not a terminal."""
    return tqdm(items, desc=desc, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- species match -------------------------------------------------------------------------
def _read_cache(cache: Path) -> dict[str, Any]:
    if not cache.exists():
        return {"schema": CACHE_SCHEMA, "checklist": BACKBONE, "names": {}}
    try:
        body = json.loads(cache.read_text())
    except ValueError as err:
        raise ValueError(f"{cache}: the species match cache is not valid JSON ({err})") from err
    if not isinstance(body, dict) or body.get("schema") != CACHE_SCHEMA:
        raise ValueError(f"{cache}: not a species match cache (schema {CACHE_SCHEMA})")
    return body


def _refusal(name: str, answer: Mapping[str, Any], min_confidence: int) -> str | None:
    """Why ``answer`` is not an accepted match of ``name`` (None when it is)."""
    kind, confidence = answer.get("matchType"), answer.get("confidence")
    if kind == "EXACT" and answer.get("usageKey"):
        return None
    if kind == "FUZZY" and answer.get("usageKey") and (confidence or 0) >= min_confidence:
        log.warning("gbif species match: %r matched FUZZY (confidence %s) as %r", name,
                    confidence, answer.get("scientificName"))  # fmt: skip
        return None
    floor = f" < {min_confidence}" if kind == "FUZZY" else ""
    return f"{name!r} ({kind}, confidence {confidence}{floor})"


def match_species(names: Sequence[str], cache: str | Path, client: Client | None = None,
                  base_url: str = API, min_confidence: int = 95) -> pd.DataFrame:  # fmt: skip
    """One row per name (columns :data:`MATCH_COLUMNS`; ``key`` is the accepted usage key).

    Raises ValueError listing every name without an accepted match (module docstring).
    """
    cache, client = Path(cache), _client(client)
    body = _read_cache(cache)
    url = f"{base_url.rstrip('/')}/species/match"
    for name in _bar([n for n in dict.fromkeys(names) if n not in body["names"]],
                     "gbif species match"):  # fmt: skip
        params = {"name": name, "strict": "true", "verbose": "false"}
        answer = client.json("GET", url, f"species match {name!r}", params=params)
        if not isinstance(answer, dict) or "matchType" not in answer:
            raise DownloadError(f"gbif species match {name!r}: unexpected answer from {url}")
        body["names"][name] = {"asked": _now(), "url": url, "params": params, "answer": answer}
        write_text_atomic(cache, json.dumps(body, indent=1, sort_keys=True) + "\n")
    rows, refused = [], []
    for name in dict.fromkeys(names):
        entry = body["names"][name]
        answer = entry["answer"]
        if (why := _refusal(name, answer, min_confidence)) is not None:
            refused.append(why)
            continue
        accepted = answer.get("acceptedUsageKey") if answer.get("synonym") else None
        if answer.get("synonym"):
            log.warning("gbif species match: %r is a %s (usageKey %s) of the accepted taxon %s",
                        name, answer.get("status"), answer.get("usageKey"), accepted)  # fmt: skip
        row = {c: answer.get(c) for c in MATCH_COLUMNS}
        row.update(name=name, key=accepted or answer["usageKey"], acceptedUsageKey=accepted,
                   asked=entry["asked"])  # fmt: skip
        rows.append(row)
    if refused:
        raise ValueError(f"gbif species match: {len(refused)} name(s) without an exact match "
                         f"in the {BACKBONE} (fix them; nothing is guessed): "
                         + ", ".join(refused))  # fmt: skip
    table = pd.DataFrame(rows, columns=list(MATCH_COLUMNS))
    for c in KEY_COLUMNS:
        table[c] = pd.to_numeric(table[c]).astype("Int64")
    return table


# --- occurrence search ----------------------------------------------------------------------
def _num(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Piece:
    """A part of a search: years ``[y0, y1]`` and a box (inclusive ranges, degrees)."""

    years: tuple[int, int]
    lat: tuple[float, float]
    lon: tuple[float, float]

    def params(self) -> dict[str, str]:
        return {"year": f"{self.years[0]},{self.years[1]}",
                "decimalLatitude": ",".join(map(_num, self.lat)),
                "decimalLongitude": ",".join(map(_num, self.lon))}  # fmt: skip

    def halves(self) -> tuple[Piece, Piece]:
        """The two halves: the year range first, then the longer side of the box."""
        (y0, y1), (s, n), (w, e) = self.years, self.lat, self.lon
        if y1 > y0:
            mid = (y0 + y1) // 2
            return Piece((y0, mid), self.lat, self.lon), Piece((mid + 1, y1), self.lat, self.lon)
        if max(n - s, e - w) < 1e-4:
            raise DownloadError(f"gbif search: {self.params()} cannot be split further; use the "
                                "asynchronous download (request_download)")  # fmt: skip
        if n - s >= e - w:
            m = float(_num((s + n) / 2))
            return Piece(self.years, (s, m), self.lon), Piece(self.years, (m, n), self.lon)
        m = float(_num((w + e) / 2))
        return Piece(self.years, self.lat, (w, m)), Piece(self.years, self.lat, (m, e))


def search_plan(count: Callable[[Piece], int], years: tuple[int, int],
                bbox: tuple[float, float, float, float],
                max_records: int = MAX_RECORDS) -> list[tuple[Piece, int]]:  # fmt: skip
    """Pieces of the search (``bbox`` = south, north, west, east) each counting at most
    ``max_records`` (``count`` of a piece), with their counts; empty pieces are left out."""
    if years[1] < years[0] or bbox[1] <= bbox[0] or bbox[3] <= bbox[2]:
        raise ValueError(f"gbif search: empty years {years} or box {bbox} (south, north, west, "
                         "east)")  # fmt: skip
    todo, plan = [Piece(years, (bbox[0], bbox[1]), (bbox[2], bbox[3]))], []
    while todo:
        piece = todo.pop(0)
        n = count(piece)
        if n > max_records:
            todo[:0] = piece.halves()  # depth first: the plan runs in order of years
        elif n:
            plan.append((piece, n))
    return plan


def _results(body: Any, unit: str) -> tuple[list[dict[str, Any]], bool]:
    ok = isinstance(body, dict) and isinstance(body.get("results"), list)
    if not ok or not all(isinstance(r, dict) and "key" in r for r in body["results"]):
        raise DownloadError(f"gbif {unit}: not a search page (results with a key each)")
    return body["results"], bool(body.get("endOfRecords"))


def _pages(client: Client, url: str, params: dict[str, Any], unit: str, scratch: Path,
           limit: int, max_records: int) -> list[dict[str, Any]]:  # fmt: skip
    got: list[dict[str, Any]] = []
    while True:
        size = min(limit, max_records - len(got))  # offset + limit stays within the cap
        if size <= 0:
            raise DownloadError(f"gbif {unit}: more than {max_records} records (the data "
                                "changed since the plan): run again")  # fmt: skip
        page = {**params, "offset": len(got), "limit": size}
        results, end = _results(fetch_json(client, url, page, unit, scratch), unit)
        got += results
        if end or not results:
            return got


def search(out: str | Path, query: Mapping[str, Any], years: tuple[int, int],
           bbox: tuple[float, float, float, float], client: Client | None = None,
           base_url: str = API, limit: int = PAGE,
           max_records: int = MAX_RECORDS) -> Path:  # fmt: skip
    """Every record of ``query`` (search parameters besides years and box) to ``out``
    (``search.jsonl.gz``), each once, and its manifest (module docstring)."""
    out, client = Path(out), _client(client)
    planned = {"year", "decimalLatitude", "decimalLongitude", "limit", "offset"} & set(query)
    if planned:
        raise ValueError(f"gbif search: query sets {sorted(planned)}; the plan sets them")
    url, scratch = f"{base_url.rstrip('/')}/occurrence/search", scratch_dir(out)

    def count(piece: Piece) -> int:
        body = fetch_json(client, url, {**query, **piece.params(), "limit": 0},
                          f"search count {piece.params()}", scratch)  # fmt: skip
        return int(body["count"])

    plan = search_plan(count, years, bbox, max_records)
    seen: set[Any] = set()
    pieces = []
    # No name and no time in the gzip header: the same records, the same bytes.
    with atomic_path(out) as tmp, open(tmp, "wb") as f, gzip.GzipFile("", "wb", 9, f, 0) as gz:
        for piece, n in _bar(plan, "gbif search pieces"):
            got = _pages(client, url, {**query, **piece.params()}, f"search {piece.params()}",
                         scratch, limit, max_records)  # fmt: skip
            new = [r for r in got if r["key"] not in seen]
            seen.update(r["key"] for r in new)
            if len(got) != n:
                log.warning("gbif search %s: counted %d, fetched %d", piece.params(), n, len(got))
            pieces.append({**piece.params(), "count": n, "fetched": len(got), "new": len(new)})
            gz.write(b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode()
                              + b"\n" for r in new))  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)
    request = {"query": dict(query), "years": list(years), "bbox": list(bbox), "limit": limit,
               "records": len(seen), "pieces": pieces}  # fmt: skip
    manifest.write_manifest(out, source="gbif", request=request, url=url, licence=LICENCE,
                            citation=f"GBIF.org ({_now()[:10]}) GBIF Occurrence Search {url} "
                            "(no DOI: cite a download or a derived dataset)")  # fmt: skip
    return out


# --- asynchronous download ------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    """A GBIF account; the password never shows in a repr."""

    user: str
    email: str
    password: str = field(repr=False)


def credentials(env: Mapping[str, str] | None = None) -> Credentials:
    """The account of ``GBIF_USER``, ``GBIF_PWD`` and ``GBIF_EMAIL`` (the environment)."""
    env = os.environ if env is None else env
    names = ("GBIF_USER", "GBIF_PWD", "GBIF_EMAIL")
    missing = [n for n in names if not env.get(n, "").strip()]
    if missing:
        raise DownloadError(f"gbif download: environment variable(s) {missing} not set (a GBIF "
                            "account: user name, password, e-mail for notifications)")  # fmt: skip
    return Credentials(env["GBIF_USER"].strip(), env["GBIF_EMAIL"].strip(), env["GBIF_PWD"])


def download_predicate(species_keys: Sequence[int], start_year: int, end_year: int,
                       grid: Grid) -> dict[str, Any]:  # fmt: skip
    """The predicate of a download of the species over the grid's cells and the years."""
    keys = [int(k) for k in species_keys]
    if not keys or min(keys) <= 0 or end_year < start_year:
        raise ValueError(f"gbif download: need positive species keys ({keys}) and start year "
                         f"{start_year} <= end year {end_year}")  # fmt: skip
    lat, lon = grid.lat_edges(), grid.lon_edges()
    s, n, w, e = (_num(float(v)) for v in (lat.min(), lat.max(), lon.min(), lon.max()))
    polygon = f"POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))"  # counter-clockwise
    return {"type": "and", "predicates": [
        {"type": "in", "key": "TAXON_KEY", "values": [str(k) for k in keys]},
        {"type": "within", "geometry": polygon},
        {"type": "greaterThanOrEquals", "key": "YEAR", "value": str(start_year)},
        {"type": "lessThanOrEquals", "key": "YEAR", "value": str(end_year)},
        {"type": "equals", "key": "HAS_COORDINATE", "value": "true"},
        {"type": "equals", "key": "HAS_GEOSPATIAL_ISSUE", "value": "false"},
        {"type": "equals", "key": "OCCURRENCE_STATUS", "value": "PRESENT"}]}  # fmt: skip


def request_download(predicate: Mapping[str, Any], fmt: str, account: Credentials,
                     client: Client | None = None, base_url: str = API) -> str:  # fmt: skip
    """Request a download; its key. HTTP 420 is waited out like 429."""
    if fmt not in FORMATS:
        raise ValueError(f"gbif download: format {fmt!r} is not one of {list(FORMATS)}")
    body = {"creator": account.user, "notificationAddresses": [account.email],
            "sendNotification": False, "format": fmt, "predicate": dict(predicate)}  # fmt: skip
    return post_request(body, "gbif download request", account, client, base_url)


def post_request(body: Mapping[str, Any], what: str, account: Credentials,
                 client: Client | None = None, base_url: str = API) -> str:  # fmt: skip
    """POST a download request (predicate or SQL) with the account; the download key.
    HTTP 420 (too many downloads running) is waited out like 429."""
    client, url = _client(client), f"{base_url.rstrip('/')}/occurrence/download/request"
    s = client.service
    for attempt in range(s.retries + 1):
        try:
            response = client.request("POST", url, what.removeprefix("gbif "), json=dict(body),
                                      auth=(account.user, account.password))  # fmt: skip
            break
        except DownloadError as err:
            if err.status != 420 or attempt == s.retries:
                raise
            wait = min(s.max_wait, BUSY_WAIT * 2**attempt)
            log.warning("%s: HTTP 420 (too many downloads running); retry %d/%d in %.0f s",
                        what, attempt + 1, s.retries, wait)  # fmt: skip
            client.sleep(wait)
    key = response.text.strip()
    if response.status_code != 201 or not re.fullmatch(r"\d+-\d+", key):
        raise DownloadError(f"{what}: HTTP {response.status_code} from {url} "
                            f"without a download key ({key[:80]!r})")  # fmt: skip
    log.info("%s: key %s", what, key)
    return key


def status(key: str, client: Client | None = None, base_url: str = API) -> dict[str, Any]:
    url = f"{base_url.rstrip('/')}/occurrence/download/{key}"
    body = _client(client).json("GET", url, f"download {key} status")
    if not isinstance(body, dict) or "status" not in body:
        raise DownloadError(f"gbif download {key}: no status in the answer of {url}")
    return body


def wait_for_download(key: str, poll: float = 60.0, client: Client | None = None,
                      base_url: str = API, max_polls: int = 10_000) -> dict[str, Any]:  # fmt: skip
    """Poll the status every ``poll`` s until SUCCEEDED; the status. A failed download is an
    error naming the key."""
    client, seen = _client(client), ""
    for _ in range(max_polls):
        body = status(key, client, base_url)
        state = str(body["status"])
        if state != seen:
            log.info("gbif download %s: %s", key, state)
            seen = state
        if state == "SUCCEEDED":
            return body
        if state in FAILED or state not in RUNNING:
            raise DownloadError(f"gbif download {key}: status {state}; nothing to fetch (delete "
                                "the .request.json beside the output to request anew)")  # fmt: skip
        client.sleep(poll)
    raise DownloadError(f"gbif download {key}: still {seen} after {max_polls} polls; run again "
                        "to go on waiting for the same key")  # fmt: skip


def citation(doi: str, created: str) -> str:
    return f"GBIF.org ({created[:10] or 'n.d.'}) GBIF Occurrence Download https://doi.org/{doi}"


def fetch_download(key: str, out: str | Path, client: Client | None = None,
                   base_url: str = API, info: Mapping[str, Any] | None = None,
                   predicate: Mapping[str, Any] | None = None,
                   fmt: str | None = None) -> Path:  # fmt: skip
    """The zip of a SUCCEEDED download to ``out`` (resumed, size checked) and its manifest.

    ``info`` is the download's status (asked when None); ``predicate`` and ``fmt`` what was
    sent (the manifest records them; default the status's copy).
    """
    out, client = Path(out), _client(client)
    info = dict(info or status(key, client, base_url))
    if info.get("status") != "SUCCEEDED" or not info.get("downloadLink"):
        raise DownloadError(f"gbif download {key}: status {info.get('status')}, no file yet")
    link, size = str(info["downloadLink"]), int(info["size"])
    client.download(link, out, f"download {key}.zip", expected_bytes=size)
    with open(out, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            out.unlink()
            raise DownloadError(f"gbif download {key}: {link} is not a zip file")
    sent = info.get("request", {})
    doi, created = str(info.get("doi")), str(info.get("created"))
    request = {"download_key": key, "doi": doi, "format": fmt or sent.get("format"),
               "predicate": dict(predicate or sent.get("predicate") or {}),
               "totalRecords": info.get("totalRecords"), "created": created}  # fmt: skip
    manifest.write_manifest(out, source="gbif", request=request, url=link,
                            licence=str(info.get("license") or LICENCE),
                            citation=citation(doi, created))  # fmt: skip
    return out


def state_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".request.json")


def download(out: str | Path, predicate: Mapping[str, Any], fmt: str = "SIMPLE_CSV",
             client: Client | None = None, base_url: str = API, poll: float = 60.0,
             max_polls: int = 10_000, env: Mapping[str, str] | None = None) -> Path:  # fmt: skip
    """Request (once), wait for and fetch the download of ``predicate`` to ``out``.

    A file whose manifest verifies and records this predicate and format is kept; a key in
    ``<out>.request.json`` for this predicate and format is polled instead of a new request.
    """
    out, client, predicate = Path(out), _client(client), dict(predicate)
    if out.exists() and manifest.manifest_path(out).exists():
        try:
            done = manifest.verify(out)["request"]
        except (ValueError, OSError) as err:
            log.warning("%s: fetching again (%s)", out, err)
        else:
            if done.get("predicate") == predicate and done.get("format") == fmt:
                return out
    state = state_path(out)
    saved = json.loads(state.read_text()) if state.exists() else {}
    if saved.get("predicate") == predicate and saved.get("format") == fmt and saved.get("key"):
        key = str(saved["key"])
        log.info("gbif download: polling key %s of %s (no new request)", key, state)
    else:
        key = request_download(predicate, fmt, credentials(env), client, base_url)
        write_text_atomic(state, json.dumps({"schema": STATE_SCHEMA, "key": key, "format": fmt,
                          "predicate": predicate, "api": base_url, "requested_at": _now()},
                          indent=1) + "\n")  # fmt: skip
    info = wait_for_download(key, poll, client, base_url, max_polls)
    fetch_download(key, out, client, base_url, info, predicate, fmt)
    state.unlink(missing_ok=True)
    return out
