"""Metrics and cross-validation folds of species distribution models (``bfm finetune``).

Metrics of a suitability score ``p`` at presence (1) and background (0) points:

- ``auc_roc``: area under the ROC curve (scikit-learn's ``roc_auc_score``);
- ``auc_pr``: area under the precision-recall curve as average precision (scikit-learn);
- ``max_tss``: the true skill statistic ``sensitivity + specificity - 1`` at its best
  threshold, i.e. ``max(tpr - fpr)`` over the ROC curve's thresholds (Allouche et al. 2006);
- ``boyce``: the continuous Boyce index (Hirzel et al. 2006), as ecospat computes it: on
  ``res + 1`` moving windows of width ``window`` (a tenth of the score range by default)
  spanning the range of the scores of all points (presences and background: the "fit"), the
  ratio of the presences' share in the window to all points' share (P/E, rounded to 10
  digits); windows without any point are left out, as is a ratio equal to the next one (the
  last: equal to 1); the index is the Spearman correlation of the ratios with the windows'
  lower bounds. 1: presences ever more frequent as the score rises. ecospat's quirks are
  kept (its last window starts one unit past the top) so that the numbers agree with it.

Any metric needs both classes (``boyce`` at least two windows) and is None otherwise.

Folds:

- ``random_folds``: every point to one of k folds, uniformly at random (seeded);
- ``block_folds``: the points' cells grouped into square blocks of ``size`` degrees (from
  the grid's origin), and blocks dealt to folds so that folds hold similar numbers of
  presences (blocks in random order, each to the fold with the fewest presences so far);
  every point of a block is in the same fold, so a test point's neighbours are not trained on.
- ``autocorrelation_range``: the practical range of the covariates' spatial autocorrelation,
  the median over covariates of ``3 a`` of an exponential variogram
  ``sill (1 - exp(-h / a))`` (no nugget: a field without spatial structure then has a range
  below the first lag rather than an arbitrary one) fitted to each field's empirical
  semivariogram (distances in degrees of latitude, longitude scaled by ``cos(lat)``), which
  is how blockCV sizes blocks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _both(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def auc_roc(y: np.ndarray, p: np.ndarray) -> float | None:
    y = np.asarray(y, bool)
    return float(roc_auc_score(y, p)) if _both(y) else None


def auc_pr(y: np.ndarray, p: np.ndarray) -> float | None:
    y = np.asarray(y, bool)
    return float(average_precision_score(y, p)) if _both(y) else None


def max_tss(y: np.ndarray, p: np.ndarray) -> float | None:
    y = np.asarray(y, bool)
    if not _both(y):
        return None
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.max(tpr - fpr))


def boyce(y: np.ndarray, p: np.ndarray, res: int = 100,
          window: float | None = None) -> float | None:  # fmt: skip
    """The continuous Boyce index of scores ``p`` with presences ``y`` (module docstring)."""
    y = np.asarray(y, bool)
    p = np.asarray(p, np.float64)
    if not _both(y):
        return None
    fit, obs = p, p[y]
    lo, hi = float(fit.min()), float(fit.max())
    if hi <= lo:
        return None
    w = (hi - lo) / 10 if window is None else float(window)
    starts = lo + np.arange(res + 1) * ((hi - lo - w) / res)
    starts[-1] += 1.0  # ecospat's trick for its closed intervals: the last window is past the top
    ratios, kept = [], []
    for s in starts:
        e = np.mean((fit >= s) & (fit <= s + w))
        if e == 0:
            continue
        ratios.append(round(float(np.mean((obs >= s) & (obs <= s + w)) / e), 10))
        kept.append(s)
    f, h = np.asarray(ratios), np.asarray(kept)
    if f.size < 2:
        return None
    distinct = f != np.append(f[1:], 1.0)  # ecospat: drop a ratio equal to the next (last: to 1)
    f, h = f[distinct], h[distinct]
    if f.size < 2 or np.all(f == f[0]):
        return None
    return float(stats.spearmanr(f, h).statistic)


METRICS = {"auc_roc": auc_roc, "auc_pr": auc_pr, "max_tss": max_tss, "boyce": boyce}


def all_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    return {name: fn(y, p) for name, fn in METRICS.items()}


def random_folds(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold ``0..k-1`` of each of ``n`` points, balanced and shuffled."""
    return rng.permutation(np.arange(n) % k)


