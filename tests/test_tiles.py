"""Tiles: the tile contract, the time rule, the valid-range rule, regridding per variable
(the sources' to_tile), and the bfm tile / bfm sample command line."""

import json
import logging
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from bfm.cli import main
from bfm.contracts import catalogue, occurrence, timeaxis
from bfm.contracts import tile as tiles
from bfm.contracts.grid import Grid
from bfm.provenance import provenance
from bfm.sources import Study, era5, gbif
from bfm.sources import occurrences as occurrences_source
from bfm.testing import demo_config

# A 0.25 deg target equals its native grid (identity regridding): the time rule is then
# visible exactly. The 0.5 deg target exercises real coarsening.
HALF = Grid(46.0, 47.5, 8.0, 9.5, 0.5)
QUARTER = era5.native_grid(HALF)  # 45.75..47.75 N, 7.75..9.75 E
WINDOW = ("2010-01-01", "2010-02-28")
PROV = provenance(None, {"test": "tiles"})
SPECIES_CSV = Path(__file__).resolve().parents[1] / "tests" / "species.csv"
ERA5, GBIF = era5.ERA5(), gbif.GBIF()
SOURCES = {"era5": {"mode": "sample", "seed": 5}, "gbif": {"mode": "sample", "seed": 2},
           "occurrences": {"mode": "combine"}}  # fmt: skip
OCCURRENCES = occurrences_source.Occurrences()


def study(step: str = "1D", grid: Grid = HALF) -> Study:
    return Study(grid, *WINDOW, step, (250, 500, 850), str(SPECIES_CSV), SOURCES)


def era5_tile(
    raw: xr.Dataset, modality: str, step: str = "1D", grid: Grid = HALF, period: str = "2010-01"
) -> xr.Dataset:
    return ERA5.to_tile(raw, catalogue.modality(modality), study(step, grid), period, PROV)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    era5.sample(root / "surface.nc", "surface", HALF, "2010-01", seed=5)
    era5.sample(root / "atmospheric.nc", "atmospheric", HALF, "2010-01", (250, 500, 850), seed=5)
    era5.sample(root / "static.nc", "static", HALF, seed=5)
    species = gbif.read_species(SPECIES_CSV)
    gbif.sample(root / "occ.zip", species, *WINDOW, HALF, seed=2, climate_seed=5)
    return root


@pytest.fixture(scope="module")
def surface(raw_dir):
    return era5.open(raw_dir / "surface.nc", "surface")


def surface_tile(raw: xr.Dataset, step: str, grid: Grid = QUARTER) -> xr.Dataset:
    return era5_tile(raw, "era5_surface", step, grid)


def test_time_rule_6h_is_the_native_value(surface):
    tile = surface_tile(surface, "6h")
    assert tile.sizes["time"] == 124
    np.testing.assert_array_equal(tile["t2m"].values, surface["t2m"].values)
    assert tile["t2m"].attrs["cell_methods"] == "time: point area: mean"


def test_time_rule_1d_is_the_mean_of_four_6_hourly_values(surface):
    tile = surface_tile(surface, "1D")
    assert tile.sizes["time"] == 31
    assert pd.Timestamp(tile["time"].values[4]) == pd.Timestamp("2010-01-05")
    raw = surface["msl"].values.astype(np.float64)
    expected = raw[16:20].mean(axis=0)  # 2010-01-05 00, 06, 12, 18 UTC
    np.testing.assert_allclose(tile["msl"].values[4], expected, rtol=1e-6)
    assert tile["msl"].attrs["cell_methods"] == "time: mean area: mean"


def test_time_rule_1ms_is_the_monthly_mean(surface):
    tile = surface_tile(surface, "1MS")
    assert tile.sizes["time"] == 1
    expected = surface["t2m"].values.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(tile["t2m"].values[0], expected, rtol=1e-6)


