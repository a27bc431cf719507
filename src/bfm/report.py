"""bfm report: figures and tables for snakemake --report.

bfm report loss draws the training loss curve (SVG) from metrics.jsonl; bfm report scores
renders the evaluation's scores.jsonl as an HTML table, each variable labelled with its
catalogue name and units.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from bfm.cliutil import add_command
from bfm.contracts import catalogue
from bfm.fileio import atomic_path, write_text_atomic


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
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


def plot_loss(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "svg")
    plt.close(fig)
    return out


SCORE_COLUMNS = ("variable", "channel", "n", "rmse_model", "rmse_persistence", "rmse_climatology")


def label(variable: str) -> str:
    """``surface/t2m`` -> ``surface/t2m: 2 metre temperature (K)`` (catalogue names)."""
    group, _, name = variable.partition("/")
    try:
        var = catalogue.of_group(group).variable(name)
    except ValueError:
        return variable
    return f"{variable}: {var.long_name} ({var.units})"


def _num(v: Any, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


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
        known = [v for v in vals if v is not None]
        best = min(known) if known else None
        cells = [f"<b>{_num(v)}</b>" if v == best and v is not None else _num(v) for v in vals]
        ci = r.get("rmse_model_ci")
        interval = f"{ci[0]:.4g} - {ci[1]:.4g}" if ci else "-"
        skills = [1 - r["rmse_model"] / ref if r["rmse_model"] is not None and ref else None
                  for ref in (r["rmse_persistence"], r["rmse_climatology"])]  # fmt: skip
        name = label(str(r["variable"])) + (f" at {r['channel']}" if r.get("channel") else "")
        lines.append(
            f"<tr><td>{html.escape(name)}</td><td>{r['n']}</td><td>{cells[0]}</td>"
            f"<td>{interval}</td><td>{cells[1]}</td><td>{cells[2]}</td>"
            f"<td>{_num(r.get('acc_model'), '.3f')}</td>"
            + "".join(f"<td>{_num(k, '+.3f')}</td>" for k in skills)
            + "</tr>"
        )
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def write_scores_html(rows: list[dict[str, Any]], out: str | Path, title: str) -> Path:
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>table{{border-collapse:collapse;font-family:sans-serif}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
</style></head><body>
<h3>{html.escape(title)}</h3>
<p>Latitude-weighted RMSE in physical units on the held-out batches (lead 1), with the
model's 95 % bootstrap interval over forecast times; climatology: the training years' mean per
cell and day of year; ACC: anomaly correlation against it; skill = 1 - model / reference.</p>
{scores_table(rows)}
</body></html>
"""
    return write_text_atomic(out, doc)


def _run_loss(args: argparse.Namespace) -> int:
    plot_loss(read_jsonl(args.metrics, ("step", "loss")), args.out)
    return 0


def _run_scores(args: argparse.Namespace) -> int:
    rows = read_jsonl(args.scores, SCORE_COLUMNS)
    write_scores_html(rows, args.out, "BFM scores on held-out batches")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", __doc__, "figures and tables for the Snakemake report")
    kinds = p.add_subparsers(title="items", metavar="ITEM", required=True)
    pl = kinds.add_parser("loss", help="training loss curve (SVG/PNG) from metrics.jsonl")
    pl.add_argument("--metrics", required=True, help="metrics.jsonl written by bfm train")
    pl.add_argument("--out", required=True, help="output figure (.svg or .png)")
    pl.set_defaults(func=_run_loss)
    ps = kinds.add_parser("scores", help="HTML score table from scores.jsonl")
    ps.add_argument("--scores", required=True, help="scores.jsonl written by bfm evaluate")
    ps.add_argument("--out", required=True, help="output table (.html)")
    ps.set_defaults(func=_run_scores)
