"""bfm.regrid: known answers and invariants (WeatherBench2 style)."""

import numpy as np
import pytest

from bfm import regrid
from bfm.contracts.grid import Grid
from bfm.sources.era5 import native_grid
from bfm.testing import EUROPE_GRID as EUROPE

QUARTER = Grid(44.0, 47.0, 0.0, 4.0, 0.25)
# 0.75 deg cells whose edges fall on 0.25 deg cell edges: every target is a 3 x 3 block.
BLOCK_SRC = Grid(44.75, 48.25, 2.75, 6.25, 0.25)
BLOCK_DST = Grid(45.0, 48.0, 3.0, 6.0, 0.75)


def smooth_field(grid: Grid, n_lead: int = 0) -> np.ndarray:
    lat, lon = np.meshgrid(grid.latitudes, grid.longitudes, indexing="ij")
    field = 280 + 10 * np.sin(np.deg2rad(4 * lon)) * np.cos(np.deg2rad(6 * lat)) + 0.3 * lat
    return np.stack([field + k for k in range(n_lead)]) if n_lead else field


def area_mean(values: np.ndarray, grid: Grid) -> float:
    areas = grid.cell_areas()
    return float((values * areas).sum() / areas.sum())


def test_identity_is_exact_even_with_nan():
    rng = np.random.default_rng(0)
    field = rng.normal(size=(3, *QUARTER.shape)).astype(np.float32) * 1e3
    field[0, 2, 3] = np.nan
    out = regrid.conservative(field, QUARTER, QUARTER)
    np.testing.assert_array_equal(out, field.astype(np.float64))
    np.testing.assert_array_equal(regrid.nearest(field, QUARTER, QUARTER), field)
    categories = rng.integers(0, 8, QUARTER.shape).astype(np.float32)
    np.testing.assert_array_equal(regrid.mode(categories, QUARTER, QUARTER), categories)


@pytest.mark.parametrize(
    "dst",
    [
        Grid(44.0, 47.0, 0.0, 4.0, 0.5),
        Grid(44.0, 46.0, 0.0, 4.0, 1.0),
        Grid(44.1, 46.8, 0.3, 3.6, 0.3),  # edges not aligned with the source: partial overlaps
    ],
)
def test_constant_stays_constant(dst):
    src = native_grid(dst)
    out = regrid.conservative(np.full(src.shape, 273.15), src, dst)
    assert out.shape == dst.shape
    np.testing.assert_allclose(out, 273.15, rtol=1e-13)


def test_area_weighted_mean_is_conserved():
    field = smooth_field(BLOCK_SRC)
    out = regrid.conservative(field, BLOCK_SRC, BLOCK_DST)
    assert area_mean(out, BLOCK_DST) == pytest.approx(area_mean(field, BLOCK_SRC), rel=1e-12)


def test_block_known_answer_and_nan_handling():
    field = smooth_field(BLOCK_SRC)
    areas = BLOCK_SRC.cell_areas()
    block = (slice(0, 3), slice(0, 3))  # target cell (0, 0)
    expected = (field[block] * areas[block]).sum() / areas[block].sum()
    out = regrid.conservative(field, BLOCK_SRC, BLOCK_DST)
    assert out[0, 0] == pytest.approx(expected, rel=1e-12)

    holed = field.copy()
    holed[1, 1] = np.nan  # one source cell missing: mean of the other eight, by area
    mask = np.ones((3, 3), bool)
    mask[1, 1] = False
    expected = (field[block][mask] * areas[block][mask]).sum() / areas[block][mask].sum()
    out = regrid.conservative(holed, BLOCK_SRC, BLOCK_DST)
    assert out[0, 0] == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(out).all()  # a NaN does not spread to other targets

    holed[0:3, 3:6] = np.nan  # a whole block missing -> NaN there only
    out = regrid.conservative(holed, BLOCK_SRC, BLOCK_DST)
    assert np.isnan(out[0, 1]) and np.isfinite(np.delete(out.ravel(), 1)).all()


