"""The training loader: DataLoader workers give the in-process samples in the training order,
a pair reads only what it needs, every batch compression round-trips exactly, old gzip
batches still read, and `bfm bench loader` reports what it says."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bfm.cli import main
from bfm.contracts.batch import COMPRESSION, Compression, read_batch, write_batch
from bfm.contracts.batch_io import BatchFile
from bfm.contracts.sample import Sample
from bfm.contracts.stats import load_stats
from bfm.testing import PROVENANCE, mock_batch, random_values, write_sequence, write_stats
from bfm.training import data as data_module
from bfm.training.data import BatchPairs, MicroBatches, Order, normalise_in_place, to_sample
from bfm.training.engine import sample_indices
from bfm.training.fill import SampleArrays, finish_raw


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> BatchPairs:
    """5 pairs of random batches (every base group) with a missing input and target value."""
    tmp = tmp_path_factory.mktemp("loader")

    def holes(k: int, batch) -> None:
        batch.groups["surface"]["msl"][1, 2, 3] = np.nan
        batch.groups["atmospheric"]["t"][0, 1, 4, 5] = np.nan

    paths = write_sequence(tmp, 6, value=random_values(3), edit=holes)
    return BatchPairs(paths, load_stats(write_stats(paths, tmp / "stats.json")))


def _flat(sample: object) -> list[torch.Tensor]:
    """Every tensor of a Sample, in a fixed order."""
    if isinstance(sample, torch.Tensor):
        return [sample]
    if isinstance(sample, dict):
        return [t for k in sorted(sample) for t in _flat(sample[k])]
    if sample is None:
        return []
    return [t for f in sample.__dataclass_fields__ for t in _flat(getattr(sample, f))]


def _same(a: object, b: object) -> bool:
    """Every tensor equal in dtype, shape and value (NaN where the other has NaN)."""
    ta, tb = _flat(a), _flat(b)

    def equal(x: torch.Tensor, y: torch.Tensor) -> bool:
        if torch.equal(x, y):
            return True
        nan = torch.isnan(x) & torch.isnan(y) if x.is_floating_point() else False
        return x.dtype == y.dtype and x.shape == y.shape and bool(((x == y) | nan).all())

    return len(ta) == len(tb) and all(equal(x, y) for x, y in zip(ta, tb, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_the_samples_of_train_step_in_order(pairs: BatchPairs, workers: int) -> None:
    # Rank 1 of 2, micro-batches of 2, resumed at micro-batch 3: what train_step drew before,
    # sample_indices(n, k * world + rank, micro, seed), read in the training process.
    order = Order(len(pairs), micro=2, seed=7, world=2, rank=1)
    loader = MicroBatches(pairs, order, 3, 7, workers=workers, prefetch=2)
    try:
        for k in range(3, 7):
            want = [pairs[i] for i in sample_indices(len(pairs), k * 2 + 1, 2, 7)]
            got = loader.sample(k, "cpu", torch.float32)
            assert got.input.inputs["surface"].shape[0] == 2
            # Raw values and no masks travel; on the model's side they are what train_step had.
            assert _same(got, Sample.collate(want).to("cpu", torch.float32))
    finally:
        loader.close()


def test_a_worker_refills_a_slot_only_once_its_micro_batch_is_unused(pairs: BatchPairs) -> None:
    # 1 worker, prefetch 1: 4 shared-memory slots for 10 micro-batches. The odd ones are
    # dropped at once (their slots are filled again), the even ones kept to the end: each
    # stays the sample it was, none is overwritten by a later one.
    order = Order(len(pairs), micro=1, seed=3)
    loader = MicroBatches(pairs, order, 0, 10, workers=1, prefetch=1)

    def want(k: int) -> object:
        samples = [pairs.sample(i, compact=True) for i in order.indices(k)]
        return Sample.collate(samples).to("cpu", torch.float32)

    kept = {}
    try:
        for k in range(10):
            got = loader.sample(k, "cpu", torch.float32)
            assert _same(got, want(k)), k
            if k % 2 == 0:
                kept[k] = got
            del got
        assert loader.pool.free.shape == (1, 4) and loader.reused > 0
    finally:
        loader.close()
    for k, got in kept.items():
        assert _same(got, want(k)), k


def test_pinning_maps_every_tensor_of_a_micro_batch(pairs: BatchPairs) -> None:
    # What the DataLoader's pin thread does on CUDA (MicroBatch.pin_memory), with clone for pin.
    raw = SampleArrays.allocate(pairs.layout, pairs.grid, 1, shared=False, masks=False)
    pairs.read(0, raw, 0)
    assert raw.missing == {} and raw.mask == {}  # the masks are made where the sample goes
    for item in (raw, pairs.sample(0, compact=True)):
        copied = data_module._map_tensors(item, torch.clone)
        assert type(copied) is type(item) and _same(copied, item)
        assert all(a is not b for a, b in zip(_flat(copied), _flat(item), strict=True))


@pytest.mark.parametrize("on", ["numpy", "torch"])
def test_a_raw_micro_batch_finishes_into_to_samples_bits(pairs: BatchPairs, on: str) -> None:
    # A worker reads raw values; the training process normalises and masks them: field by
    # field in numpy on a CPU, whole groups in torch on a GPU (here torch on the CPU). Both
    # are the collated to_sample of the pairs, NaN inputs, count targets and categories too.
    raw = SampleArrays.allocate(pairs.layout, pairs.grid, 2, shared=False, masks=False)
    for b, i in enumerate((3, 0)):
        pairs.read(i, raw, b)
    assert bool(torch.isnan(raw.inputs["surface"]).any())  # the holes of the fixture, raw
    got = finish_raw(raw, pairs.layout, pairs.norm, torch.device("cpu"), torch.float32, on=on)
    loaded = [pairs.load(i) for i in (3, 0)]
    want = Sample.collate([to_sample(x, y, pairs.layout, pairs.norm) for x, y in loaded])
    assert _same(got, want.to("cpu", torch.float32))
    layout = pairs.layout
    assert any(layout.categorical(g) for g in layout.groups)
    assert layout.count_channels("species").any()
    assert not bool(got.mask["surface"][1, pairs.layout.variables("surface").index("msl"), 2, 3])


def test_the_ranks_micro_batches_cover_each_epoch_once(pairs: BatchPairs) -> None:
    n, world = len(pairs), 2  # 5 samples; 5 micro-batches of 1 per rank = 2 epochs
    drawn = [i for k in range(5) for r in range(world) for i in Order(n, 1, 0, world, r).indices(k)]
    assert sorted(drawn[:n]) == sorted(drawn[n:]) == list(range(n))


def test_the_loader_refuses_an_out_of_order_request_and_bad_settings(pairs: BatchPairs) -> None:
    loader = MicroBatches(pairs, Order(len(pairs), 1, 0), 0, 3, workers=0)
    with pytest.raises(RuntimeError, match="micro-batch 1 asked for; the loader's next is 0"):
        loader.get(1)
    with pytest.raises(ValueError, match="train.loader_workers must be >= 0"):
        MicroBatches(pairs, Order(len(pairs), 1, 0), 0, 3, workers=-1)


def test_a_pair_reads_the_input_once_and_the_targets_second_time_only(
    pairs: BatchPairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    read_into = BatchFile.read_into

    def spy(self, group, var, out, time=None):
        calls.append((self.path.name, group, var, time))
        return read_into(self, group, var, out, time)

    monkeypatch.setattr(BatchFile, "read_into", spy)
    pair = pairs.pairs[0]
    got = pairs[0]
    layout = pairs.layout
    want = [
        (pair.input.name, g, v, t)
        for g in layout.groups
        for v in layout.variables(g)
        for t in ((None,) if g == "static" else (0, 1))
    ]
    want += [(pair.target.name, g, v, 1) for g in layout.dynamic for v in layout.variables(g)]
    assert calls == want  # each field once, straight into the sample's arrays
    assert "static" in layout.groups and "static" not in layout.dynamic
    # The same sample as from both files read whole, as the loader did before.
    whole = to_sample(read_batch(pair.input), read_batch(pair.target), layout, pairs.norm)
    assert _same(got, whole)
    assert not bool(got.mask["surface"][layout.variables("surface").index("msl"), 2, 3])


def test_read_batch_at_one_time_leaves_the_other_missing(make_batch_file) -> None:
    path = make_batch_file("2010-01-01")
    full, second = read_batch(path), read_batch(path, only=("surface", "static"), time=1)
    assert set(second.groups) == {"surface", "static"}
    t2m = second.groups["surface"]["t2m"]
    assert np.isnan(t2m[0]).all() and np.array_equal(t2m[1], full.groups["surface"]["t2m"][1])
    assert np.array_equal(second.groups["static"]["z"], full.groups["static"]["z"])  # no time
    with pytest.raises(ValueError, match="time must be 0, 1 or None, got 2"):
        read_batch(path, time=2)


def test_normalise_in_place_is_the_normaliser_bit_for_bit(pairs: BatchPairs) -> None:
    g = "atmospheric"
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(2, pairs.layout.n_channels(g), 6, 7)) * 50 + 250).astype("f4")
    values[0, 3, 2, 2] = np.nan
    want = pairs.norm.normalise(g, values)
    got = normalise_in_place(pairs.norm, g, values.copy())
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def _edge_values(k: int, batch) -> None:
    """NaN, -0.0, the largest float32 and a subnormal in a field of every group kind."""
    for g, var in (("surface", "t2m"), ("atmospheric", "t"), ("static", "z")):
        flat = batch.groups[g][var].reshape(-1)
        flat[:4] = [np.nan, -0.0, np.finfo(np.float32).max, np.float32(1e-42)]


@pytest.mark.parametrize("compression", list(Compression))
def test_every_compression_round_trips_exactly(tmp_path: Path, compression: Compression) -> None:
    batch = mock_batch("2010-01-01", value=random_values(1))
    _edge_values(0, batch)
    path = write_batch(batch, tmp_path / "20100101T00.h5", PROVENANCE, compression)
    back = read_batch(path)
    for g, variables in batch.groups.items():
        for var, arr in variables.items():
            got = back.groups[g][var]
            assert np.array_equal(got.view(np.uint32), arr.view(np.uint32)), (compression, g, var)
    assert np.isnan(back.groups["surface"]["t2m"].reshape(-1)[0])


def test_old_gzip_batches_still_read_and_new_ones_use_the_default(tmp_path: Path) -> None:
    batch = mock_batch("2010-01-01", value=random_values(2))
    old = write_batch(batch, tmp_path / "old" / "20100101T00.h5", PROVENANCE, Compression.GZIP)
    new = write_batch(batch, tmp_path / "new" / "20100101T00.h5", PROVENANCE)
    with h5py.File(old) as f:
        assert f["surface/t2m"].compression == "gzip" and f["surface/t2m"].fletcher32
    with h5py.File(new) as f:
        filters = f["surface/t2m"]._filters  # the HDF5 filter ids of the dataset
        assert COMPRESSION == Compression.BLOSC_LZ4 and "32001" in {str(k) for k in filters}
    a, b = read_batch(old), read_batch(new)
    for g in batch.groups:
        for var in batch.groups[g]:
            assert np.array_equal(a.groups[g][var], b.groups[g][var], equal_nan=True)


def test_bench_loader_reports_rates_ratios_and_the_compressions(tmp_path: Path, capsys) -> None:
    out = tmp_path / "loader.json"
    args = ["bench", "loader", "--grid", "9x12", "--batches", "3", "--workers", "0", "1"]
    args += ["--passes", "1", "--compressions", "gzip", "none", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    names = [r["compression"] for r in report["compression"]]
    assert names == ["gzip", "none", str(COMPRESSION)]  # the default is always measured
    for r in report["compression"]:
        assert r["bytes"] > 0 and r["read_batch_s"] > 0 and r["write_s"] > 0
    rates = {r["workers"]: r for r in report["loader"]}
    assert set(rates) == {0, 1} and all(r["samples"] == 2 for r in rates.values())
    assert rates[1]["ratio_to_1_worker"] == 1.0
    assert rates[0]["ratio_to_1_worker"] == rates[0]["samples_per_s"] / rates[1]["samples_per_s"]
    # A worker's CPU (reading) and the training process's (normalising) apart; in-process, one
    assert rates[1]["worker_cpu_s_per_sample"] > 0 and rates[0]["worker_cpu_s_per_sample"] is None
    assert rates[1]["training_process_cpu_s_per_sample"] > 0
    printed = capsys.readouterr().out
    assert "1 worker(s):" in printed and "0 / 1 worker:" in printed and "/ gzip: read" in printed
    assert "in a worker (reading)" in printed


def test_bench_loader_rejects_a_malformed_grid(caplog) -> None:
    assert main(["bench", "loader", "--grid", "153by321"]) == 1
    assert "--grid: expected HxW (e.g. 153x321), got '153by321'" in caplog.text
