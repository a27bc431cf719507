"""``bfm predict``: roll a trained model out from a start batch into a CF-1.10 forecast file.

The start is the earliest of ``--batches`` (times t0, t1); the forecast reference time is
its t1. Lead L (1..``--leads``) is valid at t1 + L step. The rollout is the evaluation's
(``bfm.evaluation.evaluate.rollout``): the model is fed its own forecast, and the groups it
does not predict (static) come from the batch at each input time, the later ``--batches``
that follow the start consecutively; past the last of them its static groups are reused
(logged). ``--members`` M: member 0 is unperturbed, members 1..M-1 start from perturbed
initial states (``bfm.evaluation.ensemble``, ``--noise`` in training stds), exactly as in
``bfm evaluate``.

Output (``--out``, e.g. results/predict/<run>/forecast.nc; CF-1.10 NetCDF, written to a
temporary file and renamed at the end, so a failure leaves nothing at ``--out``):

- dimensions ``time`` (unlimited; the valid times, int64 seconds since 1970-01-01),
  ``latitude``, ``longitude``, ``level`` (hPa; with a level group) and ``species`` (with a
  species group: auxiliary coordinates ``species_key``, int64 GBIF keys, and
  ``species_name`` when ``--species-table`` gives the names);
- scalar coordinates ``forecast_reference_time`` and ``realization`` (0, bounds 0 .. M - 1:
  what the ensemble statistics are over); auxiliary coordinate ``lead`` (time), int steps;
- per variable v of each dynamic group, in physical units (counts: the expected count):
  ``v``, the ensemble mean (``cell_methods`` "realization: mean"; with M = 1 the one
  forecast), and ``v_spread``, the members' standard deviation (ddof 1, as the evaluation's
  spread; ``cell_methods`` "realization: standard_deviation"; zeros with M = 1). Units,
  long_name and standard_name are the catalogue's. A name used by two dynamic groups (or by
  a coordinate) is prefixed with its group: ``atmospheric_z``;
- with ``--heads`` (fine-tuned SDM heads, ``bfm.evaluation.sdm``): ``suitability``
  (species, latitude, longitude) of the start batch;
- global attributes: Conventions, title, institution, provenance, ``model_run``,
  ``members``, ``noise``, ``leads``, ``step``, ``grid``.

Memory: each lead's time slice is appended to the file as it is produced; only the current
members' states are held, never all leads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pandas as pd
from tqdm import tqdm

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.batch import Batch, read_batch
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.layout import Layout
from bfm.contracts.timeaxis import offset
from bfm.evaluation import cf
from bfm.evaluation.evaluate import Forecast, rollout, unstack
from bfm.fileio import atomic_path
from bfm.model import BFM
from bfm.provenance import provenance
from bfm.training.checkpoint import load_model
from bfm.training.data import batch_attrs, check_settings
from bfm.workflow import load_plan

log = logging.getLogger("bfm.predict")
TIME_UNITS = "seconds since 1970-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"
# Names of the file's coordinates: a forecast variable of such a name is group-prefixed.
RESERVED = frozenset({"time", "lead", "forecast_reference_time", "latitude", "longitude",
                      "level", "species_key", cf.SPECIES_NAME, "suitability"})  # fmt: skip
SPREAD = "_spread"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", __doc__, "roll a trained model out into a CF forecast file")
    p.add_argument("--model", required=True, metavar="RUN_DIR",
                   help="training run directory (results/models/<run>) with meta.json")  # fmt: skip
    p.add_argument("--batches", nargs="+", required=True, metavar="FILE",
                   help="batch files: the earliest is the start; those following it "
                   "consecutively give the static groups at later times")  # fmt: skip
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="forecast file to write (results/predict/<run>/forecast.nc)",
    )
    p.add_argument(
        "--leads",
        type=int,
        default=None,
        help="steps to roll out (default: the config's evaluation.leads, else 1)",
    )
    p.add_argument("--members", type=int, default=None,
                   help="ensemble members, member 0 unperturbed (default: the config's "
                   "evaluation.members, else 1)")  # fmt: skip
    p.add_argument("--noise", type=float, default=None,
                   help="the perturbation's std in training stds (default: evaluation.noise, "
                   "else 0.05)")  # fmt: skip
    p.add_argument(
        "--species-table",
        default=None,
        metavar="FILE",
        help="species table (parquet): the species' names (species_name)",
    )
    p.add_argument("--heads", default=None, metavar="FILE",
                   help="fine-tuned SDM heads (bfm.evaluation.sdm): adds the species' "
                   "suitability maps of the start batch")  # fmt: skip
    add_config_argument(p, required=False)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class PredictSettings:
    """What ``bfm predict`` was asked for, checked."""

    model: Path
    batches: tuple[Path, ...]
    out: Path
    leads: int = 1
    members: int = 1
    noise: float = 0.05
    config: str | None = None
    species_table: Path | None = None
    heads: Path | None = None

    def __post_init__(self) -> None:
        if not self.batches:
            raise ValueError("--batches: no batch file given (the start batch is needed)")
        if self.leads < 1 or self.members < 1 or not self.noise >= 0:
            raise ValueError(f"--leads {self.leads} and --members {self.members} must be "
                             f">= 1 and --noise {self.noise} >= 0")  # fmt: skip

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PredictSettings:
        plan = load_plan(args.config)
        given = (plan.config.get("evaluation") or {}) if plan is not None else {}

        def pick(value: Any, key: str, default: Any) -> Any:
            return value if value is not None else given.get(key, default)

        opt = lambda p: Path(p) if p is not None else None  # noqa: E731
        return cls(Path(args.model), tuple(Path(p) for p in args.batches), Path(args.out),
                   int(pick(args.leads, "leads", 1)), int(pick(args.members, "members", 1)),
                   float(pick(args.noise, "noise", 0.05)), args.config,
                   opt(args.species_table), opt(args.heads))  # fmt: skip


def read_chain(paths: Sequence[Path], layout: Layout, most: int,
               settings_hash: str | None = None) -> list[Batch]:  # fmt: skip
    """The earliest batch and up to ``most`` - 1 batches following it consecutively (each
    one's t0 the previous one's t1), read and checked against the layout and one grid."""
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--batches: batch file {p} does not exist")
    info = {Path(p): batch_attrs(p) for p in paths}
    ordered = sorted(info, key=lambda p: info[p][0][0])
    check_settings(ordered, {p: a[1] for p, a in info.items()}, settings_hash)
    by_t0 = {info[p][0][0]: p for p in ordered}
    chain = [ordered[0]]
    while len(chain) < most and info[chain[-1]][0][1] in by_t0:
        chain.append(by_t0[info[chain[-1]][0][1]])
    unused = [p.name for p in ordered if p not in chain]
    if unused:
        log.info("--batches: %d not used (not consecutive after the start, or past the "
                 "leads): %s", len(unused), ", ".join(unused[:5]))  # fmt: skip
    batches = [read_batch(p) for p in chain]
    for b in batches:
        layout.check(b)
        if b.grid != batches[0].grid or b.step != batches[0].step:
            raise ValueError(f"{b.source}: grid {b.grid} / step {b.step!r} differ from the "
                             f"start's {batches[0].grid} / {batches[0].step!r}")  # fmt: skip
    return batches


def templates(batches: list[Batch]) -> Callable[[int], Batch]:
    """``template(lead)``: the batch at times (t_lead, t_lead+1), whose static groups the
    rollout's next input takes; past the chain, the last batch moved to those times."""
    start, step = batches[0], offset(batches[0].step)
    warned: list[int] = []

    def at(lead: int) -> Batch:
        if lead < len(batches):
            return batches[lead]
        if not warned:
            warned.append(lead)
            log.info("no batch at lead %d's input time or later: the static groups of %s are "
                     "reused from there on", lead + 1, batches[-1].source)  # fmt: skip
        t = pd.Timestamp(start.times[0]) + lead * step
        return dataclasses.replace(batches[-1], times=(t, t + step),
                                   source=f"{batches[-1].source} at {t}")  # fmt: skip

    return at


