"""Samples decoded straight into their final arrays: the training loader's fast path.

``to_sample`` (``bfm.training.data``) builds a sample from two ``Batch`` records: every field
is decoded into an array of its own, stacked into the layout's channels (a copy),
normalised (a float64 pass), masked, and, in a DataLoader worker, copied once more into
shared memory by the collate. ``fill_sample`` gives the same values bit for bit with one
write per value: ``SampleArrays`` holds the arrays of a micro-batch (leading axis: its
samples; in shared memory when made in a loader worker, so that the DataLoader hands them
to the training process without a copy), each field of the two batch files is decoded by
HDF5 into its channel (``bfm.contracts.batch.BatchFile``), and each 2-D field is then
normalised, masked and filled while it is in the cache.

The training loader splits the two halves: a worker only reads (``read_sample``, raw values
into a ``SampleArrays`` without masks) and the training process finishes the micro-batch
where it goes (``finish_raw``): on a GPU with torch, whole groups at once (the same float64
arithmetic rounded to float32: the same bits), on a CPU field by field (``finish_sample``).
Reading is then all a worker's CPU does: at the Europe grid ~0.11 s a sample instead of
~0.17 (``bfm bench loader``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import get_worker_info

from bfm.contracts.batch_io import BatchFile
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.grid import Grid
from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.sample import ModelInput, Sample

ALIGN = 64  # bytes: every tensor of a slot starts on a cache line


def _buffer(nbytes: int, shared: bool) -> torch.Tensor:
    """``nbytes`` uninitialised bytes: one shared-memory storage (the DataLoader passes a
    worker's tensors by that one handle), else numpy's memory (its allocator asks for huge
    pages, torch's does not: fewer page faults per sample)."""
    if shared:  # as default_collate does in a worker
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=torch.uint8).set_(storage)
    return torch.from_numpy(np.empty(nbytes, np.uint8))


def _carve(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], shared: bool
           ) -> dict[str, torch.Tensor]:  # fmt: skip
    """A tensor per spec (shape, dtype), all views of one buffer (``_buffer``)."""
    offsets, end = {}, 0
    for key, (shape, dtype) in specs.items():
        offsets[key] = end
        end += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
    base = _buffer(max(end, ALIGN), shared)
    out = {}
    for key, (shape, dtype) in specs.items():
        nbytes = math.prod(shape) * dtype.itemsize
        out[key] = base[offsets[key] : offsets[key] + nbytes].view(dtype).view(shape)
    return out


