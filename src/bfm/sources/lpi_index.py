"""The Living Planet Index per grid cell by the chain method (pure numpy; ``bfm.sources.lpi``
reads the Living Planet Database and builds the tiles from :func:`cell_index`).

The method follows the LPI's chain route (Collen et al. 2009, Cons. Biol. 23:317-327; Loh et
al. 2005; ZSL ``rlpi`` with ``GAM_GLOBAL_FLAG=0``), step by step:

1. **Zeros.** A series holding a zero gets ``zero_offset`` (default 0.01, the LPI's 1 %) times
   the mean of its non-zero values added to every value; a series of zeros only has no
   logarithm and is left out (counted).
2. **Gaps** (``gaps``). ``interpolate`` (default, the LPI): log-linear interpolation between
   neighbouring observed years a < t < b, N_t = N_a (N_b / N_a)^((t - a) / (b - a)), i.e.
   linear in log10 N; never extrapolated before the first or after the last observation.
   ``skip``: no interpolation; a year-on-year ratio exists only where both years are observed,
   so a gap contributes nothing.
3. **Rates.** d_t = log10 N_t - log10 N_{t-1}, capped to [-cap, cap] (``cap``, default 1: the
   LPI's ``LAMBDA_MIN/MAX``, a ratio within [0.1, 10] per year).
4. **Cell rate** (``weighting``). ``species`` (default, the LPI): the mean d_t of the cell's
   populations of each species (``Binomial``), then the mean over the cell's species;
   ``populations``: the mean over the cell's populations directly. Either is the log10 of a
   geometric mean of ratios. Only populations with a d_t in year t take part in year t.
5. **Chain.** I = 1 in the base year (the window's first year, or ``base_year``),
   I_t = I_{t-1} * 10^(mean d_t). A year without any d_t in the cell continues the chain with
   d_t = 0 (the LPI's rule), so later years keep the level. ``empty_years``: ``missing``
   (default) reports such a year as missing in the tile; ``carry`` reports the chain's value
   (the LPI's index, flat through the year).

A cell *has populations* when one of its usable populations has its span (first to last
observed year) overlapping the window; such a cell is 1 in the base year. Every other cell is
missing in every year. The GAM route of the LPI (``GAM_GLOBAL_FLAG=1``, series of 6 or more
points smoothed by a GAM) is not implemented: all series take the chain route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

GAPS = ("interpolate", "skip")
WEIGHTING = ("species", "populations")
EMPTY_YEARS = ("missing", "carry")


@dataclass(frozen=True)
class Method:
    """The options of the chain method (module docstring); ``base_year`` None: the window's."""

    gaps: str = "interpolate"
    cap: float = 1.0
    zero_offset: float = 0.01
    weighting: str = "species"
    empty_years: str = "missing"
    base_year: int | None = None

    def __post_init__(self) -> None:
        for field, allowed in (
            ("gaps", GAPS),
            ("weighting", WEIGHTING),
            ("empty_years", EMPTY_YEARS),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"config: key 'sources.lpi.options.{field}' must be one of {list(allowed)}, "
                    f"got {getattr(self, field)!r}"
                )
        for field in ("cap", "zero_offset"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(
                    f"config: key 'sources.lpi.options.{field}' must be a number > 0, got {value!r}"
                )
        if self.base_year is not None and (
            isinstance(self.base_year, bool) or not isinstance(self.base_year, int)
        ):
            raise ValueError(
                f"config: key 'sources.lpi.options.base_year' must be a year (integer), "
                f"got {self.base_year!r}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Method:
        known = {"gaps", "cap", "zero_offset", "weighting", "empty_years", "base_year"}
        extra = sorted(set(options) - known - {"encoding", "sample_populations"})
        if extra:
            raise ValueError(
                f"config: unknown key(s) {['sources.lpi.options.' + k for k in extra]} "
                f"(known: {sorted(known | {'encoding', 'sample_populations'})})"
            )
        return cls(**{k: options[k] for k in known if k in options})


def log10_series(values: np.ndarray, zero_offset: float) -> tuple[np.ndarray, np.ndarray]:
    """log10 of each population's values (P, Y) after the zero rule; NaN stays NaN.

    Returns the logs and a (P,) mask of the series that hold zeros only (their logs are NaN).
    """
    values = np.asarray(values, dtype=np.float64)
    has_zero = (values == 0).any(axis=1)
    positive = np.where(values > 0, values, 0.0)
    n_positive = (values > 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_positive = positive.sum(axis=1) / n_positive
    only_zeros = has_zero & (n_positive == 0)
    offset = np.where(has_zero & ~only_zeros, zero_offset * mean_positive, 0.0)
    with np.errstate(divide="ignore"):
        logs = np.log10(values + offset[:, None])
    logs[only_zeros] = np.nan
    return logs, only_zeros


def fill_gaps(logs: np.ndarray, years: np.ndarray) -> np.ndarray:
    """Linear interpolation of log10 values (log-linear in N) between each series' observed
    years; nothing before the first or after the last observation."""
    out = logs.copy()
    for i, row in enumerate(logs):
        seen = np.flatnonzero(np.isfinite(row))
        if len(seen) >= 2:
            first, last = seen[0], seen[-1] + 1
            out[i, first:last] = np.interp(years[first:last], years[seen], row[seen])
    return out


def log_ratios(logs: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """d_t = log10 N_t - log10 N_{t-1} (NaN in the first year and where either is missing),
    capped to [-cap, cap]; also the mask of the capped values."""
    d = np.full(logs.shape, np.nan)
    d[:, 1:] = logs[:, 1:] - logs[:, :-1]
    with np.errstate(invalid="ignore"):
        capped = np.abs(d) > cap
    return np.clip(d, -cap, cap), capped


def group_mean(d: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group and year the mean of the finite values of ``d`` (rows in ``group``), else
    NaN; (n_groups, Y)."""
    finite = np.isfinite(d)
    sums = np.zeros((n_groups, d.shape[1]))
    counts = np.zeros((n_groups, d.shape[1]))
    np.add.at(sums, group, np.where(finite, d, 0.0))
    np.add.at(counts, group, finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def chain(rates: np.ndarray, empty_years: str) -> np.ndarray:
    """The index of rates (C, Y) whose first column is the base year (its rate unused):
    1 in the base year, I_t = I_{t-1} * 10^rate_t, a missing rate continuing with 0 (and
    reported missing with ``empty_years='missing'``)."""
    steps = np.nan_to_num(rates[:, 1:], nan=0.0)
    index = 10.0 ** np.concatenate([np.zeros((len(rates), 1)), np.cumsum(steps, axis=1)], axis=1)
    if empty_years == "missing":
        index[:, 1:][np.isnan(rates[:, 1:])] = np.nan
    return index


@dataclass(frozen=True)
class CellIndex:
    """The index of the cells that have populations, and what went into it.

    Attributes:
        years: the window's years, base year first (Y,).
        cells: flat cell numbers (row * n_lon + col) of the cells with populations (C,).
        index: (C, Y) the chained index.
        counts: populations by fate (``only_zeros``, ``outside_window``, ``used``) and the
            number of population-year ratios inside the window that were ``capped``.
    """

    years: np.ndarray
    cells: np.ndarray
    index: np.ndarray
    counts: dict[str, int]


def _window_logs(
    values: np.ndarray, years: np.ndarray, window: np.ndarray, method: Method
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logs on the window's years (one year before it too), the populations' spans overlap
    with the window, and the only-zeros mask."""
    logs, only_zeros = log10_series(values, method.zero_offset)
    observed = np.isfinite(logs)
    first = np.where(observed.any(axis=1), years[np.argmax(observed, axis=1)], np.inf)
    last = np.where(observed.any(axis=1), years[::-1][np.argmax(observed[:, ::-1], axis=1)], -1)
    overlaps = (first <= window[-1]) & (last >= window[0])
    if method.gaps == "interpolate":
        logs = fill_gaps(logs, years)
    on_window = np.full((len(values), len(window)), np.nan)
    position = {int(y): j for j, y in enumerate(years)}
    for k, year in enumerate(window):
        if int(year) in position:
            on_window[:, k] = logs[:, position[int(year)]]
    return on_window, overlaps & ~only_zeros, only_zeros


def cell_index(
    values: np.ndarray,
    years: np.ndarray,
    cell: np.ndarray,
    species: np.ndarray,
    window: tuple[int, int],
    method: Method,
) -> CellIndex:
    """The chained index per cell over the years ``window`` (first, last) inclusive.

    ``values`` (P, Y) population values with NaN gaps on the consecutive ``years``; ``cell``
    (P,) the flat cell of each population; ``species`` (P,) its species (any labels).
    """
    years = np.asarray(years, dtype=np.int64)
    if len(years) > 1 and not (np.diff(years) == 1).all():
        raise ValueError(f"lpi: the years {years.tolist()} are not consecutive")
    span = np.arange(window[0], window[1] + 1)
    logs, used, only_zeros = _window_logs(values, years, span, method)
    d, capped = log_ratios(logs, method.cap)  # d[:, 0] (the base year) is NaN: not used
    d, cell, species = d[used], np.asarray(cell)[used], np.asarray(species)[used]
    cells, cell_of = np.unique(cell, return_inverse=True)
    cell_of = cell_of.ravel()
    if not len(cells):
        rates = np.zeros((0, len(span)))
    elif method.weighting == "species":
        pairs, group = np.unique(np.stack([cell_of, _codes(species)]), axis=1, return_inverse=True)
        rates = group_mean(group_mean(d, group.ravel(), pairs.shape[1]), pairs[0], len(cells))
    else:
        rates = group_mean(d, cell_of, len(cells))
    counts = {
        "only_zeros": int(only_zeros.sum()),
        "outside_window": int((~used & ~only_zeros).sum()),
        "used": int(used.sum()),
        "capped": int(capped[used].sum()),
    }
    return CellIndex(span, cells.astype(np.int64), chain(rates, method.empty_years), counts)


def _codes(labels: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(labels).astype(str), return_inverse=True)[1].ravel()


def on_grid(result: CellIndex, shape: tuple[int, int]) -> np.ndarray:
    """The index as (Y, n_lat, n_lon), NaN in cells without populations."""
    out = np.full((len(result.years), shape[0] * shape[1]), np.nan)
    out[:, result.cells] = result.index.T
    return out.reshape(len(result.years), *shape)
