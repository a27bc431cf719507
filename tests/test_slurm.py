"""The demo DAG through `snakemake --profile profiles/snellius` on a real (single-node) SLURM.

tests/slurm/up.sh starts the stand-in cluster (munge, MariaDB + slurmdbd, slurmctld, slurmd;
partitions rome, genoa and gpu_h100 with one stand-in GPU) when it is not running. The profile
is used as it is, except for what differs between Snellius and the stand-in node:

- account: BFM_SLURM_ACCOUNT=x (the profile's site value; up.sh creates the account);
- node size: the stand-in node has a rome node's shape (128 CPUs, 229376 MB, 120 h: sbatch
  refuses more, tests/test_slurm_limits.py) on a 2-core machine, so the jobs are kept to its
  real size: --cores 2 (threads 1-2, group jobs at most 2 wide), --jobs 2 (at most 2 SLURM jobs
  at once), small memory caps, 1 stand-in GPU; training runs 2 ranks on one node instead of 4
  per node (tasks_per_node, gres and the srun layout);
- status checks start after 1 s instead of 40 s, and successful jobs keep their SLURM logs;
- no conda here: --sdm env-modules (which no rule uses) replaces the profile's conda, so the
  jobs run in this venv; tests/test_envs.py checks the conda envs statically.

The reference is a local run of the same DAG whose training also runs 2 ranks (mpirun, ranks
found from Open MPI's environment), so every output must match: raw files, tiles, batches and
statistics exactly (arrays and provenance), the training run step for step and the scores,
to the bit (only wall-clock fields differ). Training also proves that both ranks took part
(SLURM step with 2 tasks, ZeRO optimizer shards of rank 0 and 1, world_size 2) and that only
rank 0 wrote metrics.jsonl and meta.json.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import yaml
from snakemake.profiles import ProfileConfigFileParser

from bfm.workflow import Plan
from tests.conftest import ROOT, demo_workdir, snakemake_cmd

pytestmark = pytest.mark.slurm

ACCOUNT = "x"
PARTITIONS = {"rome", "genoa", "gpu_h100"}
SLURMCTLD_PORT = 6817
SNAKEMAKE_TIMEOUT = 900  # s, per snakemake call (the SLURM run takes ~6 min on 2 cores)
RANKS = 2
# The stand-in node, where it differs from a gpu_h100 / rome node (see the module docstring).
STAND_IN_THREADS = {"train": 1, "evaluate": 2, "finetune": 2}
STAND_IN_RESOURCES = {
    "train": {
        "tasks_per_node": RANKS,
        "gres": "gpu:1",
        "mem_mb": 4000,
        "mpi": f"'srun --nodes=1 --ntasks-per-node={RANKS} --cpus-per-task=1'",
    },
    "evaluate": {"mem_mb": 4000},
    "climatology": {"mem_mb": 4000},
    "finetune": {"mem_mb": 4000},
    "predict": {"mem_mb": 4000},
    "species_glm": {"mem_mb": 4000},
}
PROVENANCE_KEYS = ("bfm_version", "git_commit", "config_hash")
DEMO = yaml.safe_load((ROOT / "config/config.yaml").read_text())
# Fewer steps than the demo: the test is about the path through SLURM (jobs, ranks,
# checkpoints, identical scores), and two 2-rank runs of the demo's 400 steps are too slow here.
STEPS = 120
# Nor the demo's ablations (more trainings of the same path) or MaxEnt and the BFM head in the
# SDM (the GLM alone takes the finetune job through SLURM).
CONFIG = {
    **DEMO,
    # RANKS ranks on one node: bfm train refuses a world size other than nodes x gpus_per_node.
    "train": {
        **DEMO["train"],
        "steps": STEPS,
        "checkpoint_every": STEPS // 2,
        "gpus_per_node": RANKS,
    },  # fmt: skip
    "evaluation": {**DEMO["evaluation"], "ablations": []},
    "sdm": {**DEMO["sdm"], "folds": 2, "methods": ["glm"]},
}


def _run(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _sinfo() -> str | None:
    try:
        out = _run(["sinfo", "-h", "-o", "%R %T"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _controller_listens() -> bool:
    """A slurmctld answers on its port (instant; sinfo retries for ~10 s when none runs)."""
    try:
        socket.create_connection(("127.0.0.1", SLURMCTLD_PORT), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster():
    """The stand-in cluster: started by tests/slurm/up.sh unless it runs, and then stopped
    again (tests/slurm/down.sh) at the end of the session."""
    started = time.monotonic()
    was_up = _controller_listens()
    if was_up:
        config = _run(["scontrol", "show", "config"], timeout=30).stdout
        assert re.search(r"ClusterName\s*=\s*bfmci\b", config), (
            "a slurmctld runs for a cluster that tests/slurm/up.sh did not start; this test "
            "runs jobs as account 'x' and only on the local stand-in cluster"
        )
    # Idempotent: also makes sure of the configuration and the account.
    up = _run(
        ["bash", str(ROOT / "tests/slurm/up.sh")],
        timeout=600,
        env={**os.environ, "BFM_SLURM_ACCOUNT": ACCOUNT},
    )
    assert up.returncode == 0, up.stdout + up.stderr
    sinfo = _sinfo()
    assert sinfo is not None
    assert {line.split()[0] for line in sinfo.splitlines()} >= PARTITIONS, sinfo
    cpus = _run(["sinfo", "-h", "-n", "localhost", "-o", "%c"], timeout=30).stdout.split()
    assert int(cpus[0]) >= 2, f"the stand-in node needs 2 CPUs for 2 ranks: {cpus}"
    yield {"up_seconds": time.monotonic() - started, "was_up": was_up}
    if not was_up:
        _run(["bash", str(ROOT / "tests/slurm/down.sh")], timeout=300)


def _workdir(tmp_path_factory, name: str) -> Path:
    workdir = demo_workdir(tmp_path_factory.mktemp(name))
    (workdir / "slurm-test.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return workdir


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `bfm` in jobs
    return env


def _snakemake(workdir: Path, args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """One snakemake call under a hard timeout; its log and its wall time."""
    cmd = ["timeout", "-s", "KILL", str(SNAKEMAKE_TIMEOUT), *snakemake_cmd(workdir),
           "--configfile", "slurm-test.yaml", *args]  # fmt: skip
    started = time.monotonic()
    out = _run(cmd, timeout=SNAKEMAKE_TIMEOUT + 60, env=env, cwd=workdir)
    seconds = time.monotonic() - started
    log = out.stdout + out.stderr
    (workdir / "snakemake-call.log").write_text(" ".join(cmd) + "\n" + log)
    if out.returncode in (137, -9):  # killed by the timeout
        subprocess.run(["scancel", "--user", getpass.getuser()], timeout=30)  # killed: clean up
    assert out.returncode == 0, f"rc {out.returncode} after {seconds:.0f} s:\n{log[-6000:]}"
    return log, seconds


def snellius_site_args(profile: Path, env: dict[str, str], configfile: Path) -> list[str]:
    """CLI arguments that keep every profile value but the stand-in node's."""
    with pytest.MonkeyPatch.context() as mp, open(profile / "profile.yaml") as f:
        for name, value in env.items():  # the profile reads its site values from the env
            if name.startswith("BFM_"):
                mp.setenv(name, value)
        # ...and the training layout from the call's config (bfm.profiles.train_layout)
        mp.setattr(sys, "argv", ["snakemake", "--configfile", str(configfile)])
        items = ProfileConfigFileParser().parse(f)  # as `snakemake --profile` reads it
    set_resources = []
    for entry in items["set-resources"]:  # "rule:resource=value"
        rule, resource = entry.split("=", 1)[0].split(":")
        if resource not in STAND_IN_RESOURCES.get(rule, {}):
            set_resources.append(entry)
    set_resources += [
        f"{rule}:{name}={value}"
        for rule, res in STAND_IN_RESOURCES.items()
        for name, value in res.items()
    ]
    set_threads = [f"{rule}={n}" for rule, n in STAND_IN_THREADS.items()]
    return [
        "--cores",
        "2",
        "--jobs",
        "2",
        "--sdm",
        "env-modules",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--slurm-keep-successful-logs",
        "--verbose",
        "--set-threads",
        *set_threads,
        "--set-resources",
        *set_resources,
    ]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict:
    """The reference: the demo DAG here, training with 2 ranks under mpirun."""
    workdir = _workdir(tmp_path_factory, "local")
    args = [
        "--profile",
        str(ROOT / "profiles/local"),
        "--cores",
        "2",
        "--set-threads",
        "train=1",
        "--set-resources",
        f"train:mpi='mpirun -np {RANKS} --oversubscribe'",
    ]
    env = _env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    log, seconds = _snakemake(workdir, args, env)
    return {"dir": workdir, "log": log, "seconds": seconds}


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, local_run) -> dict:
    workdir = _workdir(tmp_path_factory, "slurm")
    profile = ROOT / "profiles/snellius"
    env = _env(BFM_SLURM_ACCOUNT=ACCOUNT, BFM_CONDA_PREFIX=str(workdir / ".conda"))
    log, seconds = _snakemake(
        workdir,
        ["--profile", str(profile), *snellius_site_args(profile, env, workdir / "slurm-test.yaml")],
        env,
    )
    logs = sorted((workdir / ".snakemake/slurm_logs").rglob("*.log"))
    jobs = {int(p.stem): p.relative_to(workdir / ".snakemake/slurm_logs").parts[0] for p in logs}
    print(
        f"\ncluster up: {slurm_cluster['up_seconds']:.1f} s, local run: "
        f"{local_run['seconds']:.0f} s, SLURM run: {seconds:.0f} s, {len(jobs)} SLURM jobs"
    )
    return {"dir": workdir, "log": log, "seconds": seconds, "jobs": jobs}


