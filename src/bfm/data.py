"""Training samples over batch files: pairing, channel layout and normalisation (DESIGN.md §8).

A sample pairs two batch files: the input is batch ``i`` (times t0, t1) and the target is the
second time of batch ``i + 1`` (t1 + step), taken only when batch ``i + 1`` starts where batch
``i`` ends (its t0 equals batch ``i``'s t1); a gap in the sequence gives no sample.

Channel layout (``Layout``): each variable group becomes one channel axis, variables in
``bfm.batch.GROUPS`` order, and for level/species groups variable-major, i.e. channel
``v * N + n`` is variable ``v`` at level (or species) ``n``:

==========  ==========================  ===============================
kind        input tensor                channels C_g
==========  ==========================  ===============================
time        ``(2, C_g, H, W)``          n_vars
static      ``(C_g, H, W)``             n_vars
level       ``(2, C_g, H, W)``          n_vars x n_levels
species     ``(2, C_g, H, W)``          n_vars x n_species
==========  ==========================  ===============================

Values are normalised per variable and channel with the statistics (``(x - mean) / std``);
NaN (missing) inputs become 0 (the mean) after normalising, and the target keeps a mask of its
finite values so that the loss ignores the missing ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bfm.batch import GROUPS, Batch, read_batch
from bfm.stats import Stats
from bfm.timeaxis import parse_t0

DYNAMIC_KINDS = ("time", "level", "species")


@dataclass(frozen=True)
class Layout:
    """Which groups, levels and species the model sees, and how they stack into channels.

    Attributes:
        levels: pressure levels in hPa of the level groups, ``(L,)``.
        species: GBIF keys of the species groups, ``(S,)``.
        groups: the variable groups, in ``bfm.batch.GROUPS`` order.
    """

    levels: tuple[int, ...]
    species: tuple[int, ...]
    groups: tuple[str, ...] = field(default_factory=lambda: tuple(GROUPS))

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"layout: unknown groups {unknown} (known: {list(GROUPS)})")

    @classmethod
    def from_batch(cls, batch: Batch) -> Layout:
        # GROUPS order, not the file's (alphabetical) order: channels and scores follow it.
        return cls(levels=tuple(int(v) for v in batch.levels),
                   species=tuple(int(v) for v in batch.species),
                   groups=tuple(g for g in GROUPS if g in batch.groups))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        return cls(levels=tuple(d["levels"]), species=tuple(d["species"]),
                   groups=tuple(d["groups"]))

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "species": list(self.species),
                "groups": list(self.groups)}

    @property
    def dynamic(self) -> tuple[str, ...]:
        """The groups the model predicts (all but static)."""
        return tuple(g for g in self.groups if GROUPS[g].kind in DYNAMIC_KINDS)

    def kind(self, group: str) -> str:
        return GROUPS[group].kind

    def variables(self, group: str) -> tuple[str, ...]:
        return GROUPS[group].variables

    def inner(self, group: str) -> int:
        """Channels per variable: levels, species, or 1."""
        kind = self.kind(group)
        return {"level": len(self.levels), "species": len(self.species)}.get(kind, 1)

    def n_channels(self, group: str) -> int:
        return len(self.variables(group)) * self.inner(group)

    def channel_labels(self, group: str) -> list[tuple[str, str | None]]:
        """``(variable, channel)`` per channel; channel is the level or species key, or None."""
        kind = self.kind(group)
        inner: list[str | None] = [None]
        if kind == "level":
            inner = [str(v) for v in self.levels]
        elif kind == "species":
            inner = [str(v) for v in self.species]
        return [(var, lab) for var in self.variables(group) for lab in inner]

    def stack(self, group: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Stack a batch group's variables into ``(2, C_g, H, W)`` (static: ``(C_g, H, W)``)."""
        parts = [arrays[v] for v in self.variables(group)]
        kind = self.kind(group)
        if kind == "static":
            return np.stack(parts, axis=0)
        if kind == "time":
            return np.stack(parts, axis=1)
        return np.concatenate(parts, axis=1)

    def check(self, batch: Batch) -> None:
        """Raise ValueError if ``batch`` does not carry this layout's levels/species/groups."""
        got = Layout.from_batch(batch)
        for name in ("levels", "species"):
            if getattr(got, name) != getattr(self, name):
                raise ValueError(f"{batch.source}: {name} {list(getattr(got, name))} differ "
                                 f"from the model's {list(getattr(self, name))}")
        missing = [g for g in self.groups if g not in batch.groups]
        if missing:
            raise ValueError(f"{batch.source}: lacks groups {missing} the model needs")


@dataclass(frozen=True)
class Normaliser:
    """Per-group, per-channel mean and std (float64 ``(C_g,)``) in the ``Layout`` order."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def from_stats(cls, stats: Stats, layout: Layout) -> Normaliser:
        mean, std = {}, {}
        for group in layout.groups:
            pairs = [stats.mean_std(group, var) for var in layout.variables(group)]
            for var, (m, _) in zip(layout.variables(group), pairs, strict=True):
                if m.shape != (layout.inner(group),):
                    raise ValueError(f"statistics {group}/{var} have {m.shape[0]} channels, the "
                                     f"batches {layout.inner(group)} (levels/species differ?)")
            mean[group] = np.concatenate([p[0] for p in pairs]).astype(np.float64)
            std[group] = np.concatenate([p[1] for p in pairs]).astype(np.float64)
        return cls(mean, std)

    def normalise(self, group: str, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` with the channel axis at -3; float32 out, NaN kept."""
        m, s = self.mean[group][:, None, None], self.std[group][:, None, None]
        return ((x - m) / s).astype(np.float32)

    def denormalise(self, group: str, x: np.ndarray) -> np.ndarray:
        m, s = self.mean[group][:, None, None], self.std[group][:, None, None]
        return (x * s + m).astype(np.float32)