def test_coarsened_values_lie_within_their_source_block():
    dst = Grid(44.0, 47.0, 0.0, 4.0, 0.5)
    src = native_grid(dst)  # 0.25 deg; each target overlaps 3 x 3 source cells (half edges)
    field = smooth_field(src)
    out = regrid.conservative(field, src, dst)
    for i in range(dst.n_lat):
        for j in range(dst.n_lon):
            block = field[2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
            assert block.min() - 1e-9 <= out[i, j] <= block.max() + 1e-9


def test_leading_dimensions_are_regridded_independently():
    field = smooth_field(BLOCK_SRC, n_lead=3)
    out = regrid.conservative(field, BLOCK_SRC, BLOCK_DST)
    assert out.shape == (3, *BLOCK_DST.shape)
    np.testing.assert_allclose(out[2] - out[0], 2.0, rtol=1e-12)


def test_quarter_degree_grid_does_not_lead_to_nan():
    src = native_grid(EUROPE)
    assert src == EUROPE
    field = smooth_field(src)
    assert not np.isnan(regrid.conservative(field, src, EUROPE)).any()
    coarse = Grid(34.0, 72.0, -30.0, 50.0, 0.5)
    out = regrid.conservative(smooth_field(native_grid(coarse)), native_grid(coarse), coarse)
    assert not np.isnan(out).any()


def test_target_outside_the_source_is_nan():
    dst = Grid(44.0, 50.0, 0.0, 4.0, 1.0)
    out = regrid.conservative(np.ones(QUARTER.shape), QUARTER, dst)
    assert np.isnan(out[0]).all()  # 49.5..50.5 lies north of the source
    assert not regrid.covers(QUARTER, dst) and regrid.covers(native_grid(dst), dst)


def test_wrong_field_shape_raises():
    with pytest.raises(ValueError, match="field"):
        regrid.conservative(np.zeros((3, 3)), QUARTER, QUARTER)


def test_mode_takes_the_majority_by_area():
    field = np.zeros(BLOCK_SRC.shape)
    field[0:3, 0:3] = [[1, 1, 2], [1, 2, 2], [5, 5, 5]]  # 3 x cat 1, 3 x 2, 3 x 5
    # The northern row of cells is smallest (cos lat): 5 in the southern row has most area.
    field[0:3, 3:6] = [[7, 7, 7], [7, 3, 3], [3, 3, 3]]
    field[3:6, 0:3] = np.nan
    out = regrid.mode(field, BLOCK_SRC, BLOCK_DST)
    assert out[0, 0] == 5
    assert out[0, 1] == 3
    assert np.isnan(out[1, 0])
    assert out[1, 1] == 0
    assert set(np.unique(out[np.isfinite(out)])) <= {0, 3, 5}


def test_mode_of_a_tie_is_the_smaller_category():
    src = Grid(10.0, 11.0, -0.5, 0.5, 0.5)  # 3 x 3 cells = target cell (0, 0) exactly
    dst = Grid(9.0, 10.5, 0.0, 1.5, 1.5)
    field = np.array([[4.0, 2.0, np.nan]] * 3)  # two columns of equal area: a tie
    out = regrid.mode(field, src, dst)
    assert out[0, 0] == 2.0
    assert np.isnan(out[0, 1]) and np.isnan(out[1]).all()  # no overlap -> NaN


def test_nearest_picks_the_cell_containing_the_target_centre():
    field = np.arange(np.prod(QUARTER.shape), dtype=float).reshape(QUARTER.shape)
    dst = Grid(44.0, 47.0, 0.0, 4.0, 0.5)
    out = regrid.nearest(field, QUARTER, dst)
    np.testing.assert_array_equal(out, field[::2, ::2])  # 0.5 centres are 0.25 centres


def test_count_points_sums_to_points_inside_and_drops_the_rest():
    grid = Grid(44.0, 46.0, 0.0, 2.0, 0.5)
    rng = np.random.default_rng(1)
    lat = rng.uniform(43.0, 47.0, 1000)
    lon = rng.uniform(-1.0, 3.0, 1000)
    lat[0], lon[0] = np.nan, 1.0
    counts = regrid.count_points(lat, lon, grid)
    assert counts.shape == grid.shape and counts.dtype == np.int64
    assert counts.sum() == grid.contains(lat, lon).sum()
    assert counts.sum() < 1000


def test_count_points_known_cells_and_groups():
    grid = Grid(44.0, 46.0, 0.0, 2.0, 0.5)
    lat = np.array([46.2, 46.2, 44.0, 45.1, 50.0])
    lon = np.array([-0.2, -0.2, 2.1, 1.0, 1.0])
    counts = regrid.count_points(lat, lon, grid)
    assert counts[0, 0] == 2 and counts[4, 4] == 1 and counts[2, 2] == 1 and counts.sum() == 4
    by_group = regrid.count_points(lat, lon, grid, np.array([0, 1, 1, -1, 0]), 2)
    assert by_group.shape == (2, *grid.shape)
    assert by_group[0, 0, 0] == 1 and by_group[1, 0, 0] == 1 and by_group[1, 4, 4] == 1
    assert by_group.sum() == 3  # group -1 and the point outside are dropped


def test_grid_from_coords_round_trip_and_errors():
    assert regrid.grid_from_coords(EUROPE.latitudes, EUROPE.longitudes) == EUROPE
    with pytest.raises(ValueError, match="latitude"):
        regrid.grid_from_coords(EUROPE.latitudes[::-1], EUROPE.longitudes)
    with pytest.raises(ValueError, match="longitude"):
        regrid.grid_from_coords(EUROPE.latitudes, EUROPE.longitudes[::2])
