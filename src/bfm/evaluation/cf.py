"""CF-1.10 building blocks of the evaluation's NetCDF outputs (``error_maps.nc`` of
``bfm evaluate``, ``forecast.nc`` of ``bfm predict``), written with netCDF4.

Coordinates carry the tile contract's attributes (``bfm.contracts.tile.COORD_ATTRS``):
``latitude``/``longitude`` (the grid's cell centres), ``level`` (hPa) and, for species, the
dimension ``species`` without a coordinate variable (the keys are in the study's order, not
sorted, and a CF coordinate variable must be monotonic) but the auxiliary coordinates
``species_key`` (int64 GBIF keys) and, where known, ``species_name``. Data variables are
float32, NaN-filled, zlib-compressed, one chunk per 2-D field, with ``units``, ``long_name``
and ``standard_name`` (where CF has one) from the catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bfm.contracts import catalogue
from bfm.contracts.grid import Grid
from bfm.contracts.tile import COORD_ATTRS, INSTITUTION

CONVENTIONS = "CF-1.10"
SPECIES_NAME = "species_name"


def add_grid(ds: Any, grid: Grid) -> None:
    """Dimensions and coordinate variables ``latitude`` and ``longitude``."""
    for name, values in (("latitude", grid.latitudes), ("longitude", grid.longitudes)):
        ds.createDimension(name, len(values))
        v = ds.createVariable(name, "f8", (name,))
        v[:] = values
        v.setncatts(COORD_ATTRS[name])


def add_levels(ds: Any, levels: Sequence[int]) -> None:
    """Dimension and coordinate variable ``level`` (hPa)."""
    ds.createDimension("level", len(levels))
    v = ds.createVariable("level", "i8", ("level",))
    v[:] = np.asarray(levels, np.int64)
    v.setncatts(COORD_ATTRS["level"])


def add_species(ds: Any, keys: Sequence[int], names: Sequence[str] | None) -> None:
    """Dimension ``species``, auxiliary coordinates ``species_key`` and ``species_name``."""
    ds.createDimension("species", len(keys))
    v = ds.createVariable("species_key", "i8", ("species",))
    v[:] = np.asarray(keys, np.int64)
    v.setncatts(COORD_ATTRS["species_key"])
    if names is not None:
        s = ds.createVariable(SPECIES_NAME, str, ("species",))
        s[:] = np.array(list(names), dtype=object)
        s.long_name = COORD_ATTRS["scientific_name"]["long_name"]


def species_coordinates(names: Sequence[str] | None) -> str:
    """The ``coordinates`` attribute part of a variable on the species dimension."""
    return "species_key" + (f" {SPECIES_NAME}" if names is not None else "")


def data_variable(ds: Any, name: str, dims: tuple[str, ...], attrs: Mapping[str, Any]) -> Any:
    """A float32 variable, NaN fill, one zlib chunk per (latitude, longitude) field."""
    chunks = [1 if d not in ("latitude", "longitude") else len(ds.dimensions[d]) for d in dims]
    v = ds.createVariable(name, "f4", dims, zlib=True, complevel=4, shuffle=True,
                          chunksizes=chunks, fill_value=np.float32(np.nan))  # fmt: skip
    v.setncatts(dict(attrs))
    return v


def variable_attrs(group: str, var: str) -> dict[str, str]:
    """``units``, ``long_name`` and ``standard_name`` (where CF has one) of a batch variable."""
    spec = catalogue.of_group(group).variable(var)
    out = {"units": spec.units, "long_name": spec.long_name}
    if spec.standard_name:
        out["standard_name"] = spec.standard_name
    return out


def global_attrs(title: str, prov: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    """Conventions, title, institution, provenance and ``extra`` (numbers kept as numbers)."""
    return {"Conventions": CONVENTIONS, "title": title, "institution": INSTITUTION,
            **dict(prov), **extra}  # fmt: skip
