"""``bfm train``: pre-train the BFM with DeepSpeed (DESIGN.md §8).

Reads top to bottom: arguments -> ranks -> data -> model -> engine -> resume -> loop
(NaN-masked weighted MSE, warmup + cosine LR, metrics, checkpoints, stop on SIGTERM/SIGUSR1)
-> final checkpoint and meta.json. Rank 0 alone writes metrics.jsonl and meta.json.

Launch with ``bfm train ...`` (one process), ``torchrun --nproc_per_node N -m bfm.cli train``
or ``srun bfm train ...``; see ``bfm.distributed`` for how ranks are found. A step is one
optimizer step (``gradient_accumulation_steps`` micro-batches of
``train_micro_batch_size_per_gpu`` samples on every rank). Samples are drawn from a per-epoch
permutation fixed by the seed, indexed by the global sample counter, so a resumed run sees
the same samples as an uninterrupted one.

Outputs in ``--out`` (layout in ``bfm.checkpoint``):

- ``metrics.jsonl``: one line per step, ``{"step": 12, "loss": 0.031, "lr": 0.002,
  "seconds": 0.05, "samples_per_s": 20.0}`` (loss averaged over ranks and micro-batches; lr
  the one the step used). Lines after the checkpoint a run resumes from are dropped.
- ``meta.json`` (``build_meta``): schema, created_at, bfm_version, git_commit, config_hash,
  config (the workflow's resolved config, else these arguments), stats_path, stats_sha256,
  model {preset, backbone, config}, parameters, deepspeed {path, zero_stage, precision, config},
  world_size, steps_done, steps_target, complete, checkpoint, final_loss, batches (names),
  train {lr, warmup_steps, weight_decay, checkpoint_every, seed}.
- ``checkpoints/step_NNNNNN`` every ``--checkpoint-every`` steps, at the end and on a signal.

Exit status: 0 when ``--steps`` are done (also for a finished run re-invoked, which only
rewrites meta.json); 128 + signal number after a SIGTERM/SIGUSR1 checkpoint, so a workflow
sees the run as unfinished and a re-run resumes it; 1 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from bfm import checkpoint, distributed
from bfm.data import BatchPairs
from bfm.model import BFM, PRESETS, ModelConfig, build_config, count_parameters, masked_mse
from bfm.provenance import file_sha256, provenance, resolved_config
from bfm.stats import load_stats

log = logging.getLogger("bfm.train")
MIN_LR_RATIO = 0.1  # cosine decays to 10 % of the peak


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pre-train the model with DeepSpeed",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", nargs="+", required=True, metavar="FILE",
                   help="training batch files <t0>.h5; consecutive ones form (input, target) pairs")
    p.add_argument("--stats", required=True, metavar="PATH",
                   help="statistics JSON (bfm stats) used to normalise inputs and targets")
    p.add_argument("--deepspeed", required=True, metavar="PATH",
                   help="DeepSpeed JSON: ZeRO stage, precision, micro-batch size, accumulation")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="model size preset (default: tiny)")
    p.add_argument("--backbone", default="swin3d", help="backbone (model.backbone): swin3d")
    p.add_argument("--steps", type=int, default=40, help="total optimizer steps (default: 40)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    p.add_argument("--warmup-steps", type=int, default=5,
                   help="linear warmup steps before the cosine decay (default: 5)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--checkpoint-every", type=int, default=20,
                   help="save a checkpoint every N steps (and always at the end)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and sample order")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run directory (results/models/<run>): checkpoints, metrics, meta.json")
    p.set_defaults(func=run)


@dataclass
class TrainResult:
    exit_code: int
    steps_done: int
    engine: Any = None


def run(args: argparse.Namespace) -> int:
    return train(args).exit_code


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine down to 10 % at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_indices(n: int, global_micro: int, micro: int, seed: int) -> list[int]:
    """Samples of one rank's micro-batch number ``global_micro`` (counted over all ranks)."""
    out = []
    for g in range(global_micro * micro, (global_micro + 1) * micro):
        epoch, pos = divmod(g, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[pos]))
    return out


def load_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--deepspeed: {path} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--deepspeed: {path} is not valid JSON ({err})") from err
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise ValueError(f"--deepspeed: {path} sets {key!r}; bfm train brings its own "
                             "AdamW and LR schedule (a config optimizer JIT-builds fused_adam)")
    cfg.setdefault("train_micro_batch_size_per_gpu", 1)
    cfg.setdefault("gradient_accumulation_steps", 1)
    return cfg


