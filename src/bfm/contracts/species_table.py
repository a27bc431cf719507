"""The species table contract: ``results/species/species.parquet`` (schema ``bfm-species/1``).

One row per species, keyed by its GBIF key, with what the model needs to give each species
an identity: its taxonomy (names per rank, kingdom..genus) and one fixed-length embedding per
media kind (image, audio, eDNA barcode, text) with a presence flag (a species without
recordings has ``has_audio`` false and a zero vector). The model projects these to its width
(``bfm.model.species``), so a species added to the table gets an embedding without retraining
an index. More columns (common name, red-list category, description, media counts) may be
present; readers ignore what they do not use.

Columns: ``gbif_key`` (int64, unique), ``scientific_name`` (string), one string column per
rank in ``RANKS`` (empty when unknown), and per media kind ``m`` in ``MEDIA``:
``embedding_<m>`` (a list of float32, the same length in every row) and ``has_<m>``
(bool). The schema metadata records ``bfm_schema`` and the embedding length of each kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bfm.fileio import atomic_path

SCHEMA = "bfm-species/1"
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")
MEDIA = ("image", "audio", "edna", "text")


@dataclass(frozen=True)
class SpeciesTable:
    """The rows the model reads, in one order.

    Attributes:
        keys: GBIF species keys ``(S,)`` int64.
        names: scientific names ``(S,)``.
        taxonomy: rank names ``(S, len(RANKS))`` (object strings, "" when unknown).
        embeddings: media kind -> ``(S, D_m)`` float32 (zeros where absent).
        present: media kind -> ``(S,)`` bool.
    """

    keys: np.ndarray
    names: tuple[str, ...]
    taxonomy: np.ndarray
    embeddings: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        s = len(self.keys)
        if len(set(self.keys.tolist())) != s:
            raise ValueError("species table: repeated gbif_key")
        if len(self.names) != s or self.taxonomy.shape != (s, len(RANKS)):
            raise ValueError(f"species table: {s} keys but {len(self.names)} names and "
                             f"taxonomy {self.taxonomy.shape}")  # fmt: skip
        for m in MEDIA:
            if self.embeddings[m].shape[0] != s or self.present[m].shape != (s,):
                raise ValueError(f"species table: embedding_{m}/has_{m} do not have {s} rows")

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(self.embeddings[m].shape[1]) for m in MEDIA}

    def select(self, keys: Sequence[int], where: str = "species table") -> SpeciesTable:
        """The rows of ``keys``, in that order; ValueError naming the keys it lacks."""
        index = {int(k): i for i, k in enumerate(self.keys)}
        missing = [int(k) for k in keys if int(k) not in index]
        if missing:
            raise ValueError(f"{where}: no row for species key(s) {missing}")
        rows = np.array([index[int(k)] for k in keys], dtype=np.int64)
        return SpeciesTable(self.keys[rows], tuple(self.names[i] for i in rows),
                            self.taxonomy[rows], {m: e[rows] for m, e in self.embeddings.items()},
                            {m: p[rows] for m, p in self.present.items()})  # fmt: skip


def write_species_table(table: SpeciesTable, path: str | Path,
                        extra: dict[str, Sequence[object]] | None = None,
                        metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write the table (plus ``extra`` columns and ``metadata`` in the parquet schema) as
    parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, pa.Array] = {
        "gbif_key": pa.array(table.keys, pa.int64()),
        "scientific_name": pa.array(list(table.names), pa.string()),
    }
    for r, rank in enumerate(RANKS):
        columns[rank] = pa.array([str(x) for x in table.taxonomy[:, r]], pa.string())
    for m in MEDIA:
        dim = table.dims[m]
        flat = pa.array(table.embeddings[m].astype(np.float32).ravel(), pa.float32())
        offsets = pa.array(np.arange(len(table.keys) + 1, dtype=np.int32) * dim, pa.int32())
        columns[f"embedding_{m}"] = pa.ListArray.from_arrays(offsets, flat)
        columns[f"has_{m}"] = pa.array(table.present[m].astype(bool), pa.bool_())
    for name, values in (extra or {}).items():
        columns[name] = pa.array(list(values))
    meta = {**(metadata or {}), "bfm_schema": SCHEMA, "dims": json.dumps(table.dims)}
    arrow = pa.table(columns).replace_schema_metadata(meta)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return path


def read_species_table(path: str | Path) -> SpeciesTable:
    """Read and validate a species table; ValueError names the file and the field."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such species table")
    try:
        arrow = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own error types for damaged files
        raise ValueError(f"{path}: cannot read as parquet ({err})") from err
    meta = {k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items()}
    if meta.get("bfm_schema") != SCHEMA:
        raise ValueError(f"{path}: schema is {meta.get('bfm_schema')!r}, expected {SCHEMA!r}")
    needed = ["gbif_key", "scientific_name", *RANKS,
              *(f"{p}_{m}" for m in MEDIA for p in ("embedding", "has"))]  # fmt: skip
    missing = [c for c in needed if c not in arrow.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    dims = json.loads(meta["dims"])
    embeddings, present = {}, {}
    for m in MEDIA:
        column = arrow.column(f"embedding_{m}").combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False)
        if flat.size != arrow.num_rows * int(dims[m]):
            raise ValueError(f"{path}: embedding_{m} does not hold {dims[m]} values per row")
        embeddings[m] = flat.astype(np.float32).reshape(arrow.num_rows, int(dims[m]))
        present[m] = arrow.column(f"has_{m}").to_numpy(zero_copy_only=False).astype(bool)
    taxonomy = np.array([arrow.column(r).to_pylist() for r in RANKS], dtype=object).T
    try:
        return SpeciesTable(
            arrow.column("gbif_key").to_numpy().astype(np.int64),
            tuple(arrow.column("scientific_name").to_pylist()),
            taxonomy.reshape(arrow.num_rows, len(RANKS)),
            embeddings,
            present,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
