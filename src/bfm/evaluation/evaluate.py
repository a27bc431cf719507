"""``bfm evaluate``: score a trained model on held-out batches (docs/architecture.md, "Evaluation").

Samples pair batches exactly as training does (input batch t0, t1; target t1 + step); a
*rollout* feeds the model its own forecast: lead L's input is (the previous input's second
time, the lead L - 1 forecast), the slow groups of the batch at that time, and its target the
truth L steps after the first target. For every dynamic variable and channel (pressure level,
species key), in physical units, these forecasts are scored (``bfm.evaluation.scores``:
latitude-weighted RMSE, bias, MAE, ACC, with bootstrap intervals over the forecast times):

- ``model``: the trained model (weights and normalisation from the run directory);
- ``persistence``: the initial input's last time, at every lead;
- ``climatology``: with ``--climatology`` the per-cell day-of-year (and hour) mean of the
  training years at the target's time (``bfm.evaluation.climatology``); without it the
  training statistics' mean of the channel (``climatology_kind`` says which);
- ``constant`` (count channels only): the training mean count, beside the climatology;
- ``glm`` (count channels, with ``--glm``): the Poisson GLM of the counts on the environmental
  covariates of the start's last time (``bfm.evaluation.species_glm``), at every lead;
- with ``--members`` M > 1, an ensemble of perturbed initial states
  (``bfm.evaluation.ensemble``): ``crps_ensemble``, ``spread``, ``rmse_ensemble_mean`` and
  ``spread_skill`` per line (member 0, unperturbed, is ``model``).

A point is valid where the target, the persistence value and the climatology are finite (so
every forecast is scored on one set of points; the model's output is finite).

Outputs: ``scores.jsonl`` (lead 1), one JSON object per line::

    {"variable": "atmospheric/t", "channel": "500", "lead": 1, "n": 1234, "headline": false,
     "rmse_model": 1.2, "rmse_model_ci": [1.1, 1.3], "bias_model": 0.1, "mae_model": 0.9,
     "acc_model": 0.8, ..., "rmse_persistence": 1.9, "rmse_climatology": 4.1, ...}

and ``scores_by_lead.jsonl`` beside it (the same lines for leads 1..``--leads``). ``channel``
is the level (hPa) or species key for per-channel lines and null for the line pooling a
variable's channels; ``headline`` marks WeatherBench 2's headline lines that exist here (z500,
t850, q700, t2m, u10, v10, msl). A metric over no valid point is null. ``error_maps.nc``
beside them holds the headline lines' per-gridpoint RMSE per lead and forecast (format in
``bfm.evaluation.error_maps``). CPU with torch only.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.batch import Batch, read_batch
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.layout import Layout, Normaliser, to_physical
from bfm.contracts.sample import ModelInput, Sample
from bfm.evaluation.ensemble import EnsembleSums, perturb
from bfm.evaluation.error_maps import FILENAME as ERROR_MAPS
from bfm.evaluation.error_maps import ErrorMaps
from bfm.evaluation.scores import Accumulator, lat_weights, summarise
from bfm.fileio import write_text_atomic
from bfm.model import BFM
from bfm.provenance import provenance
from bfm.training.checkpoint import load_model
from bfm.training.data import pair_batches, physical, to_sample
from bfm.workflow import load_plan

if TYPE_CHECKING:
    from bfm.evaluation.species_glm import SpeciesGLM

log = logging.getLogger("bfm.evaluate")
FORECASTS = ("model", "persistence", "climatology")
COUNT_FORECASTS = (*FORECASTS, "constant")
HEADLINE = {("atmospheric/z", "500"), ("atmospheric/t", "850"), ("atmospheric/q", "700"),
            ("surface/t2m", None), ("surface/u10", None), ("surface/v10", None),
            ("surface/msl", None)}  # fmt: skip
BY_LEAD = "scores_by_lead.jsonl"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "evaluate", __doc__, "score a trained model vs persistence and climatology"
    )
    p.add_argument("--model", required=True, metavar="RUN_DIR",
                   help="training run directory (results/models/<run>) with meta.json")  # fmt: skip
    p.add_argument("--batches", nargs="+", required=True, metavar="FILE",
                   help="held-out batch files; consecutive ones form (input, target) "
                   "pairs")  # fmt: skip
    p.add_argument("--out", required=True, metavar="PATH",
                   help="scores file to write (results/eval/<run>/scores.jsonl); "
                   f"{BY_LEAD} and {ERROR_MAPS} are written beside it")  # fmt: skip
    p.add_argument("--climatology", metavar="FILE", default=None,
                   help="day-of-year climatology of the training years (bfm climatology); "
                   "default: the training mean of each channel")  # fmt: skip
    p.add_argument("--glm", metavar="FILE", default=None,
                   help="the species GLM (bfm species-glm): scored as forecast 'glm' of the "
                   "count channels")  # fmt: skip
    p.add_argument("--leads", type=int, default=None,
                   help="rollout length in steps (default: the config's evaluation.leads, "
                   "else 1)")  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap resamples for the intervals (default: the config's "
                   "evaluation.bootstrap, else 1000; 0: none)")  # fmt: skip
    p.add_argument("--members", type=int, default=None,
                   help="ensemble members of perturbed initial states (default: the config's "
                   "evaluation.members, else 1: no ensemble)")  # fmt: skip
    p.add_argument("--noise", type=float, default=None,
                   help="the perturbation's std in training stds (default: evaluation.noise, "
                   "else 0.05)")  # fmt: skip
    add_config_argument(p, required=False)
    p.set_defaults(func=run)


@torch.no_grad()
def predict(model: BFM, sample: Sample | ModelInput, norm: Normaliser) -> dict[str, np.ndarray]:
    """Physical-unit prediction ``(C_g, H, W)`` per dynamic group for one sample."""
    inputs = sample.input if isinstance(sample, Sample) else sample
    pred = model(inputs.batched())
    layout = model.config.layout
    return {g: to_physical(layout, norm, g, t[0].numpy()) for g, t in pred.items()}


def unstack(layout: Layout, group: str, stacked: np.ndarray) -> dict[str, np.ndarray]:
    """``(C_g, H, W)`` back into the group's variables (``(H, W)`` or ``(inner, H, W)``)."""
    inner = layout.inner(group)
    out = {}
    for v, var in enumerate(layout.variables(group)):
        part = stacked[v * inner : (v + 1) * inner].astype(np.float32)
        out[var] = part[0] if layout.kind(group) == DimsKind.TIME else part
    return out