def test_coarsened_values_stay_within_the_source_range(surface):
    tile = surface_tile(surface, "1D", HALF)
    assert tile["t2m"].shape == (31, *HALF.shape)
    daily = surface["t2m"].values.reshape(31, 4, *surface["t2m"].shape[1:]).mean(axis=1)
    assert (tile["t2m"].values >= daily.min(axis=(1, 2))[:, None, None] - 1e-3).all()
    assert (tile["t2m"].values <= daily.max(axis=(1, 2))[:, None, None] + 1e-3).all()
    assert not np.isnan(tile["t2m"].values).any()


def test_missing_native_time_names_the_file_and_the_time(surface):
    gappy = surface.drop_isel(time=[17])  # 2010-01-05T06
    gappy.encoding["source"] = "raw/surface-2010-01.nc"
    with pytest.raises(ValueError, match=r"raw/surface-2010-01\.nc: time.*2010-01-05 06:00"):
        surface_tile(gappy, "1D")
    with pytest.raises(ValueError, match="2010-01-05 06:00"):
        surface_tile(gappy, "6h")


def test_tile_that_the_source_does_not_cover_is_refused(surface):
    assert era5.native_grid(QUARTER) == QUARTER
    wider = Grid(45.0, 47.5, 8.0, 9.5, 0.5)
    with pytest.raises(ValueError, match="do not cover"):
        surface_tile(surface, "1D", wider)


def test_written_tile_is_cf_and_passes_open_tile(tmp_path, surface):
    from bfm.paths import tile_path

    path = tile_path(tmp_path / "tiles", "era5_surface", "2010-01")
    assert path.parts[-2:] == ("era5_surface", "2010-01.nc")
    tiles.write_tile(surface_tile(surface, "1D", HALF), path)
    assert not list(path.parent.glob(".*tmp*"))  # atomic write leaves no temp file
    with xr.open_dataset(path) as plain:
        assert plain["t2m"].dims == ("time", "latitude", "longitude")
    with tiles.open_tile(path, "era5_surface") as ds:
        assert ds.attrs["Conventions"] == "CF-1.10"
        for key in ("title", "source", "licence", "citation", "history", "institution"):
            assert ds.attrs[key]
        assert Grid.from_json(ds.attrs["grid"]) == HALF
        assert ds.attrs["step"] == "1D" and "[t, t + step)" in ds.attrs["time_rule"]
        for key in ("bfm_version", "git_commit", "config_hash"):
            assert ds.attrs[key] == PROV[key]
        assert ds["t2m"].attrs["units"] == "K"
        assert ds["t2m"].attrs["standard_name"] == "air_temperature"
        assert ds["msl"].attrs["standard_name"] == "air_pressure_at_mean_sea_level"
        assert ds["latitude"].attrs["axis"] == "Y" and ds["time"].attrs["axis"] == "T"
    with netCDF4.Dataset(path) as nc:
        t2m = nc["t2m"]
        assert t2m.dtype == np.float32 and np.isnan(t2m._FillValue) and t2m.filters()["zlib"]
        assert nc["time"].units.startswith("hours since 1970-01-01")
        assert nc["latitude"].units == "degrees_north"


def test_atmospheric_tile(raw_dir, tmp_path):
    raw = era5.open(raw_dir / "atmospheric.nc", "atmospheric")
    tile = era5_tile(raw, "era5_atmospheric")
    assert tile["t"].dims == ("time", "level", "latitude", "longitude")
    assert tile["level"].values.tolist() == [250, 500, 850]
    assert (np.diff(tile["t"].values, axis=1) > 0).all()  # warmer at higher pressure
    assert tile["q"].attrs["units"] == "kg kg-1" and tile["level"].attrs["units"] == "hPa"
    path = tiles.write_tile(tile, tmp_path / "era5_atmospheric" / "2010-01.nc")
    tiles.open_tile(path, "era5_atmospheric").close()


