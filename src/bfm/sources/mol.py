"""Map of Life (mol.org): a description text, common name and Red List code per species.

**Wire format**: ``GET https://api.mol.org/1.x/species/info?scientificname=<Genus species>
&lang=en`` (no key, no paging; undocumented but long in use) answers a JSON array, empty when
MOL does not know the name: ``[{"scientificname", "commonname", "family": [{"lang", "name"}],
"taxa", "info": [{"content", "source", "lang"}], "redlist", "redlist_link", "image": {"url"},
"rangemap", "bounds"}]``. An answer that is not an array is an error naming the species.

**Raw file** ``descriptions.json``: ``{"<gbif_key>": <the array MOL returned>, ...}`` for every
species of the list, in its order. A species MOL does not know is kept as ``[]``, logged and
listed in the manifest (``unknown``). Answers go through ``httpjson.fetch_json`` into a scratch
folder beside the raw file (one subfolder per species), so an interrupted rerun asks only for
the species it lacks; 429, 5xx, resets, cut bodies and malformed JSON are retried there.

**Descriptions** (:func:`descriptions`): one row per study species. The entry read is the one
whose ``scientificname`` is the species' binomial, else the first; ``description`` is the
content of its first English ``info`` with text, else of the first with text, whitespace and
newlines collapsed to single spaces; ``licence`` is CC BY-SA for Wikipedia text (most of
MOL's, as Wikipedia extracts), else "". A species without text keeps its row, with
``description`` "", and is counted as ``no_description``; an entry under a key that is not a
study species is counted as ``not_a_study_species``. :func:`media` gives the occurrence
contract's media rows (kind ``text``, ``record_id`` ``mol:<gbif_key>``, content inline).

**Sample** (:func:`sample`): MOL's shape with a few sentences per species made from its
names, family, habitat and range words chosen by the seed, in two paragraphs (newlines to
collapse); one species has no text and one text is not from Wikipedia.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from bfm.contracts import occurrence as oc
from bfm.contracts.catalogue import Modality
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.fileio import atomic_path
from bfm.sources import manifest
from bfm.sources.base import Source, Study, register
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.httpjson import fetch_json, scratch_dir
from bfm.sources.occurrence_base import inline_media
from bfm.species_list import read_species

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

API = "https://api.mol.org/1.x"
SERVICE = Service("mol", min_interval=1.0)  # no documented limit: one request a second
RAW_NAME = "descriptions.json"
LANG = "en"
LICENCE = "Map of Life: free to use with attribution; descriptions from Wikipedia: CC BY-SA"
CITATION = "Map of Life, https://mol.org (species descriptions, mostly from Wikipedia)"
WIKIPEDIA_LICENCE = "CC BY-SA"
COLUMNS = ("species_key", "scientific_name", "common_name", "description",
           "description_source", "redlist", "licence")  # fmt: skip


def binomial(name: str) -> str:
    return " ".join(str(name).split()[:2])


def request_of(species: pd.DataFrame, unknown: list[str]) -> dict[str, Any]:
    """The manifest's request: what was asked for each species, and the names MOL lacks."""
    return {"endpoint": "species/info", "lang": LANG,
            "species": [binomial(n) for n in species["scientific_name"]],
            "unknown": unknown}  # fmt: skip