def next_input(x: Batch, forecast: dict[str, np.ndarray], template: Batch,
               layout: Layout) -> Batch:  # fmt: skip
    """The rollout's next input: ``x``'s second time and the forecast, at ``template``'s
    times; the groups the model does not predict (static) from ``template``."""
    groups = dict(template.groups)
    for g in layout.dynamic:
        later = unstack(layout, g, forecast[g])
        groups[g] = {v: np.stack([x.groups[g][v][1], later[v]]) for v in later}
    return dataclasses.replace(template, groups=groups, source=f"rollout of {x.source}")


def chains(paths: Sequence[str | Path], settings_hash: str | None) -> list[list[Path]]:
    """Runs of consecutive batches (each one's t1 the next one's t0), in time order."""
    pairs = pair_batches(list(paths), settings_hash)
    if not pairs:
        raise ValueError(f"--batches: no consecutive pair among {len(paths)} batch files "
                         "(a pair needs a batch whose t0 is another's t1)")  # fmt: skip
    nxt = {p.input: p.target for p in pairs}
    starts = [p.input for p in pairs if p.input not in set(nxt.values())]
    out = []
    for s in sorted(starts, key=lambda p: p.name):
        run = [s]
        while run[-1] in nxt:
            run.append(nxt[run[-1]])
        out.append(run)
    return out


class Climatologies:
    """The climatology forecast: the day-of-year file's mean at the target time, or the
    training mean of each channel."""

    def __init__(self, path: str | Path | None, norm: Normaliser) -> None:
        from bfm.evaluation.climatology import Climatology

        self.file = Climatology.open(path) if path else None
        self.norm = norm
        self.kind = "day-of-year" if self.file else "training mean"

    def at(self, group: str, t: pd.Timestamp, shape: tuple[int, ...]) -> np.ndarray:
        if self.file is not None:
            return self.file.at(group, t)
        return np.broadcast_to(self.norm.mean[group][:, None, None], shape).astype(np.float64)


Forecast = dict[str, np.ndarray]  # per dynamic group, (C_g, H, W) physical units


