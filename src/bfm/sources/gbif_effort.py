"""GBIF sampling effort: records of a whole target group (a class: Aves, Mammalia) per class,
day and grid cell, from GBIF's SQL download (a "species occurrence cube").

Why: no record of a study species in a cell is an absence only where somebody looked. The
effort of a cell-day is the number of records of *any* species of the study species' class.

**Request** ``POST <api>/occurrence/download/request`` (HTTP Basic), JSON ``{"sendNotification":
false, "notificationAddresses": [email], "format": "SQL_TSV_ZIP", "sql": "SELECT ..."}``; 201
with the key as plain text, 420 waited out like 429; then the status polling and the zip of the
predicate downloads (``gbif_api``). The SQL (:func:`effort_sql`) reads the one table
``occurrence`` (no join, sub-query or ``*``; every selected non-aggregate is in ``GROUP BY``)
and counts the records the species layer would keep: PRESENT, inside the grid's box (the
half-open rule of ``Grid.contains``), no geospatial issue, not FOSSIL_SPECIMEN or
LIVING_SPECIMEN, year, month and day known, and a coordinate uncertainty of at most
``max_uncertainty_m`` (10000 m, the occurrence cleaning's default; unknown is kept, as there).
The cell is ``Grid.index_of`` in SQL with the same double literals, so a point on an edge lands
in the same cell: row ``FLOOR((lat_max + res/2 - decimalLatitude) / res)`` (0 the northernmost),
column ``FLOOR((decimalLongitude - (lon_min - res/2)) / res)``.

**Answer** (``effort.zip``, kept as GBIF sends it): one tab-separated member, whatever its name
(the one ``.csv``/``.tsv``/``.txt``), opened by ``gbif_dwca.open_zip_member`` (no path traversal,
no zip bomb); a header of the aliases ``classkey, year, month, day, cell_row, cell_col, n``
(read case-insensitively); one row per class, day and cell with a record. GBIF's day is the
event's calendar day, taken as the UTC day.

The key and the SQL go to ``<out>.request.json`` at once: a rerun with the same SQL polls that
key and never requests again; a file whose manifest verifies and records the same SQL is kept.
The manifest records the key, the SQL and the DOI (the citation). Credentials
(``gbif_api.credentials``) go with the POST only.

:func:`read_effort` drops, and counts in a Quarantine, rows with non-numeric or negative values
(``unreadable_line``), no or impossible dates, days outside the window, cells outside the grid.
:func:`effort_counts` sums per model step: a day lies within a daily or monthly step; at a step
finer than a day (6h) its count is spread evenly over the day's steps (1/4 each). Effort is an
intensity (observers out that day), so spreading is right here, unlike the species records,
whose precision rule may exclude them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from bfm.contracts import occurrence as contract
from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.fileio import atomic_path, write_text_atomic
from bfm.sources import gbif_api, gbif_dwca, manifest
from bfm.sources.gbif_api import API
from bfm.sources.http import Client

log = logging.getLogger(__name__)
EFFORT_NAME = "effort.zip"
FORMAT = "SQL_TSV_ZIP"
STATE_SCHEMA = "bfm-gbif-sql-request/1"
MAX_UNCERTAINTY_M = 10_000.0  # the occurrence cleaning's default
COLUMNS = ("classkey", "year", "month", "day", "cell_row", "cell_col", "n")
METADATA = ("citations.txt", "rights.txt")  # GBIF's download metadata, never the table
CHUNK_ROWS = 2_000_000
RATE_PER_KM2_DAY = 4e-4  # sample background records per km2 and day at an observer hotspot
EXTRA_CLASSES = (131, 358, 216)  # Amphibia, Reptilia, Insecta: a class no study species has


# --- the query ------------------------------------------------------------------------------
def _lit(x: float) -> str:
    """A float as an SQL literal that parses to the same double (shortest round trip)."""
    text = repr(float(x))
    if not re.fullmatch(r"-?\d+\.\d+", text):
        raise ValueError(f"gbif effort: {x!r} has no plain decimal literal")
    return text


def cell_expressions(grid: Grid) -> tuple[str, str]:
    """The SQL of ``Grid.index_of``: (row, column) of ``decimalLatitude/Longitude``."""
    res, west = _lit(grid.res), grid.lon_min - grid.res / 2
    # x - (-a) is x + a in IEEE arithmetic; "- -a" would be one typo away from an SQL comment
    shift = f"- {_lit(west)}" if west >= 0 else f"+ {_lit(-west)}"
    row = f"FLOOR(({_lit(grid.lat_max + grid.res / 2)} - decimalLatitude) / {res})"
    return row, f"FLOOR((decimalLongitude {shift}) / {res})"


def effort_sql(class_keys: Sequence[int], start_year: int, end_year: int, grid: Grid,
               max_uncertainty_m: float | None = MAX_UNCERTAINTY_M) -> str:  # fmt: skip
    """The query of the effort cube (module docstring); one condition a line."""
    keys = sorted({int(k) for k in class_keys})
    if not keys or keys[0] <= 0 or end_year < start_year:
        raise ValueError(f"gbif effort: need positive class keys ({keys}) and start year "
                         f"{start_year} <= end year {end_year}")  # fmt: skip
    lat, lon = grid.lat_edges(), grid.lon_edges()
    row, col = cell_expressions(grid)
    where = [f"classKey IN ({', '.join(map(str, keys))})", "occurrenceStatus = 'PRESENT'",
             "hasGeospatialIssues = FALSE",
             "basisOfRecord NOT IN ('FOSSIL_SPECIMEN', 'LIVING_SPECIMEN')",
             f"decimalLatitude > {_lit(lat[-1])}", f"decimalLatitude <= {_lit(lat[0])}",
             f"decimalLongitude >= {_lit(lon[0])}", f"decimalLongitude < {_lit(lon[-1])}",
             f'"year" >= {int(start_year)}', f'"year" <= {int(end_year)}',
             '"month" IS NOT NULL', '"day" IS NOT NULL']  # fmt: skip
    if max_uncertainty_m is not None:
        where.append(f"(coordinateUncertaintyInMeters IS NULL OR coordinateUncertaintyInMeters"
                     f" <= {_lit(max_uncertainty_m)})")  # fmt: skip
    group = ["classKey", '"year"', '"month"', '"day"', row, col]
    select = ["classKey AS classkey", *group[1:4], f"{row} AS cell_row", f"{col} AS cell_col",
              "COUNT(*) AS n"]  # fmt: skip
    return ("SELECT\n  " + ",\n  ".join(select) + "\nFROM occurrence\nWHERE\n  "
            + "\n  AND ".join(where) + "\nGROUP BY\n  " + ",\n  ".join(group))  # fmt: skip


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _bar(items: Any, desc: str, **kw: Any) -> Any:
    """A progress bar to stderr (the rule's log), sparse when stderr is not a terminal."""
    return tqdm(items, desc=desc, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0, **kw)  # fmt: skip


# --- the download ---------------------------------------------------------------------------
def request_sql_download(sql: str, account: gbif_api.Credentials, client: Client | None = None,
                         base_url: str = API) -> str:  # fmt: skip
    """Request the SQL download; its key. HTTP 420 is waited out like 429."""
    client = client or Client(gbif_api.SERVICE)
    body = {"sendNotification": False, "notificationAddresses": [account.email],
            "format": FORMAT, "sql": sql}  # fmt: skip
    return gbif_api.post_request(body, "gbif effort request", account, client, base_url)


def _kept(out: Path, sql: str) -> bool:
    if not (out.exists() and manifest.manifest_path(out).exists()):
        return False
    try:
        done = manifest.verify(out)["request"]
    except (ValueError, OSError) as err:
        log.warning("%s: fetching again (%s)", out, err)
        return False
    return bool(done.get("sql") == sql and done.get("format") == FORMAT)


def download(out: str | Path, class_keys: Sequence[int], start_year: int, end_year: int,
             grid: Grid, client: Client | None = None, base_url: str = API, poll: float = 60.0,
             env: Mapping[str, str] | None = None, max_polls: int = 10_000,
             max_uncertainty_m: float | None = MAX_UNCERTAINTY_M) -> Path:  # fmt: skip
    """Request (once), wait for and fetch the effort cube to ``out`` (module docstring)."""
    out, client = Path(out), client or Client(gbif_api.SERVICE)
    sql = effort_sql(class_keys, start_year, end_year, grid, max_uncertainty_m)
    if _kept(out, sql):
        return out
    state = gbif_api.state_path(out)
    saved = json.loads(state.read_text()) if state.exists() else {}
    if saved.get("sql") == sql and saved.get("key"):
        key = str(saved["key"])
        log.info("gbif effort: polling key %s of %s (no new request)", key, state)
    else:
        key = request_sql_download(sql, gbif_api.credentials(env), client, base_url)
        write_text_atomic(state, json.dumps({"schema": STATE_SCHEMA, "key": key, "format": FORMAT,
                          "sql": sql, "api": base_url, "requested_at": _now()},
                          indent=1) + "\n")  # fmt: skip
    info = gbif_api.wait_for_download(key, poll, client, base_url, max_polls)
    gbif_api.fetch_download(key, out, client, base_url, info, fmt=FORMAT)
    doi, created = str(info.get("doi")), str(info.get("created"))
    request = {"download_key": key, "doi": doi, "format": FORMAT, "sql": sql,
               "class_keys": sorted({int(k) for k in class_keys}),
               "years": [int(start_year), int(end_year)], "grid": grid.to_dict(),
               "max_uncertainty_m": max_uncertainty_m, "totalRecords": info.get("totalRecords"),
               "created": created}  # fmt: skip
    manifest.write_manifest(out, source="gbif", request=request, url=str(info["downloadLink"]),
                            licence=str(info.get("license") or gbif_api.LICENCE),
                            citation=gbif_api.citation(doi, created))  # fmt: skip
    state.unlink(missing_ok=True)
    return out


# --- the sample -----------------------------------------------------------------------------
def species_classes(species: pd.DataFrame) -> dict[int, int]:
    """``gbif_key -> class_key`` of the species list; a missing or bad class is an error."""
    if "class_key" not in species.columns:
        raise ValueError("gbif effort: the species list lacks column 'class_key' (the GBIF "
                         "classKey of each species' target group)")  # fmt: skip
    species_keys = pd.to_numeric(species["gbif_key"], errors="coerce")
    keys = pd.to_numeric(species["class_key"], errors="coerce")
    bad = (keys.isna() | species_keys.isna()).to_numpy(bool) | (keys.fillna(0) <= 0).to_numpy()
    if bad.any():
        names = species["scientific_name"] if "scientific_name" in species else species_keys
        raise ValueError(f"gbif effort: species {list(names[bad])}: 'gbif_key' and 'class_key' "
                         "must be positive integers (resolve the species list first)")  # fmt: skip
    return dict(zip(species_keys.astype(np.int64), keys.astype(np.int64), strict=True))


def observer_field(grid: Grid, rng: np.random.Generator, hotspots: int = 4) -> np.ndarray:
    """Where observers go, (n_lat, n_lon) in (0, 1]: a few smooth Gaussian hotspots."""
    lat, lon = np.meshgrid(grid.latitudes, grid.longitudes, indexing="ij")
    extent = max(grid.lat_max - grid.lat_min, grid.lon_max - grid.lon_min, grid.res)
    field = np.full(grid.shape, 0.02)
    for _ in range(hotspots):
        c_lat = rng.uniform(grid.lat_min, grid.lat_max)
        c_lon = rng.uniform(grid.lon_min, grid.lon_max)
        sigma, amp = rng.uniform(0.04, 0.12) * extent, rng.uniform(0.3, 1.0)
        field += amp * np.exp(-((lat - c_lat) ** 2 + (lon - c_lon) ** 2) / (2 * sigma**2))
    return np.asarray(field / field.max())


def _day_factor(days: pd.DatetimeIndex, rng: np.random.Generator) -> np.ndarray:
    """More observers at weekends, and on some days than others (mean about 1)."""
    weekend = np.where(days.dayofweek >= 5, 1.8, 1.0)
    return np.asarray(weekend * rng.gamma(2.0, 0.5, len(days)))


def _study_cells(records: pd.DataFrame, classes: Mapping[int, int], grid: Grid,
                 days: pd.DatetimeIndex) -> pd.DataFrame:  # fmt: skip
    """The study records known to the day, as (class_key, day index, row, col)."""
    t = records[records["species_key"].isin(list(classes))]
    keep = t["start"].notna().to_numpy() & grid.contains(t["latitude"].to_numpy(),
                                                         t["longitude"].to_numpy())  # fmt: skip
    if "end" in t.columns:  # a month or a year is no day: GBIF's day is empty then
        keep &= ((t["end"] - t["start"]) <= pd.Timedelta(days=1)).to_numpy()
    if "status" in t.columns:
        keep &= (t["status"].astype(str).str.upper() != "ABSENT").to_numpy()
    if "basis" in t.columns:
        basis = t["basis"].astype(str).str.upper()
        keep &= ~basis.isin(["FOSSIL_SPECIMEN", "LIVING_SPECIMEN"]).to_numpy()
    t = t[keep]
    day = days.get_indexer(pd.DatetimeIndex(t["start"]).normalize())
    row, col = grid.index_of(t["latitude"].to_numpy(), t["longitude"].to_numpy())
    cls = t["species_key"].astype(np.int64).map(classes).to_numpy(np.int64)
    cells = pd.DataFrame({"class_key": cls, "day": day, "row": row, "col": col})
    return cells[cells["day"] >= 0]


def _bad_rows(cls: int, day: pd.Timestamp, grid: Grid) -> str:
    """Rows the reader must drop: a word for a count, a cell past the grid, 30 February, a
    negative count."""
    y, m, d = day.year, day.month, day.day
    rows = [(cls, y, m, d, 0, 0, "many"), (cls, y, m, d, grid.n_lat + 2, 0, "3"),
            (cls, y, 2, 30, 0, 0, "1"), (cls, y, m, d, 0, 0, "-2")]  # fmt: skip
    return "".join("\t".join(map(str, r)) + "\n" for r in rows)


def sample(out: str | Path, records: pd.DataFrame | Iterable[pd.DataFrame],
           species: pd.DataFrame, grid: Grid, start: str, end: str, seed: int = 0
           ) -> Path:  # fmt: skip
    """A deterministic SQL_TSV_ZIP effort cube and its manifest (module docstring).

    Effort per class = its study records (``records``: the contract record table of the
    sample's study species, or its chunks: only their (class, day, cell) are kept) per day
    and cell + Poisson background records of the class's
    other species under a seeded observer field and day factor; plus rows of one class no
    study species belongs to, and the bad rows of :func:`_bad_rows`.
    """
    classes = species_classes(species)
    days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end), freq="D")
    if len(days) == 0:
        raise ValueError(f"gbif effort: --end {end} is before --start {start}")
    study_keys = sorted(set(classes.values()))
    extra = next((k for k in EXTRA_CLASSES if k not in study_keys), max(study_keys) + 1)
    rng = np.random.default_rng([seed, 21])
    field, factor = observer_field(grid, rng), _day_factor(days, rng)
    chunks = [records] if isinstance(records, pd.DataFrame) else records
    found = [_study_cells(chunk, classes, grid, days) for chunk in chunks]
    cells = pd.concat(found, ignore_index=True) if found else _study_cells(
        contract.empty(), classes, grid, days)  # fmt: skip
    base = field * grid.cell_areas() / 1e6 * RATE_PER_KM2_DAY
    rngs = {c: np.random.default_rng([seed, 22, c]) for c in [*study_keys, extra]}
    rates = {c: r.uniform(0.3, 1.5) for c, r in rngs.items()}
    months = days.to_period("M")
    key, rows = f"0000002-{(seed * 2654435761) % 10**12:012d}", 0  # shaped as GBIF's keys
    info = zipfile.ZipInfo(f"{key}.csv", date_time=(2024, 1, 1, 0, 0, 0))  # same seed, same bytes
    info.compress_type = zipfile.ZIP_DEFLATED
    out = Path(out)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(("\t".join(COLUMNS) + "\n").encode())
            for month in _bar(months.unique(), "gbif effort sample"):
                idx = np.flatnonzero(months == month)
                table = _month_rows(idx, days, cells, rngs, rates, base, factor)
                rows += len(table)
                f.write(table.to_csv(sep="\t", index=False, header=False,
                                     lineterminator="\n").encode())  # fmt: skip
            f.write(_bad_rows(study_keys[0], days[0], grid).encode())
    sql = effort_sql(study_keys, days[0].year, days[-1].year, grid)
    request = {"format": FORMAT, "sql": sql, "class_keys": study_keys,
               "sample": {"seed": seed, "extra_class": extra, "study_records": len(cells),
                          "rows": rows}}  # fmt: skip
    manifest.write_manifest(out, source="gbif", request=request,
                            url=f"sample:gbif-effort?seed={seed}", licence=gbif_api.LICENCE,
                            citation=f"GBIF.org (n.d.) GBIF Occurrence Download {key} (a "
                            "synthetic sample: no DOI)")  # fmt: skip
    return out


