"""Regridding between regular lat/lon grids and counting points on a grid. Pure: no I/O.

Which method for which variable (the tile builders follow this table):

==========================  ===============  ==============================================
variable kind               method           why
==========================  ===============  ==============================================
continuous fields           ``conservative``  area-weighted means keep area integrals
(t2m, msl, winds, z, t, q)                   (energy, mass) when coarsening
``lsm`` land-sea mask       ``conservative``  ERA5's lsm is a land *fraction*; the mean of
                                              fractions is the fraction of the coarse cell
``slt`` soil type           ``mode``          a category: averaging 2 and 6 must not give 4
point observations          ``count_points``  occurrences are counted per cell
==========================  ===============  ==============================================

``nearest`` is offered for categorical fields where a majority vote is not wanted.

Conventions: fields are arrays ``(..., n_lat, n_lon)`` on the source grid (latitude
descending, as ``bfm.contracts.grid.Grid``); results are float64 ``(..., n_lat, n_lon)`` on
the target grid. Cells are compared by their edges, so source grids may be finer than the
target (0.25 -> 0.5 deg) or the same (identity, exact). Longitudes are not wrapped: grids
must not cross the antimeridian.

Conservative weights are separable: the overlap of a target and a source cell is the product
of their overlap in sin(latitude) and in longitude, which is the exact overlap area on the
sphere for lat/lon cells. NaN-aware: a target value is the weighted mean over the finite
source cells overlapping it; with no finite overlap it is NaN.
"""

from __future__ import annotations

import numpy as np

from bfm.contracts.grid import Grid


def _overlap(dst_edges: np.ndarray, src_edges: np.ndarray) -> np.ndarray:
    """Length of the overlap of every target and source interval, (n_dst, n_src).

    Edges are monotonic (either direction); neighbours share an edge and overlap by 0 exactly.
    """
    d_lo = np.minimum(dst_edges[:-1], dst_edges[1:])[:, None]
    d_hi = np.maximum(dst_edges[:-1], dst_edges[1:])[:, None]
    s_lo = np.minimum(src_edges[:-1], src_edges[1:])[None, :]
    s_hi = np.maximum(src_edges[:-1], src_edges[1:])[None, :]
    return np.clip(np.minimum(d_hi, s_hi) - np.maximum(d_lo, s_lo), 0.0, None)


