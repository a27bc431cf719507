"""What the report's items share: reading JSON lines, labels from the catalogue, number
formatting, the HTML page around a table and saving a matplotlib figure (atomically, with no
date in the file, so a rerun on the same input writes the same bytes)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from bfm.contracts import catalogue
from bfm.fileio import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# WeatherBench 2's headline lines in its own order (``headline`` in the scores marks them).
HEADLINE_ORDER = ("z500", "t850", "q700", "t2m", "u10", "v10", "msl")
# The forecasts every weather score line has, in the order the report draws them.
FORECASTS = ("model", "persistence", "climatology")
# Figure formats and the metadata that keeps dates and versions out of the file.
FIGURE_FORMATS: dict[str, dict[str, Any]] = {"svg": {"Date": None}, "png": {"Software": None}}


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; ValueError naming ``path:line`` for a line
    that is not a JSON object or lacks a ``required`` field, and for a file without any."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON line ({err})") from err
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{n}: a record must be a JSON object, got {line.strip()!r}"
                )
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: record lacks field(s) {missing}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no records")
    return rows


def label(variable: str) -> str:
    """``surface/t2m`` -> ``surface/t2m: 2 metre temperature (K)`` (catalogue names)."""
    group, _, name = variable.partition("/")
    try:
        var = catalogue.of_group(group).variable(name)
    except ValueError:
        return variable
    return f"{variable}: {var.long_name} ({var.units})"


def units(variable: str) -> str:
    """The catalogue's units of ``group/name`` ("" for a variable it does not know)."""
    group, _, name = variable.partition("/")
    try:
        return catalogue.of_group(group).variable(name).units
    except ValueError:
        return ""


def short_name(row: dict[str, Any]) -> str:
    """``z500`` for atmospheric/z at 500, ``t2m`` for surface/t2m (the error maps' names)."""
    name = str(row["variable"]).partition("/")[2]
    return name + (str(row["channel"]) if row.get("channel") is not None else "")


def line_title(row: dict[str, Any]) -> str:
    """``z500: geopotential at 500 hPa (m2 s-2)``; ``species/occurrence: all species``."""
    variable, channel = str(row["variable"]), row.get("channel")
    group, _, name = variable.partition("/")
    try:
        modality = catalogue.of_group(group)
        var = modality.variable(name)
    except ValueError:
        return variable + (f" {channel}" if channel is not None else "")
    if modality.kind == catalogue.DimsKind.SPECIES:
        return f"{variable}: " + ("all species" if channel is None else f"GBIF key {channel}")
    if modality.kind == catalogue.DimsKind.LEVEL and channel is not None:
        return f"{short_name(row)}: {var.long_name} at {channel} hPa ({var.units})"
    if channel is not None:
        return f"{variable} {channel}: {var.long_name}"
    return f"{short_name(row)}: {var.long_name} ({var.units})"


def column_title(row: dict[str, Any]) -> str:
    """A table column's short title: ``z500 (m2 s-2)``, ``species/occurrence, all species``."""
    if is_species_line(row):
        return f"{row['variable']}, all species"
    unit = units(str(row["variable"]))
    return short_name(row) + (f" ({unit})" if unit else "")


def headline_key(row: dict[str, Any]) -> tuple[int, str]:
    """Sort key: WeatherBench 2's order of the headline lines, others after by name."""
    short = short_name(row)
    order = HEADLINE_ORDER.index(short) if short in HEADLINE_ORDER else len(HEADLINE_ORDER)
    return order, short


def is_species_line(row: dict[str, Any]) -> bool:
    """A pooled line (channel null) of a species-kind group (occurrence, effort)."""
    group = str(row["variable"]).partition("/")[0]
    try:
        kind = catalogue.of_group(group).kind
    except ValueError:
        return False
    return kind == catalogue.DimsKind.SPECIES and row.get("channel") is None


def finite(v: Any) -> TypeGuard[float]:
    """A finite number (not a bool, None or NaN)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def num(v: Any, fmt: str = ".4g") -> str:
    return format(v, fmt) if finite(v) else "-"


def html_page(title: str, intro: str, body: str, out: str | Path) -> Path:
    """A small standalone HTML page (the report shows it in a frame); ``intro`` is HTML."""
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td{{white-space:nowrap}}
td:first-child,th:first-child{{text-align:left}}td.name{{text-align:left;white-space:normal}}
tr.mean td{{border-top:2px solid #888;background:#f4f4f4}}small{{color:#555}}
</style></head><body>
<h3>{html.escape(title)}</h3>
{intro}
{body}
</body></html>
"""
    return write_text_atomic(out, doc)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "bfm-report"  # stable element ids in SVG files
    import matplotlib.pyplot as plt

    return plt


def figure_format(out: str | Path) -> str:
    """``svg`` or ``png`` from the suffix of ``out``; ValueError for another (checked before
    anything is drawn)."""
    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"{out}: a figure must be .svg or .png (the formats the report "
                         f"shows inline), got {Path(out).suffix!r}")  # fmt: skip
    return fmt


def save_figure(fig: Figure, out: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``out`` in the format of its suffix (svg, png), atomically and
    without a creation date (the same input gives the same file); closes the figure."""
    out = Path(out)
    try:
        fmt = figure_format(out)
    except ValueError:
        pyplot().close(fig)
        raise
    metadata = FIGURE_FORMATS[fmt]
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
    finally:
        pyplot().close(fig)
    return out
