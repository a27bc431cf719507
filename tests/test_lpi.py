"""The Living Planet Database source: the CSV, the sample, open (drops counted), the chain
method worked by hand, the yearly rule, the tile round trip, file mode and bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bfm.contracts import catalogue
from bfm.contracts.grid import Grid
from bfm.contracts.tile import open_tile, write_tile
from bfm.pipeline.tiles import build_tile
from bfm.provenance import file_sha256
from bfm.sources import NotOffered, Study, lpd, lpi, lpi_index, manifest
from bfm.sources.lpi_index import Method, cell_index
from bfm.testing import PROVENANCE, demo_config
from bfm.workflow import Plan

GRID = Grid(46.0, 47.0, 8.0, 9.0, 0.5)  # 3 x 3 cells, edges 45.75..47.25 N, 7.75..9.25 E
LPI = lpi.LPI()
MODALITY = catalogue.modality("lpi")
LOG2 = math.log10(2.0)


def study(
    start: str = "2009-12-01", end: str = "2010-01-31", step: str = "1D", **options: object
) -> Study:
    settings = {"lpi": {"mode": "sample", "seed": 4, "options": options}}
    return Study(GRID, start, end, step, (500,), "unused", settings)


def write_lpd(path: Path, rows: list[dict[str, object]]) -> Path:
    """An LPD CSV in the exact columns; ``rows`` give some columns (years as ints), the rest
    is NULL."""
    with path.open("w", newline="", encoding="latin-1") as f:
        writer = csv.DictWriter(f, fieldnames=list(lpd.COLUMNS), lineterminator="\n")
        writer.writeheader()
        for i, row in enumerate(rows):
            line = dict.fromkeys(lpd.COLUMNS, "NULL")
            line.update(ID=str(i + 1), Binomial="Lynx_lynx", Latitude="46.1", Longitude="8.1")
            line.update({str(k): str(v) for k, v in row.items()})
            writer.writerow(line)
    return path


def index(values: list[list[float]], window: tuple[int, int] = (2000, 2002), **kw: object):
    """cell_index of populations all in cell 0 whose years start at the window's first."""
    cell = np.array(kw.pop("cell", [0] * len(values)))
    species = np.array(kw.pop("species", ["A"] * len(values)))
    v = np.array(values, dtype=float)
    years = np.arange(window[0], window[0] + v.shape[1])
    return cell_index(v, years, cell, species, window, Method(**kw))  # type: ignore[arg-type]


# --- the chain method, worked by hand ----------------------------------------------------
def test_doubling_and_halving_in_one_cell_cancel():
    # d = +log10 2 and -log10 2 each year; mean 0; I = 1, 1, 1.
    r = index([[10, 20, 40], [40, 20, 10]], weighting="populations")
    np.testing.assert_allclose(r.index, [[1.0, 1.0, 1.0]])
    # Alone, the doubling one chains 1, 2, 4.
    np.testing.assert_allclose(index([[10, 20, 40]]).index, [[1.0, 2.0, 4.0]])


def test_geometric_mean_of_ratios():
    # Ratios 2 and 1 each year: mean d = log10(2) / 2, 10^that = sqrt 2: I = 1, 1.4142, 2.
    r = index([[10, 20, 40], [7, 7, 7]], weighting="populations")
    np.testing.assert_allclose(r.index, [[1.0, math.sqrt(2), 2.0]])


def test_species_weighting_averages_populations_of_a_species_first():
    # A1 doubles, A2 constant (species A), B halves. populations: (0.301 + 0 - 0.301) / 3 = 0
    # -> I = 1. species: A = 0.1505, B = -0.301, mean -0.0753 = log10 2^(-1/4):
    # I = 1, 2^-0.25 = 0.8409, 2^-0.5 = 0.7071.
    values = [[10, 20, 40], [7, 7, 7], [40, 20, 10]]
    species = ["A", "A", "B"]
    pops = index(values, species=species, weighting="populations")
    np.testing.assert_allclose(pops.index, [[1.0, 1.0, 1.0]], atol=1e-12)
    r = index(values, species=species, weighting="species")
    np.testing.assert_allclose(r.index, [[1.0, 2**-0.25, 2**-0.5]])


