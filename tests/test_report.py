"""Report items: the loss curve and the score table."""

from __future__ import annotations

import json

import pytest

from bfm import cli
from bfm.report import read_jsonl, scores_table


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
