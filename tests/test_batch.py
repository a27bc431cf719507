"""The bfm-batch/1 contract: round trip, h5py/xarray access, and refusals naming the field."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bfm.contracts.batch import SCHEMA, Batch, BatchError, read_batch, write_batch
from bfm.contracts.catalogue import DEFAULT_LEVELS
from bfm.testing import PROVENANCE as PROV
from bfm.testing import mock_batch, random_values


def synthetic_batch(grid, t0: str) -> Batch:
    return mock_batch(
        t0, grid, value=random_values(0), levels=DEFAULT_LEVELS, species=(2435240, 5219173, 2433433)
    )


def test_round_trip_preserves_every_array(small_grid, tmp_path):
    batch = synthetic_batch(small_grid, "2010-01-01")
    path = write_batch(batch, tmp_path / "20100101T00.h5", PROV)
    back = read_batch(path)
    assert back.times == batch.times
    assert back.grid == small_grid
    np.testing.assert_array_equal(back.levels, batch.levels)
    np.testing.assert_array_equal(back.species, batch.species)
    for group, variables in batch.groups.items():
        for var, arr in variables.items():
            np.testing.assert_array_equal(back.groups[group][var], arr)
    assert back.attrs["schema"] == SCHEMA
    assert {k: back.attrs[k] for k in PROV} == PROV


def test_file_is_chunked_compressed_and_opens_with_xarray(small_grid, tmp_path):
    path = write_batch(synthetic_batch(small_grid, "2010-01-01"), tmp_path / "b.h5", PROV)
    with h5py.File(path) as f:
        dset = f["atmospheric/t"]
        assert dset.dtype == np.float32
        assert dset.chunks == (1, 1, *small_grid.shape)
        assert "32001" in dset._filters and dset.fletcher32  # Blosc (hdf5plugin) + checksum
    ds = xr.open_dataset(path, engine="h5netcdf", group="atmospheric")
    assert ds["t"].dims == ("time", "level", "latitude", "longitude")
    assert list(ds["level"].values[:2]) == [50, 100]
    root = xr.open_dataset(path, engine="h5netcdf")
    assert root["latitude"].values[0] > root["latitude"].values[-1]  # north first
    species = xr.open_dataset(path, engine="h5netcdf", group="species")
    assert species["occurrence"].dims == ("time", "species_key", "latitude", "longitude")


def test_nan_is_kept_as_missing(small_grid, tmp_path):
    batch = synthetic_batch(small_grid, "2010-01-01")
    batch.groups["surface"]["t2m"][0, 0, 0] = np.nan
    back = read_batch(write_batch(batch, tmp_path / "b.h5", PROV))
    assert np.isnan(back.groups["surface"]["t2m"][0, 0, 0])


def _set_times(f: h5py.File, t0: str, t1: str) -> None:
    """Rewrite the times consistently (attribute and coordinate dataset)."""
    f.attrs["times"] = f'["{t0}", "{t1}"]'
    f["time"][...] = [pd.Timestamp(t).value // 10**9 for t in (t0, t1)]


def _corrupt(path: Path, edit) -> Path:
    with h5py.File(path, "a") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.attrs.__setitem__("schema", "bfm-batch/0"), "attribute 'schema'"),
        (lambda f: f.__delitem__("surface"), "'surface' but no such group"),
        (lambda f: f["surface"].__delitem__("msl"), r"lacks variables \['msl'\]"),
        (lambda f: _set_times(f, "2010-01-02", "2010-01-01"), "times must increase"),
        (lambda f: _set_times(f, "2010-01-01", "2010-01-01"), "times must increase"),
        (
            lambda f: f.attrs.__setitem__("times", '["2010-01-01", "2010-01-03"]'),
            r"dataset 'time' .* != attrs",
        ),
        (lambda f: f["latitude"].__setitem__(0, 99.0), "'latitude' does not match the grid"),
        (lambda f: f["longitude"].__setitem__(-1, 0.0), "'longitude' does not match the grid"),
        (lambda f: f.attrs.__delitem__("grid"), "missing root attribute 'grid'"),
    ],
)
def test_reader_refuses_bad_files_naming_file_and_field(small_grid, tmp_path, edit, message):
    path = write_batch(synthetic_batch(small_grid, "2010-01-01"), tmp_path / "bad.h5", PROV)
    _corrupt(path, edit)
    with pytest.raises(BatchError, match=message) as err:
        read_batch(path)
    assert str(path) in str(err.value)


def test_reader_refuses_wrong_dtype_and_shape(small_grid, tmp_path):
    path = write_batch(synthetic_batch(small_grid, "2010-01-01"), tmp_path / "b.h5", PROV)

    def to_float64(f):
        data = f["surface/t2m"][()]
        del f["surface/t2m"]
        f["surface"].create_dataset("t2m", data=data.astype(np.float64))

    _corrupt(path, to_float64)
    with pytest.raises(BatchError, match=r"surface/t2m has dtype float64"):
        read_batch(path)

    path2 = write_batch(synthetic_batch(small_grid, "2010-01-01"), tmp_path / "c.h5", PROV)

    def crop(f):
        data = f["surface/u10"][()]
        del f["surface/u10"]
        f["surface"].create_dataset("u10", data=data[:, :-1])

    _corrupt(path2, crop)
    with pytest.raises(BatchError, match=r"surface/u10 has shape \(2, 8, 13\), expected"):
        read_batch(path2)


def test_reader_refuses_a_non_hdf5_file(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(BatchError, match="cannot open as HDF5"):
        read_batch(path)


def test_failed_write_leaves_no_partial_file(small_grid, tmp_path):
    batch = synthetic_batch(small_grid, "2010-01-01")
    target = tmp_path / "b.h5"
    with pytest.raises(TypeError):
        write_batch(batch, target, {"bfm_version": object()})  # not storable as an attribute
    assert list(tmp_path.iterdir()) == []


def test_damaged_bytes_are_detected_never_read_as_data(small_grid, tmp_path):
    """Bytes overwritten inside a batch (not a truncation) give a BatchError naming the file
    (no traceback) or, where they hit unused space, the original values; never wrong values
    (every dataset carries a checksum)."""
    batch = synthetic_batch(small_grid, "2010-01-01")
    clean = write_batch(batch, tmp_path / "clean.h5", PROV).read_bytes()
    rng = np.random.default_rng(0)
    detected = 0
    for where in np.linspace(0.02, 0.98, 25):
        path = tmp_path / "b.h5"
        data = bytearray(clean)
        start = int(len(data) * where)
        data[start : start + 64] = rng.integers(0, 256, 64, np.uint8).tobytes()
        path.write_bytes(bytes(data))
        try:
            back = read_batch(path)
        except BatchError as err:
            assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
            detected += 1
            continue
        for group, variables in batch.groups.items():
            for var, arr in variables.items():
                np.testing.assert_array_equal(back.groups[group][var], arr)
    assert detected >= 12, detected  # most damage hits checksummed chunks (14 of 25 here)


def test_only_the_groups_asked_for_are_read(tmp_path: Path) -> None:
    path = write_batch(mock_batch("2010-01-01"), tmp_path / "20100101T00.h5", PROV)
    with h5py.File(path, "a") as f:  # a group no module here knows (a plugin's, say)
        f.attrs["groups"] = f.attrs["groups"].replace('"species"', '"species", "toy"')
        f.create_group("toy")
    with pytest.raises(BatchError, match="toy"):
        read_batch(path)
    batch = read_batch(path, only=("surface", "atmospheric"))
    assert set(batch.groups) == {"surface", "atmospheric"}
    assert batch.groups["surface"]["t2m"].shape[0] == 2


def test_a_job_started_after_netcdf4_writes_and_reads_batches(tmp_path):
    """Snakemake imports netCDF4 (which sets HDF5_PLUGIN_PATH to its own plugins) and its jobs
    inherit the variable: a batch must still be written and read with our Blosc filter."""
    import os
    import subprocess
    import sys

    import netCDF4

    plugins = Path(netCDF4.__file__).parent / "plugins"
    code = (
        "from bfm.contracts.batch import read_batch, write_batch\n"
        "from bfm.testing import PROVENANCE, mock_batch\n"
        "import pandas as pd, sys\n"
        "b = mock_batch(pd.Timestamp('2010-01-01'))\n"
        "write_batch(b, sys.argv[1], PROVENANCE)\n"
        "assert read_batch(sys.argv[1]).times == b.times\n"
    )
    env = {**os.environ, "HDF5_PLUGIN_PATH": str(plugins)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b.h5")], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
