"""The DAG: targets from the config, targeted single-batch runs, early config errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bfm.config import validate_config
from bfm.contracts import catalogue, timeaxis
from bfm.testing import demo_config
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
    assert held_out[0] == "20100217T00"  # a step before eval_start: its target is after it
    assert plan.periods == ["2010-01", "2010-02"]
    # A batch that crosses a month boundary reads the tiles of both months, and only those.
    assert plan.batch_periods("20100131T00") == ["2010-01", "2010-02"]
    monthly = ["era5_surface", "era5_atmospheric", "species_occurrence", "ndvi"]
    # Yearly sources are tiled per month too: each month holds the year's value.
    monthly += ["land", "agriculture", "forest", "redlist", "lpi"]
    assert plan.batch_tiles("20100115T00") == {
        "era5_static": ["results/tiles/era5_static/static.nc"],
        **{m: [f"results/tiles/{m}/2010-01.nc"] for m in monthly},
    }
    assert plan.train_batches_in("2010-02") == [
        f"results/batches/201002{d:02d}T00.h5" for d in range(1, 17)
    ]
    assert plan.train_periods() == ["2010-01", "2010-02"]
    # One job per month builds its batches and lists them per split.
    assert plan.batch_months() == ["2010-01", "2010-02"] and plan.batch_months("eval") == [
        "2010-02"
    ]
    assert plan.month_batches("2010-02", "eval") == held_out
    assert plan.batch_lists("train") == [
        "results/batches/lists/2010-01.train.txt",
        "results/batches/lists/2010-02.train.txt",
    ]
    assert plan.first_batch_lists("eval", 3) == ["results/batches/lists/2010-02.eval.txt"]
    # January's last batch ends in February; February's last ends in February.
    assert plan.month_tiles("2010-01")["era5_surface"] == [
        "results/tiles/era5_surface/2010-01.nc",
        "results/tiles/era5_surface/2010-02.nc",
    ]
    assert plan.month_tiles("2010-02")["era5_surface"] == ["results/tiles/era5_surface/2010-02.nc"]
    assert plan.month_tiles("2010-02")["era5_static"] == ["results/tiles/era5_static/static.nc"]
    with pytest.raises(ValueError, match="no batch starts in 2010-03"):
        plan.month_tiles("2010-03")


def test_plan_monthly_and_six_hourly_steps():
    monthly = demo_plan(step="1MS", start="2010-01-01", end="2010-12-31", eval_start="2010-09-01")
    assert monthly.batch_names()[:2] == ["20100101T00", "20100201T00"]
    assert monthly.batch_periods("20100101T00") == ["2010-01", "2010-02"]
    hourly = demo_plan(step="6h", end="2010-01-03", eval_start="2010-01-02")
    assert hourly.batch_names()[:3] == ["20100101T00", "20100101T06", "20100101T12"]


def test_file_mode_points_at_the_users_files():
    cfg = yaml.safe_load((ROOT / "config/europe.yaml").read_text())
    plan = Plan(cfg)
    surface, species = (catalogue.modality(m) for m in ("era5_surface", "species_occurrence"))
    assert plan.raw_files(species, "2000-01") == [
        "results/raw/occurrences/records.parquet",
        "results/raw/occurrences/effort.parquet",
    ]
    assert plan.raw_files(catalogue.modality("lpi"), "2000") == ["resources/lpi/LPD.csv"]
    # The occurrence sources' files (downloaded in the study) are combined by one rule.
    assert plan.raw_inputs("occurrences", "records.parquet")[:2] == [
        "results/raw/gbif/occurrences.zip",
        "results/raw/inaturalist/observations.jsonl.gz",
    ]
    # Europe downloads ERA5; the demo samples it.
    assert plan.raw_files(surface, "2000-01") == ["results/raw/era5/surface/2000-01.nc"]
    demo = demo_plan()
    assert demo.raw_files(surface, "2010-01") == ["results/raw/era5/surface/2010-01.nc"]


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
    # Raw files: ERA5 2 surface + 2 atmospheric + static, 6 NDVI dekads, the GBIF export,
    # iNaturalist, Xeno-canto and BOLD, the LPD, the Red List Index (the categories are the
    # species list's) and 6 World Bank indicators, the GBIF effort cube; the occurrence
    # records and the effort combined once, the demo's species list resolved once.
    assert jobs == {"sample": "24", "combine": "2", "species_list": "1", "tile": "19",
                    "batch": "1", "total": "47"}, out.stdout  # fmt: skip


def test_targeted_batch_inside_one_month(workdir):
    out = dry_run(workdir, "results/batches/20100110T00.h5")
    assert out.returncode == 0, out.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, re.M))
    # One month less: 2 ERA5 files, 3 NDVI dekads and 9 tiles fewer.
    assert jobs == {"sample": "19", "combine": "2", "species_list": "1", "tile": "10",
                    "batch": "1", "total": "33"}, out.stdout  # fmt: skip


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


def test_a_configfile_replaces_the_demo_config(workdir):
    """`--configfile` is the study's config alone: no demo key leaks into it."""
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["sources"] = {
        "era5": {"mode": "file", "path": "mine/era5"},
        "gbif": {"mode": "file", "path": "mine/occ.zip"},
    }
    cfg["run"] = "mine"
    (workdir / "study.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [*snakemake_cmd(workdir), "-n", "--configfile", str(workdir / "study.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    written = list((workdir / "results/config").glob("*.yaml"))
    assert len(written) == 1, out.stderr
    resolved = yaml.safe_load(written[0].read_text())
    assert resolved == Plan(cfg).config
    assert resolved["sources"]["era5"] == {
        "mode": "file",
        "path": "mine/era5",
        "seed": 0,
        "options": {},
    }
    assert written[0].stem == Plan(cfg).hash


def _jobs(workdir: Path, target: str) -> dict[str, str]:
    out = dry_run(workdir, target)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, re.M))


