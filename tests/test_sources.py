"""Sample sources (ERA5, GBIF), their native formats, open() and the manifests."""

import csv
import io
import json
import zipfile
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bfm.contracts.grid import Grid
from bfm.provenance import file_sha256
from bfm.sources import era5, gbif, manifest
from bfm.sources.climate import T_STRATOSPHERE, Climate, annual_mean_t2m
from bfm.testing import EUROPE_GRID as EUROPE

SMALL = Grid(46.0, 48.0, 8.0, 10.0, 0.5)
DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
SPECIES_CSV = Path(__file__).resolve().parents[1] / "tests" / "species.csv"


# --- ERA5 ----------------------------------------------------------------------------------
def test_native_grid_covers_the_target_cells():
    native = era5.native_grid(DEMO)
    assert native == Grid(43.75, 56.25, -0.25, 20.25, 0.25)
    assert native.shape == (51, 83)
    assert era5.native_grid(EUROPE) == EUROPE  # same resolution: the same cells
    req = era5.request("surface", DEMO, "2010-01")["request"]
    assert req["area"] == [56.25, -0.25, 43.75, 20.25]  # N, W, S, E
    assert req["time"] == ["00:00", "06:00", "12:00", "18:00"] and len(req["day"]) == 31


@pytest.fixture(scope="module")
def surface_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("era5") / "surface-2010-07.nc"
    return era5.sample(path, "surface", SMALL, "2010-07", seed=11)


def test_sample_era5_surface_layout(surface_file):
    with netCDF4.Dataset(surface_file) as nc:
        assert nc.Conventions == "CF-1.7" and nc.GRIB_centre == "ecmf"
        assert nc.institution == "European Centre for Medium-Range Weather Forecasts"
        assert nc.variables["t2m"].dimensions == ("valid_time", "latitude", "longitude")
        vt = nc.variables["valid_time"]
        assert vt.dtype == np.int64 and vt.units == "seconds since 1970-01-01"
        assert vt.calendar == "proleptic_gregorian" and vt.standard_name == "time"
        assert nc.variables["number"][()] == 0
        assert list(nc.variables["expver"][:3]) == ["0001"] * 3
        t2m = nc.variables["t2m"]
        assert t2m.dtype == np.float32 and t2m.units == "K"
        assert t2m.standard_name == "air_temperature" and t2m.long_name
        assert t2m.filters()["zlib"] and np.isnan(t2m._FillValue)
        assert nc.variables["msl"].units == "Pa" and nc.variables["u10"].units == "m s**-1"
        assert vt.shape == (31 * 4,)
        np.testing.assert_array_equal(np.diff(vt[:]), 6 * 3600)
        lat = nc.variables["latitude"][:]
        assert (np.diff(lat) < 0).all() and lat[0] == 48.25 and lat[-1] == 45.75


def test_sample_era5_magnitudes(surface_file):
    ds = era5.open(surface_file, "surface")
    assert 250 < float(ds.t2m.min()) and float(ds.t2m.max()) < 315
    assert 96_000 < float(ds.msl.min()) and float(ds.msl.max()) < 106_000
    assert float(ds.msl.max() - ds.msl.min()) > 1_500  # moving synoptic systems
    assert float(ds.u10.mean()) > 0  # westerlies
    assert float(np.abs(ds.v10).max()) < 40


def test_manifest_of_a_sample(surface_file):
    record = manifest.verify(surface_file)
    assert record["url"] == "sample:era5?seed=11"
    assert record["sha256"] == file_sha256(surface_file)
    assert record["bytes"] == surface_file.stat().st_size
    assert record["request"]["dataset"] == "reanalysis-era5-single-levels"
    assert "Copernicus" in record["licence"] and "Hersbach" in record["citation"]
    assert record["retrieved_at"].endswith("+00:00")


def test_manifest_refuses_credentials_and_detects_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    for request, url in [
        ({"variable": ["t"], "token": "x"}, "https://x.org/api"),
        ({"variable": ["t"]}, "https://user:pw@x.org/api"),
        ({"variable": ["t"]}, "https://x.org/api?key=secret"),
    ]:
        with pytest.raises(ValueError, match="credential"):
            manifest.write_manifest(
                path, source="s", request=request, url=url, licence="l", citation="c"
            )
    assert not manifest.manifest_path(path).exists()
    manifest.write_manifest(
        path, source="s", request={"key": "TAXON_KEY"}, url="u", licence="l", citation="c"
    )
    assert json.loads(manifest.manifest_path(path).read_text())["bytes"] == 3
    path.write_bytes(b"abcd")
    with pytest.raises(ValueError, match="differ"):
        manifest.verify(path)