def test_static_tile(raw_dir):
    raw = era5.open(raw_dir / "static.nc", "static")
    tile = era5_tile(raw, "era5_static", period="static")
    assert set(tile.data_vars) == {"z", "lsm", "slt"}
    assert tile["lsm"].dims == ("latitude", "longitude")
    lsm, slt = tile["lsm"].values, tile["slt"].values
    assert lsm.min() >= 0 and lsm.max() <= 1
    assert set(np.unique(slt)) <= set(range(8))
    native_slt = set(np.unique(raw["slt"].values))
    assert set(np.unique(slt)) <= native_slt  # a mode never invents a category
    assert tile["slt"].attrs["cell_methods"] == "area: mode"
    assert tile["lsm"].attrs["standard_name"] == "land_area_fraction"
    assert "time" not in tile.dims and "no time" in tile.attrs["time_rule"]


def cleaned(path: Path) -> pd.DataFrame:
    """The records of a SIMPLE_CSV file after the contract's cleaning (as ``combine`` does)."""
    table, _, q = gbif.records(path, gbif.read_species(SPECIES_CSV))
    return occurrence.clean(table, q)


def occurrences(rows: list[tuple], tmp_path: Path) -> pd.DataFrame:
    """The cleaned records of a SIMPLE_CSV file holding ``rows``."""
    table = pd.DataFrame({c: [""] * len(rows) for c in gbif.SIMPLE_CSV_COLUMNS})
    names = gbif.read_species(SPECIES_CSV).set_index("gbif_key")["scientific_name"]
    for i, name in enumerate(
        ("speciesKey", "decimalLatitude", "decimalLongitude", "eventDate", "occurrenceStatus")
    ):
        table[name] = [str(r[i]) for r in rows]
    table["species"] = [names.get(r[0], "Felis catus") for r in rows]
    table["gbifID"] = [str(i) for i in range(len(rows))]
    path = tmp_path / "0000009-240101000000.csv"
    table.to_csv(path, sep="\t", index=False)
    return cleaned(path)


def species_tile(table: pd.DataFrame, step: str, period: str = "2010-01") -> xr.Dataset:
    s = study(step)
    times = s.times_in(period)
    ends = times + timeaxis.offset(step)
    modality = catalogue.modality("species_occurrence")
    return OCCURRENCES.count(table, modality, s, times, ends, period, PROV, "records.parquet")


def test_species_tile_time_rule_and_dropped_records(tmp_path):
    fox, wolf = 5219243, 5219173
    df = occurrences(
        [
            (fox, 47.0, 9.0, "2010-01-05", "PRESENT"),  # date only: a day, not 00 UTC
            (fox, 47.0, 9.0, "2010-01-05T05:59:59", "PRESENT"),
            (fox, 47.0, 9.0, "2010-01-05T06:00:00", "PRESENT"),
            (wolf, 46.1, 8.1, "2010-01-31T23:00:00", "PRESENT"),
            (wolf, 46.1, 8.1, "2010-02-01", "PRESENT"),  # next period
            (wolf, 60.0, 8.1, "2010-01-05", "PRESENT"),  # outside the grid
            (12345, 47.0, 9.0, "2010-01-05", "PRESENT"),  # not a listed species
            (fox, 47.0, 9.0, "2010-01-05", "ABSENT"),
            (fox, 47.0, 9.0, "garbage", "PRESENT"),
        ],
        tmp_path,
    )
    tile = species_tile(df, "6h").set_xindex("species_key")
    occ = tile["occurrence"]
    assert occ.dims == ("time", "species", "latitude", "longitude") and occ.dtype == np.float32
    assert tile["species_key"].dtype == np.int64 and "species" not in tile.variables
    assert tile["scientific_name"].sel(species_key=fox).item() == "Vulpes vulpes"
    row, col = (int(i) for i in HALF.index_of(47.0, 9.0))
    fox_cell = occ.sel(species_key=fox).isel(latitude=row, longitude=col)
    assert fox_cell.sel(time="2010-01-05T00:00").item() == 1  # the day is excluded at 6h
    assert fox_cell.sel(time="2010-01-05T06:00").item() == 1
    assert occ.sel(species_key=wolf).sum().item() == 1
    assert occ.sum().item() == 3
    assert tile.attrs["n_records_coarser_than_step"] == "1"
    daily = species_tile(df, "1D").set_xindex("species_key")
    assert daily["occurrence"].sel(time="2010-01-05", species_key=fox).sum().item() == 3


