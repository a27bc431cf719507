"""The settings of one training run (``bfm train``), as a typed record."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any

TRAIN_KEYS = ("lr", "warmup_steps", "weight_decay", "checkpoint_every", "seed")


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
        return dict(sorted(d.items()))

    def schedule(self) -> dict[str, Any]:
        """The optimiser settings recorded in meta.json."""
        return {k: getattr(self, k) for k in TRAIN_KEYS}


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
