"""NaN-masked, per-variable-weighted MSE in normalised space."""

from __future__ import annotations

import torch
from torch import Tensor

from bfm.contracts.layout import Layout


def masked_mse(
    pred: dict[str, Tensor],
    target: dict[str, Tensor],
    mask: dict[str, Tensor],
    layout: Layout,
    weights: dict[str, float] | None = None,
) -> Tensor:
    """Weighted mean over variables of each variable's MSE over its valid points.

    pred, target ``{g: (B, C_g, H, W)}``, mask the same shape, bool (True = target known).
    ``weights`` maps ``"group/variable"`` to a weight (default 1 for every variable). A
    variable with no valid point drops out; if none has one the loss is 0 (still a graph, so
    every rank can call backward).
    """
    weights = weights or {}
    total = next(iter(pred.values())).new_zeros((), dtype=torch.float32)
    weight_sum = 0.0
    for g in layout.dynamic:
        inner = layout.inner(g)
        err = (pred[g].float() - target[g].float()) ** 2 * mask[g]
        for v, var in enumerate(layout.variables(g)):
            ch = slice(v * inner, (v + 1) * inner)
            n = mask[g][:, ch].sum()
            if n == 0:
                continue
            w = float(weights.get(f"{g}/{var}", 1.0))
            total = total + w * err[:, ch].sum() / n
            weight_sum += w
    unused = sum(p.sum() * 0.0 for p in pred.values())
    return total / weight_sum + unused if weight_sum else total + unused
