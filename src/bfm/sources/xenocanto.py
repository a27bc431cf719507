"""Xeno-canto: bird (and other animal) sound recordings from the API v3, as occurrence
records and audio media (the occurrence contract, ``bfm.contracts.occurrence``).

**Wire format**: ``GET <api>/recordings?query=<q>&per_page=<n>&page=<k>&key=<key>`` (``api``
``https://xeno-canto.org/api/3``). Every term of ``q`` must be a tag (``tag:value``, values
with spaces quoted); :func:`query` asks for one species in the grid's box,
``sp:"genus species" box:LAT_MIN,LON_MIN,LAT_MAX,LON_MAX`` (the grid's outer cell edges).
An answer: ``{"numRecordings": "1234", "numSpecies": "1", "page": 1, "numPages": 3,
"recordings": [...]}`` (counts are strings, pages ints); a recording has v3 names (``lon``,
``grp``, ``animal-seen``), ``lat``/``lon`` as strings (empty or null when unknown), ``date``
``YYYY-MM-DD`` with ``00`` for an unknown month or day (or ``?``), ``time`` ``HH:MM`` local
time or ``?``, ``lic`` (``//creativecommons.org/...``), ``q`` (quality A-E or "no score") and
``file`` (the audio). An error is ``{"error": {"code", "message"}}`` with a 4xx status.

**The key** is required (401 without it): ``XC_API_KEY`` from the environment, else the first
line of ``~/.config/xeno-canto/key``; checked before any request. It travels only on the wire:
it is added to each request's query by the session's auth hook, so no URL the downloader keeps
(scratch page names, messages, the manifest) holds it, and urllib3's debug lines are redacted.

**Raw file** ``recordings.jsonl.gz``: gzip JSON Lines, one v3 recording object per line as the
API returned it, every species' pages 1..numPages joined, sorted by numeric id, each id once;
a species whose distinct recordings differ from ``numRecordings`` (the data changed while
paging) fails the download. Pages land in a scratch folder first (``httpjson.fetch_json``):
an interrupted run resumes and gives the same file. Requests are at most one a second.

**Records** (:func:`records`): ``xenocanto:<id>``, basis ``MACHINE_OBSERVATION`` (a sound
recording is a machine observation in Darwin Core), status ``PRESENT``, licence ``lic`` as an
https URL. Dates keep their real precision (``2019-00-00`` is the year 2019, ``2019-05-00``
May 2019, ``?``/``0000-00-00``/empty missing). The local ``time`` is ignored: it has no zone
and no daylight-saving flag, so its UTC moment is a guess (Europe spans UTC-1..UTC+3); the
recording keeps its day, whose UTC interval is off by the zone offset at most, a few hours.
Lines that are not recording objects are counted (``unreadable_line``), never guessed.

**Media** (:func:`records`, :func:`download_audio`): one ``audio`` row per recording with a
``file``; attribution ``<rec>, XC<id>``. :func:`download_audio` keeps up to ``per_species``
recordings per species of grade ``quality`` or better (best first), refuses files above
``max_bytes`` (``too_large_media``) and files that are not WAV, MP3, FLAC or Ogg by their
magic bytes (``corrupt_media``), and writes a zip ``<gbif_key>/XC<id>.<ext>`` with
``index.csv``, its quarantine report and manifest. Species keys come from the raw file's
manifest (its ``request.queries``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import requests
from tqdm import tqdm

from bfm.contracts import occurrence as contract
from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.sources import manifest
from bfm.sources import xenocanto_formats as fmt
from bfm.sources.base import Study, register
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.httpjson import fetch_json, scratch_dir
from bfm.sources.occurrence_base import OccurrenceSource, zip_media
from bfm.species_list import read_species

API = "https://xeno-canto.org/api/3"
RAW_NAME = "recordings.jsonl.gz"
AUDIO_NAME = "audio.zip"
SERVICE = Service("xenocanto", retries=6, backoff=2.0, min_interval=1.0)
KEY_ENV = "XC_API_KEY"
LICENCE = "per recording (field lic): CC BY-NC-SA, BY-NC-ND, BY-SA, BY 4.0 or CC0"
CITATION = "Xeno-canto Foundation, https://xeno-canto.org; each recording: <recordist>, XC<id>"
_WIRE_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests")
log = logging.getLogger(__name__)


# --- the key -----------------------------------------------------------------------------
def key_file() -> Path:
    return Path.home() / ".config" / "xeno-canto" / "key"


def api_key() -> str:
    """The API key: ``$XC_API_KEY``, else the first line of ``~/.config/xeno-canto/key``."""
    value = os.environ.get(KEY_ENV, "").strip()
    path = key_file()
    if not value and path.is_file():
        value = next(iter(path.read_text().splitlines()), "").strip()
    if not value:
        raise DownloadError(f"xenocanto: no API key: set the environment variable {KEY_ENV} "
                            f"or write the key (one line) to {path}; every xeno-canto.org "
                            "account with a verified e-mail has one")  # fmt: skip
    return value


class _KeyParam(requests.auth.AuthBase):
    """Adds ``key`` to each request's query as it is sent (never to a URL the caller keeps)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.prepare_url(r.url, {"key": self.key})
        return r

    def __repr__(self) -> str:
        return "<xeno-canto key>"


