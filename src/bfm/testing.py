"""Mock data shared by the tests and the benchmarks: grids, batches, batch sequences,
statistics, tiles and study configs, all synthetic and deterministic.

Batches follow the catalogue (the demo's groups, ``BASE_GROUPS``, unless ``groups`` says
otherwise). Field
values come from a ``ValueFn``: :func:`trend_values` (a smooth pattern plus a linear trend
in time, so a model has something easy to learn: consecutive batches share their
overlapping time exactly) or :func:`random_values` (seeded noise, counts Poisson).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bfm.contracts import catalogue
from bfm.contracts.batch import Batch, read_batch, write_batch
from bfm.contracts.catalogue import STATIC_PERIOD, DimsKind, Variable, VariableKind
from bfm.contracts.grid import Grid
from bfm.contracts.stats import batch_moments, merge_all, save_stats
from bfm.contracts.timeaxis import format_t0, offset, steps_in_period

ROOT = Path(__file__).resolve().parents[2]  # the checkout (tests and benchmarks run from it)
GRID = Grid(lat_min=44.0, lat_max=48.0, lon_min=0.0, lon_max=6.0, res=0.5)  # 9 x 13
DEMO_GRID = Grid(lat_min=44.0, lat_max=56.0, lon_min=0.0, lon_max=20.0, res=0.5)  # 25 x 41
EUROPE_GRID = Grid(lat_min=34.0, lat_max=72.0, lon_min=-30.0, lon_max=50.0, res=0.25)
LEVELS = (500, 850, 1000)
# The groups of the demo's sources (ERA5 and GBIF): what mock batches and layouts hold.
BASE_GROUPS = ("surface", "static", "atmospheric", "species")
SPECIES = (2435240, 5219173)
PROVENANCE = {
    "bfm_version": "test",
    "git_commit": "test",
    "config_hash": "test",
    "settings_hash": "test",
}
# (base, scale) of each variable's synthetic values, by name; others: (0.5, 0.3).
BASE = {
    "t2m": (280.0, 5.0),
    "msl": (101000.0, 500.0),
    "u10": (0.0, 3.0),
    "v10": (1.0, 3.0),
    "z": (50000.0, 2000.0),
    "lsm": (0.5, 0.4),
    "slt": (3.0, 1.0),
    "t": (250.0, 10.0),
    "u": (5.0, 8.0),
    "v": (0.0, 8.0),
    "q": (0.005, 0.002),
    "occurrence": (0.5, 0.3),
}

# value(var, k, lat, lon, channel) -> field (lat, lon) at time index k
ValueFn = Callable[[str, int, np.ndarray, np.ndarray, int], np.ndarray]


def _count_variables() -> frozenset[str]:
    from bfm.contracts import catalogue

    return frozenset(v.name for m in catalogue.modalities() for v in m.variables
                     if v.kind == catalogue.VariableKind.COUNT)  # fmt: skip


def trend_values(trend: float = 0.5) -> ValueFn:
    """Smooth pattern plus ``trend`` (in scales) per step; counts keep their pattern."""
    counts = _count_variables()

    def value(var: str, k: int, lat: np.ndarray, lon: np.ndarray, ch: int) -> np.ndarray:
        base, scale = BASE.get(var, (0.5, 0.3))
        pattern = np.sin(np.deg2rad(lat * 7 + ch * 20))[:, None] * np.cos(np.deg2rad(lon * 11))
        drift = 0.0 if var in counts else trend * k
        return base + scale * (pattern + drift + 0.1 * ch)

    return value


def random_values(seed: int = 0) -> ValueFn:
    """Seeded standard-normal fields; counts (occurrence, effort) Poisson(0.3)."""
    rng = np.random.default_rng(seed)
    counts = _count_variables()

    def value(var: str, k: int, lat: np.ndarray, lon: np.ndarray, ch: int) -> np.ndarray:
        shape = (len(lat), len(lon))
        return rng.poisson(0.3, shape) if var in counts else rng.normal(size=shape)

    return value


def mock_batch(
    t0: str | pd.Timestamp,
    grid: Grid = GRID,
    *,
    k: int = 0,
    levels: Sequence[int] = LEVELS,
    species: Sequence[int] = SPECIES,
    value: ValueFn | None = None,
    step: str = "1D",
    groups: Sequence[str] | None = None,
) -> Batch:
    """The batch (t_k, t_k+1) of the given groups (default: ``BASE_GROUPS``)."""
    value = value or trend_values()
    lat, lon = grid.latitudes, grid.longitudes
    out: dict[str, dict[str, np.ndarray]] = {}
    for g in groups or BASE_GROUPS:
        spec = catalogue.of_group(g)
        n = {DimsKind.LEVEL: len(levels), DimsKind.SPECIES: len(species)}.get(spec.kind, 0)
        out[g] = {}
        for var in spec.variable_names:
            if spec.kind == DimsKind.STATIC:
                arr = value(var, 0, lat, lon, 0)
            elif spec.kind == DimsKind.TIME:
                arr = np.stack([value(var, k + i, lat, lon, 0) for i in (0, 1)])
            else:
                arr = np.stack(
                    [np.stack([value(var, k + i, lat, lon, c) for c in range(n)]) for i in (0, 1)]
                )
            out[g][var] = arr.astype(np.float32)
    t = pd.Timestamp(t0)
    return Batch(
        times=(t, t + offset(step)),
        step=step,
        grid=grid,
        levels=np.array(levels, np.int64),
        species=np.array(species, np.int64),
        groups=out,
    )


def write_sequence(
    directory: Path,
    n_batches: int,
    *,
    grid: Grid = GRID,
    levels: Sequence[int] = LEVELS,
    species: Sequence[int] = SPECIES,
    value: ValueFn | None = None,
    start: str = "2010-01-01",
    step: str = "1D",
    skip: Sequence[int] = (),
    groups: Sequence[str] | None = None,
    edit: Callable[[int, Batch], None] | None = None,
    provenance: dict[str, str] | None = None,
) -> list[Path]:
    """Write batches k = 0..n_batches-1 (those not in ``skip``) as <t0>.h5; their paths.

    ``edit(k, batch)`` may change a batch's arrays in place before it is written.
    """
    value = value or trend_values()
    paths = []
    t = pd.Timestamp(start)
    for k in range(n_batches):
        if k not in skip:
            batch = mock_batch(
                t, grid, k=k, levels=levels, species=species, value=value, step=step, groups=groups
            )
            if edit is not None:
                edit(k, batch)
            paths.append(
                write_batch(batch, directory / f"{format_t0(t)}.h5", provenance or PROVENANCE)
            )
        t = t + offset(step)
    return paths


def write_stats(batches: Sequence[Batch] | Sequence[Path], path: Path) -> Path:
    """Statistics over the batches' times (each time once), bfm-stats/1."""
    loaded = [b if isinstance(b, Batch) else read_batch(b) for b in batches]
    parts = [batch_moments(b, first_only=i < len(loaded) - 1) for i, b in enumerate(loaded)]
    return save_stats(
        merge_all(parts), path, {"batches": [b.source for b in loaded], "provenance": PROVENANCE}
    )


