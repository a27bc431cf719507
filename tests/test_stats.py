"""Statistics: mergeable partial sums give the exact pooled moments."""

from __future__ import annotations

import numpy as np
import pytest

from bfm import cli
from bfm.contracts.catalogue import DEFAULT_LEVELS
from bfm.contracts.stats import Moments, batch_moments, load_stats, merge_all, save_stats
from bfm.testing import SPECIES, mock_batch, random_values


def synthetic_batch(grid, t0):
    return mock_batch(t0, grid, value=random_values(0), levels=DEFAULT_LEVELS)


def test_moments_match_numpy_with_nan():
    rng = np.random.default_rng(1)
    x = rng.normal(101325, 1200, size=(3, 500))
    x[0, :10] = np.nan
    m = Moments.of(x)
    for c in range(3):
        v = x[c][np.isfinite(x[c])]
        assert m.count[c] == v.size
        assert m.nan_count[c] == x[c].size - v.size
        assert m.mean[c] == pytest.approx(v.mean(), rel=1e-12)
        assert m.std[c] == pytest.approx(v.std(), rel=1e-9)
        assert (m.min[c], m.max[c]) == (v.min(), v.max())


def test_merge_is_exact_whatever_the_split():
    rng = np.random.default_rng(2)
    x = rng.normal(280, 9, size=(2, 1000))
    whole = Moments.of(x)
    for cut in (1, 137, 999):
        merged = Moments.of(x[:, :cut]).merge(Moments.of(x[:, cut:]))
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(merged.std, whole.std, rtol=1e-9)
        np.testing.assert_array_equal(merged.count, whole.count)
        np.testing.assert_array_equal(merged.nan_count, whole.nan_count)
        np.testing.assert_array_equal(merged.max, whole.max)
        np.testing.assert_array_equal(merged.min, whole.min)


def test_a_tiny_spread_beside_large_channels_keeps_its_precision():
    """Humidity: 1e-2 kg/kg near the ground, 5e-6 +- 6e-9 at 200 hPa (one shift per channel)."""
    rng = np.random.default_rng(3)
    x = np.stack([rng.normal(1e-2, 2e-3, 400), rng.normal(5e-6, 6e-9, 400)])
    parts = [Moments.of(x[:, :100]), Moments.of(x[:, 100:250] + 0.0), Moments.of(x[:, 250:])]
    merged = merge_all({"q": p} for p in parts)["q"]
    np.testing.assert_allclose(merged.std, x.std(axis=1), rtol=1e-10)
    np.testing.assert_allclose(merged.mean, x.mean(axis=1), rtol=1e-12)


def test_all_nan_channel_has_no_mean_and_unit_std(tmp_path):
    m = Moments.of(np.full((1, 4), np.nan))
    assert m.count[0] == 0 and np.isnan(m.mean[0])
    save_stats({"surface/t2m": m}, tmp_path / "s.json", {})
    mean, std = load_stats(tmp_path / "s.json").mean_std("surface", "t2m")
    assert mean[0] == 0.0 and std[0] == 1.0


def test_constant_channel_gets_a_scale_relative_to_its_mean(tmp_path):
    # Rows: constant; all zero; real spread; 217 K plus float rounding noise (std 2e-10 K).
    noisy = 217.0 + np.array([0.0, 2e-10, -2e-10, 0.0])
    m = Moments.of(np.array([[2e-5] * 4, [0.0] * 4, [1.0, 2.0, 3.0, 4.0], noisy]))
    save_stats({"atmospheric/q": m}, tmp_path / "s.json", {})
    mean, std = load_stats(tmp_path / "s.json").mean_std("atmospheric", "q")
    np.testing.assert_allclose(mean, [2e-5, 0.0, 2.5, 217.0])
    np.testing.assert_allclose(std, [2e-8, 1.0, np.std([1.0, 2.0, 3.0, 4.0]), 0.217])


