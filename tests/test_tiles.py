"""bfm.tiles: the tile contract, the time rule, regridding per variable, and the CLI."""

import logging
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bfm import tiles, timeaxis
from bfm.cli import main
from bfm.grid import Grid
from bfm.provenance import provenance
from bfm.sources import era5, gbif

# A 0.25 deg target equals its native grid (identity regridding): the time rule is then
# visible exactly. The 0.5 deg target exercises real coarsening.
HALF = Grid(46.0, 47.5, 8.0, 9.5, 0.5)
QUARTER = era5.native_grid(HALF)  # 45.75..47.75 N, 7.75..9.75 E
WINDOW = ("2010-01-01", "2010-02-28")
PROV = provenance({"test": "tiles"})
SPECIES_CSV = Path(__file__).resolve().parents[1] / "resources" / "species.csv"


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
    times = timeaxis.steps_in_period("2010-01", *WINDOW, step)
    return tiles.era5_tile(raw, "surface", grid, times, step, PROV, "2010-01")


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
    path = tiles.tile_path(tmp_path / "tiles", "era5_surface", "2010-01")
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
    times = timeaxis.steps_in_period("2010-01", *WINDOW, "1D")
    tile = tiles.era5_tile(raw, "atmospheric", HALF, times, "1D", PROV, "2010-01")
    assert tile["t"].dims == ("time", "level", "latitude", "longitude")
    assert tile["level"].values.tolist() == [250, 500, 850]
    assert (np.diff(tile["t"].values, axis=1) > 0).all()  # warmer at higher pressure
    assert tile["q"].attrs["units"] == "kg kg-1" and tile["level"].attrs["units"] == "hPa"
    path = tiles.write_tile(tile, tmp_path / "era5_atmospheric" / "2010-01.nc")
    tiles.open_tile(path, "era5_atmospheric").close()


def test_static_tile(raw_dir):
    raw = era5.open(raw_dir / "static.nc", "static")
    tile = tiles.era5_static_tile(raw, HALF, PROV)
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


def occurrences(rows: list[tuple], source: str = "occ/0000009-240101000000.csv") -> pd.DataFrame:
    df = pd.DataFrame(
        rows,
        columns=[
            "speciesKey",
            "decimalLatitude",
            "decimalLongitude",
            "eventDate",
            "occurrenceStatus",
        ],
    )
    df["speciesKey"] = df["speciesKey"].astype("Int64")
    df["eventDate"] = gbif.parse_event_dates(df["eventDate"])
    df.attrs["source"] = source
    return df


def test_species_tile_time_rule_and_dropped_records():
    species = gbif.read_species(SPECIES_CSV)
    fox, wolf = 5219243, 5219173
    df = occurrences(
        [
            (fox, 47.0, 9.0, "2010-01-05", "PRESENT"),  # date only: 00:00
            (fox, 47.0, 9.0, "2010-01-05T05:59:59", "PRESENT"),
            (fox, 47.0, 9.0, "2010-01-05T06:00:00", "PRESENT"),
            (wolf, 46.1, 8.1, "2010-01-31T23:00:00", "PRESENT"),
            (wolf, 46.1, 8.1, "2010-02-01", "PRESENT"),  # next period
            (wolf, 60.0, 8.1, "2010-01-05", "PRESENT"),  # outside the grid
            (12345, 47.0, 9.0, "2010-01-05", "PRESENT"),  # not a listed species
            (fox, 47.0, 9.0, "2010-01-05", "ABSENT"),
            (fox, 47.0, 9.0, "garbage", "PRESENT"),
        ]
    )
    times = timeaxis.steps_in_period("2010-01", *WINDOW, "6h")
    tile = tiles.species_tile(df, species, HALF, times, "6h", PROV, "2010-01")
    occ = tile["occurrence"]
    assert occ.dims == ("time", "species", "latitude", "longitude") and occ.dtype == np.float32
    assert tile["species"].dtype == np.int64
    assert tile["scientific_name"].sel(species=fox).item() == "Vulpes vulpes"
    row, col = (int(i) for i in HALF.index_of(47.0, 9.0))
    fox_cell = occ.sel(species=fox).isel(latitude=row, longitude=col)
    assert fox_cell.sel(time="2010-01-05T00:00").item() == 2
    assert fox_cell.sel(time="2010-01-05T06:00").item() == 1
    assert occ.sel(species=wolf).sum().item() == 1
    assert occ.sum().item() == 4
    daily = tiles.species_tile(
        df, species, HALF, timeaxis.steps_in_period("2010-01", *WINDOW, "1D"), "1D", PROV, "2010-01"
    )
    assert daily["occurrence"].sel(time="2010-01-05", species=fox).sum().item() == 3


