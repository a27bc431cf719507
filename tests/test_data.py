"""The data layer: pairing consecutive batches, layout, normalisation and NaN masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bfm.contracts.batch import Batch, read_batch
from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.sample import Sample
from bfm.contracts.stats import load_stats
from bfm.testing import BASE_GROUPS, GRID, LEVELS, PROVENANCE, SPECIES, write_sequence, write_stats
from bfm.training.data import BatchPairs, pair_batches, time_features


def test_pairs_need_the_next_batch_to_start_at_t1(tmp_path: Path) -> None:
    # Days 0, 1, 2, (gap: no day 3), 4, 5: day 2's successor is missing.
    paths = write_sequence(tmp_path, 6, skip=(3,))
    pairs = pair_batches(list(reversed(paths)))  # order of the arguments does not matter
    got = [(p.input.stem, p.target.stem) for p in pairs]
    assert got == [
        ("20100101T00", "20100102T00"),
        ("20100102T00", "20100103T00"),
        ("20100105T00", "20100106T00"),
    ]


def test_no_pair_is_a_clear_error(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path, 3, skip=(1,))
    stats = load_stats(write_stats(paths, tmp_path / "stats.json"))
    with pytest.raises(ValueError, match="no consecutive pair"):
        BatchPairs(paths, stats)


def test_file_name_must_match_t0(tmp_path: Path) -> None:
    (path,) = write_sequence(tmp_path, 1)
    wrong = path.rename(tmp_path / "20100105T00.h5")
    with pytest.raises(ValueError, match="file name says t0"):
        pair_batches([wrong])


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        pair_batches([tmp_path / "nope.h5"])


def _nan_in_target(k: int, batch: Batch) -> None:
    if k == 1:  # the second time of batch 1 is the target of the pair (0, 1)
        batch.groups["surface"]["msl"][1, 2, 3] = np.nan
    if k == 0:  # a missing input value
        batch.groups["atmospheric"]["t"][0, 1, 4, 5] = np.nan


def test_sample_normalises_fills_inputs_and_masks_targets(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path, 3, edit=_nan_in_target)
    stats = load_stats(write_stats(paths, tmp_path / "stats.json"))
    data = BatchPairs(paths, stats)
    assert len(data) == 2
    s = data[0]
    x, y = read_batch(paths[0]), read_batch(paths[1])

    # inputs: (2, C, H, W), normalised per channel; the NaN became 0
    mean, std = stats.mean_std("atmospheric", "t")
    t_channels = slice(1 * len(LEVELS), 2 * len(LEVELS))  # variable-major: t is variable 1
    expected = (x.groups["atmospheric"]["t"] - mean[None, :, None, None]) / std[None, :, None, None]
    got = s.input.inputs["atmospheric"][:, t_channels].numpy()
    assert s.input.inputs["atmospheric"].shape == (2, 5 * len(LEVELS), *GRID.shape)
    assert got[0, 1, 4, 5] == 0.0
    expected[0, 1, 4, 5] = 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert s.input.inputs["static"].shape == (3, *GRID.shape)

    # target: the second time of batch 1, masked where NaN
    msl_mean, msl_std = stats.mean_std("surface", "msl")
    tgt = (y.groups["surface"]["msl"][1] - msl_mean[0]) / msl_std[0]
    assert s.target["surface"].shape == (4, *GRID.shape)
    assert not s.mask["surface"][1, 2, 3]
    assert s.mask["surface"].sum() == 4 * GRID.n_lat * GRID.n_lon - 1
    assert s.target["surface"][1, 2, 3] == 0.0
    np.testing.assert_allclose(
        s.target["surface"][1].numpy()[s.mask["surface"][1]],
        tgt[np.isfinite(tgt)],
        rtol=1e-5,
        atol=1e-5,
    )
    assert "static" not in s.target
    for v in (*s.input.inputs.values(), *s.target.values()):
        assert torch.isfinite(v).all()


def test_sample_carries_coordinates_and_time(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path, 2, start="2010-03-01T06", step="6h")
    data = BatchPairs(paths, load_stats(write_stats(paths, tmp_path / "stats.json")))
    s = data[0]
    np.testing.assert_allclose(s.input.lat.numpy(), GRID.latitudes)
    np.testing.assert_allclose(s.input.lon.numpy(), GRID.longitudes)
    assert s.input.time.tolist() == [60.0, 6.0]  # 1 March 2010 is day 60, 06 UTC
    assert s.t0.item() == pd.Timestamp("2010-03-01T06").value // 10**9
    assert data.names == [p.name for p in paths]
    assert data.layout.groups == ("surface", "static", "atmospheric", "species")


def test_layout_channel_order_is_variable_major() -> None:
    layout = Layout(levels=LEVELS, species=SPECIES, groups=BASE_GROUPS)
    labels = layout.channel_labels("atmospheric")
    assert labels[:4] == [("z", "500"), ("z", "850"), ("z", "1000"), ("t", "500")]
    assert layout.channel_labels("surface")[0] == ("t2m", None)
    assert layout.channel_labels("species") == [
        ("occurrence", "2435240"),
        ("occurrence", "5219173"),
        ("effort", "2435240"),
        ("effort", "5219173"),
    ]
    assert layout.dynamic == ("surface", "atmospheric", "species")
    arrays = {v: np.full((2, 3, 1, 1), i, np.float32) for i, v in enumerate("ztuvq")}
    stacked = layout.stack("atmospheric", arrays)
    assert stacked.shape == (2, 15, 1, 1)
    assert stacked[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


def test_normaliser_from_stats_orders_channels_like_the_layout(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path, 2)
    stats = load_stats(write_stats(paths, tmp_path / "stats.json"))
    layout = Layout(levels=LEVELS, species=SPECIES, groups=BASE_GROUPS)
    norm = Normaliser.from_stats(stats, layout)
    assert norm.mean["atmospheric"].shape == (15,)
    np.testing.assert_array_equal(
        norm.mean["atmospheric"][3:6], stats.mean_std("atmospheric", "t")[0]
    )
    x = np.broadcast_to(norm.mean["atmospheric"][:, None, None] + 0.3, (2, 15, 2, 2))
    back = norm.denormalise("atmospheric", norm.normalise("atmospheric", x))
    np.testing.assert_allclose(back, x, rtol=1e-6)


def test_time_features() -> None:
    assert time_features(pd.Timestamp("2011-12-31T18")).tolist() == [365.0, 18.0]


def test_layout_mismatch_is_reported(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path, 2)
    stats = load_stats(write_stats(paths, tmp_path / "stats.json"))
    other = Layout(levels=(500,), species=SPECIES, groups=BASE_GROUPS)
    with pytest.raises(ValueError, match="atmospheric/z have 3 channels"):
        BatchPairs(paths, stats, layout=other)
    # With a model's own normaliser the batches are checked when read.
    norm = Normaliser(
        {g: np.zeros(other.n_channels(g)) for g in other.groups},
        {g: np.ones(other.n_channels(g)) for g in other.groups},
    )
    data = BatchPairs(paths, norm, layout=other)
    with pytest.raises(ValueError, match="levels"):
        data[0]


def test_batches_of_other_settings_are_refused(tmp_path: Path) -> None:
    old = write_sequence(tmp_path, 3, provenance={**PROVENANCE, "settings_hash": "a" * 64})
    new = write_sequence(
        tmp_path, 2, start="2010-01-04", provenance={**PROVENANCE, "settings_hash": "b" * 64}
    )
    with pytest.raises(
        ValueError,
        match=r"20100104T00\.h5: built under other settings "
        r"\(settings_hash bbbbbbbbbbbb, expected aaaaaaaaaaaa; 2 of 5 batches\)",
    ):
        pair_batches([*old, *new])
    with pytest.raises(ValueError, match=r"20100101T00\.h5: built under other settings"):
        pair_batches(new + old, settings_hash="b" * 64)
    assert len(pair_batches(new, settings_hash="b" * 64)) == 1


def _gaps_and_soil(k: int, batch: Batch) -> None:
    static = batch.groups["static"]
    static["slt"][:] = np.arange(static["slt"].size).reshape(static["slt"].shape) % 8
    static["slt"][0, 0] = np.nan  # a cell without a soil type
    static["lsm"][2, 3] = np.nan
    batch.groups["surface"]["t2m"][0, 1, 1] = np.nan
    # Whole counts, one unknown in the target (the second time of batch 1).
    occ = batch.groups["species"]["occurrence"]
    occ[:] = (np.arange(occ.size).reshape(occ.shape) % 5).astype(np.float32)
    if k == 1:
        occ[1, 0, 4, 4] = np.nan


def test_missing_values_come_with_masks_and_categories_as_codes(tmp_path: Path) -> None:
    """NaN inputs become 0 *and* a 1 in the group's missing mask (the model tells "missing"
    from "average"); soil type keeps its category code (not z-scored), a missing one the
    extra code n; counts are targets as raw counts (the model predicts a log-rate)."""
    paths = write_sequence(tmp_path, 3, edit=_gaps_and_soil)
    stats = load_stats(write_stats(paths, tmp_path / "stats.json"))
    data = BatchPairs(paths, stats)
    s = data[0]
    x, y = read_batch(paths[0]), read_batch(paths[1])
    missing = s.input.missing
    assert missing is not None and set(missing) == set(s.input.inputs)
    for g, values in s.input.inputs.items():
        assert missing[g].shape == values.shape, g
        assert torch.isfinite(values).all(), g
    # surface: one missing input value, marked, filled with 0
    surface = missing["surface"]
    assert surface.sum() == 1 and surface[0, 0, 1, 1] == 1
    assert s.input.inputs["surface"][0, 0, 1, 1] == 0.0
    # static: z, lsm, slt; slt holds its codes 0..7 unchanged and 8 where unknown
    layout = data.layout
    assert layout.categorical("static") == [(2, 8)]
    slt = s.input.inputs["static"][2].numpy()
    expected = np.nan_to_num(x.groups["static"]["slt"], nan=8.0)
    np.testing.assert_array_equal(slt, expected)
    assert missing["static"][2, 0, 0] == 1 and missing["static"][1, 2, 3] == 1
    assert missing["static"].sum() == 2
    assert s.input.inputs["static"][1, 2, 3] == 0.0
    # species: inputs normalised, targets raw counts, the unknown one masked
    mean, std = stats.mean_std("species", "occurrence")
    occ_x = x.groups["species"]["occurrence"]
    np.testing.assert_allclose(
        s.input.inputs["species"].numpy()[:, :2],  # occurrence, then effort
        (occ_x - mean[None, :, None, None]) / std[None, :, None, None],
        rtol=1e-5,
        atol=1e-5,
    )
    occ_y = y.groups["species"]["occurrence"][1]
    known = np.isfinite(occ_y)
    assert (~known).sum() == 1 and not s.mask["species"][0, 4, 4]
    np.testing.assert_array_equal(s.target["species"].numpy()[:2][known], occ_y[known])
    assert s.target["species"][0, 4, 4] == 0.0


def test_collated_samples_keep_their_masks(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path, 3, edit=_gaps_and_soil)
    data = BatchPairs(paths, load_stats(write_stats(paths, tmp_path / "stats.json")))
    batch = Sample.collate([data[0], data[1]])
    assert batch.input.missing is not None
    assert batch.input.missing["surface"].shape == (2, *data[0].input.missing["surface"].shape)
    assert batch.input.missing["surface"][:, 0, 0, 1, 1].tolist() == [1.0, 1.0]
    moved = batch.input.to("cpu", torch.bfloat16)
    assert moved.missing is not None and moved.missing["static"].dtype == torch.bfloat16
