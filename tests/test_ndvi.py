"""CLMS NDVI (bfm.sources.ndvi, ndvi_download): the dekad calendar and rule, raw names,
options, explicit DN decoding (the flag bug), conservative aggregation of valid pixels, the
sample in the native layout, the tile round trip, and the downloader against a local fake
server (listing, newest version, malformed lines, faults, resume, basic auth, no leaks)."""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts import catalogue
from bfm.contracts.grid import Grid
from bfm.contracts.tile import open_tile, write_tile
from bfm.sources import manifest
from bfm.sources import ndvi as nd
from bfm.sources import ndvi_download as wire
from bfm.sources.base import Study
from bfm.sources.http import DownloadError, Service
from bfm.testing import PROVENANCE
from tests.fakes import Script, Waits, cut_body, ranged, server_error, too_many, truncated

MODALITY = catalogue.modality("ndvi")
T = pd.Timestamp
# 2 x 2 cells of 0.5 deg at the equator; the cell centred on lat 0 is symmetric about it.
TINY = Grid(lat_min=0.0, lat_max=0.5, lon_min=10.0, lon_max=10.5, res=0.5)
TINY_LAT = np.array([0.625, 0.375, 0.125, -0.125])  # 0.25 deg pixels, 2 x 2 per cell
TINY_LON = np.array([9.875, 10.125, 10.375, 10.625])
SMALL = Grid(lat_min=44.0, lat_max=46.0, lon_min=0.0, lon_max=3.0, res=0.5)


def study(grid: Grid = SMALL, start: str = "2010-02-01", end: str = "2010-02-28",
          step: str = "1MS", **settings) -> Study:  # fmt: skip
    block = {"mode": "sample", "seed": 3, **settings}
    return Study(grid, start, end, step, (), "species.csv", {"ndvi": block})


def days(weights: np.ndarray) -> list[float]:
    return [round(float(w), 6) for w in weights]


# --- the dekad calendar and raw names -------------------------------------------------------
@pytest.mark.parametrize(
    ("month", "expected"),
    [("2010-02", [10, 10, 8]), ("2012-02", [10, 10, 9]), ("2010-04", [10, 10, 10]),
     ("2010-01", [10, 10, 11])],
)  # fmt: skip
def test_a_month_step_weighs_its_three_dekads_by_their_days(month, expected):
    # 1MS: [1st, 1st of next month) overlaps the dekads [1, 11), [11, 21), [21, end]:
    # 10 + 10 + (days in month - 20) days; Feb 2010 28 -> 8, Feb 2012 29 -> 9, Apr 30 -> 10,
    # Jan 31 -> 11.
    start = T(f"{month}-01")
    end = start + pd.offsets.MonthBegin(1)
    dekads = nd.dekads_overlapping([start], [end])
    assert dekads == [start, start + pd.Timedelta(days=10), start + pd.Timedelta(days=20)]
    assert days(nd.dekad_weights([start], [end], dekads)[0]) == expected


def test_a_step_straddling_dekads_weighs_each_by_its_overlap():
    # [Jan 8, Jan 15): 3 days of the dekad of Jan 1, 4 of Jan 11.
    starts, ends = [T("2010-01-08")], [T("2010-01-15")]
    dekads = nd.dekads_overlapping(starts, ends)
    assert dekads == [T("2010-01-01"), T("2010-01-11")]
    assert days(nd.dekad_weights(starts, ends, dekads)[0]) == [3.0, 4.0]
    # [Jan 31 12:00, Feb 1 12:00): a dekad of the previous month counts (half a day each).
    starts, ends = [T("2010-01-31T12")], [T("2010-02-01T12")]
    dekads = nd.dekads_overlapping(starts, ends)
    assert dekads == [T("2010-01-21"), T("2010-02-01")]
    assert days(nd.dekad_weights(starts, ends, dekads)[0]) == [0.5, 0.5]
    # A step no dekad of the list overlaps has weight 0 everywhere: it is missing.
    assert days(nd.dekad_weights([T("2010-03-05")], [T("2010-03-06")], dekads)[0]) == [0, 0]


