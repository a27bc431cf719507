"""The stand-in SLURM's Snellius limits, and a training job that runs into its time limit.

The node of tests/slurm/up.sh has a Snellius rome node's shape (128 CPUs, 229376 MB) and the
partitions Snellius's 120 h limit, so sbatch itself refuses what Snellius would refuse (checked
with ``sbatch --test-only``: nothing runs). The training job gets profiles/snellius's
``--signal=USR1@600`` (10 min before the limit), shortened to fit a test: a 2-minute job warned
60 s before its end. SLURM sends such warnings from a 30 s timer, up to 30 s early, so the
warning comes 30-60 s after the start, after bfm train installed its handler (a few seconds)
and well before the limit: the job checkpoints and exits 138 (FAILED, not TIMEOUT), and a
second job on the same run directory resumes from that checkpoint with the whole metrics
history. Shares tests/test_slurm.py's session fixture that starts and stops the cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from snakemake.profiles import ProfileConfigFileParser

from tests.conftest import ROOT
from tests.test_slurm import ACCOUNT, slurm_cluster  # noqa: F401 (the session fixture)
from tests.test_train import data, env, train_args  # noqa: F401 (data: a fixture)

pytestmark = pytest.mark.slurm

NODE = {"cpus": 128, "mem_mb": 229376, "max_time": "5-00:00:00"}  # rome; 120 h on every partition
TIME_LIMIT_MIN = 2
WARN_BEFORE_S = 60
JOB_TIMEOUT_S = TIME_LIMIT_MIN * 60 + 60  # SLURM ends a job by then whatever the job does
FINAL_STATES = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL"}


def sbatch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = ["sbatch", "-A", ACCOUNT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.parametrize(
    ("request_", "refusal"),
    [
        (["-c", str(NODE["cpus"] + 1)], "More processors requested than permitted"),
        (["--mem", "300G"], "Requested node configuration is not available"),
        (["--mem", str(NODE["mem_mb"] + 1)], "Requested node configuration is not available"),
        (["-t", "5-00:00:01"], "Requested time limit is invalid"),
        (["-p", "gpu_h100", "--gres", "gpu:2"], "Requested node configuration is not available"),
    ],
)
def test_sbatch_refuses_what_a_snellius_node_cannot_hold(slurm_cluster, request_, refusal):  # noqa: F811
    out = sbatch("--test-only", *request_, "--wrap", "true")
    assert out.returncode != 0 and refusal in out.stderr, (request_, out.stderr)


def test_sbatch_accepts_a_whole_node_for_the_whole_limit(slurm_cluster):  # noqa: F811
    shape = ["-c", str(NODE["cpus"]), "--mem", str(NODE["mem_mb"]), "-t", NODE["max_time"]]
    for partition in ("rome", "genoa", "gpu_h100"):
        out = sbatch("--test-only", "-p", partition, *shape, "--wrap", "true")
        assert out.returncode == 0, (partition, out.stderr)


def profile_signal() -> str:
    """The training job's --signal from profiles/snellius (its slurm_extra)."""
    with pytest.MonkeyPatch.context() as mp, open(ROOT / "profiles/snellius/profile.yaml") as f:
        mp.setenv("BFM_SLURM_ACCOUNT", ACCOUNT)
        mp.setenv("BFM_CONDA_PREFIX", "/tmp/unused")
        mp.delenv("BFM_TRAIN_NODES", raising=False)
        mp.setattr(sys, "argv", ["snakemake", "--configfile", str(ROOT / "config/config.yaml")])
        items = ProfileConfigFileParser().parse(f)
    extra = [
        e.split("=", 1)[1] for e in items["set-resources"] if e.startswith("train:slurm_extra=")
    ]
    assert extra, items["set-resources"]
    match = re.search(r"--signal=USR1@(\d+)", extra[0])
    assert match, extra
    return match.group(0)