def test_species_counts_are_conserved_over_the_window(raw_dir, tmp_path):
    records = cleaned(raw_dir / "occ.zip")
    total = 0.0
    for period in ("2010-01", "2010-02"):
        tile = species_tile(records, "1D", period)
        path = tiles.write_tile(tile, tmp_path / f"{period}.nc")
        with tiles.open_tile(path, "species_occurrence") as ds:
            total += float(ds["occurrence"].sum())
            assert "gbif" in ds.attrs["source"]
    inside = HALF.contains(records["latitude"].values, records["longitude"].values)
    assert total == inside.sum() == len(records) > 0


def test_open_tile_errors_name_the_file_and_the_field(tmp_path, surface):
    tile = surface_tile(surface, "1D", HALF)
    cases = {
        "no_msl.nc": (tile.drop_vars("msl"), "'msl'"),
        "bad_grid.nc": (tile.assign_attrs(grid="{}"), "'grid'"),
        "no_provenance.nc": (tile.drop_attrs(deep=False), "'Conventions'"),
        "float64.nc": (tile.assign(t2m=tile["t2m"].astype(np.float64)), "'t2m'.*float32"),
    }
    for name, (bad, field) in cases.items():
        bad.to_netcdf(tmp_path / name)
        with pytest.raises(ValueError, match=rf"{name}: .*{field}"):
            tiles.open_tile(tmp_path / name, "era5_surface")
        with pytest.raises(ValueError, match=name):
            tiles.write_tile(bad, tmp_path / "out" / name)
    good = tiles.write_tile(tile, tmp_path / "good.nc")
    with pytest.raises(ValueError, match=r"good\.nc: .*modality"):
        tiles.open_tile(good, "era5_atmospheric")
    with pytest.raises(FileNotFoundError, match="absent.nc"):
        tiles.open_tile(tmp_path / "absent.nc", "era5_surface")


# --- the valid-range rule and the time rule on bad native data -----------------------------
def test_a_few_undeclared_fill_values_are_masked_and_counted(surface, tmp_path):
    bad = surface.copy(deep=True)
    bad["t2m"].values[3, 2, 4] = 1e20  # ERA5's fill value, not declared as missing
    bad["t2m"].values[5, 0, 0] = -1e20
    tile = surface_tile(bad, "6h")
    assert tile["t2m"].attrs["n_out_of_range"] == 2
    assert np.isnan(tile["t2m"].values[3, 2, 4]) and np.isnan(tile["t2m"].values[5, 0, 0])
    assert np.nanmax(tile["t2m"].values) < 350
    path = tiles.write_tile(tile, tmp_path / "t.nc")
    report = json.loads(tiles.qc_path(path).read_text())
    assert report["variables"]["t2m"] == {"n_out_of_range": 2, "n_incomplete": 0}
    assert report["variables"]["msl"] == {"n_out_of_range": 0, "n_incomplete": 0}


def test_many_out_of_range_values_refuse_the_file(surface):
    celsius = surface.copy(deep=True)
    celsius["t2m"] = celsius["t2m"] - 273.15  # a wrong unit: most values below 150 K
    celsius.encoding["source"] = "raw/surface-2010-01.nc"
    with pytest.raises(
        ValueError,
        match=r"raw/surface-2010-01\.nc: variable 't2m': \d+ of "
        r"\d+ values lie outside its valid range \[150\.0, 350\.0\] \(e\.g\. ",
    ):
        surface_tile(celsius, "1D")


