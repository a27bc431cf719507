"""Report items without maps: the loss curve, the score table, the scores against the lead,
the SDM table and the ablation table (known inputs -> the figure's panels, the table's
numbers; bad input -> one clear error and no file)."""

from __future__ import annotations

import json
import re

import pytest

from bfm import cli
from bfm.report import read_jsonl, scores_table
from bfm.report.curves import lead_lines, species_metric
from bfm.report.tables import ablation_table, parse_labelled, sdm_table


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def svg_texts(path) -> list[str]:
    """The texts of a matplotlib SVG (it draws text as paths, each after a comment)."""
    return re.findall(r"<!-- (.*?) -->", path.read_text())


def test_loss_curve_is_an_svg(tmp_path):
    metrics = write_jsonl(
        tmp_path / "m.jsonl", [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 30)]
    )
    assert (
        cli.main(["report", "loss", "--metrics", str(metrics), "--out", str(tmp_path / "loss.svg")])
        == 0
    )
    text = (tmp_path / "loss.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "optimiser step" in text


def test_score_table_marks_the_best_and_computes_skill(tmp_path):
    rows = [
        {
            "variable": "surface/t2m",
            "channel": None,
            "n": 10,
            "rmse_model": 1.0,
            "rmse_persistence": 2.0,
            "rmse_climatology": 4.0,
        },
        {
            "variable": "surface/t2m",
            "channel": "x",
            "n": 10,
            "rmse_model": 9.0,
            "rmse_persistence": 2.0,
            "rmse_climatology": 4.0,
        },
    ]
    table = scores_table(rows)
    assert table.count("<tr>") == 2  # header + the one summary row; channel rows are left out
    assert "<b>1</b>" in table and "+0.500" in table
    scores = write_jsonl(tmp_path / "s.jsonl", rows)
    assert (
        cli.main(["report", "scores", "--scores", str(scores), "--out", str(tmp_path / "s.html")])
        == 0
    )
    assert "surface/t2m" in (tmp_path / "s.html").read_text()


def test_bad_records_name_the_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"step": 1, "loss": 0.5}\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: record lacks field\(s\) \['loss'\]"):
        read_jsonl(bad, ("step", "loss"))
    assert (
        cli.main(["report", "loss", "--metrics", str(bad), "--out", str(tmp_path / "x.svg")]) == 1
    )
    assert not (tmp_path / "x.svg").exists()


# --- scores against the lead ----------------------------------------------------------------


def weather(variable, channel, lead, rmse, headline=True):
    return {"variable": variable, "channel": channel, "lead": lead, "headline": headline,
            "n": 10, "rmse_model": rmse, "rmse_model_ci": [rmse * 0.9, rmse * 1.1],
            "rmse_persistence": 2 * rmse, "rmse_climatology": 3 * rmse}  # fmt: skip


def species(channel, lead, auc=None, deviance=None):
    return {"variable": "species/occurrence", "channel": channel, "lead": lead,
            "headline": False, "n": 10, "auc_model": auc, "auc_persistence": auc and auc - 0.1,
            "deviance_model": deviance, "deviance_constant": deviance and deviance * 2}  # fmt: skip


BY_LEAD = [
    *(weather("surface/t2m", None, k, 1.0 * k) for k in (2, 1, 3)),  # out of order on purpose
    *(weather("atmospheric/z", "500", k, 100.0 * k) for k in (1, 2, 3)),
    *(weather("atmospheric/t", "500", k, 5.0, headline=False) for k in (1, 2, 3)),
    *(species(None, k, auc=0.8) for k in (1, 2, 3)),
    *(species("2435240", k, auc=0.7) for k in (1, 2, 3)),
]


def test_lead_lines_are_the_headline_then_the_pooled_species_lines_sorted_by_lead():
    lines = lead_lines(BY_LEAD, "s.jsonl")
    names = [(x[0]["variable"], x[0]["channel"]) for x in lines]
    # WeatherBench 2's order (z500 before t2m); t500 is no headline line; the per-species
    # line is left out, the pooled one kept.
    assert names == [("atmospheric/z", "500"), ("surface/t2m", None),
                     ("species/occurrence", None)]  # fmt: skip
    assert [r["lead"] for r in lines[1]] == [1, 2, 3]
    assert species_metric(lines[2]) == ("auc", "AUC of presence (higher is better)")
    no_auc = [species(None, k, deviance=0.5) for k in (1, 2)]
    assert species_metric(no_auc)[0] == "deviance"
    assert species_metric([species(None, 1)]) is None


