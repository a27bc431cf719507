"""The one map helper of the report: fields on the lat/lon grid with country outlines.

Every map item (``error-maps``, ``forecast-maps``, ``suitability-maps``) draws through
:func:`draw_field` (:func:`draw_rows` lays out rows of :class:`Panel` with colour bars):
``pcolormesh`` of the cell values on the grid's cell centres (cells NaN in the field are
left blank), the country boundaries of ``resources/countries/countries.geojson`` (Natural
Earth 1:110m, the file ``bfm.sources.countries`` rasterises) as thin lines clipped to the
grid's extent, and an aspect of ``1 / cos(mean latitude)`` so that a degree of longitude
looks as long as it is there. The outlines are read with ``json`` alone (the report's env
has no geometry library): each polygon's rings become line strips.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bfm.report.common import pyplot, save_figure

BOUNDARIES = "resources/countries/countries.geojson"
CHECKOUT = Path(__file__).resolve().parents[3]  # where resources/ lies in a source checkout
OUTLINE = {"colors": "0.15", "linewidths": 0.4}
PANEL_WIDTH = 3.6  # inches per map panel


def boundaries_path(path: str | Path = BOUNDARIES) -> Path:
    """``path`` as given (relative to the working directory), else the same relative path in
    the bfm checkout (a working directory without resources/)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not (CHECKOUT / p).exists():
        return p
    return CHECKOUT / p


def _polygons(geometry: Any) -> list[Any]:
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry["coordinates"])
    raise ValueError(f"geometry type {kind!r} (expected Polygon or MultiPolygon)")


@functools.cache
def _rings(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, ...]:
    from bfm.fileio import read_features

    rings = []
    for i, feature in enumerate(read_features(path)):
        try:
            for polygon in _polygons(feature.get("geometry")):
                rings += [np.asarray(r, float)[:, :2] for r in polygon]
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
            raise ValueError(f"{path}: feature {i}: not a polygon in lon/lat ({err})") from err
    return tuple(rings)