@dataclass(frozen=True)
class SampleArrays:
    """The tensors of ``n`` samples (leading axis), shapes as ``Sample.collate``'s."""

    inputs: dict[str, torch.Tensor]
    missing: dict[str, torch.Tensor]  # bool
    target: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]  # bool
    lat: torch.Tensor
    lon: torch.Tensor
    time: torch.Tensor
    t0: torch.Tensor

    @classmethod
    def allocate(cls, layout: Layout, grid: Grid, n: int, shared: bool | None = None,
                 masks: bool = True) -> SampleArrays:  # fmt: skip
        """Uninitialised arrays; ``shared`` (default: in a DataLoader worker) in shared memory;
        without ``masks`` (``missing`` and ``mask`` empty) for raw samples (``read_sample``)."""
        shared = get_worker_info() is not None if shared is None else shared
        hw = (grid.n_lat, grid.n_lon)
        f32, flag = torch.float32, torch.bool

        def times(g: str) -> tuple[int, ...]:
            return () if layout.kind(g) == DimsKind.STATIC else (2,)

        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for g in layout.groups:
            shape = (n, *times(g), layout.n_channels(g), *hw)
            specs[f"inputs/{g}"] = (shape, f32)
            if masks:
                specs[f"missing/{g}"] = (shape, flag)
        for g in layout.dynamic:
            shape = (n, layout.n_channels(g), *hw)
            specs[f"target/{g}"] = (shape, f32)
            if masks:
                specs[f"mask/{g}"] = (shape, flag)
        specs |= {"lat": ((n, grid.n_lat), f32), "lon": ((n, grid.n_lon), f32),
                  "time": ((n, 2), f32), "t0": ((n,), torch.int64)}  # fmt: skip
        t = _carve(specs, shared)

        def part(name: str, groups: tuple[str, ...]) -> dict[str, torch.Tensor]:
            return {g: t[f"{name}/{g}"] for g in groups if f"{name}/{g}" in t}

        return cls(part("inputs", layout.groups), part("missing", layout.groups),
                   part("target", layout.dynamic), part("mask", layout.dynamic), t["lat"],
                   t["lon"], t["time"], t["t0"])  # fmt: skip

    def sample(self, batched: bool = True, compact: bool = True) -> Sample:
        """The ``Sample`` of these arrays (of sample 0 alone unless ``batched``); masks as
        float32 unless ``compact`` (``to_sample``'s)."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if batched else t[0]

        def masks(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {g: pick(t) if compact else pick(t).to(torch.float32) for g, t in d.items()}

        x = ModelInput({g: pick(t) for g, t in self.inputs.items()}, pick(self.lat),
                       pick(self.lon), pick(self.time), masks(self.missing))  # fmt: skip
        return Sample(x, {g: pick(t) for g, t in self.target.items()},
                      {g: pick(t) for g, t in self.mask.items()}, pick(self.t0))  # fmt: skip


def _channels(layout: Layout, group: str) -> list[tuple[str, slice]]:
    """Each variable of ``group`` and its channels (``Layout.stack``'s order)."""
    n = layout.inner(group)
    return [(v, slice(k * n, (k + 1) * n)) for k, v in enumerate(layout.variables(group))]


def _read_group(f: BatchFile, layout: Layout, group: str, out: np.ndarray,
                time: int | None) -> None:  # fmt: skip
    """Decode ``group`` of ``f`` into ``out`` (one sample's array: both times, or ``time``),
    each variable at each time into its channels, a contiguous block."""
    kind = layout.kind(group)
    for var, channels in _channels(layout, group):
        c = channels.start if kind in (DimsKind.TIME, DimsKind.STATIC) else channels
        if time is None and kind != DimsKind.STATIC:
            for t in (0, 1):
                f.read_into(group, var, out[t, c], t)
        else:
            f.read_into(group, var, out[c], time)


def _finish(values: np.ndarray, holes: np.ndarray, mean: np.ndarray, std: np.ndarray,
            keep: np.ndarray, fill: np.ndarray, known: bool) -> None:  # fmt: skip
    """Per 2-D field (channel axis -3): ``(x - mean) / std`` in float64 rounded to float32
    (``Normaliser.normalise`` bit for bit) unless ``keep``; then the non-finite values
    replaced by ``fill`` and marked in ``holes`` (True where missing, or, with ``known``,
    True where finite)."""
    tmp = np.empty(values.shape[-2:], dtype=np.float64)
    bad = np.empty(values.shape[-2:], dtype=bool)
    for index in np.ndindex(values.shape[:-2]):
        c = index[-1]
        field, hole = values[index], holes[index]
        if not keep[c]:
            # Casts, then float64 arithmetic alone: faster than mixed-type ufunc loops
            np.copyto(tmp, field)
            np.subtract(tmp, mean[c], out=tmp)
            np.divide(tmp, std[c], out=tmp)
            np.copyto(field, tmp, casting="same_kind")  # rounds as astype rounds
        np.isfinite(field, out=hole)
        missing = np.logical_not(hole, out=bad if known else hole)
        if missing.any():  # most fields have no gap: no masked pass over them
            np.copyto(field, fill[c], where=missing)


def _check(f: BatchFile, layout: Layout, grid: Grid, groups: tuple[str, ...], what: str) -> None:
    """``f`` is on ``grid`` and holds ``groups`` with the layout's levels and species."""
    if f.grid != grid:
        raise ValueError(f"{f.path}: grid {f.grid} differs from {grid}")
    missing = [g for g in groups if g not in f.names]
    if missing:
        raise ValueError(f"{f.path}: lacks group(s) {missing} the model {what} "
                         f"(it has {sorted(f.names)})")  # fmt: skip
    for g in groups:
        kind = layout.kind(g)
        if kind not in (DimsKind.LEVEL, DimsKind.SPECIES):
            continue
        name = "levels" if kind == DimsKind.LEVEL else "species"
        got = tuple(int(v) for v in f.inner(g))
        if got != getattr(layout, name):
            raise ValueError(f"{f.path}: {name} {list(got)} differ from the model's "
                             f"{list(getattr(layout, name))}")  # fmt: skip


def read_pair(x: BatchFile, y: BatchFile, layout: Layout, grid: Grid, out: SampleArrays,
              b: int) -> None:  # fmt: skip
    """Decode what sample ``b`` of ``out`` needs, as it is in the files: the input file
    ``x``'s layout groups at both times, the target file ``y``'s dynamic groups at its second
    time alone (into ``out.target``), after checking grid, groups, levels and species."""
    _check(x, layout, grid, layout.groups, "needs")
    _check(y, layout, grid, layout.dynamic, "predicts")
    for g in layout.groups:
        _read_group(x, layout, g, out.inputs[g].numpy()[b], None)
    for g in layout.dynamic:
        _read_group(y, layout, g, out.target[g].numpy()[b], 1)


def read_sample(x: BatchFile, y: BatchFile, layout: Layout, grid: Grid, out: SampleArrays,
                b: int) -> None:  # fmt: skip
    """Sample ``b`` of ``out`` as it is in the files (``read_pair``), with its coordinates and
    time: a raw sample, to be normalised and masked by ``finish_sample`` or ``finish_raw``."""
    read_pair(x, y, layout, grid, out, b)
    t0 = pd.Timestamp(x.times[0])
    out.lat.numpy()[b] = grid.latitudes
    out.lon.numpy()[b] = grid.longitudes
    out.time.numpy()[b] = [t0.dayofyear, t0.hour + t0.minute / 60.0]
    out.t0.numpy()[b] = t0.value // 10**9


def _rule(layout: Layout, norm: Normaliser, group: str, target: bool) -> tuple[Any, ...]:
    """How a group's fields are finished (``_finish``'s arguments after the arrays): mean,
    std, the channels kept as they are (a target's counts), what a missing value becomes (0,
    or an input category's own code) and whether the mask marks the known values (targets)."""
    n = layout.n_channels(group)
    fill = np.zeros(n, np.float32)
    for channel, codes in () if target else layout.categorical(group):
        fill[channel] = codes
    keep = layout.count_channels(group) if target else np.zeros(n, bool)
    return norm.mean[group], norm.std[group], keep, fill, target


def finish_sample(out: SampleArrays, b: int, layout: Layout, norm: Normaliser) -> None:
    """Normalise and mask raw sample ``b`` of ``out`` (``read_sample``) in place, one 2-D
    field at a time: ``to_sample``'s values and masks bit for bit."""
    for g in layout.groups:
        _finish(out.inputs[g].numpy()[b], out.missing[g].numpy()[b], *_rule(layout, norm, g, False))
    for g in layout.dynamic:
        _finish(out.target[g].numpy()[b], out.mask[g].numpy()[b], *_rule(layout, norm, g, True))


def fill_sample(x: BatchFile, y: BatchFile, layout: Layout, norm: Normaliser, grid: Grid,
                out: SampleArrays, b: int) -> None:  # fmt: skip
    """Sample ``b`` of ``out`` from the input batch file ``x`` and the target's ``y``
    (``read_sample``), normalised and masked in place (``finish_sample``): the values of
    ``to_sample(read_batch(x), read_batch(y), ...)`` bit for bit."""
    read_sample(x, y, layout, grid, out, b)
    finish_sample(out, b, layout, norm)


def _finish_tensor(x: torch.Tensor, mean: np.ndarray, std: np.ndarray, keep: np.ndarray,
                   fill: np.ndarray, known: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``_finish`` of a whole group tensor (channel axis -3) with torch, on its device: the
    same float64 arithmetic rounded to float32, so the same bits; new tensors (values, mask)."""
    dev, shape = x.device, (-1, 1, 1)
    if not keep.all():
        m = torch.as_tensor(mean, dtype=torch.float64, device=dev).view(shape)
        s = torch.as_tensor(std, dtype=torch.float64, device=dev).view(shape)
        normalised = ((x.double() - m) / s).float()  # rounds to nearest, as numpy's cast
        if keep.any():
            normalised = torch.where(torch.as_tensor(keep, device=dev).view(shape), x, normalised)
        x = normalised
    finite = torch.isfinite(x)
    values = torch.where(finite, x, torch.as_tensor(fill, device=dev).view(shape))
    return values, finite if known else ~finite


def finish_raw(raw: SampleArrays, layout: Layout, norm: Normaliser, device: torch.device,
               dtype: torch.dtype, on: str | None = None) -> Sample:  # fmt: skip
    """The ``Sample`` (batched, on ``device``, fields in ``dtype``) of raw micro-batch ``raw``
    (``read_sample``; no masks): normalised and masked where it is going. On a CPU device,
    ``finish_sample`` in place, field by field (``on="numpy"``); elsewhere the values travel
    as they are and torch finishes each group on the device (``on="torch"``), where the
    arithmetic costs next to nothing: a loader worker only reads. Both give ``to_sample``'s
    bits."""
    on = on or ("numpy" if torch.device(device).type == "cpu" else "torch")
    if on == "numpy":
        missing, mask = _masks_like(raw.inputs), _masks_like(raw.target)
        done = SampleArrays(raw.inputs, missing, raw.target, mask, raw.lat, raw.lon, raw.time,
                            raw.t0)  # fmt: skip
        for b in range(raw.t0.shape[0]):
            finish_sample(done, b, layout, norm)
        return done.sample().to(device, dtype)
    inputs, missing, target, mask = {}, {}, {}, {}
    for g, t in raw.inputs.items():
        values = t.to(device, non_blocking=True)
        inputs[g], missing[g] = _finish_tensor(values, *_rule(layout, norm, g, False))
    for g, t in raw.target.items():
        values = t.to(device, non_blocking=True)
        target[g], mask[g] = _finish_tensor(values, *_rule(layout, norm, g, True))
    x = ModelInput(inputs, raw.lat.to(device), raw.lon.to(device), raw.time.to(device), missing)
    return Sample(x, target, mask, raw.t0.to(device)).to(device, dtype)


def _masks_like(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Uninitialised bool arrays of the shapes of ``values`` (numpy's memory, as ``_buffer``)."""
    return {g: torch.from_numpy(np.empty(tuple(t.shape), bool)) for g, t in values.items()}


class SlotPool:
    """Shared-memory ``SampleArrays`` that each DataLoader worker fills again and again.

    Fresh shared memory costs a worker a page fault per 4 KiB page it writes (tmpfs has no
    huge pages): at the Europe grid ~90 MB a sample, as much CPU as decoding it. So each
    worker keeps ``slots`` arrays (one storage each), and ``free`` (shared, one row per
    worker) says which ones the training process has done with: ``MicroBatches`` frees a
    slot once no tensor of the micro-batch it handed out is referenced any more (or once the
    pin thread has copied it into pinned memory, on CUDA). A worker with no free slot takes
    fresh shared memory: it never waits.
    """

    def __init__(self, workers: int, slots: int) -> None:
        self.free = torch.ones((max(workers, 1), slots), dtype=torch.uint8).share_memory_()
        self._arrays: dict[int, SampleArrays] = {}  # this worker's slots (a copy per process)

    def take(
        self, layout: Layout, grid: Grid, n: int
    ) -> tuple[SampleArrays, tuple[int, int] | None]:
        """Raw arrays (no masks) for ``n`` samples and their slot (worker, index): a free slot
        of this worker, else fresh arrays (slot None; also in the training process itself)."""
        info = get_worker_info()
        if info is None:
            return SampleArrays.allocate(layout, grid, n, shared=False, masks=False), None
        row = self.free[info.id]
        for j in range(row.numel()):
            if row[j]:
                arrays = self._arrays.get(j)
                if arrays is None or arrays.t0.shape[0] != n:
                    arrays = SampleArrays.allocate(layout, grid, n, shared=True, masks=False)
                    self._arrays[j] = arrays
                row[j] = 0
                return arrays, (info.id, j)
        return SampleArrays.allocate(layout, grid, n, shared=True, masks=False), None

    def release(self, slot: tuple[int, int]) -> None:
        self.free[slot] = 1