def mock_tile(
    modality: str,
    grid: Grid = GRID,
    period: str = "2010-01",
    *,
    start: str = "2010-01-01",
    end: str = "2010-12-31",
    step: str = "1D",
    levels: Sequence[int] = LEVELS,
    species: Sequence[int] = SPECIES,
    value: ValueFn | None = None,
) -> Any:
    """A valid tile Dataset of ``modality`` (the tile contract, values in range)."""
    import xarray as xr

    from bfm.contracts.tile import finish

    spec = catalogue.modality(modality)
    value = value or trend_values(trend=0.0)
    times = steps_in_period(period, start, end, step) if spec.periodic else pd.DatetimeIndex([])
    lat, lon = grid.latitudes, grid.longitudes
    inner = {DimsKind.LEVEL: list(levels), DimsKind.SPECIES: list(species)}.get(spec.kind)
    data: dict[str, tuple[Any, np.ndarray]] = {}
    for var in spec.variables:

        def field(k: int, c: int, var: Variable = var) -> np.ndarray:
            f = value(var.name, k, lat, lon, c)
            return (
                np.clip(f, *var.valid_range)
                if var.kind != VariableKind.CATEGORICAL
                else (np.clip(np.rint(f), min(var.categories), max(var.categories)))
            )

        if not spec.periodic:
            arr = field(0, 0)
        elif inner is None:
            arr = np.stack([field(k, 0) for k in range(len(times))])
        else:
            arr = np.stack(
                [np.stack([field(k, c) for c in range(len(inner))]) for k in range(len(times))]
            )
        data[var.name] = (spec.tile_dims, arr.astype(np.float32))
    coords: dict[str, Any] = {"time": times} if spec.periodic else {}
    if spec.kind == DimsKind.LEVEL:
        coords["level"] = np.array(levels, np.int64)
    if spec.kind == DimsKind.SPECIES:
        coords["species_key"] = ("species", np.array(species, np.int64))
        coords["scientific_name"] = (
            "species",
            np.array([f"Species {s}" for s in species], dtype=object),
        )
    ds = xr.Dataset(data, coords=coords)
    attrs = {
        "source": "bfm.testing",
        "licence": "CC0",
        "citation": "none",
        "history": "bfm.testing.mock_tile",
        **({"step": step} if spec.periodic else {}),
    }
    return finish(
        ds,
        spec,
        grid,
        period if spec.periodic else STATIC_PERIOD,
        attrs,
        PROVENANCE,
        "time: mean" if spec.periodic else "",
    )


