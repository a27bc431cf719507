"""``bfm train`` end to end with DeepSpeed on CPU, each run in its own subprocess and port.

The first DeepSpeed start on a machine JIT-builds a small op (~40 s); later runs reuse it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bfm.cli import main
from bfm.contracts.layout import Normaliser
from bfm.contracts.sample import Sample
from bfm.contracts.species_table import write_species_table
from bfm.contracts.stats import load_stats
from bfm.provenance import file_sha256
from bfm.testing import SPECIES, mock_species_table, write_sequence, write_stats
from bfm.training import checkpoint
from bfm.training.data import BatchPairs
from bfm.training.distributed import find_free_port
from bfm.training.engine import lr_at, sample_indices

META_KEYS = {
    "config",
    "stats_path",
    "stats_sha256",
    "bfm_version",
    "git_commit",
    "config_hash",
    "model",
    "parameters",
    "deepspeed",
    "world_size",
    "steps_done",
    "final_loss",
    "batches",
    "created_at",
}
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("train")
    paths = write_sequence(root / "batches", 9)
    stats = write_stats(paths, root / "stats.json")
    configs = {}
    for name, stage, bf16 in (("zero1", 1, False), ("zero2", 2, False), ("zero2_bf16", 2, True)):
        configs[name] = root / f"{name}.json"
        configs[name].write_text(
            json.dumps(
                {
                    "train_micro_batch_size_per_gpu": 1,
                    "gradient_accumulation_steps": 1,
                    "gradient_clipping": 1.0,
                    "zero_optimization": {"stage": stage},
                    "bf16": {"enabled": bf16},
                    "steps_per_print": 10**6,
                }
            )
        )
    table = write_species_table(mock_species_table(SPECIES), root / "species.parquet")
    return {"root": root, "paths": paths, "stats": stats, "configs": configs, "table": table}


def env() -> dict[str, str]:
    """A clean launch environment with its own port (no inherited ranks)."""
    e = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "OMPI_", "PMI_"))
    }
    e.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(find_free_port()),
    )
    return e


def train_args(
    data: dict, out: Path, steps: int, config: str = "zero1", every: int = 10
) -> list[str]:
    return [
        "train",
        "--batches",
        *map(str, data["paths"]),
        "--stats",
        str(data["stats"]),
        "--deepspeed",
        str(data["configs"][config]),
        "--preset",
        "tiny",
        "--steps",
        str(steps),
        "--lr",
        "0.01",
        "--warmup-steps",
        "3",
        "--checkpoint-every",
        str(every),
        "--seed",
        "0",
        "--species-table",
        str(data["table"]),
        "--out",
        str(out),
    ]


def bfm(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bfm.cli", *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def live(run: Path) -> Path:
    """Where an unfinished run keeps its metrics log and meta.json."""
    return run / "checkpoints"


@pytest.mark.slow
def test_train_checkpoints_resumes_and_is_idempotent(data: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # The continuous variables only: their loss can fall towards 0 (a Poisson likelihood of
    # counts has a floor above 0), so the fall measures learning.
    only_weather = ["--loss-weight", "species/occurrence=0", "--loss-weight", "species/effort=0"]
    res = bfm([*train_args(data, run, 30), *only_weather])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "checkpoints" / "latest").read_text() == "step_000030"
    for step in (10, 20, 30):
        assert (run / "checkpoints" / f"step_{step:06d}" / checkpoint.MODEL_STATES).is_file()
    rec = metrics(run)
    assert [r["step"] for r in rec] == list(range(1, 31))
    assert set(rec[0]) == {"step", "loss", "lr", "seconds", "samples_per_s"}
    first, last = np.mean([r["loss"] for r in rec[:5]]), np.mean([r["loss"] for r in rec[-5:]])
    assert last < 0.3 * first, (first, last)
    m = meta(run)
    assert META_KEYS <= set(m)
    assert (m["stats_path"], m["stats_sha256"]) == (str(data["stats"]), file_sha256(data["stats"]))
    assert m["config"]["preset"] == "tiny" and m["config"]["steps"] == 30  # the CLI arguments
    assert m["model"]["preset"] == "tiny" and m["model"]["config"]["layout"]["levels"]
    assert (m["deepspeed"]["zero_stage"], m["deepspeed"]["precision"]) == (1, "fp32")
    assert (m["world_size"], m["steps_done"], m["complete"]) == (1, 30, True)
    assert m["final_loss"] == rec[-1]["loss"]
    assert m["batches"] == [p.name for p in data["paths"]]
    assert m["parameters"] > 100_000 and len(m["config_hash"]) == 64

    res = bfm([*train_args(data, run, 35), *only_weather])  # resume: continues at step 31
    assert res.returncode == 0, res.stderr[-3000:]
    rec = metrics(run)
    assert [r["step"] for r in rec] == list(range(1, 36))
    assert rec[30]["lr"] == pytest.approx(lr_at(30, 0.01, 3, 35))  # the schedule resumed
    assert (meta(run)["steps_done"], meta(run)["checkpoint"]) == (35, "step_000035")

    before = (run / "meta.json").stat().st_mtime_ns
    res = bfm([*train_args(data, run, 35), *only_weather])  # finished: a no-op (meta refreshed)
    assert res.returncode == 0 and "nothing to do" in res.stderr
    assert len(metrics(run)) == 35 and (run / "meta.json").stat().st_mtime_ns > before
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_000010",
        "step_000020",
        "step_000030",
        "step_000035",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_and_exits(data: dict, tmp_path: Path, sig: int) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "bfm.cli", *train_args(data, run, 100_000, every=100_000)]
    log = tmp_path / "train.log"  # a file, not a pipe: a full pipe would block the child
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 300
        while not ((live(run) / "metrics.jsonl").is_file() and len(metrics(live(run))) >= 3):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        if sig == signal.SIGTERM:  # meanwhile, a second run on the same directory is refused
            second = bfm(train_args(data, run, 10))
            assert second.returncode == 1, second.stderr[-3000:]
            assert "another bfm train is running in this run directory (pid" in second.stderr
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + sig, log.read_text()[-3000:]
    assert f"stopped by signal {int(sig)}" in log.read_text()
    done = len(metrics(live(run)))
    assert (run / "checkpoints" / "latest").read_text() == f"step_{done:06d}"
    assert (meta(live(run))["steps_done"], meta(live(run))["complete"]) == (done, False)
    # Unfinished: the workflow outputs are not there, so Snakemake sees a failed job...
    assert not (run / "meta.json").exists() and not (run / "metrics.jsonl").exists()
    # ...and its re-run resumes with the whole metrics history.
    res = bfm(train_args(data, run, done + 2, every=100_000))
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in metrics(run)] == list(range(1, done + 3))
    assert (meta(run)["steps_done"], meta(run)["complete"]) == (done + 2, True)


@pytest.mark.slow
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(data: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = bfm(train_args(data, run, 20))
    assert res.returncode == 0, res.stderr[-3000:]
    before = metrics(run)
    shards = list((run / "checkpoints" / "step_000020").glob("*optim_states.pt"))
    assert shards
    for shard in shards:  # damaged, not truncated: same size, other bytes
        shard.write_bytes(bytes(len(shard.read_bytes())))
    res = bfm(train_args(data, run, 22))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipping checkpoint" in res.stderr and "step_000020" in res.stderr
    after = metrics(run)
    assert [r["step"] for r in after] == list(range(1, 23))
    assert after[:10] == before[:10]  # resumed from step 10, redid 11..20
    assert meta(run)["steps_done"] == 22


LOAD_SCRIPT = textwrap.dedent("""
    import sys, torch
    from bfm.cli import build_parser
    from bfm.contracts.sample import Sample
    from bfm.training.config import TrainConfig
    from bfm.training.data import BatchPairs
    from bfm.training.loop import train

    cfg = TrainConfig.from_args(build_parser().parse_args(sys.argv[2:]))
    module = train(cfg).engine.module.eval()
    data = BatchPairs(list(cfg.batches), module.normaliser(), layout=module.config.layout)
    s = Sample.collate([data[0]])
    with torch.no_grad():
        out = module(s.input)
    torch.save(out, sys.argv[1])
