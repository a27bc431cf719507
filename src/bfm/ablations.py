"""Ablations: variants of the study's model, trained and scored beside it (docs/architecture.md,
"Evaluation").

The config key ``evaluation.ablations`` lists variants, each
``{name, drop_groups: [group, ...], backbone: swin3d | mvit, species_table: false}`` (all but
the name optional). A variant is the full model with only its own options changed: the rule
``train`` trains it as run ``<run>-<name>`` on the same batches, statistics, seed, steps and
learning rate (``bfm train --drop-group G --backbone B --no-species-table``), and the rule
``evaluate`` scores it on the same held-out batches; ``Plan.ablation_runs`` lists the runs for
the table (``bfm report ablations``), the full model first.

- ``drop_groups``: batch groups the model does not read (its layout lacks them; the batches
  keep them: ``Layout.check`` allows groups the layout does not read). Only covariates may go:
  the ERA5 groups are the weather every score line is about, and the species group is the
  target of the species scores (``kept_because``).
- ``backbone``: instead of ``model.backbone``.
- ``species_table: false``: species tokens without identity from the species table.

A repeated name, a group the catalogue does not know or that may not be dropped, and a
variant that sets nothing the full model does not are refused with the key that says it. A
group the catalogue knows but the study does not build is not there to drop (``in_study``):
a variant left the same as the full model by that (say, a copy of the demo config without
the indicator sources) is left out of the plan (``Plan.ablations_left_out``; the workflow
warns), not trained twice. Imports nothing but the catalogue (the Snakefile reads it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bfm.contracts import catalogue
from bfm.contracts.catalogue import DimsKind

FULL_MODEL = "full model"  # the label of the full model in the ablation table
KEPT_SOURCES = ("era5",)  # the weather: every score line, and the headline ones, are about it


@dataclass(frozen=True)
class Variant:
    """The training options of one run: the full model's, or an ablation's.

    Attributes:
        name: the variant's name (``FULL_MODEL`` for the full model).
        run: its run name, ``<run>-<name>`` (the config's ``run`` for the full model).
        drop_groups: batch groups the model does not read, in catalogue order.
        backbone: ``swin3d`` or ``mvit``.
        species_table: whether species take their identity from the species table.
    """

    name: str
    run: str
    backbone: str
    species_table: bool
    drop_groups: tuple[str, ...] = ()


def kept_because(group: str) -> str | None:
    """Why an ablation may not drop ``group`` (None: it may)."""
    modality = catalogue.of_group(group)
    if modality.source in KEPT_SOURCES:
        return f"'{group}' is an ERA5 group (the weather every score is about)"
    if modality.kind == DimsKind.SPECIES:
        return f"'{group}' is the species group (the target of the species scores)"
    return None


def droppable(groups: Iterable[str]) -> tuple[str, ...]:
    """The groups of ``groups`` an ablation may drop: the covariates."""
    return tuple(g for g in groups if kept_because(g) is None)


def check_drop(drop: Iterable[str], where: str) -> tuple[str, ...]:
    """``drop`` in catalogue order, once each; ValueError naming ``where`` for a group the
    catalogue does not know or that may not be dropped (``kept_because``)."""
    drop, known = list(drop), catalogue.groups()
    may = ", ".join(droppable(known))
    for g in drop:
        if g not in known:
            raise ValueError(f"{where}: {g!r} is not a batch group (droppable: {may})")
        if (reason := kept_because(g)) is not None:
            raise ValueError(f"{where}: {reason} and cannot be dropped (droppable: {may})")
    return tuple(g for g in known if g in drop)


def full_model(config: dict[str, Any]) -> Variant:
    model = config["model"]
    return Variant(FULL_MODEL, config["run"], model["backbone"], bool(model["species_table"]))


def variants(config: dict[str, Any]) -> tuple[Variant, ...]:
    """Every variant of the config's ablations (a config the schema accepted), checked;
    ValueError naming the key for a repeated name, a group that may not be dropped or a
    variant that sets nothing the full model does not."""
    base = full_model(config)
    out: list[Variant] = []
    for i, entry in enumerate((config.get("evaluation") or {}).get("ablations") or []):
        key = f"key 'evaluation.ablations.{i}"
        name = entry["name"]
        if any(v.name == name for v in out):
            raise ValueError(f"{key}.name' is {name!r}, which an earlier variant has: names "
                             "must be unique (each is run <run>-<name>)")  # fmt: skip
        drop = check_drop(entry.get("drop_groups") or (), f"{key}.drop_groups'")
        variant = Variant(name, f"{base.run}-{name}", entry.get("backbone", base.backbone),
                          bool(entry.get("species_table", base.species_table)), drop)  # fmt: skip
        if same_model(variant, base):
            raise ValueError(f"{key}' (variant {name!r}) changes nothing from the full model: "
                             "give drop_groups, another backbone or species_table: false "
                             "(with model.species_table true)")  # fmt: skip
        out.append(variant)
    return tuple(out)


def same_model(a: Variant, b: Variant) -> bool:
    return (a.backbone, a.species_table, a.drop_groups) == (b.backbone, b.species_table,
                                                           b.drop_groups)  # fmt: skip


def in_study(variant: Variant, groups: Iterable[str], has_species: bool) -> Variant:
    """``variant`` as a study with these groups (and species or none) trains it: a group the
    study does not build is not there to drop, and without species there is no table."""
    groups = set(groups)
    return Variant(variant.name, variant.run, variant.backbone,
                   variant.species_table or not has_species,
                   tuple(g for g in variant.drop_groups if g in groups))  # fmt: skip
