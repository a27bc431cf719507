"""Profiles: profiles/snellius (SLURM on SURF Snellius) and profiles/local.

Parsed exactly as `snakemake --profile ...` parses them (snakemake.cli.parse_args); the sbatch
line of the training job comes from the SLURM executor plugin's own submit-string function.
Where and as whom jobs run lives in profiles/, never in workflow/ or config/.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake.cli import parse_args
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

from bfm.profiles import TrainLayout, config_files, train_layout
from tests.conftest import ROOT
from tests.test_envs import workflow_rules

SNELLIUS = str(ROOT / "profiles/snellius")
LOCAL = str(ROOT / "profiles/local")
# Rules that run as a SLURM job of their own; every other rule is bundled (group-components).
SINGLE_JOB_RULES = {
    "combine",
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
    monkeypatch.chdir(ROOT)  # where Snakemake runs; without --configfile: config/config.yaml
    return values


def snellius(*argv: str, monkeypatch: pytest.MonkeyPatch | None = None):
    """The parsed arguments of `snakemake --profile profiles/snellius *argv` (the profile reads
    the training layout from the call's --configfile, i.e. from sys.argv)."""
    argv = ("--profile", SNELLIUS, *argv)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["snakemake", *argv])
        return parse_args(list(argv))[1]


EUROPE = ("--configfile", str(ROOT / "config/europe.yaml"))


def layout_config(tmp_path: Path, nodes: int, gpus_per_node: int) -> tuple[str, str]:
    """--configfile arguments for the demo config with another training layout (a second
    file, merged over the first as Snakemake merges them)."""
    extra = tmp_path / "layout.yaml"
    extra.write_text(f"train:\n  nodes: {nodes}\n  gpus_per_node: {gpus_per_node}\n")
    return ("--configfile", str(ROOT / "config/config.yaml"), str(extra))


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
    args = snellius(*EUROPE)  # train.nodes 1, train.gpus_per_node 4
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


def test_training_sbatch_line_multi_node(site, tmp_path):
    args = snellius(*layout_config(tmp_path, 2, 4))
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
        "--signal=USR1@600",
    ):
        assert flag in line, (flag, line)
    # GPUs per node (gres), not a job total (--gpus), and no task count per GPU.
    assert "--gpus" not in line and "--ntasks-per-gpu" not in line and "--ntasks=" not in line


def test_training_layout_comes_from_the_config(site, tmp_path):
    """train.nodes x train.gpus_per_node (science: the world size) -> the sbatch layout."""
    # The demo config (1 x 1; also the default without --configfile): a quarter node, one
    # rank run by the job itself (the plugin refuses an srun layout of one task).
    for args in (snellius(), snellius("--configfile", str(ROOT / "config/config.yaml"))):
        res, threads = job_resources(args, "train")
        assert (res["nodes"], res["gres"], res["mem_mb"], threads) == (1, "gpu:1", 180000, 16)
        assert res["mpi"] == "" and "tasks_per_node" not in res and "tasks" not in res
        line = sbatch_line(args, "train")
        assert "--ntasks" not in line and "--gres=gpu:1" in line, line
    # 2 nodes of 1 GPU: two tasks, one per GPU (tasks_per_node 1 is refused by the plugin).
    args = snellius(*layout_config(tmp_path, 2, 1))
    res, _ = job_resources(args, "train")
    assert (res["tasks"], res["tasks_per_gpu"], res["gres"]) == (2, 1, "gpu:1")
    assert res["mpi"] == "srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=16"
    line = sbatch_line(args, "train")
    for flag in ("--nodes=2", "--ntasks=2", "--ntasks-per-gpu=1", "--gres=gpu:1", "--mem 180000"):
        assert flag in line, (flag, line)


def test_the_old_train_nodes_variable_is_refused(site, monkeypatch, capsys):
    monkeypatch.setenv("BFM_TRAIN_NODES", "2")
    with pytest.raises(SystemExit):
        snellius()
    assert "set train.nodes in the config" in capsys.readouterr().err


def test_config_files_of_a_call_as_snakemake_reads_them():
    assert config_files(["--profile", "p", "--configfile", "a.yaml", "b.yaml", "-n"]) == [
        Path("a.yaml"),
        Path("b.yaml"),
    ]
    assert config_files(["--configfiles=a.yaml", "--cores", "2"]) == [Path("a.yaml")]
    assert config_files(["-d", "/w", "-n"]) == [Path("/w/config/config.yaml")]
    assert config_files(["--cores", "-1"]) == [Path("config/config.yaml")]


def test_train_layout_merges_files_and_fills_the_schema_default(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("train:\n  nodes: 3\n  steps: 10\n")
    second.write_text("train:\n  steps: 20\n")  # later file, other key: nodes stays
    assert train_layout(["--configfile", str(first), str(second)]) == TrainLayout(3, 1)
    assert TrainLayout(3, 4).ranks == 12
    with pytest.raises(ValueError, match="train.gpus_per_node: expected an integer >= 1"):
        TrainLayout(1, 0)
    with pytest.raises(ValueError, match="missing.yaml: config file not found"):
        train_layout(["--configfile", str(tmp_path / "missing.yaml")])


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
    assert args.group_components["batches"] == args.group_components["samples"] == 16
    assert args.group_components["prep"] == 8  # a tile asks for two cores' memory


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