def test_a_jump_is_capped():
    # 10 -> 1000 is d = 2, capped to 1: I = 1, 10, 10; cap 0.5: 10^0.5 = 3.1623.
    r = index([[10, 1000, 1000]])
    np.testing.assert_allclose(r.index, [[1.0, 10.0, 10.0]])
    assert r.counts["capped"] == 1
    np.testing.assert_allclose(index([[10, 1000, 1000]], cap=0.5).index[0, 1], 10**0.5)


def test_a_gap_is_interpolated_log_linearly():
    # 10, NULL, 40: 2001 is 10 * (40 / 10)^(1/2) = 20, so d = log10 2 twice: I = 1, 2, 4.
    nan = np.nan
    np.testing.assert_allclose(index([[10, nan, 40]]).index, [[1.0, 2.0, 4.0]])
    # 1, NULL, NULL, 1e6: d = 2 per year, each capped to 1: I = 1, 10, 100, 1000.
    r = index([[1, nan, nan, 1e6]], window=(2000, 2003))
    np.testing.assert_allclose(r.index, [[1.0, 10.0, 100.0, 1000.0]])
    assert r.counts["capped"] == 3
    # skip: no ratio touches the gap, the cell has none in 2001 and 2002: missing, and with
    # carry the chain's value (d = 0): 1, 1, 1.
    np.testing.assert_array_equal(index([[10, nan, 40]], gaps="skip").index, [[1.0, nan, nan]])
    r = index([[10, nan, 40]], gaps="skip", empty_years="carry")
    np.testing.assert_array_equal(r.index, [[1.0, 1.0, 1.0]])


def test_the_chain_over_three_years():
    # 100, 50, 150, 150: ratios 0.5, 3, 1: I = 1, 0.5, 0.5 * 3 = 1.5, 1.5 * 1 = 1.5.
    r = index([[100, 50, 150, 150]], window=(2000, 2003))
    np.testing.assert_allclose(r.index, [[1.0, 0.5, 1.5, 1.5]])


def test_a_year_without_ratios_is_missing_and_the_chain_goes_on():
    # A: 10, 20 in 2000-2001; B: 5, 15 in 2002-2003. d2001 = log10 2 (A), d2002: none (A ends,
    # B starts), d2003 = log10 3 (B). missing: 1, 2, NaN, 2 * 1 * 3 = 6; carry: 1, 2, 2, 6.
    nan = np.nan
    values = [[10, 20, nan, nan], [nan, nan, 5, 15]]
    r = index(values, window=(2000, 2003))
    np.testing.assert_allclose(r.index, [[1.0, 2.0, nan, 6.0]])
    r = index(values, window=(2000, 2003), empty_years="carry")
    np.testing.assert_allclose(r.index, [[1.0, 2.0, 2.0, 6.0]])


def test_zeros_get_one_percent_of_the_mean_of_the_non_zero_values():
    # 0, 10, 20: mean of non-zeros 15, + 0.15 to every value: 0.15, 10.15, 20.15.
    # d2001 = log10(10.15 / 0.15) = 1.83 -> capped 1; d2002 = log10(20.15 / 10.15):
    # I = 1, 10, 10 * 1.98522 = 19.852. A series of zeros only is left out (counted).
    r = index([[0, 10, 20], [0, 0, 0]], cell=[0, 1])
    assert r.cells.tolist() == [0]
    np.testing.assert_allclose(r.index, [[1.0, 10.0, 10 * 20.15 / 10.15]])
    assert r.counts == {"only_zeros": 1, "outside_window": 0, "used": 1, "capped": 1}


