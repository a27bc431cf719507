"""``bfm species-glm``: the GLM baseline of the species scores (``bfm evaluate --glm``).

A Poisson GLM per count channel (each species' occurrence and effort): the count at a cell
one step ahead (the target of a training pair) against the environmental covariates of the
cell at the input's last time (``bfm.evaluation.sdm.covariate_channels``: every channel of
the groups that are not per species, the atmosphere at 850 and 500 hPa), standardised, with
their squares and one-hot categories (the same design as the SDM's GLM), scikit-learn's
``PoissonRegressor`` (log link, a small L2 penalty). Fitted on the training pairs only, on at
most ``--max-rows`` cell-steps drawn uniformly (seeded) so that memory is bounded at any
study size. A covariate missing at more than half the cell-steps is left out; the others'
gaps take their training mean (in the fit and the predictions, so every cell gets a
forecast); cell-steps with a missing target are left out; both are logged.

The fitted models are written with joblib (``results/species_glm/glm.joblib``: the
pipelines, the covariate labels and the channels they predict); ``SpeciesGLM.predict(batch)``
gives the expected count ``(C_g, H, W)`` of every count channel of a group from a batch's
second time, NaN where a covariate is missing. The layout is the batches' own (every group
of the study), so one GLM serves every training run and ablation.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.batch import Batch, read_batch
from bfm.contracts.layout import Layout
from bfm.fileio import atomic_path

log = logging.getLogger("bfm.species_glm")


@dataclass
class SpeciesGLM:
    """Per count group, per count channel, a fitted pipeline (None: too few data)."""

    layout: Layout
    levels: tuple[float, ...]
    labels: list[str]
    models: dict[str, list[Any]]
    columns: np.ndarray  # the covariates used (indices into labels)
    means: np.ndarray  # their training means, which fill their gaps

    def predict(self, batch: Batch) -> dict[str, np.ndarray]:
        """Expected counts ``(C_g, H, W)`` per group with count channels (non-count channels:
        NaN)."""
        from bfm.evaluation.sdm import covariate_channels, covariates_at_t1

        chans = covariate_channels(self.layout, self.levels)
        x = covariates_at_t1(batch, chans, self.layout)
        f, h, w = x.shape
        flat = impute(x.reshape(f, -1).T[:, self.columns], self.means)
        out = {}
        for g, models in self.models.items():
            pred = np.full((len(models), h * w), np.nan)
            for c, model in enumerate(models):
                if model is not None:
                    pred[c] = model.predict(flat)
            out[g] = pred.reshape(len(models), h, w)
        return out


def fit(paths: Sequence[str | Path], layout: Layout, levels: Sequence[float] = (850, 500),
        max_rows: int = 200_000, seed: int = 0) -> SpeciesGLM:  # fmt: skip
    """Poisson GLMs of every count channel on the training pairs of ``paths``."""
    from sklearn.linear_model import PoissonRegressor

    from bfm.evaluation.sdm import (
        categorical_columns,
        covariate_channels,
        covariates_at_t1,
        glm_pipeline,
    )
    from bfm.training.data import pair_batches

    pairs = pair_batches(list(paths))
    if not pairs:
        raise ValueError(f"--batches: no consecutive pair among {len(paths)} batch files")
    chans = covariate_channels(layout, levels)
    labels = [lab for _, _, lab in chans]
    categorical = categorical_columns(layout, chans)
    groups = [g for g in layout.dynamic if layout.count_channels(g).any()]
    rng = np.random.default_rng(seed)
    xs: list[np.ndarray] = []
    ys: dict[str, list[np.ndarray]] = {g: [] for g in groups}
    per_pair = max(1, max_rows // len(pairs))
    dropped = 0
    for pair in pairs:
        x, y = read_batch(pair.input), read_batch(pair.target)
        cov = covariates_at_t1(x, chans, layout).reshape(len(chans), -1).T
        pick = rng.choice(cov.shape[0], min(per_pair, cov.shape[0]), replace=False)
        targets = {g: layout.stack(g, y.groups[g])[1].reshape(layout.n_channels(g), -1)[:, pick].T
                   for g in groups}  # fmt: skip
        ok = np.ones(pick.size, bool)
        for t in targets.values():
            ok &= np.isfinite(t).all(1)
        dropped += int((~ok).sum())
        xs.append(cov[pick][ok])
        for g in groups:
            ys[g].append(targets[g][ok])
    xall = np.concatenate(xs)
    # A covariate missing at most cell-steps (an indicator known in few countries) is left
    # out; the others' gaps take the covariate's mean, in the fit and in every prediction.
    keep = np.isnan(xall).mean(0) <= 0.5
    means = np.nanmean(xall[:, keep], axis=0)
    xall = impute(xall[:, keep], means)
    index = np.cumsum(keep) - 1
    categorical = [(int(index[c]), n) for c, n in categorical if keep[c]]
    models: dict[str, list[Any]] = {}
    for g in groups:
        yall = np.concatenate(ys[g])
        counts = layout.count_channels(g)
        models[g] = []
        for c in range(layout.n_channels(g)):
            if not counts[c] or yall[:, c].sum() <= 0:
                models[g].append(None)
                continue
            model = glm_pipeline(categorical, xall.shape[1],
                                 PoissonRegressor(alpha=1e-4, max_iter=1000))  # fmt: skip
            model.fit(xall, yall[:, c])
            models[g].append(model)
    left_out = [lab for lab, k in zip(labels, keep, strict=True) if not k]
    log.info("fitted %d Poisson GLMs on %d cell-steps of %d training pairs (%d dropped: a "
             "missing target), %d covariates (left out, mostly missing: %s)",
             sum(m is not None for v in models.values() for m in v), len(xall), len(pairs),
             dropped, int(keep.sum()), left_out or "none")  # fmt: skip
    return SpeciesGLM(layout, tuple(float(v) for v in levels), labels, models,
                      np.nonzero(keep)[0], means)  # fmt: skip


def impute(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``x (N, F)`` with each NaN replaced by its column's mean."""
    return np.where(np.isfinite(x), x, means[None, :])


