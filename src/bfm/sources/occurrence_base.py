"""The interface of an occurrence source (GBIF, iNaturalist, Xeno-canto, BOLD).

An occurrence source has no modality of its own: it writes one raw file in its mode and reads
it into the occurrence contract's tables (``bfm.contracts.occurrence``); the ``occurrences``
source (``bfm.sources.occurrences``) combines the records of all of them into one tile.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from bfm.contracts.catalogue import Modality
from bfm.contracts.occurrence import Quarantine
from bfm.sources.base import Source, Study

if TYPE_CHECKING:
    import xarray as xr

COMBINED_BY = "occurrences"


def zip_reader(path: str | Path) -> Callable[[str], bytes]:
    """``member -> bytes`` of one zip (opened once, on first use)."""
    import zipfile

    state: dict[str, zipfile.ZipFile] = {}

    def read(member: str) -> bytes:
        if "zip" not in state:
            state["zip"] = zipfile.ZipFile(path)
        return state["zip"].read(member)

    return read


def inline_media(path: str | Path) -> Callable[[str], bytes]:
    """The reader of media held inline (barcodes, texts): there is no file to read."""

    def read(uri: str) -> bytes:
        raise ValueError(f"{path}: these media are inline (column content), not files ({uri!r})")

    return read


def zip_media(path: str | Path, index: pd.DataFrame, kind: str, member: str
              ) -> tuple[pd.DataFrame, Callable[[str], bytes]]:  # fmt: skip
    """The media table of a media zip's index (``member``: the column naming each file)."""
    from bfm.contracts.occurrence import conform_media

    table = index.loc[:, ["record_id", "species_key", "licence", "attribution"]].assign(
        kind=kind, uri=index[member], content=""
    )
    return conform_media(table, str(path)), zip_reader(path)


class OccurrenceSource(Source):
    """A source of occurrence records, combined by the ``occurrences`` source.

    Subclasses name their one raw file (``raw_name``) and read it into the contract's tables
    (:meth:`records`); ``sample`` and ``download`` write it as for any source.
    """

    raw_name: ClassVar[str]

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        return [self.raw_name]

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        return {
            **super().raw_settings(name, study),
            "start": study.start,
            "end": study.end,
            "species": study.species,
        }

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        return [study.species]

    def seed(self, study: Study) -> int:
        return int(study.settings(self.name).get("seed", 0))

    def climate_seed(self, study: Study) -> int:
        """The seed of the sample climate the sample records follow: the ERA5 sample's when
        ERA5 is sampled (the species layer is then learnable from the ERA5 layer), else own."""
        era5 = study.sources.get("era5", {})
        own = self.seed(study)
        return int(era5.get("seed", own)) if era5.get("mode") == "sample" else own

    @abstractmethod
    def records(
        self, files: Sequence[str | Path], study: Study
    ) -> tuple[pd.DataFrame, pd.DataFrame, Quarantine]:
        """The record table, the media table and what could not be read (counted)."""

    def record_chunks(self, files: Sequence[str | Path], study: Study, rows: int
                      ) -> Iterator[tuple[pd.DataFrame, Quarantine]]:  # fmt: skip
        """:meth:`records`' table in chunks of about ``rows`` records, in order, each with
        what its reading counted (at least one chunk, possibly empty). By default the whole
        table at once: the API downloads (iNaturalist, Xeno-canto, BOLD) are small; GBIF's
        is streamed."""
        table, _media, q = self.records(files, study)
        yield table, q

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        raise ValueError(f"{self.name}: has no modality; its records reach the tiles through "
                         f"the source '{COMBINED_BY}'")  # fmt: skip

    def to_tile(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        raise ValueError(f"{self.name}: has no modality (see source '{COMBINED_BY}')")
