"""BOLD Systems (v5 portal API): DNA barcode records, their places, dates and taxonomy.

**Wire format** (``https://portal.boldsystems.org/api/docs``; all GET, no key for public
records). Each species takes three steps:

1. ``GET <api>/query/preprocessor?query=tax:<Genus species>`` -> ``{"successful_terms":
   [{"submitted", "matched": "tax:species:<Genus species>"}], "failed_terms": [...]}``. A
   species BOLD does not know (in ``failed_terms``, or no successful term) is logged, listed
   in the manifest (``not_found``) and skipped.
2. ``GET <api>/query?query=<the matched terms, ;-joined>&extent=full`` -> ``{"query_id"}``,
   a token valid about a day.
3. ``GET <api>/documents/<query_id, URL-encoded>/download?format=json`` -> JSON Lines, one
   BCDM record per line: ``processid``, ``inst``, ``kingdom`` .. ``species``, ``coord``
   (``[lat, lon]`` or null), ``coord_accuracy``, ``collection_date_start``/``_end``,
   ``marker_code``, ``nuc`` (the sequence), ...

**Resume**: every answer lands in a scratch folder beside the raw file, one subfolder per
species (its GBIF key). Steps 1 and 2 go through ``httpjson.fetch_json`` (answers kept by
URL), so a rerun asks neither again and step 3 resumes with the *same* query id, against the
same result set; a new id would make a ``Range`` resume append bytes of another answer. Step 3
is a ``Client.download`` (resumed with ``Range``, size-checked) into ``documents.jsonl``; a
complete one is reused. A query id that has expired by the rerun (HTTP 400, 404 or 410 at
step 3) is discarded with its partial body and asked for once more. A body with lines that are
not JSON (cut without a Content-Length) is fetched once more; a second such body is kept as
served and :func:`records` counts the lines.

**Raw file** ``records.jsonl.gz``: the lines of every species, unchanged, sorted by
``processid`` (lines that are not JSON last), gzip without a timestamp: same lines, same
bytes. The manifest's request lists each species' query, matched terms and record count, and
those not found. Query ids are left out: they expire within a day and differ between runs.

**Records** (:func:`records`, the occurrence contract): ``bold:<processid>``, basis
``MATERIAL_SAMPLE``, ``same_as`` "": BOLD records are republished in GBIF, but nothing in a
BCDM record names the GBIF record, and catalogue numbers do not match reliably, so the two
are not linked. Dates: ``collection_date_start``/``_end`` as an interval (each at its own
precision), one of them alone at its precision. Media: one ``edna`` row per sequence,
uppercase, gaps ``-`` removed; a sequence with a character outside the IUPAC nucleotide codes
is dropped as ``corrupt_media``. A line that is not a JSON object with a ``processid`` is
dropped as ``unreadable_line``; a repeated ``processid`` as ``duplicate``.

**Sample** (:func:`sample`; ``bold_formats``): 10 to 20 records per species, positions inside
the grid, dates in the window (day, interval, or start only), sequences of 642-658 bp drawn
from a first-order Markov chain of the species' own (distinct k-mer profiles) with 1.5 %
substitutions; a few records without ``coord``, gaps and lowercase in some, and in the first
species one invalid sequence and one impossible date (``YYYY-02-30``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from tqdm import tqdm

from bfm.contracts import occurrence as oc
from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.sources import manifest
from bfm.sources.base import Study, register
from bfm.sources.bold_formats import binomial, read_lines, species_records, write_lines
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.httpjson import fetch_json, scratch_dir
from bfm.sources.occurrence_base import OccurrenceSource, inline_media
from bfm.species_list import HIGHER, read_species

log = logging.getLogger(__name__)

API = "https://portal.boldsystems.org/api"
SERVICE = Service("bold", min_interval=1.0)  # no documented limit: one request a second
RAW_NAME = "records.jsonl.gz"
LICENCE = "BOLD public records: licences vary by record (keep processid and inst)"
CITATION = ("Ratnasingham S, Hebert PDN (2007) BOLD: The Barcode of Life Data System. "
            "Molecular Ecology Notes 7:355-364; https://portal.boldsystems.org")  # fmt: skip
EXPIRED = frozenset({400, 404, 410})  # step 3 answers for a query id BOLD no longer knows
IUPAC = "ACGTURYSWKMBDHVN"


def query_of(name: str) -> str:
    """The preprocessor query of a species: ``tax:<Genus species>``."""
    return f"tax:{binomial(name)}"


def entry(key: int, name: str, matched: list[str], n: int) -> dict[str, Any]:
    """One species in the manifest's request."""
    return {"gbif_key": key, "query": query_of(name), "matched": ";".join(matched), "records": n}