""")


@pytest.mark.slow
def test_load_model_reproduces_the_training_weights(data: dict, tmp_path: Path) -> None:
    run, ref = tmp_path / "run", tmp_path / "ref.pt"
    cmd = [sys.executable, "-c", LOAD_SCRIPT, str(ref), *train_args(data, run, 4, "zero2")]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    expected = torch.load(ref, weights_only=True)

    model, m = checkpoint.load_model(run)
    assert checkpoint.find_latest(run).name == "step_000004" and m["steps_done"] == 4
    data_ = BatchPairs(data["paths"], model.normaliser(), layout=model.config.layout)
    s = Sample.collate([data_[0]])
    with torch.no_grad():
        got = model(s.input)
    assert set(got) == set(expected)
    for g in got:
        torch.testing.assert_close(got[g], expected[g], rtol=0, atol=1e-5)
        assert not torch.equal(got[g], s.input.inputs[g][:, -1])  # trained: not persistence


@pytest.mark.slow
def test_two_ranks_zero2_bf16_write_one_meta(data: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    e = env()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        e["MASTER_PORT"],
        "-m",
        "bfm.cli",
        *train_args(data, run, 6, "zero2_bf16", every=3),
    ]
    res = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # Rank 0 alone writes: the live meta.json and the published one, nothing per rank.
    assert sorted(p.relative_to(run) for p in run.rglob("meta.json")) == [
        Path("checkpoints/meta.json"),
        Path("meta.json"),
    ]
    assert [r["step"] for r in metrics(run)] == list(range(1, 7))
    m = meta(run)
    assert (m["world_size"], m["deepspeed"]["zero_stage"], m["deepspeed"]["precision"]) == (
        2,
        2,
        "bf16",
    )
    shards = sorted(p.name for p in (run / "checkpoints" / "step_000006").glob("*optim*"))
    assert len(shards) == 2 and all("zero_pp_rank_" in s for s in shards)
    # The reloaded model carries the statistics exactly (float64 buffers survive bf16).
    model, _ = checkpoint.load_model(run)
    stats = Normaliser.from_stats(load_stats(data["stats"]), model.config.layout)
    for g in model.config.layout.groups:
        np.testing.assert_array_equal(model.normaliser().mean[g], stats.mean[g])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_config_optimizer_is_refused(
    data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    args = train_args(data, tmp_path / "run", 2)
    args[args.index("--deepspeed") + 1] = str(bad)
    assert main(args) == 1
    args = train_args(data, tmp_path / "run", 2)
    args[args.index("--stats") + 1] = str(tmp_path / "missing.json")
    assert main(args) == 1
    assert not (tmp_path / "run" / "meta.json").exists()


def test_lr_schedule_warms_up_then_decays() -> None:
    lrs = [lr_at(s, 1.0, 4, 20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert lr_at(20, 1.0, 4, 20) == pytest.approx(0.1)


def test_sample_order_is_a_per_epoch_permutation() -> None:
    order = [sample_indices(5, g, 1, seed=3)[0] for g in range(10)]
    assert sorted(order[:5]) == sorted(order[5:]) == list(range(5))
    assert sample_indices(5, 2, 2, seed=3) == order[4:6]  # micro-batches of 2 share the order


def test_species_batches_need_the_table_or_the_ablation_flag(data: dict, tmp_path: Path,
                                                             caplog) -> None:  # fmt: skip
    args = train_args(data, tmp_path / "run", 2)
    i = args.index("--species-table")
    del args[i : i + 2]
    assert main(args) == 1
    assert "--species-table: the batches hold species" in caplog.text
