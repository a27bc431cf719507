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
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm.training import distributed
from bfm.training.config import TrainConfig

log = logging.getLogger("bfm.train")

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


def parse_time_left(text: str) -> float | None:
    """Seconds in squeue's ``%L`` (``[days-][hours:]minutes:seconds``); None for a job
    without a limit (``UNLIMITED``, ``NOT_SET``, ``INVALID``)."""
    text = text.strip()
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (1 <= len(parts) <= 3) or not all(p.isdigit() for p in parts):
        return None
    if days and not days.isdigit():
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return float(seconds + 86400 * int(days or 0))


class TimeLimit:
    """When the SLURM job this process runs in reaches its time limit (``squeue -o %L``,
    asked again every ``refresh_s``: an administrator may extend a job). Outside SLURM, or
    when squeue cannot tell, there is no limit."""

    def __init__(self, job_id: str, refresh_s: float = 300.0) -> None:
        self.job_id, self.refresh_s = job_id, refresh_s
        self.deadline: float | None = None
        self._asked = -math.inf

    @classmethod
    def of_environment(cls) -> TimeLimit | None:
        job = os.environ.get("SLURM_JOB_ID")
        return cls(job) if job else None

    def seconds_left(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        if now - self._asked >= self.refresh_s:
            self._asked = now
            left = self._ask()
            if left is not None:
                self.deadline = now + left
        return None if self.deadline is None else self.deadline - now

    def _ask(self) -> float | None:
        import subprocess

        try:
            cmd = ["squeue", "-h", "-j", self.job_id, "-o", "%L"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return parse_time_left(out.stdout.splitlines()[0]) if out.stdout.strip() else None


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (SLURM's warnings before the time limit) for the loop, and
    raises SIGUSR1 itself ``margin_s`` before the job's time limit (``TimeLimit``): a job
    whose training runs in the batch step gets no ``--signal`` (SLURM signals job steps
    only), so the loop asks SLURM when the job ends instead."""

    def __init__(self, margin_s: float = 0.0, limit: TimeLimit | None = None) -> None:
        self.signum = 0
        self.margin_s, self.limit = margin_s, limit if margin_s > 0 else None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        left = self.limit.seconds_left() if self.limit is not None else None
        if left is not None and left <= margin_s:  # would stop at once: the limit is too short
            log.warning("the SLURM job's time limit is %.0f s away, within train."
                        "stop_before_limit (%.0f s): stopping on SIGUSR1/SIGTERM only",
                        left, margin_s)  # fmt: skip
            self.limit = None

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def _near_limit(self) -> bool:
        left = self.limit.seconds_left() if self.limit is not None else None
        if left is None or left > self.margin_s:
            return False
        log.warning("%.0f s left before the SLURM job's time limit (train.stop_before_limit "
                    "%.0f s): checkpointing and stopping", left, self.margin_s)  # fmt: skip
        return True

    def agreed(self, world_size: int, device: torch.device) -> int:
        """The signal any rank got (all ranks must checkpoint at the same step)."""
        if not self.signum and self._near_limit():
            self.signum = signal.SIGUSR1
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
