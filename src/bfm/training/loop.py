"""bfm train: pre-train the BFM with DeepSpeed (docs/architecture.md, "Training").

Reads top to bottom: settings -> ranks -> lock -> data -> model -> engine -> resume -> loop
(NaN-masked weighted MSE, warmup + cosine LR, metrics, checkpoints, stop on SIGTERM/SIGUSR1 or
near the SLURM job's time limit) -> final checkpoint and meta.json. Rank 0 alone writes
metrics.jsonl and meta.json, and holds the run directory's lock: a second bfm train on the
same --out is refused.

Launch with bfm train ... (one process), torchrun --nproc_per_node N -m bfm.cli train or
srun bfm train ...; see bfm.training.distributed for how ranks are found. A step is one
optimizer step (gradient_accumulation_steps micro-batches of train_micro_batch_size_per_gpu
samples on every rank). Samples are drawn from a per-epoch permutation fixed by the seed,
indexed by the global sample counter, so a resumed run sees the same samples as an
uninterrupted one. DataLoader workers (config train.loader_workers, train.prefetch;
bfm.training.data.MicroBatches) read them while the model computes; the step normalises
and masks them on its device (bfm.training.fill.finish_raw). With
--config (the workflow passes the study's), batches built under other
settings than the config implies are refused.

Outputs in --out (layout in bfm.training.checkpoint):

- metrics.jsonl: one line per step, {"step": 12, "loss": 0.031, "lr": 0.002, "seconds":
  0.05, "samples_per_s": 20.0} (loss averaged over ranks and micro-batches; lr the one the
  step used). Lines after the checkpoint a run resumes from are dropped.
- meta.json (build_meta): schema, created_at, bfm_version, git_commit, config_hash,
  settings_hash, config (the study's resolved config, else these settings), stats_path,
  stats_sha256, model {preset, backbone, drop_groups (--drop-group), config}, parameters,
  deepspeed {path, zero_stage, precision, config}, world_size, ranks {world_size, nodes,
  gpus_per_node, micro_batch, grad_accum, global_batch}, steps_done, steps_target,
  complete, checkpoint, final_loss, batches (names), train {lr, warmup_steps, weight_decay,
  checkpoint_every, seed, grad_accum, activation_checkpointing, nodes, gpus_per_node}.
- checkpoints/step_NNNNNN every --checkpoint-every steps, at the end and on a signal.

Exit status: 0 when --steps are done (also for a finished run re-invoked, which only
rewrites meta.json); 128 + signal number after a SIGTERM/SIGUSR1 checkpoint (138, as for
SIGUSR1, once train.stop_before_limit seconds are left before the SLURM job's time limit),
so a workflow sees the run as unfinished and a re-run resumes it; 1 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm.ablations import check_drop
from bfm.cliutil import add_command, add_config_argument
from bfm.contracts import catalogue
from bfm.contracts.layout import Layout
from bfm.contracts.species_table import SpeciesTable, read_species_table
from bfm.contracts.stats import load_stats
from bfm.model import BACKBONES, BFM, PRESETS, ModelConfig, build_config, count_parameters
from bfm.model.backbone import set_activation_checkpointing
from bfm.model.loss import masked_loss
from bfm.provenance import file_sha256, provenance
from bfm.training import checkpoint, distributed
from bfm.training.config import TrainConfig, add_scale_arguments
from bfm.training.data import LOADER_KEYS, BatchPairs, MicroBatches, Order, open_loader
from bfm.training.engine import (
    StopSignal,
    TimeLimit,
    all_ok,
    batch_layout,
    build_engine,
    load_ds_config,
    mean_over_ranks,
    precision,
    sync_schedule,
    zero_stage,
)
from bfm.workflow import Plan, load_plan

log = logging.getLogger("bfm.train")

# config train.* keys that change how a run computes, not what: left out of its settings, so
# that a run resumes (and is reused) whatever they say. Checkpointing recomputes activations:
# the same loss and gradients (tests/test_scale_training.py).
RUNTIME_KEYS = (*LOADER_KEYS, "activation_checkpointing", "stop_before_limit")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", __doc__, "pre-train the model with DeepSpeed")
    p.add_argument(
        "--batches",
        nargs="+",
        required=True,
        metavar="FILE",
        help="training batch files <t0>.h5; consecutive ones form (input, target) pairs",
    )
    p.add_argument(
        "--stats",
        required=True,
        metavar="PATH",
        help="statistics JSON (bfm stats) used to normalise inputs and targets",
    )
    p.add_argument(
        "--deepspeed",
        required=True,
        metavar="PATH",
        help="DeepSpeed JSON: ZeRO stage, precision, micro-batch size, accumulation",
    )
    p.add_argument(
        "--preset",
        default="tiny",
        choices=sorted(PRESETS),
        help="model size preset (default: tiny)",
    )
    p.add_argument(
        "--backbone",
        default="swin3d",
        choices=BACKBONES,
        help="backbone (model.backbone): swin3d (default) or mvit",
    )
    p.add_argument("--steps", type=int, default=40, help="total optimizer steps (default: 40)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=5,
        help="linear warmup steps before the cosine decay (default: 5)",
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=20,
        help="save a checkpoint every N steps (and always at the end)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights and sample order")
    p.add_argument(
        "--loss",
        default="mse",
        choices=("mse", "mae"),
        help="loss of continuous variables (counts: Poisson); default mse",
    )
    p.add_argument(
        "--loss-weight",
        dest="loss_weights",
        action="append",
        default=[],
        metavar="GROUP/VAR=W",
        help="weight of a variable in the loss (default 1)",
    )
    p.add_argument(
        "--species-table",
        metavar="PATH",
        help="species table (parquet): the identity of each species; needed when "
        "the batches hold species",
    )
    p.add_argument(
        "--no-species-table",
        dest="use_species_table",
        action="store_false",
        help="ablation: species tokens without identity from the table",
    )
    p.add_argument(
        "--drop-group",
        dest="drop_groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="ablation (repeatable): the model does not read this batch group, which the "
        "batches may still hold; covariates only, not ERA5's groups or species "
        "(bfm.ablations)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run directory (results/models/<run>): checkpoints, metrics, meta.json",
    )
    add_scale_arguments(p)
    add_config_argument(p, required=False)
    p.set_defaults(func=run)


@dataclass
class TrainResult:
    exit_code: int
    steps_done: int
    engine: Any = None


@dataclass
class Run:
    """What one invocation works with (set up once by ``train``)."""

    cfg: TrainConfig
    plan: Plan | None
    dist: distributed.DistEnv
    ds_config: dict[str, Any]
    data: BatchPairs
    model_config: ModelConfig
    model: BFM
    loader: MicroBatches | None = None  # set by _train_loop (bfm.training.data)

    @property
    def dir(self) -> Path:
        return Path(self.cfg.out)

    @cached_property
    def count_scale(self) -> dict[str, torch.Tensor]:
        """The training mean of each channel, by group (the loss scales counts by it)."""
        return {g: torch.from_numpy(m) for g, m in self.data.norm.mean.items()}

    def settings(self) -> dict[str, Any]:
        """What the run depends on: the study's statistics, model and training keys."""
        if self.plan is None:
            return self.cfg.to_dict()
        # The run's own model options: an ablation's differ from the config's model keys.
        model = {**self.plan.config["model"], "backbone": self.cfg.backbone,
                 "species_table": self.cfg.use_species_table}  # fmt: skip
        if self.cfg.drop_groups:
            model["drop_groups"] = list(self.dropped)
        return {"stats": self.plan.stats_settings(), "model": model,
                "train": {k: v for k, v in self.plan.config["train"].items()
                          if k not in RUNTIME_KEYS}}  # fmt: skip

    @property
    def dropped(self) -> tuple[str, ...]:
        """The groups the model does not read (``--drop-group``), in catalogue order."""
        return tuple(g for g in catalogue.groups() if g in self.cfg.drop_groups)


