"""Tiling ERA5 without holding the month: era5.open is lazy, gridded_tile reads blocks of
native times, and the result is the whole-array computation's bit for bit. Global files
(longitudes 0..360) are wrapped and cut to the target, also across 0 deg, reading each run of
longitudes as one slice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bfm.contracts import catalogue
from bfm.contracts.grid import Grid
from bfm.provenance import provenance
from bfm.sources import Study, era5, tiling

HALF = Grid(46.0, 47.5, 8.0, 9.5, 0.5)  # native cover 45.75..47.75 N, 7.75..9.75 E
LEVELS = (250, 500, 850)
PROV = provenance(None, {"test": "streaming"})
SOURCES = {"era5": {"mode": "sample", "seed": 5}}
ERA5 = era5.ERA5()


def study(step: str = "1D", grid: Grid = HALF, levels=LEVELS, start="2010-01-03") -> Study:
    return Study(grid, start, "2010-02-28", step, tuple(levels), "species.csv", SOURCES)


def tile(raw: xr.Dataset, modality: str, st: Study) -> xr.Dataset:
    return ERA5.to_tile(raw, catalogue.modality(modality), st, "2010-01", PROV)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {
        "surface": era5.sample(root / "surface.nc", "surface", HALF, "2010-01", seed=5),
        "atmospheric": era5.sample(root / "atm.nc", "atmospheric", HALF, "2010-01", LEVELS, 5),
    }


# --- the whole-array computation (the tile builder before streaming), as the reference ------
def old_interval_mean(data: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, int]:
    total = np.zeros(data.shape[1:])
    complete = np.ones(data.shape[1:], dtype=bool)
    some = np.zeros(data.shape[1:], dtype=bool)
    for i in members:
        values = data[i].astype(np.float64)
        finite = np.isfinite(values)
        total += np.where(finite, values, 0.0)
        complete &= finite
        some |= finite
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(complete, total / len(members), np.nan)
    return mean, int((some & ~complete).sum())


def whole_array(raw: xr.Dataset, modality: str, st: Study) -> dict[str, tuple]:
    mod = catalogue.modality(modality)
    native = tiling.native_grid(raw, st.grid, "x")
    times = st.times_in("2010-01")
    index = tiling.interval_index(pd.DatetimeIndex(raw["time"].values), times, st.step)
    members = [np.flatnonzero(index == k) for k in range(len(times))]
    out = {}
    for var in mod.variables:
        loaded = raw[var.name].transpose(*mod.tile_dims).values  # the whole month at once
        values, n_bad = tiling.mask_out_of_range(loaded, var, "x")
        parts = [old_interval_mean(values, m) for m in members]
        method = tiling.REGRIDDERS[var.regrid]
        regridded = np.stack([method(mean, native, st.grid) for mean, _ in parts])
        out[var.name] = (regridded.astype(np.float32), n_bad, sum(n for _, n in parts))
    return out


def assert_same(got: xr.Dataset, want: dict[str, tuple]) -> None:
    for name, (values, n_bad, n_incomplete) in want.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name].values, values, strict=True)  # bit for bit
        assert got[name].attrs["n_out_of_range"] == n_bad
        assert got[name].attrs["n_incomplete"] == n_incomplete


def flawed(path) -> xr.Dataset:
    """The surface month with a gap (a missing value), fill values and shuffled times."""
    ds = era5.open(path, "surface").load()
    ds["msl"].values[17, 1, 2] = np.nan  # 2010-01-05T06 at one cell: that day is missing there
    ds["t2m"].values[3, 2, 4] = 1e20  # out of range: masked and counted
    ds["t2m"].values[40, 0, 0] = -1e20
    shuffled = ds.isel(time=np.random.default_rng(0).permutation(ds.sizes["time"]))
    shuffled.encoding["source"] = str(path)
    return shuffled


@pytest.mark.parametrize("step", ["6h", "1D", "1MS"])
@pytest.mark.parametrize("block_bytes", [1, 2000, tiling.BLOCK_BYTES])
def test_streamed_tiles_equal_the_whole_array_ones_bit_for_bit(
    files, monkeypatch, step, block_bytes
):
    monkeypatch.setattr(tiling, "BLOCK_BYTES", block_bytes)  # 1: one native time per read
    st = study(step, start="2010-01-01" if step == "1MS" else "2010-01-03")  # a part month
    for raw, modality in (
        (era5.open(files["surface"], "surface"), "era5_surface"),
        (era5.open(files["atmospheric"], "atmospheric"), "era5_atmospheric"),
        (flawed(files["surface"]), "era5_surface"),
    ):
        assert_same(tile(raw, modality, st), whole_array(raw, modality, st))
        raw.close()


def test_a_lazy_month_is_read_in_blocks_and_never_loaded(files, monkeypatch):
    rows = 124 // 10 + 1
    ds = era5.open(files["atmospheric"], "atmospheric")
    row_bytes = ds["t"].isel(time=0).size * 4
    monkeypatch.setattr(tiling, "BLOCK_BYTES", 10 * row_bytes)
    reads: list[tuple[str, int]] = []
    real_read = tiling._read

    def counting(field, block, dims, where):
        reads.append((field.name, block.stop - block.start))
        return real_read(field, block, dims, where)

    monkeypatch.setattr(tiling, "_read", counting)
    assert not any(v._in_memory for v in ds.data_vars.values())  # open loads nothing
    out = tile(ds, "era5_atmospheric", study("1D", start="2010-01-01"))
    assert [n for name, n in reads if name == "t"] == [10] * 12 + [4]  # 124 native times
    assert len(reads) == 5 * rows
    assert not any(v._in_memory for v in ds.data_vars.values())  # still not loaded
    # Known answer: a daily value is the mean of the day's four 6-hourly values (identity
    # regridding on the native grid: tile cell = native cell).
    quarter = era5.native_grid(HALF)
    day = tile(ds, "era5_atmospheric", study("1D", quarter, start="2010-01-01"))
    np.testing.assert_allclose(
        day["t"].values[4], ds["t"].values[16:20].astype(np.float64).mean(axis=0), rtol=1e-6
    )
    assert out["t"].shape == (31, 3, *HALF.shape)
    ds.close()


# --- global files: 0..360, across 0 deg -----------------------------------------------------
BAND = Grid(46.0, 47.0, -179.5, 179.5, 0.5)  # native latitudes 45.75..47.25
TWO_DAYS = era5.month_times("2010-01")[:8]
ACROSS_0 = Grid(46.0, 47.0, -1.0, 1.0, 0.5)  # native longitudes -1.25..1.25


@pytest.fixture(scope="module")
def global_file(tmp_path_factory):
    """Two days of a surface file on a global 0.25 deg band, longitudes 0..359.75 (as the CDS
    writes a global request)."""
    ds = era5.sample_dataset("surface", BAND, "2010-01", seed=5, times=TWO_DAYS)
    ds = ds.reindex(longitude=np.arange(-180.0, 180.0, 0.25))  # the -180 column (NaN)
    ds = ds.assign_coords(longitude=ds["longitude"].values % 360.0).sortby("longitude")
    path = tmp_path_factory.mktemp("global") / "global.nc"
    ds.to_netcdf(path, encoding=era5.netcdf_encoding(ds))
    return path


def test_a_global_file_is_wrapped_to_minus_180_180(global_file):
    ds = era5.open(global_file, "surface")
    lon = ds["longitude"].values
    assert lon[0] == -180.0 and lon[-1] == 179.75 and (np.diff(lon) == 0.25).all()
    with xr.open_dataset(global_file) as raw:
        rolled = np.roll(raw["t2m"].values, 720, axis=-1)  # 180..359.75 first
    np.testing.assert_array_equal(ds["t2m"].values, rolled)
    np.testing.assert_array_equal(ds["t2m"][3, 2, 715:725].values, rolled[3, 2, 715:725])
    np.testing.assert_array_equal(ds["t2m"].isel(longitude=[721, 3]).values, rolled[..., [721, 3]])
    ds.close()


@pytest.mark.parametrize("target", [ACROSS_0, Grid(46.0, 47.0, 8.0, 9.0, 0.5)])
def test_a_global_file_tiles_a_target_across_0_deg(global_file, tmp_path, monkeypatch, target):
    st = Study(target, "2010-01-01", "2010-01-02", "1D", LEVELS, "species.csv", SOURCES)
    modality = catalogue.modality("era5_surface")
    native = ERA5.open([global_file], modality, st)
    cover = era5.native_grid(target)
    np.testing.assert_array_equal(native["longitude"].values, cover.longitudes)
    np.testing.assert_array_equal(native["latitude"].values, cover.latitudes)
    # The same cells cut from the fully loaded file, in memory.
    loaded = era5.open(global_file, "surface").load()
    cut = loaded.sel(
        longitude=slice(cover.lon_min, cover.lon_max), latitude=slice(cover.lat_max, cover.lat_min)
    )
    cut.encoding["source"] = str(global_file)
    got = ERA5.to_tile(native, modality, st, "2010-01", PROV)
    assert_same(got, whole_array(cut, "era5_surface", st))
    # ... and the tile of an area file of the target (the sample is a function of the place).
    area = era5.sample(tmp_path / "area.nc", "surface", target, "2010-01", seed=5)
    want = ERA5.to_tile(ERA5.open([area], modality, st), modality, st, "2010-01", PROV)
    for name in ("t2m", "msl", "u10", "v10"):
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=1e-6)
    native.close()


def test_an_old_layout_global_file_with_ascending_latitudes(tmp_path):
    lat, lon = np.arange(45.75, 47.5, 0.25), np.arange(0.0, 360.0, 0.25)
    data = np.arange(2 * lat.size * lon.size, dtype=np.int16).reshape(2, lat.size, lon.size)
    old = xr.Dataset(
        {
            "t2m": (
                ("time", "latitude", "longitude"),
                data,
                {"scale_factor": 0.001, "add_offset": 270.0},
            )
        },
        coords={
            "time": pd.date_range("2010-01-01", periods=2, freq="6h"),
            "latitude": lat,
            "longitude": lon,
        },
    )
    old.to_netcdf(tmp_path / "old.nc")
    ds = era5.open(tmp_path / "old.nc", None, ACROSS_0)
    assert ds["latitude"].values.tolist() == era5.native_grid(ACROSS_0).latitudes.tolist()
    assert ds["longitude"].values.tolist() == [
        -1.25,
        -1.0,
        -0.75,
        -0.5,
        -0.25,
        0,
        0.25,
        0.5,
        0.75,
        1.0,
        1.25,
    ]
    # (time 1, 47.25 N, 359.75 E): int16 data[1, 6, 1439] unpacked = 270 + 0.001 * value.
    value = 270.0 + 0.001 * data[1, 6, 1439]
    assert float(ds["t2m"][1, 0, 4]) == pytest.approx(value, abs=1e-4)
    ds.close()


# --- open: cut to the study's cells and levels ----------------------------------------------
def test_open_keeps_the_study_levels_and_cells(files, tmp_path):
    st = study(levels=(850, 500))
    modality = catalogue.modality("era5_atmospheric")
    native = ERA5.open([files["atmospheric"]], modality, st)
    assert native["level"].values.tolist() == [500, 850]
    out = ERA5.to_tile(native, modality, st, "2010-01", PROV)
    assert out["level"].values.tolist() == [500, 850] and out["t"].shape[1] == 2
    full = era5.open(files["atmospheric"], "atmospheric")
    np.testing.assert_array_equal(native["t"].values, full["t"].sel(level=[500, 850]).values)
    with pytest.raises(
        ValueError,
        match=r"atm\.nc: pressure level\(s\) \[1000\] of the config "
        r"key 'levels' are not in the file \(it has \[250, 500, 850\]\)",
    ):
        ERA5.open([files["atmospheric"]], modality, study(levels=(500, 1000)))
    # A file larger than the target is cut to the target's native cells.
    inner = Grid(46.5, 47.0, 8.5, 9.0, 0.5)
    cut = ERA5.open([files["surface"]], catalogue.modality("era5_surface"), study(grid=inner))
    assert cut["latitude"].values.tolist() == era5.native_grid(inner).latitudes.tolist()
    assert cut["longitude"].values.tolist() == era5.native_grid(inner).longitudes.tolist()
    for ds in (native, full, cut):
        ds.close()


def test_runs_backed_variables_behave_like_lazily_opened_ones(global_file):
    ds = era5.open(global_file, "surface", ACROSS_0)
    copy = ds.copy(deep=True)
    copy["t2m"].values[0, 0, 0] = 1e20  # edits a loaded copy, as for xr.open_dataset
    assert copy["t2m"].values[0, 0, 0] == 1e20 != ds["t2m"].values[0, 0, 0]
    assert ds["t2m"].isel(longitude=slice(2, 2)).values.shape == (8, 7, 0)
    assert ds["t2m"][:, 1].values.shape == (8, 11) and ds["t2m"][0, 1, 5].values.shape == ()
    ds.close()
