"""Report maps: the shared map helper (outlines, grid extent, aspect), the error maps, the
forecast against the truth and the suitability maps, on the small test grid (9 x 13 cells)
with NetCDF files written here to the producers' specs (bfm.evaluation.error_maps,
bfm.evaluation.predict)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bfm import cli
from bfm.contracts.batch import read_batch
from bfm.report.fields import (
    error_map_rows,
    forecast_fields,
    forecast_rows,
    open_netcdf,
    truth_batch,
)
from bfm.report.maps import MapGrid, country_rings
from bfm.testing import GRID, write_sequence

LAT, LON = GRID.latitudes, GRID.longitudes
SHAPE = GRID.shape


def svg_texts(path) -> list[str]:
    return re.findall(r"<!-- (.*?) -->", path.read_text())


def write_error_maps(path, shorts=("t2m", "z500"), leads=(1, 2)):
    """error_maps.nc as bfm evaluate writes it: model RMSE 1 + lead, persistence 3 + lead."""
    data = {}
    for short in shorts:
        for forecast, base in (("model", 1.0), ("persistence", 3.0), ("climatology", 4.0)):
            values = np.stack([np.full(SHAPE, base + k, np.float32) for k in leads])
            data[f"rmse_{forecast}_{short}"] = (("lead", "latitude", "longitude"), values,
                                                {"units": "K", "forecast": forecast})  # fmt: skip
    coords = {"lead": np.asarray(leads, np.int32), "latitude": LAT, "longitude": LON}
    xr.Dataset(data, coords=coords).to_netcdf(path, engine="netcdf4")
    return path


@pytest.fixture
def batches(tmp_path):
    """Batches 2010-01-01 .. 01-04 (times (t, t + 1 day)) on the test grid."""
    return write_sequence(tmp_path / "batches", 4)


def write_forecast(path, batches, *, z_name="z", suitability=None, names=True, offset=1.0):
    """forecast.nc as bfm predict writes it, started from batches[0] (reference time its
    second time), two leads: the truth of each valid time plus ``offset``."""
    truth = [read_batch(p) for p in batches[1:3]]  # times[1] = 2010-01-03, 2010-01-04
    first = read_batch(batches[0])
    data = {
        "t2m": (("time", "latitude", "longitude"),
                np.stack([b.groups["surface"]["t2m"][1] for b in truth]) + offset, {"units": "K"}),
        "msl": (("time", "latitude", "longitude"),
                np.stack([b.groups["surface"]["msl"][1] for b in truth]) + offset, {"units": "Pa"}),
        z_name: (("time", "level", "latitude", "longitude"),
                 np.stack([b.groups["atmospheric"]["z"][1] for b in truth]) + offset,
                 {"units": "m2 s-2"}),
    }  # fmt: skip
    coords = {"time": [b.times[1] for b in truth], "latitude": LAT, "longitude": LON,
              "level": first.levels, "lead": ("time", np.array([1, 2], np.int32)),
              "forecast_reference_time": first.times[1],
              "species_key": ("species", first.species)}  # fmt: skip
    if suitability is not None:
        data["suitability"] = (("species", "latitude", "longitude"), suitability)
    if names:
        data["species_name"] = (("species",), np.array(["Lynx pardinus", "Mustela lutreola"]))
    xr.Dataset(data, coords=coords).to_netcdf(path, engine="netcdf4")
    return path


# --- the map helper -------------------------------------------------------------------------


def test_map_grid_extent_and_aspect():
    grid = MapGrid.of(LAT, LON, "x.nc")
    assert grid.extent == pytest.approx((-0.25, 6.25, 43.75, 48.25))  # cell edges
    assert MapGrid.of([61.0, 60.0, 59.0], [0.0, 1.0], "x").aspect == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"x.nc: coordinate 'longitude' must be 1-D, evenly"):
        MapGrid.of(LAT, [0.0, 1.0, 3.0], "x.nc")


def test_country_outlines_come_from_the_shipped_boundaries(tmp_path):
    rings = country_rings()
    assert len(rings) >= 175 and all(r.ndim == 2 and r.shape[1] == 2 for r in rings)
    # France's outline crosses the test grid (44..48 N, 0..6 E)
    west, east, south, north = MapGrid.of(LAT, LON, "grid").extent
    assert any(((r[:, 0] > west) & (r[:, 0] < east) & (r[:, 1] > south) & (r[:, 1] < north)).any()
               for r in rings)  # fmt: skip
    bad = tmp_path / "b.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"geometry": '
                   '{"type": "Point", "coordinates": [0, 0]}}]}')  # fmt: skip
    with pytest.raises(ValueError, match=r"b.geojson: feature 0: not a polygon .*'Point'"):
        country_rings(bad)


# --- error maps -----------------------------------------------------------------------------


def test_error_maps_show_the_model_and_its_difference_to_persistence(tmp_path):
    path = write_error_maps(tmp_path / "error_maps.nc")
    with open_netcdf(path) as ds:
        rows = error_map_rows(ds, path, lead=2)
    assert [[p.title for p in row] for row in rows] == [  # WeatherBench 2's order
        ["z500: model RMSE", "z500: model - persistence RMSE"],
        ["t2m: model RMSE", "t2m: model - persistence RMSE"],
    ]
    model, diff = rows[0]
    np.testing.assert_array_equal(model.field, 3.0)  # lead 2: 1 + 2
    np.testing.assert_array_equal(diff.field, -2.0)  # (1 + 2) - (3 + 2)
    assert (diff.vmin, diff.vmax) == (-2.0, 2.0) and diff.cmap == "RdBu_r"  # centred at 0
    assert (model.vmin, model.bar) == (0.0, "RMSE (K)")
    out = tmp_path / "error_maps.png"
    assert cli.main(["report", "error-maps", "--maps", str(path), "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 400


def test_error_maps_refuse_a_missing_lead_and_a_file_without_maps(tmp_path):
    path = write_error_maps(tmp_path / "error_maps.nc", leads=(1,))
    out = tmp_path / "e.png"
    argv = ["report", "error-maps", "--maps", str(path), "--lead", "3", "--out", str(out)]
    assert cli.main(argv) == 1 and not out.exists()
    with open_netcdf(path) as ds, pytest.raises(ValueError, match=r"lead 3 is not in the file"):
        error_map_rows(ds, path, 3)
    empty = write_error_maps(tmp_path / "empty.nc", shorts=())
    with open_netcdf(empty) as ds, pytest.raises(ValueError, match="no variable rmse_model_"):
        error_map_rows(ds, empty, 1)
    junk = tmp_path / "junk.nc"
    junk.write_text("not netcdf")
    with pytest.raises(ValueError, match="junk.nc: cannot open as NetCDF"):
        open_netcdf(junk)


# --- forecast against truth -----------------------------------------------------------------


def test_the_truth_of_a_valid_time_is_the_batch_whose_second_time_it_is(batches):
    assert truth_batch(batches, pd.Timestamp("2010-01-03")) == batches[1]
    with pytest.raises(ValueError, match=r"no batch among the 4 given has times\[1\] = 2010-01-09"):
        truth_batch(batches, pd.Timestamp("2010-01-09"))


def test_forecast_maps_put_forecast_truth_and_error_side_by_side(tmp_path, batches):
    path = write_forecast(tmp_path / "forecast.nc", batches, z_name="atmospheric_z")
    with open_netcdf(path) as ds:
        assert [f[1] for f in forecast_fields(ds, path)] == ["t2m", "msl", "atmospheric_z"]
        rows = forecast_rows(ds, path, batches)
    assert len(rows) == 6  # 3 fields x (first, last) lead
    titles = [row[0].title.split("\n")[0] for row in rows]
    assert titles[:2] == [
        "t2m, lead 1, valid 2010-01-03 00:00",
        "t2m, lead 2, valid 2010-01-04 00:00",
    ]
    assert titles[4].startswith("z500, lead 1")
    forecast, truth, error = rows[4]
    z500 = read_batch(batches[1]).groups["atmospheric"]["z"][1, 0]  # level 500 comes first
    np.testing.assert_allclose(truth.field, z500)
    np.testing.assert_allclose(error.field, 1.0, rtol=0, atol=0.01)  # float32 at ~5e4
    assert (forecast.vmin, forecast.vmax) == (truth.vmin, truth.vmax)  # one scale
    assert forecast.bar == "" and truth.bar == "z500 (m2 s-2)"  # one shared colour bar
    assert error.vmin == -error.vmax
    out = tmp_path / "forecast_maps.png"
    argv = ["report", "forecast-maps", "--forecast", str(path), "--batches", *map(str, batches),
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    from PIL import Image

    with Image.open(out) as im:  # 6 rows of 3 maps
        assert im.format == "PNG" and im.height > 1.5 * im.width > 1000


def test_forecast_maps_refuse_missing_truth_and_another_grid(tmp_path, batches):
    path = write_forecast(tmp_path / "forecast.nc", batches)
    out = tmp_path / "f.png"
    argv = ["report", "forecast-maps", "--forecast", str(path), "--batches", str(batches[0]),
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 1 and not out.exists()
    other = write_sequence(tmp_path / "other", 4, grid=type(GRID)(44.0, 48.0, 0.0, 5.0, 0.5))
    with open_netcdf(path) as ds, pytest.raises(ValueError, match="is not the grid of the"):
        forecast_rows(ds, path, other)


# --- suitability ----------------------------------------------------------------------------


def test_suitability_maps_one_per_species_titled_by_name(tmp_path, batches):
    suit = np.random.default_rng(0).uniform(0, 1, (2, *SHAPE)).astype(np.float32)
    suit[1] = np.nan  # a species without an SDM head
    path = write_forecast(tmp_path / "forecast.nc", batches, suitability=suit)
    out = tmp_path / "suitability.svg"
    assert cli.main(["report", "suitability-maps", "--forecast", str(path), "--out", str(out)]) == 0
    texts = svg_texts(out)
    assert {"Lynx pardinus", "Mustela lutreola", "no valid cell", "suitability (0..1)"} <= set(
        texts
    )
    keys = write_forecast(tmp_path / "keys.nc", batches, suitability=suit, names=False)
    assert cli.main(["report", "suitability-maps", "--forecast", str(keys), "--out", str(out)]) == 0
    assert "GBIF key 2435240" in svg_texts(out)


def test_suitability_maps_need_the_variable_and_values_in_0_1(tmp_path, batches, caplog):
    none = write_forecast(tmp_path / "none.nc", batches)
    out = tmp_path / "s.png"
    assert cli.main(["report", "suitability-maps", "--forecast", str(none), "--out", str(out)]) == 1
    assert "none.nc: no variable 'suitability'" in caplog.text and not out.exists()
    high = write_forecast(tmp_path / "high.nc", batches,
                          suitability=np.full((2, *SHAPE), 1.5, np.float32))  # fmt: skip
    assert cli.main(["report", "suitability-maps", "--forecast", str(high), "--out", str(out)]) == 1
    assert "suitability must lie in 0..1" in caplog.text


def test_map_inputs_that_break_the_contract_are_named(tmp_path, batches):
    from bfm.report.fields import batch_times, plot_suitability_maps

    plain = tmp_path / "plain.h5"
    plain.write_bytes(b"\x89HDF\r\n")
    with pytest.raises(ValueError, match="plain.h5: not a batch file with root attribute 'times'"):
        batch_times(plain)
    no_grid = tmp_path / "no_grid.nc"
    xr.Dataset({"t2m": (("time", "y"), np.zeros((1, 2)))}).to_netcdf(no_grid, engine="netcdf4")
    with open_netcdf(no_grid) as ds, pytest.raises(ValueError, match="no coordinate 'latitude'"):
        forecast_rows(ds, no_grid, batches)
    other = tmp_path / "other.nc"
    u10 = {"u10": (("time", "latitude", "longitude"), np.zeros((1, *SHAPE)))}
    grid = {"latitude": LAT, "longitude": LON}
    xr.Dataset(u10, coords=grid).to_netcdf(other, engine="netcdf4")
    with open_netcdf(other) as ds, pytest.raises(ValueError, match="none of t2m, msl and z"):
        forecast_fields(ds, other)
    path = write_forecast(tmp_path / "f.nc", batches, suitability=np.zeros((2, *SHAPE), "f4"))
    with pytest.raises(ValueError, match=r"f.jpg: a figure must be .svg or .png"):
        plot_suitability_maps(path, tmp_path / "f.jpg")
    assert not (tmp_path / "f.jpg").exists()
    geo = tmp_path / "countries.geojson"
    geo.write_text('{"type": "Feature"}')
    with pytest.raises(ValueError, match="countries.geojson: not a GeoJSON FeatureCollection"):
        country_rings(geo)
