"""The climatology of the training years: per cell, per day of year (and hour), smoothed.

``bfm climatology --batches <training batches> --out results/climatology/climatology.h5``
(rule ``climatology``, built once per study) averages every dynamic channel of the training
batches per cell and per *slot*: the day of year (1..366) and, at a step finer than a day,
the hour of day (00, 06, 12, 18 UTC at 6h). Each model time counts once (a batch's t0, and the
last batch's t1). The mean of a slot is the mean over the slots within ``window`` days of it
(a circular box window over the day of year: +-15 days by default, so a day of year seen in
no training year still has a climatology). A point with no value in its window is NaN.

Only training batches are read (``timeaxis.in_training``): the climatology never sees a
held-out time. Memory is bounded: the channels are accumulated in blocks sized to
``max_bytes`` (float64 sums and int32 counts of every slot), each block a pass over the
batches that reads only its channels (one chunk per 2-D field, ``bfm.contracts.batch``), then
smoothed a few latitude rows at a time and written one channel and hour at a time (one
float32 ``(366, H, W)`` field beside the block, not copies of the block).

File (HDF5): one group per dynamic batch group with dataset ``mean`` ``(366, n_hours, C, H,
W)`` float32 (channels in the layout's order) and ``n`` ``(366, n_hours)`` (model times per
slot before smoothing); root attributes ``schema`` (``bfm-climatology/1``), ``step``,
``window_days``, ``hours``, ``grid``, ``layout`` (JSON), ``years`` (the training years seen).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

import bfm.contracts.batch  # noqa: F401  (registers the batches' Blosc filter with h5py)
from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.grid import Grid
from bfm.contracts.layout import Layout
from bfm.fileio import atomic_path

log = logging.getLogger(__name__)
SCHEMA = "bfm-climatology/1"
DAYS = 366
WINDOW_DAYS = 15
MAX_BYTES = 1 << 30  # accumulator memory per pass (float64 sums + int32 counts)
SMOOTH_ROWS = 16  # latitude rows smoothed at once: a few MB of temporaries at the Europe grid


def hours_of(step: str) -> tuple[int, ...]:
    """The hour slots of a step: 00/06/12/18 at 6h, else one (00)."""
    return (0, 6, 12, 18) if step == "6h" else (0,)


def slot(t: pd.Timestamp, hours: Sequence[int]) -> tuple[int, int]:
    """``(day of year - 1, hour index)`` of a time."""
    t = pd.Timestamp(t)
    return t.dayofyear - 1, list(hours).index(t.hour) if t.hour in hours else 0


@dataclass(frozen=True)
class Climatology:
    """A built climatology (module docstring), read whole or per group."""

    path: Path
    step: str
    hours: tuple[int, ...]
    window_days: int
    grid: Grid

    @classmethod
    def open(cls, path: str | Path) -> Climatology:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such climatology (rule climatology builds it)")
        with h5py.File(path, "r") as f:
            if f.attrs.get("schema") != SCHEMA:
                raise ValueError(f"{path}: not a climatology (schema {SCHEMA})")
            return cls(path, str(f.attrs["step"]), tuple(json.loads(f.attrs["hours"])),
                       int(f.attrs["window_days"]), Grid.from_json(f.attrs["grid"]))  # fmt: skip

    def at(self, group: str, t: pd.Timestamp) -> np.ndarray:
        """The climatology of ``group`` at time ``t``: ``(C, H, W)`` float32, NaN unknown."""
        day, hour = slot(t, self.hours)
        with h5py.File(self.path, "r") as f:
            if group not in f:
                raise ValueError(f"{self.path}: no group {group!r} (has {list(f)})")
            return np.asarray(f[group]["mean"][day, hour], dtype=np.float32)


def _channel_reads(layout: Layout, group: str) -> list[tuple[str, int | None]]:
    """``(variable, inner index or None)`` of each channel of a group, in layout order."""
    per_channel = layout.kind(group) in (DimsKind.LEVEL, DimsKind.SPECIES)
    return [(v, i if per_channel else None) for v in layout.variables(group)
            for i in range(layout.inner(group))]  # fmt: skip


def _times(batches: Sequence[str]) -> list[tuple[str, int, pd.Timestamp]]:
    """``(batch, time index, time)``: every model time of the batches once."""
    seen: dict[pd.Timestamp, tuple[str, int]] = {}
    for path in sorted(batches, key=lambda p: Path(p).name):
        with h5py.File(path, "r") as f:
            raw = f.attrs["times"]
        times = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        for k, t in enumerate(times):
            seen.setdefault(pd.Timestamp(t), (path, k))
    return [(p, k, t) for t, (p, k) in sorted(seen.items())]


def smooth(sums: np.ndarray, counts: np.ndarray, window: int) -> np.ndarray:
    """Circular box window of +-``window`` days over axis 0 of ``sums`` and ``counts``: the
    sum of ``np.roll`` by each shift from -window to window, in that order (so the same
    float64 sums whatever the array's extent), without a rolled copy per shift."""
    s, c = np.zeros(sums.shape), np.zeros_like(counts)
    for shift in range(-window, window + 1):
        _add_rolled(s, sums, shift)
        _add_rolled(c, counts, shift)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def _add_rolled(acc: np.ndarray, x: np.ndarray, shift: int) -> None:
    """``acc += np.roll(x, shift, axis=0)``, in two slices instead of a rolled copy."""
    n = x.shape[0]
    k = shift % n
    acc[k:] += x[: n - k]
    if k:
        acc[:k] += x[n - k :]


def build(batches: Sequence[str], layout: Layout, out: str | Path, window: int = WINDOW_DAYS,
          max_bytes: int = MAX_BYTES) -> Path:  # fmt: skip
    """Write the climatology of ``batches`` (the training batches) to ``out``."""
    if not batches:
        raise ValueError("climatology: no training batch given")
    if not 0 <= window < DAYS // 2:
        raise ValueError(f"climatology: window {window} days must lie in 0..{DAYS // 2 - 1}")
    first = batches[0]
    with h5py.File(first, "r") as f:
        step, grid = str(f.attrs["step"]), Grid.from_json(f.attrs["grid"])
    hours = hours_of(step)
    times = _times(batches)
    cells = grid.n_lat * grid.n_lon
    per_channel = DAYS * len(hours) * cells * 12  # float64 sum + int32 count
    block = max(1, int(max_bytes // per_channel))
    years = sorted({t.year for _, _, t in times})
    n = np.zeros((DAYS, len(hours)), np.int64)
    for _, _, t in times:
        n[slot(t, hours)] += 1
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(schema=SCHEMA, step=step, window_days=window, hours=json.dumps(hours),
                       grid=grid.to_json(), layout=json.dumps(layout.to_dict()),
                       years=json.dumps(years))  # fmt: skip
        for g in layout.dynamic:
            reads = _channel_reads(layout, g)
            grp = f.create_group(g)
            grp.create_dataset("n", data=n)
            mean = grp.create_dataset(
                "mean", (DAYS, len(hours), len(reads), grid.n_lat, grid.n_lon), np.float32,
                chunks=(1, 1, 1, grid.n_lat, grid.n_lon), compression="gzip", compression_opts=1,
            )  # fmt: skip
            for c0 in range(0, len(reads), block):
                part = reads[c0 : c0 + block]
                sums = np.zeros((DAYS, len(hours), len(part), *grid.shape))
                counts = np.zeros(sums.shape, np.int32)
                bar = tqdm(times, desc=f"climatology {g} {c0 + 1}-{c0 + len(part)}",
                           unit="time", file=sys.stderr,
                           mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip
                open_path, h = None, None
                try:
                    for path, k, t in bar:
                        if path != open_path:
                            if h is not None:
                                h.close()
                            h, open_path = h5py.File(path, "r"), path
                        assert h is not None
                        day, hour = slot(t, hours)
                        for j, (var, inner) in enumerate(part):
                            ds = h[g][var]
                            x = ds[k] if inner is None else ds[k, inner]
                            ok = np.isfinite(x)
                            sums[day, hour, j] += np.where(ok, x, 0.0)
                            counts[day, hour, j] += ok
                finally:
                    if h is not None:
                        h.close()
                field = np.empty((DAYS, *grid.shape), np.float32)
                for h, j in np.ndindex(len(hours), len(part)):  # a field at a time, by rows
                    for r in range(0, grid.n_lat, SMOOTH_ROWS):
                        rows = slice(r, r + SMOOTH_ROWS)
                        field[:, rows] = smooth(sums[:, h, j, rows], counts[:, h, j, rows], window)
                    mean[:, h, c0 + j] = field
    log.info("wrote %s: %d model times of %s, window +-%d days", out, len(times),
             ", ".join(map(str, years)), window)  # fmt: skip
    return Path(out)


def _run(args: argparse.Namespace) -> int:
    from bfm.contracts.batch import read_batch
    from bfm.workflow import load_plan

    plan = load_plan(args.config)
    layout = Layout.from_batch(read_batch(args.batches[0]))
    window = args.window
    if window is None:
        evaluation = (plan.config.get("evaluation") or {}) if plan else {}
        window = evaluation.get("climatology_window_days", WINDOW_DAYS)
    build(args.batches, layout, args.out, int(window), int(args.max_gb * (1 << 30)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "climatology", __doc__, "per-cell day-of-year climatology of training")
    p.add_argument("--batches", nargs="+", required=True, metavar="FILE",
                   help="the training batches (never a held-out one)")  # fmt: skip
    p.add_argument("--out", required=True, help="climatology file to write (.h5)")
    p.add_argument("--window", type=int, default=None,
                   help="smoothing half-width in days (default: the config's "
                   "evaluation.climatology_window_days, else 15)")  # fmt: skip
    p.add_argument("--max-gb", type=float, default=1.0,
                   help="accumulator memory per pass in GiB (default 1)")  # fmt: skip
    add_config_argument(p, required=False)
    p.set_defaults(func=_run)