def write(path: Path, body: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n")
    return path


# --- download --------------------------------------------------------------------------------
def download(out: str | Path, species: pd.DataFrame, client: Client | None = None,
             base_url: str = API) -> Path:  # fmt: skip
    """Every species' MOL answer into ``out`` (``descriptions.json``) and its manifest."""
    out, client = Path(out), client or Client(SERVICE)
    url, scratch = f"{base_url.rstrip('/')}/species/info", scratch_dir(out)
    body: dict[str, Any] = {}
    unknown: list[str] = []
    pairs = list(zip(species["gbif_key"], species["scientific_name"], strict=True))
    for key, name in tqdm(pairs, desc="mol species", unit="species", file=sys.stderr):
        folder = scratch / str(int(key))
        params = {"scientificname": binomial(name), "lang": LANG}
        answer = fetch_json(client, url, params, binomial(name), folder)
        if not isinstance(answer, list):
            shutil.rmtree(folder, ignore_errors=True)  # never reuse it
            raise DownloadError(f"mol {binomial(name)}: the answer is not a JSON array: "
                                f"{json.dumps(answer)[:200]}")  # fmt: skip
        if not answer:
            unknown.append(binomial(name))
        body[str(int(key))] = answer
    if unknown:
        log.warning("mol: %d of %d species unknown to Map of Life (kept as []): %s",
                    len(unknown), len(pairs), ", ".join(unknown))  # fmt: skip
    write(out, body)
    shutil.rmtree(scratch, ignore_errors=True)
    manifest.write_manifest(out, source="mol", request=request_of(species, unknown), url=url,
                            licence=LICENCE, citation=CITATION)  # fmt: skip
    return out


# --- descriptions ----------------------------------------------------------------------------
def read(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The raw file, its shape checked: an object of arrays of objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Map of Life file")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(body, dict):
        raise ValueError(f"{path}: expected an object {{gbif_key: [MOL entries]}}")
    for key, entries in body.items():
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{path}: species {key}: expected an array of MOL entries (objects)")
    return body


def _entry(entries: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for e in entries:
        if binomial(str(e.get("scientificname") or "")).lower() == binomial(name).lower():
            return e
    return entries[0] if entries else {}


def _text(entry: dict[str, Any]) -> tuple[str, str]:
    """(description, source) of an entry: English first, whitespace collapsed."""
    info = [i for i in entry.get("info") or [] if isinstance(i, dict) and
            str(i.get("content") or "").strip()]  # fmt: skip
    if not info:
        return "", ""
    chosen = next((i for i in info if str(i.get("lang", "")).lower() == LANG), info[0])
    text = re.sub(r"\s+", " ", str(chosen["content"])).strip()
    return text, str(chosen.get("source") or "")


def descriptions(path: str | Path, species: pd.DataFrame) -> tuple[pd.DataFrame, Quarantine]:
    """The species' descriptions (:data:`COLUMNS`, one row per species) and what lacks one."""
    body, q = read(path), Quarantine(str(path))
    q.saw(len(body))
    keys = [str(int(k)) for k in species["gbif_key"]]
    missing = [k for k in keys if k not in body]
    if missing:
        raise ValueError(f"{path}: no entry for species {missing} of the species list: the file "
                         "is of another list; download it again")  # fmt: skip
    extra = [k for k in body if k not in set(keys)]
    q.count(Reason.NOT_A_STUDY_SPECIES, len(extra), extra[0] if extra else "")
    rows = []
    for key, name in zip(keys, species["scientific_name"], strict=True):
        entry = _entry(body[key], str(name))
        text, source = _text(entry)
        if not text:
            q.count(Reason.NO_DESCRIPTION, example=f"{key} {binomial(name)}")
        wikipedia = bool(text) and "wikipedia" in source.lower()
        rows.append(
            (
                int(key),
                str(name),
                str(entry.get("commonname") or ""),
                text,
                source,
                str(entry.get("redlist") or ""),
                WIKIPEDIA_LICENCE if wikipedia else "",
            )
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["species_key"] = table["species_key"].astype("Int64")
    return table, q


def media(table: pd.DataFrame) -> pd.DataFrame:
    """The contract's media rows of the species with a description (kind ``text``)."""
    has = table[table["description"] != ""]
    source = has["description_source"].where(has["description_source"] != "", "Map of Life")
    rows = pd.DataFrame({"record_id": "mol:" + has["species_key"].astype(str),
                         "species_key": has["species_key"], "kind": "text", "uri": "",
                         "content": has["description"], "licence": has["licence"],
                         "attribution": "Map of Life (mol.org); text: " + source})  # fmt: skip
    return oc.conform_media(rows, "mol media")


# --- sample ----------------------------------------------------------------------------------
TAXA = {"Mammalia": ("mammals", "mammal"), "Aves": ("birds", "bird"),
        "Reptilia": ("reptiles", "reptile"), "Amphibia": ("amphibians", "amphibian"),
        "Actinopterygii": ("fishes", "fish"), "Bivalvia": ("bivalves", "mussel")}  # fmt: skip
SIZES = ("small", "medium-sized", "large")
HABITATS = ("broadleaf forest", "coniferous forest", "mixed woodland", "montane meadows",
            "farmland edges", "wetlands", "scrubland", "alpine grassland", "river valleys",
            "parks and gardens")  # fmt: skip
RANGES = ("northern Europe", "central Europe", "the Iberian Peninsula", "Scandinavia",
          "the Alps and the Carpathians", "the Balkans", "the British Isles")  # fmt: skip
HABITS = ("mostly nocturnal", "active at dawn and dusk", "active by day")
TRENDS = ("stable", "increasing", "declining")
CATEGORIES = ("LC", "LC", "LC", "NT", "VU")


def sample_text(name: str, common: str, family: str, noun: str, rng: np.random.Generator) -> str:
    """A few made-up sentences about a species, in two paragraphs."""
    h = rng.choice(len(HABITATS), 2, replace=False)
    r = rng.choice(len(RANGES), 2, replace=False)
    first = (f"The {common or 'species'} ({name}) is a {SIZES[rng.integers(3)]} {noun} "
             f"of the family {family or 'unknown'}.\nIt lives in {HABITATS[h[0]]} and "
             f"{HABITATS[h[1]]}.")  # fmt: skip
    second = (f"Its range extends across {RANGES[r[0]]} and {RANGES[r[1]]}. It is "
              f"{HABITS[rng.integers(3)]}; populations are {TRENDS[rng.integers(3)]} in much "
              f"of its range.")  # fmt: skip
    return first + "\n\n" + second


def sample_body(species: pd.DataFrame, seed: int) -> dict[str, Any]:
    """The raw file's content for ``species`` (pure)."""
    n = len(species)
    pick = np.random.default_rng([seed, 21]).permutation(n)
    silent, other = int(pick[0]), int(pick[1]) if n > 1 else -1  # no text; not Wikipedia
    body: dict[str, Any] = {}
    for i in range(n):
        row = species.iloc[i]
        key, name, common = row["gbif_key"], row["scientific_name"], row["common_name"]
        rng = np.random.default_rng([seed, 22, int(key)])
        sci, family = binomial(name), str(row.get("family", ""))
        taxa, noun = TAXA.get(str(row.get("class", "")), ("", "species"))
        text = sample_text(sci, str(common), family, noun, rng)
        info = (
            []
            if i == silent
            else [
                {
                    "content": text,
                    "lang": LANG,
                    "source": "Map of Life" if i == other else "Wikipedia",
                }
            ]
        )
        body[str(int(key))] = [{
            "scientificname": sci, "commonname": str(common).title(),
            "family": [{"lang": LANG, "name": family}], "taxa": taxa, "info": info,
            "redlist": CATEGORIES[rng.integers(len(CATEGORIES))], "redlist_link": "",
            "image": {"url": ""},
        }]  # fmt: skip
    return body


def sample(out: str | Path, species: pd.DataFrame, seed: int = 0) -> Path:
    """Write a synthetic ``descriptions.json`` and its manifest (the request a download of the
    same species sends)."""
    path = write(Path(out), sample_body(species, seed))
    manifest.write_manifest(path, source="mol", request=request_of(species, []),
                            url=f"sample:mol?seed={seed}", licence=LICENCE,
                            citation=CITATION)  # fmt: skip
    return path


class MapOfLife(Source):
    """Map of Life: one raw file ``descriptions.json`` (a description of every species, for
    the species table: its text embedding, common name and red-list category); no modality."""

    name = "mol"
    licence = LICENCE
    citation = CITATION
    service = "mol"

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        return [RAW_NAME]

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        return {**super().raw_settings(name, study), "species": study.species}

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        return [study.species]

    def _check(self, name: str) -> None:
        if name != RAW_NAME:
            raise ValueError(f"mol: raw file {name!r} is not {RAW_NAME!r}")

    def sample(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        return sample(out, read_species(study.species),
                      int(study.settings(self.name).get("seed", 0)))  # fmt: skip

    def download(self, name: str, out: Path, study: Study) -> Path:
        self._check(name)
        return download(out, read_species(study.species))

    def media_names(self, study: Study) -> list[str]:
        return [RAW_NAME]

    def media(self, files: Sequence[str | Path], study: Study
              ) -> tuple[pd.DataFrame, Callable[[str], bytes]]:  # fmt: skip
        (path,) = files
        return media(descriptions(path, read_species(study.species))[0]), inline_media(path)

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        raise ValueError("mol: has no modality; its descriptions go into the species table")

    def to_tile(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        raise ValueError("mol: has no modality; its descriptions go into the species table")


register(MapOfLife())
