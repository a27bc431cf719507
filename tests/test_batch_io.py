"""The fast paths over batch files (bfm.contracts.batch_io): BatchWriter writes what
write_batch writes, object by object; BatchFile decodes fields into the caller's arrays with
read_batch's checks and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr

from bfm.contracts.batch import BatchError, read_batch, write_batch
from bfm.contracts.batch_io import BatchFile, BatchWriter
from bfm.contracts.catalogue import DEFAULT_LEVELS
from bfm.testing import PROVENANCE, mock_batch, random_values


def _attrs(f: h5py.File, obj: Any) -> list[tuple[str, Any, str]]:
    """An object's attributes in their stored order; references as the names they point to."""
    out = []
    for key in obj.attrs:
        value = obj.attrs[key]
        if isinstance(value, np.ndarray) and value.dtype.fields:  # REFERENCE_LIST
            value = [(f[ref].name, int(axis)) for ref, axis in value]
        elif isinstance(value, np.ndarray) and value.dtype.kind == "O":  # DIMENSION_LIST
            value = [[f[ref].name for ref in row] for row in value]
        elif isinstance(value, np.ndarray):
            value = (value.dtype.str, value.tobytes())
        out.append((key, repr(value), str(obj.attrs.get_id(key).get_type().dtype)))
    return out


def describe(path: Path) -> list[Any]:
    """Everything a batch file holds: groups and their order, datasets (shape, dtype, chunks,
    filters, fill value, allocation, values as bytes) and every attribute."""
    with h5py.File(path, "r") as f:
        out: list[Any] = [("/", _attrs(f, f), list(f))]

        def visit(name: str, obj: Any) -> None:
            plist = obj.id.get_create_plist()
            if isinstance(obj, h5py.Group):
                out.append((name, list(obj), plist.get_link_creation_order(), _attrs(f, obj)))
                return
            out.append((name, obj.shape, obj.dtype.str, obj.chunks, dict(obj._filters),
                        repr(obj.fillvalue), obj.maxshape, plist.get_alloc_time(),
                        plist.get_attr_creation_order(), _attrs(f, obj),
                        obj[()].tobytes()))  # fmt: skip

        f.visititems(visit)
    return out


def _batch(t0: str, seed: int, species: tuple[int, ...] = (2435240, 5219173, 2433433)) -> Any:
    batch = mock_batch(t0, value=random_values(seed), levels=DEFAULT_LEVELS, species=species)
    batch.groups["surface"]["t2m"][1, 2, 3] = np.nan  # a missing value
    return batch


def test_the_writer_writes_what_write_batch_writes(tmp_path: Path) -> None:
    writer = BatchWriter(PROVENANCE)
    batches = [_batch("2010-01-01", 0), _batch("2010-01-02", 1)]
    batches.append(_batch("2010-01-03", 2, species=(2435240,)))  # another structure
    for batch in batches:
        name = batch.times[0].strftime("%Y%m%dT%H.h5")
        fast = writer.write(batch, tmp_path / "fast" / name)
        slow = write_batch(batch, tmp_path / "slow" / name, PROVENANCE)
        assert describe(fast) == describe(slow), name
    assert len(writer._templates) == 2  # one per structure, reused within it
    back = read_batch(fast)
    np.testing.assert_array_equal(back.groups["species"]["occurrence"],
                                  batches[-1].groups["species"]["occurrence"])  # fmt: skip
    ds = xr.open_dataset(fast, engine="h5netcdf", group="atmospheric")
    assert ds["t"].dims == ("time", "level", "latitude", "longitude")
    assert not list(tmp_path.glob("**/.*tmp*"))  # written atomically, nothing left behind


def test_a_batch_file_reads_fields_into_place(tmp_path: Path) -> None:
    batch = _batch("2010-01-01", 0)
    path = write_batch(batch, tmp_path / "20100101T00.h5", PROVENANCE)
    t = batch.groups["atmospheric"]["t"]
    with BatchFile(path) as f:
        assert f.times == batch.times and list(f.inner("atmospheric")) == list(DEFAULT_LEVELS)
        out = np.empty(t.shape[1:], np.float32)
        f.read_into("atmospheric", "t", out, time=1)
        np.testing.assert_array_equal(out, t[1])
        whole = np.empty(t.shape, np.float32)
        f.read_into("atmospheric", "t", whole)
        np.testing.assert_array_equal(whole, t)
        with pytest.raises(ValueError, match=r"out must be C-contiguous float32"):
            f.read_into("atmospheric", "t", out[:, :, ::2])
        with pytest.raises(BatchError, match=rf"{path}: unknown batch group 'sst'"):
            f.read_into("sst", "x", out)
    part = mock_batch("2010-01-01", value=random_values(0), groups=["surface", "static"])
    path = write_batch(part, tmp_path / "part" / "20100101T00.h5", PROVENANCE)
    with BatchFile(path) as f, pytest.raises(BatchError, match=rf"{path}: lacks group 'atmo"):
        f.read_into("atmospheric", "t", out)


def test_a_batch_file_refuses_bad_fields_and_damage(tmp_path: Path) -> None:
    batch = _batch("2010-01-01", 0)
    path = write_batch(batch, tmp_path / "20100101T00.h5", PROVENANCE)
    with h5py.File(path, "r+") as f:
        data = f["surface/u10"][()]
        del f["surface/u10"]
        f["surface"].create_dataset("u10", data=data[:, :-1])
        offset = f["surface/t2m"].id.get_chunk_info(0).byte_offset
    out = np.empty(data.shape, np.float32)
    with BatchFile(path) as f, pytest.raises(BatchError, match=r"surface/u10 has shape"):
        f.read_into("surface", "u10", out)
    raw = bytearray(path.read_bytes())
    raw[offset + 16 : offset + 48] = bytes(32)  # inside t2m's first chunk
    path.write_bytes(bytes(raw))
    with BatchFile(path) as f, pytest.raises(BatchError, match=rf"{path}: damaged or unreadable"):
        f.read_into("surface", "t2m", out)
