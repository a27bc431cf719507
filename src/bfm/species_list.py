"""The species list: the file a user writes, and the resolved list every rule reads.

**The user's list** (config key ``species``, e.g. ``resources/species.csv``) is a CSV with at
least ``scientific_name`` and ``common_name``. Optional columns: ``gbif_key`` (the GBIF
Backbone usage key), ``class_key`` (the key of its class), ``kingdom`` .. ``family``,
``red_list_category``; any other column (the sources of the facts, say) is carried along.

**The list the rules read** (``Study.species``) gives every species a ``gbif_key``, a class and
a ``class_key`` (its target group: the sampling effort counts the records of its class). A
user list that already does, with no ``species_subset`` in the config, is read as it is.
Otherwise the rule ``species_list`` writes ``results/species/list.csv``:

- ``species_subset`` (config): only the species named, in the list's order; a name that is not
  in the list is an error.
- ``species_keys`` (config) says where missing keys come from. ``match`` (the default when
  some source downloads or reads your files): the GBIF species match (``gbif_api``; exact or
  confident fuzzy matches only, never guessed; answers cached in
  ``results/species/gbif_match.json``); the backbone's ranks replace the list's, and a rank
  that differs is logged. ``sample`` (the default when every source is a sample): a key from
  the name, ``9_000_000_000 + crc32(name) % 10**9``, outside GBIF's key range so that it is
  never mistaken for one; the class key likewise from the class name. Column ``key_source``
  says which (``list``, ``gbif match``, ``sample``).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm import paths
from bfm.fileio import atomic_path

log = logging.getLogger(__name__)

REQUIRED = ("scientific_name", "common_name")
HIGHER = ("kingdom", "phylum", "class", "order", "family")
KEYS = ("gbif_key", "class_key")
KEY_MODES = ("match", "sample")
SAMPLE_KEY_BASE = 9_000_000_000  # GBIF usage keys are below 2**31
MATCH_CACHE = "gbif_match.json"


def sample_key(name: str) -> int:
    """The sample study's key of a name (module docstring)."""
    return SAMPLE_KEY_BASE + zlib.crc32(" ".join(name.split()).lower().encode()) % 10**9


def _raw(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such species list")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (need {list(REQUIRED)})")
    for c in table.columns:
        table[c] = table[c].str.strip()
    empty = table["scientific_name"] == ""
    if empty.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(empty)[0]) + 2}: scientific_name "
                         "is empty")  # fmt: skip
    return table


def _keys(table: pd.DataFrame, column: str, path: str | Path, required: bool) -> pd.Series:
    """Column ``column`` as Int64 (NA where empty, unless ``required``)."""
    text = table[column] if column in table.columns else pd.Series("", index=table.index)
    bad = ~text.str.fullmatch(r"[1-9]\d*") & ((text != "") | required)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: column {column!r} must hold positive integers, got "
                         f"{text.iloc[row]!r} (row {row + 2})")  # fmt: skip
    return pd.to_numeric(text.where(text != ""), errors="raise").astype("Int64")


def is_complete(path: str | Path) -> bool:
    """Every species has a gbif_key, a class and a class_key (the list is read as it is)."""
    try:
        table = _raw(path)
    except (OSError, ValueError):
        return True  # the rule reading it reports what is wrong
    return all(c in table.columns and (table[c] != "").all() for c in (*KEYS, "class"))


def needs_resolving(path: str | Path, subset: Sequence[str]) -> bool:
    return bool(subset) or not is_complete(path)


def read_species(path: str | Path) -> pd.DataFrame:
    """The list the rules read: ``gbif_key`` int64 (unique), ``scientific_name``,
    ``common_name``, ``kingdom`` .. ``family`` and ``genus`` (str, empty where unknown),
    ``class_key`` (Int64), and the file's other columns."""
    table = _raw(path)
    keys = _keys(table, "gbif_key", path, required=True).astype(np.int64)
    if keys.duplicated().any():
        raise ValueError(f"{path}: column 'gbif_key' has duplicates: "
                         f"{sorted(set(keys[keys.duplicated()]))}")  # fmt: skip
    table["gbif_key"] = keys
    table["class_key"] = _keys(table, "class_key", path, required=False)
    for rank in HIGHER:
        if rank not in table.columns:
            table[rank] = ""
    table["genus"] = table["scientific_name"].str.split().str[0].fillna("")
    return table


