"""Per-variable, per-channel statistics from mergeable partial sums (docs/architecture.md).

For every variable and channel (pressure level or species; one channel otherwise) we keep
count (finite values), nan_count, sum, sum of squares, min and max. Partials from different
batches, jobs or MPI ranks merge exactly (sums add, extrema combine), so the result does not
depend on how the work was split. Sums are float64 and centred on a per-channel shift (the
channel's mean in the first data seen), which keeps the variance accurate for large offsets
(msl ~ 1e5 Pa) and for channels whose spread is tiny next to the variable's other channels
(stratospheric humidity: std 6e-9 kg/kg at 200 hPa, mean 6e-4 kg/kg over all levels).

File ``results/stats/stats.json`` (schema ``bfm-stats/1``)::

    {"schema": "bfm-stats/1", "batches": [...], "provenance": {...},
     "variables": {"surface/t2m": {"shift": [..], "count": [..], "nan_count": [..],
                   "sum": [..], "sumsq": [..], "min": [..], "max": [..],
                   "mean": [..], "std": [..]}, ...}}

Each list has one entry per channel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bfm.contracts import catalogue
from bfm.contracts.batch import Batch
from bfm.contracts.catalogue import DimsKind
from bfm.fileio import write_text_atomic

SCHEMA = "bfm-stats/1"
# A std below this fraction of |mean| is float rounding, not spread (float32 resolves 6e-8).
CONSTANT_RTOL = 1e-6


@dataclass
class Moments:
    """Running sums for one variable, one entry per channel (all arrays shape (C,))."""

    shift: np.ndarray
    count: np.ndarray
    nan_count: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, shift: np.ndarray | None = None) -> Moments:
        """Moments of ``values`` shaped (C, N): channel first, samples flattened."""
        x = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(x)
        if shift is None:
            with np.errstate(invalid="ignore", divide="ignore"):
                total = np.where(finite, x, 0.0).sum(axis=1)
                shift = np.where(finite.any(axis=1), total / finite.sum(axis=1), 0.0)
        shift = np.asarray(shift, dtype=np.float64)
        d = np.where(finite, x - shift[:, None], 0.0)
        with np.errstate(all="ignore"):
            mn = np.where(finite.any(axis=1), np.min(np.where(finite, x, np.inf), axis=1), np.inf)
            mx = np.where(finite.any(axis=1), np.max(np.where(finite, x, -np.inf), axis=1), -np.inf)
        return cls(
            shift,
            finite.sum(axis=1),
            (~finite).sum(axis=1),
            d.sum(axis=1),
            (d * d).sum(axis=1),
            mn,
            mx,
        )

    def merge(self, other: Moments) -> Moments:
        if other.count.shape != self.count.shape:
            raise ValueError(
                f"cannot merge moments with {self.count.shape=} and {other.count.shape=} channels"
            )
        # Re-centre the other's sums on our shift: sum(x - a) = sum(x - b) + n (b - a).
        delta = other.shift - self.shift
        n = other.count
        s = other.sum + n * delta
        ss = other.sumsq + 2 * delta * other.sum + n * delta * delta
        return Moments(
            self.shift,
            self.count + n,
            self.nan_count + other.nan_count,
            self.sum + s,
            self.sumsq + ss,
            np.minimum(self.min, other.min),
            np.maximum(self.max, other.max),
        )

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.where(self.count > 0, self.shift + self.sum / self.count, np.nan)

    @property
    def std(self) -> np.ndarray:
        with np.errstate(all="ignore"):
            m = self.sum / self.count
            var = np.maximum(self.sumsq / self.count - m * m, 0.0)
            return np.where(self.count > 0, np.sqrt(var), np.nan)

    def to_dict(self) -> dict[str, Any]:
        def lst(a: np.ndarray) -> list[float | None]:
            return [float(v) if np.isfinite(v) else None for v in np.asarray(a, np.float64)]

        return {
            "shift": lst(self.shift),
            "count": [int(v) for v in self.count],
            "nan_count": [int(v) for v in self.nan_count],
            "sum": lst(self.sum),
            "sumsq": lst(self.sumsq),
            "min": lst(self.min),
            "max": lst(self.max),
            "mean": lst(self.mean),
            "std": lst(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Moments:
        def arr(key: str, missing: float) -> np.ndarray:
            return np.array([missing if v is None else v for v in d[key]], dtype=np.float64)

        return cls(
            np.broadcast_to(np.asarray(d["shift"], dtype=np.float64), (len(d["count"]),)).copy(),
            np.array(d["count"], np.int64),
            np.array(d["nan_count"], np.int64),
            arr("sum", 0.0),
            arr("sumsq", 0.0),
            arr("min", np.inf),
            arr("max", -np.inf),
        )


def channels_first(group: str, arr: np.ndarray) -> np.ndarray:
    """Reshape a batch array to (C, N): level/species channels first, the rest flattened."""
    kind = catalogue.of_group(group).kind
    if kind in (DimsKind.LEVEL, DimsKind.SPECIES):
        return np.moveaxis(arr, 1, 0).reshape(arr.shape[1], -1)
    return arr.reshape(1, -1)


def batch_moments(batch: Batch, first_only: bool = False) -> dict[str, Moments]:
    """Moments of every variable of a batch, keyed ``group/variable``.

    With ``first_only`` only time index 0 is counted (static fields always count once), so that
    consecutive overlapping batches (t0, t1), (t1, t2) count every time exactly once when the
    last batch is added in full.
    """
    out = {}
    for group, variables in batch.groups.items():
        for var, arr in variables.items():
            if first_only and catalogue.of_group(group).kind != DimsKind.STATIC:
                arr = arr[:1]
            out[f"{group}/{var}"] = Moments.of(channels_first(group, arr))
    return out


def merge_all(partials: Iterable[dict[str, Moments]]) -> dict[str, Moments]:
    total: dict[str, Moments] = {}
    for part in partials:
        for key, m in part.items():
            try:
                total[key] = total[key].merge(m) if key in total else m
            except ValueError as err:
                raise ValueError(f"statistics {key}: {err}") from err
    return total


@dataclass(frozen=True)
class Stats:
    variables: dict[str, Moments]
    meta: dict[str, Any]

    def mean_std(self, group: str, var: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std (float64, shape (C,)) for normalisation.

        A constant channel (std <= CONSTANT_RTOL |mean|: below what float32 values resolve,
        so what is left is rounding noise; e.g. stratospheric temperature or humidity) gets
        std = 1e-3 |mean|, so that a model error in normalised units stays negligible in
        physical units; a channel with neither spread nor mean (no data, or all zero) gets
        std 1.
        """
        key = f"{group}/{var}"
        if key not in self.variables:
            raise ValueError(f"statistics have no entry {key!r} (have {sorted(self.variables)})")
        m = self.variables[key]
        mean, std = np.nan_to_num(m.mean), m.std
        fallback = np.where(np.abs(mean) > 0, 1e-3 * np.abs(mean), 1.0)
        spread = np.isfinite(std) & (std > CONSTANT_RTOL * np.abs(mean)) & (std > 0)
        return mean, np.where(spread, std, fallback)


def save_stats(variables: dict[str, Moments], path: str | Path, meta: dict[str, Any]) -> Path:
    doc = {
        "schema": SCHEMA,
        **meta,
        "variables": {k: variables[k].to_dict() for k in sorted(variables)},
    }
    return write_text_atomic(path, json.dumps(doc, indent=1))


def load_stats(path: str | Path) -> Stats:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read statistics ({err})") from err
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: 'schema' is {doc.get('schema')!r}, expected {SCHEMA!r}")
    variables = {k: Moments.from_dict(v) for k, v in doc["variables"].items()}
    meta = {k: v for k, v in doc.items() if k not in ("variables", "schema")}
    return Stats(variables, meta)