def test_cells_without_populations_in_the_window_are_missing():
    # Population 2 (cell 5) is observed 1980-1981 only: outside the window 2000-2002.
    v = np.full((2, 30), np.nan)
    v[0, 20:23] = [10, 20, 40]
    v[1, 0:2] = [3, 4]
    r = cell_index(v, np.arange(1980, 2010), np.array([3, 5]), np.array(["A", "B"]),
                   (2000, 2002), Method())  # fmt: skip
    assert r.cells.tolist() == [3] and r.counts["outside_window"] == 1
    grid = lpi_index.on_grid(r, (2, 3))
    assert np.isnan(grid[:, [0, 1], :].reshape(3, -1)[:, [0, 1, 2, 4, 5]]).all()
    np.testing.assert_allclose(grid[:, 1, 0], [1.0, 2.0, 4.0])  # flat cell 3 = row 1, col 0


def test_invariants_constant_populations_scaling_and_order():
    rng = np.random.default_rng(0)
    n, years = 60, np.arange(1990, 2011)
    values = np.repeat(10 ** rng.uniform(0, 4, (n, 1)), len(years), axis=1)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:, [0, -1]] = values[:, [1, 1]]
    cell, species = rng.integers(0, 7, n), rng.choice(list("ABCD"), n)
    r = cell_index(values, years, cell, species, (1990, 2010), Method())
    np.testing.assert_allclose(r.index, 1.0)  # constant: 1 in every year
    trend = values * 1.07 ** (years - 1990) * rng.uniform(0.9, 1.1, values.shape)
    base = cell_index(trend, years, cell, species, (1990, 2010), Method())
    scaled = cell_index(trend * 1000, years, cell, species, (1990, 2010), Method())
    order = rng.permutation(n)
    shuffled = cell_index(trend[order], years, cell[order], species[order], (1990, 2010),
                          Method())  # fmt: skip
    np.testing.assert_allclose(scaled.index, base.index)  # units do not matter
    np.testing.assert_allclose(shuffled.index, base.index)
    assert (base.index > 0).all() and base.index.shape == (7, 21)


# --- the sample and open -----------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return LPI.sample(lpi.RAW_NAME, tmp_path_factory.mktemp("lpi") / lpi.RAW_NAME, study())


def test_sample_is_the_lpd_layout(sample_file: Path):
    table = pd.read_csv(sample_file, dtype=str, keep_default_na=False, encoding="latin-1")
    assert tuple(table.columns) == lpd.COLUMNS and len(lpd.YEAR_COLUMNS) == 71
    assert len(table) == 300 and table["ID"].is_unique
    assert table["Binomial"].str.fullmatch(r"[A-Z][a-z]+_[a-z]+").all()
    years = table[list(lpd.YEAR_COLUMNS)]
    assert (years == "NULL").to_numpy().mean() > 0.5  # spans and gaps
    assert table["Location"].str.contains("Réserve").any()  # latin-1 text
    lat, lon = table["Latitude"].astype(float), table["Longitude"].astype(float)
    assert GRID.contains(lat.to_numpy(), lon.to_numpy()).all()
    cells = pd.Series(list(zip(*GRID.index_of(lat, lon), strict=True)))
    assert cells.value_counts().max() > 5  # populations cluster in cells
    record = manifest.verify(sample_file)
    assert record["url"] == "sample:lpi?seed=4" and "redistribution" in record["licence"]


def test_sample_is_deterministic_per_seed(tmp_path: Path, sample_file: Path):
    again = LPI.sample(lpi.RAW_NAME, tmp_path / "a.csv", study())
    assert file_sha256(again) == file_sha256(sample_file)
    other = lpd.sample(tmp_path / "b.csv", GRID, "2009-12-01", "2010-01-31", seed=5)
    assert file_sha256(other) != file_sha256(sample_file)
    small = LPI.sample(lpi.RAW_NAME, tmp_path / "c.csv", study(sample_populations=40))
    assert len(pd.read_csv(small, encoding="latin-1")) == 40


