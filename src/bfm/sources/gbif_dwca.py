"""GBIF download zips read safely: one member streamed under limits, the Darwin Core Archive
(``occurrence.txt``, ``multimedia.txt``) and its media, and the republications GBIF carries.

**Safe members** (:func:`open_zip_member`, the rules of ``era5_cds.unzip_one``): a zip whose
member names leave the archive (``..``, absolute, a drive) is refused whole; the member must
declare at most ``max_bytes`` and at most ``max_ratio`` times its packed size (at least 1 MiB
packed is assumed, so small metadata files pass). Both are checked before a byte is inflated,
so a zip bomb is refused at once; the stream then counts what it inflates, and a member that
runs past what its header declares, or fails its CRC, is an error. ``MAX_RATIO`` is 100, not
the ERA5 1000: text downloads pack 5-30 times, a 4.8 MB member of 1 GiB (223 times) is refused.

**DwC-A** (``format=DWCA``): ``occurrence.txt`` (interpreted records, tab-separated, unquoted,
a header row of Darwin Core terms, ``gbifID`` first) and ``multimedia.txt`` (``gbifID, type,
format, identifier, references, title, description, source, audience, created, creator,
contributor, publisher, license, rightsHolder``; absent or header-only without media).
:func:`multimedia_media` maps media to the contract's media table: ``StillImage`` -> image,
``Sound`` -> audio (other types are left out and logged), licence (the medium's, else its
record's) and attribution (creator, rights holder).

**Republications** (:func:`same_as`): GBIF's copies of iNaturalist research-grade
observations (dataset 50c9509d-..., ``occurrenceID`` .../observations/<id>) are
``inaturalist:<id>``; of Xeno-canto recordings (datasets b1047888-..., bcf8d1fc-...;
``catalogNumber`` XC<id> or ``occurrenceID`` ...xeno-canto.org/<id>) ``xenocanto:<id>``.
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pandas as pd

from bfm.contracts import occurrence as contract
from bfm.sources.era5_cds import MAX_UNPACKED

log = logging.getLogger(__name__)
MAX_BYTES = MAX_UNPACKED  # the largest member accepted (64 GiB)
MAX_RATIO = 100  # unpacked / packed size of a member (beyond: a zip bomb)
RATIO_FLOOR = 1 << 20  # packed bytes assumed at least, for the ratio
INATURALIST = "50c9509d-22c7-4a22-a47d-8c48425ef4a7"
XENOCANTO = ("b1047888-ae52-4179-9dd5-5448ea342a24", "bcf8d1fc-6bf0-4f57-9076-7d9ae2828ec2")
MULTIMEDIA_COLUMNS = ("gbifID", "type", "format", "identifier", "references", "title",
                      "description", "source", "audience", "created", "creator",
                      "contributor", "publisher", "license", "rightsHolder")  # fmt: skip
KINDS = {"StillImage": "image", "Sound": "audio"}


def _unsafe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or ":" in name


class _Capped(io.RawIOBase):
    """A member's inflated bytes, at most ``declared``; errors name ``where``."""

    def __init__(self, raw: IO[bytes], declared: int, where: str) -> None:
        self.raw, self.declared, self.where, self.count = raw, declared, where, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            chunk = self.raw.read(min(len(buffer), 1 << 20))
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise ValueError(f"{self.where}: corrupt member ({err}): refused") from err
        self.count += len(chunk)
        if self.count > self.declared:
            raise ValueError(f"{self.where}: inflates past the {self.declared} bytes its header "
                             "declares (a lying header): refused")  # fmt: skip
        if not chunk and self.count != self.declared:
            raise ValueError(f"{self.where}: {self.count} bytes, not the {self.declared} its "
                             "header declares")  # fmt: skip
        buffer[: len(chunk)] = chunk
        return len(chunk)


