"""Occurrences: every occurrence source's records, cleaned and counted once, on the grid.

The occurrence sources (GBIF, iNaturalist, Xeno-canto, BOLD: :class:`OccurrenceSource`) have
no modality of their own. Each writes its raw file in its own mode (``sample``, ``download``
or ``file``) and reads it into the record table of the occurrence contract
(``bfm.contracts.occurrence``). The source ``occurrences`` (mode ``combine``) joins them:

1. **Combine** (rule ``combine``, raw file ``results/raw/occurrences/records.parquet``): each
   member's records are cleaned by the contract's rules (absences, fossils, living specimens,
   missing/out-of-range/(0, 0) coordinates, uncertainty above ``max_uncertainty_m``,
   missing/unusable dates, names that are not study species), records outside the grid or
   the window are set aside, and a record republished by several sources (GBIF carries
   iNaturalist and Xeno-canto) is kept once, from its original source. Every record dropped
   is counted by reason in ``records.parquet.quarantine.json`` (in total and per member). The
   table is stored by period (``bfm.sources.occurrence_store``: row groups of one pair of
   start and end months, sorted by ``start`` and ``record_id`` within) so that a month's
   tile reads only the rows that overlap it, and gets them in ``(start, record_id)`` order.
   Memory stays bounded (``bfm.sources.occurrence_spill``): a member is read a chunk at a
   time (GBIF's download streamed; the small API downloads whole), each chunk cleaned and
   set aside on disk by start month; only keys of the ids stay in memory until the months
   are read back, one at a time, sorted and written.
2. **Tile** (``species_occurrence``, per month): records per species, cell and step. A record
   whose date is coarser than the step (a date-only record at a 6-hourly step, a month at a
   daily step) is, by option ``date_precision``: ``exclude`` (default: it counts in no step;
   the tile's attribute ``n_records_coarser_than_step`` counts it) or ``spread`` (it counts in
   every step it overlaps, weighted by the overlap: 1/4 in each 6 h step of its day).

3. **Sampling effort** (raw file ``effort.parquet``, rule ``combine``): records of *all*
   species of each study species' class (its target group: ``class_key`` of the species
   list) per day and cell, so that a cell without records of a species can be told from a
   cell nobody looked at. From GBIF's SQL download of counts (``gbif_effort``, option
   ``sources.gbif.options.effort``, default on: GBIF carries iNaturalist's research grade
   and Xeno-canto, so a record that reached us only from another source may be missing from
   it); without GBIF, from the combined records of the study species themselves (a poorer
   proxy; the tile's ``effort_source`` says which). In the tile, variable ``effort`` holds
   each species' class effort per step (a day is spread evenly over finer steps: effort is
   an intensity), and ``cell_area`` (m2, CF ``cell_measures``) turns counts into densities.

Options (``sources.occurrences.options``): ``members`` (default: every configured occurrence
source), ``max_uncertainty_m`` (default 10000; ``null`` keeps every uncertainty),
``date_precision`` (``exclude`` | ``spread``).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from bfm import __version__
from bfm.contracts import occurrence as contract
from bfm.contracts import tile as tile_contract
from bfm.contracts import timeaxis
from bfm.contracts.catalogue import Modality
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.fileio import atomic_path
from bfm.sources import occurrence_store
from bfm.sources.base import Source, Study, register
from bfm.sources.occurrence_base import OccurrenceSource
from bfm.sources.occurrence_spill import CHUNK_ROWS, SEQ, SeenKeys, Spill
from bfm.species_list import read_species

if TYPE_CHECKING:
    import xarray as xr

NAME = "occurrences"
RAW_NAME = "records.parquet"
EFFORT_NAME = "effort.parquet"
EFFORT_COLUMNS = ("class_key", "time", "row", "col", "n")
RECORD_ORDER = ["start", "record_id"]  # the order of the records a tile reads
EFFORT_ORDER = ["time", "class_key"]
# Drops of media, not of records (a record keeps its place without its barcode or photo).
MEDIA_REASONS = frozenset(
    r.value
    for r in (
        Reason.CORRUPT_MEDIA,
        Reason.TOO_LARGE_MEDIA,
        Reason.MEDIA_UNAVAILABLE,
        Reason.MEDIA_NOT_OPEN,
    )
)
DEFAULTS: dict[str, Any] = {"max_uncertainty_m": 10_000.0, "date_precision": "exclude"}


def members(study: Study) -> list[OccurrenceSource]:
    """The occurrence sources the study combines (option ``members``, else all configured)."""
    from bfm import sources

    configured = [s for s in study.sources if isinstance(sources.get(s), OccurrenceSource)]
    wanted = study.options(NAME).get("members", configured)
    unknown = [m for m in wanted if m not in configured]
    if unknown:
        raise ValueError(f"config: sources.{NAME}.options.members: {unknown} are not "
                         f"configured occurrence sources (configured: {configured})")  # fmt: skip
    if not wanted:
        raise ValueError(f"config: sources.{NAME}: no occurrence source to combine (configure "
                         "gbif, inaturalist, xenocanto or bold)")  # fmt: skip
    found = [sources.get(m) for m in wanted]
    return [s for s in found if isinstance(s, OccurrenceSource)]


def options(study: Study) -> dict[str, Any]:
    opts = study.options_with(NAME, DEFAULTS, more=["members"])
    opts.pop("members", None)
    if opts["date_precision"] not in contract.PRECISION_MODES:
        raise ValueError(f"config: sources.{NAME}.options.date_precision: "
                         f"{opts['date_precision']!r} is not one of "
                         f"{list(contract.PRECISION_MODES)}")  # fmt: skip
    limit = opts["max_uncertainty_m"]
    if limit is not None and not (isinstance(limit, int | float) and limit > 0):
        raise ValueError(f"config: sources.{NAME}.options.max_uncertainty_m: must be a "
                         f"positive number of metres or null, got {limit!r}")  # fmt: skip
    return opts


def member_files(member: OccurrenceSource, study: Study) -> list[str]:
    """Where a member's raw file lies: its raw folder, or the user's (file mode)."""
    return [member.raw_file(member.raw_name, study)]


def window(study: Study) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[start, end + one step)``: the time the study's steps cover."""
    start = pd.Timestamp(study.start)
    return start, pd.Timestamp(study.end) + timeaxis.offset(study.step)


