"""The plan of one study: what the DAG builds, each rule's inputs, and the config keys each
output depends on.

``workflow/rules/common.smk`` builds one :class:`Plan` from the resolved config; every rule's
inputs and its ``settings`` param come from it (kept here, not in the .smk files, so they are
unit-tested without Snakemake). The ``bfm`` commands use the same plan to record
``settings_hash`` (the hash of the keys an output depends on) and to refuse inputs built under
other settings, so a config change never silently reuses stale outputs.

Which modalities exist comes from the catalogue; a study builds those whose source is listed
under ``sources`` (``catalogue.active``). Everything here is cheap: it parses no data file.
"""

from __future__ import annotations

import copy
import os
from functools import cached_property
from typing import Any

import pandas as pd

from bfm import paths, sources
from bfm.ablations import FULL_MODEL, Variant, in_study, same_model, variants
from bfm.ablations import full_model as full_model_of
from bfm.config import validate_config
from bfm.contracts import catalogue, timeaxis
from bfm.contracts.catalogue import STATIC_PERIOD, DimsKind, Modality
from bfm.contracts.grid import Grid
from bfm.provenance import config_hash
from bfm.sources.base import Study

SPLITS = ("all", "train", "eval")


class Plan:
    """What the DAG builds for one resolved config."""

    def __init__(self, config: dict[str, Any], source: str = "config") -> None:
        self.config = validate_config(config, source)
        t = self.config["time"]
        self.start, self.end, self.step = t["start"], t["end"], t["step"]
        self.eval_start = pd.Timestamp(t["eval_start"])
        self.study = Study.from_config(self.config)
        self._tile_settings: dict[str, dict[str, Any]] = {}  # per modality, computed once

    @cached_property
    def hash(self) -> str:
        """The config hash every output records (``provenance``)."""
        return config_hash(self.config)

    @cached_property
    def grid(self) -> Grid:
        return Grid.from_dict(self.config["grid"])

    @cached_property
    def modalities(self) -> tuple[Modality, ...]:
        """The study's modalities, in channel order."""
        return catalogue.active(self.config["sources"])

    @cached_property
    def groups(self) -> tuple[str, ...]:
        return tuple(m.group for m in self.modalities)

    @cached_property
    def has_species(self) -> bool:
        """Some modality of the study is per species (the model then needs the table)."""
        return any(m.kind == DimsKind.SPECIES for m in self.modalities)

    # --- time axis ------------------------------------------------------------------------
    @cached_property
    def starts(self) -> pd.DatetimeIndex:
        return timeaxis.batch_starts(self.start, self.end, self.step)

    @cached_property
    def periods(self) -> list[str]:
        return timeaxis.periods(timeaxis.steps(self.start, self.end, self.step))

    @cached_property
    def _names(self) -> dict[str, list[str]]:
        train = timeaxis.in_training(self.starts, self.eval_start, self.step)
        return {
            "all": [timeaxis.format_t0(t) for t in self.starts],
            "train": [timeaxis.format_t0(t) for t in self.starts[train]],
            "eval": [timeaxis.format_t0(t) for t in self.starts[~train]],
        }

    def batch_names(self, split: str = "all") -> list[str]:
        """t0 names of the batches in a split: all, train (both times before eval_start:
        ``timeaxis.in_training``) or eval (the others)."""
        _check_split(split)
        return list(self._names[split])

    def tile_periods(self, modality: Modality) -> list[str]:
        return self.periods if modality.periodic else [STATIC_PERIOD]

    # --- raw files ------------------------------------------------------------------------
    def source_mode(self, source: str) -> str:
        return str(self.study.settings(source)["mode"])

    def sources_in_mode(self, mode: str) -> list[str]:
        return [s for s in self.config["sources"] if self.source_mode(s) == mode]

    def raw_files(self, modality: Modality, period: str) -> list[str]:
        """The raw files a tile reads: under results/raw/<source>/ (sample, download) or the
        user's (file mode)."""
        src = sources.get(modality.source)
        return [src.raw_file(n, self.study) for n in src.raw_names(modality, period, self.study)]

    def orphaned_tiles(self) -> list[tuple[str, str]]:
        """(tile, missing raw file) for existing tiles whose file-mode inputs do not exist.

        Snakemake keeps an output whose input files are missing and that no rule makes (it
        cannot tell that they changed): such a tile was built from other files than the
        config names, and the workflow must stop rather than use it.
        """
        out = []
        for m in self.modalities:
            if self.source_mode(m.source) != "file":
                continue
            for period in self.tile_periods(m):
                tile = self.tile(m, period)
                if os.path.exists(tile):
                    out += [(tile, f) for f in self.raw_files(m, period) if not os.path.exists(f)]
        return out

    def raw_settings(self, source: str, name: str) -> dict[str, Any]:
        return canonical(sources.get(source).raw_settings(name, self.study))

    def services(self) -> list[str]:
        """The remote services of the study's sources in download mode."""
        found = (sources.get(s).service for s in self.sources_in_mode("download"))
        return sorted({s for s in found if s})

    def service_of(self, source: str) -> str | None:
        return sources.get(source).service

    def raw_inputs(self, source: str, name: str) -> list[str]:
        """Files (besides the config) that writing raw file ``name`` reads."""
        return sources.get(source).raw_inputs(name, self.study)

    def species_list_settings(self) -> dict[str, Any]:
        """The config keys the resolved species list depends on."""
        study = self.study
        return canonical({"species": study.species_list, "subset": list(study.species_subset),
                          "keys": study.species_keys})  # fmt: skip

    def species_list_resources(self) -> dict[str, int]:
        """A GBIF connection while keys are matched (none for sample keys)."""
        return {"net_gbif": 1} if self.study.species_keys == "match" else {}

    def species_encoders(self) -> dict[str, Any]:
        """The config's ``species_table.encoders`` (kind -> path or options; none: {})."""
        return dict((self.config.get("species_table") or {}).get("encoders") or {})

    def species_encoder_files(self) -> list[str]:
        """The weights of the species table's pretrained encoders, so that new weights
        rebuild the table."""
        paths_ = [
            v if isinstance(v, str) else v.get("path")
            for v in self.species_encoders().values()
            if v
        ]
        return [str(p) for p in paths_ if p]

    def species_media(self) -> dict[str, list[str]]:
        """The raw files holding media for the species table, per configured source."""
        out = {}
        for name in self.config["sources"]:
            src = sources.get(name)
            if names := src.media_names(self.study):
                out[name] = [src.raw_file(n, self.study) for n in names]
        return out

    # --- tiles ----------------------------------------------------------------------------
    def tile(self, modality: Modality, period: str) -> str:
        return str(paths.tile_path(paths.TILES, modality.name, period))

    def tile_inputs(self, modality: Modality | str, period: str) -> dict[str, list[str]]:
        """``raw``: the raw files of a tile; ``other``: the other files it reads (the species
        list, country boundaries, ...: ``Source.tile_inputs``)."""
        modality = _modality(modality)
        other = sources.get(modality.source).tile_inputs(modality, self.study)
        return {"raw": self.raw_files(modality, period), "other": other}

    def tile_settings(self, modality: Modality | str) -> dict[str, Any]:
        """The config keys a tile of ``modality`` depends on (any period)."""
        name = modality if isinstance(modality, str) else modality.name
        if name not in self._tile_settings:
            self._tile_settings[name] = self._settings_of_tile(_modality(modality))
        return copy.deepcopy(self._tile_settings[name])

    def _settings_of_tile(self, modality: Modality) -> dict[str, Any]:
        src = sources.get(modality.source)
        names = src.raw_names(modality, self.tile_periods(modality)[0], self.study)
        out: dict[str, Any] = {
            "modality": modality.name,
            "raw": src.raw_settings(names[0], self.study),
            "grid": self.grid.to_dict(),
        }
        if modality.periodic:
            out["time"] = {"start": self.start, "end": self.end, "step": self.step}
        return canonical(out)

    def tile_settings_hash(self, modality: Modality | str) -> str:
        return config_hash(self.tile_settings(modality))

    # --- batches --------------------------------------------------------------------------
    def batch_periods(self, t0: str) -> list[str]:
        """Periods whose tiles a batch reads: those of t0 and t0 + step."""
        t = timeaxis.parse_t0(t0)
        return sorted({timeaxis.period_of(t), timeaxis.period_of(timeaxis.next_time(t, self.step))})

    def batch_tiles(self, t0: str) -> dict[str, list[str]]:
        """Tile paths per modality that the batch ``t0`` is assembled from."""
        periods = self.batch_periods(t0)
        return {
            m.name: [self.tile(m, p) for p in (periods if m.periodic else [STATIC_PERIOD])]
            for m in self.modalities
        }

    def batch_settings(self) -> dict[str, Any]:
        """The config keys every batch depends on: its tiles' settings."""
        return canonical(
            {
                "tiles": {m.name: self.tile_settings(m) for m in self.modalities},
                "plugins": list(self.config["plugins"]),
            }
        )

    @cached_property
    def batch_settings_hash(self) -> str:
        return config_hash(self.batch_settings())

    def batch(self, t0: str) -> str:
        return str(paths.batch_path(paths.BATCHES, t0))

    # --- month jobs ----------------------------------------------------------------------
    # The batches of one month are built by one job (``bfm batches``), which writes a list
    # of them per split; every rule that reads batches takes those lists (one file per month,
    # not thousands of paths), so the DAG grows with months, not with batches.
    @cached_property
    def _by_month(self) -> dict[str, dict[str, list[str]]]:
        # Built once from the names (no per-batch date parsing in any per-month lookup).
        index: dict[str, dict[str, list[str]]] = {}
        for split in ("train", "eval"):
            for t0 in self._names[split]:
                month = index.setdefault(f"{t0[:4]}-{t0[4:6]}", {s: [] for s in SPLITS})
                month[split].append(t0)
                month["all"].append(t0)
        return {p: index[p] for p in sorted(index)}

    def batch_months(self, split: str = "all") -> list[str]:
        """The months in which batches of ``split`` start, in order."""
        _check_split(split)
        return [p for p, names in self._by_month.items() if names[split]]

    def month_batches(self, period: str, split: str = "all") -> list[str]:
        """t0 names of the batches of ``split`` that start in month ``period``."""
        _check_split(split)
        return list(self._by_month.get(period, {}).get(split, []))

    def batch_list(self, period: str, split: str) -> str:
        """The file listing the batches of ``split`` that start in ``period``, one path a
        line (written by the month's ``bfm batches`` job; read by ``--batches @FILE``)."""
        return str(paths.batch_list_path(paths.BATCHES, period, split))

    def batch_lists(self, split: str) -> list[str]:
        """The month lists that together name every batch of ``split``, in time order."""
        return [self.batch_list(p, split) for p in self.batch_months(split)]

    def first_batch_lists(self, split: str, n: int) -> list[str]:
        """The month lists holding the first ``n`` batches of ``split``."""
        out, count = [], 0
        for p in self.batch_months(split):
            if count >= n:
                break
            out.append(self.batch_list(p, split))
            count += len(self._by_month[p][split])
        return out

    def month_tiles(self, period: str) -> dict[str, list[str]]:
        """Tile paths per modality that the batches of month ``period`` read: the month's,
        and the next month's when its last batch ends there."""
        names = self.month_batches(period)
        if not names:
            raise ValueError(
                f"no batch starts in {period} (the window is {self.start}..{self.end})"
            )
        periods = sorted({*self.batch_periods(names[0]), *self.batch_periods(names[-1])})
        return {
            m.name: [self.tile(m, p) for p in (periods if m.periodic else [STATIC_PERIOD])]
            for m in self.modalities
        }

    # --- statistics and training ------------------------------------------------------------
    def train_periods(self) -> list[str]:
        """The months with training batches: one statistics partial each."""
        return self.batch_months("train")

    def train_batches_in(self, period: str) -> list[str]:
        return [self.batch(t0) for t0 in self.month_batches(period, "train")]

    def stats_settings(self) -> dict[str, Any]:
        settings = {
            "batches": self.batch_settings(),
            "eval_start": self.config["time"]["eval_start"],
        }
        return canonical(settings)

    def climatology_settings(self) -> dict[str, Any]:
        """What the climatology depends on: the batches, the split and its window."""
        evaluation = self.config.get("evaluation") or {}
        return canonical({**self.stats_settings(),
                          "window_days": evaluation.get("climatology_window_days")})  # fmt: skip

    # --- ablations --------------------------------------------------------------------------
    @cached_property
    def full_model(self) -> Variant:
        """The training options of the config's model (``bfm.ablations``)."""
        return in_study(full_model_of(self.config), self.groups, self.has_species)

    @cached_property
    def _ablations(self) -> dict[bool, tuple[Variant, ...]]:
        found = [in_study(v, self.groups, self.has_species) for v in variants(self.config)]
        return {same: tuple(v for v in found if same_model(v, self.full_model) == same)
                for same in (False, True)}  # fmt: skip

    @property
    def ablations(self) -> tuple[Variant, ...]:
        """The variants of ``evaluation.ablations`` (``bfm.ablations``) in config order, but
        those that change nothing in this study (``ablations_left_out``)."""
        return self._ablations[False]

    @property
    def ablations_left_out(self) -> tuple[str, ...]:
        """Names of the variants that are the full model here: every group they drop is one
        the study does not build (or only the table goes, in a study without species)."""
        return tuple(v.name for v in self._ablations[True])

    def variant(self, run: str) -> Variant:
        """The training options of run ``run``: its ablation's, else the full model's (the
        config's run, or a run named by hand)."""
        found = [v for v in self.ablations if v.run == run]
        return found[0] if found else self.full_model

    def ablation_runs(self) -> dict[str, str]:
        """Label -> run of the ablation table: the full model first, then each variant by
        name; empty without ablations."""
        if not self.ablations:
            return {}
        return {FULL_MODEL: self.config["run"], **{v.name: v.run for v in self.ablations}}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} ({', '.join(SPLITS)})")


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted: Snakemake compares params by their text,
    so the order a config file happens to list keys in must not look like a change."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def _modality(modality: Modality | str) -> Modality:
    return catalogue.modality(modality) if isinstance(modality, str) else modality


def load_plan(config_path: str | None) -> Plan | None:
    """The plan of a ``--config`` file (a resolved or a user config), or None without one."""
    if config_path is None:
        return None
    from bfm.config import load_config

    return Plan(load_config(config_path), config_path)
