"""The interface every source implements, the study settings it reads, and the registry.

A source is one module (``bfm/sources/<name>.py``, or a plugin module named in the config key
``plugins``) that defines a :class:`Source` subclass and registers an instance with
:func:`register`. Its modalities are catalogue entries (``bfm.contracts.catalogue``) whose
``source`` is its name. What it provides:

- ``raw_names(modality, period, study)``: the raw files, relative to its raw folder
  (``results/raw/<source>/``, or the user's folder in ``file`` mode), that the tile of one
  modality and period is built from;
- ``sample(name, out, study)``: write raw file ``name`` as deterministic synthetic data in the
  source's native format (plus its manifest);
- ``download(name, out, study)``: fetch raw file ``name`` from the real service (plus its
  manifest); :class:`NotOffered` until the source has a downloader;
- ``open(files, modality, study)``: read raw files into a normalised native ``xr.Dataset``;
- ``to_tile(native, modality, study, period, prov)``: pure, native Dataset -> tile Dataset on
  the study's grid and time axis (``bfm.contracts.tile``); ``tile(files, ...)`` is
  ``to_tile(open(files))`` unless a source reads only part of its files per period;
  ``write_tile(files, ..., path)`` is ``bfm.contracts.tile.write_tile(tile(files, ...))``
  unless a source makes its tile one variable at a time (``tiling.gridded_parts``: ERA5).

A source that ``combines`` others (``occurrences``: mode ``combine``) writes its raw file from
their raw files (its ``raw_inputs``) with ``combine(name, out, study)``.

Only ``download`` touches the network. Modules import xarray and other heavy libraries inside
the functions that need them: the workflow reads ``raw_names`` and ``raw_settings`` while
Snakemake parses the Snakefile.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from bfm.contracts import catalogue, timeaxis
from bfm.contracts.catalogue import DimsKind, Modality
from bfm.contracts.grid import Grid

if TYPE_CHECKING:
    import xarray as xr

    from bfm.contracts.tile import TileParts

MODES = ("sample", "download", "file", "combine")


class NotOffered(ValueError):
    """The source has no downloader (yet): use mode ``file`` or ``sample``."""


@dataclass(frozen=True)
class Study:
    """The parts of the resolved config that sources read.

    Attributes:
        grid: the target grid.
        start, end, step: the model time window (inclusive) and step.
        levels: pressure levels (hPa) of the level modalities.
        species: path of the species list the rules read (``bfm.species_list``: the
            config's list itself, or the list resolved from it).
        sources: the config's ``sources`` block (each source's mode, seed, path, ...).
        species_list: the config's species list (``species``).
        species_subset: the config's ``species_subset`` (names; empty: all).
        species_keys: where missing GBIF keys come from (``match`` | ``sample``).
    """

    grid: Grid
    start: str
    end: str
    step: str
    levels: tuple[int, ...]
    species: str
    sources: Mapping[str, Mapping[str, Any]]
    species_list: str = ""
    species_subset: tuple[str, ...] = ()
    species_keys: str = "sample"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Study:
        from bfm import species_list

        t = config["time"]
        listed = str(config["species"])
        subset = tuple(str(s) for s in config.get("species_subset") or ())
        resolved = species_list.needs_resolving(listed, subset)
        keys = config.get("species_keys") or species_list.default_key_mode(config["sources"])
        return cls(
            grid=Grid.from_dict(config["grid"]),
            start=t["start"],
            end=t["end"],
            step=t["step"],
            levels=tuple(int(v) for v in config["levels"]),
            species=species_list.resolved_path() if resolved else listed,
            sources=config["sources"],
            species_list=listed,
            species_subset=subset,
            species_keys=str(keys),
        )

    @property
    def resolves_species(self) -> bool:
        """The rule ``species_list`` writes the list the rules read (``bfm.species_list``)."""
        return bool(self.species_list) and self.species != self.species_list

    def settings(self, source: str) -> Mapping[str, Any]:
        """The config block ``sources.<source>``."""
        if source not in self.sources:
            raise ValueError(f"config: key 'sources.{source}' is not set")
        return self.sources[source]

    def options(self, source: str) -> Mapping[str, Any]:
        """``sources.<source>.options``: the source's own settings (its module documents them)."""
        return self.settings(source).get("options", {})

    def options_with(self, source: str, defaults: Mapping[str, Any],
                     more: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
        """The source's options over ``defaults``; a key that is neither a default nor in
        ``more`` is an error naming it."""
        given = dict(self.options(source))
        known = sorted({*defaults, *more})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"config: sources.{source}.options: unknown key(s) {unknown} "
                             f"(known: {known})")  # fmt: skip
        return {**defaults, **given}

    def years(self) -> list[int]:
        """The calendar years the window touches."""
        return list(range(pd.Timestamp(self.start).year, pd.Timestamp(self.end).year + 1))

    def times_in(self, period: str) -> pd.DatetimeIndex:
        """The model times of a tile period (none for ``static``)."""
        if period == catalogue.STATIC_PERIOD:
            return pd.DatetimeIndex([])
        timeaxis.period_bounds(period)  # validates YYYY-MM
        return timeaxis.steps_in_period(period, self.start, self.end, self.step)

    def grid_settings(self) -> dict[str, Any]:
        return self.grid.to_dict()


