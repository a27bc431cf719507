"""`bfm bench rules`: every compute rule writes Snakemake's benchmark of each job, and the
summariser reads such files as Snakemake writes them, sets them beside the Snellius profile's
request and flags the rules with too little headroom. (The figures themselves come from
running the study: profiles/snellius/profile.yaml names the command.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

from bfm.bench_rules import (
    MIN_MEM_HEADROOM,
    MIN_RUNTIME_HEADROOM,
    collect,
    profile_resources,
    study_config,
    summarise,
)
from bfm.cli import main
from tests.conftest import ROOT


def write_benchmark(path: Path, seconds: float, rss_mib: float | None, cpu: float) -> Path:
    """A benchmark file as Snakemake writes it (its own record and writer); rss None: the
    job ended before it was sampled (NA in every sampled column)."""
    record = BenchmarkRecord(running_time=seconds, max_rss=rss_mib, max_vms=2 * (rss_mib or 0),
                             max_uss=rss_mib, max_pss=rss_mib, io_in=1.0, io_out=2.0,
                             cpu_time=cpu, cpu_usage=cpu)  # fmt: skip
    record.data_collected = rss_mib is not None
    record.process_gone = rss_mib is None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark_records([record], str(path), False)
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """results/benchmarks and logs/ of a synthetic run, named as the workflow names them."""
    bench = tmp_path / "results/benchmarks"
    write_benchmark(bench / "tile/era5_surface/2000-01.tsv", 60.0, 1000.0, 55.0)
    write_benchmark(bench / "tile/era5_surface/2000-02.tsv", 20.0, 3000.0, 18.0)
    write_benchmark(bench / "tile/lpi/2000-01.tsv", 40.0, 500.0, 30.0)
    write_benchmark(bench / "stats.tsv", 0.4, None, 0.3)  # too quick to sample: NA
    write_benchmark(bench / "batches/2000-01.tsv", 3000.0, 200.0, 2900.0)
    # bfm's last log line: its exact peak, above what Snakemake's sampling saw.
    log = tmp_path / "logs/batches/2000-01.log"
    log.parent.mkdir(parents=True)
    log.write_text("... INFO bfm: bfm batches: 2999.0 s, 2890.0 CPU s, peak memory 1.50 GiB\n")
    write_benchmark(bench / "sample/era5/atmospheric/2000-01.nc.tsv", 250.0, 2600.0, 67.0)
    sample_log = tmp_path / "logs/sample/era5/atmospheric/2000-01.nc.log"  # a dotted name
    sample_log.parent.mkdir(parents=True)
    sample_log.write_text("... INFO bfm: bfm sample: 245.3 s, 73.2 CPU s, peak memory 3.09 GiB\n")
    stats_log = tmp_path / "logs/stats.log"
    stats_log.write_text("... INFO bfm: bfm stats: 0.3 s, 0.2 CPU s, peak memory 0.25 GiB\n")
    return tmp_path


def test_snakemakes_benchmark_file_is_read_na_included(run_dir):
    header = (run_dir / "results/benchmarks/stats.tsv").read_text().splitlines()
    assert header[0].split("\t")[:3] == ["s", "h:m:s", "max_rss"]
    assert header[1].split("\t")[2] == "NA"
    jobs = {(j.rule, j.name): j for j in collect(run_dir / "results/benchmarks")}
    tiles = {("tile", "era5_surface/2000-01"), ("tile", "era5_surface/2000-02"),
             ("tile", "lpi/2000-01")}  # fmt: skip
    others = {("stats", "stats"), ("batches", "2000-01"), ("sample", "era5/atmospheric/2000-01.nc")}
    assert set(jobs) == tiles | others
    assert jobs["tile", "era5_surface/2000-02"].rss_mib == 3000.0
    assert jobs["tile", "lpi/2000-01"].cpu_s == 30.0
    assert jobs["stats", "stats"].rss_mib is None  # not sampled, and no log given


def test_the_logged_peak_wins_over_a_missed_sample(run_dir):
    jobs = {j.rule: j for j in collect(run_dir / "results/benchmarks", run_dir / "logs")}
    assert jobs["batches"].rss_mib == 1.5 * 1024  # the log's 1.50 GiB over the sampled 200
    assert jobs["stats"].rss_mib == 0.25 * 1024  # NA in the TSV: the log's
    assert jobs["stats"].cpu_s == 0.2  # and its CPU time (NA too in the TSV)
    assert jobs["sample"].rss_mib == pytest.approx(3.09 * 1024)
    assert jobs["batches"].cpu_s == 2900.0  # the larger: the TSV's (the whole process tree)
    assert jobs["sample"].cpu_s == 73.2  # the larger: the log's (the TSV stopped sampling)


def test_summary_per_rule_and_the_flags(run_dir):
    jobs = collect(run_dir / "results/benchmarks", run_dir / "logs")
    # tile: 3584 MB for a 3000 MiB peak (x1.19: flagged), 30 min for 60 s (x30).
    # batches: 60 min for 3000 s (x1.2: flagged), 1792 MB for 1536 MiB (x1.17: flagged).
    # stats: 1792 MB / 256 MiB, 60 min / 0.4 s: fine.
    profile = {"tile": (3584.0, 30.0), "batches": (1792.0, 60.0), "stats": (1792.0, 60.0)}
    costs = {c.rule: c for c in summarise(jobs, profile)}
    tile = costs["tile"]
    assert (tile.jobs, tile.wall_max, tile.wall_median) == (3, 60.0, 40.0)
    assert (tile.rss_max_mib, tile.cpu_max, tile.cpu_total) == (3000.0, 55.0, 103.0)
    assert tile.mem_headroom == pytest.approx(3584 / 3000)
    assert tile.runtime_headroom == pytest.approx(30)
    assert tile.flags == [f"memory headroom 1.19 < {MIN_MEM_HEADROOM}"]
    assert costs["batches"].flags == [
        f"memory headroom 1.17 < {MIN_MEM_HEADROOM}",
        f"runtime headroom 1.20 < {MIN_RUNTIME_HEADROOM}",
    ]
    assert costs["stats"].flags == []
    # Enough headroom on both: no flag; a rule the profile does not know: nothing to compare.
    roomy = {c.rule: c for c in summarise(jobs, {"tile": (4500.0, 2.0)})}
    assert roomy["tile"].flags == [] and roomy["batches"].mem_headroom is None


def test_the_profile_is_read_as_snakemake_reads_it_for_the_configs_layout():
    europe = profile_resources(ROOT / "profiles/snellius", [str(ROOT / "config/europe.yaml")],
                               ["tile", "stats", "train"])  # fmt: skip
    demo = profile_resources(ROOT / "profiles/snellius", [str(ROOT / "config/config.yaml")],
                             ["train"])  # fmt: skip
    default_mem = europe["stats"][0]  # the default: one core's memory
    assert europe["tile"][0] == 2 * default_mem  # a tile: two cores' memory
    assert europe["train"][0] == 4 * demo["train"][0]  # 1 x 4 H100 ranks against 1 x 1
    assert europe["train"][1] > europe["tile"][1] > 0  # minutes


def test_cli_summary_prints_the_table_and_names_the_flagged_rules(run_dir, capsys):
    out = run_dir / "summary.json"
    argv = ["bench", "rules", "--from", str(run_dir / "results/benchmarks"), "--profile",
            str(ROOT / "profiles/snellius"), "--profile-configfile",
            str(ROOT / "config/europe.yaml"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = {line.split()[0]: line for line in printed.splitlines() if line[:1].isalpha()}
    assert {"tile", "batches", "stats"} <= set(table)
    assert "runtime headroom 1.20 < 2.0" in table["batches"]  # 3000 s in the profile's batches hour
    costs = {c["rule"]: c for c in json.loads(out.read_text())["costs"]}
    assert costs["batches"]["rss_max_mib"] == 1536.0 and costs["tile"]["jobs"] == 3
    assert costs["batches"]["runtime_headroom"] == pytest.approx(1.2)
    assert costs["stats"]["flags"] == []
    assert "flagged: batches" in printed


def test_cli_names_a_missing_folder(tmp_path, caplog):
    assert main(["bench", "rules", "--from", str(tmp_path / "nothing")]) == 1
    assert "is not a folder of benchmark files" in caplog.text


def test_a_file_that_is_not_a_benchmark_is_named(tmp_path):
    bad = tmp_path / "tile/x.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match=r"tile/x.tsv: not a Snakemake benchmark file"):
        collect(tmp_path)


def test_the_study_config_is_the_europe_study_sampled_over_two_months():
    from bfm.workflow import Plan

    cfg = study_config(ROOT / "config/europe.yaml", "1D", "2000-01-01", 2, "tiny", 2)
    assert {s["mode"] for s in cfg["sources"].values()} <= {"sample", "combine"}
    assert cfg["time"] == {"start": "2000-01-01", "end": "2000-02-29", "step": "1D",
                           "eval_start": "2000-02-01"}  # fmt: skip
    assert cfg["grid"]["res"] == 0.25 and cfg["evaluation"]["ablations"] == []
    plan = Plan(cfg)
    assert plan.batch_months() == ["2000-01", "2000-02"]
    assert plan.train_periods() == ["2000-01"]


# Lists every rule's name, log, benchmark and whether it runs on a compute node.
_RULES_SCRIPT = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                      snakefile=Path("workflow/Snakefile"), workdir=Path("."))._workflow
    rules = [{"name": r.name, "log": [str(x) for x in r.log], "benchmark": r.benchmark and
              str(r.benchmark), "node": not r.norun and r.name not in wf._localrules}
             for r in wf.rules]
print("RULES=" + json.dumps(rules))
"""


