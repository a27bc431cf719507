"""Training at scale: ZeRO-3 on 2 CPU ranks (train, checkpoint, resume), gradient
accumulation, activation checkpointing, and the run's layout (train.nodes x
train.gpus_per_node) checked against the job's ranks and recorded in meta.json.

The DeepSpeed runs are subprocesses with their own port (a process group lives as long as its
process); each runs several trainings in one process to pay DeepSpeed's start-up once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from bfm.cli import main
from bfm.contracts.layout import Layout
from bfm.model import BFM, ModelConfig, build_config, count_parameters
from bfm.model.backbone import UNetBackbone, set_activation_checkpointing
from bfm.model.loss import masked_loss
from bfm.testing import (
    BASE_GROUPS,
    SPECIES,
    mock_model_input,
    mock_species_table,
    random_values,
    write_sequence,
    write_stats,
)
from bfm.training import checkpoint
from bfm.training.config import TrainConfig
from bfm.training.distributed import find_free_port
from bfm.training.engine import batch_layout, load_ds_config

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT")  # fmt: skip

# bfm train once per argument list of the JSON argv[1], one after the other in one process;
# rank 0 writes to argv[2] the live metrics log each run found in its --out when it started.
TRAINS = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from bfm.cli import main
    found = []
    for args in json.loads(sys.argv[1]):
        log = Path(args[args.index("--out") + 1]) / "checkpoints" / "metrics.jsonl"
        found.append(log.read_text() if log.is_file() else "")
        if main(args):
            sys.exit(1)
    if os.environ.get("RANK", "0") == "0":
        Path(sys.argv[2]).write_text(json.dumps(found))
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four samples whose values differ (random), no missing target: a batch of 2 and two
    accumulated micro-batches of 1 average the same per-point losses."""
    from bfm.contracts.species_table import write_species_table

    root = tmp_path_factory.mktemp("scale")
    paths = write_sequence(root / "batches", 5, value=random_values(3))
    stats = write_stats(paths, root / "stats.json")
    table = write_species_table(mock_species_table(SPECIES), root / "species.parquet")
    configs = {}
    for name, stage, micro in (("zero0_micro2", 0, 2), ("zero2", 2, 1), ("zero3", 3, 1)):
        configs[name] = root / f"{name}.json"
        configs[name].write_text(json.dumps({
            "train_micro_batch_size_per_gpu": micro,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": stage},
            "steps_per_print": 10**6,
        }))  # fmt: skip
    return {"paths": paths, "stats": stats, "table": table, "configs": configs}


def train_args(data: dict, out: Path, config: str, steps: int, *extra: str) -> list[str]:
    # warmup 3 > steps before a resume: the LR of steps 1-2 does not depend on --steps
    return ["train", "--batches", *map(str, data["paths"]), "--stats", str(data["stats"]),
            "--deepspeed", str(data["configs"][config]), "--preset", "tiny",
            "--steps", str(steps), "--lr", "0.01", "--warmup-steps", "3",
            "--checkpoint-every", "2", "--seed", "0", "--species-table", str(data["table"]),
            "--out", str(out), *extra]  # fmt: skip


def launch(runs: list[list[str]], workdir: Path, ranks: int = 1) -> list[str]:
    """The trainings ``runs`` one after the other, in one process per rank; the live metrics
    log each found when it started."""
    script, found = workdir / "trains.py", workdir / "found.json"
    script.write_text(TRAINS)
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "OMPI_", "PMI_"))}  # fmt: skip
    port = str(find_free_port())
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=port)  # fmt: skip
    cmd = [sys.executable, str(script), json.dumps(runs), str(found)]
    if ranks > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                    "--master_addr", "127.0.0.1", "--master_port", port]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return list(json.loads(found.read_text()))


def losses(run: Path) -> list[float]:
    """Loss and LR of every step, in step order (steps 1, 2, ... checked)."""
    records = checkpoint.read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return [v for r in records for v in (r["loss"], r["lr"])]


