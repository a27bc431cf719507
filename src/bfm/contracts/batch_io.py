"""Fast paths over bfm-batch/1 files (``bfm.contracts.batch``): the same files, fewer copies.

- ``BatchFile``: an open batch, its root checked as ``read_batch`` checks it, whose fields are
  decoded straight into the caller's arrays (the training loader's samples,
  ``bfm.training.fill``): no intermediate ``Batch``.
- ``BatchWriter``: many batches of one structure (a month job, ``bfm batches``). h5netcdf lays
  out the first one's groups, variables, netCDF4 dimension scales and attributes, without
  data, once: that file, kept in memory, is the template of every batch; a batch is the
  template's bytes with its fields written by h5py, its ``time`` values and its root
  attributes set. The file holds what ``write_batch`` writes (the same datasets, filters,
  chunks, values, dimension scales and attributes; ``tests/test_batch.py`` compares them
  object by object) for a third of the CPU time: h5netcdf's bookkeeping, not compression,
  was most of a batch's cost (``bfm bench batches``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import h5netcdf
import h5py
import numpy as np
import pandas as pd

from bfm.contracts.batch import (
    COMPRESSION,
    INNER_COORD,
    READ_ERRORS,
    Batch,
    BatchError,
    Compression,
    _header,
    _root_attrs,
    _spec,
    _write,
    damaged,
    filters,
)
from bfm.contracts.catalogue import DimsKind
from bfm.fileio import atomic_path


class BatchFile:
    """An open batch file, its root checked as ``read_batch`` checks it, whose fields are decoded
    on request straight into the caller's arrays (``read_into``): the training loader fills
    its samples' arrays in place, with no intermediate ``Batch`` (a copy of every field).
    Errors are ``BatchError`` naming the file and the field, as ``read_batch``'s. Close it
    (or use ``with``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise BatchError(f"{self.path}: cannot open as HDF5 ({err})") from err
        self._groups: dict[str, h5py.Group] = {}
        self._inner: dict[str, np.ndarray] = {}
        self._datasets: dict[str, tuple[h5py.Dataset, tuple[int, ...]]] = {}
        try:
            self.grid, self.times, self.names = self._guarded(_header, self._file, self.path)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> BatchFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _guarded(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BatchError:
            raise
        except READ_ERRORS as err:
            raise damaged(self.path, err) from err

    def _group(self, name: str) -> h5py.Group:
        if name not in self._groups:
            if name not in self.names:
                raise BatchError(f"{self.path}: lacks group {name!r} (it has {self.names})")
            grp = self._file.get(name)
            if not isinstance(grp, h5py.Group):
                raise BatchError(
                    f"{self.path}: attribute 'groups' lists {name!r} but no such group"
                )
            self._groups[name] = grp
        return self._groups[name]

    def inner(self, group: str) -> np.ndarray:
        """The levels (hPa) or species keys of a level or species group; empty for others."""
        if group not in self._inner:
            coord = INNER_COORD.get(_spec(group, str(self.path)).kind)
            values = np.zeros(0, np.int64)
            if coord is not None:
                grp = self._group(group)
                if coord not in grp:
                    raise BatchError(f"{self.path}: group {group!r} lacks coordinate {coord!r}")
                values = np.asarray(self._guarded(lambda: grp[coord][()]), dtype=np.int64)
            self._inner[group] = values
        return self._inner[group]

    def _dataset(self, group: str, var: str) -> tuple[h5py.h5d.DatasetID, tuple[int, ...]]:
        """``group/var`` (h5py's low-level handle: the high-level objects cost more than the
        reading of a field) and its shape, checked once against the contract."""
        key = f"{group}/{var}"
        if key not in self._datasets:
            spec = _spec(group, str(self.path))
            grp = self._group(group)
            name = var.encode()
            if (
                not grp.id.links.exists(name)
                or h5py.h5g.get_objinfo(grp.id, name).type != h5py.h5g.DATASET
            ):
                raise BatchError(f"{self.path}: group {group!r} lacks variables {[var]}")
            dsid = self._guarded(h5py.h5d.open, grp.id, name)
            sizes = {"time": 2, "latitude": self.grid.n_lat, "longitude": self.grid.n_lon}
            coord = INNER_COORD.get(spec.kind)
            if coord is not None:
                sizes[coord] = len(self.inner(group))
            expected = tuple(sizes[d] for d in spec.batch_dims)
            if dsid.dtype != np.float32:
                raise BatchError(f"{self.path}: {key} has dtype {dsid.dtype}, expected float32")
            if dsid.shape != expected:
                raise BatchError(f"{self.path}: {key} has shape {dsid.shape}, expected "
                                 f"{expected} {spec.batch_dims}")  # fmt: skip
            self._datasets[key] = (dsid, expected)
        return self._datasets[key]

    def read_into(self, group: str, var: str, out: np.ndarray, time: int | None = None) -> None:
        """Decode ``group/var`` (at ``time`` alone, 0 or 1, if given and the group has a time
        axis) into ``out``, a C-contiguous float32 array of that shape (HDF5 then decodes
        each chunk straight into it), after checking the field's dtype and its shape against
        the contract."""
        spec = _spec(group, str(self.path))
        dsid, expected = self._dataset(group, var)
        at = time is not None and spec.kind != DimsKind.STATIC
        want = expected[1:] if at else expected
        if out.shape != want or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"read_into {group}/{var}: out must be C-contiguous float32 "
                             f"{want}, got {out.dtype} {out.shape}")  # fmt: skip
        self._guarded(_read, dsid, out, time if at else None)


def _read(dsid: h5py.h5d.DatasetID, out: np.ndarray, time: int | None) -> None:
    """HDF5's read of the whole dataset, or of its leading index ``time``, into ``out``."""
    fspace = dsid.get_space()
    if time is not None:
        fspace.select_hyperslab((time, *[0] * (len(out.shape))), (1, *out.shape))
    dsid.read(h5py.h5s.create_simple(out.shape), fspace, out)


class BatchWriter:
    """Writes batches like ``write_batch`` (atomically), from a template per structure (the
    module docstring): batches of another grid, step, groups, shapes, levels, species or
    attribute names get a template of their own."""

    def __init__(self, provenance: dict[str, str], compression: Compression = COMPRESSION
                 ) -> None:  # fmt: skip
        self.provenance = dict(provenance)
        self.compress = filters(Compression(compression))
        self._templates: dict[str, bytes] = {}

    def _key(self, batch: Batch) -> str:
        shapes = {g: {v: a.shape for v, a in vs.items()} for g, vs in batch.groups.items()}
        return json.dumps([batch.grid.to_json(), batch.step, shapes, sorted(batch.attrs),
                           np.asarray(batch.levels).tolist(),
                           np.asarray(batch.species).tolist()], default=str)  # fmt: skip

    def _template(self, batch: Batch) -> bytes:
        key = self._key(batch)
        if key not in self._templates:
            buffer = io.BytesIO()
            with h5netcdf.File(buffer, "w") as f:
                _write(f, batch, self.provenance, self.compress, data=False)
            self._templates[key] = buffer.getvalue()
        return self._templates[key]

    def write(self, batch: Batch, path: str | Path) -> Path:
        template = self._template(batch)
        with atomic_path(path) as tmp:
            tmp.write_bytes(template)
            with h5py.File(tmp, "r+") as f:
                f["time"][...] = _seconds(batch)
                for gname, variables in batch.groups.items():
                    grp = f[gname]
                    for var, arr in variables.items():
                        grp[var].write_direct(np.ascontiguousarray(arr))
                for key, value in _root_attrs(batch, self.provenance).items():
                    f.attrs.modify(key, value)  # in place: the template's order of attributes
        return Path(path)


def _seconds(batch: Batch) -> np.ndarray:
    return np.array([pd.Timestamp(t).value // 10**9 for t in batch.times], dtype=np.int64)