def test_every_compute_rule_benchmarks_each_job_beside_its_log():
    out = subprocess.run([sys.executable, "-c", _RULES_SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RULES="))
    rules = [r for r in json.loads(line.removeprefix("RULES=")) if r["node"]]
    assert {"tile", "batches", "train", "combine", "finetune", "report_loss"} <= {
        r["name"] for r in rules
    }
    for r in rules:
        (log,) = r["log"]
        expected = "results/benchmarks/" + log.removeprefix("logs/").removesuffix(".log") + ".tsv"
        assert r["benchmark"] == expected, r["name"]


def test_costs_per_unit_and_the_study_they_project_to(tmp_path):
    import yaml

    from bfm.bench_rules import RuleCost, format_units, units
    from bfm.workflow import Plan

    run = study_config(ROOT / "config/europe.yaml", "1D", "2000-01-01", 2, "tiny", 2)
    full = yaml.safe_load((ROOT / "config/europe.yaml").read_text())
    found = units(tmp_path, run, full)  # no records.parquet: combine has no unit
    plan, study = Plan(run), Plan(full)
    assert found["batches"].per_job * 2 == len(plan.batch_names())  # a month a job
    assert found["batches"].study == len(study.batch_names()) > 7000  # 2000-2020 at 1D
    assert (found["train"].per_job, found["train"].study) == (2, full["train"]["steps"])
    assert "combine" not in found and "climatology" not in found
    cost = RuleCost("train", 1, 60.0, 60.0, 2000.0, 30.0, 30.0, None, None)
    line = format_units([cost], found).splitlines()[1]
    hours = 30.0 / 2 * full["train"]["steps"] / 3600
    assert line.startswith("  train: 2 x step a job, 30.00 s wall, 15.00 CPU s per step")
    assert line.endswith(f"= {hours:,.1f} CPU h")