def test_raw_names_are_the_dekads_the_steps_overlap():
    s = study(start="2010-01-15", end="2010-01-31", step="1D")
    # Jan 15 .. Jan 31 (last step [Jan 31, Feb 1)): the dekads of Jan 11 and Jan 21 only.
    assert nd.NDVI().raw_names(MODALITY, "2010-01", s) == [
        "ndvi_1km_v3/20100111.nc", "ndvi_1km_v3/20100121.nc"]  # fmt: skip
    s = study(start="2010-01-01", end="2010-01-05T18", step="6h")
    assert nd.NDVI().raw_names(MODALITY, "2010-01", s) == ["ndvi_1km_v3/20100101.nc"]
    s = study(start="2020-05-01", end="2020-08-01", step="1MS")
    assert nd.NDVI().raw_names(MODALITY, "2020-06", s)[-1] == "ndvi_1km_v3/20200621.nc"
    assert nd.NDVI().raw_names(MODALITY, "2020-07", s) == [
        "ndvi_300m_v2/20200701.nc",
        "ndvi_300m_v2/20200711.nc",
        "ndvi_300m_v2/20200721.nc",
    ]


@pytest.mark.parametrize(
    "name",
    ["ndvi_300m_v2/20100101.nc", "ndvi_1km_v3/20200701.nc", "ndvi_1km_v3/20100105.nc",
     "ndvi_1km_v3/2010-01-01.nc", "modis/20100101.nc", "ndvi_1km_v3/20100101.tif"],
)  # fmt: skip
def test_raw_names_are_refused_unless_a_dekad_of_their_product(name):
    with pytest.raises(ValueError, match=r"is not <product>/<YYYYMMDD>.nc with a dekad"):
        nd.parse_raw_name(name)


# --- options and raw settings ---------------------------------------------------------------
def test_options_default_merge_and_refuse():
    o = nd.Options.parse({})
    assert o.sample_coarsening == 4
    assert o.manifest_url["ndvi_1km_v3"].endswith(
        "ndvi_1km_v3_10daily_netcdf/manifest_clms_global_ndvi_1km_v3_10daily_netcdf_latest.txt"
    )
    o = nd.Options.parse({"manifest_url": {"ndvi_300m_v2": "http://x/m.txt"}})
    assert o.manifest_url["ndvi_300m_v2"] == "http://x/m.txt"
    assert o.manifest_url["ndvi_1km_v3"].startswith("https://globalland.vito.be/")
    for bad, message in (
        ({"manifest": 1}, r"unknown key\(s\) \['manifest'\]"),
        ({"manifest_url": {"lai": "http://x"}}, r"got keys \['lai'\]"),
        ({"sample_coarsening": 0}, r"sample_coarsening: must be an integer"),
        ({"manifest_url": {"ndvi_1km_v3": "ftp://x"}}, "not an absolute"),
        ({"manifest_url": {"ndvi_1km_v3": "https://u:pw@x/m"}}, "user info"),
    ):
        with pytest.raises(ValueError, match=message) as err:
            nd.Options.parse(bad)
        assert "pw" not in str(err.value)


def test_a_downloaded_dekad_depends_on_its_listing_only():
    src, name = nd.NDVI(), "ndvi_1km_v3/20100101.nc"
    a = src.raw_settings(name, study(mode="download"))
    b = src.raw_settings(name, study(grid=TINY, mode="download", seed=9,
                                     options={"sample_coarsening": 2}))  # fmt: skip
    assert a == b == {"mode": "download", "manifest_url": wire.PRODUCTS["ndvi_1km_v3"].manifest_url}
    sample = src.raw_settings(name, study())
    assert sample["grid"] == SMALL.to_dict() and sample["seed"] == 3
    assert sample["sample_coarsening"] == 4


def test_file_mode_finds_our_names_or_the_newest_native_file(tmp_path):
    src, name = nd.NDVI(), "ndvi_1km_v3/20100211.nc"
    assert src.user_file(str(tmp_path), name) == f"{tmp_path}/{name}"  # missing: our name
    vito = tmp_path / "2010" / "20100211"
    vito.mkdir(parents=True)
    for version in ("3.0.1", "3.0.2", "3.0.0"):
        (vito / f"c_gls_NDVI_201002110000_GLOBE_VGT_V{version}.nc").write_bytes(b"")
    (vito / "c_gls_NDVI_201002110000_GLOBE_VGT_V2.2.1.nc").write_bytes(b"")  # other product
    found = src.user_file(f"{tmp_path}/", name)
    assert found == str(vito / "c_gls_NDVI_201002110000_GLOBE_VGT_V3.0.2.nc")
    (tmp_path / name).parent.mkdir()
    (tmp_path / name).write_bytes(b"")
    assert src.user_file(str(tmp_path), name) == f"{tmp_path}/{name}"


