"""The frozen horizontal grid every stage shares (docs/architecture.md, "Grid").

Cell centres lie on multiples of ``res``; latitude is descending (north first, as ERA5),
longitude ascending in [-180, 180). Europe at 0.25 deg is 153 x 321 cells.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG), used for cell areas


def _on_multiple(value: float, res: float) -> bool:
    k = value / res
    return abs(k - round(k)) < 1e-9


@dataclass(frozen=True)
class Grid:
    """A regular lat/lon grid given by its outermost cell centres, in degrees.

    Attributes:
        lat_min, lat_max: southernmost and northernmost cell centre.
        lon_min, lon_max: westernmost and easternmost cell centre, in [-180, 180).
        res: spacing of the cell centres in both directions.
    """

    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float
    res: float

    def __post_init__(self) -> None:
        if not self.res > 0:
            raise ValueError(f"grid: res must be > 0, got {self.res=}")
        for name in ("lat_min", "lat_max", "lon_min", "lon_max"):
            value = getattr(self, name)
            if not _on_multiple(value, self.res):
                raise ValueError(f"grid: {name}={value} is not a multiple of res={self.res}")
        if not -90 <= self.lat_min < self.lat_max <= 90:
            raise ValueError(
                f"grid: need -90 <= lat_min < lat_max <= 90, got {self.lat_min=}, {self.lat_max=}"
            )
        if not -180 <= self.lon_min < self.lon_max < 180:
            raise ValueError(
                f"grid: need -180 <= lon_min < lon_max < 180, got {self.lon_min=}, {self.lon_max=}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        return cls(**{k: float(d[k]) for k in ("lat_min", "lat_max", "lon_min", "lon_max", "res")})

    @classmethod
    def from_json(cls, text: str) -> Grid:
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def n_lat(self) -> int:
        return int(round((self.lat_max - self.lat_min) / self.res)) + 1

    @property
    def n_lon(self) -> int:
        return int(round((self.lon_max - self.lon_min) / self.res)) + 1

    @property
    def shape(self) -> tuple[int, int]:
        """(n_lat, n_lon)."""
        return (self.n_lat, self.n_lon)

    @property
    def latitudes(self) -> np.ndarray:
        """Cell-centre latitudes, descending, float64 (n_lat,)."""
        # Built from integers so every value is an exact multiple of res (no drift).
        k = np.arange(self.n_lat)[::-1] + round(self.lat_min / self.res)
        return k * self.res

    @property
    def longitudes(self) -> np.ndarray:
        """Cell-centre longitudes, ascending, float64 (n_lon,)."""
        k = np.arange(self.n_lon) + round(self.lon_min / self.res)
        return k * self.res

    def lat_edges(self) -> np.ndarray:
        """Cell-boundary latitudes, descending, clipped to the poles (n_lat + 1,)."""
        lats = self.latitudes
        edges = np.concatenate([lats + self.res / 2, [lats[-1] - self.res / 2]])
        return np.clip(edges, -90.0, 90.0)

    def lon_edges(self) -> np.ndarray:
        """Cell-boundary longitudes, ascending (n_lon + 1,)."""
        lons = self.longitudes
        return np.concatenate([lons - self.res / 2, [lons[-1] + self.res / 2]])

    def cell_areas(self) -> np.ndarray:
        """Area of each cell on the sphere in m^2, shape (n_lat, n_lon)."""
        sin_edges = np.sin(np.deg2rad(self.lat_edges()))
        band = EARTH_RADIUS_M**2 * np.abs(sin_edges[:-1] - sin_edges[1:]) * np.deg2rad(self.res)
        return np.repeat(band[:, None], self.n_lon, axis=1)

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """True where a point falls inside some cell (cell = centre +- res/2, half-open)."""
        lat_e, lon_e = self.lat_edges(), self.lon_edges()
        return (lat > lat_e[-1]) & (lat <= lat_e[0]) & (lon >= lon_e[0]) & (lon < lon_e[-1])

    def index_of(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row/column of the cells containing the points (callers mask with ``contains``)."""
        row = np.floor((self.lat_max + self.res / 2 - np.asarray(lat)) / self.res).astype(int)
        col = np.floor((np.asarray(lon) - (self.lon_min - self.res / 2)) / self.res).astype(int)
        return row, col