def request_of(entries: list[dict[str, Any]], not_found: list[str]) -> dict[str, Any]:
    """The manifest's request: the format asked for, each species' query and its count."""
    return {"endpoint": "documents/<query_id>/download", "format": "json", "extent": "full",
            "species": entries, "not_found": not_found,
            "records": sum(int(e["records"]) for e in entries)}  # fmt: skip


# --- download --------------------------------------------------------------------------------
def _matched(body: Any, unit: str) -> list[str]:
    """The matched terms of a preprocessor answer ([] when BOLD does not know the name)."""
    if not isinstance(body, dict) or "successful_terms" not in body:
        raise DownloadError(f"bold {unit}: the preprocessor answer is not {{successful_terms, "
                            f"failed_terms}}: {json.dumps(body)[:200]}")  # fmt: skip
    terms = [t.get("matched") for t in body.get("successful_terms") or [] if isinstance(t, dict)]
    return [str(t) for t in terms if t]


def _query_id(client: Client, base: str, matched: list[str], unit: str, folder: Path) -> str:
    params = {"query": ";".join(matched), "extent": "full"}
    body = fetch_json(client, f"{base}/query", params, f"{unit} query", folder)
    if not isinstance(body, dict) or not body.get("query_id"):
        shutil.rmtree(folder, ignore_errors=True)  # never reuse an answer without an id
        raise DownloadError(f"bold {unit} query: no query_id in the answer: "
                            f"{json.dumps(body)[:200]}")  # fmt: skip
    return str(body["query_id"])


def _bad_lines(path: Path) -> int:
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    json.loads(line)
                except ValueError:
                    bad += 1
    return bad


def _documents(client: Client, base: str, matched: list[str], unit: str, folder: Path) -> Path:
    """Step 2 and 3 of one species into ``folder/documents.jsonl`` (see the docstring)."""
    out = folder / "documents.jsonl"
    if out.exists():
        return out
    for renewal in range(2):
        query_id = _query_id(client, base, matched, unit, folder / "query")
        url = f"{base}/documents/{quote(query_id, safe='')}/download?format=json"
        try:
            for look in range(2):
                client.download(url, out, f"{unit} documents")
                bad = _bad_lines(out)
                if not bad:
                    break
                if look == 0:
                    out.unlink()
                    log.warning("bold %s: %d line(s) are not JSON; fetching once more", unit, bad)
                    client.sleep(client.service.backoff)
                else:
                    log.warning("bold %s: %d line(s) are not JSON again; kept as served", unit, bad)
            return out
        except DownloadError as err:
            if err.status not in EXPIRED or renewal:
                raise
            log.warning(
                "bold %s: query id refused (HTTP %s): asking for a new one", unit, err.status
            )
            shutil.rmtree(folder / "query", ignore_errors=True)
            out.with_name(out.name + ".part").unlink(missing_ok=True)
    raise AssertionError("unreachable")


