"""Training samples over batch files: pairing and conversion to typed samples.

A sample pairs two batch files: the input is batch ``i`` (times t0, t1) and the target is the
second time of batch ``i + 1`` (t1 + step), taken only when batch ``i + 1`` starts where batch
``i`` ends (its t0 equals batch ``i``'s t1); a gap in the sequence gives no sample.

Channels follow ``bfm.contracts.layout.Layout``; values are normalised per variable and
channel with the statistics (``Normaliser``); NaN (missing) inputs become 0 (the mean) after
normalising, and the target keeps a mask of its finite values so that the loss ignores the
missing ones. Samples are ``bfm.contracts.sample.Sample`` records.

Reading: a pair reads each of its two files once, and only what the sample needs: the
input's layout groups at both times, the target's dynamic groups at its second time, never
its static fields or first time. ``BatchPairs.sample`` decodes them straight into the
sample's arrays (``bfm.training.fill``: each field once, normalised in place, bit for bit
``to_sample`` of ``load``'s two batches); ``load`` and ``to_sample`` remain for evaluation.

Feeding the model (``MicroBatches``): ``bfm train`` takes micro-batches from a
``torch.utils.data.DataLoader`` whose worker processes (``train.loader_workers``, 0 = in the
training process) read and collate them ahead of the step that needs them
(``train.prefetch`` micro-batches per worker), into pinned memory on CUDA; so reading
overlaps the model's compute. A worker only reads: the values travel as they are in the
files, and the training process normalises and masks them where they go
(``bfm.training.fill.finish_raw``: on the GPU, where that arithmetic costs next to nothing;
on a CPU, field by field in place), with ``to_sample``'s bits either way. Micro-batch ``k``
of a rank holds the samples
``bfm.training.engine.sample_indices(n, k * world + rank, micro, seed)``, the order of a
single process reading in the step (resumed runs start at the checkpoint's micro-batch), and
the loader hands them over in that order whatever the number of workers. A worker collates
a micro-batch in place, into one of its shared-memory slots (``bfm.training.fill.SlotPool``),
which it fills again once the training process no longer references what it was handed: no
copy between the processes and no fresh page of shared memory per sample (``bfm bench
loader``: a worker's CPU per sample halved at the Europe grid).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from bfm.contracts.batch import Batch, batch_attrs, read_batch
from bfm.contracts.batch_io import BatchFile
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.sample import ModelInput, Sample
from bfm.contracts.stats import Stats
from bfm.training.engine import sample_indices
from bfm.training.fill import SampleArrays, SlotPool, fill_sample, finish_raw, read_sample

DEFAULT_WORKERS = 2  # train.loader_workers
DEFAULT_PREFETCH = 2  # train.prefetch: micro-batches each worker reads ahead


@dataclass(frozen=True)
class Pair:
    """One training sample: ``input`` batch (t0, t1) and ``target`` batch (t1, t1 + step)."""

    input: Path
    target: Path


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


def normalise_in_place(norm: Normaliser, group: str, values: np.ndarray,
                       keep: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """``norm.normalise(group, values)`` bit for bit, written into ``values`` (float32, channel
    axis -3) one 2-D field at a time: the float64 arithmetic of ``Normaliser`` without a
    float64 copy of the whole array (at the Europe grid that copy was most of a sample's
    cost). Channels where ``keep`` is True are left as they are."""
    mean, std = norm.mean[group], norm.std[group]
    tmp = np.empty(values.shape[-2:], dtype=np.float64)
    for index in np.ndindex(values.shape[:-2]):
        c = index[-1]
        if keep is not None and keep[c]:
            continue
        field = values[index]
        np.subtract(field, mean[c], out=tmp)
        np.divide(tmp, std[c], out=tmp)
        field[...] = tmp  # rounds to float32 as astype does
    return values


def model_inputs(x: Batch, layout: Layout, norm: Normaliser, compact: bool = False
                 ) -> tuple[dict, dict]:  # fmt: skip
    """Normalised inputs (NaN -> 0; a missing category -> its own code) and their masks
    (float32, or bool with ``compact``: a quarter of the bytes)."""
    inputs, missing = {}, {}
    for g in layout.groups:
        stacked = layout.stack(g, x.groups[g]).astype(np.float32, copy=False)
        values = normalise_in_place(norm, g, stacked)
        absent = ~np.isfinite(values)
        np.copyto(values, 0.0, where=absent)
        for channel, n in layout.categorical(g):  # static: channels on axis 0
            np.copyto(values[channel], n, where=absent[channel])
        inputs[g] = torch.from_numpy(values)
        missing[g] = torch.from_numpy(absent if compact else absent.astype(np.float32))
    return inputs, missing


def to_sample(x: Batch, y: Batch, layout: Layout, norm: Normaliser, compact: bool = False
              ) -> Sample:  # fmt: skip
    """The model sample of an (input, target) batch pair (shapes in ``bfm.contracts.sample``).

    Inputs are normalised with NaN -> 0 and come with their missing-value masks; targets (the
    second time of ``y``) are normalised for continuous variables and raw for counts (the
    model predicts a log-rate), with NaN -> 0 and a mask of the known values; lat/lon in
    degrees; time the day of year and hour of t0. With ``compact`` the input masks are bool
    (``Sample.to`` turns them into the model's dtype).
    """
    inputs, missing = model_inputs(x, layout, norm, compact)
    target, mask = {}, {}
    for g in layout.dynamic:
        second = {v: a[1:] for v, a in y.groups[g].items()}  # y's first time is not needed
        y1 = normalise_in_place(norm, g, layout.stack(g, second)[0].astype(np.float32, copy=False),
                                keep=layout.count_channels(g))  # fmt: skip
        finite = np.isfinite(y1)
        np.copyto(y1, 0.0, where=~finite)
        target[g] = torch.from_numpy(y1)
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
        """Read and check the two batches of pair ``i``: the input's layout groups, the
        target's dynamic groups at its second time (its first time NaN, unread)."""
        pair = self.pairs[i]
        x = read_batch(pair.input, only=self.layout.groups)
        y = read_batch(pair.target, only=self.layout.dynamic, time=1)
        self.layout.check(x)
        check_target(self.layout, y)
        for b in (x, y):
            if b.grid != self.grid:
                raise ValueError(f"{b.source}: grid {b.grid} differs from {self.grid}")
        return x, y

    def __getitem__(self, i: int) -> Sample:
        return self.sample(i)

    def sample(self, i: int, compact: bool = False) -> Sample:
        """Sample ``i``, ``to_sample(*self.load(i), ...)`` bit for bit; ``compact``: bool input
        masks (``to_sample``)."""
        # Ordinary memory: a DataLoader over this dataset collates into shared memory itself
        out = SampleArrays.allocate(self.layout, self.grid, 1, shared=False)
        self.fill(i, out, 0)
        return out.sample(batched=False, compact=compact)

    def fill(self, i: int, out: SampleArrays, b: int) -> None:
        """Sample ``i`` decoded straight into sample ``b`` of ``out`` (``fill_sample``): what
        ``load`` reads, with the same checks, and no copy of it."""
        pair = self.pairs[i]
        with BatchFile(pair.input) as x, BatchFile(pair.target) as y:
            fill_sample(x, y, self.layout, self.norm, self.grid, out, b)

    def read(self, i: int, out: SampleArrays, b: int) -> None:
        """Sample ``i`` as it is in the files, into raw sample ``b`` of ``out``
        (``read_sample``; ``finish_raw`` normalises and masks it): ``fill`` without the
        arithmetic, what a loader worker does."""
        pair = self.pairs[i]
        with BatchFile(pair.input) as x, BatchFile(pair.target) as y:
            read_sample(x, y, self.layout, self.grid, out, b)

    @property
    def names(self) -> list[str]:
        """File names of every batch the samples use, sorted."""
        return sorted({p.name for pair in self.pairs for p in (pair.input, pair.target)})


def check_target(layout: Layout, y: Batch) -> None:
    """``y`` holds the layout's dynamic groups, levels and species (ValueError otherwise)."""
    missing = [g for g in layout.dynamic if g not in y.groups]
    if missing:
        raise ValueError(
            f"{y.source}: lacks group(s) {missing} the model predicts (it has {sorted(y.groups)})"
        )
    kinds = {layout.kind(g) for g in layout.dynamic}
    for name, kind, got in (("levels", DimsKind.LEVEL, y.levels),
                            ("species", DimsKind.SPECIES, y.species)):  # fmt: skip
        if kind in kinds and tuple(int(v) for v in got) != getattr(layout, name):
            raise ValueError(
                f"{y.source}: {name} {[int(v) for v in got]} differ "
                f"from the model's {list(getattr(layout, name))}"
            )


@dataclass(frozen=True)
class Order:
    """Which samples a rank's micro-batches hold: ``sample_indices`` of ``k * world + rank``."""

    n: int
    micro: int
    seed: int
    world: int = 1
    rank: int = 0

    def indices(self, k: int) -> list[int]:
        return sample_indices(self.n, k * self.world + self.rank, self.micro, self.seed)


@dataclass
class MicroBatch:
    """Micro-batch number ``k`` of a rank, collated and raw (values as in the files, no
    masks: ``finish_raw``); pinnable by the DataLoader."""

    k: int
    arrays: SampleArrays
    slot: tuple[int, int] | None = None  # the worker's SlotPool slot it lies in, if any
    source: SampleArrays | None = None  # pinned: the slot's tensors it was copied from

    def pin_memory(self) -> MicroBatch:
        pinned = _map_tensors(self.arrays, lambda t: t.pin_memory())
        return MicroBatch(self.k, pinned, self.slot, source=self.arrays)


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` (SampleArrays, Sample, ModelInput, dict, tensor, None) with ``fn`` applied to
    every tensor."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, SampleArrays | Sample | ModelInput):
        return type(obj)(*(_map_tensors(getattr(obj, f), fn) for f in obj.__dataclass_fields__))
    return obj


class MicroBatchSet(Dataset):
    """Item ``k``: micro-batch ``k`` of ``order`` over ``data``, collated raw (read in a
    worker): the values as they are in the files, without masks (a quarter fewer bytes to
    pass and to copy to the GPU); the training process finishes them where they go
    (``MicroBatches.sample``)."""

    def __init__(self, data: BatchPairs, order: Order, pool: SlotPool | None = None) -> None:
        self.data, self.order, self.pool = data, order, pool or SlotPool(0, 0)

    def __getitem__(self, k: int) -> MicroBatch:
        indices = self.order.indices(k)
        out, slot = self.pool.take(self.data.layout, self.data.grid, len(indices))
        for b, i in enumerate(indices):  # collated in place: no copy of the samples
            self.data.read(i, out, b)
        return MicroBatch(k, out, slot)


def _as_is(item: Any) -> Any:
    return item


class MicroBatches:
    """Micro-batches ``first, first + 1, ... < stop`` of ``order``, read ahead by a DataLoader.

    ``sample(k, device, dtype)`` returns micro-batch ``k`` finished on ``device`` (``get(k)``
    the raw one); they must be asked for in order (the loader reads ahead in that order).
    ``workers=0`` reads in the calling process, when asked.
    """

    def __init__(self, data: BatchPairs, order: Order, first: int, stop: int, *,
                 workers: int = DEFAULT_WORKERS, prefetch: int = DEFAULT_PREFETCH,
                 pin_memory: bool = False) -> None:  # fmt: skip
        if workers < 0 or prefetch < 1:
            raise ValueError(
                f"train.loader_workers must be >= 0 and train.prefetch >= 1, got "
                f"{workers} and {prefetch}"
            )
        self.next = first
        # Slots per worker: its prefetched micro-batches, the one in use and the one before it
        # (``batch = loader.get(k)`` drops the old batch only once get returns), a spare.
        self.pool = SlotPool(workers, prefetch + 3)
        self.data = data
        self._held: dict[tuple[int, int], torch.UntypedStorage] = {}  # slot -> its storage
        self._out: set[tuple[int, int]] = set()  # slots handed out, not yet freed
        self.reused = 0  # micro-batches that came in a slot seen before
        self.loader = DataLoader(
            MicroBatchSet(data, order, self.pool),
            batch_size=None,  # items are whole micro-batches already
            sampler=range(first, stop),
            num_workers=workers,
            prefetch_factor=prefetch if workers else None,
            pin_memory=pin_memory,
            collate_fn=_as_is,
        )
        self._it: Iterator[MicroBatch] | None = iter(self.loader) if stop > first else None

    def sample(self, k: int, device: torch.device | str, dtype: torch.dtype) -> Sample:
        """Micro-batch ``k`` on ``device``, normalised and masked there (``finish_raw``),
        fields in ``dtype``: ``Sample.collate`` of ``to_sample`` of its pairs, bit for bit."""
        return finish_raw(self.get(k), self.data.layout, self.data.norm, torch.device(device),
                          dtype)  # fmt: skip

    def get(self, k: int) -> SampleArrays:
        """Raw micro-batch ``k`` (``read_sample``'s arrays, pinned on CUDA)."""
        if k != self.next or self._it is None:
            raise RuntimeError(f"micro-batch {k} asked for; the loader's next is {self.next}")
        self._free_unused()
        item = next(self._it)
        assert item.k == k, f"the loader gave micro-batch {item.k} for {k}"
        self.next += 1
        if item.slot is not None:
            storage = (item.source or item.arrays).t0.untyped_storage()
            self.reused += item.slot in self._held
            # Holding the slot's storage keeps it mapped here: when the slot comes back,
            # torch finds that mapping (by the file's inode) and maps or faults nothing anew.
            self._held[item.slot] = storage
            if item.source is None:
                self._out.add(item.slot)  # handed out as it is: freed once unused
            else:
                self.pool.release(item.slot)  # pinned: a copy was handed out
        return item.arrays

    def _free_unused(self) -> None:
        """Free the slots of handed-out micro-batches none of whose tensors is referenced any
        more (the storage's use count is our handle's alone)."""
        for slot in [s for s in self._out if _use_count(self._held[s]) == 1]:
            self._out.discard(slot)
            self.pool.release(slot)

    def close(self) -> None:
        """Stop the worker processes (also when the last micro-batch was not taken)."""
        self._it = None
        self._held.clear()
        self._out.clear()


def _use_count(storage: torch.UntypedStorage) -> int:
    """How many references (tensors, views, storage handles) the storage has: what torch's
    own ``StorageWeakRef.expired`` reads."""
    return int(torch._C._storage_Use_Count(storage._cdata))


LOADER_KEYS = ("loader_workers", "prefetch")  # config train.*: how samples are read, not which


def open_loader(data: BatchPairs, train: Mapping[str, Any], order: Order, first: int,
                stop: int, cuda: bool) -> MicroBatches:  # fmt: skip
    """``MicroBatches`` with the config's ``train.loader_workers`` and ``train.prefetch``
    (defaults when absent), pinned on CUDA."""
    return MicroBatches(data, order, first, stop, pin_memory=cuda,
                        workers=int(train.get("loader_workers", DEFAULT_WORKERS)),
                        prefetch=int(train.get("prefetch", DEFAULT_PREFETCH)))  # fmt: skip