# --- decoding and aggregation: known answers ------------------------------------------------
def write_tiny(folder: Path, date: str, dn: list[list[int]], **kwargs) -> Path:
    path = folder / "ndvi_1km_v3" / f"{T(date):%Y%m%d}.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    return wire.write_native(path, wire.PRODUCTS["ndvi_1km_v3"], T(date),
                             np.array(dn, np.uint8), TINY_LAT, TINY_LON, **kwargs)  # fmt: skip


# DN 70 -> 0.2, 120 -> 0.4, 170 -> 0.6 (DN * 0.004 - 0.08); 254 sea, 255 missing, 251..253
# other flags.
TINY_DN = [[70, 70, 251, 254],
           [170, 170, 254, 253],
           [70, 120, 255, 70],
           [170, 254, 252, 255]]  # fmt: skip


def one_day(native: xr.Dataset, grid: Grid) -> dict:
    """The values of the step [Feb 1, Feb 2) 2010."""
    days = pd.DatetimeIndex(["2010-02-01"]), pd.DatetimeIndex(["2010-02-02"])
    return nd.tile_values(native, MODALITY, grid, *days, "test")[0]


def tiny_tile(tmp_path: Path, step: str = "1MS", dn=TINY_DN) -> xr.Dataset:
    files = [write_tiny(tmp_path, d, dn) for d in ("2010-02-01", "2010-02-11", "2010-02-21")]
    s = study(grid=TINY, step=step)
    return nd.NDVI().to_tile(nd.NDVI().open(files, MODALITY, s), MODALITY, s, "2010-02",
                             PROVENANCE)  # fmt: skip


def test_flags_251_to_254_are_missing_not_just_the_fill_value(tmp_path):
    path = write_tiny(tmp_path, "2010-02-01", TINY_DN)
    native = nd.NDVI().open([path], MODALITY, study(grid=TINY))
    values = native["ndvi"][0].values
    flagged = np.array(TINY_DN) > 250
    assert np.isnan(values[flagged]).all() and np.isfinite(values[~flagged]).all()
    assert values[2, 0] == pytest.approx(0.2) and values[2, 1] == pytest.approx(0.4)
    # The trap: xarray's own decoding masks only the _FillValue 255; 251..254 become
    # 0.924..0.936 (sea 0.936), which the BFM reference code then compared with 255 (a no-op).
    with xr.open_dataset(path) as auto:
        naive = auto["NDVI"][0].values
    assert np.isnan(naive[2, 2]) and naive[3, 1] == pytest.approx(0.936, abs=1e-6)
    assert naive[0, 2] == pytest.approx(0.924, abs=1e-6) and np.isfinite(naive[1, 3])


def test_a_cell_with_one_flagged_pixel_is_the_mean_of_the_others(tmp_path):
    tile = tiny_tile(tmp_path)
    ndvi, frac = tile["ndvi"].values[0], tile["ndvi_valid_fraction"].values[0]
    # Cell (lat 0, lon 10): pixels 0.2, 0.4 / 0.6, sea. The rows at +-0.125 have equal areas,
    # so the mean is (0.2 + 0.4 + 0.6) / 3 = 0.4 and 3 of 4 equal areas are valid: 0.75.
    # (Decoding sea as 0.936 would give 0.534 and 1.)
    assert ndvi[1, 0] == pytest.approx(0.4, abs=1e-6) and frac[1, 0] == pytest.approx(0.75)
    # Cell (lat 0.5, lon 10): 0.2 in the row [0.5, 0.75], 0.6 in [0.25, 0.5]; areas on the
    # sphere are proportional to the difference of sin(latitude).
    a1 = math.sin(math.radians(0.75)) - math.sin(math.radians(0.5))
    a2 = math.sin(math.radians(0.5)) - math.sin(math.radians(0.25))
    assert ndvi[0, 0] == pytest.approx((0.2 * a1 + 0.6 * a2) / (a1 + a2), abs=1e-6)
    assert ndvi[0, 0] > 0.4 and frac[0, 0] == pytest.approx(1.0)
    # Cell (lat 0.5, lon 10.5): sea and flags only -> ndvi missing, valid fraction 0.
    assert np.isnan(ndvi[0, 1]) and frac[0, 1] == 0.0
    # Cell (lat 0, lon 10.5): 255, 0.2 / 252, 255 -> 0.2 over a quarter of the cell.
    assert ndvi[1, 1] == pytest.approx(0.2, abs=1e-6) and frac[1, 1] == pytest.approx(0.25)