def test_open_the_sample(sample_file: Path):
    ds = LPI.open([sample_file], MODALITY, study())
    assert ds.sizes == {"population": 300, "year": 71}
    assert ds["year"].values.tolist() == list(range(1950, 2021))
    assert ds["binomial"].dtype == object and ds.attrs["n_populations"] == 300
    # the first row's values as the CSV holds them
    table = pd.read_csv(sample_file, dtype=str, keep_default_na=False, encoding="latin-1")
    text = table.loc[0, list(lpd.YEAR_COLUMNS)]
    expected = [np.nan if t == "NULL" else float(t) for t in text]
    np.testing.assert_array_equal(ds["value"].values[0], expected)


def test_open_drops_and_counts_unusable_rows(tmp_path: Path):
    path = write_lpd(tmp_path / "lpd.csv", [
        {2000: 10, 2001: 20},  # kept
        {"Latitude": "NULL", 2000: 1, 2001: 2},  # no latitude
        {"Longitude": "200.5", 2000: 1, 2001: 2},  # longitude outside [-180, 180]
        {"Latitude": "north", 2000: 1},  # coordinates counted first
        {},  # no value
        {1999: 5},  # one value
        {"Latitude": "60.0", "Longitude": "180", 2000: 3, 2001: 3},  # kept (outside the grid)
    ])  # fmt: skip
    ds = lpd.open(path)
    assert ds["population"].values.tolist() == [1, 7]
    assert ds["longitude"].values.tolist() == [8.1, -180.0]
    assert {k: ds.attrs[k] for k in lpd.COUNT_NAMES} == {
        "n_rows": 7, "n_dropped_coordinates": 3, "n_dropped_no_values": 1,
        "n_dropped_one_value": 1, "n_populations": 2,
    }  # fmt: skip
    tile = LPI.to_tile(ds, MODALITY, study(start="2000-01-01", end="2001-12-31"), "2001-03",
                       PROVENANCE)  # fmt: skip
    attrs = tile["lpi"].attrs
    assert attrs["n_outside_grid"] == 1 and attrs["n_used"] == 1
    dropped = sum(attrs[k] for k in lpd.COUNT_NAMES[1:4])
    assert dropped + attrs["n_populations"] == attrs["n_rows"]
    fates = ("n_outside_grid", "n_only_zeros", "n_outside_window", "n_used")
    assert sum(attrs[k] for k in fates) == attrs["n_populations"]
    assert "n_dropped_coordinates 3" in tile.attrs["history"]
    assert float(tile["lpi"].values[0, 2, 0]) == 2.0  # 10 -> 20 (row 2 = 46.0 N, col 0 = 8 E)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({2001: "abc"}, r"data row 2 \(ID '2'\), column '2001': 'abc' is not a population"),
        ({2001: "-3"}, r"column '2001': '-3' is not a population value \(a number >= 0"),
        ({2001: "NA"}, r"'NA' is not a population value .*NULL for none"),
        ({"ID": "1"}, r"column 'ID': '1' repeats an earlier row's ID"),
        ({"ID": "x7"}, r"column 'ID': 'x7' is not a whole number"),
        ({"Binomial": ""}, r"column 'Binomial': '' is empty"),
    ],
)
def test_bad_values_name_the_file_row_column_and_rule(tmp_path: Path, row: dict, message: str):
    path = write_lpd(tmp_path / "bad.csv", [{2000: 1, 2001: 2}, {2000: 1, **row}])
    with pytest.raises(ValueError, match=message) as err:
        lpd.open(path)
    assert str(path) in str(err.value)


def test_missing_columns_are_refused(tmp_path: Path):
    path = write_lpd(tmp_path / "lpd.csv", [{2000: 1, 2001: 2}])
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.drop(columns=["Latitude"]).to_csv(tmp_path / "no_lat.csv", index=False)
    with pytest.raises(ValueError, match=r"no_lat.csv: missing column\(s\) \['Latitude'\]"):
        lpd.open(tmp_path / "no_lat.csv")
    table[list(lpd.META_COLUMNS)].to_csv(tmp_path / "no_years.csv", index=False)
    with pytest.raises(ValueError, match=r"no_years.csv: no year column"):
        lpd.open(tmp_path / "no_years.csv")
    with pytest.raises(FileNotFoundError, match="nothing.csv: no such Living Planet"):
        lpd.open(tmp_path / "nothing.csv")