def set_aside(table: pd.DataFrame, q: Quarantine, study: Study, opts: Mapping[str, Any]
              ) -> pd.DataFrame:  # fmt: skip
    """The records of ``table`` that the contract keeps (``contract.clean``) and that lie on
    the grid and in the window; the others counted in ``q`` by reason."""
    t0, t1 = window(study)
    table = contract.clean(table, q, max_uncertainty_m=opts["max_uncertainty_m"])
    inside = study.grid.contains(table["latitude"].to_numpy(), table["longitude"].to_numpy())
    table = q.drop(~inside, Reason.OUTSIDE_GRID, table)
    start, end = table["start"].to_numpy(), table["end"].to_numpy()
    overlaps = (end >= np.datetime64(t0)) & (start < np.datetime64(t1))
    overlaps &= ~((end == np.datetime64(t0)) & (end > start))  # ends as the window begins
    return q.drop(~overlaps, Reason.OUTSIDE_WINDOW, table)


def spill_member(member: OccurrenceSource, study: Study, opts: Mapping[str, Any],
                 spill: Spill, chunk_rows: int) -> tuple[Quarantine, dict[str, int]]:  # fmt: skip
    """Clean and set aside one member's records a chunk at a time into ``spill``; its
    quarantine and the media it dropped (not records: they keep their place)."""
    q: Quarantine | None = None
    media_dropped: dict[str, int] = {}
    seen = SeenKeys()  # contract.clean's first-of-each record_id, across chunks
    for table, part in member.record_chunks(member_files(member, study), study, chunk_rows):
        for r in [r for r in part.dropped if r in MEDIA_REASONS]:
            media_dropped[r] = media_dropped.get(r, 0) + part.dropped.pop(r)
            part.examples.pop(r, None)
        if q is None:
            q = Quarantine(part.where)
        q.merge(part)
        spill.largest = max(spill.largest, len(table))
        table = q.drop(seen.repeated(table["record_id"]), Reason.DUPLICATE, table)
        spill.add(set_aside(table, q, study, opts))
    if q is None:
        raise ValueError(f"{member.name}: record_chunks gave no chunk (not even an empty one)")
    return q, media_dropped