@dataclass(frozen=True)
class LeadSlice:
    """One lead's time slice: ensemble mean and spread per dynamic group, ``(C_g, H, W)``."""

    lead: int
    time: pd.Timestamp
    mean: Forecast
    spread: Forecast


def moments(preds: list[Forecast]) -> tuple[Forecast, Forecast]:
    """Members' mean and standard deviation (ddof 1; zeros for one member) per group."""
    mean, spread = {}, {}
    for g in preds[0]:
        x = np.stack([p[g] for p in preds]).astype(np.float64)
        mean[g] = x.mean(0).astype(np.float32)
        sd = x.std(0, ddof=1) if len(preds) > 1 else np.zeros_like(x[0])
        spread[g] = sd.astype(np.float32)
    return mean, spread


def forecast(model: BFM, batches: list[Batch], leads: int, members: int = 1,
             noise: float = 0.0) -> Iterator[LeadSlice]:  # fmt: skip
    """The rollout's leads one at a time (lazily: lead L + 1 is computed after lead L is
    consumed)."""
    t1, step = pd.Timestamp(batches[0].times[1]), offset(batches[0].step)
    for lead, preds in rollout(model, batches[0], templates(batches), leads, members, noise):
        yield LeadSlice(lead, t1 + lead * step, *moments(preds))