def precision(ds_config: dict[str, Any]) -> str:
    for name in ("bf16", "fp16"):
        if ds_config.get(name, {}).get("enabled"):
            return name
    return "fp32"


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (SLURM's warnings before the time limit) for the loop."""

    def __init__(self) -> None:
        self.signum = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def agreed(self, world_size: int, device: torch.device) -> int:
        """The signal any rank got (all ranks must checkpoint at the same step)."""
        if world_size == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=device)  # nccl reduces GPU tensors only
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI arguments as a JSON-able dict (the config when not run by the workflow)."""
    return {k: v for k, v in sorted(vars(args).items()) if k != "func"}


def build_meta(args: argparse.Namespace, cfg: ModelConfig, model: BFM, data: BatchPairs,
               ds_config: dict[str, Any], world_size: int) -> dict[str, Any]:
    """meta.json: everything needed to cite, reload and resume the run."""
    run_dir = Path(args.out)
    done = checkpoint.steps_done(run_dir)
    latest = checkpoint.find_latest(run_dir)
    config = resolved_config() or settings(args)
    return {
        "schema": "bfm-run/1",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **provenance(config),
        "config": config,
        "stats_path": str(args.stats),
        "stats_sha256": file_sha256(args.stats),
        "model": {"preset": cfg.preset, "backbone": cfg.backbone, "config": cfg.to_dict()},
        "parameters": count_parameters(model),
        "deepspeed": {"path": str(args.deepspeed), "zero_stage":
                      int(ds_config.get("zero_optimization", {}).get("stage", 0)),
                      "precision": precision(ds_config), "config": ds_config},
        "world_size": world_size,
        "steps_done": done,
        "steps_target": args.steps,
        "complete": done >= args.steps,
        "checkpoint": latest.name if latest else None,
        "final_loss": last_loss(run_dir, done),
        "batches": data.names,
        "train": {k: getattr(args, k) for k in ("lr", "warmup_steps", "weight_decay",
                                                "checkpoint_every", "seed")},
    }


def last_loss(run_dir: Path, step: int) -> float | None:
    """Loss logged at ``step`` in metrics.jsonl (None if absent)."""
    for rec in read_metrics(run_dir):
        if rec["step"] == step:
            return float(rec["loss"])
    return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = checkpoint.state_dir(run_dir) / checkpoint.METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(checkpoint.state_dir(run_dir) / checkpoint.METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be redone)."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
    path = checkpoint.state_dir(run_dir) / checkpoint.METRICS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def check_same_model(run_dir: Path, cfg: ModelConfig) -> None:
    state = checkpoint.state_dir(run_dir)
    if not (state / checkpoint.META).is_file() or checkpoint.find_latest(run_dir) is None:
        return
    old = checkpoint.read_meta(state)["model"]["config"]
    if old != cfg.to_dict():
        raise ValueError(f"--out {run_dir}: holds a run of a different model config; "
                         "use a new --out (or delete the old run)")


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict:
    """Move a collated sample to the device; model inputs in the engine's parameter dtype."""
    moved = {k: {g: t.to(device) for g, t in v.items()} if isinstance(v, dict) else v.to(device)
             for k, v in batch.items()}
    moved["inputs"] = {g: t.to(dtype) for g, t in moved["inputs"].items()}
    return moved