def demo_config(**changes: Any) -> dict[str, Any]:
    """The shipped demo config (config/config.yaml) with top-level keys replaced and
    ``section__key`` keys set inside a section (``time__step="6h"``); another ``species``
    list drops the demo's ``species_subset``."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config = copy.deepcopy(config)
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            config[section][sub] = value
        else:
            config[key] = value
    if "species" in changes and "species_subset" not in changes:
        config.pop("species_subset", None)  # the demo's subset is of the demo's list
    return config


def mock_meta(model_config: Any, step: int = 1, zero_stage: int = 1) -> dict[str, Any]:
    """A valid meta.json (schema bfm-run/1) of a run of ``model_config`` at ``step``."""
    return {
        "schema": "bfm-run/1",
        "created_at": "2026-01-01T00:00:00+00:00",
        **PROVENANCE,
        "config": {},
        "model": {
            "preset": model_config.preset,
            "backbone": model_config.backbone,
            "config": model_config.to_dict(),
        },
        "deepspeed": {"zero_stage": zero_stage},
        "world_size": 1,
        "steps_done": step,
        "steps_target": step,
        "complete": True,
        "checkpoint": f"step_{step:06d}",
    }


def mock_species_table(keys: Sequence[int], dims: Sequence[int] = (8, 6, 5, 4),
                       seed: int = 0) -> Any:  # fmt: skip
    """A species table (``bfm.contracts.species_table``) for ``keys``: taxonomy from two
    genera and two families, random media embeddings, some media absent."""
    from bfm.contracts.species_table import MEDIA, RANKS, SpeciesTable

    rng = np.random.default_rng(seed)
    n = len(keys)
    taxonomy = np.array(
        [
            ["Animalia", "Chordata", "Mammalia", "Carnivora", f"Family{i % 2}", f"Genus{i % 3}"]
            for i in range(n)
        ],
        dtype=object,
    )
    assert taxonomy.shape[1] == len(RANKS)
    embeddings = {
        m: rng.normal(size=(n, d)).astype(np.float32) for m, d in zip(MEDIA, dims, strict=True)
    }
    present = {m: rng.random(n) < 0.7 for m in MEDIA}
    for m in MEDIA:
        embeddings[m][~present[m]] = 0.0
    return SpeciesTable(np.array(keys, np.int64), tuple(f"Species {k}" for k in keys), taxonomy,
                        embeddings, present)  # fmt: skip


def mock_model_input(layout: Any, b: int, h: int, w: int, seed: int = 0, *,
                     lat_max: float = 56.0, lon_min: float = 0.0, res: float = 0.5,
                     missing_fraction: float = 0.1) -> Any:  # fmt: skip
    """A random ``ModelInput`` for ``layout`` (a ``bfm.contracts.layout.Layout``): standard
    normal values, valid category codes, about ``missing_fraction`` of the values marked
    missing, descending latitudes from ``lat_max``, day 15 at 06 UTC."""
    import torch

    from bfm.contracts.sample import ModelInput

    g = torch.Generator().manual_seed(seed)
    inputs, missing = {}, {}
    for group in layout.groups:
        c = layout.n_channels(group)
        shape = (b, c, h, w) if layout.kind(group) == DimsKind.STATIC else (b, 2, c, h, w)
        inputs[group] = torch.randn(shape, generator=g)
        for channel, n in layout.categorical(group):
            inputs[group][:, channel] = torch.randint(0, n, (b, h, w), generator=g).float()
        missing[group] = (torch.rand(shape, generator=g) < missing_fraction).float()
    lat = torch.linspace(lat_max, lat_max - res * (h - 1), h)
    lon = torch.linspace(lon_min, lon_min + res * (w - 1), w)
    return ModelInput(inputs, lat, lon, torch.tensor([[15.0, 6.0]] * b), missing)