def test_only_the_required_columns_are_needed(tmp_path: Path):
    # Releases differ (Replicate, Citation, later years): the required four and years do.
    text = "ID,Binomial,Latitude,Longitude,2019,2021\n5,Lynx_lynx,46.1,8.1,10,40\n"
    (tmp_path / "lpd.csv").write_text(text)
    ds = lpd.open(tmp_path / "lpd.csv")
    assert ds["year"].values.tolist() == [2019, 2020, 2021]  # consecutive; 2020 missing
    np.testing.assert_array_equal(ds["value"].values, [[10, np.nan, 40]])


def test_values_the_csv_reader_does_not_parse_take_the_slow_path(tmp_path: Path):
    path = write_lpd(tmp_path / "lpd.csv", [{2000: " 12 ", 2001: "null", 2002: "1e3"}])
    np.testing.assert_array_equal(lpd.open(path)["value"].values[0, 50:53], [12, np.nan, 1000])


# --- tiles -------------------------------------------------------------------------------
@pytest.mark.parametrize("step", ["1D", "1MS"])
def test_round_trip_sample_open_tile_write_open(sample_file: Path, tmp_path: Path, step: str):
    s = study(step=step)
    native = LPI.open([sample_file], MODALITY, s)
    expected = lpi_index.on_grid(
        cell_index(
            native["value"].values,
            native["year"].values,
            np.ravel_multi_index(
                GRID.index_of(native["latitude"].values, native["longitude"].values), GRID.shape
            ),
            native["binomial"].values,
            (2009, 2010),
            Method(),
        ),
        GRID.shape,
    )
    assert np.isfinite(expected[1]).sum() > 3  # the sample gives cells an index in 2010
    for period, year in (("2009-12", 0), ("2010-01", 1)):
        tile = LPI.to_tile(native, MODALITY, s, period, PROVENANCE)
        path = write_tile(tile, tmp_path / f"{period}.nc")
        with open_tile(path, "lpi") as back:
            values = back["lpi"].values
            assert back.sizes["time"] == (31 if step == "1D" else 1)
            assert back.attrs["step"] == step and "chain method" in back.attrs["history"]
            assert back["lpi"].attrs["n_populations"] == 300
        for k in range(len(values)):  # every step holds its year's value
            np.testing.assert_allclose(values[k], expected[year], rtol=1e-6)
    first = LPI.to_tile(native, MODALITY, s, "2009-12", PROVENANCE)["lpi"].values
    assert set(np.unique(first[np.isfinite(first)])) == {1.0}  # 1 in the base year


def test_a_year_beyond_the_data_is_missing_never_carried(tmp_path: Path):
    path = write_lpd(tmp_path / "lpd.csv", [{2019: 10, 2020: 20}])
    native = lpd.open(path)
    s = study(start="2019-06-01", end="2021-01-31", step="1MS")
    assert LPI.to_tile(native, MODALITY, s, "2020-06", PROVENANCE)["lpi"].values[0, 2, 0] == 2
    in_2021 = LPI.to_tile(native, MODALITY, s, "2021-01", PROVENANCE)["lpi"].values
    assert np.isnan(in_2021).all()  # the file ends in 2020: no ratio, no value
    carry = study(start="2019-06-01", end="2021-01-31", step="1MS", empty_years="carry")
    assert LPI.to_tile(native, MODALITY, carry, "2021-01", PROVENANCE)["lpi"].values[0, 2, 0] == 2


def test_base_year_before_the_window(tmp_path: Path):
    # base 2008: I2008 = 1, 10 -> 20 -> 40 over 2008..2010, the 2010 tile shows 4.
    native = lpd.open(write_lpd(tmp_path / "lpd.csv", [{2008: 10, 2009: 20, 2010: 40}]))
    s = study(start="2010-01-01", end="2010-01-31", base_year=2008)
    assert LPI.to_tile(native, MODALITY, s, "2010-01", PROVENANCE)["lpi"].values[3, 2, 0] == 4
    with pytest.raises(ValueError, match="base_year' \\(2011\\) is after the window's first"):
        LPI.to_tile(native, MODALITY, study(base_year=2011), "2010-01", PROVENANCE)


