"""bfm batch: tiles of the months a batch touches -> one valid bfm-batch/1 file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bfm import cli
from bfm.batch import read_batch
from tests.conftest import ROOT

GRID = "44,46,0,2,0.5"
WINDOW = ["--start", "2010-01-30", "--end", "2010-02-02", "--step", "1D"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiles")
    species = str(ROOT / "resources/species.csv")
    run = cli.main
    for period in ("2010-01", "2010-02"):
        for group in ("surface", "atmospheric"):
            raw = f"{d}/raw/{group}/{period}.nc"
            assert (
                run(
                    [
                        "sample",
                        "era5",
                        "--group",
                        group,
                        "--period",
                        period,
                        "--grid",
                        GRID,
                        "--seed",
                        "3",
                        "--out",
                        raw,
                    ]
                )
                == 0
            )
            assert (
                run(
                    [
                        "tile",
                        "era5",
                        "--group",
                        group,
                        "--input",
                        raw,
                        "--period",
                        period,
                        "--grid",
                        GRID,
                        *WINDOW,
                        "--out",
                        f"{d}/era5_{group}/{period}.nc",
                    ]
                )
                == 0
            )
    assert (
        run(
            [
                "sample",
                "gbif",
                "--species",
                species,
                "--start",
                "2010-01-30",
                "--end",
                "2010-02-02",
                "--grid",
                GRID,
                "--seed",
                "3",
                "--out",
                f"{d}/raw/occ.zip",
            ]
        )
        == 0
    )
    for period in ("2010-01", "2010-02"):
        assert (
            run(
                [
                    "tile",
                    "species",
                    "--input",
                    f"{d}/raw/occ.zip",
                    "--species",
                    species,
                    "--period",
                    period,
                    "--grid",
                    GRID,
                    *WINDOW,
                    "--out",
                    f"{d}/species_occurrence/{period}.nc",
                ]
            )
            == 0
        )
    assert (
        run(
            [
                "sample",
                "era5",
                "--group",
                "static",
                "--grid",
                GRID,
                "--seed",
                "3",
                "--out",
                f"{d}/raw/static.nc",
            ]
        )
        == 0
    )
    assert (
        run(
            [
                "tile",
                "era5-static",
                "--input",
                f"{d}/raw/static.nc",
                "--grid",
                GRID,
                "--out",
                f"{d}/era5_static/static.nc",
            ]
        )
        == 0
    )
    return d


def batch_args(d: Path, t0: str, periods: list[str], out: Path) -> list[str]:
    def of(modality: str) -> list[str]:
        return [f"{d}/{modality}/{p}.nc" for p in periods]

    return [
        "batch",
        "--t0",
        t0,
        "--step",
        "1D",
        "--grid",
        GRID,
        "--surface",
        *of("era5_surface"),
        "--atmospheric",
        *of("era5_atmospheric"),
        "--species",
        *of("species_occurrence"),
        "--static",
        f"{d}/era5_static/static.nc",
        "--out",
        str(out),
    ]


def test_batch_across_a_month_boundary_holds_the_tile_values(tiles, tmp_path):
    out = tmp_path / "20100131T00.h5"
    assert cli.main(batch_args(tiles, "20100131T00", ["2010-01", "2010-02"], out)) == 0
    batch = read_batch(out)
    assert batch.times == (pd.Timestamp("2010-01-31"), pd.Timestamp("2010-02-01"))
    with xr.open_dataset(tiles / "era5_surface/2010-02.nc") as feb:
        np.testing.assert_array_equal(
            batch.groups["surface"]["t2m"][1], feb["t2m"].sel(time="2010-02-01").values
        )
    with xr.open_dataset(tiles / "era5_atmospheric/2010-01.nc") as jan:
        np.testing.assert_array_equal(
            batch.groups["atmospheric"]["q"][0], jan["q"].sel(time="2010-01-31").values
        )
    assert list(batch.levels) == [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
    assert len(batch.species) == 6
    assert batch.attrs["config_hash"] and batch.attrs["bfm_version"]


def test_missing_month_is_refused_naming_the_time(tiles, tmp_path, caplog):
    out = tmp_path / "20100131T00.h5"
    assert cli.main(batch_args(tiles, "20100131T00", ["2010-01"], out)) == 1
    assert "era5_surface: tiles lack time(s) ['2010-02-01 00:00:00']" in caplog.text
    assert not out.exists()


def test_missing_tile_file_is_refused(tiles, tmp_path, caplog):
    args = batch_args(tiles, "20100130T00", ["2010-01"], tmp_path / "b.h5")
    args[args.index("--static") + 1] = str(tmp_path / "nope.nc")
    assert cli.main(args) == 1
    assert "nope.nc: no such tile" in caplog.text