def test_batch_moments_are_per_channel(small_grid):
    batch = synthetic_batch(small_grid, "2010-01-01")
    moments = batch_moments(batch)
    assert moments["atmospheric/t"].count.shape == (13,)
    assert moments["species/occurrence"].count.shape == (len(SPECIES),)
    assert moments["surface/t2m"].count[0] == 2 * small_grid.n_lat * small_grid.n_lon
    assert moments["static/lsm"].count[0] == small_grid.n_lat * small_grid.n_lon
    level0 = batch.groups["atmospheric"]["t"][:, 0]
    assert moments["atmospheric/t"].mean[0] == pytest.approx(level0.mean(dtype=np.float64))


def test_first_only_counts_the_first_time_and_static_fields_once(small_grid):
    batch = synthetic_batch(small_grid, "2010-01-01")
    batch.groups["surface"]["t2m"][1] += 1000.0  # the second time must not be counted
    first = batch_moments(batch, first_only=True)
    t2m = batch.groups["surface"]["t2m"][0]
    assert first["surface/t2m"].count[0] == t2m.size
    assert first["surface/t2m"].mean[0] == pytest.approx(t2m.mean(dtype=np.float64))
    assert first["surface/t2m"].max[0] == t2m.max()
    q = batch.groups["atmospheric"]["q"][0, 3]
    assert first["atmospheric/q"].mean[3] == pytest.approx(q.mean(dtype=np.float64))
    assert first["static/z"].count[0] == small_grid.n_lat * small_grid.n_lon


def test_cli_partial_and_merge_equal_one_pass(make_batch_file, tmp_path):
    files = [str(make_batch_file(f"2010-01-0{d}", seed=d)) for d in range(1, 5)]
    assert (
        cli.main(["stats", "partial", "--batches", *files[:1], "--out", f"{tmp_path}/a.json"]) == 0
    )
    assert (
        cli.main(["stats", "partial", "--batches", *files[1:], "--out", f"{tmp_path}/b.json"]) == 0
    )
    assert cli.main(["stats", "partial", "--batches", *files, "--out", f"{tmp_path}/all.json"]) == 0
    assert (
        cli.main(
            [
                "stats",
                "merge",
                "--partials",
                f"{tmp_path}/a.json",
                f"{tmp_path}/b.json",
                "--out",
                f"{tmp_path}/merged.json",
            ]
        )
        == 0
    )
    merged, whole = load_stats(tmp_path / "merged.json"), load_stats(tmp_path / "all.json")
    assert merged.meta["batches"] == whole.meta["batches"]
    for key, m in whole.variables.items():
        np.testing.assert_allclose(merged.variables[key].mean, m.mean, rtol=1e-10)
        np.testing.assert_allclose(merged.variables[key].std, m.std, rtol=1e-8)
    assert merge_all([]) == {}


def test_load_refuses_wrong_schema(tmp_path):
    (tmp_path / "s.json").write_text('{"schema": "other", "variables": {}}')
    with pytest.raises(ValueError, match="'schema' is 'other'"):
        load_stats(tmp_path / "s.json")


def test_mpi_ranks_combine_exactly(make_batch_file, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    mpirun = shutil.which("mpirun") or str(Path(sys.executable).with_name("mpirun"))
    files = [str(make_batch_file(f"2010-01-0{d}", seed=d)) for d in range(1, 6)]
    cmd = [
        mpirun,
        "--oversubscribe",
        "-np",
        "2",
        sys.executable,
        "-m",
        "bfm.cli",
        "stats",
        "partial",
        "--mpi",
        "--batches",
        *files,
        "--out",
        f"{tmp_path}/mpi.json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert cli.main(["stats", "partial", "--batches", *files, "--out", f"{tmp_path}/one.json"]) == 0
    mpi, one = load_stats(tmp_path / "mpi.json"), load_stats(tmp_path / "one.json")
    assert sorted(mpi.meta["batches"]) == sorted(one.meta["batches"])
    for key, m in one.variables.items():
        np.testing.assert_array_equal(mpi.variables[key].count, m.count)
        np.testing.assert_allclose(mpi.variables[key].mean, m.mean, rtol=1e-10)
        np.testing.assert_allclose(mpi.variables[key].std, m.std, rtol=1e-8)