def assert_same_tensors(a: Any, b: Any, where: str, atol: float) -> None:
    """Every tensor in two loaded checkpoint files agrees (same structure)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}", atol)
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]", atol)


# --- DeepSpeed runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_zero3_on_two_ranks_trains_checkpoints_and_resumes(data: dict, tmp_path: Path) -> None:
    """ZeRO-3 with 2 ranks, 2 accumulated micro-batches and activation checkpointing: an
    uninterrupted run of 3 steps, the same run stopped after 2 and resumed, and ZeRO-2."""
    scale = ["--grad-accum", "2", "--nodes", "1", "--gpus-per-node", "2"]
    whole, split, zero2 = tmp_path / "whole", tmp_path / "split", tmp_path / "zero2"
    z3 = [*scale, "--activation-checkpointing"]
    found = launch([
        train_args(data, whole, "zero3", 3, *z3),
        train_args(data, split, "zero3", 2, *z3),
        train_args(data, split, "zero3", 3, *z3),  # resumes at step 2
        train_args(data, zero2, "zero2", 3, *scale),
    ], tmp_path, ranks=2)  # fmt: skip

    # Resumed, not restarted: the first two steps' records (timings too) are the first run's.
    assert found[2].count("\n") == 2 and (split / "metrics.jsonl").read_text().startswith(found[2])
    assert losses(split) == pytest.approx(losses(whole), rel=1e-6)
    assert checkpoint.steps_done(whole) == checkpoint.steps_done(split) == 3
    ck = sorted(p.name for p in checkpoint.find_latest(whole).iterdir())
    assert ck == [f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in (0, 1)
                  for k in ("model", "optim")]  # fmt: skip
    for name in ck:  # weights, Adam moments and schedule of each rank's partition
        a, b = (torch.load(run / "checkpoints/step_000003" / name, weights_only=False)
                for run in (whole, split))  # fmt: skip
        assert_same_tensors(a, b, name, atol=1e-6)
    # ZeRO-3 partitions the same computation as ZeRO-2 (without activation checkpointing).
    assert losses(zero2) == pytest.approx(losses(whole), rel=1e-5)
    assert losses(whole)[-2] < losses(whole)[0]  # the last step's loss below the first's

    meta = checkpoint.read_meta(whole)
    assert (meta["deepspeed"]["zero_stage"], meta["world_size"]) == (3, 2)
    # the whole model's size, not this rank's partition
    assert meta["parameters"] == count_parameters(
        BFM(ModelConfig.from_dict(meta["model"]["config"]))
    )
    assert meta["ranks"] == {"world_size": 2, "nodes": 1, "gpus_per_node": 2,
                             "micro_batch": 1, "grad_accum": 2, "global_batch": 4}  # fmt: skip
    scale_settings = {"grad_accum": 2, "activation_checkpointing": True, "nodes": 1,
                      "gpus_per_node": 2}  # fmt: skip
    assert {k: meta["train"][k] for k in scale_settings} == scale_settings
    with pytest.raises(ValueError, match="ZeRO-3 checkpoints hold partitioned weights"):
        checkpoint.load_model(whole)


@pytest.mark.slow
def test_accumulation_and_checkpointing_give_the_update_of_a_bigger_batch(
    data: dict, tmp_path: Path
) -> None:
    """2 micro-batches of 1 (ZeRO-2), with and without activation checkpointing, against one
    batch of 2 (ZeRO-0): the same samples, losses and weights after 2 steps."""
    accum, plain, batch = tmp_path / "accum", tmp_path / "plain", tmp_path / "batch"
    launch([
        train_args(data, accum, "zero2", 2, "--grad-accum", "2", "--activation-checkpointing"),
        train_args(data, plain, "zero2", 2, "--grad-accum", "2"),
        train_args(data, batch, "zero0_micro2", 2),
    ], tmp_path)  # fmt: skip
    assert losses(accum) == pytest.approx(losses(plain), rel=1e-6)
    assert losses(plain) == pytest.approx(losses(batch), rel=1e-5)
    assert losses(batch)[2] != pytest.approx(losses(batch)[0], rel=1e-3)  # samples differ
    models = {run.name: checkpoint.load_model(run) for run in (accum, plain, batch)}
    weights = {name: m.state_dict() for name, (m, _) in models.items()}
    for k, w in weights["batch"].items():
        # AdamW moves each weight by ~lr = 0.01 a step: a wrong sample or sign is far off.
        torch.testing.assert_close(weights["accum"][k], weights["plain"][k], rtol=0, atol=1e-6)
        torch.testing.assert_close(weights["plain"][k], w, rtol=0, atol=2e-4)
    ranks = {name: meta["ranks"] for name, (_, meta) in models.items()}
    assert ranks["accum"]["global_batch"] == ranks["batch"]["global_batch"] == 2
    assert (ranks["accum"]["grad_accum"], ranks["batch"]["micro_batch"]) == (2, 2)
    assert models["accum"][1]["deepspeed"]["config"]["gradient_accumulation_steps"] == 2


# --- activation checkpointing, in process --------------------------------------------------
LAYOUT = Layout(levels=(500, 850, 1000), species=(11, 22), groups=BASE_GROUPS)


@pytest.mark.parametrize("backbone", ["swin3d", "mvit"])
def test_activation_checkpointing_keeps_loss_and_gradients(backbone: str) -> None:
    table = mock_species_table(LAYOUT.species)
    torch.manual_seed(0)
    cfg = build_config("tiny", LAYOUT, backbone=backbone, species_dims=tuple(table.dims.values()))
    model = BFM(cfg, None, table)
    torch.nn.init.normal_(model.decoder.head_weight, std=0.05)  # not persistence
    x = mock_model_input(LAYOUT, 2, 9, 13, seed=1)
    g = torch.Generator().manual_seed(2)
    target = {k: torch.randn(2, LAYOUT.n_channels(k), 9, 13, generator=g) for k in LAYOUT.dynamic}
    mask = {k: torch.ones_like(t, dtype=torch.bool) for k, t in target.items()}
    blocks = [b for m in model.modules() if isinstance(m, UNetBackbone)
              for b in (*m.stage1, *m.stage2, *m.stage3)]  # fmt: skip
    calls = [0]  # block forwards started (a recomputation stops once it has what it needs)
    for b in blocks:
        b.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    results = []
    for on in (False, True):
        assert set_activation_checkpointing(model, on) == 1
        model.zero_grad()
        calls[0] = 0
        loss = masked_loss(model(x), target, mask, LAYOUT, x.lat)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, calls[0]))
    (loss0, grads0, calls0), (loss1, grads1, calls1) = results
    # Checkpointed blocks run again in the backward pass: twice as many block forwards.
    assert (calls0, calls1) == (len(blocks), 2 * len(blocks))
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    assert grads1.keys() == grads0.keys() and len(grads0) > 100
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-6, atol=1e-7, msg=n)
    with torch.no_grad():  # inference: nothing to recompute
        calls[0] = 0
        model(x)
        assert calls[0] == len(blocks)


# --- settings ---------------------------------------------------------------------------------
def settings(**kw: Any) -> TrainConfig:
    return TrainConfig(batches=(), stats="s.json", deepspeed="ds.json", out="run", **kw)


def test_scale_settings_come_from_the_config_and_a_disagreeing_flag_is_refused() -> None:
    study = {"grad_accum": 4, "activation_checkpointing": False, "nodes": 2, "gpus_per_node": 4}
    cfg = settings().with_study(study)
    assert (cfg.grad_accum, cfg.activation_checkpointing, cfg.world_size) == (4, False, 8)
    assert settings(grad_accum=4).with_study(study).grad_accum == 4  # the same value: fine
    with pytest.raises(ValueError, match=r"--nodes 1 disagrees with the config's train.nodes: 2"):
        settings(nodes=1, gpus_per_node=4).with_study(study)
    by_hand = settings().with_study(None)  # no --config: 1 micro-batch, nothing checked
    assert (by_hand.grad_accum, by_hand.activation_checkpointing, by_hand.world_size) == (
        1, False, None)  # fmt: skip
    assert settings(grad_accum=3).with_study(None).schedule()["grad_accum"] == 3


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"grad_accum": 0}, r"--grad-accum must be >= 1, got 0"),
        ({"nodes": 0, "gpus_per_node": 1}, r"--nodes must be >= 1, got 0"),
        ({"nodes": 2}, r"--nodes and --gpus-per-node go together \(got 2, None\)"),
    ],
)
def test_bad_scale_settings_name_the_flag(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**kw)


def test_the_deepspeed_json_leaves_accumulation_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    ds = load_ds_config(path, grad_accum=4)
    assert (ds["gradient_accumulation_steps"], ds["train_micro_batch_size_per_gpu"]) == (4, 1)
    path.write_text(json.dumps({"gradient_accumulation_steps": 4}))
    assert load_ds_config(path, 4)["gradient_accumulation_steps"] == 4
    with pytest.raises(ValueError, match=r"sets gradient_accumulation_steps=4 but .* is 1"):
        load_ds_config(path)
    path.write_text(json.dumps({"train_batch_size": 32}))
    with pytest.raises(ValueError, match="sets train_batch_size; it follows from"):
        load_ds_config(path)


def test_global_batch_is_micro_batch_times_accumulation_times_ranks() -> None:
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4}
    cfg = settings(nodes=2, gpus_per_node=4)
    assert batch_layout(ds, 8, 4, cfg) == {"world_size": 8, "nodes": 2, "gpus_per_node": 4,
                                           "micro_batch": 2, "grad_accum": 4,
                                           "global_batch": 64}  # fmt: skip
    # by hand: the layout as the launcher tells it (torchrun's LOCAL_WORLD_SIZE), or unknown
    assert batch_layout(ds, 4, 2, settings())["nodes"] == 2
    assert batch_layout(ds, 1, None, settings())["nodes"] is None


def test_train_refuses_a_job_with_other_ranks_than_the_config(
    data: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One process where --nodes 1 x --gpus-per-node 2 asks for 2 ranks: refused at once."""
    args = train_args(data, tmp_path / "run", "zero2", 2, "--nodes", "1", "--gpus-per-node", "2")
    assert main(args) == 1
    assert "train.nodes=1 x train.gpus_per_node=2 = 2 rank(s), but the job (single) has 1" in (
        caplog.text
    )
    assert not (tmp_path / "run").exists()