def output_names(layout: Layout) -> dict[tuple[str, str], str]:
    """File name of each dynamic ``(group, variable)``: the variable's name, prefixed with
    its group where another dynamic group has a variable of that name or it is a
    coordinate's."""
    counts = Counter(v for g in layout.dynamic for v in layout.variables(g))
    return {(g, v): f"{g}_{v}" if counts[v] > 1 or v in RESERVED else v
            for g in layout.dynamic for v in layout.variables(g)}  # fmt: skip


INNER_DIM = {DimsKind.LEVEL: ("level",), DimsKind.SPECIES: ("species",)}


def add_realization(ds: Any, members: int) -> None:
    """Scalar coordinate ``realization`` (the ``cell_methods`` statistics are over it):
    member 0, with bounds 0 .. M - 1, the members the mean and spread are taken over."""
    ds.createDimension("bounds", 2)
    v = ds.createVariable("realization", "i4", ())
    v.assignValue(0)
    v.setncatts({"standard_name": "realization", "units": "1",
                 "long_name": "ensemble member (statistics over members 0 .. M - 1)",
                 "bounds": "realization_bounds"})  # fmt: skip
    b = ds.createVariable("realization_bounds", "i4", ("bounds",))
    b[:] = np.array([0, members - 1], np.int32)


