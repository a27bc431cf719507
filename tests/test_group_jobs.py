"""Every SLURM group job of the full study fits a billed slice of its partition.

The study (config/europe.yaml, 2000-2020, Europe at 0.25 deg) is planned through
profiles/snellius as `snakemake -n --profile profiles/snellius` plans it, at 1D and at 6h;
each group job's resources are computed as Snakemake computes them for a submitted group
(``GroupResources.basic_layered`` with ``run_local=False``: the executor plugin's
``--cpus-per-task`` and ``--mem``) and checked against the slice of its partition: 16 cores
and 28 GiB on rome, 24 cores and 42 GiB on genoa (1/8 node, 1.75 GiB per core).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from snakemake.resources import GroupResources

from tests.conftest import ROOT

SLICES = {"rome": (16, 16 * 1792), "genoa": (24, 24 * 1792)}


def study(tmp_path: Path, step: str) -> Path:
    """config/europe.yaml at ``step``; the user's LPD file (file mode) is sampled instead,
    which leaves the DAG's shape as it is."""
    cfg = yaml.safe_load((ROOT / "config/europe.yaml").read_text())
    cfg["sources"]["lpi"] = {"mode": "sample"}
    cfg["time"]["step"] = step
    path = tmp_path / f"europe-{step}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def group_jobs(workdir: Path, config: Path, monkeypatch) -> list[dict]:
    """Per group job of the dry run: its group, rules and submitted resources."""
    from snakemake.cli import args_to_api, parse_args
    from snakemake.executors import dryrun

    found: list[dict] = []

    def record(self, job) -> None:
        if job.is_group():
            res = GroupResources.basic_layered(
                toposorted_jobs=job.toposorted,
                constraints=job.global_resources,
                run_local=False,
                additive_resources=["runtime"],
                sortby=["runtime"],
            )
            found.append({"group": job.groupid, "rules": Counter(j.rule.name for j in job.jobs),
                          "cores": res["_cores"], "mem_mb": res["mem_mb"],
                          "runtime": res["runtime"]})  # fmt: skip

    monkeypatch.setattr(dryrun.Executor, "printjob", record)
    argv = ["--profile", str(ROOT / "profiles/snellius"), "-n", "--quiet", "all",
            "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(workdir),
            "--configfile", str(config)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["snakemake", *argv])
    parser, args = parse_args(argv)
    args.software_deployment_method = set()  # the jobs' envs are not built for a dry run
    assert args_to_api(args, parser) is not False
    return found


@pytest.mark.slow
@pytest.mark.parametrize("partition", ["rome", "genoa"])
def test_every_group_job_of_the_study_fits_its_partitions_slice(partition, tmp_path, monkeypatch):
    monkeypatch.setenv("BFM_SLURM_ACCOUNT", "prj0042")
    monkeypatch.setenv("BFM_CONDA_PREFIX", str(tmp_path / "conda"))
    monkeypatch.setenv("BFM_CPU_PARTITION", partition)
    cores, mem_mb = SLICES[partition]
    for name in ("resources", "config"):
        (tmp_path / name).symlink_to(ROOT / name)
    steps = ("1D", "6h") if partition == "rome" else ("6h",)
    for step in steps:
        jobs = group_jobs(tmp_path, study(tmp_path, step), monkeypatch)
        groups = Counter(j["group"] for j in jobs)
        assert groups["batches"] > 0 and groups["prep"] > 0, groups
        too_big = [j for j in jobs if j["cores"] > cores or j["mem_mb"] > mem_mb]
        assert not too_big, (step, len(too_big), too_big[:3])
        # The slices are used: a month per core, not one month per group job.
        widest = max(j["cores"] for j in jobs if j["group"] == "batches")
        assert widest == cores, (step, widest)