def combine(study: Study, out: Path, chunk_rows: int = CHUNK_ROWS) -> Path:
    """Clean, set aside and de-duplicate the members' records into ``out`` (parquet, stored
    by period) and ``<out>.quarantine.json``, ``chunk_rows`` records of a member at a time
    (``bfm.sources.occurrence_spill``: the output is the same as when held whole)."""
    return combine_counted(study, out, chunk_rows)[0]


def combine_counted(study: Study, out: Path, chunk_rows: int = CHUNK_ROWS
                    ) -> tuple[Path, int]:  # fmt: skip
    """:func:`combine`, and the most records it held at once (a chunk, or a start month)."""
    opts = options(study)
    total = Quarantine(str(out))
    per_source: dict[str, dict[str, Any]] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.spill-") as tmp:
        spill = Spill(Path(tmp))
        for member in members(study):
            q, media_dropped = spill_member(member, study, opts, spill, chunk_rows)
            per_source[member.name] = q.report(extra={"media_dropped": media_dropped})
            total.merge(q)
        keep, example = spill.deduplicate()
        kept: Counter[str] = Counter()
        repeat_id: list[str] = []

        def sorted_months() -> Iterator[pd.DataFrame]:
            for month in spill.months():
                seq = month[SEQ].to_numpy()
                if example is not None and (hit := np.flatnonzero(seq == example)).size:
                    repeat_id.append(str(month["record_id"].iloc[hit[0]]))
                month = contract.conform(month[keep[seq]], str(out))
                kept.update(month["source"].value_counts().to_dict())
                yield month.sort_values(RECORD_ORDER, kind="stable", ignore_index=True)

        with atomic_path(out) as path:
            written = occurrence_store.write_by_period(
                [contract.empty()] if spill.empty else sorted_months(), path, "start",
                "end", RECORD_ORDER)  # fmt: skip
    # a republication kept once counts as a duplicate of its source
    total.count(Reason.DUPLICATE, int((~keep).sum()), repeat_id[0] if repeat_id else "")
    for name in per_source:
        per_source[name]["kept"] = int(kept[name])
    total.write(out, kept=written, extra={"sources": per_source, "options": opts})
    return out, spill.largest


def effort_origin(study: Study) -> tuple[str, str]:
    """``(kind, raw file)`` the effort comes from: ``gbif`` (its SQL cube, ``effort.zip``)
    when GBIF is a member with option ``effort``, else ``records`` (the combined records)."""
    for member in members(study):
        if member.name == "gbif":
            name = member.effort_name(study)  # type: ignore[attr-defined]
            if name:
                return "gbif", member.raw_file(name, study)
    return "records", str(Occurrences().raw_file(RAW_NAME, study))


def combine_effort(study: Study, out: Path) -> Path:
    """The sampling effort over the window: records per class key, day and cell (columns
    :data:`EFFORT_COLUMNS`, sorted by ``time`` and ``class_key``, row groups of one month)
    into ``out`` and its quarantine report."""
    from bfm.sources import gbif_effort

    kind, path = effort_origin(study)
    t0, t1 = window(study)
    last_day = t1 - pd.Timedelta("1ns")
    if kind == "gbif":
        table, q = gbif_effort.read_effort(path, study.grid, t0, last_day)
        origin = f"GBIF occurrence SQL download {Path(path).name}: records of the species' classes"
    else:
        table, q = effort_of_records(path, study)
        origin = f"{Path(path).name}: the study species' own records (no GBIF effort cube)"
    table = table[list(EFFORT_COLUMNS)].sort_values(["time", "class_key"], kind="stable",
                                                     ignore_index=True)  # fmt: skip
    with atomic_path(out) as tmp:
        occurrence_store.write_by_period([table], tmp, "time", "time", EFFORT_ORDER)
    q.write(out, kept=len(table), extra={"origin": origin, "records": float(table["n"].sum())})
    return out


def effort_of_records(path: str | Path, study: Study) -> tuple[pd.DataFrame, Quarantine]:
    """Effort from the combined records when no cube is there: the records known to the
    day, per class of their species, day and cell (a coarser record is counted aside)."""
    from bfm.sources import gbif_effort

    species = read_species(study.species)
    classes = gbif_effort.species_classes(species)
    t0, t1 = window(study)
    table = read_records(path, t0, t1)
    q = Quarantine(f"{path} (effort)")
    q.saw(len(table))
    day = pd.DatetimeIndex(table["start"]).floor("D")
    coarse = np.asarray(pd.DatetimeIndex(table["end"]) > day + pd.Timedelta(days=1))
    table = q.drop(coarse, Reason.DATE_COARSER_THAN_STEP, table.assign(time=day))
    row, col = study.grid.index_of(table["latitude"].to_numpy(), table["longitude"].to_numpy())
    cls = table["species_key"].astype("int64").map(classes)
    frame = pd.DataFrame({"class_key": cls.to_numpy(np.int64), "time": table["time"].to_numpy(),
                          "row": row, "col": col, "n": 1.0})  # fmt: skip
    grouped = frame.groupby(["class_key", "time", "row", "col"], as_index=False)["n"].sum()
    return grouped, q


