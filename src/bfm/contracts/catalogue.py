"""The catalogue: every modality, variable, batch group and pressure level that exists.

This is the one place that says what the pipeline knows. The tile schema
(``bfm.contracts.tile``), the batch schema (``bfm.contracts.batch``), the model's channel
layout (``bfm.contracts.layout``), the workflow's tile lists and wildcards (``bfm.workflow``),
the report's labels and the config schema's list of sources are all derived from it; see
docs/architecture.md ("The catalogue").

A *modality* is what one tile file holds: one source's variables on the grid, with one
*dims kind*:

==========  ====================================  =========================================
kind        tile dims                             batch dims (one group per modality)
==========  ====================================  =========================================
time        time, latitude, longitude             time(2), latitude, longitude
static      latitude, longitude                   latitude, longitude
level       time, level, latitude, longitude      time(2), level, latitude, longitude
species     time, species, latitude, longitude    time(2), species_key, latitude, longitude
==========  ====================================  =========================================

Every modality feeds exactly one batch *group* (``era5_surface`` -> ``surface``). Each
variable carries its units, CF ``standard_name`` where CF has one, ``long_name``, the range
of physically valid values (tiles refuse or mask values outside it, see
``bfm.contracts.tile``) and how it is regridded.

A new source adds its modalities with :func:`register` (its own module does it on import; a
plugin module named in the config key ``plugins`` is imported before the catalogue is read).
This module imports nothing outside the standard library: the Snakefile reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

# Pressure levels (hPa) of the level groups when the config does not say otherwise.
DEFAULT_LEVELS: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


class DimsKind(StrEnum):
    """The shape of a modality's fields (see the module docstring)."""

    TIME = "time"
    STATIC = "static"
    LEVEL = "level"
    SPECIES = "species"


class RegridMethod(StrEnum):
    """How a variable reaches the target grid (``bfm.regrid``)."""

    CONSERVATIVE = "conservative"  # area-weighted mean of continuous fields and fractions
    MODE = "mode"  # majority category by overlap area
    NEAREST = "nearest"  # the source cell holding the target cell's centre
    COUNT = "count"  # point observations counted per cell
    AREA_FRACTION = "area-fraction"  # polygon values mixed by the area they cover in a cell
    POINTS = "points"  # an index over the point records in each cell (the source defines it)


class VariableKind(StrEnum):
    """What a variable's values mean (the model's loss and embeddings follow it)."""

    CONTINUOUS = "continuous"
    CATEGORICAL = "categorical"
    COUNT = "count"


class Cadence(StrEnum):
    """A source's native time resolution, mapped onto the configured step by the time rule."""

    SIX_HOURLY = "6-hourly"
    DAILY = "daily"
    DEKADAL = "dekadal"
    MONTHLY = "monthly"
    YEARLY = "yearly"
    INVARIANT = "invariant"
    EVENT = "event"  # point observations with a date


TILE_DIMS: dict[DimsKind, tuple[str, ...]] = {
    DimsKind.TIME: ("time", "latitude", "longitude"),
    DimsKind.STATIC: ("latitude", "longitude"),
    DimsKind.LEVEL: ("time", "level", "latitude", "longitude"),
    DimsKind.SPECIES: ("time", "species", "latitude", "longitude"),
}
BATCH_DIMS: dict[DimsKind, tuple[str, ...]] = {
    DimsKind.TIME: ("time", "latitude", "longitude"),
    DimsKind.STATIC: ("latitude", "longitude"),
    DimsKind.LEVEL: ("time", "level", "latitude", "longitude"),
    DimsKind.SPECIES: ("time", "species_key", "latitude", "longitude"),
}
STATIC_PERIOD = "static"  # the period key (and file stem) of a static modality's one tile


@dataclass(frozen=True)
class Variable:
    """One variable of a modality.

    Attributes:
        name: name in tiles and batches (ERA5 short names where they exist).
        units: UDUNITS string.
        long_name: human-readable description (report labels use it).
        standard_name: CF standard name, or None where CF has none.
        valid_range: (min, max) of physically possible values, inclusive.
        regrid: how it is regridded.
        kind: continuous, categorical or count.
        categories: the category codes of a categorical variable.
    """

    name: str
    units: str
    long_name: str
    standard_name: str | None = None
    valid_range: tuple[float, float] = (-math.inf, math.inf)
    regrid: RegridMethod = RegridMethod.CONSERVATIVE
    kind: VariableKind = VariableKind.CONTINUOUS
    categories: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        lo, hi = self.valid_range
        if not lo < hi:
            raise ValueError(f"catalogue: variable {self.name!r}: valid_range {lo} .. {hi}")
        if (self.kind == VariableKind.CATEGORICAL) != bool(self.categories):
            raise ValueError(
                f"catalogue: variable {self.name!r}: categories go with kind "
                "categorical, and only with it"
            )


