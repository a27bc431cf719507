"""``bfm evaluate``: score a trained model on held-out batches (docs/architecture.md, "Evaluation").

Samples pair batches exactly as training does (input batch t0, t1; target t1 + step). For
every dynamic variable and channel (pressure level, species key) the RMSE over the valid
points of all samples, in physical units, of three forecasts of the target:

- ``model``: the trained model (weights and normalisation from the run directory);
- ``persistence``: the input's last time;
- ``climatology``: the training statistics' mean of that channel.

A point is valid where both the target and the persistence value are finite (so the three
scores share one set of points; the model's input has NaN filled, its output is finite).

Output ``scores.jsonl``, one JSON object per line::

    {"variable": "atmospheric/t", "channel": "500", "n": 1234, "rmse_model": 1.2,
     "rmse_persistence": 1.9, "rmse_climatology": 4.1}

``channel`` is the level (hPa) or species key as a string for per-channel lines, and null for
the line that summarises a variable over all its channels (the only line of a variable with
one channel). An RMSE over no valid point is null. Runs on CPU with torch only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.layout import Layout, Normaliser, to_physical
from bfm.contracts.sample import Sample
from bfm.fileio import write_text_atomic
from bfm.model import BFM
from bfm.training.checkpoint import load_model
from bfm.training.data import BatchPairs, physical, to_sample
from bfm.workflow import load_plan

log = logging.getLogger("bfm.evaluate")
FORECASTS = ("model", "persistence", "climatology")
Sums = dict[str, dict[str, np.ndarray]]  # group -> {"n" | forecast: (C,) float64}


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "evaluate", __doc__, "score a trained model vs persistence and climatology"
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="RUN_DIR",
        help="training run directory (results/models/<run>) with meta.json",
    )
    p.add_argument(
        "--batches",
        nargs="+",
        required=True,
        metavar="FILE",
        help="held-out batch files; consecutive ones form (input, target) pairs",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="scores file to write (results/eval/<run>/scores.jsonl)",
    )
    add_config_argument(p, required=False)
    p.set_defaults(func=run)


def squared_errors(
    forecasts: dict[str, np.ndarray], target: np.ndarray, persistence: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-channel count of valid points and sums of squared errors.

    forecasts: name -> ``(C, H, W)``; target, persistence ``(C, H, W)`` with NaN = missing.
    Returns ``{"n": (C,), name: (C,)}`` (float64).
    """
    valid = np.isfinite(target) & np.isfinite(persistence)
    out = {"n": valid.sum(axis=(-2, -1)).astype(np.float64)}
    for name, f in forecasts.items():
        err = np.where(valid, f.astype(np.float64) - target.astype(np.float64), 0.0)
        out[name] = (err * err).sum(axis=(-2, -1))
    return out


@torch.no_grad()
def predict(model: BFM, sample: Sample, norm: Normaliser) -> dict[str, np.ndarray]:
    """Physical-unit prediction ``(C_g, H, W)`` per dynamic group for one sample."""
    pred = model(sample.input.batched())
    layout = model.config.layout
    return {g: to_physical(layout, norm, g, t[0].numpy()) for g, t in pred.items()}


def accumulate(model: BFM, data: BatchPairs) -> Sums:
    """Sums of squared errors of the three forecasts over every sample of ``data``."""
    norm, layout = model.normaliser(), model.config.layout
    sums: Sums = {}
    for i in range(len(data)):
        x, y = data.load(i)
        pred = predict(model, to_sample(x, y, layout, norm), norm)
        persistence, target = physical(x, y, layout)
        for g in layout.dynamic:
            clim = np.broadcast_to(norm.mean[g][:, None, None], target[g].shape)
            part = squared_errors(
                {"model": pred[g], "persistence": persistence[g], "climatology": clim},
                target[g],
                persistence[g],
            )
            sums[g] = {k: sums[g][k] + v for k, v in part.items()} if g in sums else part
    return sums


def _line(variable: str, channel: str | None, n: float, se: dict[str, float]) -> dict[str, Any]:
    rmse = {f"rmse_{k}": (float(np.sqrt(se[k] / n)) if n > 0 else None) for k in FORECASTS}
    return {"variable": variable, "channel": channel, "n": int(n), **rmse}


def score_lines(sums: Sums, layout: Layout) -> list[dict[str, Any]]:
    """Per-channel lines and one all-channel summary line per variable."""
    lines: list[dict[str, Any]] = []
    for g in layout.dynamic:
        inner = layout.inner(g)
        labels = layout.channel_labels(g)
        for v, var in enumerate(layout.variables(g)):
            ch = slice(v * inner, (v + 1) * inner)
            if layout.kind(g) in (DimsKind.LEVEL, DimsKind.SPECIES):
                for c in range(ch.start, ch.stop):
                    se = {k: float(sums[g][k][c]) for k in FORECASTS}
                    lines.append(_line(f"{g}/{var}", labels[c][1], float(sums[g]["n"][c]), se))
            se = {k: float(sums[g][k][ch].sum()) for k in FORECASTS}
            lines.append(_line(f"{g}/{var}", None, float(sums[g]["n"][ch].sum()), se))
    return lines


def write_lines(lines: list[dict[str, Any]], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in lines))


def run(args: argparse.Namespace) -> int:
    model, meta = load_model(args.model)
    plan = load_plan(args.config)
    data = BatchPairs(
        args.batches,
        model.normaliser(),
        layout=model.config.layout,
        settings_hash=plan.batch_settings_hash if plan is not None else None,
    )
    lines = score_lines(accumulate(model, data), model.config.layout)
    write_lines(lines, Path(args.out))
    for rec in lines:
        if rec["channel"] is None:
            log.info(
                "%-22s n=%-8d model %s  persistence %s  climatology %s",
                rec["variable"],
                rec["n"],
                rec["rmse_model"],
                rec["rmse_persistence"],
                rec["rmse_climatology"],
            )
    log.info(
        "scored %d samples of %s (step %s) -> %s",
        len(data),
        args.model,
        meta.get("steps_done"),
        args.out,
    )
    return 0