def test_lead_figure_has_one_titled_panel_per_line(tmp_path):
    scores = write_jsonl(tmp_path / "by_lead.jsonl", BY_LEAD)
    out = tmp_path / "lead.svg"
    assert cli.main(["report", "lead", "--scores", str(scores), "--out", str(out)]) == 0
    texts = svg_texts(out)
    assert "z500: geopotential at 500 hPa (m2 s-2)" in texts
    assert "t2m: 2 metre temperature (K)" in texts
    assert "species/occurrence: all species" in texts
    assert not any(t.startswith("t500") for t in texts)
    for legend in ("model", "persistence", "climatology", "model 95 % interval"):
        assert legend in texts
    assert "constant" not in texts  # the species line's AUC has no constant forecast here
    assert "AUC of presence (higher is better)" in texts


def test_lead_figure_refuses_a_repeated_lead_and_a_file_without_lines(tmp_path):
    twice = [weather("surface/t2m", None, 1, 1.0), weather("surface/t2m", None, 1, 2.0)]
    with pytest.raises(ValueError, match=r"s.jsonl: line surface/t2m None has lead 1 twice"):
        lead_lines(twice, "s.jsonl")
    with pytest.raises(ValueError, match="lead' must be a positive integer, got 0"):
        lead_lines([weather("surface/t2m", None, 0, 1.0)], "s.jsonl")
    none = write_jsonl(tmp_path / "none.jsonl", [weather("atmospheric/t", "500", 1, 1.0, False)])
    out = tmp_path / "lead.svg"
    assert cli.main(["report", "lead", "--scores", str(none), "--out", str(out)]) == 1
    assert not out.exists()
    with pytest.raises(ValueError, match="none.jsonl: no headline line"):
        lead_lines(read_jsonl(none, ("lead",)), str(none))


# --- SDM table ------------------------------------------------------------------------------


def sdm(name, key, method, cv, auc, **more):
    return {"species": name, "key": key, "method": method, "cv": cv, "replicates": 5,
            "folds": 5, "block_size_deg": 2.0, "n_presence": 40, "n_background": 400,
            "auc_roc": auc, "auc_roc_sd": 0.01, "auc_pr": None, "auc_pr_sd": None,
            "max_tss": 0.5, "max_tss_sd": None, "boyce": 0.9, "boyce_sd": 0.05, **more}  # fmt: skip


SDM = [
    sdm("Mustela lutreola", 9000000123, "bfm", "spatial", 0.8),
    sdm("Mustela lutreola", 9000000123, "glm", "spatial", 0.7),
    sdm("Mustela lutreola", 9000000123, "bfm", "random", 0.9),
    sdm("Mustela lutreola", 9000000123, "glm", "random", 0.95),
    sdm("Lynx pardinus", 9000000456, "bfm", "spatial", 0.6),
    sdm("Lynx pardinus", 9000000456, "glm", "spatial", 0.65, boyce=None),
    sdm("Lynx pardinus", 9000000456, "bfm", "random", 0.7),
    sdm("Lynx pardinus", 9000000456, "glm", "random", None),
]


def test_sdm_table_bolds_the_best_method_and_averages_over_species(tmp_path):
    table = sdm_table(SDM, "m.jsonl")
    rows = table.split("<tr")
    mink = next(r for r in rows if "Mustela lutreola" in r)
    # spatial AUC-ROC: BFM (0.8) beats GLM (0.7); the sd follows the mean
    assert "<td><b>0.800 &plusmn; 0.010</b></td>" in mink
    glm_mink = rows[rows.index(mink) + 1]
    assert "<td>0.700 &plusmn; 0.010</td>" in glm_mink and "<b>0.950" in glm_mink
    # a null metric is '-', a missing sd leaves the mean alone; equal values: both bold
    assert "<td>-</td>" in mink and "<td><b>0.500</b></td>" in mink
    means = [r for r in rows if r.startswith(" class='mean'")]
    assert len(means) == 2  # one per method
    assert "mean over 2 species" in means[0]
    # BFM spatial AUC-ROC: (0.8 + 0.6) / 2; GLM random AUC-ROC: only the mink has one
    assert "<b>0.700</b>" in means[0] and "0.675" in means[1]
    assert "0.950 <small>(1 of 2)</small>" in means[1]
    assert table.index("spatial block CV") < table.index("random CV")
    metrics = write_jsonl(tmp_path / "metrics.jsonl", SDM)
    out = tmp_path / "sdm.html"
    assert cli.main(["report", "sdm", "--metrics", str(metrics), "--out", str(out)]) == 0
    page = out.read_text()
    assert "logistic regression on the environmental covariates" in page
    assert "elapid" in page and "blocks of 2.0 degrees" in page
    assert "5 replicates of 5-fold" in page and "GBIF key 9000000123, 40 presences" in page