def records_in(path: str | Path, t0: pd.Timestamp, t1: pd.Timestamp
               ) -> occurrence_store.Rows:  # fmt: skip
    """The records of ``path`` whose interval overlaps ``[t0, t1)`` (``start < t1``,
    ``end >= t0``), in ``(start, record_id)`` order, reading only the row groups that may
    hold them; with the rows read (``occurrence_store.read_overlapping``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such occurrence table (rule combine writes it)")
    found = occurrence_store.read_overlapping(path, "start", "end", t0, t1)
    table = found.table
    missing = [c for c in contract.COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: not an occurrence table: lacks column(s) {missing}")
    table = table.sort_values(RECORD_ORDER, kind="stable", ignore_index=True)
    return replace(found, table=contract.conform(table, str(path)))


def read_records(path: str | Path, t0: pd.Timestamp, t1: pd.Timestamp) -> pd.DataFrame:
    """The records of ``path`` whose interval overlaps ``[t0, t1)`` (:func:`records_in`)."""
    return records_in(path, t0, t1).table


def effort_in(path: str | Path, t0: pd.Timestamp, t1: pd.Timestamp) -> occurrence_store.Rows:
    """The effort rows of ``path`` with days in ``[t0, t1)``, in file order, reading only
    the row groups that may hold them; with the rows read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such effort table (rule combine writes it)")
    start = pd.Timestamp(t0).floor("D")  # a day that began before t0 overlaps it
    found = occurrence_store.read_overlapping(path, "time", "time", start, t1)
    missing = [c for c in EFFORT_COLUMNS if c not in found.table.columns]
    if missing:
        raise ValueError(f"{path}: not an effort table: lacks column(s) {missing}")
    return found


def read_effort(path: str | Path, t0: pd.Timestamp, t1: pd.Timestamp) -> pd.DataFrame:
    """The effort rows of ``path`` with days in ``[t0, t1)`` (:func:`effort_in`)."""
    return effort_in(path, t0, t1).table


