"""bfm.contracts.grid: the shared Grid contract."""

import json
import math

import numpy as np
import pytest

from bfm.contracts.grid import EARTH_RADIUS_M, Grid
from bfm.testing import EUROPE_GRID as EUROPE

DEMO = Grid(lat_min=44.0, lat_max=56.0, lon_min=0.0, lon_max=20.0, res=0.5)


def test_europe_quarter_degree_is_153_by_321():
    assert EUROPE.shape == (153, 321)
    assert Grid(34.0, 72.0, -30.0, 50.0, 0.25).shape == (153, 321)
    assert EUROPE.latitudes[0] == 72.0 and EUROPE.latitudes[-1] == 34.0
    assert EUROPE.longitudes[0] == -30.0 and EUROPE.longitudes[-1] == 50.0


@pytest.mark.parametrize("grid", [EUROPE, DEMO, Grid(-10.0, 10.0, 170.0, 179.0, 1.0)])
def test_cell_areas_sum_to_the_analytic_area_of_the_box(grid):
    # Box between the outer cell edges: R^2 * (sin(north) - sin(south)) * (east - west) [rad].
    north, south = grid.lat_max + grid.res / 2, grid.lat_min - grid.res / 2
    west, east = grid.lon_min - grid.res / 2, grid.lon_max + grid.res / 2
    expected = (
        EARTH_RADIUS_M**2
        * (math.sin(math.radians(north)) - math.sin(math.radians(south)))
        * math.radians(east - west)
    )
    areas = grid.cell_areas()
    assert areas.shape == grid.shape
    assert (areas > 0).all()
    assert abs(areas.sum() - expected) / expected < 1e-6


def test_cell_area_known_answer_at_the_equator():
    # A 1 x 1 degree cell centred on the equator: R^2 * 2 sin(0.5 deg) * (pi / 180).
    grid = Grid(-1.0, 1.0, 0.0, 2.0, 1.0)
    expected = EARTH_RADIUS_M**2 * 2 * math.sin(math.radians(0.5)) * math.radians(1.0)
    assert grid.cell_areas()[1, 0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("grid", [EUROPE, DEMO, Grid(-0.75, 0.75, -1.5, 1.5, 0.75)])
def test_coordinates_are_multiples_of_the_resolution(grid):
    for values in (grid.latitudes, grid.longitudes):
        k = values / grid.res
        np.testing.assert_allclose(k, np.round(k), atol=1e-9)


def test_latitude_strictly_descending_longitude_ascending():
    for grid in (EUROPE, DEMO):
        assert (np.diff(grid.latitudes) < 0).all()
        assert (np.diff(grid.longitudes) > 0).all()
        assert (np.diff(grid.lat_edges()) < 0).all()
        np.testing.assert_allclose(np.diff(grid.latitudes), -grid.res)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(lat_min=44.0, lat_max=56.0, lon_min=0.0, lon_max=20.0, res=0.0), "res"),
        (dict(lat_min=44.1, lat_max=56.0, lon_min=0.0, lon_max=20.0, res=0.5), "lat_min"),
        (dict(lat_min=44.0, lat_max=56.0, lon_min=0.3, lon_max=20.0, res=0.5), "lon_min"),
        (dict(lat_min=56.0, lat_max=44.0, lon_min=0.0, lon_max=20.0, res=0.5), "lat_min"),
        (dict(lat_min=44.0, lat_max=56.0, lon_min=0.0, lon_max=180.0, res=0.5), "lon_max"),
        (dict(lat_min=-92.0, lat_max=56.0, lon_min=0.0, lon_max=20.0, res=0.5), "lat_min"),
    ],
)
def test_bad_grids_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Grid(**kwargs)


def test_json_round_trip():
    assert Grid.from_json(DEMO.to_json()) == DEMO
    assert json.loads(DEMO.to_json())["res"] == 0.5


def test_contains_and_index_of():
    lat = np.array([56.2, 56.25, 43.76, 43.75, 50.0, 57.0, 50.0])
    lon = np.array([-0.25, 0.0, 20.2, 10.0, 20.25, 10.0, -0.26])
    inside = DEMO.contains(lat, lon)
    # North edge belongs to the top row, south edge and east edge are outside.
    np.testing.assert_array_equal(inside, [True, True, True, False, False, False, False])
    row, col = DEMO.index_of(lat[:3], lon[:3])
    np.testing.assert_array_equal(row, [0, 0, DEMO.n_lat - 1])
    np.testing.assert_array_equal(col, [0, 0, DEMO.n_lon - 1])