def test_the_dekad_rule_weighs_overlap_length_times_valid_fraction(tmp_path):
    all_valid = [[70] * 4] * 4
    half = [[120, 255, 120, 255]] * 4
    full = [[170] * 4] * 4
    files = [write_tiny(tmp_path, d, dn) for d, dn in
             (("2010-02-01", all_valid), ("2010-02-11", half), ("2010-02-21", full))]  # fmt: skip
    s = study(grid=TINY, step="1MS")
    month = nd.NDVI().to_tile(nd.NDVI().open(files, MODALITY, s), MODALITY, s, "2010-02",
                              PROVENANCE)  # fmt: skip
    # Feb 2010: dekads of 10, 10, 8 days with 0.2 (all valid), 0.4 (half), 0.6 (all):
    # ndvi = (10*1*0.2 + 10*0.5*0.4 + 8*1*0.6) / (10 + 5 + 8) = 8.8 / 23;
    # fraction = (10*1 + 10*0.5 + 8*1) / 28 = 23 / 28.
    assert month["ndvi"].values == pytest.approx(np.full((1, 2, 2), 8.8 / 23), abs=1e-6)
    assert month["ndvi_valid_fraction"].values == pytest.approx(np.full((1, 2, 2), 23 / 28))
    s = study(grid=TINY, step="1D")
    daily = nd.NDVI().to_tile(nd.NDVI().open(files, MODALITY, s), MODALITY, s, "2010-02",
                              PROVENANCE)  # fmt: skip
    # A day takes the dekad holding it: Feb 10 -> 0.2, Feb 11 and 20 -> 0.4 (half), Feb 28 -> 0.6.
    at = {d: k for k, d in enumerate(pd.DatetimeIndex(daily["time"].values).day)}
    for day, value, frac in ((10, 0.2, 1.0), (11, 0.4, 0.5), (20, 0.4, 0.5), (28, 0.6, 1.0)):
        assert daily["ndvi"].values[at[day]] == pytest.approx(np.full((2, 2), value), abs=1e-6)
        assert daily["ndvi_valid_fraction"].values[at[day]] == pytest.approx(frac)
    assert daily.attrs["time_rule"] == nd.DEKAD_RULE and "dekad rule" in daily.attrs["history"]
    with pytest.raises(ValueError, match=r"time: dekad 2010-02-21 is missing"):
        nd.NDVI().to_tile(nd.NDVI().open(files[:2], MODALITY, s), MODALITY, s, "2010-02",
                          PROVENANCE)  # fmt: skip


def test_cell_integrals_are_exact_for_any_pixel_and_cell_sizes():
    # Pixels [0, .3), [.3, .6), [.6, .9) with 1, 2, 4; cells [0, .5), [.5, .9):
    # 1*.3 + 2*.2 = .7 and 2*.1 + 4*.3 = 1.4.
    out = nd.cell_integrals(np.array([[1.0, 2.0, 4.0]]), 0.0, 0.3, np.array([0, 0.5, 0.9]))
    assert out == pytest.approx(np.array([[0.7, 1.4]]))
    # One pixel [0, 1) of 3 over cells [.2, .5), [.5, .7): 3*.3 and 3*.2.
    out = nd.cell_integrals(np.array([3.0]), 0.0, 1.0, np.array([0.2, 0.5, 0.7]))
    assert out == pytest.approx([0.9, 0.6])


def test_float32_attributes_decode_to_the_published_values(tmp_path):
    # DN 250 is the top value 0.92; with float32 scale/offset it would decode to 0.9200000493,
    # just outside the range, unless the attributes are read as the decimals they were.
    path = write_tiny(tmp_path, "2010-02-01", [[250] * 4] * 4, attr_dtype=np.float32)
    assert nd.NDVI().open([path], MODALITY, study())["ndvi"][0].values.max() == 0.92
    tile = tiny_tile(tmp_path, "1MS", [[250] * 4] * 4)
    assert float(tile["ndvi"].max()) <= 0.92
    write_tile(tile, tmp_path / "top.nc")  # the contract's range check passes


def test_values_outside_the_range_refuse_the_file(tmp_path):
    path = write_tiny(tmp_path, "2010-02-01", [[120] * 4] * 4)
    import netCDF4

    with netCDF4.Dataset(path, "a") as nc:
        nc["NDVI"].scale_factor = 0.01  # DN 120 -> 1.12: a wrong scale
    with pytest.raises(ValueError, match=r"20100201.nc: variable 'ndvi': 16 of 16 values lie "
                       r"outside its valid range \[-0.08, 0.92\]"):  # fmt: skip
        one_day(nd.NDVI().open([path], MODALITY, study()), TINY)