class Occurrences(Source):
    """The occurrence records of every member source, combined (module docstring)."""

    name = NAME
    licence = "per member source (GBIF, iNaturalist, Xeno-canto, BOLD); see the raw manifests"
    citation = "the citations of the member sources' raw manifests"
    combines: ClassVar[bool] = True

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        return [RAW_NAME, EFFORT_NAME]

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        return {
            "grid": study.grid_settings(),
            "time": {"start": study.start, "end": study.end, "step": study.step},
            "species": study.species,
            "options": options(study),
            "members": {m.name: dict(study.settings(m.name)) for m in members(study)},
        }

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        if name == EFFORT_NAME:
            return [effort_origin(study)[1], study.species]
        return [f for m in members(study) for f in member_files(m, study)] + [study.species]

    def tile_inputs(self, modality: Modality, study: Study) -> list[str]:
        return [study.species]

    def sample(self, name: str, out: Path, study: Study) -> Path:
        raise ValueError(f"{NAME}: is combined from its member sources: set "
                         f"sources.{NAME}.mode to 'combine'")  # fmt: skip

    def download(self, name: str, out: Path, study: Study) -> Path:
        return self.sample(name, out, study)

    def combine(self, name: str, out: Path, study: Study) -> Path:
        if name == EFFORT_NAME:
            return combine_effort(study, out)
        if name != RAW_NAME:
            raise ValueError(f"{NAME}: raw file {name!r} is not {RAW_NAME!r} or "
                             f"{EFFORT_NAME!r}")  # fmt: skip
        return combine(study, out)

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        """Not used: :meth:`tile` reads only the period's rows."""
        raise ValueError(f"{NAME}: tiles read the records of their period (Occurrences.tile)")

    def tile(self, files: Sequence[str | Path], modality: Modality, study: Study, period: str,
             prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        """The tile of one period, reading only the records that overlap it."""
        path, effort_path = files
        times = study.times_in(period)
        if len(times) == 0:
            raise ValueError(f"{path}: time: no step of the window falls in period {period}")
        ends = times + timeaxis.offset(study.step)
        table = read_records(path, times[0], ends[-1])
        effort = read_effort(effort_path, times[0], ends[-1])
        return self.count(table, modality, study, times, ends, period, prov, str(path), effort)

    def to_tile(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        raise ValueError(f"{NAME}: tiles are built by Occurrences.tile")

    def count(self, table: pd.DataFrame, modality: Modality, study: Study,
              times: pd.DatetimeIndex, ends: pd.DatetimeIndex, period: str,
              prov: Mapping[str, str], where: str,
              effort: pd.DataFrame | None = None) -> xr.Dataset:  # fmt: skip
        """Records per step, species and cell (weighted by the precision rule), the effort
        of each species' class (:data:`EFFORT_COLUMNS` rows; none: zero) and cell areas."""
        import xarray as xr

        from bfm.sources import gbif_effort

        mode = options(study)["date_precision"]
        species = read_species(study.species)
        keys = species["gbif_key"].to_numpy(np.int64)
        grid = study.grid
        lat, lon = table["latitude"].to_numpy(), table["longitude"].to_numpy()
        study_species = table["species_key"].isin(keys).to_numpy()
        table = table[study_species & grid.contains(lat, lon)]  # combine set the rest aside
        rec, step, weight, coarse = contract.to_steps(
            pd.DatetimeIndex(table["start"]), pd.DatetimeIndex(table["end"]), times, ends, mode
        )
        sp = pd.Index(keys).get_indexer(table["species_key"].to_numpy()[rec].astype(np.int64))
        lat, lon = table["latitude"].to_numpy()[rec], table["longitude"].to_numpy()[rec]
        row, col = grid.index_of(lat, lon)
        row, col = np.clip(row, 0, grid.n_lat - 1), np.clip(col, 0, grid.n_lon - 1)
        flat = ((step * len(keys) + sp) * grid.n_lat + row) * grid.n_lon + col
        counts = gbif_effort.sums_at(flat, weight, (len(times), len(keys), *grid.shape))
        classes = gbif_effort.species_classes(species)
        class_keys = sorted(set(classes.values()))
        rows = effort if effort is not None else pd.DataFrame(columns=list(EFFORT_COLUMNS))
        per_class = gbif_effort.effort_counts(rows, class_keys, times, ends, grid)
        of_species = pd.Index(class_keys).get_indexer([classes[int(k)] for k in keys])
        dims = modality.tile_dims
        ds = xr.Dataset(
            {
                "occurrence": (dims, counts),
                "effort": (dims, gbif_effort.per_species(per_class, of_species)),
                "cell_area": (
                    dims[2:],
                    grid.cell_areas().astype(np.float32),
                    {
                        "units": "m2",
                        "standard_name": "cell_area",
                        "long_name": "area of the grid cell",
                    },
                ),
            },  # fmt: skip
            coords={
                "time": times,
                tile_contract.SPECIES_KEY: ("species", keys),
                "scientific_name": ("species", species["scientific_name"].to_numpy(object)),
            },
        )
        counted = float(weight.sum())
        rule = ("records coarser than the step excluded" if mode == "exclude" else
                "records coarser than the step spread over the steps they overlap")  # fmt: skip
        attrs = {
            "source": f"occurrence records of {', '.join(sorted(set(table['source'])))} "
            f"({Path(where).name})",
            "licence": self.licence,
            "citation": self.citation,
            "history": f"bfm {__version__} tile {modality.name}: records counted per cell in "
            f"[t, t + {study.step}); {rule}",
            "step": study.step,
            "date_precision": mode,
            "n_records_counted": f"{counted:.6g}",
            "n_records_coarser_than_step": str(int(coarse.sum())),
            "effort_source": effort_origin(study)[0],
            "effort_classes": ", ".join(f"{c}" for c in class_keys),
            "effort_records": f"{float(per_class.sum()):.6g}",
        }
        ds = tile_contract.finish(ds, modality, grid, period, attrs, prov, "time: sum")
        for var in modality.variable_names:
            ds[var].attrs["cell_measures"] = "area: cell_area"
        return ds


register(Occurrences())