class Source(ABC):
    """One data source; see the module docstring for the contract of each method.

    Attributes:
        name: the registry name (config key ``sources.<name>``).
        licence, citation: of the source's data (tiles and manifests record them).
        service: the remote service ``download`` talks to (None: no download). The workflow
            limits concurrent downloads per service with the Snakemake resource
            ``net_<service>`` (``--resources net_cds=4``).
    """

    name: ClassVar[str]
    licence: ClassVar[str]
    citation: ClassVar[str]
    service: ClassVar[str | None] = None
    combines: ClassVar[bool] = False

    def modalities(self) -> tuple[Modality, ...]:
        return catalogue.of_source(self.name)

    @abstractmethod
    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        """Raw files (relative names) the tile of ``modality`` and ``period`` reads."""

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        """The config keys raw file ``name`` depends on (Snakemake reruns it when they change).

        Default: the grid, the pressure levels if the source has a level modality, and the
        source's own config block.
        """
        out: dict[str, Any] = {
            "grid": study.grid_settings(),
            "source": dict(study.settings(self.name)),
        }
        if any(m.kind == DimsKind.LEVEL for m in self.modalities()):
            out["levels"] = list(study.levels)
        return out

    def raw_inputs(self, name: str, study: Study) -> list[str]:
        """Files that writing raw file ``name`` reads (default none)."""
        return []

    def tile_inputs(self, modality: Modality, study: Study) -> list[str]:
        """Files besides the raw ones that a tile reads (species lists, boundaries, ...):
        the workflow declares them, so a tile is rebuilt when one changes (default none)."""
        return []

    def raw_file(self, name: str, study: Study) -> str:
        """Where raw file ``name`` lies in the study: its raw folder, or the user's (file)."""
        from bfm import paths

        settings = study.settings(self.name)
        if settings["mode"] == "file":
            return self.user_file(str(settings["path"]), name)
        return str(paths.raw_path(paths.RAW, self.name, name))

    def user_file(self, path: str, name: str) -> str:
        """Where raw file ``name`` lies in ``file`` mode, given the config's ``path``."""
        return f"{path.rstrip('/')}/{name}"

    @abstractmethod
    def sample(self, name: str, out: Path, study: Study) -> Path:
        """Write raw file ``name`` (synthetic, native format) and its manifest to ``out``."""

    def download(self, name: str, out: Path, study: Study) -> Path:
        """Fetch raw file ``name`` from the service, with its manifest."""
        raise NotOffered(
            f"{self.name}: mode 'download' is not offered yet; set "
            f"sources.{self.name}.mode to 'file' (your files) or 'sample'"
        )

    def media_names(self, study: Study) -> list[str]:
        """Raw files holding the source's media for the species table (default none)."""
        return []

    def media(self, files: Sequence[str | Path], study: Study
              ) -> tuple[pd.DataFrame, Callable[[str], bytes]]:  # fmt: skip
        """The media table (occurrence contract) of the ``media_names`` files, and the reader
        of a row's ``uri`` (photos and recordings; barcodes and texts are inline)."""
        raise ValueError(f"{self.name}: has no media")

    def combine(self, name: str, out: Path, study: Study) -> Path:
        """Write raw file ``name`` from other sources' raw files (sources that combine)."""
        raise ValueError(f"{self.name}: mode 'combine' is for sources that combine others "
                         "(occurrences); use sample, download or file")  # fmt: skip

    def tile(self, files: Sequence[str | Path], modality: Modality, study: Study, period: str,
             prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        """The tile of ``modality`` and ``period`` from the raw files."""
        with self._opened(files, modality, study) as native:
            return self.to_tile(native, modality, study, period, prov)

    def tile_parts(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                   prov: Mapping[str, str]) -> TileParts | None:  # fmt: skip
        """``to_tile`` made one data variable at a time (``contract.TileParts``), or None
        (this default): the source makes its tile whole."""
        return None

    def write_tile(self, files: Sequence[str | Path], modality: Modality, study: Study,
                   period: str, prov: Mapping[str, str], path: str | Path) -> Path:  # fmt: skip
        """Build the tile and write it to ``path``: each variable as it is made where the
        source has ``tile_parts`` (``contract.write_tile_parts``: the same file as
        ``contract.write_tile`` of ``tile``, a smaller peak memory), else ``tile`` whole."""
        from bfm.contracts import tile as contract

        if type(self).tile_parts is Source.tile_parts:
            return contract.write_tile(self.tile(files, modality, study, period, prov), path)
        with self._opened(files, modality, study) as native:
            parts = self.tile_parts(native, modality, study, period, prov)
            assert parts is not None, f"{type(self).__name__}.tile_parts returned None"
            return contract.write_tile_parts(parts, path)

    @contextmanager
    def _opened(self, files: Sequence[str | Path], modality: Modality, study: Study
                ) -> Iterator[xr.Dataset]:  # fmt: skip
        """``open``'s native Dataset, closed on leaving."""
        native = self.open(files, modality, study)
        try:
            yield native
        finally:
            native.close()

    @abstractmethod
    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        """Read raw files into the source's normalised native Dataset."""

    @abstractmethod
    def to_tile(
        self,
        native: xr.Dataset,
        modality: Modality,
        study: Study,
        period: str,
        prov: Mapping[str, str],
    ) -> xr.Dataset:
        """The tile of ``modality`` and ``period`` (pure)."""


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add a source instance under its name (idempotent for the same class)."""
    old = _REGISTRY.get(source.name)
    if old is not None and type(old) is not type(source):
        raise ValueError(f"sources: {source.name!r} is already registered by {type(old)}")
    _REGISTRY.setdefault(source.name, source)
    return _REGISTRY[source.name]


def get(name: str) -> Source:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown source {name!r} (known: {sorted(_REGISTRY)}; a plugin's "
            "source needs its module in the config key 'plugins')"
        )
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)
