"""The model's channel layout and the one normaliser.

``Layout`` says which batch groups, pressure levels and species the model reads and how they
stack into channels. It is derived from the catalogue when a run starts
(``Layout.from_batch``) and stored whole in the run's meta.json, so a trained model reloads
without the catalogue that made it. Each variable group becomes one channel axis, variables
in catalogue order, and for level/species groups variable-major: channel ``v * N + n`` is
variable ``v`` at level (or species) ``n``:

==========  ==========================  ===============================
kind        input array                 channels C_g
==========  ==========================  ===============================
time        ``(2, C_g, H, W)``          n_vars
static      ``(C_g, H, W)``             n_vars
level       ``(2, C_g, H, W)``          n_vars x n_levels
species     ``(2, C_g, H, W)``          n_vars x n_species
==========  ==========================  ===============================

``Normaliser`` holds per-group, per-channel mean and std (from the statistics) and maps
physical values to ``(x - mean) / std`` and back. The data layer uses it on inputs and
targets, the model carries its arrays as buffers (a checkpoint is self-contained) and the
evaluation uses it to bring predictions back to physical units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bfm.contracts import catalogue
from bfm.contracts.catalogue import DimsKind

if TYPE_CHECKING:
    from bfm.contracts.batch import Batch
    from bfm.contracts.stats import Stats

DYNAMIC_KINDS = (DimsKind.TIME, DimsKind.LEVEL, DimsKind.SPECIES)


@dataclass(frozen=True)
class Layout:
    """Which groups, levels and species the model sees, and how they stack into channels.

    Attributes:
        levels: pressure levels in hPa of the level groups, ``(L,)``.
        species: GBIF keys of the species groups, ``(S,)``.
        groups: the variable groups, in catalogue order.
        kinds: dims kind of each group (default: from the catalogue).
        variables: variable names of each group (default: from the catalogue).
    """

    levels: tuple[int, ...]
    species: tuple[int, ...]
    groups: tuple[str, ...]
    kinds: tuple[DimsKind, ...] = ()
    variables_of: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"layout: repeated group in {list(self.groups)}")
        if not self.kinds or not self.variables_of:
            specs = [catalogue.of_group(g) for g in self.groups]
            object.__setattr__(self, "kinds", tuple(s.kind for s in specs))
            object.__setattr__(self, "variables_of", tuple(s.variable_names for s in specs))
        object.__setattr__(self, "kinds", tuple(DimsKind(k) for k in self.kinds))
        if not len(self.kinds) == len(self.variables_of) == len(self.groups):
            raise ValueError(f"layout: groups, kinds and variables differ in length: {self}")

    @classmethod
    def from_batch(cls, batch: Batch) -> Layout:
        # Catalogue order, not the file's (alphabetical) order: channels and scores follow it.
        return cls(
            levels=tuple(int(v) for v in batch.levels),
            species=tuple(int(v) for v in batch.species),
            groups=tuple(g for g in catalogue.groups() if g in batch.groups),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        groups = d["groups"]
        if groups and isinstance(groups[0], str):  # meta.json before the catalogue
            return cls(levels=tuple(d["levels"]), species=tuple(d["species"]), groups=tuple(groups))
        return cls(
            levels=tuple(d["levels"]),
            species=tuple(d["species"]),
            groups=tuple(g["name"] for g in groups),
            kinds=tuple(DimsKind(g["kind"]) for g in groups),
            variables_of=tuple(tuple(g["variables"]) for g in groups),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "species": list(self.species),
            "groups": [
                {"name": g, "kind": k.value, "variables": list(v)}
                for g, k, v in zip(self.groups, self.kinds, self.variables_of, strict=True)
            ],
        }

    def _index(self, group: str) -> int:
        try:
            return self.groups.index(group)
        except ValueError:
            raise ValueError(f"layout: no group {group!r} (has {list(self.groups)})") from None

    @property
    def dynamic(self) -> tuple[str, ...]:
        """The groups the model predicts (all but static)."""
        return tuple(g for g, k in zip(self.groups, self.kinds, strict=True) if k in DYNAMIC_KINDS)

    def kind(self, group: str) -> DimsKind:
        return self.kinds[self._index(group)]

    def variables(self, group: str) -> tuple[str, ...]:
        return self.variables_of[self._index(group)]

    def inner(self, group: str) -> int:
        """Channels per variable: levels, species, or 1."""
        kind = self.kind(group)
        return {DimsKind.LEVEL: len(self.levels), DimsKind.SPECIES: len(self.species)}.get(kind, 1)

    def n_channels(self, group: str) -> int:
        return len(self.variables(group)) * self.inner(group)

    def channel_labels(self, group: str) -> list[tuple[str, str | None]]:
        """``(variable, channel)`` per channel; channel is the level or species key, or None."""
        kind = self.kind(group)
        inner: Sequence[str | None] = [None]
        if kind == DimsKind.LEVEL:
            inner = [str(v) for v in self.levels]
        elif kind == DimsKind.SPECIES:
            inner = [str(v) for v in self.species]
        return [(var, lab) for var in self.variables(group) for lab in inner]

    def stack(self, group: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Stack a batch group's variables into ``(2, C_g, H, W)`` (static: ``(C_g, H, W)``)."""
        parts = [arrays[v] for v in self.variables(group)]
        kind = self.kind(group)
        if kind == DimsKind.STATIC:
            return np.stack(parts, axis=0)
        if kind == DimsKind.TIME:
            return np.stack(parts, axis=1)
        return np.concatenate(parts, axis=1)

    def check(self, batch: Batch) -> None:
        """Raise ValueError if ``batch`` does not carry this layout's levels/species/groups."""
        missing = [g for g in self.groups if g not in batch.groups]
        if missing:
            raise ValueError(
                f"{batch.source}: lacks group(s) {missing} the model needs "
                f"(it has {sorted(batch.groups)})"
            )
        for name, got in (("levels", batch.levels), ("species", batch.species)):
            if tuple(int(v) for v in got) != getattr(self, name):
                raise ValueError(
                    f"{batch.source}: {name} {[int(v) for v in got]} differ "
                    f"from the model's {list(getattr(self, name))}"
                )


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
                    raise ValueError(
                        f"statistics {group}/{var} have {m.shape[0]} channels, the "
                        f"batches {layout.inner(group)} (levels/species differ?)"
                    )
            mean[group] = np.concatenate([p[0] for p in pairs]).astype(np.float64)
            std[group] = np.concatenate([p[1] for p in pairs]).astype(np.float64)
        return cls(mean, std)

    def normalise(self, group: str, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` with the channel axis at -3; float32 out, NaN kept."""
        m, s = self.mean[group][:, None, None], self.std[group][:, None, None]
        return ((x - m) / s).astype(np.float32)

    def denormalise(self, group: str, x: np.ndarray) -> np.ndarray:
        """Inverse of ``normalise``; float32 out."""
        m, s = self.mean[group][:, None, None], self.std[group][:, None, None]
        return (x * s + m).astype(np.float32)
