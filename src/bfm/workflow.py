"""Helpers for workflow/rules/common.smk: the DAG's targets and each rule's inputs.

Kept here (not in the .smk files) so they are unit-tested without Snakemake.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import Any

import pandas as pd

from bfm.config import validate_config
from bfm.grid import Grid
from bfm.paths import tile_path
from bfm.provenance import ENV_CONFIG_HASH, ENV_RESOLVED_CONFIG, config_hash
from bfm.timeaxis import (
    batch_starts,
    format_t0,
    next_time,
    parse_t0,
    period_of,
    periods,
    steps,
)

# Tile modalities with one file per period (era5_static has one file for all times).
PERIOD_MODALITIES = ("era5_surface", "era5_atmospheric", "species_occurrence")
TILES = "results/tiles"
STATIC_TILE = str(tile_path(TILES, "era5_static"))


class Plan:
    """What the DAG builds for one resolved config."""

    def __init__(self, config: dict[str, Any], source: str = "config") -> None:
        self.config = validate_config(config, source)
        t = self.config["time"]
        self.start, self.end, self.step = t["start"], t["end"], t["step"]
        self.eval_start = pd.Timestamp(t["eval_start"])

    @cached_property
    def grid(self) -> Grid:
        return Grid.from_dict(self.config["grid"])

    @cached_property
    def starts(self) -> pd.DatetimeIndex:
        return batch_starts(self.start, self.end, self.step)

    @cached_property
    def periods(self) -> list[str]:
        return periods(steps(self.start, self.end, self.step))

    def batch_names(self, split: str = "all") -> list[str]:
        """t0 names of the batches in a split: all, train (t0 < eval_start) or eval."""
        if split == "all":
            chosen = self.starts
        elif split == "train":
            chosen = self.starts[self.starts < self.eval_start]
        elif split == "eval":
            chosen = self.starts[self.starts >= self.eval_start]
        else:
            raise ValueError(f"unknown split {split!r} (all, train, eval)")
        return [format_t0(t) for t in chosen]

    def batch_periods(self, t0: str) -> list[str]:
        """Periods whose tiles a batch reads: those of t0 and t0 + step."""
        t = parse_t0(t0)
        return sorted({period_of(t), period_of(next_time(t, self.step))})

    def batch_tiles(self, t0: str) -> dict[str, list[str]]:
        out = {
            m: [str(tile_path(TILES, m, p)) for p in self.batch_periods(t0)]
            for m in PERIOD_MODALITIES
        }
        out["era5_static"] = [STATIC_TILE]
        return out

    def train_periods(self) -> list[str]:
        return sorted({period_of(parse_t0(t0)) for t0 in self.batch_names("train")})

    def train_batches_in(self, period: str) -> list[str]:
        return [
            f"results/batches/{t0}.h5"
            for t0 in self.batch_names("train")
            if period_of(parse_t0(t0)) == period
        ]

    def raw_era5(self, group: str, period: str | None = None) -> str:
        src = self.config["sources"]["era5"]
        name = "static.nc" if group == "static" else f"{period}.nc"
        base = src["path"] if src["mode"] == "file" else "results/raw/era5"
        return f"{base}/{group}/{name}"

    def raw_gbif(self) -> str:
        src = self.config["sources"]["gbif"]
        return src["path"] if src["mode"] == "file" else "results/raw/gbif/occurrences.zip"

    def grid_arg(self) -> str:
        g = self.grid
        return ",".join(f"{v:g}" for v in (g.lat_min, g.lat_max, g.lon_min, g.lon_max, g.res))

    def levels_arg(self) -> str:
        return ",".join(str(v) for v in self.config["levels"])


def export_config(config: dict[str, Any]) -> str:
    """Put the resolved config and its hash in the environment every job inherits."""
    digest = config_hash(config)
    os.environ[ENV_CONFIG_HASH] = digest
    os.environ[ENV_RESOLVED_CONFIG] = json.dumps(config, sort_keys=True, default=str)
    return digest