def test_open_is_lazy_and_reads_only_the_pixels_over_the_grid(tmp_path, monkeypatch):
    lat = np.arange(60.0, 30.0, -0.25) + 0.125  # 30 deg x 40 deg of pixels around SMALL
    lon = np.arange(-20.0, 20.0, 0.25) + 0.125
    dn = np.full((len(lat), len(lon)), 120, np.uint8)
    path = tmp_path / "c_gls_NDVI_201002010000_GLOBE_VGT_V3.0.1.nc"  # a native name
    wire.write_native(path, wire.PRODUCTS["ndvi_1km_v3"], T("2010-02-01"), dn, lat, lon,
                      chunk_rows=5)  # fmt: skip
    native = nd.NDVI().open([path], MODALITY, study())
    assert not native["ndvi"].variable._in_memory
    reads: list[tuple] = []
    read = wire.DekadFile.read
    monkeypatch.setattr(wire.DekadFile, "read", lambda self, r, c: reads.append((r, c))
                        or read(self, r, c))  # fmt: skip
    monkeypatch.setattr(nd, "BLOCK_PIXELS", 14 * 7)  # 7 rows of the 14-pixel-wide crop
    values, _ = nd.tile_values(native, MODALITY, SMALL, pd.DatetimeIndex(["2010-02-01"]),
                               pd.DatetimeIndex(["2010-02-11"]), str(path))  # fmt: skip
    # SMALL spans lat 43.75 .. 46.25 and lon -0.25 .. 3.25: the 10 x 14 pixels of rows 56..65
    # (lat 46.125 .. 43.875), read in blocks of whole chunks of 5 rows (7 rows -> 5): 56..59,
    # 60..64, 65.
    assert [(r.start, r.stop, c.stop - c.start) for r, c in reads] == [
        (56, 60, 14), (60, 65, 14), (65, 66, 14)]  # fmt: skip
    assert values["ndvi"] == pytest.approx(np.full((1, 5, 7), 0.4), abs=1e-6)


def test_open_refuses_files_it_cannot_read(tmp_path):
    a = write_tiny(tmp_path, "2010-02-01", TINY_DN)
    other = tmp_path / "20100211.nc"
    wire.write_native(other, wire.PRODUCTS["ndvi_1km_v3"], T("2010-02-11"),
                      np.zeros((4, 3), np.uint8), TINY_LAT, TINY_LON[:3])  # fmt: skip
    with pytest.raises(ValueError, match=r"20100211.nc: its pixel grid differs"):
        wire.open_dekads([a, other])
    odd = tmp_path / "ndvi_1km_v3" / "20100205.nc"
    odd.write_bytes(a.read_bytes())
    with pytest.raises(ValueError, match=r"20100205.nc: no dekad start"):
        wire.open_dekads([odd])
    copy = tmp_path / "c_gls_NDVI_201002010000_GLOBE_VGT_V3.0.1.nc"
    copy.write_bytes(a.read_bytes())
    with pytest.raises(ValueError, match=r"dekad 2010-02-01 is also in"):
        wire.open_dekads([a, copy])
    with pytest.raises(ValueError, match=r"do not cover the grid's latitudes"):
        one_day(wire.open_dekads([a]), SMALL)
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match=r"junk.nc: cannot read as netCDF"):
        wire.open_dekads([tmp_path / "junk.nc"])


def test_pixel_axes_in_float32_are_accepted_and_irregular_ones_refused():
    # The global 1 km latitudes (80 .. -60 deg, 15680 pixels) stored as float32 jitter by up
    # to ~4e-6 deg; rebuilt evenly they have the spacing 1/112 deg.
    lat = (80 - np.arange(15680) / 112).astype(np.float32)
    even = wire._regular(lat, True, "lat", "f.nc")
    assert np.diff(even) == pytest.approx(np.full(15679, -1 / 112), rel=1e-6)
    with pytest.raises(ValueError, match=r"f.nc: coordinate 'lon' is not a regular ascending"):
        wire._regular(np.array([0.0, 1.0, 2.5]), False, "lon", "f.nc")


