"""Line figures: the training loss per step and the scores against the forecast lead."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.report.common import (
    FORECASTS,
    figure_format,
    finite,
    headline_key,
    is_species_line,
    line_title,
    pyplot,
    save_figure,
)

# Colours per forecast, the same in every panel (and the legend once for all).
COLOURS = {"model": "C0", "persistence": "C1", "climatology": "C2", "constant": "C7"}
# Species panels: the metric, its axis label, in order of preference.
SPECIES_METRICS = (("auc", "AUC of presence (higher is better)"),
                   ("deviance", "Poisson deviance per point (lower is better)"))  # fmt: skip
PANELS_PER_ROW = 3


def plot_loss(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    figure_format(out)
    plt = pyplot()
    df = pd.DataFrame(rows).sort_values("step")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(df["step"], df["loss"], lw=1, alpha=0.5, label="loss per step")
    if len(df) >= 5:
        window = max(2, len(df) // 10)
        ax.plot(
            df["step"],
            df["loss"].rolling(window, min_periods=1).mean(),
            lw=2,
            label=f"running mean ({window} steps)",
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (normalised MSE)")
    ax.set_yscale("log" if (df["loss"] > 0).all() else "linear")
    ax.set_title(title or "BFM training loss")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)


def lead_lines(rows: list[dict[str, Any]], source: str) -> list[list[dict[str, Any]]]:
    """The lines to draw, each its rows sorted by lead: the headline lines in WeatherBench 2's
    order, then the pooled species lines; ValueError naming ``source`` for a line with a lead
    twice, a lead that is not a positive integer, or when there is no line to draw."""
    lines: dict[tuple[str, Any], dict[int, dict[str, Any]]] = {}
    for r in rows:
        if not (r.get("headline") or is_species_line(r)):
            continue
        lead = r["lead"]
        if not isinstance(lead, int) or isinstance(lead, bool) or lead < 1:
            raise ValueError(f"{source}: line {r['variable']} {r.get('channel')}: 'lead' must "
                             f"be a positive integer, got {lead!r}")  # fmt: skip
        by_lead = lines.setdefault((str(r["variable"]), r.get("channel")), {})
        if lead in by_lead:
            raise ValueError(f"{source}: line {r['variable']} {r.get('channel')} has lead "
                             f"{lead} twice")  # fmt: skip
        by_lead[lead] = r
    if not lines:
        raise ValueError(f"{source}: no headline line (headline true) and no pooled species "
                         "line: nothing to draw against the lead")  # fmt: skip
    ordered = [[by_lead[k] for k in sorted(by_lead)] for by_lead in lines.values()]
    weather = sorted((x for x in ordered if not is_species_line(x[0])),
                     key=lambda x: headline_key(x[0]))  # fmt: skip
    return weather + [x for x in ordered if is_species_line(x[0])]


def _values(line: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([r.get(key) if finite(r.get(key)) else np.nan for r in line], float)


def species_metric(line: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """The first of SPECIES_METRICS the model has a value of at some lead, with its label."""
    for metric, ylabel in SPECIES_METRICS:
        if np.isfinite(_values(line, f"{metric}_model")).any():
            return metric, ylabel
    return None


def _panel(ax: Any, line: Sequence[dict[str, Any]]) -> None:
    leads = np.array([r["lead"] for r in line])
    species = is_species_line(line[0])
    picked = species_metric(line) if species else ("rmse", "RMSE (lower is better)")
    ax.set_title(line_title(line[0]), fontsize=9)
    ax.set_xlabel("lead (model steps)")
    ax.set_xticks(leads)
    if picked is None:
        ax.text(0.5, 0.5, "no AUC or deviance\n(no valid point)", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
        return
    metric, ylabel = picked
    ax.set_ylabel(ylabel, fontsize=8)
    for name in (*FORECASTS, "constant") if species else FORECASTS:
        y = _values(line, f"{metric}_{name}")
        if np.isfinite(y).any():
            ax.plot(leads, y, marker="o", ms=3, color=COLOURS[name], label=name)
    ci = [r.get(f"{metric}_model_ci") for r in line]
    if any(isinstance(c, list) and len(c) == 2 and all(map(finite, c)) for c in ci):
        lo, hi = (np.array([c[i] if isinstance(c, list) else np.nan for c in ci], float)
                  for i in (0, 1))  # fmt: skip
        ax.fill_between(leads, lo, hi, color=COLOURS["model"], alpha=0.2, lw=0,
                        label="model 95 % interval")  # fmt: skip
        if len(leads) == 1:  # a band over one lead has no width: show it as an error bar
            ax.errorbar(leads, (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none",
                        ecolor=COLOURS["model"], capsize=4)  # fmt: skip


def plot_lead(rows: list[dict[str, Any]], out: str | Path, source: str = "scores") -> Path:
    """One panel per headline line (RMSE of each forecast against the lead, the model's 95 %
    interval as a band) and per pooled species line (AUC, else deviance); SVG or PNG."""
    figure_format(out)
    lines = lead_lines(rows, source)
    plt = pyplot()
    ncols = min(PANELS_PER_ROW, len(lines))
    nrows = math.ceil(len(lines) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.6),
                             squeeze=False)  # fmt: skip
    for ax, line in zip(axes.flat, lines, strict=False):
        _panel(ax, line)
    for ax in axes.flat[len(lines) :]:
        ax.set_visible(False)
    found: dict[str, Any] = {}
    for ax in axes.flat[: len(lines)]:
        for h, name in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(name, h)
    order = [*FORECASTS, "constant", "model 95 % interval"]
    handles = {
        k: found[k]
        for k in sorted(
            found, key=lambda k: (k not in order, order.index(k) if k in order else 0, k)
        )
    }
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               frameon=False)  # fmt: skip
    fig.suptitle("Scores against the forecast lead (held-out batches)", fontsize=11)
    inch = 1 / fig.get_figheight()
    fig.tight_layout(rect=(0, 0.45 * inch, 1, 1 - 0.3 * inch))
    return save_figure(fig, out)