def sacct(job_ids) -> dict[str, dict[str, str]]:
    fields = ["JobID", "JobName", "Partition", "Account", "State", "NTasks", "AllocTRES"]
    out = _run(
        ["sacct", "-P", "-n", "-j", ",".join(map(str, job_ids)), "--format", ",".join(fields)],
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return {
        row["JobID"]: row
        for row in (
            dict(zip(fields, line.split("|"), strict=True)) for line in out.stdout.splitlines()
        )
    }


# --- the run went through SLURM --------------------------------------------------------------


def test_jobs_went_through_sbatch_on_the_right_partitions(slurm_run):
    jobs = slurm_run["jobs"]
    kinds = set(jobs.values())
    # Bundled small jobs (group-components) and the single jobs, each with its SLURM log.
    assert {"rule_train", "rule_evaluate", "rule_stats", "rule_climatology"} <= kinds, kinds
    assert {k.split("_")[1] for k in kinds if k.startswith("group_")} == {
        "samples",
        "prep",
        "batches",
        "report",
    }, kinds
    rows = sacct(jobs)
    assert len(rows) >= len(jobs)
    names = {rows[str(j)]["JobName"] for j in jobs}
    assert len(names) == 1, names  # one Snakemake run: the plugin names every job by its UUID
    for job_id, kind in jobs.items():
        row = rows[str(job_id)]
        assert row["State"] == "COMPLETED", (kind, row)
        assert row["Account"] == ACCOUNT, (kind, row)
        want = "gpu_h100" if kind == "rule_train" else "rome"
        assert row["Partition"] == want, (kind, row)
    train = next(j for j, k in jobs.items() if k == "rule_train")
    assert "gres/gpu=1" in rows[str(train)]["AllocTRES"], rows[str(train)]
    # Every job has its SLURM log, and far fewer jobs than rules ran (bundling works).
    n_rules = len(re.findall(r"^Finished jobid: \d+ \(Rule: \w+\)", slurm_run["log"], re.M))
    # About 20 here for about 65 rules (a month's batches are one job): 2 of samples (16 a
    # job), 3 of tiles (8 a job), one of batches and partial statistics, combine (records and
    # effort), stats, climatology, train, evaluate, species_glm, finetune, predict and the
    # report items in groups of 2.
    assert n_rules >= 55 and len(jobs) <= 22, (n_rules, len(jobs))


def test_sbatch_lines_follow_the_profile(slurm_run):
    calls = re.findall(r"sbatch call: (sbatch .*?) --wrap=", slurm_run["log"])
    assert len(calls) == len(slurm_run["jobs"]), calls
    train = next(c for c in calls if "--comment rule_train" in c)
    for flag in (
        "-A x",
        "-p gpu_h100",
        "--nodes=1",
        f"--ntasks-per-node={RANKS}",
        "--cpus-per-task=1",
        "--gres=gpu:1",
        "--mem 4000",
        "-t 1440",
        "--signal=USR1@600",
    ):
        assert flag in train, (flag, train)
    for call in calls:
        if "--comment rule_train" not in call:
            assert "-p rome" in call and "-A x" in call and "-t " in call, call


def test_training_used_both_ranks_and_only_rank_0_wrote(slurm_run):
    run_dir = slurm_run["dir"] / "results/models/demo"
    train = next(j for j, k in slurm_run["jobs"].items() if k == "rule_train")
    steps = [row for job_id, row in sacct([train]).items() if job_id.startswith(f"{train}.")]
    srun_steps = [row for row in steps if row["JobID"].split(".")[1].isdigit()]
    # the job's own snakemake runs the rule's shell; its srun starts one step of 2 tasks
    assert [row["NTasks"] for row in srun_steps] == [str(RANKS)], steps
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["world_size"] == RANKS and meta["steps_done"] == meta["steps_target"] == STEPS
    ckpt = run_dir / "checkpoints" / meta["checkpoint"]
    shards = sorted(p.name for p in ckpt.glob("zero_pp_rank_*_optim_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(RANKS)]
    assert len(list(ckpt.glob("*model_states.pt"))) == 1
    # rank 0 alone appends metrics: one line per step, no step twice
    steps_logged = [
        json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps_logged == list(range(1, STEPS + 1))


# --- the outputs match the local run ---------------------------------------------------------


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.glob(pattern))


def test_raw_files_and_tiles_are_equal(local_run, slurm_run):
    a, b = local_run["dir"], slurm_run["dir"]
    for pattern in ("results/raw/**/*.nc", "results/tiles/**/*.nc"):
        files = _files(a, pattern)
        assert files and files == _files(b, pattern), pattern
        for rel in files:
            with xr.open_dataset(a / rel) as x, xr.open_dataset(b / rel) as y:
                xr.testing.assert_identical(x, y)  # values, coordinates and attributes
    zips = _files(a, "results/raw/gbif/*.zip")
    assert zips == _files(b, "results/raw/gbif/*.zip") and zips
    for rel in zips:
        with zipfile.ZipFile(a / rel) as x, zipfile.ZipFile(b / rel) as y:
            assert x.namelist() == y.namelist()
            assert all(x.read(n) == y.read(n) for n in x.namelist())


# HDF5 dimension-scale bookkeeping (object references into the file itself).
H5_INTERNAL_ATTRS = {"REFERENCE_LIST", "DIMENSION_LIST"}


def _h5_items(path: Path) -> dict[str, tuple]:
    """Every group and dataset of an HDF5 file: name -> (data or None, attributes)."""
    items = {}

    def attrs(obj) -> dict:
        return {k: v for k, v in obj.attrs.items() if k not in H5_INTERNAL_ATTRS}

    with h5py.File(path) as f:
        f.visititems(
            lambda name, obj: items.__setitem__(
                name, (obj[()] if isinstance(obj, h5py.Dataset) else None, attrs(obj))
            )
        )
        items["/"] = (None, attrs(f))
    return items


def test_batches_and_statistics_are_equal(local_run, slurm_run):
    a, b = local_run["dir"], slurm_run["dir"]
    batches = _files(a, "results/batches/*.h5")
    assert [p.stem for p in batches] == Plan(DEMO).batch_names()
    assert batches == _files(b, "results/batches/*.h5")
    for rel in batches:
        x, y = _h5_items(a / rel), _h5_items(b / rel)
        assert x.keys() == y.keys(), rel
        for name, (data, attrs) in x.items():
            np.testing.assert_equal(attrs, y[name][1], err_msg=f"{rel} {name}")  # NaN == NaN
            if data is not None:
                np.testing.assert_array_equal(data, y[name][0], err_msg=f"{rel} {name}")
        assert all(x["/"][1][k] for k in PROVENANCE_KEYS), rel
    stats = "results/stats/stats.json"
    assert json.loads((a / stats).read_text()) == json.loads((b / stats).read_text())


def _jsonl(path: Path, drop: set[str] = frozenset()) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


SCORE_RTOL = 1e-6  # evaluation runs with the job's threads: float sums may differ in order


def test_training_and_scores_are_equal(local_run, slurm_run):
    """Same world size (2 ranks), seed, data, code and threads per rank (1): the same training
    run, to the bit. Only wall-clock fields differ (created_at, seconds, samples_per_s).
    Against a 1-rank run only the structure would match: the global batch, hence every loss,
    differs. The scores agree to SCORE_RTOL: the evaluation job's thread count (the
    profile's, and the machine's load) changes the order of the model's float sums."""
    a, b = (r["dir"] / "results/models/demo" for r in (local_run, slurm_run))
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (a, b))
    assert ma.keys() == mb.keys()
    assert {k for k in ma if ma[k] != mb[k]} <= {"created_at"}
    assert ma["world_size"] == RANKS and all(ma[k] for k in PROVENANCE_KEYS)
    timing = {"seconds", "samples_per_s"}
    la, lb = _jsonl(a / "metrics.jsonl", timing), _jsonl(b / "metrics.jsonl", timing)
    assert [r["step"] for r in la] == list(range(1, STEPS + 1))
    assert la == lb  # losses and learning rates, step for step
    assert _files(a, "checkpoints/**/*") == _files(b, "checkpoints/**/*")
    scores = "results/eval/demo/scores.jsonl"
    sa, sb = _jsonl(local_run["dir"] / scores), _jsonl(slurm_run["dir"] / scores)
    assert sa and len(sa) == len(sb)
    for x, y in zip(sa, sb, strict=True):
        assert x.keys() == y.keys()
        # A row's scores share the variable's units; a bias (a small difference of large
        # sums) errs by the row's magnitude, not its own: the tolerance is relative to both.
        scale = max([abs(v) for v in x.values() if isinstance(v, float)], default=0.0)
        for key, value in x.items():
            if isinstance(value, float) or (isinstance(value, list) and value):
                tol = max(1e-12, SCORE_RTOL * scale)
                assert value == pytest.approx(y[key], rel=SCORE_RTOL, abs=tol), (key, x, y)
            else:  # names, channels, counts, flags, metrics over no point (None)
                assert value == y[key], (key, x, y)
    for report in ("loss.svg", "scores.html"):
        assert (slurm_run["dir"] / "results/report/demo" / report).stat().st_size > 0
