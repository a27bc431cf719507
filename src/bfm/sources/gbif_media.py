"""GBIF media: the images and sounds of the study species, from a DwC-A download, in one zip.

A SIMPLE_CSV download has no media; a DwC-A download (``format=DWCA``, ``gbif_api.download``)
has the multimedia extension ``multimedia.txt`` (one row per medium: ``gbifID, type, format,
identifier, ..., creator, ..., license, rightsHolder``; ``bfm.sources.gbif_dwca``), where
``identifier`` is the URL of the file on the publisher's server. The DwC-A is kept beside the
output as ``occurrences_dwca.zip`` with its manifest (the download's key and DOI).

**Raw file** ``media.zip``, the same layout in every mode: ``multimedia.txt`` (the DwC-A
columns, then ``speciesKey``, the study species, and ``member``, the path of the stored file;
``license`` is the medium's own, else its record's) and the files ``images/<gbifID>_<n>.<ext>``
and ``audio/<gbifID>_<n>.<ext>`` (``n``: the medium's number among its record's stored media
of that kind; ``ext`` by the file's magic bytes). Rows and members run in the order of the
species list, images before audio, then by gbifID and identifier. The manifest records the
media per kind, the limits used and the counts of what was not stored;
``media.zip.quarantine.json`` the same counts by reason, with an example each.

**Download** (:func:`download_media`): ``StillImage`` media are images, ``Sound`` audio (other
types are left out, logged); a medium of no study species or without an identifier is
counted (``gbif_dwca.multimedia_media``), the same (gbifID, identifier) twice is a DUPLICATE.
Per species and kind the candidates are taken in gbifID then identifier order until
``per_species`` are stored; the rest are not fetched (``beyond_per_species`` in the report).
Each identifier is fetched with the retries of ``bfm.sources.http`` (429 with Retry-After,
5xx, a body cut short); a file over ``max_bytes`` (announced, or counted while streaming) is
TOO_LARGE_MEDIA, an answer 403/404/410 or a URL that is not http(s) MEDIA_UNAVAILABLE, bytes
that are not a file of the kind (an HTML page) CORRUPT_MEDIA; any other failure stops the
download with an error naming the URL. Fetched files wait in ``.media.zip.files/`` beside the
output: a rerun after an interruption reuses them, fetches only the rest and writes the same
zip; the folder is removed once the zip is written.

**Sample** (:func:`sample_media`): PNG images whose colour and texture are the species' own,
WAV recordings (a species' pitch in calls, seeded noise; 2 s at 16 kHz) for the birds (class
Aves; every other species when the list has no ``class``), licences CC-BY-4.0 / CC0-1.0 /
CC-BY-NC-4.0 / CC-BY-SA-4.0 and a creator per medium, and one corrupt image on purpose (the
species table counts it CORRUPT_MEDIA). Same species and seed, same bytes.

No credentials are needed for the media; the GBIF account (``GBIF_USER``, ``GBIF_PWD``,
``GBIF_EMAIL``) is sent only with the DwC-A download request (``gbif_api``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from tqdm import tqdm

from bfm import __version__
from bfm.contracts import occurrence as contract
from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.fileio import atomic_path
from bfm.sources import gbif_api, gbif_dwca, manifest
from bfm.sources import gbif_media_formats as fmt
from bfm.sources.gbif_media_formats import DWCA_NAME, INDEX_COLUMNS, INDEX_NAME, MEDIA_NAME
from bfm.sources.http import Client, DownloadError, Service, Sleep
from bfm.sources.inaturalist import fetch_capped
from bfm.sources.occurrence_base import zip_reader

__all__ = ["DWCA_NAME", "INDEX_COLUMNS", "MEDIA_NAME", "SERVICE", "download", "download_media",
           "make_client", "open_media", "sample_media"]  # fmt: skip

log = logging.getLogger(__name__)
SERVICE = Service("gbif_media", min_interval=0.5)  # many publishers' hosts: two a second
USER_AGENT = f"bfm/{__version__} (Biodiversity Foundation Model data pipeline)"
MAX_BYTES = 10_000_000  # the largest medium stored (an original photo, a few minutes of MP3)
GONE = frozenset({403, 404, 410})  # the medium is not there (any more)
LICENCE = "per medium (multimedia.txt: license, creator, rightsHolder): CC0, CC BY, CC BY-NC"
RECORD_COLUMNS = frozenset({"gbifID", "speciesKey", "species", "scientificName", "license"})
CITATION = "GBIF.org, GBIF Occurrence Download (DwC-A); each medium: its creator and licence"


def make_client(service: Service = SERVICE, sleep: Sleep = time.sleep) -> Client:
    """A client of the media hosts that identifies the project."""
    return Client(service, headers={"User-Agent": USER_AGENT}, sleep=sleep)


def _write(out: Path, rows: list[dict[str, Any]], data: list[Any], request: dict[str, Any],
           url: str, citation: str, q: Quarantine, extra: dict[str, Any]) -> Path:  # fmt: skip
    """The zip, its manifest (request + counts) and its quarantine report."""
    fmt.write_media_zip(out, rows, data)
    request = {**request, "counts": fmt.kind_counts(rows), "read": q.read,
               "dropped": dict(sorted(q.dropped.items())), **extra}  # fmt: skip
    manifest.write_manifest(out, source="gbif", request=request, url=url,
                            licence=fmt.licence_summary(r["license"] for r in rows),
                            citation=citation)  # fmt: skip
    q.write(out, kept=len(rows), extra=extra)
    log.info("%s", q.summary())
    return out


# --- sample ---------------------------------------------------------------------------------
def sample_media(out: str | Path, species: pd.DataFrame, seed: int, per_species: int = 3) -> Path:
    """Write a synthetic ``media.zip`` (module docstring), its manifest and quarantine."""
    out = Path(out)
    rows, data = fmt.sample_media_rows(species, seed, per_species)
    q = Quarantine(str(out))
    q.saw(len(rows))  # the corrupt image is stored: the species table is to find it
    request = {"per_species": per_species, "species": [int(k) for k in species["gbif_key"]],
               "corrupt_on_purpose": 1}  # fmt: skip
    return _write(out, rows, list(data), request, f"sample:gbif-media?seed={seed}",
                  CITATION, q, {"beyond_per_species": 0})  # fmt: skip


# --- download -------------------------------------------------------------------------------
def _strip(table: pd.DataFrame, name: str) -> pd.Series:
    if name not in table.columns:
        return pd.Series("", index=table.index, dtype=object)
    return table[name].fillna("").astype(str).str.strip()


def read_dwca(dwca: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(occurrences, multimedia) of a DwC-A, the occurrences with only the columns the media
    need (``gbif_dwca.read_dwca`` reads all 200-odd: gigabytes for a continent)."""
    if not dwca.exists():
        raise FileNotFoundError(f"{dwca}: no such GBIF download")
    with gbif_dwca.open_zip_member(dwca, "occurrence.txt") as f:
        occurrences = pd.read_csv(f, sep="\t", quoting=csv.QUOTE_NONE, dtype=str,
                                  keep_default_na=False, encoding="utf-8",
                                  usecols=lambda c: c in RECORD_COLUMNS)  # fmt: skip
    if "gbifID" not in occurrences.columns:
        raise ValueError(f"{dwca}:occurrence.txt: missing column(s) ['gbifID']")
    if any(n.endswith(INDEX_NAME) for n in gbif_dwca.members(dwca)):
        required = ("gbifID", "type", "identifier")
        multimedia = gbif_dwca.read_member(dwca, INDEX_NAME, required)
    else:
        multimedia = pd.DataFrame({c: pd.Series(dtype=str) for c in gbif_dwca.MULTIMEDIA_COLUMNS})
    return occurrences, multimedia