def run(args: argparse.Namespace) -> int:
    return train(TrainConfig.from_args(args)).exit_code


def build_meta(run: Run, step: int, world_size: int) -> dict[str, Any]:
    """meta.json: everything needed to cite, reload and resume the run."""
    cfg, ds = run.cfg, run.ds_config
    config = run.plan.config if run.plan is not None else cfg.to_dict()
    return {
        "schema": checkpoint.META_SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **provenance(config, run.settings()),
        "config": config,
        "stats_path": str(cfg.stats),
        "stats_sha256": file_sha256(cfg.stats),
        "model": {
            "preset": run.model_config.preset,
            "backbone": run.model_config.backbone,
            "drop_groups": list(run.dropped),
            "config": run.model_config.to_dict(),
        },
        "parameters": count_parameters(run.model),
        "deepspeed": {
            "path": str(cfg.deepspeed),
            "zero_stage": zero_stage(ds),
            "precision": precision(ds),
            "config": ds,
        },
        "world_size": world_size,
        "ranks": batch_layout(ds, world_size, run.dist.local_world_size, cfg),
        "steps_done": step,
        "steps_target": cfg.steps,
        "complete": step >= cfg.steps,
        "checkpoint": checkpoint.tag_for(step) if step else None,
        "final_loss": checkpoint.loss_at(run.dir, step),
        "batches": run.data.names,
        "train": cfg.schedule(),
    }