@dataclass(frozen=True)
class Modality:
    """One tile modality and the batch group it feeds.

    Attributes:
        name: tile modality, the folder under results/tiles/.
        source: the registered source (``bfm.sources``) whose files it is built from.
        group: the batch group it feeds.
        kind: dims kind.
        cadence: the source's native time resolution.
        variables: its variables, in channel order.
        description: one line for reports and ``--help``.
    """

    name: str
    source: str
    group: str
    kind: DimsKind
    cadence: Cadence
    variables: tuple[Variable, ...]
    description: str = ""

    def __post_init__(self) -> None:
        names = [v.name for v in self.variables]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"catalogue: modality {self.name!r} needs distinct variables")
        if (self.kind == DimsKind.STATIC) != (self.cadence == Cadence.INVARIANT):
            raise ValueError(
                f"catalogue: modality {self.name!r}: kind static goes with "
                "cadence invariant, and only with it"
            )

    @property
    def tile_dims(self) -> tuple[str, ...]:
        return TILE_DIMS[self.kind]

    @property
    def batch_dims(self) -> tuple[str, ...]:
        return BATCH_DIMS[self.kind]

    @property
    def periodic(self) -> bool:
        """One tile per month (else one ``static`` tile for all times)."""
        return self.kind != DimsKind.STATIC

    @property
    def variable_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    def variable(self, name: str) -> Variable:
        for v in self.variables:
            if v.name == name:
                return v
        raise ValueError(
            f"modality {self.name!r} has no variable {name!r} (has {list(self.variable_names)})"
        )


_V = Variable
_M = Modality
_REGISTRY: dict[str, Modality] = {}


def register(modality: Modality) -> Modality:
    """Add a modality (idempotent for an identical entry); returns it."""
    old = _REGISTRY.get(modality.name)
    if old is not None:
        if old != modality:
            raise ValueError(
                f"catalogue: modality {modality.name!r} is already registered with other contents"
            )
        return old
    clash = [m.name for m in _REGISTRY.values() if m.group == modality.group]
    if clash:
        raise ValueError(
            f"catalogue: group {modality.group!r} of {modality.name!r} is already "
            f"fed by {clash[0]!r}"
        )
    _REGISTRY[modality.name] = modality
    return modality


def modalities() -> tuple[Modality, ...]:
    """Every registered modality, in channel order (registration order)."""
    return tuple(_REGISTRY.values())


def modality(name: str) -> Modality:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown modality {name!r} (known: {list(_REGISTRY)}; a plugin's "
            "modality needs its module in the config key 'plugins')"
        )
    return _REGISTRY[name]


def of_group(group: str) -> Modality:
    for m in _REGISTRY.values():
        if m.group == group:
            return m
    raise ValueError(
        f"unknown batch group {group!r} (known: {list(groups())}; a plugin's group "
        "needs its module in the config key 'plugins')"
    )


def groups() -> tuple[str, ...]:
    """Every batch group, in channel order."""
    return tuple(m.group for m in _REGISTRY.values())


def sources() -> tuple[str, ...]:
    """Every source some modality is built from, in first-use order."""
    return tuple(dict.fromkeys(m.source for m in _REGISTRY.values()))


def of_source(source: str) -> tuple[Modality, ...]:
    return tuple(m for m in _REGISTRY.values() if m.source == source)


def active(configured_sources: Iterable[str]) -> tuple[Modality, ...]:
    """The modalities built in a study: those whose source the config lists."""
    wanted = set(configured_sources)
    return tuple(m for m in _REGISTRY.values() if m.source in wanted)


# --- the entries ----------------------------------------------------------------------------
WIND = (-150.0, 150.0)
TEMPERATURE = (150.0, 350.0)