# --- the sample and the round trip ----------------------------------------------------------
def test_the_sample_is_the_native_layout_deterministic_with_every_flag(tmp_path):
    src, s = nd.NDVI(), study()
    a = src.sample("ndvi_1km_v3/20100211.nc", tmp_path / "a.nc", s)
    b = src.sample("ndvi_1km_v3/20100211.nc", tmp_path / "b.nc", s)
    assert a.read_bytes() == b.read_bytes()
    c = src.sample("ndvi_1km_v3/20100211.nc", tmp_path / "c.nc", study(seed=4))
    assert c.read_bytes() != a.read_bytes()
    with xr.open_dataset(a, mask_and_scale=False) as raw:
        var = raw["NDVI"]
        assert var.dims == ("time", "lat", "lon") and var.dtype == np.uint8
        assert (var.attrs["scale_factor"], var.attrs["add_offset"]) == (0.004, -0.08)
        assert var.attrs["_FillValue"] == 255 and raw["NOBS"].dtype == np.uint8
        lat, lon, dn = raw["lat"].values, raw["lon"].values, var.values[0]
    assert np.allclose(np.diff(lat), -1 / 28) and np.allclose(np.diff(lon), 1 / 28)
    assert np.allclose(lat * 28, np.rint(lat * 28))  # pixel centres on multiples of 1/28 deg
    # the pixels reach beyond the grid's edges (43.75 .. 46.25, -0.25 .. 3.25) by a margin
    # of max(0.05 deg, 2 pixels) for their centres
    res = 1 / 28
    assert lat[0] + res / 2 > 46.25 + res and lat[-1] - res / 2 < 43.75 - res
    assert lon[0] - res / 2 < -0.25 - res and lon[-1] + res / 2 > 3.25 + res
    counts = {flag: int((dn == flag).sum()) for flag in range(251, 256)}
    assert all(counts.values()), counts
    assert (dn <= 250).mean() > 0.5
    record = manifest.read_manifest(a)
    assert record["url"] == "sample:ndvi?seed=3"
    assert record["request"]["file"] == "c_gls_NDVI_201002110000_GLOBE_VGT_V3.0.1.nc"
    fine = src.sample("ndvi_300m_v2/20200701.nc", tmp_path / "d.nc", study())
    with xr.open_dataset(fine) as raw:
        assert np.allclose(np.diff(raw["lat"].values), -1 / 84)


@pytest.mark.parametrize("step", ["1D", "1MS"])
def test_sample_open_tile_write_open_round_trip(tmp_path, step):
    src = nd.NDVI()
    s = study(start="2010-01-01", end="2010-07-31", step=step)
    means = {}
    for period in ("2010-01", "2010-07"):
        files = [src.sample(n, tmp_path / n, s) for n in src.raw_names(MODALITY, period, s)]
        tile = src.to_tile(src.open(files, MODALITY, s), MODALITY, s, period, PROVENANCE)
        path = write_tile(tile, tmp_path / f"{period}-{step}.nc")
        with open_tile(path, "ndvi") as back:
            ndvi, frac = back["ndvi"].values, back["ndvi_valid_fraction"].values
            assert back.attrs["time_rule"] == nd.DEKAD_RULE and back.attrs["step"] == step
            assert len(back["time"]) == (31 if step == "1D" else 1)
        assert np.nanmin(ndvi) >= -0.08 and np.nanmax(ndvi) <= 0.92
        assert frac.min() >= 0 and frac.max() <= 1 and np.isfinite(frac).all()
        assert np.isfinite(ndvi).mean() > 0.8 and 0.6 < frac.mean() < 1
        assert np.array_equal(np.isnan(ndvi), frac == 0)  # missing exactly where none valid
        means[period] = float(np.nanmean(ndvi))
    assert means["2010-07"] > means["2010-01"] + 0.2  # the seasonal cycle


# --- the downloader against a fake server ---------------------------------------------------
PASSWORD = "PLANTED-pw-7c1e"
DATE = T("2010-02-11")
NAME = "ndvi_1km_v3/20100211.nc"
DIR = "/download/netcdf/ndvi/ndvi_1km_v3_10daily/2010/20100211"
NEW = f"{DIR}/c_gls_NDVI_201002110000_GLOBE_VGT_V3.0.1.nc"
OLD = f"{DIR}/c_gls_NDVI_201002110000_GLOBE_VGT_V3.0.0.nc"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("ndvi") / "f.nc"
    return nd.NDVI().sample(NAME, out, study(grid=Grid(44.0, 44.5, 0.0, 0.5, 0.5))).read_bytes()