def check_same_model(run_dir: Path, cfg: ModelConfig) -> None:
    state = checkpoint.state_dir(run_dir)
    if not (state / checkpoint.META).is_file() or not checkpoint.candidates(run_dir):
        return
    old = ModelConfig.from_dict(checkpoint.read_meta(state)["model"]["config"])
    if old != cfg:
        raise ValueError(
            f"--out {run_dir}: holds a run of a different model config; "
            "use a new --out (or delete the old run)"
        )


def train_step(engine: Any, run: Run, first_micro: int, dtype: torch.dtype) -> float:
    """One optimizer step over the accumulation micro-batches; the mean loss on this rank."""
    ga = engine.gradient_accumulation_steps()
    assert run.loader is not None, "_train_loop opens the loader"
    losses = []
    for m in range(ga):  # the loader's workers read the next micro-batches meanwhile
        batch = run.loader.sample(first_micro + m, engine.device, dtype)
        pred = engine(batch.input)
        loss = masked_loss(
            pred,
            batch.target,
            batch.mask,
            run.data.layout,
            batch.input.lat,
            dict(run.cfg.loss_weights),
            run.cfg.loss,
            run.count_scale,
        )
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def prefer_cpu_accelerator() -> None:
    """DeepSpeed must not go looking for a GPU that is not there (set before importing it)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def species_table(cfg: TrainConfig, layout: Layout) -> SpeciesTable | None:
    """The species table rows of the layout's species (None without species or table)."""
    if not layout.species:
        return None
    if cfg.species_table is None:
        if cfg.use_species_table:
            raise ValueError(
                "--species-table: the batches hold species; give the species "
                "table (or --no-species-table for the ablation without it)"
            )
        return None
    return read_species_table(cfg.species_table).select(layout.species, cfg.species_table)


@contextlib.contextmanager
def run_lock(cfg: TrainConfig, dist: distributed.DistEnv) -> Any:
    """Rank 0 holds the run directory's lock; every rank fails if it cannot get it."""
    with contextlib.ExitStack() as stack:
        error = None
        if dist.is_main:
            try:
                stack.enter_context(checkpoint.locked(cfg.out))
            except ValueError as err:
                error = err
        if not all_ok(error is None, dist.world_size, distributed.device(dist)):
            raise error or ValueError(f"{cfg.out}: rank 0 could not lock the run directory")
        yield


def train(cfg: TrainConfig) -> TrainResult:
    # --- setup: ranks, lock, data, model ------------------------------------------------
    prefer_cpu_accelerator()
    dist = distributed.discover(os.environ)
    plan = load_plan(cfg.config)
    cfg = cfg.with_study(plan.config["train"] if plan is not None else None)
    distributed.check_layout(dist, cfg.nodes, cfg.gpus_per_node)  # before any rank waits
    ds_config = load_ds_config(cfg.deepspeed, cfg.grad_accum or 1)
    if dist.world_size > 1:
        distributed.init_distributed(dist)  # the lock needs every rank's answer
    with run_lock(cfg, dist):
        settings_hash = plan.batch_settings_hash if plan is not None else None
        check_drop(cfg.drop_groups, "--drop-group")  # the batches must hold them too
        data = BatchPairs(list(cfg.batches), load_stats(cfg.stats), settings_hash=settings_hash,
                          drop_groups=cfg.drop_groups)  # fmt: skip
        table = species_table(cfg, data.layout)
        model_config = build_config(
            cfg.preset, data.layout, backbone=cfg.backbone,
            species_dims=tuple(table.dims.values()) if table else None,
            use_species_table=cfg.use_species_table)  # fmt: skip
        torch.manual_seed(cfg.seed)
        model = BFM(model_config, data.norm, table)
        set_activation_checkpointing(model, bool(cfg.activation_checkpointing))
        check_same_model(Path(cfg.out), model_config)
        state = Run(cfg, plan, dist, ds_config, data, model_config, model)
        done = checkpoint.steps_done(state.dir)
        if done >= cfg.steps:
            return _already_done(state, done)
        return _train_loop(state)