def test_a_partly_missing_day_is_missing_not_averaged(surface):
    gappy = surface.copy(deep=True)
    gappy["msl"].values[17, 1, 2] = np.nan  # 2010-01-05T06 at one cell
    tile = surface_tile(gappy, "1D")  # identity grid: tile cell = native cell
    assert np.isnan(tile["msl"].values[4, 1, 2])
    assert np.isfinite(tile["msl"].values[4]).sum() == tile["msl"].values[4].size - 1
    assert np.isfinite(tile["msl"].values[[3, 5]]).all()
    assert tile["msl"].attrs["n_incomplete"] == 1
    coarse = surface_tile(gappy, "1D", HALF)  # a 0.5 deg cell: the mean of the complete ones
    assert np.isfinite(coarse["msl"].values).all() and coarse["msl"].attrs["n_incomplete"] == 1


def test_write_refuses_a_value_outside_the_range(surface, tmp_path):
    tile = surface_tile(surface, "1D", HALF)
    tile["u10"].values[0, 0, 0] = 500.0
    with pytest.raises(ValueError, match=r"t\.nc: variable 'u10' holds 1 value\(s\) outside"):
        tiles.write_tile(tile, tmp_path / "t.nc")
    assert not (tmp_path / "t.nc").exists()


# --- command line --------------------------------------------------------------------------
def config_file(tmp_path: Path, **changes) -> Path:
    cfg = demo_config(
        grid=HALF.to_dict(),
        species=str(SPECIES_CSV),
        levels=[500, 850],
        sources={"era5": {"mode": "sample", "seed": 3}, "gbif": {"mode": "sample", "seed": 4}},
        **changes,
    )
    cfg["time"].update(start="2010-01-01", end="2010-02-28", step="1D", eval_start="2010-02-18")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(command: str) -> int:
    return main(command.split())


def test_cli_sample_and_tile_end_to_end(tmp_path, monkeypatch):
    raw, out, cfg = tmp_path / "raw", tmp_path / "tiles", config_file(tmp_path)
    for name in ("surface/2010-02.nc", "atmospheric/2010-02.nc", "static/static.nc"):
        assert run(f"sample era5 {name} --config {cfg} --out {raw}/era5/{name}") == 0
    assert (raw / "era5/surface/2010-02.nc.manifest.json").exists()
    raw_gbif = Path("results/raw/gbif/occurrences.zip")  # combine reads the raw folder
    monkeypatch.chdir(tmp_path)
    assert run(f"sample gbif occurrences.zip --config {cfg} --out {raw_gbif}") == 0
    effort = raw_gbif.with_name("effort.zip")
    assert run(f"sample gbif effort.zip --config {cfg} --out {effort}") == 0
    for name in ("records.parquet", "effort.parquet"):
        assert run(f"combine occurrences {name} --config {cfg} --out "
                   f"{raw}/occurrences/{name}") == 0  # fmt: skip
        assert (raw / f"occurrences/{name}.quarantine.json").is_file()
    inputs = {
        "era5_surface": "era5/surface/2010-02.nc",
        "era5_static": "era5/static/static.nc",
        "era5_atmospheric": "era5/atmospheric/2010-02.nc",
        "species_occurrence": "occurrences/records.parquet",
    }
    for modality, name in inputs.items():
        period = "2010-02" if catalogue.modality(modality).periodic else "static"
        more = f" {raw}/occurrences/effort.parquet" if modality == "species_occurrence" else ""
        assert (
            run(
                f"tile {modality} --period {period} --input {raw}/{name}{more} --config {cfg} "
                f"--out {out}/{modality}/{period}.nc"
            )
            == 0
        )
        with tiles.open_tile(out / modality / f"{period}.nc", modality) as ds:
            assert ds.attrs["modality"] == modality
            assert len(ds.attrs["settings_hash"]) == 64
            if "time" in ds.dims:
                assert ds.sizes["time"] == 28
            if "level" in ds.dims:
                assert ds["level"].values.tolist() == [500, 850]
        assert tiles.qc_path(out / modality / f"{period}.nc").is_file()


