"""bfm batch: tiles of the months a batch touches -> one valid bfm-batch/1 file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from bfm import cli
from bfm.contracts import catalogue
from bfm.contracts.batch import read_batch
from bfm.testing import ROOT, demo_config
from bfm.workflow import Plan

GRID = {"lat_min": 44.0, "lat_max": 46.0, "lon_min": 0.0, "lon_max": 2.0, "res": 0.5}
TIME = {"start": "2010-01-30", "end": "2010-02-03", "step": "1D", "eval_start": "2010-02-02"}
RAW = {
    "era5_surface": "era5/surface/{p}.nc",
    "era5_atmospheric": "era5/atmospheric/{p}.nc",
    "era5_static": "era5/static/static.nc",
    "species_occurrence": "occurrences/records.parquet",
}


def write_config(path: Path, **changes) -> Path:
    cfg = demo_config(grid=GRID, species=str(ROOT / "tests/species.csv"), **changes)
    cfg["time"] = dict(TIME)
    # ERA5 and GBIF: enough to test the batching (the e2e suite batches every source).
    cfg["sources"] = {s: cfg["sources"][s] for s in ("era5", "gbif")}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiles")
    cfg = write_config(d / "config.yaml")
    run = cli.main
    for source, name in [
        ("era5", f"{u}/{p}.nc") for u in ("surface", "atmospheric") for p in ("2010-01", "2010-02")
    ] + [("era5", "static/static.nc"), ("gbif", "occurrences.zip")]:
        assert (
            run(["sample", source, name, "--config", str(cfg), "--out", f"{d}/raw/{source}/{name}"])
            == 0
        )
    # The occurrence records, combined from the GBIF file the workflow's raw folder holds.
    (d / "results").mkdir()
    (d / "results/raw").symlink_to(d / "raw")
    cwd = os.getcwd()
    try:
        os.chdir(d)
        effort = f"{d}/raw/gbif/effort.zip"  # the sample counts the GBIF sample's records
        assert run(["sample", "gbif", "effort.zip", "--config", str(cfg), "--out", effort]) == 0
        for name in ("records.parquet", "effort.parquet"):  # the records, then the effort
            assert run(["combine", "occurrences", name, "--config", str(cfg),
                        "--out", f"{d}/raw/occurrences/{name}"]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    for modality, raw in RAW.items():
        periods = ["2010-01", "2010-02"] if catalogue.modality(modality).periodic else ["static"]
        for p in periods:
            assert (
                run(
                    [
                        "tile",
                        modality,
                        "--period",
                        p,
                        "--input",
                        f"{d}/raw/{raw.format(p=p)}",
                        *(
                            [f"{d}/raw/occurrences/effort.parquet"]
                            if modality == "species_occurrence"
                            else []
                        ),  # fmt: skip
                        "--config",
                        str(cfg),
                        "--out",
                        f"{d}/{modality}/{p}.nc",
                    ]
                )
                == 0
            )
    return d


def batch_args(
    d: Path, t0: str, periods: list[str], out: Path, config: Path | None = None, skip: str = ""
) -> list[str]:
    args = ["batch", "--t0", t0, "--config", str(config or d / "config.yaml"), "--out", str(out)]
    for modality in RAW:
        if modality == skip:
            continue
        spec = catalogue.modality(modality)
        paths = [f"{d}/{modality}/{p}.nc" for p in (periods if spec.periodic else ["static"])]
        args += ["--tile", f"{modality}={','.join(paths)}"]
    return args


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
    assert list(batch.levels) == list(catalogue.DEFAULT_LEVELS)
    assert len(batch.species) == 6
    assert batch.attrs["config_hash"] and batch.attrs["bfm_version"]
    plan = Plan(yaml.safe_load((tiles / "config.yaml").read_text()))
    assert batch.attrs["settings_hash"] == plan.batch_settings_hash
    assert batch.attrs["config_hash"] == plan.hash


def test_missing_month_is_refused_naming_the_time(tiles, tmp_path, caplog):
    out = tmp_path / "20100131T00.h5"
    assert cli.main(batch_args(tiles, "20100131T00", ["2010-01"], out)) == 1
    assert "era5_surface: tiles [" in caplog.text
    assert "2010-01.nc'] lack time(s) ['2010-02-01 00:00:00']" in caplog.text
    assert not out.exists()


def test_missing_tile_file_and_missing_modality_are_refused(tiles, tmp_path, caplog):
    args = batch_args(tiles, "20100130T00", ["2010-01"], tmp_path / "b.h5")
    static = next(i for i, a in enumerate(args) if a.startswith("era5_static="))
    args[static] = f"era5_static={tmp_path}/nope.nc"
    assert cli.main(args) == 1
    assert "nope.nc: no such tile" in caplog.text
    caplog.clear()
    args = batch_args(
        tiles, "20100130T00", ["2010-01"], tmp_path / "b.h5", skip="species_occurrence"
    )
    assert cli.main(args) == 1
    assert "missing ['species_occurrence']" in caplog.text
    caplog.clear()
    assert cli.main([*args, "--tile", "sst=x.nc"]) == 1
    assert "unknown modality 'sst'" in caplog.text
    assert not (tmp_path / "b.h5").exists()


def test_tiles_of_other_settings_are_refused(tiles, tmp_path, caplog):
    """A tile built under another config (here: another ERA5 seed) never enters a batch."""
    caplog.set_level(logging.ERROR)
    other = write_config(
        tmp_path / "other.yaml",
        sources={"era5": {"mode": "sample", "seed": 99}, "gbif": {"mode": "sample", "seed": 7}},
    )
    out = tmp_path / "20100130T00.h5"
    assert cli.main(batch_args(tiles, "20100130T00", ["2010-01"], out, other)) == 1
    assert "era5_surface/2010-01.nc: built under other settings" in caplog.text
    assert not out.exists()


def month_args(d: Path, period: str, lists: Path, *extra: str) -> list[str]:
    args = ["batches", "--period", period, "--config", str(d / "config.yaml"),
            "--out-dir", str(lists.parent), *extra]  # fmt: skip
    for split in ("train", "eval"):
        args += [f"--{split}-list", str(lists / f"{period}.{split}.txt")]
    for modality, paths in month_tiles(d).items():
        args += ["--tile", f"{modality}={','.join(paths)}"]
    return args


def month_tiles(d: Path) -> dict[str, list[str]]:
    """Every modality's tiles of January and February (static: its one)."""
    out = {}
    for modality in RAW:
        periods = ["2010-01", "2010-02"] if catalogue.modality(modality).periodic else ["static"]
        out[modality] = [f"{d}/{modality}/{p}.nc" for p in periods]
    return out