def test_values_beyond_the_valid_range_are_masked_and_counted(tmp_path: Path):
    # 21 years of tenfold growth: I2020 = 1e20 > 1e6 (the catalogue's maximum) is masked and
    # counted once (one cell-year), however many steps; the constant cell keeps its 1.
    rows = [{y: 10 ** (y - 2000) for y in range(2000, 2021)}, {"Latitude": "46.6", 2000: 5,
            2020: 5}]  # fmt: skip
    native = lpd.open(write_lpd(tmp_path / "lpd.csv", rows))
    s = study(start="2000-01-01", end="2020-12-31", step="1D")
    tile = LPI.to_tile(native, MODALITY, s, "2020-01", PROVENANCE)
    assert np.isnan(tile["lpi"].values[:, 2, 0]).all()
    assert tile["lpi"].attrs["n_out_of_range"] == 1
    assert (tile["lpi"].values[:, 1, 0] == 1.0).all()
    assert float(LPI.to_tile(native, MODALITY, s, "2005-01", PROVENANCE)["lpi"][0, 2, 0]) == (
        pytest.approx(1e5, rel=1e-6)
    )


# --- file mode, download, options --------------------------------------------------------
def test_file_mode_reads_the_configured_path(tmp_path: Path):
    path = write_lpd(tmp_path / "LPD2022_public.csv", [{2009: 10, 2010: 30}])
    config = demo_config(sources={"lpi": {"mode": "file", "path": str(path)}})
    plan = Plan(config)
    assert plan.raw_files(MODALITY, "2010-01") == [str(path)]
    tile = build_tile("lpi", "2010-01", plan.raw_files(MODALITY, "2010-01"), plan)
    # the demo grid 44..56 N, 0..20 E at 0.5 deg: 46.1 N 8.1 E is row 20, col 16; the window
    # is 2010 alone, its base year: 1 there, missing elsewhere
    values = tile["lpi"].values
    assert tile.sizes["time"] == 31 and (values[:, 20, 16] == 1.0).all()
    assert np.isfinite(values).sum() == 31
    assert LPI.user_file(str(tmp_path), lpi.RAW_NAME) == f"{tmp_path}/LPD.csv"


def test_download_is_not_offered():
    with pytest.raises(NotOffered, match="forbids redistributing.*livingplanetindex.org"):
        LPI.download(lpi.RAW_NAME, Path("x.csv"), study())
    assert LPI.service is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gap": "skip"}, r"unknown key\(s\) \['sources.lpi.options.gap'\]"),
        ({"gaps": "spline"}, r"options.gaps' must be one of \['interpolate', 'skip'\]"),
        ({"cap": 0}, r"options.cap' must be a number > 0"),
        ({"weighting": "class"}, r"options.weighting' must be one of"),
        ({"empty_years": "zero"}, r"options.empty_years' must be one of"),
        ({"base_year": "1970"}, r"options.base_year' must be a year"),
        ({"encoding": "klingon"}, r"options.encoding': unknown encoding 'klingon'"),
        ({"sample_populations": 0}, r"options.sample_populations' must be a whole number"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str, tmp_path: Path):
    with pytest.raises(ValueError, match=message):
        LPI.sample(lpi.RAW_NAME, tmp_path / "x.csv", study(**options))


def test_raw_names_and_settings():
    assert LPI.raw_names(MODALITY, "2010-01", study()) == ["LPD.csv"]
    settings = LPI.raw_settings("LPD.csv", study())
    assert settings["start"] == "2009-12-01" and settings["source"]["seed"] == 4
    assert MODALITY.source == "lpi" and catalogue.of_source("lpi") == (MODALITY,)