def country_rings(path: str | Path = BOUNDARIES) -> tuple[np.ndarray, ...]:
    """Every ring of every country polygon, ``(N, 2)`` lon/lat each (cached per file)."""
    p = boundaries_path(path)
    st = p.stat()
    return _rings(str(p), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class MapGrid:
    """The cell centres of a regular lat/lon grid and the extent of its cells.

    Attributes:
        lat, lon: cell centres in degrees, 1-D (latitude in either order).
    """

    lat: np.ndarray
    lon: np.ndarray

    @classmethod
    def of(cls, lat: Any, lon: Any, source: str) -> MapGrid:
        """From coordinate values; ValueError naming ``source`` unless both are 1-D, of at
        least two evenly spaced values."""
        out = []
        for name, values in (("latitude", lat), ("longitude", lon)):
            v = np.asarray(values, float)
            step = np.diff(v)
            if v.ndim != 1 or v.size < 2 or not np.allclose(step, step[0]) or step[0] == 0:
                raise ValueError(f"{source}: coordinate {name!r} must be 1-D, evenly spaced, "
                                 f"of at least 2 values, got {v.shape=}")  # fmt: skip
            out.append(v)
        return cls(*out)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(west, east, south, north) edges of the outer cells."""
        dlon, dlat = abs(self.lon[1] - self.lon[0]) / 2, abs(self.lat[1] - self.lat[0]) / 2
        return (self.lon.min() - dlon, self.lon.max() + dlon, self.lat.min() - dlat,
                self.lat.max() + dlat)  # fmt: skip

    @property
    def aspect(self) -> float:
        """Height per width of a degree: 1 / cos(mean latitude)."""
        return 1 / max(math.cos(math.radians(float(np.mean(self.lat)))), 0.1)

    def matches(self, lat: Any, lon: Any) -> bool:
        lat, lon = np.asarray(lat, float), np.asarray(lon, float)
        return (lat.shape == self.lat.shape and lon.shape == self.lon.shape
                and np.allclose(lat, self.lat) and np.allclose(lon, self.lon))  # fmt: skip


def map_figure(grid: MapGrid, nrows: int, ncols: int, extra_width: float = 0.9,
               title_height: float = 0.5) -> tuple[Any, np.ndarray]:  # fmt: skip
    """A figure of ``nrows x ncols`` map panels sized to the grid's aspect."""
    west, east, south, north = grid.extent
    height = PANEL_WIDTH * (north - south) * grid.aspect / (east - west)
    height = min(max(height, 1.2), 3 * PANEL_WIDTH)
    fig, axes = pyplot().subplots(nrows, ncols, squeeze=False, layout="constrained", figsize=(
        (PANEL_WIDTH + extra_width) * ncols, (height + title_height) * nrows + 0.6))  # fmt: skip
    return fig, axes


def _outlines(ax: Any, grid: MapGrid, rings: Sequence[np.ndarray]) -> None:
    from matplotlib.collections import LineCollection

    west, east, south, north = grid.extent
    inside = [r for r in rings
              if r[:, 0].max() >= west and r[:, 0].min() <= east
              and r[:, 1].max() >= south and r[:, 1].min() <= north]  # fmt: skip
    if inside:
        ax.add_collection(LineCollection(inside, **OUTLINE, zorder=3, clip_on=True))


def draw_field(ax: Any, grid: MapGrid, field: Any, *, title: str, cmap: str,
               vmin: float, vmax: float, rings: Sequence[np.ndarray]) -> Any:  # fmt: skip
    """One map panel: ``field`` ``(lat, lon)`` on the grid, outlines, limits; the mesh."""
    values = np.ma.masked_invalid(np.asarray(field, float))
    if values.shape != (grid.lat.size, grid.lon.size):
        raise ValueError(f"map {title!r}: field shape {values.shape} is not the grid's "
                         f"{(grid.lat.size, grid.lon.size)}")  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    mesh = ax.pcolormesh(grid.lon, grid.lat, values, shading="nearest", cmap=cmap,
                         vmin=vmin, vmax=vmax, rasterized=True)  # fmt: skip
    _outlines(ax, grid, rings)
    west, east, south, north = grid.extent
    ax.set_xlim(west, east)
    ax.set_ylim(south, north)
    ax.set_aspect(grid.aspect)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    if values.mask.all():
        ax.text(0.5, 0.5, "no valid cell", ha="center", va="center", transform=ax.transAxes)
    return mesh


def label_outer(axes: np.ndarray) -> None:
    """Degree labels on the left column and the bottom row only (the panels share a grid)."""
    nrows, ncols = axes.shape
    for (i, j), ax in np.ndenumerate(axes):
        ax.tick_params(labelleft=j == 0, labelbottom=i == nrows - 1)


def colorbar(fig: Any, mesh: Any, ax: Any, label: str) -> None:
    bar = fig.colorbar(mesh, ax=ax, shrink=0.85, pad=0.03)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def limits(*fields: Any) -> tuple[float, float]:
    """(min, max) over the finite values of all fields; (0, 1) when there is none."""
    finite = [np.asarray(f, float)[np.isfinite(f)] for f in fields]
    values = np.concatenate([f.ravel() for f in finite]) if finite else np.zeros(0)
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def symmetric(*fields: Any) -> tuple[float, float]:
    """(-m, m) with m the largest finite magnitude (a diverging scale centred at 0)."""
    finite = [np.abs(np.asarray(f, float)[np.isfinite(f)]) for f in fields]
    m = max((float(f.max()) for f in finite if f.size), default=0.0)
    return (-m, m) if m > 0 else (-1.0, 1.0)


@dataclass(frozen=True)
class Panel:
    """One map panel: its title, the field ``(lat, lon)``, colour map, limits and the
    colour bar's label ("" for a panel that shares the next panel's bar)."""

    title: str
    field: np.ndarray
    cmap: str
    vmin: float
    vmax: float
    bar: str


def draw_rows(grid: MapGrid, rows: Sequence[Sequence[Panel]], ncols: int, title: str,
              boundaries: str | Path, out: str | Path) -> Path:  # fmt: skip
    """A figure of map panels, row by row, each with its colour bar (or sharing the next
    panel's where its ``bar`` is "")."""
    rings = country_rings(boundaries)
    fig, axes = map_figure(grid, len(rows), ncols)
    for axrow, row in zip(axes, rows, strict=True):
        shared: list[Any] = []
        for ax, p in zip(axrow, row, strict=False):
            mesh = draw_field(ax, grid, p.field, title=p.title, cmap=p.cmap, vmin=p.vmin,
                              vmax=p.vmax, rings=rings)  # fmt: skip
            shared.append(ax)
            if p.bar:
                colorbar(fig, mesh, shared if len(shared) > 1 else ax, p.bar)
                shared = []
        for ax in axrow[len(row) :]:
            ax.set_axis_off()
    label_outer(axes)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)