def listing(server: HTTPServer) -> str:
    url = server.url_for
    return "\n".join([
        "# CLMS manifest",
        url(NEW),
        url(OLD),  # an older processing version listed after the newer one
        url("/download/netcdf/ndvi/ndvi_1km_v3_10daily/2010/20100201/"
            "c_gls_NDVI_201002010000_GLOBE_VGT_V3.0.1.nc"),
        url("/x/c_gls_NDVI300_202007010000_GLOBE_OLCI_V2.0.1.nc"),  # another product
        "",
        "garbage line",  # malformed
        "download/netcdf/c_gls_NDVI_201002210000_GLOBE_VGT_V3.0.1.nc",  # relative: malformed
        url("/y/c_gls_NDVI_201002050000_GLOBE_VGT_V3.0.1.nc"),  # not a dekad: malformed
    ]) + "\n"  # fmt: skip


def serve(server: HTTPServer, path: str, *handlers, auth: bool = False) -> Script:
    script = Script(handlers)

    def handle(request: Request) -> Response:
        token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        if auth and request.headers.get("Authorization") != f"Basic {token}":
            return Response("Unauthorized", 401, {"WWW-Authenticate": 'Basic realm="clms"'})
        return script(request)

    server.expect_request(path).respond_with_handler(handle)
    return script


def dl_study(server: HTTPServer) -> Study:
    options = {"manifest_url": {"ndvi_1km_v3": server.url_for("/manifest.txt")}}
    return study(mode="download", options=options)


def source(retries: int = 4) -> tuple[nd.NDVI, Waits]:
    waits = Waits()
    return nd.NDVI(sleep=waits, http=Service("clms", retries=retries, backoff=1.0,
                                             timeout=5)), waits  # fmt: skip


def test_download_takes_the_newest_version_and_counts_malformed_lines(
    httpserver: HTTPServer, data, tmp_path, caplog
):
    serve(httpserver, "/manifest.txt", lambda r: Response(listing(httpserver)))
    new = serve(httpserver, NEW, ranged(data))
    old = serve(httpserver, OLD, ranged(b"old"))
    src, _ = source()
    caplog.set_level(logging.WARNING)
    out = src.download(NAME, tmp_path / NAME, dl_study(httpserver))
    assert out.read_bytes() == data and new.calls == 1 and old.calls == 0
    assert "skipped 3 malformed line(s)" in caplog.text and "first: line 7" in caplog.text
    record = manifest.verify(out)
    assert record["url"] == httpserver.url_for(NEW)
    assert record["request"] == {"product": "ndvi_1km_v3", "dekad": "2010-02-11",
                                 "file": "c_gls_NDVI_201002110000_GLOBE_VGT_V3.0.1.nc",
                                 "version": "3.0.1",
                                 "listing": httpserver.url_for("/manifest.txt")}  # fmt: skip
    assert record["licence"] == wire.LICENCE


