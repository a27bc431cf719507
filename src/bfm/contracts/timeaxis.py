"""The model time axis: configured steps, tile periods and batch names.

Steps are pandas offsets: ``6h``, ``1D`` or ``1MS`` (month start). Tiles cover one calendar
month (period key ``YYYY-MM``); a batch is named by its first time, written ``YYYYMMDDTHH``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

STEPS = ("6h", "1D", "1MS")
T0_FORMAT = "%Y%m%dT%H"


def check_step(step: str) -> str:
    if step not in STEPS:
        raise ValueError(f"time.step: {step!r} is not one of {STEPS}")
    return step


def offset(step: str) -> pd.DateOffset:
    return pd.tseries.frequencies.to_offset(check_step(step))


def steps(start: str | pd.Timestamp, end: str | pd.Timestamp, step: str) -> pd.DatetimeIndex:
    """All step times t with start <= t <= end."""
    return pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=offset(step))


def batch_starts(start: str, end: str, step: str) -> pd.DatetimeIndex:
    """Batch first times t0: both t0 and t0 + step lie in the window."""
    times = steps(start, end, step)
    return times[:-1]


def in_training(starts: pd.DatetimeIndex, eval_start: str | pd.Timestamp, step: str) -> np.ndarray:
    """Which batches train: both their times (t0, t0 + step) lie before ``eval_start``.

    A training pair's target is its second batch's t1, so no target (and no statistics
    slice) is at or after ``eval_start``. The other batches are held out: the first held-out
    pair starts at ``eval_start - step`` and its target is ``eval_start + step``.
    """
    return np.asarray(starts + offset(step) < pd.Timestamp(eval_start))


def next_time(t: pd.Timestamp, step: str) -> pd.Timestamp:
    return pd.Timestamp(t) + offset(step)


def format_t0(t: pd.Timestamp) -> str:
    return pd.Timestamp(t).strftime(T0_FORMAT)


def parse_t0(text: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(pd.to_datetime(text, format=T0_FORMAT))
    except ValueError as err:
        raise ValueError(f"batch name {text!r} is not of the form YYYYMMDDTHH") from err


def period_of(t: pd.Timestamp) -> str:
    return pd.Timestamp(t).strftime("%Y-%m")


def periods(times: Iterable[pd.Timestamp]) -> list[str]:
    """Sorted unique month keys of the given times."""
    return sorted({period_of(t) for t in times})


def check_period(period: str) -> str:
    """``period`` if it is a month ``YYYY-MM``, else ValueError naming it."""
    try:
        ok = pd.Timestamp(f"{period}-01").strftime("%Y-%m") == period
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"--period: period {period!r} is not of the form YYYY-MM")
    return period


def period_bounds(period: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[first instant, first instant of next month) of a ``YYYY-MM`` period."""
    start = pd.Timestamp(f"{check_period(period)}-01")
    return start, start + pd.offsets.MonthBegin(1)


def steps_in_period(period: str, start: str, end: str, step: str) -> pd.DatetimeIndex:
    """Window steps that fall inside a month."""
    lo, hi = period_bounds(period)
    times = steps(start, end, step)
    return times[(times >= lo) & (times < hi)]