def rollout(model: BFM, start: Batch, template: Callable[[int], Batch], leads: int,
            members: int = 1, noise: float = 0.0
            ) -> Iterator[tuple[int, list[Forecast]]]:  # fmt: skip
    """``(lead, forecast per dynamic group of each member)`` for leads 1..``leads`` of the
    rollouts from ``start``: member 0 unperturbed, the others from perturbed initial states
    (``bfm.evaluation.ensemble``, seeded by the start time and member), each rolled out on
    its own forecasts. ``template(lead)`` is the batch at the input times of lead + 1 whose
    groups the model does not predict the next input takes (``next_input``); it is asked
    for leads 1..``leads`` - 1 only, after the lead is consumed. Only the members' current
    states are held."""
    norm, layout = model.normaliser(), model.config.layout
    xs = [start] * members
    seed = int(pd.Timestamp(start.times[0]).value // 10**9)
    for lead in range(1, leads + 1):
        preds = []
        for m, x in enumerate(xs):
            inputs = to_sample(x, x, layout, norm).input
            if lead == 1 and m > 0:
                inputs = perturb(inputs, layout.dynamic, noise, seed + m)
            preds.append(predict(model, inputs, norm))
        yield lead, preds
        if lead < leads:
            later = template(lead)
            xs = [next_input(x, p, later, layout) for x, p in zip(xs, preds, strict=True)]


def forecasts_of(model: BFM, batches: list[Batch], leads: int, members: int = 1,
                 noise: float = 0.0) -> Iterator[tuple[int, list[Forecast]]]:  # fmt: skip
    """``rollout`` from ``batches[0]`` for the leads whose truth ``batches`` hold (lead L's
    truth is the second time of ``batches[L]``, which is also lead L + 1's template)."""
    steps = min(leads, len(batches) - 1)
    return rollout(model, batches[0], batches.__getitem__, steps, members, noise)


def headline_channels(layout: Layout) -> list[tuple[str, int]]:
    """``(group, channel)`` of the headline lines (``HEADLINE``) the layout has."""
    return [(g, c) for g in layout.dynamic
            for c, (var, label) in enumerate(layout.channel_labels(g))
            if (f"{g}/{var}", label) in HEADLINE]  # fmt: skip


Sums = dict[int, dict[str, Accumulator]]
Ensembles = dict[int, dict[str, EnsembleSums]]


def accumulate(model: BFM, runs: list[list[Path]], leads: int, climatology: Climatologies,
               members: int = 1, noise: float = 0.0, maps: ErrorMaps | None = None,
               glm: SpeciesGLM | None = None) -> tuple[Sums, Ensembles]:  # fmt: skip
    """Per lead and group, the scores' sums over every start of every run (and the
    ensemble's, with ``members`` > 1; the per-cell ``maps``, when given; the count groups'
    ``glm`` forecast from the start's covariates, when given)."""
    norm, layout = model.normaliser(), model.config.layout
    out: Sums = {}
    ensembles: Ensembles = {}

    first: dict[str, Any] = {}  # the grid every batch must share

    @functools.lru_cache(maxsize=leads + 2)  # a batch is read once, whatever the leads
    def read(path: Path) -> Batch:
        batch = read_batch(path)
        layout.check(batch)
        grid = first.setdefault("grid", batch.grid)
        if batch.grid != grid:
            raise ValueError(f"{batch.source}: grid {batch.grid} differs from {grid}")
        return batch

    for run_paths in runs:
        for k in range(len(run_paths) - 1):
            window = [read(p) for p in run_paths[k : k + leads + 1]]
            weights = lat_weights(window[0].grid.latitudes)
            persistence = physical(window[0], window[1], layout)[0]
            counts_glm = glm.predict(window[0]) if glm is not None else {}
            for lead, preds in forecasts_of(model, window, leads, members, noise):
                pred, truth = preds[0], window[lead]
                when = pd.Timestamp(truth.times[1])
                for g in layout.dynamic:
                    target = layout.stack(g, truth.groups[g])[1]
                    clim = climatology.at(g, when, target.shape)
                    counts = layout.count_channels(g)
                    names = COUNT_FORECASTS if counts.any() else FORECASTS
                    valid = np.isfinite(target) & np.isfinite(persistence[g]) & np.isfinite(clim)
                    const = np.broadcast_to(norm.mean[g][:, None, None], target.shape)
                    forecasts = {"model": pred[g], "persistence": persistence[g],
                                 "climatology": clim, "constant": const}  # fmt: skip
                    if g in counts_glm:
                        if counts_glm[g].shape != target.shape:
                            raise ValueError(f"--glm: predicts {counts_glm[g].shape} for group "
                                             f"{g}, the model {target.shape}: fitted on "
                                             "other batches")  # fmt: skip
                        names = (*names, "glm")
                        forecasts["glm"] = np.where(np.isfinite(counts_glm[g]), counts_glm[g],
                                                    const)  # fmt: skip
                    acc = out.setdefault(lead, {}).setdefault(g, Accumulator(names, counts))
                    acc.add(forecasts, target, valid, clim, weights)
                    if maps is not None:
                        maps.add(lead, g, {"model": pred[g], "persistence": persistence[g],
                                           "climatology": clim}, target, valid, truth.grid,
                                 truth.step)  # fmt: skip
                    if members > 1:
                        ens = ensembles.setdefault(lead, {}).setdefault(g, EnsembleSums(members))
                        ens.add(np.stack([p[g] for p in preds]), target, valid, weights)
    return out, ensembles


def score_lines(sums: dict[str, Accumulator], layout: Layout, lead: int, kind: str,
                n_boot: int, ensembles: dict[str, EnsembleSums] | None = None
                ) -> list[dict[str, Any]]:  # fmt: skip
    """Per-channel lines and one all-channel summary line per variable, for one lead."""
    lines: list[dict[str, Any]] = []
    for g in layout.dynamic:
        if g not in sums:
            continue
        inner = layout.inner(g)
        labels = layout.channel_labels(g)
        for v, var in enumerate(layout.variables(g)):
            chans = range(v * inner, (v + 1) * inner)
            per = [(labels[c][1], [c]) for c in chans] if inner > 1 else []
            for channel, cs in [*per, (None, list(chans))]:
                name = f"{g}/{var}"
                line = {"variable": name, "channel": channel, "lead": lead,
                        "headline": (name, channel) in HEADLINE or (
                            inner == 1 and (name, None) in HEADLINE),
                        "climatology_kind": kind}  # fmt: skip
                line.update(summarise(sums[g], cs, n_boot))
                if ensembles and g in ensembles:
                    line.update(ensembles[g].summary(cs))
                lines.append(line)
    return lines


def write_lines(lines: list[dict[str, Any]], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in lines))


