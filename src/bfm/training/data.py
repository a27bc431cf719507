"""Training samples over batch files: pairing and conversion to typed samples.

A sample pairs two batch files: the input is batch ``i`` (times t0, t1) and the target is the
second time of batch ``i + 1`` (t1 + step), taken only when batch ``i + 1`` starts where batch
``i`` ends (its t0 equals batch ``i``'s t1); a gap in the sequence gives no sample.

Channels follow ``bfm.contracts.layout.Layout``; values are normalised per variable and
channel with the statistics (``Normaliser``); NaN (missing) inputs become 0 (the mean) after
normalising, and the target keeps a mask of its finite values so that the loss ignores the
missing ones. Samples are ``bfm.contracts.sample.Sample`` records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bfm.contracts.batch import Batch, read_batch
from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.sample import ModelInput, Sample
from bfm.contracts.stats import Stats
from bfm.contracts.timeaxis import parse_t0


@dataclass(frozen=True)
class Pair:
    """One training sample: ``input`` batch (t0, t1) and ``target`` batch (t1, t1 + step)."""

    input: Path
    target: Path


def batch_attrs(path: str | Path) -> tuple[tuple[pd.Timestamp, pd.Timestamp], str]:
    """The two times and the settings_hash of a batch file, from its attributes (no data)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            raw, settings = f.attrs["times"], f.attrs.get("settings_hash", "")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        t0, t1 = (pd.Timestamp(t) for t in json.loads(text))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the batch attribute 'times' ({err})") from err
    if parse_t0(path.stem) != t0:
        raise ValueError(f"{path}: file name says t0={parse_t0(path.stem)}, attribute says {t0}")
    return (t0, t1), settings.decode() if isinstance(settings, bytes) else str(settings)


def check_settings(paths: list[Path], settings: dict[Path, str], expected: str | None) -> None:
    """All batches were built under one set of settings (``expected``'s, when given)."""
    want = expected if expected is not None else settings[paths[0]]
    stale = [p for p in paths if settings[p] != want]
    if stale:
        raise ValueError(
            f"{stale[0]}: built under other settings (settings_hash {settings[stale[0]][:12]}, "
            f"expected {want[:12]}; {len(stale)} of {len(paths)} batches): rerun the workflow, "
            "which rebuilds them"
        )


def pair_batches(paths: list[str | Path], settings_hash: str | None = None) -> list[Pair]:
    """Pairs (batch i, batch i+1) for every batch whose successor starts at its t1, by t0.

    Every batch must have been built under the same settings (``settings_hash``, if given).
    """
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"batch file {p} does not exist")
    ordered = sorted({Path(p) for p in paths}, key=lambda p: p.name)
    attrs = {p: batch_attrs(p) for p in ordered}
    if ordered:
        check_settings(ordered, {p: a[1] for p, a in attrs.items()}, settings_hash)
    times = {p: a[0] for p, a in attrs.items()}
    by_t0 = {t[0]: p for p, t in times.items()}
    return [Pair(p, by_t0[times[p][1]]) for p in ordered if times[p][1] in by_t0]


def time_features(t: pd.Timestamp) -> np.ndarray:
    """``[day of year (1..366), hour (0..23)]`` of a time, float32 ``(2,)``."""
    return np.array([t.dayofyear, t.hour + t.minute / 60.0], dtype=np.float32)


def model_inputs(x: Batch, layout: Layout, norm: Normaliser) -> tuple[dict, dict]:
    """Normalised inputs (NaN -> 0; a missing category -> its own code) and their masks."""
    inputs, missing = {}, {}
    for g in layout.groups:
        values = norm.normalise(g, layout.stack(g, x.groups[g]))
        absent = ~np.isfinite(values)
        filled = np.where(absent, 0.0, values)
        for channel, n in layout.categorical(g):  # static: channels on axis 0
            filled[channel] = np.where(absent[channel], n, filled[channel])
        inputs[g] = torch.from_numpy(filled.astype(np.float32))
        missing[g] = torch.from_numpy(absent.astype(np.float32))
    return inputs, missing


def to_sample(x: Batch, y: Batch, layout: Layout, norm: Normaliser) -> Sample:
    """The model sample of an (input, target) batch pair (shapes in ``bfm.contracts.sample``).

    Inputs are normalised with NaN -> 0 and come with their missing-value masks; targets (the
    second time of ``y``) are normalised for continuous variables and raw for counts (the
    model predicts a log-rate), with NaN -> 0 and a mask of the known values; lat/lon in
    degrees; time the day of year and hour of t0.
    """
    inputs, missing = model_inputs(x, layout, norm)
    target, mask = {}, {}
    for g in layout.dynamic:
        raw = layout.stack(g, y.groups[g])[1]
        y1 = norm.normalise(g, raw)
        counts = layout.count_channels(g)
        y1[counts] = raw[counts]
        finite = np.isfinite(y1)
        target[g] = torch.from_numpy(np.where(finite, y1, 0.0).astype(np.float32))
        mask[g] = torch.from_numpy(finite)
    t0 = pd.Timestamp(x.times[0])
    model_input = ModelInput(
        inputs,
        torch.from_numpy(x.grid.latitudes.astype(np.float32)),
        torch.from_numpy(x.grid.longitudes.astype(np.float32)),
        torch.from_numpy(time_features(t0)),
        missing,
    )
    return Sample(model_input, target, mask, torch.tensor(t0.value // 10**9, dtype=torch.int64))


def physical(
    x: Batch, y: Batch, layout: Layout
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(persistence, target)`` in physical units, ``(C_g, H, W)`` per dynamic group, NaN kept.

    Persistence is the input's last time; the target is the next batch's second time.
    """
    persistence = {g: layout.stack(g, x.groups[g])[1] for g in layout.dynamic}
    target = {g: layout.stack(g, y.groups[g])[1] for g in layout.dynamic}
    return persistence, target


class BatchPairs(Dataset):
    """Torch dataset of ``to_sample`` records over the consecutive pairs of ``paths``.

    The layout is ``layout``, else the first batch's groups but ``drop_groups`` (an
    ablation's); the samples hold the layout's groups only, whatever else the batches hold.
    """

    def __init__(
        self,
        paths: list[str | Path],
        norm: Normaliser | Stats,
        layout: Layout | None = None,
        settings_hash: str | None = None,
        drop_groups: Sequence[str] = (),
    ) -> None:
        self.pairs = pair_batches(paths, settings_hash)
        if not self.pairs:
            raise ValueError(
                f"--batches: no consecutive pair among {len(paths)} batch files "
                "(a pair needs a batch whose t0 is another's t1)"
            )
        first = read_batch(self.pairs[0].input)
        self.layout = layout or Layout.from_batch(first, drop_groups)
        self.grid = first.grid
        self.norm = (
            norm if isinstance(norm, Normaliser) else Normaliser.from_stats(norm, self.layout)
        )

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

    def __getitem__(self, i: int) -> Sample:
        x, y = self.load(i)
        return to_sample(x, y, self.layout, self.norm)

    @property
    def names(self) -> list[str]:
        """File names of every batch the samples use, sorted."""
        return sorted({p.name for pair in self.pairs for p in (pair.input, pair.target)})