def _month_rows(idx: np.ndarray, days: pd.DatetimeIndex, cells: pd.DataFrame,
                rngs: Mapping[int, np.random.Generator], rates: Mapping[int, float],
                base: np.ndarray, factor: np.ndarray) -> pd.DataFrame:  # fmt: skip
    """The rows of the days ``idx`` (one month): background + study records, every class."""
    frames = []
    here = cells[np.isin(cells["day"].to_numpy(), idx)]
    for cls, rng in rngs.items():
        counts = rng.poisson(base[None] * rates[cls] * factor[idx, None, None]).astype(np.int64)
        mine = here[here["class_key"] == cls]
        at = (mine["day"].to_numpy() - idx[0], mine["row"].to_numpy(), mine["col"].to_numpy())
        np.add.at(counts, at, 1)
        d, r, c = np.nonzero(counts)
        day = days[idx[d]]
        frames.append(pd.DataFrame({"classkey": cls, "year": day.year, "month": day.month,
                                    "day": day.day, "cell_row": r, "cell_col": c,
                                    "n": counts[d, r, c]}))  # fmt: skip
    table = pd.concat(frames, ignore_index=True)
    order = ["year", "month", "day", "classkey", "cell_row", "cell_col"]
    return table.sort_values(order, kind="stable", ignore_index=True)[list(COLUMNS)]


