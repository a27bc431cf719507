"""The pieces the training loop is built from: DeepSpeed config and engine, the learning-rate
schedule, the sample order, stop signals and the mean over ranks.

Gradient accumulation is a study setting (config ``train.grad_accum``, ``--grad-accum``):
``load_ds_config`` writes it into DeepSpeed's ``gradient_accumulation_steps`` and refuses a
DeepSpeed JSON that says otherwise, so the global batch (micro-batch x grad_accum x world
size, ``batch_layout``) has one source. ZeRO stages 0-3 all take our torch AdamW (no
JIT-built optimizer op); each rank runs on GPU ``local_rank % device_count`` (``--gpu-bind``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm.training import distributed
from bfm.training.config import TrainConfig

MIN_LR_RATIO = 0.1  # cosine decays to 10 % of the peak


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


def load_ds_config(path: str | Path, grad_accum: int = 1) -> dict[str, Any]:
    """The DeepSpeed JSON with ``gradient_accumulation_steps`` = ``grad_accum``; ValueError for
    a JSON that brings an optimizer or schedule, or other accumulation steps."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--deepspeed: {path} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--deepspeed: {path} is not valid JSON ({err})") from err
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise ValueError(
                f"--deepspeed: {path} sets {key!r}; bfm train brings its own "
                "AdamW and LR schedule (a config optimizer JIT-builds fused_adam)"
            )
    own = cfg.get("gradient_accumulation_steps", grad_accum)
    if own != grad_accum:
        raise ValueError(
            f"--deepspeed: {path} sets gradient_accumulation_steps={own!r} but "
            f"train.grad_accum (--grad-accum) is {grad_accum}; set it in the config alone"
        )
    if "train_batch_size" in cfg:
        raise ValueError(
            f"--deepspeed: {path} sets train_batch_size; it follows from "
            "train_micro_batch_size_per_gpu x train.grad_accum x the world size"
        )
    cfg.setdefault("train_micro_batch_size_per_gpu", 1)
    cfg["gradient_accumulation_steps"] = grad_accum
    return cfg


def batch_layout(ds_config: dict[str, Any], world_size: int, local_world_size: int | None,
                 cfg: TrainConfig) -> dict[str, Any]:  # fmt: skip
    """meta.json ``ranks``: the layout that trained the run and the global batch it implies
    (nodes and GPUs per node as configured; as the launcher said when not configured)."""
    micro = ds_config["train_micro_batch_size_per_gpu"]
    ga = ds_config["gradient_accumulation_steps"]
    per_node = cfg.gpus_per_node or local_world_size
    nodes = cfg.nodes or (world_size // per_node if per_node else None)
    return {
        "world_size": world_size,
        "nodes": nodes,
        "gpus_per_node": per_node,
        "micro_batch": micro,
        "grad_accum": ga,
        "global_batch": micro * ga * world_size,
    }


def precision(ds_config: dict[str, Any]) -> str:
    for name in ("bf16", "fp16"):
        if ds_config.get(name, {}).get("enabled"):
            return name
    return "fp32"


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_engine(model: torch.nn.Module, cfg: TrainConfig, ds_config: dict[str, Any]) -> Any:
    """The DeepSpeed engine with our AdamW and warmup + cosine schedule (no JIT-built ops)."""
    import deepspeed  # late: DS_ACCELERATOR must be set first

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        # Built by DeepSpeed on the optimizer it wraps; checkpointed and restored with it.
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_at(s, cfg.lr, cfg.warmup_steps, cfg.steps) / cfg.lr
        )

    # DeepSpeed would take cuda:LOCAL_RANK, which does not exist when each task sees one GPU.
    args = None
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        args = argparse.Namespace(
            device_rank=distributed.device_index(local_rank, torch.cuda.device_count())
        )
    engine, *_ = deepspeed.initialize(
        args=args, model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config
    )
    return engine


def sync_schedule(engine: Any, cfg: TrainConfig, step: int) -> None:
    """Make the LR at ``step`` follow this invocation's schedule.

    A restored scheduler keeps the LR the old run ended with until its next step, and its
    peak; a resumed run with a new ``--steps`` or ``--lr`` must use the new schedule at once.
    """
    sched = engine.lr_scheduler
    sched.base_lrs = [cfg.lr for _ in sched.base_lrs]
    lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
    for group in sched.optimizer.param_groups:
        group["lr"] = lr
    sched._last_lr = [lr for _ in sched.base_lrs]


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


def mean_over_ranks(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world


def all_ok(ok: bool, world: int, device: torch.device) -> bool:
    """True on every rank iff ``ok`` on every rank."""
    if world == 1:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag)
    return int(flag.item()) == 0
