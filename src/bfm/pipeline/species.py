"""bfm species table: the species table of the study (results/species/species.parquet).

One row per species of the config's species list (bfm.contracts.species_table): the
taxonomy of the species list (``bfm.species_list``: the GBIF backbone's ranks where the keys
were matched, the list's own otherwise; the genus is the first word of the name)
and one embedding per media kind (bfm.embeddings: image, audio, eDNA, text), the mean over
the species' media of every configured source that has media (``Source.media_names``:
iNaturalist photos, Xeno-canto recordings, BOLD barcodes, Map of Life descriptions). Media are
read one at a time (the table is built streaming) and stored once per species; a medium that
does not embed is counted in ``<table>.quarantine.json``. More columns: ``common_name``,
``red_list_category`` (the species list's column of that name), ``description`` (the first
text) and ``n_<kind>`` (media embedded per kind). With ``species_table.encoders`` in the
config, images and recordings are embedded by the user's local TorchScript encoders instead
(``bfm.embeddings_pretrained``; nothing is downloaded); their path, SHA-256 and size are in
the parquet metadata ``encoders``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.occurrence import Quarantine, Reason, empty_media
from bfm.contracts.species_table import MEDIA, RANKS, SpeciesTable, write_species_table
from bfm.workflow import Plan, load_plan

log = logging.getLogger(__name__)


def taxonomy_table(plan: Plan) -> SpeciesTable:
    """The taxonomy-only table of the study's species list."""
    from bfm.species_list import read_species

    species = read_species(plan.study.species)
    taxonomy = species[list(RANKS)].to_numpy(object).reshape(len(species), len(RANKS))
    n = len(species)
    return SpeciesTable(
        species["gbif_key"].to_numpy(np.int64),
        tuple(str(s) for s in species["scientific_name"]),
        taxonomy,
        {m: np.zeros((n, 0), np.float32) for m in MEDIA},
        {m: np.zeros(n, bool) for m in MEDIA},
    )


def species_media(plan: Plan) -> tuple[pd.DataFrame, Callable[[str], bytes]]:
    """Every configured source's media (``uri`` prefixed ``<source>|``) and their reader."""
    from bfm import sources

    frames, readers = [], {}
    for name, files in plan.species_media().items():
        media, read = sources.get(name).media(files, plan.study)
        frames.append(media.assign(uri=name + "|" + media["uri"]))
        readers[name] = read
        log.info("%s: %d media from %s", name, len(media), ", ".join(files))

    def read_bytes(uri: str) -> bytes:
        source, _, rest = uri.partition("|")
        return readers[source](rest)

    return (pd.concat(frames, ignore_index=True) if frames else empty_media()), read_bytes


def pretrained_encoders(plan: Plan) -> dict[str, Any]:
    """The config's ``species_table.encoders`` (local TorchScript weights for image and
    audio; ``bfm.embeddings_pretrained``), loaded; none configured: the descriptors."""
    given = plan.species_encoders()
    if not given:
        return {}
    from bfm.embeddings_pretrained import pretrained_embedders

    found = pretrained_embedders(given)
    for kind, enc in found.items():
        log.info("species table: %s media embedded by %s (sha256 %s, %d values)", kind,
                 enc.path, enc.sha256[:12], enc.dim)  # fmt: skip
    return dict(found)


def build_table(plan: Plan, out: Path) -> Path:
    """Write the species table of the study and its quarantine report."""
    from bfm.embeddings import embed_media
    from bfm.species_list import read_species

    base = taxonomy_table(plan)
    media, read_bytes = species_media(plan)
    encoders = pretrained_encoders(plan)
    found = embed_media(media, read_bytes, base.keys.tolist(), encoders)
    table = SpeciesTable(base.keys, base.names, base.taxonomy, found.embeddings, found.present)
    species = read_species(plan.study.species)
    texts = media[media["kind"] == "text"].drop_duplicates("species_key")
    description = dict(zip(texts["species_key"].astype("int64"), texts["content"], strict=True))
    extra: dict[str, Sequence[object]] = {
        "common_name": species["common_name"].astype(str).tolist(),
        "red_list_category": species.get("red_list_category", pd.Series([""] * len(species)))
        .astype(str).tolist(),
        "description": [description.get(int(k), "") for k in base.keys],
        **{f"n_{m}": found.counts[m].astype(int).tolist() for m in MEDIA},
    }  # fmt: skip
    described = {k: e.describe() for k, e in encoders.items()}
    path = write_species_table(table, out, extra, {"encoders": json.dumps(described)})
    q = Quarantine(str(out))
    q.saw(len(media))
    for reason, n in sorted(found.failures.items()):
        q.count(Reason(reason), n)
    q.write(out, kept=len(media) - q.n_dropped)
    counts = ", ".join(f"{m} {int(found.present[m].sum())}/{len(base.keys)}" for m in MEDIA)
    log.info("wrote %s (%d species; with media: %s); %s", path, len(base.keys), counts,
             q.summary())  # fmt: skip
    return path


def _run_list(args: argparse.Namespace) -> int:
    from bfm import species_list

    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    study = plan.study
    species_list.resolve(study.species_list, args.out, study.species_subset, study.species_keys)
    return 0


def _run_table(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    build_table(plan, Path(args.out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "species", __doc__, "the species table of the study")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    li = actions.add_parser("list", help="write the resolved species list (bfm.species_list: "
                            "the subset, GBIF keys by species match or sample keys)")  # fmt: skip
    add_config_argument(li)
    li.add_argument("--out", required=True, help="species list to write (.csv)")
    li.set_defaults(func=_run_list)
    t = actions.add_parser("table", help="write the species table (parquet)")
    add_config_argument(t)
    t.add_argument("--out", required=True, help="species table to write (.parquet)")
    t.set_defaults(func=_run_table)