def run_job(args: list[str], log: Path, step: bool = True) -> tuple[str, str]:
    """One sbatch job of ``bfm train``, in a job step warned by ``--signal`` (``step``) or in
    the batch step, unwarned, as the executor runs one rank; (State, DerivedExitCode) from
    sacct once it has ended (a job step's exit status 138 shows as 10:0 in SLURM 22.05's
    ExitCode and as 138:0 in DerivedExitCode), ExitCode for the batch step (10:0 for 138)."""
    launch = ["srun"] if step else []
    wrap = " ".join([*launch, sys.executable, "-m", "bfm.cli", *args])
    warn = [f"--signal=USR1@{WARN_BEFORE_S}"] if step else []
    out = sbatch(
        "--parsable", "-p", "gpu_h100", "--gres", "gpu:1", "-t", str(TIME_LIMIT_MIN), *warn,
        "-o", str(log), "--wrap", wrap,
        env=env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        acct = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job, "-o", "State,ExitCode,DerivedExitCode"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        state, _, codes = acct.stdout.strip().partition("|")
        code = codes.split("|")[-1 if step else 0]
        if state.split(" ")[0] in FINAL_STATES:
            return state.split(" ")[0], code
        time.sleep(2)
    subprocess.run(["scancel", job], timeout=30)
    pytest.fail(f"job {job} still runs after {JOB_TIMEOUT_S} s: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_training_at_its_time_limit_checkpoints_and_resumes(slurm_cluster, data, tmp_path):  # noqa: F811
    assert profile_signal() == "--signal=USR1@600"  # the profile's warning, 10 min before
    run = tmp_path / "run"
    warm = subprocess.run(  # DeepSpeed's first start on a machine builds an op (~40 s)
        [sys.executable, "-m", "bfm.cli", *train_args(data, tmp_path / "warm", 1)],
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert warm.returncode == 0, warm.stderr[-3000:]

    # 1. Far more steps than fit: the warning stops the job, with a checkpoint.
    state, code = run_job(train_args(data, run, 1_000_000, every=1_000_000), tmp_path / "1.log")
    log = (tmp_path / "1.log").read_text()
    assert (state, code) == ("FAILED", "138:0"), (state, code, log[-3000:])  # 128 + SIGUSR1
    assert "stopped by signal 10" in log, log[-3000:]
    state_dir = run / "checkpoints"
    done = len(state_dir.joinpath("metrics.jsonl").read_text().splitlines())
    assert done >= 1 and (state_dir / "latest").read_text() == f"step_{done:06d}"
    meta = json.loads((state_dir / "meta.json").read_text())
    assert (meta["steps_done"], meta["complete"]) == (done, False)

    # 2. The rerun (as Snakemake's retry would submit it) resumes there and finishes.
    state, code = run_job(train_args(data, run, done + 2, every=1_000_000), tmp_path / "2.log")
    log = (tmp_path / "2.log").read_text()
    assert (state, code) == ("COMPLETED", "0:0"), (state, code, log[-3000:])
    assert f"steps {done}..{done + 2}" in log, log[-3000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, done + 3))
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["steps_done"], meta["complete"]) == (done + 2, True)


@pytest.mark.slow
def test_training_in_the_batch_step_stops_before_its_time_limit(slurm_cluster, data, tmp_path):  # noqa: F811
    """No --signal reaches the batch step: bfm train asks squeue for the time left and stops
    train.stop_before_limit seconds before the limit (here 90 s of a 2-minute job)."""
    run = tmp_path / "run"
    args = [*train_args(data, run, 1_000_000, every=1_000_000), "--stop-before-limit", "90"]
    state, code = run_job(args, tmp_path / "1.log", step=False)
    log = (tmp_path / "1.log").read_text()
    assert (state, code) == ("FAILED", "10:0"), (state, code, log[-3000:])  # exit status 138
    assert "s left before the SLURM job's time limit" in log, log[-3000:]
    assert "stopped by signal 10" in log, log[-3000:]
    state_dir = run / "checkpoints"
    done = len(state_dir.joinpath("metrics.jsonl").read_text().splitlines())
    assert done >= 1 and (state_dir / "latest").read_text() == f"step_{done:06d}"
    assert json.loads((state_dir / "meta.json").read_text())["complete"] is False
