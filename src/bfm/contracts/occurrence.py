"""The occurrence contract: the records every species source hands to the occurrence tile.

Each occurrence source (GBIF, iNaturalist, Xeno-canto, BOLD) reads its native files into one
table of *records* with the columns of :data:`COLUMNS`, and its media (photos, recordings,
barcode sequences, descriptions) into one table with the columns of :data:`MEDIA_COLUMNS`.
The occurrence tile counts records from all sources together; the species table reads the
media. Nothing a source drops vanishes: every dropped record is counted by reason in a
:class:`Quarantine`, written beside the output as ``<output>.quarantine.json``.

Record columns:

- ``record_id`` (str): ``<source>:<the source's own id>``, unique within a source.
- ``same_as`` (str): the ``record_id`` of the original when this record is a republication
  (a GBIF record of an iNaturalist observation: ``inaturalist:<id>``; of a Xeno-canto
  recording: ``xenocanto:<id>``), else "". The tile counts a record and its republications
  once (:func:`identity`).
- ``source`` (str), ``scientific_name`` (str), ``species_key`` (Int64: the study species'
  GBIF key, NA when the record's name is not a study species).
- ``latitude``, ``longitude`` (float64, degrees; NaN when missing or not a number).
- ``uncertainty_m`` (float64, coordinate uncertainty in metres; NaN when unknown).
- ``start``, ``end`` (datetime64[ns], naive UTC): the interval ``[start, end)`` the record's
  date stands for. A date-time has ``end == start``; a date only, its day; a month or a year,
  the whole month or year (:func:`parse_dates`). NaT when missing or unusable.
- ``precision`` (str): ``time``, ``day``, ``month``, ``year``, ``interval``, ``missing`` or
  ``unusable``.
- ``basis`` (str): Darwin Core basisOfRecord in GBIF's spelling (``HUMAN_OBSERVATION``,
  ``MACHINE_OBSERVATION``, ``PRESERVED_SPECIMEN``, ``MATERIAL_SAMPLE``, ``FOSSIL_SPECIMEN``,
  ``LIVING_SPECIMEN``, ...), "" when unknown.
- ``status`` (str): ``PRESENT`` or ``ABSENT``.
- ``licence`` (str): the record's licence code or URL ("" when unknown).

Media columns: ``record_id``, ``species_key`` (Int64), ``kind`` (one of :data:`MEDIA_KINDS`),
``uri`` (where the medium lies: a URL, or a path relative to the source's raw folder once
downloaded; "" for inline content), ``content`` (inline content: a barcode sequence or a
description text; "" otherwise), ``licence``, ``attribution``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.fileio import atomic_path

COLUMNS = (
    "record_id", "same_as", "source", "scientific_name", "species_key", "latitude",
    "longitude", "uncertainty_m", "start", "end", "precision", "basis", "status", "licence",
)  # fmt: skip
MEDIA_COLUMNS = ("record_id", "species_key", "kind", "uri", "content", "licence", "attribution")
MEDIA_KINDS = ("image", "audio", "edna", "text")
PRECISIONS = ("time", "day", "month", "year", "interval", "missing", "unusable")
QUARANTINE_SCHEMA = "bfm-quarantine/1"


class Reason(StrEnum):
    """Why a record (or medium) was dropped; the keys of a quarantine report."""

    COORDINATES_MISSING = "coordinates_missing"  # empty or not a number
    COORDINATES_OUT_OF_RANGE = "coordinates_out_of_range"  # |lat| > 90 or |lon| > 180
    COORDINATES_ZERO = "coordinates_zero"  # exactly (0, 0): a null island placeholder
    UNCERTAINTY_TOO_LARGE = "uncertainty_too_large"  # above the configured limit
    DATE_MISSING = "date_missing"
    DATE_UNUSABLE = "date_unusable"  # present but not a date ("?", "2019-13-45")
    DATE_COARSER_THAN_STEP = "date_coarser_than_step"  # precision mode "exclude"
    FOSSIL_SPECIMEN = "fossil_specimen"
    LIVING_SPECIMEN = "living_specimen"  # zoos, botanical gardens
    ABSENCE = "absence"  # occurrenceStatus ABSENT: not an occurrence
    NOT_A_STUDY_SPECIES = "not_a_study_species"
    DUPLICATE = "duplicate"  # the same record id twice, or a republication
    OUTSIDE_GRID = "outside_grid"
    OUTSIDE_WINDOW = "outside_window"  # before the study's start or after its end
    CORRUPT_MEDIA = "corrupt_media"
    TOO_LARGE_MEDIA = "too_large_media"
    UNSUPPORTED_MEDIA = "unsupported_media"  # a format bfm cannot decode (MP3, AAC, ...)
    MEDIA_UNAVAILABLE = "media_unavailable"  # the medium's URL answers 403/404/410
    MEDIA_NOT_OPEN = "media_not_open"  # all rights reserved, or an unknown licence
    UNREADABLE_LINE = "unreadable_line"  # a raw line that is not a record (bad JSON, ...)
    NO_DESCRIPTION = "no_description"  # a species the description service does not know


class Quarantine:
    """Counts of dropped records by reason, with an example of each, for one output.

    ``drop(mask, reason, table)`` counts the rows of ``table`` selected by ``mask`` and
    returns the rows kept; the report is written with :meth:`write` (atomic JSON):
    ``{"schema", "output", "read", "kept", "dropped": {reason: n}, "examples": {reason: id}}``.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.read = 0
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def saw(self, n: int) -> None:
        """Count ``n`` records read (before any drop)."""
        self.read += int(n)

    def count(self, reason: Reason, n: int = 1, example: str = "") -> None:
        if n <= 0:
            return
        self.dropped[reason.value] += int(n)
        if example and reason.value not in self.examples:
            self.examples[reason.value] = str(example)

    def drop(self, mask: Any, reason: Reason, table: pd.DataFrame) -> pd.DataFrame:
        """Count the rows of ``table`` where ``mask`` holds under ``reason``; the rest."""
        mask = np.asarray(mask, dtype=bool)
        n = int(mask.sum())
        if n:
            example = ""
            if "record_id" in table.columns:
                example = str(table["record_id"].to_numpy()[mask][0])
            self.count(reason, n, example)
        return table[~mask]

    def merge(self, other: Quarantine) -> None:
        self.read += other.read
        self.dropped.update(other.dropped)
        for k, v in other.examples.items():
            self.examples.setdefault(k, v)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def report(self, kept: int | None = None, extra: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:  # fmt: skip
        return {
            **(extra or {}),
            "schema": QUARANTINE_SCHEMA,
            "output": self.where,
            "read": self.read,
            "kept": self.read - self.n_dropped if kept is None else int(kept),
            "dropped": dict(sorted(self.dropped.items())),
            "examples": dict(sorted(self.examples.items())),
        }

    def write(self, output: str | Path, kept: int | None = None,
              extra: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
        """Write ``<output>.quarantine.json`` (``extra``: more keys) and return its path."""
        path = quarantine_path(output)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.report(kept, extra), indent=1) + "\n")
        return path

    def summary(self) -> str:
        """One line for the log: ``read N, kept K, dropped D (reason n, ...)``."""
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
        return (f"{self.where}: read {self.read}, kept {self.read - self.n_dropped}, "
                f"dropped {self.n_dropped}" + (f" ({parts})" if parts else ""))  # fmt: skip


