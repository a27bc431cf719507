"""``bfm finetune``: species distribution models on the pre-trained BFM, against GLM and MaxEnt.

**Points.** For each species of the set, every cell and step (the second time ``t1`` of
every batch) where it was recorded is a *presence*. Pseudo-absences come from a
*target-group background*: the cell-steps where its class was recorded (the species tile's
``effort`` > 0, ``bfm.sources.gbif_effort``) but the species was not, drawn without
replacement with probability proportional to the effort (so the background has the
presences' sampling bias, Phillips et al. 2009), ``background_per_presence`` per presence,
independently for each of ``replicates`` (>= 5) replicates.

**Covariates.** Every environmental channel at ``t1`` (all groups but the species', the
atmosphere at ``levels``); a categorical channel (soil type) is one-hot for the GLM and
categorical for MaxEnt. Covariates mostly missing at the points (> half: an indicator known
in few countries) are left out; the others' gaps take the covariate's mean over the points
(the same values for the GLM and MaxEnt; the model sees them as missing); both are counted
in ``summary.json``.

**Models**, fitted on the same points:

- ``bfm``: a head (``Linear -> GELU -> Linear``, one logit per species) on the *frozen*
  model's cell features (``BFM.cell_features``: the latent levels of the cell's patch after
  the backbone, plus the local pathway's features). The model sees the batch with the whole
  species group masked as missing (neither the occurrences it is asked about nor the effort),
  so it knows what the GLM and MaxEnt know: the environment (of two times) and where it is.
  Weighted binary cross-entropy (presences weighted up to balance), Adam, full batch.
- ``bfm_lora`` (``lora: true``): the same head trained jointly with LoRA adapters (peft) on
  the backbone's attention and MLP layers, the rest frozen.
- ``glm``: logistic regression (scikit-learn) on the standardised covariates and their
  squares (the usual quadratic SDM GLM), one-hot categories.
- ``maxent``: ``elapid.MaxentModel`` (linear, quadratic and hinge features, beta 1.5,
  cloglog output) on the same covariates.

**Cross-validation** (``bfm.evaluation.sdm_metrics``): spatial block CV, the blocks
``block_size_deg`` wide (``auto``: the covariates' autocorrelation range) and dealt to
``folds`` folds, the same blocks for every species; and random CV beside it. Per species,
replicate and fold the model is fitted on the other folds and scored on the held-out one
(AUC-ROC, AUC-PR, max-TSS, continuous Boyce); a replicate's metric is the mean over its folds
that have both classes; the output gives mean and sd over replicates.

**Outputs** (``--out`` a directory): ``metrics.jsonl``, one line per species x method x CV
scheme::

    {"species": "Mustela lutreola", "key": 9321420387, "method": "glm", "cv": "spatial",
     "replicates": 5, "folds": 5, "block_size_deg": 3.0, "n_presence": 243,
     "n_background": 729, "auc_roc": 0.81, "auc_roc_sd": 0.01, "auc_pr": ..., "max_tss": ...,
     "boyce": ..., ...}

``heads.pt``, the ``bfm`` (and ``bfm_lora``) heads fitted on all points of the first
replicate, for suitability maps (``load_heads``; ``Heads.suitability``); and
``summary.json`` (covariates, dropped points and covariates, the autocorrelation range and
block size, timings).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.batch import Batch, read_batch
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.sample import ModelInput
from bfm.evaluation import sdm_metrics as M
from bfm.fileio import atomic_path, write_text_atomic
from bfm.model import BFM

log = logging.getLogger("bfm.finetune")
CV_SCHEMES = ("spatial", "random")
LORA_TARGETS = r".*\.(qkv|proj|fc1|fc2)$"


@dataclass(frozen=True)
class Settings:
    """The config's ``sdm`` section (defaults as in the schema)."""

    replicates: int = 5
    folds: int = 5
    background_per_presence: float = 3.0
    block_size_deg: float | None = None  # None: from the autocorrelation range
    levels: tuple[float, ...] = (850.0, 500.0)
    methods: tuple[str, ...] = ("bfm", "glm", "maxent")
    lora: bool = False
    seed: int = 0
    head_hidden: int = 32
    head_steps: int = 200
    head_lr: float = 0.01
    weight_decay: float = 1e-3
    lora_rank: int = 4
    lora_epochs: int = 3
    lora_lr: float = 0.003

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> Settings:
        s = dict(section or {})
        s.pop("sets", None)
        block = s.pop("block_size_deg", "auto")
        known = {k: v for k, v in s.items() if k in cls.__dataclass_fields__}
        for k in ("levels", "methods"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(block_size_deg=None if block in (None, "auto") else float(block), **known)

    def check(self) -> None:
        if self.replicates < 1 or self.folds < 2:
            raise ValueError(f"sdm: replicates {self.replicates} must be >= 1 and folds "
                             f"{self.folds} >= 2")  # fmt: skip
        if not self.background_per_presence > 0:
            raise ValueError("sdm.background_per_presence must be > 0")
        unknown = set(self.methods) - {"bfm", "glm", "maxent"}
        if unknown:
            raise ValueError(f"sdm.methods: unknown {sorted(unknown)} (bfm, glm, maxent)")


# --- points -------------------------------------------------------------------------------


@dataclass
class Points:
    """Every point any species or replicate uses: batch index, row, column (``U``), and per
    species the presences and each replicate's background, as indices into ``U``."""

    batch: np.ndarray
    row: np.ndarray
    col: np.ndarray
    presence: list[np.ndarray]  # per species: indices of its presences
    background: list[list[np.ndarray]]  # per species, per replicate
    candidates: list[int]  # per species: background candidates (effort > 0, not recorded)

    def __len__(self) -> int:
        return int(self.batch.size)

    def dataset(self, s: int, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Species ``s``, replicate ``r``: point indices and labels (True = presence)."""
        bg = self.background[s][r]
        idx = np.concatenate([self.presence[s], bg])
        return idx, np.concatenate([np.ones(self.presence[s].size, bool), np.zeros(bg.size, bool)])

    def subset(self, keep: np.ndarray) -> Points:
        """The points where ``keep`` (bool over ``U``), indices renumbered."""
        new = np.full(len(self), -1, np.int64)
        new[keep] = np.arange(int(keep.sum()))

        def remap(ix: np.ndarray) -> np.ndarray:
            out = new[ix]
            return out[out >= 0]

        return Points(self.batch[keep], self.row[keep], self.col[keep],
                      [remap(p) for p in self.presence],
                      [[remap(b) for b in reps] for reps in self.background],
                      self.candidates)  # fmt: skip


def species_at_t1(batch: Batch, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Occurrence and effort ``(S, H, W)`` at the batch's second time, in the order of
    ``keys``."""
    group = batch.groups.get("species")
    if group is None or "occurrence" not in group or "effort" not in group:
        raise ValueError(f"{batch.source}: no species occurrence and effort (bfm finetune needs "
                         "the species tile's occurrence and effort variables)")  # fmt: skip
    order = [list(batch.species).index(k) if k in batch.species else -1 for k in keys]
    if -1 in order:
        missing = [k for k, o in zip(keys, order, strict=True) if o < 0]
        raise ValueError(f"{batch.source}: species {missing} not in the batch")
    occ, eff = (np.nan_to_num(group[v][1][order].astype(np.float64))
                for v in ("occurrence", "effort"))  # fmt: skip
    return occ, eff


def sample_points(paths: Sequence[Path], keys: Sequence[int], settings: Settings,
                  read: Callable[[Path], Batch] = read_batch) -> Points:  # fmt: skip
    """Presences and the replicates' target-group backgrounds (module docstring).

    Two passes over the batches, memory bounded by the points kept: the first counts the
    presences (so the background size is known), the second draws each background by
    weighted reservoir sampling (Efraimidis-Spirakis keys ``log(u) / effort``, the largest
    kept)."""
    n_s = len(keys)
    pres: list[list[np.ndarray]] = [[] for _ in range(n_s)]
    cand = np.zeros(n_s, np.int64)
    for b, path in enumerate(tqdm(paths, desc="presences", unit="batch", leave=False)):
        occ, eff = species_at_t1(read(path), keys)
        for s in range(n_s):
            i, j = np.nonzero(occ[s] > 0)
            pres[s].append(np.stack([np.full(i.size, b), i, j], 1))
            cand[s] += int(((eff[s] > 0) & (occ[s] <= 0)).sum())
    presence = [np.concatenate(p) if p else np.empty((0, 3), np.int64) for p in pres]
    want = [min(int(cand[s]), int(round(settings.background_per_presence * len(presence[s]))))
            for s in range(n_s)]  # fmt: skip
    for s in range(n_s):
        if len(presence[s]) and want[s] < settings.background_per_presence * len(presence[s]):
            log.warning("species %s: %d background candidates for %d presences: every "
                        "replicate takes all of them", keys[s], cand[s],
                        len(presence[s]))  # fmt: skip
    best: list[list[tuple[np.ndarray, np.ndarray]]] = [
        [(np.empty(0), np.empty((0, 3), np.int64))] * settings.replicates for _ in range(n_s)
    ]
    rng = np.random.default_rng(settings.seed)
    for b, path in enumerate(tqdm(paths, desc="background", unit="batch", leave=False)):
        occ, eff = species_at_t1(read(path), keys)
        for s in range(n_s):
            i, j = np.nonzero((eff[s] > 0) & (occ[s] <= 0))
            if not i.size or not want[s]:
                continue
            w = eff[s][i, j]
            where = np.stack([np.full(i.size, b), i, j], 1)
            for r in range(settings.replicates):
                keys_r = np.log(rng.random(i.size)) / w
                k_all = np.concatenate([best[s][r][0], keys_r])
                p_all = np.concatenate([best[s][r][1], where])
                if k_all.size > want[s]:
                    top = np.argpartition(-k_all, want[s] - 1)[: want[s]]
                    k_all, p_all = k_all[top], p_all[top]
                best[s][r] = (k_all, p_all)
    return _index(presence, [[p for _, p in reps] for reps in best], [int(c) for c in cand])


def _index(presence: list[np.ndarray], background: list[list[np.ndarray]],
           candidates: list[int]) -> Points:  # fmt: skip
    every = [presence[s] for s in range(len(presence))] + [b for reps in background for b in reps]
    allp = np.concatenate(every) if every else np.empty((0, 3), np.int64)
    uniq, inverse = np.unique(allp.reshape(-1, 3), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    out, start = [], 0
    for a in every:
        out.append(inverse[start : start + len(a)])
        start += len(a)
    n_s = len(presence)
    reps = len(background[0]) if background else 0
    bg = [[out[n_s + s * reps + r] for r in range(reps)] for s in range(n_s)]
    return Points(uniq[:, 0], uniq[:, 1], uniq[:, 2], out[:n_s], bg, candidates)


# --- covariates and features --------------------------------------------------------------


def covariate_channels(layout: Layout, levels: Sequence[float]) -> list[tuple[str, int, str]]:
    """``(group, channel, label)`` of the environmental covariates: every channel of the
    groups that are not per species, the level groups only at ``levels``."""
    out = []
    for g in layout.groups:
        kind = layout.kind(g)
        if kind == DimsKind.SPECIES:
            continue
        for c, (var, inner) in enumerate(layout.channel_labels(g)):
            if kind == DimsKind.LEVEL and (inner is None or float(inner) not in set(levels)):
                continue
            out.append((g, c, f"{g}/{var}" + (f"@{inner}" if inner is not None else "")))
    return out


def categorical_columns(layout: Layout, chans: Sequence[tuple[str, int, str]]
                        ) -> list[tuple[int, int]]:  # fmt: skip
    """``(column, number of categories)`` of the categorical channels among ``chans``."""
    cats = {g: dict(layout.categorical(g)) for g in layout.groups}
    return [(n, cats[g][c]) for n, (g, c, _) in enumerate(chans) if c in cats[g]]


def covariates_at_t1(batch: Batch, chans: Sequence[tuple[str, int, str]],
                     layout: Layout) -> np.ndarray:  # fmt: skip
    """``(F, H, W)``: the covariate channels at the batch's second time (static as they are)."""
    stacked = {g: layout.stack(g, batch.groups[g]) for g in {g for g, _, _ in chans}}
    return np.stack([stacked[g][c] if layout.kind(g) == DimsKind.STATIC else stacked[g][1, c]
                     for g, c, _ in chans]).astype(np.float64)  # fmt: skip


def masked_input(batch: Batch, layout: Layout, norm: Normaliser) -> ModelInput:
    """The model input of a batch with every species group masked as missing."""
    from bfm.training.data import to_sample

    x = to_sample(batch, batch, layout, norm).input
    missing = dict(x.missing or {})
    inputs = dict(x.inputs)
    for g in layout.groups:
        if layout.kind(g) == DimsKind.SPECIES:
            inputs[g] = torch.zeros_like(inputs[g])
            missing[g] = torch.ones_like(inputs[g])
    return ModelInput(inputs, x.lat, x.lon, x.time, missing)


@dataclass
class Extracted:
    covariates: np.ndarray  # (U, F_env) physical units
    features: np.ndarray | None  # (U, F_bfm), the frozen model's cell features
    labels: list[str]
    categorical: list[tuple[int, int]]  # (covariate column, number of categories)
    lat: np.ndarray
    lon: np.ndarray
    fields: np.ndarray  # (F_env, H, W): time-mean covariate fields (for the variogram)


@torch.no_grad()
def extract(paths: Sequence[Path], points: Points, model: BFM | None,
            read: Callable[[Path], Batch] = read_batch, levels: Sequence[float] = (850, 500)
            ) -> Extracted:  # fmt: skip
    """Covariates (and the frozen model's features) at every point, one batch at a time."""
    layout = model.config.layout if model is not None else None
    norm = model.normaliser() if model is not None else None
    first = read(paths[0])
    layout = layout or Layout.from_batch(first)
    chans = covariate_channels(layout, levels)
    categorical = categorical_columns(layout, chans)
    cov = np.full((len(points), len(chans)), np.nan)
    feats: np.ndarray | None = None
    sums = np.zeros((len(chans), *first.grid.shape))
    counts = np.zeros_like(sums)
    order = np.argsort(points.batch, kind="stable")
    bounds = np.searchsorted(points.batch[order], np.arange(len(paths) + 1))
    for b, path in enumerate(tqdm(paths, desc="covariates", unit="batch", leave=False)):
        batch = first if b == 0 else read(path)
        layout.check(batch)
        fields = covariates_at_t1(batch, chans, layout)
        ok = np.isfinite(fields)
        sums += np.where(ok, fields, 0.0)
        counts += ok
        here = order[bounds[b] : bounds[b + 1]]
        if not here.size:
            continue
        rows, cols = points.row[here], points.col[here]
        cov[here] = fields[:, rows, cols].T
        if model is not None and norm is not None:
            cells = model.cell_features(masked_input(batch, layout, norm).batched())[0]
            z = cells[torch.from_numpy(rows), torch.from_numpy(cols)].double().numpy()
            if feats is None:
                feats = np.zeros((len(points), z.shape[1]))
            feats[here] = z
    labels = [lab for _, _, lab in chans]
    mean_fields = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return Extracted(cov, feats, labels, categorical, first.grid.latitudes, first.grid.longitudes,
                     mean_fields)  # fmt: skip


# --- models -------------------------------------------------------------------------------


class Head(nn.Module):
    """Standardised features ``(N, F)`` -> one logit per species ``(N, S)``."""

    mean: Tensor
    std: Tensor

    def __init__(self, n_features: int, n_species: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("std", torch.ones(n_features, dtype=torch.float64))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(),
                                 nn.Linear(hidden, n_species))  # fmt: skip

    def forward(self, z: Tensor) -> Tensor:
        x = ((z.double() - self.mean) / self.std).float()
        return self.net(x)


def _weighted_bce(logits: Tensor, y: Tensor, m: Tensor) -> Tensor:
    """BCE over the masked entries, presences weighted to balance each species' classes."""
    pos = (y * m).sum(0).clamp_min(1)
    neg = ((1 - y) * m).sum(0).clamp_min(1)
    w = m * torch.where(y > 0, neg / pos, torch.ones_like(y))
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (w * loss).sum() / w.sum().clamp_min(1e-9)


def fit_head(z: np.ndarray, y: np.ndarray, m: np.ndarray, settings: Settings, seed: int) -> Head:
    """A head on features ``z (N, F)`` for labels ``y`` and masks ``m`` ``(N, S)``."""
    torch.manual_seed(seed)
    head = Head(z.shape[1], y.shape[1], settings.head_hidden)
    used = m.any(1)
    mean, std = z[used].mean(0), z[used].std(0) + 1e-6
    head.mean.copy_(torch.from_numpy(mean))
    head.std.copy_(torch.from_numpy(std))
    x = torch.from_numpy(((z[used] - mean) / std).astype(np.float32))  # standardised once
    yt, mt = (torch.from_numpy(a[used].astype(np.float32)) for a in (y, m))
    opt = torch.optim.Adam(head.net.parameters(), lr=settings.head_lr,
                           weight_decay=settings.weight_decay)  # fmt: skip
    for _ in range(settings.head_steps):
        opt.zero_grad()
        loss = _weighted_bce(head.net(x), yt, mt)
        loss.backward()
        opt.step()
    return head.eval()


def glm_pipeline(categorical: Sequence[tuple[int, int]], n: int, estimator: Any = None) -> Any:
    """The covariates standardised with their squares, one-hot categories, then ``estimator``
    (default: a class-balanced logistic regression: the SDM's GLM)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    cats = [c for c, _ in categorical]
    num = [c for c in range(n) if c not in cats]
    numeric = make_pipeline(StandardScaler(), FunctionTransformer(_with_squares), StandardScaler())
    parts = [("num", numeric, num)]
    if cats:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore"), cats))
    if estimator is None:
        estimator = LogisticRegression(max_iter=2000, class_weight="balanced")
    return make_pipeline(ColumnTransformer(parts), estimator)


def _with_squares(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, x**2])


def fit_predict(method: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                categorical: Sequence[tuple[int, int]], seed: int) -> np.ndarray:  # fmt: skip
    """Fit a covariate baseline (``glm`` or ``maxent``) and score the test points."""
    if method == "glm":
        model = glm_pipeline(categorical, x_train.shape[1])
        model.fit(x_train, y_train)
        return model.predict_proba(x_test)[:, 1]
    if method == "maxent":
        import elapid

        x_test = x_test.copy()
        for c, _ in categorical:  # elapid's one-hot refuses a category the fit never saw
            seen, n = np.unique(x_train[:, c], return_counts=True)
            x_test[~np.isin(x_test[:, c], seen), c] = seen[np.argmax(n)]

        mx = elapid.MaxentModel(feature_types=["linear", "quadratic", "hinge"],
                                beta_multiplier=1.5, n_cpus=1, random_state=seed)  # fmt: skip
        mx.fit(x_train, y_train.astype(int), categorical=[c for c, _ in categorical] or None)
        return np.asarray(mx.predict(x_test), np.float64).reshape(-1)
    raise ValueError(f"sdm.methods: unknown method {method!r}")


# --- LoRA ---------------------------------------------------------------------------------


def with_lora(model: BFM, rank: int) -> BFM:
    """A copy of the model whose backbone has LoRA adapters (peft); only they train."""
    from peft import LoraConfig, inject_adapter_in_model

    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
    inject_adapter_in_model(config, tuned.backbone)
    for name, p in tuned.backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    return tuned


def lora_state(model: BFM) -> dict[str, Tensor]:
    return {k: v for k, v in model.backbone.state_dict().items() if "lora_" in k}


def fit_lora(model: BFM, inputs: Sequence[ModelInput], points: Points, z: np.ndarray,
             y: np.ndarray, m: np.ndarray, settings: Settings, seed: int
             ) -> tuple[BFM, Head]:  # fmt: skip
    """Adapters and a head trained together, batch by batch, on the masked points."""
    torch.manual_seed(seed)
    tuned = with_lora(model, settings.lora_rank)
    head = fit_head(z, y, m, settings, seed)  # the frozen head as the start
    head.train()
    params = [p for p in tuned.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=settings.lora_lr)
    used = m.any(1)
    for _ in range(settings.lora_epochs):
        for b in np.random.default_rng(seed).permutation(len(inputs)):
            here = np.nonzero(used & (points.batch == b))[0]
            if not here.size:
                continue
            feats = tuned.cell_features(inputs[b].batched())[0]
            zb = feats[torch.from_numpy(points.row[here]), torch.from_numpy(points.col[here])]
            opt.zero_grad()
            loss = _weighted_bce(head(zb), torch.from_numpy(y[here].astype(np.float32)),
                                 torch.from_numpy(m[here].astype(np.float32)))  # fmt: skip
            loss.backward()
            opt.step()
    return tuned.eval(), head.eval()


@torch.no_grad()
def lora_features(tuned: BFM, inputs: Sequence[ModelInput], points: Points) -> np.ndarray:
    out = None
    for b, x in enumerate(inputs):
        here = np.nonzero(points.batch == b)[0]
        if not here.size:
            continue
        f = tuned.cell_features(x.batched())[0]
        zb = f[torch.from_numpy(points.row[here]), torch.from_numpy(points.col[here])].double()
        if out is None:
            out = np.zeros((len(points), zb.shape[1]))
        out[here] = zb.numpy()
    assert out is not None
    return out


# --- cross-validation ---------------------------------------------------------------------


@dataclass
class Scores:
    """Per (species, method, cv): per replicate, the metrics' fold means."""

    rows: dict[tuple[int, str, str], list[dict[str, float | None]]] = field(default_factory=dict)

    def add(self, s: int, method: str, cv: str, folds: list[dict[str, float | None]]) -> None:
        mean: dict[str, float | None] = {}
        for name in M.METRICS:
            vals = [float(v) for f in folds if (v := f[name]) is not None]
            mean[name] = float(np.mean(vals)) if vals else None
        self.rows.setdefault((s, method, cv), []).append(mean)

    def summary(self, key: tuple[int, str, str]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in M.METRICS:
            vals = [float(v) for r in self.rows[key] if (v := r[name]) is not None]
            out[name] = float(np.mean(vals)) if vals else None
            out[f"{name}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        return out


def fold_assignments(points: Points, lat: np.ndarray, lon: np.ndarray, block: float,
                     settings: Settings, r: int) -> dict[str, list[np.ndarray]]:  # fmt: skip
    """Per CV scheme, per species: the fold of each point of its replicate-``r`` dataset."""
    rng = np.random.default_rng([settings.seed, r])
    blocks = M.block_ids(lat[points.row], lon[points.col], block)
    any_presence = np.zeros(len(points), bool)
    for p in points.presence:
        any_presence[p] = True
    spatial = M.block_folds(blocks, any_presence, settings.folds, rng)
    out: dict[str, list[np.ndarray]] = {"spatial": [], "random": []}
    for s in range(len(points.presence)):
        idx, _ = points.dataset(s, r)
        out["spatial"].append(spatial[idx])
        out["random"].append(M.random_folds(idx.size, settings.folds, rng))
    return out


def cross_validate(points: Points, ex: Extracted, settings: Settings, block: float,
                   model: BFM | None = None, inputs: Sequence[ModelInput] = (),
                   jobs: int = 1) -> Scores:  # fmt: skip
    """Every method, CV scheme, replicate and fold (module docstring); each replicate's CV
    schemes run in ``jobs`` processes (LoRA, which trains the model, in this one). A
    replicate and scheme is one task: ten tasks for five replicates keep two processes busy
    to the end (five replicates would leave one idle for the last); the scores are added in
    the same order whatever ``jobs``."""
    methods = [m for m in settings.methods if m != "bfm" or ex.features is not None]
    if settings.lora and model is not None:
        methods.append("bfm_lora")
    args = (points, ex, settings, block, methods)
    tasks = [(r, cv) for r in range(settings.replicates) for cv in CV_SCHEMES]
    bar = tqdm(total=len(tasks), desc="cross-validation", unit="replicate-scheme", leave=False)
    results = []
    if jobs > 1 and "bfm_lora" not in methods:
        from joblib import Parallel, delayed

        for res in Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_replicate)(*args, r, schemes=(cv,)) for r, cv in tasks
        ):
            results.append(res)
            bar.update()
    else:
        for r, cv in tasks:
            results.append(_replicate(*args, r, model, inputs, schemes=(cv,)))
            bar.update()
    bar.close()
    scores = Scores()
    for res in results:
        for (s, method, cv), fold_metrics in res.items():
            scores.add(s, method, cv, fold_metrics)
    return scores


def _replicate(points: Points, ex: Extracted, settings: Settings, block: float,
               methods: Sequence[str], r: int, model: BFM | None = None,
               inputs: Sequence[ModelInput] = (), schemes: Sequence[str] = CV_SCHEMES
               ) -> dict[tuple[int, str, str], list[dict[str, float | None]]]:  # fmt: skip
    """One replicate's folds of the CV ``schemes``: per (species, method, cv), fold metrics."""
    torch.set_num_threads(1)
    n_s = len(points.presence)
    data = [points.dataset(s, r) for s in range(n_s)]
    folds = fold_assignments(points, ex.lat, ex.lon, block, settings, r)
    per: dict[tuple[int, str, str], list[dict[str, float | None]]] = {}
    for cv in schemes:
        for k in range(settings.folds):
            y = np.zeros((len(points), n_s), bool)
            train = np.zeros((len(points), n_s), bool)
            test: list[np.ndarray] = []
            for s, (idx, lab) in enumerate(data):
                f = folds[cv][s]
                y[idx, s] = lab
                train[idx[f != k], s] = True
                test.append(np.nonzero(f == k)[0])
            for method in methods:
                preds = _fold_predictions(method, points, ex, data, folds[cv], k, y, train,
                                          settings, r, model, inputs)  # fmt: skip
                for s, (_, lab) in enumerate(data):
                    t = test[s]
                    metrics = (
                        M.all_metrics(lab[t], preds[s]) if t.size else dict.fromkeys(M.METRICS)
                    )
                    per.setdefault((s, method, cv), []).append(metrics)
    return per


def _fold_predictions(method: str, points: Points, ex: Extracted,
                      data: list[tuple[np.ndarray, np.ndarray]], folds: list[np.ndarray], k: int,
                      y: np.ndarray, train: np.ndarray, settings: Settings, r: int,
                      model: BFM | None, inputs: Sequence[ModelInput]
                      ) -> list[np.ndarray]:  # fmt: skip
    """Scores of each species' held-out points of fold ``k``."""
    seed = settings.seed * 1000 + r * 10 + k
    if method in ("bfm", "bfm_lora"):
        assert ex.features is not None
        z = ex.features
        if method == "bfm":
            head = fit_head(z, y, train, settings, seed)
        else:
            assert model is not None
            tuned, head = fit_lora(model, inputs, points, z, y, train, settings, seed)
            z = lora_features(tuned, inputs, points)
        with torch.no_grad():
            prob = torch.sigmoid(head(torch.tensor(z))).numpy()  # a copy: z may be read-only
        pairs = enumerate(zip(data, folds, strict=True))
        return [prob[idx[f == k], s] for s, ((idx, _), f) in pairs]
    out = []
    for (idx, lab), f in zip(data, folds, strict=True):
        tr, te = idx[f != k], idx[f == k]
        if not te.size or lab[f != k].all() or not lab[f != k].any():
            out.append(np.full(te.size, 0.5))
            continue
        out.append(fit_predict(method, ex.covariates[tr], lab[f != k], ex.covariates[te],
                               ex.categorical, seed))  # fmt: skip
    return out


# --- heads for prediction -----------------------------------------------------------------


@dataclass
class Heads:
    """The fitted ``bfm`` heads (and LoRA adapters) of one species set."""

    keys: list[int]
    names: list[str]
    head: Head
    lora: dict[str, Tensor] | None = None
    lora_head: Head | None = None
    rank: int = 4

    @torch.no_grad()
    def suitability(self, model: BFM, batch: Batch, layout: Layout | None = None,
                    norm: Normaliser | None = None, lora: bool = False) -> np.ndarray:  # fmt: skip
        """``(S, H, W)`` probability of presence of each species at the batch's ``t1``, from
        the environment (the species group masked), in ``keys`` order."""
        layout = layout or model.config.layout
        norm = norm or model.normaliser()
        net, head = model, self.head
        if lora and self.lora is not None and self.lora_head is not None:
            net = with_lora(model, self.rank)
            net.backbone.load_state_dict(self.lora, strict=False)
            head = self.lora_head
        z = net.cell_features(masked_input(batch, layout, norm).batched())[0]
        h, w, f = z.shape
        prob = torch.sigmoid(head(z.reshape(-1, f).double()))
        return prob.reshape(h, w, -1).permute(2, 0, 1).numpy().astype(np.float32)


def save_heads(heads: Heads, path: Path) -> Path:
    state = {"keys": heads.keys, "names": heads.names, "rank": heads.rank,
             "head": heads.head.state_dict(), "shape": _shape(heads.head),
             "lora": heads.lora, "lora_head": heads.lora_head.state_dict()
             if heads.lora_head is not None else None}  # fmt: skip
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _shape(head: Head) -> tuple[int, int, int]:
    first, last = head.net[0], head.net[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    return first.in_features, last.out_features, first.out_features


def load_heads(path: str | Path) -> Heads:
    """Heads written by ``bfm finetune`` (``heads.pt``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        n_f, n_s, hidden = state["shape"]
        head = Head(n_f, n_s, hidden)
        head.load_state_dict(state["head"])
        lora_head = None
        if state.get("lora_head") is not None:
            lora_head = Head(n_f, n_s, hidden)
            lora_head.load_state_dict(state["lora_head"])
    except (OSError, KeyError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path}: not a heads file of bfm finetune ({err})") from err
    return Heads([int(k) for k in state["keys"]], list(state["names"]), head.eval(),
                 state.get("lora"), lora_head, int(state.get("rank", 4)))  # fmt: skip


# --- the command --------------------------------------------------------------------------


def clean(points: Points, ex: Extracted) -> tuple[Points, Extracted, dict[str, Any]]:
    """Drop mostly-missing covariates (> half the points); fill the others' gaps with their
    mean over the points (counted per covariate, so no point is lost to a gap)."""
    cov = ex.covariates
    frac = np.isnan(cov).mean(0) if len(cov) else np.zeros(cov.shape[1])
    keep_cols = frac <= 0.5
    dropped_cols = [lab for lab, k in zip(ex.labels, keep_cols, strict=True) if not k]
    col_index = np.cumsum(keep_cols) - 1
    cats = [(int(col_index[c]), n) for c, n in ex.categorical if keep_cols[c]]
    cov = cov[:, keep_cols]
    kept = [lab for lab, k in zip(ex.labels, keep_cols, strict=True) if k]
    gaps = ~np.isfinite(cov)
    means = np.nanmean(np.where(gaps, np.nan, cov), axis=0) if len(cov) else np.zeros(len(kept))
    for c, _ in cats:  # a category's gap takes the most frequent category, not a mean
        codes, n = np.unique(cov[~gaps[:, c], c], return_counts=True)
        means[c] = codes[np.argmax(n)] if n.size else 0.0
    cov = np.where(gaps, means[None, :], cov)
    keep = np.ones(len(points), bool)
    if ex.features is not None:  # the model's features are finite (missing inputs are masked)
        keep &= np.isfinite(ex.features).all(1)
    before = [p.size for p in points.presence]
    sub = points.subset(keep)
    report = {
        "covariates": kept,
        "covariates_dropped_mostly_missing": dropped_cols,
        "covariate_values_imputed": {
            lab: int(n) for lab, n in zip(kept, gaps.sum(0), strict=True) if n
        },  # fmt: skip
        "points": int(len(points)),
        "points_dropped_nonfinite_features": int((~keep).sum()),
        "presences_dropped": [b - p.size for b, p in zip(before, sub.presence, strict=True)],
    }
    feats = None if ex.features is None else ex.features[keep]
    out = Extracted(cov[keep], feats, kept, cats, ex.lat, ex.lon, ex.fields[keep_cols])
    return sub, out, report


def finetune(model: BFM | None, paths: Sequence[Path], keys: Sequence[int],
             names: Sequence[str], settings: Settings, out: Path,
             jobs: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    """The whole protocol; writes ``metrics.jsonl``, ``heads.pt`` and ``summary.json`` into
    ``out`` and returns the metric lines."""
    settings.check()
    started = time.monotonic()
    paths = sorted((Path(p) for p in paths), key=lambda p: p.name)
    if not paths:
        raise ValueError("--batches: no batch file")
    points = sample_points(paths, keys, settings)
    absent = [names[s] for s, p in enumerate(points.presence)
              if not p.size or not points.background[s][0].size]  # fmt: skip
    if len(absent) == len(keys):
        raise ValueError(f"sdm: no species of the set has a presence and a background "
                         f"(its class recorded where it was not) in {len(paths)} batches "
                         f"({list(names)})")  # fmt: skip
    if absent:  # nothing to fit without both classes: said and recorded
        log.warning("left out (no presence, or no background, in %d batches): %s", len(paths),
                    absent)  # fmt: skip
        here = [s for s, n in enumerate(names) if n not in absent]
        keys, names = [keys[s] for s in here], [names[s] for s in here]
        points.presence = [points.presence[s] for s in here]
        points.background = [points.background[s] for s in here]
        points.candidates = [points.candidates[s] for s in here]
    uses_model = model is not None and ("bfm" in settings.methods or settings.lora)
    ex = extract(paths, points, model if uses_model else None, levels=settings.levels)
    points, ex, report = clean(points, ex)
    presences = np.zeros(len(points), bool)
    for p in points.presence:
        presences[p] = True
    res = abs(float(ex.lat[1] - ex.lat[0])) if ex.lat.size > 1 else 1.0
    numeric = [c for c in range(ex.fields.shape[0]) if c not in dict(ex.categorical)]
    range_deg = M.autocorrelation_range(ex.fields[numeric], ex.lat, ex.lon)
    block = settings.block_size_deg or M.block_size_for(
        range_deg, ex.lat[points.row], ex.lon[points.col], presences, settings.folds, res
    )
    log.info("%d points (%d species), %d covariates; autocorrelation range %s deg, blocks of %g "
             "deg", len(points), len(keys), len(ex.labels), range_deg and round(range_deg, 2),
             block)  # fmt: skip
    inputs: list[ModelInput] = []
    if settings.lora and model is not None:
        layout, norm = model.config.layout, model.normaliser()
        inputs = [masked_input(read_batch(p), layout, norm) for p in paths]
    scores = cross_validate(points, ex, settings, block, model, inputs, jobs)
    lines = []
    for (s, method, cv), _ in sorted(scores.rows.items()):
        lines.append({"species": names[s], "key": int(keys[s]), "method": method, "cv": cv,
                      "replicates": settings.replicates, "folds": settings.folds,
                      "block_size_deg": block, "n_presence": int(points.presence[s].size),
                      "n_background": int(points.background[s][0].size),
                      **scores.summary((s, method, cv))})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    if uses_model and model is not None and ex.features is not None:
        y = np.zeros((len(points), len(keys)), bool)
        m = np.zeros_like(y)
        for s in range(len(keys)):
            idx, lab = points.dataset(s, 0)
            y[idx, s], m[idx, s] = lab, True
        heads = Heads(list(map(int, keys)), list(names), fit_head(ex.features, y, m, settings,
                                                                  settings.seed))  # fmt: skip
        if settings.lora:
            tuned, lhead = fit_lora(model, inputs, points, ex.features, y, m, settings,
                                    settings.seed)  # fmt: skip
            heads.lora, heads.lora_head, heads.rank = lora_state(tuned), lhead, settings.lora_rank
        save_heads(heads, out / "heads.pt")
    report.update({"species": list(names), "keys": list(map(int, keys)),
                   "species_left_out": absent,
                   "autocorrelation_range_deg": range_deg, "block_size_deg": block,
                   "settings": settings.__dict__, "seconds": round(time.monotonic() - started, 1),
                   "background_candidates": points.candidates})  # fmt: skip
    write_text_atomic(out / "summary.json", json.dumps(report, indent=1, default=list) + "\n")
    return lines


def species_of_set(model_keys: Iterable[int], table: Any, members: Sequence[str] | None,
                   where: str) -> tuple[list[int], list[str]]:  # fmt: skip
    """Keys and names of a set's species (all the model's when ``members`` is None)."""
    by_name = dict(zip(table["scientific_name"], table["gbif_key"], strict=True))
    by_key = {int(v): k for k, v in by_name.items()}
    model_keys = [int(k) for k in model_keys]
    if members is None:
        return model_keys, [by_key.get(k, str(k)) for k in model_keys]
    unknown = [n for n in members if n not in by_name or int(by_name[n]) not in model_keys]
    if unknown:
        raise ValueError(f"{where}: species {unknown} are not modelled (the model has "
                         f"{sorted(by_key.get(k, str(k)) for k in model_keys)})")  # fmt: skip
    return [int(by_name[n]) for n in members], list(members)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "finetune", __doc__,
                    "species distribution models on the BFM vs GLM and MaxEnt")  # fmt: skip
    p.add_argument("--model", required=True, metavar="RUN_DIR",
                   help="pre-trained run directory (results/models/<run>)")  # fmt: skip
    p.add_argument("--batches", nargs="+", required=True, metavar="FILE",
                   help="batch files whose second time gives the cell-steps")  # fmt: skip
    p.add_argument("--species-list", required=True, metavar="CSV",
                   help="the resolved species list (results/species/list.csv)")  # fmt: skip
    p.add_argument("--set", default="all", help="the sdm.sets entry to fit (default: all)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (results/sdm/<run>/<set>/)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1,
                   help="processes for the cross-validation's replicates (default 1)")  # fmt: skip
    add_config_argument(p, required=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bfm.species_list import read_species
    from bfm.training.checkpoint import load_model
    from bfm.workflow import load_plan

    plan = load_plan(args.config)
    section = (plan.config.get("sdm") or {}) if plan is not None else {}
    sets = section.get("sets") or {"all": None}
    if args.set not in sets:
        raise ValueError(f"--set {args.set}: not in sdm.sets ({sorted(sets)})")
    settings = Settings.from_config(section)
    model, _ = load_model(args.model)
    keys, names = species_of_set(model.config.layout.species, read_species(args.species_list),
                                 sets[args.set], f"sdm.sets.{args.set}")  # fmt: skip
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs} must be >= 1")
    lines = finetune(model, [Path(b) for b in args.batches], keys, names, settings,
                     Path(args.out), args.jobs)  # fmt: skip
    for method in dict.fromkeys(x["method"] for x in lines):
        for cv in CV_SCHEMES:
            auc = [x["auc_roc"] for x in lines if x["method"] == method and x["cv"] == cv
                   and x["auc_roc"] is not None]  # fmt: skip
            if auc:
                log.info("%-8s %-7s mean AUC-ROC over %d species: %.3f", method, cv, len(auc),
                         float(np.mean(auc)))  # fmt: skip
    return 0