def subset_of(table: pd.DataFrame, subset: Sequence[str], where: str) -> pd.DataFrame:
    if not subset:
        return table
    names = table["scientific_name"].str.lower()
    unknown = [s for s in subset if s.strip().lower() not in set(names)]
    if unknown:
        raise ValueError(f"config: species_subset: {unknown} are not in the species list "
                         f"{where}")  # fmt: skip
    wanted = {s.strip().lower() for s in subset}
    return table[names.isin(wanted)].reset_index(drop=True)


def default_key_mode(sources: Mapping[str, Mapping[str, Any]]) -> str:
    """``sample`` when every source is a sample (or combines them), else ``match``."""
    modes = {str(s.get("mode")) for s in sources.values()}
    return "sample" if modes <= {"sample", "combine"} else "match"


def resolve(path: str | Path, out: str | Path, subset: Sequence[str] = (), mode: str = "match",
            cache: str | Path | None = None, **match: Any) -> Path:  # fmt: skip
    """Write the resolved list of ``path`` to ``out`` (module docstring); ``match`` goes to
    ``gbif_api.match_species`` (client, base_url)."""
    if mode not in KEY_MODES:
        raise ValueError(f"config: species_keys: {mode!r} is not one of {list(KEY_MODES)}")
    table = subset_of(_raw(path), subset, str(path))
    for c in (*KEYS, *HIGHER):
        if c not in table.columns:
            table[c] = ""
    given = table["gbif_key"] != ""
    table["key_source"] = np.where(given, "list", "gbif match" if mode == "match" else "sample")
    if mode == "sample":
        _sample_keys(table, str(path))
    else:
        cache = Path(cache) if cache else Path(out).parent / MATCH_CACHE
        _match_keys(table, cache, str(path), **match)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
        read_species(tmp)  # it reads as the rules read it
    origins = table["key_source"].value_counts().items()
    log.info("%s: %d species (keys: %s)", out, len(table),
             ", ".join(f"{k} {n}" for k, n in origins))  # fmt: skip
    return Path(out)


def _sample_keys(table: pd.DataFrame, where: str) -> None:
    missing = table["gbif_key"] == ""
    table.loc[missing, "gbif_key"] = [str(sample_key(n)) for n in table["scientific_name"][missing]]
    no_class = table["class"] == ""
    if no_class.any():
        raise ValueError(f"{where}: row {int(np.flatnonzero(no_class)[0]) + 2}: class is empty "
                         "(the target group of the sampling effort; a sample study takes it "
                         "from the list)")  # fmt: skip
    empty = table["class_key"] == ""
    table.loc[empty, "class_key"] = [str(sample_key(c)) for c in table["class"][empty]]


def _match_keys(table: pd.DataFrame, cache: Path, where: str, **match: Any) -> None:
    from bfm.sources import gbif_api

    found = gbif_api.match_species(list(table["scientific_name"]), cache, **match)
    by_name = found.set_index("name")
    for i, name in enumerate(table["scientific_name"]):
        got = by_name.loc[name]
        if table.at[i, "gbif_key"] == "":
            table.at[i, "gbif_key"] = str(int(got["key"]))
        elif int(table.at[i, "gbif_key"]) != int(got["key"]):
            log.warning("%s: %s: gbif_key %s of the list kept; the GBIF match gives %s", where,
                        name, table.at[i, "gbif_key"], int(got["key"]))  # fmt: skip
        for rank in HIGHER:
            backbone = "" if pd.isna(got[rank]) else str(got[rank])
            if table.at[i, rank] not in ("", backbone):
                log.warning("%s: %s: %s %r of the list replaced by the backbone's %r", where,
                            name, rank, table.at[i, rank], backbone)  # fmt: skip
            table.at[i, rank] = backbone or table.at[i, rank]
        if table.at[i, "class_key"] == "" and not pd.isna(got["classKey"]):
            table.at[i, "class_key"] = str(int(got["classKey"]))
    missing = table["class_key"] == ""
    if missing.any():
        raise ValueError(f"{where}: {list(table['scientific_name'][missing])}: no class key in "
                         "the GBIF match (the target group of the sampling effort)")  # fmt: skip


def resolved_path() -> str:
    return str(paths.RESULTS / "species" / "list.csv")