def quarantine_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".quarantine.json")


def read_quarantine(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    report = json.loads(path.read_text())
    if report.get("schema") != QUARANTINE_SCHEMA:
        raise ValueError(f"{path}: schema is {report.get('schema')!r}, not {QUARANTINE_SCHEMA}")
    return dict(report)


# --- dates -------------------------------------------------------------------------------

_YEAR = re.compile(r"^(\d{4})$")
_MONTH = re.compile(r"^(\d{4})-(\d{1,2})$")
_DAY = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")


def _one(text: str) -> tuple[pd.Timestamp, pd.Timestamp, str] | None:
    """``(start, end, precision)`` of one ISO 8601 date or date-time, None if unusable.

    Zeros stand for "unknown" (Xeno-canto's ``2019-00-00``, ``2019-05-00``): the date is
    taken at the precision that is known, never guessed.
    """
    if m := _YEAR.match(text):
        y = int(m.group(1))
        return pd.Timestamp(y, 1, 1), pd.Timestamp(y + 1, 1, 1), "year"
    if (m := _MONTH.match(text)) or (m := _DAY.match(text)):
        y, mo = int(m.group(1)), int(m.group(2))
        d = int(m.group(3)) if m.re is _DAY else None
        if mo == 0:
            return (pd.Timestamp(y, 1, 1), pd.Timestamp(y + 1, 1, 1), "year") if not d else None
        if not 1 <= mo <= 12:
            return None
        month = pd.Timestamp(y, mo, 1)
        if not d:
            return month, month + pd.offsets.MonthBegin(1), "month"
        if d > month.days_in_month:
            return None
        day = pd.Timestamp(y, mo, d)
        return day, day + pd.Timedelta(days=1), "day"
    if "T" not in text and " " not in text:
        return None
    try:
        moment = pd.Timestamp(text)
    except (ValueError, OverflowError):
        return None
    if moment.tzinfo is not None:
        moment = moment.tz_convert("UTC").tz_localize(None)
    return moment, moment, "time"


def parse_date(value: object) -> tuple[pd.Timestamp, pd.Timestamp, str]:
    """``(start, end, precision)`` of one date value: ISO 8601 dates at any precision,
    date-times (converted to UTC), intervals ``a/b`` (from the start of ``a`` to the end of
    ``b``). Missing and unusable values give NaT with precision ``missing``/``unusable``."""
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    text = text.strip()
    if text in ("", "?", "nan", "NaT", "None", "null", "0000-00-00"):
        return pd.NaT, pd.NaT, "missing"
    if "/" in text:
        a, _, b = text.partition("/")
        first, last = _one(a.strip()), _one(b.strip())
        if first is None or last is None or last[1] < first[0]:
            return pd.NaT, pd.NaT, "unusable"
        end = last[1] if last[2] != "time" else last[0]
        if end == first[1]:  # "2019-05/2019-05": the month itself
            return first
        return first[0], end, "interval"
    one = _one(text)
    return one if one is not None else (pd.NaT, pd.NaT, "unusable")


def parse_dates(values: Iterable[object]) -> pd.DataFrame:
    """:func:`parse_date` of every value: a frame with ``start``, ``end``, ``precision``.

    Values repeat a lot in occurrence tables; each distinct value is parsed once.
    """
    series = pd.Series(list(values) if not isinstance(values, pd.Series) else values)
    codes, uniques = pd.factorize(series.astype(str).str.strip(), use_na_sentinel=False)
    parsed = [parse_date(u) for u in uniques]
    start = pd.DatetimeIndex([p[0] for p in parsed]) if parsed else pd.DatetimeIndex([])
    end = pd.DatetimeIndex([p[1] for p in parsed]) if parsed else pd.DatetimeIndex([])
    precision = np.array([p[2] for p in parsed], dtype=object)
    return pd.DataFrame(
        {
            "start": start[codes] if len(codes) else pd.DatetimeIndex([]),
            "end": end[codes] if len(codes) else pd.DatetimeIndex([]),
            "precision": precision[codes] if len(codes) else np.array([], dtype=object),
        },
        index=series.index,
    )


# --- tables ------------------------------------------------------------------------------


def empty() -> pd.DataFrame:
    """A record table with no rows and the contract's dtypes."""
    return conform(pd.DataFrame({c: [] for c in COLUMNS}), "<empty>")


def conform(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """``table`` with exactly the record columns in the contract's dtypes.

    Raises ValueError naming ``where`` and the missing columns.
    """
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{where}: record table lacks column(s) {missing}")
    out = table.loc[:, list(COLUMNS)].copy()
    for c in ("record_id", "same_as", "source", "scientific_name", "precision", "basis",
              "status", "licence"):  # fmt: skip
        out[c] = out[c].fillna("").astype(str)
    out["species_key"] = pd.to_numeric(out["species_key"], errors="coerce").astype("Int64")
    for c in ("latitude", "longitude", "uncertainty_m"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(np.float64)
    for c in ("start", "end"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    return out.reset_index(drop=True)


def empty_media() -> pd.DataFrame:
    return conform_media(pd.DataFrame({c: [] for c in MEDIA_COLUMNS}), "<empty>")


def conform_media(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """``table`` with exactly the media columns; an unknown ``kind`` is an error."""
    missing = [c for c in MEDIA_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{where}: media table lacks column(s) {missing}")
    out = table.loc[:, list(MEDIA_COLUMNS)].copy()
    for c in ("record_id", "kind", "uri", "content", "licence", "attribution"):
        out[c] = out[c].fillna("").astype(str)
    out["species_key"] = pd.to_numeric(out["species_key"], errors="coerce").astype("Int64")
    bad = sorted(set(out["kind"]) - set(MEDIA_KINDS))
    if bad:
        raise ValueError(f"{where}: media kind(s) {bad} are not one of {list(MEDIA_KINDS)}")
    return out.reset_index(drop=True)


def match_species(names: pd.Series, species: pd.DataFrame) -> pd.Series:
    """The study's GBIF key of each scientific name (``Genus species``, case-insensitive,
    author and subspecies ignored), NA where the name is not a study species.

    ``species`` is the species list (``gbif_key``, ``scientific_name``).
    """
    lookup = {_binomial(n): int(k) for n, k in zip(species["scientific_name"],
                                                    species["gbif_key"], strict=True)}  # fmt: skip
    keys = [lookup.get(_binomial(n)) for n in names.astype(str)]
    return pd.Series(keys, index=names.index, dtype="Int64")


def _binomial(name: str) -> str:
    return " ".join(str(name).lower().split()[:2])


def identity(table: pd.DataFrame) -> pd.Series:
    """The key under which a record is counted: its ``same_as`` if set, else its id."""
    same = table["same_as"].astype(str)
    return same.where(same != "", table["record_id"].astype(str))


def clean(
    table: pd.DataFrame,
    quarantine: Quarantine,
    *,
    max_uncertainty_m: float | None = None,
) -> pd.DataFrame:
    """Drop, and count by reason, the records no tile may count (the rules of the contract).

    In order: repeated ``record_id`` (the first is kept), absences, fossil and living
    specimens, missing, out-of-range and (0, 0) coordinates, uncertainty above
    ``max_uncertainty_m`` (unknown uncertainty is kept), missing and unusable dates, names
    that are not study species. ``quarantine`` has seen the rows (``saw``) before.
    """
    q = quarantine
    t = table
    t = q.drop(t["record_id"].duplicated(keep="first").to_numpy(), Reason.DUPLICATE, t)
    t = q.drop((t["status"].str.upper() == "ABSENT").to_numpy(), Reason.ABSENCE, t)
    basis = t["basis"].str.upper()
    t = q.drop((basis == "FOSSIL_SPECIMEN").to_numpy(), Reason.FOSSIL_SPECIMEN, t)
    t = q.drop((t["basis"].str.upper() == "LIVING_SPECIMEN").to_numpy(), Reason.LIVING_SPECIMEN, t)
    lat, lon = t["latitude"].to_numpy(), t["longitude"].to_numpy()
    t = q.drop(np.isnan(lat) | np.isnan(lon), Reason.COORDINATES_MISSING, t)
    lat, lon = t["latitude"].to_numpy(), t["longitude"].to_numpy()
    t = q.drop((np.abs(lat) > 90) | (np.abs(lon) > 180), Reason.COORDINATES_OUT_OF_RANGE, t)
    t = q.drop((t["latitude"] == 0).to_numpy() & (t["longitude"] == 0).to_numpy(),
               Reason.COORDINATES_ZERO, t)  # fmt: skip
    if max_uncertainty_m is not None:
        too_far = (t["uncertainty_m"] > max_uncertainty_m).to_numpy()  # NaN compares False
        t = q.drop(too_far, Reason.UNCERTAINTY_TOO_LARGE, t)
    t = q.drop((t["precision"] == "missing").to_numpy(), Reason.DATE_MISSING, t)
    t = q.drop((t["precision"] == "unusable").to_numpy(), Reason.DATE_UNUSABLE, t)
    t = q.drop(t["species_key"].isna().to_numpy(), Reason.NOT_A_STUDY_SPECIES, t)
    return t


def deduplicate(tables: Mapping[str, pd.DataFrame], quarantine: Quarantine) -> pd.DataFrame:
    """One table of the sources' cleaned records, each occurrence once.

    A record and its republications share an :func:`identity`; the one kept is the
    original's own record when present (the source that holds the media and the finest
    date), else the first republication in the order of ``tables``.
    """
    frames = [t for t in tables.values() if len(t)]
    if not frames:
        return empty()
    allrec = pd.concat(frames, ignore_index=True)
    ident = identity(allrec)
    original = (allrec["same_as"] == "").to_numpy()
    order = np.lexsort((np.arange(len(allrec)), ~original))  # originals first, stable
    ranked = allrec.iloc[order]
    repeat = ident.iloc[order].duplicated(keep="first").to_numpy()
    return quarantine.drop(repeat, Reason.DUPLICATE, ranked).sort_index().reset_index(drop=True)


# --- steps -------------------------------------------------------------------------------

PRECISION_MODES = ("exclude", "spread")


def to_steps(
    start: pd.DatetimeIndex,
    end: pd.DatetimeIndex,
    times: pd.DatetimeIndex,
    ends: pd.DatetimeIndex,
    mode: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which model steps ``[times[k], ends[k])`` each record's interval counts in.

    A record whose interval ``[start, end)`` (a point when ``end == start``) lies within one
    step counts 1 there. One that is coarser than a step or straddles steps (a date-only
    record at a 6-hourly step, a month at a daily step):

    - ``exclude``: counts nowhere; it is flagged in ``coarse`` when it overlaps a step;
    - ``spread``: counts in every step it overlaps, weighted by the fraction of its interval
      that the step covers (a date-only record at 6h steps: 1/4 in each of its day's four
      steps; never all at 00 UTC).

    Returns ``(record, step, weight, coarse)``: parallel arrays of the (record, step) pairs
    and their weights, and a per-record mask of the records excluded for their precision.
    """
    if mode not in PRECISION_MODES:
        raise ValueError(f"date precision mode {mode!r} is not one of {list(PRECISION_MODES)}")
    s = np.asarray(start.values, dtype="datetime64[ns]")
    e = np.asarray(end.values, dtype="datetime64[ns]")
    t0 = np.asarray(times.values, dtype="datetime64[ns]")
    t1 = np.asarray(ends.values, dtype="datetime64[ns]")
    n = len(s)
    valid = ~(np.isnat(s) | np.isnat(e))
    point = valid & (e == s)
    # a point: the step with t0 <= s < t1; an interval: the steps with t0 < e and t1 > s
    pos = np.searchsorted(t0, s, side="right") - 1
    in_step = point & (pos >= 0)
    in_step[in_step] &= s[in_step] < t1[pos[in_step]]
    lo = np.searchsorted(t1, s, side="right")
    hi = np.searchsorted(t0, e, side="left") - 1
    span = valid & ~point & (hi >= lo)
    within = span & (lo == hi)
    within[within] &= (s[within] >= t0[lo[within]]) & (e[within] <= t1[lo[within]])
    rec = [np.flatnonzero(in_step), np.flatnonzero(within)]
    stp = [pos[in_step], lo[within]]
    wts = [np.ones(int(in_step.sum())), np.ones(int(within.sum()))]
    coarse = span & ~within
    if mode == "spread" and coarse.any():
        idx = np.flatnonzero(coarse)
        counts = hi[idx] - lo[idx] + 1
        r = np.repeat(idx, counts)
        k = np.repeat(lo[idx], counts) + (np.arange(counts.sum()) - np.repeat(
            np.cumsum(counts) - counts, counts))  # fmt: skip
        overlap = np.minimum(e[r], t1[k]) - np.maximum(s[r], t0[k])
        length = (e[r] - s[r]).astype(np.float64)
        rec.append(r)
        stp.append(k)
        wts.append(overlap.astype(np.float64) / length)
        coarse = np.zeros(n, dtype=bool)
    return (np.concatenate(rec).astype(np.int64), np.concatenate(stp).astype(np.int64),
            np.concatenate(wts), coarse)  # fmt: skip