def test_sample_era5_is_deterministic():
    a = era5.sample_dataset("surface", SMALL, "2010-02", seed=3)
    b = era5.sample_dataset("surface", SMALL, "2010-02", seed=3)
    c = era5.sample_dataset("surface", SMALL, "2010-02", seed=4)
    for name in ("t2m", "msl", "u10", "v10"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
        assert not np.array_equal(a[name].values, c[name].values)


def test_sample_era5_files_are_byte_identical_for_a_seed(tmp_path):
    paths = [era5.sample(tmp_path / f"{k}.nc", "static", SMALL, seed=5) for k in "ab"]
    assert file_sha256(paths[0]) == file_sha256(paths[1])


def test_t2m_annual_mean_gradient_and_monthly_means():
    np.testing.assert_allclose(annual_mean_t2m(np.array([30.0, 72.0])), [300.0, 265.0])
    tall = Grid(35.0, 70.0, 5.0, 6.0, 0.5)
    for period in ("2010-01", "2010-07"):
        t2m = era5.sample_dataset("surface", tall, period, seed=2)["t2m"].values.mean(axis=0)
        assert t2m[:10].mean() < t2m[-10:].mean() - 10  # north colder than south


def test_seasonal_cycle_is_larger_over_land():
    climate = Climate.from_seed(0)
    lat, lon = np.arange(60.0, 40.0, -0.5), np.arange(0.0, 20.0, 0.5)
    surf = climate.surface(lat, lon)
    jan = climate.sea_level_t(np.array(["2010-01-15"], "datetime64[s]"), lat, lon, surf.lsm)[0]
    jul = climate.sea_level_t(np.array(["2010-07-15"], "datetime64[s]"), lat, lon, surf.lsm)[0]
    swing = jul - jan
    assert swing[surf.lsm > 0.99].mean() > swing[surf.lsm < 0.01].mean() + 5


@pytest.fixture(scope="module")
def atmospheric():
    return era5.sample_dataset("atmospheric", SMALL, "2010-01", seed=1)


def test_sample_era5_atmospheric_structure(atmospheric):
    ds = atmospheric
    assert ds["t"].dims == ("valid_time", "pressure_level", "latitude", "longitude")
    assert ds["pressure_level"].dtype == np.float64
    assert ds["pressure_level"].values.tolist() == sorted(era5.DEFAULT_LEVELS, reverse=True)
    assert ds["q"].attrs["units"] == "kg kg**-1" and ds["z"].attrs["units"] == "m**2 s**-2"
    assert (ds["q"].values > 0).all()


def test_lapse_rate_stratosphere_jet_and_hypsometric_z(atmospheric):
    levels = atmospheric["pressure_level"].values  # 1000 .. 50 hPa (up)
    t = atmospheric["t"].values
    troposphere = levels >= 250
    # Upward from 1000 hPa to 250 hPa temperature never rises and falls on average.
    assert (np.diff(t[:, troposphere], axis=1) <= 1e-3).all()
    assert (np.diff(t[:, troposphere].mean(axis=(0, 2, 3))) < -2).all()
    assert np.abs(t[:, levels <= 200] - T_STRATOSPHERE).max() < 3.0
    z = atmospheric["z"].values
    assert (np.diff(z, axis=1) > 0).all()  # geopotential grows upward
    z500 = z[:, list(levels).index(500)] / 9.80665
    assert 4800 < z500.min() and z500.max() < 6000
    u = atmospheric["u"].values.mean(axis=(0, 2, 3))
    assert levels[np.argmax(u)] in (200, 250, 300)


def test_sample_era5_static_fields():
    ds = era5.sample_dataset("static", DEMO, seed=20100101)
    lsm, slt, z = (ds[v].values[0] for v in ("lsm", "slt", "z"))
    assert ds["lsm"].dims == ("valid_time", "latitude", "longitude") and slt.dtype == np.float32
    assert lsm.min() >= 0 and lsm.max() <= 1 and ((lsm > 0) & (lsm < 1)).any()  # coasts
    assert 0.2 < lsm.mean() < 0.95
    np.testing.assert_array_equal(slt, np.round(slt))
    assert set(np.unique(slt)) <= set(range(8)) and (slt[lsm < 0.5] == 0).all()
    assert (slt[lsm >= 0.5] >= 1).all()
    assert z.min() >= 0 and 0 < z.max() / 9.80665 <= 2500.1
    assert (z[lsm < 0.01] == 0).all()


def test_era5_open_normalises_the_new_layout(tmp_path):
    path = era5.sample(tmp_path / "a.nc", "atmospheric", SMALL, "2010-02", (850, 500), seed=1)
    ds = era5.open(path, "atmospheric")
    assert ds["t"].dims == ("time", "level", "latitude", "longitude")
    assert ds["level"].values.tolist() == [500, 850] and ds["level"].dtype == np.int64
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    assert pd.Timestamp(ds["time"].values[0]) == pd.Timestamp("2010-02-01")
    assert "number" not in ds.variables and "expver" not in ds.variables
    assert ds.encoding["source"] == str(path)


def test_era5_open_reads_the_old_layout(tmp_path):
    lat, lon = np.array([45.0, 45.25, 45.5]), np.array([359.5, 359.75, 0.0, 0.25])
    data = np.arange(2 * 2 * 3 * 4, dtype=np.int16).reshape(2, 2, 3, 4)
    old = xr.Dataset(
        {
            "t": (
                ("time", "level", "latitude", "longitude"),
                data,
                {"scale_factor": 0.01, "add_offset": 250.0},
            )
        },
        coords={
            "time": pd.date_range("2010-01-01", periods=2, freq="6h"),
            "level": np.array([1000, 500], np.int32),
            "latitude": lat,
            "longitude": lon,
        },
    )
    old.to_netcdf(tmp_path / "old.nc")
    ds = era5.open(tmp_path / "old.nc")
    assert ds["level"].values.tolist() == [500, 1000]
    assert ds["latitude"].values.tolist() == [45.5, 45.25, 45.0]
    assert ds["longitude"].values.tolist() == [-0.5, -0.25, 0.0, 0.25]
    # Value at (time 0, 1000 hPa, 45.0 N, 359.5 E) ends up at level[-1], lat[-1], lon 0.
    assert float(ds["t"][0, 1, 2, 0]) == pytest.approx(250.0 + 0.01 * data[0, 0, 0, 0])


def test_era5_open_errors_name_the_file_and_field(tmp_path, surface_file):
    with pytest.raises(ValueError, match=rf"{surface_file}.*'z'.*atmospheric"):
        era5.open(surface_file, "atmospheric")
    with pytest.raises(FileNotFoundError, match="nope.nc"):
        era5.open(tmp_path / "nope.nc")
    xr.Dataset({"t2m": (("x",), np.zeros(2))}).to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(ValueError, match=r"bad\.nc.*latitude"):
        era5.open(tmp_path / "bad.nc")
    with pytest.raises(ValueError, match="period"):
        era5.sample_dataset("surface", SMALL, "2010-13")


# --- GBIF ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def species():
    return gbif.read_species(SPECIES_CSV)


@pytest.fixture(scope="module")
def occurrence_zip(tmp_path_factory, species):
    path = tmp_path_factory.mktemp("gbif") / "occ.zip"
    return gbif.sample(
        path, species, "2010-01-01", "2010-02-28", DEMO, seed=7, climate_seed=20100101
    )


def test_gbif_zip_is_simple_csv(occurrence_zip):
    with zipfile.ZipFile(occurrence_zip) as zf:
        names = zf.namelist()
        assert names == [f"{gbif.download_key(7)}.csv"]
        text = zf.read(names[0]).decode()
    assert gbif.download_key(7).startswith("0000001-") and len(gbif.download_key(7)) == 20
    lines = text.splitlines()
    header = lines[0].split("\t")
    assert len(header) == 50 and tuple(header) == gbif.SIMPLE_CSV_COLUMNS
    assert header[:3] == ["gbifID", "datasetKey", "occurrenceID"] and header[-1] == "issue"
    assert all(line.count("\t") == 49 for line in lines)
    assert '"' not in text  # unquoted, as GBIF writes it
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    assert {r["taxonRank"] for r in rows} == {"SPECIES"}
    assert {r["occurrenceStatus"] for r in rows} == {"PRESENT"}
    assert {r["basisOfRecord"] for r in rows} == {"HUMAN_OBSERVATION"}
    assert {r["license"] for r in rows} == {"CC_BY_4_0"}
    fox = next(r for r in rows if r["speciesKey"] == "5219243")
    assert (fox["kingdom"], fox["class"], fox["family"]) == ("Animalia", "Mammalia", "Canidae")
    assert fox["speciesKey"] == fox["taxonKey"] and fox["scientificName"] == "Vulpes vulpes"
    assert {len(r["eventDate"]) for r in rows} == {10, 19}  # dates and date-times
    assert any(r["countryCode"] for r in rows)
    first = rows[0]
    assert first["eventDate"][:10] == f"{first['year']}-{int(first['month']):02d}-" + (
        f"{int(first['day']):02d}"
    )


def test_gbif_open(occurrence_zip, species):
    df = gbif.open(occurrence_zip)
    assert 1000 < len(df) < 10_000  # a few thousand records for the demo window
    assert df["speciesKey"].nunique() >= 5
    assert set(df["speciesKey"].unique()) <= set(species["gbif_key"])
    assert df["decimalLatitude"].dtype == np.float64
    assert np.issubdtype(df["eventDate"].dtype, np.datetime64) and df["eventDate"].notna().all()
    assert df["eventDate"].min() >= pd.Timestamp("2010-01-01")
    assert df["eventDate"].max() < pd.Timestamp("2010-03-01")
    assert DEMO.contains(df["decimalLatitude"].values, df["decimalLongitude"].values).all()
    assert df.attrs["download_key"] == gbif.download_key(7)
    assert df.attrs["licence"] == "CC BY 4.0" and "0000001-" in df.attrs["citation"]
    record = manifest.verify(occurrence_zip)
    assert record["url"] == "sample:gbif?seed=7&climate_seed=20100101"
    assert record["request"]["format"] == "SIMPLE_CSV"


def _t2m_at_occurrences(df: pd.DataFrame, climate_seed: int) -> pd.Series:
    days = pd.date_range("2010-01-01", "2010-02-28", freq="D")
    t2m = gbif.daily_mean_t2m(Climate.from_seed(climate_seed), days, DEMO)
    row, col = DEMO.index_of(df["decimalLatitude"].values, df["decimalLongitude"].values)
    day = (df["eventDate"].dt.normalize() - days[0]).dt.days.to_numpy()
    return pd.Series(t2m[day, row, col], index=df.index)


def test_gbif_occurrences_follow_the_sample_climate(occurrence_zip, species):
    df = gbif.open(occurrence_zip)
    niche = gbif.niches(list(species["gbif_key"]), seed=7)
    coldest = min(niche, key=lambda k: niche[k].t_opt)
    warmest = max(niche, key=lambda k: niche[k].t_opt)
    t_occ = _t2m_at_occurrences(df, 20100101)
    t_cold = t_occ[df["speciesKey"] == coldest].mean()
    t_warm = t_occ[df["speciesKey"] == warmest].mean()
    assert t_cold < t_warm - 2
    # Occurrences are on land (cells with some land fraction) only.
    surf = Climate.from_seed(20100101).surface(DEMO.latitudes, DEMO.longitudes)
    row, col = DEMO.index_of(df["decimalLatitude"].values, df["decimalLongitude"].values)
    assert (surf.lsm[row, col] > 0).all()


def test_gbif_sample_is_deterministic(tmp_path, species):
    kwargs = dict(species=species, start="2010-01-01", end="2010-01-10", grid=SMALL)
    a = gbif.sample(tmp_path / "a.zip", seed=1, climate_seed=2, **kwargs)
    b = gbif.sample(tmp_path / "b.zip", seed=1, climate_seed=2, **kwargs)
    c = gbif.sample(tmp_path / "c.zip", seed=3, climate_seed=2, **kwargs)
    assert file_sha256(a) == file_sha256(b) != file_sha256(c)


def test_gbif_open_errors_name_the_file_and_column(tmp_path):
    table = pd.DataFrame({c: ["1"] for c in gbif.SIMPLE_CSV_COLUMNS}).drop(columns="eventDate")
    path = tmp_path / "0000002-240101000000.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("0000002-240101000000.csv", table.to_csv(sep="\t", index=False))
    with pytest.raises(ValueError, match=r"0000002-240101000000\.csv.*'eventDate'"):
        gbif.open(path)
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.writestr("a.csv", "x")
        zf.writestr("b.csv", "y")
    with pytest.raises(ValueError, match=r"two\.zip.*expected one member ending"):
        gbif.open(tmp_path / "two.zip")
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        gbif.open(tmp_path / "missing.zip")
    (tmp_path / "species.csv").write_text("gbif_key,scientific_name\n1,A b\n")
    with pytest.raises(ValueError, match=r"species\.csv.*'common_name'"):
        gbif.read_species(tmp_path / "species.csv")


def test_event_dates_are_parsed_like_gbif_writes_them():
    parsed = gbif.parse_event_dates(
        pd.Series(
            [
                "2010-01-05",
                "2010-01-05T13:20:00",
                "2010-01-05T13:20:00Z",
                "2010-01-02/2010-01-09",
                "2010-01-05T13:20:00+02:00",
                "not a date",
                "",
            ]
        )
    )
    expected = [
        "2010-01-05 00:00",
        "2010-01-05 13:20",
        "2010-01-05 13:20",
        "2010-01-02 00:00",
        "2010-01-05 11:20",
    ]
    assert list(parsed[:5]) == [pd.Timestamp(t) for t in expected]
    assert parsed[5:].isna().all()


def test_download_licence_is_the_most_restrictive():
    assert gbif.licence_of(pd.Series(["CC0_1_0", "CC_BY_4_0"])) == "CC BY 4.0"
    assert gbif.licence_of(pd.Series(["CC_BY_NC_4_0", "CC_BY_4_0"])) == "CC BY-NC 4.0"
    assert gbif.licence_of(pd.Series(["CC0_1_0"])) == "CC0 1.0"