def members(path: str | Path) -> list[str]:
    """The file names of the zip ``path``; an unsafe one refuses the archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [m.filename for m in zf.infolist() if not m.is_dir()]
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not a zip archive ({err})") from err
    for name in names:
        if _unsafe(name):
            raise ValueError(f"{path}: zip member {name!r} points outside the archive (path "
                             "traversal): refused")  # fmt: skip
    return names


@contextmanager
def open_zip_member(path: str | Path, suffix: str, max_bytes: int = MAX_BYTES,
                    max_ratio: float = MAX_RATIO) -> Iterator[IO[bytes]]:  # fmt: skip
    """The one member of ``path`` whose name ends with ``suffix`` (``.csv``,
    ``occurrence.txt``), as a binary stream under the limits of the module docstring."""
    found = [n for n in members(path) if n.endswith(suffix)]
    if len(found) != 1:
        raise ValueError(f"{path}: expected one member ending {suffix!r}, found {found}")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(found[0])
        where = f"{path}:{info.filename}"
        if info.file_size > max_bytes:
            raise ValueError(f"{where}: declares {info.file_size} bytes, over the limit "
                             f"{max_bytes}: refused")  # fmt: skip
        ratio = info.file_size / max(info.compress_size, RATIO_FLOOR)
        if ratio > max_ratio:
            raise ValueError(f"{where}: declares {info.file_size} bytes packed in "
                             f"{info.compress_size} (ratio {ratio:.0f} > {max_ratio}): a zip "
                             "bomb? refused")  # fmt: skip
        with zf.open(info) as raw:
            yield io.BufferedReader(_Capped(raw, info.file_size, where), 1 << 20)


def read_member(path: str | Path, suffix: str, required: tuple[str, ...],
                **limits: Any) -> pd.DataFrame:  # fmt: skip
    """A tab-separated, unquoted member with a header row, every value a string."""
    with open_zip_member(path, suffix, **limits) as f:
        table = pd.read_csv(f, sep="\t", quoting=csv.QUOTE_NONE, dtype=str,
                            keep_default_na=False, encoding="utf-8")  # fmt: skip
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}:{suffix}: missing column(s) {missing}")
    return table


def read_dwca(path: str | Path, **limits: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(occurrences, multimedia) of a DWCA download zip, as strings (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GBIF download")
    occurrences = read_member(path, "occurrence.txt", ("gbifID",), **limits)
    if any(n.endswith("multimedia.txt") for n in members(path)):
        media = read_member(path, "multimedia.txt", ("gbifID", "type", "identifier"), **limits)
    else:
        media = pd.DataFrame({c: pd.Series(dtype=str) for c in MULTIMEDIA_COLUMNS})
    occurrences.attrs["source"] = media.attrs["source"] = str(path)
    return occurrences, media


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    if name in table.columns:
        return table[name].fillna("").astype(str).str.strip()
    return pd.Series("", index=table.index, dtype=object)


def _attribution(creator: pd.Series, holder: pd.Series) -> pd.Series:
    extra = ("rights holder: " + holder).where((holder != "") & (holder != creator), "")
    both = (creator != "") & (extra != "")
    return (creator + pd.Series("; ", index=creator.index).where(both, "") + extra).astype(str)


def multimedia_media(multimedia: pd.DataFrame, occurrences: pd.DataFrame,
                     species: pd.DataFrame,
                     quarantine: contract.Quarantine | None = None) -> pd.DataFrame:  # fmt: skip
    """The contract's media table of a DwC-A's images and sounds.

    ``species`` is the species list (``gbif_key``, ``scientific_name``): a medium's
    ``species_key`` is its record's ``speciesKey`` when a study species, else the study
    species its name matches. Media without an identifier (CORRUPT_MEDIA) or of no study
    species (NOT_A_STUDY_SPECIES) are dropped and counted in ``quarantine``.
    """
    q = quarantine or contract.Quarantine("gbif multimedia")
    kind = _column(multimedia, "type").str.rsplit("/", n=1).str[-1].map(KINDS)
    other = {str(k): int(n) for k, n in multimedia.loc[kind.isna(), "type"].value_counts().items()}
    if other:
        log.info("gbif multimedia: left out %s (no media kind of the contract)", other)
    media = multimedia[kind.notna()].assign(kind=kind[kind.notna()])
    q.saw(len(media))
    cols = [c for c in ("gbifID", "speciesKey", "species", "scientificName", "license")
            if c in occurrences.columns]  # fmt: skip
    records = occurrences[cols].drop_duplicates("gbifID").rename(columns={"license": "rec_lic"})
    merged = media.drop(columns=["speciesKey", "rec_lic"], errors="ignore").merge(
        records, on="gbifID", how="left")  # fmt: skip
    keys = pd.to_numeric(_column(merged, "speciesKey"), errors="coerce").astype("Int64")
    study = keys.where(keys.isin(species["gbif_key"].astype("int64")))
    name = _column(merged, "species").where(_column(merged, "species") != "",
                                            _column(merged, "scientificName"))  # fmt: skip
    study = study.fillna(contract.match_species(name, species))
    licence = _column(merged, "license")
    table = pd.DataFrame({
        "record_id": "gbif:" + _column(merged, "gbifID"),
        "species_key": study,
        "kind": merged["kind"],
        "uri": _column(merged, "identifier"),
        "content": "",
        "licence": licence.where(licence != "", _column(merged, "rec_lic")),
        "attribution": _attribution(_column(merged, "creator"), _column(merged, "rightsHolder")),
    })  # fmt: skip
    table = q.drop((table["uri"] == "").to_numpy(), contract.Reason.CORRUPT_MEDIA, table)
    table = q.drop(table["species_key"].isna().to_numpy(), contract.Reason.NOT_A_STUDY_SPECIES,
                   table)  # fmt: skip
    if quarantine is None and q.n_dropped:
        log.warning(q.summary())
    return contract.conform_media(table, "gbif multimedia")


def same_as(table: pd.DataFrame) -> pd.Series:
    """The contract's ``same_as`` of each GBIF row (SIMPLE_CSV, DWCA or search result)."""
    dataset = _column(table, "datasetKey").str.lower()
    occurrence_id, catalogue = _column(table, "occurrenceID"), _column(table, "catalogNumber")
    inat = occurrence_id.str.extract(r"inaturalist\.org/observations/(\d+)", expand=False)
    inat = inat.fillna(catalogue.where(catalogue.str.fullmatch(r"\d+")))
    xc = catalogue.str.extract(r"(?i)^XC\s*(\d+)$", expand=False)
    xc = xc.fillna(occurrence_id.str.extract(r"xeno-canto\.org/(\d+)", expand=False))
    out = pd.Series("", index=table.index, dtype=object)
    is_inat, is_xc = (dataset == INATURALIST) & inat.notna(), dataset.isin(XENOCANTO) & xc.notna()
    out[is_inat] = "inaturalist:" + inat[is_inat]
    out[is_xc] = "xenocanto:" + xc[is_xc]
    return out


def same_as_of(row: Mapping[str, Any]) -> str:
    """:func:`same_as` of one row."""
    return str(same_as(pd.DataFrame([dict(row)])).iloc[0])
