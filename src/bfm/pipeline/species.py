"""bfm species table: the species table of the study (results/species/species.parquet).

One row per species of the config's species list (bfm.contracts.species_table). For now the
table holds the taxonomy only: the genus is the first word of the scientific name and the
higher ranks come from the GBIF backbone classification of the genera bfm knows
(bfm.sources.gbif.TAXONOMY; empty for others); no media embeddings yet (every has_<media>
is false, with zero-length vectors). The model then gives species their identity from the
taxonomy alone; media embeddings come with the species sources.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.species_table import MEDIA, RANKS, SpeciesTable, write_species_table
from bfm.workflow import Plan, load_plan

log = logging.getLogger(__name__)


def taxonomy_table(plan: Plan) -> SpeciesTable:
    """The taxonomy-only table of the study's species list."""
    from bfm.sources.gbif import TAXONOMY, read_species

    species = read_species(plan.study.species)
    rows = []
    for name in species["scientific_name"]:
        genus = str(name).split()[0] if str(name).strip() else ""
        rows.append([*TAXONOMY.get(genus, ("",) * 5), genus])
    taxonomy = np.array(rows, dtype=object).reshape(len(species), len(RANKS))
    n = len(species)
    return SpeciesTable(
        species["gbif_key"].to_numpy(np.int64),
        tuple(str(s) for s in species["scientific_name"]),
        taxonomy,
        {m: np.zeros((n, 0), np.float32) for m in MEDIA},
        {m: np.zeros(n, bool) for m in MEDIA},
    )


def _run_table(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    table = taxonomy_table(plan)
    path = write_species_table(table, Path(args.out))
    log.info("wrote %s (%d species)", path, len(table.keys))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "species", __doc__, "the species table of the study")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    t = actions.add_parser("table", help="write the species table (parquet)")
    add_config_argument(t)
    t.add_argument("--out", required=True, help="species table to write (.parquet)")
    t.set_defaults(func=_run_table)