def test_download_survives_429_500s_resets_and_truncation(httpserver: HTTPServer, data, tmp_path):
    serve(httpserver, "/manifest.txt", too_many(7), truncated(listing(httpserver).encode(), 40),
          lambda r: Response(listing(httpserver)))  # fmt: skip
    script = serve(httpserver, NEW, server_error(500), server_error(503),
                   cut_body(data, len(data) // 2), truncated(data, 100), ranged(data))  # fmt: skip
    src, waits = source(retries=6)
    out = src.download(NAME, tmp_path / NAME, dl_study(httpserver))
    assert out.read_bytes() == data and script.calls == 5
    assert waits[0] == 7.0 and len(waits) == 6  # Retry-After honoured, then backoff
    assert manifest.verify(out)["bytes"] == len(data)


def test_download_failures_name_the_unit_and_the_cause(httpserver: HTTPServer, tmp_path, data):
    s = dl_study(httpserver)
    serve(httpserver, "/manifest.txt", lambda r: Response("<html><body>Log in</body></html>"))
    src, _ = source(retries=1)
    with pytest.raises(DownloadError, match=r"clms ndvi listing ndvi_1km_v3 .*not a product "
                       r"listing: no absolute URL line"):  # fmt: skip
        src.download(NAME, tmp_path / NAME, s)
    httpserver.clear()
    serve(httpserver, "/manifest.txt", lambda r: Response(listing(httpserver)))
    with pytest.raises(DownloadError, match=r"clms ndvi ndvi_1km_v3/20100221.nc: dekad "
                       r"2010-02-21 is not in the ndvi_1km_v3 listing .* \(2 dekads, "
                       r"2010-02-01 .. 2010-02-11\)"):  # fmt: skip
        src.download("ndvi_1km_v3/20100221.nc", tmp_path / "x.nc", s)
    serve(httpserver, NEW, server_error(502))
    with pytest.raises(DownloadError, match=r"clms ndvi ndvi_1km_v3/20100211.nc: HTTP 502 .* "
                       r"after 2 attempts"):  # fmt: skip
        src.download(NAME, tmp_path / NAME, s)
    assert not (tmp_path / NAME).exists() and not manifest.manifest_path(tmp_path / NAME).exists()


def test_an_interrupted_download_resumes_to_the_same_manifest(httpserver: HTTPServer, data,
                                                              tmp_path):  # fmt: skip
    serve(httpserver, "/manifest.txt", lambda r: Response(listing(httpserver)))
    script = serve(httpserver, NEW, cut_body(data, len(data) - 100), server_error(500))
    src, _ = source(retries=2)
    out = tmp_path / "a" / NAME
    with pytest.raises(DownloadError, match="HTTP 500"):
        src.download(NAME, out, dl_study(httpserver))
    part = out.with_name(f".{out.name}.c_gls_NDVI_201002110000_GLOBE_VGT_V3.0.1.nc.part")
    old = out.with_name(f".{out.name}.c_gls_NDVI_201002110000_GLOBE_VGT_V3.0.0.nc.part")
    old.write_bytes(b"a part of an older version")
    have = part.stat().st_size if part.exists() else 0
    assert 0 < have < len(data) and not out.exists()
    script.handlers, script.calls = [ranged(data)], 0
    src.download(NAME, out, dl_study(httpserver))  # the rerun resumes the part file
    assert script.requests[-1].headers["Range"] == f"bytes={have}-"
    assert not part.exists() and not old.exists() and sorted(out.parent.iterdir()) == [
        out, manifest.manifest_path(out)]  # fmt: skip
    clean = src.download(NAME, tmp_path / "b" / NAME, dl_study(httpserver))
    a, b = manifest.read_manifest(out), manifest.read_manifest(clean)
    a.pop("retrieved_at"), b.pop("retrieved_at")
    assert a == b and out.read_bytes() == data


def test_basic_auth_goes_to_the_listing_host_only_and_never_leaks(
    httpserver: HTTPServer, data, tmp_path, monkeypatch, caplog, capsys
):
    serve(httpserver, "/manifest.txt", lambda r: Response(listing(httpserver)), auth=True)
    serve(httpserver, NEW, server_error(500), ranged(data), auth=True)
    src, _ = source()
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv(wire.USER_ENV, raising=False)
    monkeypatch.delenv(wire.PASSWORD_ENV, raising=False)
    with pytest.raises(DownloadError, match=r"HTTP 401 .*set CLMS_USER and CLMS_PASSWORD"):
        src.download(NAME, tmp_path / NAME, dl_study(httpserver))
    monkeypatch.setenv(wire.USER_ENV, "alice")
    with pytest.raises(ValueError, match=r"set both CLMS_USER and CLMS_PASSWORD"):
        src.download(NAME, tmp_path / NAME, dl_study(httpserver))
    monkeypatch.setenv(wire.PASSWORD_ENV, PASSWORD)
    out = src.download(NAME, tmp_path / NAME, dl_study(httpserver))
    s = study(grid=Grid(44.0, 44.5, 0.0, 0.5, 0.5), start="2010-02-11", end="2010-02-12",
              step="1D")  # fmt: skip
    tile = src.to_tile(src.open([out], MODALITY, s), MODALITY, s, "2010-02", PROVENANCE)
    write_tile(tile, tmp_path / "tile.nc")
    monkeypatch.setenv(wire.PASSWORD_ENV, "wrong")
    with pytest.raises(DownloadError, match=r"HTTP 401 .*check CLMS_USER") as err:
        src.download(NAME, tmp_path / "again.nc", dl_study(httpserver))
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and PASSWORD.encode() in
              p.read_bytes()]  # fmt: skip
    assert not leaked and PASSWORD not in caplog.text and "wrong" not in str(err.value)
    assert PASSWORD not in capsys.readouterr().err  # the progress bars
    # A listing pointing to another host gets no credentials.
    other = httpserver.url_for(NEW).replace("localhost", "127.0.0.1")
    seen: list[str | None] = []
    monkeypatch.setenv(wire.PASSWORD_ENV, PASSWORD)
    httpserver.clear()
    serve(httpserver, "/manifest.txt", lambda r: Response(other + "\n"), auth=True)
    httpserver.expect_request(NEW).respond_with_handler(
        lambda r: seen.append(r.headers.get("Authorization")) or ranged(data)(r)
    )
    src.download(NAME, tmp_path / "c" / NAME, dl_study(httpserver))
    assert seen == [None]
    assert json.loads(manifest.manifest_path(tmp_path / "c" / NAME).read_text())["url"] == other