class ForecastFile:
    """The forecast file's coordinates and variables in an open netCDF4 Dataset; ``append``
    writes one lead's time slice."""

    def __init__(self, ds: Any, layout: Layout, start: Batch, members: int = 1,
                 species_names: Sequence[str] | None = None) -> None:  # fmt: skip
        self.ds, self.layout, self.names = ds, layout, output_names(layout)
        kinds = {layout.kind(g) for g in layout.dynamic}
        ds.createDimension("time", None)
        time = ds.createVariable("time", "i8", ("time",))
        time.setncatts({"units": TIME_UNITS, "calendar": CALENDAR, "standard_name": "time",
                        "long_name": "valid time", "axis": "T"})  # fmt: skip
        ref = ds.createVariable("forecast_reference_time", "i8", ())
        ref.setncatts({"units": TIME_UNITS, "calendar": CALENDAR,
                       "standard_name": "forecast_reference_time",
                       "long_name": "forecast reference time"})  # fmt: skip
        ref.assignValue(pd.Timestamp(start.times[1]).value // 10**9)
        lead = ds.createVariable("lead", "i4", ("time",))
        lead.setncatts({"long_name": "forecast lead", "units": "1", "step": start.step})
        add_realization(ds, members)
        cf.add_grid(ds, start.grid)
        if DimsKind.LEVEL in kinds:
            cf.add_levels(ds, layout.levels)
        self.species_coords = cf.species_coordinates(species_names)
        if layout.species:
            cf.add_species(ds, layout.species, species_names)
        for g in layout.dynamic:
            dims = ("time", *INNER_DIM.get(layout.kind(g), ()), "latitude", "longitude")
            coords = "forecast_reference_time lead realization" + (
                f" {self.species_coords}" if layout.kind(g) == DimsKind.SPECIES else ""
            )
            for v in layout.variables(g):
                attrs = {**cf.variable_attrs(g, v), "coordinates": coords,
                         "bfm_variable": f"{g}/{v}"}  # fmt: skip
                cf.data_variable(ds, self.names[(g, v)], dims,
                                 {**attrs, "cell_methods": "realization: mean"})  # fmt: skip
                cf.data_variable(ds, self.names[(g, v)] + SPREAD, dims, {
                    **attrs, "long_name": f"ensemble standard deviation of {attrs['long_name']}",
                    "cell_methods": "realization: standard_deviation"})  # fmt: skip

    def append(self, s: LeadSlice) -> None:
        """Write one lead at the next index of the unlimited time dimension."""
        i = len(self.ds.dimensions["time"])
        self.ds["time"][i] = pd.Timestamp(s.time).value // 10**9
        self.ds["lead"][i] = s.lead
        for g in self.layout.dynamic:
            for suffix, values in (("", s.mean[g]), (SPREAD, s.spread[g])):
                for v, arr in unstack(self.layout, g, values).items():
                    self.ds[self.names[(g, v)] + suffix][i] = arr

    def suitability(self, keys: Sequence[int], maps: np.ndarray) -> None:
        """``suitability`` (species, latitude, longitude) of the SDM heads, whose maps
        ``(len(keys), H, W)`` are in ``keys`` order; NaN for a species without a head."""
        row = {int(k): i for i, k in enumerate(self.layout.species)}
        grid = (*self.ds["latitude"].shape, *self.ds["longitude"].shape)
        unknown = [int(k) for k in keys if int(k) not in row]
        if unknown or maps.shape != (len(keys), *grid):
            raise ValueError(f"--heads: suitability maps {maps.shape} of species {list(keys)} "
                             f"must be (species, *{grid}) of the model's species "
                             f"{list(self.layout.species)} (unknown: {unknown})")  # fmt: skip
        out = np.full((len(row), *grid), np.nan, np.float32)
        out[[row[int(k)] for k in keys]] = maps
        v = cf.data_variable(self.ds, "suitability", ("species", "latitude", "longitude"), {
            "units": "1", "long_name": "habitat suitability: probability of presence (SDM "
            "heads)", "coordinates": self.species_coords})  # fmt: skip
        v[:] = out


def species_names(path: Path | None, layout: Layout) -> tuple[str, ...] | None:
    """The layout's species' scientific names from a species table, or None."""
    if path is None or not layout.species:
        return None
    from bfm.contracts.species_table import read_species_table

    return read_species_table(path).select(layout.species, str(path)).names


def suitability_maps(path: Path, model: BFM, start: Batch) -> tuple[list[int], np.ndarray]:
    """The species keys of the SDM heads and their suitability maps of the start batch."""
    from bfm.evaluation.sdm import load_heads  # only with --heads (scikit-learn, scipy)

    heads = load_heads(path)
    layout, norm = model.config.layout, model.normaliser()
    maps = np.asarray(heads.suitability(model, start, layout, norm), dtype=np.float32)
    return [int(k) for k in heads.keys], maps


def write_forecast(model: BFM, batches: list[Batch], s: PredictSettings,
                   attrs: dict[str, Any]) -> Path:  # fmt: skip
    """Roll out and write ``s.out`` atomically, one lead at a time."""
    layout = model.config.layout
    names = species_names(s.species_table, layout)
    with atomic_path(s.out) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        out = ForecastFile(ds, layout, batches[0], s.members, names)
        slices = forecast(model, batches, s.leads, s.members, s.noise)
        for piece in tqdm(slices, total=s.leads, desc="predict", unit="lead"):
            out.append(piece)
        if s.heads is not None:
            out.suitability(*suitability_maps(s.heads, model, batches[0]))
        title = f"BFM forecast from {pd.Timestamp(batches[0].times[1]).isoformat()}"
        ds.setncatts(cf.global_attrs(title, {}, **attrs, step=batches[0].step,
                                     grid=batches[0].grid.to_json(),
                                     history="bfm predict"))  # fmt: skip
    return s.out


def run(args: argparse.Namespace) -> int:
    s = PredictSettings.from_args(args)
    model, meta = load_model(s.model)
    plan = load_plan(s.config)
    batches = read_chain(s.batches, model.config.layout, s.leads,
                         plan.batch_settings_hash if plan is not None else None)  # fmt: skip
    used = {"model": str(s.model), "leads": s.leads, "members": s.members, "noise": s.noise,
            "start": batches[0].source, "heads": str(s.heads) if s.heads else None}  # fmt: skip
    attrs = {**provenance(plan.config if plan is not None else None, used),
             "model_run": str(s.model), "members": s.members, "noise": s.noise,
             "leads": s.leads}  # fmt: skip
    write_forecast(model, batches, s, attrs)
    log.info("%d leads x %d members of %s (step %s) from %s -> %s", s.leads, s.members,
             s.model, meta.get("steps_done"), batches[0].times[1], s.out)  # fmt: skip
    return 0