def candidates(dwca: Path, species: pd.DataFrame, q: Quarantine) -> pd.DataFrame:
    """The DwC-A's images and sounds of study species, each (gbifID, identifier) once, with
    their raw columns, ``speciesKey`` (the study's), ``kind`` and the resolved ``license``;
    sorted by species (list order), kind, gbifID, identifier. Drops are counted in ``q``."""
    occurrences, multimedia = read_dwca(dwca)
    multimedia = multimedia.assign(gbifID=_strip(multimedia, "gbifID"),
                                   identifier=_strip(multimedia, "identifier"))  # fmt: skip
    kind = multimedia["type"].map(fmt.kind_of)  # as gbif_dwca.multimedia_media reads it
    twice = (kind.notna() & (multimedia["identifier"] != "")
             & multimedia.duplicated(["gbifID", "identifier"])).to_numpy()  # fmt: skip
    if twice.any():
        q.saw(int(twice.sum()))
        first = multimedia[twice].iloc[0]
        q.count(Reason.DUPLICATE, int(twice.sum()), f"gbif:{first['gbifID']}")
    multimedia, kind = multimedia[~twice], kind[~twice]
    media = gbif_dwca.multimedia_media(multimedia, occurrences, species, q)
    chosen = pd.DataFrame({"gbifID": media["record_id"].str.removeprefix("gbif:"),
                           "identifier": media["uri"], "speciesKey": media["species_key"],
                           "kind": media["kind"], "resolved": media["licence"]})  # fmt: skip
    usable = kind.notna() & (multimedia["identifier"] != "")  # what multimedia_media keeps
    raw = multimedia[usable].drop(columns=["speciesKey", "kind"], errors="ignore")
    table = chosen.merge(raw, on=["gbifID", "identifier"], how="left", validate="one_to_one")
    for column in INDEX_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    table["license"] = table.pop("resolved")
    order = {int(k): i for i, k in enumerate(species["gbif_key"])}
    ids = pd.to_numeric(table["gbifID"], errors="coerce")
    table = table.assign(_species=table["speciesKey"].map(order), _kind=table["kind"] == "audio",
                         _id=ids.fillna(np.inf))  # fmt: skip
    table = table.sort_values(["_species", "_kind", "_id", "gbifID", "identifier"], kind="stable")
    return table.drop(columns=["_species", "_kind", "_id"]).reset_index(drop=True)


