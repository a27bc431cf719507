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
evaluation uses it to bring predictions back to physical units. Categorical variables (soil
type) are not normalised: their channels carry the category code (mean 0, std 1), and the
model embeds them.

What the model predicts, per variable kind (``to_physical`` turns it into physical units):
continuous variables in normalised units; counts (species occurrences) as a log-rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bfm.contracts import catalogue
from bfm.contracts.catalogue import DimsKind, VariableKind

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
        variables_of: variable names of each group (default: from the catalogue).
        variable_kinds: continuous, categorical or count, per variable of each group.
        categories: number of categories per variable of each group (0: not categorical).
    """

    levels: tuple[int, ...]
    species: tuple[int, ...]
    groups: tuple[str, ...]
    kinds: tuple[DimsKind, ...] = ()
    variables_of: tuple[tuple[str, ...], ...] = ()
    variable_kinds: tuple[tuple[VariableKind, ...], ...] = ()
    categories: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"layout: repeated group in {list(self.groups)}")
        specs = None
        if not self.kinds or not self.variables_of:
            specs = [catalogue.of_group(g) for g in self.groups]
            object.__setattr__(self, "kinds", tuple(s.kind for s in specs))
            object.__setattr__(self, "variables_of", tuple(s.variable_names for s in specs))
        if not self.variable_kinds or not self.categories:
            specs = specs or [catalogue.of_group(g) for g in self.groups]
            vs = [
                [s.variable(v) for v in names]
                for s, names in zip(specs, self.variables_of, strict=True)
            ]
            object.__setattr__(self, "variable_kinds", tuple(tuple(v.kind for v in g) for g in vs))
            object.__setattr__(self, "categories", tuple(tuple(len(v.categories) for v in g)
                                                         for g in vs))  # fmt: skip
        object.__setattr__(self, "kinds", tuple(DimsKind(k) for k in self.kinds))
        object.__setattr__(
            self,
            "variable_kinds",
            tuple(tuple(VariableKind(k) for k in g) for g in self.variable_kinds),
        )
        lengths = {len(self.groups), len(self.kinds), len(self.variables_of),
                   len(self.variable_kinds), len(self.categories)}  # fmt: skip
        if len(lengths) != 1:
            raise ValueError(f"layout: groups, kinds and variables differ in length: {self}")
        for g, k, cats in zip(self.groups, self.kinds, self.categories, strict=True):
            if any(cats) and k != DimsKind.STATIC:
                raise ValueError(
                    f"layout: group {g!r}: categorical variables are supported in "
                    "static groups only"
                )

    @classmethod
    def from_batch(cls, batch: Batch, drop: Iterable[str] = ()) -> Layout:
        """Every group of ``batch`` but those in ``drop`` (an ablation's: the model does not
        read them, and ``check`` accepts batches that still hold them)."""
        drop = set(drop)
        if absent := sorted(drop - set(batch.groups)):
            raise ValueError(f"{batch.source}: cannot drop group(s) {absent}: the batch has "
                             f"none such (it has {sorted(batch.groups)})")  # fmt: skip
        # Catalogue order, not the file's (alphabetical) order: channels and scores follow it.
        return cls(
            levels=tuple(int(v) for v in batch.levels),
            species=tuple(int(v) for v in batch.species),
            groups=tuple(g for g in catalogue.groups() if g in batch.groups and g not in drop),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        groups = d["groups"]
        if groups and isinstance(groups[0], str):  # meta.json before the catalogue
            return cls(levels=tuple(d["levels"]), species=tuple(d["species"]), groups=tuple(groups))
        derived = any("variable_kinds" not in g for g in groups)  # before kinds were stored
        return cls(
            levels=tuple(d["levels"]),
            species=tuple(d["species"]),
            groups=tuple(g["name"] for g in groups),
            kinds=tuple(DimsKind(g["kind"]) for g in groups),
            variables_of=tuple(tuple(g["variables"]) for g in groups),
            variable_kinds=() if derived else tuple(tuple(g["variable_kinds"]) for g in groups),
            categories=() if derived else tuple(tuple(g["categories"]) for g in groups),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "species": list(self.species),
            "groups": [
                {"name": g, "kind": k.value, "variables": list(v),
                 "variable_kinds": [x.value for x in vk], "categories": list(c)}
                for g, k, v, vk, c in zip(self.groups, self.kinds, self.variables_of,
                                          self.variable_kinds, self.categories, strict=True)
            ],
        }  # fmt: skip

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

    def variable_kind(self, group: str, var: str) -> VariableKind:
        i = self._index(group)
        return self.variable_kinds[i][self.variables_of[i].index(var)]

    def categorical(self, group: str) -> list[tuple[int, int]]:
        """(channel, number of categories) of each categorical channel of a static group."""
        cats = self.categories[self._index(group)]
        return [(v, n) for v, n in enumerate(cats) if n]

    def count_channels(self, group: str) -> np.ndarray:
        """True for the channels of count variables (bool ``(C_g,)``)."""
        inner = self.inner(group)
        kinds = self.variable_kinds[self._index(group)]
        return np.repeat([k == VariableKind.COUNT for k in kinds], inner)

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
        """Raise ValueError if ``batch`` does not carry this layout's levels/species/groups.

        Groups the layout does not read may be there (an ablation's dropped groups)."""
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
            for channel, _ in layout.categorical(group):  # codes pass through unchanged
                mean[group][channel], std[group][channel] = 0.0, 1.0
        return cls(mean, std)

    def normalise(self, group: str, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` with the channel axis at -3; float32 out, NaN kept."""
        m, s = self.mean[group][:, None, None], self.std[group][:, None, None]
        return ((x - m) / s).astype(np.float32)

    def denormalise(self, group: str, x: np.ndarray) -> np.ndarray:
        """Inverse of ``normalise``; float32 out."""
        m, s = self.mean[group][:, None, None], self.std[group][:, None, None]
        return (x * s + m).astype(np.float32)


def to_physical(layout: Layout, norm: Normaliser, group: str, pred: np.ndarray) -> np.ndarray:
    """A model prediction ``(..., C_g, H, W)`` of a dynamic group in physical units:
    continuous channels denormalised, count channels ``exp`` of their log-rate."""
    out = norm.denormalise(group, pred)
    counts = layout.count_channels(group)
    if counts.any():
        out[..., counts, :, :] = np.exp(pred[..., counts, :, :].astype(np.float64))
    return out