def block_ids(lat: np.ndarray, lon: np.ndarray, size: float) -> np.ndarray:
    """Block id of each point: its ``size``-degree square from (-90, -180)."""
    if not size > 0:
        raise ValueError(f"sdm.block_size_deg: {size} must be > 0")
    rows = np.floor((np.asarray(lat) + 90.0) / size).astype(np.int64)
    cols = np.floor((np.asarray(lon) + 180.0) / size).astype(np.int64)
    return rows * (int(360 / size) + 2) + cols


def block_folds(blocks: np.ndarray, presence: np.ndarray, k: int,
                rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Fold of each point: whole blocks to folds, balancing presences (module docstring)."""
    ids, inverse = np.unique(blocks, return_inverse=True)
    pres = np.bincount(inverse, weights=np.asarray(presence, np.float64), minlength=ids.size)
    size = np.bincount(inverse, minlength=ids.size)
    fold_of = np.empty(ids.size, np.int64)
    load = np.zeros((k, 2))
    for b in rng.permutation(ids.size):
        f = int(np.lexsort((load[:, 1], load[:, 0]))[0])
        fold_of[b] = f
        load[f] += (pres[b], size[b])
    return fold_of[inverse]


def semivariogram(field: np.ndarray, lat: np.ndarray, lon: np.ndarray, max_points: int = 1500,
                  bins: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Empirical semivariance of a 2-D field over distance bins (degrees): ``(h, gamma)``."""
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    ok = np.isfinite(field)
    x, y, z = lo[ok], la[ok], field[ok].astype(np.float64)
    if z.size < 10:
        return np.empty(0), np.empty(0)
    if z.size > max_points:
        pick = np.random.default_rng(seed).choice(z.size, max_points, replace=False)
        x, y, z = x[pick], y[pick], z[pick]
    i, j = np.triu_indices(z.size, 1)
    scale = np.cos(np.deg2rad((y[i] + y[j]) / 2))
    d = np.hypot((x[i] - x[j]) * scale, y[i] - y[j])
    g = 0.5 * (z[i] - z[j]) ** 2
    edges = np.linspace(0, d.max() / 2, bins + 1)  # the usual half of the largest distance
    which = np.digitize(d, edges) - 1
    keep = (which >= 0) & (which < bins)
    n = np.bincount(which[keep], minlength=bins)
    s = np.bincount(which[keep], weights=g[keep], minlength=bins)
    mid = (edges[:-1] + edges[1:]) / 2
    has = n > 0
    return mid[has], s[has] / n[has]


def variogram_range(h: np.ndarray, gamma: np.ndarray) -> float | None:
    """Practical range ``3 a`` of an exponential variogram fitted to ``(h, gamma)``, capped at
    the largest lag (a field still rising there has at least that range)."""
    if h.size < 4 or not np.isfinite(gamma).all() or gamma.max() <= 0:
        return None

    def model(d: np.ndarray, sill: float, a: float) -> np.ndarray:
        return sill * (1 - np.exp(-d / a))

    top = float(gamma.max())
    try:
        (_, a), _ = optimize.curve_fit(
            model, h, gamma, p0=(top, float(h.max()) / 3),
            bounds=([0, 1e-6], [10 * top, 10 * float(h.max())]), maxfev=5000,
        )  # fmt: skip
    except (RuntimeError, ValueError):
        return None
    return float(min(3 * a, h.max()))


def autocorrelation_range(fields: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> float | None:
    """Median practical range (degrees) over covariate fields ``(F, H, W)``; None if no fit."""
    ranges = [r for f in fields if (r := variogram_range(*semivariogram(f, lat, lon)))]
    return float(np.median(ranges)) if ranges else None


def block_size_for(range_deg: float | None, lat: np.ndarray, lon: np.ndarray, presence: np.ndarray,
                   k: int, res: float) -> float:  # fmt: skip
    """The block size: the autocorrelation range, shrunk (x 0.75) until at least ``2 k`` blocks
    hold presences, and never below the grid spacing (a multiple of it)."""
    size = range_deg if range_deg else 10 * res
    size = max(size, res)
    while size > res:
        occupied = np.unique(block_ids(lat[presence], lon[presence], size)).size
        if occupied >= 2 * k:
            break
        size = max(res, size * 0.75)
    return float(max(1, math.floor(size / res + 1e-9)) * res)
