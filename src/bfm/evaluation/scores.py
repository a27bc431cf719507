"""Scores in WeatherBench 2's conventions on the regional grid, with bootstrap intervals.

Per sample (one forecast time) and channel, over the valid points (target, persistence and
climatology all finite), with latitude weights ``w = cos(lat)`` normalised to mean 1 over the
grid's rows (WeatherBench 2's area weighting):

- ``rmse = sqrt(sum_s sum w e^2 / sum_s sum w)``: the root of the weighted mean squared error
  over all points of all samples (WB2 averages the MSE over times before the root);
- ``bias = mean(w e)``, ``mae = mean(w |e|)`` likewise;
- ``acc``: per sample ``sum w f' o' / sqrt(sum w f'^2 sum w o'^2)`` with anomalies from the
  climatology (``f' = f - c``, ``o' = o - c``), then the mean over samples (WB2's ACC). The
  climatology's own ACC is undefined (its anomaly is zero) and left out.

Counts (species occurrence, sampling effort) add, per forecast of the expected count ``mu``
(floored at 1e-6): the mean Poisson deviance ``2 (y log(y / mu) - (y - mu))``, the Brier score
of presence (``p = 1 - exp(-mu)`` against ``y > 0``) and the AUC of ``p`` for presence
(unweighted, every valid point; from histograms of ``p`` on 2,000 bins, exact up to ties
within a bin).

**Intervals**: ``<metric>_ci`` is the 95 % percentile interval of ``rmse`` (and of the model's
``acc``) over ``n_boot`` bootstrap resamples of the samples (forecast times), seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = 2000
EPS = 1e-6
KEYS = ("w", "se", "e", "ae", "fo", "ff", "oo", "dev", "brier")


def lat_weights(latitudes: np.ndarray) -> np.ndarray:
    """``cos(lat)`` normalised to mean 1 over the rows, ``(H,)``."""
    w = np.cos(np.deg2rad(np.asarray(latitudes, np.float64)))
    return w / w.mean()


@dataclass
class Accumulator:
    """Per-sample sums of one group's channels for several forecasts."""

    forecasts: tuple[str, ...]
    counts: np.ndarray  # bool (C,): count channels
    rows: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)
    n: list[np.ndarray] = field(default_factory=list)
    hist: dict[str, np.ndarray] = field(default_factory=dict)  # forecast -> (C, 2, BINS)

    def add(self, forecasts: Mapping[str, np.ndarray], target: np.ndarray, valid: np.ndarray,
            climatology: np.ndarray, weights: np.ndarray) -> None:  # fmt: skip
        """One sample: forecasts and target ``(C, H, W)``, ``valid`` bool, weights ``(H,)``."""
        w = np.where(valid, weights[None, :, None], 0.0)
        o = np.where(valid, target.astype(np.float64), 0.0)
        c = np.where(valid, climatology.astype(np.float64), 0.0)
        axes = (-2, -1)
        row: dict[str, dict[str, np.ndarray]] = {}
        for name in self.forecasts:
            f = np.where(valid, forecasts[name].astype(np.float64), 0.0)
            e = f - o
            fa, oa = f - c, o - c
            sums = {"w": w.sum(axes), "se": (w * e * e).sum(axes), "e": (w * e).sum(axes),
                    "ae": (w * np.abs(e)).sum(axes), "fo": (w * fa * oa).sum(axes),
                    "ff": (w * fa * fa).sum(axes), "oo": (w * oa * oa).sum(axes)}  # fmt: skip
            if self.counts.any():
                mu = np.maximum(f, EPS)
                y = np.maximum(o, 0.0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ylog = np.where(y > 0, y * np.log(y / mu), 0.0)
                dev = 2.0 * (ylog - (y - mu))
                p = 1.0 - np.exp(-mu)
                present = (y > 0).astype(np.float64)
                sums["dev"] = (w * dev).sum(axes)
                sums["brier"] = (w * (p - present) ** 2).sum(axes)
                self._histogram(name, p, present > 0, valid)
            row[name] = sums
        self.rows.append(row)
        self.n.append(valid.sum(axes).astype(np.float64))

    def _histogram(self, name: str, p: np.ndarray, present: np.ndarray,
                   valid: np.ndarray) -> None:  # fmt: skip
        hist = self.hist.setdefault(name, np.zeros((len(self.counts), 2, BINS)))
        bins = np.clip((p * BINS).astype(np.int64), 0, BINS - 1)
        for ch in np.flatnonzero(self.counts):
            ok = valid[ch]
            for label in (0, 1):
                sel = ok & (present[ch] == bool(label))
                hist[ch, label] += np.bincount(bins[ch][sel], minlength=BINS)

    def stacked(self, name: str, key: str) -> np.ndarray:
        """``(S, C)`` per-sample sums of ``key`` for forecast ``name``."""
        return np.stack([r[name][key] for r in self.rows]) if self.rows else np.zeros((0, 0))


def auc(hist: np.ndarray) -> float | None:
    """AUC from ``(2, BINS)`` histograms of negatives and positives (ties count half)."""
    neg, pos = hist[0], hist[1]
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (n_neg * n_pos))


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def _acc(fo: np.ndarray, ff: np.ndarray, oo: np.ndarray) -> float | None:
    """Mean over samples (and channels) of the per-sample ACC; None where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per = fo / np.sqrt(ff * oo)
    per = per[np.isfinite(per)]
    return float(per.mean()) if per.size else None


def summarise(acc: Accumulator, channels: Sequence[int], n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The metrics of ``channels`` pooled (module docstring), with bootstrap intervals."""
    ch = list(channels)
    out: dict[str, Any] = {"n": int(np.stack(acc.n)[:, ch].sum()) if acc.n else 0}
    if not acc.rows:
        return out
    rng = np.random.default_rng(seed)
    s = len(acc.rows)
    draws = rng.integers(0, s, size=(n_boot, s)) if n_boot > 0 else np.zeros((0, s), int)
    counts = bool(acc.counts[ch].all())
    for name in acc.forecasts:
        get = {k: acc.stacked(name, k)[:, ch] for k in ("w", "se", "e", "ae", "fo", "ff", "oo")}
        w = get["w"].sum()
        out[f"rmse_{name}"] = float(np.sqrt(get["se"].sum() / w)) if w > 0 else None
        out[f"bias_{name}"] = _ratio(get["e"].sum(), w)
        out[f"mae_{name}"] = _ratio(get["ae"].sum(), w)
        if name != "climatology":
            out[f"acc_{name}"] = _acc(get["fo"], get["ff"], get["oo"])
        if len(draws) and w > 0:
            se, ws = get["se"].sum(1)[draws].sum(1), get["w"].sum(1)[draws].sum(1)
            boot = np.sqrt(se / np.maximum(ws, 1e-300))
            out[f"rmse_{name}_ci"] = [float(v) for v in np.percentile(boot, [2.5, 97.5])]
            if name == "model":
                accs = [_acc(get["fo"][d], get["ff"][d], get["oo"][d]) for d in draws[:200]]
                vals = [a for a in accs if a is not None]
                if vals:
                    out["acc_model_ci"] = [float(v) for v in np.percentile(vals, [2.5, 97.5])]
        if counts:
            out[f"deviance_{name}"] = _ratio(acc.stacked(name, "dev")[:, ch].sum(), w)
            out[f"brier_{name}"] = _ratio(acc.stacked(name, "brier")[:, ch].sum(), w)
            out[f"auc_{name}"] = auc(acc.hist[name][ch].sum(0)) if name in acc.hist else None
    return out
