"""bfm report: figures and tables for snakemake --report (workflow/rules/report.smk).

Each item is a subcommand that reads one step's output and writes one file:

  loss              training loss per step (SVG) from the run's metrics.jsonl
  scores            HTML table of scores.jsonl (lead 1): RMSE vs persistence and
                    climatology, the model's 95 % interval, ACC, skill
  lead              scores against the lead (SVG) from scores_by_lead.jsonl: RMSE of each
                    forecast per headline line, AUC (else deviance) per species line
  error-maps        per-gridpoint RMSE maps (PNG) from error_maps.nc: the model's, and the
                    model's minus persistence's
  forecast-maps     forecast | truth | error maps (PNG) of t2m, msl and z500 at the first
                    and last lead, from forecast.nc and the held-out batches
  suitability-maps  one suitability map per species (PNG) from forecast.nc
  sdm               HTML table of the species distribution models' cross-validated metrics
                    (metrics.jsonl of bfm finetune) per species and method
  ablations         HTML table of the variants' lead-1 scores, change vs the full model

Labels and units come from the catalogue (bfm.contracts.catalogue); maps draw the country
outlines of resources/countries/countries.geojson (bfm.report.maps). Bad input: one line
naming the file, the record or the variable and what is wrong; nothing is written.
"""

from __future__ import annotations

import argparse

from bfm.cliutil import add_command
from bfm.report.common import label, read_jsonl
from bfm.report.curves import plot_lead, plot_loss
from bfm.report.tables import (
    SCORE_COLUMNS,
    SDM_REQUIRED,
    parse_labelled,
    scores_table,
    sdm_table,
    write_ablations_html,
    write_scores_html,
    write_sdm_html,
)

__all__ = ["label", "plot_lead", "plot_loss", "read_jsonl", "register", "scores_table",
           "sdm_table"]  # fmt: skip
BOUNDARIES_HELP = "country boundaries GeoJSON (default: resources/countries/countries.geojson)"


def _run_loss(args: argparse.Namespace) -> int:
    plot_loss(read_jsonl(args.metrics, ("step", "loss")), args.out)
    return 0


def _run_scores(args: argparse.Namespace) -> int:
    rows = read_jsonl(args.scores, SCORE_COLUMNS)
    write_scores_html(rows, args.out, "BFM scores on held-out batches")
    return 0


def _run_lead(args: argparse.Namespace) -> int:
    rows = read_jsonl(args.scores, ("variable", "channel", "lead"))
    plot_lead(rows, args.out, source=args.scores)
    return 0


def _run_error_maps(args: argparse.Namespace) -> int:
    from bfm.report.fields import plot_error_maps

    plot_error_maps(args.maps, args.out, lead=args.lead, boundaries=args.boundaries)
    return 0


def _run_forecast_maps(args: argparse.Namespace) -> int:
    from bfm.report.fields import plot_forecast_maps

    plot_forecast_maps(args.forecast, args.batches, args.out, boundaries=args.boundaries)
    return 0


def _run_suitability_maps(args: argparse.Namespace) -> int:
    from bfm.report.fields import plot_suitability_maps

    plot_suitability_maps(args.forecast, args.out, boundaries=args.boundaries)
    return 0


def _run_sdm(args: argparse.Namespace) -> int:
    rows = read_jsonl(args.metrics, SDM_REQUIRED)
    write_sdm_html(rows, args.out, args.title, source=args.metrics)
    return 0


def _run_ablations(args: argparse.Namespace) -> int:
    variants = [(name, read_jsonl(path, ("variable", "channel")))
                for name, path in parse_labelled(args.scores)]  # fmt: skip
    write_ablations_html(variants, args.out, "Ablations: variants of the BFM")
    return 0


def _item(kinds: argparse._SubParsersAction, name: str, help_text: str, func: object,
          out: str) -> argparse.ArgumentParser:  # fmt: skip
    p = kinds.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--out", required=True, help=out)
    p.set_defaults(func=func)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", __doc__, "figures and tables for the Snakemake report")
    kinds = p.add_subparsers(title="items", metavar="ITEM", required=True)
    pl = _item(kinds, "loss", "training loss curve (SVG/PNG) from metrics.jsonl", _run_loss,
               "output figure (.svg or .png)")  # fmt: skip
    pl.add_argument("--metrics", required=True, help="metrics.jsonl written by bfm train")
    ps = _item(kinds, "scores", "HTML score table from scores.jsonl", _run_scores,
               "output table (.html)")  # fmt: skip
    ps.add_argument("--scores", required=True, help="scores.jsonl written by bfm evaluate")
    pd_ = _item(kinds, "lead", "scores against the forecast lead (SVG/PNG)", _run_lead,
                "output figure (.svg or .png)")  # fmt: skip
    pd_.add_argument("--scores", required=True,
                     help="scores_by_lead.jsonl written by bfm evaluate")  # fmt: skip
    pe = _item(kinds, "error-maps", "per-gridpoint RMSE maps of the headline lines (PNG)",
               _run_error_maps, "output figure (.png or .svg)")  # fmt: skip
    pe.add_argument("--maps", required=True, help="error_maps.nc written by bfm evaluate")
    pe.add_argument("--lead", type=int, default=1, help="the lead to map (default 1)")
    pf = _item(kinds, "forecast-maps", "forecast, truth and error maps of t2m, msl, z500",
               _run_forecast_maps, "output figure (.png or .svg)")  # fmt: skip
    pf.add_argument("--forecast", required=True, help="forecast.nc written by bfm predict")
    pf.add_argument("--batches", required=True, nargs="+", metavar="FILE",
                    help="batch files, among them those whose second time is a valid time "
                    "of the first and last lead (the truth)")  # fmt: skip
    pu = _item(kinds, "suitability-maps", "one suitability map per species (PNG)",
               _run_suitability_maps, "output figure (.png or .svg)")  # fmt: skip
    pu.add_argument("--forecast", required=True,
                    help="forecast.nc of bfm predict (with variable suitability)")  # fmt: skip
    for q in (pe, pf, pu):
        q.add_argument("--boundaries", default="resources/countries/countries.geojson",
                       metavar="GEOJSON", help=BOUNDARIES_HELP)  # fmt: skip
    pm = _item(kinds, "sdm", "HTML table of the SDM metrics per species and method", _run_sdm,
               "output table (.html)")  # fmt: skip
    pm.add_argument("--metrics", required=True, help="metrics.jsonl written by bfm finetune")
    pm.add_argument("--title", default="Species distribution models: cross-validated metrics",
                    help="the table's heading")  # fmt: skip
    pa = _item(kinds, "ablations", "HTML table of the ablation variants' scores",
               _run_ablations, "output table (.html)")  # fmt: skip
    pa.add_argument("--scores", required=True, nargs="+", metavar="LABEL=PATH",
                    help="scores.jsonl of each variant, the full model first")  # fmt: skip