def test_zero3_checkpoints_count_as_done(tmp_path: Path) -> None:
    """Under ZeRO-3 rank 0's model states are zero_pp_rank_0_mp_rank_00_model_states.pt."""
    step = checkpoint.state_dir(tmp_path) / "step_000006"
    step.mkdir(parents=True)
    for r in (0, 1):
        torch.save({"module": {}, "step": 6}, step / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
    (step.parent / "latest").write_text("step_000006")
    assert checkpoint.steps_done(tmp_path) == 6


@pytest.mark.parametrize(
    "name,layout,global_batch",
    [("config.yaml", (1, 1, 1, False), 1), ("europe.yaml", (1, 4, 4, False), 16)],
)
def test_the_shipped_configs_fix_the_global_batch(name: str, layout: tuple,
                                                  global_batch: int) -> None:  # fmt: skip
    """The demo trains on 1 rank; the study on one node of 4 H100s, 4 micro-batches each."""
    from bfm.config import load_config
    from bfm.testing import ROOT

    train = load_config(ROOT / "config" / name)["train"]
    cfg = settings().with_study(train)
    assert (cfg.nodes, cfg.gpus_per_node, cfg.grad_accum, cfg.activation_checkpointing) == layout
    ds = load_ds_config(ROOT / train["deepspeed"], cfg.grad_accum or 1)
    assert batch_layout(ds, cfg.world_size or 0, cfg.gpus_per_node, cfg)["global_batch"] == (
        global_batch
    )