def test_cli_bad_input_is_one_clean_error(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.ERROR)
    for name in ("CDSAPI_URL", "CDSAPI_KEY", "CDSAPI_RC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cdsapirc
    cfg = config_file(tmp_path)
    raw = tmp_path / "surface.nc"
    assert run(f"sample era5 surface/2010-01.nc --config {cfg} --out {raw}") == 0
    tile = f"tile era5_surface --input {raw} --config {cfg} --out {tmp_path}/t.nc"
    assert (
        run(
            f"tile era5_surface --input {tmp_path}/nope.nc --config {cfg} --period 2010-01 "
            f"--out {tmp_path}/t.nc"
        )
        == 1
    )
    assert "nope.nc" in caplog.text
    caplog.clear()
    assert run(f"{tile} --period 2010-13") == 1  # the input exists: the period is refused
    assert "period '2010-13' is not of the form YYYY-MM" in caplog.text
    caplog.clear()
    assert run(f"{tile}") == 1
    assert "--period: modality 'era5_surface' has one tile per month" in caplog.text
    caplog.clear()
    assert (
        run(f"tile era5_static --period 2010-01 --input {raw} --config {cfg} --out {tmp_path}/s.nc")
        == 1
    )
    assert "is static; its one tile has period 'static'" in caplog.text
    caplog.clear()
    assert run(f"sample era5 surface/2010.nc --config {cfg} --out {tmp_path}/x.nc") == 1
    assert "is not <surface|atmospheric>/YYYY-MM.nc" in caplog.text
    caplog.clear()
    assert run(f"download era5 surface/2010-01.nc --config {cfg} --out {tmp_path}/x.nc") == 1
    assert "no CDS credentials" in caplog.text  # (with none in the environment)
    assert not (tmp_path / "t.nc").exists() and not (tmp_path / "x.nc").exists()


def test_cli_names_unknown_modalities_and_sources(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    cfg = config_file(tmp_path)
    assert run(f"tile sst --period 2010-01 --input x.nc --config {cfg} --out y.nc") == 1
    assert "unknown modality 'sst' (known: ['era5_surface'" in caplog.text
    assert run(f"sample nosuch a.json --config {cfg} --out y.json") == 1
    assert "unknown source 'nosuch'" in caplog.text


def test_help_is_plain_text_and_every_flag_has_help():
    import argparse

    from bfm.cli import COMMANDS, build_parser

    def walk(parser: argparse.ArgumentParser, path: str):
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text and "DESIGN.md" not in text, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif action.option_strings and action.dest != "help":
                yield path, action

    parser = build_parser()
    actions = list(walk(parser, "bfm"))
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(COMMANDS)
    assert len(actions) > 30
    assert all(a.help for _, a in actions), [(p, a.dest) for p, a in actions if not a.help]


def test_the_yearly_rule_takes_the_year_of_each_step_and_never_carries_forward():
    from bfm.sources.tiling import yearly_at

    times = pd.DatetimeIndex(["2009-12-31", "2010-01-01", "2010-06-30", "2011-01-01", "2012-03-01"])
    values = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0]])  # 2009, 2010, 2012; no 2011
    out = yearly_at(np.array([2009, 2010, 2012]), values, times)
    np.testing.assert_array_equal(out[0], [1.0, 2.0])
    np.testing.assert_array_equal(out[1:3], [[3.0, np.nan], [3.0, np.nan]])
    assert np.isnan(out[3]).all()  # 2011: missing, not 2010's value
    np.testing.assert_array_equal(out[4], [5.0, 6.0])
    with pytest.raises(ValueError, match="repeated year"):
        yearly_at(np.array([2010, 2010]), values[:2], times)