# --- reading --------------------------------------------------------------------------------
def _member(path: Path) -> str:
    names = gbif_dwca.members(path)  # refuses path traversal
    table = [n for n in names if n.lower().endswith((".csv", ".tsv", ".txt"))
             and Path(n).name.lower() not in METADATA]  # fmt: skip
    if len(table) != 1:
        raise ValueError(f"{path}: expected one .csv/.tsv/.txt member (the SQL download's "
                         f"table), found {table}")  # fmt: skip
    return table[0]


def _drop(t: pd.DataFrame, mask: Any, reason: Reason, q: Quarantine) -> pd.DataFrame:
    """Count the rows of ``t`` under ``mask`` (example: the file line) and return the rest."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        q.count(reason, int(mask.sum()), f"line {int(t.index[mask][0]) + 2}")
    return t[~mask]


def _whole(x: pd.Series) -> np.ndarray:
    return np.asarray(x.notna() & np.isfinite(x) & (x % 1 == 0))


def _clean(chunk: pd.DataFrame, grid: Grid, window: tuple[pd.Timestamp, pd.Timestamp],
           q: Quarantine) -> pd.DataFrame:  # fmt: skip
    q.saw(len(chunk))
    num = pd.DataFrame({c: pd.to_numeric(chunk[c].str.strip(), errors="coerce")
                        for c in COLUMNS}, index=chunk.index)  # fmt: skip
    whole = _whole(num["classkey"]) & _whole(num["cell_row"]) & _whole(num["cell_col"])
    count_ok = np.asarray(np.isfinite(num["n"]) & (num["n"] >= 0))
    num = _drop(num, ~(whole & count_ok), Reason.UNREADABLE_LINE, q)
    blank = chunk.loc[num.index, ["year", "month", "day"]].apply(lambda s: s.str.strip() == "")
    num = _drop(num, blank.any(axis=1), Reason.DATE_MISSING, q)
    ymd = num[["year", "month", "day"]]
    ok = _whole(ymd["year"]) & _whole(ymd["month"]) & _whole(ymd["day"])
    ok &= np.asarray(ymd["year"].between(1700, 2200))  # datetime64[ns] spans 1677-2262
    days = pd.Series(pd.NaT, index=num.index, dtype="datetime64[ns]")
    if ok.any():  # 30 February and month 13 give NaT
        days[ok] = pd.to_datetime(ymd[ok], errors="coerce").astype("datetime64[ns]")
    num = _drop(num.assign(time=days), days.isna(), Reason.DATE_UNUSABLE, q)
    num = _drop(num, (num["time"] < window[0]) | (num["time"] > window[1]),
                Reason.OUTSIDE_WINDOW, q)  # fmt: skip
    row, col = num["cell_row"], num["cell_col"]
    inside = (row >= 0) & (row < grid.n_lat) & (col >= 0) & (col < grid.n_lon)
    num = _drop(num, ~inside, Reason.OUTSIDE_GRID, q)
    return pd.DataFrame({"class_key": num["classkey"].astype(np.int64),
                         "time": num["time"].astype("datetime64[ns]"),
                         "row": num["cell_row"].astype(np.int64),
                         "col": num["cell_col"].astype(np.int64),
                         "n": num["n"].astype(np.float64)})  # fmt: skip


def read_effort(path: str | Path, grid: Grid, start: str | pd.Timestamp,
                end: str | pd.Timestamp) -> tuple[pd.DataFrame, Quarantine]:  # fmt: skip
    """The rows of an effort zip with days in ``[start, end]`` (days, inclusive): columns
    class_key (int64), time (datetime64[ns], the day), row, col (int64), n (float64); and the
    Quarantine of the rows dropped (module docstring). ``attrs["source"]`` names the member."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GBIF effort download")
    member = _member(path)
    where = f"{path}:{member}"
    q = Quarantine(where)
    window = (pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize())
    parts = []
    with gbif_dwca.open_zip_member(path, member) as raw:
        text = io.TextIOWrapper(raw, "utf-8", newline="")
        header = [h.strip().strip('"').lower() for h in text.readline().rstrip("\r\n").split("\t")]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{where}: missing column(s) {missing} (an effort cube has "
                             f"{list(COLUMNS)}; header {header})")  # fmt: skip
        reader = pd.read_csv(text, sep="\t", header=None, names=header, index_col=False,
                             dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False,
                             chunksize=CHUNK_ROWS)  # fmt: skip
        try:
            with warnings.catch_warnings():  # more fields than the header: never truncated
                warnings.simplefilter("error", pd.errors.ParserWarning)
                for chunk in _bar(reader, "gbif effort rows", unit="chunk"):
                    parts.append(_clean(chunk.fillna(""), grid, window, q))
        except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
            raise ValueError(f"{where}: not a tab-separated table of {len(header)} columns "
                             f"(lines counted after the header: {err})") from err  # fmt: skip
    table = pd.concat(parts, ignore_index=True) if parts else _clean(
        pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS}), grid, window, q)  # fmt: skip
    table.attrs["source"] = where
    if q.n_dropped:
        log.warning("gbif effort: %s", q.summary())
    return table, q


