"""Occurrence tables stored once by period, so that a month's tile reads only its own rows.

The combined record table (``records.parquet``) and the effort table (``effort.parquet``)
are long: every record of the window. A tile of one month must not read them whole (that
made the species tiles O(months x records)). They are therefore written once, by
:func:`write_by_period`, in Parquet row groups that each hold rows of one *lane*: one pair
(month of the interval's start, month of its end). Every row of a lane overlaps exactly the
same months, so the row groups a month selects hold only rows that overlap that month.

:func:`read_overlapping` reads the rows whose interval ``[start, end]`` overlaps
``[t0, t1)`` (``start < t1`` and ``end >= t0``, the rule the tiles have always read by): it
selects the row groups by their min/max statistics (a group without statistics is read),
reads only those, keeps the rows that pass the rule, and says how many rows it read
(:class:`Rows`), so that tests can assert that the IO is linear in the records. Correctness
never depends on the layout (any Parquet file with the columns is read right); the layout
only makes the selection tight. At the edges of the window a period can read a few rows of
the partial month outside it; elsewhere rows read == rows returned.

Writing streams: chunks of rows (any split, best one or more whole months each, in time
order) are written as they come, one row group per lane and chunk, at most ``max_rows`` rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa

MAX_ROWS = 100_000  # rows per row group at most (Parquet's readers like ~1e5)


@dataclass(frozen=True)
class Rows:
    """A read: the rows kept, how many rows were read and in how many row groups."""

    table: pd.DataFrame
    rows_read: int
    groups_read: int
    groups_total: int


def month_index(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Months since 1970-01 of each time (NaT: -1), int64."""
    stamps = np.asarray(pd.DatetimeIndex(values).values, dtype="datetime64[ns]")
    months = stamps.astype("datetime64[M]").astype(np.int64)
    return np.where(np.isnat(stamps), -1, months)


def lanes(chunk: pd.DataFrame, start: str, end: str, order: Sequence[str]) -> pd.DataFrame:
    """``chunk`` sorted by (month of ``start``, month of ``end``, *order), stably."""
    key = pd.DataFrame({"_m0": month_index(chunk[start]), "_m1": month_index(chunk[end])})
    for i, column in enumerate(order):
        key[f"_o{i}"] = chunk[column].to_numpy()
    positions = key.sort_values(list(key.columns), kind="stable").index.to_numpy()
    return chunk.iloc[positions]


def _groups(sorted_chunk: pd.DataFrame, start: str, end: str, max_rows: int
            ) -> list[tuple[int, int]]:  # fmt: skip
    """``[begin, stop)`` row ranges of each lane of a lane-sorted chunk, split at max_rows."""
    m0, m1 = month_index(sorted_chunk[start]), month_index(sorted_chunk[end])
    cuts = np.flatnonzero((np.diff(m0) != 0) | (np.diff(m1) != 0)) + 1
    bounds = [0, *cuts.tolist(), len(sorted_chunk)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        out += [(b, min(b + max_rows, hi)) for b in range(lo, hi, max_rows)]
    return out


def write_by_period(chunks: Iterable[pd.DataFrame], out: str | Path, start: str, end: str,
                    order: Sequence[str], max_rows: int = MAX_ROWS) -> int:  # fmt: skip
    """Write ``chunks`` to the Parquet file ``out`` in lane row groups (module docstring);
    within a lane, rows are sorted by ``order``. The first chunk fixes the schema (later
    chunks are cast to it). Returns the number of rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    rows = 0
    try:
        for chunk in chunks:
            if schema is None:
                schema = pa.Schema.from_pandas(chunk, preserve_index=False)
                writer = pq.ParquetWriter(str(out), schema)
            assert writer is not None
            sorted_chunk = lanes(chunk, start, end, order).reset_index(drop=True)
            table = pa.Table.from_pandas(sorted_chunk, schema=schema, preserve_index=False)
            for lo, hi in _groups(sorted_chunk, start, end, max_rows):
                writer.write_table(table.slice(lo, hi - lo), row_group_size=max_rows)
            rows += len(chunk)
        if writer is None:
            raise ValueError(f"{out}: no chunk of rows to write (write_by_period needs at "
                             "least one, possibly empty, table)")  # fmt: skip
    finally:
        if writer is not None:
            writer.close()
    return rows


def _bound(stats: object, which: str) -> pd.Timestamp | None:
    if stats is None or not getattr(stats, "has_min_max", False):
        return None
    return pd.Timestamp(getattr(stats, which))


def overlapping_groups(meta: pa.parquet.FileMetaData, start: str, end: str,
                       t0: pd.Timestamp, t1: pd.Timestamp) -> list[int]:  # fmt: skip
    """The row groups whose rows may overlap ``[t0, t1)``: min(start) < t1, max(end) >= t0
    (a bound that is missing keeps the group)."""
    names = meta.schema.names
    i_start, i_end = names.index(start), names.index(end)
    out = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if group.num_rows == 0:
            continue
        lo = _bound(group.column(i_start).statistics, "min")
        hi = _bound(group.column(i_end).statistics, "max")
        if (lo is None or lo < t1) and (hi is None or hi >= t0):
            out.append(g)
    return out


def read_overlapping(path: str | Path, start: str, end: str, t0: pd.Timestamp,
                     t1: pd.Timestamp, columns: Sequence[str] | None = None) -> Rows:  # fmt: skip
    """The rows of ``path`` with ``start < t1`` and ``end >= t0``, reading only the row groups
    that may hold such rows (:func:`overlapping_groups`); ``columns``: every column."""
    import pyarrow.parquet as pq

    t0, t1 = pd.Timestamp(t0), pd.Timestamp(t1)
    pf = pq.ParquetFile(str(path))
    missing = [c for c in (start, end) if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing} (a table stored by period has "
                         f"its interval in {start!r} and {end!r})")  # fmt: skip
    groups = overlapping_groups(pf.metadata, start, end, t0, t1)
    wanted = list(columns) if columns is not None else None
    if groups:
        arrow = pf.read_row_groups(groups, columns=wanted)
    else:
        empty = pf.schema_arrow.empty_table()
        arrow = empty.select(wanted) if wanted is not None else empty
    table = arrow.to_pandas()
    read = len(table)
    keep = (table[start] < t1) & (table[end] >= t0)
    table = table[keep.to_numpy()].reset_index(drop=True)
    return Rows(table, read, len(groups), pf.metadata.num_row_groups)