def download(out: str | Path, species: pd.DataFrame, client: Client | None = None,
             base_url: str = API) -> Path:  # fmt: skip
    """Every species' barcode records into ``out`` (``records.jsonl.gz``) and its manifest."""
    out, client = Path(out), client or Client(SERVICE)
    base, scratch = base_url.rstrip("/"), scratch_dir(out)
    lines: list[str] = []
    entries: list[dict[str, Any]] = []
    not_found: list[str] = []
    pairs = list(zip(species["gbif_key"], species["scientific_name"], strict=True))
    for key, name in tqdm(pairs, desc="bold species", unit="species", file=sys.stderr):
        unit, folder = binomial(name), scratch / str(int(key))
        params = {"query": query_of(name)}
        terms = fetch_json(client, f"{base}/query/preprocessor", params, f"{unit} terms",
                           folder / "terms")  # fmt: skip
        try:
            matched = _matched(terms, unit)
        except DownloadError:
            shutil.rmtree(folder / "terms", ignore_errors=True)
            raise
        if not matched:
            log.warning(
                "bold %s: BOLD does not know %r (failed_terms); skipped", unit, query_of(name)
            )
            not_found.append(binomial(name))
            continue
        body = _documents(client, base, matched, unit, folder)
        got = [s for s in body.read_text(encoding="utf-8").splitlines() if s.strip()]
        entries.append(entry(int(key), str(name), matched, len(got)))
        lines += got
    if not_found:
        log.warning("bold: %d of %d species not found: %s", len(not_found), len(pairs),
                    ", ".join(not_found))  # fmt: skip
    write_lines(out, lines)
    shutil.rmtree(scratch, ignore_errors=True)
    manifest.write_manifest(out, source="bold", request=request_of(entries, not_found),
                            url=f"{base}/documents", licence=LICENCE,
                            citation=CITATION)  # fmt: skip
    return out


# --- records ---------------------------------------------------------------------------------
FIELDS = ("processid", "inst", "species", "coord", "coord_accuracy", "collection_date_start",
          "collection_date_end", "nuc", "marker_code", "license")  # fmt: skip


def _parse(lines: list[str], q: Quarantine) -> pd.DataFrame:
    rows = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("processid") in (None, ""):
            q.count(Reason.UNREADABLE_LINE, example=f"line {i + 1}")
            continue
        rows.append({f: record.get(f) for f in FIELDS})
    return pd.DataFrame(rows, columns=list(FIELDS), dtype=object)


def _text(values: pd.Series) -> pd.Series:
    return values.where(values.notna(), "").astype(str).str.strip()


def _coord(value: Any) -> tuple[float, float]:
    """``[lat, lon]`` (JSON) or ``"[lat,lon]"`` (as in TSV); NaN when not two numbers."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return np.nan, np.nan
    if isinstance(value, list | tuple) and len(value) == 2:
        try:
            return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            pass
    return np.nan, np.nan


def _number(value: Any) -> float:
    """A number, or a numeric string, as float; NaN for anything else (null, "ca. 5 km")."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return np.nan
    try:
        return float(value)
    except ValueError:
        return np.nan


def _dates(frame: pd.DataFrame) -> pd.DataFrame:
    start, end = _text(frame["collection_date_start"]), _text(frame["collection_date_end"])
    both = (start != "") & (end != "")
    text = start.where(~both, start + "/" + end).where(start != "", end)
    return oc.parse_dates(text)


def _media(frame: pd.DataFrame, keys: pd.Series, q: Quarantine) -> pd.DataFrame:
    nuc = _text(frame["nuc"])
    has = nuc != ""
    seq = nuc.str.upper().str.replace("-", "", regex=False)
    corrupt = has & ~seq.str.fullmatch(f"[{IUPAC}]+")
    ids = frame["record_id"]
    if corrupt.any():
        q.count(Reason.CORRUPT_MEDIA, int(corrupt.sum()), str(ids[corrupt].iloc[0]))
    keep = has & ~corrupt
    inst = _text(frame["inst"])
    pid = _text(frame["processid"])
    attribution = pid.where(inst == "", pid + " (" + inst + ")")
    media = pd.DataFrame({"record_id": ids, "species_key": keys, "kind": "edna", "uri": "",
                          "content": seq, "licence": _text(frame["license"]),
                          "attribution": attribution})[keep.to_numpy()]  # fmt: skip
    return oc.conform_media(media, "bold media")