def test_species_counts_are_conserved_over_the_window(raw_dir, tmp_path):
    species = gbif.read_species(SPECIES_CSV)
    records = gbif.open(raw_dir / "occ.zip")
    total = 0.0
    for period in ("2010-01", "2010-02"):
        times = timeaxis.steps_in_period(period, *WINDOW, "1D")
        tile = tiles.species_tile(records, species, HALF, times, "1D", PROV, period)
        path = tiles.write_tile(tile, tmp_path / f"{period}.nc")
        with tiles.open_tile(path, "species_occurrence") as ds:
            total += float(ds["occurrence"].sum())
            assert "GBIF Occurrence Download" in ds.attrs["citation"]
            assert ds.attrs["licence"] == "CC BY 4.0"
    inside = HALF.contains(records["decimalLatitude"].values, records["decimalLongitude"].values)
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


# --- command line --------------------------------------------------------------------------
GRID = "--grid 46,47.5,8,9.5,0.5"
WINDOW_ARGS = f"--start {WINDOW[0]} --end {WINDOW[1]} --step 1D"


def run(command: str) -> int:
    return main(command.split())


def test_cli_sample_and_tile_end_to_end(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "tiles"
    sample = f"sample era5 {GRID} --seed 3"
    assert run(f"{sample} --group surface --period 2010-02 --out {raw}/surface.nc") == 0
    assert (raw / "surface.nc.manifest.json").exists()
    assert (
        run(f"{sample} --group atmospheric --period 2010-02 --levels 500,850 --out {raw}/atm.nc")
        == 0
    )
    assert run(f"{sample} --group static --out {raw}/static.nc") == 0
    assert (
        run(
            f"sample gbif --species {SPECIES_CSV} --start 2010-02-01 --end 2010-02-28 "
            f"{GRID} --seed 4 --climate-seed 3 --out {raw}/occ.zip"
        )
        == 0
    )
    for group, name in (("surface", "surface.nc"), ("atmospheric", "atm.nc")):
        assert (
            run(
                f"tile era5 --group {group} --input {raw}/{name} --period 2010-02 {GRID} "
                f"{WINDOW_ARGS} --out {out}/era5_{group}/2010-02.nc"
            )
            == 0
        )
    assert (
        run(f"tile era5-static --input {raw}/static.nc {GRID} --out {out}/era5_static/static.nc")
        == 0
    )
    assert (
        run(
            f"tile species --input {raw}/occ.zip --species {SPECIES_CSV} --period 2010-02 "
            f"{GRID} {WINDOW_ARGS} --out {out}/species_occurrence/2010-02.nc"
        )
        == 0
    )
    for modality in tiles.MODALITIES:
        period = "static" if modality == "era5_static" else "2010-02"
        with tiles.open_tile(out / modality / f"{period}.nc", modality) as ds:
            assert ds.attrs["modality"] == modality
            if "time" in ds.dims:
                assert ds.sizes["time"] == 28


def test_cli_bad_input_is_one_clean_error(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    tile = f"tile era5 --group surface --input {tmp_path}/nope.nc {GRID} {WINDOW_ARGS}"
    assert run(f"{tile} --period 2010-01 --out {tmp_path}/t.nc") == 1
    assert "nope.nc" in caplog.text
    assert run(f"{tile} --period 2010-13 --out {tmp_path}/t.nc") == 1
    assert run(f"sample era5 --group surface {GRID} --out {tmp_path}/x.nc") == 1
    assert "--period" in caplog.text
    assert run(f"sample era5 --group static --period 2010-01 {GRID} --out {tmp_path}/x.nc") == 1


def test_cli_rejects_a_bad_grid(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tile", "era5-static", "--input", "x.nc", "--grid", "46,47,8", "--out", "y.nc"])
    assert exit_info.value.code == 2
    assert "--grid" in capsys.readouterr().err


def test_every_cli_flag_has_help():
    import argparse

    from bfm.cli import build_parser

    def walk(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name in ("sample", "tile", "era5", "era5-static", "species", "gbif"):
                        yield from walk(sub)
            elif action.option_strings and action.dest != "help":
                yield action

    actions = list(walk(build_parser()))
    assert len(actions) > 20
    assert all(action.help for action in actions)