def test_a_month_job_builds_the_same_batches_reading_each_time_once(tiles, tmp_path, caplog):
    from bfm.pipeline.batches import build_month

    lists = tmp_path / "out/lists"
    assert cli.main(month_args(tiles, "2010-01", lists)) == 0
    # Jan 30 and 31 start in January; the second ends in February, whose tile it reads.
    assert (lists / "2010-01.train.txt").read_text().splitlines() == [
        f"{tmp_path}/out/20100130T00.h5", f"{tmp_path}/out/20100131T00.h5"]  # fmt: skip
    assert (lists / "2010-01.eval.txt").read_text() == ""
    for t0, periods in (("20100130T00", ["2010-01"]), ("20100131T00", ["2010-01", "2010-02"])):
        alone = tmp_path / f"alone/{t0}.h5"
        assert cli.main(batch_args(tiles, t0, periods, alone)) == 0
        a, b = read_batch(alone), read_batch(tmp_path / f"out/{t0}.h5")
        assert a.times == b.times and a.attrs["settings_hash"] == b.attrs["settings_hash"]
        for g in a.groups:
            for v in a.groups[g]:
                np.testing.assert_array_equal(a.groups[g][v], b.groups[g][v])
    # Split at eval_start (2010-02-02): February's batches are held out.
    assert cli.main(month_args(tiles, "2010-02", lists)) == 0
    assert (lists / "2010-02.train.txt").read_text() == ""
    assert len((lists / "2010-02.eval.txt").read_text().splitlines()) == 2

    plan = Plan(yaml.safe_load((tiles / "config.yaml").read_text()))
    tile_args = month_tiles(tiles)
    out = {"train": lists / "again.txt"}
    # Up to date: kept, and nothing is read; a newer tile or --force rebuilds.
    assert build_month("2010-01", tile_args, plan, tmp_path / "out", out)["kept"] == 2
    counts = build_month("2010-01", tile_args, plan, tmp_path / "out", out, force=True)
    assert counts == {"built": 2, "kept": 0, "slices": 3}  # Jan 30, 31, Feb 1: once each
    os.utime(tiles / "era5_surface/2010-02.nc")
    try:
        counts = build_month("2010-01", tile_args, plan, tmp_path / "out", out)
    finally:
        os.utime(tiles / "era5_surface/2010-02.nc", (0, 0))  # older than every batch again
    assert counts["built"] == 2
    # The lists are arguments: @FILE stands for the paths it holds.
    stats = tmp_path / "partial.json"
    assert cli.main(["stats", "partial", "--batches", f"@{lists / '2010-01.train.txt'}",
                     "--config", str(tiles / "config.yaml"), "--out", str(stats)]) == 0  # fmt: skip
    assert stats.exists()
    assert cli.main(month_args(tiles, "2009-12", lists)) == 1
    assert "--period: no batch of the study starts in '2009-12'" in caplog.text