# --- per step -------------------------------------------------------------------------------
def effort_counts(effort: pd.DataFrame, class_keys: Sequence[int], times: pd.DatetimeIndex,
                  ends: pd.DatetimeIndex, grid: Grid) -> np.ndarray:  # fmt: skip
    """Records per step ``[times[i], ends[i])``, class (in the order of ``class_keys``) and
    cell: float32 (len(times), len(class_keys), n_lat, n_lon). Classes not asked for are left
    out; a day straddling steps is spread over them by overlap (module docstring)."""
    keys = pd.Index([int(k) for k in class_keys])
    if not keys.is_unique or len(times) != len(ends):
        raise ValueError(f"gbif effort: need unique class keys ({list(keys)}) and as many step "
                         f"ends as times ({len(ends)} != {len(times)})")  # fmt: skip
    t = effort[effort["class_key"].isin(keys)]
    row, col = t["row"].to_numpy(np.int64), t["col"].to_numpy(np.int64)
    outside = (row < 0) | (row >= grid.n_lat) | (col < 0) | (col >= grid.n_lon)
    if outside.any():
        raise ValueError(f"gbif effort: {int(outside.sum())} row(s) with a cell outside the "
                         f"grid {grid.shape} (read_effort drops them)")  # fmt: skip
    day = pd.DatetimeIndex(t["time"]).normalize()
    rec, step, weight, _ = contract.to_steps(day, day + pd.Timedelta(days=1),
                                             pd.DatetimeIndex(times), pd.DatetimeIndex(ends),
                                             "spread")  # fmt: skip
    cls = keys.get_indexer(t["class_key"].to_numpy()[rec])
    flat = ((step * len(keys) + cls) * grid.n_lat + row[rec]) * grid.n_lon + col[rec]
    weights = t["n"].to_numpy(np.float64)[rec] * weight
    return sums_at(flat, weights, (len(times), len(keys), *grid.shape))


