"""Profiles: profiles/snellius (SLURM on SURF Snellius) and profiles/local.

Parsed exactly as `snakemake --profile ...` parses them (snakemake.cli.parse_args); the sbatch
line of the training job comes from the SLURM executor plugin's own submit-string function.
Where and as whom jobs run lives in profiles/, never in workflow/ or config/.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake.cli import parse_args
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

from tests.conftest import ROOT
from tests.test_envs import workflow_rules

SNELLIUS = str(ROOT / "profiles/snellius")
LOCAL = str(ROOT / "profiles/local")
# Rules that run as a SLURM job of their own; every other rule is bundled (group-components).
SINGLE_JOB_RULES = {
    "train",
    "evaluate",
    "stats",
    "climatology",
    "finetune",
    "species_glm",
    "predict",
}
# Run by the Snakemake process itself (compute nodes: no internet).
LOCAL_RULES = {"download", "species_list", "ablations"}


@pytest.fixture
def site(monkeypatch, tmp_path):
    """The site values the Snellius profile reads from the environment."""
    values = {"BFM_SLURM_ACCOUNT": "prj0042", "BFM_CONDA_PREFIX": str(tmp_path / "conda")}
    for name in ("BFM_CPU_PARTITION", "BFM_TRAIN_NODES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def snellius(*argv: str):
    return parse_args(["--profile", SNELLIUS, *argv])[1]


def evaluate(resources, rule: str, threads: int) -> dict:
    """Resource values for one job of ``rule`` (first attempt), as Snakemake computes them."""
    return {
        name: res.evaluate(
            wildcards={}, input=[], attempt=1, threads=threads, rulename=rule, async_run=None
        ).value
        for name, res in resources.items()
    }


def job_resources(args, rule: str) -> tuple[dict, int]:
    threads = args.set_threads[rule].value if rule in args.set_threads else 1
    res = evaluate(args.default_resources, rule, threads)
    res.update(evaluate(args.set_resources.get(rule, {}), rule, threads))
    return res, threads


def sbatch_line(args, rule: str) -> str:
    """The plugin's sbatch command for one job of ``rule`` (account and partition as the
    executor passes them, from the slurm_account / slurm_partition resources)."""

    class Resources(dict):
        __getattr__ = dict.__getitem__

    res, threads = job_resources(args, rule)
    job = SimpleNamespace(resources=Resources(res), threads=threads, name=rule)
    params = {
        "run_uuid": "uuid",
        "slurm_logfile": "%j.log",
        "comment_str": f"rule_{rule}",
        "account": f" -A {res['slurm_account']}",
        "partition": f" -p {res['slurm_partition']}",
        "workdir": "/work",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def test_snellius_runs_through_slurm_with_conda_outside_home(site):
    args = snellius()
    assert args.executor == "slurm"
    assert {m.name for m in args.software_deployment_method} == {"CONDA"}
    prefix = Path(args.conda_prefix)
    assert prefix.parent == Path(site["BFM_CONDA_PREFIX"])
    assert not prefix.is_relative_to(Path.home())
    # One prefix per checkout: the envs install the checkout's bfm in editable mode.
    assert prefix.name.startswith(ROOT.name + "-") or prefix.name.startswith(Path.cwd().name)
    assert args.retries >= 1 and args.latency_wait >= 30
    res, _ = job_resources(args, "batch")
    assert res["slurm_account"] == "prj0042"
    assert res["slurm_partition"] == "rome"
    assert res["runtime"] > 0 and res["mem_mb"] == 1792


def test_snellius_needs_the_account_and_names_it(site, monkeypatch, capsys):
    monkeypatch.delenv("BFM_SLURM_ACCOUNT")
    with pytest.raises(SystemExit):  # configargparse prints the YTE error and exits
        snellius()
    assert "BFM_SLURM_ACCOUNT" in capsys.readouterr().err


def test_genoa_is_an_option_with_its_own_slice(site, monkeypatch, capsys):
    monkeypatch.setenv("BFM_CPU_PARTITION", "genoa")
    args = snellius()
    assert job_resources(args, "tile")[0]["slurm_partition"] == "genoa"
    assert job_resources(args, "train")[0]["slurm_partition"] == "gpu_h100"
    assert set(args.group_components.values()) >= {24}
    monkeypatch.setenv("BFM_CPU_PARTITION", "thin")
    with pytest.raises(SystemExit):
        snellius()
    assert "use rome or genoa" in capsys.readouterr().err


def test_training_runs_on_gpu_h100_one_rank_per_gpu(site):
    args = snellius()
    res, threads = job_resources(args, "train")
    assert res["slurm_partition"] == "gpu_h100"
    assert res["gres"] == "gpu:4" and res["tasks_per_node"] == 4  # 4 H100 per node
    assert threads == 16  # CPUs per GPU (= per rank): 64 cores / 4 GPUs
    assert res["mem_mb"] <= 720 * 1024 and res["runtime"] >= 12 * 60
    assert res["nodes"] == 1
    # srun is given the job's layout (the executor's job step hides it from the job's shell).
    assert res["mpi"] == (
        f"srun --nodes={res['nodes']} --ntasks-per-node="
        f"{res['tasks_per_node']} --cpus-per-task={threads}"
    )
    assert job_resources(args, "evaluate")[0]["slurm_partition"] == "rome"


def test_training_sbatch_line_multi_node(site, monkeypatch):
    monkeypatch.setenv("BFM_TRAIN_NODES", "2")
    args = snellius()
    assert job_resources(args, "train")[0]["mpi"].startswith("srun --nodes=2 ")
    line = sbatch_line(args, "train")
    for flag in (
        "-A prj0042",
        "-p gpu_h100",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--cpus-per-task=16",
        "--gres=gpu:4",
        "--mem 720000",
        "-t 1440",
    ):
        assert flag in line, (flag, line)
    # GPUs per node (gres), not a job total (--gpus), and no task count per GPU.
    assert "--gpus" not in line and "--ntasks-per-gpu" not in line and "--ntasks=" not in line


def test_cpu_job_sbatch_line(site):
    line = sbatch_line(snellius(), "stats")
    for flag in (
        "-A prj0042",
        "-p rome",
        "--ntasks=1",
        "--cpus-per-task=1",
        "--mem 1792",
        "-t 60",
    ):
        assert flag in line, (flag, line)
    assert "--gres" not in line and "--nodes" not in line


def test_small_cpu_jobs_are_bundled(site):
    args = snellius()
    rules = {r["name"] for r in workflow_rules()}
    assert SINGLE_JOB_RULES <= rules
    grouped = set(args.groups)
    assert grouped == rules - SINGLE_JOB_RULES - LOCAL_RULES, "every small rule is in a group"
    for rule, group in args.groups.items():
        assert args.group_components[group] > 1, (rule, group)
    assert args.group_components["prep"] == args.group_components["batches"] == 16


def test_local_profile_runs_here(site):
    args = parse_args(["--profile", LOCAL])[1]
    assert args.executor in (None, "local")
    assert not args.software_deployment_method
    assert not args.default_resources or "slurm_account" not in args.default_resources
    text = Path(LOCAL, "profile.yaml").read_text()
    assert "slurm" not in re.sub(r"#.*", "", text)


def test_no_account_or_partition_in_workflow_or_config():
    """Science lives in config/ and workflow/; where and as whom jobs run lives in profiles/."""
    partitions = r"\b(rome|genoa|gpu_h100|gpu_a100|fat_rome|fat_genoa|himem_\dtb|staging)\b"
    pattern = re.compile(
        rf"slurm_account|slurm_partition|--account\b|--partition\b|\B-[Ap]\s+\w|{partitions}"
        r"|^\s*(account|partition)\s*[:=]",
        re.MULTILINE,
    )
    files = [p for d in ("workflow", "config") for p in ROOT.joinpath(d).rglob("*") if p.is_file()]
    assert len(files) >= 5
    hits = [
        f"{p.relative_to(ROOT)}: {m.group(0)!r}"
        for p in files
        for m in pattern.finditer(p.read_text(errors="replace"))
    ]
    assert not hits, hits
