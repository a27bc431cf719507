"""The training loss: per variable kind, latitude weighted, NaN-masked.

- continuous variables: MSE (or MAE) on normalised values;
- counts (species occurrences): the Poisson negative log-likelihood of the count under the
  predicted log-rate eta, ``exp(eta) - y eta`` (the ``log y!`` term is constant), divided by
  the channel's training mean count (``count_scale``): sparse counts then weigh in the loss
  like the other variables (the minimiser is unchanged);
- every point is weighted by its cell's area (cos latitude, mean 1 over the grid rows) and
  counted only where its target is known;
- the loss is the weighted mean over variables of each variable's mean over its known points
  (per-variable weights from the config, default 1); a variable with no known point drops
  out, and if none has one the loss is 0 (still a graph, so every rank can call backward).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import torch
from torch import Tensor

from bfm.contracts.catalogue import VariableKind
from bfm.contracts.layout import Layout

MAX_LOG_RATE = 20.0  # exp(20) ~ 5e8 records per cell and step: far beyond any real count


class LossKind(StrEnum):
    MSE = "mse"
    MAE = "mae"


def latitude_weights(lat: Tensor) -> Tensor:
    """``(H,)`` weights proportional to the cell area of each grid row, mean 1."""
    w = torch.cos(torch.deg2rad(lat.double())).clamp_min(0.0)
    return (w / w.mean()).float()


def pointwise(pred: Tensor, target: Tensor, kind: VariableKind, loss: LossKind) -> Tensor:
    """The per-point loss of one variable's channels."""
    p, t = pred.float(), target.float()
    if kind == VariableKind.COUNT:
        eta = p.clamp(max=MAX_LOG_RATE)
        return torch.exp(eta) - t * eta
    return (p - t) ** 2 if loss == LossKind.MSE else (p - t).abs()


def masked_loss(pred: dict[str, Tensor], target: dict[str, Tensor], mask: dict[str, Tensor],
                layout: Layout, lat: Tensor, weights: Mapping[str, float] | None = None,
                loss: LossKind | str = LossKind.MSE,
                count_scale: Mapping[str, Tensor] | None = None) -> Tensor:  # fmt: skip
    """The loss of the module docstring.

    pred, target ``{g: (B, C_g, H, W)}``, mask the same shape, bool (True = target known);
    lat ``(H,)`` degrees (or ``(B, H)``: row 0 is used); ``weights`` maps ``"group/variable"``
    to a weight; ``count_scale`` maps a group to its channels' mean counts ``(C_g,)`` (the
    normaliser's means; default 1).
    """
    weights, loss = weights or {}, LossKind(loss)
    lat = lat[0] if lat.dim() == 2 else lat
    w_lat = latitude_weights(lat)[:, None]  # (H, 1)
    total = next(iter(pred.values())).new_zeros((), dtype=torch.float32)
    weight_sum = 0.0
    for g in layout.dynamic:
        inner = layout.inner(g)
        known = mask[g].float() * w_lat.to(mask[g].device)
        for v, var in enumerate(layout.variables(g)):
            ch = slice(v * inner, (v + 1) * inner)
            n = known[:, ch].sum()
            if n == 0:
                continue
            kind = layout.variable_kind(g, var)
            err = pointwise(pred[g][:, ch], target[g][:, ch], kind, loss)
            if kind == VariableKind.COUNT and count_scale is not None and g in count_scale:
                scale = count_scale[g][ch].to(err.device, err.dtype).clamp_min(1e-6)
                err = err / scale[:, None, None]
            w = float(weights.get(f"{g}/{var}", 1.0))
            total = total + w * (err * known[:, ch]).sum() / n
            weight_sum += w
    unused = sum(p.sum() * 0.0 for p in pred.values())
    return total / weight_sum + unused if weight_sum else total + unused