def train_step(engine: Any, data: BatchPairs, first_micro: int, args: argparse.Namespace,
               dtype: torch.dtype, world: int, rank: int) -> float:
    """One optimizer step over the accumulation micro-batches; the mean loss on this rank."""
    ga = engine.gradient_accumulation_steps()
    micro = engine.train_micro_batch_size_per_gpu()
    losses = []
    for m in range(ga):
        g = (first_micro + m) * world + rank
        samples = [data[i] for i in sample_indices(len(data), g, micro, args.seed)]
        batch = to_device(default_collate(samples), engine.device, dtype)
        pred = engine(batch["inputs"], batch["lat"], batch["lon"], batch["time"])
        loss = masked_mse(pred, batch["target"], batch["mask"], data.layout)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def mean_over_ranks(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world


def prefer_cpu_accelerator() -> None:
    """DeepSpeed must not go looking for a GPU that is not there (set before importing it)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def train(args: argparse.Namespace) -> TrainResult:
    # --- setup: ranks, data, model -----------------------------------------------------
    prefer_cpu_accelerator()
    dist = distributed.discover(os.environ)
    run_dir = Path(args.out)
    ds_config = load_ds_config(args.deepspeed)
    if args.steps < 1 or args.checkpoint_every < 1:
        raise ValueError(f"--steps and --checkpoint-every must be >= 1, got {args.steps}, "
                         f"{args.checkpoint_every}")
    data = BatchPairs(args.batches, load_stats(args.stats))
    cfg = build_config(args.preset, data.layout, backbone=args.backbone)
    torch.manual_seed(args.seed)
    model = BFM(cfg, data.norm)
    check_same_model(run_dir, cfg)
    if checkpoint.steps_done(run_dir) >= args.steps:
        return _already_done(args, dist, run_dir, ds_config, data, cfg, model)
    return _train_loop(args, dist, run_dir, ds_config, data, cfg, model)


def _already_done(args: argparse.Namespace, dist: distributed.DistEnv, run_dir: Path,
                  ds_config: dict[str, Any], data: BatchPairs, cfg: ModelConfig,
                  model: BFM) -> TrainResult:
    """A finished run re-invoked: refresh meta.json (rank 0), start no engine."""
    done = checkpoint.steps_done(run_dir)
    if dist.is_main:
        state = checkpoint.state_dir(run_dir)
        old = checkpoint.read_meta(state) if (state / checkpoint.META).is_file() else {}
        # The world size that trained it, not that of this invocation.
        world = old.get("world_size", dist.world_size)
        meta = build_meta(args, cfg, model, data, ds_config, world)
        checkpoint.write_meta(state, meta)
        checkpoint.publish(run_dir, meta)
    log.info("%s already has %d >= %d steps; nothing to do", run_dir, done, args.steps)
    return TrainResult(0, done)


def _engine(model: BFM, args: argparse.Namespace, ds_config: dict[str, Any]) -> Any:
    import deepspeed  # late: DS_ACCELERATOR must be set first

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        # Built by DeepSpeed on the optimizer it wraps; checkpointed and restored with it.
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_at(s, args.lr, args.warmup_steps, args.steps) / args.lr)

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=ds_config)
    return engine


def sync_schedule(engine: Any, args: argparse.Namespace, step: int) -> None:
    """Make the LR at ``step`` follow this invocation's schedule.

    A restored scheduler keeps the LR the old run ended with until its next step, and its
    peak; a resumed run with a new ``--steps`` or ``--lr`` must use the new schedule at once.
    """
    sched = engine.lr_scheduler
    sched.base_lrs = [args.lr for _ in sched.base_lrs]
    lr = lr_at(step, args.lr, args.warmup_steps, args.steps)
    for group in sched.optimizer.param_groups:
        group["lr"] = lr
    sched._last_lr = [lr for _ in sched.base_lrs]


def _train_loop(args: argparse.Namespace, dist: distributed.DistEnv, run_dir: Path,
                ds_config: dict[str, Any], data: BatchPairs, cfg: ModelConfig,
                model: BFM) -> TrainResult:
    from tqdm import tqdm

    stop = StopSignal()
    distributed.init_distributed(dist)
    engine = _engine(model, args, ds_config)
    dtype = next(engine.module.parameters()).dtype
    start = checkpoint.resume(engine, run_dir)
    sync_schedule(engine, args, start)
    if dist.is_main:
        truncate_metrics(run_dir, start)
        log.info("training %s (%s, %d parameters) on %d rank(s), steps %d..%d", cfg.preset,
                 precision(ds_config), count_parameters(model), dist.world_size, start, args.steps)
    per_step = engine.train_micro_batch_size_per_gpu() * engine.gradient_accumulation_steps()
    ga = engine.gradient_accumulation_steps()
    # In a log file (SLURM, Snakemake) a bar redrawn 10 times a second is noise.
    bar = tqdm(total=args.steps, initial=start, disable=not dist.is_main, unit="step",
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    step, signum = start, 0
    while step < args.steps and not signum:
        t0, lr = time.perf_counter(), engine.get_lr()[0]
        loss = train_step(engine, data, step * ga, args, dtype, dist.world_size, dist.rank)
        loss = mean_over_ranks(loss, dist.world_size, engine.device)
        step += 1
        seconds = time.perf_counter() - t0
        if dist.is_main:
            append_metrics(run_dir, {"step": step, "loss": loss, "lr": lr,
                                     "seconds": round(seconds, 4), "samples_per_s": round(
                                         per_step * dist.world_size / seconds, 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
        signum = stop.agreed(dist.world_size, engine.device)
        if step % args.checkpoint_every == 0 or step == args.steps or signum:
            checkpoint.save(engine, run_dir, step)
            if dist.is_main:
                meta = build_meta(args, cfg, engine.module, data, ds_config, dist.world_size)
                checkpoint.write_meta(checkpoint.state_dir(run_dir), meta)
                if step == args.steps:
                    checkpoint.publish(run_dir, meta)
    bar.close()
    if signum:
        log.warning("stopped by signal %d after step %d; checkpoint saved, resume by re-running",
                    signum, step)
        return TrainResult(128 + signum, step, engine)
    return TrainResult(0, step, engine)