def records(path: str | Path, species: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame,
                                                              Quarantine]:  # fmt: skip
    """The raw file's records (contract table), their sequences (media) and what was dropped.

    The quarantine's ``read`` counts lines; ``corrupt_media`` drops a sequence, not its record.
    """
    q = Quarantine(str(path))
    lines = read_lines(path)
    q.saw(len(lines))
    frame = _parse(lines, q)
    ids = "bold:" + _text(frame["processid"])
    frame = q.drop(ids.duplicated(keep="first").to_numpy(), Reason.DUPLICATE,
                   frame.assign(record_id=ids)).reset_index(drop=True)  # fmt: skip
    names = _text(frame["species"])
    keys = oc.match_species(names, species)
    coords = [_coord(v) for v in frame["coord"]]
    dates = _dates(frame)
    table = pd.DataFrame({
        "record_id": frame["record_id"], "same_as": "", "source": "bold",
        "scientific_name": names, "species_key": keys,
        "latitude": [c[0] for c in coords], "longitude": [c[1] for c in coords],
        "uncertainty_m": [_number(v) for v in frame["coord_accuracy"]],
        "start": dates["start"], "end": dates["end"], "precision": dates["precision"],
        "basis": "MATERIAL_SAMPLE", "status": "PRESENT", "licence": _text(frame["license"]),
    })  # fmt: skip
    where = str(path)
    return oc.conform(table, where), _media(frame, keys, q), q


def sample(out: str | Path, species: pd.DataFrame, start: str, end: str, grid: Grid,
           seed: int = 0) -> Path:  # fmt: skip
    """Write a synthetic ``records.jsonl.gz`` (BCDM JSON Lines, positions inside ``grid``,
    dates in ``[start, end]``) and its manifest, whose request is a download's."""
    days = pd.date_range(start, end, freq="D")
    if len(days) == 0:
        raise ValueError(f"bold: --end {end} is before --start {start}")
    lines, entries = [], []
    for index in range(len(species)):
        row = species.iloc[index]
        key, name = int(row["gbif_key"]), str(row["scientific_name"])
        higher = {r: str(row.get(r, "")) for r in HIGHER}
        got = species_records(index, key, name, higher, days, grid, seed)
        lines += [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in got]
        entries.append(entry(int(key), str(name), [f"tax:species:{binomial(name)}"], len(got)))
    path = write_lines(Path(out), lines)
    manifest.write_manifest(path, source="bold", request=request_of(entries, []),
                            url=f"sample:bold?seed={seed}", licence=LICENCE,
                            citation=CITATION)  # fmt: skip
    return path


class BOLD(OccurrenceSource):
    """BOLD: one raw file ``records.jsonl.gz`` (BCDM records of every species)."""

    name = "bold"
    licence = LICENCE
    citation = CITATION
    service = "bold"
    raw_name = RAW_NAME

    def _check(self, name: str) -> None:
        if name != RAW_NAME:
            raise ValueError(f"bold: raw file {name!r} is not {RAW_NAME!r}")

    def sample(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        return sample(out, read_species(study.species), study.start, study.end, study.grid,
                      self.seed(study))  # fmt: skip

    def download(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        return download(out, read_species(study.species))

    def media_names(self, study: Study) -> list[str]:
        return [RAW_NAME]

    def media(self, files: Sequence[str | Path], study: Study
              ) -> tuple[pd.DataFrame, Callable[[str], bytes]]:  # fmt: skip
        (path,) = files
        return records(path, read_species(study.species))[1], inline_media(path)

    def records(self, files: Sequence[str | Path], study: Study
                ) -> tuple[pd.DataFrame, pd.DataFrame, Quarantine]:  # fmt: skip
        (path,) = files
        return records(path, read_species(study.species))


register(BOLD())