def test_sdm_table_refuses_an_unknown_scheme_and_a_repeated_record(tmp_path):
    with pytest.raises(ValueError, match=r"m.jsonl: record 2 .*'cv' must be one of"):
        sdm_table([SDM[0], {**SDM[1], "cv": "loo"}], "m.jsonl")
    with pytest.raises(ValueError, match="record 2 .*a second record for this species"):
        sdm_table([SDM[0], SDM[0]], "m.jsonl")
    with pytest.raises(ValueError, match="'auc_roc' must be a number or null, got 'high'"):
        sdm_table([{**SDM[0], "auc_roc": "high"}], "m.jsonl")
    bad = write_jsonl(tmp_path / "metrics.jsonl", [{"species": "x", "key": 1, "method": "glm"}])
    out = tmp_path / "sdm.html"
    assert cli.main(["report", "sdm", "--metrics", str(bad), "--out", str(out)]) == 1
    assert not out.exists()


# --- ablations ------------------------------------------------------------------------------


def lead1(variable, channel, rmse=None, auc=None, deviance=None, headline=True):
    return {"variable": variable, "channel": channel, "lead": 1, "headline": headline,
            "n": 5, "rmse_model": rmse, "auc_model": auc, "deviance_model": deviance}  # fmt: skip


FULL = [lead1("surface/t2m", None, rmse=2.0), lead1("atmospheric/z", "500", rmse=100.0),
        lead1("species/occurrence", None, auc=0.8, deviance=0.5, headline=False)]  # fmt: skip
NO_NDVI = [lead1("surface/t2m", None, rmse=2.2), lead1("atmospheric/z", "500", rmse=90.0),
           lead1("species/occurrence", None, auc=0.72, deviance=0.5, headline=False)]  # fmt: skip


def test_ablation_table_shows_the_change_relative_to_the_full_model(tmp_path):
    table = ablation_table([("full model", FULL), ("no ndvi", NO_NDVI)])
    head, full, variant = table.split("<tr>")[1:4]
    assert head.index("z500") < head.index("t2m") < head.index("species/occurrence")
    assert "<small>AUC</small>" in head and "<small>deviance</small>" in head
    assert "(reference)" in full and "%" not in full
    # t2m 2.2 vs 2.0: +10 %, worse, so the full model's 2 is bold; z500 90 vs 100: -10 %
    assert "<td><b>2 <small>(reference)</small></b></td>" in full
    assert "2.2 <small>(+10.0 %)</small>" in variant
    assert "<b>90 <small>(-10.0 %)</small></b>" in variant
    assert "0.72 <small>(-10.0 %)</small>" in variant  # AUC: higher is better, the full bold
    assert "0.5 <small>(+0.0 %)</small>" in variant
    paths = [write_jsonl(tmp_path / f"{i}.jsonl", rows) for i, rows in enumerate((FULL, NO_NDVI))]
    out = tmp_path / "ablations.html"
    argv = ["report", "ablations", "--scores", f"full model={paths[0]}", f"no ndvi={paths[1]}",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert "no ndvi" in out.read_text() and "full model" in out.read_text()


def test_ablation_arguments_are_label_equals_path():
    pairs = parse_labelled(["full model=a.jsonl", "x=b=c.jsonl"])
    assert pairs == [("full model", "a.jsonl"), ("x", "b=c.jsonl")]
    with pytest.raises(ValueError, match=r"--scores 'a.jsonl': expected LABEL=PATH"):
        parse_labelled(["a.jsonl"])
    with pytest.raises(ValueError, match="label 'x' is given twice"):
        parse_labelled(["x=a", "x=b"])
    with pytest.raises(ValueError, match="ablations: no headline or species line"):
        ablation_table([("full model", [lead1("atmospheric/t", "850", 1.0, headline=False)])])