def overlap_weights(src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised separable overlaps: (latitude in sin(lat), longitude in degrees).

    Shapes (dst.n_lat, src.n_lat) and (dst.n_lon, src.n_lon); the overlap area of target cell
    (i, j) and source cell (a, b) is proportional to ``w_lat[i, a] * w_lon[j, b]``.
    """
    w_lat = _overlap(np.sin(np.deg2rad(dst.lat_edges())), np.sin(np.deg2rad(src.lat_edges())))
    w_lon = _overlap(dst.lon_edges(), src.lon_edges())
    return w_lat, w_lon


def _normalise_rows(w: np.ndarray) -> np.ndarray:
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def _check_field(field: np.ndarray, src: Grid) -> np.ndarray:
    field = np.asarray(field)
    if field.ndim < 2 or field.shape[-2:] != src.shape:
        raise ValueError(f"field: expected trailing shape {src.shape=}, got {field.shape=}")
    return field


def grid_from_coords(lat: np.ndarray, lon: np.ndarray) -> Grid:
    """The regular Grid of latitude (descending) and longitude (ascending) cell centres."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if lat.size < 2 or lon.size < 2:
        raise ValueError(
            f"latitude/longitude: need at least 2 values, got {lat.size=}, {lon.size=}"
        )
    res = round(float(lat[0] - lat[1]), 9)
    if res <= 0 or not np.allclose(np.diff(lat), -res, atol=1e-6):
        raise ValueError("latitude: not a regular descending axis")
    if not np.allclose(np.diff(lon), res, atol=1e-6):
        raise ValueError(f"longitude: not a regular ascending axis with the latitude spacing {res}")

    def snap(x: float) -> float:
        return round(x / res) * res

    return Grid(snap(lat[-1]), snap(lat[0]), snap(lon[0]), snap(lon[-1]), res)


def covers(src: Grid, dst: Grid) -> bool:
    """True if the source cells cover every target cell completely."""
    s_lat, d_lat = src.lat_edges(), dst.lat_edges()
    s_lon, d_lon = src.lon_edges(), dst.lon_edges()
    eps = 1e-9
    return bool(
        s_lat[0] >= d_lat[0] - eps
        and s_lat[-1] <= d_lat[-1] + eps
        and s_lon[0] <= d_lon[0] + eps
        and s_lon[-1] >= d_lon[-1] - eps
    )


def conservative(field: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """Area-weighted (first-order conservative) regridding, NaN-aware; see the module doc."""
    field = _check_field(field, src).astype(np.float64, copy=False)
    w_lat, w_lon = (_normalise_rows(w) for w in overlap_weights(src, dst))
    finite = np.isfinite(field)
    numerator = w_lat @ np.where(finite, field, 0.0) @ w_lon.T
    denominator = w_lat @ finite.astype(np.float64) @ w_lon.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def mode(field: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """Majority category by overlap area (categorical fields such as soil type).

    Values are rounded to integers; ties go to the smaller category; target cells without
    finite overlap are NaN.
    """
    field = _check_field(field, src)
    finite = np.isfinite(field)
    categories = np.unique(np.rint(field[finite]))
    w_lat, w_lon = overlap_weights(src, dst)
    out_shape = field.shape[:-2] + dst.shape
    if categories.size == 0:
        return np.full(out_shape, np.nan)
    rounded = np.where(finite, np.rint(field), np.nan)
    areas = np.stack([w_lat @ (rounded == c).astype(np.float64) @ w_lon.T for c in categories])
    best = categories[np.argmax(areas, axis=0)]
    return np.where(areas.sum(axis=0) > 0, best, np.nan)


def nearest(field: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """Value of the source cell that contains each target cell centre (NaN outside)."""
    field = _check_field(field, src).astype(np.float64, copy=False)
    lat = np.repeat(dst.latitudes[:, None], dst.n_lon, axis=1)
    lon = np.repeat(dst.longitudes[None, :], dst.n_lat, axis=0)
    inside = src.contains(lat, lon)
    row, col = src.index_of(lat, lon)
    row = np.clip(row, 0, src.n_lat - 1)
    col = np.clip(col, 0, src.n_lon - 1)
    return np.where(inside, field[..., row, col], np.nan)


def count_points(
    lat: np.ndarray,
    lon: np.ndarray,
    grid: Grid,
    group: np.ndarray | None = None,
    n_groups: int | None = None,
) -> np.ndarray:
    """Number of points per cell, int64 (n_lat, n_lon); points outside the grid are dropped.

    With ``group`` (ints in [0, n_groups), one per point; negative = drop the point) the result
    is (n_groups, n_lat, n_lon): one count map per group (e.g. per time step and species).
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if lat.shape != lon.shape:
        raise ValueError(f"count_points: {lat.shape=} differs from {lon.shape=}")
    keep = grid.contains(lat, lon) & np.isfinite(lat) & np.isfinite(lon)
    if group is None:
        groups, n = np.zeros(lat.shape, dtype=np.int64), 1
    else:
        groups = np.asarray(group, dtype=np.int64)
        if groups.shape != lat.shape or n_groups is None:
            raise ValueError(f"count_points: need {groups.shape=} == {lat.shape=} and n_groups")
        n = int(n_groups)
        keep &= (groups >= 0) & (groups < n)
    row, col = grid.index_of(lat[keep], lon[keep])
    row = np.clip(row, 0, grid.n_lat - 1)
    col = np.clip(col, 0, grid.n_lon - 1)
    flat = (groups[keep] * grid.n_lat + row) * grid.n_lon + col
    counts = np.bincount(flat, minlength=n * grid.n_lat * grid.n_lon)
    counts = counts.astype(np.int64).reshape(n, grid.n_lat, grid.n_lon)
    return counts[0] if group is None else counts