register(_M("era5_surface", "era5", "surface", DimsKind.TIME, Cadence.SIX_HOURLY, (
    _V("t2m", "K", "2 metre temperature", "air_temperature", TEMPERATURE),
    _V("msl", "Pa", "mean sea level pressure", "air_pressure_at_mean_sea_level",
       (85_000.0, 110_000.0)),
    _V("u10", "m s-1", "10 metre eastward wind", "eastward_wind", WIND),
    _V("v10", "m s-1", "10 metre northward wind", "northward_wind", WIND),
), "ERA5 single-level weather"))  # fmt: skip
register(_M("era5_static", "era5", "static", DimsKind.STATIC, Cadence.INVARIANT, (
    _V("z", "m2 s-2", "surface geopotential", "surface_geopotential", (-5_000.0, 90_000.0)),
    _V("lsm", "1", "land area fraction", "land_area_fraction", (0.0, 1.0)),
    _V("slt", "1", "soil type (0 water, 1..7 ERA5 soil classes)", None, (0.0, 7.0),
       RegridMethod.MODE, VariableKind.CATEGORICAL, tuple(range(8))),
), "ERA5 invariant surface fields"))  # fmt: skip
register(_M("era5_atmospheric", "era5", "atmospheric", DimsKind.LEVEL, Cadence.SIX_HOURLY, (
    _V("z", "m2 s-2", "geopotential", "geopotential", (-20_000.0, 300_000.0)),
    _V("t", "K", "temperature", "air_temperature", TEMPERATURE),
    _V("u", "m s-1", "eastward wind", "eastward_wind", WIND),
    _V("v", "m s-1", "northward wind", "northward_wind", WIND),
    _V("q", "kg kg-1", "specific humidity", "specific_humidity", (-1e-3, 0.05)),
), "ERA5 pressure-level weather"))  # fmt: skip
register(_M("species_occurrence", "occurrences", "species", DimsKind.SPECIES, Cadence.EVENT, (
    _V("occurrence", "1", "number of occurrence records", None, (0.0, math.inf),
       RegridMethod.COUNT, VariableKind.COUNT),
    _V("effort", "1", "sampling effort: records of all species of the species' class (its "
       "target group)", None, (0.0, math.inf), RegridMethod.COUNT, VariableKind.COUNT),
), "occurrence records per species, and the sampling effort of its class"))  # fmt: skip

# Land cover, land use and biodiversity indicators (yearly values of countries or points,
# mapped onto the step by the yearly rule: the value of the year the step falls in).
PERCENT = (0.0, 100.0)
AF = RegridMethod.AREA_FRACTION
register(_M("ndvi", "ndvi", "vegetation", DimsKind.TIME, Cadence.DEKADAL, (
    _V("ndvi", "1", "normalized difference vegetation index (CLMS, dekadal)", None,
       (-0.08, 0.92)),  # DN 0..250; DN 251..255 (0.924..0.94 if decoded) are flags
    _V("ndvi_valid_fraction", "1", "fraction of the cell with a valid NDVI value", None,
       (0.0, 1.0)),
), "Copernicus Global Land NDVI"))  # fmt: skip
register(_M("land", "worldbank", "land", DimsKind.TIME, Cadence.YEARLY, (
    _V("land_area", "km2", "land area of the country (World Bank AG.LND.TOTL.K2)", None,
       (0.0, 2.0e7), AF),
), "World Bank land area"))  # fmt: skip
register(_M("agriculture", "worldbank", "agriculture", DimsKind.TIME, Cadence.YEARLY, (
    _V("agricultural_land", "%", "agricultural land, % of land area (AG.LND.AGRI.ZS)", None,
       PERCENT, AF),
    _V("irrigated_land", "%", "agricultural irrigated land, % of agricultural land "
       "(AG.LND.IRIG.AG.ZS)", None, PERCENT, AF),
    _V("arable_land", "%", "arable land, % of land area (AG.LND.ARBL.ZS)", None, PERCENT, AF),
    _V("permanent_cropland", "%", "permanent cropland, % of land area (AG.LND.CROP.ZS)", None,
       PERCENT, AF),
), "World Bank agricultural land use"))  # fmt: skip
register(_M("forest", "worldbank", "forest", DimsKind.TIME, Cadence.YEARLY, (
    _V("forest_area", "%", "forest area, % of land area (AG.LND.FRST.ZS)", None, PERCENT, AF),
), "World Bank forest area"))  # fmt: skip
register(_M("redlist", "redlist", "redlist", DimsKind.TIME, Cadence.YEARLY, (
    _V("rli", "1", "Red List Index of the country (SDG 15.5.1, ER_RSK_LST)", None, (0.0, 1.0),
       AF),
    _V("rli_species", "1", "Red List Index of the study's species (Butchart et al. 2007)",
       None, (0.0, 1.0), AF),
), "Red List Index"))  # fmt: skip
register(_M("lpi", "lpi", "lpi", DimsKind.TIME, Cadence.YEARLY, (
    _V("lpi", "1", "Living Planet Index of the cell's populations (chain method, 1 in the "
       "first year)", None, (0.0, 1.0e6), RegridMethod.POINTS),
), "Living Planet Index"))  # fmt: skip
