"""HTML tables: the evaluation's scores, the species distribution models' metrics (SDM) and
the ablations (variants of the model side by side)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bfm.report.common import (
    column_title,
    finite,
    headline_key,
    html_page,
    is_species_line,
    label,
    line_title,
    num,
)

# --- scores ---------------------------------------------------------------------------------

SCORE_COLUMNS = ("variable", "channel", "n", "rmse_model", "rmse_persistence", "rmse_climatology")


def _cell(text: str, bold: bool) -> str:
    return f"<td><b>{text}</b></td>" if bold else f"<td>{text}</td>"


def scores_table(rows: list[dict[str, Any]]) -> str:
    """HTML table of the per-variable summaries (channel null) and WeatherBench 2's headline
    levels (z500, t850, q700), best RMSE in bold, the model's 95 % interval and ACC."""
    summary = [r for r in rows if r.get("channel") is None or r.get("headline")] or rows
    head = ("variable", "n", "model RMSE", "95 % interval", "persistence RMSE",
            "climatology RMSE", "model ACC", "skill vs persistence",
            "skill vs climatology")  # fmt: skip
    lines = [
        "<table class='scores'>",
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for r in summary:
        vals = [r["rmse_model"], r["rmse_persistence"], r["rmse_climatology"]]
        known = [v for v in vals if finite(v)]
        best = min(known) if known else None
        cells = [_cell(num(v), finite(v) and v == best) for v in vals]
        ci = r.get("rmse_model_ci")
        interval = f"{ci[0]:.4g} - {ci[1]:.4g}" if ci else "-"
        skills = [1 - r["rmse_model"] / ref if finite(r["rmse_model"]) and finite(ref) and ref
                  else None for ref in (r["rmse_persistence"], r["rmse_climatology"])]  # fmt: skip
        name = label(str(r["variable"])) + (f" at {r['channel']}" if r.get("channel") else "")
        lines.append(
            f"<tr><td>{html.escape(name)}</td><td>{r['n']}</td>{cells[0]}"
            f"<td>{interval}</td>{cells[1]}{cells[2]}"
            f"<td>{num(r.get('acc_model'), '.3f')}</td>"
            + "".join(f"<td>{num(k, '+.3f')}</td>" for k in skills)
            + "</tr>"
        )
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def write_scores_html(rows: list[dict[str, Any]], out: str | Path, title: str) -> Path:
    intro = """<p>Latitude-weighted RMSE in physical units on the held-out batches (lead 1),
with the model's 95 % bootstrap interval over forecast times; climatology: the training
years' mean per cell and day of year; ACC: anomaly correlation against it; skill = 1 - model
/ reference.</p>"""
    return html_page(title, intro, scores_table(rows), out)


# --- SDM ------------------------------------------------------------------------------------

SDM_REQUIRED = ("species", "key", "method", "cv")
SDM_METRICS = (("auc_roc", "AUC-ROC"), ("auc_pr", "AUC-PR"), ("max_tss", "max TSS"),
               ("boyce", "Boyce"))  # fmt: skip
CV_SCHEMES = {"spatial": "spatial block CV", "random": "random CV"}
METHODS = {"bfm": "BFM", "bfm_lora": "BFM + LoRA", "glm": "GLM", "maxent": "MaxEnt"}


def _check_sdm(rows: list[dict[str, Any]], source: str) -> None:
    seen: set[tuple[Any, str, str]] = set()
    for i, r in enumerate(rows, 1):
        where = f"{source}: record {i} ({r['species']}, {r['method']}, {r['cv']})"
        if r["cv"] not in CV_SCHEMES:
            raise ValueError(f"{where}: 'cv' must be one of {list(CV_SCHEMES)}")
        if not isinstance(r["method"], str) or not r["method"]:
            raise ValueError(f"{where}: 'method' must be a non-empty string")
        for m, _ in SDM_METRICS:
            for key in (m, f"{m}_sd"):
                if r.get(key) is not None and not finite(r[key]):
                    raise ValueError(f"{where}: {key!r} must be a number or null, "
                                     f"got {r[key]!r}")  # fmt: skip
        ident = (r["key"], r["method"], r["cv"])
        if ident in seen:
            raise ValueError(f"{where}: a second record for this species, method and CV")
        seen.add(ident)


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["method"] for r in rows}
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def _species(rows: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    first: dict[Any, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(r["key"], r)
    return list(first.items())


def _mean_sd(r: dict[str, Any] | None, metric: str) -> str:
    if r is None or not finite(r.get(metric)):
        return "-"
    sd = r.get(f"{metric}_sd")
    return f"{r[metric]:.3f}" + (f" &plusmn; {sd:.3f}" if finite(sd) else "")


def _best(values: Sequence[Any]) -> float | None:
    known = [v for v in values if finite(v)]
    return max(known) if known else None  # every SDM metric: higher is better


def _species_cell(r: dict[str, Any], rowspan: int) -> str:
    counts = []
    for key, what in (("n_presence", "presences"), ("n_background", "background points")):
        if isinstance(r.get(key), int):
            counts.append(f"{r[key]} {what}")
    extra = f"<br><small>GBIF key {html.escape(str(r['key']))}"
    extra += (", " + ", ".join(counts) if counts else "") + "</small>"
    return (
        f"<td class='name' rowspan='{rowspan}'><i>{html.escape(str(r['species']))}</i>{extra}</td>"
    )


def sdm_table(rows: list[dict[str, Any]], source: str = "metrics") -> str:
    """Per species and method, mean +- sd of each metric under each CV scheme (the best
    method per species, scheme and metric in bold), then the mean over species per method."""
    _check_sdm(rows, source)
    methods, species = _methods(rows), _species(rows)
    schemes = [c for c in CV_SCHEMES if any(r["cv"] == c for r in rows)]
    cols = [(c, m) for c in schemes for m, _ in SDM_METRICS]
    index = {(r["key"], r["method"], r["cv"]): r for r in rows}
    head1 = "<th rowspan='2'>species</th><th rowspan='2'>method</th>" + "".join(
        f"<th colspan='{len(SDM_METRICS)}'>{CV_SCHEMES[c]}</th>" for c in schemes
    )
    head2 = "".join(f"<th>{name}</th>" for _ in schemes for _, name in SDM_METRICS)
    out = ["<table class='sdm'>", f"<thead><tr>{head1}</tr><tr>{head2}</tr></thead>", "<tbody>"]
    for key, first in species:
        best = {(c, m): _best([(index.get((key, meth, c)) or {}).get(m) for meth in methods])
                for c, m in cols}  # fmt: skip
        for j, meth in enumerate(methods):
            cells = []
            for c, m in cols:
                r = index.get((key, meth, c))
                value = None if r is None else r.get(m)
                cells.append(_cell(_mean_sd(r, m), finite(value) and value == best[(c, m)]))
            lead = _species_cell(first, len(methods)) if j == 0 else ""
            out.append(f"<tr>{lead}<td class='name'>{METHODS.get(meth, html.escape(meth))}"
                       f"</td>{''.join(cells)}</tr>")  # fmt: skip
    out.append(_sdm_means(index, methods, [k for k, _ in species], cols))
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _sdm_means(index: dict[tuple[Any, str, str], dict[str, Any]], methods: list[str],
               keys: list[Any], cols: list[tuple[str, str]]) -> str:  # fmt: skip
    """Rows 'mean over species' per method: the mean of the species' means where known."""
    means: dict[tuple[str, str, str], tuple[float | None, int]] = {}
    for meth in methods:
        for c, m in cols:
            vals = [(index.get((k, meth, c)) or {}).get(m) for k in keys]
            known = [v for v in vals if finite(v)]
            means[(meth, c, m)] = (float(np.mean(known)) if known else None, len(known))
    best = {(c, m): _best([means[(meth, c, m)][0] for meth in methods]) for c, m in cols}
    lines = []
    for j, meth in enumerate(methods):
        cells = []
        for c, m in cols:
            mean, k = means[(meth, c, m)]
            text = num(mean, ".3f") + (f" <small>({k} of {len(keys)})</small>"
                                        if mean is not None and k < len(keys) else "")  # fmt: skip
            cells.append(_cell(text, mean is not None and mean == best[(c, m)]))
        lead = (f"<td class='name' rowspan='{len(methods)}'>mean over {len(keys)} species</td>"
                if j == 0 else "")  # fmt: skip
        name = METHODS.get(meth, html.escape(meth))
        lines.append(f"<tr class='mean'>{lead}<td class='name'>{name}</td>{''.join(cells)}</tr>")
    return "\n".join(lines)


def _values(rows: list[dict[str, Any]], key: str) -> str:
    vals = sorted({str(r[key]) for r in rows if r.get(key) is not None})
    return " / ".join(vals) if vals else "?"


def sdm_intro(rows: list[dict[str, Any]]) -> str:
    """The paragraph above the SDM table: the methods, the CV schemes and their settings."""
    spatial = [r for r in rows if r["cv"] == "spatial"]
    return f"""<p>Species distribution models of each species, scored at its presence and
background points under cross-validation: <b>BFM</b>, a suitability head on the frozen
pre-trained model's cell features (its input without the species group); <b>BFM + LoRA</b>,
the same with low-rank adapters in the backbone;
<b>GLM</b>, logistic regression on the environmental covariates; <b>MaxEnt</b>, maximum
entropy (elapid). Each cell: the mean &plusmn; standard deviation over
{_values(rows, "replicates")} replicates of {_values(rows, "folds")}-fold cross-validation.
<b>Spatial block CV</b> deals square blocks of {_values(spatial, "block_size_deg")} degrees to the
folds (a test point's neighbours are not trained on); <b>random CV</b> deals points at random.
AUC-ROC and AUC-PR: areas under the ROC and precision-recall curves; max TSS: the true skill
statistic at its best threshold; Boyce: the continuous Boyce index. Higher is better for
every metric; the best method per species, scheme and metric is in bold.</p>"""


def write_sdm_html(rows: list[dict[str, Any]], out: str | Path, title: str,
                   source: str) -> Path:  # fmt: skip
    table = sdm_table(rows, source)
    return html_page(title, sdm_intro(rows), table, out)


# --- ablations ------------------------------------------------------------------------------


def parse_labelled(specs: Sequence[str], option: str = "--scores") -> list[tuple[str, str]]:
    """``LABEL=PATH`` arguments in order; ValueError naming the argument that breaks it."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path:
            raise ValueError(f"{option} {spec!r}: expected LABEL=PATH")
        if any(name == n for n, _ in out):
            raise ValueError(f"{option} {spec!r}: label {name!r} is given twice")
        out.append((name, path))
    return out


def ablation_columns(variants: Sequence[list[dict[str, Any]]]) -> list[tuple[dict[str, Any], str]]:
    """(line, metric) of the table: the lead-1 RMSE of every headline line some variant has,
    in WeatherBench 2's order, then the model's AUC and deviance of the pooled species lines."""
    lines: dict[tuple[str, Any], dict[str, Any]] = {}
    for rows in variants:
        for r in rows:
            if r.get("headline") or is_species_line(r):
                lines.setdefault((str(r["variable"]), r.get("channel")), r)
    weather = sorted((r for r in lines.values() if not is_species_line(r)), key=headline_key)
    cols = [(r, "rmse_model") for r in weather]
    for r in (r for r in lines.values() if is_species_line(r)):
        cols += [(r, m) for m in ("auc_model", "deviance_model")
                 if any(finite(x.get(m)) for rows in variants for x in rows
                        if (x["variable"], x.get("channel")) == (r["variable"], None))]  # fmt: skip
    return cols


ABLATION_METRICS = {"rmse_model": "RMSE", "auc_model": "AUC", "deviance_model": "deviance"}


def _lead1(rows: list[dict[str, Any]]) -> dict[tuple[str, Any], dict[str, Any]]:
    return {(str(r["variable"]), r.get("channel")): r for r in rows if r.get("lead", 1) == 1}


def ablation_table(variants: Sequence[tuple[str, list[dict[str, Any]]]]) -> str:
    """Rows: the variants (the first the full model); each cell the value and its change
    relative to the first row in %; the best variant per column in bold."""
    indexed = [(name, _lead1(rows)) for name, rows in variants]
    cols = ablation_columns([list(ix.values()) for _, ix in indexed])
    if not cols:
        raise ValueError("ablations: no headline or species line in any scores file")
    head = "<th>variant</th>" + "".join(
        f"<th title='{html.escape(line_title(r))}'>{html.escape(column_title(r))}<br>"
        f"<small>{ABLATION_METRICS[m]}</small></th>"
        for r, m in cols
    )
    out = ["<table class='ablations'>", f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    grid = [[ix.get((str(r["variable"]), r.get("channel")), {}).get(m) for r, m in cols]
            for _, ix in indexed]  # fmt: skip
    for i, (name, _) in enumerate(indexed):
        cells = []
        for j, (_, m) in enumerate(cols):
            column = [row[j] for row in grid]
            known = [v for v in column if finite(v)]
            best = (max(known) if m.startswith("auc") else min(known)) if known else None
            v, ref = grid[i][j], grid[0][j]
            text = num(v)
            if i == 0:
                text += " <small>(reference)</small>" if finite(v) else ""
            elif finite(v) and finite(ref) and ref != 0:
                text += f" <small>({(v - ref) / abs(ref) * 100:+.1f} %)</small>"
            cells.append(_cell(text, finite(v) and len(known) > 1 and v == best))
        out.append(f"<tr><td class='name'>{html.escape(name)}</td>{''.join(cells)}</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def write_ablations_html(variants: Sequence[tuple[str, list[dict[str, Any]]]],
                         out: str | Path, title: str) -> Path:  # fmt: skip
    intro = """<p>Each row is one training variant, trained on the same batches and scored on
the same held-out batches at lead 1; the first row is the full model, and each cell shows,
in brackets, the change relative to it. RMSE (latitude-weighted, physical units) and
deviance: lower is better; AUC: higher is better; the best variant per column is in
bold.</p>"""
    return html_page(title, intro, ablation_table(variants), out)