def run(args: argparse.Namespace) -> int:
    model, meta = load_model(args.model)
    plan = load_plan(args.config)
    settings = (plan.config.get("evaluation") or {}) if plan is not None else {}
    leads = args.leads if args.leads is not None else int(settings.get("leads", 1))
    n_boot = args.bootstrap if args.bootstrap is not None else int(settings.get("bootstrap",
                                                                                1000))  # fmt: skip
    if leads < 1 or n_boot < 0:
        raise ValueError(f"--leads {leads} must be >= 1 and --bootstrap {n_boot} >= 0")
    runs = chains(args.batches, plan.batch_settings_hash if plan is not None else None)
    members = args.members if args.members is not None else int(settings.get("members", 1))
    noise = float(settings.get("noise", 0.05)) if args.noise is None else args.noise
    if members < 1 or noise < 0:
        raise ValueError(f"--members {members} must be >= 1 and --noise {noise} >= 0")
    climatology = Climatologies(args.climatology, model.normaliser())
    layout = model.config.layout
    maps = ErrorMaps(layout, headline_channels(layout), FORECASTS)
    glm = None
    if args.glm:
        from bfm.evaluation.species_glm import load as load_glm

        glm = load_glm(args.glm)
    sums, ensembles = accumulate(model, runs, leads, climatology, members, noise, maps, glm)
    by_lead = {lead: score_lines(s, layout, lead, climatology.kind, n_boot, ensembles.get(lead))
               for lead, s in sorted(sums.items())}  # fmt: skip
    out = Path(args.out)
    write_lines(by_lead.get(1, []), out)
    write_lines([x for lines in by_lead.values() for x in lines], out.with_name(BY_LEAD))
    used = {"model": str(args.model), "leads": leads, "members": members, "noise": noise,
            "climatology_kind": climatology.kind,
            "batches": plan.batch_settings_hash if plan is not None else None}  # fmt: skip
    maps.write(out.with_name(ERROR_MAPS), {
        **provenance(plan.config if plan is not None else None, used),
        "run": str(args.model), "climatology_kind": climatology.kind})  # fmt: skip
    for rec in by_lead.get(1, []):
        if rec["channel"] is None or rec["headline"]:
            log.info("%-22s %-5s n=%-8d model %s  persistence %s  climatology %s  acc %s",
                     rec["variable"], rec["channel"] or "", rec["n"], rec.get("rmse_model"),
                     rec.get("rmse_persistence"), rec.get("rmse_climatology"),
                     rec.get("acc_model"))  # fmt: skip
    n = sum(len(r) - 1 for r in runs)
    log.info("scored %d forecasts (leads 1..%d) of %s (step %s; climatology: %s) -> %s", n,
             leads, args.model, meta.get("steps_done"), climatology.kind, args.out)  # fmt: skip
    return 0