@dataclass(frozen=True)
class Pair:
    """One training sample: ``input`` batch (t0, t1) and ``target`` batch (t1, t1 + step)."""

    input: Path
    target: Path


def batch_times(path: str | Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The two times of a batch file, read from its attributes only (no data)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs["times"]
    except (OSError, KeyError) as err:
        raise ValueError(f"{path}: cannot read the batch attribute 'times' ({err})") from err
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    t0, t1 = (pd.Timestamp(t) for t in json.loads(text))
    if parse_t0(path.stem) != t0:
        raise ValueError(f"{path}: file name says t0={parse_t0(path.stem)}, attribute says {t0}")
    return t0, t1


def pair_batches(paths: list[str | Path]) -> list[Pair]:
    """Pairs (batch i, batch i+1) for every batch whose successor starts at its t1, by t0."""
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"batch file {p} does not exist")
    ordered = sorted({Path(p) for p in paths}, key=lambda p: p.name)
    times = {p: batch_times(p) for p in ordered}
    by_t0 = {t[0]: p for p, t in times.items()}
    return [Pair(p, by_t0[times[p][1]]) for p in ordered if times[p][1] in by_t0]


def time_features(t: pd.Timestamp) -> np.ndarray:
    """``[day of year (1..366), hour (0..23)]`` of a time, float32 ``(2,)``."""
    return np.array([t.dayofyear, t.hour + t.minute / 60.0], dtype=np.float32)


def to_sample(x: Batch, y: Batch, layout: Layout, norm: Normaliser) -> dict[str, Any]:
    """The model sample of an (input, target) batch pair.

    Returns a dict of tensors: ``inputs[g]`` ``(2, C_g, H, W)`` (static ``(C_g, H, W)``),
    normalised with NaN -> 0; ``target[g]`` ``(C_g, H, W)`` normalised with NaN -> 0 and
    ``mask[g]`` (bool, True where the target is finite) for the dynamic groups; ``lat`` (H,),
    ``lon`` (W,) in degrees; ``time`` ``(2,)`` day-of-year and hour of t0; ``t0`` seconds.
    """
    inputs, target, mask = {}, {}, {}
    for g in layout.groups:
        inputs[g] = torch.from_numpy(np.nan_to_num(norm.normalise(g, layout.stack(g, x.groups[g]))))
    for g in layout.dynamic:
        y1 = norm.normalise(g, layout.stack(g, y.groups[g])[1])
        finite = np.isfinite(y1)
        target[g] = torch.from_numpy(np.where(finite, y1, 0.0).astype(np.float32))
        mask[g] = torch.from_numpy(finite)
    t0 = pd.Timestamp(x.times[0])
    return {"inputs": inputs, "target": target, "mask": mask,
            "lat": torch.from_numpy(x.grid.latitudes.astype(np.float32)),
            "lon": torch.from_numpy(x.grid.longitudes.astype(np.float32)),
            "time": torch.from_numpy(time_features(t0)),
            "t0": torch.tensor(t0.value // 10**9, dtype=torch.int64)}


def physical(x: Batch, y: Batch,
             layout: Layout) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(persistence, target)`` in physical units, ``(C_g, H, W)`` per dynamic group, NaN kept.

    Persistence is the input's last time; the target is the next batch's second time.
    """
    persistence = {g: layout.stack(g, x.groups[g])[1] for g in layout.dynamic}
    target = {g: layout.stack(g, y.groups[g])[1] for g in layout.dynamic}
    return persistence, target


class BatchPairs(Dataset):
    """Torch dataset of ``to_sample`` dicts over the consecutive pairs of ``paths``."""

    def __init__(self, paths: list[str | Path], norm: Normaliser | Stats,
                 layout: Layout | None = None) -> None:
        self.pairs = pair_batches(paths)
        if not self.pairs:
            raise ValueError(f"--batches: no consecutive pair among {len(paths)} batch files "
                             "(a pair needs a batch whose t0 is another's t1)")
        first = read_batch(self.pairs[0].input)
        self.layout = layout or Layout.from_batch(first)
        self.grid = first.grid
        self.norm = norm if isinstance(norm, Normaliser) else Normaliser.from_stats(
            norm, self.layout)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[Batch, Batch]:
        """Read and check the two batches of pair ``i``."""
        pair = self.pairs[i]
        x, y = read_batch(pair.input), read_batch(pair.target)
        for b in (x, y):
            self.layout.check(b)
            if b.grid != self.grid:
                raise ValueError(f"{b.source}: grid {b.grid} differs from {self.grid}")
        return x, y

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, y = self.load(i)
        return to_sample(x, y, self.layout, self.norm)

    @property
    def names(self) -> list[str]:
        """File names of every batch the samples use, sorted."""
        return sorted({p.name for pair in self.pairs for p in (pair.input, pair.target)})
