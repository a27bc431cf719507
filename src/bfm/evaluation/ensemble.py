"""An ensemble of perturbed initial states, and its scores: CRPS and the spread-skill ratio.

Members: member 0 is the unperturbed forecast; members 1..M-1 add Gaussian noise of standard
deviation ``noise`` (in units of each channel's training std: the model's own normalised
space) to every known input value of the dynamic groups, seeded per member and forecast
start. Each member is rolled out on its own. This samples the forecast's sensitivity to its
initial state only (not model error), so it is a lower bound of the forecast uncertainty;
with a single deterministic model it is the documented substitute for an ensemble of seeds.

Scores per channel, latitude-weighted like ``bfm.evaluation.scores``, over the valid points:

- ``crps``: the ensemble CRPS ``mean_i |x_i - y| - 1/(2 M^2) sum_ij |x_i - x_j|`` (the
  energy form; equal to the MAE for one member);
- ``spread``: the root of the weighted mean of the unbiased ensemble variance;
  ``rmse_ensemble_mean``: the RMSE of the members' mean; ``spread_skill`` =
  ``sqrt((M + 1) / M) * spread / rmse_ensemble_mean`` (WeatherBench 2's ratio: 1 for a
  reliable ensemble, below 1 for an over-confident one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bfm.contracts.sample import ModelInput


def perturb(inputs: ModelInput, groups: Sequence[str], noise: float, seed: int) -> ModelInput:
    """``inputs`` with N(0, noise^2) added to the known values of ``groups``."""
    gen = torch.Generator().manual_seed(int(seed))
    new = dict(inputs.inputs)
    for g in groups:
        x = inputs.inputs[g]
        eps = torch.randn(x.shape, generator=gen, dtype=x.dtype) * float(noise)
        known = 1.0 - inputs.missing[g] if inputs.missing is not None else 1.0
        new[g] = x + eps * known
    return dataclasses.replace(inputs, inputs=new)


def crps(members: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pointwise ensemble CRPS of ``members (M, ...)`` against ``target (...)``."""
    skill = np.abs(members - target[None]).mean(0)
    m = members.shape[0]
    ordered = np.sort(members, axis=0)
    # sum_ij |x_i - x_j| = 2 sum_i (2 i - M + 1) x_(i) over the sorted members (0-based i)
    ranks = (2 * np.arange(m) - m + 1).reshape((m,) + (1,) * (members.ndim - 1))
    spread = 2.0 * (ranks * ordered).sum(0)
    return skill - spread / (2.0 * m * m)


@dataclass
class EnsembleSums:
    """Weighted sums over samples of one group's channels."""

    members: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, members: np.ndarray, target: np.ndarray, valid: np.ndarray,
            weights: np.ndarray) -> None:  # fmt: skip
        """``members (M, C, H, W)``, ``target (C, H, W)``, ``valid`` bool, weights ``(H,)``."""
        w = np.where(valid, weights[None, :, None], 0.0)
        x = np.where(valid[None], members.astype(np.float64), 0.0)
        y = np.where(valid, target.astype(np.float64), 0.0)
        mean = x.mean(0)
        var = x.var(0, ddof=1) if self.members > 1 else np.zeros_like(mean)
        part = {"w": w.sum((-2, -1)), "crps": (w * crps(x, y)).sum((-2, -1)),
                "var": (w * var).sum((-2, -1)),
                "se_mean": (w * (mean - y) ** 2).sum((-2, -1))}  # fmt: skip
        for k, v in part.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def summary(self, channels: Sequence[int]) -> dict[str, Any]:
        if not self.sums:
            return {}
        ch = list(channels)
        w = float(np.sum(self.sums["w"][ch]))
        if w <= 0:
            return {"crps_ensemble": None, "spread_skill": None}
        rmse = float(np.sqrt(np.sum(self.sums["se_mean"][ch]) / w))
        spread = float(np.sqrt(np.sum(self.sums["var"][ch]) / w))
        ratio = np.sqrt((self.members + 1) / self.members) * spread / rmse if rmse > 0 else None
        return {"members": self.members, "crps_ensemble": float(np.sum(self.sums["crps"][ch]) / w),
                "spread": spread, "rmse_ensemble_mean": rmse,
                "spread_skill": float(ratio) if ratio is not None else None}  # fmt: skip