def _host(url: str) -> str:
    """``scheme://host[:port]`` of a URL, without user info."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _fetcher(client: Client, scratch: Path, max_bytes: int) -> Callable[[str, str], Path | str]:
    """``fetch(url, unit)``: the medium's file in ``scratch``, or the Reason it is not kept.
    Files and refusals are kept in ``scratch`` for a rerun (named by URL and size cap)."""

    def fetch(url: str, unit: str) -> Path | str:
        if urlsplit(url).scheme not in ("http", "https"):
            return Reason.MEDIA_UNAVAILABLE.value
        name = hashlib.sha256(f"{max_bytes} {url}".encode()).hexdigest()[:24]
        path = scratch / f"{name}.bin"
        for reason in (Reason.TOO_LARGE_MEDIA, Reason.MEDIA_UNAVAILABLE):
            if (scratch / f"{name}.{reason.value}").exists():
                return reason.value
        if path.exists():
            return path
        try:
            data = fetch_capped(client, url, unit, max_bytes)
        except DownloadError as err:  # the message names the service, the medium and the URL
            if err.status not in GONE:
                raise
            data, reason = None, Reason.MEDIA_UNAVAILABLE
        else:
            reason = Reason.TOO_LARGE_MEDIA
        with atomic_path(path if data is not None else scratch / f"{name}.{reason.value}") as tmp:
            tmp.write_bytes(data or b"")
        return path if data is not None else reason.value

    return fetch


def _collect(table: pd.DataFrame, per_species: int, q: Quarantine,
             fetch: Callable[[str, str], Path | str]
             ) -> tuple[list[dict[str, Any]], list[Path], int]:  # fmt: skip
    """Up to ``per_species`` stored media per species and kind: (index rows, files, how many
    candidates were left unfetched once enough were stored)."""
    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    stored: dict[tuple[int, str], int] = {}
    numbers: dict[tuple[str, str], int] = {}
    beyond = 0
    bar = tqdm(table.to_dict("records"), desc="gbif media", unit="medium", file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip
    for cand in bar:
        group = (int(cand["speciesKey"]), str(cand["kind"]))
        if stored.get(group, 0) >= per_species:
            beyond += 1
            continue
        url, gid = str(cand["identifier"]), str(cand["gbifID"])
        example = f"gbif:{gid} {url.split('?', 1)[0]}"
        got = fetch(url, f"{cand['kind']} of gbif:{gid}")
        ext = None
        if isinstance(got, Path):
            with open(got, "rb") as f:
                ext = fmt.media_ext(group[1], f.read(16))
        if not isinstance(got, Path) or ext is None:
            q.count(Reason(got) if isinstance(got, str) else Reason.CORRUPT_MEDIA, 1, example)
            continue
        n = numbers[gid, group[1]] = numbers.get((gid, group[1]), 0) + 1
        rows.append({**{c: cand.get(c, "") for c in INDEX_COLUMNS}, "speciesKey": group[0],
                     "member": fmt.member(group[1], gid, n, ext)})  # fmt: skip
        files.append(got)
        stored[group] = stored.get(group, 0) + 1
    return rows, files, beyond


def _dwca_facts(dwca: Path) -> tuple[dict[str, Any], str]:
    """The DwC-A's download key and DOI (its manifest's) and the citation to give."""
    try:
        record = manifest.read_manifest(dwca)
    except (FileNotFoundError, ValueError):
        return {}, CITATION
    sent = record.get("request") or {}
    facts = {k: sent[k] for k in ("download_key", "doi") if sent.get(k)}
    return facts, f"{record['citation']}; each medium: its creator and licence ({INDEX_NAME})"


def download_media(out: str | Path, dwca: str | Path, species: pd.DataFrame,
                   client: Client | None = None, per_species: int = 20,
                   max_bytes: int = MAX_BYTES, sleep: Sleep = time.sleep) -> Path:  # fmt: skip
    """Fetch the study species' images and sounds of the DwC-A ``dwca`` into ``out``
    (``media.zip``) with its manifest and quarantine (module docstring); resumable.
    ``sleep`` is the wait of the client made here when ``client`` is None."""
    out, dwca = Path(out), Path(dwca)
    if per_species < 1 or max_bytes < 1:
        raise ValueError(f"gbif media: per_species ({per_species}) and max_bytes ({max_bytes}) "
                         "must be >= 1")  # fmt: skip
    client = client or make_client(sleep=sleep)
    q = Quarantine(str(out))
    table = candidates(dwca, species, q)
    scratch = out.with_name(f".{out.name}.files")
    scratch.mkdir(parents=True, exist_ok=True)
    rows, files, beyond = _collect(table, per_species, q, _fetcher(client, scratch, max_bytes))
    facts, citation = _dwca_facts(dwca)
    hosts = " ".join(sorted({_host(str(u)) for u in table["identifier"]
                             if urlsplit(str(u)).scheme in ("http", "https")}))  # fmt: skip
    request = {"dwca": dwca.name, **facts, "per_species": per_species, "max_bytes": max_bytes}
    _write(out, rows, list(files), request, hosts or f"file:{dwca.name}", citation, q,
           {"beyond_per_species": beyond})  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)
    return out


MEDIA_PREDICATE = {"type": "in", "key": "MEDIA_TYPE", "values": ["StillImage", "Sound"]}


def download(out: str | Path, species: pd.DataFrame, start_year: int, end_year: int,
             grid: Grid, client: Client | None = None, base_url: str = gbif_api.API,
             dwca: str | Path | None = None, *, poll: float = 60.0,
             **limits: Any) -> Path:  # fmt: skip
    """The DwC-A download of the species over the grid and the years (``gbif_api.download``,
    credentials from the environment) into ``dwca`` (default ``<out parent>/``
    :data:`DWCA_NAME`, kept with its manifest), then :func:`download_media` of it to ``out``
    (``limits``: per_species, max_bytes, sleep)."""
    out = Path(out)
    dwca = Path(dwca) if dwca is not None else out.with_name(DWCA_NAME)
    keys = [int(k) for k in species["gbif_key"]]
    predicate = gbif_api.download_predicate(keys, start_year, end_year, grid)
    predicate["predicates"].append(MEDIA_PREDICATE)  # records with media only
    gbif_api.download(dwca, predicate, "DWCA", client, base_url, poll=poll)
    return download_media(out, dwca, species, client, **limits)


# --- open -----------------------------------------------------------------------------------
def read_index(path: str | Path) -> pd.DataFrame:
    """``multimedia.txt`` of a media zip, checked: every column there, every ``member`` in
    the zip, ``speciesKey`` an integer and ``type`` StillImage or Sound on every row."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GBIF media zip")
    names = set(gbif_dwca.members(path))
    if INDEX_NAME not in names:
        raise ValueError(f"{path}: no {INDEX_NAME} in the media zip (the index of its files)")
    index = gbif_dwca.read_member(path, INDEX_NAME, INDEX_COLUMNS)
    where = f"{path}:{INDEX_NAME}"
    absent = index["member"][~index["member"].isin(names)]
    if len(absent):
        raise ValueError(f"{where}: column 'member' names {absent.iloc[0]!r} (row "
                         f"{absent.index[0] + 2}), which is not in the zip")  # fmt: skip
    bad = index["speciesKey"][~index["speciesKey"].str.fullmatch(r"[1-9]\d*")]
    if len(bad):
        raise ValueError(f"{where}: column 'speciesKey' must hold a positive integer, got "
                         f"{bad.iloc[0]!r} (row {bad.index[0] + 2})")  # fmt: skip
    kinds = index["type"].map(fmt.kind_of)
    if kinds.isna().any():
        row = int(np.flatnonzero(kinds.isna().to_numpy())[0])
        raise ValueError(f"{where}: column 'type' is {index['type'].iloc[row]!r} (row "
                         f"{row + 2}), not one of {list(gbif_dwca.KINDS)}")  # fmt: skip
    index.attrs["source"] = str(path)
    return index.assign(kind=kinds)


def open_media(path: str | Path) -> tuple[pd.DataFrame, Callable[[str], bytes]]:
    """The occurrence contract's media table of a media zip (``record_id`` gbif:<gbifID>,
    ``uri`` the zip member) and the reader of its members."""
    index = read_index(path)
    creator, holder = _strip(index, "creator"), _strip(index, "rightsHolder")
    table = pd.DataFrame({
        "record_id": "gbif:" + _strip(index, "gbifID"),
        "species_key": pd.to_numeric(index["speciesKey"]),
        "kind": index["kind"],
        "uri": index["member"],
        "content": "",
        "licence": _strip(index, "license"),
        "attribution": gbif_dwca._attribution(creator, holder),
    })  # fmt: skip
    return contract.conform_media(table, str(path)), zip_reader(path)