class _Redact(logging.Filter):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.secret in text:
            record.msg, record.args = text.replace(self.secret, "***"), ()
        return True


@contextmanager
def _keyed(client: Client, key: str) -> Iterator[None]:
    """``client`` sends the key for the duration; the wire loggers' lines are redacted."""
    before, redact = client.session.auth, _Redact(key)
    loggers = [logging.getLogger(name) for name in _WIRE_LOGGERS]
    client.session.auth = _KeyParam(key)
    for logger in loggers:
        logger.addFilter(redact)
    try:
        yield
    finally:
        client.session.auth = before
        for logger in loggers:
            logger.removeFilter(redact)


def _refusal(err: DownloadError, key: str) -> DownloadError:
    """``err`` with the key blanked and, for 401/403, where the key comes from."""
    text = str(err).replace(key, "***")
    if err.status in (401, 403):
        text += f" (check the Xeno-canto API key: {KEY_ENV} or {key_file()})"
    return DownloadError(text, err.status)


# --- download ----------------------------------------------------------------------------
def _num(value: float) -> str:
    return f"{round(float(value) + 0.0, 6):.6f}".rstrip("0").rstrip(".")


def query(scientific_name: str, grid: Grid) -> str:
    """``sp:"genus species" box:LAT_MIN,LON_MIN,LAT_MAX,LON_MAX`` (the grid's outer edges)."""
    words = str(scientific_name).split()
    if len(words) < 2 or '"' in scientific_name:
        raise ValueError(f"xenocanto: scientific name {scientific_name!r} is not 'Genus species'")
    lat_e, lon_e = grid.lat_edges(), np.clip(grid.lon_edges(), -180.0, 180.0)
    box = ",".join(_num(v) for v in (lat_e[-1], lon_e[0], lat_e[0], lon_e[-1]))
    return f'sp:"{" ".join(words[:2]).lower()}" box:{box}'


def _page(client: Client, url: str, params: dict[str, Any], where: str, scratch: Path,
          key: str, total: int) -> tuple[int, int, list[dict[str, Any]]]:  # fmt: skip
    """One checked page: ``(numRecordings, numPages, recordings)``. An error names the page
    with the key blanked; it is raised outside the ``except`` so that no chained exception
    keeps the server's unredacted words."""
    try:
        body = fetch_json(client, url, params, where, scratch)
        problem = fmt.error_of(body)
        if problem is not None:
            raise ValueError(f"xenocanto {where}: Xeno-canto answered with an error: {problem}")
        got_total, pages, recs = fmt.page_of(body, f"xenocanto {where}")
        if total >= 0 and got_total != total:
            raise ValueError(f"xenocanto {where}: numRecordings {got_total}, page 1 said "
                             f"{total}: the data changed while paging; run again")  # fmt: skip
        return got_total, pages, recs
    except DownloadError as err:
        refused = _refusal(err, key)
    except ValueError as err:
        shutil.rmtree(scratch, ignore_errors=True)  # never reuse an error or a shifted page
        refused = DownloadError(str(err).replace(key, "***"))
    raise refused


