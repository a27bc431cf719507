"""Rule ``combine`` in bounded memory: what de-duplication needs is held, the records wait on disk.

A Europe GBIF download of the study's species is millions of records; holding them all (and
their copies while they are cleaned, concatenated and sorted) cost about a GiB per million.
``occurrences.combine`` therefore reads each member a chunk at a time and keeps in memory
only small per-record keys:

- :class:`SeenKeys`: the 128-bit keys of the ``record_id`` values a member has shown so far,
  so that a repeated id is dropped (the first kept) across chunks as within one, as
  ``contract.clean`` does over a whole table;
- :class:`Spill`: each cleaned chunk is written to a temporary folder, one Parquet file per
  chunk and month of ``start``, while the key of its :func:`~bfm.contracts.occurrence.identity`,
  whether it is an original (``same_as`` empty) and its place in the members' concatenation
  (``_seq``) stay in memory. :meth:`Spill.deduplicate` then decides, with
  ``contract.deduplicate``'s rule (originals first, then in the members' order; the first
  of each identity kept), which records are repeats, and :meth:`Spill.months` reads the
  records back one start month at a time in ``_seq`` order, so that the final sort by
  ``(start, record_id)`` (ties in the members' order) and the lanes of
  ``occurrence_store.write_by_period`` come out as when the table was held whole.

A key is two SipHash-2-4 digests of the string with distinct keys (``pandas.util.hash_array``):
equal strings have equal keys; two distinct strings share one with probability ~2**-128.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from bfm.contracts import occurrence as contract
from bfm.sources import occurrence_store

CHUNK_ROWS = 200_000  # records of a member read and cleaned at a time
HASH_KEYS = ("bfm-occurrence-a", "bfm-occurrence-b")  # 16 characters each (SipHash keys)
KEY = np.dtype([("a", "<u8"), ("b", "<u8")])
SEQ = "_seq"  # a spilled record's place in the concatenation of the members' records


def keys(values: pd.Series) -> np.ndarray:
    """The 128-bit key (:data:`KEY`) of each string of ``values``."""
    strings = values.astype(str).to_numpy(dtype=object)
    out = np.empty(len(strings), KEY)
    for field, hash_key in zip(KEY.names or (), HASH_KEYS, strict=True):
        out[field] = pd.util.hash_array(strings, hash_key=hash_key, categorize=False)
    return out


def repeats(key: np.ndarray) -> np.ndarray:
    """Mask of the keys that repeat an earlier one of ``key`` (the first of each is False)."""
    return pd.DataFrame({"a": key["a"], "b": key["b"]}).duplicated(keep="first").to_numpy()


class SeenKeys:
    """The keys seen so far (one sorted array): which of a new chunk's were seen before."""

    def __init__(self) -> None:
        self.sorted = np.empty(0, KEY)

    def repeated(self, values: pd.Series) -> np.ndarray:
        """Mask of the ``values`` seen in an earlier chunk or earlier in this one; all of
        them are remembered."""
        new = keys(values)
        before = np.zeros(len(new), dtype=bool)
        if len(self.sorted) and len(new):
            at = np.searchsorted(self.sorted, new)
            inside = at < len(self.sorted)
            before[inside] = self.sorted[at[inside]] == new[inside]
        repeat = before | repeats(new)
        fresh = np.sort(new[~repeat])
        self.sorted = np.insert(self.sorted, np.searchsorted(self.sorted, fresh), fresh)
        return repeat


class Spill:
    """Cleaned record chunks set aside in ``folder`` by start month (module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.n = 0
        self._files: list[Path] = []
        self._groups: dict[int, list[tuple[int, int]]] = {}  # month: (file, row group)s
        self.largest = 0  # the most rows held at once (a chunk read or a month read back)
        self._ident: list[np.ndarray] = []
        self._original: list[np.ndarray] = []

    def add(self, table: pd.DataFrame) -> None:
        """Set aside one chunk of cleaned records (in the members' order): one Parquet file,
        one row group per start month."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.largest = max(self.largest, len(table))
        if not len(table):
            return
        seq = np.arange(self.n, self.n + len(table), dtype=np.int64)
        self.n += len(table)
        self._ident.append(keys(contract.identity(table)))
        self._original.append((table["same_as"] == "").to_numpy())
        month = occurrence_store.month_index(table["start"])
        by_month = np.argsort(month, kind="stable")  # within a month, in _seq order
        arrow = pa.Table.from_pandas(table.assign(**{SEQ: seq}).iloc[by_month],
                                     preserve_index=False)  # fmt: skip
        month = month[by_month]
        cuts = [0, *(np.flatnonzero(np.diff(month)) + 1).tolist(), len(month)]
        path = self.folder / f"{len(self._files):06d}.parquet"
        with pq.ParquetWriter(str(path), arrow.schema) as writer:
            for group, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
                writer.write_table(arrow.slice(lo, hi - lo), row_group_size=hi - lo)
                self._groups.setdefault(int(month[lo]), []).append((len(self._files), group))
        self._files.append(path)

    def deduplicate(self) -> tuple[np.ndarray, int | None]:
        """``(keep, example)``: per ``_seq``, whether the record is kept (``contract.
        deduplicate``'s rule: of each identity, the first original, else the first
        republication, in the members' order), and the ``_seq`` of the first repeat in
        that rule's order (originals first; None: no repeat). The keys are let go."""
        if not self.n:
            return np.zeros(0, dtype=bool), None
        ident = np.concatenate(self._ident)
        original = np.concatenate(self._original)
        self._ident, self._original = [], []
        # by identity, and within one by the rule's rank: (not original, _seq)
        order = np.lexsort((np.arange(self.n), ~original, ident["b"], ident["a"]))
        ranked = ident[order]
        repeat = np.zeros(self.n, dtype=bool)
        repeat[1:] = ranked[1:] == ranked[:-1]  # both halves of the key equal
        del ranked
        dropped = order[repeat]
        keep = np.ones(self.n, dtype=bool)
        keep[dropped] = False
        if not len(dropped):
            return keep, None
        originals = dropped[original[dropped]]
        return keep, int(originals.min() if len(originals) else dropped.min())

    @property
    def empty(self) -> bool:
        return not self.n

    def months(self) -> Iterator[pd.DataFrame]:
        """Every start month's records (column ``_seq`` too), in ``_seq`` order, month by
        month in time order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = [pq.ParquetFile(str(f)) for f in self._files]
        try:
            for m in sorted(self._groups):  # files, and groups within, in _seq order
                parts = [files[f].read_row_group(g) for f, g in self._groups[m]]
                month = pa.concat_tables(parts, promote_options="permissive").to_pandas()
                self.largest = max(self.largest, len(month))
                yield month
        finally:
            for f in files:
                f.close()
