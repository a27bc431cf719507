"""End to end with the .test/ configs: the user's own files (file mode), and a toy source
added by a plugin module alone (tests/toy_source.py), each a whole DAG in a temporary
directory through `snakemake --configfile .test/<name>.yaml`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import yaml

from bfm.cli import main
from bfm.contracts.batch import read_batch
from bfm.contracts.stats import load_stats
from bfm.contracts.tile import open_tile
from bfm.testing import ROOT
from bfm.workflow import Plan
from tests.conftest import demo_workdir, snakemake_cmd

TEST_CONFIGS = ROOT / ".test"


def run_dag(workdir: Path, config: Path) -> None:
    cmd = [*snakemake_cmd(workdir), "--cores", "2", "--configfile", str(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-5000:]


@pytest.fixture(scope="module")
def file_mode(tmp_path_factory) -> Path:
    """The user's files, written in the sources' native formats, then the DAG over them."""
    workdir = demo_workdir(tmp_path_factory.mktemp("file_mode"))
    config = TEST_CONFIGS / "file_mode.yaml"
    study = yaml.safe_load(config.read_text())
    as_sample = {**study, "sources": {"era5": {"mode": "sample", "seed": 11},
                                      "gbif": {"mode": "sample", "seed": 12}}}  # fmt: skip
    sample_cfg = workdir / "sample.yaml"
    sample_cfg.write_text(yaml.safe_dump(as_sample))
    user = workdir / "user_files"
    names = ["surface/2010-01.nc", "atmospheric/2010-01.nc", "static/static.nc"]
    here = os.getcwd()
    os.chdir(workdir)  # the resolved species list lies under results/ of the working dir
    try:
        assert main(["species", "list", "--config", str(sample_cfg), "--out",
                     "results/species/list.csv"]) == 0  # fmt: skip
        for name in names:
            assert main(["sample", "era5", name, "--config", str(sample_cfg), "--out",
                         str(user / "era5" / name)]) == 0  # fmt: skip
        assert main(["sample", "gbif", "occurrences.zip", "--config", str(sample_cfg), "--out",
                     str(user / "gbif/occurrences.zip")]) == 0  # fmt: skip
    finally:
        os.chdir(here)
    run_dag(workdir, config)
    return workdir


@pytest.mark.slow
def test_file_mode_builds_everything_from_the_users_files(file_mode):
    plan = Plan(yaml.safe_load((TEST_CONFIGS / "file_mode.yaml").read_text()))
    # nothing sampled or downloaded: only the occurrence records combined from the user's GBIF
    raw = sorted(p.relative_to(file_mode / "results/raw").as_posix()
                 for p in (file_mode / "results/raw").rglob("*") if p.is_file())  # fmt: skip
    assert raw == [
        "occurrences/effort.parquet",
        "occurrences/effort.parquet.quarantine.json",
        "occurrences/records.parquet",
        "occurrences/records.parquet.quarantine.json",
    ]
    with open_tile(file_mode / "results/tiles/era5_surface/2010-01.nc", "era5_surface") as ds:
        assert "2010-01.nc" in ds.attrs["source"]
        with xr.open_dataset(file_mode / "user_files/era5/surface/2010-01.nc") as raw:
            # 1D tile at t = mean of the four 6-hourly native values (0.25 -> 0.5 deg too)
            assert abs(float(ds["t2m"].mean()) - float(raw["t2m"].mean())) < 2.0
    batches = sorted((file_mode / "results/batches").glob("*.h5"))
    assert [b.stem for b in batches] == plan.batch_names()
    batch = read_batch(batches[0])
    assert batch.attrs["settings_hash"] == plan.batch_settings_hash
    assert list(batch.levels) == [250, 500, 850, 1000]
    meta = json.loads((file_mode / "results/models/file-mode/meta.json").read_text())
    assert meta["complete"] and meta["config"]["sources"]["era5"]["mode"] == "file"
    assert meta["config_hash"] == plan.hash
    assert (file_mode / f"results/config/{plan.hash}.yaml").is_file()
    scores = (file_mode / "results/eval/file-mode/scores.jsonl").read_text().splitlines()
    assert any(json.loads(s)["variable"] == "surface/t2m" for s in scores)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    workdir = demo_workdir(tmp_path_factory.mktemp("toy"))
    shutil.copy(ROOT / "tests/toy_source.py", workdir / "toy_source.py")
    run_dag(workdir, TEST_CONFIGS / "toy_plugin.yaml")
    return workdir


@pytest.mark.slow
def test_a_plugin_source_is_tiled_batched_and_trained_on(toy_run):
    tiles = sorted((toy_run / "results/tiles/toy_field").glob("*.nc"))
    assert [t.name for t in tiles] == ["2010-01.nc"]
    with xr.open_dataset(tiles[0]) as ds:
        assert ds["greenness"].dims == ("time", "latitude", "longitude")
        assert ds.attrs["modality"] == "toy_field" and ds["greenness"].attrs["units"] == "1"
        assert 0.0 <= float(ds["greenness"].min()) and float(ds["greenness"].max()) <= 1.0
    batches = sorted((toy_run / "results/batches").glob("*.h5"))
    with xr.open_dataset(batches[0], engine="h5netcdf", group="toy") as toy:
        assert toy["greenness"].shape == (2, 13, 21)
    for path in batches:  # the toy group is in every batch (this process has no plugin)
        with h5py.File(path) as f:
            assert "toy" in json.loads(f.attrs["groups"]) and f["toy/greenness"].shape[0] == 2
    stats = load_stats(toy_run / "results/stats/stats.json")
    mean, std = stats.mean_std("toy", "greenness")
    assert 0.2 < mean[0] < 0.8 and std[0] > 0
    meta = json.loads((toy_run / "results/models/toy/meta.json").read_text())
    groups = [g["name"] for g in meta["model"]["config"]["layout"]["groups"]]
    assert groups == ["surface", "static", "atmospheric", "species", "toy"]
    lines = [json.loads(x) for x in (toy_run / "results/eval/toy/scores.jsonl").open()]
    toy = next(r for r in lines if r["variable"] == "toy/greenness")
    assert toy["n"] > 0 and np.isfinite(toy["rmse_model"])
