"""The settings of one training run (``bfm train``), as a typed record.

The scale settings (``SCALE_KEYS``: gradient accumulation, activation checkpointing, nodes
and GPUs per node) come from the flags of the same name or, with ``--config``, from the
config's ``train.*`` keys (``TrainConfig.with_study``); a flag that disagrees with the config
is refused. Nodes x GPUs per node is the world size the run must have: it fixes the global
batch (micro-batch x ``grad_accum`` x world size), so it is science, checked against the
ranks the job actually has (``bfm.training.distributed.check_layout``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

TRAIN_KEYS = ("lr", "warmup_steps", "weight_decay", "checkpoint_every", "seed")
# Config keys train.* that bfm train also takes as flags (--grad-accum, ...); meta.json "train".
SCALE_KEYS = ("grad_accum", "activation_checkpointing", "nodes", "gpus_per_node")
# profiles/snellius warns training 600 s before the limit (--signal=USR1@600): the same margin.
STOP_BEFORE_LIMIT_S = 600


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``bfm train`` needs besides the data.

    Attributes:
        batches: training batch files; consecutive ones form (input, target) pairs.
        stats: statistics JSON used to normalise inputs and targets.
        deepspeed: DeepSpeed JSON (ZeRO stage, precision, micro-batch, accumulation).
        out: the run directory (results/models/<run>).
        preset, backbone: the model (``bfm.model.presets``).
        steps: total optimiser steps.
        lr, warmup_steps: peak learning rate, linear warm-up steps (cosine decay after).
        weight_decay: AdamW weight decay.
        checkpoint_every: checkpoint interval in steps (also at the end and on a signal).
        seed: seed of the weights and of the sample order.
        loss: ``mse`` or ``mae`` for continuous variables (counts: Poisson, always).
        loss_weights: ``"group/variable"`` -> weight of that variable in the loss (default 1).
        species_table: the species table (parquet) that gives each species its identity;
            required when the batches hold species, unless ``use_species_table`` is False.
        use_species_table: False is the ablation without species identity.
        drop_groups: batch groups the model does not read (an ablation, ``bfm.ablations``);
            the batches may still hold them.
        config: the study's config file (``--config``), or None for a run by hand.
        grad_accum: micro-batches per optimizer step on every rank (DeepSpeed's
            gradient_accumulation_steps); None until resolved (``with_study``), then 1 by hand.
        activation_checkpointing: recompute the backbone blocks' activations in the backward
            pass (less memory, same gradients); None until resolved.
        nodes, gpus_per_node: the layout the run must have (world size = nodes x
            gpus_per_node; on CPU, processes per node); None (by hand) checks nothing.
        stop_before_limit: seconds before the SLURM job's time limit at which to checkpoint
            and stop (``bfm.training.engine.StopSignal``); None: the config's
            ``train.stop_before_limit``, else :data:`STOP_BEFORE_LIMIT_S`. How the run
            computes, not what: not one of its settings.
    """

    batches: tuple[str, ...]
    stats: str
    deepspeed: str
    out: str
    preset: str = "tiny"
    backbone: str = "swin3d"
    steps: int = 40
    lr: float = 2e-3
    warmup_steps: int = 5
    weight_decay: float = 0.0
    checkpoint_every: int = 20
    seed: int = 0
    loss: str = "mse"
    loss_weights: tuple[tuple[str, float], ...] = ()
    species_table: str | None = None
    use_species_table: bool = True
    drop_groups: tuple[str, ...] = ()
    config: str | None = None
    grad_accum: int | None = None
    activation_checkpointing: bool | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    stop_before_limit: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"--steps and --checkpoint-every must be >= 1, got {self.steps}, "
                f"{self.checkpoint_every}"
            )
        if self.loss not in ("mse", "mae"):
            raise ValueError(f"--loss: {self.loss!r} is not mse or mae")
        if not self.lr > 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(
                f"--lr must be > 0 and --warmup-steps, --weight-decay >= 0, got "
                f"{self.lr}, {self.warmup_steps}, {self.weight_decay}"
            )
        for name in ("grad_accum", "nodes", "gpus_per_node"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value!r}")
        if self.stop_before_limit is not None and self.stop_before_limit < 0:
            raise ValueError(f"--stop-before-limit must be >= 0 s, got {self.stop_before_limit}")
        if (self.nodes is None) != (self.gpus_per_node is None):
            raise ValueError(
                f"--nodes and --gpus-per-node go together (got {self.nodes}, {self.gpus_per_node})"
            )

    def with_study(self, train: Mapping[str, Any] | None) -> TrainConfig:
        """The scale settings resolved: from the config's ``train`` section (``--config``)
        where the flags are unset, ValueError where a flag disagrees with it; without a
        config, 1 micro-batch per step and no checkpointing (nodes stay unchecked)."""
        train = train or {}
        defaults = {"grad_accum": 1, "activation_checkpointing": False}
        values: dict[str, Any] = {}
        for key in SCALE_KEYS:
            flag, study = getattr(self, key), train.get(key)
            if flag is not None and study is not None and flag != study:
                raise ValueError(
                    f"--{key.replace('_', '-')} {flag} disagrees with the config's "
                    f"train.{key}: {study} (the config is the study's record; drop the flag)"
                )
            values[key] = flag if flag is not None else study
            if values[key] is None and key in defaults:
                values[key] = defaults[key]
        return dataclasses.replace(self, **values)

    @property
    def world_size(self) -> int | None:
        """The ranks the run must have (nodes x gpus_per_node), None when unchecked."""
        if self.nodes is None or self.gpus_per_node is None:
            return None
        return self.nodes * self.gpus_per_node

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in vars(args).items() if k in names}
        kw["batches"] = tuple(str(b) for b in kw["batches"])
        kw["loss_weights"] = tuple(parse_weight(w) for w in kw.get("loss_weights") or ())
        kw["drop_groups"] = tuple(kw.get("drop_groups") or ())
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (the run's config when not run by the workflow)."""
        d = asdict(self)
        d["batches"] = list(self.batches)
        d["loss_weights"] = dict(self.loss_weights)
        d["drop_groups"] = list(self.drop_groups)
        d.pop("stop_before_limit")  # when to stop, not what is computed
        return dict(sorted(d.items()))

    def stop_margin(self, train: Mapping[str, Any] | None) -> int:
        """Seconds before the job's time limit to stop at: the flag, the config's
        ``train.stop_before_limit``, else :data:`STOP_BEFORE_LIMIT_S`."""
        if self.stop_before_limit is not None:
            return self.stop_before_limit
        return int((train or {}).get("stop_before_limit", STOP_BEFORE_LIMIT_S))

    def schedule(self) -> dict[str, Any]:
        """The optimiser and scale settings recorded in meta.json (``train``)."""
        return {k: getattr(self, k) for k in TRAIN_KEYS + SCALE_KEYS}


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``SCALE_KEYS`` (unset: the config's value, with --config)."""
    p.add_argument(
        "--grad-accum",
        type=int,
        metavar="N",
        help="micro-batches per optimizer step and rank (config train.grad_accum; default 1): "
        "global batch = micro-batch x N x world size",
    )
    p.add_argument(
        "--activation-checkpointing",
        nargs="?",
        const=True,
        type=parse_bool,
        metavar="BOOL",
        help="recompute the backbone's activations in the backward pass: less memory, the "
        "same gradients, ~1 more backbone forward per step (train.activation_checkpointing)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        metavar="N",
        help="nodes the run must have (train.nodes); with --gpus-per-node, the job's world "
        "size must be their product, else bfm train refuses to start",
    )
    p.add_argument(
        "--gpus-per-node",
        type=int,
        metavar="G",
        help="ranks per node the run must have: GPUs, or processes on CPU (train.gpus_per_node)",
    )
    p.add_argument(
        "--stop-before-limit",
        type=int,
        metavar="SECONDS",
        help="in a SLURM job, checkpoint and stop (exit 138) this long before the job's time "
        "limit, asked of squeue (config train.stop_before_limit; default "
        f"{STOP_BEFORE_LIMIT_S}; 0: only on SIGUSR1/SIGTERM)",
    )


def parse_bool(text: str) -> bool:
    """``true/yes/1/on`` or ``false/no/0/off`` (any case): what a shell passes for a bool."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_weight(text: str | tuple[str, float]) -> tuple[str, float]:
    """``"surface/t2m=2.5"`` -> ("surface/t2m", 2.5)."""
    if isinstance(text, tuple):
        return text
    key, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = -1.0
    if not sep or "/" not in key or not weight >= 0:
        raise ValueError(f"--loss-weight: expected GROUP/VARIABLE=WEIGHT (>= 0), got {text!r}")
    return key, weight