def save(glm: SpeciesGLM, path: str | Path) -> Path:
    import joblib

    path = Path(path)
    with atomic_path(path) as tmp:
        joblib.dump({"layout": glm.layout.to_dict(), "levels": glm.levels, "labels": glm.labels,
                     "models": glm.models, "columns": glm.columns, "means": glm.means},
                    tmp)  # fmt: skip
    return path


def load(path: str | Path) -> SpeciesGLM:
    import joblib

    try:
        state = joblib.load(path)
        return SpeciesGLM(Layout.from_dict(state["layout"]), tuple(state["levels"]),
                          list(state["labels"]), dict(state["models"]),
                          np.asarray(state["columns"]), np.asarray(state["means"]))  # fmt: skip
    except (OSError, KeyError, ValueError, EOFError, TypeError) as err:
        raise ValueError(f"{path}: not a species GLM of bfm species-glm ({err})") from err


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "species-glm", __doc__, "Poisson GLM baseline of the species scores")
    p.add_argument("--batches", nargs="+", required=True, metavar="FILE",
                   help="the training batches (consecutive ones form the pairs)")  # fmt: skip
    p.add_argument("--max-rows", type=int, default=200_000,
                   help="cell-steps drawn for the fit (default 200000)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--out", required=True, metavar="PATH", help="the .joblib file to write")
    add_config_argument(p, required=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bfm.workflow import load_plan

    if args.max_rows < 1:
        raise ValueError(f"--max-rows {args.max_rows} must be >= 1")
    load_plan(args.config)  # a plugin's groups are known once its module is loaded
    layout = Layout.from_batch(read_batch(sorted(args.batches)[0]))  # every group of the study
    save(fit(args.batches, layout, max_rows=args.max_rows, seed=args.seed), args.out)
    return 0
