"""The DAG: targets from the config, targeted single-batch runs, early config errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bfm.workflow import Plan
from tests.conftest import ROOT, demo_workdir, snakemake_cmd


def demo_plan(**time) -> Plan:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["time"].update(time)
    return Plan(cfg)


def test_plan_splits_and_periods():
    plan = demo_plan()
    names = plan.batch_names()
    assert names[0] == "20100101T00" and names[-1] == "20100227T00"
    assert len(names) == 58
    train, held_out = plan.batch_names("train"), plan.batch_names("eval")
    assert train + held_out == names
    assert held_out[0] == "20100218T00"
    assert plan.periods == ["2010-01", "2010-02"]
    # A batch that crosses a month boundary reads the tiles of both months, and only those.
    assert plan.batch_periods("20100131T00") == ["2010-01", "2010-02"]
    assert plan.batch_tiles("20100115T00")["era5_surface"] == [
        "results/tiles/era5_surface/2010-01.nc"
    ]


def test_plan_monthly_and_six_hourly_steps():
    monthly = demo_plan(step="1MS", start="2010-01-01", end="2010-12-31", eval_start="2010-09-01")
    assert monthly.batch_names()[:2] == ["20100101T00", "20100201T00"]
    assert monthly.batch_periods("20100101T00") == ["2010-01", "2010-02"]
    hourly = demo_plan(step="6h", end="2010-01-03", eval_start="2010-01-02")
    assert hourly.batch_names()[:3] == ["20100101T00", "20100101T06", "20100101T12"]


def test_file_mode_points_at_the_users_files():
    cfg = yaml.safe_load((ROOT / "config/europe.yaml").read_text())
    plan = Plan(cfg)
    assert plan.raw_era5("surface", "2000-01") == "resources/era5/surface/2000-01.nc"
    assert plan.raw_gbif() == "resources/gbif/occurrences.zip"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return demo_workdir(tmp_path)


def dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # "--" ends --quiet's list of values; the targets follow.
    cmd = [*snakemake_cmd(workdir), "-n", "--quiet", "rules", "--", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_targeted_batch_builds_exactly_its_inputs(workdir):
    out = dry_run(workdir, "results/batches/20100131T00.h5")
    assert out.returncode == 0, out.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, re.M))
    # Two months of tiles (the batch crosses into February), one batch, nothing else.
    assert jobs == {
        "sample_era5": "4",
        "sample_era5_static": "1",
        "sample_gbif": "1",
        "tile_era5": "4",
        "tile_era5_static": "1",
        "tile_species": "2",
        "batch": "1",
        "total": "14",
    }, out.stdout


def test_targeted_batch_inside_one_month(workdir):
    out = dry_run(workdir, "results/batches/20100110T00.h5")
    assert out.returncode == 0, out.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, re.M))
    assert jobs["batch"] == "1" and jobs["tile_era5"] == "2" and jobs["total"] == "9"


def test_broken_config_stops_before_any_job(workdir):
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["time"]["step"] = "2h"
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [*snakemake_cmd(workdir), "-c1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "key 'time.step' breaks the schema rule 'enum'" in out.stderr
    assert "no job was run" in out.stderr
    assert not (workdir / "results").exists()