@pytest.mark.slow
def test_a_config_change_reruns_what_it_affects_and_nothing_else(workdir):
    target = "results/batches/20100110T00.h5"
    run = subprocess.run(
        [*snakemake_cmd(workdir), "-c2", target], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _jobs(workdir, target) == {}  # nothing to do
    path = workdir / "config/config.yaml"
    demo = yaml.safe_load(path.read_text())

    def edit(change) -> None:
        cfg = yaml.safe_load(yaml.safe_dump(demo))
        change(cfg)
        path.write_text(yaml.safe_dump(cfg))

    edit(lambda c: c["train"].update(lr=0.01))  # training only: no data job reruns
    assert _jobs(workdir, target) == {}
    # One occurrence source: its records and effort cube, the combined records and effort,
    # and the species tile.
    edit(lambda c: c["sources"]["gbif"].update(seed=8))
    assert _jobs(workdir, target) == {"sample": "2", "combine": "2", "tile": "1", "batch": "1",
                                      "total": "6"}  # fmt: skip
    # era5, and gbif and inaturalist (their samples follow its climate seed)
    edit(lambda c: c["sources"]["era5"].update(seed=1))
    assert _jobs(workdir, target) == {"sample": "6", "combine": "2", "tile": "4", "batch": "1",
                                      "total": "13"}  # fmt: skip
    # The user's files in file mode: missing ones stop the run before any job, naming them.
    edit(lambda c: c["sources"].update(era5={"mode": "file", "path": "nowhere/era5"}))
    out = dry_run(workdir, target)
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert (
        "results/tiles/era5_surface/2010-01.nc exists but its input "
        "nowhere/era5/surface/2010-01.nc (file mode) does not"
    ) in log
    assert "no job was run" in log


def test_settings_do_not_depend_on_the_order_of_config_keys():
    """Snakemake compares params by their text: a config rewritten with its keys in another
    order (yaml.safe_dump sorts them) must not rerun anything."""
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    shuffled = yaml.safe_load(yaml.safe_dump(cfg, sort_keys=True))
    cfg["sources"]["lpi"] = {"options": {"base_year": 2000}, "mode": "sample", "seed": 6}
    shuffled["sources"]["lpi"] = {"seed": 6, "mode": "sample", "options": {"base_year": 2000}}
    a, b = Plan(cfg), Plan(shuffled)
    assert repr(a.raw_settings("lpi", "LPD.csv")) == repr(b.raw_settings("lpi", "LPD.csv"))
    assert repr(a.tile_settings("lpi")) == repr(b.tile_settings("lpi"))
    assert repr(a.stats_settings()) == repr(b.stats_settings())


@pytest.mark.parametrize("step", ["1D", "6h"])
def test_no_training_target_or_statistics_slice_is_at_or_after_eval_start(step):
    """The split is on the target's time: a training pair (batch t0, batch t0 + step) has
    its target at t0 + 2 steps; statistics read every time of the training batches."""
    plan = Plan(validate_config(demo_config(time__step=step)))
    eval_start, dt = plan.eval_start, timeaxis.offset(step)

    def targets(split: str) -> list[pd.Timestamp]:
        t0s = {pd.Timestamp(timeaxis.parse_t0(n)) for n in plan.batch_names(split)}
        return sorted(t + 2 * dt for t in t0s if t + dt in t0s)

    train, held_out = targets("train"), targets("eval")
    assert train and max(train) < eval_start
    assert held_out and min(held_out) >= eval_start
    times = [pd.Timestamp(timeaxis.parse_t0(n)) + k * dt for n in plan.batch_names("train")
             for k in (0, 1)]  # fmt: skip
    assert max(times) < eval_start
    assert max(train) == eval_start - dt  # the last target just before the held-out days
    assert min(held_out) == eval_start + dt  # the first held-out pair starts a step before