def _already_done(run: Run, done: int) -> TrainResult:
    """A finished run re-invoked: refresh meta.json (rank 0), start no engine."""
    if run.dist.is_main:
        state = checkpoint.state_dir(run.dir)
        old = checkpoint.read_meta(state) if (state / checkpoint.META).is_file() else {}
        # The world size that trained it, not that of this invocation.
        meta = build_meta(run, done, old.get("world_size", run.dist.world_size))
        checkpoint.write_meta(state, meta)
        checkpoint.publish(run.dir, meta)
    log.info("%s already has %d >= %d steps; nothing to do", run.dir, done, run.cfg.steps)
    return TrainResult(0, done)


def _train_loop(run: Run) -> TrainResult:
    from tqdm import tqdm

    cfg, dist = run.cfg, run.dist
    stop = StopSignal(cfg.stop_margin(run.plan.config["train"] if run.plan else None),
                      TimeLimit.of_environment())  # fmt: skip
    if dist.world_size == 1:
        distributed.init_distributed(dist)
    engine = build_engine(run.model, cfg, run.ds_config)
    dtype = next(engine.module.parameters()).dtype
    start = checkpoint.resume(engine, run.dir, dist.world_size)
    sync_schedule(engine, cfg, start)
    if dist.is_main:
        checkpoint.truncate_metrics(run.dir, start)
        log.info(
            "training %s (%s, %d parameters) on %d rank(s), steps %d..%d",
            run.model_config.preset,
            precision(run.ds_config),
            count_parameters(run.model),
            dist.world_size,
            start,
            cfg.steps,
        )
    ga = engine.gradient_accumulation_steps()
    per_step = engine.train_micro_batch_size_per_gpu() * ga
    order = Order(len(run.data), engine.train_micro_batch_size_per_gpu(), cfg.seed,
                  dist.world_size, dist.rank)  # fmt: skip
    run.loader = open_loader(run.data, run.plan.config["train"] if run.plan else {}, order,
                             start * ga, cfg.steps * ga,
                             torch.device(engine.device).type == "cuda")  # fmt: skip
    # In a log file (SLURM, Snakemake) a bar redrawn 10 times a second is noise.
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        disable=not dist.is_main,
        unit="step",
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    step, signum = start, 0
    while step < cfg.steps and not signum:
        t0, lr = time.perf_counter(), engine.get_lr()[0]
        loss = mean_over_ranks(
            train_step(engine, run, step * ga, dtype), dist.world_size, engine.device
        )
        step += 1
        seconds = time.perf_counter() - t0
        if dist.is_main:
            checkpoint.append_metrics(
                run.dir,
                {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "seconds": round(seconds, 4),
                    "samples_per_s": round(per_step * dist.world_size / seconds, 3),
                },
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
        signum = stop.agreed(dist.world_size, engine.device)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or signum:
            checkpoint.save(engine, run.dir, step)
            if dist.is_main:
                meta = build_meta(run, step, dist.world_size)
                checkpoint.write_meta(checkpoint.state_dir(run.dir), meta)
                if step == cfg.steps:
                    checkpoint.publish(run.dir, meta)
    bar.close()
    run.loader.close()
    if signum:
        log.warning(
            "stopped by signal %d after step %d; checkpoint saved, resume by re-running",
            signum,
            step,
        )
        return TrainResult(128 + signum, step, engine)
    return TrainResult(0, step, engine)