def sums_at(flat: np.ndarray, weights: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """float32 array of ``shape`` with the sum of ``weights`` at each flat index: the values
    of ``np.bincount(flat, weights).astype(float32)`` (summed in float64, in input order),
    without its dense float64 array (1 GB for a month of 21 species at 6 h and 0.25 deg):
    the float64 sums are kept per distinct index only."""
    cells, inverse = np.unique(flat, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=weights, minlength=len(cells))
    out = np.zeros(int(np.prod(shape)), np.float32)
    out[cells] = sums.astype(np.float32)
    return out.reshape(shape)


def per_species(per_class: np.ndarray, class_of_species: Sequence[int]) -> np.ndarray:
    """``per_class[:, class_of_species]`` (steps, species, ...) built from the nonzeros of
    each class (measured: 0.46 GiB less peak than the fancy index at 6 h and 0.25 deg)."""
    steps, n_classes = per_class.shape[:2]
    flat = per_class.reshape(steps, n_classes, -1)
    out = np.zeros((steps, len(class_of_species), flat.shape[2]), np.float32)
    wanted = np.asarray(class_of_species)
    for k in sorted({int(c) for c in class_of_species}):
        t, cell = np.nonzero(flat[:, k])
        values = flat[t, k, cell]
        for s in np.flatnonzero(wanted == k):
            out[t, s, cell] = values
    return out.reshape(steps, len(class_of_species), *per_class.shape[2:])