def _species_pages(client: Client, url: str, q: str, per_page: int, unit: str, scratch: Path,
                   key: str) -> tuple[dict[int, dict[str, Any]], int, int]:  # fmt: skip
    """The recordings of one query by id, its numRecordings and numPages."""
    found: dict[int, dict[str, Any]] = {}
    total, pages, page = -1, 1, 1
    while page == 1 or page <= pages:  # numPages 0: no recordings, one page asked
        params = {"query": q, "per_page": per_page, "page": page}
        total, pages, recs = _page(client, url, params, f"{unit} page {page}", scratch, key,
                                   total)  # fmt: skip
        found.update((int(r["id"]), r) for r in recs)
        page += 1
    if len(found) != total:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DownloadError(f"xenocanto {unit}: {len(found)} distinct recordings over {pages} "
                            f"page(s), numRecordings says {total}: the data changed; run "
                            "again")  # fmt: skip
    return found, total, pages


def request(species: pd.DataFrame, grid: Grid, per_page: int,
            counts: dict[int, tuple[int, int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """The manifest's request: the queries sent and, once known, their counts (no key)."""
    queries = []
    for key, name in zip(species["gbif_key"], species["scientific_name"], strict=True):
        entry: dict[str, Any] = {"species_key": int(key), "scientific_name": str(name),
                                 "query": query(str(name), grid)}  # fmt: skip
        if counts is not None:
            entry["numRecordings"], entry["numPages"] = counts[int(key)]
        queries.append(entry)
    return {"endpoint": "recordings", "per_page": int(per_page), "queries": queries}


def download(out: Path, species: pd.DataFrame, grid: Grid, client: Client | None = None,
             base_url: str = API, per_page: int = 500) -> Path:  # fmt: skip
    """Fetch every species' pages, write ``out`` (the raw file) and its manifest."""
    out = Path(out)
    key = api_key()  # before any request
    if not 50 <= int(per_page) <= 500:
        raise ValueError(f"xenocanto: per_page must be in 50..500, got {per_page}")
    client = client or Client(SERVICE)
    url, scratch = f"{base_url.rstrip('/')}/recordings", scratch_dir(out)
    found: dict[int, dict[str, Any]] = {}
    counts: dict[int, tuple[int, int]] = {}
    rows = list(zip(species["gbif_key"], species["scientific_name"], strict=True))
    with _keyed(client, key):
        for gbif_key, name in tqdm(rows, desc=f"xenocanto {out.name}", unit="species",
                                   file=sys.stderr, disable=len(rows) < 2):  # fmt: skip
            unit = f"{out.name} {name}"
            recs, total, pages = _species_pages(client, url, query(str(name), grid), per_page,
                                                unit, scratch, key)  # fmt: skip
            counts[int(gbif_key)] = (total, pages)
            for rid, rec in recs.items():
                found.setdefault(rid, rec)
    fmt.write_lines(out, found.values())
    shutil.rmtree(scratch, ignore_errors=True)
    manifest.write_manifest(out, source="xenocanto", request=request(species, grid, per_page,
                            counts), url=url, licence=LICENCE, citation=CITATION)  # fmt: skip
    log.info("xenocanto %s: %d recordings of %d species", out.name, len(found), len(rows))
    return out


# --- records and media -------------------------------------------------------------------
def records(path: Path, species: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, Quarantine]:
    """The record table, the media table and the quarantine (unreadable lines counted; the
    cleaning counts the rest) of a raw file."""
    path = Path(path)
    recs, bad = fmt.read_lines(path)
    q = Quarantine(str(path))
    q.saw(len(recs) + len(bad))
    q.count(Reason.UNREADABLE_LINE, len(bad), f"line {bad[0]}" if bad else "")
    ids = [f"xenocanto:{str(r['id']).strip()}" for r in recs]
    names = pd.Series([f"{r.get('gen', '')} {r.get('sp', '')}".strip() for r in recs], dtype=str)
    keys = contract.match_species(names, species)
    dates = contract.parse_dates([r.get("date") for r in recs])
    licences = [fmt.https_url(r.get("lic")) for r in recs]
    table = pd.DataFrame({
        "record_id": ids, "same_as": "", "source": "xenocanto", "scientific_name": names,
        "species_key": keys, "latitude": _numbers(r.get("lat") for r in recs),
        "longitude": _numbers(r.get("lon") for r in recs), "uncertainty_m": float("nan"),
        "start": dates["start"], "end": dates["end"], "precision": dates["precision"],
        "basis": "MACHINE_OBSERVATION", "status": "PRESENT", "licence": licences,
    })  # fmt: skip
    with_file = [i for i, r in enumerate(recs) if str(r.get("file") or "").strip()]
    media = pd.DataFrame({
        "record_id": [ids[i] for i in with_file], "species_key": keys.iloc[with_file].to_numpy(),
        "kind": "audio", "uri": [fmt.https_url(recs[i]["file"]) for i in with_file],
        "content": "",
        "licence": [licences[i] for i in with_file],
        "attribution": [fmt.attribution(recs[i]) for i in with_file],
    }, columns=list(contract.MEDIA_COLUMNS))  # fmt: skip
    return (contract.conform(table, str(path)), contract.conform_media(media, str(path)), q)


def _numbers(values: Iterable[Any]) -> pd.Series:
    """Strings as float64; empty, null or not a number -> NaN (counted by the cleaning)."""
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float)


def _fetch_audio(client: Client, rec: dict[str, Any], scratch: Path, max_bytes: int) -> Path | None:
    """The recording's file in ``scratch`` (reused from an interrupted run), None if larger
    than ``max_bytes`` (by the announced size when the server gives one)."""
    url, unit = fmt.https_url(rec["file"]), f"audio XC{rec['id']}"
    path = scratch / f"XC{rec['id']}.audio"
    if not path.exists():
        try:
            head = client.request("HEAD", url, unit, allow_redirects=True)
            announced = head.headers.get("Content-Length")
        except DownloadError as err:
            if err.status not in (405, 501):  # HEAD not allowed: the size is checked after
                raise
            announced = None
        if announced is not None and int(announced) > max_bytes:
            return None
        client.download(url, path, unit)
    return None if path.stat().st_size > max_bytes else path


def download_audio(recordings: Path, out_zip: Path, client: Client, *, per_species: int = 3,
                   max_bytes: int = 5_000_000, quality: str = "A") -> Path:  # fmt: skip
    """Fetch up to ``per_species`` audio files per species into ``out_zip`` (module rules)."""
    recordings, out_zip = Path(recordings), Path(out_zip)
    chosen = fmt.choose(recordings, per_species, quality)
    scratch = out_zip.with_name(f".{out_zip.name}.files")
    scratch.mkdir(parents=True, exist_ok=True)
    q = Quarantine(str(out_zip))
    files: list[tuple[str, Path]] = []
    index: list[dict[str, Any]] = []
    bar = tqdm(total=sum(min(per_species, len(g)) for g in chosen.values()), unit="file",
               desc=f"xenocanto {out_zip.name}", file=sys.stderr)  # fmt: skip
    with bar:
        for key, group in chosen.items():
            kept = 0
            for rec in group:
                if kept == per_species:
                    break
                q.saw(1)
                rid = f"xenocanto:{rec['id']}"
                path = _fetch_audio(client, rec, scratch, max_bytes)
                if path is None:
                    q.count(Reason.TOO_LARGE_MEDIA, 1, rid)
                    continue
                with open(path, "rb") as f:
                    ext = fmt.audio_kind(f.read(16))
                if ext is None:
                    q.count(Reason.CORRUPT_MEDIA, 1, rid)
                    continue
                member = f"{key}/XC{rec['id']}.{ext}"
                files.append((member, path))
                index.append(fmt.index_row(member, rec, key, path.stat().st_size))
                kept += 1
                bar.update(1)
    fmt.write_zip(out_zip, files, index)
    q.write(out_zip, kept=len(files))
    first = next((fmt.https_url(r["file"]) for g in chosen.values() for r in g), API)
    parts = urlsplit(first)
    manifest.write_manifest(out_zip, source="xenocanto", request=_audio_request(
        recordings, per_species, max_bytes, quality, len(files)), url=f"{parts.scheme}://"
        f"{parts.netloc}", licence=LICENCE, citation=CITATION)  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s", q.summary())
    return out_zip


def _audio_request(recordings: Path, per_species: int, max_bytes: int | None, quality: str,
                   n: int) -> dict[str, Any]:  # fmt: skip
    return {"recordings": recordings.name, "per_species": per_species, "max_bytes": max_bytes,
            "quality": quality, "files": n}  # fmt: skip


# --- samples -----------------------------------------------------------------------------
def sample(out: Path, species: pd.DataFrame, start: str, end: str, grid: Grid,
           seed: int) -> Path:  # fmt: skip
    """Write synthetic ``recordings.jsonl.gz`` (module docstring) and its manifest, whose
    request is what a download with the default ``per_page`` records."""
    out = Path(out)
    recs = fmt.sample_recordings(species, start, end, grid, seed)
    fmt.write_lines(out, recs)
    names = [f"{r['gen']} {r['sp']}".lower() for r in recs]
    counts = {}
    for key, name in zip(species["gbif_key"], species["scientific_name"], strict=True):
        n = names.count(" ".join(str(name).split()[:2]).lower())
        counts[int(key)] = (n, math.ceil(n / 500))
    manifest.write_manifest(out, source="xenocanto", request=request(species, grid, 500, counts),
                            url=f"sample:xenocanto?seed={seed}", licence=LICENCE,
                            citation=CITATION)  # fmt: skip
    return out


def sample_audio(recordings: Path, out_zip: Path, seed: int, *, per_species: int = 3,
                 quality: str = "A") -> Path:  # fmt: skip
    """A zip like :func:`download_audio`'s: tiny WAV chirps, one pitch per species."""
    recordings, out_zip = Path(recordings), Path(out_zip)
    chosen = fmt.choose(recordings, per_species, quality)
    files: list[tuple[str, bytes]] = []
    index: list[dict[str, Any]] = []
    keys = fmt.species_of_manifest(recordings)["gbif_key"].tolist()
    for key, group in chosen.items():
        pitch = 600.0 + 250.0 * keys.index(key)  # the species' place in the list: its pitch
        for rec in group[:per_species]:
            data = fmt.tone_wav(pitch, seed + int(rec["id"]))
            member = f"{key}/XC{rec['id']}.wav"
            files.append((member, data))
            index.append(fmt.index_row(member, rec, key, len(data)))
    q = Quarantine(str(out_zip))
    q.saw(len(files))
    fmt.write_zip(out_zip, files, index)
    q.write(out_zip, kept=len(files))
    manifest.write_manifest(out_zip, source="xenocanto", request=_audio_request(
        recordings, per_species, None, quality, len(files)), url=f"sample:xenocanto?seed={seed}",
        licence=LICENCE, citation=CITATION)  # fmt: skip
    return out_zip


class XenoCanto(OccurrenceSource):
    """Xeno-canto: one raw file ``recordings.jsonl.gz`` of every species in the grid's box."""

    name = "xenocanto"
    licence = LICENCE
    citation = CITATION
    service = "xenocanto"
    raw_name = RAW_NAME

    def _check(self, name: str) -> None:
        if name not in (RAW_NAME, AUDIO_NAME):
            raise ValueError(f"xenocanto: raw file {name!r} is not {RAW_NAME!r} or "
                             f"{AUDIO_NAME!r}")  # fmt: skip

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        if name == AUDIO_NAME:  # the recordings of the file beside it
            return [*super().raw_inputs(name, study), str(self.raw_file(RAW_NAME, study))]
        return super().raw_inputs(name, study)

    def sample(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        if name == AUDIO_NAME:
            return sample_audio(out.with_name(RAW_NAME), out, self.seed(study))
        return sample(out, read_species(study.species), study.start, study.end, study.grid,
                      self.seed(study))  # fmt: skip

    def download(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        if name == AUDIO_NAME:
            return download_audio(out.with_name(RAW_NAME), out, Client(SERVICE), quality="C")
        return download(out, read_species(study.species), study.grid)

    def media_names(self, study: Study) -> list[str]:
        return [AUDIO_NAME]

    def media(self, files: Sequence[str | Path], study: Study
              ) -> tuple[pd.DataFrame, Callable[[str], bytes]]:  # fmt: skip
        (path,) = files
        with zipfile.ZipFile(path) as zf, zf.open("index.csv") as f:
            index = pd.read_csv(f, dtype=str, keep_default_na=False)
        return zip_media(path, index, "audio", "member")

    def records(self, files: Sequence[str | Path], study: Study
                ) -> tuple[pd.DataFrame, pd.DataFrame, Quarantine]:  # fmt: skip
        (path,) = files
        return records(Path(path), read_species(study.species))


register(XenoCanto())
